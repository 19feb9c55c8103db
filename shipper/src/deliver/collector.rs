//! The collector's ingest endpoint: `POST {url}/api/v1/ingest` with a
//! zstd-compressed MessagePack [`IngestBatch`] and a bearer token, with
//! failover between several collectors.
//!
//! Failover: the endpoint keeps a *current* collector and sends there. A
//! request that fails in a way another collector may not (network error,
//! timeout, 5xx, 429) is sent again at once to the next collector in the
//! list, and the next one becomes current (sticky: later batches go straight
//! to the collector that works). When every collector failed, the outcome of
//! the round is a retry for the caller's backoff. Exactly-once effect
//! survives failover because collectors dedupe by (subscription, source,
//! epoch, seq).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER,
};
use reqwest::StatusCode;
#[cfg(doc)]
use schemas::IngestBatch;
use schemas::{IngestResponse, Record};

use sesam_common::http::{self, Outcome};

use super::{Endpoint, SendOutcome, MAX_RETRY_AFTER};

/// Media type of an ingest body.
pub const MSGPACK: &str = "application/msgpack";

/// The most of a receiver's answer body that is read; the rest is not
/// needed to classify the answer, and a hostile receiver must not be able
/// to make the shipper buffer an endless body.
pub const MAX_ANSWER_BYTES: usize = 64 << 10;

/// The longest receiver URL accepted.
pub const MAX_URL_LEN: usize = 2048;

#[derive(Debug)]
pub struct CollectorEndpoint {
    client: reqwest::Client,
    /// Full ingest URLs, in failover order.
    urls: Vec<String>,
    /// `scheme://host:port` of each, for logs (never credentials).
    names: Vec<String>,
    /// Index of the collector batches go to first.
    current: AtomicUsize,
    zstd_level: i32,
    /// The compression context, reused from body to body. A std mutex:
    /// held while one body is compressed, never across an await.
    compressor: Compressor,
    failovers: Counter,
}

/// A reusable compression context (its state is not worth printing).
#[derive(Default)]
struct Compressor(std::sync::Mutex<Option<zstd::zstd_safe::CCtx<'static>>>);

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compressor")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("receiver URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("no collector URL given")]
    NoUrl,
    #[error("token contains characters not allowed in an HTTP header")]
    BadToken,
    #[error("build HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Checks a receiver base URL; returns a name for logs (`scheme://host:port`,
/// without any credentials or path).
pub fn check_url(url: &str) -> Result<String, EndpointError> {
    let bad = |reason: &str| EndpointError::BadUrl {
        url: url.chars().take(200).collect(),
        reason: reason.to_string(),
    };
    if url.len() > MAX_URL_LEN {
        return Err(bad(&format!("longer than {MAX_URL_LEN} bytes")));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(bad("must start with http:// or https://"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    let host = parsed.host_str().ok_or_else(|| bad("has no host"))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    Ok(match parsed.port() {
        Some(p) => format!("{}://{host}:{p}", parsed.scheme()),
        None => format!("{}://{host}", parsed.scheme()),
    })
}

impl CollectorEndpoint {
    /// `base` is the collector's base URL (e.g. `http://127.0.0.1:9400`).
    pub fn new(base: &str, token: &str, timeout: Duration) -> Result<Self, EndpointError> {
        Self::with_failover(&[base], token, timeout)
    }

    /// Several collectors sharing one store (or one dedupe), tried in this
    /// order, with the same token.
    pub fn with_failover<S: AsRef<str>>(
        bases: &[S],
        token: &str,
        timeout: Duration,
    ) -> Result<Self, EndpointError> {
        if bases.is_empty() {
            return Err(EndpointError::NoUrl);
        }
        let mut urls = Vec::with_capacity(bases.len());
        let mut names = Vec::with_capacity(bases.len());
        for b in bases {
            let b = b.as_ref();
            names.push(check_url(b)?);
            urls.push(format!("{}/api/v1/ingest", b.trim_end_matches('/')));
        }
        let mut headers = HeaderMap::new();
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| EndpointError::BadToken)?;
        auth.set_sensitive(true);
        headers.insert(AUTHORIZATION, auth);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(MSGPACK));
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()?;
        Ok(CollectorEndpoint {
            client,
            urls,
            names,
            current: AtomicUsize::new(0),
            // Level 1: its compressor is a fifth of level 3's in memory and
            // faster, for bodies ~10% larger; log batches compress 5-10x
            // either way.
            zstd_level: 1,
            compressor: Compressor::default(),
            failovers: Counter::default(),
        })
    }

    /// Counts switches from one collector to the next
    /// (`shipper_collector_failovers_total`).
    pub fn failovers(&self) -> Counter {
        self.failovers.clone()
    }

    /// The collector (`scheme://host:port`) batches currently go to.
    pub fn current(&self) -> &str {
        &self.names[self.current.load(Ordering::Relaxed) % self.names.len()]
    }
}

/// Encodes records as the ingest body: MessagePack batch, zstd-compressed.
pub fn encode_ingest_body(
    epoch: &str,
    records: &[Record],
    dropped: u64,
    zstd_level: i32,
) -> Result<Vec<u8>, String> {
    let first = records.first().ok_or("empty batch")?;
    let mut buf = Vec::new();
    begin_ingest_body(&mut buf);
    for r in records {
        encode_ingest_record(r, &mut buf)?;
    }
    let mut cctx = compressor(zstd_level)?;
    finish_ingest_body(
        &mut cctx,
        &mut buf,
        records.len(),
        epoch,
        &first.source,
        &first.subscription,
        dropped,
    )
}

/// One record as an element of an ingest batch's `records` (named-field
/// MessagePack).
pub fn encode_ingest_record(record: &Record, out: &mut Vec<u8>) -> Result<(), String> {
    schemas::write_msgpack(out, record).map_err(|e| e.to_string())
}

/// Where the record count of an ingest body is (see [`begin_ingest_body`]).
const COUNT_AT: usize = 10;

/// Starts an uncompressed ingest body in `out` (cleared): the MessagePack
/// map of an [`IngestBatch`] with `records` first, its array length
/// reserved as a 32-bit count written later (any width decodes the same), so records encoded by
/// [`encode_ingest_record`] can be appended one at a time without knowing
/// their count; [`finish_ingest_body`] fills it in and adds the other
/// fields after the records (a map's keys may come in any order).
pub fn begin_ingest_body(out: &mut Vec<u8>) {
    out.clear();
    // map of 5 entries, "records" (fixstr of 7), array32 header whose
    // count `finish_ingest_body` writes.
    out.push(0x85);
    out.push(0xa7);
    out.extend_from_slice(b"records");
    out.push(0xdd);
    out.extend_from_slice(&[0; 4]);
    debug_assert_eq!(out.len(), COUNT_AT + 4);
}

/// Finishes a body started by [`begin_ingest_body`] with `count` records
/// appended, and compresses it in one pass (the whole body is in memory
/// already, so the context needs no window buffers of its own). The
/// compressed body is allocated at its size.
pub fn finish_ingest_body(
    cctx: &mut zstd::zstd_safe::CCtx<'static>,
    body: &mut Vec<u8>,
    count: usize,
    epoch: &str,
    source: &str,
    subscription: &str,
    dropped: u64,
) -> Result<Vec<u8>, String> {
    use rmp::encode::{write_str, write_uint};
    if body.len() < COUNT_AT + 4
        || body[..COUNT_AT] != [0x85, 0xa7, b'r', b'e', b'c', b'o', b'r', b'd', b's', 0xdd]
    {
        return Err("the ingest body was not started by begin_ingest_body".into());
    }
    let msgpack = |e: rmp::encode::ValueWriteError| e.to_string();
    let count = u32::try_from(count).map_err(|_| "too many records for one batch")?;
    body[COUNT_AT..COUNT_AT + 4].copy_from_slice(&count.to_be_bytes());
    for (k, v) in [
        ("source", source),
        ("subscription", subscription),
        ("epoch", epoch),
    ] {
        write_str(body, k).map_err(msgpack)?;
        write_str(body, v).map_err(msgpack)?;
    }
    write_str(body, "dropped").map_err(msgpack)?;
    write_uint(body, dropped).map_err(msgpack)?;
    compress(cctx, body)
}

/// A zstd compression context for ingest bodies at `level`.
fn compressor(level: i32) -> Result<zstd::zstd_safe::CCtx<'static>, String> {
    use zstd::zstd_safe::{get_error_name, CCtx, CParameter};
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(|code| format!("zstd: {}", get_error_name(code)))?;
    Ok(cctx)
}

/// Compresses `raw` in one pass into a buffer of the compressed size:
/// first tried in a quarter of the input (log batches compress 5-10x),
/// then in the worst-case bound.
fn compress(cctx: &mut zstd::zstd_safe::CCtx<'static>, raw: &[u8]) -> Result<Vec<u8>, String> {
    use zstd::zstd_safe::{compress_bound, get_error_name};
    let mut out = Vec::with_capacity(raw.len() / 4 + 1024);
    if cctx.compress2(&mut out, raw).is_err() {
        out = Vec::with_capacity(compress_bound(raw.len()));
        cctx.compress2(&mut out, raw)
            .map_err(|code| format!("zstd: {}", get_error_name(code)))?;
    }
    out.shrink_to_fit();
    Ok(out)
}

/// Parses a `Retry-After` value (seconds, integer, decimal or scientific,
/// or an HTTP date) clamped to [`MAX_RETRY_AFTER`], by the shared retry
/// policy ([`sesam_common::http::retry_after`]). Anything else (negative,
/// NaN, infinite, garbage, an absurdly long value) is `None`: the caller's
/// own backoff applies. Never panics, whatever the input.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    http::retry_after(value, std::time::SystemTime::now(), MAX_RETRY_AFTER)
}

/// The `Retry-After` of an answer, see [`parse_retry_after`].
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    parse_retry_after(headers.get(RETRY_AFTER)?.to_str().ok()?)
}

/// Whether a failed attempt may succeed on another collector.
fn fails_over(reason: &str) -> bool {
    matches!(reason, "network" | "timeout" | "server_error" | "throttled")
}

impl Endpoint for CollectorEndpoint {
    fn compatible(&self, a: &Record, b: &Record) -> bool {
        a.source == b.source && a.subscription == b.subscription
    }

    fn begin_body(&self, out: &mut Vec<u8>) {
        begin_ingest_body(out);
    }

    fn encode_record(&self, record: &Record, out: &mut Vec<u8>) -> Result<(), String> {
        encode_ingest_record(record, out)
    }

    fn finish_body(
        &self,
        epoch: &str,
        source: &str,
        subscription: &str,
        count: usize,
        body: &mut Vec<u8>,
        dropped: u64,
    ) -> Result<Vec<u8>, String> {
        // Another batch being compressed (a rebuild beside the producer)
        // gets a context of its own rather than waiting.
        let mut slot = match self.compressor.0.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        let mut own;
        let cctx = match slot.as_deref_mut() {
            Some(Some(c)) => c,
            Some(empty) => empty.insert(compressor(self.zstd_level)?),
            None => {
                own = compressor(self.zstd_level)?;
                &mut own
            }
        };
        finish_ingest_body(cctx, body, count, epoch, source, subscription, dropped)
    }

    async fn send(&self, body: Bytes) -> SendOutcome {
        let n = self.urls.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        // The round's verdict when every collector failed: the shortest
        // Retry-After, if every collector gave one.
        let mut all_after: Option<Option<Duration>> = None;
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            let outcome = match post(&self.client, &self.urls[i], body.clone()).await {
                Ok((status, after, bytes)) => {
                    classify(status, after, &String::from_utf8_lossy(&bytes))
                }
                Err(outcome) => outcome,
            };
            let SendOutcome::Retry { reason, after, .. } = &outcome else {
                return outcome;
            };
            if n == 1 || !fails_over(reason) {
                return outcome;
            }
            let next = (i + 1) % n;
            if self
                .current
                .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.failovers.inc();
                tracing::warn!(from = %self.names[i], to = %self.names[next], reason,
                    "collector failed; failing over");
            }
            all_after = Some(match (all_after, after) {
                (None, a) => *a,
                (Some(Some(x)), Some(y)) => Some(x.min(*y)),
                _ => None,
            });
            last = Some(outcome);
        }
        match last {
            Some(SendOutcome::Retry {
                reason, message, ..
            }) => SendOutcome::Retry {
                reason,
                after: all_after.flatten(),
                message,
            },
            Some(other) => other,
            None => SendOutcome::Retry {
                reason: "network",
                after: None,
                message: None,
            },
        }
    }
}

/// POSTs `body` and reads the answer (at most [`MAX_ANSWER_BYTES`] of its
/// body): (status, `Retry-After`, body). A transport failure is already the
/// outcome (a retry).
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    body: Bytes,
) -> Result<(StatusCode, Option<Duration>, Vec<u8>), SendOutcome> {
    let network = |e: &reqwest::Error| SendOutcome::Retry {
        reason: if e.is_timeout() { "timeout" } else { "network" },
        after: None,
        message: None,
    };
    let mut response = client
        .post(url)
        .body(body)
        .send()
        .await
        .map_err(|e| network(&e))?;
    let status = response.status();
    let after = retry_after(response.headers());
    let mut out = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_ANSWER_BYTES - out.len();
                out.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if out.len() >= MAX_ANSWER_BYTES {
                    // Enough to classify; the rest is dropped with the connection.
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => return Err(network(&e)),
        }
    }
    Ok((status, after, out))
}

/// The collector's explanation in an error answer: its `error` field (and
/// `reason`), else the start of the body.
fn explain(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let text = match parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|e| e.as_str())
    {
        Some(e) => e.to_string(),
        None => body.to_string(),
    };
    text.chars().take(500).collect()
}

/// Maps an ingest answer to an outcome. A 2xx that is not an
/// [`IngestResponse`] is not proof of delivery: retried. See the retry
/// policy in [`crate::deliver`].
pub fn classify(status: StatusCode, after: Option<Duration>, body: &str) -> SendOutcome {
    if status.is_success() {
        return match serde_json::from_str::<IngestResponse>(body) {
            Ok(_) => SendOutcome::Delivered,
            Err(_) => SendOutcome::Retry {
                reason: "garbage_answer",
                after: None,
                message: None,
            },
        };
    }
    let retry = |reason: &'static str, after: Option<Duration>| SendOutcome::Retry {
        reason,
        after,
        message: Some(explain(body)),
    };
    let code = status.as_u16();
    match (http::classify(code), code) {
        (Outcome::Reject, _) => SendOutcome::Reject {
            status: code,
            message: explain(body),
        },
        (_, 409) => {
            let reason = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(String::from));
            match reason.as_deref() {
                Some("source_conflict") => retry("source_conflict", None),
                _ => retry("conflict", None),
            }
        }
        (_, 429) => retry("throttled", after),
        (_, 401 | 403) => retry("unauthorized", None),
        (_, 500..=599) => retry("server_error", after),
        // 408, 425 and a misdirected send (3xx, 404, ...): the outbox keeps
        // the batch and it is retried with backoff; never dropped.
        (Outcome::Retry, _) => retry("server_error", after),
        _ => retry("client_error", None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_not_begun_is_refused_not_sent() {
        let mut cctx = compressor(1).unwrap();
        let mut body = b"garbage".to_vec();
        let e = finish_ingest_body(&mut cctx, &mut body, 0, "e", "s", "t", 0).unwrap_err();
        assert!(e.contains("begin_ingest_body"), "{e}");
    }

    #[test]
    fn an_incompressible_body_still_compresses() {
        // Random bytes do not fit in a quarter of their size: the second
        // attempt, in the worst-case bound, must succeed.
        let mut body = Vec::new();
        begin_ingest_body(&mut body);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: String = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'!' + (x % 90) as u8)
            })
            .collect();
        rmp::encode::write_str(&mut body, &noise).unwrap();
        let mut cctx = compressor(1).unwrap();
        let z = finish_ingest_body(&mut cctx, &mut body, 1, "e", "s", "t", 0).unwrap();
        assert_eq!(z.len(), z.capacity());
        assert_eq!(zstd::bulk::decompress(&z, 1 << 20).unwrap(), body);
    }

    #[test]
    fn an_ingest_body_decodes_as_an_ingest_batch() {
        let records: Vec<Record> = (0..3)
            .map(|i| Record {
                seq: i + 1,
                ts: 7,
                source: "host:a".into(),
                subscription: "sub".into(),
                body: schemas::Body::System(schemas::SystemBody {
                    facility: None,
                    priority: Some(6),
                    message: format!("line {i}"),
                    file: Some("/var/log/x".into()),
                }),
            })
            .collect();
        let body = encode_ingest_body("0123abcd", &records, 5, 3).unwrap();
        // Decodes as the IngestBatch rmp_serde would have written (fields
        // in another order, the count in a wider integer).
        let owned = schemas::IngestBatch {
            source: "host:a".into(),
            subscription: "sub".into(),
            epoch: "0123abcd".into(),
            records: records.clone(),
            dropped: 5,
        };
        let raw = zstd::bulk::decompress(&body, 1 << 20).unwrap();
        let batch: schemas::IngestBatch = schemas::from_msgpack(&raw).unwrap();
        assert_eq!(batch, owned);
        assert_eq!(batch.epoch, "0123abcd");
        assert_eq!(
            (batch.source.as_str(), batch.subscription.as_str()),
            ("host:a", "sub")
        );
        assert_eq!(batch.records, records);
        assert_eq!(batch.dropped, 5);
    }

    #[test]
    fn retry_after_is_the_shared_policys_clamped_to_the_shippers_maximum() {
        // The parser itself is tested in sesam_common::http; here only that
        // the shipper's cap applies and garbage falls back to the backoff.
        assert_eq!(
            parse_retry_after(" 0.25 "),
            Some(Duration::from_millis(250))
        );
        // Regression: 1e20 panicked in Duration::from_secs_f64.
        assert_eq!(parse_retry_after("1e20"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("301"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("-inf"), None);
    }

    #[test]
    fn urls_are_checked_and_named_without_credentials() {
        assert_eq!(
            check_url("https://user:pw@collector.example:9400/base").unwrap(),
            "https://collector.example:9400"
        );
        assert_eq!(check_url("http://127.0.0.1").unwrap(), "http://127.0.0.1");
        for bad in ["ftp://x", "collector:9400", "http://", "http://a/?q=1"] {
            let e = check_url(bad).unwrap_err().to_string();
            assert!(e.contains("receiver URL"), "{bad}: {e}");
        }
        let long = format!("http://a/{}", "x".repeat(MAX_URL_LEN));
        assert!(check_url(&long).unwrap_err().to_string().contains("longer"));
        assert!(matches!(
            CollectorEndpoint::with_failover::<&str>(&[], "t", Duration::from_secs(1)),
            Err(EndpointError::NoUrl)
        ));
    }

    #[test]
    fn a_source_conflict_is_a_retry_with_the_collectors_message() {
        let body = r#"{"error":"source acme: epoch abc conflicts with epoch def","field":"epoch","reason":"source_conflict"}"#;
        match classify(StatusCode::CONFLICT, None, body) {
            SendOutcome::Retry {
                reason: "source_conflict",
                message: Some(m),
                ..
            } => assert!(m.contains("epoch abc conflicts"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(StatusCode::CONFLICT, None, "busy"),
            SendOutcome::Retry {
                reason: "conflict",
                ..
            }
        ));
    }
}

//! VictoriaMetrics as the metrics store (`--metrics-storage
//! victoriametrics --victoriametrics-url URL`).
//!
//! Every push is validated and bounded as with the in-memory store (the
//! latest-sample table still counts series against the per-subscription
//! limits and feeds the notifier), then its accepted samples are written
//! to VictoriaMetrics (`POST /api/v1/write`, remote-write 1.0, the
//! `subscription` label the one of the token) before the push is
//! answered: a push answered 2xx is in VictoriaMetrics, and a push that
//! VictoriaMetrics did not take is answered 503, so the sender retries
//! (samples are idempotent: the same series, time and value again).
//!
//! `GET /federate` is answered by VictoriaMetrics' own `/federate`, the
//! `match[]` selectors checked here first (count, matchers, regex budget)
//! and, for an operator, `extra_label=subscription=<theirs>` always added:
//! VictoriaMetrics then applies `subscription="<theirs>"` to every
//! selector, whatever the selector says of `subscription`. The answer is
//! read up to `--max-federate-bytes`; a larger one is refused (400), as
//! with the in-memory table.
//!
//! Staleness differs from the in-memory table: VictoriaMetrics serves a
//! series in `/federate` while its newest sample is within its lookback
//! (`-search.maxStalenessInterval`, 5 minutes by default), and does not
//! receive Prometheus' staleness markers from the collector (they end a
//! series in the table only), so a series ended by a marker is served
//! until that lookback passes.

use std::time::Duration;

use super::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use super::series::{self, Prepared};

/// How long one request to VictoriaMetrics may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Why VictoriaMetrics did not answer as expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VictoriaError {
    #[error(
        "VictoriaMetrics at {url} is unreachable: {detail} (is victoria-metrics running there?)"
    )]
    Unreachable { url: String, detail: String },
    #[error("VictoriaMetrics at {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("the answer would pass {limit} bytes")]
    TooLarge { limit: usize },
}

/// A VictoriaMetrics single-node server.
#[derive(Debug, Clone)]
pub struct Victoria {
    base: String,
    client: reqwest::Client,
}

impl Victoria {
    /// `url` is the server's base URL (`http://host:8428`); checked to be
    /// http(s) here, reached by [`Victoria::check`].
    pub fn new(url: &str) -> Result<Victoria, String> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) || base.len() > 2048 {
            return Err(format!(
                "--victoriametrics-url {url:?} must be an http:// or https:// URL of at most 2048 bytes (e.g. http://127.0.0.1:8428)"
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Victoria { base, client })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// `GET /health`: that it answers, and is VictoriaMetrics.
    pub async fn check(&self) -> Result<(), VictoriaError> {
        let body = self.get("/health", &[]).await?;
        if String::from_utf8_lossy(&body).trim() != "OK" {
            return Err(VictoriaError::Status {
                url: self.base.clone(),
                status: 200,
                body: "/health did not answer \"OK\" (is this VictoriaMetrics' HTTP port?)".into(),
            });
        }
        Ok(())
    }

    /// Writes a request made by [`write_request`] to VictoriaMetrics'
    /// remote-write receiver.
    pub async fn write(&self, body: Vec<u8>) -> Result<(), VictoriaError> {
        if body.is_empty() {
            return Ok(());
        }
        let r = self
            .client
            .post(format!("{}/api/v1/write", self.base))
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", "snappy")
            .header("x-prometheus-remote-write-version", "0.1.0")
            .body(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.expect_ok(r, 1 << 12).await.map(|_| ())
    }

    /// VictoriaMetrics' `/federate` for `selectors`, restricted to
    /// `subscription` when given; at most `max_bytes` of answer.
    pub async fn federate(
        &self,
        selectors: &[String],
        subscription: Option<&str>,
        max_bytes: usize,
    ) -> Result<Vec<u8>, VictoriaError> {
        let mut q: Vec<(&str, String)> = selectors.iter().map(|s| ("match[]", s.clone())).collect();
        if let Some(sub) = subscription {
            q.push(("extra_label", format!("subscription={sub}")));
        }
        let r = self
            .client
            .get(format!("{}/federate", self.base))
            .query(&q)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.expect_ok(r, max_bytes).await
    }

    /// The latest sample of every series of metric `name` in
    /// `subscription` (an instant query with the subscription forced by
    /// `extra_label`): each series' labels without `__name__`, sorted, and
    /// its value. At most `max_bytes` of answer.
    pub async fn latest(
        &self,
        subscription: &str,
        name: &str,
        max_bytes: usize,
    ) -> Result<Latest, VictoriaError> {
        let quoted = name.replace('\\', "\\\\").replace('"', "\\\"");
        let q = [
            ("query", format!("{{__name__=\"{quoted}\"}}")),
            ("extra_label", format!("subscription={subscription}")),
        ];
        let r = self
            .client
            .get(format!("{}/api/v1/query", self.base))
            .query(&q)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let body = self.expect_ok(r, max_bytes).await?;
        parse_vector(&body).map_err(|e| VictoriaError::Status {
            url: self.base.clone(),
            status: 200,
            body: e,
        })
    }

    async fn get(&self, path: &str, q: &[(&str, &str)]) -> Result<Vec<u8>, VictoriaError> {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .query(q)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.expect_ok(r, 1 << 12).await
    }

    fn unreachable(&self, e: reqwest::Error) -> VictoriaError {
        VictoriaError::Unreachable {
            url: self.base.clone(),
            detail: e.without_url().to_string(),
        }
    }

    /// The body of a 2xx answer, read up to `max` bytes.
    async fn expect_ok(
        &self,
        mut r: reqwest::Response,
        max: usize,
    ) -> Result<Vec<u8>, VictoriaError> {
        let status = r.status();
        let mut body = Vec::new();
        while let Some(chunk) = r.chunk().await.map_err(|e| self.unreachable(e))? {
            if body.len() + chunk.len() > max {
                if status.is_success() {
                    return Err(VictoriaError::TooLarge { limit: max });
                }
                body.extend_from_slice(&chunk[..max - body.len()]);
                break;
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let text: String = String::from_utf8_lossy(&body)
                .trim()
                .chars()
                .take(300)
                .collect();
            return Err(VictoriaError::Status {
                url: self.base.clone(),
                status: status.as_u16(),
                body: text,
            });
        }
        Ok(body)
    }
}

/// Series of an instant query: sorted labels (no `__name__`) and value.
pub type Latest = Vec<(Vec<(String, String)>, f64)>;

/// An instant query's answer (`resultType` `vector`) as (sorted labels
/// without `__name__`, value); series whose value is not a number are
/// skipped.
pub fn parse_vector(body: &[u8]) -> Result<Latest, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        data: Data,
    }
    #[derive(serde::Deserialize)]
    struct Data {
        result: Vec<Series>,
    }
    #[derive(serde::Deserialize)]
    struct Series {
        metric: std::collections::BTreeMap<String, String>,
        value: (serde_json::Value, String),
    }
    let a: Answer =
        serde_json::from_slice(body).map_err(|e| format!("not an instant query answer: {e}"))?;
    Ok(a.data
        .result
        .into_iter()
        .filter_map(|s| {
            let v: f64 = s.value.1.parse().ok()?;
            let labels = s
                .metric
                .into_iter()
                .filter(|(k, _)| k != "__name__")
                .collect();
            Some((labels, v))
        })
        .collect())
}

/// The accepted samples of `p` (not staleness markers, not `refused`,
/// sorted indexes into `p.samples`) as one remote-write 1.0 request
/// (protobuf, snappy), each series with the `subscription` label of its
/// tenant; empty when nothing was accepted.
pub fn write_request(p: &Prepared, refused: &[usize]) -> Vec<u8> {
    let mut req = WriteRequest {
        timeseries: Vec::new(),
        metadata: Vec::new(),
    };
    for (i, s) in p.samples.iter().enumerate() {
        if s.stale || refused.binary_search(&i).is_ok() {
            continue;
        }
        let sub = &p.tenants[s.tenant as usize];
        let (name, _) = series::split_key(p.key(s));
        let mut labels = vec![Label::new("__name__", name)];
        // Sorted by name, `subscription` the tenant's (keys never hold one).
        labels.extend(
            series::labels_with_subscription(p.key(s), sub)
                .into_iter()
                .map(|(name, value)| Label { name, value }),
        );
        req.timeseries.push(TimeSeries {
            labels,
            samples: vec![Sample {
                value: s.value,
                timestamp: s.timestamp_ms,
            }],
            histograms: Vec::new(),
        });
    }
    if req.timeseries.is_empty() {
        return Vec::new();
    }
    snap::raw::Encoder::new()
        .compress_vec(&prost::Message::encode_to_vec(&req))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_force_the_subscription_and_keep_labels_sorted() {
        let mut b = series::SeriesBuilder::new(Some("acme"), 0, 1000);
        b.series(
            0,
            &[
                ("__name__", "up"),
                ("instance", "h\"1\n"),
                ("subscription", "bravo"),
                ("zone", "z"),
            ],
            std::iter::once((1.5, 5)),
        )
        .unwrap();
        let body = write_request(&b.prepared, &[]);
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let req = <WriteRequest as prost::Message>::decode(&raw[..]).unwrap();
        assert_eq!(req.timeseries.len(), 1);
        let ts = &req.timeseries[0];
        let labels: Vec<(&str, &str)> = ts
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("__name__", "up"),
                ("instance", "h\"1\n"),
                ("subscription", "acme"),
                ("zone", "z")
            ]
        );
        assert_eq!((ts.samples[0].value, ts.samples[0].timestamp), (1.5, 5));
        // A refused sample is not written.
        assert!(write_request(&b.prepared, &[0]).is_empty());
    }

    #[test]
    fn instant_answers_parse_into_sorted_labels_and_values() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"m","subscription":"a","instance":"n1"},"value":[1700000000.5,"12.5"]},
            {"metric":{"__name__":"m","instance":"n2"},"value":[1700000000,"NaN"]},
            {"metric":{"__name__":"m","instance":"n3"},"value":[1700000000,"x"]}]}}"#;
        let got = parse_vector(body).expect("parse");
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            got[0].0,
            vec![
                ("instance".to_string(), "n1".to_string()),
                ("subscription".to_string(), "a".to_string())
            ]
        );
        assert_eq!(got[0].1, 12.5);
        assert!(parse_vector(b"{}").is_err());
    }

    #[test]
    fn only_http_urls() {
        assert!(Victoria::new("127.0.0.1:8428").is_err());
        assert!(Victoria::new("http://127.0.0.1:8428/").is_ok());
    }
}

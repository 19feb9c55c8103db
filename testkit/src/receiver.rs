//! A faithful stand-in for the collector's ingest endpoint, for tests and
//! benchmarks: decodes zstd MessagePack batches, stores
//! each (subscription, source, seq) at most once, and can be told to fail.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use schemas::{Body, IngestBatch, IngestResponse, Record};

/// Misbehaviour to inject, consumed request by request.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Answer the next N requests with 503.
    pub unavailable: u32,
    /// Answer the next N requests with 429 and `Retry-After: 0.05` (or
    /// `retry_after`).
    pub throttled: u32,
    /// The `Retry-After` value of throttled answers, when not `0.05`.
    pub retry_after: Option<String>,
    /// Answer the next N requests with 409 `{"reason": "source_conflict"}`
    /// as the collector does for a second epoch on one source.
    pub conflict: u32,
    /// Answer the next N requests with 200 and a body that is not JSON.
    pub garbage: u32,
    /// Store the next N batches, then answer 503 as if the answer was lost
    /// on the way: the shipper must send them again, and the dedupe makes
    /// that harmless.
    pub fail_after_store: u32,
    /// Refuse (400) any batch holding a log/system message containing this.
    pub poison: Option<String>,
    /// Only count and discard records (benchmark blackhole).
    pub blackhole: bool,
    /// Wait this long before answering each request (a slow collector).
    pub delay: std::time::Duration,
}

/// What the receiver saw.
#[derive(Debug, Default)]
pub struct Received {
    pub records: HashMap<(String, String, u64), Record>,
    pub requests: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub dropped_reported: u64,
    pub rejected: u64,
    /// Every outbox epoch batches arrived with.
    pub epochs: std::collections::BTreeSet<String>,
    /// Decompressed request bodies, when `keep_bodies` is on.
    pub bodies: Vec<Vec<u8>>,
    pub keep_bodies: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Receiver {
    pub faults: Arc<Mutex<Faults>>,
    pub received: Arc<Mutex<Received>>,
}

fn message(r: &Record) -> Option<&str> {
    match &r.body {
        Body::Log(l) => Some(&l.message),
        Body::System(s) => Some(&s.message),
        _ => None,
    }
}

async fn ingest(State(rx): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    let fault = {
        let mut f = rx.faults.lock().unwrap();
        if f.unavailable > 0 {
            f.unavailable -= 1;
            Some(503)
        } else if f.throttled > 0 {
            f.throttled -= 1;
            Some(429)
        } else if f.garbage > 0 {
            f.garbage -= 1;
            Some(200)
        } else if f.conflict > 0 {
            f.conflict -= 1;
            Some(409)
        } else {
            None
        }
    };
    rx.received.lock().unwrap().requests += 1;
    let (delay, retry_after) = {
        let f = rx.faults.lock().unwrap();
        (
            f.delay,
            f.retry_after.clone().unwrap_or_else(|| "0.05".into()),
        )
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match fault {
        Some(503) => return (StatusCode::SERVICE_UNAVAILABLE, "down for a test").into_response(),
        Some(429) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", retry_after)],
                "slow down",
            )
                .into_response()
        }
        Some(409) => {
            return (
                StatusCode::CONFLICT,
                r#"{"error":"source node-a of subscription sub-1 is written by another outbox epoch","field":"epoch","reason":"source_conflict"}"#,
            )
                .into_response()
        }
        Some(_) => return (StatusCode::OK, "<html>proxy says hi</html>").into_response(),
        None => {}
    }
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer test-token") {
        return (StatusCode::UNAUTHORIZED, r#"{"error":"bad token"}"#).into_response();
    }
    let raw = if headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        == Some("zstd")
    {
        let mut out = Vec::new();
        match zstd::stream::Decoder::new(&body[..])
            .and_then(|d| d.take(256 << 20).read_to_end(&mut out))
        {
            Ok(_) => out,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!(r#"{{"error":"zstd: {e}"}}"#),
                )
                    .into_response()
            }
        }
    } else {
        body.to_vec()
    };
    let batch: IngestBatch = match schemas::from_msgpack(&raw) {
        Ok(b) => b,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!(r#"{{"error":"{e}"}}"#)).into_response()
        }
    };
    let poison = rx.faults.lock().unwrap().poison.clone();
    if let Some(p) = poison {
        if let Some(i) = batch
            .records
            .iter()
            .position(|r| message(r).is_some_and(|m| m.contains(&p)))
        {
            rx.received.lock().unwrap().rejected += 1;
            return (
                StatusCode::BAD_REQUEST,
                format!(r#"{{"error":"record {i} is poison","field":"records[{i}]"}}"#),
            )
                .into_response();
        }
    }
    let blackhole = rx.faults.lock().unwrap().blackhole;
    let mut got = rx.received.lock().unwrap();
    if got.keep_bodies {
        got.bodies.push(raw);
    }
    got.dropped_reported += batch.dropped;
    got.epochs.insert(batch.epoch.clone());
    let (mut accepted, mut duplicates) = (0, 0);
    for r in batch.records {
        if blackhole {
            accepted += 1;
            continue;
        }
        let key = (r.subscription.clone(), r.source.clone(), r.seq);
        if let std::collections::hash_map::Entry::Vacant(e) = got.records.entry(key) {
            e.insert(r);
            accepted += 1;
        } else {
            duplicates += 1;
        }
    }
    got.accepted += accepted;
    got.duplicates += duplicates;
    drop(got);
    {
        let mut f = rx.faults.lock().unwrap();
        if f.fail_after_store > 0 {
            f.fail_after_store -= 1;
            return (StatusCode::SERVICE_UNAVAILABLE, "stored, answer lost").into_response();
        }
    }
    axum::Json(IngestResponse {
        accepted,
        duplicates,
    })
    .into_response()
}

impl Receiver {
    /// Serves `POST /api/v1/ingest` on `127.0.0.1:0`; returns the base URL.
    pub async fn start(&self) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
        self.start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Serves `POST /api/v1/ingest` on `addr`; returns the base URL. Abort
    /// the handle to take the receiver down.
    pub async fn start_on(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/api/v1/ingest", post(ingest))
            .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
            .with_state(self.clone());
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((format!("http://{addr}"), handle))
    }

    pub fn stored(&self) -> usize {
        self.received.lock().unwrap().records.len()
    }
}

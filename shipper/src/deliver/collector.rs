//! The collector's ingest endpoint: `POST {url}/api/v1/ingest` with a
//! zstd-compressed MessagePack [`IngestBatch`] and a bearer token.

use std::time::Duration;

use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER,
};
use reqwest::StatusCode;
use schemas::{IngestBatch, IngestResponse, Record};

use super::{Endpoint, SendOutcome};

/// Media type of an ingest body.
pub const MSGPACK: &str = "application/msgpack";

#[derive(Debug, Clone)]
pub struct CollectorEndpoint {
    client: reqwest::Client,
    url: String,
    zstd_level: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("collector URL {0:?} must start with http:// or https://")]
    BadUrl(String),
    #[error("token contains characters not allowed in an HTTP header")]
    BadToken,
    #[error("build HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl CollectorEndpoint {
    /// `base` is the collector's base URL (e.g. `http://127.0.0.1:9400`).
    pub fn new(base: &str, token: &str, timeout: Duration) -> Result<Self, EndpointError> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(EndpointError::BadUrl(base.to_string()));
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
            url: format!("{}/api/v1/ingest", base.trim_end_matches('/')),
            zstd_level: 3,
        })
    }
}

/// Encodes records as the ingest body: MessagePack batch, zstd-compressed.
pub fn encode_ingest_body(
    records: &[Record],
    dropped: u64,
    zstd_level: i32,
) -> Result<Vec<u8>, String> {
    let first = records.first().ok_or("empty batch")?;
    let batch = IngestBatch {
        epoch: String::new(),
        source: first.source.clone(),
        subscription: first.subscription.clone(),
        records: records.to_vec(),
        dropped,
    };
    let raw = schemas::to_msgpack(&batch).map_err(|e| e.to_string())?;
    zstd::bulk::compress(&raw, zstd_level).map_err(|e| format!("zstd: {e}"))
}

/// Parses `Retry-After` given in seconds (the HTTP-date form is rare from
/// APIs and falls back to our own backoff).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

impl Endpoint for CollectorEndpoint {
    fn compatible(&self, a: &Record, b: &Record) -> bool {
        a.source == b.source && a.subscription == b.subscription
    }

    fn encode(&self, records: &[Record], dropped: u64) -> Result<Vec<u8>, String> {
        encode_ingest_body(records, dropped, self.zstd_level)
    }

    async fn send(&self, body: Vec<u8>) -> SendOutcome {
        let (status, after, bytes) = match post(&self.client, &self.url, body).await {
            Ok(answer) => answer,
            Err(outcome) => return outcome,
        };
        let text = String::from_utf8_lossy(&bytes);
        classify(status, after, &text)
    }
}

/// POSTs `body` and reads the whole answer: (status, `Retry-After`, body).
/// A transport failure is already the outcome (a retry).
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, Option<Duration>, Vec<u8>), SendOutcome> {
    let response = match client.post(url).body(body).send().await {
        Ok(r) => r,
        Err(e) => {
            let reason = if e.is_timeout() { "timeout" } else { "network" };
            return Err(SendOutcome::Retry {
                reason,
                after: None,
            });
        }
    };
    let status = response.status();
    let after = retry_after(response.headers());
    match response.bytes().await {
        Ok(b) => Ok((status, after, b.to_vec())),
        Err(_) => Err(SendOutcome::Retry {
            reason: "network",
            after: None,
        }),
    }
}

/// Maps an ingest answer to an outcome. A 2xx that is not an
/// [`IngestResponse`] is not proof of delivery: retried.
pub fn classify(status: StatusCode, after: Option<Duration>, body: &str) -> SendOutcome {
    if status.is_success() {
        return match serde_json::from_str::<IngestResponse>(body) {
            Ok(_) => SendOutcome::Delivered,
            Err(_) => SendOutcome::Retry {
                reason: "garbage_answer",
                after: None,
            },
        };
    }
    match status.as_u16() {
        400 | 413 => SendOutcome::Reject {
            status: status.as_u16(),
            message: body.chars().take(500).collect(),
        },
        429 => SendOutcome::Retry {
            reason: "throttled",
            after,
        },
        401 | 403 => SendOutcome::Retry {
            reason: "unauthorized",
            after: None,
        },
        s if s >= 500 => SendOutcome::Retry {
            reason: "server_error",
            after,
        },
        _ => SendOutcome::Retry {
            reason: "client_error",
            after: None,
        },
    }
}

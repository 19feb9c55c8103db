//! Delivery of the buffer to the receiver, oldest first, one request at a
//! time (so samples of a series arrive in time order).
//!
//! - 2xx: the samples are removed from the buffer.
//! - what the pipeline's shared retry policy ([`sesam_common::http`])
//!   retries (connection errors, timeouts, 401, 403, 408, 409, 425, 429,
//!   5xx) and a misdirected send (3xx, 404, ...): retried with exponential
//!   backoff and full jitter (500 ms doubling up to `backoff_max`), or
//!   after `Retry-After` when the receiver says so (429, 503); the samples
//!   stay buffered meanwhile, and the buffer keeps its bound by dropping
//!   its oldest samples.
//! - what the policy calls a rejection (400, 413, 422): the request's
//!   samples are dropped with the receiver's reason logged and counted
//!   (`reason="rejected"`); when the answer says how many were
//!   `accepted` (the collector does), those count as sent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, USER_AGENT,
};
use sesam_common::http;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::buffer::Buffer;
use crate::self_metrics::AgentMetrics;
use crate::{PushProtocol, PushTarget};

/// What one attempt came to.
#[derive(Debug)]
pub enum Outcome {
    Sent,
    Rejected {
        status: u16,
        message: String,
        accepted: Option<u64>,
    },
    Retry {
        reason: &'static str,
        message: String,
        retry_after: Option<Duration>,
    },
}

/// Sends encoded bodies to one receiver.
#[derive(Debug, Clone)]
pub struct Endpoint {
    client: reqwest::Client,
    url: String,
    pub protocol: PushProtocol,
}

impl Endpoint {
    pub fn new(target: &PushTarget, timeout: Duration) -> Result<Endpoint, reqwest::Error> {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("sesam-metrics-agent/", env!("CARGO_PKG_VERSION"))),
        );
        if target.protocol == PushProtocol::RemoteWrite {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("snappy"));
            headers.insert(
                "X-Prometheus-Remote-Write-Version",
                HeaderValue::from_static("0.1.0"),
            );
        }
        if let Some(t) = &target.token {
            if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", t.trim())) {
                v.set_sensitive(true);
                headers.insert(AUTHORIZATION, v);
            }
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .build()?;
        let url = match target.protocol {
            PushProtocol::Otlp if !target.url.trim_end_matches('/').ends_with("/v1/metrics") => {
                format!("{}/v1/metrics", target.url.trim_end_matches('/'))
            }
            _ => target.url.clone(),
        };
        Ok(Endpoint {
            client,
            url,
            protocol: target.protocol,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn send(&self, body: Vec<u8>) -> Outcome {
        let resp = match self.client.post(&self.url).body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Retry {
                    reason: if e.is_timeout() { "timeout" } else { "network" },
                    message: e.to_string(),
                    retry_after: None,
                }
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Outcome::Sent;
        }
        let code = status.as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .filter(|_| http::honours_retry_after(code))
            .and_then(|v| {
                http::retry_after(v, std::time::SystemTime::now(), http::MAX_RETRY_AFTER)
            });
        let text = resp.text().await.unwrap_or_default();
        let json: Option<serde_json::Value> = serde_json::from_str(&text).ok();
        let message = json
            .as_ref()
            .and_then(|j| j.get("error"))
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| text.chars().take(300).collect());
        let reason = match (http::classify(code), code) {
            (http::Outcome::Reject, _) => None,
            (_, 429) => Some("status_429"),
            (_, 500..=599) => Some("status_5xx"),
            (_, 401 | 403) => Some("unauthorized"),
            (http::Outcome::Retry, _) => Some("status_4xx"),
            // A redirect (never followed) or a wrong path: the samples stay
            // buffered until the receiver or the flag is fixed.
            _ => Some("misdirected"),
        };
        if let Some(reason) = reason {
            return Outcome::Retry {
                reason,
                message: format!("{status}: {message}"),
                retry_after,
            };
        }
        Outcome::Rejected {
            status: status.as_u16(),
            message,
            accepted: json.and_then(|j| j.get("accepted").and_then(|a| a.as_u64())),
        }
    }
}

/// The first backoff ceiling; it doubles up to `backoff_max`.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// The sending task.
#[derive(Debug)]
pub struct Sender {
    pub endpoint: Endpoint,
    pub buffer: Arc<Mutex<Buffer>>,
    pub notify: Arc<Notify>,
    pub metrics: Arc<AgentMetrics>,
    pub instance: String,
    pub max_per_send: usize,
    pub backoff_max: Duration,
    /// After shutdown, how long the buffer may still be flushed.
    pub flush_deadline: Duration,
}

impl Sender {
    /// The next body, its sample count and end sequence; `None` when empty.
    fn next_batch(&self) -> Option<(Vec<u8>, usize, u64)> {
        // Encoding under the lock: a few ms at most, no await inside.
        let buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buffer.is_empty() {
            return None;
        }
        let (points, n, end) = buffer.front(self.max_per_send);
        let body = match self.endpoint.protocol {
            PushProtocol::RemoteWrite => crate::remote_write::encode(points),
            PushProtocol::Otlp => crate::otlp::encode(&self.instance, points),
        };
        Some((body, n, end))
    }

    fn ack(&self, end: u64) {
        let mut b = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        b.ack(end);
        self.metrics
            .buffer_samples
            .store(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// One attempt; `Ok` when the batch is done with (sent or dropped).
    async fn attempt(&self, body: Vec<u8>, n: usize, end: u64) -> Result<(), (Outcome, u64)> {
        let started = Instant::now();
        let outcome = self.endpoint.send(body).await;
        self.metrics.observe_push(started.elapsed().as_secs_f64());
        let m = &self.metrics;
        match outcome {
            Outcome::Sent => {
                m.samples_sent
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                self.ack(end);
                Ok(())
            }
            Outcome::Rejected {
                status,
                ref message,
                accepted,
            } => {
                let accepted = accepted.unwrap_or(0).min(n as u64);
                m.samples_sent
                    .fetch_add(accepted, std::sync::atomic::Ordering::Relaxed);
                m.dropped("rejected", n as u64 - accepted);
                m.send_failure("status_4xx");
                tracing::warn!(
                    url = self.endpoint.url(),
                    status,
                    samples = n,
                    accepted,
                    reason = %message,
                    "receiver refused samples; dropping them (not retried)"
                );
                self.ack(end);
                Ok(())
            }
            Outcome::Retry { reason, .. } => {
                m.send_failure(reason);
                Err((outcome, end))
            }
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let backoff = http::Backoff::new(FIRST_BACKOFF, self.backoff_max);
        let mut attempt = 0u32;
        let mut failing = false;
        loop {
            let Some((body, n, end)) = self.next_batch() else {
                tokio::select! {
                    _ = self.notify.notified() => continue,
                    _ = shutdown.cancelled() => break,
                }
            };
            match self.attempt(body, n, end).await {
                Ok(()) => {
                    if failing {
                        tracing::info!(
                            url = self.endpoint.url(),
                            "receiver is back; sending the buffer"
                        );
                        failing = false;
                    }
                    attempt = 0;
                }
                Err((
                    Outcome::Retry {
                        message,
                        retry_after,
                        ..
                    },
                    _,
                )) => {
                    self.metrics
                        .send_retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let wait = retry_after.unwrap_or_else(|| backoff.delay(attempt));
                    attempt = attempt.saturating_add(1);
                    if !failing {
                        tracing::warn!(url = self.endpoint.url(), error = %message, ?wait, "push failed; buffering and retrying");
                        failing = true;
                    } else {
                        tracing::debug!(error = %message, ?wait, "push failed again");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
                Err(_) => {}
            }
        }
        // Flush what is buffered, once per batch, until the deadline.
        let deadline = Instant::now() + self.flush_deadline;
        while Instant::now() < deadline {
            let Some((body, n, end)) = self.next_batch() else {
                break;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.attempt(body, n, end)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        let left = self.buffer.lock().unwrap_or_else(|e| e.into_inner()).len();
        if left > 0 {
            self.metrics.dropped("shutdown", left as u64);
            tracing::warn!(
                samples = left,
                "samples still buffered at shutdown are lost"
            );
        }
    }
}

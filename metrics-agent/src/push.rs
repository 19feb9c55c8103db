//! Delivery of the buffer to the receiver, oldest first, one request at a
//! time (so samples of a series arrive in time order).
//!
//! - 2xx: the samples are removed from the buffer.
//! - 429, 5xx, connection errors and timeouts: retried with exponential
//!   backoff and full jitter (500 ms doubling up to `backoff_max`), or
//!   after `Retry-After` seconds when the receiver says so; the samples
//!   stay buffered meanwhile, and the buffer keeps its bound by dropping
//!   its oldest samples.
//! - any other status: the request's samples are dropped with the
//!   receiver's reason logged and counted (`reason="rejected"`); when the
//!   answer says how many were `accepted` (the collector does), those
//!   count as sent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngExt;
use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, USER_AGENT,
};
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
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(300)));
        let text = resp.text().await.unwrap_or_default();
        let json: Option<serde_json::Value> = serde_json::from_str(&text).ok();
        let message = json
            .as_ref()
            .and_then(|j| j.get("error"))
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| text.chars().take(300).collect());
        if status.as_u16() == 429 || status.is_server_error() {
            return Outcome::Retry {
                reason: if status.as_u16() == 429 {
                    "status_429"
                } else {
                    "status_5xx"
                },
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

/// Exponential backoff with jitter.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(500);

    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: Self::FIRST,
            max,
        }
    }
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
    /// A random wait in [bound / 2, bound], then the bound doubles.
    pub fn wait(&mut self) -> Duration {
        let cap = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        let ms = cap.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }
}

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
        let mut backoff = Backoff::new(self.backoff_max);
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
                    backoff.reset();
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
                    let wait = retry_after.unwrap_or_else(|| backoff.wait());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(2));
        let waits: Vec<Duration> = (0..5).map(|_| b.wait()).collect();
        assert!(waits[0] <= Duration::from_millis(500) && waits[0] >= Duration::from_millis(250));
        assert!(waits[1] <= Duration::from_millis(1000) && waits[1] >= Duration::from_millis(500));
        assert!(waits[4] <= Duration::from_secs(2) && waits[4] >= Duration::from_secs(1));
        b.reset();
        assert!(b.wait() <= Duration::from_millis(500));
    }
}

//! Durable delivery: notifications are in RocksDB before the first HTTP
//! call; the queue here is the in-memory view of the pending ones.
//!
//! - Order: the notifications of one alert to one receiver go out in the
//!   order they were made (a `resolved` never overtakes its `firing`);
//!   different alerts and receivers proceed independently, up to
//!   `concurrency` requests at once.
//! - Retries: network errors, timeouts, 408, 429 and 5xx are retried with
//!   exponential backoff and jitter (from `initial_backoff` up to
//!   `max_backoff`) until `max_age`; other 4xx answers and a missing
//!   receiver fail the notification at once. Either way the outcome, the
//!   attempts and the last error are in the history.
//! - Delivery is at least once: a crash between the receiver's answer and
//!   the status write re-sends on restart, with the same
//!   `X-Notification-Id` header so receivers can drop the copy.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use rand::RngExt;
use schemas::notify::{Receiver, ReceiverType, WebhookPayload};
use schemas::time::rfc3339_from_nanos;
use serde_json::json;
use tokio::time::Instant;

use crate::engine::{DeliveryState, Notification, NotificationKind};

/// Delivery tuning.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A notification still failing after this long is given up.
    pub max_age: Duration,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Finished notifications kept as history.
    pub history_keep: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            max_age: Duration::from_secs(24 * 3600),
            concurrency: 8,
            history_keep: 10_000,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub n: Notification,
    pub next_at: Instant,
}

/// Pending notifications by id.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub pending: BTreeMap<u64, Entry>,
    pub in_flight: HashSet<u64>,
}

impl Queue {
    pub fn push(&mut self, n: Notification) {
        self.pending.insert(
            n.id,
            Entry {
                n,
                next_at: Instant::now(),
            },
        );
    }

    /// Notifications due now (the first pending one of each alert and
    /// receiver), at most `room`, and the earliest future time one is due.
    pub fn due(&mut self, room: usize) -> (Vec<Notification>, Option<Instant>) {
        let now = Instant::now();
        let mut chains: HashSet<(&str, &str, &str)> = HashSet::new();
        let mut out = Vec::new();
        let mut next: Option<Instant> = None;
        for (id, e) in &self.pending {
            let chain = (
                e.n.subscription.as_str(),
                e.n.receiver.as_str(),
                e.n.fingerprint.as_str(),
            );
            if !chains.insert(chain) || self.in_flight.contains(id) {
                continue;
            }
            if e.next_at <= now {
                if out.len() < room {
                    out.push(e.n.clone());
                }
            } else {
                next = Some(next.map_or(e.next_at, |x: Instant| x.min(e.next_at)));
            }
        }
        for n in &out {
            self.in_flight.insert(n.id);
        }
        (out, next)
    }
}

/// The outcome of one attempt.
#[derive(Debug)]
pub(crate) enum Attempt {
    Delivered,
    Retry(String),
    Fail(String),
}

/// The body and headers for `receiver`.
pub(crate) fn build_request(
    client: &reqwest::Client,
    receiver: &Receiver,
    n: &Notification,
    external_url: &str,
) -> reqwest::RequestBuilder {
    match receiver.receiver_type {
        ReceiverType::Webhook => {
            let mut group_labels = BTreeMap::new();
            if let Some(a) = n.alert.labels.get("alertname") {
                group_labels.insert("alertname".to_string(), a.clone());
            }
            let payload = WebhookPayload {
                version: "4".into(),
                group_key: format!(
                    "{{}}:{{alertname={:?}, fingerprint={:?}}}",
                    n.alert
                        .labels
                        .get("alertname")
                        .map(String::as_str)
                        .unwrap_or(""),
                    n.fingerprint
                ),
                truncated_alerts: 0,
                status: n.alert.status.clone(),
                receiver: receiver.name.clone(),
                group_labels,
                common_labels: n.alert.labels.clone(),
                common_annotations: n.alert.annotations.clone(),
                external_url: external_url.to_string(),
                alerts: vec![n.alert.clone()],
            };
            let body = serde_json::to_vec(&payload).unwrap_or_default();
            let mut req = client
                .post(&receiver.url)
                .header("content-type", "application/json")
                .header("x-notification-id", n.id.to_string());
            if let Some(secret) = &receiver.secret {
                if let Ok(mut mac) =
                    <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
                {
                    mac.update(&body);
                    let sig = hex::encode(mac.finalize().into_bytes());
                    req = req.header("x-signature", format!("sha256={sig}"));
                }
            }
            req.body(body)
        }
        ReceiverType::Alertmanager => {
            let base = receiver.url.trim_end_matches('/');
            let url = if base.ends_with("/api/v2/alerts") {
                base.to_string()
            } else {
                format!("{base}/api/v2/alerts")
            };
            let ends_at = if n.kind == NotificationKind::Resolved {
                n.alert.ends_at.clone()
            } else {
                rfc3339_from_nanos(n.expires_at)
            };
            let body = json!([{
                "labels": n.alert.labels,
                "annotations": n.alert.annotations,
                "startsAt": n.alert.starts_at,
                "endsAt": ends_at,
                "generatorURL": n.alert.generator_url,
            }]);
            client
                .post(url)
                .header("x-notification-id", n.id.to_string())
                .json(&body)
        }
    }
}

/// Sends `n` once.
pub(crate) async fn attempt(
    client: &reqwest::Client,
    receiver: Option<Receiver>,
    n: &Notification,
    external_url: &str,
) -> Attempt {
    let Some(receiver) = receiver else {
        return Attempt::Fail(format!(
            "no receiver named {:?} in subscription {:?}",
            n.receiver, n.subscription
        ));
    };
    let req = build_request(client, &receiver, n, external_url).timeout(receiver.timeout.0);
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            if status.is_success() {
                return Attempt::Delivered;
            }
            let text = resp.text().await.unwrap_or_default();
            let text: String = text.chars().take(200).collect();
            let msg = format!("{} answered {status}: {text}", receiver.url);
            if status.is_server_error()
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || status == reqwest::StatusCode::REQUEST_TIMEOUT
            {
                Attempt::Retry(msg)
            } else {
                Attempt::Fail(msg)
            }
        }
        Err(e) if e.is_timeout() => Attempt::Retry(format!(
            "{} did not answer within {}",
            receiver.url, receiver.timeout
        )),
        Err(e) => {
            let mut msg = format!("POST {}: {e}", receiver.url);
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            Attempt::Retry(msg)
        }
    }
}

/// Backoff before attempt `attempts + 1`, with +-20% jitter.
pub(crate) fn backoff(cfg: &DeliveryConfig, attempts: u32) -> Duration {
    let exp = cfg
        .initial_backoff
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    let d = exp.min(cfg.max_backoff);
    let jitter: f64 = rand::rng().random_range(0.8..1.2);
    d.mul_f64(jitter)
}

/// Applies the outcome of an attempt to `n`; true when it is finished.
pub(crate) fn record_outcome(
    n: &mut Notification,
    outcome: &Attempt,
    now: i64,
    max_age: Duration,
) -> bool {
    n.attempts += 1;
    match outcome {
        Attempt::Delivered => {
            n.state = DeliveryState::Delivered;
            n.last_error = None;
            n.finished_at = Some(now);
            true
        }
        Attempt::Fail(e) => {
            n.state = DeliveryState::Failed;
            n.last_error = Some(e.clone());
            n.finished_at = Some(now);
            true
        }
        Attempt::Retry(e) => {
            n.last_error = Some(e.clone());
            let age = now.saturating_sub(n.created_at);
            if age >= i64::try_from(max_age.as_nanos()).unwrap_or(i64::MAX) {
                n.state = DeliveryState::Failed;
                n.last_error = Some(format!("gave up after {} attempts: {e}", n.attempts));
                n.finished_at = Some(now);
                true
            } else {
                false
            }
        }
    }
}

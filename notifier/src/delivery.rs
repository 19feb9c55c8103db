//! Durable delivery: notifications are in RocksDB before the first HTTP
//! call; the queue here is the in-memory view of the pending ones.
//!
//! - Order: the notifications of one alert (or group) to one receiver go
//!   out in the order they were made (a `resolved` never overtakes its
//!   `firing`); different alerts and receivers proceed independently, up
//!   to `concurrency` requests at once and at most
//!   `max_in_flight_per_subscription` of one subscription (a tenant whose
//!   receiver hangs cannot take every slot).
//! - Retries: the pipeline's shared retry policy
//!   ([`sesam_common::http`]): network errors, timeouts, 401, 403, 408,
//!   409, 425, 429 and 5xx are retried with backoff (`initial_backoff`
//!   doubling to `max_backoff`, full jitter), after the receiver's
//!   `Retry-After` (429, 503; seconds or an HTTP date, at most
//!   [`MAX_RETRY_AFTER`]) when it gives one; a notification still failing
//!   `max_age` after it was made is given up ("gave up after N
//!   attempts"). A rejection (400, 413, 422), a redirect (never
//!   followed), another 4xx, a refusal by the egress policy, an invalid
//!   URL or a missing receiver fail the notification at once.
//! - What a tenant sees of a failure is a class and a code ("HTTP 503",
//!   "timeout", "connect error", "refused by egress policy"): never the
//!   receiver's answer, which would make the notifier a read oracle for
//!   whatever the URL points at. The collector's log gets the detail, with
//!   the receiver's scheme, host and port only (never its path, query or
//!   credentials).
//! - Delivery is at least once: a crash between the receiver's answer and
//!   the status write re-sends on restart, with the same
//!   `X-Notification-Id` header so receivers can drop the copy.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use schemas::notify::{Receiver, ReceiverType, WebhookPayload};
use schemas::time::rfc3339_from_nanos;
use serde_json::json;
use sesam_common::http;
use tokio::time::Instant;

use crate::egress::{self, EgressPolicy};
use crate::model::{DeliveryState, Notification, NotificationKind};

/// The longest `Retry-After` honoured.
pub use sesam_common::http::MAX_RETRY_AFTER;

/// Delivery tuning.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A notification still failing after this long is given up.
    pub max_age: Duration,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Finished notifications kept as history, per subscription.
    pub history_keep: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            max_age: Duration::from_secs(24 * 3600),
            concurrency: 32,
            history_keep: 10_000,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub n: Notification,
    pub next_at: Instant,
}

/// A queued notification: its id and subscription (ids are unique within
/// a subscription; an imported subscription keeps the ids another notifier
/// gave its notifications).
pub(crate) type QueueKey = (u64, String);

pub(crate) fn queue_key(n: &Notification) -> QueueKey {
    (n.id, n.subscription.clone())
}

/// Pending notifications by id (and subscription).
#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub pending: BTreeMap<QueueKey, Entry>,
    pub in_flight: HashSet<QueueKey>,
    /// Pending notifications per subscription.
    pub per_sub: HashMap<String, usize>,
    /// In-flight deliveries per subscription.
    flying: HashMap<String, usize>,
}

impl Queue {
    pub fn push(&mut self, n: Notification) {
        *self.per_sub.entry(n.subscription.clone()).or_default() += 1;
        if let Some(old) = self.pending.insert(
            queue_key(&n),
            Entry {
                n,
                next_at: Instant::now(),
            },
        ) {
            // The same notification again (an import of a state holding
            // it): counted once.
            if let Some(c) = self.per_sub.get_mut(&old.n.subscription) {
                *c = c.saturating_sub(1);
            }
        }
    }

    /// Whether `n` is pending (queued or in flight).
    pub fn contains(&self, n: &Notification) -> bool {
        self.pending.contains_key(&queue_key(n))
    }

    /// The queue's entry of `n`.
    pub fn get_mut(&mut self, n: &Notification) -> Option<&mut Entry> {
        self.pending.get_mut(&queue_key(n))
    }

    /// Deliveries of `sub` in flight.
    pub fn flying_of(&self, sub: &str) -> usize {
        self.flying.get(sub).copied().unwrap_or(0)
    }

    /// Pending notifications of `sub`.
    pub fn pending_of(&self, sub: &str) -> usize {
        self.per_sub.get(sub).copied().unwrap_or(0)
    }

    /// The smallest pending id of `sub` (`u64::MAX` when none).
    pub fn oldest_pending_of(&self, sub: &str) -> u64 {
        self.pending
            .values()
            .filter(|e| e.n.subscription == sub)
            .map(|e| e.n.id)
            .next()
            .unwrap_or(u64::MAX)
    }

    /// Removes a finished (or purged) notification.
    pub fn remove(&mut self, key: &QueueKey) -> Option<Notification> {
        let e = self.pending.remove(key)?;
        if let Some(c) = self.per_sub.get_mut(&e.n.subscription) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.per_sub.remove(&e.n.subscription);
            }
        }
        Some(e.n)
    }

    /// A delivery of `n` ended (whatever its outcome).
    pub fn landed(&mut self, n: &Notification) {
        if self.in_flight.remove(&queue_key(n)) {
            if let Some(c) = self.flying.get_mut(&n.subscription) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    self.flying.remove(&n.subscription);
                }
            }
        }
    }

    /// Drops every pending notification of `sub` (termination).
    pub fn purge(&mut self, sub: &str) {
        let keys: Vec<QueueKey> = self
            .pending
            .iter()
            .filter(|(_, e)| e.n.subscription == sub)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.remove(&k);
        }
    }

    /// Notifications due now (the first pending one of each alert and
    /// receiver), at most `room` and at most `per_sub` in flight per
    /// subscription, and the earliest future time one is due.
    pub fn due(&mut self, room: usize, per_sub: usize) -> (Vec<Notification>, Option<Instant>) {
        let now = Instant::now();
        let mut chains: HashSet<(&str, &str, &str)> = HashSet::new();
        let mut out: Vec<Notification> = Vec::new();
        let mut taking: HashMap<&str, usize> = HashMap::new();
        let mut next: Option<Instant> = None;
        for (key, e) in &self.pending {
            let chain = (
                e.n.subscription.as_str(),
                e.n.receiver.as_str(),
                e.n.fingerprint.as_str(),
            );
            if !chains.insert(chain) || self.in_flight.contains(key) {
                continue;
            }
            if e.next_at <= now {
                let sub = e.n.subscription.as_str();
                let flying = self.flying.get(sub).copied().unwrap_or(0)
                    + taking.get(sub).copied().unwrap_or(0);
                if out.len() < room && flying < per_sub {
                    *taking.entry(sub).or_default() += 1;
                    out.push(e.n.clone());
                }
            } else {
                next = Some(next.map_or(e.next_at, |x: Instant| x.min(e.next_at)));
            }
        }
        for n in &out {
            self.in_flight.insert(queue_key(n));
            *self.flying.entry(n.subscription.clone()).or_default() += 1;
        }
        (out, next)
    }
}

/// The outcome of one attempt: what the tenant sees (`public`: a class
/// and a code) and what the collector logs (`detail`: without the URL's
/// path, query or credentials).
#[derive(Debug)]
pub(crate) enum Attempt {
    Delivered,
    Retry {
        public: String,
        detail: String,
        /// The receiver's `Retry-After`, capped.
        after: Option<Duration>,
    },
    Fail {
        public: String,
        detail: String,
    },
}

impl Attempt {
    fn retry(public: impl Into<String>, detail: impl Into<String>) -> Attempt {
        Attempt::Retry {
            public: public.into(),
            detail: detail.into(),
            after: None,
        }
    }
    fn fail(public: impl Into<String>, detail: impl Into<String>) -> Attempt {
        Attempt::Fail {
            public: public.into(),
            detail: detail.into(),
        }
    }
    /// Whether the egress policy refused the destination.
    pub fn refused(&self) -> bool {
        matches!(self, Attempt::Fail { public, .. } if public == REFUSED)
    }
}

/// What a tenant sees when the policy refused the destination.
pub const REFUSED: &str = "refused by egress policy";

/// The URL a receiver is POSTed to.
fn target(receiver: &Receiver) -> String {
    match receiver.receiver_type {
        ReceiverType::Webhook => receiver.url.clone(),
        ReceiverType::Alertmanager => {
            let base = receiver.url.trim_end_matches('/');
            if base.ends_with("/api/v2/alerts") {
                base.to_string()
            } else {
                format!("{base}/api/v2/alerts")
            }
        }
    }
}

/// The labels every alert of `n` has with the same value.
fn common_labels(n: &Notification) -> BTreeMap<String, String> {
    let mut common = n.alert.labels.clone();
    for a in &n.grouped {
        common.retain(|k, v| a.labels.get(k) == Some(v));
    }
    common
}

/// The annotations every alert of `n` has with the same value.
fn common_annotations(n: &Notification) -> BTreeMap<String, String> {
    let mut common = n.alert.annotations.clone();
    for a in &n.grouped {
        common.retain(|k, v| a.annotations.get(k) == Some(v));
    }
    common
}

/// The webhook payload (Alertmanager's version 4) of `n` for `receiver`.
pub fn webhook_payload(receiver: &str, n: &Notification, external_url: &str) -> WebhookPayload {
    let mut group_labels = n.group_labels.clone();
    if let Some(a) = n.alert.labels.get("alertname") {
        group_labels.insert("alertname".to_string(), a.clone());
    }
    let group_key = if n.grouped.is_empty() && n.group_labels.is_empty() {
        format!(
            "{{}}:{{alertname={:?}, fingerprint={:?}}}",
            n.alert
                .labels
                .get("alertname")
                .map(String::as_str)
                .unwrap_or(""),
            n.fingerprint
        )
    } else {
        let parts: Vec<String> = group_labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        format!("{{}}:{{{}}}", parts.join(", "))
    };
    WebhookPayload {
        version: "4".into(),
        group_key,
        truncated_alerts: 0,
        status: n.alert.status.clone(),
        receiver: receiver.to_string(),
        group_labels,
        common_labels: common_labels(n),
        common_annotations: common_annotations(n),
        external_url: external_url.to_string(),
        alerts: n.alerts().cloned().collect(),
    }
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
            let payload = webhook_payload(&receiver.name, n, external_url);
            let body = serde_json::to_vec(&payload).unwrap_or_default();
            let mut req = client
                .post(target(receiver))
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
            let ends_at = if n.kind == NotificationKind::Resolved {
                None
            } else {
                Some(rfc3339_from_nanos(n.expires_at))
            };
            let body: Vec<serde_json::Value> = n
                .alerts()
                .map(|a| {
                    json!({
                        "labels": a.labels,
                        "annotations": a.annotations,
                        "startsAt": a.starts_at,
                        "endsAt": ends_at.clone().unwrap_or_else(|| a.ends_at.clone()),
                        "generatorURL": a.generator_url,
                    })
                })
                .collect();
            client
                .post(target(receiver))
                .header("x-notification-id", n.id.to_string())
                .json(&body)
        }
    }
}

/// The error chain of `e`, for the log (reqwest's own message without
/// the URL).
fn chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

/// Sends `n` once, to an address the egress `policy` allows.
pub(crate) async fn attempt(
    client: &reqwest::Client,
    receiver: Option<Receiver>,
    n: &Notification,
    external_url: &str,
    policy: &EgressPolicy,
) -> Attempt {
    let Some(receiver) = receiver else {
        let msg = format!("no receiver named {:?}", n.receiver);
        return Attempt::fail(msg.clone(), msg);
    };
    let dest = egress::redact(&receiver.url);
    let url = match reqwest::Url::parse(&target(&receiver)) {
        Ok(u) => u,
        Err(_) => return Attempt::fail("invalid URL", format!("{dest}: invalid URL")),
    };
    // IP-literal and localhost URLs skip DNS: checked here. Names are
    // checked on what they resolve to, by the client's resolver.
    if let Err(r) = policy.check_url(&url) {
        return Attempt::fail(REFUSED, format!("{dest}: {r}"));
    }
    let req = build_request(client, &receiver, n, external_url).timeout(receiver.timeout.0);
    match req.send().await {
        Ok(resp) => {
            // The body is never read: nothing of it reaches the tenant.
            let status = resp.status();
            let code = format!("HTTP {}", status.as_u16());
            if status.is_success() {
                Attempt::Delivered
            } else if status.is_redirection() {
                Attempt::fail(
                    format!("{code} (redirects are not followed)"),
                    format!("{dest} answered {status}; redirects are not followed"),
                )
            } else if http::classify(status.as_u16()) == http::Outcome::Retry {
                let after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .filter(|_| http::honours_retry_after(status.as_u16()))
                    .and_then(|v| {
                        http::retry_after(v, std::time::SystemTime::now(), MAX_RETRY_AFTER)
                    });
                Attempt::Retry {
                    public: code,
                    detail: format!("{dest} answered {status}"),
                    after,
                }
            } else {
                Attempt::fail(code, format!("{dest} answered {status}"))
            }
        }
        Err(e) if e.is_timeout() => Attempt::retry(
            format!("timeout after {}", receiver.timeout),
            format!("{dest} did not answer within {}", receiver.timeout),
        ),
        Err(e) => {
            if let Some(r) = egress::refusal_in(&e) {
                let detail = format!("{dest}: {r}");
                return Attempt::fail(REFUSED, detail);
            }
            let public = if e.is_connect() {
                "connect error"
            } else if e.is_request() || e.is_body() {
                "request error"
            } else {
                "network error"
            };
            Attempt::retry(public, format!("{dest}: {}", chain(e)))
        }
    }
}

/// Backoff before attempt `attempts + 1` (the shared [`http::Backoff`]).
pub(crate) fn backoff(cfg: &DeliveryConfig, attempts: u32) -> Duration {
    http::Backoff::new(cfg.initial_backoff, cfg.max_backoff).delay(attempts.saturating_sub(1))
}

/// The wait before the next attempt after `outcome` (the `attempts`-th):
/// the receiver's `Retry-After` when it gave one, else the backoff.
pub(crate) fn next_delay(cfg: &DeliveryConfig, attempts: u32, outcome: &Attempt) -> Duration {
    match outcome {
        Attempt::Retry {
            after: Some(after), ..
        } => *after,
        _ => backoff(cfg, attempts),
    }
}

/// Applies the outcome of an attempt to `n`; true when it is finished.
pub(crate) fn record_outcome(
    n: &mut Notification,
    outcome: &Attempt,
    now: i64,
    max_age: Duration,
) -> bool {
    n.attempts = n.attempts.saturating_add(1);
    match outcome {
        Attempt::Delivered => {
            n.state = DeliveryState::Delivered;
            n.last_error = None;
            n.finished_at = Some(now);
            true
        }
        Attempt::Fail { public, .. } => {
            n.state = DeliveryState::Failed;
            n.last_error = Some(public.clone());
            n.finished_at = Some(now);
            true
        }
        Attempt::Retry { public, .. } => {
            n.last_error = Some(public.clone());
            let age = now.saturating_sub(n.created_at);
            if age >= i64::try_from(max_age.as_nanos()).unwrap_or(i64::MAX) {
                n.state = DeliveryState::Failed;
                n.last_error = Some(format!("gave up after {} attempts: {public}", n.attempts));
                n.finished_at = Some(now);
                true
            } else {
                false
            }
        }
    }
}

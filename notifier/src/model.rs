//! The engine's data: what it knows about sources and pipes, alerts and
//! their fingerprints, notifications, and the typed state changes an
//! evaluation produces ([`Change`], [`Effects`]) for the store to write.
//!
//! Nothing here knows RocksDB keys: `store.rs` maps each [`Change`] to its
//! key.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use schemas::notify::{NotificationRule, Receiver, RuleType, Silence, WebhookAlert};
use schemas::time::rfc3339_from_nanos;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::feed::FeedPos;
use crate::rule::RuleKey;

/// The maps and sets on the evaluation path (a lookup or two per record):
/// foldhash, randomly seeded, instead of SipHash, which was a tenth of the
/// evaluation thread's time under a stream of execution records.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

pub(crate) const NANOS: i64 = 1_000_000_000;
/// A metric series not updated for this long is stale (as in Prometheus).
pub const METRIC_STALE_NANOS: i64 = 5 * 60 * NANOS;
/// Zero time in Alertmanager's payloads (`endsAt` of a firing alert).
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A source: (subscription, source).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceKey {
    pub sub: String,
    pub source: String,
}

impl SourceKey {
    pub fn new(sub: &str, source: &str) -> SourceKey {
        SourceKey {
            sub: sub.to_string(),
            source: source.to_string(),
        }
    }
}

/// A pipe of a source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PipeKey {
    pub sub: String,
    pub source: String,
    pub pipe: String,
}

impl PipeKey {
    pub fn source_key(&self) -> SourceKey {
        SourceKey::new(&self.sub, &self.source)
    }
}

/// How a pipe is scheduled, from the node's config snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleSpec {
    /// No config snapshot seen yet.
    #[default]
    Unknown,
    /// Seconds between runs.
    Interval(f64),
    /// Cron expression (5 fields, UTC).
    Cron(String),
    /// Manual or off: never expected to start by itself.
    Manual,
}

/// What the engine knows about one pipe.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PipeState {
    /// When the pipe was first seen (event time).
    pub known_since: i64,
    pub last_started: Option<i64>,
    pub last_finished: Option<i64>,
    pub running_since: Option<i64>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub schedule: ScheduleSpec,
    /// When its source came back after a silence (event time): overdue
    /// deadlines count from here at the earliest, so nothing that expired
    /// while the source said nothing pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at: Option<i64>,
    #[serde(skip)]
    pub(crate) cron: Option<Arc<cron::Schedule>>,
}

fn yes() -> bool {
    true
}

/// What the engine knows about one source.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct SourceState {
    /// Newest record `ts` from the source: its event clock.
    pub newest_ts: i64,
    /// Collector time of the last record from it.
    pub last_arrival: i64,
}

/// An active (firing) alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub fingerprint: String,
    pub rule_id: String,
    pub rule_type: RuleType,
    pub subscription: String,
    pub source: Option<String>,
    pub pipe: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: i64,
    pub last_event_at: i64,
    /// Events that fired or re-fired it since it started.
    pub event_count: u64,
    /// Events since the last notification.
    pub unnotified_events: u64,
    /// The firing notification went out (or waits in its group).
    pub notified: bool,
    pub last_notified_at: Option<i64>,
    /// When it repeats next (collector time): `repeat_interval` after its
    /// last notification, or after a repeat that a silence held back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_at: Option<i64>,
    /// Fingerprint of the `node_heartbeat_overdue` alert suppressing it.
    pub inhibited_by: Option<String>,
    /// Log-pattern and source-conflict alerts resolve at this time without
    /// a new event.
    pub resolve_at: Option<i64>,
}

impl Alert {
    pub fn rule_key(&self) -> RuleKey {
        RuleKey::new(&self.subscription, &self.rule_id)
    }

    /// Whether it is a pipe overdue alert (inhibited by heartbeats).
    pub fn is_overdue(&self) -> bool {
        matches!(
            self.rule_type,
            RuleType::PumpStartedOverdue | RuleType::PumpFinishedOverdue
        )
    }
}

/// What a notification says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// The alert started firing.
    Firing,
    /// Still firing, with further events since the last notification.
    Repeat,
    /// Still firing, no new events: keeps Alertmanager from expiring it.
    Refresh,
    Resolved,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Firing => "firing",
            NotificationKind::Repeat => "repeat",
            NotificationKind::Refresh => "refresh",
            NotificationKind::Resolved => "resolved",
        }
    }
}

/// Delivery state of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

/// A notification to one receiver: queued in RocksDB before it is sent,
/// kept as history after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub id: u64,
    pub subscription: String,
    pub receiver: String,
    pub rule_id: String,
    /// The alert's fingerprint, or the group's for a grouped notification.
    pub fingerprint: String,
    pub kind: NotificationKind,
    pub alert: WebhookAlert,
    /// The further alerts of a grouped notification (`group_by`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grouped: Vec<WebhookAlert>,
    /// Labels the alerts of a grouped notification share by `group_by`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub group_labels: BTreeMap<String, String>,
    /// `endsAt` sent to Alertmanager while firing (it expires alerts not
    /// refreshed by then).
    pub expires_at: i64,
    pub created_at: i64,
    pub state: DeliveryState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub finished_at: Option<i64>,
}

impl Notification {
    /// Every alert it carries.
    pub fn alerts(&self) -> impl Iterator<Item = &WebhookAlert> {
        std::iter::once(&self.alert).chain(self.grouped.iter())
    }
}

/// A `metric_threshold` series whose comparison holds: firing once it held
/// for the rule's `for`. Persisted (only when it starts and ends), so a
/// restart does not start the `for` over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricState {
    pub rule: RuleKey,
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// Since when the comparison holds (collector time).
    pub since: i64,
    /// Last sample (collector time; a restart counts as one).
    pub last_seen: i64,
}

/// Alerts of a grouped rule waiting to go out together (`group_wait`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    pub rule: RuleKey,
    pub kind: NotificationKind,
    /// The `group_by` labels and their values.
    pub labels: BTreeMap<String, String>,
    /// Fingerprints of the member alerts, in arrival order.
    pub members: Vec<String>,
    /// Snapshots of resolved members (they are gone from the alerts).
    #[serde(default)]
    pub resolved: Vec<WebhookAlert>,
    /// When the group goes out (collector time).
    pub flush_at: i64,
}

/// A state change for the store to write.
#[derive(Debug, Clone)]
pub enum Change {
    Rule(NotificationRule),
    RuleGone(RuleKey),
    Receiver(Receiver),
    ReceiverGone {
        sub: String,
        name: String,
    },
    Silence(Silence),
    SilenceGone {
        sub: String,
        id: String,
    },
    Alert(Alert),
    AlertGone {
        sub: String,
        fp: String,
    },
    Pipe(PipeKey, PipeState),
    PipeGone(PipeKey),
    Source(SourceKey, SourceState),
    SourceGone(SourceKey),
    /// `<sub>\0<rule id>\0<source>\0<pipe>` and its runs.
    Window(String, VecDeque<(i64, f64)>),
    WindowGone(String),
    /// `<sub>\0<rule id>\0<series>`.
    Metric(String, MetricState),
    MetricGone(String),
    /// `<sub>\0<group key>`.
    Group(String, Group),
    GroupGone(String),
}

impl Change {
    /// The subscription whose state it changes.
    pub fn subscription(&self) -> &str {
        match self {
            Change::Rule(r) => &r.subscription,
            Change::Receiver(r) => &r.subscription,
            Change::Silence(s) => &s.subscription,
            Change::Alert(a) => &a.subscription,
            Change::RuleGone(RuleKey { sub, .. })
            | Change::ReceiverGone { sub, .. }
            | Change::SilenceGone { sub, .. }
            | Change::AlertGone { sub, .. }
            | Change::Pipe(PipeKey { sub, .. }, _)
            | Change::PipeGone(PipeKey { sub, .. })
            | Change::Source(SourceKey { sub, .. }, _)
            | Change::SourceGone(SourceKey { sub, .. }) => sub,
            Change::Window(k, _)
            | Change::WindowGone(k)
            | Change::Metric(k, _)
            | Change::MetricGone(k)
            | Change::Group(k, _)
            | Change::GroupGone(k) => k.split('\0').next().unwrap_or(""),
        }
    }
}

/// Everything an evaluation changed, to be written in one batch.
#[derive(Debug, Default)]
pub struct Effects {
    pub changes: Vec<Change>,
    pub notifications: Vec<Notification>,
    /// Sync the batch (API changes and notifications).
    pub sync: bool,
    /// State not created because a per-subscription bound was reached:
    /// (subscription, which bound), for `/metrics`.
    pub limited: Vec<(String, &'static str)>,
    /// The collector clock of the evaluation: persisted, so that the next
    /// start knows how long the collector was down.
    pub alive: Option<i64>,
    /// Per subscription: the commit feed position of the last record this
    /// evaluation covered (written with its changes, see `store.rs`).
    pub watermarks: Vec<(String, FeedPos)>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.notifications.is_empty() && self.watermarks.is_empty()
    }
}

/// The fingerprint of an alert: 16 hex digits of SHA-256 over the rule id
/// and the identifying labels.
pub fn fingerprint(rule: &str, sub: &str, source: &str, pipe: &str, extra: &str) -> String {
    let mut h = Sha256::new();
    for part in [rule, sub, source, pipe, extra] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..8])
}

/// A series identity: name and sorted labels.
pub fn series_id(name: &str, labels: &[(String, String)]) -> String {
    let mut ls: Vec<&(String, String)> = labels.iter().filter(|(k, _)| k != "__name__").collect();
    ls.sort();
    let mut out = String::from(name);
    for (k, v) in ls {
        out.push('\u{1}');
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

pub(crate) fn opt_ts(ts: i64) -> String {
    rfc3339_from_nanos(ts)
}

/// `s` cut to at most `max` bytes (on a character boundary), marked.
pub fn short(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    format!("{}...", prefix(s, max))
}

/// `s` cut to at most `max` bytes, without a marker (text to match).
pub(crate) fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub(crate) fn secs(n: i64) -> String {
    humantime::format_duration(std::time::Duration::from_secs((n / NANOS).max(0) as u64))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_separate_their_parts() {
        assert_ne!(
            fingerprint("a", "b", "c", "", ""),
            fingerprint("a", "bc", "", "", "")
        );
        assert_eq!(fingerprint("r", "s", "x", "p", "").len(), 16);
    }

    #[test]
    fn texts_are_cut_on_character_boundaries() {
        assert_eq!(short("ééé", 3), "é...");
        assert_eq!(prefix("ééé", 5), "éé");
        assert_eq!(short("abc", 10), "abc");
    }
}

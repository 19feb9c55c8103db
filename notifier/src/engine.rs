//! The rule engine: evaluates records, metric samples and timers against
//! the rules, and keeps the alert lifecycle (fire once, repeat with counts,
//! resolve, silence, inhibit).
//!
//! The engine is deterministic: every entry point takes `now` (collector
//! clock, nanoseconds) and records carry their own event time, so tests
//! drive it with a manual clock. It never does I/O: every state change is
//! collected in [`Effects`] (keys to put and delete, notifications to
//! queue) that the caller writes to RocksDB in one batch.
//!
//! # Time
//! - Pipe overdue rules (`pump_started_overdue`, `pump_finished_overdue`)
//!   run on the *source's event time*: the newest record `ts` seen from that
//!   source. A deadline fires only once the source has emitted something
//!   later than it, so a node or shipper that is down (or a backlog being
//!   caught up) never makes its pipes look overdue.
//! - `node_heartbeat_overdue`, log-pattern expiry, repeats, silences and
//!   `metric_threshold`'s `for` run on the collector's clock.
//!
//! # Timers
//! Deadlines sit in ordered sets (a next-deadline scheduler): per source for
//! event time, one for the collector clock. Each (rule, pipe) or (rule,
//! source) keeps at most one armed entry, at its earliest deadline; when it
//! pops, the condition is evaluated from current state and the entry is
//! re-armed at the new deadline if the pipe moved on in between. Nothing
//! scans all pipes periodically.
//!
//! # Bounds
//! Tenants choose rules, silences and what their records say, so every
//! piece of state is per subscription and bounded ([`Limits`]): rules,
//! silences and receivers (checked by the API), tracked pipes and sources,
//! armed timers, value windows and metric series, active alerts. Past a
//! bound the state is not created and the event is counted
//! ([`Effects::limited`]). Deadline arithmetic saturates, and one
//! [`Engine::tick`] runs at most [`MAX_TIMERS_PER_TICK`] timers, so no rule
//! can make the engine loop while its lock is held. Records of a
//! subscription whose evaluation exceeded its time budget in one call are
//! not evaluated against its rules for the rest of that call ([`Budget`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use schemas::notify::{NotificationRule, Receiver, ReceiverType, RuleType, WebhookAlert};
use schemas::time::rfc3339_from_nanos;
use schemas::{Body, EventType, ExecutionBody, HealthBody, HealthStatus, LogBody, Record};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::limits::Limits;
use crate::rule::{CompiledRule, Kind, RuleKey};
use crate::silence::ActiveSilence;
use crate::store::keys;

const NANOS: i64 = 1_000_000_000;
/// A metric series not updated for this long is stale (as in Prometheus).
pub const METRIC_STALE_NANOS: i64 = 5 * 60 * NANOS;
/// Zero time in Alertmanager's payloads (`endsAt` of a firing alert).
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";
/// Timers one [`Engine::tick`] runs at most; the caller ticks again, with
/// the engine lock released in between, while [`Engine::tick`] says more
/// are due.
pub const MAX_TIMERS_PER_TICK: usize = 1024;
/// A summed value window keeps at most about this many entries: runs
/// closer together than 1/1024 of the window are added up in one entry.
const WINDOW_BUCKETS: i64 = 1024;
/// Longest schedule interval taken from a node's config (a year).
const MAX_SCHEDULE_SECS: f64 = 366.0 * 86_400.0;
/// Longest cron expression taken from a node's config.
const MAX_CRON_BYTES: usize = 256;

/// A source: (subscription, source).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceKey {
    pub sub: String,
    pub source: String,
}

/// A pipe of a source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PipeKey {
    pub sub: String,
    pub source: String,
    pub pipe: String,
}

impl PipeKey {
    fn source_key(&self) -> SourceKey {
        SourceKey {
            sub: self.sub.clone(),
            source: self.source.clone(),
        }
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
    #[serde(skip)]
    cron: Option<Arc<cron::Schedule>>,
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
    /// The firing notification went out.
    pub notified: bool,
    pub last_notified_at: Option<i64>,
    /// Fingerprint of the `node_heartbeat_overdue` alert suppressing it.
    pub inhibited_by: Option<String>,
    /// Log-pattern and source-conflict alerts resolve at this time without
    /// a new event.
    pub resolve_at: Option<i64>,
}

impl Alert {
    fn rule_key(&self) -> RuleKey {
        RuleKey::new(&self.subscription, &self.rule_id)
    }
}

/// What a notification says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    pub fingerprint: String,
    pub kind: NotificationKind,
    pub alert: WebhookAlert,
    /// `endsAt` sent to Alertmanager while firing (it expires alerts not
    /// refreshed by then).
    pub expires_at: i64,
    pub created_at: i64,
    pub state: DeliveryState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub finished_at: Option<i64>,
}

/// Everything an evaluation changed, to be written in one batch.
#[derive(Debug, Default)]
pub struct Effects {
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
    pub deletes: Vec<Vec<u8>>,
    pub notifications: Vec<Notification>,
    /// Sync the batch (API changes and notifications).
    pub sync: bool,
    /// State not created because a per-subscription bound was reached:
    /// (subscription, which bound), for `/metrics`.
    pub limited: Vec<(String, &'static str)>,
    dirty_pipes: HashSet<PipeKey>,
    dirty_sources: HashSet<SourceKey>,
    dirty_windows: HashSet<String>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty() && self.notifications.is_empty()
    }
}

/// What one subscription may spend on evaluation in one call of
/// [`Engine::on_records`] or [`Engine::drain`]: once it is used up, the
/// subscription's further records are deferred (evaluated later, in
/// order); a single record whose evaluation alone outlasts it is cut (its
/// remaining rules skipped).
#[derive(Debug)]
pub struct Budget {
    meter: Meter,
    /// Per-subscription limits below the meter's (what is left of a
    /// subscription's share of evaluation time).
    allow: HashMap<String, Duration>,
    spent: HashMap<String, (Duration, u64)>,
    /// Records deferred, per subscription.
    pub deferred: HashMap<String, u64>,
    /// Records not (fully) evaluated, per subscription: cut, or dropped
    /// because the subscription's backlog was full.
    pub skipped: HashMap<String, u64>,
}

#[derive(Debug, Clone, Copy)]
enum Meter {
    Time(Duration),
    Records(u64),
}

fn bump(m: &mut HashMap<String, u64>, sub: &str) {
    match m.get_mut(sub) {
        Some(n) => *n += 1,
        None => {
            m.insert(sub.to_string(), 1);
        }
    }
}

impl Budget {
    /// Evaluation time per subscription.
    pub fn new(limit: Duration) -> Budget {
        Budget::with(Meter::Time(limit))
    }

    /// A number of records per subscription, never cut (deterministic
    /// tests).
    pub fn records(n: u64) -> Budget {
        Budget::with(Meter::Records(n))
    }

    /// No limit.
    pub fn unlimited() -> Budget {
        Budget::new(Duration::MAX)
    }

    fn with(meter: Meter) -> Budget {
        Budget {
            meter,
            allow: HashMap::new(),
            spent: HashMap::new(),
            deferred: HashMap::new(),
            skipped: HashMap::new(),
        }
    }

    /// Lowers `sub`'s time limit to `d` (its share of evaluation time
    /// left; zero defers all its records).
    pub fn allow(&mut self, sub: &str, d: Duration) {
        self.allow.insert(sub.to_string(), d);
    }

    /// Evaluation time spent per subscription.
    pub fn spent(&self) -> impl Iterator<Item = (&str, Duration)> + '_ {
        self.spent.iter().map(|(s, (d, _))| (s.as_str(), *d))
    }

    fn limit(&self, sub: &str, limit: Duration) -> Duration {
        self.allow.get(sub).map_or(limit, |a| limit.min(*a))
    }

    fn over(&self, sub: &str) -> bool {
        let (t, n) = self.spent.get(sub).copied().unwrap_or_default();
        match self.meter {
            Meter::Time(limit) => {
                let limit = self.limit(sub, limit);
                t > limit || limit.is_zero()
            }
            Meter::Records(max) => n >= max,
        }
    }

    /// When a record started at `t` must stop evaluating: once it alone
    /// used a whole budget (a record is started only while the
    /// subscription has some left, and then may finish).
    fn deadline(&self, t: Instant) -> Option<Instant> {
        match self.meter {
            Meter::Time(limit) => t.checked_add(limit),
            Meter::Records(_) => None,
        }
    }

    fn charge(&mut self, sub: &str, d: Duration) {
        match self.spent.get_mut(sub) {
            Some((t, n)) => {
                *t = t.saturating_add(d);
                *n += 1;
            }
            None => {
                self.spent.insert(sub.to_string(), (d, 1));
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Timer {
    Started {
        rule: RuleKey,
        pipe: PipeKey,
    },
    Finished {
        rule: RuleKey,
        pipe: PipeKey,
    },
    Heartbeat {
        rule: RuleKey,
        source: SourceKey,
    },
    /// A pattern or conflict alert resolves if nothing new came.
    ResolveAt {
        sub: String,
        fp: String,
    },
    Repeat {
        sub: String,
        fp: String,
    },
    /// `<sub>\0<rule id>\0<series>`
    Metric {
        key: String,
    },
    SilenceEdge {
        sub: String,
        id: String,
    },
}

impl Timer {
    fn sub(&self) -> &str {
        match self {
            Timer::Started { rule, .. }
            | Timer::Finished { rule, .. }
            | Timer::Heartbeat { rule, .. } => &rule.sub,
            Timer::ResolveAt { sub, .. }
            | Timer::Repeat { sub, .. }
            | Timer::SilenceEdge { sub, .. } => sub,
            Timer::Metric { key } => key.split('\0').next().unwrap_or(""),
        }
    }
}

/// Rules matching one (subscription, source, pipe).
type RuleSet = Arc<[Arc<CompiledRule>]>;

#[derive(Debug, Default)]
struct SubIndex {
    /// Pipe rules whose patterns are all plain names, by name.
    literal: HashMap<String, Vec<Arc<CompiledRule>>>,
    /// Pipe rules with a wildcard pattern.
    wild: Vec<Arc<CompiledRule>>,
    /// Heartbeat, health and source-conflict rules.
    source_rules: Vec<Arc<CompiledRule>>,
    /// Metric rules by metric name.
    metric: HashMap<String, Vec<Arc<CompiledRule>>>,
    /// Rules by `<source>\0<pipe>`; cleared when the rules change, and
    /// when it outgrows its bound.
    cache: HashMap<String, RuleSet>,
}

#[derive(Debug)]
struct MetricState {
    rule: RuleKey,
    labels: Vec<(String, String)>,
    value: f64,
    since: i64,
    last_seen: i64,
}

/// Counts of bounded state of one subscription.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    pipes: usize,
    sources: usize,
    alerts: usize,
    timers: usize,
    series: usize,
}

/// The engine state. Not thread safe: the notifier holds it in a mutex.
#[derive(Debug)]
pub struct Engine {
    pub rules: BTreeMap<RuleKey, Arc<CompiledRule>>,
    subs: HashMap<String, SubIndex>,
    scratch: String,
    pub receivers: BTreeMap<(String, String), Receiver>,
    /// By (subscription, id).
    pub silences: BTreeMap<(String, String), ActiveSilence>,
    /// By fingerprint (which covers the subscription).
    pub alerts: HashMap<String, Alert>,
    /// Fingerprints of the active alerts of each subscription.
    alerts_of: HashMap<String, BTreeSet<String>>,
    firing_by_rule: HashMap<RuleKey, usize>,
    pub pipes: HashMap<PipeKey, PipeState>,
    pub sources: HashMap<SourceKey, SourceState>,
    counts: HashMap<String, Counts>,
    /// `<sub>\0<rule id>\0<source>\0<pipe>`
    windows: HashMap<String, VecDeque<(i64, f64)>>,
    /// `<sub>\0<rule id>\0<series>`
    metric: HashMap<String, MetricState>,
    event_timers: HashMap<SourceKey, BTreeSet<(i64, Timer)>>,
    wall_timers: BTreeSet<(i64, Timer)>,
    armed: HashMap<Timer, i64>,
    heartbeat_firing: HashMap<SourceKey, String>,
    pub next_notification: u64,
    /// Heartbeats count from here at the earliest: the collector's start,
    /// so its own downtime does not page for every node.
    started_at: i64,
    external_url: String,
    fx: Effects,
    limits: Limits,
    /// Loading a rules file: API writes are synced once at the end.
    pub bulk: bool,
    /// Records of subscriptions that used up their evaluation budget,
    /// waiting (in order) for [`Engine::drain`].
    backlog: HashMap<String, VecDeque<Record>>,
    /// Subscriptions with a backlog, in drain order.
    backlog_order: VecDeque<String>,
    /// While a record is evaluated: when its subscription's budget runs out.
    deadline: Option<Instant>,
    /// Rules of the record being evaluated were skipped for lack of time.
    cut: bool,
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

fn opt_ts(ts: i64) -> String {
    rfc3339_from_nanos(ts)
}

/// `s` cut to at most `max` bytes (on a character boundary).
pub fn short(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// `s` cut to at most `max` bytes, without a marker (text to match).
fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn secs(n: i64) -> String {
    humantime::format_duration(std::time::Duration::from_secs((n / NANOS).max(0) as u64))
        .to_string()
}

/// The entries of `map` keyed by (`sub`, _).
fn of_sub<'a, V>(
    map: &'a BTreeMap<(String, String), V>,
    sub: &'a str,
) -> impl Iterator<Item = (&'a (String, String), &'a V)> + 'a {
    map.range((sub.to_string(), String::new())..)
        .take_while(move |((s, _), _)| s == sub)
}

/// What a firing condition says about the event that caused it.
struct Fire<'a> {
    rule: &'a Arc<CompiledRule>,
    source: Option<&'a str>,
    pipe: Option<&'a str>,
    /// Extra labels (metric series).
    extra: Vec<(String, String)>,
    /// Extra identity (the metric series) for the fingerprint.
    identity: String,
    event_ts: i64,
    summary: String,
    annotations: Vec<(&'static str, String)>,
}

impl Engine {
    pub fn new(external_url: impl Into<String>, now: i64, limits: Limits) -> Engine {
        Engine {
            rules: BTreeMap::new(),
            subs: HashMap::new(),
            scratch: String::new(),
            receivers: BTreeMap::new(),
            silences: BTreeMap::new(),
            alerts: HashMap::new(),
            alerts_of: HashMap::new(),
            firing_by_rule: HashMap::new(),
            pipes: HashMap::new(),
            sources: HashMap::new(),
            counts: HashMap::new(),
            windows: HashMap::new(),
            metric: HashMap::new(),
            event_timers: HashMap::new(),
            wall_timers: BTreeSet::new(),
            armed: HashMap::new(),
            heartbeat_firing: HashMap::new(),
            next_notification: 1,
            started_at: now,
            external_url: external_url.into(),
            fx: Effects::default(),
            limits,
            bulk: false,
            backlog: HashMap::new(),
            backlog_order: VecDeque::new(),
            deadline: None,
            cut: false,
        }
    }

    /// Whether the record being evaluated is past its subscription's
    /// budget (then its remaining rules are skipped).
    fn out_of_time(&mut self) -> bool {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.cut = true;
        }
        self.cut
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The changes since the last call.
    pub fn take_effects(&mut self) -> Effects {
        let mut fx = std::mem::take(&mut self.fx);
        for k in std::mem::take(&mut fx.dirty_pipes) {
            let key = keys::pipe(&k);
            match self.pipes.get(&k) {
                Some(p) => fx.puts.push((key, json(&(&k, p)))),
                None => fx.deletes.push(key),
            }
        }
        for k in std::mem::take(&mut fx.dirty_sources) {
            let key = keys::source(&k);
            match self.sources.get(&k) {
                Some(s) => fx.puts.push((key, json(&(&k, s)))),
                None => fx.deletes.push(key),
            }
        }
        for k in std::mem::take(&mut fx.dirty_windows) {
            let key = keys::window(&k);
            match self.windows.get(&k) {
                Some(w) => fx.puts.push((key, json(&(&k, w)))),
                None => fx.deletes.push(key),
            }
        }
        fx
    }

    /// Writes `value` at `key` with the next batch, synced (unless in bulk
    /// mode, whose caller syncs once at the end).
    pub fn persist(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.fx.puts.push((key, value));
        self.fx.sync = !self.bulk;
    }

    /// Deletes `key` with the next batch, synced (unless in bulk mode).
    pub fn forget(&mut self, key: Vec<u8>) {
        self.fx.deletes.push(key);
        self.fx.sync = !self.bulk;
    }

    /// The earliest collector-clock deadline.
    pub fn next_deadline(&self) -> Option<i64> {
        self.wall_timers.first().map(|(d, _)| *d)
    }

    /// Deferred records waiting for evaluation.
    pub fn deferred(&self) -> usize {
        self.backlog.values().map(VecDeque::len).sum()
    }

    fn count(&mut self, sub: &str) -> &mut Counts {
        if !self.counts.contains_key(sub) {
            self.counts.insert(sub.to_string(), Counts::default());
        }
        self.counts.get_mut(sub).expect("inserted above")
    }

    fn limited(&mut self, sub: &str, what: &'static str) {
        self.fx.limited.push((sub.to_string(), what));
    }

    /// Rules of `sub`.
    pub fn rule_count(&self, sub: &str) -> usize {
        self.rules
            .range(RuleKey::new(sub, "")..)
            .take_while(|(k, _)| k.sub == sub)
            .count()
    }

    /// Rules of `sub`, in id order.
    pub fn rules_of<'a>(
        &'a self,
        sub: &'a str,
    ) -> impl Iterator<Item = &'a Arc<CompiledRule>> + 'a {
        self.rules
            .range(RuleKey::new(sub, "")..)
            .take_while(move |(k, _)| k.sub == sub)
            .map(|(_, r)| r)
    }

    /// Receivers of `sub`.
    pub fn receiver_count(&self, sub: &str) -> usize {
        of_sub(&self.receivers, sub).count()
    }

    /// Silences of `sub`.
    pub fn silence_count(&self, sub: &str) -> usize {
        of_sub(&self.silences, sub).count()
    }

    // ---- restore -------------------------------------------------------

    /// Restores persisted state (after the rules, receivers and silences
    /// are in) and re-arms every timer.
    pub fn restore(
        &mut self,
        alerts: Vec<Alert>,
        pipes: Vec<(PipeKey, PipeState)>,
        sources: Vec<(SourceKey, SourceState)>,
        windows: Vec<(String, VecDeque<(i64, f64)>)>,
    ) {
        for (k, mut p) in pipes {
            if let ScheduleSpec::Cron(expr) = &p.schedule {
                p.cron = parse_cron(expr).map(Arc::new);
            }
            self.count(&k.sub).pipes += 1;
            self.pipes.insert(k, p);
        }
        for (k, s) in sources {
            self.count(&k.sub).sources += 1;
            self.sources.insert(k, s);
        }
        for (k, w) in windows {
            let sub = k.split('\0').next().unwrap_or("").to_string();
            self.count(&sub).series += 1;
            self.windows.insert(k, w);
        }
        for a in alerts {
            if a.rule_type == RuleType::NodeHeartbeatOverdue {
                if let Some(src) = &a.source {
                    self.heartbeat_firing.insert(
                        SourceKey {
                            sub: a.subscription.clone(),
                            source: src.clone(),
                        },
                        a.fingerprint.clone(),
                    );
                }
            }
            self.insert_alert(a);
        }
        let fps: Vec<String> = self.alerts.keys().cloned().collect();
        for fp in fps {
            self.arm_alert_timers(&fp);
        }
        let pipe_keys: Vec<PipeKey> = self.pipes.keys().cloned().collect();
        for k in pipe_keys {
            self.arm_pipe(&k);
        }
        let source_keys: Vec<SourceKey> = self.sources.keys().cloned().collect();
        for k in source_keys {
            self.arm_heartbeats(&k);
        }
        let ids: Vec<(String, String)> = self.silences.keys().cloned().collect();
        for id in ids {
            self.arm_silence(&id);
        }
    }

    fn arm_alert_timers(&mut self, fp: &str) {
        let Some(a) = self.alerts.get(fp) else { return };
        let repeat = self
            .rules
            .get(&a.rule_key())
            .map(|r| r.repeat_nanos)
            .unwrap_or(3600 * NANOS);
        let at = a.last_notified_at.map(|t| t.saturating_add(repeat));
        let resolve_at = a.resolve_at;
        let sub = a.subscription.clone();
        if let Some(at) = at {
            self.arm_wall(
                Timer::Repeat {
                    sub: sub.clone(),
                    fp: fp.to_string(),
                },
                at,
            );
        }
        if let Some(at) = resolve_at {
            self.arm_wall(
                Timer::ResolveAt {
                    sub,
                    fp: fp.to_string(),
                },
                at,
            );
        }
    }

    fn insert_alert(&mut self, a: Alert) {
        *self.firing_by_rule.entry(a.rule_key()).or_default() += 1;
        self.count(&a.subscription).alerts += 1;
        self.alerts_of
            .entry(a.subscription.clone())
            .or_default()
            .insert(a.fingerprint.clone());
        self.alerts.insert(a.fingerprint.clone(), a);
    }

    fn remove_alert(&mut self, fp: &str) -> Option<Alert> {
        let a = self.alerts.remove(fp)?;
        let rk = a.rule_key();
        if let Some(n) = self.firing_by_rule.get_mut(&rk) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.firing_by_rule.remove(&rk);
            }
        }
        let c = self.count(&a.subscription);
        c.alerts = c.alerts.saturating_sub(1);
        if let Some(set) = self.alerts_of.get_mut(&a.subscription) {
            set.remove(fp);
            if set.is_empty() {
                self.alerts_of.remove(&a.subscription);
            }
        }
        Some(a)
    }

    /// Fingerprints of the active alerts of `sub`.
    fn fps_of(&self, sub: &str) -> Vec<String> {
        self.alerts_of
            .get(sub)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Active alerts of `sub`.
    pub fn alerts_of<'a>(&'a self, sub: &'a str) -> impl Iterator<Item = &'a Alert> + 'a {
        self.alerts_of
            .get(sub)
            .into_iter()
            .flat_map(|s| s.iter())
            .filter_map(|fp| self.alerts.get(fp))
    }

    // ---- rules, receivers, silences ------------------------------------

    /// Adds or replaces a rule. Alerts of a replaced rule whose type
    /// changed are resolved.
    pub fn set_rule(&mut self, rule: Arc<CompiledRule>, now: i64) {
        let key = rule.key();
        if let Some(old) = self.rules.get(&key).cloned() {
            self.unindex(&old);
            if old.rule_type() != rule.rule_type() {
                self.resolve_rule_alerts(&key, now);
            }
        }
        self.rules.insert(key, rule.clone());
        self.index(&rule);
        self.arm_rule(&rule, now);
    }

    /// Removes a rule and resolves its alerts.
    pub fn remove_rule(&mut self, key: &RuleKey, now: i64) -> Option<Arc<CompiledRule>> {
        // Resolve first: the resolved notifications go to the rule's
        // receivers.
        self.resolve_rule_alerts(key, now);
        let old = self.rules.remove(key)?;
        self.unindex(&old);
        Some(old)
    }

    fn resolve_rule_alerts(&mut self, key: &RuleKey, now: i64) {
        if !self.firing_by_rule.contains_key(key) {
            return;
        }
        let fps: Vec<String> = self
            .alerts_of(&key.sub)
            .filter(|a| a.rule_id == key.id)
            .map(|a| a.fingerprint.clone())
            .collect();
        for fp in fps {
            self.resolve(&fp, now);
        }
    }

    fn index(&mut self, rule: &Arc<CompiledRule>) {
        let idx = self.subs.entry(rule.sub().to_string()).or_default();
        idx.cache.clear();
        match &rule.kind {
            Kind::Heartbeat { .. } | Kind::Unhealthy { .. } | Kind::Conflict { .. } => {
                idx.source_rules.push(rule.clone())
            }
            Kind::Metric { metric, .. } => idx
                .metric
                .entry(metric.clone())
                .or_default()
                .push(rule.clone()),
            _ => match &rule.literal_pipes {
                Some(names) => {
                    for n in names {
                        let v = idx.literal.entry(n.clone()).or_default();
                        if !v.iter().any(|r| Arc::ptr_eq(r, rule)) {
                            v.push(rule.clone());
                        }
                    }
                }
                None => idx.wild.push(rule.clone()),
            },
        }
    }

    fn unindex(&mut self, rule: &Arc<CompiledRule>) {
        let Some(idx) = self.subs.get_mut(rule.sub()) else {
            return;
        };
        idx.cache.clear();
        let id = rule.id();
        idx.wild.retain(|r| r.id() != id);
        idx.source_rules.retain(|r| r.id() != id);
        if let Kind::Metric { metric, .. } = &rule.kind {
            if let Some(v) = idx.metric.get_mut(metric) {
                v.retain(|r| r.id() != id);
                if v.is_empty() {
                    idx.metric.remove(metric);
                }
            }
        }
        if let Some(names) = &rule.literal_pipes {
            for n in names {
                if let Some(v) = idx.literal.get_mut(n) {
                    v.retain(|r| r.id() != id);
                    if v.is_empty() {
                        idx.literal.remove(n);
                    }
                }
            }
        }
    }

    /// Arms the timers a new rule needs for what is already known.
    fn arm_rule(&mut self, rule: &Arc<CompiledRule>, _now: i64) {
        match rule.kind {
            Kind::StartedOverdue { .. } | Kind::FinishedOverdue { .. } => {
                let keys: Vec<PipeKey> = self
                    .pipes
                    .keys()
                    .filter(|k| {
                        k.sub == rule.sub()
                            && rule.matches_source(&k.source)
                            && rule.matches_pipe(&k.pipe)
                    })
                    .cloned()
                    .collect();
                for k in keys {
                    self.arm_pipe_rule(rule, &k);
                }
            }
            Kind::Heartbeat { .. } => {
                let keys: Vec<SourceKey> = self
                    .sources
                    .keys()
                    .filter(|k| k.sub == rule.sub() && rule.matches_source(&k.source))
                    .cloned()
                    .collect();
                for k in keys {
                    self.arm_heartbeat(rule, &k);
                }
            }
            _ => {}
        }
    }

    /// The pipes known in `sub` (for warnings about globs matching none).
    pub fn known_pipes(&self, sub: &str) -> BTreeSet<String> {
        self.pipes
            .keys()
            .filter(|k| k.sub == sub)
            .map(|k| k.pipe.clone())
            .collect()
    }

    /// Adds or replaces a silence.
    pub fn set_silence(&mut self, s: ActiveSilence, now: i64) {
        let key = (s.silence.subscription.clone(), s.silence.id.clone());
        self.disarm_silence(&key);
        self.silences.insert(key.clone(), s);
        self.arm_silence(&key);
        self.flush_pending(&key.0, now);
    }

    pub fn remove_silence(&mut self, key: &(String, String), now: i64) -> Option<ActiveSilence> {
        self.disarm_silence(key);
        let s = self.silences.remove(key)?;
        self.flush_pending(&key.0, now);
        Some(s)
    }

    fn silence_edges(&self, key: &(String, String)) -> Option<[(i64, Timer); 2]> {
        let s = self.silences.get(key)?;
        let t = Timer::SilenceEdge {
            sub: key.0.clone(),
            id: key.1.clone(),
        };
        Some([(s.starts, t.clone()), (s.ends, t)])
    }

    fn arm_silence(&mut self, key: &(String, String)) {
        if let Some(edges) = self.silence_edges(key) {
            self.wall_timers.extend(edges);
        }
    }

    fn disarm_silence(&mut self, key: &(String, String)) {
        if let Some(edges) = self.silence_edges(key) {
            for e in &edges {
                self.wall_timers.remove(e);
            }
        }
    }

    /// Ids of the silences muting `alert` now.
    pub fn silenced_by(&self, alert: &Alert, now: i64) -> Vec<String> {
        of_sub(&self.silences, &alert.subscription)
            .filter(|(_, s)| s.mutes(&alert.subscription, &alert.labels, now))
            .map(|((_, id), _)| id.clone())
            .collect()
    }

    fn silenced(&self, alert: &Alert, now: i64) -> bool {
        of_sub(&self.silences, &alert.subscription)
            .any(|(_, s)| s.mutes(&alert.subscription, &alert.labels, now))
    }

    fn suppressed(&self, alert: &Alert, now: i64) -> bool {
        alert.inhibited_by.is_some() || self.silenced(alert, now)
    }

    /// Notifies firing alerts of `sub` whose notification was held back by
    /// a silence or an inhibition that no longer applies.
    fn flush_pending(&mut self, sub: &str, now: i64) {
        let fps: Vec<String> = self
            .alerts_of(sub)
            .filter(|a| !a.notified)
            .map(|a| a.fingerprint.clone())
            .collect();
        for fp in fps {
            self.try_notify(&fp, NotificationKind::Firing, now);
        }
    }

    /// Drops everything of a terminated subscription from memory (the
    /// store deletes its keys by range).
    pub fn purge(&mut self, sub: &str) {
        let keys: Vec<RuleKey> = self.rules_of(sub).map(|r| r.key()).collect();
        for k in &keys {
            self.rules.remove(k);
        }
        self.subs.remove(sub);
        self.receivers.retain(|(s, _), _| s != sub);
        self.silences.retain(|(s, _), _| s != sub);
        for fp in self.fps_of(sub) {
            self.remove_alert(&fp);
        }
        self.firing_by_rule.retain(|k, _| k.sub != sub);
        self.heartbeat_firing.retain(|k, _| k.sub != sub);
        self.pipes.retain(|k, _| k.sub != sub);
        self.sources.retain(|k, _| k.sub != sub);
        self.event_timers.retain(|k, _| k.sub != sub);
        let prefix = format!("{sub}\0");
        self.windows.retain(|k, _| !k.starts_with(&prefix));
        self.metric.retain(|k, _| !k.starts_with(&prefix));
        self.wall_timers.retain(|(_, t)| t.sub() != sub);
        self.armed.retain(|t, _| t.sub() != sub);
        self.counts.remove(sub);
        self.alerts_of.remove(sub);
        self.backlog.remove(sub);
        self.backlog_order.retain(|s| s != sub);
        // Pending dirty state of the subscription must not be written back.
        self.fx.dirty_pipes.retain(|k| k.sub != sub);
        self.fx.dirty_sources.retain(|k| k.sub != sub);
        self.fx.dirty_windows.retain(|k| !k.starts_with(&prefix));
        self.fx.notifications.retain(|n| n.subscription != sub);
    }

    // ---- records -------------------------------------------------------

    /// Starts tracking `key` if the subscription's bound allows; whether
    /// it is tracked.
    fn track_source(&mut self, key: &SourceKey) -> bool {
        if self.sources.contains_key(key) {
            return true;
        }
        if self.count(&key.sub).sources >= self.limits.max_sources_per_subscription {
            self.limited(&key.sub, "sources");
            return false;
        }
        self.count(&key.sub).sources += 1;
        self.sources.insert(key.clone(), SourceState::default());
        true
    }

    /// Starts tracking `key` (first seen at event time `ts`) if its source
    /// is tracked and the subscription's bound allows; whether it is.
    fn track_pipe(&mut self, key: &PipeKey, ts: i64) -> bool {
        if self.pipes.contains_key(key) {
            return true;
        }
        if !self.sources.contains_key(&key.source_key()) {
            return false;
        }
        if self.count(&key.sub).pipes >= self.limits.max_pipes_per_subscription {
            self.limited(&key.sub, "pipes");
            return false;
        }
        self.count(&key.sub).pipes += 1;
        self.pipes.insert(
            key.clone(),
            PipeState {
                known_since: ts,
                enabled: true,
                ..PipeState::default()
            },
        );
        self.fx.dirty_pipes.insert(key.clone());
        true
    }

    /// Evaluates records just stored (one commit group) within `budget`.
    /// A subscription past its budget has the rest of its records deferred
    /// ([`Engine::drain`] evaluates them later, in order); while it has
    /// deferred records, its new ones queue behind them.
    pub fn on_records(&mut self, records: &[Record], now: i64, budget: &mut Budget) {
        let mut touched: Vec<SourceKey> = Vec::new();
        for r in records {
            let sub = r.subscription.as_str();
            let waiting = self.backlog.get(sub).is_some_and(|q| !q.is_empty());
            if waiting || (self.subs.contains_key(sub) && budget.over(sub)) {
                self.defer(r, budget);
                continue;
            }
            self.evaluate_record(r, now, budget, &mut touched);
        }
        self.finish_sources(touched, now);
    }

    fn defer(&mut self, r: &Record, budget: &mut Budget) {
        let sub = r.subscription.as_str();
        let len = self.backlog.get(sub).map_or(0, VecDeque::len);
        if len >= self.limits.max_deferred_per_subscription {
            bump(&mut budget.skipped, sub);
            return;
        }
        bump(&mut budget.deferred, sub);
        if len == 0 {
            self.backlog_order.push_back(sub.to_string());
        }
        self.backlog
            .entry(sub.to_string())
            .or_default()
            .push_back(r.clone());
    }

    /// The subscriptions with deferred records.
    pub fn backlogged(&self) -> Vec<String> {
        self.backlog_order.iter().cloned().collect()
    }

    /// Evaluates deferred records of the next subscription that has some
    /// and whose `budget` is not used up; returns how many records it
    /// evaluated (0: none of them may run now).
    pub fn drain(&mut self, now: i64, budget: &mut Budget) -> usize {
        for _ in 0..self.backlog_order.len() {
            let Some(sub) = self.backlog_order.pop_front() else {
                break;
            };
            if budget.over(&sub) {
                self.backlog_order.push_back(sub);
                continue;
            }
            let mut touched = Vec::new();
            let mut done = 0;
            while !budget.over(&sub) {
                let Some(r) = self.backlog.get_mut(&sub).and_then(VecDeque::pop_front) else {
                    break;
                };
                self.evaluate_record(&r, now, budget, &mut touched);
                done += 1;
            }
            self.finish_sources(touched, now);
            if self.backlog.get(&sub).is_some_and(|q| !q.is_empty()) {
                self.backlog_order.push_back(sub);
            } else {
                self.backlog.remove(&sub);
            }
            return done;
        }
        0
    }

    fn evaluate_record(
        &mut self,
        r: &Record,
        now: i64,
        budget: &mut Budget,
        touched: &mut Vec<SourceKey>,
    ) {
        let same = touched
            .last()
            .is_some_and(|k| k.sub == r.subscription && k.source == r.source);
        if !same {
            let k = SourceKey {
                sub: r.subscription.clone(),
                source: r.source.clone(),
            };
            if let Some(i) = touched.iter().position(|x| x == &k) {
                // Move it last so the next record of it is "same".
                let k = touched.remove(i);
                touched.push(k);
            } else if self.track_source(&k) {
                touched.push(k);
            }
        }
        if let Some(s) = touched
            .last()
            .filter(|k| k.sub == r.subscription && k.source == r.source)
            .and_then(|k| self.sources.get_mut(k))
        {
            s.newest_ts = s.newest_ts.max(r.ts);
        }
        // Subscriptions without rules cost nothing to evaluate.
        let started = self.subs.contains_key(&r.subscription).then(Instant::now);
        self.deadline = started.and_then(|t| budget.deadline(t));
        self.cut = false;
        match &r.body {
            Body::Execution(e) => self.on_execution(r, e, now),
            Body::Health(h) => self.on_health(r, h, now),
            Body::Config(c) => self.on_config(r, &c.config),
            Body::Log(l) => self.on_log(r, l, now),
            Body::System(_) => {}
        }
        self.deadline = None;
        if let Some(t) = started {
            budget.charge(&r.subscription, t.elapsed());
            if self.cut {
                bump(&mut budget.skipped, &r.subscription);
            }
        }
    }

    /// After records of `touched` sources: their clocks moved.
    fn finish_sources(&mut self, touched: Vec<SourceKey>, now: i64) {
        for k in touched {
            if let Some(s) = self.sources.get_mut(&k) {
                s.last_arrival = now;
            }
            self.source_alive(&k, now);
            self.run_event_timers(&k, now);
            self.fx.dirty_sources.insert(k);
        }
    }

    fn pipe_rules(&mut self, sub: &str, source: &str, pipe: &str) -> RuleSet {
        let cap = self
            .limits
            .max_pipes_per_subscription
            .saturating_mul(2)
            .clamp(1024, 1 << 20);
        let Some(idx) = self.subs.get_mut(sub) else {
            return Arc::from(Vec::new());
        };
        self.scratch.clear();
        self.scratch.push_str(source);
        self.scratch.push('\0');
        self.scratch.push_str(pipe);
        if let Some(rules) = idx.cache.get(&self.scratch) {
            return rules.clone();
        }
        let mut out: Vec<Arc<CompiledRule>> = Vec::new();
        if let Some(v) = idx.literal.get(pipe) {
            out.extend(v.iter().filter(|r| r.matches_source(source)).cloned());
        }
        out.extend(
            idx.wild
                .iter()
                .filter(|r| r.matches_source(source) && r.matches_pipe(pipe))
                .cloned(),
        );
        let rules: RuleSet = Arc::from(out);
        // Log records name arbitrary pipes: the cache stays bounded.
        if idx.cache.len() >= cap {
            idx.cache.clear();
        }
        idx.cache.insert(self.scratch.clone(), rules.clone());
        rules
    }

    /// Past the record's deadline, only the pipe's state and its overdue
    /// rules (cheap, and needed for later deadlines to be right) are kept
    /// up.
    fn on_execution(&mut self, r: &Record, e: &ExecutionBody, now: i64) {
        let key = PipeKey {
            sub: r.subscription.clone(),
            source: r.source.clone(),
            pipe: e.pipe.clone(),
        };
        let ts = r.ts;
        if self.track_pipe(&key, ts) {
            let Some(p) = self.pipes.get_mut(&key) else {
                return;
            };
            let mut changed = true;
            match e.event_type {
                EventType::PumpStarted => {
                    p.last_started = Some(p.last_started.map_or(ts, |t| t.max(ts)));
                    p.running_since = Some(ts);
                }
                EventType::PumpCompleted | EventType::PumpFailed => {
                    p.last_finished = Some(p.last_finished.map_or(ts, |t| t.max(ts)));
                    p.running_since = None;
                }
                EventType::PumpEnabled => p.enabled = true,
                EventType::PumpDisabled => p.enabled = false,
                _ => changed = false,
            }
            if changed {
                self.fx.dirty_pipes.insert(key.clone());
            }
        }
        let rules = self.pipe_rules(&r.subscription, &r.source, &e.pipe);
        let max_match = self.limits.max_match_bytes;
        for rule in rules.iter() {
            if !matches!(
                rule.kind,
                Kind::StartedOverdue { .. } | Kind::FinishedOverdue { .. }
            ) && self.out_of_time()
            {
                continue;
            }
            match &rule.kind {
                Kind::PumpFailed => match e.event_type {
                    EventType::PumpFailed => {
                        let reason = e.reason_why_stopped.clone().unwrap_or_default();
                        let mut ann = vec![("reason_why_stopped", short(&reason, 2000))];
                        if let Some(m) = &e.original_error_message {
                            ann.push(("original_error_message", short(m, 2000)));
                        }
                        if let Some(id) = &e.run_id {
                            ann.push(("run_id", short(id, 200)));
                        }
                        self.fire(
                            Fire {
                                rule,
                                source: Some(&r.source),
                                pipe: Some(&e.pipe),
                                extra: Vec::new(),
                                identity: String::new(),
                                event_ts: ts,
                                summary: format!(
                                    "Pipe {} on {} failed: {}",
                                    short(&e.pipe, 200),
                                    short(&r.source, 200),
                                    short(&reason, 300)
                                ),
                                annotations: ann,
                            },
                            now,
                        );
                    }
                    EventType::PumpCompleted => self.resolve_pipe(rule, &key, now),
                    _ => {}
                },
                Kind::Pattern {
                    field,
                    matcher,
                    pattern,
                    ..
                } => {
                    let text = match field {
                        schemas::notify::PatternField::ReasonWhyStopped => {
                            e.reason_why_stopped.as_deref()
                        }
                        schemas::notify::PatternField::Traceback => e.traceback.as_deref(),
                        schemas::notify::PatternField::OriginalErrorMessage => {
                            e.original_error_message.as_deref()
                        }
                        schemas::notify::PatternField::LogMessage => None,
                    };
                    if let Some(text) = text.filter(|t| matcher.is_match(prefix(t, max_match))) {
                        self.fire(
                            Fire {
                                rule,
                                source: Some(&r.source),
                                pipe: Some(&e.pipe),
                                extra: Vec::new(),
                                identity: String::new(),
                                event_ts: ts,
                                summary: format!(
                                    "{} of pipe {} on {} matched {:?}",
                                    field.as_str(),
                                    short(&e.pipe, 200),
                                    short(&r.source, 200),
                                    short(pattern, 100)
                                ),
                                annotations: vec![
                                    (
                                        "reason_why_stopped",
                                        short(e.reason_why_stopped.as_deref().unwrap_or(""), 2000),
                                    ),
                                    ("matched_text", short(text, 2000)),
                                ],
                            },
                            now,
                        );
                    } else if e.event_type == EventType::PumpCompleted
                        && *field != schemas::notify::PatternField::LogMessage
                    {
                        self.resolve_pipe(rule, &key, now);
                    }
                }
                Kind::Value {
                    high,
                    key: mkey,
                    limit,
                    interval,
                } => {
                    if e.event_type != EventType::PumpCompleted {
                        continue;
                    }
                    let Some(v) = e.metrics.get(mkey) else {
                        continue;
                    };
                    let measured = match interval {
                        Some(iv) => {
                            let wk =
                                format!("{}\0{}\0{}\0{}", key.sub, rule.id(), key.source, key.pipe);
                            match self.window_add(&wk, &key.sub, ts, v, *iv) {
                                Some(sum) => sum,
                                None => continue,
                            }
                        }
                        None => v,
                    };
                    let bad = if *high {
                        measured > *limit
                    } else {
                        measured < *limit
                    };
                    if bad {
                        let what = match interval {
                            Some(iv) => format!("summed over {}", secs(*iv)),
                            None => "in the last run".into(),
                        };
                        self.fire(
                            Fire {
                                rule,
                                source: Some(&r.source),
                                pipe: Some(&e.pipe),
                                extra: Vec::new(),
                                identity: String::new(),
                                event_ts: ts,
                                summary: format!(
                                    "{mkey} of pipe {} on {} is {measured} {what} ({} {limit})",
                                    short(&e.pipe, 200),
                                    short(&r.source, 200),
                                    if *high { "above" } else { "below" }
                                ),
                                annotations: vec![
                                    ("value", measured.to_string()),
                                    ("limit", limit.to_string()),
                                ],
                            },
                            now,
                        );
                    } else {
                        self.resolve_pipe(rule, &key, now);
                    }
                }
                Kind::StartedOverdue { .. } => {
                    match e.event_type {
                        EventType::PumpStarted | EventType::PumpDisabled => {
                            self.resolve_pipe(rule, &key, now)
                        }
                        _ => {}
                    }
                    self.arm_pipe_rule(rule, &key);
                }
                Kind::FinishedOverdue { .. } => {
                    match e.event_type {
                        EventType::PumpCompleted | EventType::PumpFailed => {
                            self.resolve_pipe(rule, &key, now)
                        }
                        EventType::PumpStarted => {
                            // A new run: the previous one is over.
                            self.resolve_pipe(rule, &key, now)
                        }
                        _ => {}
                    }
                    self.arm_pipe_rule(rule, &key);
                }
                _ => {}
            }
        }
    }

    /// Adds a completed run's value to the window `wk` (`iv` long) and
    /// returns the window's sum; `None` when the subscription's bound on
    /// windows and series is reached.
    fn window_add(&mut self, wk: &str, sub: &str, ts: i64, v: f64, iv: i64) -> Option<f64> {
        if !self.windows.contains_key(wk) {
            if self.count(sub).series >= self.limits.max_series_per_subscription {
                self.limited(sub, "series");
                return None;
            }
            self.count(sub).series += 1;
            self.windows.insert(wk.to_string(), VecDeque::new());
        }
        let w = self.windows.get_mut(wk)?;
        let bucket = (iv / WINDOW_BUCKETS).max(1);
        match w.back_mut() {
            Some((t, sum)) if ts >= *t && ts - *t < bucket => *sum += v,
            _ => w.push_back((ts, v)),
        }
        let cut = ts.saturating_sub(iv);
        while w.front().is_some_and(|(t, _)| *t <= cut) {
            w.pop_front();
        }
        // Runs out of order can defeat the bucketing: a hard bound.
        while w.len() > 2 * WINDOW_BUCKETS as usize {
            w.pop_front();
        }
        let sum = w.iter().map(|(_, v)| v).sum::<f64>();
        self.fx.dirty_windows.insert(wk.to_string());
        Some(sum)
    }

    fn on_health(&mut self, r: &Record, h: &HealthBody, now: i64) {
        let Some(idx) = self.subs.get(&r.subscription) else {
            return;
        };
        let rules: Vec<Arc<CompiledRule>> = idx
            .source_rules
            .iter()
            .filter(|rule| {
                matches!(rule.kind, Kind::Unhealthy { .. }) && rule.matches_source(&r.source)
            })
            .cloned()
            .collect();
        for rule in &rules {
            let Kind::Unhealthy { statuses } = &rule.kind else {
                continue;
            };
            if statuses.contains(&h.status) {
                let bad: Vec<String> = h
                    .checks
                    .iter()
                    .filter(|c| c.status != HealthStatus::Ok)
                    .take(20)
                    .map(|c| match &c.detail {
                        Some(d) => format!(
                            "{} ({}): {}",
                            short(&c.name, 100),
                            c.status.as_str(),
                            short(d, 200)
                        ),
                        None => format!("{} ({})", short(&c.name, 100), c.status.as_str()),
                    })
                    .collect();
                self.fire(
                    Fire {
                        rule,
                        source: Some(&r.source),
                        pipe: None,
                        extra: Vec::new(),
                        identity: String::new(),
                        event_ts: r.ts,
                        summary: format!(
                            "{} is {}: {}",
                            short(&r.source, 200),
                            h.status.as_str(),
                            short(&bad.join("; "), 1000)
                        ),
                        annotations: vec![("status", h.status.as_str().to_string())],
                    },
                    now,
                );
            } else {
                let fp = fingerprint(rule.id(), &r.subscription, &r.source, "", "");
                self.resolve(&fp, now);
            }
        }
    }

    fn on_config(&mut self, r: &Record, config: &[serde_json::Value]) {
        let mut seen = HashSet::new();
        for ent in config {
            if ent.get("type").and_then(|t| t.as_str()) != Some("pipe") {
                continue;
            }
            let Some(id) = ent.get("_id").and_then(|v| v.as_str()) else {
                continue;
            };
            seen.insert(id.to_string());
            let pump = ent.get("pump");
            let mode = pump
                .and_then(|p| p.get("mode"))
                .and_then(|m| m.as_str())
                .unwrap_or("scheduled");
            let interval = pump
                .and_then(|p| p.get("schedule_interval"))
                .and_then(|v| v.as_f64());
            let cron_expr = pump
                .and_then(|p| p.get("cron_expr"))
                .and_then(|v| v.as_str());
            let (spec, cron) = if mode != "scheduled" {
                (ScheduleSpec::Manual, None)
            } else if let Some(c) = cron_expr {
                // An unparsable or never-firing expression expects nothing.
                match parse_cron(c) {
                    Some(s) => (ScheduleSpec::Cron(c.to_string()), Some(Arc::new(s))),
                    None => (ScheduleSpec::Unknown, None),
                }
            } else {
                match interval.unwrap_or(30.0) {
                    s if s.is_finite() && s > 0.0 => (
                        ScheduleSpec::Interval(s.clamp(1.0, MAX_SCHEDULE_SECS)),
                        None,
                    ),
                    _ => (ScheduleSpec::Unknown, None),
                }
            };
            let key = PipeKey {
                sub: r.subscription.clone(),
                source: r.source.clone(),
                pipe: id.to_string(),
            };
            if !self.track_pipe(&key, r.ts) {
                continue;
            }
            let Some(p) = self.pipes.get_mut(&key) else {
                continue;
            };
            if p.schedule != spec {
                p.cron = cron;
                p.schedule = spec;
                self.fx.dirty_pipes.insert(key.clone());
            }
            self.arm_pipe(&key);
        }
        // Pipes gone from the configuration are no longer expected to run.
        let gone: Vec<PipeKey> = self
            .pipes
            .keys()
            .filter(|k| k.sub == r.subscription && k.source == r.source && !seen.contains(&k.pipe))
            .cloned()
            .collect();
        for k in gone {
            if let Some(p) = self.pipes.get_mut(&k) {
                if p.schedule != ScheduleSpec::Manual {
                    p.schedule = ScheduleSpec::Manual;
                    p.cron = None;
                    self.fx.dirty_pipes.insert(k);
                }
            }
        }
    }

    fn on_log(&mut self, r: &Record, l: &LogBody, now: i64) {
        if !self.subs.contains_key(&r.subscription) {
            return;
        }
        let pipe = l
            .fields
            .get("pipe")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let rules = self.pipe_rules(&r.subscription, &r.source, &pipe);
        let text = prefix(&l.message, self.limits.max_match_bytes);
        for rule in rules.iter() {
            let Kind::Pattern {
                field: schemas::notify::PatternField::LogMessage,
                matcher,
                pattern,
                resolve_after,
            } = &rule.kind
            else {
                continue;
            };
            if self.out_of_time() || !matcher.is_match(text) {
                continue;
            }
            let Some(fp) = self.fire(
                Fire {
                    rule,
                    source: Some(&r.source),
                    pipe: (!pipe.is_empty()).then_some(pipe.as_str()),
                    extra: Vec::new(),
                    identity: String::new(),
                    event_ts: r.ts,
                    summary: format!(
                        "A {} log of {} matched {:?}: {}",
                        l.level.as_str(),
                        short(&r.source, 200),
                        short(pattern, 100),
                        short(&l.message, 300)
                    ),
                    annotations: vec![("message", short(&l.message, 2000))],
                },
                now,
            ) else {
                continue;
            };
            self.resolve_later(&fp, now.saturating_add(*resolve_after));
        }
    }

    /// The alert `fp` resolves at `at` unless an event pushes that later.
    fn resolve_later(&mut self, fp: &str, at: i64) {
        let Some(a) = self.alerts.get_mut(fp) else {
            return;
        };
        a.resolve_at = Some(at);
        let sub = a.subscription.clone();
        self.fx.puts.push((keys::alert(&sub, fp), json(&*a)));
        self.arm_wall(
            Timer::ResolveAt {
                sub,
                fp: fp.to_string(),
            },
            at,
        );
    }

    /// The collector refused records of `source` (two outbox epochs, or a
    /// seq re-sent with other content): `source_conflict` rules fire.
    pub fn on_source_conflict(&mut self, sub: &str, source: &str, detail: &str, now: i64) {
        let Some(idx) = self.subs.get(sub) else {
            return;
        };
        let rules: Vec<Arc<CompiledRule>> = idx
            .source_rules
            .iter()
            .filter(|r| matches!(r.kind, Kind::Conflict { .. }) && r.matches_source(source))
            .cloned()
            .collect();
        for rule in &rules {
            let Kind::Conflict { resolve_after } = rule.kind else {
                continue;
            };
            let Some(fp) = self.fire(
                Fire {
                    rule,
                    source: Some(source),
                    pipe: None,
                    extra: Vec::new(),
                    identity: String::new(),
                    event_ts: now,
                    summary: format!(
                        "Records of {} were refused: {}",
                        short(source, 200),
                        short(detail, 300)
                    ),
                    annotations: vec![("description", short(detail, 2000))],
                },
                now,
            ) else {
                continue;
            };
            self.resolve_later(&fp, now.saturating_add(resolve_after));
        }
    }

    // ---- metric samples --------------------------------------------------

    /// Evaluates pushed metric samples of `sub` (`metric_threshold`).
    pub fn on_samples(&mut self, sub: &str, samples: &[crate::SampleRef<'_>], now: i64) {
        let Some(idx) = self.subs.get(sub) else {
            return;
        };
        if idx.metric.is_empty() {
            return;
        }
        let mut hits: Vec<(Arc<CompiledRule>, usize)> = Vec::new();
        for (i, s) in samples.iter().enumerate() {
            let Some(rules) = idx.metric.get(s.name) else {
                continue;
            };
            for rule in rules {
                let Kind::Metric { labels, .. } = &rule.kind else {
                    continue;
                };
                let get = |n: &str| {
                    s.labels
                        .iter()
                        .find(|(k, _)| k == n)
                        .map(|(_, v)| v.as_str())
                };
                if !labels.iter().all(|(k, v)| get(k) == Some(v.as_str())) {
                    continue;
                }
                if rule.source.is_some() && !rule.matches_source(get("instance").unwrap_or("")) {
                    continue;
                }
                if let Some(p) = get("pipe") {
                    if !rule.matches_pipe(p) {
                        continue;
                    }
                } else if rule.rule.pipes.iter().any(|p| p != "*") {
                    continue;
                }
                hits.push((rule.clone(), i));
            }
        }
        for (rule, i) in hits {
            let s = &samples[i];
            let Kind::Metric {
                op, value, for_, ..
            } = &rule.kind
            else {
                continue;
            };
            let series = series_id(s.name, s.labels);
            let key = format!("{sub}\0{}\0{series}", rule.id());
            if !s.value.is_finite() || !op.holds(s.value, *value) {
                if self.metric.remove(&key).is_some() {
                    let c = self.count(sub);
                    c.series = c.series.saturating_sub(1);
                }
                let fp = fingerprint(rule.id(), sub, "", "", &series);
                self.resolve(&fp, now);
                continue;
            }
            if !self.metric.contains_key(&key) {
                if self.count(sub).series >= self.limits.max_series_per_subscription {
                    self.limited(sub, "series");
                    continue;
                }
                self.count(sub).series += 1;
                self.metric.insert(
                    key.clone(),
                    MetricState {
                        rule: rule.key(),
                        labels: s.labels.to_vec(),
                        value: s.value,
                        since: now,
                        last_seen: now,
                    },
                );
            }
            let Some(st) = self.metric.get_mut(&key) else {
                continue;
            };
            st.value = s.value;
            st.last_seen = now;
            let due = st.since.saturating_add(*for_);
            if now >= due {
                self.fire_metric(&key, now);
                self.arm_wall(
                    Timer::Metric { key },
                    now.saturating_add(METRIC_STALE_NANOS),
                );
            } else {
                self.arm_wall(Timer::Metric { key }, due);
            }
        }
    }

    fn drop_metric(&mut self, key: &str) {
        if self.metric.remove(key).is_some() {
            let sub = key.split('\0').next().unwrap_or("").to_string();
            let c = self.count(&sub);
            c.series = c.series.saturating_sub(1);
        }
    }

    fn fire_metric(&mut self, key: &str, now: i64) {
        let Some(st) = self.metric.get(key) else {
            return;
        };
        let Some(rule) = self.rules.get(&st.rule).cloned() else {
            self.drop_metric(key);
            return;
        };
        let Kind::Metric {
            metric,
            op,
            value,
            for_,
            ..
        } = &rule.kind
        else {
            return;
        };
        let (labels, v) = (st.labels.clone(), st.value);
        let instance = labels
            .iter()
            .find(|(k, _)| k == "instance")
            .map(|(_, v)| v.clone());
        let shown: Vec<String> = labels
            .iter()
            .take(30)
            .map(|(k, v)| format!("{}={:?}", short(k, 100), short(v, 200)))
            .collect();
        let mut extra: Vec<(String, String)> = labels
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "subscription" | "__name__"))
            .cloned()
            .collect();
        extra.push(("metric".into(), metric.clone()));
        if let Some(i) = instance {
            extra.push(("source".into(), i));
        }
        let series = key.splitn(3, '\0').nth(2).unwrap_or("").to_string();
        self.fire(
            Fire {
                rule: &rule,
                source: None,
                pipe: None,
                extra,
                identity: series,
                event_ts: now,
                summary: format!(
                    "{metric}{{{}}} = {v} {} {value} for {}",
                    shown.join(","),
                    op.as_str(),
                    secs(*for_)
                ),
                annotations: vec![("value", v.to_string())],
            },
            now,
        );
    }

    // ---- timers -----------------------------------------------------------

    /// Records `t` as armed at `at`; `Some(previous)` when it was armed
    /// already at a later time (the caller moves it), `None` when it is
    /// armed at or before `at` already, or the subscription's timer bound
    /// is reached.
    fn rearm(&mut self, t: &Timer, at: i64) -> Option<Option<i64>> {
        match self.armed.get(t) {
            Some(&x) if x <= at => None,
            Some(&x) => {
                self.armed.insert(t.clone(), at);
                Some(Some(x))
            }
            None => {
                let sub = t.sub().to_string();
                if self.count(&sub).timers >= self.limits.max_timers_per_subscription {
                    self.limited(&sub, "timers");
                    return None;
                }
                self.count(&sub).timers += 1;
                self.armed.insert(t.clone(), at);
                Some(None)
            }
        }
    }

    fn arm_wall(&mut self, t: Timer, at: i64) {
        if let Some(previous) = self.rearm(&t, at) {
            if let Some(x) = previous {
                self.wall_timers.remove(&(x, t.clone()));
            }
            self.wall_timers.insert((at, t));
        }
    }

    fn arm_event(&mut self, source: &SourceKey, t: Timer, at: i64) {
        if let Some(previous) = self.rearm(&t, at) {
            let set = self.event_timers.entry(source.clone()).or_default();
            if let Some(x) = previous {
                set.remove(&(x, t.clone()));
            }
            set.insert((at, t));
        }
    }

    /// Takes an armed timer that popped at `at`; false when it was stale.
    fn disarm(&mut self, t: &Timer, at: i64) -> bool {
        if self.armed.get(t) == Some(&at) {
            self.unarm(t);
            true
        } else {
            false
        }
    }

    /// Forgets `t` (its set entry, if any, is stale from now on).
    fn unarm(&mut self, t: &Timer) {
        if self.armed.remove(t).is_some() {
            let sub = t.sub().to_string();
            let c = self.count(&sub);
            c.timers = c.timers.saturating_sub(1);
        }
    }

    fn arm_pipe(&mut self, key: &PipeKey) {
        let rules = self.pipe_rules(&key.sub, &key.source, &key.pipe);
        for rule in rules.iter() {
            self.arm_pipe_rule(rule, key);
        }
    }

    fn arm_pipe_rule(&mut self, rule: &Arc<CompiledRule>, key: &PipeKey) {
        let Some(p) = self.pipes.get(key) else {
            return;
        };
        let (timer, deadline) = match rule.kind {
            Kind::StartedOverdue { .. } => (
                Timer::Started {
                    rule: rule.key(),
                    pipe: key.clone(),
                },
                started_deadline(rule, p),
            ),
            Kind::FinishedOverdue { limit } => (
                Timer::Finished {
                    rule: rule.key(),
                    pipe: key.clone(),
                },
                p.running_since.map(|t| t.saturating_add(limit)),
            ),
            _ => return,
        };
        if let Some(d) = deadline {
            self.arm_event(&key.source_key(), timer, d);
        }
    }

    fn arm_heartbeats(&mut self, key: &SourceKey) {
        let Some(idx) = self.subs.get(&key.sub) else {
            return;
        };
        let rules: Vec<Arc<CompiledRule>> = idx
            .source_rules
            .iter()
            .filter(|r| matches!(r.kind, Kind::Heartbeat { .. }) && r.matches_source(&key.source))
            .cloned()
            .collect();
        for r in &rules {
            self.arm_heartbeat(r, key);
        }
    }

    fn heartbeat_deadline(&self, interval: i64, key: &SourceKey) -> Option<i64> {
        let s = self.sources.get(key)?;
        Some(s.last_arrival.max(self.started_at).saturating_add(interval))
    }

    fn arm_heartbeat(&mut self, rule: &Arc<CompiledRule>, key: &SourceKey) {
        let Kind::Heartbeat { interval } = rule.kind else {
            return;
        };
        let fp = fingerprint(rule.id(), &key.sub, &key.source, "", "");
        if self.alerts.contains_key(&fp) {
            return; // firing: re-armed when the source is heard from again
        }
        if let Some(d) = self.heartbeat_deadline(interval, key) {
            self.arm_wall(
                Timer::Heartbeat {
                    rule: rule.key(),
                    source: key.clone(),
                },
                d,
            );
        }
    }

    /// A record arrived from `key`: its heartbeat alerts resolve.
    fn source_alive(&mut self, key: &SourceKey, now: i64) {
        let Some(idx) = self.subs.get(&key.sub) else {
            return;
        };
        let rules: Vec<Arc<CompiledRule>> = idx
            .source_rules
            .iter()
            .filter(|r| matches!(r.kind, Kind::Heartbeat { .. }) && r.matches_source(&key.source))
            .cloned()
            .collect();
        for r in &rules {
            let fp = fingerprint(r.id(), &key.sub, &key.source, "", "");
            self.resolve(&fp, now);
            self.arm_heartbeat(r, key);
        }
    }

    /// Fires the event-time deadlines of `key` that its clock has passed.
    fn run_event_timers(&mut self, key: &SourceKey, now: i64) {
        let Some(clock) = self.sources.get(key).map(|s| s.newest_ts) else {
            return;
        };
        loop {
            let Some(set) = self.event_timers.get_mut(key) else {
                return;
            };
            let Some((at, _)) = set.first() else {
                self.event_timers.remove(key);
                return;
            };
            if *at >= clock {
                return;
            }
            let Some((at, t)) = set.pop_first() else {
                return;
            };
            if !self.disarm(&t, at) {
                continue;
            }
            match &t {
                Timer::Started { rule, pipe } | Timer::Finished { rule, pipe } => {
                    let Some(rule) = self.rules.get(rule).cloned() else {
                        continue;
                    };
                    self.check_overdue(&rule, pipe, clock, now);
                }
                _ => {}
            }
        }
    }

    fn check_overdue(&mut self, rule: &Arc<CompiledRule>, key: &PipeKey, clock: i64, now: i64) {
        let Some(p) = self.pipes.get(key) else {
            return;
        };
        if !rule.matches_source(&key.source) || !rule.matches_pipe(&key.pipe) {
            return;
        }
        let (deadline, summary, ann) = match rule.kind {
            Kind::StartedOverdue { grace, .. } => {
                let Some(d) = started_deadline(rule, p) else {
                    return;
                };
                let since = p.last_started.or(p.last_finished).unwrap_or(p.known_since);
                (
                    d,
                    format!(
                        "Pipe {} on {} has not started since {} (expected by {}, grace {})",
                        short(&key.pipe, 200),
                        short(&key.source, 200),
                        opt_ts(since),
                        opt_ts(d.saturating_sub(grace)),
                        secs(grace)
                    ),
                    vec![("expected_by", opt_ts(d))],
                )
            }
            Kind::FinishedOverdue { limit } => {
                let Some(started) = p.running_since else {
                    return;
                };
                (
                    started.saturating_add(limit),
                    format!(
                        "Pipe {} on {} has been running since {}, longer than {}",
                        short(&key.pipe, 200),
                        short(&key.source, 200),
                        opt_ts(started),
                        secs(limit)
                    ),
                    vec![("running_since", opt_ts(started))],
                )
            }
            _ => return,
        };
        if deadline >= clock {
            // The pipe moved on since the timer was armed.
            self.arm_pipe_rule(rule, key);
            return;
        }
        self.fire(
            Fire {
                rule,
                source: Some(&key.source),
                pipe: Some(&key.pipe),
                extra: Vec::new(),
                identity: String::new(),
                event_ts: deadline,
                summary,
                annotations: ann,
            },
            now,
        );
    }

    /// Runs the collector-clock deadlines up to `now`, at most
    /// [`MAX_TIMERS_PER_TICK`] of them; true when more are due (tick
    /// again, after releasing the engine's lock).
    pub fn tick(&mut self, now: i64) -> bool {
        let mut ran = 0;
        while let Some((at, _)) = self.wall_timers.first() {
            if *at > now {
                return false;
            }
            if ran == MAX_TIMERS_PER_TICK {
                return true;
            }
            ran += 1;
            let Some((at, t)) = self.wall_timers.pop_first() else {
                break;
            };
            if let Timer::SilenceEdge { sub, .. } = &t {
                self.flush_pending(sub, now);
                continue;
            }
            if !self.disarm(&t, at) {
                continue;
            }
            match t {
                Timer::Heartbeat { rule, source } => {
                    let Some(rule) = self.rules.get(&rule).cloned() else {
                        continue;
                    };
                    let Kind::Heartbeat { interval } = rule.kind else {
                        continue;
                    };
                    if !rule.matches_source(&source.source) {
                        continue;
                    }
                    let Some(d) = self.heartbeat_deadline(interval, &source) else {
                        continue;
                    };
                    if d > now {
                        self.arm_heartbeat(&rule, &source);
                        continue;
                    }
                    let last = self
                        .sources
                        .get(&source)
                        .map(|s| s.last_arrival)
                        .unwrap_or(0);
                    self.fire(
                        Fire {
                            rule: &rule,
                            source: Some(&source.source),
                            pipe: None,
                            extra: Vec::new(),
                            identity: String::new(),
                            event_ts: d,
                            summary: format!(
                                "No record from {} for {} (last received {})",
                                short(&source.source, 200),
                                secs(interval),
                                opt_ts(last)
                            ),
                            annotations: vec![("last_seen", opt_ts(last))],
                        },
                        now,
                    );
                }
                Timer::ResolveAt { sub, fp } => {
                    let Some(a) = self.alerts.get(&fp) else {
                        continue;
                    };
                    match a.resolve_at {
                        Some(r) if r <= now => self.resolve(&fp, now),
                        Some(r) => self.arm_wall(Timer::ResolveAt { sub, fp }, r),
                        None => {}
                    }
                }
                Timer::Repeat { fp, .. } => self.repeat(&fp, now),
                Timer::Metric { key } => {
                    let Some(st) = self.metric.get(&key) else {
                        continue;
                    };
                    if now.saturating_sub(st.last_seen) >= METRIC_STALE_NANOS {
                        // No sample for 5 minutes: the series is stale.
                        let rule = st.rule.clone();
                        self.drop_metric(&key);
                        let series = key.splitn(3, '\0').nth(2).unwrap_or("").to_string();
                        let fp = fingerprint(&rule.id, &rule.sub, "", "", &series);
                        self.resolve(&fp, now);
                        continue;
                    }
                    let Some(Kind::Metric { for_, .. }) = self.rules.get(&st.rule).map(|r| &r.kind)
                    else {
                        self.drop_metric(&key);
                        continue;
                    };
                    let due = st.since.saturating_add(*for_);
                    if now >= due {
                        let next = st.last_seen.saturating_add(METRIC_STALE_NANOS);
                        self.fire_metric(&key, now);
                        self.arm_wall(Timer::Metric { key }, next);
                    } else {
                        self.arm_wall(Timer::Metric { key }, due);
                    }
                }
                Timer::Started { .. } | Timer::Finished { .. } | Timer::SilenceEdge { .. } => {}
            }
        }
        false
    }

    // ---- alert lifecycle ---------------------------------------------------

    /// Fires (or re-fires) the alert of `f`; returns its fingerprint, or
    /// `None` when the subscription's bound on active alerts is reached.
    fn fire(&mut self, f: Fire<'_>, now: i64) -> Option<String> {
        let rule = f.rule;
        let sub = rule.sub();
        let fp = fingerprint(
            rule.id(),
            sub,
            f.source.unwrap_or(""),
            f.pipe.unwrap_or(""),
            &f.identity,
        );
        if let Some(a) = self.alerts.get_mut(&fp) {
            a.event_count = a.event_count.saturating_add(1);
            a.last_event_at = a.last_event_at.max(f.event_ts);
            a.annotations.insert("summary".into(), f.summary);
            for (k, v) in f.annotations {
                a.annotations.insert(k.into(), v);
            }
            a.annotations
                .insert("event_count".into(), a.event_count.to_string());
            a.annotations
                .insert("last_event_timestamp".into(), opt_ts(a.last_event_at));
            if a.notified {
                a.unnotified_events = a.unnotified_events.saturating_add(1);
                let due = a
                    .last_notified_at
                    .unwrap_or(0)
                    .saturating_add(rule.repeat_nanos);
                if now >= due {
                    self.repeat(&fp, now);
                } else {
                    self.fx.puts.push((keys::alert(sub, &fp), json(&*a)));
                    self.arm_wall(
                        Timer::Repeat {
                            sub: sub.to_string(),
                            fp: fp.clone(),
                        },
                        due,
                    );
                }
            } else {
                self.fx.puts.push((keys::alert(sub, &fp), json(&*a)));
                self.try_notify(&fp, NotificationKind::Firing, now);
            }
            return Some(fp);
        }
        if self.counts.get(sub).map_or(0, |c| c.alerts) >= self.limits.max_alerts_per_subscription {
            self.limited(sub, "alerts");
            return None;
        }
        let mut labels = BTreeMap::new();
        for (k, v) in f.extra {
            labels.insert(k, v);
        }
        labels.insert("alertname".into(), rule.rule.name.clone());
        labels.insert("rule_id".into(), rule.id().to_string());
        labels.insert("rule_type".into(), rule.rule_type().as_str().into());
        labels.insert("severity".into(), rule.rule.severity.as_str().into());
        labels.insert("subscription".into(), sub.to_string());
        if let Some(s) = f.source {
            labels.insert("source".into(), s.to_string());
        }
        if let Some(p) = f.pipe {
            labels.insert("pipe".into(), p.to_string());
        }
        let mut annotations = BTreeMap::new();
        annotations.insert("summary".to_string(), f.summary);
        if !rule.rule.description.is_empty() {
            annotations.insert("description".into(), rule.rule.description.clone());
        }
        if let Some(p) = f.pipe {
            annotations.insert("pipe".into(), p.to_string());
        }
        for (k, v) in f.annotations {
            annotations.insert(k.into(), v);
        }
        annotations.insert("event_count".into(), "1".into());
        annotations.insert("event_timestamp".into(), opt_ts(f.event_ts));
        annotations.insert("last_event_timestamp".into(), opt_ts(f.event_ts));
        annotations.insert("rule_name".into(), rule.rule.name.clone());
        let source_key = f.source.map(|s| SourceKey {
            sub: sub.to_string(),
            source: s.to_string(),
        });
        let inhibited_by = match (&source_key, rule.rule_type()) {
            (Some(k), RuleType::PumpStartedOverdue | RuleType::PumpFinishedOverdue) => {
                self.heartbeat_firing.get(k).cloned()
            }
            _ => None,
        };
        let alert = Alert {
            fingerprint: fp.clone(),
            rule_id: rule.id().to_string(),
            rule_type: rule.rule_type(),
            subscription: sub.to_string(),
            source: f.source.map(str::to_string),
            pipe: f.pipe.map(str::to_string),
            labels,
            annotations,
            starts_at: f.event_ts,
            last_event_at: f.event_ts,
            event_count: 1,
            unnotified_events: 0,
            notified: false,
            last_notified_at: None,
            inhibited_by,
            resolve_at: None,
        };
        self.fx.puts.push((keys::alert(sub, &fp), json(&alert)));
        self.insert_alert(alert);
        if rule.rule_type() == RuleType::NodeHeartbeatOverdue {
            if let Some(k) = source_key {
                self.inhibit_source(&k, &fp);
                self.heartbeat_firing.insert(k, fp.clone());
            }
        }
        self.try_notify(&fp, NotificationKind::Firing, now);
        Some(fp)
    }

    /// A heartbeat alert for `source` started: its pipes' overdue alerts
    /// are inhibited.
    fn inhibit_source(&mut self, source: &SourceKey, by: &str) {
        for fp in self.fps_of(&source.sub) {
            let Some(a) = self.alerts.get_mut(&fp) else {
                continue;
            };
            if matches!(
                a.rule_type,
                RuleType::PumpStartedOverdue | RuleType::PumpFinishedOverdue
            ) && a.source.as_deref() == Some(source.source.as_str())
                && a.inhibited_by.is_none()
            {
                a.inhibited_by = Some(by.to_string());
                self.fx
                    .puts
                    .push((keys::alert(&source.sub, &fp), json(&*a)));
            }
        }
    }

    fn try_notify(&mut self, fp: &str, kind: NotificationKind, now: i64) {
        let Some(a) = self.alerts.get(fp) else {
            return;
        };
        if self.suppressed(a, now) {
            return;
        }
        let Some(rule) = self.rules.get(&a.rule_key()).cloned() else {
            return;
        };
        let a = a.clone();
        self.enqueue(&rule, &a, kind, now);
        if let Some(a) = self.alerts.get_mut(fp) {
            a.notified = true;
            a.last_notified_at = Some(now);
            a.unnotified_events = 0;
            a.annotations.remove("triggered_additional");
            self.fx
                .puts
                .push((keys::alert(&a.subscription, fp), json(&*a)));
        }
        self.arm_wall(
            Timer::Repeat {
                sub: a.subscription.clone(),
                fp: fp.to_string(),
            },
            now.saturating_add(rule.repeat_nanos),
        );
    }

    fn repeat(&mut self, fp: &str, now: i64) {
        let Some(a) = self.alerts.get(fp) else {
            return;
        };
        let Some(rule) = self.rules.get(&a.rule_key()).cloned() else {
            return;
        };
        if !a.notified {
            return;
        }
        let timer = Timer::Repeat {
            sub: a.subscription.clone(),
            fp: fp.to_string(),
        };
        let due = a
            .last_notified_at
            .unwrap_or(0)
            .saturating_add(rule.repeat_nanos);
        if now < due {
            self.arm_wall(timer, due);
            return;
        }
        if self.suppressed(a, now) {
            self.arm_wall(timer, now.saturating_add(rule.repeat_nanos));
            return;
        }
        let mut a = a.clone();
        let kind = if a.unnotified_events > 0 {
            let n = a.unnotified_events;
            a.annotations
                .insert("triggered_additional".into(), n.to_string());
            if let Some(s) = a.annotations.get_mut("summary") {
                s.push_str(&format!(
                    " (triggered an additional {n} time{})",
                    if n == 1 { "" } else { "s" }
                ));
            }
            NotificationKind::Repeat
        } else {
            NotificationKind::Refresh
        };
        self.enqueue(&rule, &a, kind, now);
        if let Some(stored) = self.alerts.get_mut(fp) {
            stored.last_notified_at = Some(now);
            stored.unnotified_events = 0;
            self.fx
                .puts
                .push((keys::alert(&stored.subscription, fp), json(&*stored)));
        }
        self.arm_wall(timer, now.saturating_add(rule.repeat_nanos));
    }

    fn resolve_pipe(&mut self, rule: &CompiledRule, key: &PipeKey, now: i64) {
        if !self.firing_by_rule.contains_key(&rule.key()) {
            return;
        }
        let fp = fingerprint(rule.id(), &key.sub, &key.source, &key.pipe, "");
        self.resolve(&fp, now);
    }

    /// Resolves the alert `fp` (if firing) and notifies its resolution
    /// when its firing was notified.
    pub fn resolve(&mut self, fp: &str, now: i64) {
        let Some(a) = self.remove_alert(fp) else {
            return;
        };
        self.fx.deletes.push(keys::alert(&a.subscription, fp));
        self.unarm(&Timer::Repeat {
            sub: a.subscription.clone(),
            fp: fp.to_string(),
        });
        self.unarm(&Timer::ResolveAt {
            sub: a.subscription.clone(),
            fp: fp.to_string(),
        });
        if a.notified && !self.silenced(&a, now) {
            if let Some(rule) = self.rules.get(&a.rule_key()).cloned() {
                self.enqueue(&rule, &a, NotificationKind::Resolved, now);
            }
        }
        if a.rule_type == RuleType::NodeHeartbeatOverdue {
            if let Some(src) = &a.source {
                let k = SourceKey {
                    sub: a.subscription.clone(),
                    source: src.clone(),
                };
                if self.heartbeat_firing.get(&k).map(String::as_str) == Some(fp) {
                    self.heartbeat_firing.remove(&k);
                }
                let freed: Vec<String> = self
                    .alerts_of(&a.subscription)
                    .filter(|x| x.inhibited_by.as_deref() == Some(fp))
                    .map(|x| x.fingerprint.clone())
                    .collect();
                for f in freed {
                    if let Some(x) = self.alerts.get_mut(&f) {
                        x.inhibited_by = None;
                        self.fx
                            .puts
                            .push((keys::alert(&a.subscription, &f), json(&*x)));
                    }
                    self.try_notify(&f, NotificationKind::Firing, now);
                }
            }
        }
    }

    /// Queues one notification per receiver of `rule`.
    fn enqueue(&mut self, rule: &CompiledRule, a: &Alert, kind: NotificationKind, now: i64) {
        let resolved = kind == NotificationKind::Resolved;
        let alert = WebhookAlert {
            status: if resolved { "resolved" } else { "firing" }.into(),
            labels: a.labels.clone(),
            annotations: a.annotations.clone(),
            starts_at: opt_ts(a.starts_at),
            ends_at: if resolved {
                opt_ts(now)
            } else {
                ZERO_TIME.into()
            },
            generator_url: format!(
                "{}/api/v1/alerts?fingerprint={}",
                self.external_url.trim_end_matches('/'),
                a.fingerprint
            ),
            fingerprint: a.fingerprint.clone(),
        };
        for name in &rule.rule.receivers {
            let receiver = self.receivers.get(&(a.subscription.clone(), name.clone()));
            match (kind, receiver) {
                (NotificationKind::Refresh, Some(r))
                    if r.receiver_type != ReceiverType::Alertmanager =>
                {
                    continue
                }
                (NotificationKind::Refresh, None) => continue,
                (NotificationKind::Resolved, Some(r))
                    if !r.send_resolved && r.receiver_type == ReceiverType::Webhook =>
                {
                    continue
                }
                _ => {}
            }
            let id = self.next_notification;
            self.next_notification += 1;
            self.fx.notifications.push(Notification {
                id,
                subscription: a.subscription.clone(),
                receiver: name.clone(),
                rule_id: a.rule_id.clone(),
                fingerprint: a.fingerprint.clone(),
                kind,
                alert: alert.clone(),
                expires_at: now.saturating_add(rule.repeat_nanos.saturating_mul(3)),
                created_at: now,
                state: DeliveryState::Pending,
                attempts: 0,
                last_error: None,
                finished_at: None,
            });
        }
    }
}

/// The expected latest start of `p` under `rule` (event time), if any.
fn started_deadline(rule: &CompiledRule, p: &PipeState) -> Option<i64> {
    let Kind::StartedOverdue { grace, interval } = rule.kind else {
        return None;
    };
    if !p.enabled || p.running_since.is_some() {
        return None;
    }
    let base = match (p.last_started, p.last_finished) {
        (Some(s), Some(f)) => s.max(f),
        (Some(s), None) => s,
        (None, Some(f)) => f,
        (None, None) => p.known_since,
    };
    let expected = match (interval, &p.schedule) {
        (Some(i), _) => base.saturating_add(i),
        (None, ScheduleSpec::Interval(s)) => base.saturating_add((s * 1e9) as i64),
        (None, ScheduleSpec::Cron(_)) => {
            let c = p.cron.as_ref()?;
            let after = chrono::DateTime::from_timestamp_nanos(base);
            let next = c.after(&after).next()?;
            next.timestamp_nanos_opt()?
        }
        (None, ScheduleSpec::Unknown | ScheduleSpec::Manual) => return None,
    };
    Some(expected.saturating_add(grace))
}

/// A node's cron expression, if it is short, valid and fires at all.
fn parse_cron(expr: &str) -> Option<cron::Schedule> {
    use std::str::FromStr;
    if expr.len() > MAX_CRON_BYTES {
        return None;
    }
    let full = if expr.split_whitespace().count() == 5 {
        format!("0 {expr}")
    } else {
        expr.to_string()
    };
    let s = cron::Schedule::from_str(&full).ok()?;
    // An expression that never fires (Feb 30th) would make every deadline
    // computation search the calendar in vain.
    s.upcoming(chrono::Utc).next()?;
    Some(s)
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

pub(crate) fn json<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Rules as returned by the API.
pub fn rule_view(r: &CompiledRule) -> NotificationRule {
    r.rule.clone()
}

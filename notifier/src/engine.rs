//! The rule engine's state and its management: rules, receivers and
//! silences as the API changes them, what is known of sources and pipes,
//! restore after a restart, termination of a subscription.
//!
//! The engine is a deterministic state machine: every entry point takes
//! `now` (collector clock, nanoseconds) and records carry their own event
//! time, so tests drive it with a manual clock. It never does I/O: every
//! state change is collected as a typed [`Change`] in [`Effects`] (with the
//! notifications to queue) that the caller writes to RocksDB in one batch
//! (`store.rs` knows the keys). It needs no lock of its own and no thread:
//! the service holds it in a mutex today, and a dedicated evaluation thread
//! fed by a bounded queue of `Input`s (`dispatch.rs`) could own it.
//!
//! Where the rest lives: `dispatch.rs` routes inputs (records, samples,
//! conflicts, ticks, deferred records) to `conditions/` (one file per rule
//! family); `lifecycle.rs` fires, repeats, resolves and enqueues;
//! `inhibit.rs` holds heartbeats' inhibition and sources coming back;
//! `group.rs` folds alerts of grouped rules; `schedule.rs` keeps the
//! deadlines.
//!
//! # Bounds
//! Tenants choose rules, silences and what their records say, so every
//! piece of state is per subscription and bounded ([`Limits`]): rules,
//! silences and receivers (checked by the API), tracked pipes and sources,
//! armed timers, value windows and metric series, active alerts, deferred
//! records. Past a bound the state is not created and the event is counted
//! ([`Effects::limited`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use schemas::notify::Receiver;
use schemas::Record;

use crate::alerts::AlertStore;
use crate::index::Index;
use crate::limits::Limits;
use crate::model::{
    Alert, Change, Effects, FastMap, FastSet, Group, MetricState, PipeKey, PipeState, SourceKey,
    SourceState,
};
use crate::rule::{CompiledRule, Kind, RuleKey};
use crate::schedule::{Timer, Timers};
use crate::sharded::ShardedMap;
use crate::silence::{ActiveSilence, Silences};

/// Counts of bounded state of one subscription.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) pipes: usize,
    pub(crate) sources: usize,
    pub(crate) series: usize,
    /// Rules of the subscription (`rules` holds them; counted here so that
    /// the per-subscription bound is checked in O(1), not by a range scan
    /// per added rule: loading 10,000 rules had been quadratic).
    pub(crate) rules: usize,
}

/// State changed by the current evaluation, written once at its end.
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    pub(crate) alerts: FastSet<(String, String)>,
    pub(crate) pipes: FastSet<PipeKey>,
    pub(crate) sources: FastSet<SourceKey>,
    pub(crate) windows: HashSet<String>,
    pub(crate) metrics: HashSet<String>,
    pub(crate) groups: HashSet<String>,
}

/// Every receiver by (subscription, name).
pub(crate) type Receivers = BTreeMap<(String, String), Receiver>;

/// The engine state. Not thread safe: its owner serializes the calls.
#[derive(Debug)]
pub struct Engine {
    pub(crate) rules: BTreeMap<RuleKey, Arc<CompiledRule>>,
    pub(crate) index: Index,
    /// Copied on write: the delivery tasks read a snapshot of it
    /// ([`Engine::receivers_snapshot`]) without taking the engine's lock.
    pub(crate) receivers: Arc<Receivers>,
    pub(crate) silences: Silences,
    pub(crate) alerts: AlertStore,
    /// Sharded: one growth of a single map of 100,000 pipes stalled
    /// evaluation for every subscription (see `sharded.rs`).
    pub(crate) pipes: ShardedMap<PipeKey, PipeState>,
    /// Pipe names of each source.
    pub(crate) pipes_of: FastMap<SourceKey, BTreeSet<String>>,
    pub(crate) sources: FastMap<SourceKey, SourceState>,
    pub(crate) counts: HashMap<String, Counts>,
    /// `<sub>\0<rule id>\0<source>\0<pipe>`
    pub(crate) windows: HashMap<String, VecDeque<(i64, f64)>>,
    /// `<sub>\0<rule id>\0<series>`
    pub(crate) metric: HashMap<String, MetricState>,
    /// `<sub>\0<group key>`
    pub(crate) groups: HashMap<String, Group>,
    pub(crate) timers: Timers,
    /// The firing heartbeat alert of each source.
    pub(crate) heartbeat_firing: HashMap<SourceKey, String>,
    pub next_notification: u64,
    /// The collector's start.
    pub(crate) started_at: i64,
    /// How long the collector was down before this start (`None`: not
    /// known, an old store): a source's silence during it does not count
    /// towards its heartbeat, so the collector's own downtime pages no
    /// node, and a restart without downtime changes nothing.
    pub(crate) downtime: Option<i64>,
    pub(crate) external_url: String,
    pub(crate) fx: Effects,
    pub(crate) dirty: Dirty,
    pub(crate) limits: Limits,
    /// Loading a rules file: API writes are synced once at the end.
    pub bulk: bool,
    /// Records of subscriptions that used up their evaluation budget,
    /// waiting (in order) for [`Engine::drain`].
    pub(crate) backlog: HashMap<String, VecDeque<Record>>,
    /// Subscriptions with a backlog, in drain order.
    pub(crate) backlog_order: VecDeque<String>,
    /// While a record is evaluated: when its evaluation must stop.
    pub(crate) deadline: Option<Instant>,
    /// Rules of the record being evaluated were skipped for lack of time.
    pub(crate) cut: bool,
}

impl Engine {
    pub fn new(external_url: impl Into<String>, now: i64, limits: Limits) -> Engine {
        let cache = limits
            .max_pipes_per_subscription
            .saturating_mul(2)
            .clamp(1024, 1 << 20);
        Engine {
            rules: BTreeMap::new(),
            index: Index::new(cache),
            receivers: Arc::default(),
            silences: Silences::default(),
            alerts: AlertStore::default(),
            pipes: ShardedMap::default(),
            pipes_of: FastMap::default(),
            sources: FastMap::default(),
            counts: HashMap::new(),
            windows: HashMap::new(),
            metric: HashMap::new(),
            groups: HashMap::new(),
            timers: Timers::new(limits.max_timers_per_subscription),
            heartbeat_firing: HashMap::new(),
            next_notification: 1,
            started_at: now,
            downtime: Some(0),
            external_url: external_url.into(),
            fx: Effects::default(),
            dirty: Dirty::default(),
            limits,
            bulk: false,
            backlog: HashMap::new(),
            backlog_order: VecDeque::new(),
            deadline: None,
            cut: false,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The changes since the last call.
    pub fn take_effects(&mut self) -> Effects {
        let mut fx = std::mem::take(&mut self.fx);
        let d = std::mem::take(&mut self.dirty);
        for (sub, fp) in d.alerts {
            fx.changes.push(match self.alerts.get(&fp) {
                Some(a) => Change::Alert(a.clone()),
                None => Change::AlertGone { sub, fp },
            });
        }
        for k in d.pipes {
            fx.changes.push(match self.pipes.get(&k) {
                Some(p) => Change::Pipe(k, p.clone()),
                None => Change::PipeGone(k),
            });
        }
        for k in d.sources {
            fx.changes.push(match self.sources.get(&k) {
                Some(s) => Change::Source(k, *s),
                None => Change::SourceGone(k),
            });
        }
        for k in d.windows {
            fx.changes.push(match self.windows.get(&k) {
                Some(w) => Change::Window(k, w.clone()),
                None => Change::WindowGone(k),
            });
        }
        for k in d.metrics {
            fx.changes.push(match self.metric.get(&k) {
                Some(m) => Change::Metric(k, m.clone()),
                None => Change::MetricGone(k),
            });
        }
        for k in d.groups {
            fx.changes.push(match self.groups.get(&k) {
                Some(g) => Change::Group(k, g.clone()),
                None => Change::GroupGone(k),
            });
        }
        fx
    }

    /// Records an API change (rules, receivers, silences) for the next
    /// batch, synced (unless in bulk mode, whose caller syncs at the end).
    pub fn record(&mut self, c: Change) {
        self.fx.changes.push(c);
        self.fx.sync = !self.bulk;
    }

    /// The earliest collector-clock deadline.
    pub fn next_deadline(&self) -> Option<i64> {
        self.timers.next_wall()
    }

    /// Deferred records waiting for evaluation.
    pub fn deferred(&self) -> usize {
        self.backlog.values().map(VecDeque::len).sum()
    }

    pub(crate) fn count(&mut self, sub: &str) -> &mut Counts {
        if !self.counts.contains_key(sub) {
            self.counts.insert(sub.to_string(), Counts::default());
        }
        self.counts.get_mut(sub).expect("inserted above")
    }

    pub(crate) fn limited(&mut self, sub: &str, what: &'static str) {
        self.fx.limited.push((sub.to_string(), what));
    }

    /// Arms `t` at `at`, counting a refusal by the timer bound.
    pub(crate) fn arm(&mut self, t: Timer, at: i64) {
        if !self.timers.arm(&t, at) {
            self.limited(t.sub(), "timers");
        }
    }

    pub(crate) fn touch_alert(&mut self, sub: &str, fp: &str) {
        self.dirty.alerts.insert((sub.to_string(), fp.to_string()));
    }

    // ---- queries -----------------------------------------------------------

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

    pub fn rule_count(&self, sub: &str) -> usize {
        self.counts.get(sub).map_or(0, |c| c.rules)
    }

    pub fn receiver_count(&self, sub: &str) -> usize {
        self.receivers
            .range((sub.to_string(), String::new())..)
            .take_while(|((s, _), _)| s == sub)
            .count()
    }

    pub fn silence_count(&self, sub: &str) -> usize {
        self.silences.count(sub)
    }

    /// Active alerts of `sub`.
    pub fn alerts_of<'a>(&'a self, sub: &'a str) -> impl Iterator<Item = &'a Alert> + 'a {
        self.alerts.of(sub)
    }

    /// Every active alert.
    pub fn all_alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.all()
    }

    pub fn alert_count(&self) -> usize {
        self.alerts.len()
    }

    /// The pipes known in `sub` (for warnings about globs matching none).
    pub fn known_pipes(&self, sub: &str) -> BTreeSet<String> {
        self.pipes_of
            .iter()
            .filter(|(k, _)| k.sub == sub)
            .flat_map(|(_, v)| v.iter().cloned())
            .collect()
    }

    // ---- restore -------------------------------------------------------

    /// Restores persisted state (after the rules, receivers and silences
    /// are in) and re-arms every timer.
    pub fn restore(&mut self, state: Restored) {
        self.downtime = state.alive.map(|t| state.now.saturating_sub(t).max(0));
        let now = state.now;
        self.restore_entries(state);
        for key in self.silences.keys() {
            self.arm_silence(&key, now);
        }
        // A silence that ended while the collector was down.
        let subs: BTreeSet<String> = self
            .alerts
            .all()
            .filter(|a| !a.notified)
            .map(|a| a.subscription.clone())
            .collect();
        for sub in subs {
            self.flush_pending(&sub, now, now);
        }
    }

    // ---- rules, receivers, silences ------------------------------------

    /// Adds or replaces a rule. Alerts of a replaced rule whose type
    /// changed are resolved.
    pub fn set_rule(&mut self, rule: Arc<CompiledRule>, now: i64) {
        let key = rule.key();
        if let Some(old) = self.rules.get(&key).cloned() {
            self.index.remove(&old);
            if old.rule_type() != rule.rule_type() {
                self.resolve_rule_alerts(&key, now);
            }
        }
        if self.rules.insert(key, rule.clone()).is_none() {
            self.count(&rule.rule.subscription).rules += 1;
        }
        self.index.add(&rule);
        self.arm_rule(&rule);
    }

    /// Removes a rule and resolves its alerts.
    pub fn remove_rule(&mut self, key: &RuleKey, now: i64) -> Option<Arc<CompiledRule>> {
        // Resolve first: the resolved notifications go to the rule's
        // receivers.
        self.resolve_rule_alerts(key, now);
        let old = self.rules.remove(key)?;
        if let Some(c) = self.counts.get_mut(&key.sub) {
            c.rules = c.rules.saturating_sub(1);
        }
        self.index.remove(&old);
        Some(old)
    }

    fn resolve_rule_alerts(&mut self, key: &RuleKey, now: i64) {
        if !self.alerts.rule_firing(key) {
            return;
        }
        let fps: Vec<String> = self
            .alerts
            .of(&key.sub)
            .filter(|a| a.rule_id == key.id)
            .map(|a| a.fingerprint.clone())
            .collect();
        for fp in fps {
            self.resolve(&fp, now);
        }
    }

    /// Arms the timers a new rule needs for what is already known.
    fn arm_rule(&mut self, rule: &Arc<CompiledRule>) {
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

    /// The receivers as they are now; a later change copies them, so the
    /// snapshot stays as it was.
    pub(crate) fn receivers_snapshot(&self) -> Arc<Receivers> {
        self.receivers.clone()
    }

    pub fn receiver(&self, sub: &str, name: &str) -> Option<&Receiver> {
        self.receivers.get(&(sub.to_string(), name.to_string()))
    }

    /// Adds or replaces a receiver; whether it is new.
    pub fn set_receiver(&mut self, r: Receiver) -> bool {
        self.record(Change::Receiver(r.clone()));
        Arc::make_mut(&mut self.receivers)
            .insert((r.subscription.clone(), r.name.clone()), r)
            .is_none()
    }

    pub fn remove_receiver(&mut self, sub: &str, name: &str) -> Option<Receiver> {
        let r = Arc::make_mut(&mut self.receivers).remove(&(sub.to_string(), name.to_string()))?;
        self.record(Change::ReceiverGone {
            sub: sub.to_string(),
            name: name.to_string(),
        });
        Some(r)
    }

    /// Adds or replaces a silence (restoring: nothing to write).
    pub fn set_silence(&mut self, s: ActiveSilence, now: i64) {
        let key = (s.silence.subscription.clone(), s.silence.id.clone());
        self.disarm_silence(&key);
        self.silences.insert(s);
        self.arm_silence(&key, now);
        self.flush_pending(&key.0, now, now);
    }

    pub fn remove_silence(&mut self, key: &(String, String), now: i64) -> Option<ActiveSilence> {
        self.disarm_silence(key);
        let s = self.silences.remove(key)?;
        self.flush_pending(&key.0, now, now);
        Some(s)
    }

    pub(crate) fn silence_of(&self, key: &(String, String)) -> Option<&ActiveSilence> {
        self.silences.get(key)
    }

    /// The silences of `sub` (all when `None`).
    pub fn silences<'a>(&'a self, sub: Option<&'a str>) -> Vec<&'a ActiveSilence> {
        match sub {
            Some(s) => self.silences.of(s).collect(),
            None => self.silences.all().collect(),
        }
    }

    fn silence_edges(&self, key: &(String, String)) -> Option<[(i64, Timer); 2]> {
        let s = self.silences.get(key)?;
        let t = Timer::SilenceEdge {
            sub: key.0.clone(),
            id: key.1.clone(),
        };
        Some([(s.starts, t.clone()), (s.ends, t)])
    }

    /// Arms the silence's edges still ahead of `now` (the ones behind are
    /// dealt with: its creation flushes, a restore flushes).
    fn arm_silence(&mut self, key: &(String, String), now: i64) {
        if let Some(edges) = self.silence_edges(key) {
            for (at, t) in edges {
                if at > now {
                    self.timers.edge(at, t);
                }
            }
        }
    }

    fn disarm_silence(&mut self, key: &(String, String)) {
        if let Some(edges) = self.silence_edges(key) {
            for (at, t) in &edges {
                self.timers.remove_edge(*at, t);
            }
        }
    }

    // ---- sources and pipes -------------------------------------------------

    /// Starts tracking `key` if the subscription's bound allows; whether it
    /// is tracked.
    pub(crate) fn track_source(&mut self, key: &SourceKey) -> bool {
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
    pub(crate) fn track_pipe(&mut self, key: &PipeKey, ts: i64) -> bool {
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
        self.pipes_of
            .entry(key.source_key())
            .or_default()
            .insert(key.pipe.clone());
        self.dirty.pipes.insert(key.clone());
        true
    }

    // ---- termination -------------------------------------------------------

    /// Drops everything of a terminated subscription from memory (the
    /// store deletes its keys by range).
    pub fn purge(&mut self, sub: &str) {
        self.rules.retain(|k, _| k.sub != sub);
        self.index.purge(sub);
        if self.receivers.keys().any(|(s, _)| s == sub) {
            Arc::make_mut(&mut self.receivers).retain(|(s, _), _| s != sub);
        }
        self.silences.purge(sub);
        self.alerts.purge(sub);
        self.heartbeat_firing.retain(|k, _| k.sub != sub);
        self.pipes.retain(|k, _| k.sub != sub);
        self.pipes_of.retain(|k, _| k.sub != sub);
        self.sources.retain(|k, _| k.sub != sub);
        let prefix = format!("{sub}\0");
        self.windows.retain(|k, _| !k.starts_with(&prefix));
        self.metric.retain(|k, _| !k.starts_with(&prefix));
        self.groups.retain(|k, _| !k.starts_with(&prefix));
        self.timers.purge(sub);
        self.counts.remove(sub);
        self.backlog.remove(sub);
        self.backlog_order.retain(|s| s != sub);
        // Pending changes of the subscription must not be written back.
        let d = &mut self.dirty;
        d.alerts.retain(|(s, _)| s != sub);
        d.pipes.retain(|k| k.sub != sub);
        d.sources.retain(|k| k.sub != sub);
        d.windows.retain(|k| !k.starts_with(&prefix));
        d.metrics.retain(|k| !k.starts_with(&prefix));
        d.groups.retain(|k| !k.starts_with(&prefix));
        self.fx.notifications.retain(|n| n.subscription != sub);
    }
}

/// Persisted state handed to [`Engine::restore`].
#[derive(Debug, Default)]
pub struct Restored {
    /// Collector time of the restore.
    pub now: i64,
    /// Collector time of the last evaluation before it.
    pub alive: Option<i64>,
    pub alerts: Vec<Alert>,
    pub pipes: Vec<(PipeKey, PipeState)>,
    pub sources: Vec<(SourceKey, SourceState)>,
    pub windows: Vec<(String, VecDeque<(i64, f64)>)>,
    pub metrics: Vec<(String, MetricState)>,
    pub groups: Vec<(String, Group)>,
}

//! The notifier: notification rules evaluated against every record the
//! collector stores and every metric sample pushed to it, an alert
//! lifecycle (fire once, repeat with counts, resolve, silences, inhibition)
//! persisted in the collector's RocksDB, and durable delivery to webhooks
//! (Alertmanager's webhook payload v4, optional HMAC signature) and to
//! Alertmanager itself.
//!
//! The collector hosts it: it passes its database (opened with the
//! [`COLUMN_FAMILY`] column family), calls [`Notifier::on_records`] after
//! every synced ingest commit, [`Notifier::on_samples`] for pushed
//! metrics and [`Notifier::on_source_conflict`] for refused sources, and
//! serves the API over [`Notifier`]'s methods.
//!
//! Tenants are isolated: rule and silence ids are scoped by subscription,
//! every input is bounded ([`Limits`]), each subscription's evaluation has
//! a time budget, and receivers only reach destinations the egress policy
//! allows ([`EgressPolicy`]).
//!
//! - `engine.rs`: rules against records, samples and timers; alert
//!   lifecycle. Deterministic, driven by a [`Clock`].
//! - `rule.rs`, `silence.rs`, `receiver.rs`: validation into typed,
//!   compiled objects.
//! - `limits.rs`: the bounds; `egress.rs`: the egress policy.
//! - `store.rs`: the persisted layout.
//! - `delivery.rs`: the durable queue and the HTTP calls.

#![forbid(unsafe_code)]

pub mod delivery;
pub mod egress;
pub mod engine;
pub mod limits;
pub mod receiver;
pub mod rule;
pub mod silence;
pub mod store;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::RngExt;
use schemas::notify::{NotificationRule, Receiver, ReceiverType, RuleType, Silence, Span};
use schemas::time::{now_nanos, rfc3339_from_nanos};
use schemas::Record;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use delivery::DeliveryConfig;
use delivery::Queue;
pub use egress::{Cidr, EgressPolicy};
pub use engine::{Alert, DeliveryState, Engine, Notification, NotificationKind};
use engine::{Budget, PipeKey, PipeState, SourceKey, SourceState};
pub use limits::Limits;
pub use rule::RuleKey;
use silence::ActiveSilence;
pub use store::COLUMN_FAMILY;
use store::{keys, Db};

/// Where the time comes from: the system clock, or a manual one in tests.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Nanoseconds since the Unix epoch.
    fn now(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        now_nanos()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start: i64) -> ManualClock {
        ManualClock(AtomicI64::new(start))
    }
    pub fn advance(&self, d: Duration) {
        self.0
            .fetch_add(i64::try_from(d.as_nanos()).unwrap_or(0), Ordering::SeqCst);
    }
    pub fn set(&self, t: i64) {
        self.0.store(t, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What kind of failure an API call met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Invalid,
    NotFound,
    Forbidden,
    Conflict,
    Storage,
}

/// An error of the notifier, naming the field at fault where one is.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct NotifierError {
    pub kind: ErrorKind,
    pub message: String,
    pub field: Option<String>,
    /// The limit that refused the request, for `/metrics`
    /// (`notifier_refusals_total{reason}`); `None` for other errors.
    pub reason: Option<&'static str>,
}

impl NotifierError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        NotifierError {
            kind: ErrorKind::Invalid,
            message: message.into(),
            field: Some(field.into()),
            reason: None,
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        NotifierError {
            kind: ErrorKind::NotFound,
            message: message.into(),
            field: None,
            reason: None,
        }
    }
    pub fn forbidden(field: &str, message: impl Into<String>) -> Self {
        NotifierError {
            kind: ErrorKind::Forbidden,
            message: message.into(),
            field: Some(field.into()),
            reason: None,
        }
    }
    pub fn conflict(field: &str, message: impl Into<String>) -> Self {
        NotifierError {
            kind: ErrorKind::Conflict,
            message: message.into(),
            field: Some(field.into()),
            reason: None,
        }
    }
    pub fn storage(message: impl Into<String>) -> Self {
        NotifierError {
            kind: ErrorKind::Storage,
            message: message.into(),
            field: None,
            reason: None,
        }
    }
    /// Marks the error as a refusal by the limit `reason`.
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }
    fn at(mut self, prefix: &str) -> Self {
        self.field = Some(match self.field {
            Some(f) => format!("{prefix}.{f}"),
            None => prefix.to_string(),
        });
        self.message = format!("{prefix}: {}", self.message);
        self
    }
}

/// Whose data a caller may see and change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Admin: every subscription.
    All,
    /// Operator of one subscription.
    Subscription(String),
}

impl Scope {
    /// The subscription a caller names for an object: an operator's own
    /// (an explicit other one is refused); for an admin the given one.
    fn claim(&self, field: &str, sub: &mut String) -> Result<(), NotifierError> {
        match self {
            Scope::Subscription(s) if sub.is_empty() => {
                *sub = s.clone();
                Ok(())
            }
            Scope::Subscription(s) if s != sub => Err(NotifierError::forbidden(
                field,
                format!("this token may only manage subscription {s:?}"),
            )),
            Scope::All if sub.is_empty() => Err(NotifierError::invalid(
                field,
                "subscription is required for an admin token",
            )),
            _ => Ok(()),
        }
    }

    /// The subscription a caller means in a path lookup (`sub` from
    /// `?subscription=`): an operator's own whatever it says; an admin's
    /// choice (`None`: find it).
    fn lookup<'a>(&'a self, sub: Option<&'a str>) -> Option<&'a str> {
        match self {
            Scope::Subscription(s) => Some(s.as_str()),
            Scope::All => sub,
        }
    }

    /// The subscription to count a refusal under.
    fn label(&self, sub: &str) -> String {
        match self {
            Scope::Subscription(s) => s.clone(),
            Scope::All => sub.to_string(),
        }
    }
}

/// One pushed metric sample, borrowed from the collector's decoded request.
#[derive(Debug, Clone, Copy)]
pub struct SampleRef<'a> {
    pub name: &'a str,
    /// Sorted labels, including `subscription` and `instance`.
    pub labels: &'a [(String, String)],
    pub value: f64,
}

/// Notifier settings.
#[derive(Debug, Clone)]
pub struct NotifierConfig {
    /// Base URL of the collector as operators reach it (links in payloads).
    pub external_url: String,
    pub delivery: DeliveryConfig,
    /// Bounds on what tenants store and make the notifier do.
    pub limits: Limits,
    /// Where receivers may send (`--egress-allow`).
    pub egress: EgressPolicy,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        NotifierConfig {
            external_url: "http://127.0.0.1:3100".into(),
            delivery: DeliveryConfig::default(),
            limits: Limits::default(),
            egress: EgressPolicy::default(),
        }
    }
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[derive(Debug, Default, Clone)]
struct Metrics {
    records: Counter,
    samples: Counter,
    evaluation_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    sent: Family<Labels, Counter>,
    retries: Counter,
    alerts_firing: Gauge,
    queue_pending: Gauge,
    rules: Gauge,
    errors: Counter,
    /// API requests refused, by reason and subscription.
    refusals: Family<Labels, Counter>,
    /// Records not (fully) evaluated: cut, or its backlog was full.
    skipped: Family<Labels, Counter>,
    /// Records deferred: the subscription had used up its budget.
    deferred: Family<Labels, Counter>,
    /// Deferred records waiting.
    backlog: Gauge,
    /// State not kept: a per-subscription bound was reached.
    limited: Family<Labels, Counter>,
    /// Deliveries refused by the egress policy, by subscription.
    egress_refused: Family<Labels, Counter>,
}

#[derive(Debug)]
struct Inner {
    db: Db,
    /// Short critical sections; never held across an await.
    engine: Mutex<Engine>,
    /// Short critical sections; never held across an await.
    queue: Mutex<Queue>,
    clock: Arc<dyn Clock>,
    wake_delivery: tokio::sync::Notify,
    wake_timer: tokio::sync::Notify,
    client: reqwest::Client,
    config: NotifierConfig,
    policy: egress::SharedPolicy,
    metrics: Metrics,
    /// Metric names watched by `metric_threshold` rules, per subscription:
    /// lets the metrics ingest skip building samples nobody evaluates.
    metric_watch: std::sync::RwLock<HashMap<String, HashSet<String>>>,
    /// When a (subscription, reason) warning was last logged: one line a
    /// minute at most. Short critical sections.
    warned: Mutex<HashMap<(String, &'static str), Instant>>,
    /// Notifications finished per subscription since its history was
    /// last pruned. Short critical sections.
    finished: Mutex<HashMap<String, u64>>,
    /// Each subscription's share of evaluation time. Short critical
    /// sections.
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// What is left of a subscription's share of evaluation time: refills at
/// [`Limits::eval_share`] of wall time up to [`Limits::eval_budget`]; may
/// go below zero by the overrun of a record that was cut.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    secs: f64,
    at: Instant,
}

/// The notifier. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

/// A rules file: receivers, rules and silences to load at start.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default)]
    pub receivers: Vec<Receiver>,
    #[serde(default)]
    pub rules: Vec<NotificationRule>,
    #[serde(default)]
    pub silences: Vec<Silence>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn parse<T: serde::de::DeserializeOwned>(key: &[u8], v: &[u8]) -> Option<T> {
    match serde_json::from_slice(v) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(key = %String::from_utf8_lossy(key), error = %e, "unreadable notifier state entry skipped");
            None
        }
    }
}

fn random_id(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}-{n:016x}")
}

/// Finished notifications of a subscription between history prunes.
const PRUNE_EVERY: u64 = 100;
/// Rounds of timers and deferred evaluation one [`Notifier::tick`] runs.
const TICK_ROUNDS: usize = 16;

impl Notifier {
    /// Opens the notifier over `db` (which has [`COLUMN_FAMILY`]) and
    /// restores its state (migrating an older layout first). Call
    /// [`Notifier::start`] to run its timers and deliveries.
    pub fn open(
        db: Arc<rocksdb::DB>,
        config: NotifierConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Notifier, NotifierError> {
        let db = Db::new(db)?;
        let moved = db.migrate()?;
        if moved > 0 {
            tracing::info!(
                entries = moved,
                "notifier state migrated to layout {}",
                store::LAYOUT
            );
        }
        let now = clock.now();
        let limits = config.limits.clone();
        let mut engine = Engine::new(config.external_url.clone(), now, limits.clone());
        for (k, v) in db.scan(keys::RECEIVERS)? {
            if let Some(r) = parse::<Receiver>(&k, &v) {
                engine
                    .receivers
                    .insert((r.subscription.clone(), r.name.clone()), r);
            }
        }
        for (k, v) in db.scan(keys::RULES)? {
            let Some(r) = parse::<NotificationRule>(&k, &v) else {
                continue;
            };
            match rule::compile(r, &limits) {
                Ok(c) => engine.set_rule(Arc::new(c), now),
                Err(e) => {
                    tracing::error!(key = %String::from_utf8_lossy(&k), error = %e, "stored rule no longer valid; skipped")
                }
            }
        }
        for (k, v) in db.scan(keys::SILENCES)? {
            let Some(s) = parse::<Silence>(&k, &v) else {
                continue;
            };
            match ActiveSilence::compile(s, None, &limits) {
                Ok(a) => engine.set_silence(a, now),
                Err(e) => {
                    tracing::error!(key = %String::from_utf8_lossy(&k), error = %e, "stored silence no longer valid; skipped")
                }
            }
        }
        let alerts: Vec<Alert> = db
            .scan(keys::ALERTS)?
            .iter()
            .filter_map(|(k, v)| parse(k, v))
            .collect();
        let pipes: Vec<(PipeKey, PipeState)> = db
            .scan(keys::PIPES)?
            .iter()
            .filter_map(|(k, v)| parse(k, v))
            .collect();
        let sources: Vec<(SourceKey, SourceState)> = db
            .scan(keys::SOURCES)?
            .iter()
            .filter_map(|(k, v)| parse(k, v))
            .collect();
        let windows: Vec<(String, VecDeque<(i64, f64)>)> = db
            .scan(keys::WINDOWS)?
            .iter()
            .filter_map(|(k, v)| parse(k, v))
            .collect();
        engine.restore(alerts, pipes, sources, windows);
        if let Some(v) = db.get(keys::NEXT_ID)? {
            if let Ok(b) = <[u8; 8]>::try_from(v.as_slice()) {
                engine.next_notification = u64::from_be_bytes(b).max(1);
            }
        }
        // Timers restored above may have produced effects (nothing is sent:
        // notifications need a tick); keep them.
        let fx = engine.take_effects();
        db.apply(&fx, engine.next_notification)?;
        let mut queue = Queue::default();
        for (k, v) in db.scan(keys::NOTIFICATIONS)? {
            if let Some(n) = parse::<Notification>(&k, &v) {
                if n.state == DeliveryState::Pending {
                    queue.push(n);
                }
            }
        }
        for n in fx.notifications {
            queue.push(n);
        }
        let policy: egress::SharedPolicy = Arc::new(std::sync::RwLock::new(config.egress.clone()));
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("sesam-notifier/", env!("CARGO_PKG_VERSION")))
            // The egress policy is enforced on the connected address: a
            // redirect or a proxy would connect somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(egress::EgressResolver::new(policy.clone())))
            .build()
            .map_err(|e| NotifierError::storage(format!("HTTP client: {e}")))?;
        let metrics = Metrics::default();
        metrics.rules.set(engine.rules.len() as i64);
        metrics.alerts_firing.set(engine.alerts.len() as i64);
        metrics.queue_pending.set(queue.pending.len() as i64);
        let watch = metric_watch(&engine);
        Ok(Notifier {
            inner: Arc::new(Inner {
                db,
                engine: Mutex::new(engine),
                queue: Mutex::new(queue),
                clock,
                wake_delivery: tokio::sync::Notify::new(),
                wake_timer: tokio::sync::Notify::new(),
                client,
                config,
                policy,
                metrics,
                metric_watch: std::sync::RwLock::new(watch),
                warned: Mutex::new(HashMap::new()),
                finished: Mutex::new(HashMap::new()),
                buckets: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Tells the egress policy where the collector listens (it never
    /// sends notifications to itself).
    pub fn set_own_address(&self, addr: std::net::SocketAddr) {
        self.inner
            .policy
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .own_address = Some(addr);
    }

    fn policy(&self) -> EgressPolicy {
        egress::read(&self.inner.policy)
    }

    /// Whether a `metric_threshold` rule of `subscription` watches `name`.
    pub fn wants_metric(&self, subscription: &str, name: &str) -> bool {
        self.inner
            .metric_watch
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(subscription)
            .is_some_and(|names| names.contains(name))
    }

    fn refresh_metric_watch(&self) {
        let watch = metric_watch(&lock(&self.inner.engine));
        *self
            .inner
            .metric_watch
            .write()
            .unwrap_or_else(|p| p.into_inner()) = watch;
    }

    /// Registers the notifier's metrics (`notifier_*`).
    pub fn register_metrics(&self, registry: &mut Registry) {
        let m = &self.inner.metrics;
        registry.register(
            "notifier_records_evaluated",
            "Records evaluated against the rules",
            m.records.clone(),
        );
        registry.register(
            "notifier_samples_evaluated",
            "Metric samples evaluated against metric_threshold rules",
            m.samples.clone(),
        );
        registry.register(
            "notifier_evaluation_seconds",
            "Time spent evaluating records, samples and timers",
            m.evaluation_seconds.clone(),
        );
        registry.register(
            "notifier_notifications",
            "Notifications finished, by receiver type and outcome",
            m.sent.clone(),
        );
        registry.register(
            "notifier_notification_retries",
            "Delivery attempts that failed and will be retried",
            m.retries.clone(),
        );
        registry.register(
            "notifier_alerts_firing",
            "Active alerts",
            m.alerts_firing.clone(),
        );
        registry.register(
            "notifier_queue_pending",
            "Notifications waiting for delivery",
            m.queue_pending.clone(),
        );
        registry.register("notifier_rules", "Notification rules", m.rules.clone());
        registry.register(
            "notifier_state_write_errors",
            "Failed writes of notifier state",
            m.errors.clone(),
        );
        registry.register(
            "notifier_refusals",
            "API requests refused by a limit (or as invalid), by reason and subscription",
            m.refusals.clone(),
        );
        registry.register(
            "notifier_evaluation_skipped_records",
            "Records not (fully) evaluated: one record outlasted its subscription's evaluation budget, or the subscription's backlog of deferred records was full; by subscription",
            m.skipped.clone(),
        );
        registry.register(
            "notifier_evaluation_deferred_records",
            "Records whose evaluation was deferred because their subscription used up its evaluation budget, by subscription",
            m.deferred.clone(),
        );
        registry.register(
            "notifier_evaluation_backlog_records",
            "Deferred records waiting for evaluation",
            m.backlog.clone(),
        );
        registry.register(
            "notifier_limited",
            "State not kept because a per-subscription bound was reached, by reason and subscription",
            m.limited.clone(),
        );
        registry.register(
            "notifier_egress_refused",
            "Deliveries refused by the egress policy, by subscription",
            m.egress_refused.clone(),
        );
    }

    pub fn now(&self) -> i64 {
        self.inner.clock.now()
    }

    /// Logs a warning about `sub` at most once a minute per `reason`.
    fn warn_throttled(&self, sub: &str, reason: &'static str, message: &str) {
        let mut w = lock(&self.inner.warned);
        let now = Instant::now();
        let key = (sub.to_string(), reason);
        if w.get(&key)
            .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60))
        {
            return;
        }
        if w.len() > 10_000 {
            w.clear();
        }
        w.insert(key, now);
        drop(w);
        tracing::warn!(subscription = %sub, reason, "{message}");
    }

    /// Counts an API refusal under its reason and `sub`.
    fn refused(&self, sub: &str, e: &NotifierError) {
        if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Storage) {
            return;
        }
        let reason = e.reason.unwrap_or("invalid");
        self.inner
            .metrics
            .refusals
            .get_or_create(&labels(&[("reason", reason), ("subscription", sub)]))
            .inc();
    }

    /// Runs `f` on the engine, then writes its effects and queues its
    /// notifications. The engine lock covers the write so that batches
    /// land in the order they were made.
    fn with_engine<T>(&self, f: impl FnOnce(&mut Engine, i64) -> T) -> Result<T, NotifierError> {
        self.evaluate(true, f)
    }

    /// [`Notifier::with_engine`]; `sync` makes batches that queue
    /// notifications synced. Evaluations of ingested records skip it: they
    /// run right after the collector's synced commit, and its next commit
    /// syncs the WAL again (an unsynced write survives a process crash; only
    /// a power cut in between could lose it, and the records' shipper then
    /// has them acknowledged).
    fn evaluate<T>(
        &self,
        sync: bool,
        f: impl FnOnce(&mut Engine, i64) -> T,
    ) -> Result<T, NotifierError> {
        let started = Instant::now();
        let now = self.inner.clock.now();
        let mut engine = lock(&self.inner.engine);
        let before = engine.next_deadline();
        let out = f(&mut engine, now);
        let mut fx = engine.take_effects();
        if sync && !fx.notifications.is_empty() {
            fx.sync = true;
        }
        // A subscription whose queue is full gets its new notifications
        // recorded as failed at once (they stay in its history).
        let mut overflow = Vec::new();
        {
            let q = lock(&self.inner.queue);
            let max = self.inner.config.limits.max_pending_per_subscription;
            let mut adding: HashMap<&str, usize> = HashMap::new();
            for n in &mut fx.notifications {
                let k = adding.entry(n.subscription.as_str()).or_default();
                if q.pending_of(&n.subscription) + *k >= max {
                    n.state = DeliveryState::Failed;
                    n.finished_at = Some(now);
                    n.last_error = Some(format!(
                        "not sent: the subscription's notification queue is full ({max} pending)"
                    ));
                    overflow.push(n.subscription.clone());
                } else {
                    *k += 1;
                }
            }
        }
        let written = self.inner.db.apply(&fx, engine.next_notification);
        let after = engine.next_deadline();
        let (rules, firing) = (engine.rules.len(), engine.alerts.len());
        drop(engine);
        let m = &self.inner.metrics;
        m.rules.set(rules as i64);
        m.alerts_firing.set(firing as i64);
        m.evaluation_seconds.inc_by(started.elapsed().as_secs_f64());
        for (sub, what) in fx
            .limited
            .iter()
            .map(|(s, w)| (s.as_str(), *w))
            .chain(overflow.iter().map(|s| (s.as_str(), "queue_full")))
        {
            m.limited
                .get_or_create(&labels(&[("reason", what), ("subscription", sub)]))
                .inc();
            self.warn_throttled(
                sub,
                what,
                &format!("notifier state not kept: the subscription reached its bound on {what}"),
            );
        }
        if let Err(e) = written {
            m.errors.inc();
            tracing::error!(error = %e, "notifier state write failed");
            return Err(e);
        }
        let queued: Vec<Notification> = fx
            .notifications
            .into_iter()
            .filter(|n| n.state == DeliveryState::Pending)
            .collect();
        if !queued.is_empty() {
            let mut q = lock(&self.inner.queue);
            for n in queued {
                q.push(n);
            }
            m.queue_pending.set(q.pending.len() as i64);
            drop(q);
            self.inner.wake_delivery.notify_one();
        }
        if after.is_some() && (before.is_none() || after < before) {
            self.inner.wake_timer.notify_one();
        }
        Ok(out)
    }

    /// Evaluates records just stored by the collector. Each subscription
    /// gets the evaluation budget ([`Limits::eval_budget`]) in this call;
    /// its records beyond it are deferred to the background evaluation
    /// (counted in `notifier_evaluation_deferred_records_total` and logged),
    /// never charged to another subscription.
    pub fn on_records(&self, records: &[Record]) {
        self.inner.metrics.records.inc_by(records.len() as u64);
        let mut subs: Vec<&str> = Vec::new();
        for r in records {
            if subs.last() != Some(&r.subscription.as_str())
                && !subs.contains(&r.subscription.as_str())
            {
                subs.push(&r.subscription);
            }
        }
        let mut budget = self.budget(subs.into_iter());
        let _ = self.evaluate(false, |e, now| e.on_records(records, now, &mut budget));
        self.settle(&budget);
        self.account(&budget);
    }

    /// A budget of [`Limits::eval_budget`] per subscription, capped by
    /// what is left of each of `subs`' share of evaluation time.
    fn budget<'a>(&self, subs: impl Iterator<Item = &'a str>) -> Budget {
        let l = &self.inner.config.limits;
        let mut budget = Budget::new(l.eval_budget);
        if l.eval_budget == Duration::MAX {
            return budget;
        }
        let cap = l.eval_budget.as_secs_f64();
        let now = Instant::now();
        let mut b = lock(&self.inner.buckets);
        for sub in subs {
            let k = b
                .entry(sub.to_string())
                .or_insert(Bucket { secs: cap, at: now });
            k.secs = (k.secs + now.duration_since(k.at).as_secs_f64() * self.share()).min(cap);
            k.at = now;
            budget.allow(
                sub,
                Duration::try_from_secs_f64(k.secs.max(0.0)).unwrap_or_default(),
            );
        }
        budget
    }

    fn share(&self) -> f64 {
        self.inner.config.limits.eval_share.clamp(0.01, 64.0)
    }

    /// Takes what `budget` spent from the subscriptions' shares.
    fn settle(&self, budget: &Budget) {
        let l = &self.inner.config.limits;
        if l.eval_budget == Duration::MAX {
            return;
        }
        let floor = -l.eval_budget.as_secs_f64();
        let mut b = lock(&self.inner.buckets);
        for (sub, d) in budget.spent() {
            if let Some(k) = b.get_mut(sub) {
                k.secs = (k.secs - d.as_secs_f64()).max(floor);
            }
        }
    }

    /// How long until a subscription with deferred records has a share of
    /// evaluation time again (`None`: nothing is deferred).
    fn backlog_wait(&self) -> Option<Duration> {
        let subs = lock(&self.inner.engine).backlogged();
        if subs.is_empty() {
            return None;
        }
        let l = &self.inner.config.limits;
        if l.eval_budget == Duration::MAX {
            return Some(Duration::ZERO);
        }
        let want = (l.eval_budget.as_secs_f64() / 10.0).min(0.001);
        let now = Instant::now();
        let b = lock(&self.inner.buckets);
        let wait = subs
            .iter()
            .map(|s| match b.get(s) {
                None => 0.0,
                Some(k) => {
                    let has = k.secs + now.duration_since(k.at).as_secs_f64() * self.share();
                    ((want - has) / self.share()).max(0.0)
                }
            })
            .fold(f64::INFINITY, f64::min);
        Some(Duration::try_from_secs_f64(wait).unwrap_or(Duration::from_secs(1)))
    }

    /// Counts and logs what a budget deferred and skipped.
    fn account(&self, budget: &Budget) {
        let m = &self.inner.metrics;
        let limit = limits::human(self.inner.config.limits.eval_budget);
        for (sub, n) in &budget.deferred {
            m.deferred
                .get_or_create(&labels(&[("subscription", sub)]))
                .inc_by(*n);
            self.warn_throttled(
                sub,
                "eval_budget",
                &format!(
                    "{n} records deferred: the subscription's rules used up its evaluation budget of {limit} (--notifier-eval-budget); its alerts are delayed; reduce or simplify its rules"
                ),
            );
        }
        for (sub, n) in &budget.skipped {
            m.skipped
                .get_or_create(&labels(&[("subscription", sub)]))
                .inc_by(*n);
            self.warn_throttled(
                sub,
                "eval_skipped",
                &format!(
                    "{n} records not (fully) evaluated: a record outlasted the evaluation budget of {limit}, or the subscription's deferred records reached --max-deferred-records-per-subscription"
                ),
            );
        }
        m.backlog.set(lock(&self.inner.engine).deferred() as i64);
    }

    /// Deferred records waiting for the background evaluation.
    pub fn deferred(&self) -> usize {
        lock(&self.inner.engine).deferred()
    }

    /// Evaluates pushed metric samples of `subscription`.
    pub fn on_samples(&self, subscription: &str, samples: &[SampleRef<'_>]) {
        self.inner.metrics.samples.inc_by(samples.len() as u64);
        let _ = self.evaluate(false, |e, now| e.on_samples(subscription, samples, now));
    }

    /// The collector refused records of `source` of `subscription`: two
    /// outbox epochs write it, or a seq was re-sent with different content
    /// (`detail` says which). `source_conflict` rules fire.
    pub fn on_source_conflict(&self, subscription: &str, source: &str, detail: &str) {
        let _ = self.with_engine(|e, now| e.on_source_conflict(subscription, source, detail, now));
    }

    /// Forgets everything of a terminated subscription: rules, receivers,
    /// silences, alerts, pipe and source state, timers, windows, metric
    /// series, the delivery queue and the notification history, in memory
    /// and on disk.
    pub fn purge(&self, subscription: &str) {
        let mut engine = lock(&self.inner.engine);
        engine.purge(subscription);
        let fx = engine.take_effects();
        if let Err(e) = self.inner.db.apply(&fx, engine.next_notification) {
            tracing::error!(error = %e, "notifier state write failed");
        }
        {
            // Under the queue lock: a delivery that ends now finds its
            // notification gone and writes nothing back.
            let mut q = lock(&self.inner.queue);
            q.purge(subscription);
            self.inner.metrics.queue_pending.set(q.pending.len() as i64);
            if let Err(e) = self.inner.db.purge(subscription) {
                self.inner.metrics.errors.inc();
                tracing::error!(subscription, error = %e, "notifier purge failed");
            }
        }
        drop(engine);
        lock(&self.inner.finished).remove(subscription);
        lock(&self.inner.buckets).remove(subscription);
        self.refresh_metric_watch();
    }

    /// Runs the timers due at the clock's now and evaluates deferred
    /// records, in rounds of bounded work with the engine lock released in
    /// between; returns after a bounded number of rounds (call again while
    /// [`Engine::next_deadline`] says now).
    pub fn tick(&self) {
        for _ in 0..TICK_ROUNDS {
            let timers = matches!(self.with_engine(|e, now| e.tick(now)), Ok(true));
            let subs = lock(&self.inner.engine).backlogged();
            let mut drained = 0;
            if !subs.is_empty() {
                let mut budget = self.budget(subs.iter().map(String::as_str));
                drained = self
                    .with_engine(|e, now| e.drain(now, &mut budget))
                    .unwrap_or(0);
                self.settle(&budget);
                self.account(&budget);
            }
            if !timers && drained == 0 {
                return;
            }
        }
    }

    /// Starts the timer and delivery tasks on `tracker`.
    pub fn start(&self, tracker: &TaskTracker, shutdown: CancellationToken) {
        let me = self.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move { me.timer_loop(stop).await });
        let me = self.clone();
        tracker.spawn(async move { me.delivery_loop(shutdown).await });
    }

    async fn timer_loop(self, shutdown: CancellationToken) {
        loop {
            let next = lock(&self.inner.engine).next_deadline();
            let now = self.inner.clock.now();
            let mut wait = match next {
                Some(t) if t <= now => Duration::ZERO,
                Some(t) => Duration::from_nanos(t.saturating_sub(now).unsigned_abs())
                    .min(Duration::from_secs(1)),
                None => Duration::from_secs(1),
            };
            if let Some(w) = self.backlog_wait() {
                wait = wait.min(w);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.inner.wake_timer.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            // Timers write RocksDB: off the async workers.
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.tick()).await;
        }
    }

    async fn delivery_loop(self, shutdown: CancellationToken) {
        let cfg = self.inner.config.delivery.clone();
        let per_sub = self
            .inner
            .config
            .limits
            .max_in_flight_per_subscription
            .max(1);
        let in_flight = TaskTracker::new();
        loop {
            let (due, next) = {
                let mut q = lock(&self.inner.queue);
                let room = cfg.concurrency.saturating_sub(q.in_flight.len());
                q.due(room, per_sub)
            };
            for n in due {
                let me = self.clone();
                in_flight.spawn(async move { me.deliver(n).await });
            }
            let wait = next
                .map(|t| t.saturating_duration_since(tokio::time::Instant::now()))
                .unwrap_or(Duration::from_secs(60))
                .min(Duration::from_secs(60));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.inner.wake_delivery.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // Requests in flight finish (bounded by their timeouts); what is
        // still pending stays queued in RocksDB for the next start.
        in_flight.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), in_flight.wait()).await;
    }

    async fn deliver(self, mut n: Notification) {
        let receiver = lock(&self.inner.engine)
            .receivers
            .get(&(n.subscription.clone(), n.receiver.clone()))
            .cloned();
        let rtype = receiver
            .as_ref()
            .map(|r| match r.receiver_type {
                ReceiverType::Webhook => "webhook",
                ReceiverType::Alertmanager => "alertmanager",
            })
            .unwrap_or("missing");
        let outcome = delivery::attempt(
            &self.inner.client,
            receiver,
            &n,
            &self.inner.config.external_url,
            &self.policy(),
        )
        .await;
        let cfg = self.inner.config.delivery.clone();
        let now = self.inner.clock.now();
        let finished = delivery::record_outcome(&mut n, &outcome, now, cfg.max_age);
        let m = &self.inner.metrics;
        match &outcome {
            delivery::Attempt::Delivered => {
                tracing::debug!(id = n.id, subscription = %n.subscription, receiver = %n.receiver, "notification delivered")
            }
            delivery::Attempt::Retry { detail, .. } if !finished => {
                m.retries.inc();
                tracing::warn!(id = n.id, subscription = %n.subscription, receiver = %n.receiver, attempts = n.attempts, error = %detail, "notification delivery failed; will retry");
            }
            delivery::Attempt::Retry { detail, .. } | delivery::Attempt::Fail { detail, .. } => {
                tracing::error!(id = n.id, subscription = %n.subscription, receiver = %n.receiver, error = %detail, "notification failed")
            }
        }
        if outcome.refused() {
            m.egress_refused
                .get_or_create(&labels(&[("subscription", &n.subscription)]))
                .inc();
        }
        if finished {
            let outcome = match n.state {
                DeliveryState::Delivered => "delivered",
                _ => "failed",
            };
            m.sent
                .get_or_create(&labels(&[("receiver_type", rtype), ("outcome", outcome)]))
                .inc();
        }
        // Persist the outcome (off the async workers), then update the
        // queue; a notification purged meanwhile is not written back.
        let me = self.clone();
        let done = n.clone();
        let prune = tokio::task::spawn_blocking(move || me.land(done, finished))
            .await
            .unwrap_or(None);
        if let Some((sub, oldest_pending)) = prune {
            let me = self.clone();
            let keep = cfg.history_keep;
            let _ = tokio::task::spawn_blocking(move || {
                me.inner.db.prune_history(&sub, keep, oldest_pending)
            })
            .await;
        }
        self.inner.wake_delivery.notify_one();
    }

    /// Records the outcome of a delivery of `n`; returns the subscription
    /// and its oldest pending id when its history is due for pruning.
    fn land(&self, n: Notification, finished: bool) -> Option<(String, u64)> {
        let cfg = &self.inner.config.delivery;
        let mut q = lock(&self.inner.queue);
        q.landed(&n);
        if !q.pending.contains_key(&n.id) {
            return None;
        }
        let value = serde_json::to_vec(&n).unwrap_or_default();
        if let Err(e) = self
            .inner
            .db
            .put(&keys::notification(&n.subscription, n.id), &value, false)
        {
            self.inner.metrics.errors.inc();
            tracing::error!(error = %e, "notification status write failed");
        }
        if finished {
            q.remove(n.id);
        } else if let Some(e) = q.pending.get_mut(&n.id) {
            e.next_at = tokio::time::Instant::now() + delivery::backoff(cfg, n.attempts);
            e.n = n.clone();
        }
        self.inner.metrics.queue_pending.set(q.pending.len() as i64);
        if !finished {
            return None;
        }
        let oldest = q.oldest_pending_of(&n.subscription);
        drop(q);
        let mut f = lock(&self.inner.finished);
        let c = f.entry(n.subscription.clone()).or_default();
        *c += 1;
        if *c < PRUNE_EVERY {
            return None;
        }
        *c = 0;
        Some((n.subscription, oldest))
    }

    // ---- rules ---------------------------------------------------------------

    /// `GET /api/v1/notification-rule-types`.
    pub fn rule_types() -> Value {
        let types: Vec<Value> = RuleType::ALL
            .iter()
            .map(|t| {
                json!({
                    "type": t.as_str(),
                    "description": t.description(),
                    "params_schema": schemas::notify::params_schema(*t),
                })
            })
            .collect();
        json!({ "types": types })
    }

    /// The rules `scope` may see (an admin may narrow to `sub`).
    pub fn rules(&self, scope: &Scope, sub: Option<&str>) -> Vec<NotificationRule> {
        let e = lock(&self.inner.engine);
        match scope.lookup(sub) {
            Some(s) => e.rules_of(s).map(|r| r.rule.clone()).collect(),
            None => e.rules.values().map(|r| r.rule.clone()).collect(),
        }
    }

    /// The key of rule `id` as `scope` means it: its own subscription, or
    /// for an admin `sub` or the only subscription that has such a rule.
    fn find_rule(
        e: &Engine,
        scope: &Scope,
        sub: Option<&str>,
        id: &str,
    ) -> Result<RuleKey, NotifierError> {
        let missing = || NotifierError::not_found(format!("no notification rule {id:?}"));
        if let Some(s) = scope.lookup(sub) {
            let k = RuleKey::new(s, id);
            return e.rules.contains_key(&k).then_some(k).ok_or_else(missing);
        }
        let found: Vec<&RuleKey> = e.rules.keys().filter(|k| k.id == id).take(2).collect();
        match found.as_slice() {
            [k] => Ok((*k).clone()),
            [] => Err(missing()),
            _ => Err(NotifierError::invalid(
                "subscription",
                format!("several subscriptions have a rule {id:?}; give ?subscription="),
            )),
        }
    }

    pub fn rule(
        &self,
        scope: &Scope,
        sub: Option<&str>,
        id: &str,
    ) -> Result<NotificationRule, NotifierError> {
        let e = lock(&self.inner.engine);
        let k = Self::find_rule(&e, scope, sub, id)?;
        e.rules
            .get(&k)
            .map(|r| r.rule.clone())
            .ok_or_else(|| NotifierError::not_found(format!("no notification rule {id:?}")))
    }

    /// Creates (`id` None: POST) or replaces (`id` Some: PUT) a rule.
    /// Returns the stored rule, warnings, and whether it was created.
    /// Compiles regexes: call it off the async workers.
    pub fn put_rule(
        &self,
        scope: &Scope,
        id: Option<&str>,
        mut rule: NotificationRule,
    ) -> Result<(NotificationRule, Vec<String>, bool), NotifierError> {
        let label = scope.label(&rule.subscription);
        let r = self.put_rule_inner(scope, id, &mut rule);
        if let Err(e) = &r {
            self.refused(&label, e);
        }
        r
    }

    fn put_rule_inner(
        &self,
        scope: &Scope,
        id: Option<&str>,
        rule: &mut NotificationRule,
    ) -> Result<(NotificationRule, Vec<String>, bool), NotifierError> {
        scope.claim("subscription", &mut rule.subscription)?;
        if rule.params.is_null() {
            rule.params = Value::Object(Default::default());
        }
        match id {
            Some(id) if !rule.id.is_empty() && rule.id != id => {
                return Err(NotifierError::invalid(
                    "id",
                    format!("id {:?} differs from the path's {id:?}", rule.id),
                ))
            }
            Some(id) => rule.id = id.to_string(),
            None if rule.id.is_empty() => rule.id = random_id("rule"),
            None => {}
        }
        let limits = &self.inner.config.limits;
        let compiled = Arc::new(rule::compile(rule.clone(), limits)?);
        let rule = compiled.rule.clone();
        let key = keys::rule(&rule.subscription, &rule.id);
        let value = serde_json::to_vec(&rule).unwrap_or_default();
        let r = rule.clone();
        let max_rules = limits.max_rules_per_subscription;
        let (warnings, created) = self.with_engine(move |e, now| {
            let exists = e.rules.contains_key(&compiled.key());
            if exists && id.is_none() {
                return Err(NotifierError::conflict(
                    "id",
                    format!("a rule with id {:?} exists; PUT to replace it", r.id),
                ));
            }
            if !exists && e.rule_count(&r.subscription) >= max_rules {
                return Err(NotifierError::invalid(
                    "id",
                    format!(
                        "subscription {:?} has {max_rules} rules, the limit (--max-rules-per-subscription)",
                        r.subscription
                    ),
                )
                .with_reason("rules"));
            }
            for (i, name) in r.receivers.iter().enumerate() {
                if !e
                    .receivers
                    .contains_key(&(r.subscription.clone(), name.clone()))
                {
                    return Err(NotifierError::invalid(
                        format!("receivers[{i}]"),
                        format!(
                            "no receiver {name:?} in subscription {:?}; PUT /api/v1/receivers/{name} first",
                            r.subscription
                        ),
                    ));
                }
            }
            let mut warnings = Vec::new();
            if compiled.is_pipe_rule() {
                let known = e.known_pipes(&r.subscription);
                if !known.is_empty() {
                    for (i, p) in compiled.pipes.iter().enumerate() {
                        if !known.iter().any(|k| p.matches(k)) {
                            warnings.push(format!(
                                "pipes[{i}]: {:?} matches none of the {} pipes seen in subscription {:?}",
                                p.as_str(),
                                known.len(),
                                r.subscription
                            ));
                        }
                    }
                }
            }
            e.persist(key, value);
            e.set_rule(compiled, now);
            Ok((warnings, !exists))
        })??;
        self.refresh_metric_watch();
        Ok((rule, warnings, created))
    }

    /// Deletes a rule (resolving its alerts). Writes RocksDB: call it off
    /// the async workers.
    pub fn delete_rule(
        &self,
        scope: &Scope,
        sub: Option<&str>,
        id: &str,
    ) -> Result<(), NotifierError> {
        self.with_engine(|e, now| {
            let k = Self::find_rule(e, scope, sub, id)?;
            e.remove_rule(&k, now);
            e.forget(keys::rule(&k.sub, &k.id));
            Ok(())
        })??;
        self.refresh_metric_watch();
        Ok(())
    }

    // ---- receivers -------------------------------------------------------

    fn masked(r: &Receiver) -> Receiver {
        let mut r = r.clone();
        if r.secret.is_some() {
            r.secret = Some("<set>".into());
        }
        r
    }

    pub fn receivers(&self, scope: &Scope, sub: Option<&str>) -> Vec<Receiver> {
        let want = scope.lookup(sub);
        lock(&self.inner.engine)
            .receivers
            .values()
            .filter(|r| want.is_none_or(|s| s == r.subscription))
            .map(Self::masked)
            .collect()
    }

    pub fn receiver(
        &self,
        scope: &Scope,
        sub: Option<&str>,
        name: &str,
    ) -> Result<Receiver, NotifierError> {
        let e = lock(&self.inner.engine);
        let want = scope.lookup(sub);
        e.receivers
            .values()
            .find(|r| r.name == name && want.is_none_or(|s| s == r.subscription))
            .map(Self::masked)
            .ok_or_else(|| NotifierError::not_found(format!("no receiver {name:?}")))
    }

    /// `PUT /api/v1/receivers/{name}`: creates or replaces.
    pub fn put_receiver(
        &self,
        scope: &Scope,
        name: &str,
        mut r: Receiver,
    ) -> Result<(Receiver, bool), NotifierError> {
        let label = scope.label(&r.subscription);
        let out = self.put_receiver_inner(scope, name, &mut r);
        if let Err(e) = &out {
            self.refused(&label, e);
        }
        out
    }

    fn put_receiver_inner(
        &self,
        scope: &Scope,
        name: &str,
        r: &mut Receiver,
    ) -> Result<(Receiver, bool), NotifierError> {
        rule::check_id("name", name)?;
        if !r.name.is_empty() && r.name != name {
            return Err(NotifierError::invalid(
                "name",
                format!("name {:?} differs from the path's {name:?}", r.name),
            ));
        }
        r.name = name.to_string();
        scope.claim("subscription", &mut r.subscription)?;
        let limits = &self.inner.config.limits;
        receiver::validate(r, limits, &self.policy())?;
        if r.secret.as_deref() == Some("<set>") {
            // A masked secret sent back: keep the stored one.
            let e = lock(&self.inner.engine);
            r.secret = e
                .receivers
                .get(&(r.subscription.clone(), r.name.clone()))
                .and_then(|old| old.secret.clone());
        }
        let r = r.clone();
        let value = serde_json::to_vec(&r).unwrap_or_default();
        let masked = Self::masked(&r);
        let max = limits.max_receivers_per_subscription;
        let created = self.with_engine(|e, _| {
            let key = (r.subscription.clone(), r.name.clone());
            let exists = e.receivers.contains_key(&key);
            if !exists && e.receiver_count(&r.subscription) >= max {
                return Err(NotifierError::invalid(
                    "name",
                    format!(
                        "subscription {:?} has {max} receivers, the limit (--max-receivers-per-subscription)",
                        r.subscription
                    ),
                )
                .with_reason("receivers"));
            }
            e.persist(keys::receiver(&r.subscription, &r.name), value);
            e.receivers.insert(key, r);
            Ok(!exists)
        })??;
        Ok((masked, created))
    }

    pub fn delete_receiver(
        &self,
        scope: &Scope,
        sub: Option<&str>,
        name: &str,
    ) -> Result<(), NotifierError> {
        let want = scope.lookup(sub);
        self.with_engine(|e, _| {
            let key = e
                .receivers
                .keys()
                .find(|(s, n)| n == name && want.is_none_or(|x| x == s))
                .cloned()
                .ok_or_else(|| NotifierError::not_found(format!("no receiver {name:?}")))?;
            let users: Vec<String> = e
                .rules_of(&key.0)
                .filter(|r| r.rule.receivers.contains(&key.1))
                .map(|r| r.id().to_string())
                .take(20)
                .collect();
            if !users.is_empty() {
                return Err(NotifierError::conflict(
                    "name",
                    format!("receiver {name:?} is used by rules {users:?}"),
                ));
            }
            e.receivers.remove(&key);
            e.forget(keys::receiver(&key.0, &key.1));
            Ok(())
        })?
    }

    // ---- silences ----------------------------------------------------------

    pub fn silences(&self, scope: &Scope, sub: Option<&str>) -> Vec<Value> {
        let e = lock(&self.inner.engine);
        let now = self.inner.clock.now();
        let want = scope.lookup(sub);
        e.silences
            .values()
            .filter(|s| want.is_none_or(|w| w == s.silence.subscription))
            .map(|s| {
                let mut v = serde_json::to_value(&s.silence).unwrap_or(Value::Null);
                v["status"] = json!({ "state": s.state(now) });
                v
            })
            .collect()
    }

    /// `POST /api/v1/silences`: creates, or replaces the silence with the
    /// same id in the subscription. Compiles regexes: call it off the
    /// async workers.
    pub fn create_silence(&self, scope: &Scope, mut s: Silence) -> Result<Value, NotifierError> {
        let label = scope.label(&s.subscription);
        let out = self.create_silence_inner(scope, &mut s);
        if let Err(e) = &out {
            self.refused(&label, e);
        }
        out
    }

    fn create_silence_inner(&self, scope: &Scope, s: &mut Silence) -> Result<Value, NotifierError> {
        scope.claim("subscription", &mut s.subscription)?;
        rule::check_name("subscription", &s.subscription)?;
        if s.id.is_empty() {
            s.id = random_id("silence");
        }
        let now = self.inner.clock.now();
        if s.starts_at.is_empty() {
            s.starts_at = rfc3339_from_nanos(now);
        }
        let limits = &self.inner.config.limits;
        let active = ActiveSilence::compile(s.clone(), Some(now), limits)?;
        let value = serde_json::to_vec(&*s).unwrap_or_default();
        let (sub, id) = (s.subscription.clone(), s.id.clone());
        let max = limits.max_silences_per_subscription;
        self.with_engine(|e, now| {
            let exists = e.silences.contains_key(&(sub.clone(), id.clone()));
            if !exists && e.silence_count(&sub) >= max {
                return Err(NotifierError::invalid(
                    "id",
                    format!(
                        "subscription {sub:?} has {max} silences, the limit (--max-silences-per-subscription); delete expired ones"
                    ),
                )
                .with_reason("silences"));
            }
            e.persist(keys::silence(&sub, &id), value);
            e.set_silence(active, now);
            Ok(())
        })??;
        Ok(json!({ "silenceID": s.id }))
    }

    pub fn delete_silence(
        &self,
        scope: &Scope,
        sub: Option<&str>,
        id: &str,
    ) -> Result<(), NotifierError> {
        let want = scope.lookup(sub);
        self.with_engine(|e, now| {
            let found: Vec<(String, String)> = e
                .silences
                .keys()
                .filter(|(s, i)| i == id && want.is_none_or(|w| w == s))
                .take(2)
                .cloned()
                .collect();
            let key = match found.as_slice() {
                [k] => k.clone(),
                [] => return Err(NotifierError::not_found(format!("no silence {id:?}"))),
                _ => {
                    return Err(NotifierError::invalid(
                        "subscription",
                        format!("several subscriptions have a silence {id:?}; give ?subscription="),
                    ))
                }
            };
            e.remove_silence(&key, now);
            e.forget(keys::silence(&key.0, &key.1));
            Ok(())
        })?
    }

    // ---- alerts and history ------------------------------------------------

    /// `GET /api/v1/alerts`: active alerts with why they are quiet, if so.
    /// Matches silences' regexes (outside the engine lock): call it off
    /// the async workers.
    pub fn alerts(&self, scope: &Scope, sub: Option<&str>) -> Vec<Value> {
        let now = self.inner.clock.now();
        let want = scope.lookup(sub);
        let (alerts, silences) = {
            let e = lock(&self.inner.engine);
            let alerts: Vec<Alert> = match want {
                Some(s) => e.alerts_of(s).cloned().collect(),
                None => e.alerts.values().cloned().collect(),
            };
            let silences: Vec<ActiveSilence> = e
                .silences
                .values()
                .filter(|s| want.is_none_or(|w| w == s.silence.subscription))
                .cloned()
                .collect();
            (alerts, silences)
        };
        let mut out: Vec<(i64, Value)> = alerts
            .iter()
            .map(|a| {
                let silenced_by: Vec<&str> = silences
                    .iter()
                    .filter(|s| s.mutes(&a.subscription, &a.labels, now))
                    .map(|s| s.silence.id.as_str())
                    .collect();
                let inhibited = a.inhibited_by.as_ref().map(|fp| {
                    let src = a.source.clone().unwrap_or_default();
                    json!({
                        "fingerprint": fp,
                        "reason": format!("node_heartbeat_overdue is firing for source {src:?}: its pipes' overdue alerts are suppressed"),
                    })
                });
                let state = if !silenced_by.is_empty() || inhibited.is_some() {
                    "suppressed"
                } else {
                    "active"
                };
                (
                    a.starts_at,
                    json!({
                        "fingerprint": a.fingerprint,
                        "status": {
                            "state": state,
                            "silencedBy": silenced_by,
                            "inhibitedBy": inhibited,
                        },
                        "labels": a.labels,
                        "annotations": a.annotations,
                        "startsAt": rfc3339_from_nanos(a.starts_at),
                        "lastEventAt": rfc3339_from_nanos(a.last_event_at),
                        "eventCount": a.event_count,
                        "notified": a.notified,
                        "lastNotifiedAt": a.last_notified_at.map(rfc3339_from_nanos),
                    }),
                )
            })
            .collect();
        out.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// The raw active alerts (tests and tools).
    pub fn active_alerts(&self) -> Vec<Alert> {
        lock(&self.inner.engine).alerts.values().cloned().collect()
    }

    /// `GET /api/v1/notifications`: newest first. Reads RocksDB: call it
    /// off the async workers.
    pub fn notifications(
        &self,
        scope: &Scope,
        filter: &NotificationFilter,
    ) -> Result<Vec<Value>, NotifierError> {
        let limit = filter.limit.clamp(1, 10_000);
        let subs = match scope.lookup(filter.subscription.as_deref()) {
            Some(s) => vec![s.to_string()],
            None => self.inner.db.notification_subscriptions()?,
        };
        let mut found: Vec<Notification> = Vec::new();
        for sub in &subs {
            let mut n_sub = 0;
            self.inner.db.notifications_rev(sub, |n| {
                if filter.matches(&n) {
                    found.push(n);
                    n_sub += 1;
                }
                n_sub < limit
            })?;
        }
        found.sort_by_key(|n| std::cmp::Reverse(n.id));
        found.truncate(limit);
        Ok(found.iter().map(notification_view).collect())
    }

    /// Raw notifications, oldest first (tests and tools).
    pub fn notification_log(&self) -> Result<Vec<Notification>, NotifierError> {
        let mut out: Vec<Notification> = self
            .inner
            .db
            .scan(keys::NOTIFICATIONS)?
            .iter()
            .filter_map(|(k, v)| parse(k, v))
            .collect();
        out.sort_by_key(|n| n.id);
        Ok(out)
    }

    /// Notifications waiting for delivery.
    pub fn pending(&self) -> usize {
        lock(&self.inner.queue).pending.len()
    }

    /// Loads a rules file (TOML, or JSON when it ends in `.json`):
    /// receivers first, then rules, then silences. Entries replace those
    /// with the same id.
    pub fn load_file(&self, path: &Path) -> Result<usize, NotifierError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            NotifierError::invalid("rules", format!("read {}: {e}", path.display()))
        })?;
        let file: RulesFile = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text)
                .map_err(|e| NotifierError::invalid("rules", format!("{}: {e}", path.display())))?
        } else {
            toml::from_str(&text)
                .map_err(|e| NotifierError::invalid("rules", format!("{}: {e}", path.display())))?
        };
        let n = file.rules.len();
        lock(&self.inner.engine).bulk = true;
        let loaded = self.load_entries(file);
        lock(&self.inner.engine).bulk = false;
        loaded?;
        self.inner.db.sync()?;
        Ok(n)
    }

    fn load_entries(&self, file: RulesFile) -> Result<(), NotifierError> {
        for (i, r) in file.receivers.into_iter().enumerate() {
            let name = r.name.clone();
            self.put_receiver(&Scope::All, &name, r)
                .map_err(|e| e.at(&format!("receivers[{i}]")))?;
        }
        for (i, r) in file.rules.into_iter().enumerate() {
            if r.id.is_empty() {
                return Err(NotifierError::invalid(
                    format!("rules[{i}].id"),
                    format!("rules[{i}]: rules in a file need an id"),
                ));
            }
            let id = r.id.clone();
            let (_, warnings, _) = self
                .put_rule(&Scope::All, Some(&id), r)
                .map_err(|e| e.at(&format!("rules[{i}]")))?;
            for w in warnings {
                tracing::warn!(rule = %id, "{w}");
            }
        }
        for (i, s) in file.silences.into_iter().enumerate() {
            self.create_silence(&Scope::All, s)
                .map_err(|e| e.at(&format!("silences[{i}]")))?;
        }
        Ok(())
    }
}

fn metric_watch(engine: &Engine) -> HashMap<String, HashSet<String>> {
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for r in engine.rules.values() {
        if let rule::Kind::Metric { metric, .. } = &r.kind {
            out.entry(r.rule.subscription.clone())
                .or_default()
                .insert(metric.clone());
        }
    }
    out
}

/// Filters of `GET /api/v1/notifications`.
#[derive(Debug, Clone, Default)]
pub struct NotificationFilter {
    pub limit: usize,
    /// An admin's choice of subscription (operators see their own).
    pub subscription: Option<String>,
    pub state: Option<String>,
    pub receiver: Option<String>,
    pub fingerprint: Option<String>,
    pub rule_id: Option<String>,
}

impl NotificationFilter {
    fn matches(&self, n: &Notification) -> bool {
        let state = match n.state {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        };
        self.state.as_deref().is_none_or(|s| s == state)
            && self.receiver.as_deref().is_none_or(|r| r == n.receiver)
            && self
                .fingerprint
                .as_deref()
                .is_none_or(|f| f == n.fingerprint)
            && self.rule_id.as_deref().is_none_or(|r| r == n.rule_id)
    }
}

fn notification_view(n: &Notification) -> Value {
    json!({
        "id": n.id,
        "subscription": n.subscription,
        "receiver": n.receiver,
        "rule_id": n.rule_id,
        "fingerprint": n.fingerprint,
        "kind": n.kind,
        "status": n.state,
        "attempts": n.attempts,
        "last_error": n.last_error,
        "created_at": rfc3339_from_nanos(n.created_at),
        "finished_at": n.finished_at.map(rfc3339_from_nanos),
        "alert": n.alert,
    })
}

/// Default repeat interval (Sesam's: one notification per rule per hour).
pub const DEFAULT_REPEAT: Span = Span::secs(3600);

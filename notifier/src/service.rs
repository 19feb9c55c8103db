//! The notifier as a service: the engine behind a mutex, its effects
//! written to RocksDB, each subscription's share of evaluation time, and
//! the timer task (collector-clock deadlines and deferred records).
//! Delivery is `sender.rs`; the API `api.rs`.
//!
//! Threads: records are evaluated on the collector's store writer thread
//! (right after each synced commit, before the ingest is answered: an
//! acknowledged record is an evaluated or deferred one); timers and
//! deferred records on the blocking pool, in rounds of bounded work with
//! the engine released in between; API writes on the blocking pool. No
//! RocksDB call runs on an async worker.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use schemas::Record;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget::Budget;
use crate::clock::Clock;
use crate::delivery::{DeliveryConfig, Queue};
use crate::dispatch::{Input, SampleRef};
use crate::egress::{self, EgressPolicy, EgressResolver, SharedPolicy};
use crate::engine::{Engine, Restored};
use crate::error::NotifierError;
use crate::limits::{self, Limits};
use crate::model::DeliveryState;
use crate::rule;
use crate::silence::ActiveSilence;
use crate::store::{Db, LAYOUT};
use crate::telemetry::{labels, Metrics, Warnings};

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

/// Rounds of timers and deferred evaluation one [`Notifier::tick`] runs.
const TICK_ROUNDS: usize = 16;

/// What is left of a subscription's share of evaluation time: refills at
/// [`Limits::eval_share`] of wall time up to [`Limits::eval_budget`]; may
/// go below zero by the overrun of a record that was cut.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    secs: f64,
    at: Instant,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) db: Db,
    /// Short critical sections; never held across an await.
    pub(crate) engine: Mutex<Engine>,
    /// Short critical sections; never held across an await.
    pub(crate) queue: Mutex<Queue>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) wake_delivery: tokio::sync::Notify,
    wake_timer: tokio::sync::Notify,
    pub(crate) client: reqwest::Client,
    pub(crate) config: NotifierConfig,
    pub(crate) policy: SharedPolicy,
    pub(crate) metrics: Metrics,
    pub(crate) warnings: Warnings,
    /// Metric names watched by `metric_threshold` rules, per subscription:
    /// lets the metrics ingest skip building samples nobody evaluates.
    metric_watch: std::sync::RwLock<HashMap<String, HashSet<String>>>,
    /// Notifications finished per subscription since its history was
    /// last pruned. Short critical sections.
    pub(crate) finished: Mutex<HashMap<String, u64>>,
    /// Each subscription's share of evaluation time. Short critical
    /// sections.
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// The notifier. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Notifier {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Notifier {
    /// Opens the notifier over `db` (which has the
    /// [`crate::COLUMN_FAMILY`] column family) and restores its state
    /// (migrating an older layout first). Call [`Notifier::start`] to run
    /// its timers and deliveries.
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
                "notifier state migrated to layout {LAYOUT}"
            );
        }
        let now = clock.now();
        let limits = config.limits.clone();
        let loaded = db.load()?;
        let mut engine = Engine::new(config.external_url.clone(), now, limits.clone());
        for r in loaded.receivers {
            engine
                .receivers
                .insert((r.subscription.clone(), r.name.clone()), r);
        }
        for r in loaded.rules {
            let key = format!("{}/{}", r.subscription, r.id);
            match rule::compile(r, &limits) {
                Ok(c) => engine.set_rule(Arc::new(c), now),
                Err(e) => {
                    tracing::error!(rule = %key, error = %e, "stored rule no longer valid; skipped")
                }
            }
        }
        for s in loaded.silences {
            let key = format!("{}/{}", s.subscription, s.id);
            match ActiveSilence::compile(s, None, &limits) {
                Ok(a) => engine.set_silence(a, now),
                Err(e) => {
                    tracing::error!(silence = %key, error = %e, "stored silence no longer valid; skipped")
                }
            }
        }
        engine.restore(Restored {
            now,
            alive: loaded.alive,
            alerts: loaded.alerts,
            pipes: loaded.pipes,
            sources: loaded.sources,
            windows: loaded.windows,
            metrics: loaded.metrics,
            groups: loaded.groups,
        });
        engine.next_notification = loaded.next_notification;
        // Restoring may have produced effects (nothing is sent: that needs
        // a tick); keep them.
        let fx = engine.take_effects();
        db.apply(&fx, engine.next_notification)?;
        let mut queue = Queue::default();
        for n in loaded.pending.into_iter().chain(fx.notifications) {
            queue.push(n);
        }
        let policy: SharedPolicy = Arc::new(std::sync::RwLock::new(config.egress.clone()));
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("sesam-notifier/", env!("CARGO_PKG_VERSION")))
            // The egress policy is enforced on the connected address: a
            // redirect or a proxy would connect somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(EgressResolver::new(policy.clone())))
            .build()
            .map_err(|e| NotifierError::storage(format!("HTTP client: {e}")))?;
        let metrics = Metrics::default();
        metrics.rules.set(engine.rules.len() as i64);
        metrics.alerts_firing.set(engine.alert_count() as i64);
        metrics.queue_pending.set(queue.pending.len() as i64);
        let watch = engine.index.watched_metrics();
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
                warnings: Warnings::default(),
                metric_watch: std::sync::RwLock::new(watch),
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

    pub(crate) fn policy(&self) -> EgressPolicy {
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

    pub(crate) fn refresh_metric_watch(&self) {
        let watch = lock(&self.inner.engine).index.watched_metrics();
        *self
            .inner
            .metric_watch
            .write()
            .unwrap_or_else(|p| p.into_inner()) = watch;
    }

    /// Registers the notifier's metrics (`notifier_*`).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.inner.metrics.register(registry);
    }

    pub fn now(&self) -> i64 {
        self.inner.clock.now()
    }

    /// Runs `f` on the engine, then writes its effects (synced) and
    /// queues its notifications. The engine lock covers the write so that
    /// batches land in the order they were made.
    pub(crate) fn with_engine<T>(
        &self,
        f: impl FnOnce(&mut Engine, i64) -> T,
    ) -> Result<T, NotifierError> {
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
        fx.alive = Some(now);
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
        let (rules, firing) = (engine.rules.len(), engine.alert_count());
        drop(engine);
        let m = &self.inner.metrics;
        m.rules.set(rules as i64);
        m.alerts_firing.set(firing as i64);
        m.evaluation_seconds.inc_by(started.elapsed().as_secs_f64());
        let limited = fx.limited.iter().map(|(s, w)| (s.as_str(), *w));
        for (sub, what) in limited.chain(overflow.iter().map(|s| (s.as_str(), "queue_full"))) {
            m.limited
                .get_or_create(&labels(&[("reason", what), ("subscription", sub)]))
                .inc();
            self.inner.warnings.warn(
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
        let queued: Vec<_> = fx
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
    /// gets the evaluation budget ([`Limits::eval_budget`], capped by what
    /// is left of its share of evaluation time) in this call; its records
    /// beyond it are deferred to the background evaluation (counted in
    /// `notifier_evaluation_deferred_records_total` and logged), never
    /// charged to another subscription.
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
        let _ = self.evaluate(false, |e, now| {
            e.handle(Input::Records(records), now, &mut budget)
        });
        self.settle(&budget);
        self.account(&budget);
    }

    /// Evaluates pushed metric samples of `subscription`.
    pub fn on_samples(&self, subscription: &str, samples: &[SampleRef<'_>]) {
        self.inner.metrics.samples.inc_by(samples.len() as u64);
        let _ = self.evaluate(false, |e, now| {
            e.handle(
                Input::Samples {
                    subscription,
                    samples,
                },
                now,
                &mut Budget::unlimited(),
            )
        });
    }

    /// The collector refused records of `source` of `subscription`: two
    /// outbox epochs write it, or a seq was re-sent with different content
    /// (`detail` says which). `source_conflict` rules fire.
    pub fn on_source_conflict(&self, subscription: &str, source: &str, detail: &str) {
        let input = Input::Conflict {
            subscription,
            source,
            detail,
        };
        let _ = self.with_engine(|e, now| e.handle(input, now, &mut Budget::unlimited()));
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
            self.inner.warnings.warn(
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
            self.inner.warnings.warn(
                sub,
                "eval_skipped",
                &format!(
                    "{n} records not (fully) evaluated: a record outlasted the evaluation budget of {limit}, or the subscription's deferred records reached --max-deferred-records-per-subscription"
                ),
            );
        }
        m.backlog.set(lock(&self.inner.engine).deferred() as i64);
        if !budget.deferred.is_empty() {
            self.inner.wake_timer.notify_one();
        }
    }

    /// Deferred records waiting for the background evaluation.
    pub fn deferred(&self) -> usize {
        lock(&self.inner.engine).deferred()
    }

    /// Forgets everything of a terminated subscription: rules, receivers,
    /// silences, alerts, pipe and source state, timers, windows, metric
    /// series, groups, deferred records, the delivery queue and the
    /// notification history, in memory and on disk.
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
    /// records, in rounds of bounded work with the engine released in
    /// between; returns after a bounded number of rounds (the timer task
    /// calls again while work is due).
    pub fn tick(&self) {
        for _ in 0..TICK_ROUNDS {
            let tick =
                self.with_engine(|e, now| e.handle(Input::Tick, now, &mut Budget::unlimited()));
            let timers = tick.is_ok_and(|h| h.more);
            let subs = lock(&self.inner.engine).backlogged();
            let mut drained = 0;
            if !subs.is_empty() {
                let mut budget = self.budget(subs.iter().map(String::as_str));
                drained = self
                    .with_engine(|e, now| e.handle(Input::Drain, now, &mut budget))
                    .map_or(0, |h| h.drained);
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
}

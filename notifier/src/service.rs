//! The notifier as a service: the engine behind a mutex, its effects
//! written to RocksDB, and the timer task (collector-clock deadlines and
//! deferred records). The evaluation thread is `evaluator.rs`, shares of
//! evaluation time `share.rs`, delivery `sender.rs`, the API `api.rs`.
//!
//! Threads: over a store with a commit feed (the collector's RocksDB
//! store), records are evaluated on the notifier's own evaluation thread,
//! off the commit path ([`Notifier::on_committed`], `evaluator.rs`);
//! without one (a store that only calls [`Notifier::on_records`]) on the
//! caller's thread right after each commit, within each subscription's
//! budget, the rest deferred in memory. Timers and deferred records run on
//! the blocking pool, in rounds of bounded work with the engine released
//! in between; API writes on the blocking pool. No RocksDB call runs on an
//! async worker.

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
use crate::engine::{Engine, Receivers, Restored};
use crate::error::NotifierError;
use crate::handoff::Slot;
use crate::limits::{self, Limits};
use crate::model::DeliveryState;
use crate::replication::{Moved, Repl};
use crate::rule;
use crate::share::Shares;
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
    /// Records held in memory between the store's commits and the
    /// evaluation thread (`--notifier-queue-records`, 100,000); beyond it
    /// they wait in the store's commit feed and are read back from there.
    pub queue_records: usize,
    /// The same queue's bound in bytes of records
    /// (`--notifier-queue-bytes`, 256 MiB): a tenant's large records wait
    /// in the feed instead of the collector's memory.
    pub queue_bytes: usize,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        NotifierConfig {
            external_url: "http://127.0.0.1:3100".into(),
            delivery: DeliveryConfig::default(),
            limits: Limits::default(),
            egress: EgressPolicy::default(),
            queue_records: 100_000,
            queue_bytes: 256 << 20,
        }
    }
}

/// Rounds of timers and deferred evaluation one [`Notifier::tick`] runs.
const TICK_ROUNDS: usize = 16;

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) db: Db,
    /// Short critical sections; never held across an await.
    pub(crate) engine: Mutex<Engine>,
    /// The engine's receivers as of its last change, for the delivery
    /// tasks (see [`Notifier::receiver_set`]).
    receivers: std::sync::RwLock<Arc<Receivers>>,
    /// Short critical sections; never held across an await.
    pub(crate) queue: Mutex<Queue>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) wake_delivery: tokio::sync::Notify,
    pub(crate) wake_timer: tokio::sync::Notify,
    pub(crate) client: reqwest::Client,
    pub(crate) config: NotifierConfig,
    pub(crate) policy: SharedPolicy,
    pub(crate) metrics: Metrics,
    pub(crate) warnings: Warnings,
    /// Metric names watched by `metric_threshold` rules, per subscription:
    /// lets the metrics ingest skip building samples nobody evaluates.
    metric_watch: std::sync::RwLock<HashMap<String, HashSet<String>>>,
    /// The subscriptions with rules ([`Notifier::has_rules`]), refreshed
    /// with `metric_watch`.
    rule_subs: std::sync::RwLock<HashSet<String>>,
    /// Notifications finished per subscription since its history was
    /// last pruned. Short critical sections.
    pub(crate) finished: Mutex<HashMap<String, u64>>,
    /// Each subscription's share of evaluation time.
    pub(crate) shares: Shares,
    /// The evaluation thread (over a store with a commit feed).
    pub(crate) eval: Slot,
    /// State versions, the replication hook and its delivery gate.
    pub(crate) repl: Repl,
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
            Arc::make_mut(&mut engine.receivers)
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
        let rule_subs = engine.index.subscriptions();
        let eval = Slot::new(loaded.watermarks);
        let repl = Repl::new(engine.next_notification);
        Ok(Notifier {
            inner: Arc::new(Inner {
                db,
                receivers: std::sync::RwLock::new(engine.receivers_snapshot()),
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
                rule_subs: std::sync::RwLock::new(rule_subs),
                finished: Mutex::new(HashMap::new()),
                shares: Shares::default(),
                eval,
                repl,
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

    /// The receivers, without the engine's lock.
    pub(crate) fn receiver_set(&self) -> Arc<Receivers> {
        self.inner
            .receivers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// After a change to `engine` (under its lock, so publications keep
    /// the order of the changes): if its receivers changed (they are
    /// copied on write, so a change is a new pointer), the delivery tasks
    /// get the new set.
    pub(crate) fn publish_receivers(&self, engine: &Engine) {
        let current = self
            .inner
            .receivers
            .read()
            .unwrap_or_else(|p| p.into_inner());
        if Arc::ptr_eq(&engine.receivers, &current) {
            return;
        }
        drop(current);
        *self
            .inner
            .receivers
            .write()
            .unwrap_or_else(|p| p.into_inner()) = engine.receivers_snapshot();
    }

    pub(crate) fn policy(&self) -> EgressPolicy {
        egress::read(&self.inner.policy)
    }

    /// Whether a `metric_threshold` rule of `subscription` watches `name`.
    /// The metric names `subscription`'s `metric_threshold` rules watch,
    /// sorted.
    pub fn watched_metrics(&self, subscription: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .inner
            .metric_watch
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(subscription)
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    pub fn wants_metric(&self, subscription: &str, name: &str) -> bool {
        self.inner
            .metric_watch
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(subscription)
            .is_some_and(|names| names.contains(name))
    }

    /// Whether `subscription` has notification rules (read without the
    /// engine's lock: a snapshot taken after each rule change).
    pub fn has_rules(&self, subscription: &str) -> bool {
        self.inner
            .rule_subs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(subscription)
    }

    pub(crate) fn refresh_metric_watch(&self) {
        let (watch, subs) = {
            let e = lock(&self.inner.engine);
            (e.index.watched_metrics(), e.index.subscriptions())
        };
        *self
            .inner
            .metric_watch
            .write()
            .unwrap_or_else(|p| p.into_inner()) = watch;
        *self
            .inner
            .rule_subs
            .write()
            .unwrap_or_else(|p| p.into_inner()) = subs;
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
    pub(crate) fn evaluate<T>(
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
        if written.is_ok() {
            self.inner.repl.wrote(&fx, engine.next_notification);
        }
        self.publish_receivers(&engine);
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

    fn budget<'a>(&self, subs: impl Iterator<Item = &'a str>) -> Budget {
        self.inner.shares.budget(&self.inner.config.limits, subs)
    }

    pub(crate) fn settle(&self, budget: &Budget) {
        self.inner.shares.settle(&self.inner.config.limits, budget)
    }

    /// How long until a subscription with deferred records has a share of
    /// evaluation time again (`None`: nothing is deferred).
    fn backlog_wait(&self) -> Option<Duration> {
        let subs = lock(&self.inner.engine).backlogged();
        let subs: Vec<&str> = subs.iter().map(String::as_str).collect();
        self.inner.shares.wait(&self.inner.config.limits, &subs)
    }

    /// Counts and logs what a budget deferred and skipped.
    pub(crate) fn account(&self, budget: &Budget) {
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
        self.inner.repl.moved(subscription, Moved::Terminated);
        self.forget(subscription);
        self.inner.repl.bump(subscription);
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

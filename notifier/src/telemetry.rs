//! The notifier's own metrics (`notifier_*` in the collector's
//! `/metrics`) and rate-limited warnings per subscription.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub(crate) type Labels = Vec<(String, String)>;

pub(crate) fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Metrics {
    pub(crate) records: Counter,
    pub(crate) samples: Counter,
    pub(crate) evaluation_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub(crate) sent: Family<Labels, Counter>,
    pub(crate) retries: Counter,
    pub(crate) alerts_firing: Gauge,
    pub(crate) queue_pending: Gauge,
    pub(crate) rules: Gauge,
    pub(crate) errors: Counter,
    /// API requests refused, by reason and subscription.
    pub(crate) refusals: Family<Labels, Counter>,
    /// Records not (fully) evaluated: cut, or its backlog was full.
    pub(crate) skipped: Family<Labels, Counter>,
    /// Records deferred: the subscription had used up its budget.
    pub(crate) deferred: Family<Labels, Counter>,
    /// Deferred records waiting.
    pub(crate) backlog: Gauge,
    /// State not kept: a per-subscription bound was reached.
    pub(crate) limited: Family<Labels, Counter>,
    /// Deliveries refused by the egress policy, by subscription.
    pub(crate) egress_refused: Family<Labels, Counter>,
    /// Records committed but not evaluated yet, by subscription.
    pub(crate) lag_records: Family<Labels, Gauge>,
    /// Age of the oldest of them, by subscription.
    pub(crate) lag_seconds: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Records the commit queue had no room for (read back from the feed).
    pub(crate) spilled: Counter,
    /// Records read back from the store's commit feed.
    pub(crate) feed_read: Counter,
    /// Records in the feed the store no longer held.
    pub(crate) feed_missing: Counter,
    /// The engine's estimated memory and entries, by part.
    pub(crate) engine_bytes: Family<Labels, Gauge>,
    pub(crate) engine_entries: Family<Labels, Gauge>,
    /// Deliveries held back: the subscription's state could not be stored
    /// elsewhere first (the replication hook failed).
    pub(crate) replication_failures: Counter,
}

impl Metrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        let m = self;
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
        registry.register(
            "notifier_evaluation_lag_records",
            "Records stored but not yet evaluated (in the evaluation queue or the store's commit feed), by subscription",
            m.lag_records.clone(),
        );
        registry.register(
            "notifier_evaluation_lag_seconds",
            "Age of the oldest record stored but not yet evaluated (0: none), by subscription",
            m.lag_seconds.clone(),
        );
        registry.register(
            "notifier_evaluation_spilled_records",
            "Records the evaluation queue had no room for; evaluated later from the store's commit feed",
            m.spilled.clone(),
        );
        registry.register(
            "notifier_feed_read_records",
            "Records read back from the store's commit feed (after a restart or a spill)",
            m.feed_read.clone(),
        );
        registry.register(
            "notifier_feed_missing_records",
            "Records of the commit feed the store no longer held when read (deleted by retention before evaluation)",
            m.feed_missing.clone(),
        );
        registry.register(
            "notifier_engine_memory_bytes",
            "Estimated memory of the rule engine's state, by part (pipes, sources, rules, index, timers, alerts, windows, queue)",
            m.engine_bytes.clone(),
        );
        registry.register(
            "notifier_engine_entries",
            "Entries of the rule engine's state, by part",
            m.engine_entries.clone(),
        );
        registry.register(
            "notifier_replication_failures",
            "Deliveries held back because the subscription's state could not be stored elsewhere first (the replication hook failed); retried after 1 s",
            m.replication_failures.clone(),
        );
    }

    pub(crate) fn set_lag(&self, sub: &str, records: u64, seconds: f64) {
        let l = labels(&[("subscription", sub)]);
        self.lag_records
            .get_or_create(&l)
            .set(i64::try_from(records).unwrap_or(i64::MAX));
        self.lag_seconds.get_or_create(&l).set(seconds);
    }

    /// Drops the lag series of a terminated subscription.
    pub(crate) fn forget(&self, sub: &str) {
        let l = labels(&[("subscription", sub)]);
        self.lag_records.remove(&l);
        self.lag_seconds.remove(&l);
    }
}

/// Logs a warning per (subscription, reason) at most once a minute.
#[derive(Debug, Default)]
pub(crate) struct Warnings {
    /// Short critical sections; never held across an await.
    last: Mutex<HashMap<(String, &'static str), Instant>>,
}

impl Warnings {
    pub(crate) fn warn(&self, sub: &str, reason: &'static str, message: &str) {
        let now = Instant::now();
        {
            let mut w = self.last.lock().unwrap_or_else(|p| p.into_inner());
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
        }
        tracing::warn!(subscription = %sub, reason, "{message}");
    }
}

//! The agent's own health metrics (`metrics_agent_*`), pushed with the
//! host's and served on `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::sample::{Kind, Sample};

/// Upper bounds of the push latency histogram, seconds.
const PUSH_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; PUSH_BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// Counters and gauges of the agent; shared by its tasks.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    pub collections: AtomicU64,
    pub samples_collected: AtomicU64,
    pub samples_sent: AtomicU64,
    pub send_retries: AtomicU64,
    pub buffer_samples: AtomicU64,
    pub buffer_capacity: AtomicU64,
    collection_seconds_bits: AtomicU64,
    // Short critical sections, never held across an await.
    dropped: Mutex<BTreeMap<&'static str, u64>>,
    send_failures: Mutex<BTreeMap<&'static str, u64>>,
    collector_errors: Mutex<BTreeMap<&'static str, u64>>,
    scrape_errors: Mutex<BTreeMap<(String, &'static str), u64>>,
    push_duration: Mutex<Histogram>,
}

fn bump<K: Ord>(m: &Mutex<BTreeMap<K, u64>>, k: K, n: u64) {
    *m.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(k)
        .or_default() += n;
}

/// Reasons counted from the start (at 0), so dashboards and alerts see
/// the series before the first event.
const DROP_REASONS: [&str; 4] = ["buffer_full", "non_finite", "rejected", "shutdown"];
const SEND_FAILURES: [&str; 5] = [
    "network",
    "status_429",
    "status_4xx",
    "status_5xx",
    "timeout",
];

impl AgentMetrics {
    pub fn new() -> AgentMetrics {
        let m = AgentMetrics::default();
        for r in DROP_REASONS {
            bump(&m.dropped, r, 0);
        }
        for r in SEND_FAILURES {
            bump(&m.send_failures, r, 0);
        }
        m
    }

    pub fn dropped(&self, reason: &'static str, n: u64) {
        if n > 0 {
            bump(&self.dropped, reason, n);
        }
    }
    pub fn dropped_total(&self) -> u64 {
        self.dropped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    }
    pub fn dropped_by(&self, reason: &str) -> u64 {
        self.dropped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(reason)
            .copied()
            .unwrap_or(0)
    }
    pub fn send_failure(&self, reason: &'static str) {
        bump(&self.send_failures, reason, 1);
    }
    pub fn collector_error(&self, collector: &'static str) {
        bump(&self.collector_errors, collector, 1);
    }
    pub fn scrape_error(&self, job: &str, reason: &'static str) {
        bump(&self.scrape_errors, (job.to_string(), reason), 1);
    }
    pub fn scrape_errors(&self, job: &str, reason: &str) -> u64 {
        self.scrape_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|((j, r), _)| j == job && *r == reason)
            .map(|(_, n)| *n)
            .sum()
    }
    pub fn set_collection_seconds(&self, s: f64) {
        self.collection_seconds_bits
            .store(s.to_bits(), Ordering::Relaxed);
    }
    pub fn observe_push(&self, seconds: f64) {
        let mut h = self.push_duration.lock().unwrap_or_else(|e| e.into_inner());
        for (i, b) in PUSH_BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// Every metric as samples (no target labels).
    pub fn samples(&self, now_ms: i64) -> Vec<Sample> {
        let c = |name: &str, v: u64| Sample::new(name, Kind::Counter, v as f64, now_ms);
        let g = |name: &str, v: f64| Sample::new(name, Kind::Gauge, v, now_ms);
        let mut out = vec![
            c(
                "metrics_agent_collections_total",
                self.collections.load(Ordering::Relaxed),
            ),
            c(
                "metrics_agent_samples_collected_total",
                self.samples_collected.load(Ordering::Relaxed),
            ),
            c(
                "metrics_agent_samples_sent_total",
                self.samples_sent.load(Ordering::Relaxed),
            ),
            c(
                "metrics_agent_send_retries_total",
                self.send_retries.load(Ordering::Relaxed),
            ),
            g(
                "metrics_agent_buffer_samples",
                self.buffer_samples.load(Ordering::Relaxed) as f64,
            ),
            g(
                "metrics_agent_buffer_capacity_samples",
                self.buffer_capacity.load(Ordering::Relaxed) as f64,
            ),
            g(
                "metrics_agent_collection_duration_seconds",
                f64::from_bits(self.collection_seconds_bits.load(Ordering::Relaxed)),
            ),
        ];
        for (reason, n) in self
            .dropped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            out.push(c("metrics_agent_samples_dropped_total", *n).label("reason", *reason));
        }
        for (reason, n) in self
            .send_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            out.push(c("metrics_agent_send_failures_total", *n).label("reason", *reason));
        }
        for (collector, n) in self
            .collector_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            out.push(c("metrics_agent_collector_errors_total", *n).label("collector", *collector));
        }
        for ((job, reason), n) in self
            .scrape_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            out.push(
                c("metrics_agent_scrape_errors_total", *n)
                    .label("reason", *reason)
                    .label("target", job.clone()),
            );
        }
        let h = self.push_duration.lock().unwrap_or_else(|e| e.into_inner());
        for (i, b) in PUSH_BUCKETS.iter().enumerate() {
            out.push(
                Sample::new(
                    "metrics_agent_push_duration_seconds_bucket",
                    Kind::Untyped,
                    h.counts[i] as f64,
                    now_ms,
                )
                .label("le", b.to_string()),
            );
        }
        out.push(
            Sample::new(
                "metrics_agent_push_duration_seconds_bucket",
                Kind::Untyped,
                h.count as f64,
                now_ms,
            )
            .label("le", "+Inf"),
        );
        out.push(Sample::new(
            "metrics_agent_push_duration_seconds_sum",
            Kind::Untyped,
            h.sum,
            now_ms,
        ));
        out.push(Sample::new(
            "metrics_agent_push_duration_seconds_count",
            Kind::Untyped,
            h.count as f64,
            now_ms,
        ));
        out
    }
}

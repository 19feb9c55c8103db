//! Prometheus metrics of the node, with Sesam's names (`GET /api/metrics`).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipeLabel {
    pub pipe: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// The node's metrics; cheap to clone (every metric is shared).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub pump_started: Family<PipeLabel, Counter>,
    pub pump_completed: Family<PipeLabel, Counter>,
    pub pump_failed: Family<PipeLabel, Counter>,
    pub entities_changes: Family<PipeLabel, Counter>,
    pub entities_seen: Family<PipeLabel, Counter>,
    pub last_completed_time: Family<PipeLabel, Gauge<f64, AtomicU64>>,
    pub total_time: Family<PipeLabel, Gauge<f64, AtomicU64>>,
    pub pipe_enabled: Family<PipeLabel, Gauge>,
    pub health: Gauge,
    pub log_records_dropped: Counter,
    pub emit_failures: Counter,
    /// Records of the `--synthetic-logs` load generator the outbox accepted.
    pub synthetic_records: Counter,
    /// API requests refused, by reason (`unauthorized`, `body_too_large`,
    /// `limit_too_large`, `bad_request`, `not_found`, `busy`, ...).
    pub api_refused: Family<ReasonLabel, Counter>,
}

impl Metrics {
    pub fn pipe(pipe: &str) -> PipeLabel {
        PipeLabel {
            pipe: pipe.to_string(),
        }
    }

    /// Registers every metric; counters get the `_total` suffix on output.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "sesam_pump_started",
            "Pump runs started",
            self.pump_started.clone(),
        );
        r.register(
            "sesam_pump_completed",
            "Pump runs completed",
            self.pump_completed.clone(),
        );
        r.register(
            "sesam_pump_failed",
            "Pump runs failed",
            self.pump_failed.clone(),
        );
        r.register(
            "sesam_pump_entities_changes",
            "Entities changed in the sink by pump runs",
            self.entities_changes.clone(),
        );
        r.register(
            "sesam_pump_entities_seen",
            "Entities read from the source by pump runs",
            self.entities_seen.clone(),
        );
        r.register(
            "sesam_pump_last_completed_time",
            "Unix time of the last completed run",
            self.last_completed_time.clone(),
        );
        r.register(
            "sesam_pump_total_time",
            "Seconds the last run took",
            self.total_time.clone(),
        );
        r.register(
            "sesam_pipe_enabled",
            "1 if the pipe's pump is enabled",
            self.pipe_enabled.clone(),
        );
        r.register(
            "sesam_health",
            "1 if the node is healthy, 0 if not",
            self.health.clone(),
        );
        r.register(
            "sesam_node_log_records_dropped",
            "Service log lines not written to the outbox because its channel was full",
            self.log_records_dropped.clone(),
        );
        r.register(
            "sesam_node_emit_failures",
            "Records the node failed to append to the outbox",
            self.emit_failures.clone(),
        );
        r.register(
            "sesam_node_api_refused",
            "API requests refused, by reason",
            self.api_refused.clone(),
        );
        r.register(
            "sesam_node_synthetic_records",
            "Records of the --synthetic-logs load generator appended to the outbox",
            self.synthetic_records.clone(),
        );
    }
}

//! Prometheus metrics of one outbox.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    pub policy: &'static str,
}

/// Counters and gauges updated by the outbox writer; cheap to clone.
#[derive(Debug, Clone)]
pub struct OutboxMetrics {
    pub appended_records: Counter,
    pub appended_bytes: Counter,
    pub acknowledged_records: Counter,
    pub dropped_records: Family<PolicyLabel, Counter>,
    pub quarantined_records: Counter,
    pub stored_records: Gauge,
    pub stored_bytes: Gauge,
    pub append_duration: Histogram,
    pub group_commits: Counter,
}

impl Default for OutboxMetrics {
    fn default() -> Self {
        OutboxMetrics {
            appended_records: Counter::default(),
            appended_bytes: Counter::default(),
            acknowledged_records: Counter::default(),
            dropped_records: Family::default(),
            quarantined_records: Counter::default(),
            stored_records: Gauge::default(),
            stored_bytes: Gauge::default(),
            // 50 µs .. ~1.6 s
            append_duration: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            group_commits: Counter::default(),
        }
    }
}

impl OutboxMetrics {
    /// Registers every metric under `outbox_*` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("outbox");
        r.register(
            "records_appended",
            "Records appended to the outbox",
            self.appended_records.clone(),
        );
        r.register_with_unit(
            "appended",
            "Encoded bytes appended to the outbox",
            Unit::Bytes,
            self.appended_bytes.clone(),
        );
        r.register(
            "records_acknowledged",
            "Records deleted after every sink acknowledged them",
            self.acknowledged_records.clone(),
        );
        r.register(
            "records_dropped",
            "Records dropped by the when_full policy",
            self.dropped_records.clone(),
        );
        r.register(
            "records_quarantined",
            "Stored records that failed their checksum or decoding and were moved to quarantine",
            self.quarantined_records.clone(),
        );
        r.register(
            "records",
            "Records stored and not yet acknowledged by every sink",
            self.stored_records.clone(),
        );
        r.register_with_unit(
            "stored",
            "Encoded bytes stored and not yet acknowledged by every sink",
            Unit::Bytes,
            self.stored_bytes.clone(),
        );
        r.register(
            "group_commits",
            "Write batches committed (each one fsync in sync=always mode)",
            self.group_commits.clone(),
        );
        r.register_with_unit(
            "append_duration",
            "Time from append call to durable",
            Unit::Seconds,
            self.append_duration.clone(),
        );
    }
}

//! The collector's own Prometheus metrics (`GET /metrics`).
//!
//! No metric carries a subscription or source label: `/metrics` is served
//! without a token, so it must not reveal tenants.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: &'static str,
}

/// Every metric of the collector; cheap to clone (shared counters).
#[derive(Debug, Clone)]
pub struct Metrics {
    pub ingest_records: Counter,
    pub ingest_duplicates: Counter,
    pub ingest_bytes: Counter,
    pub ingest_batches: Counter,
    pub ingest_rejections: Family<ReasonLabel, Counter>,
    pub ingest_commit_duration: Histogram,
    pub group_commits: Counter,
    pub store_records: Gauge,
    pub store_streams: Gauge,
    pub store_disk_bytes: Gauge,
    pub query_duration: Family<EndpointLabel, Histogram>,
    pub retention_deleted: Counter,
    pub checkpoints: Counter,
    pub checkpoint_failures: Counter,
}

fn query_histogram() -> Histogram {
    // 100 µs .. ~6.5 s
    Histogram::new(exponential_buckets(0.000_1, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            ingest_records: Counter::default(),
            ingest_duplicates: Counter::default(),
            ingest_bytes: Counter::default(),
            ingest_batches: Counter::default(),
            ingest_rejections: Family::default(),
            ingest_commit_duration: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            group_commits: Counter::default(),
            store_records: Gauge::default(),
            store_streams: Gauge::default(),
            store_disk_bytes: Gauge::default(),
            query_duration: Family::new_with_constructor(query_histogram),
            retention_deleted: Counter::default(),
            checkpoints: Counter::default(),
            checkpoint_failures: Counter::default(),
        }
    }
}

impl Metrics {
    pub fn reject(&self, reason: &'static str) {
        self.ingest_rejections
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A registry holding every metric under `collector_*`.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        let r = registry.sub_registry_with_prefix("collector");
        r.register(
            "ingest_records",
            "Records stored for the first time",
            self.ingest_records.clone(),
        );
        r.register(
            "ingest_duplicates",
            "Records received again (same subscription, source and seq) and not stored twice",
            self.ingest_duplicates.clone(),
        );
        r.register_with_unit(
            "ingest_received",
            "Request body bytes of accepted ingest batches, as sent (compressed)",
            Unit::Bytes,
            self.ingest_bytes.clone(),
        );
        r.register(
            "ingest_batches",
            "Ingest batches answered with 200",
            self.ingest_batches.clone(),
        );
        r.register(
            "ingest_rejections",
            "Ingest requests refused, by reason",
            self.ingest_rejections.clone(),
        );
        r.register_with_unit(
            "ingest_commit_duration",
            "Time from queueing an ingest batch to its synced commit",
            Unit::Seconds,
            self.ingest_commit_duration.clone(),
        );
        r.register(
            "store_group_commits",
            "Synced write batches of the store writer",
            self.group_commits.clone(),
        );
        r.register(
            "store_records",
            "Records stored",
            self.store_records.clone(),
        );
        r.register(
            "store_streams",
            "Streams (distinct label sets) stored",
            self.store_streams.clone(),
        );
        r.register_with_unit(
            "store_disk",
            "Size of the store's directory",
            Unit::Bytes,
            self.store_disk_bytes.clone(),
        );
        r.register_with_unit(
            "query_duration",
            "Time to answer a query, by endpoint",
            Unit::Seconds,
            self.query_duration.clone(),
        );
        r.register(
            "retention_deleted_records",
            "Records deleted by retention",
            self.retention_deleted.clone(),
        );
        r.register("checkpoints", "Checkpoints taken", self.checkpoints.clone());
        r.register(
            "checkpoint_failures",
            "Checkpoints that failed",
            self.checkpoint_failures.clone(),
        );
        registry
    }
}

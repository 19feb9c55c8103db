//! The collector's own Prometheus metrics (`GET /metrics`).
//!
//! The public registry ([`Metrics::registry`]) has no subscription or
//! source label: `/metrics` is served without a token, so it must not
//! reveal tenants. Refusals and limits per subscription
//! ([`Metrics::tenant_registry`]: `collector_tenant_*{subscription,reason}`)
//! are added to the answer only when the request carries an admin token.

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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantReasonLabel {
    pub subscription: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub subscription: String,
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
    /// Batches refused as source conflicts, by kind (`content`, `epoch`).
    pub source_conflicts: Family<ReasonLabel, Counter>,
    /// Records stored without their `pipe` label (stream limit, label size).
    pub stream_overflow_records: Counter,
    /// Queries refused before running, by reason.
    pub query_refusals: Family<ReasonLabel, Counter>,
    /// Answers cut at the byte budget, by endpoint.
    pub answers_truncated: Family<EndpointLabel, Counter>,
    /// Ingest bodies decoded on the bulk lane (a subscription's concurrent
    /// ingests beyond its first, at a lower CPU priority).
    pub ingest_bulk_decodes: Counter,
    pub connections_open: Gauge,
    pub connections_accepted: Counter,
    /// Connections refused at accept, by reason (`peer_limit`, `limit`).
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// Connections the server closed, by reason (`header_timeout`,
    /// `idle_timeout`).
    pub connections_closed: Family<ReasonLabel, Counter>,
    /// Requests answered 503 at the request timeout.
    pub requests_timed_out: Counter,
    /// Request body bytes held in memory right now (ingest, metrics push).
    pub bodies_in_flight_bytes: Gauge,
    /// Refusals per subscription and reason (admin-only section).
    pub tenant_refusals: Family<TenantReasonLabel, Counter>,
    /// Records stored without `pipe`, per subscription (admin-only section).
    pub tenant_overflow_records: Family<TenantLabel, Counter>,
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
            source_conflicts: Family::default(),
            stream_overflow_records: Counter::default(),
            query_refusals: Family::default(),
            answers_truncated: Family::default(),
            ingest_bulk_decodes: Counter::default(),
            connections_open: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_refused: Family::default(),
            connections_closed: Family::default(),
            requests_timed_out: Counter::default(),
            bodies_in_flight_bytes: Gauge::default(),
            tenant_refusals: Family::default(),
            tenant_overflow_records: Family::default(),
        }
    }
}

impl Metrics {
    pub fn reject(&self, reason: &'static str) {
        self.ingest_rejections
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a refusal of `subscription`'s request under `reason` in the
    /// admin-only per-subscription section.
    pub fn refuse_tenant(&self, subscription: &str, reason: &'static str) {
        self.tenant_refusals
            .get_or_create(&TenantReasonLabel {
                subscription: subscription.to_string(),
                reason,
            })
            .inc();
    }

    /// Counts records of `subscription` stored without their `pipe` label.
    pub fn tenant_overflow(&self, subscription: &str, n: u64) {
        self.tenant_overflow_records
            .get_or_create(&TenantLabel {
                subscription: subscription.to_string(),
            })
            .inc_by(n);
    }

    /// Counts a query refused before it ran.
    pub fn refuse_query(&self, reason: &'static str) {
        self.query_refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Drops the per-subscription series of a terminated subscription.
    pub fn forget_tenant(&self, subscription: &str) {
        self.tenant_overflow_records.remove(&TenantLabel {
            subscription: subscription.to_string(),
        });
        // Family has no retain: remove every reason we count.
        for reason in TENANT_REASONS {
            self.tenant_refusals.remove(&TenantReasonLabel {
                subscription: subscription.to_string(),
                reason,
            });
        }
    }

    /// The admin-only per-subscription metrics, under `collector_tenant_*`.
    pub fn tenant_registry(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("collector_tenant");
        r.register(
            "refusals",
            "Requests, batches and samples refused, by subscription and reason",
            self.tenant_refusals.clone(),
        );
        r.register(
            "overflow_records",
            "Records stored without their pipe label (stream limit or label size), by subscription",
            self.tenant_overflow_records.clone(),
        );
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
            "source_conflicts",
            "Ingest batches refused with 409 source_conflict, by kind (content: a seq re-sent with other content; epoch: two outbox epochs writing one source)",
            self.source_conflicts.clone(),
        );
        r.register(
            "stream_overflow_records",
            "Records stored without their pipe label (the subscription's stream limit, or a pipe value over the label size limit)",
            self.stream_overflow_records.clone(),
        );
        r.register(
            "query_refusals",
            "Queries refused before running, by reason",
            self.query_refusals.clone(),
        );
        r.register(
            "answers_truncated",
            "Answers cut at their byte budget, by endpoint",
            self.answers_truncated.clone(),
        );
        r.register(
            "ingest_bulk_decodes",
            "Write bodies (ingest, remote-write, OTLP) decoded on the bulk lane (a subscription's concurrent write requests beyond its first while another subscription is active, at a lower CPU priority)",
            self.ingest_bulk_decodes.clone(),
        );
        r.register(
            "connections_open",
            "Client connections open",
            self.connections_open.clone(),
        );
        r.register(
            "connections_accepted",
            "Client connections accepted",
            self.connections_accepted.clone(),
        );
        r.register(
            "connections_refused",
            "Client connections refused at accept, by reason",
            self.connections_refused.clone(),
        );
        r.register(
            "connections_closed",
            "Client connections closed by the collector, by reason",
            self.connections_closed.clone(),
        );
        r.register(
            "requests_timed_out",
            "Requests answered 503 at the request timeout",
            self.requests_timed_out.clone(),
        );
        r.register_with_unit(
            "bodies_in_flight",
            "Request body bytes held in memory (ingest, metrics push)",
            Unit::Bytes,
            self.bodies_in_flight_bytes.clone(),
        );
        r.register(
            "checkpoint_failures",
            "Checkpoints that failed",
            self.checkpoint_failures.clone(),
        );
        registry
    }
}

/// Every reason counted in [`Metrics::tenant_refusals`].
pub const TENANT_REASONS: [&str; 12] = [
    "source_conflict",
    "source_limit",
    "source_forbidden",
    "busy",
    "body_budget",
    "body_timeout",
    "series_limit",
    "series_bytes_limit",
    "label_limit",
    "query_limit",
    "answer_too_large",
    "subscription_mismatch",
];

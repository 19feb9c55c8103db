//! Prometheus metrics of the delivery sinks, labelled by sink name.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub sink: String,
    pub reason: String,
}

/// Shared by every sink of a process; each sink uses its own label.
#[derive(Debug, Clone)]
pub struct DeliveryMetrics {
    pub records_sent: Family<SinkLabel, Counter>,
    pub batches_sent: Family<SinkLabel, Counter>,
    pub bytes_sent: Family<SinkLabel, Counter>,
    pub retries: Family<SinkLabel, Counter>,
    pub failures: Family<ReasonLabel, Counter>,
    pub dead_letters: Family<SinkLabel, Counter>,
    pub filtered: Family<SinkLabel, Counter>,
    pub in_flight: Family<SinkLabel, Gauge>,
    pub lag_seconds: Family<SinkLabel, Gauge<f64, AtomicU64>>,
    pub request_duration: Family<SinkLabel, Histogram>,
}

impl Default for DeliveryMetrics {
    fn default() -> Self {
        DeliveryMetrics {
            records_sent: Family::default(),
            batches_sent: Family::default(),
            bytes_sent: Family::default(),
            retries: Family::default(),
            failures: Family::default(),
            dead_letters: Family::default(),
            filtered: Family::default(),
            in_flight: Family::default(),
            lag_seconds: Family::default(),
            request_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 15))
            }),
        }
    }
}

impl DeliveryMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("shipper");
        r.register(
            "records_sent",
            "Records delivered and acknowledged by the receiver",
            self.records_sent.clone(),
        );
        r.register(
            "batches_sent",
            "Batches delivered",
            self.batches_sent.clone(),
        );
        r.register_with_unit(
            "sent",
            "Request body bytes delivered (compressed)",
            Unit::Bytes,
            self.bytes_sent.clone(),
        );
        r.register(
            "retries",
            "Delivery attempts that will be retried",
            self.retries.clone(),
        );
        r.register(
            "send_failures",
            "Failed delivery attempts by reason",
            self.failures.clone(),
        );
        r.register(
            "dead_letters",
            "Records the receiver rejected alone, moved to the outbox quarantine",
            self.dead_letters.clone(),
        );
        r.register(
            "records_filtered",
            "Records not shipped by policy (e.g. pipes without monitoring)",
            self.filtered.clone(),
        );
        r.register(
            "batches_in_flight",
            "Batches sent and not yet acknowledged",
            self.in_flight.clone(),
        );
        r.register_with_unit(
            "lag",
            "Age of the oldest record not yet acknowledged by the receiver",
            Unit::Seconds,
            self.lag_seconds.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Delivery request latency",
            Unit::Seconds,
            self.request_duration.clone(),
        );
    }

    pub fn sink(&self, sink: &str) -> SinkLabel {
        SinkLabel {
            sink: sink.to_string(),
        }
    }
}

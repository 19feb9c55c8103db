//! Metrics ingest: Prometheus remote-write 1.0 (`POST /api/v1/write`) and
//! OTLP/HTTP metrics (`POST /v1/metrics`) receivers, the latest-sample
//! table behind `GET /federate`, and the hook through which the notifier
//! sees every accepted sample ([`MetricObserver`]).
//!
//! Both receivers authenticate like log ingest (shipper or admin tokens)
//! and force the token's subscription on every series (an admin token's
//! series name theirs in a `subscription` label). A request goes through
//! [`series::SeriesBuilder`] (validation, canonical series keys), then
//! [`table::Table::apply`] (newest sample per series, bounded), then the
//! observers. `GET /federate` (operator: own subscription; admin: all)
//! serves every fresh series that matches a `match[]` selector, with its
//! `subscription` and `instance` labels.
//!
//! Modules: [`ingest`] (one push: decode, validate, apply, observe),
//! [`remote_write`] (the protobuf walk), [`otlp`] (OTLP to Prometheus
//! series), [`series`] (validation, keys), [`table`] (the latest-sample
//! table, staleness, memory bounds), [`federate`] and [`selector`]
//! (`match[]`, the answer). HTTP is `crate::http::metrics`.

pub mod federate;
pub mod ingest;
pub mod otlp;
pub mod remote_write;
pub mod selector;
pub mod series;
pub mod table;
pub mod victoria;

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::telemetry::ReasonLabel;
pub use series::MetricType;
pub use table::{MetricLimits, Table};

/// One sample as stored for /federate: metric name, sorted labels
/// (including `subscription` and `instance`), value, timestamp in ms.
#[derive(Debug, Clone)]
pub struct MetricSample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub timestamp_ms: i64,
}

/// Sees the samples of every accepted remote-write / OTLP request.
pub trait MetricObserver: Send + Sync + 'static {
    /// Samples just accepted for `subscription` (after validation).
    fn samples(&self, subscription: &str, samples: &[MetricSample]);

    /// Whether samples of metric `name` in `subscription` should be passed
    /// to [`MetricObserver::samples`] (default: every sample). Building a
    /// [`MetricSample`] (owned strings) costs about as much as storing the
    /// sample; an observer that watches a few metrics should say so here.
    fn wants(&self, subscription: &str, name: &str) -> bool {
        let _ = (subscription, name);
        true
    }
}

/// Samples kept per thread for reuse by [`MetricStore::notify`].
pub const POOL_KEEP: usize = 4096;

thread_local! {
    static POOL: std::cell::RefCell<Vec<MetricSample>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Overwrites `slot` with the sample of series `key`, reusing its strings.
fn fill(slot: &mut MetricSample, key: &[u8], subscription: &str, value: f64, timestamp_ms: i64) {
    let (name, labels) = series::split_key(key);
    slot.name.clear();
    slot.name.push_str(name);
    let mut n = 0;
    let mut put = |slot: &mut MetricSample, k: &str, v: &str| {
        if n == slot.labels.len() {
            slot.labels.push((String::new(), String::new()));
        }
        let (a, b) = &mut slot.labels[n];
        a.clear();
        a.push_str(k);
        b.clear();
        b.push_str(v);
        n += 1;
    };
    let mut added = false;
    for (k, v) in labels {
        if !added && k > "subscription" {
            put(slot, "subscription", subscription);
            added = true;
        }
        put(slot, k, v);
    }
    if !added {
        put(slot, "subscription", subscription);
    }
    slot.labels.truncate(n);
    slot.value = value;
    slot.timestamp_ms = timestamp_ms;
}

/// Which receiver a request came in through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    RemoteWrite,
    Otlp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::RemoteWrite => "remote_write",
            Protocol::Otlp => "otlp",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub protocol: &'static str,
}

/// Counters of metrics ingest (no tenant labels: `/metrics` is public).
#[derive(Debug, Clone, Default)]
pub struct MetricCounters {
    pub samples_accepted: Family<ProtocolLabel, Counter>,
    pub samples_refused: Family<ReasonLabel, Counter>,
    pub requests_refused: Family<ReasonLabel, Counter>,
    pub series_created: Counter,
    pub series_evicted: Counter,
    pub federate_series: Counter,
}

/// The table, the observers and the counters; shared by the handlers.
pub struct MetricStore {
    pub table: Table,
    pub counters: MetricCounters,
    observers: Vec<Arc<dyn MetricObserver>>,
    /// Where accepted samples are kept and `/federate` is answered from
    /// (`--metrics-storage victoriametrics`); `None`: the table.
    pub victoria: Option<victoria::Victoria>,
}

impl std::fmt::Debug for MetricStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricStore")
            .field("series", &self.table.len())
            .field("limits", self.table.limits())
            .field("observers", &self.observers.len())
            .finish()
    }
}

impl MetricStore {
    pub fn new(limits: MetricLimits, observers: Vec<Arc<dyn MetricObserver>>) -> MetricStore {
        MetricStore {
            table: Table::new(limits),
            counters: MetricCounters::default(),
            observers,
            victoria: None,
        }
    }

    /// Keeps accepted samples in VictoriaMetrics too and answers
    /// `/federate` from it.
    pub fn with_victoria(mut self, v: Option<victoria::Victoria>) -> MetricStore {
        self.victoria = v;
        self
    }

    pub fn reject_request(&self, reason: &'static str) {
        self.counters
            .requests_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Hands the accepted samples of `p` (not staleness markers, not
    /// `refused`, sorted indexes into `p.samples`) that an observer
    /// [wants](MetricObserver::wants) to it, one call per subscription.
    ///
    /// The [`MetricSample`]s are built in a per-thread pool whose strings
    /// are reused from request to request (at most [`POOL_KEEP`] samples
    /// are kept between requests): building them afresh was about 40% of
    /// the receiver's CPU per sample, nearly all of it `malloc`/`free`.
    pub fn notify(&self, p: &series::Prepared, refused: &[usize]) {
        for o in &self.observers {
            for (ti, sub) in p.tenants.iter().enumerate() {
                POOL.with(|pool| {
                    let mut pool = pool.borrow_mut();
                    let mut n = 0;
                    for (i, s) in p.samples.iter().enumerate() {
                        if s.tenant as usize != ti || s.stale || refused.binary_search(&i).is_ok() {
                            continue;
                        }
                        let key = p.key(s);
                        if !o.wants(sub, series::split_key(key).0) {
                            continue;
                        }
                        if n == pool.len() {
                            pool.push(MetricSample {
                                name: String::new(),
                                labels: Vec::new(),
                                value: 0.0,
                                timestamp_ms: 0,
                            });
                        }
                        fill(&mut pool[n], key, sub, s.value, s.timestamp_ms);
                        n += 1;
                    }
                    if n > 0 {
                        o.samples(sub, &pool[..n]);
                    }
                    pool.truncate(POOL_KEEP);
                });
            }
        }
    }

    /// Registers the counters under `collector_metrics_*` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("collector_metrics");
        r.register(
            "samples_accepted",
            "Pushed samples stored in the latest-sample table, by protocol",
            self.counters.samples_accepted.clone(),
        );
        r.register(
            "samples_refused",
            "Pushed samples refused one by one (nan, inf, too_new, series_limit, delta_temporality, ...)",
            self.counters.samples_refused.clone(),
        );
        r.register(
            "requests_refused",
            "Metrics push requests refused as a whole, by reason",
            self.counters.requests_refused.clone(),
        );
        r.register(
            "series_created",
            "Series added to the latest-sample table",
            self.counters.series_created.clone(),
        );
        r.register(
            "series_evicted",
            "Series removed from the latest-sample table (stale or ended by a staleness marker)",
            self.counters.series_evicted.clone(),
        );
        r.register(
            "federate_series",
            "Series served by /federate",
            self.counters.federate_series.clone(),
        );
        let series: Gauge = Gauge::default();
        series.set(self.table.len() as i64);
        r.register("series", "Series in the latest-sample table", series);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_samples_are_overwritten_completely() {
        let mut b = series::SeriesBuilder::new(Some("acme"), 0, 1000);
        b.series(
            0,
            &[
                ("__name__", "long_metric_name"),
                ("a", "1"),
                ("instance", "i"),
                ("z", "9"),
            ],
            std::iter::once((1.0, 5)),
        )
        .unwrap();
        b.series(1, &[("__name__", "m")], std::iter::once((2.0, 6)))
            .unwrap();
        let p = b.prepared;
        let mut slot = MetricSample {
            name: String::new(),
            labels: Vec::new(),
            value: 0.0,
            timestamp_ms: 0,
        };
        fill(&mut slot, p.key(&p.samples[0]), "acme", 1.0, 5);
        assert_eq!(slot.labels.len(), 4, "a, instance, subscription, z");
        fill(&mut slot, p.key(&p.samples[1]), "acme", 2.0, 6);
        assert_eq!(slot.name, "m");
        let want: Vec<(String, String)> = vec![
            ("instance".into(), "unknown".into()),
            ("subscription".into(), "acme".into()),
        ];
        assert_eq!(slot.labels, want);
        assert_eq!((slot.value, slot.timestamp_ms), (2.0, 6));
    }
}

//! Metrics ingest: Prometheus remote-write 1.0 (`POST /api/v1/write`) and
//! OTLP/HTTP metrics (`POST /v1/metrics`) receivers, the latest-sample
//! table behind `GET /federate`, and the hook through which the notifier
//! sees every accepted sample ([`MetricObserver`]).

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
}

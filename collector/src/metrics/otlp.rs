//! OTLP/HTTP metrics (`ExportMetricsServiceRequest`, protobuf) turned into
//! Prometheus series, following OpenTelemetry's Prometheus compatibility
//! rules where they matter here:
//! - metric and attribute names: characters Prometheus does not allow
//!   become `_`; unit `By` adds `_bytes`, `s` adds `_seconds`, a
//!   monotonic cumulative sum adds `_total` (each only when the name does
//!   not already end so, so Prometheus-named metrics round-trip);
//! - resource `service.name` (with `service.namespace/` before it) becomes
//!   `job` and `service.instance.id` becomes `instance`, unless the data
//!   point has those labels itself; other resource attributes are dropped;
//! - gauge and sum data points are samples; a cumulative histogram becomes
//!   `_bucket{le}` / `_sum` / `_count`, a summary `{quantile}` / `_sum` /
//!   `_count`; a data point flagged "no recorded value" is a staleness
//!   marker;
//! - delta temporality and exponential histograms have no Prometheus
//!   equivalent: such data points are refused one by one and counted.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, AggregationTemporality};

use super::series::{MetricType, SeriesBuilder, SeriesError, STALE_NAN_BITS};
use schemas::prom::text::push_float;

/// Decodes a (decompressed) protobuf body.
pub fn decode(body: &[u8]) -> Result<ExportMetricsServiceRequest, prost::DecodeError> {
    <ExportMetricsServiceRequest as prost::Message>::decode(body)
}

const NO_RECORDED_VALUE: u32 = 1;

fn sanitize(name: &str, metric: bool) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    for (i, c) in name.chars().enumerate() {
        let ok = c.is_ascii_alphabetic()
            || c == '_'
            || (metric && c == ':')
            || (i > 0 && c.is_ascii_digit());
        if i == 0 && c.is_ascii_digit() {
            out.push('_');
            out.push(c);
        } else {
            out.push(if ok { c } else { '_' });
        }
    }
    out
}

fn metric_name(name: &str, unit: &str, total: bool) -> String {
    let mut n = sanitize(name, true);
    let base = n.strip_suffix("_total").unwrap_or(&n).to_string();
    let suffix = match unit {
        "By" => Some("_bytes"),
        "s" => Some("_seconds"),
        _ => None,
    };
    if let Some(sfx) = suffix {
        if !base.ends_with(sfx) {
            n = format!("{base}{sfx}");
            if total {
                n.push_str("_total");
            }
        }
    }
    if total && !n.ends_with("_total") {
        n.push_str("_total");
    }
    n
}

fn value_text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// Labels of a data point: its attributes, then `job` / `instance` from the
/// resource where the attributes have none. Sorted, first name wins.
fn point_labels(
    name: &str,
    attrs: &[KeyValue],
    resource: &[(String, String)],
    extra: Option<(&str, String)>,
) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = Vec::with_capacity(attrs.len() + 4);
    labels.push(("__name__".into(), name.into()));
    for a in attrs {
        labels.push((sanitize(&a.key, false), value_text(&a.value)));
    }
    for (k, v) in resource {
        labels.push((k.clone(), v.clone()));
    }
    if let Some((k, v)) = extra {
        labels.push((k.into(), v));
    }
    // Stable sort keeps the first of equal names: attributes before the
    // resource's job/instance.
    labels.sort_by(|a, b| a.0.cmp(&b.0));
    labels.dedup_by(|b, a| a.0 == b.0);
    labels
}

fn ts_ms(time_unix_nano: u64, now_ms: i64) -> i64 {
    if time_unix_nano == 0 {
        now_ms
    } else {
        (time_unix_nano / 1_000_000).min(i64::MAX as u64) as i64
    }
}

struct Point<'b, 'a> {
    builder: &'b mut SeriesBuilder<'a>,
    index: usize,
}

impl Point<'_, '_> {
    fn sample(
        &mut self,
        labels: &[(String, String)],
        value: f64,
        ts: i64,
    ) -> Result<(), SeriesError> {
        let borrowed: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let i = self.index;
        self.index += 1;
        self.builder
            .series(i, &borrowed, std::iter::once((value, ts)))
    }
}

fn le(bound: f64) -> String {
    let mut s = String::new();
    push_float(&mut s, bound);
    s
}

/// Validates every data point of `req` into `builder`.
pub fn prepare(
    req: &ExportMetricsServiceRequest,
    builder: &mut SeriesBuilder,
) -> Result<(), SeriesError> {
    let now = builder.now_ms();
    let mut p = Point { builder, index: 0 };
    for rm in &req.resource_metrics {
        let attrs = rm
            .resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or_default();
        let get = |key: &str| {
            attrs
                .iter()
                .find(|a| a.key == key)
                .map(|a| value_text(&a.value))
        };
        let mut resource = Vec::new();
        if let Some(name) = get("service.name") {
            let job = match get("service.namespace") {
                Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
                _ => name,
            };
            resource.push(("job".to_string(), job));
        }
        if let Some(inst) = get("service.instance.id") {
            resource.push(("instance".to_string(), inst));
        }
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let Some(data) = &m.data else { continue };
                match data {
                    metric::Data::Gauge(g) => {
                        let name = metric_name(&m.name, &m.unit, false);
                        p.builder.metric_type(&name, MetricType::Gauge);
                        for dp in &g.data_points {
                            let v = number(dp.value, dp.flags);
                            let labels = point_labels(&name, &dp.attributes, &resource, None);
                            p.sample(&labels, v, ts_ms(dp.time_unix_nano, now))?;
                        }
                    }
                    metric::Data::Sum(s) => {
                        if s.aggregation_temporality == AggregationTemporality::Delta as i32 {
                            let n = s.data_points.len() as u64;
                            p.builder.refuse_n("delta_temporality", n, || {
                                format!("metric {:?}: delta temporality is not supported", m.name)
                            });
                            continue;
                        }
                        let name = metric_name(&m.name, &m.unit, s.is_monotonic);
                        let t = if s.is_monotonic {
                            MetricType::Counter
                        } else {
                            MetricType::Gauge
                        };
                        p.builder.metric_type(&name, t);
                        for dp in &s.data_points {
                            let v = number(dp.value, dp.flags);
                            let labels = point_labels(&name, &dp.attributes, &resource, None);
                            p.sample(&labels, v, ts_ms(dp.time_unix_nano, now))?;
                        }
                    }
                    metric::Data::Histogram(h) => {
                        if h.aggregation_temporality == AggregationTemporality::Delta as i32 {
                            let n = h.data_points.len() as u64;
                            p.builder.refuse_n("delta_temporality", n, || {
                                format!("metric {:?}: delta temporality is not supported", m.name)
                            });
                            continue;
                        }
                        let base = metric_name(&m.name, &m.unit, false);
                        p.builder.metric_type(&base, MetricType::Histogram);
                        for dp in &h.data_points {
                            let ts = ts_ms(dp.time_unix_nano, now);
                            let stale = dp.flags & NO_RECORDED_VALUE != 0;
                            let val = |v: f64| {
                                if stale {
                                    f64::from_bits(STALE_NAN_BITS)
                                } else {
                                    v
                                }
                            };
                            let bucket = format!("{base}_bucket");
                            let mut cumulative = 0u64;
                            for (i, c) in dp.bucket_counts.iter().enumerate() {
                                cumulative = cumulative.saturating_add(*c);
                                let bound =
                                    dp.explicit_bounds.get(i).copied().unwrap_or(f64::INFINITY);
                                let labels = point_labels(
                                    &bucket,
                                    &dp.attributes,
                                    &resource,
                                    Some(("le", le(bound))),
                                );
                                p.sample(&labels, val(cumulative as f64), ts)?;
                            }
                            let labels = point_labels(
                                &format!("{base}_count"),
                                &dp.attributes,
                                &resource,
                                None,
                            );
                            p.sample(&labels, val(dp.count as f64), ts)?;
                            if let Some(sum) = dp.sum {
                                let labels = point_labels(
                                    &format!("{base}_sum"),
                                    &dp.attributes,
                                    &resource,
                                    None,
                                );
                                p.sample(&labels, val(sum), ts)?;
                            }
                        }
                    }
                    metric::Data::Summary(s) => {
                        let base = metric_name(&m.name, &m.unit, false);
                        p.builder.metric_type(&base, MetricType::Summary);
                        for dp in &s.data_points {
                            let ts = ts_ms(dp.time_unix_nano, now);
                            let stale = dp.flags & NO_RECORDED_VALUE != 0;
                            let val = |v: f64| {
                                if stale {
                                    f64::from_bits(STALE_NAN_BITS)
                                } else {
                                    v
                                }
                            };
                            for q in &dp.quantile_values {
                                let labels = point_labels(
                                    &base,
                                    &dp.attributes,
                                    &resource,
                                    Some(("quantile", le(q.quantile))),
                                );
                                p.sample(&labels, val(q.value), ts)?;
                            }
                            let labels = point_labels(
                                &format!("{base}_count"),
                                &dp.attributes,
                                &resource,
                                None,
                            );
                            p.sample(&labels, val(dp.count as f64), ts)?;
                            let labels = point_labels(
                                &format!("{base}_sum"),
                                &dp.attributes,
                                &resource,
                                None,
                            );
                            p.sample(&labels, val(dp.sum), ts)?;
                        }
                    }
                    metric::Data::ExponentialHistogram(e) => {
                        let n = e.data_points.len() as u64;
                        p.builder.refuse_n("exponential_histogram", n, || {
                            format!(
                                "metric {:?}: exponential histograms are not supported",
                                m.name
                            )
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

fn number(v: Option<number_data_point::Value>, flags: u32) -> f64 {
    if flags & NO_RECORDED_VALUE != 0 {
        return f64::from_bits(STALE_NAN_BITS);
    }
    match v {
        Some(number_data_point::Value::AsDouble(d)) => d,
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        // No value at all is not a number: refused as NaN.
        None => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions_and_round_trip() {
        assert_eq!(
            metric_name("node_cpu_seconds_total", "s", true),
            "node_cpu_seconds_total"
        );
        assert_eq!(
            metric_name("node_memory_MemTotal_bytes", "By", false),
            "node_memory_MemTotal_bytes"
        );
        assert_eq!(
            metric_name("http.server.duration", "s", false),
            "http_server_duration_seconds"
        );
        assert_eq!(metric_name("requests", "1", true), "requests_total");
        assert_eq!(metric_name("io", "By", true), "io_bytes_total");
        assert_eq!(metric_name("2xx", "", false), "_2xx");
        assert_eq!(sanitize("http.method", false), "http_method");
    }
}

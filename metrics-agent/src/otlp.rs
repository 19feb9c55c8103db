//! OTLP/HTTP metrics encoding (`ExportMetricsServiceRequest`, protobuf).
//!
//! Built with the `opentelemetry-proto` message types that the
//! `opentelemetry-otlp` exporter itself sends: that exporter only exports
//! what the OpenTelemetry SDK aggregated (its `ResourceMetrics` cannot be
//! built outside the SDK), while the agent forwards samples it collected
//! or scraped, with their own timestamps, through its bounded buffer and
//! its retry policy.
//!
//! Mapping: resource `service.name=sesam-metrics-agent`,
//! `service.instance.id=<instance>`; one metric per name; counters whose
//! name ends in `_total` are monotonic cumulative sums, everything else a
//! gauge; every label is a data point attribute. A receiver following
//! OpenTelemetry's Prometheus rules (like the collector) gets the same
//! names and labels back.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::sample::{Kind, Point};

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_string())),
        }),
        ..Default::default()
    }
}

pub fn request<'a>(
    instance: &str,
    points: impl Iterator<Item = &'a Point>,
) -> ExportMetricsServiceRequest {
    let mut metrics: Vec<Metric> = Vec::new();
    for p in points {
        let s = &p.series;
        let dp = NumberDataPoint {
            attributes: s.labels.iter().map(|(k, v)| kv(k, v)).collect(),
            time_unix_nano: (p.timestamp_ms.max(0) as u64).saturating_mul(1_000_000),
            value: Some(number_data_point::Value::AsDouble(p.value)),
            ..Default::default()
        };
        let sum = s.kind == Kind::Counter && s.name.ends_with("_total");
        let m = match metrics.iter().rposition(|m| m.name == s.name) {
            Some(i) => &mut metrics[i],
            None => {
                metrics.push(Metric {
                    name: s.name.clone(),
                    data: Some(if sum {
                        metric::Data::Sum(Sum {
                            data_points: vec![],
                            aggregation_temporality: AggregationTemporality::Cumulative as i32,
                            is_monotonic: true,
                        })
                    } else {
                        metric::Data::Gauge(Gauge {
                            data_points: vec![],
                        })
                    }),
                    ..Default::default()
                });
                metrics.last_mut().expect("just pushed")
            }
        };
        match &mut m.data {
            Some(metric::Data::Sum(s)) => s.data_points.push(dp),
            Some(metric::Data::Gauge(g)) => g.data_points.push(dp),
            _ => {}
        }
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "sesam-metrics-agent"),
                    kv("service.instance.id", instance),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "sesam-metrics-agent".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

pub fn encode<'a>(instance: &str, points: impl Iterator<Item = &'a Point>) -> Vec<u8> {
    prost::Message::encode_to_vec(&request(instance, points))
}

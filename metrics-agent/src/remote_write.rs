//! Prometheus remote-write 1.0 encoding: `prometheus.WriteRequest` (the
//! messages of `schemas::prom`, shared with the collector) as protobuf,
//! snappy block-compressed.

use crate::sample::{Kind, Point};

pub use schemas::prom::{Label, MetricMetadata, Sample, TimeSeries, WriteRequest};

/// The request for `points`: one time series per point (in order, so a
/// series' samples stay in time order), labels sorted with `__name__`,
/// and metadata for the counters and gauges.
pub fn request<'a>(points: impl Iterator<Item = &'a Point>) -> WriteRequest {
    let mut req = WriteRequest::default();
    let mut typed: Vec<(&str, Kind)> = Vec::new();
    for p in points {
        let s = &p.series;
        let mut labels: Vec<Label> = Vec::with_capacity(s.labels.len() + 1);
        let mut named = false;
        for (k, v) in &s.labels {
            if !named && k.as_str() > "__name__" {
                labels.push(Label {
                    name: "__name__".into(),
                    value: s.name.clone(),
                });
                named = true;
            }
            labels.push(Label {
                name: k.clone(),
                value: v.clone(),
            });
        }
        if !named {
            labels.push(Label {
                name: "__name__".into(),
                value: s.name.clone(),
            });
        }
        req.timeseries.push(TimeSeries {
            labels,
            samples: vec![Sample {
                value: p.value,
                timestamp: p.timestamp_ms,
            }],
            histograms: Vec::new(),
        });
        if s.kind != Kind::Untyped && !typed.iter().any(|(n, _)| *n == s.name) {
            typed.push((&s.name, s.kind));
        }
    }
    req.metadata = typed
        .into_iter()
        .map(|(n, k)| MetricMetadata {
            r#type: k.to_remote_write(),
            metric_family_name: n.to_string(),
            ..Default::default()
        })
        .collect();
    req
}

/// The snappy-compressed protobuf body.
pub fn encode<'a>(points: impl Iterator<Item = &'a Point>) -> Vec<u8> {
    let raw = prost::Message::encode_to_vec(&request(points));
    // Compressing an in-memory buffer cannot fail except for sizes over
    // 4 GiB, far beyond any batch.
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sample::Series;

    #[test]
    fn name_label_goes_in_sorted_position() {
        let p = Point {
            series: Arc::new(Series {
                name: "m".into(),
                labels: vec![("Zeta".into(), "1".into()), ("a".into(), "2".into())],
                kind: Kind::Counter,
            }),
            value: 1.0,
            timestamp_ms: 5,
        };
        let req = request(std::iter::once(&p));
        let names: Vec<&str> = req.timeseries[0]
            .labels
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(names, ["Zeta", "__name__", "a"]);
        assert_eq!(req.metadata[0].r#type, 1);
        let body = encode(std::iter::once(&p));
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let back = <WriteRequest as prost::Message>::decode(raw.as_slice()).unwrap();
        assert_eq!(back, req);
    }
}

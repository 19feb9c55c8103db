//! Prometheus remote-write 1.0 wire types (`prometheus.WriteRequest`,
//! snappy block-compressed protobuf) and their decoding into a
//! [`Prepared`](super::series::Prepared) request.
//!
//! Label names and values are declared as protobuf `bytes` (the same wire
//! type as `string`) backed by [`Bytes`], so decoding a request slices the
//! decompressed body instead of allocating a string per label; UTF-8 is
//! checked in [`SeriesBuilder`](super::series::SeriesBuilder).

use bytes::Bytes;

use super::series::{MetricType, SeriesBuilder, SeriesError};

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

/// `prometheus.TimeSeries`. Exemplars (tag 3) are skipped; native
/// histograms (tag 4) are only counted, as unsupported.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(bytes = "bytes", repeated, tag = "4")]
    pub histograms: Vec<Bytes>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

impl Label {
    pub fn new(name: &str, value: &str) -> Label {
        Label {
            name: Bytes::copy_from_slice(name.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }
}

/// `prometheus.Sample`: a value and its time in Unix milliseconds.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// `prometheus.MetricMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricMetadata {
    /// `MetricType`: 0 unknown, 1 counter, 2 gauge, 3 histogram,
    /// 4 gaugehistogram, 5 summary, 6 info, 7 stateset.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

/// Decodes a decompressed `WriteRequest` body.
pub fn decode(body: Bytes) -> Result<WriteRequest, prost::DecodeError> {
    <WriteRequest as prost::Message>::decode(body)
}

/// Validates every series of `req` into `builder`. A structural error
/// (labels unsorted, duplicated, invalid, no metric name) refuses the
/// whole request; bad values are refused one by one inside the builder.
pub fn prepare(req: &WriteRequest, builder: &mut SeriesBuilder) -> Result<(), SeriesError> {
    let mut labels: Vec<(&str, &str)> = Vec::with_capacity(16);
    for (index, ts) in req.timeseries.iter().enumerate() {
        labels.clear();
        for l in &ts.labels {
            let name = std::str::from_utf8(&l.name)
                .map_err(|_| SeriesError::new(index, "labels", "label name is not UTF-8"))?;
            let value = std::str::from_utf8(&l.value).map_err(|_| {
                SeriesError::new(
                    index,
                    "labels",
                    format!("value of label {name:?} is not UTF-8"),
                )
            })?;
            labels.push((name, value));
        }
        builder.series(
            index,
            &labels,
            ts.samples.iter().map(|s| (s.value, s.timestamp)),
        )?;
        if !ts.histograms.is_empty() {
            builder.refuse_n("native_histogram", ts.histograms.len() as u64, || {
                format!("series {index}: native histograms are not supported")
            });
        }
    }
    for m in &req.metadata {
        builder.metric_type(
            &m.metric_family_name,
            MetricType::from_remote_write(m.r#type),
        );
    }
    Ok(())
}

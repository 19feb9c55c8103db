//! Prometheus wire code shared by every component that speaks it (the
//! collector's remote-write receiver and `/federate`, the metrics agent's
//! push and `/metrics`): the remote-write 1.0 protobuf messages, the
//! metric types, and the text exposition format's writer.

use std::fmt::Write as _;

/// `prometheus.WriteRequest` (remote-write 1.0, snappy block-compressed
/// on the wire).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

/// `prometheus.TimeSeries`. Exemplars (tag 3) are not read; native
/// histograms (tag 4) are kept as raw messages (receivers only count
/// them, as unsupported).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub histograms: Vec<Vec<u8>>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

impl Label {
    pub fn new(name: &str, value: &str) -> Label {
        Label {
            name: name.to_string(),
            value: value.to_string(),
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

/// The Prometheus type of a metric family, as far as its sender told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    Untyped,
    Counter,
    Gauge,
    Histogram,
    Summary,
}

impl MetricType {
    /// The name in a `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Untyped => "untyped",
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Summary => "summary",
        }
    }

    /// From remote-write's `MetricMetadata.type`.
    pub fn from_remote_write(t: i32) -> MetricType {
        match t {
            1 => MetricType::Counter,
            2 => MetricType::Gauge,
            3 => MetricType::Histogram,
            5 => MetricType::Summary,
            _ => MetricType::Untyped,
        }
    }

    /// As remote-write's `MetricMetadata.type`.
    pub fn to_remote_write(self) -> i32 {
        match self {
            MetricType::Untyped => 0,
            MetricType::Counter => 1,
            MetricType::Gauge => 2,
            MetricType::Histogram => 3,
            MetricType::Summary => 5,
        }
    }
}

/// The text exposition format 0.0.4 (`text/plain; version=0.0.4`).
pub mod text {
    use super::*;

    /// Appends a `# TYPE` line.
    pub fn write_type(out: &mut String, name: &str, t: MetricType) {
        let _ = writeln!(out, "# TYPE {name} {}", t.as_str());
    }

    /// Appends one sample line: `name{k="v",...} value [timestamp_ms]`
    /// (no braces without labels); label values escaped.
    pub fn write_sample<'a>(
        out: &mut String,
        name: &str,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
        value: f64,
        timestamp_ms: Option<i64>,
    ) {
        out.push_str(name);
        let mut first = true;
        for (k, v) in labels {
            out.push(if first { '{' } else { ',' });
            first = false;
            out.push_str(k);
            out.push_str("=\"");
            escape_label_value(out, v);
            out.push('"');
        }
        if !first {
            out.push('}');
        }
        out.push(' ');
        push_float(out, value);
        if let Some(ts) = timestamp_ms {
            let _ = write!(out, " {ts}");
        }
        out.push('\n');
    }

    /// A label value with `\`, `"` and newlines escaped.
    pub fn escape_label_value(out: &mut String, v: &str) {
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
    }

    /// A float as the text format writes it (`NaN`, `+Inf`, `-Inf`).
    pub fn push_float(out: &mut String, v: f64) {
        if v.is_nan() {
            out.push_str("NaN");
        } else if v == f64::INFINITY {
            out.push_str("+Inf");
        } else if v == f64::NEG_INFINITY {
            out.push_str("-Inf");
        } else {
            let _ = write!(out, "{v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_escape_and_write_specials() {
        let mut out = String::new();
        text::write_type(&mut out, "m", MetricType::Counter);
        text::write_sample(
            &mut out,
            "m",
            [("a", "x\"y\\z\nw")],
            f64::NEG_INFINITY,
            Some(7),
        );
        text::write_sample(&mut out, "up", std::iter::empty(), 1.0, None);
        assert_eq!(
            out,
            "# TYPE m counter\nm{a=\"x\\\"y\\\\z\\nw\"} -Inf 7\nup 1\n"
        );
    }

    #[test]
    fn metric_types_round_trip_through_remote_write() {
        for t in [
            MetricType::Untyped,
            MetricType::Counter,
            MetricType::Gauge,
            MetricType::Histogram,
            MetricType::Summary,
        ] {
            assert_eq!(MetricType::from_remote_write(t.to_remote_write()), t);
        }
    }

    #[test]
    fn write_request_round_trips() {
        let req = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![Label::new("__name__", "m")],
                samples: vec![Sample {
                    value: 1.5,
                    timestamp: 9,
                }],
                histograms: Vec::new(),
            }],
            metadata: Vec::new(),
        };
        let bytes = prost::Message::encode_to_vec(&req);
        assert_eq!(
            <WriteRequest as prost::Message>::decode(bytes.as_slice()).ok(),
            Some(req)
        );
    }
}

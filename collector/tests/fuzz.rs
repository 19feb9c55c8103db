//! Property tests ("fuzzing"): every decoder a client reaches never panics,
//! whatever bytes or text it gets, and valid input round-trips.
//!
//! - the ingest decoder: zstd / gzip / identity, then MessagePack, then the
//!   validation into stored lines (`prepare`);
//! - the remote-write decoder (snappy, then the protobuf walk into series);
//! - the OTLP metrics decoder (protobuf, then the mapping into series);
//! - the LogQL parser and the `/federate` selector parser.
//!
//! Each property runs `FUZZ_CASES` cases (default 2,000, a few seconds in
//! all); `FUZZ_CASES=1000000 cargo test --release -p collector --test fuzz`
//! is the long run recorded in BENCHMARKS.md ("Fuzzing").

use collector::logs::ingest::{decode, decompress, prepare, IngestLimits};
use collector::logs::query::{parse, parse_expr_with, Expr, QueryLimits};
use collector::metrics::otlp;
use collector::metrics::remote_write::{self, Label, Sample, TimeSeries, WriteRequest};
use collector::metrics::selector::Selector;
use collector::metrics::series::SeriesBuilder;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use proptest::prelude::*;
use schemas::{Body, IngestBatch, Level, LogBody, Record};

/// Cases per property: `FUZZ_CASES`, else 2,000.
fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // Shrinking a failure of a million-case run must not take hours.
        max_shrink_iters: 10_000,
        ..ProptestConfig::default()
    }
}

const NOW: i64 = 1_700_000_000_000_000_000;

fn batch(n: usize) -> Vec<u8> {
    let records = (0..n as u64)
        .map(|s| Record {
            seq: s + 1,
            ts: NOW + s as i64,
            source: "n".into(),
            subscription: "a".into(),
            body: Body::Log(LogBody {
                level: Level::Info,
                target: "t".into(),
                message: format!("m{s}"),
                fields: [("pipe".to_string(), serde_json::json!(format!("p{s}")))]
                    .into_iter()
                    .collect(),
            }),
        })
        .collect();
    schemas::to_msgpack(&IngestBatch {
        epoch: "e-1".into(),
        source: "n".into(),
        subscription: "a".into(),
        records,
        dropped: 0,
    })
    .expect("encode")
}

/// The whole ingest path after the body is read, as the handler runs it.
fn ingest_path(encoding: Option<&str>, body: &[u8]) {
    let Ok(raw) = decompress(encoding, body, 1 << 20) else {
        return;
    };
    let Ok(b) = decode(&raw, 1000) else { return };
    assert!(b.records.len() <= 1000);
    let _ = prepare(b, &IngestLimits::default(), NOW, 0, true);
}

fn remote_write_body(n: usize) -> Vec<u8> {
    let req = WriteRequest {
        timeseries: (0..n)
            .map(|i| TimeSeries {
                labels: vec![
                    Label::new("__name__", &format!("metric_{i}")),
                    Label::new("instance", "vm-1"),
                    Label::new("job", "node"),
                ],
                samples: vec![Sample {
                    value: i as f64,
                    timestamp: NOW / 1_000_000,
                }],
                histograms: Vec::new(),
            })
            .collect(),
        metadata: Vec::new(),
    };
    prost::Message::encode_to_vec(&req)
}

/// The remote-write path after the body is read: snappy, then the walk.
fn remote_write_path(snappy: &[u8]) {
    let Ok(len) = snap::raw::decompress_len(snappy) else {
        return;
    };
    if len > 1 << 20 {
        return;
    }
    let Ok(raw) = snap::raw::Decoder::new().decompress_vec(snappy) else {
        return;
    };
    walk_remote_write(&raw);
}

fn walk_remote_write(raw: &[u8]) {
    let mut b = SeriesBuilder::new(Some("a"), NOW / 1_000_000, 600_000);
    let _ = remote_write::prepare_raw(raw, &mut b);
    assert!(b.prepared.samples.len() <= raw.len());
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn otlp_body(n: usize) -> Vec<u8> {
    let point = |v: f64| NumberDataPoint {
        attributes: vec![kv("device", "eth0")],
        time_unix_nano: NOW as u64,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    };
    let metrics = (0..n)
        .map(|i| Metric {
            name: format!("m{i}"),
            unit: if i % 2 == 0 { "By".into() } else { "s".into() },
            data: Some(if i % 2 == 0 {
                metric::Data::Gauge(Gauge {
                    data_points: vec![point(i as f64)],
                })
            } else {
                metric::Data::Sum(Sum {
                    data_points: vec![point(i as f64)],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })
            }),
            ..Default::default()
        })
        .collect();
    let req = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "agent"), kv("service.instance.id", "vm")],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    prost::Message::encode_to_vec(&req)
}

fn otlp_path(raw: &[u8]) {
    let Ok(req) = otlp::decode(raw) else { return };
    let mut b = SeriesBuilder::new(Some("a"), NOW / 1_000_000, 600_000);
    let _ = otlp::prepare(&req, &mut b);
}

fn mutate(
    mut bytes: Vec<u8>,
    flips: &[(prop::sample::Index, u8)],
    cut: prop::sample::Index,
) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    for (i, b) in flips {
        let at = i.index(bytes.len());
        bytes[at] = *b;
    }
    let end = cut.index(bytes.len() + 1);
    bytes.truncate(end);
    bytes
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ingest_decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        ingest_path(None, &bytes);
        ingest_path(Some("zstd"), &bytes);
        ingest_path(Some("gzip"), &bytes);
    }

    #[test]
    fn ingest_decoder_never_panics_on_mutated_batches(
        n in 1usize..6,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        ingest_path(None, &mutate(batch(n), &flips, cut));
    }

    #[test]
    fn ingest_decoder_never_panics_on_mutated_compressed_batches(
        n in 1usize..6,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        gzip in any::<bool>(),
    ) {
        let raw = batch(n);
        let (encoding, compressed) = if gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, &raw).expect("gzip");
            ("gzip", gz.finish().expect("gzip"))
        } else {
            ("zstd", zstd::encode_all(raw.as_slice(), 1).expect("zstd"))
        };
        ingest_path(Some(encoding), &mutate(compressed, &flips, cut));
    }

    #[test]
    fn valid_batches_decode_and_prepare_exactly(n in 0usize..40) {
        let b = decode(&batch(n), 1000).expect("valid batch decodes");
        prop_assert_eq!(b.records.len(), n);
        prop_assert_eq!(b.epoch.as_str(), "e-1");
        let p = prepare(b, &IngestLimits::default(), NOW, 0, false).expect("valid batch prepares");
        prop_assert_eq!(p.entries.len(), n);
    }

    #[test]
    fn remote_write_decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        remote_write_path(&bytes);
        walk_remote_write(&bytes);
    }

    #[test]
    fn remote_write_decoder_never_panics_on_mutated_requests(
        n in 1usize..6,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        compressed in any::<bool>(),
    ) {
        let raw = remote_write_body(n);
        if compressed {
            let body = snap::raw::Encoder::new().compress_vec(&raw).expect("snappy");
            remote_write_path(&mutate(body, &flips, cut));
        } else {
            walk_remote_write(&mutate(raw, &flips, cut));
        }
    }

    #[test]
    fn otlp_decoder_never_panics_on_arbitrary_or_mutated_requests(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        n in 1usize..6,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        otlp_path(&bytes);
        otlp_path(&mutate(otlp_body(n), &flips, cut));
    }

    #[test]
    fn parser_never_panics_on_arbitrary_text(s in "\\PC{0,80}") {
        let _ = parse(&s);
        let _ = parse_expr_with(&s, &QueryLimits::default());
        let _ = Selector::parse(&s);
    }

    #[test]
    fn metric_parser_never_panics_on_metric_like_text(
        s in r#"(sum|topk|rate|count_over_time|by|without|unwrap|\(|\)|\[|\]|[0-9]+[smhd]|\{\}|[{}=!~|",a-z_0-9 ]){0,30}"#
    ) {
        if let Err(e) = parse_expr_with(&s, &QueryLimits::default()) {
            prop_assert!(e.column >= 1 && e.column <= s.chars().count() + 1, "{e} for {s:?}");
        }
    }

    #[test]
    fn generated_metric_queries_parse(
        name in "[a-z_][a-z0-9_]{0,10}",
        value in "[a-zA-Z0-9 ._-]{0,20}",
        range in 1u32..700,
        unit in "(ms|s|m|h)",
        k in 1usize..100,
        f in 0usize..4,
    ) {
        let func = ["count_over_time", "rate", "bytes_over_time", "bytes_rate"][f];
        let q = format!(r#"topk({k}, sum by ({name}) ({func}({{{name}="{value}"}} |= "x" [{range}{unit}])))"#);
        let parsed = parse_expr_with(&q, &QueryLimits::default());
        prop_assert!(matches!(parsed, Ok(Expr::Metric(_))), "{q}: {parsed:?}");
    }

    #[test]
    fn parser_never_panics_on_logql_like_text(
        s in r#"[{}=!~|"`,a-z_0-9 .*()\[\]\\<>+-]{0,60}"#
    ) {
        if let Err(e) = parse(&s) {
            prop_assert!(e.column >= 1 && e.column <= s.chars().count() + 1, "{e} for {s:?}");
        }
        let _ = Selector::parse(&s);
    }

    #[test]
    fn generated_queries_parse(
        name in "[a-z_][a-z0-9_]{0,10}",
        value in "[a-zA-Z0-9 ._-]{0,20}",
        text in "[a-zA-Z0-9 ]{0,20}",
        n in -1000i64..1000,
    ) {
        let q = format!(r#"{{{name}="{value}", {name}!~"x.*"}} |= "{text}" != "{text}" | json | {name} > {n}"#);
        let parsed = parse(&q);
        prop_assert!(parsed.is_ok(), "{q}: {parsed:?}");
    }
}

#[test]
fn valid_remote_write_and_otlp_requests_decode() {
    let mut b = SeriesBuilder::new(Some("a"), NOW / 1_000_000, 600_000);
    remote_write::prepare_raw(&remote_write_body(5), &mut b).expect("valid");
    assert_eq!(b.prepared.samples.len(), 5);
    let req = otlp::decode(&otlp_body(4)).expect("valid");
    let mut b = SeriesBuilder::new(Some("a"), NOW / 1_000_000, 600_000);
    otlp::prepare(&req, &mut b).expect("valid");
    assert_eq!(b.prepared.samples.len(), 4);
}

//! Metrics ingest over HTTP: remote-write 1.0 and OTLP/HTTP in, `/federate`
//! out, with tenants, staleness, limits, observers and bad input.

mod common;

use std::sync::{Arc, Mutex};

use collector::metrics::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use collector::{MetricLimits, MetricObserver, MetricSample};
use common::*;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

fn now_ms() -> i64 {
    now() / 1_000_000
}

fn series(labels: &[(&str, &str)], value: f64, ts: i64) -> TimeSeries {
    TimeSeries {
        labels: labels.iter().map(|(k, v)| Label::new(k, v)).collect(),
        samples: vec![Sample {
            value,
            timestamp: ts,
        }],
        histograms: vec![],
    }
}

fn snappy(raw: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(raw).unwrap()
}

async fn post_write(h: &Harness, token: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let (status, _, text) = post_remote_write(h, token, body).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

async fn write(h: &Harness, token: &str, ts: Vec<TimeSeries>) -> (u16, serde_json::Value) {
    let req = WriteRequest {
        timeseries: ts,
        metadata: vec![],
    };
    post_write(h, token, snappy(&req.encode_to_vec())).await
}

async fn federate(h: &Harness, token: &str, matches: &[&str]) -> (u16, String) {
    let q: Vec<(&str, &str)> = matches.iter().map(|m| ("match[]", *m)).collect();
    let r = h
        .client
        .get(h.url("/federate"))
        .bearer_auth(token)
        .query(&q)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The sample lines (no comments) of a federate answer, without timestamps.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            l.rsplit_once(' ')
                .map(|(a, _)| a.to_string())
                .unwrap_or_default()
        })
        .collect()
}

const ALL: &str = r#"{__name__=~".+"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_is_federated_per_subscription_with_instance_and_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    let t = now_ms();
    let (status, body) = write(
        &h,
        SHIP_ACME,
        vec![
            series(
                &[
                    ("__name__", "node_load1"),
                    ("instance", "vm-1"),
                    ("job", "node"),
                ],
                0.5,
                t,
            ),
            // No instance; a subscription label that must not win.
            series(&[("__name__", "up"), ("subscription", "beta")], 1.0, t),
        ],
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = write(
        &h,
        SHIP_BETA,
        vec![series(
            &[("__name__", "node_load1"), ("instance", "vm-9")],
            2.0,
            t,
        )],
    )
    .await;
    assert_eq!(status, 204);

    let (status, text) = federate(&h, OP_ACME, &[ALL]).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        lines(&text),
        vec![
            r#"node_load1{instance="vm-1",job="node",subscription="acme"} 0.5"#,
            r#"up{instance="unknown",subscription="acme"} 1"#,
        ],
        "{text}"
    );
    assert!(
        text.contains(&format!(" {t}\n")),
        "timestamps are served: {text}"
    );
    let (_, text) = federate(&h, OP_BETA, &["node_load1"]).await;
    assert_eq!(
        lines(&text),
        vec![r#"node_load1{instance="vm-9",subscription="beta"} 2"#]
    );
    // Admin sees every subscription; selectors narrow.
    let (_, text) = federate(&h, ADMIN, &[r#"node_load1{subscription=~"a.*|beta"}"#]).await;
    assert_eq!(lines(&text).len(), 2, "{text}");
    let (_, text) = federate(&h, ADMIN, &["up", r#"{instance="vm-9"}"#]).await;
    assert_eq!(lines(&text).len(), 2, "union of match[]: {text}");

    // Authorization and bad selectors.
    assert_eq!(federate(&h, SHIP_ACME, &[ALL]).await.0, 403);
    assert_eq!(federate(&h, "nope", &[ALL]).await.0, 401);
    let (status, text) = federate(&h, OP_ACME, &[]).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("match[]"), "{text}");
    let (status, text) = federate(&h, OP_ACME, &[r#"{job=~".*"}"#]).await;
    assert_eq!(status, 400, "{text}");
    // Operators may not push.
    let (status, _) = write(&h, OP_ACME, vec![series(&[("__name__", "x")], 1.0, t)]).await;
    assert_eq!(status, 403);
    // Admin pushes name the subscription per series.
    let (status, body) = write(&h, ADMIN, vec![series(&[("__name__", "x")], 1.0, t)]).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("subscription"))
    );
    let (status, _) = write(
        &h,
        ADMIN,
        vec![series(
            &[("__name__", "x"), ("subscription", "gamma")],
            1.0,
            t,
        )],
    )
    .await;
    assert_eq!(status, 204);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_sample_wins_and_series_older_than_five_minutes_are_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    let t = now_ms();
    let l = [("__name__", "m"), ("instance", "a")];
    assert_eq!(write(&h, SHIP_ACME, vec![series(&l, 2.0, t)]).await.0, 204);
    // An older sample (a replayed backlog) does not replace the newest.
    assert_eq!(
        write(&h, SHIP_ACME, vec![series(&l, 1.0, t - 10_000)])
            .await
            .0,
        204
    );
    let stale = [("__name__", "m"), ("instance", "old")];
    assert_eq!(
        write(&h, SHIP_ACME, vec![series(&stale, 1.0, t - 301_000)])
            .await
            .0,
        204
    );
    let (_, text) = federate(&h, OP_ACME, &["m"]).await;
    assert_eq!(
        lines(&text),
        vec![r#"m{instance="a",subscription="acme"} 2"#],
        "{text}"
    );
    // Prometheus' staleness marker ends the series.
    let marker = f64::from_bits(0x7ff0_0000_0000_0002);
    assert_eq!(
        write(&h, SHIP_ACME, vec![series(&l, marker, t + 1)])
            .await
            .0,
        204
    );
    let (_, text) = federate(&h, OP_ACME, &["m"]).await;
    assert!(lines(&text).is_empty(), "{text}");
    h.stop().await;
}

async fn metric_value(h: &Harness, line_prefix: &str) -> f64 {
    let text = h
        .client
        .get(h.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_remote_write_bodies_get_clear_4xx_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    let t = now_ms();

    // Not snappy at all.
    let (status, body) = post_write(&h, SHIP_ACME, b"\xff\xff\xff\xff\xff\xff\xff".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("snappy"), "{body}");
    // A snappy frame that claims more than it holds.
    let mut truncated = snappy(&[7u8; 1000]);
    truncated.truncate(truncated.len() / 2);
    let (status, body) = post_write(&h, SHIP_ACME, truncated).await;
    assert_eq!(status, 400, "{body}");
    // Valid snappy, not a WriteRequest.
    let (status, body) =
        post_write(&h, SHIP_ACME, snappy(b"\x0a\xff\xff\xff\xff\x0f garbage")).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("body")),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("malformed protobuf"),
        "{body}"
    );
    // A decompression bomb: claims 4 GiB.
    let (status, _) = post_write(&h, SHIP_ACME, vec![0x80, 0x80, 0x80, 0x80, 0x10, 0x00]).await;
    assert!(status == 413 || status == 400, "{status}");

    // Unsorted labels: nothing of the request is stored.
    let (status, body) = write(
        &h,
        SHIP_ACME,
        vec![
            series(&[("__name__", "good")], 1.0, t),
            series(&[("__name__", "bad"), ("z", "1"), ("a", "2")], 1.0, t),
        ],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["index"], 1, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not sorted"),
        "{body}"
    );
    let (status, body) = write(
        &h,
        SHIP_ACME,
        vec![series(
            &[("__name__", "dup"), ("a", "1"), ("a", "2")],
            1.0,
            t,
        )],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("twice"), "{body}");
    let (_, text) = federate(&h, OP_ACME, &[ALL]).await;
    assert!(
        lines(&text).is_empty(),
        "refused requests store nothing: {text}"
    );

    // NaN and Inf: those samples are refused, the rest stored, 400 says so.
    let (status, body) = write(
        &h,
        SHIP_ACME,
        vec![
            series(&[("__name__", "ok")], 1.0, t),
            series(&[("__name__", "nan")], f64::NAN, t),
            series(&[("__name__", "inf")], f64::INFINITY, t),
        ],
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("value")),
        "{body}"
    );
    assert_eq!(
        (body["accepted"].as_u64(), body["refused"].as_u64()),
        (Some(1), Some(2))
    );
    let err = body["error"].as_str().unwrap();
    assert!(err.contains("NaN") && err.contains("inf"), "{err}");
    let (_, text) = federate(&h, OP_ACME, &[ALL]).await;
    assert_eq!(
        lines(&text),
        vec![r#"ok{instance="unknown",subscription="acme"} 1"#]
    );

    // Wrong media type, wrong encoding, remote-write 2.0, no token.
    let r = h
        .client
        .post(h.url("/api/v1/write"))
        .bearer_auth(SHIP_ACME)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = h
        .client
        .post(h.url("/api/v1/write"))
        .bearer_auth(SHIP_ACME)
        .header(
            "content-type",
            "application/x-protobuf;proto=io.prometheus.write.v2.Request",
        )
        .body(snappy(b""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = h
        .client
        .post(h.url("/api/v1/write"))
        .bearer_auth(SHIP_ACME)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(snappy(b""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(post_write(&h, "wrong", snappy(b"")).await.0, 401);

    assert!(
        metric_value(
            &h,
            "collector_metrics_requests_refused_total{reason=\"bad_snappy\"}"
        )
        .await
            >= 2.0
    );
    assert_eq!(
        metric_value(
            &h,
            "collector_metrics_requests_refused_total{reason=\"malformed\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric_value(
            &h,
            "collector_metrics_requests_refused_total{reason=\"unsorted_labels\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric_value(
            &h,
            "collector_metrics_requests_refused_total{reason=\"duplicate_label\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric_value(
            &h,
            "collector_metrics_samples_refused_total{reason=\"nan\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric_value(
            &h,
            "collector_metrics_samples_refused_total{reason=\"inf\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric_value(
            &h,
            "collector_metrics_requests_refused_total{reason=\"unauthorized\"}"
        )
        .await,
        1.0
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_over_the_limit_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start_with(dir.path(), |c| {
        c.metric_limits = MetricLimits {
            max_series_per_subscription: 3,
            ..MetricLimits::default()
        }
    })
    .await;
    let t = now_ms();
    let ts: Vec<TimeSeries> = (0..5)
        .map(|i| series(&[("__name__", "m"), ("i", &i.to_string())], 1.0, t))
        .collect();
    let (status, body) = write(&h, SHIP_ACME, ts).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("series")),
        "{body}"
    );
    assert_eq!(body["refused"], 2);
    assert_eq!(body["reasons"]["series_limit"], 2);
    // Existing series still update, other subscriptions have their own room.
    let (status, _) = write(
        &h,
        SHIP_ACME,
        vec![series(&[("__name__", "m"), ("i", "0")], 5.0, t + 1)],
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(
        write(&h, SHIP_BETA, vec![series(&[("__name__", "m")], 1.0, t)])
            .await
            .0,
        204
    );
    let (_, text) = federate(&h, ADMIN, &["m"]).await;
    assert_eq!(lines(&text).len(), 4, "{text}");
    assert!(
        text.contains(r#"m{i="0",instance="unknown",subscription="acme"} 5"#),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &h,
            "collector_metrics_samples_refused_total{reason=\"series_limit\"}"
        )
        .await,
        2.0
    );
    assert_eq!(metric_value(&h, "collector_metrics_series ").await, 4.0);
    h.stop().await;
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

fn point(attrs: Vec<KeyValue>, v: f64, t_ms: i64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        time_unix_nano: t_ms as u64 * 1_000_000,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

fn otlp_request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "agent"),
                    kv("service.instance.id", "vm-2"),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn post_otlp(h: &Harness, token: &str, req: &ExportMetricsServiceRequest) -> (u16, Vec<u8>) {
    let r = h
        .client
        .post(h.url("/v1/metrics"))
        .bearer_auth(token)
        .header("content-type", "application/x-protobuf")
        .body(req.encode_to_vec())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(String, MetricSample)>>);

impl MetricObserver for Recorder {
    fn samples(&self, subscription: &str, samples: &[MetricSample]) {
        let mut g = self.0.lock().unwrap();
        g.extend(
            samples
                .iter()
                .map(|s| (subscription.to_string(), s.clone())),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_metrics_are_federated_and_observers_see_accepted_samples() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Arc::new(Recorder::default());
    let r2 = rec.clone();
    let h = Harness::start_with(dir.path(), move |c| c.metric_observers.push(r2)).await;
    let t = now_ms();
    let req = otlp_request(vec![
        Metric {
            name: "node_memory_MemAvailable_bytes".into(),
            unit: "By".into(),
            data: Some(metric::Data::Gauge(Gauge {
                data_points: vec![point(vec![], 1024.0, t)],
            })),
            ..Default::default()
        },
        Metric {
            name: "node_cpu_seconds".into(),
            unit: "s".into(),
            data: Some(metric::Data::Sum(Sum {
                data_points: vec![point(vec![kv("cpu", "0"), kv("mode", "idle")], 12.5, t)],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        },
        Metric {
            name: "latency".into(),
            unit: "s".into(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    time_unix_nano: t as u64 * 1_000_000,
                    count: 3,
                    sum: Some(0.6),
                    bucket_counts: vec![1, 2],
                    explicit_bounds: vec![0.1],
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        },
    ]);
    let (status, body) = post_otlp(&h, SHIP_ACME, &req).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (_, text) = federate(&h, OP_ACME, &[ALL]).await;
    assert_eq!(
        lines(&text),
        vec![
            r#"latency_seconds_bucket{instance="vm-2",job="agent",le="+Inf",subscription="acme"} 3"#,
            r#"latency_seconds_bucket{instance="vm-2",job="agent",le="0.1",subscription="acme"} 1"#,
            r#"latency_seconds_count{instance="vm-2",job="agent",subscription="acme"} 3"#,
            r#"latency_seconds_sum{instance="vm-2",job="agent",subscription="acme"} 0.6"#,
            r#"node_cpu_seconds_total{cpu="0",instance="vm-2",job="agent",mode="idle",subscription="acme"} 12.5"#,
            r#"node_memory_MemAvailable_bytes{instance="vm-2",job="agent",subscription="acme"} 1024"#,
        ],
        "{text}"
    );
    assert!(
        text.contains("# TYPE node_cpu_seconds_total counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE node_memory_MemAvailable_bytes gauge"),
        "{text}"
    );

    let seen = rec.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 6, "{seen:?}");
    let (sub, cpu) = seen
        .iter()
        .find(|(_, s)| s.name == "node_cpu_seconds_total")
        .unwrap();
    assert_eq!(sub, "acme");
    assert_eq!((cpu.value, cpu.timestamp_ms), (12.5, t));
    let names: Vec<&str> = cpu.labels.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["cpu", "instance", "job", "mode", "subscription"]);

    // Delta sums cannot be represented: refused, counted, not observed.
    let delta = otlp_request(vec![Metric {
        name: "requests".into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: vec![point(vec![], 1.0, t)],
            aggregation_temporality: AggregationTemporality::Delta as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }]);
    let (status, body) = post_otlp(&h, SHIP_ACME, &delta).await;
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["reasons"]["delta_temporality"], 1, "{body}");
    // Garbage and JSON bodies.
    let r = h
        .client
        .post(h.url("/v1/metrics"))
        .bearer_auth(SHIP_ACME)
        .header("content-type", "application/x-protobuf")
        .body(vec![0x0a, 0xff, 0xff, 0x01])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = h
        .client
        .post(h.url("/v1/metrics"))
        .bearer_auth(SHIP_ACME)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(rec.0.lock().unwrap().len(), 6);
    h.stop().await;
}

/// `n` remote-write bodies of `per` series each (distinct per body, the
/// same for every call with `tag`; samples stamped now), for concurrent
/// pushes.
fn bodies(tag: &str, n: usize, per: usize) -> Vec<Vec<u8>> {
    let t = now_ms();
    (0..n)
        .map(|b| {
            let ts = (0..per)
                .map(|i| {
                    let host = format!("{tag}-{b}-{i}");
                    series(&[("__name__", "node_load1"), ("instance", &host)], 1.0, t)
                })
                .collect();
            snappy(
                &WriteRequest {
                    timeseries: ts,
                    metadata: vec![],
                }
                .encode_to_vec(),
            )
        })
        .collect()
}

/// Pushes `bodies` at once with `token`; every one must be accepted.
async fn push_concurrently(h: &Harness, token: &str, bodies: Vec<Vec<u8>>) {
    let pushes = bodies.into_iter().map(|b| post_remote_write(h, token, b));
    for (status, _, text) in futures::future::join_all(pushes).await {
        assert_eq!(status, 204, "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_tenants_concurrent_pushes_skip_the_bulk_lane_a_neighbours_presence_sends_them_there(
) {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    let bulk = "collector_ingest_bulk_decodes_total ";
    // acme alone: 8 concurrent pushes, three times; nobody waits behind
    // them, so none is demoted.
    for _ in 0..3 {
        push_concurrently(&h, SHIP_ACME, bodies("acme", 8, 1_000)).await;
    }
    assert_eq!(
        metric_value(&h, bulk).await,
        0.0,
        "a lone tenant is never demoted"
    );
    // beta was just served: acme's concurrent pushes now go to the bulk
    // lane (at least one of 8 overlapping pushes finds another in flight).
    let mut demoted = 0.0;
    for _ in 0..10 {
        let (status, _) = write(
            &h,
            SHIP_BETA,
            vec![series(
                &[("__name__", "up"), ("instance", "b")],
                1.0,
                now_ms(),
            )],
        )
        .await;
        assert_eq!(status, 204);
        push_concurrently(&h, SHIP_ACME, bodies("acme", 8, 1_000)).await;
        demoted = metric_value(&h, bulk).await;
        if demoted > 0.0 {
            break;
        }
    }
    assert!(
        demoted > 0.0,
        "with a neighbour active, concurrent pushes take the bulk lane"
    );
}

/// beta pushes one small series (so it was served in the last second).
async fn beta_writes(h: &Harness, instance: &str) {
    let up = series(&[("__name__", "up"), ("instance", instance)], 1.0, now_ms());
    let (status, _) = write(h, SHIP_BETA, vec![up]).await;
    assert_eq!(status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_alone_in_flight_takes_the_bulk_lane_only_beside_a_neighbour() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start_with(dir.path(), |c| c.admission.bulk_body_bytes = 4 << 10).await;
    let bulk = "collector_ingest_bulk_decodes_total ";
    let large = || bodies("acme", 1, 1_000).remove(0);
    assert!(large().len() >= 4 << 10);
    // acme alone, one large push at a time: never demoted.
    for _ in 0..3 {
        push_concurrently(&h, SHIP_ACME, vec![large()]).await;
    }
    assert_eq!(
        metric_value(&h, bulk).await,
        0.0,
        "a lone tenant keeps its priority"
    );
    // beta was just served: acme's large push (alone in flight) goes to the
    // bulk lane; beta's small one does not.
    beta_writes(&h, "b").await;
    push_concurrently(&h, SHIP_ACME, vec![large()]).await;
    assert_eq!(
        metric_value(&h, bulk).await,
        1.0,
        "the large body took the bulk lane"
    );
    beta_writes(&h, "b2").await;
    assert_eq!(
        metric_value(&h, bulk).await,
        1.0,
        "a small body keeps its priority"
    );
    // A log batch that is small compressed but expands past the bound is
    // judged by what it expands to (its decompression runs first).
    let t = now_ms() * 1_000_000;
    let records = (1..=200)
        .map(|seq| log_record("acme", "node-1", seq, t + seq as i64, "steady"))
        .collect();
    let batch = common::batch("acme", "node-1", records);
    let raw = schemas::to_msgpack(&batch).unwrap();
    let z = zstd::encode_all(raw.as_slice(), 3).unwrap();
    assert!(
        z.len() < 4 << 10 && raw.len() >= 4 << 10,
        "{} {}",
        z.len(),
        raw.len()
    );
    beta_writes(&h, "b3").await;
    assert_eq!(h.post_raw(SHIP_ACME, z, Some("zstd")).await.status(), 200);
    assert_eq!(
        metric_value(&h, bulk).await,
        2.0,
        "judged by its decompressed size"
    );
    h.stop().await;
}

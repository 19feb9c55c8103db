use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use schemas::{Body, EventType, ExecutionBody, Level, LogBody, Record};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::outbox::{OutboxConfig, WhenFull};
use crate::redact::{RedactConfig, Redactor};
use testkit::receiver::Receiver;

fn log(i: u64, msg: &str) -> Record {
    Record {
        seq: 0,
        ts: schemas::time::now_nanos(),
        source: "node-a".into(),
        subscription: "sub-1".into(),
        body: Body::Log(LogBody {
            level: Level::Info,
            target: "t".into(),
            message: format!("{msg} {i}"),
            fields: Default::default(),
        }),
    }
}

fn config() -> DeliveryConfig {
    DeliveryConfig {
        max_batch_records: NonZeroUsize::new(100).unwrap(),
        linger: Duration::from_millis(5),
        backoff: Backoff {
            base: Duration::from_millis(5),
            cap: Duration::from_millis(50),
        },
        ..DeliveryConfig::default()
    }
}

struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), DeliveryError>>,
    metrics: DeliveryMetrics,
}

async fn start(
    outbox: &Outbox,
    url: &str,
    filter: Option<RecordFilter>,
    redactor: Arc<Redactor>,
) -> Running {
    let endpoint = CollectorEndpoint::new(url, "test-token", Duration::from_secs(5)).unwrap();
    start_with(outbox, Arc::new(endpoint), filter, redactor, config())
}

fn start_with<E: Endpoint>(
    outbox: &Outbox,
    endpoint: Arc<E>,
    filter: Option<RecordFilter>,
    redactor: Arc<Redactor>,
    config: DeliveryConfig,
) -> Running {
    let shutdown = CancellationToken::new();
    let metrics = DeliveryMetrics::default();
    let sink = Sink {
        outbox: outbox.clone(),
        endpoint,
        redactor,
        filter,
        config,
        metrics: metrics.clone(),
    };
    let task = tokio::spawn(sink.run(shutdown.clone()));
    Running {
        shutdown,
        task,
        metrics,
    }
}

fn failures(m: &DeliveryMetrics, reason: &str) -> u64 {
    m.failures
        .get_or_create(&metrics::ReasonLabel {
            sink: "collector".into(),
            reason: reason.into(),
        })
        .get()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn default_redactor() -> Arc<Redactor> {
    Arc::new(Redactor::new(&RedactConfig::default()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_record_once_and_acknowledges_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    let rx = Receiver::default();
    let (url, _server) = rx.start().await.unwrap();
    let run = start(&outbox, &url, None, default_redactor()).await;
    for chunk in 0..10 {
        let records: Vec<Record> = (0..100).map(|i| log(chunk * 100 + i, "hello")).collect();
        outbox.append(&records).await.unwrap();
    }
    wait_for("1000 records stored and acknowledged", || {
        rx.stored() == 1000 && outbox.stats().records == 0
    })
    .await;
    run.shutdown.cancel();
    run.task.await.unwrap().unwrap();
    let got = rx.received.lock().unwrap();
    assert_eq!(got.duplicates, 0);
    for seq in 1..=1000u64 {
        let r = &got.records[&("sub-1".to_string(), "node-a".to_string(), seq)];
        match &r.body {
            Body::Log(l) => assert_eq!(l.message, format!("hello {}", seq - 1)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(outbox.sink("collector").unwrap().acked, 1000);
    assert_eq!(
        run.metrics
            .records_sent
            .get_or_create(&run.metrics.sink("collector"))
            .get(),
        1000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_throttling_and_garbage_answers_are_retried_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    let rx = Receiver::default();
    {
        let mut f = rx.faults.lock().unwrap();
        f.unavailable = 6;
        f.throttled = 3;
        f.garbage = 2;
    }
    let (url, _server) = rx.start().await.unwrap();
    let run = start(&outbox, &url, None, default_redactor()).await;
    let records: Vec<Record> = (0..500).map(|i| log(i, "x")).collect();
    outbox.append(&records).await.unwrap();
    wait_for("all stored", || {
        rx.stored() == 500 && outbox.stats().records == 0
    })
    .await;
    run.shutdown.cancel();
    run.task.await.unwrap().unwrap();
    let label = run.metrics.sink("collector");
    assert!(run.metrics.retries.get_or_create(&label).get() >= 11);
    let garbage = run
        .metrics
        .failures
        .get_or_create(&metrics::ReasonLabel {
            sink: "collector".into(),
            reason: "garbage_answer".into(),
        })
        .get();
    assert_eq!(
        garbage, 2,
        "a 2xx that is not an ingest answer is a failed attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_and_the_stream_continues() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    let rx = Receiver::default();
    rx.faults.lock().unwrap().poison = Some("POISON".into());
    let (url, _server) = rx.start().await.unwrap();
    let run = start(&outbox, &url, None, default_redactor()).await;
    let mut records: Vec<Record> = (0..80).map(|i| log(i, "fine")).collect();
    records[37] = log(37, "POISON");
    outbox.append(&records).await.unwrap();
    wait_for("79 stored", || {
        rx.stored() == 79 && outbox.stats().records == 0
    })
    .await;
    outbox.append(&[log(100, "after")]).await.unwrap();
    wait_for("the stream continues", || rx.stored() == 80).await;
    run.shutdown.cancel();
    run.task.await.unwrap().unwrap();
    let q = outbox.quarantined(10).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].0, 38, "seq of the poison record");
    assert!(q[0].1.contains("400"), "{}", q[0].1);
    assert_eq!(
        run.metrics
            .dead_letters
            .get_or_create(&run.metrics.sink("collector"))
            .get(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_records_never_leave_but_are_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    let rx = Receiver::default();
    let (url, _server) = rx.start().await.unwrap();
    let filter: RecordFilter = Arc::new(|r: &Record| match &r.body {
        Body::Execution(e) => e.pipe != "private-pipe",
        _ => true,
    });
    let run = start(&outbox, &url, Some(filter), default_redactor()).await;
    let exec = |pipe: &str| Record {
        body: Body::Execution(Box::new(ExecutionBody::new(pipe, EventType::PumpCompleted))),
        ..log(0, "")
    };
    outbox
        .append(&[
            exec("private-pipe"),
            exec("orders"),
            log(1, "x"),
            exec("private-pipe"),
        ])
        .await
        .unwrap();
    wait_for("acknowledged", || outbox.stats().records == 0).await;
    run.shutdown.cancel();
    run.task.await.unwrap().unwrap();
    let got = rx.received.lock().unwrap();
    assert_eq!(got.records.len(), 2);
    assert!(got.records.values().all(|r| match &r.body {
        Body::Execution(e) => e.pipe == "orders",
        _ => true,
    }));
    assert_eq!(
        run.metrics
            .filtered
            .get_or_create(&run.metrics.sink("collector"))
            .get(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_redacted_before_they_leave() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    let rx = Receiver::default();
    rx.received.lock().unwrap().keep_bodies = true;
    let (url, _server) = rx.start().await.unwrap();
    let redactor = default_redactor();
    redactor.set_secrets(["node-secret-value-42"]);
    let run = start(&outbox, &url, None, redactor).await;
    let mut failed = ExecutionBody::new("orders", EventType::PumpFailed);
    failed.exception_entity = Some(serde_json::json!({"_id": "e1", "ssn": "01019012345"}));
    failed.traceback = Some("POST https://bob:hunter2x@crm/ with node-secret-value-42".into());
    outbox
        .append(&[
            Record {
                body: Body::Execution(Box::new(failed)),
                ..log(0, "")
            },
            log(1, "Authorization: Bearer abcdefghij"),
        ])
        .await
        .unwrap();
    wait_for("stored", || rx.stored() == 2).await;
    run.shutdown.cancel();
    run.task.await.unwrap().unwrap();
    let got = rx.received.lock().unwrap();
    for body in &got.bodies {
        for secret in [
            "01019012345",
            "hunter2x",
            "node-secret-value-42",
            "abcdefghij",
        ] {
            assert!(
                !body.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} shipped"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_are_reported_downstream_once_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        max_records: std::num::NonZeroU64::new(10).unwrap(),
        when_full: WhenFull::DropNewest,
        ..OutboxConfig::default()
    };
    let outbox = Outbox::open(dir.path(), config).unwrap();
    outbox.register_sink("collector").await.unwrap();
    // The receiver is not running yet: 15 records into a 10-record outbox.
    let receipt = outbox
        .append(&(0..15).map(|i| log(i, "d")).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(receipt.dropped, 5);
    let rx = Receiver::default();
    let (url, _server) = rx.start().await.unwrap();
    let run = start(&outbox, &url, None, default_redactor()).await;
    wait_for("stored", || {
        rx.stored() == 10 && outbox.stats().records == 0
    })
    .await;
    run.shutdown.cancel();
    run.task.await.unwrap().unwrap();
    assert_eq!(rx.received.lock().unwrap().dropped_reported, 5);
    assert_eq!(outbox.sink("collector").unwrap().dropped_reported, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_the_collector_is_down_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    let rx = Receiver::default();
    rx.faults.lock().unwrap().unavailable = u32::MAX;
    let (url, _server) = rx.start().await.unwrap();
    let run = start(&outbox, &url, None, default_redactor()).await;
    outbox
        .append(&(0..50).map(|i| log(i, "k")).collect::<Vec<_>>())
        .await
        .unwrap();
    wait_for("a few failed attempts", || {
        rx.received.lock().unwrap().requests >= 3
    })
    .await;
    run.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), run.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outbox.stats().records, 50);
    assert_eq!(outbox.sink("collector").unwrap().acked, 0);
}

#[test]
fn answers_are_classified() {
    use reqwest::StatusCode;
    let ok = r#"{"accepted":3,"duplicates":0}"#;
    assert_eq!(
        collector::classify(StatusCode::OK, None, ok),
        SendOutcome::Delivered
    );
    assert!(matches!(
        collector::classify(StatusCode::OK, None, "<html>"),
        SendOutcome::Retry {
            reason: "garbage_answer",
            ..
        }
    ));
    assert!(matches!(
        collector::classify(StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(2)), ""),
        SendOutcome::Retry { reason: "throttled", after: Some(d), .. } if d == Duration::from_secs(2)
    ));
    assert!(matches!(
        collector::classify(StatusCode::BAD_GATEWAY, None, ""),
        SendOutcome::Retry { .. }
    ));
    assert!(matches!(
        collector::classify(StatusCode::PAYLOAD_TOO_LARGE, None, "big"),
        SendOutcome::Reject { status: 413, .. }
    ));
    assert!(matches!(
        collector::classify(StatusCode::UNAUTHORIZED, None, ""),
        SendOutcome::Retry {
            reason: "unauthorized",
            ..
        }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_sink_exports_every_record_over_http_after_a_failure() {
    use axum::body::Bytes;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
    };
    use prost::Message;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Seen {
        requests: u32,
        bodies: Vec<String>,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s2 = seen.clone();
    let app = axum::Router::new().route(
        "/v1/logs",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let seen = s2.clone();
            async move {
                let mut s = seen.lock().unwrap();
                s.requests += 1;
                if s.requests == 1 {
                    return (StatusCode::SERVICE_UNAVAILABLE, Vec::new()).into_response();
                }
                assert_eq!(headers["content-type"], "application/x-protobuf");
                let req = match ExportLogsServiceRequest::decode(body.as_ref()) {
                    Ok(r) => r,
                    Err(_) => return (StatusCode::BAD_REQUEST, Vec::new()).into_response(),
                };
                for rl in req.resource_logs {
                    for sl in rl.scope_logs {
                        for lr in sl.log_records {
                            if let Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(v)) =
                                lr.body.and_then(|b| b.value)
                            {
                                s.bodies.push(v);
                            }
                        }
                    }
                }
                (StatusCode::OK, ExportLogsServiceResponse::default().encode_to_vec()).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    let shutdown = CancellationToken::new();
    let sink = Sink {
        outbox: outbox.clone(),
        endpoint: Arc::new(
            OtlpEndpoint::new(
                &format!("http://{addr}"),
                None,
                "sesam-test",
                Duration::from_secs(5),
            )
            .unwrap(),
        ),
        redactor: default_redactor(),
        filter: None,
        config: DeliveryConfig {
            sink: "otlp".into(),
            ..config()
        },
        metrics: DeliveryMetrics::default(),
    };
    let task = tokio::spawn(sink.run(shutdown.clone()));
    let mut records: Vec<Record> = (0..300).map(|i| log(i, "otlp")).collect();
    records.push(log(300, "token AKIAIOSFODNN7EXAMPLE"));
    outbox.append(&records).await.unwrap();
    wait_for("exported and acknowledged", || {
        seen.lock().unwrap().bodies.len() == 301 && outbox.stats().records == 0
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let s = seen.lock().unwrap();
    assert!(s.requests >= 2, "the first answer was a 503");
    // Batches travel in parallel, so arrival order is not seq order; each
    // record arrives once.
    let got: std::collections::BTreeSet<&str> = s.bodies.iter().map(String::as_str).collect();
    assert_eq!(got.len(), 301);
    assert!((0..300).all(|i| got.contains(format!("otlp {i}").as_str())));
    assert!(
        !s.bodies.iter().any(|b| b.contains("AKIAIOSFODNN7EXAMPLE")),
        "redacted before export"
    );
}

/// An endpoint whose first `panics` sends panic, as a bug in an endpoint
/// (or in the code under it) would.
struct Panicky {
    inner: CollectorEndpoint,
    panics: std::sync::atomic::AtomicU32,
}

impl Endpoint for Panicky {
    fn compatible(&self, a: &Record, b: &Record) -> bool {
        self.inner.compatible(a, b)
    }
    fn encode_record(&self, record: &Record, out: &mut Vec<u8>) -> Result<(), String> {
        self.inner.encode_record(record, out)
    }
    fn begin_body(&self, out: &mut Vec<u8>) {
        self.inner.begin_body(out)
    }
    fn finish_body(
        &self,
        epoch: &str,
        source: &str,
        subscription: &str,
        count: usize,
        records: &mut Vec<u8>,
        dropped: u64,
    ) -> Result<Vec<u8>, String> {
        self.inner
            .finish_body(epoch, source, subscription, count, records, dropped)
    }
    async fn send(&self, body: bytes::Bytes) -> SendOutcome {
        use std::sync::atomic::Ordering;
        if self
            .panics
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("endpoint bug (injected by the test)");
        }
        self.inner.send(body).await
    }
}

/// Regression: a panicking batch task left its slot undone for good, so the
/// cursor never moved past it again and the outbox never drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_batch_task_is_dispatched_again_and_leaves_no_hole() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    let rx = Receiver::default();
    let (url, _server) = rx.start().await.unwrap();
    let endpoint = Panicky {
        inner: CollectorEndpoint::new(&url, "test-token", Duration::from_secs(5)).unwrap(),
        panics: 3.into(),
    };
    let run = start_with(
        &outbox,
        Arc::new(endpoint),
        None,
        default_redactor(),
        config(),
    );
    outbox
        .append(&(0..500).map(|i| log(i, "p")).collect::<Vec<_>>())
        .await
        .unwrap();
    wait_for("every record stored and the outbox drained", || {
        rx.stored() == 500 && outbox.stats().records == 0
    })
    .await;
    run.shutdown.cancel();
    run.task.await.unwrap().unwrap();
    assert_eq!(failures(&run.metrics, "task_failed"), 3);
    let got = rx.received.lock().unwrap();
    assert!((1..=500u64).all(|seq| got.records.contains_key(&(
        "sub-1".into(),
        "node-a".into(),
        seq
    ))));
    assert_eq!(outbox.sink("collector").unwrap().acked, 500);
}

/// Regression: `Retry-After: 1e20` panicked the delivery task
/// (`Duration::from_secs_f64`); other nonsense must not wedge it either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_retry_after_values_are_clamped_or_ignored() {
    for value in ["1e20", "-1", "NaN", "garbage", "99999999999999999999999"] {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
        let rx = Receiver::default();
        {
            let mut f = rx.faults.lock().unwrap();
            f.throttled = 3;
            f.retry_after = Some(value.into());
        }
        let (url, _server) = rx.start().await.unwrap();
        let endpoint = CollectorEndpoint::new(&url, "test-token", Duration::from_secs(5)).unwrap();
        let run = start_with(
            &outbox,
            Arc::new(endpoint),
            None,
            default_redactor(),
            DeliveryConfig {
                max_retry_after: Duration::from_millis(200),
                ..config()
            },
        );
        outbox
            .append(&(0..200).map(|i| log(i, "t")).collect::<Vec<_>>())
            .await
            .unwrap();
        wait_for("stored", || {
            rx.stored() == 200 && outbox.stats().records == 0
        })
        .await;
        run.shutdown.cancel();
        run.task.await.unwrap().unwrap();
        assert_eq!(failures(&run.metrics, "throttled"), 3, "{value}");
        assert_eq!(failures(&run.metrics, "task_failed"), 0, "{value}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_conflict_is_retried_never_split_or_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    let rx = Receiver::default();
    rx.faults.lock().unwrap().conflict = 5;
    let (url, _server) = rx.start().await.unwrap();
    let run = start(&outbox, &url, None, default_redactor()).await;
    outbox
        .append(&(0..300).map(|i| log(i, "c")).collect::<Vec<_>>())
        .await
        .unwrap();
    wait_for("stored once the conflict clears", || {
        rx.stored() == 300 && outbox.stats().records == 0
    })
    .await;
    run.shutdown.cancel();
    run.task.await.unwrap().unwrap();
    assert_eq!(failures(&run.metrics, "source_conflict"), 5);
    let label = run.metrics.sink("collector");
    assert_eq!(run.metrics.dead_letters.get_or_create(&label).get(), 0);
    assert!(outbox.quarantined(10).unwrap().is_empty());
    // Never split: 300 records in batches of 100 are 3 batches, each
    // delivered whole.
    assert_eq!(run.metrics.batches_sent.get_or_create(&label).get(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_epoch_travels_with_every_batch() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    let rx = Receiver::default();
    let (url, _server) = rx.start().await.unwrap();
    let run = start(&outbox, &url, None, default_redactor()).await;
    outbox
        .append(&(0..250).map(|i| log(i, "e")).collect::<Vec<_>>())
        .await
        .unwrap();
    wait_for("stored", || rx.stored() == 250).await;
    run.shutdown.cancel();
    run.task.await.unwrap().unwrap();
    let epochs = rx.received.lock().unwrap().epochs.clone();
    assert_eq!(
        epochs.into_iter().collect::<Vec<_>>(),
        vec![outbox.epoch().to_string()]
    );
}

/// A port nothing listens on.
fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_fails_over_to_the_next_and_stays_there() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    // The first collector refuses connections, the second answers 503 for
    // ever, the third works.
    let broken = Receiver::default();
    broken.faults.lock().unwrap().unavailable = u32::MAX;
    let (broken_url, _b) = broken.start().await.unwrap();
    let rx = Receiver::default();
    let (url, _server) = rx.start().await.unwrap();
    let endpoint = Arc::new(
        CollectorEndpoint::with_failover(
            &[closed_port_url(), broken_url.clone(), url.clone()],
            "test-token",
            Duration::from_secs(5),
        )
        .unwrap(),
    );
    let failovers = endpoint.failovers();
    let run = start_with(
        &outbox,
        endpoint.clone(),
        None,
        default_redactor(),
        config(),
    );
    for chunk in 0..10u64 {
        outbox
            .append(
                &(0..100)
                    .map(|i| log(chunk * 100 + i, "f"))
                    .collect::<Vec<_>>(),
            )
            .await
            .unwrap();
    }
    wait_for("stored by the working collector", || {
        rx.stored() == 1000 && outbox.stats().records == 0
    })
    .await;
    run.shutdown.cancel();
    run.task.await.unwrap().unwrap();
    assert_eq!(
        failovers.get(),
        2,
        "one switch per failed collector: sticky"
    );
    assert_eq!(endpoint.current(), url.as_str());
    // Only the batches in flight at the switch reached the broken one.
    let broken_requests = broken.received.lock().unwrap().requests;
    assert!(
        broken_requests <= 4,
        "{broken_requests} requests to the 503 collector"
    );
    assert_eq!(rx.received.lock().unwrap().duplicates, 0);
    assert_eq!(
        failures(&run.metrics, "network"),
        0,
        "failover within a round is not a failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_collector_fails_the_round_backs_off_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    let rx = Receiver::default();
    rx.faults.lock().unwrap().unavailable = 4;
    let (url, _server) = rx.start().await.unwrap();
    let endpoint = Arc::new(
        CollectorEndpoint::with_failover(
            &[closed_port_url(), url.clone()],
            "test-token",
            Duration::from_secs(5),
        )
        .unwrap(),
    );
    let run = start_with(&outbox, endpoint, None, default_redactor(), config());
    outbox
        .append(&(0..100).map(|i| log(i, "r")).collect::<Vec<_>>())
        .await
        .unwrap();
    wait_for("stored", || {
        rx.stored() == 100 && outbox.stats().records == 0
    })
    .await;
    run.shutdown.cancel();
    run.task.await.unwrap().unwrap();
    assert!(failures(&run.metrics, "server_error") + failures(&run.metrics, "network") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_leaves_while_the_secret_values_cannot_be_compiled() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    let rx = Receiver::default();
    rx.received.lock().unwrap().keep_bodies = true;
    let (url, _server) = rx.start().await.unwrap();
    let redactor = default_redactor();
    redactor.set_secrets_size_limit(64);
    let secrets: Vec<String> = (0..50).map(|i| format!("new-node-secret-{i:04}")).collect();
    assert!(redactor.try_set_secrets(&secrets).is_err());
    assert!(redactor.check().is_err());
    let run = start(&outbox, &url, None, redactor.clone()).await;
    outbox
        .append(&[log(0, "login with new-node-secret-0007")])
        .await
        .unwrap();
    wait_for("the producer noticed", || {
        failures(&run.metrics, "redaction_unavailable") >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rx.received.lock().unwrap().requests, 0, "fail closed");
    redactor.set_secrets_size_limit(64 << 20);
    assert_eq!(redactor.try_set_secrets(&secrets).unwrap(), 50);
    wait_for("shipped once redaction is whole", || rx.stored() == 1).await;
    run.shutdown.cancel();
    run.task.await.unwrap().unwrap();
    let got = rx.received.lock().unwrap();
    assert!(!got
        .bodies
        .iter()
        .any(|b| b.windows(15).any(|w| w == b"new-node-secret")));
}

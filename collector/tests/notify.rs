//! The notifier inside the collector, over real HTTP: the rules, receivers,
//! silences, alerts and history API, delivery of ingested failures to a
//! webhook, persistence across a restart, and a real Alertmanager (Debian's
//! `prometheus-alertmanager`) receiving and resolving an alert.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use common::*;
use schemas::EventType;
use serde_json::{json, Value};
use testkit::free_port;

type Got = Arc<Mutex<Vec<Value>>>;

/// A collector whose notifier may reach this host's loopback (where the
/// tests' receivers listen); everything else of the egress policy holds.
async fn start(dir: &std::path::Path) -> Harness {
    Harness::start_with(dir, |c| {
        c.notifier.egress = notifier::EgressPolicy::allowing(&["127.0.0.1/32"]);
    })
    .await
}

async fn webhook() -> (String, Got) {
    async fn hook(State(g): State<Got>, body: Bytes) -> &'static str {
        g.lock()
            .unwrap()
            .push(serde_json::from_slice(&body).unwrap());
        "ok"
    }
    let got = Got::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(got.clone());
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}/hook"), got)
}

async fn send(h: &Harness, method: &str, token: &str, path: &str, body: Value) -> (u16, Value) {
    let req = match method {
        "POST" => h.client.post(h.url(path)),
        "PUT" => h.client.put(h.url(path)),
        "DELETE" => h.client.delete(h.url(path)),
        _ => h.client.get(h.url(path)),
    };
    let req = if body.is_null() { req } else { req.json(&body) };
    let r = req.bearer_auth(token).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    for _ in 0..300 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn failed(seq: u64, pipe: &str) -> schemas::Record {
    exec_record(
        "acme",
        "node-1",
        seq,
        now(),
        pipe,
        EventType::PumpFailed,
        None,
    )
}

fn completed(seq: u64, pipe: &str) -> schemas::Record {
    exec_record(
        "acme",
        "node-1",
        seq,
        now(),
        pipe,
        EventType::PumpCompleted,
        Some(1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_alerts_and_notifications_over_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path()).await;
    let (url, got) = webhook().await;

    // Receivers and rules, with the errors a user meets.
    let (st, body) = send(
        &h,
        "PUT",
        OP_ACME,
        "/api/v1/receivers/ops",
        json!({"type": "webhook", "url": url, "secret": "k"}),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["secret"], "<set>");
    let (st, body) = send(
        &h,
        "PUT",
        OP_ACME,
        "/api/v1/receivers/bad",
        json!({"type": "webhook", "url": "file:///etc/passwd"}),
    )
    .await;
    assert_eq!((st, body["field"].as_str()), (400, Some("url")), "{body}");
    let rule = json!({"name": "Orders failed", "type": "pump_failed", "pipes": ["orders"], "receivers": ["ops"], "severity": "critical"});
    let (st, body) = send(
        &h,
        "POST",
        OP_ACME,
        "/api/v1/notification-rules",
        rule.clone(),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let id = body["rule"]["id"].as_str().unwrap().to_string();
    assert_eq!(body["rule"]["subscription"], "acme");
    assert_eq!(body["rule"]["repeat_interval"], "1h");
    for (bad, field) in [
        (json!({"name": "x", "type": "pump_exploded"}), "type"),
        (
            json!({"name": "x", "type": "pattern_match", "params": {"field": "traceback", "pattern": "(", "syntax": "regex"}}),
            "params.pattern",
        ),
        (
            json!({"name": "x", "type": "pump_finished_overdue", "params": {}}),
            "params.limit",
        ),
        (
            json!({"name": "x", "type": "pump_failed", "receivers": ["nobody"]}),
            "receivers[0]",
        ),
        (
            json!({"name": "x", "type": "pump_failed", "pipes": ["[oops"]}),
            "pipes[0]",
        ),
        (
            json!({"name": "x", "type": "pump_failed", "colour": "red"}),
            "body",
        ),
    ] {
        let (st, body) = send(
            &h,
            "POST",
            OP_ACME,
            "/api/v1/notification-rules",
            bad.clone(),
        )
        .await;
        assert_eq!(st, 400, "{bad} -> {body}");
        assert_eq!(body["field"], field, "{bad} -> {body}");
    }
    let (st, _) = send(
        &h,
        "POST",
        OP_BETA,
        "/api/v1/notification-rules",
        json!({"name": "x", "type": "pump_failed", "subscription": "acme"}),
    )
    .await;
    assert_eq!(st, 403);
    let (st, _) = send(
        &h,
        "GET",
        SHIP_ACME,
        "/api/v1/notification-rules",
        Value::Null,
    )
    .await;
    assert_eq!(st, 403);
    let (st, _) = send(
        &h,
        "GET",
        OP_BETA,
        &format!("/api/v1/notification-rules/{id}"),
        Value::Null,
    )
    .await;
    assert_eq!(st, 404);
    let (_, body) = send(
        &h,
        "GET",
        OP_BETA,
        "/api/v1/notification-rules",
        Value::Null,
    )
    .await;
    assert_eq!(body["rules"].as_array().unwrap().len(), 0);
    let (st, body) = send(
        &h,
        "GET",
        OP_ACME,
        "/api/v1/notification-rule-types",
        Value::Null,
    )
    .await;
    assert_eq!(st, 200);
    let types = body["types"].as_array().unwrap();
    assert_eq!(types.len(), 10);
    assert!(types.iter().any(|t| t["type"] == "metric_threshold"
        && t["params_schema"]["properties"]["metric"].is_object()));

    // A failure ingested by the shipper reaches the webhook.
    h.ingest_ok(
        SHIP_ACME,
        &batch(
            "acme",
            "node-1",
            vec![failed(1, "orders"), failed(2, "customers")],
        ),
    )
    .await;
    until("webhook", || async { got.lock().unwrap().len() == 1 }).await;
    let p = got.lock().unwrap()[0].clone();
    assert_eq!(p["status"], "firing");
    assert_eq!(p["alerts"][0]["labels"]["pipe"], "orders");
    assert_eq!(p["alerts"][0]["labels"]["severity"], "critical");
    let (_, body) = send(&h, "GET", OP_ACME, "/api/v1/alerts", Value::Null).await;
    assert_eq!(body["alerts"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["alerts"][0]["status"]["state"], "active");
    let (_, body) = send(&h, "GET", OP_BETA, "/api/v1/alerts", Value::Null).await;
    assert_eq!(body["alerts"].as_array().unwrap().len(), 0);
    until("history", || async {
        let (_, b) = send(&h, "GET", OP_ACME, "/api/v1/notifications", Value::Null).await;
        b["notifications"][0]["status"] == "delivered"
    })
    .await;
    let (st, body) = send(
        &h,
        "GET",
        OP_ACME,
        "/api/v1/notifications?status=bogus",
        Value::Null,
    )
    .await;
    assert_eq!((st, body["field"].as_str()), (400, Some("status")));

    // Silences: create, list, a foreign operator cannot delete, delete.
    let ends = schemas::time::rfc3339_from_nanos(now() + 3600 * 1_000_000_000);
    let (st, body) = send(&h, "POST", OP_ACME, "/api/v1/silences", json!({"matchers": [{"name": "pipe", "value": "orders"}], "endsAt": ends, "comment": "deploy"})).await;
    assert_eq!(st, 201, "{body}");
    let sid = body["silenceID"].as_str().unwrap().to_string();
    let (_, body) = send(&h, "GET", OP_ACME, "/api/v1/alerts", Value::Null).await;
    assert_eq!(body["alerts"][0]["status"]["state"], "suppressed");
    let (st, _) = send(
        &h,
        "DELETE",
        OP_BETA,
        &format!("/api/v1/silences/{sid}"),
        Value::Null,
    )
    .await;
    assert_eq!(st, 404);
    let (st, body) = send(
        &h,
        "POST",
        OP_ACME,
        "/api/v1/silences",
        json!({"matchers": [], "endsAt": ends}),
    )
    .await;
    assert_eq!((st, body["field"].as_str()), (400, Some("matchers")));
    let (st, _) = send(
        &h,
        "DELETE",
        OP_ACME,
        &format!("/api/v1/silences/{sid}"),
        Value::Null,
    )
    .await;
    assert_eq!(st, 204);

    // A restart keeps rules, receivers and the firing alert, and pages no
    // second time; the next successful run resolves it.
    h.stop().await;
    let h = start(dir.path()).await;
    let (st, body) = send(
        &h,
        "GET",
        OP_ACME,
        &format!("/api/v1/notification-rules/{id}"),
        Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let (_, body) = send(&h, "GET", OP_ACME, "/api/v1/alerts", Value::Null).await;
    assert_eq!(body["alerts"].as_array().unwrap().len(), 1);
    h.ingest_ok(
        SHIP_ACME,
        &batch("acme", "node-1", vec![failed(3, "orders")]),
    )
    .await;
    h.ingest_ok(
        SHIP_ACME,
        &batch("acme", "node-1", vec![completed(4, "orders")]),
    )
    .await;
    until("resolved", || async { got.lock().unwrap().len() == 2 }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let all = got.lock().unwrap().clone();
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(all[1]["status"], "resolved");
    let (st, _) = send(&h, "DELETE", OP_ACME, "/api/v1/receivers/ops", Value::Null).await;
    assert_eq!(st, 409, "a receiver in use is not deleted");
    let (st, _) = send(
        &h,
        "DELETE",
        OP_ACME,
        &format!("/api/v1/notification-rules/{id}"),
        Value::Null,
    )
    .await;
    assert_eq!(st, 204);
    // Termination forgets the subscription's rules and receivers.
    let (st, _) = send(
        &h,
        "DELETE",
        ADMIN,
        "/api/v1/subscriptions/acme",
        Value::Null,
    )
    .await;
    assert!(st < 300);
    let (_, body) = send(&h, "GET", ADMIN, "/api/v1/receivers", Value::Null).await;
    assert_eq!(body["receivers"].as_array().unwrap().len(), 0, "{body}");
    h.stop().await;
}

/// Stops the child process when dropped.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_receives_and_resolves_the_alert() {
    let bin = std::path::Path::new("/usr/bin/prometheus-alertmanager");
    if !bin.exists() {
        eprintln!(
            "SKIPPED: {} is not installed (./scripts/setup.sh installs it)",
            bin.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let am_dir = dir.path().join("am");
    std::fs::create_dir_all(&am_dir).unwrap();
    let cfg = am_dir.join("alertmanager.yml");
    std::fs::write(
        &cfg,
        "route:\n  receiver: blackhole\n  group_wait: 1s\nreceivers:\n  - name: blackhole\n",
    )
    .unwrap();
    let port = free_port();
    let am = Child(
        std::process::Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.path={}", am_dir.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start alertmanager"),
    );
    let am_url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    until("alertmanager ready", || async {
        client
            .get(format!("{am_url}/-/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;

    let h = start(&dir.path().join("collector")).await;
    let (st, body) = send(
        &h,
        "PUT",
        OP_ACME,
        "/api/v1/receivers/am",
        json!({"type": "alertmanager", "url": am_url}),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let (st, body) = send(&h, "POST", OP_ACME, "/api/v1/notification-rules", json!({
        "id": "orders-failed", "name": "OrdersFailed", "type": "pump_failed", "pipes": ["orders"], "receivers": ["am"],
    }))
    .await;
    assert_eq!(st, 201, "{body}");
    h.ingest_ok(
        SHIP_ACME,
        &batch("acme", "node-1", vec![failed(1, "orders")]),
    )
    .await;

    let am_alerts = || async {
        let r = client
            .get(format!("{am_url}/api/v2/alerts"))
            .send()
            .await
            .unwrap();
        r.json::<Vec<Value>>().await.unwrap()
    };
    until("the alert in Alertmanager", || async {
        am_alerts()
            .await
            .iter()
            .any(|a| a["labels"]["alertname"] == "OrdersFailed")
    })
    .await;
    let a = am_alerts()
        .await
        .into_iter()
        .find(|a| a["labels"]["alertname"] == "OrdersFailed")
        .unwrap();
    assert_eq!(a["labels"]["pipe"], "orders");
    assert_eq!(a["labels"]["subscription"], "acme");
    assert_eq!(a["status"]["state"], "active");
    assert!(a["annotations"]["summary"]
        .as_str()
        .unwrap()
        .contains("orders"));

    h.ingest_ok(
        SHIP_ACME,
        &batch("acme", "node-1", vec![completed(2, "orders")]),
    )
    .await;
    until("the alert resolved in Alertmanager", || async {
        !am_alerts()
            .await
            .iter()
            .any(|a| a["labels"]["alertname"] == "OrdersFailed")
    })
    .await;
    let (_, body) = send(&h, "GET", OP_ACME, "/api/v1/notifications", Value::Null).await;
    let list = body["notifications"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|n| n["status"] == "delivered"), "{list:#?}");
    h.stop().await;
    drop(am);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_threshold_fires_from_remote_write_and_resolves() {
    use collector::metrics::remote_write::{Label, Sample, TimeSeries, WriteRequest};
    use prost::Message;

    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path()).await;
    let (url, got) = webhook().await;
    let (st, _) = send(
        &h,
        "PUT",
        OP_ACME,
        "/api/v1/receivers/ops",
        json!({"type": "webhook", "url": url}),
    )
    .await;
    assert_eq!(st, 201);
    let (st, body) = send(&h, "POST", OP_ACME, "/api/v1/notification-rules", json!({
        "name": "DiskLow", "type": "metric_threshold", "receivers": ["ops"],
        "params": {"metric": "node_filesystem_avail_bytes", "labels": {"mountpoint": "/"}, "op": "<", "value": 1000},
    }))
    .await;
    assert_eq!(st, 201, "{body}");
    let push = |value: f64| {
        let req = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![
                    Label::new("__name__", "node_filesystem_avail_bytes"),
                    Label::new("instance", "node-1"),
                    Label::new("mountpoint", "/"),
                ],
                samples: vec![Sample {
                    value,
                    timestamp: now() / 1_000_000,
                }],
                histograms: vec![],
            }],
            metadata: vec![],
        };
        let body = snap::raw::Encoder::new()
            .compress_vec(&req.encode_to_vec())
            .unwrap();
        h.client
            .post(h.url("/api/v1/write"))
            .bearer_auth(SHIP_ACME)
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", "snappy")
            .header("x-prometheus-remote-write-version", "0.1.0")
            .body(body)
            .send()
    };
    assert!(push(5000.0).await.unwrap().status().is_success());
    assert!(push(10.0).await.unwrap().status().is_success());
    until("firing", || async { got.lock().unwrap().len() == 1 }).await;
    let p = got.lock().unwrap()[0].clone();
    assert_eq!(p["status"], "firing");
    assert_eq!(
        p["alerts"][0]["labels"]["metric"],
        "node_filesystem_avail_bytes"
    );
    assert_eq!(p["alerts"][0]["labels"]["source"], "node-1");
    assert_eq!(p["alerts"][0]["labels"]["mountpoint"], "/");
    assert_eq!(p["alerts"][0]["annotations"]["value"], "10");
    assert!(push(4000.0).await.unwrap().status().is_success());
    until("resolved", || async { got.lock().unwrap().len() == 2 }).await;
    assert_eq!(got.lock().unwrap()[1]["status"], "resolved");
    h.stop().await;
}

/// The evaluation queue is bounded in bytes as well as in records: large
/// records beyond it wait in the store's commit feed (on disk), are read
/// back in byte-bounded chunks, and each is evaluated once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_records_beyond_the_queues_byte_bound_wait_in_the_feed_and_page_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start_with(dir.path(), |c| {
        c.notifier.egress = notifier::EgressPolicy::allowing(&["127.0.0.1/32"]);
        c.notifier.queue_bytes = 256 << 10;
        c.notifier.limits.max_deferred_bytes_per_subscription = 128 << 10;
    })
    .await;
    let (url, got) = webhook().await;
    let (st, body) = send(
        &h,
        "PUT",
        OP_ACME,
        "/api/v1/receivers/ops",
        json!({"type": "webhook", "url": url}),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let (st, body) = send(
        &h,
        "POST",
        OP_ACME,
        "/api/v1/notification-rules",
        json!({"name": "failed", "type": "pump_failed", "receivers": ["ops"]}),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    // 60 failures with 32 KiB reasons, 10 per batch: each batch is over
    // the subscription's bound and, with the next one, over the queue's.
    let reason = testkit::records::noise(32 << 10);
    let mut seq = 0;
    for _ in 0..6 {
        let records = (0..10)
            .map(|_| {
                seq += 1;
                let mut r = failed(seq, &format!("p-{seq}"));
                if let schemas::Body::Execution(e) = &mut r.body {
                    e.reason_why_stopped = Some(reason.clone());
                }
                r
            })
            .collect();
        assert_eq!(
            h.ingest_ok(SHIP_ACME, &batch("acme", "node-1", records))
                .await,
            (10, 0)
        );
    }
    until("a page for each of the 60 failures", || {
        let got = got.clone();
        async move { got.lock().unwrap().len() >= 60 }
    })
    .await;
    // No page twice, none lost, and the records went through the feed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut pipes: Vec<String> = got
        .lock()
        .unwrap()
        .iter()
        .map(|n| {
            n["alerts"][0]["labels"]["pipe"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(pipes.len(), 60, "{pipes:?}");
    pipes.sort();
    pipes.dedup();
    assert_eq!(pipes.len(), 60, "each failure pages once");
    let metrics = h
        .client
        .get(h.url("/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sample = |name| testkit::process::metric_sum(&metrics, name).unwrap_or(0.0);
    assert!(
        sample("notifier_evaluation_spilled_records_total") > 0.0,
        "{metrics}"
    );
    assert!(
        sample("notifier_feed_read_records_total") > 0.0,
        "{metrics}"
    );
    h.stop().await;
}

//! Hostile input is normal input: every bound of the node API refuses with
//! a 4xx naming the field and the limit (and is counted), data directories
//! are private, the health endpoint answers 200 for a degraded node and 503
//! only when it cannot work, and `json` systems cannot make the node buffer
//! unbounded answers or follow redirects elsewhere.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn embedded(id: &str, entities: Value) -> Value {
    json!({"_id": id, "type": "pipe", "source": {"type": "embedded", "entities": entities}, "pump": {"mode": "manual"}})
}

fn refused(metrics: &str, reason: &str) -> f64 {
    let prefix = format!("sesam_node_api_refused_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directories_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // An older version (or a hand) left the data directory open.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let node = start(dir.path(), &json!([embedded("a", json!([{"_id": "1"}]))])).await;
    for d in [data.clone(), data.join("node"), data.join("outbox")] {
        assert_eq!(
            sesam_common::files::mode(&d).unwrap(),
            0o700,
            "{}",
            d.display()
        );
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_health_is_200_and_a_full_outbox_is_503() {
    let dir = tempfile::tempdir().unwrap();
    let config = json!([
        {"_id": "node", "type": "metadata", "monitoring": {"enabled": true}},
        {"_id": "bad", "type": "pipe",
         "source": {"type": "embedded", "entities": [{"_id": "o1", "n": "n/a"}]},
         "transform": {"type": "dtl", "rules": {"default": [["add", "n", ["integer", "_S.n"]]]}},
         "pump": {"mode": "manual"}},
    ]);
    let node = start_with(dir.path(), &config, |c| {
        c.limits.health_min_interval = Duration::ZERO;
        c.outbox.max_records = std::num::NonZeroU64::new(40).unwrap();
        c.outbox.block_timeout = Duration::from_millis(200);
    })
    .await;
    let (_, failed) = node.run_pipe("bad").await;
    assert_eq!(failed["event_type"], "pump-failed");
    // One pipe's data error: degraded, but the node works.
    let r = node
        .client
        .get(node.url("/api/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "degraded", "{body}");
    assert!(
        body["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "pipes" && c["status"] == "degraded"),
        "{body}"
    );

    // Without a shipper nothing drains the outbox: runs fill it until
    // appends are refused, and the node cannot work any more.
    let mut last = Value::Null;
    for _ in 0..40 {
        node.run_pipe("bad").await;
        let r = node
            .client
            .get(node.url("/api/health"))
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        last = r.json().await.unwrap();
        if code == 503 {
            assert_eq!(last["status"], "failed", "{last}");
            let outbox = last["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == "outbox")
                .cloned()
                .unwrap();
            assert_eq!(outbox["status"], "failed", "{last}");
            node.stop().await;
            return;
        }
        assert_eq!(code, 200, "{last}");
    }
    panic!("the outbox never filled: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_bounds_refuse_with_the_field_and_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let entities: Vec<Value> = (0..30)
        .map(|i| json!({"_id": format!("e{i}"), "pad": "p".repeat(1000)}))
        .collect();
    let node = start_with(
        dir.path(),
        &json!([embedded("a", Value::Array(entities))]),
        |c| {
            c.limits.max_config_bytes = 4096;
            c.limits.max_config_entities = 3;
            c.limits.max_secrets_bytes = 2048;
            c.limits.max_secrets = 2;
            c.limits.max_page_entities = 20;
            c.limits.max_page_bytes = 5000;
        },
    )
    .await;
    node.run_pipe("a").await;

    // limit above the bound.
    let (status, body, _) = node.get("/api/datasets/a/entities?limit=21").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "limit");
    assert!(body["error"].as_str().unwrap().contains("20"), "{body}");
    // A page stops at the byte bound (at least one entity), since continues.
    let (status, page, _) = node.get("/api/datasets/a/entities?limit=20").await;
    assert_eq!(status, 200);
    let n = page.as_array().unwrap().len();
    assert!((1..20).contains(&n), "{n} entities in a 5000-byte page");
    let last = page[n - 1]["_updated"].as_u64().unwrap();
    let (_, next, _) = node
        .get(&format!("/api/datasets/a/entities?limit=20&since={last}"))
        .await;
    assert_eq!(next[0]["_updated"].as_u64().unwrap(), last + 1);
    let (status, body, _) = node.get("/api/datasets/a/entities?since=-1").await;
    assert_eq!((status, body["field"].as_str()), (400, Some("since")));

    // Config body and entity count.
    let big = json!([embedded(
        "b",
        json!([{"_id": "x", "pad": "p".repeat(5000)}])
    )]);
    let (status, body) = node.put_json("/api/config", &big).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["field"], "body");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--max-config-bytes"),
        "{body}"
    );
    let many = json!([
        embedded("c1", json!([])),
        embedded("c2", json!([])),
        embedded("c3", json!([])),
        embedded("c4", json!([]))
    ]);
    let (status, body) = node.put_json("/api/config", &many).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--max-config-entities"),
        "{body}"
    );
    // Strings and URLs in the configuration.
    let long_id = json!([embedded(&"i".repeat(1025), json!([]))]);
    let (status, body) = node.put_json("/api/config", &long_id).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("_id")),
        "{body}"
    );
    let file_url = json!([{"_id": "s", "type": "system:url", "base_url": "file:///etc/passwd"}]);
    let (status, body) = node.put_json("/api/config", &file_url).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("base_url")),
        "{body}"
    );

    // Secrets: body size, count, name length.
    let (status, body) = node
        .put_json("/api/secrets", &json!({"a": "v".repeat(3000)}))
        .await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--max-secrets-bytes"),
        "{body}"
    );
    let (status, body) = node
        .put_json("/api/secrets", &json!({"a": "1", "b": "2", "c": "3"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("--max-secrets"),
        "{body}"
    );
    let (status, _) = node
        .put_json("/api/secrets", &json!({"a": "1", "b": "2"}))
        .await;
    assert_eq!(status, 200);
    let r = node
        .client
        .post(node.url("/api/secrets"))
        .bearer_auth(TOKEN)
        .json(&json!({"c": "3"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a merge past the count is refused too");
    let (status, _) = node
        .put_json("/api/secrets", &json!({"n".repeat(1025): "1"}))
        .await;
    assert_eq!(status, 400);

    // The pump operation body.
    let r = node
        .client
        .post(node.url("/api/pipes/a/pump"))
        .bearer_auth(TOKEN)
        .body(format!("operation=start&x={}", "y".repeat(70_000)))
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["field"], "body");

    // A long id in the path is echoed cut short.
    let (status, body, _) = node.get(&format!("/api/pipes/{}", "z".repeat(5000))).await;
    assert_eq!(status, 404);
    assert!(body["_id"].as_str().unwrap().len() < 300, "{body}");

    // Unauthenticated requests are refused and counted too.
    let r = node
        .client
        .get(node.url("/api/pipes"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let (_, _, metrics) = node.get("/api/metrics").await;
    for reason in [
        "limit_too_large",
        "body_too_large",
        "too_many_entities",
        "too_many_secrets",
        "unauthorized",
        "invalid_config",
    ] {
        assert!(
            refused(&metrics, reason) >= 1.0,
            "{reason} not counted:\n{metrics}"
        );
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), &json!([embedded("a", json!([]))]), |c| {
        c.limits.max_concurrent_requests = 1;
    })
    .await;
    // A client that sends half a body holds the only slot.
    let addr = node.base.trim_start_matches("http://").to_string();
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stalled,
        "PUT /api/config HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[{{"
    )
    .unwrap();
    stalled.flush().unwrap();
    let mut busy = None;
    // Generous: a loaded machine may take a while to read the stalled headers.
    for _ in 0..500 {
        let r = node
            .client
            .get(node.url("/api/pipes"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            assert_eq!(r.headers()["retry-after"], "1");
            busy = Some(r.json::<Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let busy = busy.unwrap_or_else(|| {
        stalled
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let n = stalled.read(&mut buf).unwrap_or(0);
        panic!(
            "a second request is refused while the slot is held; the stalled request got: {}",
            String::from_utf8_lossy(&buf[..n])
        )
    });
    assert!(
        busy["error"]
            .as_str()
            .unwrap()
            .contains("--max-concurrent-requests"),
        "{busy}"
    );
    // Health and ping are not counted against the bound.
    let r = node.client.get(node.url("/api/ping")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = node
        .client
        .get(node.url("/api/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The stalled client goes away: the slot returns.
    stalled.shutdown(std::net::Shutdown::Both).unwrap();
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest);
    drop(stalled);
    let mut ok = false;
    for _ in 0..100 {
        let (status, _, _) = node.get("/api/pipes").await;
        if status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the slot was never released");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_systems_cannot_send_unbounded_answers_or_redirect_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = http_system().await;
    let config = json!([
        {"_id": "api", "type": "system:url", "base_url": format!("{base}/api")},
        {"_id": "big", "type": "pipe", "source": {"type": "json", "system": "api", "url": "big"}, "pump": {"mode": "manual"}},
        {"_id": "same", "type": "pipe", "source": {"type": "json", "system": "api", "url": "redirect-same"}, "pump": {"mode": "manual"}},
        {"_id": "away", "type": "pipe", "source": {"type": "json", "system": "api", "url": "redirect-away"}, "pump": {"mode": "manual"}},
    ]);
    let node = start_with(dir.path(), &config, |c| {
        c.limits.max_source_bytes = 1 << 20;
    })
    .await;
    let (_, f) = node.run_pipe("big").await;
    assert_eq!(f["event_type"], "pump-failed", "{f}");
    let why = f["reason_why_stopped"].as_str().unwrap();
    assert!(
        why.contains("--max-source-response-bytes") && why.contains("1048576"),
        "{why}"
    );
    let (_, done) = node.run_pipe("same").await;
    assert_eq!(done["event_type"], "pump-completed", "{done}");
    assert_eq!(done["metrics"]["entities.entities_last_run"], 2);
    let (_, f) = node.run_pipe("away").await;
    assert_eq!(f["event_type"], "pump-failed", "{f}");
    let why = f["reason_why_stopped"].as_str().unwrap();
    assert!(why.contains("another origin"), "{why}");
    node.stop().await;
}

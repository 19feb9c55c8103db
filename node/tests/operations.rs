//! Configuration changes, bad input, failing systems and pump operations.

mod common;

use std::time::{Duration, Instant};

use common::*;
use schemas::{Body, Kind};
use serde_json::{json, Value};

fn embedded(id: &str, entities: Value) -> Value {
    json!({"_id": id, "type": "pipe", "source": {"type": "embedded", "entities": entities}, "pump": {"mode": "manual"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configs_are_refused_whole_and_valid_ones_replace_the_running_config() {
    let dir = tempfile::tempdir().unwrap();
    let initial = json!([embedded("a", json!([{"_id": "1"}]))]);
    let node = start(dir.path(), &initial).await;

    let cases: Vec<(Value, &str, &str, &str)> = vec![
        (
            json!([embedded("a", json!([])), {"_id": "b", "type": "pipe", "source": {"type": "ftp", "host": "x"}}]),
            "b",
            "source.type",
            "ftp",
        ),
        (
            json!([{"_id": "c", "type": "pipe", "source": {"type": "embedded", "entities": []},
                    "transform": {"type": "dtl", "rules": {"default": [["copy", "*"], ["add", "x", ["upper", "_S.x"]]]}}}]),
            "c",
            "transform.rules.default[1][2]",
            "upper",
        ),
        (
            json!([{"_id": "d", "type": "pipe", "source": {"type": "embedded", "entities": []}, "sink": {"type": "kafka"}}]),
            "d",
            "sink.type",
            "kafka",
        ),
        (
            json!([{"_id": "e", "type": "pipe", "source": {"type": "json", "system": "missing"}}]),
            "e",
            "source.system",
            "missing",
        ),
        (
            json!([{"_id": "f", "type": "pipe", "source": {"type": "embedded", "entities": []}, "pump": {"cron_expr": "every tuesday"}}]),
            "f",
            "pump.cron_expr",
            "every tuesday",
        ),
        // A misspelt required property: the unknown one is only a warning,
        // the missing one is the error.
        (
            json!([{"_id": "g", "type": "pipe", "sorce": {"type": "embedded", "entities": []}}]),
            "g",
            "source",
            "needs a source",
        ),
    ];
    for (config, id, field, mention) in cases {
        let (status, body) = node.put_json("/api/config", &config).await;
        assert_eq!(status, 400, "{config} was accepted: {body}");
        assert_eq!(body["_id"], id, "{body}");
        assert_eq!(body["field"], field, "{body}");
        assert!(body["error"].as_str().unwrap().contains(mention), "{body}");
    }
    let (status, body) = node.put_raw("/api/config", "[{\"_id\": ").await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("not valid JSON"),
        "{body}"
    );

    // The running config is untouched.
    let (_, config, _) = node.get("/api/config").await;
    assert_eq!(config, initial);
    let (_, pipes, _) = node.get("/api/pipes").await;
    assert_eq!(pipes.as_array().unwrap().len(), 1);

    // A valid config replaces it whole: a removed, b added.
    let next = json!([embedded("b", json!([{"_id": "x", "v": 1}]))]);
    let (status, body) = node.put_json("/api/config", &next).await;
    assert_eq!(status, 200, "{body}");
    let (_, pipes, _) = node.get("/api/pipes").await;
    let ids: Vec<&str> = pipes
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["b"]);
    let (status, _, _) = node.get("/api/pipes/a").await;
    assert_eq!(status, 404);
    let (_, done) = node.run_pipe("b").await;
    assert_eq!(done["event_type"], "pump-completed");

    let data = node.stop().await;
    let records = outbox_records(&data);
    let hashes: Vec<String> = records
        .iter()
        .filter_map(|r| match &r.body {
            Body::Config(c) => Some(c.hash.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        hashes.len(),
        2,
        "a config snapshot at start and one for the change"
    );
    assert_ne!(hashes[0], hashes[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_systems_fail_their_pipe_readably_and_others_keep_running() {
    let dir = tempfile::tempdir().unwrap();
    let (base, seen) = http_system().await;
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let secret = "sink-password-91ab";
    let config = json!([
        {"_id": "node", "type": "metadata", "monitoring": {"enabled": true}},
        {"_id": "down", "type": "system:url", "base_url": format!("http://{closed}"), "timeout": 2},
        {"_id": "nosecret", "type": "system:url", "base_url": base, "headers": {"X-Key": "$SECRET(never-set)"}},
        {"_id": "api", "type": "system:url", "base_url": format!("{base}/api"), "headers": {"Authorization": "Basic $SECRET(sink-pw)"}},
        {"_id": "unreachable", "type": "pipe", "source": {"type": "json", "system": "down", "url": "x"}, "pump": {"mode": "manual"}},
        {"_id": "missing-secret", "type": "pipe", "source": {"type": "json", "system": "nosecret", "url": "api/contacts"}, "pump": {"mode": "manual"}},
        {"_id": "not-json", "type": "pipe", "source": {"type": "json", "system": "api", "url": "notjson"}, "pump": {"mode": "manual"}},
        {"_id": "to-sink", "type": "pipe", "source": {"type": "embedded", "entities": [{"_id": "a"}, {"_id": "b"}]},
         "sink": {"type": "json", "system": "api", "url": "sink"}, "pump": {"mode": "manual"}},
        {"_id": "to-broken", "type": "pipe", "source": {"type": "embedded", "entities": [{"_id": "a"}, {"_id": "b"}]},
         "sink": {"type": "json", "system": "api", "url": "broken"}, "pump": {"mode": "manual"}},
        embedded("healthy", json!([{"_id": "h"}])),
    ]);
    let node = start(dir.path(), &config).await;
    let (status, _) = node
        .put_json("/api/secrets", &json!({"sink-pw": secret}))
        .await;
    assert_eq!(status, 200);

    let (_, f) = node.run_pipe("unreachable").await;
    assert_eq!(f["event_type"], "pump-failed");
    let why = f["reason_why_stopped"].as_str().unwrap();
    assert!(why.contains("could not read from system \"down\""), "{why}");
    assert_eq!(f["metrics"]["entities.read_errors_last_run"], 1);

    let (_, f) = node.run_pipe("missing-secret").await;
    assert_eq!(f["event_type"], "pump-failed");
    let why = f["reason_why_stopped"].as_str().unwrap();
    assert!(why.contains("secret \"never-set\" is not set"), "{why}");

    let (_, f) = node.run_pipe("not-json").await;
    assert!(
        f["reason_why_stopped"]
            .as_str()
            .unwrap()
            .contains("did not answer JSON"),
        "{f}"
    );

    let (_, done) = node.run_pipe("to-sink").await;
    assert_eq!(done["event_type"], "pump-completed", "{done}");
    let posted: Vec<Value> = seen.lock().unwrap().posted.clone();
    assert_eq!(posted, vec![json!({"_id": "a"}), json!({"_id": "b"})]);

    // The sink answers 500 and echoes the Authorization header: write-errors
    // per entity, a pump-failed, and the secret scrubbed from both.
    let since = node.log_head("to-broken").await;
    let (_, f) = node.run_pipe("to-broken").await;
    assert_eq!(f["event_type"], "pump-failed");
    assert_eq!(f["metrics"]["entities.write_errors_last_run"], 2);
    let why = f["reason_why_stopped"].as_str().unwrap();
    assert!(why.contains("HTTP 500"), "{why}");
    assert!(
        why.contains("$SECRET(sink-pw)") && !why.contains(secret),
        "{why}"
    );
    let (_, log, text) = node
        .get(&format!("/api/pipes/to-broken/log?since={since}"))
        .await;
    assert!(!text.contains(secret), "{text}");
    let write_errors: Vec<&Value> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "write-error")
        .collect();
    assert_eq!(write_errors.len(), 2);
    assert_eq!(write_errors[0]["_id"], "write-error:a");
    assert_eq!(write_errors[0]["error_code"], "500");
    assert_eq!(write_errors[0]["retryable"], true);
    assert_eq!(write_errors[0]["entity"]["_id"], "a");

    // Other pipes keep working.
    let (_, done) = node.run_pipe("healthy").await;
    assert_eq!(done["event_type"], "pump-completed");

    let data = node.stop().await;
    for r in outbox_records(&data) {
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            !json.contains(secret),
            "outbox record leaks the secret: {json}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pump_operations_start_stop_enable_disable() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = http_system().await;
    let config = json!([
        {"_id": "node", "type": "metadata", "monitoring": {"enabled": true}},
        {"_id": "api", "type": "system:url", "base_url": format!("{base}/api"), "timeout": 30},
        {"_id": "slow", "type": "pipe", "source": {"type": "json", "system": "api", "url": "slow"}, "pump": {"mode": "manual"}},
        {"_id": "ticking", "type": "pipe", "source": {"type": "embedded", "entities": [{"_id": "t"}]},
         "pump": {"schedule_interval": 0.2}},
    ]);
    let node = start(dir.path(), &config).await;

    // Start, then start again while it runs: 409 with the pump object.
    let since = node.log_head("slow").await;
    let (status, pump) = node.pump("slow", "start").await;
    assert_eq!(status, 200);
    assert_eq!(pump["runtime"]["is-running"], true);
    let (status, pump) = node.pump("slow", "start").await;
    assert_eq!(status, 409);
    assert_eq!(pump["_id"], "slow");
    // Stop cancels the run: a pump-failed that says why.
    let (status, _) = node.pump("slow", "stop").await;
    assert_eq!(status, 200);
    let f = node.wait_run_end("slow", since).await;
    assert_eq!(f["event_type"], "pump-failed");
    assert!(
        f["reason_why_stopped"]
            .as_str()
            .unwrap()
            .contains("stop operation"),
        "{f}"
    );

    // A scheduled pump runs by itself; disabled, it stops running.
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.log_head("ticking").await < 4 {
        assert!(
            Instant::now() < deadline,
            "the scheduled pump did not run twice"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, pump) = node.pump("ticking", "disable").await;
    assert_eq!(status, 200);
    assert_eq!(pump["runtime"]["is-disabled"], true);
    let (_, _, metrics) = node.get("/api/metrics").await;
    assert!(
        metrics.contains("sesam_pipe_enabled{pipe=\"ticking\"} 0"),
        "{metrics}"
    );
    // Let a run that was in flight finish, then nothing more happens.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let head = node.log_head("ticking").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, log, _) = node
        .get(&format!("/api/pipes/ticking/log?since={head}"))
        .await;
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .all(|e| e["event_type"] != "pump-started"),
        "ran while disabled: {log}"
    );
    let (status, _) = node.pump("ticking", "enable").await;
    assert_eq!(status, 200);
    let (_, log, _) = node.get("/api/pipes/ticking/log?history=false").await;
    let ids: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"pump-disabled") && ids.contains(&"pump-enabled"),
        "{ids:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, log, _) = node
            .get(&format!("/api/pipes/ticking/log?since={head}"))
            .await;
        if log
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event_type"] == "pump-completed")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the re-enabled pump did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = node.pump("ticking", "").await;
    assert_eq!(status, 400, "{body}");

    // A shutdown lets a running pump finish (within the grace period)
    // instead of failing it.
    let (status, _) = node.pump("slow", "start").await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let data = node.stop().await;
    let records = outbox_records(&data);
    let kinds: Vec<Kind> = records.iter().map(|r| r.kind()).collect();
    assert!(kinds.contains(&Kind::Execution));
    let last_slow = records
        .iter()
        .filter_map(|r| match &r.body {
            Body::Execution(b) if b.pipe == "slow" => Some(b.event_type),
            _ => None,
        })
        .next_back();
    assert_eq!(last_slow, Some(schemas::EventType::PumpCompleted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_state_and_dataset_offsets_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = json!([
        embedded("src", json!([{"_id": "1", "v": 1}, {"_id": "2", "v": 2}])),
        {"_id": "copy", "type": "pipe", "source": {"type": "dataset", "dataset": "src"}, "pump": {"mode": "manual"}},
    ]);
    let node = start(dir.path(), &config).await;
    node.run_pipe("src").await;
    let (_, done) = node.run_pipe("copy").await;
    assert_eq!(done["metrics"]["entities.changes_last_run"], 2);
    let (status, _) = node.pump("copy", "disable").await;
    assert_eq!(status, 200);
    node.stop().await;

    let node = start(dir.path(), &config).await;
    let (_, pump, _) = node.get("/api/pipes/copy/pump").await;
    assert_eq!(pump["runtime"]["is-disabled"], true, "{pump}");
    assert_eq!(pump["runtime"]["success"], true, "{pump}");
    assert_eq!(pump["runtime"]["last-seen"], "2", "{pump}");
    // Manual start still works on a disabled pump; the offset persisted.
    let (started, done) = node.run_pipe("copy").await;
    assert_eq!(started["sync_type"], "incremental");
    assert_eq!(done["metrics"]["entities.entities_last_run"], 0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataset_sources_are_read_in_pages_that_keep_their_progress() {
    let dir = tempfile::tempdir().unwrap();
    let entities: Vec<Value> = (0..10)
        .map(|i| json!({"_id": format!("e{i}"), "n": if i == 7 { json!("x") } else { json!(i) }}))
        .collect();
    let copy = |fail_on_x: bool| {
        let rules = if fail_on_x {
            json!([["copy", "*"], ["add", "n", ["integer", "_S.n"]]])
        } else {
            json!([["copy", "*"]])
        };
        json!({"_id": "copy", "type": "pipe", "source": {"type": "dataset", "dataset": "src"},
               "transform": {"type": "dtl", "rules": {"default": rules}}, "pump": {"mode": "manual"}})
    };
    let node = start_with(
        dir.path(),
        &json!([embedded("src", Value::Array(entities)), copy(true)]),
        |c| c.limits.source_page_entities = 3,
    )
    .await;
    node.run_pipe("src").await;
    // The page holding e7 fails; the two pages before it are written and
    // their offset kept.
    let (_, failed) = node.run_pipe("copy").await;
    assert_eq!(failed["event_type"], "pump-failed", "{failed}");
    assert!(
        failed["reason_why_stopped"]
            .as_str()
            .unwrap()
            .contains("\"e7\""),
        "{failed}"
    );
    assert_eq!(
        failed["metrics"]["entities.changes_last_run"], 6,
        "{failed}"
    );
    let (_, ds, _) = node.get("/api/datasets/copy").await;
    assert_eq!(ds["runtime"]["count-excluding-deleted"], 6);
    let (_, pump, _) = node.get("/api/pipes/copy/pump").await;
    assert_eq!(pump["runtime"]["last-seen"], "6", "{pump}");
    // Fixed, the next run goes on from there, through every page.
    let (status, _) = node
        .send("PUT", "/api/pipes/copy/config", Some(&copy(false)))
        .await;
    assert_eq!(status, 200);
    let (started, done) = node.run_pipe("copy").await;
    assert_eq!(started["sync_type"], "incremental");
    assert_eq!(done["event_type"], "pump-completed", "{done}");
    assert_eq!(done["metrics"]["entities.entities_last_run"], 4, "{done}");
    assert_eq!(done["metrics"]["entities.changes_last_run"], 4, "{done}");
    let (_, ds, _) = node.get("/api/datasets/copy").await;
    assert_eq!(ds["runtime"]["count-excluding-deleted"], 10);
    node.stop().await;
}

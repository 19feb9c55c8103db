//! The example configuration end to end: pipes run, the execution dataset
//! records Sesam's events and fields, datasets hold the transformed
//! entities in `_updated` order, unchanged entities are not counted as
//! changes, the outbox holds what the node emitted, and no secret value
//! leaks anywhere.

mod common;

use common::*;
use schemas::{Body, EventType, Kind};
use serde_json::{json, Value};

const SECRET: &str = "crm-secret-value-7f3a9c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_config_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (base, seen) = http_system().await;
    let node = start(dir.path(), &example_config(&base)).await;

    // Auth: open ping and health, closed everything else without the token.
    let r = node.client.get(node.url("/api/ping")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "running"})
    );
    let r = node
        .client
        .get(node.url("/api/pipes"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = node
        .client
        .get(node.url("/api/pipes"))
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let (status, _) = node
        .put_json("/api/secrets", &json!({"crm-token": SECRET}))
        .await;
    assert_eq!(status, 200);
    let (_, names, _) = node.get("/api/secrets").await;
    assert_eq!(names, json!(["crm-token"]));

    // --- customers: embedded source + DTL into a dataset.
    let (started, done) = node.run_pipe("customers").await;
    assert_eq!(started["_id"], "pump-started");
    assert_eq!(started["pipe"], "customers");
    assert_eq!(started["sync_type"], "full");
    assert!(schemas::time::parse_rfc3339(started["start_time"].as_str().unwrap()).is_some());
    assert_eq!(done["event_type"], "pump-completed", "{done}");
    assert_eq!(done["_id"], "pump-completed");
    assert!(schemas::time::parse_rfc3339(done["end_time"].as_str().unwrap()).is_some());
    assert!(done["total_time"].as_f64().unwrap() >= 0.0);
    let m = &done["metrics"];
    assert_eq!(m["entities.entities_last_run"], 3);
    assert_eq!(m["entities.changes_last_run"], 3);
    assert_eq!(m["entities.read_errors_last_run"], 0);
    assert_eq!(m["entities.write_errors_last_run"], 0);
    for k in [
        "entities.source_time",
        "entities.transform_time",
        "entities.sink_time",
    ] {
        assert!(m[k].as_f64().is_some(), "{k} missing in {m}");
    }

    let (status, ents, _) = node.get("/api/datasets/customers/entities").await;
    assert_eq!(status, 200);
    let ents = ents.as_array().unwrap().clone();
    assert_eq!(ents.len(), 3);
    let updated: Vec<u64> = ents
        .iter()
        .map(|e| e["_updated"].as_u64().unwrap())
        .collect();
    assert_eq!(updated, vec![1, 2, 3]);
    assert_eq!(ents[0]["_id"], "c1");
    assert_eq!(ents[0]["name"], "Ada Lovelace");
    assert_eq!(ents[0]["age"], 36);
    assert!(ents[0].get("first").is_none());
    assert_eq!(ents[0]["_deleted"], false);
    assert_eq!(ents[0]["_hash"].as_str().unwrap().len(), 64);
    assert!(ents[0]["_ts"].as_i64().unwrap() > 0);

    // A second run sees the same entities: nothing changes, nothing is rewritten.
    let (_, done2) = node.run_pipe("customers").await;
    assert_eq!(done2["metrics"]["entities.entities_last_run"], 3);
    assert_eq!(done2["metrics"]["entities.changes_last_run"], 0);
    let (_, ents2, _) = node.get("/api/datasets/customers/entities").await;
    assert_eq!(ents2.as_array().unwrap().len(), 3);
    let (_, page, _) = node
        .get("/api/datasets/customers/entities?since=1&limit=1")
        .await;
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["_updated"], 2);
    let (_, ds, _) = node.get("/api/datasets/customers").await;
    assert_eq!(ds["runtime"]["count-excluding-deleted"], 3);
    assert_eq!(ds["runtime"]["pipe"], "customers");

    // --- active-customers: incremental dataset source with a filter.
    let (started, done) = node.run_pipe("active-customers").await;
    assert_eq!(started["sync_type"], "full");
    assert_eq!(done["event_type"], "pump-completed", "{done}");
    assert_eq!(done["metrics"]["entities.entities_last_run"], 3);
    assert_eq!(done["metrics"]["entities.changes_last_run"], 2);
    let (_, active, _) = node.get("/api/datasets/active-customers/entities").await;
    let ids: Vec<&str> = active
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["c1", "c2"]);
    assert_eq!(
        active[0],
        json!({
            "_id": "c1", "name": "Ada Lovelace", "_deleted": false,
            "_updated": 1, "_ts": active[0]["_ts"], "_hash": active[0]["_hash"], "_previous": null
        })
    );
    let (started, done) = node.run_pipe("active-customers").await;
    assert_eq!(started["sync_type"], "incremental");
    assert_eq!(done["metrics"]["entities.entities_last_run"], 0);
    let (_, pump, _) = node.get("/api/pipes/active-customers/pump").await;
    assert_eq!(pump["runtime"]["last-seen"], "3");

    // --- orders: the transform fails on o2.
    let (_, failed) = node.run_pipe("orders").await;
    assert_eq!(failed["event_type"], "pump-failed", "{failed}");
    assert_eq!(failed["_id"], "pump-failed");
    let why = failed["reason_why_stopped"].as_str().unwrap();
    assert!(why.contains("\"o2\"") && why.contains("n/a"), "{why}");
    assert!(failed["original_error_message"]
        .as_str()
        .unwrap()
        .contains("integer"));
    assert!(failed["traceback"]
        .as_str()
        .unwrap()
        .contains("rules.default[1]"));
    assert_eq!(failed["exception_entity"]["_id"], "o2");
    assert_eq!(failed["exception_entity"]["amount"], "n/a");
    assert_eq!(failed["metrics"]["entities.entities_last_run"], 3);
    assert!(failed["end_time"].is_string() && failed["total_time"].is_number());
    // Nothing of the failed run was written.
    let (status, _, _) = node.get("/api/datasets/orders/entities").await;
    assert_eq!(status, 404);
    let (_, pump, _) = node.get("/api/pipes/orders/pump").await;
    assert_eq!(pump["runtime"]["success"], false);

    // --- crm-contacts: JSON source with a $SECRET header.
    let (_, done) = node.run_pipe("crm-contacts").await;
    assert_eq!(done["event_type"], "pump-completed", "{done}");
    assert_eq!(done["metrics"]["entities.changes_last_run"], 2);
    assert_eq!(
        seen.lock().unwrap().authorization,
        vec![format!("Bearer {SECRET}")]
    );
    let (_, contacts, _) = node.get("/api/pipes/crm-contacts/entities").await;
    assert_eq!(contacts[0]["email"], "linus@example.com");
    assert_eq!(contacts[0]["source"], "crm");

    // --- the API shapes.
    let (_, p, _) = node.get("/api/pipes/customers").await;
    assert_eq!(p["_id"], "customers");
    assert_eq!(p["runtime"]["execution-dataset"], "system:pump:customers");
    assert_eq!(
        p["config"]["original"]["pump"],
        json!({"schedule_interval": 300})
    );
    assert_eq!(
        p["config"]["effective"]["sink"],
        json!({"type": "dataset", "dataset": "customers"})
    );
    let (_, pump, _) = node.get("/api/pipes/customers/pump").await;
    for k in [
        "is-running",
        "is-disabled",
        "is-valid-config",
        "config-errors",
        "last-run",
        "next-run",
        "success",
        "last-seen",
        "progress",
    ] {
        assert!(
            pump["runtime"].get(k).is_some(),
            "pump runtime lacks {k}: {pump}"
        );
    }
    assert_eq!(pump["runtime"]["success"], true);
    assert!(pump["runtime"]["next-run"].is_string());
    let (status, body) = node.pump("customers", "explode").await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("doesn't support the operation"),
        "{body}"
    );
    assert_eq!(body["field"], "operation");
    let (_, list, _) = node.get("/api/pipes").await;
    assert_eq!(list.as_array().unwrap().len(), 4);
    let (status, body, _) = node.get("/api/pipes/nope").await;
    assert_eq!((status, body["_id"].as_str()), (404, Some("nope")));
    let (_, datasets, _) = node.get("/api/datasets").await;
    let names: Vec<&str> = datasets
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["_id"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"customers") && names.contains(&"system:pump:orders"),
        "{names:?}"
    );
    let (status, body, _) = node.get("/api/datasets/customers/entities?since=abc").await;
    assert_eq!((status, body["field"].as_str()), (400, Some("since")));
    let (_, status_doc, _) = node.get("/api/status").await;
    assert_eq!(status_doc["node_id"], "test-node");
    assert!(status_doc["node_uptime"].as_f64().unwrap() > 0.0);

    // history=false shows the latest event of each type; reverse is newest first.
    let (_, latest, _) = node.get("/api/pipes/customers/log?history=false").await;
    let types: Vec<&str> = latest
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["_id"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["pump-started", "pump-completed"]);
    let (_, rev, _) = node
        .get("/api/pipes/customers/log?reverse=true&limit=1")
        .await;
    assert_eq!(rev[0]["event_type"], "pump-completed");
    assert_eq!(rev[0]["_updated"], 4);

    // Metrics with Sesam's names.
    let (_, _, text) = node.get("/api/metrics").await;
    for line in [
        "sesam_pump_started_total{pipe=\"customers\"} 2",
        "sesam_pump_completed_total{pipe=\"customers\"} 2",
        "sesam_pump_failed_total{pipe=\"orders\"} 1",
        "sesam_pump_entities_changes_total{pipe=\"customers\"} 3",
        "sesam_pump_entities_seen_total{pipe=\"customers\"} 6",
        "sesam_pipe_enabled{pipe=\"orders\"} 1",
        // Series exist from the start: zero runs is not an absent series.
        "sesam_pump_completed_total{pipe=\"orders\"} 0",
    ] {
        assert!(text.contains(line), "metrics lack {line:?}:\n{text}");
    }
    assert!(text.contains("sesam_pump_last_completed_time{pipe=\"customers\"}"));
    assert!(
        text.contains("outbox_records_appended_total"),
        "outbox metrics missing"
    );

    // Health: a pipe in error degrades the node, which still works: 200
    // with the status in the body (503 is only for a node that cannot work).
    let r = node
        .client
        .get(node.url("/api/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h: Value = r.json().await.unwrap();
    assert_eq!(h["status"], "degraded", "{h}");
    let pipes_check = h["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "pipes")
        .unwrap();
    assert!(
        pipes_check["detail"].as_str().unwrap().contains("orders"),
        "{h}"
    );
    let storage = h["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "storage")
        .unwrap();
    assert_eq!(storage["status"], "ok");

    // No answer of the API carries the secret value.
    for path in [
        "/api/config",
        "/api/secrets",
        "/api/pipes",
        "/api/pipes/crm-contacts",
        "/api/pipes/crm-contacts/log",
        "/api/pipes/crm-contacts/pump",
        "/api/datasets",
        "/api/datasets/crm-contacts/entities",
        "/api/metrics",
        "/api/status",
        "/api/health",
    ] {
        let (_, _, text) = node.get(path).await;
        assert!(!text.contains(SECRET), "{path} leaks the secret: {text}");
    }
    let (_, config, _) = node.get("/api/config").await;
    assert!(config.to_string().contains("$SECRET(crm-token)"));

    let data = node.stop().await;

    // --- the outbox.
    let records = outbox_records(&data);
    assert!(records
        .iter()
        .all(|r| r.source == "test-node" && r.subscription == "acme"));
    for r in &records {
        let json = serde_json::to_string(r).unwrap();
        assert!(
            !json.contains(SECRET),
            "an outbox record leaks the secret: {json}"
        );
    }
    let executions: Vec<&schemas::ExecutionBody> = records
        .iter()
        .filter_map(|r| match &r.body {
            Body::Execution(b) => Some(b.as_ref()),
            _ => None,
        })
        .collect();
    let of = |pipe: &str, t: EventType| {
        executions
            .iter()
            .filter(|b| b.pipe == pipe && b.event_type == t)
            .count()
    };
    assert_eq!(of("customers", EventType::PumpStarted), 2);
    assert_eq!(of("customers", EventType::PumpCompleted), 2);
    assert_eq!(of("crm-contacts", EventType::PumpCompleted), 1);
    // active-customers has monitoring off: its events never enter the outbox.
    assert!(executions.iter().all(|b| b.pipe != "active-customers"));
    let failed = executions
        .iter()
        .find(|b| b.pipe == "orders" && b.event_type == EventType::PumpFailed)
        .expect("the orders failure is in the outbox");
    assert!(failed.reason_why_stopped.as_deref().unwrap().contains("o2"));
    // Left in for the shipper to strip (node-side-only field).
    assert_eq!(failed.exception_entity.as_ref().unwrap()["_id"], "o2");
    let completed = executions
        .iter()
        .find(|b| b.pipe == "customers" && b.event_type == EventType::PumpCompleted)
        .unwrap();
    assert_eq!(completed.metrics.entities_last_run, Some(3));
    assert_eq!(completed.metrics.changes_last_run, Some(3));
    let configs: Vec<_> = records
        .iter()
        .filter(|r| r.kind() == Kind::Config)
        .collect();
    assert_eq!(configs.len(), 1, "one config snapshot at start");
    let Body::Config(c) = &configs[0].body else {
        unreachable!()
    };
    assert_eq!(c.config.len(), 6);
    assert!(serde_json::to_string(&c.config)
        .unwrap()
        .contains("$SECRET(crm-token)"));
    let health: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.body {
            Body::Health(h) => Some(h),
            _ => None,
        })
        .collect();
    assert!(!health.is_empty(), "health records are emitted");
    assert!(
        health.iter().any(|h| h.status != schemas::HealthStatus::Ok),
        "the failing pipe shows in a health record"
    );
    // Records are in seq order.
    assert!(records.windows(2).all(|w| w[0].seq < w[1].seq));
}

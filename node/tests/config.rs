//! The node's configuration lifecycle: what the API accepts is stored as a
//! new version and runs again after a restart (the file only seeds an
//! empty node), the history says who changed what and when, single pipes
//! and systems have their own endpoints, and unknown properties are
//! warnings in `config-errors` rather than refusals.

mod common;

use common::*;
use schemas::{Body, EventType};
use serde_json::{json, Value};

fn embedded(id: &str, entities: Value) -> Value {
    json!({"_id": id, "type": "pipe", "source": {"type": "embedded", "entities": entities}, "pump": {"mode": "manual"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_configuration_survives_a_restart_and_the_history_lists_versions() {
    let dir = tempfile::tempdir().unwrap();
    let file = json!([embedded("a", json!([{"_id": "1"}]))]);
    let node = start(dir.path(), &file).await;
    let (_, history, _) = node.get("/api/config/history").await;
    let h = history.as_array().unwrap();
    assert_eq!(h.len(), 1, "{history}");
    assert_eq!(h[0]["version"], 1);
    assert_eq!(h[0]["who"]["source"], "file");
    assert_eq!(h[0]["changes"]["added"], json!(["a"]));
    assert_eq!(h[0]["current"], true);

    let uploaded = json!([
        embedded("a", json!([{"_id": "1"}, {"_id": "2"}])),
        embedded("b", json!([{"_id": "x"}])),
    ]);
    let (status, body) = node.put_json("/api/config", &uploaded).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["version"].as_u64(), body["changed"].as_bool()),
        (Some(2), Some(true))
    );
    // The same configuration again is no new version.
    let (_, body) = node.put_json("/api/config", &uploaded).await;
    assert_eq!(
        (body["version"].as_u64(), body["changed"].as_bool()),
        (Some(2), Some(false))
    );
    node.stop().await;

    // A restart with the same --config file runs what the API accepted.
    let node = start(dir.path(), &file).await;
    let (_, config, _) = node.get("/api/config").await;
    assert_eq!(config, uploaded);
    let (_, pipes, _) = node.get("/api/pipes").await;
    assert_eq!(pipes.as_array().unwrap().len(), 2);
    let (_, history, _) = node.get("/api/config/history").await;
    let h = history.as_array().unwrap();
    assert_eq!(h.len(), 2, "{history}");
    assert_eq!(h[0]["version"], 2, "newest first");
    assert_eq!(h[0]["current"], true);
    assert_eq!(h[0]["who"]["source"], "api");
    assert_eq!(h[0]["who"]["operation"], "PUT /api/config");
    assert!(h[0]["who"]["remote_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(
        h[0]["changes"],
        json!({"added": ["b"], "removed": [], "changed": ["a"]})
    );
    assert!(schemas::time::parse_rfc3339(h[0]["time"].as_str().unwrap()).is_some());
    assert_eq!(h[1]["current"], false);
    let (status, v1, _) = node.get("/api/config/history/1").await;
    assert_eq!(status, 200);
    assert_eq!(v1["config"], file);
    let (status, _, _) = node.get("/api/config/history/99").await;
    assert_eq!(status, 404);
    let (status, body, _) = node.get("/api/config/history/x").await;
    assert_eq!((status, body["field"].as_str()), (400, Some("version")));
    node.stop().await;

    // --config-from-file makes the file a new version.
    let node = start_with(dir.path(), &file, |c| c.config_from_file = true).await;
    let (_, config, _) = node.get("/api/config").await;
    assert_eq!(config, file);
    let (_, history, _) = node.get("/api/config/history").await;
    assert_eq!(history[0]["version"], 3);
    assert_eq!(history[0]["who"]["source"], "file");
    assert_eq!(history[0]["changes"]["removed"], json!(["b"]));
    let data = node.stop().await;

    // Every change was a `config` record.
    let hashes: Vec<String> = outbox_records(&data)
        .iter()
        .filter_map(|r| match &r.body {
            Body::Config(c) => Some(c.hash.clone()),
            _ => None,
        })
        .collect();
    assert!(hashes.len() >= 4, "{hashes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_keeps_the_configured_number_of_versions() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), &json!([]), |c| c.config_history = 3).await;
    for i in 0..5 {
        let (status, _) = node
            .put_json(
                "/api/config",
                &json!([embedded(&format!("p{i}"), json!([]))]),
            )
            .await;
        assert_eq!(status, 200);
    }
    let (_, history, _) = node.get("/api/config/history").await;
    let versions: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![6, 5, 4]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_pipes_and_systems_have_their_own_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = http_system().await;
    let node = start(dir.path(), &json!([embedded("a", json!([{"_id": "1"}]))])).await;

    // Add a system and a pipe that reads it.
    let sys = json!({"_id": "api", "type": "system:url", "base_url": format!("{base}/api")});
    let (status, body) = node.send("POST", "/api/systems", Some(&sys)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body[0]["_id"], "api");
    let pipe = json!({"_id": "contacts", "source": {"type": "json", "system": "api", "url": "contacts"}, "pump": {"mode": "manual"}});
    let (status, body) = node.send("POST", "/api/pipes", Some(&json!([pipe]))).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body[0]["_id"], "contacts");
    assert_eq!(body[0]["config"]["original"]["type"], "pipe");
    let (status, body) = node.send("POST", "/api/pipes", Some(&pipe)).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (409, Some("_id")),
        "{body}"
    );
    let (_, done) = node.run_pipe("contacts").await;
    assert_eq!(done["metrics"]["entities.entities_last_run"], 2);

    // Replace one pipe; the others keep running.
    let (status, body) = node
        .send(
            "PUT",
            "/api/pipes/a/config",
            Some(&embedded("a", json!([{"_id": "1"}, {"_id": "2"}]))),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = node
        .send(
            "PUT",
            "/api/pipes/a/config",
            Some(&embedded("other", json!([]))),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("_id")),
        "{body}"
    );
    let (status, _) = node
        .send(
            "PUT",
            "/api/pipes/nope/config",
            Some(&embedded("nope", json!([]))),
        )
        .await;
    assert_eq!(status, 404);
    let (_, done) = node.run_pipe("a").await;
    assert_eq!(done["metrics"]["entities.entities_last_run"], 2);

    // Systems: list, get, replace; removing one a pipe uses is refused
    // naming the pipe's field.
    let (_, systems, _) = node.get("/api/systems").await;
    assert_eq!(systems.as_array().unwrap().len(), 1);
    let (status, s, _) = node.get("/api/systems/api").await;
    assert_eq!(status, 200);
    assert_eq!(s["config"]["original"], sys);
    let (status, body) = node.send("DELETE", "/api/systems/api", None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        (body["_id"].as_str(), body["field"].as_str()),
        (Some("contacts"), Some("source.system"))
    );
    let (status, _) = node
        .send(
            "PUT",
            "/api/systems/api/config",
            Some(&json!({"type": "system:url", "base_url": format!("{base}/api"), "timeout": 5})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, c, _) = node.get("/api/systems/api/config").await;
    assert_eq!(c["timeout"], 5);

    // Delete the pipe, then the system.
    let (status, body) = node.send("DELETE", "/api/pipes/contacts", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["_id"], "contacts");
    let (status, _, _) = node.get("/api/pipes/contacts").await;
    assert_eq!(status, 404);
    let (status, _) = node.send("DELETE", "/api/systems/api", None).await;
    assert_eq!(status, 200);
    let (status, _) = node.send("DELETE", "/api/systems/api", None).await;
    assert_eq!(status, 404);

    // Every change is a version with its operation.
    let (_, history, _) = node.get("/api/config/history").await;
    let ops: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["who"]["operation"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        vec![
            "DELETE /api/systems/api",
            "DELETE /api/pipes/contacts",
            "PUT /api/systems/api/config",
            "PUT /api/pipes/a/config",
            "POST /api/pipes",
            "POST /api/systems",
            ops[6],
        ]
    );
    assert!(ops[6].starts_with("--config "), "{ops:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_properties_are_warnings_in_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), &json!([embedded("a", json!([]))])).await;
    let config = json!([
        {"_id": "p", "type": "pipe", "sorce": "typo",
         "source": {"type": "embedded", "entities": [{"_id": "1"}]},
         "pump": {"mode": "manual", "schedul_interval": 5}},
    ]);
    let (status, body) = node.put_json("/api/config", &config).await;
    assert_eq!(status, 200, "{body}");
    let v = &body["validation_errors"];
    assert_eq!(v[0]["posted-config"]["_id"], "p", "{body}");
    assert_eq!(v[0]["is-valid-config"], true);
    let errs = v[0]["config-errors"].as_array().unwrap();
    assert_eq!(errs.len(), 2, "{body}");
    assert_eq!(errs[0]["level"], "warning");
    assert_eq!(errs[0]["elements"], "sorce");
    assert!(errs[0]["msg"].as_str().unwrap().contains("`sorce`"));
    assert_eq!(errs[1]["elements"], "pump.schedul_interval");
    // The pump object says so too, and the pipe runs.
    let (_, pump, _) = node.get("/api/pipes/p/pump").await;
    assert_eq!(pump["runtime"]["config-errors"], Value::Array(errs.clone()));
    assert_eq!(pump["runtime"]["is-valid-config"], true);
    let (_, done) = node.run_pipe("p").await;
    assert_eq!(done["event_type"], "pump-completed");
    // What the operator wrote is kept as written.
    let (_, original, _) = node.get("/api/pipes/p/config").await;
    assert_eq!(original["sorce"], "typo");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_out_entities_are_deleted_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let people = |c2_active: bool| {
        json!([
            {"_id": "c1", "active": true},
            {"_id": "c2", "active": c2_active},
            {"_id": "c3", "active": false},
        ])
    };
    let filter = json!({"_id": "active", "type": "pipe",
        "source": {"type": "dataset", "dataset": "people"},
        "transform": {"type": "dtl", "rules": {"default": [["filter", ["eq", "_S.active", true]], ["copy", "*"]]}},
        "pump": {"mode": "manual"}});
    let node = start(
        dir.path(),
        &json!([embedded("people", people(true)), filter]),
    )
    .await;
    node.run_pipe("people").await;
    let (_, done) = node.run_pipe("active").await;
    assert_eq!(
        done["metrics"]["entities.changes_last_run"], 2,
        "c3 was never written: {done}"
    );
    let (_, ds, _) = node.get("/api/datasets/active").await;
    assert_eq!(ds["runtime"]["count-excluding-deleted"], 2);
    assert_eq!(ds["runtime"]["count-deleted"], 0);

    // c2 becomes inactive upstream: the filter now drops it, and the entity
    // an earlier run wrote is deleted.
    let (status, _) = node
        .send(
            "PUT",
            "/api/pipes/people/config",
            Some(&embedded("people", people(false))),
        )
        .await;
    assert_eq!(status, 200);
    node.run_pipe("people").await;
    let (_, done) = node.run_pipe("active").await;
    assert_eq!(done["event_type"], "pump-completed");
    assert_eq!(done["metrics"]["entities.entities_last_run"], 1);
    assert_eq!(done["metrics"]["entities.changes_last_run"], 1, "{done}");
    let (_, live, _) = node
        .get("/api/datasets/active/entities?deleted=false&history=false")
        .await;
    let ids: Vec<&str> = live
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["c1"]);
    let (_, all, _) = node
        .get("/api/datasets/active/entities?history=false")
        .await;
    let c2 = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["_id"] == "c2")
        .unwrap();
    assert_eq!(c2["_deleted"], true);
    assert_eq!(c2["_filtered"], true);
    // Nothing more to delete on the next run.
    let (_, done) = node.run_pipe("active").await;
    assert_eq!(done["metrics"]["entities.changes_last_run"], 0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_read_and_write_errors_are_events_without_the_entity() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = http_system().await;
    let config = json!([
        {"_id": "node", "type": "metadata", "monitoring": {"enabled": true}},
        {"_id": "api", "type": "system:url", "base_url": format!("{base}/api")},
        {"_id": "mixed", "type": "pipe", "source": {"type": "json", "system": "api", "url": "mixed"},
         "transform": {"type": "dtl", "rules": {"default": [["copy", "*"]]}},
         "pump": {"mode": "manual"}},
    ]);
    let node = start(dir.path(), &config).await;
    let since = node.log_head("mixed").await;
    let (_, done) = node.run_pipe("mixed").await;
    // Two entities had no usable _id (read errors), one could not be
    // stored (a NUL in its _id: a write error); the good two were written.
    assert_eq!(done["event_type"], "pump-completed", "{done}");
    let m = &done["metrics"];
    assert_eq!(m["entities.read_errors_last_run"], 2, "{done}");
    assert_eq!(m["entities.write_errors_last_run"], 1, "{done}");
    assert_eq!(m["entities.changes_last_run"], 2, "{done}");
    let (_, log, _) = node
        .get(&format!("/api/pipes/mixed/log?since={since}"))
        .await;
    let of = |t: &str| -> Vec<Value> {
        log.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event_type"] == t)
            .cloned()
            .collect()
    };
    let reads = of("read-error");
    assert_eq!(reads.len(), 2, "{log}");
    assert!(reads
        .iter()
        .all(|e| e["_id"].as_str().unwrap().starts_with("read-error:")));
    assert!(reads[0]["original_error_message"]
        .as_str()
        .unwrap()
        .contains("no non-empty string _id"));
    assert_eq!(reads[0]["run_id"], done["run_id"]);
    let writes = of("write-error");
    assert_eq!(writes.len(), 1, "{log}");
    assert_eq!(writes[0]["entity_id"], "nul\\u{0}id");
    assert_eq!(writes[0]["error_code"], "invalid-entity");
    assert_eq!(writes[0]["retryable"], false);
    assert!(writes[0]["original_error_message"]
        .as_str()
        .unwrap()
        .contains("NUL"));
    for e in reads.iter().chain(&writes) {
        assert!(
            e.get("entity").is_none() && e.get("exception_entity").is_none(),
            "{e}"
        );
    }
    let data = node.stop().await;
    // In the outbox: the events, with the id and without the entity.
    let records = outbox_records(&data);
    let errors: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.body {
            Body::Execution(e)
                if matches!(e.event_type, EventType::ReadError | EventType::WriteError) =>
            {
                Some(e)
            }
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 3);
    for e in &errors {
        assert!(e.entity.is_none() && e.exception_entity.is_none());
    }
    assert!(errors
        .iter()
        .any(|e| e.entity_id.as_deref() == Some("nul\\u{0}id")));
    for r in &records {
        let j = serde_json::to_string(r).unwrap();
        assert!(
            !j.contains("do-not-ship"),
            "an entity reached the outbox: {j}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_pipe_is_stopped_and_recorded_before_the_change_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = http_system().await;
    let slow = |timeout: u64| {
        json!([
            {"_id": "api", "type": "system:url", "base_url": format!("{base}/api"), "timeout": timeout},
            {"_id": "slow", "type": "pipe", "source": {"type": "json", "system": "api", "url": "slow"}, "pump": {"mode": "manual"}},
        ])
    };
    let node = start(dir.path(), &slow(30)).await;
    let since = node.log_head("slow").await;
    let (status, _) = node.pump("slow", "start").await;
    assert_eq!(status, 200);
    // Wait until the run has started reading.
    for _ in 0..200 {
        let (_, log, _) = node
            .get(&format!("/api/pipes/slow/log?since={since}"))
            .await;
        if !log.as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The system changes, so the pipe is restarted: by the time the change
    // is acknowledged the interrupted run is recorded and the pump is idle.
    let (status, body) = node.put_json("/api/config", &slow(29)).await;
    assert_eq!(status, 200, "{body}");
    let (_, log, _) = node
        .get(&format!("/api/pipes/slow/log?since={since}"))
        .await;
    let failed = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "pump-failed")
        .cloned()
        .unwrap_or_else(|| panic!("no pump-failed recorded before the change returned: {log}"));
    assert!(
        failed["reason_why_stopped"]
            .as_str()
            .unwrap()
            .contains("configuration changed"),
        "{failed}"
    );
    let (_, pump, _) = node.get("/api/pipes/slow/pump").await;
    assert_eq!(pump["runtime"]["is-running"], false, "{pump}");
    // And the restarted pump runs.
    let (status, _) = node.pump("slow", "start").await;
    assert_eq!(status, 200);
    node.stop().await;
}

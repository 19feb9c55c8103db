//! The node's configuration and entity errors, with the real binaries
//! (`sesam-node` shipping to `sesam-collector`):
//! - a configuration uploaded through the API survives `kill -9` and a
//!   restart with the same `--config` file, which the node says differs;
//!   the history lists both versions with who changed what;
//! - an unknown property is a warning in the pipe's `config-errors`, not a
//!   refusal;
//! - a DTL filter deletes what an earlier run wrote and counts it;
//! - entities without a usable `_id` are `read-error`s and entities the
//!   store refuses are `write-error`s, in the execution dataset and at the
//!   collector, with the entity id and never the entity;
//! - runs with nothing to do do not log at INFO;
//! - logs written to a file carry no ANSI colour codes.

use std::time::Duration;

use axum::routing::get;
use e2e::collector::{operator_token, Collector};
use e2e::node::Node;
use e2e::process::until;
use serde_json::{json, Value};

const SUB: &str = "lifecycle";
const TOKEN: &str = "lifecycle-api-token";

/// An upstream system: `GET /mixed` answers two good entities and three
/// without a usable `_id` (missing, with a NUL, empty).
async fn upstream() -> String {
    let app = axum::Router::new().route(
        "/mixed",
        get(|| async {
            axum::Json(json!([
                {"_id": "good-1", "v": 1},
                {"name": "no id here", "card": "do-not-ship-1"},
                {"_id": "nul\u{0}id", "card": "do-not-ship-2"},
                {"_id": "", "card": "do-not-ship-3"},
                {"_id": "good-2", "v": 2}
            ]))
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    url
}

fn manual(id: &str, source: Value) -> Value {
    json!({"_id": id, "type": "pipe", "source": source, "pump": {"mode": "manual"}})
}

fn people(c2_active: bool) -> Value {
    manual(
        "people",
        json!({"type": "embedded", "entities": [
            {"_id": "c1", "active": true}, {"_id": "c2", "active": c2_active}]}),
    )
}

struct Api {
    http: reqwest::Client,
    url: String,
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            r = r.json(b);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        let (code, v) = self.send(reqwest::Method::GET, path, None).await;
        assert_eq!(code, 200, "GET {path}: {v}");
        v
    }

    /// Starts a run of `pipe` and returns its pump-completed/pump-failed.
    async fn run(&self, pipe: &str) -> Value {
        let head = self
            .get(&format!("/api/pipes/{pipe}/log?reverse=true&limit=1"))
            .await;
        let since = head[0]["_updated"].as_u64().unwrap_or(0);
        let r = self
            .http
            .post(format!("{}/api/pipes/{pipe}/pump", self.url))
            .bearer_auth(TOKEN)
            .form(&[("operation", "start")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "start {pipe}");
        until(
            &format!("a run of {pipe} to end"),
            Duration::from_secs(30),
            || async {
                let log = self
                    .get(&format!("/api/pipes/{pipe}/log?since={since}"))
                    .await;
                log.as_array()?
                    .iter()
                    .find(|e| {
                        matches!(
                            e["event_type"].as_str(),
                            Some("pump-completed" | "pump-failed")
                        )
                    })
                    .cloned()
            },
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_survives_kill_and_entity_errors_reach_the_collector_without_entities() {
    let dir = e2e::scratch();
    let mut collector = Collector::new(&dir.path().join("collector"), &[SUB]);
    collector.start().await;
    let seed = json!([manual(
        "seed",
        json!({"type": "embedded", "entities": [{"_id": "s"}]})
    )]);
    let mut node = Node::new(&dir.path().join("node"), "lifecycle-node", SUB, &seed);
    node.collector = Some((collector.url.clone(), collector.token_file(SUB)));
    let token_file = dir.path().join("api.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let flags = vec![
        "--api-token-file".to_string(),
        token_file.display().to_string(),
    ];
    node.start(&flags).await;
    let api = Api {
        http: reqwest::Client::new(),
        url: node.url.clone(),
    };

    // Upload a configuration; an unknown property is accepted with a warning.
    let up = upstream().await;
    let mut typo = manual(
        "typo",
        json!({"type": "embedded", "entities": [{"_id": "t"}]}),
    );
    typo["sorce"] = json!("misspelt");
    let uploaded = json!([
        {"_id": "node", "type": "metadata", "monitoring": {"enabled": true}},
        {"_id": "upstream", "type": "system:url", "base_url": up},
        manual("mixed", json!({"type": "json", "system": "upstream", "url": "mixed"})),
        people(true),
        {"_id": "active", "type": "pipe", "source": {"type": "dataset", "dataset": "people"},
         "transform": {"type": "dtl", "rules": {"default": [["filter", ["eq", "_S.active", true]], ["copy", "*"]]}},
         "pump": {"mode": "manual"}},
        typo,
    ]);
    let (code, body) = api
        .send(reqwest::Method::PUT, "/api/config", Some(&uploaded))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["validation_errors"][0]["posted-config"]["_id"], "typo",
        "{body}"
    );

    // kill -9 and a restart with the same --config file.
    node.kill();
    node.start(&flags).await;
    assert_eq!(api.get("/api/config").await, uploaded);
    assert!(
        node.log_text()
            .contains("differs from the configuration file"),
        "the node says the stored configuration differs from --config:\n{}",
        node.log_tail(20)
    );
    let history = api.get("/api/config/history").await;
    let h = history.as_array().unwrap();
    assert_eq!(h.len(), 2, "{history}");
    assert_eq!(
        (h[0]["version"].as_u64(), h[0]["who"]["operation"].as_str()),
        (Some(2), Some("PUT /api/config"))
    );
    assert_eq!(h[0]["changes"]["removed"], json!(["seed"]));
    assert_eq!(h[1]["who"]["source"], "file");
    let pump = api.get("/api/pipes/typo/pump").await;
    assert_eq!(
        pump["runtime"]["config-errors"][0]["level"], "warning",
        "{pump}"
    );
    assert_eq!(
        pump["runtime"]["config-errors"][0]["elements"], "sorce",
        "{pump}"
    );

    // The filter deletes what an earlier run wrote.
    api.run("people").await;
    let done = api.run("active").await;
    assert_eq!(done["metrics"]["entities.changes_last_run"], 2, "{done}");
    let (code, _) = api
        .send(
            reqwest::Method::PUT,
            "/api/pipes/people/config",
            Some(&people(false)),
        )
        .await;
    assert_eq!(code, 200);
    api.run("people").await;
    let done = api.run("active").await;
    assert_eq!(done["metrics"]["entities.changes_last_run"], 1, "{done}");
    let live = api
        .get("/api/datasets/active/entities?deleted=false&history=false")
        .await;
    assert_eq!(live.as_array().unwrap().len(), 1, "{live}");
    assert_eq!(live[0]["_id"], "c1");

    // Runs with nothing to do stay out of the INFO log.
    let completed = |text: &str| text.matches("pump completed").count();
    let before = completed(&node.log_text());
    let done = api.run("people").await;
    assert_eq!(done["metrics"]["entities.changes_last_run"], 0);
    api.run("people").await;
    assert_eq!(completed(&node.log_text()), before, "{}", node.log_tail(10));

    // Entity errors: events in the execution dataset and at the collector.
    let done = api.run("mixed").await;
    assert_eq!(done["event_type"], "pump-completed", "{done}");
    assert_eq!(
        done["metrics"]["entities.read_errors_last_run"], 2,
        "{done}"
    );
    assert_eq!(
        done["metrics"]["entities.write_errors_last_run"], 1,
        "{done}"
    );
    let log = api.get("/api/pipes/mixed/log").await;
    let count = |t: &str| {
        log.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event_type"] == t)
            .count()
    };
    assert_eq!((count("read-error"), count("write-error")), (2, 1), "{log}");

    let op = operator_token(SUB);
    let errors = until(
        "the entity errors at the collector",
        Duration::from_secs(30),
        || {
            let (collector, op) = (&collector, op.clone());
            async move {
                let found = collector
                    .search(
                        &op,
                        r#"{source="lifecycle-node", event_type=~"read-error|write-error"}"#,
                    )
                    .await;
                (found.len() >= 3).then_some(found)
            }
        },
    )
    .await;
    assert_eq!(errors.len(), 3);
    let write = errors
        .iter()
        .find(|r| r["body"]["event_type"] == "write-error")
        .unwrap();
    assert_eq!(write["body"]["entity_id"], "nul\\u{0}id");
    assert_eq!(write["body"]["error_code"], "invalid-entity");
    for r in &errors {
        assert!(r["body"].get("entity").is_none(), "{r}");
        assert_eq!(r["body"]["pipe"], "mixed");
    }
    let everything = collector.search(&op, r#"{source="lifecycle-node"}"#).await;
    let text = serde_json::to_string(&everything).unwrap();
    assert!(
        !text.contains("do-not-ship"),
        "an entity reached the collector"
    );
    node.stop();
    collector.stop();
    // Written to a file (not a terminal), the logs carry no colour codes.
    let node_log = node.log_text();
    let collector_log = collector.log_tail(usize::MAX);
    assert!(
        node_log.contains(" INFO "),
        "the node logged nothing at INFO"
    );
    for (name, log) in [("node", &node_log), ("collector", &collector_log)] {
        assert!(!log.contains('\u{1b}'), "{name}'s log has ANSI escapes");
    }
}

//! Helpers for the node's integration tests: an in-process node on a
//! loopback port, small HTTP systems, and polling of the execution dataset.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::routing::get;
use axum::Router;
use node::{Listen, NodeConfig, NodeError};
use serde_json::{json, Value};
use shipper::outbox::{Outbox, OutboxConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-api-token-0123456789";

pub struct TestNode {
    pub base: String,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), NodeError>>>,
}

/// Writes `config` into `dir` and starts a node on a loopback port.
pub async fn start(dir: &Path, config: &Value) -> TestNode {
    start_with(dir, config, |_| {}).await
}

/// Like [`start`], with a last word on the node's configuration.
pub async fn start_with(
    dir: &Path,
    config: &Value,
    tweak: impl FnOnce(&mut NodeConfig),
) -> TestNode {
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
    let data_dir = dir.join("data");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut c = NodeConfig::new(&config_path, &data_dir, Listen::Listener(listener));
    c.node_id = "test-node".into();
    c.subscription = "acme".into();
    c.api_token = Some(TOKEN.into());
    c.health_interval = Duration::from_millis(300);
    tweak(&mut c);
    let shutdown = CancellationToken::new();
    let node = node::Node::open(c).await.expect("open node");
    let handle = tokio::spawn(node.run(shutdown.clone()));
    TestNode {
        base: format!("http://{addr}"),
        data_dir,
        client: reqwest::Client::new(),
        shutdown,
        handle: Some(handle),
    }
}

impl TestNode {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, Value, String) {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, v, text)
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .put(self.url(path))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn put_raw(&self, path: &str, body: &'static str) -> (u16, Value) {
        let r = self
            .client
            .put(self.url(path))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Any method with a JSON body (or none); status and JSON answer.
    pub async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.client.request(m, self.url(path)).bearer_auth(TOKEN);
        if let Some(b) = body {
            r = r.json(b);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn pump(&self, pipe: &str, operation: &str) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(&format!("/api/pipes/{pipe}/pump")))
            .bearer_auth(TOKEN)
            .form(&[("operation", operation)])
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// The highest `_updated` of a pipe's execution log (0 when empty).
    pub async fn log_head(&self, pipe: &str) -> u64 {
        let (_, v, _) = self
            .get(&format!("/api/pipes/{pipe}/log?reverse=true&limit=1"))
            .await;
        v.get(0).and_then(|e| e["_updated"].as_u64()).unwrap_or(0)
    }

    /// Waits for a pump-completed or pump-failed after `since`.
    pub async fn wait_run_end(&self, pipe: &str, since: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, v, _) = self
                .get(&format!("/api/pipes/{pipe}/log?since={since}"))
                .await;
            if let Some(e) = v.as_array().and_then(|a| {
                a.iter().find(|e| {
                    matches!(
                        e["event_type"].as_str(),
                        Some("pump-completed" | "pump-failed")
                    )
                })
            }) {
                return e.clone();
            }
            assert!(
                Instant::now() < deadline,
                "pipe {pipe} did not finish a run: {v}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Starts a run and returns its (pump-started, final event).
    pub async fn run_pipe(&self, pipe: &str) -> (Value, Value) {
        let since = self.log_head(pipe).await;
        let (status, body) = self.pump(pipe, "start").await;
        assert_eq!(status, 200, "start {pipe}: {body}");
        let end = self.wait_run_end(pipe, since).await;
        let (_, log, _) = self
            .get(&format!("/api/pipes/{pipe}/log?since={since}"))
            .await;
        let started = log
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event_type"] == "pump-started")
            .cloned()
            .expect("a pump-started event");
        assert_eq!(started["run_id"], end["run_id"]);
        // The pump reports idle once the run is recorded.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, p, _) = self.get(&format!("/api/pipes/{pipe}/pump")).await;
            if p["runtime"]["is-running"] == json!(false) {
                break;
            }
            assert!(Instant::now() < deadline, "pump {pipe} stays running: {p}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (started, end)
    }

    /// Stops the node and waits for it; returns its data directory.
    pub async fn stop(mut self) -> PathBuf {
        self.shutdown.cancel();
        let h = self.handle.take().unwrap();
        tokio::time::timeout(Duration::from_secs(20), h)
            .await
            .expect("node stops within the deadline")
            .unwrap()
            .expect("node ran without error");
        self.data_dir.clone()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Every record in a stopped node's outbox.
pub fn outbox_records(data_dir: &Path) -> Vec<schemas::Record> {
    let outbox = Outbox::open(data_dir.join("outbox"), OutboxConfig::default()).unwrap();
    outbox.read(0, 1_000_000, usize::MAX).unwrap().records
}

/// What a small HTTP system saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub authorization: Vec<String>,
    pub posted: Vec<Value>,
}

/// An HTTP system on a loopback port: `GET /api/contacts` answers entities,
/// `GET /api/slow` answers after 3 s, `POST /api/sink` stores the batch,
/// `POST /api/broken` answers 500 echoing the Authorization header,
/// `GET /api/notjson` answers text, `GET /api/mixed` two good entities
/// and three without a usable `_id` (missing, NUL, empty), `GET /api/big` about 2.5 MB of
/// entities, `GET /api/redirect-same` redirects to `/api/contacts` and
/// `GET /api/redirect-away` to another origin.
pub async fn http_system() -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s1 = seen.clone();
    let s2 = seen.clone();
    let app = Router::new()
        .route(
            "/api/contacts",
            get(move |h: HeaderMap| {
                let seen = s1.clone();
                async move {
                    if let Some(a) = h.get("authorization").and_then(|v| v.to_str().ok()) {
                        seen.lock().unwrap().authorization.push(a.to_string());
                    }
                    axum::Json(json!([
                        {"_id": "p1", "name": "Linus", "mail": "linus@example.com"},
                        {"_id": "p2", "name": "Margaret", "mail": "margaret@example.com"}
                    ]))
                }
            }),
        )
        .route(
            "/api/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                axum::Json(json!([{"_id": "s1"}]))
            }),
        )
        .route(
            "/api/sink",
            axum::routing::post(move |axum::Json(batch): axum::Json<Vec<Value>>| {
                let seen = s2.clone();
                async move {
                    seen.lock().unwrap().posted.extend(batch);
                    "ok"
                }
            }),
        )
        .route(
            "/api/broken",
            axum::routing::post(|h: HeaderMap| async move {
                let auth = h
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    format!("internal error; you sent {auth}"),
                )
            }),
        )
        .route("/api/notjson", get(|| async { "this is not json" }))
        .route(
            "/api/big",
            get(|| async {
                let entities: Vec<Value> = (0..20_000)
                    .map(|i| json!({"_id": format!("big-{i}"), "padding": "x".repeat(100)}))
                    .collect();
                axum::Json(entities)
            }),
        )
        .route(
            "/api/mixed",
            get(|| async {
                axum::Json(json!([
                    {"_id": "good-1", "v": 1},
                    {"name": "without an _id", "secret_field": "do-not-ship"},
                    {"_id": "nul\u{0}id", "secret_field": "do-not-ship"},
                    {"_id": "", "v": 3},
                    {"_id": "good-2", "v": 2}
                ]))
            }),
        )
        .route(
            "/api/redirect-same",
            get(|| async { axum::response::Redirect::temporary("/api/contacts") }),
        )
        .route(
            "/api/redirect-away",
            get(|| async {
                axum::response::Redirect::temporary("http://localhost:9/api/contacts")
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), seen)
}

/// The example config with the `crm` system pointed at `base`.
pub fn example_config(base: &str) -> Value {
    let path = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("examples/config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    for e in v.as_array_mut().unwrap() {
        if e["_id"] == "crm" {
            e["url_pattern"] = json!(format!("{base}/api/%s"));
        }
    }
    v
}

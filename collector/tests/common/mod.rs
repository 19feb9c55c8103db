//! Shared test harness: a collector in process on 127.0.0.1:0 with a temp
//! data dir and a fixed tokens file.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use collector::{CollectorConfig, Listen, Tokens};
use schemas::{Body, EventType, ExecutionBody, IngestBatch, Record};
use testkit::records;
use tokio_util::sync::CancellationToken;

pub use testkit::tokens::ADMIN;
pub const SHIP_ACME: &str = "ship-acme";
pub const OP_ACME: &str = "op-acme";
pub const SHIP_BETA: &str = "ship-beta";
pub const OP_BETA: &str = "op-beta";

pub fn tokens() -> Tokens {
    let toml = testkit::tokens::toml(&["acme", "beta"]);
    Tokens::parse(&toml, Path::new("test-tokens.toml")).expect("tokens parse")
}

pub struct Harness {
    pub addr: SocketAddr,
    pub base: String,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), collector::CollectorError>>,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
}

impl Harness {
    pub async fn start(data_dir: &Path) -> Harness {
        Harness::start_with(data_dir, |_| {}).await
    }

    pub async fn start_with(data_dir: &Path, tweak: impl FnOnce(&mut CollectorConfig)) -> Harness {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut config = CollectorConfig::new(data_dir, Listen::Listener(listener), tokens());
        tweak(&mut config);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(collector::run(config, shutdown.clone()));
        let h = Harness {
            addr,
            base: format!("http://{addr}"),
            shutdown,
            task,
            data_dir: data_dir.to_path_buf(),
            client: reqwest::Client::new(),
        };
        // Wait until it answers.
        for _ in 0..200 {
            if let Ok(r) = h.client.get(h.url("/healthz")).send().await {
                if r.status().is_success() {
                    return h;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("collector did not come up");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("collector task")
            .expect("collector stopped cleanly");
    }

    /// POSTs a raw ingest body.
    pub async fn post_raw(
        &self,
        token: &str,
        body: Vec<u8>,
        encoding: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .post(self.url("/api/v1/ingest"))
            .bearer_auth(token)
            .header("content-type", "application/msgpack")
            .body(body);
        if let Some(e) = encoding {
            req = req.header("content-encoding", e);
        }
        req.send().await.expect("send ingest")
    }

    /// POSTs a batch zstd-compressed, as the shipper does.
    pub async fn ingest(&self, token: &str, batch: &IngestBatch) -> reqwest::Response {
        let raw = schemas::to_msgpack(batch).expect("encode");
        let z = zstd::encode_all(raw.as_slice(), 3).expect("zstd");
        self.post_raw(token, z, Some("zstd")).await
    }

    /// Ingests and expects 200; returns (accepted, duplicates).
    pub async fn ingest_ok(&self, token: &str, batch: &IngestBatch) -> (u64, u64) {
        let r = self.ingest(token, batch).await;
        let status = r.status();
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(status, 200, "ingest failed: {body}");
        (
            body["accepted"].as_u64().expect("accepted"),
            body["duplicates"].as_u64().expect("duplicates"),
        )
    }

    pub async fn get_json(
        &self,
        token: &str,
        path: &str,
        query: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .query(query)
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        let body = r.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    /// `/api/v1/logs` records for `query` over the last `since`.
    pub async fn logs(&self, token: &str, query: &str, limit: usize) -> Vec<serde_json::Value> {
        let (status, body) = self
            .get_json(
                token,
                "/api/v1/logs",
                &[
                    ("query", query),
                    ("since", "2h"),
                    ("limit", &limit.to_string()),
                ],
            )
            .await;
        assert_eq!(status, 200, "{query}: {body}");
        body["records"].as_array().expect("records").clone()
    }
}

pub fn now() -> i64 {
    schemas::time::now_nanos()
}

pub fn log_record(sub: &str, source: &str, seq: u64, ts: i64, message: &str) -> Record {
    let body = records::log_body("node::pump", message);
    records::record(sub, source, seq, ts, body)
}

pub fn exec_record(
    sub: &str,
    source: &str,
    seq: u64,
    ts: i64,
    pipe: &str,
    event: EventType,
    changes: Option<u64>,
) -> Record {
    let mut b = ExecutionBody::new(pipe, event);
    b.run_id = Some(format!("run-{seq}"));
    b.metrics.changes_last_run = changes;
    if event == EventType::PumpFailed {
        b.original_error_message = Some("connection timeout talking to crm".into());
    }
    records::record(sub, source, seq, ts, Body::Execution(Box::new(b)))
}

pub fn batch(sub: &str, source: &str, records: Vec<Record>) -> IngestBatch {
    records::batch(sub, source, "", records)
}

/// `n` log records with seqs `first..first+n`, one millisecond apart.
pub fn logs_batch(sub: &str, source: &str, first: u64, n: u64, base_ts: i64) -> IngestBatch {
    batch(
        sub,
        source,
        (first..first + n)
            .map(|s| {
                log_record(
                    sub,
                    source,
                    s,
                    base_ts + s as i64 * 1_000_000,
                    &format!("line {s}"),
                )
            })
            .collect(),
    )
}

/// POSTs a remote-write body (snappy protobuf) to `/api/v1/write`: the
/// status, the `Retry-After` header and the body.
pub async fn post_remote_write(
    h: &Harness,
    token: &str,
    body: Vec<u8>,
) -> (u16, Option<String>, String) {
    let r = h
        .client
        .post(h.url("/api/v1/write"))
        .bearer_auth(token)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "snappy")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .body(body)
        .send()
        .await
        .expect("post /api/v1/write");
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, retry, r.text().await.unwrap_or_default())
}

//! `sesam-collector` as a child process on a fixed loopback port (so that it
//! can be killed and restarted where its clients expect it), its HTTP API,
//! and an offline audit of its store.
//!
//! Tokens are plain (development) entries: per subscription `S` a shipper
//! token [`shipper_token`] and an operator token [`operator_token`], plus
//! the admin token [`ADMIN`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use collector::logs::rocks::StoreConfig;
use serde_json::{json, Value};

use crate::process::{bin, free_port, until, Service};

pub use testkit::tokens::{operator as operator_token, shipper as shipper_token, ADMIN};

/// What `GET /api/v1/sources` says about one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SourceStats {
    pub records: u64,
    pub last_seq: u64,
    pub duplicates: u64,
    pub dropped: u64,
}

#[derive(Debug)]
pub struct Collector {
    pub root: PathBuf,
    pub data_dir: PathBuf,
    tokens: PathBuf,
    pub port: u16,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// Extra flags of every start.
    pub args: Vec<String>,
    /// The process (start, SIGKILL, SIGTERM, log), also reached through
    /// `Deref`: `collector.kill()`.
    service: Service,
    client: reqwest::Client,
}

impl Collector {
    /// Prepares a collector in `root` (data, tokens, log) for `subscriptions`;
    /// [`Collector::start`] runs it.
    pub fn new(root: &Path, subscriptions: &[&str]) -> Collector {
        std::fs::create_dir_all(root).expect("create collector root");
        let tokens = testkit::tokens::write(&root.join("tokens.toml"), subscriptions);
        let port = free_port();
        Collector {
            root: root.to_path_buf(),
            data_dir: root.join("data"),
            tokens,
            port,
            url: format!("http://127.0.0.1:{port}"),
            // The tests' webhooks listen on this host's loopback, which the
            // notifier's egress policy refuses unless allowed.
            args: vec!["--egress-allow".into(), "127.0.0.1/32".into()],
            service: Service::new("sesam-collector", root.join("collector.log")),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("HTTP client"),
        }
    }

    /// A file holding the shipper token of `subscription`, for `--token-file`.
    pub fn token_file(&self, subscription: &str) -> PathBuf {
        let p = self.root.join(format!("{subscription}.token"));
        std::fs::write(&p, shipper_token(subscription)).expect("write token file");
        p
    }

    /// Starts the process without waiting for it to serve.
    pub fn spawn(&mut self) {
        let mut cmd = Command::new(bin("sesam-collector"));
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--tokens")
            .arg(&self.tokens)
            .args(&self.args)
            .env("RUST_LOG", "warn");
        self.service.spawn(cmd);
    }

    /// Starts the process and waits until it answers `/readyz`.
    pub async fn start(&mut self) {
        self.spawn();
        self.wait_ready().await;
    }

    pub async fn wait_ready(&mut self) {
        let url = format!("{}/readyz", self.url);
        let client = self.client.clone();
        let ready = || async {
            client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        };
        self.service
            .wait_ready(Duration::from_secs(30), ready)
            .await;
    }

    /// `GET path` with `token`: (status, body text).
    pub async fn get(&self, path: &str, token: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    /// `GET path` that must answer 200 with JSON.
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        let (status, body) = self.get(path, token).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// A JSON request: (status, JSON body or `Null`).
    pub async fn send(&self, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let req = match method {
            "POST" => self.client.post(url),
            "PUT" => self.client.put(url),
            "DELETE" => self.client.delete(url),
            _ => self.client.get(url),
        };
        let req = if body.is_null() { req } else { req.json(&body) };
        let r = req
            .bearer_auth(token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The collector's view of one source, if it has stored any record of it.
    /// `None` also while the collector does not answer.
    pub async fn source(&self, subscription: &str, source: &str) -> Option<SourceStats> {
        let r = self
            .client
            .get(format!("{}/api/v1/sources", self.url))
            .bearer_auth(ADMIN)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        v["sources"].as_array()?.iter().find_map(|s| {
            (s["subscription"] == subscription && s["source"] == source).then(|| SourceStats {
                records: s["records"].as_u64().unwrap_or(0),
                last_seq: s["last_seq"].as_u64().unwrap_or(0),
                duplicates: s["duplicates"].as_u64().unwrap_or(0),
                dropped: s["dropped"].as_u64().unwrap_or(0),
            })
        })
    }

    /// Waits until the collector holds `records` records of `source`.
    pub async fn wait_records(
        &self,
        subscription: &str,
        source: &str,
        records: u64,
        timeout: Duration,
    ) {
        until(
            &format!("{records} records of {source} in the collector"),
            timeout,
            || async {
                let s = self.source(subscription, source).await.unwrap_or_default();
                (s.records >= records).then_some(())
            },
        )
        .await;
    }

    /// Records matching a LogQL `query` in the last day (at most 5,000).
    pub async fn search(&self, token: &str, query: &str) -> Vec<Value> {
        let r = self
            .client
            .get(format!("{}/api/v1/logs", self.url))
            .query(&[("query", query), ("since", "24h"), ("limit", "5000")])
            .bearer_auth(token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("search {query}: {e}"));
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "search {query}: {status} {v}");
        v["records"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `pipes` pipes of `subscription` have run `runs` times
    /// more each (counted by their `pump-completed` records here).
    pub async fn wait_pipe_runs(&self, subscription: &str, pipes: usize, runs: usize) {
        let token = operator_token(subscription);
        let count = || async {
            self.search(&token, r#"{kind="execution", event_type="pump-completed"}"#)
                .await
                .len()
        };
        let start = count().await;
        until("the pipes to run", Duration::from_secs(60), || async {
            (count().await >= start + pipes * runs).then_some(())
        })
        .await;
    }

    /// A webhook receiver `name` and a `pump_failed` rule on `pipes` in
    /// `subscription`, created with its operator token. Returns the rule id.
    pub async fn pump_failed_rule(
        &self,
        subscription: &str,
        name: &str,
        pipes: &[&str],
        webhook_url: &str,
    ) -> String {
        let op = operator_token(subscription);
        let (st, body) = self
            .send(
                "PUT",
                &format!("/api/v1/receivers/{name}"),
                &op,
                json!({"type": "webhook", "url": webhook_url}),
            )
            .await;
        assert!(st == 200 || st == 201, "create receiver: {st} {body}");
        let (st, body) = self
            .send(
                "POST",
                "/api/v1/notification-rules",
                &op,
                json!({"name": format!("{name} pump failed"), "type": "pump_failed",
                       "pipes": pipes, "receivers": [name], "severity": "critical"}),
            )
            .await;
        assert_eq!(st, 201, "create rule: {body}");
        body["rule"]["id"]
            .as_str()
            .expect("rule id in the answer")
            .to_string()
    }

    /// The final check of the fault tests. Asserts over HTTP that the
    /// collector holds, of each expected source, exactly the seqs `1..=last`
    /// minus `missing`; then stops it (SIGTERM, which must succeed) and
    /// audits its store offline: every expected seq stored exactly once,
    /// nothing else. Returns the stored lines by seq, per expected source.
    pub async fn assert_exactly_once_and_stop(
        &mut self,
        subscription: &str,
        expect: &[Expect<'_>],
    ) -> Vec<BTreeMap<u64, Value>> {
        for e in expect {
            let s = self
                .source(subscription, e.source)
                .await
                .unwrap_or_else(|| panic!("the collector knows no source {}", e.source));
            eprintln!(
                "collector: {}: {} records, last seq {}, {} duplicate deliveries deduplicated",
                e.source, s.records, s.last_seq, s.duplicates
            );
            assert_eq!(
                (s.records, s.last_seq),
                (e.last - e.missing.len() as u64, e.last),
                "the collector's view of {} (records, last seq)",
                e.source
            );
        }
        self.stop();
        let mut out = Vec::new();
        for e in expect {
            let stored = audit_store(&self.data_dir, subscription, e.source);
            let mut lines = BTreeMap::new();
            let mut dupes = Vec::new();
            for (seq, copies) in stored {
                if copies.len() > 1 {
                    dupes.push(seq);
                }
                lines.insert(seq, copies.into_iter().next().expect("one copy at least"));
            }
            assert!(
                dupes.is_empty(),
                "{}: seqs stored more than once: {dupes:?}",
                e.source
            );
            let unexpected: Vec<u64> = lines
                .keys()
                .copied()
                .filter(|s| *s > e.last || *s == 0 || e.missing.contains(s))
                .take(20)
                .collect();
            assert!(
                unexpected.is_empty(),
                "{}: unexpected seqs stored: {unexpected:?}",
                e.source
            );
            let absent: Vec<u64> = (1..=e.last)
                .filter(|s| !e.missing.contains(s) && !lines.contains_key(s))
                .take(20)
                .collect();
            assert!(
                absent.is_empty(),
                "{}: accepted seqs not stored: {absent:?}",
                e.source
            );
            out.push(lines);
        }
        out
    }
}

/// What the collector must hold of one source: seqs `1..=last` except `missing`.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub source: &'a str,
    pub last: u64,
    pub missing: &'a [u64],
}

impl<'a> Expect<'a> {
    /// Every seq `1..=last`.
    pub fn all(source: &'a str, last: u64) -> Expect<'a> {
        Expect {
            source,
            last,
            missing: &[],
        }
    }
}

/// Every stored entry of `source`, read straight from a stopped collector's
/// store (not through its dedupe table or counters): seq -> the stored lines
/// (JSON bodies) with that seq, across all streams of the source.
pub fn audit_store(data_dir: &Path, subscription: &str, source: &str) -> BTreeMap<u64, Vec<Value>> {
    let store = collector::Store::open(
        data_dir,
        StoreConfig {
            block_cache_bytes: 8 << 20,
            write_buffer_bytes: 8 << 20,
            queue_batches: 1,
            ..StoreConfig::default()
        },
        collector::telemetry::Metrics::default(),
        Vec::new(),
    )
    .unwrap_or_else(|e| panic!("open the collector store {}: {e}", data_dir.display()));
    let mut out: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for stream in store.streams() {
        let l = &stream.labels;
        if l.get("subscription").map(String::as_str) != Some(subscription)
            || l.get("source").map(String::as_str) != Some(source)
        {
            continue;
        }
        let mut it = store
            .scan(stream.id, i64::MIN, i64::MAX, false)
            .expect("scan stream");
        while it.valid() {
            let (_, seq, line) = it
                .current()
                .unwrap_or_else(|| panic!("malformed entry in stream {}", stream.id));
            let v: Value = serde_json::from_slice(line)
                .unwrap_or_else(|e| panic!("stored line of seq {seq} is not JSON: {e}"));
            out.entry(seq).or_default().push(v);
            it.advance();
        }
        it.status().expect("scan stream");
    }
    store.close();
    out
}

impl std::ops::Deref for Collector {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.service
    }
}

impl std::ops::DerefMut for Collector {
    fn deref_mut(&mut self) -> &mut Service {
        &mut self.service
    }
}

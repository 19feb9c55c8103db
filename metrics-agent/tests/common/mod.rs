//! Harness of the agent's integration tests: the collector and a node in
//! process, the agent binary, and the real Prometheus and node_exporter
//! (Debian packages) on free loopback ports with temporary directories.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub const SHIP_ACME: &str = "ship-acme";
pub const OP_ACME: &str = "op-acme";
pub const NODE_TOKEN: &str = "node-api-token-0123456789";

/// How long a process under test may take to exit on SIGTERM.
pub const STOP: Duration = Duration::from_secs(10);

pub use testkit::{free_port, Proc};

/// A Debian package's binary, or `None` with a message saying the test
/// is skipped.
pub fn binary(name: &str) -> Option<PathBuf> {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Some(p);
        }
    }
    eprintln!("SKIPPED: {name} is not installed (run ./scripts/setup.sh to install it)");
    None
}

/// Waits until `url` answers 2xx (30 s).
pub async fn wait_ready(client: &reqwest::Client, url: &str, what: &str) {
    testkit::process::wait_http_ok(client, url, what, Duration::from_secs(30)).await
}

pub async fn get_text(client: &reqwest::Client, url: &str, token: Option<&str>) -> String {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    r.text().await.expect("body")
}

/// A collector in process.
pub struct Collector {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), collector::CollectorError>>,
}

impl Collector {
    pub async fn start(dir: &Path) -> Collector {
        Collector::start_at(dir, 0).await
    }

    /// On a given loopback port (0: any).
    pub async fn start_at(dir: &Path, port: u16) -> Collector {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let toml = testkit::tokens::toml(&["acme"]);
        let tokens = collector::Tokens::parse(&toml, Path::new("tokens.toml")).unwrap();
        let config = collector::CollectorConfig::new(
            dir.join("collector"),
            collector::Listen::Listener(listener),
            tokens,
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(collector::run(config, shutdown.clone()));
        let c = Collector {
            addr,
            shutdown,
            task,
        };
        wait_ready(&reqwest::Client::new(), &c.url("/healthz"), "collector").await;
        c
    }
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// A node with one pipe that completes and one that fails, shipping to
/// `collector` (if given) in process.
pub struct Node {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), node::NodeError>>,
}

pub const NODE_CONFIG: &str = r#"[
  {"_id": "node", "type": "metadata", "monitoring": {"enabled": true}},
  {"_id": "orders", "type": "pipe",
   "source": {"type": "embedded", "entities": [{"_id": "o1", "amount": "12"}]},
   "pump": {"schedule_interval": 3600}},
  {"_id": "broken", "type": "pipe",
   "source": {"type": "embedded", "entities": [{"_id": "b1", "amount": "n/a"}]},
   "transform": {"type": "dtl", "rules": {"default": [["copy", "*"], ["add", "amount", ["integer", "_S.amount"]]]}},
   "pump": {"schedule_interval": 3600}}
]"#;

impl Node {
    pub async fn start(dir: &Path, collector: Option<String>) -> Node {
        Node::start_with(dir, collector, |_| {}).await
    }

    pub async fn start_with(
        dir: &Path,
        collector: Option<String>,
        tweak: impl FnOnce(&mut node::NodeConfig),
    ) -> Node {
        let config_path = dir.join("node-config.json");
        std::fs::write(&config_path, NODE_CONFIG).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut c = node::NodeConfig::new(
            &config_path,
            dir.join("node"),
            node::Listen::Listener(listener),
        );
        c.node_id = "node-1".into();
        c.subscription = "acme".into();
        c.api_token = Some(NODE_TOKEN.into());
        c.collector =
            collector.map(|url| shipper::service::Target::new(url, Some(SHIP_ACME.into())));
        tweak(&mut c);
        let shutdown = CancellationToken::new();
        let n = node::Node::open(c).await.expect("open node");
        let task = tokio::spawn(n.run(shutdown.clone()));
        let node = Node {
            addr,
            shutdown,
            task,
        };
        wait_ready(&reqwest::Client::new(), &node.url("/api/ping"), "node").await;
        node
    }
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    /// Starts both pipes and waits until each has run once.
    pub async fn run_pipes(&self) {
        let client = reqwest::Client::new();
        for pipe in ["orders", "broken"] {
            let r = client
                .post(self.url(&format!("/api/pipes/{pipe}/pump")))
                .bearer_auth(NODE_TOKEN)
                .form(&[("operation", "start")])
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "start {pipe}: {}", r.status());
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = get_text(&client, &self.url("/api/metrics"), Some(NODE_TOKEN)).await;
            if text.contains("sesam_pump_completed_total{pipe=\"orders\"}")
                && text.contains("sesam_pump_failed_total{pipe=\"broken\"}")
            {
                return;
            }
            assert!(Instant::now() < deadline, "pipes did not run: {text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// The agent binary built with this package.
pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sesam-metrics-agent")
}

/// A real Prometheus with `scrape_configs` (YAML, indented for the list).
pub struct Prometheus {
    pub proc: Proc,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Prometheus {
    pub async fn start(scrape_configs: &str) -> Option<Prometheus> {
        let bin = binary("prometheus")?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{scrape_configs}"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-remote-write-receiver");
        let proc = Proc::spawn("prometheus", cmd, &dir.path().join("prometheus.log"));
        let p = Prometheus { proc, port, dir };
        wait_ready(&reqwest::Client::new(), &p.url("/-/ready"), "prometheus").await;
        Some(p)
    }
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
    pub fn log(&self) -> String {
        self.proc.log_text()
    }
    /// The result vector of an instant query.
    pub async fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let r = reqwest::Client::new()
            .get(self.url("/api/v1/query"))
            .query(&[("query", q)])
            .send()
            .await
            .expect("query prometheus");
        let v: serde_json::Value = r.json().await.expect("query json");
        assert_eq!(v["status"], "success", "{q}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
    /// Polls `q` until it has a result (30 s).
    pub async fn query_until(&self, q: &str) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.query(q).await;
            if !r.is_empty() {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no result for {q} within 30 s; prometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Metric names a Prometheus exposition declares or contains: sample
/// names, plus every name a `# TYPE` line implies (counter -> `_total`,
/// histogram -> `_bucket`/`_sum`/`_count`, summary -> `_sum`/`_count`).
pub fn exposed_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split_whitespace();
            let (Some(name), Some(kind)) = (p.next(), p.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            for s in suffixes {
                let n = if name.ends_with(s) {
                    name.to_string()
                } else {
                    format!("{name}{s}")
                };
                out.insert(n);
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            out.insert(line[..end].to_string());
        }
    }
    out
}

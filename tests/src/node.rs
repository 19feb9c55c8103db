//! `sesam-node` as a child process with its in-process shipper, on a fixed
//! API port across restarts, and its outbox read offline between runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use shipper::outbox::{Outbox, OutboxConfig, OutboxStats};

use crate::process::{bin, free_port, metric_sum, until, Service};

/// The sink name of the node's in-process shipper in its outbox.
pub const SINK: &str = "collector";

/// A node configuration with monitoring on and one manual pipe `pipe` that
/// fails on its second entity (`"amount": "n/a"` is not an integer), like
/// `orders` in `node/examples/config.json`.
pub fn failing_pipe_config(pipe: &str) -> Value {
    json!([
        {"_id": "node", "type": "metadata", "monitoring": {"enabled": true}},
        {"_id": pipe, "type": "pipe",
         "source": {"type": "embedded", "entities": [
             {"_id": "o1", "customer": "c1", "amount": "120"},
             {"_id": "o2", "customer": "c2", "amount": "n/a"},
             {"_id": "o3", "customer": "c3", "amount": "75"}]},
         "transform": {"type": "dtl", "rules": {"default": [
             ["copy", "*"], ["add", "amount", ["integer", "_S.amount"]]]}},
         "pump": {"mode": "manual"}}
    ])
}

/// A node configuration with monitoring on and `pipes` (each over one
/// embedded entity) scheduled every 2 s.
pub fn scheduled_pipes_config(pipes: &[&str]) -> Value {
    let mut config =
        vec![json!({"_id": "node", "type": "metadata", "monitoring": {"enabled": true}})];
    config.extend(pipes.iter().map(|id| {
        json!({"_id": id, "type": "pipe",
               "source": {"type": "embedded", "entities": [{"_id": "e1", "n": 1}]},
               "pump": {"schedule_interval": 2}})
    }));
    Value::Array(config)
}

/// The flags of a synthetic stream of `total` log records at `rate` a
/// second (`--synthetic-logs`, `--synthetic-rate`).
pub fn synthetic(total: u64, rate: u64) -> Vec<String> {
    vec![
        "--synthetic-logs".into(),
        total.to_string(),
        "--synthetic-rate".into(),
        rate.to_string(),
    ]
}

#[derive(Debug)]
pub struct Node {
    pub root: PathBuf,
    pub data_dir: PathBuf,
    config: PathBuf,
    pub port: u16,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub node_id: String,
    pub subscription: String,
    /// `--collector URL --token-file F`, if it ships.
    pub collector: Option<(String, PathBuf)>,
    /// The process (start, SIGKILL, SIGTERM, log), also reached through
    /// `Deref`: `node.kill()`.
    service: Service,
    client: reqwest::Client,
}

impl Node {
    pub fn new(root: &Path, node_id: &str, subscription: &str, config: &Value) -> Node {
        std::fs::create_dir_all(root).expect("create node root");
        let path = root.join("config.json");
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(config).expect("config JSON"),
        )
        .expect("write node config");
        let port = free_port();
        Node {
            root: root.to_path_buf(),
            data_dir: root.join("data"),
            config: path,
            port,
            url: format!("http://127.0.0.1:{port}"),
            node_id: node_id.to_string(),
            subscription: subscription.to_string(),
            collector: None,
            service: Service::new("sesam-node", root.join("node.log")),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
        }
    }

    /// Starts the process with `extra` flags, without waiting for it.
    pub fn spawn(&mut self, extra: &[String]) {
        let mut cmd = Command::new(bin("sesam-node"));
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--node-id", &self.node_id])
            .args(["--subscription", &self.subscription])
            .args(extra)
            .env("RUST_LOG", "info");
        if let Some((url, token)) = &self.collector {
            cmd.args(["--collector", url])
                .arg("--token-file")
                .arg(token);
        }
        self.service.spawn(cmd);
    }

    /// Starts the process and waits until its API answers.
    pub async fn start(&mut self, extra: &[String]) {
        self.spawn(extra);
        let (client, url) = (self.client.clone(), self.url.clone());
        let ready = || ping(&client, &url);
        self.service
            .wait_ready(Duration::from_secs(30), ready)
            .await;
    }

    pub async fn ping(&self) -> bool {
        ping(&self.client, &self.url).await
    }

    /// `POST /api/pipes/{pipe}/pump operation=start`; the status code, or
    /// `None` if the node did not answer.
    pub async fn start_pump(&self, pipe: &str) -> Option<u16> {
        self.client
            .post(format!("{}/api/pipes/{pipe}/pump", self.url))
            .form(&[("operation", "start")])
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// The sum of metric `name` in `GET /api/metrics`, if the node answers.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let r = self
            .client
            .get(format!("{}/api/metrics", self.url))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        metric_sum(&r.text().await.ok()?, name)
    }

    /// Opens the outbox of the stopped node.
    pub fn outbox(&self) -> Outbox {
        assert!(
            !self.is_running(),
            "the node must be stopped to open its outbox"
        );
        Outbox::open(self.data_dir.join("outbox"), OutboxConfig::default())
            .unwrap_or_else(|e| panic!("open the node's outbox: {e}"))
    }

    /// The stopped node's outbox counters.
    pub fn outbox_stats(&self) -> OutboxStats {
        assert!(
            !self.is_running(),
            "the node must be stopped to open its outbox"
        );
        crate::outbox_stats(&self.data_dir.join("outbox"))
    }

    /// Records the stopped node's outbox ever accepted (its last seq).
    pub fn accepted(&self) -> u64 {
        self.outbox_stats().next_seq.saturating_sub(1)
    }

    /// Runs the node without load until its outbox is empty (everything
    /// acknowledged by the collector), then stops it with SIGTERM; repeats
    /// if the shutdown itself appended something. Returns the last seq the
    /// outbox accepted.
    pub async fn drain_and_stop(&mut self, timeout: Duration) -> u64 {
        for _ in 0..3 {
            if !self.is_running() {
                self.start(&[]).await;
            }
            until("the node's outbox to be acknowledged", timeout, || async {
                let depth = self.metric("outbox_records").await?;
                (depth == 0.0).then_some(())
            })
            .await;
            self.stop();
            let stats = self.outbox_stats();
            if stats.records == 0 {
                let acked = stats.sinks.get(SINK).map(|s| s.acked);
                assert_eq!(
                    acked,
                    Some(stats.next_seq - 1),
                    "sink cursor of an empty outbox"
                );
                return stats.next_seq - 1;
            }
        }
        panic!("the node's outbox never emptied");
    }
}

async fn ping(client: &reqwest::Client, url: &str) -> bool {
    client
        .get(format!("{url}/api/ping"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

impl std::ops::Deref for Node {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.service
    }
}

impl std::ops::DerefMut for Node {
    fn deref_mut(&mut self) -> &mut Service {
        &mut self.service
    }
}

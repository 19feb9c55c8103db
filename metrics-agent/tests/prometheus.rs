//! Against the real Prometheus (Debian's `prometheus`, started here on a
//! free loopback port with deploy/prometheus/prometheus.yml and a temporary
//! storage directory):
//! - it scrapes the collector's `/federate` (fed by the agent binary, which
//!   pushes host metrics and the node's scraped metrics by remote-write),
//!   the collector's `/metrics`, the node's `/api/metrics` and the agent's
//!   `/metrics`, and its query API finds the host and pipe series with the
//!   right labels;
//! - the agent binary pushes by remote-write into Prometheus itself.

mod common;

use std::process::Command;

use common::*;

fn label<'a>(series: &'a serde_json::Value, name: &str) -> &'a str {
    series["metric"][name].as_str().unwrap_or("")
}

fn value(series: &serde_json::Value) -> f64 {
    series["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// deploy/prometheus/prometheus.yml with the example hosts, token files and
/// intervals replaced.
fn example_config(replace: &[(&str, String)]) -> String {
    let path = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../deploy/prometheus/prometheus.yml");
    let mut text = std::fs::read_to_string(&path).expect("read the example config");
    for (from, to) in replace {
        assert!(text.contains(from), "{from} is in the example config");
        text = text.replace(from, to);
    }
    let start = text.find("scrape_configs:\n").expect("scrape_configs") + "scrape_configs:\n".len();
    text[start..].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_finds_host_and_pipe_series_through_federate_and_direct_scrapes() {
    if binary("prometheus").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path()).await;
    let node = Node::start(dir.path(), Some(collector.url(""))).await;
    node.run_pipes().await;

    let write = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    };
    let ship_token = write("ship.token", SHIP_ACME);
    let node_token = write("node.token", NODE_TOKEN);
    let op_token = write("op.token", OP_ACME);
    let agent_port = free_port();
    let mut cmd = Command::new(agent_bin());
    cmd.args(["--interval", "1s", "--instance", "vm-test"])
        .args(["--subscription", "acme"])
        .args(["--remote-write", &collector.url("/api/v1/write")])
        .args(["--token-file", &ship_token])
        .args([
            "--scrape",
            &format!("sesam-node={}", node.url("/api/metrics")),
        ])
        .args(["--scrape-token-file", &format!("sesam-node={node_token}")])
        .args(["--listen", &format!("127.0.0.1:{agent_port}")]);
    let mut agent = Proc::spawn("agent", cmd, &dir.path().join("agent.log"));
    let mut prom = Prometheus::start(&example_config(&[
        ("collector.example:3100", collector.addr.to_string()),
        ("node.example:9042", node.addr.to_string()),
        ("vm-1.example:9101", format!("127.0.0.1:{agent_port}")),
        ("/etc/prometheus/sesam-operator.token", op_token),
        ("/etc/prometheus/sesam-node-api.token", node_token.clone()),
    ]))
    .await
    .expect("prometheus");

    // Host series pushed by the agent, federated with their labels.
    let r = prom
        .query_until(r#"node_memory_MemAvailable_bytes{instance="vm-test"}"#)
        .await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(label(&r[0], "subscription"), "acme");
    assert_eq!(label(&r[0], "job"), "sesam-metrics-agent");
    assert!(value(&r[0]) > 0.0);
    let r = prom
        .query_until(
            r#"node_filesystem_size_bytes{instance="vm-test",subscription="acme",mountpoint="/"}"#,
        )
        .await;
    assert!(value(&r[0]) > 0.0, "{r:?}");
    let r = prom
        .query_until(
            r#"node_cpu_seconds_total{instance="vm-test",subscription="acme",mode="idle"}"#,
        )
        .await;
    assert!(!r.is_empty());

    // Pipe series: scraped by the agent and federated...
    let r = prom
        .query_until(
            r#"sesam_pump_failed_total{instance="vm-test",job="sesam-node",pipe="broken"}"#,
        )
        .await;
    assert_eq!(label(&r[0], "subscription"), "acme");
    assert!(value(&r[0]) >= 1.0, "{r:?}");
    // ...and scraped by Prometheus straight from the node.
    let r = prom
        .query_until(&format!(
            r#"sesam_pump_completed_total{{job="sesam-node",instance="{}",pipe="orders"}}"#,
            node.addr
        ))
        .await;
    assert_eq!(label(&r[0], "subscription"), "acme");
    assert!(value(&r[0]) >= 1.0, "{r:?}");

    // The collector's own metrics and the agent pulled directly.
    let r = prom
        .query_until(r#"collector_metrics_samples_accepted_total{job="sesam-collector",protocol="remote_write"}"#)
        .await;
    assert!(value(&r[0]) > 0.0, "{r:?}");
    let r = prom
        .query_until(&format!(
            r#"node_load1{{job="sesam-metrics-agent",instance="127.0.0.1:{agent_port}"}}"#
        ))
        .await;
    assert_eq!(label(&r[0], "subscription"), "acme");
    // Every target is up.
    let up = prom.query_until("up").await;
    for s in &up {
        assert_eq!(value(s), 1.0, "target down: {s}");
    }
    assert!(up.len() >= 4, "{up:?}");

    agent.terminate(STOP);
    prom.proc.terminate(STOP);
    node.stop().await;
    collector.stop().await;
}

fn meminfo_total() -> f64 {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_pushes_by_remote_write_into_prometheus() {
    let Some(mut prom) = Prometheus::start("").await else {
        return;
    };
    let mut cmd = Command::new(agent_bin());
    cmd.args(["--interval", "1s", "--instance", "vm-direct"])
        .args(["--subscription", "acme"])
        .args(["--remote-write", &prom.url("/api/v1/write")]);
    let mut agent = Proc::spawn("agent", cmd, &prom.dir.path().join("agent.log"));
    let r = prom
        .query_until(r#"node_memory_MemTotal_bytes{instance="vm-direct"}"#)
        .await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(label(&r[0], "subscription"), "acme");
    assert_eq!(label(&r[0], "job"), "sesam-metrics-agent");
    assert_eq!(value(&r[0]), meminfo_total());
    let cpus = prom
        .query_until(r#"count(node_cpu_seconds_total{instance="vm-direct",mode="idle"})"#)
        .await;
    let n = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    assert_eq!(value(&cpus[0]), n as f64);
    // Counters increase between pushes: rate() over them works.
    let r = prom
        .query_until(r#"rate(node_cpu_seconds_total{instance="vm-direct",mode="idle"}[10s]) >= 0"#)
        .await;
    assert!(!r.is_empty());
    agent.terminate(STOP);
    prom.proc.terminate(STOP);
}

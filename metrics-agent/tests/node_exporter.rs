//! The agent's host metrics against the real node_exporter (Debian's
//! `prometheus-node-exporter`) read on the same machine at the same moment.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;
use metrics_agent::text::{parse, Format};

type Series = BTreeMap<(String, Vec<(String, String)>), f64>;

fn series(text: &str) -> Series {
    parse(text, Format::Text, 0)
        .expect("parse exposition")
        .into_iter()
        .map(|s| ((s.name, s.labels), s.value))
        .collect()
}

fn of<'a>(s: &'a Series, name: &str) -> BTreeMap<&'a Vec<(String, String)>, f64> {
    s.iter()
        .filter(|((n, _), _)| n == name)
        .map(|((_, l), v)| (l, *v))
        .collect()
}

/// Same label sets for `name`, and every value within `tol(value)`.
fn compare(agent: &Series, ne: &Series, name: &str, tol: impl Fn(f64) -> f64) {
    let a = of(agent, name);
    let n = of(ne, name);
    assert!(!n.is_empty(), "node_exporter has no {name}");
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        n.keys().collect::<Vec<_>>(),
        "label sets of {name} differ"
    );
    for (labels, nv) in &n {
        let av = a[labels];
        assert!(
            (av - nv).abs() <= tol(*nv),
            "{name}{labels:?}: agent {av}, node_exporter {nv}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_metrics_match_node_exporter() {
    let Some(ne_bin) = binary("prometheus-node-exporter") else {
        return;
    };
    let (ne_port, agent_port) = (free_port(), free_port());
    let logs = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(ne_bin);
    cmd.arg(format!("--web.listen-address=127.0.0.1:{ne_port}"));
    let mut ne = Proc::spawn("node_exporter", cmd, &logs.path().join("ne.log"));
    let mut cmd = Command::new(agent_bin());
    cmd.args(["--listen", &format!("127.0.0.1:{agent_port}")]);
    let mut agent = Proc::spawn("agent", cmd, &logs.path().join("agent.log"));
    let client = reqwest::Client::new();
    let (ne_url, agent_url) = (
        format!("http://127.0.0.1:{ne_port}/metrics"),
        format!("http://127.0.0.1:{agent_port}/metrics"),
    );
    wait_ready(&client, &ne_url, "node_exporter").await;
    wait_ready(&client, &agent_url, "agent").await;

    // Both read at the same moment.
    let (a, n) = tokio::join!(
        get_text(&client, &agent_url, None),
        get_text(&client, &ne_url, None)
    );
    let (a, n) = (series(&a), series(&n));

    let exact = |_: f64| 0.0;
    let pct = |p: f64| move |v: f64| v.abs() * p / 100.0;
    compare(&a, &n, "node_memory_MemTotal_bytes", exact);
    // Memory moves between two reads a few ms apart: 2% or 64 MiB.
    let mem = |v: f64| (v * 0.02).max(64.0 * 1024.0 * 1024.0);
    for m in ["MemAvailable", "MemFree", "Buffers", "Cached"] {
        compare(&a, &n, &format!("node_memory_{m}_bytes"), mem);
    }
    compare(&a, &n, "node_filesystem_size_bytes", exact);
    let disk_space = |v: f64| (v * 0.01).max(256.0 * 1024.0 * 1024.0);
    compare(&a, &n, "node_filesystem_avail_bytes", disk_space);
    compare(&a, &n, "node_filesystem_free_bytes", disk_space);
    // Two cores: at most ~0.1 s of any mode passes between the reads.
    compare(&a, &n, "node_cpu_seconds_total", |_| 1.0);
    for l in ["node_load1", "node_load5", "node_load15"] {
        compare(&a, &n, l, |_| 0.5);
    }
    compare(&a, &n, "node_network_receive_bytes_total", |v| {
        (v * 0.001).max(4e6)
    });
    compare(&a, &n, "node_network_transmit_bytes_total", |v| {
        (v * 0.001).max(4e6)
    });
    compare(&a, &n, "node_disk_read_bytes_total", |v| {
        (v * 0.001).max(64e6)
    });
    compare(&a, &n, "node_disk_written_bytes_total", |v| {
        (v * 0.001).max(256e6)
    });
    compare(&a, &n, "node_boot_time_seconds", |_| 1.0);
    compare(&a, &n, "node_procs_running", |_| 64.0);
    compare(&a, &n, "node_context_switches_total", pct(1.0));

    // The agent's own process metrics are there and plausible.
    let rss = of(&a, "process_resident_memory_bytes");
    let rss = rss.values().next().copied().expect("process RSS");
    assert!(rss > 1e6 && rss < 200e6, "agent RSS {rss}");
    assert!(!of(&a, "process_cpu_seconds_total").is_empty());

    agent.terminate(STOP);
    ne.terminate(STOP);
}

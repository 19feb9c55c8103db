//! The agent's cost beside node_exporter's, measured in the same run on the
//! same machine.
//!
//! `cargo bench -p metrics-agent --bench agent` (release profile). Two runs:
//! 1. pull: the agent (`--listen`) and Debian's `prometheus-node-exporter`
//!    (default collectors, and restricted to the collectors the agent
//!    mirrors) are scraped in turn, `BENCH_AGENT_SCRAPES` times (default
//!    300); CPU time per scrape and RSS of each process;
//! 2. push: the agent collects every 100 ms and pushes by remote-write into
//!    a blackhole receiver in this process for `BENCH_AGENT_PUSH_SECS`
//!    (default 20 s) while node_exporter is scraped at the same rate; CPU
//!    time per collection and RSS of each.
//!
//! CPU time is utime + stime from `/proc/<pid>/stat`; RSS is `VmRSS` at the
//! end and `VmHWM` (peak).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::process::{cpu_seconds, status_kib, wait_http_ok};
use testkit::{env_usize, free_port};

fn status_mib(pid: u32, key: &str) -> f64 {
    status_kib(pid, key).unwrap_or(0) as f64 / 1024.0
}

struct Proc {
    name: &'static str,
    child: Child,
    url: String,
}

impl Proc {
    fn start(name: &'static str, cmd: &mut Command, url: String) -> Proc {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc { name, child, url }
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_exporter() -> Option<&'static str> {
    [
        "/usr/bin/prometheus-node-exporter",
        "/usr/local/bin/node_exporter",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
}

async fn wait_up(client: &reqwest::Client, url: &str) {
    wait_http_ok(client, url, url, Duration::from_secs(30)).await
}

async fn scrape(client: &reqwest::Client, url: &str) -> usize {
    let text = client
        .get(url)
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    text.lines().filter(|l| !l.starts_with('#')).count()
}

fn row(name: &str, pid: u32, cpu: f64, per: usize, samples: usize) {
    println!(
        "{name:<48} CPU {:>7.3} ms per collection ({} collections, {samples} samples each), RSS {:.1} MiB, peak {:.1} MiB",
        cpu * 1000.0 / per as f64,
        per,
        status_mib(pid, "VmRSS"),
        status_mib(pid, "VmHWM"),
    );
}

async fn pull(ne: &str, agent: &str, scrapes: usize) {
    let client = reqwest::Client::new();
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let procs = [
        Proc::start(
            "sesam-metrics-agent",
            Command::new(agent).args(["--listen", &format!("127.0.0.1:{p1}")]),
            format!("http://127.0.0.1:{p1}/metrics"),
        ),
        Proc::start(
            "node_exporter (default collectors)",
            Command::new(ne).arg(format!("--web.listen-address=127.0.0.1:{p2}")),
            format!("http://127.0.0.1:{p2}/metrics"),
        ),
        Proc::start(
            "node_exporter (the agent's collectors only)",
            Command::new(ne)
                .arg(format!("--web.listen-address=127.0.0.1:{p3}"))
                .args([
                    "--collector.disable-defaults",
                    "--collector.meminfo",
                    "--collector.stat",
                    "--collector.cpu",
                    "--collector.loadavg",
                    "--collector.filesystem",
                    "--collector.netdev",
                    "--collector.diskstats",
                    "--collector.time",
                ]),
            format!("http://127.0.0.1:{p3}/metrics"),
        ),
    ];
    for p in &procs {
        wait_up(&client, &p.url).await;
        for _ in 0..5 {
            scrape(&client, &p.url).await;
        }
    }
    let cpu0: Vec<f64> = procs.iter().map(|p| cpu_seconds(p.pid())).collect();
    let mut samples = [0usize; 3];
    for _ in 0..scrapes {
        for (i, p) in procs.iter().enumerate() {
            samples[i] = scrape(&client, &p.url).await;
        }
    }
    println!("pull: {scrapes} scrapes of each, in turn");
    for (i, p) in procs.iter().enumerate() {
        row(
            p.name,
            p.pid(),
            cpu_seconds(p.pid()) - cpu0[i],
            scrapes,
            samples[i],
        );
    }
}

async fn push(ne: &str, agent: &str, secs: u64) {
    use axum::routing::post;
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    let app = axum::Router::new().route(
        "/api/v1/write",
        post(move |body: axum::body::Bytes| {
            let r = r.clone();
            async move {
                r.fetch_add(body.len() as u64, Ordering::Relaxed);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });

    let client = reqwest::Client::new();
    let (p1, p2) = (free_port(), free_port());
    let a = Proc::start(
        "sesam-metrics-agent (push, remote-write, 100 ms)",
        Command::new(agent).args([
            "--interval",
            "100ms",
            "--remote-write",
            &format!("http://{addr}/api/v1/write"),
            "--listen",
            &format!("127.0.0.1:{p1}"),
        ]),
        format!("http://127.0.0.1:{p1}/metrics"),
    );
    let n = Proc::start(
        "node_exporter (default, scraped every 100 ms)",
        Command::new(ne).arg(format!("--web.listen-address=127.0.0.1:{p2}")),
        format!("http://127.0.0.1:{p2}/metrics"),
    );
    wait_up(&client, &a.url).await;
    wait_up(&client, &n.url).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let collections = |text: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with("metrics_agent_collections_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let c0 = collections(
        &client
            .get(&a.url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let (a0, n0) = (cpu_seconds(a.pid()), cpu_seconds(n.pid()));
    let b0 = received.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut scrapes = 0;
    let mut ne_samples = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        ne_samples = scrape(&client, &n.url).await;
        scrapes += 1;
    }
    let (a1, n1) = (cpu_seconds(a.pid()), cpu_seconds(n.pid()));
    // The pull that reads the count costs one collection of its own.
    let text = client
        .get(&a.url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let done = (collections(&text) - c0).max(1.0) as usize;
    let bytes = received.load(Ordering::Relaxed) - b0;
    println!(
        "push: {secs} s; the agent pushed {done} collections ({:.1} KiB of snappy remote-write each)",
        bytes as f64 / done as f64 / 1024.0
    );
    let agent_samples = text.lines().filter(|l| !l.starts_with('#')).count();
    row(a.name, a.pid(), a1 - a0, done, agent_samples);
    row(n.name, n.pid(), n1 - n0, scrapes, ne_samples);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(ne) = node_exporter() else {
        println!("skipped: prometheus-node-exporter is not installed (./scripts/setup.sh)");
        return;
    };
    let agent = env!("CARGO_BIN_EXE_sesam-metrics-agent");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        pull(ne, agent, env_usize("BENCH_AGENT_SCRAPES", 300)).await;
        push(ne, agent, env_usize("BENCH_AGENT_PUSH_SECS", 20) as u64).await;
    });
}

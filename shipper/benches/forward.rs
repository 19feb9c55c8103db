//! The shipper as a forwarder, into the real `sesam-collector`: peak RSS
//! and throughput of `sesam-shipper` (a) draining an outbox backlog and
//! (b) tailing a file of ~200-byte lines, each until the collector reports
//! every record stored. With `SHIP_BENCH_BASELINE` set to another
//! `sesam-shipper` binary (e.g. built from an older commit), both run in
//! the same process, alternating, so the figures share one machine state.
//!
//! ```sh
//! SHIP_BENCH_COLLECTOR=/path/to/sesam-collector \
//! SHIP_BENCH_BASELINE=/path/to/old/sesam-shipper \
//! SHIP_BENCH_RECORDS=5000000 SHIP_BENCH_LINES=1000000 \
//!   cargo bench -p shipper --bench forward
//! ```
//!
//! `SHIP_BENCH_ROUNDS` (default 1) repeats every run; `SHIP_BENCH_ONLY`
//! (`backlog` or `tail`) runs one scenario; `SHIP_BENCH_SHIPPER` pins the
//! binary under test (default: this package's `sesam-shipper`).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::record;
use schemas::Record;
use shipper::outbox::{Outbox, OutboxConfig, SyncMode};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_kib(pid: u32) -> u64 {
    testkit::process::status_kib(pid, "VmHWM").unwrap_or(0)
}

struct Collector {
    child: Child,
    url: String,
    client: reqwest::Client,
}

impl Collector {
    async fn start(bin: &str, dir: &Path) -> Collector {
        let tokens = dir.join("tokens.toml");
        std::fs::write(
            &tokens,
            "[[tokens]]\ntoken = \"test-token\"\nsubscription = \"sub-1\"\nrole = \"shipper\"\n\n[[tokens]]\ntoken = \"op-token\"\nsubscription = \"sub-1\"\nrole = \"operator\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let child = Command::new(bin)
            .args(["--data-dir", dir.join("collector").to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--tokens", tokens.to_str().unwrap()])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if client.get(format!("{url}/healthz")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Collector { child, url, client }
    }

    async fn stored(&self) -> u64 {
        match self
            .client
            .get(format!("{}/api/v1/sources", self.url))
            .bearer_auth("op-token")
            .send()
            .await
        {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .map(|v| {
                    v["sources"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|s| s["records"].as_u64()).sum())
                        .unwrap_or(0)
                })
                .unwrap_or(0),
            Err(_) => 0,
        }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `shipper` with `args` until the collector has `records`; returns
/// (records/s, peak RSS KiB).
async fn ship(
    shipper: &Path,
    dir: &Path,
    collector: &Collector,
    args: &[String],
    records: u64,
) -> (f64, u64) {
    let token = dir.join("token");
    std::fs::write(&token, "test-token").unwrap();
    let start = Instant::now();
    let mut child = Command::new(shipper)
        .args([
            "--data-dir",
            dir.to_str().unwrap(),
            "--collector",
            &collector.url,
        ])
        .args(["--token-file", token.to_str().unwrap(), "--no-kmsg"])
        .args([
            "--outbox-max-bytes",
            "4294967296",
            "--subscription",
            "sub-1",
        ])
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    loop {
        peak = peak.max(peak_rss_kib(pid));
        if collector.stored().await >= records {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{} exited: {status}", shipper.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    peak = peak.max(peak_rss_kib(pid));
    let _ = child.kill();
    let _ = child.wait();
    (records as f64 / secs, peak)
}

/// Records per append of the backlog: about what `sesam-shipper`'s file
/// tailer appends at once (one 128 KiB read window).
const BACKLOG_APPEND: u64 = 500;

/// An outbox of `records` benchmark records in `dir/outbox`, as
/// `sesam-shipper` builds it while its collector is down: its own outbox
/// settings and appends of a tailer's size (synced once a second, to build
/// it faster; what is stored is the same).
async fn backlog(dir: &Path, records: u64) {
    let config = OutboxConfig {
        max_bytes: std::num::NonZeroU64::new(8 << 30).unwrap(),
        sync: SyncMode::Interval {
            every: Duration::from_secs(1),
        },
        ..OutboxConfig::forwarder()
    };
    let outbox = Outbox::open(dir.join("outbox"), config).unwrap();
    for chunk in 0..records.div_ceil(BACKLOG_APPEND) {
        let n = (records - chunk * BACKLOG_APPEND).min(BACKLOG_APPEND);
        let batch: Vec<Record> = (0..n).map(|i| record(chunk * BACKLOG_APPEND + i)).collect();
        outbox.append(&batch).await.unwrap();
    }
    drop(outbox);
}

/// A log file of `lines` lines of about 200 bytes.
fn log_file(path: &Path, lines: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..lines {
        writeln!(
            f,
            "2026-11-30T12:00:00.000Z INFO node::pipes::orders pump completed for pipe orders: run {i:010}, 1200 entities read, 17 changed, 0 errors, took 1.2 s, next run in 60 s"
        )
        .unwrap();
    }
    f.flush().unwrap();
}

#[tokio::main]
async fn main() {
    let collector_bin = std::env::var("SHIP_BENCH_COLLECTOR")
        .expect("SHIP_BENCH_COLLECTOR: the sesam-collector binary to ship into");
    let records = env_u64("SHIP_BENCH_RECORDS", 1_000_000);
    let lines = env_u64("SHIP_BENCH_LINES", 1_000_000);
    let rounds = env_u64("SHIP_BENCH_ROUNDS", 1);
    let only = std::env::var("SHIP_BENCH_ONLY").ok();
    let mut shippers: Vec<(String, PathBuf)> = Vec::new();
    if let Ok(b) = std::env::var("SHIP_BENCH_BASELINE") {
        shippers.push(("baseline".into(), PathBuf::from(b)));
    }
    // SHIP_BENCH_SHIPPER pins the binary under test (the target directory's
    // copy can be replaced by another build while the bench runs).
    let this = std::env::var("SHIP_BENCH_SHIPPER")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_sesam-shipper").to_string());
    shippers.push(("this".into(), PathBuf::from(this)));
    println!("| scenario | shipper | records/s | shipper peak RSS |");
    println!("|---|---|---:|---:|");
    for _ in 0..rounds {
        for (name, bin) in &shippers {
            if only.as_deref().is_none_or(|o| o == "backlog") {
                let dir = tempfile::tempdir().unwrap();
                backlog(dir.path(), records).await;
                let c = Collector::start(&collector_bin, dir.path()).await;
                let (rate, rss) = ship(bin, dir.path(), &c, &[], records).await;
                c.stop();
                println!(
                    "| {records} backlog into sesam-collector | {name} | {rate:.0} | {:.1} MiB |",
                    rss as f64 / 1024.0
                );
            }
            if only.as_deref().is_none_or(|o| o == "tail") {
                let dir = tempfile::tempdir().unwrap();
                let file = dir.path().join("app.log");
                log_file(&file, lines);
                let c = Collector::start(&collector_bin, dir.path()).await;
                let args = vec!["--file".to_string(), file.display().to_string()];
                let (rate, rss) = ship(bin, dir.path(), &c, &args, lines).await;
                c.stop();
                println!("| {lines}-line file tailed into sesam-collector | {name} | {rate:.0} | {:.1} MiB |", rss as f64 / 1024.0);
            }
        }
    }
}

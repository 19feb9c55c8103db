//! Shipping throughput of the real `sesam-shipper` binary from a full outbox
//! into a local blackhole ingest receiver, with redaction on (defaults) and
//! with redaction reduced to its minimum, measured in one run; plus the
//! shipper's peak RSS.
//!
//! `cargo bench -p shipper --bench ship` (`SHIP_BENCH_RECORDS`, default
//! 500,000; the RSS figure of the report used 5,000,000).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::record;
use schemas::Record;
use shipper::outbox::{Outbox, OutboxConfig};
use testkit::receiver::Receiver;

fn peak_rss_kib(pid: u32) -> u64 {
    testkit::process::status_kib(pid, "VmHWM").unwrap_or(0)
}

async fn run(records: u64, rules: Option<&str>) -> (f64, f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = 0u64;
    {
        let config = OutboxConfig {
            max_bytes: std::num::NonZeroU64::new(4 << 30).unwrap(),
            ..OutboxConfig::default()
        };
        let outbox = Outbox::open(dir.path().join("outbox"), config).unwrap();
        for chunk in 0..records / 10_000 {
            let batch: Vec<Record> = (0..10_000).map(|i| record(chunk * 10_000 + i)).collect();
            outbox.append(&batch).await.unwrap();
        }
        bytes += outbox.stats().bytes;
    }
    let token = dir.path().join("token");
    std::fs::write(&token, "test-token").unwrap();
    let rx = Receiver::default();
    rx.faults.lock().unwrap().blackhole = true;
    let (url, _server) = rx.start().await.unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sesam-shipper"));
    cmd.args([
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--collector",
        &url,
    ])
    .args(["--token-file", token.to_str().unwrap(), "--no-kmsg"])
    .env("RUST_LOG", "error")
    .stdout(Stdio::null());
    if let Some(r) = rules {
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, r).unwrap();
        cmd.args(["--redact-rules", path.to_str().unwrap()]);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let mut peak = 0;
    while rx.received.lock().unwrap().accepted < records {
        peak = peak.max(peak_rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    peak = peak.max(peak_rss_kib(pid));
    child.kill().unwrap();
    child.wait().unwrap();
    (
        records as f64 / secs,
        bytes as f64 / secs / (1 << 20) as f64,
        peak,
    )
}

/// Ships `records` into the real `sesam-collector` at `bin`; returns
/// (records/s until the collector reports them all stored, shipper peak RSS).
async fn run_collector(records: u64, bin: &str) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    {
        let config = OutboxConfig {
            max_bytes: std::num::NonZeroU64::new(4 << 30).unwrap(),
            ..OutboxConfig::default()
        };
        let outbox = Outbox::open(dir.path().join("outbox"), config).unwrap();
        for chunk in 0..records / 10_000 {
            let batch: Vec<Record> = (0..10_000).map(|i| record(chunk * 10_000 + i)).collect();
            outbox.append(&batch).await.unwrap();
        }
    }
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        "[[tokens]]\ntoken = \"test-token\"\nsubscription = \"sub-1\"\nrole = \"shipper\"\n\n[[tokens]]\ntoken = \"op-token\"\nsubscription = \"sub-1\"\nrole = \"operator\"\n",
    )
    .unwrap();
    // The collector refuses a tokens file others may read.
    std::fs::set_permissions(&tokens, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "test-token").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mut collector = Command::new(bin)
        .args(["--data-dir", dir.path().join("collector").to_str().unwrap()])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--tokens",
            tokens.to_str().unwrap(),
        ])
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client.get(format!("{url}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sesam-shipper"))
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--collector",
            &url,
        ])
        .args([
            "--token-file",
            token.to_str().unwrap(),
            "--no-kmsg",
            "--outbox-max-bytes",
            "4294967296",
        ])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    loop {
        peak = peak.max(peak_rss_kib(pid));
        let stored = match client
            .get(format!("{url}/api/v1/sources"))
            .bearer_auth("op-token")
            .send()
            .await
        {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["sources"][0]["records"].as_u64())
                .unwrap_or(0),
            Err(_) => 0,
        };
        if stored >= records {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    child.kill().unwrap();
    child.wait().unwrap();
    collector.kill().unwrap();
    collector.wait().unwrap();
    (records as f64 / secs, peak)
}

#[tokio::main]
async fn main() {
    if let Ok(bin) = std::env::var("SHIP_BENCH_COLLECTOR") {
        let n: u64 = std::env::var("SHIP_BENCH_RECORDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let (rate, rss) = run_collector(n, &bin).await;
        let (hole, _, _) = run(n, None).await;
        println!("| {n} records into the real sesam-collector (synced, deduped, indexed) | {rate:.0} records/s | shipper peak RSS {} MiB | blackhole, same run: {hole:.0} records/s |", rss / 1024);
        return;
    }
    let n: u64 = std::env::var("SHIP_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let minimal = "key_patterns = []\nbuiltin_patterns = []\nremove_fields = []\nstrip_embedded_entities = false\n";
    let (on_rate, on_mib, on_rss) = run(n, None).await;
    let (off_rate, off_mib, off_rss) = run(n, Some(minimal)).await;
    println!("records: {n} (~248-byte stored log records), blackhole receiver in the bench process, 2 cores");
    println!("| run | records/s | MiB/s (stored bytes) | shipper peak RSS |");
    println!("|---|---:|---:|---:|");
    println!(
        "| redaction on (defaults) | {on_rate:.0} | {on_mib:.1} | {} MiB |",
        on_rss / 1024
    );
    println!(
        "| redaction minimal (baseline) | {off_rate:.0} | {off_mib:.1} | {} MiB |",
        off_rss / 1024
    );
    println!(
        "redaction cost: {:.1}% of shipping throughput",
        (1.0 - on_rate / off_rate) * 100.0
    );
}

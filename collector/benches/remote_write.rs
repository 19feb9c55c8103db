//! Remote-write ingest benchmark: the real `sesam-collector` binary, and
//! in the same run the real Prometheus (Debian's `prometheus`, its
//! remote-write receiver) as the baseline, receive the same pre-encoded
//! remote-write 1.0 requests over loopback.
//!
//! `cargo bench -p collector --bench remote_write` (release profile).
//! Environment:
//! - `BENCH_RW_SERIES` (default 100,000): distinct series, node_exporter
//!   shaped (`__name__`, `device`, `instance`, `job`, `mode`; 500 hosts);
//! - `BENCH_RW_ROUNDS` (default 50): times every series gets a new sample
//!   (15 s apart, ending now);
//! - `BENCH_RW_BATCH` (default 2,000): samples per request;
//! - `BENCH_RW_CONNS` (default 4): concurrent connections, each owning a
//!   disjoint set of hosts so every series' samples arrive in order;
//! - `BENCH_DIR` (default a temp dir).
//! - `BENCH_RW_COLLECTOR_FLAGS`: extra flags of the collector run
//!   (whitespace-separated, e.g. `--bulk-ingest-nice 0`).
//! - `BENCH_RW_ONLY=collector`: the collector's run only (no
//!   VictoriaMetrics, no Prometheus baseline).
//!
//! Then VictoriaMetrics (Debian's `victoria-metrics`, when installed): its
//! own remote-write receiver as the baseline, and the collector with
//! `--metrics-storage victoriametrics` writing into a fresh one (CPU of
//! both processes reported); after each, every series must be served by
//! `/federate`.
//!
//! Prints one line per receiver; BENCHMARKS.md records them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use collector::metrics::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use prost::Message;
use testkit::process::{cpu_seconds, status_kib, wait_http_ok};
use testkit::{env_usize, free_port};

const MODES: [&str; 4] = ["user", "system", "idle", "iowait"];

/// The labels of series `s` (sorted by name, as remote-write requires).
fn labels(s: usize) -> Vec<Label> {
    let host = s / 200;
    let metric = (s % 200) / 10;
    let dev = s % 10;
    vec![
        Label::new("__name__", &format!("node_bench_metric_{metric}_total")),
        Label::new("device", &format!("dev{dev}")),
        Label::new("instance", &format!("host-{host:04}.example.com:9100")),
        Label::new("job", "node"),
        Label::new("mode", MODES[(s / 3) % 4]),
    ]
}

/// Requests per connection, in sending order, and the total sample count.
fn encode(
    series: usize,
    rounds: usize,
    batch: usize,
    conns: usize,
) -> (Vec<Vec<Vec<u8>>>, usize, usize) {
    let hosts = series.div_ceil(200);
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let mut out = vec![Vec::new(); conns];
    let mut samples = 0;
    let mut raw_bytes = 0;
    let all_labels: Vec<Vec<Label>> = (0..series).map(labels).collect();
    for (c, reqs) in out.iter_mut().enumerate() {
        let mine: Vec<usize> = (0..series)
            .filter(|s| (s / 200) % conns == c && s / 200 < hosts)
            .collect();
        for r in 0..rounds {
            let ts = end - ((rounds - 1 - r) as i64) * 15_000;
            for chunk in mine.chunks(batch) {
                let req = WriteRequest {
                    timeseries: chunk
                        .iter()
                        .map(|&s| TimeSeries {
                            labels: all_labels[s].clone(),
                            samples: vec![Sample {
                                value: (s * 7 + r) as f64,
                                timestamp: ts,
                            }],
                            histograms: vec![],
                        })
                        .collect(),
                    metadata: vec![],
                };
                let raw = req.encode_to_vec();
                raw_bytes += raw.len();
                samples += chunk.len();
                reqs.push(
                    snap::raw::Encoder::new()
                        .compress_vec(&raw)
                        .expect("snappy"),
                );
            }
        }
    }
    (out, samples, raw_bytes)
}

struct Run {
    elapsed: Duration,
    cpu: f64,
    hwm_kib: u64,
}

/// Posts every request (connections in parallel) and waits for 2xx.
fn send(
    rt: &tokio::runtime::Runtime,
    url: &str,
    token: Option<&str>,
    reqs: Arc<Vec<Vec<Vec<u8>>>>,
    pid: u32,
) -> Run {
    let cpu0 = cpu_seconds(pid);
    let url = url.to_string();
    let token = token.map(str::to_string);
    let elapsed = rt.block_on(async move {
        let client = reqwest::Client::new();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..reqs.len() {
            let (client, url, token, reqs) =
                (client.clone(), url.clone(), token.clone(), reqs.clone());
            tasks.push(tokio::spawn(async move {
                for body in &reqs[c] {
                    loop {
                        let mut r = client
                            .post(&url)
                            .header("content-type", "application/x-protobuf")
                            .header("content-encoding", "snappy")
                            .header("x-prometheus-remote-write-version", "0.1.0")
                            .body(body.clone());
                        if let Some(t) = &token {
                            r = r.bearer_auth(t);
                        }
                        let r = r.send().await.expect("post");
                        let status = r.status();
                        if status.is_success() {
                            break;
                        }
                        let text = r.text().await.unwrap_or_default();
                        assert_eq!(status, 429, "unexpected answer: {text}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("sender");
        }
        started.elapsed()
    });
    Run {
        elapsed,
        cpu: cpu_seconds(pid) - cpu0,
        hwm_kib: status_kib(pid, "VmHWM").unwrap_or(0),
    }
}

fn wait_ready(rt: &tokio::runtime::Runtime, url: &str) {
    let client = reqwest::Client::new();
    rt.block_on(wait_http_ok(&client, url, url, Duration::from_secs(60)));
}

fn report(name: &str, samples: usize, wire: usize, run: &Run) {
    let secs = run.elapsed.as_secs_f64();
    println!(
        "{name}: {samples} samples in {secs:.2} s = {:.0} samples/s ({:.1} MB/s on the wire), receiver CPU {:.2} s ({:.2} us/sample), peak RSS {} MiB",
        samples as f64 / secs,
        wire as f64 / secs / 1e6,
        run.cpu,
        run.cpu * 1e6 / samples as f64,
        run.hwm_kib / 1024
    );
}

/// The real `sesam-collector` on a fresh data dir `data` and a free port,
/// with `extra` flags, once it is ready.
fn collector(
    rt: &tokio::runtime::Runtime,
    data: &Path,
    tokens: &Path,
    extra: &[&str],
) -> (std::process::Child, u16) {
    let _ = std::fs::remove_dir_all(data);
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_sesam-collector"))
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--tokens"])
        .arg(tokens)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn collector");
    wait_ready(rt, &format!("http://127.0.0.1:{port}/readyz"));
    (child, port)
}

/// The series `/federate` at `base` serves for `{job="node"}` (admin
/// token), polled up to 30 s until `want` (VictoriaMetrics makes samples
/// searchable after its in-memory buffer is flushed).
fn federated(rt: &tokio::runtime::Runtime, base: &str, want: usize) -> usize {
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = reqwest::Client::new()
                .get(format!("{base}/federate?match[]=%7Bjob%3D%22node%22%7D"))
                .bearer_auth(testkit::tokens::ADMIN)
                .send()
                .await
                .expect("federate")
                .text()
                .await
                .expect("federate body");
            let n = text.lines().filter(|l| !l.starts_with('#')).count();
            if n >= want || Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

/// VictoriaMetrics' own receiver, then the collector writing into it.
fn victoria(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    tokens: &Path,
    reqs: Arc<Vec<Vec<Vec<u8>>>>,
    samples: usize,
    wire: usize,
    series: usize,
) {
    if !Path::new("/usr/bin/victoria-metrics").exists() {
        println!(
            "VictoriaMetrics cases skipped: victoria-metrics is not installed (./scripts/setup.sh)"
        );
        return;
    }
    let vm = testkit::engines::VictoriaMetrics::start().expect("victoria-metrics");
    let run = send(
        rt,
        &format!("{}/api/v1/write", vm.url()),
        None,
        reqs.clone(),
        vm.pid(),
    );
    report(
        "victoria-metrics /api/v1/write (baseline)",
        samples,
        wire,
        &run,
    );
    let served = federated(rt, &vm.url(), series);
    println!("  its /federate serves {served} series (expected {series})");
    drop(vm);

    let vm = testkit::engines::VictoriaMetrics::start().expect("victoria-metrics");
    let (mut child, port) = collector(
        rt,
        &dir.join("rw-collector-vm"),
        tokens,
        &[
            "--metrics-storage",
            "victoriametrics",
            "--victoriametrics-url",
            &vm.url(),
        ],
    );
    let vm_cpu0 = cpu_seconds(vm.pid());
    let run = send(
        rt,
        &format!("http://127.0.0.1:{port}/api/v1/write"),
        Some("ship-bench"),
        reqs,
        child.id(),
    );
    let vm_cpu = cpu_seconds(vm.pid()) - vm_cpu0;
    report(
        "sesam-collector /api/v1/write -> victoria-metrics",
        samples,
        wire,
        &run,
    );
    println!(
        "  victoria-metrics CPU behind it {vm_cpu:.2} s ({:.2} us/sample)",
        vm_cpu * 1e6 / samples as f64
    );
    let served = federated(rt, &format!("http://127.0.0.1:{port}"), series);
    println!("  the collector's /federate (from victoria-metrics) serves {served} series (expected {series})");
    assert_eq!(served, series, "every series is in VictoriaMetrics");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let series = env_usize("BENCH_RW_SERIES", 100_000);
    let rounds = env_usize("BENCH_RW_ROUNDS", 50);
    let batch = env_usize("BENCH_RW_BATCH", 2_000);
    let conns = env_usize("BENCH_RW_CONNS", 4);
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = std::env::var("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("bench dir");

    let t = Instant::now();
    let (reqs, samples, raw) = encode(series, rounds, batch, conns);
    let wire: usize = reqs.iter().flatten().map(Vec::len).sum();
    println!(
        "encoded {samples} samples ({series} series x {rounds} rounds) into {} requests of {batch}: {:.1} MB protobuf, {:.1} MB snappy, in {:.1} s",
        reqs.iter().map(Vec::len).sum::<usize>(),
        raw as f64 / 1e6,
        wire as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let reqs = Arc::new(reqs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // The collector, default flags.
    let tokens = testkit::tokens::write(&dir.join("rw-tokens.toml"), &["bench"]);
    let flags = std::env::var("BENCH_RW_COLLECTOR_FLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split_whitespace().collect();
    let (mut child, port) = collector(&rt, &dir.join("rw-collector"), &tokens, &flags);
    let run = send(
        &rt,
        &format!("http://127.0.0.1:{port}/api/v1/write"),
        Some("ship-bench"),
        reqs.clone(),
        child.id(),
    );
    report("sesam-collector /api/v1/write", samples, wire, &run);
    // Sanity: every series is served by /federate.
    let served = federated(&rt, &format!("http://127.0.0.1:{port}"), series);
    println!("  /federate serves {served} series (expected {series})");
    assert_eq!(served, series, "every series is federated");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    if std::env::var("BENCH_RW_ONLY").is_ok_and(|o| o == "collector") {
        return;
    }

    victoria(&rt, &dir, &tokens, reqs.clone(), samples, wire, series);

    // Baseline: Prometheus' own remote-write receiver, same requests.
    let prom = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(prom) = prom else {
        println!("baseline skipped: prometheus is not installed (./scripts/setup.sh)");
        return;
    };
    let pdir = dir.join("rw-prometheus");
    let _ = std::fs::remove_dir_all(&pdir);
    std::fs::create_dir_all(&pdir).expect("prometheus dir");
    std::fs::write(
        pdir.join("prometheus.yml"),
        "global:\n  scrape_interval: 1m\nscrape_configs: []\n",
    )
    .expect("config");
    let pport = free_port();
    let mut p = Command::new(prom)
        .arg(format!(
            "--config.file={}",
            pdir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            pdir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{pport}"))
        .arg("--web.enable-remote-write-receiver")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn prometheus");
    wait_ready(&rt, &format!("http://127.0.0.1:{pport}/-/ready"));
    let run = send(
        &rt,
        &format!("http://127.0.0.1:{pport}/api/v1/write"),
        None,
        reqs,
        p.id(),
    );
    report(
        "prometheus 2.42 /api/v1/write (baseline)",
        samples,
        wire,
        &run,
    );
    let _ = Command::new("kill")
        .args(["-TERM", &p.id().to_string()])
        .status();
    let _ = p.wait();
}

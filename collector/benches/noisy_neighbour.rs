//! Noisy-neighbour benchmark: the real `sesam-collector` on loopback, with
//! its default limits. Tenant `b` ingests at a steady rate and queries;
//! tenant `a` mounts each attack class of issue #9 in turn. For every phase
//! the benchmark prints b's ingest and query latencies (p50 / p99) beside
//! the quiet run of the same process, a's refusals, and the collector's
//! resident memory.
//!
//! ```sh
//! cargo bench -p collector --bench noisy_neighbour            # 15 s per phase
//! PHASE_SECS=30 cargo bench -p collector --bench noisy_neighbour
//! NOISY_COLLECTOR_BIN=/path/to/sesam-collector cargo bench ...   # a copied binary
//! PHASES="query bombs,big answers" cargo bench ...   # these attacks only
//! NOISY_ROUNDS=3 cargo bench ...    # every attack three times
//! NOISY_PROFILE=1 cargo bench ...   # also the collector's CPU per thread group
//! ```
//!
//! Every attack phase follows a quiet phase of its own, and b's p99 under
//! the attack is compared with that quiet phase's (on a shared 2-core
//! machine the quiet p99 alone moves 3x between phases minutes apart);
//! with `NOISY_ROUNDS` the median of the rounds' ratios is the figure. A
//! control class mounts no attack: its ratios are the method's own noise.
//!
//! Goal: b's p99 within 2x of the quiet run for every attack class, and
//! the collector's memory bounded by its configured limits.
//!
//! The attacker runs on a runtime (and OS threads) of its own at the
//! lowest CPU priority, so that it never delays b's requests inside this
//! process, and encodes its ingest bodies before its phase starts: on a
//! 2-core machine the load generator shares the cores with the collector,
//! and the attacker's own client CPU (it would run elsewhere) should not
//! be counted against the collector.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use collector::metrics::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use schemas::{Body, IngestBatch, Level, LogBody, Record};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// b: one ingest of this many records every `B_INGEST_EVERY` (4,000
/// records/s in small, frequent batches: a 10 s phase has ~1,000 samples,
/// so its p99 is a percentile, not the second-worst of 200).
const B_BATCH: u64 = 40;
const B_INGEST_EVERY: Duration = Duration::from_millis(10);
/// b: one query every `B_QUERY_EVERY` (alternating a log search and a
/// label query).
const B_QUERY_EVERY: Duration = Duration::from_millis(20);

fn now() -> i64 {
    schemas::time::now_nanos()
}

fn record(sub: &str, source: &str, seq: u64, message: &str, pipe: Option<String>) -> Record {
    let mut fields = std::collections::BTreeMap::new();
    if let Some(p) = pipe {
        fields.insert("pipe".to_string(), serde_json::Value::String(p));
    }
    Record {
        seq,
        ts: now(),
        source: source.into(),
        subscription: sub.into(),
        body: Body::Log(LogBody {
            level: Level::Info,
            target: "bench".into(),
            message: message.into(),
            fields,
        }),
    }
}

fn body(sub: &str, source: &str, records: Vec<Record>) -> Vec<u8> {
    let raw = schemas::to_msgpack(&IngestBatch {
        epoch: "bench".into(),
        source: source.into(),
        subscription: sub.into(),
        records,
        dropped: 0,
    })
    .expect("encode");
    zstd::encode_all(raw.as_slice(), 1).expect("zstd")
}

async fn ingest(client: &reqwest::Client, url: &str, token: &str, body: Vec<u8>) -> u16 {
    client
        .post(format!("{url}/api/v1/ingest"))
        .bearer_auth(token)
        .header("content-type", "application/msgpack")
        .header("content-encoding", "zstd")
        .body(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn rss(pid: u32) -> (u64, u64) {
    let mib = |field| testkit::process::status_kib(pid, field).unwrap_or(0) >> 10;
    (mib("VmRSS"), mib("VmHWM"))
}

#[derive(Default)]
struct Latencies {
    ingest: Vec<Duration>,
    query: Vec<Duration>,
    ingest_errors: u64,
    query_errors: u64,
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1e3
}

/// Runs b's steady workload for `secs`, returns its latencies.
async fn tenant_b(
    client: reqwest::Client,
    url: String,
    seq: Arc<AtomicU64>,
    secs: Duration,
) -> Latencies {
    let stop = Instant::now() + secs;
    let ingest_task = {
        let (client, url, seq) = (client.clone(), url.clone(), seq.clone());
        tokio::spawn(async move {
            let mut out = (Vec::new(), 0u64);
            let mut tick = tokio::time::interval(B_INGEST_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < stop {
                tick.tick().await;
                let first = seq.fetch_add(B_BATCH, Ordering::Relaxed) + 1;
                let records = (first..first + B_BATCH)
                    .map(|s| {
                        record(
                            "b",
                            "b1",
                            s,
                            "steady neighbour line",
                            Some(format!("p{}", s % 10)),
                        )
                    })
                    .collect();
                let t = Instant::now();
                let status = ingest(&client, &url, "ship-b", body("b", "b1", records)).await;
                out.0.push(t.elapsed());
                if status != 200 {
                    out.1 += 1;
                }
            }
            out
        })
    };
    let mut lat = Latencies::default();
    let mut tick = tokio::time::interval(B_QUERY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while Instant::now() < stop {
        tick.tick().await;
        n += 1;
        let req = if n.is_multiple_of(2) {
            client.get(format!("{url}/api/v1/logs")).query(&[
                ("query", "{pipe=\"p3\"} |= \"steady\""),
                ("since", "5m"),
                ("limit", "100"),
            ])
        } else {
            client.get(format!("{url}/loki/api/v1/label/pipe/values"))
        };
        let t = Instant::now();
        let ok = match req.bearer_auth("op-b").send().await {
            Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        lat.query.push(t.elapsed());
        if !ok {
            lat.query_errors += 1;
        }
    }
    let (ingest, errors) = ingest_task.await.expect("join");
    lat.ingest = ingest;
    lat.ingest_errors = errors;
    lat
}

async fn connect_from(from: &str, to: SocketAddr) -> Option<TcpStream> {
    let s = TcpSocket::new_v4().ok()?;
    s.bind(SocketAddr::new(from.parse().ok()?, 0)).ok()?;
    tokio::time::timeout(Duration::from_secs(2), s.connect(to))
        .await
        .ok()?
        .ok()
}

/// One attack class of tenant a, run until `stop`.
async fn attack(
    kind: &str,
    client: reqwest::Client,
    url: String,
    addr: SocketAddr,
    stop: CancellationToken,
    refused: Arc<AtomicU64>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut tasks = Vec::new();
    // Sources and series of their own per phase: a later round's attack
    // is new data too (the same seqs again would be refused as conflicts
    // before they cost anything).
    let nonce = now();
    match kind {
        "slow uploads" => {
            // 64 uploads that send a little and stall, re-opened when cut.
            for _ in 0..64 {
                let stop = stop.clone();
                let refused = refused.clone();
                tasks.push(tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        let Some(mut s) = connect_from("127.0.0.3", addr).await else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        };
                        let head = "POST /api/v1/ingest HTTP/1.1\r\nhost: c\r\nauthorization: Bearer ship-a\r\ncontent-type: application/msgpack\r\ncontent-length: 4000000\r\n\r\n";
                        let _ = s.write_all(head.as_bytes()).await;
                        let _ = s.write_all(&vec![0x90u8; 64 << 10]).await;
                        let mut buf = [0u8; 512];
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            r = tokio::io::AsyncReadExt::read(&mut s, &mut buf) => {
                                if matches!(r, Ok(n) if n > 0) { refused.fetch_add(1, Ordering::Relaxed); }
                            }
                        }
                    }
                }));
            }
        }
        "connection flood" => {
            let stop = stop.clone();
            let refused = refused.clone();
            tasks.push(tokio::spawn(async move {
                let mut held = Vec::new();
                while !stop.is_cancelled() {
                    match connect_from("127.0.0.3", addr).await {
                        Some(s) => held.push(s),
                        None => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if held.len() >= 2000 {
                        held.drain(..1000);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
        "query bombs" => {
            for i in 0..4 {
                let (client, url, stop, refused) =
                    (client.clone(), url.clone(), stop.clone(), refused.clone());
                tasks.push(tokio::spawn(async move {
                    let bomb = format!("{{}}{}", " |= \"needle\"".repeat(700));
                    let heavy = format!("{{}}{}", r#" |~ "[a-z]+[0-9]{3}[a-z]*x""#.repeat(50));
                    while !stop.is_cancelled() {
                        let q = if i % 2 == 0 { &bomb } else { &heavy };
                        let r = client
                            .get(format!("{url}/api/v1/logs"))
                            .query(&[("query", q.as_str()), ("since", "1h"), ("limit", "1000")])
                            .bearer_auth("op-a")
                            .send()
                            .await;
                        if let Ok(r) = r {
                            if r.status() != 200 {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                            let _ = r.bytes().await;
                        }
                        let fed: String = (0..1000)
                            .map(|i| format!("match[]=m{i}"))
                            .collect::<Vec<_>>()
                            .join("&");
                        if let Ok(r) = client
                            .get(format!("{url}/federate?{fed}"))
                            .bearer_auth("op-a")
                            .send()
                            .await
                        {
                            if r.status() != 200 {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
        }
        "big answers" => {
            for _ in 0..4 {
                let (client, url, stop, refused) =
                    (client.clone(), url.clone(), stop.clone(), refused.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        if let Ok(mut r) = client
                            .get(format!("{url}/api/v1/logs"))
                            .query(&[
                                ("query", "{source=\"big\"}"),
                                ("since", "1h"),
                                ("limit", "1000"),
                            ])
                            .bearer_auth("op-a")
                            .send()
                            .await
                        {
                            // Drained, not parsed: only the stats at the end are read.
                            let mut last = Vec::new();
                            while let Ok(Some(c)) = r.chunk().await {
                                last = c.to_vec();
                            }
                            if truncated(&last) {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
        }
        "stream cardinality" => {
            // Two loops of 2,000-record batches, each record with a pipe of
            // its own (new seqs: every record is decoded and stored).
            for t in 0..2u64 {
                let source = format!("pipes-{t}-{nonce}");
                let bodies: Vec<Vec<u8>> = (0..200u64)
                    .map(|b| {
                        let records = (0..2000u64)
                            .map(|i| {
                                let seq = b * 2000 + i + 1;
                                record(
                                    "a",
                                    &source,
                                    seq,
                                    "pipe flood",
                                    Some(format!("pipe-{t}-{seq}")),
                                )
                            })
                            .collect();
                        body("a", &source, records)
                    })
                    .collect();
                let (client, url, stop, refused) =
                    (client.clone(), url.clone(), stop.clone(), refused.clone());
                tasks.push(tokio::spawn(async move {
                    // Past the prepared bodies they repeat: duplicates.
                    for b in bodies.iter().cycle() {
                        if stop.is_cancelled() {
                            break;
                        }
                        if ingest(&client, &url, "ship-a", b.clone()).await != 200 {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
        }
        "large batches" => {
            // One loop of 20,000-record batches (the ingest limit is
            // 50,000), a few pipes, new seqs: each is decoded and stored.
            let bulk = format!("bulk-{nonce}");
            let bodies: Vec<Vec<u8>> = (0..30u64)
                .map(|b| {
                    let records = (0..20_000u64)
                        .map(|i| {
                            let seq = b * 20_000 + i + 1;
                            record(
                                "a",
                                &bulk,
                                seq,
                                "backfill",
                                Some(format!("pipe-{}", seq % 8)),
                            )
                        })
                        .collect();
                    body("a", &bulk, records)
                })
                .collect();
            let (client, url, stop, refused) =
                (client.clone(), url.clone(), stop.clone(), refused.clone());
            tasks.push(tokio::spawn(async move {
                for b in bodies.iter().cycle() {
                    if stop.is_cancelled() {
                        break;
                    }
                    if ingest(&client, &url, "ship-a", b.clone()).await != 200 {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        "series cardinality" => {
            // Two loops of 1,000 new series per request; one series in 100
            // carries a 64 KiB label value.
            for t in 0..2u64 {
                let big = "v".repeat(64 << 10);
                let ts = now() / 1_000_000;
                let bodies: Vec<Vec<u8>> = (0..200u64)
                    .map(|r| {
                        let series = (0..1000u64)
                            .map(|i| {
                                let n = r * 1000 + i;
                                let mut labels = vec![
                                    Label::new("__name__", "flood_metric"),
                                    Label::new("id", &format!("{t}-{n}-{nonce}")),
                                ];
                                if n.is_multiple_of(100) {
                                    labels.push(Label::new("zbig", &big));
                                }
                                TimeSeries {
                                    labels,
                                    samples: vec![Sample {
                                        value: 1.0,
                                        timestamp: ts,
                                    }],
                                    histograms: Vec::new(),
                                }
                            })
                            .collect();
                        let raw = prost::Message::encode_to_vec(&WriteRequest {
                            timeseries: series,
                            metadata: Vec::new(),
                        });
                        snap::raw::Encoder::new()
                            .compress_vec(&raw)
                            .expect("snappy")
                    })
                    .collect();
                let (client, url, stop, refused) =
                    (client.clone(), url.clone(), stop.clone(), refused.clone());
                tasks.push(tokio::spawn(async move {
                    for b in bodies.iter().cycle() {
                        if stop.is_cancelled() {
                            break;
                        }
                        let r = client
                            .post(format!("{url}/api/v1/write"))
                            .bearer_auth("ship-a")
                            .header("content-type", "application/x-protobuf")
                            .body(b.clone())
                            .send()
                            .await;
                        if r.map(|r| r.status() != 204).unwrap_or(true) {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
        }
        "expensive rules" => {
            // Issue #9's rules on the commit path: a's rule limit's worth
            // (1,000) of regex rules that cannot skip ahead, over 64 KiB
            // failure reasons, 20 failures per batch. Created once (a
            // second round finds them: 409).
            for i in 0..1000 {
                let r = client
                    .post(format!("{url}/api/v1/notification-rules"))
                    .bearer_auth("op-a")
                    .json(&serde_json::json!({
                        "id": format!("slow-{i}"), "name": "slow", "type": "pattern_match",
                        "params": {"field": "reason_why_stopped", "syntax": "regex",
                                   "pattern": format!("[a-q][^u-z]{{12}}x{i}")}
                    }))
                    .send()
                    .await;
                let st = r.map(|r| r.status().as_u16()).unwrap_or(0);
                assert!(st == 201 || st == 409, "creating a's rule {i}: {st}");
            }
            let reason = testkit::records::noise(64 << 10);
            let source = format!("rules-{nonce}");
            let bodies: Vec<Vec<u8>> = (0..100u64)
                .map(|b| {
                    let records = (0..20u64)
                        .map(|i| {
                            let seq = b * 20 + i + 1;
                            testkit::records::record(
                                "a",
                                &source,
                                seq,
                                now(),
                                testkit::records::execution_body(
                                    &format!("a-{seq}"),
                                    schemas::EventType::PumpFailed,
                                    &reason,
                                ),
                            )
                        })
                        .collect();
                    body("a", &source, records)
                })
                .collect();
            let (client, url, stop, refused) =
                (client.clone(), url.clone(), stop.clone(), refused.clone());
            tasks.push(tokio::spawn(async move {
                // Past the prepared bodies they repeat: duplicates (the
                // first pass is what is evaluated).
                for b in bodies.iter().cycle() {
                    if stop.is_cancelled() {
                        break;
                    }
                    if ingest(&client, &url, "ship-a", b.clone()).await != 200 {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        _ => {}
    }
    // Bodies are prepared: the phase starts now.
    let _ = ready.send(());
    stop.cancelled().await;
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    if kind == "expensive rules" {
        // a's records still waiting for their share of evaluation would
        // run on through the next phases: without the rules they cost
        // nothing.
        for i in 0..1000 {
            let _ = client
                .delete(format!("{url}/api/v1/notification-rules/slow-{i}"))
                .bearer_auth("op-a")
                .send()
                .await;
        }
    }
}

/// What the collector refused of tenant a so far: its per-subscription
/// refusals plus connections refused or closed (a's floods are the only
/// source of those here).
async fn refused_by_server(client: &reqwest::Client, url: &str) -> f64 {
    let Ok(r) = client
        .get(format!("{url}/metrics"))
        .bearer_auth(testkit::tokens::ADMIN)
        .send()
        .await
    else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| {
            (l.starts_with("collector_tenant_refusals_total") && l.contains("subscription=\"a\""))
                || l.starts_with("collector_connections_refused_total")
                || l.starts_with("collector_connections_closed_total")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn truncated(tail: &[u8]) -> bool {
    let from = tail.len().saturating_sub(512);
    tail[from..].windows(16).any(|w| w == b"\"truncated\":true")
}

/// The attack classes, in order. "no attack (control)" mounts nothing: its
/// ratio is the noise of the method itself (two quiet phases back to back).
const ATTACKS: [&str; 9] = [
    "no attack (control)",
    "slow uploads",
    "connection flood",
    "query bombs",
    "big answers",
    "stream cardinality",
    "large batches",
    "series cardinality",
    "expensive rules",
];

/// What every phase needs.
struct Ctx {
    client: reqwest::Client,
    url: String,
    addr: SocketAddr,
    pid: u32,
    seq: Arc<AtomicU64>,
    secs: Duration,
}

/// One phase's figures.
struct Phase {
    i50: f64,
    i99: f64,
    q50: f64,
    q99: f64,
    errors: u64,
    refused: u64,
    server: f64,
    rss: u64,
    hwm: u64,
    /// Cores each thread group of the collector used.
    cpu: String,
}

impl Phase {
    fn row(&self, phase: &str, (ri, rq): (f64, f64)) -> String {
        format!(
            "| {phase} | {:.1} / {:.1} | {:.1} / {:.1} | {ri:.2}x, {rq:.2}x | {} | {} / {} | {} / {} |",
            self.i50, self.i99, self.q50, self.q99, self.errors, self.refused, self.server, self.rss, self.hwm
        )
    }
}

/// Runs tenant a's `phase` (nothing for a quiet phase) while b is measured
/// for `ctx.secs`.
async fn run_phase(ctx: &Ctx, phase: &str) -> Phase {
    let quiet = phase == "quiet";
    let stop = CancellationToken::new();
    let refused = Arc::new(AtomicU64::new(0));
    let server_before = refused_by_server(&ctx.client, &ctx.url).await;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let attacker = {
        let (phase, url, stop, refused, addr) = (
            phase.to_string(),
            ctx.url.clone(),
            stop.clone(),
            refused.clone(),
            ctx.addr,
        );
        std::thread::spawn(move || {
            // The attacker's own client work (encoding, receiving
            // answers) stands for another machine: it runs at the
            // lowest priority so it takes little from the two cores
            // the collector and b share (its runtime's threads
            // inherit the nice value).
            let _ = rustix::process::setpriority_process(None, 19);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("attacker runtime");
            rt.block_on(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(64)
                    .build()
                    .expect("client");
                attack(&phase, client, url, addr, stop, refused, ready_tx).await
            })
        })
    };
    let _ = ready_rx.await;
    // Let the attack build up before measuring.
    if !quiet {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let cpu_before = testkit::process::thread_cpu_ms(ctx.pid);
    let mut lat = tenant_b(
        ctx.client.clone(),
        ctx.url.clone(),
        ctx.seq.clone(),
        ctx.secs,
    )
    .await;
    let cpu_after = testkit::process::thread_cpu_ms(ctx.pid);
    let cpu: Vec<String> = cpu_after
        .iter()
        .map(|(k, v)| (k, v - cpu_before.get(k).copied().unwrap_or(0).min(*v)))
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| format!("{k} {:.2}", v as f64 / 1e3 / ctx.secs.as_secs_f64()))
        .collect();
    let (rss_now, hwm) = rss(ctx.pid);
    let server = refused_by_server(&ctx.client, &ctx.url).await - server_before;
    stop.cancel();
    let _ = tokio::task::spawn_blocking(move || attacker.join()).await;
    let out = Phase {
        i50: pct(&mut lat.ingest, 0.5),
        i99: pct(&mut lat.ingest, 0.99),
        q50: pct(&mut lat.query, 0.5),
        q99: pct(&mut lat.query, 0.99),
        errors: lat.ingest_errors + lat.query_errors,
        refused: refused.load(Ordering::Relaxed),
        server,
        rss: rss_now,
        hwm,
        cpu: cpu.join(", "),
    };
    // Let closed connections and cut uploads settle (and an attack's
    // writes flush) before the next phase.
    tokio::time::sleep(Duration::from_secs(2)).await;
    out
}

fn start_collector(dir: &Path) -> (Child, u16) {
    let tokens = testkit::tokens::write(&dir.join("tokens.toml"), &["a", "b"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    // NOISY_COLLECTOR_BIN: a copy of the binary, when other checkouts share
    // the target directory (their builds re-link release/sesam-collector).
    let bin = std::env::var_os("NOISY_COLLECTOR_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_sesam-collector").into());
    let child = Command::new(bin)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--tokens"])
        .arg(&tokens)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn collector");
    (child, port)
}

fn main() {
    let secs = Duration::from_secs(
        std::env::var("PHASE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(15),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, port) = start_collector(dir.path());
    let pid = child.id();
    let url = format!("http://127.0.0.1:{port}");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("client");
        for _ in 0..200 {
            if client.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // a's data for the read attacks: 300 lines of 200 KiB.
        let big = "x".repeat(200 << 10);
        for b in 0..15u64 {
            let records = (0..20u64)
                .map(|i| record("a", "big", b * 20 + i + 1, &big, None))
                .collect();
            assert_eq!(ingest(&client, &url, "ship-a", body("a", "big", records)).await, 200);
        }
        let seq = Arc::new(AtomicU64::new(0));
        // Warm-up (not reported): caches, memtables, connection pools.
        let _ = tenant_b(client.clone(), url.clone(), seq.clone(), Duration::from_secs(5)).await;
        println!(
            "noisy neighbour: {secs:?} per phase; b ingests {B_BATCH} records every {B_INGEST_EVERY:?} and queries every {B_QUERY_EVERY:?}"
        );
        println!(
            "| phase | b ingest p50 / p99 ms | b query p50 / p99 ms | p99 vs the quiet phase before (ingest, query) | b errors | a refused (client / server) | collector RSS / peak MiB |"
        );
        println!("|---|---|---|---|---|---|---|");
        let only: Option<Vec<String>> = std::env::var("PHASES")
            .ok()
            .map(|v| v.split(',').map(|p| p.trim().to_string()).collect());
        let rounds = testkit::env_usize("NOISY_ROUNDS", 1).max(1);
        let profile = std::env::var_os("NOISY_PROFILE").is_some();
        let mut profiles = Vec::new();
        let ctx = Ctx {
            client: client.clone(),
            url: url.clone(),
            addr,
            pid,
            seq,
            secs,
        };
        let classes: Vec<&str> = ATTACKS
            .iter()
            .copied()
            .filter(|c| only.as_ref().is_none_or(|o| o.iter().any(|p| p == c)))
            .collect();
        // Per class and round: b's p99 under the attack over b's p99 in the
        // quiet phase just before it (ingest, query).
        let mut ratios: Vec<Vec<(f64, f64)>> = vec![Vec::new(); classes.len()];
        for round in 0..rounds {
            for (ci, class) in classes.iter().enumerate() {
                let q = run_phase(&ctx, "quiet").await;
                let a = run_phase(&ctx, class).await;
                let r = (a.i99 / q.i99, a.q99 / q.q99);
                ratios[ci].push(r);
                let label = |p: &str| {
                    if rounds > 1 {
                        format!("{p} (round {})", round + 1)
                    } else {
                        p.to_string()
                    }
                };
                println!("{}", q.row(&label(&format!("quiet, before {class}")), (1.0, 1.0)));
                println!("{}", a.row(&label(class), r));
                if profile {
                    profiles.push(format!("{}: {}", label(class), a.cpu));
                }
            }
        }
        println!();
        println!("b's p99 under each attack over the quiet phase just before it, per round; the median decides (goal: <= 2x):");
        println!("| attack | ingest p99 ratios | median | query p99 ratios | median |");
        println!("|---|---|---|---|---|");
        for (class, rs) in classes.iter().zip(&ratios) {
            let list = |f: &dyn Fn(&(f64, f64)) -> f64| {
                rs.iter().map(|r| format!("{:.2}x", f(r))).collect::<Vec<_>>().join(", ")
            };
            let median = |f: &dyn Fn(&(f64, f64)) -> f64| {
                let mut v: Vec<f64> = rs.iter().map(f).collect();
                v.sort_by(f64::total_cmp);
                let n = v.len();
                if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
            };
            println!(
                "| {class} | {} | {:.2}x | {} | {:.2}x |",
                list(&|r| r.0),
                median(&|r| r.0),
                list(&|r| r.1),
                median(&|r| r.1)
            );
        }
        if profile {
            println!("collector CPU per thread group (cores used during b's measurement):");
            for p in &profiles {
                println!("  {p}");
            }
        }
        let m = client
            .get(format!("{url}/metrics"))
            .bearer_auth(testkit::tokens::ADMIN)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        println!("collector refusals of tenant a (admin /metrics):");
        for l in m.lines().filter(|l| l.starts_with("collector_tenant_") && l.contains("subscription=\"a\"")) {
            println!("  {l}");
        }
    });
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.wait();
}

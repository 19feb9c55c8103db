//! Collector benchmark: ingest over real HTTP, then search over a large store.
//!
//! `cargo bench -p collector --bench ingest` (release profile). Environment:
//! - `BENCH_INGEST_RECORDS` (default 2,000,000): records posted over HTTP
//!   to the real `sesam-collector` binary by an in-process load generator
//!   (8 connections, zstd batches of 1,000 records of ~250 bytes);
//! - `BENCH_SEARCH_RECORDS` (default 10,000,000): records in the search
//!   store (written through the store API, spread over 24 h, 4 sources,
//!   50 pipes);
//! - `BENCH_DIR` (default a temp dir): where the stores and the JSON-lines
//!   export go.
//!
//! Prints one line per figure; BENCHMARKS.md records them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use collector::logs::ingest::{prepare, DecodedBatch, IngestLimits};
use collector::logs::query::{self, SearchParams};
use collector::telemetry::Metrics;
use collector::{LogStore, Store, StoreConfig};
use schemas::{Body, EventType, ExecutionBody, IngestBatch, Level, LogBody, Record};
use testkit::env_usize;

const SUB: &str = "bench";
const PIPES: u64 = 50;
const SOURCES: u64 = 4;

/// A record of about 250 bytes as MessagePack: 60% execution events, 40% logs.
fn record(source: u64, seq: u64, ts: i64) -> Record {
    let pipe = format!("pipe-{}", (seq * 7 + source) % PIPES);
    let body = if seq % 5 < 3 {
        let event = match seq % 20 {
            0 => EventType::PumpFailed,
            1..=9 => EventType::PumpStarted,
            _ => EventType::PumpCompleted,
        };
        let mut b = ExecutionBody::new(pipe, event);
        b.run_id = Some(format!("run-{source}-{seq}"));
        b.start_time = Some("2026-11-27T10:00:00.000000Z".into());
        b.end_time = Some("2026-11-27T10:00:01.250000Z".into());
        if event == EventType::PumpCompleted {
            b.metrics.changes_last_run = Some(seq % 1000);
            b.metrics.entities_last_run = Some(seq % 5000);
            b.total_time = Some(1.25);
        }
        if event == EventType::PumpFailed {
            b.original_error_message = Some("read timeout from upstream system".into());
        }
        Body::Execution(Box::new(b))
    } else {
        Body::Log(LogBody {
            level: if seq % 10 == 3 { Level::Warn } else { Level::Info },
            target: "sesam_node::pump::runner".into(),
            message: format!(
                "pipe {pipe} processed batch {seq} of entities from the source dataset crm-person-raw; next run scheduled"
            ),
            fields: Default::default(),
        })
    };
    Record {
        seq,
        ts,
        source: format!("node-{source}"),
        subscription: SUB.into(),
        body,
    }
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    testkit::process::status_kib(pid, "VmHWM")
}

fn ingest_bench(dir: &Path, total: usize) {
    let tokens = testkit::tokens::write(&dir.join("tokens.toml"), &["bench"]);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let data = dir.join("ingest-data");
    let _ = std::fs::remove_dir_all(&data);
    let mut child = Command::new(env!("CARGO_BIN_EXE_sesam-collector"))
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--tokens"])
        .arg(&tokens)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn collector");
    let pid = child.id();

    // Pre-encode every batch so the generator costs little while measuring.
    let batch_size = 1000usize;
    let batches_n = total.div_ceil(batch_size);
    let now = schemas::time::now_nanos();
    let mut raw_bytes = 0usize;
    let mut batches: Vec<Vec<u8>> = Vec::with_capacity(batches_n);
    let mut per_source_seq = [0u64; SOURCES as usize];
    for b in 0..batches_n {
        let source = b as u64 % SOURCES;
        let records: Vec<Record> = (0..batch_size)
            .map(|i| {
                per_source_seq[source as usize] += 1;
                let seq = per_source_seq[source as usize];
                record(
                    source,
                    seq,
                    now - 3_600_000_000_000 + (b * batch_size + i) as i64 * 1000,
                )
            })
            .collect();
        let raw = schemas::to_msgpack(&IngestBatch {
            epoch: String::new(),
            source: format!("node-{source}"),
            subscription: SUB.into(),
            records,
            dropped: 0,
        })
        .expect("encode");
        raw_bytes += raw.len();
        batches.push(zstd::encode_all(raw.as_slice(), 1).expect("zstd"));
    }
    let record_bytes = raw_bytes as f64 / (batches_n * batch_size) as f64;
    let wire: usize = batches.iter().map(Vec::len).sum();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let url = format!("http://127.0.0.1:{port}/api/v1/ingest");
    let (elapsed, retries) = rt.block_on(async move {
        let client = reqwest::Client::new();
        let health = format!("http://127.0.0.1:{port}/readyz");
        let start_wait = Instant::now();
        while client
            .get(&health)
            .send()
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            assert!(
                start_wait.elapsed() < Duration::from_secs(30),
                "collector did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Connections per source keep each source's batches in order, as a
        // shipper does; 2 connections per source.
        let batches = Arc::new(batches);
        let retries = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        let conns = (SOURCES * 2) as usize;
        for c in 0..conns {
            let (client, url, batches, retries) = (
                client.clone(),
                url.clone(),
                batches.clone(),
                retries.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut i = c;
                while i < batches.len() {
                    loop {
                        let r = client
                            .post(&url)
                            .bearer_auth("ship-bench")
                            .header("content-type", "application/msgpack")
                            .header("content-encoding", "zstd")
                            .body(batches[i].clone())
                            .send()
                            .await
                            .expect("post");
                        if r.status() == 200 {
                            break;
                        }
                        assert_eq!(r.status(), 429, "unexpected status");
                        retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    i += conns;
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        (started.elapsed(), retries.load(Ordering::Relaxed))
    });
    let records = (batches_n * batch_size) as f64;
    let hwm = vm_hwm_kib(pid).unwrap_or(0);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    println!(
        "ingest: {} records ({:.0} B each as MessagePack, {:.1} MiB on the wire zstd) in {:.2} s = {:.0} records/s; collector peak RSS {} MiB; 429 retries {}",
        records as u64,
        record_bytes,
        wire as f64 / (1 << 20) as f64,
        elapsed.as_secs_f64(),
        records / elapsed.as_secs_f64(),
        hwm / 1024,
        retries
    );
}

fn build_search_store(path: &Path, total: usize, now: i64) -> Store {
    let store = Store::open(path, StoreConfig::default(), Metrics::default(), Vec::new())
        .expect("open store");
    if !store.streams().is_empty() {
        println!("search store: reusing {}", path.display());
        return store;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let span = 24 * 3_600_000_000_000i64;
    let per_batch = 5000usize;
    let started = Instant::now();
    let mut seqs = [0u64; SOURCES as usize];
    let limits = IngestLimits::default();
    rt.block_on(async {
        let mut pending = std::collections::VecDeque::new();
        let mut done = 0usize;
        while done < total {
            let source = (done / per_batch) as u64 % SOURCES;
            let n = per_batch.min(total - done);
            let records: Vec<Record> = (0..n)
                .map(|i| {
                    seqs[source as usize] += 1;
                    let k = (done + i) as i64;
                    record(
                        source,
                        seqs[source as usize],
                        now - span + k * (span / total as i64),
                    )
                })
                .collect();
            let prepared = prepare(
                DecodedBatch {
                    source: format!("node-{source}"),
                    subscription: SUB.into(),
                    epoch: String::new(),
                    records,
                    dropped: 0,
                },
                &limits,
                now,
                now - span - 1,
                false,
            )
            .expect("valid");
            let s = store.clone();
            pending.push_back(tokio::spawn(async move { s.ingest(prepared).await }));
            if pending.len() >= 4 {
                if let Some(t) = pending.pop_front() {
                    t.await.expect("join").expect("ingest");
                }
            }
            done += n;
        }
        for t in pending {
            t.await.expect("join").expect("ingest");
        }
    });
    println!(
        "search store: wrote {total} records through the store API in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    store
}

fn search_bench(dir: &Path, total: usize) {
    let path = dir.join(format!("search-{total}"));
    let now_file = path.with_extension("now");
    let now = std::fs::read_to_string(&now_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(schemas::time::now_nanos);
    let store = build_search_store(&path, total, now);
    std::fs::write(&now_file, now.to_string()).expect("write now");
    println!(
        "search store: {} streams, {:.0} MiB on disk",
        store.streams().len(),
        store.disk_bytes() as f64 / (1 << 20) as f64
    );
    let hour = 3_600_000_000_000i64;
    let far = Instant::now() + Duration::from_secs(3600);

    // Selective: one pipe, one hour, a line filter; 50 different hours/pipes.
    let mut times = Vec::new();
    let mut hits_total = 0;
    for i in 0..50i64 {
        let q = query::parse(&format!(
            r#"{{pipe="pipe-{}"}} |= "timeout""#,
            i % PIPES as i64
        ))
        .expect("parse");
        let end = now - (i % 23) * hour;
        let p = SearchParams {
            start: end - hour,
            end,
            limit: 100,
            backward: true,
            subscription: Some(SUB.into()),
            deadline: far,
            max_bytes: usize::MAX,
            parallel: true,
            max_scanned_bytes: u64::MAX,
        };
        let t = Instant::now();
        let r = store.search(&q, &p).expect("search");
        times.push(t.elapsed());
        hits_total += r.hits.len();
    }
    times.sort();
    println!(
        "selective query ({{pipe=\"pipe-N\"}} |= \"timeout\", 1 h, limit 100; 50 runs): p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms, {:.1} hits/query",
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() * 9 / 10].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        hits_total as f64 / times.len() as f64
    );

    // Full scan with a line filter that never matches.
    let q = query::parse(r#"{subscription="bench"} |= "needle-not-present""#).expect("parse");
    let p = SearchParams {
        start: now - 25 * hour,
        end: now + 1,
        limit: 100,
        backward: true,
        subscription: None,
        deadline: far,
        max_bytes: usize::MAX,
        parallel: true,
        max_scanned_bytes: u64::MAX,
    };
    let mut best = None::<(Duration, u64, u64)>;
    for _ in 0..2 {
        let t = Instant::now();
        let r = store.search(&q, &p).expect("search");
        let e = t.elapsed();
        assert_eq!(r.hits.len(), 0);
        if best.is_none_or(|b| e < b.0) {
            best = Some((e, r.scanned, r.scanned_bytes));
        }
    }
    let (scan_t, scanned, scanned_bytes) = best.expect("ran");

    // The same records as JSON lines for ripgrep.
    let export = dir.join(format!("export-{total}.jsonl"));
    if !export.exists() {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&export).expect("create export"));
        let all = query::parse("{}").expect("parse");
        for s in store.select_streams(&all, None, i64::MIN, i64::MAX) {
            let mut it = store.scan(s.id, i64::MIN, i64::MAX, false).expect("scan");
            while let Some((ts, seq, line)) = it.current() {
                use std::io::Write;
                // The record as the wire's JSON: envelope plus body.
                write!(
                    w,
                    "{{\"seq\":{seq},\"ts\":{ts},\"source\":{},\"subscription\":{},\"kind\":{},\"body\":",
                    serde_json::to_string(s.labels.get("source").map_or("", String::as_str)).expect("json"),
                    serde_json::to_string(s.subscription()).expect("json"),
                    serde_json::to_string(s.labels.get("kind").map_or("", String::as_str)).expect("json"),
                )
                .expect("write");
                w.write_all(line).expect("write");
                w.write_all(b"}\n").expect("write");
                it.advance();
            }
        }
        std::io::Write::flush(&mut w).expect("flush");
    }
    let export_bytes = std::fs::metadata(&export).map(|m| m.len()).unwrap_or(0);
    let mut rg_best = None::<Duration>;
    for _ in 0..3 {
        let t = Instant::now();
        let out = Command::new("rg")
            .args(["-c", "needle-not-present"])
            .arg(&export)
            .output();
        let e = t.elapsed();
        match out {
            Ok(o) if o.status.code() == Some(1) || o.status.success() => {
                if rg_best.is_none_or(|b| e < b) {
                    rg_best = Some(e);
                }
            }
            Ok(o) => {
                println!("rg failed: {}", String::from_utf8_lossy(&o.stderr));
                break;
            }
            Err(e) => {
                println!("rg not runnable: {e}");
                break;
            }
        }
    }
    println!(
        "full scan ({{subscription=\"bench\"}} |= \"needle-not-present\", 25 h): {} records, {:.0} MiB of lines in {:.2} s = {:.0} records/s, {:.0} MiB/s",
        scanned,
        scanned_bytes as f64 / (1 << 20) as f64,
        scan_t.as_secs_f64(),
        scanned as f64 / scan_t.as_secs_f64(),
        scanned_bytes as f64 / (1 << 20) as f64 / scan_t.as_secs_f64()
    );
    if let Some(rg) = rg_best {
        println!(
            "ripgrep baseline (rg -c needle-not-present, {:.0} MiB JSON-lines export, page cache warm, best of 3): {:.2} s = {:.0} records/s, {:.0} MiB/s; collector/rg time ratio {:.2}",
            export_bytes as f64 / (1 << 20) as f64,
            rg.as_secs_f64(),
            scanned as f64 / rg.as_secs_f64(),
            export_bytes as f64 / (1 << 20) as f64 / rg.as_secs_f64(),
            scan_t.as_secs_f64() / rg.as_secs_f64()
        );
    }
    store.close();
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let tmp;
    let dir = match std::env::var("BENCH_DIR") {
        Ok(d) => {
            std::fs::create_dir_all(&d).expect("create BENCH_DIR");
            std::path::PathBuf::from(d)
        }
        Err(_) => {
            tmp = tempfile::tempdir().expect("tempdir");
            tmp.path().to_path_buf()
        }
    };
    let ingest = env_usize("BENCH_INGEST_RECORDS", 2_000_000);
    let search = env_usize("BENCH_SEARCH_RECORDS", 10_000_000);
    if ingest > 0 {
        ingest_bench(&dir, ingest);
    }
    if search > 0 {
        search_bench(&dir, search);
    }
}

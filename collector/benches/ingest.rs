//! Collector benchmark: ingest over real HTTP, then search over a large store.
//!
//! `cargo bench -p collector --bench ingest` (release profile). Environment:
//! - `BENCH_INGEST_RECORDS` (default 2,000,000): records posted over HTTP
//!   to the real `sesam-collector` binary by an in-process load generator
//!   (8 connections, zstd batches of 1,000 records of ~250 bytes);
//! - `BENCH_SEARCH_RECORDS` (default 10,000,000): records in the search
//!   store (written through the store API, spread over 24 h, 4 sources,
//!   50 pipes), once with the skip index and once without (ingest rates,
//!   index space, and every search with the index on and off);
//! - `BENCH_DIR` (default a temp dir): where the stores and the JSON-lines
//!   export go.
//!
//! Prints one line per figure; BENCHMARKS.md records them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use collector::logs::ingest::{prepare, DecodedBatch, IngestLimits};
use collector::logs::query::{self, SearchParams};
use collector::telemetry::Metrics;
use collector::{LogStore, Store, StoreConfig};
use schemas::Record;
use testkit::env_usize;

#[path = "common/load.rs"]
mod load;
use load::{record, PIPES, SOURCES, SUB};

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    testkit::process::status_kib(pid, "VmHWM")
}

/// The HTTP ingest benchmark: the same pre-encoded batches POSTed to a
/// fresh collector per run; with `BENCH_INGEST_ROUNDS` = n > 0, n rounds
/// of a run with the skip index and one without (`--skip-index false`),
/// the order alternating, to measure what the index costs.
fn ingest_bench(dir: &Path, total: usize) {
    let tokens = testkit::tokens::write(&dir.join("tokens.toml"), &["bench"]);

    // Pre-encode every batch so the generator costs little while measuring.
    let now = schemas::time::now_nanos();
    let encoded = load::encode(total, &|k| now - 3_600_000_000_000 + k as i64 * 1000);
    let record_bytes = encoded.record_bytes();
    let wire = encoded.wire_bytes();
    let records = encoded.records as f64;
    let batches = Arc::new(encoded.bodies);

    let rounds = env_usize("BENCH_INGEST_ROUNDS", 0);
    if rounds == 0 {
        let run = http_ingest(dir, &tokens, &batches, true);
        println!(
            "ingest: {} records ({:.0} B each as MessagePack, {:.1} MiB on the wire zstd) in {:.2} s = {:.0} records/s; collector peak RSS {} MiB; 429 retries {}",
            records as u64,
            record_bytes,
            wire as f64 / (1 << 20) as f64,
            run.elapsed.as_secs_f64(),
            records / run.elapsed.as_secs_f64(),
            run.hwm_kib / 1024,
            run.retries
        );
        return;
    }
    let mut on = Vec::new();
    let mut off = Vec::new();
    for round in 0..rounds {
        for index in [round % 2 == 0, round % 2 != 0] {
            let run = http_ingest(dir, &tokens, &batches, index);
            println!(
                "ingest round {round}, skip index {}: {} records in {:.2} s = {:.0} records/s; collector CPU {:.2} us/record; peak RSS {} MiB; 429 retries {}",
                if index { "on" } else { "off" },
                records as u64,
                run.elapsed.as_secs_f64(),
                records / run.elapsed.as_secs_f64(),
                run.cpu / records * 1e6,
                run.hwm_kib / 1024,
                run.retries
            );
            if index { &mut on } else { &mut off }.push(run);
        }
    }
    let median = |runs: &[HttpRun], f: &dyn Fn(&HttpRun) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rate = |r: &HttpRun| records / r.elapsed.as_secs_f64();
    let cpu = |r: &HttpRun| r.cpu / records * 1e6;
    let (r_on, r_off) = (median(&on, &rate), median(&off, &rate));
    let (c_on, c_off) = (median(&on, &cpu), median(&off, &cpu));
    println!(
        "ingest over HTTP, {} records ({:.0} B each as MessagePack), median of {rounds} runs each: skip index on {:.0} records/s, off {:.0} records/s: on/off {:.3} (cost {:.1}%); collector CPU on {:.2} us/record, off {:.2} (+{:.1}%)",
        records as u64,
        record_bytes,
        r_on,
        r_off,
        r_on / r_off,
        (1.0 - r_on / r_off) * 100.0,
        c_on,
        c_off,
        (c_on / c_off - 1.0) * 100.0
    );
}

struct HttpRun {
    elapsed: Duration,
    retries: u64,
    /// CPU seconds of the collector process during the load.
    cpu: f64,
    hwm_kib: u64,
}

/// POSTs `batches` to a collector started on a fresh data dir.
fn http_ingest(
    dir: &Path,
    tokens: &Path,
    batches: &Arc<Vec<Vec<u8>>>,
    skip_index: bool,
) -> HttpRun {
    let port = testkit::free_port();
    let data = dir.join("ingest-data");
    let _ = std::fs::remove_dir_all(&data);
    let mut child = Command::new(env!("CARGO_BIN_EXE_sesam-collector"))
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--tokens"])
        .arg(tokens)
        .args(["--skip-index", if skip_index { "true" } else { "false" }])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn collector");
    let pid = child.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let batches = batches.clone();
    let (elapsed, retries, cpu) = rt.block_on(async move {
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
        let targets = vec![format!("http://127.0.0.1:{port}"); load::CONNECTIONS];
        let cpu = testkit::process::cpu_seconds(pid);
        let started = Instant::now();
        let retries = load::post(&client, &targets, &batches).await;
        (
            started.elapsed(),
            retries,
            testkit::process::cpu_seconds(pid) - cpu,
        )
    });
    let hwm_kib = vm_hwm_kib(pid).unwrap_or(0);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    HttpRun {
        elapsed,
        retries,
        cpu,
        hwm_kib,
    }
}

/// The prepared batches of records `[from, from + n)` of the search store.
fn search_batches(
    from: usize,
    n: usize,
    total: usize,
    now: i64,
    seqs: &mut [u64; SOURCES as usize],
) -> Vec<collector::logs::PreparedBatch> {
    let span = 24 * 3_600_000_000_000i64;
    let per_batch = 5000usize;
    let limits = IngestLimits::default();
    let mut out = Vec::new();
    let mut done = from;
    while done < from + n {
        let source = (done / per_batch) as u64 % SOURCES;
        let k = per_batch.min(from + n - done);
        let records: Vec<Record> = (0..k)
            .map(|i| {
                seqs[source as usize] += 1;
                let at = (done + i) as i64;
                record(
                    source,
                    seqs[source as usize],
                    now - span + at * (span / total as i64),
                )
            })
            .collect();
        out.push(
            prepare(
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
            .expect("valid"),
        );
        done += k;
    }
    out
}

/// Ingests `batches` through the store API (4 in flight); returns the time
/// and the CPU seconds the process used meanwhile (every thread: the
/// callers, the writer, flushes and compactions).
fn ingest_batches(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    batches: Vec<collector::logs::PreparedBatch>,
) -> (Duration, f64) {
    let cpu = testkit::process::cpu_seconds(std::process::id());
    let started = Instant::now();
    rt.block_on(async {
        let mut pending = std::collections::VecDeque::new();
        for b in batches {
            let s = store.clone();
            pending.push_back(tokio::spawn(async move { s.ingest(b).await }));
            if pending.len() >= 4 {
                if let Some(t) = pending.pop_front() {
                    t.await.expect("join").expect("ingest");
                }
            }
        }
        for t in pending {
            t.await.expect("join").expect("ingest");
        }
    });
    (
        started.elapsed(),
        testkit::process::cpu_seconds(std::process::id()) - cpu,
    )
}

fn open_search_store(path: &Path, skip_index: bool) -> Store {
    let config = StoreConfig {
        skip_index,
        ..StoreConfig::default()
    };
    Store::open(path, config, Metrics::default(), Vec::new()).expect("open store")
}

/// The search store (skip index on) and, beside it, the same records in a
/// store without the index: written chunk by chunk in turn, so that both
/// ingest rates come from the same minutes of a shared machine.
fn build_search_stores(path: &Path, plain_path: &Path, total: usize, now: i64) -> (Store, Store) {
    let store = open_search_store(path, true);
    let plain = open_search_store(plain_path, false);
    if !store.streams().is_empty() && !plain.streams().is_empty() {
        println!(
            "search stores: reusing {} and {}",
            path.display(),
            plain_path.display()
        );
        return (store, plain);
    }
    assert!(
        store.streams().is_empty() && plain.streams().is_empty(),
        "remove the half-built stores in BENCH_DIR"
    );
    // Two workers, like the collector's decode pool: a batch's index work
    // (`Store::stage`, done by the caller) runs in parallel with others.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let chunk = 100_000usize;
    let mut seqs = [0u64; SOURCES as usize];
    let (mut t_index, mut t_plain) = (Duration::ZERO, Duration::ZERO);
    let (mut cpu_index, mut cpu_plain) = (0.0, 0.0);
    let mut done = 0;
    while done < total {
        let n = chunk.min(total - done);
        let batches = search_batches(done, n, total, now, &mut seqs);
        let copy = batches.clone();
        let mut run = |indexed: bool, b| {
            if indexed {
                let (t, c) = ingest_batches(&rt, &store, b);
                t_index += t;
                cpu_index += c;
            } else {
                let (t, c) = ingest_batches(&rt, &plain, b);
                t_plain += t;
                cpu_plain += c;
            }
        };
        // Alternate which store goes first.
        let first = (done / chunk).is_multiple_of(2);
        run(first, if first { batches.clone() } else { copy.clone() });
        run(!first, if first { copy } else { batches });
        done += n;
    }
    let (r_index, r_plain) = (
        total as f64 / t_index.as_secs_f64(),
        total as f64 / t_plain.as_secs_f64(),
    );
    println!(
        "search store ingest through the store API, {total} records, chunks of {chunk} alternating: skip index on {:.1} s = {:.0} records/s, off {:.1} s = {:.0} records/s; on/off rate {:.3} (cost {:.1}%); CPU per record (all threads) on {:.2} us, off {:.2} us ({:+.1}%)",
        t_index.as_secs_f64(),
        r_index,
        t_plain.as_secs_f64(),
        r_plain,
        r_index / r_plain,
        (1.0 - r_index / r_plain) * 100.0,
        cpu_index / total as f64 * 1e6,
        cpu_plain / total as f64 * 1e6,
        (cpu_index / cpu_plain - 1.0) * 100.0
    );
    (store, plain)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// Best time of `runs` searches and the answer's (hits, scanned, bytes).
fn best_of(
    store: &Store,
    q: &query::Query,
    p: &SearchParams,
    runs: usize,
) -> (Duration, usize, u64, u64) {
    let mut best = None::<(Duration, usize, u64, u64)>;
    for _ in 0..runs {
        let t = Instant::now();
        let r = store.search(q, p).expect("search");
        let e = t.elapsed();
        if best.is_none_or(|b| e < b.0) {
            best = Some((e, r.hits.len(), r.scanned, r.scanned_bytes));
        }
    }
    best.expect("ran")
}

/// Best of 3 `rg -c -F needle` over the export.
fn rg_best(export: &Path, needle: &str) -> Option<Duration> {
    let mut best = None::<Duration>;
    for _ in 0..3 {
        let t = Instant::now();
        let out = Command::new("rg")
            .args(["-c", "-F", needle])
            .arg(export)
            .output();
        let e = t.elapsed();
        match out {
            Ok(o) if o.status.code() == Some(1) || o.status.success() => {
                if best.is_none_or(|b| e < b) {
                    best = Some(e);
                }
            }
            Ok(o) => {
                println!("rg failed: {}", String::from_utf8_lossy(&o.stderr));
                return None;
            }
            Err(e) => {
                println!("rg not runnable: {e}");
                return None;
            }
        }
    }
    best
}

fn search_bench(dir: &Path, total: usize) {
    let path = dir.join(format!("search-{total}"));
    let plain_path = dir.join(format!("search-{total}-noindex"));
    let now_file = path.with_extension("now");
    let now = std::fs::read_to_string(&now_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(schemas::time::now_nanos);
    let (store, plain) = build_search_stores(&path, &plain_path, total, now);
    std::fs::write(&now_file, now.to_string()).expect("write now");
    store.compact().expect("compact");
    plain.compact().expect("compact");
    let cfs = store.column_family_bytes();
    let sst: u64 = cfs.iter().map(|(_, b)| b).sum();
    let index: u64 = cfs
        .iter()
        .filter(|(n, _)| *n == "skip" || *n == "volume")
        .map(|(_, b)| b)
        .sum();
    let plain_sst: u64 = plain.column_family_bytes().iter().map(|(_, b)| b).sum();
    println!(
        "search store: {} streams; after full compaction SST {:.1} MiB ({}), of which skip + volume index {:.1} MiB = {:.1}% of the store; the same records without the index: SST {:.1} MiB (index adds {:.1}%)",
        store.streams().len(),
        mib(sst),
        cfs.iter()
            .map(|(n, b)| format!("{n} {:.1} MiB", mib(*b)))
            .collect::<Vec<_>>()
            .join(", "),
        mib(index),
        index as f64 / sst as f64 * 100.0,
        mib(plain_sst),
        (sst as f64 / plain_sst as f64 - 1.0) * 100.0
    );
    plain.close();
    drop(plain);
    let hour = 3_600_000_000_000i64;
    let far = Instant::now() + Duration::from_secs(3600);

    // Selective: one pipe, one hour, a line filter; 50 different hours/pipes,
    // each run with the index on and off in turn (the first run of a query
    // warms the cache for the second: the order alternates).
    let mut times = [Vec::new(), Vec::new()];
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
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for on in order {
            store.set_skip_index_reads(on);
            let t = Instant::now();
            let r = store.search(&q, &p).expect("search");
            times[usize::from(!on)].push(t.elapsed());
            if on {
                hits_total += r.hits.len();
            }
        }
    }
    store.set_skip_index_reads(true);
    for (k, times) in times.iter_mut().enumerate() {
        times.sort();
        println!(
            "selective query ({{pipe=\"pipe-N\"}} |= \"timeout\", 1 h, limit 100; 50 runs), skip index {}: p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms, {:.1} hits/query",
            if k == 0 { "on" } else { "off" },
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[times.len() * 9 / 10].as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3,
            hits_total as f64 / times.len() as f64
        );
    }
    // A selective query the index can use: a token absent from the pipe's
    // streams (log lines carry no pipe label in this data set).
    let mut times = [Vec::new(), Vec::new()];
    for i in 0..50i64 {
        let q = query::parse(&format!(
            r#"{{pipe="pipe-{}"}} |= "batch {} of""#,
            i % PIPES as i64,
            1000 + i * 7919
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
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for on in order {
            store.set_skip_index_reads(on);
            let t = Instant::now();
            store.search(&q, &p).expect("search");
            times[usize::from(!on)].push(t.elapsed());
        }
    }
    store.set_skip_index_reads(true);
    for (k, times) in times.iter_mut().enumerate() {
        times.sort();
        println!(
            "selective query, token absent from the selected streams ({{pipe=\"pipe-N\"}} |= \"batch M of\", 1 h, limit 100; 50 runs), skip index {}: p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms",
            if k == 0 { "on" } else { "off" },
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[times.len() * 9 / 10].as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3,
        );
    }

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

    // Line-filter scans over everything (25 h): an absent token, a rare one
    // (a log line of one seq per source: 4 records), and a token of every
    // record (nothing skipped; `!= "pipe"` keeps every line from matching,
    // so all are read).
    let mut rare = (total / SOURCES as usize / 2) as u64;
    rare += (3 + 5 - rare % 5) % 5;
    let rare_needle = format!("batch {rare} of");
    let cases = [
        (
            "absent",
            "needle-not-present".to_string(),
            r#"{subscription="bench"} |= "needle-not-present""#.to_string(),
            Some("needle-not-present".to_string()),
        ),
        (
            "rare",
            rare_needle.clone(),
            format!(r#"{{subscription="bench"}} |= "{rare_needle}""#),
            Some(rare_needle.clone()),
        ),
        (
            "common",
            ":\"pipe-".to_string(),
            r#"{subscription="bench"} |= ":\"pipe-" != "pipe""#.to_string(),
            None,
        ),
    ];
    for (name, needle, text, rg_needle) in cases {
        let q = query::parse(&text).expect("parse");
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
        // Three rounds of one run each way, the order alternating (the
        // machine is shared: the best of each way is compared).
        let mut on_runs = Vec::new();
        let mut off_runs = Vec::new();
        for round in 0..3 {
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for on in order {
                store.set_skip_index_reads(on);
                let r = best_of(&store, &q, &p, 1);
                if on {
                    on_runs.push(r);
                } else {
                    off_runs.push(r);
                }
            }
        }
        store.set_skip_index_reads(true);
        on_runs.sort_by_key(|r| r.0);
        off_runs.sort_by_key(|r| r.0);
        println!(
            "  {name}: runs with the index on {:?} ms, off {:?} ms",
            on_runs.iter().map(|r| r.0.as_millis()).collect::<Vec<_>>(),
            off_runs.iter().map(|r| r.0.as_millis()).collect::<Vec<_>>()
        );
        let (t_on, hits, scanned_on, _) = on_runs[0];
        let (t_off, hits_off, scanned, scanned_bytes) = off_runs[0];
        assert_eq!(hits, hits_off, "the index changed an answer");
        println!(
            "{name} token scan ({text}, 25 h): skip index on {:.3} s ({scanned_on} records read, {hits} hits), off {:.3} s ({scanned} records, {:.0} MiB of lines, {:.0} records/s); off/on {:.1}x",
            t_on.as_secs_f64(),
            t_off.as_secs_f64(),
            mib(scanned_bytes),
            scanned as f64 / t_off.as_secs_f64(),
            t_off.as_secs_f64() / t_on.as_secs_f64()
        );
        if let Some(rg) = rg_needle.and_then(|n| rg_best(&export, &n)) {
            println!(
                "  ripgrep baseline (rg -c -F {needle:?}, {:.0} MiB JSON-lines export, page cache warm, best of 3): {:.3} s = {:.0} records/s; rg/collector-with-index time {:.2}x, collector-without-index/rg {:.2}x",
                mib(export_bytes),
                rg.as_secs_f64(),
                scanned as f64 / rg.as_secs_f64(),
                rg.as_secs_f64() / t_on.as_secs_f64(),
                t_off.as_secs_f64() / rg.as_secs_f64()
            );
        }
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

//! ClickHouse log store benchmark (`--storage clickhouse`): ingest over
//! real HTTP into the real `sesam-collector` binary, against the RocksDB
//! store and against ClickHouse's own insert speed, then search over a
//! larger store. One ClickHouse server (Debian's `clickhouse-server`,
//! started on free loopback ports with a throw-away data dir) serves
//! every case, each case in a database of its own.
//!
//! ```sh
//! . scripts/env.sh
//! cargo build --release --workspace --bins --locked
//! cargo bench --workspace --locked --bench clickhouse
//! BENCH_CH_INGEST_RECORDS=200000 BENCH_CH_SEARCH_RECORDS=1000000 \
//!     cargo bench --workspace --locked --bench clickhouse   # a quick run
//! ```
//!
//! Environment:
//! - `BENCH_CH_INGEST_RECORDS` (default 1,000,000): records of each ingest
//!   case, the load of `common/load.rs` (as the `ingest` bench: records of
//!   ~250 bytes, zstd MessagePack batches of 1,000, 8 connections, 2 per
//!   source). The cases: (a) one collector on RocksDB (the baseline);
//!   (b) one collector on ClickHouse (database `bench_one`); (c) two
//!   collectors on ClickHouse (`bench_two`), sources 0-1 (4 connections)
//!   to one and sources 2-3 to the other. Each prints records/s, the
//!   collectors' peak RSS (`VmHWM`) and the CPU seconds of the collectors,
//!   of ClickHouse and of this load generator during the load; after (b)
//!   and (c) exactly-once is checked: `/api/v1/sources` (every collector)
//!   and the distinct records in the table both equal the records sent.
//!   Beside them, ClickHouse's own speed: the same rows (the lines the
//!   collector would store) inserted straight into a table of the records
//!   schema (`bench_raw`), `INSERT ... FORMAT RowBinary` of 50,000 rows a
//!   request, one request at a time (as one collector's writer does).
//! - `BENCH_CH_COORD_RECORDS` (default: `BENCH_CH_INGEST_RECORDS`; 0
//!   skips it): case (b2), right after (b), one collector on ClickHouse
//!   with `--coordination` (issue #13; database `bench_coord`): the same
//!   load as (b) (fewer records: the first batches of it), one member
//!   (`--member-id c0`, `--coordination-session-timeout 2s`) of a
//!   ZooKeeper started for the case (Debian's `zookeeper`; the case is
//!   skipped, loudly, where it is not installed). Every committed group
//!   is then also written to the collector's local commit feed and copied
//!   by its exporter into the shared `feed` table (a second insert of the
//!   same records), and the collector, owner of the subscription, pulls
//!   them back to evaluate. Prints records/s and its ratio to (b), then
//!   whether the exporter kept up: its `coordinated_feed_exported_records`
//!   at the end of the load and when it reached the records accepted (at
//!   most 120 s), the owner's `coordinated_feed_pulled_records`, and the
//!   rows (and distinct keys) of `bench_coord.feed`, the CPU of the
//!   collector and of ClickHouse over 10 s without load afterwards (the
//!   owner still polling the feed); then the exactly-once check as after
//!   (b).
//! - `BENCH_CH_SEARCH_RECORDS` (default 10,000,000): records of the search
//!   store, spread evenly over the last 24 h (4 sources, 50 pipes, the same
//!   generator), ingested over HTTP into one ClickHouse collector
//!   (`bench_search`, `--accept-past 48h`). Then over HTTP with the
//!   operator token: 50 selective searches (`{pipe="pipe-N"} |= "timeout"`,
//!   1 h, limit 100; goal p50 < 100 ms at 10 M records): p50 / p90 / max;
//!   and a full scan (`{subscription="bench"} |= "needle-not-present"`
//!   over 25 h, best of 2): records/s and MiB/s of lines. Prints the
//!   store's size on disk (`system.parts`). The search collectors run with
//!   a raised query timeout, request timeout and scan budget, so that the
//!   full scan is answered whatever its length.
//! - `BENCH_CH_COMPARE_ROCKS` (default 1 up to 2,000,000 search records,
//!   else 0): also ingest the search store into a RocksDB collector and run
//!   the same searches there.
//! - `BENCH_DIR` (default a temp dir): the collectors' data dirs, tokens and
//!   logs (ClickHouse's data is always in a temp dir of its own).
//! - `BENCH_COLLECTOR_BIN` (default the `sesam-collector` cargo built): the
//!   collector binary to run, e.g. a copy that a later build cannot replace.
//!
//! Prints one line per figure (indented lines are details).

#[path = "common/load.rs"]
mod load;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use collector::logs::clickhouse::client::RowWriter;
use collector::logs::clickhouse::schema::{self, Layout};
use collector::logs::clickhouse::writer::stream_id;
use collector::logs::ingest::{prepare, DecodedBatch, IngestLimits};
use collector::logs::model::ENTRY_V1;
use serde_json::Value;
use testkit::engines::{skip, ClickHouse, ClickHouseOptions, ZooKeeper};
use testkit::process::cpu_seconds;
use testkit::{env_usize, Proc};

use load::{SOURCES, SUB};

const HOUR: i64 = 3_600_000_000_000;
/// Rows of one raw insert (the collector's writer groups at most as many).
const RAW_INSERT_ROWS: usize = 50_000;
/// Debian's ZooKeeper (case (b2) is skipped without it).
const ZK_SCRIPT: &str = "/usr/share/zookeeper/bin/zkServer.sh";
/// How long the exporter is given after the load to copy every record.
const EXPORT_CATCH_UP: Duration = Duration::from_secs(120);
/// How long ClickHouse's CPU is watched once everything is exported and
/// pulled back.
const IDLE: Duration = Duration::from_secs(10);
/// Flags of the search collectors: old records accepted, and a full scan
/// never cut by the query timeout, the request timeout or the scan budget.
const SEARCH_FLAGS: [&str; 8] = [
    "--accept-past",
    "48h",
    "--query-timeout",
    "600s",
    "--request-timeout",
    "900s",
    "--max-query-scan-bytes",
    "1099511627776",
];

fn mib(b: f64) -> f64 {
    b / (1 << 20) as f64
}

fn machine(when: &str) {
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!(
        "machine at the {when}: nproc {nproc}, load average {}",
        load.join(" ")
    );
}

/// The collector binary: `BENCH_COLLECTOR_BIN`, else the one cargo built.
fn collector_bin() -> PathBuf {
    std::env::var_os("BENCH_COLLECTOR_BIN").map_or_else(
        || env!("CARGO_BIN_EXE_sesam-collector").into(),
        PathBuf::from,
    )
}

/// A `sesam-collector` on a free loopback port, its data under
/// `dir/<name>` (emptied first), its log in `dir/<name>.log`.
struct Collector {
    proc: Proc,
    url: String,
    data: PathBuf,
}

impl Collector {
    fn start(
        rt: &tokio::runtime::Runtime,
        client: &reqwest::Client,
        dir: &Path,
        name: &str,
        tokens: &Path,
        extra: &[String],
    ) -> Collector {
        let port = testkit::free_port();
        let data = dir.join(name);
        let _ = std::fs::remove_dir_all(&data);
        let log = dir.join(format!("{name}.log"));
        let _ = std::fs::remove_file(&log);
        let mut cmd = Command::new(collector_bin());
        cmd.arg("--data-dir")
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--tokens"])
            .arg(tokens)
            .args(extra)
            .env("RUST_LOG", "warn");
        let mut proc = Proc::spawn(name, cmd, &log);
        let url = format!("http://127.0.0.1:{port}");
        let ready = format!("{url}/readyz");
        let started = Instant::now();
        while !rt.block_on(async {
            client
                .get(&ready)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }) {
            if let Some(status) = proc.exited() {
                panic!("{name} exited at start ({status}):\n{}", proc.log_tail(20));
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{name} did not become ready in 60 s:\n{}",
                proc.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Collector { proc, url, data }
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    fn hwm_mib(&self) -> u64 {
        self.proc.vm_hwm_bytes().unwrap_or(0) >> 20
    }

    fn stop(mut self) {
        self.proc.terminate(Duration::from_secs(60));
    }
}

/// The flags of a collector on `ch`, database `db`.
fn ch_args(ch: &ClickHouse, db: &str) -> Vec<String> {
    [
        "--storage",
        "clickhouse",
        "--clickhouse-url",
        &ch.url(),
        "--clickhouse-database",
        db,
    ]
    .map(String::from)
    .to_vec()
}

/// Runs `sql` on `ch` (allowed 10 minutes: the checks over the search
/// store read tens of millions of rows) and answers the text.
fn ch_query(ch: &ClickHouse, sql: &str) -> String {
    let addr = format!("127.0.0.1:{}", ch.http_port);
    match testkit::engines::http("POST", &addr, "/", sql.as_bytes(), Duration::from_secs(600)) {
        Ok((200, body)) => body.trim().to_string(),
        Ok((status, body)) => panic!("{sql}: ClickHouse answered {status}: {}", body.trim()),
        Err(e) => panic!("{sql}: {e}"),
    }
}

fn ch_u64(ch: &ClickHouse, sql: &str) -> u64 {
    let v = ch_query(ch, sql);
    v.parse()
        .unwrap_or_else(|_| panic!("{sql}: not a number: {v:?}"))
}

/// Waits until `pids` are idle (together under 5% of a core over a
/// second: ClickHouse's merges and the stores' flushes of the previous
/// case done), at most `max`; answers the wait.
fn settle(pids: &[u32], max: Duration) -> Duration {
    let started = Instant::now();
    let cpu = || pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    while started.elapsed() < max {
        let before = cpu();
        std::thread::sleep(Duration::from_secs(1));
        if cpu() - before < 0.05 {
            break;
        }
    }
    started.elapsed()
}

/// What one run of the load measured.
struct LoadRun {
    elapsed: Duration,
    retries: u64,
    /// CPU seconds during the load: the collectors together, ClickHouse,
    /// this process (the load generator).
    collectors_cpu: f64,
    ch_cpu: f64,
    bench_cpu: f64,
    /// ClickHouse's counters (`system.events`) over the load.
    ch_events: HashMap<String, u64>,
}

/// ClickHouse's cumulative counters (`system.events`).
fn ch_events(ch: &ClickHouse) -> HashMap<String, u64> {
    ch_query(ch, "SELECT event, value FROM system.events")
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('\t')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// `after - before`, counter by counter.
fn events_delta(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
) -> HashMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .collect()
}

/// What ClickHouse did for `records` records, from its counters; `group`:
/// the collector's inserts are 4 per group (streams, records, seqs,
/// batches), so the size of its groups follows (not with
/// `--coordination`, whose exporter's inserts of the feed come beside).
fn ch_work(ev: &HashMap<String, u64>, records: usize, group: bool) -> String {
    let n = |k: &str| ev.get(k).copied().unwrap_or(0);
    let inserts = n("InsertQuery");
    let groups = if group && inserts > 0 {
        format!(
            "; 4 per group of the collector: ~{:.0} records a group",
            records as f64 * 4.0 / inserts as f64
        )
    } else {
        String::new()
    };
    format!(
        "ClickHouse's counters over it: {inserts} inserts ({} rows in all{groups}), {} selects, {} rows merged ({:.1} per record, {:.0} s in merge threads), {:.0} MiB of compressed data read, {:.0} MiB written",
        n("InsertedRows"),
        n("SelectQuery"),
        n("MergedRows"),
        n("MergedRows") as f64 / records as f64,
        n("MergesTimeMilliseconds") as f64 / 1e3,
        mib(n("ReadCompressedBytes") as f64),
        mib(n("WriteBufferFromFileDescriptorWriteBytes") as f64)
    )
}

/// POSTs `bodies` over the 8 connections to `targets` (one per connection).
fn run_load(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    targets: &[String],
    bodies: &Arc<Vec<Vec<u8>>>,
    collectors: &[&Collector],
    ch: &ClickHouse,
) -> LoadRun {
    let pids: Vec<u32> = collectors.iter().map(|c| c.pid()).collect();
    let sum = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let me = std::process::id();
    let events = ch_events(ch);
    let (c0, h0, b0) = (sum(&pids), cpu_seconds(ch.pid()), cpu_seconds(me));
    let started = Instant::now();
    let retries = rt.block_on(load::post(client, targets, bodies));
    let elapsed = started.elapsed();
    let (c1, h1, b1) = (sum(&pids), cpu_seconds(ch.pid()), cpu_seconds(me));
    LoadRun {
        elapsed,
        retries,
        collectors_cpu: c1 - c0,
        ch_cpu: h1 - h0,
        bench_cpu: b1 - b0,
        ch_events: events_delta(&events, &ch_events(ch)),
    }
}

/// Every connection to `c`.
fn all_to(c: &Collector) -> Vec<String> {
    vec![c.url.clone(); load::CONNECTIONS]
}

/// `GET path` with `token`, answering 200 with JSON: (time to the last
/// byte, the JSON).
fn get_json(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    url: &str,
    query: &[(&str, String)],
    token: &str,
) -> (Duration, Value) {
    let started = Instant::now();
    let (status, body) = rt.block_on(async {
        let r = client
            .get(url)
            .query(query)
            .bearer_auth(token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = r.status();
        (status, r.bytes().await.expect("answer body"))
    });
    let took = started.elapsed();
    assert_eq!(
        status,
        200,
        "GET {url} {query:?}: {}",
        String::from_utf8_lossy(&body)
    );
    let v = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (took, v)
}

/// Records of the bench subscription that `c` reports in `/api/v1/sources`.
fn sources_total(rt: &tokio::runtime::Runtime, client: &reqwest::Client, c: &Collector) -> u64 {
    let (_, v) = get_json(
        rt,
        client,
        &format!("{}/api/v1/sources", c.url),
        &[],
        testkit::tokens::ADMIN,
    );
    v["sources"]
        .as_array()
        .expect("sources list")
        .iter()
        .filter(|s| s["subscription"] == SUB)
        .map(|s| s["records"].as_u64().unwrap_or(0))
        .sum()
}

/// The exactly-once check of a ClickHouse case: every collector's
/// `/api/v1/sources` and the distinct records of `db.records` equal
/// `sent`. Prints the outcome; answers whether it holds.
fn verify(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    collectors: &[&Collector],
    ch: &ClickHouse,
    db: &str,
    sent: u64,
) -> bool {
    let api: Vec<u64> = collectors
        .iter()
        .map(|c| sources_total(rt, client, c))
        .collect();
    let distinct = ch_u64(
        ch,
        &format!(
            "SELECT count() FROM (SELECT 1 FROM {db}.records \
             LIMIT 1 BY subscription, stream, ts, source, epoch, seq)"
        ),
    );
    let rows = ch_u64(ch, &format!("SELECT count() FROM {db}.records"));
    let ok = api.iter().all(|n| *n == sent) && distinct == sent;
    println!(
        "  exactly once ({db}): {sent} records sent; /api/v1/sources {}; distinct records in {db}.records {distinct} ({rows} rows before merges): {}",
        api.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" and "),
        if ok { "OK" } else { "MISMATCH" }
    );
    ok
}

/// Prints one ingest case; `with_ch`: ClickHouse's CPU and counters too;
/// `groups`: the collector's group size from the inserts (see `ch_work`).
fn print_ingest(case: &str, records: usize, run: &LoadRun, rss: &str, with_ch: bool, groups: bool) {
    let secs = run.elapsed.as_secs_f64();
    let ch = if with_ch {
        format!(
            "; ClickHouse CPU {:.1} s ({:.2} us/record)",
            run.ch_cpu,
            run.ch_cpu / records as f64 * 1e6
        )
    } else {
        String::new()
    };
    println!(
        "{case}: {records} records in {secs:.2} s = {:.0} records/s; peak RSS {rss}{ch}; collector CPU {:.1} s; load generator CPU {:.1} s; 429 retries {}",
        records as f64 / secs,
        run.collectors_cpu,
        run.bench_cpu,
        run.retries
    );
    if with_ch {
        println!("  {}", ch_work(&run.ch_events, records, groups));
    }
}

/// ClickHouse's own insert speed: the rows the collector would store for
/// the load (same records, lines and stream ids), in a fresh database
/// `bench_raw` made by the collector's schema, `RAW_INSERT_ROWS` a request.
fn raw_insert(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    ch: &ClickHouse,
    total: usize,
    now: i64,
) {
    let db = "bench_raw";
    for s in schema::statements(db, &Layout::default()) {
        ch_query(ch, &s);
    }
    let ts = |k: usize| now - HOUR + k as i64 * 1000;
    let limits = IngestLimits::default();
    let mut bodies = Vec::new();
    let mut w = RowWriter::default();
    let (mut rows, mut in_body, mut line_bytes) = (0usize, 0usize, 0usize);
    for b in 0..total.div_ceil(load::BATCH_RECORDS) {
        let (source, records) = load::batch_records(b, &ts);
        let source = format!("node-{source}");
        let batch = prepare(
            DecodedBatch {
                source: source.clone(),
                subscription: SUB.into(),
                epoch: String::new(),
                records,
                dropped: 0,
            },
            &limits,
            now,
            now - 2 * HOUR,
            false,
        )
        .expect("valid batch");
        let ids: Vec<u64> = batch.streams.iter().map(|s| stream_id(&s.key)).collect();
        for e in &batch.entries {
            let line = match e.value.split_first() {
                Some((&ENTRY_V1, rest)) => rest,
                _ => &e.value[..],
            };
            w.str(SUB);
            w.u64(ids[e.stream]);
            w.i64(e.ts);
            w.str(&source);
            w.str("");
            w.u64(e.seq);
            w.bytes(line);
            line_bytes += line.len();
            rows += 1;
            in_body += 1;
            if in_body == RAW_INSERT_ROWS {
                bodies.push(std::mem::take(&mut w.buf));
                in_body = 0;
            }
        }
    }
    if in_body > 0 {
        bodies.push(std::mem::take(&mut w.buf));
    }
    let wire: usize = bodies.iter().map(Vec::len).sum();
    let waited = settle(&[ch.pid()], Duration::from_secs(120));
    let sql = format!(
        "INSERT INTO {db}.records (subscription, stream, ts, source, epoch, seq, line) FORMAT RowBinary"
    );
    let url = format!("{}/", ch.url());
    let events = ch_events(ch);
    let (c0, b0) = (cpu_seconds(ch.pid()), cpu_seconds(std::process::id()));
    let started = Instant::now();
    rt.block_on(async {
        for body in bodies {
            let r = client
                .post(&url)
                .query(&[("query", sql.as_str())])
                .body(body)
                .send()
                .await
                .expect("insert");
            let status = r.status();
            assert_eq!(
                status,
                200,
                "insert: {}",
                r.text().await.unwrap_or_default()
            );
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let (ch_cpu, bench_cpu) = (
        cpu_seconds(ch.pid()) - c0,
        cpu_seconds(std::process::id()) - b0,
    );
    let events = events_delta(&events, &ch_events(ch));
    let stored = ch_u64(ch, &format!("SELECT count() FROM {db}.records"));
    println!(
        "raw ClickHouse insert ({db}.records, RowBinary, {RAW_INSERT_ROWS} rows a request, one at a time): {rows} rows ({:.0} B each in RowBinary, lines {:.0} B) in {secs:.2} s = {:.0} rows/s, {:.1} MiB/s; ClickHouse CPU {ch_cpu:.1} s ({:.2} us/row); client CPU {bench_cpu:.1} s; rows in the table {stored}{}; waited {:.0} s for ClickHouse to idle first",
        wire as f64 / rows as f64,
        line_bytes as f64 / rows as f64,
        rows as f64 / secs,
        mib(wire as f64) / secs,
        ch_cpu / rows as f64 * 1e6,
        if stored == rows as u64 { "" } else { " (MISMATCH)" },
        waited.as_secs_f64()
    );
    println!("  {}", ch_work(&events, rows, false));
}

/// The ingest cases; answers whether every exactly-once check held.
fn ingest_bench(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    ch: &ClickHouse,
    dir: &Path,
    tokens: &Path,
    total: usize,
    coord: usize,
) -> bool {
    let now = schemas::time::now_nanos();
    let encoded = load::encode(total, &|k| now - HOUR + k as i64 * 1000);
    let records = encoded.records;
    println!(
        "ingest load: {records} records ({:.0} B each as MessagePack, {:.1} MiB on the wire zstd) in batches of {}, {} connections",
        encoded.record_bytes(),
        mib(encoded.wire_bytes() as f64),
        load::BATCH_RECORDS,
        load::CONNECTIONS
    );
    let bodies = Arc::new(encoded.bodies);
    let mut ok = true;

    // (a) RocksDB, the baseline.
    let c = Collector::start(rt, client, dir, "ingest-rocks", tokens, &[]);
    let run = run_load(rt, client, &all_to(&c), &bodies, &[&c], ch);
    print_ingest(
        "ingest (a) one collector, RocksDB",
        records,
        &run,
        &format!("{} MiB", c.hwm_mib()),
        false,
        false,
    );
    c.stop();

    // ClickHouse alone.
    raw_insert(rt, client, ch, total, now);

    // (b) One collector on ClickHouse.
    let waited = settle(&[ch.pid()], Duration::from_secs(120));
    let c = Collector::start(
        rt,
        client,
        dir,
        "ingest-ch-one",
        tokens,
        &ch_args(ch, "bench_one"),
    );
    let run = run_load(rt, client, &all_to(&c), &bodies, &[&c], ch);
    print_ingest(
        "ingest (b) one collector, ClickHouse",
        records,
        &run,
        &format!("{} MiB", c.hwm_mib()),
        true,
        true,
    );
    println!(
        "  (waited {:.0} s for ClickHouse to idle before the case)",
        waited.as_secs_f64()
    );
    ok &= verify(rt, client, &[&c], ch, "bench_one", records as u64);
    c.stop();
    let plain = records as f64 / run.elapsed.as_secs_f64();

    // (b2) The same with --coordination: the feed exported.
    if coord > 0 {
        ok &= coordinated_case(rt, client, ch, dir, tokens, &bodies, coord, plain);
    }

    // (c) Two collectors on one ClickHouse database, half the sources each.
    let waited = settle(&[ch.pid()], Duration::from_secs(120));
    let args = ch_args(ch, "bench_two");
    let c1 = Collector::start(rt, client, dir, "ingest-ch-two-1", tokens, &args);
    let c2 = Collector::start(rt, client, dir, "ingest-ch-two-2", tokens, &args);
    let targets: Vec<String> = (0..load::CONNECTIONS)
        .map(|c| {
            if (c as u64 % SOURCES) < SOURCES / 2 {
                c1.url.clone()
            } else {
                c2.url.clone()
            }
        })
        .collect();
    let run = run_load(rt, client, &targets, &bodies, &[&c1, &c2], ch);
    print_ingest(
        "ingest (c) two collectors, one ClickHouse database, sources split",
        records,
        &run,
        &format!("{} + {} MiB", c1.hwm_mib(), c2.hwm_mib()),
        true,
        true,
    );
    println!(
        "  (waited {:.0} s for ClickHouse to idle before the case)",
        waited.as_secs_f64()
    );
    ok &= verify(rt, client, &[&c1, &c2], ch, "bench_two", records as u64);
    c1.stop();
    c2.stop();
    ok
}

/// The value of the sample `name` (no labels) in `c`'s `/metrics`.
fn metric(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    c: &Collector,
    name: &str,
) -> Option<f64> {
    let url = format!("{}/metrics", c.url);
    let text = rt.block_on(async {
        let r = client
            .get(&url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        r.text().await.ok()
    })?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}

/// Case (b2): one collector on ClickHouse with `--coordination` (one
/// member of a fresh ZooKeeper), the first `records` records of the load
/// of (b) (`bodies`); `plain`: (b)'s records/s. After the load: how soon
/// the exporter copied every accepted record into the shared `feed`
/// table, what the table holds, and the exactly-once check. Answers
/// whether the records and the feed are complete.
#[allow(clippy::too_many_arguments)]
fn coordinated_case(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    ch: &ClickHouse,
    dir: &Path,
    tokens: &Path,
    bodies: &Arc<Vec<Vec<u8>>>,
    records: usize,
    plain: f64,
) -> bool {
    const CASE: &str = "ingest (b2) one collector, ClickHouse, --coordination (feed exported)";
    if !Path::new(ZK_SCRIPT).exists() {
        skip(
            CASE,
            "zookeeper is not installed (scripts/setup.sh installs it)",
        );
        return true;
    }
    let full = bodies.len() * load::BATCH_RECORDS;
    let batches = records.div_ceil(load::BATCH_RECORDS).min(bodies.len());
    let records = batches * load::BATCH_RECORDS;
    let bodies = if batches == bodies.len() {
        bodies.clone()
    } else {
        Arc::new(bodies[..batches].to_vec())
    };
    let zk = ZooKeeper::start().unwrap_or_else(|e| panic!("zookeeper did not start: {e}"));
    let db = "bench_coord";
    let waited = settle(&[ch.pid()], Duration::from_secs(120));
    let mut args = ch_args(ch, db);
    args.extend(
        [
            "--coordination",
            &format!("zookeeper://{}/sesam-bench", zk.address()),
            "--member-id",
            "c0",
            "--coordination-session-timeout",
            "2s",
        ]
        .map(String::from),
    );
    let c = Collector::start(rt, client, dir, "ingest-ch-coord", tokens, &args);
    // The only member owns the subscription (and so pulls the feed back
    // during the load, as an owner does).
    let joined = Instant::now();
    while metric(rt, client, &c, "coordinated_owned_subscriptions") != Some(1.0) {
        assert!(
            joined.elapsed() < Duration::from_secs(60),
            "{CASE}: the collector did not take its subscription in 60 s:\n{}",
            c.proc.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let owned_after = joined.elapsed();
    let exported =
        || metric(rt, client, &c, "coordinated_feed_exported_records_total").unwrap_or(0.0) as u64;
    let pulled =
        || metric(rt, client, &c, "coordinated_feed_pulled_records_total").unwrap_or(0.0) as u64;
    let run = run_load(rt, client, &all_to(&c), &bodies, &[&c], ch);
    // The exporter's lag: what it had copied when the last batch was
    // acknowledged, and when it had all of it.
    let ended = Instant::now();
    let (c0, h0) = (cpu_seconds(c.pid()), cpu_seconds(ch.pid()));
    let (at_end, pulled_at_end) = (exported(), pulled());
    let events = ch_events(ch);
    let total = records as u64;
    let mut caught_up = None;
    let mut pulled_all = None;
    while ended.elapsed() < EXPORT_CATCH_UP && (caught_up.is_none() || pulled_all.is_none()) {
        if caught_up.is_none() && exported() >= total {
            caught_up = Some(ended.elapsed());
        }
        if pulled_all.is_none() && pulled() >= total {
            pulled_all = Some(ended.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let drain = ended.elapsed();
    let (c1, h1) = (cpu_seconds(c.pid()), cpu_seconds(ch.pid()));
    let drain_events = events_delta(&events, &ch_events(ch));
    let (exported_n, pulled_n) = (exported(), pulled());
    let errors = metric(rt, client, &c, "coordinated_errors_total").unwrap_or(0.0);
    print_ingest(
        CASE,
        records,
        &run,
        &format!("{} MiB", c.hwm_mib()),
        true,
        false,
    );
    let secs = run.elapsed.as_secs_f64();
    println!(
        "  {:.0} records/s = {:.2} x (b)'s {plain:.0} records/s{}; ZooKeeper {} (own ZooKeeper, member c0, session timeout 2 s; the subscription owned {:.1} s after ready); waited {:.0} s for ClickHouse to idle before the case",
        records as f64 / secs,
        records as f64 / secs / plain,
        if records < full {
            format!(" (of {full} records; this case sends the first {records})")
        } else {
            String::new()
        },
        zk.address(),
        owned_after.as_secs_f64(),
        waited.as_secs_f64()
    );
    let ms = |d: Option<Duration>| {
        d.map_or_else(
            || format!("NOT within {:.0} s", EXPORT_CATCH_UP.as_secs_f64()),
            |d| format!("{:.2} s", d.as_secs_f64()),
        )
    };
    let kept_up = caught_up.is_some_and(|d| d <= Duration::from_secs(5));
    println!(
        "  exporter: {at_end} of {total} records in the feed when the load ended ({} behind); all of them {} after the load; kept up (all within 5 s): {}",
        total.saturating_sub(at_end),
        ms(caught_up),
        if kept_up { "yes" } else { "NO" },
    );
    println!(
        "  owner's pull: {pulled_at_end} of {total} pulled back when the load ended; all of them {} after the load; coordinated_errors_total {errors}",
        ms(pulled_all),
    );
    println!(
        "  over those {:.1} s after the load: collector CPU {:.1} s, ClickHouse CPU {:.1} s; {}",
        drain.as_secs_f64(),
        c1 - c0,
        h1 - h0,
        ch_work(&drain_events, records, false)
    );
    println!("  {db}: {}", ch_store_size(ch, db));
    // Nothing more to export or pull: what the owner's polling of the
    // feed costs ClickHouse with this feed.
    let events = ch_events(ch);
    let (c0, h0) = (cpu_seconds(c.pid()), cpu_seconds(ch.pid()));
    std::thread::sleep(IDLE);
    println!(
        "  idle {:.0} s afterwards (no load; the owner polling the feed): collector CPU {:.1} s, ClickHouse CPU {:.1} s, {} selects",
        IDLE.as_secs_f64(),
        cpu_seconds(c.pid()) - c0,
        cpu_seconds(ch.pid()) - h0,
        events_delta(&events, &ch_events(ch))
            .get("SelectQuery")
            .copied()
            .unwrap_or(0)
    );
    let rows = ch_u64(
        ch,
        &format!("SELECT count() FROM {db}.feed WHERE subscription = '{SUB}'"),
    );
    let keys = ch_u64(
        ch,
        &format!(
            "SELECT count() FROM (SELECT 1 FROM {db}.feed WHERE subscription = '{SUB}' \
             LIMIT 1 BY writer, wseq, widx)"
        ),
    );
    let feed_ok = exported_n == total && keys == total;
    println!(
        "  feed table ({db}.feed): {rows} rows, {keys} distinct (writer, wseq, widx), records sent {total}; coordinated_feed_exported_records_total {exported_n}, coordinated_feed_pulled_records_total {pulled_n}: {}",
        if feed_ok { "OK" } else { "MISMATCH" }
    );
    let ok = verify(rt, client, &[&c], ch, db, total);
    c.stop();
    drop(zk);
    ok && feed_ok
}

/// The store's size in ClickHouse: (bytes on disk, uncompressed bytes,
/// rows) of `db`'s active parts, and the same per table.
fn ch_store_size(ch: &ClickHouse, db: &str) -> String {
    let per_table = |disk: &str| {
        ch.query(&format!(
            "SELECT table, sum({disk}), sum(data_uncompressed_bytes), sum(rows) \
             FROM system.parts WHERE database = '{db}' AND active \
             GROUP BY table ORDER BY table"
        ))
    };
    // `bytes_on_disk` is `bytes` on old servers.
    let text = per_table("bytes_on_disk")
        .or_else(|_| per_table("bytes"))
        .unwrap_or_else(|e| panic!("system.parts: {e}"));
    let mut total = 0.0;
    let mut parts = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        total += n(1);
        parts.push(format!(
            "{} {:.1} MiB ({:.1} MiB uncompressed, {} rows)",
            f[0],
            mib(n(1)),
            mib(n(2)),
            n(3)
        ));
    }
    format!("{:.1} MiB on disk: {}", mib(total), parts.join(", "))
}

/// Bytes allocated on disk under `path` (as `du`).
fn dir_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// The searches over HTTP against `c`; `records` and `line_bytes`: what
/// the store holds (a full scan reads all of it).
fn search_queries(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    c: &Collector,
    backend: &str,
    now: i64,
    records: u64,
    line_bytes: u64,
) {
    let token = testkit::tokens::operator(SUB);
    let url = format!("{}/api/v1/logs", c.url);
    let ask = |query: String, start: i64, end: i64| {
        get_json(
            rt,
            client,
            &url,
            &[
                ("query", query),
                ("start", start.to_string()),
                ("end", end.to_string()),
                ("limit", "100".to_string()),
            ],
            &token,
        )
    };
    // Selective: one pipe, one hour, a line filter; 50 different pipes and
    // hours.
    let mut times = Vec::new();
    let mut hits = 0;
    for i in 0..50i64 {
        let end = now - (i % 23) * HOUR;
        let (t, v) = ask(
            format!(r#"{{pipe="pipe-{}"}} |= "timeout""#, i % load::PIPES as i64),
            end - HOUR,
            end,
        );
        times.push(t);
        hits += v["records"].as_array().map_or(0, Vec::len);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let p50 = times[times.len() / 2];
    println!(
        "search {backend}, selective ({{pipe=\"pipe-N\"}} |= \"timeout\", 1 h, limit 100; 50 runs over HTTP): p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms, {:.1} hits/query{}",
        ms(p50),
        ms(times[times.len() * 9 / 10]),
        ms(times[times.len() - 1]),
        hits as f64 / times.len() as f64,
        if records >= 10_000_000 {
            if ms(p50) < 100.0 {
                " (goal p50 < 100 ms: met)"
            } else {
                " (goal p50 < 100 ms: MISSED)"
            }
        } else {
            ""
        }
    );
    // Full scan: an absent token over everything.
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (t, v) = ask(
            r#"{subscription="bench"} |= "needle-not-present""#.to_string(),
            now - 25 * HOUR,
            now + 1,
        );
        runs.push((
            t,
            v["stats"].clone(),
            v["records"].as_array().map_or(0, Vec::len),
        ));
    }
    runs.sort_by_key(|r| r.0);
    let (best, stats, found) = &runs[0];
    let secs = best.as_secs_f64();
    println!(
        "search {backend}, full scan ({{subscription=\"bench\"}} |= \"needle-not-present\", 25 h, limit 100; best of 2 over HTTP): {secs:.2} s (runs {:?} ms) over {records} records, {:.0} MiB of lines = {:.0} records/s, {:.0} MiB/s; {found} hits; the answer's stats: scanned_records {}, scanned_bytes {}",
        runs.iter().map(|r| r.0.as_millis()).collect::<Vec<_>>(),
        mib(line_bytes as f64),
        records as f64 / secs,
        mib(line_bytes as f64) / secs,
        stats["scanned_records"],
        stats["scanned_bytes"],
    );
}

fn search_bench(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    ch: &ClickHouse,
    dir: &Path,
    tokens: &Path,
    total: usize,
) -> bool {
    let compare_rocks = env_usize("BENCH_CH_COMPARE_ROCKS", usize::from(total <= 2_000_000)) != 0;
    let now = schemas::time::now_nanos();
    let span = 24 * HOUR;
    let step = span / total as i64;
    let t = Instant::now();
    let encoded = load::encode(total, &|k| now - span + k as i64 * step);
    let records = encoded.records;
    println!(
        "search store load: {records} records over the last 24 h, {} sources, {} pipes ({:.1} MiB zstd on the wire, encoded in {:.1} s); collector flags {}",
        SOURCES,
        load::PIPES,
        mib(encoded.wire_bytes() as f64),
        t.elapsed().as_secs_f64(),
        SEARCH_FLAGS.join(" ")
    );
    let bodies = Arc::new(encoded.bodies);
    let flags: Vec<String> = SEARCH_FLAGS.iter().map(|s| s.to_string()).collect();

    let db = "bench_search";
    let waited = settle(&[ch.pid()], Duration::from_secs(120));
    let mut args = ch_args(ch, db);
    args.extend(flags.iter().cloned());
    let c = Collector::start(rt, client, dir, "search-ch", tokens, &args);
    let run = run_load(rt, client, &all_to(&c), &bodies, &[&c], ch);
    print_ingest(
        "search store ingest, one collector, ClickHouse",
        records,
        &run,
        &format!("{} MiB", c.hwm_mib()),
        true,
        true,
    );
    println!(
        "  (waited {:.0} s for ClickHouse to idle before the case)",
        waited.as_secs_f64()
    );
    let ok = verify(rt, client, &[&c], ch, db, records as u64);
    let waited = settle(&[ch.pid(), c.pid()], Duration::from_secs(300));
    let line_bytes = ch_u64(ch, &format!("SELECT sum(length(line)) FROM {db}.records"));
    let parts = ch_u64(
        ch,
        &format!("SELECT count() FROM system.parts WHERE database = '{db}' AND table = 'records' AND active"),
    );
    println!(
        "search store, ClickHouse: {} ({parts} active parts of records; {:.0} B of line per record; merges settled {:.0} s after the load)",
        ch_store_size(ch, db),
        line_bytes as f64 / records as f64,
        waited.as_secs_f64()
    );
    search_queries(
        rt,
        client,
        &c,
        "ClickHouse",
        now,
        records as u64,
        line_bytes,
    );
    c.stop();

    if compare_rocks {
        let c = Collector::start(rt, client, dir, "search-rocks", tokens, &flags);
        let run = run_load(rt, client, &all_to(&c), &bodies, &[&c], ch);
        print_ingest(
            "search store ingest, one collector, RocksDB",
            records,
            &run,
            &format!("{} MiB", c.hwm_mib()),
            false,
            false,
        );
        let waited = settle(&[c.pid()], Duration::from_secs(300));
        println!(
            "search store, RocksDB: {:.1} MiB on disk (the data dir, {:.0} s after the load)",
            mib(dir_bytes(&c.data) as f64),
            waited.as_secs_f64()
        );
        search_queries(rt, client, &c, "RocksDB", now, records as u64, line_bytes);
        c.stop();
    }
    ok
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    machine("start");
    let tmp;
    let dir = match std::env::var("BENCH_DIR") {
        Ok(d) => {
            std::fs::create_dir_all(&d).expect("create BENCH_DIR");
            PathBuf::from(d)
        }
        Err(_) => {
            tmp = tempfile::tempdir().expect("tempdir");
            tmp.path().to_path_buf()
        }
    };
    let ingest = env_usize("BENCH_CH_INGEST_RECORDS", 1_000_000);
    let coord = env_usize("BENCH_CH_COORD_RECORDS", ingest);
    let search = env_usize("BENCH_CH_SEARCH_RECORDS", 10_000_000);
    let tokens = testkit::tokens::write(&dir.join("tokens.toml"), &[SUB]);
    // Two workers, as the ingest bench's load generator.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::new();
    let ch = ClickHouse::start(ClickHouseOptions::default())
        .unwrap_or_else(|e| panic!("clickhouse-server did not start: {e}"));
    println!(
        "ClickHouse {} (pid {}, {}); collector {}",
        ch_query(&ch, "SELECT version()"),
        ch.pid(),
        ch.url(),
        collector_bin().display()
    );
    let started = Instant::now();
    let mut ok = true;
    if ingest > 0 {
        ok &= ingest_bench(&rt, &client, &ch, &dir, &tokens, ingest, coord);
    }
    if search > 0 {
        ok &= search_bench(&rt, &client, &ch, &dir, &tokens, search);
    }
    // What a run leaves: parts replaced by merges stay on disk for 8
    // minutes (ClickHouse's `old_parts_lifetime`), each part a directory of
    // a few files per column.
    let parts = ch_query(
        &ch,
        "SELECT active, count(), sum(rows) FROM system.parts \
         WHERE database LIKE 'bench%' GROUP BY active ORDER BY active DESC",
    );
    println!(
        "ClickHouse parts at the end (active, parts, rows): {}",
        parts.replace('\t', " ").replace('\n', "; ")
    );
    println!("bench took {:.0} s", started.elapsed().as_secs_f64());
    machine("end");
    println!(
        "(removing ClickHouse's data dir: hundreds of thousands of files, minutes on a slow disk)"
    );
    drop(ch);
    assert!(ok, "an exactly-once check failed (MISMATCH above)");
}

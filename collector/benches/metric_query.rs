//! Metric query benchmark: Grafana's log-volume histogram
//! `sum by (level) (count_over_time({subscription="bench"}[1m]))` over 24 h
//! at a 1-minute step, on a store of `BENCH_METRIC_RECORDS` (default
//! 10,000,000) records spread over the 24 h (4 sources, 3 levels, 2 kinds:
//! 24 streams).
//!
//! `cargo bench -p collector --bench metric_query`. Measured in one run:
//! - the histogram at aligned times (answered from the volume index);
//! - the same query shifted by 1 s (not aligned to the 10 s buckets: it
//!   reads every record's key and line once, the scan path), the baseline
//!   of the same run;
//! - `sum by (level) (count_over_time({...} |= "timeout" [1m]))` (a line
//!   filter always scans, with whatever the skip index rules out).
//!
//! Both paths must agree: the bench checks that the aligned answer's
//! total equals the record count. `BENCH_DIR` keeps the store between
//! runs (default a temp dir).

use std::path::Path;
use std::time::{Duration, Instant};

use collector::logs::ingest::{prepare, DecodedBatch, IngestLimits};
use collector::logs::query::metric::{evaluate, MetricParams};
use collector::logs::query::{parse_expr_with, Expr, QueryLimits};
use collector::telemetry::Metrics;
use collector::{Store, StoreConfig};
use schemas::{Body, EventType, ExecutionBody, Level, LogBody, Record};
use testkit::env_usize;

const SUB: &str = "bench";
const SOURCES: u64 = 4;
const MIN: i64 = 60_000_000_000;

fn record(source: u64, seq: u64, ts: i64) -> Record {
    let pipe = format!("pipe-{}", (seq * 7 + source) % 50);
    let body = if seq % 5 < 3 {
        let event = if seq.is_multiple_of(20) {
            EventType::PumpFailed
        } else {
            EventType::PumpCompleted
        };
        let mut b = ExecutionBody::new(pipe, event);
        b.run_id = Some(format!("run-{source}-{seq}"));
        if event == EventType::PumpFailed {
            b.original_error_message = Some("read timeout from upstream system".into());
        }
        Body::Execution(Box::new(b))
    } else {
        Body::Log(LogBody {
            level: if seq % 10 == 3 {
                Level::Warn
            } else {
                Level::Info
            },
            target: "sesam_node::pump::runner".into(),
            message: format!("pipe {pipe} processed batch {seq} of entities; next run scheduled"),
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

fn build(path: &Path, total: usize, start: i64, span: i64) -> Store {
    let store = Store::open(path, StoreConfig::default(), Metrics::default(), Vec::new())
        .expect("open store");
    if !store.streams().is_empty() {
        println!("store: reusing {}", path.display());
        return store;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let per_batch = 5000usize;
    let t = Instant::now();
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
                        start + 1 + k * (span / total as i64),
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
                start + span,
                start - 1,
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
        "store: wrote {total} records over 24 h in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    store
}

/// p50 and max of `runs` evaluations, and the last answer's total.
fn time(
    store: &Store,
    text: &str,
    start: i64,
    end: i64,
    runs: usize,
) -> (Duration, Duration, f64, usize, usize) {
    let Expr::Metric(expr) = parse_expr_with(text, &QueryLimits::default()).expect("parse") else {
        panic!("{text} is a metric query");
    };
    let mut times = Vec::new();
    let mut total = 0.0;
    let (mut series, mut from_index) = (0, 0);
    for _ in 0..runs {
        let p = MetricParams {
            start,
            end,
            step: MIN,
            subscription: Some(SUB.into()),
            deadline: Instant::now() + Duration::from_secs(600),
            max_scanned_bytes: u64::MAX,
            max_series: 1000,
        };
        let t = Instant::now();
        let r = evaluate(store, &expr, &p).expect("evaluate");
        times.push(t.elapsed());
        // Steps 1 minute apart with [1m] ranges partition the time: the
        // sum over every point counts each record in the range once.
        total = r
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|x| x.1))
            .sum();
        series = r.series.len();
        from_index = r.from_index;
    }
    times.sort();
    (
        times[times.len() / 2],
        times[times.len() - 1],
        total,
        series,
        from_index,
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let total = env_usize("BENCH_METRIC_RECORDS", 10_000_000);
    let runs = env_usize("BENCH_METRIC_RUNS", 11);
    let dir = match std::env::var("BENCH_DIR") {
        Ok(d) => std::path::PathBuf::from(d),
        Err(_) => tempfile::tempdir().expect("tempdir").keep(),
    };
    // A fixed day, aligned to the minute, so a kept store is reused.
    let start = 1_790_000_000_000_000_000i64 / MIN * MIN;
    let span = 24 * 60 * MIN;
    let store = build(&dir.join(format!("metric-{total}")), total, start, span);
    println!("store: {} streams", store.streams().len());
    let q = r#"sum by (level) (count_over_time({subscription="bench"}[1m]))"#;
    // Steps start + 1m ... start + 24h hold every record once.
    let (p50, max, sum, series, idx) = time(&store, q, start + MIN, start + span, runs);
    println!(
        "histogram {q}, 24 h at 1 m step (1,440 points), aligned (volume index): p50 {:.1} ms, max {:.1} ms over {runs} runs; {series} series, {idx} streams from the index, total {sum} (records {total})",
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    assert_eq!(
        sum as usize, total,
        "the histogram counts every record once"
    );
    let scan_runs = runs.min(3);
    let (p50s, maxs, sums, _, idxs) = time(
        &store,
        q,
        start + MIN + 1_000_000_000,
        start + span + 1_000_000_000,
        scan_runs,
    );
    println!(
        "the same shifted by 1 s (scan path, baseline): p50 {:.1} ms, max {:.1} ms over {scan_runs} runs; {idxs} streams from the index; total {sums}; index speedup {:.0}x",
        p50s.as_secs_f64() * 1e3,
        maxs.as_secs_f64() * 1e3,
        p50s.as_secs_f64() / p50.as_secs_f64()
    );
    let qf = r#"sum by (level) (count_over_time({subscription="bench"} |= "timeout" [1m]))"#;
    let (p50f, maxf, sumf, _, _) = time(&store, qf, start + MIN, start + span, scan_runs);
    println!(
        "{qf}, 24 h at 1 m: p50 {:.1} ms, max {:.1} ms over {scan_runs} runs; total {sumf}",
        p50f.as_secs_f64() * 1e3,
        maxf.as_secs_f64() * 1e3
    );
}

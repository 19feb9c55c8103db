//! Metric queries against a direct computation over the same records, on
//! the real RocksDB store: random record sets (late arrivals, several
//! sources and levels), random start / step / range (aligned to the volume
//! index's buckets or not), every range function and aggregation.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use schemas::{Body, Level, LogBody, Record};

use super::*;
use crate::logs::ingest::{prepare, DecodedBatch, IngestLimits};
use crate::logs::labels::{record_labels, record_line};
use crate::logs::query::parse_expr_with;
use crate::logs::query::{Expr, QueryLimits};
use crate::logs::rocks::{Store, StoreConfig};
use crate::telemetry::Metrics;

const S: i64 = 1_000_000_000;

fn record(source: &str, seq: u64, ts: i64, level: Level, n: i64, word: &str) -> Record {
    let mut fields = serde_json::Map::new();
    fields.insert("n".into(), serde_json::json!(n));
    Record {
        seq,
        ts,
        source: source.into(),
        subscription: "a".into(),
        body: Body::Log(LogBody {
            level,
            target: "t".into(),
            message: format!("{word} message {seq}"),
            fields: fields.into_iter().collect(),
        }),
    }
}

async fn store_with(dir: &std::path::Path, records: &[Record]) -> Store {
    let store =
        Store::open(dir, StoreConfig::default(), Metrics::default(), Vec::new()).expect("open");
    // One batch per source, in several slices (late records land between
    // earlier ones).
    let mut by_source: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for r in records {
        by_source
            .entry(r.source.clone())
            .or_default()
            .push(r.clone());
    }
    for (source, recs) in by_source {
        for chunk in recs.chunks(97) {
            let batch = prepare(
                DecodedBatch {
                    source: source.clone(),
                    subscription: "a".into(),
                    epoch: String::new(),
                    records: chunk.to_vec(),
                    dropped: 0,
                },
                &IngestLimits::default(),
                i64::MAX / 2,
                0,
                false,
            )
            .expect("valid");
            store.ingest(batch).await.expect("ingest");
        }
    }
    store
}

/// A series' labels and (time, value) points.
type Points = (BTreeMap<String, String>, Vec<(i64, f64)>);

/// The query's answer computed directly from the records.
#[allow(clippy::too_many_arguments)]
fn expected(
    records: &[Record],
    func: &str,
    word: Option<&str>,
    group: Option<&str>,
    range: i64,
    start: i64,
    end: i64,
    step: i64,
) -> Vec<Points> {
    // Series: a stream's labels, or the group's.
    let mut out: BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>> = BTreeMap::new();
    let mut t = start;
    while t <= end {
        let mut per: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for r in records {
            if !(r.ts > t - range && r.ts <= t) {
                continue;
            }
            let line = record_line(r).expect("line");
            if let Some(w) = word {
                if !String::from_utf8_lossy(&line).contains(w) {
                    continue;
                }
            }
            let labels = record_labels(r);
            let key = match group {
                None => labels,
                Some(g) => labels.into_iter().filter(|(k, _)| k == g).collect(),
            };
            let n = match &r.body {
                Body::Log(b) => b.fields.get("n").and_then(|v| v.as_f64()).unwrap_or(0.0),
                _ => 0.0,
            };
            per.entry(key).or_default().push((line.len() as f64, n));
        }
        for (k, xs) in per {
            let c = xs.len() as f64;
            let secs = range as f64 / 1e9;
            let v = match func {
                "count_over_time" => c,
                "rate" => c / secs,
                "bytes_over_time" => xs.iter().map(|x| x.0).sum(),
                "bytes_rate" => xs.iter().map(|x| x.0).sum::<f64>() / secs,
                "sum_over_time" => xs.iter().map(|x| x.1).sum(),
                "max_over_time" => xs.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max),
                other => panic!("{other}"),
            };
            out.entry(k).or_default().push((t, v));
        }
        t += step;
    }
    out.into_iter().collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test]
async fn metric_queries_equal_a_direct_computation() {
    let mut rng = StdRng::seed_from_u64(0x5e5a);
    let levels = [Level::Info, Level::Warn, Level::Error];
    let words = ["alpha", "beta", "gamma"];
    let mut compared = 0;
    for case in 0..12 {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = 1_700_000_000 * S;
        let n = rng.random_range(50..400u64);
        let records: Vec<Record> = (1..=n)
            .map(|seq| {
                let source = format!("s{}", rng.random_range(0..3));
                // Whole-second, millisecond and bucket-edge times.
                let ts = base
                    + match rng.random_range(0..3) {
                        0 => rng.random_range(0..300i64) * S,
                        1 => rng.random_range(0..300_000i64) * 1_000_000,
                        _ => rng.random_range(0..30i64) * 10 * S,
                    };
                record(
                    &source,
                    seq,
                    ts,
                    levels[rng.random_range(0..3)],
                    rng.random_range(-50..50),
                    words[rng.random_range(0..3)],
                )
            })
            .collect();
        let store = store_with(dir.path(), &records).await;
        for q in 0..10 {
            let aligned = rng.random_bool(0.5);
            let (start, step, range) = if aligned {
                (
                    base + rng.random_range(0..10i64) * 10 * S,
                    rng.random_range(1..4i64) * 10 * S,
                    rng.random_range(1..7i64) * 10 * S,
                )
            } else {
                (
                    base + rng.random_range(0..100_000i64) * 1_000_000,
                    rng.random_range(1..60i64) * S + rng.random_range(0..1000i64) * 1_000_000,
                    rng.random_range(1..90i64) * S + rng.random_range(0..3i64) * 1_000_000,
                )
            };
            let end = start + rng.random_range(0..40i64) * step + rng.random_range(0..step);
            let func = [
                "count_over_time",
                "rate",
                "bytes_over_time",
                "bytes_rate",
                "sum_over_time",
                "max_over_time",
            ][rng.random_range(0..6)];
            let word = rng.random_bool(0.3).then(|| words[rng.random_range(0..3)]);
            let group = rng.random_bool(0.5).then_some("level");
            let filter = word.map(|w| format!(" |= \"{w}\"")).unwrap_or_default();
            let unwrap = if func.ends_with("_over_time")
                && func != "count_over_time"
                && func != "bytes_over_time"
            {
                " | json | unwrap fields_n"
            } else {
                ""
            };
            let inner = format!(
                "{func}({{subscription=\"a\"}}{filter}{unwrap} [{}ms])",
                range / 1_000_000
            );
            // With | json every record is its own series: always group.
            let group = if unwrap.is_empty() {
                group
            } else {
                Some(group.unwrap_or("level"))
            };
            let agg_fn = if func == "max_over_time" {
                "max"
            } else {
                "sum"
            };
            let text = match group {
                None => inner,
                Some(g) => format!("{agg_fn} by ({g}) ({inner})"),
            };
            let Expr::Metric(expr) = parse_expr_with(&text, &QueryLimits::default()).expect(&text)
            else {
                panic!("{text} is a metric query");
            };
            let p = MetricParams {
                start,
                end,
                step,
                subscription: Some("a".into()),
                deadline: Instant::now() + Duration::from_secs(60),
                max_scanned_bytes: u64::MAX,
                max_series: 100_000,
            };
            let got = evaluate(&store, &expr, &p).expect("evaluate");
            let want = expected(&records, func, word, group, range, start, end, step);
            let ctx = format!("case {case} query {q}: {text} start {start} end {end} step {step}");
            assert_eq!(
                got.series.len(),
                want.len(),
                "{ctx}: series {:?}",
                got.series.iter().map(|s| &s.labels).collect::<Vec<_>>()
            );
            for (g, (labels, points)) in got.series.iter().zip(&want) {
                assert_eq!(&g.labels, labels, "{ctx}");
                assert_eq!(g.points.len(), points.len(), "{ctx}: {labels:?}");
                for ((t1, v1), (t2, v2)) in g.points.iter().zip(points) {
                    assert_eq!(t1, t2, "{ctx}");
                    assert!(
                        close(*v1, *v2),
                        "{ctx}: {labels:?} at {t1}: got {v1}, want {v2}"
                    );
                    compared += 1;
                }
            }
        }
    }
    assert!(compared > 500, "only {compared} points compared");
}

#[tokio::test]
async fn topk_bottomk_count_avg_and_series_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = 1_700_000_000 * S;
    // Source s0: 1 record, s1: 2, s2: 3, all at the same second.
    let mut records = Vec::new();
    let mut seq = 0;
    for src in 0..3 {
        for _ in 0..=src {
            seq += 1;
            records.push(record(
                &format!("s{src}"),
                seq,
                base + S,
                Level::Info,
                1,
                "alpha",
            ));
        }
    }
    let store = store_with(dir.path(), &records).await;
    let p = MetricParams {
        start: base + S,
        end: base + S,
        step: S,
        subscription: Some("a".into()),
        deadline: Instant::now() + Duration::from_secs(60),
        max_scanned_bytes: u64::MAX,
        max_series: 100,
    };
    let run = |text: &str, p: &MetricParams| {
        let Expr::Metric(e) = parse_expr_with(text, &QueryLimits::default()).expect(text) else {
            panic!("metric");
        };
        evaluate(&store, &e, p)
    };
    let values = |r: MetricResult| -> Vec<(Option<String>, f64)> {
        r.series
            .iter()
            .map(|s| (s.labels.get("source").cloned(), s.points[0].1))
            .collect()
    };
    let q = r#"count_over_time({subscription="a"}[1m])"#;
    assert_eq!(
        values(run(&format!("topk(2, {q})"), &p).expect("topk")),
        vec![(Some("s1".into()), 2.0), (Some("s2".into()), 3.0)]
    );
    assert_eq!(
        values(run(&format!("bottomk(1, {q})"), &p).expect("bottomk")),
        vec![(Some("s0".into()), 1.0)]
    );
    assert_eq!(
        values(run(&format!("count({q})"), &p).expect("count")),
        vec![(None, 3.0)]
    );
    assert_eq!(
        values(run(&format!("avg({q})"), &p).expect("avg")),
        vec![(None, 2.0)]
    );
    assert_eq!(
        values(run(&format!("max without (source) ({q})"), &p).expect("max")),
        vec![(None, 3.0)]
    );
    assert_eq!(
        values(run(&format!("min({q})"), &p).expect("min")),
        vec![(None, 1.0)]
    );
    let tight = MetricParams {
        max_series: 2,
        ..p.clone()
    };
    assert!(matches!(run(q, &tight), Err(SearchError::TooManySeries(2))));
    let small = MetricParams {
        max_scanned_bytes: 10,
        ..p.clone()
    };
    assert!(matches!(
        run(r#"count_over_time({subscription="a"} |= "x" [1m])"#, &small),
        Err(SearchError::ScanLimit(10))
    ));
    // Another subscription sees nothing.
    let other = MetricParams {
        subscription: Some("b".into()),
        ..p.clone()
    };
    assert!(run(q, &other).expect("other").series.is_empty());
}

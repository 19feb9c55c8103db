//! Console benchmark: the server time of each page of the operator console
//! (`/ui/`) over a store of `BENCH_CONSOLE_RECORDS` (default 1,000,000)
//! records, p50 and p99; goal: every page's p99 under 100 ms on 2 cores.
//!
//! `cargo bench -p collector --bench console` (release profile). The real
//! `sesam-collector` binary (default flags, notifier on, loopback webhooks
//! allowed) is started on a free loopback port with a fresh data dir under
//! `BENCH_DIR` (default a temp dir). Before the records, a webhook
//! receiver (served by this process), six notification rules and a
//! silence are created over the API; then the records are POSTed as the
//! shipper sends them (zstd MessagePack batches of 1,000, 8 connections),
//! which times the ingest (a baseline of the run). The records: one
//! subscription, 4 sources with 50 pipes each (200 pipes), spread evenly
//! over the 50 minutes before the start; `BENCH_CONSOLE_EXEC_PERCENT`
//! (default 20) % are execution events (runs of the pipes: `pump-started`
//! then `pump-completed` or `pump-failed`; ~5% of runs fail, and one
//! `crm-person` pipe per source fails every run), the rest service log
//! lines (2% ERROR, 8% WARN, 5% DEBUG, 85% INFO). Once the collector is
//! idle again (notifier caught up, compactions done), the bench signs in
//! (`POST /ui/login`) and sends the session cookie, as the browser does.
//!
//! A page's server time is the time of the requests its script
//! (`collector/src/http/ui/console.js`, `manage.js`) makes, each from
//! sending the request to its answer's last byte, with keep-alive
//! connections: one after the other where the script waits for one
//! answer before the next request, at once where it makes them together
//! (`Promise.all`: the page's time is then the group's, to its last
//! answer). The browser's parsing and drawing are not measured. Pages:
//! - search, `{}` over the last hour (every record): `GET /ui/`, then the
//!   search (`limit=1000`) and the histogram at once, at console.js's step
//!   (60 s for an hour) with its steps on the step grid, as console.js
//!   sends them;
//! - search, selective (`{kind="execution", level="ERROR"}`): the same;
//! - pipes (`GET /api/v1/pipes?since=24h`); a pipe (its runs, its
//!   execution records and its rules at once; a different pipe every
//!   time); alerts (alerts and silences at once); rules (rules and
//!   receivers at once, then the new-rule form's rule types);
//!   notifications (`limit=200`); sources;
//! - outside the goal: the `{}` histogram alone;
//! - baseline: `GET /healthz`.
//!
//! Every request of every page is checked once before and once after the
//! measurement (status 200 and its content: 1,000 records, the histogram's
//! total equal to the records in its range, 200 pipes, ...); every measured
//! request must answer 200. Pages run interleaved, `BENCH_CONSOLE_ITERS`
//! (default 200) times each, the slow ones (the search pages, the pipes
//! page, the histogram alone) `BENCH_CONSOLE_SLOW_ITERS` (default 100) times
//! spread among them, after 3 rounds of warm-up: the whole measurement
//! must end within ~10 minutes of the ingest, while the searched hour
//! still holds every record. Prints one table; BENCHMARKS.md records it.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Router;
use reqwest::{Client, Url};
use schemas::{Body, EventType, ExecutionBody, IngestBatch, Level, LogBody, Record};
use serde_json::{json, Value};
use testkit::{env_usize, Proc};

const SUB: &str = "bench";
const SOURCES: u64 = 4;
const PIPES_PER_SOURCE: u64 = 50;
const FAMILIES: [&str; 5] = [
    "crm-person",
    "erp-order",
    "hr-employee",
    "shop-product",
    "sap-material",
];
/// The pipe (index within its source) that fails every run: a
/// `crm-person` pipe.
const BROKEN: u64 = 5;
const SEC: i64 = 1_000_000_000;
/// The records are spread over this long before the start.
const SPAN: i64 = 50 * 60 * SEC;
const BATCH: usize = 1000;
/// The goal: every page's p99, ms.
const GOAL_MS: f64 = 100.0;
const SELECTIVE: &str = r#"{kind="execution", level="ERROR"}"#;

fn pipe_name(source: u64, i: u64) -> String {
    format!(
        "{}-{}",
        FAMILIES[(i % FAMILIES.len() as u64) as usize],
        source * PIPES_PER_SOURCE + i
    )
}

/// The records, in time order; each batch is one source's.
struct Gen {
    first_ts: i64,
    gap: i64,
    exec_percent: u64,
    seq: [u64; SOURCES as usize],
    exec: [u64; SOURCES as usize],
    /// Every record's time, ascending.
    all_ts: Vec<i64>,
    /// The times of the execution records with level ERROR (`pump-failed`).
    error_exec_ts: Vec<i64>,
}

impl Gen {
    fn new(total: usize, now: i64, exec_percent: u64) -> Gen {
        let gap = (SPAN / total.max(1) as i64).max(1);
        Gen {
            first_ts: now - SPAN,
            gap,
            exec_percent,
            seq: [0; SOURCES as usize],
            exec: [0; SOURCES as usize],
            all_ts: Vec::with_capacity(total),
            error_exec_ts: Vec::new(),
        }
    }

    fn record(&mut self, source: u64, k: usize) -> Record {
        let s = source as usize;
        self.seq[s] += 1;
        let seq = self.seq[s];
        let ts = self.first_ts + k as i64 * self.gap;
        self.all_ts.push(ts);
        let h = (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20;
        let body = if h % 100 < self.exec_percent {
            let e = self.exec[s];
            self.exec[s] += 1;
            let run = e / 2;
            let i = run % PIPES_PER_SOURCE;
            let m = run / PIPES_PER_SOURCE;
            let pipe = pipe_name(source, i);
            let family = FAMILIES[(i % FAMILIES.len() as u64) as usize];
            let event = if e.is_multiple_of(2) {
                EventType::PumpStarted
            } else if i == BROKEN || (m + i * 3).is_multiple_of(20) {
                EventType::PumpFailed
            } else {
                EventType::PumpCompleted
            };
            let mut b = ExecutionBody::new(pipe.clone(), event);
            b.run_id = Some(format!("{pipe}-run-{m}"));
            match event {
                EventType::PumpCompleted => {
                    b.metrics.changes_last_run = Some((m * 37 + i) % 1200);
                    b.metrics.entities_last_run = Some((m * 101 + i) % 5000);
                    b.total_time = Some(0.5 + (m % 40) as f64 / 10.0);
                }
                EventType::PumpFailed => {
                    self.error_exec_ts.push(ts);
                    b.total_time = Some(30.0);
                    if m.is_multiple_of(2) {
                        b.original_error_message = Some(format!(
                            "read timeout from upstream system after 30 s (GET https://{family}.example.com/api/entities?since={m})"
                        ));
                    } else {
                        b.reason_why_stopped = Some(
                            "the sink rejected 3 entities (HTTP 422 Unprocessable Entity)".into(),
                        );
                    }
                }
                _ => {}
            }
            Body::Execution(Box::new(b))
        } else {
            let level = match (h / 100) % 100 {
                0..=1 => Level::Error,
                2..=9 => Level::Warn,
                10..=14 => Level::Debug,
                _ => Level::Info,
            };
            let i = (h / 10_000) % PIPES_PER_SOURCE;
            let pipe = pipe_name(source, i);
            let family = FAMILIES[(i % FAMILIES.len() as u64) as usize];
            let (target, message) = match level {
                Level::Error => (
                    "sesam_node::pump::sink",
                    format!("pipe {pipe}: writing batch {seq} failed: HTTP 503 from the sink, retrying in 30 s"),
                ),
                Level::Warn => (
                    "sesam_node::pump::source",
                    format!("pipe {pipe}: source dataset {family}-raw is {} s behind its upstream", seq % 900),
                ),
                Level::Debug => (
                    "sesam_node::dataset",
                    format!("dataset {pipe} compacted: {} entities kept, {} deleted", seq % 100_000, seq % 977),
                ),
                _ => (
                    "sesam_node::pump::runner",
                    format!("pipe {pipe} processed batch {seq} of entities from the source dataset {family}-raw; next run scheduled"),
                ),
            };
            Body::Log(LogBody {
                level,
                target: target.into(),
                message,
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
}

/// Records (`ts`, ascending) in `(lo, hi]`.
fn count_in(ts: &[i64], lo: i64, hi: i64) -> u64 {
    (ts.partition_point(|t| *t <= hi) - ts.partition_point(|t| *t <= lo)) as u64
}

/// Every batch of the store, zstd MessagePack as the shipper sends them,
/// and the generator (record times).
fn encode_batches(total: usize, now: i64, exec_percent: u64) -> (Vec<Vec<u8>>, Gen, usize) {
    let mut gen = Gen::new(total, now, exec_percent);
    let mut raw_bytes = 0;
    let mut out = Vec::with_capacity(total.div_ceil(BATCH));
    for b in 0..total.div_ceil(BATCH) {
        let source = b as u64 % SOURCES;
        let records: Vec<Record> = (b * BATCH..total.min((b + 1) * BATCH))
            .map(|k| gen.record(source, k))
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
        out.push(zstd::encode_all(raw.as_slice(), 1).expect("zstd"));
    }
    (out, gen, raw_bytes)
}

/// POSTs the batches over 8 connections (2 per source); the time, the
/// records accepted and the 429 retries.
async fn ingest(client: &Client, base: &str, batches: Arc<Vec<Vec<u8>>>) -> (Duration, u64, u64) {
    let accepted = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let conns = (SOURCES * 2) as usize;
    let url = format!("{base}/api/v1/ingest");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (client, url, batches, accepted, retries) = (
            client.clone(),
            url.clone(),
            batches.clone(),
            accepted.clone(),
            retries.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while i < batches.len() {
                loop {
                    let r = client
                        .post(&url)
                        .bearer_auth(testkit::tokens::shipper(SUB))
                        .header("content-type", "application/msgpack")
                        .header("content-encoding", "zstd")
                        .body(batches[i].clone())
                        .send()
                        .await
                        .expect("post");
                    let status = r.status().as_u16();
                    if status == 200 {
                        let v: Value = r.json().await.expect("ingest answer");
                        accepted.fetch_add(v["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
                        break;
                    }
                    assert_eq!(
                        status,
                        429,
                        "ingest: {}",
                        r.text().await.unwrap_or_default()
                    );
                    retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                i += conns;
            }
        }));
    }
    for t in tasks {
        t.await.expect("ingest task");
    }
    (
        started.elapsed(),
        accepted.load(Ordering::Relaxed),
        retries.load(Ordering::Relaxed),
    )
}

/// A webhook that counts the notifications it receives.
async fn webhook() -> (String, Arc<AtomicU64>) {
    let got = Arc::new(AtomicU64::new(0));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind webhook");
    let addr = l.local_addr().expect("webhook address");
    let counter = got.clone();
    let app = Router::new().route(
        "/hook",
        post(move || {
            let c = counter.clone();
            async move {
                c.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}/hook"), got)
}

/// The receiver, rules and silence the rules, alerts and notifications
/// pages show; created with the operator token before the records.
async fn notification_setup(client: &Client, base: &str, hook: &str, now: i64) {
    let op = testkit::tokens::operator(SUB);
    let r = client
        .put(format!("{base}/api/v1/receivers/hook"))
        .bearer_auth(&op)
        .json(&json!({"type": "webhook", "url": hook}))
        .send()
        .await
        .expect("put receiver");
    assert!(
        r.status().is_success(),
        "receiver: {}",
        r.text().await.unwrap_or_default()
    );
    let rules = [
        json!({"name": "CRM pipe failed", "type": "pump_failed", "pipes": ["crm-person-*"], "receivers": ["hook"], "severity": "critical"}),
        json!({"name": "ERP pipe failed on node-1", "type": "pump_failed", "source": "node-1", "pipes": ["erp-order-*"], "receivers": ["hook"]}),
        json!({"name": "Upstream timeout", "type": "pattern_match", "pipes": ["erp-order-*", "hr-employee-*"], "params": {"field": "original_error_message", "pattern": "*timeout*"}, "receivers": ["hook"]}),
        json!({"name": "Too many changes", "type": "pump_completed_value_too_high", "params": {"key": "entities.changes_last_run", "limit": 1190}, "receivers": ["hook"], "severity": "info"}),
        json!({"name": "Run hangs", "type": "pump_finished_overdue", "params": {"limit": "1h"}, "receivers": ["hook"]}),
        json!({"name": "Pipe not started", "type": "pump_started_overdue", "params": {"interval": "1h"}, "receivers": ["hook"]}),
    ];
    for rule in rules {
        let r = client
            .post(format!("{base}/api/v1/notification-rules"))
            .bearer_auth(&op)
            .json(&rule)
            .send()
            .await
            .expect("post rule");
        assert_eq!(
            r.status(),
            201,
            "rule {rule}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    let ends = schemas::time::rfc3339_from_nanos(now + 6 * 3600 * SEC);
    let r = client
        .post(format!("{base}/api/v1/silences"))
        .bearer_auth(&op)
        .json(&json!({"matchers": [{"name": "pipe", "value": pipe_name(0, BROKEN)}], "endsAt": ends, "comment": "known broken, ticket SES-1234"}))
        .send()
        .await
        .expect("post silence");
    assert_eq!(
        r.status(),
        201,
        "silence: {}",
        r.text().await.unwrap_or_default()
    );
}

/// The sum of a metric's samples in the collector's `/metrics`.
async fn metric_sum(client: &Client, base: &str, name: &str) -> f64 {
    let text = match client.get(format!("{base}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return f64::NAN,
    };
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the notifier has evaluated every record and the collector
/// used under 5% of a core for a second (compactions done), at most 5 min.
async fn settle(client: &Client, base: &str, pid: u32) -> (Duration, bool) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(300) {
        let lag = metric_sum(client, base, "notifier_evaluation_lag_records").await;
        let c0 = testkit::process::cpu_seconds(pid);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cpu = testkit::process::cpu_seconds(pid) - c0;
        if lag == 0.0 && cpu < 0.05 {
            return (t.elapsed(), true);
        }
    }
    (t.elapsed(), false)
}

/// What a request's answer must hold.
enum Check {
    /// The console's HTML shell.
    Html,
    /// `/api/v1/logs`: `exact` records (else 1 or more), each with these
    /// labels.
    Logs {
        exact: Option<usize>,
        labels: Vec<(&'static str, String)>,
    },
    /// A Loki matrix whose points add up to `expected`.
    Histogram {
        expected: u64,
    },
    /// `/api/v1/pipes`: this many pipes, each with runs (`runs`: exactly
    /// this many for each).
    Pipes {
        pipes: usize,
        runs: Option<usize>,
    },
    /// A JSON object whose array `key` has at least `min` entries.
    Array {
        key: &'static str,
        min: usize,
    },
    Health,
}

struct Req {
    label: &'static str,
    url: Url,
    check: Check,
}

/// The request's answer checked: a summary, or what is wrong.
fn check(req: &Req, status: u16, body: &[u8]) -> Result<String, String> {
    if status != 200 {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ));
    }
    if let Check::Html = req.check {
        let html = String::from_utf8_lossy(body);
        return if html.contains("name=\"csrf-token\"") && html.contains("/ui/console.js") {
            Ok("the console shell".into())
        } else {
            Err("not the console shell".into())
        };
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    match &req.check {
        Check::Html => unreachable!("answered above"),
        Check::Health => (v["status"] == "ok")
            .then(|| "ok".to_string())
            .ok_or_else(|| format!("{v}")),
        Check::Logs { exact, labels } => {
            let records = v["records"].as_array().ok_or("no records array")?;
            match exact {
                Some(n) if records.len() != *n => {
                    return Err(format!("{} records, expected {n}", records.len()))
                }
                None if records.is_empty() => return Err("no records".into()),
                _ => {}
            }
            for r in records {
                for (k, want) in labels {
                    if r["labels"][*k].as_str() != Some(want.as_str()) {
                        return Err(format!("a record with {k}={}: {r}", r["labels"][*k]));
                    }
                }
            }
            Ok(format!(
                "{} records, {} read on the server",
                records.len(),
                v["stats"]["scanned_records"]
            ))
        }
        Check::Histogram { expected } => {
            let series = v["data"]["result"].as_array().ok_or("no data.result")?;
            if series.is_empty() {
                return Err("an empty histogram".into());
            }
            let mut points = 0;
            let mut total = 0.0;
            for s in series {
                for p in s["values"].as_array().ok_or("no values")? {
                    points += 1;
                    total += p[1]
                        .as_str()
                        .and_then(|x| x.parse::<f64>().ok())
                        .unwrap_or(0.0);
                }
            }
            if total as u64 != *expected {
                return Err(format!(
                    "the histogram counts {total} records, the range holds {expected}"
                ));
            }
            Ok(format!(
                "{} series (levels {}), {points} points, {total} records",
                series.len(),
                series
                    .iter()
                    .map(|s| s["metric"]["level"].as_str().unwrap_or("-"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ))
        }
        Check::Pipes { pipes, runs } => {
            let list = v["pipes"].as_array().ok_or("no pipes array")?;
            if list.len() != *pipes {
                return Err(format!("{} pipes, expected {pipes}", list.len()));
            }
            let mut failed = 0;
            for p in list {
                let n = p["runs"].as_array().map_or(0, Vec::len);
                if n == 0 || runs.is_some_and(|r| r != n) {
                    return Err(format!("{n} runs of {}", p["pipe"]));
                }
                failed += usize::from(p["status"] == "failed");
            }
            Ok(format!(
                "{} pipes ({failed} failed), {} runs of the first in range, {} records read",
                list.len(),
                list[0]["runs_in_range"],
                v["stats"]["scanned_records"]
            ))
        }
        Check::Array { key, min } => {
            let n = v[*key]
                .as_array()
                .map(Vec::len)
                .ok_or(format!("no {key} array"))?;
            if n < *min {
                return Err(format!("{n} {key}, expected at least {min}"));
            }
            Ok(format!("{n} {key}"))
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Page {
    Search,
    SearchSelective,
    Pipes,
    Pipe,
    Alerts,
    Rules,
    Notifications,
    Sources,
    /// Outside the goal: the histogram on the step grid.
    AlignedHistogram,
    /// The baseline.
    Healthz,
}

impl Page {
    const ALL: [Page; 10] = [
        Page::Search,
        Page::SearchSelective,
        Page::Pipes,
        Page::Pipe,
        Page::Alerts,
        Page::Rules,
        Page::Notifications,
        Page::Sources,
        Page::AlignedHistogram,
        Page::Healthz,
    ];

    fn name(self) -> &'static str {
        match self {
            Page::Search => "search {} (1 h, all records)",
            Page::SearchSelective => "search {kind=\"execution\", level=\"ERROR\"} (1 h)",
            Page::Pipes => "pipes",
            Page::Pipe => "pipe (a different one each time)",
            Page::Alerts => "alerts",
            Page::Rules => "rules",
            Page::Notifications => "notifications",
            Page::Sources => "sources",
            Page::AlignedHistogram => "the {} histogram alone (on the step grid)",
            Page::Healthz => "baseline: GET /healthz",
        }
    }

    fn slow(self) -> bool {
        matches!(
            self,
            Page::Search | Page::SearchSelective | Page::Pipes | Page::AlignedHistogram
        )
    }

    fn in_goal(self) -> bool {
        !matches!(self, Page::AlignedHistogram | Page::Healthz)
    }
}

struct Ctx {
    base: String,
    gen: Gen,
}

impl Ctx {
    fn url(&self, path: &str, params: &[(&str, String)]) -> Url {
        Url::parse_with_params(&format!("{}{path}", self.base), params).expect("url")
    }

    /// The search page's requests as console.js makes them: the page, then
    /// the records and the histogram at once (`aligned`: the histogram
    /// alone).
    fn search(&self, query: &str, aligned: bool) -> Vec<Vec<Req>> {
        let end_ms = schemas::time::now_nanos() / 1_000_000;
        let start_ms = end_ms - 3_600_000;
        // console.js: Math.max(10, Math.ceil(spanS / 60 / 10) * 10).
        let step_s = 10i64.max(((3600.0f64 / 60.0 / 10.0).ceil() as i64) * 10);
        let step = step_s * SEC;
        let (start, end) = (start_ms * 1_000_000, end_ms * 1_000_000);
        // console.js puts the histogram's steps on the step's grid
        // (Math.ceil(range.start / stepMs) * stepMs, the same for the end).
        let step_ms = step_s * 1000;
        let (h_start, h_end) = (
            (start_ms + step_ms - 1).div_euclid(step_ms) * step_ms * 1_000_000,
            (end_ms + step_ms - 1).div_euclid(step_ms) * step_ms * 1_000_000,
        );
        // Steps h_start + k * step up to h_end (inclusive, as Loki's), each
        // counting (t - step, t].
        let last = h_start + (h_end - h_start) / step * step;
        let ts = if query == "{}" {
            &self.gen.all_ts
        } else {
            &self.gen.error_exec_ts
        };
        let histogram = Req {
            label: "GET /loki/api/v1/query_range (histogram)",
            url: self.url(
                "/loki/api/v1/query_range",
                &[
                    (
                        "query",
                        format!("sum by (level) (count_over_time({query} [{step_s}s]))"),
                    ),
                    ("start", h_start.to_string()),
                    ("end", h_end.to_string()),
                    ("step", format!("{step_s}s")),
                ],
            ),
            check: Check::Histogram {
                expected: count_in(ts, h_start - step, last),
            },
        };
        if aligned {
            return vec![vec![histogram]];
        }
        let labels = if query == "{}" {
            Vec::new()
        } else {
            vec![
                ("kind", "execution".to_string()),
                ("level", "ERROR".to_string()),
            ]
        };
        vec![
            vec![Req {
                label: "GET /ui/",
                url: self.url("/ui/", &[]),
                check: Check::Html,
            }],
            vec![
                Req {
                    label: "GET /api/v1/logs (limit 1000)",
                    url: self.url(
                        "/api/v1/logs",
                        &[
                            ("query", query.to_string()),
                            ("start", start.to_string()),
                            ("end", end.to_string()),
                            ("limit", "1000".into()),
                            ("direction", "backward".into()),
                        ],
                    ),
                    check: Check::Logs {
                        exact: Some(count_in(ts, start - 1, end).min(1000) as usize),
                        labels,
                    },
                },
                histogram,
            ],
        ]
    }

    /// A page's requests: groups made one after the other, the requests
    /// of a group at once (`Promise.all` in manage.js).
    fn requests(&self, page: Page, it: usize) -> Vec<Vec<Req>> {
        let array = |label: &'static str, path: &str, key: &'static str, min: usize| Req {
            label,
            url: self.url(path, &[]),
            check: Check::Array { key, min },
        };
        match page {
            Page::Search => self.search("{}", false),
            Page::SearchSelective => self.search(SELECTIVE, false),
            Page::AlignedHistogram => self.search("{}", true),
            Page::Pipes => vec![vec![Req {
                label: "GET /api/v1/pipes?since=24h",
                url: self.url("/api/v1/pipes", &[("since", "24h".into())]),
                check: Check::Pipes {
                    pipes: (SOURCES * PIPES_PER_SOURCE) as usize,
                    runs: None,
                },
            }]],
            Page::Pipe => {
                let n = it as u64 % (SOURCES * PIPES_PER_SOURCE);
                let (source, pipe) = (
                    format!("node-{}", n / PIPES_PER_SOURCE),
                    pipe_name(n / PIPES_PER_SOURCE, n % PIPES_PER_SOURCE),
                );
                let runs = self.gen.exec[(n / PIPES_PER_SOURCE) as usize] / 2 / PIPES_PER_SOURCE;
                vec![vec![
                    Req {
                        label: "GET /api/v1/pipes?since=24h&source=&pipe=&runs=100",
                        url: self.url(
                            "/api/v1/pipes",
                            &[
                                ("since", "24h".into()),
                                ("source", source.clone()),
                                ("pipe", pipe.clone()),
                                ("runs", "100".into()),
                            ],
                        ),
                        check: Check::Pipes {
                            pipes: 1,
                            runs: (runs >= 101).then_some(100),
                        },
                    },
                    Req {
                        label: "GET /api/v1/logs (the pipe's, limit 200, 24 h)",
                        url: self.url(
                            "/api/v1/logs",
                            &[
                                (
                                    "query",
                                    format!(
                                        r#"{{kind="execution", source="{source}", pipe="{pipe}"}}"#
                                    ),
                                ),
                                ("since", "24h".into()),
                                ("limit", "200".into()),
                                ("direction", "backward".into()),
                            ],
                        ),
                        check: Check::Logs {
                            exact: (runs >= 100).then_some(200),
                            labels: vec![("source", source.clone()), ("pipe", pipe.clone())],
                        },
                    },
                    Req {
                        label: "GET /api/v1/notification-rules?source=&pipe=",
                        url: self.url(
                            "/api/v1/notification-rules",
                            &[("source", source), ("pipe", pipe)],
                        ),
                        // Run hangs and Pipe not started apply to every pipe.
                        check: Check::Array {
                            key: "rules",
                            min: 2,
                        },
                    },
                ]]
            }
            Page::Alerts => vec![vec![
                array("GET /api/v1/alerts", "/api/v1/alerts", "alerts", 1),
                array("GET /api/v1/silences", "/api/v1/silences", "silences", 1),
            ]],
            // The list (rules and receivers at once), then the new-rule
            // form's rule types.
            Page::Rules => vec![
                vec![
                    array(
                        "GET /api/v1/notification-rules",
                        "/api/v1/notification-rules",
                        "rules",
                        6,
                    ),
                    array("GET /api/v1/receivers", "/api/v1/receivers", "receivers", 1),
                ],
                vec![array(
                    "GET /api/v1/notification-rule-types",
                    "/api/v1/notification-rule-types",
                    "types",
                    10,
                )],
            ],
            Page::Notifications => vec![vec![Req {
                label: "GET /api/v1/notifications?limit=200",
                url: self.url("/api/v1/notifications", &[("limit", "200".into())]),
                check: Check::Array {
                    key: "notifications",
                    min: 1,
                },
            }]],
            Page::Sources => vec![vec![array(
                "GET /api/v1/sources",
                "/api/v1/sources",
                "sources",
                SOURCES as usize,
            )]],
            Page::Healthz => vec![vec![Req {
                label: "GET /healthz",
                url: self.url("/healthz", &[]),
                check: Check::Health,
            }]],
        }
    }
}

/// The requests of a group at once; each one's status, body and time, and
/// the group's time (to its last answer's last byte).
async fn fetch_group(
    client: &Client,
    cookie: &str,
    group: &[Req],
) -> (Vec<(u16, Vec<u8>, Duration)>, Duration) {
    let t = Instant::now();
    let answers =
        futures::future::join_all(group.iter().map(|r| fetch(client, cookie, r.url.clone()))).await;
    (answers, t.elapsed())
}

/// One request with the session cookie: status, body, time to the last
/// byte.
async fn fetch(client: &Client, cookie: &str, url: Url) -> (u16, Vec<u8>, Duration) {
    let t = Instant::now();
    let r = client
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let body = r.bytes().await.expect("answer body");
    (status, body.to_vec(), t.elapsed())
}

/// Signs in with the operator token; the cookie (`sesam_session=...`).
async fn sign_in(client: &Client, base: &str) -> String {
    let r = client
        .post(format!("{base}/ui/login"))
        .form(&[("token", testkit::tokens::operator(SUB))])
        .send()
        .await
        .expect("sign in");
    assert_eq!(r.status(), 303, "sign-in");
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .expect("ascii cookie")
        .split(';')
        .next()
        .expect("cookie pair")
        .to_string();
    assert!(cookie.starts_with("sesam_session="), "{cookie}");
    cookie
}

/// Runs every request of every page once and checks each answer.
async fn validate(client: &Client, cookie: &str, ctx: &Ctx, when: &str) {
    println!("checks ({when}):");
    for page in Page::ALL {
        for req in ctx.requests(page, 0).into_iter().flatten() {
            let (status, body, took) = fetch(client, cookie, req.url.clone()).await;
            match check(&req, status, &body) {
                Ok(summary) => println!(
                    "  {} / {}: 200, {} bytes, {:.1} ms: {summary}",
                    page.name(),
                    req.label,
                    body.len(),
                    took.as_secs_f64() * 1e3
                ),
                Err(e) => panic!("{} / {} ({}): {e}", page.name(), req.label, req.url),
            }
        }
    }
}

/// Nearest-rank percentile of sorted `v`.
fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

struct Series {
    page: Page,
    label: &'static str,
    ms: Vec<f64>,
    bytes: Vec<usize>,
}

/// Whether a page run `k` of `n` times runs in iteration `i`: spread evenly.
fn due(i: usize, n: usize, k: usize) -> bool {
    (i * k) / n != ((i + 1) * k) / n
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let total = env_usize("BENCH_CONSOLE_RECORDS", 1_000_000);
    let iters = env_usize("BENCH_CONSOLE_ITERS", 200).max(1);
    let slow_iters = env_usize("BENCH_CONSOLE_SLOW_ITERS", 100).clamp(1, iters);
    let exec_percent = env_usize("BENCH_CONSOLE_EXEC_PERCENT", 20).min(100) as u64;
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(&dir, total, iters, slow_iters, exec_percent));
}

async fn run(dir: &Path, total: usize, iters: usize, slow_iters: usize, exec_percent: u64) {
    println!(
        "console bench: {total} records ({exec_percent}% execution events), {iters} iterations ({slow_iters} of the search and pipes pages); load average at start {}",
        loadavg()
    );
    let tokens = testkit::tokens::write(&dir.join("console-tokens.toml"), &[SUB]);
    let data = dir.join("console-data");
    let _ = std::fs::remove_dir_all(&data);
    let (hook, hooked) = webhook().await;
    let port = testkit::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sesam-collector"));
    cmd.arg("--data-dir")
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--tokens"])
        .arg(&tokens)
        .args(["--egress-allow", "127.0.0.1/32"]);
    let mut collector = Proc::spawn("sesam-collector", cmd, &dir.join("console-collector.log"));
    let pid = collector.pid();
    let client = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let started = Instant::now();
    loop {
        if let Some(st) = collector.exited() {
            panic!("collector exited ({st}):\n{}", collector.log_tail(30));
        }
        let ok = client.get(format!("{base}/readyz")).send().await;
        if ok.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "collector not ready:\n{}",
            collector.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let now = schemas::time::now_nanos();
    notification_setup(&client, &base, &hook, now).await;
    let t = Instant::now();
    let (batches, gen, raw_bytes) = encode_batches(total, now, exec_percent);
    println!(
        "store: {total} records encoded in {:.1} s ({:.0} B each as MessagePack, {:.1} MiB zstd), {} execution events ({} pump-failed), spread over the 50 min before {}",
        t.elapsed().as_secs_f64(),
        raw_bytes as f64 / total as f64,
        batches.iter().map(Vec::len).sum::<usize>() as f64 / (1 << 20) as f64,
        gen.exec.iter().sum::<u64>(),
        gen.error_exec_ts.len(),
        schemas::time::rfc3339_from_nanos(now)
    );
    let (took, accepted, retries) = ingest(&client, &base, Arc::new(batches)).await;
    assert_eq!(accepted, total as u64, "every record stored once");
    let ingest_rate = total as f64 / took.as_secs_f64();
    println!(
        "baseline: ingest over HTTP (8 connections, notifier on with 6 rules) {total} records in {:.2} s = {ingest_rate:.0} records/s; 429 retries {retries}",
        took.as_secs_f64()
    );
    let (settled, idle) = settle(&client, &base, pid).await;
    println!(
        "{} {:.1} s after the ingest (notifier evaluation lag 0, collector CPU < 5% for 1 s); webhook received {} notifications; load average {}",
        if idle { "settled" } else { "NOT settled (gave up)" },
        settled.as_secs_f64(),
        hooked.load(Ordering::Relaxed),
        loadavg()
    );

    let cookie = sign_in(&client, &base).await;
    let ctx = Ctx { base, gen };
    validate(&client, &cookie, &ctx, "before").await;
    for w in 0..3 {
        for page in Page::ALL {
            for group in ctx.requests(page, w + 1) {
                let (answers, _) = fetch_group(&client, &cookie, &group).await;
                for (req, (status, body, _)) in group.iter().zip(answers) {
                    assert_eq!(
                        status,
                        200,
                        "warm-up {}: {}",
                        req.label,
                        String::from_utf8_lossy(&body)
                    );
                }
            }
        }
    }

    let mut series: Vec<Series> = Vec::new();
    let mut totals: Vec<(Page, Vec<f64>)> = Page::ALL.iter().map(|p| (*p, Vec::new())).collect();
    let cpu0 = testkit::process::cpu_seconds(pid);
    let measured = Instant::now();
    for i in 0..iters {
        for (pi, page) in Page::ALL.into_iter().enumerate() {
            if page.slow() && !due(i, iters, slow_iters) {
                continue;
            }
            let mut sum = 0.0;
            for group in ctx.requests(page, i) {
                let (answers, group_took) = fetch_group(&client, &cookie, &group).await;
                sum += group_took.as_secs_f64() * 1e3;
                for (req, (status, body, took)) in group.iter().zip(answers) {
                    assert_eq!(
                        status,
                        200,
                        "{} / {}: {}",
                        page.name(),
                        req.label,
                        String::from_utf8_lossy(&body)
                    );
                    let ms = took.as_secs_f64() * 1e3;
                    let at = match series
                        .iter()
                        .position(|s| s.page == page && s.label == req.label)
                    {
                        Some(at) => at,
                        None => {
                            series.push(Series {
                                page,
                                label: req.label,
                                ms: Vec::new(),
                                bytes: Vec::new(),
                            });
                            series.len() - 1
                        }
                    };
                    series[at].ms.push(ms);
                    series[at].bytes.push(body.len());
                }
            }
            totals[pi].1.push(sum);
        }
    }
    let wall = measured.elapsed();
    let cpu = testkit::process::cpu_seconds(pid) - cpu0;
    validate(&client, &cookie, &ctx, "after").await;

    println!(
        "\nserver time per request and page (ms, from sending the request to the answer's last byte; {:.0} s of measurement, collector CPU {:.0}% of a core meanwhile, load average {}):\n",
        wall.as_secs_f64(),
        cpu / wall.as_secs_f64() * 100.0,
        loadavg()
    );
    println!("| page | request | runs | p50 ms | p99 ms | max ms | answer bytes (median) |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mut met = true;
    for (page, sums) in &totals {
        for s in series.iter().filter(|s| s.page == *page) {
            let ms = sorted(s.ms.clone());
            let mut bytes = s.bytes.clone();
            bytes.sort_unstable();
            println!(
                "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {} |",
                page.name(),
                s.label,
                ms.len(),
                pct(&ms, 0.5),
                pct(&ms, 0.99),
                ms[ms.len() - 1],
                bytes[bytes.len() / 2]
            );
        }
        let sums = sorted(sums.clone());
        let p99 = pct(&sums, 0.99);
        let verdict = if !page.in_goal() {
            "(outside the goal)"
        } else if p99 < GOAL_MS {
            "goal met"
        } else {
            met = false;
            "**goal not met**"
        };
        println!(
            "| {} | **page total** {verdict} | {} | **{:.2}** | **{:.2}** | {:.2} | |",
            page.name(),
            sums.len(),
            pct(&sums, 0.5),
            p99,
            sums[sums.len() - 1]
        );
    }
    let health = totals
        .iter()
        .find(|(p, _)| *p == Page::Healthz)
        .map(|(_, v)| sorted(v.clone()))
        .expect("healthz");
    println!(
        "\ngoal (every page's p99 < {GOAL_MS} ms): {}; baselines of this run: GET /healthz p50 {:.3} ms, p99 {:.3} ms; ingest {ingest_rate:.0} records/s; collector peak RSS {} MiB",
        if met { "met" } else { "NOT met" },
        pct(&health, 0.5),
        pct(&health, 0.99),
        testkit::process::status_kib(pid, "VmHWM").unwrap_or(0) / 1024
    );
    collector.terminate(Duration::from_secs(30));
}

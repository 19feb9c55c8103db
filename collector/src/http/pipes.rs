//! `GET /api/v1/pipes`: per source and pipe, the last run, recent runs
//! and the last failure, read from the execution records in the log store
//! (Sesam's execution dataset `system:pump:<pipe>`, as shipped). The
//! console's pipes view is drawn from it.
//!
//! Parameters: the time range (`since`, default 24 h, or `start`/`end`),
//! `source` and `pipe` to narrow, `runs` (recent runs per pipe, default
//! 30, at most [`MAX_RUNS`]); an admin may narrow to one `subscription`.
//! The scan is the queries' (same deadline, scanned-bytes budget and
//! per-subscription slots); at most [`MAX_PIPES`] pipes are answered.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query as QueryParams, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::logs::{on_query_pool, Failed, READ_ROLES};
use super::loki::stream_volume;
use super::params::{name_param, range_params};
use super::{ApiError, AppState};
use crate::logs::model::StreamInfo;
use crate::logs::query::parser::Matcher;
use crate::logs::query::{Query, ScanParams, SearchError};

/// Most recent runs answered per pipe.
pub const MAX_RUNS: usize = 200;
/// Most pipes in one answer.
pub const MAX_PIPES: usize = 5000;
/// Longest failure reason answered (the rest is cut).
const MAX_REASON_CHARS: usize = 2000;

/// The execution events that make a run.
const RUN_EVENTS: [&str; 3] = ["pump-started", "pump-completed", "pump-failed"];

/// One finished run (a `pump-completed` or `pump-failed` event).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Run {
    ts: i64,
    failed: bool,
    run_id: Option<String>,
    /// Milliseconds (kept integral to order runs).
    duration_ms: Option<u64>,
    changes: Option<u64>,
    reason: Option<String>,
}

/// (subscription, source, pipe).
type PipeKey = (String, String, String);

/// A record's time and line.
type Line = (i64, Vec<u8>);

#[derive(Default)]
struct PipeRuns {
    /// The newest finished runs (a min-heap of at most `runs`).
    recent: BinaryHeap<Reverse<Run>>,
    finished: u64,
    failures: u64,
    last_started: Option<i64>,
    last_failure: Option<Run>,
}

/// The fields of an execution line the pipes view uses (the rest is
/// skipped unparsed).
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    pipe: Cow<'a, str>,
    #[serde(borrow)]
    event_type: Cow<'a, str>,
    #[serde(default, borrow)]
    run_id: Option<Cow<'a, str>>,
    #[serde(default)]
    total_time: Option<f64>,
    #[serde(default, borrow)]
    original_error_message: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reason_why_stopped: Option<Cow<'a, str>>,
    #[serde(default)]
    metrics: Option<EventMetrics>,
}

#[derive(Deserialize)]
struct EventMetrics {
    #[serde(default, rename = "entities.changes_last_run")]
    changes: Option<u64>,
}

/// The finished run or start an execution line tells, with its pipe.
fn parse_event(line: &[u8]) -> Option<(String, Option<Run>)> {
    let e: Event<'_> = serde_json::from_slice(line).ok()?;
    let failed = match e.event_type.as_ref() {
        "pump-started" => return Some((e.pipe.into_owned(), None)),
        "pump-completed" => false,
        "pump-failed" => true,
        _ => return None,
    };
    let reason = if failed {
        e.original_error_message
            .or(e.reason_why_stopped)
            .map(|r| r.chars().take(MAX_REASON_CHARS).collect())
    } else {
        None
    };
    Some((
        e.pipe.into_owned(),
        Some(Run {
            ts: 0,
            failed,
            run_id: e.run_id.map(Cow::into_owned),
            duration_ms: e
                .total_time
                .filter(|d| d.is_finite() && *d >= 0.0)
                .map(|d| (d * 1000.0).round() as u64),
            changes: e.metrics.and_then(|m| m.changes),
            reason,
        }),
    ))
}

/// A run as answered.
#[derive(Serialize)]
struct RunOut<'a> {
    time: String,
    status: &'static str,
    run_id: &'a Option<String>,
    duration_seconds: Option<f64>,
    changes: Option<u64>,
    reason: &'a Option<String>,
}

fn run_out(r: &Run) -> RunOut<'_> {
    RunOut {
        time: schemas::time::rfc3339_from_nanos(r.ts),
        status: if r.failed { "failed" } else { "completed" },
        run_id: &r.run_id,
        duration_seconds: r.duration_ms.map(|d| d as f64 / 1000.0),
        changes: r.changes,
        reason: &r.reason,
    }
}

/// Adds an event at `ts` to `p` (`count`: it also counts toward the
/// range's totals, which are otherwise taken from the volume index).
fn add(p: &mut PipeRuns, ts: i64, run: Option<Run>, keep: usize, count: bool) {
    match run {
        None => p.last_started = p.last_started.max(Some(ts)),
        Some(mut run) => {
            run.ts = ts;
            if count {
                p.finished += 1;
                p.failures += u64::from(run.failed);
            }
            if run.failed && p.last_failure.as_ref().is_none_or(|f| f.ts < ts) {
                p.last_failure = Some(run.clone());
            }
            p.recent.push(Reverse(run));
            if p.recent.len() > keep {
                p.recent.pop();
            }
        }
    }
}

/// The newest `want` records of `st` in `[floor, scan.end)`, newest first,
/// and how many records were read: windows back from the stream's newest
/// record, the first sized by the stream's average rate to hold `want`
/// records, each next four times the last, so a pipe's recent runs cost
/// about what they hold, not the whole range.
fn newest_records(
    store: &dyn crate::logs::LogStore,
    query: &Query,
    st: &Arc<StreamInfo>,
    scan: &ScanParams,
    floor: i64,
    want: usize,
) -> Result<(Vec<Line>, u64), SearchError> {
    let floor = floor.max(st.min_ts);
    let mut hi = scan.end.min(st.max_ts.saturating_add(1));
    let span = st.max_ts.saturating_sub(st.min_ts).max(1) as f64;
    let mut width = if st.records > 1 {
        (span / st.records as f64 * want as f64 * 1.25).clamp(1e9, 1e18) as i64
    } else {
        i64::MAX
    };
    let mut out = Vec::new();
    let mut read = 0;
    while hi > floor && out.len() < want {
        let lo = hi.saturating_sub(width).max(floor);
        let mut window = Vec::new();
        let p = ScanParams {
            start: lo,
            end: hi,
            ..scan.clone()
        };
        read += store
            .scan_matches(query, std::slice::from_ref(st), &p, &mut |m| {
                window.push((m.ts, m.line.to_vec()));
                true
            })?
            .scanned;
        let room = want - out.len();
        out.extend(window.into_iter().rev().take(room));
        hi = lo;
        width = width.saturating_mul(4);
    }
    Ok((out, read))
}

/// A pipe as answered.
#[derive(Serialize)]
struct PipeOut<'a> {
    subscription: &'a str,
    source: &'a str,
    pipe: &'a str,
    status: &'static str,
    running_since: Option<String>,
    last_run: Option<RunOut<'a>>,
    last_failure: Option<RunOut<'a>>,
    runs_in_range: u64,
    failures_in_range: u64,
    runs: Vec<RunOut<'a>>,
}

#[derive(Serialize)]
struct Answer<'a> {
    pipes: Vec<PipeOut<'a>>,
    truncated: bool,
    stats: Value,
}

/// The answer (JSON) for the pipes of `by_pipe`, newest run first per
/// pipe.
fn answer(by_pipe: BTreeMap<PipeKey, PipeRuns>, scanned: u64) -> Vec<u8> {
    let truncated = by_pipe.len() > MAX_PIPES;
    let pipes: Vec<(PipeKey, Vec<Run>, PipeRuns)> = by_pipe
        .into_iter()
        .take(MAX_PIPES)
        .map(|(k, mut p)| {
            let mut runs: Vec<Run> = std::mem::take(&mut p.recent)
                .into_iter()
                .map(|Reverse(r)| r)
                .collect();
            runs.sort_by(|a, b| b.cmp(a));
            (k, runs, p)
        })
        .collect();
    let out = Answer {
        pipes: pipes
            .iter()
            .map(|((sub, source, pipe), runs, p)| {
                let newest = runs.first().map(|r| r.ts);
                let running_since = p.last_started.filter(|s| newest.is_none_or(|n| *s > n));
                PipeOut {
                    subscription: sub,
                    source,
                    pipe,
                    status: match (running_since, runs.first()) {
                        (Some(_), _) => "running",
                        (None, Some(r)) if r.failed => "failed",
                        (None, Some(_)) => "completed",
                        (None, None) => "unknown",
                    },
                    running_since: running_since.map(schemas::time::rfc3339_from_nanos),
                    last_run: runs.first().map(run_out),
                    last_failure: p.last_failure.as_ref().map(run_out),
                    runs_in_range: p.finished,
                    failures_in_range: p.failures,
                    runs: runs.iter().map(run_out).collect(),
                }
            })
            .collect(),
        truncated,
        stats: json!({ "scanned_records": scanned }),
    };
    serde_json::to_vec(&out).unwrap_or_default()
}

/// `GET /api/v1/pipes`.
pub async fn pipes(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let principal = s.require(&headers, &READ_ROLES)?;
    let r = range_params(&q, schemas::time::now_nanos(), Duration::from_secs(86_400))?;
    let source = name_param(&q, "source")?;
    let pipe = name_param(&q, "pipe")?;
    let narrow = name_param(&q, "subscription")?;
    let runs = match q.get("runs") {
        None => 30,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_RUNS).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("runs must be 1 to {MAX_RUNS}"), "runs")
                    .with("limit", json!(MAX_RUNS))
            })?,
    };
    let mut matchers = vec![Matcher::equal("kind", "execution")];
    if let Some(src) = &source {
        matchers.push(Matcher::equal("source", src));
    }
    if let Some(sub) = narrow
        .as_deref()
        .filter(|_| principal.subscription().is_none())
    {
        matchers.push(Matcher::equal("subscription", sub));
    }
    let query = Query {
        matchers,
        stages: Vec::new(),
    };
    let store = s.store.clone();
    let sub = principal.subscription().map(str::to_string);
    let scan = ScanParams {
        start: r.start,
        end: r.end,
        deadline: Instant::now() + s.query_timeout,
        max_scanned_bytes: s.read_limits.max_scanned_bytes,
    };
    let body = on_query_pool(&s, &principal, "pipes", move |_| {
        // Streams of run events (a stream whose pipe label overflowed has
        // none: its lines name the pipe).
        let streams: Vec<_> = store
            .select_streams(&query, sub.as_deref(), scan.start, scan.end)
            .into_iter()
            .filter(|st| {
                st.labels
                    .get("event_type")
                    .is_some_and(|e| RUN_EVENTS.contains(&e.as_str()))
                    && match (&pipe, st.labels.get("pipe")) {
                        (Some(want), Some(has)) => want == has,
                        _ => true,
                    }
            })
            .collect();
        let mut by_pipe: BTreeMap<PipeKey, PipeRuns> = BTreeMap::new();
        let mut scanned = 0u64;
        let key = |st: &StreamInfo, name: String| {
            (
                st.subscription().to_string(),
                st.labels.get("source").cloned().unwrap_or_default(),
                name,
            )
        };
        // Streams of one pipe each, a pipe's started, completed and failed
        // streams in that order (the failed ones read only what can still
        // be among the newest runs).
        let (mut labelled, mixed): (Vec<_>, Vec<_>) = streams
            .into_iter()
            .partition(|st| st.labels.contains_key("pipe"));
        let rank = |st: &StreamInfo| {
            RUN_EVENTS
                .iter()
                .position(|e| st.labels.get("event_type").map(String::as_str) == Some(*e))
                .unwrap_or(0)
        };
        labelled.sort_by_cached_key(|st| (key(st, st.labels["pipe"].clone()), rank(st)));
        for st in &labelled {
            let in_range = (scan.start..scan.end).contains(&st.max_ts);
            let p = by_pipe
                .entry(key(st, st.labels["pipe"].clone()))
                .or_default();
            let (want, floor) = match RUN_EVENTS[rank(st)] {
                "pump-started" if in_range => {
                    // The newest start is the stream's newest record.
                    p.last_started = p.last_started.max(Some(st.max_ts));
                    continue;
                }
                "pump-started" => (1, scan.start),
                event => {
                    // How many runs the range holds, from the volume index.
                    let (n, _, _) = stream_volume(store.as_ref(), st, scan.start, scan.end, &scan)
                        .map_err(Failed::Search)?;
                    p.finished += n;
                    if event == "pump-failed" {
                        p.failures += n;
                    }
                    // Failures older than the newest `runs` runs already
                    // kept cannot be among them.
                    let cutoff = match p.recent.peek() {
                        Some(Reverse(oldest)) if p.recent.len() >= runs => oldest.ts,
                        _ => scan.start,
                    };
                    (runs, cutoff.max(scan.start))
                }
            };
            let (mut newest, read) = newest_records(store.as_ref(), &query, st, &scan, floor, want)
                .map_err(Failed::Search)?;
            scanned += read;
            if newest.is_empty() && floor > scan.start && in_range {
                // None among the newest runs: still the last failure.
                let last = ScanParams {
                    start: st.max_ts,
                    end: st.max_ts.saturating_add(1),
                    ..scan.clone()
                };
                let (one, read) = newest_records(store.as_ref(), &query, st, &last, last.start, 1)
                    .map_err(Failed::Search)?;
                scanned += read;
                newest = one;
            }
            for (ts, line) in newest {
                if let Some((_, run)) = parse_event(&line) {
                    add(p, ts, run, runs, false);
                }
            }
        }
        // Pipes mixed in one stream (their pipe label overflowed): every
        // record is read.
        for st in &mixed {
            let stats = store
                .scan_matches(&query, std::slice::from_ref(st), &scan, &mut |m| {
                    if let Some((name, run)) = parse_event(m.line) {
                        if pipe.as_ref().is_none_or(|want| *want == name) {
                            add(
                                by_pipe.entry(key(st, name)).or_default(),
                                m.ts,
                                run,
                                runs,
                                true,
                            );
                        }
                    }
                    true
                })
                .map_err(Failed::Search)?;
            scanned += stats.scanned;
        }
        let out = answer(by_pipe, scanned);
        Ok((vec![Bytes::from(out)], false))
    })
    .await?;
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_give_the_pipe_status_duration_changes_and_reason() {
        let failed = br#"{"pipe":"orders","event_type":"pump-failed","run_id":"r1","total_time":1.25,"original_error_message":"connection refused","metrics":{"entities.changes_last_run":7}}"#;
        let (pipe, run) = parse_event(failed).expect("event");
        let run = run.expect("a finished run");
        assert_eq!(pipe, "orders");
        assert!(run.failed);
        assert_eq!(run.duration_ms, Some(1250));
        assert_eq!(run.changes, Some(7));
        assert_eq!(run.reason.as_deref(), Some("connection refused"));
        let started = br#"{"pipe":"orders","event_type":"pump-started"}"#;
        assert!(matches!(parse_event(started), Some((_, None))));
        assert!(parse_event(br#"{"pipe":"orders","event_type":"read-error"}"#).is_none());
        assert!(parse_event(b"not json").is_none());
    }

    #[test]
    fn the_answer_keeps_the_newest_runs_and_marks_a_running_pipe() {
        let mut p = PipeRuns::default();
        for ts in [10, 30, 20] {
            p.recent.push(Reverse(Run {
                ts,
                failed: ts == 30,
                run_id: None,
                duration_ms: None,
                changes: None,
                reason: None,
            }));
            p.finished += 1;
        }
        p.last_started = Some(40);
        let mut m = BTreeMap::new();
        m.insert(("acme".into(), "node".into(), "orders".into()), p);
        let a: Value = serde_json::from_slice(&answer(m, 3)).expect("json");
        let pipe = &a["pipes"][0];
        assert_eq!(pipe["status"], "running");
        assert_eq!(pipe["runs"][0]["status"], "failed");
        assert_eq!(pipe["runs"].as_array().map(Vec::len), Some(3));
        assert_eq!(
            pipe["runs"][2]["time"],
            schemas::time::rfc3339_from_nanos(10)
        );
    }
}

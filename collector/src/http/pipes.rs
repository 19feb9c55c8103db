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

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query as QueryParams, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::logs::{on_query_pool, Failed, READ_ROLES};
use super::params::range_params;
use super::{ApiError, AppState};
use crate::logs::query::parser::Matcher;
use crate::logs::query::{MatchedRecord, Query, ScanParams};

/// Most recent runs answered per pipe.
pub const MAX_RUNS: usize = 200;
/// Most pipes in one answer.
pub const MAX_PIPES: usize = 5000;
/// Longest `source`, `pipe` or `subscription` parameter.
const MAX_NAME_BYTES: usize = 256;
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

#[derive(Default)]
struct PipeRuns {
    /// The newest finished runs (a min-heap of at most `runs`).
    recent: BinaryHeap<Reverse<Run>>,
    finished: u64,
    failures: u64,
    last_started: Option<i64>,
    last_failure: Option<Run>,
}

fn name_param(
    q: &HashMap<String, String>,
    field: &'static str,
) -> Result<Option<String>, ApiError> {
    match q.get(field) {
        None => Ok(None),
        Some(v) if v.is_empty() || v.len() > MAX_NAME_BYTES => Err(ApiError::bad_request(
            format!("{field} must be 1 to {MAX_NAME_BYTES} bytes"),
            field,
        )
        .with("limit", json!(MAX_NAME_BYTES))),
        Some(v) => Ok(Some(v.clone())),
    }
}

/// The finished run or start an execution line tells, with its pipe.
fn parse_event(line: &[u8]) -> Option<(String, Option<Run>)> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let pipe = v.get("pipe")?.as_str()?.to_string();
    let failed = match v.get("event_type")?.as_str()? {
        "pump-started" => return Some((pipe, None)),
        "pump-completed" => false,
        "pump-failed" => true,
        _ => return None,
    };
    let reason = failed
        .then(|| {
            ["original_error_message", "reason_why_stopped"]
                .iter()
                .find_map(|k| v.get(*k).and_then(Value::as_str))
                .map(|r| r.chars().take(MAX_REASON_CHARS).collect())
        })
        .flatten();
    let metrics = v.get("metrics");
    Some((
        pipe,
        Some(Run {
            ts: 0,
            failed,
            run_id: v.get("run_id").and_then(Value::as_str).map(str::to_string),
            duration_ms: v
                .get("total_time")
                .and_then(Value::as_f64)
                .filter(|d| d.is_finite() && *d >= 0.0)
                .map(|d| (d * 1000.0).round() as u64),
            changes: metrics
                .and_then(|m| m.get("entities.changes_last_run"))
                .and_then(Value::as_u64),
            reason,
        }),
    ))
}

fn run_json(r: &Run) -> Value {
    json!({
        "time": schemas::time::rfc3339_from_nanos(r.ts),
        "status": if r.failed { "failed" } else { "completed" },
        "run_id": r.run_id,
        "duration_seconds": r.duration_ms.map(|d| d as f64 / 1000.0),
        "changes": r.changes,
        "reason": r.reason,
    })
}

/// The answer for the pipes of `by_pipe`, newest run first per pipe.
fn answer(by_pipe: BTreeMap<(String, String, String), PipeRuns>, scanned: u64) -> Value {
    let truncated = by_pipe.len() > MAX_PIPES;
    let pipes: Vec<Value> = by_pipe
        .into_iter()
        .take(MAX_PIPES)
        .map(|((sub, source, pipe), p)| {
            let mut runs: Vec<Run> = p.recent.into_iter().map(|Reverse(r)| r).collect();
            runs.sort_by(|a, b| b.cmp(a));
            let newest = runs.first().map(|r| r.ts);
            let running_since = p.last_started.filter(|s| newest.is_none_or(|n| *s > n));
            json!({
                "subscription": sub,
                "source": source,
                "pipe": pipe,
                "status": match (running_since, runs.first()) {
                    (Some(_), _) => "running",
                    (None, Some(r)) if r.failed => "failed",
                    (None, Some(_)) => "completed",
                    (None, None) => "unknown",
                },
                "running_since": running_since.map(schemas::time::rfc3339_from_nanos),
                "last_run": runs.first().map(run_json),
                "last_failure": p.last_failure.as_ref().map(run_json),
                "runs_in_range": p.finished,
                "failures_in_range": p.failures,
                "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "pipes": pipes,
        "truncated": truncated,
        "stats": { "scanned_records": scanned },
    })
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
        let mut by_pipe: BTreeMap<(String, String, String), PipeRuns> = BTreeMap::new();
        let stats = store
            .scan_matches(&query, &streams, &scan, &mut |m: MatchedRecord<'_>| {
                let Some((name, run)) = parse_event(m.line) else {
                    return true;
                };
                if pipe.as_ref().is_some_and(|want| *want != name) {
                    return true;
                }
                let key = (
                    m.stream.subscription().to_string(),
                    m.stream.labels.get("source").cloned().unwrap_or_default(),
                    name,
                );
                let p = by_pipe.entry(key).or_default();
                match run {
                    None => p.last_started = p.last_started.max(Some(m.ts)),
                    Some(mut run) => {
                        run.ts = m.ts;
                        p.finished += 1;
                        if run.failed {
                            p.failures += 1;
                            if p.last_failure.as_ref().is_none_or(|f| f.ts < m.ts) {
                                p.last_failure = Some(run.clone());
                            }
                        }
                        p.recent.push(Reverse(run));
                        if p.recent.len() > runs {
                            p.recent.pop();
                        }
                    }
                }
                true
            })
            .map_err(Failed::Search)?;
        let out = serde_json::to_vec(&answer(by_pipe, stats.scanned)).unwrap_or_default();
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
        let a = answer(m, 3);
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

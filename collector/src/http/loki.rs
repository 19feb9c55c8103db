//! The Loki HTTP API beyond plain searches: `query_range` and `query` for
//! log and metric queries (Loki's `streams`, `matrix` and `vector`
//! shapes), `series`, `index/stats`, `index/volume` and the live `tail`
//! over WebSocket. Same roles and tenant rule as every read endpoint: an
//! operator reads only the subscription of its token.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query as QueryParams, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::answer::push_json_str;
use super::logs::{
    json_response, on_query_pool, parse_error, query_text, render_loki, search_params, Failed,
    READ_ROLES,
};
use super::metrics::match_params;
use super::params::{parse_time, range_params, RangeParams};
use super::{ApiError, AppState};
use crate::auth::Principal;
use crate::logs::query::metric::{self, MetricParams, MetricResult, MAX_POINTS};
use crate::logs::query::parser::parse_duration;
use crate::logs::query::{
    self, Expr, MatchedRecord, Query, ScanParams, SearchParams, VOLUME_BUCKET_NS,
};
use crate::logs::tail::{matching, TailEntry, TailError, TailEvent};
use crate::logs::StreamInfo;

/// Loki's default step: the range over 250, at least a second.
fn default_step(start: i64, end: i64) -> i64 {
    let secs = ((end - start) / 1_000_000_000 / 250).max(1);
    secs * 1_000_000_000
}

/// `step` as a duration (`30s`, `1m`) or (fractional) seconds.
fn step_param(q: &HashMap<String, String>, start: i64, end: i64) -> Result<i64, ApiError> {
    let Some(v) = q.get("step").map(|s| s.trim()).filter(|s| !s.is_empty()) else {
        return Ok(default_step(start, end));
    };
    let ns = match parse_duration(v) {
        Some(ns) => Some(ns),
        None => v
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && f.abs() < 9.2e9)
            .map(|f| (f * 1e9) as i64),
    };
    match ns {
        None => Err(ApiError::bad_request(
            format!("cannot parse step={v:?}: expected a duration (30s, 1m) or seconds"),
            "step",
        )),
        Some(ns) if ns <= 0 => Err(ApiError::bad_request(
            "zero or negative query resolution step widths are not accepted; try a positive duration",
            "step",
        )),
        Some(ns) => {
            let points = (i128::from(end) - i128::from(start)) / i128::from(ns);
            if points > i128::from(MAX_POINTS) {
                return Err(ApiError::bad_request(
                    format!(
                        "exceeded maximum resolution of {MAX_POINTS} points per timeseries; try a larger step"
                    ),
                    "step",
                )
                .with("limit", json!(MAX_POINTS)));
            }
            Ok(ns)
        }
    }
}

/// Unix ns as Loki's float seconds (`1700000000` or `1700000000.25`).
fn push_secs(buf: &mut Vec<u8>, ns: i64) {
    let secs = ns.div_euclid(1_000_000_000);
    let frac = ns.rem_euclid(1_000_000_000);
    if frac == 0 {
        buf.extend_from_slice(secs.to_string().as_bytes());
    } else {
        let f = format!("{frac:09}");
        buf.extend_from_slice(format!("{secs}.{}", f.trim_end_matches('0')).as_bytes());
    }
}

/// A sample value as Prometheus writes it.
fn push_value(buf: &mut Vec<u8>, v: f64) {
    buf.push(b'"');
    if v.is_nan() {
        buf.extend_from_slice(b"NaN");
    } else if v == f64::INFINITY {
        buf.extend_from_slice(b"+Inf");
    } else if v == f64::NEG_INFINITY {
        buf.extend_from_slice(b"-Inf");
    } else {
        buf.extend_from_slice(v.to_string().as_bytes());
    }
    buf.push(b'"');
}

fn metric_stats(r: &MetricResult, took: Duration) -> Value {
    json!({
        "summary": {
            "totalLinesProcessed": r.stats.scanned,
            "totalBytesProcessed": r.stats.scanned_bytes,
            "execTime": took.as_secs_f64(),
            "streams": r.streams,
            "streamsFromVolumeIndex": r.from_index,
        }
    })
}

/// Loki's `matrix` (range) or `vector` (instant) answer.
fn render_metric(r: MetricResult, took: Duration, vector: bool) -> Vec<Bytes> {
    let mut buf = Vec::with_capacity(4096);
    buf.extend_from_slice(if vector {
        b"{\"status\":\"success\",\"data\":{\"resultType\":\"vector\",\"result\":[".as_slice()
    } else {
        b"{\"status\":\"success\",\"data\":{\"resultType\":\"matrix\",\"result\":[".as_slice()
    });
    let mut chunks = Vec::new();
    for (i, s) in r.series.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(b"{\"metric\":");
        let _ = serde_json::to_writer(&mut buf, &s.labels);
        if vector {
            buf.extend_from_slice(b",\"value\":");
        } else {
            buf.extend_from_slice(b",\"values\":[");
        }
        for (j, (t, v)) in s.points.iter().enumerate() {
            if j > 0 {
                buf.push(b',');
            }
            buf.push(b'[');
            push_secs(&mut buf, *t);
            buf.push(b',');
            push_value(&mut buf, *v);
            buf.push(b']');
            if vector {
                break;
            }
        }
        if !vector {
            buf.push(b']');
        }
        buf.push(b'}');
        if buf.len() > 256 << 10 {
            chunks.push(Bytes::from(std::mem::take(&mut buf)));
        }
    }
    buf.extend_from_slice(format!("],\"stats\":{}}}}}", metric_stats(&r, took)).as_bytes());
    chunks.push(Bytes::from(buf));
    chunks
}

/// Runs a log or metric query: logs over `r`, metrics at the steps of
/// `steps` (start, end inclusive, step).
async fn run_expr(
    s: &Arc<AppState>,
    principal: &Principal,
    text: String,
    r: RangeParams,
    steps: Option<(i64, i64, i64)>,
    endpoint: &'static str,
) -> Result<Response, ApiError> {
    let mut params = search_params(s, principal, &r);
    let store = s.store.clone();
    let limits = s.read_limits.query.clone();
    let max_bytes = s.read_limits.max_answer_bytes;
    let max_series = s.read_limits.max_series;
    let body = on_query_pool(s, principal, endpoint, move |alone| {
        let t = Instant::now();
        params.parallel = alone;
        match query::parse_expr_with(&text, &limits).map_err(Failed::Parse)? {
            Expr::Log(query) => {
                let result = store.search(&query, &params).map_err(Failed::Search)?;
                let truncated = result.truncated;
                Ok((render_loki(result, t.elapsed(), max_bytes), truncated))
            }
            Expr::Metric(expr) => {
                let (start, end, step) = steps.unwrap_or((r.end - 1, r.end - 1, 1));
                let mp = MetricParams {
                    start,
                    end,
                    step,
                    subscription: params.subscription.clone(),
                    deadline: params.deadline,
                    max_scanned_bytes: params.max_scanned_bytes,
                    max_series,
                };
                let result =
                    metric::evaluate(store.as_ref(), &expr, &mp).map_err(Failed::Search)?;
                Ok((render_metric(result, t.elapsed(), steps.is_none()), false))
            }
        }
    })
    .await?;
    Ok(json_response(body))
}

/// `GET /loki/api/v1/query_range?query=&start=&end=&step=&limit=&direction=`:
/// a log query answers Loki's `streams`, a metric query its `matrix` (a
/// point at each `start + k * step` up to `end`).
#[tracing::instrument(name = "loki_query_range", skip_all)]
pub async fn query_range(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let principal = s.require(&headers, &READ_ROLES)?;
    let text = query_text(&q)?;
    let r = range_params(&q, schemas::time::now_nanos(), Duration::from_secs(3600))?;
    let end = r.end - 1;
    let step = step_param(&q, r.start, end)?;
    run_expr(
        &s,
        &principal,
        text,
        r.clone(),
        Some((r.start, end, step)),
        "loki_query_range",
    )
    .await
}

/// `GET /loki/api/v1/query?query=&time=&limit=&direction=`: a metric query
/// evaluated at `time` (default now) answers Loki's `vector`; a log query
/// answers `streams` of the hour up to `time` (`since` to widen it).
#[tracing::instrument(name = "loki_query", skip_all)]
pub async fn query(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    QueryParams(mut q): QueryParams<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let principal = s.require(&headers, &READ_ROLES)?;
    let text = query_text(&q)?;
    let time = match q.get("time").map(|t| t.trim()).filter(|t| !t.is_empty()) {
        None => schemas::time::now_nanos(),
        Some(t) => parse_time(t).ok_or_else(|| {
            ApiError::bad_request(
                format!(
                    "cannot parse time={t:?}: expected Unix nanoseconds, Unix seconds or RFC 3339"
                ),
                "time",
            )
        })?,
    };
    q.insert("end".into(), time.to_string());
    q.remove("start");
    let r = range_params(&q, schemas::time::now_nanos(), Duration::from_secs(3600))?;
    run_expr(&s, &principal, text, r, None, "loki_query").await
}

/// The streams any of `selectors` picks for the caller in `r`, each once.
async fn streams_of(
    s: &Arc<AppState>,
    principal: &Principal,
    selectors: Vec<String>,
    r: &RangeParams,
    field: &'static str,
) -> Result<Vec<Arc<StreamInfo>>, ApiError> {
    let store = s.store.clone();
    let limits = s.read_limits.query.clone();
    let sub = principal.subscription().map(str::to_string);
    let (start, end) = (r.start, r.end);
    let foreground = s.foreground.enter(principal.subscription().unwrap_or("*"));
    let result = tokio::task::spawn_blocking(move || {
        let _foreground = foreground;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for sel in &selectors {
            let q = query::parse_with(sel, &limits)?;
            for st in store.select_streams(&q, sub.as_deref(), start, end) {
                if seen.insert(st.id) {
                    out.push(st);
                }
            }
        }
        Ok::<_, query::ParseError>(out)
    })
    .await
    .map_err(|e| ApiError::internal(format!("series task failed: {e}")))?;
    result.map_err(|e| {
        let mut err = parse_error(s, principal, e);
        err.field = Some(field.into());
        err
    })
}

/// Most `match[]` selectors of one `series` request.
const MAX_SERIES_SELECTORS: usize = 64;

/// `GET /loki/api/v1/series?match[]=...&start=&end=`: the label sets of
/// the streams the selectors pick.
pub async fn series(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    QueryParams(q): QueryParams<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let principal = s.require(&headers, &READ_ROLES)?;
    let started = Instant::now();
    let mut selectors = match_params(raw.as_deref().unwrap_or(""));
    if let Some(one) = q.get("match").filter(|m| !m.is_empty()) {
        selectors.push(one.clone());
    }
    if selectors.is_empty() {
        return Err(ApiError::bad_request(
            "at least one match[] selector is required",
            "match[]",
        ));
    }
    if selectors.len() > MAX_SERIES_SELECTORS {
        return Err(ApiError::bad_request(
            format!("at most {MAX_SERIES_SELECTORS} match[] selectors"),
            "match[]",
        )
        .with("limit", json!(MAX_SERIES_SELECTORS)));
    }
    let r = range_params(&q, schemas::time::now_nanos(), Duration::from_secs(3600))?;
    let streams = streams_of(&s, &principal, selectors, &r, "match[]").await?;
    let mut sets: Vec<&BTreeMap<String, String>> =
        streams.iter().map(|st| st.labels.as_ref()).collect();
    sets.sort();
    s.metrics
        .query_duration
        .get_or_create(&crate::telemetry::EndpointLabel {
            endpoint: "loki_series",
        })
        .observe(started.elapsed().as_secs_f64());
    Ok(Json(json!({"status": "success", "data": sets})))
}

/// Records and line bytes of `stream` in `[start, end)`: from the volume
/// index over the 10 s buckets that meet the range (so the edges round
/// out to whole buckets), else by reading the records. Also the number
/// of buckets with records.
pub(super) fn stream_volume(
    store: &dyn crate::logs::LogStore,
    stream: &Arc<StreamInfo>,
    start: i64,
    end: i64,
    scan: &ScanParams,
) -> Result<(u64, u64, u64), query::SearchError> {
    let w = VOLUME_BUCKET_NS;
    let lo = start.div_euclid(w) * w;
    let hi = end.saturating_add(w - 1).div_euclid(w) * w;
    if let Some(buckets) = store.volume(stream, lo, hi).transpose()? {
        let (mut n, mut b) = (0, 0);
        for x in &buckets {
            n += x.records;
            b += x.bytes;
        }
        return Ok((n, b, buckets.len() as u64));
    }
    let all = Query {
        matchers: Vec::new(),
        stages: Vec::new(),
    };
    let (mut n, mut b) = (0u64, 0u64);
    let mut buckets = HashSet::new();
    store.scan_matches(
        &all,
        std::slice::from_ref(stream),
        scan,
        &mut |m: MatchedRecord<'_>| {
            n += 1;
            b += m.line.len() as u64;
            buckets.insert((m.ts - 1).div_euclid(w));
            true
        },
    )?;
    Ok((n, b, buckets.len() as u64))
}

/// Per stream: (labels, records, bytes, buckets) in the request's range.
async fn volumes(
    s: &Arc<AppState>,
    principal: &Principal,
    q: &HashMap<String, String>,
    endpoint: &'static str,
) -> Result<Vec<(Arc<StreamInfo>, u64, u64, u64)>, ApiError> {
    let text = query_text(q)?;
    let r = range_params(q, schemas::time::now_nanos(), Duration::from_secs(3600))?;
    let streams = streams_of(s, principal, vec![text], &r, "query").await?;
    let store = s.store.clone();
    let scan = ScanParams {
        start: r.start,
        end: r.end,
        deadline: Instant::now() + s.query_timeout,
        max_scanned_bytes: s.read_limits.max_scanned_bytes,
    };
    let out = Arc::new(std::sync::Mutex::new(Vec::new()));
    let out2 = out.clone();
    let _empty = on_query_pool(s, principal, endpoint, move |_| {
        let mut v = Vec::with_capacity(streams.len());
        for st in streams {
            let (n, b, c) = stream_volume(store.as_ref(), &st, r.start, r.end, &scan)
                .map_err(Failed::Search)?;
            v.push((st, n, b, c));
        }
        *out2.lock().unwrap_or_else(|p| p.into_inner()) = v;
        Ok((Vec::new(), false))
    })
    .await?;
    let v = std::mem::take(&mut *out.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(v)
}

/// `GET /loki/api/v1/index/stats?query={...}&start=&end=`: streams,
/// chunks (10 s buckets with records), entries and bytes the selector
/// covers.
pub async fn index_stats(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let principal = s.require(&headers, &READ_ROLES)?;
    let v = volumes(&s, &principal, &q, "loki_index_stats").await?;
    let streams = v.iter().filter(|x| x.1 > 0).count();
    let (entries, bytes, chunks) = v
        .iter()
        .fold((0u64, 0u64, 0u64), |a, x| (a.0 + x.1, a.1 + x.2, a.2 + x.3));
    Ok(Json(json!({
        "streams": streams,
        "chunks": chunks,
        "entries": entries,
        "bytes": bytes,
    })))
}

/// Largest `limit` of `index/volume`.
const MAX_VOLUME_LIMIT: usize = 10_000;

/// `GET /loki/api/v1/index/volume?query={...}&start=&end=&limit=&targetLabels=&aggregateBy=`:
/// bytes per label set, largest first, in Loki's `vector` shape. The
/// label set is `targetLabels` (comma-separated), else the labels the
/// selector names; `aggregateBy=series` keeps every label.
pub async fn index_volume(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let principal = s.require(&headers, &READ_ROLES)?;
    let limit = match q.get("limit").filter(|l| !l.is_empty()) {
        None => 100,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_VOLUME_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    format!("limit={l:?}: expected a whole number from 1 to {MAX_VOLUME_LIMIT}"),
                    "limit",
                ))
            }
        },
    };
    let by_series = match q.get("aggregateBy").map(String::as_str) {
        None | Some("") | Some("labels") => false,
        Some("series") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                format!("aggregateBy={other:?}: expected series or labels"),
                "aggregateBy",
            ))
        }
    };
    let text = query_text(&q)?;
    let target: Vec<String> = match q.get("targetLabels").filter(|t| !t.trim().is_empty()) {
        Some(t) => t
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect(),
        None => query::parse_with(&text, &s.read_limits.query)
            .map_err(|e| parse_error(&s, &principal, e))?
            .matchers
            .iter()
            .map(|m| m.name.clone())
            .collect(),
    };
    let v = volumes(&s, &principal, &q, "loki_index_volume").await?;
    let mut groups: HashMap<BTreeMap<String, String>, u64> = HashMap::new();
    for (st, n, b, _) in &v {
        if *n == 0 {
            continue;
        }
        let key: BTreeMap<String, String> = if by_series {
            (*st.labels).clone()
        } else {
            st.labels
                .iter()
                .filter(|(k, _)| target.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        *groups.entry(key).or_insert(0) += b;
    }
    let mut groups: Vec<(BTreeMap<String, String>, u64)> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    groups.truncate(limit);
    let end = range_params(&q, schemas::time::now_nanos(), Duration::from_secs(3600))?.end - 1;
    let result = MetricResult {
        series: groups
            .into_iter()
            .map(|(labels, b)| metric::Series {
                labels,
                points: vec![(end, b as f64)],
            })
            .collect(),
        ..MetricResult::default()
    };
    let body = render_metric(result, Duration::ZERO, true);
    Ok(json_response(super::answer::chunks_body(body, None)))
}

/// Longest `delay_for` of a tail (Loki's limit).
const MAX_TAIL_DELAY_SECS: u64 = 5;

/// A tail message in Loki's shape.
fn tail_message(entries: &[TailEntry], dropped: u64) -> String {
    let mut groups: Vec<(&BTreeMap<String, String>, Vec<&TailEntry>)> = Vec::new();
    for e in entries {
        match groups.iter_mut().find(|(l, _)| *l == &e.labels) {
            Some((_, v)) => v.push(e),
            None => groups.push((&e.labels, vec![e])),
        }
    }
    let mut buf = Vec::with_capacity(1024);
    buf.extend_from_slice(b"{\"streams\":[");
    for (i, (labels, es)) in groups.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(b"{\"stream\":");
        let _ = serde_json::to_writer(&mut buf, labels);
        buf.extend_from_slice(b",\"values\":[");
        for (j, e) in es.iter().enumerate() {
            if j > 0 {
                buf.push(b',');
            }
            buf.extend_from_slice(format!("[\"{}\",", e.ts).as_bytes());
            push_json_str(&mut buf, &String::from_utf8_lossy(&e.line));
            buf.push(b']');
        }
        buf.extend_from_slice(b"]}");
    }
    buf.push(b']');
    if dropped > 0 {
        // Loki lists the dropped entries; a tail that fell behind here
        // knows only how many commit groups it skipped.
        buf.extend_from_slice(
            format!(",\"dropped_entries\":[],\"dropped_commit_groups\":{dropped}").as_bytes(),
        );
    }
    buf.push(b'}');
    String::from_utf8_lossy(&buf).into_owned()
}

/// `GET /loki/api/v1/tail?query=&limit=&start=&delay_for=` (WebSocket):
/// first the newest `limit` records since `start` (default an hour ago),
/// oldest first, then every new record that passes the query within
/// moments of being stored, in Loki's tail message shape.
pub async fn tail(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let principal = s.require(&headers, &READ_ROLES)?;
    let text = query_text(&q)?;
    if let Some(d) = q.get("delay_for").filter(|d| !d.is_empty()) {
        match d.parse::<u64>() {
            Ok(n) if n <= MAX_TAIL_DELAY_SECS => {}
            _ => {
                return Err(ApiError::bad_request(
                    format!(
                        "delay_for={d:?}: expected whole seconds from 0 to {MAX_TAIL_DELAY_SECS}"
                    ),
                    "delay_for",
                ))
            }
        }
    }
    let now = schemas::time::now_nanos();
    let mut hq = q.clone();
    hq.remove("end");
    hq.insert("direction".into(), "backward".into());
    let r = range_params(&hq, now, Duration::from_secs(3600))?;
    let limits = s.read_limits.query.clone();
    let query = tokio::task::spawn_blocking(move || query::parse_with(&text, &limits))
        .await
        .map_err(|e| ApiError::internal(format!("parse task failed: {e}")))?
        .map_err(|e| parse_error(&s, &principal, e))?;
    let ws = ws.map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::UPGRADE_REQUIRED,
            format!("the tail speaks WebSocket: {e}"),
        )
    })?;
    let sub = principal.subscription().map(str::to_string);
    // Open before the history is read: nothing committed in between is
    // missed (what both carry is sent once).
    let mut tail = s.tails.open(sub.as_deref().unwrap_or("*")).map_err(|e| {
        s.metrics.refuse_query("tails");
        let limit = match e {
            TailError::Total { limit } | TailError::Subscription { limit } => limit,
        };
        ApiError::new(axum::http::StatusCode::TOO_MANY_REQUESTS, e.to_string())
            .with("reason", json!("tails"))
            .with("limit", json!(limit))
            .retry_after(super::RETRY_AFTER_SECS)
    })?;
    let params: SearchParams = search_params(&s, &principal, &r);
    let store = s.store.clone();
    let q2 = query.clone();
    let history = if r.limit == 0 {
        Vec::new()
    } else {
        let result = tokio::task::spawn_blocking(move || store.search(&q2, &params))
            .await
            .map_err(|e| ApiError::internal(format!("tail history task failed: {e}")))?
            .map_err(|e| super::logs::failed(&s, &principal, Failed::Search(e)))?;
        let mut v: Vec<TailEntry> = result
            .hits
            .into_iter()
            .map(|h| {
                let mut labels = (*h.stream.labels).clone();
                for (k, v) in h.extracted.unwrap_or_default() {
                    labels.insert(k, v);
                }
                TailEntry {
                    source: h.stream.labels.get("source").cloned().unwrap_or_default(),
                    labels,
                    ts: h.ts,
                    seq: h.seq,
                    line: h.line,
                }
            })
            .collect();
        v.reverse();
        v
    };
    let metrics = s.metrics.clone();
    Ok(ws
        .on_upgrade(move |socket| async move {
            metrics
                .query_duration
                .get_or_create(&crate::telemetry::EndpointLabel {
                    endpoint: "loki_tail",
                })
                .observe(0.0);
            run_tail(socket, &mut tail, history, query, sub).await;
        })
        .into_response())
}

async fn run_tail(
    mut socket: WebSocket,
    tail: &mut crate::logs::tail::Tail,
    history: Vec<TailEntry>,
    query: Query,
    sub: Option<String>,
) {
    let sent: HashSet<(String, u64, i64)> = history
        .iter()
        .map(|e| (e.source.clone(), e.seq, e.ts))
        .collect();
    if !history.is_empty()
        && socket
            .send(Message::Text(Utf8Bytes::from(tail_message(&history, 0))))
            .await
            .is_err()
    {
        return;
    }
    let mut ping = tokio::time::interval(Duration::from_secs(30));
    ping.tick().await;
    loop {
        tokio::select! {
            ev = tail.next() => {
                let (entries, dropped) = match ev {
                    TailEvent::Records(records) => {
                        let mut e = matching(&records, sub.as_deref(), &query);
                        if !sent.is_empty() {
                            e.retain(|x| !sent.contains(&(x.source.clone(), x.seq, x.ts)));
                        }
                        (e, 0)
                    }
                    TailEvent::Dropped(n) => (Vec::new(), n),
                    TailEvent::Closed => break,
                };
                if entries.is_empty() && dropped == 0 {
                    continue;
                }
                let msg = tail_message(&entries, dropped);
                if socket.send(Message::Text(Utf8Bytes::from(msg))).await.is_err() {
                    break;
                }
            }
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

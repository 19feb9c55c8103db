//! The logs endpoints: `POST /api/v1/ingest`, `GET /api/v1/logs` and the
//! Loki-compatible ones. Validation, storage and search are the logs
//! domain's (`crate::logs`); here are admission, the answers and the
//! mapping of errors to statuses.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use schemas::IngestResponse;

use super::admission::{self, admit, Spec};
use super::answer::{chunks_body, json_list, push_json_str, push_raw_line, Background};
use super::params::{range_params, RangeParams};
use super::{ApiError, AppState, RETRY_AFTER_SECS};
use crate::auth::{Principal, Role};
use crate::logs::ingest::{decode, decompress, prepare, IngestError};
use crate::logs::query::pool::{self, PoolError};
use crate::logs::query::{self, Hit, ParseError, Query, SearchError, SearchParams, SearchResult};
use crate::logs::StoreError;
use crate::telemetry::EndpointLabel;

pub(super) const READ_ROLES: [Role; 2] = [Role::Operator, Role::Admin];

/// Answers larger than this stream as background answers (see
/// `answer::Background`).
const BACKGROUND_ANSWER_BYTES: usize = 1 << 20;

/// A Loki stream of an answer: its labels and its (time, line) values.
type LokiStream = (BTreeMap<String, String>, Vec<(i64, Vec<u8>)>);

pub(super) fn query_text(q: &HashMap<String, String>) -> Result<String, ApiError> {
    q.get("query")
        .filter(|s| !s.trim().is_empty())
        .cloned()
        .ok_or_else(|| ApiError::bad_request("missing query", "query"))
}

/// The 400 of a query that does not parse or passes a bound; counted by
/// reason.
pub(super) fn parse_error(s: &AppState, principal: &Principal, e: ParseError) -> ApiError {
    s.metrics.refuse_query(e.reason);
    if e.reason != "syntax" {
        if let Some(sub) = principal.subscription() {
            s.metrics.refuse_tenant(sub, "query_limit");
        }
    }
    ApiError::bad_request(e.to_string(), "query")
        .with("column", json!(e.column))
        .with("expected", json!(e.expected))
        .with("reason", json!(e.reason))
}

pub(super) enum Failed {
    Parse(ParseError),
    Search(SearchError),
}

/// What a job on the query pool produced: the answer's chunks, whether it
/// was cut at the answer limit.
pub(super) type Answer = (Vec<Bytes>, bool);

/// Runs `job` on a query thread (niced, with the subscription's slot; see
/// `query::pool`): regexes are compiled and the answer is written there,
/// never on the async workers. `job` gets whether it runs alone (and may
/// use two threads).
pub(super) async fn on_query_pool<J>(
    s: &Arc<AppState>,
    principal: &Principal,
    endpoint: &'static str,
    job: J,
) -> Result<Body, ApiError>
where
    J: FnOnce(bool) -> Result<Answer, Failed> + Send + 'static,
{
    let started = Instant::now();
    let key = principal.subscription().unwrap_or("*").to_string();
    let result = s
        .query_pool
        .run(&key, s.query_timeout, move |alone| {
            job(alone).map(|(chunks, truncated)| (chunks, truncated, pool::demoted()))
        })
        .await
        .map_err(|e| match e {
            PoolError::Busy(wait) => {
                s.metrics.refuse_query("busy");
                s.metrics.refuse_tenant(&key, "busy");
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "this subscription's queries took every slot it may use for {wait:?} (--max-concurrent-queries-per-subscription); retry later"
                    ),
                )
                .with("reason", json!("busy"))
                .retry_after(super::RETRY_AFTER_SECS)
            }
            PoolError::Stopped => ApiError::unavailable("shutting down"),
        })?;
    s.metrics
        .query_duration
        .get_or_create(&EndpointLabel { endpoint })
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok((chunks, truncated, background)) => {
            if truncated {
                s.metrics
                    .answers_truncated
                    .get_or_create(&EndpointLabel { endpoint })
                    .inc();
            }
            // A search demoted to the background, or an answer over
            // BACKGROUND_ANSWER_BYTES (a bulk transfer however fast it was
            // found), streams as background.
            let bytes: usize = chunks.iter().map(Bytes::len).sum();
            let background = (background || bytes > BACKGROUND_ANSWER_BYTES).then(|| Background {
                gate: s.foreground.clone(),
                max_pause: s.read_limits.query_max_pause,
                subscription: key.clone(),
            });
            Ok(chunks_body(chunks, background))
        }
        Err(e) => Err(failed(s, principal, e)),
    }
}

/// The answer to a query that failed.
pub(super) fn failed(s: &AppState, principal: &Principal, e: Failed) -> ApiError {
    match e {
        Failed::Parse(e) => parse_error(s, principal, e),
        Failed::Search(SearchError::Timeout) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            SearchError::Timeout.to_string(),
        )
        .with_field("query"),
        Failed::Search(e @ SearchError::ScanLimit(limit)) => {
            s.metrics.refuse_query("scan_limit");
            ApiError::bad_request(e.to_string(), "query")
                .with("reason", json!("scan_limit"))
                .with("limit", json!(limit))
        }
        Failed::Search(e @ SearchError::TooManySeries(limit)) => {
            s.metrics.refuse_query("too_many_series");
            ApiError::bad_request(e.to_string(), "query")
                .with("reason", json!("too_many_series"))
                .with("limit", json!(limit))
        }
        Failed::Search(e @ (SearchError::Store(_) | SearchError::Panicked)) => {
            ApiError::internal(e.to_string())
        }
    }
}

/// The search parameters of a request.
pub(super) fn search_params(s: &AppState, principal: &Principal, r: &RangeParams) -> SearchParams {
    SearchParams {
        start: r.start,
        end: r.end,
        limit: r.limit,
        backward: r.backward,
        subscription: principal.subscription().map(str::to_string),
        deadline: Instant::now() + s.query_timeout,
        max_bytes: s.read_limits.max_answer_bytes,
        parallel: false,
        max_scanned_bytes: s.read_limits.max_scanned_bytes,
    }
}

/// Parses, runs and renders a log search on a query thread.
async fn run_search<R>(
    s: &Arc<AppState>,
    principal: &Principal,
    text: String,
    r: &RangeParams,
    endpoint: &'static str,
    render: R,
) -> Result<Body, ApiError>
where
    R: FnOnce(SearchResult, Duration, usize) -> Vec<Bytes> + Send + 'static,
{
    let mut params = search_params(s, principal, r);
    let store = s.store.clone();
    let limits = s.read_limits.query.clone();
    let max_bytes = s.read_limits.max_answer_bytes;
    on_query_pool(s, principal, endpoint, move |alone| {
        let t = Instant::now();
        params.parallel = alone;
        let query = query::parse_with(&text, &limits).map_err(Failed::Parse)?;
        let result = store.search(&query, &params).map_err(Failed::Search)?;
        let truncated = result.truncated;
        Ok((render(result, t.elapsed(), max_bytes), truncated))
    })
    .await
}

fn stats(r: &SearchResult, took: Duration, max_bytes: usize) -> Value {
    json!({
        "streams": r.streams,
        "scanned_records": r.scanned,
        "scanned_bytes": r.scanned_bytes,
        "returned": r.hits.len(),
        "returned_bytes": r.bytes,
        "truncated": r.truncated,
        "max_answer_bytes": max_bytes,
        "duration_seconds": took.as_secs_f64(),
    })
}

pub(super) fn json_response(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// One record of `/api/v1/logs`, the stored line copied as its body.
fn write_record(buf: &mut Vec<u8>, h: Hit) {
    let l = &h.stream.labels;
    let label = |k: &str| l.get(k).map(String::as_str).unwrap_or("");
    buf.extend_from_slice(format!("{{\"ts\":{},\"time\":", h.ts).as_bytes());
    push_json_str(buf, &schemas::time::rfc3339_from_nanos(h.ts));
    buf.extend_from_slice(format!(",\"seq\":{},\"subscription\":", h.seq).as_bytes());
    push_json_str(buf, label("subscription"));
    buf.extend_from_slice(b",\"source\":");
    push_json_str(buf, label("source"));
    buf.extend_from_slice(b",\"kind\":");
    push_json_str(buf, label("kind"));
    buf.extend_from_slice(b",\"labels\":");
    let _ = serde_json::to_writer(&mut *buf, l.as_ref());
    buf.extend_from_slice(b",\"body\":");
    push_raw_line(buf, &h.line);
    if let Some(fields) = &h.extracted {
        let map: BTreeMap<&str, &str> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        buf.extend_from_slice(b",\"fields\":");
        let _ = serde_json::to_writer(&mut *buf, &map);
    }
    buf.push(b'}');
}

fn render_logs(mut result: SearchResult, took: Duration, max_bytes: usize) -> Vec<Bytes> {
    let tail = format!("],\"stats\":{}}}", stats(&result, took, max_bytes));
    let hits = std::mem::take(&mut result.hits);
    json_list(
        "{\"status\":\"success\",\"records\":[".to_string(),
        hits,
        tail,
        write_record,
    )
}

/// `GET /api/v1/logs?query=&start=&end=&limit=&direction=&since=`
///
/// The answer holds at most `--max-answer-bytes` of lines; a cut answer
/// says `"truncated": true` in its stats (page on with the last time).
#[tracing::instrument(name = "logs", skip_all)]
pub async fn logs(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let principal = s.require(&headers, &READ_ROLES)?;
    let text = query_text(&q)?;
    let r = range_params(&q, schemas::time::now_nanos(), Duration::from_secs(3600))?;
    let chunks = run_search(&s, &principal, text, &r, "logs", render_logs).await?;
    Ok(json_response(chunks))
}

pub(super) fn render_loki(
    mut result: SearchResult,
    took: Duration,
    _max_bytes: usize,
) -> Vec<Bytes> {
    // Group by the full label set (stream labels plus extracted fields, as
    // Loki does), keeping the order of first appearance.
    let hits = std::mem::take(&mut result.hits);
    let mut order: Vec<LokiStream> = Vec::new();
    let mut index: HashMap<BTreeMap<String, String>, usize> = HashMap::new();
    for h in hits {
        let mut labels: BTreeMap<String, String> = (*h.stream.labels).clone();
        if let Some(fields) = h.extracted {
            for (k, v) in fields {
                labels.insert(k, v);
            }
        }
        let i = match index.get(&labels) {
            Some(i) => *i,
            None => {
                index.insert(labels.clone(), order.len());
                order.push((labels, Vec::new()));
                order.len() - 1
            }
        };
        order[i].1.push((h.ts, h.line));
    }
    drop(index);
    let entries: usize = order.iter().map(|(_, v)| v.len()).sum();
    let tail = format!(
        "],\"stats\":{{\"summary\":{}}},\"truncated\":{}}}}}",
        json!({
            "totalEntriesReturned": entries,
            "totalLinesProcessed": result.scanned,
            "totalBytesProcessed": result.scanned_bytes,
            "execTime": took.as_secs_f64(),
        }),
        result.truncated
    );
    json_list(
        "{\"status\":\"success\",\"data\":{\"resultType\":\"streams\",\"result\":[".to_string(),
        order,
        tail,
        |buf: &mut Vec<u8>, (labels, values): LokiStream| {
            buf.extend_from_slice(b"{\"stream\":");
            let _ = serde_json::to_writer(&mut *buf, &labels);
            buf.extend_from_slice(b",\"values\":[");
            for (i, (ts, line)) in values.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                buf.extend_from_slice(format!("[\"{ts}\",").as_bytes());
                push_json_str(buf, &String::from_utf8_lossy(line));
                buf.push(b']');
            }
            buf.extend_from_slice(b"]}");
        },
    )
}

/// Streams visible to the caller in the request's range (Loki's default
/// for label queries: the last 6 hours), optionally narrowed by `query`.
/// Runs on the blocking pool (the query's regexes are compiled there).
async fn label_streams(
    s: &Arc<AppState>,
    principal: &Principal,
    q: &HashMap<String, String>,
) -> Result<Vec<Arc<crate::logs::StreamInfo>>, ApiError> {
    let r = range_params(q, schemas::time::now_nanos(), Duration::from_secs(6 * 3600))?;
    let text = q.get("query").filter(|s| !s.trim().is_empty()).cloned();
    let store = s.store.clone();
    let limits = s.read_limits.query.clone();
    let sub = principal.subscription().map(str::to_string);
    let foreground = s.foreground.enter(principal.subscription().unwrap_or("*"));
    let result = tokio::task::spawn_blocking(move || {
        let _foreground = foreground;
        let query = match text {
            Some(t) => query::parse_with(&t, &limits)?,
            None => Query {
                matchers: Vec::new(),
                stages: Vec::new(),
            },
        };
        Ok::<_, ParseError>(store.select_streams(&query, sub.as_deref(), r.start, r.end))
    })
    .await
    .map_err(|e| ApiError::internal(format!("label task failed: {e}")))?;
    result.map_err(|e| parse_error(s, principal, e))
}

/// `GET /loki/api/v1/labels`
pub async fn loki_labels(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let principal = s.require(&headers, &READ_ROLES)?;
    let started = Instant::now();
    let names: BTreeSet<String> = label_streams(&s, &principal, &q)
        .await?
        .iter()
        .flat_map(|st| st.labels.keys().cloned().collect::<Vec<_>>())
        .collect();
    s.metrics
        .query_duration
        .get_or_create(&EndpointLabel { endpoint: "labels" })
        .observe(started.elapsed().as_secs_f64());
    Ok(Json(json!({"status": "success", "data": names})))
}

/// `GET /loki/api/v1/label/{name}/values`
pub async fn loki_label_values(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let principal = s.require(&headers, &READ_ROLES)?;
    let started = Instant::now();
    let values: BTreeSet<String> = label_streams(&s, &principal, &q)
        .await?
        .iter()
        .filter_map(|st| st.labels.get(&name).cloned())
        .collect();
    s.metrics
        .query_duration
        .get_or_create(&EndpointLabel {
            endpoint: "label_values",
        })
        .observe(started.elapsed().as_secs_f64());
    Ok(Json(json!({"status": "success", "data": values})))
}

enum Refused {
    Invalid(IngestError),
    Subscription(String),
    Source(String),
}

fn ingest_error(e: &IngestError) -> ApiError {
    let status = match e {
        IngestError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        e if e.is_too_large() => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut err = ApiError::new(status, e.to_string()).with_field(e.field());
    if let Some(i) = e.index() {
        err = err.with("index", json!(i));
    }
    err
}

fn msgpack(ct: &str) -> bool {
    ct.is_empty()
        || ct.starts_with("application/msgpack")
        || ct.starts_with("application/x-msgpack")
        || ct.starts_with("application/vnd.msgpack")
        || ct.starts_with("application/octet-stream")
}

const SPEC: Spec = Spec {
    what: "ingest",
    content_type: msgpack,
    want: "MessagePack (application/msgpack)",
};

#[tracing::instrument(name = "ingest", skip_all)]
pub async fn ingest(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestResponse>, ApiError> {
    let m = &s.metrics;
    let admitted = admit(&s, &headers, body, SPEC, |r| m.reject(r)).await?;
    let principal = admitted.principal.clone();
    let bytes = admitted.body.clone();
    let encoding = headers
        .get(axum::http::header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").to_string());
    let received = bytes.len() as u64;

    // Decompression, decoding and validation are CPU work: off the reactor.
    let state = s.clone();
    let keep = s.store.wants_records();
    let p = principal.clone();
    // A compressed body is decompressed first (fast, at the collector's
    // priority): the rest of the work is in proportion to what it expands
    // to, which decides the lane (`admission::decode_sized`).
    let identity = encoding
        .as_deref()
        .is_none_or(|e| e.trim().eq_ignore_ascii_case("identity"));
    let raw: Bytes = if identity {
        bytes
    } else {
        let limit = s.limits.max_decompressed_bytes;
        let unpack = move || {
            decompress(encoding.as_deref(), &bytes, limit).map(|c| Bytes::from(c.into_owned()))
        };
        match admission::decode(&s, &admitted, |r| m.reject(r), unpack).await? {
            Ok(raw) => raw,
            Err(e) => {
                m.reject(e.reason());
                return Err(ingest_error(&e));
            }
        }
    };
    let size = raw.len();
    let job = move || {
        let decoded = decode(&raw, state.limits.max_records).map_err(Refused::Invalid)?;
        if !p.covers(&decoded.subscription) {
            return Err(Refused::Subscription(decoded.subscription));
        }
        if !p.may_write_source(&decoded.source) {
            return Err(Refused::Source(decoded.source));
        }
        let now = schemas::time::now_nanos();
        let window = state
            .limits
            .accept_past
            .min(state.retention.for_subscription(&decoded.subscription));
        let oldest = now.saturating_sub(i64::try_from(window.as_nanos()).unwrap_or(i64::MAX));
        let mut batch =
            prepare(decoded, &state.limits, now, oldest, keep).map_err(Refused::Invalid)?;
        state.store.stage(&mut batch);
        Ok(batch)
    };
    let decoded = admission::decode_sized(&s, &admitted, size, |r| m.reject(r), job).await?;
    let prepared = decoded.map_err(|r| match r {
        Refused::Invalid(e) => {
            m.reject(e.reason());
            ingest_error(&e)
        }
        Refused::Subscription(sub) => {
            m.reject("subscription_mismatch");
            if let Some(own) = principal.subscription() {
                m.refuse_tenant(own, "subscription_mismatch");
            }
            ApiError::forbidden(format!(
                "this token may not ingest for subscription {sub:?}"
            ))
            .with_field("subscription")
        }
        Refused::Source(source) => {
            m.reject("source_forbidden");
            if let Some(own) = principal.subscription() {
                m.refuse_tenant(own, "source_forbidden");
            }
            ApiError::forbidden(format!(
                "this token may only write the sources {:?} of its tokens file entry, not {source:?}",
                principal.sources.as_deref().unwrap_or_default()
            ))
            .with_field("source")
        }
    })?;

    let rx = match s.store.try_ingest(prepared) {
        Ok(rx) => rx,
        Err(StoreError::Busy) => {
            m.reject("busy");
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "write queue is full; retry later",
            )
            .with("reason", json!("busy"))
            .retry_after(RETRY_AFTER_SECS));
        }
        Err(e) => {
            m.reject("unavailable");
            return Err(ApiError::unavailable(e.to_string()).retry_after(RETRY_AFTER_SECS));
        }
    };
    let outcome = rx
        .await
        .unwrap_or(Err(StoreError::Closed))
        .map_err(|e| match &e {
            StoreError::SourceConflict { field, .. } => {
                m.reject("source_conflict");
                ApiError::new(StatusCode::CONFLICT, e.to_string())
                    .with_field(field.clone())
                    .with("reason", json!("source_conflict"))
            }
            StoreError::SourceLimit { limit, .. } => {
                m.reject("source_limit");
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string())
                    .with_field("source")
                    .with("reason", json!("source_limit"))
                    .with("limit", json!(*limit))
                    .retry_after(60)
            }
            e => {
                m.reject("storage");
                tracing::error!(error = %e, "ingest not stored");
                ApiError::unavailable(format!("not stored: {e}")).retry_after(RETRY_AFTER_SECS)
            }
        })?;
    drop(admitted.slot);
    drop(admitted.reservation);
    m.ingest_batches.inc();
    m.ingest_bytes.inc_by(received);
    Ok(Json(IngestResponse {
        accepted: outcome.accepted,
        duplicates: outcome.duplicates,
    }))
}

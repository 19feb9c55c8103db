//! Search endpoints: `/api/v1/logs` and the Loki-compatible ones.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::params::{range_params, RangeParams};
use super::{ApiError, AppState};
use crate::auth::{Principal, Role};
use crate::metrics::EndpointLabel;
use crate::query::{self, Hit, Query, SearchError, SearchParams, SearchResult};

const READ_ROLES: [Role; 2] = [Role::Operator, Role::Admin];

fn parse_query(q: &HashMap<String, String>) -> Result<Query, ApiError> {
    let text = q
        .get("query")
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("missing query", "query"))?;
    query::parse(text).map_err(|e| {
        ApiError::bad_request(e.to_string(), "query")
            .with("column", json!(e.column))
            .with("expected", json!(e.expected))
    })
}

/// Runs a search on the blocking pool, bounded by the query slots.
async fn run_search(
    s: &Arc<AppState>,
    principal: &Principal,
    query: Query,
    r: &RangeParams,
    endpoint: &'static str,
) -> Result<(SearchResult, Duration), ApiError> {
    let _permit = s
        .query_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::unavailable("shutting down"))?;
    let params = SearchParams {
        start: r.start,
        end: r.end,
        limit: r.limit,
        backward: r.backward,
        subscription: principal.subscription().map(str::to_string),
        deadline: Instant::now() + s.query_timeout,
    };
    let store = s.store.clone();
    let started = Instant::now();
    let result = tokio::task::spawn_blocking(move || query::search(&store, &query, &params))
        .await
        .map_err(|e| ApiError::internal(format!("search task failed: {e}")))?;
    let took = started.elapsed();
    s.metrics
        .query_duration
        .get_or_create(&EndpointLabel { endpoint })
        .observe(took.as_secs_f64());
    match result {
        Ok(r) => Ok((r, took)),
        Err(SearchError::Timeout) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            SearchError::Timeout.to_string(),
        )
        .with_field("query")),
        Err(e @ (SearchError::Store(_) | SearchError::Panicked)) => {
            Err(ApiError::internal(e.to_string()))
        }
    }
}

fn line_str(h: &Hit) -> String {
    String::from_utf8_lossy(&h.line).into_owned()
}

fn stats(r: &SearchResult, took: Duration) -> Value {
    json!({
        "streams": r.streams,
        "scanned_records": r.scanned,
        "scanned_bytes": r.scanned_bytes,
        "returned": r.hits.len(),
        "duration_seconds": took.as_secs_f64(),
    })
}

/// `GET /api/v1/logs?query=&start=&end=&limit=&direction=&since=`
#[tracing::instrument(name = "logs", skip_all)]
pub async fn logs(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let principal = s.require(&headers, &READ_ROLES)?;
    let query = parse_query(&q)?;
    let r = range_params(&q, schemas::time::now_nanos(), Duration::from_secs(3600))?;
    let (result, took) = run_search(&s, &principal, query, &r, "logs").await?;
    let records: Vec<Value> = result
        .hits
        .iter()
        .map(|h| {
            let body: Value = serde_json::from_slice(&h.line).unwrap_or(Value::Null);
            let l = &h.stream.labels;
            let mut rec = json!({
                "ts": h.ts,
                "time": schemas::time::rfc3339_from_nanos(h.ts),
                "seq": h.seq,
                "subscription": l.get("subscription"),
                "source": l.get("source"),
                "kind": l.get("kind"),
                "labels": l.as_ref(),
                "body": body,
            });
            if let Some(fields) = &h.extracted {
                let map: BTreeMap<&str, &str> = fields
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                rec["fields"] = json!(map);
            }
            rec
        })
        .collect();
    Ok(Json(json!({
        "status": "success",
        "records": records,
        "stats": stats(&result, took),
    })))
}

/// `GET /loki/api/v1/query_range`: Loki's streams result.
#[tracing::instrument(name = "loki_query_range", skip_all)]
pub async fn loki_query_range(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let principal = s.require(&headers, &READ_ROLES)?;
    let query = parse_query(&q)?;
    let r = range_params(&q, schemas::time::now_nanos(), Duration::from_secs(3600))?;
    let (result, took) = run_search(&s, &principal, query, &r, "loki_query_range").await?;
    // Group by the full label set (stream labels plus extracted fields, as
    // Loki does), keeping the order of first appearance.
    let mut order: Vec<BTreeMap<String, String>> = Vec::new();
    let mut groups: HashMap<BTreeMap<String, String>, Vec<Value>> = HashMap::new();
    for h in &result.hits {
        let mut labels: BTreeMap<String, String> = (*h.stream.labels).clone();
        if let Some(fields) = &h.extracted {
            for (k, v) in fields {
                labels.insert(k.clone(), v.clone());
            }
        }
        let entry = json!([h.ts.to_string(), line_str(h)]);
        match groups.get_mut(&labels) {
            Some(v) => v.push(entry),
            None => {
                order.push(labels.clone());
                groups.insert(labels, vec![entry]);
            }
        }
    }
    let streams: Vec<Value> = order
        .into_iter()
        .map(|labels| {
            let values = groups.remove(&labels).unwrap_or_default();
            json!({"stream": labels, "values": values})
        })
        .collect();
    Ok(Json(json!({
        "status": "success",
        "data": {
            "resultType": "streams",
            "result": streams,
            "stats": {
                "summary": {
                    "totalEntriesReturned": result.hits.len(),
                    "totalLinesProcessed": result.scanned,
                    "totalBytesProcessed": result.scanned_bytes,
                    "execTime": took.as_secs_f64(),
                }
            }
        }
    })))
}

/// Streams visible to the caller in the request's range (Loki's default
/// for label queries: the last 6 hours), optionally narrowed by `query`.
fn label_streams(
    s: &AppState,
    principal: &Principal,
    q: &HashMap<String, String>,
) -> Result<Vec<Arc<crate::store::StreamInfo>>, ApiError> {
    let r = range_params(q, schemas::time::now_nanos(), Duration::from_secs(6 * 3600))?;
    let query = match q.get("query").filter(|s| !s.trim().is_empty()) {
        Some(_) => parse_query(q)?,
        None => Query {
            matchers: Vec::new(),
            stages: Vec::new(),
        },
    };
    Ok(query::select_streams(
        &s.store,
        &query,
        principal.subscription(),
        r.start,
        r.end,
    ))
}

/// `GET /loki/api/v1/labels`
pub async fn loki_labels(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let principal = s.require(&headers, &READ_ROLES)?;
    let started = Instant::now();
    let names: BTreeSet<String> = label_streams(&s, &principal, &q)?
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
    let values: BTreeSet<String> = label_streams(&s, &principal, &q)?
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

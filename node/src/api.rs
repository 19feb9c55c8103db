//! The service API under `/api`, with the JSON shapes of Sesam's node API.
//!
//! Every route except `/api/health` and `/api/ping` requires
//! `Authorization: Bearer <token>` when the node was given `--api-token-file`
//! (compared in constant time). Errors are JSON `{"error", "_id", "field"}`
//! with a 4xx status; secret values never appear in any answer.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use schemas::time::{now_nanos, rfc3339_from_nanos};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{ConfigError, ConfigErrors, ResolvedConfig, Schedule};
use crate::history::Author;
use crate::limits::{Limits, DEFAULT_PAGE_ENTITIES, MAX_ID_CHARS, MAX_PUMP_BODY_BYTES};
use crate::metrics::ReasonLabel;
use crate::pump::{Pump, StartRefused};
use crate::state::Shared;
use crate::store::blocking;
use crate::store::{ReadOptions, StoreError};
use crate::supervisor::ReconfigureError;

/// An API error: a status and a JSON body naming what was wrong, plus the
/// reason it is counted under in `sesam_node_api_refused_total`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
    reason: &'static str,
}

/// The refusal reason of an error response, read by [`count_refusals`].
#[derive(Debug, Clone, Copy)]
struct Refused(&'static str);

fn default_reason(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "unauthorized",
        404 => "not_found",
        409 => "conflict",
        413 => "body_too_large",
        503 => "busy",
        s if s >= 500 => "internal",
        _ => "bad_request",
    }
}

/// An id echoed in an error, cut short: ids come from the request path.
fn echo(id: &str) -> String {
    if id.chars().count() <= 200 {
        id.to_string()
    } else {
        let mut s: String = id.chars().take(200).collect();
        s.push_str("...");
        s
    }
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: json!({"error": error.into()}),
            reason: default_reason(status),
        }
    }

    fn field(status: StatusCode, id: &str, field: &str, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: json!({"error": error.into(), "_id": echo(id), "field": field}),
            reason: default_reason(status),
        }
    }

    /// Overrides the reason the refusal is counted under.
    fn reason(mut self, reason: &'static str) -> ApiError {
        self.reason = reason;
        self
    }

    fn not_found(what: &str, id: &str) -> ApiError {
        ApiError::field(
            StatusCode::NOT_FOUND,
            id,
            "_id",
            format!("no {what} with _id {:?}", echo(id)),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "storage error in an API request");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("storage error: {e}"),
        )
    }
}

impl From<ConfigErrors> for ApiError {
    fn from(e: ConfigErrors) -> ApiError {
        let first = e.0.first().cloned().unwrap_or(ConfigError {
            entity: String::new(),
            field: String::new(),
            message: "invalid configuration".into(),
        });
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body: json!({
                "error": first.to_string(),
                "_id": first.entity,
                "field": first.field,
                "errors": e.0,
            }),
            reason: "invalid_config",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        r.extensions_mut().insert(Refused(self.reason));
        r
    }
}

/// A request body within `limit` bytes (`flag` names the bound), or a 413
/// that says so; a body that cannot be read is a 400.
fn body(b: Result<Bytes, BytesRejection>, limit: usize, flag: &str) -> ApiResult<Bytes> {
    match b {
        Ok(b) if b.len() <= limit => Ok(b),
        Ok(_) => Err(too_large(limit, flag)),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(too_large(limit, flag)),
        Err(r) => Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "",
            "body",
            format!("could not read the request body: {}", r.body_text()),
        )),
    }
}

fn too_large(limit: usize, flag: &str) -> ApiError {
    ApiError::field(
        StatusCode::PAYLOAD_TOO_LARGE,
        "",
        "body",
        format!("the request body is larger than {limit} bytes ({flag})"),
    )
}

type ApiResult<T> = Result<T, ApiError>;
type AppState = State<Arc<Shared>>;

/// The API router.
pub fn router(shared: Arc<Shared>) -> Router {
    let l = &shared.limits;
    let protected = Router::new()
        .route("/api/status", get(status))
        .route(
            "/api/pipes",
            get(pipes)
                .post(pipes_post)
                .layer(DefaultBodyLimit::max(l.max_config_bytes)),
        )
        .route("/api/pipes/{id}", get(pipe).delete(pipe_delete))
        .route(
            "/api/pipes/{id}/config",
            get(pipe_config)
                .put(pipe_config_put)
                .layer(DefaultBodyLimit::max(l.max_config_bytes)),
        )
        .route("/api/pipes/{id}/log", get(pipe_log))
        .route("/api/pipes/{id}/entities", get(pipe_entities))
        .route(
            "/api/pipes/{id}/pump",
            get(pump_get)
                .post(pump_post)
                .layer(DefaultBodyLimit::max(MAX_PUMP_BODY_BYTES)),
        )
        .route("/api/datasets", get(datasets))
        .route("/api/datasets/{id}", get(dataset))
        .route("/api/datasets/{id}/entities", get(dataset_entities))
        .route(
            "/api/config",
            get(config_get)
                .put(config_put)
                .layer(DefaultBodyLimit::max(l.max_config_bytes)),
        )
        .route("/api/config/history", get(config_history))
        .route("/api/config/history/{version}", get(config_version))
        .route(
            "/api/systems",
            get(systems)
                .post(systems_post)
                .layer(DefaultBodyLimit::max(l.max_config_bytes)),
        )
        .route("/api/systems/{id}", get(system).delete(system_delete))
        .route(
            "/api/systems/{id}/config",
            get(system_config)
                .put(system_config_put)
                .layer(DefaultBodyLimit::max(l.max_config_bytes)),
        )
        .route(
            "/api/secrets",
            get(secrets_get)
                .put(secrets_put)
                .post(secrets_post)
                .layer(DefaultBodyLimit::max(l.max_secrets_bytes)),
        )
        .route("/api/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(shared.clone(), auth))
        .route_layer(middleware::from_fn_with_state(shared.clone(), slots));
    Router::new()
        .route("/api/ping", get(ping))
        .route("/api/health", get(health))
        .merge(protected)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such API endpoint") })
        .layer(DefaultBodyLimit::max(MAX_PUMP_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            count_refusals,
        ))
        .with_state(shared)
}

/// Counts every refused request by its reason.
async fn count_refusals(State(s): AppState, req: Request, next: Next) -> Response {
    let r = next.run(req).await;
    if let Some(Refused(reason)) = r.extensions().get::<Refused>() {
        s.metrics
            .api_refused
            .get_or_create(&ReasonLabel {
                reason: (*reason).to_string(),
            })
            .inc();
    }
    r
}

/// Bounds the requests handled at once; beyond it 503 + `Retry-After`.
async fn slots(State(s): AppState, req: Request, next: Next) -> Response {
    match s.request_slots.clone().try_acquire_owned() {
        Ok(permit) => {
            let r = next.run(req).await;
            drop(permit);
            r
        }
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many API requests at once (--max-concurrent-requests {}); retry",
                s.limits.max_concurrent_requests
            ),
        )
        .into_response(),
    }
}

async fn auth(State(s): AppState, req: Request, next: Next) -> Response {
    let Some(expected) = s.api_token_sha256 else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Sha256::digest(t.trim().as_bytes()));
    match presented {
        // Comparing digests keeps the comparison constant-time in the token length too.
        Some(d) if bool::from(d.as_slice().ct_eq(&expected)) => next.run(req).await,
        _ => {
            let mut r = (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({"error": "missing or wrong bearer token", "field": "Authorization"})),
            )
                .into_response();
            r.extensions_mut().insert(Refused("unauthorized"));
            r
        }
    }
}

async fn ping() -> Json<Value> {
    Json(json!({"status": "running"}))
}

async fn health(State(s): AppState) -> Response {
    let (body, fresh) = crate::health::cached(&s).await;
    if fresh {
        s.health_wakeup.notify_one();
    }
    let mut v = serde_json::to_value(&body).unwrap_or(Value::Null);
    if body.status != schemas::HealthStatus::Ok {
        v["message"] = json!("The sesam-node isn't feeling well.");
    }
    // 503 only when the node cannot work: a load balancer must not take a
    // working node out of service because one pipe failed.
    let code = if body.status == schemas::HealthStatus::Failed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(v)).into_response()
}

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

async fn status(State(s): AppState) -> Json<Value> {
    let uptime = (now_nanos() - s.start_nanos) as f64 / 1e9;
    Json(json!({
        "status": "running",
        "node_id": s.node_id,
        "subscription_id": s.subscription,
        "node_version": env!("CARGO_PKG_VERSION"),
        "node_start_time": rfc3339_from_nanos(s.start_nanos),
        "node_uptime": uptime,
        "memory": {"rss": rss_bytes()},
        "pipes": s.pumps().len(),
        "config_hash": s.config().hash,
    }))
}

fn ts(n: Option<i64>) -> Value {
    n.map_or(Value::Null, |n| Value::String(rfc3339_from_nanos(n)))
}

/// The `runtime` of a pump object.
/// Sesam's `config-errors` entries for the warnings of one entity.
fn config_errors(warnings: &[ConfigError]) -> Value {
    Value::Array(
        warnings
            .iter()
            .map(|w| json!({"level": "warning", "msg": w.message, "elements": w.field}))
            .collect(),
    )
}

/// Sesam's `validation_errors` of a configuration upload: one entry per
/// entity with warnings (errors refuse the upload with a 400 instead).
fn validation_errors(config: &ResolvedConfig) -> Value {
    let mut by_id: BTreeMap<&str, Vec<ConfigError>> = BTreeMap::new();
    for w in &config.warnings {
        by_id.entry(w.entity.as_str()).or_default().push(w.clone());
    }
    Value::Array(
        by_id
            .into_iter()
            .map(|(id, ws)| {
                json!({
                    "posted-config": {"_id": id},
                    "is-valid-config": true,
                    "config-errors": config_errors(&ws),
                })
            })
            .collect(),
    )
}

fn pump_runtime(p: &Pump, config: &ResolvedConfig) -> serde_json::Map<String, Value> {
    let st = p.state();
    let c = p.config();
    let mut m = serde_json::Map::new();
    m.insert("is-running".into(), json!(st.is_running));
    m.insert("is-disabled".into(), json!(st.disabled));
    m.insert("is-valid-config".into(), json!(true));
    m.insert(
        "config-errors".into(),
        config_errors(&config.warnings_of(&p.id)),
    );
    m.insert("last-run".into(), ts(st.last_run));
    m.insert("last-end".into(), ts(st.last_end));
    m.insert(
        "next-run".into(),
        if st.disabled {
            Value::Null
        } else {
            ts(st.next_run)
        },
    );
    m.insert("success".into(), json!(st.success));
    m.insert(
        "last-seen".into(),
        st.last_seen.map_or(Value::Null, |o| json!(o.to_string())),
    );
    m.insert("progress".into(), json!(st.progress));
    m.insert("last-original-error-message".into(), json!(st.last_error));
    m.insert(
        "schedule".into(),
        match &c.schedule {
            Schedule::Interval(d) => json!({"schedule_interval": d.as_secs_f64()}),
            Schedule::Cron(s) => json!({"cron_expr": s.to_string()}),
            Schedule::Manual => json!({"mode": "manual"}),
            Schedule::Off => json!({"mode": "off"}),
        },
    );
    m
}

fn pump_object(p: &Pump, config: &ResolvedConfig) -> Value {
    json!({"_id": p.id, "name": p.id, "runtime": pump_runtime(p, config)})
}

fn pipe_object(p: &Pump, config: &ResolvedConfig) -> Value {
    let c = p.config();
    let mut runtime = pump_runtime(p, config);
    runtime.insert("execution-dataset".into(), json!(c.execution_dataset()));
    runtime.insert("dataset".into(), json!(c.sink_dataset()));
    runtime.insert("monitoring".into(), json!({"enabled": c.monitoring}));
    json!({
        "_id": c.id,
        "name": c.original.get("name").cloned().unwrap_or_else(|| json!(c.id)),
        "type": "pipe",
        "config": {"original": c.original, "effective": c.effective},
        "runtime": runtime,
    })
}

fn find_pump(s: &Shared, id: &str) -> ApiResult<Arc<Pump>> {
    s.pump(id).ok_or_else(|| ApiError::not_found("pipe", id))
}

async fn pipes(State(s): AppState) -> Json<Value> {
    Json(Value::Array(
        s.pumps()
            .iter()
            .map(|p| pipe_object(p, &s.config()))
            .collect(),
    ))
}

async fn pipe(State(s): AppState, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let p = find_pump(&s, &id)?;
    Ok(Json(pipe_object(&p, &s.config())))
}

async fn pipe_config(State(s): AppState, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(find_pump(&s, &id)?.config().original.clone()))
}

fn bool_param(q: &HashMap<String, String>, name: &str, default: bool) -> ApiResult<bool> {
    match q.get(name).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if v == "true" || v == "1" => Ok(true),
        Some(v) if v == "false" || v == "0" => Ok(false),
        Some(v) => Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "",
            name,
            format!("{name} must be true or false, not {:?}", echo(&v)),
        )),
    }
}

fn read_options(q: &HashMap<String, String>, limits: &Limits) -> ApiResult<ReadOptions> {
    let since = match q.get("since").map(|s| s.trim()) {
        None | Some("") => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            ApiError::field(
                StatusCode::BAD_REQUEST,
                "",
                "since",
                format!(
                    "since must be an _updated value (a non-negative integer), not {:?}",
                    echo(s)
                ),
            )
        })?),
    };
    let limit = match q.get("limit") {
        None => DEFAULT_PAGE_ENTITIES.min(limits.max_page_entities),
        Some(l) => l.trim().parse::<usize>().map_err(|_| {
            ApiError::field(
                StatusCode::BAD_REQUEST,
                "",
                "limit",
                format!("limit must be a non-negative integer, not {:?}", echo(l)),
            )
        })?,
    };
    if limit > limits.max_page_entities {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "",
            "limit",
            format!(
                "limit is at most {} (--max-page-entities); page with since",
                limits.max_page_entities
            ),
        )
        .reason("limit_too_large"));
    }
    Ok(ReadOptions {
        since,
        limit,
        history: bool_param(q, "history", true)?,
        deleted: bool_param(q, "deleted", true)?,
        reverse: bool_param(q, "reverse", false)?,
        max_bytes: limits.max_page_bytes,
    })
}

async fn entities(
    s: &Shared,
    dataset: String,
    q: &HashMap<String, String>,
) -> ApiResult<Json<Value>> {
    let opts = read_options(q, &s.limits)?;
    let store = s.store.clone();
    let list = blocking(move || store.read_entities(&dataset, opts)).await?;
    Ok(Json(Value::Array(list)))
}

async fn pipe_log(
    State(s): AppState,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let ds = find_pump(&s, &id)?.config().execution_dataset();
    entities(&s, ds, &q).await
}

async fn pipe_entities(
    State(s): AppState,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let p = find_pump(&s, &id)?;
    let c = p.config();
    let Some(ds) = c.sink_dataset() else {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            &id,
            "sink",
            "the pipe does not write a dataset",
        ));
    };
    entities(&s, ds.to_string(), &q).await
}

async fn pump_get(State(s): AppState, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let p = find_pump(&s, &id)?;
    Ok(Json(pump_object(&p, &s.config())))
}

async fn pump_post(
    State(s): AppState,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let p = find_pump(&s, &id)?;
    let body = body(raw, MAX_PUMP_BODY_BYTES, "64 KiB")?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let form: HashMap<String, String> = if body.is_empty() {
        HashMap::new()
    } else if is_json {
        let v: Value = serde_json::from_slice(&body).map_err(|e| {
            ApiError::field(
                StatusCode::BAD_REQUEST,
                &id,
                "operation",
                format!("malformed JSON body: {e}"),
            )
        })?;
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str().map_or_else(|| v.to_string(), str::to_string),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    } else {
        parse_form(&body).ok_or_else(|| {
            ApiError::field(
                StatusCode::BAD_REQUEST,
                &id,
                "operation",
                "malformed form body",
            )
        })?
    };
    let Some(op) = form
        .get("operation")
        .or_else(|| query.get("operation"))
        .cloned()
    else {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            &id,
            "operation",
            "the form field \"operation\" is required",
        ));
    };
    match op.as_str() {
        "start" => match p.request_start() {
            Ok(()) => {}
            Err(StartRefused::Running) => {
                return Ok(
                    (StatusCode::CONFLICT, Json(pump_object(&p, &s.config()))).into_response(),
                );
            }
            Err(StartRefused::Off) => {
                return Err(ApiError::field(StatusCode::CONFLICT, &id, "pump.mode", "the pump's mode is \"off\"; it cannot be started"));
            }
        },
        "stop" => {
            p.stop();
        }
        "enable" => s.supervisor.set_enabled(&p, true).await?,
        "disable" => s.supervisor.set_enabled(&p, false).await?,
        other => {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                &id,
                "operation",
                format!("The pump doesn't support the operation {:?}; supported: start, stop, enable, disable", echo(other)),
            ))
        }
    }
    Ok(Json(pump_object(&p, &s.config())).into_response())
}

/// Decodes an `application/x-www-form-urlencoded` body; `None` if malformed.
fn parse_form(body: &[u8]) -> Option<HashMap<String, String>> {
    fn decode(s: &str) -> Option<String> {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = s.get(i + 1..i + 3)?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8(out).ok()
    }
    let text = std::str::from_utf8(body).ok()?;
    let mut out = HashMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(decode(k)?, decode(v)?);
    }
    Some(out)
}

fn dataset_object(name: &str, m: &crate::store::DatasetMeta, s: &Shared) -> Value {
    let origin = if name.starts_with("system:") {
        "system"
    } else {
        "user"
    };
    let producer = s
        .pumps()
        .into_iter()
        .find(|p| p.config().sink_dataset() == Some(name))
        .map(|p| p.id.clone());
    json!({
        "_id": name,
        "origin": origin,
        "runtime": {
            "count-including-deleted": m.count + m.deleted,
            "count-excluding-deleted": m.count,
            "count-deleted": m.deleted,
            "versions": m.versions,
            "last-updated": m.last_updated,
            "last-modified": if m.last_modified_us > 0 { Value::String(rfc3339_from_nanos(m.last_modified_us.saturating_mul(1000))) } else { Value::Null },
            "pipe": producer,
        },
    })
}

async fn datasets(State(s): AppState) -> ApiResult<Json<Value>> {
    let store = s.store.clone();
    let all = blocking(move || store.datasets()).await?;
    Ok(Json(Value::Array(
        all.iter().map(|(n, m)| dataset_object(n, m, &s)).collect(),
    )))
}

async fn dataset(State(s): AppState, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let store = s.store.clone();
    let name = id.clone();
    let meta = blocking(move || store.dataset_meta(&name)).await?;
    let m = meta.ok_or_else(|| ApiError::not_found("dataset", &id))?;
    Ok(Json(dataset_object(&id, &m, &s)))
}

async fn dataset_entities(
    State(s): AppState,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let store = s.store.clone();
    let name = id.clone();
    if blocking(move || store.dataset_meta(&name)).await?.is_none() {
        return Err(ApiError::not_found("dataset", &id));
    }
    entities(&s, id, &q).await
}

async fn config_get(State(s): AppState) -> Json<Value> {
    // The configuration holds secrets only as $SECRET(name) references.
    Json(Value::Array(s.config().entities.clone()))
}

/// The author of an API change.
fn author(operation: String, addr: SocketAddr) -> Author {
    Author::api(operation, Some(addr.to_string()))
}

fn reconfigure_error(e: ReconfigureError<ApiError>) -> ApiError {
    match e {
        ReconfigureError::Edit(e) => e,
        ReconfigureError::Invalid(errors) => errors.into(),
        ReconfigureError::TooManyEntities { count, limit } => ApiError::field(
            StatusCode::BAD_REQUEST,
            "",
            "",
            format!(
                "the configuration has {count} entities; at most {limit} are accepted (--max-config-entities)"
            ),
        )
        .reason("too_many_entities"),
        ReconfigureError::Store(e) => e.into(),
    }
}

fn parse_json(bytes: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::field(
            StatusCode::BAD_REQUEST,
            "",
            "",
            format!("the configuration is not valid JSON: {e}"),
        )
        .reason("invalid_config")
    })
}

async fn config_put(
    State(s): AppState,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let bytes = body(raw, s.limits.max_config_bytes, "--max-config-bytes")?;
    let value = parse_json(&bytes)?;
    let Value::Array(entities) = value else {
        // The config module's message: a single object is not a whole config.
        return Err(crate::config::from_value(value).err().map_or_else(
            || ApiError::new(StatusCode::BAD_REQUEST, "invalid configuration"),
            ApiError::from,
        ));
    };
    let r = s
        .supervisor
        .reconfigure(author("PUT /api/config".into(), addr), |_| {
            Ok::<_, ApiError>(entities)
        })
        .await
        .map_err(reconfigure_error)?;
    Ok(Json(json!({
        "status": "ok",
        "hash": r.config.hash,
        "version": r.version,
        "changed": r.changed,
        "pipes": r.config.pipes.len(),
        "validation_errors": validation_errors(&r.config),
    })))
}

async fn config_history(State(s): AppState) -> ApiResult<Json<Value>> {
    let store = s.store.clone();
    let versions = blocking(move || store.config_versions()).await?;
    let current = s.supervisor.version();
    Ok(Json(Value::Array(
        versions.iter().map(|v| v.summary(current)).collect(),
    )))
}

async fn config_version(State(s): AppState, Path(version): Path<String>) -> ApiResult<Json<Value>> {
    let n: u64 = version.parse().map_err(|_| {
        ApiError::field(
            StatusCode::BAD_REQUEST,
            &version,
            "version",
            "a configuration version is a positive integer",
        )
    })?;
    let store = s.store.clone();
    let v = blocking(move || store.config_version(n))
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                "configuration version (it may have left the history)",
                &version,
            )
        })?;
    let mut out = v.summary(s.supervisor.version());
    out["config"] = Value::Array(v.entities().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("stored configuration version {n} does not decode: {e}"),
        )
    })?);
    Ok(Json(out))
}

/// The kinds of entities with their own endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pipe,
    System,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Pipe => "pipe",
            Kind::System => "system",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Kind::Pipe => "pipes",
            Kind::System => "systems",
        }
    }

    fn is(self, entity: &Value) -> bool {
        let t = entity.get("type").and_then(Value::as_str).unwrap_or("");
        match self {
            Kind::Pipe => t == "pipe",
            Kind::System => t.starts_with("system:"),
        }
    }
}

fn entity_id(e: &Value) -> Option<&str> {
    e.get("_id").and_then(Value::as_str)
}

/// Checks an uploaded pipe or system entity (`_id` and `type`), filling in
/// `_id` from the path and `type` for pipes.
fn uploaded(kind: Kind, mut e: Value, path_id: Option<&str>) -> ApiResult<Value> {
    let Value::Object(m) = &mut e else {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            path_id.unwrap_or(""),
            "",
            format!("a {} must be a JSON object", kind.name()),
        )
        .reason("invalid_config"));
    };
    match (path_id, m.get("_id")) {
        (Some(id), None) => {
            m.insert("_id".into(), Value::String(id.to_string()));
        }
        (Some(id), Some(v)) if v.as_str() != Some(id) => {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                id,
                "_id",
                format!(
                    "the _id in the body differs from the {} in the path",
                    kind.name()
                ),
            )
            .reason("invalid_config"));
        }
        _ => {}
    }
    if kind == Kind::Pipe && !m.contains_key("type") {
        m.insert("type".into(), Value::String("pipe".into()));
    }
    if !kind.is(&e) {
        let id = entity_id(&e).unwrap_or("").to_string();
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            &id,
            "type",
            format!(
                "only {} entities can be uploaded to /api/{}",
                kind.name(),
                kind.path()
            ),
        )
        .reason("invalid_config"));
    }
    Ok(e)
}

async fn entity_post(
    s: Arc<Shared>,
    kind: Kind,
    addr: SocketAddr,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let bytes = body(raw, s.limits.max_config_bytes, "--max-config-bytes")?;
    let list = match parse_json(&bytes)? {
        Value::Array(a) => a,
        one => vec![one],
    };
    let list = list
        .into_iter()
        .map(|e| uploaded(kind, e, None))
        .collect::<ApiResult<Vec<Value>>>()?;
    let ids: Vec<String> = list
        .iter()
        .filter_map(entity_id)
        .map(str::to_string)
        .collect();
    let r = s
        .supervisor
        .reconfigure(
        author(format!("POST /api/{}", kind.path()), addr),
        |current| {
            for id in &ids {
                if current.iter().any(|e| entity_id(e) == Some(id)) {
                    return Err(ApiError::field(
                        StatusCode::CONFLICT,
                        id,
                        "_id",
                        format!("an entity with _id {:?} exists; replace it with PUT /api/{}/{{id}}/config", echo(id), kind.path()),
                    ));
                }
            }
            let mut next = current.to_vec();
            next.extend(list);
            Ok(next)
        },
    )
    .await
    .map_err(reconfigure_error)?;
    let objects: Vec<Value> = ids
        .iter()
        .filter_map(|id| object_of(&s, kind, id, &r.config))
        .collect();
    Ok((StatusCode::CREATED, Json(Value::Array(objects))).into_response())
}

async fn entity_put(
    s: Arc<Shared>,
    kind: Kind,
    id: String,
    addr: SocketAddr,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let bytes = body(raw, s.limits.max_config_bytes, "--max-config-bytes")?;
    let entity = uploaded(kind, parse_json(&bytes)?, Some(&id))?;
    let r = s
        .supervisor
        .reconfigure(
            author(
                format!("PUT /api/{}/{}/config", kind.path(), echo(&id)),
                addr,
            ),
            |current| {
                let mut next = current.to_vec();
                let Some(slot) = next
                    .iter_mut()
                    .find(|e| entity_id(e) == Some(&id) && kind.is(e))
                else {
                    return Err(ApiError::not_found(kind.name(), &id));
                };
                *slot = entity;
                Ok(next)
            },
        )
        .await
        .map_err(reconfigure_error)?;
    object_of(&s, kind, &id, &r.config)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(kind.name(), &id))
}

async fn entity_delete(
    s: Arc<Shared>,
    kind: Kind,
    id: String,
    addr: SocketAddr,
) -> ApiResult<Json<Value>> {
    let before = object_of(&s, kind, &id, &s.config());
    s.supervisor
        .reconfigure(
            author(format!("DELETE /api/{}/{}", kind.path(), echo(&id)), addr),
            |current| {
                let next: Vec<Value> = current
                    .iter()
                    .filter(|e| !(entity_id(e) == Some(&id) && kind.is(e)))
                    .cloned()
                    .collect();
                if next.len() == current.len() {
                    return Err(ApiError::not_found(kind.name(), &id));
                }
                Ok(next)
            },
        )
        .await
        .map_err(reconfigure_error)?;
    Ok(Json(before.unwrap_or_else(|| json!({"_id": id}))))
}

/// The API object of a pipe or system of `config`.
fn object_of(s: &Shared, kind: Kind, id: &str, config: &ResolvedConfig) -> Option<Value> {
    match kind {
        Kind::Pipe => s.pump(id).map(|p| pipe_object(&p, config)),
        Kind::System => system_object(id, config),
    }
}

fn system_object(id: &str, config: &ResolvedConfig) -> Option<Value> {
    let original = config
        .entities
        .iter()
        .find(|e| entity_id(e) == Some(id) && Kind::System.is(e))?
        .clone();
    let effective = config
        .systems
        .get(id)
        .and_then(|sys| serde_json::to_value(sys.as_ref()).ok())
        .unwrap_or(Value::Null);
    Some(json!({
        "_id": id,
        "name": original.get("name").cloned().unwrap_or_else(|| json!(id)),
        "type": original.get("type").cloned().unwrap_or(Value::Null),
        "config": {"original": original, "effective": effective},
        "runtime": {
            "is-valid-config": true,
            "config-errors": config_errors(&config.warnings_of(id)),
        },
    }))
}

async fn pipes_post(
    State(s): AppState,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    entity_post(s, Kind::Pipe, addr, raw).await
}

async fn pipe_config_put(
    State(s): AppState,
    Path(id): Path<String>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    entity_put(s, Kind::Pipe, id, addr, raw).await
}

async fn pipe_delete(
    State(s): AppState,
    Path(id): Path<String>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
) -> ApiResult<Json<Value>> {
    entity_delete(s, Kind::Pipe, id, addr).await
}

async fn systems(State(s): AppState) -> Json<Value> {
    let config = s.config();
    Json(Value::Array(
        config
            .entities
            .iter()
            .filter(|e| Kind::System.is(e))
            .filter_map(entity_id)
            .filter_map(|id| system_object(id, &config))
            .collect(),
    ))
}

async fn system(State(s): AppState, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    system_object(&id, &s.config())
        .map(Json)
        .ok_or_else(|| ApiError::not_found("system", &id))
}

async fn system_config(State(s): AppState, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let o = system_object(&id, &s.config()).ok_or_else(|| ApiError::not_found("system", &id))?;
    Ok(Json(o["config"]["original"].clone()))
}

async fn systems_post(
    State(s): AppState,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    entity_post(s, Kind::System, addr, raw).await
}

async fn system_config_put(
    State(s): AppState,
    Path(id): Path<String>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    entity_put(s, Kind::System, id, addr, raw).await
}

async fn system_delete(
    State(s): AppState,
    Path(id): Path<String>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
) -> ApiResult<Json<Value>> {
    entity_delete(s, Kind::System, id, addr).await
}

fn parse_secrets(body: &[u8], limits: &Limits) -> ApiResult<BTreeMap<String, String>> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        // The error names a position, never the (possibly secret) content.
        ApiError::field(
            StatusCode::BAD_REQUEST,
            "",
            "",
            format!(
                "the body must be a JSON object of secret names to string values: {}",
                e.classify_message()
            ),
        )
    })?;
    let Value::Object(m) = v else {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "",
            "",
            "the body must be a JSON object of secret names to string values",
        ));
    };
    if m.len() > limits.max_secrets {
        return Err(too_many_secrets(m.len(), limits));
    }
    let mut out = BTreeMap::new();
    for (k, v) in m {
        if k.chars().count() > MAX_ID_CHARS {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                &k,
                "",
                format!("a secret name is at most {MAX_ID_CHARS} characters"),
            ));
        }
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                &k,
                &k,
                "secret names use letters, digits, '_', '-' and '.'",
            ));
        }
        match v {
            Value::String(s) => {
                out.insert(k, s);
            }
            _ => {
                return Err(ApiError::field(
                    StatusCode::BAD_REQUEST,
                    &k,
                    &k,
                    format!("the value of secret {k:?} must be a string"),
                ))
            }
        }
    }
    Ok(out)
}

trait ClassifyMessage {
    fn classify_message(&self) -> String;
}

impl ClassifyMessage for serde_json::Error {
    fn classify_message(&self) -> String {
        format!(
            "{:?} error at line {} column {}",
            self.classify(),
            self.line(),
            self.column()
        )
    }
}

fn too_many_secrets(n: usize, limits: &Limits) -> ApiError {
    ApiError::field(
        StatusCode::BAD_REQUEST,
        "",
        "",
        format!(
            "{n} secrets; at most {} are stored (--max-secrets)",
            limits.max_secrets
        ),
    )
    .reason("too_many_secrets")
}

async fn secrets_put(
    State(s): AppState,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let bytes = body(raw, s.limits.max_secrets_bytes, "--max-secrets-bytes")?;
    let secrets = parse_secrets(&bytes, &s.limits)?;
    let names: Vec<String> = secrets.keys().cloned().collect();
    let store = s.store.clone();
    blocking(move || store.replace_secrets(&secrets)).await?;
    s.refresh_redaction_secrets().await;
    tracing::info!(count = names.len(), "secrets replaced");
    Ok(Json(json!(names)))
}

async fn secrets_post(
    State(s): AppState,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let bytes = body(raw, s.limits.max_secrets_bytes, "--max-secrets-bytes")?;
    let secrets = parse_secrets(&bytes, &s.limits)?;
    let names: Vec<String> = secrets.keys().cloned().collect();
    let store = s.store.clone();
    let max = s.limits.max_secrets;
    let merged = blocking(move || -> Result<Result<(), usize>, StoreError> {
        let existing = store.secret_names()?;
        let total = existing.len() + secrets.keys().filter(|k| !existing.contains(*k)).count();
        if total > max {
            return Ok(Err(total));
        }
        store.merge_secrets(&secrets)?;
        Ok(Ok(()))
    })
    .await?;
    if let Err(total) = merged {
        return Err(too_many_secrets(total, &s.limits));
    }
    s.refresh_redaction_secrets().await;
    tracing::info!(count = names.len(), "secrets updated");
    Ok(Json(json!(names)))
}

async fn secrets_get(State(s): AppState) -> ApiResult<Json<Value>> {
    let store = s.store.clone();
    let names = blocking(move || store.secret_names()).await?;
    Ok(Json(json!(names)))
}

async fn metrics(State(s): AppState) -> ApiResult<Response> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &s.registry).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encode metrics: {e}"),
        )
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_decode() {
        let f = parse_form(b"operation=start&note=a+b%21&flag").unwrap();
        assert_eq!(f["operation"], "start");
        assert_eq!(f["note"], "a b!");
        assert_eq!(f["flag"], "");
        assert!(parse_form(b"operation=%zz").is_none());
        assert!(parse_form(b"x=%4").is_none());
    }
}

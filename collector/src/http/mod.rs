//! The HTTP API: router, shared state, authentication and errors.
//!
//! | method, path | role | what |
//! |---|---|---|
//! | `POST /api/v1/ingest` | shipper (own subscription), admin | store a MessagePack batch |
//! | `GET /api/v1/logs` | operator (own), admin | LogQL search, JSON records |
//! | `GET /loki/api/v1/query_range` | operator, admin | log queries in Loki's streams shape, metric queries as its matrix |
//! | `GET /loki/api/v1/query` | operator, admin | metric queries at one time (vector), log queries (streams) |
//! | `GET /loki/api/v1/series` | operator, admin | label sets of the streams `match[]` selects |
//! | `GET /loki/api/v1/index/stats`, `/index/volume` | operator, admin | streams, chunks, entries, bytes; bytes per label set |
//! | `GET /loki/api/v1/tail` | operator, admin | WebSocket: live tail of a query |
//! | `GET /loki/api/v1/labels` | operator, admin | label names |
//! | `GET /loki/api/v1/label/{name}/values` | operator, admin | values of a label |
//! | `GET /api/v1/sources` | operator, admin | every source with last seen, last seq, lag |
//! | `DELETE /api/v1/subscriptions/{id}` | admin | terminate: delete everything of it |
//! | `POST /api/v1/checkpoints` | admin | take a checkpoint now |
//! | `POST /api/v1/write` | shipper (own subscription), admin | Prometheus remote-write 1.0 |
//! | `POST /v1/metrics` | shipper (own subscription), admin | OTLP/HTTP metrics (protobuf) |
//! | `GET /federate?match[]=` | operator (own), admin | newest sample of every fresh pushed series |
//! | `GET /api/v1/notification-rule-types` | operator, admin | rule types with the JSON Schema of their params |
//! | `GET, POST /api/v1/notification-rules`, `GET, PUT, DELETE .../{id}` | operator (own), admin | notification rules |
//! | `GET /api/v1/receivers`, `GET, PUT, DELETE .../{name}` | operator (own), admin | webhook / Alertmanager receivers |
//! | `GET, POST /api/v1/silences`, `DELETE .../{id}` | operator (own), admin | silences |
//! | `GET /api/v1/alerts` | operator (own), admin | active alerts, with silences and inhibitions |
//! | `GET /api/v1/notifications` | operator (own), admin | notification history and queue |
//! | `GET /metrics`, `/healthz`, `/readyz` | none | own metrics, liveness, readiness |
//! | `GET /ui/` and below | operator, admin (session cookie) | the operator console (`ui`) |
//!
//! Every error is a JSON body `{"error": ..., "field": ...}` (plus `index`
//! for a bad record, `column` for a query parse error, `reason` for
//! refusals a client acts on: `source_conflict`, `source_limit`,
//! `body_budget`, `busy`) with a 4xx/5xx.
//!
//! The server itself (connection limits and timeouts) is [`serve`]; the
//! path every pushed body takes (budget, deadlines, fair slots) is
//! [`admission`].

mod admin;
pub mod admission;
mod answer;
mod logs;
mod loki;
mod metrics;
mod notify;
mod owner;
mod params;
mod pipes;
pub mod serve;
pub mod ui;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::auth::{Principal, Role, Tokens};
use crate::logs::ingest::IngestLimits;
use crate::logs::query::QueryLimits;
use crate::logs::retention::RetentionPolicy;
use crate::logs::LogStore;
use crate::telemetry::Metrics;

pub use admission::{Admission, AdmissionLimits};
pub(crate) use answer::text_chunks as answer_text;
pub use params::parse_time;
pub use serve::ServerLimits;

/// Bounds of read requests: query size, regexes, answers.
#[derive(Debug, Clone)]
pub struct ReadLimits {
    /// LogQL bounds (matchers, stages, regex memory); the regex budget
    /// also bounds each `/federate` request's selectors.
    pub query: QueryLimits,
    /// Bytes of log lines in one answer (`/api/v1/logs`, Loki
    /// `query_range`); the answer stops there, marked truncated.
    pub max_answer_bytes: usize,
    /// Bytes of log lines one query may read (searches and metric
    /// queries); past it the query is refused with 400.
    pub max_scanned_bytes: u64,
    /// Series one metric query may produce (or any of its parts).
    pub max_series: usize,
    /// `match[]` selectors of one `/federate` request.
    pub max_federate_selectors: usize,
    /// Bytes of one `/federate` answer; past it the request is refused.
    pub max_federate_bytes: usize,
    /// Searches running at once for one subscription (of
    /// `max_concurrent_queries`).
    pub max_queries_per_subscription: usize,
    /// Nice steps of the query threads below the process for a search's
    /// first `query_quantum` (0: none).
    pub query_nice: i32,
    /// Nice steps below the process once a search has run `query_quantum`
    /// (see `logs::query::pool`).
    pub query_demoted_nice: i32,
    pub query_quantum: Duration,
    /// Longest pause of a demoted search at one checkpoint while other
    /// requests are served.
    pub query_max_pause: Duration,
    /// Share of the time (0.01 to 1) a demoted search may run while
    /// another subscription is active (1: no pacing).
    pub query_background_share: f64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            query: QueryLimits::default(),
            max_answer_bytes: 32 << 20,
            max_scanned_bytes: 8 << 30,
            max_series: 1000,
            max_federate_selectors: 64,
            max_federate_bytes: 256 << 20,
            max_queries_per_subscription: 2,
            query_nice: 5,
            query_demoted_nice: 19,
            query_quantum: Duration::from_millis(20),
            query_max_pause: Duration::from_millis(4),
            query_background_share: 0.25,
        }
    }
}

/// Everything handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The log store, whatever its backend.
    pub store: Arc<dyn LogStore>,
    pub tokens: Tokens,
    pub limits: IngestLimits,
    pub retention: RetentionPolicy,
    pub metrics: Metrics,
    /// Body budget, deadlines and decode slots of every write endpoint.
    pub admission: Admission,
    /// The threads searches run on, with per-subscription slots.
    pub query_pool: Arc<crate::logs::query::pool::QueryPool>,
    /// Requests being served, which demoted searches give way to.
    pub foreground: Arc<crate::logs::query::pool::Foreground>,
    pub query_timeout: Duration,
    pub read_limits: ReadLimits,
    pub checkpoint_dir: Option<PathBuf>,
    pub checkpoint_keep: usize,
    pub ready: AtomicBool,
    /// Metrics ingest: the latest-sample table behind `/federate`.
    pub metric_store: Arc<crate::metrics::MetricStore>,
    /// The notifier (rules, alerts, receivers, silences, history).
    pub notifier: Option<notifier::Notifier>,
    /// With `--coordination`: which collector evaluates which
    /// subscription (notifier API calls go to the owner).
    pub coordinated: Option<crate::coordinated::Coordinated>,
    /// Open live tails (`/loki/api/v1/tail`).
    pub tails: Arc<crate::logs::tail::TailHub>,
    /// Console sessions (`/ui/`).
    pub sessions: Arc<ui::session::Sessions>,
}

impl AppState {
    /// The principal of the request's `Authorization: Bearer` token, or
    /// without one, of its console session cookie (whose cross-site and
    /// CSRF checks [`ui::guard`] made).
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            if let Some((_, opened)) = ui::session_of(self, headers) {
                return self.tokens.authenticate(&opened.token).ok_or_else(|| {
                    ApiError::unauthorized("the session's token is no longer known")
                });
            }
            return Err(ApiError::unauthorized(
                "missing Authorization: Bearer token",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("Authorization must be \"Bearer <token>\""))?;
        self.tokens
            .authenticate(token)
            .ok_or_else(|| ApiError::unauthorized("unknown token"))
    }

    /// Authenticates and requires one of `roles`.
    pub fn require(&self, headers: &HeaderMap, roles: &[Role]) -> Result<Principal, ApiError> {
        let p = self.authenticate(headers)?;
        if !roles.contains(&p.role) {
            return Err(ApiError::forbidden(format!(
                "role {:?} may not use this endpoint",
                p.role
            ))
            .with_field("Authorization"));
        }
        Ok(p)
    }
}

/// Seconds a client is told to wait after a 429 / 503 of ingest.
pub const RETRY_AFTER_SECS: u64 = 1;

/// An error answer: status plus a JSON body naming the field at fault.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub field: Option<String>,
    pub extra: serde_json::Map<String, serde_json::Value>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            field: None,
            extra: serde_json::Map::new(),
            retry_after: None,
        }
    }
    pub fn bad_request(error: impl Into<String>, field: &str) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, error).with_field(field)
    }
    pub fn unauthorized(error: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, error).with_field("Authorization")
    }
    pub fn forbidden(error: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, error)
    }
    pub fn internal(error: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error)
    }
    pub fn unavailable(error: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error)
    }
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
    pub fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extra.insert(key.into(), value);
        self
    }
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), json!(self.error));
        body.insert("field".into(), json!(self.field));
        body.extend(self.extra);
        let mut resp = (self.status, Json(serde_json::Value::Object(body))).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(
    axum::extract::State(s): axum::extract::State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if s.ready.load(Ordering::Acquire) {
        Ok(Json(json!({"status": "ready"})))
    } else {
        Err(ApiError::unavailable("shutting down"))
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint").with_field("path")
}

/// The collector's routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let ui_enabled = state.sessions.config().enabled;
    Router::new()
        .merge(ui::routes(ui_enabled))
        .route("/api/v1/ingest", post(logs::ingest))
        .route("/api/v1/logs", get(logs::logs))
        .route("/loki/api/v1/query_range", get(loki::query_range))
        .route("/loki/api/v1/query", get(loki::query))
        .route("/loki/api/v1/series", get(loki::series))
        .route("/loki/api/v1/index/stats", get(loki::index_stats))
        .route("/loki/api/v1/index/volume", get(loki::index_volume))
        .route("/loki/api/v1/tail", get(loki::tail))
        .route("/loki/api/v1/labels", get(logs::loki_labels))
        .route(
            "/loki/api/v1/label/{name}/values",
            get(logs::loki_label_values),
        )
        .route("/api/v1/sources", get(admin::sources))
        .route("/api/v1/pipes", get(pipes::pipes))
        .route("/api/v1/subscriptions/{id}", delete(admin::purge))
        .route("/api/v1/checkpoints", post(admin::checkpoint))
        .route("/metrics", get(admin::metrics))
        .route("/api/v1/write", post(metrics::remote_write))
        .route("/v1/metrics", post(metrics::otlp_metrics))
        .route("/federate", get(metrics::federate))
        .route("/api/v1/notification-rule-types", get(notify::rule_types))
        .route(
            "/api/v1/notification-rules",
            get(notify::list_rules).post(notify::create_rule),
        )
        .route(
            "/api/v1/notification-rules/{id}",
            get(notify::get_rule)
                .put(notify::put_rule)
                .delete(notify::delete_rule),
        )
        .route("/api/v1/receivers", get(notify::list_receivers))
        .route(
            "/api/v1/receivers/{name}",
            get(notify::get_receiver)
                .put(notify::put_receiver)
                .delete(notify::delete_receiver),
        )
        .route(
            "/api/v1/silences",
            get(notify::list_silences).post(notify::create_silence),
        )
        .route("/api/v1/silences/{id}", delete(notify::delete_silence))
        .route("/api/v1/alerts", get(notify::alerts))
        .route("/api/v1/notifications", get(notify::notifications))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            owner::route,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ui::guard,
        ))
        .with_state(state)
}

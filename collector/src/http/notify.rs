//! The notifier's API: rules, rule types, receivers, silences, alerts and
//! the notification history. Operators manage their own subscription;
//! admins every one (`?subscription=` picks one where ids could be
//! ambiguous: rule and silence ids are unique per subscription only).
//!
//! Calls that compile regexes or write RocksDB run on the blocking pool,
//! never on the async workers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use notifier::{ErrorKind, NotificationFilter, Notifier, NotifierError, Scope};
use schemas::notify::RuleType;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::params::name_param;
use super::{ApiError, AppState};
use crate::auth::{self, Role};

impl From<NotifierError> for ApiError {
    fn from(e: NotifierError) -> ApiError {
        let status = match e.kind {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Storage => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut err = ApiError::new(status, e.message);
        err.field = e.field;
        err
    }
}

type Api<T> = Result<T, ApiError>;

/// The notifier and the caller's scope; operators and admins only.
fn access(s: &AppState, headers: &HeaderMap) -> Api<(Notifier, Scope)> {
    let p = s.require(headers, &[Role::Operator, Role::Admin])?;
    let n = s
        .notifier
        .clone()
        .ok_or_else(|| ApiError::unavailable("the notifier is not running"))?;
    let scope = match p.scope {
        auth::Scope::All => Scope::All,
        auth::Scope::One(sub) => Scope::Subscription(sub),
    };
    Ok((n, scope))
}

/// Runs a notifier call that may block (regex compilation, RocksDB writes)
/// on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NotifierError> + Send + 'static,
) -> Api<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("notifier task: {e}")))?
        .map_err(ApiError::from)
}

/// `?subscription=` (meaningful for admins; operators always get their
/// own).
fn sub_param(q: &HashMap<String, String>) -> Option<String> {
    q.get("subscription").cloned()
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Api<T> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("a JSON body is required", "body"));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}"), "body"))
}

/// Names a wrong `type` before serde's generic enum error does.
fn check_rule_type(bytes: &[u8]) -> Api<()> {
    let v: Value = body(bytes)?;
    match v.get("type") {
        None => Err(ApiError::bad_request("missing field `type`", "type")),
        Some(Value::String(t)) if RuleType::parse(t).is_some() => Ok(()),
        Some(t) => {
            let known: Vec<&str> = RuleType::ALL.iter().map(|t| t.as_str()).collect();
            Err(ApiError::bad_request(
                format!("unknown rule type {t}; one of {known:?}"),
                "type",
            ))
        }
    }
}

/// `GET /api/v1/notification-rule-types`
pub async fn rule_types(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Api<Json<Value>> {
    access(&s, &headers)?;
    Ok(Json(Notifier::rule_types()))
}

/// `GET /api/v1/notification-rules`
pub async fn list_rules(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Api<Json<Value>> {
    let (n, scope) = access(&s, &headers)?;
    let sub = sub_param(&q);
    let source = name_param(&q, "source")?;
    let rules = match name_param(&q, "pipe")? {
        None => n.rules(&scope, sub.as_deref()),
        Some(pipe) => {
            let source = source.ok_or_else(|| {
                ApiError::bad_request("pipe= needs source= (the pipe's node)", "source")
            })?;
            n.rules_for_pipe(&scope, sub.as_deref(), &source, &pipe)
        }
    };
    Ok(Json(json!({ "rules": rules })))
}

/// `POST /api/v1/notification-rules`
pub async fn create_rule(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Api<(StatusCode, Json<Value>)> {
    let (n, scope) = access(&s, &headers)?;
    check_rule_type(&bytes)?;
    let rule = body(&bytes)?;
    let (rule, warnings, _) = blocking(move || n.put_rule(&scope, None, rule)).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "rule": rule, "warnings": warnings })),
    ))
}

/// `GET /api/v1/notification-rules/{id}`
pub async fn get_rule(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Api<Json<Value>> {
    let (n, scope) = access(&s, &headers)?;
    let sub = sub_param(&q);
    Ok(Json(json!(n.rule(&scope, sub.as_deref(), &id)?)))
}

/// `PUT /api/v1/notification-rules/{id}`
pub async fn put_rule(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Api<(StatusCode, Json<Value>)> {
    let (n, scope) = access(&s, &headers)?;
    check_rule_type(&bytes)?;
    let rule = body(&bytes)?;
    let (rule, warnings, created) = blocking(move || n.put_rule(&scope, Some(&id), rule)).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "rule": rule, "warnings": warnings }))))
}

/// `DELETE /api/v1/notification-rules/{id}`
pub async fn delete_rule(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Api<StatusCode> {
    let (n, scope) = access(&s, &headers)?;
    let sub = sub_param(&q);
    blocking(move || n.delete_rule(&scope, sub.as_deref(), &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/receivers`
pub async fn list_receivers(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Api<Json<Value>> {
    let (n, scope) = access(&s, &headers)?;
    let sub = sub_param(&q);
    Ok(Json(
        json!({ "receivers": n.receivers(&scope, sub.as_deref()) }),
    ))
}

/// `GET /api/v1/receivers/{name}` (`?subscription=` for admins)
pub async fn get_receiver(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Api<Json<Value>> {
    let (n, scope) = access(&s, &headers)?;
    let sub = q.get("subscription").map(String::as_str);
    Ok(Json(json!(n.receiver(&scope, sub, &name)?)))
}

/// `PUT /api/v1/receivers/{name}`
pub async fn put_receiver(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Api<(StatusCode, Json<Value>)> {
    let (n, scope) = access(&s, &headers)?;
    let r = body(&bytes)?;
    let (r, created) = blocking(move || n.put_receiver(&scope, &name, r)).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(r))))
}

/// `DELETE /api/v1/receivers/{name}`
pub async fn delete_receiver(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Api<StatusCode> {
    let (n, scope) = access(&s, &headers)?;
    let sub = sub_param(&q);
    blocking(move || n.delete_receiver(&scope, sub.as_deref(), &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/silences`
pub async fn list_silences(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Api<Json<Value>> {
    let (n, scope) = access(&s, &headers)?;
    let sub = sub_param(&q);
    Ok(Json(
        json!({ "silences": n.silences(&scope, sub.as_deref()) }),
    ))
}

/// `POST /api/v1/silences`
pub async fn create_silence(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Api<(StatusCode, Json<Value>)> {
    let (n, scope) = access(&s, &headers)?;
    let silence = body(&bytes)?;
    let created = blocking(move || n.create_silence(&scope, silence)).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `DELETE /api/v1/silences/{id}`
pub async fn delete_silence(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Api<StatusCode> {
    let (n, scope) = access(&s, &headers)?;
    let sub = sub_param(&q);
    blocking(move || n.delete_silence(&scope, sub.as_deref(), &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/alerts`
pub async fn alerts(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Api<Json<Value>> {
    let (n, scope) = access(&s, &headers)?;
    let sub = sub_param(&q);
    let alerts = blocking(move || Ok(n.alerts(&scope, sub.as_deref()))).await?;
    Ok(Json(json!({ "alerts": alerts })))
}

/// `GET /api/v1/notifications?limit=&status=&receiver=&fingerprint=&rule_id=`
pub async fn notifications(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Api<Json<Value>> {
    let (n, scope) = access(&s, &headers)?;
    let limit = match q.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=10_000).contains(l))
            .ok_or_else(|| {
                ApiError::bad_request("limit must be a number from 1 to 10000", "limit")
            })?,
    };
    let status = q.get("status").cloned();
    if let Some(st) = &status {
        if !matches!(st.as_str(), "pending" | "delivered" | "failed") {
            return Err(ApiError::bad_request(
                "status must be pending, delivered or failed",
                "status",
            ));
        }
    }
    let filter = NotificationFilter {
        limit,
        subscription: sub_param(&q),
        state: status,
        receiver: q.get("receiver").cloned(),
        fingerprint: q.get("fingerprint").cloned(),
        rule_id: q.get("rule_id").cloned(),
    };
    let list = tokio::task::spawn_blocking(move || n.notifications(&scope, &filter))
        .await
        .map_err(|e| ApiError::internal(format!("history task: {e}")))??;
    Ok(Json(json!({ "notifications": list })))
}

//! Sources view, termination, checkpoints and the collector's own metrics.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::auth::{valid_name, Role};

/// `GET /api/v1/sources`
pub async fn sources(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = s.require(&headers, &[Role::Operator, Role::Admin])?;
    let now = schemas::time::now_nanos();
    let list: Vec<Value> = s
        .store
        .sources()
        .into_iter()
        .filter(|src| principal.covers(&src.subscription))
        .map(|src| {
            let m = &src.meta;
            let lag = (now.saturating_sub(m.newest_ts)) as f64 / 1e9;
            json!({
                "subscription": src.subscription,
                "source": src.source,
                "first_seen": schemas::time::rfc3339_from_nanos(m.first_seen),
                "last_seen": schemas::time::rfc3339_from_nanos(m.last_seen),
                "last_seq": m.last_seq,
                "records": m.records,
                "newest_ts": m.newest_ts,
                "newest_time": schemas::time::rfc3339_from_nanos(m.newest_ts),
                "lag_seconds": lag,
                "dropped": m.dropped,
                "duplicates": m.duplicates,
                "epoch": m.epoch,
                "previous_epochs": m.old_epochs.iter().map(|e| json!({
                    "epoch": e.epoch,
                    "last_seq": e.last_seq,
                    "ended": schemas::time::rfc3339_from_nanos(e.ended),
                })).collect::<Vec<_>>(),
                "conflicts": m.conflicts,
            })
        })
        .collect();
    Ok(Json(json!({"sources": list})))
}

/// `DELETE /api/v1/subscriptions/{id}`: terminate a subscription.
#[tracing::instrument(name = "purge", skip(s, headers))]
pub async fn purge(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.require(&headers, &[Role::Admin])?;
    if !valid_name(&id) || id == "*" {
        return Err(ApiError::bad_request(
            format!("invalid subscription id {id:?}"),
            "id",
        ));
    }
    let report = s
        .store
        .purge(&id)
        .await
        .map_err(|e| ApiError::internal(format!("purge failed: {e}")))?;
    // Every other store of the subscription: the metric table, its
    // admission share and its per-subscription counters (the notifier
    // purges its own state through the store's observer).
    let series = s.metric_store.table.purge(&id);
    s.admission.slots.forget(&id);
    s.metrics.forget_tenant(&id);
    tracing::info!(subscription = %id, streams = report.streams, records = report.records, series, "subscription terminated");
    Ok(Json(json!({
        "subscription": id,
        "deleted": {
            "streams": report.streams,
            "records": report.records,
            "sources": report.sources,
            "metric_series": series,
        }
    })))
}

/// `POST /api/v1/checkpoints`: take a checkpoint now.
pub async fn checkpoint(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    s.require(&headers, &[Role::Admin])?;
    let Some(dir) = s.checkpoint_dir.clone() else {
        return Err(
            ApiError::new(StatusCode::CONFLICT, "no --checkpoint-dir configured")
                .with_field("checkpoint_dir"),
        );
    };
    let store = s.store.clone();
    let keep = s.checkpoint_keep;
    let metrics = s.metrics.clone();
    let path = tokio::task::spawn_blocking(move || {
        crate::checkpoint::take(store.as_ref(), &dir, keep, &metrics)
    })
    .await
    .map_err(|e| ApiError::internal(format!("checkpoint task failed: {e}")))?
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(json!({"path": path.display().to_string()})))
}

/// `GET /metrics` (OpenMetrics text). With an admin token the answer also
/// holds the per-subscription refusals (`collector_tenant_*`); without
/// one it names no tenant.
pub async fn metrics(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let admin =
        headers.contains_key(header::AUTHORIZATION) && s.require(&headers, &[Role::Admin]).is_ok();
    let store = s.store.clone();
    let disk = tokio::task::spawn_blocking(move || store.disk_bytes())
        .await
        .unwrap_or(0);
    s.metrics.store_disk_bytes.set(disk as i64);
    let mut registry = s.metrics.registry();
    s.metric_store.register(&mut registry);
    if admin {
        s.metrics.tenant_registry(&mut registry);
    }
    if let Some(n) = &s.notifier {
        n.register_metrics(&mut registry);
    }
    if let Some(c) = &s.coordinated {
        c.register_metrics(&mut registry);
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .map_err(|e| ApiError::internal(format!("encode metrics: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

//! `POST /api/v1/ingest`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use schemas::IngestResponse;
use serde_json::json;

use super::admission::{admit, Spec};
use super::{ApiError, AppState, RETRY_AFTER_SECS};
use crate::ingest::{decode, decompress, prepare, IngestError};
use crate::store::StoreError;

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
    let principal = admitted.principal;
    let bytes = admitted.body;
    let encoding = headers
        .get(axum::http::header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").to_string());
    let received = bytes.len() as u64;

    // Decompression, decoding and validation are CPU work: off the reactor.
    let state = s.clone();
    let keep = s.store.has_observers();
    let p = principal.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        let raw = decompress(
            encoding.as_deref(),
            &bytes,
            state.limits.max_decompressed_bytes,
        )
        .map_err(Refused::Invalid)?;
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
        prepare(decoded, &state.limits, now, oldest, keep).map_err(Refused::Invalid)
    })
    .await
    .map_err(|e| ApiError::internal(format!("decoder task failed: {e}")))?
    .map_err(|r| match r {
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

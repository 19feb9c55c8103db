//! `POST /api/v1/ingest`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use schemas::IngestResponse;
use serde_json::json;

use super::{ApiError, AppState};
use crate::auth::Role;
use crate::ingest::{decode, decompress, prepare, IngestError};
use crate::store::StoreError;

enum Refused {
    Invalid(IngestError),
    Subscription(String),
}

/// Seconds a client is told to wait when the write path is saturated.
use crate::http::RETRY_AFTER_SECS;

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

#[tracing::instrument(name = "ingest", skip_all)]
pub async fn ingest(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestResponse>, ApiError> {
    let m = &s.metrics;
    let principal = s
        .authenticate(&headers)
        .inspect_err(|_| m.reject("unauthorized"))?;
    if !matches!(principal.role, Role::Shipper | Role::Admin) {
        m.reject("forbidden");
        return Err(ApiError::forbidden(format!(
            "role {:?} may not ingest (shipper or admin tokens only)",
            principal.role
        ))
        .with_field("Authorization"));
    }
    let limit = s.limits.max_body_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            m.reject("body_too_large");
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body of {len} bytes is over the limit of {limit} bytes"),
            )
            .with_field("body"));
        }
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        if !(ct.is_empty()
            || ct.starts_with("application/msgpack")
            || ct.starts_with("application/x-msgpack")
            || ct.starts_with("application/vnd.msgpack")
            || ct.starts_with("application/octet-stream"))
        {
            m.reject("unsupported_media_type");
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type {ct:?} is not MessagePack (use application/msgpack)"),
            )
            .with_field("Content-Type"));
        }
    }
    // Bounded memory: at most `ingest_slots` bodies are held, decoded or
    // waiting for their commit at once; beyond that the client backs off.
    let permit = crate::http::ingest_slot(&s, |r| m.reject(r))?;
    let bytes = crate::http::read_body(body, limit, |r| m.reject(r)).await?;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").to_string());
    let received = bytes.len() as u64;

    // Decompression, decoding and validation are CPU work: off the reactor.
    let state = s.clone();
    let keep = s.store.has_observers();
    let prepared = tokio::task::spawn_blocking(move || {
        let raw = decompress(
            encoding.as_deref(),
            &bytes,
            state.limits.max_decompressed_bytes,
        )
        .map_err(Refused::Invalid)?;
        let decoded = decode(&raw, state.limits.max_records).map_err(Refused::Invalid)?;
        if !principal.covers(&decoded.subscription) {
            return Err(Refused::Subscription(decoded.subscription));
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
            ApiError::forbidden(format!(
                "this token may not ingest for subscription {sub:?}"
            ))
            .with_field("subscription")
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
            .retry_after(RETRY_AFTER_SECS));
        }
        Err(e) => {
            m.reject("unavailable");
            return Err(ApiError::unavailable(e.to_string()).retry_after(RETRY_AFTER_SECS));
        }
    };
    let outcome = rx.await.unwrap_or(Err(StoreError::Closed)).map_err(|e| {
        m.reject("storage");
        tracing::error!(error = %e, "ingest not stored");
        ApiError::unavailable(format!("not stored: {e}")).retry_after(RETRY_AFTER_SECS)
    })?;
    drop(permit);
    m.ingest_batches.inc();
    m.ingest_bytes.inc_by(received);
    Ok(Json(IngestResponse {
        accepted: outcome.accepted,
        duplicates: outcome.duplicates,
    }))
}

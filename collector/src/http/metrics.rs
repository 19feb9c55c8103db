//! `POST /api/v1/write`, `POST /v1/metrics` and `GET /federate`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::Role;
use crate::compression::DecompressError;
use crate::http::admission::{admit, decode, Spec};
use crate::http::{ApiError, AppState};
use crate::metrics::federate::{self, FederateError, FederateLimits};
use crate::metrics::ingest::{Outcome, PushLimits, Refusal};
use crate::metrics::victoria::VictoriaError;
use crate::metrics::{self, Protocol};

fn now_ms() -> i64 {
    schemas::time::now_nanos() / 1_000_000
}

fn remote_write_type(ct: &str) -> bool {
    // Remote-write 2.0 announces itself with a `proto=` parameter.
    (ct.is_empty() || ct.starts_with("application/x-protobuf"))
        && (!ct.contains("proto=") || ct.contains("proto=prometheus.writerequest"))
}

fn otlp_type(ct: &str) -> bool {
    ct.starts_with("application/x-protobuf")
}

fn spec(protocol: Protocol) -> Spec {
    match protocol {
        Protocol::RemoteWrite => Spec {
            what: "remote-write",
            content_type: remote_write_type,
            want: "remote-write 1.0: application/x-protobuf (prometheus.WriteRequest)",
        },
        Protocol::Otlp => Spec {
            what: "OTLP metrics",
            content_type: otlp_type,
            want: "OTLP/HTTP protobuf: application/x-protobuf (JSON OTLP is not supported)",
        },
    }
}

/// The answer to a push that was refused in part or as a whole.
fn refusal(e: &Refusal) -> ApiError {
    match e {
        Refusal::UnsupportedEncoding(_) => {
            ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, e.to_string())
                .with_field("Content-Encoding")
        }
        Refusal::Decompress { error, snappy } => {
            let status = match error {
                DecompressError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                DecompressError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                DecompressError::Bad { .. } => StatusCode::BAD_REQUEST,
            };
            let field = if matches!(error, DecompressError::Unsupported(_)) {
                "Content-Encoding"
            } else {
                "body"
            };
            let message = match (error, snappy) {
                (DecompressError::Bad { message, .. }, true) => {
                    format!("body is not snappy block-compressed: {message}")
                }
                _ => error.to_string(),
            };
            ApiError::new(status, message).with_field(field)
        }
        Refusal::Malformed(m) => ApiError::bad_request(m.clone(), "body"),
        Refusal::Series(se) => {
            ApiError::bad_request(e.to_string(), se.field).with("index", json!(se.index))
        }
    }
}

/// 400 naming the samples refused one by one (the others were stored).
fn partial(outcome: &Outcome) -> ApiError {
    let r = &outcome.refused;
    let reasons: serde_json::Map<String, serde_json::Value> = r
        .by_reason
        .iter()
        .map(|(k, n)| (k.to_string(), json!(n)))
        .collect();
    let field = if r
        .by_reason
        .iter()
        .all(|(k, _)| matches!(*k, "series_limit" | "series_bytes_limit"))
    {
        "series"
    } else if r.by_reason.iter().all(|(k, _)| *k == "label_limit") {
        "labels"
    } else {
        "value"
    };
    ApiError::bad_request(
        format!(
            "{} of {} samples refused (the others were stored): {}",
            r.total,
            r.total + outcome.accepted,
            r.examples.join("; ")
        ),
        field,
    )
    .with("accepted", json!(outcome.accepted))
    .with("refused", json!(r.total))
    .with("reasons", serde_json::Value::Object(reasons))
}

async fn receive(
    s: Arc<AppState>,
    headers: HeaderMap,
    body: Body,
    protocol: Protocol,
) -> Result<(), ApiError> {
    let ms = &s.metric_store;
    let admitted = admit(&s, &headers, body, spec(protocol), |r| ms.reject_request(r)).await?;
    let (principal, bytes) = (admitted.principal.clone(), admitted.body.clone());
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").to_string());
    let state = s.clone();
    let limits = PushLimits {
        max_decompressed_bytes: s.limits.max_decompressed_bytes,
        accept_future_ms: i64::try_from(s.limits.accept_future.as_millis()).unwrap_or(i64::MAX),
    };
    let outcome = decode(
        &s,
        &admitted,
        |r| ms.reject_request(r),
        move || {
            metrics::ingest::ingest(
                &state.metric_store,
                &state.metrics,
                principal.subscription(),
                encoding.as_deref(),
                &bytes,
                protocol,
                limits,
            )
        },
    )
    .await?;
    drop(admitted);
    // Nothing is answered 2xx before VictoriaMetrics has the samples.
    let outcome = match (outcome, &s.metric_store.victoria) {
        (Ok(mut o), Some(vm)) => {
            let lines = std::mem::take(&mut o.forward);
            if let Err(e) = vm.write(lines).await {
                s.metric_store.reject_request("metrics_store_unavailable");
                tracing::warn!(error = %e, "write to VictoriaMetrics failed");
                return Err(ApiError::unavailable(
                    "the metrics store did not take the samples; nothing is acknowledged, send again",
                )
                .retry_after(5));
            }
            Ok(o)
        }
        (o, _) => o,
    };
    match outcome {
        Ok(o) if o.refused.total == 0 => Ok(()),
        Ok(o) => Err(partial(&o)),
        Err(e) => {
            s.metric_store.reject_request(e.reason());
            Err(refusal(&e))
        }
    }
}

/// `POST /api/v1/write`: 204 when every sample was stored.
#[tracing::instrument(name = "remote_write", skip_all)]
pub async fn remote_write(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    receive(s, headers, body, Protocol::RemoteWrite).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/metrics`: 200 with an empty `ExportMetricsServiceResponse`.
#[tracing::instrument(name = "otlp_metrics", skip_all)]
pub async fn otlp_metrics(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    receive(s, headers, body, Protocol::Otlp).await?;
    let resp =
        opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse::default();
    Ok((
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        prost::Message::encode_to_vec(&resp),
    )
        .into_response())
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The values of every `match[]` parameter of a query string.
pub fn match_params(query: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (url_decode(k) == "match[]").then(|| url_decode(v))
        })
        .collect()
}

/// `GET /federate?match[]=...`: the newest sample of every fresh series
/// that matches, in Prometheus' text format.
///
/// Bounded before it runs: at most `--max-federate-selectors` `match[]`,
/// each with at most 32 matchers, their regexes within the request's regex
/// budget (`--max-query-regex-bytes`), compiled off the async workers;
/// an answer that would pass `--max-federate-bytes` is refused (narrow the
/// selectors) rather than cut, so a scrape never sees half a tenant.
#[tracing::instrument(name = "federate", skip_all)]
pub async fn federate(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let principal = s.require(&headers, &[Role::Operator, Role::Admin])?;
    let params = match_params(query.as_deref().unwrap_or(""));
    let limits = FederateLimits {
        max_selectors: s.read_limits.max_federate_selectors,
        max_regex_bytes: s.read_limits.query.max_regex_bytes,
        max_answer_bytes: s.read_limits.max_federate_bytes,
    };
    let refuse = |e: FederateError| {
        let mut err = ApiError::bad_request(e.to_string(), "match[]");
        if let Some(c) = e.column() {
            err = err.with("column", json!(c));
        }
        if !matches!(e, FederateError::NoSelector) {
            s.metrics.refuse_query(e.reason());
            if let Some(sub) = principal.subscription() {
                s.metrics.refuse_tenant(sub, "query_limit");
            }
            err = err.with("reason", json!(e.reason()));
        }
        err
    };
    // The count is checked at once; selectors are compiled off the workers.
    federate::check_count(&params, &limits).map_err(refuse)?;
    let state = s.clone();
    let sub = principal.subscription().map(str::to_string);
    if let Some(vm) = &s.metric_store.victoria {
        let checked = params.clone();
        tokio::task::spawn_blocking(move || federate::parse(&checked, &limits).map(|_| ()))
            .await
            .map_err(|e| ApiError::internal(format!("federate task failed: {e}")))?
            .map_err(refuse)?;
        let body = vm
            .federate(&params, sub.as_deref(), limits.max_answer_bytes)
            .await
            .map_err(|e| match e {
                VictoriaError::TooLarge { limit } => {
                    refuse(FederateError::AnswerTooLarge { limit })
                }
                e => {
                    tracing::warn!(error = %e, "federate from VictoriaMetrics failed");
                    ApiError::unavailable("the metrics store did not answer; try again")
                        .retry_after(5)
                }
            })?;
        return Ok((
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response());
    }
    let rows = tokio::task::spawn_blocking(move || {
        federate::select(
            &state.metric_store,
            sub.as_deref(),
            &params,
            &limits,
            now_ms(),
        )
    })
    .await
    .map_err(|e| ApiError::internal(format!("federate task failed: {e}")))?
    .map_err(refuse)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::http::answer_text(federate::pieces(rows)),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_params_are_url_decoded() {
        let q = "match%5B%5D=%7B__name__%3D~%22node_.%2B%22%7D&x=1&match[]=up+x";
        assert_eq!(
            match_params(q),
            vec![r#"{__name__=~"node_.+"}"#.to_string(), "up x".into()]
        );
        assert_eq!(url_decode("%zz%4"), "%zz%4");
    }
}

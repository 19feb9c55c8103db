//! `POST /api/v1/write`, `POST /v1/metrics` and `GET /federate`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::selector::Selector;
use super::series::SeriesBuilder;
use super::table::encode_text;
use super::{otlp, remote_write, Protocol};
use crate::auth::Role;
use crate::http::admission::{admit, Spec};
use crate::http::{ApiError, AppState};
use crate::pattern::RegexBudget;

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

/// Undoes remote-write's snappy block compression within `limit` bytes.
fn unsnappy(body: &[u8], limit: usize) -> Result<Vec<u8>, (&'static str, ApiError)> {
    let len = snap::raw::decompress_len(body).map_err(|e| {
        (
            "bad_snappy",
            ApiError::bad_request(format!("body is not snappy block-compressed: {e}"), "body"),
        )
    })?;
    if len > limit {
        return Err((
            "decompressed_too_large",
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body decompresses to {len} bytes, over the limit of {limit} bytes"),
            )
            .with_field("body"),
        ));
    }
    snap::raw::Decoder::new().decompress_vec(body).map_err(|e| {
        (
            "bad_snappy",
            ApiError::bad_request(format!("body is not snappy block-compressed: {e}"), "body"),
        )
    })
}

/// Decodes, validates and applies one request on a blocking thread.
fn ingest_blocking(
    s: &AppState,
    forced: Option<&str>,
    encoding: Option<&str>,
    body: Bytes,
    protocol: Protocol,
) -> Result<Option<ApiError>, (&'static str, ApiError)> {
    let now = now_ms();
    let future = i64::try_from(s.limits.accept_future.as_millis()).unwrap_or(i64::MAX);
    let mut builder = SeriesBuilder::new(forced, now, future)
        .with_label_limits(s.metric_store.table.limits().labels);
    let limit = s.limits.max_decompressed_bytes;
    let malformed = |e: prost::DecodeError| {
        (
            "malformed",
            ApiError::bad_request(format!("malformed protobuf: {e}"), "body"),
        )
    };
    let series_error = |e: super::series::SeriesError| {
        (
            e.reason(),
            ApiError::bad_request(e.to_string(), e.field).with("index", json!(e.index)),
        )
    };
    match protocol {
        Protocol::RemoteWrite => {
            match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
                None | Some("") | Some("snappy") => {}
                Some(other) => {
                    return Err((
                        "unsupported_encoding",
                        ApiError::new(
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            format!("Content-Encoding {other:?} is not supported; remote-write bodies are snappy"),
                        )
                        .with_field("Content-Encoding"),
                    ))
                }
            }
            let raw = unsnappy(&body, limit)?;
            drop(body);
            remote_write::prepare_raw(&raw, &mut builder).map_err(|e| match e {
                remote_write::RawError::Wire(w) => {
                    ("malformed", ApiError::bad_request(w.to_string(), "body"))
                }
                remote_write::RawError::Series(e) => series_error(e),
            })?;
        }
        Protocol::Otlp => {
            let raw = crate::ingest::decompress(encoding, &body, limit).map_err(|e| {
                let status = if e.is_too_large() {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else if matches!(e, crate::ingest::IngestError::UnsupportedEncoding(_)) {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE
                } else {
                    StatusCode::BAD_REQUEST
                };
                (
                    e.reason(),
                    ApiError::new(status, e.to_string()).with_field(e.field()),
                )
            })?;
            let req = otlp::decode(&raw).map_err(malformed)?;
            otlp::prepare(&req, &mut builder).map_err(series_error)?;
        }
    }
    let mut prepared = builder.prepared;
    let applied = s.metric_store.table.apply(&prepared, now);
    let ms = &s.metric_store;
    ms.counters.series_created.inc_by(applied.created);
    ms.counters
        .series_evicted
        .inc_by(applied.evicted + applied.deleted);
    ms.counters
        .samples_accepted
        .get_or_create(&super::ProtocolLabel {
            protocol: protocol.as_str(),
        })
        .inc_by(applied.accepted);
    for &(i, reason) in &applied.refused {
        let what = super::table::Table::describe(&prepared, i);
        prepared.refused.add(reason, 1, || match reason {
            "series_bytes_limit" => format!(
                "new series {what} would pass its subscription's series memory limit (--max-metric-bytes-per-subscription, --max-metric-bytes)"
            ),
            _ => format!("new series {what} is over the series limit of its subscription"),
        });
    }
    for (reason, n) in &prepared.refused.by_reason {
        ms.counters
            .samples_refused
            .get_or_create(&crate::metrics::ReasonLabel { reason })
            .inc_by(*n);
        if matches!(
            *reason,
            "series_limit" | "series_bytes_limit" | "label_limit"
        ) {
            for sub in &prepared.tenants {
                s.metrics.refuse_tenant(sub, reason);
            }
        }
    }
    ms.notify(&prepared, &applied.refused_indexes());
    if prepared.refused.total == 0 {
        return Ok(None);
    }
    let reasons: serde_json::Map<String, serde_json::Value> = prepared
        .refused
        .by_reason
        .iter()
        .map(|(r, n)| (r.to_string(), json!(n)))
        .collect();
    let field = if prepared
        .refused
        .by_reason
        .iter()
        .all(|(r, _)| matches!(*r, "series_limit" | "series_bytes_limit"))
    {
        "series"
    } else if prepared
        .refused
        .by_reason
        .iter()
        .all(|(r, _)| *r == "label_limit")
    {
        "labels"
    } else {
        "value"
    };
    Ok(Some(
        ApiError::bad_request(
            format!(
                "{} of {} samples refused (the others were stored): {}",
                prepared.refused.total,
                prepared.refused.total + applied.accepted,
                prepared.refused.examples.join("; ")
            ),
            field,
        )
        .with("accepted", json!(applied.accepted))
        .with("refused", json!(prepared.refused.total))
        .with("reasons", serde_json::Value::Object(reasons)),
    ))
}

async fn receive(
    s: Arc<AppState>,
    headers: HeaderMap,
    body: Body,
    protocol: Protocol,
) -> Result<(), ApiError> {
    let ms = &s.metric_store;
    let admitted = admit(&s, &headers, body, spec(protocol), |r| ms.reject_request(r)).await?;
    let (principal, bytes) = (admitted.principal, admitted.body);
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").to_string());
    let state = s.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        ingest_blocking(
            &state,
            principal.subscription(),
            encoding.as_deref(),
            bytes,
            protocol,
        )
    })
    .await
    .map_err(|e| ApiError::internal(format!("metrics decoder task failed: {e}")))?;
    drop(admitted.slot);
    drop(admitted.reservation);
    match outcome {
        Ok(None) => Ok(()),
        Ok(Some(partial)) => Err(partial),
        Err((reason, e)) => {
            s.metric_store.reject_request(reason);
            Err(e)
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
    let limits = s.read_limits.clone();
    let refuse = |reason: &'static str, e: ApiError| {
        s.metrics.refuse_query(reason);
        if let Some(sub) = principal.subscription() {
            s.metrics.refuse_tenant(sub, "query_limit");
        }
        e.with("reason", json!(reason))
    };
    if params.is_empty() {
        return Err(ApiError::bad_request(
            "give at least one match[] selector, e.g. match[]={__name__=~\".+\"}",
            "match[]",
        ));
    }
    if params.len() > limits.max_federate_selectors {
        return Err(refuse(
            "too_many_selectors",
            ApiError::bad_request(
                format!(
                    "{} match[] selectors, over the limit of {} (--max-federate-selectors)",
                    params.len(),
                    limits.max_federate_selectors
                ),
                "match[]",
            ),
        ));
    }
    let state = s.clone();
    let sub = principal.subscription().map(str::to_string);
    let answer = tokio::task::spawn_blocking(move || {
        let mut budget = RegexBudget::new(limits.query.max_regex_bytes);
        let selectors = params
            .iter()
            .map(|p| Selector::parse_with(p, &mut budget, super::selector::MAX_MATCHERS))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Err)?;
        let rows = state
            .metric_store
            .table
            .select_bounded(
                sub.as_deref(),
                &selectors,
                now_ms(),
                limits.max_federate_bytes,
            )
            .map_err(Ok)?;
        state
            .metric_store
            .counters
            .federate_series
            .inc_by(rows.len() as u64);
        Ok(rows)
    })
    .await
    .map_err(|e| ApiError::internal(format!("federate task failed: {e}")))?;
    let rows = match answer {
        Ok(rows) => rows,
        Err(Err(e)) => {
            return Err(refuse(
                if e.message.contains("--max-query-regex-bytes") {
                    "regex_budget"
                } else {
                    "syntax"
                },
                ApiError::bad_request(e.to_string(), "match[]").with("column", json!(e.column)),
            ))
        }
        Err(Ok(too_large)) => {
            return Err(refuse(
                "answer_too_large",
                ApiError::bad_request(
                    format!(
                        "the answer would pass {} bytes (--max-federate-bytes); narrow the match[] selectors",
                        too_large.limit
                    ),
                    "match[]",
                ),
            ))
        }
    };
    // Encoded in pieces of a few hundred series while the client reads.
    let mut rows = rows.into_iter().peekable();
    let mut last: Option<String> = None;
    let pieces = std::iter::from_fn(move || {
        rows.peek()?;
        let mut chunk = Vec::with_capacity(256);
        while chunk.len() < 256 {
            match rows.next() {
                Some(r) => chunk.push(r),
                None => break,
            }
        }
        // A # TYPE line only where the name changes, across pieces too.
        let text = encode_text(&chunk);
        let text = match (&last, chunk.first()) {
            (Some(prev), Some(first)) if *prev == first.name => text
                .split_once('\n')
                .map(|(_, rest)| rest.to_string())
                .unwrap_or_default(),
            _ => text,
        };
        last = chunk.last().map(|r| r.name.clone());
        Some(text)
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::http::answer_text(pieces),
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

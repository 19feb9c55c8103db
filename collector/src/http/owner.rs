//! With `--coordination`: the notifier's API of a subscription is
//! answered by the collector that owns it. A collector that does not own
//! the caller's subscription forwards the request there (the token goes
//! with it; a redirect would lose it: clients drop `Authorization` on a
//! redirect to another host or port) and answers what the owner answered.
//! On the owner, a change (POST, PUT, DELETE) is answered only once the
//! subscription's state is saved in ZooKeeper, so an acknowledged rule
//! survives the owner's death.
//!
//! Admin calls without `?subscription=` are answered from the
//! subscriptions this collector owns.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::auth::Role;

/// Marks a forwarded request: it is never forwarded again.
const FORWARDED: &str = "x-sesam-forwarded-by";
/// Names the collector that answered a notifier call.
const ANSWERED: &str = "x-sesam-collector";
/// Largest request body forwarded: what the owner's own handlers accept
/// (axum's default body limit), so a forwarded call is refused exactly as
/// a direct one.
const MAX_FORWARD_BYTES: usize = 2 << 20;
/// How long a call waits for a subscription's ownership to settle (a
/// collector that just joined or is importing the state) before it is
/// answered 503 with `Retry-After`.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
const SETTLE_POLL: std::time::Duration = std::time::Duration::from_millis(50);

fn is_notifier_path(path: &str) -> bool {
    [
        "/api/v1/notification-rules",
        "/api/v1/receivers",
        "/api/v1/silences",
    ]
    .iter()
    .any(|p| path == *p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
        || path == "/api/v1/alerts"
        || path == "/api/v1/notifications"
}

fn retry(e: ApiError) -> Response {
    let mut e = e;
    e.retry_after = Some(1);
    e.into_response()
}

pub async fn route(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(co) = s.coordinated.clone() else {
        return next.run(req).await;
    };
    if !is_notifier_path(req.uri().path()) {
        return next.run(req).await;
    }
    let p = match s.require(req.headers(), &[Role::Operator, Role::Admin]) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let sub = match p.subscription() {
        Some(sub) => Some(sub.to_string()),
        None => axum::extract::Query::<HashMap<String, String>>::try_from_uri(req.uri())
            .ok()
            .and_then(|q| q.0.get("subscription").cloned()),
    };
    let Some(sub) = sub else {
        return next.run(req).await;
    };
    let me = HeaderValue::from_str(co.member_id()).ok();
    // Ownership in transition (no owner known yet, this collector is
    // importing the state, or a forwarding collector's view differs from
    // this one's): wait a little rather than fail at once.
    let forwarded = req.headers().contains_key(FORWARDED);
    let unsettled = |o: &Result<Option<String>, String>| match o {
        Err(_) => true,
        Ok(Some(_)) => forwarded,
        Ok(None) => false,
    };
    let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
    let mut owner = co.owner_elsewhere(&sub);
    while unsettled(&owner) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(SETTLE_POLL).await;
        owner = co.owner_elsewhere(&sub);
    }
    match owner {
        Ok(None) => {
            let change = req.method() != Method::GET && req.method() != Method::HEAD;
            let mut resp = next.run(req).await;
            if change && resp.status().is_success() {
                if let Err(e) = co.persist(&sub).await {
                    return retry(ApiError::unavailable(format!(
                        "the change is made on collector {} but could not be saved to ZooKeeper ({e}); it is saved with the next change of the subscription's state, or send it again",
                        co.member_id()
                    )));
                }
            }
            if let Some(me) = me {
                resp.headers_mut().insert(ANSWERED, me);
            }
            resp
        }
        Ok(Some(url)) => {
            if forwarded {
                return retry(ApiError::unavailable(
                    "the subscription's owner is changing; send it again",
                ));
            }
            match forward(&co, &url, req).await {
                Ok(r) => r,
                Err(Forward::TooLarge) => ApiError::new(
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is over {MAX_FORWARD_BYTES} bytes"),
                )
                .with_field("body")
                .into_response(),
                Err(Forward::Failed(e)) => retry(ApiError::unavailable(format!(
                    "the collector that evaluates this subscription did not answer: {e}"
                ))),
            }
        }
        Err(e) => retry(ApiError::unavailable(e)),
    }
}

enum Forward {
    TooLarge,
    Failed(String),
}

async fn forward(
    co: &crate::coordinated::Coordinated,
    base: &str,
    req: Request,
) -> Result<Response, Forward> {
    let (parts, body) = req.into_parts();
    // Read up to the limit only: a longer body is refused, not buffered.
    let body = axum::body::to_bytes(body, MAX_FORWARD_BYTES)
        .await
        .map_err(|_| Forward::TooLarge)?;
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let url = format!("{}{}", base.trim_end_matches('/'), path);
    let mut out = co.http().request(parts.method.clone(), &url);
    for name in [
        axum::http::header::AUTHORIZATION,
        axum::http::header::CONTENT_TYPE,
        axum::http::header::ACCEPT,
    ] {
        if let Some(v) = parts.headers.get(&name) {
            out = out.header(name, v.clone());
        }
    }
    let answer = out
        .header(FORWARDED, co.member_id())
        .body(body)
        .send()
        .await
        .map_err(|e| Forward::Failed(e.without_url().to_string()))?;
    let status = answer.status();
    let ctype = answer
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .cloned();
    let by = answer.headers().get(ANSWERED).cloned();
    let retry_after = answer
        .headers()
        .get(axum::http::header::RETRY_AFTER)
        .cloned();
    let bytes = answer
        .bytes()
        .await
        .map_err(|e| Forward::Failed(e.without_url().to_string()))?;
    let mut resp = (status, bytes).into_response();
    let h = resp.headers_mut();
    for (name, v) in [
        (axum::http::header::CONTENT_TYPE, ctype),
        (axum::http::header::RETRY_AFTER, retry_after),
        (axum::http::HeaderName::from_static(ANSWERED), by),
    ] {
        if let Some(v) = v {
            h.insert(name, v);
        }
    }
    Ok(resp)
}

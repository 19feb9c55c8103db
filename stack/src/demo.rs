//! The stack's built-in HTTP service: an upstream system for the node's
//! `json` sources, and the webhook the example rule notifies.
//!
//! | path | what |
//! |---|---|
//! | `GET /orders` | three orders; every third call one has `"amount": "n/a"`, so the `orders` pipe fails on that entity every third run |
//! | `GET /crm/contacts` | a few contacts whose `updated` field changes every minute |
//! | `POST /hook` | a notification (Alertmanager webhook v4): logged, kept (last 100) |
//! | `GET /hook` | the notifications received, newest last |

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
struct Demo {
    orders_calls: AtomicU64,
    /// Short critical sections; never held across an await.
    received: Mutex<VecDeque<Value>>,
}

async fn orders(State(d): State<Arc<Demo>>, headers: HeaderMap) -> Result<Json<Value>, StatusCode> {
    if headers.get("authorization").is_none() {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let n = d.orders_calls.fetch_add(1, Ordering::Relaxed);
    let bad = n % 3 == 0;
    Ok(Json(json!([
        {"_id": "o1", "customer": "c1", "amount": "120"},
        {"_id": "o2", "customer": "c2", "amount": if bad { "n/a" } else { "95" }},
        {"_id": "o3", "customer": "c3", "amount": "75"},
    ])))
}

async fn contacts() -> Json<Value> {
    let minute = schemas_minute();
    Json(json!([
        {"_id": "p1", "name": "Ada Lovelace", "email": "ada@example.org", "updated": minute},
        {"_id": "p2", "name": "Alan Turing", "email": "alan@example.org", "updated": minute},
        {"_id": "p3", "name": "Grace Hopper", "email": "grace@example.org", "updated": minute},
    ]))
}

fn schemas_minute() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0)
}

async fn hook_post(State(d): State<Arc<Demo>>, body: Bytes) -> (StatusCode, &'static str) {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        tracing::warn!(target: "sesam_stack::webhook", "webhook received a body that is not JSON");
        return (StatusCode::BAD_REQUEST, "not JSON");
    };
    for a in v["alerts"].as_array().into_iter().flatten() {
        tracing::info!(
            target: "sesam_stack::webhook",
            status = %a["status"].as_str().unwrap_or(""),
            alert = %a["labels"]["alertname"].as_str().unwrap_or(""),
            pipe = %a["labels"]["pipe"].as_str().unwrap_or("-"),
            "notification: {}",
            a["annotations"]["summary"].as_str().unwrap_or("")
        );
    }
    let mut r = d.received.lock().unwrap_or_else(|p| p.into_inner());
    if r.len() == 100 {
        r.pop_front();
    }
    r.push_back(v);
    (StatusCode::OK, "ok")
}

async fn hook_get(State(d): State<Arc<Demo>>) -> Json<Value> {
    let r = d.received.lock().unwrap_or_else(|p| p.into_inner());
    Json(json!({ "notifications": r.iter().collect::<Vec<_>>() }))
}

/// Serves until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/orders", get(orders))
        .route("/crm/contacts", get(contacts))
        .route("/hook", get(hook_get).post(hook_post))
        .with_state(Arc::new(Demo::default()));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

/// The status of a GET (readiness checks).
pub async fn http_get_status(url: &str) -> Result<u16, reqwest::Error> {
    Ok(client().get(url).send().await?.status().as_u16())
}

/// POSTs a JSON body with a bearer token; an error unless 2xx.
pub async fn http_post_json(url: &str, token: &str, body: &str) -> anyhow::Result<()> {
    let r = client()
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?;
    if !r.status().is_success() {
        anyhow::bail!("POST {url}: {}", r.status());
    }
    Ok(())
}

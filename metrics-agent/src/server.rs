//! `GET /metrics`: host, process and agent metrics collected at request
//! time (like node_exporter), in the text format 0.0.4, without target
//! labels (the scraping Prometheus adds `job` and `instance`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::Shared;

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let now = crate::now_ms();
    let body = tokio::task::spawn_blocking(move || {
        let mut samples = shared.local_samples(now);
        crate::text::encode(&mut samples)
    })
    .await;
    match body {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("collection failed: {e}"),
        )
            .into_response(),
    }
}

/// Serves `/metrics` on `listener` until `shutdown`.
pub fn spawn(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(shared);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics");
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "/metrics server stopped");
        }
    })
}

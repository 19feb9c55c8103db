//! `sesam-shipper` as a library: host log sources (kernel, files) into an
//! outbox, and delivery sinks (collector, OTLP) out of it, plus `/metrics`.
//! The node uses [`collector_sink`] to run the same delivery in-process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::deliver::collector::EndpointError;
use crate::deliver::{
    CollectorEndpoint, DeliveryConfig, DeliveryMetrics, OtlpEndpoint, RecordFilter, Sink,
};
use crate::kmsg::KmsgConfig;
use crate::outbox::{Outbox, OutboxConfig, OutboxError};
use crate::redact::{RedactConfig, RedactError, Redactor};
use crate::tail::{TailConfig, TailError};

/// A receiver address and its credentials.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ShipperConfig {
    /// The outbox lives in `<data_dir>/outbox`.
    pub data_dir: PathBuf,
    pub source: String,
    pub subscription: String,
    pub collector: Option<Target>,
    pub otlp: Option<Target>,
    /// `/dev/kmsg` or a file in its format; `None` ships no kernel log.
    pub kmsg: Option<PathBuf>,
    /// Files (globs) to tail.
    pub files: Vec<String>,
    pub redact: RedactConfig,
    pub delivery: DeliveryConfig,
    pub outbox: OutboxConfig,
    /// Where to serve `/metrics`, if anywhere.
    pub listen: Option<SocketAddr>,
    pub request_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("outbox: {0}")]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Redact(#[from] RedactError),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Tail(#[from] TailError),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Task(String),
}

/// A delivery sink to the collector for `outbox`, as the node runs it.
pub fn collector_sink(
    outbox: Outbox,
    target: &Target,
    redactor: Arc<Redactor>,
    filter: Option<RecordFilter>,
    delivery: DeliveryConfig,
    metrics: DeliveryMetrics,
    timeout: Duration,
) -> Result<Sink<CollectorEndpoint>, EndpointError> {
    let endpoint =
        CollectorEndpoint::new(&target.url, target.token.as_deref().unwrap_or(""), timeout)?;
    Ok(Sink {
        outbox,
        endpoint: Arc::new(endpoint),
        redactor,
        filter,
        config: delivery,
        metrics,
    })
}

async fn serve_metrics(
    addr: SocketAddr,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ServiceError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServiceError::Listen { addr, source })?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut text = String::new();
                match prometheus_client::encoding::text::encode(&mut text, &registry) {
                    Ok(()) => (
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response(),
                    Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                        .into_response(),
                }
            }
        }),
    );
    tracing::info!(%addr, "serving /metrics");
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    }))
}

/// Runs the shipper until `shutdown` is cancelled.
pub async fn run(config: ShipperConfig, shutdown: CancellationToken) -> Result<(), ServiceError> {
    let redactor = Arc::new(Redactor::new(&config.redact)?);
    let outbox = Outbox::open(config.data_dir.join("outbox"), config.outbox.clone())?;
    let mut registry = Registry::default();
    outbox.metrics().register(&mut registry);
    redactor.register_metrics(&mut registry);
    let metrics = DeliveryMetrics::default();
    metrics.register(&mut registry);

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(target) = &config.collector {
        let sink = collector_sink(
            outbox.clone(),
            target,
            redactor.clone(),
            None,
            config.delivery.clone(),
            metrics.clone(),
            config.request_timeout,
        )?;
        let s = shutdown.clone();
        tasks.spawn(async move {
            sink.run(s)
                .await
                .map_err(|e| ServiceError::Task(format!("collector sink: {e}")))
        });
    }
    if let Some(target) = &config.otlp {
        let endpoint = OtlpEndpoint::new(
            &target.url,
            target.token.as_deref(),
            "sesam-shipper",
            config.request_timeout,
        )?;
        let sink = Sink {
            outbox: outbox.clone(),
            endpoint: Arc::new(endpoint),
            redactor: redactor.clone(),
            filter: None,
            config: DeliveryConfig {
                sink: "otlp".into(),
                ..config.delivery.clone()
            },
            metrics: metrics.clone(),
        };
        let s = shutdown.clone();
        tasks.spawn(async move {
            sink.run(s)
                .await
                .map_err(|e| ServiceError::Task(format!("otlp sink: {e}")))
        });
    }
    let mut threads = Vec::new();
    if let Some(path) = &config.kmsg {
        let kc = KmsgConfig {
            path: path.clone(),
            source: config.source.clone(),
            subscription: config.subscription.clone(),
            poll: Duration::from_millis(250),
        };
        let (ob, s) = (outbox.clone(), shutdown.clone());
        threads.push(
            std::thread::Builder::new()
                .name("kmsg".into())
                .spawn(move || {
                    if let Err(e) = crate::kmsg::run(&ob, &kc, &s) {
                        tracing::error!(error = %e, "kernel log source stopped");
                    }
                })
                .map_err(|e| ServiceError::Task(e.to_string()))?,
        );
    }
    if !config.files.is_empty() {
        crate::tail::check_patterns(&config.files)?;
        let tc = TailConfig {
            patterns: config.files.clone(),
            source: config.source.clone(),
            subscription: config.subscription.clone(),
            ..TailConfig::default()
        };
        let (ob, s) = (outbox.clone(), shutdown.clone());
        threads.push(
            std::thread::Builder::new()
                .name("tail".into())
                .spawn(move || {
                    if let Err(e) = crate::tail::run(&ob, &tc, &s) {
                        tracing::error!(error = %e, "file tail source stopped");
                    }
                })
                .map_err(|e| ServiceError::Task(e.to_string()))?,
        );
    }
    let server = match config.listen {
        Some(addr) => Some(serve_metrics(addr, Arc::new(registry), shutdown.clone()).await?),
        None => None,
    };

    let mut result = Ok(());
    // A sink that stops on its own is fatal: stop everything and say why.
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                match joined {
                    Ok(Err(e)) => result = Err(e),
                    Err(e) => result = Err(ServiceError::Task(e.to_string())),
                    Ok(Ok(())) => {}
                }
                shutdown.cancel();
            }
        }
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(ServiceError::Task(e.to_string())),
            Ok(Ok(())) => {}
        }
    }
    for t in threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    if let Some(s) = server {
        let _ = s.await;
    }
    result
}

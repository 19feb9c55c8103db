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

/// A receiver and its credentials: one URL, or several collectors to fail
/// over between (tried in this order, sticky to the one that works).
#[derive(Debug, Clone)]
pub struct Target {
    pub urls: Vec<String>,
    pub token: Option<String>,
}

impl Target {
    /// A single receiver.
    pub fn new(url: impl Into<String>, token: Option<String>) -> Target {
        Target {
            urls: vec![url.into()],
            token,
        }
    }
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
    let endpoint = CollectorEndpoint::with_failover(
        &target.urls,
        target.token.as_deref().unwrap_or(""),
        timeout,
    )?;
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

/// Unregisters the outbox sinks that are not configured any more (e.g. an
/// OTLP endpoint dropped from the flags): a sink nobody drains would keep
/// the outbox from ever shrinking. Their cursors are gone for good; said
/// with a warning naming the sink and what it had not received.
pub async fn unregister_stale_sinks(outbox: &Outbox, keep: &[&str]) -> Result<(), OutboxError> {
    let stats = outbox.stats();
    for (name, state) in &stats.sinks {
        if keep.contains(&name.as_str()) {
            continue;
        }
        let pending = stats.next_seq.saturating_sub(1).saturating_sub(state.acked);
        tracing::warn!(sink = %name, pending_records = pending,
            "outbox sink is not configured any more; unregistering it so the outbox can shrink (its undelivered records will not be sent to it)");
        outbox.unregister_sink(name).await?;
    }
    Ok(())
}

/// Runs the shipper until `shutdown` is cancelled.
pub async fn run(config: ShipperConfig, shutdown: CancellationToken) -> Result<(), ServiceError> {
    let redactor = Arc::new(Redactor::new(&config.redact)?);
    let outbox = Outbox::open(config.data_dir.join("outbox"), config.outbox.clone())?;
    tracing::info!(epoch = outbox.epoch(), path = %outbox.path().display(), "outbox open");
    let mut registry = Registry::default();
    outbox.metrics().register(&mut registry);
    redactor.register_metrics(&mut registry);
    let metrics = DeliveryMetrics::default();
    metrics.register(&mut registry);

    let otlp_sink = "otlp";
    let mut keep = Vec::new();
    if config.collector.is_some() {
        keep.push(config.delivery.sink.as_str());
    }
    if config.otlp.is_some() {
        keep.push(otlp_sink);
    }
    unregister_stale_sinks(&outbox, &keep).await?;

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
        registry.register(
            "shipper_collector_failovers",
            "Switches from a failing collector to the next one",
            sink.endpoint.failovers(),
        );
        tracing::info!(collectors = ?target.urls.iter().map(|u| crate::deliver::collector::check_url(u).unwrap_or_default()).collect::<Vec<_>>(), "shipping to the collector");
        let s = shutdown.clone();
        tasks.spawn(async move {
            sink.run(s)
                .await
                .map_err(|e| ServiceError::Task(format!("collector sink: {e}")))
        });
    }
    if let Some(target) = &config.otlp {
        let url = target.urls.first().ok_or(EndpointError::NoUrl)?;
        let endpoint = OtlpEndpoint::new(
            url,
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
                sink: otlp_sink.into(),
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
            redactor: Some(redactor.clone()),
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

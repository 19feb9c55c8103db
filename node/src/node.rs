//! Starting, reconfiguring and stopping a node.
//!
//! [`Node::open`] opens the node database (`<data-dir>/node`) and the outbox
//! (`<data-dir>/outbox`), loads and validates the configuration file and
//! binds the API listener; [`Node::run`] starts the pumps, the health task,
//! the log drain and the API, and returns after `shutdown` is cancelled and
//! every task has finished (or the shutdown deadline passed). The outbox
//! handle ([`Node::outbox`]) is available between the two, so a caller can
//! start a shipper that drains the same outbox in the same process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use schemas::{Body, Record};
use sha2::{Digest, Sha256};
use shipper::outbox::{Outbox, OutboxConfig, OutboxError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConfigErrors, ResolvedConfig};
use crate::emit::Emitter;
use crate::history::Author;
use crate::limits::Limits;
use crate::logs::LogReceiver;
use crate::metrics::Metrics;
use crate::pump::PumpContext;
use crate::state::Shared;
use crate::store::{blocking, Store, StoreError};
use crate::supervisor::{store_version, Supervisor};

/// Where the API listens.
#[derive(Debug)]
pub enum Listen {
    Addr(SocketAddr),
    /// An already bound listener (tests bind port 0 and read the address).
    Listener(TcpListener),
}

/// Everything `sesam-node` is started with.
#[derive(Debug)]
pub struct NodeConfig {
    /// The configuration file (a JSON array of entities).
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub listen: Listen,
    /// The `source` of every record.
    pub node_id: String,
    /// The `subscription` of every record.
    pub subscription: String,
    /// The API bearer token; `None` leaves the API open.
    pub api_token: Option<String>,
    /// How often a health record is emitted.
    pub health_interval: Duration,
    /// How long shutdown waits for running tasks.
    pub shutdown_timeout: Duration,
    /// Service log lines to append to the outbox (see [`crate::logs`]).
    pub log_records: Option<LogReceiver>,
    pub outbox: OutboxConfig,
    /// Ship the outbox to this collector in-process (`--collector URL
    /// --token-file FILE`), redacted by the shipper's default rules.
    pub collector: Option<shipper::service::Target>,
    /// A load generator of synthetic log records (`--synthetic-logs`), off by default.
    pub synthetic: Option<crate::synthetic::SyntheticLogs>,
    /// Bounds of the API and of what systems may send.
    pub limits: Limits,
    /// Configuration versions kept in the node's history (at least 1).
    pub config_history: u64,
    /// Run `config_path` even when the stored configuration differs (it
    /// becomes a new version); by default the file only seeds an empty node.
    pub config_from_file: bool,
}

impl NodeConfig {
    /// A config with the defaults of the binary's flags.
    pub fn new(
        config_path: impl Into<PathBuf>,
        data_dir: impl Into<PathBuf>,
        listen: Listen,
    ) -> NodeConfig {
        NodeConfig {
            config_path: config_path.into(),
            data_dir: data_dir.into(),
            listen,
            node_id: "sesam-node".into(),
            subscription: "default".into(),
            api_token: None,
            health_interval: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            log_records: None,
            outbox: OutboxConfig::default(),
            collector: None,
            synthetic: None,
            limits: Limits::default(),
            config_history: 20,
            config_from_file: false,
        }
    }
}

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("read configuration file {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration file {path} is invalid: {errors}")]
    Config { path: PathBuf, errors: ConfigErrors },
    #[error("the stored configuration (version {version}) is invalid ({errors}) and the configuration file cannot replace it: {file}")]
    StoredConfig {
        version: u64,
        errors: ConfigErrors,
        file: Box<NodeError>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serve the API: {0}")]
    Serve(#[source] std::io::Error),
    #[error("build the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
    #[error("create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A node that is open but not yet running.
#[derive(Debug)]
pub struct Node {
    shared: Arc<Shared>,
    collector: Option<(shipper::service::Target, shipper::deliver::DeliveryMetrics)>,
    listener: TcpListener,
    log_records: Option<LogReceiver>,
    health_interval: Duration,
    shutdown_timeout: Duration,
    synthetic: Option<crate::synthetic::SyntheticLogs>,
}

impl Node {
    /// Opens storage and the outbox, loads the configuration, binds the API.
    pub async fn open(config: NodeConfig) -> Result<Node, NodeError> {
        let file_config = read_config_file(&config.config_path);
        let store_dir = config.data_dir.join("node");
        let outbox_dir = config.data_dir.join("outbox");
        // Data directories are private (0700) whatever the umask: the node's
        // store holds secret values, the outbox unredacted records.
        for dir in [&config.data_dir, &store_dir, &outbox_dir] {
            sesam_common::files::private_dir(dir).map_err(|source| NodeError::DataDir {
                path: dir.clone(),
                source,
            })?;
        }
        let store = blocking(move || Store::open(&store_dir)).await?;
        let (resolved, version) = initial_config(
            &store,
            &config.config_path,
            file_config,
            config.config_from_file,
            config.config_history,
        )
        .await?;
        let outbox_config = config.outbox.clone();
        let outbox = blocking(move || Outbox::open(outbox_dir, outbox_config)).await?;
        let listener = match config.listen {
            Listen::Listener(l) => l,
            Listen::Addr(a) => TcpListener::bind(a)
                .await
                .map_err(|source| NodeError::Bind {
                    addr: a.to_string(),
                    source,
                })?,
        };
        let metrics = Metrics::default();
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        outbox.metrics().register(&mut registry);
        let redactor = Arc::new(
            shipper::redact::Redactor::new(&shipper::redact::RedactConfig::default())
                .expect("the default redaction rules compile"),
        );
        let collector = config.collector.map(|target| {
            let metrics = shipper::deliver::DeliveryMetrics::default();
            metrics.register(&mut registry);
            redactor.register_metrics(&mut registry);
            (target, metrics)
        });
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .redirect(crate::pump::system::same_origin_redirects())
            .build()
            .map_err(NodeError::Http)?;
        let limits = config.limits;
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let health_wakeup = Arc::new(tokio::sync::Notify::new());
        let emitter = Emitter::new(
            &config.node_id,
            &config.subscription,
            outbox.clone(),
            store.clone(),
            metrics.clone(),
        );
        let ctx = PumpContext {
            store: store.clone(),
            http,
            events: emitter.clone(),
            metrics: metrics.clone(),
            max_source_bytes: limits.max_source_bytes,
            source_page_entities: limits.source_page_entities,
            shutdown: shutdown.clone(),
            run_grace: config.shutdown_timeout.mul_f64(0.7),
            tracker: tracker.clone(),
            health_wakeup: health_wakeup.clone(),
        };
        let supervisor = Supervisor::new(
            ctx,
            resolved,
            version,
            config.config_history,
            limits.max_config_entities,
        );
        let shared = Arc::new(Shared {
            node_id: config.node_id,
            subscription: config.subscription,
            start_nanos: schemas::time::now_nanos(),
            store,
            outbox,
            emitter,
            metrics,
            registry,
            supervisor,
            health_wakeup,
            last_health: Mutex::new(None),
            health_cache: Mutex::new(None),
            shutdown,
            tracker,
            api_token_sha256: config
                .api_token
                .map(|t| Sha256::digest(t.trim().as_bytes()).into()),
            redactor,
            request_slots: Arc::new(tokio::sync::Semaphore::new(
                limits.max_concurrent_requests.max(1),
            )),
            limits,
        });
        Ok(Node {
            shared,
            collector,
            listener,
            log_records: config.log_records,
            health_interval: config.health_interval,
            shutdown_timeout: config.shutdown_timeout,
            synthetic: config.synthetic,
        })
    }

    /// The outbox every record of this node is appended to.
    pub fn outbox(&self) -> &Outbox {
        &self.shared.outbox
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs until `shutdown` is cancelled, then stops every task within the
    /// shutdown deadline.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), NodeError> {
        let s = self.shared;
        if s.api_token_sha256.is_none() {
            tracing::warn!(
                "no --api-token-file given: the node API is open to anyone who can reach it"
            );
        }
        if let Some(rx) = self.log_records {
            spawn_log_drain(s.clone(), rx);
        }
        if let Some((target, metrics)) = self.collector {
            s.refresh_redaction_secrets().await;
            let filter_state = s.clone();
            let filter: shipper::deliver::RecordFilter =
                Arc::new(move |r: &Record| filter_state.may_ship(r));
            match shipper::service::collector_sink(
                s.outbox.clone(),
                &target,
                s.redactor.clone(),
                Some(filter),
                shipper::deliver::DeliveryConfig::default(),
                metrics,
                Duration::from_secs(30),
            ) {
                Ok(sink) => {
                    let stop = s.shutdown.clone();
                    tracing::info!(collector = %sink.endpoint.current(), collectors = target.urls.len(), "shipping the outbox to the collector");
                    s.tracker.spawn(async move {
                        if let Err(e) = sink.run(stop).await {
                            tracing::error!(error = %e, "in-process shipper stopped");
                        }
                    });
                }
                Err(e) => tracing::error!(error = %e, "in-process shipper not started"),
            }
        }
        s.supervisor.start().await;
        let config = s.config();
        crate::health::spawn(s.clone(), self.health_interval);
        if let Some(synthetic) = self.synthetic {
            crate::synthetic::spawn(s.clone(), synthetic);
        }
        tracing::info!(
            addr = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            pipes = config.pipes.len(),
            node_id = %s.node_id,
            "sesam-node started"
        );

        let app = crate::api::router(s.clone());
        let stop = s.shutdown.clone();
        let forward = shutdown.clone();
        // One token fans out: the caller's shutdown cancels the node's own.
        s.tracker.spawn(async move {
            tokio::select! {
                _ = forward.cancelled() => stop.cancel(),
                _ = stop.cancelled() => {}
            }
        });
        let serve_stop = s.shutdown.clone();
        let served = axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { serve_stop.cancelled().await })
        .await;
        // If the server failed on its own, stop everything else too.
        s.shutdown.cancel();
        tracing::info!("sesam-node shutting down");
        s.tracker.close();
        if tokio::time::timeout(self.shutdown_timeout, s.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?self.shutdown_timeout, "shutdown deadline passed; abandoning the remaining tasks");
        } else {
            // Connection tasks of the server may still be dropping their
            // handles; the store and outbox close with the last one, so that
            // when `run` returns they can be opened again (a restart in the
            // same process, a test reading the outbox).
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while Arc::strong_count(&s) > 1 && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        drop(s);
        served.map_err(NodeError::Serve)
    }
}

/// Opens a node and runs it until `shutdown` is cancelled.
pub async fn run(config: NodeConfig, shutdown: CancellationToken) -> Result<(), NodeError> {
    Node::open(config).await?.run(shutdown).await
}

fn read_config_file(path: &std::path::Path) -> Result<ResolvedConfig, NodeError> {
    let bytes = std::fs::read(path).map_err(|source| NodeError::ReadConfig {
        path: path.to_path_buf(),
        source,
    })?;
    crate::config::parse(&bytes).map_err(|errors| NodeError::Config {
        path: path.to_path_buf(),
        errors,
    })
}

/// The configuration a start runs, and its version: the stored one (the
/// last the node accepted, through the API or a file), or the file when
/// nothing is stored yet (it seeds the node) or when asked to.
async fn initial_config(
    store: &Store,
    path: &std::path::Path,
    file: Result<ResolvedConfig, NodeError>,
    from_file: bool,
    keep: u64,
) -> Result<(ResolvedConfig, u64), NodeError> {
    let st = store.clone();
    let stored = blocking(move || st.current_config()).await?;
    let Some(stored) = stored else {
        let config = file?;
        let v = store_version(store, None, &config, Author::file(path), keep).await?;
        tracing::info!(path = %path.display(), version = v, "configuration seeded from the configuration file");
        return Ok((config, v));
    };
    let resolved = stored
        .entities()
        .map_err(|e| {
            crate::config::ConfigErrors(vec![crate::config::ConfigError {
                entity: String::new(),
                field: String::new(),
                message: format!("the stored entities do not decode: {e}"),
            }])
        })
        .and_then(crate::config::resolve);
    match (resolved, file) {
        (Ok(c), Ok(f)) if f.hash == c.hash => {
            tracing::info!(
                version = stored.version,
                "running the stored configuration (the same as the configuration file)"
            );
            Ok((c, stored.version))
        }
        (Ok(c), Ok(f)) => {
            if from_file {
                let v = store_version(store, Some(&stored), &f, Author::file(path), keep).await?;
                tracing::warn!(path = %path.display(), replaced = stored.version, version = v, "--config-from-file: the configuration file replaces the stored configuration");
                Ok((f, v))
            } else {
                tracing::warn!(
                    path = %path.display(),
                    version = stored.version,
                    changed_by = %stored.who.operation,
                    "the stored configuration differs from the configuration file; running the stored one (the file only seeds an empty node; see GET /api/config/history, or start with --config-from-file to run the file)"
                );
                Ok((c, stored.version))
            }
        }
        (Ok(c), Err(e)) => {
            tracing::warn!(error = %e, version = stored.version, "the configuration file cannot be used; running the stored configuration");
            Ok((c, stored.version))
        }
        (Err(errors), Ok(f)) => {
            tracing::error!(%errors, version = stored.version, path = %path.display(), "the stored configuration is invalid; running the configuration file instead");
            let v = store_version(store, Some(&stored), &f, Author::file(path), keep).await?;
            Ok((f, v))
        }
        (Err(errors), Err(e)) => Err(NodeError::StoredConfig {
            version: stored.version,
            errors,
            file: Box::new(e),
        }),
    }
}

/// Appends service log lines to the outbox in batches.
fn spawn_log_drain(s: Arc<Shared>, mut rx: LogReceiver) {
    let shared = s.clone();
    s.tracker.spawn(async move {
        let mut reported_drops = 0u64;
        loop {
            let mut batch = Vec::new();
            let n = tokio::select! {
                n = rx.rx.recv_many(&mut batch, 256) => n,
                _ = shared.shutdown.cancelled() => {
                    // Take what is already queued, then stop.
                    while batch.len() < 4096 {
                        match rx.rx.try_recv() {
                            Ok(x) => batch.push(x),
                            Err(_) => break,
                        }
                    }
                    if batch.is_empty() { break; }
                    batch.len()
                }
            };
            if n == 0 {
                break;
            }
            let dropped = rx.dropped();
            if dropped > reported_drops {
                shared
                    .metrics
                    .log_records_dropped
                    .inc_by(dropped - reported_drops);
                reported_drops = dropped;
            }
            let records: Vec<Record> = batch
                .into_iter()
                .map(|(ts, body)| Record {
                    seq: 0,
                    ts,
                    source: shared.node_id.clone(),
                    subscription: shared.subscription.clone(),
                    body: Body::Log(body),
                })
                .collect();
            shared.emit(records).await;
            if shared.shutdown.is_cancelled() && rx.rx.is_empty() {
                break;
            }
        }
    });
}

//! `sesam-collector`: authenticated multi-tenant ingest, a RocksDB log store
//! built for search (LogQL subset, Loki-compatible API), the sources view,
//! retention, termination and checkpoints.
//!
//! The library entry point is [`run`]; `main.rs` only parses flags.
//!
//! # Hooks for components running inside the collector
//! The notifier (crate `notifier`, opened over the store's database in its
//! own column family) observes every newly stored record and every pushed
//! metric sample. Over the RocksDB store it evaluates records off the
//! commit path, on its own thread: the store writes a durable commit feed
//! (`logs/rocks/feed.rs`) in the same batch as the records and hands each
//! commit over without waiting ([`IngestObserver::committed_feed`]); the
//! notifier reads the feed back after a restart or when it lags, and
//! persists what it evaluated with its effects (see the notifier crate's
//! `feed.rs`). A store without a feed (any other [`LogStore`]) keeps the
//! in-process observer path: records are evaluated in
//! [`IngestObserver::committed`]. Other components can do the same through
//! [`IngestObserver`]s passed in [`CollectorConfig::observers`]: they are
//! called on the store's writer thread right after each synced commit (and
//! before the ingest is answered) with the records stored for the first
//! time, never duplicates; and when a subscription is terminated. Extra
//! routes can be merged into [`http::router`]'s router.

#![forbid(unsafe_code)]

pub mod auth;
pub mod checkpoint;
pub mod compression;
pub mod coordinated;
pub mod fair;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod pattern;
pub mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::{Role, Tokens};
pub use http::{AdmissionLimits, ReadLimits, ServerLimits};
pub use logs::ingest::IngestLimits;
pub use logs::retention::RetentionPolicy;
pub use logs::rocks::{Store, StoreConfig};
pub use logs::{IngestObserver, LogStore};
pub use metrics::{MetricLimits, MetricObserver, MetricSample};

/// Where to listen.
#[derive(Debug)]
pub enum Listen {
    Addr(SocketAddr),
    /// An already bound listener (tests bind `127.0.0.1:0`).
    Listener(tokio::net::TcpListener),
}

/// The log store backend.
#[derive(Debug, Clone, Default)]
pub enum Storage {
    /// RocksDB under the data dir: one collector, one machine.
    #[default]
    RocksDb,
    /// ClickHouse: any number of collectors over one server or cluster.
    /// The data dir still keeps the notifier's state.
    ClickHouse(logs::clickhouse::ClickHouseConfig),
}

/// Everything [`run`] needs.
pub struct CollectorConfig {
    pub data_dir: PathBuf,
    pub listen: Listen,
    pub tokens: Tokens,
    pub checkpoint_dir: Option<PathBuf>,
    /// Time between automatic checkpoints (default 24 h).
    pub checkpoint_interval: Duration,
    /// Checkpoints kept (default 7).
    pub checkpoint_keep: usize,
    pub retention: RetentionPolicy,
    /// Time between retention passes (default 1 min).
    pub retention_interval: Duration,
    pub limits: IngestLimits,
    pub store: StoreConfig,
    /// Where the logs are kept: the embedded RocksDB store under
    /// `data_dir` (default) or ClickHouse.
    pub storage: Storage,
    /// Connection limits and timeouts of the HTTP server.
    pub server: ServerLimits,
    /// Body budget, body deadlines and decode slots of the write endpoints
    /// (ingest, remote-write, OTLP). Decoding memory is bounded by
    /// `max_concurrent_ingests` x 3 x `max_decompressed_bytes`, bodies by
    /// `max_inflight_body_bytes`.
    pub admission: AdmissionLimits,
    /// Bounds of queries and answers.
    pub read: ReadLimits,
    /// Live tails open at once (`/loki/api/v1/tail`).
    pub tail: logs::tail::TailLimits,
    /// The operator console (`/ui/`).
    pub ui: http::ui::session::UiConfig,
    pub max_concurrent_queries: usize,
    pub query_timeout: Duration,
    /// After a shutdown signal, how long in-flight requests get to finish.
    pub shutdown_deadline: Duration,
    pub observers: Vec<Arc<dyn IngestObserver>>,
    /// Called with the samples of every accepted remote-write / OTLP
    /// metrics request (the notifier's `metric_threshold` rules).
    pub metric_observers: Vec<Arc<dyn MetricObserver>>,
    /// Bounds of the latest-sample table of pushed metrics.
    pub metric_limits: MetricLimits,
    /// Keep accepted samples in VictoriaMetrics at this base URL too and
    /// answer `/federate` from it (`--metrics-storage victoriametrics`);
    /// `None`: the latest-sample table only.
    pub victoriametrics_url: Option<String>,
    /// Receivers, rules and silences loaded into the notifier at start
    /// (`--rules FILE`, TOML or JSON).
    pub rules_file: Option<PathBuf>,
    /// Notifier settings (external URL for links, delivery retries,
    /// limits, egress policy).
    pub notifier: notifier::NotifierConfig,
    /// The notifier's clock (tests pass a manual one).
    pub notifier_clock: Arc<dyn notifier::Clock>,
    /// Run the notifier (default true; benchmarks turn it off to measure
    /// its cost).
    pub notifier_enabled: bool,
    /// One notifier per subscription across collectors through ZooKeeper
    /// (`--coordination`; needs ClickHouse storage and the notifier).
    pub coordination: Option<coordinated::CoordinationConfig>,
}

impl std::fmt::Debug for CollectorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorConfig")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("tokens", &self.tokens.len())
            .field("checkpoint_dir", &self.checkpoint_dir)
            .field("retention", &self.retention)
            .field("limits", &self.limits)
            .field("observers", &self.observers.len())
            .field("metric_observers", &self.metric_observers.len())
            .finish_non_exhaustive()
    }
}

impl CollectorConfig {
    /// A configuration with the documented defaults.
    pub fn new(data_dir: impl Into<PathBuf>, listen: Listen, tokens: Tokens) -> Self {
        CollectorConfig {
            data_dir: data_dir.into(),
            listen,
            tokens,
            checkpoint_dir: None,
            checkpoint_interval: Duration::from_secs(24 * 3600),
            checkpoint_keep: 7,
            retention: RetentionPolicy::default(),
            retention_interval: Duration::from_secs(60),
            limits: IngestLimits::default(),
            store: StoreConfig::default(),
            storage: Storage::default(),
            server: ServerLimits::default(),
            admission: AdmissionLimits::default(),
            read: ReadLimits::default(),
            tail: logs::tail::TailLimits::default(),
            ui: http::ui::session::UiConfig::default(),
            max_concurrent_queries: 4,
            query_timeout: Duration::from_secs(30),
            shutdown_deadline: Duration::from_secs(10),
            observers: Vec::new(),
            metric_observers: Vec::new(),
            metric_limits: MetricLimits::default(),
            victoriametrics_url: None,
            rules_file: None,
            notifier: notifier::NotifierConfig::default(),
            notifier_clock: Arc::new(notifier::SystemClock),
            notifier_enabled: true,
            coordination: None,
        }
    }
}

/// Why the collector could not run.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error(transparent)]
    Store(#[from] logs::StoreError),
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serve HTTP: {0}")]
    Serve(#[source] std::io::Error),
    #[error("{0}")]
    Task(String),
    #[error("notifier: {0}")]
    Notifier(#[from] notifier::NotifierError),
    #[error("metrics store: {0}")]
    MetricsStore(String),
}

/// Feeds the notifier from the store's commits and the metrics ingest. The
/// store needs its observers before it opens, the notifier needs the open
/// store: the hook is filled in between.
///
/// With `--coordination` (`coordinated` set at start) the store's commits
/// are not evaluated here: every one is copied to the shared feed, and
/// the subscription's owner evaluates it.
#[derive(Debug, Default)]
struct NotifierHook(
    std::sync::OnceLock<notifier::Notifier>,
    std::sync::OnceLock<bool>,
    std::sync::OnceLock<coordinated::Coordinated>,
);

impl NotifierHook {
    fn coordinated(&self) -> bool {
        self.1.get().copied().unwrap_or(false)
    }
}

impl IngestObserver for NotifierHook {
    fn committed(&self, records: &[schemas::Record]) {
        if self.coordinated() {
            return;
        }
        if let Some(n) = self.0.get() {
            n.on_records(records);
        }
    }
    fn committed_feed(&self, commit: u64, records: Arc<Vec<schemas::Record>>) {
        if self.coordinated() {
            if let Some(c) = self.2.get() {
                c.committed(commit);
            }
            return;
        }
        if let Some(n) = self.0.get() {
            n.on_committed(commit, records);
        }
    }
    fn wants_feed(&self, subscription: &str) -> bool {
        // Coordinated: every subscription is copied to the shared feed.
        // Otherwise until the notifier is open (the store opens first),
        // everything.
        self.coordinated() || self.0.get().is_none_or(|n| n.has_rules(subscription))
    }
    fn subscription_purged(&self, subscription: &str) {
        if self.coordinated() {
            if let Some(c) = self.2.get() {
                c.purged(subscription);
            }
            return;
        }
        if let Some(n) = self.0.get() {
            n.purge(subscription);
        }
    }
    fn source_conflict(&self, subscription: &str, source: &str, detail: &str) {
        if self.coordinated() {
            // Raised by the subscription's owner, wherever it was found.
            if let Some(c) = self.2.get() {
                c.conflict(subscription, source, detail);
            }
            return;
        }
        if let Some(n) = self.0.get() {
            n.on_source_conflict(subscription, source, detail);
        }
    }
}

impl MetricObserver for NotifierHook {
    fn wants(&self, subscription: &str, name: &str) -> bool {
        self.0
            .get()
            .is_some_and(|n| n.wants_metric(subscription, name))
    }

    fn samples(&self, subscription: &str, samples: &[MetricSample]) {
        if let Some(n) = self.0.get() {
            let refs: Vec<notifier::SampleRef<'_>> = samples
                .iter()
                .map(|s| notifier::SampleRef {
                    name: &s.name,
                    labels: &s.labels,
                    value: s.value,
                })
                .collect();
            n.on_samples(subscription, &refs);
        }
    }
}

/// The RocksDB store's commit feed, as the notifier reads it.
#[derive(Debug)]
struct StoreFeed(Store);

fn feed_error(e: logs::StoreError) -> notifier::NotifierError {
    notifier::NotifierError::storage(e.to_string())
}

impl notifier::Feed for StoreFeed {
    fn subscriptions(&self) -> Result<Vec<String>, notifier::NotifierError> {
        self.0.feed_subscriptions().map_err(feed_error)
    }

    fn read(
        &self,
        sub: &str,
        after: notifier::FeedPos,
        max: usize,
        max_bytes: usize,
    ) -> Result<notifier::FeedRead, notifier::NotifierError> {
        let b = self
            .0
            .feed_read_within(sub, (after.commit, after.index), max, max_bytes)
            .map_err(feed_error)?;
        Ok(notifier::FeedRead {
            records: b
                .records
                .into_iter()
                .map(|e| notifier::FeedRecord {
                    pos: notifier::FeedPos::new(e.position.0, e.position.1),
                    committed_at: e.committed_at,
                    record: e.record,
                })
                .collect(),
            missing: b.missing,
            last: b.last.map(|(c, i)| notifier::FeedPos::new(c, i)),
            end: b.end,
        })
    }

    fn backlog(
        &self,
        sub: &str,
        after: notifier::FeedPos,
    ) -> Result<notifier::FeedBacklog, notifier::NotifierError> {
        let b = self
            .0
            .feed_backlog(sub, (after.commit, after.index))
            .map_err(feed_error)?;
        Ok(notifier::FeedBacklog {
            records: b.records,
            oldest: b.oldest,
        })
    }

    fn trim(&self, sub: &str, before: u64) -> Result<(), notifier::NotifierError> {
        self.0.feed_trim(sub, before).map_err(feed_error)
    }
}

/// Stops the notifier's evaluation thread when dropped (also on an early
/// return): it holds the store, whose database must close with `run`.
struct EvaluatorGuard(Option<(notifier::Notifier, Duration)>);

impl Drop for EvaluatorGuard {
    fn drop(&mut self) {
        if let Some((n, within)) = self.0.take() {
            n.stop_evaluator(within);
        }
    }
}

/// Runs the collector until `shutdown` is cancelled, then stops accepting,
/// gives in-flight requests `shutdown_deadline` to finish, and closes the
/// store after committing everything queued (so nothing acknowledged is
/// lost).
pub async fn run(
    config: CollectorConfig,
    shutdown: CancellationToken,
) -> Result<(), CollectorError> {
    let metrics = telemetry::Metrics::default();
    let victoria = match &config.victoriametrics_url {
        None => None,
        Some(url) => {
            let v = metrics::victoria::Victoria::new(url).map_err(CollectorError::MetricsStore)?;
            v.check()
                .await
                .map_err(|e| CollectorError::MetricsStore(e.to_string()))?;
            tracing::info!(url = v.url(), "metrics kept in VictoriaMetrics");
            Some(v)
        }
    };
    if let Some(c) = &config.coordination {
        if !matches!(config.storage, Storage::ClickHouse(_)) {
            return Err(CollectorError::Task(
                "--coordination needs --storage clickhouse: the collectors evaluate from the records they share there".into(),
            ));
        }
        if !config.notifier_enabled {
            return Err(CollectorError::Task(
                "--coordination coordinates the notifier, which is turned off".into(),
            ));
        }
        if config.rules_file.is_some() {
            return Err(CollectorError::Task(format!(
                "--rules cannot be used with --coordination ({}): rules live with the subscription's owner; create them through the API of any collector",
                c.url.connect_string()
            )));
        }
    }
    let hook = Arc::new(NotifierHook::default());
    let _ = hook.1.set(config.coordination.is_some());
    let mut observers = config.observers.clone();
    observers.push(hook.clone());
    let tails = logs::tail::TailHub::new(config.tail.clone());
    observers.push(tails.clone());
    let (data_dir, mut store_cfg) = (config.data_dir.clone(), config.store.clone());
    let clickhouse = match &config.storage {
        Storage::RocksDb => None,
        Storage::ClickHouse(c) => Some(c.clone()),
    };
    // The notifier evaluates off the commit path from the commit feed of
    // the RocksDB store under the data dir. Over ClickHouse that store
    // holds the notifier's state and the feed only (records inline,
    // written by the ClickHouse writer: `rocks/feed.rs`).
    store_cfg.feed = config.notifier_enabled;
    let (rocks_observers, ch_observers) = match clickhouse {
        None => (observers, Vec::new()),
        Some(_) => (Vec::new(), observers),
    };
    let m = metrics.clone();
    let store =
        tokio::task::spawn_blocking(move || Store::open(&data_dir, store_cfg, m, rocks_observers))
            .await
            .map_err(|e| CollectorError::Task(format!("open store task: {e}")))??;
    let mut ch_feed = None;
    let log_store: Arc<dyn LogStore> = match clickhouse {
        None => Arc::new(store.clone()),
        Some(mut c) => {
            c.max_streams_per_subscription = config.store.max_streams_per_subscription;
            c.max_sources_per_subscription = config.store.max_sources_per_subscription;
            let m = metrics.clone();
            let feed = config.notifier_enabled.then(|| store.clone());
            let ch = tokio::task::spawn_blocking(move || {
                logs::clickhouse::ClickHouseStore::open(c, m, ch_observers, feed)
            })
            .await
            .map_err(|e| CollectorError::Task(format!("open ClickHouse store task: {e}")))??;
            ch_feed = Some(ch.feed_table());
            Arc::new(ch)
        }
    };

    // Coordinated, the notifier evaluates what its owned subscriptions
    // pull from the shared feed, in a store of its own rebuilt at every
    // start (state comes back from ZooKeeper with ownership).
    let pulled = match &config.coordination {
        None => None,
        Some(_) => {
            let dir = coordinated::pulled_dir(&config.data_dir);
            let (cfg, m) = (config.store.clone(), metrics.clone());
            let p = tokio::task::spawn_blocking(move || {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(logs::StoreError::Open {
                            path: dir.clone(),
                            reason: format!("cannot clear the evaluation feed: {e}"),
                        })
                    }
                }
                let mut cfg = cfg;
                cfg.feed = true;
                Store::open(&dir, cfg, m, Vec::new())
            })
            .await
            .map_err(|e| CollectorError::Task(format!("open evaluation feed task: {e}")))??;
            Some(p)
        }
    };
    let eval_store = pulled.clone().unwrap_or_else(|| store.clone());
    let (db, ncfg, clock, rules_file) = (
        eval_store.db(),
        config.notifier.clone(),
        config.notifier_clock.clone(),
        config.rules_file.clone(),
    );
    let notifier = if config.notifier_enabled {
        let n = tokio::task::spawn_blocking(move || {
            let n = notifier::Notifier::open(db, ncfg, clock)?;
            if let Some(path) = rules_file {
                let rules = n.load_file(&path)?;
                tracing::info!(path = %path.display(), rules, "notification rules loaded");
            }
            Ok::<_, notifier::NotifierError>(n)
        })
        .await
        .map_err(|e| CollectorError::Task(format!("open notifier task: {e}")))??;
        let _ = hook.0.set(n.clone());
        n.start_evaluator(Arc::new(StoreFeed(eval_store.clone())))?;
        Some(n)
    } else {
        None
    };
    let mut evaluator = EvaluatorGuard(notifier.clone().map(|n| (n, config.shutdown_deadline)));
    let coordinated = match (&config.coordination, &notifier, ch_feed, &pulled) {
        (Some(c), Some(n), Some(feed), Some(p)) => {
            let co = coordinated::Coordinated::start(
                c.clone(),
                config.tokens.subscriptions(),
                n.clone(),
                feed,
                store.clone(),
                p.clone(),
                victoria.clone(),
            )
            .await
            .map_err(CollectorError::Task)?;
            let _ = hook.2.set(co.clone());
            tracing::info!(member = co.member_id(), "coordinating through ZooKeeper");
            Some(co)
        }
        _ => None,
    };
    let mut metric_observers = config.metric_observers.clone();
    // Coordinated over VictoriaMetrics, owners read the samples from
    // there: evaluating them where they arrive too would page twice.
    if coordinated.is_none() || victoria.is_none() {
        metric_observers.push(hook);
    }

    let listener = match config.listen {
        Listen::Listener(l) => l,
        Listen::Addr(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| CollectorError::Bind { addr, source })?,
    };
    let local = listener.local_addr().map_err(CollectorError::Serve)?;
    if let Some(n) = &notifier {
        // Receivers may never point at the collector itself.
        n.set_own_address(local);
    }

    // The HTTP layer, retention and checkpoints see the store only as a
    // LogStore; the notifier needs the RocksDB database itself (above).
    let foreground = Arc::new(logs::query::pool::Foreground::new(
        config.read.query_background_share,
    ));
    let state = Arc::new(http::AppState {
        store: log_store.clone(),
        tokens: config.tokens,
        limits: config.limits,
        retention: config.retention.clone(),
        admission: http::Admission::new(config.admission.clone(), &metrics),
        metrics: metrics.clone(),
        query_pool: logs::query::pool::QueryPool::new(
            config.max_concurrent_queries,
            config.read.max_queries_per_subscription,
            logs::query::pool::Priorities {
                nice: config.read.query_nice,
                demoted_nice: config.read.query_demoted_nice,
                quantum: config.read.query_quantum,
                max_pause: config.read.query_max_pause,
            },
            Some(foreground.clone()),
        ),
        foreground,
        query_timeout: config.query_timeout,
        read_limits: config.read.clone(),
        checkpoint_dir: config.checkpoint_dir.clone(),
        checkpoint_keep: config.checkpoint_keep,
        ready: AtomicBool::new(true),
        metric_store: Arc::new(
            metrics::MetricStore::new(config.metric_limits.clone(), metric_observers)
                .with_victoria(victoria),
        ),
        notifier: notifier.clone(),
        coordinated: coordinated.clone(),
        tails,
        sessions: Arc::new(http::ui::session::Sessions::new(config.ui.clone())),
    });

    let tracker = TaskTracker::new();
    tracker.spawn(logs::retention::run(
        log_store.clone(),
        config.retention,
        config.retention_interval,
        shutdown.clone(),
    ));
    if let Some(dir) = config.checkpoint_dir.clone() {
        tracker.spawn(checkpoint::run(
            log_store.clone(),
            dir,
            config.checkpoint_keep,
            config.checkpoint_interval,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(n) = &notifier {
        n.start(&tracker, shutdown.clone());
    }
    if let Some(c) = &coordinated {
        c.run(&tracker, shutdown.clone());
    }
    tracker.close();

    tracing::info!(addr = %local, data_dir = %config.data_dir.display(), "collector listening");
    let app = http::router(state.clone());
    // Serves until the shutdown signal, then drains the connections for at
    // most the deadline.
    let mut server = tokio::spawn(http::serve::serve(
        listener,
        app,
        config.server.clone(),
        metrics.clone(),
        shutdown.clone(),
        config.shutdown_deadline,
    ));
    let early = tokio::select! {
        r = &mut server => Some(r),
        _ = shutdown.cancelled() => None,
    };
    state.ready.store(false, Ordering::Release);
    let served = match early {
        Some(r) => r,
        None => server.await,
    };
    if tokio::time::timeout(config.shutdown_deadline, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks still running at the shutdown deadline");
    }
    if let Some(c) = &coordinated {
        c.stop().await;
    }
    state.query_pool.stop();
    // Commits what is queued, then stops the writer; then the evaluation
    // thread gets the shutdown deadline to evaluate what is pending (the
    // rest waits in the feed for the next start).
    drop(coordinated);
    let closing = store.clone();
    let pulled_closing = pulled.clone();
    let stopping = evaluator.0.take();
    let logs_closing = log_store.clone();
    let _ = tokio::task::spawn_blocking(move || {
        logs_closing.close();
        closing.close();
        if let Some((n, within)) = stopping {
            n.stop_evaluator(within);
        }
        if let Some(p) = pulled_closing {
            p.close();
        }
    })
    .await;
    tracing::info!("collector stopped");
    match served {
        Ok(()) => Ok(()),
        Err(e) => Err(CollectorError::Task(format!("server task: {e}"))),
    }
}

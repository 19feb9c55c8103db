//! `sesam-metrics-agent`: host metrics with node_exporter's names, plus
//! scraped local targets, pushed every interval by Prometheus remote-write
//! 1.0 or OTLP/HTTP; buffers (bounded) while the receiver is down, and
//! serves `/metrics` for pull.
//!
//! Modules: [`host`] (the `/proc` collectors), [`scrape`] and [`text`]
//! (targets in the text format / OpenMetrics), [`sample`] (samples,
//! relabelling, interning), [`buffer`] (bounded, oldest dropped first),
//! [`push`] (delivery, retries), [`remote_write`] and [`otlp`]
//! (encodings), [`self_metrics`] (the agent's own health), [`server`]
//! (`/metrics`).
//!
//! Every pushed series carries `instance` (the host id), `subscription`
//! and `job` (`sesam-metrics-agent` for host and agent metrics, the
//! target's job for scraped ones; a target's own label of those names is
//! kept as `exported_<name>`). Samples whose value is NaN or ±Inf are not
//! pushed (receivers such as the collector refuse them) and are counted
//! as dropped with `reason="non_finite"`.

#![forbid(unsafe_code)]

pub mod buffer;
pub mod host;
pub mod otlp;
pub mod push;
pub mod remote_write;
pub mod sample;
pub mod scrape;
pub mod self_metrics;
pub mod server;
pub mod text;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use buffer::Buffer;
use sample::{Interner, Point, Sample, TargetLabels};
pub use scrape::ScrapeTarget;
use self_metrics::AgentMetrics;

/// The `job` of host and agent series.
pub const AGENT_JOB: &str = "sesam-metrics-agent";

/// How samples are pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushProtocol {
    /// Prometheus remote-write 1.0 (snappy protobuf).
    RemoteWrite,
    /// OTLP/HTTP metrics (protobuf), to `<url>/v1/metrics`.
    Otlp,
}

/// Where samples are pushed.
#[derive(Debug, Clone)]
pub struct PushTarget {
    pub protocol: PushProtocol,
    pub url: String,
    pub token: Option<String>,
}

/// Where to serve `/metrics`.
#[derive(Debug)]
pub enum Listen {
    Addr(SocketAddr),
    /// An already bound listener (tests bind `127.0.0.1:0`).
    Listener(tokio::net::TcpListener),
}

/// Everything [`run`] needs.
#[derive(Debug)]
pub struct AgentConfig {
    /// Time between collections.
    pub interval: Duration,
    pub push: Option<PushTarget>,
    pub scrape: Vec<ScrapeTarget>,
    pub listen: Option<Listen>,
    /// The host id: `instance` of every pushed series.
    pub instance: String,
    pub subscription: String,
    /// Samples held while the receiver is down (oldest dropped first).
    pub buffer_samples: NonZeroUsize,
    /// Samples in one push request.
    pub max_samples_per_send: NonZeroUsize,
    pub scrape_timeout: Duration,
    /// Largest scrape body accepted.
    pub max_scrape_bytes: usize,
    /// Timeout of one push request.
    pub request_timeout: Duration,
    /// Longest wait between push retries.
    pub backoff_max: Duration,
    /// After shutdown, how long buffered samples may still be flushed.
    pub shutdown_deadline: Duration,
    /// The `/proc` to read (tests point it elsewhere).
    pub proc_dir: PathBuf,
}

impl AgentConfig {
    /// A configuration with the binary's defaults.
    pub fn new(instance: impl Into<String>, subscription: impl Into<String>) -> AgentConfig {
        AgentConfig {
            interval: Duration::from_secs(15),
            push: None,
            scrape: Vec::new(),
            listen: None,
            instance: instance.into(),
            subscription: subscription.into(),
            buffer_samples: NonZeroUsize::new(100_000).expect("non-zero"),
            max_samples_per_send: NonZeroUsize::new(2_000).expect("non-zero"),
            scrape_timeout: Duration::from_secs(10),
            max_scrape_bytes: 16 << 20,
            request_timeout: Duration::from_secs(30),
            backoff_max: Duration::from_secs(30),
            shutdown_deadline: Duration::from_secs(5),
            proc_dir: PathBuf::from("/proc"),
        }
    }
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("interval must be more than zero")]
    Interval,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Reads the boot time once (for `process_start_time_seconds`).
fn boot_time(proc_dir: &std::path::Path) -> Option<f64> {
    std::fs::read_to_string(proc_dir.join("stat"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// What the agent shares between its collection loop, its sender and its
/// `/metrics` endpoint.
#[derive(Debug)]
pub struct Shared {
    pub host: host::Host,
    pub metrics: Arc<AgentMetrics>,
    pub boot_time: Option<f64>,
}

impl Shared {
    /// Host, process and agent samples, as of now (blocking: reads /proc).
    pub fn local_samples(&self, now_ms: i64) -> Vec<Sample> {
        let started = Instant::now();
        let (mut samples, errors) = self.host.collect(now_ms);
        for (collector, e) in errors {
            self.metrics.collector_error(collector);
            tracing::warn!(collector, error = %e, "host collector failed");
        }
        match host::process::collect(&self.host.proc_dir, self.boot_time, now_ms) {
            Ok(p) => samples.extend(p),
            Err(e) => {
                self.metrics.collector_error("process");
                tracing::warn!(error = %e, "process collector failed");
            }
        }
        self.metrics
            .set_collection_seconds(started.elapsed().as_secs_f64());
        samples.extend(self.metrics.samples(now_ms));
        samples
    }
}

/// One collection: local samples and every target, relabelled.
async fn collect(
    shared: &Arc<Shared>,
    client: &reqwest::Client,
    config: &AgentConfig,
    interner: &mut Interner,
) -> Vec<Point> {
    let now = now_ms();
    let mut scrapes = tokio::task::JoinSet::new();
    for (i, t) in config.scrape.iter().enumerate() {
        let (client, t) = (client.clone(), t.clone());
        let (timeout, max) = (config.scrape_timeout, config.max_scrape_bytes);
        scrapes.spawn(async move {
            let r = scrape::scrape(&client, &t, timeout, max, now).await;
            (i, r)
        });
    }
    let s = shared.clone();
    let local = tokio::task::spawn_blocking(move || s.local_samples(now))
        .await
        .unwrap_or_default();
    let mut results: Vec<_> = Vec::with_capacity(config.scrape.len());
    while let Some(r) = scrapes.join_next().await {
        if let Ok(r) = r {
            results.push(r);
        }
    }
    results.sort_by_key(|(i, _)| *i);

    let m = &shared.metrics;
    let mut points = Vec::with_capacity(local.len() + 256);
    let mut non_finite = 0u64;
    let mut add =
        |points: &mut Vec<Point>, s: Sample, labels: &TargetLabels, interner: &mut Interner| {
            if s.value.is_finite() {
                points.push(interner.point(s, labels));
            } else {
                non_finite += 1;
            }
        };
    let own = TargetLabels::new(AGENT_JOB, &config.instance, &config.subscription);
    for s in local {
        add(&mut points, s, &own, interner);
    }
    for (i, (result, took)) in results {
        let t = &config.scrape[i];
        let labels = TargetLabels::new(&t.job, &config.instance, &config.subscription);
        let (ok, n) = match result {
            Ok(samples) => {
                let n = samples.len();
                for s in samples {
                    add(&mut points, s, &labels, interner);
                }
                (true, n)
            }
            Err(e) => {
                m.scrape_error(&t.job, e.reason());
                tracing::warn!(job = %t.job, url = %t.url, error = %e, "scrape failed");
                (false, 0)
            }
        };
        for s in scrape::meta(ok, n, took, now) {
            add(&mut points, s, &labels, interner);
        }
    }
    m.dropped("non_finite", non_finite);
    m.collections.fetch_add(1, Ordering::Relaxed);
    m.samples_collected
        .fetch_add(points.len() as u64, Ordering::Relaxed);
    points
}

/// Runs the agent until `shutdown` is cancelled; then stops collecting,
/// gives the sender `shutdown_deadline` to flush the buffer, and returns.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    if config.interval.is_zero() {
        return Err(AgentError::Interval);
    }
    let mut config = config;
    let metrics = Arc::new(AgentMetrics::new());
    metrics
        .buffer_capacity
        .store(config.buffer_samples.get() as u64, Ordering::Relaxed);
    let shared = Arc::new(Shared {
        host: host::Host {
            proc_dir: config.proc_dir.clone(),
        },
        metrics: metrics.clone(),
        boot_time: boot_time(&config.proc_dir),
    });

    let server = match config.listen.take() {
        Some(listen) => {
            let listener = match listen {
                Listen::Listener(l) => l,
                Listen::Addr(addr) => tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| AgentError::Bind { addr, source })?,
            };
            Some(server::spawn(listener, shared.clone(), shutdown.clone()))
        }
        None => None,
    };

    let buffer = Arc::new(Mutex::new(Buffer::new(config.buffer_samples.get())));
    let notify = Arc::new(Notify::new());
    let sender = match &config.push {
        Some(target) => {
            let endpoint = push::Endpoint::new(target, config.request_timeout)?;
            tracing::info!(url = endpoint.url(), protocol = ?target.protocol, "pushing metrics");
            let sender = push::Sender {
                endpoint,
                buffer: buffer.clone(),
                notify: notify.clone(),
                metrics: metrics.clone(),
                instance: config.instance.clone(),
                max_per_send: config.max_samples_per_send.get(),
                backoff_max: config.backoff_max,
                flush_deadline: config.shutdown_deadline,
            };
            Some(tokio::spawn(sender.run(shutdown.clone())))
        }
        None => None,
    };

    let client = reqwest::Client::builder()
        .timeout(config.scrape_timeout)
        .build()?;
    let mut interner = Interner::default();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut collections = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        if sender.is_none() {
            // Pull only: /metrics collects on request; nothing to keep.
            continue;
        }
        let points = tokio::select! {
            p = collect(&shared, &client, &config, &mut interner) => p,
            _ = shutdown.cancelled() => break,
        };
        {
            let mut b = buffer.lock().unwrap_or_else(|e| e.into_inner());
            let dropped = b.push(points);
            metrics
                .buffer_samples
                .store(b.len() as u64, Ordering::Relaxed);
            if dropped > 0 {
                metrics.dropped("buffer_full", dropped);
                tracing::warn!(
                    dropped,
                    capacity = config.buffer_samples.get(),
                    "push buffer full: dropped the oldest samples"
                );
            }
        }
        notify.notify_one();
        collections += 1;
        if collections.is_multiple_of(16) {
            interner.prune();
        }
    }
    if let Some(s) = sender {
        let grace = config.shutdown_deadline + Duration::from_secs(1);
        if tokio::time::timeout(grace, s).await.is_err() {
            tracing::warn!("sender still running at the shutdown deadline");
        }
    }
    if let Some(s) = server {
        let _ = tokio::time::timeout(config.shutdown_deadline, s).await;
    }
    tracing::info!("metrics agent stopped");
    Ok(())
}

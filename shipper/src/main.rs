//! `sesam-shipper`: ships kernel logs and tailed files of a host through a
//! durable outbox to the collector (and/or an OTLP endpoint).

use sesam_common::cli::{self, LogFormat};
use sesam_common::token::read_token_file;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use shipper::deliver::{Backoff, DeliveryConfig};
use shipper::redact::RedactConfig;
use shipper::service::{ShipperConfig, Target};
use shipper::OutboxConfig;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "sesam-shipper",
    version,
    about = "Ship host logs to the Sesam collector"
)]
struct Args {
    /// Directory for the shipper's outbox.
    #[arg(long)]
    data_dir: PathBuf,
    /// Collector base URL, e.g. https://collector.example:9400. Repeat it
    /// for collectors to fail over between (tried in order, sticky to the
    /// one that works).
    #[arg(long)]
    collector: Vec<String>,
    /// File holding the collector token (role shipper).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// OTLP/HTTP endpoint to export logs to as well (or instead).
    #[arg(long)]
    otlp: Option<String>,
    /// File holding a bearer token for the OTLP endpoint.
    #[arg(long)]
    otlp_token_file: Option<PathBuf>,
    /// Source id of the records (default host:<hostname>).
    #[arg(long)]
    source: Option<String>,
    /// Subscription (tenant) id of the records.
    #[arg(long, default_value = "default")]
    subscription: String,
    /// Kernel log to read (a kmsg device or a file in its format).
    #[arg(long, default_value = "/dev/kmsg")]
    kmsg: PathBuf,
    /// Do not ship the kernel log.
    #[arg(long)]
    no_kmsg: bool,
    /// Files to tail (globs allowed); repeatable.
    #[arg(long = "file")]
    files: Vec<String>,
    /// Redaction rules (TOML, or JSON if the name ends in .json).
    #[arg(long)]
    redact_rules: Option<PathBuf>,
    /// Serve /metrics here.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Batches delivered concurrently (1-64).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    in_flight: u16,
    /// Upper bound of the outbox (e.g. 1GiB, 512M; 1MiB-1TiB).
    #[arg(long, default_value = "1GiB", value_parser = size(1 << 20, 1 << 40))]
    outbox_max_bytes: u64,
    /// Records per batch (1-100000).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch_max_records: u32,
    /// Stored bytes read into one batch (1KiB-64MiB). The batch being
    /// built, and its encoding buffer, are about this big.
    #[arg(long, default_value = "512KiB", value_parser = size(1 << 10, 64 << 20))]
    batch_max_bytes: u64,
    /// How long a batch waits to fill before it is sent (0-60s).
    #[arg(long, default_value = "200ms", value_parser = duration(Duration::ZERO, Duration::from_secs(60)))]
    linger: Duration,
    /// Timeout of one delivery request (1s-10m).
    #[arg(long, default_value = "30s", value_parser = duration(Duration::from_secs(1), Duration::from_secs(600)))]
    request_timeout: Duration,
    /// Longest wait between retries of a failed delivery (100ms-1h).
    #[arg(long, default_value = "30s", value_parser = duration(Duration::from_millis(100), Duration::from_secs(3600)))]
    backoff_max: Duration,
    /// Longest wait a receiver's Retry-After can impose; longer ones are
    /// clamped to it (100ms-1h).
    #[arg(long, default_value = "300s", value_parser = duration(Duration::from_millis(100), Duration::from_secs(3600)))]
    max_retry_after: Duration,
    /// Threads of the async runtime (1-16). 1 (the default) runs it on the
    /// main thread: plenty for a forwarder, whose reading, redaction and
    /// encoding run on threads of their own, and every thread is another
    /// allocator arena holding memory.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=16))]
    worker_threads: u8,
    /// Log format of the shipper's own logs.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// A clap parser of durations within bounds (see `shipper::units`).
fn duration(min: Duration, max: Duration) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |s| shipper::units::parse_duration(s, min, max)
}

/// A clap parser of byte sizes within bounds (see `shipper::units`).
fn size(min: u64, max: u64) -> impl Fn(&str) -> Result<u64, String> + Clone {
    move |s| shipper::units::parse_size(s, min, max)
}

fn main() -> anyhow::Result<()> {
    tune_malloc();
    let args = Args::parse();
    // A forwarder needs little parallelism: one thread drives the HTTP
    // requests, each sink builds its batches one at a time on a blocking
    // thread, the outbox and the file tailer have their own threads. Every
    // extra thread is another malloc arena holding memory, so there is one
    // blocking thread per sink.
    let sinks = usize::from(!args.collector.is_empty()) + usize::from(args.otlp.is_some());
    let mut builder = if args.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.worker_threads.into());
        b
    };
    let runtime = builder
        .max_blocking_threads(sinks.max(1))
        .thread_name("shipper")
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(run(args))
}

/// glibc's malloc, tuned for a forwarder (before any other thread exists):
/// - two arenas: by default each thread that allocates gets an arena of its
///   own (up to eight per core), and every arena keeps what was freed in
///   it; with the runtime, outbox, tailer and RocksDB threads that is
///   several MiB held for nothing, while a forwarder's threads allocate
///   little at a time;
/// - fixed mmap and trim thresholds (1 MiB): by default the mmap
///   threshold grows to the largest block freed, so the large transients
///   (opening a backlog of thousands of table files, a batch's buffers)
///   move into the heap and stay resident after they are freed.
///
/// Together they keep `sesam-shipper` under 32 MiB draining a 5 M record
/// backlog (BENCHMARKS.md). `MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`
/// and `MALLOC_TRIM_THRESHOLD_` in the environment still win.
// The one unsafe block of the shipper: an FFI call into the C library.
#[allow(unsafe_code)]
fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    for (param, env, value) in [
        (libc::M_ARENA_MAX, "MALLOC_ARENA_MAX", 2),
        (libc::M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", 1 << 20),
        (libc::M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", 1 << 20),
    ] {
        if std::env::var_os(env).is_none() {
            // SAFETY: mallopt only sets a parameter of the allocator; it is
            // called at the start of main, before any other thread exists.
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    cli::init_logging(args.log_format);

    let collector = match (args.collector.is_empty(), &args.token_file) {
        (false, Some(tf)) => {
            for url in &args.collector {
                shipper::deliver::collector::check_url(url).context("--collector")?;
            }
            Some(Target {
                urls: args.collector.clone(),
                token: Some(read_token_file(tf).context("--token-file")?),
            })
        }
        (false, None) => bail!("--collector needs --token-file"),
        (true, _) => None,
    };
    let otlp = match &args.otlp {
        Some(url) => {
            shipper::deliver::collector::check_url(url).context("--otlp")?;
            Some(Target::new(
                url.clone(),
                args.otlp_token_file
                    .as_deref()
                    .map(read_token_file)
                    .transpose()
                    .context("--otlp-token-file")?,
            ))
        }
        None => None,
    };
    if collector.is_none() && otlp.is_none() {
        bail!("nothing to ship to: give --collector URL --token-file FILE and/or --otlp URL");
    }
    let redact = match &args.redact_rules {
        Some(p) => RedactConfig::from_file(p)?,
        None => RedactConfig::default(),
    };
    let nonzero = |n: u64, flag: &str| {
        std::num::NonZeroUsize::new(usize::try_from(n).unwrap_or(usize::MAX))
            .with_context(|| format!("{flag} must be at least 1"))
    };
    let config = ShipperConfig {
        data_dir: args.data_dir.clone(),
        source: args
            .source
            .clone()
            .unwrap_or_else(|| format!("host:{}", cli::hostname())),
        subscription: args.subscription.clone(),
        collector,
        otlp,
        kmsg: (!args.no_kmsg).then(|| args.kmsg.clone()),
        files: args.files.clone(),
        redact,
        delivery: DeliveryConfig {
            in_flight: nonzero(args.in_flight.into(), "--in-flight")?,
            max_batch_records: nonzero(args.batch_max_records.into(), "--batch-max-records")?,
            max_batch_bytes: nonzero(args.batch_max_bytes, "--batch-max-bytes")?,
            linger: args.linger,
            backoff: Backoff {
                cap: args.backoff_max,
                ..DeliveryConfig::default().backoff
            },
            max_retry_after: args.max_retry_after,
            ..DeliveryConfig::default()
        },
        outbox: OutboxConfig {
            max_bytes: std::num::NonZeroU64::new(args.outbox_max_bytes)
                .context("--outbox-max-bytes must be positive")?,
            ..OutboxConfig::forwarder()
        },
        listen: args.listen,
        request_timeout: args.request_timeout,
    };

    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        cli::shutdown_signal("shipper").await;
        tracing::info!("shutting down");
        signals.cancel();
    });
    let deadline = shutdown.clone();
    let run = shipper::service::run(config, shutdown);
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => r.context("sesam-shipper")?,
        _ = async {
            deadline.cancelled().await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        } => bail!("shutdown did not finish within 10 s"),
    }
    Ok(())
}

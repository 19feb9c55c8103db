//! `sesam-shipper`: ships kernel logs and tailed files of a host through a
//! durable outbox to the collector (and/or an OTLP endpoint).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use shipper::deliver::DeliveryConfig;
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
    /// Collector base URL, e.g. https://collector.example:9400.
    #[arg(long)]
    collector: Option<String>,
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
    /// Batches delivered concurrently.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Upper bound of the outbox in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    outbox_max_bytes: u64,
    /// Log format of the shipper's own logs.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn read_token(path: &PathBuf) -> anyhow::Result<String> {
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("read token file {}", path.display()))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    Ok(t)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    match args.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }

    let collector = match (&args.collector, &args.token_file) {
        (Some(url), Some(tf)) => Some(Target {
            url: url.clone(),
            token: Some(read_token(tf)?),
        }),
        (Some(_), None) => bail!("--collector needs --token-file"),
        (None, _) => None,
    };
    let otlp = match &args.otlp {
        Some(url) => Some(Target {
            url: url.clone(),
            token: args.otlp_token_file.as_ref().map(read_token).transpose()?,
        }),
        None => None,
    };
    if collector.is_none() && otlp.is_none() {
        bail!("nothing to ship to: give --collector URL --token-file FILE and/or --otlp URL");
    }
    let redact = match &args.redact_rules {
        Some(p) => RedactConfig::from_file(p)?,
        None => RedactConfig::default(),
    };
    let in_flight =
        std::num::NonZeroUsize::new(args.in_flight).context("--in-flight must be at least 1")?;
    let config = ShipperConfig {
        data_dir: args.data_dir.clone(),
        source: args
            .source
            .clone()
            .unwrap_or_else(|| format!("host:{}", hostname())),
        subscription: args.subscription.clone(),
        collector,
        otlp,
        kmsg: (!args.no_kmsg).then(|| args.kmsg.clone()),
        files: args.files.clone(),
        redact,
        delivery: DeliveryConfig {
            in_flight,
            max_batch_records: std::num::NonZeroUsize::new(2_000).expect("non-zero"),
            ..DeliveryConfig::default()
        },
        // A shipper's outbox is written at modest rates by its own sources
        // and read soon after: small memtables and cache keep its memory
        // low whatever the backlog.
        outbox: OutboxConfig {
            max_bytes: std::num::NonZeroU64::new(args.outbox_max_bytes)
                .context("--outbox-max-bytes must be positive")?,
            write_buffer_bytes: 4 << 20,
            block_cache_bytes: 4 << 20,
            ..OutboxConfig::default()
        },
        listen: args.listen,
        request_timeout: Duration::from_secs(30),
    };

    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
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

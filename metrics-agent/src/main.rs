//! `sesam-metrics-agent`: flags only; the work is in the `metrics_agent`
//! library.

use sesam_common::cli::{self, LogFormat};
use sesam_common::token::read_token_file;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use metrics_agent::{AgentConfig, Listen, PushProtocol, PushTarget, ScrapeTarget};
use tokio_util::sync::CancellationToken;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Debug, Parser)]
#[command(
    name = "sesam-metrics-agent",
    version,
    about = "Host metrics (node_exporter names) and local targets, pushed by Prometheus remote-write or OTLP"
)]
struct Args {
    /// Time between collections.
    #[arg(long, value_parser = duration, default_value = "15s")]
    interval: Duration,
    /// Prometheus remote-write 1.0 URL, e.g. http://collector:3100/api/v1/write.
    #[arg(long, conflicts_with = "otlp")]
    remote_write: Option<String>,
    /// OTLP/HTTP endpoint (base URL, or the full .../v1/metrics URL).
    #[arg(long)]
    otlp: Option<String>,
    /// File holding the bearer token for the push receiver (collector role shipper).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// A local target to scrape, `[JOB=]URL` (repeatable), e.g.
    /// `sesam-node=http://127.0.0.1:9042/api/metrics`.
    #[arg(long = "scrape")]
    scrape: Vec<String>,
    /// Bearer token file of a scrape target, `JOB=FILE` (repeatable).
    #[arg(long = "scrape-token-file")]
    scrape_token_files: Vec<String>,
    /// Serve /metrics here for pull, e.g. 127.0.0.1:9101.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Host id, the `instance` of every pushed series (default: the hostname).
    #[arg(long)]
    instance: Option<String>,
    /// Subscription (tenant) id, the `subscription` of every pushed series.
    #[arg(long, default_value = "default")]
    subscription: String,
    /// Samples buffered while the receiver is down (oldest dropped first).
    #[arg(long, default_value_t = NonZeroUsize::new(100_000).expect("non-zero"))]
    buffer_samples: NonZeroUsize,
    /// Samples per push request.
    #[arg(long, default_value_t = NonZeroUsize::new(2_000).expect("non-zero"))]
    max_samples_per_send: NonZeroUsize,
    /// Timeout of one scrape.
    #[arg(long, value_parser = duration, default_value = "10s")]
    scrape_timeout: Duration,
    /// Timeout of one push request.
    #[arg(long, value_parser = duration, default_value = "30s")]
    request_timeout: Duration,
    /// Longest wait between push retries.
    #[arg(long, value_parser = duration, default_value = "30s")]
    backoff_max: Duration,
    /// After SIGINT/SIGTERM, how long the buffer may still be flushed.
    #[arg(long, value_parser = duration, default_value = "5s")]
    shutdown_deadline: Duration,
    /// Log output format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    cli::init_logging(args.log_format);

    let token = args
        .token_file
        .as_deref()
        .map(read_token_file)
        .transpose()
        .context("--token-file")?;
    let push = match (&args.remote_write, &args.otlp) {
        (Some(url), None) => Some(PushTarget {
            protocol: PushProtocol::RemoteWrite,
            url: url.clone(),
            token,
        }),
        (None, Some(url)) => Some(PushTarget {
            protocol: PushProtocol::Otlp,
            url: url.clone(),
            token,
        }),
        _ => None,
    };
    if let Some(p) = &push {
        if !(p.url.starts_with("http://") || p.url.starts_with("https://")) {
            bail!("push URL {:?} must start with http:// or https://", p.url);
        }
    }
    if push.is_none() && args.listen.is_none() {
        bail!("nothing to do: give --remote-write URL or --otlp URL to push, and/or --listen ADDR to serve /metrics");
    }
    let mut scrape = args
        .scrape
        .iter()
        .map(|s| ScrapeTarget::parse(s).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for spec in &args.scrape_token_files {
        let Some((job, file)) = spec.split_once('=') else {
            bail!("--scrape-token-file {spec:?}: expected JOB=FILE");
        };
        let t = scrape.iter_mut().find(|t| t.job == job).with_context(|| {
            format!("--scrape-token-file {spec:?}: no --scrape target with job {job:?}")
        })?;
        t.token = Some(read_token_file(&PathBuf::from(file)).context("scrape token file")?);
    }
    if push.is_none() && !scrape.is_empty() {
        tracing::warn!("--scrape targets are only pushed; without --remote-write or --otlp they are not scraped");
    }

    let mut config = AgentConfig::new(
        args.instance.unwrap_or_else(cli::hostname),
        args.subscription,
    );
    config.interval = args.interval;
    config.push = push;
    config.scrape = scrape;
    config.listen = args.listen.map(Listen::Addr);
    config.buffer_samples = args.buffer_samples;
    config.max_samples_per_send = args.max_samples_per_send;
    config.scrape_timeout = args.scrape_timeout;
    config.request_timeout = args.request_timeout;
    config.backoff_max = args.backoff_max;
    config.shutdown_deadline = args.shutdown_deadline;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start tokio runtime")?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            cli::shutdown_signal("agent").await;
            tracing::info!("shutdown signal received");
            signal.cancel();
        });
        metrics_agent::run(config, shutdown)
            .await
            .context("run metrics agent")
    })
}

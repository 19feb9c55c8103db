//! `sesam-node`: parses flags, sets up logging and signals, runs the node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use node::{Listen, NodeConfig, OutboxLogLevel};
use sesam_common::cli::{self, LogFormat, LogOutput};
use sesam_common::token::{read_token_file, readable_by_others};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// A small Sesam node: pipes, datasets, the execution dataset and the API.
#[derive(Debug, Parser)]
#[command(name = "sesam-node", version)]
struct Args {
    /// Configuration file: a JSON array of pipe, system:url and metadata
    /// entities. It seeds a node without a stored configuration; after that
    /// the node runs the last configuration it accepted (see --config-from-file).
    #[arg(long)]
    config: PathBuf,
    /// Run --config even when the stored configuration differs from it
    /// (the file becomes a new configuration version).
    #[arg(long)]
    config_from_file: bool,
    /// Configuration versions kept in the history (GET /api/config/history).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    config_history: u64,
    /// Data directory: the node database (`node/`) and the outbox (`outbox/`).
    #[arg(long)]
    data_dir: PathBuf,
    /// API listen address.
    #[arg(long, default_value = "127.0.0.1:9042")]
    listen: SocketAddr,
    /// The node id: the `source` of every record.
    #[arg(long, default_value = "sesam-node")]
    node_id: String,
    /// The subscription (tenant) id of every record.
    #[arg(long, default_value = "default")]
    subscription: String,
    /// File holding the API bearer token; without it the API is open.
    #[arg(long)]
    api_token_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Lowest level of service logs also written to the outbox.
    #[arg(long, value_enum, default_value = "warn")]
    outbox_log_level: OutboxLogLevel,
    /// Interval of health records, e.g. `30s`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    health_interval: Duration,
    /// Ship the outbox to this collector (base URL) with the in-process
    /// shipper. Repeat it for collectors to fail over between (tried in
    /// order, sticky to the one that works).
    #[arg(long, requires = "token_file")]
    collector: Vec<String>,
    /// File holding the collector token (role shipper).
    #[arg(long, requires = "collector")]
    token_file: Option<PathBuf>,
    /// How long shutdown waits for running pumps and tasks.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
    /// Load generator for tests and benchmarks: emit this many synthetic
    /// INFO log records through the outbox after start.
    #[arg(long)]
    synthetic_logs: Option<u64>,
    /// Pace of --synthetic-logs in records per second (default: as fast as
    /// the outbox accepts them).
    #[arg(long, requires = "synthetic_logs")]
    synthetic_rate: Option<std::num::NonZeroU64>,
    /// Upper bound of the outbox in bytes (appends then wait, see
    /// --outbox-block-timeout, and the health check reports failed).
    #[arg(long, default_value = "1073741824")]
    outbox_max_bytes: std::num::NonZeroU64,
    /// Upper bound of the outbox in records.
    #[arg(long, default_value = "10000000")]
    outbox_max_records: std::num::NonZeroU64,
    /// How long an append to a full outbox waits for room before it is refused.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    outbox_block_timeout: Duration,
    /// Largest body of PUT /api/config (and single pipe/system uploads).
    #[arg(long, default_value_t = 8 << 20)]
    max_config_bytes: usize,
    /// Most entities in one configuration.
    #[arg(long, default_value_t = 10_000)]
    max_config_entities: usize,
    /// Largest body of PUT/POST /api/secrets.
    #[arg(long, default_value_t = 1 << 20)]
    max_secrets_bytes: usize,
    /// Most secrets stored.
    #[arg(long, default_value_t = 1_000)]
    max_secrets: usize,
    /// Largest `limit` of an entity list (pipe log, dataset entities).
    #[arg(long, default_value_t = 100_000)]
    max_page_entities: usize,
    /// Bytes of entities in one answer; a page stops early at this size.
    #[arg(long, default_value_t = 64 << 20)]
    max_page_bytes: usize,
    /// Largest response a `json` source may answer (the run fails above).
    #[arg(long, default_value_t = 256 << 20)]
    max_source_response_bytes: u64,
    /// API requests handled at once (503 above; ping and health excluded).
    #[arg(long, default_value_t = 64)]
    max_concurrent_requests: usize,
    /// Shortest time between two fresh rounds of GET /api/health.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    health_min_interval: Duration,
    /// Entities a dataset source reads, transforms and writes at a time.
    #[arg(long, default_value_t = 10_000)]
    source_page_entities: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Everything the node writes (RocksDB files included) is private to
    // its user: the store holds secret values, the outbox raw records.
    sesam_common::files::private_umask();
    let (layer, log_records) = node::outbox_log_layer(args.outbox_log_level, 4096);
    let stdout =
        cli::fmt_layer(args.log_format, LogOutput::Stdout).with_filter(cli::env_filter("info"));
    // Filtered per layer, so that debug events are only built when stdout wants them.
    let outbox_level = match args.outbox_log_level {
        OutboxLogLevel::Warn => LevelFilter::WARN,
        OutboxLogLevel::Info => LevelFilter::INFO,
    };
    tracing_subscriber::registry()
        .with(stdout)
        .with(layer.with_filter(outbox_level))
        .init();
    match run(args, log_records).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("sesam-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, log_records: node::LogReceiver) -> anyhow::Result<()> {
    let api_token = match &args.api_token_file {
        None => None,
        Some(p) => {
            let t = read_token_file(p).context("--api-token-file")?;
            if readable_by_others(p) {
                tracing::warn!(path = %p.display(), "the API token file is readable by other users; chmod 600 it");
            }
            Some(t)
        }
    };
    for (flag, v) in [
        ("--max-config-bytes", args.max_config_bytes),
        ("--max-config-entities", args.max_config_entities),
        ("--max-secrets-bytes", args.max_secrets_bytes),
        ("--max-page-entities", args.max_page_entities),
        ("--max-page-bytes", args.max_page_bytes),
        ("--max-concurrent-requests", args.max_concurrent_requests),
        ("--source-page-entities", args.source_page_entities),
    ] {
        anyhow::ensure!(v > 0, "{flag} must be positive");
    }
    anyhow::ensure!(
        args.max_source_response_bytes > 0,
        "--max-source-response-bytes must be positive"
    );
    let mut config = NodeConfig::new(args.config, args.data_dir, Listen::Addr(args.listen));
    config.node_id = args.node_id;
    config.subscription = args.subscription;
    config.api_token = api_token;
    config.health_interval = args.health_interval;
    config.shutdown_timeout = args.shutdown_timeout;
    config.log_records = Some(log_records);
    config.config_from_file = args.config_from_file;
    config.config_history = args.config_history;
    config.outbox.max_bytes = args.outbox_max_bytes;
    config.outbox.max_records = args.outbox_max_records;
    config.outbox.block_timeout = args.outbox_block_timeout;
    config.limits = node::Limits {
        max_config_bytes: args.max_config_bytes,
        max_config_entities: args.max_config_entities,
        max_secrets_bytes: args.max_secrets_bytes,
        max_secrets: args.max_secrets,
        max_page_entities: args.max_page_entities,
        max_page_bytes: args.max_page_bytes,
        max_source_bytes: args.max_source_response_bytes,
        max_concurrent_requests: args.max_concurrent_requests,
        health_min_interval: args.health_min_interval,
        source_page_entities: args.source_page_entities,
    };
    config.synthetic =
        args.synthetic_logs
            .filter(|n| *n > 0)
            .map(|count| node::synthetic::SyntheticLogs {
                count,
                rate: args.synthetic_rate,
            });
    if let (false, Some(path)) = (args.collector.is_empty(), &args.token_file) {
        let token = read_token_file(path).context("--token-file")?;
        for url in &args.collector {
            shipper::deliver::collector::check_url(url).context("--collector")?;
        }
        config.collector = Some(shipper::service::Target {
            urls: args.collector.clone(),
            token: Some(token),
        });
    }
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        cli::shutdown_signal("node").await;
        on_signal.cancel();
    });
    node::run(config, shutdown).await.context("run the node")
}

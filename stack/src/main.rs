//! `sesam-stack`: flags only; the work is in the `stack` library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sesam_common::cli::{self, LogFormat, LogOutput};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

#[derive(Debug, Parser)]
#[command(
    name = "sesam-stack",
    version,
    about = "The whole Sesam observability pipeline in one process: collector + notifier, a node with example pipes and its shipper, and the metrics agent"
)]
struct Args {
    /// Where everything is kept (tokens, configuration, stores); a second
    /// start resumes from it.
    #[arg(long, default_value = "./sesam-data")]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:3100")]
    collector_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9042")]
    node_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9101")]
    agent_listen: SocketAddr,
    /// The built-in upstream system and webhook receiver.
    #[arg(long, default_value = "127.0.0.1:3199")]
    demo_listen: SocketAddr,
    /// Time between metric collections.
    #[arg(long, value_parser = humantime_secs, default_value = "15s")]
    metrics_interval: Duration,
    /// Log output format (stdout; colours only on a terminal).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Everything the stack writes (RocksDB files included) is private to
    // its user: tokens, the rules' signing key, the node's secrets.
    sesam_common::files::private_umask();
    // The node's own warnings go to its outbox (and so to the collector),
    // as `sesam-node` does; the other components only log to stderr.
    let (outbox_layer, log_records) = node::outbox_log_layer(node::OutboxLogLevel::Warn, 4096);
    tracing_subscriber::registry()
        .with(
            cli::fmt_layer(args.log_format, LogOutput::Stdout).with_filter(cli::env_filter("info")),
        )
        .with(outbox_layer.with_filter(filter_fn(|m| m.target().starts_with("node"))))
        .init();

    let mut config = stack::StackConfig::new(&args.data_dir);
    config.collector_listen = args.collector_listen;
    config.node_listen = args.node_listen;
    config.agent_listen = args.agent_listen;
    config.demo_listen = args.demo_listen;
    config.metrics_interval = args.metrics_interval;

    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        cli::shutdown_signal("stack").await;
        tracing::info!("shutting down");
        on_signal.cancel();
    });
    let result = stack::run(config, shutdown, Some(log_records), |ready| {
        println!("{}", ready.banner());
    })
    .await;
    match result {
        Ok(()) => {
            tracing::info!("sesam-stack stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sesam-stack: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! Pieces of every `main.rs`: the `--log-format` flag, logging to stderr
//! (or stdout) with ANSI colours only when that stream is a terminal, the
//! shutdown signal and the host name.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// `--log-format`: human text or one JSON object per line (for journald,
/// Loki, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    Stderr,
    Stdout,
}

/// `RUST_LOG` when set and valid, else `default` (e.g. `"info"`).
pub fn env_filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// The formatting layer of a binary: `format`, to `output`, with colours
/// only when `output` is a terminal (a file or a pipe gets plain text).
/// Binaries that add layers of their own (the node forwards warnings into
/// its outbox) combine it with theirs.
pub fn fmt_layer<S>(format: LogFormat, output: LogOutput) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let ansi = match output {
        LogOutput::Stderr => std::io::stderr().is_terminal(),
        LogOutput::Stdout => std::io::stdout().is_terminal(),
    };
    let base = tracing_subscriber::fmt::layer().with_ansi(ansi);
    match (format, output) {
        (LogFormat::Json, LogOutput::Stderr) => base.json().with_writer(std::io::stderr).boxed(),
        (LogFormat::Json, LogOutput::Stdout) => base.json().with_writer(std::io::stdout).boxed(),
        (LogFormat::Text, LogOutput::Stderr) => base.with_writer(std::io::stderr).boxed(),
        (LogFormat::Text, LogOutput::Stdout) => base.with_writer(std::io::stdout).boxed(),
    }
}

/// Installs logging for a binary: `format` to stderr, filtered by
/// `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    Registry::default()
        .with(fmt_layer(format, LogOutput::Stderr).with_filter(env_filter("info")))
        .init();
}

/// Resolves at the first SIGINT or SIGTERM. `component` names the process
/// in the warning logged when SIGTERM cannot be watched.
pub async fn shutdown_signal(component: &str) {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the {component}");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// This machine's host name (`/proc/sys/kernel/hostname`), `unknown` when
/// it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_name_is_never_empty() {
        assert!(!hostname().is_empty());
    }
}

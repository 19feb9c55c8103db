//! `sesam-coordination`: look at (and take part in) collector coordination
//! from a terminal.
//!
//! - `sesam-coordination status zookeeper://host:2181/sesam` prints the
//!   members, the owner and epoch of each subscription, as JSON.
//! - `sesam-coordination join zookeeper://... --member-id ID --subscriptions
//!   a,b,c` runs a member that owns its share and prints every ownership
//!   change as a JSON line until SIGINT/SIGTERM, then releases. Used by the
//!   failover tests (killed with SIGKILL) and to try a layout out.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use coordination::{inspect, CoordinationUrl, Coordinator, CoordinatorConfig};

#[derive(Parser, Debug)]
#[command(
    name = "sesam-coordination",
    about = "Inspect or join collector coordination in ZooKeeper"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print members, owners and epochs under the chroot as JSON.
    Status {
        /// zookeeper://host:port[,host:port]/chroot
        url: CoordinationUrl,
        /// Give up after this long.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Run a member; print ownership changes as JSON lines.
    Join {
        /// zookeeper://host:port[,host:port]/chroot
        url: CoordinationUrl,
        /// This member's id.
        #[arg(long)]
        member_id: String,
        /// URL stored in the member node.
        #[arg(long, default_value = "")]
        advertised_url: String,
        /// Requested ZooKeeper session timeout.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        session_timeout: Duration,
        /// Subscriptions to share, comma-separated.
        #[arg(long, value_delimiter = ',', conflicts_with = "subscription_count")]
        subscriptions: Vec<String>,
        /// Share `sub-0` .. `sub-(N-1)` instead.
        #[arg(long)]
        subscription_count: Option<usize>,
        /// Also print what `is_owner` answers (the lease-checked owned set)
        /// at this interval, as `{"event":"tick","owned":{...}}` lines.
        #[arg(long, value_parser = humantime::parse_duration)]
        report_every: Option<Duration>,
    },
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn line(v: serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}").context("write to stdout")?;
    out.flush().context("flush stdout")
}

#[tokio::main]
async fn main() -> Result<()> {
    sesam_common::cli::init_logging(sesam_common::cli::LogFormat::Text);
    match Cli::parse().cmd {
        Cmd::Status { url, timeout } => {
            let view = inspect(&url, timeout)
                .await
                .with_context(|| format!("read coordination state at {url}"))?;
            let owners: serde_json::Map<String, serde_json::Value> = view
                .owners
                .iter()
                .map(|(s, (m, e))| (s.clone(), serde_json::json!({"member": m, "epoch": e})))
                .collect();
            line(serde_json::json!({
                "members": view.members,
                "owners": owners,
                "epochs": view.epochs,
            }))
        }
        Cmd::Join {
            url,
            member_id,
            advertised_url,
            session_timeout,
            subscriptions,
            subscription_count,
            report_every,
        } => {
            let mut cfg = CoordinatorConfig::new(url, member_id);
            cfg.advertised_url = advertised_url;
            cfg.session_timeout = session_timeout;
            let subs: Vec<String> = match subscription_count {
                Some(n) => (0..n).map(|i| format!("sub-{i}")).collect(),
                None => subscriptions,
            };
            let coord = Coordinator::start(cfg)
                .await
                .context("start coordination")?;
            coord
                .set_subscriptions(subs)
                .context("set the subscriptions")?;
            let mut changes = coord.changes();
            line(
                serde_json::json!({"event": "ready", "member": coord.member_id(), "pid": std::process::id(), "t_ms": unix_ms()}),
            )?;
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("install SIGTERM handler")?;
            let mut tick = tokio::time::interval(report_every.unwrap_or(Duration::from_secs(3600)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick(), if report_every.is_some() => line(serde_json::json!({
                        "event": "tick",
                        "owned": coord.owned(),
                        "t_ms": unix_ms(),
                    }))?,
                    ev = changes.next() => match ev {
                        Some(ev) => line(serde_json::json!({
                            "event": if ev.owned { "owned" } else { "lost" },
                            "subscription": ev.subscription,
                            "epoch": ev.epoch,
                            "t_ms": unix_ms(),
                        }))?,
                        None => break,
                    },
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                }
            }
            coord.shutdown().await;
            line(serde_json::json!({"event": "stopped", "t_ms": unix_ms()}))
        }
    }
}

//! `sesam-stack`: the whole pipeline in one process on embedded defaults,
//! for a first run and demos.
//!
//! It composes the libraries (nothing here is a copy of a component):
//! - the collector (`collector::run`) with its notifier, on `--collector-listen`;
//! - a node (`node::run`) with example pipes, shipping its outbox to the
//!   collector through its in-process shipper;
//! - the metrics agent (`metrics_agent::run`), pushing host metrics and the
//!   node's scraped `/api/metrics` to the collector by remote-write;
//! - a small built-in HTTP service ([`demo`]) that plays an upstream system
//!   for the node's `json` sources and the webhook the example
//!   notification rule delivers to (it logs every notification).
//!
//! Everything lives under `--data-dir` (default `./sesam-data`): tokens,
//! the node's configuration, the rules file, and each component's RocksDB.
//! Files that exist are kept, so a second start resumes with the same
//! tokens, configuration and data. The data directory and every directory
//! in it are 0700, and every file the stack writes (tokens, the rules with
//! their signing key, the node configuration) is 0600; older, broader modes
//! are tightened at start.
//!
//! The node API requires a bearer token: `node-api.token`, made at the
//! first start and reused; `/api/health` and `/api/ping` stay open. The
//! metrics agent scrapes the node's `/api/metrics` with it.

#![forbid(unsafe_code)]

pub mod demo;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use collector::auth::{add_token, Role};
use tokio_util::sync::CancellationToken;

/// The subscription every record of the stack belongs to.
pub const SUBSCRIPTION: &str = "demo";
/// The node's id (`source` of its records).
pub const NODE_ID: &str = "stack-node";

/// Where the stack listens and keeps its data.
#[derive(Debug, Clone)]
pub struct StackConfig {
    pub data_dir: PathBuf,
    pub collector_listen: SocketAddr,
    pub node_listen: SocketAddr,
    pub agent_listen: SocketAddr,
    /// The built-in upstream service and webhook receiver.
    pub demo_listen: SocketAddr,
    /// Time between metric collections of the agent.
    pub metrics_interval: Duration,
    /// How often the node emits a health record.
    pub health_interval: Duration,
    /// `schedule_interval` of the example pipes `customers` and `orders`
    /// in a newly written node configuration (seconds).
    pub pipe_interval: u64,
}

impl StackConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> StackConfig {
        let ip = [127, 0, 0, 1];
        StackConfig {
            data_dir: data_dir.into(),
            collector_listen: SocketAddr::from((ip, 3100)),
            node_listen: SocketAddr::from((ip, 9042)),
            agent_listen: SocketAddr::from((ip, 9101)),
            demo_listen: SocketAddr::from((ip, 3199)),
            metrics_interval: Duration::from_secs(15),
            health_interval: Duration::from_secs(10),
            pipe_interval: 20,
        }
    }
}

/// What a running stack tells its user.
#[derive(Debug, Clone)]
pub struct Ready {
    pub collector_url: String,
    pub node_url: String,
    pub agent_url: String,
    pub demo_url: String,
    pub operator_token: String,
    pub operator_token_file: PathBuf,
    pub admin_token: String,
    /// The bearer token of the node API.
    pub node_token: String,
    pub node_token_file: PathBuf,
}

impl Ready {
    /// The banner printed once everything is up.
    pub fn banner(&self) -> String {
        let c = &self.collector_url;
        let tf = self.operator_token_file.display();
        format!(
            r#"
sesam-stack is running (Ctrl-C stops it; data stays in the data dir).

  console           {c}/ui/   (sign in with the operator token below)
  node API          {node}/api/pipes   (token: {node_token_file})
  collector API     {c}/api/v1/logs, {c}/api/v1/alerts, {c}/api/v1/notifications
  federate          {c}/federate?match[]={{__name__=~"node_.*"}}   (Prometheus scrape target)
  collector metrics {c}/metrics
  agent metrics     {agent}/metrics
  webhook receiver  {demo}/hook   (the example rule's notifications, also logged here)

  operator token    {token}
                    (also in {tf}; subscription "{sub}")
  node API token    {node_token}
                    (also in {node_token_file}; /api/health and /api/ping need none)

Try (the "orders" pipe fails on a bad entity every third run, every 20 s):

  # 1. the failing pipe's events
  curl -sG {c}/api/v1/logs -H "Authorization: Bearer $(cat {tf})" \
       --data-urlencode 'query={{pipe="orders", event_type="pump-failed"}}' --data-urlencode since=1h
  # 2. active alerts
  curl -s {c}/api/v1/alerts -H "Authorization: Bearer $(cat {tf})"
  # 3. the notification history (delivered to the built-in webhook)
  curl -s {c}/api/v1/notifications -H "Authorization: Bearer $(cat {tf})"
  # 4. the node's pipes
  curl -s {node}/api/pipes -H "Authorization: Bearer $(cat {node_token_file})"
"#,
            node = self.node_url,
            agent = self.agent_url,
            demo = self.demo_url,
            token = self.operator_token,
            sub = SUBSCRIPTION,
            node_token = self.node_token,
            node_token_file = self.node_token_file.display(),
        )
    }
}

/// Reads a token file, or makes the token (stored hashed in `tokens`) and
/// the file.
fn token(tokens: &Path, file: &Path, subscription: &str, role: Role) -> Result<String> {
    if let Some(t) = read_token(file)? {
        return Ok(t);
    }
    let t = add_token(tokens, subscription, role).context("add a token")?;
    private_file(tokens)?;
    write_private(file, &t)?;
    Ok(t)
}

/// The token in `file` (tightened to 0600), `None` if missing or empty.
fn read_token(file: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(file) {
        Ok(t) if !t.trim().is_empty() => {
            private_file(file)?;
            Ok(Some(t.trim().to_string()))
        }
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", file.display())),
    }
}

/// The node API's bearer token: read from `file`, or made (256 random
/// bits) and written there 0600.
fn node_token(file: &Path) -> Result<String> {
    if let Some(t) = read_token(file)? {
        return Ok(t);
    }
    use rand::RngExt;
    let mut raw = [0u8; 32];
    rand::rng().fill(&mut raw[..]);
    let t = format!("snt_{}", hex::encode(raw));
    write_private(file, &t)?;
    Ok(t)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    sesam_common::files::write_private(path, text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

fn private_file(path: &Path) -> Result<()> {
    sesam_common::files::private_file(path)
        .with_context(|| format!("restrict the permissions of {}", path.display()))
}

fn private_dir(path: &Path) -> Result<()> {
    sesam_common::files::private_dir(path).with_context(|| format!("create {}", path.display()))
}

fn write_once(path: &Path, text: &str) -> Result<()> {
    sesam_common::files::write_private_once(path, text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

/// The example node configuration: a healthy pipe, one that fails every
/// third run on a bad entity from the built-in upstream, one that reads the
/// built-in HTTP source, and one that copies a dataset.
pub fn node_config(demo: SocketAddr, every: u64) -> String {
    serde_json::to_string_pretty(&serde_json::json!([
        {"_id": "node", "type": "metadata", "monitoring": {"enabled": true}},
        {"_id": "upstream", "type": "system:url", "base_url": format!("http://{demo}"),
         "headers": {"Authorization": "Bearer $SECRET(upstream-token)"}, "timeout": 10},
        {"_id": "customers", "type": "pipe",
         "source": {"type": "embedded", "entities": [
             {"_id": "c1", "first": "Ada", "last": "Lovelace", "age": "36", "active": true},
             {"_id": "c2", "first": "Alan", "last": "Turing", "age": 41, "active": true},
             {"_id": "c3", "first": "Grace", "last": "Hopper", "age": "85", "active": false}]},
         "transform": {"type": "dtl", "rules": {"default": [
             ["copy", "*"],
             ["add", "name", ["concat", "_S.first", " ", "_S.last"]],
             ["add", "age", ["integer", "_S.age"]],
             ["remove", "first"], ["remove", "last"]]}},
         "pump": {"schedule_interval": every}},
        {"_id": "orders", "type": "pipe",
         "source": {"type": "json", "system": "upstream", "url": "/orders"},
         "transform": {"type": "dtl", "rules": {"default": [
             ["copy", "*"], ["add", "amount", ["integer", "_S.amount"]]]}},
         "pump": {"schedule_interval": every}},
        {"_id": "crm-contacts", "type": "pipe",
         "source": {"type": "json", "system": "upstream", "url": "/crm/contacts"},
         "pump": {"schedule_interval": 30}},
        {"_id": "active-customers", "type": "pipe",
         "source": {"type": "dataset", "dataset": "customers"},
         "transform": {"type": "dtl", "rules": {"default": [
             ["filter", ["eq", "_S.active", true]], ["copy", "_id", "name"]]}},
         "pump": {"schedule_interval": 60}}
    ]))
    .unwrap_or_default()
}

/// The example rules: page the built-in webhook when `orders` fails, when
/// the node goes silent, and when the node reports itself unhealthy.
pub fn rules_file(demo: SocketAddr) -> String {
    format!(
        r#"# Loaded by sesam-stack at every start (entries with these ids are replaced).
[[receivers]]
name = "stack-webhook"
subscription = "{SUBSCRIPTION}"
type = "webhook"
url = "http://{demo}/hook"
secret = "stack-demo-signing-key"

[[rules]]
id = "orders-failed"
name = "OrdersPipeFailed"
description = "The orders pipe failed; the entity that caused it stays on the node."
type = "pump_failed"
subscription = "{SUBSCRIPTION}"
pipes = ["orders"]
severity = "critical"
receivers = ["stack-webhook"]
repeat_interval = "10m"

[[rules]]
id = "node-silent"
name = "NodeSilent"
type = "node_heartbeat_overdue"
subscription = "{SUBSCRIPTION}"
params = {{ interval = "2m" }}
receivers = ["stack-webhook"]

[[rules]]
id = "node-unhealthy"
name = "NodeUnhealthy"
type = "service_unhealthy"
subscription = "{SUBSCRIPTION}"
receivers = ["stack-webhook"]
"#
    )
}

async fn wait_ready(url: &str, what: &str, shutdown: &CancellationToken) -> Result<()> {
    for _ in 0..600 {
        if shutdown.is_cancelled() {
            anyhow::bail!("stopped before {what} was ready");
        }
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(500), demo::http_get_status(url)).await
        {
            if s == 200 {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{what} did not become ready at {url}")
}

/// Runs the stack until `shutdown`; `on_ready` gets the URLs and tokens
/// once every component answers. Any component failing stops the others.
pub async fn run(
    config: StackConfig,
    shutdown: CancellationToken,
    log_records: Option<node::LogReceiver>,
    on_ready: impl FnOnce(Ready),
) -> Result<()> {
    let dir = &config.data_dir;
    // Every component's directory is made here, private, before the
    // component creates it with the process's umask.
    for d in [
        dir.clone(),
        dir.join("collector"),
        dir.join("node"),
        dir.join("checkpoints"),
    ] {
        private_dir(&d)?;
    }
    let tokens_path = dir.join("tokens.toml");
    let shipper_token = token(
        &tokens_path,
        &dir.join("shipper.token"),
        SUBSCRIPTION,
        Role::Shipper,
    )?;
    let operator_file = dir.join("operator.token");
    let operator_token = token(&tokens_path, &operator_file, SUBSCRIPTION, Role::Operator)?;
    let admin_token = token(&tokens_path, &dir.join("admin.token"), "*", Role::Admin)?;
    private_file(&tokens_path)?;
    let node_token_file = dir.join("node-api.token");
    let node_token = node_token(&node_token_file)?;
    let node_config_path = dir.join("node-config.json");
    write_once(
        &node_config_path,
        &node_config(config.demo_listen, config.pipe_interval),
    )?;
    let rules_path = dir.join("rules.toml");
    write_once(&rules_path, &rules_file(config.demo_listen))?;

    let collector_url = format!("http://{}", config.collector_listen);
    let node_url = format!("http://{}", config.node_listen);
    let agent_url = format!("http://{}", config.agent_listen);
    let demo_url = format!("http://{}", config.demo_listen);

    // Bind everything first so a taken port fails the start clearly.
    let bind = |addr: SocketAddr, what: &'static str| async move {
        tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!(
                "bind {what} on {addr} (is another stack running? see --help for the listen flags)"
            )
        })
    };
    let demo_l = bind(config.demo_listen, "the built-in upstream/webhook").await?;
    let collector_l = bind(config.collector_listen, "the collector").await?;
    let node_l = bind(config.node_listen, "the node API").await?;
    let agent_l = bind(config.agent_listen, "the metrics agent").await?;

    // Two stages: the node, agent and built-in service stop first, so the
    // shipper's last deliveries still find the collector; then the
    // collector. Dropped sets abort their tasks (a failed start).
    let stop = shutdown.child_token();
    let collector_stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut back = tokio::task::JoinSet::new();

    let demo_stop = stop.clone();
    tasks.spawn(async move {
        demo::serve(demo_l, demo_stop)
            .await
            .context("built-in upstream/webhook")
    });

    let tokens = collector::Tokens::load(&tokens_path).context("load tokens")?;
    let mut ccfg = collector::CollectorConfig::new(
        dir.join("collector"),
        collector::Listen::Listener(collector_l),
        tokens,
    );
    ccfg.rules_file = Some(rules_path);
    ccfg.notifier.external_url = collector_url.clone();
    // The built-in webhook listens on this host: let the notifier reach it
    // (the egress policy refuses loopback and private addresses otherwise).
    let demo_ip = config.demo_listen.ip();
    let bits = if demo_ip.is_ipv4() { 32 } else { 128 };
    ccfg.notifier.egress.allow.push(
        format!("{demo_ip}/{bits}")
            .parse()
            .map_err(anyhow::Error::msg)?,
    );
    ccfg.checkpoint_dir = Some(dir.join("checkpoints"));
    let cstop = collector_stop.clone();
    back.spawn(async move { collector::run(ccfg, cstop).await.context("collector") });
    wait_ready(&format!("{collector_url}/readyz"), "the collector", &stop).await?;

    let mut ncfg = node::NodeConfig::new(
        node_config_path,
        dir.join("node"),
        node::Listen::Listener(node_l),
    );
    ncfg.node_id = NODE_ID.into();
    ncfg.subscription = SUBSCRIPTION.into();
    ncfg.health_interval = config.health_interval;
    ncfg.log_records = log_records;
    ncfg.api_token = Some(node_token.clone());
    ncfg.collector = Some(shipper::service::Target {
        urls: vec![collector_url.clone()],
        token: Some(shipper_token.clone()),
    });
    let nstop = stop.clone();
    tasks.spawn(async move { node::run(ncfg, nstop).await.context("node") });
    wait_ready(&format!("{node_url}/api/health"), "the node", &stop).await?;
    // The upstream system's secret, set through the node's API as an
    // operator would (it is redacted before anything is shipped).
    demo::http_post_json(
        &format!("{node_url}/api/secrets"),
        &node_token,
        r#"{"upstream-token": "stack-upstream-secret"}"#,
    )
    .await
    .context("set the node's secrets")?;

    let mut acfg = metrics_agent::AgentConfig::new(NODE_ID, SUBSCRIPTION);
    acfg.interval = config.metrics_interval;
    acfg.listen = Some(metrics_agent::Listen::Listener(agent_l));
    acfg.push = Some(metrics_agent::PushTarget {
        protocol: metrics_agent::PushProtocol::RemoteWrite,
        url: format!("{collector_url}/api/v1/write"),
        token: Some(shipper_token),
    });
    acfg.scrape = vec![metrics_agent::ScrapeTarget {
        job: "node".into(),
        url: format!("{node_url}/api/metrics"),
        token: Some(node_token.clone()),
    }];
    let astop = stop.clone();
    tasks.spawn(async move {
        metrics_agent::run(acfg, astop)
            .await
            .context("metrics agent")
    });
    wait_ready(&format!("{agent_url}/metrics"), "the metrics agent", &stop).await?;

    on_ready(Ready {
        collector_url,
        node_url,
        agent_url,
        demo_url,
        operator_token,
        operator_token_file: operator_file,
        admin_token,
        node_token,
        node_token_file,
    });

    // The first component to stop (an error, or the shutdown) stops all.
    let mut errors: Vec<anyhow::Error> = Vec::new();
    let mut keep = |done: Result<Result<()>, tokio::task::JoinError>| {
        let r = done.unwrap_or_else(|e| Err(anyhow::anyhow!("task panicked or was aborted: {e}")));
        if let Err(e) = r {
            tracing::error!(
                error = format!("{e:#}"),
                "a component failed; stopping the stack"
            );
            errors.push(e);
        }
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        Some(done) = tasks.join_next() => keep(done),
        Some(done) = back.join_next() => keep(done),
    }
    stop.cancel();
    while let Some(done) = tasks.join_next().await {
        keep(done);
    }
    collector_stop.cancel();
    while let Some(done) = back.join_next().await {
        keep(done);
    }
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

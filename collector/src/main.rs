//! `sesam-collector`: flags only; the work is in the `collector` library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use collector::auth::{add_token, Role};
use collector::{CollectorConfig, Listen, Tokens};
use notifier::Limits;
use sesam_common::cli::{self, LogFormat};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc's malloc: per-thread heaps with freed memory
/// returned to the thread that allocated it, and large blocks served from
/// cached segments. Under glibc the writer spent half its time in `free`
/// contending with decoding threads for arenas, and the many 100 KiB+
/// blocks of large answers were each an `mmap`/`munmap`, taking the
/// process's address-space lock that every other thread's page faults
/// wait for (held, at times, by a niced query thread: a neighbour's big
/// answers stalled everyone). Measured in the noisy-neighbour benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "sesam-collector",
    version,
    about = "Central ingest, log store and search of the Sesam observability pipeline",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn session_ttl(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        d if d >= Duration::from_secs(1) && d <= Duration::from_secs(30 * 86_400) => Ok(d),
        d => Err(format!("expected 1s to 30d, got {d:?}")),
    }
}

fn queue_records(s: &str) -> Result<usize, String> {
    match s.replace('_', "").parse::<usize>() {
        Ok(v) if (1..=10_000_000).contains(&v) => Ok(v),
        _ => Err(format!("expected a count from 1 to 10000000, got {s:?}")),
    }
}

fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.01..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("expected a number from 0.01 to 1, got {s:?}")),
    }
}

fn retention_override(s: &str) -> Result<(String, Duration), String> {
    let (sub, d) = s
        .split_once('=')
        .ok_or_else(|| format!("expected SUBSCRIPTION=DURATION, got {s:?}"))?;
    Ok((sub.to_string(), duration(d)?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StorageKind {
    /// The embedded RocksDB store under --data-dir (one machine).
    Rocksdb,
    /// ClickHouse (--clickhouse-url): any number of collectors over one
    /// server or cluster.
    Clickhouse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MetricsStorageKind {
    /// The latest-sample table in memory (one collector).
    Memory,
    /// VictoriaMetrics (--victoriametrics-url); the table still counts
    /// series against the limits and feeds the notifier.
    Victoriametrics,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Directory of the log store (created if missing). With --storage
    /// clickhouse it keeps the notifier's state and the console sessions.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where logs are kept.
    #[arg(long, value_enum, default_value = "rocksdb")]
    storage: StorageKind,
    /// ClickHouse's HTTP interface, e.g. http://127.0.0.1:8123. Repeat it
    /// for replicas or servers of a cluster to fail over between (tables
    /// are created on each).
    #[arg(long)]
    clickhouse_url: Vec<String>,
    /// Replicated tables (ReplicatedReplacingMergeTree, ...): every server
    /// defines the `shard` and `replica` macros and knows ZooKeeper.
    #[arg(long)]
    clickhouse_replicated: bool,
    /// A cluster of the servers' `remote_servers`: local tables on every
    /// server and Distributed tables over them, sharded by (subscription,
    /// source).
    #[arg(long)]
    clickhouse_cluster: Option<String>,
    /// Database of the collector's tables (created if missing).
    #[arg(long, default_value = "sesam")]
    clickhouse_database: String,
    #[arg(long, default_value = "default")]
    clickhouse_user: String,
    /// File holding the ClickHouse user's password (chmod 600).
    #[arg(long)]
    clickhouse_password_file: Option<PathBuf>,
    /// Where pushed metrics (remote-write, OTLP) are kept and /federate is
    /// answered from.
    #[arg(long, value_enum, default_value = "memory")]
    metrics_storage: MetricsStorageKind,
    /// VictoriaMetrics' HTTP address, e.g. http://127.0.0.1:8428 (with
    /// --metrics-storage victoriametrics).
    #[arg(long)]
    victoriametrics_url: Option<String>,
    /// Coordinate with the other collectors over the same ClickHouse
    /// through ZooKeeper: one notifier per subscription across them, e.g.
    /// zookeeper://zk1:2181,zk2:2181/sesam (needs --storage clickhouse and
    /// --member-id).
    #[arg(long)]
    coordination: Option<String>,
    /// This collector's id among the coordinated collectors
    /// ([A-Za-z0-9._-], at most 128; stable across restarts).
    #[arg(long)]
    member_id: Option<String>,
    /// Where the other collectors reach this one (notifier API calls are
    /// forwarded to a subscription's owner); default --external-url, else
    /// http://<--listen>.
    #[arg(long)]
    advertise_url: Option<String>,
    /// ZooKeeper session timeout: a killed owner's subscriptions move
    /// after about this long (1s..60s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    coordination_session_timeout: Duration,
    /// How often an owner looks for new records of its subscriptions in
    /// the shared feed (10ms..10s).
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    coordination_poll: Duration,
    /// Days of the shared feed kept in ClickHouse (1..365).
    #[arg(long, default_value_t = 3)]
    coordination_feed_days: u32,
    /// With --metrics-storage victoriametrics: how often an owner reads
    /// the latest samples its metric_threshold rules watch (1s..10m).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    coordination_metric_interval: Duration,
    /// Address to listen on, e.g. 127.0.0.1:3100.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TOML tokens file (see `token add`).
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Where checkpoints go; none are taken without it.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    #[arg(long, value_parser = duration, default_value = "24h")]
    checkpoint_interval: Duration,
    #[arg(long, default_value_t = 7)]
    checkpoint_keep: usize,
    /// Default retention of every subscription.
    #[arg(long, value_parser = duration, default_value = "720h")]
    retention: Duration,
    /// Retention of one subscription, e.g. `acme=168h` (repeatable).
    #[arg(long = "retention-for", value_parser = retention_override)]
    retention_for: Vec<(String, Duration)>,
    #[arg(long, value_parser = duration, default_value = "1m")]
    retention_interval: Duration,
    /// Largest accepted request body (compressed), bytes.
    #[arg(long, default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// Largest body after decompression, bytes.
    #[arg(long, default_value_t = 32 << 20)]
    max_decompressed_bytes: usize,
    /// Largest record (its body as JSON), bytes.
    #[arg(long, default_value_t = 256 << 10)]
    max_record_bytes: usize,
    /// Most records in one batch.
    #[arg(long, default_value_t = 50_000)]
    max_batch_records: usize,
    /// Oldest accepted record time relative to now (capped by retention).
    #[arg(long, value_parser = duration, default_value = "720h")]
    accept_past: Duration,
    /// Newest accepted record time relative to now.
    #[arg(long, value_parser = duration, default_value = "10m")]
    accept_future: Duration,
    /// Write requests (ingest, remote-write, OTLP) decoding or waiting for
    /// their commit at once, all subscriptions together.
    #[arg(long, default_value_t = 16)]
    max_concurrent_ingests: usize,
    /// Of those, at most this many for one subscription.
    #[arg(long, default_value_t = 8)]
    max_concurrent_ingests_per_subscription: usize,
    /// How long a request whose body was read waits for a decode slot
    /// before 429.
    #[arg(long, value_parser = duration, default_value = "2s")]
    admission_wait: Duration,
    /// Request body bytes held in memory at once (ingest, metrics push);
    /// a body that does not fit gets 429.
    #[arg(long, default_value_t = 256 << 20)]
    max_inflight_body_bytes: usize,
    /// The same for one subscription.
    #[arg(long, default_value_t = 64 << 20)]
    max_inflight_body_bytes_per_subscription: usize,
    /// A request body must be complete this long after its headers (408).
    #[arg(long, value_parser = duration, default_value = "120s")]
    body_timeout: Duration,
    /// Time a body may take before --body-min-rate applies.
    #[arg(long, value_parser = duration, default_value = "10s")]
    body_grace: Duration,
    /// Slowest accepted upload, bytes per second averaged since the
    /// headers (408 below it).
    #[arg(long, default_value_t = 32 << 10)]
    body_min_rate: u64,
    /// Nice steps below the collector of the bulk lane, where a
    /// subscription's concurrent write requests (ingest, remote-write,
    /// OTLP) beyond its first decode (0: no bulk lane).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    bulk_ingest_nice: i32,
    /// A write request body this large (a compressed log batch: once
    /// decompressed) decodes on the bulk lane while another subscription
    /// is active, even alone in flight (1 KiB to 1 GiB).
    #[arg(long, default_value_t = 256 << 10, value_parser = clap::value_parser!(u64).range(1024..=1 << 30))]
    bulk_ingest_body_bytes: u64,
    /// Searches running at once (threads of the query pool).
    #[arg(long, default_value_t = 4)]
    max_concurrent_queries: usize,
    /// Searches running at once for one subscription; more wait (429
    /// after --query-timeout).
    #[arg(long, default_value_t = 2)]
    max_concurrent_queries_per_subscription: usize,
    /// Nice steps of the query threads below the collector's priority (0:
    /// none) for a search's first --query-quantum.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i32).range(0..=19))]
    query_nice: i32,
    /// Nice steps below the collector once a search has run
    /// --query-quantum: long scans get the CPU everything else leaves.
    #[arg(long, default_value_t = 19, value_parser = clap::value_parser!(i32).range(0..=19))]
    query_demoted_nice: i32,
    /// How long a search runs before it is demoted to --query-demoted-nice.
    #[arg(long, value_parser = duration, default_value = "20ms")]
    query_quantum: Duration,
    /// Share of the time (0.01 to 1) a demoted search may run, and its
    /// answer stream, while another subscription is active (1: no pacing).
    #[arg(long, default_value_t = 0.25, value_parser = share)]
    query_background_share: f64,
    #[arg(long, value_parser = duration, default_value = "30s")]
    query_timeout: Duration,
    /// Matchers in a LogQL stream selector.
    #[arg(long, default_value_t = 32)]
    max_query_matchers: usize,
    /// Stages (line filters, | json, label filters) of a LogQL query.
    #[arg(long, default_value_t = 64)]
    max_query_stages: usize,
    /// Memory of all the regexes of one query (or one /federate request).
    #[arg(long, default_value_t = 8 << 20)]
    max_query_regex_bytes: usize,
    /// Bytes of log lines in one answer; the answer stops there, marked
    /// "truncated".
    #[arg(long, default_value_t = 32 << 20)]
    max_answer_bytes: usize,
    /// Bytes of log lines one query (search or metric query) may read;
    /// past it the query is answered 400 naming this limit.
    #[arg(long, default_value_t = 8 << 30)]
    max_query_scan_bytes: u64,
    /// Series one metric query may produce; past it the query is answered
    /// 400 naming this limit.
    #[arg(long, default_value_t = 1000)]
    max_query_series: usize,
    /// Keep the skip and volume indexes (token filters per stream, hour
    /// and part of an hour; record counts per 10 s) that let line-filter
    /// searches skip what cannot match and log-volume queries count
    /// without reading. `false` saves their ingest CPU and ~8% of the
    /// disk; every search then reads all records in its range. Turned on
    /// again, records written while it was off are scanned, never missed.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    skip_index: bool,
    /// Serve the operator console at /ui/.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    ui: bool,
    /// How long a console session lasts after sign-in.
    #[arg(long, default_value = "12h", value_parser = session_ttl)]
    ui_session_ttl: Duration,
    /// Console sessions open at once; past it a sign-in is refused (503).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    ui_max_sessions: u64,
    /// Mark the console's session cookie Secure (set it when the
    /// collector is reached through a TLS proxy).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    ui_secure_cookie: bool,
    /// Live tails (/loki/api/v1/tail) open at once.
    #[arg(long, default_value_t = 256)]
    max_tails: usize,
    /// Live tails open at once for one subscription.
    #[arg(long, default_value_t = 8)]
    max_tails_per_subscription: usize,
    /// Bytes of records offered to live tails and not read by all of them
    /// yet, over every subscription: past it, commit groups are dropped for
    /// the tails (each is told how many) (64 KiB to 1 TiB).
    #[arg(long, default_value_t = collector::logs::tail::TailLimits::default().max_buffer_bytes as u64, value_parser = clap::value_parser!(u64).range(65_536..=1 << 40))]
    tail_buffer_bytes: u64,
    /// The same for the tails of one subscription (64 KiB to 1 TiB).
    #[arg(long, default_value_t = collector::logs::tail::TailLimits::default().max_buffer_bytes_per_subscription as u64, value_parser = clap::value_parser!(u64).range(65_536..=1 << 40))]
    tail_buffer_bytes_per_subscription: u64,
    /// match[] selectors of one /federate request.
    #[arg(long, default_value_t = 64)]
    max_federate_selectors: usize,
    /// Bytes of one /federate answer; past it the request gets 400.
    #[arg(long, default_value_t = 256 << 20)]
    max_federate_bytes: usize,
    /// Connections open at once; more are answered 503 and closed.
    #[arg(long, default_value_t = 2048)]
    max_connections: usize,
    /// Connections open at once from one IP address; more are answered
    /// 429 and closed (raise it behind a reverse proxy).
    #[arg(long, default_value_t = 256)]
    max_connections_per_peer: usize,
    /// A request head must arrive completely within this time.
    #[arg(long, value_parser = duration, default_value = "10s")]
    header_read_timeout: Duration,
    /// A connection without a request in progress and without traffic is
    /// closed after this time.
    #[arg(long, value_parser = duration, default_value = "60s")]
    idle_timeout: Duration,
    /// A request whose answer is not ready after this time gets 503.
    #[arg(long, value_parser = duration, default_value = "120s")]
    request_timeout: Duration,
    /// Largest request head (431 above it).
    #[arg(long, default_value_t = 64 << 10)]
    max_header_bytes: usize,
    /// Streams with a free-form pipe label per subscription; records that
    /// would make more are stored without it (overflow="pipe").
    #[arg(long, default_value_t = 50_000)]
    max_streams_per_subscription: usize,
    /// Sources per subscription; batches of a new source beyond it get 429
    /// (reason source_limit).
    #[arg(long, default_value_t = 1_000)]
    max_sources_per_subscription: usize,
    /// Longest pipe label value; longer ones are stored without it
    /// (overflow="pipe").
    #[arg(long, default_value_t = 1024)]
    max_label_value_bytes: usize,
    /// Time in-flight requests get after SIGINT/SIGTERM.
    #[arg(long, value_parser = duration, default_value = "10s")]
    shutdown_deadline: Duration,
    /// Most pushed metric series kept per subscription (latest-sample
    /// table behind /federate); samples of new series beyond it are refused.
    #[arg(long, default_value_t = 100_000)]
    max_metric_series_per_subscription: usize,
    /// Most pushed metric series kept in all.
    #[arg(long, default_value_t = 1_000_000)]
    max_metric_series: usize,
    /// Memory of one subscription's pushed series (keys + 64 bytes each);
    /// new series beyond it are refused.
    #[arg(long, default_value_t = 64 << 20)]
    max_metric_bytes_per_subscription: usize,
    /// Memory of all pushed series.
    #[arg(long, default_value_t = 512 << 20)]
    max_metric_bytes: usize,
    /// Labels of one pushed series (__name__ included); a series with more
    /// is refused.
    #[arg(long, default_value_t = 40)]
    max_metric_labels_per_series: usize,
    /// Longest label name of a pushed series.
    #[arg(long, default_value_t = 128)]
    max_metric_label_name_bytes: usize,
    /// Longest label value of a pushed series.
    #[arg(long, default_value_t = 2048)]
    max_metric_label_value_bytes: usize,
    /// Notification receivers, rules and silences to load at start (TOML,
    /// or JSON when the name ends in .json); they replace entries with the
    /// same ids.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// The collector's URL as operators reach it (links in notifications);
    /// default http://<listen>.
    #[arg(long)]
    external_url: Option<String>,
    #[command(flatten)]
    notifier: NotifierArgs,
}

fn cidr(s: &str) -> Result<notifier::Cidr, String> {
    s.parse()
}

/// Bounds of the notifier (see README, Notifier: limits); the defaults are
/// `notifier::Limits::default()`.
#[derive(Debug, Args)]
struct NotifierArgs {
    /// Receivers may send to this range although the egress policy denies
    /// it by default (loopback, private, link-local, ...), e.g.
    /// 127.0.0.1/32 for a webhook on this host (repeatable). The
    /// collector's own address stays refused.
    #[arg(long = "egress-allow", value_parser = cidr)]
    egress_allow: Vec<notifier::Cidr>,
    /// Notification rules per subscription.
    #[arg(long, default_value_t = Limits::default().max_rules_per_subscription)]
    max_rules_per_subscription: usize,
    /// Receivers per subscription.
    #[arg(long, default_value_t = Limits::default().max_receivers_per_subscription)]
    max_receivers_per_subscription: usize,
    /// Silences per subscription.
    #[arg(long, default_value_t = Limits::default().max_silences_per_subscription)]
    max_silences_per_subscription: usize,
    /// Matchers of one silence.
    #[arg(long, default_value_t = Limits::default().max_matchers_per_silence)]
    max_matchers_per_silence: usize,
    /// Compiled-regex budget of one rule or silence, bytes (shared by its
    /// regexes).
    #[arg(long, default_value_t = Limits::default().max_regex_bytes)]
    max_regex_bytes: usize,
    /// Length of one pattern, glob or matcher value, bytes.
    #[arg(long, default_value_t = Limits::default().max_pattern_bytes)]
    max_pattern_bytes: usize,
    /// Longest duration in a rule (repeat_interval, grace, interval,
    /// limit, for, resolve_after).
    #[arg(long, value_parser = duration, default_value = "30days")]
    max_rule_duration: Duration,
    /// Longest silence, and how far ahead it may start.
    #[arg(long, value_parser = duration, default_value = "36500days")]
    max_silence_duration: Duration,
    /// Evaluation time of one subscription's rules per round of the
    /// notifier's evaluation thread; its further records wait for the next
    /// round.
    #[arg(long, value_parser = duration, default_value = "50ms")]
    notifier_eval_budget: Duration,
    /// Average fraction of one core a subscription's rule evaluation may
    /// use (its budget refills at this rate); beyond it its records wait.
    #[arg(long, default_value_t = Limits::default().eval_share)]
    notifier_eval_share: f64,
    /// Longest gap in a source's event time that is not a silence; a
    /// source coming back after a longer one gets a fresh grace for its
    /// pipes' overdue deadlines.
    #[arg(long, value_parser = duration, default_value = "2m")]
    notifier_source_gap: Duration,
    /// Records of one subscription held in memory waiting for evaluation;
    /// further ones wait in the store's commit feed (on disk).
    #[arg(long, default_value_t = Limits::default().max_deferred_per_subscription)]
    max_deferred_records_per_subscription: usize,
    /// Records held in memory between the store's commits and the
    /// notifier's evaluation thread (all subscriptions); further ones wait
    /// in the store's commit feed and are read back from there (1 to
    /// 10,000,000).
    #[arg(long, default_value_t = notifier::NotifierConfig::default().queue_records, value_parser = queue_records)]
    notifier_queue_records: usize,
    /// The same queue's bound in bytes of records (as held in memory):
    /// a tenant's large records wait in the commit feed instead (64 KiB
    /// to 1 TiB).
    #[arg(long, default_value_t = notifier::NotifierConfig::default().queue_bytes as u64, value_parser = clap::value_parser!(u64).range(65_536..=1 << 40))]
    notifier_queue_bytes: u64,
    /// Bytes of records of one subscription held in memory waiting for
    /// evaluation; further ones wait in the commit feed (64 KiB to 1 TiB).
    #[arg(long, default_value_t = Limits::default().max_deferred_bytes_per_subscription as u64, value_parser = clap::value_parser!(u64).range(65_536..=1 << 40))]
    max_deferred_bytes_per_subscription: u64,
    /// Bytes of a text a pattern_match rule looks at.
    #[arg(long, default_value_t = Limits::default().max_match_bytes)]
    max_match_bytes: usize,
    /// Pipes tracked per subscription for overdue rules.
    #[arg(long, default_value_t = Limits::default().max_pipes_per_subscription)]
    max_pipes_per_subscription: usize,
    /// Active alerts per subscription.
    #[arg(long, default_value_t = Limits::default().max_alerts_per_subscription)]
    max_alerts_per_subscription: usize,
    /// Armed deadlines per subscription (overdue, heartbeat, repeat, ...).
    #[arg(long, default_value_t = Limits::default().max_timers_per_subscription)]
    max_timers_per_subscription: usize,
    /// Value windows and metric series states per subscription.
    #[arg(long, default_value_t = Limits::default().max_series_per_subscription)]
    max_series_per_subscription: usize,
    /// Notifications waiting for delivery per subscription; beyond it a new
    /// one fails at once ("queue full").
    #[arg(long, default_value_t = Limits::default().max_pending_per_subscription)]
    max_pending_notifications_per_subscription: usize,
    /// Deliveries in flight per subscription.
    #[arg(long, default_value_t = Limits::default().max_in_flight_per_subscription)]
    max_deliveries_per_subscription: usize,
}

impl NotifierArgs {
    fn apply(self, c: &mut notifier::NotifierConfig) {
        c.egress.allow = self.egress_allow;
        c.queue_records = self.notifier_queue_records;
        c.queue_bytes = usize::try_from(self.notifier_queue_bytes).unwrap_or(usize::MAX);
        let l = &mut c.limits;
        l.max_rules_per_subscription = self.max_rules_per_subscription;
        l.max_receivers_per_subscription = self.max_receivers_per_subscription;
        l.max_silences_per_subscription = self.max_silences_per_subscription;
        l.max_matchers_per_silence = self.max_matchers_per_silence;
        l.max_regex_bytes = self.max_regex_bytes;
        l.max_pattern_bytes = self.max_pattern_bytes;
        l.max_rule_duration = self.max_rule_duration;
        l.max_silence_duration = self.max_silence_duration;
        l.eval_budget = self.notifier_eval_budget;
        l.eval_share = self.notifier_eval_share;
        l.source_gap = self.notifier_source_gap;
        l.max_deferred_per_subscription = self.max_deferred_records_per_subscription;
        l.max_deferred_bytes_per_subscription =
            usize::try_from(self.max_deferred_bytes_per_subscription).unwrap_or(usize::MAX);
        l.max_match_bytes = self.max_match_bytes;
        l.max_pipes_per_subscription = self.max_pipes_per_subscription;
        l.max_alerts_per_subscription = self.max_alerts_per_subscription;
        l.max_timers_per_subscription = self.max_timers_per_subscription;
        l.max_series_per_subscription = self.max_series_per_subscription;
        l.max_pending_per_subscription = self.max_pending_notifications_per_subscription;
        l.max_in_flight_per_subscription = self.max_deliveries_per_subscription;
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the tokens file.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Search logs on a running collector and print the matches.
    Search(SearchArgs),
    /// Take a checkpoint now.
    Checkpoint(CheckpointArgs),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a random token, print it once, store only its SHA-256.
    Add {
        #[arg(long)]
        tokens: PathBuf,
        /// Subscription id, or `*` for an admin token.
        #[arg(long)]
        subscription: String,
        /// shipper, operator or admin.
        #[arg(long)]
        role: Role,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct SearchArgs {
    /// LogQL query, e.g. `{pipe="orders"} |= "timeout"`.
    query: String,
    /// How far back to search.
    #[arg(long, default_value = "1h")]
    since: String,
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Oldest first instead of newest first.
    #[arg(long)]
    forward: bool,
    /// Keep printing new records as they are stored (after the newest
    /// --limit of --since), until interrupted.
    #[arg(long, conflicts_with = "forward")]
    tail: bool,
    /// Step of a metric query (e.g. `sum by (level) (count_over_time({...}[1m]))`);
    /// default: --since / 250, at least 1s.
    #[arg(long)]
    step: Option<String>,
    #[arg(
        long,
        env = "SESAM_COLLECTOR_URL",
        default_value = "http://127.0.0.1:3100"
    )]
    url: String,
    /// File holding an operator or admin token (else $SESAM_COLLECTOR_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, Args)]
struct CheckpointArgs {
    /// Store to checkpoint (the collector must not be running on it; use
    /// --url to ask a running collector instead).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 7)]
    keep: usize,
    /// Ask the running collector at this URL (POST /api/v1/checkpoints).
    #[arg(long)]
    url: Option<String>,
    /// Admin token file for --url (else $SESAM_COLLECTOR_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

fn read_token(file: Option<&PathBuf>) -> anyhow::Result<String> {
    match file {
        Some(f) => Ok(sesam_common::token::read_token_file(f).context("--token-file")?),
        None => std::env::var("SESAM_COLLECTOR_TOKEN")
            .context("give --token-file or set SESAM_COLLECTOR_TOKEN"),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli::init_logging(cli.log_format);
    match cli.command {
        Some(Command::Token(TokenCommand::Add {
            tokens,
            subscription,
            role,
        })) => {
            let token = add_token(&tokens, &subscription, role)
                .with_context(|| format!("add token to {}", tokens.display()))?;
            println!("{token}");
            eprintln!(
                "stored its SHA-256 in {}; this is the only time the token is shown",
                tokens.display()
            );
            Ok(())
        }
        Some(Command::Search(args)) => runtime()?.block_on(search(args)),
        Some(Command::Checkpoint(args)) => runtime()?.block_on(checkpoint(args)),
        None => serve(cli.serve),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start tokio runtime")
}

fn storage(a: &ServeArgs) -> anyhow::Result<collector::Storage> {
    match a.storage {
        StorageKind::Rocksdb => {
            if !a.clickhouse_url.is_empty() {
                bail!("--clickhouse-url needs --storage clickhouse");
            }
            Ok(collector::Storage::RocksDb)
        }
        StorageKind::Clickhouse => {
            if a.clickhouse_url.is_empty() {
                bail!("--storage clickhouse needs --clickhouse-url (e.g. http://127.0.0.1:8123)");
            }
            if a.clickhouse_url.len() > MAX_CLICKHOUSE_URLS {
                bail!(
                    "--clickhouse-url given {} times; at most {MAX_CLICKHOUSE_URLS} servers (put a load balancer in front of more)",
                    a.clickhouse_url.len()
                );
            }
            for url in &a.clickhouse_url {
                if url.len() > 2048 {
                    bail!("--clickhouse-url is {} bytes long; at most 2048", url.len());
                }
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    bail!("--clickhouse-url {url:?} must start with http:// or https:// (ClickHouse's HTTP interface, port 8123 by default)");
                }
            }
            let mut c =
                collector::logs::clickhouse::ClickHouseConfig::new(a.clickhouse_url[0].clone());
            c.urls = a.clickhouse_url.clone();
            c.layout.replicated = a.clickhouse_replicated;
            if let Some(name) = &a.clickhouse_cluster {
                if !collector::logs::clickhouse::schema::valid_database(name) {
                    bail!("--clickhouse-cluster {name:?} must be 1-64 characters of [A-Za-z0-9_], not starting with a digit");
                }
                c.layout.cluster = Some(name.clone());
            }
            c.database = a.clickhouse_database.clone();
            if a.clickhouse_user.is_empty()
                || a.clickhouse_user.len() > 256
                || a.clickhouse_user.chars().any(char::is_control)
            {
                bail!("--clickhouse-user must be 1-256 characters without control characters");
            }
            c.user = a.clickhouse_user.clone();
            if let Some(f) = &a.clickhouse_password_file {
                let len = std::fs::metadata(f)
                    .with_context(|| format!("read --clickhouse-password-file {}", f.display()))?
                    .len();
                if len > 4096 {
                    bail!(
                        "--clickhouse-password-file {} is {len} bytes; a password file holds at most 4096",
                        f.display()
                    );
                }
                if sesam_common::token::readable_by_others(f) {
                    bail!(
                        "--clickhouse-password-file {}: group or others may read it; chmod 600 it",
                        f.display()
                    );
                }
                let p = std::fs::read_to_string(f)
                    .with_context(|| format!("read --clickhouse-password-file {}", f.display()))?;
                let p = p.trim_end_matches(['\n', '\r']);
                if p.chars().any(char::is_control) {
                    bail!(
                        "--clickhouse-password-file {}: the password holds a control character (one line expected)",
                        f.display()
                    );
                }
                c.password = Some(p.to_string());
            }
            Ok(collector::Storage::ClickHouse(c))
        }
    }
}

/// ClickHouse servers one collector lists at most.
const MAX_CLICKHOUSE_URLS: usize = 16;

/// `--coordination` and its companions, checked.
fn coordination(
    a: &ServeArgs,
    listen: SocketAddr,
) -> anyhow::Result<Option<collector::coordinated::CoordinationConfig>> {
    let Some(url) = &a.coordination else {
        for (set, flag) in [
            (a.member_id.is_some(), "--member-id"),
            (a.advertise_url.is_some(), "--advertise-url"),
        ] {
            if set {
                bail!("{flag} needs --coordination");
            }
        }
        return Ok(None);
    };
    let url: coordination::CoordinationUrl = url
        .parse()
        .map_err(|e| anyhow::anyhow!("--coordination: {e}"))?;
    let Some(member_id) = a.member_id.clone() else {
        bail!("--coordination needs --member-id (this collector's id among them, stable across restarts)");
    };
    if let Err(reason) = coordination::names::check_member_id(&member_id) {
        bail!("--member-id {member_id:?} is invalid: {reason}");
    }
    let advertised_url = a
        .advertise_url
        .clone()
        .or_else(|| a.external_url.clone())
        .unwrap_or_else(|| format!("http://{listen}"));
    if !(advertised_url.starts_with("http://") || advertised_url.starts_with("https://"))
        || advertised_url.len() > 2048
        || advertised_url.chars().any(char::is_control)
    {
        bail!("--advertise-url {advertised_url:?} must be an http:// or https:// URL of at most 2048 bytes");
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&a.coordination_session_timeout)
    {
        bail!(
            "--coordination-session-timeout {} is outside 1s..60s",
            humantime::format_duration(a.coordination_session_timeout)
        );
    }
    if !(Duration::from_millis(10)..=Duration::from_secs(10)).contains(&a.coordination_poll) {
        bail!(
            "--coordination-poll {} is outside 10ms..10s",
            humantime::format_duration(a.coordination_poll)
        );
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(600))
        .contains(&a.coordination_metric_interval)
    {
        bail!(
            "--coordination-metric-interval {} is outside 1s..10m",
            humantime::format_duration(a.coordination_metric_interval)
        );
    }
    if !(1..=365).contains(&a.coordination_feed_days) {
        bail!(
            "--coordination-feed-days {} is outside 1..365",
            a.coordination_feed_days
        );
    }
    Ok(Some(collector::coordinated::CoordinationConfig {
        url,
        member_id,
        advertised_url,
        session_timeout: a.coordination_session_timeout,
        poll: a.coordination_poll,
        feed_days: a.coordination_feed_days,
        metric_every: a.coordination_metric_interval,
    }))
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let storage_kind = storage(&a)?;
    let victoriametrics_url = match (a.metrics_storage, a.victoriametrics_url.clone()) {
        (MetricsStorageKind::Memory, None) => None,
        (MetricsStorageKind::Memory, Some(_)) => {
            bail!("--victoriametrics-url needs --metrics-storage victoriametrics")
        }
        (MetricsStorageKind::Victoriametrics, None) => bail!(
            "--metrics-storage victoriametrics needs --victoriametrics-url (e.g. http://127.0.0.1:8428)"
        ),
        (MetricsStorageKind::Victoriametrics, Some(url)) => {
            collector::metrics::victoria::Victoria::new(&url).map_err(anyhow::Error::msg)?;
            Some(url)
        }
    };
    let coordination = match a.listen {
        Some(listen) => coordination(&a, listen)?,
        None => None,
    };
    let (Some(data_dir), Some(listen), Some(tokens_path)) = (a.data_dir, a.listen, a.tokens) else {
        bail!("--data-dir, --listen and --tokens are required (or give a subcommand; see --help)");
    };
    collector::auth::check_private(&tokens_path).context("check tokens file")?;
    let tokens = Tokens::load(&tokens_path).context("load tokens")?;
    if tokens.is_empty() {
        tracing::warn!(path = %tokens_path.display(), "tokens file has no tokens: every request will be refused");
    }
    let mut config = CollectorConfig::new(data_dir, Listen::Addr(listen), tokens);
    config.coordination = coordination;
    config.storage = storage_kind;
    config.victoriametrics_url = victoriametrics_url;
    if !matches!(config.storage, collector::Storage::RocksDb) && a.checkpoint_dir.is_some() {
        bail!("--checkpoint-dir works with --storage rocksdb only: with ClickHouse, back up ClickHouse itself (see README, ClickHouse)");
    }
    config.checkpoint_dir = a.checkpoint_dir;
    config.checkpoint_interval = a.checkpoint_interval;
    config.checkpoint_keep = a.checkpoint_keep;
    config.retention.default = a.retention;
    config.retention.overrides = a.retention_for.into_iter().collect();
    config.retention_interval = a.retention_interval;
    config.limits.max_body_bytes = a.max_body_bytes;
    config.limits.max_decompressed_bytes = a.max_decompressed_bytes;
    config.limits.max_record_bytes = a.max_record_bytes;
    config.limits.max_records = a.max_batch_records;
    config.limits.accept_past = a.accept_past;
    config.limits.accept_future = a.accept_future;
    config.limits.max_label_value_bytes = a.max_label_value_bytes;
    config.admission = collector::AdmissionLimits {
        max_concurrent_ingests: a.max_concurrent_ingests,
        max_ingests_per_subscription: a.max_concurrent_ingests_per_subscription,
        admission_wait: a.admission_wait,
        max_inflight_body_bytes: a.max_inflight_body_bytes,
        max_inflight_body_bytes_per_subscription: a.max_inflight_body_bytes_per_subscription,
        body_timeout: a.body_timeout,
        body_grace: a.body_grace,
        body_min_rate: a.body_min_rate,
        bulk_nice: a.bulk_ingest_nice,
        bulk_body_bytes: usize::try_from(a.bulk_ingest_body_bytes).unwrap_or(usize::MAX),
        ..collector::AdmissionLimits::default()
    };
    config.server = collector::ServerLimits {
        max_connections: a.max_connections,
        max_connections_per_peer: a.max_connections_per_peer,
        header_read_timeout: a.header_read_timeout,
        idle_timeout: a.idle_timeout,
        request_timeout: a.request_timeout,
        max_header_bytes: a.max_header_bytes,
        ..collector::ServerLimits::default()
    };
    config.read.query = collector::logs::query::QueryLimits {
        max_matchers: a.max_query_matchers,
        max_stages: a.max_query_stages,
        max_regex_bytes: a.max_query_regex_bytes,
    };
    config.read.max_answer_bytes = a.max_answer_bytes;
    config.read.max_scanned_bytes = a.max_query_scan_bytes;
    config.read.max_series = a.max_query_series;
    config.tail.max_tails = a.max_tails;
    config.tail.max_tails_per_subscription = a.max_tails_per_subscription;
    config.tail.max_buffer_bytes = usize::try_from(a.tail_buffer_bytes).unwrap_or(usize::MAX);
    config.tail.max_buffer_bytes_per_subscription =
        usize::try_from(a.tail_buffer_bytes_per_subscription).unwrap_or(usize::MAX);
    config.read.max_federate_selectors = a.max_federate_selectors;
    config.read.max_federate_bytes = a.max_federate_bytes;
    config.read.max_queries_per_subscription = a.max_concurrent_queries_per_subscription;
    config.read.query_nice = a.query_nice;
    config.read.query_demoted_nice = a.query_demoted_nice;
    config.read.query_quantum = a.query_quantum;
    config.read.query_background_share = a.query_background_share;
    config.store.skip_index = a.skip_index;
    config.ui = collector::http::ui::session::UiConfig {
        enabled: a.ui,
        session_ttl: a.ui_session_ttl,
        max_sessions: a.ui_max_sessions as usize,
        secure_cookie: a.ui_secure_cookie,
    };
    config.store.max_streams_per_subscription = a.max_streams_per_subscription;
    config.store.max_sources_per_subscription = a.max_sources_per_subscription;
    config.max_concurrent_queries = a.max_concurrent_queries;
    config.query_timeout = a.query_timeout;
    config.shutdown_deadline = a.shutdown_deadline;
    config.metric_limits.max_series_per_subscription = a.max_metric_series_per_subscription;
    config.metric_limits.max_series = a.max_metric_series;
    config.metric_limits.max_bytes_per_subscription = a.max_metric_bytes_per_subscription;
    config.metric_limits.max_bytes = a.max_metric_bytes;
    config.metric_limits.labels = collector::metrics::series::LabelLimits {
        max_labels: a.max_metric_labels_per_series,
        max_name_bytes: a.max_metric_label_name_bytes,
        max_value_bytes: a.max_metric_label_value_bytes,
    };
    // Connections and RocksDB's files both need descriptors.
    match collector::http::serve::raise_fd_limit() {
        Some(n) if (n as usize) < a.max_connections + 512 => tracing::warn!(
            open_files = n,
            max_connections = a.max_connections,
            "the open-file limit leaves little room beyond --max-connections; raise it (LimitNOFILE=) or lower --max-connections"
        ),
        _ => {}
    }
    config.rules_file = a.rules;
    config.notifier.external_url = a.external_url.unwrap_or_else(|| format!("http://{listen}"));
    a.notifier.apply(&mut config.notifier);
    // One bound on a subscription's sources, for the store and the notifier.
    config.notifier.limits.max_sources_per_subscription = a.max_sources_per_subscription;

    runtime()?.block_on(async move {
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            cli::shutdown_signal("collector").await;
            tracing::info!("shutdown signal received");
            signal.cancel();
        });
        collector::run(config, shutdown)
            .await
            .context("run collector")
    })
}

fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .context("build HTTP client")
}

/// Whether `query` is a metric query (it starts with a function or an
/// aggregation rather than a stream selector).
fn is_metric_query(query: &str) -> bool {
    !query.trim_start().starts_with('{')
}

/// One record's text line: time, labels (but the subscription), body.
fn record_line(
    time: &str,
    labels: Option<&serde_json::Map<String, serde_json::Value>>,
    body: &str,
) -> String {
    let labels = labels
        .map(|l| {
            l.iter()
                .filter(|(k, _)| *k != "subscription")
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    format!("{time} {labels} {body}")
}

fn answer_error(body: &serde_json::Value) -> String {
    let mut msg = body
        .get("error")
        .and_then(|e| e.as_str())
        .unwrap_or("?")
        .to_string();
    if let Some(c) = body.get("column").and_then(|c| c.as_u64()) {
        msg.push_str(&format!(" (column {c})"));
    }
    msg
}

async fn search(a: SearchArgs) -> anyhow::Result<()> {
    let token = read_token(a.token_file.as_ref())?;
    if a.tail {
        return tail(&a, &token).await;
    }
    if is_metric_query(&a.query) {
        return metric_search(&a, &token).await;
    }
    let url = format!("{}/api/v1/logs", a.url.trim_end_matches('/'));
    let resp = client()?
        .get(&url)
        .bearer_auth(token)
        .query(&[
            ("query", a.query.as_str()),
            ("since", a.since.as_str()),
            ("limit", &a.limit.to_string()),
            ("direction", if a.forward { "forward" } else { "backward" }),
        ])
        .send()
        .await
        .with_context(|| format!("query {url}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.context("read search answer")?;
    if !status.is_success() {
        bail!("search failed ({status}): {}", answer_error(&body));
    }
    let records = body
        .get("records")
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    match a.output {
        Output::Json => {
            println!("{}", serde_json::to_string_pretty(&records)?);
        }
        Output::Text => {
            for r in &records {
                println!(
                    "{}",
                    record_line(
                        r.get("time").and_then(|t| t.as_str()).unwrap_or("?"),
                        r.get("labels").and_then(|l| l.as_object()),
                        &r.get("body").map(|b| b.to_string()).unwrap_or_default(),
                    )
                );
            }
            eprintln!("{} records", records.len());
        }
    }
    Ok(())
}

/// A metric query over --since at --step, printed as a table: one row per
/// (series, time).
async fn metric_search(a: &SearchArgs, token: &str) -> anyhow::Result<()> {
    let url = format!("{}/loki/api/v1/query_range", a.url.trim_end_matches('/'));
    let mut params = vec![("query", a.query.clone()), ("since", a.since.clone())];
    if let Some(step) = &a.step {
        params.push(("step", step.clone()));
    }
    let resp = client()?
        .get(&url)
        .bearer_auth(token)
        .query(&params)
        .send()
        .await
        .with_context(|| format!("query {url}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.context("read query answer")?;
    if !status.is_success() {
        bail!("query failed ({status}): {}", answer_error(&body));
    }
    let series = body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Output::Json = a.output {
        println!("{}", serde_json::to_string_pretty(&series)?);
        return Ok(());
    }
    let mut rows: Vec<(String, String, String)> = Vec::new();
    for s in &series {
        let labels = s["metric"]
            .as_object()
            .map(|l| {
                let inner: Vec<String> = l
                    .iter()
                    .map(|(k, v)| format!("{k}={:?}", v.as_str().unwrap_or("")))
                    .collect();
                format!("{{{}}}", inner.join(", "))
            })
            .unwrap_or_default();
        for p in s["values"].as_array().into_iter().flatten() {
            let t = p[0].as_f64().unwrap_or(0.0);
            let time = schemas::time::rfc3339_from_nanos((t * 1e9) as i64);
            rows.push((
                time,
                p[1].as_str().unwrap_or("?").to_string(),
                labels.clone(),
            ));
        }
    }
    let w_time = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
    let w_val = rows.iter().map(|r| r.1.len()).max().unwrap_or(5).max(5);
    println!("{:<w_time$}  {:>w_val$}  SERIES", "TIME", "VALUE");
    for (t, v, l) in &rows {
        println!("{t:<w_time$}  {v:>w_val$}  {l}");
    }
    eprintln!("{} series, {} points", series.len(), rows.len());
    Ok(())
}

/// Follows a query over the collector's WebSocket tail until interrupted.
async fn tail(a: &SearchArgs, token: &str) -> anyhow::Result<()> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let base = a.url.trim_end_matches('/');
    let ws_base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if base.starts_with("https://") {
        bail!("--tail speaks plain WebSocket (ws://) only; reach the collector over http:// (e.g. through an SSH tunnel) to tail");
    } else {
        bail!("--url must start with http://");
    };
    let since =
        humantime::parse_duration(&a.since).with_context(|| format!("--since {:?}", a.since))?;
    let start = schemas::time::now_nanos()
        .saturating_sub(i64::try_from(since.as_nanos()).unwrap_or(i64::MAX));
    let mut url =
        reqwest::Url::parse(&format!("{ws_base}/loki/api/v1/tail")).context("tail URL")?;
    url.query_pairs_mut()
        .append_pair("query", &a.query)
        .append_pair("limit", &a.limit.to_string())
        .append_pair("start", &start.to_string());
    let mut req = url.as_str().into_client_request().context("tail request")?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .context("token is not a valid header value")?,
    );
    let (mut ws, _) = match tokio_tungstenite::connect_async(req).await {
        Ok(x) => x,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                .map(|b| answer_error(&b))
                .unwrap_or_default();
            bail!("tail refused ({}): {body}", resp.status());
        }
        Err(e) => return Err(e).with_context(|| format!("connect to {url}")),
    };
    while let Some(msg) = ws.next().await {
        let msg = msg.context("tail connection")?;
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => break,
            _ => continue,
        };
        let v: serde_json::Value = serde_json::from_str(&text).context("tail message")?;
        if let Some(d) = v.get("dropped_commit_groups").and_then(|d| d.as_u64()) {
            eprintln!("warning: the tail fell behind and skipped {d} commit groups");
        }
        for s in v["streams"].as_array().into_iter().flatten() {
            for e in s["values"].as_array().into_iter().flatten() {
                let ns: i64 = e[0].as_str().and_then(|t| t.parse().ok()).unwrap_or(0);
                let line = e[1].as_str().unwrap_or("");
                match a.output {
                    Output::Json => println!(
                        "{}",
                        serde_json::json!({"ts": ns, "labels": s["stream"], "line": line})
                    ),
                    Output::Text => println!(
                        "{}",
                        record_line(
                            &schemas::time::rfc3339_from_nanos(ns),
                            s["stream"].as_object(),
                            line
                        )
                    ),
                }
            }
        }
    }
    Ok(())
}

async fn checkpoint(a: CheckpointArgs) -> anyhow::Result<()> {
    if let Some(url) = a.url {
        let token = read_token(a.token_file.as_ref())?;
        let url = format!("{}/api/v1/checkpoints", url.trim_end_matches('/'));
        let resp = client()?
            .post(&url)
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.context("read checkpoint answer")?;
        if !status.is_success() {
            bail!("checkpoint failed ({status}): {body}");
        }
        println!(
            "{}",
            body.get("path").and_then(|p| p.as_str()).unwrap_or("?")
        );
        return Ok(());
    }
    let (Some(data_dir), Some(dir)) = (a.data_dir, a.checkpoint_dir) else {
        bail!("give --data-dir and --checkpoint-dir (collector stopped), or --url (collector running)");
    };
    let metrics = collector::telemetry::Metrics::default();
    let path = tokio::task::spawn_blocking(move || -> anyhow::Result<PathBuf> {
        let store = collector::Store::open(
            &data_dir,
            collector::StoreConfig::default(),
            metrics.clone(),
            Vec::new(),
        )
        .with_context(|| format!("open store {}", data_dir.display()))?;
        let p = collector::checkpoint::take(&store, &dir, a.keep, &metrics)
            .context("take checkpoint")?;
        store.close();
        Ok(p)
    })
    .await
    .context("checkpoint task")??;
    println!("{}", path.display());
    Ok(())
}

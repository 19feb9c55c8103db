//! Harness shared by the end-to-end tests: helpers that start real
//! processes and inspect what they left on disk.
//!
//! - [`process`]: locating the workspace binaries, child processes killed on
//!   drop, SIGKILL / SIGTERM, `VmHWM`, free ports, polling, tmpfs mounts;
//! - [`collector`], [`node`], [`shipper`]: the three binaries with their
//!   flags, data directories and APIs, restartable on the same port;
//! - [`clickhouse`]: collectors over ClickHouse, the engines or a loud skip;
//! - [`webhook`]: a notification receiver served by the test process;
//! - [`hostile`]: raw requests of hostile tenants (stalled uploads, idle
//!   sockets from chosen loopback addresses, batches with epochs,
//!   remote-write bodies);
//! - [`collector::Collector::assert_exactly_once_and_stop`]: the final
//!   check of every fault test, over HTTP and then offline in the store.

pub mod clickhouse;
pub mod collector;
pub mod coordinated;
pub mod hostile;
pub mod node;
/// Moved to the shared `testkit` crate; re-exported for the tests here.
pub use testkit::process;
pub mod shipper;
pub mod webhook;

use std::path::{Path, PathBuf};

use ::shipper::outbox::{Outbox, OutboxConfig, OutboxError, OutboxStats};
use schemas::Record;

/// Every record stored in `outbox`, in seq order, and how many reads on the
/// way quarantined a record.
pub fn read_all(outbox: &Outbox) -> Result<(Vec<Record>, usize), OutboxError> {
    let mut records = Vec::new();
    let mut quarantined = 0;
    let mut after = 0;
    loop {
        let b = outbox.read(after, 50_000, usize::MAX)?;
        quarantined += b.quarantined;
        if b.records.is_empty() && b.last_seq == after {
            return Ok((records, quarantined));
        }
        after = b.last_seq;
        records.extend(b.records);
    }
}

/// The counters of the outbox in `dir` (of a stopped process); all zero if
/// none was ever created there.
pub fn outbox_stats(dir: &Path) -> OutboxStats {
    if !dir.join("CURRENT").exists() {
        return OutboxStats::default();
    }
    Outbox::open(dir, OutboxConfig::default())
        .unwrap_or_else(|e| panic!("open the outbox {}: {e}", dir.display()))
        .stats()
}

/// Where most fault tests start: a scratch directory, a webhook, a
/// collector (started) serving one subscription with a `pump_failed` rule
/// for the pipe that notifies the webhook, and a node (not started) whose
/// pipe fails ([`node::failing_pipe_config`]), shipping to the collector.
#[derive(Debug)]
pub struct FailingPipe {
    pub dir: tempfile::TempDir,
    pub hook: webhook::Webhook,
    pub collector: collector::Collector,
    pub node: node::Node,
    /// The subscription's shipper token file (`--token-file`).
    pub token: PathBuf,
}

impl FailingPipe {
    /// `subscription`, node `node_id`, its failing pipe `pipe`, notified to
    /// `hook`.
    pub async fn start(
        subscription: &str,
        node_id: &str,
        pipe: &str,
        hook: webhook::Webhook,
    ) -> FailingPipe {
        FailingPipe::start_with(subscription, node_id, pipe, hook, &[]).await
    }

    /// [`FailingPipe::start`] with extra flags for the collector.
    pub async fn start_with(
        subscription: &str,
        node_id: &str,
        pipe: &str,
        hook: webhook::Webhook,
        collector_args: &[&str],
    ) -> FailingPipe {
        let dir = scratch();
        let mut collector =
            collector::Collector::new(&dir.path().join("collector"), &[subscription]);
        collector
            .args
            .extend(collector_args.iter().map(|a| a.to_string()));
        collector.start().await;
        collector
            .pump_failed_rule(subscription, "ops", &[pipe], &hook.url)
            .await;
        let token = collector.token_file(subscription);
        let config = node::failing_pipe_config(pipe);
        let mut node = node::Node::new(&dir.path().join("node"), node_id, subscription, &config);
        node.collector = Some((collector.url.clone(), token.clone()));
        FailingPipe {
            dir,
            hook,
            collector,
            node,
            token,
        }
    }
}

/// A temporary directory for one test; kept (and its path printed) when
/// `E2E_KEEP` is set, to read the processes' logs after a failure.
pub fn scratch() -> tempfile::TempDir {
    let keep = std::env::var_os("E2E_KEEP").is_some();
    let dir = tempfile::Builder::new()
        .prefix("sesam-e2e-")
        .disable_cleanup(keep)
        .tempdir()
        .expect("create a temporary directory");
    if keep {
        eprintln!("E2E_KEEP: keeping {}", dir.path().display());
    }
    dir
}

/// Changes the stored bytes of record `seq` in the outbox at `dir` (closed)
/// through RocksDB itself, bypassing the outbox's checksums, as a bad disk
/// would: `f` gets the stored value. False when `seq` is not stored.
pub fn corrupt_record(dir: &Path, seq: u64, f: impl FnOnce(&mut Vec<u8>)) -> bool {
    let opts = rocksdb::Options::default();
    let families = rocksdb::DB::list_cf(&opts, dir).expect("list the outbox's column families");
    let db = rocksdb::DB::open_cf(&opts, dir, &families).expect("open the outbox's RocksDB");
    let records = db.cf_handle("records").expect("the records column family");
    let key = seq.to_be_bytes();
    let Some(mut value) = db.get_cf(records, key).expect("read a record") else {
        return false;
    };
    f(&mut value);
    db.put_cf(records, key, value)
        .expect("write the record back");
    db.flush_cf(records).expect("flush");
    true
}

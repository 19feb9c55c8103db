//! What every log store backend shares: the prepared batches ingest hands
//! it, what it answers, the errors it may give, the sources' and streams'
//! descriptions, and the observer hook. Backend-neutral (the RocksDB store
//! in `rocks/` is the first backend).

use std::path::PathBuf;
use std::sync::Arc;

use schemas::Record;
use serde::{Deserialize, Serialize};

pub use super::labels::Labels;

/// Version byte in front of every stored line.
pub const ENTRY_V1: u8 = 1;
/// The version byte new entries are written with.
pub const ENTRY_V1_BYTE: u8 = ENTRY_V1;

/// Everything that can go wrong in the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("open log store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("log store {path} is locked by another process (is a collector running on it?)")]
    Locked { path: PathBuf },
    #[error("log store storage failed to {op}: {message}")]
    Storage { op: &'static str, message: String },
    #[error("log store is closed")]
    Closed,
    #[error("write queue is full")]
    Busy,
    /// A batch that contradicts what is stored for its source: a seq
    /// re-sent with other content, or new records of an outbox epoch older
    /// than the source's current one. Nothing of the batch is stored.
    #[error("source {source_name:?} of subscription {subscription:?}: {detail}")]
    SourceConflict {
        subscription: String,
        source_name: String,
        /// `epoch`, or `records[i]` for the record at fault.
        field: String,
        detail: String,
    },
    /// A batch of a new source when its subscription has
    /// `max_sources_per_subscription` sources already.
    #[error("subscription {subscription:?} has {limit} sources, its limit; source {source_name:?} is new (raise --max-sources-per-subscription or terminate unused sources)")]
    SourceLimit {
        subscription: String,
        source_name: String,
        limit: usize,
    },
}

impl StoreError {
    pub(crate) fn storage(op: &'static str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Storage {
            op,
            message: e.to_string(),
        }
    }
}

/// A stream as the readers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    pub id: u64,
    pub labels: Arc<Labels>,
    pub min_ts: i64,
    pub max_ts: i64,
    pub records: u64,
}

impl StreamInfo {
    pub fn subscription(&self) -> &str {
        self.labels
            .get("subscription")
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// An outbox epoch of a source that is no longer its current one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochMeta {
    pub epoch: String,
    /// Its id in the store's keys.
    pub id: u32,
    /// Highest seq stored in it.
    pub last_seq: u64,
    /// Wall-clock time (Unix ns) it stopped being current.
    pub ended: i64,
}

/// Older epochs remembered per source (their re-sent records are answered
/// as duplicates); the oldest is forgotten beyond it.
pub const MAX_OLD_EPOCHS: usize = 16;

/// Persisted state of one (subscription, source).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceMeta {
    /// Wall-clock time (Unix ns) of the first and last ingest that stored
    /// one of its records.
    pub first_seen: i64,
    pub last_seen: i64,
    /// Highest seq stored in the current epoch.
    pub last_seq: u64,
    /// The current outbox epoch ("" for shippers without epochs).
    #[serde(default)]
    pub epoch: String,
    /// Its id in the store's keys (0 for the legacy epoch "").
    #[serde(default)]
    pub epoch_id: u32,
    /// The id the next new epoch gets.
    #[serde(default)]
    pub next_epoch_id: u32,
    /// Earlier epochs, oldest first (at most [`MAX_OLD_EPOCHS`]).
    #[serde(default)]
    pub old_epochs: Vec<EpochMeta>,
    /// When the current epoch directly follows the legacy epoch: the legacy
    /// epoch's last seq (seqs up to it are looked up there first).
    #[serde(default)]
    pub legacy_last_seq: u64,
    /// Batches refused as conflicts (409 source_conflict).
    #[serde(default)]
    pub conflicts: u64,
    /// Records stored now (retention subtracts what it deletes).
    pub records: u64,
    /// Newest record time (`ts`, Unix ns) ever stored.
    pub newest_ts: i64,
    /// Records the source's outbox reported dropped, summed over batches.
    #[serde(default)]
    pub dropped: u64,
    /// Duplicates received (retries of stored records).
    #[serde(default)]
    pub duplicates: u64,
}

/// A source as `/api/v1/sources` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    pub subscription: String,
    pub source: String,
    pub meta: SourceMeta,
}

/// Told about every record the store commits for the first time.
///
/// Observers are called on the writer thread right after the synced write
/// and before the ingest request is answered, in commit order, with only
/// the newly stored records (never duplicates). They must return quickly
/// (hand the records to a channel or a task); a slow observer slows ingest.
/// This is the hook the notifier (issue 6) uses.
pub trait IngestObserver: Send + Sync + 'static {
    /// `records` were just stored durably, all of one commit group.
    fn committed(&self, records: &[Record]);
    /// Instead of [`IngestObserver::committed`] when the store writes a
    /// durable commit feed (the RocksDB store with `StoreConfig::feed`, the
    /// ClickHouse store with the local store's feed):
    /// the same records with the commit's number, so that an observer can
    /// queue them in memory and fall back to the feed when it lags.
    fn committed_feed(&self, _commit: u64, records: Arc<Vec<Record>>) {
        self.committed(&records)
    }
    /// Whether this observer needs `subscription`'s records in a commit
    /// feed the store keeps for it (the ClickHouse store writes whole
    /// records there; see `rocks/feed.rs`). Records of a subscription no
    /// observer wants there still reach `committed_feed`, in memory only.
    fn wants_feed(&self, _subscription: &str) -> bool {
        false
    }
    /// Every record of `subscription` was deleted (termination).
    fn subscription_purged(&self, _subscription: &str) {}
    /// A batch of `source` was refused as a conflict (a seq re-sent with
    /// other content, or two outbox epochs writing one source); `detail`
    /// says which. Called on the store's event thread, off the request
    /// path, at most once a minute per source.
    fn source_conflict(&self, _subscription: &str, _source: &str, _detail: &str) {}
}

/// One distinct label set of an ingest batch.
#[derive(Debug, Clone)]
pub struct PreparedStream {
    pub labels: Labels,
    pub key: String,
    /// For a stream with the free-form `pipe` label: the labels (and key)
    /// its records go to when the subscription's stream limit is reached.
    pub overflow: Option<(Labels, String)>,
    /// Its labels are already overflow labels: the record's `pipe` value
    /// was over the label size limit or held control characters.
    pub overflowed: bool,
}

/// One validated record, ready to store.
#[derive(Debug, Clone)]
pub struct PreparedEntry {
    pub seq: u64,
    pub ts: i64,
    /// Index into [`PreparedBatch::streams`].
    pub stream: usize,
    /// The line with its version byte.
    pub value: Vec<u8>,
    /// CRC-32 of the record's time, stream labels and line: tells a retry
    /// (same digest) from another record with the same seq.
    pub digest: u32,
}

/// A validated ingest batch of one (subscription, source).
#[derive(Debug, Clone)]
pub struct PreparedBatch {
    pub subscription: String,
    pub source: String,
    /// The outbox epoch ("" from shippers without epochs).
    pub epoch: String,
    pub dropped: u64,
    pub streams: Vec<PreparedStream>,
    pub entries: Vec<PreparedEntry>,
    /// The decoded records, in the order of `entries`; only kept when an
    /// observer wants them.
    pub records: Option<Vec<Record>>,
    /// What the store's [`LogStore::stage`](super::LogStore::stage) worked
    /// out for this batch on the caller's thread (opaque to everyone else).
    pub staged: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// What one ingest changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IngestOutcome {
    pub accepted: u64,
    pub duplicates: u64,
    /// Accepted records stored without their `pipe` label (stream limit
    /// or label size).
    pub overflowed: u64,
}

/// What a subscription purge deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PurgeReport {
    pub streams: u64,
    pub records: u64,
    pub sources: u64,
}

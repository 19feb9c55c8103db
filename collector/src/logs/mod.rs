//! The logs domain: what ingest validates ([`ingest`]), the labels of a
//! record ([`labels`]), searches ([`query`]), retention ([`retention`]),
//! and the stores that keep the records behind the [`LogStore`] trait
//! ([`rocks`]: RocksDB, the first backend). Nothing here knows HTTP.

pub mod clickhouse;
pub mod ingest;
pub mod labels;
pub mod model;
pub mod query;
pub mod retention;
pub mod rocks;
pub mod tail;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::oneshot;

pub use model::{
    EpochMeta, IngestObserver, IngestOutcome, PreparedBatch, PreparedEntry, PreparedStream,
    PurgeReport, SourceInfo, SourceMeta, StoreError, StreamInfo,
};
use query::{
    MatchedRecord, Query, ScanParams, ScanStats, SearchError, SearchParams, SearchResult,
    VolumeBucket,
};
use retention::RetentionPolicy;

/// Resolves once a queued batch is durable (or failed).
pub type IngestReceipt = oneshot::Receiver<Result<IngestOutcome, StoreError>>;

/// A store operation running in the background.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A log store: what the HTTP layer, retention, checkpoints and the
/// notifier's hooks need of one. Implementations keep each (subscription,
/// source, epoch, seq) at most once, answer an ingest only once it is
/// durable, call their [`IngestObserver`]s as documented there, and never
/// let a query of one subscription read another's records.
pub trait LogStore: Send + Sync + std::fmt::Debug + 'static {
    /// Queues `batch`; [`StoreError::Busy`] when the write queue is full,
    /// [`StoreError::SourceConflict`] / [`StoreError::SourceLimit`] through
    /// the receipt.
    fn try_ingest(&self, batch: PreparedBatch) -> Result<IngestReceipt, StoreError>;

    /// Work on `batch` that the store would otherwise do on its write
    /// path and that may run beforehand on the caller's thread, in
    /// parallel with other batches (e.g. tokenizing lines for an index),
    /// kept in [`PreparedBatch::staged`]. Optional: a batch that was not
    /// staged is still stored whole.
    fn stage(&self, _batch: &mut PreparedBatch) {}

    /// Whether ingest should keep the decoded records for observers.
    fn wants_records(&self) -> bool;

    /// Runs `query` (blocking; call it from a query thread).
    fn search(&self, query: &Query, params: &SearchParams) -> Result<SearchResult, SearchError>;

    /// Calls `f` with every record of `streams` (picked by
    /// [`LogStore::select_streams`]) in `[p.start, p.end)` that passes the
    /// query's stages, a stream at a time, oldest first, until `f` answers
    /// `false` (blocking; call it from a query thread). Metric queries run
    /// on this.
    fn scan_matches(
        &self,
        query: &Query,
        streams: &[Arc<StreamInfo>],
        p: &ScanParams,
        f: &mut dyn FnMut(MatchedRecord<'_>) -> bool,
    ) -> Result<ScanStats, SearchError>;

    /// The exact records and line bytes of `stream` per volume bucket
    /// (see [`VolumeBucket`]) whose end is in `(start, end]` (both
    /// multiples of [`query::VOLUME_BUCKET_NS`]), oldest first, buckets
    /// without records left out; `None` when the store keeps no volume
    /// index (metric queries then scan).
    fn volume(
        &self,
        _stream: &StreamInfo,
        _start: i64,
        _end: i64,
    ) -> Option<Result<Vec<VolumeBucket>, StoreError>> {
        None
    }

    /// The streams `query`'s selector picks of `subscription` (every one
    /// when `None`) in `[start, end)`: the label index.
    fn select_streams(
        &self,
        query: &Query,
        subscription: Option<&str>,
        start: i64,
        end: i64,
    ) -> Vec<Arc<StreamInfo>>;

    /// Every source, ordered by (subscription, source).
    fn sources(&self) -> Vec<SourceInfo>;

    /// Deletes what is older than its subscription's retention at `now`
    /// (Unix ns); returns how many records went.
    fn apply_retention<'a>(&'a self, policy: &'a RetentionPolicy, now: i64)
        -> StoreFuture<'a, u64>;

    /// Deletes everything of `subscription` (termination).
    fn purge<'a>(&'a self, subscription: &'a str) -> StoreFuture<'a, PurgeReport>;

    /// Bytes the store occupies on disk.
    fn disk_bytes(&self) -> u64;

    /// Writes a consistent copy of the store into `dir` (which must not
    /// exist yet).
    fn checkpoint(&self, dir: &Path) -> Result<(), StoreError>;

    /// Commits what is queued and stops writing; reads keep working.
    fn close(&self);
}

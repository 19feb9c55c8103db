//! The log store: records grouped into streams by label set and ordered by
//! time inside a stream, in one RocksDB database (`--data-dir`).
//!
//! # Model (after Loki)
//! Loki groups log lines into *streams*, one per distinct label set, and
//! stores each stream's lines in time-ordered, compressed *chunks*; an index
//! maps label matchers to streams. Here a stream is the set of labels of
//! [`labels::record_labels`] (`subscription`, `source`, `kind`, `level`,
//! and `pipe` / `event_type` where they apply). Its entries are keyed by
//! (stream id, time), so a query resolves its stream selector against the
//! in-memory stream index and then reads each matching stream's time range
//! with one seek and a sequential scan. RocksDB's data blocks play the role
//! of Loki's chunks: consecutive entries of one stream, compressed together.
//!
//! # Guarantees
//! - An ingest is answered only after its records are in a synced write
//!   batch (group commit: concurrent ingests share one batch and one fsync,
//!   see `writer.rs`).
//! - Each (subscription, source, epoch, seq) is stored at most once: the
//!   writer keeps the highest seq stored per source epoch in memory (a
//!   higher seq is new without a lookup) and otherwise looks the `seqs` key
//!   up. The key's value is a digest of the record (time, labels, line): a
//!   seq re-sent with other content is refused as a conflict, never
//!   silently answered as a duplicate.
//! - Outbox epochs (`IngestBatch.epoch`): each epoch of a source is its own
//!   sequence space with a small id (the legacy epoch "" is id 0). A batch
//!   of an unknown epoch starts a new space and becomes the source's
//!   current epoch; new records of an epoch older than the current one are
//!   refused as a conflict (two live outboxes writing one source), while
//!   pure re-sends of an older epoch's stored records are still answered as
//!   duplicates. A new epoch that follows the legacy epoch first looks seqs
//!   up in the legacy space (a shipper upgraded while a batch was in
//!   flight re-sends it with its new epoch: same digest, a duplicate).
//! - Per subscription at most `max_sources_per_subscription` sources (a new
//!   one beyond it is refused, retryably) and `max_streams_per_subscription`
//!   streams with a free-form `pipe` label (a record that would pass it is
//!   stored in its stream without `pipe`, see `labels.rs`).
//! - Every mutation goes through the single writer thread, so the in-memory
//!   stream index and source table always describe what is committed.
//!
//! # On-disk layout
//!
//! | column family | key | value |
//! |---|---|---|
//! | `entries` | stream id u64 BE, ts i64 BE with the sign bit flipped, \[epoch id u32 BE,\] seq u64 BE (24 bytes for epoch 0, 28 otherwise) | `[1u8 version][line]`, line = the record's body as compact JSON |
//! | `streams` | stream id u64 BE | MessagePack [`StreamMeta`]: labels, oldest/newest ts, entry count |
//! | `seqs` | subscription, `0`, source, `0`, seq u64 BE (epoch 0); subscription, `0`, source, `1`, epoch id u32 BE, seq u64 BE (others) | CRC-32 of the record (4 bytes BE; empty in stores written before epochs): "this seq is stored" (dedupe) |
//! | `sources` | subscription, `0`, source | MessagePack [`SourceMeta`]: first/last seen, current epoch and its last seq, older epochs, counts |
//! | `skip` | stream id u64 BE, hour i64 BE (sign bit flipped), part u32 BE | token bloom filter, record count, oldest/newest ts of the part (merge operator; see `skip.rs`) |
//! | `volume` | stream id u64 BE, hour i64 BE (sign bit flipped) | records and line bytes per 10 s bucket (merge operator; see `skip.rs`) |
//! | `meta` | `format`, `next_stream` | `sesam-collector-v3` (a v1 store, from before epochs, opens as is; a v2 store, from before the skip index, is migrated: see `skip.rs`); next stream id u64 BE |
//! | `feed` | subscription, `0`, commit u64 BE | the entries keys each commit stored, for consumers off the commit path (see `feed.rs`; written only with [`StoreConfig::feed`]) |
//! | `notifier` | see the notifier crate's `store.rs` | rules, receivers, silences, alerts, notification queue and history |
//!
//! Subscription and source names never contain a 0 byte (ingest validates
//! them), so every key of one subscription in `seqs` and `sources` lies in
//! `[sub 0x00, sub 0x01)`: terminating a subscription is one `DeleteRange`
//! per family plus one per stream of it in `entries`.
//!
//! The `streams` family is small (one entry per label set) and is loaded
//! into memory at open; it is the label index behind `/labels`,
//! `/label/{name}/values` and stream selection (a stream's oldest/newest
//! times let label queries honour a time range without touching entries).
//!
//! # Options and why
//! - `entries`: 32 KiB blocks (more lines per compressed block, like a
//!   chunk), LZ4 on upper levels where data is rewritten often, zstd on the
//!   bottommost level where most data lives and stays (JSON log lines shrink
//!   5-10x), no bloom filter (only range scans).
//! - `seqs`: whole-key bloom filters (10 bits/key): the dedupe lookup of a
//!   retried seq is mostly a negative or a memtable hit.
//! - WAL on; ingest writes are synced. Retention deletes a stream's expired
//!   prefix with one `DeleteRange` (plus the matching `seqs` keys), so it
//!   costs little whatever the volume.
//! - Checkpoints are RocksDB checkpoints (hard links of the SST files plus a
//!   copy of the live WAL): a checkpoint directory is itself a store that
//!   `--data-dir` can open.

pub mod feed;
pub mod keys;
mod scan;
mod search;
mod skip;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, DBRawIterator, Options,
    ReadOptions, DB,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use crate::logs::labels::{
    labels_key, overflow_labels, record_labels, record_labels_key, record_line, Labels,
    FREE_FORM_LABEL, LABEL_NAMES, OVERFLOW_LABEL,
};
pub use crate::logs::model::{
    EpochMeta, IngestObserver, IngestOutcome, PreparedBatch, PreparedEntry, PreparedStream,
    PurgeReport, SourceInfo, SourceMeta, StoreError, StreamInfo, ENTRY_V1, ENTRY_V1_BYTE,
    MAX_OLD_EPOCHS,
};
use crate::logs::query::{
    MatchedRecord, Query, ScanParams, ScanStats, SearchError, SearchParams, SearchResult,
    VolumeBucket, VOLUME_BUCKET_NS,
};
use crate::logs::retention::RetentionPolicy;
use crate::logs::{IngestReceipt, LogStore, StoreFuture};
pub use skip::SkipPlan;

use crate::telemetry::Metrics;

pub(crate) const CF_ENTRIES: &str = "entries";
pub(crate) const CF_STREAMS: &str = "streams";
pub(crate) const CF_SEQS: &str = "seqs";
pub(crate) const CF_SOURCES: &str = "sources";
pub(crate) const CF_META: &str = "meta";
/// A store with the skip and volume indexes (`skip.rs`).
const FORMAT: &[u8] = b"sesam-collector-v3";
/// Stores from before the skip index: migrated at open (see `skip.rs`,
/// "Coverage"), then marked [`FORMAT`]; a store opened with
/// [`StoreConfig::skip_index`] off is marked v2 again.
const FORMAT_V2: &[u8] = b"sesam-collector-v2";
/// Stores from before outbox epochs: read as is (their keys are the legacy
/// epoch's), then marked [`FORMAT`].
const FORMAT_V1: &[u8] = b"sesam-collector-v1";
pub(crate) const META_FORMAT: &[u8] = b"format";
pub(crate) const META_NEXT_STREAM: &[u8] = b"next_stream";
/// Tuning of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Shared block cache of every column family.
    pub block_cache_bytes: usize,
    /// Memtable size of the `entries` family.
    pub write_buffer_bytes: usize,
    /// Ingest batches waiting for the writer; beyond it ingest answers 429.
    pub queue_batches: usize,
    /// Streams with a free-form `pipe` label per subscription; records
    /// that would make more are stored without `pipe` (`overflow="pipe"`).
    pub max_streams_per_subscription: usize,
    /// Sources per subscription; a batch of a new source beyond it is
    /// refused (429, retried by shippers) until sources go away.
    pub max_sources_per_subscription: usize,
    /// Write the commit feed (see `feed.rs`) and hand observers each
    /// commit's number ([`IngestObserver::committed_feed`]). The collector
    /// turns it on with its notifier, which evaluates records off the
    /// commit path and trims the feed.
    pub feed: bool,
    /// Write the skip and volume indexes with the entries and use them in
    /// searches (`skip.rs`). Off: the store is written as before the index
    /// existed (format v2; the indexes are dropped at open), which the
    /// next open with it on migrates like any older store. Off is for
    /// comparisons (benchmarks, tests).
    pub skip_index: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 64 << 20,
            queue_batches: 16,
            max_streams_per_subscription: 50_000,
            max_sources_per_subscription: 1_000,
            feed: false,
            skip_index: true,
        }
    }
}

/// Persisted description of a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamMeta {
    /// Shared with the readers' [`StreamInfo`] and with the writer's copy
    /// of a group in the making: a group touching a stream clones its
    /// meta, which must not clone its labels (a flood over many streams
    /// had spent a tenth of the writer's time copying and freeing them).
    pub labels: Arc<Labels>,
    /// Oldest and newest entry time (Unix ns) stored in the stream.
    pub min_ts: i64,
    pub max_ts: i64,
    /// Entries stored.
    pub records: u64,
    /// The newest entry time the stream held when the store was migrated
    /// to the skip index: entries up to it may be in no index unit, so
    /// queries scan that part of the stream (`skip.rs`). `None` for
    /// streams made since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unindexed_through: Option<i64>,
}

/// The streams of one subscription, as readers see them.
pub(crate) type TenantStreams = RwLock<HashMap<u64, Arc<StreamInfo>>>;

/// The stream index: per subscription, so that a query of one tenant never
/// walks (or waits for) another tenant's streams.
#[derive(Default)]
pub(crate) struct StreamIndex {
    tenants: RwLock<HashMap<String, Arc<TenantStreams>>>,
}

impl StreamIndex {
    fn tenant(&self, subscription: &str) -> Option<Arc<TenantStreams>> {
        self.tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(subscription)
            .cloned()
    }

    fn tenant_or_insert(&self, subscription: &str) -> Arc<TenantStreams> {
        if let Some(t) = self.tenant(subscription) {
            return t;
        }
        self.tenants
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(subscription.to_string())
            .or_default()
            .clone()
    }

    /// Publishes (or replaces) `info` under its subscription.
    pub(crate) fn insert(&self, info: Arc<StreamInfo>) {
        let t = self.tenant_or_insert(info.subscription());
        // Short critical section; never held across a blocking call.
        t.write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(info.id, info);
    }

    /// The stream `id` of `subscription`.
    pub(crate) fn get(&self, subscription: &str, id: u64) -> Option<Arc<StreamInfo>> {
        self.tenant(subscription)?
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    pub(crate) fn remove(&self, subscription: &str, id: u64) {
        if let Some(t) = self.tenant(subscription) {
            t.write().unwrap_or_else(|p| p.into_inner()).remove(&id);
        }
    }

    pub(crate) fn remove_tenant(&self, subscription: &str) {
        self.tenants
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(subscription);
    }

    /// The streams of `subscription`, or of every subscription.
    pub(crate) fn list(&self, subscription: Option<&str>) -> Vec<Arc<StreamInfo>> {
        let tenants: Vec<Arc<TenantStreams>> = match subscription {
            Some(s) => self.tenant(s).into_iter().collect(),
            None => self
                .tenants
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect(),
        };
        let mut out = Vec::new();
        for t in tenants {
            out.extend(
                t.read()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned(),
            );
        }
        out
    }
}

pub(crate) struct Shared {
    pub streams: StreamIndex,
    /// Per stream: [`StreamMeta::unindexed_through`] (fixed after open).
    pub unindexed: HashMap<u64, i64>,
    /// The skip and volume indexes are written (`StoreConfig::skip_index`).
    pub indexed: bool,
    /// Queries use them (a switch for comparisons: off, every query scans).
    pub skip_reads: AtomicBool,
    pub sources: RwLock<BTreeMap<(String, String), SourceMeta>>,
    pub metrics: Metrics,
    pub observers: Vec<Arc<dyn IngestObserver>>,
    /// The last commit whose state (streams, sources) is published to
    /// readers; the feed is read up to it only: a commit written but not
    /// yet published can name a stream made in it that readers do not know
    /// yet, and its records would be reported missing and skipped.
    pub published_commit: AtomicU64,
}

struct Inner {
    path: PathBuf,
    db: Arc<DB>,
    tx: Mutex<Option<mpsc::Sender<writer::Op>>>,
    shared: Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    events: Mutex<Option<std::thread::JoinHandle<()>>>,
    reclaim: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The last inline feed commit decoded (`feed.rs`): read in chunks,
    /// a large commit is decoded once, not once per chunk.
    feed_cache: feed::InlineCache,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown_writer();
    }
}

impl Inner {
    fn shutdown_writer(&self) {
        // Dropping the sender lets the writer drain what is queued and stop.
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        // The writer held the only sender of the event channel.
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = events {
            let _ = h.join();
        }
        // So did it of the reclaim channel.
        let reclaim = self
            .reclaim
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = reclaim {
            let _ = h.join();
        }
    }
}

/// Handle to the open store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn open_db(path: &Path, config: &StoreConfig) -> Result<DB, StoreError> {
    let cache = Cache::new_lru_cache(config.block_cache_bytes);

    let mut entries_table = BlockBasedOptions::default();
    entries_table.set_block_cache(&cache);
    entries_table.set_block_size(32 << 10);
    let mut entries = Options::default();
    entries.set_block_based_table_factory(&entries_table);
    entries.set_compression_type(DBCompressionType::Lz4);
    entries.set_bottommost_compression_type(DBCompressionType::Zstd);
    entries.set_write_buffer_size(config.write_buffer_bytes);
    entries.set_max_write_buffer_number(3);
    entries.set_target_file_size_base(64 << 20);

    let mut seqs_table = BlockBasedOptions::default();
    seqs_table.set_block_cache(&cache);
    seqs_table.set_bloom_filter(10.0, false);
    let mut seqs = Options::default();
    seqs.set_block_based_table_factory(&seqs_table);
    seqs.set_compression_type(DBCompressionType::Lz4);
    seqs.set_write_buffer_size(config.write_buffer_bytes / 2);

    let mut small_table = BlockBasedOptions::default();
    small_table.set_block_cache(&cache);
    let mut small = Options::default();
    small.set_block_based_table_factory(&small_table);
    small.set_compression_type(DBCompressionType::Lz4);
    small.set_write_buffer_size(2 << 20);

    // The feed is written with every commit and trimmed soon after: most
    // of it should die in the memtable.
    let mut feed = small.clone();
    feed.set_write_buffer_size(16 << 20);

    // Index units: values of a few KiB read whole by queries; merged (OR
    // of bloom bits, sums) by RocksDB, see `skip.rs`.
    let mut skip_table = BlockBasedOptions::default();
    skip_table.set_block_cache(&cache);
    skip_table.set_block_size(64 << 10);
    let mut skip_opts = Options::default();
    skip_opts.set_block_based_table_factory(&skip_table);
    skip_opts.set_compression_type(DBCompressionType::Lz4);
    skip_opts.set_bottommost_compression_type(DBCompressionType::Zstd);
    skip_opts.set_write_buffer_size(config.write_buffer_bytes / 2);
    skip_opts.set_merge_operator("sesam-skip-v1", skip::merge_units, skip::merge_units);
    let mut volume_opts = small.clone();
    volume_opts.set_write_buffer_size(8 << 20);
    volume_opts.set_bottommost_compression_type(DBCompressionType::Zstd);
    volume_opts.set_merge_operator("sesam-volume-v1", skip::merge_volume, skip::merge_volume);

    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    db_opts.set_max_background_jobs(2);
    db_opts.set_max_total_wal_size(256 << 20);
    db_opts.set_keep_log_file_num(3);
    db_opts.set_max_log_file_size(8 << 20);
    db_opts.set_bytes_per_sync(1 << 20);

    let cfs = vec![
        ColumnFamilyDescriptor::new(CF_ENTRIES, entries),
        ColumnFamilyDescriptor::new(CF_STREAMS, small.clone()),
        ColumnFamilyDescriptor::new(CF_SEQS, seqs),
        ColumnFamilyDescriptor::new(CF_SOURCES, small.clone()),
        ColumnFamilyDescriptor::new(CF_META, small.clone()),
        ColumnFamilyDescriptor::new(feed::CF_FEED, feed),
        ColumnFamilyDescriptor::new(skip::CF_SKIP, skip_opts),
        ColumnFamilyDescriptor::new(skip::CF_VOLUME, volume_opts),
        // The notifier's state (rules, alerts, queue): small, kept here so
        // that checkpoints carry it.
        ColumnFamilyDescriptor::new(notifier::COLUMN_FAMILY, small),
    ];
    DB::open_cf_descriptors(&db_opts, path, cfs).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("LOCK") || msg.contains("lock") {
            StoreError::Locked {
                path: path.to_path_buf(),
            }
        } else {
            StoreError::Open {
                path: path.to_path_buf(),
                reason: msg,
            }
        }
    })
}

fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, StoreError> {
    db.cf_handle(name)
        .ok_or_else(|| StoreError::storage("find column family", name))
}

/// Refuses directories that hold something other than a collector store.
fn check_directory(path: &Path) -> Result<(), StoreError> {
    let open_err = |reason: String| StoreError::Open {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => Err(open_err("not a directory".into())),
        Ok(_) => {
            // Killed while creating the database the first time: start over.
            sesam_common::files::clear_interrupted_rocksdb_creation(path)
                .map_err(|e| open_err(format!("clear an interrupted creation: {e}")))?;
            let mut entries =
                std::fs::read_dir(path).map_err(|e| open_err(format!("read directory: {e}")))?;
            let empty = entries.next().is_none();
            if !empty && !path.join("CURRENT").exists() {
                return Err(open_err(
                    "directory is not empty and holds no RocksDB database".into(),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            sesam_common::files::private_dir(path)
                .map_err(|e| open_err(format!("create directory: {e}")))
        }
        Err(e) => Err(open_err(e.to_string())),
    }?;
    sesam_common::files::tighten_or_warn(path);
    Ok(())
}

impl Store {
    /// Opens (or creates) the store in `path`.
    pub fn open(
        path: impl AsRef<Path>,
        config: StoreConfig,
        metrics: Metrics,
        observers: Vec<Arc<dyn IngestObserver>>,
    ) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        check_directory(&path)?;
        let db = Arc::new(open_db(&path, &config)?);

        let meta = cf(&db, CF_META)?;
        let format = db
            .get_cf(meta, META_FORMAT)
            .map_err(|e| StoreError::storage("read format", e))?;
        match format.as_deref() {
            Some(FORMAT) | Some(FORMAT_V2) | None => {}
            Some(FORMAT_V1) => {
                tracing::info!(path = %path.display(), "log store format v1 read as v2 (outbox epochs); older collectors can no longer open it");
            }
            Some(f) => {
                return Err(StoreError::Open {
                    path,
                    reason: format!(
                        "unknown store format {:?}",
                        String::from_utf8_lossy(f).into_owned()
                    ),
                })
            }
        }
        let next_stream = match db
            .get_cf(meta, META_NEXT_STREAM)
            .map_err(|e| StoreError::storage("read next stream id", e))?
        {
            Some(v) => {
                u64::from_be_bytes(v.as_slice().try_into().map_err(|_| StoreError::Open {
                    path: path.clone(),
                    reason: "malformed next_stream".into(),
                })?)
            }
            None => 1,
        };

        let next_commit = match db
            .get_cf(meta, feed::META_NEXT_COMMIT)
            .map_err(|e| StoreError::storage("read next commit", e))?
        {
            Some(v) => {
                u64::from_be_bytes(v.as_slice().try_into().map_err(|_| StoreError::Open {
                    path: path.clone(),
                    reason: "malformed next_commit".into(),
                })?)
            }
            None => 1,
        };
        if !config.feed {
            // Nobody consumes a feed left by a run with the notifier on
            // (records stored meanwhile are not evaluated either): drop it
            // rather than keep it forever. Keys start with a subscription
            // (UTF-8, never a 0xFF byte).
            db.delete_range_cf(cf(&db, feed::CF_FEED)?, b"".as_slice(), [0xFFu8].as_slice())
                .map_err(|e| StoreError::storage("drop the commit feed", e))?;
        }

        let mut streams = HashMap::new();
        let mut it = db.raw_iterator_cf(cf(&db, CF_STREAMS)?);
        it.seek_to_first();
        while it.valid() {
            if let (Some(k), Some(v)) = (it.key(), it.value()) {
                let id = k
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Open {
                        path: path.clone(),
                        reason: "malformed stream key".into(),
                    })?;
                let m: StreamMeta = rmp_serde::from_slice(v).map_err(|e| StoreError::Open {
                    path: path.clone(),
                    reason: format!("stream {id}: {e}"),
                })?;
                streams.insert(id, m);
            }
            it.next();
        }
        it.status()
            .map_err(|e| StoreError::storage("load streams", e))?;
        drop(it);
        migrate_index(
            &db,
            &path,
            format.as_deref(),
            config.skip_index,
            &mut streams,
        )?;
        let unindexed: HashMap<u64, i64> = streams
            .iter()
            .filter_map(|(id, m)| Some((*id, m.unindexed_through?)))
            .collect();

        let mut sources = BTreeMap::new();
        let mut it = db.raw_iterator_cf(cf(&db, CF_SOURCES)?);
        it.seek_to_first();
        while it.valid() {
            if let (Some(k), Some(v)) = (it.key(), it.value()) {
                let mut parts = k.splitn(2, |b| *b == 0);
                let sub = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                let src = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                let m: SourceMeta = rmp_serde::from_slice(v).map_err(|e| StoreError::Open {
                    path: path.clone(),
                    reason: format!("source {sub}/{src}: {e}"),
                })?;
                sources.insert((sub, src), m);
            }
            it.next();
        }
        it.status()
            .map_err(|e| StoreError::storage("load sources", e))?;
        drop(it);

        let index = StreamIndex::default();
        for (id, m) in &streams {
            index.insert(Arc::new(stream_info(*id, m)));
        }
        let shared = Arc::new(Shared {
            streams: index,
            unindexed,
            indexed: config.skip_index,
            skip_reads: AtomicBool::new(true),
            sources: RwLock::new(sources.clone()),
            metrics,
            observers,
            published_commit: AtomicU64::new(next_commit - 1),
        });
        let records: u64 = streams.values().map(|s| s.records).sum();
        shared.metrics.store_records.set(records as i64);
        shared.metrics.store_streams.set(streams.len() as i64);

        // Conflict events go to the observers on their own thread, so a slow
        // observer never holds the writer (or an ingest answer).
        let (events_tx, events_rx) = std::sync::mpsc::sync_channel::<writer::Event>(256);
        let event_shared = shared.clone();
        let events = std::thread::Builder::new()
            .name("store-events".into())
            .spawn(move || {
                while let Ok(e) = events_rx.recv() {
                    for o in &event_shared.observers {
                        o.source_conflict(&e.subscription, &e.source, &e.detail);
                    }
                }
            })
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                reason: format!("start event thread: {e}"),
            })?;
        // What the writer is done with (decoded batches, the records the
        // observers saw) is freed on a thread of its own: freeing a large
        // batch's many small allocations took about half of the writer's
        // time under a flood of one tenant, time every other tenant's commit
        // waited for. The channel is short, so memory waiting to be freed
        // stays bounded (when it is full the writer frees inline).
        let (reclaim_tx, reclaim_rx) =
            std::sync::mpsc::sync_channel::<writer::Garbage>(writer::RECLAIM_QUEUE);
        let reclaim = std::thread::Builder::new()
            .name("store-reclaim".into())
            .spawn(move || while reclaim_rx.recv().is_ok() {})
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                reason: format!("start reclaim thread: {e}"),
            })?;
        let (tx, rx) = mpsc::channel(config.queue_batches.max(1));
        let w = writer::Writer::new(
            db.clone(),
            rx,
            shared.clone(),
            streams,
            sources,
            next_stream,
            next_commit,
            &config,
            events_tx,
            reclaim_tx,
        )?;
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || w.run())
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                reason: format!("start writer thread: {e}"),
            })?;
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                db,
                tx: Mutex::new(Some(tx)),
                shared,
                writer: Mutex::new(Some(handle)),
                events: Mutex::new(Some(events)),
                reclaim: Mutex::new(Some(reclaim)),
                feed_cache: feed::InlineCache::default(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The database, for components that keep their state in their own
    /// column family (the notifier).
    pub fn db(&self) -> Arc<DB> {
        self.inner.db.clone()
    }

    pub fn has_observers(&self) -> bool {
        !self.inner.shared.observers.is_empty()
    }

    fn sender(&self) -> Result<mpsc::Sender<writer::Op>, StoreError> {
        self.inner
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StoreError::Closed)
    }

    /// The skip index's token hashes of `batch`, worked out on the
    /// caller's thread so that the single writer thread only sets bits
    /// (none when the store keeps no index).
    pub fn stage(&self, batch: &mut PreparedBatch) {
        if self.inner.shared.indexed && batch.staged.is_none() {
            batch.staged = Some(Arc::new(skip::BatchTokens::of(batch)));
        }
    }

    fn ingest_op(
        &self,
        mut batch: PreparedBatch,
        reply: writer::Reply<IngestOutcome>,
    ) -> writer::Op {
        self.stage(&mut batch);
        let tokens = batch
            .staged
            .take()
            .and_then(|s| s.downcast::<skip::BatchTokens>().ok());
        writer::Op::Ingest(writer::IngestOp {
            batch,
            tokens,
            reply,
            started: Instant::now(),
            progress: None,
        })
    }

    /// Queues `batch` for the writer without waiting for room: `Busy` when
    /// the queue is full. The returned future resolves once the batch is
    /// durable (or failed).
    pub fn try_ingest(&self, batch: PreparedBatch) -> Result<IngestReceipt, StoreError> {
        let (reply, rx) = oneshot::channel();
        let op = self.ingest_op(batch, reply);
        match self.sender()?.try_send(op) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => Err(StoreError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(StoreError::Closed),
        }
    }

    /// Stores `batch`, waiting for room in the queue.
    pub async fn ingest(&self, batch: PreparedBatch) -> Result<IngestOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        let op = self.ingest_op(batch, reply);
        self.sender()?
            .send(op)
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Deletes up to `max` entries of `stream` older than `cutoff` (Unix ns);
    /// returns how many it deleted.
    pub async fn expire(&self, stream: u64, cutoff: i64, max: usize) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(writer::Op::Expire {
                stream,
                cutoff,
                max,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Deletes every record, stream, seq and source of `subscription`.
    pub async fn purge(&self, subscription: &str) -> Result<PurgeReport, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(writer::Op::Purge {
                subscription: subscription.to_string(),
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Stops the writer after it committed everything queued. Further writes
    /// fail with `Closed`; reads keep working.
    pub fn close(&self) {
        self.inner.shutdown_writer();
    }

    /// Every stream, unordered.
    pub fn streams(&self) -> Vec<Arc<StreamInfo>> {
        self.inner.shared.streams.list(None)
    }

    /// The streams of `subscription` (every stream when `None`), unordered;
    /// reads only that subscription's part of the index.
    pub fn streams_of(&self, subscription: Option<&str>) -> Vec<Arc<StreamInfo>> {
        self.inner.shared.streams.list(subscription)
    }

    /// Every source, ordered by (subscription, source).
    pub fn sources(&self) -> Vec<SourceInfo> {
        self.inner
            .shared
            .sources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((sub, src), m)| SourceInfo {
                subscription: sub.clone(),
                source: src.clone(),
                meta: m.clone(),
            })
            .collect()
    }

    /// Subscriptions that have at least one source.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut subs: Vec<String> = self
            .inner
            .shared
            .sources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .map(|(s, _)| s.clone())
            .collect();
        subs.dedup();
        subs
    }

    /// Entries of `stream` with `start <= ts < end`, oldest first or (when
    /// `backward`) newest first.
    pub fn scan(
        &self,
        stream: u64,
        start: i64,
        end: i64,
        backward: bool,
    ) -> Result<EntryIter<'_>, StoreError> {
        self.scan_at(stream, start, end, backward, None)
    }

    /// [`Store::scan`] positioned at `at` (a key of the range, or where
    /// it was: the first entry after it, or before it when `backward`).
    fn scan_at(
        &self,
        stream: u64,
        start: i64,
        end: i64,
        backward: bool,
        at: Option<&[u8]>,
    ) -> Result<EntryIter<'_>, StoreError> {
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(keys::entry_bound(stream, start).to_vec());
        // Both key generations of `end` sort at or after this 16-byte prefix.
        opts.set_iterate_upper_bound(keys::entry_bound(stream, end).to_vec());
        opts.fill_cache(false);
        let mut it = self
            .inner
            .db
            .raw_iterator_cf_opt(cf(&self.inner.db, CF_ENTRIES)?, opts);
        match (at, backward) {
            (Some(k), true) => it.seek_for_prev(k),
            (Some(k), false) => it.seek(k),
            (None, true) => it.seek_to_last(),
            (None, false) => it.seek_to_first(),
        }
        Ok(EntryIter { it, backward })
    }

    /// Whether queries use the skip and volume indexes (on by default, when
    /// the store writes them). Off, every query scans: for comparisons.
    pub fn set_skip_index_reads(&self, on: bool) {
        self.inner.shared.skip_reads.store(on, Ordering::Relaxed);
    }

    fn index_usable(&self) -> bool {
        self.inner.shared.indexed && self.inner.shared.skip_reads.load(Ordering::Relaxed)
    }

    /// A cursor over the entries of `stream` in `[start, end)` that may
    /// pass a query with `plan`: the skip index rules the rest out (see
    /// `skip.rs`). Yields what [`Store::scan`] would, minus entries that
    /// cannot match.
    pub fn cursor(
        &self,
        plan: &SkipPlan,
        stream: &StreamInfo,
        start: i64,
        end: i64,
        backward: bool,
    ) -> Result<RangeCursor<'_>, StoreError> {
        let ranges = if start >= end {
            Vec::new()
        } else if plan.is_empty() || !self.index_usable() {
            vec![(start, end)]
        } else {
            let tokens = plan.tokens_for(stream);
            let through = self.inner.shared.unindexed.get(&stream.id).copied();
            skip::candidate_ranges(&self.inner.db, stream.id, through, &tokens, start, end)?
        };
        RangeCursor::open(self, stream.id, ranges, backward)
    }

    /// See [`LogStore::volume`]: `None` when the index is off or does not
    /// cover the range (entries from before it), or a unit is malformed.
    pub fn volume(
        &self,
        stream: &StreamInfo,
        start: i64,
        end: i64,
    ) -> Option<Result<Vec<VolumeBucket>, StoreError>> {
        if !self.index_usable() {
            return None;
        }
        if let Some(through) = self.inner.shared.unindexed.get(&stream.id) {
            // Bucket ends in (start, end] count records after start - 10 s.
            if *through > start.saturating_sub(VOLUME_BUCKET_NS) {
                return None;
            }
        }
        match skip::read_volume(&self.inner.db, stream.id, start, end) {
            Ok(Some(v)) => Some(Ok(v)),
            Ok(None) => {
                tracing::warn!(
                    stream = stream.id,
                    "malformed volume index unit; scanning instead"
                );
                None
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// Per column family: bytes of its SST files (what compaction left);
    /// for measurements of the indexes' share.
    pub fn column_family_bytes(&self) -> Vec<(&'static str, u64)> {
        let db = &self.inner.db;
        [
            CF_ENTRIES,
            CF_STREAMS,
            CF_SEQS,
            CF_SOURCES,
            CF_META,
            feed::CF_FEED,
            skip::CF_SKIP,
            skip::CF_VOLUME,
        ]
        .into_iter()
        .filter_map(|name| {
            let c = db.cf_handle(name)?;
            let v = db
                .property_int_value_cf(c, "rocksdb.total-sst-files-size")
                .ok()
                .flatten()?;
            Some((name, v))
        })
        .collect()
    }

    /// Flushes and fully compacts the log families (blocking; for
    /// measurements and tests).
    pub fn compact(&self) -> Result<(), StoreError> {
        let db = &self.inner.db;
        for name in [CF_ENTRIES, CF_SEQS, skip::CF_SKIP, skip::CF_VOLUME] {
            let c = cf(db, name)?;
            db.flush_cf(c)
                .map_err(|e| StoreError::storage("flush before compaction", e))?;
            db.compact_range_cf(c, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// Bytes the store occupies on disk (SST files, WAL, metadata).
    pub fn disk_bytes(&self) -> u64 {
        dir_size(&self.inner.path)
    }

    /// Takes a RocksDB checkpoint of the store into `dir` (which must not
    /// exist yet).
    pub fn checkpoint(&self, dir: &Path) -> Result<(), StoreError> {
        let cp = rocksdb::checkpoint::Checkpoint::new(self.inner.db.as_ref())
            .map_err(|e| StoreError::storage("prepare checkpoint", e))?;
        cp.create_checkpoint(dir)
            .map_err(|e| StoreError::storage("create checkpoint", e))
    }
}

impl Store {
    /// The streams `query`'s selector picks of `subscription` in
    /// `[start, end)`, walking only that subscription's part of the index.
    pub fn select_streams(
        &self,
        query: &Query,
        subscription: Option<&str>,
        start: i64,
        end: i64,
    ) -> Vec<Arc<StreamInfo>> {
        crate::logs::query::filter_streams(self.streams_of(subscription), query, start, end)
    }

    /// One retention pass at `now` (Unix ns): for each stream whose oldest
    /// entry is older than its subscription's cutoff, the writer deletes
    /// the expired prefix in slices of [`RETENTION_SLICE`] entries, so a
    /// large backlog never holds the writer (and ingest) for long.
    pub async fn retention_pass(
        &self,
        policy: &RetentionPolicy,
        now: i64,
    ) -> Result<u64, StoreError> {
        let mut deleted = 0;
        for s in self.streams() {
            let keep = policy.for_subscription(s.subscription());
            let cutoff = now.saturating_sub(i64::try_from(keep.as_nanos()).unwrap_or(i64::MAX));
            if s.min_ts >= cutoff {
                continue;
            }
            loop {
                let n = self.expire(s.id, cutoff, RETENTION_SLICE).await?;
                deleted += n;
                if (n as usize) < RETENTION_SLICE {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        Ok(deleted)
    }
}

/// Entries deleted per writer operation of a retention pass.
pub const RETENTION_SLICE: usize = 10_000;

impl LogStore for Store {
    fn try_ingest(&self, batch: PreparedBatch) -> Result<IngestReceipt, StoreError> {
        Store::try_ingest(self, batch)
    }

    fn stage(&self, batch: &mut PreparedBatch) {
        Store::stage(self, batch)
    }

    fn wants_records(&self) -> bool {
        self.has_observers()
    }

    fn search(&self, query: &Query, params: &SearchParams) -> Result<SearchResult, SearchError> {
        search::search(self, query, params)
    }

    fn volume(
        &self,
        stream: &StreamInfo,
        start: i64,
        end: i64,
    ) -> Option<Result<Vec<VolumeBucket>, StoreError>> {
        Store::volume(self, stream, start, end)
    }

    fn scan_matches(
        &self,
        query: &Query,
        streams: &[Arc<StreamInfo>],
        p: &ScanParams,
        f: &mut dyn FnMut(MatchedRecord<'_>) -> bool,
    ) -> Result<ScanStats, SearchError> {
        scan::scan_matches(self, query, streams, p, f)
    }

    fn select_streams(
        &self,
        query: &Query,
        subscription: Option<&str>,
        start: i64,
        end: i64,
    ) -> Vec<Arc<StreamInfo>> {
        Store::select_streams(self, query, subscription, start, end)
    }

    fn sources(&self) -> Vec<SourceInfo> {
        Store::sources(self)
    }

    fn apply_retention<'a>(
        &'a self,
        policy: &'a RetentionPolicy,
        now: i64,
    ) -> StoreFuture<'a, u64> {
        Box::pin(self.retention_pass(policy, now))
    }

    fn purge<'a>(&'a self, subscription: &'a str) -> StoreFuture<'a, PurgeReport> {
        Box::pin(Store::purge(self, subscription))
    }

    fn disk_bytes(&self) -> u64 {
        Store::disk_bytes(self)
    }

    fn checkpoint(&self, dir: &Path) -> Result<(), StoreError> {
        Store::checkpoint(self, dir)
    }

    fn close(&self) {
        Store::close(self)
    }
}

fn dir_size(path: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(path) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

pub(crate) fn stream_info(id: u64, m: &StreamMeta) -> StreamInfo {
    StreamInfo {
        id,
        labels: m.labels.clone(),
        min_ts: m.min_ts,
        max_ts: m.max_ts,
        records: m.records,
    }
}

/// A cursor over the entries of one stream in a time range.
pub struct EntryIter<'a> {
    it: DBRawIterator<'a>,
    backward: bool,
}

impl std::fmt::Debug for EntryIter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryIter")
            .field("backward", &self.backward)
            .finish()
    }
}

impl EntryIter<'_> {
    /// The entry under the cursor: (ts, seq, line). Entries whose key or
    /// version byte is malformed are skipped by [`EntryIter::advance`].
    pub fn current(&self) -> Option<(i64, u64, &[u8])> {
        self.entry().map(|(k, line)| (k.ts, k.seq, line))
    }

    /// The entry under the cursor with its full key (epoch id included).
    pub fn entry(&self) -> Option<(keys::EntryKeyParts, &[u8])> {
        if !self.it.valid() {
            return None;
        }
        let k = keys::parse_entry_key(self.it.key()?)?;
        let v = self.it.value()?;
        match v.split_first() {
            Some((&ENTRY_V1, line)) => Some((k, line)),
            _ => None,
        }
    }

    /// Whether the cursor is on an entry (well-formed or not).
    pub fn valid(&self) -> bool {
        self.it.valid()
    }

    /// The key under the cursor.
    fn key(&self) -> Option<&[u8]> {
        if self.it.valid() {
            self.it.key()
        } else {
            None
        }
    }

    pub fn advance(&mut self) {
        if self.backward {
            self.it.prev();
        } else {
            self.it.next();
        }
    }

    /// The storage error that ended the iteration, if any.
    pub fn status(&self) -> Result<(), StoreError> {
        self.it
            .status()
            .map_err(|e| StoreError::storage("read entries", e))
    }
}

/// Entries of one stream in a list of time ranges (see [`Store::cursor`]),
/// in time order (newest first when backward).
pub struct RangeCursor<'a> {
    store: &'a Store,
    stream: u64,
    /// In visiting order.
    ranges: Vec<(i64, i64)>,
    next: usize,
    it: Option<EntryIter<'a>>,
    backward: bool,
    error: Option<StoreError>,
    /// Parked on this key (see [`RangeCursor::park`]).
    parked: Option<Vec<u8>>,
}

impl std::fmt::Debug for RangeCursor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeCursor")
            .field("stream", &self.stream)
            .field("ranges", &self.ranges.len())
            .field("next", &self.next)
            .finish()
    }
}

impl<'a> RangeCursor<'a> {
    fn open(
        store: &'a Store,
        stream: u64,
        mut ranges: Vec<(i64, i64)>,
        backward: bool,
    ) -> Result<RangeCursor<'a>, StoreError> {
        if backward {
            ranges.reverse();
        }
        let mut c = RangeCursor {
            store,
            stream,
            ranges,
            next: 0,
            it: None,
            backward,
            error: None,
            parked: None,
        };
        c.settle();
        match c.error.take() {
            Some(e) => Err(e),
            None => Ok(c),
        }
    }

    /// Moves to the next range while the current one is exhausted.
    fn settle(&mut self) {
        loop {
            if let Some(it) = &self.it {
                if it.valid() {
                    return;
                }
                if let Err(e) = it.status() {
                    self.error = Some(e);
                    self.it = None;
                    self.next = self.ranges.len();
                    return;
                }
            }
            let Some(&(a, b)) = self.ranges.get(self.next) else {
                self.it = None;
                return;
            };
            self.next += 1;
            match self.store.scan(self.stream, a, b, self.backward) {
                Ok(it) => self.it = Some(it),
                Err(e) => {
                    self.error = Some(e);
                    self.it = None;
                    self.next = self.ranges.len();
                    return;
                }
            }
        }
    }

    /// See [`EntryIter::current`]; `None` while parked.
    pub fn current(&self) -> Option<(i64, u64, &[u8])> {
        self.it.as_ref()?.current()
    }

    /// Whether the cursor is on an entry (well-formed or not; parked on
    /// one counts).
    pub fn valid(&self) -> bool {
        self.parked.is_some() || self.it.as_ref().is_some_and(EntryIter::valid)
    }

    pub fn advance(&mut self) {
        self.unpark();
        if let Some(it) = &mut self.it {
            it.advance();
        }
        self.settle();
    }

    /// Lets go of the RocksDB iterator, and with it the block it holds
    /// (a data block of the stream's lines, not cached: scans do not fill
    /// the block cache), keeping the position: a search over thousands
    /// of streams keeps only some of them open at once. Nothing to do
    /// when the cursor is not on an entry.
    pub fn park(&mut self) {
        if self.parked.is_some() {
            return;
        }
        if let Some(key) = self.it.as_ref().and_then(EntryIter::key) {
            self.parked = Some(key.to_vec());
            self.it = None;
        }
    }

    pub fn is_parked(&self) -> bool {
        self.parked.is_some()
    }

    /// Opens the iterator again on the key it was parked on (or, if that
    /// entry went meanwhile, the next one in the cursor's direction).
    pub fn unpark(&mut self) {
        let Some(key) = self.parked.take() else {
            return;
        };
        let range = self
            .next
            .checked_sub(1)
            .and_then(|i| self.ranges.get(i))
            .copied();
        let Some((a, b)) = range else {
            return;
        };
        match self
            .store
            .scan_at(self.stream, a, b, self.backward, Some(&key))
        {
            Ok(it) => {
                self.it = Some(it);
                self.settle();
            }
            Err(e) => {
                self.error = Some(e);
                self.it = None;
                self.next = self.ranges.len();
            }
        }
    }

    /// The storage error that ended the iteration, if any.
    pub fn status(&self) -> Result<(), StoreError> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => self.it.as_ref().map_or(Ok(()), EntryIter::status),
        }
    }
}

/// Brings the store's format in line with `index` (see `skip.rs`,
/// "Coverage"): a store not written with the index gets, per stream, the
/// newest time it holds as `unindexed_through`, loses any index units an
/// earlier run left (they may miss deletions made without the index), and
/// is marked [`FORMAT`]; with the index off the units are dropped and the
/// store is marked [`FORMAT_V2`]. One synced batch: a crash leaves the
/// store as it was.
fn migrate_index(
    db: &DB,
    path: &Path,
    format: Option<&[u8]>,
    index: bool,
    streams: &mut HashMap<u64, StreamMeta>,
) -> Result<(), StoreError> {
    let target = if index { FORMAT } else { FORMAT_V2 };
    if format == Some(target) {
        return Ok(());
    }
    let mut batch = rocksdb::WriteBatch::default();
    let all_end = [0xFFu8; 24];
    batch.delete_range_cf(cf(db, skip::CF_SKIP)?, b"".as_slice(), all_end.as_slice());
    batch.delete_range_cf(cf(db, skip::CF_VOLUME)?, b"".as_slice(), all_end.as_slice());
    if index {
        let streams_cf = cf(db, CF_STREAMS)?;
        for (id, m) in streams.iter_mut() {
            m.unindexed_through = Some(m.max_ts.max(m.unindexed_through.unwrap_or(i64::MIN)));
            let v =
                rmp_serde::to_vec_named(m).map_err(|e| StoreError::storage("encode stream", e))?;
            batch.put_cf(streams_cf, keys::stream_key(*id), v);
        }
        if !streams.is_empty() {
            tracing::info!(path = %path.display(), streams = streams.len(), "log store migrated to the skip index: records stored so far are scanned by queries, later ones indexed; older collectors can no longer open it");
        }
    }
    batch.put_cf(cf(db, CF_META)?, META_FORMAT, target);
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(batch, &wo)
        .map_err(|e| StoreError::storage("migrate the skip index", e))
}

#[cfg(test)]
mod skip_tests;
#[cfg(test)]
mod tests;

//! A durable, bounded, multi-sink queue of [`Record`]s in RocksDB.
//!
//! The node (and `sesam-shipper` for host logs) appends records; each sink
//! (the collector, an OTLP endpoint) reads after its cursor and acknowledges
//! what was delivered. A record is deleted once every registered sink has
//! acknowledged it.
//!
//! # Guarantees
//! - [`Outbox::append`] assigns strictly increasing seqs and returns once the
//!   records are durable: in [`SyncMode::Always`] (the default) the write batch
//!   holding them was synced to disk. Concurrent appends share one batch and
//!   one fsync (group commit, see `writer.rs`).
//! - A reader never sees seq `n + 1` before seq `n` is readable.
//! - An acknowledgement, the deletion of the acknowledged prefix and the
//!   counters describing it are one atomic, synced write batch: after
//!   `kill -9` at any instant the outbox reopens exactly at the acknowledged
//!   cursors with nothing lost and nothing acknowledged coming back.
//! - Limits by records and bytes with a [`WhenFull`] policy; every dropped
//!   record is counted in persisted counters that sinks report downstream.
//! - A stored value that fails its checksum or cannot be decoded is moved to
//!   the `quarantine` family, counted, and skipped; the rest keeps flowing.
//!
//! # On-disk layout
//! One RocksDB database (the outbox directory) with three column families:
//!
//! | family | key | value |
//! |---|---|---|
//! | `records` | seq, u64 big-endian (byte order = numeric order) | `[1u8 version][crc32 u32 LE of payload][payload]`, payload = the record as named-field MessagePack (its `seq` field is 0; the key is authoritative) |
//! | `meta` | see below | see below |
//! | `quarantine` | seq, u64 big-endian | `[reason len u16 BE][reason utf-8][original stored value]` |
//!
//! `meta` keys (values big-endian): `format` = `sesam-outbox-v1`;
//! `epoch` (32 lowercase hex characters, random, made once with the outbox:
//! seqs are unique within an epoch, see [`Outbox::epoch`]);
//! `next_seq` (u64, next seq to assign); `head` (u64, every record below it
//! is deleted); `stats` (records u64, bytes u64 of stored values);
//! `counters` (dropped_newest, dropped_oldest, quarantined, u64 each);
//! `sink/<name>` (acked seq u64, dropped count already reported u64);
//! `user/<key>` (opaque bytes for callers, e.g. file-tail offsets).
//!
//! The acknowledged prefix is removed with one `DeleteRange` per ack rather
//! than a point tombstone per record: readers seek straight to their cursor,
//! so they never walk over the deleted prefix, and compaction drops the
//! covered data wholesale (the queue-in-an-LSM pattern).
//!
//! # RocksDB options and why
//! - WAL on, writes synced per group commit (`SyncMode::Always`) or the WAL
//!   synced on a timer (`SyncMode::Interval`), nothing else is needed for
//!   durability; recovery mode is RocksDB's default point-in-time recovery.
//! - LZ4 compression: records are read back soon and usually once, so a
//!   cheap codec that still shrinks JSON-ish log lines 3-5x beats zstd here.
//! - Small memtables (16 MiB default, at most `max_write_buffers` of them)
//!   and an 8 MiB shared block cache that also holds the index blocks keep
//!   memory bounded whatever the backlog; [`OutboxConfig::forwarder`]
//!   (`sesam-shipper`) shrinks them further (512 KiB memtables, at most 2;
//!   256 KiB cache; 64 KiB I/O buffers; 64 open table files). A group
//!   commit takes at most half a memtable (256 KiB to 8 MiB of records).
//! - A group of acknowledgements (and quarantines) alone is written without
//!   a sync: losing it to a machine crash only delivers its records again,
//!   which the receiver's dedupe absorbs, and the next group that stores
//!   records syncs it too (the WAL is one sequence). This takes one fsync
//!   per delivered batch off the writer, which the appends would wait for.
//! - No periodic statistics dumps (a timer thread of their own).
//! - `max_total_wal_size` 64 MiB forces old memtables to flush so WAL files
//!   of deleted records do not pile up.
//! - Keys are appended in increasing order, so flushed files do not overlap
//!   and level compaction mostly moves files without rewriting them.

mod config;
mod format;
mod metrics;
mod writer;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Options, ReadOptions, DB,
};
use schemas::Record;
use tokio::sync::oneshot;

pub use config::{OutboxConfig, SyncMode, WhenFull};
pub use format::ValueFault;
pub use metrics::OutboxMetrics;

use format::{
    decode_record_value, encode_record_value, encode_record_value_with, key_seq, seq_key,
    value_pair, value_u64,
};
use writer::{AppendOp, Op, State, Writer};

const CF_RECORDS: &str = "records";
const CF_META: &str = "meta";
const CF_QUARANTINE: &str = "quarantine";
const FORMAT: &[u8] = b"sesam-outbox-v1";

const META_FORMAT: &[u8] = b"format";
const META_EPOCH: &[u8] = b"epoch";
const META_NEXT_SEQ: &[u8] = b"next_seq";
const META_HEAD: &[u8] = b"head";
const META_STATS: &[u8] = b"stats";
const META_COUNTERS: &[u8] = b"counters";
const META_SINK: &[u8] = b"sink/";
const META_USER: &[u8] = b"user/";

fn meta_key(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + name.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(name);
    k
}

/// Everything that can go wrong with an outbox.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OutboxError {
    #[error("{path} is not an outbox: {reason}")]
    NotAnOutbox { path: PathBuf, reason: String },
    #[error("outbox {path} is locked by another process")]
    Locked { path: PathBuf },
    #[error("open outbox {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error("outbox {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("record {index} of the append is {size} bytes, over the limit of {limit} bytes")]
    RecordTooLarge {
        index: usize,
        size: usize,
        limit: usize,
    },
    #[error("append of {records} records / {bytes} bytes can never fit the outbox limits of {max_records} records / {max_bytes} bytes")]
    AppendTooLarge {
        records: u64,
        bytes: u64,
        max_records: u64,
        max_bytes: u64,
    },
    #[error("outbox full: no room freed within {waited:?}")]
    Full { waited: Duration },
    #[error("encode record {index}: {message}")]
    Encode { index: usize, message: String },
    #[error("unknown sink {0:?}")]
    UnknownSink(String),
    #[error("ack up to seq {upto} but the last appended seq is {last}")]
    AckBeyondEnd { upto: u64, last: u64 },
    #[error("outbox storage failed to {op}: {source}")]
    Storage {
        op: &'static str,
        #[source]
        source: rocksdb::Error,
    },
    #[error("outbox is closed")]
    Closed,
    #[error("metadata {key:?} does not hold what the append expects: an earlier append of the same stream was not stored")]
    MetaConflict { key: String },
}

/// Where the records of one append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// Seq of the first stored record; the stored ones are
    /// `first_seq .. first_seq + count`, in the order given.
    pub first_seq: u64,
    /// Records stored: the first `count` of the append.
    pub count: usize,
    /// Records of the append not stored because of `WhenFull::DropNewest`.
    pub dropped: usize,
}

/// A sink's durable position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkState {
    /// Every record up to and including this seq is acknowledged.
    pub acked: u64,
    /// The value of [`OutboxStats::dropped_total`] this sink last reported.
    pub dropped_reported: u64,
}

/// Counters and sizes, as of the last group commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub next_seq: u64,
    pub head_seq: u64,
    pub records: u64,
    pub bytes: u64,
    pub dropped_newest: u64,
    pub dropped_oldest: u64,
    pub quarantined: u64,
    pub sinks: BTreeMap<String, SinkState>,
}

impl OutboxStats {
    pub fn dropped_total(&self) -> u64 {
        self.dropped_newest + self.dropped_oldest
    }
}

/// Records read from the outbox.
#[derive(Debug, Clone, Default)]
pub struct ReadBatch {
    pub records: Vec<Record>,
    /// Bytes of the stored values read.
    pub bytes: usize,
    /// The highest seq this read covered, including records it quarantined
    /// and, when the read reached the last appended record, seqs that are no
    /// longer stored (quarantined or dropped earlier); acknowledge up to it
    /// once the records are delivered.
    pub last_seq: u64,
    /// Records quarantined by this read.
    pub quarantined: usize,
}

/// What a visitor of [`Outbox::scan`] does with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// Taken: counts toward the limits, and the scan goes on.
    Take,
    /// The scan ends before this record (it is not covered).
    Stop,
}

/// What an [`Outbox::scan`] covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scanned {
    /// Records the visitor took.
    pub taken: usize,
    /// Bytes of the stored values visited.
    pub bytes: usize,
    /// The highest seq covered, with the same meaning as
    /// [`ReadBatch::last_seq`].
    pub last_seq: u64,
    /// Records quarantined by this scan.
    pub quarantined: usize,
}

/// Raw stored payloads (MessagePack) that passed their checksum.
#[derive(Debug, Clone, Default)]
pub struct RawBatch {
    pub entries: Vec<(u64, Vec<u8>)>,
    pub bytes: usize,
    pub last_seq: u64,
    pub quarantined: usize,
}

struct Shared {
    visible_seq: AtomicU64,
    /// The last readable seq, for readers that wait for new records.
    appended: tokio::sync::watch::Sender<u64>,
    snapshot: Mutex<OutboxStats>,
    metrics: OutboxMetrics,
}

struct Inner {
    path: PathBuf,
    epoch: String,
    db: Arc<DB>,
    tx: mpsc::Sender<Op>,
    shared: Arc<Shared>,
    config: OutboxConfig,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.tx.send(Op::Shutdown);
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// Handle to an open outbox; cheap to clone, closed when the last clone drops.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// The answer to a request sent to the writer: `.await` it in async code or
/// call [`Ticket::wait`] from a thread that may block (never from inside an
/// async task).
#[must_use = "the operation is only known durable once the ticket resolves"]
#[derive(Debug)]
pub struct Ticket<T> {
    state: TicketState<T>,
}

#[derive(Debug)]
enum TicketState<T> {
    Failed(Option<OutboxError>),
    Waiting(oneshot::Receiver<Result<T, OutboxError>>),
}

impl<T> Ticket<T> {
    fn failed(e: OutboxError) -> Self {
        Ticket {
            state: TicketState::Failed(Some(e)),
        }
    }

    /// Blocks the current thread until the writer answered.
    pub fn wait(self) -> Result<T, OutboxError> {
        match self.state {
            TicketState::Failed(e) => Err(e.unwrap_or(OutboxError::Closed)),
            TicketState::Waiting(rx) => rx.blocking_recv().unwrap_or(Err(OutboxError::Closed)),
        }
    }
}

impl<T> Future for Ticket<T> {
    type Output = Result<T, OutboxError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            TicketState::Failed(e) => Poll::Ready(Err(e.take().unwrap_or(OutboxError::Closed))),
            TicketState::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(OutboxError::Closed))),
        }
    }
}

impl Outbox {
    /// Opens (or creates) the outbox in directory `path`.
    pub fn open(path: impl AsRef<Path>, config: OutboxConfig) -> Result<Outbox, OutboxError> {
        let path = path.as_ref().to_path_buf();
        let existed = check_directory(&path)?;

        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_block_size(16 << 10);
        // Index blocks in the cache (and the L0 ones pinned there), so the
        // memory of open tables is bounded by the cache, not by the backlog.
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);

        let mut records = Options::default();
        records.set_block_based_table_factory(&table);
        records.set_compression_type(DBCompressionType::Lz4);
        records.set_write_buffer_size(config.write_buffer_bytes);
        records.set_max_write_buffer_number(config.max_write_buffers.max(2));
        let mut small = Options::default();
        small.set_block_based_table_factory(&table);
        small.set_compression_type(DBCompressionType::Lz4);
        // Metadata and quarantine take small writes (cursors, offsets):
        // a quarter of a records memtable, 64 KiB to 1 MiB.
        small.set_write_buffer_size((config.write_buffer_bytes / 4).clamp(64 << 10, 1 << 20));

        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_max_total_wal_size(64 << 20);
        db_opts.set_keep_log_file_num(3);
        db_opts.set_max_log_file_size(4 << 20);
        db_opts.set_bytes_per_sync(1 << 20);
        db_opts.set_compaction_readahead_size(config.io_buffer_bytes);
        db_opts.set_max_open_files(config.max_open_files);
        db_opts.set_writable_file_max_buffer_size(config.io_buffer_bytes as u64);
        // No periodic statistics: their timer is a thread of its own (and
        // an allocator arena), for LOG lines nobody reads.
        db_opts.set_stats_dump_period_sec(0);
        db_opts.set_stats_persist_period_sec(0);

        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_RECORDS, records),
            ColumnFamilyDescriptor::new(CF_META, small.clone()),
            ColumnFamilyDescriptor::new(CF_QUARANTINE, small),
        ];
        let db = DB::open_cf_descriptors(&db_opts, &path, cfs).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("LOCK") || msg.contains("lock") {
                OutboxError::Locked { path: path.clone() }
            } else {
                OutboxError::Open {
                    path: path.clone(),
                    source: e,
                }
            }
        })?;
        let db = Arc::new(db);
        let state = load_state(&db, &path, existed)?;
        let epoch = load_epoch(&db, &path)?;

        let shared = Arc::new(Shared {
            visible_seq: AtomicU64::new(state.next_seq - 1),
            appended: tokio::sync::watch::Sender::new(state.next_seq - 1),
            snapshot: Mutex::new(OutboxStats {
                next_seq: state.next_seq,
                head_seq: state.head_seq,
                records: state.records,
                bytes: state.bytes,
                dropped_newest: state.dropped_newest,
                dropped_oldest: state.dropped_oldest,
                quarantined: state.quarantined,
                sinks: state.sinks.clone(),
            }),
            metrics: OutboxMetrics::default(),
        });
        shared.metrics.stored_records.set(state.records as i64);
        shared.metrics.stored_bytes.set(state.bytes as i64);

        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            db: db.clone(),
            rx,
            state,
            shared: shared.clone(),
            config: config.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| OutboxError::Damaged {
                path: path.clone(),
                reason: format!("cannot start writer thread: {e}"),
            })?;
        Ok(Outbox {
            inner: Arc::new(Inner {
                path,
                epoch,
                db,
                tx,
                shared,
                config,
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The outbox epoch: a random id (32 lowercase hex characters) made
    /// once, when the outbox was created (or, for an outbox created before
    /// epochs existed, at its first open since). Seqs are unique within an
    /// epoch; a wiped and recreated outbox starts a new epoch, so a receiver
    /// keys its dedupe by (subscription, source, epoch, seq). Every batch
    /// this outbox's records travel in carries it.
    pub fn epoch(&self) -> &str {
        &self.inner.epoch
    }

    pub fn config(&self) -> &OutboxConfig {
        &self.inner.config
    }

    pub fn metrics(&self) -> &OutboxMetrics {
        &self.inner.shared.metrics
    }

    fn submit<T>(&self, make: impl FnOnce(writer::Reply<T>) -> Op) -> Ticket<T> {
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(make(tx)).is_err() {
            return Ticket::failed(OutboxError::Closed);
        }
        Ticket {
            state: TicketState::Waiting(rx),
        }
    }

    /// Appends `records` (their `seq` is ignored and assigned here). The
    /// ticket resolves once they are durable, or with the reason they are not.
    pub fn append(&self, records: &[Record]) -> Ticket<Receipt> {
        self.append_with_meta(records, None)
    }

    /// Appends `records` and, in the same atomic write batch, stores the
    /// metadata entry `meta` (key, value) as [`Outbox::put_meta`] would: a
    /// file tailer commits its lines and its new offset together, so a crash
    /// can neither ship a line twice nor skip one.
    pub fn append_with_meta(
        &self,
        records: &[Record],
        meta: Option<(&[u8], Vec<u8>)>,
    ) -> Ticket<Receipt> {
        self.append_checked(records, meta, None)
    }

    /// Like [`Outbox::append_with_meta`] with `key` = `value`, taken only if
    /// `key` holds `expect` (`None`: absent) when the writer comes to it.
    /// A stream of appends that each expect the value the previous one
    /// stores can be submitted without waiting for each to be durable (they
    /// share group commits), and still never leaves a gap: if one is not
    /// stored, every later one fails with [`OutboxError::MetaConflict`].
    pub fn append_after(
        &self,
        records: &[Record],
        key: &[u8],
        expect: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Ticket<Receipt> {
        self.append_checked(records, Some((key, value)), Some(expect))
    }

    fn append_checked(
        &self,
        records: &[Record],
        meta: Option<(&[u8], Vec<u8>)>,
        expect: Option<Option<Vec<u8>>>,
    ) -> Ticket<Receipt> {
        let started = Instant::now();
        let limit = self.inner.config.max_record_bytes.get();
        let mut values = Vec::with_capacity(records.len());
        let mut bytes = 0u64;
        for (index, r) in records.iter().enumerate() {
            let v = match encode_record_value_with(256, |b| schemas::write_msgpack(b, r)) {
                Ok(v) => v,
                Err(e) => {
                    return Ticket::failed(OutboxError::Encode {
                        index,
                        message: e.to_string(),
                    })
                }
            };
            let size = v.len() - format::RECORD_HEADER;
            if size > limit {
                return Ticket::failed(OutboxError::RecordTooLarge { index, size, limit });
            }
            bytes += v.len() as u64;
            values.push(v);
        }
        let meta = meta.map(|(k, v)| (k.to_vec(), v));
        self.append_values(values, bytes, started, meta, expect)
    }

    /// Appends records that are already MessagePack-encoded [`Record`]s.
    pub fn append_encoded(&self, payloads: &[Vec<u8>]) -> Ticket<Receipt> {
        let started = Instant::now();
        let limit = self.inner.config.max_record_bytes.get();
        let mut values = Vec::with_capacity(payloads.len());
        let mut bytes = 0u64;
        for (index, p) in payloads.iter().enumerate() {
            if p.len() > limit {
                return Ticket::failed(OutboxError::RecordTooLarge {
                    index,
                    size: p.len(),
                    limit,
                });
            }
            let v = encode_record_value(p);
            bytes += v.len() as u64;
            values.push(v);
        }
        self.append_values(values, bytes, started, None, None)
    }

    fn append_values(
        &self,
        values: Vec<Vec<u8>>,
        bytes: u64,
        started: Instant,
        meta: Option<(Vec<u8>, Vec<u8>)>,
        expect: Option<Option<Vec<u8>>>,
    ) -> Ticket<Receipt> {
        let c = &self.inner.config;
        // Under drop_newest an oversized append keeps the prefix that fits;
        // under the other policies it could never be stored whole.
        let too_large = values.len() as u64 > c.max_records.get() || bytes > c.max_bytes.get();
        if too_large && c.when_full != WhenFull::DropNewest {
            return Ticket::failed(OutboxError::AppendTooLarge {
                records: values.len() as u64,
                bytes,
                max_records: c.max_records.get(),
                max_bytes: c.max_bytes.get(),
            });
        }
        if values.is_empty() && meta.is_none() {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Ok(Receipt {
                first_seq: self.inner.shared.visible_seq.load(Ordering::Acquire) + 1,
                count: 0,
                dropped: 0,
            }));
            return Ticket {
                state: TicketState::Waiting(rx),
            };
        }
        let deadline = started + c.block_timeout;
        self.submit(|reply| {
            Op::Append(AppendOp {
                values,
                bytes,
                started,
                deadline,
                expect,
                meta,
                reply,
            })
        })
    }

    /// Registers a sink. A new sink starts at the oldest stored record; an
    /// existing one keeps its cursor.
    pub fn register_sink(&self, sink: &str) -> Ticket<SinkState> {
        let sink = sink.to_string();
        self.submit(|reply| Op::Register { sink, reply })
    }

    /// Removes a sink; records only it still needed are deleted.
    pub fn unregister_sink(&self, sink: &str) -> Ticket<()> {
        let sink = sink.to_string();
        self.submit(|reply| Op::Unregister { sink, reply })
    }

    /// Acknowledges every record up to and including `upto` for `sink`, and
    /// records that the sink reported drops up to `dropped_reported`.
    pub fn ack(&self, sink: &str, upto: u64, dropped_reported: u64) -> Ticket<()> {
        let sink = sink.to_string();
        self.submit(|reply| Op::Ack {
            sink,
            upto,
            dropped_reported,
            reply,
        })
    }

    /// Moves the record `seq` to the quarantine family. Resolves to whether
    /// it was there to move.
    pub fn quarantine(&self, seq: u64, reason: &str) -> Ticket<bool> {
        let reason = reason.to_string();
        self.submit(|reply| Op::Quarantine { seq, reason, reply })
    }

    /// Durably stores an opaque value under `key` (e.g. a tail offset).
    pub fn put_meta(&self, key: &[u8], value: Option<Vec<u8>>) -> Ticket<()> {
        let key = key.to_vec();
        self.submit(|reply| Op::PutMeta { key, value, reply })
    }

    pub fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, OutboxError> {
        self.inner
            .db
            .get_cf(self.cf(CF_META), meta_key(META_USER, key))
            .map_err(|e| OutboxError::Storage {
                op: "read metadata",
                source: e,
            })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.inner
            .db
            .cf_handle(name)
            .expect("column family created at open")
    }

    /// The durable state of `sink`, if registered.
    pub fn sink(&self, sink: &str) -> Option<SinkState> {
        self.stats().sinks.get(sink).copied()
    }

    pub fn stats(&self) -> OutboxStats {
        self.inner
            .shared
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A receiver of the last readable seq, updated after every commit, for
    /// readers that wait for new records instead of polling.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.shared.appended.subscribe()
    }

    /// The highest seq that is readable.
    pub fn last_seq(&self) -> u64 {
        self.inner.shared.visible_seq.load(Ordering::Acquire)
    }

    /// Reads stored payloads with seq > `after`, at most `max_records` and,
    /// past the first, `max_bytes`. Values failing their checksum are
    /// quarantined and skipped. Blocks: call from a thread, not an async task.
    pub fn read_raw(
        &self,
        after: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<RawBatch, OutboxError> {
        let (entries, bytes, last_seq, quarantined) =
            self.scan_values(after, max_records, max_bytes, |seq, payload| {
                Ok((seq, payload.to_vec()))
            })?;
        Ok(RawBatch {
            entries,
            bytes,
            last_seq,
            quarantined,
        })
    }

    /// Like [`Outbox::read_raw`], decoding each record straight from the
    /// stored value; records that do not decode are quarantined too. Blocks:
    /// call from a thread, not an async task.
    pub fn read(
        &self,
        after: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadBatch, OutboxError> {
        let (records, bytes, last_seq, quarantined) =
            self.scan_values(after, max_records, max_bytes, |seq, payload| {
                let mut r = schemas::from_msgpack::<Record>(payload)
                    .map_err(|e| format!("undecodable record: {e}"))?;
                r.seq = seq;
                Ok(r)
            })?;
        Ok(ReadBatch {
            records,
            bytes,
            last_seq,
            quarantined,
        })
    }

    /// Iterates stored values after `after` through `decode`, collecting
    /// what it returns; see [`Outbox::scan`]. Returns (decoded, bytes
    /// scanned, last seq covered, quarantined count).
    fn scan_values<T>(
        &self,
        after: u64,
        max_records: usize,
        max_bytes: usize,
        mut decode: impl FnMut(u64, &[u8]) -> Result<T, String>,
    ) -> Result<(Vec<T>, usize, u64, usize), OutboxError> {
        let mut out = Vec::new();
        let scanned = self.scan(after, max_records, max_bytes, |seq, payload| {
            out.push(decode(seq, payload)?);
            Ok(Visit::Take)
        })?;
        Ok((out, scanned.bytes, scanned.last_seq, scanned.quarantined))
    }

    /// Visits the stored payloads (MessagePack records) with seq > `after`
    /// in order, without copying them: at most `max_records` taken and, past
    /// the first, `max_bytes` of stored values. `visit` says whether it took
    /// the record or the scan stops before it; a payload that fails its
    /// checksum, or that `visit` refuses with an error (it does not decode),
    /// is quarantined after the scan and skipped. The visitor runs while a
    /// RocksDB iterator is open: it must not wait for the outbox's writer.
    /// Blocks: call from a thread, not an async task.
    pub fn scan(
        &self,
        after: u64,
        max_records: usize,
        max_bytes: usize,
        mut visit: impl FnMut(u64, &[u8]) -> Result<Visit, String>,
    ) -> Result<Scanned, OutboxError> {
        let visible = self.last_seq();
        let mut scanned = Scanned {
            last_seq: after,
            ..Scanned::default()
        };
        if after >= visible || max_records == 0 {
            return Ok(scanned);
        }
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(seq_key(visible + 1).to_vec());
        let mut it = self.inner.db.raw_iterator_cf_opt(self.cf(CF_RECORDS), opts);
        it.seek(seq_key(after + 1));
        let mut faults = Vec::new();
        // Whether the scan stopped at a limit rather than at `visible`.
        let mut stopped = false;
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                stopped = true;
                break;
            };
            let Some(seq) = key_seq(k) else {
                stopped = true;
                break;
            };
            if scanned.taken > 0 && scanned.bytes + v.len() > max_bytes {
                stopped = true;
                break;
            }
            match decode_record_value(v) {
                Ok(payload) => match visit(seq, payload) {
                    Ok(Visit::Take) => scanned.taken += 1,
                    Ok(Visit::Stop) => {
                        stopped = true;
                        break;
                    }
                    Err(reason) => faults.push((seq, reason)),
                },
                Err(fault) => faults.push((seq, fault.to_string())),
            }
            scanned.bytes += v.len();
            scanned.last_seq = seq;
            if scanned.taken >= max_records {
                stopped = true;
                break;
            }
            it.next();
        }
        it.status().map_err(|e| OutboxError::Storage {
            op: "read records",
            source: e,
        })?;
        drop(it);
        if !stopped {
            // Every seq up to `visible` was scanned: those not seen are gone
            // (acknowledged, dropped or quarantined earlier), so the read
            // covers them too. Without this a reader whose cursor sits
            // before a tail of quarantined records would read nothing,
            // forever, and never move past them.
            scanned.last_seq = visible;
        }
        for (seq, reason) in faults {
            tracing::warn!(seq, %reason, "outbox: quarantined a corrupt record");
            if self.quarantine(seq, &reason).wait()? {
                scanned.quarantined += 1;
            }
        }
        Ok(scanned)
    }

    /// Quarantined entries (seq, reason, original stored value), oldest first.
    pub fn quarantined(&self, limit: usize) -> Result<Vec<(u64, String, Vec<u8>)>, OutboxError> {
        let mut out = Vec::new();
        let mut it = self.inner.db.raw_iterator_cf(self.cf(CF_QUARANTINE));
        it.seek_to_first();
        while it.valid() && out.len() < limit {
            if let (Some(k), Some(v)) = (it.key(), it.value()) {
                if let (Some(seq), true) = (key_seq(k), v.len() >= 2) {
                    let n = u16::from_be_bytes([v[0], v[1]]) as usize;
                    let reason =
                        String::from_utf8_lossy(v.get(2..2 + n).unwrap_or_default()).into_owned();
                    out.push((seq, reason, v.get(2 + n..).unwrap_or_default().to_vec()));
                }
            }
            it.next();
        }
        it.status().map_err(|e| OutboxError::Storage {
            op: "read quarantine",
            source: e,
        })?;
        Ok(out)
    }

    /// Test hook: overwrites the stored value of `seq` in place, bypassing
    /// checksums (unit tests only; the e2e suite flips bytes through
    /// RocksDB itself, `e2e::corrupt_record`).
    #[cfg(test)]
    pub(crate) fn corrupt_for_test(
        &self,
        seq: u64,
        f: impl FnOnce(&mut Vec<u8>),
    ) -> Result<bool, OutboxError> {
        let cf = self.cf(CF_RECORDS);
        let storage = |e| OutboxError::Storage {
            op: "corrupt record",
            source: e,
        };
        let Some(mut v) = self.inner.db.get_cf(cf, seq_key(seq)).map_err(storage)? else {
            return Ok(false);
        };
        f(&mut v);
        self.inner.db.put_cf(cf, seq_key(seq), v).map_err(storage)?;
        Ok(true)
    }
}

/// Refuses paths that are not (and cannot become) an outbox. Returns whether
/// a RocksDB database already exists there.
fn check_directory(path: &Path) -> Result<bool, OutboxError> {
    let not = |reason: &str| OutboxError::NotAnOutbox {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path)
                .map_err(|e| not(&format!("cannot create directory: {e}")))?;
            Ok(false)
        }
        Err(e) => Err(not(&e.to_string())),
        Ok(m) if !m.is_dir() => Err(not("it is not a directory")),
        Ok(_) => {
            if path.join("CURRENT").exists() {
                let cfs = DB::list_cf(&Options::default(), path).map_err(|e| not(e.as_ref()))?;
                for cf in [CF_RECORDS, CF_META, CF_QUARANTINE] {
                    if !cfs.iter().any(|c| c == cf) {
                        return Err(not(&format!(
                            "a RocksDB database without the outbox's {cf:?} column family"
                        )));
                    }
                }
                return Ok(true);
            }
            // Killed while creating the database the first time: start over.
            if sesam_common::files::clear_interrupted_rocksdb_creation(path)
                .map_err(|e| not(&e.to_string()))?
            {
                return Ok(false);
            }
            let mut entries = std::fs::read_dir(path).map_err(|e| not(&e.to_string()))?;
            if entries.next().is_some() {
                return Err(not(
                    "the directory holds other files and no outbox database",
                ));
            }
            Ok(false)
        }
    }
}

/// A new random epoch: the 128 random bits of a v4 UUID as 32 hex digits.
fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Reads the outbox's epoch, making and durably storing one if it has none
/// (a new outbox, or one created before epochs existed). A stored epoch that
/// is not a valid one is damage, not something to paper over: replacing it
/// would put records the receiver already has under a new epoch.
fn load_epoch(db: &DB, path: &Path) -> Result<String, OutboxError> {
    let storage = |e| OutboxError::Storage {
        op: "read or store the outbox epoch",
        source: e,
    };
    let meta = db
        .cf_handle(CF_META)
        .expect("column family created at open");
    if let Some(v) = db.get_cf(meta, META_EPOCH).map_err(storage)? {
        return match String::from_utf8(v) {
            Ok(e) if !e.is_empty() && schemas::batch::valid_epoch(&e) => Ok(e),
            _ => Err(OutboxError::Damaged {
                path: path.to_path_buf(),
                reason: "the stored epoch is not a valid epoch".into(),
            }),
        };
    }
    let epoch = new_epoch();
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    db.put_cf_opt(meta, META_EPOCH, epoch.as_bytes(), &wo)
        .map_err(storage)?;
    Ok(epoch)
}

fn load_state(db: &DB, path: &Path, existed: bool) -> Result<State, OutboxError> {
    let damaged = |reason: String| OutboxError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    let storage = |e| OutboxError::Storage {
        op: "read outbox metadata",
        source: e,
    };
    let meta = db
        .cf_handle(CF_META)
        .expect("column family created at open");
    match db.get_cf(meta, META_FORMAT).map_err(storage)? {
        Some(f) if f == FORMAT => {}
        Some(f) => {
            return Err(OutboxError::NotAnOutbox {
                path: path.to_path_buf(),
                reason: format!("unsupported format {:?}", String::from_utf8_lossy(&f)),
            })
        }
        None if existed => {
            return Err(OutboxError::NotAnOutbox {
                path: path.to_path_buf(),
                reason: "a RocksDB database without the outbox format marker".into(),
            })
        }
        None => {
            let mut wo = rocksdb::WriteOptions::default();
            wo.set_sync(true);
            let mut b = rocksdb::WriteBatch::default();
            b.put_cf(meta, META_FORMAT, FORMAT);
            b.put_cf(meta, META_NEXT_SEQ, 1u64.to_be_bytes());
            b.put_cf(meta, META_HEAD, 1u64.to_be_bytes());
            db.write_opt(b, &wo).map_err(storage)?;
        }
    }
    let get_u64 = |key: &[u8]| -> Result<u64, OutboxError> {
        match db.get_cf(meta, key).map_err(storage)? {
            Some(v) => value_u64(&v)
                .ok_or_else(|| damaged(format!("bad {:?} value", String::from_utf8_lossy(key)))),
            None => Ok(1),
        }
    };
    let next_seq = get_u64(META_NEXT_SEQ)?;
    let head_seq = get_u64(META_HEAD)?;
    let (records, bytes) = match db.get_cf(meta, META_STATS).map_err(storage)? {
        Some(v) => value_pair(&v).ok_or_else(|| damaged("bad stats value".into()))?,
        None => (0, 0),
    };
    let (dropped_newest, dropped_oldest, quarantined) =
        match db.get_cf(meta, META_COUNTERS).map_err(storage)? {
            Some(v) if v.len() == 24 => (
                value_u64(&v[0..8]).unwrap_or(0),
                value_u64(&v[8..16]).unwrap_or(0),
                value_u64(&v[16..24]).unwrap_or(0),
            ),
            Some(_) => return Err(damaged("bad counters value".into())),
            None => (0, 0, 0),
        };
    if head_seq > next_seq || next_seq == 0 || head_seq == 0 {
        return Err(damaged(format!(
            "head {head_seq} beyond next seq {next_seq}"
        )));
    }
    let mut sinks = BTreeMap::new();
    let mut it = db.raw_iterator_cf(meta);
    it.seek(META_SINK);
    while it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        let Some(name) = k.strip_prefix(META_SINK) else {
            break;
        };
        let (acked, dropped_reported) = value_pair(v).ok_or_else(|| {
            damaged(format!(
                "bad cursor of sink {}",
                String::from_utf8_lossy(name)
            ))
        })?;
        sinks.insert(
            String::from_utf8_lossy(name).into_owned(),
            SinkState {
                acked,
                dropped_reported,
            },
        );
        it.next();
    }
    it.status().map_err(storage)?;
    Ok(State {
        next_seq,
        head_seq,
        records,
        bytes,
        dropped_newest,
        dropped_oldest,
        quarantined,
        sinks,
    })
}

#[cfg(test)]
mod tests;

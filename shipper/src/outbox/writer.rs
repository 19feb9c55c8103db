//! The single writer thread: group commit of appends, acks and metadata.
//!
//! Every mutation of the outbox goes through this thread as an [`Op`]. It
//! takes all ops that are waiting, applies them to its in-memory [`State`]
//! and to one RocksDB `WriteBatch`, writes that batch once (synced in
//! [`SyncMode::Always`]) and only then answers the callers. So many
//! concurrent appenders share one fsync (group commit), seqs are assigned in
//! the order records become visible (a reader never sees seq n+1 before n),
//! and the persisted counters always agree with the records they describe.
//!
//! If the write fails, the state is rolled back to what it was before the
//! group and every caller of the group gets the error: nothing is reported
//! durable that is not.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use rocksdb::{ReadOptions, WriteBatch, WriteOptions, DB};
use tokio::sync::oneshot;

use super::config::{OutboxConfig, SyncMode, WhenFull};
use super::format::{pair_value, seq_key, u64_value};
use super::metrics::PolicyLabel;
use super::{
    meta_key, OutboxError, Receipt, Shared, SinkState, CF_META, CF_QUARANTINE, CF_RECORDS,
    META_COUNTERS, META_HEAD, META_NEXT_SEQ, META_STATS,
};

pub(super) type Reply<T> = oneshot::Sender<Result<T, OutboxError>>;

pub(super) struct AppendOp {
    /// Stored values (header + payload), in order.
    pub values: Vec<Vec<u8>>,
    pub bytes: u64,
    pub started: Instant,
    pub deadline: Instant,
    /// The value the metadata entry must hold for the append to be taken
    /// (`Some(None)`: absent); `None` takes it whatever the entry holds.
    pub expect: Option<Option<Vec<u8>>>,
    /// A caller's metadata entry written in the same batch as the records
    /// (e.g. a file offset), so both are durable together or not at all.
    pub meta: Option<(Vec<u8>, Vec<u8>)>,
    pub reply: Reply<Receipt>,
}

pub(super) enum Op {
    Append(AppendOp),
    Ack {
        sink: String,
        upto: u64,
        dropped_reported: u64,
        reply: Reply<()>,
    },
    Register {
        sink: String,
        reply: Reply<SinkState>,
    },
    Unregister {
        sink: String,
        reply: Reply<()>,
    },
    Quarantine {
        seq: u64,
        reason: String,
        reply: Reply<bool>,
    },
    PutMeta {
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        reply: Reply<()>,
    },
    Shutdown,
}

/// The writer's view of the outbox; mirrored into [`Shared`] after commits.
#[derive(Debug, Clone)]
pub(super) struct State {
    pub next_seq: u64,
    /// Every record with a smaller seq is deleted.
    pub head_seq: u64,
    pub records: u64,
    pub bytes: u64,
    pub dropped_newest: u64,
    pub dropped_oldest: u64,
    pub quarantined: u64,
    pub sinks: BTreeMap<String, SinkState>,
}

impl State {
    pub fn dropped_total(&self) -> u64 {
        self.dropped_newest + self.dropped_oldest
    }
}

enum Done {
    Append {
        reply: Reply<Receipt>,
        receipt: Receipt,
        started: Instant,
    },
    Unit(Reply<()>),
    Sink(Reply<SinkState>, SinkState),
    Bool(Reply<bool>, bool),
}

/// One group commit in the making.
struct Group {
    batch: WriteBatch,
    /// Records accepted in this group, not yet in `batch` (drop_oldest may
    /// still drop some of them).
    pending: VecDeque<(u64, Vec<u8>)>,
    done: Vec<Done>,
    before: State,
    quarantined: HashSet<u64>,
    acknowledged: u64,
    dropped_newest: u64,
    dropped_oldest: u64,
    quarantined_count: u64,
    appended_records: u64,
    appended_bytes: u64,
    dirty: bool,
    /// Whether the group must be synced before it is answered (under
    /// `SyncMode::Always`): it stores records or something a caller is told
    /// is durable. A group of acknowledgements and quarantines alone is
    /// not synced: losing it to a machine crash only sends records again,
    /// which the receiver deduplicates, and the next synced group makes it
    /// durable with it (the WAL is one sequence).
    durable: bool,
    /// User metadata entries written by this group so far (full keys).
    meta: std::collections::HashMap<Vec<u8>, Option<Vec<u8>>>,
}

/// Bounds of one group commit, so that one group cannot hold callers for long.
const GROUP_MAX_OPS: usize = 4096;

pub(super) struct Writer {
    pub db: Arc<DB>,
    pub rx: Receiver<Op>,
    pub state: State,
    pub shared: Arc<Shared>,
    pub config: OutboxConfig,
}

impl Writer {
    pub fn run(mut self) {
        let mut blocked: VecDeque<AppendOp> = VecDeque::new();
        let mut unsynced_since: Option<Instant> = None;
        let mut shutdown = false;
        while !shutdown {
            let wake = self.next_wake(&blocked, unsynced_since);
            let first = match wake {
                None => match self.rx.recv() {
                    Ok(op) => Some(op),
                    Err(_) => break,
                },
                Some(at) => {
                    let timeout = at.saturating_duration_since(Instant::now());
                    match self.rx.recv_timeout(timeout) {
                        Ok(op) => Some(op),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            let mut group = Group {
                batch: WriteBatch::default(),
                pending: VecDeque::new(),
                done: Vec::new(),
                before: self.state.clone(),
                quarantined: HashSet::new(),
                acknowledged: 0,
                dropped_newest: 0,
                dropped_oldest: 0,
                quarantined_count: 0,
                appended_records: 0,
                appended_bytes: 0,
                dirty: false,
                durable: false,
                meta: std::collections::HashMap::new(),
            };
            let mut ops = 0usize;
            let mut bytes = 0u64;
            let mut next = first;
            while let Some(op) = next {
                ops += 1;
                match op {
                    Op::Shutdown => shutdown = true,
                    Op::Append(a) => {
                        bytes += a.bytes;
                        blocked.push_back(a);
                    }
                    other => self.apply(other, &mut group),
                }
                if ops >= GROUP_MAX_OPS || bytes >= self.config.group_max_bytes() {
                    break;
                }
                next = match self.rx.try_recv() {
                    Ok(op) => Some(op),
                    Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => None,
                };
            }
            self.admit(&mut blocked, &mut group);
            let now = Instant::now();
            blocked.retain_mut(|a| {
                if a.deadline > now {
                    return true;
                }
                let (tx, _) = oneshot::channel();
                let reply = std::mem::replace(&mut a.reply, tx);
                let _ = reply.send(Err(OutboxError::Full {
                    waited: now.saturating_duration_since(a.started),
                }));
                false
            });
            let wrote = self.commit(group);
            if wrote {
                if let SyncMode::Interval { .. } = self.config.sync {
                    unsynced_since.get_or_insert(Instant::now());
                }
            }
            if let (SyncMode::Interval { every }, Some(since)) = (self.config.sync, unsynced_since)
            {
                if since.elapsed() >= every || shutdown {
                    match self.db.flush_wal(true) {
                        Ok(()) => unsynced_since = None,
                        Err(e) => tracing::error!(error = %e, "outbox: sync WAL"),
                    }
                }
            }
        }
        for a in blocked {
            let _ = a.reply.send(Err(OutboxError::Closed));
        }
        if unsynced_since.is_some() {
            let _ = self.db.flush_wal(true);
        }
    }

    fn next_wake(
        &self,
        blocked: &VecDeque<AppendOp>,
        unsynced: Option<Instant>,
    ) -> Option<Instant> {
        let deadline = blocked.iter().map(|a| a.deadline).min();
        let sync = match (self.config.sync, unsynced) {
            (SyncMode::Interval { every }, Some(since)) => Some(since + every),
            _ => None,
        };
        match (deadline, sync) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    fn apply(&mut self, op: Op, g: &mut Group) {
        match op {
            Op::Append(_) | Op::Shutdown => unreachable!("handled by run"),
            Op::Ack {
                sink,
                upto,
                dropped_reported,
                reply,
            } => {
                let visible = self.state.next_seq - 1 - g.pending.len() as u64;
                let Some(state) = self.state.sinks.get_mut(&sink) else {
                    let _ = reply.send(Err(OutboxError::UnknownSink(sink)));
                    return;
                };
                if upto > visible {
                    let _ = reply.send(Err(OutboxError::AckBeyondEnd {
                        upto,
                        last: visible,
                    }));
                    return;
                }
                state.acked = state.acked.max(upto);
                state.dropped_reported = state.dropped_reported.max(
                    dropped_reported.min(self.state.dropped_newest + self.state.dropped_oldest),
                );
                let value = pair_value(state.acked, state.dropped_reported);
                let meta = self.cf(CF_META);
                g.batch
                    .put_cf(meta, meta_key(super::META_SINK, sink.as_bytes()), value);
                g.dirty = true;
                if let Err(e) = self.advance_head(g) {
                    let _ = reply.send(Err(e));
                    return;
                }
                g.done.push(Done::Unit(reply));
            }
            Op::Register { sink, reply } => {
                if let Some(s) = self.state.sinks.get(&sink) {
                    let _ = reply.send(Ok(*s));
                    return;
                }
                let s = SinkState {
                    acked: self.state.head_seq - 1,
                    dropped_reported: self.state.dropped_total(),
                };
                self.state.sinks.insert(sink.clone(), s);
                let meta = self.cf(CF_META);
                g.batch.put_cf(
                    meta,
                    meta_key(super::META_SINK, sink.as_bytes()),
                    pair_value(s.acked, s.dropped_reported),
                );
                g.dirty = true;
                g.durable = true;
                g.done.push(Done::Sink(reply, s));
            }
            Op::Unregister { sink, reply } => {
                if self.state.sinks.remove(&sink).is_some() {
                    let meta = self.cf(CF_META);
                    g.batch
                        .delete_cf(meta, meta_key(super::META_SINK, sink.as_bytes()));
                    g.dirty = true;
                    g.durable = true;
                    if let Err(e) = self.advance_head(g) {
                        let _ = reply.send(Err(e));
                        return;
                    }
                }
                g.done.push(Done::Unit(reply));
            }
            Op::Quarantine { seq, reason, reply } => {
                let found = if seq < self.state.head_seq || g.quarantined.contains(&seq) {
                    None
                } else {
                    match self.db.get_cf(self.cf(CF_RECORDS), seq_key(seq)) {
                        Ok(v) => v,
                        Err(e) => {
                            let _ = reply.send(Err(OutboxError::Storage {
                                op: "read record to quarantine",
                                source: e,
                            }));
                            return;
                        }
                    }
                };
                let Some(raw) = found else {
                    g.done.push(Done::Bool(reply, false));
                    return;
                };
                let reason = reason.as_bytes();
                let reason = &reason[..reason.len().min(u16::MAX as usize)];
                let mut q = Vec::with_capacity(2 + reason.len() + raw.len());
                q.extend_from_slice(&(reason.len() as u16).to_be_bytes());
                q.extend_from_slice(reason);
                q.extend_from_slice(&raw);
                g.batch.put_cf(self.cf(CF_QUARANTINE), seq_key(seq), q);
                g.batch.delete_cf(self.cf(CF_RECORDS), seq_key(seq));
                g.quarantined.insert(seq);
                self.state.records -= 1;
                self.state.bytes = self.state.bytes.saturating_sub(raw.len() as u64);
                self.state.quarantined += 1;
                g.quarantined_count += 1;
                g.dirty = true;
                g.done.push(Done::Bool(reply, true));
            }
            Op::PutMeta { key, value, reply } => {
                let k = meta_key(super::META_USER, &key);
                match &value {
                    Some(v) => g.batch.put_cf(self.cf(CF_META), &k, v),
                    None => g.batch.delete_cf(self.cf(CF_META), &k),
                }
                g.meta.insert(k, value);
                g.dirty = true;
                g.durable = true;
                g.done.push(Done::Unit(reply));
            }
        }
    }

    /// Deletes the prefix every sink has acknowledged.
    fn advance_head(&mut self, g: &mut Group) -> Result<(), OutboxError> {
        let Some(min_acked) = self.state.sinks.values().map(|s| s.acked).min() else {
            return Ok(());
        };
        if min_acked < self.state.head_seq {
            return Ok(());
        }
        let (count, bytes, _) = self.scan(self.state.head_seq, min_acked + 1, None, g)?;
        g.batch.delete_range_cf(
            self.cf(CF_RECORDS),
            seq_key(self.state.head_seq),
            seq_key(min_acked + 1),
        );
        self.state.head_seq = min_acked + 1;
        self.state.records -= count;
        self.state.bytes = self.state.bytes.saturating_sub(bytes);
        g.acknowledged += count;
        g.dirty = true;
        Ok(())
    }

    /// Counts stored records with seq in `[from, to)`, stopping early once
    /// `need` (records, bytes) is reached. Returns (count, bytes, last seq).
    fn scan(
        &self,
        from: u64,
        to: u64,
        need: Option<(u64, u64)>,
        g: &Group,
    ) -> Result<(u64, u64, u64), OutboxError> {
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(seq_key(to).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_RECORDS), opts);
        it.seek(seq_key(from));
        let (mut count, mut bytes, mut last) = (0u64, 0u64, from.saturating_sub(1));
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            let seq = super::format::key_seq(k).unwrap_or(last);
            if !g.quarantined.contains(&seq) {
                count += 1;
                bytes += v.len() as u64;
            }
            last = seq;
            if let Some((nr, nb)) = need {
                if count >= nr && bytes >= nb {
                    break;
                }
            }
            it.next();
        }
        it.status().map_err(|e| OutboxError::Storage {
            op: "scan records",
            source: e,
        })?;
        Ok((count, bytes, last))
    }

    /// Accepts waiting appends in arrival order, as far as the policy allows.
    fn admit(&mut self, blocked: &mut VecDeque<AppendOp>, g: &mut Group) {
        let max_records = self.config.max_records.get();
        let max_bytes = self.config.max_bytes.get();
        while let Some(mut a) = blocked.pop_front() {
            if let Err(e) = self.check_expect(&a, g) {
                let _ = a.reply.send(Err(e));
                continue;
            }
            let n = a.values.len() as u64;
            let fits =
                self.state.records + n <= max_records && self.state.bytes + a.bytes <= max_bytes;
            if !fits {
                match self.config.when_full {
                    WhenFull::Block => {
                        blocked.push_front(a);
                        return;
                    }
                    WhenFull::DropNewest => {
                        let mut keep = 0usize;
                        let mut kept_bytes = 0u64;
                        for v in &a.values {
                            if self.state.records + keep as u64 + 1 > max_records
                                || self.state.bytes + kept_bytes + v.len() as u64 > max_bytes
                            {
                                break;
                            }
                            keep += 1;
                            kept_bytes += v.len() as u64;
                        }
                        let dropped = a.values.len() - keep;
                        a.values.truncate(keep);
                        a.bytes = kept_bytes;
                        self.state.dropped_newest += dropped as u64;
                        g.dropped_newest += dropped as u64;
                        g.dirty = true;
                        self.accept(a, dropped, g);
                        continue;
                    }
                    WhenFull::DropOldest => {
                        let need_records = (self.state.records + n).saturating_sub(max_records);
                        let need_bytes = (self.state.bytes + a.bytes).saturating_sub(max_bytes);
                        if let Err(e) = self.drop_oldest(need_records, need_bytes, g) {
                            let _ = a.reply.send(Err(e));
                            continue;
                        }
                    }
                }
            }
            self.accept(a, 0, g);
        }
    }

    /// An append that expects its metadata entry to hold a value is refused
    /// when it holds another: an earlier append of the same stream failed
    /// (its group was rolled back), so this one, which continues it, must
    /// not be taken either (see [`super::Outbox::append_after`]).
    fn check_expect(&self, a: &AppendOp, g: &Group) -> Result<(), OutboxError> {
        let (Some(expect), Some((key, _))) = (&a.expect, &a.meta) else {
            return Ok(());
        };
        let k = meta_key(super::META_USER, key);
        let current = match g.meta.get(&k) {
            Some(v) => v.clone(),
            None => self
                .db
                .get_cf(self.cf(CF_META), &k)
                .map_err(|e| OutboxError::Storage {
                    op: "read metadata",
                    source: e,
                })?,
        };
        if current.as_deref() == expect.as_deref() {
            Ok(())
        } else {
            Err(OutboxError::MetaConflict {
                key: String::from_utf8_lossy(key).into_owned(),
            })
        }
    }

    fn accept(&mut self, a: AppendOp, dropped: usize, g: &mut Group) {
        g.durable = true;
        if let Some((key, value)) = a.meta {
            let k = meta_key(super::META_USER, &key);
            g.batch.put_cf(self.cf(CF_META), &k, &value);
            g.meta.insert(k, Some(value));
        }
        let first_seq = self.state.next_seq;
        let count = a.values.len();
        for v in a.values {
            g.pending.push_back((self.state.next_seq, v));
            self.state.next_seq += 1;
        }
        self.state.records += count as u64;
        self.state.bytes += a.bytes;
        g.appended_records += count as u64;
        g.appended_bytes += a.bytes;
        g.dirty = true;
        g.done.push(Done::Append {
            reply: a.reply,
            receipt: Receipt {
                first_seq,
                count,
                dropped,
            },
            started: a.started,
        });
    }

    /// Deletes the oldest records until `need_records` and `need_bytes` are
    /// freed: first stored ones, then ones accepted earlier in this group.
    fn drop_oldest(
        &mut self,
        need_records: u64,
        need_bytes: u64,
        g: &mut Group,
    ) -> Result<(), OutboxError> {
        let stored_end = self.state.next_seq - g.pending.len() as u64;
        let mut freed = (0u64, 0u64);
        if self.state.head_seq < stored_end {
            let (count, bytes, last) = self.scan(
                self.state.head_seq,
                stored_end,
                Some((need_records, need_bytes)),
                g,
            )?;
            if count > 0 {
                g.batch.delete_range_cf(
                    self.cf(CF_RECORDS),
                    seq_key(self.state.head_seq),
                    seq_key(last + 1),
                );
                self.state.head_seq = last + 1;
                freed = (count, bytes);
            }
        }
        while freed.0 < need_records || freed.1 < need_bytes {
            let Some((seq, v)) = g.pending.pop_front() else {
                break;
            };
            freed.0 += 1;
            freed.1 += v.len() as u64;
            self.state.head_seq = seq + 1;
        }
        self.state.records -= freed.0;
        self.state.bytes = self.state.bytes.saturating_sub(freed.1);
        self.state.dropped_oldest += freed.0;
        g.dropped_oldest += freed.0;
        g.dirty = true;
        Ok(())
    }

    /// Writes the group and answers its callers. Returns whether it wrote.
    fn commit(&mut self, mut g: Group) -> bool {
        if !g.dirty {
            self.answer(g.done, Ok(()));
            return false;
        }
        let records = self.cf(CF_RECORDS);
        for (seq, v) in g.pending.drain(..) {
            g.batch.put_cf(records, seq_key(seq), v);
        }
        let meta = self.cf(CF_META);
        let s = &self.state;
        g.batch.put_cf(meta, META_NEXT_SEQ, u64_value(s.next_seq));
        g.batch.put_cf(meta, META_HEAD, u64_value(s.head_seq));
        g.batch
            .put_cf(meta, META_STATS, pair_value(s.records, s.bytes));
        let mut counters = Vec::with_capacity(24);
        counters.extend_from_slice(&s.dropped_newest.to_be_bytes());
        counters.extend_from_slice(&s.dropped_oldest.to_be_bytes());
        counters.extend_from_slice(&s.quarantined.to_be_bytes());
        g.batch.put_cf(meta, META_COUNTERS, counters);

        let mut wo = WriteOptions::default();
        wo.set_sync(matches!(self.config.sync, SyncMode::Always) && g.durable);
        let batch = std::mem::take(&mut g.batch);
        match self.db.write_opt(batch, &wo) {
            Ok(()) => {
                self.publish(&g);
                self.answer(g.done, Ok(()));
            }
            Err(e) => {
                tracing::error!(error = %e, "outbox: write batch failed; group rolled back");
                self.state = g.before;
                self.answer(
                    g.done,
                    Err(OutboxError::Storage {
                        op: "write batch",
                        source: e,
                    }),
                );
            }
        }
        true
    }

    fn publish(&self, g: &Group) {
        let s = &self.state;
        self.shared
            .visible_seq
            .store(s.next_seq - 1, Ordering::Release);
        self.shared.appended.send_replace(s.next_seq - 1);
        {
            // Short critical section, never held across a blocking call.
            let mut snap = self
                .shared
                .snapshot
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            snap.next_seq = s.next_seq;
            snap.head_seq = s.head_seq;
            snap.records = s.records;
            snap.bytes = s.bytes;
            snap.dropped_newest = s.dropped_newest;
            snap.dropped_oldest = s.dropped_oldest;
            snap.quarantined = s.quarantined;
            snap.sinks.clone_from(&s.sinks);
        }
        let m = &self.shared.metrics;
        m.group_commits.inc();
        m.appended_records.inc_by(g.appended_records);
        m.appended_bytes.inc_by(g.appended_bytes);
        m.acknowledged_records.inc_by(g.acknowledged);
        if g.dropped_newest > 0 {
            m.dropped_records
                .get_or_create(&PolicyLabel {
                    policy: "drop_newest",
                })
                .inc_by(g.dropped_newest);
        }
        if g.dropped_oldest > 0 {
            m.dropped_records
                .get_or_create(&PolicyLabel {
                    policy: "drop_oldest",
                })
                .inc_by(g.dropped_oldest);
        }
        m.quarantined_records.inc_by(g.quarantined_count);
        m.stored_records.set(s.records as i64);
        m.stored_bytes.set(s.bytes as i64);
    }

    fn answer(&self, done: Vec<Done>, result: Result<(), OutboxError>) {
        for d in done {
            match (d, &result) {
                (
                    Done::Append {
                        reply,
                        receipt,
                        started,
                    },
                    Ok(()),
                ) => {
                    self.shared
                        .metrics
                        .append_duration
                        .observe(started.elapsed().as_secs_f64());
                    let _ = reply.send(Ok(receipt));
                }
                (Done::Append { reply, .. }, Err(e)) => {
                    let _ = reply.send(Err(e.clone()));
                }
                (Done::Unit(reply), r) => {
                    let _ = reply.send(r.clone());
                }
                (Done::Sink(reply, s), r) => {
                    let _ = reply.send(r.clone().map(|_| s));
                }
                (Done::Bool(reply, b), r) => {
                    let _ = reply.send(r.clone().map(|_| b));
                }
            }
        }
    }
}

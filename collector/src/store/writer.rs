//! The single writer thread: group commit of ingests, retention and purges.
//!
//! Ingest batches queue on a bounded channel. The writer takes every batch
//! that is waiting (up to a bound), decides for each record whether it is
//! new (see the dedupe rule in `mod.rs`), puts the new ones into one
//! RocksDB `WriteBatch` with the updated stream and source metadata, writes
//! it synced, and only then publishes the new state to readers, tells the
//! observers and answers the callers. If the write fails, nothing of the
//! group is published and every caller of the group gets the error.
//!
//! Retention (`Expire`) and termination (`Purge`) run as their own groups
//! between ingest groups, so the in-memory state never mixes them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use rocksdb::{ReadOptions, WriteBatch, WriteOptions, DB};
use tokio::sync::{mpsc, oneshot};

use super::keys::{
    entry_bound, entry_key, parse_entry_key, seq_key, source_key, stream_key, sub_prefix,
    sub_prefix_end,
};
use super::{
    cf, stream_info, IngestOutcome, PreparedBatch, PurgeReport, Shared, SourceMeta, StoreError,
    StreamMeta, CF_ENTRIES, CF_META, CF_SEQS, CF_SOURCES, CF_STREAMS, META_NEXT_STREAM,
};

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(crate) struct IngestOp {
    pub batch: PreparedBatch,
    pub reply: Reply<IngestOutcome>,
    pub started: Instant,
}

pub(crate) enum Op {
    Ingest(IngestOp),
    Expire {
        stream: u64,
        cutoff: i64,
        max: usize,
        reply: Reply<u64>,
    },
    Purge {
        subscription: String,
        reply: Reply<PurgeReport>,
    },
}

/// Bounds of one group commit.
const GROUP_MAX_OPS: usize = 256;
const GROUP_MAX_RECORDS: usize = 200_000;

type SourceId = (String, String);

pub(crate) struct Writer {
    db: Arc<DB>,
    rx: mpsc::Receiver<Op>,
    shared: Arc<Shared>,
    streams: HashMap<u64, StreamMeta>,
    stream_ids: HashMap<String, u64>,
    sources: HashMap<SourceId, SourceMeta>,
    next_stream: u64,
    /// Compactions started after purges; joined before the writer stops so
    /// that nothing holds the database once the store is closed.
    background: Vec<std::thread::JoinHandle<()>>,
}

/// One ingest group in the making; applied to the writer's state only once
/// its batch is durable.
#[derive(Default)]
struct Group {
    batch: WriteBatch,
    new_ids: HashMap<String, u64>,
    streams: HashMap<u64, StreamMeta>,
    sources: HashMap<SourceId, SourceMeta>,
    /// Seqs stored by earlier ops of this group, per source.
    seen: HashMap<SourceId, HashSet<u64>>,
    next_stream: u64,
    done: Vec<(Reply<IngestOutcome>, IngestOutcome, Instant)>,
    new_records: Vec<schemas::Record>,
    accepted: u64,
    duplicates: u64,
    bytes: u64,
    records: usize,
}

impl Writer {
    pub fn new(
        db: Arc<DB>,
        rx: mpsc::Receiver<Op>,
        shared: Arc<Shared>,
        streams: HashMap<u64, StreamMeta>,
        sources: std::collections::BTreeMap<SourceId, SourceMeta>,
        next_stream: u64,
    ) -> Result<Writer, StoreError> {
        let stream_ids = streams
            .iter()
            .map(|(id, m)| (super::labels_key(&m.labels), *id))
            .collect();
        Ok(Writer {
            db,
            rx,
            shared,
            streams,
            stream_ids,
            sources: sources.into_iter().collect(),
            next_stream,
            background: Vec::new(),
        })
    }

    pub fn run(mut self) {
        let mut pending: Option<Op> = None;
        loop {
            let first = match pending.take() {
                Some(op) => op,
                None => match self.rx.blocking_recv() {
                    Some(op) => op,
                    None => break,
                },
            };
            match first {
                Op::Expire {
                    stream,
                    cutoff,
                    max,
                    reply,
                } => {
                    let r = self.expire(stream, cutoff, max);
                    let _ = reply.send(r);
                }
                Op::Purge {
                    subscription,
                    reply,
                } => {
                    let r = self.purge(&subscription);
                    let _ = reply.send(r);
                }
                Op::Ingest(first) => {
                    let mut g = Group {
                        next_stream: self.next_stream,
                        ..Group::default()
                    };
                    self.add(first, &mut g);
                    let mut ops = 1;
                    while ops < GROUP_MAX_OPS && g.records < GROUP_MAX_RECORDS {
                        match self.rx.try_recv() {
                            Ok(Op::Ingest(op)) => {
                                self.add(op, &mut g);
                                ops += 1;
                            }
                            Ok(other) => {
                                pending = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit(g);
                }
            }
        }
        for h in self.background.drain(..) {
            let _ = h.join();
        }
        tracing::debug!("store writer stopped");
    }

    fn stream_meta<'a>(&'a self, g: &'a mut Group, id: u64) -> &'a mut StreamMeta {
        g.streams.entry(id).or_insert_with(|| {
            self.streams.get(&id).cloned().unwrap_or(StreamMeta {
                labels: Default::default(),
                min_ts: i64::MAX,
                max_ts: i64::MIN,
                records: 0,
            })
        })
    }

    /// Adds one ingest to the group, or answers it with an error.
    fn add(&self, op: IngestOp, g: &mut Group) {
        let IngestOp {
            batch,
            reply,
            started,
        } = op;
        let sid: SourceId = (batch.subscription.clone(), batch.source.clone());
        let seqs_cf = match cf(&self.db, CF_SEQS) {
            Ok(c) => c,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let src_before = g
            .sources
            .get(&sid)
            .or_else(|| self.sources.get(&sid))
            .cloned();
        let mut max_seq = src_before.as_ref().map_or(0, |s| s.last_seq);
        let group_seen = g.seen.get(&sid);

        // Pass 1 (read-only): which records are new.
        let mut is_new = Vec::with_capacity(batch.entries.len());
        let mut local: HashSet<u64> = HashSet::new();
        for e in &batch.entries {
            let new = if e.seq > max_seq {
                max_seq = e.seq;
                true
            } else if local.contains(&e.seq) || group_seen.is_some_and(|s| s.contains(&e.seq)) {
                false
            } else {
                match self
                    .db
                    .get_pinned_cf(seqs_cf, seq_key(&sid.0, &sid.1, e.seq))
                {
                    Ok(found) => found.is_none(),
                    Err(e) => {
                        let _ = reply.send(Err(StoreError::storage("look up seq", e)));
                        return;
                    }
                }
            };
            if new {
                local.insert(e.seq);
            }
            is_new.push(new);
        }

        // Pass 2: stream ids of the batch's label sets.
        let mut ids = Vec::with_capacity(batch.streams.len());
        for s in &batch.streams {
            let id = match self
                .stream_ids
                .get(&s.key)
                .or_else(|| g.new_ids.get(&s.key))
            {
                Some(id) => *id,
                None => {
                    let id = g.next_stream;
                    g.next_stream += 1;
                    g.new_ids.insert(s.key.clone(), id);
                    g.streams.insert(
                        id,
                        StreamMeta {
                            labels: s.labels.clone(),
                            min_ts: i64::MAX,
                            max_ts: i64::MIN,
                            records: 0,
                        },
                    );
                    id
                }
            };
            ids.push(id);
        }

        // Pass 3: the writes.
        let now = schemas::time::now_nanos();
        let mut src = src_before.unwrap_or(SourceMeta {
            first_seen: now,
            ..SourceMeta::default()
        });
        let entries_cf = cf(&self.db, CF_ENTRIES).ok();
        let mut outcome = IngestOutcome::default();
        let seen = g.seen.entry(sid.clone()).or_default();
        let mut bytes = 0u64;
        for (e, new) in batch.entries.iter().zip(&is_new) {
            if !*new {
                outcome.duplicates += 1;
                continue;
            }
            seen.insert(e.seq);
            outcome.accepted += 1;
            bytes += e.value.len() as u64;
            let id = ids.get(e.stream).copied().unwrap_or(0);
            if let Some(ecf) = entries_cf {
                g.batch.put_cf(ecf, entry_key(id, e.ts, e.seq), &e.value);
            }
            g.batch.put_cf(seqs_cf, seq_key(&sid.0, &sid.1, e.seq), []);
            src.last_seq = src.last_seq.max(e.seq);
            src.newest_ts = if src.records == 0 && src.newest_ts == 0 {
                e.ts
            } else {
                src.newest_ts.max(e.ts)
            };
            src.records += 1;
        }
        for (e, new) in batch.entries.iter().zip(&is_new) {
            if *new {
                let id = ids.get(e.stream).copied().unwrap_or(0);
                let m = self.stream_meta(g, id);
                m.min_ts = m.min_ts.min(e.ts);
                m.max_ts = m.max_ts.max(e.ts);
                m.records += 1;
            }
        }
        if outcome.accepted > 0 {
            src.last_seen = now;
        }
        src.dropped += batch.dropped;
        src.duplicates += outcome.duplicates;
        g.sources.insert(sid, src);
        if let Some(records) = batch.records {
            g.new_records.extend(
                records
                    .into_iter()
                    .zip(&is_new)
                    .filter(|(_, n)| **n)
                    .map(|(r, _)| r),
            );
        }
        g.accepted += outcome.accepted;
        g.duplicates += outcome.duplicates;
        g.bytes += bytes;
        g.records += batch.entries.len();
        g.done.push((reply, outcome, started));
    }

    fn commit(&mut self, mut g: Group) {
        if g.done.is_empty() {
            return;
        }
        let result = self.write_group(&mut g);
        let m = &self.shared.metrics;
        match result {
            Ok(()) => {
                // Publish: writer state first, then readers, then observers.
                self.next_stream = g.next_stream;
                let mut infos = Vec::with_capacity(g.streams.len());
                for (id, meta) in g.streams {
                    infos.push(Arc::new(stream_info(id, &meta)));
                    self.streams.insert(id, meta);
                }
                self.stream_ids.extend(g.new_ids);
                {
                    // Short critical sections; never held across a blocking call.
                    let mut idx = self
                        .shared
                        .streams
                        .write()
                        .unwrap_or_else(|p| p.into_inner());
                    for info in infos {
                        idx.insert(info.id, info);
                    }
                }
                {
                    let mut s = self
                        .shared
                        .sources
                        .write()
                        .unwrap_or_else(|p| p.into_inner());
                    for (k, v) in &g.sources {
                        s.insert(k.clone(), v.clone());
                    }
                }
                self.sources.extend(g.sources);
                m.group_commits.inc();
                m.ingest_records.inc_by(g.accepted);
                m.ingest_duplicates.inc_by(g.duplicates);
                m.store_records.inc_by(g.accepted as i64);
                m.store_streams.set(self.streams.len() as i64);
                if !g.new_records.is_empty() {
                    for o in &self.shared.observers {
                        o.committed(&g.new_records);
                    }
                }
                for (reply, outcome, started) in g.done {
                    m.ingest_commit_duration
                        .observe(started.elapsed().as_secs_f64());
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "log store: group commit failed; nothing of it is stored");
                for (reply, _, _) in g.done {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    fn write_group(&self, g: &mut Group) -> Result<(), StoreError> {
        let streams_cf = cf(&self.db, CF_STREAMS)?;
        for (id, meta) in &g.streams {
            let v = rmp_serde::to_vec_named(meta)
                .map_err(|e| StoreError::storage("encode stream", e))?;
            g.batch.put_cf(streams_cf, stream_key(*id), v);
        }
        let sources_cf = cf(&self.db, CF_SOURCES)?;
        for ((sub, src), meta) in &g.sources {
            let v = rmp_serde::to_vec_named(meta)
                .map_err(|e| StoreError::storage("encode source", e))?;
            g.batch.put_cf(sources_cf, source_key(sub, src), v);
        }
        if g.next_stream != self.next_stream {
            g.batch.put_cf(
                cf(&self.db, CF_META)?,
                META_NEXT_STREAM,
                g.next_stream.to_be_bytes(),
            );
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        let batch = std::mem::take(&mut g.batch);
        self.db
            .write_opt(batch, &wo)
            .map_err(|e| StoreError::storage("write batch", e))
    }

    fn expire(&mut self, stream: u64, cutoff: i64, max: usize) -> Result<u64, StoreError> {
        let Some(meta) = self.streams.get(&stream).cloned() else {
            return Ok(0);
        };
        if meta.min_ts >= cutoff {
            return Ok(0);
        }
        let sub = meta.labels.get("subscription").cloned().unwrap_or_default();
        let source = meta.labels.get("source").cloned().unwrap_or_default();
        let entries_cf = cf(&self.db, CF_ENTRIES)?;
        let seqs_cf = cf(&self.db, CF_SEQS)?;
        let start = entry_bound(stream, i64::MIN);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(entry_bound(stream + 1, i64::MIN).to_vec());
        opts.fill_cache(false);
        let mut it = self.db.raw_iterator_cf_opt(entries_cf, opts);
        it.seek(start);
        let mut batch = WriteBatch::default();
        let mut deleted = 0u64;
        // The first entry that stays, if any: (its key, its ts).
        let mut stop: Option<(Vec<u8>, i64)> = None;
        while it.valid() {
            let Some(k) = it.key() else { break };
            let Some((_, ts, seq)) = parse_entry_key(k) else {
                it.next();
                continue;
            };
            if ts >= cutoff || deleted as usize >= max {
                stop = Some((k.to_vec(), ts));
                break;
            }
            batch.delete_cf(seqs_cf, seq_key(&sub, &source, seq));
            deleted += 1;
            it.next();
        }
        it.status()
            .map_err(|e| StoreError::storage("scan expired entries", e))?;
        drop(it);
        if deleted == 0 {
            return Ok(0);
        }
        let end = match &stop {
            Some((k, _)) => k.clone(),
            None => entry_bound(stream + 1, i64::MIN).to_vec(),
        };
        batch.delete_range_cf(entries_cf, start.to_vec(), end);
        let mut new_meta = meta.clone();
        new_meta.records = new_meta.records.saturating_sub(deleted);
        let streams_cf = cf(&self.db, CF_STREAMS)?;
        let emptied = stop.is_none();
        match &stop {
            Some((_, ts)) => {
                new_meta.min_ts = *ts;
                let v = rmp_serde::to_vec_named(&new_meta)
                    .map_err(|e| StoreError::storage("encode stream", e))?;
                batch.put_cf(streams_cf, stream_key(stream), v);
            }
            None => batch.delete_cf(streams_cf, stream_key(stream)),
        }
        let sid = (sub, source);
        let mut src = self.sources.get(&sid).cloned();
        if let Some(s) = &mut src {
            s.records = s.records.saturating_sub(deleted);
            let v =
                rmp_serde::to_vec_named(s).map_err(|e| StoreError::storage("encode source", e))?;
            batch.put_cf(cf(&self.db, CF_SOURCES)?, source_key(&sid.0, &sid.1), v);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(batch, &wo)
            .map_err(|e| StoreError::storage("write retention batch", e))?;

        {
            let mut idx = self
                .shared
                .streams
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if emptied {
                idx.remove(&stream);
            } else {
                idx.insert(stream, Arc::new(stream_info(stream, &new_meta)));
            }
        }
        if emptied {
            self.streams.remove(&stream);
            self.stream_ids.remove(&super::labels_key(&meta.labels));
        } else {
            self.streams.insert(stream, new_meta);
        }
        if let Some(s) = src {
            self.shared
                .sources
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(sid.clone(), s.clone());
            self.sources.insert(sid, s);
        }
        let m = &self.shared.metrics;
        m.retention_deleted.inc_by(deleted);
        m.store_records.dec_by(deleted as i64);
        m.store_streams.set(self.streams.len() as i64);
        Ok(deleted)
    }

    fn purge(&mut self, subscription: &str) -> Result<PurgeReport, StoreError> {
        let entries_cf = cf(&self.db, CF_ENTRIES)?;
        let streams_cf = cf(&self.db, CF_STREAMS)?;
        let mut batch = WriteBatch::default();
        let mut report = PurgeReport::default();
        let ids: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, m)| m.labels.get("subscription").map(String::as_str) == Some(subscription))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            batch.delete_range_cf(
                entries_cf,
                entry_bound(*id, i64::MIN),
                entry_bound(*id + 1, i64::MIN),
            );
            batch.delete_cf(streams_cf, stream_key(*id));
            report.streams += 1;
            report.records += self.streams.get(id).map_or(0, |m| m.records);
        }
        let (lo, hi) = (sub_prefix(subscription), sub_prefix_end(subscription));
        batch.delete_range_cf(cf(&self.db, CF_SEQS)?, &lo, &hi);
        batch.delete_range_cf(cf(&self.db, CF_SOURCES)?, &lo, &hi);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(batch, &wo)
            .map_err(|e| StoreError::storage("write purge batch", e))?;

        {
            let mut idx = self
                .shared
                .streams
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for id in &ids {
                idx.remove(id);
            }
        }
        for id in &ids {
            if let Some(m) = self.streams.remove(id) {
                self.stream_ids.remove(&super::labels_key(&m.labels));
            }
        }
        let before = self.sources.len();
        self.sources.retain(|(s, _), _| s != subscription);
        report.sources = (before - self.sources.len()) as u64;
        self.shared
            .sources
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(s, _), _| s != subscription);
        let m = &self.shared.metrics;
        m.store_records.dec_by(report.records as i64);
        m.store_streams.set(self.streams.len() as i64);
        for o in &self.shared.observers {
            o.subscription_purged(subscription);
        }

        // Reclaim the space in the background: the data is already unreadable.
        let db = self.db.clone();
        let sub = subscription.to_string();
        let spawned = std::thread::Builder::new()
            .name("purge-compaction".into())
            .spawn(move || {
                if let Some(c) = db.cf_handle(CF_ENTRIES) {
                    for id in ids {
                        db.compact_range_cf(
                            c,
                            Some(entry_bound(id, i64::MIN)),
                            Some(entry_bound(id + 1, i64::MIN)),
                        );
                    }
                }
                for name in [CF_SEQS, CF_SOURCES] {
                    if let Some(c) = db.cf_handle(name) {
                        db.compact_range_cf(c, Some(sub_prefix(&sub)), Some(sub_prefix_end(&sub)));
                    }
                }
            });
        match spawned {
            Ok(h) => {
                self.background.retain(|h| !h.is_finished());
                self.background.push(h);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start purge compaction; space is reclaimed by normal compaction")
            }
        }
        Ok(report)
    }
}

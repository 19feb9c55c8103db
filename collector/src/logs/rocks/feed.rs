//! The commit feed: which records each group commit stored, per
//! subscription, in commit order, written in the same `WriteBatch` as the
//! records themselves. A consumer that evaluates stored records off the
//! commit path (the notifier) reads it to catch up after a restart, a
//! crash or an overflow of its in-memory queue, and trims what it has
//! evaluated. It exists only while [`StoreConfig::feed`] is on.
//!
//! Why a feed and not the records' seqs: records of one source commit out
//! of seq order (a shipper has several batches in flight) and seqs have
//! gaps (records filtered at the node), so "everything up to seq N" is not
//! something a consumer can know from seqs. The commit counter is
//! assigned by the single writer thread, so "every record of commits up to
//! C" is exact; a consumer persists the last position it evaluated
//! (`(commit, index)`) and asks for what follows.
//!
//! # Layout
//!
//! | column family | key | value |
//! |---|---|---|
//! | `feed` | subscription, `0`, commit u64 BE | `[1u8 version][committed_at i64 BE]` then per new record of the subscription in that commit, in commit order: `[key length u8][its entries key]` |
//! | `meta` | `next_commit` | the next commit number, u64 BE (commits start at 1) |
//!
//! Over ClickHouse (`--storage clickhouse`) the records are not in this
//! database: the ClickHouse writer keeps the feed here itself, each value
//! holding its records inline (`[2u8][committed_at i64 BE]` then the
//! MessagePack of `[(epoch, record), ...]`), numbered by `meta`
//! `ch_feed_next`. Its commits are written *before* the ClickHouse insert
//! (synced, with `meta` `ch_feed_pending` naming the commit and its
//! subscriptions) and published after it succeeded; a failed insert
//! deletes them. After a crash between the two, the store's next open
//! keeps of the pending commit exactly the records ClickHouse holds
//! ([`Store::feed_settle_pending`]): those were stored, and a re-send of
//! them is a duplicate that no commit carries again.
//!
//! A record's feed position is (commit, its index in the commit's list).
//! Records the store no longer holds when the feed is read (retention
//! deleted them: the consumer lagged by more than the retention) are
//! reported as missing and skipped. Terminating a subscription deletes its
//! feed with its records. A store opened without the feed (the notifier
//! off) drops what an earlier run left of it: nobody would consume it.
//!
//! [`StoreConfig::feed`]: super::StoreConfig::feed

use rocksdb::{Direction, IteratorMode, ReadOptions};
use schemas::{Body, Record};

use super::keys::{parse_entry_key, sub_prefix, sub_prefix_end};
use super::{cf, Store, StoreError, CF_ENTRIES, CF_META, ENTRY_V1};

pub(crate) const CF_FEED: &str = "feed";
pub(crate) const META_NEXT_COMMIT: &[u8] = b"next_commit";
/// The next commit of the feed the ClickHouse writer keeps (see above).
const META_CH_NEXT: &[u8] = b"ch_feed_next";
/// The ClickHouse writer's commit written but not yet inserted: commit
/// u64 BE, then its subscriptions, each `[length u8][name]`.
const META_CH_PENDING: &[u8] = b"ch_feed_pending";
const FEED_V1: u8 = 1;
/// Records inline (the ClickHouse writer's feed).
const FEED_V2: u8 = 2;
const HEADER: usize = 9;
/// Entries fetched at once by [`Store::feed_read_within`].
const FEED_READ_CHUNK: usize = 256;

/// A stored record with the outbox epoch of its batch.
pub type EpochRecord = (String, Record);

/// The records of one subscription in one commit, as a feed value holds
/// them.
enum Listed<'a> {
    /// Keys of this store's `entries`.
    Keys(Vec<&'a [u8]>),
    /// The records themselves (MessagePack of [`EpochRecord`]s).
    Inline(std::sync::Arc<Vec<EpochRecord>>),
}

/// A decoded inline commit: (subscription, commit, its records).
type Decoded = (String, u64, std::sync::Arc<Vec<EpochRecord>>);

/// The last inline commit decoded. Short critical sections.
#[derive(Default)]
pub(crate) struct InlineCache(std::sync::Mutex<Option<Decoded>>);

impl InlineCache {
    fn get(&self, sub: &str, commit: u64) -> Option<std::sync::Arc<Vec<EpochRecord>>> {
        let c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        c.as_ref()
            .filter(|(s, n, _)| s == sub && *n == commit)
            .map(|(_, _, r)| r.clone())
    }

    fn put(&self, sub: &str, commit: u64, records: std::sync::Arc<Vec<EpochRecord>>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((sub.to_string(), commit, records));
    }
}

impl Listed<'_> {
    fn len(&self) -> usize {
        match self {
            Listed::Keys(k) => k.len(),
            Listed::Inline(r) => r.len(),
        }
    }
}

/// A position in the feed: a record's commit and its index among the
/// subscription's records of that commit. `(0, 0)` lies before every
/// record (commits start at 1).
pub type Position = (u64, u32);

/// `feed` key of `subscription`'s records of `commit`.
pub(crate) fn feed_key(subscription: &str, commit: u64) -> Vec<u8> {
    let mut k = sub_prefix(subscription);
    k.extend_from_slice(&commit.to_be_bytes());
    k
}

/// Appends one `entries` key to a commit's list.
pub(crate) fn push_entry(list: &mut Vec<u8>, key: &[u8]) {
    if list.is_empty() {
        list.resize(HEADER, 0);
        list[0] = FEED_V1;
    }
    list.push(key.len() as u8);
    list.extend_from_slice(key);
}

/// Stamps a list made by [`push_entry`] with its commit time.
pub(crate) fn stamp(list: &mut [u8], committed_at: i64) {
    if list.len() >= HEADER {
        list[1..HEADER].copy_from_slice(&committed_at.to_be_bytes());
    }
}

/// The commit time and the records of a feed value; `None` if it is
/// malformed.
fn parse_value(v: &[u8]) -> Option<(i64, Listed<'_>)> {
    if v.len() < HEADER {
        return None;
    }
    let at = i64::from_be_bytes(v[1..HEADER].try_into().ok()?);
    match v[0] {
        FEED_V1 => {}
        FEED_V2 => {
            let records = schemas::from_msgpack(&v[HEADER..]).ok()?;
            return Some((at, Listed::Inline(std::sync::Arc::new(records))));
        }
        _ => return None,
    }
    let mut keys = Vec::new();
    let mut rest = &v[HEADER..];
    while let Some((&len, tail)) = rest.split_first() {
        let key = tail.get(..len as usize)?;
        keys.push(key);
        rest = &tail[len as usize..];
    }
    Some((at, Listed::Keys(keys)))
}

/// A V2 feed value: `records` inline, committed at `at`.
fn inline_value(at: i64, records: &[(&str, &Record)]) -> Result<Vec<u8>, StoreError> {
    let mut v = Vec::with_capacity(HEADER + 64 * records.len());
    v.push(FEED_V2);
    v.extend_from_slice(&at.to_be_bytes());
    schemas::write_msgpack(&mut v, records)
        .map_err(|e| StoreError::storage("encode feed records", e))?;
    Ok(v)
}

fn u64_meta(db: &rocksdb::DB, key: &[u8]) -> Result<Option<u64>, StoreError> {
    let meta = cf(db, CF_META)?;
    match db
        .get_cf(meta, key)
        .map_err(|e| StoreError::storage("read feed meta", e))?
    {
        None => Ok(None),
        Some(v) => Ok(v
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)),
    }
}

fn commit_of(key: &[u8], prefix_len: usize) -> Option<u64> {
    Some(u64::from_be_bytes(
        key.get(prefix_len..prefix_len + 8)?.try_into().ok()?,
    ))
}

/// The body of a stored line of `kind`.
fn body_from_line(kind: &str, line: &[u8]) -> Option<Body> {
    Some(match kind {
        "log" => Body::Log(serde_json::from_slice(line).ok()?),
        "execution" => Body::Execution(Box::new(serde_json::from_slice(line).ok()?)),
        "health" => Body::Health(serde_json::from_slice(line).ok()?),
        "config" => Body::Config(serde_json::from_slice(line).ok()?),
        "system" => Body::System(serde_json::from_slice(line).ok()?),
        _ => return None,
    })
}

/// One record read back from the feed.
#[derive(Debug, Clone)]
pub struct FeedEntry {
    pub position: Position,
    /// When its commit was made (Unix ns).
    pub committed_at: i64,
    pub record: Record,
}

/// What [`Store::feed_read`] found.
#[derive(Debug, Default)]
pub struct FeedBatch {
    pub records: Vec<FeedEntry>,
    /// Records in the feed the store no longer holds (skipped).
    pub missing: u64,
    /// The position of the last record looked at (read or missing).
    pub last: Option<Position>,
    /// Nothing follows `last` (at the time of the read).
    pub end: bool,
}

/// How much of a subscription's feed lies after a position.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FeedBacklog {
    pub records: u64,
    /// Commit time of the oldest of them.
    pub oldest: Option<i64>,
}

impl Store {
    /// The subscriptions that have records in the feed.
    pub fn feed_subscriptions(&self) -> Result<Vec<String>, StoreError> {
        let db = &self.inner.db;
        let feed = cf(db, CF_FEED)?;
        let mut out = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let mut it = db.iterator_cf(feed, IteratorMode::From(&from, Direction::Forward));
            let Some(item) = it.next() else { break };
            let (k, _) = item.map_err(|e| StoreError::storage("read feed", e))?;
            let Some(end) = k.iter().position(|b| *b == 0) else {
                break;
            };
            let sub = String::from_utf8_lossy(&k[..end]).into_owned();
            from = sub_prefix_end(&sub);
            out.push(sub);
        }
        Ok(out)
    }

    /// Calls `f` with each commit of `subscription`'s feed from `from`
    /// on: (commit, committed_at, its records); stops when `f` says so.
    fn feed_walk(
        &self,
        subscription: &str,
        from: u64,
        mut f: impl FnMut(u64, i64, Listed<'_>) -> bool,
    ) -> Result<bool, StoreError> {
        let db = &self.inner.db;
        let feed = cf(db, CF_FEED)?;
        let prefix_len = subscription.len() + 1;
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(sub_prefix_end(subscription));
        // Only commits whose state is published: a later one is written
        // but may name streams that `streams.get` below does not know yet.
        let published = self
            .inner
            .shared
            .published_commit
            .load(std::sync::atomic::Ordering::Acquire);
        let mut it = db.raw_iterator_cf_opt(feed, opts);
        it.seek(feed_key(subscription, from));
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            let commit = commit_of(k, prefix_len);
            if commit.is_some_and(|c| c > published) {
                break;
            }
            let cache = &self.inner.feed_cache;
            let parsed = match commit {
                Some(c) if v.first() == Some(&FEED_V2) && v.len() >= HEADER => {
                    match cache.get(subscription, c) {
                        Some(records) => v[1..HEADER]
                            .try_into()
                            .ok()
                            .map(|at| (i64::from_be_bytes(at), Listed::Inline(records))),
                        None => {
                            let parsed = parse_value(v);
                            if let Some((_, Listed::Inline(records))) = &parsed {
                                cache.put(subscription, c, records.clone());
                            }
                            parsed
                        }
                    }
                }
                _ => parse_value(v),
            };
            match (commit, parsed) {
                (Some(c), Some((at, listed))) => {
                    if !f(c, at, listed) {
                        return Ok(false);
                    }
                }
                _ => tracing::error!(
                    subscription,
                    "malformed feed entry skipped (its records are not replayed)"
                ),
            }
            it.next();
        }
        it.status()
            .map_err(|e| StoreError::storage("read feed", e))?;
        Ok(true)
    }

    /// At most `max` records of `subscription` after `after`, in commit
    /// order, rebuilt from the stored entries.
    pub fn feed_read(
        &self,
        subscription: &str,
        after: Position,
        max: usize,
    ) -> Result<FeedBatch, StoreError> {
        self.feed_read_within(subscription, after, max, usize::MAX)
    }

    /// [`Store::feed_read`] that stops after the entry that brings the
    /// stored bytes read to `max_bytes` (at least one is read; entries
    /// are fetched [`FEED_READ_CHUNK`] at a time, so a read of large
    /// records never holds more than that many beyond the bound). Feeds
    /// that hold their records inline stop after the record that brings
    /// their weight in memory (`notifier::record_bytes`) to `max_bytes`.
    pub fn feed_read_within(
        &self,
        subscription: &str,
        after: Position,
        max: usize,
        max_bytes: usize,
    ) -> Result<FeedBatch, StoreError> {
        let mut out = FeedBatch::default();
        // (position, committed_at, entries key) of what to read.
        let mut wanted: Vec<(Position, i64, Vec<u8>)> = Vec::new();
        // What the feed holds inline, in feed order before `wanted`'s
        // (a feed is written by one writer: all of one kind).
        let mut inline: Vec<FeedEntry> = Vec::new();
        // Their weight in memory (at least one record is read).
        let mut inline_bytes = 0usize;
        let max = max.max(1);
        let end = self.feed_walk(subscription, after.0, |commit, at, listed| {
            let n = listed.len();
            let records = match listed {
                Listed::Keys(keys) => {
                    for (i, k) in keys.into_iter().enumerate() {
                        let pos = (commit, i as u32);
                        if pos <= after {
                            continue;
                        }
                        if wanted.len() + inline.len() == max {
                            return false;
                        }
                        wanted.push((pos, at, k.to_vec()));
                    }
                    return true;
                }
                Listed::Inline(records) => records,
            };
            for (i, (_, record)) in records.iter().enumerate().take(n) {
                let position = (commit, i as u32);
                if position <= after {
                    continue;
                }
                if wanted.len() + inline.len() == max
                    || (!inline.is_empty() && inline_bytes >= max_bytes)
                {
                    return false;
                }
                inline_bytes = inline_bytes.saturating_add(notifier::record_bytes(record));
                inline.push(FeedEntry {
                    position,
                    committed_at: at,
                    record: record.clone(),
                });
            }
            true
        })?;
        out.end = end;
        if !inline.is_empty() {
            out.last = inline.last().map(|e| e.position);
            out.records = inline;
            return Ok(out);
        }
        let db = &self.inner.db;
        let entries = cf(db, CF_ENTRIES)?;
        let mut bytes = 0usize;
        for chunk in wanted.chunks(FEED_READ_CHUNK) {
            if bytes >= max_bytes {
                // Stopped at the byte bound: more may follow.
                out.end = false;
                break;
            }
            let values = db.batched_multi_get_cf(entries, chunk.iter().map(|w| &w.2), false);
            for ((position, committed_at, key), value) in chunk.iter().zip(values) {
                if bytes >= max_bytes {
                    out.end = false;
                    break;
                }
                let value = value.map_err(|e| StoreError::storage("read feed entries", e))?;
                bytes += value.as_ref().map_or(0, |v| v.len());
                out.last = Some(*position);
                let record = value.and_then(|v| {
                    let parts = parse_entry_key(key)?;
                    let stream = self.inner.shared.streams.get(subscription, parts.stream)?;
                    let line = match v.split_first() {
                        Some((&ENTRY_V1, line)) => line,
                        _ => return None,
                    };
                    let kind = stream.labels.get("kind")?;
                    Some(Record {
                        seq: parts.seq,
                        ts: parts.ts,
                        source: stream.labels.get("source")?.clone(),
                        subscription: subscription.to_string(),
                        body: body_from_line(kind, line)?,
                    })
                });
                match record {
                    Some(record) => out.records.push(FeedEntry {
                        position: *position,
                        committed_at: *committed_at,
                        record,
                    }),
                    None => out.missing += 1,
                }
            }
        }
        Ok(out)
    }

    /// How many records of `subscription`'s feed lie after `after`.
    pub fn feed_backlog(
        &self,
        subscription: &str,
        after: Position,
    ) -> Result<FeedBacklog, StoreError> {
        let mut b = FeedBacklog::default();
        self.feed_walk(subscription, after.0, |commit, at, listed| {
            let n = (0..listed.len())
                .filter(|i| (commit, *i as u32) > after)
                .count() as u64;
            if n > 0 {
                b.records += n;
                b.oldest.get_or_insert(at);
            }
            true
        })?;
        Ok(b)
    }

    /// The commit [`Store::feed_begin`] hands out next (every commit
    /// before it is finished once the store is open: a pending one was
    /// settled at open).
    pub fn feed_next_commit(&self) -> Result<u64, StoreError> {
        Ok(u64_meta(&self.inner.db, META_CH_NEXT)?.unwrap_or(1).max(1))
    }

    /// For a writer that keeps its records elsewhere (the ClickHouse
    /// store): writes one commit of `records` (per subscription, in
    /// commit order, each with its batch's epoch), synced and marked
    /// pending, before the records are stored there. Returns the commit;
    /// [`Store::feed_finish`] must follow. With no records, only takes
    /// the next commit number. Blocking.
    pub fn feed_begin(&self, records: &[(&str, Vec<(&str, &Record)>)]) -> Result<u64, StoreError> {
        let db = &self.inner.db;
        let (feed, meta) = (cf(db, CF_FEED)?, cf(db, CF_META)?);
        let commit = u64_meta(db, META_CH_NEXT)?.unwrap_or(1).max(1);
        let at = schemas::time::now_nanos();
        let mut b = rocksdb::WriteBatch::default();
        let mut pending = commit.to_be_bytes().to_vec();
        for (sub, list) in records {
            if list.is_empty() {
                continue;
            }
            b.put_cf(feed, feed_key(sub, commit), inline_value(at, list)?);
            let name = sub.as_bytes();
            // Subscription names are at most 200 bytes (checked at ingest).
            let len = u8::try_from(name.len())
                .map_err(|_| StoreError::storage("feed", "subscription name too long"))?;
            pending.push(len);
            pending.extend_from_slice(name);
        }
        // Nothing to settle after a crash when no records were written
        // (only a number taken: unsynced, a kill -9 keeps it; a power cut
        // may hand it out again, to records evaluated in memory only).
        let any = pending.len() > 8;
        if any {
            b.put_cf(meta, META_CH_PENDING, pending);
        }
        b.put_cf(meta, META_CH_NEXT, (commit + 1).to_be_bytes());
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(any);
        db.write_opt(b, &wo)
            .map_err(|e| StoreError::storage("write feed", e))?;
        Ok(commit)
    }

    /// Ends a commit of [`Store::feed_begin`]: `stored` (its records are
    /// where they belong: the commit stays, and readers may read it) or
    /// not (it is deleted). Blocking.
    pub fn feed_finish(&self, commit: u64, stored: bool) -> Result<(), StoreError> {
        let db = &self.inner.db;
        let (feed, meta) = (cf(db, CF_FEED)?, cf(db, CF_META)?);
        let mut b = rocksdb::WriteBatch::default();
        if !stored {
            for sub in self.pending_subscriptions(commit)? {
                b.delete_cf(feed, feed_key(&sub, commit));
            }
        }
        b.delete_cf(meta, META_CH_PENDING);
        db.write(b)
            .map_err(|e| StoreError::storage("finish feed commit", e))?;
        if stored {
            self.inner
                .shared
                .published_commit
                .fetch_max(commit, std::sync::atomic::Ordering::AcqRel);
        }
        Ok(())
    }

    /// The subscriptions of the pending commit `commit` (none if another
    /// or none is pending).
    fn pending_subscriptions(&self, commit: u64) -> Result<Vec<String>, StoreError> {
        let db = &self.inner.db;
        let Some(v) = db
            .get_cf(cf(db, CF_META)?, META_CH_PENDING)
            .map_err(|e| StoreError::storage("read feed meta", e))?
        else {
            return Ok(Vec::new());
        };
        let at = v
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes);
        if at != Some(commit) {
            return Ok(Vec::new());
        }
        let mut subs = Vec::new();
        let mut rest = &v[8..];
        while let Some((&len, tail)) = rest.split_first() {
            let Some(name) = tail.get(..len as usize) else {
                break;
            };
            subs.push(String::from_utf8_lossy(name).into_owned());
            rest = &tail[len as usize..];
        }
        Ok(subs)
    }

    /// At open, for a writer that keeps its records elsewhere: settles a
    /// commit left pending by a crash. `stored` answers, for the pending
    /// records (subscription, source, epoch, seq), which are stored where
    /// they belong; the commit keeps exactly those. Then the feed is
    /// published up to its last commit. Blocking.
    pub fn feed_settle_pending<E>(
        &self,
        stored: impl FnOnce(
            &[(String, String, String, u64)],
        )
            -> Result<std::collections::HashSet<(String, String, String, u64)>, E>,
    ) -> Result<Option<(u64, usize, usize)>, E>
    where
        E: From<StoreError>,
    {
        let db = &self.inner.db;
        let next = u64_meta(db, META_CH_NEXT)?.unwrap_or(1).max(1);
        let pending = match db
            .get_cf(cf(db, CF_META)?, META_CH_PENDING)
            .map_err(|e| StoreError::storage("read feed meta", e))?
        {
            Some(v) => v
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes),
            None => None,
        };
        let publish = |p: u64| {
            self.inner
                .shared
                .published_commit
                .fetch_max(p, std::sync::atomic::Ordering::AcqRel);
        };
        let Some(commit) = pending else {
            publish(next - 1);
            return Ok(None);
        };
        let feed = cf(db, CF_FEED)?;
        let mut lists: Vec<(String, i64, Vec<EpochRecord>)> = Vec::new();
        for sub in self.pending_subscriptions(commit)? {
            let v = db
                .get_cf(feed, feed_key(&sub, commit))
                .map_err(|e| StoreError::storage("read feed", e))?;
            if let Some((at, Listed::Inline(records))) = v.as_deref().and_then(parse_value) {
                lists.push((sub, at, records.to_vec()));
            }
        }
        let keys: Vec<(String, String, String, u64)> = lists
            .iter()
            .flat_map(|(sub, _, records)| {
                records
                    .iter()
                    .map(|(epoch, r)| (sub.clone(), r.source.clone(), epoch.clone(), r.seq))
            })
            .collect();
        let present = stored(&keys)?;
        let (mut kept, mut dropped) = (0, 0);
        let mut b = rocksdb::WriteBatch::default();
        for (sub, at, records) in &lists {
            let keep: Vec<(&str, &Record)> = records
                .iter()
                .filter(|(epoch, r)| {
                    present.contains(&(sub.clone(), r.source.clone(), epoch.clone(), r.seq))
                })
                .map(|(epoch, r)| (epoch.as_str(), r))
                .collect();
            kept += keep.len();
            dropped += records.len() - keep.len();
            if keep.is_empty() {
                b.delete_cf(feed, feed_key(sub, commit));
            } else {
                b.put_cf(feed, feed_key(sub, commit), inline_value(*at, &keep)?);
            }
        }
        b.delete_cf(cf(db, CF_META)?, META_CH_PENDING);
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        db.write_opt(b, &wo)
            .map_err(|e| StoreError::storage("settle feed commit", e))?;
        publish(next - 1);
        Ok(Some((commit, kept, dropped)))
    }

    /// Forgets `subscription`'s commits before `before` (evaluated).
    pub fn feed_trim(&self, subscription: &str, before: u64) -> Result<(), StoreError> {
        let db = &self.inner.db;
        db.delete_range_cf(
            cf(db, CF_FEED)?,
            feed_key(subscription, 0),
            feed_key(subscription, before),
        )
        .map_err(|e| StoreError::storage("trim feed", e))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use schemas::{EventType, ExecutionBody, Level, LogBody};

    use super::super::{IngestObserver, StoreConfig};
    use super::*;
    use crate::logs::ingest::{prepare, DecodedBatch, IngestLimits};
    use crate::telemetry::Metrics;

    type Seen = Arc<Mutex<Vec<(u64, Vec<Record>)>>>;

    /// Remembers what the writer handed over with each commit.
    struct Tap(Seen);

    impl IngestObserver for Tap {
        fn committed(&self, _records: &[Record]) {
            panic!("with a feed, records come with their commit");
        }
        fn committed_feed(&self, commit: u64, records: Arc<Vec<Record>>) {
            self.0.lock().unwrap().push((commit, records.to_vec()));
        }
    }

    fn open(path: &std::path::Path, seen: &Seen) -> Store {
        let config = StoreConfig {
            feed: true,
            ..StoreConfig::default()
        };
        let tap: Arc<dyn IngestObserver> = Arc::new(Tap(seen.clone()));
        Store::open(path, config, Metrics::default(), vec![tap]).expect("open")
    }

    /// A fixed time a minute ago (a re-sent record must be identical).
    /// (position, seq) of each record read.
    fn positions(read: &FeedBatch) -> Vec<(Position, u64)> {
        read.records
            .iter()
            .map(|e| (e.position, e.record.seq))
            .collect()
    }

    fn base() -> i64 {
        static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
        *BASE.get_or_init(|| schemas::time::now_nanos() - 60_000_000_000)
    }

    fn rec(sub: &str, source: &str, seq: u64, body: Body) -> Record {
        Record {
            seq,
            ts: base() + seq as i64,
            source: source.into(),
            subscription: sub.into(),
            body,
        }
    }

    fn log(m: &str) -> Body {
        Body::Log(LogBody {
            level: Level::Info,
            target: "t".into(),
            message: m.into(),
            fields: Default::default(),
        })
    }

    fn failed(pipe: &str) -> Body {
        let mut e = ExecutionBody::new(pipe, EventType::PumpFailed);
        e.reason_why_stopped = Some("boom".into());
        Body::Execution(Box::new(e))
    }

    async fn ingest(store: &Store, records: Vec<Record>) {
        let batch = DecodedBatch {
            epoch: String::new(),
            source: records[0].source.clone(),
            subscription: records[0].subscription.clone(),
            records,
            dropped: 0,
        };
        let now = schemas::time::now_nanos();
        let p = prepare(batch, &IngestLimits::default(), now, 0, true).expect("prepare");
        store.ingest(p).await.expect("ingest");
    }

    #[tokio::test]
    async fn the_feed_lists_each_commit_in_order_and_reads_back_what_was_stored() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Seen::default();
        let store = open(dir.path(), &seen);
        // Out of seq order, with gaps, two sources and two subscriptions.
        ingest(
            &store,
            vec![
                rec("a", "n1", 5, log("five")),
                rec("a", "n1", 9, failed("p")),
            ],
        )
        .await;
        ingest(&store, vec![rec("a", "n1", 2, log("two"))]).await;
        ingest(&store, vec![rec("b", "n2", 1, log("other tenant"))]).await;
        ingest(&store, vec![rec("a", "n1", 5, log("five"))]).await; // a duplicate: not in the feed
        ingest(&store, vec![rec("a", "n3", 1, failed("q"))]).await;

        let handed = seen.lock().unwrap().clone();
        let commits: Vec<u64> = handed.iter().map(|(c, _)| *c).collect();
        assert_eq!(
            commits,
            vec![1, 2, 3, 4],
            "one commit number per group with new records"
        );
        assert_eq!(store.feed_subscriptions().unwrap(), vec!["a", "b"]);

        let all = store.feed_read("a", (0, 0), 100).unwrap();
        assert!(all.end);
        assert_eq!(all.missing, 0);
        let got: Vec<(Position, u64, String)> = all
            .records
            .iter()
            .map(|e| (e.position, e.record.seq, e.record.source.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ((1, 0), 5, "n1".into()),
                ((1, 1), 9, "n1".into()),
                ((2, 0), 2, "n1".into()),
                ((4, 0), 1, "n3".into()),
            ]
        );
        // What is read back equals what the writer handed over.
        let handed_a: Vec<Record> = handed
            .iter()
            .flat_map(|(_, rs)| rs.iter().filter(|r| r.subscription == "a").cloned())
            .collect();
        let read_a: Vec<Record> = all.records.iter().map(|e| e.record.clone()).collect();
        assert_eq!(read_a, handed_a);

        // Reading on from a position, in pieces.
        let part = store.feed_read("a", (1, 0), 2).unwrap();
        assert!(!part.end);
        assert_eq!(part.last, Some((2, 0)));
        assert_eq!(part.records.len(), 2);
        let rest = store.feed_read("a", (2, 0), 2).unwrap();
        assert!(rest.end);
        assert_eq!(rest.records.len(), 1);
        assert_eq!(
            store.feed_backlog("a", (1, 1)).unwrap().records,
            2,
            "commits 2 and 4 follow"
        );

        // A commit the writer has written but not published yet is not
        // read (its new streams are unknown to readers until then):
        // commit 4 stands for one here.
        let published = &store.inner.shared.published_commit;
        assert_eq!(published.load(std::sync::atomic::Ordering::Acquire), 4);
        published.store(3, std::sync::atomic::Ordering::Release);
        let before = store.feed_read("a", (2, 0), 10).unwrap();
        assert!(before.end, "nothing else readable yet");
        assert!(before.records.is_empty(), "commit 4 is not published");
        published.store(4, std::sync::atomic::Ordering::Release);
        let after = store.feed_read("a", (2, 0), 10).unwrap();
        assert_eq!(after.last, Some((4, 0)));

        // Trimming forgets whole commits; the next commit number survives a
        // reopen even when the feed is empty.
        store.feed_trim("a", 5).unwrap();
        store.feed_trim("b", 5).unwrap();
        assert!(store.feed_subscriptions().unwrap().is_empty());
        store.close();
        drop(store);
        let store = open(dir.path(), &seen);
        ingest(&store, vec![rec("a", "n1", 10, log("after"))]).await;
        assert_eq!(seen.lock().unwrap().last().unwrap().0, 5);
        let after = store.feed_read("a", (4, 0), 10).unwrap();
        assert_eq!(after.records.len(), 1);
        assert_eq!(after.records[0].position, (5, 0));
    }

    #[tokio::test]
    async fn records_gone_from_the_store_are_reported_missing_and_a_purge_empties_the_feed() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Seen::default();
        let store = open(dir.path(), &seen);
        ingest(
            &store,
            vec![rec("a", "n1", 1, log("x")), rec("a", "n1", 2, log("y"))],
        )
        .await;
        // Retention deletes the records (the consumer lagged past it).
        for s in store.streams() {
            store.expire(s.id, i64::MAX, 100).await.unwrap();
        }
        let r = store.feed_read("a", (0, 0), 10).unwrap();
        assert_eq!((r.records.len(), r.missing, r.last), (0, 2, Some((1, 1))));
        ingest(&store, vec![rec("a", "n1", 3, log("z"))]).await;
        store.purge("a").await.unwrap();
        assert!(store.feed_subscriptions().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_store_opened_without_the_feed_drops_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Seen::default();
        let store = open(dir.path(), &seen);
        ingest(&store, vec![rec("a", "n1", 1, failed("p"))]).await;
        assert_eq!(store.feed_subscriptions().unwrap(), vec!["a"]);
        store.close();
        drop(store);
        let store = Store::open(
            dir.path(),
            StoreConfig::default(),
            Metrics::default(),
            vec![],
        )
        .expect("open without the feed");
        assert!(store.feed_subscriptions().unwrap().is_empty());
        ingest(&store, vec![rec("a", "n1", 2, failed("p"))]).await;
        assert!(
            store.feed_subscriptions().unwrap().is_empty(),
            "nothing written"
        );
        store.close();
        drop(store);
        // On again: commit numbers go on from where they were.
        let store = open(dir.path(), &seen);
        ingest(&store, vec![rec("a", "n1", 3, failed("p"))]).await;
        assert_eq!(seen.lock().unwrap().last().unwrap().0, 2);
    }

    /// The feed another writer keeps here (the ClickHouse store): records
    /// inline, a commit pending until its insert, read like the own feed.
    #[tokio::test]
    async fn an_inline_feed_is_published_after_its_insert_and_a_crash_keeps_what_was_stored() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Seen::default();
        let store = open(dir.path(), &seen);
        let (r1, r2, r3) = (
            rec("a", "n1", 7, failed("p")),
            rec("a", "n1", 8, log("eight")),
            rec("b", "n2", 1, failed("q")),
        );
        // Two subscriptions in one commit; published only when finished.
        let c1 = store
            .feed_begin(&[
                ("a", vec![("e1", &r1), ("e1", &r2)]),
                ("b", vec![("", &r3)]),
            ])
            .unwrap();
        assert_eq!(c1, 1);
        assert!(store.feed_read("a", (0, 0), 10).unwrap().records.is_empty());
        store.feed_finish(c1, true).unwrap();
        let read = store.feed_read("a", (0, 0), 10).unwrap();
        let got = positions(&read);
        assert_eq!(got, vec![((1, 0), 7), ((1, 1), 8)]);
        assert!(read.end);
        assert_eq!(read.records[0].record.body, r1.body);
        // Read in pieces, after a position.
        let after = store.feed_read("a", (1, 0), 10).unwrap();
        assert_eq!(after.records.len(), 1);
        assert_eq!(after.last, Some((1, 1)));
        let one = store.feed_read("a", (0, 0), 1).unwrap();
        assert_eq!((one.records.len(), one.end), (1, false));
        // Bounded in bytes too: at least one record, then stop.
        let small = store.feed_read_within("a", (0, 0), 10, 1).unwrap();
        assert_eq!((small.records.len(), small.end), (1, false));
        assert_eq!(small.last, Some((1, 0)));
        let rest = store.feed_read_within("a", (1, 0), 10, 1).unwrap();
        assert_eq!(positions(&rest), vec![((1, 1), 8)]);
        // Chunk by chunk (the decoded commit is kept between reads).
        let (mut at, mut seqs) = ((0, 0), Vec::new());
        loop {
            let r = store.feed_read("a", at, 1).unwrap();
            seqs.extend(r.records.iter().map(|e| e.record.seq));
            match r.last {
                Some(l) if !r.records.is_empty() => at = l,
                _ => break,
            }
        }
        assert_eq!(seqs, vec![7, 8]);
        assert_eq!(
            store.feed_backlog("a", (1, 0)).unwrap().records,
            1,
            "one record after (1, 0)"
        );
        // A failed insert leaves nothing, and its number is not reused.
        let c2 = store.feed_begin(&[("a", vec![("e1", &r2)])]).unwrap();
        store.feed_finish(c2, false).unwrap();
        assert_eq!(store.feed_backlog("a", (1, 1)).unwrap().records, 0);

        // A crash between the feed write and the insert: the next open
        // keeps the records the other store holds, and publishes them.
        let (r4, r5) = (
            rec("a", "n1", 9, log("nine")),
            rec("a", "n1", 10, log("ten")),
        );
        let c3 = store
            .feed_begin(&[("a", vec![("e1", &r4), ("e1", &r5)])])
            .unwrap();
        assert!(c3 > c2);
        store.close();
        drop(store);
        let store = open(dir.path(), &seen);
        let mut asked = Vec::new();
        let settled = store
            .feed_settle_pending(|keys| {
                asked = keys.to_vec();
                Ok::<_, StoreError>(
                    keys.iter()
                        .filter(|k| k.3 == 10)
                        .cloned()
                        .collect::<std::collections::HashSet<_>>(),
                )
            })
            .unwrap();
        assert_eq!(settled, Some((c3, 1, 1)));
        assert_eq!(
            asked,
            vec![
                ("a".into(), "n1".into(), "e1".into(), 9),
                ("a".into(), "n1".into(), "e1".into(), 10)
            ]
        );
        let read = store.feed_read("a", (1, 1), 10).unwrap();
        let got = positions(&read);
        assert_eq!(got, vec![((c3, 0), 10)]);
        // Nothing pending any more; the next commit goes on after it.
        assert_eq!(
            store
                .feed_settle_pending(|_| -> Result<_, StoreError> { panic!("nothing pending") })
                .unwrap(),
            None
        );
        assert_eq!(
            store.feed_begin(&[("a", vec![("e1", &r5)])]).unwrap(),
            c3 + 1
        );
        store.feed_finish(c3 + 1, true).unwrap();
        // No records (no subscription wants them in the feed): a number
        // only, nothing pending.
        assert_eq!(store.feed_begin(&[("a", vec![])]).unwrap(), c3 + 2);
        assert!(store.pending_subscriptions(c3 + 2).unwrap().is_empty());
        store.feed_finish(c3 + 2, true).unwrap();
        assert_eq!(store.feed_backlog("a", (c3 + 1, 0)).unwrap().records, 0);
        store.feed_trim("a", u64::MAX).unwrap();
        assert_eq!(store.feed_subscriptions().unwrap(), vec!["b".to_string()]);
    }

    #[test]
    fn malformed_feed_values_are_refused() {
        assert!(parse_value(&[]).is_none());
        assert!(parse_value(&[2, 0, 0, 0, 0, 0, 0, 0, 0]).is_none());
        let mut list = Vec::new();
        push_entry(&mut list, &[7; 24]);
        push_entry(&mut list, &[8; 28]);
        stamp(&mut list, 42);
        let Some((at, Listed::Keys(keys))) = parse_value(&list) else {
            panic!("keys expected");
        };
        assert_eq!((at, keys.len(), keys[1].len()), (42, 2, 28));
        list.push(30); // a length running past the end
        assert!(parse_value(&list).is_none());
    }
}

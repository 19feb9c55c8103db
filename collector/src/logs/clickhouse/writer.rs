//! The ingest path of the ClickHouse backend: batches queue for one writer
//! task, which takes what is queued as a group and, per group, asks
//! ClickHouse once which of its (source, epoch, seq) are stored already,
//! decides per record (new, duplicate, conflict) exactly as the RocksDB
//! store does, then inserts the new records, their streams, their seqs
//! (the commit mark) and one row per batch, and answers every batch of
//! the group. Nothing is answered before ClickHouse acknowledged the
//! inserts.
//!
//! Exactly once without a single writer: two collectors may race on one
//! batch (a shipper's retry on another collector). Both may insert it; the
//! rows are identical, and `ReplacingMergeTree` keeps one; reads take one
//! row per key until the merge. Only the answers' counts (accepted vs
//! duplicates) can then disagree with what one collector alone would say.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use schemas::Record;
use tokio::sync::{mpsc, oneshot};

use super::client::{quote, ChError, RowReader, RowWriter};
use super::Shared;
use crate::logs::labels::FREE_FORM_LABEL;
use crate::logs::model::{IngestOutcome, PreparedBatch, StoreError};

/// Records one group carries at most (several batches, one insert per
/// table).
pub const MAX_GROUP_RECORDS: usize = 50_000;
/// How long a group under load waits for more batches.
const LINGER: Duration = Duration::from_millis(5);
/// A source's conflicts are told to the observers at most this often.
const CONFLICT_EVERY: Duration = Duration::from_secs(60);

pub(super) struct IngestOp {
    pub batch: PreparedBatch,
    pub reply: oneshot::Sender<Result<IngestOutcome, StoreError>>,
}

/// What this collector knows of one source: its epochs in the order they
/// started, each with the highest seq seen; the last is the current one.
#[derive(Debug, Default, Clone)]
struct SourceState {
    epochs: Vec<(String, u64)>,
}

/// What this collector knows of one subscription (loaded from ClickHouse
/// on its first batch, then kept up to date by this collector's own
/// inserts; another collector's new streams and sources are seen at the
/// next load, so the limits may be passed by what collectors ingest at
/// the same moment).
#[derive(Debug, Default)]
struct Tenant {
    streams: HashSet<u64>,
    free_form: usize,
    sources: HashMap<String, SourceState>,
}

pub(super) struct Writer {
    shared: Arc<Shared>,
    tenants: HashMap<String, Tenant>,
    told: HashMap<(String, String), Instant>,
}

type SeqKey = (String, String, String, u64);

/// A batch decided in a group: its reply, its outcome, its new records
/// (when kept for observers) and its epoch.
type Done = (
    oneshot::Sender<Result<IngestOutcome, StoreError>>,
    IngestOutcome,
    Option<Vec<Record>>,
    String,
);

enum Verdict {
    New,
    Duplicate,
    Conflict { field: String, detail: String },
}

impl Writer {
    pub fn new(shared: Arc<Shared>) -> Writer {
        Writer {
            shared,
            tenants: HashMap::new(),
            told: HashMap::new(),
        }
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<IngestOp>) {
        while let Some(op) = rx.recv().await {
            let mut n = op.batch.entries.len();
            let mut ops = vec![op];
            while n < MAX_GROUP_RECORDS {
                match rx.try_recv() {
                    Ok(op) => {
                        n += op.batch.entries.len();
                        ops.push(op);
                    }
                    Err(_) => break,
                }
            }
            // Under load (more than one batch was waiting), wait a moment
            // for the batches in flight behind them: every insert is a
            // part that ClickHouse merges again and again, so fewer,
            // larger groups cost it less. One batch alone goes at once.
            if ops.len() > 1 {
                let until = tokio::time::Instant::now() + LINGER;
                while n < MAX_GROUP_RECORDS {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(op)) => {
                            n += op.batch.entries.len();
                            ops.push(op);
                        }
                        _ => break,
                    }
                }
            }
            self.commit(ops).await;
        }
    }

    async fn load(&mut self, sub: &str) -> Result<(), ChError> {
        if self.tenants.contains_key(sub) {
            return Ok(());
        }
        let db = &self.shared.db;
        let c = &self.shared.client;
        let q = quote(sub);
        let streams = c
            .request(
                format!(
                    "SELECT stream, toUInt8(position(any(labels), {}) > 0) FROM {db}.streams \
                     WHERE subscription = {q} GROUP BY stream FORMAT RowBinary",
                    quote(&format!("\"{FREE_FORM_LABEL}\":"))
                ),
                None,
                &[],
            )
            .await?;
        let mut t = Tenant::default();
        let mut r = RowReader::new(&streams);
        while !r.done() {
            let id = r.u64()?;
            let free = r.u8()? != 0;
            t.streams.insert(id);
            if free {
                t.free_form += 1;
            }
        }
        let epochs = c
            .request(
                format!(
                    "SELECT source, epoch, max(last_seq), min(at) AS started FROM {db}.batches \
                     WHERE subscription = {q} GROUP BY source, epoch \
                     ORDER BY source, started FORMAT RowBinary"
                ),
                None,
                &[],
            )
            .await?;
        let mut r = RowReader::new(&epochs);
        while !r.done() {
            let source = r.string()?;
            let epoch = r.string()?;
            let last = r.u64()?;
            let _started = r.i64()?;
            t.sources
                .entry(source)
                .or_default()
                .epochs
                .push((epoch, last));
        }
        self.tenants.insert(sub.to_string(), t);
        Ok(())
    }

    /// The digests stored for the batches' seqs: one query per group, one
    /// `UNION ALL` branch per (subscription, source, epoch), each a single
    /// range of the table's sorting key (an `OR` of such ranges is not
    /// narrowed by the primary index on 18.16: it read the whole table).
    async fn stored(&self, ops: &[IngestOp]) -> Result<HashMap<SeqKey, u32>, ChError> {
        let mut ranges: HashMap<(&str, &str, &str), (u64, u64)> = HashMap::new();
        for op in ops {
            let b = &op.batch;
            for e in &b.entries {
                let r = ranges
                    .entry((&b.subscription, &b.source, &b.epoch))
                    .or_insert((e.seq, e.seq));
                r.0 = r.0.min(e.seq);
                r.1 = r.1.max(e.seq);
            }
        }
        let mut out = HashMap::new();
        if ranges.is_empty() {
            return Ok(out);
        }
        let sql = super::seqs_query(&self.shared.db, "seq, digest", &ranges);
        let body = self.shared.client.request(sql, None, &[]).await?;
        let mut r = RowReader::new(&body);
        while !r.done() {
            let k = (r.string()?, r.string()?, r.string()?, r.u64()?);
            out.insert(k, r.u32()?);
        }
        Ok(out)
    }

    async fn commit(&mut self, ops: Vec<IngestOp>) {
        let mut ready = Vec::with_capacity(ops.len());
        for op in ops {
            if let Err(e) = self.load(&op.batch.subscription).await {
                let _ = op
                    .reply
                    .send(Err(storage("read the subscription's state", e)));
                continue;
            }
            ready.push(op);
        }
        let stored = match self.stored(&ready).await {
            Ok(s) => s,
            Err(e) => {
                for op in ready {
                    let _ = op.reply.send(Err(storage("look up stored seqs", &e)));
                }
                return;
            }
        };
        let now = schemas::time::now_nanos();
        let mut g = Group::default();
        let mut seen: HashMap<SeqKey, u32> = HashMap::new();
        let mut done = Vec::new();
        let mut touched = HashSet::new();
        for op in ready {
            let IngestOp { batch, reply } = op;
            touched.insert(batch.subscription.clone());
            match self.add(&batch, &stored, &mut seen, &mut g, now) {
                Ok((outcome, is_new)) => {
                    let records = batch.records.map(|r| {
                        r.into_iter()
                            .zip(is_new)
                            .filter(|(_, n)| *n)
                            .map(|(r, _)| r)
                            .collect::<Vec<Record>>()
                    });
                    done.push((reply, outcome, records, batch.epoch));
                }
                Err(e) => {
                    if let StoreError::SourceConflict {
                        subscription,
                        source_name,
                        detail,
                        ..
                    } = &e
                    {
                        self.conflict(subscription, source_name, detail, now, &mut g);
                    }
                    let _ = reply.send(Err(e));
                }
            }
        }
        // The commit feed (evaluation off the commit path): its commit is
        // durable before the insert, published after it.
        let commit = match self.feed_begin(&done) {
            Ok(c) => c,
            Err(e) => {
                for (reply, ..) in done {
                    let _ = reply.send(Err(e.clone()));
                }
                return;
            }
        };
        let written = self.write(&g).await;
        if let (Some(c), Some(feed)) = (commit, &self.shared.feed) {
            let ok = written.is_ok();
            if let Err(e) = tokio::task::block_in_place(|| feed.feed_finish(c, ok)) {
                // Left pending: the next start keeps what ClickHouse holds.
                tracing::error!(commit = c, error = %e, "cannot finish the commit feed's commit");
            }
        }
        if let Err(e) = written {
            // What this collector believed of these subscriptions may be
            // ahead of ClickHouse now: read it again on the next batch.
            for s in &touched {
                self.tenants.remove(s);
            }
            for (reply, ..) in done {
                let _ = reply.send(Err(storage("insert into ClickHouse", &e)));
            }
            return;
        }
        let mut fed = Vec::new();
        for (reply, outcome, records, _) in done {
            if let Some(r) = records.filter(|r| !r.is_empty()) {
                match commit {
                    Some(_) => fed.extend(r),
                    None => {
                        for o in &self.shared.observers {
                            o.committed(&r);
                        }
                    }
                }
            }
            if outcome.overflowed > 0 {
                let m = &self.shared.metrics;
                m.stream_overflow_records.inc_by(outcome.overflowed);
            }
            let _ = reply.send(Ok(outcome));
        }
        if let Some(c) = commit {
            let records = Arc::new(fed);
            for o in &self.shared.observers {
                o.committed_feed(c, records.clone());
            }
        }
    }

    /// Writes the group's new records to the commit feed, if there is one
    /// and they are kept for observers; `None` when nothing was written.
    fn feed_begin(&self, done: &[Done]) -> Result<Option<u64>, StoreError> {
        let Some(feed) = &self.shared.feed else {
            return Ok(None);
        };
        // Per subscription, in the order the observers get them. A
        // subscription no observer needs in the feed (no notification
        // rules) gets an empty list: its records reach the observers in
        // memory only, and their positions in this commit hold nothing.
        let mut lists: Vec<(&str, Vec<(&str, &Record)>)> = Vec::new();
        let mut wanted: Vec<(&str, bool)> = Vec::new();
        let mut any = false;
        for (_, _, records, epoch) in done {
            for r in records.iter().flatten() {
                any = true;
                let sub = r.subscription.as_str();
                let want = match wanted.iter().find(|(s, _)| *s == sub) {
                    Some((_, w)) => *w,
                    None => {
                        let w = self.shared.observers.iter().any(|o| o.wants_feed(sub));
                        wanted.push((sub, w));
                        w
                    }
                };
                if !want {
                    continue;
                }
                let i = match lists.iter().position(|(s, _)| *s == sub) {
                    Some(i) => i,
                    None => {
                        lists.push((sub, Vec::new()));
                        lists.len() - 1
                    }
                };
                lists[i].1.push((epoch.as_str(), r));
            }
        }
        if !any {
            return Ok(None);
        }
        tokio::task::block_in_place(|| feed.feed_begin(&lists)).map(Some)
    }

    fn conflict(&mut self, sub: &str, source: &str, detail: &str, now: i64, g: &mut Group) {
        g.batch_row(sub, source, "", now, (0, 0), (0, 0, 0, 1), 0);
        let key = (sub.to_string(), source.to_string());
        let due = self
            .told
            .get(&key)
            .is_none_or(|t| t.elapsed() >= CONFLICT_EVERY);
        if due {
            self.told.insert(key, Instant::now());
            for o in &self.shared.observers {
                o.source_conflict(sub, source, detail);
            }
        }
    }

    /// Decides every record of `batch` and adds the new ones to `g`.
    fn add(
        &mut self,
        batch: &PreparedBatch,
        stored: &HashMap<SeqKey, u32>,
        seen: &mut HashMap<SeqKey, u32>,
        g: &mut Group,
        now: i64,
    ) -> Result<(IngestOutcome, Vec<bool>), StoreError> {
        let (max_sources, max_streams) = (self.shared.max_sources, self.shared.max_streams);
        let sub = batch.subscription.as_str();
        let tenant = self.tenants.entry(sub.to_string()).or_default();
        if !tenant.sources.contains_key(&batch.source) && tenant.sources.len() >= max_sources {
            self.shared.metrics.refuse_tenant(sub, "source_limit");
            return Err(StoreError::SourceLimit {
                subscription: sub.to_string(),
                source_name: batch.source.clone(),
                limit: max_sources,
            });
        }
        let src = tenant
            .sources
            .get(&batch.source)
            .cloned()
            .unwrap_or_default();
        let current = src.epochs.last().map(|(e, _)| e.as_str());
        let older = (current != Some(batch.epoch.as_str()))
            .then(|| src.epochs.iter().find(|(e, _)| *e == batch.epoch))
            .flatten()
            .map(|(_, last)| *last);
        let mut is_new = Vec::with_capacity(batch.entries.len());
        let mut local: HashMap<u64, u32> = HashMap::new();
        for (i, e) in batch.entries.iter().enumerate() {
            let key = (
                batch.subscription.clone(),
                batch.source.clone(),
                batch.epoch.clone(),
                e.seq,
            );
            let prior = local
                .get(&e.seq)
                .or_else(|| seen.get(&key))
                .or_else(|| stored.get(&key))
                .copied();
            let verdict = match (prior, older) {
                (Some(d), _) if d == e.digest => Verdict::Duplicate,
                (Some(_), _) => Verdict::Conflict {
                    field: format!("records[{i}]"),
                    detail: format!(
                        "seq {} of epoch {:?} was stored with other content (two outboxes share an epoch and a source, or the record changed before a re-send); nothing of the batch was stored",
                        e.seq, batch.epoch
                    ),
                },
                (None, Some(last)) if e.seq > last => Verdict::Conflict {
                    field: "epoch".into(),
                    detail: format!(
                        "epoch {:?} is older than the source's current epoch {:?} and seq {} is new to it: two live outboxes write this source (e.g. two nodes with the same --node-id); nothing of the batch was stored",
                        batch.epoch,
                        current.unwrap_or(""),
                        e.seq
                    ),
                },
                (None, _) => Verdict::New,
            };
            match verdict {
                Verdict::New => {
                    local.insert(e.seq, e.digest);
                    is_new.push(true);
                }
                Verdict::Duplicate => is_new.push(false),
                Verdict::Conflict { field, detail } => {
                    self.shared
                        .metrics
                        .source_conflicts
                        .get_or_create(&crate::telemetry::ReasonLabel {
                            reason: if field == "epoch" { "epoch" } else { "content" },
                        })
                        .inc();
                    return Err(StoreError::SourceConflict {
                        subscription: sub.to_string(),
                        source_name: batch.source.clone(),
                        field,
                        detail,
                    });
                }
            }
        }

        // The stream of each new record (the overflow stream once the
        // subscription has its limit of free-form streams).
        let mut outcome = IngestOutcome::default();
        let mut ids: Vec<Option<(u64, bool)>> = vec![None; batch.streams.len()];
        let mut first_seq = u64::MAX;
        let mut last_seq = 0;
        let mut newest = i64::MIN;
        for (e, new) in batch.entries.iter().zip(&is_new) {
            if !*new {
                outcome.duplicates += 1;
                continue;
            }
            let (id, over) = match ids.get(e.stream).copied().flatten() {
                Some(x) => x,
                None => {
                    let s = &batch.streams[e.stream];
                    let mut pick = (&s.labels, &s.key, s.overflowed);
                    let mut id = stream_id(&s.key);
                    if !tenant.streams.contains(&id) {
                        if let Some((ol, ok)) = &s.overflow {
                            if tenant.free_form >= max_streams {
                                pick = (ol, ok, true);
                                id = stream_id(ok);
                            }
                        }
                    }
                    if tenant.streams.insert(id) && pick.0.contains_key(FREE_FORM_LABEL) {
                        tenant.free_form += 1;
                    }
                    g.labels
                        .entry(id)
                        .or_insert_with(|| serde_json::to_string(pick.0).unwrap_or_default());
                    ids[e.stream] = Some((id, pick.2));
                    (id, pick.2)
                }
            };
            if over {
                outcome.overflowed += 1;
            }
            outcome.accepted += 1;
            seen.insert(
                (
                    batch.subscription.clone(),
                    batch.source.clone(),
                    batch.epoch.clone(),
                    e.seq,
                ),
                e.digest,
            );
            let line = match e.value.split_first() {
                Some((&crate::logs::model::ENTRY_V1, rest)) => rest,
                _ => &e.value[..],
            };
            g.record(sub, id, e.ts, &batch.source, &batch.epoch, e.seq, line);
            g.seq(sub, &batch.source, &batch.epoch, e.seq, e.digest, e.ts);
            let day = g
                .stream_days
                .entry((sub.to_string(), id, day_of(e.ts)))
                .or_default();
            day.0 += 1;
            day.1 += line.len() as u64;
            first_seq = first_seq.min(e.seq);
            last_seq = last_seq.max(e.seq);
            newest = newest.max(e.ts);
        }
        let state = tenant.sources.entry(batch.source.clone()).or_default();
        match state.epochs.iter_mut().find(|(e, _)| *e == batch.epoch) {
            Some((_, last)) => *last = (*last).max(last_seq),
            None => state.epochs.push((batch.epoch.clone(), last_seq)),
        }
        g.batch_row(
            sub,
            &batch.source,
            &batch.epoch,
            now,
            (if first_seq == u64::MAX { 0 } else { first_seq }, last_seq),
            (outcome.accepted, outcome.duplicates, batch.dropped, 0),
            if newest == i64::MIN { 0 } else { newest },
        );
        Ok((outcome, is_new))
    }

    async fn write(&self, g: &Group) -> Result<(), ChError> {
        let db = &self.shared.db;
        let c = &self.shared.client;
        // Streams and records first, seqs (the commit mark) after them,
        // the batch rows last.
        let mut streams = RowWriter::default();
        for ((sub, id, day), (n, bytes)) in &g.stream_days {
            streams.str(sub);
            streams.u64(*id);
            streams.date(*day);
            streams.str(g.labels.get(id).map_or("{}", String::as_str));
            streams.u64(*n);
            streams.u64(*bytes);
        }
        let inserts = [
            (
                format!(
                    "INSERT INTO {db}.streams (subscription, stream, day, labels, records, bytes) FORMAT RowBinary"
                ),
                streams.buf,
            ),
            (
                format!(
                    "INSERT INTO {db}.records (subscription, stream, ts, source, epoch, seq, line) FORMAT RowBinary"
                ),
                g.records.buf.clone(),
            ),
            (
                format!(
                    "INSERT INTO {db}.seqs (subscription, source, epoch, seq, digest, ts) FORMAT RowBinary"
                ),
                g.seqs.buf.clone(),
            ),
            (
                format!(
                    "INSERT INTO {db}.batches (subscription, source, epoch, at, first_seq, last_seq, accepted, duplicates, dropped, conflicts, newest_ts) FORMAT RowBinary"
                ),
                g.batches.buf.clone(),
            ),
        ];
        // Over a cluster, the insert answers once every shard has its rows.
        let settings: &[(&str, &str)] = if self.shared.layout.cluster.is_some() {
            &[("insert_distributed_sync", "1")]
        } else {
            &[]
        };
        for (sql, data) in inserts {
            if data.is_empty() {
                continue;
            }
            c.request(sql, Some(data), settings).await?;
        }
        Ok(())
    }
}

/// The rows of one group, in `RowBinary`.
#[derive(Default)]
struct Group {
    records: RowWriter,
    seqs: RowWriter,
    batches: RowWriter,
    /// (records, line bytes) per stream and day.
    stream_days: HashMap<(String, u64, u16), (u64, u64)>,
    labels: HashMap<u64, String>,
}

impl Group {
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        sub: &str,
        id: u64,
        ts: i64,
        source: &str,
        epoch: &str,
        seq: u64,
        line: &[u8],
    ) {
        let w = &mut self.records;
        w.str(sub);
        w.u64(id);
        w.i64(ts);
        w.str(source);
        w.str(epoch);
        w.u64(seq);
        w.bytes(line);
    }

    fn seq(&mut self, sub: &str, source: &str, epoch: &str, seq: u64, digest: u32, ts: i64) {
        let w = &mut self.seqs;
        w.str(sub);
        w.str(source);
        w.str(epoch);
        w.u64(seq);
        w.u32(digest);
        w.i64(ts);
    }

    #[allow(clippy::too_many_arguments)]
    fn batch_row(
        &mut self,
        sub: &str,
        source: &str,
        epoch: &str,
        at: i64,
        (first, last): (u64, u64),
        (accepted, duplicates, dropped, conflicts): (u64, u64, u64, u64),
        newest: i64,
    ) {
        let w = &mut self.batches;
        w.str(sub);
        w.str(source);
        w.str(epoch);
        w.i64(at);
        w.u64(first);
        w.u64(last);
        w.u64(accepted);
        w.u64(duplicates);
        w.u64(dropped);
        w.u64(conflicts);
        w.i64(newest);
    }
}

/// A stream's id: the first 8 bytes of the SHA-256 of its key, so every
/// collector derives the same id for the same labels.
pub fn stream_id(key: &str) -> u64 {
    use sha2::Digest;
    let h = sha2::Sha256::digest(key.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    u64::from_be_bytes(b) >> 1
}

/// Days since 1970-01-01 of a Unix-ns time (ClickHouse `Date`).
pub fn day_of(ts: i64) -> u16 {
    ts.div_euclid(86_400_000_000_000).clamp(0, u16::MAX as i64) as u16
}

fn storage(op: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage {
        op,
        message: e.to_string(),
    }
}

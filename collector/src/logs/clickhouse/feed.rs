//! The shared commit feed of collectors that coordinate (`--coordination`):
//! table `feed`, one row per record a collector stored, keyed by
//! (subscription, writer, wseq, widx): the writing collector's member id,
//! its local commit and the record's index among the subscription's
//! records of that commit. The subscription's owner reads it after its
//! per-writer positions (`crate::coordinated`).
//!
//! Why per writer: a writer exports its commits in order and waits for
//! each insert before the next, and a subscription's rows live on one
//! shard, so a writer's rows become visible in position order; "every row
//! of writer W up to position P" is then exact. Rows of different writers
//! have no common order (and need none: each is a separate stream).
//!
//! A row may be inserted twice (a writer killed after an insert and
//! before it forgot the commit exports it again): the same key, the same
//! record; `ReplacingMergeTree` folds them and the reader skips what it
//! passed.

use std::collections::BTreeMap;
use std::sync::Arc;

use schemas::Record;

use super::client::{quote, ChError, RowReader, RowWriter};
use super::Shared;

/// A position in one writer's stream of a subscription: (commit, index).
pub type WriterPos = (u64, u32);

/// What to read of one writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// After this position (`None`: from the writer's first row).
    pub after: Option<WriterPos>,
    /// At most this many commits past `after` (`None`: to the end).
    pub commits: Option<u64>,
}

/// One row read back.
#[derive(Debug, Clone)]
pub struct FeedRow {
    pub writer: String,
    pub pos: WriterPos,
    /// When the writer committed it (Unix ns, the writer's clock).
    pub at: i64,
    pub record: Record,
}

/// One record to export: its subscription, position and commit time.
#[derive(Debug)]
pub struct ExportRow<'a> {
    pub subscription: &'a str,
    pub pos: WriterPos,
    pub at: i64,
    pub record: &'a Record,
}

/// The `feed` table, for the coordinated notifier.
#[derive(Clone)]
pub struct FeedTable {
    shared: Arc<Shared>,
    /// The database's name as configured (for `system.parts`).
    database: String,
}

impl std::fmt::Debug for FeedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedTable")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl FeedTable {
    pub(super) fn new(shared: Arc<Shared>, database: String) -> FeedTable {
        FeedTable { shared, database }
    }

    async fn run(
        &self,
        sql: String,
        data: Option<Vec<u8>>,
        settings: &[(&str, &str)],
    ) -> Result<Vec<u8>, ChError> {
        let c = &self.shared.client;
        c.spawn(c.request(sql, data, settings)).await?
    }

    /// Inserts `rows` of writer `writer`; answers once ClickHouse holds
    /// them (over a cluster: every shard).
    pub async fn insert(&self, writer: &str, rows: &[ExportRow<'_>]) -> Result<(), ChError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut w = RowWriter::default();
        let mut record = Vec::new();
        for r in rows {
            record.clear();
            schemas::write_msgpack(&mut record, r.record)
                .map_err(|e| ChError::Answer(format!("encode a feed record: {e}")))?;
            w.str(r.subscription);
            w.str(writer);
            w.u64(r.pos.0);
            w.u32(r.pos.1);
            w.i64(r.at);
            w.bytes(&record);
        }
        let settings: &[(&str, &str)] = if self.shared.layout.cluster.is_some() {
            &[("insert_distributed_sync", "1")]
        } else {
            &[]
        };
        let sql = format!(
            "INSERT INTO {}.feed (subscription, writer, wseq, widx, at, record) FORMAT RowBinary",
            self.shared.db
        );
        self.run(sql, Some(w.buf), settings).await.map(|_| ())
    }

    /// Rows of `subscription` per writer as `spans` says, at most `max`
    /// per writer, in position order per writer, each position once. One
    /// `UNION ALL` branch per writer: a single range of the sorting key
    /// each. ClickHouse 18.16 reads the whole range before `ORDER BY ...
    /// LIMIT` (no read-in-order), so a reader far behind bounds the range
    /// with [`Span::commits`] rather than read its whole backlog for each
    /// `max` rows.
    pub async fn read(
        &self,
        subscription: &str,
        spans: &BTreeMap<String, Span>,
        max: usize,
    ) -> Result<Vec<FeedRow>, ChError> {
        if spans.is_empty() {
            return Ok(Vec::new());
        }
        let db = &self.shared.db;
        let sub = quote(subscription);
        let cols = "writer, wseq, widx, at, record";
        let branches: Vec<String> = spans
            .iter()
            .map(|(writer, span)| {
                let mut cond = String::new();
                if let Some((c, i)) = span.after {
                    cond.push_str(&format!(" AND (wseq > {c} OR (wseq = {c} AND widx > {i}))"));
                    if let Some(n) = span.commits {
                        cond.push_str(&format!(" AND wseq <= {}", c.saturating_add(n)));
                    }
                }
                format!(
                    "SELECT {cols} FROM {db}.feed WHERE subscription = {sub} AND writer = {}{cond} \
                     ORDER BY wseq, widx LIMIT {max}",
                    quote(writer)
                )
            })
            .collect();
        let sql = format!("{} FORMAT RowBinary", branches.join(" UNION ALL "));
        let body = self.run(sql, None, &[]).await?;
        let mut r = RowReader::new(&body);
        let mut rows = Vec::new();
        while !r.done() {
            let writer = r.string()?;
            let pos = (r.u64()?, r.u32()?);
            let at = r.i64()?;
            let bytes = r.bytes()?;
            let record: Record = schemas::from_msgpack(bytes)
                .map_err(|e| ChError::Answer(format!("a feed record does not decode: {e}")))?;
            rows.push(FeedRow {
                writer,
                pos,
                at,
                record,
            });
        }
        rows.sort_by(|a, b| (&a.writer, a.pos).cmp(&(&b.writer, b.pos)));
        rows.dedup_by(|b, a| a.writer == b.writer && a.pos == b.pos);
        Ok(rows)
    }

    /// The writers with rows of `subscription` (reads only the `writer`
    /// column of the subscription's range, which compresses to almost
    /// nothing).
    pub async fn writers(&self, subscription: &str) -> Result<Vec<String>, ChError> {
        let sql = format!(
            "SELECT DISTINCT writer FROM {}.feed WHERE subscription = {} FORMAT RowBinary",
            self.shared.db,
            quote(subscription)
        );
        let body = self.run(sql, None, &[]).await?;
        let mut r = RowReader::new(&body);
        let mut out = Vec::new();
        while !r.done() {
            out.push(r.string()?);
        }
        Ok(out)
    }

    /// Where each writer's rows of `subscription` end now: what a new
    /// owner without a saved position starts after.
    pub async fn ends(&self, subscription: &str) -> Result<BTreeMap<String, WriterPos>, ChError> {
        let sql = format!(
            "SELECT writer, max(wseq) FROM {}.feed WHERE subscription = {} GROUP BY writer FORMAT RowBinary",
            self.shared.db,
            quote(subscription)
        );
        let body = self.run(sql, None, &[]).await?;
        let mut r = RowReader::new(&body);
        let mut out = BTreeMap::new();
        while !r.done() {
            let writer = r.string()?;
            // A writer's commit is inserted at once: all of it is there.
            out.insert(writer, (r.u64()?, u32::MAX));
        }
        Ok(out)
    }

    /// Drops the days of the feed before `day` (`YYYYMMDD`) on every
    /// server; answers how many partitions were dropped.
    pub async fn drop_before(&self, day: u32) -> Result<usize, ChError> {
        let local = self.shared.layout.local("feed");
        let sql = format!(
            "SELECT DISTINCT partition FROM system.parts WHERE database = {} AND table = {} \
             AND active AND toUInt32OrZero(partition) < {day} FORMAT RowBinary",
            quote(&self.database),
            quote(&local)
        );
        let mut dropped = 0;
        let c = &self.shared.client;
        for i in 0..c.urls().len() {
            let body = match c
                .spawn(c.request_to(Some(i), sql.clone(), None, &[]))
                .await?
            {
                Ok(b) => b,
                Err(e @ ChError::Unreachable { .. }) => {
                    tracing::debug!(error = %e, "feed retention: server skipped");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut r = RowReader::new(&body);
            let mut parts = Vec::new();
            while !r.done() {
                parts.push(r.string()?);
            }
            for p in parts {
                let Ok(p) = p.parse::<u32>() else { continue };
                let sql = format!("ALTER TABLE {}.{local} DROP PARTITION {p}", self.shared.db);
                c.spawn(c.request_to(Some(i), sql, None, &[])).await??;
                dropped += 1;
            }
        }
        Ok(dropped)
    }
}

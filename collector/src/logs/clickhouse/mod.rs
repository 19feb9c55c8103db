//! The log store on ClickHouse (`--storage clickhouse`): any number of
//! collectors over one ClickHouse server or cluster, stateless for logs.
//! Tables and why they hold exactly once: `schema.rs`; ingest:
//! `writer.rs`; search and scans: `search.rs`; the HTTP client and the
//! escaping every SQL string goes through: `client.rs`.
//!
//! Every read names the subscription in its WHERE clause (the caller's,
//! from its token), and only stream ids picked from that subscription's
//! part of the label index.

pub mod client;
pub mod feed;
pub mod schema;
mod search;
pub mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use client::{quote, ChError, Client, Endpoint, RowReader};

use super::model::{
    IngestObserver, PreparedBatch, PurgeReport, SourceInfo, SourceMeta, StoreError, StreamInfo,
};
use super::query::{
    filter_streams, MatchedRecord, Query, ScanParams, ScanStats, SearchError, SearchParams,
    SearchResult, VolumeBucket, VOLUME_BUCKET_NS,
};
use super::retention::RetentionPolicy;
use super::{IngestReceipt, LogStore, StoreFuture};
use crate::telemetry::Metrics;

/// How to reach ClickHouse and what to keep there.
#[derive(Debug, Clone)]
pub struct ClickHouseConfig {
    /// `http://host:8123`: one server, or several to fail over between.
    pub urls: Vec<String>,
    /// Replicated tables, and/or a cluster to shard over.
    pub layout: schema::Layout,
    pub database: String,
    pub user: String,
    pub password: Option<String>,
    /// Per request to ClickHouse (inserts and lookups; queries use their
    /// own deadline).
    pub timeout: Duration,
    /// Batches waiting for the writer at most.
    pub queue_batches: usize,
    pub max_streams_per_subscription: usize,
    pub max_sources_per_subscription: usize,
}

impl ClickHouseConfig {
    pub fn new(url: impl Into<String>) -> Self {
        ClickHouseConfig {
            urls: vec![url.into()],
            layout: schema::Layout::default(),
            database: "sesam".into(),
            user: "default".into(),
            password: None,
            timeout: Duration::from_secs(30),
            queue_batches: 64,
            max_streams_per_subscription: 50_000,
            max_sources_per_subscription: 1_000,
        }
    }
}

/// What the writer and the readers share.
pub(crate) struct Shared {
    client: Client,
    /// The database as an identifier (quoted).
    db: String,
    observers: Vec<Arc<dyn IngestObserver>>,
    metrics: Metrics,
    layout: schema::Layout,
    max_sources: usize,
    max_streams: usize,
    /// The commit feed, kept in the collector's local store (`--data-dir`)
    /// while the notifier is on: see `rocks/feed.rs`.
    feed: Option<crate::logs::rocks::Store>,
}

/// Streams, and the line bytes of each by id.
type SizedStreams = (Vec<Arc<StreamInfo>>, HashMap<u64, u64>);

/// The ClickHouse log store.
#[derive(Clone)]
pub struct ClickHouseStore {
    shared: Arc<Shared>,
    tx: Arc<Mutex<Option<mpsc::Sender<writer::IngestOp>>>>,
    /// Labels of the streams seen, by id (ids are derived from labels, so
    /// an entry never goes stale).
    labels: Arc<RwLock<HashMap<u64, Arc<super::model::Labels>>>>,
    database: String,
    /// Tells when the writer has answered everything queued (at close).
    finished: Arc<Mutex<Option<std::sync::mpsc::Receiver<()>>>>,
}

impl std::fmt::Debug for ClickHouseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseStore")
            .field("url", &self.shared.client.url())
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// The query of `seqs` rows (subscription, source, epoch, then `columns`)
/// in `ranges` of seqs per (subscription, source, epoch): one `UNION ALL`
/// branch each, a single range of the table's sorting key (an `OR` of
/// such ranges is not narrowed by the primary index on 18.16: it read the
/// whole table). RowBinary.
fn seqs_query(db: &str, columns: &str, ranges: &HashMap<(&str, &str, &str), (u64, u64)>) -> String {
    let branches: Vec<String> = ranges
        .iter()
        .map(|((sub, source, epoch), (lo, hi))| {
            format!(
                "SELECT subscription, source, epoch, {columns} FROM {db}.seqs \
                 WHERE subscription = {} AND source = {} AND epoch = {} \
                 AND seq >= {lo} AND seq <= {hi}",
                quote(sub),
                quote(source),
                quote(epoch)
            )
        })
        .collect();
    format!("{} FORMAT RowBinary", branches.join(" UNION ALL "))
}

/// Which of `keys` (subscription, source, epoch, seq) ClickHouse's
/// `seqs` (the commit mark) holds ([`seqs_query`]). Blocking.
fn stored_keys(
    client: &Client,
    db: &str,
    keys: &[(String, String, String, u64)],
) -> Result<std::collections::HashSet<(String, String, String, u64)>, ChError> {
    let mut ranges: HashMap<(&str, &str, &str), (u64, u64)> = HashMap::new();
    for (sub, source, epoch, seq) in keys {
        let r = ranges
            .entry((sub.as_str(), source.as_str(), epoch.as_str()))
            .or_insert((*seq, *seq));
        r.0 = r.0.min(*seq);
        r.1 = r.1.max(*seq);
    }
    let mut out = std::collections::HashSet::new();
    if ranges.is_empty() {
        return Ok(out);
    }
    let body = client.query(seqs_query(db, "seq", &ranges))?;
    let mut r = RowReader::new(&body);
    while !r.done() {
        out.insert((r.string()?, r.string()?, r.string()?, r.u64()?));
    }
    Ok(out)
}

/// Why the store could not open: said so that the operator knows what to
/// fix.
pub fn open_error(url: &str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Open {
        path: format!("ClickHouse {url}").into(),
        reason: what.to_string(),
    }
}

impl ClickHouseStore {
    /// Connects, checks the server's version and the credentials, creates
    /// or checks the tables, and starts the writer. Blocking.
    ///
    /// With `feed` (the local store under `--data-dir`), each group's new
    /// records are written to its commit feed before they are inserted
    /// here, and the observers get them with their commit
    /// (`committed_feed`); a commit a crash left pending is settled first.
    pub fn open(
        cfg: ClickHouseConfig,
        metrics: Metrics,
        observers: Vec<Arc<dyn IngestObserver>>,
        feed: Option<crate::logs::rocks::Store>,
    ) -> Result<ClickHouseStore, StoreError> {
        let url = cfg.urls.join(", ");
        if !schema::valid_database(&cfg.database) {
            return Err(open_error(
                &url,
                format!(
                    "--clickhouse-database {:?} must be 1-64 characters of [A-Za-z0-9_], not starting with a digit",
                    cfg.database
                ),
            ));
        }
        let client = Client::new(Endpoint {
            urls: cfg.urls.clone(),
            user: cfg.user.clone(),
            password: cfg.password.clone(),
            timeout: cfg.timeout,
            // Over a cluster, reads and inserts go to the first live
            // replica of each shard in the cluster's order, so that the
            // dedupe lookup sees what the last insert wrote (replication
            // to the other replicas is asynchronous; when the first is
            // down, a lookup may miss the newest rows: the merge and the
            // reads' one-row-per-key still keep them once).
            settings: if cfg.layout.cluster.is_some() {
                vec![("load_balancing".into(), "in_order".into())]
            } else {
                Vec::new()
            },
        })
        .map_err(|e| open_error(&url, e))?;
        let (text, v) = schema::version(&client).map_err(|e| {
            open_error(
                &url,
                match e {
                    ChError::Unreachable { .. } => format!("{e} (is clickhouse-server running there, and is this its HTTP port, 8123 by default?)"),
                    other => other.to_string(),
                },
            )
        })?;
        if v < schema::MIN_VERSION {
            return Err(open_error(
                &url,
                format!(
                    "server version {text} is too old: the collector needs {}.{} or newer",
                    schema::MIN_VERSION.0,
                    schema::MIN_VERSION.1
                ),
            ));
        }
        schema::migrate(&client, &cfg.database, &cfg.layout).map_err(|e| open_error(&url, e))?;
        let db = schema::ident(&cfg.database);
        if let Some(f) = &feed {
            let settled = f
                .feed_settle_pending(|keys| {
                    stored_keys(&client, &db, keys).map_err(|e| open_error(&url, e))
                })
                .map_err(|e| open_error(&url, e))?;
            if let Some((commit, kept, dropped)) = settled {
                tracing::warn!(
                    commit,
                    kept,
                    dropped,
                    "commit feed: the last commit before a crash kept the records ClickHouse holds"
                );
            }
        }
        tracing::info!(url = %url, version = %text, database = %cfg.database, "ClickHouse log store ready");
        let shared = Arc::new(Shared {
            client,
            db,
            observers,
            metrics,
            layout: cfg.layout.clone(),
            max_sources: cfg.max_sources_per_subscription,
            max_streams: cfg.max_streams_per_subscription,
            feed,
        });
        let (tx, rx) = mpsc::channel(cfg.queue_batches.max(1));
        let w = writer::Writer::new(shared.clone());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        shared.client.spawn_detached(async move {
            w.run(rx).await;
            let _ = done_tx.send(());
        });
        Ok(ClickHouseStore {
            shared,
            tx: Arc::new(Mutex::new(Some(tx))),
            labels: Arc::new(RwLock::new(HashMap::new())),
            database: cfg.database,
            finished: Arc::new(Mutex::new(Some(done_rx))),
        })
    }

    fn db(&self) -> &str {
        &self.shared.db
    }

    /// The shared commit feed (`--coordination`).
    pub fn feed_table(&self) -> feed::FeedTable {
        feed::FeedTable::new(self.shared.clone(), self.database.clone())
    }

    fn client(&self) -> &Client {
        &self.shared.client
    }

    fn labels_of(&self, id: u64, text: &[u8]) -> Arc<super::model::Labels> {
        if let Some(l) = self.labels.read().ok().and_then(|m| m.get(&id).cloned()) {
            return l;
        }
        let l: Arc<super::model::Labels> =
            Arc::new(serde_json::from_slice(text).unwrap_or_default());
        if let Ok(mut m) = self.labels.write() {
            if m.len() > 1_000_000 {
                m.clear();
            }
            m.insert(id, l.clone());
        }
        l
    }

    /// Every stream of `subscription` (all when `None`) with records in
    /// the days of `[start, end)`, before the selector.
    fn streams_in(
        &self,
        subscription: Option<&str>,
        start: i64,
        end: i64,
    ) -> Result<Vec<Arc<StreamInfo>>, ChError> {
        Ok(self.streams_sized(subscription, start, end)?.0)
    }

    /// [`ClickHouseStore::streams_in`], with the line bytes of each stream
    /// in those days.
    fn streams_sized(
        &self,
        subscription: Option<&str>,
        start: i64,
        end: i64,
    ) -> Result<SizedStreams, ChError> {
        let (d0, d1) = (
            writer::day_of(start.max(0)),
            writer::day_of(end.saturating_sub(1).max(0)),
        );
        let sub = subscription.map_or(String::new(), |s| {
            format!("subscription = {} AND ", quote(s))
        });
        let body = self.client().query(format!(
            "SELECT stream, any(labels), toUInt16(min(day)), toUInt16(max(day)), sum(records), sum(bytes) \
             FROM {db}.streams WHERE {sub}day >= toDate({d0}) AND day <= toDate({d1}) \
             GROUP BY stream FORMAT RowBinary",
            db = self.db()
        ))?;
        let mut out = Vec::new();
        let mut bytes = HashMap::new();
        let mut r = RowReader::new(&body);
        const DAY: i64 = 86_400_000_000_000;
        while !r.done() {
            let id = r.u64()?;
            let labels = r.bytes()?;
            let (lo, hi) = (r.date()?, r.date()?);
            let records = r.u64()?;
            bytes.insert(id, r.u64()?);
            out.push(Arc::new(StreamInfo {
                id,
                labels: self.labels_of(id, labels),
                min_ts: i64::from(lo) * DAY,
                max_ts: (i64::from(hi) + 1) * DAY - 1,
                records: records.max(1),
            }));
        }
        Ok((out, bytes))
    }
}

impl LogStore for ClickHouseStore {
    fn try_ingest(&self, batch: PreparedBatch) -> Result<IngestReceipt, StoreError> {
        let (reply, rx) = oneshot::channel();
        let guard = self.tx.lock().map_err(|_| StoreError::Closed)?;
        let tx = guard.as_ref().ok_or(StoreError::Closed)?;
        match tx.try_send(writer::IngestOp { batch, reply }) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => Err(StoreError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(StoreError::Closed),
        }
    }

    fn wants_records(&self) -> bool {
        !self.shared.observers.is_empty()
    }

    fn search(&self, query: &Query, params: &SearchParams) -> Result<SearchResult, SearchError> {
        search::search(self, query, params)
    }

    fn scan_matches(
        &self,
        query: &Query,
        streams: &[Arc<StreamInfo>],
        p: &ScanParams,
        f: &mut dyn FnMut(MatchedRecord<'_>) -> bool,
    ) -> Result<ScanStats, SearchError> {
        search::scan(self, query, streams, p, f)
    }

    fn volume(
        &self,
        stream: &StreamInfo,
        start: i64,
        end: i64,
    ) -> Option<Result<Vec<VolumeBucket>, StoreError>> {
        if start < 0 {
            return None;
        }
        let w = VOLUME_BUCKET_NS;
        // Bucket ends: the multiple of w at or above ts (left-open,
        // right-closed buckets).
        let sql = format!(
            "SELECT intDiv(ts + {wm1}, {w}) * {w} AS b, count(), sum(length(line)) FROM \
             (SELECT ts, line FROM {db}.records WHERE subscription = {sub} AND stream = {id} \
              AND ts > {start} AND ts <= {end} LIMIT 1 BY ts, seq, epoch) \
             GROUP BY b ORDER BY b FORMAT RowBinary",
            wm1 = w - 1,
            db = self.db(),
            sub = quote(stream.subscription()),
            id = stream.id,
        );
        let run = || -> Result<Vec<VolumeBucket>, ChError> {
            let body = self.client().query(sql)?;
            let mut r = RowReader::new(&body);
            let mut out = Vec::new();
            while !r.done() {
                out.push(VolumeBucket {
                    end: r.i64()?,
                    records: r.u64()?,
                    bytes: r.u64()?,
                });
            }
            Ok(out)
        };
        Some(run().map_err(|e| StoreError::storage("read volumes", e)))
    }

    fn select_streams(
        &self,
        query: &Query,
        subscription: Option<&str>,
        start: i64,
        end: i64,
    ) -> Vec<Arc<StreamInfo>> {
        match self.streams_in(subscription, start, end) {
            Ok(all) => filter_streams(all, query, start, end),
            Err(e) => {
                tracing::warn!(error = %e, "ClickHouse: reading the label index failed");
                Vec::new()
            }
        }
    }

    fn sources(&self) -> Vec<SourceInfo> {
        match sources(self) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "ClickHouse: reading the sources failed");
                Vec::new()
            }
        }
    }

    fn apply_retention<'a>(
        &'a self,
        policy: &'a RetentionPolicy,
        now: i64,
    ) -> StoreFuture<'a, u64> {
        let this = self.clone();
        let policy = policy.clone();
        Box::pin(async move {
            let inner = this.clone();
            this.client()
                .spawn(async move { retention(&inner, &policy, now).await })
                .await
                .map_err(|e| StoreError::storage("apply retention", e))?
                .map_err(|e| StoreError::storage("apply retention", e))
        })
    }

    fn purge<'a>(&'a self, subscription: &'a str) -> StoreFuture<'a, PurgeReport> {
        let this = self.clone();
        let sub = subscription.to_string();
        Box::pin(async move {
            let report = this
                .client()
                .spawn({
                    let this = this.clone();
                    let sub = sub.clone();
                    async move { purge(&this, &sub).await }
                })
                .await
                .map_err(|e| StoreError::storage("purge", e))?
                .map_err(|e| StoreError::storage("purge", e))?;
            if let Some(f) = &this.shared.feed {
                f.feed_trim(&sub, u64::MAX)?;
            }
            for o in &this.shared.observers {
                o.subscription_purged(&sub);
            }
            Ok(report)
        })
    }

    fn disk_bytes(&self) -> u64 {
        let sql = format!(
            "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = {} AND active",
            quote(&self.database)
        );
        self.client()
            .query(sql)
            .ok()
            .and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok())
            .unwrap_or(0)
    }

    fn checkpoint(&self, _dir: &Path) -> Result<(), StoreError> {
        Err(StoreError::Storage {
            op: "checkpoint",
            message: "the ClickHouse store has no checkpoints of its own: back up ClickHouse (ALTER TABLE ... FREEZE, or clickhouse-backup); see README, ClickHouse".into(),
        })
    }

    fn close(&self) {
        // The writer ends once the queue is empty; what was queued is
        // inserted and answered first.
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let done = self.finished.lock().ok().and_then(|mut d| d.take());
        if let Some(done) = done {
            if done.recv_timeout(Duration::from_secs(30)).is_err() {
                tracing::warn!("ClickHouse writer still busy at close: unanswered batches will be re-sent by their shippers");
            }
        }
    }
}

fn sources(store: &ClickHouseStore) -> Result<Vec<SourceInfo>, ChError> {
    let db = store.db();
    // Records: exact, from the dedupe index (one row per seq, whatever
    // the merges did yet).
    let counts = store.client().query(format!(
        "SELECT subscription, source, epoch, count(), max(ts), max(seq) FROM \
         (SELECT subscription, source, epoch, seq, ts FROM {db}.seqs LIMIT 1 BY subscription, source, epoch, seq) \
         GROUP BY subscription, source, epoch FORMAT RowBinary"
    ))?;
    // (records, newest ts) per source; last seq per (source, epoch).
    let mut n: HashMap<(String, String), (u64, i64)> = HashMap::new();
    let mut last: HashMap<(String, String, String), u64> = HashMap::new();
    let mut r = RowReader::new(&counts);
    while !r.done() {
        let (sub, source, epoch) = (r.string()?, r.string()?, r.string()?);
        let (c, ts, seq) = (r.u64()?, r.i64()?, r.u64()?);
        let e = n
            .entry((sub.clone(), source.clone()))
            .or_insert((0, i64::MIN));
        e.0 += c;
        e.1 = e.1.max(ts);
        last.insert((sub, source, epoch), seq);
    }
    let body = store.client().query(format!(
        "SELECT subscription, source, min(at), maxIf(at, accepted > 0), argMax(epoch, at * (accepted > 0)), \
         sum(dropped), sum(duplicates), sum(conflicts) \
         FROM {db}.batches GROUP BY subscription, source ORDER BY subscription, source FORMAT RowBinary"
    ))?;
    let mut out = Vec::new();
    let mut r = RowReader::new(&body);
    while !r.done() {
        let (subscription, source) = (r.string()?, r.string()?);
        let first_seen = r.i64()?;
        let last_seen = r.i64()?;
        let epoch = r.string()?;
        let dropped = r.u64()?;
        let duplicates = r.u64()?;
        let conflicts = r.u64()?;
        let (records, newest_ts) = n
            .get(&(subscription.clone(), source.clone()))
            .copied()
            .unwrap_or((0, 0));
        let last_seq = last
            .get(&(subscription.clone(), source.clone(), epoch.clone()))
            .copied()
            .unwrap_or(0);
        out.push(SourceInfo {
            subscription,
            source,
            meta: SourceMeta {
                first_seen,
                last_seen,
                last_seq,
                epoch,
                records,
                newest_ts: if records == 0 { 0 } else { newest_ts },
                dropped,
                duplicates,
                conflicts,
                ..SourceMeta::default()
            },
        });
    }
    Ok(out)
}

/// Runs a deletion on every server that holds rows (each server's local
/// tables; a replicated table passes it on to its other replicas, which
/// then run it once more, harmlessly). A server that cannot be reached is
/// skipped with a warning when another could be: it deletes when it is
/// asked again (retention runs every interval).
async fn mutate(store: &ClickHouseStore, sql: String) -> Result<(), ChError> {
    let mut done = 0;
    let mut last = None;
    for i in 0..store.client().urls().len() {
        match store
            .client()
            .request_to(Some(i), sql.clone(), None, &[])
            .await
        {
            Ok(_) => done += 1,
            Err(e @ ChError::Unreachable { .. }) => {
                tracing::warn!(error = %e, "ClickHouse server unreachable: deletion skipped there");
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    match (done, last) {
        (0, Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// Waits (at most `within`) until every server has run every mutation
/// queued on this database's tables, so that a deletion is visible to
/// reads when it is answered.
async fn settle(store: &ClickHouseStore, within: Duration) -> Result<(), ChError> {
    let started = std::time::Instant::now();
    loop {
        let mut pending = 0;
        for i in 0..store.client().urls().len() {
            let sql = format!(
                "SELECT count() FROM system.mutations WHERE database = {} AND is_done = 0",
                quote(&store.database)
            );
            match store.client().request_to(Some(i), sql, None, &[]).await {
                Ok(b) => {
                    pending += String::from_utf8_lossy(&b)
                        .trim()
                        .parse::<u64>()
                        .unwrap_or(0)
                }
                Err(ChError::Unreachable { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if pending == 0 {
            return Ok(());
        }
        if started.elapsed() >= within {
            return Err(ChError::Answer(format!(
                "{pending} deletions still running in ClickHouse after {within:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(store: &ClickHouseStore, sql: String) -> Result<u64, ChError> {
    let b = store.client().request(sql, None, &[]).await?;
    Ok(String::from_utf8_lossy(&b).trim().parse().unwrap_or(0))
}

/// Deletes what is past each subscription's retention. Whole days older
/// than every subscription's retention go as partitions; the rest by
/// subscription with `ALTER TABLE ... DELETE` (a mutation ClickHouse runs
/// in the background; reads exclude the expired range at once).
async fn retention(
    store: &ClickHouseStore,
    policy: &RetentionPolicy,
    now: i64,
) -> Result<u64, ChError> {
    let db = store.db();
    let subs_body = store
        .client()
        .request(
            format!("SELECT DISTINCT subscription FROM {db}.streams FORMAT RowBinary"),
            None,
            &[],
        )
        .await?;
    let mut r = RowReader::new(&subs_body);
    let mut deleted = 0;
    while !r.done() {
        let sub = r.string()?;
        let keep = policy.for_subscription(&sub);
        let cutoff = now.saturating_sub(i64::try_from(keep.as_nanos()).unwrap_or(i64::MAX));
        let q = quote(&sub);
        let n = count(
            store,
            format!("SELECT count() FROM {db}.seqs WHERE subscription = {q} AND ts < {cutoff}"),
        )
        .await?;
        if n == 0 {
            continue;
        }
        for table in ["records", "seqs"] {
            mutate(
                store,
                format!(
                    "ALTER TABLE {db}.{} DELETE WHERE subscription = {q} AND ts < {cutoff}",
                    store.shared.layout.local(table)
                ),
            )
            .await?;
        }
        deleted += n;
    }
    if deleted > 0 {
        settle(store, Duration::from_secs(600)).await?;
    }
    Ok(deleted)
}

/// Deletes every row of `sub` in every table.
async fn purge(store: &ClickHouseStore, sub: &str) -> Result<PurgeReport, ChError> {
    let db = store.db();
    let q = quote(sub);
    let records = count(
        store,
        format!(
            "SELECT count() FROM (SELECT 1 FROM {db}.seqs WHERE subscription = {q} LIMIT 1 BY source, epoch, seq)"
        ),
    )
    .await?;
    let streams = count(
        store,
        format!("SELECT uniqExact(stream) FROM {db}.streams WHERE subscription = {q}"),
    )
    .await?;
    let sources = count(
        store,
        format!("SELECT uniqExact(source) FROM {db}.batches WHERE subscription = {q}"),
    )
    .await?;
    for table in ["records", "seqs", "streams", "batches"] {
        mutate(
            store,
            format!(
                "ALTER TABLE {db}.{} DELETE WHERE subscription = {q}",
                store.shared.layout.local(table)
            ),
        )
        .await?;
    }
    settle(store, Duration::from_secs(120)).await?;
    Ok(PurgeReport {
        streams,
        records,
        sources,
    })
}

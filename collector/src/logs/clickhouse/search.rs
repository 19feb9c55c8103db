//! Search and scans on ClickHouse. The label index picks the streams (the
//! same matchers as every backend, `filter_streams`); SQL narrows by
//! subscription, stream and time, and by the literal line filters
//! (`|=` / `!=` as `position(line, ...)`, byte for byte what the Rust
//! filter does); every stage then runs on each row here
//! (`run_stages`), so regexes, `| json` and label filters answer exactly
//! as on RocksDB. Rows stream in and are parsed as they arrive; a search
//! reads pages in time order with a keyset (ts, stream, seq, epoch), one
//! row per record (`LIMIT 1 BY`, whatever the merges did yet).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use super::client::{quote, quote_bytes, ChError, Chunks, RowReader};
use super::ClickHouseStore;
use crate::logs::model::StreamInfo;
use crate::logs::query::{
    filter_streams, pool, run_stages, Hit, MatchedRecord, Query, ScanParams, ScanStats,
    SearchError, SearchParams, SearchResult, Stage,
};

/// Rows a page asks for when rows may fail stages run here.
const MIN_PAGE: usize = 1_000;
const MAX_PAGE: usize = 20_000;
/// ClickHouse's TOO_MANY_BYTES (`max_bytes_to_read`) and TIMEOUT_EXCEEDED.
const TOO_MANY_BYTES: u32 = 307;
const TIMEOUT_EXCEEDED: u32 = 159;

/// One row of an answer, borrowed from the chunk buffer.
struct Row<'a> {
    stream: u64,
    ts: i64,
    seq: u64,
    epoch: &'a [u8],
    line: &'a [u8],
}

/// Parses rows of (stream, ts, seq, epoch, line) as chunks arrive; calls
/// `f` per row until it answers `false`. Returns rows read.
fn each_row(
    mut chunks: Chunks,
    with_stream: bool,
    f: &mut dyn FnMut(Row<'_>) -> Result<bool, SearchError>,
) -> Result<usize, SearchError> {
    let mut buf: Vec<u8> = Vec::new();
    let mut rows = 0;
    while let Some(chunk) = chunks.next_chunk() {
        let chunk = chunk.map_err(map_err)?;
        buf.extend_from_slice(&chunk);
        let mut used = 0;
        loop {
            let mut r = RowReader::new(&buf[used..]);
            let row = (|| -> Result<Row<'_>, ChError> {
                let stream = if with_stream { r.u64()? } else { 0 };
                Ok(Row {
                    stream,
                    ts: r.i64()?,
                    seq: r.u64()?,
                    epoch: r.bytes()?,
                    line: r.bytes()?,
                })
            })();
            let Ok(row) = row else { break };
            let n = r.position();
            rows += 1;
            if !f(row)? {
                return Ok(rows);
            }
            used += n;
        }
        buf.drain(..used);
    }
    if !buf.is_empty() {
        return Err(map_err(ChError::Answer(
            "RowBinary answer cut short".into(),
        )));
    }
    Ok(rows)
}

fn map_err(e: ChError) -> SearchError {
    match e.code() {
        Some(TIMEOUT_EXCEEDED) => SearchError::Timeout,
        _ => SearchError::Store(crate::logs::model::StoreError::storage(
            "query ClickHouse",
            e,
        )),
    }
}

/// The settings of a read: read-only, the deadline, the scan budget.
fn settings(deadline: Instant, max_scanned: u64) -> Vec<(&'static str, String)> {
    let left = deadline.saturating_duration_since(Instant::now());
    vec![
        ("readonly", "2".into()),
        ("max_execution_time", (left.as_secs() + 1).to_string()),
        ("timeout_overflow_mode", "throw".into()),
        // The server reads the lines a pushed-down filter drops: it counts
        // them (with the other columns it reads, uncompressed) against the
        // budget, so such a search is refused as on RocksDB (a little
        // earlier: every column counts there).
        ("max_bytes_to_read", max_scanned.max(1).to_string()),
        ("read_overflow_mode", "throw".into()),
        ("max_query_size", (16 << 20).to_string()),
    ]
}

fn run(
    store: &ClickHouseStore,
    sql: String,
    deadline: Instant,
    max_scanned: u64,
    with_stream: bool,
    f: &mut dyn FnMut(Row<'_>) -> Result<bool, SearchError>,
) -> Result<usize, SearchError> {
    let s = settings(deadline, max_scanned);
    let s: Vec<(&str, &str)> = s.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let chunks = store.client().stream(sql, &s);
    each_row(chunks, with_stream, f).map_err(|e| match e {
        SearchError::Store(crate::logs::model::StoreError::Storage { message, .. })
            if message.contains(&format!("error {TOO_MANY_BYTES}:")) =>
        {
            SearchError::ScanLimit(max_scanned)
        }
        other => other,
    })
}

/// After each row read: the scan budget, and every 256 rows (or 1 MiB of
/// lines) the query pool's checkpoint and the deadline.
fn account(
    scanned: u64,
    max: u64,
    line: usize,
    checked: &mut usize,
    deadline: Instant,
) -> Result<(), SearchError> {
    if scanned > max {
        return Err(SearchError::ScanLimit(max));
    }
    *checked += 1 + line / 4096;
    if *checked >= 256 {
        *checked = 0;
        pool::checkpoint();
        if Instant::now() >= deadline {
            return Err(SearchError::Timeout);
        }
    }
    Ok(())
}

/// The literal line filters as SQL, and whether they are every stage.
fn pushdown(query: &Query) -> (String, bool) {
    let mut sql = String::new();
    let mut exact = true;
    for stage in &query.stages {
        match stage {
            Stage::Line(f) if !f.is_regex() => {
                sql.push_str(&format!(
                    " AND position(line, {}) {} 0",
                    quote_bytes(f.text.as_bytes()),
                    if f.negate { "=" } else { ">" }
                ));
            }
            _ => exact = false,
        }
    }
    (sql, exact)
}

/// `subscription = ... AND stream IN (...)` for the picked streams, per
/// subscription; without the stream list when a subscription's every
/// stream is picked.
fn stream_condition(picked: &[Arc<StreamInfo>], all: &[Arc<StreamInfo>]) -> String {
    let mut by_sub: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for s in picked {
        by_sub.entry(s.subscription()).or_default().push(s.id);
    }
    let mut total: HashMap<&str, usize> = HashMap::new();
    for s in all {
        *total.entry(s.subscription()).or_default() += 1;
    }
    let parts: Vec<String> = by_sub
        .iter()
        .map(|(sub, ids)| {
            if total.get(sub) == Some(&ids.len()) {
                format!("subscription = {}", quote(sub))
            } else {
                let list: Vec<String> = ids.iter().map(u64::to_string).collect();
                format!(
                    "(subscription = {} AND stream IN ({}))",
                    quote(sub),
                    list.join(",")
                )
            }
        })
        .collect();
    format!("({})", parts.join(" OR "))
}

pub(super) fn search(
    store: &ClickHouseStore,
    query: &Query,
    p: &SearchParams,
) -> Result<SearchResult, SearchError> {
    let (all, bytes) = store
        .streams_sized(p.subscription.as_deref(), p.start, p.end)
        .map_err(map_err)?;
    let picked = filter_streams(all.clone(), query, p.start, p.end);
    let mut result = SearchResult {
        streams: picked.len(),
        ..SearchResult::default()
    };
    if p.limit == 0 || p.start >= p.end || picked.is_empty() {
        return Ok(result);
    }
    let by_id: HashMap<u64, &Arc<StreamInfo>> = picked.iter().map(|s| (s.id, s)).collect();
    let (filters, exact) = pushdown(query);
    let page = if exact {
        p.limit
    } else {
        (p.limit * 4).clamp(MIN_PAGE, MAX_PAGE)
    };
    let ctx = Ctx {
        store,
        query,
        p,
        by_id: &by_id,
        cond: stream_condition(&picked, &all),
        filters,
        page,
    };
    // ClickHouse 18.16 sorts a whole range to answer its newest rows, so
    // the range is read in windows from its newest (oldest, forward) end:
    // the first sized to hold about what the answer can take (the limit,
    // or the byte budget over the picked streams' average line), each
    // next four times the last. A search reads about what it answers, as
    // on RocksDB, not the whole range.
    let records: u64 = picked.iter().map(|s| s.records).sum();
    let line_bytes: u64 = picked
        .iter()
        .map(|s| bytes.get(&s.id).copied().unwrap_or(0))
        .sum();
    let avg = (line_bytes / records.max(1)).max(1) as usize;
    let want = p.limit.min(p.max_bytes / avg + 1).max(1) as f64 * 2.0;
    let lo_all = picked
        .iter()
        .map(|s| s.min_ts)
        .min()
        .unwrap_or(p.start)
        .max(p.start);
    let hi_all = picked
        .iter()
        .map(|s| s.max_ts.saturating_add(1))
        .max()
        .unwrap_or(p.end)
        .min(p.end);
    let span = hi_all.saturating_sub(lo_all).max(1);
    let mut width = ((span as f64) * (want / records.max(1) as f64).min(1.0)) as i64;
    width = width.clamp(1_000_000_000, span);
    let (mut lo, mut hi) = if p.backward {
        (hi_all.saturating_sub(width).max(lo_all), hi_all)
    } else {
        (lo_all, lo_all.saturating_add(width).min(hi_all))
    };
    let mut checked = 0usize;
    loop {
        if ctx.window(lo, hi, &mut result, &mut checked)? {
            return Ok(result);
        }
        width = width.saturating_mul(4);
        if p.backward {
            if lo <= lo_all {
                return Ok(result);
            }
            hi = lo;
            lo = hi.saturating_sub(width).max(lo_all);
        } else {
            if hi >= hi_all {
                return Ok(result);
            }
            lo = hi;
            hi = lo.saturating_add(width).min(hi_all);
        }
    }
}

/// What every window of one search shares.
struct Ctx<'a> {
    store: &'a ClickHouseStore,
    query: &'a Query,
    p: &'a SearchParams,
    by_id: &'a HashMap<u64, &'a Arc<StreamInfo>>,
    cond: String,
    filters: String,
    page: usize,
}

impl Ctx<'_> {
    /// Reads `[lo, hi)` in pages; `true` once the answer is complete
    /// (limit or byte budget reached).
    fn window(
        &self,
        lo: i64,
        hi: i64,
        result: &mut SearchResult,
        checked: &mut usize,
    ) -> Result<bool, SearchError> {
        let p = self.p;
        let (dir, cmp) = if p.backward {
            ("DESC", "<")
        } else {
            ("ASC", ">")
        };
        let mut after: Option<(i64, u64, u64, Vec<u8>)> = None;
        loop {
            if Instant::now() >= p.deadline {
                return Err(SearchError::Timeout);
            }
            let keyset = match &after {
                None => String::new(),
                Some((ts, stream, seq, epoch)) => format!(
                    " AND ts {cmp}= {ts} AND (ts, stream, seq, epoch) {cmp} ({ts}, {stream}, {seq}, {})",
                    quote_bytes(epoch)
                ),
            };
            let sql = format!(
                "SELECT stream, ts, seq, epoch, line FROM {db}.records WHERE {cond} \
                 AND ts >= {lo} AND ts < {hi}{filters}{keyset} \
                 ORDER BY ts {dir}, stream {dir}, seq {dir}, epoch {dir} \
                 LIMIT 1 BY ts, stream, seq, epoch LIMIT {page} FORMAT RowBinary",
                db = self.store.db(),
                cond = self.cond,
                filters = self.filters,
                page = self.page,
            );
            let mut last = None;
            let mut stop = false;
            let rows = run(
                self.store,
                sql,
                p.deadline,
                p.max_scanned_bytes.saturating_sub(result.scanned_bytes),
                true,
                &mut |row| {
                    last = Some((row.ts, row.stream, row.seq, row.epoch.to_vec()));
                    result.scanned += 1;
                    result.scanned_bytes += row.line.len() as u64;
                    account(
                        result.scanned_bytes,
                        p.max_scanned_bytes,
                        row.line.len(),
                        checked,
                        p.deadline,
                    )?;
                    let Some(stream) = self.by_id.get(&row.stream) else {
                        return Ok(true);
                    };
                    if let Some(extracted) = run_stages(self.query, stream, row.line) {
                        let hit = Hit {
                            ts: row.ts,
                            seq: row.seq,
                            stream: (*stream).clone(),
                            line: row.line.to_vec(),
                            extracted,
                        };
                        let w = hit.weight();
                        if !result.hits.is_empty() && result.bytes + w > p.max_bytes {
                            result.truncated = true;
                            stop = true;
                            return Ok(false);
                        }
                        result.bytes += w;
                        result.hits.push(hit);
                        if result.hits.len() >= p.limit {
                            stop = true;
                            return Ok(false);
                        }
                    }
                    Ok(true)
                },
            )?;
            if stop {
                return Ok(true);
            }
            if rows < self.page {
                return Ok(false);
            }
            after = last;
        }
    }
}

pub(super) fn scan(
    store: &ClickHouseStore,
    query: &Query,
    streams: &[Arc<StreamInfo>],
    p: &ScanParams,
    f: &mut dyn FnMut(MatchedRecord<'_>) -> bool,
) -> Result<ScanStats, SearchError> {
    let mut stats = ScanStats::default();
    let (filters, _) = pushdown(query);
    for stream in streams {
        if p.start >= p.end {
            break;
        }
        let sql = format!(
            "SELECT ts, seq, epoch, line FROM {db}.records WHERE subscription = {sub} \
             AND stream = {id} AND ts >= {start} AND ts < {end}{filters} \
             ORDER BY ts, seq, epoch LIMIT 1 BY ts, seq, epoch FORMAT RowBinary",
            db = store.db(),
            sub = quote(stream.subscription()),
            id = stream.id,
            start = p.start,
            end = p.end,
        );
        let mut more = true;
        let mut checked = 0usize;
        run(
            store,
            sql,
            p.deadline,
            p.max_scanned_bytes.saturating_sub(stats.scanned_bytes),
            false,
            &mut |row| {
                stats.scanned += 1;
                stats.scanned_bytes += row.line.len() as u64;
                account(
                    stats.scanned_bytes,
                    p.max_scanned_bytes,
                    row.line.len(),
                    &mut checked,
                    p.deadline,
                )?;
                if let Some(extracted) = run_stages(query, stream, row.line) {
                    more = f(MatchedRecord {
                        stream,
                        ts: row.ts,
                        line: row.line,
                        extracted: extracted.as_deref(),
                    });
                }
                Ok(more)
            },
        )?;
        if !more {
            break;
        }
    }
    Ok(stats)
}

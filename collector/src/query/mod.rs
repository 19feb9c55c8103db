//! Search: the LogQL subset ([`parser`]) and its execution over the store.
//!
//! Execution: the selector is matched against the in-memory stream index
//! (restricted to the caller's subscription and to streams whose time span
//! overlaps the range); each matching stream's range is read with one
//! cursor, and the cursors are merged by time (newest first for
//! `direction=backward`, Loki's default) until `limit` lines passed every
//! stage. Line filters run on the stored bytes before anything is decoded;
//! `| json` parses a line only when the earlier stages kept it.
//!
//! Bounds: only the caller's subscription's part of the stream index is
//! read (one tenant's streams never slow another's queries); the answer
//! stops at `max_bytes` of lines (and extracted fields), marked
//! `truncated`, whatever `limit` asked for; the deadline is checked every
//! few thousand entries.

pub mod parser;
pub mod pool;

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Instant;

pub use parser::{parse, parse_with, ParseError, Query, QueryLimits, Stage};

use crate::store::{EntryIter, Store, StoreError, StreamInfo};

/// Highest `limit` a query may ask for.
pub const MAX_LIMIT: usize = 5000;

/// What to search.
#[derive(Debug, Clone)]
pub struct SearchParams {
    /// Unix ns, inclusive.
    pub start: i64,
    /// Unix ns, exclusive.
    pub end: i64,
    pub limit: usize,
    pub backward: bool,
    /// Only this subscription's streams (`None`: every subscription).
    pub subscription: Option<String>,
    /// Give up (with [`SearchError::Timeout`]) after this instant.
    pub deadline: Instant,
    /// Stop once the hits hold this many bytes (lines and extracted fields).
    pub max_bytes: usize,
    /// Whether the search may split into two threads (when nothing else
    /// is searching: under load one query per thread is fairer).
    pub parallel: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("query did not finish within its time limit; narrow the time range or the selector")]
    Timeout,
    #[error("a search thread panicked")]
    Panicked,
}

/// One matching line.
#[derive(Debug, Clone)]
pub struct Hit {
    pub ts: i64,
    pub seq: u64,
    pub stream: Arc<StreamInfo>,
    pub line: Vec<u8>,
    /// Fields extracted by `| json`, when the query has it.
    pub extracted: Option<Vec<(String, String)>>,
}

/// Search answer.
#[derive(Debug, Clone, Default)]
pub struct SearchResult {
    pub hits: Vec<Hit>,
    /// Entries read (before filtering).
    pub scanned: u64,
    /// Bytes of lines read.
    pub scanned_bytes: u64,
    /// Streams selected.
    pub streams: usize,
    /// The answer stopped at `max_bytes` before `limit` hits.
    pub truncated: bool,
    /// Bytes of the hits (lines and extracted fields).
    pub bytes: usize,
}

impl Hit {
    /// What the hit weighs against the answer's byte budget.
    pub fn weight(&self) -> usize {
        self.line.len()
            + self
                .extracted
                .as_ref()
                .map_or(0, |f| f.iter().map(|(k, v)| k.len() + v.len() + 8).sum())
    }
}

/// The streams a query selects for a caller.
pub fn select_streams(
    store: &Store,
    query: &Query,
    subscription: Option<&str>,
    start: i64,
    end: i64,
) -> Vec<Arc<StreamInfo>> {
    let mut streams: Vec<Arc<StreamInfo>> = store
        .streams_of(subscription)
        .into_iter()
        .filter(|s| s.records > 0 && s.min_ts < end && s.max_ts >= start)
        .filter(|s| {
            query
                .matchers
                .iter()
                .all(|m| m.matches(s.labels.get(&m.name).map(String::as_str).unwrap_or("")))
        })
        .collect();
    streams.sort_by_key(|s| s.id);
    streams
}

struct Head {
    ts: i64,
    seq: u64,
    idx: usize,
    backward: bool,
}

impl PartialEq for Head {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Head {
    // BinaryHeap pops the greatest: the newest for backward, the oldest
    // for forward; ties broken by stream then seq for a stable order.
    fn cmp(&self, o: &Self) -> Ordering {
        let natural = (self.ts, self.idx, self.seq).cmp(&(o.ts, o.idx, o.seq));
        if self.backward {
            natural
        } else {
            natural.reverse()
        }
    }
}

/// Flattens a JSON line the way Loki's `| json` does: nested keys joined
/// with `_`, characters other than `[a-zA-Z0-9_]` replaced by `_`, arrays
/// skipped, scalars as text.
pub fn json_fields(line: &[u8]) -> Option<Vec<(String, String)>> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let mut out = Vec::new();
    if let serde_json::Value::Object(map) = v {
        flatten("", &map, &mut out);
    }
    Some(out)
}

fn sanitize(k: &str, out: &mut String) {
    for c in k.chars() {
        out.push(if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        });
    }
}

fn flatten(
    prefix: &str,
    map: &serde_json::Map<String, serde_json::Value>,
    out: &mut Vec<(String, String)>,
) {
    for (k, v) in map {
        let mut name = String::with_capacity(prefix.len() + k.len() + 1);
        if !prefix.is_empty() {
            name.push_str(prefix);
            name.push('_');
        }
        sanitize(k, &mut name);
        match v {
            serde_json::Value::Object(m) => flatten(&name, m, out),
            serde_json::Value::Array(_) => {}
            serde_json::Value::String(s) => out.push((name, s.clone())),
            serde_json::Value::Null => out.push((name, String::new())),
            other => out.push((name, other.to_string())),
        }
    }
}

/// Runs a line through the query's stages; returns whether it passes and
/// the extracted fields (with Loki's `_extracted` suffix on clashes with
/// stream labels).
fn run_stages(
    query: &Query,
    stream: &StreamInfo,
    line: &[u8],
) -> Option<Option<Vec<(String, String)>>> {
    let mut extracted: Option<Vec<(String, String)>> = None;
    for stage in &query.stages {
        match stage {
            Stage::Line(f) => {
                if !f.matches(line) {
                    return None;
                }
            }
            Stage::Json => {
                let mut fields = json_fields(line).unwrap_or_default();
                for (k, _) in fields.iter_mut() {
                    if stream.labels.contains_key(k.as_str()) {
                        k.push_str("_extracted");
                    }
                }
                extracted = Some(fields);
            }
            Stage::Label(f) => {
                let v = extracted
                    .as_ref()
                    .and_then(|x| x.iter().rev().find(|(k, _)| *k == f.name))
                    .map(|(_, v)| v.as_str())
                    .or_else(|| stream.labels.get(&f.name).map(String::as_str));
                if !f.matches(v) {
                    return None;
                }
            }
        }
    }
    Some(extracted)
}

/// Runs `query` over the store.
///
/// When more than one stream is selected, the streams are split into two
/// halves of about equal size (by stored records) scanned on two threads;
/// each half yields its first `limit` hits in direction order, so merging
/// the two and keeping the first `limit` gives exactly the serial answer.
pub fn search(store: &Store, query: &Query, p: &SearchParams) -> Result<SearchResult, SearchError> {
    let streams = select_streams(store, query, p.subscription.as_deref(), p.start, p.end);
    if p.limit == 0 || p.start >= p.end {
        return Ok(SearchResult {
            streams: streams.len(),
            ..SearchResult::default()
        });
    }
    if streams.len() < 2 || !p.parallel {
        return search_streams(store, query, p, &streams);
    }
    let mut by_size = streams.clone();
    by_size.sort_by_key(|s| std::cmp::Reverse(s.records));
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let (mut wa, mut wb) = (0u64, 0u64);
    for s in by_size {
        if wa <= wb {
            wa += s.records;
            a.push(s);
        } else {
            wb += s.records;
            b.push(s);
        }
    }
    // Ties on time break by stream id in both halves and in the merge.
    a.sort_by_key(|s| s.id);
    b.sort_by_key(|s| s.id);
    let (ra, rb) = std::thread::scope(|scope| {
        let other = scope.spawn(|| search_streams(store, query, p, &b));
        let mine = search_streams(store, query, p, &a);
        (mine, other.join())
    });
    let ra = ra?;
    let rb = rb.map_err(|_| SearchError::Panicked)??;
    let mut hits = Vec::with_capacity(ra.hits.len() + rb.hits.len());
    // A half cut at the byte budget has no hits past its cut: the merge
    // must stop when it runs out of that half's hits.
    let (cut_a, cut_b) = (ra.truncated, rb.truncated);
    let mut truncated = false;
    let mut bytes = 0usize;
    let (mut ia, mut ib) = (
        ra.hits.into_iter().peekable(),
        rb.hits.into_iter().peekable(),
    );
    while hits.len() < p.limit {
        let take_a = match (ia.peek(), ib.peek()) {
            (Some(x), Some(y)) => {
                let kx = (x.ts, x.stream.id, x.seq);
                let ky = (y.ts, y.stream.id, y.seq);
                if p.backward {
                    kx >= ky
                } else {
                    kx <= ky
                }
            }
            (Some(_), None) if cut_b => {
                truncated = true;
                break;
            }
            (Some(_), None) => true,
            (None, Some(_)) if cut_a => {
                truncated = true;
                break;
            }
            (None, Some(_)) => false,
            (None, None) => {
                truncated = cut_a || cut_b;
                break;
            }
        };
        let next = if take_a { ia.next() } else { ib.next() };
        if let Some(h) = next {
            let w = h.weight();
            if !hits.is_empty() && bytes + w > p.max_bytes {
                truncated = true;
                break;
            }
            bytes += w;
            hits.push(h);
        }
    }
    Ok(SearchResult {
        hits,
        scanned: ra.scanned + rb.scanned,
        scanned_bytes: ra.scanned_bytes + rb.scanned_bytes,
        streams: streams.len(),
        truncated,
        bytes,
    })
}

/// Searches `streams` on the calling thread.
fn search_streams(
    store: &Store,
    query: &Query,
    p: &SearchParams,
    streams: &[Arc<StreamInfo>],
) -> Result<SearchResult, SearchError> {
    let mut result = SearchResult {
        streams: streams.len(),
        ..SearchResult::default()
    };
    let mut iters: Vec<EntryIter<'_>> = Vec::with_capacity(streams.len());
    let mut heap = BinaryHeap::with_capacity(streams.len());
    for (idx, s) in streams.iter().enumerate() {
        let it = store.scan(s.id, p.start, p.end, p.backward)?;
        iters.push(it);
        push_head(&mut iters[idx], idx, p.backward, &mut heap)?;
    }
    let mut checked = 0u32;
    while let Some(head) = heap.pop() {
        let it = &mut iters[head.idx];
        if let Some((ts, seq, line)) = it.current() {
            result.scanned += 1;
            result.scanned_bytes += line.len() as u64;
            let stream = &streams[head.idx];
            if let Some(extracted) = run_stages(query, stream, line) {
                let hit = Hit {
                    ts,
                    seq,
                    stream: stream.clone(),
                    line: line.to_vec(),
                    extracted,
                };
                let w = hit.weight();
                if !result.hits.is_empty() && result.bytes + w > p.max_bytes {
                    result.truncated = true;
                    break;
                }
                result.bytes += w;
                result.hits.push(hit);
                if result.hits.len() >= p.limit {
                    break;
                }
            }
        }
        it.advance();
        push_head(it, head.idx, p.backward, &mut heap)?;
        checked += 1;
        if checked >= 4096 {
            checked = 0;
            if Instant::now() >= p.deadline {
                return Err(SearchError::Timeout);
            }
        }
    }
    Ok(result)
}

/// Pushes the next well-formed entry of `it` (skipping malformed ones).
fn push_head(
    it: &mut EntryIter<'_>,
    idx: usize,
    backward: bool,
    heap: &mut BinaryHeap<Head>,
) -> Result<(), SearchError> {
    while it.valid() {
        if let Some((ts, seq, _)) = it.current() {
            heap.push(Head {
                ts,
                seq,
                idx,
                backward,
            });
            return Ok(());
        }
        it.advance();
    }
    it.status()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fields_flatten_like_loki() {
        let f = json_fields(
            br#"{"pipe":"orders","metrics":{"entities.changes_last_run":150},"ok":true,"list":[1],"n":null}"#,
        )
        .expect("json");
        assert!(f.contains(&("pipe".into(), "orders".into())));
        assert!(f.contains(&("metrics_entities_changes_last_run".into(), "150".into())));
        assert!(f.contains(&("ok".into(), "true".into())));
        assert!(f.contains(&("n".into(), String::new())));
        assert!(!f.iter().any(|(k, _)| k == "list"));
        assert!(json_fields(b"not json").is_none());
    }
}

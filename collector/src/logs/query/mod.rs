//! Search, backend-neutral: the LogQL subset ([`parser`]), what a search
//! asks and answers ([`SearchParams`], [`SearchResult`]), the stages a line
//! goes through ([`run_stages`]), and the pool searches run on ([`pool`]).
//! Each [`LogStore`](crate::logs::LogStore) executes searches over its own
//! storage (the RocksDB store: `rocks/search.rs`).
//!
//! Bounds every backend honours: only the caller's subscription is read;
//! the answer stops at `max_bytes` of lines (and extracted fields), marked
//! `truncated`, whatever `limit` asked for; the deadline is checked as the
//! search goes.

pub mod metric;
pub mod parser;
pub mod pool;

use std::sync::Arc;
use std::time::Instant;

pub use parser::{
    parse, parse_expr_with, parse_with, AggOp, Expr, Grouping, MetricExpr, ParseError, Query,
    QueryLimits, RangeFn, Stage,
};

use crate::logs::model::{StoreError, StreamInfo};

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
    /// Give up (with [`SearchError::ScanLimit`]) once this many bytes of
    /// lines were read.
    pub max_scanned_bytes: u64,
}

/// What a scan for a metric query reads: every record of the given
/// streams in `[start, end)` that passes the query's stages.
#[derive(Debug, Clone)]
pub struct ScanParams {
    /// Unix ns, inclusive.
    pub start: i64,
    /// Unix ns, exclusive.
    pub end: i64,
    /// Give up (with [`SearchError::Timeout`]) after this instant.
    pub deadline: Instant,
    /// Give up (with [`SearchError::ScanLimit`]) once this many bytes of
    /// lines were read.
    pub max_scanned_bytes: u64,
}

/// One record a scan found.
#[derive(Debug, Clone, Copy)]
pub struct MatchedRecord<'a> {
    pub stream: &'a Arc<StreamInfo>,
    pub ts: i64,
    pub line: &'a [u8],
    /// Fields extracted by `| json`, when the query has it.
    pub extracted: Option<&'a [(String, String)]>,
}

/// What a scan read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Entries read (before filtering).
    pub scanned: u64,
    /// Bytes of lines read.
    pub scanned_bytes: u64,
}

/// Width of a bucket of the volume index (see
/// [`LogStore::volume`](crate::logs::LogStore::volume)): 10 s.
pub const VOLUME_BUCKET_NS: i64 = 10_000_000_000;

/// Records and line bytes of one stream in one volume bucket: the records
/// with `end - VOLUME_BUCKET_NS < ts <= end` (left-open, right-closed, like
/// a LogQL range).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VolumeBucket {
    /// A multiple of [`VOLUME_BUCKET_NS`].
    pub end: i64,
    pub records: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("query did not finish within its time limit; narrow the time range or the selector")]
    Timeout,
    #[error("a search thread panicked")]
    Panicked,
    #[error("query would read more than {0} bytes of log lines (--max-query-scan-bytes); narrow the time range or the selector")]
    ScanLimit(u64),
    #[error("query produces more than {0} series (--max-query-series); aggregate (e.g. sum by (pipe) (...)) or narrow the selector")]
    TooManySeries(usize),
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

/// The streams among `streams` a query selects in `[start, end)`, by id.
pub fn filter_streams(
    streams: Vec<Arc<StreamInfo>>,
    query: &Query,
    start: i64,
    end: i64,
) -> Vec<Arc<StreamInfo>> {
    let mut streams: Vec<Arc<StreamInfo>> = streams
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
pub fn run_stages(
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

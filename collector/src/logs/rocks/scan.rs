//! Scans for metric queries over the RocksDB store: each selected stream's
//! time range is read oldest first with one cursor (no merge by time: a
//! metric query aggregates, order does not matter across streams), every
//! entry goes through the query's stages and the survivors go to the
//! caller's closure.

use std::sync::Arc;
use std::time::Instant;

use super::{SkipPlan, Store};
use crate::logs::model::StreamInfo;
use crate::logs::query::{
    pool, run_stages, MatchedRecord, Query, ScanParams, ScanStats, SearchError,
};

/// Entries between two looks at the clock and the query pool.
const CHECK_EVERY: usize = 1024;

/// Runs the scan (see [`crate::logs::LogStore::scan_matches`]).
pub fn scan_matches(
    store: &Store,
    query: &Query,
    streams: &[Arc<StreamInfo>],
    p: &ScanParams,
    f: &mut dyn FnMut(MatchedRecord<'_>) -> bool,
) -> Result<ScanStats, SearchError> {
    let mut stats = ScanStats::default();
    if p.start >= p.end {
        return Ok(stats);
    }
    let mut work = 0usize;
    let plan = SkipPlan::new(query);
    for stream in streams {
        if stream.max_ts < p.start || stream.min_ts >= p.end {
            continue;
        }
        // Only the time ranges the skip index cannot rule out.
        let mut it = store.cursor(&plan, stream, p.start, p.end, false)?;
        while it.valid() {
            if let Some((ts, _seq, line)) = it.current() {
                stats.scanned += 1;
                stats.scanned_bytes += line.len() as u64;
                if stats.scanned_bytes > p.max_scanned_bytes {
                    return Err(SearchError::ScanLimit(p.max_scanned_bytes));
                }
                if let Some(extracted) = run_stages(query, stream, line) {
                    let keep_going = f(MatchedRecord {
                        stream,
                        ts,
                        line,
                        extracted: extracted.as_deref(),
                    });
                    if !keep_going {
                        return Ok(stats);
                    }
                }
                work += 1 + line.len() / 4096;
            }
            it.advance();
            if work >= CHECK_EVERY {
                work = 0;
                pool::checkpoint();
                if Instant::now() >= p.deadline {
                    return Err(SearchError::Timeout);
                }
            }
        }
        it.status()?;
    }
    Ok(stats)
}

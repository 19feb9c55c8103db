//! Search over the RocksDB store: the selector picks streams from the
//! caller's part of the in-memory index; each stream's time range is read
//! with one cursor and the cursors are merged by time (newest first for
//! `direction=backward`, Loki's default) until `limit` lines, or the byte
//! budget, passed every stage. Line filters run on the stored bytes before
//! anything is decoded; `| json` parses a line only when the earlier stages
//! kept it. Each stream is read only in the time ranges its skip index
//! units cannot rule out (`skip.rs`).
//!
//! A cursor on a stream holds the data block under it (scans do not fill
//! the block cache, so each cursor has its own copy): a query over
//! thousands of streams of large lines held one per stream at once, and
//! four such queries took a collector from 160 MiB to 2-6 GiB (found by the
//! noisy-neighbour bench). At most [`MAX_OPEN`] cursors, holding about
//! [`MAX_OPEN_BYTES`] of lines, stay open per search thread; the others
//! are parked on their position ([`RangeCursor::park`]) and opened again
//! when the merge reaches them, so the order is the same.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::{RangeCursor, SkipPlan, Store};
use crate::logs::model::StreamInfo;
use crate::logs::query::{pool, run_stages, Hit, Query, SearchError, SearchParams, SearchResult};

/// Entries (or 4 KiB of lines) between two looks at the clock: the
/// deadline and the query pool's demotion.
const CHECK_EVERY: usize = 256;

/// Cursors one search thread keeps open at once.
const MAX_OPEN: usize = 256;
/// Bytes of the lines under the open cursors (a measure of the blocks
/// they hold) one search thread keeps at once.
const MAX_OPEN_BYTES: usize = 8 << 20;

/// The cursors of one search that are open, oldest opened first, and the
/// bytes of the lines under them; see the module documentation.
struct Opened {
    max: usize,
    max_bytes: usize,
    order: VecDeque<usize>,
    /// Per cursor: the bytes counted for it while it is open.
    bytes: Vec<usize>,
    open: Vec<bool>,
    total: usize,
}

impl Opened {
    fn new(streams: usize, max: usize, max_bytes: usize) -> Opened {
        Opened {
            max: max.max(1),
            max_bytes,
            order: VecDeque::new(),
            bytes: vec![0; streams],
            open: vec![false; streams],
            total: 0,
        }
    }

    /// Cursor `idx` is (still) open with a line of `len` bytes under it:
    /// parks the oldest opened others while over the bounds.
    fn note(&mut self, idx: usize, len: usize, iters: &mut [RangeCursor<'_>]) {
        if self.open[idx] {
            self.total = self.total - self.bytes[idx] + len;
            self.bytes[idx] = len;
        } else {
            self.open[idx] = true;
            self.bytes[idx] = len;
            self.total += len;
            self.order.push_back(idx);
        }
        while self.order.len() > self.max || self.total > self.max_bytes {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if old == idx {
                // The one in use stays open; it goes to the back.
                self.order.push_back(old);
                if self.order.len() == 1 {
                    break;
                }
                continue;
            }
            self.open[old] = false;
            self.total -= self.bytes[old];
            self.bytes[old] = 0;
            iters[old].park();
        }
    }

    /// Cursor `idx` ran out: it holds nothing any more.
    fn done(&mut self, idx: usize) {
        if self.open[idx] {
            self.open[idx] = false;
            self.total -= self.bytes[idx];
            self.bytes[idx] = 0;
            self.order.retain(|&i| i != idx);
        }
    }
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

/// Runs `query` over the store.
///
/// When more than one stream is selected, the streams are split into two
/// halves of about equal size (by stored records) scanned on two threads;
/// each half yields its first `limit` hits in direction order, so merging
/// the two and keeping the first `limit` gives exactly the serial answer.
pub fn search(store: &Store, query: &Query, p: &SearchParams) -> Result<SearchResult, SearchError> {
    let streams = store.select_streams(query, p.subscription.as_deref(), p.start, p.end);
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
    let demotion = pool::current();
    let (ra, rb) = std::thread::scope(|scope| {
        let other = scope.spawn(|| {
            pool::adopt(demotion);
            search_streams(store, query, p, &b)
        });
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
    search_streams_within(store, query, p, streams, MAX_OPEN, MAX_OPEN_BYTES)
}

/// [`search_streams`] with at most `max_open` cursors holding about
/// `max_open_bytes` of lines open at once.
pub(super) fn search_streams_within(
    store: &Store,
    query: &Query,
    p: &SearchParams,
    streams: &[Arc<StreamInfo>],
    max_open: usize,
    max_open_bytes: usize,
) -> Result<SearchResult, SearchError> {
    let mut result = SearchResult {
        streams: streams.len(),
        ..SearchResult::default()
    };
    let plan = SkipPlan::new(query);
    let mut iters: Vec<RangeCursor<'_>> = Vec::with_capacity(streams.len());
    let mut heap = BinaryHeap::with_capacity(streams.len());
    let mut opened = Opened::new(streams.len(), max_open, max_open_bytes);
    for (idx, s) in streams.iter().enumerate() {
        // Only the time ranges the skip index cannot rule out.
        let it = store.cursor(&plan, s, p.start, p.end, p.backward)?;
        iters.push(it);
        push_head(&mut iters[idx], idx, p.backward, &mut heap)?;
        keep(&mut opened, idx, &mut iters);
    }
    let mut work = 0usize;
    while let Some(head) = heap.pop() {
        if iters[head.idx].is_parked() {
            iters[head.idx].unpark();
            let current = iters[head.idx].current().map(|(ts, seq, _)| (ts, seq));
            if current != Some((head.ts, head.seq)) {
                // Its entry went meanwhile (retention): the next one
                // takes its place in the merge.
                push_head(&mut iters[head.idx], head.idx, p.backward, &mut heap)?;
                keep(&mut opened, head.idx, &mut iters);
                continue;
            }
            keep(&mut opened, head.idx, &mut iters);
        }
        let it = &mut iters[head.idx];
        let mut line_len = 0;
        if let Some((ts, seq, line)) = it.current() {
            line_len = line.len();
            result.scanned += 1;
            result.scanned_bytes += line.len() as u64;
            if result.scanned_bytes > p.max_scanned_bytes {
                return Err(SearchError::ScanLimit(p.max_scanned_bytes));
            }
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
        keep(&mut opened, head.idx, &mut iters);
        // Work since the last look at the clock: entries, and their bytes
        // (a few huge lines are as much work as many small ones).
        work += 1 + line_len / 4096;
        if work >= CHECK_EVERY {
            work = 0;
            pool::checkpoint();
            if Instant::now() >= p.deadline {
                return Err(SearchError::Timeout);
            }
        }
    }
    Ok(result)
}

/// Counts cursor `idx` among the open ones (parking others while over the
/// bounds), or as done when it ran out.
fn keep(opened: &mut Opened, idx: usize, iters: &mut [RangeCursor<'_>]) {
    match iters[idx].current() {
        Some((_, _, line)) => {
            let len = line.len();
            opened.note(idx, len, iters);
        }
        None if iters[idx].valid() => opened.note(idx, 0, iters),
        None => opened.done(idx),
    }
}

/// Pushes the next well-formed entry of `it` (skipping malformed ones).
fn push_head(
    it: &mut RangeCursor<'_>,
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

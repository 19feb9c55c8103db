//! The owner's side: reads an owned subscription's rows of the shared
//! feed after its per-writer positions, appends them to the local
//! evaluation feed as one commit, and hands them to the notifier.
//!
//! The notifier's watermark is a position in the local evaluation feed;
//! the state written to ZooKeeper needs the per-writer positions that
//! watermark stands for. [`Cursor`] keeps, for each local commit not yet
//! known to be covered, where each of its records came from, so that
//! [`Cursor::positions_at`] answers exactly (also for a watermark in the
//! middle of a commit).

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use schemas::Record;
use tokio_util::sync::CancellationToken;

use super::{Inner, Positions};
use crate::logs::clickhouse::feed::{Span, WriterPos};

/// Rows read per writer per poll.
const READ_ROWS: usize = 5_000;
/// Recently pulled (source, seq, ts) kept per subscription to skip a
/// record two collectors both inserted (a shipper's retry on another
/// collector while the first still inserted it).
const RECENT_KEYS: usize = 100_000;

/// Where each record of a local commit came from: (writer, position).
type Origins = Vec<(Arc<str>, WriterPos)>;

/// A subscription's read position and its local commits' origins.
#[derive(Debug)]
pub struct Cursor {
    /// Covers every record of the commits no longer in `commits`.
    base: Positions,
    /// Positions after everything pulled (where the next read starts).
    head: Positions,
    /// Local commit -> (writer, position) of each of its records.
    commits: VecDeque<(u64, Origins)>,
    recent: HashSet<(String, u64, i64)>,
    recent_order: VecDeque<(String, u64, i64)>,
}

fn advance(p: &mut Positions, writer: &str, pos: WriterPos) {
    match p.get_mut(writer) {
        Some(cur) if *cur >= pos => {}
        Some(cur) => *cur = pos,
        None => {
            p.insert(writer.to_string(), pos);
        }
    }
}

impl Cursor {
    pub fn new(positions: Positions) -> Cursor {
        Cursor {
            base: positions.clone(),
            head: positions,
            commits: VecDeque::new(),
            recent: HashSet::new(),
            recent_order: VecDeque::new(),
        }
    }

    pub fn head(&self) -> &Positions {
        &self.head
    }

    /// Notes a pulled row; `false` when its record was pulled already
    /// (from another writer): skip it.
    fn first_time(&mut self, r: &Record) -> bool {
        let k = (r.source.clone(), r.seq, r.ts);
        if !self.recent.insert(k.clone()) {
            return false;
        }
        self.recent_order.push_back(k);
        if self.recent_order.len() > RECENT_KEYS {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
        true
    }

    fn forget(&mut self, r: &Record) {
        self.recent.remove(&(r.source.clone(), r.seq, r.ts));
    }

    /// Rows looked at (kept or skipped) move the head.
    fn passed(&mut self, writer: &str, pos: WriterPos) {
        advance(&mut self.head, writer, pos);
        if self.commits.is_empty() {
            // Nothing waits for evaluation before it: covered already.
            advance(&mut self.base, writer, pos);
        }
    }

    fn committed(&mut self, commit: u64, origins: Origins) {
        self.commits.push_back((commit, origins));
    }

    /// The per-writer positions that the evaluation watermark
    /// (`commit`, `index`) of the local feed stands for. Commits before it
    /// are folded into the base (the watermark never goes back).
    pub fn positions_at(&mut self, watermark: (u64, u32)) -> Positions {
        let (c, i) = watermark;
        while self.commits.front().is_some_and(|(lc, _)| *lc < c) {
            if let Some((_, origins)) = self.commits.pop_front() {
                for (w, pos) in origins {
                    advance(&mut self.base, &w, pos);
                }
            }
        }
        let mut out = self.base.clone();
        if let Some((lc, origins)) = self.commits.front() {
            if *lc == c {
                for (w, pos) in origins.iter().take(i as usize + 1) {
                    advance(&mut out, w, *pos);
                }
            }
        }
        if self.commits.is_empty() {
            // Rows skipped (duplicates) after the last commit.
            for (w, pos) in &self.head {
                advance(&mut out, w, *pos);
            }
        }
        out
    }
}

/// How often the writers of a subscription's feed are listed (a writer
/// first met is read from its first row).
const DISCOVERY: Duration = Duration::from_secs(1);
/// Commits a read far behind covers at first, and at most.
const FIRST_WINDOW: u64 = 256;
const MAX_WINDOW: u64 = 1 << 24;

/// How each writer of one subscription is read: a writer whose last read
/// found rows may be behind, and is read over a bounded range of commits
/// (halved when it filled `READ_ROWS`, doubled when it found few); one
/// whose last read found nothing is read to the end (cheap when there is
/// nothing after its position; also how a gap wider than the range is
/// crossed).
#[derive(Debug, Default)]
struct Reads {
    windows: BTreeMap<String, u64>,
    to_end: HashSet<String>,
    /// Listed in the feed, not yet read from.
    new: BTreeSet<String>,
    next_listing: Option<tokio::time::Instant>,
}

impl Reads {
    fn spans(&mut self, head: &Positions) -> BTreeMap<String, Span> {
        self.new.retain(|w| !head.contains_key(w));
        let mut out: BTreeMap<String, Span> = head
            .iter()
            .map(|(w, p)| {
                let commits = if self.to_end.contains(w) {
                    None
                } else {
                    Some(*self.windows.get(w).unwrap_or(&FIRST_WINDOW))
                };
                (
                    w.clone(),
                    Span {
                        after: Some(*p),
                        commits,
                    },
                )
            })
            .collect();
        for w in &self.new {
            out.insert(
                w.clone(),
                Span {
                    after: None,
                    commits: None,
                },
            );
        }
        out
    }

    /// Adapts to what a read of `spans` found (`per`: rows per writer);
    /// whether a writer may have more right away.
    fn found(&mut self, spans: &BTreeMap<String, Span>, per: &BTreeMap<&str, usize>) -> bool {
        let mut more = false;
        for (w, span) in spans {
            let n = per.get(w.as_str()).copied().unwrap_or(0);
            more |= n >= READ_ROWS;
            match span.commits {
                Some(_) if n == 0 => {
                    self.to_end.insert(w.clone());
                }
                Some(window) => {
                    more = true;
                    let next = if n >= READ_ROWS {
                        (window / 2).max(1)
                    } else if n < READ_ROWS / 4 {
                        window.saturating_mul(2).min(MAX_WINDOW)
                    } else {
                        window
                    };
                    self.windows.insert(w.clone(), next);
                }
                None if n > 0 => {
                    self.to_end.remove(w);
                }
                None => {}
            }
        }
        more
    }
}

/// Pulls `sub` until `stop`.
pub(crate) async fn run(inner: Arc<Inner>, sub: String, stop: CancellationToken) {
    let mut wait = inner.cfg.poll;
    let mut reads = Reads::default();
    loop {
        let now = tokio::time::Instant::now();
        if reads.next_listing.is_none_or(|t| t <= now) {
            reads.next_listing = Some(now + DISCOVERY);
            let listed = tokio::select! {
                _ = stop.cancelled() => return,
                r = inner.feed.writers(&sub) => r,
            };
            match listed {
                Ok(ws) => reads.new.extend(ws),
                Err(e) => {
                    inner.metrics.errors.inc();
                    tracing::warn!(subscription = %sub, error = %e, "listing the shared feed's writers failed");
                }
            }
        }
        let Some(after) = inner.with_cursor(&sub, |c| c.head().clone()) else {
            return;
        };
        let spans = reads.spans(&after);
        let rows = tokio::select! {
            _ = stop.cancelled() => return,
            r = inner.feed.read(&sub, &spans, READ_ROWS) => r,
        };
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                inner.metrics.errors.inc();
                tracing::warn!(subscription = %sub, error = %e, "reading the shared feed failed");
                wait = (wait * 2).min(Duration::from_secs(5));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        wait = inner.cfg.poll;
        let mut per: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &rows {
            *per.entry(r.writer.as_str()).or_default() += 1;
        }
        let more = reads.found(&spans, &per);
        drop(per);
        if !rows.is_empty() {
            if let Err(e) = take(&inner, &sub, rows).await {
                inner.metrics.errors.inc();
                tracing::error!(subscription = %sub, error = %e, "cannot append to the evaluation feed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        }
        if !more {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Appends `rows` (one subscription's) to the evaluation feed as one
/// commit and hands them to the notifier. The cursor's head moves only
/// once the commit is written (with its origins, in one step).
async fn take(
    inner: &Arc<Inner>,
    sub: &str,
    rows: Vec<crate::logs::clickhouse::feed::FeedRow>,
) -> Result<(), String> {
    let mut keep = Vec::with_capacity(rows.len());
    let mut origins = Vec::with_capacity(rows.len());
    let mut seen = Vec::with_capacity(rows.len());
    let mut writers: BTreeMap<String, Arc<str>> = BTreeMap::new();
    let mut skipped = 0u64;
    let still = inner.with_cursor(sub, |c| {
        for r in rows {
            let w = writers
                .entry(r.writer.clone())
                .or_insert_with(|| Arc::from(r.writer.as_str()))
                .clone();
            seen.push((w.clone(), r.pos));
            if r.record.subscription != sub || !c.first_time(&r.record) {
                skipped += 1;
                continue;
            }
            origins.push((w, r.pos));
            keep.push(r.record);
        }
    });
    if still.is_none() {
        return Ok(());
    }
    inner.metrics.pulled_duplicates.inc_by(skipped);
    let n = keep.len() as u64;
    let records = Arc::new(keep);
    let commit = if records.is_empty() {
        None
    } else {
        let (pulled, s, r2) = (inner.pulled.clone(), sub.to_string(), records.clone());
        let written = tokio::task::spawn_blocking(move || {
            let list: Vec<(&str, &Record)> = r2.iter().map(|r| ("", r)).collect();
            let c = pulled
                .feed_begin(&[(s.as_str(), list)])
                .map_err(|e| e.to_string())?;
            pulled.feed_finish(c, true).map_err(|e| e.to_string())?;
            Ok::<u64, String>(c)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match written {
            Ok(c) => Some(c),
            Err(e) => {
                // Read again next time: not "pulled already".
                inner.with_cursor(sub, |c| {
                    for r in records.iter() {
                        c.forget(r);
                    }
                });
                return Err(e);
            }
        }
    };
    let owned = inner.with_cursor(sub, |c| {
        if let Some(commit) = commit {
            c.committed(commit, origins);
        }
        for (w, pos) in &seen {
            c.passed(w, *pos);
        }
    });
    if let (Some(()), Some(commit)) = (owned, commit) {
        inner.metrics.pulled.inc_by(n);
        inner.notifier.on_committed(commit, records);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(p: &Positions, w: &str) -> Option<WriterPos> {
        p.get(w).copied()
    }

    #[test]
    fn reads_bound_a_writer_behind_and_read_to_the_end_when_caught_up() {
        let mut reads = Reads::default();
        let mut head: Positions = BTreeMap::new();
        head.insert("c0".into(), (10, 3));
        reads.new.insert("c0".into());
        reads.new.insert("c1".into());
        // c0 is known (bounded range), c1 is read from its first row.
        let spans = reads.spans(&head);
        assert_eq!(
            spans["c0"],
            Span {
                after: Some((10, 3)),
                commits: Some(FIRST_WINDOW)
            }
        );
        assert_eq!(
            spans["c1"],
            Span {
                after: None,
                commits: None
            }
        );
        // A full read halves the range and asks for more at once.
        let per: BTreeMap<&str, usize> = [("c0", READ_ROWS)].into_iter().collect();
        assert!(reads.found(&spans, &per));
        assert_eq!(reads.spans(&head)["c0"].commits, Some(FIRST_WINDOW / 2));
        // A few rows: the range doubles, still more may follow.
        let spans = reads.spans(&head);
        let per: BTreeMap<&str, usize> = [("c0", 3)].into_iter().collect();
        assert!(reads.found(&spans, &per));
        assert_eq!(reads.spans(&head)["c0"].commits, Some(FIRST_WINDOW));
        // Nothing in the range: the next read goes to the end (crossing a
        // gap wider than the range), and nothing more right away.
        let spans = reads.spans(&head);
        assert!(!reads.found(&spans, &BTreeMap::new()));
        assert_eq!(reads.spans(&head)["c0"].commits, None);
        // Nothing at the end either: it stays so (caught up).
        let spans = reads.spans(&head);
        assert!(!reads.found(&spans, &BTreeMap::new()));
        assert_eq!(reads.spans(&head)["c0"].commits, None);
        // Rows found at the end: bounded again.
        let spans = reads.spans(&head);
        let per: BTreeMap<&str, usize> = [("c0", 1)].into_iter().collect();
        assert!(!reads.found(&spans, &per));
        assert_eq!(reads.spans(&head)["c0"].commits, Some(FIRST_WINDOW));
        // c1, once read from, has a position and is no longer new.
        head.insert("c1".into(), (1, 0));
        let spans = reads.spans(&head);
        assert_eq!(spans["c1"].after, Some((1, 0)));
        assert!(reads.new.is_empty());
        // The range never passes its bounds.
        for _ in 0..40 {
            let spans = reads.spans(&head);
            let per: BTreeMap<&str, usize> = [("c0", 1)].into_iter().collect();
            reads.found(&spans, &per);
        }
        assert_eq!(reads.spans(&head)["c0"].commits, Some(MAX_WINDOW));
        for _ in 0..40 {
            let spans = reads.spans(&head);
            let per: BTreeMap<&str, usize> = [("c0", READ_ROWS)].into_iter().collect();
            reads.found(&spans, &per);
        }
        assert_eq!(reads.spans(&head)["c0"].commits, Some(1));
    }

    #[test]
    fn positions_follow_the_watermark_inside_and_across_commits() {
        let mut start = Positions::new();
        start.insert("a".into(), (3, 9));
        let mut c = Cursor::new(start);
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        // As `take` does: the commit first, then the head.
        c.committed(
            10,
            vec![
                (a.clone(), (4, 0)),
                (a.clone(), (4, 1)),
                (b.clone(), (1, 0)),
            ],
        );
        for (w, pos) in [("a", (4, 0)), ("a", (4, 1)), ("b", (1, 0))] {
            c.passed(w, pos);
        }
        c.committed(11, vec![(b.clone(), (1, 1))]);
        c.passed("b", (1, 1));
        // Nothing of the commits evaluated: the start.
        let p = c.positions_at((0, 0));
        assert_eq!(at(&p, "a"), Some((3, 9)));
        assert_eq!(at(&p, "b"), None);
        // Inside commit 10: its first two records.
        let p = c.positions_at((10, 1));
        assert_eq!(at(&p, "a"), Some((4, 1)));
        assert_eq!(at(&p, "b"), None);
        // All of 10 and the first of 11.
        let p = c.positions_at((11, 0));
        assert_eq!(at(&p, "b"), Some((1, 1)));
        assert_eq!(at(&p, "a"), Some((4, 1)));
        // The head is where reads go on.
        assert_eq!(at(c.head(), "b"), Some((1, 1)));
    }

    #[test]
    fn a_record_pulled_twice_is_taken_once() {
        let mut c = Cursor::new(Positions::new());
        let r = Record {
            seq: 5,
            ts: 7,
            source: "n1".into(),
            subscription: "s".into(),
            body: schemas::Body::Log(schemas::LogBody {
                level: schemas::Level::Info,
                target: "app".into(),
                message: "x".into(),
                fields: Default::default(),
            }),
        };
        assert!(c.first_time(&r));
        assert!(!c.first_time(&r));
        // Skipped rows still move the positions once nothing waits.
        c.passed("w2", (8, 0));
        assert_eq!(c.positions_at((0, 0)).get("w2"), Some(&(8, 0)));
    }
}

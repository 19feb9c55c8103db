//! The evaluation thread: records are evaluated off the store's commit
//! path, in commit order per subscription, from a bounded in-memory queue
//! backed by the store's durable commit feed (see `feed.rs` for why a
//! feed, and the watermark that makes every acknowledged record evaluated
//! exactly once).
//!
//! - The store's writer thread hands each commit's records to
//!   [`Notifier::on_committed`], which never waits: it queues them (at most
//!   [`NotifierConfig::queue_records`] records in memory) or, when the
//!   queue is full, only notes which subscriptions have records waiting in
//!   the feed ("spilled"). Ingest is never slowed by evaluation.
//! - The thread keeps per subscription the records after its watermark, in
//!   order: a queue in memory, then (when spilled) the rest in the feed,
//!   read back in chunks once the queue is empty. A subscription holds at
//!   most [`Limits::max_deferred_per_subscription`] records, and
//!   [`Limits::max_deferred_bytes_per_subscription`] bytes of them, in
//!   memory.
//! - It evaluates in rounds, one subscription at a time, round robin: at
//!   most [`ROUND_RECORDS`] records within the subscription's budget
//!   (`share.rs`); the round's state changes, notifications and the new
//!   watermark go out in one write. A subscription whose share is used up
//!   waits (its records wait, in order); the others go on.
//! - After a restart it first replays every subscription's feed after its
//!   watermark. What is evaluated is trimmed from the feed.
//! - A terminated subscription's records committed before the termination
//!   are dropped (checked under the engine lock, where the termination
//!   happens).
//!
//! Lag (records committed but not evaluated, and the age of the oldest) is
//! exported per subscription (`notifier_evaluation_lag_records`,
//! `notifier_evaluation_lag_seconds`).
//!
//! [`NotifierConfig::queue_records`]: crate::NotifierConfig::queue_records
//! [`Limits::max_deferred_per_subscription`]: crate::Limits::max_deferred_per_subscription

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use schemas::Record;

use crate::error::NotifierError;
use crate::feed::{Feed, FeedPos};
use crate::handoff::{record_bytes, Link, Msg};
use crate::service::Notifier;

/// Records one round evaluates at most before it writes its effects and
/// releases the engine (API calls and timers get their turn). A record of
/// another subscription waits for at most the round in progress (a few
/// milliseconds of a busy subscription's rules), so rounds are short; the
/// fixed cost of a round (one unsynced write of its effects) stays a few
/// percent of its evaluation.
pub const ROUND_RECORDS: usize = 256;
/// Records read back from the feed at once, and their stored bytes (at
/// least one record).
const READ_RECORDS: usize = 4096;
const READ_BYTES: usize = 16 << 20;
/// Messages taken from the commit queue between two rounds.
const TAKE_MESSAGES: usize = 256;
/// A subscription's feed is trimmed at most this often (or after this
/// many commits).
const TRIM_INTERVAL: Duration = Duration::from_secs(1);
const TRIM_COMMITS: u64 = 1024;
/// How often the lag gauges are refreshed, and the engine's memory.
const REFRESH: Duration = Duration::from_millis(250);
const MEMORY_REFRESH: Duration = Duration::from_secs(10);

/// A record waiting for evaluation: shared with the rest of its commit
/// (or feed read), never copied.
struct Pending {
    pos: FeedPos,
    at: i64,
    /// Its [`record_bytes`].
    bytes: usize,
    batch: Arc<Vec<Record>>,
    idx: usize,
}

impl Pending {
    fn record(&self) -> &Record {
        &self.batch[self.idx]
    }
}

/// The evaluation state of one subscription.
#[derive(Default)]
struct Sub {
    /// Position of the last record evaluated (written with its effects).
    done: FeedPos,
    /// The records after `done`, in order.
    queue: VecDeque<Pending>,
    /// Their bytes.
    queued_bytes: usize,
    /// Records after the queue wait in the feed.
    spilled: bool,
    /// About how many, and the commit time of the oldest.
    backlog: u64,
    oldest: Option<i64>,
    /// Commits before this one are trimmed from the feed.
    trimmed: u64,
    trimmed_at: Option<Instant>,
    /// Its share of evaluation time is used up until then.
    ready_at: Option<Instant>,
    /// In the round-robin order.
    listed: bool,
}

impl Sub {
    fn tail(&self) -> FeedPos {
        self.queue.back().map_or(self.done, |p| p.pos)
    }

    fn has_work(&self) -> bool {
        !self.queue.is_empty() || self.spilled
    }

    fn lag(&self) -> (u64, Option<i64>) {
        let backlog = if self.spilled { self.backlog } else { 0 };
        let oldest = self.queue.front().map(|p| p.at).or(self.oldest);
        (self.queue.len() as u64 + backlog, oldest)
    }
}

struct Evaluator {
    n: Notifier,
    feed: Arc<dyn Feed>,
    link: Arc<Link>,
    rx: mpsc::Receiver<Msg>,
    subs: HashMap<String, Sub>,
    /// Subscriptions with work, round robin.
    order: VecDeque<String>,
    /// Where a subscription seen for the first time starts: its persisted
    /// watermark, or after its termination.
    floors: HashMap<String, FeedPos>,
    /// Records one subscription holds in memory, and their bytes.
    per_sub: usize,
    per_sub_bytes: usize,
    stop: Option<Instant>,
    refreshed: Instant,
    measured: Option<Instant>,
    /// Records were evaluated since the memory was last measured.
    worked: bool,
    /// The subscription of the last round, put back in the order only
    /// after the commits that arrived during the round are taken: another
    /// subscription's record that arrived meanwhile runs first.
    ran: Option<String>,
}

impl Notifier {
    /// Starts the evaluation thread over the store's commit `feed`. It
    /// first replays every subscription's records after its watermark,
    /// then evaluates what [`Notifier::on_committed`] hands it.
    pub fn start_evaluator(&self, feed: Arc<dyn Feed>) -> Result<(), NotifierError> {
        let limits = &self.inner.config.limits;
        let max = self.inner.config.queue_records.max(1);
        // Installed before the replay reads the feed: a commit made
        // meanwhile is either in the feed by then, or in the channel.
        let max_bytes = self.inner.config.queue_bytes.max(1);
        let (link, rx, watermarks) = self.inner.eval.install(max, max_bytes)?;
        let ev = Evaluator {
            n: self.clone(),
            feed,
            link,
            rx,
            subs: HashMap::new(),
            order: VecDeque::new(),
            floors: watermarks,
            per_sub: limits.max_deferred_per_subscription.clamp(1, max),
            per_sub_bytes: limits
                .max_deferred_bytes_per_subscription
                .clamp(1, max_bytes),
            stop: None,
            refreshed: Instant::now(),
            measured: None,
            worked: false,
            ran: None,
        };
        let handle = std::thread::Builder::new()
            .name("notifier-eval".into())
            .spawn(move || ev.run())
            .map_err(|e| NotifierError::storage(format!("start the evaluation thread: {e}")))?;
        self.inner.eval.started(handle);
        Ok(())
    }

    /// The store committed `records` as commit number `commit` (called on
    /// its writer thread, in commit order). Never waits: the records are
    /// queued for the evaluation thread, or, when its queue is full (or it
    /// is not running), left in the store's commit feed, from where it
    /// reads them.
    pub fn on_committed(&self, commit: u64, records: Arc<Vec<Record>>) {
        let spilled = self.inner.eval.committed(commit, records);
        if spilled > 0 {
            self.inner.metrics.spilled.inc_by(spilled as u64);
        }
    }

    /// Stops the evaluation thread once it has evaluated what is pending,
    /// or at `within` from now (what is left waits in the feed for the
    /// next start). Call after the store stopped committing.
    pub fn stop_evaluator(&self, within: Duration) {
        self.inner.eval.stop(within);
    }
}

impl Evaluator {
    fn run(mut self) {
        self.replay();
        loop {
            match self.rx.recv_timeout(self.idle_wait()) {
                Ok(m) => self.take(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.stop.get_or_insert_with(Instant::now);
                }
            }
            for _ in 0..TAKE_MESSAGES {
                match self.rx.try_recv() {
                    Ok(m) => self.take(m),
                    Err(_) => break,
                }
            }
            self.absorb();
            self.relist();
            if let Some(deadline) = self.stop {
                let working = self.subs.values().any(Sub::has_work);
                if !working || Instant::now() >= deadline {
                    break;
                }
            }
            self.round();
            self.refresh();
        }
        self.refreshed = Instant::now() - REFRESH;
        self.refresh();
        tracing::debug!("notifier evaluation thread stopped");
    }

    /// Subscriptions with records in the feed after their watermarks
    /// start spilled: their records are read back first.
    fn replay(&mut self) {
        let subs = loop {
            match self.feed.subscriptions() {
                Ok(s) => break s,
                Err(e) => {
                    self.n.inner.metrics.errors.inc();
                    tracing::error!(error = %e, "notifier: cannot read the commit feed; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        };
        // Subscriptions evaluated before, with nothing left in the feed, are
        // known too (their lag gauges read 0).
        let mut subs = subs;
        let listed: std::collections::HashSet<String> = subs.iter().cloned().collect();
        subs.extend(self.floors.keys().filter(|k| !listed.contains(*k)).cloned());
        for sub in subs {
            let done = self.floors.get(&sub).copied().unwrap_or_default();
            let backlog = match self.feed.backlog(&sub, done) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(subscription = %sub, error = %e, "notifier: cannot size the commit feed");
                    crate::feed::FeedBacklog {
                        records: 1,
                        oldest: None,
                    }
                }
            };
            if backlog.records > 0 {
                tracing::info!(
                    subscription = %sub,
                    records = backlog.records,
                    "notifier: evaluating records committed before the restart"
                );
            }
            let s = sub_of(&mut self.subs, &self.floors, &sub);
            s.spilled = backlog.records > 0;
            s.backlog = backlog.records;
            s.oldest = backlog.oldest;
            let idle = !s.spilled;
            list(&mut self.order, &sub, s);
            if idle {
                self.trim(&sub, true);
            }
        }
    }

    /// Takes the hook's notes of records that went to the feed only.
    /// Before each message: a note about an earlier commit is then always
    /// seen before a later commit of the same subscription is queued.
    fn absorb(&mut self) {
        let Some(spills) = self.link.take_spills() else {
            return;
        };
        for (sub, spill) in spills {
            let s = sub_of(&mut self.subs, &self.floors, &sub);
            s.spilled = true;
            s.backlog += spill.records;
            s.oldest = Some(s.oldest.map_or(spill.oldest, |o| o.min(spill.oldest)));
            list(&mut self.order, &sub, s);
        }
    }

    fn take(&mut self, m: Msg) {
        let (commit, at, records) = match m {
            Msg::Stop { deadline } => {
                self.stop = Some(deadline);
                return;
            }
            Msg::Committed {
                commit,
                at,
                records,
            } => (commit, at, records),
        };
        self.absorb();
        // Per subscription, in order (batches of one subscription mostly
        // follow each other in a commit).
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let sub = r.subscription.as_str();
            match groups.iter_mut().rev().find(|(s, _)| *s == sub) {
                Some((_, v)) => v.push(i),
                None => groups.push((sub, vec![i])),
            }
        }
        let (per_sub, per_sub_bytes) = (self.per_sub, self.per_sub_bytes);
        let mut released = 0usize;
        let mut released_bytes = 0usize;
        for (sub, idxs) in groups {
            let s = sub_of(&mut self.subs, &self.floors, sub);
            let tail = s.tail();
            for (i, idx) in idxs.into_iter().enumerate() {
                let pos = FeedPos::new(commit, i as u32);
                let bytes = record_bytes(&records[idx]);
                if pos <= tail {
                    // Read from the feed already.
                    released += 1;
                    released_bytes += bytes;
                } else if s.spilled
                    || s.queue.len() >= per_sub
                    || (!s.queue.is_empty() && s.queued_bytes + bytes > per_sub_bytes)
                {
                    s.spilled = true;
                    s.backlog += 1;
                    s.oldest.get_or_insert(at);
                    released += 1;
                    released_bytes += bytes;
                } else {
                    s.queued_bytes += bytes;
                    s.queue.push_back(Pending {
                        pos,
                        at,
                        bytes,
                        batch: records.clone(),
                        idx,
                    });
                }
            }
            list(&mut self.order, sub, s);
        }
        self.link.queued.fetch_sub(released, Ordering::AcqRel);
        self.link
            .queued_bytes
            .fetch_sub(released_bytes, Ordering::AcqRel);
    }

    /// How long to wait for a message: not at all while a subscription
    /// can run; else until the first one's share refills (at most the
    /// refresh interval).
    fn idle_wait(&self) -> Duration {
        if self.ran.is_some() {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut wait = REFRESH;
        for sub in &self.order {
            match self.subs.get(sub).and_then(|s| s.ready_at) {
                Some(t) if t > now => wait = wait.min(t - now),
                _ => return Duration::ZERO,
            }
        }
        wait
    }

    /// The next subscription that may run now, taken off the order.
    fn next(&mut self) -> Option<String> {
        let now = Instant::now();
        for _ in 0..self.order.len() {
            let sub = self.order.pop_front()?;
            match self.subs.get_mut(&sub) {
                Some(s) if s.ready_at.is_some_and(|t| t > now) => self.order.push_back(sub),
                Some(s) => {
                    s.listed = false;
                    s.ready_at = None;
                    return Some(sub);
                }
                None => {}
            }
        }
        None
    }

    /// One round of one subscription.
    fn round(&mut self) {
        let Some(sub) = self.next() else {
            return;
        };
        let needs_read = self
            .subs
            .get(&sub)
            .is_some_and(|s| s.queue.is_empty() && s.spilled);
        if needs_read {
            self.read(&sub);
        }
        let Some(s) = self.subs.get_mut(&sub) else {
            return;
        };
        if s.queue.is_empty() {
            list(&mut self.order, &sub, s);
            self.trim(&sub, false);
            return;
        }
        let n = &self.n;
        let limits = &n.inner.config.limits;
        let mut budget = n.inner.shares.budget(limits, std::iter::once(sub.as_str()));
        let mut evaluated = 0usize;
        let mut purged_at = None;
        let queue = &s.queue;
        let written = n.evaluate(true, |e, now| {
            // Under the engine lock, where a termination happens.
            if let Some(p) = n.inner.eval.take_purged(&sub) {
                purged_at = Some(p);
                return;
            }
            let records = queue.iter().take(ROUND_RECORDS).map(Pending::record);
            evaluated = e.evaluate_while(&sub, records, now, &mut budget);
            if evaluated > 0 {
                e.fx.watermarks
                    .push((sub.clone(), queue[evaluated - 1].pos));
            }
        });
        if written.is_err() {
            // Counted and logged by `evaluate`; the engine moved on in
            // memory, and the next write carries a later watermark.
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(p) = purged_at {
            // Its records up to the termination are dropped; what it
            // stores later starts after them.
            let (before, before_bytes) = (s.queue.len(), s.queued_bytes);
            s.queue.retain(|q| q.pos.commit > p);
            s.queued_bytes = s.queue.iter().map(|q| q.bytes).sum();
            self.link
                .queued
                .fetch_sub(before - s.queue.len(), Ordering::AcqRel);
            self.link
                .queued_bytes
                .fetch_sub(before_bytes - s.queued_bytes, Ordering::AcqRel);
            let floor = FeedPos::new(p, u32::MAX);
            self.floors.insert(sub.clone(), floor);
            if s.has_work() {
                s.done = s.done.max(floor);
                s.trimmed = s.trimmed.max(p + 1);
                list(&mut self.order, &sub, s);
            } else {
                self.subs.remove(&sub);
            }
            return;
        }
        let mut freed = 0usize;
        for p in s.queue.drain(..evaluated) {
            s.done = p.pos;
            freed += p.bytes;
        }
        s.queued_bytes -= freed;
        self.link.queued.fetch_sub(evaluated, Ordering::AcqRel);
        self.link.queued_bytes.fetch_sub(freed, Ordering::AcqRel);
        n.inner.metrics.records.inc_by(evaluated as u64);
        self.worked |= evaluated > 0;
        n.settle(&budget);
        n.account(&budget);
        if evaluated == 0 {
            // Its share of evaluation time is used up: it waits.
            let wait = n.inner.shares.wait(limits, &[sub.as_str()]);
            s.ready_at = Some(Instant::now() + wait.unwrap_or(Duration::from_millis(10)));
            let (records, _) = s.lag();
            n.inner.warnings.warn(
                &sub,
                "eval_lag",
                &format!(
                    "{records} records wait for evaluation: the subscription's rules used up its share of evaluation time (--notifier-eval-share {}); its alerts are delayed; reduce or simplify its rules",
                    limits.eval_share
                ),
            );
        }
        // Back in the order after the commits that arrive meanwhile
        // (`relist`); until then no commit lists it.
        s.listed = true;
        self.ran = Some(sub.clone());
        self.trim(&sub, false);
    }

    /// Puts the subscription of the last round back in the order, behind
    /// the subscriptions whose commits arrived during the round.
    fn relist(&mut self) {
        let Some(sub) = self.ran.take() else {
            return;
        };
        if let Some(s) = self.subs.get_mut(&sub) {
            s.listed = false;
            list(&mut self.order, &sub, s);
        }
    }

    /// Reads the next chunk of `sub`'s records from the feed.
    fn read(&mut self, sub: &str) {
        let Some(s) = self.subs.get(sub) else {
            return;
        };
        let after = s.tail();
        let want = READ_RECORDS.min(self.per_sub);
        let want_bytes = READ_BYTES.min(self.per_sub_bytes);
        let read = match self.feed.read(sub, after, want, want_bytes) {
            Ok(r) => r,
            Err(e) => {
                self.n.inner.metrics.errors.inc();
                tracing::error!(subscription = %sub, error = %e, "notifier: cannot read the commit feed; retrying");
                if let Some(s) = self.subs.get_mut(sub) {
                    s.ready_at = Some(Instant::now() + Duration::from_secs(1));
                }
                return;
            }
        };
        let m = &self.n.inner.metrics;
        m.feed_read.inc_by(read.records.len() as u64);
        m.feed_missing.inc_by(read.missing);
        let Some(s) = self.subs.get_mut(sub) else {
            return;
        };
        let got = read.records.len() as u64 + read.missing;
        s.backlog = s.backlog.saturating_sub(got);
        self.link
            .queued
            .fetch_add(read.records.len(), Ordering::AcqRel);
        let mut at = Vec::with_capacity(read.records.len());
        let batch: Vec<Record> = read
            .records
            .into_iter()
            .map(|r| {
                at.push((r.pos, r.committed_at, record_bytes(&r.record)));
                r.record
            })
            .collect();
        let bytes: usize = at.iter().map(|a| a.2).sum();
        self.link.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        s.queued_bytes += bytes;
        let batch = Arc::new(batch);
        for (idx, (pos, committed_at, bytes)) in at.into_iter().enumerate() {
            s.oldest = Some(committed_at);
            s.queue.push_back(Pending {
                pos,
                bytes,
                at: committed_at,
                batch: batch.clone(),
                idx,
            });
        }
        if read.end {
            s.spilled = false;
            s.backlog = 0;
            s.oldest = None;
        }
        if s.queue.is_empty() {
            // Only records the store no longer holds: move past them.
            if let Some(last) = read.last.filter(|l| *l > s.done) {
                tracing::warn!(subscription = %sub, records = read.missing, "notifier: records deleted by retention before they were evaluated");
                s.done = last;
                let _ = self.n.evaluate(true, |e, _| {
                    e.fx.watermarks.push((sub.to_string(), last));
                });
            }
        }
    }

    /// Trims what `sub` has evaluated from the feed, at most every
    /// [`TRIM_INTERVAL`] unless `now`.
    fn trim(&mut self, sub: &str, now: bool) {
        let Some(s) = self.subs.get_mut(sub) else {
            return;
        };
        // Every record of the commit of `done` is evaluated once nothing
        // waits; otherwise only the commits before it.
        let before = if s.has_work() {
            s.done.commit
        } else {
            s.done.commit.saturating_add(1)
        };
        if before <= s.trimmed {
            return;
        }
        let due = now
            || before - s.trimmed >= TRIM_COMMITS
            || s.trimmed_at.is_none_or(|t| t.elapsed() >= TRIM_INTERVAL);
        if !due {
            return;
        }
        match self.feed.trim(sub, before) {
            Ok(()) => {
                s.trimmed = before;
                s.trimmed_at = Some(Instant::now());
            }
            Err(e) => {
                self.n.inner.metrics.errors.inc();
                tracing::error!(subscription = %sub, error = %e, "notifier: cannot trim the commit feed");
            }
        }
    }

    /// Lag gauges; the engine's memory now and then.
    fn refresh(&mut self) {
        if self.refreshed.elapsed() < REFRESH {
            return;
        }
        self.refreshed = Instant::now();
        let now = schemas::time::now_nanos();
        let m = &self.n.inner.metrics;
        for (sub, s) in &self.subs {
            let (records, oldest) = s.lag();
            let age = oldest.map_or(0.0, |t| now.saturating_sub(t).max(0) as f64 / 1e9);
            m.set_lag(sub, records, age);
        }
        // Every MEMORY_REFRESH, and once when a burst of work is done (so
        // that the figure follows what was just evaluated).
        let idle = !self.subs.values().any(Sub::has_work);
        let settled = self.worked && idle;
        if settled || self.measured.is_none_or(|t| t.elapsed() >= MEMORY_REFRESH) {
            self.measured = Some(Instant::now());
            self.worked = false;
            self.n.measure_memory();
        }
    }
}

/// The state of `sub`, made at its floor (persisted watermark) the first
/// time.
fn sub_of<'a>(
    subs: &'a mut HashMap<String, Sub>,
    floors: &HashMap<String, FeedPos>,
    sub: &str,
) -> &'a mut Sub {
    if !subs.contains_key(sub) {
        let done = floors.get(sub).copied().unwrap_or_default();
        subs.insert(
            sub.to_string(),
            Sub {
                done,
                trimmed: done.commit,
                ..Sub::default()
            },
        );
    }
    subs.get_mut(sub).expect("inserted above")
}

/// Puts `sub` in the round-robin order if it has work and is not there.
fn list(order: &mut VecDeque<String>, sub: &str, s: &mut Sub) {
    if s.has_work() && !s.listed {
        s.listed = true;
        order.push_back(sub.to_string());
    }
}

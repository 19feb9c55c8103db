//! Live tail: every commit group the store makes durable is offered to the
//! open tails (an [`IngestObserver`] on the writer thread: one atomic load
//! when nobody tails). Each subscription with open tails has a channel of
//! its own that carries only its records (copied out of the commit group;
//! an admin's tail of every subscription, `"*"`, gets the whole group).
//! Each tail filters its channel's records through its query (selector and
//! stages, as a search would) and sends what passes.
//!
//! Bounds: tails open at once, overall and per subscription (refused with
//! [`TailError`] naming the flag). What the tails of a subscription have not
//! read yet is bounded twice: [`TAIL_BACKLOG`] commit groups per tail (a
//! tail that falls further behind skips what it missed) and
//! [`TailLimits::max_buffer_bytes_per_subscription`] bytes of records per
//! subscription, [`TailLimits::max_buffer_bytes`] over all of them (a commit
//! group that would go past either is not offered to that subscription's
//! tails). Either way the tail is told how many commit groups it dropped,
//! so a slow reader never slows ingest or holds more memory than the
//! bounds; a tenant's slow tails drop only its own tails' groups (until
//! the total bound is reached too).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use schemas::Record;
use tokio::sync::broadcast;

use super::labels::{record_labels, record_line, Labels};
use super::model::{IngestObserver, StreamInfo};
use super::query::{run_stages, Query};

/// Commit groups a tail may lag behind before it drops them.
pub const TAIL_BACKLOG: usize = 1024;
/// The channel of an admin's tails (every subscription).
const ALL: &str = "*";

/// Limits of live tails.
#[derive(Debug, Clone)]
pub struct TailLimits {
    /// Tails open at once.
    pub max_tails: usize,
    /// Tails open at once for one subscription.
    pub max_tails_per_subscription: usize,
    /// Bytes of records (as held in memory) offered to tails and not read
    /// yet by all of them, over every subscription.
    pub max_buffer_bytes: usize,
    /// The same for one subscription's tails.
    pub max_buffer_bytes_per_subscription: usize,
}

impl Default for TailLimits {
    fn default() -> Self {
        TailLimits {
            max_tails: 256,
            max_tails_per_subscription: 8,
            max_buffer_bytes: 256 << 20,
            max_buffer_bytes_per_subscription: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TailError {
    #[error("{limit} live tails are open already (--max-tails)")]
    Total { limit: usize },
    #[error(
        "this subscription has {limit} live tails open already (--max-tails-per-subscription)"
    )]
    Subscription { limit: usize },
}

/// Records offered to a subscription's tails; their bytes count against
/// the bounds until every tail has read them (or skipped them).
#[derive(Debug)]
struct Held {
    records: Arc<Vec<Record>>,
    bytes: usize,
    retained: [Arc<AtomicUsize>; 2],
}

impl Drop for Held {
    fn drop(&mut self) {
        for r in &self.retained {
            r.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// One subscription's channel (or the admins' [`ALL`]).
#[derive(Debug)]
struct Chan {
    tx: broadcast::Sender<Arc<Held>>,
    /// Bytes of [`Held`] records not dropped yet.
    retained: Arc<AtomicUsize>,
    /// Commit groups not offered (over a byte bound).
    skipped: AtomicU64,
}

/// The open tails and their channels.
#[derive(Debug)]
pub struct TailHub {
    limits: TailLimits,
    open: AtomicUsize,
    /// Per subscription with open tails: how many, and its channel.
    chans: Mutex<HashMap<String, (usize, Arc<Chan>)>>,
    /// Bytes held over every channel.
    retained: Arc<AtomicUsize>,
}

impl TailHub {
    pub fn new(limits: TailLimits) -> Arc<TailHub> {
        Arc::new(TailHub {
            limits,
            open: AtomicUsize::new(0),
            chans: Mutex::new(HashMap::new()),
            retained: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn chans(&self) -> std::sync::MutexGuard<'_, HashMap<String, (usize, Arc<Chan>)>> {
        self.chans.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a tail for `subscription` (`"*"`: an admin's, every
    /// subscription), within the limits.
    pub fn open(self: &Arc<Self>, subscription: &str) -> Result<Tail, TailError> {
        let mut chans = self.chans();
        if self.open.load(Ordering::Relaxed) >= self.limits.max_tails {
            return Err(TailError::Total {
                limit: self.limits.max_tails,
            });
        }
        if chans.get(subscription).map_or(0, |(n, _)| *n) >= self.limits.max_tails_per_subscription
        {
            return Err(TailError::Subscription {
                limit: self.limits.max_tails_per_subscription,
            });
        }
        let (n, chan) = chans.entry(subscription.to_string()).or_insert_with(|| {
            let (tx, _) = broadcast::channel(TAIL_BACKLOG);
            let chan = Chan {
                tx,
                retained: Arc::new(AtomicUsize::new(0)),
                skipped: AtomicU64::new(0),
            };
            (0, Arc::new(chan))
        });
        *n += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Tail {
            hub: self.clone(),
            subscription: subscription.to_string(),
            rx: chan.tx.subscribe(),
            seen_skipped: chan.skipped.load(Ordering::Acquire),
            chan: chan.clone(),
            stash: None,
        })
    }

    /// Tails open now.
    pub fn open_tails(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Bytes of records offered to tails and not read by all of them yet.
    pub fn buffered_bytes(&self) -> usize {
        self.retained.load(Ordering::Acquire)
    }

    /// Offers a commit group (`whole`: the same records, shared, when the
    /// caller has them so) to the channels of the subscriptions it holds
    /// records of.
    fn offer(&self, records: &[Record], whole: Option<Arc<Vec<Record>>>) {
        if self.open.load(Ordering::Relaxed) == 0 {
            return;
        }
        let chans: HashMap<String, Arc<Chan>> = self
            .chans()
            .iter()
            .map(|(k, (_, c))| (k.clone(), c.clone()))
            .collect();
        // One hash lookup per record: its subscription's copy, if tailed.
        let mut per: HashMap<&str, Vec<Record>> = HashMap::new();
        if chans.len() > usize::from(chans.contains_key(ALL)) {
            for r in records {
                if let Some(v) = per.get_mut(r.subscription.as_str()) {
                    v.push(r.clone());
                } else if chans.contains_key(&r.subscription) {
                    per.insert(r.subscription.as_str(), vec![r.clone()]);
                }
            }
        }
        if let Some(chan) = chans.get(ALL) {
            let all = whole.unwrap_or_else(|| Arc::new(records.to_vec()));
            self.send(chan, all);
        }
        for (sub, recs) in per {
            if let Some(chan) = chans.get(sub) {
                self.send(chan, Arc::new(recs));
            }
        }
    }

    fn send(&self, chan: &Chan, records: Arc<Vec<Record>>) {
        if chan.tx.receiver_count() == 0 {
            return;
        }
        let bytes: usize = records.iter().map(notifier::record_bytes).sum();
        let l = &self.limits;
        let over = |held: &AtomicUsize, max: usize| {
            held.load(Ordering::Acquire).saturating_add(bytes) > max
        };
        if over(&chan.retained, l.max_buffer_bytes_per_subscription)
            || over(&self.retained, l.max_buffer_bytes)
        {
            chan.skipped.fetch_add(1, Ordering::AcqRel);
            return;
        }
        chan.retained.fetch_add(bytes, Ordering::AcqRel);
        self.retained.fetch_add(bytes, Ordering::AcqRel);
        let held = Held {
            records,
            bytes,
            retained: [chan.retained.clone(), self.retained.clone()],
        };
        // Fails only when the last receiver went away meanwhile (then the
        // records are dropped here, and their bytes taken off).
        let _ = chan.tx.send(Arc::new(held));
    }
}

impl IngestObserver for TailHub {
    fn committed(&self, records: &[Record]) {
        self.offer(records, None);
    }

    fn committed_feed(&self, _commit: u64, records: Arc<Vec<Record>>) {
        if self.open.load(Ordering::Relaxed) > 0 {
            self.offer(&records, Some(records.clone()));
        }
    }
}

/// One open tail; closing it (drop) frees its place.
#[derive(Debug)]
pub struct Tail {
    hub: Arc<TailHub>,
    subscription: String,
    chan: Arc<Chan>,
    rx: broadcast::Receiver<Arc<Held>>,
    /// The channel's `skipped` already reported.
    seen_skipped: u64,
    /// Records received after a skip, given after the skip is reported.
    stash: Option<Arc<Vec<Record>>>,
}

/// What a tail receives next.
#[derive(Debug)]
pub enum TailEvent {
    /// A commit group's records of the tail's subscription (of every
    /// subscription for `"*"`: filter with [`matching`]).
    Records(Arc<Vec<Record>>),
    /// This many commit groups were skipped: the tail fell behind.
    Dropped(u64),
    /// The store stopped.
    Closed,
}

impl Tail {
    pub async fn next(&mut self) -> TailEvent {
        if let Some(r) = self.stash.take() {
            return TailEvent::Records(r);
        }
        if let Some(n) = self.newly_skipped() {
            return TailEvent::Dropped(n);
        }
        match self.rx.recv().await {
            Ok(h) => {
                let records = h.records.clone();
                // Read: its bytes count no more once every tail has it.
                drop(h);
                match self.newly_skipped() {
                    Some(n) => {
                        self.stash = Some(records);
                        TailEvent::Dropped(n)
                    }
                    None => TailEvent::Records(records),
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => TailEvent::Dropped(n),
            Err(broadcast::error::RecvError::Closed) => TailEvent::Closed,
        }
    }

    fn newly_skipped(&mut self) -> Option<u64> {
        let now = self.chan.skipped.load(Ordering::Acquire);
        let n = now.saturating_sub(self.seen_skipped);
        self.seen_skipped = now;
        (n > 0).then_some(n)
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let mut chans = self.hub.chans();
        if let Some((n, _)) = chans.get_mut(&self.subscription) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                chans.remove(&self.subscription);
            }
        }
        self.hub.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One record that passed a tail's query: its labels (with extracted
/// fields, as a search answers them), time, seq and line.
#[derive(Debug, Clone, PartialEq)]
pub struct TailEntry {
    pub labels: Labels,
    pub source: String,
    pub ts: i64,
    pub seq: u64,
    pub line: Vec<u8>,
}

/// The records of `records` that `subscription` (`None`: any) may see and
/// that pass `query`.
pub fn matching(records: &[Record], subscription: Option<&str>, query: &Query) -> Vec<TailEntry> {
    let mut out = Vec::new();
    for r in records {
        if subscription.is_some_and(|s| s != r.subscription) {
            continue;
        }
        let labels = record_labels(r);
        let selected = query
            .matchers
            .iter()
            .all(|m| m.matches(labels.get(&m.name).map(String::as_str).unwrap_or("")));
        if !selected {
            continue;
        }
        let Ok(line) = record_line(r) else {
            continue;
        };
        let stream = StreamInfo {
            id: 0,
            labels: Arc::new(labels),
            min_ts: r.ts,
            max_ts: r.ts,
            records: 1,
        };
        if let Some(extracted) = run_stages(query, &stream, &line) {
            let mut labels = (*stream.labels).clone();
            for (k, v) in extracted.unwrap_or_default() {
                labels.insert(k, v);
            }
            out.push(TailEntry {
                labels,
                source: r.source.clone(),
                ts: r.ts,
                seq: r.seq,
                line,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use testkit::records::{log_body, record};

    fn group(subs: &[&str], seq: u64, text: &str) -> Arc<Vec<Record>> {
        Arc::new(
            subs.iter()
                .map(|s| record(s, "node", seq, seq as i64, log_body("t", text)))
                .collect(),
        )
    }

    /// Everything already waiting on the tail.
    async fn drain(t: &mut Tail) -> (Vec<Arc<Vec<Record>>>, u64) {
        let (mut got, mut dropped) = (Vec::new(), 0);
        while let Ok(ev) = tokio::time::timeout(Duration::from_millis(10), t.next()).await {
            match ev {
                TailEvent::Records(r) => got.push(r),
                TailEvent::Dropped(n) => dropped += n,
                TailEvent::Closed => break,
            }
        }
        (got, dropped)
    }

    /// A tenant whose tail never reads holds at most its byte bound; the
    /// other tenant's tail gets every record of its own, and only those.
    #[tokio::test]
    async fn a_slow_tail_holds_at_most_its_bytes_and_never_blinds_another_tenant() {
        let hub = TailHub::new(TailLimits {
            max_buffer_bytes_per_subscription: 64 << 10,
            ..TailLimits::default()
        });
        let mut slow = hub.open("a").unwrap();
        let mut fast = hub.open("b").unwrap();
        let mut admin = hub.open(ALL).unwrap();
        let text = "x".repeat(4 << 10);
        let mut got_b = 0;
        let mut admin_seen = 0;
        for seq in 1..=100u64 {
            // a's records in every group, b's in every other one.
            let subs: &[&str] = if seq % 2 == 0 { &["a", "b"] } else { &["a"] };
            let g = group(subs, seq, &text);
            hub.committed_feed(seq, g);
            assert!(
                hub.buffered_bytes() <= (64 << 10) * 3,
                "held {} bytes",
                hub.buffered_bytes()
            );
            let (recs, dropped) = drain(&mut fast).await;
            assert_eq!(dropped, 0, "b's tail dropped nothing");
            for r in &recs {
                assert!(r.iter().all(|x| x.subscription == "b"), "only b's records");
                got_b += r.len();
            }
            let (recs, _) = drain(&mut admin).await;
            admin_seen += recs.iter().map(|r| r.len()).sum::<usize>();
        }
        assert_eq!(got_b, 50, "b's tail got each of its records");
        assert!(admin_seen > 0);
        // a's tail gets what fit, then is told how many groups it missed.
        let (recs, dropped) = drain(&mut slow).await;
        let kept = recs.len() as u64;
        assert!(dropped > 0 && kept > 0, "kept {kept}, dropped {dropped}");
        assert_eq!(kept + dropped, 100, "every group either kept or counted");
        assert!(recs
            .iter()
            .flat_map(|r| r.iter())
            .all(|x| x.subscription == "a"));
        // Read by every tail: nothing held any more, and new groups flow.
        assert_eq!(hub.buffered_bytes(), 0);
        hub.committed(&group(&["a"], 101, "after"));
        let (recs, dropped) = drain(&mut slow).await;
        assert_eq!((recs.len(), dropped), (1, 0));
        drop((slow, fast, admin));
        assert_eq!(hub.open_tails(), 0);
        assert_eq!(hub.buffered_bytes(), 0);
    }

    #[tokio::test]
    async fn tails_per_subscription_are_refused_past_the_limit_without_a_leak() {
        let hub = TailHub::new(TailLimits {
            max_tails_per_subscription: 1,
            ..TailLimits::default()
        });
        let t = hub.open("a").unwrap();
        assert_eq!(
            hub.open("a").unwrap_err(),
            TailError::Subscription { limit: 1 }
        );
        drop(t);
        assert!(hub.chans().is_empty());
        let _again = hub.open("a").unwrap();
    }
}

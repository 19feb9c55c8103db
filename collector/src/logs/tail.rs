//! Live tail: every commit group the store makes durable is offered to the
//! open tails (an [`IngestObserver`] on the writer thread: one atomic load
//! when nobody tails, one `Arc` handed to a broadcast channel otherwise).
//! Each tail filters the records of its subscription through its query
//! (selector and stages, as a search would) and sends what passes.
//!
//! Bounds: tails open at once, overall and per subscription (refused with
//! [`TailError`] naming the flag); each tail's backlog is the channel's
//! [`TAIL_BACKLOG`] commit groups: a tail that falls further behind skips
//! what it missed and is told how many commit groups it dropped, so a slow
//! reader never slows ingest or holds memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use schemas::Record;
use tokio::sync::broadcast;

use super::labels::{record_labels, record_line, Labels};
use super::model::{IngestObserver, StreamInfo};
use super::query::{run_stages, Query};

/// Commit groups a tail may lag behind before it drops them.
pub const TAIL_BACKLOG: usize = 1024;

/// Limits of live tails.
#[derive(Debug, Clone)]
pub struct TailLimits {
    /// Tails open at once.
    pub max_tails: usize,
    /// Tails open at once for one subscription.
    pub max_tails_per_subscription: usize,
}

impl Default for TailLimits {
    fn default() -> Self {
        TailLimits {
            max_tails: 256,
            max_tails_per_subscription: 8,
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

/// The open tails and the channel that feeds them.
#[derive(Debug)]
pub struct TailHub {
    tx: broadcast::Sender<Arc<Vec<Record>>>,
    limits: TailLimits,
    open: AtomicUsize,
    per_subscription: Mutex<HashMap<String, usize>>,
}

impl TailHub {
    pub fn new(limits: TailLimits) -> Arc<TailHub> {
        let (tx, _) = broadcast::channel(TAIL_BACKLOG);
        Arc::new(TailHub {
            tx,
            limits,
            open: AtomicUsize::new(0),
            per_subscription: Mutex::new(HashMap::new()),
        })
    }

    /// Opens a tail for `subscription` (`"*"`: an admin's, every
    /// subscription), within the limits.
    pub fn open(self: &Arc<Self>, subscription: &str) -> Result<Tail, TailError> {
        let mut per = self
            .per_subscription
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.open.load(Ordering::Relaxed) >= self.limits.max_tails {
            return Err(TailError::Total {
                limit: self.limits.max_tails,
            });
        }
        let n = per.entry(subscription.to_string()).or_insert(0);
        if *n >= self.limits.max_tails_per_subscription {
            return Err(TailError::Subscription {
                limit: self.limits.max_tails_per_subscription,
            });
        }
        *n += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Tail {
            hub: self.clone(),
            subscription: subscription.to_string(),
            rx: self.tx.subscribe(),
        })
    }

    /// Tails open now.
    pub fn open_tails(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn offer(&self, records: impl FnOnce() -> Arc<Vec<Record>>) {
        if self.tx.receiver_count() > 0 {
            // Fails only when the last receiver went away meanwhile.
            let _ = self.tx.send(records());
        }
    }
}

impl IngestObserver for TailHub {
    fn committed(&self, records: &[Record]) {
        self.offer(|| Arc::new(records.to_vec()));
    }

    fn committed_feed(&self, _commit: u64, records: Arc<Vec<Record>>) {
        self.offer(|| records);
    }
}

/// One open tail; closing it (drop) frees its place.
#[derive(Debug)]
pub struct Tail {
    hub: Arc<TailHub>,
    subscription: String,
    rx: broadcast::Receiver<Arc<Vec<Record>>>,
}

/// What a tail receives next.
#[derive(Debug)]
pub enum TailEvent {
    /// A commit group (of every subscription: filter with [`matching`]).
    Records(Arc<Vec<Record>>),
    /// This many commit groups were skipped: the tail fell behind.
    Dropped(u64),
    /// The store stopped.
    Closed,
}

impl Tail {
    pub async fn next(&mut self) -> TailEvent {
        match self.rx.recv().await {
            Ok(r) => TailEvent::Records(r),
            Err(broadcast::error::RecvError::Lagged(n)) => TailEvent::Dropped(n),
            Err(broadcast::error::RecvError::Closed) => TailEvent::Closed,
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let mut per = self
            .hub
            .per_subscription
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per.get_mut(&self.subscription) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&self.subscription);
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

//! The hand-over between the store's writer thread and the notifier's
//! evaluation thread (`evaluator.rs`): a channel of committed records,
//! bounded by a count of records and by their bytes ([`record_bytes`]) held
//! in memory ([`Slot::committed`] never waits: what does not fit is only
//! noted, "spilled", and read back from the store's commit feed), and what
//! the notifier keeps of the thread (its handle, the watermarks read at
//! start, terminations).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use schemas::{Body, Record};
use serde_json::Value;

use crate::error::NotifierError;
use crate::feed::FeedPos;

/// Short critical sections only; a poisoned lock is taken over (its data
/// are counters and queues that stay consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) enum Msg {
    Committed {
        commit: u64,
        at: i64,
        records: Arc<Vec<Record>>,
    },
    Stop {
        deadline: Instant,
    },
}

/// About how many bytes of memory `r` holds (its struct and its texts):
/// what the evaluation queue counts against its byte bounds. The same
/// record always weighs the same, so what is added when it is queued is
/// what is taken off when it leaves.
pub fn record_bytes(r: &Record) -> usize {
    fn opt(s: &Option<String>) -> usize {
        s.as_ref().map_or(0, String::len)
    }
    fn value(v: &Value) -> usize {
        match v {
            Value::String(s) => 24 + s.len(),
            Value::Array(a) => 24 + a.iter().map(value).sum::<usize>(),
            Value::Object(o) => {
                48 + o
                    .iter()
                    .map(|(k, v)| 24 + k.len() + value(v))
                    .sum::<usize>()
            }
            _ => 16,
        }
    }
    let body = match &r.body {
        Body::Log(l) => {
            l.target.len()
                + l.message.len()
                + l.fields
                    .iter()
                    .map(|(k, v)| 48 + k.len() + value(v))
                    .sum::<usize>()
        }
        Body::Execution(e) => {
            std::mem::size_of_val(&**e)
                + e.pipe.len()
                + opt(&e.run_id)
                + opt(&e.start_time)
                + opt(&e.end_time)
                + opt(&e.reason_why_stopped)
                + opt(&e.traceback)
                + opt(&e.original_error_message)
                + opt(&e.entity_id)
                + opt(&e.error_code)
        }
        Body::Config(c) => c.hash.len() + c.config.iter().map(value).sum::<usize>(),
        Body::Health(h) => h
            .checks
            .iter()
            .map(|c| std::mem::size_of_val(c) + c.name.len() + opt(&c.detail))
            .sum(),
        Body::System(y) => opt(&y.facility) + y.message.len() + opt(&y.file),
    };
    std::mem::size_of::<Record>() + r.source.len() + r.subscription.len() + body
}

/// Records of subscriptions that did not fit the queue.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Spill {
    pub(crate) records: u64,
    pub(crate) oldest: i64,
}

/// What the writer thread's hook and the evaluation thread share.
pub(crate) struct Link {
    tx: mpsc::Sender<Msg>,
    /// Records in memory: in the channel or in the thread's queues.
    pub(crate) queued: AtomicUsize,
    max: usize,
    /// Their [`record_bytes`].
    pub(crate) queued_bytes: AtomicUsize,
    max_bytes: usize,
    /// Short critical sections.
    spills: Mutex<HashMap<String, Spill>>,
    spilled: AtomicBool,
}

impl Link {
    /// Takes the notes of records that went to the feed only (`None`:
    /// none since the last call).
    pub(crate) fn take_spills(&self) -> Option<HashMap<String, Spill>> {
        if !self.spilled.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(std::mem::take(&mut *lock(&self.spills)))
    }

    /// Notes that `records` wait in the feed only.
    fn spill(&self, records: &[Record], at: i64) {
        let mut spills = lock(&self.spills);
        for r in records {
            match spills.get_mut(r.subscription.as_str()) {
                Some(s) => s.records += 1,
                None => {
                    spills.insert(
                        r.subscription.clone(),
                        Spill {
                            records: 1,
                            oldest: at,
                        },
                    );
                }
            }
        }
        self.spilled.store(true, Ordering::Release);
    }
}

/// The notifier's handle on its evaluation thread.
pub(crate) struct Slot {
    link: OnceLock<Arc<Link>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The last commit handed over by the store.
    last_commit: AtomicU64,
    /// Terminated subscriptions and the last commit before termination.
    /// Short critical sections, taken under the engine lock.
    purged: Mutex<HashMap<String, u64>>,
    /// Watermarks read at start, for the thread.
    watermarks: Mutex<HashMap<String, FeedPos>>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("running", &self.link.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Slot {
    pub(crate) fn new(watermarks: HashMap<String, FeedPos>) -> Slot {
        Slot {
            link: OnceLock::new(),
            thread: Mutex::new(None),
            last_commit: AtomicU64::new(0),
            purged: Mutex::new(HashMap::new()),
            watermarks: Mutex::new(watermarks),
        }
    }

    /// Makes the channel to a new evaluation thread of at most `max`
    /// records of at most `max_bytes` in memory; returns it with the
    /// watermarks read at start.
    #[allow(clippy::type_complexity)]
    pub(crate) fn install(
        &self,
        max: usize,
        max_bytes: usize,
    ) -> Result<(Arc<Link>, mpsc::Receiver<Msg>, HashMap<String, FeedPos>), NotifierError> {
        let (tx, rx) = mpsc::channel();
        let link = Arc::new(Link {
            tx,
            queued: AtomicUsize::new(0),
            max,
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
            spills: Mutex::new(HashMap::new()),
            spilled: AtomicBool::new(false),
        });
        if self.link.set(link.clone()).is_err() {
            return Err(NotifierError::storage("the evaluation thread runs already"));
        }
        let watermarks = std::mem::take(&mut *lock(&self.watermarks));
        Ok((link, rx, watermarks))
    }

    pub(crate) fn started(&self, handle: JoinHandle<()>) {
        *lock(&self.thread) = Some(handle);
    }

    /// Hands a commit's records to the evaluation thread, or notes them as
    /// waiting in the feed; returns how many were not queued.
    pub(crate) fn committed(&self, commit: u64, records: Arc<Vec<Record>>) -> usize {
        self.last_commit.store(commit, Ordering::Release);
        let Some(link) = self.link.get() else {
            return 0;
        };
        let n = records.len();
        let at = schemas::time::now_nanos();
        let bytes: usize = records.iter().map(record_bytes).sum();
        if link.queued.load(Ordering::Acquire) + n <= link.max
            && link.queued_bytes.load(Ordering::Acquire) + bytes <= link.max_bytes
        {
            link.queued.fetch_add(n, Ordering::AcqRel);
            link.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
            match link.tx.send(Msg::Committed {
                commit,
                at,
                records,
            }) {
                Ok(()) => return 0,
                Err(mpsc::SendError(msg)) => {
                    link.queued.fetch_sub(n, Ordering::AcqRel);
                    link.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                    if let Msg::Committed { records, .. } = msg {
                        link.spill(&records, at);
                    }
                }
            }
        } else {
            link.spill(&records, at);
        }
        n
    }

    /// Asks the thread to stop by `within` from now and waits for it.
    pub(crate) fn stop(&self, within: Duration) {
        if let Some(link) = self.link.get() {
            let deadline = Instant::now() + within;
            let _ = link.tx.send(Msg::Stop { deadline });
        }
        let handle = lock(&self.thread).take();
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!("the notifier's evaluation thread panicked");
            }
        }
    }

    /// The termination of `sub` noted by [`Slot::purged`], if any: the
    /// last commit before it (call under the engine lock).
    pub(crate) fn take_purged(&self, sub: &str) -> Option<u64> {
        lock(&self.purged).remove(sub)
    }

    /// `sub` was terminated after the last commit handed over (call under
    /// the engine lock).
    pub(crate) fn purged(&self, sub: &str) {
        if self.link.get().is_some() {
            let at = self.last_commit.load(Ordering::Acquire);
            lock(&self.purged).insert(sub.to_string(), at);
        }
    }
}

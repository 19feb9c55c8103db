//! The threads searches run on.
//!
//! A fixed pool of `max_concurrent_queries` threads at a lower CPU
//! priority than ingest (`nice`): a query is CPU work that may take
//! seconds, while ingest answers shippers waiting on a synced commit. At
//! equal priority two heavy queries of one tenant took both cores of the
//! target machine and multiplied another tenant's ingest latency.
//!
//! Priority feedback, as in a multilevel feedback queue: every search
//! starts at `nice` (default 5) and is demoted to `demoted_nice` (default
//! 19, the lowest) once it has run for `quantum` (default 20 ms). Short
//! searches, the kind a dashboard or an operator sends, thus keep a fair
//! share of the CPU against a neighbour's long scans, regex bombs and huge
//! answers, which get what everything else leaves. Long loops (the scan,
//! the rendering of answers) call [`checkpoint`], which does the demotion
//! on the thread itself. (On Linux a nice value belongs to a thread; the
//! threads a search splits into take its demotion with [`current`] and
//! [`adopt`].) Raising a thread's priority back needs `CAP_SYS_NICE` or
//! `RLIMIT_NICE`: where it is refused, the demoted thread hands its place
//! to a new thread started at `nice` and ends.
//!
//! Admission is per subscription: a search takes one of its subscription's
//! `max_per_subscription` slots, then one of the pool's, waiting first come
//! first served, so one tenant's queries never hold every thread.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::fair::Slots;

/// A job and the subscription it runs for.
type Job = (Arc<str>, Box<dyn FnOnce() + Send>);

/// The query threads and their admission.
#[derive(Debug)]
pub struct QueryPool {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    slots: Slots,
    threads: usize,
    /// Jobs holding a slot now.
    active: Arc<AtomicUsize>,
    /// Work that demoted searches give way to (`None`: they do not).
    gate: Option<Arc<Foreground>>,
}

/// Why a job did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("no query slot within {0:?}")]
    Busy(Duration),
    #[error("the query pool is stopped")]
    Stopped,
}

/// Priorities of the pool's threads, as nice values (0..=19).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priorities {
    /// Nice steps below the process for a search's first `quantum`.
    pub nice: i32,
    /// Nice steps below the process once the search has run `quantum`.
    pub demoted_nice: i32,
    pub quantum: Duration,
    /// Longest pause of a demoted search at one checkpoint while other
    /// requests are being served (see [`Foreground`]).
    pub max_pause: Duration,
}

impl Default for Priorities {
    fn default() -> Self {
        Priorities {
            nice: 5,
            demoted_nice: 19,
            quantum: Duration::from_millis(20),
            max_pause: Duration::from_millis(4),
        }
    }
}

/// Requests being served now (admitted ingests and metric pushes, running
/// searches and label queries), against searches demoted to the
/// background. While any request other than a demoted search is being
/// served, demoted searches pause at their checkpoints (at most
/// `max_pause` each; between two checkpoints a search does about a
/// millisecond of work, so it keeps at least a fifth of its speed) and
/// the answers they rendered pause between chunks.
///
/// Nice values alone did not keep a neighbour's long scans from slowing a
/// steady tenant: Linux schedules a process's threads as one group
/// against other processes (autogroups, cgroups), so a niced thread still
/// spends the group's share; and a niced thread preempted while holding a
/// lock (the allocator's, RocksDB's, the address space's) makes everyone
/// wait for it. A pause at a checkpoint holds no lock. (ClickHouse's
/// query `priority` pauses lower-priority queries the same way.)
#[derive(Debug)]
pub struct Foreground {
    active: AtomicUsize,
    background: AtomicUsize,
    /// Per subscription, when it last had a request served; pruned past
    /// [`RECENT`]. Short critical sections, never held across a wait.
    recent: Mutex<HashMap<String, Instant>>,
    /// Share of the time a background search may run while another
    /// subscription is active.
    share: f64,
}

/// How long a subscription counts as active after its last request.
const RECENT: Duration = Duration::from_secs(1);
/// Longest pacing sleep at one checkpoint.
const MAX_PACE: Duration = Duration::from_millis(50);

impl Default for Foreground {
    fn default() -> Self {
        Foreground::new(0.25)
    }
}

/// One request counted in [`Foreground`] until dropped.
#[derive(Debug)]
pub struct ForegroundGuard(Arc<Foreground>);

impl Drop for ForegroundGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Foreground {
    /// `share` (0.01..=1) of the time background searches may run while
    /// another subscription is active.
    pub fn new(share: f64) -> Foreground {
        Foreground {
            active: AtomicUsize::new(0),
            background: AtomicUsize::new(0),
            recent: Mutex::default(),
            share: share.clamp(0.01, 1.0),
        }
    }

    /// Counts a request of `subscription` being served until the guard is
    /// dropped.
    pub fn enter(self: &Arc<Self>, subscription: &str) -> ForegroundGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        match recent.get_mut(subscription) {
            Some(t) => *t = now,
            None => {
                recent.retain(|_, t| now.duration_since(*t) < RECENT);
                recent.insert(subscription.to_string(), now);
            }
        }
        drop(recent);
        ForegroundGuard(self.clone())
    }

    /// Whether a request other than a demoted search is being served.
    pub fn busy(&self) -> bool {
        self.active.load(Ordering::Acquire) > self.background.load(Ordering::Acquire)
    }

    /// Whether a subscription other than `own` had a request served in
    /// the last second.
    pub fn others_active(&self, own: &str) -> bool {
        let now = Instant::now();
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(k, t)| k != own && now.duration_since(*t) < RECENT)
    }

    /// The sleep that keeps background work that just ran `ran` within its
    /// share while other subscriptions are active.
    pub fn pace(&self, own: &str, ran: Duration) -> Duration {
        if self.share >= 1.0 || !self.others_active(own) {
            return Duration::ZERO;
        }
        ran.mul_f64((1.0 - self.share) / self.share).min(MAX_PACE)
    }

    /// Waits while [`Foreground::busy`], at most `max` (in 1 ms steps).
    fn give_way(&self, max: Duration) {
        let step = Duration::from_millis(1);
        let mut waited = Duration::ZERO;
        while waited < max && self.busy() {
            std::thread::sleep(step);
            waited += step;
        }
    }
}

/// The scheduling state of the search running on this thread.
#[derive(Debug, Clone)]
pub struct JobState {
    demote_at: Instant,
    nice: i32,
    demoted: bool,
    /// Whether this thread's demotion moves its search to the background
    /// count (the pool's thread does; threads it splits into do not).
    counted: bool,
    gate: Option<Arc<Foreground>>,
    max_pause: Duration,
    /// The subscription of the search.
    subscription: Arc<str>,
    /// Since when the search has run without pausing.
    running_since: Instant,
}

thread_local! {
    static JOB: RefCell<Option<JobState>> = const { RefCell::new(None) };
}

/// Called from long loops of a search (the scan, the rendering of its
/// answer): demotes the calling thread once its search has run its
/// quantum, and from then on gives way to requests being served (see
/// [`Foreground`]). Cheap (a clock read); a no-op outside the query pool.
pub fn checkpoint() {
    JOB.with_borrow_mut(|job| {
        let Some(s) = job else { return };
        if !s.demoted {
            if Instant::now() < s.demote_at {
                return;
            }
            s.demoted = true;
            s.running_since = Instant::now();
            if let Err(e) = rustix::process::setpriority_process(None, s.nice) {
                tracing::debug!(error = %e, "cannot demote a query thread");
            }
            if let (true, Some(g)) = (s.counted, &s.gate) {
                g.background.fetch_add(1, Ordering::AcqRel);
            }
        }
        if let Some(g) = &s.gate {
            let ran = s.running_since.elapsed();
            if ran >= PACE_EVERY {
                let sleep = g.pace(&s.subscription, ran);
                if !sleep.is_zero() {
                    std::thread::sleep(sleep);
                }
                s.running_since = Instant::now();
            }
            g.give_way(s.max_pause);
        }
    })
}

/// Run time between two pacing sleeps of a background search.
const PACE_EVERY: Duration = Duration::from_millis(2);

/// Whether the search running on this thread has been demoted.
pub fn demoted() -> bool {
    JOB.with_borrow(|j| j.as_ref().is_some_and(|s| s.demoted))
}

/// The scheduling state of this thread's search, for a thread it starts.
pub fn current() -> Option<JobState> {
    JOB.with_borrow(Clone::clone)
}

/// Takes over the scheduling state of the thread that started this one
/// (whose nice value a new thread inherits).
pub fn adopt(state: Option<JobState>) {
    JOB.set(state.map(|s| JobState {
        counted: false,
        ..s
    }));
}

/// What every thread of the pool shares.
struct Worker {
    /// Thread name prefix.
    name: &'static str,
    rx: Mutex<mpsc::Receiver<Job>>,
    base: i32,
    start: i32,
    demoted: i32,
    quantum: Duration,
    max_pause: Duration,
    gate: Option<Arc<Foreground>>,
}

impl Worker {
    fn spawn(self: &Arc<Self>, i: usize) {
        let w = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{}-{i}", self.name))
            .spawn(move || w.run(i));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a query thread");
        }
    }

    fn run(self: Arc<Self>, i: usize) {
        if self.start != self.base {
            if let Err(e) = rustix::process::setpriority_process(None, self.start) {
                tracing::warn!(error = %e, "cannot lower the priority of a query thread");
            }
        }
        let schedules = self.demoted != self.start || self.gate.is_some();
        loop {
            // The lock is held only while waiting for the next job.
            let job = match self.rx.lock() {
                Ok(r) => r.recv(),
                Err(_) => return,
            };
            let Ok((subscription, job)) = job else { return };
            if schedules {
                let now = Instant::now();
                JOB.set(Some(JobState {
                    demote_at: now + self.quantum,
                    nice: self.demoted,
                    demoted: false,
                    counted: true,
                    gate: self.gate.clone(),
                    max_pause: self.max_pause,
                    subscription,
                    running_since: now,
                }));
            }
            job();
            let Some(state) = JOB.take() else { continue };
            if !state.demoted {
                continue;
            }
            if let (true, Some(g)) = (state.counted, &state.gate) {
                g.background.fetch_sub(1, Ordering::AcqRel);
            }
            if self.demoted != self.start
                && rustix::process::setpriority_process(None, self.start).is_err()
            {
                // Not allowed to raise it back: a fresh thread takes over.
                self.spawn(i);
                return;
            }
        }
    }
}

impl QueryPool {
    /// Starts `threads` threads at `priorities` (nice steps below the
    /// caller's priority; 0 keeps it; the result is capped at 19). With a
    /// `gate`, demoted searches give way to the requests it counts, and
    /// every job counts in it while it runs.
    pub fn new(
        threads: usize,
        per_subscription: usize,
        priorities: Priorities,
        gate: Option<Arc<Foreground>>,
    ) -> Arc<QueryPool> {
        let base = rustix::process::getpriority_process(None).unwrap_or(0);
        let start = (base + priorities.nice.max(0)).min(19);
        let demoted = (base + priorities.demoted_nice.max(priorities.nice).max(0)).min(19);
        let threads = threads.max(1);
        let (tx, rx) = mpsc::channel::<Job>();
        let worker = Arc::new(Worker {
            // The ingest bulk lane (no demotion, no gate) is told apart in
            // thread lists and profiles.
            name: if gate.is_none() && priorities.quantum.is_zero() {
                "bulk"
            } else {
                "query"
            },
            rx: Mutex::new(rx),
            base,
            start,
            demoted,
            quantum: priorities.quantum,
            max_pause: priorities.max_pause,
            gate: gate.clone(),
        });
        for i in 0..threads {
            worker.spawn(i);
        }
        Arc::new(QueryPool {
            tx: Mutex::new(Some(tx)),
            slots: Slots::new(threads, per_subscription),
            threads,
            active: Arc::default(),
            gate,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on a query thread once `key` (a subscription, or `*`) has a
    /// slot, waiting at most `wait` for one. `f` is told whether it is the
    /// only job running (then it may use more than its thread).
    pub async fn run<T, F>(&self, key: &str, wait: Duration, f: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce(bool) -> T + Send + 'static,
    {
        let slot = self
            .slots
            .acquire(key, wait)
            .await
            .ok_or(PoolError::Busy(wait))?;
        let active = self.active.clone();
        let foreground = self.gate.as_ref().map(|g| g.enter(key));
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn FnOnce() + Send> = Box::new(move || {
            let _foreground = foreground;
            let alone = active.fetch_add(1, Ordering::AcqRel) == 0;
            let out = f(alone);
            active.fetch_sub(1, Ordering::AcqRel);
            let _ = reply.send(out);
        });
        {
            let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            tx.as_ref()
                .ok_or(PoolError::Stopped)?
                .send((Arc::from(key), job))
                .map_err(|_| PoolError::Stopped)?;
        }
        let out = rx.await.map_err(|_| PoolError::Stopped);
        drop(slot);
        out
    }

    /// Lets the threads end once the jobs queued are done.
    pub fn stop(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_niced_threads_with_per_key_slots() {
        let base = rustix::process::getpriority_process(None).expect("priority");
        let pool = QueryPool::new(
            2,
            1,
            Priorities {
                nice: 5,
                demoted_nice: 5,
                quantum: Duration::ZERO,
                max_pause: Duration::ZERO,
            },
            None,
        );
        let nice = pool
            .run("a", Duration::from_secs(5), |_| {
                rustix::process::getpriority_process(None).ok()
            })
            .await
            .expect("ran");
        assert_eq!(nice, Some((base + 5).min(19)), "query threads are niced");
        assert_eq!(
            rustix::process::getpriority_process(None).ok(),
            Some(base),
            "the calling thread is not"
        );
        // A second job of "a" waits for its first; "b" runs meanwhile.
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let p = pool.clone();
        let first = tokio::spawn(async move {
            p.run("a", Duration::from_secs(5), move |alone| {
                let _ = hold_rx.recv_timeout(Duration::from_secs(5));
                alone
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            pool.run("a", Duration::from_millis(50), |_| ()).await,
            Err(PoolError::Busy(Duration::from_millis(50)))
        );
        assert_eq!(
            pool.run("b", Duration::from_secs(5), |alone| alone).await,
            Ok(false),
            "a's job runs too"
        );
        hold_tx.send(()).expect("release");
        assert_eq!(first.await.expect("join"), Ok(true), "it was alone");
        pool.stop();
    }

    #[tokio::test]
    async fn a_search_past_its_quantum_is_demoted_and_the_next_one_is_not() {
        let base = rustix::process::getpriority_process(None).expect("priority");
        let pool = QueryPool::new(
            1,
            1,
            Priorities {
                nice: 2,
                demoted_nice: 12,
                quantum: Duration::from_millis(30),
                max_pause: Duration::ZERO,
            },
            None,
        );
        let nice = || rustix::process::getpriority_process(None).ok();
        let (start, demoted) = ((base + 2).min(19), (base + 12).min(19));
        // A short search stays at the starting priority.
        let short = pool
            .run("a", Duration::from_secs(5), move |_| {
                checkpoint();
                nice()
            })
            .await
            .expect("ran");
        assert_eq!(short, Some(start));
        // A long one is demoted at its first checkpoint past the quantum,
        // and so is the thread it splits into.
        let long = pool
            .run("a", Duration::from_secs(5), move |_| {
                checkpoint();
                let before = nice();
                std::thread::sleep(Duration::from_millis(40));
                let pending = current();
                let helper = std::thread::spawn(move || {
                    adopt(pending);
                    checkpoint();
                    nice()
                })
                .join()
                .ok()
                .flatten();
                checkpoint();
                (before, nice(), helper)
            })
            .await
            .expect("ran");
        assert_eq!(long, (Some(start), Some(demoted), Some(demoted)));
        // The next search starts at the starting priority again (restored,
        // or on a fresh thread where raising it back is not allowed).
        let next = pool
            .run("b", Duration::from_secs(5), move |_| nice())
            .await
            .expect("ran");
        assert_eq!(next, Some(start));
        pool.stop();
    }

    #[tokio::test]
    async fn a_demoted_search_gives_way_while_other_requests_are_served() {
        let gate = Arc::new(Foreground::default());
        let pool = QueryPool::new(
            2,
            2,
            Priorities {
                nice: 0,
                demoted_nice: 0,
                quantum: Duration::ZERO,
                max_pause: Duration::from_millis(300),
            },
            Some(gate.clone()),
        );
        // Alone, a demoted search does not pause: its own request is not
        // another one.
        let alone = pool
            .run("a", Duration::from_secs(5), |_| {
                let t = Instant::now();
                checkpoint();
                (demoted(), t.elapsed())
            })
            .await
            .expect("ran");
        assert!(alone.0, "demoted at once (quantum 0)");
        assert!(alone.1 < Duration::from_millis(200), "{:?}", alone.1);
        // With another request being served it pauses (up to max_pause),
        // and the threads it splits into do too.
        let other = gate.enter("b");
        let busy = pool
            .run("a", Duration::from_secs(5), |_| {
                let t = Instant::now();
                checkpoint();
                let state = current();
                let helper = std::thread::spawn(move || {
                    adopt(state);
                    let t = Instant::now();
                    checkpoint();
                    t.elapsed()
                })
                .join()
                .unwrap_or_default();
                (t.elapsed(), helper)
            })
            .await
            .expect("ran");
        assert!(busy.0 >= Duration::from_millis(300), "{:?}", busy.0);
        assert!(busy.1 >= Duration::from_millis(300), "{:?}", busy.1);
        drop(other);
        assert!(!gate.busy(), "every count given back");
        pool.stop();
    }

    #[test]
    fn background_work_is_paced_only_while_another_subscription_is_active() {
        let gate = Arc::new(Foreground::new(0.25));
        let ran = Duration::from_millis(10);
        assert_eq!(gate.pace("a", ran), Duration::ZERO, "nobody else is active");
        drop(gate.enter("a"));
        assert_eq!(
            gate.pace("a", ran),
            Duration::ZERO,
            "its own requests do not count"
        );
        drop(gate.enter("b"));
        assert!(!gate.busy(), "b's request is done");
        assert_eq!(
            gate.pace("a", ran),
            Duration::from_millis(30),
            "a quarter of the time"
        );
        assert_eq!(gate.pace("a", Duration::from_secs(1)), MAX_PACE);
        assert_eq!(
            Arc::new(Foreground::new(1.0)).pace("a", ran),
            Duration::ZERO
        );
    }
}

//! The threads searches run on.
//!
//! A fixed pool of `max_concurrent_queries` threads, started at a lower CPU
//! priority (`nice`, default 10): a query is CPU work that may take seconds,
//! while ingest answers shippers waiting on a synced commit. At equal
//! priority two heavy queries of one tenant took both cores of the target
//! machine and multiplied another tenant's ingest latency; niced, they get
//! the CPU the write path leaves. (On Linux a nice value belongs to a
//! thread; the threads a search splits into inherit it.)
//!
//! Admission is per subscription: a search takes one of its subscription's
//! `max_per_subscription` slots, then one of the pool's, waiting first come
//! first served, so one tenant's queries never hold every thread.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::fair::Slots;

type Job = Box<dyn FnOnce() + Send>;

/// The query threads and their admission.
#[derive(Debug)]
pub struct QueryPool {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    slots: Slots,
    threads: usize,
    /// Jobs holding a slot now.
    active: Arc<std::sync::atomic::AtomicUsize>,
}

/// Why a job did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("no query slot within {0:?}")]
    Busy(Duration),
    #[error("the query pool is stopped")]
    Stopped,
}

impl QueryPool {
    /// Starts `threads` threads, `nice` steps below the caller's priority
    /// (0 keeps it; the result is capped at 19, the lowest).
    pub fn new(threads: usize, per_subscription: usize, nice: i32) -> Arc<QueryPool> {
        let base = rustix::process::getpriority_process(None).unwrap_or(0);
        let target = (base + nice.max(0)).min(19);
        let threads = threads.max(1);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("query-{i}"))
                .spawn(move || {
                    if target != base {
                        if let Err(e) = rustix::process::setpriority_process(None, target) {
                            tracing::warn!(error = %e, nice, "cannot lower the priority of a query thread");
                        }
                    }
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a query thread");
            }
        }
        Arc::new(QueryPool {
            tx: Mutex::new(Some(tx)),
            slots: Slots::new(threads, per_subscription),
            threads,
            active: Arc::default(),
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
        use std::sync::atomic::Ordering;
        let slot = self
            .slots
            .acquire(key, wait)
            .await
            .ok_or(PoolError::Busy(wait))?;
        let active = self.active.clone();
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let alone = active.fetch_add(1, Ordering::AcqRel) == 0;
            let out = f(alone);
            active.fetch_sub(1, Ordering::AcqRel);
            let _ = reply.send(out);
        });
        {
            let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            tx.as_ref()
                .ok_or(PoolError::Stopped)?
                .send(job)
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
        let pool = QueryPool::new(2, 1, 5);
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
}

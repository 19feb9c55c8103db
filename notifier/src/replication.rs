//! Replication: a subscription's state kept outside this collector (the
//! collector stores [`Exported`] states in ZooKeeper with a fenced
//! compare-and-set), and the delivery gate that makes sure a state holding
//! a notification is stored there before the notification is sent. The
//! collector that takes a subscription over when its owner dies imports
//! that state, so it neither pages again (the notification is in it, sent
//! again with the same `X-Notification-Id` if it was still queued) nor
//! forgets a resolution (the firing alert is in it).
//!
//! - [`Notifier::state_version`] grows with every write of the
//!   subscription's persisted state, after the write completed: an export
//!   read at version V holds every write up to V, so while the version
//!   still reads V nothing was written since.
//! - Every notification id below `written_below` is written: the counter
//!   moves under the engine's lock after each state write completed, so
//!   an export whose snapshot is taken after reading it holds every
//!   pending notification below it ([`Exported::covers_below`]).
//! - Persists of one subscription run one at a time (an async mutex held
//!   over the export and its store), so an older export never overwrites a
//!   newer one. A delivery whose id the last stored export covers goes on
//!   at once; deliveries that waited behind a failed attempt share its
//!   error rather than each trying again.
//! - Without a hook nothing of this runs on the delivery path (one atomic
//!   load); the versions and the counter are kept regardless.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::error::NotifierError;
use crate::model::{Change, Effects, Notification};
use crate::service::{lock, Notifier};
use crate::snapshot::Exported;

/// How long the hook may take to store an export.
const STORE_TIMEOUT: Duration = Duration::from_secs(30);
/// A delivery held back by a failed store is tried again after this.
const HELD_BACK: Duration = Duration::from_secs(1);

/// Where a subscription's state is kept outside this collector (the
/// collector implements it over ZooKeeper with a fenced compare-and-set).
pub trait Replication: Send + Sync + 'static {
    /// Stores `exported` as `sub`'s state; an error keeps the
    /// notifications it would cover from being sent (tried again after
    /// 1 s).
    fn store(
        &self,
        sub: &str,
        exported: Exported,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>>;
}

/// What happened to a subscription held here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Moved {
    /// Its ownership moved elsewhere.
    Released,
    /// Replaced by an imported state.
    Imported,
    /// Terminated.
    Terminated,
}

/// The replication state of one subscription.
#[derive(Debug)]
struct SubRepl {
    /// Held over one export and its store; the error of the last attempt
    /// (`None`: it stored).
    turn: tokio::sync::Mutex<Option<String>>,
    /// Attempts begun.
    attempts: AtomicU64,
    /// `covers_below` of the last export stored (0: none).
    covers_below: AtomicU64,
    /// `version` of the last export stored (`u64::MAX`: none).
    version: AtomicU64,
    /// Grows with each release, import and termination: an export that
    /// straddles one is not stored.
    epoch: AtomicU64,
    /// Released and not imported since: nothing of it is stored.
    released: AtomicBool,
}

impl SubRepl {
    fn new() -> SubRepl {
        SubRepl {
            turn: tokio::sync::Mutex::new(None),
            attempts: AtomicU64::new(0),
            covers_below: AtomicU64::new(0),
            version: AtomicU64::new(u64::MAX),
            epoch: AtomicU64::new(0),
            released: AtomicBool::new(false),
        }
    }
}

/// The notifier's replication state. Short critical sections only.
pub(crate) struct Repl {
    hook: OnceLock<Arc<dyn Replication>>,
    /// Every notification id below it is written.
    written_below: AtomicU64,
    /// The last state version handed out.
    seq: AtomicU64,
    versions: Mutex<HashMap<String, u64>>,
    subs: Mutex<HashMap<String, Arc<SubRepl>>>,
    /// Subscriptions being handed over: no delivery of theirs starts.
    holding: Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Repl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repl")
            .field("hook", &self.installed())
            .field("written_below", &self.written_below())
            .finish_non_exhaustive()
    }
}

impl Repl {
    /// `written_below`: the next notification id at start.
    pub(crate) fn new(written_below: u64) -> Repl {
        Repl {
            hook: OnceLock::new(),
            written_below: AtomicU64::new(written_below),
            seq: AtomicU64::new(0),
            versions: Mutex::new(HashMap::new()),
            subs: Mutex::new(HashMap::new()),
            holding: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Whether a hook is installed.
    pub(crate) fn installed(&self) -> bool {
        self.hook.get().is_some()
    }

    pub(crate) fn written_below(&self) -> u64 {
        self.written_below.load(Ordering::Acquire)
    }

    /// Every notification id below `next_id` is written.
    pub(crate) fn written_to(&self, next_id: u64) {
        self.written_below.fetch_max(next_id, Ordering::AcqRel);
    }

    /// The write of `fx` completed (under the engine's lock; `next_id` is
    /// the engine's next notification id).
    pub(crate) fn wrote(&self, fx: &Effects, next_id: u64) {
        self.written_to(next_id);
        let mut subs: Vec<&str> = Vec::new();
        let all = fx
            .watermarks
            .iter()
            .map(|(s, _)| s.as_str())
            .chain(fx.notifications.iter().map(|n| n.subscription.as_str()))
            .chain(fx.changes.iter().map(Change::subscription));
        for s in all {
            if subs.last() != Some(&s) && !subs.contains(&s) {
                subs.push(s);
            }
        }
        if subs.is_empty() {
            return;
        }
        let mut versions = lock(&self.versions);
        for s in subs {
            self.bump_in(&mut versions, s);
        }
    }

    fn bump_in(&self, versions: &mut HashMap<String, u64>, sub: &str) {
        let v = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        match versions.get_mut(sub) {
            Some(x) => *x = v,
            None => {
                versions.insert(sub.to_string(), v);
            }
        }
    }

    /// Something of `sub`'s persisted state was written.
    pub(crate) fn bump(&self, sub: &str) {
        self.bump_in(&mut lock(&self.versions), sub);
    }

    fn version(&self, sub: &str) -> u64 {
        lock(&self.versions).get(sub).copied().unwrap_or(0)
    }

    fn sub(&self, sub: &str) -> Arc<SubRepl> {
        lock(&self.subs)
            .entry(sub.to_string())
            .or_insert_with(|| Arc::new(SubRepl::new()))
            .clone()
    }

    /// Whether the last export stored of `sub` holds notification `id`.
    fn covers(&self, sub: &str, id: u64) -> bool {
        lock(&self.subs)
            .get(sub)
            .is_some_and(|s| s.covers_below.load(Ordering::Acquire) > id)
    }

    /// `sub` is being released, replaced by an import or terminated
    /// (called before; the caller bumps its version once written): what
    /// was stored of it before no longer covers anything, and an export in
    /// progress is not stored.
    pub(crate) fn moved(&self, sub: &str, how: Moved) {
        lock(&self.holding).remove(sub);
        let st = match how {
            Moved::Terminated => lock(&self.subs).remove(sub),
            Moved::Released | Moved::Imported => Some(self.sub(sub)),
        };
        if let Some(st) = st {
            st.epoch.fetch_add(1, Ordering::AcqRel);
            st.covers_below.store(0, Ordering::Release);
            st.version.store(u64::MAX, Ordering::Release);
            st.released.store(how == Moved::Released, Ordering::Release);
        }
    }
}

fn failed(sub: &str, e: &str) -> NotifierError {
    NotifierError::storage(format!(
        "the state of subscription {sub:?} could not be stored: {e}"
    ))
}

impl Notifier {
    /// Increases whenever anything of `sub`'s persisted state is written
    /// (evaluation effects, API changes, a delivery outcome landing,
    /// timers, import, release), once the write completed. 0 for a
    /// subscription nothing was written of since the start.
    pub fn state_version(&self, sub: &str) -> u64 {
        self.inner.repl.version(sub)
    }

    /// Installs the replication hook (at most once; before
    /// [`Notifier::start`]): from then on no notification is sent before a
    /// state holding it is stored through the hook.
    pub fn set_replication(&self, r: Arc<dyn Replication>) {
        if self.inner.repl.hook.set(r).is_err() {
            tracing::error!("a replication hook is installed already; the new one is ignored");
        }
    }

    /// Exports `sub` (off the async workers) and hands it to the hook's
    /// `store`; on success remembers what the export covers. Persists of
    /// one subscription run one at a time, in order; one that finds
    /// nothing written since the last export stored returns at once.
    /// Without a hook: `Ok(())`. A released subscription (not imported
    /// since) is refused.
    pub async fn persist(&self, sub: &str) -> Result<(), NotifierError> {
        self.persist_for(sub, None).await
    }

    /// [`Notifier::persist`]; for the delivery of notification `id`
    /// (`Some`): done when a stored export covers it, and failed at once
    /// when an attempt that began while this one waited failed.
    async fn persist_for(&self, sub: &str, id: Option<u64>) -> Result<(), NotifierError> {
        let Some(hook) = self.inner.repl.hook.get().cloned() else {
            return Ok(());
        };
        let st = self.inner.repl.sub(sub);
        let seen = st.attempts.load(Ordering::Acquire);
        let mut last = st.turn.lock().await;
        if st.released.load(Ordering::Acquire) {
            return Err(NotifierError::storage(format!(
                "subscription {sub:?} was released: its state is not stored from here"
            )));
        }
        match id {
            Some(id) if st.covers_below.load(Ordering::Acquire) > id => return Ok(()),
            Some(_) if st.attempts.load(Ordering::Acquire) != seen => {
                if let Some(e) = last.as_deref() {
                    return Err(failed(sub, e));
                }
            }
            None if st.version.load(Ordering::Acquire) == self.state_version(sub) => return Ok(()),
            _ => {}
        }
        st.attempts.fetch_add(1, Ordering::AcqRel);
        let epoch = st.epoch.load(Ordering::Acquire);
        match self.export_and_store(&hook, sub, &st, epoch).await {
            Ok((covers, version)) => {
                if st.epoch.load(Ordering::Acquire) == epoch {
                    st.covers_below.fetch_max(covers, Ordering::AcqRel);
                    st.version.store(version, Ordering::Release);
                }
                *last = None;
                tracing::debug!(
                    subscription = sub,
                    covers_below = covers,
                    version,
                    "notifier state stored"
                );
                match id {
                    // Cannot happen: a notification is queued after the
                    // counter moved past it.
                    Some(id) if covers <= id => Err(failed(
                        sub,
                        &format!("the export does not hold notification {id}"),
                    )),
                    _ => Ok(()),
                }
            }
            Err(e) => {
                let err = failed(sub, &e);
                *last = Some(e);
                Err(err)
            }
        }
    }

    /// One export of `sub` handed to `hook`: what it covers and its
    /// version, once stored.
    async fn export_and_store(
        &self,
        hook: &Arc<dyn Replication>,
        sub: &str,
        st: &SubRepl,
        epoch: u64,
    ) -> Result<(u64, u64), String> {
        let me = self.clone();
        let s = sub.to_string();
        let exported = tokio::task::spawn_blocking(move || me.export_subscription(&s))
            .await
            .map_err(|e| format!("export: {e}"))?
            .map_err(|e| format!("export: {e}"))?;
        if st.epoch.load(Ordering::Acquire) != epoch {
            return Err("released or replaced during its export; not stored".into());
        }
        let done = (exported.covers_below, exported.version);
        tokio::time::timeout(STORE_TIMEOUT, hook.store(sub, exported))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {STORE_TIMEOUT:?}")))?;
        Ok(done)
    }

    /// Prepares `sub` for a clean move to another collector: no delivery
    /// of it starts any more (until it is released, imported or
    /// terminated), the deliveries in flight land (their outcome written),
    /// and its state is stored through the hook, all within `within`. The
    /// next owner then sends nothing this collector delivered. Evaluation
    /// goes on meanwhile; what it queues is in the state stored (or
    /// evaluated again by the next owner from the positions stored).
    pub async fn hand_over(&self, sub: &str, within: Duration) -> Result<(), NotifierError> {
        lock(&self.inner.repl.holding).insert(sub.to_string());
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let flying = lock(&self.inner.queue).flying_of(sub);
            if flying == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NotifierError::storage(format!(
                    "{flying} deliveries of subscription {sub:?} still in flight after {within:?}; they are sent again by the next owner"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::timeout_at(deadline, self.persist(sub))
            .await
            .unwrap_or_else(|_| {
                Err(NotifierError::storage(format!(
                    "the state of subscription {sub:?} was not stored within {within:?}"
                )))
            })
    }

    /// The delivery gate (with a hook): whether `n` may be sent now. If
    /// not, it is back in the queue (due again in 1 s, no attempt
    /// counted), or gone (released or replaced meanwhile).
    pub(crate) async fn replicated(&self, n: &Notification) -> bool {
        let sub = n.subscription.as_str();
        if lock(&self.inner.repl.holding).contains(sub) {
            // Being handed over: the next owner sends it.
            let mut q = lock(&self.inner.queue);
            q.landed(n);
            if let Some(e) = q.get_mut(n) {
                e.next_at = tokio::time::Instant::now() + HELD_BACK;
            }
            return false;
        }
        if self.inner.repl.covers(sub, n.id) {
            return true;
        }
        let result = self.persist_for(sub, Some(n.id)).await;
        {
            let mut q = lock(&self.inner.queue);
            // Not queued any more: released, terminated or replaced by an
            // import meanwhile.
            if result.is_ok() && q.contains(n) {
                return true;
            }
            q.landed(n);
            match q.get_mut(n) {
                Some(e) if result.is_err() => {
                    e.next_at = tokio::time::Instant::now() + HELD_BACK;
                }
                _ => {
                    drop(q);
                    self.inner.wake_delivery.notify_one();
                    return false;
                }
            }
        }
        if let Err(e) = result {
            self.inner.metrics.replication_failures.inc();
            tracing::debug!(id = n.id, subscription = sub, error = %e, "notification held back");
            self.inner.warnings.warn(
                sub,
                "replication",
                &format!("notifications held back (retried every second): {e}"),
            );
        }
        self.inner.wake_delivery.notify_one();
        false
    }
}

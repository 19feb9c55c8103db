//! The coordinator: one ZooKeeper session per collector, its membership,
//! and the subscriptions it owns.
//!
//! Three tasks run per coordinator:
//! - the *driver* establishes sessions (again after an expiry), registers
//!   the member, and reconciles ownership whenever membership, claims, the
//!   subscription set or the session state change (and every session
//!   timeout as a safety net against a missed watch event);
//! - the *heartbeat* (per session) confirms the member node every
//!   `session_timeout / 6` and renews the [`Lease`];
//! - the *expiry* task drops every claim the instant the lease runs out
//!   without renewal, and publishes the loss.
//!
//! Invariants:
//! - a claim is in `Inner::owned` only while the lease is valid (checked
//!   on insertion; the expiry task clears the map when it runs out, and
//!   [`Coordinator::is_owner`] checks the lease itself so a late expiry
//!   task changes nothing);
//! - a claim leaves `owned` (and the loss is published) *before* its owner
//!   node is deleted, so the next owner can only claim after this one
//!   stopped;
//! - every (re)acquisition bumps the epoch with a compare-and-set in the
//!   same ZooKeeper transaction that creates the owner node.
//!
//! `std::sync::Mutex` guards `Inner`; it is never held across an `.await`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use crate::error::{Error, FenceError};
use crate::metrics::Metrics;
use crate::names;
use crate::ownership::{Lease, OwnershipChanges, Snapshot};
use crate::rendezvous;
use crate::url::CoordinationUrl;

pub(crate) const MEMBERS: &str = "/members";
pub(crate) const OWNERS: &str = "/owners";
pub(crate) const EPOCHS: &str = "/epochs";
pub(crate) const STATE: &str = "/state";

/// ZooKeeper refuses packets over `jute.maxbuffer` (1 MiB by default);
/// 1 KiB is kept for the path and the request headers.
pub const MAX_STATE_BYTES: usize = 1024 * 1024 - 1024;

/// Settings of one coordinator. Build with [`CoordinatorConfig::new`] and
/// change the fields that differ from the defaults.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Where ZooKeeper is: `zookeeper://host:port[,host:port]/chroot`.
    pub url: CoordinationUrl,
    /// This collector's member id, unique among the collectors sharing the
    /// chroot (`[A-Za-z0-9._-]{1,128}`).
    pub member_id: String,
    /// The URL other collectors (or a proxy) can reach this one at; stored
    /// in the member node, at most 2048 bytes, may be empty.
    pub advertised_url: String,
    /// Requested ZooKeeper session timeout (default 10 s, 1 s..=60 s; the
    /// server may negotiate it into its own min/max). Takeover after a
    /// crash takes about this long; a process that cannot reach ZooKeeper
    /// for half of it stops owning.
    pub session_timeout: Duration,
    /// Most subscriptions [`Coordinator::set_subscriptions`] accepts
    /// (default 10 000): each one costs two znodes.
    pub max_subscriptions: usize,
    /// Largest value of the shared state, in bytes (default 1 000 000, at
    /// most [`MAX_STATE_BYTES`]).
    pub max_state_bytes: usize,
    /// Claims sent to ZooKeeper at once while reconciling (default 32).
    pub claim_concurrency: usize,
    /// Run before a subscription is given up on a clean move (a member
    /// joined, or the subscription left the set), while this member still
    /// owns it (its fenced writes still pass), for at most `session_timeout`
    /// (all of one reconcile's hand-overs together). Not run when the
    /// session or the lease is lost: nothing can be written then.
    pub hand_over: Option<HandOver>,
}

/// What a member does before giving a subscription up on a clean move
/// (e.g. write down what it alone knows). Its future gets the subscription.
#[derive(Clone)]
pub struct HandOver(pub Arc<dyn Fn(String) -> HandOverFuture + Send + Sync>);

/// What a [`HandOver`] returns.
pub type HandOverFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl std::fmt::Debug for HandOver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandOver(..)")
    }
}

impl CoordinatorConfig {
    /// The defaults for `url` and `member_id`.
    pub fn new(url: CoordinationUrl, member_id: impl Into<String>) -> CoordinatorConfig {
        CoordinatorConfig {
            url,
            member_id: member_id.into(),
            advertised_url: String::new(),
            session_timeout: Duration::from_secs(10),
            max_subscriptions: 10_000,
            max_state_bytes: 1_000_000,
            claim_concurrency: 32,
            hand_over: None,
        }
    }

    fn validate(&self) -> Result<(), Error> {
        names::check_member_id(&self.member_id).map_err(|reason| Error::MemberId {
            id: self.member_id.clone(),
            reason,
        })?;
        if self.advertised_url.len() > 2048 {
            return Err(Error::AdvertisedUrl {
                reason: "longer than 2048 bytes",
            });
        }
        if self.advertised_url.chars().any(char::is_control) {
            return Err(Error::AdvertisedUrl {
                reason: "control characters are not allowed",
            });
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.session_timeout) {
            return Err(Error::SessionTimeout(self.session_timeout));
        }
        if self.max_subscriptions == 0 {
            return Err(Error::Limit {
                field: "max_subscriptions",
                reason: "must be at least 1",
            });
        }
        if self.max_state_bytes == 0 || self.max_state_bytes > MAX_STATE_BYTES {
            return Err(Error::Limit {
                field: "max_state_bytes",
                reason: "must be in 1..=1047552 (ZooKeeper's 1 MiB node limit less headers)",
            });
        }
        if !(1..=1024).contains(&self.claim_concurrency) {
            return Err(Error::Limit {
                field: "claim_concurrency",
                reason: "must be in 1..=1024",
            });
        }
        Ok(())
    }
}

/// A live collector as registered in ZooKeeper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub url: String,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Claim {
    pub epoch: u64,
    /// The version of `/epochs/<subscription>` that holds `epoch`: what
    /// `fence` compares.
    pub epoch_version: i32,
}

pub(crate) struct Session {
    pub client: zk::Client,
    pub id: i64,
    pub lease: Lease,
}

pub(crate) struct Inner {
    pub session: Option<Session>,
    pub owned: BTreeMap<String, Claim>,
    pub subscriptions: Arc<BTreeSet<String>>,
    pub members: Vec<Member>,
}

impl Inner {
    pub fn lease_valid(&self, now: Instant) -> bool {
        self.session.as_ref().is_some_and(|s| s.lease.valid_at(now))
    }
}

pub(crate) struct Shared {
    pub cfg: CoordinatorConfig,
    inner: Mutex<Inner>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    /// Wakes the driver to reconcile.
    wake: Notify,
    /// Wakes the expiry task: the lease was renewed or the session changed.
    lease_changed: Notify,
    pub metrics: Metrics,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("member_id", &self.cfg.member_id)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Short critical sections only; never held across `.await`.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data that is still
        // consistent (every change is a single insert/remove/assign).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the owned set; called with the lock held so snapshots are
    /// in the order of the changes.
    fn publish(&self, inner: &Inner) {
        let owned = inner
            .owned
            .iter()
            .map(|(s, c)| (s.clone(), c.epoch))
            .collect::<BTreeMap<_, _>>();
        self.metrics.owned.set(owned.len() as i64);
        self.snapshots.send_replace(Arc::new(Snapshot {
            owned,
            at: Instant::now(),
        }));
    }

    /// Drops every claim (lease ran out, session ended, stopping).
    fn drop_all(&self, inner: &mut Inner, reason: &'static str) {
        if inner.owned.is_empty() {
            return;
        }
        for _ in 0..inner.owned.len() {
            self.metrics.lost(reason);
        }
        tracing::warn!(
            member = %self.cfg.member_id,
            count = inner.owned.len(),
            reason,
            "coordination: no longer owning any subscription"
        );
        inner.owned.clear();
        self.publish(inner);
    }

    pub fn client(&self) -> Option<(zk::Client, i64)> {
        self.lock()
            .session
            .as_ref()
            .map(|s| (s.client.clone(), s.id))
    }
}

/// One collector's membership and subscription ownership in ZooKeeper.
///
/// Dropping it stops it: it releases what it owns (publishing the losses
/// first) and closes its session in the background, so the other members
/// take over at once rather than after the session timeout. Use
/// [`Coordinator::shutdown`] to wait for that.
#[derive(Debug)]
pub struct Coordinator {
    pub(crate) shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Coordinator {
    /// Connects, creates the layout under the chroot if needed, registers
    /// this member and starts coordinating (owning nothing until
    /// [`Coordinator::set_subscriptions`] gives the set).
    ///
    /// Fails when the configuration is invalid or no session can be
    /// established within about the session timeout; later session losses
    /// are handled inside (reconnect, re-register, re-claim). When a
    /// member with the same id is still registered (a previous run killed
    /// less than a session timeout ago), this waits for its session to
    /// expire.
    pub async fn start(cfg: CoordinatorConfig) -> Result<Coordinator, Error> {
        cfg.validate()?;
        let (snapshots, _) = watch::channel(Arc::new(Snapshot::empty()));
        let shared = Arc::new(Shared {
            cfg,
            inner: Mutex::new(Inner {
                session: None,
                owned: BTreeMap::new(),
                subscriptions: Arc::new(BTreeSet::new()),
                members: Vec::new(),
            }),
            snapshots,
            wake: Notify::new(),
            lease_changed: Notify::new(),
            metrics: Metrics::default(),
            cancel: CancellationToken::new(),
        });
        let first = connect(&shared).await?;
        let expiry = tokio::spawn(expiry_task(shared.clone()));
        let driver = tokio::spawn(driver(shared.clone(), first));
        Ok(Coordinator {
            shared,
            tasks: Mutex::new(vec![driver, expiry]),
        })
    }

    /// This member's id.
    pub fn member_id(&self) -> &str {
        &self.shared.cfg.member_id
    }

    /// Replaces the set of subscriptions to share out (all collectors must
    /// be given the same set). Checked as a whole: on error nothing
    /// changes and the error names the first bad subscription or the limit.
    pub fn set_subscriptions<I, S>(&self, subscriptions: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let limit = self.shared.cfg.max_subscriptions;
        let mut set = BTreeSet::new();
        for s in subscriptions {
            let s = s.into();
            names::check_subscription(&s).map_err(|reason| Error::Subscription {
                name: s.clone(),
                reason,
            })?;
            set.insert(s);
            if set.len() > limit {
                return Err(Error::TooManySubscriptions {
                    count: set.len(),
                    limit,
                });
            }
        }
        self.shared.lock().subscriptions = Arc::new(set);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// The epoch at which this coordinator owns `subscription` now, or
    /// `None`. Checks the lease itself: answers `None` the instant it runs
    /// out, even before the loss is published.
    pub fn is_owner(&self, subscription: &str) -> Option<u64> {
        let inner = self.shared.lock();
        if !inner.lease_valid(Instant::now()) {
            return None;
        }
        inner.owned.get(subscription).map(|c| c.epoch)
    }

    /// Everything owned now, with epochs (empty when the lease ran out).
    pub fn owned(&self) -> BTreeMap<String, u64> {
        let inner = self.shared.lock();
        if !inner.lease_valid(Instant::now()) {
            return BTreeMap::new();
        }
        inner
            .owned
            .iter()
            .map(|(s, c)| (s.clone(), c.epoch))
            .collect()
    }

    /// A stream of ownership changes (see [`OwnershipChanges`]).
    pub fn changes(&self) -> OwnershipChanges {
        OwnershipChanges::new(self.shared.snapshots.subscribe())
    }

    /// The live members as last seen (sorted by id).
    pub fn members(&self) -> Vec<Member> {
        self.shared.lock().members.clone()
    }

    /// The member that should own `subscription` by the current view of
    /// the members (where to send work for it); it may not have claimed it
    /// yet.
    pub fn designated_owner(&self, subscription: &str) -> Option<Member> {
        let inner = self.shared.lock();
        let id = rendezvous::owner(subscription, inner.members.iter().map(|m| m.id.as_str()))?;
        inner.members.iter().find(|m| m.id == id).cloned()
    }

    /// Confirms with ZooKeeper, right before a durable side effect (a
    /// notification queued, a state snapshot written), that this
    /// coordinator still owns `subscription` at `epoch`: a transaction that
    /// checks the version of `/epochs/<subscription>` on this member's
    /// session. Any error means: do not perform the side effect. A deposed
    /// owner (another member bumped the epoch) gets
    /// [`FenceError::Deposed`] and stops owning at once.
    pub async fn fence(&self, subscription: &str, epoch: u64) -> Result<(), FenceError> {
        let r = self.fence_inner(subscription, epoch).await;
        if let Err(e) = &r {
            self.shared.metrics.fence_refused(e.reason());
        }
        r
    }

    async fn fence_inner(&self, subscription: &str, epoch: u64) -> Result<(), FenceError> {
        let (client, claim) = self.local_claim(subscription, epoch)?;
        let path = epochs_path(subscription);
        let mut w = client.new_multi_writer();
        let unavailable = |source| FenceError::Unavailable {
            subscription: subscription.to_string(),
            epoch,
            source,
        };
        w.add_check_version(&path, claim.epoch_version)
            .map_err(unavailable)?;
        match w.commit().await {
            Ok(_) => {
                // The check passed on the server; the lease may still have
                // run out while the answer travelled.
                self.local_claim(subscription, epoch).map(|_| ())
            }
            Err(zk::MultiWriteError::OperationFailed {
                source: zk::Error::BadVersion | zk::Error::NoNode,
                ..
            }) => {
                self.deposed(subscription, epoch);
                Err(FenceError::Deposed {
                    subscription: subscription.to_string(),
                    epoch,
                })
            }
            Err(e) => Err(unavailable(e.into())),
        }
    }

    /// The session client and the claim if `subscription` is owned at
    /// `epoch` with a valid lease.
    pub(crate) fn local_claim(
        &self,
        subscription: &str,
        epoch: u64,
    ) -> Result<(zk::Client, Claim), FenceError> {
        let inner = self.shared.lock();
        let current = inner.owned.get(subscription).copied();
        match (&inner.session, current) {
            (Some(s), Some(c)) if c.epoch == epoch && s.lease.valid_at(Instant::now()) => {
                Ok((s.client.clone(), c))
            }
            _ => Err(FenceError::NotOwner {
                subscription: subscription.to_string(),
                epoch,
                current: current
                    .filter(|_| inner.lease_valid(Instant::now()))
                    .map(|c| c.epoch),
            }),
        }
    }

    /// ZooKeeper says the epoch moved on: stop owning now.
    pub(crate) fn deposed(&self, subscription: &str, epoch: u64) {
        let mut inner = self.shared.lock();
        if inner
            .owned
            .get(subscription)
            .is_some_and(|c| c.epoch == epoch)
        {
            inner.owned.remove(subscription);
            self.shared.metrics.lost("deposed");
            self.shared.publish(&inner);
        }
        drop(inner);
        self.shared.wake.notify_one();
    }

    /// Registers the `coordination_*` metrics into `registry`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.shared.metrics.register(registry);
    }

    /// Stops: publishes the loss of everything owned, deletes the owner
    /// nodes and the member node, closes the session, and waits for that
    /// (bounded by the session timeout).
    pub async fn shutdown(self) {
        self.stop().await;
    }

    /// [`Coordinator::shutdown`] through a shared reference (the
    /// coordinator owns nothing afterwards; a second call returns at once).
    pub async fn stop(&self) {
        self.shared.cancel.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let deadline = self.shared.cfg.session_timeout;
        let _ = tokio::time::timeout(deadline, futures::future::join_all(tasks)).await;
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        // The driver releases and closes the session in the background.
        self.shared.cancel.cancel();
    }
}

pub(crate) fn owners_path(subscription: &str) -> String {
    format!("{OWNERS}/{}", names::encode_subscription(subscription))
}

pub(crate) fn epochs_path(subscription: &str) -> String {
    format!("{EPOCHS}/{}", names::encode_subscription(subscription))
}

fn member_path(id: &str) -> String {
    format!("{MEMBERS}/{id}")
}

fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

fn ephemeral() -> zk::CreateOptions<'static> {
    zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all())
}

/// A session ready for the driver.
struct Connected {
    client: zk::Client,
    members_watch: zk::PersistentWatcher,
    owners_watch: zk::PersistentWatcher,
}

/// Establishes a session, the layout and the member node, and installs the
/// session (with a fresh lease) in `Inner`.
async fn connect(shared: &Arc<Shared>) -> Result<Connected, Error> {
    let cfg = &shared.cfg;
    let url = cfg.url.to_string();
    let connect_err = |source| Error::Connect {
        url: url.clone(),
        source,
    };
    let root = zk::Client::connector()
        .with_session_timeout(cfg.session_timeout)
        .connect(&cfg.url.connect_string())
        .await
        .map_err(connect_err)?;
    let chroot = cfg.url.chroot();
    match root.mkdir(chroot, &persistent()).await {
        Ok(()) | Err(zk::Error::NodeExists) => {}
        Err(e) => return Err(Error::zk("create chroot", chroot, e)),
    }
    let client = root
        .chroot(chroot.to_string())
        .map_err(|_| Error::Corrupt {
            path: chroot.to_string(),
            reason: "refused as a chroot by the client".into(),
        })?;
    for dir in [MEMBERS, OWNERS, EPOCHS, STATE] {
        match client.create(dir, b"", &persistent()).await {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(Error::zk("create", dir, e)),
        }
    }
    let members_watch = client
        .watch(MEMBERS, zk::AddWatchMode::Persistent)
        .await
        .map_err(|e| Error::zk("watch", MEMBERS, e))?;
    let owners_watch = client
        .watch(OWNERS, zk::AddWatchMode::Persistent)
        .await
        .map_err(|e| Error::zk("watch", OWNERS, e))?;
    let session_id = client.session_id().0;
    let timeout = client.session_timeout().min(cfg.session_timeout);
    register(shared, &client).await?;
    let sent = Instant::now();
    confirm_member(&client, &cfg.member_id, session_id).await?;
    {
        let mut inner = shared.lock();
        inner.session = Some(Session {
            client: client.clone(),
            id: session_id,
            lease: Lease::from_sent(sent, timeout),
        });
    }
    shared.lease_changed.notify_one();
    shared.metrics.sessions.inc();
    tracing::info!(
        member = %cfg.member_id,
        session = %format!("{:#x}", session_id),
        timeout_ms = timeout.as_millis() as u64,
        url = %cfg.url,
        "coordination: session established, member registered"
    );
    Ok(Connected {
        client,
        members_watch,
        owners_watch,
    })
}

/// Creates `/members/<id>`; waits while another session still holds it.
async fn register(shared: &Shared, client: &zk::Client) -> Result<(), Error> {
    let cfg = &shared.cfg;
    let path = member_path(&cfg.member_id);
    let data = serde_json::json!({ "id": cfg.member_id, "url": cfg.advertised_url }).to_string();
    let mut warned = false;
    loop {
        match client.create(&path, data.as_bytes(), &ephemeral()).await {
            Ok(_) => return Ok(()),
            Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(Error::zk("create", &path, e)),
        }
        let (stat, watcher) = client
            .check_and_watch_stat(&path)
            .await
            .map_err(|e| Error::zk("watch", &path, e))?;
        match stat {
            None => continue,
            Some(s) if s.ephemeral_owner == client.session_id().0 => return Ok(()),
            Some(s) => {
                if !warned {
                    tracing::warn!(
                        member = %cfg.member_id,
                        holder = %format!("{:#x}", s.ephemeral_owner),
                        "coordination: member id still registered by another session \
                         (a previous run not yet expired, or a duplicate id): waiting"
                    );
                    warned = true;
                }
                tokio::select! {
                    _ = watcher.changed() => {}
                    _ = shared.cancel.cancelled() => return Err(Error::Stopped),
                }
            }
        }
    }
}

/// Checks that the member node exists and belongs to `session_id`.
async fn confirm_member(client: &zk::Client, id: &str, session_id: i64) -> Result<bool, Error> {
    let path = member_path(id);
    match client.check_stat(&path).await {
        Ok(Some(s)) => Ok(s.ephemeral_owner == session_id),
        Ok(None) => Ok(false),
        Err(e) => Err(Error::zk("stat", &path, e)),
    }
}

/// Drops every claim the moment the lease runs out.
async fn expiry_task(shared: Arc<Shared>) {
    loop {
        let until = shared.lock().session.as_ref().map(|s| s.lease.until());
        match until {
            Some(until) if Instant::now() < until => {
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = shared.lease_changed.notified() => {}
                    _ = shared.cancel.cancelled() => return,
                }
            }
            _ => {
                {
                    let mut inner = shared.lock();
                    if !inner.lease_valid(Instant::now()) {
                        shared.drop_all(&mut inner, "lease_expired");
                    }
                }
                tokio::select! {
                    _ = shared.lease_changed.notified() => {}
                    _ = shared.cancel.cancelled() => return,
                }
            }
        }
    }
}

/// Renews the lease every `session_timeout / 6` while the member node is
/// confirmed on this session.
async fn heartbeat(shared: Arc<Shared>, client: zk::Client, cancel: CancellationToken) {
    let session_id = client.session_id().0;
    let timeout = client.session_timeout().min(shared.cfg.session_timeout);
    let every = Lease::heartbeat(timeout);
    loop {
        let sent = Instant::now();
        let confirmed = tokio::select! {
            r = confirm_member(&client, &shared.cfg.member_id, session_id) => r,
            _ = cancel.cancelled() => return,
        };
        match confirmed {
            Ok(true) => {
                let was_valid;
                {
                    let mut inner = shared.lock();
                    let Some(s) = inner.session.as_mut().filter(|s| s.id == session_id) else {
                        return;
                    };
                    was_valid = s.lease.valid_at(Instant::now());
                    s.lease.renew(Lease::from_sent(sent, timeout));
                }
                shared.lease_changed.notify_one();
                if !was_valid {
                    tracing::info!(member = %shared.cfg.member_id, "coordination: lease renewed after a lapse; reclaiming");
                    shared.wake.notify_one();
                }
            }
            Ok(false) => {
                // The member node is gone (deleted by hand?): no renewal
                // until the driver has registered again.
                shared.wake.notify_one();
            }
            Err(e) if e.session_ended() => return,
            Err(e) => {
                tracing::debug!(member = %shared.cfg.member_id, error = %e, "coordination: heartbeat failed");
            }
        }
        let next = sent + every;
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

enum SessionEnd {
    Stop,
    Expired,
}

async fn driver(shared: Arc<Shared>, first: Connected) {
    let mut next = Some(first);
    let mut backoff = Duration::from_millis(100);
    loop {
        let conn = match next.take() {
            Some(c) => c,
            None => {
                let attempt = tokio::select! {
                    r = connect(&shared) => r,
                    _ = shared.cancel.cancelled() => break,
                };
                match attempt {
                    Ok(c) => {
                        backoff = Duration::from_millis(100);
                        c
                    }
                    Err(Error::Stopped) => break,
                    Err(e) => {
                        shared.metrics.connect_failures.inc();
                        tracing::warn!(member = %shared.cfg.member_id, error = %e, retry_in_ms = backoff.as_millis() as u64, "coordination: cannot establish a session");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shared.cancel.cancelled() => break,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
        };
        match session_loop(&shared, conn).await {
            SessionEnd::Stop => break,
            SessionEnd::Expired => {
                shared.metrics.members.set(0);
                continue;
            }
        }
    }
    let mut inner = shared.lock();
    shared.drop_all(&mut inner, "stopped");
    inner.session = None;
    inner.members.clear();
}

/// Runs one session until it ends or the coordinator stops.
async fn session_loop(shared: &Arc<Shared>, conn: Connected) -> SessionEnd {
    let Connected {
        client,
        mut members_watch,
        mut owners_watch,
    } = conn;
    let session_id = client.session_id().0;
    let timeout = client.session_timeout().min(shared.cfg.session_timeout);
    let hb_cancel = shared.cancel.child_token();
    let hb = tokio::spawn(heartbeat(shared.clone(), client.clone(), hb_cancel.clone()));
    let mut state = client.state_watcher();
    let mut urls: HashMap<String, String> = HashMap::new();
    let mut dirty = true;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let end = loop {
        if dirty {
            dirty = false;
            retry_at = None;
            match reconcile(shared, &client, session_id, &mut urls).await {
                Ok(Reconciled::Done) => {}
                Ok(Reconciled::Retry) => {
                    retry_at = Some(tokio::time::Instant::now() + timeout / 10);
                }
                Err(e) if e.session_ended() => break SessionEnd::Expired,
                Err(e) => {
                    tracing::warn!(member = %shared.cfg.member_id, error = %e, "coordination: reconcile failed; retrying");
                    retry_at = Some(tokio::time::Instant::now() + timeout / 10);
                }
            }
        }
        let retry = retry_at.unwrap_or_else(|| tokio::time::Instant::now() + timeout);
        tokio::select! {
            _ = shared.cancel.cancelled() => break SessionEnd::Stop,
            st = state.changed() => match st {
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                    tracing::info!(member = %shared.cfg.member_id, "coordination: reconnected");
                    dirty = true;
                }
                zk::SessionState::Disconnected => {
                    tracing::warn!(member = %shared.cfg.member_id, "coordination: disconnected from ZooKeeper; owning until the lease runs out");
                }
                _ => break SessionEnd::Expired,
            },
            ev = members_watch.changed() => {
                if ev.event_type == zk::EventType::Session && ev.session_state.is_terminated() {
                    break SessionEnd::Expired;
                }
                dirty = true;
            }
            ev = owners_watch.changed() => {
                if ev.event_type == zk::EventType::Session && ev.session_state.is_terminated() {
                    break SessionEnd::Expired;
                }
                dirty = true;
            }
            _ = shared.wake.notified() => dirty = true,
            _ = tokio::time::sleep_until(retry) => dirty = true,
        }
    };
    hb_cancel.cancel();
    let _ = hb.await;
    match end {
        SessionEnd::Stop => {
            release_all(shared, &client, session_id).await;
            // Dropping the last client closes the session; ephemerals go.
        }
        SessionEnd::Expired => {
            tracing::warn!(member = %shared.cfg.member_id, session = %format!("{:#x}", session_id), "coordination: session ended; establishing a new one");
            let mut inner = shared.lock();
            shared.drop_all(&mut inner, "session_ended");
            if inner.session.as_ref().is_some_and(|s| s.id == session_id) {
                inner.session = None;
            }
        }
    }
    end
}

/// On stop: publish the losses first, then delete the owner nodes and the
/// member node, so others take over without waiting for the timeout.
async fn release_all(shared: &Arc<Shared>, client: &zk::Client, session_id: i64) {
    let owned: Vec<String> = {
        let mut inner = shared.lock();
        let owned = inner.owned.keys().cloned().collect();
        if !inner.owned.is_empty() {
            inner.owned.clear();
            shared.publish(&inner);
        }
        inner.session = None;
        owned
    };
    let timeout = shared.cfg.session_timeout;
    let work = async {
        for sub in &owned {
            delete_if_mine(client, &owners_path(sub), session_id).await;
            shared.metrics.releases.inc();
        }
        delete_if_mine(client, &member_path(&shared.cfg.member_id), session_id).await;
    };
    if tokio::time::timeout(timeout, work).await.is_err() {
        tracing::warn!(member = %shared.cfg.member_id, "coordination: release on stop timed out; the session timeout will free the rest");
    }
    tracing::info!(member = %shared.cfg.member_id, released = owned.len(), "coordination: stopped");
}

/// Deletes an ephemeral node if this session holds it. Errors are logged:
/// the session's end removes it anyway.
async fn delete_if_mine(client: &zk::Client, path: &str, session_id: i64) -> bool {
    match client.get_data(path).await {
        Ok((_, stat)) if stat.ephemeral_owner == session_id => {
            match client.delete(path, Some(stat.version)).await {
                Ok(()) | Err(zk::Error::NoNode) => true,
                Err(e) => {
                    tracing::warn!(path, error = %e, "coordination: delete failed");
                    false
                }
            }
        }
        Ok(_) | Err(zk::Error::NoNode) => false,
        Err(e) => {
            tracing::warn!(path, error = %e, "coordination: read before delete failed");
            false
        }
    }
}

enum Reconciled {
    Done,
    /// Something was contended or not yet possible; look again soon.
    Retry,
}

/// Brings ownership in line with the members, the claims and the set.
async fn reconcile(
    shared: &Arc<Shared>,
    client: &zk::Client,
    session_id: i64,
    urls: &mut HashMap<String, String>,
) -> Result<Reconciled, Error> {
    let me = shared.cfg.member_id.clone();
    let mut ids = client
        .list_children(MEMBERS)
        .await
        .map_err(|e| Error::zk("list", MEMBERS, e))?;
    ids.retain(|id| names::check_member_id(id).is_ok());
    ids.sort();
    if !ids.contains(&me) || !confirm_member(client, &me, session_id).await? {
        // Our node vanished while the session lives (deleted by hand):
        // register again before owning anything.
        tracing::warn!(member = %me, "coordination: member node missing; registering again");
        register(shared, client).await?;
        shared.wake.notify_one();
        return Ok(Reconciled::Retry);
    }
    urls.retain(|id, _| ids.contains(id));
    for id in &ids {
        if !urls.contains_key(id) {
            let url = match client.get_data(&member_path(id)).await {
                Ok((data, _)) => serde_json::from_slice::<serde_json::Value>(&data)
                    .ok()
                    .and_then(|v| v.get("url")?.as_str().map(str::to_string))
                    .unwrap_or_default(),
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(Error::zk("get", &member_path(id), e)),
            };
            urls.insert(id.clone(), url);
        }
    }
    let mine_on_server: HashSet<String> = client
        .list_ephemerals(OWNERS)
        .await
        .map_err(|e| Error::zk("list ephemerals", OWNERS, e))?
        .into_iter()
        .filter_map(|p| {
            p.strip_prefix(OWNERS)
                .and_then(|r| r.strip_prefix('/'))
                .and_then(names::decode_subscription)
        })
        .collect();

    let desired =
        |sub: &str| rendezvous::owner(sub, ids.iter().map(String::as_str)) == Some(me.as_str());
    let (to_release, to_claim, stale) = {
        let mut inner = shared.lock();
        inner.members = ids
            .iter()
            .map(|id| Member {
                id: id.clone(),
                url: urls.get(id).cloned().unwrap_or_default(),
            })
            .collect();
        shared.metrics.members.set(ids.len() as i64);
        // Claims whose node is gone (deleted by hand) are lost.
        let gone: Vec<String> = inner
            .owned
            .keys()
            .filter(|s| !mine_on_server.contains(*s))
            .cloned()
            .collect();
        if !gone.is_empty() {
            for s in &gone {
                inner.owned.remove(s);
                shared.metrics.lost("node_deleted");
            }
            tracing::warn!(member = %me, count = gone.len(), "coordination: owner nodes vanished; ownership dropped");
            shared.publish(&inner);
        }
        let subs = inner.subscriptions.clone();
        let to_release: Vec<String> = inner
            .owned
            .keys()
            .filter(|s| !subs.contains(*s) || !desired(s))
            .cloned()
            .collect();
        let to_claim: Vec<String> = subs
            .iter()
            .filter(|s| !inner.owned.contains_key(*s) && desired(s))
            .cloned()
            .collect();
        // Our own leftover nodes that we do not mean to own: a release whose
        // delete failed, or a claim that ended with the lease.
        let stale: Vec<String> = mine_on_server
            .iter()
            .filter(|s| {
                let meant_for_us = subs.contains(*s) && desired(s);
                !inner.owned.contains_key(*s) && !meant_for_us
            })
            .cloned()
            .collect();
        let can_claim = inner.lease_valid(Instant::now());
        (
            to_release,
            if can_claim { to_claim } else { Vec::new() },
            stale,
        )
    };

    // A clean move: the hand-over runs while the claims are still ours.
    if let Some(h) = shared.cfg.hand_over.clone() {
        let leaving: Vec<String> = {
            let inner = shared.lock();
            to_release
                .iter()
                .filter(|s| inner.owned.contains_key(*s))
                .cloned()
                .collect()
        };
        if !leaving.is_empty() && shared.lock().lease_valid(Instant::now()) {
            let all = stream::iter(leaving)
                .map(|sub| {
                    shared.metrics.hand_overs.inc();
                    (h.0)(sub)
                })
                .buffer_unordered(shared.cfg.claim_concurrency)
                .collect::<Vec<()>>();
            if tokio::time::timeout(shared.cfg.session_timeout, all)
                .await
                .is_err()
            {
                shared.metrics.hand_over_timeouts.inc();
                tracing::warn!(member = %me, "coordination: hand-over did not finish within the session timeout; releasing anyway");
            }
        }
    }

    let mut retry = false;
    for sub in to_release.iter().chain(stale.iter()) {
        let released = {
            let mut inner = shared.lock();
            let was = inner.owned.remove(sub).is_some();
            if was {
                shared.publish(&inner);
            }
            was
        };
        // The loss is published; only now may the node go.
        if !delete_if_mine(client, &owners_path(sub), session_id).await {
            retry |= mine_on_server.contains(sub);
        }
        if released {
            shared.metrics.releases.inc();
            tracing::debug!(member = %me, subscription = %sub, "coordination: released");
        }
    }

    let claims: Vec<(String, bool)> = to_claim
        .into_iter()
        .map(|s| {
            let stale = mine_on_server.contains(&s);
            (s, stale)
        })
        .collect();
    let outcomes: Vec<Result<ClaimOutcome, Error>> = stream::iter(claims)
        .map(|(sub, stale)| async move { claim(shared, client, session_id, &sub, stale).await })
        .buffer_unordered(shared.cfg.claim_concurrency)
        .collect()
        .await;
    for o in outcomes {
        match o {
            Ok(ClaimOutcome::Claimed | ClaimOutcome::Taken) => {}
            Ok(ClaimOutcome::Contended) => retry = true,
            Err(e) if e.session_ended() => return Err(e),
            Err(e) => {
                tracing::warn!(member = %me, error = %e, "coordination: claim failed");
                retry = true;
            }
        }
    }
    Ok(if retry {
        Reconciled::Retry
    } else {
        Reconciled::Done
    })
}

enum ClaimOutcome {
    Claimed,
    /// Another member holds it; its deletion will wake us.
    Taken,
    /// The epoch moved under us, or the lease lapsed meanwhile.
    Contended,
}

/// Claims `sub`: in one transaction, bumps `/epochs/<sub>` with a
/// compare-and-set and creates the ephemeral `/owners/<sub>` (deleting our
/// own stale owner node first when `mine_stale`).
async fn claim(
    shared: &Arc<Shared>,
    client: &zk::Client,
    session_id: i64,
    sub: &str,
    mine_stale: bool,
) -> Result<ClaimOutcome, Error> {
    let owner = owners_path(sub);
    let epochs = epochs_path(sub);
    let mut stale_version = None;
    if mine_stale {
        match client.get_data(&owner).await {
            Ok((_, stat)) if stat.ephemeral_owner == session_id => {
                stale_version = Some(stat.version)
            }
            Ok(_) => return Ok(ClaimOutcome::Taken),
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(Error::zk("get", &owner, e)),
        }
    } else {
        match client.check_stat(&owner).await {
            Ok(Some(_)) => return Ok(ClaimOutcome::Taken),
            Ok(None) => {}
            Err(e) => return Err(Error::zk("stat", &owner, e)),
        }
    }
    let (current, version) = loop {
        match client.get_data(&epochs).await {
            Ok((data, stat)) => break (parse_epoch(&epochs, &data)?, stat.version),
            Err(zk::Error::NoNode) => match client.create(&epochs, b"0", &persistent()).await {
                Ok(_) | Err(zk::Error::NodeExists) => continue,
                Err(e) => return Err(Error::zk("create", &epochs, e)),
            },
            Err(e) => return Err(Error::zk("get", &epochs, e)),
        }
    };
    let epoch = current + 1;
    let data = serde_json::json!({ "member": shared.cfg.member_id, "epoch": epoch }).to_string();
    let epoch_text = epoch.to_string();
    let mut w = client.new_multi_writer();
    let build = |w: &mut zk::MultiWriter<'_>| -> Result<(), zk::Error> {
        if let Some(v) = stale_version {
            w.add_delete(&owner, Some(v))?;
        }
        w.add_set_data(&epochs, epoch_text.as_bytes(), Some(version))?;
        w.add_create(&owner, data.as_bytes(), &ephemeral())
    };
    build(&mut w).map_err(|e| Error::zk("prepare claim", &owner, e))?;
    match w.commit().await {
        Ok(_) => {}
        Err(zk::MultiWriteError::OperationFailed {
            source: zk::Error::BadVersion | zk::Error::NodeExists | zk::Error::NoNode,
            ..
        }) => return Ok(ClaimOutcome::Contended),
        Err(e) => return Err(Error::zk("claim", &owner, e.into())),
    }
    let mut inner = shared.lock();
    let still_wanted = inner.subscriptions.contains(sub);
    let valid = inner.lease_valid(Instant::now())
        && inner.session.as_ref().is_some_and(|s| s.id == session_id);
    if !valid {
        // The node stays ours (stale); the next reconcile after a renewal
        // re-acquires it with a new epoch.
        return Ok(ClaimOutcome::Contended);
    }
    inner.owned.insert(
        sub.to_string(),
        Claim {
            epoch,
            epoch_version: version + 1,
        },
    );
    shared.publish(&inner);
    drop(inner);
    shared.metrics.claims.inc();
    tracing::debug!(member = %shared.cfg.member_id, subscription = %sub, epoch, "coordination: claimed");
    if !still_wanted {
        // The set changed while claiming: the next reconcile releases it.
        shared.wake.notify_one();
    }
    Ok(ClaimOutcome::Claimed)
}

fn parse_epoch(path: &str, data: &[u8]) -> Result<u64, Error> {
    std::str::from_utf8(data)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| Error::Corrupt {
            path: path.to_string(),
            reason: format!(
                "expected a decimal epoch, found {:?}",
                String::from_utf8_lossy(&data[..data.len().min(64)])
            ),
        })
}

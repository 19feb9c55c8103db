//! One notifier per subscription across collectors (`--coordination
//! zookeeper://...`, over `--storage clickhouse`).
//!
//! - **Membership and ownership** come from the `coordination` crate: each
//!   subscription of the tokens file is owned by one live collector at a
//!   time, with a fencing epoch that grows with every takeover.
//! - **Every collector exports what it ingests** ([`exporter`]): the
//!   ClickHouse writer's local commit feed (durable before each insert,
//!   settled after a crash) is copied, commit by commit, into ClickHouse's
//!   `feed` table under this collector's member id, then trimmed.
//! - **The owner pulls** ([`puller`]) each owned subscription's rows
//!   after its per-writer positions into a local evaluation feed
//!   (`<data-dir>/coordinated`, rebuilt at every start) that the notifier's
//!   evaluation thread evaluates, exactly as a single collector evaluates
//!   its own commits.
//! - **State follows ownership**: the subscription's notifier state
//!   (rules, receivers, silences, alerts, pipe and source state, queued
//!   notifications) and the feed positions it reflects are written to
//!   ZooKeeper (`/state/notifier/<sub>`) with a compare-and-set fenced by
//!   the owner's epoch: before any notification is delivered, after every
//!   API change (before it is answered), and each second while it changed.
//!   A new owner imports it and pulls from its positions: records the old
//!   owner evaluated after its last write are evaluated again, and they
//!   only changed pipe state (anything that pages forces a write first), so
//!   a takeover neither pages again nor forgets a resolution; a
//!   notification in flight at the takeover is in the state and is sent
//!   again with the same `X-Notification-Id`.

pub mod exporter;
pub mod puller;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use coordination::{Coordinator, CoordinatorConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::logs::clickhouse::feed::{FeedTable, WriterPos};
use crate::logs::rocks::Store;

/// `--coordination` and its companions.
#[derive(Debug, Clone)]
pub struct CoordinationConfig {
    pub url: coordination::CoordinationUrl,
    /// This collector's member id (unique among the collectors).
    pub member_id: String,
    /// Where the other collectors reach this one (API calls of a
    /// subscription are forwarded to its owner).
    pub advertised_url: String,
    pub session_timeout: Duration,
    /// How often an owner looks for new feed rows.
    pub poll: Duration,
    /// Days of the shared feed kept (older days are dropped).
    pub feed_days: u32,
    /// With VictoriaMetrics: how often an owner reads the latest samples
    /// of the metrics its `metric_threshold` rules watch.
    pub metric_every: Duration,
}

/// Short critical sections only.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the owner keeps of one owned subscription.
struct Owned {
    epoch: u64,
    /// Version of its ZooKeeper state node (`None`: not there yet).
    zk_version: Option<i32>,
    pull: puller::Cursor,
    stop: CancellationToken,
    /// `state_version` of the last export written.
    persisted: Option<u64>,
}

pub(crate) struct Inner {
    pub(crate) cfg: CoordinationConfig,
    pub(crate) coord: Coordinator,
    pub(crate) notifier: notifier::Notifier,
    pub(crate) feed: FeedTable,
    /// The ClickHouse writer's local commit feed (what is exported).
    pub(crate) local: Store,
    /// The evaluation feed of owned subscriptions.
    pub(crate) pulled: Store,
    owned: Mutex<HashMap<String, Owned>>,
    /// Every local commit up to this one is finished (readable).
    pub(crate) announced: AtomicU64,
    pub(crate) wake_export: tokio::sync::Notify,
    pub(crate) metrics: Metrics,
    /// Forwards notifier API calls to owners (their advertised URLs).
    http: reqwest::Client,
    /// Where pushed samples are (`--metrics-storage victoriametrics`): the
    /// owner evaluates `metric_threshold` rules from there.
    victoria: Option<crate::metrics::victoria::Victoria>,
    /// Where the store's (synchronous) conflict reports are queued from.
    runtime: tokio::runtime::Handle,
}

/// Longest conflict detail queued for the owner (bytes).
const MAX_CONFLICT_DETAIL: usize = 2048;
/// Conflicts the owner takes from a subscription's queue per second.
const CONFLICTS_PER_TAKE: usize = 100;

/// `coordinated_*` metrics.
#[derive(Debug, Default, Clone)]
pub(crate) struct Metrics {
    pub(crate) exported: prometheus_client::metrics::counter::Counter,
    pub(crate) pulled: prometheus_client::metrics::counter::Counter,
    pub(crate) pulled_duplicates: prometheus_client::metrics::counter::Counter,
    pub(crate) errors: prometheus_client::metrics::counter::Counter,
    pub(crate) state_writes: prometheus_client::metrics::counter::Counter,
    pub(crate) state_bytes: prometheus_client::metrics::gauge::Gauge,
    pub(crate) owned: prometheus_client::metrics::gauge::Gauge,
}

/// The coordinated notifier of one collector. Cheap to clone.
#[derive(Clone)]
pub struct Coordinated {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Coordinated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinated")
            .field("member", &self.inner.cfg.member_id)
            .finish_non_exhaustive()
    }
}

/// The directory of the evaluation feed under `data_dir`.
pub fn pulled_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("coordinated")
}

impl Coordinated {
    /// Joins the collectors in ZooKeeper and offers `subscriptions`.
    pub async fn start(
        cfg: CoordinationConfig,
        subscriptions: Vec<String>,
        notifier: notifier::Notifier,
        feed: FeedTable,
        local: Store,
        pulled: Store,
        victoria: Option<crate::metrics::victoria::Victoria>,
    ) -> Result<Coordinated, String> {
        let mut c = CoordinatorConfig::new(cfg.url.clone(), cfg.member_id.clone());
        c.advertised_url = cfg.advertised_url.clone();
        c.session_timeout = cfg.session_timeout;
        // A clean move (a collector joined): deliveries of the
        // subscription stop, those in flight land, and its state is
        // written while this collector still owns it, so the next owner
        // sends nothing again.
        let n = notifier.clone();
        let within = cfg.session_timeout.mul_f64(0.9);
        c.hand_over = Some(coordination::HandOver(Arc::new(move |sub: String| {
            let n = n.clone();
            Box::pin(async move {
                match n.hand_over(&sub, within).await {
                    Ok(()) => {
                        tracing::info!(subscription = %sub, "handed over: its state is written")
                    }
                    Err(e) => {
                        tracing::warn!(subscription = %sub, error = %e, "hand-over incomplete; the next owner may send a notification again (same id)")
                    }
                }
            })
        })));
        let coord = Coordinator::start(c)
            .await
            .map_err(|e| format!("--coordination {}: {e}", cfg.url.connect_string()))?;
        coord
            .set_subscriptions(subscriptions.iter().map(String::as_str))
            .map_err(|e| format!("--coordination: {e}"))?;
        let next = local.feed_next_commit().map_err(|e| e.to_string())?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let inner = Arc::new(Inner {
            cfg,
            coord,
            notifier,
            feed,
            local,
            pulled,
            owned: Mutex::new(HashMap::new()),
            announced: AtomicU64::new(next.saturating_sub(1)),
            wake_export: tokio::sync::Notify::new(),
            metrics: Metrics::default(),
            http,
            victoria,
            runtime: tokio::runtime::Handle::current(),
        });
        let me = Coordinated { inner };
        me.inner
            .notifier
            .set_replication(Arc::new(Replicator(me.inner.clone())));
        Ok(me)
    }

    /// Runs the exporter, the ownership loop and the periodic state writes
    /// until `shutdown`.
    pub fn run(&self, tracker: &TaskTracker, shutdown: CancellationToken) {
        tracker.spawn(exporter::run(self.inner.clone(), shutdown.clone()));
        tracker.spawn(ownership_loop(self.inner.clone(), shutdown.clone()));
        if self.inner.victoria.is_some() {
            tracker.spawn(metric_loop(self.inner.clone(), shutdown.clone()));
        }
        tracker.spawn(persist_loop(self.inner.clone(), shutdown));
    }

    /// A local commit of the ClickHouse writer finished (its records are
    /// in ClickHouse): it may be exported.
    pub fn committed(&self, commit: u64) {
        self.inner.announced.fetch_max(commit, Ordering::AcqRel);
        self.inner.wake_export.notify_one();
    }

    /// The owner's advertised URL for `subscription`, when another live
    /// collector owns it (`Ok(None)`: this one does).
    pub fn owner_elsewhere(&self, subscription: &str) -> Result<Option<String>, String> {
        if lock(&self.inner.owned).contains_key(subscription) {
            return Ok(None);
        }
        match self.inner.coord.designated_owner(subscription) {
            Some(m) if m.id == self.inner.cfg.member_id => {
                Err("this collector is taking the subscription over; try again".into())
            }
            Some(m) if m.url.is_empty() => Err(format!(
                "collector {} owns the subscription and advertises no URL",
                m.id
            )),
            Some(m) => Ok(Some(m.url)),
            None => Err("no collector owns the subscription yet".into()),
        }
    }

    /// On a clean stop (after the notifier's deliveries ended): hands
    /// every owned subscription over (deliveries landed, state written)
    /// and leaves ZooKeeper, so the other collectors take over at once
    /// and send nothing again; bounded by the session timeout twice.
    pub async fn stop(&self) {
        let subs: Vec<String> = lock(&self.inner.owned).keys().cloned().collect();
        let within = self.inner.cfg.session_timeout.mul_f64(0.9);
        let n = &self.inner.notifier;
        let all = futures::future::join_all(subs.iter().map(|s| async move {
            if let Err(e) = n.hand_over(s, within).await {
                tracing::warn!(subscription = %s, error = %e, "hand-over on stop incomplete; the next owner may send a notification again (same id)");
            }
        }));
        let _ = tokio::time::timeout(self.inner.cfg.session_timeout, all).await;
        self.inner.coord.stop().await;
        tracing::info!(handed_over = subs.len(), "left the coordinated collectors");
    }

    /// A `source_conflict` this collector's store found: evaluated here
    /// when this collector owns the subscription, else queued in ZooKeeper
    /// (`/state/conflicts/<sub>`, at most 1,000 waiting) for the owner,
    /// which takes them once a second. Called from the store's writer.
    pub fn conflict(&self, subscription: &str, source: &str, detail: &str) {
        if lock(&self.inner.owned).contains_key(subscription) {
            self.inner
                .notifier
                .on_source_conflict(subscription, source, detail);
            return;
        }
        let mut end = detail.len().min(MAX_CONFLICT_DETAIL);
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        let item = serde_json::json!({"source": source, "detail": &detail[..end]}).to_string();
        let (inner, key) = (self.inner.clone(), state::conflicts_key(subscription));
        let sub = subscription.to_string();
        self.inner.runtime.spawn(async move {
            if let Err(e) = inner.coord.enqueue(&key, item.as_bytes()).await {
                inner.metrics.errors.inc();
                tracing::warn!(subscription = %sub, error = %e, "a source conflict could not be passed to the subscription's owner");
            }
        });
    }

    /// The subscription was terminated on this collector (its records are
    /// gone from the shared store): its notifier state is purged by the
    /// owner, here at once when this collector owns it, else through a
    /// ZooKeeper queue the owner takes once a second; the owner then
    /// writes the empty state.
    pub fn purged(&self, subscription: &str) {
        let (inner, sub) = (self.inner.clone(), subscription.to_string());
        if lock(&self.inner.owned).contains_key(subscription) {
            self.inner.notifier.purge(subscription);
            self.inner.runtime.spawn(async move {
                if let Err(e) = inner.notifier.persist(&sub).await {
                    tracing::warn!(subscription = %sub, error = %e, "the purged state could not be written yet; the periodic write retries");
                }
            });
            return;
        }
        self.inner.runtime.spawn(async move {
            if let Err(e) = inner.coord.enqueue(&state::purges_key(&sub), b"purge").await {
                inner.metrics.errors.inc();
                tracing::error!(subscription = %sub, error = %e, "the owner could not be asked to purge the subscription's notifier state");
            }
        });
    }

    /// The client that forwards API calls to owners.
    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    pub fn member_id(&self) -> &str {
        &self.inner.cfg.member_id
    }

    /// Writes `subscription`'s state to ZooKeeper now (after an API
    /// change, before it is answered).
    pub async fn persist(&self, subscription: &str) -> Result<(), String> {
        self.inner
            .notifier
            .persist(subscription)
            .await
            .map_err(|e| e.to_string())
    }

    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let m = &self.inner.metrics;
        let r = registry.sub_registry_with_prefix("coordinated");
        r.register(
            "feed_exported_records",
            "Records this collector copied into the shared feed",
            m.exported.clone(),
        );
        r.register(
            "feed_pulled_records",
            "Feed records pulled for owned subscriptions",
            m.pulled.clone(),
        );
        r.register(
            "feed_pulled_duplicates",
            "Pulled records skipped: the same (source, seq, ts) was pulled already",
            m.pulled_duplicates.clone(),
        );
        r.register(
            "errors",
            "ClickHouse or ZooKeeper errors of the coordinated notifier",
            m.errors.clone(),
        );
        r.register(
            "state_writes",
            "Notifier states written to ZooKeeper",
            m.state_writes.clone(),
        );
        r.register(
            "state_bytes",
            "Size of the last notifier state written",
            m.state_bytes.clone(),
        );
        r.register(
            "owned_subscriptions",
            "Subscriptions this collector evaluates",
            m.owned.clone(),
        );
        self.inner.coord.register_metrics(registry);
    }
}

/// Retries `f` while this collector still owns `sub` at `epoch`.
async fn while_owner<T, E: std::fmt::Display, F, Fut>(
    inner: &Inner,
    sub: &str,
    epoch: u64,
    what: &str,
    mut f: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut wait = Duration::from_millis(100);
    loop {
        if inner.coord.is_owner(sub) != Some(epoch) {
            return None;
        }
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => {
                inner.metrics.errors.inc();
                tracing::warn!(subscription = sub, error = %e, "taking over: {what} failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn acquire(inner: &Arc<Inner>, sub: &str, epoch: u64) {
    let key = state::key(sub);
    let Some(saved) = while_owner(inner, sub, epoch, "reading its state", || {
        inner.coord.get_versioned(&key)
    })
    .await
    else {
        return;
    };
    let (positions, blob, zk_version) = match &saved {
        Some(v) => match state::decode(&v.data) {
            Ok((h, blob)) => (Some(h.positions), Some(blob.to_vec()), Some(v.version)),
            Err(e) => {
                // Written by something else: not evaluated from an empty
                // state silently.
                inner.metrics.errors.inc();
                tracing::error!(subscription = sub, error = %e, "its notifier state in ZooKeeper cannot be read; the subscription is not evaluated here");
                return;
            }
        },
        None => (None, None, None),
    };
    let positions = match positions {
        Some(p) => p,
        // Never owned before: from what the feed holds now on.
        None => match while_owner(inner, sub, epoch, "reading the feed's ends", || {
            inner.feed.ends(sub)
        })
        .await
        {
            Some(p) => p,
            None => return,
        },
    };
    let (n, pulled, s) = (
        inner.notifier.clone(),
        inner.pulled.clone(),
        sub.to_string(),
    );
    let imported = tokio::task::spawn_blocking(move || {
        pulled.feed_trim(&s, u64::MAX).map_err(|e| e.to_string())?;
        n.import_subscription(&s, blob.as_deref())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    if let Err(e) = imported {
        inner.metrics.errors.inc();
        tracing::error!(subscription = sub, error = %e, "cannot import its notifier state; the subscription is not evaluated here");
        return;
    }
    let stop = CancellationToken::new();
    {
        let mut owned = lock(&inner.owned);
        owned.insert(
            sub.to_string(),
            Owned {
                epoch,
                zk_version,
                pull: puller::Cursor::new(positions),
                stop: stop.clone(),
                persisted: None,
            },
        );
        inner.metrics.owned.set(owned.len() as i64);
    }
    tracing::info!(
        subscription = sub,
        epoch,
        "evaluating the subscription (owner)"
    );
    tokio::spawn(puller::run(inner.clone(), sub.to_string(), stop));
}

fn release(inner: &Arc<Inner>, sub: &str) {
    let was = {
        let mut owned = lock(&inner.owned);
        let was = owned.remove(sub);
        inner.metrics.owned.set(owned.len() as i64);
        was
    };
    if let Some(o) = was {
        o.stop.cancel();
    }
    inner.notifier.release_subscription(sub);
    if let Err(e) = inner.pulled.feed_trim(sub, u64::MAX) {
        tracing::warn!(subscription = sub, error = %e, "cannot trim the evaluation feed");
    }
    tracing::info!(subscription = sub, "no longer evaluating the subscription");
}

async fn ownership_loop(inner: Arc<Inner>, shutdown: CancellationToken) {
    let mut changes = inner.coord.changes();
    loop {
        let change = tokio::select! {
            _ = shutdown.cancelled() => break,
            c = changes.next() => c,
        };
        let Some(c) = change else { break };
        if c.owned {
            acquire(&inner, &c.subscription, c.epoch).await;
        } else {
            let inner = inner.clone();
            let _ = tokio::task::spawn_blocking(move || release(&inner, &c.subscription)).await;
        }
    }
}

/// Purges `sub`'s notifier state when another collector terminated it.
async fn take_purges(inner: &Arc<Inner>, sub: &str) {
    match inner.coord.take(&state::purges_key(sub), 10).await {
        Ok(items) if items.is_empty() => {}
        Ok(_) => {
            let (n, s) = (inner.notifier.clone(), sub.to_string());
            let _ = tokio::task::spawn_blocking(move || n.purge(&s)).await;
            tracing::info!(subscription = %sub, "notifier state purged (terminated on another collector)");
        }
        Err(e) => {
            inner.metrics.errors.inc();
            tracing::warn!(subscription = %sub, error = %e, "reading the queued purges failed");
        }
    }
}

/// Raises the conflicts other collectors queued for `sub` (owned here).
async fn take_conflicts(inner: &Arc<Inner>, sub: &str) {
    let items = match inner
        .coord
        .take(&state::conflicts_key(sub), CONFLICTS_PER_TAKE)
        .await
    {
        Ok(items) if items.is_empty() => return,
        Ok(items) => items,
        Err(e) => {
            inner.metrics.errors.inc();
            tracing::warn!(subscription = %sub, error = %e, "reading the queued source conflicts failed");
            return;
        }
    };
    let (n, s) = (inner.notifier.clone(), sub.to_string());
    let _ = tokio::task::spawn_blocking(move || {
        for item in items {
            let v: serde_json::Value = serde_json::from_slice(&item).unwrap_or_default();
            match (v["source"].as_str(), v["detail"].as_str()) {
                (Some(source), Some(detail)) => n.on_source_conflict(&s, source, detail),
                _ => tracing::warn!(subscription = %s, "a queued source conflict is not readable; skipped"),
            }
        }
    })
    .await;
}

/// Writes each owned subscription's state whose version moved, once a
/// second (deliveries and API changes write it at once themselves).
async fn persist_loop(inner: Arc<Inner>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = every.tick() => {}
        }
        let owned: Vec<(String, Option<u64>)> = lock(&inner.owned)
            .iter()
            .map(|(s, o)| (s.clone(), o.persisted))
            .collect();
        for (sub, persisted) in owned {
            take_purges(&inner, &sub).await;
            take_conflicts(&inner, &sub).await;
            if persisted == Some(inner.notifier.state_version(&sub)) {
                continue;
            }
            if let Err(e) = inner.notifier.persist(&sub).await {
                tracing::debug!(subscription = %sub, error = %e, "periodic state write failed");
            }
        }
    }
}

/// Largest instant-query answer read per metric.
const MAX_METRIC_ANSWER: usize = 8 << 20;

/// With VictoriaMetrics, the owner evaluates each owned subscription's
/// `metric_threshold` rules from the latest samples stored there, whichever
/// collector they were pushed to (pushed samples are then not evaluated
/// where they arrive).
async fn metric_loop(inner: Arc<Inner>, shutdown: CancellationToken) {
    let Some(vm) = inner.victoria.clone() else {
        return;
    };
    let mut every = tokio::time::interval(inner.cfg.metric_every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = every.tick() => {}
        }
        let owned: Vec<String> = lock(&inner.owned).keys().cloned().collect();
        for sub in owned {
            for name in inner.notifier.watched_metrics(&sub) {
                let series = match vm.latest(&sub, &name, MAX_METRIC_ANSWER).await {
                    Ok(s) => s,
                    Err(e) => {
                        inner.metrics.errors.inc();
                        tracing::warn!(subscription = %sub, metric = %name, error = %e, "reading the latest samples from VictoriaMetrics failed");
                        continue;
                    }
                };
                if series.is_empty() || !lock(&inner.owned).contains_key(&sub) {
                    continue;
                }
                let refs: Vec<notifier::SampleRef<'_>> = series
                    .iter()
                    .map(|(labels, value)| notifier::SampleRef {
                        name: &name,
                        labels,
                        value: *value,
                    })
                    .collect();
                inner.notifier.on_samples(&sub, &refs);
            }
        }
    }
}

/// The notifier's replication hook: a fenced compare-and-set of the
/// subscription's state node.
struct Replicator(Arc<Inner>);

impl notifier::Replication for Replicator {
    fn store(
        &self,
        sub: &str,
        exported: notifier::Exported,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'static>>
    {
        let inner = self.0.clone();
        let sub = sub.to_string();
        Box::pin(async move {
            let (epoch, expected, positions) = {
                let mut owned = lock(&inner.owned);
                let o = owned
                    .get_mut(&sub)
                    .ok_or("this collector does not own the subscription")?;
                let w = exported.watermark;
                (
                    o.epoch,
                    o.zk_version,
                    o.pull.positions_at((w.commit, w.index)),
                )
            };
            let header = state::Header {
                positions,
                member: inner.cfg.member_id.clone(),
                at: schemas::time::now_nanos(),
            };
            let data = state::encode(&header, &exported.blob)?;
            let key = state::key(&sub);
            let mut expected = expected;
            let mut tries = 0;
            let version = loop {
                match inner
                    .coord
                    .set_if_version_fenced(&key, &data, expected, &sub, epoch)
                    .await
                {
                    Ok(v) => break v,
                    // Only an owner writes it, and this one is (fenced):
                    // the version known here is stale (a write whose answer
                    // was lost). Read it again once.
                    Err(coordination::StateError::Conflict { .. }) if tries == 0 => {
                        tries += 1;
                        expected = inner
                            .coord
                            .get_versioned(&key)
                            .await
                            .map_err(|e| e.to_string())?
                            .map(|v| v.version);
                    }
                    Err(e) => {
                        inner.metrics.errors.inc();
                        return Err(e.to_string());
                    }
                }
            };
            inner.metrics.state_writes.inc();
            inner.metrics.state_bytes.set(data.len() as i64);
            if let Some(o) = lock(&inner.owned).get_mut(&sub) {
                if o.epoch == epoch {
                    o.zk_version = Some(version);
                    o.persisted = Some(exported.version);
                }
            }
            Ok(())
        })
    }
}

/// Positions of a pull cursor, for tests and `positions_at`.
pub type Positions = BTreeMap<String, WriterPos>;

impl Inner {
    /// Runs `f` on `sub`'s cursor while it is owned.
    pub(crate) fn with_cursor<T>(
        &self,
        sub: &str,
        f: impl FnOnce(&mut puller::Cursor) -> T,
    ) -> Option<T> {
        lock(&self.owned).get_mut(sub).map(|o| f(&mut o.pull))
    }
}

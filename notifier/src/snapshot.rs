//! Moving one subscription's whole notifier state from one notifier to
//! another (several collectors share subscriptions; one of them, the
//! owner, evaluates a subscription at a time, and another takes over when
//! it dies): [`Notifier::export_subscription`] reads it in one RocksDB
//! snapshot, [`Notifier::import_subscription`] replaces what a notifier
//! holds of the subscription by it, [`Notifier::release_subscription`]
//! forgets it. Where the exports are kept, and the delivery gate that
//! stores one before a notification goes out, is `replication.rs`.
//!
//! An export holds every key of the subscription's families `r v s a p o
//! w x g` (`store.rs`) and of `n` its notifications not finished plus the
//! newest [`FINISHED_KEPT`] finished ones, encoded by `statecodec.rs`; not
//! its watermark (family `f`): [`Exported::watermark`] carries it.

use std::collections::VecDeque;
use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions};
use schemas::notify::{NotificationRule, Receiver, Silence};
use serde::Deserialize;

use crate::engine::{Engine, Restored};
use crate::error::NotifierError;
use crate::feed::FeedPos;
use crate::limits::Limits;
use crate::model::{
    Alert, DeliveryState, Group, MetricState, Notification, PipeKey, PipeState, ScheduleSpec,
    SourceKey, SourceState,
};
use crate::replication::Moved;
use crate::rule::{self, CompiledRule};
use crate::schedule::parse_cron;
use crate::service::{lock, Notifier};
use crate::silence::ActiveSilence;
use crate::statecodec::{decode, encode, invalid, Entry, Snapshot, FAMILIES};
use crate::store::{keys, Db, KeyValue};

/// Finished notifications (history) an export carries.
pub const FINISHED_KEPT: usize = 100;

/// What [`Notifier::export_subscription`] returns.
#[derive(Debug, Clone)]
pub struct Exported {
    /// Versioned, compressed (zstd) encoding of every persisted key/value
    /// of the subscription's state (families r, v, s, a, p, o, w, x, g of
    /// `store.rs`, and the notifications of family n that are not finished
    /// plus the newest finished ones, up to [`FINISHED_KEPT`]); not the
    /// watermark (family f).
    pub blob: Vec<u8>,
    /// The subscription's evaluation watermark, read in the same RocksDB
    /// snapshot as the state: the state reflects exactly the records up to
    /// it.
    pub watermark: FeedPos,
    /// Every notification of the subscription with an id below this is in
    /// the blob (or was finished and left out): read from a counter that
    /// moves after each state write completed, before the snapshot was
    /// taken.
    pub covers_below: u64,
    /// [`Notifier::state_version`] of the subscription, read before the
    /// snapshot was taken: the blob holds every write up to it.
    pub version: u64,
}

/// Only the delivery state of a stored notification.
#[derive(Deserialize)]
struct StateOf {
    state: DeliveryState,
}

fn read_error(e: rocksdb::Error) -> NotifierError {
    NotifierError::storage(format!("notifier state: export: {e}"))
}

impl Db {
    /// `sub`'s watermark and entries, read in one snapshot.
    fn export_entries(&self, sub: &str) -> Result<(FeedPos, Vec<Entry>), NotifierError> {
        let cf = self.cf()?;
        let snap = self.db.snapshot();
        let watermark = snap
            .get_cf(cf, keys::watermark(sub))
            .map_err(read_error)?
            .and_then(|v| FeedPos::from_bytes(&v))
            .unwrap_or_default();
        let range = |f: u8| {
            let mut ro = ReadOptions::default();
            ro.set_iterate_lower_bound(keys::sub_start(f, sub));
            ro.set_iterate_upper_bound(keys::sub_end(f, sub));
            ro
        };
        let mut entries = Vec::new();
        for f in FAMILIES {
            let start = keys::sub_start(f, sub);
            let mode = IteratorMode::From(&start, Direction::Forward);
            for item in snap.iterator_cf_opt(cf, range(f), mode) {
                let (k, v) = item.map_err(read_error)?;
                entries.push(Entry {
                    family: f,
                    key: k[start.len()..].to_vec(),
                    value: v.to_vec(),
                });
            }
        }
        // Notifications newest first: every one not finished, the newest
        // finished ones.
        let start = keys::sub_start(b'n', sub);
        let (mut notes, mut finished) = (Vec::new(), 0);
        for item in snap.iterator_cf_opt(cf, range(b'n'), IteratorMode::End) {
            let (k, v) = item.map_err(read_error)?;
            let keep = match serde_json::from_slice::<StateOf>(&v) {
                Ok(s) if s.state == DeliveryState::Pending => true,
                Ok(_) => {
                    finished += 1;
                    finished <= FINISHED_KEPT
                }
                Err(e) => {
                    tracing::error!(key = %String::from_utf8_lossy(&k), error = %e, "unreadable notification left out of the export");
                    false
                }
            };
            if keep {
                notes.push(Entry {
                    family: b'n',
                    key: k[start.len()..].to_vec(),
                    value: v.to_vec(),
                });
            }
        }
        notes.reverse();
        entries.extend(notes);
        Ok((watermark, entries))
    }

    /// Replaces every key of `sub` by `kvs` (and sets the next
    /// notification id), in one synced batch.
    fn replace_subscription(
        &self,
        sub: &str,
        kvs: &[KeyValue],
        next_id: u64,
    ) -> Result<(), NotifierError> {
        let cf = self.cf()?;
        let mut b = WriteBatch::default();
        for f in keys::PER_SUBSCRIPTION {
            b.delete_range_cf(cf, keys::sub_start(f, sub), keys::sub_end(f, sub));
        }
        for (k, v) in kvs {
            b.put_cf(cf, k, v);
        }
        b.put_cf(cf, keys::NEXT_ID, next_id.to_be_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(b, &wo)
            .map_err(|e| NotifierError::storage(format!("notifier state: import: {e}")))
    }
}

/// An entry of an import, read.
enum Item {
    Rule(NotificationRule),
    Receiver(Receiver),
    Silence(Silence),
    Alert(Alert),
    Pipe(PipeKey, PipeState),
    Source(SourceKey, SourceState),
    Window(String, VecDeque<(i64, f64)>),
    Metric(String, MetricState),
    Group(String, Group),
    Note(Notification),
}

fn json<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, String> {
    serde_json::from_slice(v).map_err(|e| e.to_string())
}

impl Item {
    fn read(family: u8, v: &[u8]) -> Result<Item, String> {
        Ok(match family {
            b'r' => Item::Rule(json(v)?),
            b'v' => Item::Receiver(json(v)?),
            b's' => Item::Silence(json(v)?),
            b'a' => Item::Alert(json(v)?),
            b'p' => {
                let (k, p) = crate::pipecodec::decode(v).ok_or("unreadable pipe state")?;
                Item::Pipe(k, p)
            }
            b'o' => json::<(SourceKey, SourceState)>(v).map(|(k, s)| Item::Source(k, s))?,
            b'w' => json::<(String, VecDeque<(i64, f64)>)>(v).map(|(k, w)| Item::Window(k, w))?,
            b'x' => json::<(String, MetricState)>(v).map(|(k, m)| Item::Metric(k, m))?,
            b'g' => json::<(String, Group)>(v).map(|(k, g)| Item::Group(k, g))?,
            _ => Item::Note(json(v)?),
        })
    }

    /// The key it is stored under.
    fn key(&self) -> Vec<u8> {
        match self {
            Item::Rule(r) => keys::rule(&r.subscription, &r.id),
            Item::Receiver(r) => keys::receiver(&r.subscription, &r.name),
            Item::Silence(s) => keys::silence(&s.subscription, &s.id),
            Item::Alert(a) => keys::alert(&a.subscription, &a.fingerprint),
            Item::Pipe(k, _) => keys::pipe(k),
            Item::Source(k, _) => keys::source(k),
            Item::Window(k, _) => keys::window(k),
            Item::Metric(k, m) if m.rule.sub == k.split('\0').next().unwrap_or("") => {
                keys::metric(k)
            }
            Item::Group(k, g) if g.rule.sub == k.split('\0').next().unwrap_or("") => keys::group(k),
            // Another subscription's rule: matches no key.
            Item::Metric(..) | Item::Group(..) => Vec::new(),
            Item::Note(n) => keys::notification(&n.subscription, n.id),
        }
    }
}

/// The state of one subscription to import.
#[derive(Default)]
struct Parsed {
    kvs: Vec<KeyValue>,
    receivers: Vec<Receiver>,
    rules: Vec<NotificationRule>,
    silences: Vec<Silence>,
    notifications: Vec<Notification>,
    restored: Restored,
}

/// Reads `s`'s entries as `sub`'s state: an entry that does not read, or
/// whose key is not the one its value is stored under in `sub`, is
/// skipped (and logged), as unreadable entries are at start.
fn parse(sub: &str, s: Snapshot) -> Parsed {
    let mut p = Parsed::default();
    for e in s.entries {
        let mut key = keys::sub_start(e.family, sub);
        key.extend_from_slice(&e.key);
        let item = match Item::read(e.family, &e.value) {
            Ok(item) if item.key() == key => item,
            Ok(_) => {
                tracing::error!(subscription = sub, key = %String::from_utf8_lossy(&key), "imported entry skipped: its value is not stored under this key in the subscription");
                continue;
            }
            Err(m) => {
                tracing::error!(subscription = sub, key = %String::from_utf8_lossy(&key), error = %m, "unreadable imported entry skipped");
                continue;
            }
        };
        let r = &mut p.restored;
        match item {
            Item::Rule(x) => p.rules.push(x),
            Item::Receiver(x) => p.receivers.push(x),
            Item::Silence(x) => p.silences.push(x),
            Item::Alert(x) => r.alerts.push(x),
            Item::Pipe(k, x) => r.pipes.push((k, x)),
            Item::Source(k, x) => r.sources.push((k, x)),
            Item::Window(k, x) => r.windows.push((k, x)),
            Item::Metric(k, x) => r.metrics.push((k, x)),
            Item::Group(k, x) => r.groups.push((k, x)),
            Item::Note(n) => p.notifications.push(n),
        }
        p.kvs.push((key, e.value));
    }
    p
}

/// `p`'s rules and silences, compiled as at start (an invalid one is
/// logged and skipped; it stays stored, as at start).
fn compile(p: &mut Parsed, limits: &Limits) -> (Vec<CompiledRule>, Vec<ActiveSilence>) {
    let rules = std::mem::take(&mut p.rules)
        .into_iter()
        .filter_map(|r| {
            let key = format!("{}/{}", r.subscription, r.id);
            rule::compile(r, limits)
                .map_err(|e| tracing::error!(rule = %key, error = %e, "imported rule not valid here; skipped"))
                .ok()
        })
        .collect();
    let silences = std::mem::take(&mut p.silences)
        .into_iter()
        .filter_map(|s| {
            let key = format!("{}/{}", s.subscription, s.id);
            ActiveSilence::compile(s, None, limits)
                .map_err(|e| tracing::error!(silence = %key, error = %e, "imported silence not valid here; skipped"))
                .ok()
        })
        .collect();
    (rules, silences)
}

impl Notifier {
    /// Exports `sub`'s whole state, consistently (one RocksDB snapshot).
    /// Blocking: callers run it off the async workers.
    pub fn export_subscription(&self, sub: &str) -> Result<Exported, NotifierError> {
        // Both before the snapshot: it holds at least what they say.
        let covers_below = self.inner.repl.written_below();
        let version = self.state_version(sub);
        let (watermark, entries) = self.inner.db.export_entries(sub)?;
        let blob = encode(&Snapshot {
            subscription: sub.to_string(),
            entries,
        })?;
        Ok(Exported {
            blob,
            watermark,
            covers_below,
            version,
        })
    }

    /// Replaces everything this notifier holds of `sub` (what
    /// [`Notifier::purge`] forgets: engine, database, delivery queue, the
    /// evaluation thread's records of it) by the state in `blob` (`None`:
    /// an empty state), written in one synced batch; its rules and silences
    /// are compiled (an invalid one is skipped with an error log, as at
    /// start), the rest restored as at start, its notifications not
    /// finished queued with their ids, and the next notification id raised
    /// above every one of them. Its evaluation watermark becomes
    /// [`FeedPos::default()`]; records of it handed to the evaluation
    /// thread before the import are not evaluated. A blob that is not an
    /// export of `sub` is an error naming what is wrong, and changes
    /// nothing. Blocking.
    pub fn import_subscription(&self, sub: &str, blob: Option<&[u8]>) -> Result<(), NotifierError> {
        let snapshot = match blob {
            Some(b) => decode(b)?,
            None => Snapshot {
                subscription: sub.to_string(),
                entries: Vec::new(),
            },
        };
        if snapshot.subscription != sub {
            return Err(invalid(format!(
                "the notifier state export is of subscription {:?}, not {sub:?}",
                snapshot.subscription
            )));
        }
        let mut p = parse(sub, snapshot);
        let (rules, silences) = compile(&mut p, &self.inner.config.limits);
        let top = p.notifications.iter().map(|n| n.id).max();
        let pending: Vec<Notification> = std::mem::take(&mut p.notifications)
            .into_iter()
            .filter(|n| n.state == DeliveryState::Pending)
            .collect();
        let queued = pending.len();
        let mut engine = lock(&self.inner.engine);
        // First: an export of `sub` in progress is not stored.
        self.inner.repl.moved(sub, Moved::Imported);
        let next = engine
            .next_notification
            .max(top.map_or(0, |t| t.saturating_add(1)));
        {
            // Under the queue's lock, as a termination: a delivery of the
            // old state that ends now finds its notification gone and
            // deletes what it writes back.
            let mut q = lock(&self.inner.queue);
            self.inner.db.replace_subscription(sub, &p.kvs, next)?;
            self.inner.repl.written_to(next);
            q.purge(sub);
            for n in pending {
                q.push(n);
            }
            self.inner.metrics.queue_pending.set(q.pending.len() as i64);
        }
        // The database holds the imported state; the engine follows.
        engine.purge(sub);
        // Under the engine lock: the evaluation thread checks it there.
        self.inner.eval.purged(sub);
        engine.next_notification = next;
        let now = self.inner.clock.now();
        let receivers = Arc::make_mut(&mut engine.receivers);
        for r in std::mem::take(&mut p.receivers) {
            receivers.insert((r.subscription.clone(), r.name.clone()), r);
        }
        let counts = (rules.len(), p.restored.alerts.len(), p.restored.pipes.len());
        for r in rules {
            engine.set_rule(Arc::new(r), now);
        }
        for s in silences {
            engine.set_silence(s, now);
        }
        p.restored.now = now;
        engine.restore_subscription(sub, p.restored);
        // What restoring made (as at start: a silence that ended
        // meanwhile lets a held-back alert notify).
        let mut fx = engine.take_effects();
        fx.sync = !fx.notifications.is_empty();
        let written = self.inner.db.apply(&fx, engine.next_notification);
        if written.is_ok() {
            self.inner.repl.wrote(&fx, engine.next_notification);
        }
        self.publish_receivers(&engine);
        let (rule_count, firing) = (engine.rules.len(), engine.alert_count());
        drop(engine);
        if let Err(e) = &written {
            self.inner.metrics.errors.inc();
            tracing::error!(subscription = sub, error = %e, "notifier state write failed after an import");
        } else if !fx.notifications.is_empty() {
            let mut q = lock(&self.inner.queue);
            for n in fx.notifications {
                q.push(n);
            }
            self.inner.metrics.queue_pending.set(q.pending.len() as i64);
        }
        lock(&self.inner.finished).remove(sub);
        self.inner.shares.remove(sub);
        self.inner.metrics.forget(sub);
        self.inner.metrics.rules.set(rule_count as i64);
        self.inner.metrics.alerts_firing.set(firing as i64);
        self.refresh_metric_watch();
        self.inner.repl.bump(sub);
        self.inner.wake_delivery.notify_one();
        self.inner.wake_timer.notify_one();
        tracing::info!(
            subscription = sub,
            rules = counts.0,
            alerts = counts.1,
            pipes = counts.2,
            queued,
            "notifier state imported"
        );
        Ok(())
    }

    /// Forgets `sub` here (its ownership moved elsewhere): what
    /// [`Notifier::purge`] forgets, but not a termination. A delivery in
    /// flight finishes its request; its outcome is not kept.
    pub fn release_subscription(&self, sub: &str) {
        self.inner.repl.moved(sub, Moved::Released);
        self.forget(sub);
        self.inner.repl.bump(sub);
        tracing::info!(subscription = sub, "notifier state released");
    }

    /// What [`Notifier::purge`] and [`Notifier::release_subscription`] do.
    pub(crate) fn forget(&self, subscription: &str) {
        let mut engine = lock(&self.inner.engine);
        engine.purge(subscription);
        self.publish_receivers(&engine);
        // Under the engine lock: the evaluation thread checks it there.
        self.inner.eval.purged(subscription);
        let fx = engine.take_effects();
        if let Err(e) = self.inner.db.apply(&fx, engine.next_notification) {
            tracing::error!(error = %e, "notifier state write failed");
        }
        {
            // Under the queue lock: a delivery that ends now finds its
            // notification gone, and deletes what it wrote back meanwhile
            // (`land`).
            let mut q = lock(&self.inner.queue);
            q.purge(subscription);
            self.inner.metrics.queue_pending.set(q.pending.len() as i64);
            if let Err(e) = self.inner.db.purge(subscription) {
                self.inner.metrics.errors.inc();
                tracing::error!(subscription, error = %e, "notifier purge failed");
            }
        }
        drop(engine);
        lock(&self.inner.finished).remove(subscription);
        self.inner.shares.remove(subscription);
        self.inner.metrics.forget(subscription);
        self.refresh_metric_watch();
    }
}

impl Engine {
    /// Restores the persisted state of one subscription (after its rules,
    /// receivers and silences are in), as [`Engine::restore`] does at
    /// start, arming only its timers.
    pub(crate) fn restore_subscription(&mut self, sub: &str, state: Restored) {
        let now = state.now;
        self.restore_entries(state);
        self.flush_pending(sub, now, now);
    }

    /// Puts restored alerts, pipes, sources, windows, metric series and
    /// groups in and arms their timers.
    pub(crate) fn restore_entries(&mut self, state: Restored) {
        let mut pipe_keys = Vec::with_capacity(state.pipes.len());
        for (k, mut p) in state.pipes {
            if let ScheduleSpec::Cron(expr) = &p.schedule {
                p.cron = parse_cron(expr).map(Arc::new);
            }
            self.count(&k.sub).pipes += 1;
            self.pipes_of
                .entry(k.source_key())
                .or_default()
                .insert(k.pipe.clone());
            pipe_keys.push(k.clone());
            self.pipes.insert(k, p);
        }
        let mut source_keys = Vec::with_capacity(state.sources.len());
        for (k, s) in state.sources {
            self.count(&k.sub).sources += 1;
            source_keys.push(k.clone());
            self.sources.insert(k, s);
        }
        for (k, w) in state.windows {
            let sub = k.split('\0').next().unwrap_or("").to_string();
            self.count(&sub).series += 1;
            self.windows.insert(k, w);
        }
        let mut fps = Vec::with_capacity(state.alerts.len());
        for a in state.alerts {
            if a.rule_type == schemas::notify::RuleType::NodeHeartbeatOverdue {
                if let Some(src) = &a.source {
                    self.heartbeat_firing
                        .insert(SourceKey::new(&a.subscription, src), a.fingerprint.clone());
                }
            }
            fps.push(a.fingerprint.clone());
            self.alerts.insert(a);
        }
        for fp in fps {
            self.arm_alert_timers(&fp);
        }
        for k in pipe_keys {
            self.arm_pipe(&k);
        }
        for k in source_keys {
            self.arm_heartbeats(&k);
        }
        self.restore_metrics(state.metrics, state.now);
        self.restore_groups(state.groups);
    }
}

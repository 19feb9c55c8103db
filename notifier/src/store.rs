//! The notifier's persisted state, in one column family of the collector's
//! RocksDB (so checkpoints and backups carry it).
//!
//! Layout 2 (every key of a subscription's state starts with
//! `<family>\0<subscription>\0`, so terminating a subscription deletes
//! each family by range):
//!
//! | key | value (JSON) |
//! |---|---|
//! | `r\0<sub>\0<rule id>` | the rule as accepted |
//! | `v\0<sub>\0<name>` | a receiver |
//! | `s\0<sub>\0<silence id>` | a silence |
//! | `a\0<sub>\0<fingerprint>` | an active alert (firing; deleted on resolve) |
//! | `p\0<sub>\0<source>\0<pipe>` | a pipe's key and state (last start/finish, schedule), compact binary (`pipecodec.rs`; JSON `[key, state]` before) |
//! | `o\0<sub>\0<source>` | `[key, state]` of a source (event clock, last arrival) |
//! | `w\0<sub>\0<rule>\0<source>\0<pipe>` | `[key, window]` of a summed value rule |
//! | `x\0<sub>\0<rule>\0<series>` | `[key, state]` of a pending `metric_threshold` series |
//! | `g\0<sub>\0<group key>` | `[key, group]` of alerts waiting to go out together |
//! | `n\0<sub>\0<id u64 BE>` | a notification: queued before it is sent, history after |
//! | `f\0<sub>\0` | the subscription's evaluation watermark: the commit feed position (commit u64 BE, index u32 BE) of the last record evaluated, written in the batch of that evaluation's changes |
//! | `m\0next_notification` | the next notification id, u64 BE |
//! | `m\0layout` | `2` |
//! | `m\0alive` | collector time of the last evaluation, i64 BE (its downtime, at the next start) |
//!
//! Layout 1 (before ids were scoped by subscription) keyed rules,
//! silences, alerts and notifications without the subscription and
//! windows by rule first; [`Db::migrate`] rewrites such a store in one
//! atomic batch when it is opened.
//!
//! This is the only place that knows the keys: the engine hands typed
//! [`Change`]s over.
//!
//! State changes of an evaluation are written in one `WriteBatch`: a
//! notification and the alert change that caused it land together or not
//! at all, and with them the watermark of the records evaluated, so that
//! after a crash exactly the records past it are evaluated again. API changes and timer-driven batches that queue notifications are
//! synced; evaluations of ingested records ride on the WAL, which the
//! collector syncs with every ingest commit. An unsynced write survives a
//! process crash (it is in the OS's page cache), so `kill -9` loses
//! nothing; a power cut could lose the latest record-driven changes.

use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use serde_json::Value;

use std::collections::{HashMap, VecDeque};

use schemas::notify::{NotificationRule, Receiver, Silence};

use crate::error::NotifierError;
use crate::feed::FeedPos;
use crate::model::{
    Alert, Change, DeliveryState, Effects, Group, MetricState, Notification, PipeKey, PipeState,
    SourceKey, SourceState,
};

pub mod keys {
    use crate::model::{PipeKey, SourceKey};

    fn join(prefix: u8, parts: &[&str]) -> Vec<u8> {
        let mut k = vec![prefix, 0];
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                k.push(0);
            }
            k.extend_from_slice(p.as_bytes());
        }
        k
    }

    pub const RULES: &[u8] = b"r\0";
    pub const RECEIVERS: &[u8] = b"v\0";
    pub const SILENCES: &[u8] = b"s\0";
    pub const ALERTS: &[u8] = b"a\0";
    pub const PIPES: &[u8] = b"p\0";
    pub const SOURCES: &[u8] = b"o\0";
    pub const WINDOWS: &[u8] = b"w\0";
    pub const METRICS: &[u8] = b"x\0";
    pub const GROUPS: &[u8] = b"g\0";
    pub const NOTIFICATIONS: &[u8] = b"n\0";
    pub const WATERMARKS: &[u8] = b"f\0";
    pub const NEXT_ID: &[u8] = b"m\0next_notification";
    pub const LAYOUT: &[u8] = b"m\0layout";
    pub const ALIVE: &[u8] = b"m\0alive";
    /// Families whose keys start with the subscription.
    pub const PER_SUBSCRIPTION: [u8; 11] = [
        b'r', b'v', b's', b'a', b'p', b'o', b'w', b'x', b'g', b'n', b'f',
    ];

    pub fn rule(sub: &str, id: &str) -> Vec<u8> {
        join(b'r', &[sub, id])
    }
    pub fn receiver(sub: &str, name: &str) -> Vec<u8> {
        join(b'v', &[sub, name])
    }
    pub fn silence(sub: &str, id: &str) -> Vec<u8> {
        join(b's', &[sub, id])
    }
    pub fn alert(sub: &str, fp: &str) -> Vec<u8> {
        join(b'a', &[sub, fp])
    }
    pub fn pipe(k: &PipeKey) -> Vec<u8> {
        join(b'p', &[&k.sub, &k.source, &k.pipe])
    }
    pub fn source(k: &SourceKey) -> Vec<u8> {
        join(b'o', &[&k.sub, &k.source])
    }
    /// `k` is `<sub>\0<rule>\0<source>\0<pipe>`.
    pub fn window(k: &str) -> Vec<u8> {
        join(b'w', &[k])
    }
    /// `k` is `<sub>\0<rule>\0<series>`.
    pub fn metric(k: &str) -> Vec<u8> {
        join(b'x', &[k])
    }
    /// `k` is `<sub>\0<group key>`.
    pub fn group(k: &str) -> Vec<u8> {
        join(b'g', &[k])
    }
    /// `f\0<sub>\0`: inside [`sub_start`] .. [`sub_end`] of family `f`
    /// like every other family's keys (a termination deletes it).
    pub fn watermark(sub: &str) -> Vec<u8> {
        join(b'f', &[sub, ""])
    }
    pub fn notification(sub: &str, id: u64) -> Vec<u8> {
        let mut k = join(b'n', &[sub, ""]);
        k.extend_from_slice(&id.to_be_bytes());
        k
    }
    /// `<family>\0<sub>\0`: the start of a subscription's keys.
    pub fn sub_start(family: u8, sub: &str) -> Vec<u8> {
        join(family, &[sub, ""])
    }
    /// The first key after a subscription's keys in `family`.
    pub fn sub_end(family: u8, sub: &str) -> Vec<u8> {
        let mut k = join(family, &[sub]);
        k.push(1);
        k
    }
}

/// A stored key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Everything persisted, as read at start ([`Db::load`]). Unreadable
/// entries are logged and skipped.
#[derive(Debug, Default)]
pub struct Loaded {
    pub receivers: Vec<Receiver>,
    pub rules: Vec<NotificationRule>,
    pub silences: Vec<Silence>,
    pub alerts: Vec<Alert>,
    pub pipes: Vec<(PipeKey, PipeState)>,
    pub sources: Vec<(SourceKey, SourceState)>,
    pub windows: Vec<(String, VecDeque<(i64, f64)>)>,
    pub metrics: Vec<(String, MetricState)>,
    pub groups: Vec<(String, Group)>,
    /// Notifications not delivered yet.
    pub pending: Vec<Notification>,
    pub next_notification: u64,
    /// Collector time of the last evaluation before this start.
    pub alive: Option<i64>,
    /// Per subscription: the feed position of the last record evaluated.
    pub watermarks: HashMap<String, FeedPos>,
}

fn parse<T: serde::de::DeserializeOwned>(key: &[u8], v: &[u8]) -> Option<T> {
    match serde_json::from_slice(v) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(key = %String::from_utf8_lossy(key), error = %e, "unreadable notifier state entry skipped");
            None
        }
    }
}

/// The column family the notifier keeps its state in.
pub const COLUMN_FAMILY: &str = "notifier";

/// The current layout (see the module docs).
pub const LAYOUT: &str = "2";

/// Access to the notifier's column family.
#[derive(Clone)]
pub struct Db {
    pub(crate) db: Arc<DB>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

fn storage(op: &'static str, e: impl std::fmt::Display) -> NotifierError {
    NotifierError::storage(format!("notifier state: {op}: {e}"))
}

fn json<T: serde::Serialize + ?Sized>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// The key of a change, and its value (`None`: delete).
fn change(c: &Change) -> (Vec<u8>, Option<Vec<u8>>) {
    match c {
        Change::Rule(r) => (keys::rule(&r.subscription, &r.id), Some(json(r))),
        Change::RuleGone(k) => (keys::rule(&k.sub, &k.id), None),
        Change::Receiver(r) => (keys::receiver(&r.subscription, &r.name), Some(json(r))),
        Change::ReceiverGone { sub, name } => (keys::receiver(sub, name), None),
        Change::Silence(s) => (keys::silence(&s.subscription, &s.id), Some(json(s))),
        Change::SilenceGone { sub, id } => (keys::silence(sub, id), None),
        Change::Alert(a) => (keys::alert(&a.subscription, &a.fingerprint), Some(json(a))),
        Change::AlertGone { sub, fp } => (keys::alert(sub, fp), None),
        Change::Pipe(k, p) => (keys::pipe(k), Some(crate::pipecodec::encode(k, p))),
        Change::PipeGone(k) => (keys::pipe(k), None),
        Change::Source(k, s) => (keys::source(k), Some(json(&(k, s)))),
        Change::SourceGone(k) => (keys::source(k), None),
        Change::Window(k, w) => (keys::window(k), Some(json(&(k, w)))),
        Change::WindowGone(k) => (keys::window(k), None),
        Change::Metric(k, m) => (keys::metric(k), Some(json(&(k, m)))),
        Change::MetricGone(k) => (keys::metric(k), None),
        Change::Group(k, g) => (keys::group(k), Some(json(&(k, g)))),
        Change::GroupGone(k) => (keys::group(k), None),
    }
}

fn notification_id(key: &[u8]) -> Option<u64> {
    let tail = key.get(key.len().checked_sub(8)?..)?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}

impl Db {
    /// `db` must have been opened with the [`COLUMN_FAMILY`] column family.
    pub fn new(db: Arc<DB>) -> Result<Db, NotifierError> {
        if db.cf_handle(COLUMN_FAMILY).is_none() {
            return Err(NotifierError::storage(format!(
                "the database has no {COLUMN_FAMILY:?} column family"
            )));
        }
        Ok(Db { db })
    }

    pub(crate) fn cf(&self) -> Result<&rocksdb::ColumnFamily, NotifierError> {
        self.db
            .cf_handle(COLUMN_FAMILY)
            .ok_or_else(|| NotifierError::storage("column family vanished"))
    }

    /// Reads everything persisted (after [`Db::migrate`]).
    pub fn load(&self) -> Result<Loaded, NotifierError> {
        fn all<T: serde::de::DeserializeOwned>(
            db: &Db,
            prefix: &[u8],
        ) -> Result<Vec<T>, NotifierError> {
            Ok(db
                .scan(prefix)?
                .iter()
                .filter_map(|(k, v)| parse(k, v))
                .collect())
        }
        let next = self
            .get(keys::NEXT_ID)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(1, |b| u64::from_be_bytes(b).max(1));
        let notifications: Vec<Notification> = all(self, keys::NOTIFICATIONS)?;
        Ok(Loaded {
            receivers: all(self, keys::RECEIVERS)?,
            rules: all(self, keys::RULES)?,
            silences: all(self, keys::SILENCES)?,
            alerts: all(self, keys::ALERTS)?,
            pipes: self
                .scan(keys::PIPES)?
                .iter()
                .filter_map(|(k, v)| {
                    let p = crate::pipecodec::decode(v);
                    if p.is_none() {
                        tracing::error!(key = %String::from_utf8_lossy(k), "unreadable notifier pipe state skipped");
                    }
                    p
                })
                .collect(),
            sources: all(self, keys::SOURCES)?,
            windows: all(self, keys::WINDOWS)?,
            metrics: all(self, keys::METRICS)?,
            groups: all(self, keys::GROUPS)?,
            pending: notifications
                .into_iter()
                .filter(|n| n.state == DeliveryState::Pending)
                .collect(),
            next_notification: next,
            alive: self
                .get(keys::ALIVE)?
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map(i64::from_be_bytes),
            watermarks: self
                .scan(keys::WATERMARKS)?
                .iter()
                .filter_map(|(k, v)| {
                    let sub = k.get(2..k.len().checked_sub(1)?)?;
                    let sub = String::from_utf8_lossy(sub).into_owned();
                    Some((sub, FeedPos::from_bytes(v)?))
                })
                .collect(),
        })
    }

    /// Every notification, oldest first (tests and tools).
    pub fn all_notifications(&self) -> Result<Vec<Notification>, NotifierError> {
        let mut out: Vec<Notification> = self
            .scan(keys::NOTIFICATIONS)?
            .iter()
            .filter_map(|(k, v)| parse(k, v))
            .collect();
        out.sort_by_key(|n| n.id);
        Ok(out)
    }

    /// Every (key, value) whose key starts with `prefix`.
    pub fn scan(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, NotifierError> {
        let cf = self.cf()?;
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(prefix, Direction::Forward))
        {
            let (k, v) = item.map_err(|e| storage("scan", e))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Brings a store of an older layout to [`LAYOUT`], in one atomic
    /// batch (a crash leaves the old layout, migrated again at the next
    /// open). Returns how many entries were moved.
    pub fn migrate(&self) -> Result<usize, NotifierError> {
        if self.get(keys::LAYOUT)?.is_some() {
            return Ok(0);
        }
        let cf = self.cf()?;
        let mut b = WriteBatch::default();
        let mut moved = 0;
        let sub_of = |v: &[u8]| -> Option<String> {
            let j: Value = serde_json::from_slice(v).ok()?;
            Some(j.get("subscription")?.as_str()?.to_string())
        };
        // Rules, silences, alerts: `<f>\0<id>` -> `<f>\0<sub>\0<id>`.
        for family in [keys::RULES, keys::SILENCES, keys::ALERTS] {
            for (k, v) in self.scan(family)? {
                let id = String::from_utf8_lossy(&k[2..]).into_owned();
                let Some(sub) = sub_of(&v) else {
                    tracing::error!(key = %String::from_utf8_lossy(&k), "unreadable notifier entry dropped in migration");
                    b.delete_cf(cf, &k);
                    continue;
                };
                let new = match family[0] {
                    b'r' => keys::rule(&sub, &id),
                    b's' => keys::silence(&sub, &id),
                    _ => keys::alert(&sub, &id),
                };
                b.delete_cf(cf, &k);
                b.put_cf(cf, new, &v);
                moved += 1;
            }
        }
        // Windows: `w\0<rule>\0<sub>\0<source>\0<pipe>` with the same key
        // string in the value -> subscription first.
        for (k, v) in self.scan(keys::WINDOWS)? {
            b.delete_cf(cf, &k);
            let Ok((old, window)) = serde_json::from_slice::<(String, Value)>(&v) else {
                continue;
            };
            let mut parts = old.splitn(3, '\0');
            let (Some(rule), Some(sub), Some(rest)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let new = format!("{sub}\0{rule}\0{rest}");
            b.put_cf(
                cf,
                keys::window(&new),
                serde_json::to_vec(&(&new, window)).unwrap_or_default(),
            );
            moved += 1;
        }
        // Notifications: `n\0<id>` -> `n\0<sub>\0<id>`.
        for (k, v) in self.scan(keys::NOTIFICATIONS)? {
            b.delete_cf(cf, &k);
            let (Some(id), Some(sub)) = (notification_id(&k), sub_of(&v)) else {
                continue;
            };
            b.put_cf(cf, keys::notification(&sub, id), &v);
            moved += 1;
        }
        b.put_cf(cf, keys::LAYOUT, LAYOUT.as_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(b, &wo)
            .map_err(|e| storage("migrate", e))?;
        Ok(moved)
    }

    /// Notifications of `sub` newest first, as long as `keep` says so.
    pub fn notifications_rev(
        &self,
        sub: &str,
        mut keep: impl FnMut(Notification) -> bool,
    ) -> Result<(), NotifierError> {
        let cf = self.cf()?;
        let end = keys::notification(sub, u64::MAX);
        let start = keys::sub_start(b'n', sub);
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&end, Direction::Reverse))
        {
            let (k, v) = item.map_err(|e| storage("scan notifications", e))?;
            if !k.starts_with(&start) {
                break;
            }
            let Ok(n) = serde_json::from_slice::<Notification>(&v) else {
                continue;
            };
            if !keep(n) {
                break;
            }
        }
        Ok(())
    }

    /// The subscriptions that have notifications.
    pub fn notification_subscriptions(&self) -> Result<Vec<String>, NotifierError> {
        let cf = self.cf()?;
        let mut out = Vec::new();
        let mut from = keys::NOTIFICATIONS.to_vec();
        loop {
            let mut it = self
                .db
                .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward));
            let Some(item) = it.next() else { break };
            let (k, _) = item.map_err(|e| storage("scan notifications", e))?;
            if !k.starts_with(keys::NOTIFICATIONS) {
                break;
            }
            let rest = &k[2..];
            let Some(end) = rest.iter().position(|b| *b == 0) else {
                break;
            };
            let sub = String::from_utf8_lossy(&rest[..end]).into_owned();
            from = keys::sub_end(b'n', &sub);
            out.push(sub);
        }
        Ok(out)
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, NotifierError> {
        self.db
            .get_cf(self.cf()?, key)
            .map_err(|e| storage("read", e))
    }

    pub fn put(&self, key: &[u8], value: &[u8], sync: bool) -> Result<(), NotifierError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db
            .put_cf_opt(self.cf()?, key, value, &wo)
            .map_err(|e| storage("write", e))
    }

    /// Writes notifications (status changes) in one batch.
    pub fn put_notifications(&self, ns: &[Notification]) -> Result<(), NotifierError> {
        if ns.is_empty() {
            return Ok(());
        }
        let cf = self.cf()?;
        let mut b = WriteBatch::default();
        for n in ns {
            b.put_cf(
                cf,
                keys::notification(&n.subscription, n.id),
                serde_json::to_vec(n).unwrap_or_default(),
            );
        }
        self.db.write(b).map_err(|e| storage("write", e))
    }

    /// Deletes one notification (a delivery's outcome written back after
    /// its subscription was terminated).
    pub fn delete_notification(&self, sub: &str, id: u64) -> Result<(), NotifierError> {
        self.db
            .delete_cf(self.cf()?, keys::notification(sub, id))
            .map_err(|e| storage("delete", e))
    }

    /// Writes an evaluation's effects in one batch.
    pub fn apply(&self, fx: &Effects, next_id: u64) -> Result<(), NotifierError> {
        if fx.is_empty() && fx.alive.is_none() {
            return Ok(());
        }
        let cf = self.cf()?;
        let mut b = WriteBatch::default();
        if let Some(t) = fx.alive {
            b.put_cf(cf, keys::ALIVE, t.to_be_bytes());
        }
        for (sub, pos) in &fx.watermarks {
            b.put_cf(cf, keys::watermark(sub), pos.to_bytes());
        }
        for c in &fx.changes {
            match change(c) {
                (k, Some(v)) => b.put_cf(cf, k, v),
                (k, None) => b.delete_cf(cf, k),
            }
        }
        for n in &fx.notifications {
            b.put_cf(
                cf,
                keys::notification(&n.subscription, n.id),
                serde_json::to_vec(n).unwrap_or_default(),
            );
        }
        if !fx.notifications.is_empty() {
            b.put_cf(cf, keys::NEXT_ID, next_id.to_be_bytes());
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(fx.sync);
        self.db.write_opt(b, &wo).map_err(|e| storage("write", e))
    }

    /// Makes every write so far durable.
    pub fn sync(&self) -> Result<(), NotifierError> {
        self.db.flush_wal(true).map_err(|e| storage("sync", e))
    }

    /// Keeps the newest `keep` notifications of `sub` and those from
    /// `oldest_pending` on; deletes the older ones.
    pub fn prune_history(
        &self,
        sub: &str,
        keep: u64,
        oldest_pending: u64,
    ) -> Result<(), NotifierError> {
        let cf = self.cf()?;
        let start = keys::sub_start(b'n', sub);
        let end = keys::notification(sub, u64::MAX);
        let mut seen = 0u64;
        let mut boundary = None;
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&end, Direction::Reverse))
        {
            let (k, _) = item.map_err(|e| storage("scan notifications", e))?;
            if !k.starts_with(&start) {
                break;
            }
            seen += 1;
            if seen > keep {
                boundary = notification_id(&k);
                break;
            }
        }
        let Some(newest_dropped) = boundary else {
            return Ok(());
        };
        let below = newest_dropped.saturating_add(1).min(oldest_pending);
        if below == 0 {
            return Ok(());
        }
        self.db
            .delete_range_cf(
                cf,
                keys::notification(sub, 0),
                keys::notification(sub, below),
            )
            .map_err(|e| storage("prune", e))
    }

    /// Deletes every key of a terminated subscription, synced.
    pub fn purge(&self, sub: &str) -> Result<(), NotifierError> {
        let cf = self.cf()?;
        let mut b = WriteBatch::default();
        for f in keys::PER_SUBSCRIPTION {
            b.delete_range_cf(cf, keys::sub_start(f, sub), keys::sub_end(f, sub));
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(b, &wo).map_err(|e| storage("purge", e))
    }
}

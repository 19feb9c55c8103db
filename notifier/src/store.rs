//! The notifier's persisted state, in one column family of the collector's
//! RocksDB (so checkpoints and backups carry it).
//!
//! | key | value (JSON) |
//! |---|---|
//! | `r\0<rule id>` | the rule as accepted |
//! | `v\0<subscription>\0<name>` | a receiver |
//! | `s\0<silence id>` | a silence |
//! | `a\0<fingerprint>` | an active alert (firing; deleted on resolve) |
//! | `p\0<sub>\0<source>\0<pipe>` | `[key, state]` of a pipe (last start/finish, schedule) |
//! | `o\0<sub>\0<source>` | `[key, state]` of a source (event clock, last arrival) |
//! | `w\0<rule>\0<sub>\0<source>\0<pipe>` | `[key, window]` of a summed value rule |
//! | `n\0<id u64 BE>` | a notification: queued before it is sent, history after |
//! | `m\0next_notification` | the next notification id, u64 BE |
//!
//! State changes of an evaluation are written in one `WriteBatch`: a
//! notification and the alert change that caused it land together or not
//! at all. API changes and timer-driven batches that queue notifications are
//! synced; evaluations of ingested records ride on the WAL, which the
//! collector syncs with every ingest commit. An unsynced write survives a
//! process crash (it is in the OS's page cache), so `kill -9` loses
//! nothing; a power cut could lose the latest record-driven changes.

use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use crate::engine::{Effects, Notification};
use crate::NotifierError;

pub mod keys {
    use crate::engine::{PipeKey, SourceKey};

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
    pub const NOTIFICATIONS: &[u8] = b"n\0";
    pub const NEXT_ID: &[u8] = b"m\0next_notification";

    pub fn rule(id: &str) -> Vec<u8> {
        join(b'r', &[id])
    }
    pub fn receiver(sub: &str, name: &str) -> Vec<u8> {
        join(b'v', &[sub, name])
    }
    pub fn silence(id: &str) -> Vec<u8> {
        join(b's', &[id])
    }
    pub fn alert(fp: &str) -> Vec<u8> {
        join(b'a', &[fp])
    }
    pub fn pipe(k: &PipeKey) -> Vec<u8> {
        join(b'p', &[&k.sub, &k.source, &k.pipe])
    }
    pub fn source(k: &SourceKey) -> Vec<u8> {
        join(b'o', &[&k.sub, &k.source])
    }
    pub fn window(k: &str) -> Vec<u8> {
        join(b'w', &[k])
    }
    pub fn notification(id: u64) -> Vec<u8> {
        let mut k = NOTIFICATIONS.to_vec();
        k.extend_from_slice(&id.to_be_bytes());
        k
    }
}

/// A stored key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// The column family the notifier keeps its state in.
pub const COLUMN_FAMILY: &str = "notifier";

/// Access to the notifier's column family.
#[derive(Clone)]
pub struct Db {
    db: Arc<DB>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

fn storage(op: &'static str, e: impl std::fmt::Display) -> NotifierError {
    NotifierError::storage(format!("notifier state: {op}: {e}"))
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

    fn cf(&self) -> Result<&rocksdb::ColumnFamily, NotifierError> {
        self.db
            .cf_handle(COLUMN_FAMILY)
            .ok_or_else(|| NotifierError::storage("column family vanished"))
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

    /// Notifications newest first, as long as `keep` says so.
    pub fn notifications_rev(
        &self,
        mut keep: impl FnMut(Notification) -> bool,
    ) -> Result<(), NotifierError> {
        let cf = self.cf()?;
        let end = keys::notification(u64::MAX);
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&end, Direction::Reverse))
        {
            let (k, v) = item.map_err(|e| storage("scan notifications", e))?;
            if !k.starts_with(keys::NOTIFICATIONS) {
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

    /// Writes an evaluation's effects in one batch.
    pub fn apply(&self, fx: &Effects, next_id: u64) -> Result<(), NotifierError> {
        if fx.is_empty() {
            return Ok(());
        }
        let cf = self.cf()?;
        let mut b = WriteBatch::default();
        for (k, v) in &fx.puts {
            b.put_cf(cf, k, v);
        }
        for k in &fx.deletes {
            b.delete_cf(cf, k);
        }
        for n in &fx.notifications {
            b.put_cf(
                cf,
                keys::notification(n.id),
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

    /// Deletes notification history below `id`.
    pub fn prune_notifications(&self, below: u64) -> Result<(), NotifierError> {
        let cf = self.cf()?;
        self.db
            .delete_range_cf(cf, keys::notification(0), keys::notification(below))
            .map_err(|e| storage("prune", e))
    }
}

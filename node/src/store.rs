//! The node's RocksDB database: datasets, pipe offsets, pump state and
//! secrets, in one database at `<data-dir>/node` (the outbox is a separate
//! database at `<data-dir>/outbox`).
//!
//! # Entities
//! A dataset is an append-only log of entity versions. Writing an entity
//! assigns it the dataset's next `_updated` (1, 2, 3, ... per dataset, the
//! `since` token), `_ts` (write time, Unix microseconds), `_hash` (hex
//! SHA-256 of the entity's content, i.e. every property except `_updated`,
//! `_ts`, `_hash` and `_previous`) and `_previous` (the `_updated` of the
//! version it replaces, or null). A write whose `_hash` equals the current
//! version's is skipped: nothing is stored and it is not counted as a change.
//!
//! # On-disk layout
//!
//! | family | key | value |
//! |---|---|---|
//! | `log` | `<dataset> 0x00 <_updated u64 BE>` | the entity version, named-field MessagePack |
//! | `latest` | `<dataset> 0x00 <_id>` | `[_updated u64 BE][_deleted u8][_hash utf-8]` of the current version |
//! | `datasets` | `<dataset>` | [`DatasetMeta`] as MessagePack |
//! | `meta` | `offset/<pipe>`, `pump/<pipe>` | u64 BE source offset; [`PumpMeta`] MessagePack |
//! | `meta` | `config/current` | u64 BE: the running configuration version |
//! | `meta` | `config/v/<version u64 BE>` | [`crate::history::ConfigVersion`] MessagePack |
//! | `secrets` | `<name>` | the secret value, utf-8 |
//!
//! Dataset names and `_id`s must not contain NUL (validated on write), so the
//! `0x00` separator makes every dataset's keys one contiguous, ordered range.
//! A log entry, its `latest` pointer and the dataset's meta are written in one
//! atomic write batch, so a crash never leaves a pointer to a missing version
//! or a count that disagrees with the log.
//!
//! Writers of one dataset are serialized by an in-process mutex (held only
//! while computing and writing a batch, never across an `.await`), which is
//! what makes `_updated` strictly increasing without gaps.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, DB};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::history::ConfigVersion;

const CF_LOG: &str = "log";
const CF_LATEST: &str = "latest";
const CF_DATASETS: &str = "datasets";
const CF_META: &str = "meta";
const CF_SECRETS: &str = "secrets";

const CONFIG_CURRENT: &str = "config/current";
const CONFIG_VERSION_PREFIX: &str = "config/v/";

fn config_version_key(version: u64) -> Vec<u8> {
    let mut k = CONFIG_VERSION_PREFIX.as_bytes().to_vec();
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// Properties the store owns; they are not part of an entity's content hash.
const SYSTEM_PROPS: [&str; 4] = ["_updated", "_ts", "_hash", "_previous"];

/// Everything that can go wrong with the node's storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("open node database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rocksdb::Error,
    },
    #[error("storage failed to {op}: {source}")]
    Storage {
        op: &'static str,
        #[source]
        source: rocksdb::Error,
    },
    #[error("entity {index} of the batch has no string `_id`")]
    MissingId { index: usize },
    #[error("entity {index} of the batch is not a JSON object")]
    NotAnObject { index: usize },
    #[error("{what} {name:?} contains a NUL character")]
    Nul { what: &'static str, name: String },
    #[error("encode entity {id:?}: {message}")]
    Encode { id: String, message: String },
    #[error("stored value under {key:?} is damaged: {message}")]
    Damaged { key: String, message: String },
}

/// Runs blocking storage work off the async worker threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn storage(op: &'static str) -> impl FnOnce(rocksdb::Error) -> StoreError {
    move |source| StoreError::Storage { op, source }
}

/// Summary of one dataset, kept next to its log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetMeta {
    /// The highest `_updated` assigned (0 for an empty dataset).
    pub last_updated: u64,
    /// Entities whose current version is not deleted.
    pub count: u64,
    /// Entities whose current version is deleted.
    pub deleted: u64,
    /// Stored versions (the length of the log).
    pub versions: u64,
    /// Time of the last stored write, Unix microseconds.
    pub last_modified_us: i64,
}

/// Persistent state of a pump that survives restarts and config changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PumpMeta {
    pub disabled: bool,
}

/// Outcome of writing a batch of entities into a dataset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Entities in the batch.
    pub seen: u64,
    /// Entities stored because their content changed (or was new).
    pub changes: u64,
}

/// Options of a dataset read, as the API's query parameters name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// Only versions with `_updated` greater than this.
    pub since: Option<u64>,
    pub limit: usize,
    /// Include superseded versions (not only the current one of each `_id`).
    pub history: bool,
    /// Include versions with `_deleted: true`.
    pub deleted: bool,
    /// Newest first.
    pub reverse: bool,
    /// Stop once the stored versions read add up to this many bytes (at
    /// least one version is always returned, so `since` paging progresses).
    pub max_bytes: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            since: None,
            limit: usize::MAX,
            history: true,
            deleted: true,
            reverse: false,
            max_bytes: usize::MAX,
        }
    }
}

/// The node's database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    /// Serializes writers per store; never held across an `.await`.
    write_lock: Arc<Mutex<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.db.path())
            .finish()
    }
}

fn dataset_key(dataset: &str, suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(dataset.len() + 1 + suffix.len());
    k.extend_from_slice(dataset.as_bytes());
    k.push(0);
    k.extend_from_slice(suffix);
    k
}

fn check_name(what: &'static str, name: &str) -> Result<(), StoreError> {
    if name.contains('\0') {
        return Err(StoreError::Nul {
            what,
            name: name.to_string(),
        });
    }
    Ok(())
}

/// The content hash of an entity: hex SHA-256 of its canonical JSON (object
/// keys sorted, which serde_json's map does) without the store's properties.
pub fn content_hash(entity: &Map<String, Value>) -> String {
    let mut h = Sha256::new();
    // Writing to a hasher cannot fail; keys iterate in sorted order.
    let mut content = Map::new();
    for (k, v) in entity {
        // `_deleted: false` is the same content as no `_deleted` at all.
        let not_deleted = k == "_deleted" && *v == Value::Bool(false);
        if !SYSTEM_PROPS.contains(&k.as_str()) && !not_deleted {
            content.insert(k.clone(), v.clone());
        }
    }
    h.update(Value::Object(content).to_string().as_bytes());
    hex::encode(h.finalize())
}

impl Store {
    /// Opens (or creates) the database in `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(3);
        opts.set_max_total_wal_size(64 << 20);
        let cfs = [CF_LOG, CF_LATEST, CF_DATASETS, CF_META, CF_SECRETS].map(|name| {
            let mut o = Options::default();
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            o.set_write_buffer_size(if name == CF_LOG { 16 << 20 } else { 2 << 20 });
            ColumnFamilyDescriptor::new(name, o)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Store {
            db: Arc::new(db),
            write_lock: Arc::new(Mutex::new(())),
        })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    /// The summary of `dataset`, `None` if nothing was ever written to it.
    pub fn dataset_meta(&self, dataset: &str) -> Result<Option<DatasetMeta>, StoreError> {
        match self
            .db
            .get_cf(self.cf(CF_DATASETS), dataset.as_bytes())
            .map_err(storage("read dataset metadata"))?
        {
            None => Ok(None),
            Some(v) => rmp_serde::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Damaged {
                    key: format!("datasets/{dataset}"),
                    message: e.to_string(),
                }),
        }
    }

    /// Every dataset that was ever written, by name.
    pub fn datasets(&self) -> Result<BTreeMap<String, DatasetMeta>, StoreError> {
        let mut out = BTreeMap::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_DATASETS), IteratorMode::Start)
        {
            let (k, v) = item.map_err(storage("list datasets"))?;
            let name = String::from_utf8_lossy(&k).into_owned();
            let meta: DatasetMeta = rmp_serde::from_slice(&v).map_err(|e| StoreError::Damaged {
                key: format!("datasets/{name}"),
                message: e.to_string(),
            })?;
            out.insert(name, meta);
        }
        Ok(out)
    }

    /// Writes `entities` (JSON objects with a string `_id`) into `dataset`.
    /// Entities whose content is unchanged are skipped. Synchronous: call from
    /// a blocking context.
    pub fn write_entities(
        &self,
        dataset: &str,
        entities: &[Value],
    ) -> Result<WriteStats, StoreError> {
        check_name("dataset name", dataset)?;
        // Held for the whole read-compute-write so `_updated` has no gaps and
        // the change detection sees every earlier write.
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut meta = self.dataset_meta(dataset)?.unwrap_or_default();
        let mut batch = WriteBatch::default();
        // Versions written earlier in this batch: _id -> (updated, deleted, hash).
        let mut pending: HashMap<String, (u64, bool, String)> = HashMap::new();
        let now_us = schemas::time::now_nanos() / 1_000;
        let mut stats = WriteStats::default();
        for (index, entity) in entities.iter().enumerate() {
            stats.seen += 1;
            let Value::Object(obj) = entity else {
                return Err(StoreError::NotAnObject { index });
            };
            let Some(Value::String(id)) = obj.get("_id") else {
                return Err(StoreError::MissingId { index });
            };
            check_name("entity _id", id)?;
            let hash = content_hash(obj);
            let deleted = matches!(obj.get("_deleted"), Some(Value::Bool(true)));
            let previous = match pending.get(id) {
                Some(p) => Some(p.clone()),
                None => self.latest(dataset, id)?,
            };
            if let Some((_, _, ref h)) = previous {
                if *h == hash {
                    continue;
                }
            }
            // A tombstone for an entity a DTL filter dropped deletes what an
            // earlier run wrote; for an entity never written (or already
            // deleted) there is nothing to delete.
            let filtered = matches!(obj.get("_filtered"), Some(Value::Bool(true)));
            if filtered && deleted && previous.as_ref().is_none_or(|(_, was, _)| *was) {
                continue;
            }
            meta.last_updated += 1;
            let updated = meta.last_updated;
            let mut stored = obj.clone();
            stored.insert("_updated".into(), Value::from(updated));
            stored.insert("_ts".into(), Value::from(now_us));
            stored.insert("_hash".into(), Value::from(hash.clone()));
            stored.insert(
                "_previous".into(),
                previous
                    .as_ref()
                    .map_or(Value::Null, |(u, _, _)| Value::from(*u)),
            );
            if !deleted {
                stored.insert("_deleted".into(), Value::Bool(false));
            }
            let bytes = rmp_serde::to_vec_named(&Value::Object(stored)).map_err(|e| {
                StoreError::Encode {
                    id: id.clone(),
                    message: e.to_string(),
                }
            })?;
            batch.put_cf(
                self.cf(CF_LOG),
                dataset_key(dataset, &updated.to_be_bytes()),
                bytes,
            );
            let mut pointer = Vec::with_capacity(9 + hash.len());
            pointer.extend_from_slice(&updated.to_be_bytes());
            pointer.push(u8::from(deleted));
            pointer.extend_from_slice(hash.as_bytes());
            batch.put_cf(
                self.cf(CF_LATEST),
                dataset_key(dataset, id.as_bytes()),
                pointer,
            );
            match previous {
                None if deleted => meta.deleted += 1,
                None => meta.count += 1,
                Some((_, was_deleted, _)) if was_deleted != deleted => {
                    if deleted {
                        meta.count = meta.count.saturating_sub(1);
                        meta.deleted += 1;
                    } else {
                        meta.deleted = meta.deleted.saturating_sub(1);
                        meta.count += 1;
                    }
                }
                Some(_) => {}
            }
            meta.versions += 1;
            meta.last_modified_us = now_us;
            pending.insert(id.clone(), (updated, deleted, hash));
            stats.changes += 1;
        }
        if stats.changes > 0 {
            let m = rmp_serde::to_vec_named(&meta).map_err(|e| StoreError::Encode {
                id: dataset.to_string(),
                message: e.to_string(),
            })?;
            batch.put_cf(self.cf(CF_DATASETS), dataset.as_bytes(), m);
            self.db.write(batch).map_err(storage("write entities"))?;
        } else if self.dataset_meta(dataset)?.is_none() {
            // An empty or unchanged first write still makes the dataset exist.
            let m = rmp_serde::to_vec_named(&meta).map_err(|e| StoreError::Encode {
                id: dataset.to_string(),
                message: e.to_string(),
            })?;
            self.db
                .put_cf(self.cf(CF_DATASETS), dataset.as_bytes(), m)
                .map_err(storage("write dataset metadata"))?;
        }
        Ok(stats)
    }

    /// The current version pointer of `_id`: (`_updated`, deleted, hash).
    fn latest(&self, dataset: &str, id: &str) -> Result<Option<(u64, bool, String)>, StoreError> {
        let Some(v) = self
            .db
            .get_cf(self.cf(CF_LATEST), dataset_key(dataset, id.as_bytes()))
            .map_err(storage("read entity pointer"))?
        else {
            return Ok(None);
        };
        let damaged = || StoreError::Damaged {
            key: format!("latest/{dataset}/{id}"),
            message: "short pointer".into(),
        };
        let updated = u64::from_be_bytes(
            v.get(..8)
                .ok_or_else(damaged)?
                .try_into()
                .map_err(|_| damaged())?,
        );
        let deleted = *v.get(8).ok_or_else(damaged)? != 0;
        let hash = String::from_utf8_lossy(v.get(9..).unwrap_or_default()).into_owned();
        Ok(Some((updated, deleted, hash)))
    }

    /// Reads entity versions of `dataset` in `_updated` order (or reversed).
    /// Synchronous: call from a blocking context.
    pub fn read_entities(
        &self,
        dataset: &str,
        opts: ReadOptions,
    ) -> Result<Vec<Value>, StoreError> {
        self.scan(dataset, opts, None)
    }

    /// Like [`Store::read_entities`], but a stored version that does not
    /// decode is skipped and reported in `damaged` (its `_updated` and why)
    /// instead of failing the read: a pipe reading the dataset records a
    /// read error for it and goes on, rather than stopping on it forever.
    pub fn read_entities_lenient(
        &self,
        dataset: &str,
        opts: ReadOptions,
        damaged: &mut Vec<(u64, String)>,
    ) -> Result<Vec<Value>, StoreError> {
        self.scan(dataset, opts, Some(damaged))
    }

    fn scan(
        &self,
        dataset: &str,
        opts: ReadOptions,
        mut damaged: Option<&mut Vec<(u64, String)>>,
    ) -> Result<Vec<Value>, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        if opts.limit == 0 {
            return Ok(out);
        }
        let lower = dataset_key(
            dataset,
            &opts.since.unwrap_or(0).saturating_add(1).to_be_bytes(),
        );
        let prefix = dataset_key(dataset, &[]);
        let mut end = dataset.as_bytes().to_vec();
        end.push(1);
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_lower_bound(lower.clone());
        ro.set_iterate_upper_bound(end.clone());
        let mode = if opts.reverse {
            IteratorMode::From(&end, Direction::Reverse)
        } else {
            IteratorMode::From(&lower, Direction::Forward)
        };
        for item in self.db.iterator_cf_opt(self.cf(CF_LOG), ro, mode) {
            let (k, v) = item.map_err(storage("read entities"))?;
            if !k.starts_with(&prefix) {
                continue;
            }
            let entity: Value = match rmp_serde::from_slice(&v) {
                Ok(e) => e,
                Err(e) => {
                    let updated = k
                        .get(prefix.len()..)
                        .and_then(|t| <[u8; 8]>::try_from(t).ok())
                        .map_or(0, u64::from_be_bytes);
                    match damaged.as_deref_mut() {
                        Some(list) => {
                            list.push((updated, e.to_string()));
                            continue;
                        }
                        None => {
                            return Err(StoreError::Damaged {
                                key: format!("log/{dataset}/{updated}"),
                                message: e.to_string(),
                            })
                        }
                    }
                }
            };
            if !opts.deleted && matches!(entity.get("_deleted"), Some(Value::Bool(true))) {
                continue;
            }
            if !opts.history {
                let id = entity
                    .get("_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let updated = entity.get("_updated").and_then(Value::as_u64);
                let current = self.latest(dataset, id)?.map(|(u, _, _)| u);
                if current != updated {
                    continue;
                }
            }
            out.push(entity);
            bytes = bytes.saturating_add(v.len());
            if out.len() >= opts.limit || bytes >= opts.max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// The current version of one entity.
    pub fn get_entity(&self, dataset: &str, id: &str) -> Result<Option<Value>, StoreError> {
        let Some((updated, _, _)) = self.latest(dataset, id)? else {
            return Ok(None);
        };
        match self
            .db
            .get_cf(
                self.cf(CF_LOG),
                dataset_key(dataset, &updated.to_be_bytes()),
            )
            .map_err(storage("read entity"))?
        {
            None => Ok(None),
            Some(v) => rmp_serde::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Damaged {
                    key: format!("log/{dataset}/{updated}"),
                    message: e.to_string(),
                }),
        }
    }

    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.cf(CF_META), key.as_bytes())
            .map_err(storage("read metadata"))
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.db
            .put_cf(self.cf(CF_META), key.as_bytes(), value)
            .map_err(storage("write metadata"))
    }

    /// The `_updated` offset a pipe's dataset source has consumed up to.
    pub fn pipe_offset(&self, pipe: &str) -> Result<u64, StoreError> {
        Ok(match self.get_meta(&format!("offset/{pipe}"))? {
            Some(v) if v.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v);
                u64::from_be_bytes(b)
            }
            Some(_) => {
                return Err(StoreError::Damaged {
                    key: format!("offset/{pipe}"),
                    message: "not a u64".into(),
                })
            }
            None => 0,
        })
    }

    pub fn set_pipe_offset(&self, pipe: &str, offset: u64) -> Result<(), StoreError> {
        self.put_meta(&format!("offset/{pipe}"), &offset.to_be_bytes())
    }

    pub fn pump_meta(&self, pipe: &str) -> Result<PumpMeta, StoreError> {
        match self.get_meta(&format!("pump/{pipe}"))? {
            None => Ok(PumpMeta::default()),
            Some(v) => rmp_serde::from_slice(&v).map_err(|e| StoreError::Damaged {
                key: format!("pump/{pipe}"),
                message: e.to_string(),
            }),
        }
    }

    pub fn set_pump_meta(&self, pipe: &str, meta: &PumpMeta) -> Result<(), StoreError> {
        let v = rmp_serde::to_vec_named(meta).map_err(|e| StoreError::Encode {
            id: pipe.to_string(),
            message: e.to_string(),
        })?;
        self.put_meta(&format!("pump/{pipe}"), &v)
    }

    /// The current configuration version, if one was ever stored.
    pub fn current_config(&self) -> Result<Option<ConfigVersion>, StoreError> {
        let Some(v) = self.get_meta(CONFIG_CURRENT)? else {
            return Ok(None);
        };
        let version =
            u64::from_be_bytes(v.as_slice().try_into().map_err(|_| StoreError::Damaged {
                key: CONFIG_CURRENT.into(),
                message: "not a u64".into(),
            })?);
        self.config_version(version)?
            .map(Some)
            .ok_or_else(|| StoreError::Damaged {
                key: CONFIG_CURRENT.into(),
                message: format!("points at version {version}, which is missing"),
            })
    }

    /// One stored configuration version.
    pub fn config_version(&self, version: u64) -> Result<Option<ConfigVersion>, StoreError> {
        let key = config_version_key(version);
        match self
            .db
            .get_cf(self.cf(CF_META), &key)
            .map_err(storage("read a configuration version"))?
        {
            None => Ok(None),
            Some(v) => rmp_serde::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Damaged {
                    key: format!("config/v/{version}"),
                    message: e.to_string(),
                }),
        }
    }

    /// Every stored configuration version, newest first.
    pub fn config_versions(&self) -> Result<Vec<ConfigVersion>, StoreError> {
        let mut out = Vec::new();
        let prefix = CONFIG_VERSION_PREFIX.as_bytes();
        let mut upper = prefix.to_vec();
        upper.push(0xff);
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_upper_bound(upper.clone());
        for item in self.db.iterator_cf_opt(
            self.cf(CF_META),
            ro,
            IteratorMode::From(&upper, Direction::Reverse),
        ) {
            let (k, v) = item.map_err(storage("list configuration versions"))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push(rmp_serde::from_slice(&v).map_err(|e| StoreError::Damaged {
                key: String::from_utf8_lossy(&k).into_owned(),
                message: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// Stores `version` as the current configuration, in one synced write
    /// batch with the current pointer and the deletion of the versions that
    /// fall out of a history of `keep`.
    pub fn put_config_version(&self, version: &ConfigVersion, keep: u64) -> Result<(), StoreError> {
        let bytes = rmp_serde::to_vec_named(version).map_err(|e| StoreError::Encode {
            id: format!("config/v/{}", version.version),
            message: e.to_string(),
        })?;
        let mut batch = WriteBatch::default();
        let meta = self.cf(CF_META);
        batch.put_cf(meta, config_version_key(version.version), bytes);
        batch.put_cf(meta, CONFIG_CURRENT, version.version.to_be_bytes());
        // Versions [1, version - keep] are dropped (a range delete also
        // catches up after `keep` was lowered between starts).
        let oldest_kept = version.version.saturating_sub(keep.max(1)) + 1;
        if oldest_kept > 1 {
            batch.delete_range_cf(meta, config_version_key(0), config_version_key(oldest_kept));
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(batch, &wo)
            .map_err(storage("write a configuration version"))
    }

    /// Writes and syncs a probe key: the health check "storage writable".
    pub fn probe_write(&self) -> Result<(), StoreError> {
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        let now = schemas::time::now_nanos().to_be_bytes();
        self.db
            .put_cf_opt(self.cf(CF_META), b"health/probe", now, &wo)
            .map_err(storage("write health probe"))
    }

    /// Replaces every secret with `secrets`.
    pub fn replace_secrets(&self, secrets: &BTreeMap<String, String>) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for name in self.secret_names()? {
            batch.delete_cf(self.cf(CF_SECRETS), name.as_bytes());
        }
        for (name, value) in secrets {
            batch.put_cf(self.cf(CF_SECRETS), name.as_bytes(), value.as_bytes());
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(batch, &wo)
            .map_err(storage("write secrets"))
    }

    /// Adds or overwrites the given secrets, keeping the others.
    pub fn merge_secrets(&self, secrets: &BTreeMap<String, String>) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (name, value) in secrets {
            batch.put_cf(self.cf(CF_SECRETS), name.as_bytes(), value.as_bytes());
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(batch, &wo)
            .map_err(storage("write secrets"))
    }

    pub fn secret_names(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_SECRETS), IteratorMode::Start)
        {
            let (k, _) = item.map_err(storage("list secrets"))?;
            out.push(String::from_utf8_lossy(&k).into_owned());
        }
        Ok(out)
    }

    pub fn secret(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .db
            .get_cf(self.cf(CF_SECRETS), name.as_bytes())
            .map_err(storage("read secret"))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn unchanged_entities_are_not_rewritten_nor_counted() {
        let (_d, s) = open();
        let a = json!({"_id": "a", "x": 1});
        let b = json!({"_id": "b", "x": 2});
        let st = s.write_entities("ds", &[a.clone(), b.clone()]).unwrap();
        assert_eq!(
            st,
            WriteStats {
                seen: 2,
                changes: 2
            }
        );
        let st = s
            .write_entities("ds", &[a, json!({"_id": "b", "x": 3})])
            .unwrap();
        assert_eq!(
            st,
            WriteStats {
                seen: 2,
                changes: 1
            }
        );
        let all = s.read_entities("ds", ReadOptions::default()).unwrap();
        let updated: Vec<u64> = all
            .iter()
            .map(|e| e["_updated"].as_u64().unwrap())
            .collect();
        assert_eq!(updated, vec![1, 2, 3]);
        assert_eq!(all[2]["_previous"], json!(2));
        let latest = s
            .read_entities(
                "ds",
                ReadOptions {
                    history: false,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(latest.len(), 2);
        assert_eq!(latest[1]["x"], json!(3));
        let meta = s.dataset_meta("ds").unwrap().unwrap();
        assert_eq!((meta.last_updated, meta.count, meta.versions), (3, 2, 3));
    }

    #[test]
    fn since_limit_reverse_and_deleted() {
        let (_d, s) = open();
        let batch: Vec<Value> = (0..10)
            .map(|i| json!({"_id": format!("e{i}"), "i": i}))
            .collect();
        s.write_entities("ds", &batch).unwrap();
        s.write_entities("ds", &[json!({"_id": "e0", "_deleted": true})])
            .unwrap();
        // A dataset whose name is a prefix of another must not leak into it.
        s.write_entities("d", &[json!({"_id": "z"})]).unwrap();
        let page = s
            .read_entities(
                "ds",
                ReadOptions {
                    since: Some(3),
                    limit: 2,
                    ..Default::default()
                },
            )
            .unwrap();
        let ids: Vec<&str> = page.iter().map(|e| e["_id"].as_str().unwrap()).collect();
        assert_eq!(ids, vec!["e3", "e4"]);
        let rev = s
            .read_entities(
                "ds",
                ReadOptions {
                    reverse: true,
                    limit: 2,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(rev[0]["_updated"], json!(11));
        assert_eq!(rev[0]["_deleted"], json!(true));
        assert_eq!(rev[1]["_updated"], json!(10));
        let live = s
            .read_entities(
                "ds",
                ReadOptions {
                    deleted: false,
                    history: false,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(live.len(), 9);
        let meta = s.dataset_meta("ds").unwrap().unwrap();
        assert_eq!((meta.count, meta.deleted), (9, 1));
        assert_eq!(
            s.read_entities("d", ReadOptions::default()).unwrap().len(),
            1
        );
    }

    #[test]
    fn duplicate_ids_in_one_batch_and_bad_entities() {
        let (_d, s) = open();
        let st = s
            .write_entities(
                "ds",
                &[
                    json!({"_id": "a", "v": 1}),
                    json!({"_id": "a", "v": 1}),
                    json!({"_id": "a", "v": 2}),
                ],
            )
            .unwrap();
        assert_eq!(st.changes, 2);
        assert!(matches!(
            s.write_entities("ds", &[json!({"v": 1})]),
            Err(StoreError::MissingId { index: 0 })
        ));
        assert!(matches!(
            s.write_entities("ds", &[json!([1])]),
            Err(StoreError::NotAnObject { index: 0 })
        ));
        assert_eq!(s.get_entity("ds", "a").unwrap().unwrap()["v"], json!(2));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Random batches against a model: a map of _id -> (content, _updated).
        #[test]
        fn writes_match_a_model(
            batches in proptest::collection::vec(
                proptest::collection::vec((0u8..6, 0u8..3, proptest::bool::weighted(0.2)), 0..8),
                1..12,
            ),
            reopen_at in 0usize..12,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut s = Store::open(dir.path()).unwrap();
            let mut model: BTreeMap<String, (Value, u64)> = BTreeMap::new();
            let mut next = 0u64;
            for (i, batch) in batches.iter().enumerate() {
                if i == reopen_at {
                    drop(s);
                    s = Store::open(dir.path()).unwrap();
                }
                let entities: Vec<Value> = batch
                    .iter()
                    .map(|(id, v, del)| {
                        if *del {
                            json!({"_id": format!("e{id}"), "v": v, "_deleted": true})
                        } else {
                            json!({"_id": format!("e{id}"), "v": v})
                        }
                    })
                    .collect();
                let mut expected_changes = 0;
                for e in &entities {
                    let id = e["_id"].as_str().unwrap().to_string();
                    if model.get(&id).map(|(c, _)| c) != Some(e) {
                        next += 1;
                        expected_changes += 1;
                        model.insert(id, (e.clone(), next));
                    }
                }
                let st = s.write_entities("ds", &entities).unwrap();
                proptest::prop_assert_eq!(st.changes, expected_changes);
                proptest::prop_assert_eq!(st.seen, entities.len() as u64);
            }
            let latest = s
                .read_entities("ds", ReadOptions { history: false, ..Default::default() })
                .unwrap();
            let mut by_updated: Vec<(u64, String)> =
                model.iter().map(|(id, (_, u))| (*u, id.clone())).collect();
            by_updated.sort();
            let got: Vec<(u64, String)> = latest
                .iter()
                .map(|e| (e["_updated"].as_u64().unwrap(), e["_id"].as_str().unwrap().to_string()))
                .collect();
            proptest::prop_assert_eq!(got, by_updated);
            for e in &latest {
                let (content, _) = &model[e["_id"].as_str().unwrap()];
                proptest::prop_assert_eq!(&e["v"], &content["v"]);
            }
            // Every version, in strictly increasing _updated order without gaps.
            let all = s.read_entities("ds", ReadOptions::default()).unwrap();
            let ups: Vec<u64> = all.iter().map(|e| e["_updated"].as_u64().unwrap()).collect();
            proptest::prop_assert_eq!(ups, (1..=next).collect::<Vec<_>>());
            if let Some(meta) = s.dataset_meta("ds").unwrap() {
                let deleted = model.values().filter(|(c, _)| c["_deleted"] == json!(true)).count() as u64;
                proptest::prop_assert_eq!(meta.deleted, deleted);
                proptest::prop_assert_eq!(meta.count + meta.deleted, model.len() as u64);
            }
        }
    }

    #[test]
    fn filtered_tombstones_delete_only_what_exists() {
        let (_d, s) = open();
        s.write_entities("ds", &[json!({"_id": "a", "v": 1})])
            .unwrap();
        let tomb = |id: &str| json!({"_id": id, "_deleted": true, "_filtered": true});
        let st = s.write_entities("ds", &[tomb("a"), tomb("never")]).unwrap();
        assert_eq!((st.seen, st.changes), (2, 1));
        let a = s.get_entity("ds", "a").unwrap().unwrap();
        assert_eq!(a["_deleted"], json!(true));
        assert_eq!(a["_previous"], json!(1));
        assert_eq!(s.get_entity("ds", "never").unwrap(), None);
        // Filtered again: already deleted, nothing to do.
        let st = s.write_entities("ds", &[tomb("a")]).unwrap();
        assert_eq!(st.changes, 0);
        let meta = s.dataset_meta("ds").unwrap().unwrap();
        assert_eq!((meta.count, meta.deleted, meta.versions), (0, 1, 2));
        // Passing the filter again brings it back.
        let st = s
            .write_entities("ds", &[json!({"_id": "a", "v": 1})])
            .unwrap();
        assert_eq!(st.changes, 1);
        assert_eq!(
            s.get_entity("ds", "a").unwrap().unwrap()["_deleted"],
            json!(false)
        );
    }

    #[test]
    fn a_damaged_version_fails_a_strict_read_and_is_skipped_by_a_lenient_one() {
        let (_d, s) = open();
        s.write_entities(
            "ds",
            &[
                json!({"_id": "a"}),
                json!({"_id": "b"}),
                json!({"_id": "c"}),
            ],
        )
        .unwrap();
        // Bit rot in the stored version of "b" (_updated 2).
        s.db.put_cf(
            s.cf(CF_LOG),
            dataset_key("ds", &2u64.to_be_bytes()),
            [0xc1, 0xc1],
        )
        .unwrap();
        assert!(matches!(
            s.read_entities("ds", ReadOptions::default()),
            Err(StoreError::Damaged { .. })
        ));
        let mut damaged = Vec::new();
        let got = s
            .read_entities_lenient(
                "ds",
                ReadOptions {
                    history: false,
                    ..Default::default()
                },
                &mut damaged,
            )
            .unwrap();
        let ids: Vec<&str> = got.iter().map(|e| e["_id"].as_str().unwrap()).collect();
        assert_eq!(ids, vec!["a", "c"]);
        assert_eq!(damaged.len(), 1);
        assert_eq!(damaged[0].0, 2);
    }

    #[test]
    fn configuration_versions_are_kept_to_the_history_length() {
        let dir = tempfile::tempdir().unwrap();
        let version = |n: u64| ConfigVersion {
            version: n,
            time_us: n as i64,
            hash: format!("h{n}"),
            who: crate::history::Author::api("PUT /api/config".into(), None),
            changes: Default::default(),
            entities_json: format!("[{{\"_id\": \"v{n}\"}}]"),
        };
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(s.current_config().unwrap(), None);
            for n in 1..=5 {
                s.put_config_version(&version(n), 3).unwrap();
            }
            let listed: Vec<u64> = s
                .config_versions()
                .unwrap()
                .iter()
                .map(|v| v.version)
                .collect();
            assert_eq!(listed, vec![5, 4, 3]);
            assert_eq!(s.config_version(2).unwrap(), None);
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.current_config().unwrap(), Some(version(5)));
        // A shorter history drops the older ones at the next change.
        s.put_config_version(&version(6), 1).unwrap();
        let listed: Vec<u64> = s
            .config_versions()
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(listed, vec![6]);
        // Other metadata is untouched by the range delete.
        s.set_pipe_offset("p", 7).unwrap();
        s.put_config_version(&version(7), 1).unwrap();
        assert_eq!(s.pipe_offset("p").unwrap(), 7);
    }

    #[test]
    fn offsets_pump_state_and_secrets_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.set_pipe_offset("p", 42).unwrap();
            s.set_pump_meta("p", &PumpMeta { disabled: true }).unwrap();
            let mut m = BTreeMap::new();
            m.insert("a".to_string(), "1".to_string());
            m.insert("b".to_string(), "2".to_string());
            s.replace_secrets(&m).unwrap();
            m.remove("a");
            s.replace_secrets(&m).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.pipe_offset("p").unwrap(), 42);
        assert!(s.pump_meta("p").unwrap().disabled);
        assert_eq!(s.secret_names().unwrap(), vec!["b".to_string()]);
        assert_eq!(s.secret("b").unwrap().as_deref(), Some("2"));
        assert_eq!(s.secret("a").unwrap(), None);
    }
}

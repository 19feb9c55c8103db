//! The supervisor owns the running configuration and the pumps: it starts
//! a pump per pipe, and reconfigures the node.
//!
//! A configuration change ([`Supervisor::reconfigure`]) is validated,
//! stored as a new version (see [`crate::history`]) and then applied:
//! pipes that are unchanged keep running, changed pipes are restarted and
//! removed ones stopped. A pump that must stop is cancelled and its task
//! *awaited* before a new task of the same pipe starts, so two runs of a
//! pipe never overlap. Changes are serialized; the running configuration is
//! replaced whole, so a reader always sees one consistent version.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;

use crate::config::{ConfigErrors, PipeConfig, ResolvedConfig};
use crate::history::{Author, Changes, ConfigVersion};
use crate::metrics::Metrics;
use crate::pump::{Pump, PumpContext};
use crate::store::blocking;
use crate::store::{Store, StoreError};

/// Why a configuration change was not made.
#[derive(Debug)]
pub enum ReconfigureError<E> {
    /// The edit itself refused (e.g. the pipe to replace does not exist).
    Edit(E),
    /// The result is not a valid configuration.
    Invalid(ConfigErrors),
    /// More entities than `--max-config-entities`.
    TooManyEntities { count: usize, limit: usize },
    /// The new version could not be stored; nothing changed.
    Store(StoreError),
}

/// What a configuration change did.
#[derive(Debug, Clone)]
pub struct Reconfigured {
    pub config: Arc<ResolvedConfig>,
    /// The version now running (unchanged when the result equals the
    /// running configuration).
    pub version: u64,
    pub changed: bool,
}

/// Stores `config` as the version after `previous`.
pub async fn store_version(
    store: &Store,
    previous: Option<&ConfigVersion>,
    config: &ResolvedConfig,
    who: Author,
    keep: u64,
) -> Result<u64, StoreError> {
    let old_entities = previous.and_then(|p| p.entities().ok()).unwrap_or_default();
    let version = ConfigVersion {
        version: previous.map_or(0, |p| p.version) + 1,
        time_us: schemas::time::now_nanos() / 1_000,
        hash: config.hash.clone(),
        who,
        changes: Changes::between(&old_entities, &config.entities),
        entities_json: Value::Array(config.entities.clone()).to_string(),
    };
    let n = version.version;
    let store = store.clone();
    blocking(move || store.put_config_version(&version, keep)).await?;
    Ok(n)
}

/// The pumps and the configuration they run.
#[derive(Debug)]
pub struct Supervisor {
    ctx: PumpContext,
    /// Most entities a configuration may have (`--max-config-entities`).
    max_entities: usize,
    /// Configuration versions kept.
    history: u64,
    /// The running configuration, replaced whole (std lock, never held
    /// across an `.await`).
    config: RwLock<Arc<ResolvedConfig>>,
    /// Its version.
    version: AtomicU64,
    /// Pumps by pipe id (std lock, never held across an `.await`).
    pumps: Mutex<BTreeMap<String, Arc<Pump>>>,
    /// Serializes configuration changes.
    serial: tokio::sync::Mutex<()>,
}

impl Supervisor {
    /// A supervisor of `config` (stored as `version`); no pump runs until
    /// [`Supervisor::start`].
    pub fn new(
        ctx: PumpContext,
        config: ResolvedConfig,
        version: u64,
        history: u64,
        max_entities: usize,
    ) -> Supervisor {
        Supervisor {
            ctx,
            max_entities,
            history: history.max(1),
            config: RwLock::new(Arc::new(config)),
            version: AtomicU64::new(version),
            pumps: Mutex::new(BTreeMap::new()),
            serial: tokio::sync::Mutex::new(()),
        }
    }

    /// The context pumps run with.
    pub fn context(&self) -> &PumpContext {
        &self.ctx
    }

    pub fn config(&self) -> Arc<ResolvedConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The running configuration version.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    pub fn pump(&self, id: &str) -> Option<Arc<Pump>> {
        self.pumps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    pub fn pumps(&self) -> Vec<Arc<Pump>> {
        self.pumps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Starts a pump for every pipe and emits the configuration.
    pub async fn start(&self) {
        let _serial = self.serial.lock().await;
        let config = self.config();
        self.start_pumps(&config, &[]).await;
        self.ctx.events.emit_config(&config).await;
        log_warnings(&config);
    }

    /// Enables or disables a pump (persisted, with its execution event).
    pub async fn set_enabled(&self, pump: &Arc<Pump>, enabled: bool) -> Result<(), StoreError> {
        crate::pump::set_enabled(&self.ctx, pump, enabled).await
    }

    /// Changes the configuration: `edit` turns the running entities into
    /// the new ones; the result is validated, stored as a new version
    /// (synced), then applied. Changes are serialized, so concurrent edits
    /// never lose each other's work.
    pub async fn reconfigure<E>(
        &self,
        who: Author,
        edit: impl FnOnce(&[Value]) -> Result<Vec<Value>, E>,
    ) -> Result<Reconfigured, ReconfigureError<E>> {
        let _serial = self.serial.lock().await;
        let old = self.config();
        let entities = edit(&old.entities).map_err(ReconfigureError::Edit)?;
        if entities.len() > self.max_entities {
            return Err(ReconfigureError::TooManyEntities {
                count: entities.len(),
                limit: self.max_entities,
            });
        }
        let config = crate::config::resolve(entities).map_err(ReconfigureError::Invalid)?;
        if config.hash == old.hash {
            return Ok(Reconfigured {
                config: old,
                version: self.version(),
                changed: false,
            });
        }
        let store = self.ctx.store.clone();
        let previous = blocking(move || store.current_config())
            .await
            .map_err(ReconfigureError::Store)?;
        let version = store_version(
            &self.ctx.store,
            previous.as_ref(),
            &config,
            who,
            self.history,
        )
        .await
        .map_err(ReconfigureError::Store)?;
        self.version.store(version, Ordering::SeqCst);
        self.apply(config).await;
        Ok(Reconfigured {
            config: self.config(),
            version,
            changed: true,
        })
    }

    /// Replaces the running configuration (the caller holds `serial`).
    async fn apply(&self, config: ResolvedConfig) {
        let old = self.config();
        let mut keep = Vec::new();
        let mut stopping = Vec::new();
        for p in self.pumps() {
            match config.pipes.get(&p.id) {
                Some(n) if unchanged(&p.config(), n) => {
                    p.set_config(n.clone());
                    keep.push(p.id.clone());
                }
                Some(_) => stopping.push(p),
                None => {
                    self.pumps
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&p.id);
                    self.forget_metrics(&p.id);
                    stopping.push(p);
                }
            }
        }
        // A stopped pump records its interrupted run before a new task of
        // the same pipe starts: runs of one pipe never overlap.
        for p in &stopping {
            p.stop_task().await;
        }
        let config = Arc::new(config);
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config.clone();
        self.start_pumps(&config, &keep).await;
        if old.hash != config.hash {
            self.ctx.events.emit_config(&config).await;
            tracing::info!(hash = %config.hash, pipes = config.pipes.len(), "configuration replaced");
            log_warnings(&config);
        }
        self.ctx.health_wakeup.notify_one();
    }

    /// Creates (or reuses) and starts the pumps of `config`'s pipes not in
    /// `keep`.
    async fn start_pumps(&self, config: &ResolvedConfig, keep: &[String]) {
        for (id, pipe) in &config.pipes {
            if keep.contains(id) {
                continue;
            }
            let pump = match self.pump(id) {
                Some(p) => {
                    p.set_config(pipe.clone());
                    p
                }
                None => {
                    let store = self.ctx.store.clone();
                    let pid = id.clone();
                    let meta = blocking(move || store.pump_meta(&pid)).await.unwrap_or_else(|e| {
                        tracing::warn!(pipe = %id, error = %e, "could not read the pump state; assuming enabled");
                        Default::default()
                    });
                    let p = Arc::new(Pump::new(pipe.clone(), meta));
                    let store = self.ctx.store.clone();
                    let pp = p.clone();
                    blocking(move || pp.restore(&store)).await;
                    self.pumps
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id.clone(), p.clone());
                    p
                }
            };
            let label = Metrics::pipe(id);
            let m = &self.ctx.metrics;
            m.pipe_enabled
                .get_or_create(&label)
                .set(i64::from(!pump.state().disabled));
            // Every pipe has its series from the start, so "0 runs" is not "absent".
            for family in [
                &m.pump_started,
                &m.pump_completed,
                &m.pump_failed,
                &m.entities_changes,
                &m.entities_seen,
            ] {
                let _ = family.get_or_create(&label);
            }
            crate::pump::spawn(&self.ctx, pump);
        }
    }

    fn forget_metrics(&self, pipe: &str) {
        let label = Metrics::pipe(pipe);
        let m = &self.ctx.metrics;
        m.pipe_enabled.remove(&label);
        for family in [
            &m.pump_started,
            &m.pump_completed,
            &m.pump_failed,
            &m.entities_changes,
            &m.entities_seen,
        ] {
            family.remove(&label);
        }
        m.last_completed_time.remove(&label);
        m.total_time.remove(&label);
    }
}

/// Whether a pipe can keep running unchanged under `new`: same entity,
/// same monitoring, same systems.
fn unchanged(old: &PipeConfig, new: &PipeConfig) -> bool {
    old.original == new.original
        && old.monitoring == new.monitoring
        && old.source_system == new.source_system
        && old.sink_system == new.sink_system
}

/// Logs every warning of a configuration (unknown properties, ignored).
fn log_warnings(config: &ResolvedConfig) {
    for w in &config.warnings {
        tracing::warn!(entity = %w.entity, field = %w.field, "configuration warning: {}", w.message);
    }
}

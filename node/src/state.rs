//! The node's shared runtime state and the emission of records into the
//! outbox.
//!
//! # What goes into the outbox
//! - `execution`: every execution event of a pipe whose monitoring is on,
//!   exactly as written to its execution dataset. `exception_entity` and
//!   `entity` are left in the outbox copy: they are marked node-side-only by
//!   the record schema (`schemas::ExecutionBody`) and the shipper's redaction
//!   strips them before anything leaves the host.
//! - `log`: service logs (see [`crate::logs`]).
//! - `health`: every health round and every status change.
//! - `config`: the configuration at start and on every change; secrets only
//!   appear there as `$SECRET(name)` references, since secret values live in
//!   the secrets store and are never part of the configuration.
//!
//! An append that fails (outbox full past its block timeout, disk error) is
//! logged and counted (`sesam_node_emit_failures_total`); it never fails the
//! pump run that produced the event.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::registry::Registry;
use schemas::{Body, ConfigBody, EventType, ExecutionBody, HealthBody, Record};
use serde_json::Value;
use shipper::outbox::{Outbox, OutboxError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ResolvedConfig;
use crate::metrics::Metrics;
use crate::pump::Pump;
use crate::store::Store;

/// Everything the API handlers, pumps and background tasks share.
#[derive(Debug)]
pub struct Shared {
    pub node_id: String,
    pub subscription: String,
    pub start_nanos: i64,
    pub store: Store,
    pub outbox: Outbox,
    pub metrics: Metrics,
    pub registry: Registry,
    pub http: reqwest::Client,
    /// The running configuration; replaced whole (std lock, never held
    /// across an `.await`).
    pub config: RwLock<Arc<ResolvedConfig>>,
    /// Pumps by pipe id (std lock, never held across an `.await`).
    pub pumps: Mutex<BTreeMap<String, Arc<Pump>>>,
    /// Serializes configuration changes.
    pub reconfigure: tokio::sync::Mutex<()>,
    /// Wakes the health task for an immediate check (after runs, changes).
    pub health_wakeup: Notify,
    pub last_health: Mutex<Option<HealthBody>>,
    pub shutdown: CancellationToken,
    /// How long a running pump may go on after shutdown began.
    pub run_grace: std::time::Duration,
    pub tracker: TaskTracker,
    /// SHA-256 of the API token, if the API requires one.
    pub api_token_sha256: Option<[u8; 32]>,
    /// The in-process shipper's redaction; it knows every secret value so
    /// that none can leave the host in any record.
    pub redactor: Arc<shipper::redact::Redactor>,
    /// Bounds of the API and of what systems may send.
    pub limits: crate::limits::Limits,
    /// Whether the last append to the outbox was refused (full past its
    /// block timeout, disk error): the health check reports `failed` then.
    pub outbox_refusing: AtomicBool,
    /// The last health round of `GET /api/health` and when it ran (std
    /// lock, never held across an `.await`).
    pub health_cache: Mutex<Option<(std::time::Instant, HealthBody)>>,
    /// API requests in flight (`limits.max_concurrent_requests`).
    pub request_slots: Arc<tokio::sync::Semaphore>,
    /// The running configuration version (see [`crate::history`]).
    pub config_version: std::sync::atomic::AtomicU64,
    /// Configuration versions kept.
    pub config_history: u64,
}

impl Shared {
    /// Tells the redaction every current secret value (after start and every
    /// change of the secrets).
    pub async fn refresh_redaction_secrets(self: &Arc<Self>) {
        let s = self.clone();
        let values = blocking(move || -> Result<Vec<String>, crate::store::StoreError> {
            let mut out = Vec::new();
            for name in s.store.secret_names()? {
                out.extend(s.store.secret(&name)?);
            }
            Ok(out)
        })
        .await;
        match values {
            Ok(v) => self.redactor.set_secrets(v),
            Err(e) => tracing::error!(error = %e, "read secrets for redaction"),
        }
    }

    /// Whether a record may leave the host: execution events only of pipes
    /// whose monitoring is on in the running configuration.
    pub fn may_ship(&self, record: &Record) -> bool {
        match &record.body {
            Body::Execution(e) => self
                .config
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .pipes
                .get(&e.pipe)
                .is_some_and(|p| p.monitoring),
            _ => true,
        }
    }
}

/// Runs blocking storage work off the async worker threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The execution-dataset `_id` of an event, following Sesam: the event type
/// for run events (so `history=false` shows the latest of each), and
/// `write-error:<entity id>` for write errors.
pub fn execution_id(body: &ExecutionBody) -> String {
    match (body.event_type, &body.entity_id) {
        (EventType::WriteError, Some(id)) => format!("write-error:{id}"),
        (EventType::ReadError, _) => format!("read-error:{}", uuid::Uuid::new_v4()),
        (t, _) => t.as_str().to_string(),
    }
}

impl Shared {
    pub fn config(&self) -> Arc<ResolvedConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

    fn record(&self, body: Body) -> Record {
        Record {
            seq: 0,
            ts: schemas::time::now_nanos(),
            source: self.node_id.clone(),
            subscription: self.subscription.clone(),
            body,
        }
    }

    /// Appends records to the outbox; failures are logged and counted.
    /// Returns whether the outbox accepted them.
    pub async fn emit(&self, records: Vec<Record>) -> bool {
        if records.is_empty() {
            return true;
        }
        if let Err(e) = self.outbox.append(&records).await {
            self.metrics.emit_failures.inc_by(records.len() as u64);
            // Only refusals that every append would meet make the node
            // unable to work; one oversized record does not.
            if matches!(
                e,
                OutboxError::Full { .. } | OutboxError::Storage { .. } | OutboxError::Closed
            ) {
                self.outbox_refusing.store(true, Ordering::Relaxed);
            }
            tracing::warn!(target: crate::logs::DRAIN_TARGET, error = %e, records = records.len(), "could not append records to the outbox");
            return false;
        }
        self.outbox_refusing.store(false, Ordering::Relaxed);
        true
    }

    /// Writes an execution event into the pipe's execution dataset, and into
    /// the outbox when the pipe's monitoring is on.
    pub async fn execution_event(&self, body: ExecutionBody, monitoring: bool) {
        let dataset = format!("system:pump:{}", body.pipe);
        let mut entity = match serde_json::to_value(&body) {
            Ok(Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        entity.insert("_id".into(), Value::String(execution_id(&body)));
        let store = self.store.clone();
        let written =
            blocking(move || store.write_entities(&dataset, &[Value::Object(entity)])).await;
        if let Err(e) = written {
            tracing::error!(pipe = %body.pipe, event = %body.event_type, error = %e, "could not write to the execution dataset");
        }
        if monitoring {
            let mut body = body;
            // Per-entity error events carry the entity `_id` only: the
            // entity itself stays in the node's execution dataset and is
            // not even written to the outbox.
            if matches!(
                body.event_type,
                EventType::ReadError | EventType::WriteError
            ) {
                body.entity = None;
                body.exception_entity = None;
            }
            let record = self.record(Body::Execution(Box::new(body)));
            self.emit(vec![record]).await;
        }
    }

    pub async fn emit_health(&self, body: HealthBody) {
        let r = self.record(Body::Health(body));
        self.emit(vec![r]).await;
    }

    pub async fn emit_config(&self, config: &ResolvedConfig) {
        let r = self.record(Body::Config(ConfigBody {
            hash: config.hash.clone(),
            config: config.entities.clone(),
        }));
        self.emit(vec![r]).await;
    }
}

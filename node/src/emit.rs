//! The emission of everything observable into the outbox, and of execution
//! events into the execution datasets.
//!
//! # What goes into the outbox
//! - `execution`: every execution event of a pipe whose monitoring is on,
//!   as written to its execution dataset. `exception_entity` is left in the
//!   outbox copy of a `pump-failed`: it is marked node-side-only by the
//!   record schema (`schemas::ExecutionBody`) and the shipper's redaction
//!   strips it before anything leaves the host. `read-error` and
//!   `write-error` events go in with the entity `_id` only.
//! - `log`: service logs (see [`crate::logs`]).
//! - `health`: every health round and every status change.
//! - `config`: the configuration at start and on every change; secrets only
//!   appear there as `$SECRET(name)` references, since secret values live in
//!   the secrets store and are never part of the configuration.
//!
//! An append that fails (outbox full past its block timeout, disk error) is
//! counted (`sesam_node_emit_failures_total`) and logged, at most once a
//! second with the number of refused appends and records since the last
//! line (a full disk refuses thousands of appends a second); it never fails
//! the pump run that produced the event. A refusal that every append would
//! meet (full, storage error) is remembered for the health check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use schemas::{Body, ConfigBody, EventType, ExecutionBody, HealthBody, Record};
use serde_json::Value;
use shipper::outbox::{Outbox, OutboxError};

use crate::config::ResolvedConfig;
use crate::metrics::Metrics;
use crate::store::{blocking, Store};

/// Appends the node's records to its outbox; cheap to clone.
#[derive(Debug, Clone)]
pub struct Emitter {
    /// The `source` of every record.
    pub node_id: Arc<str>,
    /// The `subscription` of every record.
    pub subscription: Arc<str>,
    outbox: Outbox,
    store: Store,
    metrics: Metrics,
    refusing: Arc<AtomicBool>,
    refusals: Arc<Mutex<Refusals>>,
}

/// Refused appends not yet logged (see the module docs).
#[derive(Debug, Default)]
struct Refusals {
    logged_at: Option<Instant>,
    appends: u64,
    records: u64,
}

/// Least time between two log lines about refused appends.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// The execution-dataset `_id` of an event, following Sesam: the event type
/// for run events (so `history=false` shows the latest of each),
/// `write-error:<entity id>` for write errors and `read-error:<uuid>` for
/// read errors.
pub fn execution_id(body: &ExecutionBody) -> String {
    match (body.event_type, &body.entity_id) {
        (EventType::WriteError, Some(id)) => format!("write-error:{id}"),
        (EventType::ReadError, _) => format!("read-error:{}", uuid::Uuid::new_v4()),
        (t, _) => t.as_str().to_string(),
    }
}

impl Emitter {
    pub fn new(
        node_id: &str,
        subscription: &str,
        outbox: Outbox,
        store: Store,
        metrics: Metrics,
    ) -> Emitter {
        Emitter {
            node_id: node_id.into(),
            subscription: subscription.into(),
            outbox,
            store,
            metrics,
            refusing: Arc::default(),
            refusals: Arc::default(),
        }
    }

    /// Whether the last append was refused in a way every append would be
    /// (outbox full past its block timeout, a storage error, closed).
    pub fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// A record of this node with `body`, stamped now.
    pub fn record(&self, body: Body) -> Record {
        Record {
            seq: 0,
            ts: schemas::time::now_nanos(),
            source: self.node_id.to_string(),
            subscription: self.subscription.to_string(),
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
                self.refusing.store(true, Ordering::Relaxed);
            }
            let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            r.appends += 1;
            r.records += records.len() as u64;
            if r.logged_at.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
                let (appends, refused) = (r.appends, r.records);
                *r = Refusals {
                    logged_at: Some(Instant::now()),
                    ..Refusals::default()
                };
                drop(r);
                tracing::warn!(target: crate::logs::DRAIN_TARGET, error = %e, records = records.len(), appends, refused, "could not append records to the outbox ({appends} appends, {refused} records refused since the last such line)");
            }
            return false;
        }
        self.refusing.store(false, Ordering::Relaxed);
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

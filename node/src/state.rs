//! What the API handlers and the node's background tasks (health, log
//! drain, in-process shipper, load generator) share. Pumps never see it:
//! they run with a [`crate::pump::PumpContext`].

use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use schemas::{Body, HealthBody, Record};
use shipper::outbox::Outbox;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ResolvedConfig;
use crate::emit::Emitter;
use crate::metrics::Metrics;
use crate::pump::Pump;
use crate::store::blocking;
use crate::store::Store;
use crate::supervisor::Supervisor;

/// Everything the API handlers and background tasks share.
#[derive(Debug)]
pub struct Shared {
    pub node_id: String,
    pub subscription: String,
    pub start_nanos: i64,
    pub store: Store,
    pub outbox: Outbox,
    pub emitter: Emitter,
    pub metrics: Metrics,
    pub registry: Registry,
    /// The pumps and the running configuration.
    pub supervisor: Supervisor,
    /// Wakes the health task for an immediate check (after runs, changes).
    pub health_wakeup: Arc<Notify>,
    /// The last health round of the health task (std lock, never held
    /// across an `.await`).
    pub last_health: Mutex<Option<HealthBody>>,
    /// The last health round of `GET /api/health` and when it ran (std
    /// lock, never held across an `.await`).
    pub health_cache: Mutex<Option<(std::time::Instant, HealthBody)>>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// SHA-256 of the API token, if the API requires one.
    pub api_token_sha256: Option<[u8; 32]>,
    /// The in-process shipper's redaction; it knows every secret value so
    /// that none can leave the host in any record.
    pub redactor: Arc<shipper::redact::Redactor>,
    /// Bounds of the API and of what systems may send.
    pub limits: crate::limits::Limits,
    /// API requests in flight (`limits.max_concurrent_requests`).
    pub request_slots: Arc<tokio::sync::Semaphore>,
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
                .supervisor
                .config()
                .pipes
                .get(&e.pipe)
                .is_some_and(|p| p.monitoring),
            _ => true,
        }
    }

    /// The running configuration.
    pub fn config(&self) -> Arc<ResolvedConfig> {
        self.supervisor.config()
    }

    pub fn pump(&self, id: &str) -> Option<Arc<Pump>> {
        self.supervisor.pump(id)
    }

    pub fn pumps(&self) -> Vec<Arc<Pump>> {
        self.supervisor.pumps()
    }

    /// Appends records to the outbox (see [`Emitter::emit`]).
    pub async fn emit(&self, records: Vec<Record>) -> bool {
        self.emitter.emit(records).await
    }
}

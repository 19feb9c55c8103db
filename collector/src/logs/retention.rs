//! Retention: every record older than its subscription's retention is
//! deleted in the background, one pass every interval. How a pass deletes
//! is the store's business ([`LogStore::apply_retention`]; the RocksDB
//! store deletes each stream's expired prefix in slices so that ingest
//! goes on between them).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::logs::{LogStore, StoreError};

/// How long each subscription keeps its records.
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    pub default: Duration,
    pub overrides: HashMap<String, Duration>,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            default: Duration::from_secs(720 * 3600),
            overrides: HashMap::new(),
        }
    }
}

impl RetentionPolicy {
    pub fn for_subscription(&self, subscription: &str) -> Duration {
        self.overrides
            .get(subscription)
            .copied()
            .unwrap_or(self.default)
    }
}

/// Runs a pass every `interval` until `shutdown`.
pub async fn run(
    store: Arc<dyn LogStore>,
    policy: RetentionPolicy,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match store
            .apply_retention(&policy, schemas::time::now_nanos())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "retention pass"),
            Err(StoreError::Closed) => return,
            Err(e) => tracing::error!(error = %e, "retention pass failed; retrying next interval"),
        }
    }
}

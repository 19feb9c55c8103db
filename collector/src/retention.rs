//! Retention: every record older than its subscription's retention is
//! deleted in the background.
//!
//! A pass walks the stream index; for each stream whose oldest entry is
//! older than the cutoff it asks the store writer to delete the expired
//! prefix in slices of [`SLICE`] entries, so a large backlog never holds the
//! writer (and ingest) for long: ingest groups are committed between slices.

use std::collections::HashMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreError};

/// Entries deleted per writer operation.
pub const SLICE: usize = 10_000;

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

/// One retention pass at time `now` (Unix ns); returns the entries deleted.
pub async fn apply(store: &Store, policy: &RetentionPolicy, now: i64) -> Result<u64, StoreError> {
    let mut deleted = 0;
    for s in store.streams() {
        let keep = policy.for_subscription(s.subscription());
        let cutoff = now.saturating_sub(i64::try_from(keep.as_nanos()).unwrap_or(i64::MAX));
        if s.min_ts >= cutoff {
            continue;
        }
        loop {
            let n = store.expire(s.id, cutoff, SLICE).await?;
            deleted += n;
            if (n as usize) < SLICE {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    Ok(deleted)
}

/// Runs a pass every `interval` until `shutdown`.
pub async fn run(
    store: Store,
    policy: RetentionPolicy,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match apply(&store, &policy, schemas::time::now_nanos()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "retention pass"),
            Err(StoreError::Closed) => return,
            Err(e) => tracing::error!(error = %e, "retention pass failed; retrying next interval"),
        }
    }
}

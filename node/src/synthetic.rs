//! A load generator for fault tests and benchmarks (`--synthetic-logs N`,
//! like Vector's `demo_logs` source): `N` INFO `log` records with target
//! `node::synthetic`, appended through the same path as every other record
//! the node emits ([`Shared::emit`]: the outbox's group-committed append),
//! so they are shipped, redacted, counted and refused exactly like real
//! service logs.
//!
//! Records go in batches of at most [`BATCH`], back to back or paced to
//! `rate` records per second. A batch the outbox refuses (full, disk error)
//! is counted in `sesam_node_emit_failures_total` and not retried, as for
//! any other record; accepted ones are counted in
//! `sesam_node_synthetic_records_total`. Off unless asked for.

use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use schemas::{Body, Level, LogBody, Record};
use serde_json::Value;

use crate::state::Shared;

/// Records per append.
pub const BATCH: u64 = 1000;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticLogs {
    /// Records to emit in total.
    pub count: u64,
    /// Records per second; `None` = as fast as the outbox accepts them.
    pub rate: Option<NonZeroU64>,
}

fn record(shared: &Shared, i: u64, count: u64) -> Record {
    Record {
        seq: 0,
        ts: schemas::time::now_nanos(),
        source: shared.node_id.clone(),
        subscription: shared.subscription.clone(),
        body: Body::Log(LogBody {
            level: Level::Info,
            target: "node::synthetic".into(),
            message: format!("synthetic log record {i} of {count}"),
            fields: [("synthetic_index".to_string(), Value::from(i))].into(),
        }),
    }
}

/// Starts the generator on the node's tracker; it stops at shutdown.
pub fn spawn(shared: Arc<Shared>, config: SyntheticLogs) {
    let s = shared.clone();
    shared.tracker.spawn(async move {
        tracing::info!(count = config.count, rate = ?config.rate, "synthetic load started");
        let started = Instant::now();
        let mut next = 0u64;
        while next < config.count && !s.shutdown.is_cancelled() {
            // How many records the pace allows by now (all, if unpaced).
            let due = match config.rate {
                None => config.count,
                Some(r) => (started.elapsed().as_secs_f64() * r.get() as f64) as u64,
            }
            .min(config.count);
            if due <= next {
                tokio::select! {
                    _ = s.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(10)) => continue,
                }
            }
            let end = due.min(next + BATCH);
            let records: Vec<Record> = (next..end).map(|i| record(&s, i, config.count)).collect();
            if s.emit(records).await {
                s.metrics.synthetic_records.inc_by(end - next);
            }
            next = end;
        }
        tracing::info!(
            emitted = next,
            seconds = started.elapsed().as_secs_f64(),
            "synthetic load finished"
        );
    });
}

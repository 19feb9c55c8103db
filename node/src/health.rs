//! Health checks: storage writable, outbox accepting, pipes not in error.
//!
//! Statuses mean what a load balancer needs: `failed` only when the node
//! cannot work (its storage is not writable, or the outbox is full or
//! refuses appends), `degraded` when it works but something needs a look
//! (a pipe's last run failed, the outbox is 90% full). `GET /api/health`
//! answers 503 only for `failed`; `degraded` is 200 with the status in the
//! body, so one pipe's data error never takes a working node out of service.
//!
//! The health task runs a check round every interval (default 30 s) and
//! whenever something may have changed it (a pump run ended, the config
//! changed); it emits a `health` record on every interval round and on every
//! status change. `GET /api/health` runs a fresh round at most once per
//! `health_min_interval` and answers the cached one in between.

use std::sync::Arc;
use std::time::Duration;

use schemas::{HealthBody, HealthCheck, HealthStatus};

use crate::state::Shared;
use crate::store::blocking;

fn worst(a: HealthStatus, b: HealthStatus) -> HealthStatus {
    let rank = |s| match s {
        HealthStatus::Ok => 0,
        HealthStatus::Degraded => 1,
        HealthStatus::Failed => 2,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// Runs one round of checks.
pub async fn check(shared: &Arc<Shared>) -> HealthBody {
    let mut checks = Vec::new();

    let store = shared.store.clone();
    let storage = blocking(move || store.probe_write()).await;
    checks.push(match storage {
        Ok(()) => HealthCheck {
            name: "storage".into(),
            status: HealthStatus::Ok,
            detail: None,
        },
        Err(e) => HealthCheck {
            name: "storage".into(),
            status: HealthStatus::Failed,
            detail: Some(format!("storage is not writable: {e}")),
        },
    });

    let stats = shared.outbox.stats();
    let c = shared.outbox.config();
    let fill = (stats.records as f64 / c.max_records.get() as f64)
        .max(stats.bytes as f64 / c.max_bytes.get() as f64);
    let refusing = shared.emitter.refusing();
    let (status, detail) = if refusing {
        (
            HealthStatus::Failed,
            Some("the outbox refused the last append (full past its block timeout, or a storage error)".to_string()),
        )
    } else if fill >= 1.0 {
        (
            HealthStatus::Failed,
            Some(format!(
                "outbox is full ({} records, {} bytes)",
                stats.records, stats.bytes
            )),
        )
    } else if fill >= 0.9 {
        (
            HealthStatus::Degraded,
            Some(format!("outbox is {:.0}% full", fill * 100.0)),
        )
    } else {
        (HealthStatus::Ok, None)
    };
    checks.push(HealthCheck {
        name: "outbox".into(),
        status,
        detail,
    });

    let failing: Vec<String> = shared
        .pumps()
        .iter()
        .filter(|p| p.state().success == Some(false))
        .map(|p| p.id.clone())
        .collect();
    checks.push(if failing.is_empty() {
        HealthCheck {
            name: "pipes".into(),
            status: HealthStatus::Ok,
            detail: None,
        }
    } else {
        HealthCheck {
            name: "pipes".into(),
            status: HealthStatus::Degraded,
            detail: Some(format!("pipes in error: {}", failing.join(", "))),
        }
    });

    let status = checks
        .iter()
        .fold(HealthStatus::Ok, |acc, c| worst(acc, c.status));
    shared
        .metrics
        .health
        .set(i64::from(status == HealthStatus::Ok));
    HealthBody { status, checks }
}

/// The health of the node for `GET /api/health`: a fresh round, or the
/// last one when it is younger than `limits.health_min_interval`; and
/// whether the round is fresh.
pub async fn cached(shared: &Arc<Shared>) -> (HealthBody, bool) {
    let min = shared.limits.health_min_interval;
    if let Some((at, body)) = shared
        .health_cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        if at.elapsed() < min {
            return (body.clone(), false);
        }
    }
    let body = check(shared).await;
    *shared
        .health_cache
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some((std::time::Instant::now(), body.clone()));
    (body, true)
}

/// The health task: rounds on an interval and on wake-ups.
pub fn spawn(shared: Arc<Shared>, interval: Duration) {
    let s = shared.clone();
    shared.tracker.spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let periodic = tokio::select! {
                _ = s.shutdown.cancelled() => break,
                _ = tick.tick() => true,
                _ = s.health_wakeup.notified() => false,
            };
            let body = check(&s).await;
            let changed = {
                let mut last = s.last_health.lock().unwrap_or_else(|p| p.into_inner());
                let changed = last.as_ref().map(|l| l.status) != Some(body.status);
                *last = Some(body.clone());
                changed
            };
            if changed && !periodic {
                tracing::info!(status = body.status.as_str(), "node health changed");
            }
            if periodic || changed {
                s.emitter.emit_health(body).await;
            }
        }
    });
}

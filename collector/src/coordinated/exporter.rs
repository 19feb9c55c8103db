//! Every collector's side: copies the ClickHouse writer's local commit
//! feed (the records it stored, per subscription, durable before each
//! insert) into the shared `feed` table, commit by commit and in order per
//! subscription, then trims what was copied. Only finished commits are
//! copied (their records are in ClickHouse: the writer announced them, or
//! they were there when the store opened). A kill between an insert and
//! the trim copies the commit again at the next start: the same rows
//! under the same keys, which readers skip.
//!
//! Also drops the shared feed's days older than `--coordination-feed-days`
//! once an hour.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Inner;
use crate::logs::clickhouse::feed::ExportRow;

/// Records read from the local feed per insert.
const EXPORT_ROWS: usize = 10_000;
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

pub(crate) async fn run(inner: Arc<Inner>, shutdown: CancellationToken) {
    // Per subscription: the last position copied (this run).
    let mut done: HashMap<String, (u64, u32)> = HashMap::new();
    let mut backoff = Duration::from_millis(100);
    let mut retention_at = Instant::now();
    loop {
        match export_once(&inner, &mut done).await {
            Ok(more) => {
                backoff = Duration::from_millis(100);
                if more {
                    continue;
                }
            }
            Err(e) => {
                inner.metrics.errors.inc();
                tracing::warn!(error = %e, "copying the commit feed to ClickHouse failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        }
        if Instant::now() >= retention_at {
            retention_at = Instant::now() + RETENTION_EVERY;
            let days = i64::from(inner.cfg.feed_days.max(1));
            let cutoff = schemas::time::now_nanos() / 1_000_000_000 - days * 86_400;
            if let Some(day) = chrono::DateTime::from_timestamp(cutoff, 0) {
                let day: u32 = day.format("%Y%m%d").to_string().parse().unwrap_or(0);
                match inner.feed.drop_before(day).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        partitions = n,
                        before = day,
                        "shared feed: old days dropped"
                    ),
                    Err(e) => tracing::warn!(error = %e, "shared feed: dropping old days failed"),
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = inner.wake_export.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// One pass over the local feed; `true` when a read was cut short (more
/// is waiting).
async fn export_once(
    inner: &Arc<Inner>,
    done: &mut HashMap<String, (u64, u32)>,
) -> Result<bool, String> {
    let limit = inner.announced.load(Ordering::Acquire);
    let local = inner.local.clone();
    let subs = tokio::task::spawn_blocking(move || local.feed_subscriptions())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mut more = false;
    for sub in subs {
        let after = done.get(&sub).copied().unwrap_or((0, 0));
        let (local, s) = (inner.local.clone(), sub.clone());
        let batch = tokio::task::spawn_blocking(move || local.feed_read(&s, after, EXPORT_ROWS))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let ready: Vec<_> = batch
            .records
            .iter()
            .filter(|e| e.position.0 <= limit)
            .collect();
        if ready.is_empty() {
            continue;
        }
        let cut = ready.len() < batch.records.len() || !batch.end;
        more |= !batch.end && ready.len() == batch.records.len();
        let rows: Vec<ExportRow<'_>> = ready
            .iter()
            .map(|e| ExportRow {
                subscription: &sub,
                pos: e.position,
                at: e.committed_at,
                record: &e.record,
            })
            .collect();
        inner
            .feed
            .insert(&inner.cfg.member_id, &rows)
            .await
            .map_err(|e| e.to_string())?;
        inner.metrics.exported.inc_by(rows.len() as u64);
        let last = ready[ready.len() - 1].position;
        done.insert(sub.clone(), last);
        // Whole commits only: the last one read may go on.
        let before = if cut { last.0 } else { last.0 + 1 };
        let (local, s) = (inner.local.clone(), sub.clone());
        tokio::task::spawn_blocking(move || local.feed_trim(&s, before))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    Ok(more)
}

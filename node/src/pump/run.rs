//! One run of a pipe: the pump-started event, source -> transform -> sink
//! with the time of each stage, the pipe offset, the per-entity errors, and
//! the pump-completed or pump-failed event with Sesam's metrics. A run
//! never touches the pump's state; it reports how it ended ([`RunReport`]).

use std::sync::Arc;
use std::time::Instant;

use schemas::time::{now_nanos, rfc3339_from_nanos};
use schemas::{EventType, ExecutionBody, ExecutionMetrics, SyncType};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::{PipeConfig, SourceConfig};
use crate::metrics::Metrics;
use crate::store::blocking;

use super::context::PumpContext;
use super::outcome::{fail, EntityErrors, Failure};
use super::sink::write_sink;
use super::source::read_source;
use super::system::Secrets;

/// Applies the pipe's transforms to every entity; an entity a filter drops
/// becomes a tombstone (`_deleted`, `_filtered`) so that the sink deletes
/// what an earlier run wrote.
pub fn transform(config: &PipeConfig, entities: Vec<Value>) -> Result<Vec<Value>, Box<Failure>> {
    if config.transforms.is_empty() {
        return Ok(entities);
    }
    let mut out = Vec::with_capacity(entities.len());
    'entities: for e in entities {
        let Value::Object(mut m) = e else {
            return Err(fail("a source entity is not a JSON object".into()));
        };
        for (i, t) in config.transforms.iter().enumerate() {
            match t.apply(&m) {
                Ok(Some(next)) => m = next,
                Ok(None) => {
                    // As in Sesam, a filtered entity is deleted from the sink
                    // if an earlier run wrote it (the sink skips the
                    // tombstone of an entity it never had).
                    if let Some(id) = m.get("_id").cloned() {
                        let mut tomb = serde_json::Map::new();
                        tomb.insert("_id".into(), id);
                        tomb.insert("_deleted".into(), Value::Bool(true));
                        tomb.insert("_filtered".into(), Value::Bool(true));
                        out.push(Value::Object(tomb));
                    }
                    continue 'entities;
                }
                Err(err) => {
                    let id = m
                        .get("_id")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string();
                    let reason = format!("transform failed on entity {id:?}: {}", err.message);
                    return Err(Box::new(Failure {
                        traceback: format!(
                            "pipe {:?}, transform[{i}].{}: {}\n  entity: {id:?}",
                            config.id, err.path, err.message
                        ),
                        original: err.message,
                        reason,
                        exception_entity: Some(Value::Object(m)),
                        ..Failure::default()
                    }));
                }
            }
        }
        out.push(Value::Object(m));
    }
    Ok(out)
}

fn metrics_of(
    seen: u64,
    changes: u64,
    read_errors: u64,
    write_errors: u64,
    times: [f64; 3],
) -> ExecutionMetrics {
    ExecutionMetrics {
        entities_last_run: Some(seen),
        changes_last_run: Some(changes),
        read_errors_last_run: Some(read_errors),
        write_errors_last_run: Some(write_errors),
        source_time: Some(times[0]),
        transform_time: Some(times[1]),
        sink_time: Some(times[2]),
        ..ExecutionMetrics::default()
    }
}

/// How a run ended, for the pump's state.
#[derive(Debug)]
pub struct RunReport {
    /// End time, Unix ns.
    pub end: i64,
    /// `Err` with the reason the run stopped (secrets scrubbed).
    pub result: Result<(), String>,
    /// The dataset source offset the run saved.
    pub last_seen: Option<u64>,
}

/// Runs the pipe once, started at `start` (Unix ns), and records the run
/// in its execution dataset, the outbox and the metrics. `stop` cancels the
/// run (the `stop` operation), `task` the pump (configuration change or
/// shutdown); `progress` is told how many entities the run processes.
pub async fn run_once(
    ctx: &PumpContext,
    config: Arc<PipeConfig>,
    start: i64,
    stop: &CancellationToken,
    task: &CancellationToken,
    progress: &(dyn Fn(u64) + Sync),
) -> RunReport {
    let cancel = stop;
    let run_id = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    let mut last_seen = None;
    let label = Metrics::pipe(&config.id);
    ctx.metrics.pump_started.get_or_create(&label).inc();
    let sync_type = match &config.source {
        SourceConfig::Dataset { .. } => {
            let store = ctx.store.clone();
            let id = config.id.clone();
            match blocking(move || store.pipe_offset(&id)).await {
                Ok(0) | Err(_) => SyncType::Full,
                Ok(_) => SyncType::Incremental,
            }
        }
        _ => SyncType::Full,
    };
    let mut ev = ExecutionBody::new(config.id.clone(), EventType::PumpStarted);
    ev.run_id = Some(run_id.clone());
    ev.start_time = Some(rfc3339_from_nanos(start));
    ev.sync_type = Some(sync_type);
    ctx.events.execution_event(ev, config.monitoring).await;

    let mut secrets = Secrets::default();
    let mut times = [0.0f64; 3];
    let mut seen = 0u64;
    let mut changes = 0u64;
    let mut read_errors = EntityErrors::default();
    let mut write_errors = EntityErrors::default();
    let result = {
        let work = async {
            // A dataset source is read in pages, each written and its
            // offset saved before the next, so that a run's memory is
            // bounded whatever the backlog (a failure keeps the progress of
            // the pages before it). Other sources are one page.
            loop {
                let t = Instant::now();
                let read = read_source(ctx, &config, &mut secrets).await;
                // Stage times add up over pages and are recorded whether or
                // not the stage fails.
                times[0] += t.elapsed().as_secs_f64();
                let batch = read?;
                read_errors.append(batch.read_errors);
                let (offset, more) = (batch.offset, batch.more);
                seen += batch.entities.len() as u64;
                progress(seen);
                let t = Instant::now();
                let out = transform(&config, batch.entities);
                times[1] += t.elapsed().as_secs_f64();
                let t = Instant::now();
                let written = write_sink(ctx, &config, &mut secrets, out?).await;
                times[2] += t.elapsed().as_secs_f64();
                let written = written?;
                changes += written.changes;
                write_errors.append(written.write_errors);
                if let Some(o) = offset {
                    let store = ctx.store.clone();
                    let id = config.id.clone();
                    blocking(move || store.set_pipe_offset(&id, o))
                        .await
                        .map_err(|e| fail(format!("could not save the pipe offset: {e}")))?;
                    last_seen = Some(o);
                }
                if !more {
                    break;
                }
            }
            Ok::<(), Box<Failure>>(())
        };
        tokio::pin!(work);
        let stopped = || {
            Err(fail(
                "the pump was stopped by the stop operation".to_string(),
            ))
        };
        tokio::select! {
            r = &mut work => r,
            _ = cancel.cancelled() => stopped(),
            _ = task.cancelled() => {
                if ctx.shutdown.is_cancelled() {
                    // A shutdown lets the run finish within the grace period, so
                    // that a deploy does not turn every running pump into a
                    // pump-failed.
                    tokio::select! {
                        r = &mut work => r,
                        _ = cancel.cancelled() => stopped(),
                        _ = tokio::time::sleep(ctx.run_grace) => Err(fail(
                            "the pump was stopped because the node is shutting down".to_string(),
                        )),
                    }
                } else {
                    Err(fail(
                        "the pump was stopped because its configuration changed or was removed".to_string(),
                    ))
                }
            }
        }
    };
    let end = now_nanos();
    let total = started.elapsed().as_secs_f64();
    let next_interval = config
        .schedule
        .next_after(chrono::Utc::now())
        .map(|d| d.as_secs_f64());
    let result = result.map_err(|mut f| {
        read_errors.append(std::mem::take(&mut f.read_errors));
        write_errors.append(std::mem::take(&mut f.write_errors));
        f
    });
    // Per-entity errors first, then the run's end, as Sesam orders them.
    for mut e in read_errors
        .events
        .drain(..)
        .chain(write_errors.events.drain(..))
    {
        e.run_id = Some(run_id.clone());
        if let Some(m) = e.original_error_message.take() {
            e.original_error_message = Some(secrets.scrub(&m));
        }
        ctx.events.execution_event(e, config.monitoring).await;
    }
    let (read_n, write_n) = (read_errors.count, write_errors.count);
    let outcome = match result {
        Ok(()) => {
            let mut ev = ExecutionBody::new(config.id.clone(), EventType::PumpCompleted);
            ev.run_id = Some(run_id);
            ev.start_time = Some(rfc3339_from_nanos(start));
            ev.end_time = Some(rfc3339_from_nanos(end));
            ev.total_time = Some(total);
            ev.sync_type = Some(sync_type);
            ev.next_interval = next_interval;
            ev.metrics = metrics_of(seen, changes, read_n, write_n, times);
            ev.entities_succeeded = Some(seen.saturating_sub(write_n));
            ev.entities_failed = Some(read_n + write_n);
            ctx.events.execution_event(ev, config.monitoring).await;
            ctx.metrics.pump_completed.get_or_create(&label).inc();
            ctx.metrics
                .entities_changes
                .get_or_create(&label)
                .inc_by(changes);
            ctx.metrics.entities_seen.get_or_create(&label).inc_by(seen);
            ctx.metrics
                .last_completed_time
                .get_or_create(&label)
                .set(end as f64 / 1e9);
            // A run that changed nothing is routine: the log at INFO reads as
            // a record of changes (and of errors).
            if changes == 0 && read_n == 0 && write_n == 0 {
                tracing::debug!(pipe = %config.id, seen, "pump completed with nothing to do");
            } else if read_n + write_n > 0 {
                tracing::warn!(pipe = %config.id, seen, changes, read_errors = read_n, write_errors = write_n, "pump completed with entity errors");
            } else {
                tracing::info!(pipe = %config.id, seen, changes, "pump completed");
            }
            Ok(())
        }
        Err(f) => {
            let reason = secrets.scrub(&f.reason);
            let mut ev = ExecutionBody::new(config.id.clone(), EventType::PumpFailed);
            ev.run_id = Some(run_id);
            ev.start_time = Some(rfc3339_from_nanos(start));
            ev.end_time = Some(rfc3339_from_nanos(end));
            ev.total_time = Some(total);
            ev.sync_type = Some(sync_type);
            ev.next_interval = next_interval;
            ev.reason_why_stopped = Some(reason.clone());
            ev.original_error_message = Some(secrets.scrub(&f.original));
            ev.traceback = Some(secrets.scrub(&f.traceback));
            ev.metrics = metrics_of(seen, changes, read_n, write_n, times);
            ev.entity_id = f
                .exception_entity
                .as_ref()
                .and_then(|e| e.get("_id"))
                .and_then(Value::as_str)
                .map(str::to_string);
            ev.exception_entity = f.exception_entity;
            ctx.events.execution_event(ev, config.monitoring).await;
            ctx.metrics.pump_failed.get_or_create(&label).inc();
            tracing::warn!(pipe = %config.id, reason = %reason, "pump failed");
            Err(reason)
        }
    };
    ctx.metrics.total_time.get_or_create(&label).set(total);
    RunReport {
        end,
        result: outcome,
        last_seen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transform_failure_carries_the_entity() {
        let c = crate::config::from_value(serde_json::json!([{
            "_id": "p", "type": "pipe",
            "source": {"type": "embedded", "entities": []},
            "transform": {"type": "dtl", "rules": {"default": [["copy", "*"], ["add", "n", ["integer", "_S.n"]]]}}
        }]))
        .unwrap();
        let p = &c.pipes["p"];
        let ok = serde_json::json!({"_id": "a", "n": "1"});
        let bad = serde_json::json!({"_id": "b", "n": "x"});
        let f = transform(p, vec![ok, bad.clone()]).unwrap_err();
        assert_eq!(f.exception_entity, Some(bad));
        assert!(f.reason.contains("\"b\""), "{}", f.reason);
        assert!(f.traceback.contains("rules.default[1]"), "{}", f.traceback);
    }
}

//! Pumps: the scheduler and the runs of a pipe.
//!
//! Each pipe has one pump task. It sleeps until the next scheduled time
//! (`schedule_interval` or `cron_expr`) or a start request from the API, then
//! runs the pipe once ([`run`]): read the source ([`source`]), apply the
//! transforms, write the sink ([`sink`]), and record the run in the
//! execution dataset `system:pump:<pipe>` (`pump-started`, then
//! `pump-completed` or `pump-failed`, plus a `read-error` / `write-error`
//! per entity a source or sink could not handle). Runs of one pipe never
//! overlap; a failing pipe never affects the others.
//!
//! A run is cancelled by the `stop` operation or by a configuration change
//! that alters or removes the pipe; it then ends with a `pump-failed` whose
//! `reason_why_stopped` says which. On node shutdown no new run starts and a
//! running one may finish within 70% of the shutdown timeout; only past that
//! it is cancelled (`the pump was stopped because the node is shutting down`).
//!
//! Pumps see the node through a narrow [`PumpContext`] (storage, the HTTP
//! client, the event emitter, metrics and the shutdown signal), never the
//! API's shared state; the [`crate::supervisor`] owns them.
//!
//! Secret values (`$SECRET(name)` in systems) are resolved at run time and
//! scrubbed from every error message a run produces ([`system`]), so that a
//! server echoing a header back cannot leak a secret into the execution
//! dataset.

pub mod context;
pub mod outcome;
pub mod run;
pub mod sink;
pub mod source;
pub mod system;

pub use context::PumpContext;

use std::sync::{Arc, Mutex};

use schemas::time::{now_nanos, rfc3339_from_nanos};
use schemas::{EventType, ExecutionBody};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{PipeConfig, Schedule};
use crate::metrics::Metrics;
use crate::store::blocking;
use crate::store::{PumpMeta, Store, StoreError};

/// Runtime state of a pump, as the pump object of the API shows it.
#[derive(Debug, Clone, Default)]
pub struct PumpState {
    pub is_running: bool,
    pub disabled: bool,
    /// Start time (Unix ns) of the last run.
    pub last_run: Option<i64>,
    /// End time (Unix ns) of the last run.
    pub last_end: Option<i64>,
    /// Next scheduled run (Unix ns).
    pub next_run: Option<i64>,
    pub success: Option<bool>,
    pub last_error: Option<String>,
    /// The source offset (`_updated`) consumed so far, for dataset sources.
    pub last_seen: Option<u64>,
    /// Entities processed by the current (or last) run.
    pub progress: u64,
}

/// The task of a pump: its cancellation and its handle, awaited when the
/// pump must stop (so that a restarted pump never overlaps the old task).
#[derive(Debug)]
struct Task {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// One pipe's pump: its configuration, state and control handles.
#[derive(Debug)]
pub struct Pump {
    pub id: String,
    // std locks below: short critical sections, never held across an await.
    config: Mutex<Arc<PipeConfig>>,
    state: Mutex<PumpState>,
    start_tx: mpsc::Sender<()>,
    start_rx: tokio::sync::Mutex<mpsc::Receiver<()>>,
    /// The running pump task, if any.
    task: Mutex<Option<Task>>,
    /// Cancels the current run (the `stop` operation).
    run: Mutex<Option<CancellationToken>>,
}

/// Why a start request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartRefused {
    Running,
    Off,
}

impl Pump {
    pub fn new(config: Arc<PipeConfig>, meta: PumpMeta) -> Pump {
        let (start_tx, start_rx) = mpsc::channel(1);
        Pump {
            id: config.id.clone(),
            config: Mutex::new(config),
            state: Mutex::new(PumpState {
                disabled: meta.disabled,
                ..PumpState::default()
            }),
            start_tx,
            start_rx: tokio::sync::Mutex::new(start_rx),
            task: Mutex::new(None),
            run: Mutex::new(None),
        }
    }

    pub fn config(&self) -> Arc<PipeConfig> {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_config(&self, c: Arc<PipeConfig>) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = c;
    }

    pub fn state(&self) -> PumpState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut PumpState)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Asks the pump task to run now.
    pub fn request_start(&self) -> Result<(), StartRefused> {
        if matches!(self.config().schedule, Schedule::Off) {
            return Err(StartRefused::Off);
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.is_running {
            return Err(StartRefused::Running);
        }
        if self.start_tx.try_send(()).is_err() {
            // A start is already queued.
            return Err(StartRefused::Running);
        }
        s.is_running = true;
        // The run's token exists from now on, so that a `stop` right after
        // the start cancels the queued run too.
        *self.run.lock().unwrap_or_else(|p| p.into_inner()) = Some(CancellationToken::new());
        Ok(())
    }

    /// Cancels the current run, if any; returns whether one was running.
    pub fn stop(&self) -> bool {
        match self.run.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(t) => {
                t.cancel();
                true
            }
            None => false,
        }
    }

    pub fn set_disabled(&self, disabled: bool) {
        self.update(|s| s.disabled = disabled);
    }

    /// Stops the pump task (a running run ends with a `pump-failed` saying
    /// the configuration changed) and waits until it has finished.
    pub async fn stop_task(&self) {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = task {
            t.cancel.cancel();
            if let Err(e) = t.handle.await {
                tracing::error!(pipe = %self.id, error = %e, "the pump task ended abnormally");
            }
        }
    }

    /// Restores last-run facts from the execution dataset after a restart.
    /// Synchronous: call from a blocking context.
    pub fn restore(&self, store: &Store) {
        let ds = self.config().execution_dataset();
        let mut latest: Option<(i64, bool, Option<String>)> = None;
        for (t, ok) in [("pump-completed", true), ("pump-failed", false)] {
            if let Ok(Some(e)) = store.get_entity(&ds, t) {
                let end = e
                    .get("end_time")
                    .and_then(Value::as_str)
                    .and_then(schemas::time::parse_rfc3339);
                if let Some(end) = end {
                    if latest.as_ref().is_none_or(|(l, _, _)| end > *l) {
                        let why = e
                            .get("reason_why_stopped")
                            .and_then(Value::as_str)
                            .map(str::to_string);
                        latest = Some((end, ok, why));
                    }
                }
            }
        }
        let offset = store.pipe_offset(&self.id).ok().filter(|o| *o > 0);
        self.update(|s| {
            if let Some((end, ok, why)) = latest {
                s.last_end = Some(end);
                s.last_run = Some(end);
                s.success = Some(ok);
                s.last_error = why;
            }
            s.last_seen = offset;
        });
    }
}

/// Starts the pump task of `pump` on the context's tracker. The caller
/// makes sure no earlier task of the pump is still running
/// ([`Pump::stop_task`]).
pub fn spawn(ctx: &PumpContext, pump: Arc<Pump>) {
    let token = ctx.shutdown.child_token();
    let task_token = token.clone();
    let c = ctx.clone();
    let p = pump.clone();
    let handle = ctx.tracker.spawn(async move {
        let pump = p;
        let mut rx = pump.start_rx.lock().await;
        loop {
            let config = pump.config();
            let wait = config.schedule.next_after(chrono::Utc::now());
            pump.update(|s| {
                s.next_run = wait.map(|w| now_nanos().saturating_add(w.as_nanos() as i64));
            });
            let sleep = async {
                match wait {
                    Some(w) => tokio::time::sleep(w).await,
                    None => std::future::pending().await,
                }
            };
            let manual = tokio::select! {
                _ = task_token.cancelled() => break,
                r = rx.recv() => {
                    if r.is_none() { break; }
                    true
                }
                _ = sleep => false,
            };
            if !manual && pump.state().disabled {
                continue;
            }
            let stop = pump
                .run
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(CancellationToken::new)
                .clone();
            let start = now_nanos();
            pump.update(|s| {
                s.is_running = true;
                s.last_run = Some(start);
                s.progress = 0;
            });
            let progress = |n: u64| pump.update(|s| s.progress = n);
            let report = run::run_once(&c, config, start, &stop, &task_token, &progress).await;
            *pump.run.lock().unwrap_or_else(|p| p.into_inner()) = None;
            pump.update(|s| {
                match &report.result {
                    Ok(()) => {
                        s.success = Some(true);
                        s.last_error = None;
                    }
                    Err(reason) => {
                        s.success = Some(false);
                        s.last_error = Some(reason.clone());
                    }
                }
                if report.last_seen.is_some() {
                    s.last_seen = report.last_seen;
                }
                s.is_running = false;
                s.last_end = Some(report.end);
            });
            c.health_wakeup.notify_one();
            // A start request can only be queued while idle; drop a stale one.
            while rx.try_recv().is_ok() {}
        }
        *pump.run.lock().unwrap_or_else(|p| p.into_inner()) = None;
        pump.update(|s| {
            s.next_run = None;
            // A start queued but never run must not leave the pump "running".
            s.is_running = false;
        });
    });
    *pump.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(Task {
        cancel: token,
        handle,
    });
}

/// Emits pump-enabled / pump-disabled and persists the flag.
pub async fn set_enabled(
    ctx: &PumpContext,
    pump: &Arc<Pump>,
    enabled: bool,
) -> Result<(), StoreError> {
    let store = ctx.store.clone();
    let id = pump.id.clone();
    blocking(move || store.set_pump_meta(&id, &PumpMeta { disabled: !enabled })).await?;
    pump.set_disabled(!enabled);
    ctx.metrics
        .pipe_enabled
        .get_or_create(&Metrics::pipe(&pump.id))
        .set(i64::from(enabled));
    let config = pump.config();
    let mut ev = ExecutionBody::new(
        pump.id.clone(),
        if enabled {
            EventType::PumpEnabled
        } else {
            EventType::PumpDisabled
        },
    );
    ev.end_time = Some(rfc3339_from_nanos(now_nanos()));
    ctx.events.execution_event(ev, config.monitoring).await;
    tracing::info!(pipe = %pump.id, enabled, "pump {}", if enabled { "enabled" } else { "disabled" });
    Ok(())
}

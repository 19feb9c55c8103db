//! `pump_failed`: a run of a matching pipe failed (or, with
//! `params.event_types`, the pipe reported a `read-error` / `write-error`
//! for an entity); resolves on the pipe's next `pump-completed`, which
//! must report no read and no write errors when entity errors page.

use std::sync::Arc;

use schemas::{EventType, ExecutionBody, Record};

use crate::engine::Engine;
use crate::lifecycle::Fire;
use crate::model::{short, PipeKey};
use crate::rule::{CompiledRule, Kind};

/// Whether a completed run clears entity errors: it reported none.
fn clean_run(e: &ExecutionBody) -> bool {
    e.metrics.read_errors_last_run.unwrap_or(0) == 0
        && e.metrics.write_errors_last_run.unwrap_or(0) == 0
}

impl Engine {
    pub(crate) fn pump_failed(
        &mut self,
        rule: &Arc<CompiledRule>,
        r: &Record,
        e: &ExecutionBody,
        key: &PipeKey,
        now: i64,
    ) {
        let Kind::PumpFailed { on, entity_errors } = &rule.kind else {
            return;
        };
        if e.event_type == EventType::PumpCompleted {
            if !*entity_errors || clean_run(e) {
                self.resolve_pipe(rule, key, now);
            }
            return;
        }
        if !on.contains(&e.event_type) {
            return;
        }
        let pipe = short(&e.pipe, 200);
        let source = short(&r.source, 200);
        let f = match e.event_type {
            EventType::PumpFailed => {
                let reason = e.reason_why_stopped.clone().unwrap_or_default();
                let mut f = Fire::new(
                    rule,
                    Some(&r.source),
                    Some(&e.pipe),
                    r.ts,
                    format!("Pipe {pipe} on {source} failed: {}", short(&reason, 300)),
                )
                .note("reason_why_stopped", short(&reason, 2000));
                if let Some(m) = &e.original_error_message {
                    f = f.note("original_error_message", short(m, 2000));
                }
                f
            }
            _ => {
                let what = if e.event_type == EventType::ReadError {
                    "read"
                } else {
                    "write"
                };
                let entity = e.entity_id.as_deref().unwrap_or("?");
                let mut f = Fire::new(
                    rule,
                    Some(&r.source),
                    Some(&e.pipe),
                    r.ts,
                    format!(
                        "Pipe {pipe} on {source} could not {what} entity {}",
                        short(entity, 200)
                    ),
                )
                .note("event_type", e.event_type.as_str().to_string());
                if let Some(id) = &e.entity_id {
                    f = f.note("entity_id", short(id, 200));
                }
                if let Some(c) = &e.error_code {
                    f = f.note("error_code", short(c, 200));
                }
                f
            }
        };
        let f = match &e.run_id {
            Some(id) => f.note("run_id", short(id, 200)),
            None => f,
        };
        self.fire(f, now);
    }
}

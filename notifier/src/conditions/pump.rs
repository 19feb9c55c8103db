//! `pump_failed`: a run of a matching pipe failed; resolves on the pipe's
//! next `pump-completed`.

use std::sync::Arc;

use schemas::{EventType, ExecutionBody, Record};

use crate::engine::Engine;
use crate::lifecycle::Fire;
use crate::model::{short, PipeKey};
use crate::rule::CompiledRule;

impl Engine {
    pub(crate) fn pump_failed(
        &mut self,
        rule: &Arc<CompiledRule>,
        r: &Record,
        e: &ExecutionBody,
        key: &PipeKey,
        now: i64,
    ) {
        match e.event_type {
            EventType::PumpFailed => {
                let reason = e.reason_why_stopped.clone().unwrap_or_default();
                let mut f = Fire::new(
                    rule,
                    Some(&r.source),
                    Some(&e.pipe),
                    r.ts,
                    format!(
                        "Pipe {} on {} failed: {}",
                        short(&e.pipe, 200),
                        short(&r.source, 200),
                        short(&reason, 300)
                    ),
                )
                .note("reason_why_stopped", short(&reason, 2000));
                if let Some(m) = &e.original_error_message {
                    f = f.note("original_error_message", short(m, 2000));
                }
                if let Some(id) = &e.run_id {
                    f = f.note("run_id", short(id, 200));
                }
                self.fire(f, now);
            }
            EventType::PumpCompleted => self.resolve_pipe(rule, key, now),
            _ => {}
        }
    }
}

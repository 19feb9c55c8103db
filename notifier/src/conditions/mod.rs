//! The rule families, one file each: what a record (or sample, or
//! conflict) means for the rules of its subscription.
//!
//! | file | rule types |
//! |---|---|
//! | `pump.rs` | `pump_failed` |
//! | `overdue.rs` | `pump_started_overdue`, `pump_finished_overdue` (and the pipes' schedules from config records) |
//! | `pattern.rs` | `pattern_match` |
//! | `value.rs` | `pump_completed_value_too_high` / `_too_low` |
//! | `health.rs` | `node_heartbeat_overdue`, `service_unhealthy` |
//! | `metric.rs` | `metric_threshold` |
//! | `conflict.rs` | `source_conflict` |
//!
//! An execution event first updates its pipe's state (last start, end,
//! running, enabled), then goes to each rule matching its pipe. Past the
//! record's evaluation deadline only the overdue rules (cheap, and needed
//! for later deadlines to be right) still see it.

mod conflict;
mod health;
mod metric;
mod overdue;
mod pattern;
mod pump;
mod value;

use schemas::{EventType, ExecutionBody, Record};

use crate::engine::Engine;
use crate::model::PipeKey;
use crate::rule::Kind;

impl Engine {
    pub(crate) fn on_execution(&mut self, r: &Record, e: &ExecutionBody, now: i64) {
        let key = PipeKey {
            sub: r.subscription.clone(),
            source: r.source.clone(),
            pipe: e.pipe.clone(),
        };
        let ts = r.ts;
        let mut changed = false;
        if self.track_pipe(&key, ts) {
            if let Some(p) = self.pipes.get_mut(&key) {
                changed = match e.event_type {
                    EventType::PumpStarted => {
                        p.last_started = Some(p.last_started.map_or(ts, |t| t.max(ts)));
                        p.running_since = Some(ts);
                        true
                    }
                    EventType::PumpCompleted | EventType::PumpFailed => {
                        p.last_finished = Some(p.last_finished.map_or(ts, |t| t.max(ts)));
                        p.running_since = None;
                        true
                    }
                    EventType::PumpEnabled => {
                        p.enabled = true;
                        true
                    }
                    EventType::PumpDisabled => {
                        p.enabled = false;
                        true
                    }
                    _ => false,
                };
            }
        }
        let rules = self.index.pipe_rules(&r.subscription, &r.source, &e.pipe);
        for rule in rules.iter() {
            let overdue = matches!(
                rule.kind,
                Kind::StartedOverdue { .. } | Kind::FinishedOverdue { .. }
            );
            if !overdue && self.out_of_time() {
                continue;
            }
            match &rule.kind {
                Kind::PumpFailed { .. } => self.pump_failed(rule, r, e, &key, now),
                Kind::Pattern { .. } => self.pattern_on_execution(rule, r, e, &key, now),
                Kind::Value { .. } => self.value_on_completed(rule, r, e, &key, now),
                Kind::StartedOverdue { .. } | Kind::FinishedOverdue { .. } => {
                    self.overdue_on_execution(rule, e, &key, now)
                }
                _ => {}
            }
        }
        if changed {
            // Moved, not cloned: once per execution record.
            self.dirty.pipes.insert(key);
        }
    }
}

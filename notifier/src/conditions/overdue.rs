//! `pump_started_overdue` (no `pump-started` within the pipe's schedule
//! plus `grace`) and `pump_finished_overdue` (a run longer than `limit`),
//! measured in the source's event time: a deadline fires only once the
//! source has said something later than it, so a backlog arriving late or
//! a dead node never makes its pipes look overdue (a node coming back
//! after a silence gets a fresh grace, see `inhibit.rs`). The pipes'
//! schedules come from the node's config records.

use std::collections::HashSet;
use std::sync::Arc;

use schemas::{EventType, ExecutionBody, Record};

use crate::engine::Engine;
use crate::lifecycle::Fire;
use crate::model::{fingerprint, opt_ts, secs, short, PipeKey, ScheduleSpec, SourceKey};
use crate::rule::{CompiledRule, Kind};
use crate::schedule::{finished_deadline, schedule_of, started_deadline, Timer};

impl Engine {
    pub(crate) fn overdue_on_execution(
        &mut self,
        rule: &Arc<CompiledRule>,
        e: &ExecutionBody,
        key: &PipeKey,
        now: i64,
    ) {
        let resolves = match rule.kind {
            Kind::StartedOverdue { .. } => {
                matches!(
                    e.event_type,
                    EventType::PumpStarted | EventType::PumpDisabled
                )
            }
            // A new run means the previous one is over too.
            _ => matches!(
                e.event_type,
                EventType::PumpCompleted | EventType::PumpFailed | EventType::PumpStarted
            ),
        };
        if resolves {
            self.resolve_pipe(rule, key, now);
        }
        self.arm_pipe_rule(rule, key);
    }

    pub(crate) fn on_config(&mut self, r: &Record, config: &[serde_json::Value]) {
        let mut seen = HashSet::new();
        for ent in config {
            if ent.get("type").and_then(|t| t.as_str()) != Some("pipe") {
                continue;
            }
            let Some(id) = ent.get("_id").and_then(|v| v.as_str()) else {
                continue;
            };
            seen.insert(id.to_string());
            let (spec, cron) = schedule_of(ent);
            let key = PipeKey {
                sub: r.subscription.clone(),
                source: r.source.clone(),
                pipe: id.to_string(),
            };
            if !self.track_pipe(&key, r.ts) {
                continue;
            }
            let Some(p) = self.pipes.get_mut(&key) else {
                continue;
            };
            if p.schedule != spec {
                p.cron = cron;
                p.schedule = spec;
                self.dirty.pipes.insert(key.clone());
            }
            self.arm_pipe(&key);
        }
        // Pipes gone from the configuration are no longer expected to run.
        let source = SourceKey::new(&r.subscription, &r.source);
        let gone: Vec<String> = self
            .pipes_of
            .get(&source)
            .map(|s| s.iter().filter(|p| !seen.contains(*p)).cloned().collect())
            .unwrap_or_default();
        for pipe in gone {
            let k = PipeKey {
                sub: r.subscription.clone(),
                source: r.source.clone(),
                pipe,
            };
            if let Some(p) = self.pipes.get_mut(&k) {
                if p.schedule != ScheduleSpec::Manual {
                    p.schedule = ScheduleSpec::Manual;
                    p.cron = None;
                    self.dirty.pipes.insert(k);
                }
            }
        }
    }

    pub(crate) fn arm_pipe(&mut self, key: &PipeKey) {
        let rules = self.index.pipe_rules(&key.sub, &key.source, &key.pipe);
        for rule in rules.iter() {
            self.arm_pipe_rule(rule, key);
        }
    }

    pub(crate) fn arm_pipe_rule(&mut self, rule: &Arc<CompiledRule>, key: &PipeKey) {
        let Some(p) = self.pipes.get(key) else {
            return;
        };
        let (timer, deadline) = match rule.kind {
            Kind::StartedOverdue { .. } => (
                Timer::Started {
                    rule: rule.key(),
                    pipe: key.clone(),
                },
                started_deadline(rule, p),
            ),
            Kind::FinishedOverdue { limit } => (
                Timer::Finished {
                    rule: rule.key(),
                    pipe: key.clone(),
                },
                finished_deadline(limit, p),
            ),
            _ => return,
        };
        if let Some(d) = deadline {
            self.arm(timer, d);
        }
    }

    /// Fires the event-time deadlines of `key` that its clock has passed.
    pub(crate) fn run_event_timers(&mut self, key: &SourceKey, now: i64) {
        let Some(clock) = self.sources.get(key).map(|s| s.newest_ts) else {
            return;
        };
        while let Some(t) = self.timers.pop_event(key, clock) {
            if let Timer::Started { rule, pipe } | Timer::Finished { rule, pipe } = &t {
                if let Some(rule) = self.rules.get(rule).cloned() {
                    self.check_overdue(&rule, pipe, clock, now);
                }
            }
        }
    }

    fn check_overdue(&mut self, rule: &Arc<CompiledRule>, key: &PipeKey, clock: i64, now: i64) {
        let Some(p) = self.pipes.get(key) else {
            return;
        };
        if !rule.matches_source(&key.source) || !rule.matches_pipe(&key.pipe) {
            return;
        }
        let (deadline, summary, note) = match rule.kind {
            Kind::StartedOverdue { grace, .. } => {
                let Some(d) = started_deadline(rule, p) else {
                    return;
                };
                let since = p.last_started.or(p.last_finished).unwrap_or(p.known_since);
                (
                    d,
                    format!(
                        "Pipe {} on {} has not started since {} (expected by {}, grace {})",
                        short(&key.pipe, 200),
                        short(&key.source, 200),
                        opt_ts(since),
                        opt_ts(d.saturating_sub(grace)),
                        secs(grace)
                    ),
                    ("expected_by", opt_ts(d)),
                )
            }
            Kind::FinishedOverdue { limit } => {
                let Some(d) = finished_deadline(limit, p) else {
                    return;
                };
                let started = p.running_since.unwrap_or(d);
                (
                    d,
                    format!(
                        "Pipe {} on {} has been running since {}, longer than {}",
                        short(&key.pipe, 200),
                        short(&key.source, 200),
                        opt_ts(started),
                        secs(limit)
                    ),
                    ("running_since", opt_ts(started)),
                )
            }
            _ => return,
        };
        if deadline >= clock {
            // The pipe moved on since the timer was armed.
            self.arm_pipe_rule(rule, key);
            return;
        }
        let fp = fingerprint(rule.id(), &key.sub, &key.source, &key.pipe, "");
        if self
            .alerts
            .get(&fp)
            .is_some_and(|a| a.last_event_at >= deadline)
        {
            // Fired for this deadline already (a timer re-armed by a
            // restart): not a new event.
            return;
        }
        let f = Fire::new(rule, Some(&key.source), Some(&key.pipe), deadline, summary)
            .note(note.0, note.1);
        self.fire(f, now);
    }
}

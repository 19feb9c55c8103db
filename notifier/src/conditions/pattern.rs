//! `pattern_match`: a wildcard or regex on an execution event's error
//! fields (resolves on the pipe's next `pump-completed`) or on a log
//! message (resolves after `resolve_after` without a match). Only the
//! first `Limits::max_match_bytes` of a text are looked at.

use std::sync::Arc;

use schemas::notify::PatternField;
use schemas::{EventType, ExecutionBody, LogBody, Record};

use crate::engine::Engine;
use crate::lifecycle::Fire;
use crate::model::{prefix, short, PipeKey};
use crate::rule::{CompiledRule, Kind};

impl Engine {
    pub(crate) fn pattern_on_execution(
        &mut self,
        rule: &Arc<CompiledRule>,
        r: &Record,
        e: &ExecutionBody,
        key: &PipeKey,
        now: i64,
    ) {
        let Kind::Pattern {
            field,
            matcher,
            pattern,
            ..
        } = &rule.kind
        else {
            return;
        };
        let text = match field {
            PatternField::ReasonWhyStopped => e.reason_why_stopped.as_deref(),
            PatternField::Traceback => e.traceback.as_deref(),
            PatternField::OriginalErrorMessage => e.original_error_message.as_deref(),
            PatternField::LogMessage => None,
        };
        let max = self.limits.max_match_bytes;
        if let Some(text) = text.filter(|t| matcher.is_match(prefix(t, max))) {
            let f = Fire::new(
                rule,
                Some(&r.source),
                Some(&e.pipe),
                r.ts,
                format!(
                    "{} of pipe {} on {} matched {:?}",
                    field.as_str(),
                    short(&e.pipe, 200),
                    short(&r.source, 200),
                    short(pattern, 100)
                ),
            )
            .note(
                "reason_why_stopped",
                short(e.reason_why_stopped.as_deref().unwrap_or(""), 2000),
            )
            .note("matched_text", short(text, 2000));
            self.fire(f, now);
        } else if e.event_type == EventType::PumpCompleted && *field != PatternField::LogMessage {
            self.resolve_pipe(rule, key, now);
        }
    }

    pub(crate) fn on_log(&mut self, r: &Record, l: &LogBody, now: i64) {
        if !self.index.has(&r.subscription) {
            return;
        }
        let pipe = l
            .fields
            .get("pipe")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let rules = self.index.pipe_rules(&r.subscription, &r.source, &pipe);
        let text = prefix(&l.message, self.limits.max_match_bytes);
        for rule in rules.iter() {
            let Kind::Pattern {
                field: PatternField::LogMessage,
                matcher,
                pattern,
                resolve_after,
            } = &rule.kind
            else {
                continue;
            };
            if self.out_of_time() || !matcher.is_match(text) {
                continue;
            }
            let f = Fire::new(
                rule,
                Some(&r.source),
                (!pipe.is_empty()).then_some(pipe.as_str()),
                r.ts,
                format!(
                    "A {} log of {} matched {:?}: {}",
                    l.level.as_str(),
                    short(&r.source, 200),
                    short(pattern, 100),
                    short(&l.message, 300)
                ),
            )
            .note("message", short(&l.message, 2000));
            if let Some(fp) = self.fire(f, now) {
                self.resolve_later(&fp, now.saturating_add(*resolve_after));
            }
        }
    }
}

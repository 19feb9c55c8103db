//! `source_conflict`: the collector refused records of a source because
//! two outbox epochs write it or a seq was re-sent with different content.
//! One alert per (rule, source) with the detail as its description; it
//! resolves when no conflict was reported for `resolve_after`.

use std::sync::Arc;

use crate::engine::Engine;
use crate::lifecycle::Fire;
use crate::model::short;
use crate::rule::{CompiledRule, Kind};

impl Engine {
    pub fn on_source_conflict(&mut self, sub: &str, source: &str, detail: &str, now: i64) {
        let rules: Vec<Arc<CompiledRule>> = self
            .index
            .source_rules(sub, source, |k| matches!(k, Kind::Conflict { .. }));
        for rule in &rules {
            let Kind::Conflict { resolve_after } = rule.kind else {
                continue;
            };
            let f = Fire::new(
                rule,
                Some(source),
                None,
                now,
                format!(
                    "Records of {} were refused: {}",
                    short(source, 200),
                    short(detail, 300)
                ),
            )
            .note("description", short(detail, 2000));
            if let Some(fp) = self.fire(f, now) {
                self.resolve_later(&fp, now.saturating_add(resolve_after));
            }
        }
    }
}

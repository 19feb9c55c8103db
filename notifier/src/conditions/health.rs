//! `node_heartbeat_overdue` (no record of any kind from a source for
//! `interval`, on the collector's clock, counted from the collector's
//! start at the earliest; resolves when a record arrives) and
//! `service_unhealthy` (a health record with a bad status).

use std::sync::Arc;

use schemas::{HealthBody, HealthStatus, Record};

use crate::engine::Engine;
use crate::lifecycle::Fire;
use crate::model::{fingerprint, opt_ts, secs, short, SourceKey};
use crate::rule::{CompiledRule, Kind, RuleKey};
use crate::schedule::Timer;

impl Engine {
    pub(crate) fn on_health(&mut self, r: &Record, h: &HealthBody, now: i64) {
        let rules = self.index.source_rules(&r.subscription, &r.source, |k| {
            matches!(k, Kind::Unhealthy { .. })
        });
        for rule in &rules {
            let Kind::Unhealthy { statuses } = &rule.kind else {
                continue;
            };
            if !statuses.contains(&h.status) {
                let fp = fingerprint(rule.id(), &r.subscription, &r.source, "", "");
                self.resolve(&fp, now);
                continue;
            }
            let bad: Vec<String> = h
                .checks
                .iter()
                .filter(|c| c.status != HealthStatus::Ok)
                .take(20)
                .map(|c| match &c.detail {
                    Some(d) => format!(
                        "{} ({}): {}",
                        short(&c.name, 100),
                        c.status.as_str(),
                        short(d, 200)
                    ),
                    None => format!("{} ({})", short(&c.name, 100), c.status.as_str()),
                })
                .collect();
            let f = Fire::new(
                rule,
                Some(&r.source),
                None,
                r.ts,
                format!(
                    "{} is {}: {}",
                    short(&r.source, 200),
                    h.status.as_str(),
                    short(&bad.join("; "), 1000)
                ),
            )
            .note("status", h.status.as_str().to_string());
            self.fire(f, now);
        }
    }

    fn heartbeat_rules(&self, key: &SourceKey) -> Vec<Arc<CompiledRule>> {
        self.index.source_rules(&key.sub, &key.source, |k| {
            matches!(k, Kind::Heartbeat { .. })
        })
    }

    pub(crate) fn arm_heartbeats(&mut self, key: &SourceKey) {
        for r in &self.heartbeat_rules(key) {
            self.arm_heartbeat(r, key);
        }
    }

    /// When `key` is overdue: `interval` after its last record, not
    /// counting the collector's own downtime.
    fn heartbeat_deadline(&self, interval: i64, key: &SourceKey) -> Option<i64> {
        let last = self.sources.get(key)?.last_arrival;
        let base = match self.downtime {
            _ if last >= self.started_at => last,
            Some(down) => last.saturating_add(down),
            None => self.started_at,
        };
        Some(base.saturating_add(interval))
    }

    pub(crate) fn arm_heartbeat(&mut self, rule: &Arc<CompiledRule>, key: &SourceKey) {
        let Kind::Heartbeat { interval } = rule.kind else {
            return;
        };
        let fp = fingerprint(rule.id(), &key.sub, &key.source, "", "");
        if self.alerts.contains(&fp) {
            return; // firing: re-armed when the source is heard from again
        }
        if let Some(d) = self.heartbeat_deadline(interval, key) {
            self.arm(
                Timer::Heartbeat {
                    rule: rule.key(),
                    source: key.clone(),
                },
                d,
            );
        }
    }

    /// A record arrived from `key`: its heartbeat alerts resolve.
    pub(crate) fn source_alive(&mut self, key: &SourceKey, now: i64) {
        for r in &self.heartbeat_rules(key) {
            let fp = fingerprint(r.id(), &key.sub, &key.source, "", "");
            self.resolve(&fp, now);
            self.arm_heartbeat(r, key);
        }
    }

    /// A heartbeat deadline of `rule` for `source` popped (armed at `at`).
    pub(crate) fn heartbeat_due(&mut self, rule: &RuleKey, source: &SourceKey, at: i64, now: i64) {
        let Some(rule) = self.rules.get(rule).cloned() else {
            return;
        };
        let Kind::Heartbeat { interval } = rule.kind else {
            return;
        };
        if !rule.matches_source(&source.source) {
            return;
        }
        let Some(d) = self.heartbeat_deadline(interval, source) else {
            return;
        };
        if d > at {
            // The source was heard from since: due later (maybe also now,
            // then in the order of true deadlines).
            self.arm_heartbeat(&rule, source);
            return;
        }
        let last = self
            .sources
            .get(source)
            .map(|s| s.last_arrival)
            .unwrap_or(0);
        let f = Fire::new(
            &rule,
            Some(&source.source),
            None,
            d,
            format!(
                "No record from {} for {} (last received {})",
                short(&source.source, 200),
                secs(interval),
                opt_ts(last)
            ),
        )
        .note("last_seen", opt_ts(last));
        self.fire(f, now);
    }
}

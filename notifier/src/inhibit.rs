//! Inhibition, and sources coming back.
//!
//! While a source's `node_heartbeat_overdue` alert fires, its pipes'
//! overdue alerts are inhibited: they fire but do not notify (one page
//! for a dead node, not one per pipe).
//!
//! A source that comes back after a silence (its event clock jumps by more
//! than the silence gap: the smallest heartbeat interval of its rules, at
//! most `Limits::source_gap`) gets a fresh grace: every pipe's overdue
//! deadline counts from its return at the earliest (`resumed_at`), so
//! nothing that expired while it said nothing pages; overdue alerts that
//! were held back (never notified) are dropped silently, and fire again
//! only if the pipe is still overdue after the fresh grace. Deadlines that
//! expired before the silence began are run first. The same holds after a
//! collector restart (the clocks are persisted) and for a backlog arriving
//! late (no jump in event time: nothing to excuse, nothing paged).

use crate::engine::Engine;
use crate::model::{Alert, SourceKey};
use crate::rule::Kind;

impl Engine {
    /// A heartbeat alert for `source` started: its pipes' overdue alerts
    /// are inhibited.
    pub(crate) fn inhibit_source(&mut self, source: &SourceKey, by: &str) {
        let fps: Vec<String> = self
            .alerts
            .of(&source.sub)
            .filter(|a| {
                a.is_overdue()
                    && a.source.as_deref() == Some(source.source.as_str())
                    && a.inhibited_by.is_none()
            })
            .map(|a| a.fingerprint.clone())
            .collect();
        for fp in fps {
            if let Some(a) = self.alerts.get_mut(&fp) {
                a.inhibited_by = Some(by.to_string());
            }
            self.touch_alert(&source.sub, &fp);
        }
    }

    /// The heartbeat alert `a` resolved: alerts it inhibited are free to
    /// notify (if they still fire).
    pub(crate) fn heartbeat_resolved(&mut self, a: &Alert, now: i64) {
        let Some(src) = &a.source else {
            return;
        };
        let k = SourceKey::new(&a.subscription, src);
        if self.heartbeat_firing.get(&k) == Some(&a.fingerprint) {
            self.heartbeat_firing.remove(&k);
        }
        let freed: Vec<String> = self
            .alerts
            .of(&a.subscription)
            .filter(|x| x.inhibited_by.as_deref() == Some(a.fingerprint.as_str()))
            .map(|x| x.fingerprint.clone())
            .collect();
        for f in freed {
            if let Some(x) = self.alerts.get_mut(&f) {
                x.inhibited_by = None;
            }
            self.touch_alert(&a.subscription, &f);
            self.try_notify(&f, crate::model::NotificationKind::Firing, now);
        }
    }

    /// A lower bound of [`Engine::silence_gap`] for any source of `sub`
    /// (cheap: the subscription's smallest heartbeat interval).
    pub(crate) fn min_silence_gap(&self, sub: &str) -> i64 {
        let limit = i64::try_from(self.limits.source_gap.as_nanos()).unwrap_or(i64::MAX);
        self.index
            .min_heartbeat(sub)
            .map_or(limit, |h| h.min(limit))
    }

    /// The longest gap in a source's event time that is not a silence.
    pub(crate) fn silence_gap(&self, key: &SourceKey) -> i64 {
        let limit = i64::try_from(self.limits.source_gap.as_nanos()).unwrap_or(i64::MAX);
        self.index
            .source_rules(&key.sub, &key.source, |k| {
                matches!(k, Kind::Heartbeat { .. })
            })
            .iter()
            .filter_map(|r| match r.kind {
                Kind::Heartbeat { interval } => Some(interval),
                _ => None,
            })
            .fold(limit, i64::min)
    }

    /// `key` came back at event time `ts` after a silence: its pipes get a
    /// fresh grace, and its held-back overdue alerts are dropped.
    pub(crate) fn source_returned(&mut self, key: &SourceKey, ts: i64, now: i64) {
        let pipes: Vec<String> = self
            .pipes_of
            .get(key)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for name in pipes {
            let pk = crate::model::PipeKey {
                sub: key.sub.clone(),
                source: key.source.clone(),
                pipe: name,
            };
            if let Some(p) = self.pipes.get_mut(&pk) {
                p.resumed_at = Some(p.resumed_at.unwrap_or(i64::MIN).max(ts));
                self.dirty.pipes.insert(pk);
            }
        }
        let held: Vec<String> = self
            .alerts
            .of(&key.sub)
            .filter(|a| {
                a.is_overdue() && !a.notified && a.source.as_deref() == Some(key.source.as_str())
            })
            .map(|a| a.fingerprint.clone())
            .collect();
        for fp in held {
            self.resolve_as(&fp, now, false);
        }
    }
}

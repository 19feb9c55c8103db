//! Deadlines: the timer sets, and when a pipe is expected to start or end.
//!
//! Deadlines sit in ordered sets (a next-deadline scheduler): one per
//! source in that source's event time (pipe overdue rules), one on the
//! collector's clock (heartbeats, repeats, resolutions, metric `for`,
//! silence edges, group flushes). Each timer is armed at most once, at its
//! earliest deadline; when it pops, the condition is evaluated from
//! current state and re-armed if the state moved on (at its true deadline,
//! even when that is also past: timers due in one tick then run in the
//! order of their true deadlines, whatever order they were armed in). The sets hold exactly
//! the armed timers (and silence edges), so their size is bounded by the
//! per-subscription timer limit. Deadline arithmetic saturates.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::model::{FastMap, PipeKey, PipeState, ScheduleSpec, SourceKey};
use crate::rule::{CompiledRule, Kind, RuleKey};
use crate::sharded::ShardedMap;

/// Longest schedule interval taken from a node's config (a year).
const MAX_SCHEDULE_SECS: f64 = 366.0 * 86_400.0;

/// Something due at a time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Timer {
    /// Event time of the pipe's source.
    Started {
        rule: RuleKey,
        pipe: PipeKey,
    },
    /// Event time of the pipe's source.
    Finished {
        rule: RuleKey,
        pipe: PipeKey,
    },
    Heartbeat {
        rule: RuleKey,
        source: SourceKey,
    },
    /// A pattern or conflict alert resolves if nothing new came.
    ResolveAt {
        sub: String,
        fp: String,
    },
    Repeat {
        sub: String,
        fp: String,
    },
    /// `<sub>\0<rule id>\0<series>`
    Metric {
        key: String,
    },
    SilenceEdge {
        sub: String,
        id: String,
    },
    /// `<group key>` of `sub`.
    GroupFlush {
        sub: String,
        key: String,
    },
}

impl Timer {
    pub(crate) fn sub(&self) -> &str {
        match self {
            Timer::Started { rule, .. }
            | Timer::Finished { rule, .. }
            | Timer::Heartbeat { rule, .. } => &rule.sub,
            Timer::ResolveAt { sub, .. }
            | Timer::Repeat { sub, .. }
            | Timer::SilenceEdge { sub, .. }
            | Timer::GroupFlush { sub, .. } => sub,
            Timer::Metric { key } => key.split('\0').next().unwrap_or(""),
        }
    }

    /// Bytes of its strings.
    fn heap_bytes(&self) -> usize {
        match self {
            Timer::Started { rule, pipe } | Timer::Finished { rule, pipe } => {
                rule.sub.len()
                    + rule.id.len()
                    + pipe.sub.len()
                    + pipe.source.len()
                    + pipe.pipe.len()
            }
            Timer::Heartbeat { rule, source } => {
                rule.sub.len() + rule.id.len() + source.sub.len() + source.source.len()
            }
            Timer::ResolveAt { sub, fp } | Timer::Repeat { sub, fp } => sub.len() + fp.len(),
            Timer::Metric { key } => key.len(),
            Timer::SilenceEdge { sub, id } | Timer::GroupFlush { sub, key: id } => {
                sub.len() + id.len()
            }
        }
    }

    /// The source whose event clock runs it (`None`: the collector clock).
    fn event_source(&self) -> Option<SourceKey> {
        match self {
            Timer::Started { pipe, .. } | Timer::Finished { pipe, .. } => Some(pipe.source_key()),
            _ => None,
        }
    }
}

/// The armed timers.
#[derive(Debug)]
pub(crate) struct Timers {
    event: FastMap<SourceKey, BTreeSet<(i64, Timer)>>,
    wall: BTreeSet<(i64, Timer)>,
    armed: ShardedMap<Timer, i64>,
    per_sub: HashMap<String, usize>,
    cap: usize,
}

impl Timers {
    /// `cap`: armed timers per subscription.
    pub(crate) fn new(cap: usize) -> Timers {
        Timers {
            event: FastMap::default(),
            wall: BTreeSet::new(),
            armed: ShardedMap::default(),
            per_sub: HashMap::new(),
            cap,
        }
    }

    /// Arms `t` at `at` unless it is armed at or before `at` already;
    /// false when the subscription's bound refused it.
    pub(crate) fn arm(&mut self, t: &Timer, at: i64) -> bool {
        let previous = match self.armed.get(t) {
            Some(&x) if x <= at => return true,
            Some(&x) => Some(x),
            None => {
                let n = match self.per_sub.get_mut(t.sub()) {
                    Some(n) => n,
                    None => self.per_sub.entry(t.sub().to_string()).or_default(),
                };
                if *n >= self.cap {
                    return false;
                }
                *n += 1;
                None
            }
        };
        let t = t.clone();
        self.armed.insert(t.clone(), at);
        match t.event_source() {
            Some(source) => {
                let set = self.event.entry(source).or_default();
                if let Some(x) = previous {
                    set.remove(&(x, t.clone()));
                }
                set.insert((at, t));
            }
            None => {
                if let Some(x) = previous {
                    self.wall.remove(&(x, t.clone()));
                }
                self.wall.insert((at, t));
            }
        }
        true
    }

    /// Forgets `t` if armed.
    pub(crate) fn unarm(&mut self, t: &Timer) {
        let Some(at) = self.armed.remove(t) else {
            return;
        };
        if let Some(n) = self.per_sub.get_mut(t.sub()) {
            *n = n.saturating_sub(1);
        }
        let entry = (at, t.clone());
        match t.event_source() {
            Some(source) => {
                if let Some(set) = self.event.get_mut(&source) {
                    set.remove(&entry);
                    if set.is_empty() {
                        self.event.remove(&source);
                    }
                }
            }
            None => {
                self.wall.remove(&entry);
            }
        }
    }

    /// Adds a silence edge (not counted: silences are bounded themselves).
    pub(crate) fn edge(&mut self, at: i64, t: Timer) {
        self.wall.insert((at, t));
    }

    pub(crate) fn remove_edge(&mut self, at: i64, t: &Timer) {
        self.wall.remove(&(at, t.clone()));
    }

    /// The earliest collector-clock deadline.
    pub(crate) fn next_wall(&self) -> Option<i64> {
        self.wall.first().map(|(d, _)| *d)
    }

    /// Takes the earliest collector-clock timer due at `now`, with the
    /// time it was armed at.
    pub(crate) fn pop_wall(&mut self, now: i64) -> Option<(i64, Timer)> {
        let (at, _) = self.wall.first()?;
        if *at > now {
            return None;
        }
        let (at, t) = self.wall.pop_first()?;
        if !matches!(t, Timer::SilenceEdge { .. }) && self.armed.get(&t) == Some(&at) {
            self.armed.remove(&t);
            if let Some(n) = self.per_sub.get_mut(t.sub()) {
                *n = n.saturating_sub(1);
            }
        }
        Some((at, t))
    }

    /// Takes the earliest timer of `source` whose deadline its event clock
    /// passed.
    pub(crate) fn pop_event(&mut self, source: &SourceKey, clock: i64) -> Option<Timer> {
        let set = self.event.get_mut(source)?;
        let Some((at, _)) = set.first() else {
            self.event.remove(source);
            return None;
        };
        if *at >= clock {
            return None;
        }
        let (at, t) = set.pop_first()?;
        if set.is_empty() {
            self.event.remove(source);
        }
        if self.armed.get(&t) == Some(&at) {
            self.armed.remove(&t);
            if let Some(n) = self.per_sub.get_mut(t.sub()) {
                *n = n.saturating_sub(1);
            }
        }
        Some(t)
    }

    /// Armed timers and their estimated bytes (each is held twice: by
    /// deadline and by identity).
    pub(crate) fn memory(&self) -> (usize, usize) {
        let entry = std::mem::size_of::<(i64, Timer)>();
        let bytes = crate::memory::sampled_sum(self.armed.keys(), self.armed.len(), |t| {
            2 * (t.heap_bytes() + entry) + entry / 2
        });
        let table = self.armed.capacity() * (std::mem::size_of::<(Timer, i64)>() + 1);
        (self.armed.len(), bytes + table)
    }

    pub(crate) fn purge(&mut self, sub: &str) {
        self.event.retain(|k, _| k.sub != sub);
        self.wall.retain(|(_, t)| t.sub() != sub);
        self.armed.retain(|t, _| t.sub() != sub);
        self.per_sub.remove(sub);
    }
}

/// The pipe's base for overdue deadlines: its last start or end, or when
/// it was first seen, and never before its source came back from a
/// silence.
fn base(p: &PipeState) -> i64 {
    let b = match (p.last_started, p.last_finished) {
        (Some(s), Some(f)) => s.max(f),
        (Some(s), None) => s,
        (None, Some(f)) => f,
        (None, None) => p.known_since,
    };
    b.max(p.resumed_at.unwrap_or(i64::MIN))
}

/// When `p` should have started under `rule` (event time), grace included.
pub(crate) fn started_deadline(rule: &CompiledRule, p: &PipeState) -> Option<i64> {
    let Kind::StartedOverdue { grace, interval } = rule.kind else {
        return None;
    };
    if !p.enabled || p.running_since.is_some() {
        return None;
    }
    let base = base(p);
    let expected = match (interval, &p.schedule) {
        (Some(i), _) => base.saturating_add(i),
        (None, ScheduleSpec::Interval(s)) => base.saturating_add((s * 1e9) as i64),
        (None, ScheduleSpec::Cron(_)) => {
            let c = p.cron.as_ref()?;
            let after = chrono::DateTime::from_timestamp_nanos(base);
            let next = c.after(&after).next()?;
            next.timestamp_nanos_opt()?
        }
        (None, ScheduleSpec::Unknown | ScheduleSpec::Manual) => return None,
    };
    Some(expected.saturating_add(grace))
}

/// When the run of `p` should have ended (event time).
pub(crate) fn finished_deadline(limit: i64, p: &PipeState) -> Option<i64> {
    let started = p.running_since?;
    Some(
        started
            .max(p.resumed_at.unwrap_or(i64::MIN))
            .saturating_add(limit),
    )
}

/// A node's cron expression, if it is short, valid and fires at all.
pub(crate) fn parse_cron(expr: &str) -> Option<cron::Schedule> {
    schemas::schedule::parse_cron(expr).ok()
}

/// The schedule of a pipe from its config entity (`pump.mode`,
/// `pump.schedule_interval`, `pump.cron_expr`).
pub(crate) fn schedule_of(pipe: &serde_json::Value) -> (ScheduleSpec, Option<Arc<cron::Schedule>>) {
    let pump = pipe.get("pump");
    let mode = pump
        .and_then(|p| p.get("mode"))
        .and_then(|m| m.as_str())
        .unwrap_or("scheduled");
    let interval = pump
        .and_then(|p| p.get("schedule_interval"))
        .and_then(|v| v.as_f64());
    let cron_expr = pump
        .and_then(|p| p.get("cron_expr"))
        .and_then(|v| v.as_str());
    if mode != "scheduled" {
        return (ScheduleSpec::Manual, None);
    }
    if let Some(c) = cron_expr {
        // An unparsable or never-firing expression expects nothing.
        return match parse_cron(c) {
            Some(s) => (ScheduleSpec::Cron(c.to_string()), Some(Arc::new(s))),
            None => (ScheduleSpec::Unknown, None),
        };
    }
    match interval.unwrap_or(30.0) {
        s if s.is_finite() && s > 0.0 => (
            ScheduleSpec::Interval(s.clamp(1.0, MAX_SCHEDULE_SECS)),
            None,
        ),
        _ => (ScheduleSpec::Unknown, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schedules_from_node_configs_are_sane() {
        let s = |pump: serde_json::Value| schedule_of(&json!({"pump": pump})).0;
        assert_eq!(
            s(json!({"schedule_interval": 60})),
            ScheduleSpec::Interval(60.0)
        );
        assert_eq!(s(json!({"schedule_interval": -5})), ScheduleSpec::Unknown);
        assert_eq!(
            s(json!({"schedule_interval": 0.001})),
            ScheduleSpec::Interval(1.0)
        );
        assert_eq!(s(json!({"mode": "manual"})), ScheduleSpec::Manual);
        assert_eq!(s(json!({"cron_expr": "0 0 30 2 *"})), ScheduleSpec::Unknown);
        assert_eq!(
            s(json!({"cron_expr": "*/5 * * * *"})),
            ScheduleSpec::Cron("*/5 * * * *".into())
        );
        assert_eq!(
            s(json!({"cron_expr": "x".repeat(300)})),
            ScheduleSpec::Unknown
        );
    }

    #[test]
    fn timers_hold_only_armed_entries_and_respect_the_bound() {
        let mut t = Timers::new(2);
        let rep = |fp: &str| Timer::Repeat {
            sub: "s".into(),
            fp: fp.into(),
        };
        assert!(t.arm(&rep("a"), 10));
        assert!(t.arm(&rep("a"), 5)); // earlier: moved
        assert!(t.arm(&rep("a"), 50)); // later: kept at 5
        assert!(t.arm(&rep("b"), 20));
        assert!(!t.arm(&rep("c"), 30), "the bound");
        assert_eq!(t.next_wall(), Some(5));
        assert_eq!(t.pop_wall(100), Some((5, rep("a"))));
        assert!(t.arm(&rep("c"), 30));
        t.unarm(&rep("b"));
        assert_eq!(t.pop_wall(100), Some((30, rep("c"))));
        assert_eq!(t.pop_wall(100), None);
    }
}

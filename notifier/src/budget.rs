//! Evaluation budgets: how much evaluation one subscription may have in
//! one call of the engine, so that no tenant's rules are charged to
//! another's ingest.
//!
//! A [`Budget`] meters evaluation time per subscription (or, in tests, a
//! number of records). The service caps each subscription's time by what
//! is left of its share of evaluation time (`Limits::eval_share`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What one subscription may spend on evaluation in one call of
/// [`Engine::on_records`] or [`Engine::drain`]: once it is used up, the
/// subscription's further records are deferred (evaluated later, in
/// order); a single record whose evaluation alone outlasts it is cut (its
/// remaining rules skipped).
#[derive(Debug)]
pub struct Budget {
    meter: Meter,
    /// Per-subscription limits below the meter's (what is left of a
    /// subscription's share of evaluation time).
    allow: HashMap<String, Duration>,
    spent: HashMap<String, (Duration, u64)>,
    /// Records deferred, per subscription.
    pub deferred: HashMap<String, u64>,
    /// Records not (fully) evaluated, per subscription: cut, or dropped
    /// because the subscription's backlog was full.
    pub skipped: HashMap<String, u64>,
}

#[derive(Debug, Clone, Copy)]
enum Meter {
    Time(Duration),
    Records(u64),
}

pub(crate) fn bump(m: &mut HashMap<String, u64>, sub: &str) {
    match m.get_mut(sub) {
        Some(n) => *n += 1,
        None => {
            m.insert(sub.to_string(), 1);
        }
    }
}

impl Budget {
    /// Evaluation time per subscription.
    pub fn new(limit: Duration) -> Budget {
        Budget::with(Meter::Time(limit))
    }

    /// A number of records per subscription, never cut (deterministic
    /// tests).
    pub fn records(n: u64) -> Budget {
        Budget::with(Meter::Records(n))
    }

    /// No limit.
    pub fn unlimited() -> Budget {
        Budget::new(Duration::MAX)
    }

    fn with(meter: Meter) -> Budget {
        Budget {
            meter,
            allow: HashMap::new(),
            spent: HashMap::new(),
            deferred: HashMap::new(),
            skipped: HashMap::new(),
        }
    }

    /// Lowers `sub`'s time limit to `d` (its share of evaluation time
    /// left; zero defers all its records).
    pub fn allow(&mut self, sub: &str, d: Duration) {
        self.allow.insert(sub.to_string(), d);
    }

    /// Evaluation time spent per subscription.
    pub fn spent(&self) -> impl Iterator<Item = (&str, Duration)> + '_ {
        self.spent.iter().map(|(s, (d, _))| (s.as_str(), *d))
    }

    fn limit(&self, sub: &str, limit: Duration) -> Duration {
        self.allow.get(sub).map_or(limit, |a| limit.min(*a))
    }

    pub(crate) fn over(&self, sub: &str) -> bool {
        let (t, n) = self.spent.get(sub).copied().unwrap_or_default();
        match self.meter {
            Meter::Time(limit) => {
                let limit = self.limit(sub, limit);
                t > limit || limit.is_zero()
            }
            Meter::Records(max) => n >= max,
        }
    }

    /// When a record started at `t` must stop evaluating: once it alone
    /// used a whole budget (a record is started only while the
    /// subscription has some left, and then may finish).
    pub(crate) fn deadline(&self, t: Instant) -> Option<Instant> {
        match self.meter {
            Meter::Time(limit) => t.checked_add(limit),
            Meter::Records(_) => None,
        }
    }

    pub(crate) fn charge(&mut self, sub: &str, d: Duration) {
        match self.spent.get_mut(sub) {
            Some((t, n)) => {
                *t = t.saturating_add(d);
                *n += 1;
            }
            None => {
                self.spent.insert(sub.to_string(), (d, 1));
            }
        }
    }
}

//! Each subscription's share of evaluation time: a token bucket per
//! subscription that refills at [`Limits::eval_share`] of wall time, up to
//! [`Limits::eval_budget`]. An evaluation of a subscription's records gets
//! a [`Budget`] capped by what is left in its bucket and pays back what it
//! spent; a subscription with expensive rules runs out and waits (its
//! records wait, in order), while the others keep their share.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::budget::Budget;
use crate::limits::Limits;

/// What is left of one subscription's share; may go below zero by the
/// overrun of a record that was cut.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    secs: f64,
    at: Instant,
}

/// The buckets of every subscription.
#[derive(Debug, Default)]
pub(crate) struct Shares {
    /// Short critical sections; never held across an await.
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Short critical sections; a poisoned lock is taken over (buckets are
/// plain numbers).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn share(l: &Limits) -> f64 {
    l.eval_share.clamp(0.01, 64.0)
}

fn unlimited(l: &Limits) -> bool {
    l.eval_budget == Duration::MAX
}

impl Shares {
    /// A budget of [`Limits::eval_budget`] per subscription, capped by
    /// what is left of each of `subs`' share of evaluation time.
    pub(crate) fn budget<'a>(&self, l: &Limits, subs: impl Iterator<Item = &'a str>) -> Budget {
        let mut budget = Budget::new(l.eval_budget);
        if unlimited(l) {
            return budget;
        }
        let cap = l.eval_budget.as_secs_f64();
        let now = Instant::now();
        let mut b = lock(&self.buckets);
        for sub in subs {
            let k = b
                .entry(sub.to_string())
                .or_insert(Bucket { secs: cap, at: now });
            k.secs = (k.secs + now.duration_since(k.at).as_secs_f64() * share(l)).min(cap);
            k.at = now;
            budget.allow(
                sub,
                Duration::try_from_secs_f64(k.secs.max(0.0)).unwrap_or_default(),
            );
        }
        budget
    }

    /// Takes what `budget` spent from the subscriptions' shares.
    pub(crate) fn settle(&self, l: &Limits, budget: &Budget) {
        if unlimited(l) {
            return;
        }
        let floor = -l.eval_budget.as_secs_f64();
        let mut b = lock(&self.buckets);
        for (sub, d) in budget.spent() {
            if let Some(k) = b.get_mut(sub) {
                k.secs = (k.secs - d.as_secs_f64()).max(floor);
            }
        }
    }

    /// How long until one of `subs` has a share of evaluation time again
    /// (`None`: `subs` is empty).
    pub(crate) fn wait(&self, l: &Limits, subs: &[&str]) -> Option<Duration> {
        if subs.is_empty() {
            return None;
        }
        if unlimited(l) {
            return Some(Duration::ZERO);
        }
        let want = (l.eval_budget.as_secs_f64() / 10.0).min(0.001);
        let now = Instant::now();
        let b = lock(&self.buckets);
        let wait = subs
            .iter()
            .map(|s| match b.get(*s) {
                None => 0.0,
                Some(k) => {
                    let has = k.secs + now.duration_since(k.at).as_secs_f64() * share(l);
                    ((want - has) / share(l)).max(0.0)
                }
            })
            .fold(f64::INFINITY, f64::min);
        Some(Duration::try_from_secs_f64(wait).unwrap_or(Duration::from_secs(1)))
    }

    pub(crate) fn remove(&self, sub: &str) {
        lock(&self.buckets).remove(sub);
    }
}

//! `pump_completed_value_too_high` / `_too_low`: a `metrics` key of a
//! completed run, or its sum over `interval`, against `limit`.
//!
//! A summed window keeps its runs per (rule, pipe); runs closer together
//! than 1/1024 of the window are added up in one entry, so a window holds
//! about 1,024 entries at most (its sum is exact; a run leaves the window
//! up to 1/1024 of it early).

use std::collections::VecDeque;
use std::sync::Arc;

use schemas::{EventType, ExecutionBody, Record};

use crate::engine::Engine;
use crate::lifecycle::Fire;
use crate::model::{secs, short, PipeKey};
use crate::rule::{CompiledRule, Kind};

/// Entries of a window, about.
const WINDOW_BUCKETS: i64 = 1024;

impl Engine {
    pub(crate) fn value_on_completed(
        &mut self,
        rule: &Arc<CompiledRule>,
        r: &Record,
        e: &ExecutionBody,
        key: &PipeKey,
        now: i64,
    ) {
        let Kind::Value {
            high,
            key: mkey,
            limit,
            interval,
        } = &rule.kind
        else {
            return;
        };
        if e.event_type != EventType::PumpCompleted {
            return;
        }
        let Some(v) = e.metrics.get(mkey) else {
            return;
        };
        let measured = match interval {
            Some(iv) => {
                let wk = format!("{}\0{}\0{}\0{}", key.sub, rule.id(), key.source, key.pipe);
                match self.window_add(&wk, &key.sub, r.ts, v, *iv) {
                    Some(sum) => sum,
                    None => return,
                }
            }
            None => v,
        };
        let bad = if *high {
            measured > *limit
        } else {
            measured < *limit
        };
        if !bad {
            self.resolve_pipe(rule, key, now);
            return;
        }
        let what = match interval {
            Some(iv) => format!("summed over {}", secs(*iv)),
            None => "in the last run".into(),
        };
        let f = Fire::new(
            rule,
            Some(&r.source),
            Some(&e.pipe),
            r.ts,
            format!(
                "{mkey} of pipe {} on {} is {measured} {what} ({} {limit})",
                short(&e.pipe, 200),
                short(&r.source, 200),
                if *high { "above" } else { "below" }
            ),
        )
        .note("value", measured.to_string())
        .note("limit", limit.to_string());
        self.fire(f, now);
    }

    /// Adds a completed run's value to the window `wk` (`iv` long) and
    /// returns the window's sum; `None` when the subscription's bound on
    /// windows and series is reached.
    fn window_add(&mut self, wk: &str, sub: &str, ts: i64, v: f64, iv: i64) -> Option<f64> {
        if !self.windows.contains_key(wk) {
            if self.count(sub).series >= self.limits.max_series_per_subscription {
                self.limited(sub, "series");
                return None;
            }
            self.count(sub).series += 1;
            self.windows.insert(wk.to_string(), VecDeque::new());
        }
        let w = self.windows.get_mut(wk)?;
        let bucket = (iv / WINDOW_BUCKETS).max(1);
        match w.back_mut() {
            Some((t, sum)) if ts >= *t && ts - *t < bucket => *sum += v,
            _ => w.push_back((ts, v)),
        }
        let cut = ts.saturating_sub(iv);
        while w.front().is_some_and(|(t, _)| *t <= cut) {
            w.pop_front();
        }
        // Runs out of order can defeat the bucketing: a hard bound.
        while w.len() > 2 * WINDOW_BUCKETS as usize {
            w.pop_front();
        }
        let sum = w.iter().map(|(_, v)| v).sum::<f64>();
        self.dirty.windows.insert(wk.to_string());
        Some(sum)
    }
}

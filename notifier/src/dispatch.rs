//! The evaluation path: what comes in ([`Input`]: stored records, metric
//! samples, source conflicts, the clock) and where it goes.
//!
//! Records are evaluated in order, within a [`Budget`] per subscription: a
//! subscription past its budget has the rest of its records deferred, in
//! order, to a bounded per-subscription backlog that [`Engine::drain`]
//! works through in later rounds (its later records queue behind them, so
//! events never overtake each other). Per record: the source's event
//! clock (a jump after a silence gives its pipes a fresh grace, see
//! `inhibit.rs`), then the record's body against the rules of its
//! subscription (`conditions/`), then, per source of the batch, the
//! heartbeat and the event-time deadlines. The collector clock runs
//! heartbeats, repeats, resolutions, metric `for`, silence edges and group
//! flushes ([`Engine::tick`], bounded work per call).

use std::collections::VecDeque;
use std::time::Instant;

use schemas::{Body, Record};

use crate::budget::{bump, Budget};
use crate::engine::Engine;
use crate::model::SourceKey;
use crate::schedule::Timer;

/// Timers one [`Engine::tick`] runs at most; the caller ticks again, with
/// the engine released in between, while it says more are due.
pub const MAX_TIMERS_PER_TICK: usize = 1024;

/// One pushed metric sample, borrowed from the collector's decoded request.
#[derive(Debug, Clone, Copy)]
pub struct SampleRef<'a> {
    pub name: &'a str,
    /// Sorted labels, including `subscription` and `instance`.
    pub labels: &'a [(String, String)],
    pub value: f64,
}

/// What the engine evaluates. Everything it needs is in the input and the
/// engine's state, so a queue of these could feed an evaluation thread.
#[derive(Debug)]
pub enum Input<'a> {
    /// Records just stored (one commit group).
    Records(&'a [Record]),
    /// Pushed metric samples of one subscription.
    Samples {
        subscription: &'a str,
        samples: &'a [SampleRef<'a>],
    },
    /// The collector refused records of a source.
    Conflict {
        subscription: &'a str,
        source: &'a str,
        detail: &'a str,
    },
    /// The collector clock moved: run what is due (bounded).
    Tick,
    /// Evaluate deferred records (one subscription's round).
    Drain,
}

/// What [`Engine::handle`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handled {
    /// More of the same is due now (timers or deferred records).
    pub more: bool,
    /// Records evaluated from the backlog.
    pub drained: usize,
}

impl Engine {
    /// Evaluates one input at collector time `now` within `budget`.
    pub fn handle(&mut self, input: Input<'_>, now: i64, budget: &mut Budget) -> Handled {
        let mut out = Handled {
            more: false,
            drained: 0,
        };
        match input {
            Input::Records(records) => self.on_records(records, now, budget),
            Input::Samples {
                subscription,
                samples,
            } => self.on_samples(subscription, samples, now),
            Input::Conflict {
                subscription,
                source,
                detail,
            } => self.on_source_conflict(subscription, source, detail, now),
            Input::Tick => out.more = self.tick(now),
            Input::Drain => {
                out.drained = self.drain(now, budget);
                out.more = out.drained > 0 && !self.backlog_order.is_empty();
            }
        }
        out
    }

    /// Evaluates records just stored (one commit group) within `budget`.
    /// A subscription past its budget has the rest of its records deferred
    /// ([`Engine::drain`] evaluates them later, in order); while it has
    /// deferred records, its new ones queue behind them.
    pub fn on_records(&mut self, records: &[Record], now: i64, budget: &mut Budget) {
        let mut touched: Vec<SourceKey> = Vec::new();
        for r in records {
            let sub = r.subscription.as_str();
            let waiting = self.backlog.get(sub).is_some_and(|q| !q.is_empty());
            if waiting || (self.index.has(sub) && budget.over(sub)) {
                self.defer(r, budget);
                continue;
            }
            self.evaluate_record(r, now, budget, &mut touched);
        }
        self.finish_sources(touched, now);
    }

    /// Evaluates `records` of subscription `sub`, in order, while its
    /// `budget` lasts; returns how many it evaluated. Nothing is deferred:
    /// the evaluation thread keeps the rest (they wait in the store's
    /// commit feed) and goes on with them in its next round.
    pub fn evaluate_while<'a>(
        &mut self,
        sub: &str,
        records: impl Iterator<Item = &'a Record>,
        now: i64,
        budget: &mut Budget,
    ) -> usize {
        let mut touched: Vec<SourceKey> = Vec::new();
        let mut done = 0;
        let metered = self.index.has(sub);
        for r in records {
            if metered && budget.over(sub) {
                break;
            }
            self.evaluate_record(r, now, budget, &mut touched);
            done += 1;
        }
        self.finish_sources(touched, now);
        done
    }

    fn defer(&mut self, r: &Record, budget: &mut Budget) {
        let sub = r.subscription.as_str();
        let len = self.backlog.get(sub).map_or(0, VecDeque::len);
        if len >= self.limits.max_deferred_per_subscription {
            bump(&mut budget.skipped, sub);
            return;
        }
        bump(&mut budget.deferred, sub);
        if len == 0 {
            self.backlog_order.push_back(sub.to_string());
        }
        self.backlog
            .entry(sub.to_string())
            .or_default()
            .push_back(r.clone());
    }

    /// The subscriptions with deferred records.
    pub fn backlogged(&self) -> Vec<String> {
        self.backlog_order.iter().cloned().collect()
    }

    /// Evaluates deferred records of the next subscription that has some
    /// and whose `budget` is not used up; returns how many records it
    /// evaluated (0: none of them may run now).
    pub fn drain(&mut self, now: i64, budget: &mut Budget) -> usize {
        for _ in 0..self.backlog_order.len() {
            let Some(sub) = self.backlog_order.pop_front() else {
                break;
            };
            if budget.over(&sub) {
                self.backlog_order.push_back(sub);
                continue;
            }
            let mut touched = Vec::new();
            let mut done = 0;
            while !budget.over(&sub) {
                let Some(r) = self.backlog.get_mut(&sub).and_then(VecDeque::pop_front) else {
                    break;
                };
                self.evaluate_record(&r, now, budget, &mut touched);
                done += 1;
            }
            self.finish_sources(touched, now);
            if self.backlog.get(&sub).is_some_and(|q| !q.is_empty()) {
                self.backlog_order.push_back(sub);
            } else {
                self.backlog.remove(&sub);
            }
            return done;
        }
        0
    }

    fn evaluate_record(
        &mut self,
        r: &Record,
        now: i64,
        budget: &mut Budget,
        touched: &mut Vec<SourceKey>,
    ) {
        let same = touched
            .last()
            .is_some_and(|k| k.sub == r.subscription && k.source == r.source);
        if !same {
            let k = SourceKey::new(&r.subscription, &r.source);
            if let Some(i) = touched.iter().position(|x| x == &k) {
                // Move it last so the next record of it is "same".
                let k = touched.remove(i);
                touched.push(k);
            } else if self.track_source(&k) {
                touched.push(k);
            }
        }
        if let Some(k) = touched
            .last()
            .filter(|k| k.sub == r.subscription && k.source == r.source)
        {
            self.advance_clock(k, r.ts, now);
        }
        // Subscriptions without rules cost nothing to evaluate.
        let started = self.index.has(&r.subscription).then(Instant::now);
        self.deadline = started.and_then(|t| budget.deadline(t));
        self.cut = false;
        match &r.body {
            Body::Execution(e) => self.on_execution(r, e, now),
            Body::Health(h) => self.on_health(r, h, now),
            Body::Config(c) => self.on_config(r, &c.config),
            Body::Log(l) => self.on_log(r, l, now),
            Body::System(_) => {}
        }
        self.deadline = None;
        if let Some(t) = started {
            budget.charge(&r.subscription, t.elapsed());
            if self.cut {
                bump(&mut budget.skipped, &r.subscription);
            }
        }
    }

    /// Moves `key`'s event clock to `ts`; a jump over a silence first runs
    /// what expired before it, then gives the source's pipes a fresh grace.
    fn advance_clock(&mut self, key: &SourceKey, ts: i64, now: i64) {
        let Some(prev) = self.sources.get(key).map(|s| s.newest_ts) else {
            return;
        };
        let jump = ts.saturating_sub(prev);
        // The cheap bound first: most records move the clock a little.
        if prev > 0 && jump > self.min_silence_gap(&key.sub) && jump > self.silence_gap(key) {
            self.run_event_timers(key, now);
            self.source_returned(key, ts, now);
        }
        if let Some(s) = self.sources.get_mut(key) {
            s.newest_ts = s.newest_ts.max(ts);
        }
    }

    /// Whether the record being evaluated is out of time (then its
    /// remaining rules are skipped).
    pub(crate) fn out_of_time(&mut self) -> bool {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.cut = true;
        }
        self.cut
    }

    /// After records of `touched` sources: they are alive, and their event
    /// clocks moved.
    fn finish_sources(&mut self, touched: Vec<SourceKey>, now: i64) {
        for k in touched {
            if let Some(s) = self.sources.get_mut(&k) {
                s.last_arrival = now;
            }
            self.source_alive(&k, now);
            self.run_event_timers(&k, now);
            self.dirty.sources.insert(k);
        }
    }

    /// Runs the collector-clock deadlines up to `now`, at most
    /// [`MAX_TIMERS_PER_TICK`] of them; true when more are due (tick
    /// again, after releasing the engine).
    pub fn tick(&mut self, now: i64) -> bool {
        for _ in 0..MAX_TIMERS_PER_TICK {
            let Some((at, t)) = self.timers.pop_wall(now) else {
                return false;
            };
            match t {
                Timer::SilenceEdge { sub, .. } => self.flush_pending(&sub, at, now),
                Timer::Heartbeat { rule, source } => self.heartbeat_due(&rule, &source, at, now),
                Timer::ResolveAt { sub, fp } => self.resolve_due(&sub, &fp, at, now),
                Timer::Repeat { fp, .. } => self.repeat_due(&fp, at, now),
                Timer::Metric { key } => self.metric_due(&key, at, now),
                Timer::GroupFlush { sub, key } => self.flush_group(&sub, &key, now),
                Timer::Started { .. } | Timer::Finished { .. } => {}
            }
        }
        self.timers.next_wall().is_some_and(|t| t <= now)
    }
}

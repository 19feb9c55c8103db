//! The rule engine's memory: an estimate per part, from the entries it
//! holds and the sizes of their keys and values (heap capacities, plus the
//! tables' per-entry overhead), exported as
//! `notifier_engine_memory_bytes{part}` and `notifier_engine_entries{part}`.
//!
//! Every part is bounded per subscription by a limit (pipes, sources,
//! alerts, timers, series, rules; see `limits.rs`), so the engine's memory
//! is bounded by (bytes per entry) x (limit) x (subscriptions). Compiled
//! regexes are not in the estimate (their bound is `--max-regex-bytes` per
//! rule or silence); neither are the allocator's own overheads.

use std::collections::{BTreeSet, VecDeque};
use std::mem::size_of;
use std::sync::Arc;

use crate::engine::Engine;
use crate::model::{Alert, PipeKey, PipeState, SourceKey, SourceState};
use crate::rule::{CompiledRule, RuleKey};
use crate::service::{lock, Notifier};
use crate::telemetry::labels;

/// Entries and estimated bytes of one part of the engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Part {
    pub entries: usize,
    pub bytes: usize,
}

/// The engine's estimated memory, by part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    pub parts: Vec<(&'static str, Part)>,
}

impl Memory {
    pub fn part(&self, name: &str) -> Part {
        self.parts
            .iter()
            .find(|(n, _)| *n == name)
            .map_or_else(Part::default, |(_, p)| *p)
    }

    pub fn total(&self) -> usize {
        self.parts.iter().map(|(_, p)| p.bytes).sum()
    }
}

/// Bytes of a hash table of `cap` slots of `T` (hashbrown: one control
/// byte per slot).
fn table<T>(cap: usize) -> usize {
    cap * (size_of::<T>() + 1)
}

/// Bytes of `n` entries of `T` in a B-tree (nodes about two thirds full).
fn btree<T>(n: usize) -> usize {
    n * size_of::<T>() * 3 / 2
}

/// Entries whose sizes are summed per part at most; a larger part is
/// estimated from them. The estimate runs on the evaluation thread under
/// the engine's lock: summing 100,000 pipes and serializing 10,000 rules'
/// parameters took 10-24 ms there, while every subscription's evaluation
/// waited.
const SAMPLE: usize = 1024;

/// The sum of `f` over `items` (`len` of them), from at most [`SAMPLE`]
/// (the first ones: hash order, or key order for B-trees).
pub(crate) fn sampled_sum<T>(
    items: impl Iterator<Item = T>,
    len: usize,
    mut f: impl FnMut(T) -> usize,
) -> usize {
    let (mut n, mut sum) = (0usize, 0usize);
    for item in items.take(SAMPLE) {
        sum += f(item);
        n += 1;
    }
    if n == 0 || n >= len {
        return sum;
    }
    (sum as u128 * len as u128 / n as u128).min(usize::MAX as u128) as usize
}

fn text(s: &str) -> usize {
    s.len()
}

fn pipe_key(k: &PipeKey) -> usize {
    text(&k.sub) + text(&k.source) + text(&k.pipe)
}

fn source_key(k: &SourceKey) -> usize {
    text(&k.sub) + text(&k.source)
}

fn rule(r: &CompiledRule) -> usize {
    let n = &r.rule;
    let strings = text(&n.id)
        + text(&n.name)
        + text(&n.description)
        + text(&n.subscription)
        + n.source.as_deref().map_or(0, text)
        + n.pipes
            .iter()
            .map(|p| size_of::<String>() + text(p))
            .sum::<usize>()
        + n.receivers
            .iter()
            .map(|p| size_of::<String>() + text(p))
            .sum::<usize>()
        + n.group_by
            .iter()
            .map(|p| size_of::<String>() + text(p))
            .sum::<usize>()
        + serde_json::to_string(&n.params).map_or(0, |s| s.len() * 2);
    // A glob keeps its pattern and a token per character.
    let globs: usize = n.pipes.iter().map(|p| p.len() * 24).sum::<usize>()
        + n.source.as_deref().map_or(0, |s| s.len() * 24);
    size_of::<CompiledRule>() + strings * 2 + globs
}

fn alert(a: &Alert) -> usize {
    let map: usize = a
        .labels
        .iter()
        .chain(a.annotations.iter())
        .map(|(k, v)| btree::<(String, String)>(1) + text(k) + text(v))
        .sum();
    size_of::<Alert>() + text(&a.fingerprint) + text(&a.rule_id) + text(&a.subscription) + map
}

impl Engine {
    /// The estimated memory of the engine's state, by part.
    pub fn memory(&self) -> Memory {
        let mut parts = Vec::new();
        let pipes_of: usize = self
            .pipes_of
            .iter()
            .map(|(k, set)| {
                source_key(k) + sampled_sum(set.iter(), set.len(), |p| btree::<String>(1) + text(p))
            })
            .sum();
        parts.push((
            "pipes",
            Part {
                entries: self.pipes.len(),
                bytes: table::<(PipeKey, PipeState)>(self.pipes.capacity())
                    + sampled_sum(self.pipes.keys(), self.pipes.len(), pipe_key)
                    + table::<(SourceKey, BTreeSet<String>)>(self.pipes_of.capacity())
                    + pipes_of,
            },
        ));
        parts.push((
            "sources",
            Part {
                entries: self.sources.len(),
                bytes: table::<(SourceKey, SourceState)>(self.sources.capacity())
                    + self.sources.keys().map(source_key).sum::<usize>(),
            },
        ));
        parts.push((
            "rules",
            Part {
                entries: self.rules.len(),
                bytes: btree::<(RuleKey, Arc<CompiledRule>)>(self.rules.len())
                    + sampled_sum(self.rules.values(), self.rules.len(), |r| rule(r))
                    + self.index.rule_bytes(),
            },
        ));
        let (cached, cache_bytes) = self.index.cache_memory();
        parts.push((
            "index_cache",
            Part {
                entries: cached,
                bytes: cache_bytes,
            },
        ));
        let (timers, timer_bytes) = self.timers.memory();
        parts.push((
            "timers",
            Part {
                entries: timers,
                bytes: timer_bytes,
            },
        ));
        parts.push((
            "alerts",
            Part {
                entries: self.alerts.len(),
                bytes: sampled_sum(self.alerts.all(), self.alerts.len(), alert) * 2,
            },
        ));
        let windows = sampled_sum(self.windows.iter(), self.windows.len(), |(k, w)| {
            text(k) + w.capacity() * size_of::<(i64, f64)>()
        });
        parts.push((
            "series",
            Part {
                entries: self.windows.len() + self.metric.len() + self.groups.len(),
                bytes: table::<(String, VecDeque<(i64, f64)>)>(self.windows.capacity())
                    + windows
                    + self.metric.len() * 256
                    + self.groups.len() * 512,
            },
        ));
        let deferred: usize = self.backlog.values().map(VecDeque::len).sum();
        parts.push((
            "deferred",
            Part {
                entries: deferred,
                bytes: deferred * 512,
            },
        ));
        Memory { parts }
    }
}

impl Notifier {
    /// The rule engine's estimated memory, by part.
    pub fn memory(&self) -> Memory {
        lock(&self.inner.engine).memory()
    }

    /// Refreshes `notifier_engine_memory_bytes` and `_entries`.
    pub(crate) fn measure_memory(&self) {
        let m = self.memory();
        let g = &self.inner.metrics;
        for (name, p) in &m.parts {
            let l = labels(&[("part", name)]);
            g.engine_bytes
                .get_or_create(&l)
                .set(i64::try_from(p.bytes).unwrap_or(i64::MAX));
            g.engine_entries
                .get_or_create(&l)
                .set(i64::try_from(p.entries).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_part_is_estimated_from_a_sample_and_a_small_one_summed() {
        let small: Vec<usize> = (0..100).collect();
        assert_eq!(
            sampled_sum(small.iter(), small.len(), |v| *v),
            small.iter().sum::<usize>()
        );
        // Uniform sizes: the estimate is exact.
        let big = vec![7usize; 100_000];
        assert_eq!(sampled_sum(big.iter(), big.len(), |v| *v), 700_000);
        // Only the sample is looked at.
        let mut seen = 0;
        sampled_sum(big.iter(), big.len(), |_| {
            seen += 1;
            0
        });
        assert_eq!(seen, SAMPLE);
        assert_eq!(sampled_sum(std::iter::empty::<usize>(), 0, |v| v), 0);
    }
}

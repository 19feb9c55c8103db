//! Which rules apply to what, per subscription: pipe rules by literal pipe
//! name or by wildcard, source rules (heartbeat, health, conflict), metric
//! rules by metric name, and a bounded cache of the rules matching one
//! (source, pipe).

use std::collections::{HashMap, HashSet};
use std::mem::size_of;
use std::sync::Arc;

use crate::model::FastMap;
use crate::rule::{CompiledRule, Kind};

/// Rules matching one (subscription, source, pipe).
pub type RuleSet = Arc<[Arc<CompiledRule>]>;

#[derive(Debug, Default)]
struct SubIndex {
    /// Pipe rules whose patterns are all plain names, by name.
    literal: FastMap<String, Vec<Arc<CompiledRule>>>,
    /// Pipe rules with a wildcard pattern.
    wild: Vec<Arc<CompiledRule>>,
    /// Heartbeat, health and source-conflict rules.
    source: Vec<Arc<CompiledRule>>,
    /// Metric rules by metric name.
    metric: HashMap<String, Vec<Arc<CompiledRule>>>,
    /// Rules by `<source>\0<pipe>`; cleared when the rules change, and
    /// when it outgrows its bound (log records name arbitrary pipes).
    cache: FastMap<String, RuleSet>,
    /// The smallest heartbeat interval of the subscription's rules.
    min_heartbeat: Option<i64>,
}

impl SubIndex {
    fn refresh(&mut self) {
        self.cache.clear();
        self.min_heartbeat = self
            .source
            .iter()
            .filter_map(|r| match r.kind {
                Kind::Heartbeat { interval } => Some(interval),
                _ => None,
            })
            .min();
    }
}

/// The rule index of every subscription.
#[derive(Debug)]
pub struct Index {
    subs: HashMap<String, SubIndex>,
    scratch: String,
    cache_cap: usize,
}

impl Index {
    /// `cache_cap`: entries of one subscription's (source, pipe) cache.
    pub fn new(cache_cap: usize) -> Index {
        Index {
            subs: HashMap::new(),
            scratch: String::new(),
            cache_cap: cache_cap.max(16),
        }
    }

    /// Whether `sub` has any rule.
    pub fn has(&self, sub: &str) -> bool {
        self.subs.contains_key(sub)
    }

    pub fn add(&mut self, rule: &Arc<CompiledRule>) {
        let idx = self.subs.entry(rule.sub().to_string()).or_default();
        match &rule.kind {
            Kind::Heartbeat { .. } | Kind::Unhealthy { .. } | Kind::Conflict { .. } => {
                idx.source.push(rule.clone())
            }
            Kind::Metric { metric, .. } => idx
                .metric
                .entry(metric.clone())
                .or_default()
                .push(rule.clone()),
            _ => match &rule.literal_pipes {
                Some(names) => {
                    for n in names {
                        let v = idx.literal.entry(n.clone()).or_default();
                        if !v.iter().any(|r| Arc::ptr_eq(r, rule)) {
                            v.push(rule.clone());
                        }
                    }
                }
                None => idx.wild.push(rule.clone()),
            },
        }
        idx.refresh();
    }

    pub fn remove(&mut self, rule: &Arc<CompiledRule>) {
        let Some(idx) = self.subs.get_mut(rule.sub()) else {
            return;
        };
        let id = rule.id();
        idx.wild.retain(|r| r.id() != id);
        idx.source.retain(|r| r.id() != id);
        if let Kind::Metric { metric, .. } = &rule.kind {
            if let Some(v) = idx.metric.get_mut(metric) {
                v.retain(|r| r.id() != id);
                if v.is_empty() {
                    idx.metric.remove(metric);
                }
            }
        }
        if let Some(names) = &rule.literal_pipes {
            for n in names {
                if let Some(v) = idx.literal.get_mut(n) {
                    v.retain(|r| r.id() != id);
                    if v.is_empty() {
                        idx.literal.remove(n);
                    }
                }
            }
        }
        idx.refresh();
        if idx.literal.is_empty()
            && idx.wild.is_empty()
            && idx.source.is_empty()
            && idx.metric.is_empty()
        {
            self.subs.remove(rule.sub());
        }
    }

    /// The pipe rules of `sub` matching `source` and `pipe`.
    pub fn pipe_rules(&mut self, sub: &str, source: &str, pipe: &str) -> RuleSet {
        let Some(idx) = self.subs.get_mut(sub) else {
            return Arc::from(Vec::new());
        };
        self.scratch.clear();
        self.scratch.push_str(source);
        self.scratch.push('\0');
        self.scratch.push_str(pipe);
        if let Some(rules) = idx.cache.get(&self.scratch) {
            return rules.clone();
        }
        let mut out: Vec<Arc<CompiledRule>> = Vec::new();
        if let Some(v) = idx.literal.get(pipe) {
            out.extend(v.iter().filter(|r| r.matches_source(source)).cloned());
        }
        out.extend(
            idx.wild
                .iter()
                .filter(|r| r.matches_source(source) && r.matches_pipe(pipe))
                .cloned(),
        );
        let rules: RuleSet = Arc::from(out);
        if idx.cache.len() >= self.cache_cap {
            idx.cache.clear();
        }
        idx.cache.insert(self.scratch.clone(), rules.clone());
        rules
    }

    /// The source rules of `sub` matching `source` whose kind passes
    /// `kind`.
    pub fn source_rules(
        &self,
        sub: &str,
        source: &str,
        kind: impl Fn(&Kind) -> bool,
    ) -> Vec<Arc<CompiledRule>> {
        self.subs
            .get(sub)
            .map(|idx| {
                idx.source
                    .iter()
                    .filter(|r| kind(&r.kind) && r.matches_source(source))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The metric rules of `sub` watching metric `name`.
    pub fn metric_rules(&self, sub: &str, name: &str) -> &[Arc<CompiledRule>] {
        self.subs
            .get(sub)
            .and_then(|idx| idx.metric.get(name))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The smallest heartbeat interval of `sub`'s rules.
    pub fn min_heartbeat(&self, sub: &str) -> Option<i64> {
        self.subs.get(sub).and_then(|idx| idx.min_heartbeat)
    }

    /// Whether `sub` has metric rules.
    pub fn has_metric_rules(&self, sub: &str) -> bool {
        self.subs.get(sub).is_some_and(|idx| !idx.metric.is_empty())
    }

    /// Metric names watched, per subscription.
    pub fn watched_metrics(&self) -> HashMap<String, HashSet<String>> {
        self.subs
            .iter()
            .filter(|(_, idx)| !idx.metric.is_empty())
            .map(|(sub, idx)| (sub.clone(), idx.metric.keys().cloned().collect()))
            .collect()
    }

    pub fn purge(&mut self, sub: &str) {
        self.subs.remove(sub);
    }

    /// Estimated bytes of the rule lists (by pipe name, wildcard, source,
    /// metric) of every subscription.
    pub(crate) fn rule_bytes(&self) -> usize {
        fn lists<S>(m: &HashMap<String, Vec<Arc<CompiledRule>>, S>) -> usize {
            m.capacity() * (size_of::<(String, Vec<Arc<CompiledRule>>)>() + 1)
                + m.iter()
                    .map(|(k, v)| k.len() + v.capacity() * size_of::<usize>())
                    .sum::<usize>()
        }
        self.subs
            .values()
            .map(|i| {
                size_of::<SubIndex>()
                    + lists(&i.literal)
                    + lists(&i.metric)
                    + (i.wild.capacity() + i.source.capacity()) * size_of::<usize>()
            })
            .sum()
    }

    /// Entries and estimated bytes of the (source, pipe) caches.
    pub(crate) fn cache_memory(&self) -> (usize, usize) {
        self.subs.values().fold((0, 0), |(n, b), i| {
            let bytes = i.cache.capacity() * (size_of::<(String, RuleSet)>() + 1)
                + i.cache
                    .iter()
                    .map(|(k, v)| k.len() + 16 + v.len() * size_of::<usize>())
                    .sum::<usize>();
            (n + i.cache.len(), b + bytes)
        })
    }
}

//! Which rules apply to what, per subscription: pipe rules by literal pipe
//! name or by wildcard, source rules (heartbeat, health, conflict), metric
//! rules by metric name, and a bounded cache of the rules matching one
//! (source, pipe).

use std::collections::{HashMap, HashSet};
use std::mem::size_of;
use std::sync::Arc;

use crate::model::FastMap;
use crate::rule::{CompiledRule, Kind};
use crate::sharded::ShardedMap;

/// Rules matching one (subscription, source, pipe).
pub type RuleSet = Arc<[Arc<CompiledRule>]>;

#[derive(Debug, Default)]
struct SubIndex {
    /// Pipe rules whose patterns are all plain names, by name.
    literal: FastMap<String, Vec<Arc<CompiledRule>>>,
    /// Pipe rules with a wildcard pattern.
    wild: Vec<Arc<CompiledRule>>,
    /// The same rules by the literal prefix of each of their patterns
    /// (`pipe-9*` under `pipe-9`), with the order they were added in: a
    /// pipe seen for the first time is checked only against the rules
    /// whose prefix it starts with (a hash lookup per distinct prefix
    /// length), not against every wildcard rule of the subscription.
    by_prefix: FastMap<String, Vec<(u64, Arc<CompiledRule>)>>,
    /// Distinct prefix lengths in `by_prefix`, with how many prefixes have
    /// each; `lens` lists them, sorted (rebuilt on change).
    len_counts: FastMap<usize, usize>,
    lens: Vec<usize>,
    added: u64,
    /// Heartbeat, health and source-conflict rules.
    source: Vec<Arc<CompiledRule>>,
    /// Metric rules by metric name.
    metric: HashMap<String, Vec<Arc<CompiledRule>>>,
    /// Rules by `<source>\0<pipe>`; cleared when the rules change, and
    /// when it outgrows its bound (log records name arbitrary pipes).
    cache: ShardedMap<String, RuleSet>,
    /// The smallest heartbeat interval of the subscription's rules.
    min_heartbeat: Option<i64>,
}

impl SubIndex {
    fn refresh(&mut self) {
        self.cache.clear();
        self.lens = self.len_counts.keys().copied().collect();
        self.lens.sort_unstable();
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

/// The distinct literal prefixes of a wildcard rule's pipe patterns.
fn rule_prefixes(rule: &CompiledRule) -> Vec<&str> {
    let mut out: Vec<&str> = rule
        .pipes
        .iter()
        .map(|p| crate::rule::literal_prefix(p.as_str()))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
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
                None => {
                    idx.wild.push(rule.clone());
                    idx.added += 1;
                    let seq = idx.added;
                    for prefix in rule_prefixes(rule) {
                        let v = idx.by_prefix.entry(prefix.to_string()).or_insert_with(|| {
                            *idx.len_counts.entry(prefix.len()).or_default() += 1;
                            Vec::new()
                        });
                        v.push((seq, rule.clone()));
                    }
                }
            },
        }
        idx.refresh();
    }

    pub fn remove(&mut self, rule: &Arc<CompiledRule>) {
        let Some(idx) = self.subs.get_mut(rule.sub()) else {
            return;
        };
        let id = rule.id();
        if idx.wild.iter().any(|r| r.id() == id) {
            idx.wild.retain(|r| r.id() != id);
            for prefix in idx.by_prefix.keys().cloned().collect::<Vec<_>>() {
                let Some(v) = idx.by_prefix.get_mut(&prefix) else {
                    continue;
                };
                v.retain(|(_, r)| r.id() != id);
                if v.is_empty() {
                    idx.by_prefix.remove(&prefix);
                    if let Some(n) = idx.len_counts.get_mut(&prefix.len()) {
                        *n -= 1;
                        if *n == 0 {
                            idx.len_counts.remove(&prefix.len());
                        }
                    }
                }
            }
        }
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
        // Wildcard rules whose patterns' prefixes the pipe starts with, in
        // the order they were added (a rule under two prefixes once).
        let mut wild: Vec<&(u64, Arc<CompiledRule>)> = Vec::new();
        for &len in &idx.lens {
            let Some(prefix) = pipe.get(..len) else {
                if len > pipe.len() {
                    break;
                }
                continue;
            };
            if let Some(v) = idx.by_prefix.get(prefix) {
                wild.extend(v.iter());
            }
        }
        wild.sort_unstable_by_key(|(seq, _)| *seq);
        wild.dedup_by_key(|(seq, _)| *seq);
        out.extend(
            wild.into_iter()
                .filter(|(_, r)| r.matches_source(source) && r.matches_pipe(pipe))
                .map(|(_, r)| r.clone()),
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

    /// The subscriptions with rules (or that had some: an emptied
    /// subscription's entry may stay).
    pub fn subscriptions(&self) -> HashSet<String> {
        self.subs.keys().cloned().collect()
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
                    + i.by_prefix.capacity()
                        * (size_of::<(String, Vec<(u64, Arc<CompiledRule>)>)>() + 1)
                    + i.by_prefix
                        .iter()
                        .map(|(k, v)| k.len() + v.capacity() * size_of::<(u64, usize)>())
                        .sum::<usize>()
            })
            .sum()
    }

    /// Entries and estimated bytes of the (source, pipe) caches.
    pub(crate) fn cache_memory(&self) -> (usize, usize) {
        self.subs.values().fold((0, 0), |(n, b), i| {
            let bytes = i.cache.capacity() * (size_of::<(String, RuleSet)>() + 1)
                + crate::memory::sampled_sum(i.cache.iter(), i.cache.len(), |(k, v)| {
                    k.len() + 16 + v.len() * size_of::<usize>()
                });
            (n + i.cache.len(), b + bytes)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    use crate::rule::compile;
    use serde_json::json;

    fn rule(id: &str, pipes: &[&str]) -> Arc<CompiledRule> {
        let v = json!({"id": id, "name": id, "type": "pump_failed", "subscription": "s", "pipes": pipes});
        Arc::new(compile(serde_json::from_value(v).unwrap(), &Limits::default()).unwrap())
    }

    fn ids(set: &RuleSet) -> Vec<&str> {
        set.iter().map(|r| r.id()).collect()
    }

    /// The prefix lookup finds exactly what checking every wildcard rule
    /// finds, in the order the rules were added, each rule once.
    #[test]
    fn wildcard_rules_are_found_by_prefix_as_a_scan_of_all_would_find_them() {
        let mut idx = Index::new(1024);
        let rules = [
            rule("a", &["pipe-9*"]),
            rule("b", &["pipe-19*", "pipe-1*"]),
            rule("c", &["*-inbound"]),
            rule("d", &["pipe-1?"]),
            rule("e", &["exact"]),
            rule("f", &["pi[p]e-*", "p*"]),
            rule("g", &["pipé-*"]),
        ];
        for r in &rules {
            idx.add(r);
        }
        let names = [
            "pipe-9",
            "pipe-99",
            "pipe-19",
            "pipe-1",
            "pipe-12",
            "pipe-123",
            "crm-inbound",
            "exact",
            "p",
            "",
            "pipé-1",
            "pip",
            "pipe-9-inbound",
        ];
        for name in names {
            let want: Vec<&str> = rules
                .iter()
                .filter(|r| r.matches_pipe(name))
                .map(|r| r.id())
                .collect();
            assert_eq!(ids(&idx.pipe_rules("s", "src", name)), want, "{name:?}");
        }
        // Removing a rule takes it out of every prefix it was under.
        idx.remove(&rules[1]);
        assert_eq!(ids(&idx.pipe_rules("s", "src", "pipe-19")), ["d", "f"]);
        assert_eq!(ids(&idx.pipe_rules("s", "src", "pipe-12")), ["d", "f"]);
        // Re-adding moves it last, as an update does.
        idx.add(&rules[1]);
        assert_eq!(ids(&idx.pipe_rules("s", "src", "pipe-19")), ["d", "f", "b"]);
        for r in &rules {
            idx.remove(r);
        }
        assert!(!idx.has("s"));
    }
}

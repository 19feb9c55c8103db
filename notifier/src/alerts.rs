//! The active alerts, by fingerprint, with their per-subscription and
//! per-rule indexes (so that nothing iterates another tenant's alerts).

use std::collections::{BTreeSet, HashMap};

use crate::model::Alert;
use crate::rule::RuleKey;

#[derive(Debug, Default)]
pub(crate) struct AlertStore {
    /// By fingerprint (which covers the subscription).
    by_fp: HashMap<String, Alert>,
    /// Fingerprints of each subscription's alerts.
    of_sub: HashMap<String, BTreeSet<String>>,
    firing_by_rule: HashMap<RuleKey, usize>,
}

impl AlertStore {
    pub(crate) fn get(&self, fp: &str) -> Option<&Alert> {
        self.by_fp.get(fp)
    }

    pub(crate) fn get_mut(&mut self, fp: &str) -> Option<&mut Alert> {
        self.by_fp.get_mut(fp)
    }

    pub(crate) fn contains(&self, fp: &str) -> bool {
        self.by_fp.contains_key(fp)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_fp.len()
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &Alert> {
        self.by_fp.values()
    }

    pub(crate) fn insert(&mut self, a: Alert) {
        if self.by_fp.contains_key(&a.fingerprint) {
            self.by_fp.insert(a.fingerprint.clone(), a);
            return;
        }
        *self.firing_by_rule.entry(a.rule_key()).or_default() += 1;
        self.of_sub
            .entry(a.subscription.clone())
            .or_default()
            .insert(a.fingerprint.clone());
        self.by_fp.insert(a.fingerprint.clone(), a);
    }

    pub(crate) fn remove(&mut self, fp: &str) -> Option<Alert> {
        let a = self.by_fp.remove(fp)?;
        let rk = a.rule_key();
        if let Some(n) = self.firing_by_rule.get_mut(&rk) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.firing_by_rule.remove(&rk);
            }
        }
        if let Some(set) = self.of_sub.get_mut(&a.subscription) {
            set.remove(fp);
            if set.is_empty() {
                self.of_sub.remove(&a.subscription);
            }
        }
        Some(a)
    }

    /// Active alerts of `sub`.
    pub(crate) fn count(&self, sub: &str) -> usize {
        self.of_sub.get(sub).map_or(0, BTreeSet::len)
    }

    /// The active alerts of `sub`.
    pub(crate) fn of<'a>(&'a self, sub: &str) -> impl Iterator<Item = &'a Alert> + 'a {
        self.of_sub
            .get(sub)
            .into_iter()
            .flat_map(|s| s.iter())
            .filter_map(|fp| self.by_fp.get(fp))
    }

    /// Fingerprints of the active alerts of `sub`.
    pub(crate) fn fps_of(&self, sub: &str) -> Vec<String> {
        self.of_sub
            .get(sub)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether any alert of `rule` is active.
    pub(crate) fn rule_firing(&self, rule: &RuleKey) -> bool {
        self.firing_by_rule.contains_key(rule)
    }

    pub(crate) fn purge(&mut self, sub: &str) {
        for fp in self.fps_of(sub) {
            self.remove(&fp);
        }
        self.firing_by_rule.retain(|k, _| k.sub != sub);
    }
}

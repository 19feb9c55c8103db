//! Grouping (Alertmanager's `group_by` / `group_wait`): alerts of a rule
//! with `group_by` that start firing (or resolve) within `group_wait` of
//! each other and share the values of the `group_by` labels go out as one
//! notification listing them all, so an incident touching 50 pipes of one
//! node can be one page.
//!
//! A group opens with its first alert and goes out `group_wait` later
//! (timer `GroupFlush`), with the members that still fire and are not
//! silenced or inhibited. An alert that resolves before its group went out
//! leaves it and is never announced (neither firing nor resolved).
//! Repeats stay per alert. Groups are persisted, so a restart neither
//! loses nor repeats one.

use std::collections::BTreeMap;

use crate::engine::Engine;
use crate::model::{fingerprint, Alert, Group, NotificationKind};
use crate::rule::CompiledRule;
use crate::schedule::Timer;

fn group_key(
    rule: &CompiledRule,
    kind: NotificationKind,
    labels: &BTreeMap<String, String>,
) -> String {
    let mut k = format!("{}\0{}", kind.as_str(), rule.id());
    for v in labels.values() {
        k.push('\0');
        k.push_str(v);
    }
    k
}

fn group_labels(rule: &CompiledRule, a: &Alert) -> BTreeMap<String, String> {
    let by = rule.group.as_ref().map(|g| g.by.as_slice()).unwrap_or(&[]);
    by.iter()
        .map(|l| (l.clone(), a.labels.get(l).cloned().unwrap_or_default()))
        .collect()
}

impl Engine {
    /// Adds alert `a` of grouped `rule` to its open group of `kind`
    /// (opening one that goes out `group_wait` from now).
    pub(crate) fn group_add(
        &mut self,
        rule: &CompiledRule,
        a: &Alert,
        kind: NotificationKind,
        now: i64,
    ) {
        let Some(g) = &rule.group else {
            return;
        };
        let labels = group_labels(rule, a);
        let key = group_key(rule, kind, &labels);
        let full = format!("{}\0{key}", a.subscription);
        let group = self.groups.entry(full.clone()).or_insert_with(|| Group {
            rule: rule.key(),
            kind,
            labels,
            members: Vec::new(),
            resolved: Vec::new(),
            flush_at: now.saturating_add(g.wait),
        });
        if !group.members.contains(&a.fingerprint) {
            group.members.push(a.fingerprint.clone());
        }
        let at = group.flush_at;
        self.dirty.groups.insert(full);
        self.arm(
            Timer::GroupFlush {
                sub: a.subscription.clone(),
                key,
            },
            at,
        );
    }

    /// Alert `a` of grouped `rule` resolved after its firing was handed to
    /// a group: if that group has not gone out, the alert just leaves it;
    /// else its resolution joins the open resolved group.
    pub(crate) fn group_resolved(&mut self, rule: &CompiledRule, a: &Alert, now: i64) {
        let labels = group_labels(rule, a);
        let firing = format!(
            "{}\0{}",
            a.subscription,
            group_key(rule, NotificationKind::Firing, &labels)
        );
        if let Some(g) = self.groups.get_mut(&firing) {
            if let Some(i) = g.members.iter().position(|m| m == &a.fingerprint) {
                g.members.remove(i);
                self.dirty.groups.insert(firing);
                return;
            }
        }
        let Some(wait) = rule.group.as_ref().map(|g| g.wait) else {
            return;
        };
        let key = group_key(rule, NotificationKind::Resolved, &labels);
        let full = format!("{}\0{key}", a.subscription);
        let snapshot = self.webhook_alert(a, true, now);
        let group = self.groups.entry(full.clone()).or_insert_with(|| Group {
            rule: rule.key(),
            kind: NotificationKind::Resolved,
            labels,
            members: Vec::new(),
            resolved: Vec::new(),
            flush_at: now.saturating_add(wait),
        });
        group.members.push(a.fingerprint.clone());
        group.resolved.push(snapshot);
        let at = group.flush_at;
        self.dirty.groups.insert(full);
        self.arm(
            Timer::GroupFlush {
                sub: a.subscription.clone(),
                key,
            },
            at,
        );
    }

    /// The group `key` of `sub` is due: one notification per receiver
    /// listing its members.
    pub(crate) fn flush_group(&mut self, sub: &str, key: &str, now: i64) {
        let full = format!("{sub}\0{key}");
        let Some(g) = self.groups.remove(&full) else {
            return;
        };
        self.dirty.groups.insert(full);
        let Some(rule) = self.rules.get(&g.rule).cloned() else {
            return;
        };
        let alerts = match g.kind {
            NotificationKind::Resolved => g.resolved.clone(),
            _ => g
                .members
                .iter()
                .filter_map(|fp| self.alerts.get(fp))
                .filter(|a| !self.suppressed(a, now))
                .map(|a| self.webhook_alert(a, false, now))
                .collect(),
        };
        let fp = fingerprint(rule.id(), sub, "", "", key);
        self.enqueue_alerts(&rule, sub, &fp, g.kind, alerts, g.labels, now);
    }

    /// Re-arms the flush of restored groups.
    pub(crate) fn restore_groups(&mut self, groups: Vec<(String, crate::model::Group)>) {
        for (full, g) in groups {
            let Some((sub, key)) = full.split_once('\0') else {
                continue;
            };
            let t = Timer::GroupFlush {
                sub: sub.to_string(),
                key: key.to_string(),
            };
            let at = g.flush_at;
            self.groups.insert(full.clone(), g);
            self.arm(t, at);
        }
    }
}

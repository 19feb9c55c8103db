//! The alert lifecycle: fire once, count further events and repeat after
//! `repeat_interval` with the count, resolve (with a resolved notification
//! when the firing one went out), and queue one notification per receiver
//! of the rule. Silences and inhibition hold notifications back; rules
//! with `group_by` hand them to `group.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use schemas::notify::{ReceiverType, RuleType, WebhookAlert};

use crate::engine::Engine;
use crate::model::{
    fingerprint, opt_ts, Alert, DeliveryState, Notification, NotificationKind, SourceKey, ZERO_TIME,
};
use crate::rule::CompiledRule;
use crate::schedule::Timer;

/// What a firing condition says about the event that caused it.
pub(crate) struct Fire<'a> {
    pub(crate) rule: &'a Arc<CompiledRule>,
    pub(crate) source: Option<&'a str>,
    pub(crate) pipe: Option<&'a str>,
    /// Extra labels (metric series).
    pub(crate) extra: Vec<(String, String)>,
    /// Extra identity (the metric series) for the fingerprint.
    pub(crate) identity: String,
    pub(crate) event_ts: i64,
    pub(crate) summary: String,
    pub(crate) annotations: Vec<(&'static str, String)>,
}

impl<'a> Fire<'a> {
    /// An alert of `rule` about `source` (and `pipe`).
    pub(crate) fn new(
        rule: &'a Arc<CompiledRule>,
        source: Option<&'a str>,
        pipe: Option<&'a str>,
        event_ts: i64,
        summary: String,
    ) -> Fire<'a> {
        Fire {
            rule,
            source,
            pipe,
            extra: Vec::new(),
            identity: String::new(),
            event_ts,
            summary,
            annotations: Vec::new(),
        }
    }

    pub(crate) fn note(mut self, key: &'static str, value: String) -> Fire<'a> {
        self.annotations.push((key, value));
        self
    }
}

/// When `a` repeats next.
fn repeat_at(a: &Alert, rule: &CompiledRule) -> i64 {
    a.repeat_at.unwrap_or_else(|| {
        a.last_notified_at
            .unwrap_or(0)
            .saturating_add(rule.repeat_nanos)
    })
}

impl Engine {
    /// Fires (or re-fires) the alert of `f`; returns its fingerprint, or
    /// `None` when the subscription's bound on active alerts is reached.
    pub(crate) fn fire(&mut self, f: Fire<'_>, now: i64) -> Option<String> {
        let rule = f.rule;
        let sub = rule.sub();
        let fp = fingerprint(
            rule.id(),
            sub,
            f.source.unwrap_or(""),
            f.pipe.unwrap_or(""),
            &f.identity,
        );
        if let Some(a) = self.alerts.get_mut(&fp) {
            a.event_count = a.event_count.saturating_add(1);
            a.last_event_at = a.last_event_at.max(f.event_ts);
            a.annotations.insert("summary".into(), f.summary);
            for (k, v) in f.annotations {
                a.annotations.insert(k.into(), v);
            }
            a.annotations
                .insert("event_count".into(), a.event_count.to_string());
            a.annotations
                .insert("last_event_timestamp".into(), opt_ts(a.last_event_at));
            let notified = a.notified;
            let due = repeat_at(a, rule);
            if notified {
                a.unnotified_events = a.unnotified_events.saturating_add(1);
            }
            self.touch_alert(sub, &fp);
            match (notified, now >= due) {
                (true, true) => self.repeat(&fp, now),
                (true, false) => self.arm(
                    Timer::Repeat {
                        sub: sub.to_string(),
                        fp: fp.clone(),
                    },
                    due,
                ),
                (false, _) => self.try_notify(&fp, NotificationKind::Firing, now),
            }
            return Some(fp);
        }
        if self.alerts.count(sub) >= self.limits.max_alerts_per_subscription {
            self.limited(sub, "alerts");
            return None;
        }
        let mut labels = BTreeMap::new();
        for (k, v) in f.extra {
            labels.insert(k, v);
        }
        labels.insert("alertname".into(), rule.rule.name.clone());
        labels.insert("rule_id".into(), rule.id().to_string());
        labels.insert("rule_type".into(), rule.rule_type().as_str().into());
        labels.insert("severity".into(), rule.rule.severity.as_str().into());
        labels.insert("subscription".into(), sub.to_string());
        if let Some(s) = f.source {
            labels.insert("source".into(), s.to_string());
        }
        if let Some(p) = f.pipe {
            labels.insert("pipe".into(), p.to_string());
        }
        let mut annotations = BTreeMap::new();
        annotations.insert("summary".to_string(), f.summary);
        if !rule.rule.description.is_empty() {
            annotations.insert("description".into(), rule.rule.description.clone());
        }
        if let Some(p) = f.pipe {
            annotations.insert("pipe".into(), p.to_string());
        }
        for (k, v) in f.annotations {
            annotations.insert(k.into(), v);
        }
        annotations.insert("event_count".into(), "1".into());
        annotations.insert("event_timestamp".into(), opt_ts(f.event_ts));
        annotations.insert("last_event_timestamp".into(), opt_ts(f.event_ts));
        annotations.insert("rule_name".into(), rule.rule.name.clone());
        let source_key = f.source.map(|s| SourceKey::new(sub, s));
        let inhibited_by = match (&source_key, rule.rule_type()) {
            (Some(k), RuleType::PumpStartedOverdue | RuleType::PumpFinishedOverdue) => {
                self.heartbeat_firing.get(k).cloned()
            }
            _ => None,
        };
        self.alerts.insert(Alert {
            fingerprint: fp.clone(),
            rule_id: rule.id().to_string(),
            rule_type: rule.rule_type(),
            subscription: sub.to_string(),
            source: f.source.map(str::to_string),
            pipe: f.pipe.map(str::to_string),
            labels,
            annotations,
            starts_at: f.event_ts,
            last_event_at: f.event_ts,
            event_count: 1,
            unnotified_events: 0,
            notified: false,
            last_notified_at: None,
            repeat_at: None,
            inhibited_by,
            resolve_at: None,
        });
        self.touch_alert(sub, &fp);
        if rule.rule_type() == RuleType::NodeHeartbeatOverdue {
            if let Some(k) = source_key {
                self.inhibit_source(&k, &fp);
                self.heartbeat_firing.insert(k, fp.clone());
            }
        }
        self.try_notify(&fp, NotificationKind::Firing, now);
        Some(fp)
    }

    pub(crate) fn silenced(&self, a: &Alert, now: i64) -> bool {
        self.silences.mutes(&a.subscription, &a.labels, now)
    }

    pub(crate) fn suppressed(&self, a: &Alert, now: i64) -> bool {
        a.inhibited_by.is_some() || self.silenced(a, now)
    }

    /// Ids of the silences muting `alert` now.
    pub fn silenced_by(&self, alert: &Alert, now: i64) -> Vec<String> {
        self.silences
            .muting(&alert.subscription, &alert.labels, now)
    }

    /// Notifies the firing of `fp` unless it is suppressed.
    pub(crate) fn try_notify(&mut self, fp: &str, kind: NotificationKind, now: i64) {
        self.try_notify_at(fp, kind, now, now);
    }

    /// [`Engine::try_notify`], with silences as they are at `at` (a
    /// silence edge that popped late).
    fn try_notify_at(&mut self, fp: &str, kind: NotificationKind, at: i64, now: i64) {
        let Some(a) = self.alerts.get(fp) else {
            return;
        };
        if a.notified || self.suppressed(a, at) {
            return;
        }
        let Some(rule) = self.rules.get(&a.rule_key()).cloned() else {
            return;
        };
        let a = a.clone();
        if rule.group.is_some() {
            self.group_add(&rule, &a, kind, now);
        } else {
            self.enqueue(&rule, &a, kind, now);
        }
        if let Some(stored) = self.alerts.get_mut(fp) {
            stored.notified = true;
            stored.last_notified_at = Some(now);
            stored.repeat_at = Some(now.saturating_add(rule.repeat_nanos));
            stored.unnotified_events = 0;
            stored.annotations.remove("triggered_additional");
        }
        self.touch_alert(&a.subscription, fp);
        self.arm(
            Timer::Repeat {
                sub: a.subscription.clone(),
                fp: fp.to_string(),
            },
            now.saturating_add(rule.repeat_nanos),
        );
    }

    /// The repeat timer of `fp` popped (armed at `at`): due later if the
    /// alert notified since, else [`Engine::repeat`].
    pub(crate) fn repeat_due(&mut self, fp: &str, at: i64, now: i64) {
        let Some(a) = self.alerts.get(fp) else {
            return;
        };
        let Some(rule) = self.rules.get(&a.rule_key()) else {
            return;
        };
        let due = repeat_at(a, rule);
        if a.notified && due > at {
            let sub = a.subscription.clone();
            self.arm(
                Timer::Repeat {
                    sub,
                    fp: fp.to_string(),
                },
                due,
            );
            return;
        }
        self.repeat(fp, now);
    }

    /// A repeat with the count of further events, or a refresh
    /// (Alertmanager receivers only), once `repeat_interval` passed.
    pub(crate) fn repeat(&mut self, fp: &str, now: i64) {
        let Some(a) = self.alerts.get(fp) else {
            return;
        };
        let Some(rule) = self.rules.get(&a.rule_key()).cloned() else {
            return;
        };
        if !a.notified {
            return;
        }
        let timer = Timer::Repeat {
            sub: a.subscription.clone(),
            fp: fp.to_string(),
        };
        let due = repeat_at(a, &rule);
        if now < due {
            self.arm(timer, due);
            return;
        }
        if self.suppressed(a, now) {
            let next = now.saturating_add(rule.repeat_nanos);
            if let Some(stored) = self.alerts.get_mut(fp) {
                stored.repeat_at = Some(next);
            }
            let sub = timer.sub().to_string();
            self.touch_alert(&sub, fp);
            self.arm(timer, next);
            return;
        }
        let mut a = a.clone();
        let kind = if a.unnotified_events > 0 {
            let n = a.unnotified_events;
            a.annotations
                .insert("triggered_additional".into(), n.to_string());
            if let Some(s) = a.annotations.get_mut("summary") {
                s.push_str(&format!(
                    " (triggered an additional {n} time{})",
                    if n == 1 { "" } else { "s" }
                ));
            }
            NotificationKind::Repeat
        } else {
            NotificationKind::Refresh
        };
        self.enqueue(&rule, &a, kind, now);
        if let Some(stored) = self.alerts.get_mut(fp) {
            stored.last_notified_at = Some(now);
            stored.repeat_at = Some(now.saturating_add(rule.repeat_nanos));
            stored.unnotified_events = 0;
        }
        self.touch_alert(&a.subscription, fp);
        self.arm(timer, now.saturating_add(rule.repeat_nanos));
    }

    /// Resolves the pipe alert of `rule` for `key`, if firing.
    pub(crate) fn resolve_pipe(
        &mut self,
        rule: &CompiledRule,
        key: &crate::model::PipeKey,
        now: i64,
    ) {
        if !self.alerts.rule_firing(&rule.key()) {
            return;
        }
        let fp = fingerprint(rule.id(), &key.sub, &key.source, &key.pipe, "");
        self.resolve(&fp, now);
    }

    /// The alert `fp` resolves at `at` unless an event pushes that later.
    pub(crate) fn resolve_later(&mut self, fp: &str, at: i64) {
        let Some(a) = self.alerts.get_mut(fp) else {
            return;
        };
        a.resolve_at = Some(at);
        let sub = a.subscription.clone();
        self.touch_alert(&sub, fp);
        self.arm(
            Timer::ResolveAt {
                sub,
                fp: fp.to_string(),
            },
            at,
        );
    }

    /// A `resolve_later` timer popped (armed at `at`).
    pub(crate) fn resolve_due(&mut self, sub: &str, fp: &str, at: i64, now: i64) {
        let Some(a) = self.alerts.get(fp) else {
            return;
        };
        match a.resolve_at {
            Some(r) if r <= at => self.resolve(fp, now),
            Some(r) => self.arm(
                Timer::ResolveAt {
                    sub: sub.to_string(),
                    fp: fp.to_string(),
                },
                r,
            ),
            None => {}
        }
    }

    /// Resolves the alert `fp` (if firing) and notifies its resolution
    /// when its firing was notified.
    pub fn resolve(&mut self, fp: &str, now: i64) {
        self.resolve_as(fp, now, true);
    }

    /// [`Engine::resolve`]; `announce` false resolves without any
    /// notification.
    pub(crate) fn resolve_as(&mut self, fp: &str, now: i64, announce: bool) {
        let Some(a) = self.alerts.remove(fp) else {
            return;
        };
        let sub = a.subscription.clone();
        self.touch_alert(&sub, fp);
        for t in [
            Timer::Repeat {
                sub: sub.clone(),
                fp: fp.to_string(),
            },
            Timer::ResolveAt {
                sub: sub.clone(),
                fp: fp.to_string(),
            },
        ] {
            self.timers.unarm(&t);
        }
        // A silence mutes pages, not the all-clear of a page already sent
        // (the receiver would be left with an incident nobody closes).
        if announce && a.notified {
            if let Some(rule) = self.rules.get(&a.rule_key()).cloned() {
                if rule.group.is_some() {
                    self.group_resolved(&rule, &a, now);
                } else {
                    self.enqueue(&rule, &a, NotificationKind::Resolved, now);
                }
            }
        }
        if a.rule_type == RuleType::NodeHeartbeatOverdue {
            self.heartbeat_resolved(&a, now);
        }
    }

    /// Notifies firing alerts of `sub` whose notification was held back by
    /// a silence or an inhibition that no longer applies at `at` (a silence
    /// edge's time, or now).
    pub(crate) fn flush_pending(&mut self, sub: &str, at: i64, now: i64) {
        let fps: Vec<String> = self
            .alerts
            .of(sub)
            .filter(|a| !a.notified)
            .map(|a| a.fingerprint.clone())
            .collect();
        for fp in fps {
            self.try_notify_at(&fp, NotificationKind::Firing, at, now);
        }
    }

    /// Re-arms the repeat and resolution timers of a restored alert.
    pub(crate) fn arm_alert_timers(&mut self, fp: &str) {
        let Some(a) = self.alerts.get(fp) else { return };
        let at = match self.rules.get(&a.rule_key()) {
            Some(rule) if a.notified => Some(repeat_at(a, rule)),
            _ => None,
        };
        let (sub, resolve_at) = (a.subscription.clone(), a.resolve_at);
        if let Some(at) = at {
            self.arm(
                Timer::Repeat {
                    sub: sub.clone(),
                    fp: fp.to_string(),
                },
                at,
            );
        }
        if let Some(at) = resolve_at {
            self.arm(
                Timer::ResolveAt {
                    sub,
                    fp: fp.to_string(),
                },
                at,
            );
        }
    }

    /// The alert as a webhook payload entry.
    pub(crate) fn webhook_alert(&self, a: &Alert, resolved: bool, now: i64) -> WebhookAlert {
        WebhookAlert {
            status: if resolved { "resolved" } else { "firing" }.into(),
            labels: a.labels.clone(),
            annotations: a.annotations.clone(),
            starts_at: opt_ts(a.starts_at),
            ends_at: if resolved {
                opt_ts(now)
            } else {
                ZERO_TIME.into()
            },
            generator_url: format!(
                "{}/api/v1/alerts?fingerprint={}",
                self.external_url.trim_end_matches('/'),
                a.fingerprint
            ),
            fingerprint: a.fingerprint.clone(),
        }
    }

    /// Queues one notification per receiver of `rule` about `a`.
    pub(crate) fn enqueue(
        &mut self,
        rule: &CompiledRule,
        a: &Alert,
        kind: NotificationKind,
        now: i64,
    ) {
        let alert = self.webhook_alert(a, kind == NotificationKind::Resolved, now);
        self.enqueue_alerts(
            rule,
            &a.subscription,
            &a.fingerprint,
            kind,
            vec![alert],
            BTreeMap::new(),
            now,
        );
    }

    /// Queues one notification per receiver of `rule` carrying `alerts`
    /// (one, or a group's).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn enqueue_alerts(
        &mut self,
        rule: &CompiledRule,
        sub: &str,
        fingerprint: &str,
        kind: NotificationKind,
        mut alerts: Vec<WebhookAlert>,
        group_labels: BTreeMap<String, String>,
        now: i64,
    ) {
        if alerts.is_empty() {
            return;
        }
        let first = alerts.remove(0);
        for name in &rule.rule.receivers {
            let receiver = self.receivers.get(&(sub.to_string(), name.clone()));
            match (kind, receiver) {
                (NotificationKind::Refresh, Some(r))
                    if r.receiver_type != ReceiverType::Alertmanager =>
                {
                    continue
                }
                (NotificationKind::Refresh, None) => continue,
                (NotificationKind::Resolved, Some(r))
                    if !r.send_resolved && r.receiver_type == ReceiverType::Webhook =>
                {
                    continue
                }
                _ => {}
            }
            let id = self.next_notification;
            self.next_notification += 1;
            self.fx.notifications.push(Notification {
                id,
                subscription: sub.to_string(),
                receiver: name.clone(),
                rule_id: rule.id().to_string(),
                fingerprint: fingerprint.to_string(),
                kind,
                alert: first.clone(),
                grouped: alerts.clone(),
                group_labels: group_labels.clone(),
                expires_at: now.saturating_add(rule.repeat_nanos.saturating_mul(3)),
                created_at: now,
                state: DeliveryState::Pending,
                attempts: 0,
                last_error: None,
                finished_at: None,
            });
        }
    }
}

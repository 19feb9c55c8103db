//! What operators read: the active alerts (with why they are quiet) and
//! the notification history, scoped like the API.

use serde_json::{json, Value};

use schemas::time::rfc3339_from_nanos;

use crate::api::Scope;
use crate::error::NotifierError;
use crate::model::{Alert, DeliveryState, Notification};
use crate::service::{lock, Notifier};
use crate::silence::ActiveSilence;

impl Notifier {
    /// `GET /api/v1/alerts`: active alerts with why they are quiet, if so.
    /// Matches silences' regexes (outside the engine lock): call it off
    /// the async workers.
    pub fn alerts(&self, scope: &Scope, sub: Option<&str>) -> Vec<Value> {
        let now = self.inner.clock.now();
        let want = scope.lookup(sub);
        let (alerts, silences) = {
            let e = lock(&self.inner.engine);
            let alerts: Vec<Alert> = match want {
                Some(s) => e.alerts_of(s).cloned().collect(),
                None => e.all_alerts().cloned().collect(),
            };
            let silences: Vec<ActiveSilence> = e.silences(want).into_iter().cloned().collect();
            (alerts, silences)
        };
        let mut out: Vec<(i64, Value)> = alerts
            .iter()
            .map(|a| {
                let silenced_by: Vec<&str> = silences
                    .iter()
                    .filter(|s| s.mutes(&a.subscription, &a.labels, now))
                    .map(|s| s.silence.id.as_str())
                    .collect();
                let inhibited = a.inhibited_by.as_ref().map(|fp| {
                    let src = a.source.clone().unwrap_or_default();
                    json!({
                        "fingerprint": fp,
                        "reason": format!("node_heartbeat_overdue is firing for source {src:?}: its pipes' overdue alerts are suppressed"),
                    })
                });
                let state = if !silenced_by.is_empty() || inhibited.is_some() {
                    "suppressed"
                } else {
                    "active"
                };
                (
                    a.starts_at,
                    json!({
                        "fingerprint": a.fingerprint,
                        "status": {
                            "state": state,
                            "silencedBy": silenced_by,
                            "inhibitedBy": inhibited,
                        },
                        "labels": a.labels,
                        "annotations": a.annotations,
                        "startsAt": rfc3339_from_nanos(a.starts_at),
                        "lastEventAt": rfc3339_from_nanos(a.last_event_at),
                        "eventCount": a.event_count,
                        "notified": a.notified,
                        "lastNotifiedAt": a.last_notified_at.map(rfc3339_from_nanos),
                    }),
                )
            })
            .collect();
        out.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// The raw active alerts (tests and tools).
    pub fn active_alerts(&self) -> Vec<Alert> {
        lock(&self.inner.engine).all_alerts().cloned().collect()
    }

    /// `GET /api/v1/notifications`: newest first. Reads RocksDB: call it
    /// off the async workers.
    pub fn notifications(
        &self,
        scope: &Scope,
        filter: &NotificationFilter,
    ) -> Result<Vec<Value>, NotifierError> {
        let limit = filter.limit.clamp(1, 10_000);
        let subs = match scope.lookup(filter.subscription.as_deref()) {
            Some(s) => vec![s.to_string()],
            None => self.inner.db.notification_subscriptions()?,
        };
        let mut found: Vec<Notification> = Vec::new();
        for sub in &subs {
            let mut n_sub = 0;
            self.inner.db.notifications_rev(sub, |n| {
                if filter.matches(&n) {
                    found.push(n);
                    n_sub += 1;
                }
                n_sub < limit
            })?;
        }
        found.sort_by_key(|n| std::cmp::Reverse(n.id));
        found.truncate(limit);
        Ok(found.iter().map(notification_view).collect())
    }

    /// Raw notifications, oldest first (tests and tools).
    pub fn notification_log(&self) -> Result<Vec<Notification>, NotifierError> {
        self.inner.db.all_notifications()
    }

    /// Notifications waiting for delivery.
    pub fn pending(&self) -> usize {
        lock(&self.inner.queue).pending.len()
    }
}

/// Filters of `GET /api/v1/notifications`.
#[derive(Debug, Clone, Default)]
pub struct NotificationFilter {
    pub limit: usize,
    /// An admin's choice of subscription (operators see their own).
    pub subscription: Option<String>,
    pub state: Option<String>,
    pub receiver: Option<String>,
    pub fingerprint: Option<String>,
    pub rule_id: Option<String>,
}

impl NotificationFilter {
    fn matches(&self, n: &Notification) -> bool {
        let state = match n.state {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        };
        self.state.as_deref().is_none_or(|s| s == state)
            && self.receiver.as_deref().is_none_or(|r| r == n.receiver)
            && self
                .fingerprint
                .as_deref()
                .is_none_or(|f| f == n.fingerprint)
            && self.rule_id.as_deref().is_none_or(|r| r == n.rule_id)
    }
}

fn notification_view(n: &Notification) -> Value {
    json!({
        "id": n.id,
        "subscription": n.subscription,
        "receiver": n.receiver,
        "rule_id": n.rule_id,
        "fingerprint": n.fingerprint,
        "kind": n.kind,
        "status": n.state,
        "attempts": n.attempts,
        "last_error": n.last_error,
        "created_at": rfc3339_from_nanos(n.created_at),
        "finished_at": n.finished_at.map(rfc3339_from_nanos),
        "alert": n.alert,
        "alerts": n.alerts().collect::<Vec<_>>(),
        "group_labels": n.group_labels,
    })
}

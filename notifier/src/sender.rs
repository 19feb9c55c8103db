//! The delivery task: takes due notifications off the queue, sends each
//! (`delivery.rs` builds the request and classifies the answer under the
//! retry policy), records the outcome (off the async workers), and prunes
//! each subscription's history to its last `history_keep`.

use std::time::Duration;

use schemas::notify::ReceiverType;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::delivery;
use crate::model::{DeliveryState, Notification};
use crate::service::{lock, Notifier};
use crate::telemetry::labels;

/// Finished notifications of a subscription between history prunes.
const PRUNE_EVERY: u64 = 100;

impl Notifier {
    pub(crate) async fn delivery_loop(self, shutdown: CancellationToken) {
        let cfg = self.inner.config.delivery.clone();
        let per_sub = self
            .inner
            .config
            .limits
            .max_in_flight_per_subscription
            .max(1);
        let in_flight = TaskTracker::new();
        loop {
            let (due, next) = {
                let mut q = lock(&self.inner.queue);
                let room = cfg.concurrency.saturating_sub(q.in_flight.len());
                q.due(room, per_sub)
            };
            for n in due {
                let me = self.clone();
                in_flight.spawn(async move { me.deliver(n).await });
            }
            let wait = next
                .map(|t| t.saturating_duration_since(tokio::time::Instant::now()))
                .unwrap_or(Duration::from_secs(60))
                .min(Duration::from_secs(60));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.inner.wake_delivery.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // Requests in flight finish (bounded by their timeouts); what is
        // still pending stays queued in RocksDB for the next start.
        in_flight.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), in_flight.wait()).await;
    }

    async fn deliver(self, mut n: Notification) {
        let receiver = lock(&self.inner.engine)
            .receivers
            .get(&(n.subscription.clone(), n.receiver.clone()))
            .cloned();
        let rtype = receiver
            .as_ref()
            .map(|r| match r.receiver_type {
                ReceiverType::Webhook => "webhook",
                ReceiverType::Alertmanager => "alertmanager",
            })
            .unwrap_or("missing");
        let outcome = delivery::attempt(
            &self.inner.client,
            receiver,
            &n,
            &self.inner.config.external_url,
            &self.policy(),
        )
        .await;
        let cfg = self.inner.config.delivery.clone();
        let now = self.inner.clock.now();
        let finished = delivery::record_outcome(&mut n, &outcome, now, cfg.max_age);
        let m = &self.inner.metrics;
        match &outcome {
            delivery::Attempt::Delivered => {
                tracing::debug!(id = n.id, subscription = %n.subscription, receiver = %n.receiver, "notification delivered")
            }
            delivery::Attempt::Retry { detail, .. } if !finished => {
                m.retries.inc();
                tracing::warn!(id = n.id, subscription = %n.subscription, receiver = %n.receiver, attempts = n.attempts, error = %detail, "notification delivery failed; will retry");
            }
            delivery::Attempt::Retry { detail, .. } | delivery::Attempt::Fail { detail, .. } => {
                tracing::error!(id = n.id, subscription = %n.subscription, receiver = %n.receiver, error = %detail, "notification failed")
            }
        }
        if outcome.refused() {
            m.egress_refused
                .get_or_create(&labels(&[("subscription", &n.subscription)]))
                .inc();
        }
        if finished {
            let outcome = match n.state {
                DeliveryState::Delivered => "delivered",
                _ => "failed",
            };
            m.sent
                .get_or_create(&labels(&[("receiver_type", rtype), ("outcome", outcome)]))
                .inc();
        }
        // Persist the outcome (off the async workers), then update the
        // queue; a notification purged meanwhile is not written back.
        let me = self.clone();
        let done = n.clone();
        let delay = delivery::next_delay(&cfg, n.attempts, &outcome);
        let prune = tokio::task::spawn_blocking(move || me.land(done, finished, delay))
            .await
            .unwrap_or(None);
        if let Some((sub, oldest_pending)) = prune {
            let me = self.clone();
            let keep = cfg.history_keep;
            let _ = tokio::task::spawn_blocking(move || {
                me.inner.db.prune_history(&sub, keep, oldest_pending)
            })
            .await;
        }
        self.inner.wake_delivery.notify_one();
    }

    /// Records the outcome of a delivery of `n`; returns the subscription
    /// and its oldest pending id when its history is due for pruning.
    fn land(&self, n: Notification, finished: bool, delay: Duration) -> Option<(String, u64)> {
        let mut q = lock(&self.inner.queue);
        q.landed(&n);
        if !q.pending.contains_key(&n.id) {
            return None;
        }
        if let Err(e) = self.inner.db.put_notifications(std::slice::from_ref(&n)) {
            self.inner.metrics.errors.inc();
            tracing::error!(error = %e, "notification status write failed");
        }
        if finished {
            q.remove(n.id);
        } else if let Some(e) = q.pending.get_mut(&n.id) {
            e.next_at = tokio::time::Instant::now() + delay;
            e.n = n.clone();
        }
        self.inner.metrics.queue_pending.set(q.pending.len() as i64);
        if !finished {
            return None;
        }
        let oldest = q.oldest_pending_of(&n.subscription);
        drop(q);
        let mut f = lock(&self.inner.finished);
        let c = f.entry(n.subscription.clone()).or_default();
        *c += 1;
        if *c < PRUNE_EVERY {
            return None;
        }
        *c = 0;
        Some((n.subscription, oldest))
    }
}

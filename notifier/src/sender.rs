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
        // With a replication hook, not before the subscription's state
        // holding `n` is stored elsewhere (`replication.rs`).
        if self.inner.repl.installed() && !self.replicated(&n).await {
            return;
        }
        // From the receivers' snapshot, not the engine: its lock is held
        // through each evaluation round and its write (a synced one when
        // the round pages), which a neighbour's notification waited for
        // (notify bench: p99 11 ms of the 21 ms from answer to webhook).
        let receiver = self
            .receiver_set()
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
        {
            let mut q = lock(&self.inner.queue);
            if !q.contains(&n) {
                q.landed(&n);
                return None;
            }
        }
        // Written outside the queue's lock (the notification stays in
        // flight, so no other delivery of it starts): a write can wait
        // behind an ingest commit's fsync, and the evaluation thread takes
        // this lock in every round (it waited up to 63 ms for it under an
        // ingest flood, measured).
        match self.inner.db.put_notifications(std::slice::from_ref(&n)) {
            Ok(()) => self.inner.repl.bump(&n.subscription),
            Err(e) => {
                self.inner.metrics.errors.inc();
                tracing::error!(error = %e, "notification status write failed");
            }
        }
        let mut q = lock(&self.inner.queue);
        q.landed(&n);
        if !q.contains(&n) {
            // Its subscription was terminated meanwhile: what was just
            // written back goes too.
            drop(q);
            if let Err(e) = self.inner.db.delete_notification(&n.subscription, n.id) {
                self.inner.metrics.errors.inc();
                tracing::error!(error = %e, "notification delete failed");
            }
            return None;
        }
        if finished {
            q.remove(&delivery::queue_key(&n));
        } else if let Some(e) = q.get_mut(&n) {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use axum::http::StatusCode;
    use axum::routing::post;
    use schemas::notify::Receiver;
    use schemas::{Body, EventType, ExecutionBody, Record};
    use serde_json::json;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use crate::service::lock;
    use crate::{DeliveryConfig, EgressPolicy, ManualClock, Notifier, NotifierConfig, Scope};

    const T0: i64 = 1_767_225_600_000_000_000;

    /// A webhook that answers 503 to its first request and 204 after.
    async fn hook(calls: Arc<AtomicUsize>) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/hook",
            post(move || {
                let calls = calls.clone();
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(l, app).await });
        format!("http://{addr}/hook")
    }

    fn failed(seq: u64) -> Record {
        let mut e = ExecutionBody::new("orders", EventType::PumpFailed);
        e.reason_why_stopped = Some("boom".into());
        Record {
            seq,
            ts: T0,
            source: "node-1".into(),
            subscription: "acme".into(),
            body: Body::Execution(Box::new(e)),
        }
    }

    /// The engine's lock is held through every evaluation round and its
    /// (synced) write; a delivery must not wait for it, nor miss a
    /// receiver changed through the API.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delivery_does_not_wait_for_the_engine_and_sees_receiver_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = Arc::new(
            rocksdb::DB::open_cf(&opts, dir.path(), [crate::COLUMN_FAMILY]).expect("open db"),
        );
        let config = NotifierConfig {
            egress: EgressPolicy::allowing(&["127.0.0.1/32"]),
            delivery: DeliveryConfig {
                initial_backoff: Duration::from_millis(300),
                max_backoff: Duration::from_millis(300),
                ..DeliveryConfig::default()
            },
            ..NotifierConfig::default()
        };
        let n = Notifier::open(db, config, Arc::new(ManualClock::new(T0))).unwrap();
        let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
        n.start(&tracker, stop.clone());
        let sub = Scope::Subscription("acme".into());
        let (first, second) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(1)));
        let receiver = |url: &str| -> Receiver {
            serde_json::from_value(json!({"type": "webhook", "url": url, "timeout": "2s"})).unwrap()
        };
        n.put_receiver(&sub, "hook", receiver(&hook(first.clone()).await))
            .unwrap();
        let rule = serde_json::from_value(json!({
            "id": "f", "name": "Pipe failed", "type": "pump_failed", "pipes": ["*"],
            "receivers": ["hook"],
        }))
        .unwrap();
        n.put_rule(&sub, Some("f"), rule).unwrap();

        // The first attempt fails (503): the retry comes in 300 ms.
        n.on_records(&[failed(1)]);
        let t = Instant::now();
        while first.load(Ordering::SeqCst) == 0 {
            assert!(t.elapsed() < Duration::from_secs(5), "no first attempt");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The receiver moves (the API publishes it), then the engine is
        // held for 3 s, as a long evaluation round would.
        n.put_receiver(&sub, "hook", receiver(&hook(second.clone()).await))
            .unwrap();
        let held = {
            let n = n.clone();
            std::thread::spawn(move || {
                let _engine = lock(&n.inner.engine);
                std::thread::sleep(Duration::from_secs(3));
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = Instant::now();
        while second.load(Ordering::SeqCst) == 1 {
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "the retry waited for the engine's lock (or went to the old receiver)"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            first.load(Ordering::SeqCst),
            1,
            "the old receiver got one attempt"
        );
        held.join().unwrap();

        // A terminated subscription's receivers leave the snapshot too.
        let key = ("acme".to_string(), "hook".to_string());
        assert!(n.receiver_set().contains_key(&key));
        n.purge("acme");
        assert!(
            !n.receiver_set().contains_key(&key),
            "the purged subscription's receiver is still published"
        );
        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }
}

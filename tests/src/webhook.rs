//! A webhook receiver served by the test process (so it outlives collector
//! restarts), recording every notification with its `X-Notification-Id`.
//!
//! The notifier delivers at least once: a collector killed after the POST
//! but before it recorded the delivery sends the same notification again,
//! with the same `X-Notification-Id` and payload. "Exactly once" for a
//! receiver therefore means: every expected notification arrived, and every
//! repeat carries an id already seen (so a receiver can drop it) with an
//! identical body. [`Webhook::assert_exactly`] checks precisely that.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::Value;

/// One POST received.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub body: Value,
}

type Got = Arc<Mutex<Vec<Delivery>>>;

#[derive(Clone)]
struct Hook {
    got: Got,
    /// How long the answer to the very first request is held back.
    first_delay: Duration,
    down: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
    /// Every request is answered after this many ms (0: at once).
    slow_ms: Arc<AtomicU64>,
}

#[derive(Debug)]
pub struct Webhook {
    pub url: String,
    got: Got,
    down: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
    slow_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// What identifies an expected notification: (status, source, pipe).
pub type Expected<'a> = (&'a str, &'a str, &'a str);

impl Webhook {
    pub async fn start() -> Webhook {
        Webhook::start_slow_first(Duration::ZERO).await
    }

    /// A receiver that records the first request at once but answers it
    /// only after `delay`: a sender killed meanwhile has delivered it
    /// without knowing, and must send it again.
    pub async fn start_slow_first(delay: Duration) -> Webhook {
        async fn hook(
            State(h): State<Hook>,
            headers: HeaderMap,
            body: Bytes,
        ) -> (StatusCode, &'static str) {
            if h.down.load(Ordering::SeqCst) {
                h.refused.fetch_add(1, Ordering::SeqCst);
                return (StatusCode::SERVICE_UNAVAILABLE, "down");
            }
            let id = headers
                .get("x-notification-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let first = {
                // Short critical section, never held across an await.
                let mut got = h.got.lock().unwrap_or_else(|p| p.into_inner());
                got.push(Delivery { id, body });
                got.len() == 1
            };
            if first {
                tokio::time::sleep(h.first_delay).await;
            }
            let slow = h.slow_ms.load(Ordering::SeqCst);
            if slow > 0 {
                tokio::time::sleep(Duration::from_millis(slow)).await;
            }
            (StatusCode::OK, "ok")
        }
        let got = Got::default();
        let down = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let slow_ms = Arc::new(AtomicU64::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind webhook");
        let addr = listener.local_addr().expect("webhook address");
        let app = Router::new().route("/hook", post(hook)).with_state(Hook {
            got: got.clone(),
            first_delay: delay,
            down: down.clone(),
            refused: refused.clone(),
            slow_ms: slow_ms.clone(),
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Webhook {
            url: format!("http://{addr}/hook"),
            got,
            down,
            refused,
            slow_ms,
            task,
        }
    }

    /// While down, every request is answered 503 and not recorded.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// From now on every request is recorded at once and answered after
    /// `delay` (a sender stopped meanwhile has it in flight).
    pub fn set_slow(&self, delay: Duration) {
        self.slow_ms.store(
            delay.as_millis().try_into().unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Requests answered 503 while down.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Distinct notifications by id (first copy) and how many repeats came.
    /// Panics if a notification has no id or a repeat differs from the first.
    pub fn distinct(&self) -> (Vec<Delivery>, usize) {
        let mut by_id: BTreeMap<String, Delivery> = BTreeMap::new();
        let mut order = Vec::new();
        let mut repeats = 0;
        for d in self.deliveries() {
            assert!(
                !d.id.is_empty(),
                "a notification without X-Notification-Id: {}",
                d.body
            );
            match by_id.get(&d.id) {
                Some(first) => {
                    assert_eq!(
                        first.body, d.body,
                        "notification {} re-sent with a different payload",
                        d.id
                    );
                    repeats += 1;
                }
                None => {
                    order.push(d.id.clone());
                    by_id.insert(d.id.clone(), d);
                }
            }
        }
        let distinct = order
            .into_iter()
            .filter_map(|id| by_id.remove(&id))
            .collect();
        (distinct, repeats)
    }

    /// Asserts that the distinct notifications received are exactly
    /// `expected`, each once: (status `firing`/`resolved`, source, pipe).
    /// Returns how many repeats (same id, same payload) came.
    pub fn assert_exactly(&self, expected: &[Expected<'_>]) -> usize {
        let (distinct, repeats) = self.distinct();
        let mut got: Vec<(String, String, String)> = distinct
            .iter()
            .map(|d| {
                let a = &d.body["alerts"][0];
                (
                    a["status"].as_str().unwrap_or("?").to_string(),
                    a["labels"]["source"].as_str().unwrap_or("?").to_string(),
                    a["labels"]["pipe"].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect();
        let mut want: Vec<(String, String, String)> = expected
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        got.sort();
        want.sort();
        eprintln!(
            "webhook: {} distinct notification(s), {repeats} repeat(s) with an already-seen X-Notification-Id",
            distinct.len()
        );
        assert_eq!(got, want, "notifications received (status, source, pipe)");
        repeats
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! Delivery over real loopback HTTP: the webhook payload (v4) and its
//! signature, a receiver that is down for a while, one that hangs, and a
//! restart with notifications still queued.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use common::*;
use hmac::{KeyInit, Mac};
use notifier::{DeliveryConfig, ManualClock, Notifier, NotifierConfig, Scope};
use schemas::notify::{Receiver, WebhookPayload};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Default)]
struct Hook {
    /// Answer 503 to this many requests first.
    fail: usize,
    /// Never answer this many requests first.
    hang: usize,
    got: Vec<(HeaderMap, Bytes)>,
    attempts: usize,
}

type Shared = Arc<Mutex<Hook>>;

async fn hook(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let hang = {
        let mut h = s.lock().unwrap();
        h.attempts += 1;
        if h.hang > 0 {
            h.hang -= 1;
            true
        } else if h.fail > 0 {
            h.fail -= 1;
            return StatusCode::SERVICE_UNAVAILABLE;
        } else {
            h.got.push((headers, body));
            return StatusCode::OK;
        }
    };
    if hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    StatusCode::OK
}

async fn serve(state: Shared) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = Router::new().route("/hook", post(hook)).with_state(state);
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}/hook")
}

fn fast() -> NotifierConfig {
    NotifierConfig {
        external_url: "http://collector.example".into(),
        delivery: DeliveryConfig {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            ..DeliveryConfig::default()
        },
        ..notifier_config()
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

struct Run {
    n: Notifier,
    clock: Arc<ManualClock>,
    stop: CancellationToken,
    tracker: TaskTracker,
    seq: u64,
}

impl Run {
    fn start(dir: &std::path::Path, clock: Arc<ManualClock>) -> Run {
        let n = Notifier::open(open_db(dir), fast(), clock.clone()).unwrap();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        n.start(&tracker, stop.clone());
        Run {
            n,
            clock,
            stop,
            tracker,
            seq: 0,
        }
    }
    async fn stop(self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
    fn send(&mut self, body: schemas::Body) {
        self.seq += 1;
        let r = schemas::Record {
            seq: self.seq,
            ts: self.clock.now_for_test(),
            source: SRC.into(),
            subscription: SUB.into(),
            body,
        };
        self.n.on_records(&[r]);
    }
}

trait Now {
    fn now_for_test(&self) -> i64;
}
impl Now for ManualClock {
    fn now_for_test(&self) -> i64 {
        notifier::Clock::now(self)
    }
}

fn setup(n: &Notifier, url: &str, secret: Option<&str>) {
    let sub = Scope::Subscription(SUB.into());
    let mut r = json!({"type": "webhook", "url": url, "timeout": "300ms"});
    if let Some(s) = secret {
        r["secret"] = json!(s);
    }
    let r: Receiver = serde_json::from_value(r).unwrap();
    n.put_receiver(&sub, "hook", r).unwrap();
    let rule = serde_json::from_value(json!({
        "id": "f", "name": "Pipe failed", "type": "pump_failed", "pipes": ["*"],
        "receivers": ["hook"], "description": "a pipe failed",
    }))
    .unwrap();
    n.put_rule(&sub, Some("f"), rule).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_gets_a_signed_v4_payload() {
    let dir = tempfile::tempdir().unwrap();
    let state = Shared::default();
    let url = serve(state.clone()).await;
    let mut run = Run::start(dir.path(), Arc::new(ManualClock::new(T0)));
    setup(&run.n, &url, Some("k3y"));
    run.send(failed("orders", "bad entity o2"));
    until("delivery", || state.lock().unwrap().got.len() == 1).await;
    let (headers, body) = state.lock().unwrap().got[0].clone();
    let p: WebhookPayload = serde_json::from_slice(&body).unwrap();
    assert_eq!(p.version, "4");
    assert_eq!(p.status, "firing");
    assert_eq!(p.receiver, "hook");
    assert_eq!(p.external_url, "http://collector.example");
    assert_eq!(p.group_labels["alertname"], "Pipe failed");
    assert_eq!(p.alerts.len(), 1);
    let a = &p.alerts[0];
    assert_eq!(a.labels["pipe"], "orders");
    assert_eq!(a.labels["subscription"], SUB);
    assert_eq!(a.annotations["pipe"], "orders");
    assert_eq!(a.annotations["reason_why_stopped"], "bad entity o2");
    assert_eq!(a.annotations["event_count"], "1");
    assert!(a.annotations["summary"].contains("orders"));
    assert_eq!(a.ends_at, "0001-01-01T00:00:00Z");
    assert_eq!(a.fingerprint.len(), 16);
    // Every field of Alertmanager's v4 payload is there.
    let raw: serde_json::Value = serde_json::from_slice(&body).unwrap();
    for k in [
        "version",
        "groupKey",
        "status",
        "receiver",
        "groupLabels",
        "commonLabels",
        "commonAnnotations",
        "externalURL",
        "alerts",
        "truncatedAlerts",
    ] {
        assert!(raw.get(k).is_some(), "missing {k}");
    }
    for k in [
        "status",
        "labels",
        "annotations",
        "startsAt",
        "endsAt",
        "fingerprint",
        "generatorURL",
    ] {
        assert!(raw["alerts"][0].get(k).is_some(), "missing alerts[].{k}");
    }
    // The signature is HMAC-SHA256 of the exact body.
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(b"k3y").unwrap();
    mac.update(&body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(headers["x-signature"].to_str().unwrap(), want);
    // The history shows it delivered (once the answer is recorded).
    let history = || {
        run.n
            .notifications(
                &Scope::All,
                &notifier::NotificationFilter {
                    limit: 10,
                    ..Default::default()
                },
            )
            .unwrap()
    };
    until("the delivery recorded", || {
        history()[0]["status"] == "delivered"
    })
    .await;
    let hist = history();
    assert_eq!(hist[0]["attempts"], 1);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_while_gets_each_notification_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(Mutex::new(Hook {
        fail: 5,
        ..Hook::default()
    }));
    let url = serve(state.clone()).await;
    let mut run = Run::start(dir.path(), Arc::new(ManualClock::new(T0)));
    setup(&run.n, &url, None);
    run.send(failed("orders", "x"));
    run.send(completed("orders", 1)); // resolved, queued behind the firing
    run.send(failed("customers", "y"));
    until("three deliveries", || state.lock().unwrap().got.len() == 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (got, attempts) = {
        let s = state.lock().unwrap();
        (s.got.clone(), s.attempts)
    };
    assert_eq!(got.len(), 3, "each notification delivered once");
    let bodies: Vec<WebhookPayload> = got
        .iter()
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect();
    let orders: Vec<&str> = bodies
        .iter()
        .filter(|p| p.alerts[0].labels["pipe"] == "orders")
        .map(|p| p.status.as_str())
        .collect();
    assert_eq!(
        orders,
        vec!["firing", "resolved"],
        "resolved never overtakes firing"
    );
    assert!(attempts >= 8);
    let hist = run.n.notification_log().unwrap();
    assert!(hist
        .iter()
        .all(|n| n.state == notifier::DeliveryState::Delivered));
    assert!(hist.iter().map(|n| n.attempts).sum::<u32>() >= 8);
    assert_eq!(run.n.pending(), 0);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_times_out_and_is_retried_and_a_restart_resends_what_was_queued() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let state = Arc::new(Mutex::new(Hook {
        hang: 2,
        ..Hook::default()
    }));
    let url = serve(state.clone()).await;
    let mut run = Run::start(dir.path(), clock.clone());
    setup(&run.n, &url, None);
    run.send(failed("orders", "x"));
    until("two timed-out attempts", || {
        state.lock().unwrap().attempts >= 2
    })
    .await;
    let hist = run.n.notification_log().unwrap();
    assert!(
        hist[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("timeout"),
        "{hist:?}"
    );
    until("delivery", || state.lock().unwrap().got.len() == 1).await;
    run.stop().await;

    // Stop while the receiver is down: the notification waits in RocksDB
    // and goes out after the restart, once.
    state.lock().unwrap().fail = usize::MAX;
    let mut run = Run::start(dir.path(), clock.clone());
    run.send(completed("orders", 1));
    until("a failed attempt", || {
        run.n
            .notification_log()
            .unwrap()
            .last()
            .is_some_and(|n| n.attempts > 0)
    })
    .await;
    run.stop().await;
    assert_eq!(state.lock().unwrap().got.len(), 1);
    state.lock().unwrap().fail = 0;
    let run = Run::start(dir.path(), clock);
    until("resolved delivered after restart", || {
        state.lock().unwrap().got.len() == 2
    })
    .await;
    let last: WebhookPayload = serde_json::from_slice(&state.lock().unwrap().got[1].1).unwrap();
    assert_eq!(last.status, "resolved");
    run.stop().await;
}

use axum::response::IntoResponse;

/// Answers 429 with `Retry-After: <after>` to the first request, 200 then;
/// notes when each request came.
async fn throttling(after: &'static str) -> (String, Arc<Mutex<Vec<std::time::Instant>>>) {
    let times: Arc<Mutex<Vec<std::time::Instant>>> = Arc::default();
    let t = times.clone();
    let app = Router::new().route(
        "/hook",
        post(move || {
            let t = t.clone();
            async move {
                let first = {
                    let mut v = t.lock().unwrap();
                    v.push(std::time::Instant::now());
                    v.len() == 1
                };
                if first {
                    (StatusCode::TOO_MANY_REQUESTS, [("retry-after", after)]).into_response()
                } else {
                    StatusCode::OK.into_response()
                }
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}/hook"), times)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_after_its_retry_after_capped_and_never_panics() {
    // Retry-After: 1 -> the second attempt a second later, not after the
    // 50 ms backoff.
    let dir = tempfile::tempdir().unwrap();
    let (url, times) = throttling("1").await;
    let mut run = Run::start(dir.path(), Arc::new(ManualClock::new(T0)));
    setup(&run.n, &url, None);
    run.send(failed("orders", "x"));
    until("the retry", || times.lock().unwrap().len() == 2).await;
    let gap = {
        let t = times.lock().unwrap();
        t[1] - t[0]
    };
    assert!(gap >= Duration::from_millis(900), "{gap:?}");
    run.stop().await;

    // Malformed: the backoff applies.
    let dir = tempfile::tempdir().unwrap();
    let (url, times) = throttling("soon, maybe").await;
    let mut run = Run::start(dir.path(), Arc::new(ManualClock::new(T0)));
    setup(&run.n, &url, None);
    run.send(failed("orders", "x"));
    until("the retry", || times.lock().unwrap().len() == 2).await;
    let gap = {
        let t = times.lock().unwrap();
        t[1] - t[0]
    };
    assert!(gap < Duration::from_millis(900), "{gap:?}");
    run.stop().await;

    // Huge: capped (at 5 min), so no second attempt within the test, and
    // the notification waits, pending.
    let dir = tempfile::tempdir().unwrap();
    let (url, times) = throttling("999999999999999999999999999").await;
    let mut run = Run::start(dir.path(), Arc::new(ManualClock::new(T0)));
    setup(&run.n, &url, None);
    run.send(failed("orders", "x"));
    until("the first attempt", || times.lock().unwrap().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(times.lock().unwrap().len(), 1);
    assert_eq!(run.n.pending(), 1);
    let hist = run.n.notification_log().unwrap();
    assert_eq!(hist[0].last_error.as_deref(), Some("HTTP 429"));
    run.stop().await;
}

//! One subscription's state moved between two notifiers (two RocksDB
//! directories): export, import, release, and the delivery gate of a
//! replication hook.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use common::*;
use notifier::snapshot::FINISHED_KEPT;
use notifier::statecodec::{decode, encode, Snapshot};
use notifier::{
    DeliveryConfig, DeliveryState, ErrorKind, Exported, Feed, FeedBacklog, FeedPos, FeedRead,
    NotificationKind, NotifierConfig, NotifierError, Replication, Scope,
};
use schemas::notify::{Receiver, Silence};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a webhook received: the `X-Notification-Id` of each request.
type Got = Arc<Mutex<Vec<String>>>;

async fn webhook(State(got): State<Got>, headers: HeaderMap, _body: Bytes) -> StatusCode {
    let id = headers
        .get("x-notification-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    got.lock().unwrap().push(id);
    StatusCode::OK
}

async fn serve() -> (String, Got) {
    let got: Got = Arc::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = Router::new()
        .route("/hook", post(webhook))
        .with_state(got.clone());
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}/hook"), got)
}

fn fast() -> NotifierConfig {
    NotifierConfig {
        delivery: DeliveryConfig {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            ..DeliveryConfig::default()
        },
        ..notifier_config()
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `h`'s timer and delivery tasks until the token is cancelled.
fn start(h: &H) -> (CancellationToken, TaskTracker) {
    let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
    h.n.start(&tracker, stop.clone());
    (stop, tracker)
}

async fn stop((stop, tracker): (CancellationToken, TaskTracker)) {
    stop.cancel();
    tracker.close();
    tracker.wait().await;
}

fn scope(sub: &str) -> Scope {
    Scope::Subscription(sub.into())
}

fn silence(h: &H, id: &str, pipe: &str) {
    let s: Silence = serde_json::from_value(json!({
        "id": id, "comment": "maintenance",
        "matchers": [{"name": "pipe", "value": pipe, "isRegex": false, "isEqual": true}],
        "endsAt": "2026-01-02T00:00:00Z",
    }))
    .unwrap();
    h.n.create_silence(&scope(SUB), s).unwrap();
}

/// What the API shows of `sub`.
fn api_view(h: &H, sub: &str) -> Value {
    let s = Scope::All;
    json!({
        "rules": h.n.rules(&s, Some(sub)),
        "receivers": h.n.receivers(&s, Some(sub)),
        "silences": h.n.silences(&s, Some(sub)),
        "alerts": h.n.alerts(&s, Some(sub)),
    })
}

fn notes_of(h: &H, sub: &str) -> Vec<notifier::Notification> {
    h.notes()
        .into_iter()
        .filter(|n| n.subscription == sub)
        .collect()
}

fn export(h: &H, sub: &str) -> Exported {
    h.n.export_subscription(sub).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_subscription_is_delivered_without_paging_again_and_resolves() {
    let (url, got) = serve().await;
    let mut a = H::with_config(fast());
    a.receiver("hook", &url);
    a.rule("failed", "pump_failed", &["*"], json!({}));
    silence(&a, "quiet-billing", "billing");
    a.send(completed("orders", 3));
    a.send(failed("orders", "disk full"));
    assert_eq!(a.firing(), 1);
    let queued = notes_of(&a, SUB);
    assert_eq!(queued.len(), 1);
    let id = queued[0].id;
    assert_eq!(queued[0].state, DeliveryState::Pending);

    let exported = export(&a, SUB);
    assert!(
        exported.covers_below > id,
        "the export covers the queued notification"
    );
    assert_eq!(exported.version, a.n.state_version(SUB));
    let snap = decode(&exported.blob).unwrap();
    assert_eq!(snap.subscription, SUB);
    for f in [b'r', b'v', b's', b'a', b'p', b'o', b'n'] {
        assert!(
            snap.entries.iter().any(|e| e.family == f),
            "family {} missing from the export",
            f as char
        );
    }

    // B starts with other notifications of its own, so that ids differ.
    let mut b = H::with_config(fast());
    b.rule("b-only", "pump_failed", &["*"], json!({}));
    b.send(failed("x", "b's own"));
    b.send(failed("y", "b's own"));
    b.n.import_subscription(SUB, Some(&exported.blob)).unwrap();
    assert_eq!(api_view(&b, SUB), api_view(&a, SUB));
    assert_eq!(
        decode(&export(&b, SUB).blob).unwrap(),
        snap,
        "B's export of the imported state is A's (pipes, sources included)"
    );
    assert!(b.n.state_version(SUB) > 0);
    let warnings = b.rule("other", "pump_failed", &["nothing-like-it"], json!({}));
    assert!(
        warnings.iter().any(|w| w.contains("none of the 1 pipes")),
        "B knows A's pipe (and no longer its own two): {warnings:?}"
    );
    b.n.delete_rule(&scope(SUB), None, "other").unwrap();

    // B delivers the queued notification, with its id.
    let tasks = start(&b);
    until("the queued notification delivered", || {
        got.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(got.lock().unwrap()[0], id.to_string());
    until("its outcome written", || {
        notes_of(&b, SUB)
            .iter()
            .any(|n| n.id == id && n.state == DeliveryState::Delivered)
    })
    .await;

    // The pipe fails again: counted, no new page.
    b.send(failed("orders", "still full"));
    assert_eq!(notes_of(&b, SUB).len(), 1, "a repeated failure paged again");
    let alerts = b.n.alerts(&scope(SUB), None);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["eventCount"], json!(2));

    // It completes: exactly one resolution, after the imported ids.
    b.send(completed("orders", 1));
    let notes = notes_of(&b, SUB);
    let resolved: Vec<_> = notes
        .iter()
        .filter(|n| n.kind == NotificationKind::Resolved)
        .collect();
    assert_eq!(resolved.len(), 1, "{notes:?}");
    assert!(resolved[0].id > id);
    assert_eq!(b.firing(), 0);
    until("the resolution delivered", || {
        got.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(got.lock().unwrap()[1], resolved[0].id.to_string());
    stop(tasks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_replaces_only_its_subscription() {
    let mut a = H::new();
    a.rule("a-rule", "pump_failed", &["orders"], json!({}));
    a.send(failed("orders", "a's incident"));
    let a_id = notes_of(&a, SUB)[0].id;
    let exported = export(&a, SUB);

    let mut b = H::new();
    // Another subscription, whose first notification has A's id.
    let other = scope("globex");
    let r: Receiver =
        serde_json::from_value(json!({"type": "webhook", "url": "http://127.0.0.1:9/g"})).unwrap();
    b.n.put_receiver(&other, "g", r).unwrap();
    let rule = serde_json::from_value(json!({
        "id": "g-rule", "name": "G", "type": "pump_failed", "receivers": ["g"],
    }))
    .unwrap();
    b.n.put_rule(&other, Some("g-rule"), rule).unwrap();
    b.send_for("globex", failed("g-pipe", "globex's incident"));
    assert_eq!(notes_of(&b, "globex")[0].id, a_id, "the ids collide");
    // B's own state of the subscription.
    b.receiver("b-hook", "http://127.0.0.1:9/b");
    b.rule("b-rule", "pump_failed", &["*"], json!({}));
    silence(&b, "b-silence", "nothing");
    b.send(failed("b-pipe", "b's incident"));
    assert_eq!(b.firing(), 2);
    assert_eq!(b.n.pending(), 2);
    let globex = (api_view(&b, "globex"), notes_of(&b, "globex"));
    let globex_version = b.n.state_version("globex");

    b.n.import_subscription(SUB, Some(&exported.blob)).unwrap();
    assert_eq!(api_view(&b, SUB), api_view(&a, SUB));
    let rules: Vec<String> =
        b.n.rules(&scope(SUB), None)
            .into_iter()
            .map(|r| r.id)
            .collect();
    assert_eq!(rules, ["a-rule"]);
    assert!(b.n.silences(&scope(SUB), None).is_empty());
    let notes = notes_of(&b, SUB);
    assert_eq!(
        notes.len(),
        1,
        "B's own notification of the subscription is gone"
    );
    assert_eq!((notes[0].id, notes[0].rule_id.as_str()), (a_id, "a-rule"));
    assert_eq!(b.n.pending(), 2, "globex's and the imported one, same id");
    assert_eq!((api_view(&b, "globex"), notes_of(&b, "globex")), globex);
    assert_eq!(b.n.state_version("globex"), globex_version);
    // B's own pipe of the subscription is gone: a new failure of it pages
    // only if a rule matches it (none does now).
    b.send(failed("b-pipe", "again"));
    assert_eq!(notes_of(&b, SUB).len(), 1);

    // An empty state.
    b.n.import_subscription(SUB, None).unwrap();
    assert_eq!(
        api_view(&b, SUB),
        json!({"rules": [], "receivers": [], "silences": [], "alerts": []})
    );
    assert!(notes_of(&b, SUB).is_empty());
    assert!(decode(&export(&b, SUB).blob).unwrap().entries.is_empty());
    assert_eq!(b.n.pending(), 1);
    assert_eq!((api_view(&b, "globex"), notes_of(&b, "globex")), globex);
}

#[test]
fn a_corrupt_export_is_refused_and_changes_nothing() {
    let mut a = H::new();
    a.rule("a-rule", "pump_failed", &["*"], json!({}));
    a.send(failed("orders", "boom"));
    let good = export(&a, SUB).blob;

    let mut b = H::new();
    b.rule("b-rule", "pump_failed", &["*"], json!({}));
    b.send(failed("orders", "b's"));
    let before = (
        api_view(&b, SUB),
        b.notes(),
        b.n.pending(),
        b.n.state_version(SUB),
    );

    let framed = |version: u16, body: &[u8]| {
        let mut v = b"SNST".to_vec();
        v.extend_from_slice(&version.to_be_bytes());
        v.extend_from_slice(body);
        v
    };
    let zstd = |text: &[u8]| zstd::stream::encode_all(text, 3).unwrap();
    let other = encode(&Snapshot {
        subscription: "globex".into(),
        entries: Vec::new(),
    })
    .unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "magic SNST is missing"),
        (
            "not an export",
            b"{\"rules\": []}".to_vec(),
            "magic SNST is missing",
        ),
        ("no version", b"SNST\x00".to_vec(), "truncated"),
        ("newer format", framed(2, &zstd(b"{}")), "format version 2"),
        (
            "bad compression",
            framed(1, b"not zstd at all"),
            "bad compression",
        ),
        (
            "truncated",
            good[..good.len() - 8].to_vec(),
            "bad compression",
        ),
        (
            "bad JSON",
            framed(1, &zstd(b"{\"subscription\": ")),
            "bad JSON",
        ),
        (
            "bad family",
            framed(
                1,
                &zstd(br#"{"subscription":"acme","entries":[{"f":"m","k":"x","v":"y"}]}"#),
            ),
            "not a family",
        ),
        (
            "bad hex",
            framed(
                1,
                &zstd(br#"{"subscription":"acme","entries":[{"f":"r","k":"x","vx":"zz"}]}"#),
            ),
            "bad hex",
        ),
        ("another subscription", other, "of subscription \"globex\""),
    ];
    for (what, blob, says) in cases {
        let e = b.n.import_subscription(SUB, Some(&blob)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid, "{what}");
        assert!(e.message.contains(says), "{what}: {}", e.message);
        let after = (
            api_view(&b, SUB),
            b.notes(),
            b.n.pending(),
            b.n.state_version(SUB),
        );
        assert_eq!(after, before, "{what} changed something");
    }
    // The good one goes in.
    b.n.import_subscription(SUB, Some(&good)).unwrap();
    assert_eq!(api_view(&b, SUB), api_view(&a, SUB));
}

/// A call of the hook's `store`.
#[derive(Debug, Clone, Copy)]
struct Call {
    covers_below: u64,
    version: u64,
    stored: bool,
    started: Instant,
    ended: Instant,
}

/// A replication hook that fails while `ok` is false, and notes each call.
#[derive(Default)]
struct Hook {
    ok: AtomicBool,
    calls: Mutex<Vec<Call>>,
    /// How long a store takes.
    delay: Mutex<Duration>,
}

struct Repl(Arc<Hook>);

impl Replication for Repl {
    fn store(
        &self,
        sub: &str,
        exported: Exported,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>> {
        let hook = self.0.clone();
        assert_eq!(sub, SUB);
        Box::pin(async move {
            let started = Instant::now();
            let delay = *hook.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            decode(&exported.blob).expect("a valid export");
            let ok = hook.ok.load(Ordering::SeqCst);
            hook.calls.lock().unwrap().push(Call {
                covers_below: exported.covers_below,
                version: exported.version,
                stored: ok,
                started,
                ended: Instant::now(),
            });
            if ok {
                Ok(())
            } else {
                Err("zookeeper is down".into())
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_delivered_before_its_state_is_stored_elsewhere() {
    let (url, got) = serve().await;
    let hook = Arc::new(Hook::default());
    let mut b = H::with_config(fast());
    b.n.set_replication(Arc::new(Repl(hook.clone())));
    b.receiver("hook", &url);
    b.rule("failed", "pump_failed", &["*"], json!({}));
    let tasks = start(&b);
    b.send(failed("orders", "boom"));
    let id = notes_of(&b, SUB)[0].id;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        got.lock().unwrap().is_empty(),
        "sent before its state was stored"
    );
    let n = &notes_of(&b, SUB)[0];
    assert_eq!((n.state, n.attempts), (DeliveryState::Pending, 0));
    assert_eq!(b.n.pending(), 1);
    let tries = hook.calls.lock().unwrap().len();
    assert!(tries >= 2, "retried after 1 s ({tries} tries)");
    let failures: u64 = b
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("notifier_replication_failures_total "))
        .and_then(|v| v.parse().ok())
        .expect("notifier_replication_failures_total");
    assert!(failures >= 2, "{failures} failures counted");

    hook.ok.store(true, Ordering::SeqCst);
    until("delivered once stored", || got.lock().unwrap().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        *got.lock().unwrap(),
        [id.to_string()],
        "delivered exactly once"
    );
    let calls = hook.calls.lock().unwrap().clone();
    let stored: Vec<_> = calls.iter().filter(|c| c.stored).collect();
    assert!(
        stored[0].covers_below > id,
        "the stored export covers the notification"
    );
    until("its outcome written", || {
        notes_of(&b, SUB)[0].state == DeliveryState::Delivered
    })
    .await;
    assert_eq!(
        notes_of(&b, SUB)[0].attempts,
        1,
        "held-back tries are not attempts"
    );
    stop(tasks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persists_of_a_subscription_run_one_at_a_time_in_order() {
    let hook = Arc::new(Hook::default());
    hook.ok.store(true, Ordering::SeqCst);
    *hook.delay.lock().unwrap() = Duration::from_millis(300);
    let b = H::new();
    // Without a hook: nothing to do.
    b.n.persist(SUB).await.unwrap();
    b.n.set_replication(Arc::new(Repl(hook.clone())));
    let first = {
        let n = b.n.clone();
        tokio::spawn(async move { n.persist(SUB).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.rule("later", "pump_failed", &["*"], json!({}));
    b.n.persist(SUB).await.unwrap();
    first.await.unwrap().unwrap();
    let calls = hook.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert!(
        calls[1].started >= calls[0].ended,
        "the second store began before the first ended"
    );
    assert!(
        calls[1].version > calls[0].version,
        "versions stored in order"
    );
    assert_eq!(calls[1].version, b.n.state_version(SUB));
    // Nothing written since: no store.
    b.n.persist(SUB).await.unwrap();
    assert_eq!(hook.calls.lock().unwrap().len(), 2);
    // Released: nothing of it is stored from here.
    b.n.release_subscription(SUB);
    let e = b.n.persist(SUB).await.unwrap_err();
    assert!(e.message.contains("released"), "{}", e.message);
    assert_eq!(hook.calls.lock().unwrap().len(), 2);
}

#[test]
fn the_state_version_moves_with_every_write() {
    let mut h = H::new();
    let v0 = h.n.state_version(SUB);
    assert!(v0 > 0, "the harness's receiver was written");
    assert_eq!(h.n.state_version("globex"), 0);
    h.rule("failed", "pump_failed", &["*"], json!({}));
    let v1 = h.n.state_version(SUB);
    assert!(v1 > v0, "an API change");
    h.send(completed("orders", 1));
    let v2 = h.n.state_version(SUB);
    assert!(v2 > v1, "an evaluation");
    h.send_for("globex", completed("orders", 1));
    assert_eq!(
        h.n.state_version(SUB),
        v2,
        "another subscription's evaluation"
    );
    assert_eq!(export(&h, SUB).version, v2);
    h.n.delete_rule(&scope(SUB), None, "failed").unwrap();
    assert!(h.n.state_version(SUB) > v2);
}

#[test]
fn a_released_subscription_is_forgotten_and_others_are_kept() {
    let mut h = H::new();
    h.rule("failed", "pump_failed", &["*"], json!({}));
    h.send(failed("orders", "boom"));
    h.send_for("globex", completed("g", 1));
    let globex = decode(&export(&h, "globex").blob).unwrap();
    assert!(!globex.entries.is_empty());
    let v = h.n.state_version(SUB);
    h.n.release_subscription(SUB);
    assert!(h.n.state_version(SUB) > v);
    assert_eq!(
        api_view(&h, SUB),
        json!({"rules": [], "receivers": [], "silences": [], "alerts": []})
    );
    assert!(notes_of(&h, SUB).is_empty());
    assert_eq!(h.n.pending(), 0);
    assert!(decode(&export(&h, SUB).blob).unwrap().entries.is_empty());
    assert_eq!(decode(&export(&h, "globex").blob).unwrap(), globex);
}

async fn answering(code: StatusCode) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = Router::new().route("/hook", post(move || async move { code }));
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}/hook")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_keeps_what_is_pending_and_the_newest_finished() {
    let mut h = H::with_config(fast());
    h.receiver(
        "retrying",
        &answering(StatusCode::SERVICE_UNAVAILABLE).await,
    );
    h.receiver("refusing", &answering(StatusCode::BAD_REQUEST).await);
    for (id, pipe, receiver) in [("stuck", "stuck", "retrying"), ("p", "p-*", "refusing")] {
        let r = serde_json::from_value(json!({
            "id": id, "name": id, "type": "pump_failed", "pipes": [pipe],
            "receivers": [receiver],
        }))
        .unwrap();
        h.n.put_rule(&scope(SUB), Some(id), r).unwrap();
    }
    let tasks = start(&h);
    h.send(failed("stuck", "boom"));
    let total = FINISHED_KEPT + 20;
    for i in 0..total {
        h.send(failed(&format!("p-{i}"), "boom"));
    }
    until("every refused one finished", || {
        notes_of(&h, SUB)
            .iter()
            .filter(|n| n.state == DeliveryState::Failed)
            .count()
            == total
    })
    .await;
    let notes = notes_of(&h, SUB);
    let stuck = notes.iter().find(|n| n.rule_id == "stuck").unwrap();
    assert_eq!(stuck.state, DeliveryState::Pending);
    let mut want: Vec<u64> = notes
        .iter()
        .skip(1 + total - FINISHED_KEPT)
        .map(|n| n.id)
        .collect();
    want.insert(0, stuck.id);
    let snap = decode(&export(&h, SUB).blob).unwrap();
    let got: Vec<u64> = snap
        .entries
        .iter()
        .filter(|e| e.family == b'n')
        .map(|e| {
            serde_json::from_slice::<notifier::Notification>(&e.value)
                .unwrap()
                .id
        })
        .collect();
    assert_eq!(
        got, want,
        "the pending one and the newest {FINISHED_KEPT} finished"
    );
    stop(tasks).await;
}

/// A commit feed with nothing in it: records reach the evaluation thread
/// in memory only.
struct NoFeed;

impl Feed for NoFeed {
    fn subscriptions(&self) -> Result<Vec<String>, NotifierError> {
        Ok(Vec::new())
    }
    fn read(&self, _: &str, _: FeedPos, _: usize, _: usize) -> Result<FeedRead, NotifierError> {
        Ok(FeedRead {
            end: true,
            ..FeedRead::default()
        })
    }
    fn backlog(&self, _: &str, _: FeedPos) -> Result<FeedBacklog, NotifierError> {
        Ok(FeedBacklog::default())
    }
    fn trim(&self, _: &str, _: u64) -> Result<(), NotifierError> {
        Ok(())
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_watermark_is_exported_with_the_state_and_starts_over_at_an_import() {
    let mut a = H::new();
    a.rule("failed", "pump_failed", &["*"], json!({}));
    a.n.start_evaluator(Arc::new(NoFeed)).unwrap();
    let commit = vec![
        a.record(SRC, T0, completed("orders", 1)),
        a.record(SRC, T0, failed("orders", "boom")),
    ];
    a.n.on_committed(7, Arc::new(commit));
    wait_for("A evaluated commit 7", || {
        export(&a, SUB).watermark == FeedPos::new(7, 1)
    });
    let exported = export(&a, SUB);
    assert_eq!(a.firing(), 1);
    assert!(decode(&exported.blob)
        .unwrap()
        .entries
        .iter()
        .any(|e| e.family == b'a'));

    let mut b = H::new();
    b.rule("failed", "pump_failed", &["*"], json!({}));
    b.n.start_evaluator(Arc::new(NoFeed)).unwrap();
    let r = b.record(SRC, T0, completed("billing", 1));
    b.n.on_committed(3, Arc::new(vec![r]));
    wait_for("B evaluated commit 3", || {
        export(&b, SUB).watermark == FeedPos::new(3, 0)
    });
    b.n.import_subscription(SUB, Some(&exported.blob)).unwrap();
    assert_eq!(export(&b, SUB).watermark, FeedPos::default());
    assert_eq!(b.firing(), 1);

    // What B's feed brings next is evaluated on top of the imported state.
    let r = b.record(SRC, T0, completed("orders", 2));
    b.n.on_committed(4, Arc::new(vec![r]));
    wait_for("B evaluated commit 4", || {
        export(&b, SUB).watermark == FeedPos::new(4, 0)
    });
    assert_eq!(b.firing(), 0);
    let kinds: Vec<_> = notes_of(&b, SUB).iter().map(|n| n.kind).collect();
    assert_eq!(
        kinds,
        [NotificationKind::Firing, NotificationKind::Resolved]
    );
    a.n.stop_evaluator(Duration::from_secs(1));
    b.n.stop_evaluator(Duration::from_secs(1));
}

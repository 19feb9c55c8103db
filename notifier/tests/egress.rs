//! The egress policy at delivery, over real loopback HTTP: a name that
//! resolves to loopback, an address allowed when the receiver was stored
//! but not any more, the collector's own address, redirects, and answers
//! whose body must never reach the tenant.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use common::*;
use notifier::{
    DeliveryConfig, EgressPolicy, ManualClock, NotificationFilter, Notifier, NotifierConfig, Scope,
};
use schemas::notify::Receiver;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a test server answers, and how many requests it got.
#[derive(Clone, Default)]
struct Answer {
    status: u16,
    location: Option<String>,
    body: String,
    hits: Arc<Mutex<usize>>,
}

async fn answer(State(a): State<Answer>) -> impl IntoResponse {
    *a.hits.lock().unwrap() += 1;
    let mut headers = HeaderMap::new();
    if let Some(l) = &a.location {
        headers.insert("location", l.parse().unwrap());
    }
    (
        StatusCode::from_u16(a.status).unwrap(),
        headers,
        a.body.clone(),
    )
}

async fn serve(a: Answer) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = Router::new().route("/hook", post(answer)).with_state(a);
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

fn config(egress: EgressPolicy) -> NotifierConfig {
    NotifierConfig {
        delivery: DeliveryConfig {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(50),
            max_age: Duration::from_secs(3600),
            ..DeliveryConfig::default()
        },
        egress,
        ..NotifierConfig::default()
    }
}

struct Run {
    n: Notifier,
    stop: CancellationToken,
    tracker: TaskTracker,
    seq: u64,
}

impl Run {
    fn start(dir: &std::path::Path, cfg: NotifierConfig) -> Run {
        let clock = Arc::new(ManualClock::new(T0));
        let n = Notifier::open(open_db(dir), cfg, clock).unwrap();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        n.start(&tracker, stop.clone());
        Run {
            n,
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

    fn receiver(&self, url: &str) -> Result<(), notifier::NotifierError> {
        let r: Receiver =
            serde_json::from_value(json!({"type": "webhook", "url": url, "timeout": "2s"}))
                .unwrap();
        self.n
            .put_receiver(&Scope::Subscription(SUB.into()), "hook", r)
            .map(|_| ())
    }

    fn rule(&self) {
        let rule = serde_json::from_value(json!({
            "id": "f", "name": "Pipe failed", "type": "pump_failed", "receivers": ["hook"],
        }))
        .unwrap();
        self.n
            .put_rule(&Scope::Subscription(SUB.into()), Some("f"), rule)
            .unwrap();
    }

    fn fail(&mut self, pipe: &str) {
        self.seq += 1;
        self.n.on_records(&[schemas::Record {
            seq: self.seq,
            ts: T0,
            source: SRC.into(),
            subscription: SUB.into(),
            body: failed(pipe, "x"),
        }]);
    }

    /// The history as the tenant sees it, once nothing is pending.
    async fn finished(&self) -> Vec<Value> {
        for _ in 0..400 {
            if self.n.pending() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(self.n.pending(), 0, "deliveries still pending");
        self.n
            .notifications(
                &Scope::Subscription(SUB.into()),
                &NotificationFilter {
                    limit: 100,
                    ..Default::default()
                },
            )
            .unwrap()
    }
}

fn metrics(n: &Notifier) -> String {
    let mut reg = prometheus_client::registry::Registry::default();
    n.register_metrics(&mut reg);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
    out
}

/// This machine's name, if it resolves to a loopback address.
fn loopback_hostname() -> Option<String> {
    use std::net::ToSocketAddrs;
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_string();
    let addrs: Vec<_> = (name.as_str(), 80).to_socket_addrs().ok()?.collect();
    (!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())).then_some(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_loopback_is_refused_at_delivery_and_nothing_is_sent() {
    let Some(host) = loopback_hostname() else {
        eprintln!("skipped: this machine's hostname does not resolve to loopback only");
        return;
    };
    let hits = Answer {
        status: 200,
        ..Answer::default()
    };
    let addr = serve(hits.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::start(dir.path(), config(EgressPolicy::default()));
    // A name passes the check at PUT: it is checked on what it resolves to.
    run.receiver(&format!("http://{host}:{}/hook", addr.port()))
        .unwrap();
    run.rule();
    run.fail("orders");
    let hist = run.finished().await;
    assert_eq!(hist[0]["status"], "failed");
    assert_eq!(hist[0]["last_error"], "refused by egress policy");
    assert_eq!(hist[0]["attempts"], 1, "a refusal is not retried");
    assert_eq!(*hits.hits.lock().unwrap(), 0, "the receiver saw no request");
    assert!(metrics(&run.n).contains("notifier_egress_refused_total{subscription=\"acme\"} 1"));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_are_checked_again_at_delivery_and_the_collector_itself_is_refused() {
    let hits = Answer {
        status: 200,
        ..Answer::default()
    };
    let addr = serve(hits.clone()).await;
    let url = format!("http://{addr}/hook");
    let dir = tempfile::tempdir().unwrap();
    // Stored while loopback was allowed.
    let run = Run::start(
        dir.path(),
        config(EgressPolicy::allowing(&["127.0.0.1/32"])),
    );
    run.receiver(&url).unwrap();
    run.rule();
    run.stop().await;
    // The admin removed the allowance: refused at delivery.
    let mut run = Run::start(dir.path(), config(EgressPolicy::default()));
    run.fail("orders");
    let hist = run.finished().await;
    assert_eq!(hist[0]["last_error"], "refused by egress policy");
    assert_eq!(*hits.hits.lock().unwrap(), 0);
    run.stop().await;
    // Allowed again, but the receiver is the collector's own address.
    let mut run = Run::start(
        dir.path(),
        config(EgressPolicy::allowing(&["127.0.0.1/32"])),
    );
    run.n.set_own_address(addr);
    let e = run.receiver(&url).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("url"));
    assert!(e.message.contains("own address"), "{}", e.message);
    run.fail("customers");
    let hist = run.finished().await;
    assert_eq!(hist[0]["last_error"], "refused by egress policy");
    assert_eq!(*hits.hits.lock().unwrap(), 0);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_and_answers_never_reach_the_tenant() {
    let target = Answer {
        status: 200,
        ..Answer::default()
    };
    let target_addr = serve(target.clone()).await;
    let redirect = Answer {
        status: 307,
        location: Some(format!("http://{target_addr}/hook")),
        body: "go there".into(),
        ..Answer::default()
    };
    let redirect_addr = serve(redirect.clone()).await;
    let secret = Answer {
        status: 404,
        body: "root:x:0:0:SECRET-FROM-THE-INTERNAL-SERVICE".into(),
        ..Answer::default()
    };
    let secret_addr = serve(secret.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::start(
        dir.path(),
        config(EgressPolicy::allowing(&["127.0.0.1/32"])),
    );
    run.receiver(&format!("http://{redirect_addr}/hook"))
        .unwrap();
    run.rule();
    run.fail("orders");
    let hist = run.finished().await;
    assert_eq!(hist[0]["status"], "failed");
    assert_eq!(
        hist[0]["last_error"],
        "HTTP 307 (redirects are not followed)"
    );
    assert_eq!(*redirect.hits.lock().unwrap(), 1);
    assert_eq!(*target.hits.lock().unwrap(), 0, "the redirect was followed");

    run.receiver(&format!("http://{secret_addr}/hook")).unwrap();
    run.fail("customers");
    let hist = run.finished().await;
    let text = serde_json::to_string(&hist).unwrap();
    assert!(!text.contains("SECRET"), "{text}");
    assert!(!text.contains("root:x"), "{text}");
    assert_eq!(hist[0]["last_error"], "HTTP 404");
    run.stop().await;
}

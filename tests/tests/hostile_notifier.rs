//! Hostile tenants against the notifier of the real `sesam-collector`
//! binary (issue #9): each attack of the issue is mounted over HTTP.
//!
//! - a `repeat_interval` of 300 years is refused with 400 naming the field
//!   and the limit; a rule at the limit plus a failure leaves `/healthz`
//!   answering and the collector's memory bounded;
//! - receivers pointing at loopback, link-local (cloud metadata), private
//!   addresses, the collector itself or a name resolving to loopback are
//!   refused at PUT or at delivery ("refused by egress policy"), and the
//!   target sees no request; redirects are not followed; the history never
//!   shows a receiver's answer; the log never shows a receiver's path,
//!   query or credentials;
//! - a 300-matcher silence is refused fast;
//! - rule and silence ids are per subscription (another tenant's id is a
//!   404), and termination leaves no history;
//! - a tenant with 1,000 expensive rules does not slow another tenant's
//!   ingest beyond generous bounds.
//!
//! The tests' allowed receivers listen on 127.0.0.2 (`--egress-allow
//! 127.0.0.2/32`); the attacked services on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use e2e::collector::{operator_token, shipper_token, Collector, ADMIN};
use e2e::process::{metric_sum, until};
use schemas::{EventType, IngestBatch, Record};
use serde_json::{json, Value};

const A: &str = "alpha";
const B: &str = "bravo";
const ALLOWED: &str = "127.0.0.2";

/// A test HTTP server: what it answers and every request it got.
#[derive(Clone, Default)]
struct Server {
    status: u16,
    location: Option<String>,
    body: String,
    got: Arc<Mutex<Vec<Value>>>,
}

impl Server {
    fn ok() -> Server {
        Server {
            status: 200,
            ..Server::default()
        }
    }

    fn hits(&self) -> usize {
        self.got.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    async fn start(self, ip: &str) -> SocketAddr {
        async fn answer(State(s): State<Server>, body: axum::body::Bytes) -> impl IntoResponse {
            let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
            // Short critical section, never held across an await.
            s.got.lock().unwrap_or_else(|p| p.into_inner()).push(v);
            let mut headers = HeaderMap::new();
            if let Some(l) = &s.location {
                headers.insert("location", l.parse().expect("location header"));
            }
            let status = StatusCode::from_u16(s.status).expect("status");
            (status, headers, s.body.clone())
        }
        let l = tokio::net::TcpListener::bind((ip, 0))
            .await
            .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
        let addr = l.local_addr().expect("address");
        let app = Router::new().fallback(post(answer)).with_state(self);
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        addr
    }
}

async fn collector(root: &std::path::Path, subs: &[&str], extra: &[&str]) -> Collector {
    let mut c = Collector::new(root, subs);
    c.args = vec!["--egress-allow".into(), format!("{ALLOWED}/32")];
    c.args.extend(extra.iter().map(|s| s.to_string()));
    c.start().await;
    c
}

fn execution(sub: &str, source: &str, seq: u64, pipe: &str, ev: EventType, reason: &str) -> Record {
    let body = testkit::records::execution_body(pipe, ev, reason);
    testkit::records::record(sub, source, seq, schemas::time::now_nanos(), body)
}

/// POSTs a batch (MessagePack, uncompressed) with `sub`'s shipper token;
/// returns the status.
async fn ingest(client: &reqwest::Client, c: &Collector, sub: &str, records: Vec<Record>) -> u16 {
    let source = records
        .first()
        .map(|r| r.source.clone())
        .unwrap_or_default();
    let batch = IngestBatch {
        source,
        subscription: sub.into(),
        epoch: String::new(),
        records,
        dropped: 0,
    };
    let body = schemas::to_msgpack(&batch).expect("encode batch");
    client
        .post(format!("{}/api/v1/ingest", c.url))
        .bearer_auth(shipper_token(sub))
        .header("content-type", "application/msgpack")
        .body(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn receiver(c: &Collector, sub: &str, name: &str, url: &str) -> (u16, Value) {
    c.send(
        "PUT",
        &format!("/api/v1/receivers/{name}"),
        &operator_token(sub),
        json!({"type": "webhook", "url": url, "timeout": "2s"}),
    )
    .await
}

async fn rule(c: &Collector, sub: &str, body: Value) -> (u16, Value) {
    c.send(
        "POST",
        "/api/v1/notification-rules",
        &operator_token(sub),
        body,
    )
    .await
}

/// The notifications of `sub` (newest first) once `pred` holds for them.
async fn history(c: &Collector, sub: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    until(
        "the notification history",
        Duration::from_secs(30),
        || async {
            let v = c
                .get_json("/api/v1/notifications", &operator_token(sub))
                .await;
            let list = v["notifications"].as_array().cloned().unwrap_or_default();
            pred(&list).then_some(list)
        },
    )
    .await
}

fn loopback_hostname() -> Option<String> {
    use std::net::ToSocketAddrs;
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_string();
    let addrs: Vec<_> = (name.as_str(), 80).to_socket_addrs().ok()?.collect();
    (!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())).then_some(name)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_year_rule_is_refused_and_a_rule_at_the_limit_keeps_the_collector_answering() {
    let dir = e2e::scratch();
    let c = collector(&dir.path().join("collector"), &[A], &[]).await;
    let client = reqwest::Client::new();
    let hook = Server::ok();
    let addr = hook.clone().start(ALLOWED).await;
    let (st, body) = receiver(&c, A, "ops", &format!("http://{addr}/hook")).await;
    assert_eq!(st, 201, "{body}");

    let (st, body) = rule(
        &c,
        A,
        json!({"name": "x", "type": "pump_failed", "receivers": ["ops"], "repeat_interval": "300y"}),
    )
    .await;
    assert_eq!(st, 400, "{body}");
    assert_eq!(body["field"], "repeat_interval", "{body}");
    let msg = body["error"].as_str().unwrap_or("");
    assert!(msg.contains("limit of 30days"), "{body}");

    // Everything at the maximum, and a failure.
    for r in [
        json!({"name": "max", "type": "pump_failed", "receivers": ["ops"], "repeat_interval": "30d"}),
        json!({"name": "overdue", "type": "pump_started_overdue", "receivers": ["ops"],
               "repeat_interval": "30d", "params": {"grace": "30d", "interval": "30d"}}),
        json!({"name": "silent", "type": "node_heartbeat_overdue", "receivers": ["ops"],
               "repeat_interval": "30d", "params": {"interval": "30d"}}),
        json!({"name": "log", "type": "pattern_match", "receivers": ["ops"], "repeat_interval": "30d",
               "params": {"field": "reason_why_stopped", "pattern": "*", "resolve_after": "30d"}}),
    ] {
        let (st, body) = rule(&c, A, r).await;
        assert_eq!(st, 201, "{body}");
    }
    let st = ingest(
        &client,
        &c,
        A,
        vec![execution(
            A,
            "node-1",
            1,
            "orders",
            EventType::PumpFailed,
            "boom",
        )],
    )
    .await;
    assert_eq!(st, 200);
    until("the failure notified", Duration::from_secs(20), || async {
        (hook.hits() >= 2).then_some(())
    })
    .await;
    // The collector keeps answering, promptly, with bounded memory.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        let r = client
            .get(format!("{}/healthz", c.url))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .expect("healthz answers");
        assert!(r.status().is_success());
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hwm = c
        .process()
        .and_then(|p| p.vm_hwm_bytes())
        .expect("collector VmHWM");
    eprintln!("collector VmHWM {} MiB", hwm >> 20);
    assert!(hwm < 512 << 20, "collector VmHWM {} MiB", hwm >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_pointing_inside_are_refused_and_the_target_sees_nothing() {
    let dir = e2e::scratch();
    let mut c = collector(&dir.path().join("collector"), &[A], &[]).await;
    let client = reqwest::Client::new();
    let inside = Server::ok();
    let inside_addr = inside.clone().start("127.0.0.1").await;
    let port = inside_addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://[::1]:{port}/hook"),
        format!("http://localhost:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/".to_string(),
        "http://10.0.0.1/hook".to_string(),
        "http://192.168.1.1/hook".to_string(),
        "http://100.64.0.1/hook".to_string(),
        "http://[fd00::1]/hook".to_string(),
        format!("http://127.0.0.1:{}/api/v1/ingest", c.port),
    ] {
        let (st, body) = receiver(&c, A, "evil", &url).await;
        assert_eq!(st, 400, "{url}: {body}");
        assert_eq!(body["field"], "url", "{url}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or("")
                .contains("refused by egress policy"),
            "{url}: {body}"
        );
    }
    for url in ["http://user:pw@example.com/hook", "file:///etc/passwd"] {
        let (st, body) = receiver(&c, A, "evil", url).await;
        assert_eq!((st, body["field"].as_str()), (400, Some("url")), "{body}");
    }
    let refusals =
        metric_sum(&c.get("/metrics", ADMIN).await.1, "notifier_refusals_total").unwrap_or(0.0);
    assert!(refusals >= 12.0, "refusals counted: {refusals}");

    // The secrets a receiver URL may carry must never reach the log.
    let secret_path = "/T0KEN-IN-PATH/hook?key=QUERY-SECRET";
    // A name that resolves to loopback passes PUT and is refused at
    // delivery, on the address it resolves to.
    if let Some(host) = loopback_hostname() {
        let (st, body) = receiver(
            &c,
            A,
            "byname",
            &format!("http://{host}:{port}{secret_path}"),
        )
        .await;
        assert_eq!(st, 201, "{body}");
    } else {
        eprintln!("skipped the by-name case: this machine's hostname does not resolve to loopback");
    }
    // A redirect to an allowed address is still not followed.
    let target = Server::ok();
    let target_addr = target.clone().start(ALLOWED).await;
    let redirect = Server {
        status: 307,
        location: Some(format!("http://{target_addr}/hook")),
        ..Server::default()
    };
    let redirect_addr = redirect.clone().start(ALLOWED).await;
    let (st, body) = receiver(&c, A, "redirect", &format!("http://{redirect_addr}/hook")).await;
    assert_eq!(st, 201, "{body}");
    // An internal service's answer is never shown.
    let leaky = Server {
        status: 404,
        body: "root:x:0:0:SECRET-OF-THE-INTERNAL-SERVICE".into(),
        ..Server::default()
    };
    let leaky_addr = leaky.clone().start(ALLOWED).await;
    let (st, body) = receiver(&c, A, "leaky", &format!("http://{leaky_addr}{secret_path}")).await;
    assert_eq!(st, 201, "{body}");
    let mut names = vec!["redirect", "leaky"];
    if loopback_hostname().is_some() {
        names.push("byname");
    }
    let (st, body) = rule(
        &c,
        A,
        json!({"name": "failed", "type": "pump_failed", "receivers": names}),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let st = ingest(
        &client,
        &c,
        A,
        vec![execution(
            A,
            "node-1",
            1,
            "orders",
            EventType::PumpFailed,
            "boom",
        )],
    )
    .await;
    assert_eq!(st, 200);
    let n = names.len();
    let hist = history(&c, A, |l| {
        l.len() == n && l.iter().all(|x| x["status"] == "failed")
    })
    .await;
    let by = |name: &str| {
        hist.iter()
            .find(|x| x["receiver"] == name)
            .unwrap_or_else(|| panic!("no notification for {name}: {hist:?}"))
            .clone()
    };
    assert_eq!(
        by("redirect")["last_error"],
        "HTTP 307 (redirects are not followed)"
    );
    assert_eq!(by("leaky")["last_error"], "HTTP 404");
    if names.contains(&"byname") {
        assert_eq!(by("byname")["last_error"], "refused by egress policy");
    }
    let shown = serde_json::to_string(&hist).unwrap_or_default();
    assert!(!shown.contains("SECRET-OF"), "{shown}");
    assert_eq!(inside.hits(), 0, "the inside service got a request");
    assert_eq!(target.hits(), 0, "the redirect was followed");
    assert_eq!(redirect.hits(), 1);
    c.stop();
    let log = std::fs::read_to_string(c.root.join("collector.log")).unwrap_or_default();
    for secret in ["T0KEN-IN-PATH", "QUERY-SECRET", "SECRET-OF", "user:pw"] {
        assert!(
            !log.contains(secret),
            "{secret} in the collector log:\n{log}"
        );
    }
    assert!(
        log.contains(&format!("{ALLOWED}:{}", leaky_addr.port())),
        "the log names the receiver's host and port:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_matcher_silence_is_refused_fast() {
    let dir = e2e::scratch();
    let c = collector(&dir.path().join("collector"), &[A], &[]).await;
    let matchers: Vec<Value> = (0..300)
        .map(|i| json!({"name": "pipe", "value": format!("(x+x+)+y{i}\\w{{50}}"), "isRegex": true}))
        .collect();
    let ends = schemas::time::rfc3339_from_nanos(schemas::time::now_nanos() + 3_600_000_000_000);
    let t = Instant::now();
    let (st, body) = c
        .send(
            "POST",
            "/api/v1/silences",
            &operator_token(A),
            json!({"matchers": matchers, "endsAt": ends}),
        )
        .await;
    let took = t.elapsed();
    assert_eq!(st, 400, "{body}");
    assert_eq!(body["field"], "matchers", "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("limit of 32"),
        "{body}"
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    // And /healthz is fine.
    let (st, _) = c.get("/healthz", ADMIN).await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_per_tenant_and_termination_leaves_no_history() {
    let dir = e2e::scratch();
    let mut c = collector(&dir.path().join("collector"), &[A, B], &[]).await;
    let client = reqwest::Client::new();
    let hook = Server::ok();
    let addr = hook.clone().start(ALLOWED).await;
    for sub in [A, B] {
        let (st, body) = receiver(&c, sub, "ops", &format!("http://{addr}/hook")).await;
        assert_eq!(st, 201, "{body}");
    }
    let put = |sub: &'static str, name: &'static str| {
        let c = &c;
        async move {
            c.send(
                "PUT",
                "/api/v1/notification-rules/orders-failed",
                &operator_token(sub),
                json!({"name": name, "type": "pump_failed", "pipes": ["orders"], "receivers": ["ops"]}),
            )
            .await
        }
    };
    let (st, body) = put(A, "alpha's").await;
    assert_eq!(st, 201, "{body}");
    let (st, _) = c
        .send(
            "PUT",
            "/api/v1/notification-rules/alpha-only",
            &operator_token(A),
            json!({"name": "a", "type": "pump_failed"}),
        )
        .await;
    assert_eq!(st, 201);
    // Bravo: alpha's ids look exactly like missing ones.
    let (_, missing) = c
        .get(
            "/api/v1/notification-rules/no-such-rule",
            &operator_token(B),
        )
        .await;
    for id in ["alpha-only", "orders-failed"] {
        let (st, body) = c
            .get(
                &format!("/api/v1/notification-rules/{id}"),
                &operator_token(B),
            )
            .await;
        assert_eq!(st, 404, "{id}: {body}");
        assert_eq!(body.replace(id, "no-such-rule"), missing, "{id}: {body}");
    }
    let (st, _) = c
        .send(
            "DELETE",
            "/api/v1/notification-rules/alpha-only",
            &operator_token(B),
            Value::Null,
        )
        .await;
    assert_eq!(st, 404);
    // ... and bravo can use the same id for its own rule.
    let (st, body) = put(B, "bravo's").await;
    assert_eq!(st, 201, "{body}");
    let a_rule = c
        .get_json(
            "/api/v1/notification-rules/orders-failed",
            &operator_token(A),
        )
        .await;
    assert_eq!(a_rule["name"], "alpha's");
    // Silences too.
    let ends = schemas::time::rfc3339_from_nanos(schemas::time::now_nanos() + 3_600_000_000_000);
    for sub in [A, B] {
        let (st, body) = c
            .send(
                "POST",
                "/api/v1/silences",
                &operator_token(sub),
                json!({"id": "maintenance", "matchers": [{"name": "pipe", "value": "none"}], "endsAt": ends}),
            )
            .await;
        assert_eq!(st, 201, "{sub}: {body}");
    }

    // Alpha's failure is notified and in its history.
    let st = ingest(
        &client,
        &c,
        A,
        vec![execution(
            A,
            "node-a",
            1,
            "orders",
            EventType::PumpFailed,
            "x",
        )],
    )
    .await;
    assert_eq!(st, 200);
    let st = ingest(
        &client,
        &c,
        B,
        vec![execution(
            B,
            "node-b",
            1,
            "orders",
            EventType::PumpFailed,
            "y",
        )],
    )
    .await;
    assert_eq!(st, 200);
    history(&c, A, |l| l.iter().any(|n| n["status"] == "delivered")).await;
    history(&c, B, |l| l.iter().any(|n| n["status"] == "delivered")).await;

    let (st, body) = c
        .send(
            "DELETE",
            &format!("/api/v1/subscriptions/{A}"),
            ADMIN,
            Value::Null,
        )
        .await;
    assert_eq!(st, 200, "{body}");
    nothing_of_alpha(&c).await;
    // Nothing of alpha comes back after a restart either.
    c.stop();
    c.start().await;
    nothing_of_alpha(&c).await;
}

/// Alpha (terminated) has nothing left that an admin can see; bravo's
/// notification is still there.
async fn nothing_of_alpha(c: &Collector) {
    for path in [
        "/api/v1/notifications?subscription=alpha",
        "/api/v1/notification-rules?subscription=alpha",
        "/api/v1/receivers?subscription=alpha",
        "/api/v1/silences?subscription=alpha",
        "/api/v1/alerts?subscription=alpha",
    ] {
        let v = c.get_json(path, ADMIN).await;
        let text = v.to_string();
        assert!(!text.contains("alpha"), "{path}: {text}");
    }
    let b = c
        .get_json("/api/v1/notifications", &operator_token(B))
        .await;
    assert_eq!(b["notifications"].as_array().map(Vec::len), Some(1), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_expensive_rules_does_not_slow_another_tenants_ingest() {
    let dir = e2e::scratch();
    let c = Arc::new(collector(&dir.path().join("collector"), &[A, B], &[]).await);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let hook = Server::ok();
    let addr = hook.clone().start(ALLOWED).await;
    for sub in [A, B] {
        let (st, body) = receiver(&c, sub, "ops", &format!("http://{addr}/hook")).await;
        assert_eq!(st, 201, "{body}");
    }
    let (st, body) = rule(
        &c,
        B,
        json!({"name": "b", "type": "pump_failed", "pipes": ["b-*"], "receivers": ["ops"]}),
    )
    .await;
    assert_eq!(st, 201, "{body}");

    // Bravo's single-record ingest latency, quiet.
    let measure = |from: u64, n: u64| {
        let (c, client) = (c.clone(), client.clone());
        async move {
            let mut ms = Vec::new();
            for i in from..from + n {
                let r = execution(
                    B,
                    "node-b",
                    i,
                    &format!("b-{i}"),
                    EventType::PumpCompleted,
                    "",
                );
                let t = Instant::now();
                assert_eq!(ingest(&client, &c, B, vec![r]).await, 200);
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            ms.sort_by(f64::total_cmp);
            ms
        }
    };
    let quiet = measure(1, 100).await;

    // Alpha: the rule limit's worth of expensive pattern rules.
    let started = Instant::now();
    for i in 0..1000 {
        let (st, body) = rule(
            &c,
            A,
            json!({"id": format!("slow-{i}"), "name": "slow", "type": "pattern_match",
                   "params": {"field": "reason_why_stopped", "syntax": "regex",
                              "pattern": format!("[a-q][^u-z]{{12}}x{i}")}}),
        )
        .await;
        assert_eq!(st, 201, "{body}");
    }
    eprintln!("1,000 rules created in {:?}", started.elapsed());
    let (st, body) = rule(&c, A, json!({"name": "too many", "type": "pump_failed"})).await;
    assert_eq!(st, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("1000 rules"),
        "{body}"
    );

    // Alpha floods failures with 64 KiB reasons while bravo ingests.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (c, client, stop) = (c.clone(), client.clone(), stop.clone());
        tokio::spawn(async move {
            let reason = testkit::records::noise(64 << 10);
            let mut seq = 0;
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let batch: Vec<Record> = (0..20)
                    .map(|_| {
                        seq += 1;
                        execution(
                            A,
                            "node-a",
                            seq,
                            &format!("a-{seq}"),
                            EventType::PumpFailed,
                            &reason,
                        )
                    })
                    .collect();
                if ingest(&client, &c, A, batch).await == 200 {
                    sent += 20;
                }
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = measure(1000, 100).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flooded = flood.await.expect("flood task");
    let (q50, q99) = (pct(&quiet, 0.5), pct(&quiet, 0.99));
    let (l50, l99) = (pct(&loaded, 0.5), pct(&loaded, 0.99));
    eprintln!(
        "bravo single-record ingest: quiet p50 {q50:.1} ms p99 {q99:.1} ms; while alpha floods ({flooded} records with 1,000 expensive rules): p50 {l50:.1} ms p99 {l99:.1} ms"
    );
    // Generous: alpha's share of each commit is its evaluation budget
    // (50 ms), plus a busy machine. (Without the budget, on the machine
    // these bounds were set on: p50 149 ms, p99 407 ms; with it: p50 9 ms,
    // p99 63 ms.)
    assert!(
        l99 < q99 + 250.0,
        "bravo p99 {l99:.1} ms (quiet {q99:.1} ms)"
    );
    assert!(
        l50 < q50 + 75.0,
        "bravo p50 {l50:.1} ms (quiet {q50:.1} ms)"
    );
    let metrics = c.get("/metrics", ADMIN).await.1;
    // Evaluation runs off the commit path: alpha's records wait for its
    // share of evaluation time (its lag), or a record is cut.
    let gauge = |name: &str, sub: &str| {
        e2e::hostile::sample(&metrics, &format!("{name}{{subscription=\"{sub}\"}}"))
    };
    let held = metric_sum(&metrics, "notifier_evaluation_deferred_records_total").unwrap_or(0.0)
        + metric_sum(&metrics, "notifier_evaluation_skipped_records_total").unwrap_or(0.0)
        + gauge("notifier_evaluation_lag_records", A).unwrap_or(0.0);
    assert!(
        held > 0.0,
        "alpha's evaluation was never held back:\n{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| (l.starts_with("notifier_evaluation_deferred")
                || l.starts_with("notifier_evaluation_skipped"))
                && l.contains("\"bravo\"")),
        "bravo was throttled:\n{metrics}"
    );
    // Bravo is served round robin, not behind alpha's backlog.
    let bravo_lag = gauge("notifier_evaluation_lag_seconds", B).unwrap_or(0.0);
    assert!(
        bravo_lag < 2.0,
        "bravo's evaluation lags {bravo_lag} s:\n{metrics}"
    );
    let (st, _) = c.get("/healthz", ADMIN).await;
    assert_eq!(st, 200);
}

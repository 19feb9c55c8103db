//! The agent's push path against stand-in receivers and the real
//! collector: buffering while the receiver is down, order, the bound,
//! 4xx drops, bad scrape targets, remote-write and OTLP into the collector.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use common::*;
use metrics_agent::remote_write::WriteRequest;
use metrics_agent::{AgentConfig, Listen, PushProtocol, PushTarget, ScrapeTarget};
use prost::Message;
use tokio_util::sync::CancellationToken;

/// (name, labels, value, timestamp ms) of one received sample.
type Received = (String, Vec<(String, String)>, f64, i64);

/// A remote-write receiver answering `status` and recording what it
/// accepted: (name, labels, value, timestamp) in arrival order.
#[derive(Default)]
struct Recv {
    status: Mutex<u16>,
    attempts: Mutex<u64>,
    attempt_times: Mutex<Vec<Instant>>,
    accepted: Mutex<Vec<Received>>,
}

impl Recv {
    fn set(&self, s: u16) {
        *self.status.lock().unwrap() = s;
    }
    fn attempts(&self) -> u64 {
        *self.attempts.lock().unwrap()
    }
    /// Timestamps of `name` (with `job`) received, in order.
    fn times(&self, name: &str) -> Vec<i64> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, ..)| n == name)
            .map(|s| s.3)
            .collect()
    }
    fn find(&self, name: &str, label: (&str, &str)) -> Option<f64> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(n, l, ..)| n == name && l.iter().any(|(k, v)| k == label.0 && v == label.1))
            .map(|s| s.2)
    }
}

async fn receive(State(r): State<Arc<Recv>>, body: Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    *r.attempts.lock().unwrap() += 1;
    r.attempt_times.lock().unwrap().push(Instant::now());
    let status = *r.status.lock().unwrap();
    if status == 429 {
        // Once, with a Retry-After the agent must honour.
        r.set(204);
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response();
    }
    if status >= 300 {
        return StatusCode::from_u16(status).unwrap().into_response();
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&body)
        .expect("snappy");
    let req = WriteRequest::decode(raw.as_slice()).expect("protobuf");
    let mut g = r.accepted.lock().unwrap();
    for ts in req.timeseries {
        let mut name = String::new();
        let mut labels = Vec::new();
        let names: Vec<&str> = ts.labels.iter().map(|l| l.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "labels are sorted");
        for l in ts.labels {
            if l.name == "__name__" {
                name = l.value;
            } else {
                labels.push((l.name, l.value));
            }
        }
        for s in ts.samples {
            assert!(
                s.value.is_finite(),
                "{name}: non-finite values are not pushed"
            );
            g.push((name.clone(), labels.clone(), s.value, s.timestamp));
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn receiver(status: u16) -> (Arc<Recv>, String) {
    let r = Arc::new(Recv::default());
    r.set(status);
    let app = Router::new()
        .route("/api/v1/write", post(receive))
        .with_state(r.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (r, format!("http://{addr}/api/v1/write"))
}

struct Agent {
    metrics: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), metrics_agent::AgentError>>,
}

impl Agent {
    async fn start(url: &str, tweak: impl FnOnce(&mut AgentConfig)) -> Agent {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = l.local_addr().unwrap();
        let mut c = AgentConfig::new("vm-t", "acme");
        c.interval = Duration::from_millis(100);
        c.backoff_max = Duration::from_millis(200);
        c.listen = Some(Listen::Listener(l));
        c.push = Some(PushTarget {
            protocol: PushProtocol::RemoteWrite,
            url: url.to_string(),
            token: None,
        });
        tweak(&mut c);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(metrics_agent::run(c, shutdown.clone()));
        Agent {
            metrics,
            shutdown,
            task,
        }
    }
    /// A value of the agent's own /metrics.
    async fn metric(&self, line_prefix: &str) -> f64 {
        let text = get_text(
            &reqwest::Client::new(),
            &format!("http://{}/metrics", self.metrics),
            None,
        )
        .await;
        text.lines()
            .find(|l| l.starts_with(line_prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

async fn until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffers_while_the_receiver_is_down_and_sends_everything_in_order_when_it_returns() {
    let (rx, url) = receiver(503).await;
    let agent = Agent::start(&url, |_| {}).await;
    let down_since = now();
    until("retries against the 503 receiver", 10, || {
        rx.attempts() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    rx.set(204);
    let up_at = now();
    until("the backlog and fresh samples", 15, || {
        rx.times("node_load1")
            .last()
            .is_some_and(|t| *t > up_at + 300)
    })
    .await;
    let times = rx.times("node_load1");
    assert!(
        times[0] < down_since + 300,
        "the first collection (during the outage) was delivered: first {} vs outage start {down_since}",
        times[0]
    );
    for w in times.windows(2) {
        assert!(w[0] < w[1], "in order: {times:?}");
        assert!(
            w[1] - w[0] < 3000,
            "no collection lost: gap {} ms in {times:?}",
            w[1] - w[0]
        );
    }
    assert!(agent.metric("metrics_agent_send_retries_total").await >= 2.0);
    assert!(
        agent
            .metric("metrics_agent_send_failures_total{reason=\"status_5xx\"}")
            .await
            >= 2.0
    );
    assert_eq!(
        agent.metric("metrics_agent_samples_dropped_total").await,
        0.0
    );
    // Every pushed host series carries the target labels.
    assert!(rx
        .find("node_memory_MemTotal_bytes", ("instance", "vm-t"))
        .is_some());
    assert!(rx
        .find("node_memory_MemTotal_bytes", ("subscription", "acme"))
        .is_some());
    assert!(rx
        .find("node_memory_MemTotal_bytes", ("job", "sesam-metrics-agent"))
        .is_some());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_after_the_receivers_retry_after() {
    let (rx, url) = receiver(429).await;
    let agent = Agent::start(&url, |_| {}).await;
    until("the retried request", 10, || rx.attempts() >= 2).await;
    let times = rx.attempt_times.lock().unwrap().clone();
    let gap = times[1] - times[0];
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After: 1 honoured (backoff alone would wait at most 200 ms): {gap:?}"
    );
    assert!(
        agent
            .metric("metrics_agent_send_failures_total{reason=\"status_429\"}")
            .await
            >= 1.0
    );
    until("delivery after the 429", 10, || {
        !rx.times("node_load1").is_empty()
    })
    .await;
    assert_eq!(
        agent.metric("metrics_agent_samples_dropped_total").await,
        0.0
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_drops_the_oldest_samples_and_counts_them() {
    let (rx, url) = receiver(503).await;
    let agent = Agent::start(&url, |c| {
        // About three collections.
        c.buffer_samples = std::num::NonZeroUsize::new(500).unwrap();
    })
    .await;
    let down_since = now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    rx.set(204);
    let up_at = now();
    until("delivery after the outage", 15, || {
        rx.times("node_load1")
            .last()
            .is_some_and(|t| *t > up_at + 300)
    })
    .await;
    let times = rx.times("node_load1");
    assert!(
        times[0] > down_since + 500,
        "the oldest collections were dropped: first delivered {} vs outage start {down_since}",
        times[0]
    );
    for w in times.windows(2) {
        assert!(w[0] < w[1], "in order: {times:?}");
    }
    let dropped = agent
        .metric("metrics_agent_samples_dropped_total{reason=\"buffer_full\"}")
        .await;
    assert!(dropped > 0.0, "drops are counted");
    assert_eq!(
        agent.metric("metrics_agent_buffer_capacity_samples").await,
        500.0
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_answer_drops_the_batch_without_retrying() {
    let (rx, url) = receiver(400).await;
    let agent = Agent::start(&url, |_| {}).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let attempts = rx.attempts();
    let collections = agent.metric("metrics_agent_collections_total").await;
    assert!(attempts >= 3, "{attempts}");
    // One request per collection at most: nothing is sent twice.
    assert!(
        attempts as f64 <= collections + 1.0,
        "{attempts} requests for {collections} collections"
    );
    assert_eq!(agent.metric("metrics_agent_send_retries_total").await, 0.0);
    assert!(
        agent
            .metric("metrics_agent_samples_dropped_total{reason=\"rejected\"}")
            .await
            > 0.0
    );
    agent.stop().await;
}

/// A scrape target that accepts connections and never answers.
async fn hanging_target() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    format!("http://{addr}/metrics")
}

async fn static_target(body: &'static str) -> String {
    let app = Router::new().route("/metrics", get(move || async move { body }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}/metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_scrape_targets_are_counted_and_the_rest_still_flows() {
    let (rx, url) = receiver(204).await;
    let good = static_target(
        "# TYPE app_requests_total counter\napp_requests_total{instance=\"inner\",path=\"/a\"} 7\napp_temperature NaN\n",
    )
    .await;
    let garbage = static_target("<html><body>502 Bad Gateway</body></html>\n").await;
    let hang = hanging_target().await;
    let agent = Agent::start(&url, |c| {
        c.interval = Duration::from_millis(300);
        c.scrape_timeout = Duration::from_millis(200);
        for (job, url) in [("good", &good), ("garbage", &garbage), ("hang", &hang)] {
            let mut t = ScrapeTarget::parse(url).unwrap();
            t.job = job.into();
            c.scrape.push(t);
        }
    })
    .await;
    until("the good target's series", 10, || {
        rx.find("app_requests_total", ("job", "good")).is_some()
            && rx.find("up", ("job", "hang")).is_some()
    })
    .await;
    assert_eq!(rx.find("app_requests_total", ("job", "good")), Some(7.0));
    // The target's own instance label is kept as exported_instance.
    assert_eq!(
        rx.find("app_requests_total", ("exported_instance", "inner")),
        Some(7.0)
    );
    assert_eq!(rx.find("up", ("job", "good")), Some(1.0));
    assert_eq!(rx.find("up", ("job", "garbage")), Some(0.0));
    assert_eq!(rx.find("up", ("job", "hang")), Some(0.0));
    assert!(
        rx.find("node_load1", ("instance", "vm-t")).is_some(),
        "host metrics still flow"
    );
    assert!(
        rx.find("app_temperature", ("job", "good")).is_none(),
        "NaN is not pushed"
    );
    assert!(
        agent
            .metric("metrics_agent_scrape_errors_total{reason=\"parse\",target=\"garbage\"}")
            .await
            >= 1.0
    );
    assert!(
        agent
            .metric("metrics_agent_scrape_errors_total{reason=\"timeout\",target=\"hang\"}")
            .await
            >= 1.0
    );
    assert!(
        agent
            .metric("metrics_agent_samples_dropped_total{reason=\"non_finite\"}")
            .await
            >= 1.0
    );
    agent.stop().await;
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn meminfo_total() -> f64 {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_into_the_collector_by_remote_write_and_otlp() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path()).await;
    let rw = Agent::start(&collector.url("/api/v1/write"), |c| {
        c.instance = "vm-rw".into();
        c.subscription = "ignored-the-token-decides".into();
        c.push.as_mut().unwrap().token = Some(SHIP_ACME.into());
    })
    .await;
    let otlp = Agent::start(&collector.url(""), |c| {
        c.instance = "vm-otlp".into();
        c.subscription = "acme".into();
        c.push = Some(PushTarget {
            protocol: PushProtocol::Otlp,
            url: collector.url(""),
            token: Some(SHIP_ACME.into()),
        });
    })
    .await;
    let client = reqwest::Client::new();
    let fed = |m: &str| {
        format!(
            "{}?match[]={}",
            collector.url("/federate"),
            m.replace('{', "%7B")
                .replace('}', "%7D")
                .replace('"', "%22")
                .replace('=', "%3D")
        )
    };
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        text = get_text(&client, &fed("node_memory_MemTotal_bytes"), Some(OP_ACME)).await;
        if text.contains("vm-rw") && text.contains("vm-otlp") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = meminfo_total();
    for inst in ["vm-otlp", "vm-rw"] {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("instance=\"{inst}\"")))
            .unwrap_or_else(|| panic!("{inst} not federated: {text}"));
        assert!(line.contains("subscription=\"acme\""), "{line}");
        assert!(line.contains("job=\"sesam-metrics-agent\""), "{line}");
        let v: f64 = line.split(' ').nth(1).unwrap().parse().unwrap();
        assert_eq!(v, total, "{line}");
    }
    // OTLP keeps Prometheus names and types through the collector.
    let cpu = get_text(&client, &fed("node_cpu_seconds_total"), Some(OP_ACME)).await;
    assert!(
        cpu.contains("# TYPE node_cpu_seconds_total counter"),
        "{cpu}"
    );
    assert!(
        cpu.contains("instance=\"vm-otlp\",job=\"sesam-metrics-agent\",mode=\"idle\""),
        "{cpu}"
    );
    assert_eq!(rw.metric("metrics_agent_samples_dropped_total").await, 0.0);
    assert_eq!(
        otlp.metric("metrics_agent_samples_dropped_total").await,
        0.0
    );
    rw.stop().await;
    otlp.stop().await;
    collector.stop().await;
}

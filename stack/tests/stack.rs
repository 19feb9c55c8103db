//! The stack in one process on free loopback ports: a failing pipe reaches
//! the built-in webhook through node -> outbox -> shipper -> collector ->
//! notifier, its events are searchable, host metrics are federated, Ctrl-C
//! (the shutdown token) stops everything cleanly, and a second start
//! resumes with the same tokens and data.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn free() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn config(dir: &std::path::Path) -> stack::StackConfig {
    let mut c = stack::StackConfig::new(dir);
    c.collector_listen = free();
    c.node_listen = free();
    c.agent_listen = free();
    c.demo_listen = free();
    c.metrics_interval = Duration::from_secs(1);
    c.health_interval = Duration::from_secs(1);
    c.pipe_interval = 1;
    c
}

async fn get(url: &str, token: &str) -> Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null)
}

async fn text(url: &str, token: &str) -> String {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn start(
    cfg: stack::StackConfig,
) -> (
    stack::Ready,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        stack::run(cfg, s, None, move |r| {
            let _ = tx.send(r);
        })
        .await
    });
    let ready = tokio::time::timeout(Duration::from_secs(60), rx)
        .await
        .expect("stack ready within 60 s")
        .expect("ready");
    (ready, stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_runs_the_whole_path_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (ready, stop, task) = start(cfg.clone()).await;
    assert!(ready.banner().contains(&ready.operator_token));
    assert!(
        ready
            .banner()
            .contains(&format!("console           {}/ui/", ready.collector_url)),
        "the console's address comes first"
    );
    let login = reqwest::get(format!("{}/ui/login", ready.collector_url))
        .await
        .expect("console");
    assert_eq!(login.status(), 200, "the console is served");
    let (c, tok) = (ready.collector_url.clone(), ready.operator_token.clone());

    // The orders pipe fails on its first run: the example rule notifies the
    // built-in webhook, then resolves when a later run succeeds.
    let mut statuses = Vec::new();
    for _ in 0..300 {
        let hook = get(&format!("{}/hook", ready.demo_url), "").await;
        statuses = hook["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["alerts"][0]["labels"]["alertname"] == "OrdersPipeFailed")
            .map(|n| n["status"].as_str().unwrap().to_string())
            .collect();
        if statuses.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(&statuses[..2], ["firing", "resolved"], "{statuses:?}");

    let logs = get(
        &format!("{c}/api/v1/logs?query=%7Bpipe%3D%22orders%22%2C%20event_type%3D%22pump-failed%22%7D&since=1h"),
        &tok,
    )
    .await;
    let recs = logs["records"].as_array().unwrap();
    assert!(!recs.is_empty(), "{logs}");
    // The failing entity never leaves the node; neither does the secret.
    let all = text(
        &format!("{c}/api/v1/logs?query=%7Bsubscription%3D%22demo%22%7D&limit=5000&since=1h"),
        &tok,
    )
    .await;
    assert!(!all.contains("stack-upstream-secret"));
    assert!(!all.contains("exception_entity"));
    let hist = get(&format!("{c}/api/v1/notifications"), &tok).await;
    assert!(
        hist["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["status"] == "delivered"),
        "{hist}"
    );

    // The agent's host metrics and the node's scraped metrics are federated.
    let mut fed = String::new();
    for _ in 0..100 {
        fed = text(&format!("{c}/federate?match[]=%7B__name__%3D~%22node_memory_MemTotal_bytes%7Csesam_pump_started_total%22%7D"), &tok).await;
        if fed.contains("node_memory_MemTotal_bytes{") && fed.contains("sesam_pump_started_total") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(fed.contains("node_memory_MemTotal_bytes{"), "{fed}");
    assert!(fed.contains("instance=\"stack-node\""), "{fed}");
    assert!(fed.contains("sesam_pump_started_total"), "{fed}");

    let before = get(&format!("{c}/api/v1/sources"), &tok).await["sources"][0]["last_seq"]
        .as_u64()
        .unwrap();
    stop.cancel();
    task.await.unwrap().expect("clean shutdown");

    // A second start resumes: same token, the node's seqs continue.
    let (ready2, stop, task) = start(config(dir.path())).await;
    assert_eq!(ready2.operator_token, tok);
    let c = ready2.collector_url.clone();
    let mut after = 0;
    for _ in 0..100 {
        let s = get(&format!("{c}/api/v1/sources"), &tok).await;
        after = s["sources"][0]["last_seq"].as_u64().unwrap_or(0);
        if after > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(after > before, "{after} > {before}");
    stop.cancel();
    task.await.unwrap().expect("clean shutdown");
}

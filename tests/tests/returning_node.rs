//! A dead node pages once, not once per pipe when it comes back (issue
//! #10), with the real binaries: a node with two pipes scheduled every
//! 2 s, a `node_heartbeat_overdue` and a `pump_started_overdue` rule.
//!
//! - the node is killed with SIGKILL and restarted: exactly the heartbeat's
//!   firing and resolved notifications arrive, nothing else;
//! - the same with the collector restarted while the node is dead;
//! - the collector is killed while the node keeps running, and its
//!   backlog arrives late: no pipe pages (the heartbeat may, once, if the
//!   node's shipper waits out its backoff longer than the heartbeat
//!   interval after the collector is back).

use std::time::Duration;

use e2e::collector::{operator_token, Collector};
use e2e::node::Node;
use e2e::process::until;
use e2e::webhook::Webhook;
use serde_json::json;

const SUB: &str = "returns";
const NODE: &str = "node-returns";
const HEARTBEAT_SECS: u64 = 10;

async fn rules(c: &Collector, hook: &str) {
    let op = operator_token(SUB);
    let (st, body) = c
        .send(
            "PUT",
            "/api/v1/receivers/ops",
            &op,
            json!({"type": "webhook", "url": hook}),
        )
        .await;
    assert!(st == 200 || st == 201, "{st} {body}");
    for rule in [
        json!({"id": "silent", "name": "Node silent", "type": "node_heartbeat_overdue",
               "params": {"interval": format!("{HEARTBEAT_SECS}s")}, "receivers": ["ops"]}),
        json!({"id": "late", "name": "Pipe late", "type": "pump_started_overdue",
               "params": {"grace": "3s"}, "receivers": ["ops"]}),
    ] {
        let (st, body) = c
            .send("POST", "/api/v1/notification-rules", &op, rule)
            .await;
        assert_eq!(st, 201, "{body}");
    }
}

async fn node(root: &std::path::Path, c: &Collector) -> Node {
    let mut n = Node::new(
        root,
        NODE,
        SUB,
        &e2e::node::scheduled_pipes_config(&["orders", "customers"]),
    );
    n.collector = Some((c.url.clone(), c.token_file(SUB)));
    n.start(&["--health-interval".into(), "1s".into()]).await;
    n
}

async fn heartbeat_firing(hook: &Webhook) {
    until("the heartbeat page", Duration::from_secs(60), || async {
        (!hook.deliveries().is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_restarted_pages_only_for_its_heartbeat() {
    let dir = e2e::scratch();
    let hook = Webhook::start().await;
    let mut c = Collector::new(&dir.path().join("collector"), &[SUB]);
    c.start().await;
    rules(&c, &hook.url).await;
    let mut n = node(&dir.path().join("node"), &c).await;
    c.wait_pipe_runs(SUB, 2, 3).await;
    assert!(hook.deliveries().is_empty(), "{:?}", hook.deliveries());

    n.kill();
    heartbeat_firing(&hook).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    n.start(&["--health-interval".into(), "1s".into()]).await;
    c.wait_pipe_runs(SUB, 2, 5).await;
    // Longer than the fresh grace (schedule 2 s + grace 3 s).
    tokio::time::sleep(Duration::from_secs(8)).await;
    hook.assert_exactly(&[("firing", NODE, "?"), ("resolved", NODE, "?")]);
    n.stop();
    c.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_restarted_while_the_node_is_dead_pages_only_for_the_heartbeat() {
    let dir = e2e::scratch();
    let hook = Webhook::start().await;
    let mut c = Collector::new(&dir.path().join("collector"), &[SUB]);
    c.start().await;
    rules(&c, &hook.url).await;
    let mut n = node(&dir.path().join("node"), &c).await;
    c.wait_pipe_runs(SUB, 2, 3).await;

    n.kill();
    heartbeat_firing(&hook).await;
    c.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.start().await;
    tokio::time::sleep(Duration::from_secs(HEARTBEAT_SECS + 2)).await;
    assert_eq!(
        hook.deliveries().len(),
        1,
        "no second page after the restart"
    );
    n.start(&["--health-interval".into(), "1s".into()]).await;
    c.wait_pipe_runs(SUB, 2, 5).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    hook.assert_exactly(&[("firing", NODE, "?"), ("resolved", NODE, "?")]);
    n.stop();
    c.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_arriving_late_after_a_collector_outage_pages_nothing() {
    let dir = e2e::scratch();
    let hook = Webhook::start().await;
    let mut c = Collector::new(&dir.path().join("collector"), &[SUB]);
    c.start().await;
    rules(&c, &hook.url).await;
    let mut n = node(&dir.path().join("node"), &c).await;
    c.wait_pipe_runs(SUB, 2, 3).await;

    // The node keeps running its pipes while the collector is away longer
    // than the heartbeat interval; its backlog arrives when it is back.
    c.kill();
    tokio::time::sleep(Duration::from_secs(HEARTBEAT_SECS + 5)).await;
    c.start().await;
    c.wait_pipe_runs(SUB, 2, 5).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (got, _) = hook.distinct();
    let rules: Vec<String> = got
        .iter()
        .map(|d| {
            let a = &d.body["alerts"][0];
            format!(
                "{} {}",
                a["labels"]["rule_id"].as_str().unwrap_or("?"),
                a["status"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert!(
        rules.is_empty() || rules == ["silent firing", "silent resolved"],
        "{rules:?}"
    );
    n.stop();
    c.stop();
}

//! The node's in-process shipper (`--collector URL --token-file FILE`):
//! records flow from the node's outbox to an ingest endpoint, redacted, and
//! execution events of pipes without monitoring never leave.

mod common;

use std::time::Duration;

use common::*;
use schemas::{Body, EventType, Kind};
use serde_json::json;
use testkit::receiver::Receiver;

const SECRET: &str = "crm-secret-value-7f3a9c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ships_its_outbox_redacted_to_the_collector() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::default();
    rx.received.lock().unwrap().keep_bodies = true;
    let (collector, _server) = rx.start().await.unwrap();
    let (base, _seen) = http_system().await;
    let node = start_with(dir.path(), &example_config(&base), |c| {
        c.collector = Some(shipper::service::Target {
            urls: vec![collector.clone()],
            token: Some("test-token".into()),
        });
    })
    .await;
    let (status, _) = node
        .put_json("/api/secrets", &json!({"crm-token": SECRET}))
        .await;
    assert_eq!(status, 200);
    node.run_pipe("customers").await;
    node.run_pipe("active-customers").await;
    let (_, failed) = node.run_pipe("orders").await;
    assert_eq!(failed["event_type"], "pump-failed", "{failed}");
    assert!(
        failed.get("exception_entity").is_some(),
        "the node keeps the failing entity itself"
    );
    node.run_pipe("crm-contacts").await;

    // Wait until the node's outbox is drained into the receiver.
    let mut shipped_failure = false;
    for _ in 0..500 {
        shipped_failure = rx.received.lock().unwrap().records.values().any(|r| {
            matches!(&r.body, Body::Execution(e) if e.pipe == "orders" && e.event_type == EventType::PumpFailed)
        });
        if shipped_failure {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        shipped_failure,
        "the pump-failed event reached the collector"
    );

    check_shipped(&rx);
    node.stop().await;
}

fn check_shipped(rx: &Receiver) {
    let got = rx.received.lock().unwrap();
    let kinds: std::collections::HashSet<Kind> = got.records.values().map(|r| r.kind()).collect();
    assert!(
        kinds.contains(&Kind::Execution)
            && kinds.contains(&Kind::Config)
            && kinds.contains(&Kind::Health),
        "{kinds:?}"
    );
    for r in got.records.values() {
        assert_eq!(
            (r.source.as_str(), r.subscription.as_str()),
            ("test-node", "acme")
        );
        if let Body::Execution(e) = &r.body {
            assert_ne!(e.pipe, "active-customers", "monitoring is off for it");
            assert!(
                e.exception_entity.is_none() && e.entity.is_none(),
                "entities never leave the node"
            );
        }
    }
    for body in &got.bodies {
        for needle in [SECRET, "Lovelace"] {
            assert!(
                !body.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} left the node"
            );
        }
    }
}

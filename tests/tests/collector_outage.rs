//! The collector unreachable for a minute while a node keeps emitting at its
//! full rate (a 500,000-record stream, `--synthetic-logs` paced at 6,500
//! records/s, so it runs before, during and after the outage), then back on
//! the same address. The node's pipe fails during the outage.
//!
//! Asserts: the node's appends are not slowed by the outage (the outbox
//! absorbs the whole minute at the stream's rate); after the collector is
//! back, every record the outbox accepted is stored exactly once (sources
//! view, then the store audited offline), and the failure that happened
//! while it was away is notified exactly once.

use std::time::{Duration, Instant};

use e2e::collector::Expect;
use e2e::node::synthetic;
use e2e::process::until;
use e2e::webhook::Webhook;
use e2e::FailingPipe;

const TOTAL: u64 = 500_000;
const RATE: u64 = 6_500;
const OUTAGE: Duration = Duration::from_secs(60);
const SUB: &str = "outage";
const NODE: &str = "node-outage";
const PIPE: &str = "orders";
const SYNTHETIC: &str = "sesam_node_synthetic_records_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_without_the_collector_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let FailingPipe {
        dir: _dir,
        hook,
        mut collector,
        mut node,
        ..
    } = FailingPipe::start(SUB, NODE, PIPE, Webhook::start().await).await;
    node.start(&synthetic(TOTAL, RATE)).await;

    tokio::time::sleep(Duration::from_secs(6)).await;
    let before = collector.source(SUB, NODE).await.unwrap_or_default();
    assert!(before.records > 0, "the stream flows before the outage");
    collector.kill();
    let down = Instant::now();
    let emitted_at_start = node.metric(SYNTHETIC).await.expect("node metrics");
    tokio::time::sleep(OUTAGE / 3).await;
    assert_eq!(node.start_pump(PIPE).await, Some(200), "fail the pipe");
    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    let emitted = node.metric(SYNTHETIC).await.expect("node metrics") - emitted_at_start;
    let backlog = node.metric("outbox_records").await.expect("node metrics");
    let minimum = RATE as f64 * OUTAGE.as_secs_f64() * 0.9;
    assert!(
        emitted >= minimum,
        "the node emitted only {emitted} records during the outage (at least {minimum} expected)"
    );

    collector.start().await;
    let back = Instant::now();
    eprintln!(
        "collector down for {:?}: {emitted} records emitted meanwhile, {backlog} waiting in the outbox",
        down.elapsed()
    );
    let resumed = until("delivery to resume", Duration::from_secs(60), || async {
        let s = collector.source(SUB, NODE).await?;
        (s.records > before.records).then(|| back.elapsed())
    })
    .await;
    let caught_up = until("the backlog to drain", Duration::from_secs(120), || async {
        let depth = node.metric("outbox_records").await?;
        (depth < RATE as f64).then(|| back.elapsed())
    })
    .await;
    eprintln!("delivery resumed {resumed:?} after the collector came back; backlog drained after {caught_up:?}");

    until(
        "the end of the stream",
        Duration::from_secs(120),
        || async {
            let n = node.metric(SYNTHETIC).await?;
            (n >= TOTAL as f64).then_some(())
        },
    )
    .await;
    let last = node.drain_and_stop(Duration::from_secs(120)).await;
    assert!(last >= TOTAL, "the outbox accepted only {last} records");

    until("the notification", Duration::from_secs(60), || async {
        (!hook.deliveries().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    hook.assert_exactly(&[("firing", NODE, PIPE)]);
    collector
        .assert_exactly_once_and_stop(SUB, &[Expect::all(NODE, last)])
        .await;
    eprintln!(
        "{last} records stored once each; total {:?}",
        started.elapsed()
    );
}

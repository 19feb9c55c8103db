//! SIGKILL `sesam-node` at 10+ random moments while it emits a
//! 500,000-record stream (`--synthetic-logs`, paced) and ships it with its
//! in-process shipper to a real `sesam-collector`; after every kill the node
//! is restarted with the rest of the stream. In every life a pipe is started
//! that fails, so a `pump_failed` notification is expected.
//!
//! At the end: every record the node's outbox accepted (seqs 1..=last, read
//! from the outbox itself) is stored in the collector exactly once (its
//! sources view, then its store audited offline), and the failure was
//! notified exactly once: one distinct `X-Notification-Id` for the firing
//! alert (repeats with that id would be at-least-once re-sends).

use std::time::{Duration, Instant};

use e2e::collector::{operator_token, Expect};
use e2e::node::synthetic;
use e2e::webhook::Webhook;
use e2e::FailingPipe;
use rand::RngExt;

/// Records per second: the stream lasts about 20 s of node uptime, so that
/// lives of 0.3-2.5 s give well over 10 kills before it ends.
const RATE: u64 = 25_000;
const SUB: &str = "kill-node";
const NODE: &str = "node-kill";
const PIPE: &str = "orders";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_node_loses_and_duplicates_nothing() {
    run(500_000, 10).await;
}

/// Long mode (`cargo test --release -p e2e -- --ignored`): 2,000,000
/// records and 40 or more kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long mode: about 1.5 minutes"]
async fn sigkill_of_the_node_long() {
    run(2_000_000, 40).await;
}

/// Streams `total` records, killing the node at random moments, at
/// least `min_kills` times before the stream ends.
async fn run(total: u64, min_kills: usize) {
    let started = Instant::now();
    let FailingPipe {
        dir: _dir,
        hook,
        mut collector,
        mut node,
        ..
    } = FailingPipe::start(SUB, NODE, PIPE, Webhook::start().await).await;

    let mut rng = rand::rng();
    let (mut lives, mut kills, mut accepted) = (0, 0, 0);
    while accepted < total {
        lives += 1;
        node.spawn(&synthetic(total - accepted, RATE));
        let born = Instant::now();
        let life = Duration::from_millis(rng.random_range(300..2500));
        // Fail the pipe at a random moment of this life, if the API is up by then.
        let fail_at = life.mul_f64(rng.random_range(0.1..0.9));
        tokio::time::sleep(fail_at).await;
        let pumped = node.start_pump(PIPE).await;
        tokio::time::sleep(life.saturating_sub(born.elapsed())).await;
        node.kill();
        let before = accepted;
        accepted = node.accepted();
        if accepted < total {
            kills += 1;
        }
        eprintln!(
            "life {lives}: killed after {:?} (pump start: {pumped:?}); outbox accepted {} more, {accepted} in all",
            born.elapsed(),
            accepted - before
        );
        assert!(
            started.elapsed() < Duration::from_secs(total / RATE * 4 + 160),
            "the stream did not finish in time ({accepted} of {total}):\n{}",
            node.log_tail(20)
        );
    }
    assert!(kills >= min_kills, "only {kills} kills happened mid-stream");
    let streamed = started.elapsed();

    // A last life: fail the pipe once more for sure, drain, stop gracefully.
    node.start(&[]).await;
    assert_eq!(node.start_pump(PIPE).await, Some(200));
    let op = operator_token(SUB);
    let query = format!(r#"{{source="{NODE}", pipe="{PIPE}", event_type="pump-failed"}}"#);
    e2e::process::until(
        "the pump-failed event in the collector",
        Duration::from_secs(60),
        || async { (!collector.search(&op, &query).await.is_empty()).then_some(()) },
    )
    .await;
    let last = node.drain_and_stop(Duration::from_secs(120)).await;
    assert!(last >= total, "the outbox accepted only {last} records");

    e2e::process::until("the notification", Duration::from_secs(30), || async {
        (!hook.deliveries().is_empty()).then_some(())
    })
    .await;
    // Time for a wrong second notification to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    hook.assert_exactly(&[("firing", NODE, PIPE)]);
    let failures = collector.search(&op, &query).await.len();
    let lines = collector
        .assert_exactly_once_and_stop(SUB, &[Expect::all(NODE, last)])
        .await
        .remove(0);
    let synthetic = lines
        .values()
        .filter(|l| l["target"] == "node::synthetic")
        .count();
    assert!(synthetic as u64 <= last);
    eprintln!(
        "{kills} kills mid-stream; {last} records accepted ({synthetic} synthetic), all stored once; \
         {failures} pump-failed events, one notification; stream {streamed:?}, total {:?}",
        started.elapsed()
    );
}

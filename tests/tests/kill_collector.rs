//! SIGKILL `sesam-collector` at 10+ random moments while a node streams
//! 500,000 records into it (`--synthetic-logs`, paced, shipped by the
//! node's in-process shipper); the collector is restarted on the same port
//! after each kill. The node's pipe fails several times during the kill
//! loop, so the notifier inside the collector (its alert state and durable
//! delivery queue live in the collector's RocksDB) is killed around its
//! evaluation and deliveries too.
//!
//! At the end: every record the node's outbox accepted is stored exactly
//! once (sources view, then the store audited offline), and the failure
//! was notified exactly once: one distinct `X-Notification-Id`. The
//! webhook holds its answer to the first request back until the collector
//! has been killed, so the re-send of a notification whose delivery was
//! never recorded is exercised: it must come again with the same id and
//! payload (which a receiver may drop), never as a new notification.

use std::time::{Duration, Instant};

use e2e::collector::Expect;
use e2e::node::synthetic;
use e2e::webhook::Webhook;
use e2e::FailingPipe;
use rand::RngExt;

/// Records per second of the node: about 20 s of stream, so collector lives
/// of 0.2-1.8 s give well over 10 kills while it flows.
const RATE: u64 = 25_000;
const SUB: &str = "kill-collector";
const NODE: &str = "node-steady";
const PIPE: &str = "orders";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_collector_loses_and_duplicates_nothing() {
    run(500_000, 10).await;
}

/// Long mode (`cargo test --release -p e2e -- --ignored`): 2,000,000
/// records and 40 or more kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long mode: about 1.5 minutes"]
async fn sigkill_of_the_collector_long() {
    run(2_000_000, 40).await;
}

/// Streams `total` records, killing the collector at random moments, at
/// least `min_kills` times before the stream ends.
async fn run(total: u64, min_kills: usize) {
    let started = Instant::now();
    // The first notification is answered only after 3 s: the collector is
    // killed before (its lives last at most 1.8 s), so it must send it again.
    let hook = Webhook::start_slow_first(Duration::from_secs(3)).await;
    let FailingPipe {
        dir: _dir,
        hook,
        mut collector,
        mut node,
        ..
    } = FailingPipe::start(SUB, NODE, PIPE, hook).await;
    node.start(&synthetic(total, RATE)).await;

    let mut rng = rand::rng();
    let (mut lives, mut kills) = (0, 0);
    let mut pump_starts = 0;
    loop {
        lives += 1;
        let life = Duration::from_millis(rng.random_range(200..1800));
        tokio::time::sleep(life).await;
        let stored = collector
            .source(SUB, NODE)
            .await
            .unwrap_or_default()
            .records;
        if stored >= total {
            break;
        }
        collector.kill();
        kills += 1;
        // Fail the pipe while the collector is down or coming back up.
        if kills % 3 == 2 {
            assert_eq!(node.start_pump(PIPE).await, Some(200));
            pump_starts += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..500))).await;
        collector.start().await;
        eprintln!(
            "life {lives}: killed after {life:?} with {stored} records stored; \
             node accepted {:?} synthetic records",
            node.metric("sesam_node_synthetic_records_total").await
        );
        assert!(
            started.elapsed() < Duration::from_secs(total / RATE * 4 + 160),
            "the stream did not finish in time ({stored} of {total}):\n{}",
            collector.log_tail(20)
        );
    }
    assert!(kills >= min_kills, "only {kills} kills happened mid-stream");
    assert!(pump_starts > 0);
    let streamed = started.elapsed();
    let last = node.drain_and_stop(Duration::from_secs(120)).await;
    assert!(last >= total, "the outbox accepted only {last} records");

    e2e::process::until("the notification", Duration::from_secs(60), || async {
        (!hook.deliveries().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let repeats = hook.assert_exactly(&[("firing", NODE, PIPE)]);
    assert!(
        repeats >= 1,
        "the notification answered after the collector's death was not sent again"
    );
    collector
        .assert_exactly_once_and_stop(SUB, &[Expect::all(NODE, last)])
        .await;
    eprintln!(
        "{kills} collector kills mid-stream, {pump_starts} pipe failures among them; \
         {last} records stored once each; stream {streamed:?}, total {:?}",
        started.elapsed()
    );
}

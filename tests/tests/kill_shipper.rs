//! SIGKILL `sesam-shipper` at 10+ random moments while it tails a file that
//! grows to 500,000 numbered lines and ships them to a real
//! `sesam-collector`; after every kill the shipper is restarted.
//!
//! At the end: every line is stored in the collector exactly once (each line
//! number once, and the shipper's seqs 1..=500,000 each once: its sources
//! view, then its store audited offline) and the shipper's outbox is fully
//! acknowledged. The collector also serves a node whose pipe fails at a
//! random moment of the kill loop; that failure is notified exactly once
//! (file lines themselves never notify: rules evaluate execution, log,
//! health and metric data only).

use std::time::{Duration, Instant};

use e2e::collector::Expect;
use e2e::shipper::{line_number, LogWriter, Shipper};
use e2e::webhook::Webhook;
use e2e::FailingPipe;
use rand::RngExt;

/// Lines per second written: the file grows for 20 s, so lives of 0.3-2.5 s
/// give well over 10 kills while it grows.
const RATE: u64 = 25_000;
const SUB: &str = "kill-shipper";
const HOST: &str = "host-kill";
const NODE: &str = "node-steady";
const PIPE: &str = "orders";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_shipper_loses_and_duplicates_nothing() {
    run(500_000, 10).await;
}

/// Long mode (`cargo test --release -p e2e -- --ignored`): 2,000,000
/// records and 40 or more kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long mode: about 1.5 minutes"]
async fn sigkill_of_the_shipper_long() {
    run(2_000_000, 40).await;
}

/// Streams `total` records, killing the shipper at random moments, at
/// least `min_kills` times before the stream ends.
async fn run(total: u64, min_kills: usize) {
    let started = Instant::now();
    let FailingPipe {
        dir,
        hook,
        mut collector,
        mut node,
        token,
    } = FailingPipe::start(SUB, NODE, PIPE, Webhook::start().await).await;
    node.start(&[]).await;

    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut shipper = Shipper::new(
        &dir.path().join("shipper"),
        HOST,
        SUB,
        &collector.url,
        &token,
        &[&logs.join("*.log")],
    );
    let writer = LogWriter::start(&logs.join("app.log"), total, RATE);

    let mut rng = rand::rng();
    let (mut lives, mut kills, mut accepted) = (0, 0, 0);
    let fail_in_life = rng.random_range(2..8);
    while accepted < total {
        lives += 1;
        shipper.spawn();
        let life = Duration::from_millis(rng.random_range(300..2500));
        tokio::time::sleep(life).await;
        shipper.kill();
        let before = accepted;
        accepted = shipper.accepted();
        if accepted < total {
            kills += 1;
        }
        eprintln!(
            "life {lives}: killed after {life:?}; {} lines written, outbox accepted {} more, {accepted} in all",
            writer.written(),
            accepted - before
        );
        if lives == fail_in_life {
            assert_eq!(node.start_pump(PIPE).await, Some(200));
        }
        assert!(
            started.elapsed() < Duration::from_secs(total / RATE * 4 + 160),
            "the stream did not finish in time ({accepted} of {total}):\n{}",
            shipper.log_text()
        );
    }
    assert!(kills >= min_kills, "only {kills} kills happened mid-stream");
    assert_eq!(accepted, total, "one record per line");
    writer.join();
    let streamed = started.elapsed();

    // The last life ships the rest; then a graceful stop.
    shipper.start().await;
    collector
        .wait_records(SUB, HOST, total, Duration::from_secs(120))
        .await;
    // Stored is not yet acknowledged: a killed life's batch can be stored
    // without its answer reaching the shipper; the last life sends it
    // again (deduplicated) and only then empties its outbox.
    e2e::process::until("the outbox drained", Duration::from_secs(60), || async {
        (shipper.metric("outbox_records").await == Some(0.0)).then_some(())
    })
    .await;
    shipper.stop();
    let stats = shipper.outbox_stats();
    assert_eq!(stats.next_seq - 1, total);
    assert_eq!(stats.records, 0, "everything acknowledged");
    assert_eq!(stats.quarantined, 0);
    let node_last = node.drain_and_stop(Duration::from_secs(60)).await;

    e2e::process::until("the notification", Duration::from_secs(30), || async {
        (!hook.deliveries().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    hook.assert_exactly(&[("firing", NODE, PIPE)]);

    let stored = collector
        .assert_exactly_once_and_stop(
            SUB,
            &[Expect::all(HOST, total), Expect::all(NODE, node_last)],
        )
        .await;
    // Each line once, in file order along the seqs.
    let numbers: Vec<u64> = stored[0]
        .values()
        .map(|body| line_number(body).unwrap_or_else(|| panic!("not a numbered line: {body}")))
        .collect();
    let expected: Vec<u64> = (0..total).collect();
    assert!(
        numbers == expected,
        "lines out of order, missing or doubled"
    );
    eprintln!(
        "{kills} kills mid-stream; {total} lines stored once each; stream {streamed:?}, total {:?}",
        started.elapsed()
    );
}

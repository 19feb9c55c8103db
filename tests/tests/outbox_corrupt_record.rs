//! A flipped byte in stored outbox records. A node emits 20,000 synthetic
//! records and a pipe failure without a collector, and stops; then a byte
//! of five random stored records is flipped on disk (header, checksum or
//! payload, wherever it falls) and the node is started with its in-process
//! shipper.
//!
//! Asserts: each corrupt record is detected by its checksum, moved to the
//! outbox's quarantine with the reason and counted
//! (`outbox_records_quarantined_total`, the persisted counter); every other
//! record arrives in the collector exactly once and the five never do; the
//! pipe failure is notified exactly once.

use std::time::{Duration, Instant};

use e2e::collector::Expect;
use e2e::process::until;
use e2e::webhook::Webhook;
use e2e::FailingPipe;
use rand::seq::IndexedRandom;
use rand::RngExt;
use schemas::Body;

const RECORDS: u64 = 20_000;
const CORRUPT: usize = 5;
const SUB: &str = "corrupt";
const NODE: &str = "node-corrupt";
const PIPE: &str = "orders";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_records_are_quarantined_and_counted_and_the_rest_flows() {
    let started = Instant::now();
    let FailingPipe {
        dir: _dir,
        hook,
        mut collector,
        mut node,
        ..
    } = FailingPipe::start(SUB, NODE, PIPE, Webhook::start().await).await;

    // Records pile up in the outbox: no collector yet.
    let shipping_to = node.collector.take();
    node.start(&["--synthetic-logs".into(), RECORDS.to_string()])
        .await;
    until("the synthetic records", Duration::from_secs(60), || async {
        let n = node.metric("sesam_node_synthetic_records_total").await?;
        (n >= RECORDS as f64).then_some(())
    })
    .await;
    assert_eq!(node.start_pump(PIPE).await, Some(200));
    until("the pipe to fail", Duration::from_secs(30), || async {
        let n = node.metric("sesam_pump_failed_total").await?;
        (n >= 1.0).then_some(())
    })
    .await;
    node.stop();

    // Flip a byte of some stored synthetic records (not the pipe's events).
    let mut rng = rand::rng();
    let mut corrupted: Vec<u64> = {
        let outbox = node.outbox();
        let (stored, quarantined) = e2e::read_all(&outbox).unwrap();
        assert_eq!(quarantined, 0);
        let synthetic: Vec<u64> = stored
            .iter()
            .filter(|r| matches!(&r.body, Body::Log(l) if l.target == "node::synthetic"))
            .map(|r| r.seq)
            .collect();
        assert_eq!(synthetic.len() as u64, RECORDS);
        synthetic.sample(&mut rng, CORRUPT).copied().collect()
    };
    // The outbox is closed again: flip the bytes through RocksDB itself.
    let outbox_dir = node.data_dir.join("outbox");
    for seq in &corrupted {
        let flipped = e2e::corrupt_record(&outbox_dir, *seq, |v| {
            let at = rng.random_range(0..v.len());
            v[at] ^= rng.random_range(1..=255u8);
        });
        assert!(flipped, "seq {seq} is stored");
    }
    corrupted.sort_unstable();
    eprintln!("flipped a byte of seqs {corrupted:?}");

    node.collector = shipping_to;
    node.start(&[]).await;
    let quarantined = until("the quarantine", Duration::from_secs(60), || async {
        let n = node.metric("outbox_records_quarantined_total").await?;
        (n >= CORRUPT as f64).then_some(n)
    })
    .await;
    assert_eq!(quarantined, CORRUPT as f64);
    let last = node.drain_and_stop(Duration::from_secs(60)).await;
    let outbox = node.outbox();
    assert_eq!(
        outbox.stats().quarantined,
        CORRUPT as u64,
        "persisted counter"
    );
    let q = outbox.quarantined(100).unwrap();
    let seqs: Vec<u64> = q.iter().map(|(seq, _, _)| *seq).collect();
    assert_eq!(seqs, corrupted, "quarantined seqs");
    for (seq, reason, _) in &q {
        eprintln!("quarantined seq {seq}: {reason}");
        assert!(!reason.is_empty());
    }
    drop(outbox);

    until("the notification", Duration::from_secs(30), || async {
        (!hook.deliveries().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    hook.assert_exactly(&[("firing", NODE, PIPE)]);
    collector
        .assert_exactly_once_and_stop(
            SUB,
            &[Expect {
                source: NODE,
                last,
                missing: &corrupted,
            }],
        )
        .await;
    eprintln!(
        "{CORRUPT} corrupt records quarantined, the other {} stored once each; total {:?}",
        last - CORRUPT as u64,
        started.elapsed()
    );
}

//! Two stateless collectors over one ClickHouse (Debian's
//! `clickhouse-server`, on free loopback ports): a shipper tails a growing
//! file of 500,000 numbered lines and ships to both `--collector` URLs
//! (failing over between them); one collector or the other is killed with
//! SIGKILL at random moments throughout the stream and restarted. At the
//! end every line is stored exactly once in effect (one row per seq after
//! ClickHouse's own merge, read straight from the table), both collectors
//! answer the same sources and searches, and the shipper's outbox is empty.

use std::time::{Duration, Instant};

use e2e::clickhouse::count;
use e2e::collector::{operator_token, Collector, ADMIN};
use e2e::shipper::LogWriter;
use rand::RngExt;
use testkit::engines::ClickHouseOptions;

const SUB: &str = "ch-kill";
const SOURCE: &str = "host-1";
const RATE: u64 = 25_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_over_one_clickhouse_store_everything_once_through_kills() {
    run(500_000, 8).await;
}

/// Long mode: 2,000,000 lines and 30 kills or more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long mode: about 2 minutes"]
async fn two_collectors_over_one_clickhouse_long() {
    run(2_000_000, 30).await;
}

async fn run(total: u64, min_kills: usize) {
    let Some(ch) = e2e::clickhouse::start_or_skip(
        "two collectors over ClickHouse",
        ClickHouseOptions::default(),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut collectors: Vec<Collector> = (0..2)
        .map(|i| {
            let root = dir.path().join(format!("collector-{i}"));
            e2e::clickhouse::collector(&root, &[SUB], &[], &[ch.url()])
        })
        .collect();
    for c in &mut collectors {
        c.start().await;
    }
    let file = dir.path().join("app.log");
    let mut shipper = e2e::clickhouse::shipper_over(dir.path(), SOURCE, SUB, &collectors, &file);
    let started = Instant::now();
    let writer = LogWriter::start(&file, total, RATE);
    shipper.start().await;

    let mut rng = rand::rng();
    let mut kills = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1400))).await;
        let stored = collectors[0]
            .source(SUB, SOURCE)
            .await
            .or(collectors[1].source(SUB, SOURCE).await)
            .unwrap_or_default()
            .records;
        if stored >= total {
            break;
        }
        let victim = rng.random_range(0..2usize);
        collectors[victim].kill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..800))).await;
        collectors[victim].start().await;
        eprintln!("kill {kills}: collector {victim}, {stored} records stored before");
        assert!(
            started.elapsed() < Duration::from_secs(total / RATE * 4 + 120),
            "the stream did not finish in time ({stored} of {total}):\n{}\n{}",
            collectors[0].log_tail(20),
            collectors[1].log_tail(20)
        );
    }
    assert!(kills >= min_kills, "only {kills} kills happened mid-stream");
    writer.join();
    // Both answer the same, and all of it.
    for c in &collectors {
        c.wait_records(SUB, SOURCE, total, Duration::from_secs(60))
            .await;
        let s = c.source(SUB, SOURCE).await.expect("source");
        assert_eq!((s.records, s.last_seq), (total, total), "{}", c.url);
    }
    let q = r#"{source="host-1"} |= "line 00012345 ""#;
    let a = collectors[0].search(&operator_token(SUB), q).await;
    let b = collectors[1].search(&operator_token(SUB), q).await;
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a, b);
    // Straight from the table: one row per seq once ClickHouse merged, and
    // exactly the seqs 1..=total.
    ch.query("OPTIMIZE TABLE sesam.records FINAL")
        .expect("optimize");
    let filter = format!("subscription = '{SUB}' AND source = '{SOURCE}'");
    let rows = count(
        &ch,
        &format!("SELECT count() FROM sesam.records WHERE {filter}"),
    );
    let distinct = count(
        &ch,
        &format!("SELECT uniqExact(seq) FROM sesam.records WHERE {filter}"),
    );
    let (lo, hi) = (
        count(
            &ch,
            &format!("SELECT min(seq) FROM sesam.records WHERE {filter}"),
        ),
        count(
            &ch,
            &format!("SELECT max(seq) FROM sesam.records WHERE {filter}"),
        ),
    );
    assert_eq!((rows, distinct, lo, hi), (total, total, 1, total));
    // The shipper delivered everything and was told so.
    e2e::process::until("an empty outbox", Duration::from_secs(60), || async {
        (shipper.metric("outbox_records").await == Some(0.0)).then_some(())
    })
    .await;
    shipper.stop();
    assert_eq!(
        shipper.outbox_stats().records,
        0,
        "records left in the outbox"
    );
    let (_, sources) = collectors[1].get("/api/v1/sources", ADMIN).await;
    eprintln!(
        "{kills} collector kills; {total} lines stored once each in {:?}; {sources}",
        started.elapsed()
    );
    for c in &mut collectors {
        c.stop();
    }
}

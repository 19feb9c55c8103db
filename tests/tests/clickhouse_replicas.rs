//! Two replicas of one ClickHouse shard, coordinated by ZooKeeper (both
//! Debian's, on free loopback ports), under two collectors with
//! `--clickhouse-replicated` that list both replicas (in opposite order,
//! so both take writes). A shipper streams 200,000 numbered lines to both
//! collectors; each replica in turn is killed with SIGKILL mid-stream and
//! restarted on its data. At the end each replica holds every line
//! exactly once (after syncing and ClickHouse's own merge, read straight
//! from its table) and both collectors answer the full count.

use std::time::{Duration, Instant};

use e2e::collector::Collector;
use e2e::shipper::{LogWriter, Shipper};
use testkit::engines::{ClickHouse, ClickHouseOptions, ZooKeeper};

const SUB: &str = "ch-replicas";
const SOURCE: &str = "host-r";
const TOTAL: u64 = 200_000;
const RATE: u64 = 20_000;

fn count(ch: &ClickHouse, sql: &str) -> u64 {
    ch.query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_loses_and_doubles_nothing() {
    if !std::path::Path::new("/usr/sbin/clickhouse-server").exists() {
        testkit::engines::skip("ClickHouse replicas", "clickhouse-server is not installed");
        return;
    }
    let zk = match ZooKeeper::start() {
        Ok(z) => z,
        Err(e) if !std::path::Path::new("/usr/share/zookeeper").exists() => {
            testkit::engines::skip("ClickHouse replicas", &e);
            return;
        }
        Err(e) => panic!("zookeeper did not start: {e}"),
    };
    let (p1, p2) = (ClickHouse::reserve_ports(), ClickHouse::reserve_ports());
    let replica = |name: &str, ports| ClickHouseOptions {
        zookeeper: Some(zk.address()),
        shard: Some("01".into()),
        replica: Some(name.into()),
        cluster: vec![vec![p1.1, p2.1]],
        ports: Some(ports),
        password: None,
    };
    let mut replicas = [
        ClickHouse::start(replica("r1", p1)).expect("replica r1"),
        ClickHouse::start(replica("r2", p2)).expect("replica r2"),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let urls = [replicas[0].url(), replicas[1].url()];
    let mut collectors: Vec<Collector> = (0..2)
        .map(|i| {
            let mut c = Collector::new(&dir.path().join(format!("collector-{i}")), &[SUB]);
            c.args.extend([
                "--storage".into(),
                "clickhouse".into(),
                "--clickhouse-replicated".into(),
                "--clickhouse-url".into(),
                urls[i].clone(),
                "--clickhouse-url".into(),
                urls[1 - i].clone(),
            ]);
            c
        })
        .collect();
    for c in &mut collectors {
        c.start().await;
    }
    let file = dir.path().join("app.log");
    let token = collectors[0].token_file(SUB);
    let mut shipper = Shipper::new(
        &dir.path().join("shipper"),
        SOURCE,
        SUB,
        &collectors[0].url,
        &token,
        &[&file],
    );
    shipper
        .args
        .extend(["--collector".into(), collectors[1].url.clone()]);
    let started = Instant::now();
    let writer = LogWriter::start(&file, TOTAL, RATE);
    shipper.start().await;
    for victim in [0usize, 1] {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        replicas[victim].kill();
        eprintln!(
            "killed replica r{} at {:?} ({} lines written)",
            victim + 1,
            started.elapsed(),
            writer.written()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        replicas[victim].restart().expect("restart the replica");
    }
    writer.join();
    for c in &collectors {
        c.wait_records(SUB, SOURCE, TOTAL, Duration::from_secs(120))
            .await;
        let s = c.source(SUB, SOURCE).await.expect("source");
        assert_eq!((s.records, s.last_seq), (TOTAL, TOTAL), "{}", c.url);
    }
    e2e::process::until("an empty outbox", Duration::from_secs(60), || async {
        (shipper.metric("outbox_records").await == Some(0.0)).then_some(())
    })
    .await;
    shipper.stop();
    // Each replica, straight from its table: every seq once.
    let filter = format!("subscription = '{SUB}' AND source = '{SOURCE}'");
    for r in &replicas {
        r.query("SYSTEM SYNC REPLICA sesam.records").expect("sync");
    }
    replicas[0]
        .query("OPTIMIZE TABLE sesam.records FINAL")
        .expect("optimize");
    for (i, r) in replicas.iter().enumerate() {
        r.query("SYSTEM SYNC REPLICA sesam.records").expect("sync");
        let rows = count(
            r,
            &format!("SELECT count() FROM sesam.records WHERE {filter}"),
        );
        let distinct = count(
            r,
            &format!("SELECT uniqExact(seq) FROM sesam.records WHERE {filter}"),
        );
        let hi = count(
            r,
            &format!("SELECT max(seq) FROM sesam.records WHERE {filter}"),
        );
        assert_eq!(
            (rows, distinct, hi),
            (TOTAL, TOTAL, TOTAL),
            "replica r{}",
            i + 1
        );
    }
    eprintln!(
        "{TOTAL} lines once on both replicas in {:?}",
        started.elapsed()
    );
    for c in &mut collectors {
        c.stop();
    }
}

//! Two replicas of one ClickHouse shard, coordinated by ZooKeeper (both
//! Debian's, on free loopback ports), under two collectors with
//! `--clickhouse-replicated` that list both replicas (in opposite order,
//! so both take writes). A shipper streams 200,000 numbered lines to both
//! collectors; each replica in turn is killed with SIGKILL mid-stream and
//! restarted on its data. At the end each replica holds every line
//! exactly once (after syncing and ClickHouse's own merge, read straight
//! from its table) and both collectors answer the full count.

use std::time::{Duration, Instant};

use e2e::clickhouse::{collector, count, ingest_twice, start_or_skip, zookeeper_or_skip};
use e2e::collector::Collector;
use e2e::shipper::LogWriter;
use testkit::engines::{ClickHouse, ClickHouseOptions};

const SUB: &str = "ch-replicas";
const SOURCE: &str = "host-r";
const TOTAL: u64 = 200_000;
const RATE: u64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_loses_and_doubles_nothing() {
    let Some(zk) = zookeeper_or_skip("ClickHouse replicas") else {
        return;
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
            let root = dir.path().join(format!("collector-{i}"));
            let order = [urls[i].clone(), urls[1 - i].clone()];
            collector(&root, &[SUB], &["--clickhouse-replicated"], &order)
        })
        .collect();
    for c in &mut collectors {
        c.start().await;
    }
    let file = dir.path().join("app.log");
    let mut shipper = e2e::clickhouse::shipper_over(dir.path(), SOURCE, SUB, &collectors, &file);
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

/// Two shards (one server each) under `--clickhouse-cluster`: sources
/// spread over the shards, every record is stored once on the shard of
/// its (subscription, source), and reads through the Distributed tables
/// see all shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_hold_each_source_once_on_its_shard() {
    let (p1, p2) = (ClickHouse::reserve_ports(), ClickHouse::reserve_ports());
    let shard = |ports| ClickHouseOptions {
        cluster: vec![vec![p1.1], vec![p2.1]],
        ports: Some(ports),
        ..ClickHouseOptions::default()
    };
    let Some(s1) = start_or_skip("ClickHouse shards", shard(p1)) else {
        return;
    };
    let shards = [s1, ClickHouse::start(shard(p2)).expect("shard 2")];
    let dir = tempfile::tempdir().expect("tempdir");
    let urls = [shards[0].url(), shards[1].url()];
    let mut c = collector(
        &dir.path().join("collector"),
        &[SUB],
        &["--clickhouse-cluster", "sesam"],
        &urls,
    );
    c.start().await;
    for s in 0..8 {
        ingest_twice(&c, &c, SUB, &format!("node-{s}"), 500).await;
    }
    let per_shard: Vec<u64> = shards
        .iter()
        .map(|x| count(x, "SELECT count() FROM sesam.records_local"))
        .collect();
    assert_eq!(per_shard.iter().sum::<u64>(), 8 * 500, "{per_shard:?}");
    assert!(
        per_shard.iter().all(|n| *n > 0 && n.is_multiple_of(500)),
        "each source whole on one shard: {per_shard:?}"
    );
    for x in &shards {
        assert_eq!(count(x, "SELECT count() FROM sesam.records"), 4000);
    }
    let (_, v) = c.get("/api/v1/sources", e2e::collector::ADMIN).await;
    let v: serde_json::Value = serde_json::from_str(&v).expect("json");
    let sources = v["sources"].as_array().expect("sources");
    assert_eq!(sources.len(), 8, "{v}");
    assert!(
        sources
            .iter()
            .all(|s| s["records"] == 500 && s["duplicates"] == 500),
        "{v}"
    );
    let q = r#"{source=~"node-.*"} |= "record 250 of""#;
    assert_eq!(
        c.search(&e2e::collector::operator_token(SUB), q)
            .await
            .len(),
        8
    );
    c.stop();
}

/// The layout of `deploy/clickhouse/`: two shards of two replicas with
/// ZooKeeper, `--clickhouse-replicated --clickhouse-cluster sesam`, two
/// collectors listing every server. A batch stored through one collector
/// is a duplicate through the other; each source is whole on one shard and
/// on both of its replicas; both collectors read everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_of_two_replicas_as_in_deploy() {
    let Some(zk) = zookeeper_or_skip("ClickHouse 2x2") else {
        return;
    };
    let ports: Vec<(u16, u16, u16)> = (0..4).map(|_| ClickHouse::reserve_ports()).collect();
    let cluster = vec![vec![ports[0].1, ports[1].1], vec![ports[2].1, ports[3].1]];
    let servers: Vec<ClickHouse> = (0..4)
        .map(|i| {
            ClickHouse::start(ClickHouseOptions {
                zookeeper: Some(zk.address()),
                shard: Some(format!("0{}", i / 2 + 1)),
                replica: Some(format!("r{}", i % 2 + 1)),
                cluster: cluster.clone(),
                ports: Some(ports[i]),
                password: None,
            })
            .unwrap_or_else(|e| panic!("server {i}: {e}"))
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = ["--clickhouse-replicated", "--clickhouse-cluster", "sesam"];
    let mut collectors: Vec<Collector> = (0..2)
        .map(|i| {
            // Each collector starts on another server.
            let urls: Vec<String> = (0..4).map(|k| servers[(k + 2 * i) % 4].url()).collect();
            collector(
                &dir.path().join(format!("collector-{i}")),
                &[SUB],
                &flags,
                &urls,
            )
        })
        .collect();
    for c in &mut collectors {
        c.start().await;
    }
    for s in 0..8usize {
        let (a, b) = (&collectors[s % 2], &collectors[(s + 1) % 2]);
        ingest_twice(a, b, SUB, &format!("node-{s}"), 300).await;
    }
    for s in &servers {
        s.query("SYSTEM SYNC REPLICA sesam.records_local")
            .expect("sync");
    }
    let local: Vec<u64> = servers
        .iter()
        .map(|c| count(c, "SELECT count() FROM sesam.records_local"))
        .collect();
    assert_eq!(local[0], local[1], "replicas of shard 1 agree: {local:?}");
    assert_eq!(local[2], local[3], "replicas of shard 2 agree: {local:?}");
    assert_eq!(local[0] + local[2], 8 * 300, "{local:?}");
    assert!(
        local[0] > 0 && local[2] > 0 && local[0].is_multiple_of(300),
        "{local:?}"
    );
    for c in &collectors {
        let q = r#"{source=~"node-.*"} |= "record 150 of""#;
        let hits = c.search(&e2e::collector::operator_token(SUB), q).await;
        assert_eq!(hits.len(), 8, "{}", c.url);
        let s = c.source(SUB, "node-3").await.expect("node-3");
        assert_eq!((s.records, s.last_seq), (300, 300));
    }
    for c in &mut collectors {
        c.stop();
    }
}

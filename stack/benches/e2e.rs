//! End to end: records emitted by a node (appended to its outbox, as its
//! pipes, logs and health do) until they are searchable in the collector.
//!
//! `cargo bench -p stack --bench e2e` (release profile). In one process on
//! loopback: a collector (`collector::run`) and a node (`node::Node`) whose
//! in-process shipper delivers its outbox to it, both on RocksDB on disk.
//! 1. maximum rate: `BENCH_E2E_RECORDS` (default 500,000) log records of
//!    ~200 bytes appended by 4 concurrent appenders as fast as the outbox
//!    takes them; the rate is
//!    records / time until the collector has stored them all;
//! 2. latency at 50% of that rate for `BENCH_E2E_SECONDS` (default 20):
//!    every 10 ms a batch is appended with its emission instant; a poller
//!    reads the collector's stored-record count for the source every 2 ms;
//!    a record counts as searchable at the first poll whose count reaches
//!    its seq (the shipper delivers in order and the collector answers only
//!    after the synced commit that makes records visible to search).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use schemas::{Body, Level, LogBody, Record};
use testkit::env_usize;
use tokio_util::sync::CancellationToken;

fn record(i: u64) -> Record {
    Record {
        seq: 0,
        ts: schemas::time::now_nanos(),
        source: "bench-node".into(),
        subscription: "bench".into(),
        body: Body::Log(LogBody {
            level: Level::Warn,
            target: "node::pump".into(),
            message: format!("pipe pipe-{} processed batch {i} of entities from the source dataset crm-person-raw", i % 50),
            fields: Default::default(),
        }),
    }
}

async fn stored(client: &reqwest::Client, url: &str) -> u64 {
    let Ok(r) = client.get(url).bearer_auth("op").send().await else {
        return 0;
    };
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    v["sources"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["source"] == "bench-node"))
        .and_then(|s| s["records"].as_u64())
        .unwrap_or(0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let total = env_usize("BENCH_E2E_RECORDS", 500_000) as u64;
    let seconds = env_usize("BENCH_E2E_SECONDS", 20) as u64;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens.toml");
        std::fs::write(
            &tokens,
            "[[tokens]]\ntoken = \"ship\"\nsubscription = \"bench\"\nrole = \"shipper\"\n\n[[tokens]]\ntoken = \"op\"\nsubscription = \"bench\"\nrole = \"operator\"\n",
        )
        .unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let ccfg = collector::CollectorConfig::new(
            dir.path().join("collector"),
            collector::Listen::Listener(l),
            collector::Tokens::load(&tokens).unwrap(),
        );
        let stop = CancellationToken::new();
        let ctask = tokio::spawn(collector::run(ccfg, stop.clone()));

        let node_cfg = dir.path().join("node.json");
        std::fs::write(&node_cfg, r#"[{"_id": "node", "type": "metadata"}]"#).unwrap();
        let nl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut ncfg = node::NodeConfig::new(&node_cfg, dir.path().join("node"), node::Listen::Listener(nl));
        ncfg.node_id = "bench-node".into();
        ncfg.subscription = "bench".into();
        ncfg.health_interval = Duration::from_secs(3600);
        ncfg.collector = Some(shipper::service::Target {
            urls: vec![base.clone()],
            token: Some("ship".into()),
        });
        let node = node::Node::open(ncfg).await.unwrap();
        let outbox = node.outbox().clone();
        let nstop = stop.child_token();
        let ntask = tokio::spawn(node.run(nstop.clone()));
        let client = reqwest::Client::new();
        let sources = format!("{base}/api/v1/sources");
        // The node's own first records (config, health) come first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let base_count = stored(&client, &sources).await;

        // 1. Maximum rate.
        // Four appenders, as a node's pipes, logs and health append
        // concurrently (each append is a synced group commit).
        let started = Instant::now();
        let mut appenders = Vec::new();
        for a in 0..4u64 {
            let outbox = outbox.clone();
            let share = total / 4 + u64::from(a < total % 4);
            appenders.push(tokio::spawn(async move {
                let mut i = 0u64;
                while i < share {
                    let n = 1000.min(share - i);
                    let batch: Vec<Record> = (i..i + n).map(|j| record(a * total + j)).collect();
                    outbox.append(&batch).await.unwrap();
                    i += n;
                }
            }));
        }
        for t in appenders {
            t.await.unwrap();
        }
        let appended = started.elapsed();
        while stored(&client, &sources).await < base_count + total {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let max_rate = total as f64 / elapsed;
        println!(
            "e2e max: {total} records emitted (outbox appends took {:.2} s) and searchable in the collector after {elapsed:.2} s = {max_rate:.0} records/s",
            appended.as_secs_f64()
        );

        // 2. Latency at 50% of the maximum rate.
        let rate = max_rate / 2.0;
        let per_tick = (rate / 100.0).round().max(1.0) as u64;
        let emitted: Arc<Mutex<Vec<(u64, u64, Instant)>>> = Arc::default();
        let first_seq = outbox.last_seq() + 1;
        let done = CancellationToken::new();
        let poller = {
            let (client, sources, done) = (client.clone(), sources.clone(), done.clone());
            let base = stored(&client, &sources).await;
            tokio::spawn(async move {
                let mut seen: Vec<(u64, Instant)> = Vec::new();
                while !done.is_cancelled() {
                    let n = stored(&client, &sources).await.saturating_sub(base);
                    seen.push((n, Instant::now()));
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                seen
            })
        };
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let t0 = Instant::now();
        let mut k = 0u64;
        while t0.elapsed() < Duration::from_secs(seconds) {
            tick.tick().await;
            let batch: Vec<Record> = (k..k + per_tick).map(record).collect();
            let at = Instant::now();
            let receipt = outbox.append(&batch).await.unwrap();
            emitted
                .lock()
                .unwrap()
                .push((receipt.first_seq - first_seq, receipt.count as u64, at));
            k += per_tick;
        }
        let want = k;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = stored(&client, &sources).await;
            if n >= base_count + total + want || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        done.cancel();
        let seen = poller.await.unwrap();
        let emitted = emitted.lock().unwrap().clone();
        let mut lat = Vec::with_capacity(want as usize);
        for (first, count, at) in emitted {
            for s in first..first + count {
                // Records counted from 0: record s is stored once count > s.
                if let Some((_, t)) = seen.iter().find(|(n, t)| *n > s && *t >= at) {
                    lat.push((*t - at).as_secs_f64() * 1e3);
                }
            }
        }
        lat.sort_by(f64::total_cmp);
        println!(
            "e2e latency at 50% of max ({rate:.0} records/s offered, {} records over {seconds} s, {} measured): emission -> searchable p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            want,
            lat.len(),
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            lat[lat.len() - 1]
        );
        nstop.cancel();
        let _ = ntask.await;
        stop.cancel();
        let _ = ctask.await;
    });
}

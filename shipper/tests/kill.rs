//! SIGKILL `sesam-shipper` at random moments while it ships a 200,000-record
//! backlog; at the end every record is stored exactly once (the receiver
//! dedupes by (subscription, source, seq) like the collector) with the
//! right content, and the outbox is empty.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::RngExt;
use schemas::{Body, Level, LogBody, Record};
use shipper::outbox::{Outbox, OutboxConfig};
use testkit::receiver::Receiver;

const RECORDS: u64 = 200_000;

fn record(i: u64) -> Record {
    Record {
        seq: 0,
        ts: 1_764_280_000_000_000_000 + i as i64,
        source: "node-k".into(),
        subscription: "sub-k".into(),
        body: Body::Log(LogBody {
            level: Level::Info,
            target: "node::pipes".into(),
            message: format!(
                "record {i:08} of the kill test, padded to look like a real log line of a pump run"
            ),
            fields: Default::default(),
        }),
    }
}

fn spawn(dir: &std::path::Path, url: &str, token: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sesam-shipper"))
        .args([
            "--data-dir",
            dir.to_str().unwrap(),
            "--collector",
            url,
            "--token-file",
            token.to_str().unwrap(),
        ])
        .args(["--no-kmsg", "--in-flight", "3"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_shipping_stores_each_record_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let outbox = Outbox::open(dir.path().join("outbox"), OutboxConfig::default()).unwrap();
        for chunk in 0..RECORDS / 10_000 {
            let records: Vec<Record> = (0..10_000).map(|i| record(chunk * 10_000 + i)).collect();
            outbox.append(&records).await.unwrap();
        }
    }
    let token = dir.path().join("token");
    std::fs::write(&token, "test-token\n").unwrap();
    let rx = Receiver::default();
    // A slow collector, so that kills land while batches are in flight.
    rx.faults.lock().unwrap().delay = Duration::from_millis(120);
    let (url, _server) = rx.start().await.unwrap();

    let mut kills_mid_stream = 0;
    let started = Instant::now();
    while kills_mid_stream < 10 {
        let mut child = spawn(dir.path(), &url, &token);
        let wait = rand::rng().random_range(150..600);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        let stored = rx.stored() as u64;
        if stored < RECORDS {
            kills_mid_stream += 1;
        } else {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "kill loop took too long"
        );
    }
    assert!(
        kills_mid_stream >= 10,
        "only {kills_mid_stream} kills happened mid-stream"
    );

    // Let it finish, then stop it gracefully.
    rx.faults.lock().unwrap().delay = Duration::ZERO;
    let mut child = spawn(dir.path(), &url, &token);
    let deadline = Instant::now() + Duration::from_secs(120);
    while (rx.stored() as u64) < RECORDS {
        assert!(
            Instant::now() < deadline,
            "stored {} of {RECORDS}",
            rx.stored()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful shutdown failed: {status}");

    let got = rx.received.lock().unwrap();
    assert_eq!(got.records.len() as u64, RECORDS);
    for seq in 1..=RECORDS {
        let r = got
            .records
            .get(&("sub-k".to_string(), "node-k".to_string(), seq))
            .unwrap_or_else(|| panic!("seq {seq} missing"));
        match &r.body {
            Body::Log(l) => assert!(
                l.message.starts_with(&format!("record {:08} ", seq - 1)),
                "seq {seq}: {}",
                l.message
            ),
            other => panic!("{other:?}"),
        }
    }
    eprintln!(
        "kills mid-stream: {kills_mid_stream}; records re-sent after kills and deduped: {}",
        got.duplicates
    );
    drop(got);
    let outbox = Outbox::open(dir.path().join("outbox"), OutboxConfig::default()).unwrap();
    assert_eq!(outbox.stats().records, 0, "everything acknowledged");
}

//! The ingest load the collector benchmarks share (`ingest`, `clickhouse`):
//! records of about 250 bytes (60% execution events, 40% logs) of 4
//! sources and 50 pipes, pre-encoded as zstd MessagePack batches of 1,000
//! records, and a load generator that POSTs them over 8 connections.
//!
//! Included by each benchmark with `#[path = "common/load.rs"] mod load;`;
//! a benchmark need not use all of it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use schemas::{Body, EventType, ExecutionBody, IngestBatch, Level, LogBody, Record};

pub const SUB: &str = "bench";
pub const PIPES: u64 = 50;
pub const SOURCES: u64 = 4;
/// Records per ingest batch.
pub const BATCH_RECORDS: usize = 1000;
/// Connections of the load generator: 2 per source, so that each source's
/// batches arrive in order, as from a shipper.
pub const CONNECTIONS: usize = (SOURCES * 2) as usize;

/// A record of about 250 bytes as MessagePack: 60% execution events, 40% logs.
pub fn record(source: u64, seq: u64, ts: i64) -> Record {
    let pipe = format!("pipe-{}", (seq * 7 + source) % PIPES);
    let body = if seq % 5 < 3 {
        let event = match seq % 20 {
            0 => EventType::PumpFailed,
            1..=9 => EventType::PumpStarted,
            _ => EventType::PumpCompleted,
        };
        let mut b = ExecutionBody::new(pipe, event);
        b.run_id = Some(format!("run-{source}-{seq}"));
        b.start_time = Some("2026-11-27T10:00:00.000000Z".into());
        b.end_time = Some("2026-11-27T10:00:01.250000Z".into());
        if event == EventType::PumpCompleted {
            b.metrics.changes_last_run = Some(seq % 1000);
            b.metrics.entities_last_run = Some(seq % 5000);
            b.total_time = Some(1.25);
        }
        if event == EventType::PumpFailed {
            b.original_error_message = Some("read timeout from upstream system".into());
        }
        Body::Execution(Box::new(b))
    } else {
        Body::Log(LogBody {
            level: if seq % 10 == 3 { Level::Warn } else { Level::Info },
            target: "sesam_node::pump::runner".into(),
            message: format!(
                "pipe {pipe} processed batch {seq} of entities from the source dataset crm-person-raw; next run scheduled"
            ),
            fields: Default::default(),
        })
    };
    Record {
        seq,
        ts,
        source: format!("node-{source}"),
        subscription: SUB.into(),
        body,
    }
}

/// The records of batch `b` of the load: source `b % SOURCES`, its seqs
/// following on from the source's previous batch (every batch is full),
/// record `k` of the whole load at time `ts(k)`. Returns (source, records).
pub fn batch_records(b: usize, ts: &dyn Fn(usize) -> i64) -> (u64, Vec<Record>) {
    let source = b as u64 % SOURCES;
    let first_seq = (b as u64 / SOURCES) * BATCH_RECORDS as u64;
    let records = (0..BATCH_RECORDS)
        .map(|i| record(source, first_seq + i as u64 + 1, ts(b * BATCH_RECORDS + i)))
        .collect();
    (source, records)
}

/// Pre-encoded ingest bodies.
#[derive(Debug)]
pub struct Batches {
    /// zstd (level 1) MessagePack `IngestBatch`es, in load order.
    pub bodies: Vec<Vec<u8>>,
    /// Records in all (whole batches).
    pub records: usize,
    /// MessagePack bytes before compression.
    pub raw_bytes: usize,
}

impl Batches {
    /// Mean MessagePack bytes of a record (with its share of the envelope).
    pub fn record_bytes(&self) -> f64 {
        self.raw_bytes as f64 / self.records as f64
    }

    /// Compressed bytes on the wire.
    pub fn wire_bytes(&self) -> usize {
        self.bodies.iter().map(Vec::len).sum()
    }
}

/// Encodes `total` records (rounded up to whole batches) of
/// [`batch_records`], on every core (the bodies are the same whatever the
/// split).
pub fn encode(total: usize, ts: &(dyn Fn(usize) -> i64 + Sync)) -> Batches {
    let batches_n = total.div_ceil(BATCH_RECORDS);
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 8);
    let per = batches_n.div_ceil(threads).max(1);
    let parts: Vec<(Vec<Vec<u8>>, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..batches_n)
            .step_by(per)
            .map(|from| {
                s.spawn(move || {
                    let mut raw_bytes = 0;
                    let bodies = (from..(from + per).min(batches_n))
                        .map(|b| {
                            let (source, records) = batch_records(b, ts);
                            let raw = schemas::to_msgpack(&IngestBatch {
                                epoch: String::new(),
                                source: format!("node-{source}"),
                                subscription: SUB.into(),
                                records,
                                dropped: 0,
                            })
                            .expect("encode");
                            raw_bytes += raw.len();
                            zstd::encode_all(raw.as_slice(), 1).expect("zstd")
                        })
                        .collect();
                    (bodies, raw_bytes)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("encoder thread"))
            .collect()
    });
    let mut out = Batches {
        bodies: Vec::with_capacity(batches_n),
        records: batches_n * BATCH_RECORDS,
        raw_bytes: 0,
    };
    for (bodies, raw) in parts {
        out.bodies.extend(bodies);
        out.raw_bytes += raw;
    }
    out
}

/// POSTs every body to `/api/v1/ingest` over [`CONNECTIONS`] connections:
/// connection `c` sends bodies `c`, `c + CONNECTIONS`, ... (all of source
/// `c % SOURCES`, in order) to `targets[c]` (`http://host:port`), each
/// answer awaited before the next; a 429 is retried after 20 ms. Returns
/// the number of 429 retries. Panics on any other answer.
pub async fn post(client: &reqwest::Client, targets: &[String], bodies: &Arc<Vec<Vec<u8>>>) -> u64 {
    assert_eq!(targets.len(), CONNECTIONS, "one target per connection");
    let token = testkit::tokens::shipper(SUB);
    let retries = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (c, target) in targets.iter().enumerate() {
        let (client, url, bodies, retries, token) = (
            client.clone(),
            format!("{target}/api/v1/ingest"),
            bodies.clone(),
            retries.clone(),
            token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while i < bodies.len() {
                loop {
                    let r = client
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", "application/msgpack")
                        .header("content-encoding", "zstd")
                        .body(bodies[i].clone())
                        .send()
                        .await
                        .expect("post");
                    if r.status() == 200 {
                        break;
                    }
                    let status = r.status();
                    assert_eq!(
                        status,
                        429,
                        "unexpected status from {url}: {}",
                        r.text().await.unwrap_or_default()
                    );
                    retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                i += CONNECTIONS;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    retries.load(Ordering::Relaxed)
}

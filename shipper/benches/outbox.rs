//! Outbox throughput beside raw RocksDB on the same disk, in one run.
//!
//! `cargo bench -p shipper --bench outbox` prints a Markdown table:
//! (a) 8 appenders x batches of 100, (b) 64 appenders x single records,
//! raw synced RocksDB WriteBatches of the effective group sizes, and drain
//! (read + ack) throughput. `OUTBOX_BENCH_RECORDS` scales run (a).

use std::sync::{Arc, Barrier};
use std::time::Instant;

use rocksdb::{Options, WriteBatch, WriteOptions, DB};
mod common;

use common::record;
use schemas::Record;
use shipper::outbox::{Outbox, OutboxConfig};

fn appenders(threads: usize, per_thread_batches: usize, batch: usize) -> (f64, f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let ob = ob.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let records: Vec<Record> = (0..batch as u64)
                    .map(|i| record(t as u64 * 1_000_000 + i))
                    .collect();
                barrier.wait();
                for _ in 0..per_thread_batches {
                    ob.append(&records).wait().unwrap();
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let total = (threads * per_thread_batches * batch) as f64;
    let commits = ob.metrics().group_commits.get();
    (total / secs, total / commits as f64, commits)
}

/// Raw RocksDB: synced WriteBatches of `batch` pre-encoded values.
fn raw(batch: usize, batches: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_write_buffer_size(16 << 20);
    let db = DB::open(&opts, dir.path()).unwrap();
    let value = schemas::to_msgpack(&record(1)).unwrap();
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    let mut seq = 0u64;
    let start = Instant::now();
    for _ in 0..batches {
        let mut b = WriteBatch::default();
        for _ in 0..batch {
            seq += 1;
            b.put(seq.to_be_bytes(), &value);
        }
        db.write_opt(b, &wo).unwrap();
    }
    (batch * batches) as f64 / start.elapsed().as_secs_f64()
}

fn drain(records: u64, decode: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    ob.register_sink("c").wait().unwrap();
    let chunk: Vec<Record> = (0..10_000).map(record).collect();
    for _ in 0..records / 10_000 {
        ob.append(&chunk).wait().unwrap();
    }
    let start = Instant::now();
    let mut after = 0;
    let mut n = 0u64;
    while n < records {
        let (count, last) = if decode {
            let b = ob.read(after, 10_000, 8 << 20).unwrap();
            (b.records.len(), b.last_seq)
        } else {
            let b = ob.read_raw(after, 10_000, 8 << 20).unwrap();
            (b.entries.len(), b.last_seq)
        };
        ob.ack("c", last, 0).wait().unwrap();
        after = last;
        n += count as u64;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    assert_eq!(ob.stats().records, 0);
    rate
}

fn main() {
    let size = schemas::to_msgpack(&record(1)).unwrap().len();
    let total_a: usize = std::env::var("OUTBOX_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    println!(
        "record size: {size} bytes (MessagePack) + 5 bytes header; machine: {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let (a_rate, a_group, a_commits) = appenders(8, total_a / 800, 100);
    let (b_rate, b_group, b_commits) = appenders(64, 1_500, 1);
    let raw_a = raw(
        a_group.round().max(1.0) as usize,
        (total_a as f64 / a_group).ceil() as usize / 2,
    );
    let raw_100 = raw(100, 3_000);
    let raw_b = raw(b_group.round().max(1.0) as usize, 2_000);
    let raw_1 = raw(1, 2_000);
    let drain_raw = drain(1_000_000, false);
    let drain_decoded = drain(1_000_000, true);

    println!();
    println!("| measurement | records/s | baseline (raw RocksDB, same run) | ratio |");
    println!("|---|---:|---|---:|");
    println!(
        "| (a) 8 appenders x batches of 100, group commit ({a_commits} commits, {a_group:.0} records each) | {a_rate:.0} | synced WriteBatch of {:.0}: {raw_a:.0}; of 100: {raw_100:.0} | {:.2} of same-size raw |",
        a_group.round(),
        a_rate / raw_a
    );
    println!(
        "| (b) 64 appenders x 1 record ({b_commits} commits, {b_group:.1} records each) | {b_rate:.0} | one sync per record: {raw_1:.0}; WriteBatch of {:.0}: {raw_b:.0} | {:.1}x one-sync-per-record |",
        b_group.round(),
        b_rate / raw_1
    );
    println!("| drain, read_raw + ack, batches of 10,000 | {drain_raw:.0} | - | - |");
    println!("| drain, read (decoded) + ack, batches of 10,000 | {drain_decoded:.0} | - | - |");
}

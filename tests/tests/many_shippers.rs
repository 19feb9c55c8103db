//! 50 `sesam-shipper` processes start at once against one `sesam-collector`
//! (16 ingest requests decoding at once, at most 8 of one subscription;
//! `--admission-wait 0s`: a request whose body arrived while its
//! subscription's decode slots are all busy is shed at once instead of
//! waiting up to 2 s for one, so this burst is overload), each with a
//! backlog of 10,000 lines (500,000 records in all, 4 batches in flight
//! each); a node's pipe fails in the middle of the burst.
//!
//! Asserts: the collector sheds the excess with 429 (counted in
//! `collector_ingest_rejections_total{reason="busy"}`), its peak memory
//! (`VmHWM`) stays under [`MEMORY_BOUND`] (printed), every line of every
//! shipper is stored exactly once (sources view, then the store audited
//! offline), every shipper's outbox ends empty, and the pipe failure is
//! notified exactly once.

use std::time::{Duration, Instant};

use e2e::collector::{Expect, ADMIN};
use e2e::process::until;
use e2e::shipper::{line_number, write_numbered_file, Shipper};
use e2e::webhook::Webhook;
use e2e::FailingPipe;

const SHIPPERS: usize = 50;
const LINES: u64 = 10_000;
/// Peak resident memory allowed to the collector. Its admission control
/// holds 16 ingest requests (each a batch of at most 2,000 records here),
/// and its caches are 64 MiB of blocks plus memtables.
const MEMORY_BOUND: u64 = 512 << 20;
const SUB: &str = "many";
const NODE: &str = "node-many";
const PIPE: &str = "orders";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_shippers_are_shed_with_429_in_bounded_memory_losing_nothing() {
    let started = Instant::now();
    let hook = Webhook::start().await;
    let FailingPipe {
        dir,
        hook,
        mut collector,
        mut node,
        token,
    } = FailingPipe::start_with(SUB, NODE, PIPE, hook, &["--admission-wait", "0s"]).await;
    node.start(&[]).await;

    let mut shippers: Vec<Shipper> = (0..SHIPPERS)
        .map(|i| {
            let root = dir.path().join(format!("shipper-{i:02}"));
            std::fs::create_dir_all(&root).unwrap();
            let file = root.join("app.log");
            write_numbered_file(&file, LINES);
            Shipper::new(
                &root,
                &format!("host-{i:02}"),
                SUB,
                &collector.url,
                &token,
                &[&file],
            )
        })
        .collect();
    let burst = Instant::now();
    for s in &mut shippers {
        s.spawn();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(node.start_pump(PIPE).await, Some(200), "fail the pipe");

    let sources: Vec<String> = shippers.iter().map(|s| s.source.clone()).collect();
    until(
        "every line of every shipper in the collector",
        Duration::from_secs(300),
        || async {
            let v = collector.get_json("/api/v1/sources", ADMIN).await;
            let done = v["sources"]
                .as_array()?
                .iter()
                .filter(|s| {
                    sources.iter().any(|n| s["source"] == n.as_str())
                        && s["records"].as_u64() == Some(LINES)
                })
                .count();
            (done == SHIPPERS).then_some(())
        },
    )
    .await;
    let shipped_in = burst.elapsed();
    let (_, metrics) = collector.get("/metrics", ADMIN).await;
    let busy: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("collector_ingest_rejections_total") && l.contains("reason=\"busy\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let hwm = collector
        .process()
        .and_then(|p| p.vm_hwm_bytes())
        .expect("VmHWM of the collector");
    eprintln!(
        "{SHIPPERS} shippers x {LINES} lines stored in {shipped_in:?}; the collector answered 429 {busy} times; \
         its peak RSS (VmHWM) was {:.1} MiB (bound {} MiB)",
        hwm as f64 / (1 << 20) as f64,
        MEMORY_BOUND >> 20
    );
    assert!(busy > 0.0, "the collector never shed load with 429");
    assert!(
        hwm < MEMORY_BOUND,
        "collector peak memory {hwm} bytes over the bound"
    );

    for s in &mut shippers {
        s.stop();
        let stats = s.outbox_stats();
        assert_eq!(
            (stats.next_seq - 1, stats.records, stats.quarantined),
            (LINES, 0, 0),
            "{}: one record per line, all acknowledged",
            s.source
        );
    }
    let node_last = node.drain_and_stop(Duration::from_secs(60)).await;
    until("the notification", Duration::from_secs(60), || async {
        (!hook.deliveries().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    hook.assert_exactly(&[("firing", NODE, PIPE)]);

    let mut expect: Vec<Expect<'_>> = sources.iter().map(|s| Expect::all(s, LINES)).collect();
    expect.push(Expect::all(NODE, node_last));
    let stored = collector.assert_exactly_once_and_stop(SUB, &expect).await;
    for (source, lines) in sources.iter().zip(&stored) {
        let numbers: Vec<u64> = lines.values().filter_map(line_number).collect();
        assert!(
            numbers == (0..LINES).collect::<Vec<_>>(),
            "{source}: every line once, in order"
        );
    }
    eprintln!("total {:?}", started.elapsed());
}

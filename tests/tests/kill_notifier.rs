//! SIGKILL `sesam-collector` at random moments while a stream of ingest
//! batches with failing pipes flows into it; the notifier evaluates the
//! stored records off the commit path (from the store's commit feed, with a
//! watermark persisted with its effects), so kills land between a commit
//! and its evaluation, in the middle of evaluations and deliveries.
//!
//! The stream (one source, one outbox epoch) has four phases; every pipe
//! `p-<i>` fails in phase 0, completes in phase 1, fails again in phase 2
//! and completes in phase 3, among log records. Within a phase four
//! batches are in flight at once (so a source's records commit out of seq
//! order) and seqs have gaps (records filtered at the node); a phase starts
//! once every batch of the one before was acknowledged (so each pipe's
//! events commit in order). A batch not acknowledged (the collector died)
//! is sent again, as shippers do.
//!
//! At the end each pipe's two incidents were notified exactly once each,
//! in effect: one distinct `X-Notification-Id` per firing and per
//! resolution (a re-send of a delivery the collector had not recorded
//! comes with an id already seen and the same payload). A record
//! evaluated twice would fire again after its resolution (an extra
//! firing); a record never evaluated would leave a notification out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::collector::{shipper_token, Collector};
use e2e::webhook::Webhook;
use rand::RngExt;
use schemas::{Body, EventType, ExecutionBody, IngestBatch, Record};

const SUB: &str = "kill-notifier";
const SOURCE: &str = "node-k";
const EPOCH: &str = "kill-notifier-epoch";
const PIPES: usize = 60;
const BATCHES_PER_PHASE: usize = 60;
const LOGS_PER_BATCH: usize = 400;
const IN_FLIGHT: usize = 4;
/// Pause of each sender between two batches: about 15 s of stream.
const PACE: Duration = Duration::from_millis(250);

/// The stream: per phase, its batches (deterministic, so a re-sent batch
/// is identical and stored once).
fn stream() -> Vec<Vec<IngestBatch>> {
    let base = schemas::time::now_nanos() - 120_000_000_000;
    let mut seq = 0u64;
    let mut next_seq = || {
        seq += 1;
        // Every 13th seq is never sent (filtered at the node).
        if seq.is_multiple_of(13) {
            seq += 1;
        }
        seq
    };
    let mut phases = Vec::new();
    for phase in 0..4 {
        let mut batches = Vec::new();
        for b in 0..BATCHES_PER_PHASE {
            let mut records = Vec::new();
            for i in 0..LOGS_PER_BATCH {
                let s = next_seq();
                records.push(Record {
                    seq: s,
                    ts: base + s as i64 * 1000,
                    source: SOURCE.into(),
                    subscription: SUB.into(),
                    body: Body::Log(schemas::LogBody {
                        level: schemas::Level::Info,
                        target: "stream".into(),
                        message: format!("phase {phase} batch {b} line {i}"),
                        fields: Default::default(),
                    }),
                });
                // The pipes' events are spread over the phase's batches.
                if i % 100 == 50 {
                    let p = (b * (LOGS_PER_BATCH / 100) + i / 100) % (BATCHES_PER_PHASE * 4);
                    if p < PIPES {
                        let s = next_seq();
                        let ev = if phase % 2 == 0 {
                            EventType::PumpFailed
                        } else {
                            EventType::PumpCompleted
                        };
                        let mut e = ExecutionBody::new(format!("p-{p}"), ev);
                        e.run_id = Some(format!("run-{phase}-{p}"));
                        if ev == EventType::PumpFailed {
                            e.reason_why_stopped = Some(format!("upstream timeout {phase}"));
                        }
                        records.push(Record {
                            seq: s,
                            ts: base + s as i64 * 1000,
                            source: SOURCE.into(),
                            subscription: SUB.into(),
                            body: Body::Execution(Box::new(e)),
                        });
                    }
                }
            }
            batches.push(IngestBatch {
                epoch: EPOCH.into(),
                source: SOURCE.into(),
                subscription: SUB.into(),
                records,
                dropped: 0,
            });
        }
        phases.push(batches);
    }
    phases
}

/// Posts `body` until the collector answers 200 (it may be dead or
/// starting meanwhile).
async fn deliver(client: &reqwest::Client, url: &str, body: &[u8]) {
    let token = shipper_token(SUB);
    loop {
        let r = client
            .post(format!("{url}/api/v1/ingest"))
            .bearer_auth(&token)
            .header("content-type", "application/msgpack")
            .body(body.to_vec())
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 200 => return,
            Ok(r) if r.status().is_client_error() && r.status() != 429 => {
                panic!(
                    "ingest refused: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_evaluation_notifies_every_incident_exactly_once() {
    let dir = e2e::scratch();
    let collector = Collector::new(&dir.path().join("collector"), &[SUB]);
    sigkill_during_evaluation(collector).await;
}

/// The same over ClickHouse (`--storage clickhouse`): the ClickHouse
/// writer keeps the commit feed in the collector's local store, written
/// before each insert and settled at the next start after a kill between
/// the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_evaluation_over_clickhouse_notifies_every_incident_exactly_once() {
    let Some(ch) = e2e::clickhouse::start_or_skip(
        "kill during evaluation over ClickHouse",
        testkit::engines::ClickHouseOptions::default(),
    ) else {
        return;
    };
    let dir = e2e::scratch();
    let collector =
        e2e::clickhouse::collector(&dir.path().join("collector"), &[SUB], &[], &[ch.url()]);
    sigkill_during_evaluation(collector).await;
}

async fn sigkill_during_evaluation(mut collector: Collector) {
    let started = Instant::now();
    let hook = Webhook::start().await;
    // A small evaluation queue: records beyond it are read back from the
    // store's commit feed, so that path runs too, not only after restarts.
    collector
        .args
        .extend(["--notifier-queue-records".into(), "1500".into()]);
    collector.start().await;
    collector
        .pump_failed_rule(SUB, "ops", &["p-*"], &hook.url)
        .await;

    let phases: Vec<Vec<Arc<Vec<u8>>>> = stream()
        .iter()
        .map(|p| {
            p.iter()
                .map(|b| Arc::new(schemas::to_msgpack(b).expect("encode batch")))
                .collect()
        })
        .collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let url = collector.url.clone();
    let sender = tokio::spawn(async move {
        for batches in phases {
            let next = Arc::new(AtomicUsize::new(0));
            let batches = Arc::new(batches);
            let mut workers = Vec::new();
            for _ in 0..IN_FLIGHT {
                let (next, batches, client, url) =
                    (next.clone(), batches.clone(), client.clone(), url.clone());
                workers.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(b) = batches.get(i) else { break };
                        deliver(&client, &url, b).await;
                        // Paced: the stream lasts long enough for many kills.
                        tokio::time::sleep(PACE).await;
                    }
                }));
            }
            for w in workers {
                w.await.expect("sender task");
            }
        }
    });

    let mut rng = rand::rng();
    let mut kills = 0;
    while !sender.is_finished() {
        let life = Duration::from_millis(rng.random_range(150..1200));
        tokio::time::sleep(life).await;
        if sender.is_finished() {
            break;
        }
        collector.kill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        collector.start().await;
        assert!(
            started.elapsed() < Duration::from_secs(400),
            "the stream did not finish in time:\n{}",
            collector.log_tail(20)
        );
    }
    sender.await.expect("sender");
    // One more kill right after the last acknowledgement: its records are
    // committed, maybe not evaluated.
    collector.kill();
    kills += 1;
    collector.start().await;
    assert!(kills >= 8, "only {kills} kills happened mid-stream");

    let want = PIPES * 4;
    e2e::process::until("every notification", Duration::from_secs(180), || async {
        (hook.distinct().0.len() >= want).then_some(())
    })
    .await;
    // Anything extra (a re-page) would come shortly after.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let names: Vec<String> = (0..PIPES).map(|p| format!("p-{p}")).collect();
    let mut expected = Vec::new();
    for n in &names {
        for status in ["firing", "firing", "resolved", "resolved"] {
            expected.push((status, SOURCE, n.as_str()));
        }
    }
    let repeats = hook.assert_exactly(&expected);

    // Nothing is left to evaluate, and the lag says so.
    let text = e2e::hostile::metrics_text(
        &reqwest::Client::new(),
        &collector.url,
        Some(e2e::collector::ADMIN),
    )
    .await;
    let lag = e2e::hostile::sample(
        &text,
        &format!("notifier_evaluation_lag_records{{subscription=\"{SUB}\"}}"),
    );
    assert_eq!(lag, Some(0.0), "evaluation lag at the end:\n{text}");
    collector.stop();
    eprintln!(
        "{kills} collector kills; {want} notifications each once ({repeats} re-sends of an already-seen id); {:?}",
        started.elapsed()
    );
}

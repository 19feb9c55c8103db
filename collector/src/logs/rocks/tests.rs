//! Store behaviour: dedupe, observers, retention, purge, reopen.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use schemas::{Body, Level, LogBody, Record};

use super::*;
use crate::logs::ingest::{prepare, DecodedBatch, IngestLimits};
use crate::logs::retention::RetentionPolicy;

fn rec(sub: &str, source: &str, seq: u64, ts: i64, level: Level) -> Record {
    Record {
        seq,
        ts,
        source: source.into(),
        subscription: sub.into(),
        body: Body::Log(LogBody {
            level,
            target: "t".into(),
            message: format!("message {seq}"),
            fields: Default::default(),
        }),
    }
}

fn prepared(records: Vec<Record>, keep: bool) -> PreparedBatch {
    let sub = records[0].subscription.clone();
    let source = records[0].source.clone();
    prepare(
        DecodedBatch {
            source,
            subscription: sub,
            epoch: String::new(),
            records,
            dropped: 0,
        },
        &IngestLimits::default(),
        i64::MAX / 2,
        0,
        keep,
    )
    .expect("valid")
}

#[derive(Default)]
struct Seen {
    records: Mutex<Vec<(String, u64)>>,
    purged: Mutex<Vec<String>>,
}

impl IngestObserver for Seen {
    fn committed(&self, records: &[Record]) {
        self.records
            .lock()
            .expect("lock")
            .extend(records.iter().map(|r| (r.source.clone(), r.seq)));
    }
    fn subscription_purged(&self, subscription: &str) {
        self.purged.lock().expect("lock").push(subscription.into());
    }
}

fn open(path: &std::path::Path, observers: Vec<Arc<dyn IngestObserver>>) -> Store {
    Store::open(path, StoreConfig::default(), Metrics::default(), observers).expect("open")
}

fn count(store: &Store, stream: u64) -> usize {
    let mut it = store.scan(stream, i64::MIN, i64::MAX, false).expect("scan");
    let mut n = 0;
    while it.valid() {
        n += usize::from(it.current().is_some());
        it.advance();
    }
    n
}

#[tokio::test]
async fn observers_see_each_new_record_once_and_never_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seen = Arc::new(Seen::default());
    let store = open(dir.path(), vec![seen.clone()]);
    let batch = |seqs: std::ops::Range<u64>| {
        prepared(
            seqs.map(|s| rec("a", "n", s, 1000 + s as i64, Level::Info))
                .collect(),
            true,
        )
    };
    let o = store.ingest(batch(1..11)).await.expect("ingest");
    assert_eq!((o.accepted, o.duplicates), (10, 0));
    let o = store.ingest(batch(5..16)).await.expect("ingest");
    assert_eq!((o.accepted, o.duplicates), (5, 6));
    let got: Vec<u64> = seen
        .records
        .lock()
        .expect("lock")
        .iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(got, (1..16).collect::<Vec<_>>());
    store.purge("a").await.expect("purge");
    assert_eq!(*seen.purged.lock().expect("lock"), vec!["a".to_string()]);
}

#[tokio::test]
async fn retention_deletes_expired_prefixes_in_slices_and_keeps_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), Vec::new());
    let hour = 3_600_000_000_000i64;
    let base = 100 * hour;
    // 25,000 old records in "a" (more than two slices), 10 recent ones.
    let mut seq = 1;
    for chunk in 0..5 {
        let records = (0..5000)
            .map(|i| {
                let r = rec("a", "n", seq, base + chunk * 5000 + i, Level::Info);
                seq += 1;
                r
            })
            .collect();
        store
            .ingest(prepared(records, false))
            .await
            .expect("ingest");
    }
    let recent: Vec<Record> = (0..10)
        .map(|i| {
            rec(
                "a",
                "n",
                30_000 + i,
                base + 10 * hour + i as i64,
                Level::Info,
            )
        })
        .collect();
    store.ingest(prepared(recent, false)).await.expect("ingest");
    // "b" keeps 720 h by default: untouched.
    store
        .ingest(prepared(vec![rec("b", "n", 1, base, Level::Warn)], false))
        .await
        .expect("ingest");

    let mut policy = RetentionPolicy::default();
    policy
        .overrides
        .insert("a".into(), Duration::from_secs(5 * 3600));
    let deleted = store
        .retention_pass(&policy, base + 11 * hour)
        .await
        .expect("retention");
    assert_eq!(deleted, 25_000);
    let a = store
        .streams()
        .into_iter()
        .find(|s| s.subscription() == "a")
        .expect("stream a");
    assert_eq!(a.records, 10);
    assert_eq!(a.min_ts, base + 10 * hour);
    assert_eq!(count(&store, a.id), 10);
    let b = store
        .streams()
        .into_iter()
        .find(|s| s.subscription() == "b")
        .expect("stream b");
    assert_eq!(count(&store, b.id), 1);
    let src = store
        .sources()
        .into_iter()
        .find(|s| s.subscription == "a")
        .expect("source");
    assert_eq!(src.meta.records, 10);
    assert_eq!(src.meta.last_seq, 30_009);

    // Expired seqs were forgotten with their records (their window is gone
    // too), kept ones still dedupe; a whole expired stream disappears.
    let o = store
        .ingest(prepared(
            vec![rec("a", "n", 30_000, base + 10 * hour, Level::Info)],
            false,
        ))
        .await
        .expect("ingest");
    assert_eq!(o.duplicates, 1);
    let deleted = store
        .retention_pass(&policy, base + 100 * hour)
        .await
        .expect("retention");
    assert_eq!(deleted, 10);
    assert!(store.streams().iter().all(|s| s.subscription() != "a"));

    // Reopen: the state on disk agrees.
    store.close();
    drop(store);
    let store = open(dir.path(), Vec::new());
    assert!(store.streams().iter().all(|s| s.subscription() != "a"));
    assert_eq!(store.streams().len(), 1);
}

#[tokio::test]
async fn records_split_into_streams_by_labels_and_scan_in_time_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), Vec::new());
    let records = vec![
        rec("a", "n", 3, 30, Level::Info),
        rec("a", "n", 1, 10, Level::Error),
        rec("a", "n", 2, 20, Level::Info),
        rec("a", "n", 4, 5, Level::Info),
    ];
    store
        .ingest(prepared(records, false))
        .await
        .expect("ingest");
    let streams = store.streams();
    assert_eq!(streams.len(), 2);
    let info = streams
        .iter()
        .find(|s| s.labels.get("level").map(String::as_str) == Some("INFO"))
        .expect("info stream");
    assert_eq!((info.min_ts, info.max_ts, info.records), (5, 30, 3));
    let mut it = store.scan(info.id, 6, 31, false).expect("scan");
    let mut ts = Vec::new();
    while let Some((t, _, line)) = it.current() {
        assert!(line.starts_with(b"{"));
        ts.push(t);
        it.advance();
    }
    assert_eq!(ts, vec![20, 30], "range is [start, end) and ordered");
    let mut it = store.scan(info.id, 0, 100, true).expect("scan");
    let mut seqs = Vec::new();
    while let Some((_, s, _)) = it.current() {
        seqs.push(s);
        it.advance();
    }
    assert_eq!(seqs, vec![3, 2, 4]);
}

#[test]
fn foreign_directories_and_second_opens_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("notes.txt"), "x").expect("write");
    let e = Store::open(
        dir.path(),
        StoreConfig::default(),
        Metrics::default(),
        Vec::new(),
    )
    .expect_err("foreign dir");
    assert!(e.to_string().contains("holds no RocksDB"), "{e}");
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = open(dir.path(), Vec::new());
    let e = Store::open(
        dir.path(),
        StoreConfig::default(),
        Metrics::default(),
        Vec::new(),
    )
    .expect_err("locked");
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
}

#[tokio::test]
async fn search_over_many_streams_matches_a_brute_force_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), Vec::new());
    // 5 sources x 3 levels = 15 streams; timestamps interleave and collide.
    let levels = [Level::Info, Level::Warn, Level::Error];
    let mut all: Vec<(i64, u64, String)> = Vec::new();
    for src in 0..5u64 {
        let source = format!("s{src}");
        let records: Vec<Record> = (1..=400u64)
            .map(|seq| {
                let ts = ((seq * 7919 + src * 104_729) % 1000) as i64;
                all.push((ts, seq, source.clone()));
                rec("a", &source, seq, ts, levels[(seq % 3) as usize])
            })
            .collect();
        store
            .ingest(prepared(records, false))
            .await
            .expect("ingest");
    }
    assert_eq!(store.streams().len(), 15);
    let q =
        crate::logs::query::parse(r#"{subscription="a"} |~ `message [0-9]*7"`"#).expect("parse");
    for (backward, limit, start, end) in [
        (true, 50, 0, 1000),
        (false, 50, 0, 1000),
        (true, 5000, 100, 900),
        (false, 1, 500, 501),
    ] {
        let p = crate::logs::query::SearchParams {
            start,
            end,
            limit,
            backward,
            subscription: Some("a".into()),
            deadline: std::time::Instant::now() + Duration::from_secs(60),
            max_bytes: usize::MAX,
            parallel: true,
            max_scanned_bytes: u64::MAX,
        };
        let r = search::search(&store, &q, &p).expect("search");
        let mut expected: Vec<i64> = all
            .iter()
            .filter(|(ts, seq, _)| *ts >= start && *ts < end && seq % 10 == 7)
            .map(|(ts, _, _)| *ts)
            .collect();
        expected.sort_unstable();
        if backward {
            expected.reverse();
        }
        expected.truncate(limit);
        let got: Vec<i64> = r.hits.iter().map(|h| h.ts).collect();
        assert_eq!(got, expected, "backward={backward} limit={limit}");
        assert!(r.hits.iter().all(|h| h.seq % 10 == 7));
        // With at most 1, 2 or 3 cursors open (the others parked on their
        // position and opened again when the merge reaches them), or a
        // byte bound every line passes: the same hits in the same order.
        let streams = store.select_streams(&q, Some("a"), start, end);
        let whole = search::search_streams_within(&store, &q, &p, &streams, usize::MAX, usize::MAX)
            .expect("search");
        let key = |r: &crate::logs::query::SearchResult| -> Vec<(i64, u64, u64)> {
            r.hits.iter().map(|h| (h.ts, h.stream.id, h.seq)).collect()
        };
        assert_eq!(whole.hits.len(), expected.len());
        for (max_open, max_bytes) in [(1, usize::MAX), (2, usize::MAX), (3, usize::MAX), (64, 20)] {
            let bounded =
                search::search_streams_within(&store, &q, &p, &streams, max_open, max_bytes)
                    .expect("search");
            assert_eq!(
                key(&bounded),
                key(&whole),
                "backward={backward} limit={limit} max_open={max_open} max_bytes={max_bytes}"
            );
            assert_eq!(bounded.scanned, whole.scanned);
        }
    }
}

fn prepared_epoch(epoch: &str, records: Vec<Record>) -> PreparedBatch {
    let mut b = prepared(records, false);
    b.epoch = epoch.into();
    b
}

fn msg(sub: &str, source: &str, seq: u64, ts: i64, message: &str) -> Record {
    let mut r = rec(sub, source, seq, ts, Level::Info);
    if let Body::Log(b) = &mut r.body {
        b.message = message.into();
    }
    r
}

fn lines_of(store: &Store, source: &str) -> Vec<(u32, u64, String)> {
    let mut out = Vec::new();
    for s in store.streams() {
        if s.labels.get("source").map(String::as_str) != Some(source) {
            continue;
        }
        let mut it = store.scan(s.id, i64::MIN, i64::MAX, false).expect("scan");
        while it.valid() {
            if let Some((k, line)) = it.entry() {
                out.push((k.epoch, k.seq, String::from_utf8_lossy(line).into_owned()));
            }
            it.advance();
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_wiped_outbox_with_a_new_epoch_is_stored_in_full_not_deduplicated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), Vec::new());
    let first: Vec<Record> = (1..=3)
        .map(|s| msg("a", "n", s, 100 + s as i64, "first life"))
        .collect();
    let o = store
        .ingest(prepared_epoch("e1", first))
        .await
        .expect("ingest");
    assert_eq!((o.accepted, o.duplicates), (3, 0));
    // Same seqs, same times even, a new outbox: a new sequence space.
    let second: Vec<Record> = (1..=5)
        .map(|s| msg("a", "n", s, 100 + s as i64, "second life"))
        .collect();
    let o = store
        .ingest(prepared_epoch("e2", second.clone()))
        .await
        .expect("ingest");
    assert_eq!(
        (o.accepted, o.duplicates),
        (5, 0),
        "nothing of the second life is dropped"
    );
    let o = store
        .ingest(prepared_epoch("e2", second))
        .await
        .expect("retry");
    assert_eq!(
        (o.accepted, o.duplicates),
        (0, 5),
        "its retries still dedupe"
    );
    let lines = lines_of(&store, "n");
    assert_eq!(lines.len(), 8);
    assert_eq!(
        lines.iter().filter(|l| l.2.contains("second life")).count(),
        5
    );
    let src = &store.sources()[0];
    assert_eq!(src.meta.epoch, "e2");
    assert_eq!(src.meta.last_seq, 5);
    assert_eq!(src.meta.records, 8);
    assert_eq!(src.meta.old_epochs.len(), 1);
    assert_eq!(src.meta.old_epochs[0].epoch, "e1");

    // Reopen: epochs and their dedupe survive.
    store.close();
    drop(store);
    let store = open(dir.path(), Vec::new());
    let o = store
        .ingest(prepared_epoch(
            "e2",
            vec![msg("a", "n", 5, 105, "second life")],
        ))
        .await
        .expect("retry after reopen");
    assert_eq!((o.accepted, o.duplicates), (0, 1));
}

#[tokio::test]
async fn two_live_epochs_on_one_source_conflict_but_old_duplicates_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seen = Arc::new(Conflicts::default());
    let store = open(dir.path(), vec![seen.clone()]);
    let a: Vec<Record> = (1..=3)
        .map(|s| msg("a", "n", s, 10 + s as i64, "node A"))
        .collect();
    store
        .ingest(prepared_epoch("A", a.clone()))
        .await
        .expect("A");
    store
        .ingest(prepared_epoch("B", vec![msg("a", "n", 1, 50, "node B")]))
        .await
        .expect("B starts");
    // A's pure re-send is still a duplicate...
    let o = store
        .ingest(prepared_epoch("A", a))
        .await
        .expect("A re-send");
    assert_eq!((o.accepted, o.duplicates), (0, 3));
    // ...but a new record of A after B started is a conflict.
    let e = store
        .ingest(prepared_epoch("A", vec![msg("a", "n", 4, 60, "node A")]))
        .await
        .expect_err("conflict");
    match &e {
        StoreError::SourceConflict { field, detail, .. } => {
            assert_eq!(field, "epoch");
            assert!(detail.contains("two live outboxes"), "{detail}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // B goes on; nothing of A's refused batch was stored.
    let o = store
        .ingest(prepared_epoch("B", vec![msg("a", "n", 2, 70, "node B")]))
        .await
        .expect("B");
    assert_eq!(o.accepted, 1);
    assert_eq!(lines_of(&store, "n").len(), 5);
    let src = &store.sources()[0];
    assert_eq!((src.meta.epoch.as_str(), src.meta.conflicts), ("B", 1));
    // The observers heard about it, off the writer thread.
    for _ in 0..200 {
        if !seen.0.lock().expect("lock").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = seen.0.lock().expect("lock").clone();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0.as_str(), got[0].1.as_str()), ("a", "n"));
}

#[tokio::test]
async fn a_seq_resent_with_other_content_is_a_conflict_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), Vec::new());
    store
        .ingest(prepared_epoch(
            "e",
            vec![msg("a", "n", 1, 10, "one"), msg("a", "n", 2, 20, "two")],
        ))
        .await
        .expect("ingest");
    let e = store
        .ingest(prepared_epoch(
            "e",
            vec![msg("a", "n", 3, 30, "three"), msg("a", "n", 2, 20, "TWO")],
        ))
        .await
        .expect_err("content differs");
    match &e {
        StoreError::SourceConflict { field, .. } => assert_eq!(field, "records[1]"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        lines_of(&store, "n").len(),
        2,
        "seq 3 of the refused batch was not stored"
    );
    // The same record again is a plain duplicate.
    let o = store
        .ingest(prepared_epoch("e", vec![msg("a", "n", 2, 20, "two")]))
        .await
        .expect("dup");
    assert_eq!(o.duplicates, 1);
    // Within one batch too.
    let e = store
        .ingest(prepared_epoch(
            "e",
            vec![msg("a", "n", 9, 90, "x"), msg("a", "n", 9, 90, "y")],
        ))
        .await
        .expect_err("same seq twice in a batch");
    assert!(matches!(e, StoreError::SourceConflict { .. }), "{e}");
}

#[tokio::test]
async fn a_source_past_the_limit_is_refused_and_streams_past_the_limit_lose_only_pipe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig {
        max_sources_per_subscription: 2,
        max_streams_per_subscription: 3,
        ..StoreConfig::default()
    };
    let store = Store::open(dir.path(), config, Metrics::default(), Vec::new()).expect("open");
    for src in ["s1", "s2"] {
        store
            .ingest(prepared(vec![rec("a", src, 1, 1, Level::Info)], false))
            .await
            .expect("within the limit");
    }
    let e = store
        .ingest(prepared(vec![rec("a", "s3", 1, 1, Level::Info)], false))
        .await
        .expect_err("third source");
    assert!(matches!(e, StoreError::SourceLimit { limit: 2, .. }), "{e}");
    // Another subscription has its own limit.
    store
        .ingest(prepared(vec![rec("b", "s3", 1, 1, Level::Info)], false))
        .await
        .expect("b");

    // 10 distinct pipes: 3 streams with pipe, the rest in one overflow stream.
    let records: Vec<Record> = (1..=10)
        .map(|i| {
            let mut r = rec("a", "s1", 10 + i, 100 + i as i64, Level::Warn);
            if let Body::Log(b) = &mut r.body {
                b.fields
                    .insert("pipe".into(), serde_json::json!(format!("pipe-{i}")));
            }
            r
        })
        .collect();
    let o = store
        .ingest(prepared(records, false))
        .await
        .expect("stored");
    assert_eq!((o.accepted, o.overflowed), (10, 7));
    let streams = store.streams_of(Some("a"));
    let with_pipe = streams
        .iter()
        .filter(|s| s.labels.contains_key("pipe"))
        .count();
    assert_eq!(with_pipe, 3);
    let overflow: Vec<_> = streams
        .iter()
        .filter(|s| s.labels.get("overflow").map(String::as_str) == Some("pipe"))
        .collect();
    assert_eq!(overflow.len(), 1);
    assert_eq!(overflow[0].records, 7);
    assert!(store
        .streams_of(Some("b"))
        .iter()
        .all(|s| s.subscription() == "b"));
}

#[tokio::test]
async fn a_store_from_before_epochs_opens_and_its_legacy_keys_still_dedupe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), Vec::new());
    let old: Vec<Record> = (1..=4)
        .map(|s| msg("a", "n", s, 10 + s as i64, "legacy"))
        .collect();
    store
        .ingest(prepared(old.clone(), false))
        .await
        .expect("ingest");
    store.close();
    drop(store);
    // Make it look like a v1 store: format v1, seqs values without digests.
    {
        let db = open_db(dir.path(), &StoreConfig::default()).expect("raw open");
        let meta = db.cf_handle(CF_META).expect("meta");
        db.put_cf(meta, META_FORMAT, FORMAT_V1).expect("put");
        let seqs = db.cf_handle(CF_SEQS).expect("seqs");
        for s in 1..=4u64 {
            db.put_cf(seqs, keys::seq_key("a", "n", keys::LEGACY_EPOCH, s), [])
                .expect("put");
        }
    }
    let store = open(dir.path(), Vec::new());
    let o = store.ingest(prepared(old, false)).await.expect("re-send");
    assert_eq!((o.accepted, o.duplicates), (0, 4), "legacy keys dedupe");
    // A shipper upgraded mid-batch re-sends seq 4 with its new epoch, and
    // goes on with seq 5: the re-send is a duplicate only where its digest
    // is known (stores written by this version).
    store
        .ingest(prepared(vec![msg("a", "n", 5, 15, "legacy")], false))
        .await
        .expect("legacy 5");
    let o = store
        .ingest(prepared_epoch(
            "up",
            vec![msg("a", "n", 5, 15, "legacy"), msg("a", "n", 6, 16, "new")],
        ))
        .await
        .expect("upgraded");
    assert_eq!((o.accepted, o.duplicates), (1, 1));
    let src = &store.sources()[0];
    assert_eq!((src.meta.epoch.as_str(), src.meta.last_seq), ("up", 6));
    assert_eq!(lines_of(&store, "n").len(), 6);
}

#[derive(Default)]
struct Conflicts(Mutex<Vec<(String, String, String)>>);

impl IngestObserver for Conflicts {
    fn committed(&self, _records: &[Record]) {}
    fn source_conflict(&self, subscription: &str, source: &str, detail: &str) {
        self.0
            .lock()
            .expect("lock")
            .push((subscription.into(), source.into(), detail.into()));
    }
}

/// Records the subscriptions and seqs of each group commit; the first
/// commit waits for the test's go-ahead, so that batches queue behind it.
struct Groups {
    groups: Mutex<Vec<Vec<(String, u64)>>>,
    gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl IngestObserver for Groups {
    fn committed(&self, records: &[Record]) {
        let gate = self.gate.lock().expect("lock").take();
        if let Some(rx) = gate {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
        self.groups.lock().expect("lock").push(
            records
                .iter()
                .map(|r| (r.subscription.clone(), r.seq))
                .collect(),
        );
    }
    fn subscription_purged(&self, _: &str) {}
}

#[tokio::test]
async fn a_small_batch_is_not_committed_with_a_neighbours_flood() {
    small_batch_beside_a_flood(3000).await;
}

/// Batches of exactly one share (1,000 records, what shippers send) are
/// held too while another subscription's batch waits for the same group.
#[tokio::test]
async fn a_small_batch_is_not_committed_with_a_neighbours_full_size_batches_either() {
    small_batch_beside_a_flood(1000).await;
}

async fn small_batch_beside_a_flood(size: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (go, gate) = std::sync::mpsc::channel();
    let groups = Arc::new(Groups {
        groups: Mutex::default(),
        gate: Mutex::new(Some(gate)),
    });
    let store = open(dir.path(), vec![groups.clone()]);
    let batch = |sub: &str, seqs: std::ops::Range<u64>| {
        prepared(
            seqs.map(|s| rec(sub, "n", s, 1000 + s as i64, Level::Info))
                .collect(),
            true,
        )
    };
    // a's first batch is being committed (held at the gate) while a's
    // next two large batches and b's small one queue behind it.
    let first = store.try_ingest(batch("a", 1..size + 1)).expect("queued");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a2 = store
        .try_ingest(batch("a", size + 1..2 * size + 1))
        .expect("queued");
    let a3 = store
        .try_ingest(batch("a", 2 * size + 1..3 * size + 1))
        .expect("queued");
    let b1 = store.try_ingest(batch("b", 1..11)).expect("queued");
    go.send(()).expect("release");
    for rx in [first, a2, a3, b1] {
        rx.await.expect("answered").expect("stored");
    }
    let groups = groups.groups.lock().expect("lock").clone();
    let subs: Vec<Vec<&str>> = groups
        .iter()
        .map(|g| {
            let mut s: Vec<&str> = g.iter().map(|(sub, _)| sub.as_str()).collect();
            s.dedup();
            s
        })
        .collect();
    assert_eq!(subs[0], ["a"], "{subs:?}");
    assert_eq!(
        subs[1],
        ["b"],
        "b's batch gets a group of its own: {subs:?}"
    );
    assert_eq!(groups[1].len(), 10);
    // a's records, in their order, all stored.
    let a: Vec<u64> = groups
        .iter()
        .flatten()
        .filter(|(s, _)| s == "a")
        .map(|(_, q)| *q)
        .collect();
    assert_eq!(a, (1..3 * size + 1).collect::<Vec<_>>());
}

/// 8 batches of 1,000 records of `sub`/`source`, seqs after `from`.
fn flood(sub: &str, source: &str, from: u64) -> Vec<PreparedBatch> {
    (0..8u64)
        .map(|b| {
            let recs = (1..=1000u64)
                .map(|i| {
                    rec(
                        sub,
                        source,
                        from + b * 1000 + i,
                        1_000 + i as i64,
                        Level::Info,
                    )
                })
                .collect();
            prepared(recs, false)
        })
        .collect()
}

/// Queues every batch before awaiting any answer; all must be stored.
async fn queue_all(store: &Store, batches: Vec<PreparedBatch>) {
    let answers: Vec<_> = batches
        .into_iter()
        .map(|b| store.try_ingest(b).expect("queued"))
        .collect();
    for a in answers {
        a.await.expect("answered").expect("stored");
    }
}

#[tokio::test]
async fn a_lone_tenant_commits_in_large_groups_and_a_neighbour_seen_in_the_last_second_caps_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = Metrics::default();
    let store =
        Store::open(dir.path(), StoreConfig::default(), metrics.clone(), vec![]).expect("open");
    let groups = || metrics.group_commits.get();
    // acme alone: its 8 queued batches go in a few large groups.
    let before = groups();
    queue_all(&store, flood("acme", "s1", 0)).await;
    let alone = groups() - before;
    assert!(
        alone <= 4,
        "a lone tenant's queue is committed in large groups, not {alone}"
    );
    // beta commits one record; for the next second acme's groups hold at
    // most its share (1,000 records: one batch), so a record of beta
    // arriving meanwhile waits for at most one of them.
    queue_all(
        &store,
        vec![prepared(
            vec![rec("beta", "b1", 1, 1_000, Level::Info)],
            false,
        )],
    )
    .await;
    let before = groups();
    queue_all(&store, flood("acme", "s1", 8_000)).await;
    let shared = groups() - before;
    // Exactly one batch per group: acme has records in every group, so
    // its next batch is never forced along as a passed-over one (it was,
    // every third group, before: groups of 2,000 records, which a
    // neighbour's record then waited for).
    assert_eq!(
        shared, 8,
        "with a neighbour seen in the last second, each group holds one of acme's 1,000-record batches (alone: {alone} groups)"
    );
    // A second later acme is alone again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let before = groups();
    queue_all(&store, flood("acme", "s1", 16_000)).await;
    let again = groups() - before;
    assert!(again <= 4, "alone again after a second: {again} groups");
}

fn numbered(sub: &str, source: &str, seqs: std::ops::RangeInclusive<u64>) -> PreparedBatch {
    prepared(
        seqs.map(|s| rec(sub, source, s, 1_000 + s as i64, Level::Info))
            .collect(),
        true,
    )
}

/// A batch larger than a share, arriving while another subscription is
/// active, is committed one share at a time (a neighbour then waits for at
/// most one share of it), answered once after its last piece, in order
/// with the subscription's next batch, and every record is stored once.
#[tokio::test]
async fn a_large_batch_beside_a_neighbour_is_committed_one_share_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let groups = Arc::new(Groups {
        groups: Mutex::default(),
        gate: Mutex::new(None),
    });
    let store = open(dir.path(), vec![groups.clone()]);
    // b committed a moment ago: groups are capped for a second.
    store.ingest(numbered("b", "n", 1..=1)).await.expect("b");
    let a1 = store
        .try_ingest(numbered("a", "s", 1..=2_500))
        .expect("queued");
    let a2 = store
        .try_ingest(numbered("a", "s", 2_501..=3_000))
        .expect("queued");
    let b2 = store
        .try_ingest(numbered("b", "n", 2..=11))
        .expect("queued");
    let o1 = a1.await.expect("answered").expect("stored");
    let o2 = a2.await.expect("answered").expect("stored");
    b2.await.expect("answered").expect("stored");
    assert_eq!(
        (o1.accepted, o1.duplicates),
        (2_500, 0),
        "one answer for all pieces"
    );
    assert_eq!((o2.accepted, o2.duplicates), (500, 0));
    let groups = groups.groups.lock().expect("lock").clone();
    let per_group: Vec<usize> = groups
        .iter()
        .map(|g| g.iter().filter(|(s, _)| s == "a").count())
        .collect();
    assert!(
        per_group.iter().all(|&n| n <= 1_000),
        "no group holds more than a share of a's records: {per_group:?}"
    );
    let a: Vec<u64> = groups
        .iter()
        .flatten()
        .filter(|(s, _)| s == "a")
        .map(|(_, q)| *q)
        .collect();
    assert_eq!(a, (1..=3_000).collect::<Vec<_>>(), "once each, in order");
    assert_eq!(lines_of(&store, "s").len(), 3_000);
    // Sent again: all duplicates, nothing stored twice.
    let again = store
        .ingest(numbered("a", "s", 1..=2_500))
        .await
        .expect("resent");
    assert_eq!((again.accepted, again.duplicates), (0, 2_500));
    assert_eq!(lines_of(&store, "s").len(), 3_000);
}

/// Splitting keeps the contract that a conflicting batch stores nothing:
/// the verdicts are taken for the whole batch before its first piece.
#[tokio::test]
async fn a_conflict_in_the_last_piece_of_a_split_batch_stores_nothing_of_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), Vec::new());
    store
        .ingest(prepared(
            vec![msg("a", "s", 2_400, 3_400, "stored first")],
            false,
        ))
        .await
        .expect("first");
    store.ingest(numbered("b", "n", 1..=1)).await.expect("b");
    let mut records: Vec<Record> = (1..=2_500u64)
        .map(|s| rec("a", "s", s, 1_000 + s as i64, Level::Info))
        .collect();
    records[2_399] = msg("a", "s", 2_400, 3_400, "other content");
    let e = store
        .ingest(prepared(records, true))
        .await
        .expect_err("conflict");
    match &e {
        StoreError::SourceConflict { field, .. } => assert_eq!(field, "records[2399]"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        lines_of(&store, "s").len(),
        1,
        "no piece of the refused batch was stored"
    );
}

/// A split batch whose second piece fails to be written is answered with
/// the error; its first piece stays stored, and the shipper's re-send of
/// the whole batch stores only the rest: every record once, none lost.
#[tokio::test]
async fn a_failed_later_piece_answers_the_error_and_the_resend_stores_only_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), Vec::new());
    store.ingest(numbered("b", "n", 1..=1)).await.expect("b");
    super::writer::tests_hooks::FAIL_WRITES
        .lock()
        .expect("lock")
        .push(("piece-fails".into(), 1));
    let e = store
        .ingest(numbered("piece-fails", "s", 1..=2_500))
        .await
        .expect_err("the second piece's write fails");
    assert!(e.to_string().contains("injected failure"), "{e}");
    let written = lines_of(&store, "s").len() as u64;
    assert!(
        (1..=1_000).contains(&written),
        "one piece (at most a share) was written before the failure: {written}"
    );
    let o = store
        .ingest(numbered("piece-fails", "s", 1..=2_500))
        .await
        .expect("re-sent");
    assert_eq!((o.accepted, o.duplicates), (2_500 - written, written));
    let seqs: Vec<u64> = lines_of(&store, "s").iter().map(|l| l.1).collect();
    assert_eq!(seqs, (1..=2_500).collect::<Vec<_>>(), "every record once");
}

//! Store behaviour: dedupe, observers, retention, purge, reopen.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use schemas::{Body, Level, LogBody, Record};

use super::*;
use crate::ingest::{prepare, DecodedBatch, IngestLimits};
use crate::retention::{self, RetentionPolicy};

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
    let deleted = retention::apply(&store, &policy, base + 11 * hour)
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
    let deleted = retention::apply(&store, &policy, base + 100 * hour)
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
    let q = crate::query::parse(r#"{subscription="a"} |~ `message [0-9]*7"`"#).expect("parse");
    for (backward, limit, start, end) in [
        (true, 50, 0, 1000),
        (false, 50, 0, 1000),
        (true, 5000, 100, 900),
        (false, 1, 500, 501),
    ] {
        let p = crate::query::SearchParams {
            start,
            end,
            limit,
            backward,
            subscription: Some("a".into()),
            deadline: std::time::Instant::now() + Duration::from_secs(60),
        };
        let r = crate::query::search(&store, &q, &p).expect("search");
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
    }
}

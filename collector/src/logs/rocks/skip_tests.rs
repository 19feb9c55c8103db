//! The skip and volume indexes (`skip.rs`) never change an answer: model
//! tests comparing every query with and without the index, through late
//! arrivals, retention, reopening and stores written before the index.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use schemas::{Body, Level, LogBody, Record};

use super::*;
use crate::logs::ingest::{prepare, DecodedBatch, IngestLimits};
use crate::logs::query::{self, Hit};

const SUB: &str = "s";
const HOUR: i64 = 3_600_000_000_000;
/// Base time: a multiple of an hour plus a bit, so buckets are not aligned
/// with the records' spread.
const T0: i64 = 1_700_000_000_000_000_000;

const WORDS: [&str; 12] = [
    "alpha", "beta", "gamma", "delta", "timeout", "read", "ok", "x1", "grüße", "user_7", "42",
    "zeta",
];
/// Words never stored.
const ABSENT: [&str; 3] = ["omega", "nothere", "q9"];
const SEPS: [&str; 5] = [" ", "-", ".", ", ", "/"];

#[derive(Debug, Clone)]
struct Rec {
    source: usize,
    error: bool,
    ts: i64,
    words: Vec<(usize, usize)>,
    user: usize,
}

fn record(r: &Rec, seq: u64) -> Record {
    let mut message = String::new();
    for (w, sep) in &r.words {
        message.push_str(WORDS[*w]);
        message.push_str(SEPS[*sep]);
    }
    let mut fields = BTreeMap::new();
    fields.insert(
        "user".to_string(),
        serde_json::Value::String(WORDS[r.user].to_string()),
    );
    fields.insert("n".to_string(), serde_json::Value::from(seq % 7));
    Record {
        seq,
        ts: r.ts,
        source: ["na", "nb"][r.source].into(),
        subscription: SUB.into(),
        body: Body::Log(LogBody {
            level: if r.error { Level::Error } else { Level::Info },
            target: "t".into(),
            message,
            fields,
        }),
    }
}

fn rec_strategy(span: i64) -> impl Strategy<Value = Rec> {
    (
        0..2usize,
        any::<bool>(),
        0..span,
        proptest::collection::vec((0..WORDS.len(), 0..SEPS.len()), 0..6),
        0..WORDS.len(),
    )
        .prop_map(|(source, error, ts, words, user)| Rec {
            source,
            error,
            ts: T0 + ts,
            words,
            user,
        })
}

/// Stores `recs` (in the order given: times are random, so many arrive
/// late), in batches per source.
/// One batch of `records` (of one source), validated.
fn prepared(records: Vec<Record>) -> PreparedBatch {
    prepare(
        DecodedBatch {
            source: records[0].source.clone(),
            subscription: SUB.into(),
            epoch: String::new(),
            records,
            dropped: 0,
        },
        &IngestLimits::default(),
        i64::MAX / 2,
        0,
        false,
    )
    .expect("valid")
}

/// A search of the subscription's records in `[start, end)`, unbounded
/// but for `limit`.
fn params(start: i64, end: i64, limit: usize, backward: bool, parallel: bool) -> SearchParams {
    SearchParams {
        start,
        end,
        limit,
        backward,
        subscription: Some(SUB.into()),
        deadline: Instant::now() + Duration::from_secs(60),
        max_bytes: usize::MAX,
        parallel,
        max_scanned_bytes: u64::MAX,
    }
}

/// Searches the subscription's records in `[start, end)`, newest first.
fn search_range(store: &Store, text: &str, start: i64, end: i64, limit: usize) -> SearchResult {
    let q = query::parse(text).expect("parse");
    LogStore::search(store, &q, &params(start, end, limit, true, false)).expect("search")
}

async fn write(store: &Store, recs: &[Rec], seqs: &mut [u64; 2]) {
    for chunk in recs.chunks(37) {
        for (source, seq) in seqs.iter_mut().enumerate() {
            let records: Vec<Record> = chunk
                .iter()
                .filter(|r| r.source == source)
                .map(|r| {
                    *seq += 1;
                    record(r, *seq)
                })
                .collect();
            if records.is_empty() {
                continue;
            }
            store.ingest(prepared(records)).await.expect("ingest");
        }
    }
}

fn open_with(path: &std::path::Path, skip_index: bool) -> Store {
    let config = StoreConfig {
        skip_index,
        ..StoreConfig::default()
    };
    Store::open(path, config, Metrics::default(), Vec::new()).expect("open")
}

#[derive(Debug, Clone)]
struct Q {
    text: String,
    start: i64,
    end: i64,
    limit: usize,
    backward: bool,
}

fn needle_strategy() -> impl Strategy<Value = String> {
    let word = (0..WORDS.len()).prop_map(|i| WORDS[i].to_string());
    let absent = (0..ABSENT.len()).prop_map(|i| ABSENT[i].to_string());
    prop_oneof![
        word.clone(),
        absent.clone(),
        // Bounded inside the needle: the index can use it.
        (word.clone(), 0..SEPS.len()).prop_map(|(w, s)| format!("{}{w}{}", SEPS[s], SEPS[s])),
        (absent.clone(), 0..SEPS.len()).prop_map(|(w, s)| format!("{}{w}{}", SEPS[s], SEPS[s])),
        // Two words: the pair may or may not occur.
        (
            word.clone(),
            word.clone(),
            word.clone(),
            0..SEPS.len(),
            0..SEPS.len()
        )
            .prop_map(|(a, b, c, s, t)| format!("{a}{}{b}{}{c}", SEPS[s], SEPS[t])),
        // Partial tokens, alone and at either end of a needle.
        (word.clone(), 0..3usize).prop_map(|(w, cut)| w.chars().skip(cut).collect::<String>()),
        (word.clone(), word.clone(), 1..3usize, 0..SEPS.len()).prop_map(|(a, b, cut, s)| format!(
            "{}{}{b}{}",
            a.chars().skip(cut).collect::<String>(),
            SEPS[s],
            SEPS[s]
        )),
        (word.clone(), word.clone(), 1..3usize, 0..SEPS.len()).prop_map(|(a, b, cut, s)| format!(
            "{}{a}{}{}",
            SEPS[s],
            SEPS[s],
            b.chars()
                .take(b.chars().count().saturating_sub(cut).max(1))
                .collect::<String>()
        )),
        (word.clone(), absent.clone()).prop_map(|(a, b)| format!("{a} {b} {a}")),
    ]
}

fn query_strategy() -> impl Strategy<Value = Q> {
    let word = (0..WORDS.len()).prop_map(|i| WORDS[i].to_string());
    let absent = (0..ABSENT.len()).prop_map(|i| ABSENT[i].to_string());
    let stage = prop_oneof![
        needle_strategy().prop_map(|n| format!("|= {}", lit(&n))),
        needle_strategy().prop_map(|n| format!("!= {}", lit(&n))),
        (needle_strategy(), needle_strategy())
            .prop_map(|(a, b)| format!("|~ {}", lit(&format!("{}.*{}", re(&a), re(&b))))),
        (word.clone(), absent.clone())
            .prop_map(|(a, b)| format!("|~ {}", lit(&format!("({a}|{b}) ")))),
        needle_strategy().prop_map(|n| format!("|~ {}", lit(&format!("(?i){}", re(&n))))),
        needle_strategy().prop_map(|n| format!("|~ {}", lit(&format!("( {} )+", re(&n))))),
        prop_oneof![word.clone(), absent.clone()]
            .prop_map(|v| format!("| json | fields_user = {}", lit(&v))),
        Just("| json | source = \"na\"".to_string()),
        Just("| json | level = \"ERROR\"".to_string()),
        (0..7u64).prop_map(|n| format!("| json | fields_n = \"{n}\"")),
    ];
    (
        proptest::collection::vec(stage, 1..3),
        prop_oneof![Just(""), Just("level=\"ERROR\""), Just("source=\"nb\"")],
        -HOUR..7 * HOUR,
        0..8 * HOUR,
        prop_oneof![1..5usize, Just(1000usize)],
        any::<bool>(),
    )
        .prop_map(|(stages, sel, start, len, limit, backward)| {
            let sel = if sel.is_empty() {
                format!("subscription=\"{SUB}\"")
            } else {
                sel.to_string()
            };
            Q {
                text: format!("{{{sel}}} {}", stages.join(" ")),
                start: T0 + start,
                end: T0 + start + len,
                limit,
                backward,
            }
        })
}

fn lit(s: &str) -> String {
    serde_json::to_string(s).expect("json string")
}

fn re(s: &str) -> String {
    regex_syntax::escape(s)
}

type Answer = Vec<(i64, u64, u64, Vec<u8>)>;

fn run(store: &Store, q: &Q, parallel: bool) -> Answer {
    let query = query::parse(&q.text).expect("parse");
    let p = params(q.start, q.end, q.limit, q.backward, parallel);
    let r = LogStore::search(store, &query, &p).expect("search");
    r.hits
        .into_iter()
        .map(|h: Hit| (h.ts, h.seq, h.stream.id, h.line))
        .collect()
}

fn run_scan(store: &Store, q: &Q) -> Answer {
    let query = query::parse(&q.text).expect("parse");
    let streams = store.select_streams(&query, Some(SUB), q.start, q.end);
    let p = ScanParams {
        start: q.start,
        end: q.end,
        deadline: Instant::now() + Duration::from_secs(60),
        max_scanned_bytes: u64::MAX,
    };
    let mut out = Vec::new();
    LogStore::scan_matches(store, &query, &streams, &p, &mut |m| {
        out.push((m.ts, 0, m.stream.id, m.line.to_vec()));
        true
    })
    .expect("scan");
    out.sort();
    out
}

/// Every query answers the same with and without the index.
fn same_answers(store: &Store, queries: &[Q]) -> Result<(), TestCaseError> {
    for q in queries {
        for parallel in [false, true] {
            store.set_skip_index_reads(false);
            let plain = run(store, q, parallel);
            store.set_skip_index_reads(true);
            let indexed = run(store, q, parallel);
            prop_assert_eq!(&indexed, &plain, "search {:?} (parallel {})", q, parallel);
        }
        store.set_skip_index_reads(false);
        let plain = run_scan(store, q);
        store.set_skip_index_reads(true);
        let indexed = run_scan(store, q);
        prop_assert_eq!(&indexed, &plain, "scan_matches {:?}", q);
    }
    Ok(())
}

/// The volume index equals a count over the entries, wherever it answers;
/// `covered`: it must answer for every stream.
fn volume_is_exact(store: &Store, covered: bool) -> Result<(), TestCaseError> {
    let b = VOLUME_BUCKET_NS;
    for s in store.streams() {
        let mut direct: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
        let mut it = store.scan(s.id, i64::MIN, i64::MAX, false).expect("scan");
        while it.valid() {
            if let Some((ts, _, line)) = it.current() {
                let end = ts.div_euclid(b) * b + if ts.rem_euclid(b) == 0 { 0 } else { b };
                let e = direct.entry(end).or_default();
                e.0 += 1;
                e.1 += line.len() as u64;
            }
            it.advance();
        }
        for (start, end) in [
            (
                T0.div_euclid(b) * b - 2 * HOUR,
                T0.div_euclid(b) * b + 9 * HOUR,
            ),
            (
                T0.div_euclid(b) * b + HOUR / 2,
                T0.div_euclid(b) * b + 2 * HOUR,
            ),
        ] {
            let want: Vec<VolumeBucket> = direct
                .range(start + 1..=end)
                .map(|(e, (r, by))| VolumeBucket {
                    end: *e,
                    records: *r,
                    bytes: *by,
                })
                .collect();
            match store.volume(&s, start, end) {
                Some(got) => prop_assert_eq!(got.expect("volume"), want, "stream {}", s.id),
                None => prop_assert!(!covered, "stream {} has no volume answer", s.id),
            }
        }
    }
    Ok(())
}

/// Expires every stream up to `cutoff` in slices of `slice` records.
async fn expire_all(store: &Store, cutoff: i64, slice: usize) {
    for s in store.streams() {
        while store.expire(s.id, cutoff, slice).await.expect("expire") as usize >= slice {}
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn skipping_never_changes_an_answer(
        span in prop_oneof![Just(HOUR / 2), Just(6 * HOUR)],
        old in proptest::collection::vec(rec_strategy(6 * HOUR), 0..150),
        recs in proptest::collection::vec(rec_strategy(6 * HOUR), 1..700),
        written_before_index in any::<bool>(),
        queries in proptest::collection::vec(query_strategy(), 8),
        cutoff in 0..6 * HOUR,
        slice in 1..200usize,
    ) {
        // Half of the runs crowd the records into half an hour: several
        // parts per hour.
        let squeeze = |r: &Rec| Rec { ts: T0 + (r.ts - T0) % span, ..r.clone() };
        let old: Vec<Rec> = old.iter().map(squeeze).collect();
        let recs: Vec<Rec> = recs.iter().map(squeeze).collect();
        let dir = tempfile::tempdir().expect("tempdir");
        block_on(async {
            let mut seqs = [0u64; 2];
            if written_before_index {
                let store = open_with(dir.path(), false);
                write(&store, &old, &mut seqs).await;
                store.close();
            }
            let store = open_with(dir.path(), true);
            write(&store, &recs, &mut seqs).await;
            same_answers(&store, &queries)?;
            volume_is_exact(&store, !written_before_index || old.is_empty())?;
            expire_all(&store, T0 + cutoff, slice).await;
            same_answers(&store, &queries)?;
            volume_is_exact(&store, !written_before_index || old.is_empty())?;
            store.close();
            drop(store);
            let store = open_with(dir.path(), true);
            same_answers(&store, &queries)?;
            volume_is_exact(&store, !written_before_index || old.is_empty())?;
            // More records after the reopen (parts continue), some late.
            write(&store, &recs[..recs.len() / 2], &mut seqs).await;
            same_answers(&store, &queries)?;
            volume_is_exact(&store, !written_before_index || old.is_empty())?;
            Ok::<(), TestCaseError>(())
        })?;
    }
}

#[tokio::test]
async fn an_absent_token_skips_the_stream_and_a_present_one_finds_its_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_with(dir.path(), true);
    let recs: Vec<Rec> = (0..3000)
        .map(|i| Rec {
            source: 0,
            error: false,
            ts: T0 + i * 1_000_000_000,
            words: vec![(i as usize % 4, 0), (4, 0)],
            user: 0,
        })
        .collect();
    let mut seqs = [0; 2];
    write(&store, &recs, &mut seqs).await;
    let search = |text: &str| search_range(&store, text, T0, T0 + 2 * HOUR, 1000);
    let r = search(r#"{} |= " omega ""#);
    assert_eq!((r.hits.len(), r.scanned), (0, 0), "nothing read");
    let r = search(r#"{} |~ "message (omega|nothere) ""#);
    assert!(r.hits.is_empty());
    let r = search(r#"{} |= " timeout""#);
    assert_eq!((r.hits.len(), r.scanned), (1000, 1000));
    // A regex's required literal and a JSON value skip too.
    let r = search(r#"{} |~ "x .* zeta ""#);
    assert_eq!((r.hits.len(), r.scanned), (0, 0));
    let r = search(r#"{} | json | fields_user = "zeta""#);
    assert_eq!((r.hits.len(), r.scanned), (0, 0));
    let r = search(r#"{} | json | fields_user = "alpha""#);
    assert_eq!(r.hits.len(), 1000);
    // The volume index: 3,000 records in 300 buckets of 10 s.
    let s = &store.streams()[0];
    let v = store
        .volume(s, T0 - T0.rem_euclid(HOUR), T0 + 2 * HOUR)
        .expect("covered")
        .expect("volume");
    assert_eq!(v.iter().map(|b| b.records).sum::<u64>(), 3000);
}

#[tokio::test]
async fn a_big_batch_of_one_stream_is_indexed_part_by_part() {
    // 10 records, then 1,000 in one batch (one stream, one hour): the
    // writer's parts (128, 256, 512, ... records) cut through the token
    // groups of the batch; every record is still found, and a token of
    // one record is looked for only in the parts that may hold it.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_with(dir.path(), true);
    let rec = |i: u64| Record {
        seq: i + 1,
        ts: T0 + i as i64 * 1_000_000,
        source: "na".into(),
        subscription: SUB.into(),
        body: Body::Log(LogBody {
            level: Level::Info,
            target: "t".into(),
            message: format!("record rare{i} of the batch"),
            fields: BTreeMap::new(),
        }),
    };
    for range in [0..10u64, 10..1010] {
        let batch = prepared(range.map(rec).collect());
        store.ingest(batch).await.expect("ingest");
    }
    for i in [0u64, 5, 125, 127, 128, 130, 383, 384, 500, 895, 896, 1009] {
        let r = search_range(
            &store,
            &format!(r#"{{}} |= " rare{i} ""#),
            T0,
            T0 + HOUR,
            10,
        );
        assert_eq!(r.hits.len(), 1, "rare{i} is found");
        assert!(
            r.scanned < 1010,
            "rare{i}: {} of 1,010 records read; parts without it are skipped",
            r.scanned
        );
    }
}

#[tokio::test]
async fn a_store_written_before_the_index_is_scanned_up_to_what_it_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mk = |i: i64, w: usize| Rec {
        source: 0,
        error: false,
        ts: T0 + i * 1_000_000_000,
        words: vec![(0, 0), (w, 0)],
        user: 0,
    };
    let mut seqs = [0; 2];
    {
        let store = open_with(dir.path(), false);
        write(&store, &[mk(100, 11)], &mut seqs).await;
        store.close();
    }
    let store = open_with(dir.path(), true);
    // A late record before the old one, and a newer one.
    write(&store, &[mk(50, 0), mk(5000, 0)], &mut seqs).await;
    let q = query::parse(r#"{} |= " zeta ""#).expect("parse");
    let p = params(T0, T0 + 2 * HOUR, 10, false, false);
    let r = LogStore::search(&store, &q, &p).expect("search");
    assert_eq!(r.hits.len(), 1, "the record from before the index is found");
    assert_eq!(
        r.scanned, 2,
        "up to it the stream is scanned, after it skipped"
    );
    let s = &store.streams()[0];
    let hour = T0 - T0.rem_euclid(HOUR);
    assert!(
        store.volume(s, hour, hour + 2 * HOUR).is_none(),
        "not covered"
    );
    assert!(
        store
            .volume(s, T0 + 200 * 1_000_000_000, hour + 2 * HOUR)
            .is_some(),
        "covered after what the store held"
    );
}

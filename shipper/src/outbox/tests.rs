use std::num::{NonZeroU64, NonZeroUsize};
use std::time::Duration;

use schemas::{Body, Level, LogBody, Record};

use super::*;

pub(crate) fn log(n: u64) -> Record {
    Record {
        seq: 0,
        ts: n as i64,
        source: "node-a".into(),
        subscription: "sub".into(),
        body: Body::Log(LogBody {
            level: Level::Info,
            target: "test".into(),
            message: format!("message number {n}"),
            fields: Default::default(),
        }),
    }
}

fn message(r: &Record) -> String {
    match &r.body {
        Body::Log(l) => l.message.clone(),
        other => panic!("unexpected body {other:?}"),
    }
}

fn cfg(max_records: u64, when_full: WhenFull) -> OutboxConfig {
    OutboxConfig {
        max_records: NonZeroU64::new(max_records).unwrap(),
        when_full,
        block_timeout: Duration::from_millis(300),
        ..OutboxConfig::default()
    }
}

#[test]
fn append_read_ack_and_reopen_resume_at_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ob");
    {
        let ob = Outbox::open(&path, OutboxConfig::default()).unwrap();
        ob.register_sink("c").wait().unwrap();
        let r = ob
            .append(&(0..10).map(log).collect::<Vec<_>>())
            .wait()
            .unwrap();
        assert_eq!((r.first_seq, r.count, r.dropped), (1, 10, 0));
        let b = ob.read(0, 4, usize::MAX).unwrap();
        assert_eq!(
            b.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(message(&b.records[2]), "message number 2");
        assert_eq!(b.last_seq, 4);
        ob.ack("c", 4, 0).wait().unwrap();
        let s = ob.stats();
        assert_eq!((s.records, s.head_seq, s.next_seq), (6, 5, 11));
    }
    let ob = Outbox::open(&path, OutboxConfig::default()).unwrap();
    assert_eq!(ob.sink("c").unwrap().acked, 4);
    let b = ob.read(4, 100, usize::MAX).unwrap();
    assert_eq!(b.records.first().unwrap().seq, 5);
    assert_eq!(b.records.len(), 6);
    // Nothing acknowledged reappears even when reading from the start.
    assert_eq!(ob.read(0, 100, usize::MAX).unwrap().records[0].seq, 5);
    let r = ob.append(&[log(99)]).wait().unwrap();
    assert_eq!(r.first_seq, 11, "seqs continue after reopen");
}

#[test]
fn read_respects_the_byte_bound_but_returns_at_least_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    ob.append(&(0..10).map(log).collect::<Vec<_>>())
        .wait()
        .unwrap();
    let one = ob.read(0, 100, 1).unwrap();
    assert_eq!(one.records.len(), 1);
    let some = ob.read(0, 100, one.bytes * 3).unwrap();
    assert_eq!(some.records.len(), 3);
}

#[test]
fn records_stay_until_every_sink_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    ob.register_sink("collector").wait().unwrap();
    ob.register_sink("otlp").wait().unwrap();
    ob.append(&(0..5).map(log).collect::<Vec<_>>())
        .wait()
        .unwrap();
    ob.ack("collector", 5, 0).wait().unwrap();
    assert_eq!(ob.stats().records, 5, "otlp has not acknowledged");
    ob.ack("otlp", 2, 0).wait().unwrap();
    assert_eq!(ob.stats().records, 3);
    assert_eq!(ob.read(0, 100, usize::MAX).unwrap().records[0].seq, 3);
    ob.unregister_sink("otlp").wait().unwrap();
    assert_eq!(ob.stats().records, 0);
    assert_eq!(ob.stats().bytes, 0);
}

#[test]
fn ack_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    ob.append(&[log(1)]).wait().unwrap();
    assert!(
        matches!(ob.ack("nobody", 1, 0).wait(), Err(OutboxError::UnknownSink(s)) if s == "nobody")
    );
    ob.register_sink("c").wait().unwrap();
    let e = ob.ack("c", 7, 0).wait().unwrap_err();
    assert!(
        matches!(e, OutboxError::AckBeyondEnd { upto: 7, last: 1 }),
        "{e}"
    );
}

#[test]
fn block_waits_for_room_then_times_out_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), cfg(3, WhenFull::Block)).unwrap();
    ob.register_sink("c").wait().unwrap();
    ob.append(&[log(1), log(2), log(3)]).wait().unwrap();
    // Full: this append waits, and is admitted as soon as an ack frees room.
    let ob2 = ob.clone();
    let waiter = std::thread::spawn(move || ob2.append(&[log(4)]).wait());
    std::thread::sleep(Duration::from_millis(50));
    assert!(!waiter.is_finished(), "append must block while full");
    ob.ack("c", 1, 0).wait().unwrap();
    let r = waiter.join().unwrap().unwrap();
    assert_eq!(r.first_seq, 4);
    // Nobody acks now: the next append times out, and nothing is lost.
    let e = ob.append(&[log(5)]).wait().unwrap_err();
    assert!(
        matches!(e, OutboxError::Full { waited } if waited >= Duration::from_millis(250)),
        "{e}"
    );
    let s = ob.stats();
    assert_eq!((s.records, s.dropped_total()), (3, 0));
    let seqs: Vec<u64> = ob
        .read(0, 10, usize::MAX)
        .unwrap()
        .records
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, vec![2, 3, 4]);
}

#[test]
fn drop_newest_keeps_what_fits_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ob");
    {
        let ob = Outbox::open(&path, cfg(4, WhenFull::DropNewest)).unwrap();
        ob.register_sink("c").wait().unwrap();
        let r = ob
            .append(&(1..=3).map(log).collect::<Vec<_>>())
            .wait()
            .unwrap();
        assert_eq!((r.count, r.dropped), (3, 0));
        let r = ob
            .append(&(4..=6).map(log).collect::<Vec<_>>())
            .wait()
            .unwrap();
        assert_eq!((r.first_seq, r.count, r.dropped), (4, 1, 2));
        assert_eq!(ob.stats().dropped_newest, 2);
        let msgs: Vec<String> = ob
            .read(0, 10, usize::MAX)
            .unwrap()
            .records
            .iter()
            .map(message)
            .collect();
        assert_eq!(msgs.last().unwrap(), "message number 4");
        assert_eq!(
            ob.metrics()
                .dropped_records
                .get_or_create(&metrics::PolicyLabel {
                    policy: "drop_newest"
                })
                .get(),
            2
        );
    }
    // The counter is persisted, and a sink sees what it has not reported yet.
    let ob = Outbox::open(&path, cfg(4, WhenFull::DropNewest)).unwrap();
    let s = ob.stats();
    assert_eq!(s.dropped_newest, 2);
    assert_eq!(
        s.dropped_total() - ob.sink("c").unwrap().dropped_reported,
        2
    );
    ob.ack("c", 4, s.dropped_total()).wait().unwrap();
    assert_eq!(ob.sink("c").unwrap().dropped_reported, 2);
}

#[test]
fn drop_oldest_deletes_the_oldest_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), cfg(4, WhenFull::DropOldest)).unwrap();
    ob.register_sink("c").wait().unwrap();
    ob.append(&(1..=4).map(log).collect::<Vec<_>>())
        .wait()
        .unwrap();
    let r = ob.append(&[log(5), log(6)]).wait().unwrap();
    assert_eq!((r.first_seq, r.count, r.dropped), (5, 2, 0));
    let s = ob.stats();
    assert_eq!((s.records, s.dropped_oldest, s.head_seq), (4, 2, 3));
    let seqs: Vec<u64> = ob
        .read(0, 10, usize::MAX)
        .unwrap()
        .records
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, vec![3, 4, 5, 6]);
    // A sink whose cursor is behind the dropped range simply continues.
    ob.ack("c", 6, s.dropped_total()).wait().unwrap();
    assert_eq!(ob.stats().records, 0);
}

#[test]
fn byte_limit_applies_like_the_record_limit() {
    let dir = tempfile::tempdir().unwrap();
    let one = encode_record_value(&schemas::to_msgpack(&log(1)).unwrap()).len() as u64;
    let config = OutboxConfig {
        max_bytes: NonZeroU64::new(one * 2 + one / 2).unwrap(),
        when_full: WhenFull::DropNewest,
        ..OutboxConfig::default()
    };
    let ob = Outbox::open(dir.path(), config).unwrap();
    let r = ob.append(&[log(1), log(2), log(3)]).wait().unwrap();
    assert_eq!((r.count, r.dropped), (2, 1));
}

#[test]
fn oversized_records_and_appends_are_refused_not_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        max_record_bytes: NonZeroUsize::new(200).unwrap(),
        max_records: NonZeroU64::new(3).unwrap(),
        ..OutboxConfig::default()
    };
    let ob = Outbox::open(dir.path(), config).unwrap();
    let mut big = log(1);
    if let Body::Log(l) = &mut big.body {
        l.message = "x".repeat(500);
    }
    let e = ob.append(&[log(1), big]).wait().unwrap_err();
    assert!(
        matches!(
            e,
            OutboxError::RecordTooLarge {
                index: 1,
                limit: 200,
                ..
            }
        ),
        "{e}"
    );
    let e = ob
        .append(&(0..4).map(log).collect::<Vec<_>>())
        .wait()
        .unwrap_err();
    assert!(e.to_string().contains("can never fit"), "{e}");
    assert_eq!(ob.stats().records, 0, "a refused append stores nothing");
}

#[test]
fn a_flipped_byte_is_quarantined_counted_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    ob.register_sink("c").wait().unwrap();
    ob.append(&(1..=5).map(log).collect::<Vec<_>>())
        .wait()
        .unwrap();
    assert!(ob.corrupt_for_test(3, |v| v[20] ^= 0x01).unwrap());
    let b = ob.read(0, 100, usize::MAX).unwrap();
    assert_eq!(
        b.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 4, 5]
    );
    assert_eq!((b.quarantined, b.last_seq), (1, 5));
    let s = ob.stats();
    assert_eq!((s.quarantined, s.records), (1, 4));
    let q = ob.quarantined(10).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].0, 3);
    assert!(q[0].1.contains("checksum"), "{}", q[0].1);
    ob.ack("c", 5, 0).wait().unwrap();
    let s = ob.stats();
    assert_eq!(
        (s.records, s.bytes),
        (0, 0),
        "accounting stays exact around a hole"
    );
}

#[test]
fn an_undecodable_payload_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    ob.append_encoded(&[
        schemas::to_msgpack(&log(1)).unwrap(),
        b"\xc1garbage".to_vec(),
    ])
    .wait()
    .unwrap();
    let b = ob.read(0, 10, usize::MAX).unwrap();
    assert_eq!(b.records.len(), 1);
    assert_eq!(b.quarantined, 1);
    assert!(ob.quarantined(10).unwrap()[0].1.contains("undecodable"));
}

#[test]
fn not_an_outbox_and_locked_are_clear_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let e = Outbox::open(&file, OutboxConfig::default()).unwrap_err();
    assert!(
        e.to_string().contains(&*file.to_string_lossy())
            && e.to_string().contains("not a directory"),
        "{e}"
    );

    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"hello").unwrap();
    let e = Outbox::open(&other, OutboxConfig::default()).unwrap_err();
    assert!(matches!(e, OutboxError::NotAnOutbox { .. }), "{e}");
    assert!(other.join("notes.txt").exists());

    // What a SIGKILL during the very first open leaves (RocksDB had not
    // written CURRENT yet): opened as a new outbox, not refused.
    let cut = dir.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    for f in ["LOCK", "LOG", "IDENTITY", "MANIFEST-000001", "000001.dbtmp"] {
        std::fs::write(cut.join(f), b"partial").unwrap();
    }
    let reopened = Outbox::open(&cut, OutboxConfig::default()).unwrap();
    drop(reopened);
    assert!(cut.join("CURRENT").exists());
    // With a foreign file beside them it is refused, and nothing removed.
    let mixed = dir.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    std::fs::write(mixed.join("LOCK"), b"").unwrap();
    std::fs::write(mixed.join("notes.txt"), b"hello").unwrap();
    let e = Outbox::open(&mixed, OutboxConfig::default()).unwrap_err();
    assert!(matches!(e, OutboxError::NotAnOutbox { .. }), "{e}");
    assert!(mixed.join("LOCK").exists() && mixed.join("notes.txt").exists());

    let ok = dir.path().join("ob");
    let _first = Outbox::open(&ok, OutboxConfig::default()).unwrap();
    let e = Outbox::open(&ok, OutboxConfig::default()).unwrap_err();
    assert!(
        matches!(&e, OutboxError::Locked { path } if path == &ok),
        "{e}"
    );
}

#[test]
fn user_metadata_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    {
        let ob = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
        ob.put_meta(b"tail:/var/log/x", Some(b"1234".to_vec()))
            .wait()
            .unwrap();
    }
    let ob = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    assert_eq!(
        ob.get_meta(b"tail:/var/log/x").unwrap().as_deref(),
        Some(&b"1234"[..])
    );
    ob.put_meta(b"tail:/var/log/x", None).wait().unwrap();
    assert_eq!(ob.get_meta(b"tail:/var/log/x").unwrap(), None);
}

#[test]
fn concurrent_appenders_get_distinct_contiguous_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let ob = ob.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        ob.append(&[log(t * 1000 + i), log(t * 1000 + i)])
                            .wait()
                            .unwrap()
                            .first_seq
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut firsts: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    firsts.sort();
    assert_eq!(firsts, (0..400).map(|i| 1 + 2 * i).collect::<Vec<_>>());
    let all = ob.read(0, 10_000, usize::MAX).unwrap();
    assert_eq!(all.records.len(), 800);
    // Both records of one append are adjacent and identical.
    for pair in all.records.chunks(2) {
        assert_eq!(message(&pair[0]), message(&pair[1]));
    }
}

#[test]
fn interval_sync_mode_appends_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        sync: SyncMode::Interval {
            every: Duration::from_millis(20),
        },
        ..OutboxConfig::default()
    };
    {
        let ob = Outbox::open(dir.path(), config.clone()).unwrap();
        ob.append(&(0..100).map(log).collect::<Vec<_>>())
            .wait()
            .unwrap();
    }
    let ob = Outbox::open(dir.path(), config).unwrap();
    assert_eq!(ob.stats().records, 100);
}

#[tokio::test]
async fn tickets_are_awaitable() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    let r = ob.append(&[log(1)]).await.unwrap();
    assert_eq!(r.first_seq, 1);
    ob.register_sink("c").await.unwrap();
    ob.ack("c", 1, 0).await.unwrap();
    assert_eq!(ob.stats().records, 0);
}

#[test]
fn an_outbox_has_one_random_epoch_for_life() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let epoch_a = Outbox::open(&a, OutboxConfig::default())
        .unwrap()
        .epoch()
        .to_string();
    assert_eq!(epoch_a.len(), 32, "{epoch_a}");
    assert!(
        epoch_a
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
        "{epoch_a}"
    );
    assert!(schemas::batch::valid_epoch(&epoch_a));
    let reopened = Outbox::open(&a, OutboxConfig::default()).unwrap();
    assert_eq!(reopened.epoch(), epoch_a, "kept across reopens");
    drop(reopened);
    let other = Outbox::open(&b, OutboxConfig::default()).unwrap();
    assert_ne!(other.epoch(), epoch_a, "each outbox makes its own");
}

/// An outbox written before epochs existed has no `epoch` key: it gets one
/// at its first open, once, and keeps it.
#[test]
fn an_outbox_from_before_epochs_gets_one_at_first_open_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ob");
    {
        let ob = Outbox::open(&path, OutboxConfig::default()).unwrap();
        ob.append(&[log(1)]).wait().unwrap();
    }
    {
        // Remove the key as an older version would have left the outbox.
        let opts = Options::default();
        let db = DB::open_cf(&opts, &path, [CF_RECORDS, CF_META, CF_QUARANTINE]).unwrap();
        let meta = db.cf_handle(CF_META).unwrap();
        db.delete_cf(meta, META_EPOCH).unwrap();
        assert!(db.get_cf(meta, META_EPOCH).unwrap().is_none());
    }
    let first = Outbox::open(&path, OutboxConfig::default())
        .unwrap()
        .epoch()
        .to_string();
    assert_eq!(first.len(), 32);
    let again = Outbox::open(&path, OutboxConfig::default()).unwrap();
    assert_eq!(again.epoch(), first, "made once, then kept");
    assert_eq!(again.read(0, 10, usize::MAX).unwrap().records.len(), 1);
}

#[test]
fn a_damaged_epoch_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ob");
    drop(Outbox::open(&path, OutboxConfig::default()).unwrap());
    {
        let db = DB::open_cf(
            &Options::default(),
            &path,
            [CF_RECORDS, CF_META, CF_QUARANTINE],
        )
        .unwrap();
        let meta = db.cf_handle(CF_META).unwrap();
        db.put_cf(meta, META_EPOCH, b"not an epoch!").unwrap();
    }
    let e = Outbox::open(&path, OutboxConfig::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("epoch") && e.contains("ob"), "{e}");
}

/// Regression: a reader whose cursor sat just before a tail of quarantined
/// (dead-lettered) records read nothing and no `last_seq` past its cursor,
/// so a shipper restarted after dead-lettering the last record spun on it.
#[test]
fn a_read_covers_a_tail_of_records_that_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path().join("ob"), OutboxConfig::default()).unwrap();
    ob.append(&(0..4).map(log).collect::<Vec<_>>())
        .wait()
        .unwrap();
    assert!(ob.quarantine(3, "test").wait().unwrap());
    assert!(ob.quarantine(4, "test").wait().unwrap());
    let b = ob.read(2, 10, usize::MAX).unwrap();
    assert!(b.records.is_empty());
    assert_eq!(b.last_seq, 4, "the read covers the quarantined tail");
    // A read stopped by its record limit covers only what it saw.
    let b = ob.read(0, 1, usize::MAX).unwrap();
    assert_eq!(b.last_seq, 1);
}

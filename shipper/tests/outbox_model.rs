//! Model-based property test of the outbox: random sequences of append,
//! read, ack and reopen, checked after every step against an in-memory model
//! (a BTreeMap of seq -> message plus the sinks' cursors and drop counters).

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::time::Duration;

use proptest::prelude::*;
use schemas::{Body, Level, LogBody, Record};
use shipper::outbox::{Outbox, OutboxConfig, OutboxError, WhenFull};

const SINKS: [&str; 2] = ["collector", "otlp"];

#[derive(Debug, Clone)]
enum Step {
    Append(u8),
    Read { sink: usize, max: u8 },
    Ack { sink: usize, forward: u8 },
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u8..6).prop_map(Step::Append),
        2 => (0usize..2, 1u8..8).prop_map(|(sink, max)| Step::Read { sink, max }),
        3 => (0usize..2, 0u8..6).prop_map(|(sink, forward)| Step::Ack { sink, forward }),
        1 => Just(Step::Reopen),
    ]
}

fn policy() -> impl Strategy<Value = WhenFull> {
    prop_oneof![
        Just(WhenFull::Block),
        Just(WhenFull::DropNewest),
        Just(WhenFull::DropOldest)
    ]
}

#[derive(Debug, Default)]
struct Model {
    records: BTreeMap<u64, String>,
    next_seq: u64,
    acked: [u64; 2],
    dropped_newest: u64,
    dropped_oldest: u64,
}

impl Model {
    fn collect(&mut self) {
        let min = self.acked.iter().copied().min().unwrap_or(0);
        self.records.retain(|seq, _| *seq > min);
    }
}

fn rec(msg: &str) -> Record {
    Record {
        seq: 0,
        ts: 1,
        source: "node".into(),
        subscription: "sub".into(),
        body: Body::Log(LogBody {
            level: Level::Info,
            target: "model".into(),
            message: msg.to_string(),
            fields: Default::default(),
        }),
    }
}

fn message(r: &Record) -> &str {
    match &r.body {
        Body::Log(l) => &l.message,
        _ => unreachable!(),
    }
}

fn config(max_records: u64, when_full: WhenFull) -> OutboxConfig {
    OutboxConfig {
        max_records: NonZeroU64::new(max_records).unwrap(),
        when_full,
        block_timeout: Duration::from_millis(5),
        ..OutboxConfig::default()
    }
}

fn check(ob: &Outbox, m: &Model) -> Result<(), TestCaseError> {
    let all = ob.read(0, 10_000, usize::MAX).unwrap();
    let got: Vec<(u64, String)> = all
        .records
        .iter()
        .map(|r| (r.seq, message(r).to_string()))
        .collect();
    let want: Vec<(u64, String)> = m.records.iter().map(|(s, v)| (*s, v.clone())).collect();
    prop_assert_eq!(got, want);
    let s = ob.stats();
    prop_assert_eq!(s.records, m.records.len() as u64);
    prop_assert_eq!(s.next_seq, m.next_seq);
    prop_assert_eq!(s.dropped_newest, m.dropped_newest);
    prop_assert_eq!(s.dropped_oldest, m.dropped_oldest);
    for (i, name) in SINKS.iter().enumerate() {
        prop_assert_eq!(s.sinks[*name].acked, m.acked[i]);
    }
    if m.records.is_empty() {
        prop_assert_eq!(s.bytes, 0);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn outbox_matches_model(
        max_records in 3u64..16,
        when_full in policy(),
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ob");
        let mut ob = Outbox::open(&path, config(max_records, when_full)).unwrap();
        for s in SINKS {
            ob.register_sink(s).wait().unwrap();
        }
        let mut m = Model { next_seq: 1, ..Model::default() };
        let mut counter = 0u64;
        for step in steps {
            match step {
                Step::Append(n) => {
                    let msgs: Vec<String> = (0..n).map(|_| { counter += 1; format!("m{counter}") }).collect();
                    let records: Vec<Record> = msgs.iter().map(|s| rec(s)).collect();
                    let result = ob.append(&records).wait();
                    let n = n as u64;
                    let free = max_records - m.records.len() as u64;
                    if n > max_records && when_full != WhenFull::DropNewest {
                        prop_assert!(matches!(result, Err(OutboxError::AppendTooLarge { .. })), "{:?}", result);
                        check(&ob, &m)?;
                        continue;
                    }
                    match when_full {
                        WhenFull::Block => {
                            if n <= free {
                                let r = result.unwrap();
                                prop_assert_eq!(r.first_seq, m.next_seq);
                                for msg in msgs { m.records.insert(m.next_seq, msg); m.next_seq += 1; }
                            } else {
                                prop_assert!(matches!(result, Err(OutboxError::Full { .. })), "{:?}", result);
                            }
                        }
                        WhenFull::DropNewest => {
                            let r = result.unwrap();
                            let keep = n.min(free);
                            prop_assert_eq!((r.count as u64, r.dropped as u64), (keep, n - keep));
                            for msg in msgs.into_iter().take(keep as usize) { m.records.insert(m.next_seq, msg); m.next_seq += 1; }
                            m.dropped_newest += n - keep;
                        }
                        WhenFull::DropOldest => {
                            let r = result.unwrap();
                            prop_assert_eq!(r.count as u64, n);
                            for msg in msgs { m.records.insert(m.next_seq, msg); m.next_seq += 1; }
                            while m.records.len() as u64 > max_records {
                                m.records.pop_first();
                                m.dropped_oldest += 1;
                            }
                        }
                    }
                }
                Step::Read { sink, max } => {
                    let after = m.acked[sink];
                    let b = ob.read(after, max as usize, usize::MAX).unwrap();
                    let want: Vec<u64> = m.records.range(after + 1..).take(max as usize).map(|(s, _)| *s).collect();
                    let got: Vec<u64> = b.records.iter().map(|r| r.seq).collect();
                    prop_assert_eq!(&got, &want);
                    if let Some(last) = want.last() { prop_assert_eq!(b.last_seq, *last); }
                }
                Step::Ack { sink, forward } => {
                    let upto = (m.acked[sink] + forward as u64).min(m.next_seq - 1);
                    ob.ack(SINKS[sink], upto, 0).wait().unwrap();
                    m.acked[sink] = m.acked[sink].max(upto);
                    m.collect();
                }
                Step::Reopen => {
                    drop(ob);
                    ob = Outbox::open(&path, config(max_records, when_full)).unwrap();
                }
            }
            check(&ob, &m)?;
        }
    }
}

//! The stored form of a pipe's state (`p\0...` entries of `store.rs`):
//! written once per execution record of a pipe, so it is the notifier's
//! most frequent write. A compact binary form (about 60 bytes for a
//! typical pipe, where the JSON `[key, state]` took about 220): the write
//! ahead log's checksum, the memtable and the flushes and compactions of
//! the column family all cost by the byte.
//!
//! Layout: [`MAGIC`], `known_since` i64 BE, a flags byte (which optional
//! times follow, `enabled`), the present times as i64 BE in field order,
//! the schedule (tag byte; `Interval`: f64 BE; `Cron`: u16 BE length and
//! UTF-8), then `sub`, `source` and `pipe` (u16 BE length and UTF-8
//! each). Entries written before this form are JSON (they start with
//! `[`) and are still read.

use crate::model::{PipeKey, PipeState, ScheduleSpec};

/// First byte of the binary form (never the first byte of JSON).
const MAGIC: u8 = 0xB1;

const STARTED: u8 = 1;
const FINISHED: u8 = 1 << 1;
const RUNNING: u8 = 1 << 2;
const ENABLED: u8 = 1 << 3;
const RESUMED: u8 = 1 << 4;

const UNKNOWN: u8 = 0;
const INTERVAL: u8 = 1;
const CRON: u8 = 2;
const MANUAL: u8 = 3;

/// The stored value of `key`'s state `p`.
pub(crate) fn encode(key: &PipeKey, p: &PipeState) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        48 + key.sub.len() + key.source.len() + key.pipe.len() + cron_len(&p.schedule),
    );
    out.push(MAGIC);
    out.extend_from_slice(&p.known_since.to_be_bytes());
    let times = [
        (STARTED, p.last_started),
        (FINISHED, p.last_finished),
        (RUNNING, p.running_since),
        (RESUMED, p.resumed_at),
    ];
    let mut flags = if p.enabled { ENABLED } else { 0 };
    for (bit, t) in times {
        if t.is_some() {
            flags |= bit;
        }
    }
    out.push(flags);
    for (_, t) in times {
        if let Some(t) = t {
            out.extend_from_slice(&t.to_be_bytes());
        }
    }
    match &p.schedule {
        ScheduleSpec::Unknown => out.push(UNKNOWN),
        ScheduleSpec::Interval(s) => {
            out.push(INTERVAL);
            out.extend_from_slice(&s.to_be_bytes());
        }
        ScheduleSpec::Cron(c) => {
            out.push(CRON);
            put_str(&mut out, c);
        }
        ScheduleSpec::Manual => out.push(MANUAL),
    }
    for s in [&key.sub, &key.source, &key.pipe] {
        put_str(&mut out, s);
    }
    out
}

/// Reads a stored value, binary or JSON; `None` when it is neither.
pub(crate) fn decode(v: &[u8]) -> Option<(PipeKey, PipeState)> {
    if v.first() != Some(&MAGIC) {
        return serde_json::from_slice(v).ok();
    }
    let mut r = Reader { b: &v[1..] };
    let known_since = r.i64()?;
    let flags = r.u8()?;
    let mut time = |bit: u8| -> Option<Option<i64>> {
        if flags & bit != 0 {
            r.i64().map(Some)
        } else {
            Some(None)
        }
    };
    let last_started = time(STARTED)?;
    let last_finished = time(FINISHED)?;
    let running_since = time(RUNNING)?;
    let resumed_at = time(RESUMED)?;
    let schedule = match r.u8()? {
        UNKNOWN => ScheduleSpec::Unknown,
        INTERVAL => ScheduleSpec::Interval(f64::from_bits(r.i64()? as u64)),
        CRON => ScheduleSpec::Cron(r.str()?),
        MANUAL => ScheduleSpec::Manual,
        _ => return None,
    };
    let key = PipeKey {
        sub: r.str()?,
        source: r.str()?,
        pipe: r.str()?,
    };
    if !r.b.is_empty() {
        return None;
    }
    let state = PipeState {
        known_since,
        last_started,
        last_finished,
        running_since,
        enabled: flags & ENABLED != 0,
        schedule,
        resumed_at,
        cron: None,
    };
    Some((key, state))
}

fn cron_len(s: &ScheduleSpec) -> usize {
    match s {
        ScheduleSpec::Cron(c) => c.len() + 2,
        _ => 8,
    }
}

/// Names are bounded far below 64 KiB at validation; a longer one is cut
/// at a character boundary rather than written unreadable.
fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.b.len() < n {
            return None;
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .map(|b| i64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    fn str(&mut self) -> Option<String> {
        let n = self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))? as usize;
        self.take(n)
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(sub: &str, source: &str, pipe: &str) -> PipeKey {
        PipeKey {
            sub: sub.into(),
            source: source.into(),
            pipe: pipe.into(),
        }
    }

    fn same(a: &PipeState, b: &PipeState) -> bool {
        a.known_since == b.known_since
            && a.last_started == b.last_started
            && a.last_finished == b.last_finished
            && a.running_since == b.running_since
            && a.enabled == b.enabled
            && a.resumed_at == b.resumed_at
            && match (&a.schedule, &b.schedule) {
                (ScheduleSpec::Interval(x), ScheduleSpec::Interval(y)) => {
                    x.to_bits() == y.to_bits()
                }
                (x, y) => x == y,
            }
    }

    #[test]
    fn a_typical_pipe_is_a_third_of_its_json_and_json_entries_still_read() {
        let k = key("acme", "node-1", "crm-person-inbound");
        let p = PipeState {
            known_since: 1_764_633_600_000_000_000,
            last_started: Some(1_764_633_660_000_000_000),
            last_finished: Some(1_764_633_661_000_000_000),
            enabled: true,
            schedule: ScheduleSpec::Interval(60.0),
            ..PipeState::default()
        };
        let bin = encode(&k, &p);
        let json = serde_json::to_vec(&(&k, &p)).unwrap();
        assert!(
            bin.len() * 3 <= json.len(),
            "{} vs {}",
            bin.len(),
            json.len()
        );
        let (k2, p2) = decode(&bin).unwrap();
        assert_eq!(k2, k);
        assert!(same(&p, &p2));
        // An entry written by an earlier version.
        let (k3, p3) = decode(&json).unwrap();
        assert_eq!(k3, k);
        assert!(same(&p, &p3));
        // Truncated or trailing bytes are refused, never misread.
        assert!(decode(&bin[..bin.len() - 1]).is_none());
        let mut longer = bin.clone();
        longer.push(0);
        assert!(decode(&longer).is_none());
        assert!(decode(&[MAGIC]).is_none());
    }

    fn schedule() -> impl Strategy<Value = ScheduleSpec> {
        prop_oneof![
            Just(ScheduleSpec::Unknown),
            Just(ScheduleSpec::Manual),
            any::<f64>().prop_map(ScheduleSpec::Interval),
            "\\PC{0,40}".prop_map(ScheduleSpec::Cron),
        ]
    }

    proptest! {
        #[test]
        fn every_state_round_trips(
            sub in "\\PC{0,20}", source in "\\PC{0,20}", pipe in "\\PC{0,60}",
            known_since in any::<i64>(),
            times in proptest::collection::vec(proptest::option::of(any::<i64>()), 4),
            enabled in any::<bool>(),
            schedule in schedule(),
        ) {
            let k = key(&sub, &source, &pipe);
            let p = PipeState {
                known_since,
                last_started: times[0],
                last_finished: times[1],
                running_since: times[2],
                resumed_at: times[3],
                enabled,
                schedule,
                cron: None,
            };
            let (k2, p2) = decode(&encode(&k, &p)).expect("decodes");
            prop_assert_eq!(k2, k);
            prop_assert!(same(&p, &p2));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let mut b = bytes;
            if let Some(first) = b.first_mut() {
                *first = MAGIC;
            }
            let _ = decode(&b);
        }
    }
}

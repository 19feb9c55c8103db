//! Key and value encodings of the log store (see the layout in `mod.rs`).
//!
//! Two generations of keys live side by side, so that stores written before
//! outbox epochs existed open without a rewrite: a record of the legacy
//! epoch (epoch id 0: batches without an epoch) keeps the 24-byte entry key
//! and the `seqs` key without an epoch; records of every later epoch carry
//! the source's epoch id (u32) in both keys.

/// `i64` timestamps as big-endian bytes with the sign bit flipped, so that
/// byte order equals numeric order (negative times sort first).
pub fn ts_bytes(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn ts_from_bytes(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// The id of the legacy epoch (batches without an epoch).
pub const LEGACY_EPOCH: u32 = 0;

/// An `entries` key: stream id, timestamp, \[epoch id,\] seq (24 bytes for
/// the legacy epoch, 28 for the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryKey {
    buf: [u8; 28],
    len: u8,
}

impl AsRef<[u8]> for EntryKey {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

/// `entries` key of one record.
pub fn entry_key(stream: u64, ts: i64, epoch: u32, seq: u64) -> EntryKey {
    let mut buf = [0u8; 28];
    buf[..8].copy_from_slice(&stream.to_be_bytes());
    buf[8..16].copy_from_slice(&ts_bytes(ts));
    if epoch == LEGACY_EPOCH {
        buf[16..24].copy_from_slice(&seq.to_be_bytes());
        EntryKey { buf, len: 24 }
    } else {
        buf[16..20].copy_from_slice(&epoch.to_be_bytes());
        buf[20..28].copy_from_slice(&seq.to_be_bytes());
        EntryKey { buf, len: 28 }
    }
}

/// The smallest `entries` key of `stream` at or after `ts` (a prefix of
/// both key generations, so it bounds either).
pub fn entry_bound(stream: u64, ts: i64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&stream.to_be_bytes());
    k[8..16].copy_from_slice(&ts_bytes(ts));
    k
}

/// The parts of an `entries` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryKeyParts {
    pub stream: u64,
    pub ts: i64,
    pub epoch: u32,
    pub seq: u64,
}

/// Splits an `entries` key; `None` if it is malformed.
pub fn parse_entry_key(k: &[u8]) -> Option<EntryKeyParts> {
    let stream = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
    let ts = ts_from_bytes(k.get(8..16)?.try_into().ok()?);
    let (epoch, seq) = match k.len() {
        24 => (LEGACY_EPOCH, u64::from_be_bytes(k[16..24].try_into().ok()?)),
        28 => (
            u32::from_be_bytes(k[16..20].try_into().ok()?),
            u64::from_be_bytes(k[20..28].try_into().ok()?),
        ),
        _ => return None,
    };
    Some(EntryKeyParts {
        stream,
        ts,
        epoch,
        seq,
    })
}

/// `streams` key: the stream id.
pub fn stream_key(stream: u64) -> [u8; 8] {
    stream.to_be_bytes()
}

/// Prefix of every key of one subscription in `seqs` and `sources`:
/// the subscription then a 0 byte (validated names never contain one).
pub fn sub_prefix(subscription: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(subscription.len() + 1);
    k.extend_from_slice(subscription.as_bytes());
    k.push(0);
    k
}

/// Exclusive end of [`sub_prefix`]'s range.
pub fn sub_prefix_end(subscription: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(subscription.len() + 1);
    k.extend_from_slice(subscription.as_bytes());
    k.push(1);
    k
}

/// `sources` key: subscription, 0, source.
pub fn source_key(subscription: &str, source: &str) -> Vec<u8> {
    let mut k = sub_prefix(subscription);
    k.extend_from_slice(source.as_bytes());
    k
}

/// `seqs` key: subscription, 0, source, 0, seq (u64 BE) for the legacy
/// epoch; subscription, 0, source, 1, epoch id (u32 BE), seq (u64 BE) for
/// the others. Names hold neither a 0 nor a 1 byte (no control
/// characters), so the two shapes never collide, and both lie in the
/// subscription's [`sub_prefix`] range.
pub fn seq_key(subscription: &str, source: &str, epoch: u32, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(subscription.len() + source.len() + 14);
    k.extend_from_slice(subscription.as_bytes());
    k.push(0);
    k.extend_from_slice(source.as_bytes());
    if epoch == LEGACY_EPOCH {
        k.push(0);
    } else {
        k.push(1);
        k.extend_from_slice(&epoch.to_be_bytes());
    }
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The content digest stored as the value of a `seqs` key: CRC-32 of the
/// record's time, stream labels and line. Legacy values are empty (no
/// digest known).
pub fn digest_value(digest: u32) -> [u8; 4] {
    digest.to_be_bytes()
}

/// The digest of a stored `seqs` value, `None` when none was stored.
pub fn parse_digest(v: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(v).ok().map(u32::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_bytes_sort_like_numbers() {
        let values = [i64::MIN, -5, -1, 0, 1, 1_700_000_000_000_000_000, i64::MAX];
        for w in values.windows(2) {
            assert!(ts_bytes(w[0]) < ts_bytes(w[1]), "{} < {}", w[0], w[1]);
        }
        for v in values {
            assert_eq!(ts_from_bytes(ts_bytes(v)), v);
        }
    }

    #[test]
    fn entry_keys_of_both_generations_round_trip_and_sort_by_stream_then_time() {
        let k = entry_key(7, -3, LEGACY_EPOCH, 9);
        assert_eq!(k.as_ref().len(), 24);
        assert_eq!(
            parse_entry_key(k.as_ref()),
            Some(EntryKeyParts {
                stream: 7,
                ts: -3,
                epoch: 0,
                seq: 9
            })
        );
        let k2 = entry_key(7, -3, 5, 9);
        assert_eq!(k2.as_ref().len(), 28);
        assert_eq!(
            parse_entry_key(k2.as_ref()).map(|p| (p.epoch, p.seq)),
            Some((5, 9))
        );
        // Time order holds across generations; the bound is below both.
        assert!(entry_key(7, 5, 0, 1).as_ref() < entry_key(7, 6, 3, 0).as_ref());
        assert!(entry_key(7, 5, 3, u64::MAX).as_ref() < entry_key(7, 6, 0, 0).as_ref());
        assert!(entry_bound(7, 6).as_slice() < entry_key(7, 6, 0, 0).as_ref());
        assert!(entry_bound(7, 6).as_slice() < entry_key(7, 6, 1, 0).as_ref());
        assert!(entry_key(7, i64::MAX, 9, u64::MAX).as_ref() < entry_bound(8, i64::MIN).as_slice());
        assert_eq!(parse_entry_key(&k.as_ref()[..23]), None);
        assert_eq!(parse_entry_key(&k2.as_ref()[..27]), None);
    }

    #[test]
    fn seq_keys_of_epochs_differ_and_stay_in_the_subscription_range() {
        let legacy = seq_key("acme", "n", LEGACY_EPOCH, 1);
        let e1 = seq_key("acme", "n", 1, 1);
        let e2 = seq_key("acme", "n", 2, 1);
        assert_ne!(legacy, e1);
        assert_ne!(e1, e2);
        for k in [&legacy, &e1, &e2] {
            assert!(k.as_slice() >= sub_prefix("acme").as_slice());
            assert!(k.as_slice() < sub_prefix_end("acme").as_slice());
        }
        // "acme" must not cover "acme-test".
        let k = seq_key("acme-test", "n", 1, 1);
        assert!(
            !(k.as_slice() >= sub_prefix("acme").as_slice()
                && k.as_slice() < sub_prefix_end("acme").as_slice())
        );
        assert_eq!(parse_digest(&digest_value(0xdead_beef)), Some(0xdead_beef));
        assert_eq!(parse_digest(&[]), None);
    }
}

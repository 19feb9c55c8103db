//! Key and value encodings of the log store (see the layout in `mod.rs`).

/// `i64` timestamps as big-endian bytes with the sign bit flipped, so that
/// byte order equals numeric order (negative times sort first).
pub fn ts_bytes(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn ts_from_bytes(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// `entries` key: stream id, timestamp, seq (24 bytes).
pub fn entry_key(stream: u64, ts: i64, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&stream.to_be_bytes());
    k[8..16].copy_from_slice(&ts_bytes(ts));
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The smallest `entries` key of `stream` at or after `ts`.
pub fn entry_bound(stream: u64, ts: i64) -> [u8; 24] {
    entry_key(stream, ts, 0)
}

/// Splits an `entries` key into (stream, ts, seq); `None` if it is malformed.
pub fn parse_entry_key(k: &[u8]) -> Option<(u64, i64, u64)> {
    if k.len() != 24 {
        return None;
    }
    let stream = u64::from_be_bytes(k[..8].try_into().ok()?);
    let ts = ts_from_bytes(k[8..16].try_into().ok()?);
    let seq = u64::from_be_bytes(k[16..].try_into().ok()?);
    Some((stream, ts, seq))
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

/// `seqs` key: subscription, 0, source, 0, seq (u64 big-endian).
pub fn seq_key(subscription: &str, source: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(subscription.len() + source.len() + 10);
    k.extend_from_slice(subscription.as_bytes());
    k.push(0);
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
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
    fn entry_keys_round_trip_and_sort_by_stream_then_time() {
        let k = entry_key(7, -3, 9);
        assert_eq!(parse_entry_key(&k), Some((7, -3, 9)));
        assert!(entry_key(7, 5, 1) < entry_key(7, 6, 0));
        assert!(entry_key(7, i64::MAX, u64::MAX) < entry_key(8, i64::MIN, 0));
        assert_eq!(parse_entry_key(&k[..23]), None);
    }

    #[test]
    fn subscription_ranges_do_not_overlap_prefix_names() {
        // "acme" must not cover "acme-test".
        let k = seq_key("acme-test", "n", 1);
        assert!(
            !(k.as_slice() >= sub_prefix("acme").as_slice()
                && k.as_slice() < sub_prefix_end("acme").as_slice())
        );
        let own = seq_key("acme", "n", 1);
        assert!(own.as_slice() >= sub_prefix("acme").as_slice());
        assert!(own.as_slice() < sub_prefix_end("acme").as_slice());
    }
}

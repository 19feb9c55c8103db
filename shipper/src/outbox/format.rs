//! Key and value encodings of the outbox's column families.

/// Version byte of a stored record value.
pub const RECORD_V1: u8 = 1;
/// Bytes before the payload in a stored record value: version + CRC32.
pub const RECORD_HEADER: usize = 5;

/// Keys of the `records` and `quarantine` families: big-endian seq, so that
/// byte order is numeric order and iteration is in append order.
pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn key_seq(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// `[version u8][crc32 of payload, u32 LE][payload]`.
pub fn encode_record_value(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(RECORD_HEADER + payload.len());
    v.push(RECORD_V1);
    v.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// Encodes a record value in place: `write` appends the payload to a
/// buffer that already holds room for the header, which is filled after.
/// One allocation per record instead of a payload and a copy.
pub fn encode_record_value_with<E>(
    capacity: usize,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<Vec<u8>, E> {
    let mut v = Vec::with_capacity(RECORD_HEADER + capacity);
    v.extend_from_slice(&[RECORD_V1, 0, 0, 0, 0]);
    write(&mut v)?;
    let crc = crc32fast::hash(&v[RECORD_HEADER..]).to_le_bytes();
    v[1..RECORD_HEADER].copy_from_slice(&crc);
    Ok(v)
}

/// Why a stored value is not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueFault {
    TooShort(usize),
    Version(u8),
    Checksum { stored: u32, computed: u32 },
}

impl std::fmt::Display for ValueFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueFault::TooShort(n) => write!(f, "value of {n} bytes is shorter than the header"),
            ValueFault::Version(v) => write!(f, "unknown record format version {v}"),
            ValueFault::Checksum { stored, computed } => {
                write!(
                    f,
                    "checksum mismatch: stored {stored:08x}, computed {computed:08x}"
                )
            }
        }
    }
}

/// Checks a stored value and returns its payload.
pub fn decode_record_value(value: &[u8]) -> Result<&[u8], ValueFault> {
    if value.len() < RECORD_HEADER {
        return Err(ValueFault::TooShort(value.len()));
    }
    if value[0] != RECORD_V1 {
        return Err(ValueFault::Version(value[0]));
    }
    let stored = u32::from_le_bytes([value[1], value[2], value[3], value[4]]);
    let payload = &value[RECORD_HEADER..];
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(ValueFault::Checksum { stored, computed });
    }
    Ok(payload)
}

pub fn u64_value(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub fn value_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

pub fn pair_value(a: u64, b: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

pub fn value_pair(v: &[u8]) -> Option<(u64, u64)> {
    if v.len() != 16 {
        return None;
    }
    Some((value_u64(&v[..8])?, value_u64(&v[8..])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_round_trips_and_detects_a_flipped_byte() {
        let v = encode_record_value(b"hello record");
        assert_eq!(decode_record_value(&v), Ok(&b"hello record"[..]));
        for i in 0..v.len() {
            let mut bad = v.clone();
            bad[i] ^= 0x10;
            assert!(decode_record_value(&bad).is_err(), "flip at {i} undetected");
        }
        assert_eq!(decode_record_value(&[1, 2]), Err(ValueFault::TooShort(2)));
    }

    #[test]
    fn encoding_in_place_gives_the_same_value() {
        let v = encode_record_value_with(4, |b| {
            b.extend_from_slice(b"hello record");
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(v, encode_record_value(b"hello record"));
    }

    #[test]
    fn seq_keys_sort_numerically() {
        let mut keys: Vec<[u8; 8]> = [3u64, 256, 1, 65_536, 2]
            .iter()
            .map(|s| seq_key(*s))
            .collect();
        keys.sort();
        let seqs: Vec<u64> = keys.iter().map(|k| key_seq(k).unwrap()).collect();
        assert_eq!(seqs, vec![1, 2, 3, 256, 65_536]);
    }
}

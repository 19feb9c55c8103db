//! Decoding and validation of `POST /api/v1/ingest` bodies.
//!
//! The steps, each with its own refusal: the body's encoding (`zstd`,
//! `gzip` or none) is undone into at most `max_decompressed_bytes` (a
//! decompression bomb stops there: 413); the MessagePack `IngestBatch` is
//! decoded, and a record that does not decode is named by its index (400);
//! every record is validated (envelope consistent with the batch, seq,
//! timestamp window, size, names); then each record is turned into its
//! stream labels and stored line ([`PreparedBatch`]).

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;

use schemas::Record;

use crate::compression::DecompressError;

use crate::logs::labels::{
    labels_key, overflow_labels, record_labels, record_labels_key, record_line, FREE_FORM_LABEL,
};
use crate::logs::model::{PreparedBatch, PreparedEntry, PreparedStream, ENTRY_V1_BYTE};

/// Limits applied to every ingest request.
#[derive(Debug, Clone)]
pub struct IngestLimits {
    /// Request body as sent (compressed).
    pub max_body_bytes: usize,
    /// Body after decompression.
    pub max_decompressed_bytes: usize,
    /// Records per batch.
    pub max_records: usize,
    /// One record's stored line (its body as JSON).
    pub max_record_bytes: usize,
    /// Oldest accepted record time, relative to now (also capped by the
    /// subscription's retention).
    pub accept_past: std::time::Duration,
    /// Newest accepted record time, relative to now (clock skew allowance).
    pub accept_future: std::time::Duration,
    /// Longest value of a stream label taken from a record (`pipe`); a
    /// longer one is not refused: the record goes to its stream without
    /// `pipe` (`overflow="pipe"`).
    pub max_label_value_bytes: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            max_body_bytes: 8 << 20,
            max_decompressed_bytes: 32 << 20,
            max_records: 50_000,
            max_record_bytes: 256 << 10,
            accept_past: std::time::Duration::from_secs(720 * 3600),
            accept_future: std::time::Duration::from_secs(600),
            max_label_value_bytes: 1024,
        }
    }
}

/// Why a body was refused; mapped to a status by the HTTP layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("unsupported Content-Encoding {0:?} (use zstd, gzip or none)")]
    UnsupportedEncoding(String),
    #[error("body is not valid {encoding}: {message}")]
    BadCompression {
        encoding: &'static str,
        message: String,
    },
    #[error("decompressed body is over the limit of {limit} bytes")]
    DecompressedTooLarge { limit: usize },
    #[error("malformed batch: {message}")]
    Malformed { message: String },
    #[error("record {index}: {message}")]
    BadRecord {
        index: usize,
        field: &'static str,
        message: String,
    },
    #[error("batch has {count} records, over the limit of {limit}")]
    TooManyRecords { count: usize, limit: usize },
    #[error("record {index} is {size} bytes, over the limit of {limit} bytes")]
    RecordTooLarge {
        index: usize,
        size: usize,
        limit: usize,
    },
    #[error("{field}: {message}")]
    BadBatch {
        field: &'static str,
        message: String,
    },
}

impl IngestError {
    /// A short, fixed reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::UnsupportedEncoding(_) => "unsupported_encoding",
            IngestError::BadCompression { .. } => "bad_compression",
            IngestError::DecompressedTooLarge { .. } => "decompressed_too_large",
            IngestError::Malformed { .. } => "malformed",
            IngestError::BadRecord { field, .. } => match *field {
                "ts" => "timestamp_out_of_window",
                "seq" => "bad_seq",
                _ => "bad_record",
            },
            IngestError::TooManyRecords { .. } => "too_many_records",
            IngestError::RecordTooLarge { .. } => "record_too_large",
            IngestError::BadBatch { .. } => "bad_batch",
        }
    }

    /// The field the error is about, for the JSON error body.
    pub fn field(&self) -> String {
        match self {
            IngestError::UnsupportedEncoding(_) => "Content-Encoding".into(),
            IngestError::BadCompression { .. } | IngestError::DecompressedTooLarge { .. } => {
                "body".into()
            }
            IngestError::Malformed { .. } => "body".into(),
            IngestError::BadRecord { index, field, .. } => format!("records[{index}].{field}"),
            IngestError::TooManyRecords { .. } => "records".into(),
            IngestError::RecordTooLarge { index, .. } => format!("records[{index}].body"),
            IngestError::BadBatch { field, .. } => (*field).into(),
        }
    }

    /// The index of the offending record, if the error is about one.
    pub fn index(&self) -> Option<usize> {
        match self {
            IngestError::BadRecord { index, .. } | IngestError::RecordTooLarge { index, .. } => {
                Some(*index)
            }
            _ => None,
        }
    }

    /// Whether the error means "too large" (413) rather than "invalid" (400).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            IngestError::DecompressedTooLarge { .. }
                | IngestError::TooManyRecords { .. }
                | IngestError::RecordTooLarge { .. }
        )
    }
}

/// Undoes `Content-Encoding`, reading at most `limit` bytes of output
/// (see [`crate::compression`]).
pub fn decompress<'a>(
    encoding: Option<&str>,
    body: &'a [u8],
    limit: usize,
) -> Result<std::borrow::Cow<'a, [u8]>, IngestError> {
    crate::compression::decompress(encoding, body, limit).map_err(IngestError::from)
}

impl From<DecompressError> for IngestError {
    fn from(e: DecompressError) -> IngestError {
        match e {
            DecompressError::Unsupported(enc) => IngestError::UnsupportedEncoding(enc),
            DecompressError::Bad { encoding, message } => {
                IngestError::BadCompression { encoding, message }
            }
            DecompressError::TooLarge { limit } => IngestError::DecompressedTooLarge { limit },
        }
    }
}

/// A decoded batch.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedBatch {
    pub source: String,
    pub subscription: String,
    /// The outbox epoch; "" when the sender has none.
    pub epoch: String,
    pub records: Vec<Record>,
    pub dropped: u64,
}

/// Decodes a MessagePack `IngestBatch`, naming the record that fails.
pub fn decode(bytes: &[u8], max_records: usize) -> Result<DecodedBatch, IngestError> {
    let failed_at = Cell::new(None);
    let too_many = Cell::new(None);
    let mut rest: &[u8] = bytes;
    let mut de = rmp_serde::Deserializer::new(&mut rest);
    let seed = BatchSeed {
        failed_at: &failed_at,
        too_many: &too_many,
        max_records,
    };
    match seed.deserialize(&mut de) {
        Ok(b) => {
            if !rest.is_empty() {
                return Err(IngestError::Malformed {
                    message: format!("{} trailing bytes after the batch", rest.len()),
                });
            }
            Ok(b)
        }
        Err(e) => {
            if let Some(count) = too_many.get() {
                return Err(IngestError::TooManyRecords {
                    count,
                    limit: max_records,
                });
            }
            match failed_at.get() {
                Some(index) => Err(IngestError::BadRecord {
                    index,
                    field: "record",
                    message: e.to_string(),
                }),
                None => Err(IngestError::Malformed {
                    message: e.to_string(),
                }),
            }
        }
    }
}

struct BatchSeed<'c> {
    failed_at: &'c Cell<Option<usize>>,
    too_many: &'c Cell<Option<usize>>,
    max_records: usize,
}

impl<'de> DeserializeSeed<'de> for BatchSeed<'_> {
    type Value = DecodedBatch;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<DecodedBatch, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BatchSeed<'_> {
    type Value = DecodedBatch;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an ingest batch map {source, subscription, records, dropped}")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DecodedBatch, A::Error> {
        let mut source = None;
        let mut subscription = None;
        let mut records = None;
        let mut epoch = String::new();
        let mut dropped = 0u64;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "source" => source = Some(map.next_value::<String>()?),
                "subscription" => subscription = Some(map.next_value::<String>()?),
                "epoch" => epoch = map.next_value::<String>()?,
                "dropped" => dropped = map.next_value()?,
                "records" => {
                    records = Some(map.next_value_seed(RecordsSeed {
                        failed_at: self.failed_at,
                        too_many: self.too_many,
                        max_records: self.max_records,
                    })?)
                }
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(DecodedBatch {
            source: source.ok_or_else(|| de::Error::missing_field("source"))?,
            subscription: subscription.ok_or_else(|| de::Error::missing_field("subscription"))?,
            records: records.ok_or_else(|| de::Error::missing_field("records"))?,
            epoch,
            dropped,
        })
    }
}

struct RecordsSeed<'c> {
    failed_at: &'c Cell<Option<usize>>,
    too_many: &'c Cell<Option<usize>>,
    max_records: usize,
}

impl<'de> DeserializeSeed<'de> for RecordsSeed<'_> {
    type Value = Vec<Record>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Record>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RecordsSeed<'_> {
    type Value = Vec<Record>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Record>, A::Error> {
        if let Some(n) = seq.size_hint() {
            if n > self.max_records {
                self.too_many.set(Some(n));
                return Err(de::Error::custom("too many records"));
            }
        }
        // Never trust the declared length for the allocation.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        loop {
            let index = out.len();
            if index >= self.max_records {
                self.too_many.set(Some(index + 1));
                return Err(de::Error::custom("too many records"));
            }
            self.failed_at.set(Some(index));
            match seq.next_element::<Record>()? {
                Some(r) => out.push(r),
                None => break,
            }
        }
        self.failed_at.set(None);
        Ok(out)
    }
}

/// Validates a decoded batch and prepares it for the store.
///
/// `now` and `oldest_allowed` are Unix ns; records outside
/// `[oldest_allowed, now + accept_future]` are refused.
pub fn prepare(
    batch: DecodedBatch,
    limits: &IngestLimits,
    now: i64,
    oldest_allowed: i64,
    keep_records: bool,
) -> Result<PreparedBatch, IngestError> {
    for (field, v) in [
        ("source", &batch.source),
        ("subscription", &batch.subscription),
    ] {
        if !crate::auth::valid_name(v) || v.contains('\0') {
            return Err(IngestError::BadBatch {
                field,
                message: format!(
                    "must be 1 to 200 bytes without control characters, got {:?}",
                    truncate(v, 64)
                ),
            });
        }
    }
    if !schemas::batch::valid_epoch(&batch.epoch) {
        return Err(IngestError::BadBatch {
            field: "epoch",
            message: format!(
                "must be at most {} characters of [0-9A-Za-z_-], got {:?}",
                schemas::batch::MAX_EPOCH_LEN,
                truncate(&batch.epoch, 80)
            ),
        });
    }
    let newest_allowed =
        now.saturating_add(i64::try_from(limits.accept_future.as_nanos()).unwrap_or(i64::MAX));
    let mut streams: Vec<PreparedStream> = Vec::new();
    let mut stream_idx: HashMap<String, usize> = HashMap::new();
    let mut entries = Vec::with_capacity(batch.records.len());
    let mut key = String::with_capacity(128);
    for (index, r) in batch.records.iter().enumerate() {
        let bad = |field: &'static str, message: String| IngestError::BadRecord {
            index,
            field,
            message,
        };
        if r.source != batch.source {
            return Err(bad(
                "source",
                format!(
                    "record source {:?} differs from the batch source {:?}",
                    truncate(&r.source, 64),
                    truncate(&batch.source, 64)
                ),
            ));
        }
        if r.subscription != batch.subscription {
            return Err(bad(
                "subscription",
                format!(
                    "record subscription {:?} differs from the batch subscription {:?}",
                    truncate(&r.subscription, 64),
                    truncate(&batch.subscription, 64)
                ),
            ));
        }
        if r.seq == 0 {
            return Err(bad(
                "seq",
                "seq 0 is not an outbox-assigned sequence (they start at 1)".into(),
            ));
        }
        if r.ts < oldest_allowed || r.ts > newest_allowed {
            return Err(bad(
                "ts",
                format!(
                    "timestamp {} ({}) is outside the accepted window {} .. {}",
                    r.ts,
                    schemas::time::rfc3339_from_nanos(r.ts),
                    schemas::time::rfc3339_from_nanos(oldest_allowed),
                    schemas::time::rfc3339_from_nanos(newest_allowed)
                ),
            ));
        }
        let line = record_line(r).map_err(|e| bad("body", format!("cannot encode body: {e}")))?;
        if line.len() > limits.max_record_bytes {
            return Err(IngestError::RecordTooLarge {
                index,
                size: line.len(),
                limit: limits.max_record_bytes,
            });
        }
        record_labels_key(r, &mut key);
        let stream = match stream_idx.get(key.as_str()) {
            Some(i) => *i,
            None => {
                let labels = record_labels(r);
                // Only `pipe` comes from the record itself (subscription and
                // source were checked above, the others are enums). A value
                // that cannot be a label is not a reason to refuse the
                // record: it goes to the stream without `pipe`.
                let bad_pipe = labels.get(FREE_FORM_LABEL).is_some_and(|v| {
                    v.len() > limits.max_label_value_bytes || v.chars().any(|c| c.is_control())
                });
                let overflow = overflow_labels(&labels).map(|l| {
                    let k = labels_key(&l);
                    (l, k)
                });
                let prepared = match (bad_pipe, overflow) {
                    (true, Some((l, k))) => PreparedStream {
                        labels: l,
                        key: k,
                        overflow: None,
                        overflowed: true,
                    },
                    (_, overflow) => PreparedStream {
                        labels,
                        key: key.clone(),
                        overflow,
                        overflowed: false,
                    },
                };
                streams.push(prepared);
                stream_idx.insert(key.clone(), streams.len() - 1);
                streams.len() - 1
            }
        };
        let mut value = Vec::with_capacity(line.len() + 1);
        value.push(ENTRY_V1_BYTE);
        value.extend_from_slice(&line);
        let mut h = crc32fast::Hasher::new();
        h.update(&r.ts.to_be_bytes());
        h.update(key.as_bytes());
        h.update(&line);
        entries.push(PreparedEntry {
            seq: r.seq,
            ts: r.ts,
            stream,
            value,
            digest: h.finalize(),
        });
    }
    Ok(PreparedBatch {
        subscription: batch.subscription,
        source: batch.source,
        epoch: batch.epoch,
        dropped: batch.dropped,
        streams,
        entries,
        records: keep_records.then_some(batch.records),
        staged: None,
    })
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{Body, IngestBatch, Level, LogBody};

    fn rec(seq: u64, ts: i64) -> Record {
        Record {
            seq,
            ts,
            source: "n1".into(),
            subscription: "acme".into(),
            body: Body::Log(LogBody {
                level: Level::Info,
                target: "t".into(),
                message: format!("hello {seq}"),
                fields: Default::default(),
            }),
        }
    }

    fn encode(records: Vec<Record>) -> Vec<u8> {
        schemas::to_msgpack(&IngestBatch {
            epoch: String::new(),
            source: "n1".into(),
            subscription: "acme".into(),
            records,
            dropped: 2,
        })
        .expect("encode")
    }

    #[test]
    fn decodes_a_valid_batch() {
        let b = decode(&encode(vec![rec(1, 5), rec(2, 6)]), 10).expect("decode");
        assert_eq!(b.records.len(), 2);
        assert_eq!(b.dropped, 2);
        assert_eq!(b.records[1].seq, 2);
    }

    #[test]
    fn a_bad_record_is_named_by_its_index() {
        // Record 1 gets an unknown kind.
        let mut v: serde_json::Value = serde_json::to_value(IngestBatch {
            epoch: String::new(),
            source: "n1".into(),
            subscription: "acme".into(),
            records: vec![rec(1, 5), rec(2, 6), rec(3, 7)],
            dropped: 0,
        })
        .expect("json");
        v["records"][1]["kind"] = serde_json::json!("gossip");
        let bytes = rmp_serde::to_vec_named(&v).expect("encode");
        match decode(&bytes, 10) {
            Err(IngestError::BadRecord { index, message, .. }) => {
                assert_eq!(index, 1);
                assert!(message.contains("gossip"), "{message}");
            }
            other => panic!("expected BadRecord, got {other:?}"),
        }
    }

    #[test]
    fn truncated_and_trailing_bytes_are_malformed() {
        let bytes = encode(vec![rec(1, 5), rec(2, 6)]);
        for cut in [0, 1, 5, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut], 10).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0xc0);
        assert!(matches!(
            decode(&extra, 10),
            Err(IngestError::Malformed { .. })
        ));
    }

    #[test]
    fn too_many_records_is_refused_before_decoding_them() {
        let bytes = encode((1..=11).map(|s| rec(s, 5)).collect());
        assert!(matches!(
            decode(&bytes, 10),
            Err(IngestError::TooManyRecords {
                count: 11,
                limit: 10
            })
        ));
    }

    #[test]
    fn zstd_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 50 << 20];
        let bomb = zstd::encode_all(zeros.as_slice(), 19).expect("compress");
        assert!(bomb.len() < 100_000, "bomb is small: {}", bomb.len());
        assert_eq!(
            decompress(Some("zstd"), &bomb, 1 << 20).map(|b| b.len()),
            Err(IngestError::DecompressedTooLarge { limit: 1 << 20 })
        );
        let ok = zstd::encode_all(&b"hello"[..], 3).expect("compress");
        assert_eq!(
            decompress(Some("zstd"), &ok, 1 << 20).expect("ok").as_ref(),
            b"hello"
        );
        assert!(matches!(
            decompress(Some("zstd"), b"not zstd", 1 << 20),
            Err(IngestError::BadCompression { .. })
        ));
        assert!(matches!(
            decompress(Some("br"), b"x", 1 << 20),
            Err(IngestError::UnsupportedEncoding(_))
        ));
    }

    #[test]
    fn prepare_checks_window_seq_and_envelope() {
        let limits = IngestLimits::default();
        let now = 1_000_000_000_000;
        let batch = |records| DecodedBatch {
            source: "n1".into(),
            subscription: "acme".into(),
            epoch: String::new(),
            records,
            dropped: 0,
        };
        let ok = prepare(
            batch(vec![rec(1, now), rec(2, now - 10)]),
            &limits,
            now,
            now - 100,
            false,
        )
        .expect("valid");
        assert_eq!(ok.entries.len(), 2);
        assert_eq!(ok.streams.len(), 1, "same labels share a stream");

        let e = prepare(
            batch(vec![rec(1, now), rec(2, now - 1000)]),
            &limits,
            now,
            now - 100,
            false,
        )
        .expect_err("too old");
        assert_eq!(e.field(), "records[1].ts");

        let future = now + 3_600_000_000_000;
        let e = prepare(batch(vec![rec(1, future)]), &limits, now, 0, false).expect_err("future");
        assert_eq!(e.index(), Some(0));

        let e = prepare(batch(vec![rec(0, now)]), &limits, now, 0, false).expect_err("seq 0");
        assert_eq!(e.field(), "records[0].seq");

        let mut other = rec(1, now);
        other.subscription = "evil".into();
        let e = prepare(batch(vec![rec(1, now), other]), &limits, now, 0, false).expect_err("sub");
        assert_eq!(e.field(), "records[1].subscription");
    }
}

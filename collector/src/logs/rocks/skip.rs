//! Skip and volume indexes: what lets a line-filter search skip the parts of
//! a stream that cannot match, and a metric query count records without
//! reading them.
//!
//! # Skip index (`skip` column family)
//! An *index unit* describes one chunk of a stream: the records of stream
//! `s` whose time falls in the hour `b` ([`SKIP_BUCKET_NS`]) and that the
//! writer assigned to part `p` of that hour. Key: stream id u64 BE, bucket
//! index i64 BE (sign bit flipped), part u32 BE. Value: a token bloom filter
//! of the records' lines (the approach of ClickHouse's `tokenbf_v1` and of
//! Loki's bloom filters), their count and their oldest/newest time.
//!
//! - **Tokens**: maximal runs of ASCII letters and digits and bytes >= 0x80
//!   (so UTF-8 text stays whole), case-sensitive, at least
//!   [`MIN_TOKEN_LEN`] bytes; each hashed ([`token_hash`], a fixed function:
//!   it is part of the on-disk format) and set with [`HASHES`] probes.
//! - **Crash consistency**: the writer adds a unit's new bits, count and
//!   bounds as a RocksDB *merge operand* in the same `WriteBatch` as the
//!   entries (`writer.rs`), so a record is durable exactly when its index
//!   is. The merge operator ORs the bits, sums the counts and keeps the
//!   min/max; it is associative, so late and backfilled records (which land
//!   in an older hour) simply add to that hour's unit.
//! - **Bounded false positives**: a part holds at most [`part_capacity`]
//!   records (128 for part 0, doubling up to 4,096) in a bloom of
//!   [`BITS_PER_RECORD`] bits per record of capacity, so small streams get
//!   small filters and busy hours get many parts. The writer keeps the
//!   current part and its count per (stream, hour) in memory; an hour it has
//!   not seen since it started is looked up (the last part key of the hour
//!   and its count), so a restart continues the part it left.
//! - **Reads**: a query takes the tokens every matching line must contain
//!   ([`SkipPlan`]), reads the units of each selected stream in its time
//!   range, and scans only the time bounds of the units whose bloom may
//!   hold all of them ([`candidate_ranges`]). A malformed unit (or one a
//!   merge found malformed: it is stored as *unknown*) is scanned over its
//!   whole hour: never skipped.
//! - **Coverage**: every record written since the index existed is in a
//!   unit. A store written before it (format v2) is migrated at open: each
//!   stream records the newest time it held then
//!   (`StreamMeta::unindexed_through`), and a query scans that stream up
//!   to that time without looking at the index. Late records written since
//!   then are in units (and scanned anyway in that range).
//! - **Retention and termination**: units whose whole hour was deleted are
//!   range-deleted with the entries; a unit partly deleted keeps its bits
//!   and bounds (only a false positive). A purge deletes a stream's units.
//!
//! # Volume index (`volume` column family)
//! Exact records and line bytes per stream per 10 s bucket
//! ([`VOLUME_BUCKET_NS`], left-open right-closed: a record with
//! `end - 10 s < ts <= end` counts in bucket `end`). Key: stream id u64 BE,
//! unit index i64 BE (sign bit flipped), a unit holding 360 buckets (an
//! hour). Value: the non-empty buckets as (slot u16 BE, records, bytes; zig
//! zag varints). Written as merge operands in the entries' batch; the merge
//! operator sums per bucket. Retention range-deletes the units it deleted
//! entirely and adds a negative operand to the unit it cut through (in the
//! same batch as the range delete of the entries), so counts stay exact.
//! A stream whose range reaches back before the index existed answers
//! `None` (the caller scans).

use std::collections::{BTreeMap, HashMap};

use rocksdb::{MergeOperands, ReadOptions, DB};

use super::keys::{ts_bytes, ts_from_bytes};
use super::StoreError;
use crate::logs::model::{PreparedBatch, StreamInfo};
use crate::logs::query::{
    parser::{CmpOp, FilterValue},
    Query, Stage, VolumeBucket, VOLUME_BUCKET_NS,
};

pub(crate) const CF_SKIP: &str = "skip";
pub(crate) const CF_VOLUME: &str = "volume";

/// Width of the time bucket of an index unit: an hour.
pub const SKIP_BUCKET_NS: i64 = 3_600_000_000_000;
/// Records of part 0 of an hour; each later part doubles, up to
/// [`MAX_PART_RECORDS`].
const FIRST_PART_RECORDS: u64 = 128;
const MAX_PART_RECORDS: u64 = 4096;
/// Bloom bits per record of a part's capacity. With ~2-3 distinct tokens
/// per record beyond the ones every record shares and 3 probes, a full
/// part answers "maybe" for an absent token about 3% of the time.
pub const BITS_PER_RECORD: u64 = 20;
/// Bloom probes per token.
pub const HASHES: u32 = 3;
/// Shorter tokens are not indexed (they are in nearly every chunk).
pub const MIN_TOKEN_LEN: usize = 2;
/// Larger filters are refused as malformed (never allocated from disk).
const MAX_BLOOM_BITS: u32 = 1 << 24;
/// Volume buckets per volume unit: an hour.
const VOLUME_SLOTS: i64 = 360;

const VERSION: u8 = 1;
const DENSE: u8 = 0;
const SPARSE: u8 = 1;
/// A unit a merge found malformed: its hour must be scanned.
const UNKNOWN: u8 = 2;
const HEADER: usize = 2 + 4 + 8 + 8 + 8;

/// Records part `part` of an hour takes before the writer starts the next.
pub fn part_capacity(part: u32) -> u64 {
    (FIRST_PART_RECORDS << part.min(5)).min(MAX_PART_RECORDS)
}

/// Bloom bits of part `part` (a multiple of 64).
pub fn part_bits(part: u32) -> u32 {
    (part_capacity(part) * BITS_PER_RECORD) as u32
}

const fn token_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || b >= 0x80;
        i += 1;
    }
    t
}
static TOKEN_BYTE: [bool; 256] = token_table();

/// Calls `f` with every indexed token of `line`.
pub fn for_each_token(line: &[u8], mut f: impl FnMut(&[u8])) {
    for_each_token_span(line, |s, e| f(&line[s..e]));
}

/// The token bytes of `bytes` (at most 64) as the bits of a word.
#[inline]
fn token_mask(bytes: &[u8]) -> u64 {
    let mut ones = 0u64;
    let mut words = bytes.chunks_exact(8);
    for (k, c) in (&mut words).enumerate() {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        ones |= token_bits(u64::from_le_bytes(w)) << (k * 8);
    }
    let done = bytes.len() - words.remainder().len();
    for (i, b) in words.remainder().iter().enumerate() {
        ones |= u64::from(TOKEN_BYTE[*b as usize]) << (done + i);
    }
    ones
}

/// Eight bytes classified at once (SWAR): bit `i` is set when byte `i` of
/// `x` (little-endian) is a token byte: >= 0x80, an ASCII digit or letter.
#[inline]
fn token_bits(x: u64) -> u64 {
    const H: u64 = 0x8080_8080_8080_8080;
    const L: u64 = 0x0101_0101_0101_0101;
    // Each byte's low 7 bits: sums below stay under 0x100, so no byte
    // carries into the next.
    let t = x & !H;
    let lower = t | (0x20 * L);
    // A byte is in [lo, hi] when t + (0x80 - lo) has its top bit set and
    // t + (0x7f - hi) has not.
    let letter = (lower + (0x80 - u64::from(b'a')) * L) & !(lower + (0x7f - u64::from(b'z')) * L);
    let digit = (t + (0x80 - u64::from(b'0')) * L) & !(t + (0x7f - u64::from(b'9')) * L);
    let top = (x | letter | digit) & H;
    // One bit per byte, gathered into the low byte.
    ((top >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
}

/// [`for_each_token`] with each token as its `[start, end)` in `line`.
///
/// Branch-light: the token bytes of each 64-byte block become the bits of
/// a word ([`token_mask`]); tokens start where a one follows a zero and
/// end where a zero follows a one, found with `trailing_zeros`. (A byte
/// loop mispredicted a branch at every token boundary, dozens per line.)
fn for_each_token_span(line: &[u8], mut f: impl FnMut(usize, usize)) {
    let mut emit = |s: usize, e: usize| {
        if e - s >= MIN_TOKEN_LEN {
            f(s, e);
        }
    };
    // The token still open at the end of the last block, and whether that
    // block's last byte was a token byte.
    let mut open: Option<usize> = None;
    let mut carry = 0u64;
    for (block, bytes) in line.chunks(64).enumerate() {
        let base = block * 64;
        let ones = token_mask(bytes);
        let valid = if bytes.len() == 64 {
            u64::MAX
        } else {
            (1u64 << bytes.len()) - 1
        };
        let after_one = (ones << 1) | carry;
        let mut starts = ones & !after_one;
        let mut ends = !ones & valid & after_one;
        carry = ones >> 63;
        if let Some(s) = open {
            if ends == 0 {
                continue;
            }
            emit(s, base + ends.trailing_zeros() as usize);
            ends &= ends - 1;
            open = None;
        }
        while starts != 0 {
            let s = base + starts.trailing_zeros() as usize;
            starts &= starts - 1;
            if ends == 0 {
                open = Some(s);
                break;
            }
            emit(s, base + ends.trailing_zeros() as usize);
            ends &= ends - 1;
        }
    }
    if let Some(s) = open {
        emit(s, line.len());
    }
}

/// Tokens of `needle` that any line containing it contains whole: those
/// with a separator on both sides inside the needle (the first and the
/// last run may be the end of a longer token of the line).
pub fn needle_tokens(needle: &[u8], out: &mut Vec<u64>) {
    let mut i = 0;
    while i < needle.len() {
        if !TOKEN_BYTE[needle[i] as usize] {
            i += 1;
            continue;
        }
        let s = i;
        while i < needle.len() && TOKEN_BYTE[needle[i] as usize] {
            i += 1;
        }
        if s > 0 && i < needle.len() && i - s >= MIN_TOKEN_LEN {
            out.push(token_hash(&needle[s..i]));
        }
    }
}

/// The token hash (fixed: part of the on-disk format).
pub fn token_hash(t: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (t.len() as u64).wrapping_mul(K) ^ 0x5bd1_e995_1234_5678;
    let mut chunks = t.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(31);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(31);
    }
    // murmur3's finalizer.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The bit positions of a token hash in a filter of `m` bits.
#[inline]
fn probes(h: u64, m: u32) -> impl Iterator<Item = u32> {
    let h1 = h as u32;
    let h2 = ((h >> 32) as u32) | 1;
    (0..HASHES).map(move |i| {
        let x = h1.wrapping_add(i.wrapping_mul(h2));
        ((u64::from(x) * u64::from(m)) >> 32) as u32
    })
}

/// The hour bucket of `ts`.
pub fn bucket_of(ts: i64) -> i64 {
    ts.div_euclid(SKIP_BUCKET_NS)
}

/// `[start, end)` of hour bucket `b` (saturated at the ends of time).
pub fn bucket_range(b: i64) -> (i64, i64) {
    let start = i128::from(b) * i128::from(SKIP_BUCKET_NS);
    let end = start + i128::from(SKIP_BUCKET_NS);
    let clamp = |x: i128| x.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    (clamp(start), clamp(end))
}

/// The `skip` key of a unit.
pub fn unit_key(stream: u64, bucket: i64, part: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..8].copy_from_slice(&stream.to_be_bytes());
    k[8..16].copy_from_slice(&ts_bytes(bucket));
    k[16..].copy_from_slice(&part.to_be_bytes());
    k
}

/// The smallest `skip` key of `stream` at hour `bucket` or later.
pub fn unit_bound(stream: u64, bucket: i64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&stream.to_be_bytes());
    k[8..].copy_from_slice(&ts_bytes(bucket));
    k
}

/// Splits a `skip` key: (stream, bucket, part).
pub fn parse_unit_key(k: &[u8]) -> Option<(u64, i64, u32)> {
    if k.len() != 20 {
        return None;
    }
    let stream = u64::from_be_bytes(k[..8].try_into().ok()?);
    let bucket = ts_from_bytes(k[8..16].try_into().ok()?);
    let part = u32::from_be_bytes(k[16..].try_into().ok()?);
    Some((stream, bucket, part))
}

#[inline]
fn set_probes(words: &mut [u64], m: u32, h: u64) {
    for p in probes(h, m) {
        words[(p / 64) as usize] |= 1 << (p % 64);
    }
}

/// The token hashes of one ingest batch, computed by the caller before
/// the batch goes to the writer (so that tokenizing and hashing run on
/// the ingest workers, in parallel, not on the single writer thread):
/// per group of up to [`GROUP_RECORDS`] consecutive entries of one batch
/// stream and one hour, the hashes of their lines, each listed about
/// once. The writer ORs a group's hashes into every part its new entries
/// went to: when a group straddles a part boundary, both parts get the
/// group's tokens (at most 15 other records' worth, which can only cost a
/// false positive, never a miss).
#[derive(Debug, Default)]
pub struct BatchTokens {
    /// Per entry of the batch, in order: its group.
    pub entry_group: Vec<u32>,
    /// Per group: the token hashes of its lines (repeats mostly dropped).
    pub groups: Vec<Vec<u64>>,
}

/// Records of one token group of [`BatchTokens`]: few enough that a part
/// takes little of a neighbour's tokens, enough that the tokens every
/// line shares are listed once for many lines.
pub const GROUP_RECORDS: usize = 16;

/// Slots of [`BatchTokens::of`]'s cache of short tokens' hashes (a power
/// of two).
const SHORT_SLOTS: usize = 2048;
/// Slots of its table of the hashes a group has listed (a power of two).
const LISTED_SLOTS: usize = 1024;

/// A token of at most 8 bytes as a word (little-endian, zero-padded): it
/// identifies the token, as no token byte is zero.
#[inline]
fn short_word(line: &[u8], s: usize, e: usize) -> u64 {
    let len = e - s;
    match line.get(s..s + 8) {
        Some(w) => {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            let w = u64::from_le_bytes(b);
            if len >= 8 {
                w
            } else {
                w & ((1u64 << (8 * len)) - 1)
            }
        }
        None => {
            let mut b = [0u8; 8];
            b[..len].copy_from_slice(&line[s..e]);
            u64::from_le_bytes(b)
        }
    }
}

impl BatchTokens {
    pub fn of(batch: &PreparedBatch) -> BatchTokens {
        // The group of each entry, then the entries of each group in
        // batch order.
        // Per (batch stream, hour): its records so far and its group.
        let mut index: HashMap<(usize, i64), (usize, u32), foldhash::fast::RandomState> =
            HashMap::default();
        let mut entry_group = Vec::with_capacity(batch.entries.len());
        let mut groups = 0usize;
        for e in &batch.entries {
            let (n, g) = index
                .entry((e.stream, bucket_of(e.ts)))
                .or_insert((0, u32::MAX));
            if n.is_multiple_of(GROUP_RECORDS) {
                *g = groups as u32;
                groups += 1;
            }
            *n += 1;
            entry_group.push(*g);
        }
        let mut start = vec![0usize; groups + 1];
        for g in &entry_group {
            start[*g as usize + 1] += 1;
        }
        for i in 1..start.len() {
            start[i] += start[i - 1];
        }
        let mut fill = start.clone();
        let mut order = vec![0usize; batch.entries.len()];
        for (i, g) in entry_group.iter().enumerate() {
            order[fill[*g as usize]] = i;
            fill[*g as usize] += 1;
        }

        // Most tokens recur from line to line (field names, pipes, parts
        // of timestamps): tokens of up to 8 bytes find their hash in a
        // direct-mapped cache keyed by the token, which also notes the
        // group that listed it last, so a group lists such a token once.
        // Longer tokens are hashed and listed unless their slot in
        // `listed` says the group has them. A slot lost to another token
        // only lists a hash twice (setting bits twice is harmless).
        let mut short = vec![(0u64, 0u64, u32::MAX); SHORT_SLOTS];
        let mut listed = vec![(u32::MAX, 0u64); LISTED_SLOTS];
        let mut out = Vec::with_capacity(groups);
        for g in 0..groups {
            let gid = g as u32;
            let mut list = Vec::new();
            for e in order[start[g]..start[g + 1]]
                .iter()
                .filter_map(|i| batch.entries.get(*i))
            {
                let line = e.value.get(1..).unwrap_or_default();
                for_each_token_span(line, |s, end| {
                    if end - s <= 8 {
                        let w = short_word(line, s, end);
                        let slot = &mut short[(w.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 53)
                            as usize
                            & (SHORT_SLOTS - 1)];
                        if slot.0 != w {
                            *slot = (w, token_hash(&line[s..end]), u32::MAX);
                        }
                        if slot.2 != gid {
                            slot.2 = gid;
                            list.push(slot.1);
                        }
                    } else {
                        let h = token_hash(&line[s..end]);
                        let l = &mut listed[h as usize & (LISTED_SLOTS - 1)];
                        if *l != (gid, h) {
                            *l = (gid, h);
                            list.push(h);
                        }
                    }
                });
            }
            out.push(list);
        }
        BatchTokens {
            entry_group,
            groups: out,
        }
    }
}

/// The bits, count and bounds of one unit's new records in one write
/// batch (the writer's merge operand).
pub struct UnitDelta {
    words: Vec<u64>,
    m: u32,
    records: u64,
    min_ts: i64,
    max_ts: i64,
}

impl UnitDelta {
    pub fn new(part: u32) -> UnitDelta {
        let m = part_bits(part);
        UnitDelta {
            words: vec![0; m.div_ceil(64) as usize],
            m,
            records: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
        }
    }

    /// Adds a record.
    #[cfg(test)]
    pub fn add(&mut self, ts: i64, line: &[u8]) {
        self.note_many(1, ts, ts);
        let (m, words) = (self.m, &mut self.words);
        for_each_token(line, |t| set_probes(words, m, token_hash(t)));
    }

    /// Counts `records` records between `oldest` and `newest` without
    /// their tokens: the writer adds those per group of records
    /// ([`BatchTokens`]).
    pub fn note_many(&mut self, records: u64, oldest: i64, newest: i64) {
        self.records += records;
        self.min_ts = self.min_ts.min(oldest);
        self.max_ts = self.max_ts.max(newest);
    }

    /// Sets the bits of token hashes (from [`BatchTokens`]).
    pub fn add_hashes(&mut self, hashes: &[u64]) {
        let (m, words) = (self.m, &mut self.words);
        for h in hashes {
            set_probes(words, m, *h);
        }
    }

    /// Leaves out the bits `sent` holds (sent in earlier operands of this
    /// part, durable or in this batch) and adds the rest to it: a part's
    /// later operands then carry mostly the rare tokens' bits (sparse, a
    /// fraction of the write-ahead log and memtable bytes).
    pub fn thin(&mut self, sent: &mut Vec<u64>) {
        if sent.len() != self.words.len() {
            *sent = vec![0; self.words.len()];
        }
        for (w, s) in self.words.iter_mut().zip(sent.iter_mut()) {
            let new = *w & !*s;
            *s |= *w;
            *w = new;
        }
    }

    /// The merge operand (sparse when that is smaller).
    pub fn encode(&self) -> Vec<u8> {
        encode_unit(self.m, self.records, self.min_ts, self.max_ts, &self.words)
    }
}

fn encode_unit(m: u32, records: u64, min_ts: i64, max_ts: i64, words: &[u64]) -> Vec<u8> {
    let ones: usize = words.iter().map(|w| w.count_ones() as usize).sum();
    let sparse = 4 + ones * 4 < words.len() * 8;
    let mut v = Vec::with_capacity(
        HEADER
            + if sparse {
                4 + ones * 4
            } else {
                words.len() * 8
            },
    );
    v.push(VERSION);
    v.push(if sparse { SPARSE } else { DENSE });
    v.extend_from_slice(&m.to_be_bytes());
    v.extend_from_slice(&records.to_be_bytes());
    v.extend_from_slice(&min_ts.to_be_bytes());
    v.extend_from_slice(&max_ts.to_be_bytes());
    if sparse {
        v.extend_from_slice(&(ones as u32).to_be_bytes());
        for (i, w) in words.iter().enumerate() {
            let mut w = *w;
            while w != 0 {
                let b = w.trailing_zeros();
                v.extend_from_slice(&((i as u32) * 64 + b).to_be_bytes());
                w &= w - 1;
            }
        }
    } else {
        for w in words {
            v.extend_from_slice(&w.to_le_bytes());
        }
    }
    v
}

fn unknown_unit() -> Vec<u8> {
    vec![VERSION, UNKNOWN]
}

/// A unit value, read in place.
pub enum UnitView<'a> {
    Bloom {
        m: u32,
        records: u64,
        min_ts: i64,
        max_ts: i64,
        body: Body<'a>,
    },
    /// Malformed, or merged from something malformed: scan its hour.
    Unknown,
}

pub enum Body<'a> {
    /// `m` bits as little-endian u64 words.
    Dense(&'a [u8]),
    /// Set bit positions, u32 BE each.
    Sparse(&'a [u8]),
}

/// Reads a unit value; malformed values are [`UnitView::Unknown`].
pub fn parse_unit(v: &[u8]) -> UnitView<'_> {
    parse_unit_inner(v).unwrap_or(UnitView::Unknown)
}

fn parse_unit_inner(v: &[u8]) -> Option<UnitView<'_>> {
    if *v.first()? != VERSION {
        return None;
    }
    let kind = *v.get(1)?;
    if kind == UNKNOWN || v.len() < HEADER {
        return None;
    }
    let m = u32::from_be_bytes(v[2..6].try_into().ok()?);
    if m == 0 || m > MAX_BLOOM_BITS {
        return None;
    }
    let records = u64::from_be_bytes(v[6..14].try_into().ok()?);
    let min_ts = i64::from_be_bytes(v[14..22].try_into().ok()?);
    let max_ts = i64::from_be_bytes(v[22..30].try_into().ok()?);
    let rest = &v[HEADER..];
    let body = match kind {
        DENSE if rest.len() == m.div_ceil(64) as usize * 8 => Body::Dense(rest),
        SPARSE => {
            let n = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let list = rest.get(4..)?;
            if list.len() != n.checked_mul(4)? {
                return None;
            }
            Body::Sparse(list)
        }
        _ => return None,
    };
    Some(UnitView::Bloom {
        m,
        records,
        min_ts,
        max_ts,
        body,
    })
}

impl Body<'_> {
    fn has(&self, bit: u32) -> bool {
        match self {
            Body::Dense(b) => {
                let byte = (bit / 8) as usize;
                b.get(byte).is_some_and(|x| x & (1 << (bit % 8)) != 0)
            }
            Body::Sparse(list) => list
                .chunks_exact(4)
                .any(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) == bit),
        }
    }

    fn or_into(&self, words: &mut [u64]) -> Option<()> {
        match self {
            Body::Dense(b) => {
                if b.len() != words.len() * 8 {
                    return None;
                }
                for (w, c) in words.iter_mut().zip(b.chunks_exact(8)) {
                    *w |= u64::from_le_bytes(c.try_into().ok()?);
                }
            }
            Body::Sparse(list) => {
                for c in list.chunks_exact(4) {
                    let p = u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize;
                    *words.get_mut(p / 64)? |= 1 << (p % 64);
                }
            }
        }
        Some(())
    }
}

/// Whether a unit's bloom may hold every token of `tokens`.
fn may_hold(m: u32, body: &Body<'_>, tokens: &[u64]) -> bool {
    if let Body::Sparse(list) = body {
        // Small lists: a sorted copy is cheaper than a scan per probe.
        let mut bits: Vec<u32> = list
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        bits.sort_unstable();
        return tokens
            .iter()
            .all(|h| probes(*h, m).all(|p| bits.binary_search(&p).is_ok()));
    }
    tokens.iter().all(|h| probes(*h, m).all(|p| body.has(p)))
}

/// The records a unit value counts (for the writer's part restore);
/// `None` when it is malformed.
pub fn unit_records(v: &[u8]) -> Option<u64> {
    match parse_unit(v) {
        UnitView::Bloom { records, .. } => Some(records),
        UnitView::Unknown => None,
    }
}

/// The `skip` merge operator (full and partial: OR is associative).
pub fn merge_units(_key: &[u8], existing: Option<&[u8]>, ops: &MergeOperands) -> Option<Vec<u8>> {
    let mut acc: Option<(u32, Vec<u64>, u64, i64, i64)> = None;
    for v in existing.into_iter().chain(ops.iter()) {
        let UnitView::Bloom {
            m,
            records,
            min_ts,
            max_ts,
            body,
        } = parse_unit(v)
        else {
            return Some(unknown_unit());
        };
        let a =
            acc.get_or_insert_with(|| (m, vec![0; m.div_ceil(64) as usize], 0, i64::MAX, i64::MIN));
        if a.0 != m || body.or_into(&mut a.1).is_none() {
            return Some(unknown_unit());
        }
        a.2 = a.2.saturating_add(records);
        a.3 = a.3.min(min_ts);
        a.4 = a.4.max(max_ts);
    }
    Some(match acc {
        Some((m, words, records, min_ts, max_ts)) => {
            encode_unit(m, records, min_ts, max_ts, &words)
        }
        None => unknown_unit(),
    })
}

// ---- volume ----

/// The volume bucket of `ts` as (unit, slot): the bucket ends at
/// `(unit * 360 + slot) * 10 s`, the first bucket end at or after `ts`.
pub fn volume_slot(ts: i64) -> (i64, u16) {
    let s = ts.div_euclid(VOLUME_BUCKET_NS) + i64::from(ts.rem_euclid(VOLUME_BUCKET_NS) != 0);
    (
        s.div_euclid(VOLUME_SLOTS),
        s.rem_euclid(VOLUME_SLOTS) as u16,
    )
}

/// The `volume` key of a unit.
pub fn volume_key(stream: u64, unit: i64) -> [u8; 16] {
    unit_bound(stream, unit)
}

/// Per slot: (records, bytes), signed so that retention can subtract.
pub type VolumeDelta = BTreeMap<u16, (i64, i64)>;

fn put_varint(v: &mut Vec<u8>, x: i64) {
    let mut z = ((x << 1) ^ (x >> 63)) as u64;
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            v.push(b);
            return;
        }
        v.push(b | 0x80);
    }
}

fn get_varint(v: &[u8], i: &mut usize) -> Option<i64> {
    let mut z = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *v.get(*i)?;
        *i += 1;
        z |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    None
}

/// A volume operand or value.
pub fn encode_volume(d: &VolumeDelta) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + d.len() * 6);
    v.push(VERSION);
    for (slot, (records, bytes)) in d {
        v.extend_from_slice(&slot.to_be_bytes());
        put_varint(&mut v, *records);
        put_varint(&mut v, *bytes);
    }
    v
}

/// Adds a volume value into `into`; `None` when it is malformed.
fn add_volume(v: &[u8], into: &mut VolumeDelta) -> Option<()> {
    if *v.first()? != VERSION {
        return None;
    }
    let mut i = 1;
    while i < v.len() {
        let slot = u16::from_be_bytes([*v.get(i)?, *v.get(i + 1)?]);
        i += 2;
        if i64::from(slot) >= VOLUME_SLOTS {
            return None;
        }
        let records = get_varint(v, &mut i)?;
        let bytes = get_varint(v, &mut i)?;
        let e = into.entry(slot).or_default();
        e.0 = e.0.checked_add(records)?;
        e.1 = e.1.checked_add(bytes)?;
    }
    Some(())
}

/// A volume value no reader trusts (a merge found something malformed).
fn unknown_volume() -> Vec<u8> {
    vec![VERSION, UNKNOWN]
}

/// The `volume` merge operator (full and partial: sums are associative).
pub fn merge_volume(_key: &[u8], existing: Option<&[u8]>, ops: &MergeOperands) -> Option<Vec<u8>> {
    let mut acc = VolumeDelta::new();
    for v in existing.into_iter().chain(ops.iter()) {
        if add_volume(v, &mut acc).is_none() {
            return Some(unknown_volume());
        }
    }
    acc.retain(|_, (r, b)| *r != 0 || *b != 0);
    Some(encode_volume(&acc))
}

/// The volume buckets of `stream` whose end is in `(start, end]`, oldest
/// first, empty ones left out. `None` when a unit is malformed or a
/// bucket's count is negative (the caller scans instead).
pub fn read_volume(
    db: &DB,
    stream: u64,
    start: i64,
    end: i64,
) -> Result<Option<Vec<VolumeBucket>>, StoreError> {
    let cf = super::cf(db, CF_VOLUME)?;
    let first = volume_slot(start.saturating_add(1)).0;
    let last = volume_slot(end).0;
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(volume_key(stream, first).to_vec());
    if let Some(next) = last.checked_add(1) {
        opts.set_iterate_upper_bound(volume_key(stream, next).to_vec());
    } else {
        opts.set_iterate_upper_bound(volume_key(stream.wrapping_add(1), i64::MIN).to_vec());
    }
    let mut it = db.raw_iterator_cf_opt(cf, opts);
    it.seek_to_first();
    let mut out = Vec::new();
    while it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        if k.len() != 16 || k[..8] != stream.to_be_bytes() {
            return Ok(None);
        }
        let unit = ts_from_bytes(k[8..16].try_into().unwrap_or([0; 8]));
        let mut d = VolumeDelta::new();
        if add_volume(v, &mut d).is_none() {
            return Ok(None);
        }
        for (slot, (records, bytes)) in d {
            let s = i128::from(unit) * i128::from(VOLUME_SLOTS) + i128::from(slot);
            let bucket_end = s * i128::from(VOLUME_BUCKET_NS);
            if bucket_end <= i128::from(start) || bucket_end > i128::from(end) {
                continue;
            }
            if records < 0 || bytes < 0 {
                return Ok(None);
            }
            if records == 0 {
                continue;
            }
            out.push(VolumeBucket {
                end: bucket_end as i64,
                records: records as u64,
                bytes: bytes as u64,
            });
        }
        it.next();
    }
    it.status()
        .map_err(|e| StoreError::storage("read volume index", e))?;
    Ok(Some(out))
}

// ---- queries ----

/// What a query lets the index rule out: tokens every matching line
/// contains.
#[derive(Debug, Clone, Default)]
pub struct SkipPlan {
    /// From positive line filters: every line that passes contains them.
    always: Vec<u64>,
    /// From `| json | name = "value"`: every line that passes contains
    /// them, in streams without a label `name` (there the filter reads the
    /// label).
    json: Vec<(String, Vec<u64>)>,
}

impl SkipPlan {
    pub fn new(query: &Query) -> SkipPlan {
        let mut plan = SkipPlan::default();
        let mut json_seen = false;
        for stage in &query.stages {
            match stage {
                Stage::Line(f) if !f.negate => {
                    if f.is_regex() {
                        for lit in regex_literals(&f.text) {
                            needle_tokens(&lit, &mut plan.always);
                        }
                    } else {
                        needle_tokens(f.text.as_bytes(), &mut plan.always);
                    }
                }
                Stage::Line(_) => {}
                Stage::Json => json_seen = true,
                Stage::Label(l) if json_seen && l.op == CmpOp::Eq => {
                    let FilterValue::Str(s) = &l.value else {
                        continue;
                    };
                    // The value must appear verbatim in the line: only for
                    // values JSON never escapes and that are whole tokens
                    // between its delimiters.
                    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                        continue;
                    }
                    let mut toks = Vec::new();
                    for_each_token(s.as_bytes(), |t| toks.push(token_hash(t)));
                    if !toks.is_empty() {
                        plan.json.push((l.name.clone(), toks));
                    }
                }
                Stage::Label(_) => {}
            }
        }
        plan.always.sort_unstable();
        plan.always.dedup();
        plan
    }

    /// The tokens every line of `stream` that passes the query contains.
    pub fn tokens_for(&self, stream: &StreamInfo) -> Vec<u64> {
        let mut t = self.always.clone();
        for (name, toks) in &self.json {
            if !stream.labels.contains_key(name) {
                t.extend_from_slice(toks);
            }
        }
        t.sort_unstable();
        t.dedup();
        t
    }

    /// Whether the plan can skip anything at all.
    pub fn is_empty(&self) -> bool {
        self.always.is_empty() && self.json.is_empty()
    }
}

/// Literal byte strings every match of `pattern` contains (pieces of its
/// top-level concatenation, through groups and repetitions of at least
/// one); empty when unsure.
fn regex_literals(pattern: &str) -> Vec<Vec<u8>> {
    let Ok(hir) = regex_syntax::ParserBuilder::new()
        .nest_limit(crate::pattern::NEST_LIMIT)
        .build()
        .parse(pattern)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    required_literals(&hir, &mut out);
    out
}

fn required_literals(h: &regex_syntax::hir::Hir, out: &mut Vec<Vec<u8>>) {
    use regex_syntax::hir::HirKind;
    match h.kind() {
        HirKind::Literal(l) => out.push(l.0.to_vec()),
        HirKind::Capture(c) => required_literals(&c.sub, out),
        HirKind::Repetition(r) if r.min >= 1 => required_literals(&r.sub, out),
        HirKind::Concat(subs) => {
            for s in subs {
                required_literals(s, out);
            }
        }
        _ => {}
    }
}

/// The time ranges `[a, b)` of `stream` within `[start, end)` that may
/// hold a line with every token of `tokens`: ascending, disjoint. Ranges
/// up to `unindexed_through` are always included (records from before the
/// index); otherwise only the bounds of units whose bloom may hold the
/// tokens (a malformed unit: its whole hour).
pub fn candidate_ranges(
    db: &DB,
    stream: u64,
    unindexed_through: Option<i64>,
    tokens: &[u64],
    start: i64,
    end: i64,
) -> Result<Vec<(i64, i64)>, StoreError> {
    if start >= end {
        return Ok(Vec::new());
    }
    if tokens.is_empty() {
        return Ok(vec![(start, end)]);
    }
    let mut ranges = Vec::new();
    // Bounds of the units ruled out: a gap between two candidate ranges
    // that overlaps none of them holds no record, so the two are joined
    // (one cursor instead of two).
    let mut ruled_out = Vec::new();
    if let Some(through) = unindexed_through {
        if through >= start {
            ranges.push((start, through.saturating_add(1).min(end)));
        }
    }
    let cf = super::cf(db, CF_SKIP)?;
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(unit_bound(stream, bucket_of(start)).to_vec());
    let last = bucket_of(end - 1);
    match last.checked_add(1) {
        Some(next) => opts.set_iterate_upper_bound(unit_bound(stream, next).to_vec()),
        None => opts.set_iterate_upper_bound(unit_bound(stream.wrapping_add(1), i64::MIN).to_vec()),
    }
    let mut it = db.raw_iterator_cf_opt(cf, opts);
    it.seek_to_first();
    while it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        let Some((_, bucket, _part)) = parse_unit_key(k).filter(|(s, _, _)| *s == stream) else {
            // Cannot tell which hour it covers: scan everything.
            return Ok(vec![(start, end)]);
        };
        let (bs, be) = bucket_range(bucket);
        let (range, keep) = match parse_unit(v) {
            UnitView::Bloom {
                m,
                min_ts,
                max_ts,
                body,
                ..
            } => {
                // Bounds outside the hour are malformed: take the hour.
                let r = if min_ts > max_ts || min_ts < bs || max_ts >= be {
                    (bs, be)
                } else {
                    (min_ts, max_ts.saturating_add(1))
                };
                (r, may_hold(m, &body, tokens))
            }
            UnitView::Unknown => ((bs, be), true),
        };
        let (a, b) = (range.0.max(start), range.1.min(end));
        if a < b {
            if keep {
                ranges.push((a, b));
            } else {
                ruled_out.push((a, b));
            }
        }
        it.next();
    }
    it.status()
        .map_err(|e| StoreError::storage("read skip index", e))?;
    ranges.sort_unstable();
    ruled_out.sort_unstable();
    let mut merged: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
    // Over the ruled-out ranges starting before the candidate at hand:
    // the latest end.
    let (mut j, mut out_end) = (0, i64::MIN);
    for (a, b) in ranges {
        while j < ruled_out.len() && ruled_out[j].0 < a {
            out_end = out_end.max(ruled_out[j].1);
            j += 1;
        }
        match merged.last_mut() {
            Some(last) if a <= last.1 || out_end <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(s: &str) -> Vec<String> {
        let mut v = Vec::new();
        for_each_token(s.as_bytes(), |t| {
            v.push(String::from_utf8_lossy(t).into_owned())
        });
        v
    }

    /// The plain definition: maximal runs of token bytes.
    fn tokens_plainly(line: &[u8]) -> Vec<&[u8]> {
        line.split(|b| !TOKEN_BYTE[*b as usize])
            .filter(|t| t.len() >= MIN_TOKEN_LEN)
            .collect()
    }

    #[test]
    fn block_tokenizer_finds_the_maximal_runs_across_64_byte_blocks() {
        let mut rng = 0x1234_5678_u64;
        let alphabet = b"ab9_ -\"\xc3\xa9:{}";
        for len in (0..300).chain([511, 512, 513, 1000]) {
            for _ in 0..20 {
                let line: Vec<u8> = (0..len)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        alphabet[(rng % alphabet.len() as u64) as usize]
                    })
                    .collect();
                let mut got = Vec::new();
                for_each_token(&line, |t| got.push(t.to_vec()));
                let want: Vec<Vec<u8>> = tokens_plainly(&line)
                    .into_iter()
                    .map(<[u8]>::to_vec)
                    .collect();
                assert_eq!(got, want, "line {:?}", String::from_utf8_lossy(&line));
            }
        }
        // Every byte value, classified eight at a time.
        let all: Vec<u8> = (0..=255u8).collect();
        for c in all.chunks(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            let want = c.iter().enumerate().fold(0u64, |m, (i, b)| {
                m | (u64::from(TOKEN_BYTE[*b as usize]) << i)
            });
            assert_eq!(token_bits(u64::from_le_bytes(w)), want, "bytes {c:?}");
        }
        // A token running over whole blocks.
        let long = vec![b'x'; 200];
        let mut got = Vec::new();
        for_each_token(&long, |t| got.push(t.len()));
        assert_eq!(got, vec![200]);
    }

    #[test]
    fn short_words_identify_tokens_wherever_they_sit_in_the_line() {
        let line = b"ab,abcdefgh,abcdefg,x1";
        let mut words = Vec::new();
        for_each_token_span(line, |s, e| {
            if e - s <= 8 {
                words.push((short_word(line, s, e), line[s..e].to_vec()));
            }
        });
        for (w, t) in &words {
            let mut b = [0u8; 8];
            b[..t.len()].copy_from_slice(t);
            assert_eq!(
                *w,
                u64::from_le_bytes(b),
                "{:?}",
                String::from_utf8_lossy(t)
            );
        }
        assert_eq!(words.len(), 4);
    }

    #[test]
    fn tokens_split_on_ascii_separators_and_keep_utf8_whole() {
        assert_eq!(
            tokens(r#"{"a":"read timeout","grüße":12, x}"#),
            vec!["read", "timeout", "grüße", "12"]
        );
    }

    #[test]
    fn only_tokens_bounded_inside_the_needle_are_required() {
        let mut v = Vec::new();
        needle_tokens(b"needle-not-present", &mut v);
        assert_eq!(v, vec![token_hash(b"not")]);
        v.clear();
        needle_tokens(b"timeout", &mut v);
        assert!(v.is_empty());
        v.clear();
        needle_tokens(b" timeout ", &mut v);
        assert_eq!(v, vec![token_hash(b"timeout")]);
    }

    #[test]
    fn regex_literals_are_those_every_match_contains() {
        assert_eq!(
            regex_literals("a b(c d)+x"),
            vec![b"a b".to_vec(), b"c d".to_vec(), b"x".to_vec()]
        );
        assert!(regex_literals("(?i)error x")
            .iter()
            .all(|l| !l.starts_with(b"e")));
        assert!(regex_literals("a|b").is_empty());
        assert!(regex_literals("(x y)?").is_empty());
        assert_eq!(
            regex_literals("foo .* bar"),
            vec![b"foo ".to_vec(), b" bar".to_vec()]
        );
    }

    #[test]
    fn merged_units_or_bits_and_sum_counts_and_a_malformed_operand_makes_them_unknown() {
        let mut a = UnitDelta::new(0);
        a.add(5, b"alpha beta");
        let mut b = UnitDelta::new(0);
        b.add(3, b"gamma");
        let mut words = vec![0u64; part_bits(0).div_ceil(64) as usize];
        for v in [a.encode(), b.encode()] {
            let UnitView::Bloom { body, .. } = parse_unit(&v) else {
                panic!("bloom")
            };
            body.or_into(&mut words).expect("same size");
        }
        let merged = encode_unit(part_bits(0), 2, 3, 5, &words);
        let UnitView::Bloom {
            m,
            records,
            min_ts,
            max_ts,
            body,
        } = parse_unit(&merged)
        else {
            panic!("bloom")
        };
        assert_eq!((records, min_ts, max_ts), (2, 3, 5));
        for t in ["alpha", "beta", "gamma"] {
            assert!(may_hold(m, &body, &[token_hash(t.as_bytes())]));
        }
        assert!(matches!(parse_unit(&[1, 0, 0]), UnitView::Unknown));
        assert!(matches!(parse_unit(&unknown_unit()), UnitView::Unknown));
        let mut bad = a.encode();
        bad.pop();
        if bad[1] == DENSE {
            assert!(matches!(parse_unit(&bad), UnitView::Unknown));
        }
    }

    #[test]
    fn volume_slots_are_left_open_right_closed() {
        let b = VOLUME_BUCKET_NS;
        assert_eq!(volume_slot(b), (0, 1));
        assert_eq!(volume_slot(b + 1), (0, 2));
        assert_eq!(volume_slot(0), (0, 0));
        assert_eq!(volume_slot(-1), (0, 0));
        assert_eq!(volume_slot(360 * b), (1, 0));
        assert_eq!(volume_slot(-b), (-1, 359));
        let mut d = VolumeDelta::new();
        d.insert(3, (2, -700));
        let mut back = VolumeDelta::new();
        add_volume(&encode_volume(&d), &mut back).expect("decode");
        assert_eq!(back, d);
        assert!(add_volume(&[1, 0], &mut back).is_none());
    }
}

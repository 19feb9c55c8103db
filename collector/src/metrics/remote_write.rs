//! Prometheus remote-write 1.0 wire types (`prometheus.WriteRequest`,
//! snappy block-compressed protobuf) and their decoding into a
//! [`Prepared`](super::series::Prepared) request.
//!
//! The prost types (`schemas::prom`, shared with the metrics agent)
//! describe the wire format (tests, benchmarks and other senders encode
//! with them). The ingest path reads a request with
//! [`prepare_raw`] instead: a walk over the protobuf bytes that hands each
//! series' labels to the validator as `&str` slices of the body, without
//! allocating per series or per label (prost's decode allocated two
//! vectors per series and reference-counted every label; the walk roughly
//! halves the receiver's CPU per sample). A test checks that both readings
//! agree.

use bytes::Bytes;

use super::series::{MetricType, SeriesBuilder, SeriesError};

pub use schemas::prom::{Label, MetricMetadata, Sample, TimeSeries, WriteRequest};

/// Decodes a decompressed `WriteRequest` body.
pub fn decode(body: Bytes) -> Result<WriteRequest, prost::DecodeError> {
    <WriteRequest as prost::Message>::decode(body)
}

/// Why a body is not a `WriteRequest`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed protobuf at byte {offset}: {message}")]
pub struct WireError {
    pub offset: usize,
    pub message: &'static str,
}

/// Refusal of a request read by [`prepare_raw`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RawError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Series(#[from] SeriesError),
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    /// Offset of `b` in the whole body, for messages.
    base: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, message: &'static str) -> WireError {
        WireError {
            offset: self.base + self.pos,
            message,
        }
    }
    fn done(&self) -> bool {
        self.pos >= self.b.len()
    }
    fn varint(&mut self) -> Result<u64, WireError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.b.get(self.pos) else {
                return Err(self.err("truncated varint"));
            };
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(self.err("varint overflows 64 bits"));
            }
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }
    fn bytes(&mut self) -> Result<Reader<'a>, WireError> {
        let len = self.varint()?;
        let start = self.pos;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| self.err("length past the end of the message"))?;
        self.pos = end;
        Ok(Reader {
            b: &self.b[start..end],
            pos: 0,
            base: self.base + start,
        })
    }
    fn fixed64(&mut self) -> Result<u64, WireError> {
        let end = self.pos + 8;
        let bytes = self
            .b
            .get(self.pos..end)
            .ok_or_else(|| self.err("truncated fixed64"))?;
        self.pos = end;
        let mut a = [0u8; 8];
        a.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(a))
    }
    /// The next field's number and wire type.
    fn key(&mut self) -> Result<(u64, u8), WireError> {
        let k = self.varint()?;
        if k > u64::from(u32::MAX) {
            return Err(self.err("field key over 32 bits"));
        }
        let (field, wire) = (k >> 3, (k & 7) as u8);
        if field == 0 {
            return Err(self.err("field number 0"));
        }
        Ok((field, wire))
    }
    fn skip(&mut self, wire: u8) -> Result<(), WireError> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.fixed64().map(drop),
            2 => self.bytes().map(drop),
            5 => {
                let end = self.pos + 4;
                if end > self.b.len() {
                    return Err(self.err("truncated fixed32"));
                }
                self.pos = end;
                Ok(())
            }
            _ => Err(self.err("unsupported wire type")),
        }
    }
    fn str(&mut self, what: &'static str) -> Result<&'a str, WireError> {
        let r = self.bytes()?;
        std::str::from_utf8(r.b).map_err(|_| WireError {
            offset: r.base,
            message: what,
        })
    }
}

fn expect_wire(r: &Reader, wire: u8, want: u8) -> Result<(), WireError> {
    if wire == want {
        Ok(())
    } else {
        Err(r.err("wrong wire type for a known field"))
    }
}

/// Reads a decompressed `WriteRequest` body straight into `builder`: the
/// same refusals as [`prepare`] after [`decode`], without the decoded copy.
pub fn prepare_raw(body: &[u8], builder: &mut SeriesBuilder) -> Result<(), RawError> {
    let mut top = Reader {
        b: body,
        pos: 0,
        base: 0,
    };
    let mut labels: Vec<(&str, &str)> = Vec::with_capacity(16);
    let mut samples: Vec<(f64, i64)> = Vec::with_capacity(4);
    let mut index = 0usize;
    while !top.done() {
        let (field, wire) = top.key()?;
        match field {
            1 => {
                expect_wire(&top, wire, 2)?;
                let mut ts = top.bytes()?;
                labels.clear();
                samples.clear();
                let mut histograms = 0u64;
                while !ts.done() {
                    let (f, w) = ts.key()?;
                    match f {
                        1 => {
                            expect_wire(&ts, w, 2)?;
                            let mut l = ts.bytes()?;
                            let (mut name, mut value) = ("", "");
                            while !l.done() {
                                let (lf, lw) = l.key()?;
                                match lf {
                                    1 => {
                                        expect_wire(&l, lw, 2)?;
                                        name = l.str("label name is not UTF-8")?;
                                    }
                                    2 => {
                                        expect_wire(&l, lw, 2)?;
                                        value = l.str("label value is not UTF-8")?;
                                    }
                                    _ => l.skip(lw)?,
                                }
                            }
                            labels.push((name, value));
                        }
                        2 => {
                            expect_wire(&ts, w, 2)?;
                            let mut s = ts.bytes()?;
                            let (mut value, mut t) = (0.0, 0i64);
                            while !s.done() {
                                let (sf, sw) = s.key()?;
                                match sf {
                                    1 => {
                                        expect_wire(&s, sw, 1)?;
                                        value = f64::from_bits(s.fixed64()?);
                                    }
                                    2 => {
                                        expect_wire(&s, sw, 0)?;
                                        t = s.varint()? as i64;
                                    }
                                    _ => s.skip(sw)?,
                                }
                            }
                            samples.push((value, t));
                        }
                        4 => {
                            expect_wire(&ts, w, 2)?;
                            ts.bytes()?;
                            histograms += 1;
                        }
                        _ => ts.skip(w)?,
                    }
                }
                builder.series(index, &labels, samples.iter().copied())?;
                if histograms > 0 {
                    let i = index;
                    builder.refuse_n("native_histogram", histograms, || {
                        format!("series {i}: native histograms are not supported")
                    });
                }
                index += 1;
            }
            3 => {
                expect_wire(&top, wire, 2)?;
                let m = top.bytes()?;
                let meta = <MetricMetadata as prost::Message>::decode(m.b)
                    .map_err(|_| m.err("malformed metadata"))?;
                builder.metric_type(
                    &meta.metric_family_name,
                    MetricType::from_remote_write(meta.r#type),
                );
            }
            _ => top.skip(wire)?,
        }
    }
    Ok(())
}

/// Validates every series of `req` into `builder`. A structural error
/// (labels unsorted, duplicated, invalid, no metric name) refuses the
/// whole request; bad values are refused one by one inside the builder.
pub fn prepare(req: &WriteRequest, builder: &mut SeriesBuilder) -> Result<(), SeriesError> {
    let mut labels: Vec<(&str, &str)> = Vec::with_capacity(16);
    for (index, ts) in req.timeseries.iter().enumerate() {
        labels.clear();
        for l in &ts.labels {
            labels.push((l.name.as_str(), l.value.as_str()));
        }
        builder.series(
            index,
            &labels,
            ts.samples.iter().map(|s| (s.value, s.timestamp)),
        )?;
        if !ts.histograms.is_empty() {
            builder.refuse_n("native_histogram", ts.histograms.len() as u64, || {
                format!("series {index}: native histograms are not supported")
            });
        }
    }
    for m in &req.metadata {
        builder.metric_type(
            &m.metric_family_name,
            MetricType::from_remote_write(m.r#type),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::metrics::series::Prepared;

    fn both(body: &[u8]) -> (Result<Prepared, String>, Result<Prepared, String>) {
        let mut a = SeriesBuilder::new(Some("t"), 1_000_000, 1_000);
        let ra = match decode(Bytes::copy_from_slice(body)) {
            Ok(req) => prepare(&req, &mut a)
                .map(|_| a.prepared)
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("decode: {e}")),
        };
        let mut b = SeriesBuilder::new(Some("t"), 1_000_000, 1_000);
        let rb = prepare_raw(body, &mut b)
            .map(|_| b.prepared)
            .map_err(|e| match e {
                RawError::Wire(w) => format!("decode: {w}"),
                RawError::Series(s) => s.to_string(),
            });
        (ra, rb)
    }

    fn same(a: &Prepared, b: &Prepared) -> bool {
        a.tenants == b.tenants
            && a.arena == b.arena
            && a.samples.len() == b.samples.len()
            && a.samples.iter().zip(&b.samples).all(|(x, y)| {
                x.key == y.key
                    && x.value.to_bits() == y.value.to_bits()
                    && x.timestamp_ms == y.timestamp_ms
            })
            && a.types == b.types
            && a.refused.total == b.refused.total
    }

    #[test]
    fn the_raw_walk_reads_what_prost_reads() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let names = ["__name__", "a", "b", "instance", "job", "zz", "Upper"];
        for _ in 0..2000 {
            let series = rng.random_range(0..5);
            let req = WriteRequest {
                timeseries: (0..series)
                    .map(|i| {
                        let mut ls: Vec<Label> = Vec::new();
                        for n in names {
                            if rng.random_range(0..3) > 0 {
                                ls.push(Label::new(n, &format!("v{}", rng.random_range(0..3))));
                            }
                        }
                        if rng.random_range(0..10) > 0 {
                            ls.sort_by(|a, b| a.name.cmp(&b.name));
                        }
                        if ls.iter().all(|l| l.name != "__name__") && rng.random_range(0..4) > 0 {
                            ls.insert(0, Label::new("__name__", &format!("m{i}")));
                            ls.sort_by(|a, b| a.name.cmp(&b.name));
                        }
                        TimeSeries {
                            labels: ls,
                            samples: (0..rng.random_range(0..3))
                                .map(|_| Sample {
                                    value: [1.5, f64::NAN, f64::INFINITY, -0.0]
                                        [rng.random_range(0..4)],
                                    timestamp: rng.random_range(0..2_000_000),
                                })
                                .collect(),
                            histograms: vec![],
                        }
                    })
                    .collect(),
                metadata: vec![MetricMetadata {
                    r#type: 1,
                    metric_family_name: "m0".into(),
                    ..Default::default()
                }],
            };
            let mut body = req.encode_to_vec();
            // Sometimes damage it.
            if rng.random_range(0..4) == 0 && !body.is_empty() {
                let i = rng.random_range(0..body.len());
                body[i] = rng.random();
                if rng.random_range(0..2) == 0 {
                    body.truncate(i);
                }
            }
            match both(&body) {
                (Ok(a), Ok(b)) => assert!(same(&a, &b), "{body:?}"),
                (Err(a), Err(b)) => {
                    // Both refuse; the same validation message when both decoded.
                    if !a.starts_with("decode") && !b.starts_with("decode") {
                        assert_eq!(a, b);
                    }
                }
                (a, b) => {
                    // prost accepts some damage the walk also accepts, and vice
                    // versa only for fields neither reads; anything else is a bug.
                    panic!(
                        "disagree on {body:?}: prost {:?} / walk {:?}",
                        a.map(|_| ()),
                        b.map(|_| ())
                    );
                }
            }
        }
    }
}

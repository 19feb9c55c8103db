//! The encoding of an exported subscription state (`snapshot.rs`): `SNST`,
//! the format version (u16 BE, [`FORMAT`]), then a zstd frame of JSON
//! `{"subscription": "...", "entries": [{"f": "r", "k": "...", "v": "..."},
//! ...]}`: `f` the family (`store.rs`), `k` the key after
//! `<family>\0<subscription>\0` and `v` the value, each as text when it is
//! UTF-8, else as hex (`kx`, `vx`).

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::error::NotifierError;

/// The blob's magic.
const MAGIC: &[u8; 4] = b"SNST";
/// The blob's format version.
pub const FORMAT: u16 = 1;
/// The largest decompressed blob read.
const MAX_DECOMPRESSED: u64 = 1 << 30;
/// The families an export carries besides `n`.
pub(crate) const FAMILIES: [u8; 9] = [b'r', b'v', b's', b'a', b'p', b'o', b'w', b'x', b'g'];

/// One persisted key/value of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `b'r'`, `b'v'`, ... (see `store.rs`).
    pub family: u8,
    /// The key after `<family>\0<subscription>\0`.
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A decoded blob (tests and tools: [`decode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub subscription: String,
    pub entries: Vec<Entry>,
}

#[derive(Serialize)]
struct WireOut<'a> {
    subscription: &'a str,
    entries: Vec<EntryOut<'a>>,
}

#[derive(Serialize)]
struct EntryOut<'a> {
    f: char,
    #[serde(skip_serializing_if = "Option::is_none")]
    k: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kx: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    v: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vx: Option<String>,
}

#[derive(Deserialize)]
struct WireIn {
    subscription: String,
    entries: Vec<EntryIn>,
}

#[derive(Deserialize)]
struct EntryIn {
    f: char,
    k: Option<String>,
    kx: Option<String>,
    v: Option<String>,
    vx: Option<String>,
}

/// `b` as text when it is UTF-8, else as hex.
fn text_or_hex(b: &[u8]) -> (Option<&str>, Option<String>) {
    match std::str::from_utf8(b) {
        Ok(s) => (Some(s), None),
        Err(_) => (None, Some(hex::encode(b))),
    }
}

pub(crate) fn invalid(message: String) -> NotifierError {
    NotifierError::invalid("blob", message)
}

/// Encodes `s` as a blob.
pub fn encode(s: &Snapshot) -> Result<Vec<u8>, NotifierError> {
    let entries = s
        .entries
        .iter()
        .map(|e| {
            let (k, kx) = text_or_hex(&e.key);
            let (v, vx) = text_or_hex(&e.value);
            EntryOut {
                f: char::from(e.family),
                k,
                kx,
                v,
                vx,
            }
        })
        .collect();
    let wire = WireOut {
        subscription: &s.subscription,
        entries,
    };
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&FORMAT.to_be_bytes());
    let fail = |e: std::io::Error| NotifierError::storage(format!("state export: compress: {e}"));
    let mut z = zstd::stream::Encoder::new(out, 3).map_err(fail)?;
    serde_json::to_writer(&mut z, &wire)
        .map_err(|e| NotifierError::storage(format!("state export: encode: {e}")))?;
    z.finish().map_err(fail)
}

/// Decodes a blob; the error names what is wrong with it.
pub fn decode(blob: &[u8]) -> Result<Snapshot, NotifierError> {
    let rest = blob
        .strip_prefix(MAGIC)
        .ok_or_else(|| invalid("not a notifier state export: the magic SNST is missing".into()))?;
    let (version, body) = match rest {
        [a, b, body @ ..] => (u16::from_be_bytes([*a, *b]), body),
        _ => {
            return Err(invalid(
                "notifier state export truncated in its header".into(),
            ))
        }
    };
    if version != FORMAT {
        return Err(invalid(format!(
            "notifier state export of format version {version}; this notifier reads version {FORMAT}"
        )));
    }
    let mut json = Vec::new();
    zstd::stream::read::Decoder::new(body)
        .and_then(|d| d.take(MAX_DECOMPRESSED + 1).read_to_end(&mut json))
        .map_err(|e| invalid(format!("notifier state export: bad compression: {e}")))?;
    if json.len() as u64 > MAX_DECOMPRESSED {
        return Err(invalid(format!(
            "notifier state export larger than {MAX_DECOMPRESSED} bytes decompressed"
        )));
    }
    let wire: WireIn = serde_json::from_slice(&json)
        .map_err(|e| invalid(format!("notifier state export: bad JSON: {e}")))?;
    let mut entries = Vec::with_capacity(wire.entries.len());
    for (i, e) in wire.entries.into_iter().enumerate() {
        let at = |what: &str| invalid(format!("notifier state export: entry {i}: {what}"));
        let family = u8::try_from(e.f)
            .ok()
            .filter(|f| FAMILIES.contains(f) || *f == b'n')
            .ok_or_else(|| {
                at(&format!(
                    "{:?} is not a family of a subscription's state",
                    e.f
                ))
            })?;
        let bytes = |text: Option<String>, hex_: Option<String>, what: &str| match (text, hex_) {
            (Some(t), None) => Ok(t.into_bytes()),
            (None, Some(h)) => hex::decode(h).map_err(|e| at(&format!("{what}: bad hex: {e}"))),
            _ => Err(at(&format!("needs exactly one {what} (text or hex)"))),
        };
        entries.push(Entry {
            family,
            key: bytes(e.k, e.kx, "key")?,
            value: bytes(e.v, e.vx, "value")?,
        });
    }
    Ok(Snapshot {
        subscription: wire.subscription,
        entries,
    })
}

//! What the owner of a subscription keeps in ZooKeeper
//! (`/state/notifier/<subscription>`): the notifier's exported state of
//! the subscription and the per-writer feed positions it reflects.
//!
//! Encoding: `SNZ1`, a u32 BE header length, the header (JSON
//! `{"positions": {"<writer>": [commit, index]}, "member": "...", "at": ns}`),
//! then the notifier's export (`notifier::Exported::blob`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::logs::clickhouse::feed::WriterPos;

const MAGIC: &[u8; 4] = b"SNZ1";

/// The ZooKeeper state key of `subscription`'s notifier state.
/// Where other collectors queue the source conflicts of `subscription`
/// for its owner.
pub fn conflicts_key(subscription: &str) -> String {
    format!(
        "conflicts/{}",
        coordination::names::encode_subscription(subscription)
    )
}

/// Where other collectors ask the owner of `subscription` to purge its
/// notifier state (the subscription was terminated there).
pub fn purges_key(subscription: &str) -> String {
    format!(
        "purges/{}",
        coordination::names::encode_subscription(subscription)
    )
}

pub fn key(subscription: &str) -> String {
    format!(
        "notifier/{}",
        coordination::names::encode_subscription(subscription)
    )
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    /// Every feed row up to these positions is reflected in the state.
    pub positions: BTreeMap<String, WriterPos>,
    /// The member that wrote it.
    pub member: String,
    /// When (Unix ns).
    pub at: i64,
}

pub fn encode(header: &Header, blob: &[u8]) -> Result<Vec<u8>, String> {
    let h = serde_json::to_vec(header).map_err(|e| format!("notifier state header: {e}"))?;
    let mut out = Vec::with_capacity(8 + h.len() + blob.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(blob);
    Ok(out)
}

/// The header and the notifier's part, or what is wrong with `data`.
pub fn decode(data: &[u8]) -> Result<(Header, &[u8]), String> {
    let rest = data
        .strip_prefix(MAGIC)
        .ok_or("not a notifier state (magic SNZ1 missing)")?;
    let len = rest
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or("notifier state truncated in its header length")?;
    let h = rest
        .get(4..4 + len)
        .ok_or("notifier state truncated in its header")?;
    let header: Header =
        serde_json::from_slice(h).map_err(|e| format!("notifier state header: {e}"))?;
    Ok((header, &rest[4 + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let mut h = Header {
            member: "c1".into(),
            at: 7,
            ..Header::default()
        };
        h.positions.insert("c2".into(), (9, 3));
        let data = encode(&h, b"blob").expect("encode");
        let (back, blob) = decode(&data).expect("decode");
        assert_eq!(back, h);
        assert_eq!(blob, b"blob");
        assert!(decode(b"XXXX").unwrap_err().contains("magic"));
        assert!(decode(&data[..7]).is_err());
        assert!(decode(&data[..10]).unwrap_err().contains("truncated"));
        assert_eq!(
            key("a/b"),
            format!(
                "notifier/{}",
                coordination::names::encode_subscription("a/b")
            )
        );
    }
}

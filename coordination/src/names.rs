//! Names that become znode names: member ids, subscriptions and state keys.
//!
//! - A member id is `[A-Za-z0-9._-]{1,128}` not starting with `.`, used as
//!   is (`/members/<id>`).
//! - A subscription is any non-empty UTF-8 string of at most
//!   [`MAX_SUBSCRIPTION_BYTES`] without control characters; it is stored
//!   percent-encoded (bytes outside `[A-Za-z0-9_-]`, and `.` only when
//!   leading, become `%XX`) so that `/`, `.`, `..` and other characters
//!   ZooKeeper refuses in a path can never escape `/owners` or `/epochs`.
//!   The encoding is reversible and stable: changing it would orphan the
//!   epochs of a running deployment.
//! - A state key is `/`-separated segments of `[A-Za-z0-9._-]`, none `.`
//!   or `..`, at most [`MAX_STATE_KEY_SEGMENTS`] segments and
//!   [`MAX_STATE_KEY_BYTES`] bytes; it lives under `/state/`.

/// Longest member id.
pub const MAX_MEMBER_ID_BYTES: usize = 128;
/// Longest subscription name (before encoding).
pub const MAX_SUBSCRIPTION_BYTES: usize = 256;
/// Longest state key.
pub const MAX_STATE_KEY_BYTES: usize = 512;
/// Most segments in a state key.
pub const MAX_STATE_KEY_SEGMENTS: usize = 8;

fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// Checks a member id; answers the reason when it is refused.
pub fn check_member_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("empty");
    }
    if id.len() > MAX_MEMBER_ID_BYTES {
        return Err("longer than 128 bytes");
    }
    if id.starts_with('.') {
        return Err("must not start with `.`");
    }
    if !id.chars().all(plain) {
        return Err("only letters, digits, `.`, `-` and `_` are allowed");
    }
    Ok(())
}

/// Checks a subscription name; answers the reason when it is refused.
pub fn check_subscription(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_SUBSCRIPTION_BYTES {
        return Err("longer than 256 bytes");
    }
    if name.chars().any(char::is_control) {
        return Err("control characters are not allowed");
    }
    Ok(())
}

/// The znode name of a (checked) subscription.
pub fn encode_subscription(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let c = b as char;
        if b.is_ascii_alphanumeric() || c == '-' || c == '_' || (c == '.' && i > 0) {
            out.push(c);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The subscription of a znode name, or `None` when the name is not one
/// that [`encode_subscription`] makes (a foreign node is then ignored).
pub fn decode_subscription(node: &str) -> Option<String> {
    let bytes = node.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = node.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).ok()?;
    (check_subscription(&name).is_ok() && encode_subscription(&name) == node).then_some(name)
}

/// Checks a state key; answers the reason when it is refused.
pub fn check_state_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("empty");
    }
    if key.len() > MAX_STATE_KEY_BYTES {
        return Err("longer than 512 bytes");
    }
    let mut n = 0;
    for seg in key.split('/') {
        n += 1;
        if n > MAX_STATE_KEY_SEGMENTS {
            return Err("more than 8 segments");
        }
        if seg.is_empty() {
            return Err("empty segment (leading, trailing or double `/`)");
        }
        if seg == "." || seg == ".." {
            return Err("`.` and `..` segments are not allowed");
        }
        if !seg.chars().all(plain) {
            return Err("segments may hold only letters, digits, `.`, `-` and `_`");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids() {
        assert!(check_member_id("collector-1.eu_west").is_ok());
        for bad in ["", ".x", "a/b", "a b", "ü", &"x".repeat(129)] {
            assert!(check_member_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subscriptions_encode_reversibly_and_safely() {
        for name in [
            "acme",
            "acme-prod_1",
            ".",
            "..",
            "a/b",
            "../../zookeeper",
            "100%",
            "a.b",
            "ünïcødé",
            " spaced ",
        ] {
            let enc = encode_subscription(name);
            assert!(!enc.contains('/'), "{enc}");
            assert!(!enc.starts_with('.'), "{enc}");
            assert!(
                enc.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.%".contains(c)),
                "{enc}"
            );
            assert_eq!(decode_subscription(&enc).as_deref(), Some(name), "{enc}");
        }
        assert_eq!(encode_subscription("acme"), "acme");
        assert_eq!(encode_subscription("a/b"), "a%2Fb");
        assert_eq!(encode_subscription(".."), "%2E.");
        // Names that the encoder never makes are not subscriptions.
        for foreign in ["%", "%G1", "%2", "a%2fb", ".x", "%00"] {
            assert_eq!(decode_subscription(foreign), None, "{foreign}");
        }
        assert!(check_subscription("").is_err());
        assert!(check_subscription("a\nb").is_err());
        assert!(check_subscription(&"x".repeat(257)).is_err());
    }

    #[test]
    fn state_keys() {
        assert!(check_state_key("alerts/acme").is_ok());
        assert!(check_state_key("watermarks/acme/node-1").is_ok());
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/../b",
            ".",
            "a b",
            "a/%2F",
            "1/2/3/4/5/6/7/8/9",
        ] {
            assert!(check_state_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_state_key(&"x".repeat(513)).is_err());
    }
}

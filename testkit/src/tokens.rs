//! The collector's tokens file for tests: one admin token, and per
//! subscription `S` a shipper token `ship-S` and an operator token `op-S`
//! (development entries, plain text).

use std::path::{Path, PathBuf};

/// The admin token (every subscription).
pub const ADMIN: &str = "admin-token";

/// The shipper token of `subscription`.
pub fn shipper(subscription: &str) -> String {
    format!("ship-{subscription}")
}

/// The operator token of `subscription`.
pub fn operator(subscription: &str) -> String {
    format!("op-{subscription}")
}

/// The TOML of the admin token and a shipper and an operator token for
/// each of `subscriptions`.
pub fn toml(subscriptions: &[&str]) -> String {
    let mut out = entry(ADMIN, "*", "admin");
    for s in subscriptions {
        out.push_str(&entry(&shipper(s), s, "shipper"));
        out.push_str(&entry(&operator(s), s, "operator"));
    }
    out
}

/// Writes [`toml`] to `path` with mode 0600 (the collector refuses a
/// tokens file others may read) and returns the path.
pub fn write(path: &Path, subscriptions: &[&str]) -> PathBuf {
    std::fs::write(path, toml(subscriptions))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    path.to_path_buf()
}

fn entry(token: &str, subscription: &str, role: &str) -> String {
    format!(
        "[[tokens]]\ntoken = \"{token}\"\nsubscription = \"{subscription}\"\nrole = \"{role}\"\n\n"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_subscription_gets_a_shipper_and_an_operator_token() {
        let t = super::toml(&["a", "b"]);
        assert_eq!(t.matches("[[tokens]]").count(), 5);
        assert!(t.contains("token = \"ship-b\"\nsubscription = \"b\"\nrole = \"shipper\""));
        assert!(t.contains("token = \"admin-token\"\nsubscription = \"*\"\nrole = \"admin\""));
    }
}

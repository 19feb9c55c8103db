//! The redaction rules file (TOML or JSON) and its safe defaults.

use serde::{Deserialize, Serialize};

/// How a redacted value is replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Replacement {
    /// The literal `[REDACTED]`.
    #[default]
    Mask,
    /// `[REDACTED:<16 hex digits of HMAC-SHA256(hash_key, value)>]`: equal
    /// values stay correlatable across records without being readable.
    Hash,
}

/// A user-supplied value pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserPattern {
    /// Name used in `shipper_redactions_total{rule=...}` and errors.
    pub name: String,
    /// A regex (Rust `regex` syntax); every match is replaced.
    pub regex: String,
}

/// Redaction settings. Every field has a safe default, so an empty file (or
/// no file) redacts everything this project knows to be sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactConfig {
    /// Case-insensitive regexes; a map key matching one has its whole value
    /// masked, at any depth. With the `key_value` built-in they also find
    /// `key=value` pairs in free text, where they are matched inside a key
    /// word (unanchored: `^`/`$` would never match there).
    pub key_patterns: Vec<String>,
    /// Fields removed wherever they appear (never shipped, not even masked).
    pub remove_fields: Vec<String>,
    /// Built-in value patterns to apply, by name (see [`BUILTIN_PATTERNS`]):
    /// `key_value` (the key patterns applied to `key=value`, `key: value`,
    /// `"key": "value"` and query strings in free text), `bearer_token`,
    /// `auth_header`, `api_key_header`, `basic_auth`, `jwt`,
    /// `url_credentials`, `pem_private_key`, `aws_access_key`,
    /// `github_token`, `slack_token`, `stripe_key`, `google_api_key`,
    /// `card_number`. Default: all of them.
    pub builtin_patterns: Vec<String>,
    /// Extra value patterns.
    pub patterns: Vec<UserPattern>,
    pub replacement: Replacement,
    /// Key for [`Replacement::Hash`]; required with it. Keep it secret: it is
    /// what stops a reader from hashing guesses.
    pub hash_key: Option<String>,
    /// Drop the `entities` of `embedded` sources in config snapshots.
    pub strip_embedded_entities: bool,
}

/// Every built-in value pattern, in the order they are applied. Order
/// matters only for what is left readable: the header and key=value rules
/// come first so that they keep the key or scheme and mask the value.
pub const BUILTIN_PATTERNS: [&str; 14] = [
    "pem_private_key",
    "bearer_token",
    "auth_header",
    "api_key_header",
    "key_value",
    "basic_auth",
    "jwt",
    "url_credentials",
    "aws_access_key",
    "github_token",
    "slack_token",
    "stripe_key",
    "google_api_key",
    "card_number",
];

impl Default for RedactConfig {
    fn default() -> Self {
        RedactConfig {
            key_patterns: [
                "password",
                "passwd",
                "secret",
                "token",
                "api[_-]?key",
                "authorization",
                "private[_-]?key",
            ]
            .map(String::from)
            .to_vec(),
            remove_fields: ["exception_entity", "entity", "resolved_entity"]
                .map(String::from)
                .to_vec(),
            builtin_patterns: BUILTIN_PATTERNS.map(String::from).to_vec(),
            patterns: Vec::new(),
            replacement: Replacement::Mask,
            hash_key: None,
            strip_embedded_entities: true,
        }
    }
}

impl RedactConfig {
    /// Reads a rules file: `.json` as JSON, anything else as TOML.
    pub fn from_file(path: &std::path::Path) -> Result<Self, super::RedactError> {
        let text = std::fs::read_to_string(path).map_err(|e| super::RedactError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        };
        parsed.map_err(|message| super::RedactError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }
}

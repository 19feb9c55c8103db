//! Built-in value patterns: things that are secrets wherever they appear.
//!
//! A pattern with named groups whose names start with `secret` replaces
//! only those groups (the key, scheme or host around them stays readable);
//! a pattern without one replaces its whole match. Some patterns are
//! confirmed by a check before they count ([`luhn_valid`] for card numbers,
//! [`basic_credentials`] for `Basic` credentials), so that ordinary text
//! that merely looks alike survives.

use base64::Engine;

/// (name, regex) of every fixed built-in pattern. `key_value` is not here:
/// it is built from the configured key patterns (see [`key_value`]).
pub fn builtin(name: &str) -> Option<&'static str> {
    Some(match name {
        // RFC 6750 b64token after "Bearer".
        "bearer_token" => r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]+=*",
        // header.payload.signature, each base64url; headers start with {"  -> eyJ.
        "jwt" => r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
        // scheme://user:password@host -- the password. It may contain `@`
        // (and `:`): the host starts after the LAST `@` before the path or
        // the end of the word, which the greedy match finds. The user part
        // may contain `@` too (`smtp://me@example.com:pw@mail`).
        "url_credentials" => r"(?i)\b[a-z][a-z0-9+.\-]*://[^\s/?#:]*:(?P<secret>[^\s/]*)@",
        "pem_private_key" => {
            r"-----BEGIN[A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END[A-Z ]*PRIVATE KEY-----|\z)"
        }
        "aws_access_key" => r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b",
        "card_number" => r"\b\d(?:[ -]?\d){12,18}\b",
        // `Authorization: <scheme> <credentials>` (and Proxy-Authorization),
        // as a header, in JSON or in key=value text; the scheme stays.
        "auth_header" => {
            r#"(?i)\b(?:proxy-)?authorization["']?[ \t]*(?:=>|:=|[:=])[ \t]*["']?(?:(?:basic|bearer|token|digest|negotiate|ntlm|apikey|api-key|key|hmac-sha256|aws4-hmac-sha256|sso-key)[ \t]+)?(?P<secret>[^\s"',;]+)"#
        }
        // API-key style headers: X-Api-Key, Api-Key, X-Auth-Token,
        // X-Access-Token, Private-Token (GitLab), X-Api-Token.
        "api_key_header" => {
            r#"(?i)\b(?:x-)?(?:api[-_]?key|api[-_]?token|auth[-_]?token|access[-_]?token|private[-_]?token)["']?[ \t]*(?:=>|:=|[:=])[ \t]*["']?(?P<secret>[^\s"',;&]+)"#
        }
        // `Basic <base64 of user:password>` anywhere (confirmed by decoding).
        "basic_auth" => r"(?i)\bbasic[ \t]+(?P<secret>[A-Za-z0-9+/]{6,}={0,2})",
        // GitHub personal, OAuth, user-to-server, server-to-server and
        // refresh tokens, and fine-grained personal access tokens.
        "github_token" => r"\b(?:gh[pousr]_[A-Za-z0-9]{20,255}|github_pat_[A-Za-z0-9_]{20,255})",
        // Slack bot, user, app, refresh and legacy tokens.
        "slack_token" => r"\bxox[bpars]-[A-Za-z0-9-]{10,}",
        // Stripe secret and restricted keys (publishable `pk_` keys are public).
        "stripe_key" => r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,}",
        // Google API keys.
        "google_api_key" => r"\bAIza[0-9A-Za-z_\-]{35}",
        _ => return None,
    })
}

/// Extra check a match must pass before it is replaced, by rule name.
pub fn validator(name: &str) -> Option<fn(&str) -> bool> {
    match name {
        "card_number" => Some(luhn_valid),
        "basic_auth" => Some(basic_credentials),
        _ => None,
    }
}

/// The regex of the `key_value` rule: a word containing one of the key
/// patterns, a separator (`=`, `:`, `=>`, `:=`, optionally after a closing
/// quote) and its value, in free text: `password=hunter2`,
/// `Password: hunter2`, `"password": "hunter2"`, `?api_key=...&`,
/// `aws_secret_access_key = ...`. Only the value is replaced; a quoted value
/// keeps its quotes. The value ends at whitespace, a quote or `&`.
pub fn key_value(key_patterns: &[String]) -> String {
    let keys = key_patterns
        .iter()
        .map(|p| format!("(?:{p})"))
        .collect::<Vec<_>>()
        .join("|");
    format!(
        r#"(?i)[A-Za-z0-9_.\-]*(?:{keys})[A-Za-z0-9_.\-]*["']?[ \t]*(?:=>|:=|[:=])[ \t]*(?:(?:basic|bearer|token|digest|negotiate|ntlm|apikey|api-key)[ \t]+)?(?:"(?P<secret_dq>(?:[^"\\]|\\.)*)"|'(?P<secret_sq>(?:[^'\\]|\\.)*)'|(?P<secret>[^\s"'&]+))"#
    )
}

/// Whether `candidate` is base64 of `user:password` (what HTTP Basic
/// credentials are), so that "basic example" in prose survives.
pub fn basic_credentials(candidate: &str) -> bool {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let Ok(bytes) = ENGINE.decode(candidate) else {
        return false;
    };
    bytes.contains(&b':') && bytes.iter().all(|b| !b.is_ascii_control())
}

/// The Luhn checksum every payment card number satisfies.
pub fn luhn_valid(candidate: &str) -> bool {
    let digits: Vec<u32> = candidate.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_real_test_cards_and_rejects_neighbours() {
        assert!(luhn_valid("4111 1111 1111 1111"));
        assert!(luhn_valid("5500-0000-0000-0004"));
        assert!(luhn_valid("378282246310005"));
        assert!(!luhn_valid("4111 1111 1111 1112"));
        assert!(!luhn_valid("1234"));
    }

    #[test]
    fn basic_credentials_are_recognised_by_decoding() {
        // "aladdin:opensesame"
        assert!(basic_credentials("YWxhZGRpbjpvcGVuc2VzYW1l"));
        assert!(basic_credentials("dXNlcjpwdw=="));
        assert!(!basic_credentials("example"));
        assert!(!basic_credentials("information"));
    }

    #[test]
    fn every_builtin_compiles() {
        for name in super::super::config::BUILTIN_PATTERNS {
            if name == "key_value" {
                regex::Regex::new(&key_value(&["password".into(), "api[_-]?key".into()])).unwrap();
            } else {
                regex::Regex::new(builtin(name).unwrap()).unwrap();
            }
        }
    }
}

//! Built-in value patterns: things that are secrets wherever they appear.

/// (name, regex) of every built-in pattern. Card numbers are matched broadly
/// here and confirmed with [`luhn_valid`] before they are replaced.
pub fn builtin(name: &str) -> Option<&'static str> {
    Some(match name {
        // RFC 6750 b64token after "Bearer".
        "bearer_token" => r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]+=*",
        // header.payload.signature, each base64url; headers start with {"  -> eyJ.
        "jwt" => r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
        // scheme://user:password@ -- the password part (and the user).
        "url_credentials" => r"(?i)\b[a-z][a-z0-9+.\-]*://[^\s/:@]+:[^\s/@]+@",
        "pem_private_key" => {
            r"-----BEGIN[A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END[A-Z ]*PRIVATE KEY-----|\z)"
        }
        "aws_access_key" => r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b",
        "card_number" => r"\b\d(?:[ -]?\d){12,18}\b",
        _ => return None,
    })
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
    fn every_builtin_compiles() {
        for name in super::super::config::BUILTIN_PATTERNS {
            regex::Regex::new(builtin(name).unwrap()).unwrap();
        }
    }
}

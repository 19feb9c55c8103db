//! Validation of receivers: where a subscription's notifications go.
//!
//! A receiver URL is tenant input that the collector will POST to, so it
//! is bounded and checked before it is stored: `http` or `https` only, at
//! most [`Limits::max_url_bytes`], no `user:password@` (credentials in a
//! URL end up in logs and history; webhooks authenticate the collector by
//! the `secret`'s signature instead), and an IP-literal or `localhost` host
//! must pass the egress policy. Hostnames are checked again on every
//! delivery, on the addresses they resolve to then.

use std::time::Duration;

use schemas::notify::{Receiver, ReceiverType};

use crate::egress::EgressPolicy;
use crate::error::NotifierError;
use crate::limits::{self, Limits};
use crate::rule::{check_name, check_text, over_limit};

fn invalid(field: &str, message: impl Into<String>) -> NotifierError {
    NotifierError::invalid(field, message)
}

/// Checks `r` (name and subscription filled in).
pub fn validate(r: &Receiver, limits: &Limits, policy: &EgressPolicy) -> Result<(), NotifierError> {
    check_name("subscription", &r.subscription)?;
    if r.url.len() > limits.max_url_bytes {
        return Err(over_limit(
            "url",
            "url_bytes",
            format!(
                "url is {} bytes, over the limit of {}",
                r.url.len(),
                limits::bytes(limits.max_url_bytes)
            ),
        ));
    }
    let url = reqwest::Url::parse(&r.url).map_err(|e| invalid("url", format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            "url",
            "url must be an http or https URL with a host",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "url",
            "url must not carry user:password@ (webhooks are signed with the secret instead)",
        ));
    }
    if let Err(refusal) = policy.check_url(&url) {
        return Err(over_limit(
            "url",
            "egress",
            format!("{refusal} (an admin can allow it with --egress-allow)"),
        ));
    }
    if r.timeout.0.is_zero() || r.timeout.0 > Duration::from_secs(300) {
        return Err(invalid("timeout", "timeout must be between 1ms and 5m"));
    }
    if let Some(secret) = &r.secret {
        if r.receiver_type != ReceiverType::Webhook {
            return Err(invalid(
                "secret",
                "a signing secret applies to webhook receivers only",
            ));
        }
        check_text("secret", secret, limits)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: serde_json::Value, policy: &EgressPolicy) -> Result<(), (String, String)> {
        let mut r: Receiver = serde_json::from_value(v).unwrap();
        r.name = "r".into();
        r.subscription = "acme".into();
        validate(&r, &Limits::default(), policy)
            .map_err(|e| (e.field.unwrap_or_default(), e.message))
    }

    #[test]
    fn urls_are_bounded_and_checked_against_the_policy() {
        let p = EgressPolicy::default();
        let hook = |url: &str| json!({"type": "webhook", "url": url});
        assert!(check(hook("https://hooks.example.com/x?y=1"), &p).is_ok());
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "http://user:pw@example.com/",
            "http://127.0.0.1:3100/api/v1/ingest",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/",
            "http://[fd00::1]/",
            "http://localhost:9000/",
            "not a url",
        ] {
            let (field, msg) = check(hook(bad), &p).unwrap_err();
            assert_eq!(field, "url", "{bad}: {msg}");
        }
        let long = format!("https://example.com/{}", "a".repeat(3000));
        let (_, msg) = check(hook(&long), &p).unwrap_err();
        assert!(msg.contains("limit"), "{msg}");
        let (_, msg) = check(hook("http://169.254.169.254/"), &p).unwrap_err();
        assert!(msg.contains("refused by egress policy"), "{msg}");
        // An allow-listed range is accepted.
        let allow = EgressPolicy::allowing(&["127.0.0.1/32"]);
        assert!(check(hook("http://127.0.0.1:9099/hook"), &allow).is_ok());
    }
}

//! The retry policy of every sender in the pipeline, written once: the
//! shipper (outbox to collector), the notifier (alerts to webhooks and
//! Alertmanager) and the metrics agent (samples to a remote-write or OTLP
//! receiver).
//!
//! | answer | [`Outcome`] | why |
//! |---|---|---|
//! | 2xx | `Delivered` | |
//! | network error, timeout, 408, 409, 425, 429, 5xx | `Retry` | the same request may succeed later; `Retry-After` is honoured (capped) for 429 and 503 |
//! | 401, 403 | `Retry` | credentials an operator can fix without losing what is queued; retried with backoff like any transient failure |
//! | 400, 413, 422 | `Reject` | the receiver refuses this content: the same bytes fail again |
//! | 3xx, 404, 405, any other 4xx | `Misdirected` | the destination is wrong (redirects are never followed) |
//!
//! What a sender does with `Reject` and `Misdirected` depends on what it
//! holds, never on the status: the shipper holds acknowledged data, so it
//! splits a rejected batch down to the one record at fault and keeps
//! retrying a misdirected one; the metrics agent drops the rejected samples
//! (counted) and keeps retrying a misdirected send; the notifier marks the
//! notification failed with the status code.
//!
//! Waits between attempts are [`Backoff`]: exponential with full jitter.

use std::time::{Duration, SystemTime};

use rand::RngExt;

/// What an answer means for the request that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted.
    Delivered,
    /// Try the same request again later.
    Retry,
    /// The receiver refuses this content.
    Reject,
    /// The destination is wrong (a redirect, a missing path, a method).
    Misdirected,
}

/// The policy: the [`Outcome`] of an HTTP status code.
pub fn classify(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        401 | 403 | 408 | 409 | 425 | 429 | 500..=599 => Outcome::Retry,
        400 | 413 | 422 => Outcome::Reject,
        _ => Outcome::Misdirected,
    }
}

/// Whether a `Retry-After` is honoured for this status (429 and 503, as
/// RFC 9110 defines it).
pub fn honours_retry_after(status: u16) -> bool {
    matches!(status, 429 | 503)
}

/// The longest `Retry-After` any sender honours.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The wait a `Retry-After` value asks for, at most `cap`: seconds
/// (an integer, or a decimal as some receivers send) or an HTTP date
/// relative to `now`. `None` when malformed, negative or absurdly long:
/// the sender's own backoff applies. Never panics, whatever the input.
pub fn retry_after(value: &str, now: SystemTime, cap: Duration) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() || v.len() > 64 {
        return None;
    }
    let wait = if v.bytes().all(|b| b.is_ascii_digit()) {
        // Any number of digits: a huge one saturates to the cap.
        Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX))
    } else if let Ok(secs) = v.parse::<f64>() {
        // Decimal or scientific seconds, as some receivers send.
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        Duration::try_from_secs_f64(secs.min(cap.as_secs_f64())).ok()?
    } else {
        let at = httpdate::parse_http_date(v).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(cap))
}

/// Exponential backoff with full jitter (the AWS architecture blog's "Full
/// Jitter"): before retry number `attempt` (0-based) wait a uniform random
/// time in `[0, min(cap, base * 2^attempt)]`, so that many senders that
/// failed together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff { base, cap }
    }

    /// The ceiling for retry number `attempt`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A random wait for retry number `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        if ceiling.is_zero() {
            return ceiling;
        }
        let nanos = rand::rng().random_range(0..=ceiling.as_nanos().min(u64::MAX as u128) as u64);
        Duration::from_nanos(nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_table() {
        assert_eq!(classify(204), Outcome::Delivered);
        for s in [401, 403, 408, 409, 425, 429, 500, 502, 503, 599] {
            assert_eq!(classify(s), Outcome::Retry, "{s}");
        }
        for s in [400, 413, 422] {
            assert_eq!(classify(s), Outcome::Reject, "{s}");
        }
        for s in [301, 302, 307, 404, 405, 410, 451, 100, 600] {
            assert_eq!(classify(s), Outcome::Misdirected, "{s}");
        }
        assert!(honours_retry_after(429) && honours_retry_after(503));
        assert!(!honours_retry_after(500));
    }

    #[test]
    fn retry_after_is_capped_and_garbage_is_ignored() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let cap = MAX_RETRY_AFTER;
        let ra = |v: &str| retry_after(v, now, cap);
        assert_eq!(ra("2"), Some(Duration::from_secs(2)));
        assert_eq!(ra(" 0.25 "), Some(Duration::from_millis(250)));
        assert_eq!(ra("0"), Some(Duration::ZERO));
        // Regression: 1e20 panicked in Duration::from_secs_f64.
        assert_eq!(ra("100000000000000000000000000"), Some(cap));
        assert_eq!(ra("99999999999999999999.5"), Some(cap));
        assert_eq!(ra("1e20"), Some(cap));
        for bad in [
            "",
            "-1",
            "NaN",
            "inf",
            "-inf",
            "soon",
            "1.2.3",
            "1_000",
            &"9".repeat(65),
        ] {
            assert_eq!(ra(bad), None, "{bad:?}");
        }
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(ra(&date), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(ra(&past), Some(Duration::ZERO));
        let far = httpdate::fmt_http_date(now + Duration::from_secs(86_400));
        assert_eq!(ra(&far), Some(cap));
        assert_eq!(
            retry_after("60", now, Duration::from_secs(5)),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn backoff_doubles_then_caps_and_delays_stay_under_it() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(10), Duration::from_secs(2));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..200).map(|_| b.delay(5)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        // Full jitter spreads retries: not all the same.
        assert!(delays.iter().any(|d| *d != delays[0]));
        assert_eq!(
            Backoff::new(Duration::ZERO, Duration::ZERO).delay(3),
            Duration::ZERO
        );
    }
}

//! Exponential backoff with full jitter (AWS architecture blog's "Full
//! Jitter"): sleep a uniform random time in [0, min(cap, base * 2^attempt)].

use std::time::Duration;

use rand::RngExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The ceiling for retry number `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A random delay for retry number `attempt`.
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
    fn ceiling_doubles_then_caps_and_delays_stay_under_it() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(10), Duration::from_secs(2));
        assert_eq!(b.ceiling(1000), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..200).map(|_| b.delay(5)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        // Full jitter spreads retries: not all the same.
        assert!(delays.iter().any(|d| *d != delays[0]));
    }
}

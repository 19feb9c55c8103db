//! Bounds on everything a tenant can store in the notifier or make it do.
//!
//! Every number, string, regex and count a client sends is checked against
//! these at the edge (API, rules file), with an error naming the field and
//! the limit; the evaluation and delivery paths have their own bounds so
//! that one subscription can neither exhaust the collector nor slow
//! another. The defaults are sized for a collector on 2 cores / 24 GiB
//! serving tens of subscriptions; `sesam-collector` exposes each as a flag.

use std::time::Duration;

/// The notifier's limits (see the module docs). `Default` gives the
/// documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Rules per subscription (`--max-rules-per-subscription`, 1000).
    pub max_rules_per_subscription: usize,
    /// Receivers per subscription (`--max-receivers-per-subscription`, 50).
    pub max_receivers_per_subscription: usize,
    /// Silences per subscription, expired ones included until deleted
    /// (`--max-silences-per-subscription`, 1000).
    pub max_silences_per_subscription: usize,
    /// Matchers of one silence (`--max-matchers-per-silence`, 32).
    pub max_matchers_per_silence: usize,
    /// Compiled-regex budget of one stored object (a rule or a silence),
    /// in bytes (`--max-regex-bytes`, 512 KiB). Each of the object's `k`
    /// regexes may compile to `max_regex_bytes / (2k)` bytes of program
    /// (`size_limit`) and use as much again for its lazy DFA
    /// (`dfa_size_limit`), so the object's regexes never hold more than
    /// this in all.
    pub max_regex_bytes: usize,
    /// Length of one pattern (a `pattern_match` pattern or a matcher
    /// value), in bytes (`--max-pattern-bytes`, 1024).
    pub max_pattern_bytes: usize,
    /// Longest duration of a rule: `repeat_interval`, `grace`, `interval`,
    /// `limit`, `for`, `resolve_after`, `group_wait`
    /// (`--max-rule-duration`, 30 days).
    pub max_rule_duration: Duration,
    /// Longest silence (`endsAt` - `startsAt`), and how far ahead its
    /// start may lie (`--max-silence-duration`, 100 years: Alertmanager
    /// has no bound and operators silence "until 2099"; the bound keeps
    /// every deadline far from the end of the nanosecond clock).
    pub max_silence_duration: Duration,
    /// Evaluation time one subscription may use per evaluation (one commit
    /// group of records, or one round of the background evaluation); the
    /// rest of its records are deferred to the background evaluation,
    /// which works through them in rounds of the same budget
    /// (`--notifier-eval-budget`, 50 ms).
    pub eval_budget: Duration,
    /// Average fraction of one core one subscription's evaluation may use
    /// (`--notifier-eval-share`, 0.25): its budget refills at this rate,
    /// up to `eval_budget`, so a tenant with expensive rules is throttled
    /// (its records deferred) instead of taking the machine.
    pub eval_share: f64,
    /// The longest gap in a source's event time that is not a silence
    /// (`--notifier-source-gap`, 2 min; shorter when a heartbeat rule of
    /// the source has a shorter interval): a source whose clock jumps by
    /// more comes back with a fresh grace for its pipes' overdue deadlines.
    pub source_gap: Duration,
    /// Records of one subscription held in memory waiting for evaluation
    /// (`--max-deferred-records-per-subscription`, 50,000). With the
    /// store's commit feed (the collector's RocksDB store), further ones
    /// wait in the feed and are read back in order; without it (records
    /// handed to `on_records`), records beyond it are not evaluated
    /// (counted), and deferred records are lost by a crash.
    pub max_deferred_per_subscription: usize,
    /// The same in bytes of records
    /// (`--max-deferred-bytes-per-subscription`, 64 MiB; with the commit
    /// feed only): further records wait in the feed.
    pub max_deferred_bytes_per_subscription: usize,
    /// Bytes of one text field a `pattern_match` rule looks at; longer
    /// texts are matched on their first bytes (`--max-match-bytes`, 64 KiB).
    pub max_match_bytes: usize,
    /// Pipes tracked per subscription for overdue rules
    /// (`--max-pipes-per-subscription`, 20,000); further pipes are not
    /// tracked (counted).
    pub max_pipes_per_subscription: usize,
    /// Sources tracked per subscription (`--max-sources-per-subscription`,
    /// 1,000); further sources are not tracked (counted).
    pub max_sources_per_subscription: usize,
    /// Active alerts per subscription (`--max-alerts-per-subscription`,
    /// 10,000); a new alert beyond it is not created (counted).
    pub max_alerts_per_subscription: usize,
    /// Armed deadlines per subscription: one per (overdue rule, pipe),
    /// (heartbeat rule, source), firing alert and metric series (200,000);
    /// a deadline beyond it is not armed (counted).
    pub max_timers_per_subscription: usize,
    /// Summed-value windows (one per value rule with an `interval` and
    /// pipe) and `metric_threshold` series states per subscription
    /// (100,000); beyond it a new one is not kept (counted).
    pub max_series_per_subscription: usize,
    /// Notifications waiting for delivery per subscription
    /// (`--max-pending-notifications-per-subscription`, 10,000); a
    /// notification beyond it fails at once with "queue full" (counted).
    pub max_pending_per_subscription: usize,
    /// Deliveries in flight per subscription (`--max-deliveries-per-subscription`,
    /// 4): a tenant with a hanging receiver cannot take every slot.
    pub max_in_flight_per_subscription: usize,
    /// Receiver URL length (2048).
    pub max_url_bytes: usize,
    /// Pipe globs of one rule (100).
    pub max_globs_per_rule: usize,
    /// Receivers of one rule (16).
    pub max_receivers_per_rule: usize,
    /// Label matchers of a `metric_threshold` rule (32) and `group_by`
    /// labels of a rule.
    pub max_labels_per_rule: usize,
    /// Bytes of a free text: a rule's description, a silence's comment and
    /// createdBy, a label name or value (4096).
    pub max_text_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_rules_per_subscription: 1000,
            max_receivers_per_subscription: 50,
            max_silences_per_subscription: 1000,
            max_matchers_per_silence: 32,
            max_regex_bytes: 512 << 10,
            max_pattern_bytes: 1024,
            max_rule_duration: Duration::from_secs(30 * 24 * 3600),
            max_silence_duration: Duration::from_secs(36_500 * 24 * 3600),
            eval_budget: Duration::from_millis(50),
            eval_share: 0.25,
            source_gap: Duration::from_secs(120),
            max_deferred_per_subscription: 50_000,
            max_deferred_bytes_per_subscription: 64 << 20,
            max_match_bytes: 64 << 10,
            max_pipes_per_subscription: 20_000,
            max_sources_per_subscription: 1_000,
            max_alerts_per_subscription: 10_000,
            max_timers_per_subscription: 200_000,
            max_series_per_subscription: 100_000,
            max_pending_per_subscription: 10_000,
            max_in_flight_per_subscription: 4,
            max_url_bytes: 2048,
            max_globs_per_rule: 100,
            max_receivers_per_rule: 16,
            max_labels_per_rule: 32,
            max_text_bytes: 4096,
        }
    }
}

impl Limits {
    /// Limits with no practical bound on counts (tests, benchmarks that
    /// load many rules): durations and regex budgets stay bounded.
    pub fn generous() -> Limits {
        Limits {
            max_rules_per_subscription: usize::MAX,
            max_receivers_per_subscription: usize::MAX,
            max_silences_per_subscription: usize::MAX,
            max_pipes_per_subscription: usize::MAX,
            max_sources_per_subscription: usize::MAX,
            max_alerts_per_subscription: usize::MAX,
            max_timers_per_subscription: usize::MAX,
            max_series_per_subscription: usize::MAX,
            max_pending_per_subscription: usize::MAX,
            eval_budget: Duration::MAX,
            max_deferred_per_subscription: usize::MAX,
            ..Limits::default()
        }
    }
}

/// `d` as a short human string for error messages ("30days", "50ms").
pub fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `n` bytes as a short human string for error messages ("256 KiB").
pub fn bytes(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

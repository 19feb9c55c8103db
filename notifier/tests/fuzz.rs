//! Fuzzing of the notifier's validators with arbitrary JSON and strings:
//! rules, silences, receivers, the duration parser and the egress CIDR
//! parser never panic, and whatever they accept is within the limits.
//!
//! Cases per property: `FUZZ_CASES` (default 2,000). The benchmark-style
//! run of BENCHMARKS.md ("Fuzzing"):
//! `FUZZ_CASES=1000000 cargo test --release -p notifier --test fuzz`.

use std::time::Duration;

use notifier::egress::EgressPolicy;
use notifier::limits::Limits;
use notifier::silence::ActiveSilence;
use notifier::{receiver, rule, Cidr};
use proptest::prelude::*;
use schemas::notify::{NotificationRule, Receiver, Silence, Span};
use serde_json::{json, Map, Value};

/// 2026-01-01T00:00:00Z
const NOW: i64 = 1_767_225_600_000_000_000;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(2_000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

const KEYS: &[&str] = &[
    "id",
    "name",
    "description",
    "type",
    "subscription",
    "source",
    "pipes",
    "params",
    "severity",
    "receivers",
    "repeat_interval",
    "field",
    "pattern",
    "syntax",
    "resolve_after",
    "key",
    "limit",
    "interval",
    "grace",
    "metric",
    "labels",
    "op",
    "value",
    "for",
    "statuses",
    "matchers",
    "startsAt",
    "endsAt",
    "isRegex",
    "isEqual",
    "comment",
    "createdBy",
    "url",
    "secret",
    "timeout",
    "send_resolved",
];

const WORDS: &[&str] = &[
    "pump_failed",
    "pump_started_overdue",
    "pump_finished_overdue",
    "pattern_match",
    "pump_completed_value_too_high",
    "pump_completed_value_too_low",
    "node_heartbeat_overdue",
    "service_unhealthy",
    "metric_threshold",
    "source_conflict",
    "webhook",
    "alertmanager",
    "regex",
    "wildcard",
    "traceback",
    "reason_why_stopped",
    "log_message",
    "entities.changes_last_run",
    "failed",
    "degraded",
    "ok",
    ">",
    "<=",
    "!=",
    "*",
    "orders*",
    "[a-",
    "300y",
    "30d",
    "30days 1ns",
    "1h",
    "0s",
    "-5s",
    "1e400",
    "99999999999999999999y",
    "18446744073709551615s",
    "2026-01-01T00:00:00Z",
    "2026-01-01T01:00:00Z",
    "9999-12-31T23:59:59Z",
    "1677-09-21T00:12:43.145224192Z",
    "2262-04-11T23:47:16.854775807Z",
    "http://127.0.0.1:9/x",
    "http://169.254.169.254/latest",
    "http://[::ffff:127.0.0.1]/",
    "http://0x7f.1/",
    "https://hooks.example.com/a?b=c",
    "http://user:pw@example.com/",
    "http://localhost./",
    "ftp://x/",
    "(a+)+$",
    "\\w{1000}",
    "[a-q][^u-z]{13}x",
    "(?i)timeout|refused",
    "\\p{Greek}+",
    "acme",
    "",
];

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(WORDS).prop_map(str::to_string),
        2 => "[ -~]{0,24}",
        1 => any::<String>(),
        1 => "[0-9]{1,25}[a-z ]{0,6}",
        1 => "[\\\\\\[\\](){}*+?|.^$a-z0-9]{0,30}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        (0u32..4_000_000).prop_map(|n| json!(n)),
        string().prop_map(Value::String),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::sample::select(KEYS).prop_map(str::to_string),
        1 => string(),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 48, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map(key(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An object: a near-valid `base` with some fields replaced or added.
fn object(base: Value) -> impl Strategy<Value = Value> {
    proptest::collection::btree_map(key(), value(), 0..6).prop_map(move |over| {
        let mut v = base.clone();
        for (k, x) in over {
            v[k] = x;
        }
        v
    })
}

fn rule_base() -> impl Strategy<Value = Value> {
    let params = prop_oneof![
        Just(json!({})),
        Just(json!({"grace": "5m", "interval": "1h"})),
        Just(json!({"limit": "1h"})),
        Just(json!({"field": "traceback", "pattern": "*x*"})),
        Just(json!({"field": "log_message", "pattern": "a|b", "syntax": "regex"})),
        Just(json!({"key": "entities.changes_last_run", "limit": 5, "interval": "1h"})),
        Just(json!({"interval": "2m"})),
        Just(json!({"statuses": ["failed"]})),
        Just(json!({"metric": "m", "op": ">", "value": 1, "for": "1m"})),
        Just(json!({"resolve_after": "1h"})),
        proptest::collection::btree_map(key(), value(), 0..6)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
    ];
    (proptest::sample::select(WORDS), params).prop_map(|(t, params)| {
        json!({"id": "r", "name": "n", "type": t, "subscription": "acme",
               "pipes": ["*"], "params": params, "receivers": ["hook"]})
    })
}

fn limits() -> Limits {
    Limits::default()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn rules_never_panic_and_accepted_ones_are_bounded(v in rule_base().prop_flat_map(object)) {
        let l = limits();
        if let Ok(r) = serde_json::from_value::<NotificationRule>(v) {
            if let Ok(c) = rule::compile(r, &l) {
                let max = i64::try_from(l.max_rule_duration.as_nanos()).unwrap();
                prop_assert!(c.repeat_nanos >= 1_000_000_000 && c.repeat_nanos <= max);
                prop_assert!(c.pipes.len() <= l.max_globs_per_rule);
                prop_assert!(c.rule.receivers.len() <= l.max_receivers_per_rule);
                prop_assert!(c.rule.description.len() <= l.max_text_bytes);
            }
        }
    }

    #[test]
    fn silences_never_panic_and_accepted_ones_are_bounded(
        v in object(json!({"id": "s", "subscription": "acme",
                           "matchers": [{"name": "pipe", "value": "o.*", "isRegex": true}],
                           "startsAt": "2026-01-01T00:00:00Z", "endsAt": "2026-01-01T01:00:00Z"}))
    ) {
        let l = limits();
        if let Ok(s) = serde_json::from_value::<Silence>(v) {
            if let Ok(a) = ActiveSilence::compile(s, Some(NOW), &l) {
                prop_assert!(!a.matchers.is_empty() && a.matchers.len() <= l.max_matchers_per_silence);
                prop_assert!(a.ends > a.starts && a.ends > NOW);
                let max = i64::try_from(l.max_silence_duration.as_nanos()).unwrap();
                prop_assert!(a.ends - a.starts.max(NOW) <= max);
            }
        }
    }

    #[test]
    fn receivers_never_panic_and_accepted_urls_pass_the_policy(
        v in object(json!({"name": "r", "subscription": "acme", "type": "webhook",
                           "url": "https://hooks.example.com/x"}))
    ) {
        let l = limits();
        let policy = EgressPolicy::default();
        if let Ok(r) = serde_json::from_value::<Receiver>(v) {
            if receiver::validate(&r, &l, &policy).is_ok() {
                let u = reqwest::Url::parse(&r.url).unwrap();
                prop_assert!(matches!(u.scheme(), "http" | "https"));
                prop_assert!(u.username().is_empty() && u.password().is_none());
                prop_assert!(policy.check_url(&u).is_ok());
                prop_assert!(r.url.len() <= l.max_url_bytes);
            }
        }
    }

    #[test]
    fn durations_never_panic_and_accepted_ones_are_bounded(s in string(), n in any::<f64>()) {
        let l = limits();
        for v in [Value::String(s.clone()), json!(n)] {
            if let Ok(span) = serde_json::from_value::<Span>(v) {
                let _ = span.to_string();
                if let Ok(ns) = rule::check_span("d", span, Duration::ZERO, &l) {
                    prop_assert!(ns >= 0);
                    prop_assert!(Duration::from_nanos(ns as u64) <= l.max_rule_duration);
                }
            }
        }
    }

    #[test]
    fn cidrs_and_urls_never_panic(s in string()) {
        if let Ok(c) = s.parse::<Cidr>() {
            prop_assert!(c.to_string().parse::<Cidr>().is_ok());
        }
        let _ = notifier::egress::redact(&s);
        if let Ok(u) = reqwest::Url::parse(&s) {
            let _ = EgressPolicy::default().check_url(&u);
        }
    }
}

//! Validation of notification rules: a [`NotificationRule`] as sent over the
//! API becomes a [`CompiledRule`] (globs and patterns compiled, params
//! typed), or an error naming the field that is wrong and, for a limit,
//! the limit.
//!
//! Every duration is bounded by [`Limits::max_rule_duration`], every count
//! and text by its limit, and a pattern's compiled regex by the rule's
//! regex budget ([`Limits::max_regex_bytes`]), so that no accepted rule can
//! make the engine do unbounded work.

use std::collections::BTreeMap;
use std::time::Duration;

use regex::Regex;
use schemas::notify::{
    Comparison, MetricThresholdParams, NodeHeartbeatOverdueParams, NotificationRule, PatternField,
    PatternMatchParams, PatternSyntax, PumpFailedParams, PumpFinishedOverdueParams,
    PumpStartedOverdueParams, RuleType, ServiceUnhealthyParams, SourceConflictParams, Span,
    ValueLimitParams,
};
use schemas::HealthStatus;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::limits::{self, Limits};
use crate::NotifierError;

/// A rule's identity: ids are unique within a subscription only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RuleKey {
    pub sub: String,
    pub id: String,
}

impl RuleKey {
    pub fn new(sub: &str, id: &str) -> RuleKey {
        RuleKey {
            sub: sub.to_string(),
            id: id.to_string(),
        }
    }
}

/// The `metrics` keys value rules may watch (Sesam's).
pub const METRIC_KEYS: [&str; 9] = schemas::ExecutionMetrics::KEYS;

/// A validated rule, ready to evaluate.
#[derive(Debug)]
pub struct CompiledRule {
    pub rule: NotificationRule,
    pub source: Option<glob::Pattern>,
    pub pipes: Vec<glob::Pattern>,
    /// Set when every pipe pattern is a plain name: the rule is then found
    /// through a hash lookup instead of a glob scan.
    pub literal_pipes: Option<Vec<String>>,
    pub kind: Kind,
    pub repeat_nanos: i64,
}

/// The typed parameters of a rule (durations in nanoseconds).
#[derive(Debug)]
pub enum Kind {
    PumpFailed,
    StartedOverdue {
        grace: i64,
        interval: Option<i64>,
    },
    FinishedOverdue {
        limit: i64,
    },
    Pattern {
        field: PatternField,
        matcher: Regex,
        /// The pattern as given (for summaries).
        pattern: String,
        resolve_after: i64,
    },
    Value {
        high: bool,
        key: String,
        limit: f64,
        interval: Option<i64>,
    },
    Heartbeat {
        interval: i64,
    },
    Unhealthy {
        statuses: Vec<HealthStatus>,
    },
    Metric {
        metric: String,
        labels: BTreeMap<String, String>,
        op: Comparison,
        value: f64,
        for_: i64,
    },
    Conflict {
        resolve_after: i64,
    },
}

impl CompiledRule {
    pub fn id(&self) -> &str {
        &self.rule.id
    }

    pub fn sub(&self) -> &str {
        &self.rule.subscription
    }

    pub fn key(&self) -> RuleKey {
        RuleKey::new(&self.rule.subscription, &self.rule.id)
    }

    pub fn rule_type(&self) -> RuleType {
        self.rule.rule_type
    }

    pub fn matches_source(&self, source: &str) -> bool {
        self.source.as_ref().is_none_or(|p| p.matches(source))
    }

    pub fn matches_pipe(&self, pipe: &str) -> bool {
        self.pipes.iter().any(|p| p.matches(pipe))
    }

    /// Rules of these types are about pipes; the others about sources or
    /// series.
    pub fn is_pipe_rule(&self) -> bool {
        !matches!(
            self.kind,
            Kind::Heartbeat { .. }
                | Kind::Unhealthy { .. }
                | Kind::Metric { .. }
                | Kind::Conflict { .. }
        )
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> NotifierError {
    NotifierError::invalid(field, message)
}

fn params<T: DeserializeOwned>(v: &Value) -> Result<T, NotifierError> {
    let v = if v.is_null() {
        Value::Object(Default::default())
    } else {
        v.clone()
    };
    if !v.is_object() {
        return Err(invalid("params", "params must be an object"));
    }
    serde_json::from_value(v)
        .map_err(|e| invalid("params", format!("params: {}", short_error(&e.to_string()))))
}

fn nanos(d: Span) -> i64 {
    d.as_nanos()
}

/// An error for a value over one of the [`Limits`]; `reason` names the
/// limit in `/metrics`.
pub fn over_limit(
    field: impl Into<String>,
    reason: &'static str,
    message: String,
) -> NotifierError {
    NotifierError::invalid(field, message).with_reason(reason)
}

/// Checks a duration of a rule: at least `min`, at most the rule limit.
pub fn check_span(
    field: &str,
    d: Span,
    min: Duration,
    limits: &Limits,
) -> Result<i64, NotifierError> {
    if d.0 < min {
        return Err(invalid(
            field,
            if min == Duration::from_nanos(1) {
                format!("{field} must be longer than zero")
            } else {
                format!("{field} must be at least {}", limits::human(min))
            },
        ));
    }
    if d.0 > limits.max_rule_duration {
        return Err(over_limit(
            field,
            "duration",
            format!(
                "{field} {d} is over the limit of {} (--max-rule-duration)",
                limits::human(limits.max_rule_duration)
            ),
        ));
    }
    Ok(nanos(d))
}

/// Checks a free text against the text limit.
pub fn check_text(field: &str, s: &str, limits: &Limits) -> Result<(), NotifierError> {
    if s.len() > limits.max_text_bytes {
        return Err(over_limit(
            field,
            "text_bytes",
            format!(
                "{field} is {} bytes, over the limit of {}",
                s.len(),
                limits::bytes(limits.max_text_bytes)
            ),
        ));
    }
    Ok(())
}

/// Checks a count against its limit.
pub fn check_count(
    field: &str,
    n: usize,
    max: usize,
    reason: &'static str,
) -> Result<(), NotifierError> {
    if n > max {
        return Err(over_limit(
            field,
            reason,
            format!("{field} has {n} entries, over the limit of {max}"),
        ));
    }
    Ok(())
}

/// Compiles one of an object's `of` regexes within its share of the
/// object's regex budget (half for the program, half for the lazy DFA).
pub fn compile_regex(
    field: &str,
    source: &str,
    shown: &str,
    of: usize,
    limits: &Limits,
) -> Result<Regex, NotifierError> {
    if shown.len() > limits.max_pattern_bytes {
        return Err(over_limit(
            field,
            "pattern_bytes",
            format!(
                "the pattern is {} bytes, over the limit of {} (--max-pattern-bytes)",
                shown.len(),
                limits::bytes(limits.max_pattern_bytes)
            ),
        ));
    }
    let share = limits.max_regex_bytes / of.max(1);
    regex::RegexBuilder::new(source)
        .size_limit(share / 2)
        .dfa_size_limit(share / 2)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => over_limit(
                field,
                "regex_budget",
                format!(
                    "the regex compiles to more than its share of the regex budget ({} of {} over {of} regex{}; --max-regex-bytes)",
                    limits::bytes(share),
                    limits::bytes(limits.max_regex_bytes),
                    if of == 1 { "" } else { "es" }
                ),
            ),
            e => invalid(field, format!("bad regex: {}", short_error(&e.to_string()))),
        })
}

/// The regex crate's errors quote the whole pattern; keep them short.
fn short_error(s: &str) -> String {
    let mut out: String = s.chars().take(500).collect();
    if out.len() < s.len() {
        out.push_str("...");
    }
    out
}

/// Checks an id given by a client.
pub fn check_id(field: &str, id: &str) -> Result<(), NotifierError> {
    if id.is_empty() || id.len() > 128 {
        return Err(invalid(field, "must be 1 to 128 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return Err(invalid(
            field,
            format!("{id:?} may only contain letters, digits, '-', '_', '.', ':'"),
        ));
    }
    Ok(())
}

/// Checks a subscription or source name.
pub fn check_name(field: &str, s: &str) -> Result<(), NotifierError> {
    if s.is_empty() || s.len() > 256 || s.contains('\0') {
        return Err(invalid(
            field,
            "must be 1 to 256 characters without NUL bytes",
        ));
    }
    Ok(())
}

fn glob(field: &str, pattern: &str, limits: &Limits) -> Result<glob::Pattern, NotifierError> {
    if pattern.is_empty() {
        return Err(invalid(field, "a glob must not be empty"));
    }
    if pattern.len() > limits.max_pattern_bytes {
        return Err(over_limit(
            field,
            "pattern_bytes",
            format!(
                "the glob is {} bytes, over the limit of {} (--max-pattern-bytes)",
                pattern.len(),
                limits::bytes(limits.max_pattern_bytes)
            ),
        ));
    }
    glob::Pattern::new(pattern).map_err(|e| invalid(field, format!("glob: {e}")))
}

/// Turns a Sesam wildcard (`*` any text, `?` one character) into an anchored
/// regex.
pub fn wildcard_regex(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    out.push_str("(?s)^");
    let mut lit = String::new();
    for c in pattern.chars() {
        match c {
            '*' | '?' => {
                out.push_str(&regex::escape(&lit));
                lit.clear();
                out.push_str(if c == '*' { ".*" } else { "." });
            }
            c => lit.push(c),
        }
    }
    out.push_str(&regex::escape(&lit));
    out.push('$');
    out
}

fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Validates `rule` (whose id is already set) and compiles it.
pub fn compile(rule: NotificationRule, limits: &Limits) -> Result<CompiledRule, NotifierError> {
    check_id("id", &rule.id)?;
    if rule.name.trim().is_empty() || rule.name.len() > 200 {
        return Err(invalid("name", "name must be 1 to 200 characters"));
    }
    check_text("description", &rule.description, limits)?;
    check_name("subscription", &rule.subscription)?;
    let source = match &rule.source {
        Some(s) => Some(glob("source", s, limits)?),
        None => None,
    };
    if rule.pipes.is_empty() {
        return Err(invalid(
            "pipes",
            "pipes must list at least one glob (use [\"*\"] for all)",
        ));
    }
    check_count(
        "pipes",
        rule.pipes.len(),
        limits.max_globs_per_rule,
        "globs",
    )?;
    let mut pipes = Vec::with_capacity(rule.pipes.len());
    for (i, p) in rule.pipes.iter().enumerate() {
        pipes.push(glob(&format!("pipes[{i}]"), p, limits)?);
    }
    let literal_pipes = rule
        .pipes
        .iter()
        .all(|p| !p.contains(['*', '?', '[', ']']))
        .then(|| rule.pipes.clone());
    check_count(
        "receivers",
        rule.receivers.len(),
        limits.max_receivers_per_rule,
        "receivers_per_rule",
    )?;
    for (i, r) in rule.receivers.iter().enumerate() {
        check_id(&format!("receivers[{i}]"), r)?;
    }
    let repeat_nanos = check_span(
        "repeat_interval",
        rule.repeat_interval,
        Duration::from_secs(1),
        limits,
    )?;
    let nonzero = Duration::from_nanos(1);
    let kind = match rule.rule_type {
        RuleType::PumpFailed => {
            let _: PumpFailedParams = params(&rule.params)?;
            Kind::PumpFailed
        }
        RuleType::PumpStartedOverdue => {
            let p: PumpStartedOverdueParams = params(&rule.params)?;
            Kind::StartedOverdue {
                grace: check_span("params.grace", p.grace, Duration::ZERO, limits)?,
                interval: match p.interval {
                    Some(i) => Some(check_span("params.interval", i, nonzero, limits)?),
                    None => None,
                },
            }
        }
        RuleType::PumpFinishedOverdue => {
            let p: PumpFinishedOverdueParams = params(&rule.params)?;
            Kind::FinishedOverdue {
                limit: check_span("params.limit", p.limit, nonzero, limits)?,
            }
        }
        RuleType::PatternMatch => {
            let p: PatternMatchParams = params(&rule.params)?;
            if p.pattern.is_empty() {
                return Err(invalid("params.pattern", "pattern must not be empty"));
            }
            let source = match p.syntax {
                PatternSyntax::Wildcard => wildcard_regex(&p.pattern),
                PatternSyntax::Regex => p.pattern.clone(),
            };
            let matcher = compile_regex("params.pattern", &source, &p.pattern, 1, limits)?;
            Kind::Pattern {
                field: p.field,
                matcher,
                pattern: p.pattern,
                resolve_after: check_span(
                    "params.resolve_after",
                    p.resolve_after,
                    nonzero,
                    limits,
                )?,
            }
        }
        RuleType::PumpCompletedValueTooHigh | RuleType::PumpCompletedValueTooLow => {
            let p: ValueLimitParams = params(&rule.params)?;
            if !METRIC_KEYS.contains(&p.key.as_str()) {
                return Err(invalid(
                    "params.key",
                    format!(
                        "unknown metrics key {:?}; one of {METRIC_KEYS:?}",
                        short_error(&p.key)
                    ),
                ));
            }
            if !p.limit.is_finite() {
                return Err(invalid("params.limit", "limit must be a finite number"));
            }
            Kind::Value {
                high: rule.rule_type == RuleType::PumpCompletedValueTooHigh,
                key: p.key,
                limit: p.limit,
                interval: match p.interval {
                    Some(i) => Some(check_span("params.interval", i, nonzero, limits)?),
                    None => None,
                },
            }
        }
        RuleType::NodeHeartbeatOverdue => {
            let p: NodeHeartbeatOverdueParams = params(&rule.params)?;
            Kind::Heartbeat {
                interval: check_span("params.interval", p.interval, nonzero, limits)?,
            }
        }
        RuleType::ServiceUnhealthy => {
            let p: ServiceUnhealthyParams = params(&rule.params)?;
            if p.statuses.is_empty() || p.statuses.contains(&HealthStatus::Ok) {
                return Err(invalid(
                    "params.statuses",
                    "statuses must list failed and/or degraded",
                ));
            }
            let mut statuses = p.statuses;
            statuses.sort_by_key(|s| s.as_str());
            statuses.dedup();
            Kind::Unhealthy { statuses }
        }
        RuleType::MetricThreshold => {
            let p: MetricThresholdParams = params(&rule.params)?;
            if p.metric.len() > 256 || !valid_metric_name(&p.metric) {
                return Err(invalid(
                    "params.metric",
                    format!(
                        "{:?} is not a Prometheus metric name (at most 256 characters)",
                        short_error(&p.metric)
                    ),
                ));
            }
            if !p.value.is_finite() {
                return Err(invalid("params.value", "value must be a finite number"));
            }
            check_count(
                "params.labels",
                p.labels.len(),
                limits.max_labels_per_rule,
                "labels",
            )?;
            for (k, v) in &p.labels {
                check_text("params.labels", k, limits)?;
                check_text(&format!("params.labels.{}", short_error(k)), v, limits)?;
            }
            Kind::Metric {
                metric: p.metric,
                labels: p.labels,
                op: p.op,
                value: p.value,
                for_: check_span("params.for", p.for_, Duration::ZERO, limits)?,
            }
        }
        RuleType::SourceConflict => {
            let p: SourceConflictParams = params(&rule.params)?;
            Kind::Conflict {
                resolve_after: check_span(
                    "params.resolve_after",
                    p.resolve_after,
                    nonzero,
                    limits,
                )?,
            }
        }
    };
    Ok(CompiledRule {
        rule,
        source,
        pipes,
        literal_pipes,
        kind,
        repeat_nanos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(v: Value) -> Result<CompiledRule, NotifierError> {
        let mut base = json!({"id": "r1", "name": "n", "type": "pump_failed", "subscription": "s"});
        for (k, val) in v.as_object().unwrap() {
            base[k] = val.clone();
        }
        compile(serde_json::from_value(base).unwrap(), &Limits::default())
    }

    fn field(r: Result<CompiledRule, NotifierError>) -> String {
        r.unwrap_err().field.unwrap_or_default()
    }

    #[test]
    fn bad_rules_name_the_field() {
        assert_eq!(field(rule(json!({"id": "a b"}))), "id");
        assert_eq!(field(rule(json!({"name": ""}))), "name");
        assert_eq!(field(rule(json!({"pipes": []}))), "pipes");
        assert_eq!(field(rule(json!({"pipes": ["ok", "[x"]}))), "pipes[1]");
        assert_eq!(field(rule(json!({"source": "[x"}))), "source");
        assert_eq!(field(rule(json!({"params": {"x": 1}}))), "params");
        assert_eq!(
            field(rule(
                json!({"type": "pattern_match", "params": {"field": "traceback", "pattern": "(", "syntax": "regex"}})
            )),
            "params.pattern"
        );
        assert_eq!(
            field(rule(
                json!({"type": "pump_completed_value_too_high", "params": {"key": "nope", "limit": 1}})
            )),
            "params.key"
        );
        assert_eq!(
            field(rule(
                json!({"type": "node_heartbeat_overdue", "params": {"interval": 0}})
            )),
            "params.interval"
        );
        assert_eq!(
            field(rule(
                json!({"type": "metric_threshold", "params": {"metric": "1x", "op": ">", "value": 1}})
            )),
            "params.metric"
        );
        assert_eq!(
            field(rule(json!({"repeat_interval": "0s"}))),
            "repeat_interval"
        );
        let e = rule(json!({"type": "pump_finished_overdue", "params": {}})).unwrap_err();
        assert!(e.message.contains("limit"), "{e:?}");
    }

    #[test]
    fn wildcards_are_anchored_and_literal_otherwise() {
        let re = Regex::new(&wildcard_regex("*timeout (?)*")).unwrap();
        assert!(re.is_match("read timeout (5) after 10s"));
        assert!(!re.is_match("read timeout (55)"));
        let re = Regex::new(&wildcard_regex("a.b")).unwrap();
        assert!(re.is_match("a.b") && !re.is_match("axb"));
    }

    #[test]
    fn literal_pipes_are_detected() {
        let r = rule(json!({"pipes": ["a", "b"]})).unwrap();
        assert_eq!(
            r.literal_pipes,
            Some(vec!["a".to_string(), "b".to_string()])
        );
        let r = rule(json!({"pipes": ["a*"]})).unwrap();
        assert!(r.literal_pipes.is_none());
        assert!(r.matches_pipe("abc") && !r.matches_pipe("b"));
    }
}

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
    Comparison, FailureEvent, MetricThresholdParams, NodeHeartbeatOverdueParams, NotificationRule,
    PatternField, PatternMatchParams, PatternSyntax, PumpFailedParams, PumpFinishedOverdueParams,
    PumpStartedOverdueParams, RuleType, ServiceUnhealthyParams, SourceConflictParams, Span,
    ValueLimitParams,
};
use schemas::HealthStatus;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::NotifierError;
use crate::limits::Limits;
pub use crate::validate::{
    check_count, check_id, check_name, check_span, check_text, compile_regex, over_limit,
};
use crate::validate::{glob, short_error};

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
    /// Set for rules with `group_by`.
    pub group: Option<Grouping>,
}

/// How a rule's alerts are grouped into notifications.
#[derive(Debug, Clone)]
pub struct Grouping {
    /// Label names whose values make a group.
    pub by: Vec<String>,
    /// Nanoseconds a group waits for more alerts.
    pub wait: i64,
}

/// `group_wait` when `group_by` is set and it is not (Alertmanager's).
pub const DEFAULT_GROUP_WAIT: Span = Span::secs(30);

/// The typed parameters of a rule (durations in nanoseconds).
#[derive(Debug)]
pub enum Kind {
    PumpFailed {
        /// The event types that fire (`params.event_types`).
        on: Vec<schemas::EventType>,
        /// `read-error` or `write-error` is among them: only a completed
        /// run without read and write errors resolves.
        entity_errors: bool,
    },
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
        self.pipes
            .iter()
            .any(|p| pipe.starts_with(literal_prefix(p.as_str())) && p.matches(pipe))
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
    serde_path_to_error::deserialize(v).map_err(|e| {
        let message = short_error(&e.inner().to_string());
        invalid(
            params_field(e.path(), &message),
            format!("params: {message}"),
        )
    })
}

/// The field a parameter error is about: `params.<name>` when the path or
/// the message (`missing field `x``, `unknown field `x``) names one.
fn params_field(path: &serde_path_to_error::Path, message: &str) -> String {
    let at = path.to_string();
    if at != "." && !at.is_empty() {
        let first = at.split(['.', '[']).next().unwrap_or(&at);
        return format!("params.{first}");
    }
    for prefix in ["missing field `", "unknown field `"] {
        if let Some(rest) = message.split(prefix).nth(1) {
            if let Some(name) = rest.split('`').next().filter(|n| !n.is_empty()) {
                return format!("params.{name}");
            }
        }
    }
    "params".to_string()
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
/// The part of a glob before its first metacharacter: every name it
/// matches starts with it (a cheap test that turns most names away before
/// the glob runs; the rule index matches each new pipe against every
/// wildcard rule of its subscription).
/// What every name a glob matches starts with: its text before the first
/// `*`, `?` or `[`.
pub(crate) fn literal_prefix(glob: &str) -> &str {
    glob.find(['*', '?', '[']).map_or(glob, |i| &glob[..i])
}

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
            // Each entry checked first, so that a wrong one is named.
            if let Some(list) = rule.params.get("event_types") {
                let Some(items) = list.as_array() else {
                    return Err(invalid(
                        "params.event_types",
                        "event_types must be a list of event types",
                    ));
                };
                if items.is_empty() {
                    return Err(invalid(
                        "params.event_types",
                        "event_types must list at least one of pump-failed, read-error, write-error",
                    ));
                }
                for (i, v) in items.iter().enumerate() {
                    if serde_json::from_value::<FailureEvent>(v.clone()).is_err() {
                        return Err(invalid(
                            format!("params.event_types[{i}]"),
                            format!(
                                "{} is not an event a pump_failed rule pages on; one of pump-failed, read-error, write-error",
                                short_error(&v.to_string())
                            ),
                        ));
                    }
                }
            }
            let p: PumpFailedParams = params(&rule.params)?;
            let on: Vec<schemas::EventType> = FailureEvent::ALL
                .into_iter()
                .filter(|e| p.event_types.contains(e))
                .map(FailureEvent::event_type)
                .collect();
            let entity_errors = on.iter().any(|e| {
                matches!(
                    e,
                    schemas::EventType::ReadError | schemas::EventType::WriteError
                )
            });
            Kind::PumpFailed { on, entity_errors }
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
    let group = match (&rule.group_by[..], rule.group_wait) {
        ([], None) => None,
        ([], Some(_)) => {
            return Err(invalid(
                "group_wait",
                "group_wait needs group_by (the labels that make a group)",
            ))
        }
        (by, wait) => {
            check_count("group_by", by.len(), limits.max_labels_per_rule, "labels")?;
            for (i, l) in by.iter().enumerate() {
                if l.is_empty() || l.len() > 128 {
                    return Err(invalid(
                        format!("group_by[{i}]"),
                        "a label name must be 1 to 128 bytes",
                    ));
                }
            }
            let wait = check_span(
                "group_wait",
                wait.unwrap_or(DEFAULT_GROUP_WAIT),
                Duration::ZERO,
                limits,
            )?;
            Some(Grouping {
                by: by.to_vec(),
                wait,
            })
        }
    };
    Ok(CompiledRule {
        rule,
        source,
        pipes,
        literal_pipes,
        kind,
        repeat_nanos,
        group,
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

    #[test]
    fn the_literal_prefix_prefilter_agrees_with_the_glob() {
        assert_eq!(literal_prefix("orders-*"), "orders-");
        assert_eq!(literal_prefix("a?b*"), "a");
        assert_eq!(literal_prefix("[*]x"), "");
        assert_eq!(literal_prefix("exact"), "exact");
        let globs = [
            "orders-*",
            "*",
            "or?ers",
            "[o]rders*",
            "exact",
            "pipe-1*",
            "x[*]y",
        ];
        let names = [
            "orders-1", "orders", "oRders", "exact", "exactly", "pipe-12", "pipe-2", "x*y", "",
        ];
        for g in globs {
            let r = rule(json!({"pipes": [g]})).unwrap();
            let p = glob::Pattern::new(g).unwrap();
            for n in names {
                assert_eq!(r.matches_pipe(n), p.matches(n), "{g} vs {n}");
            }
        }
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
        assert_eq!(field(rule(json!({"params": {"x": 1}}))), "params.x");
        assert_eq!(
            field(rule(
                json!({"type": "pattern_match", "params": {"field": "traceback"}})
            )),
            "params.pattern"
        );
        assert_eq!(
            field(rule(
                json!({"type": "pump_started_overdue", "params": {"grace": "zz"}})
            )),
            "params.grace"
        );
        assert_eq!(field(rule(json!({"params": 3}))), "params");
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

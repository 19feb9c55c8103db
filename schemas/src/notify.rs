//! Notifier wire types: notification rules and the `params` of each rule
//! type, receivers, silences, and the webhook payload (Alertmanager's
//! webhook format, version 4).
//!
//! The notifier (crate `notifier`) resolves these into validated rules; the
//! collector's API accepts and returns them as JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A duration: a number of seconds (`300`) or a human string (`"5m"`,
/// `"1h 30m"`, `"90s"`). Serialized as the human string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span(pub Duration);

impl Span {
    pub const fn secs(s: u64) -> Span {
        Span(Duration::from_secs(s))
    }
    pub fn as_nanos(self) -> i64 {
        i64::try_from(self.0.as_nanos()).unwrap_or(i64::MAX)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::Number(n) => match n.as_f64() {
                Some(s) if (0.0..1e12).contains(&s) => Ok(Span(Duration::from_secs_f64(s))),
                _ => Err(D::Error::custom(format!(
                    "duration {n} must be a non-negative number of seconds"
                ))),
            },
            Value::String(s) => humantime::parse_duration(s.trim())
                .map(Span)
                .map_err(|e| D::Error::custom(format!("duration {s:?}: {e}"))),
            other => Err(D::Error::custom(format!(
                "duration must be seconds or a string like \"5m\", not {other}"
            ))),
        }
    }
}

impl JsonSchema for Span {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Seconds, or a duration string such as \"90s\", \"5m\", \"1h 30m\".",
            "oneOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "minLength": 1}
            ]
        })
    }
}

/// The kinds of notification rule.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RuleType {
    /// A run of a matching pipe failed; resolves on its next `pump-completed`.
    PumpFailed,
    /// No `pump-started` within the pipe's schedule plus `grace`.
    PumpStartedOverdue,
    /// A run started and neither completed nor failed within `limit`.
    PumpFinishedOverdue,
    /// A wildcard or regex matched an error field or a log message.
    PatternMatch,
    /// A `metrics` value of a completed run above `limit`.
    PumpCompletedValueTooHigh,
    /// A `metrics` value of a completed run below `limit`.
    PumpCompletedValueTooLow,
    /// No record at all from a source for `interval`.
    NodeHeartbeatOverdue,
    /// A health record with a bad status.
    ServiceUnhealthy,
    /// A pushed metric against a bound, for a duration.
    MetricThreshold,
    /// The collector saw two outbox epochs write one source, or a seq
    /// re-sent with different content within an epoch.
    SourceConflict,
}

impl RuleType {
    pub const ALL: [RuleType; 10] = [
        RuleType::PumpFailed,
        RuleType::PumpStartedOverdue,
        RuleType::PumpFinishedOverdue,
        RuleType::PatternMatch,
        RuleType::PumpCompletedValueTooHigh,
        RuleType::PumpCompletedValueTooLow,
        RuleType::NodeHeartbeatOverdue,
        RuleType::ServiceUnhealthy,
        RuleType::MetricThreshold,
        RuleType::SourceConflict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RuleType::PumpFailed => "pump_failed",
            RuleType::PumpStartedOverdue => "pump_started_overdue",
            RuleType::PumpFinishedOverdue => "pump_finished_overdue",
            RuleType::PatternMatch => "pattern_match",
            RuleType::PumpCompletedValueTooHigh => "pump_completed_value_too_high",
            RuleType::PumpCompletedValueTooLow => "pump_completed_value_too_low",
            RuleType::NodeHeartbeatOverdue => "node_heartbeat_overdue",
            RuleType::ServiceUnhealthy => "service_unhealthy",
            RuleType::MetricThreshold => "metric_threshold",
            RuleType::SourceConflict => "source_conflict",
        }
    }

    pub fn parse(s: &str) -> Option<RuleType> {
        RuleType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// What the rule type watches, for `GET /api/v1/notification-rule-types`.
    pub fn description(self) -> &'static str {
        match self {
            RuleType::PumpFailed => "A run of a matching pipe failed (pump-failed); resolves on the pipe's next pump-completed.",
            RuleType::PumpStartedOverdue => "No pump-started within the pipe's schedule (schedule_interval or cron_expr from the node's config snapshot, or params.interval) plus params.grace, measured in the source's event time.",
            RuleType::PumpFinishedOverdue => "A run started and did not complete or fail within params.limit (source event time).",
            RuleType::PatternMatch => "A * / ? wildcard or a regex matched reason_why_stopped, traceback or original_error_message of an execution event, or the message of a log record.",
            RuleType::PumpCompletedValueTooHigh => "A metrics key of a pump-completed event (optionally summed over params.interval) is above params.limit.",
            RuleType::PumpCompletedValueTooLow => "A metrics key of a pump-completed event (optionally summed over params.interval) is below params.limit.",
            RuleType::NodeHeartbeatOverdue => "No record at all (health records count) arrived from a source for params.interval.",
            RuleType::ServiceUnhealthy => "A health record with status failed (or one of params.statuses).",
            RuleType::MetricThreshold => "A pushed metric sample (remote-write or OTLP) matching params.metric and params.labels compares true against params.value for params.for.",
            RuleType::SourceConflict => "The collector refused records of a source because two outbox epochs wrote it, or a seq was re-sent with different content; resolves when no conflict was reported for params.resolve_after.",
        }
    }
}

impl fmt::Display for RuleType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How loud an alert is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    #[default]
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

fn default_pipes() -> Vec<String> {
    vec!["*".into()]
}

fn default_repeat_interval() -> Span {
    Span::secs(3600)
}

/// A notification rule as accepted by `POST /api/v1/notification-rules`
/// and returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationRule {
    /// Unique id; generated when empty or absent on create.
    #[serde(default)]
    pub id: String,
    /// Shown in notifications (Alertmanager's `alertname`).
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(rename = "type")]
    pub rule_type: RuleType,
    /// The subscription whose records the rule watches (defaults to the
    /// caller's).
    #[serde(default)]
    pub subscription: String,
    /// Glob on the record's source (node id); all sources when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Globs on pipe ids (`*`, `?`, `[...]`); default all pipes.
    #[serde(default = "default_pipes")]
    pub pipes: Vec<String>,
    /// Parameters of the rule type; see `rule-params-<type>.json`.
    #[serde(default)]
    pub params: Value,
    #[serde(default)]
    pub severity: Severity,
    /// Names of receivers of the rule's subscription.
    #[serde(default)]
    pub receivers: Vec<String>,
    /// Time before a still-firing alert notifies again with the count of
    /// further events (default 1 h).
    #[serde(default = "default_repeat_interval")]
    pub repeat_interval: Span,
    /// Labels (e.g. `["source"]`) whose values group the rule's alerts:
    /// alerts of one group that start firing (or resolve) within
    /// `group_wait` of each other go out as one notification listing them
    /// (Alertmanager's grouping). Empty: one notification per alert.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
    /// How long a group waits for more alerts before it goes out (default
    /// 30 s when `group_by` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_wait: Option<Span>,
}

/// An execution event a `pump_failed` rule can page on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FailureEvent {
    /// A run failed.
    PumpFailed,
    /// The source could not read an entity (the event names its id only).
    ReadError,
    /// The sink could not write an entity (the event names its id only).
    WriteError,
}

impl FailureEvent {
    pub const ALL: [FailureEvent; 3] = [
        FailureEvent::PumpFailed,
        FailureEvent::ReadError,
        FailureEvent::WriteError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureEvent::PumpFailed => "pump-failed",
            FailureEvent::ReadError => "read-error",
            FailureEvent::WriteError => "write-error",
        }
    }

    /// The execution event type it is.
    pub fn event_type(self) -> crate::EventType {
        match self {
            FailureEvent::PumpFailed => crate::EventType::PumpFailed,
            FailureEvent::ReadError => crate::EventType::ReadError,
            FailureEvent::WriteError => crate::EventType::WriteError,
        }
    }
}

fn default_failure_events() -> Vec<FailureEvent> {
    vec![FailureEvent::PumpFailed]
}

/// Parameters of `pump_failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PumpFailedParams {
    /// The events that fire the alert (default `["pump-failed"]`). With
    /// `read-error` or `write-error` the alert resolves only on a
    /// `pump-completed` whose run had no read and no write errors
    /// (`entities.read_errors_last_run` and `write_errors_last_run` zero
    /// or absent); with `pump-failed` alone, on the pipe's next
    /// `pump-completed`.
    #[serde(default = "default_failure_events")]
    pub event_types: Vec<FailureEvent>,
}

impl Default for PumpFailedParams {
    fn default() -> Self {
        PumpFailedParams {
            event_types: default_failure_events(),
        }
    }
}

fn default_grace() -> Span {
    Span::secs(300)
}

/// `pump_started_overdue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PumpStartedOverdueParams {
    /// Allowance after the expected start (default 5 min, Sesam's).
    #[serde(default = "default_grace")]
    pub grace: Span,
    /// Expected time between starts; when absent, the pipe's
    /// `pump.schedule_interval` / `pump.cron_expr` from the node's config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Span>,
}

/// `pump_finished_overdue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PumpFinishedOverdueParams {
    /// Longest a run may take.
    pub limit: Span,
}

/// Which text a `pattern_match` rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PatternField {
    ReasonWhyStopped,
    Traceback,
    OriginalErrorMessage,
    /// The message of a `log` record (pipes then match the log's `pipe`
    /// field when it has one).
    LogMessage,
}

impl PatternField {
    pub fn as_str(self) -> &'static str {
        match self {
            PatternField::ReasonWhyStopped => "reason_why_stopped",
            PatternField::Traceback => "traceback",
            PatternField::OriginalErrorMessage => "original_error_message",
            PatternField::LogMessage => "log_message",
        }
    }
}

/// How a `pattern_match` pattern is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PatternSyntax {
    /// `*` any text, `?` one character, matched against the whole text
    /// (Sesam's).
    #[default]
    Wildcard,
    /// A regular expression (Rust `regex` syntax) found anywhere.
    Regex,
}

fn default_resolve_after() -> Span {
    Span::secs(3600)
}

/// `pattern_match`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatternMatchParams {
    pub field: PatternField,
    pub pattern: String,
    #[serde(default)]
    pub syntax: PatternSyntax,
    /// A log-message alert resolves after this long without a match
    /// (execution-field alerts resolve on the pipe's next pump-completed).
    #[serde(default = "default_resolve_after")]
    pub resolve_after: Span,
}

/// `pump_completed_value_too_high` and `pump_completed_value_too_low`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueLimitParams {
    /// A key of the execution `metrics` dict, e.g.
    /// `entities.changes_last_run`.
    pub key: String,
    pub limit: f64,
    /// When set, the sum of the key over the runs completed in this window
    /// is compared instead of the last run's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Span>,
}

/// `node_heartbeat_overdue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeHeartbeatOverdueParams {
    /// Longest silence (no record of any kind) before the alert fires.
    pub interval: Span,
}

fn default_statuses() -> Vec<crate::HealthStatus> {
    vec![crate::HealthStatus::Failed]
}

/// `service_unhealthy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceUnhealthyParams {
    /// Statuses that fire (default `["failed"]`; add `degraded` to page on
    /// that too).
    #[serde(default = "default_statuses")]
    pub statuses: Vec<crate::HealthStatus>,
}

/// Comparison of a `metric_threshold` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Comparison {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Comparison {
    pub fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Comparison::Gt => left > right,
            Comparison::Ge => left >= right,
            Comparison::Lt => left < right,
            Comparison::Le => left <= right,
            Comparison::Eq => left == right,
            Comparison::Ne => left != right,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
            Comparison::Lt => "<",
            Comparison::Le => "<=",
            Comparison::Eq => "==",
            Comparison::Ne => "!=",
        }
    }
}

/// `metric_threshold`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricThresholdParams {
    /// Metric name, e.g. `node_filesystem_avail_bytes`.
    pub metric: String,
    /// Label values the series must have (exact match).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub op: Comparison,
    pub value: f64,
    /// How long the comparison must hold before the alert fires.
    #[serde(default, rename = "for")]
    pub for_: Span,
}

/// `source_conflict`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceConflictParams {
    /// The alert resolves after this long without a further conflict
    /// (default 1 h).
    #[serde(default = "default_resolve_after")]
    pub resolve_after: Span,
}

/// Where notifications go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReceiverType {
    /// POST of Alertmanager's webhook payload (version 4).
    Webhook,
    /// POST to an Alertmanager's `/api/v2/alerts` (give its base URL).
    Alertmanager,
}

fn default_timeout() -> Span {
    Span::secs(10)
}

fn yes() -> bool {
    true
}

/// A named receiver of one subscription (`PUT /api/v1/receivers/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Receiver {
    /// Taken from the path on PUT.
    #[serde(default)]
    pub name: String,
    /// Defaults to the caller's subscription.
    #[serde(default)]
    pub subscription: String,
    #[serde(rename = "type")]
    pub receiver_type: ReceiverType,
    /// `http` or `https` URL.
    pub url: String,
    /// When set (webhook only), `X-Signature: sha256=<hex HMAC-SHA256 of
    /// the body>` is sent. Write-only: the API shows `"<set>"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Per-request timeout (default 10 s).
    #[serde(default = "default_timeout")]
    pub timeout: Span,
    /// Send a notification when an alert resolves (default true).
    #[serde(default = "yes")]
    pub send_resolved: bool,
}

/// One label matcher of a silence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    pub name: String,
    pub value: String,
    /// `value` is a regex matched against the whole label value.
    #[serde(default, rename = "isRegex", alias = "is_regex")]
    pub is_regex: bool,
    /// `false` negates the matcher.
    #[serde(default = "yes", rename = "isEqual", alias = "is_equal")]
    pub is_equal: bool,
}

/// A silence: alerts whose labels match every matcher between `startsAt`
/// and `endsAt` still fire but do not notify.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Silence {
    #[serde(default)]
    pub id: String,
    /// Defaults to the caller's subscription; a silence only ever matches
    /// alerts of its subscription.
    #[serde(default)]
    pub subscription: String,
    pub matchers: Vec<Matcher>,
    /// RFC 3339; default now.
    #[serde(default, rename = "startsAt", alias = "starts_at")]
    pub starts_at: String,
    /// RFC 3339.
    #[serde(rename = "endsAt", alias = "ends_at")]
    pub ends_at: String,
    #[serde(default, rename = "createdBy", alias = "created_by")]
    pub created_by: String,
    #[serde(default)]
    pub comment: String,
}

/// One alert of a webhook payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAlert {
    /// `firing` or `resolved`.
    pub status: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339.
    pub starts_at: String,
    /// RFC 3339; `0001-01-01T00:00:00Z` while firing.
    pub ends_at: String,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
    pub fingerprint: String,
}

/// Alertmanager's webhook payload, version 4, as POSTed to `webhook`
/// receivers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPayload {
    /// Always `"4"`.
    pub version: String,
    pub group_key: String,
    pub truncated_alerts: u64,
    /// `firing` or `resolved`.
    pub status: String,
    pub receiver: String,
    pub group_labels: BTreeMap<String, String>,
    pub common_labels: BTreeMap<String, String>,
    pub common_annotations: BTreeMap<String, String>,
    #[serde(rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<WebhookAlert>,
}

/// Every notifier type's JSON Schema with its file name under `schemas/json/`.
pub fn notify_schemas() -> Vec<(String, schemars::Schema)> {
    use schemars::schema_for;
    let mut out = vec![
        (
            "notification-rule.json".to_string(),
            schema_for!(NotificationRule),
        ),
        ("receiver.json".to_string(), schema_for!(Receiver)),
        ("silence.json".to_string(), schema_for!(Silence)),
        (
            "webhook-payload.json".to_string(),
            schema_for!(WebhookPayload),
        ),
    ];
    for t in RuleType::ALL {
        out.push((format!("rule-params-{}.json", t.as_str()), params_schema(t)));
    }
    out
}

/// The JSON Schema of a rule type's `params`.
pub fn params_schema(t: RuleType) -> schemars::Schema {
    use schemars::schema_for;
    match t {
        RuleType::PumpFailed => schema_for!(PumpFailedParams),
        RuleType::PumpStartedOverdue => schema_for!(PumpStartedOverdueParams),
        RuleType::PumpFinishedOverdue => schema_for!(PumpFinishedOverdueParams),
        RuleType::PatternMatch => schema_for!(PatternMatchParams),
        RuleType::PumpCompletedValueTooHigh | RuleType::PumpCompletedValueTooLow => {
            schema_for!(ValueLimitParams)
        }
        RuleType::NodeHeartbeatOverdue => schema_for!(NodeHeartbeatOverdueParams),
        RuleType::ServiceUnhealthy => schema_for!(ServiceUnhealthyParams),
        RuleType::MetricThreshold => schema_for!(MetricThresholdParams),
        RuleType::SourceConflict => schema_for!(SourceConflictParams),
    }
}

//! Kind-specific record bodies (DESIGN.md section 3).
//!
//! Unknown fields are ignored when reading, which is what makes `execution`
//! and `health` bodies allow-listed: a field that is not declared here does
//! not survive a decode and re-encode, so it can never be shipped.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Severity of a service log line, as `tracing` names it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

/// A service log line of the node or of a shipper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogBody {
    pub level: Level,
    /// The module path or component that logged the line.
    pub target: String,
    pub message: String,
    /// Structured fields of the event.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, Value>,
}

/// Sesam's execution-dataset event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EventType {
    PumpStarted,
    PumpCompleted,
    PumpFailed,
    PumpEnded,
    ReadError,
    WriteError,
    PumpEnabled,
    PumpDisabled,
    PumpOffsetSet,
    EntitiesReposted,
    PumpDiscardRetries,
}

impl EventType {
    pub const ALL: [EventType; 11] = [
        EventType::PumpStarted,
        EventType::PumpCompleted,
        EventType::PumpFailed,
        EventType::PumpEnded,
        EventType::ReadError,
        EventType::WriteError,
        EventType::PumpEnabled,
        EventType::PumpDisabled,
        EventType::PumpOffsetSet,
        EventType::EntitiesReposted,
        EventType::PumpDiscardRetries,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PumpStarted => "pump-started",
            EventType::PumpCompleted => "pump-completed",
            EventType::PumpFailed => "pump-failed",
            EventType::PumpEnded => "pump-ended",
            EventType::ReadError => "read-error",
            EventType::WriteError => "write-error",
            EventType::PumpEnabled => "pump-enabled",
            EventType::PumpDisabled => "pump-disabled",
            EventType::PumpOffsetSet => "pump-offset-set",
            EventType::EntitiesReposted => "entities-reposted",
            EventType::PumpDiscardRetries => "pump-discard-retries",
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EventType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| format!("unknown event type {s:?}"))
    }
}

/// How a pump run read its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncType {
    Full,
    Partial,
    Incremental,
}

/// The `metrics` dict of an execution entity, with Sesam's dotted key names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExecutionMetrics {
    /// Entities read from the source in the run.
    #[serde(
        rename = "entities.entities_last_run",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entities_last_run: Option<u64>,
    /// Entities written to the sink that differed from what it held.
    #[serde(
        rename = "entities.changes_last_run",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub changes_last_run: Option<u64>,
    #[serde(
        rename = "entities.read_errors_last_run",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub read_errors_last_run: Option<u64>,
    #[serde(
        rename = "entities.write_errors_last_run",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub write_errors_last_run: Option<u64>,
    /// Seconds spent reading the source.
    #[serde(
        rename = "entities.source_time",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub source_time: Option<f64>,
    /// Seconds spent in the transform.
    #[serde(
        rename = "entities.transform_time",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub transform_time: Option<f64>,
    /// Seconds spent writing the sink.
    #[serde(
        rename = "entities.sink_time",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sink_time: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entities_per_second: Option<f64>,
    /// Peak memory of the run in bytes.
    #[serde(
        rename = "memory.total-peak",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub memory_total_peak: Option<u64>,
}

impl ExecutionMetrics {
    /// Looks a metric up by its Sesam key (`entities.changes_last_run`, ...).
    pub fn get(&self, key: &str) -> Option<f64> {
        match key {
            "entities.entities_last_run" => self.entities_last_run.map(|v| v as f64),
            "entities.changes_last_run" => self.changes_last_run.map(|v| v as f64),
            "entities.read_errors_last_run" => self.read_errors_last_run.map(|v| v as f64),
            "entities.write_errors_last_run" => self.write_errors_last_run.map(|v| v as f64),
            "entities.source_time" => self.source_time,
            "entities.transform_time" => self.transform_time,
            "entities.sink_time" => self.sink_time,
            "entities_per_second" => self.entities_per_second,
            "memory.total-peak" => self.memory_total_peak.map(|v| v as f64),
            _ => None,
        }
    }

    /// Every key [`ExecutionMetrics::get`] knows.
    pub const KEYS: [&'static str; 9] = [
        "entities.entities_last_run",
        "entities.changes_last_run",
        "entities.read_errors_last_run",
        "entities.write_errors_last_run",
        "entities.source_time",
        "entities.transform_time",
        "entities.sink_time",
        "entities_per_second",
        "memory.total-peak",
    ];
}

/// An entity of a pipe's execution dataset `system:pump:<pipe>`.
///
/// Times are RFC 3339 strings in UTC, as in Sesam's execution dataset;
/// durations are seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExecutionBody {
    /// The pipe's `_id`.
    pub pipe: String,
    pub event_type: EventType,
    /// Identifies one pump run; shared by its started and completed/failed events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// Run duration in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_time: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_type: Option<SyncType>,
    /// Seconds until the next scheduled run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_interval: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_why_stopped: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_error_message: Option<String>,
    #[serde(default)]
    pub metrics: ExecutionMetrics,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entities_succeeded: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entities_failed: Option<u64>,
    /// `_id` of the entity a write-error or failure is about (safe to ship).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    /// write-error: the sink's error code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// write-error: whether the write will be retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// Node-side only: full copy of the entity that made the run fail.
    /// The shipper strips it; it never leaves the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception_entity: Option<Value>,
    /// Node-side only (write-error): the entity that could not be written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<Value>,
}

impl ExecutionBody {
    /// An event with only the pipe and type set.
    pub fn new(pipe: impl Into<String>, event_type: EventType) -> Self {
        ExecutionBody {
            pipe: pipe.into(),
            event_type,
            run_id: None,
            start_time: None,
            end_time: None,
            total_time: None,
            sync_type: None,
            next_interval: None,
            reason_why_stopped: None,
            traceback: None,
            original_error_message: None,
            metrics: ExecutionMetrics::default(),
            entities_succeeded: None,
            entities_failed: None,
            entity_id: None,
            error_code: None,
            retryable: None,
            exception_entity: None,
            entity: None,
        }
    }
}

/// Overall or per-check health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
    Degraded,
    Failed,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Ok => "ok",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Failed => "failed",
        }
    }
}

/// One health check's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HealthCheck {
    pub name: String,
    pub status: HealthStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The result of a health check round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HealthBody {
    pub status: HealthStatus,
    #[serde(default)]
    pub checks: Vec<HealthCheck>,
}

/// A snapshot of the node's configuration (redacted before it is shipped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigBody {
    /// Hex digest identifying this configuration.
    pub hash: String,
    /// The configuration entities (`{"_id": ..., "type": ...}` objects).
    pub config: Vec<Value>,
}

/// A kernel log line or a line of a tailed file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SystemBody {
    /// Syslog facility name (`kern`, `user`, `daemon`, ...), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facility: Option<String>,
    /// Syslog priority 0 (emerg) to 7 (debug), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    pub message: String,
    /// The tailed file the line came from; absent for kernel lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

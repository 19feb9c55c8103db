//! The labels of a record (its stream) and the line stored for it.
//!
//! Labels are the low-cardinality dimensions operators select on, like
//! Loki's stream labels: `subscription`, `source`, `kind`, `level`, and for
//! execution events `pipe` and `event_type` (a `log` record whose `fields`
//! carry a string `pipe` gets that label too). High-cardinality values
//! (`run_id`, messages, metrics) stay in the line, where `| json` reaches
//! them.
//!
//! `level` is `ERROR`, `WARN`, `INFO` or `DEBUG`/`TRACE` for every kind:
//! - `log`: its own level;
//! - `execution`: `ERROR` for `pump-failed`, `read-error` and `write-error`,
//!   `INFO` otherwise;
//! - `health`: `ERROR` for `failed`, `WARN` for `degraded`, `INFO` for `ok`;
//! - `system`: syslog priority 0-3 `ERROR`, 4 `WARN`, 5-6 `INFO`, 7 `DEBUG`
//!   (`INFO` when unknown);
//! - `config`: `INFO`.

use std::collections::BTreeMap;

use schemas::{Body, EventType, HealthStatus, Record};

/// A stream's label set, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// Label names every stream may have, in the order they are documented.
pub const LABEL_NAMES: [&str; 6] = [
    "subscription",
    "source",
    "kind",
    "level",
    "pipe",
    "event_type",
];

/// The labels of `record`.
pub fn record_labels(record: &Record) -> Labels {
    let mut l = Labels::new();
    l.insert("subscription".into(), record.subscription.clone());
    l.insert("source".into(), record.source.clone());
    l.insert("kind".into(), record.kind().as_str().into());
    let level = match &record.body {
        Body::Log(b) => {
            if let Some(serde_json::Value::String(p)) = b.fields.get("pipe") {
                l.insert("pipe".into(), p.clone());
            }
            b.level.as_str()
        }
        Body::Execution(b) => {
            l.insert("pipe".into(), b.pipe.clone());
            l.insert("event_type".into(), b.event_type.as_str().into());
            match b.event_type {
                EventType::PumpFailed | EventType::ReadError | EventType::WriteError => "ERROR",
                _ => "INFO",
            }
        }
        Body::Health(b) => match b.status {
            HealthStatus::Ok => "INFO",
            HealthStatus::Degraded => "WARN",
            HealthStatus::Failed => "ERROR",
        },
        Body::Config(_) => "INFO",
        Body::System(b) => match b.priority {
            Some(0..=3) => "ERROR",
            Some(4) => "WARN",
            Some(7) => "DEBUG",
            _ => "INFO",
        },
    };
    l.insert("level".into(), level.into());
    l
}

/// A canonical string of a label set, used to find its stream.
pub fn labels_key(labels: &Labels) -> String {
    let mut s = String::with_capacity(96);
    for (k, v) in labels {
        s.push_str(k);
        s.push('\u{1}');
        s.push_str(v);
        s.push('\u{2}');
    }
    s
}

/// The stored line of a record: its body as compact JSON.
pub fn record_line(record: &Record) -> Result<Vec<u8>, serde_json::Error> {
    match &record.body {
        Body::Log(b) => serde_json::to_vec(b),
        Body::Execution(b) => serde_json::to_vec(b),
        Body::Health(b) => serde_json::to_vec(b),
        Body::Config(b) => serde_json::to_vec(b),
        Body::System(b) => serde_json::to_vec(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{ExecutionBody, Level, LogBody, SystemBody};

    fn rec(body: Body) -> Record {
        Record {
            seq: 1,
            ts: 0,
            source: "node-1".into(),
            subscription: "acme".into(),
            body,
        }
    }

    #[test]
    fn execution_events_get_pipe_event_type_and_level() {
        let l = record_labels(&rec(Body::Execution(Box::new(ExecutionBody::new(
            "orders",
            EventType::PumpFailed,
        )))));
        assert_eq!(l["pipe"], "orders");
        assert_eq!(l["event_type"], "pump-failed");
        assert_eq!(l["level"], "ERROR");
        assert_eq!(l["kind"], "execution");
        assert_eq!(l["subscription"], "acme");
    }

    #[test]
    fn log_lines_take_pipe_from_fields_and_system_maps_priority() {
        let mut fields = BTreeMap::new();
        fields.insert("pipe".to_string(), serde_json::json!("crm"));
        let l = record_labels(&rec(Body::Log(LogBody {
            level: Level::Warn,
            target: "t".into(),
            message: "m".into(),
            fields,
        })));
        assert_eq!(l["pipe"], "crm");
        assert_eq!(l["level"], "WARN");
        assert!(!l.contains_key("event_type"));
        let s = record_labels(&rec(Body::System(SystemBody {
            facility: None,
            priority: Some(3),
            message: "oops".into(),
            file: None,
        })));
        assert_eq!(s["level"], "ERROR");
    }

    #[test]
    fn labels_key_distinguishes_sets() {
        let mut a = Labels::new();
        a.insert("a".into(), "bc".into());
        let mut b = Labels::new();
        b.insert("ab".into(), "c".into());
        assert_ne!(labels_key(&a), labels_key(&b));
    }
}

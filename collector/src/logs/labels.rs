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
pub const LABEL_NAMES: [&str; 7] = [
    "subscription",
    "source",
    "kind",
    "level",
    "pipe",
    "event_type",
    OVERFLOW_LABEL,
];

/// The label of streams that hold records whose free-form label was
/// dropped; its value names the dropped label.
pub const OVERFLOW_LABEL: &str = "overflow";
/// The free-form label that counts against the stream limit.
pub const FREE_FORM_LABEL: &str = "pipe";

/// `labels` without the free-form label, marked with `overflow="pipe"`;
/// `None` when `labels` has no free-form label.
pub fn overflow_labels(labels: &Labels) -> Option<Labels> {
    if !labels.contains_key(FREE_FORM_LABEL) {
        return None;
    }
    let mut l = labels.clone();
    l.remove(FREE_FORM_LABEL);
    l.insert(OVERFLOW_LABEL.into(), FREE_FORM_LABEL.into());
    Some(l)
}

/// The record-specific label values: (pipe, event_type, level).
fn parts(record: &Record) -> (Option<&str>, Option<&'static str>, &'static str) {
    match &record.body {
        Body::Log(b) => {
            let pipe = match b.fields.get("pipe") {
                Some(serde_json::Value::String(p)) => Some(p.as_str()),
                _ => None,
            };
            (pipe, None, b.level.as_str())
        }
        Body::Execution(b) => {
            let level = match b.event_type {
                EventType::PumpFailed | EventType::ReadError | EventType::WriteError => "ERROR",
                _ => "INFO",
            };
            (Some(b.pipe.as_str()), Some(b.event_type.as_str()), level)
        }
        Body::Health(b) => {
            let level = match b.status {
                HealthStatus::Ok => "INFO",
                HealthStatus::Degraded => "WARN",
                HealthStatus::Failed => "ERROR",
            };
            (None, None, level)
        }
        Body::Config(_) => (None, None, "INFO"),
        Body::System(b) => {
            let level = match b.priority {
                Some(0..=3) => "ERROR",
                Some(4) => "WARN",
                Some(7) => "DEBUG",
                _ => "INFO",
            };
            (None, None, level)
        }
    }
}

/// The labels of `record`.
pub fn record_labels(record: &Record) -> Labels {
    let (pipe, event_type, level) = parts(record);
    let mut l = Labels::new();
    l.insert("subscription".into(), record.subscription.clone());
    l.insert("source".into(), record.source.clone());
    l.insert("kind".into(), record.kind().as_str().into());
    l.insert("level".into(), level.into());
    if let Some(p) = pipe {
        l.insert("pipe".into(), p.into());
    }
    if let Some(e) = event_type {
        l.insert("event_type".into(), e.into());
    }
    l
}

/// Writes `labels_key(&record_labels(record))` into `out` without building
/// the map (the ingest hot path looks streams up by it).
pub fn record_labels_key(record: &Record, out: &mut String) {
    let (pipe, event_type, level) = parts(record);
    out.clear();
    let mut push = |k: &str, v: &str| {
        out.push_str(k);
        out.push('\u{1}');
        out.push_str(v);
        out.push('\u{2}');
    };
    // Sorted by name, as in the BTreeMap.
    if let Some(e) = event_type {
        push("event_type", e);
    }
    push("kind", record.kind().as_str());
    push("level", level);
    if let Some(p) = pipe {
        push("pipe", p);
    }
    push("source", &record.source);
    push("subscription", &record.subscription);
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
    fn fast_key_equals_the_key_of_the_label_map() {
        let mut fields = BTreeMap::new();
        fields.insert("pipe".to_string(), serde_json::json!("crm"));
        let records = [
            rec(Body::Execution(Box::new(ExecutionBody::new(
                "orders",
                EventType::PumpStarted,
            )))),
            rec(Body::Log(LogBody {
                level: Level::Debug,
                target: "t".into(),
                message: "m".into(),
                fields,
            })),
            rec(Body::Log(LogBody {
                level: Level::Error,
                target: "t".into(),
                message: "m".into(),
                fields: BTreeMap::new(),
            })),
            rec(Body::System(SystemBody {
                facility: None,
                priority: Some(4),
                message: "x".into(),
                file: None,
            })),
        ];
        let mut buf = String::new();
        for r in &records {
            record_labels_key(r, &mut buf);
            assert_eq!(buf, labels_key(&record_labels(r)), "{r:?}");
        }
    }

    #[test]
    fn overflow_labels_drop_pipe_and_mark_the_stream() {
        let mut fields = BTreeMap::new();
        fields.insert("pipe".to_string(), serde_json::json!("crm"));
        let l = record_labels(&rec(Body::Log(LogBody {
            level: Level::Warn,
            target: "t".into(),
            message: "m".into(),
            fields,
        })));
        let o = overflow_labels(&l).expect("has a pipe");
        assert!(!o.contains_key("pipe"));
        assert_eq!(o["overflow"], "pipe");
        assert_eq!(o["level"], "WARN");
        assert_eq!(overflow_labels(&o), None, "no pipe left to drop");
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

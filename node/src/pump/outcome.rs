//! What the stages of a run produce: the entities a source read, what a
//! sink wrote, the per-entity errors on the way, and the [`Failure`] that
//! stops a run with what Sesam's `pump-failed` event carries.

use schemas::time::{now_nanos, rfc3339_from_nanos};
use schemas::{EventType, ExecutionBody};
use serde_json::Value;

use crate::limits::{MAX_ERROR_EVENTS, MAX_ID_CHARS};

/// Why a run stopped, with what Sesam's pump-failed event carries.
#[derive(Debug, Default)]
pub struct Failure {
    pub reason: String,
    pub original: String,
    pub traceback: String,
    pub exception_entity: Option<Value>,
    pub read_errors: EntityErrors,
    pub write_errors: EntityErrors,
}

/// A failure whose reason is also its original message and traceback.
pub fn fail(reason: String) -> Box<Failure> {
    Box::new(Failure {
        original: reason.clone(),
        traceback: reason.clone(),
        reason,
        ..Failure::default()
    })
}

/// The `read-error` or `write-error` events of one run: every error is
/// counted, the first [`MAX_ERROR_EVENTS`] become events (so a source of a
/// million bad entities cannot flood the execution dataset).
#[derive(Debug, Default)]
pub struct EntityErrors {
    pub count: u64,
    pub events: Vec<ExecutionBody>,
}

impl EntityErrors {
    pub fn push(&mut self, event: ExecutionBody) {
        self.count += 1;
        if self.events.len() < MAX_ERROR_EVENTS {
            self.events.push(event);
        }
    }

    pub fn append(&mut self, other: EntityErrors) {
        self.count += other.count;
        for e in other.events {
            if self.events.len() < MAX_ERROR_EVENTS {
                self.events.push(e);
            }
        }
    }
}

/// An entity `_id` as an event may carry it: control characters escaped
/// (a NUL cannot be a key of the execution dataset) and cut at
/// [`MAX_ID_CHARS`].
pub fn printable_id(id: &str) -> String {
    let mut out = String::new();
    for c in id.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.chars().count() >= MAX_ID_CHARS {
            out.push_str("...");
            break;
        }
    }
    out
}

/// A `read-error` or `write-error` event about one entity: its `_id` when
/// it has one, never the entity itself.
pub fn entity_error(
    pipe: &str,
    event_type: EventType,
    entity_id: Option<&str>,
    message: String,
) -> ExecutionBody {
    let mut e = ExecutionBody::new(pipe.to_string(), event_type);
    e.entity_id = entity_id.map(printable_id);
    e.original_error_message = Some(message);
    e.end_time = Some(rfc3339_from_nanos(now_nanos()));
    e
}

/// What a source read.
#[derive(Debug, Default)]
pub struct SourceBatch {
    pub entities: Vec<Value>,
    /// The new offset of a dataset source.
    pub offset: Option<u64>,
    pub read_errors: EntityErrors,
    /// Whether the source may have more after this page.
    pub more: bool,
}

/// What a sink wrote.
#[derive(Debug, Default)]
pub struct SinkResult {
    pub changes: u64,
    pub write_errors: EntityErrors,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_ids_escape_control_characters_and_are_bounded() {
        assert_eq!(printable_id("a\u{0}b\n"), "a\\u{0}b\\n");
        let long = printable_id(&"x".repeat(5000));
        assert_eq!(long.chars().count(), MAX_ID_CHARS + 3);
    }

    #[test]
    fn entity_errors_count_all_and_keep_the_first_events() {
        let mut e = EntityErrors::default();
        for i in 0..(MAX_ERROR_EVENTS + 5) {
            e.push(entity_error(
                "p",
                EventType::ReadError,
                Some(&i.to_string()),
                "x".into(),
            ));
        }
        assert_eq!(e.count, (MAX_ERROR_EVENTS + 5) as u64);
        assert_eq!(e.events.len(), MAX_ERROR_EVENTS);
        let mut total = EntityErrors::default();
        total.append(e);
        assert_eq!(total.count, (MAX_ERROR_EVENTS + 5) as u64);
    }
}

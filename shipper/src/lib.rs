//! The shipper: the durable outbox records are appended to, and (in later
//! modules) redaction and delivery to the collector.

pub mod outbox;
pub mod redact;

pub use outbox::{Outbox, OutboxConfig, OutboxError, WhenFull};

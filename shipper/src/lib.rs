//! The shipper: the only door out of a node's host.
//!
//! - [`outbox`]: the durable RocksDB queue every record is appended to;
//! - [`redact`]: what is removed or masked before anything leaves;
//! - [`deliver`]: batches from an outbox cursor to the collector (and OTLP),
//!   exactly-once in effect thanks to the collector's dedupe;
//! - [`kmsg`] and [`tail`]: the host log sources of `sesam-shipper`.

#![forbid(unsafe_code)]

pub mod deliver;
pub mod kmsg;
pub mod outbox;
pub mod redact;
pub mod service;
pub mod tail;
pub mod units;

pub use outbox::{Outbox, OutboxConfig, OutboxError, WhenFull};

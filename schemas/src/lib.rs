//! Wire types shared by every component: the record envelope, its bodies, the
//! ingest batch, the MessagePack codec, and the Prometheus wire code
//! ([`prom`]: remote-write messages, metric types, text exposition), and
//! pipe schedules ([`schedule`]: Sesam's cron expressions).
//!
//! `schemas/json/` holds a JSON Schema for each wire type, generated from
//! these types by [`wire_schemas`]; a test fails when a committed file and
//! its Rust type drift apart (regenerate with `UPDATE_SCHEMAS=1 cargo test
//! -p schemas`).

#![forbid(unsafe_code)]

pub mod batch;
pub mod body;
pub mod codec;
pub mod notify;
pub mod prom;
pub mod record;
pub mod schedule;
pub mod time;

pub use batch::{IngestBatch, IngestResponse};
pub use body::{
    ConfigBody, EventType, ExecutionBody, ExecutionMetrics, HealthBody, HealthCheck, HealthStatus,
    Level, LogBody, SyncType, SystemBody,
};
pub use codec::{from_msgpack, to_msgpack, write_msgpack, CodecError};
pub use record::{Body, Kind, Record};

/// Every wire type's JSON Schema with its file name under `schemas/json/`.
pub fn wire_schemas() -> Vec<(String, schemars::Schema)> {
    use schemars::schema_for;
    let mut out: Vec<(String, schemars::Schema)> = vec![
        ("record.json", schema_for!(Record)),
        ("body-log.json", schema_for!(LogBody)),
        ("body-execution.json", schema_for!(ExecutionBody)),
        ("body-health.json", schema_for!(HealthBody)),
        ("body-config.json", schema_for!(ConfigBody)),
        ("body-system.json", schema_for!(SystemBody)),
        ("ingest-batch.json", schema_for!(IngestBatch)),
        ("ingest-response.json", schema_for!(IngestResponse)),
    ]
    .into_iter()
    .map(|(f, s)| (f.to_string(), s))
    .collect();
    out.extend(notify::notify_schemas());
    out
}

//! The ingest batch a shipper POSTs to the collector, and the answer.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::record::Record;

/// Body of `POST /api/v1/ingest` (MessagePack, usually zstd-compressed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IngestBatch {
    /// The source every record of the batch comes from.
    pub source: String,
    /// The tenant the records belong to.
    pub subscription: String,
    pub records: Vec<Record>,
    /// Records the source's outbox dropped (by its `when_full` policy) since
    /// the previous acknowledged batch.
    #[serde(default)]
    pub dropped: u64,
}

/// The collector's answer to an accepted batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IngestResponse {
    /// Records stored for the first time.
    pub accepted: u64,
    /// Records already stored earlier (same subscription, source and seq).
    pub duplicates: u64,
}

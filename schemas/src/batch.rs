//! The ingest batch a shipper POSTs to the collector, and the answer.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::record::Record;

/// Longest accepted [`IngestBatch::epoch`].
pub const MAX_EPOCH_LEN: usize = 64;

/// Whether `epoch` is an acceptable [`IngestBatch::epoch`].
pub fn valid_epoch(epoch: &str) -> bool {
    epoch.len() <= MAX_EPOCH_LEN
        && epoch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Body of `POST /api/v1/ingest` (MessagePack, usually zstd-compressed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IngestBatch {
    /// The source every record of the batch comes from.
    pub source: String,
    /// The tenant the records belong to.
    pub subscription: String,
    /// The outbox epoch: a random id made when the source's outbox was
    /// created. Sequence numbers are unique within one epoch; a wiped outbox
    /// (or a second node with the same id) has a new epoch and so a new
    /// sequence space. Empty from shippers that predate epochs. At most
    /// [`MAX_EPOCH_LEN`] characters of `[0-9A-Za-z_-]`.
    #[serde(default)]
    pub epoch: String,
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

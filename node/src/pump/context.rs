//! The narrow view of the node a pump runs with.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::emit::Emitter;
use crate::metrics::Metrics;
use crate::store::Store;

/// What a pump may use of the node; cheap to clone.
#[derive(Debug, Clone)]
pub struct PumpContext {
    pub store: Store,
    pub http: reqwest::Client,
    pub events: Emitter,
    pub metrics: Metrics,
    /// The largest answer a `json` source may send (`--max-source-response-bytes`).
    pub max_source_bytes: u64,
    /// Entities a dataset source reads per page (`--source-page-entities`).
    pub source_page_entities: usize,
    /// The node's shutdown; every pump task stops with it.
    pub shutdown: CancellationToken,
    /// How long a running pump may go on after shutdown began.
    pub run_grace: Duration,
    /// Where pump tasks run, so that shutdown waits for them.
    pub tracker: TaskTracker,
    /// Wakes the health task after a run (its pipe check may change).
    pub health_wakeup: Arc<Notify>,
}

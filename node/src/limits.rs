//! Bounds on everything a client or a system can make the node hold, read
//! or do. Each field is a flag of `sesam-node` with the default below (sized
//! for 2 cores / 24 GiB); a request over a bound is refused at the edge with
//! a 4xx naming the field and the limit, and counted in
//! `sesam_node_api_refused_total{reason}`.
//!
//! Bounds that are part of the configuration language rather than of the
//! machine are constants here ([`MAX_ID_CHARS`], [`MAX_URL_CHARS`], ...);
//! they are documented with the configuration.

use std::time::Duration;

/// Longest `_id` of a configuration entity, dataset name or secret name.
pub const MAX_ID_CHARS: usize = 1024;
/// Longest `base_url` / `url_pattern` of a system.
pub const MAX_URL_CHARS: usize = 8192;
/// Most headers of a system.
pub const MAX_HEADERS: usize = 100;
/// Largest `batch_size` of a `json` sink.
pub const MAX_BATCH_SIZE: usize = 10_000;
/// Largest body of `POST /api/pipes/{id}/pump`.
pub const MAX_PUMP_BODY_BYTES: usize = 64 << 10;
/// Entities per page when a request gives no `limit`.
pub const DEFAULT_PAGE_ENTITIES: usize = 10_000;
/// Redirects a `json` system may answer (same origin only).
pub const MAX_REDIRECTS: usize = 5;
/// Longest `_id` of an entity a pipe writes into a dataset (a longer one
/// is a `write-error`).
pub const MAX_ENTITY_ID_CHARS: usize = 4096;
/// Stored bytes a dataset source reads per page (a page also ends at
/// `--source-page-entities`).
pub const SOURCE_PAGE_BYTES: usize = 32 << 20;
/// `read-error` and `write-error` events recorded per run (every error is
/// counted in the run's metrics; only the first ones become events).
pub const MAX_ERROR_EVENTS: usize = 100;

/// The machine-sized bounds; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Body of `PUT /api/config` and of single pipe/system uploads (413 above).
    pub max_config_bytes: usize,
    /// Entities in one configuration (400 above).
    pub max_config_entities: usize,
    /// Body of `PUT`/`POST /api/secrets` (413 above).
    pub max_secrets_bytes: usize,
    /// Secrets stored in all (400 above).
    pub max_secrets: usize,
    /// Largest `limit` of an entity list (400 above).
    pub max_page_entities: usize,
    /// Bytes of entities in one answer: a page stops early at this size and
    /// the client continues with `since` (never refused).
    pub max_page_bytes: usize,
    /// Body a `json` source may answer; a larger answer fails the run.
    pub max_source_bytes: u64,
    /// API requests handled at once (503 above; `/api/ping` and
    /// `/api/health` are not counted).
    pub max_concurrent_requests: usize,
    /// `GET /api/health` runs a fresh round (a synced probe write) at most
    /// this often; calls in between get the last result, so the open
    /// endpoint cannot be used to drive the disk.
    pub health_min_interval: Duration,
    /// Entities a dataset source reads, transforms and writes at a time:
    /// a run's memory is bounded by a page, whatever the backlog.
    pub source_page_entities: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_config_bytes: 8 << 20,
            max_config_entities: 10_000,
            max_secrets_bytes: 1 << 20,
            max_secrets: 1_000,
            max_page_entities: 100_000,
            max_page_bytes: 64 << 20,
            max_source_bytes: 256 << 20,
            max_concurrent_requests: 64,
            health_min_interval: Duration::from_secs(1),
            source_page_entities: 10_000,
        }
    }
}

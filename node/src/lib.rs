//! A small Sesam node: pipes that move entities between datasets and HTTP
//! systems, RocksDB-backed datasets, the execution dataset of every pipe,
//! the service API, and the emission of everything observable (execution
//! events, service logs, health, configuration) into the durable outbox at
//! `<data-dir>/outbox` for the shipper.
//!
//! Modules, from the bottom up (no module imports one above it):
//! [`limits`] (every bound and its default), [`files`] (private directories
//! and files), [`history`] (configuration versions), [`dtl`] (the DTL
//! subset), [`config`] (entities -> validated config), [`store`] (datasets,
//! offsets, secrets, configuration versions; on-disk layout), [`metrics`],
//! [`logs`] (tracing layer -> outbox), [`emit`] (records into the outbox,
//! events into the execution datasets), [`pump`] (the scheduler and the
//! runs of a pipe: `run`, `source`, `sink`, `system`), [`supervisor`] (the
//! pumps and the running configuration; reconfiguration), [`state`] (what
//! the API and background tasks share), [`health`], [`synthetic`] (a load
//! generator for tests and benchmarks), [`api`], [`node`] (start and
//! shutdown).

#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod dtl;
pub mod emit;
pub mod health;
pub mod history;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod pump;
pub mod state;
pub mod store;
pub mod supervisor;
pub mod synthetic;

pub use limits::Limits;
pub use logs::{outbox_log_layer, LogReceiver, OutboxLogLayer, OutboxLogLevel};
pub use node::{run, Listen, Node, NodeConfig, NodeError};

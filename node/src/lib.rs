//! A small Sesam node: pipes that move entities between datasets and HTTP
//! systems, RocksDB-backed datasets, the execution dataset of every pipe,
//! the service API, and the emission of everything observable (execution
//! events, service logs, health, configuration) into the durable outbox at
//! `<data-dir>/outbox` for the shipper.
//!
//! Modules: [`config`] (entities -> validated config), [`dtl`] (the DTL
//! subset), [`store`] (datasets, offsets, secrets; on-disk layout),
//! [`pump`] (scheduling and runs), [`state`] (shared state, outbox emission),
//! [`health`], [`metrics`], [`logs`] (tracing layer -> outbox), [`api`],
//! [`node`] (start, reconfigure, shutdown), [`synthetic`] (a load generator
//! for tests and benchmarks), [`limits`] (every bound and its default),
//! [`files`] (private directories and files).

#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod dtl;
pub mod files;
pub mod health;
pub mod history;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod pump;
pub mod state;
pub mod store;
pub mod synthetic;

pub use limits::Limits;
pub use logs::{outbox_log_layer, LogReceiver, OutboxLogLayer, OutboxLogLevel};
pub use node::{run, Listen, Node, NodeConfig, NodeError};

//! The notifier: notification rules evaluated against every record the
//! collector stores and every metric sample pushed to it, an alert
//! lifecycle (fire once, repeat with counts, resolve, silences,
//! inhibition, grouping) persisted in the collector's RocksDB, and durable
//! delivery to webhooks (Alertmanager's webhook payload v4, optional HMAC
//! signature) and to Alertmanager itself.
//!
//! The collector hosts it: it passes its database (opened with the
//! [`COLUMN_FAMILY`] column family), starts the evaluation thread over the
//! store's durable commit feed ([`Notifier::start_evaluator`], see
//! `feed.rs`) and hands it every commit's records
//! ([`Notifier::on_committed`], which never waits), calls
//! [`Notifier::on_samples`] for pushed metrics and
//! [`Notifier::on_source_conflict`] for refused sources, and serves the API
//! over [`Notifier`]'s methods. A store without a commit feed calls
//! [`Notifier::on_records`] after each commit instead (evaluation on the
//! caller's thread, within each subscription's budget, the rest deferred
//! in memory).
//!
//! Several collectors share subscriptions (one evaluates each at a time):
//! the collector moves a subscription's whole state with
//! [`Notifier::export_subscription`], [`Notifier::import_subscription`]
//! and [`Notifier::release_subscription`], and installs a [`Replication`]
//! hook ([`Notifier::set_replication`]) so that no notification is sent
//! before a state holding it is stored outside the collector.
//!
//! Tenants are isolated: rule and silence ids are scoped by subscription,
//! every input is bounded ([`Limits`]), each subscription's evaluation has
//! a time budget and a share of evaluation time, and receivers only reach
//! destinations the egress policy allows ([`EgressPolicy`]).
//!
//! # Layout (after Prometheus Alertmanager: dispatch, inhibit, silence,
//! notify, store)
//!
//! | module | what |
//! |---|---|
//! | `model` | keys, alerts, notifications, fingerprints, typed state changes |
//! | `rule`, `silence`, `receiver`, `validate` | validation into compiled objects |
//! | `limits`, `egress` | the bounds; the egress policy |
//! | `index` | which rules apply to which pipe, source, metric |
//! | `schedule` | deadlines: the timer sets, expected starts and ends |
//! | `engine` | the engine's state and its management |
//! | `dispatch` | the evaluation path: inputs, budgets, deferral, ticks |
//! | `feed`, `handoff`, `evaluator` | the store's commit feed and watermarks; the bounded hand-over from the store's writer; the evaluation thread |
//! | `share` | each subscription's share of evaluation time |
//! | `memory` | the engine's memory, estimated by part |
//! | `conditions/` | one file per rule family |
//! | `lifecycle` | fire, repeat, resolve, enqueue |
//! | `inhibit`, `group` | inhibition and returning sources; grouping |
//! | `alerts`, `budget` | the active alerts; evaluation budgets |
//! | `store` | the only place that knows RocksDB keys |
//! | `delivery`, `sender` | the queue, requests and retry policy; the delivery task |
//! | `service` | the notifier: engine, effects, timer task |
//! | `snapshot`, `statecodec`, `replication` | one subscription's state moved between notifiers (several collectors); its encoding; the replication hook and the delivery gate |
//! | `api`, `views` | CRUD and scope; alerts and history |
//! | `telemetry`, `clock`, `error` | metrics, time, errors |

#![forbid(unsafe_code)]

mod alerts;
pub mod api;
pub mod budget;
pub mod clock;
mod conditions;
pub mod delivery;
pub mod dispatch;
pub mod egress;
pub mod engine;
pub mod error;
mod evaluator;
pub mod feed;
mod group;
mod handoff;
mod index;
mod inhibit;
mod lifecycle;
pub mod limits;
pub mod memory;
pub mod model;
mod pipecodec;
pub mod receiver;
mod replication;
pub mod rule;
pub mod schedule;
mod sender;
pub mod service;
mod sharded;
mod share;
pub mod silence;
pub mod snapshot;
pub mod statecodec;
pub mod store;
mod telemetry;
pub mod validate;
pub mod views;

pub use api::{RulesFile, Scope};
pub use budget::Budget;
pub use clock::{Clock, ManualClock, SystemClock};
pub use delivery::DeliveryConfig;
pub use dispatch::{Input, SampleRef};
pub use egress::{Cidr, EgressPolicy};
pub use engine::Engine;
pub use error::{ErrorKind, NotifierError};
pub use evaluator::ROUND_RECORDS;
pub use feed::{Feed, FeedBacklog, FeedPos, FeedRead, FeedRecord};
pub use handoff::record_bytes;
pub use limits::Limits;
pub use memory::{Memory, Part};
pub use model::{Alert, DeliveryState, Notification, NotificationKind};
pub use replication::Replication;
pub use rule::RuleKey;
pub use service::{Notifier, NotifierConfig};
pub use snapshot::Exported;
pub use store::COLUMN_FAMILY;
pub use views::NotificationFilter;

/// Default repeat interval (Sesam's: one notification per rule per hour).
pub const DEFAULT_REPEAT: schemas::notify::Span = schemas::notify::Span::secs(3600);

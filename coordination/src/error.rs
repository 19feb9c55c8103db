//! Errors of the coordination crate: one enum per kind of call, each
//! variant naming what failed (the URL part, the subscription, the key, the
//! limit) and carrying the ZooKeeper error where there is one.

use std::time::Duration;

use crate::url::UrlError;

/// Errors of starting a coordinator and of changing its subscriptions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("coordination member id `{id}` is invalid: {reason}")]
    MemberId { id: String, reason: &'static str },
    #[error("coordination advertised URL is invalid: {reason}")]
    AdvertisedUrl { reason: &'static str },
    #[error("coordination session timeout {0:?} is outside 1s..=60s")]
    SessionTimeout(Duration),
    #[error("coordination {field} is invalid: {reason}")]
    Limit {
        field: &'static str,
        reason: &'static str,
    },
    #[error("subscription `{name}` is invalid for coordination: {reason}")]
    Subscription { name: String, reason: &'static str },
    #[error("{count} subscriptions exceed the coordination limit of {limit} (max_subscriptions)")]
    TooManySubscriptions { count: usize, limit: usize },
    #[error("connect to ZooKeeper {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: zookeeper_client::Error,
    },
    #[error("ZooKeeper {op} {path}: {source}")]
    Zk {
        op: &'static str,
        path: String,
        #[source]
        source: zookeeper_client::Error,
    },
    #[error("ZooKeeper node {path} holds unexpected data: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("the coordinator has stopped")]
    Stopped,
}

impl Error {
    pub(crate) fn zk(op: &'static str, path: &str, source: zookeeper_client::Error) -> Error {
        Error::Zk {
            op,
            path: path.to_string(),
            source,
        }
    }

    /// True when the ZooKeeper session this error came from is gone for good
    /// (a new session is needed).
    pub(crate) fn session_ended(&self) -> bool {
        use zookeeper_client::Error as Z;
        matches!(
            self,
            Error::Zk {
                source: Z::SessionExpired | Z::ClientClosed | Z::AuthFailed | Z::SessionMoved,
                ..
            }
        )
    }
}

/// Why [`crate::Coordinator::fence`] refused: the side effect must not
/// happen (the caller keeps it pending or drops it; it never performs it).
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// This coordinator does not own the subscription at that epoch (any
    /// more): it was released, moved, or the session lease ran out.
    #[error("not the owner of subscription `{subscription}` at epoch {epoch} (current local epoch: {current:?})")]
    NotOwner {
        subscription: String,
        epoch: u64,
        current: Option<u64>,
    },
    /// ZooKeeper says another owner took over since (the epoch moved on).
    #[error("subscription `{subscription}` was taken over: epoch {epoch} is no longer current")]
    Deposed { subscription: String, epoch: u64 },
    /// ZooKeeper could not confirm the epoch (disconnected, session lost).
    #[error(
        "cannot confirm epoch {epoch} of subscription `{subscription}` with ZooKeeper: {source}"
    )]
    Unavailable {
        subscription: String,
        epoch: u64,
        #[source]
        source: zookeeper_client::Error,
    },
}

impl FenceError {
    /// The metrics label of this refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            FenceError::NotOwner { .. } => "not_owner",
            FenceError::Deposed { .. } => "deposed",
            FenceError::Unavailable { .. } => "unavailable",
        }
    }
}

/// Errors of the versioned shared state (`get_versioned`, `set_if_version`).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state key `{key}` is invalid: {reason}")]
    Key { key: String, reason: &'static str },
    #[error("state value for `{key}` is {size} bytes, over the limit of {limit} (max_state_bytes; ZooKeeper refuses nodes over 1 MiB)")]
    TooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    /// The node's version is not the expected one (someone else wrote since
    /// it was read, or it exists when creation was asked, or it is gone).
    #[error("state `{key}` changed concurrently: expected {}", match .expected { Some(v) => format!("version {v}"), None => "no node".to_string() })]
    Conflict { key: String, expected: Option<i32> },
    #[error("queue `{key}` holds {limit} items already")]
    QueueFull { key: String, limit: i32 },
    #[error(transparent)]
    Fence(#[from] FenceError),
    #[error("not connected to ZooKeeper (no live session)")]
    NoSession,
    #[error("ZooKeeper {op} state `{key}`: {source}")]
    Zk {
        op: &'static str,
        key: String,
        #[source]
        source: zookeeper_client::Error,
    },
}

impl StateError {
    /// The metrics label of this refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            StateError::Key { .. } => "bad_key",
            StateError::TooLarge { .. } => "too_large",
            StateError::Conflict { .. } => "conflict",
            StateError::QueueFull { .. } => "queue_full",
            StateError::Fence(f) => f.reason(),
            StateError::NoSession => "no_session",
            StateError::Zk { .. } => "zookeeper",
        }
    }
}

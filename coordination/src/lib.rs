//! Collector coordination through ZooKeeper (`--coordination
//! zookeeper://host:port[,host:port]/chroot`): several collectors share one
//! set of subscriptions so that each subscription is owned by exactly one
//! live collector at a time, ownership spreads over the collectors and moves
//! when one dies or joins, and a deposed owner's late side effects are
//! refused by a fencing epoch.
//!
//! # Znode layout (under the chroot)
//!
//! | path | kind | data |
//! |---|---|---|
//! | `/members/<member-id>` | ephemeral | `{"id", "url"}` (advertised URL) |
//! | `/owners/<subscription>` | ephemeral | `{"member", "epoch"}` |
//! | `/epochs/<subscription>` | persistent | the last fencing epoch, decimal |
//! | `/state/<key...>` | persistent | caller's bytes (≤ `max_state_bytes`) |
//!
//! Subscriptions are percent-encoded into one path segment (see [`names`]).
//!
//! # Protocol
//!
//! - The designated owner of a subscription is the live member with the
//!   highest rendezvous weight ([`rendezvous`]): every member computes the
//!   same answer, and a membership change moves only what it must.
//! - A member claims a subscription it is designated for only when
//!   `/owners/<s>` does not exist, in one transaction: set `/epochs/<s>` to
//!   `epoch + 1` with a compare-and-set on its version, and create the
//!   ephemeral `/owners/<s>`. The epoch thus grows with every takeover.
//! - A member that is no longer designated (a member joined) publishes the
//!   loss locally first, then deletes `/owners/<s>`; the designated member
//!   is woken by the deletion and claims. A member that dies loses its
//!   owner nodes when ZooKeeper expires its session.
//!
//! # Guarantees
//!
//! - At most one owner at any instant, from the coordinators' point of
//!   view: a coordinator considers itself owner only while its *lease* is
//!   valid: half the session timeout after the send of its last answered
//!   heartbeat. ZooKeeper cannot expire the session (and free the owner
//!   node for someone else) before a full session timeout after that send.
//!   So a partitioned or paused owner stops ([`Coordinator::is_owner`]
//!   answers `None`, `owned: false` is published) before anyone else can
//!   claim.
//! - Fencing: [`Coordinator::fence`] checks on the server, in a
//!   transaction, that the epoch is still current; call it right before a
//!   durable side effect. [`Coordinator::set_if_version_fenced`] makes a
//!   state write and that check one transaction.
//! - Session expiry, reconnection and ZooKeeper restarts: on expiry
//!   everything is dropped, a new session is established, the member
//!   registers again and claims again (with new epochs). After a lapse of
//!   the lease with the session intact, owned subscriptions are re-acquired
//!   with a new epoch too, so an event consumer always sees `owned: false`
//!   before it owns again.
//!
//! # Use from the collector
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use coordination::{CoordinationUrl, Coordinator, CoordinatorConfig};
//!
//! let url: CoordinationUrl = "zookeeper://zk1:2181,zk2:2181/sesam".parse()?;
//! let mut cfg = CoordinatorConfig::new(url, "collector-1");
//! cfg.advertised_url = "http://10.0.0.5:8080".into();
//! let coord = Coordinator::start(cfg).await?;
//! coord.set_subscriptions(["acme", "globex"])?; // the same set on every collector
//! let mut changes = coord.changes();
//! while let Some(change) = changes.next().await {
//!     if change.owned {
//!         // Load the subscription's alert state (get_versioned) and start
//!         // evaluating its rules under change.epoch.
//!     } else {
//!         // Stop evaluating change.subscription now.
//!     }
//! #   break;
//! }
//! // Right before queueing a notification decided under `epoch`:
//! # let epoch = 1;
//! coord.fence("acme", epoch).await?; // an error: do not queue it
//! // Alert state written only by the current owner, compare-and-set:
//! let current = coord.get_versioned("alerts/acme").await?;
//! coord
//!     .set_if_version_fenced("alerts/acme", b"...", current.map(|v| v.version), "acme", epoch)
//!     .await?;
//! coord.shutdown().await; // releases at once instead of after the timeout
//! # Ok(())
//! # }
//! ```
//!
//! # Limits
//!
//! Every bound is a [`CoordinatorConfig`] field with a documented default:
//! session timeout, subscriptions per coordinator, state value size, claim
//! concurrency; names are bounded in [`names`], URLs in [`url`].

#![forbid(unsafe_code)]

mod coordinator;
mod error;
mod inspect;
mod metrics;
pub mod names;
mod ownership;
pub mod rendezvous;
mod state;
pub mod url;

pub use coordinator::{
    Coordinator, CoordinatorConfig, HandOver, HandOverFuture, Member, MAX_STATE_BYTES,
};
pub use error::{Error, FenceError, StateError};
pub use inspect::{inspect, Inspection, MAX_INSPECT_CHILDREN};
pub use ownership::{Ownership, OwnershipChanges, Snapshot};
pub use state::{Versioned, MAX_QUEUE_ITEMS};
pub use url::{CoordinationUrl, UrlError};

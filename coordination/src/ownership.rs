//! What a coordinator tells its collector: which subscriptions it owns, at
//! which fencing epoch, and when that changes.
//!
//! The coordinator publishes a [`Snapshot`] (the whole owned set) on a
//! `watch` channel each time it changes; [`OwnershipChanges`] turns the
//! snapshots into [`Ownership`] events by difference. A slow consumer thus
//! never makes the coordinator buffer without bound, and it never misses a
//! loss: if a subscription was lost and won back between two reads, the
//! epoch differs and the consumer sees `owned: false` for the old epoch
//! before `owned: true` for the new one.
//!
//! The [`Lease`] is the local bound on how long this process may believe
//! in its ownership without hearing from ZooKeeper (see `lib.rs`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// One change of ownership seen by one coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    pub subscription: String,
    /// The fencing epoch of the claim that started or ended.
    pub epoch: u64,
    /// `true`: this coordinator now owns the subscription at `epoch`;
    /// `false`: it stopped owning it (released, moved, lease ran out,
    /// session lost, coordinator stopped).
    pub owned: bool,
    /// When the coordinator published the change (for `owned: false` after a
    /// lease ran out this is a little after `is_owner` already answered
    /// `None`).
    pub at: Instant,
}

/// The owned set at one instant.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub owned: BTreeMap<String, u64>,
    pub at: Instant,
}

impl Snapshot {
    pub(crate) fn empty() -> Snapshot {
        Snapshot {
            owned: BTreeMap::new(),
            at: Instant::now(),
        }
    }
}

/// A stream of [`Ownership`] changes of one coordinator, starting with
/// `owned: true` for what it owns when the stream is made. Ends (`None`)
/// after the coordinator stopped, once `owned: false` was given for all.
#[derive(Debug)]
pub struct OwnershipChanges {
    rx: watch::Receiver<Arc<Snapshot>>,
    last: BTreeMap<String, u64>,
    pending: VecDeque<Ownership>,
    ended: bool,
}

impl OwnershipChanges {
    pub(crate) fn new(mut rx: watch::Receiver<Arc<Snapshot>>) -> OwnershipChanges {
        // The current set is taken now, not at the first `next`: a change
        // between the two is then seen as a change.
        let now = rx.borrow_and_update().clone();
        let mut changes = OwnershipChanges {
            rx,
            last: BTreeMap::new(),
            pending: VecDeque::new(),
            ended: false,
        };
        changes.apply(&now.owned, now.at);
        changes
    }

    /// The next change. Cancel-safe: a change not yet returned stays queued.
    pub async fn next(&mut self) -> Option<Ownership> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            if self.ended {
                return None;
            }
            match self.rx.changed().await {
                Ok(()) => {
                    let snap = self.rx.borrow_and_update().clone();
                    self.apply(&snap.owned, snap.at);
                }
                Err(_) => {
                    // The coordinator is gone: whatever was owned is not.
                    self.apply(&BTreeMap::new(), Instant::now());
                    self.ended = true;
                }
            }
        }
    }

    fn apply(&mut self, now: &BTreeMap<String, u64>, at: Instant) {
        let (pending, last) = (&mut self.pending, &mut self.last);
        for (sub, &epoch) in last.iter() {
            if now.get(sub) != Some(&epoch) {
                pending.push_back(Ownership {
                    subscription: sub.clone(),
                    epoch,
                    owned: false,
                    at,
                });
            }
        }
        for (sub, &epoch) in now {
            if last.get(sub) != Some(&epoch) {
                pending.push_back(Ownership {
                    subscription: sub.clone(),
                    epoch,
                    owned: true,
                    at,
                });
            }
        }
        *last = now.clone();
    }
}

/// How long this process may act as owner without a fresh answer from
/// ZooKeeper.
///
/// ZooKeeper expires a session `session_timeout` after it last *received*
/// from the client, never earlier (its expiry is rounded up to a tick). A
/// request the client sent at `t` and that was answered was received after
/// `t`, so the session (and its ephemeral owner nodes) lives at least until
/// `t + session_timeout`: nobody else can claim before. The lease is
/// `t + session_timeout / 2`, which leaves half the timeout as a margin for
/// ZooKeeper followers reporting session touches to the leader late (up to
/// one heartbeat plus half a tick) and for clock-rate differences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lease {
    until: Instant,
}

impl Lease {
    /// The lease length for a negotiated session timeout.
    pub(crate) fn length(session_timeout: Duration) -> Duration {
        session_timeout / 2
    }

    /// The heartbeat interval: three heartbeats per lease, so one or two
    /// slow answers do not end it.
    pub(crate) fn heartbeat(session_timeout: Duration) -> Duration {
        session_timeout / 6
    }

    /// A lease from a request sent at `sent` and answered.
    pub(crate) fn from_sent(sent: Instant, session_timeout: Duration) -> Lease {
        Lease {
            until: sent + Lease::length(session_timeout),
        }
    }

    pub(crate) fn valid_at(&self, now: Instant) -> bool {
        now < self.until
    }

    pub(crate) fn until(&self) -> Instant {
        self.until
    }

    /// Extends with a newer answer; an older (reordered) one never shortens.
    pub(crate) fn renew(&mut self, other: Lease) {
        self.until = self.until.max(other.until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_is_half_the_session_after_the_send() {
        let t0 = Instant::now();
        let st = Duration::from_secs(10);
        let mut l = Lease::from_sent(t0, st);
        assert!(l.valid_at(t0));
        assert!(l.valid_at(t0 + Duration::from_millis(4999)));
        assert!(!l.valid_at(t0 + Duration::from_secs(5)));
        // A heartbeat answered later extends it; a reordered older one not.
        l.renew(Lease::from_sent(t0 + Duration::from_secs(2), st));
        assert!(l.valid_at(t0 + Duration::from_millis(6999)));
        assert!(!l.valid_at(t0 + Duration::from_secs(7)));
        l.renew(Lease::from_sent(t0 + Duration::from_secs(1), st));
        assert_eq!(l.until(), t0 + Duration::from_secs(7));
        // Three heartbeats fit in a lease; the lease ends well before the
        // server can expire the session.
        assert!(Lease::heartbeat(st) * 3 <= Lease::length(st));
        assert!(Lease::heartbeat(st) * 3 + Duration::from_millis(1) > Lease::length(st));
        assert!(Lease::length(st) < st);
    }

    fn snap(owned: &[(&str, u64)]) -> Arc<Snapshot> {
        Arc::new(Snapshot {
            owned: owned.iter().map(|(s, e)| (s.to_string(), *e)).collect(),
            at: Instant::now(),
        })
    }

    fn brief(ev: Ownership) -> (String, u64, bool) {
        (ev.subscription, ev.epoch, ev.owned)
    }

    #[tokio::test]
    async fn changes_are_differences_and_never_hide_a_loss() {
        let (tx, rx) = watch::channel(snap(&[("a", 1)]));
        let mut ch = OwnershipChanges::new(rx);
        // Made before a loss and a re-acquisition, read after both: the
        // loss is still seen.
        let mut early = OwnershipChanges::new(tx.subscribe());
        tx.send_replace(snap(&[("a", 9)]));
        assert_eq!(brief(early.next().await.unwrap()), ("a".into(), 1, true));
        assert_eq!(brief(early.next().await.unwrap()), ("a".into(), 1, false));
        assert_eq!(brief(early.next().await.unwrap()), ("a".into(), 9, true));
        tx.send_replace(snap(&[("a", 1)]));
        assert_eq!(brief(ch.next().await.unwrap()), ("a".into(), 1, true));
        tx.send_replace(snap(&[("a", 1), ("b", 4)]));
        assert_eq!(brief(ch.next().await.unwrap()), ("b".into(), 4, true));
        // Lost and won back between two reads: both halves are seen.
        tx.send_replace(snap(&[("b", 4)]));
        tx.send_replace(snap(&[("a", 2), ("b", 4)]));
        assert_eq!(brief(ch.next().await.unwrap()), ("a".into(), 1, false));
        assert_eq!(brief(ch.next().await.unwrap()), ("a".into(), 2, true));
        // The coordinator going away ends ownership, then the stream.
        drop(tx);
        assert_eq!(brief(ch.next().await.unwrap()), ("a".into(), 2, false));
        assert_eq!(brief(ch.next().await.unwrap()), ("b".into(), 4, false));
        assert_eq!(ch.next().await, None);
    }
}

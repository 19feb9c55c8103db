//! What the evaluation thread needs of the store: a durable, commit-ordered
//! feed of the records it stored ([`Feed`]), with positions
//! ([`FeedPos`]) the notifier persists as its watermark.
//!
//! # Why a commit feed, and why per subscription
//!
//! The store acknowledges an ingest once its records are durable; the
//! notifier evaluates them afterwards, on its own thread. After `kill -9`
//! it must evaluate exactly the acknowledged records it had not yet
//! evaluated, once: re-evaluating one could page again, skipping one
//! misses an incident. The records' own seqs cannot say which those are:
//! one source's batches commit out of seq order (a shipper has several in
//! flight) and seqs have gaps (records filtered at the node), so "every
//! record up to seq N" is not a fact anyone knows. The store's writer
//! thread, however, numbers its group commits; it writes, in the same
//! `WriteBatch` as the records, which records each commit stored (per
//! subscription, in order). A record's position (commit, index) is
//! therefore fixed the moment it is acknowledged, and "every record up to
//! position P" is exact.
//!
//! The notifier keeps one watermark per subscription, the position of the
//! last record of it evaluated, and writes it in the same `WriteBatch` as
//! the alert changes and notifications that evaluation made (`store.rs`):
//! the effects and the watermark land together or not at all. After a
//! restart the evaluation thread reads each subscription's feed after its
//! watermark, so every acknowledged record is evaluated, and its effects
//! happen, exactly once. Per subscription, because evaluation time is
//! budgeted per subscription: one tenant's slow rules let its own
//! watermark lag, never another's. What was evaluated is trimmed from the
//! feed.
//!
//! The records themselves normally reach the evaluation thread in memory,
//! straight from the commit (bounded); the feed is read only after a
//! restart, or when that queue overflowed, so a lagging evaluation never
//! slows ingest: its records wait on disk.

use schemas::Record;

use crate::error::NotifierError;

/// A record's position in the commit feed: its commit, and its index among
/// its subscription's records of that commit. The default, `(0, 0)`, lies
/// before every record (commits start at 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FeedPos {
    pub commit: u64,
    pub index: u32,
}

impl FeedPos {
    pub const fn new(commit: u64, index: u32) -> FeedPos {
        FeedPos { commit, index }
    }

    /// The persisted form: commit u64 BE, index u32 BE.
    pub fn to_bytes(self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&self.commit.to_be_bytes());
        b[8..].copy_from_slice(&self.index.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<FeedPos> {
        Some(FeedPos {
            commit: u64::from_be_bytes(b.get(..8)?.try_into().ok()?),
            index: u32::from_be_bytes(b.get(8..12)?.try_into().ok()?),
        })
    }
}

/// A record read back from the feed.
#[derive(Debug, Clone)]
pub struct FeedRecord {
    pub pos: FeedPos,
    /// When its commit was made (Unix ns, the store's clock).
    pub committed_at: i64,
    pub record: Record,
}

/// One read of a subscription's feed.
#[derive(Debug, Default)]
pub struct FeedRead {
    pub records: Vec<FeedRecord>,
    /// Records in the feed the store no longer holds (retention deleted
    /// them before they were evaluated): skipped.
    pub missing: u64,
    /// Position of the last record looked at (read or missing).
    pub last: Option<FeedPos>,
    /// Nothing followed `last` when the feed was read.
    pub end: bool,
}

/// How much of a subscription's feed waits after a position.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FeedBacklog {
    pub records: u64,
    /// Commit time of the oldest of them (Unix ns).
    pub oldest: Option<i64>,
}

/// A store's commit feed (the collector's RocksDB store implements it).
/// Calls block (RocksDB reads): the evaluation thread makes them.
pub trait Feed: Send + Sync + 'static {
    /// The subscriptions with records in the feed.
    fn subscriptions(&self) -> Result<Vec<String>, NotifierError>;
    /// At most `max` records of `sub` after `after`, in commit order; it
    /// stops after the record that brings the stored bytes read to
    /// `max_bytes` (at least one record is read).
    fn read(
        &self,
        sub: &str,
        after: FeedPos,
        max: usize,
        max_bytes: usize,
    ) -> Result<FeedRead, NotifierError>;
    /// How many records of `sub` follow `after`.
    fn backlog(&self, sub: &str, after: FeedPos) -> Result<FeedBacklog, NotifierError>;
    /// Forgets `sub`'s commits before `before` (evaluated; their
    /// watermark is written).
    fn trim(&self, sub: &str, before: u64) -> Result<(), NotifierError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_by_commit_then_index_and_round_trip() {
        assert!(FeedPos::new(1, 9) < FeedPos::new(2, 0));
        assert!(FeedPos::default() < FeedPos::new(1, 0));
        let p = FeedPos::new(u64::MAX - 1, 7);
        assert_eq!(FeedPos::from_bytes(&p.to_bytes()), Some(p));
        assert_eq!(FeedPos::from_bytes(&[1, 2, 3]), None);
    }
}

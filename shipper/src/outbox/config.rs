//! Outbox settings: limits, the `when_full` policy and durability mode.

use std::num::{NonZeroU64, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What an append does when the outbox is at its byte or record limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// The appender waits for sinks to acknowledge, up to
    /// [`OutboxConfig::block_timeout`], then gets [`super::OutboxError::Full`].
    #[default]
    Block,
    /// Records that do not fit are not stored and counted as dropped.
    DropNewest,
    /// The oldest stored records are deleted (and counted) to make room.
    DropOldest,
}

/// When an append becomes durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum SyncMode {
    #[default]
    /// Every append returns only after its write batch is synced to disk
    /// (one fsync shared by all appends of a group commit).
    Always,
    /// Writes go to the WAL without sync; the WAL is synced every `every`.
    /// A crash of the machine (not of the process) loses at most that window.
    Interval {
        #[serde(with = "humantime_secs")]
        every: Duration,
    },
}

mod humantime_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    /// Between a millisecond and a day: `Duration::from_secs_f64` panics
    /// on a huge value, and a zero interval or timeout makes no sense.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        crate::units::seconds(secs, Duration::from_millis(1), Duration::from_secs(86_400))
            .map_err(serde::de::Error::custom)
    }
}

/// Settings of one outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Upper bound of the encoded bytes of stored, unacknowledged records.
    pub max_bytes: NonZeroU64,
    /// Upper bound of the number of stored, unacknowledged records.
    pub max_records: NonZeroU64,
    /// The largest encoded record accepted; larger ones are refused.
    pub max_record_bytes: NonZeroUsize,
    pub when_full: WhenFull,
    /// How long a blocked append waits for room before failing.
    #[serde(with = "humantime_secs")]
    pub block_timeout: Duration,
    pub sync: SyncMode,
    /// Bytes of RocksDB block cache (shared by all column families; index
    /// blocks live in it too, so table readers stay bounded by it).
    pub block_cache_bytes: usize,
    /// Bytes of one memtable.
    pub write_buffer_bytes: usize,
    /// Memtables of the records family, the one being written included
    /// (at least 2: one is written while another is flushed).
    pub max_write_buffers: i32,
    /// Buffers of RocksDB's file I/O: compaction readahead and the write
    /// buffer of each file it writes.
    pub io_buffer_bytes: usize,
    /// Table files kept open (-1: all, opened at start). A queue is read
    /// front to back, so a few open files serve it whatever the backlog,
    /// and the memory of open tables stays bounded.
    pub max_open_files: i32,
}

impl OutboxConfig {
    /// Settings for an outbox that forwards (`sesam-shipper`): written at
    /// the rate of its sources and read soon after, so small memtables,
    /// cache and I/O buffers keep the process small whatever the backlog.
    pub fn forwarder() -> OutboxConfig {
        OutboxConfig {
            block_cache_bytes: 256 << 10,
            write_buffer_bytes: 512 << 10,
            max_write_buffers: 2,
            io_buffer_bytes: 64 << 10,
            max_open_files: 64,
            ..OutboxConfig::default()
        }
    }

    /// The most bytes of records one group commit takes in: half a
    /// memtable, between 256 KiB and 8 MiB (a group's write batch is
    /// another copy of its records).
    pub fn group_max_bytes(&self) -> u64 {
        (self.write_buffer_bytes as u64 / 2).clamp(256 << 10, 8 << 20)
    }
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_bytes: NonZeroU64::new(1 << 30).expect("non-zero"),
            max_records: NonZeroU64::new(10_000_000).expect("non-zero"),
            max_record_bytes: NonZeroUsize::new(1 << 20).expect("non-zero"),
            when_full: WhenFull::Block,
            block_timeout: Duration::from_secs(30),
            sync: SyncMode::Always,
            block_cache_bytes: 8 << 20,
            write_buffer_bytes: 16 << 20,
            max_write_buffers: 3,
            io_buffer_bytes: 1 << 20,
            max_open_files: -1,
        }
    }
}

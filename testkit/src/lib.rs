//! The test harness every crate's tests share (a dev-dependency only, never
//! part of a shipped binary):
//!
//! - [`process`]: locating the workspace binaries, child processes killed on
//!   drop, SIGKILL / SIGTERM, `VmHWM`, free ports, polling, tmpfs mounts;
//! - [`receiver`]: a stand-in for the collector's ingest endpoint (dedupe,
//!   injected faults) for shipper and node tests and benchmarks;
//! - [`records`] and [`tokens`]: log and execution records, ingest
//!   batches, and the collector's tokens file;
//! - [`engines`]: the real ClickHouse, ZooKeeper, VictoriaMetrics and
//!   ChromeDriver from Debian's packages on free loopback ports.

pub mod engines;
pub mod process;
pub mod receiver;
pub mod records;
pub mod tokens;
pub mod webdriver;

pub use process::{free_port, until, Proc, Service};

/// A benchmark knob from the environment (`RECORDS=5_000_000`: underscores
/// allowed), else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

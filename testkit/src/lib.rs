//! The test harness every crate's tests share (a dev-dependency only, never
//! part of a shipped binary):
//!
//! - [`process`]: locating the workspace binaries, child processes killed on
//!   drop, SIGKILL / SIGTERM, `VmHWM`, free ports, polling, tmpfs mounts;
//! - [`engines`]: the real ClickHouse, ZooKeeper, VictoriaMetrics and
//!   ChromeDriver from Debian's packages on free loopback ports.

pub mod engines;
pub mod process;

pub use process::{free_port, until, Proc};

//! Host collectors: `/proc` and `statvfs` read into samples with
//! node_exporter's metric names, types and labels (version 1.5 as packaged
//! by Debian, including its default exclusions).
//!
//! | collector | source | metrics |
//! |---|---|---|
//! | `meminfo` | `/proc/meminfo` | `node_memory_<Field>_bytes` (every field; `(x)` becomes `_x`; fields without a kB unit keep no suffix) |
//! | `stat` | `/proc/stat` | `node_cpu_seconds_total{cpu,mode}`, `node_cpu_guest_seconds_total{cpu,mode}`, `node_boot_time_seconds`, `node_context_switches_total`, `node_forks_total`, `node_intr_total`, `node_procs_running`, `node_procs_blocked` |
//! | `loadavg` | `/proc/loadavg` | `node_load1`, `node_load5`, `node_load15` |
//! | `filesystem` | `/proc/1/mounts` (else `/proc/self/mounts`), `statvfs` | `node_filesystem_{size,free,avail}_bytes`, `node_filesystem_{files,files_free,readonly}{device,fstype,mountpoint}` |
//! | `netdev` | `/proc/net/dev` | `node_network_{receive,transmit}_{bytes,packets,errs,drop}_total{device}` (not `lo`) |
//! | `diskstats` | `/proc/diskstats` | `node_disk_{reads_completed,writes_completed,read_bytes,written_bytes,read_time_seconds,write_time_seconds,io_time_seconds}_total`, `node_disk_io_now{device}` (not partitions, ram, loop, fd) |
//! | `time` | clock | `node_time_seconds` |
//!
//! A collector that fails (file missing, unparsable) is counted by name
//! and the others still report.

pub mod diskstats;
pub mod filesystem;
pub mod loadavg;
pub mod memory;
pub mod netdev;
pub mod process;
pub mod stat;

use std::path::{Path, PathBuf};

use crate::sample::{Kind, Sample};

/// Clock ticks per second of `/proc/stat` and `/proc/<pid>/stat`
/// (`USER_HZ`, 100 on every Linux architecture; node_exporter assumes the
/// same).
pub const USER_HZ: f64 = 100.0;

/// Why one collector produced nothing.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

pub fn read(path: &Path) -> Result<String, HostError> {
    std::fs::read_to_string(path).map_err(|source| HostError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub fn parse_err(path: &Path, message: impl Into<String>) -> HostError {
    HostError::Parse {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

type Collector<'a> = dyn Fn() -> Result<Vec<Sample>, HostError> + 'a;

/// Reads the host through a `/proc` directory (tests point it elsewhere).
#[derive(Debug, Clone)]
pub struct Host {
    pub proc_dir: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            proc_dir: PathBuf::from("/proc"),
        }
    }
}

impl Host {
    /// Every host sample, and the collectors that failed with why.
    pub fn collect(&self, now_ms: i64) -> (Vec<Sample>, Vec<(&'static str, HostError)>) {
        let mut out = Vec::with_capacity(512);
        let mut errors = Vec::new();
        let p = &self.proc_dir;
        let collectors: [(&'static str, &Collector); 6] = [
            ("meminfo", &|| memory::collect(&p.join("meminfo"), now_ms)),
            ("stat", &|| stat::collect(&p.join("stat"), now_ms)),
            ("loadavg", &|| loadavg::collect(&p.join("loadavg"), now_ms)),
            ("filesystem", &|| filesystem::collect(p, now_ms)),
            ("netdev", &|| netdev::collect(&p.join("net/dev"), now_ms)),
            ("diskstats", &|| {
                diskstats::collect(&p.join("diskstats"), now_ms)
            }),
        ];
        for (name, c) in collectors {
            match c() {
                Ok(s) => out.extend(s),
                Err(e) => errors.push((name, e)),
            }
        }
        out.push(Sample::new(
            "node_time_seconds",
            Kind::Gauge,
            now_ms as f64 / 1000.0,
            now_ms,
        ));
        (out, errors)
    }
}

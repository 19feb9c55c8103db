//! The agent's own process metrics, with the names Prometheus client
//! libraries use: `process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
//! `process_start_time_seconds`, `process_open_fds`, `process_max_fds`.

use std::path::Path;

use super::{parse_err, read, HostError, USER_HZ};
use crate::sample::{Kind, Sample};

/// CPU seconds (user + system) and start time (ticks since boot) of a
/// `/proc/<pid>/stat` line.
pub fn cpu_and_start(stat: &str) -> Option<(f64, f64)> {
    // The command may contain spaces and parentheses: fields start after
    // the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15, starttime 22.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let start: f64 = f.get(19)?.parse().ok()?;
    Some(((utime + stime) / USER_HZ, start / USER_HZ))
}

fn status_kib(status: &str, key: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
}

pub fn collect(
    proc_dir: &Path,
    boot_time: Option<f64>,
    now_ms: i64,
) -> Result<Vec<Sample>, HostError> {
    let me = proc_dir.join("self");
    let stat_path = me.join("stat");
    let (cpu, start_ticks) =
        cpu_and_start(&read(&stat_path)?).ok_or_else(|| parse_err(&stat_path, "unparsable"))?;
    let status_path = me.join("status");
    let status = read(&status_path)?;
    let rss = status_kib(&status, "VmRSS:").ok_or_else(|| parse_err(&status_path, "no VmRSS"))?;
    let vsize = status_kib(&status, "VmSize:").unwrap_or(0.0);
    let mut out = vec![
        Sample::new("process_cpu_seconds_total", Kind::Counter, cpu, now_ms),
        Sample::new(
            "process_resident_memory_bytes",
            Kind::Gauge,
            rss * 1024.0,
            now_ms,
        ),
        Sample::new(
            "process_virtual_memory_bytes",
            Kind::Gauge,
            vsize * 1024.0,
            now_ms,
        ),
    ];
    if let Some(bt) = boot_time {
        out.push(Sample::new(
            "process_start_time_seconds",
            Kind::Gauge,
            bt + start_ticks,
            now_ms,
        ));
    }
    if let Ok(fds) = std::fs::read_dir(me.join("fd")) {
        out.push(Sample::new(
            "process_open_fds",
            Kind::Gauge,
            fds.count() as f64,
            now_ms,
        ));
    }
    if let Ok(limits) = std::fs::read_to_string(me.join("limits")) {
        if let Some(max) = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<f64>().ok())
        {
            out.push(Sample::new("process_max_fds", Kind::Gauge, max, now_ms));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stat_fields_after_the_command() {
        let line = "42 (a (weird) cmd) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 12345 1000 200 18446744073709551615";
        assert_eq!(super::cpu_and_start(line), Some((3.0, 123.45)));
        assert_eq!(super::cpu_and_start("garbage"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let s = super::collect(std::path::Path::new("/proc"), Some(0.0), 0).unwrap();
        let rss = s
            .iter()
            .find(|s| s.name == "process_resident_memory_bytes")
            .unwrap();
        assert!(rss.value > 1e6, "{}", rss.value);
    }
}

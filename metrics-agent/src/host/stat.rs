//! `/proc/stat`: per-CPU times, boot time and kernel counters.

use std::path::Path;

use super::{parse_err, read, HostError, USER_HZ};
use crate::sample::{Kind, Sample};

const MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

pub fn collect(path: &Path, now_ms: i64) -> Result<Vec<Sample>, HostError> {
    parse(&read(path)?, now_ms).map_err(|m| parse_err(path, m))
}

fn num(s: Option<&str>, what: &str) -> Result<f64, String> {
    s.and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| format!("invalid {what}"))
}

pub fn parse(text: &str, now_ms: i64) -> Result<Vec<Sample>, String> {
    let mut out = Vec::with_capacity(32);
    let mut cpus = 0;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let Some(key) = parts.next() else { continue };
        if let Some(cpu) = key.strip_prefix("cpu").filter(|c| !c.is_empty()) {
            if cpu.parse::<u32>().is_err() {
                return Err(format!("invalid cpu line {key:?}"));
            }
            let fields: Vec<f64> = parts
                .map(|v| {
                    v.parse::<f64>()
                        .map_err(|_| format!("invalid value in {key}"))
                })
                .collect::<Result<_, _>>()?;
            if fields.len() < 8 {
                return Err(format!(
                    "{key} has {} fields, expected at least 8",
                    fields.len()
                ));
            }
            for (mode, v) in MODES.iter().zip(&fields) {
                out.push(
                    Sample::new("node_cpu_seconds_total", Kind::Counter, v / USER_HZ, now_ms)
                        .label("cpu", cpu)
                        .label("mode", *mode)
                        .sorted(),
                );
            }
            // guest and guest_nice are also counted in user and nice.
            for (mode, v) in ["user", "nice"].iter().zip(fields.iter().skip(8)) {
                out.push(
                    Sample::new(
                        "node_cpu_guest_seconds_total",
                        Kind::Counter,
                        v / USER_HZ,
                        now_ms,
                    )
                    .label("cpu", cpu)
                    .label("mode", *mode)
                    .sorted(),
                );
            }
            cpus += 1;
            continue;
        }
        let (name, kind) = match key {
            "btime" => ("node_boot_time_seconds", Kind::Gauge),
            "ctxt" => ("node_context_switches_total", Kind::Counter),
            "processes" => ("node_forks_total", Kind::Counter),
            "intr" => ("node_intr_total", Kind::Counter),
            "procs_running" => ("node_procs_running", Kind::Gauge),
            "procs_blocked" => ("node_procs_blocked", Kind::Gauge),
            _ => continue,
        };
        out.push(Sample::new(name, kind, num(parts.next(), key)?, now_ms));
    }
    if cpus == 0 {
        return Err("no cpu lines".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_modes_in_seconds_and_boot_time() {
        let s = super::parse(
            "cpu  10 0 0 0 0 0 0 0 0 0\ncpu0 250 1 2 300 4 5 6 7 8 9\nintr 99 1 2\nbtime 1700000000\n",
            0,
        )
        .unwrap();
        let user = s
            .iter()
            .find(|s| s.name == "node_cpu_seconds_total" && s.get("mode") == Some("user"))
            .unwrap();
        assert_eq!((user.value, user.get("cpu")), (2.5, Some("0")));
        assert_eq!(
            s.iter()
                .filter(|s| s.name == "node_cpu_seconds_total")
                .count(),
            8
        );
        assert_eq!(
            s.iter()
                .filter(|s| s.name == "node_cpu_guest_seconds_total")
                .count(),
            2
        );
        let boot = s
            .iter()
            .find(|s| s.name == "node_boot_time_seconds")
            .unwrap();
        assert_eq!(boot.value, 1.7e9);
        assert!(super::parse("cpu0 1 2\n", 0).is_err());
        assert!(super::parse("nothing here\n", 0).is_err());
    }
}

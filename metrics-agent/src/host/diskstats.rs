//! `/proc/diskstats` as `node_disk_*{device}`; partitions, ram, loop and
//! floppy devices are excluded like node_exporter's default
//! (`^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$`).

use std::path::Path;

use super::{parse_err, read, HostError};
use crate::sample::{Kind, Sample};

const SECTOR: f64 = 512.0;

pub fn collect(path: &Path, now_ms: i64) -> Result<Vec<Sample>, HostError> {
    parse(&read(path)?, now_ms).map_err(|m| parse_err(path, m))
}

/// node_exporter's default device exclusion, without a regex.
pub fn excluded(dev: &str) -> bool {
    let digits = dev.trim_end_matches(|c: char| c.is_ascii_digit());
    if digits.len() == dev.len() || digits.is_empty() {
        return false;
    }
    let base = digits;
    if matches!(base, "ram" | "loop" | "fd") {
        return true;
    }
    let b = base.as_bytes();
    // (h|s|v|xv)d[a-z]
    let disk = |prefix: &str| {
        base.len() == prefix.len() + 2
            && base.starts_with(prefix)
            && b[prefix.len()] == b'd'
            && b[prefix.len() + 1].is_ascii_lowercase()
    };
    if disk("h") || disk("s") || disk("v") || disk("xv") {
        return true;
    }
    // nvme\d+n\d+p
    if let Some(rest) = base.strip_prefix("nvme").and_then(|r| r.strip_suffix('p')) {
        if let Some((a, c)) = rest.split_once('n') {
            return !a.is_empty()
                && !c.is_empty()
                && a.bytes().all(|x| x.is_ascii_digit())
                && c.bytes().all(|x| x.is_ascii_digit());
        }
    }
    false
}

pub fn parse(text: &str, now_ms: i64) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 14 {
            if f.is_empty() {
                continue;
            }
            return Err(format!(
                "line with {} fields, expected at least 14",
                f.len()
            ));
        }
        let dev = f[2];
        if excluded(dev) {
            continue;
        }
        let n = |i: usize| -> Result<f64, String> {
            f[i].parse::<f64>()
                .map_err(|_| format!("invalid value {:?} for {dev}", f[i]))
        };
        let metrics = [
            ("node_disk_reads_completed_total", Kind::Counter, n(3)?),
            ("node_disk_read_bytes_total", Kind::Counter, n(5)? * SECTOR),
            (
                "node_disk_read_time_seconds_total",
                Kind::Counter,
                n(6)? / 1000.0,
            ),
            ("node_disk_writes_completed_total", Kind::Counter, n(7)?),
            (
                "node_disk_written_bytes_total",
                Kind::Counter,
                n(9)? * SECTOR,
            ),
            (
                "node_disk_write_time_seconds_total",
                Kind::Counter,
                n(10)? / 1000.0,
            ),
            ("node_disk_io_now", Kind::Gauge, n(11)?),
            (
                "node_disk_io_time_seconds_total",
                Kind::Counter,
                n(12)? / 1000.0,
            ),
        ];
        for (name, kind, v) in metrics {
            out.push(Sample::new(name, kind, v, now_ms).label("device", dev));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::excluded;

    #[test]
    fn excludes_partitions_like_node_exporter() {
        for d in [
            "vda1",
            "sda12",
            "xvdb3",
            "nvme0n1p2",
            "loop0",
            "ram15",
            "fd0",
        ] {
            assert!(excluded(d), "{d}");
        }
        for d in ["vda", "sda", "nvme0n1", "zram0", "dm-0", "md127", "sr0"] {
            assert!(!excluded(d), "{d}");
        }
    }

    #[test]
    fn sectors_become_bytes() {
        let s = super::parse(
            " 254 0 vda 10 0 100 5 20 0 200 7 1 30 40 0 0 0 0\n 254 1 vda1 1 0 1 1 1 0 1 1 0 1 1\n",
            0,
        )
        .unwrap();
        assert_eq!(s.len(), 8);
        let r = s
            .iter()
            .find(|s| s.name == "node_disk_read_bytes_total")
            .unwrap();
        assert_eq!(r.value, 51200.0);
        let w = s
            .iter()
            .find(|s| s.name == "node_disk_written_bytes_total")
            .unwrap();
        assert_eq!(w.value, 102400.0);
        assert!(super::parse("1 2 vda x\n", 0).is_err());
    }
}

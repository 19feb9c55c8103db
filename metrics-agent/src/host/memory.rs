//! `/proc/meminfo` as `node_memory_*` gauges.

use std::path::Path;

use super::{parse_err, read, HostError};
use crate::sample::{Kind, Sample};

pub fn collect(path: &Path, now_ms: i64) -> Result<Vec<Sample>, HostError> {
    parse(&read(path)?, now_ms).map_err(|m| parse_err(path, m))
}

pub fn parse(text: &str, now_ms: i64) -> Result<Vec<Sample>, String> {
    let mut out = Vec::with_capacity(64);
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let key = key.trim_end_matches(':');
        let v: f64 = value
            .parse()
            .map_err(|_| format!("invalid value {value:?} of {key}"))?;
        // node_exporter: "Active(anon)" -> "Active_anon".
        let field: String = key
            .chars()
            .filter_map(|c| match c {
                '(' => Some('_'),
                ')' => None,
                c if c.is_ascii_alphanumeric() || c == '_' => Some(c),
                _ => Some('_'),
            })
            .collect();
        let (name, v) = match parts.next() {
            Some("kB") => (format!("node_memory_{field}_bytes"), v * 1024.0),
            _ => (format!("node_memory_{field}"), v),
        };
        out.push(Sample::new(name, Kind::Gauge, v, now_ms));
    }
    if out.is_empty() {
        return Err("no fields".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_and_units_like_node_exporter() {
        let s = super::parse(
            "MemTotal:       24684084 kB\nActive(anon):     1000 kB\nHugePages_Total:       0\n",
            5,
        )
        .unwrap();
        let names: Vec<(&str, f64)> = s.iter().map(|s| (s.name.as_str(), s.value)).collect();
        assert_eq!(
            names,
            vec![
                ("node_memory_MemTotal_bytes", 24684084.0 * 1024.0),
                ("node_memory_Active_anon_bytes", 1024000.0),
                ("node_memory_HugePages_Total", 0.0)
            ]
        );
        assert!(super::parse("garbage\n", 0).is_err());
        assert!(super::parse("MemTotal: x kB\n", 0).is_err());
    }
}

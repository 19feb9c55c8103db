//! `/proc/net/dev` as `node_network_*_total{device}` (`lo` excluded, as
//! Debian's node_exporter does by default).

use std::path::Path;

use super::{parse_err, read, HostError};
use crate::sample::{Kind, Sample};

/// Column index (after the device) and metric name.
const COLUMNS: [(usize, &str); 8] = [
    (0, "node_network_receive_bytes_total"),
    (1, "node_network_receive_packets_total"),
    (2, "node_network_receive_errs_total"),
    (3, "node_network_receive_drop_total"),
    (8, "node_network_transmit_bytes_total"),
    (9, "node_network_transmit_packets_total"),
    (10, "node_network_transmit_errs_total"),
    (11, "node_network_transmit_drop_total"),
];

pub fn collect(path: &Path, now_ms: i64) -> Result<Vec<Sample>, HostError> {
    parse(&read(path)?, now_ms).map_err(|m| parse_err(path, m))
}

pub fn parse(text: &str, now_ms: i64) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    // Two header lines.
    for line in text.lines().skip(2) {
        let Some((dev, rest)) = line.split_once(':') else {
            return Err(format!("line without a device: {line:?}"));
        };
        let dev = dev.trim();
        if dev == "lo" {
            continue;
        }
        let values: Vec<&str> = rest.split_whitespace().collect();
        if values.len() < 16 {
            return Err(format!(
                "device {dev} has {} columns, expected 16",
                values.len()
            ));
        }
        for (i, name) in COLUMNS {
            let v: f64 = values[i]
                .parse()
                .map_err(|_| format!("invalid value {:?} for {dev}", values[i]))?;
            out.push(Sample::new(name, Kind::Counter, v, now_ms).label("device", dev));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_devices_without_lo() {
        let text = "Inter-|   Receive\n face |bytes\n    lo: 5 1 0 0 0 0 0 0 5 1 0 0 0 0 0 0\n  eth0: 1000 10 1 2 0 0 0 0 2000 20 3 4 0 0 0 0\n";
        let s = super::parse(text, 0).unwrap();
        assert_eq!(s.len(), 8);
        assert!(s.iter().all(|s| s.get("device") == Some("eth0")));
        let tx = s
            .iter()
            .find(|s| s.name == "node_network_transmit_bytes_total")
            .unwrap();
        assert_eq!(tx.value, 2000.0);
        assert!(super::parse("a\nb\neth0: 1 2\n", 0).is_err());
    }
}

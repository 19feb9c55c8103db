//! `/proc/loadavg` as `node_load1`, `node_load5`, `node_load15`.

use std::path::Path;

use super::{parse_err, read, HostError};
use crate::sample::{Kind, Sample};

pub fn collect(path: &Path, now_ms: i64) -> Result<Vec<Sample>, HostError> {
    let text = read(path)?;
    let mut parts = text.split_whitespace();
    let mut out = Vec::with_capacity(3);
    for name in ["node_load1", "node_load5", "node_load15"] {
        let v = parts
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| parse_err(path, format!("no value for {name}")))?;
        out.push(Sample::new(name, Kind::Gauge, v, now_ms));
    }
    Ok(out)
}

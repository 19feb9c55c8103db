//! Query parameters shared by the search endpoints: times, limit, direction.

use std::collections::HashMap;

use super::ApiError;
use crate::logs::query::MAX_LIMIT;

/// Parses a time as Loki does: Unix nanoseconds (more than 10 digits),
/// Unix seconds (10 digits or fewer), seconds with a fraction, or RFC 3339.
pub fn parse_time(v: &str) -> Option<i64> {
    let v = v.trim();
    if v.contains('.') && !v.contains('T') && !v.contains('t') {
        if let Ok(f) = v.parse::<f64>() {
            let secs = f.trunc();
            let frac = ((f - secs) * 1000.0).round() / 1000.0;
            let ns = secs * 1e9 + frac * 1e9;
            return (ns.is_finite() && ns.abs() < 9.2e18).then_some(ns as i64);
        }
    }
    if let Ok(n) = v.parse::<i64>() {
        let digits = v.trim_start_matches('-').len();
        return if digits <= 10 {
            n.checked_mul(1_000_000_000)
        } else {
            Some(n)
        };
    }
    schemas::time::parse_rfc3339(v)
}

/// A parsed time range with the common parameters.
#[derive(Debug, Clone)]
pub struct RangeParams {
    pub start: i64,
    /// Exclusive.
    pub end: i64,
    pub limit: usize,
    pub backward: bool,
}

fn time_param(q: &HashMap<String, String>, name: &str, default: i64) -> Result<i64, ApiError> {
    match q.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(v) => parse_time(v).ok_or_else(|| {
            ApiError::bad_request(
                format!(
                    "cannot parse {name}={v:?}: expected Unix nanoseconds, Unix seconds (with an optional fraction) or RFC 3339"
                ),
                name,
            )
        }),
    }
}

/// `start`, `end`, `since`, `limit`, `direction` with Loki's defaults
/// (end = now, start = end - `default_span` or `since`, limit 100,
/// direction backward).
/// Longest source, pipe or subscription name a filter parameter may carry.
pub const MAX_NAME_BYTES: usize = 256;

/// The query parameter `field` (a source, pipe or subscription name):
/// absent, or 1 to [`MAX_NAME_BYTES`] bytes (else a 400 naming the field
/// and the limit).
pub fn name_param(
    q: &HashMap<String, String>,
    field: &'static str,
) -> Result<Option<String>, ApiError> {
    match q.get(field) {
        None => Ok(None),
        Some(v) if v.is_empty() || v.len() > MAX_NAME_BYTES => Err(ApiError::bad_request(
            format!("{field} must be 1 to {MAX_NAME_BYTES} bytes"),
            field,
        )
        .with("limit", serde_json::json!(MAX_NAME_BYTES))),
        Some(v) => Ok(Some(v.clone())),
    }
}

pub fn range_params(
    q: &HashMap<String, String>,
    now: i64,
    default_span: std::time::Duration,
) -> Result<RangeParams, ApiError> {
    let end = time_param(q, "end", now)?;
    let span = match q.get("since").filter(|s| !s.is_empty()) {
        Some(s) => humantime::parse_duration(s).map_err(|e| {
            ApiError::bad_request(format!("cannot parse since={s:?}: {e}"), "since")
        })?,
        None => default_span,
    };
    let span_ns = i64::try_from(span.as_nanos()).unwrap_or(i64::MAX);
    let start = time_param(q, "start", end.saturating_sub(span_ns))?;
    if start > end {
        return Err(ApiError::bad_request(
            "start must not be after end",
            "start",
        ));
    }
    let limit = match q.get("limit").filter(|s| !s.is_empty()) {
        None => 100,
        Some(l) => l.parse::<usize>().map_err(|_| {
            ApiError::bad_request(
                format!("limit={l:?} is not a non-negative integer"),
                "limit",
            )
        })?,
    };
    if limit > MAX_LIMIT {
        return Err(ApiError::bad_request(
            format!("limit {limit} is over the maximum of {MAX_LIMIT}"),
            "limit",
        ));
    }
    let backward = match q
        .get("direction")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("backward") => true,
        Some("forward") => false,
        Some(other) => {
            return Err(ApiError::bad_request(
                format!("direction={other:?}: expected forward or backward"),
                "direction",
            ))
        }
    };
    // Loki's end is inclusive; the store's is exclusive.
    Ok(RangeParams {
        start,
        end: end.saturating_add(1),
        limit,
        backward,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_like_loki() {
        assert_eq!(parse_time("1700000000"), Some(1_700_000_000_000_000_000));
        assert_eq!(parse_time("1700000000.5"), Some(1_700_000_000_500_000_000));
        assert_eq!(
            parse_time("1700000000123456789"),
            Some(1_700_000_000_123_456_789)
        );
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time(""), None);
    }

    #[test]
    fn range_defaults_and_errors() {
        let now = 10_000_000_000_000;
        let q = HashMap::new();
        let r = range_params(&q, now, std::time::Duration::from_secs(3600)).expect("ok");
        assert_eq!(r.end, now + 1);
        assert_eq!(r.start, now - 3_600_000_000_000);
        assert_eq!(r.limit, 100);
        assert!(r.backward);
        let mut q = HashMap::new();
        q.insert("direction".to_string(), "sideways".to_string());
        let e = range_params(&q, now, std::time::Duration::from_secs(1)).expect_err("bad");
        assert_eq!(e.field.as_deref(), Some("direction"));
        let mut q = HashMap::new();
        q.insert("limit".to_string(), "100000".to_string());
        assert!(range_params(&q, now, std::time::Duration::from_secs(1)).is_err());
    }
}

//! Pipe schedules as Sesam writes them (`pump.cron_expr`): classic 5-field
//! cron (minute hour day-of-month month day-of-week, UTC), or 6-7 fields
//! with seconds first (and a year last) as the `cron` crate reads them.
//! The node runs pipes by it and the notifier computes overdue deadlines
//! from it, so both parse it here.

use std::str::FromStr;

/// Longest cron expression accepted.
pub const MAX_CRON_BYTES: usize = 256;

/// Why a cron expression is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CronError {
    #[error("cron expression is {0} bytes, longer than {MAX_CRON_BYTES}")]
    TooLong(usize),
    #[error("invalid cron expression {expr:?}: {message}")]
    Invalid { expr: String, message: String },
    #[error("cron expression {0:?} never fires")]
    NeverFires(String),
}

/// Parses a pipe's cron expression. An expression that never fires (the
/// 30th of February) is refused: every deadline computed from it would
/// search the calendar in vain.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, CronError> {
    if expr.len() > MAX_CRON_BYTES {
        return Err(CronError::TooLong(expr.len()));
    }
    // The cron crate wants seconds first; Sesam's 5 fields have none.
    let full = if expr.split_whitespace().count() == 5 {
        format!("0 {expr}")
    } else {
        expr.to_string()
    };
    let schedule = cron::Schedule::from_str(&full).map_err(|e| CronError::Invalid {
        expr: expr.to_string(),
        message: e.to_string(),
    })?;
    if schedule.upcoming(chrono::Utc).next().is_none() {
        return Err(CronError::NeverFires(expr.to_string()));
    }
    Ok(schedule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Timelike};

    #[test]
    fn five_fields_are_minutes_first_and_six_have_seconds() {
        let from = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 10).unwrap();
        let every5 = parse_cron("*/5 * * * *").unwrap();
        let next = every5.after(&from).next().unwrap();
        assert_eq!((next.minute(), next.second()), (5, 0));
        let every10s = parse_cron("*/10 * * * * *").unwrap();
        let next = every10s.after(&from).next().unwrap();
        assert_eq!((next.minute(), next.second()), (0, 20));
    }

    #[test]
    fn bad_long_and_never_firing_expressions_are_refused() {
        assert!(matches!(
            parse_cron("not cron"),
            Err(CronError::Invalid { .. })
        ));
        assert!(matches!(
            parse_cron("61 * * * *"),
            Err(CronError::Invalid { .. })
        ));
        assert_eq!(parse_cron(&"* ".repeat(200)), Err(CronError::TooLong(400)));
        assert_eq!(
            parse_cron("0 0 0 30 2 * 2030"),
            Err(CronError::NeverFires("0 0 0 30 2 * 2030".into()))
        );
    }
}

//! Parsers of the durations and sizes the shipper's flags and config take,
//! each with bounds, so that a typo or a hostile value is a clear error
//! naming the limit and never a panic or an overflow.
//!
//! - Durations: one or more `<number><unit>` terms (`30s`, `200ms`,
//!   `1m30s`, `1.5h`), units `ns`, `us`, `ms`, `s`, `m`, `h`, `d` (and
//!   `sec`, `min`, `hr`); a bare number is seconds (`30`, `0.25`).
//! - Sizes: `<number>[unit]` (`4MiB`, `512k`, `1.5G`, `1048576`), units `B`,
//!   `K`/`KB`/`KiB`, `M`/`MB`/`MiB`, `G`/`GB`/`GiB`, `T`/`TB`/`TiB`, case
//!   insensitive, all powers of 1024; a bare number is bytes.
//!
//! Inputs longer than [`MAX_INPUT_LEN`] are refused before parsing.

use std::time::Duration;

/// The longest duration or size text parsed.
pub const MAX_INPUT_LEN: usize = 64;

/// A number parsed exactly: `int + frac / 10^frac_digits`.
struct Decimal {
    int: u128,
    frac: u128,
    frac_digits: u32,
}

impl Decimal {
    /// `self * unit`, rounded down; `None` on overflow.
    fn times(&self, unit: u128) -> Option<u128> {
        let whole = self.int.checked_mul(unit)?;
        let frac = self.frac.checked_mul(unit)? / 10u128.checked_pow(self.frac_digits)?;
        whole.checked_add(frac)
    }
}

/// Splits a leading decimal number (`12`, `0.5`, `.5`) off `s`.
fn number(s: &str) -> Option<(Decimal, &str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, rest) = s.split_at(end);
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') || frac.len() > 18 {
        return None;
    }
    let int = if int.is_empty() {
        0
    } else {
        int.parse::<u128>().ok()?
    };
    let frac_digits = frac.len() as u32;
    let frac = if frac.is_empty() {
        0
    } else {
        frac.parse::<u128>().ok()?
    };
    Some((
        Decimal {
            int,
            frac,
            frac_digits,
        },
        rest,
    ))
}

fn bad(what: &str, input: &str, why: &str) -> String {
    let shown: String = input.chars().take(MAX_INPUT_LEN).collect();
    format!("invalid {what} {shown:?}: {why}")
}

/// Parses a duration (see the module docs) and checks `min <= d <= max`.
pub fn parse_duration(input: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    const WHAT: &str = "duration";
    let s = input.trim();
    if s.is_empty() {
        return Err(bad(WHAT, input, "empty"));
    }
    if s.len() > MAX_INPUT_LEN {
        return Err(bad(
            WHAT,
            input,
            &format!("longer than {MAX_INPUT_LEN} characters"),
        ));
    }
    let too_long = || bad(WHAT, input, &format!("at most {} allowed", humanize(max)));
    let mut nanos: u128 = 0;
    let mut rest = s;
    let mut terms = 0;
    while !rest.is_empty() {
        let (n, after) = number(rest).ok_or_else(|| {
            bad(
                WHAT,
                input,
                "expected a number followed by a unit (ns, us, ms, s, m, h, d)",
            )
        })?;
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let per: u128 = match unit.trim() {
            "" if terms == 0 && next.is_empty() => 1_000_000_000,
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" | "sec" | "secs" => 1_000_000_000,
            "m" | "min" | "mins" => 60_000_000_000,
            "h" | "hr" | "hrs" => 3_600_000_000_000,
            "d" | "day" | "days" => 86_400_000_000_000,
            "" => return Err(bad(WHAT, input, "every number needs a unit")),
            other => {
                return Err(bad(
                    WHAT,
                    input,
                    &format!("unknown unit {other:?} (use ns, us, ms, s, m, h or d)"),
                ))
            }
        };
        nanos = n
            .times(per)
            .and_then(|x| nanos.checked_add(x))
            .ok_or_else(too_long)?;
        terms += 1;
        rest = next;
    }
    let d = u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| too_long())?;
    if d > max {
        return Err(too_long());
    }
    if d < min {
        return Err(bad(
            WHAT,
            input,
            &format!("at least {} needed", humanize(min)),
        ));
    }
    Ok(d)
}

/// Parses a size in bytes (see the module docs) and checks `min <= n <= max`.
pub fn parse_size(input: &str, min: u64, max: u64) -> Result<u64, String> {
    const WHAT: &str = "size";
    let s = input.trim();
    if s.is_empty() {
        return Err(bad(WHAT, input, "empty"));
    }
    if s.len() > MAX_INPUT_LEN {
        return Err(bad(
            WHAT,
            input,
            &format!("longer than {MAX_INPUT_LEN} characters"),
        ));
    }
    let (n, unit) = number(s).ok_or_else(|| {
        bad(
            WHAT,
            input,
            "expected a number of bytes, optionally with a unit (K, M, G, T)",
        )
    })?;
    let per: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(bad(
                WHAT,
                input,
                &format!("unknown unit {other:?} (use B, K, M, G or T)"),
            ))
        }
    };
    let too_big = || bad(WHAT, input, &format!("at most {max} bytes allowed"));
    let bytes = n.times(per).ok_or_else(too_big)?;
    let bytes = u64::try_from(bytes).map_err(|_| too_big())?;
    if bytes > max {
        return Err(too_big());
    }
    if bytes < min {
        return Err(bad(WHAT, input, &format!("at least {min} bytes needed")));
    }
    Ok(bytes)
}

/// A duration for messages: `300s`, `200ms`.
fn humanize(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{d:?}")
    }
}

/// Seconds given as a float in a config file, as a bounded duration
/// (`Duration::from_secs_f64` panics on a huge or negative value).
pub fn seconds(secs: f64, min: Duration, max: Duration) -> Result<Duration, String> {
    if !secs.is_finite() {
        return Err(format!("{secs} is not a number of seconds"));
    }
    let d = Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{secs} is not a valid number of seconds"))?;
    if d < min || d > max {
        return Err(format!(
            "{secs} seconds is outside {} ..= {}",
            humanize(min),
            humanize(max)
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(3600);

    fn d(s: &str) -> Result<Duration, String> {
        parse_duration(s, Duration::ZERO, MAX)
    }

    #[test]
    fn durations_parse_in_every_form() {
        assert_eq!(d("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(d("30"), Ok(Duration::from_secs(30)));
        assert_eq!(d("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(d("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(d("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(d(" 20m "), Ok(Duration::from_secs(1200)));
        assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(d("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(d(".5s"), Ok(Duration::from_millis(500)));
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        for (input, says) in [
            ("", "empty"),
            ("abc", "expected a number"),
            ("10 parsecs", "unknown unit"),
            ("1h30", "needs a unit"),
            ("1e20", "unknown unit"),
            ("99999999999999999999999999999999999999h", "at most 3600s"),
            ("2h", "at most 3600s"),
            ("-1s", "expected a number"),
            ("1..2s", "expected a number"),
        ] {
            let e = d(input).unwrap_err();
            assert!(e.contains(says), "{input:?}: {e}");
        }
        let e = parse_duration("5ms", Duration::from_millis(100), MAX).unwrap_err();
        assert!(e.contains("at least 100ms"), "{e}");
        let long = "1".repeat(100);
        assert!(d(&long).unwrap_err().contains("longer than 64"));
    }

    #[test]
    fn sizes_parse_with_binary_units_and_bounds() {
        let s = |x| parse_size(x, 1, 1 << 40);
        assert_eq!(s("4MiB"), Ok(4 << 20));
        assert_eq!(s("4m"), Ok(4 << 20));
        assert_eq!(s("512k"), Ok(512 << 10));
        assert_eq!(s("1.5G"), Ok(3 << 29));
        assert_eq!(s("1048576"), Ok(1 << 20));
        assert_eq!(s("7B"), Ok(7));
        assert!(s("0").unwrap_err().contains("at least 1"));
        assert!(s("2T").unwrap_err().contains("at most"));
        assert!(s("99999999999999999999999999999999999999T")
            .unwrap_err()
            .contains("at most"));
        assert!(s("12 parsecs").unwrap_err().contains("unknown unit"));
        assert!(s("-5").unwrap_err().contains("expected a number"));
    }

    #[test]
    fn config_seconds_are_bounded_not_panicking() {
        let (lo, hi) = (Duration::from_millis(1), Duration::from_secs(86_400));
        assert_eq!(seconds(1.5, lo, hi), Ok(Duration::from_millis(1500)));
        for bad in [1e20, -1.0, f64::NAN, f64::INFINITY, 0.0, 1e300] {
            assert!(seconds(bad, lo, hi).is_err(), "{bad}");
        }
    }
}

//! Checks shared by the validators of rules, silences and receivers:
//! identifiers, names, texts, counts, durations and regexes, each against
//! its limit, with errors naming the field and the limit.

use std::time::Duration;

use regex::Regex;
use schemas::notify::Span;

use crate::error::NotifierError;
use crate::limits::{self, Limits};

fn invalid(field: impl Into<String>, message: impl Into<String>) -> NotifierError {
    NotifierError::invalid(field, message)
}

pub(crate) fn nanos(d: Span) -> i64 {
    d.as_nanos()
}

/// An error for a value over one of the [`Limits`]; `reason` names the
/// limit in `/metrics`.
pub fn over_limit(
    field: impl Into<String>,
    reason: &'static str,
    message: String,
) -> NotifierError {
    NotifierError::invalid(field, message).with_reason(reason)
}

/// Checks a duration of a rule: at least `min`, at most the rule limit.
pub fn check_span(
    field: &str,
    d: Span,
    min: Duration,
    limits: &Limits,
) -> Result<i64, NotifierError> {
    if d.0 < min {
        return Err(invalid(
            field,
            if min == Duration::from_nanos(1) {
                format!("{field} must be longer than zero")
            } else {
                format!("{field} must be at least {}", limits::human(min))
            },
        ));
    }
    if d.0 > limits.max_rule_duration {
        return Err(over_limit(
            field,
            "duration",
            format!(
                "{field} {d} is over the limit of {} (--max-rule-duration)",
                limits::human(limits.max_rule_duration)
            ),
        ));
    }
    Ok(nanos(d))
}

/// Checks a free text against the text limit.
pub fn check_text(field: &str, s: &str, limits: &Limits) -> Result<(), NotifierError> {
    if s.len() > limits.max_text_bytes {
        return Err(over_limit(
            field,
            "text_bytes",
            format!(
                "{field} is {} bytes, over the limit of {}",
                s.len(),
                limits::bytes(limits.max_text_bytes)
            ),
        ));
    }
    Ok(())
}

/// Checks a count against its limit.
pub fn check_count(
    field: &str,
    n: usize,
    max: usize,
    reason: &'static str,
) -> Result<(), NotifierError> {
    if n > max {
        return Err(over_limit(
            field,
            reason,
            format!("{field} has {n} entries, over the limit of {max}"),
        ));
    }
    Ok(())
}

/// Compiles one of an object's `of` regexes within its share of the
/// object's regex budget (half for the program, half for the lazy DFA).
pub fn compile_regex(
    field: &str,
    source: &str,
    shown: &str,
    of: usize,
    limits: &Limits,
) -> Result<Regex, NotifierError> {
    if shown.len() > limits.max_pattern_bytes {
        return Err(over_limit(
            field,
            "pattern_bytes",
            format!(
                "the pattern is {} bytes, over the limit of {} (--max-pattern-bytes)",
                shown.len(),
                limits::bytes(limits.max_pattern_bytes)
            ),
        ));
    }
    let share = limits.max_regex_bytes / of.max(1);
    regex::RegexBuilder::new(source)
        .size_limit(share / 2)
        .dfa_size_limit(share / 2)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => over_limit(
                field,
                "regex_budget",
                format!(
                    "the regex compiles to more than its share of the regex budget ({} of {} over {of} regex{}; --max-regex-bytes)",
                    limits::bytes(share),
                    limits::bytes(limits.max_regex_bytes),
                    if of == 1 { "" } else { "es" }
                ),
            ),
            e => invalid(field, format!("bad regex: {}", short_error(&e.to_string()))),
        })
}

/// The regex crate's errors quote the whole pattern; keep them short.
pub(crate) fn short_error(s: &str) -> String {
    let mut out: String = s.chars().take(500).collect();
    if out.len() < s.len() {
        out.push_str("...");
    }
    out
}

/// Checks an id given by a client.
pub fn check_id(field: &str, id: &str) -> Result<(), NotifierError> {
    if id.is_empty() || id.len() > 128 {
        return Err(invalid(field, "must be 1 to 128 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return Err(invalid(
            field,
            format!("{id:?} may only contain letters, digits, '-', '_', '.', ':'"),
        ));
    }
    Ok(())
}

/// Checks a subscription or source name.
pub fn check_name(field: &str, s: &str) -> Result<(), NotifierError> {
    if s.is_empty() || s.len() > 256 || s.contains('\0') {
        return Err(invalid(
            field,
            "must be 1 to 256 characters without NUL bytes",
        ));
    }
    Ok(())
}

pub(crate) fn glob(
    field: &str,
    pattern: &str,
    limits: &Limits,
) -> Result<glob::Pattern, NotifierError> {
    if pattern.is_empty() {
        return Err(invalid(field, "a glob must not be empty"));
    }
    if pattern.len() > limits.max_pattern_bytes {
        return Err(over_limit(
            field,
            "pattern_bytes",
            format!(
                "the glob is {} bytes, over the limit of {} (--max-pattern-bytes)",
                pattern.len(),
                limits::bytes(limits.max_pattern_bytes)
            ),
        ));
    }
    glob::Pattern::new(pattern).map_err(|e| invalid(field, format!("glob: {e}")))
}

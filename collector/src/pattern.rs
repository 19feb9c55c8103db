//! Regular expressions taken from requests (LogQL matchers and filters,
//! `/federate` selectors), compiled under a memory budget per request.
//!
//! A request may compile several regexes; together their compiled programs
//! may occupy at most the request's budget (`--max-query-regex-bytes`):
//! each is built with an NFA size limit of what is left of the budget, and
//! what it then really occupies (`memory_usage`) is taken off. The lazy DFA
//! of each regex keeps a cache per searching thread, bounded by
//! [`CACHE_BYTES`]; the count of regexes per request is capped by the
//! callers (matchers, stages, selectors), which bounds those caches too.
//! The engine never backtracks: matching is linear in the input.

use regex_automata::meta::{Builder, Config, Regex};
use regex_automata::util::syntax;

/// Lazy-DFA cache of one regex on one thread.
pub const CACHE_BYTES: usize = 1 << 20;
/// Nesting depth of a pattern.
pub const NEST_LIMIT: u32 = 64;

/// Why a pattern was not compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("invalid regular expression: {0}")]
    Invalid(String),
    #[error("regular expression does not fit in what is left ({left} bytes) of the request's regex budget of {limit} bytes")]
    OverBudget { left: usize, limit: usize },
}

/// What the regexes of one request may occupy.
#[derive(Debug, Clone)]
pub struct RegexBudget {
    limit: usize,
    used: usize,
}

impl RegexBudget {
    pub fn new(limit: usize) -> RegexBudget {
        RegexBudget { limit, used: 0 }
    }

    /// Bytes taken by the regexes compiled so far.
    pub fn used(&self) -> usize {
        self.used
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Compiles `pattern` (whole-input anchored when `anchored`) within
    /// what is left of the budget.
    pub fn compile(&mut self, pattern: &str, anchored: bool) -> Result<Regex, PatternError> {
        let left = self.limit.saturating_sub(self.used);
        let over = || PatternError::OverBudget {
            left,
            limit: self.limit,
        };
        if left == 0 {
            return Err(over());
        }
        let p;
        let pattern = if anchored {
            p = format!("^(?:{pattern})$");
            p.as_str()
        } else {
            pattern
        };
        let re = Builder::new()
            .syntax(syntax::Config::new().nest_limit(NEST_LIMIT))
            .configure(
                Config::new()
                    .nfa_size_limit(Some(left))
                    .hybrid_cache_capacity(CACHE_BYTES),
            )
            .build(pattern)
            .map_err(|e| {
                if e.size_limit().is_some() {
                    over()
                } else {
                    PatternError::Invalid(first_line(&e.to_string()))
                }
            })?;
        let size = re.memory_usage();
        if size > left {
            return Err(over());
        }
        self.used += size;
        Ok(re)
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchoring_and_matching() {
        let mut b = RegexBudget::new(1 << 20);
        let re = b.compile("ord.*", true).expect("compile");
        assert!(re.is_match("orders"));
        assert!(!re.is_match("my-orders"));
        let re = b.compile("err(or)?", false).expect("compile");
        assert!(re.is_match(b"an error here".as_slice()));
        assert!(b.used() > 0);
        assert!(matches!(
            b.compile("(", false),
            Err(PatternError::Invalid(_))
        ));
    }

    #[test]
    fn the_budget_is_shared_by_every_regex_of_a_request() {
        let mut b = RegexBudget::new(256 << 10);
        let mut compiled = 0;
        let err = loop {
            match b.compile(r"[a-z]{20}[0-9]+x", false) {
                Ok(_) => compiled += 1,
                Err(e) => break e,
            }
            assert!(compiled < 10_000, "the budget must end it");
        };
        assert!(compiled >= 1, "one fits");
        assert!(matches!(err, PatternError::OverBudget { .. }), "{err}");
        assert!(b.used() <= b.limit());
        // A single huge pattern is refused outright.
        let mut b = RegexBudget::new(64 << 10);
        assert!(matches!(
            b.compile(r"(\w{100}){100}", false),
            Err(PatternError::OverBudget { .. })
        ));
    }
}

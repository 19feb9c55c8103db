//! Series selectors of `GET /federate?match[]=...`: Prometheus' syntax
//! `name{label="v", label!="v", label=~"re", label!~"re"}` (name or
//! braces optional, regexes fully anchored). Like Prometheus, a selector
//! must have at least one matcher that does not match the empty string.
//! Regexes are compiled within the request's regex budget (see
//! `crate::pattern`), and a selector has at most a bounded count of
//! matchers.

use regex_automata::meta::Regex;

use crate::pattern::{PatternError, RegexBudget};

/// Matchers of one selector, by default.
pub const MAX_MATCHERS: usize = 32;

#[derive(Debug, Clone)]
enum Op {
    Eq(String),
    Ne(String),
    Re(Regex),
    Nre(Regex),
}

#[derive(Debug, Clone)]
struct Matcher {
    label: String,
    op: Op,
}

impl Matcher {
    fn matches(&self, value: &str) -> bool {
        match &self.op {
            Op::Eq(v) => value == v,
            Op::Ne(v) => value != v,
            Op::Re(r) => r.is_match(value),
            Op::Nre(r) => !r.is_match(value),
        }
    }
}

/// One `match[]` selector.
#[derive(Debug, Clone)]
pub struct Selector {
    matchers: Vec<Matcher>,
}

/// A selector that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad selector {selector:?} at column {column}: {message}")]
pub struct SelectorError {
    pub selector: String,
    pub column: usize,
    pub message: String,
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, message: impl Into<String>) -> SelectorError {
        SelectorError {
            selector: self.s.to_string(),
            column: self.pos + 1,
            message: message.into(),
        }
    }
    fn skip_ws(&mut self) {
        while self.s[self.pos..].starts_with(char::is_whitespace) {
            self.pos += self.s[self.pos..].chars().next().map_or(1, char::len_utf8);
        }
    }
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }
    fn ident(&mut self, metric: bool) -> &'a str {
        let start = self.pos;
        for (i, c) in self.s[start..].char_indices() {
            let ok = c.is_ascii_alphabetic()
                || c == '_'
                || (metric && c == ':')
                || (i > 0 && c.is_ascii_digit());
            if !ok {
                self.pos = start + i;
                return &self.s[start..self.pos];
            }
        }
        self.pos = self.s.len();
        &self.s[start..]
    }
    fn string(&mut self) -> Result<String, SelectorError> {
        let Some(q) = self.peek().filter(|c| matches!(c, '"' | '\'' | '`')) else {
            return Err(self.err("expected a quoted string"));
        };
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.s[self.pos..].char_indices();
        while let Some((i, c)) = chars.next() {
            if c == q {
                self.pos += i + 1;
                return Ok(out);
            }
            if c == '\\' && q != '`' {
                match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, e)) => out.push(e),
                    None => break,
                }
            } else {
                out.push(c);
            }
        }
        self.pos = self.s.len();
        Err(self.err("unterminated string"))
    }
}

impl Selector {
    /// Parses with a budget of its own (tests, one-off selectors).
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        Selector::parse_with(s, &mut RegexBudget::new(8 << 20), MAX_MATCHERS)
    }

    /// Parses `s`, compiling its regexes within `budget` (shared by every
    /// selector of one request), with at most `max_matchers` matchers.
    pub fn parse_with(
        s: &str,
        budget: &mut RegexBudget,
        max_matchers: usize,
    ) -> Result<Selector, SelectorError> {
        let mut anchored = |re: &str| -> Result<Regex, String> {
            budget.compile(re, true).map_err(|e| match e {
                PatternError::Invalid(m) => m,
                PatternError::OverBudget { limit, .. } => format!(
                    "regular expressions over the request's regex size limit of {limit} bytes (--max-query-regex-bytes)"
                ),
            })
        };
        let mut p = Parser { s, pos: 0 };
        let mut matchers = Vec::new();
        p.skip_ws();
        if p.peek()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        {
            let name = p.ident(true);
            matchers.push(Matcher {
                label: "__name__".into(),
                op: Op::Eq(name.to_string()),
            });
            p.skip_ws();
        }
        if p.peek() == Some('{') {
            p.pos += 1;
            loop {
                p.skip_ws();
                if p.peek() == Some('}') {
                    p.pos += 1;
                    break;
                }
                if matchers.len() >= max_matchers {
                    return Err(p.err(format!("more than {max_matchers} matchers in one selector")));
                }
                let label = p.ident(false);
                if label.is_empty() {
                    return Err(p.err("expected a label name"));
                }
                p.skip_ws();
                let rest = &p.s[p.pos..];
                let (op, len) = if rest.starts_with("=~") {
                    ("=~", 2)
                } else if rest.starts_with("!~") {
                    ("!~", 2)
                } else if rest.starts_with("!=") {
                    ("!=", 2)
                } else if rest.starts_with('=') {
                    ("=", 1)
                } else {
                    return Err(p.err("expected =, !=, =~ or !~"));
                };
                p.pos += len;
                p.skip_ws();
                let value = p.string()?;
                let op = match op {
                    "=" => Op::Eq(value),
                    "!=" => Op::Ne(value),
                    "=~" => Op::Re(anchored(&value).map_err(|e| p.err(e))?),
                    _ => Op::Nre(anchored(&value).map_err(|e| p.err(e))?),
                };
                matchers.push(Matcher {
                    label: label.to_string(),
                    op,
                });
                p.skip_ws();
                match p.peek() {
                    Some(',') => p.pos += 1,
                    Some('}') => {}
                    _ => return Err(p.err("expected , or }")),
                }
            }
        }
        p.skip_ws();
        if p.pos != s.len() {
            return Err(p.err("unexpected text after the selector"));
        }
        if matchers.is_empty() {
            return Err(p.err("empty selector"));
        }
        if matchers.iter().all(|m| m.matches("")) {
            return Err(SelectorError {
                selector: s.to_string(),
                column: 1,
                message: "a selector needs at least one matcher that does not match the empty string (e.g. {__name__=~\".+\"})".into(),
            });
        }
        Ok(Selector { matchers })
    }

    /// Whether the series `name` with sorted `labels` matches.
    pub fn matches(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matchers.iter().all(|m| {
            let value = if m.label == "__name__" {
                name
            } else {
                labels
                    .binary_search_by(|(k, _)| (*k).cmp(m.label.as_str()))
                    .map(|i| labels[i].1)
                    .unwrap_or("")
            };
            m.matches(value)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_selectors() {
        let l = [
            ("instance", "vm-1"),
            ("job", "node"),
            ("subscription", "acme"),
        ];
        let yes = [
            "node_load1",
            r#"{__name__=~"node_.*"}"#,
            r#"node_load1{job="node"}"#,
            r#"{job="node", instance=~"vm-\\d"}"#,
            r#"{job!="x",__name__="node_load1",}"#,
            r#"node_load1{missing=""}"#,
            "node_load1{job=~'no.e'}",
        ];
        for s in yes {
            let sel = Selector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert!(sel.matches("node_load1", &l), "{s}");
        }
        let no = [
            "node_load5",
            r#"{__name__=~"node"}"#,
            r#"{job!~"n.*", __name__=~".+"}"#,
            r#"node_load1{missing!=""}"#,
        ];
        for s in no {
            assert!(
                !Selector::parse(s).unwrap().matches("node_load1", &l),
                "{s}"
            );
        }
    }

    #[test]
    fn refuses_bad_selectors_with_a_column() {
        for s in [
            "",
            "{}",
            r#"{job=~".*"}"#,
            r#"{job="x""#,
            r#"{job=x}"#,
            r#"{job="a"} extra"#,
            r#"{job=~"("}"#,
        ] {
            let e = Selector::parse(s).unwrap_err();
            assert!(e.column >= 1, "{s}: {e}");
        }
    }
}

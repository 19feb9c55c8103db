//! A LogQL subset: stream selector, line filters, `| json` and label
//! filters, and metric queries over them.
//!
//! ```text
//! expr      = query | metric
//! metric    = range_fn "(" selector [ RANGE ] { stage } [ "|" "unwrap" IDENT ] [ RANGE ] ")"
//!           | agg_op [ grouping ] "(" [ NUMBER "," ] metric ")" [ grouping ]
//!           | "(" metric ")"
//! range_fn  = count_over_time | rate | bytes_over_time | bytes_rate      (log ranges)
//!           | sum_over_time | avg_over_time | min_over_time | max_over_time  (unwrapped)
//! agg_op    = sum | avg | min | max | count | topk | bottomk   (topk/bottomk take NUMBER)
//! grouping  = ( "by" | "without" ) "(" [ IDENT { "," IDENT } ] ")"
//! RANGE     = "[" duration "]"   e.g. [1m], [1h30m], [500ms]; at most 31 days
//! query     = selector { stage }
//! selector  = "{" [ matcher { "," matcher } ] "}"
//! matcher   = IDENT ( "=" | "!=" | "=~" | "!~" ) STRING
//! stage     = ( "|=" | "!=" | "|~" | "!~" ) STRING          line filter
//!           | "|" "json"                                      extract fields
//!           | "|" IDENT cmp ( STRING | NUMBER )               label filter
//! cmp       = "=" | "==" | "!=" | "=~" | "!~" | ">" | ">=" | "<" | "<="
//! STRING    = "..." (escapes \" \\ \n \r \t \uXXXX) | `raw`
//! ```
//!
//! Selector and label-filter regexes are anchored (`=~ "orders.*"` matches
//! the whole value), line-filter regexes are not, as in Loki. A query is
//! bounded before anything runs ([`QueryLimits`]): its length, its count of
//! matchers and of stages, and the memory of all its regexes together (see
//! `crate::pattern`); a query past a bound is refused with a 400 naming the
//! bound. Literal line filters (`|=`, `!=`) are substring searches, not
//! regexes. Errors carry the 1-based column and what was expected.

use memchr::memmem::Finder;
use regex_automata::meta::Regex;

use crate::pattern::{PatternError, RegexBudget};

/// Longest query text accepted.
pub const MAX_QUERY_LEN: usize = 16 << 10;

/// Longest range of a range aggregation (`[31d]`).
pub const MAX_RANGE_NS: i64 = 31 * 86_400 * 1_000_000_000;

/// Deepest nesting of aggregations.
pub const MAX_NESTING: usize = 8;

/// Bounds of one query, checked while it is parsed.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Matchers in the stream selector.
    pub max_matchers: usize,
    /// Stages (line filters, `| json`, label filters).
    pub max_stages: usize,
    /// Memory of all the query's compiled regexes together.
    pub max_regex_bytes: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_matchers: 32,
            max_stages: 64,
            max_regex_bytes: 8 << 20,
        }
    }
}

/// A query that does not parse, or passes a bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parse error at column {column}: expected {expected}, found {found}")]
pub struct ParseError {
    /// 1-based column (in characters) of the offending token.
    pub column: usize,
    pub expected: String,
    pub found: String,
    /// `syntax`, or the bound it passed: `too_many_matchers`,
    /// `too_many_stages`, `regex_budget`, `too_long`.
    pub reason: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Eq,
    Ne,
    Re,
    NotRe,
}

/// One stream selector matcher.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    re: Option<Regex>,
}

impl Matcher {
    /// `name="value"`.
    pub fn equal(name: &str, value: &str) -> Matcher {
        Matcher {
            name: name.to_string(),
            op: MatchOp::Eq,
            value: value.to_string(),
            re: None,
        }
    }

    /// Whether a label value (`""` when absent) matches.
    pub fn matches(&self, v: &str) -> bool {
        match self.op {
            MatchOp::Eq => v == self.value,
            MatchOp::Ne => v != self.value,
            MatchOp::Re => self.re.as_ref().is_some_and(|r| r.is_match(v)),
            MatchOp::NotRe => !self.re.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Re,
    NotRe,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone)]
pub enum FilterValue {
    Str(String),
    Num(f64),
}

/// `| name op value` on a stream label or an extracted field.
#[derive(Debug, Clone)]
pub struct LabelFilter {
    pub name: String,
    pub op: CmpOp,
    pub value: FilterValue,
    re: Option<Regex>,
}

impl LabelFilter {
    /// Whether a label value (`None` when absent) passes.
    pub fn matches(&self, v: Option<&str>) -> bool {
        match (&self.value, self.op) {
            (FilterValue::Str(s), CmpOp::Eq) => v.unwrap_or("") == s,
            (FilterValue::Str(s), CmpOp::Ne) => v.unwrap_or("") != s,
            (FilterValue::Str(_), CmpOp::Re) => self
                .re
                .as_ref()
                .is_some_and(|r| r.is_match(v.unwrap_or(""))),
            (FilterValue::Str(_), CmpOp::NotRe) => !self
                .re
                .as_ref()
                .is_some_and(|r| r.is_match(v.unwrap_or(""))),
            (FilterValue::Str(_), _) => false,
            (FilterValue::Num(n), op) => {
                let Some(x) = v.and_then(|v| v.trim().parse::<f64>().ok()) else {
                    return false;
                };
                match op {
                    CmpOp::Eq => x == *n,
                    CmpOp::Ne => x != *n,
                    CmpOp::Gt => x > *n,
                    CmpOp::Ge => x >= *n,
                    CmpOp::Lt => x < *n,
                    CmpOp::Le => x <= *n,
                    CmpOp::Re | CmpOp::NotRe => false,
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum LineMatch {
    Literal(Box<Finder<'static>>),
    Regex(Regex),
}

/// A line filter.
#[derive(Debug, Clone)]
pub struct LineFilter {
    pub negate: bool,
    /// The literal (`|=`, `!=`) or the pattern (`|~`, `!~`).
    pub text: String,
    m: LineMatch,
}

impl LineFilter {
    pub fn matches(&self, line: &[u8]) -> bool {
        let found = match &self.m {
            LineMatch::Literal(f) => f.find(line).is_some(),
            LineMatch::Regex(re) => re.is_match(line),
        };
        found != self.negate
    }

    /// Whether this is a regex filter (`|~`, `!~`) rather than a literal.
    pub fn is_regex(&self) -> bool {
        matches!(self.m, LineMatch::Regex(_))
    }
}

#[derive(Debug, Clone)]
pub enum Stage {
    Line(Box<LineFilter>),
    Json,
    Label(LabelFilter),
}

/// A parsed query.
#[derive(Debug, Clone)]
pub struct Query {
    pub matchers: Vec<Matcher>,
    pub stages: Vec<Stage>,
}

impl Query {
    /// Whether any stage extracts fields.
    pub fn has_json(&self) -> bool {
        self.stages.iter().any(|s| matches!(s, Stage::Json))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LBrace,
    RBrace,
    Comma,
    Eq,
    EqEq,
    Ne,
    Re,
    NotRe,
    PipeEq,
    PipeRe,
    Pipe,
    Gt,
    Ge,
    Lt,
    Le,
    LParen,
    RParen,
    /// `[duration]`, in ns.
    Range(i64),
    Ident(String),
    Str(String),
    Num(f64),
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::LBrace => "\"{\"".into(),
            Tok::RBrace => "\"}\"".into(),
            Tok::Comma => "\",\"".into(),
            Tok::Eq => "\"=\"".into(),
            Tok::EqEq => "\"==\"".into(),
            Tok::Ne => "\"!=\"".into(),
            Tok::Re => "\"=~\"".into(),
            Tok::NotRe => "\"!~\"".into(),
            Tok::PipeEq => "\"|=\"".into(),
            Tok::PipeRe => "\"|~\"".into(),
            Tok::Pipe => "\"|\"".into(),
            Tok::Gt => "\">\"".into(),
            Tok::Ge => "\">=\"".into(),
            Tok::Lt => "\"<\"".into(),
            Tok::Le => "\"<=\"".into(),
            Tok::LParen => "\"(\"".into(),
            Tok::RParen => "\")\"".into(),
            Tok::Range(_) => "a range \"[...]\"".into(),
            Tok::Ident(s) => format!("identifier {s:?}"),
            Tok::Str(s) => format!("string {:?}", s.chars().take(40).collect::<String>()),
            Tok::Num(n) => format!("number {n}"),
            Tok::Eof => "end of query".into(),
        }
    }
}

struct Lexer<'a> {
    chars: Vec<(usize, char)>,
    i: usize,
    src: &'a str,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str) -> Self {
        Lexer {
            chars: src.char_indices().collect(),
            i: 0,
            src,
        }
    }

    fn err(&self, column: usize, expected: &str, found: String) -> ParseError {
        ParseError {
            column,
            expected: expected.into(),
            found,
            reason: "syntax",
        }
    }

    fn peek_char(&self, off: usize) -> Option<char> {
        self.chars.get(self.i + off).map(|(_, c)| *c)
    }

    /// Next token and its 1-based column.
    fn next(&mut self) -> Result<(Tok, usize), ParseError> {
        while self.peek_char(0).is_some_and(char::is_whitespace) {
            self.i += 1;
        }
        let col = self.i + 1;
        let Some(c) = self.peek_char(0) else {
            return Ok((Tok::Eof, col));
        };
        let two = |l: &mut Self, t: Tok| {
            l.i += 2;
            Ok((t, col))
        };
        let one = |l: &mut Self, t: Tok| {
            l.i += 1;
            Ok((t, col))
        };
        let n = self.peek_char(1);
        match (c, n) {
            ('{', _) => one(self, Tok::LBrace),
            ('(', _) => one(self, Tok::LParen),
            (')', _) => one(self, Tok::RParen),
            ('[', _) => {
                self.i += 1;
                let start = self.i;
                while self.peek_char(0).is_some_and(|c| c != ']') {
                    self.i += 1;
                }
                if self.peek_char(0).is_none() {
                    return Err(self.err(col, "closing \"]\" of the range", "end of query".into()));
                }
                let text: String = self.chars[start..self.i].iter().map(|(_, c)| *c).collect();
                self.i += 1;
                match parse_duration(text.trim()) {
                    Some(ns) if ns > 0 && ns <= MAX_RANGE_NS => Ok((Tok::Range(ns), col)),
                    Some(_) => Err(self.err(
                        col + 1,
                        "a range above 0 and at most 31 days",
                        format!("{text:?}"),
                    )),
                    None => Err(self.err(
                        col + 1,
                        "a duration such as 30s, 5m, 1h30m, 1d",
                        format!("{text:?}"),
                    )),
                }
            }
            ('}', _) => one(self, Tok::RBrace),
            (',', _) => one(self, Tok::Comma),
            ('=', Some('~')) => two(self, Tok::Re),
            ('=', Some('=')) => two(self, Tok::EqEq),
            ('=', _) => one(self, Tok::Eq),
            ('!', Some('=')) => two(self, Tok::Ne),
            ('!', Some('~')) => two(self, Tok::NotRe),
            ('|', Some('=')) => two(self, Tok::PipeEq),
            ('|', Some('~')) => two(self, Tok::PipeRe),
            ('|', _) => one(self, Tok::Pipe),
            ('>', Some('=')) => two(self, Tok::Ge),
            ('>', _) => one(self, Tok::Gt),
            ('<', Some('=')) => two(self, Tok::Le),
            ('<', _) => one(self, Tok::Lt),
            ('"', _) => self.string(col).map(|s| (Tok::Str(s), col)),
            ('`', _) => {
                self.i += 1;
                let start = self.i;
                while self.peek_char(0).is_some_and(|c| c != '`') {
                    self.i += 1;
                }
                if self.peek_char(0).is_none() {
                    return Err(self.err(col, "closing \"`\"", "end of query".into()));
                }
                let s: String = self.chars[start..self.i].iter().map(|(_, c)| *c).collect();
                self.i += 1;
                Ok((Tok::Str(s), col))
            }
            (c, _) if c.is_ascii_alphabetic() || c == '_' => {
                let start = self.i;
                while self
                    .peek_char(0)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    self.i += 1;
                }
                let s: String = self.chars[start..self.i].iter().map(|(_, c)| *c).collect();
                Ok((Tok::Ident(s), col))
            }
            (c, _) if c.is_ascii_digit() || (c == '-' && n.is_some_and(|n| n.is_ascii_digit())) => {
                let start = self.i;
                self.i += 1;
                while self
                    .peek_char(0)
                    .is_some_and(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
                {
                    // A sign only belongs to the number right after an exponent.
                    if matches!(self.peek_char(0), Some('+' | '-'))
                        && !matches!(self.chars.get(self.i - 1).map(|x| x.1), Some('e' | 'E'))
                    {
                        break;
                    }
                    self.i += 1;
                }
                let from = self.chars[start].0;
                let to = self.chars.get(self.i).map_or(self.src.len(), |x| x.0);
                let text = &self.src[from..to];
                text.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .map(|v| (Tok::Num(v), col))
                    .ok_or_else(|| self.err(col, "a number", format!("{text:?}")))
            }
            (c, _) => Err(self.err(col, "a token", format!("character {c:?}"))),
        }
    }

    fn string(&mut self, col: usize) -> Result<String, ParseError> {
        self.i += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek_char(0) else {
                return Err(self.err(col, "closing '\"' of the string", "end of query".into()));
            };
            self.i += 1;
            match c {
                '"' => return Ok(out),
                '\\' => {
                    let esc_col = self.i;
                    let Some(e) = self.peek_char(0) else {
                        return Err(self.err(
                            esc_col,
                            "an escape character",
                            "end of query".into(),
                        ));
                    };
                    self.i += 1;
                    match e {
                        '"' => out.push('"'),
                        '\\' => out.push('\\'),
                        '/' => out.push('/'),
                        'n' => out.push('\n'),
                        'r' => out.push('\r'),
                        't' => out.push('\t'),
                        'u' => {
                            let hex: String = (0..4).filter_map(|k| self.peek_char(k)).collect();
                            let v = (hex.len() == 4)
                                .then(|| u32::from_str_radix(&hex, 16).ok())
                                .flatten()
                                .and_then(char::from_u32)
                                .ok_or_else(|| {
                                    self.err(
                                        esc_col,
                                        "four hex digits after \\u",
                                        format!("{hex:?}"),
                                    )
                                })?;
                            self.i += 4;
                            out.push(v);
                        }
                        // Regex escapes such as \d or \. pass through, as in
                        // Go's raw use of backslashes in LogQL regexes.
                        other => {
                            out.push('\\');
                            out.push(other);
                        }
                    }
                }
                c => out.push(c),
            }
        }
    }
}

struct Parser<'a> {
    lex: Lexer<'a>,
    tok: Tok,
    col: usize,
    limits: &'a QueryLimits,
    budget: RegexBudget,
    /// Parsing a metric query (`| unwrap` allowed).
    metric: bool,
    /// The field of `| unwrap` in the range being parsed.
    unwrap: Option<String>,
}

impl Parser<'_> {
    fn regex(&mut self, pattern: &str, anchored: bool, col: usize) -> Result<Regex, ParseError> {
        self.budget
            .compile(pattern, anchored)
            .map_err(|e| match e {
                PatternError::Invalid(m) => ParseError {
                    column: col,
                    expected: "a valid regular expression".into(),
                    found: format!("{pattern:?} ({m})"),
                    reason: "syntax",
                },
                PatternError::OverBudget { left, limit } => ParseError {
                    column: col,
                    expected: format!(
                        "regular expressions within the query's regex size limit of {limit} bytes (--max-query-regex-bytes; {left} bytes were left)"
                    ),
                    found: format!("{:?}", pattern.chars().take(40).collect::<String>()),
                    reason: "regex_budget",
                },
            })
    }
}

impl Parser<'_> {
    fn bump(&mut self) -> Result<(), ParseError> {
        let (t, c) = self.lex.next()?;
        self.tok = t;
        self.col = c;
        Ok(())
    }

    fn fail<T>(&self, expected: &str) -> Result<T, ParseError> {
        Err(ParseError {
            column: self.col,
            expected: expected.into(),
            found: self.tok.describe(),
            reason: "syntax",
        })
    }

    fn string(&mut self, what: &str) -> Result<(String, usize), ParseError> {
        match &self.tok {
            Tok::Str(s) => {
                let s = s.clone();
                let col = self.col;
                self.bump()?;
                Ok((s, col))
            }
            _ => self.fail(what),
        }
    }

    fn selector(&mut self) -> Result<Vec<Matcher>, ParseError> {
        if self.tok != Tok::LBrace {
            return self.fail("\"{\" to start the stream selector");
        }
        self.bump()?;
        let mut out = Vec::new();
        if self.tok == Tok::RBrace {
            self.bump()?;
            return Ok(out);
        }
        loop {
            if out.len() >= self.limits.max_matchers {
                return Err(ParseError {
                    column: self.col,
                    expected: format!(
                        "at most {} matchers in the stream selector (--max-query-matchers)",
                        self.limits.max_matchers
                    ),
                    found: format!("matcher {}", out.len() + 1),
                    reason: "too_many_matchers",
                });
            }
            let name = match &self.tok {
                Tok::Ident(s) => s.clone(),
                _ => return self.fail("a label name"),
            };
            self.bump()?;
            let op = match self.tok {
                Tok::Eq => MatchOp::Eq,
                Tok::Ne => MatchOp::Ne,
                Tok::Re => MatchOp::Re,
                Tok::NotRe => MatchOp::NotRe,
                _ => return self.fail("one of \"=\", \"!=\", \"=~\", \"!~\""),
            };
            self.bump()?;
            let (value, col) = self.string("a quoted label value")?;
            let re = match op {
                MatchOp::Re | MatchOp::NotRe => Some(self.regex(&value, true, col)?),
                _ => None,
            };
            out.push(Matcher {
                name,
                op,
                value,
                re,
            });
            match self.tok {
                Tok::Comma => self.bump()?,
                Tok::RBrace => {
                    self.bump()?;
                    return Ok(out);
                }
                _ => return self.fail("\",\" or \"}\""),
            }
        }
    }

    /// A stage, or `None` after `| unwrap name` (kept in `self.unwrap`;
    /// only metric queries accept it, as their last stage).
    fn stage(&mut self) -> Result<Option<Stage>, ParseError> {
        if self.unwrap.is_some() {
            return self.fail("the range or \")\" after \"| unwrap\"");
        }
        if self.tok == Tok::Pipe {
            self.bump()?;
            if self.tok == Tok::Ident("unwrap".into()) {
                if !self.metric {
                    return self.fail("\"json\" or a label filter (unwrap belongs in a metric query such as sum_over_time({...} | json | unwrap field [5m]))");
                }
                self.bump()?;
                match &self.tok {
                    Tok::Ident(name) => {
                        self.unwrap = Some(name.clone());
                        self.bump()?;
                        return Ok(None);
                    }
                    _ => return self.fail("the name of the field to unwrap"),
                }
            }
            return self.pipe_stage().map(Some);
        }
        self.line_stage().map(Some)
    }

    fn line_stage(&mut self) -> Result<Stage, ParseError> {
        let (negate, is_re) = match self.tok {
            Tok::PipeEq => (false, false),
            Tok::Ne => (true, false),
            Tok::PipeRe => (false, true),
            Tok::NotRe => (true, true),
            _ => {
                return self
                    .fail("a line filter (\"|=\", \"!=\", \"|~\", \"!~\"), \"|\" or end of query")
            }
        };
        self.bump()?;
        let (text, col) = self.string("a quoted string after the line filter")?;
        let m = if is_re {
            LineMatch::Regex(self.regex(&text, false, col)?)
        } else {
            LineMatch::Literal(Box::new(Finder::new(text.as_bytes()).into_owned()))
        };
        Ok(Stage::Line(Box::new(LineFilter { negate, text, m })))
    }

    fn pipe_stage(&mut self) -> Result<Stage, ParseError> {
        let name = match &self.tok {
            Tok::Ident(s) => s.clone(),
            _ => return self.fail("\"json\" or a label filter (name op value)"),
        };
        self.bump()?;
        let op = match self.tok {
            Tok::Eq | Tok::EqEq => CmpOp::Eq,
            Tok::Ne => CmpOp::Ne,
            Tok::Re => CmpOp::Re,
            Tok::NotRe => CmpOp::NotRe,
            Tok::Gt => CmpOp::Gt,
            Tok::Ge => CmpOp::Ge,
            Tok::Lt => CmpOp::Lt,
            Tok::Le => CmpOp::Le,
            _ if name == "json" => return Ok(Stage::Json),
            _ => {
                return self.fail(
                    "a comparison (=, ==, !=, =~, !~, >, >=, <, <=) after the label name \
                     (supported stages: json, label filters)",
                )
            }
        };
        self.bump()?;
        let col = self.col;
        let value = match &self.tok {
            Tok::Str(s) => FilterValue::Str(s.clone()),
            Tok::Num(n) => FilterValue::Num(*n),
            _ => return self.fail("a quoted string or a number"),
        };
        self.bump()?;
        let re = match (&value, op) {
            (FilterValue::Str(s), CmpOp::Re | CmpOp::NotRe) => Some(self.regex(s, true, col)?),
            (FilterValue::Str(_), CmpOp::Gt | CmpOp::Ge | CmpOp::Lt | CmpOp::Le) => {
                return Err(ParseError {
                    column: col,
                    expected: "a number for a numeric comparison".into(),
                    found: "a string".into(),
                    reason: "syntax",
                })
            }
            (FilterValue::Num(_), CmpOp::Re | CmpOp::NotRe) => {
                return Err(ParseError {
                    column: col,
                    expected: "a quoted regular expression".into(),
                    found: "a number".into(),
                    reason: "syntax",
                })
            }
            _ => None,
        };
        Ok(Stage::Label(LabelFilter {
            name,
            op,
            value,
            re,
        }))
    }
}

/// Parses a LogQL query with the default [`QueryLimits`].
pub fn parse(src: &str) -> Result<Query, ParseError> {
    parse_with(src, &QueryLimits::default())
}

fn parser<'a>(src: &'a str, limits: &'a QueryLimits) -> Result<Parser<'a>, ParseError> {
    if src.len() > MAX_QUERY_LEN {
        return Err(ParseError {
            column: 1,
            expected: format!("a query of at most {MAX_QUERY_LEN} bytes"),
            found: format!("{} bytes", src.len()),
            reason: "too_long",
        });
    }
    let mut p = Parser {
        lex: Lexer::new(src),
        tok: Tok::Eof,
        col: 1,
        limits,
        budget: RegexBudget::new(limits.max_regex_bytes),
        metric: false,
        unwrap: None,
    };
    p.bump()?;
    Ok(p)
}

/// Parses a log query (no metric functions) within `limits`.
pub fn parse_with(src: &str, limits: &QueryLimits) -> Result<Query, ParseError> {
    let mut p = parser(src, limits)?;
    if let Tok::Ident(name) = &p.tok {
        if RangeFn::from_name(name).is_some() || AggOp::from_name(name).is_some() {
            return p.fail("a log query (\"{...}\" and stages): metric queries are answered by /loki/api/v1/query_range and /loki/api/v1/query");
        }
    }
    let q = p.log_query()?;
    Ok(q)
}

/// Parses a log or metric query within `limits`.
pub fn parse_expr_with(src: &str, limits: &QueryLimits) -> Result<Expr, ParseError> {
    let mut p = parser(src, limits)?;
    if p.tok == Tok::LBrace {
        return p.log_query().map(Expr::Log);
    }
    p.metric = true;
    let m = p.metric_expr(0)?;
    if p.tok != Tok::Eof {
        return p.fail("end of query");
    }
    Ok(Expr::Metric(m))
}

/// What a query asks: log lines or numbers.
#[derive(Debug, Clone)]
pub enum Expr {
    Log(Query),
    Metric(MetricExpr),
}

/// A range aggregation's function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeFn {
    CountOverTime,
    Rate,
    BytesOverTime,
    BytesRate,
    SumOverTime,
    AvgOverTime,
    MinOverTime,
    MaxOverTime,
}

impl RangeFn {
    fn from_name(s: &str) -> Option<RangeFn> {
        Some(match s {
            "count_over_time" => RangeFn::CountOverTime,
            "rate" => RangeFn::Rate,
            "bytes_over_time" => RangeFn::BytesOverTime,
            "bytes_rate" => RangeFn::BytesRate,
            "sum_over_time" => RangeFn::SumOverTime,
            "avg_over_time" => RangeFn::AvgOverTime,
            "min_over_time" => RangeFn::MinOverTime,
            "max_over_time" => RangeFn::MaxOverTime,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            RangeFn::CountOverTime => "count_over_time",
            RangeFn::Rate => "rate",
            RangeFn::BytesOverTime => "bytes_over_time",
            RangeFn::BytesRate => "bytes_rate",
            RangeFn::SumOverTime => "sum_over_time",
            RangeFn::AvgOverTime => "avg_over_time",
            RangeFn::MinOverTime => "min_over_time",
            RangeFn::MaxOverTime => "max_over_time",
        }
    }

    /// Whether it aggregates an unwrapped value (and so needs `| unwrap`).
    pub fn unwrapped(self) -> bool {
        matches!(
            self,
            RangeFn::SumOverTime
                | RangeFn::AvgOverTime
                | RangeFn::MinOverTime
                | RangeFn::MaxOverTime
        )
    }
}

/// A vector aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggOp {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    Topk,
    Bottomk,
}

impl AggOp {
    fn from_name(s: &str) -> Option<AggOp> {
        Some(match s {
            "sum" => AggOp::Sum,
            "avg" => AggOp::Avg,
            "min" => AggOp::Min,
            "max" => AggOp::Max,
            "count" => AggOp::Count,
            "topk" => AggOp::Topk,
            "bottomk" => AggOp::Bottomk,
            _ => return None,
        })
    }
}

/// `by (labels)` or `without (labels)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grouping {
    pub without: bool,
    pub labels: Vec<String>,
}

/// A metric query.
#[derive(Debug, Clone)]
pub enum MetricExpr {
    /// `func(selector stages [| unwrap field] [range])`.
    Range {
        func: RangeFn,
        query: Query,
        unwrap: Option<String>,
        /// ns.
        range: i64,
    },
    /// `op [grouping] ([k,] inner)`.
    Aggregate {
        op: AggOp,
        /// k of topk / bottomk.
        k: usize,
        grouping: Option<Grouping>,
        inner: Box<MetricExpr>,
    },
}

/// Largest k of topk / bottomk.
pub const MAX_TOPK: usize = 10_000;

impl Parser<'_> {
    /// A log query: a selector and its stages, to the end of the query.
    fn log_query(&mut self) -> Result<Query, ParseError> {
        let matchers = self.selector()?;
        let stages = self.stages(&Tok::Eof, "end of query")?;
        if matches!(self.tok, Tok::Range(_)) {
            return self.fail("a line filter, \"|\" or end of query (a range [..] belongs in a metric query such as count_over_time({...}[5m]))");
        }
        Ok(Query { matchers, stages })
    }

    /// Stages up to `stop` or a range (not consumed), within
    /// `--max-query-stages`; the end of the query before them expects
    /// `at_eof`.
    fn stages(&mut self, stop: &Tok, at_eof: &str) -> Result<Vec<Stage>, ParseError> {
        let mut stages = Vec::new();
        while self.tok != *stop && !matches!(self.tok, Tok::Range(_)) {
            if stages.len() >= self.limits.max_stages {
                return Err(ParseError {
                    column: self.col,
                    expected: format!(
                        "at most {} stages (line filters, | json, label filters; --max-query-stages)",
                        self.limits.max_stages
                    ),
                    found: format!("stage {}", stages.len() + 1),
                    reason: "too_many_stages",
                });
            }
            if self.tok == Tok::Eof {
                return self.fail(at_eof);
            }
            if let Some(stage) = self.stage()? {
                stages.push(stage);
            }
        }
        Ok(stages)
    }

    fn expect(&mut self, t: Tok) -> Result<(), ParseError> {
        if self.tok != t {
            return self.fail(&t.describe());
        }
        self.bump()
    }

    fn grouping(&mut self) -> Result<Option<Grouping>, ParseError> {
        let without = match &self.tok {
            Tok::Ident(s) if s == "by" => false,
            Tok::Ident(s) if s == "without" => true,
            _ => return Ok(None),
        };
        self.bump()?;
        self.expect(Tok::LParen)?;
        let mut labels = Vec::new();
        loop {
            match &self.tok {
                Tok::RParen => {
                    self.bump()?;
                    return Ok(Some(Grouping { without, labels }));
                }
                Tok::Ident(l) => {
                    if labels.len() >= self.limits.max_matchers {
                        return Err(ParseError {
                            column: self.col,
                            expected: format!(
                                "at most {} grouping labels (--max-query-matchers)",
                                self.limits.max_matchers
                            ),
                            found: format!("label {}", labels.len() + 1),
                            reason: "too_many_matchers",
                        });
                    }
                    labels.push(l.clone());
                    self.bump()?;
                    match self.tok {
                        Tok::Comma => self.bump()?,
                        Tok::RParen => {}
                        _ => return self.fail("\",\" or \")\""),
                    }
                }
                _ => return self.fail("a label name or \")\""),
            }
        }
    }

    fn metric_expr(&mut self, depth: usize) -> Result<MetricExpr, ParseError> {
        if depth >= MAX_NESTING {
            return Err(ParseError {
                column: self.col,
                expected: format!("at most {MAX_NESTING} nested aggregations"),
                found: self.tok.describe(),
                reason: "too_deep",
            });
        }
        if self.tok == Tok::LParen {
            self.bump()?;
            let inner = self.metric_expr(depth + 1)?;
            self.expect(Tok::RParen)?;
            return Ok(inner);
        }
        let name = match &self.tok {
            Tok::Ident(s) => s.clone(),
            _ => {
                return self.fail(
                    "a stream selector \"{...}\", a range function (count_over_time, rate, bytes_over_time, bytes_rate, sum_over_time, avg_over_time, min_over_time, max_over_time) or an aggregation (sum, avg, min, max, count, topk, bottomk)",
                )
            }
        };
        if let Some(func) = RangeFn::from_name(&name) {
            self.bump()?;
            self.expect(Tok::LParen)?;
            self.unwrap = None;
            let mut range = None;
            let matchers = self.selector()?;
            if let Tok::Range(r) = self.tok {
                range = Some(r);
                self.bump()?;
            }
            let mut q = self.log_query_after(matchers)?;
            if let Tok::Range(r) = self.tok {
                if range.is_some() {
                    return self.fail("\")\" (the range is given once)");
                }
                range = Some(r);
                self.bump()?;
            }
            let Some(range) = range else {
                return self.fail("a range such as [5m]");
            };
            let unwrap = self.unwrap.take();
            if func.unwrapped() && unwrap.is_none() {
                return self.fail(&format!(
                    "\"| unwrap field\" before the range: {} aggregates an unwrapped value",
                    func.name()
                ));
            }
            if !func.unwrapped() && unwrap.is_some() {
                return self.fail(&format!("no \"| unwrap\": {} counts lines or bytes (use sum_over_time, avg_over_time, min_over_time or max_over_time)", func.name()));
            }
            self.expect(Tok::RParen)?;
            q.stages.shrink_to_fit();
            return Ok(MetricExpr::Range {
                func,
                query: q,
                unwrap,
                range,
            });
        }
        let Some(op) = AggOp::from_name(&name) else {
            return self.fail("a range function (count_over_time, rate, bytes_over_time, bytes_rate, sum_over_time, avg_over_time, min_over_time, max_over_time) or an aggregation (sum, avg, min, max, count, topk, bottomk)");
        };
        self.bump()?;
        let mut grouping = self.grouping()?;
        self.expect(Tok::LParen)?;
        let mut k = 0;
        if matches!(op, AggOp::Topk | AggOp::Bottomk) {
            k = match self.tok {
                Tok::Num(n) if n >= 1.0 && n <= MAX_TOPK as f64 && n.fract() == 0.0 => n as usize,
                _ => return self.fail(&format!("k, a whole number from 1 to {MAX_TOPK}")),
            };
            self.bump()?;
            self.expect(Tok::Comma)?;
        }
        let inner = self.metric_expr(depth + 1)?;
        self.expect(Tok::RParen)?;
        if let Some(after) = self.grouping()? {
            if grouping.is_some() {
                return self.fail("one grouping (by or without), before or after the parentheses");
            }
            grouping = Some(after);
        }
        Ok(MetricExpr::Aggregate {
            op,
            k,
            grouping,
            inner: Box::new(inner),
        })
    }

    /// The stages after an already parsed selector, up to the range or
    /// `)`.
    fn log_query_after(&mut self, matchers: Vec<Matcher>) -> Result<Query, ParseError> {
        let stages = self.stages(&Tok::RParen, "a range such as [5m] and \")\"")?;
        Ok(Query { matchers, stages })
    }
}

/// Parses a LogQL / Prometheus duration: one or more number-unit pairs
/// (`ms`, `s`, `m`, `h`, `d`, `w`, `y`), e.g. `1h30m`; `None` when it is
/// not one or overflows.
pub fn parse_duration(s: &str) -> Option<i64> {
    if s.is_empty() {
        return None;
    }
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || i - start > 12 {
            return None;
        }
        let n: i64 = s[start..i].parse().ok()?;
        let unit_start = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit: i64 = match &s[unit_start..i] {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            "w" => 7 * 86_400_000_000_000,
            "y" => 365 * 86_400_000_000_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_selector_filters_json_and_label_filters() {
        let q = parse(
            r#"{subscription="acme", pipe=~"ord.*", level!="DEBUG", kind!~"config|health"} |= "timeout" != "retry" |~ "err(or)?" !~ `^\s*$` | json | metrics_entities_changes_last_run > 100 | event_type="pump-failed""#,
        )
        .expect("parses");
        assert_eq!(q.matchers.len(), 4);
        assert!(q.matchers[1].matches("orders"));
        assert!(
            !q.matchers[1].matches("my-orders"),
            "selector regexes are anchored"
        );
        assert!(q.matchers[3].matches("log"));
        assert!(!q.matchers[3].matches("health"));
        assert_eq!(q.stages.len(), 7);
        assert!(q.has_json());
        match &q.stages[5] {
            Stage::Label(f) => {
                assert!(f.matches(Some("101")));
                assert!(!f.matches(Some("100")));
                assert!(!f.matches(Some("abc")));
                assert!(!f.matches(None));
            }
            other => panic!("expected a label filter, got {other:?}"),
        }
        match &q.stages[0] {
            Stage::Line(f) => {
                assert!(f.matches(b"a timeout here"));
                assert!(!f.matches(b"all good"));
            }
            other => panic!("expected a line filter, got {other:?}"),
        }
        match &q.stages[1] {
            Stage::Line(f) => assert!(!f.matches(b"retry later") && f.matches(b"x")),
            other => panic!("expected a line filter, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_column_and_what_was_expected() {
        let cases = [
            ("", 1, "\"{\""),
            ("{pipe=\"a\"", 10, "\",\" or \"}\""),
            ("{pipe \"a\"}", 7, "one of"),
            ("{pipe=a}", 7, "quoted label value"),
            ("{} |= ", 7, "quoted string"),
            ("{} | logfmt", 12, "comparison"),
            ("{} |= \"x", 7, "closing"),
            ("{} | n > \"x\"", 10, "a number"),
            ("{} ?", 4, "a token"),
            ("{pipe=~\"(\"}", 8, "valid regular expression"),
        ];
        for (q, col, needle) in cases {
            let e = parse(q).expect_err(q);
            assert_eq!(e.column, col, "{q}: {e}");
            assert!(
                e.to_string().contains(needle),
                "{q}: {e} should contain {needle}"
            );
        }
    }

    #[test]
    fn huge_regexes_are_refused_not_compiled() {
        let q = r#"{} |~ "(\w{100}){100}""#;
        let e = parse(q).expect_err("too big");
        assert!(e.expected.contains("size limit"), "{e}");
        assert_eq!(e.reason, "regex_budget");
    }

    #[test]
    fn counts_and_the_total_regex_budget_are_bounded() {
        let limits = QueryLimits {
            max_matchers: 3,
            max_stages: 5,
            max_regex_bytes: 1 << 20,
        };
        let q = r#"{a="1", b="2", c="3", d="4"}"#;
        let e = parse_with(q, &limits).expect_err("4 matchers");
        assert_eq!(e.reason, "too_many_matchers");
        assert!(e.expected.contains("at most 3 matchers"), "{e}");
        let q = format!("{{}}{}", r#" |= "x""#.repeat(6));
        let e = parse_with(&q, &limits).expect_err("6 stages");
        assert_eq!(e.reason, "too_many_stages");
        assert!(e.expected.contains("--max-query-stages"), "{e}");
        assert!(parse_with(&format!("{{}}{}", r#" |= "x""#.repeat(5)), &limits).is_ok());
        // Regexes that each fit but not all together.
        let limits = QueryLimits {
            max_matchers: 100,
            max_stages: 700,
            max_regex_bytes: 1 << 20,
        };
        let q = format!("{{}}{}", r#" |~ "\\d{10}x""#.repeat(700));
        let e = parse_with(&q, &limits).expect_err("700 regexes");
        assert_eq!(e.reason, "regex_budget", "{e}");
        assert!(e.expected.contains("--max-query-regex-bytes"), "{e}");
    }

    #[test]
    fn literal_filters_match_bytes_without_regex_meaning() {
        let q = parse(r#"{} |= "a.b" != "(x""#).expect("parse");
        let f = |i: usize| match &q.stages[i] {
            Stage::Line(f) => (**f).clone(),
            other => panic!("{other:?}"),
        };
        assert!(f(0).matches(b"xa.by"));
        assert!(!f(0).matches(b"axb"));
        assert!(f(1).matches(b"plain"));
        assert!(!f(1).matches(b"a (x b"));
    }

    #[test]
    fn escapes_and_raw_strings() {
        let q = parse("{a=\"x\\\"y\\u00e9\"} |= `a\\b`").expect("parse");
        assert_eq!(q.matchers[0].value, "x\"yé");
        match &q.stages[0] {
            Stage::Line(f) => assert_eq!(f.text, "a\\b"),
            other => panic!("{other:?}"),
        }
    }

    fn metric(src: &str) -> MetricExpr {
        match parse_expr_with(src, &QueryLimits::default()) {
            Ok(Expr::Metric(m)) => m,
            other => panic!("{src}: {other:?}"),
        }
    }

    #[test]
    fn metric_queries_parse() {
        match metric(r#"count_over_time({pipe="orders"} |= "timeout" [5m])"#) {
            MetricExpr::Range {
                func,
                query,
                unwrap,
                range,
            } => {
                assert_eq!(func, RangeFn::CountOverTime);
                assert_eq!(query.matchers.len(), 1);
                assert_eq!(query.stages.len(), 1);
                assert_eq!(unwrap, None);
                assert_eq!(range, 300_000_000_000);
            }
            other => panic!("{other:?}"),
        }
        // The range right after the selector, as older LogQL allows.
        assert!(matches!(
            metric(r#"rate({a="b"}[1h30m] |= "x")"#),
            MetricExpr::Range {
                range: 5_400_000_000_000,
                ..
            }
        ));
        match metric(
            r#"topk(3, sum by (pipe) (sum_over_time({kind="execution"} | json | unwrap metrics_entities_changes_last_run [1h])))"#,
        ) {
            MetricExpr::Aggregate {
                op: AggOp::Topk,
                k: 3,
                grouping: None,
                inner,
            } => match *inner {
                MetricExpr::Aggregate {
                    op: AggOp::Sum,
                    grouping: Some(g),
                    inner,
                    ..
                } => {
                    assert_eq!(
                        g,
                        Grouping {
                            without: false,
                            labels: vec!["pipe".into()]
                        }
                    );
                    assert!(matches!(
                        *inner,
                        MetricExpr::Range { func: RangeFn::SumOverTime, unwrap: Some(ref u), .. }
                            if u == "metrics_entities_changes_last_run"
                    ));
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        // Grouping after the parentheses; without; parenthesised.
        assert!(matches!(
            metric(r#"sum(count_over_time({a="b"}[1m])) without (source, level)"#),
            MetricExpr::Aggregate {
                grouping: Some(Grouping { without: true, .. }),
                ..
            }
        ));
        assert!(matches!(
            metric(r#"(max(bytes_rate({}[10s])))"#),
            MetricExpr::Aggregate { op: AggOp::Max, .. }
        ));
        // A log query through parse_expr_with.
        assert!(matches!(
            parse_expr_with(r#"{a="b"} |= "x""#, &QueryLimits::default()),
            Ok(Expr::Log(_))
        ));
        assert_eq!(parse_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_duration("500ms"), Some(500_000_000));
        assert_eq!(parse_duration("1x"), None);
        assert_eq!(parse_duration("99999999999999y"), None);
    }

    #[test]
    fn metric_errors_name_the_column_and_the_bound() {
        let l = QueryLimits::default();
        for (src, needle) in [
            (r#"count_over_time({a="b"})"#, "range"),
            (r#"count_over_time({a="b"}[0s])"#, "above 0"),
            (r#"count_over_time({a="b"}[32d])"#, "31 days"),
            (r#"count_over_time({a="b"}[5 minutes])"#, "duration"),
            (r#"count_over_time({a="b"}[1m]"#, "\")\""),
            (
                r#"count_over_time({a="b"} | unwrap x [1m])"#,
                "no \"| unwrap\"",
            ),
            (r#"sum_over_time({a="b"}[1m])"#, "unwrap"),
            (
                r#"sum_over_time({a="b"} | unwrap x | json [1m])"#,
                "after \"| unwrap\"",
            ),
            (r#"topk(count_over_time({a="b"}[1m]))"#, "k, a whole number"),
            (
                r#"topk(1.5, count_over_time({a="b"}[1m]))"#,
                "k, a whole number",
            ),
            (
                r#"sum by (a) (count_over_time({}[1m])) by (b)"#,
                "one grouping",
            ),
            (r#"median(count_over_time({}[1m]))"#, "aggregation"),
            (r#"count_over_time({a="b"}[1m]) extra"#, "end of query"),
        ] {
            let e = parse_expr_with(src, &l).expect_err(src);
            assert!(e.to_string().contains(needle), "{src}: {e}");
        }
        let deep = format!(
            "{}count_over_time({{}}[1m]){}",
            "sum(".repeat(20),
            ")".repeat(20)
        );
        let e = parse_expr_with(&deep, &l).expect_err("deep");
        assert_eq!(e.reason, "too_deep", "{e}");
        // Log-only entry points refuse metric syntax with a pointer.
        let e = parse(r#"rate({a="b"}[1m])"#).expect_err("metric in a log search");
        assert!(e.to_string().contains("query_range"), "{e}");
        let e = parse(r#"{a="b"}[1m]"#).expect_err("range in a log search");
        assert!(e.to_string().contains("metric query"), "{e}");
        let e = parse(r#"{a="b"} | unwrap x"#).expect_err("unwrap in a log search");
        assert!(e.to_string().contains("unwrap belongs"), "{e}");
    }
}

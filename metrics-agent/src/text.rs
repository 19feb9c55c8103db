//! The Prometheus text exposition format (0.0.4) and OpenMetrics 1.0:
//! parsing what scrape targets answer, and writing `/metrics`.
//!
//! The parser is strict where a wrong guess would corrupt data (label
//! syntax, duplicate labels, values, trailing text): any such line fails
//! the whole scrape with its line number, as Prometheus does. Exemplars
//! are skipped; OpenMetrics `_created` series are dropped (they are start
//! times, not samples); OpenMetrics timestamps are seconds, text-format
//! ones milliseconds.

use std::collections::HashMap;

use schemas::prom::text as prom_text;

use crate::sample::{Kind, Sample};

/// Which format a body is in (from the response's Content-Type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    OpenMetrics,
}

impl Format {
    pub fn from_content_type(ct: &str) -> Format {
        if ct
            .to_ascii_lowercase()
            .contains("application/openmetrics-text")
        {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// A body that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

fn valid_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ if s
            .bytes()
            .all(|c| c.is_ascii_digit() || b"+-.eE".contains(&c)) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

struct Line<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Line<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }
    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(b' ') | Some(b'\t')) {
            self.pos += 1;
        }
    }
    fn token(&mut self) -> &'a str {
        let start = self.pos;
        while !matches!(self.peek(), None | Some(b' ') | Some(b'\t')) {
            self.pos += 1;
        }
        &self.s[start..self.pos]
    }
    fn name(&mut self) -> &'a str {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == b'_' || c == b':' {
                self.pos += 1;
            } else {
                break;
            }
        }
        &self.s[start..self.pos]
    }
    fn labels(&mut self) -> Result<Vec<(String, String)>, String> {
        let mut out: Vec<(String, String)> = Vec::new();
        // At '{'.
        self.pos += 1;
        loop {
            self.skip_spaces();
            match self.peek() {
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                None => return Err("unterminated label set".into()),
                _ => {}
            }
            let name = self.name();
            if !valid_label_name(name) {
                return Err(format!("invalid label name at column {}", self.pos + 1));
            }
            self.skip_spaces();
            if self.peek() != Some(b'=') {
                return Err(format!("expected '=' after label {name:?}"));
            }
            self.pos += 1;
            self.skip_spaces();
            if self.peek() != Some(b'"') {
                return Err(format!("expected '\"' to open the value of label {name:?}"));
            }
            self.pos += 1;
            let mut value = String::new();
            let mut closed = false;
            let mut chars = self.s[self.pos..].char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        self.pos += i + 1;
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, other)) => {
                            value.push('\\');
                            value.push(other);
                        }
                        None => break,
                    },
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(format!("unterminated value of label {name:?}"));
            }
            if out.iter().any(|(k, _)| k == name) {
                return Err(format!("label {name:?} appears twice"));
            }
            out.push((name.to_string(), value));
            self.skip_spaces();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => return Err("expected ',' or '}' in the label set".into()),
            }
        }
        Ok(out)
    }
}

/// The family a sample name belongs to, given the declared types.
fn kind_of(name: &str, types: &HashMap<String, &str>, format: Format) -> (Kind, bool) {
    if let Some(t) = types.get(name) {
        return match *t {
            "counter" => (Kind::Counter, false),
            "gauge" => (Kind::Gauge, false),
            _ => (Kind::Untyped, false),
        };
    }
    for suffix in [
        "_total", "_created", "_bucket", "_count", "_sum", "_gcount", "_gsum", "_info",
    ] {
        if let Some(base) = name.strip_suffix(suffix) {
            if let Some(t) = types.get(base) {
                let created = suffix == "_created" && format == Format::OpenMetrics;
                let kind = match (*t, suffix) {
                    ("counter", "_total") => Kind::Counter,
                    _ => Kind::Untyped,
                };
                return (kind, created);
            }
        }
    }
    (Kind::Untyped, false)
}

/// Parses `body`; samples without a timestamp get `default_ts_ms`.
pub fn parse(body: &str, format: Format, default_ts_ms: i64) -> Result<Vec<Sample>, ParseError> {
    let mut types: HashMap<String, &str> = HashMap::new();
    let mut out = Vec::new();
    for (i, raw) in body.lines().enumerate() {
        let lineno = i + 1;
        let err = |message: String| ParseError {
            line: lineno,
            message,
        };
        let line = raw.trim_end_matches('\r');
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            let mut parts = comment.split_whitespace();
            if parts.next() == Some("TYPE") {
                let (Some(name), Some(t)) = (parts.next(), parts.next()) else {
                    return Err(err("TYPE line without a name and a type".into()));
                };
                types.insert(name.to_string(), t);
            }
            continue;
        }
        let mut l = Line { s: trimmed, pos: 0 };
        let name = l.name();
        if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
            return Err(err(format!(
                "expected a metric name, got {:?}",
                truncate(trimmed)
            )));
        }
        let mut labels = if l.peek() == Some(b'{') {
            l.labels().map_err(err)?
        } else {
            Vec::new()
        };
        l.skip_spaces();
        let value_text = l.token();
        let value = parse_value(value_text).ok_or_else(|| {
            err(format!(
                "invalid value {:?} of {name}",
                truncate(value_text)
            ))
        })?;
        l.skip_spaces();
        let mut ts = default_ts_ms;
        if !matches!(l.peek(), None | Some(b'#')) {
            let t = l.token();
            ts = match format {
                Format::Text => t.parse::<i64>().ok(),
                Format::OpenMetrics => t
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(|f| (f * 1000.0).round() as i64),
            }
            .ok_or_else(|| err(format!("invalid timestamp {:?}", truncate(t))))?;
            l.skip_spaces();
        }
        match l.peek() {
            None => {}
            // An OpenMetrics exemplar: skipped.
            Some(b'#') if format == Format::OpenMetrics => {}
            Some(_) => {
                return Err(err(format!(
                    "unexpected text after the sample: {:?}",
                    truncate(&trimmed[l.pos..])
                )))
            }
        }
        let (kind, created) = kind_of(name, &types, format);
        if created {
            continue;
        }
        labels.sort();
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
            timestamp_ms: ts,
            kind,
        });
    }
    Ok(out)
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Writes samples in the text format 0.0.4: families contiguous, one
/// `# TYPE` line each, no timestamps (a pulled sample is "now").
pub fn encode(samples: &mut [Sample]) -> String {
    samples.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = String::with_capacity(samples.len() * 64);
    let mut last: Option<&str> = None;
    for s in samples.iter() {
        if last != Some(s.name.as_str()) {
            prom_text::write_type(&mut out, &s.name, s.kind);
            last = Some(s.name.as_str());
        }
        prom_text::write_sample(
            &mut out,
            &s.name,
            s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            s.value,
            None,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_and_openmetrics() {
        let text = "# HELP x help\n# TYPE node_cpu_seconds_total counter\nnode_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 12.5\nnode_load1 0.25 1700000000000\nweird{a=\"q\\\"uo\\\\te\\n\",} NaN\n";
        let s = parse(text, Format::Text, 7).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].kind, Kind::Counter);
        assert_eq!(s[0].get("mode"), Some("idle"));
        assert_eq!((s[0].value, s[0].timestamp_ms), (12.5, 7));
        assert_eq!(s[1].timestamp_ms, 1_700_000_000_000);
        assert_eq!(s[2].get("a"), Some("q\"uo\\te\n"));
        assert!(s[2].value.is_nan());

        let om = "# TYPE sesam_pump_started counter\nsesam_pump_started_total{pipe=\"a\"} 3 1700000000.5 # {trace_id=\"x\"} 1\nsesam_pump_started_created{pipe=\"a\"} 1700000000\n# TYPE g gauge\ng +Inf\n# EOF\n";
        let s = parse(om, Format::OpenMetrics, 0).unwrap();
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(
            (s[0].kind, s[0].timestamp_ms),
            (Kind::Counter, 1_700_000_000_500)
        );
        assert_eq!((s[1].kind, s[1].value), (Kind::Gauge, f64::INFINITY));
    }

    #[test]
    fn garbage_fails_with_the_line_number() {
        for (body, line) in [
            ("ok 1\n<html>oops</html>\n", 2),
            ("m{a=\"1\",a=\"2\"} 1\n", 1),
            ("m{a=1} 1\n", 1),
            ("m 1 2 3\n", 1),
            ("m one\n", 1),
            ("m{a=\"x} 1\n", 1),
            ("\u{0}\u{ff}\n", 1),
            ("m{-=\"1\"} 1\n", 1),
        ] {
            let e = parse(body, Format::Text, 0).unwrap_err();
            assert_eq!(e.line, line, "{body:?}: {e}");
        }
    }

    #[test]
    fn encode_round_trips() {
        let mut s = vec![
            Sample::new("b", Kind::Gauge, 2.0, 0).label("x", "q\"\\\n"),
            Sample::new("a", Kind::Counter, 1e21, 0),
            Sample::new("b", Kind::Gauge, f64::NEG_INFINITY, 0).label("x", "2"),
        ];
        let text = encode(&mut s);
        assert_eq!(
            text,
            "# TYPE a counter\na 1000000000000000000000\n# TYPE b gauge\nb{x=\"q\\\"\\\\\\n\"} 2\nb{x=\"2\"} -Inf\n"
        );
        let back = parse(&text, Format::Text, 0).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[1].get("x"), Some("q\"\\\n"));
    }
}

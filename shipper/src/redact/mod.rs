//! Redaction: the last thing that happens to a record before it leaves the
//! host. Applied to every record by every sink, before encoding.
//!
//! What it does, in order, for each record:
//! - removes, always: `exception_entity`, `entity`, `resolved_entity` (and
//!   any field named in `remove_fields`) wherever they appear, and the
//!   `entities` of `embedded` sources in config snapshots;
//! - masks the whole value of every map key matching a key pattern
//!   (`password`, `secret`, `token`, `api[_-]?key`, `authorization`,
//!   `private[_-]?key`, case-insensitive, at any depth);
//! - replaces, in every string (and map key), matches of the value
//!   patterns: the key patterns in free text (`password=...`,
//!   `Password: ...`, `"password": "..."`, `?api_key=...`), bearer tokens,
//!   `Authorization:` and API-key headers, `Basic` credentials, JWTs, the
//!   password of `user:password@` in URLs (which may contain `@`), PEM
//!   private keys, AWS access key ids, GitHub / Slack / Stripe / Google API
//!   tokens, Luhn-valid card numbers, user regexes, and every resolved secret
//!   value registered with [`Redactor::set_secrets`].
//!
//! Bounds and failure: a scrubbed string is never longer than
//! [`max_scrubbed_len`] of the original (a string that would grow beyond is
//! replaced whole); empty matches replace nothing. If the set of secret
//! values cannot be compiled, the previous set stays in force and
//! [`Redactor::check`] fails until a set compiles: delivery pauses
//! meanwhile (fail closed), it never ships with secrets it does not know.
//!
//! `execution` and `health` bodies are allow-listed by their Rust types:
//! a field not declared in `schemas` does not survive decoding (fail closed).
//! Counters per rule (`shipper_redactions_total{rule}`) count replacements,
//! never values.

mod config;
mod patterns;

use std::collections::{BTreeMap, HashSet};
use std::sync::RwLock;

use hmac::{KeyInit, Mac};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use regex::{Regex, RegexBuilder, RegexSet};
use schemas::{Body, Record};
use serde_json::Value;

pub use config::{RedactConfig, Replacement, UserPattern, BUILTIN_PATTERNS};
pub use patterns::luhn_valid;

/// Literal text every redaction leaves behind.
pub const MASK: &str = "[REDACTED]";

/// Fields that never leave the node, whatever the configuration says.
const ALWAYS_REMOVED: [&str; 3] = ["exception_entity", "entity", "resolved_entity"];

/// Secrets shorter than this are not scrubbed as literals: a 2-character
/// "secret" would shred every text it occurs in and protects nothing.
pub const MIN_SECRET_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error("read redaction rules {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse redaction rules {path}: {message}")]
    Parse {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("redaction rule {rule:?}: invalid regex: {message}")]
    BadPattern { rule: String, message: String },
    #[error("redaction rule {0:?} is not a built-in pattern (known: {known})", known = BUILTIN_PATTERNS.join(", "))]
    UnknownBuiltin(String),
    #[error("replacement = \"hash\" needs hash_key")]
    MissingHashKey,
    #[error("the {count} secret values cannot be compiled for redaction ({message}); the previous set stays in force and shipping is paused until they can")]
    Secrets { count: usize, message: String },
}

/// The longest a string of `len` bytes can become through [`Redactor::scrub`]:
/// `3 × len + 32`. Masks are longer than the shortest secrets, so text dense
/// with tiny secrets grows; past this bound the whole string is replaced.
pub fn max_scrubbed_len(len: usize) -> usize {
    len.saturating_mul(3).saturating_add(32)
}

/// Default bound of the compiled secret-values regex.
const SECRETS_SIZE_LIMIT: usize = 64 << 20;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Debug)]
struct ValueRule {
    name: String,
    re: Regex,
    /// Capture groups to replace (named `secret*`); empty: the whole match.
    groups: Vec<usize>,
    /// A check a match must pass to be replaced (e.g. Luhn).
    validate: Option<fn(&str) -> bool>,
}

impl ValueRule {
    fn new(name: &str, re: Regex) -> ValueRule {
        let groups = re
            .capture_names()
            .enumerate()
            .filter(|(_, n)| n.is_some_and(|n| n.starts_with("secret")))
            .map(|(i, _)| i)
            .collect();
        ValueRule {
            name: name.to_string(),
            validate: patterns::validator(name),
            re,
            groups,
        }
    }

    /// Byte ranges this rule replaces in `s`.
    fn spans(&self, s: &str, out: &mut Vec<std::ops::Range<usize>>) {
        let mut keep = |m: regex::Match<'_>| {
            if replaceable(m.as_str()) && self.validate.is_none_or(|v| v(m.as_str())) {
                out.push(m.range());
            }
        };
        if self.groups.is_empty() {
            self.re.find_iter(s).for_each(&mut keep);
        } else {
            for c in self.re.captures_iter(s) {
                self.groups
                    .iter()
                    .filter_map(|&g| c.get(g))
                    .for_each(&mut keep);
            }
        }
    }
}

/// Adds [start, end) to `found` (start -> (end, rule)), merging it with
/// every range it overlaps: the one starting before it (at most one, as the
/// ranges are disjoint) and those starting inside it.
fn add_span<'a>(
    found: &mut BTreeMap<usize, (usize, &'a str)>,
    start: usize,
    end: usize,
    rule: &'a str,
) {
    let (mut start, mut end, mut rule) = (start, end, rule);
    if let Some((&s0, &(e0, r0))) = found.range(..start).next_back() {
        if e0 > start {
            found.remove(&s0);
            (start, rule) = (s0, r0);
            end = end.max(e0);
        }
    }
    while let Some((&s1, &(e1, r1))) = found.range(start..end).next() {
        found.remove(&s1);
        end = end.max(e1);
        if s1 == start {
            rule = r1;
        }
    }
    found.insert(start, (end, rule));
}

/// Whether a matched value is worth replacing: not empty, and not what an
/// earlier redaction left (so redacting twice changes nothing).
fn replaceable(m: &str) -> bool {
    !m.is_empty() && !m.starts_with("[REDACTED")
}

/// The compiled literal secret values.
#[derive(Debug, Default)]
struct Secrets {
    re: Option<Regex>,
    /// Why the last set could not be compiled (then `re` is the one before).
    stale: Option<String>,
    size_limit: usize,
}

/// Compiled redaction rules; cheap to share (`Arc<Redactor>`).
#[derive(Debug)]
pub struct Redactor {
    keys: Option<Regex>,
    remove: HashSet<String>,
    rules: Vec<ValueRule>,
    any_rule: RegexSet,
    /// Literal secret values (an escaped alternation), replaced at runtime.
    secrets: RwLock<Secrets>,
    replacement: Replacement,
    hash_key: Vec<u8>,
    strip_embedded: bool,
    counters: Family<RuleLabel, Counter>,
}

fn compile(rule: &str, pattern: &str, case_insensitive: bool) -> Result<Regex, RedactError> {
    RegexBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| RedactError::BadPattern {
            rule: rule.to_string(),
            message: e.to_string(),
        })
}

impl Redactor {
    pub fn new(config: &RedactConfig) -> Result<Self, RedactError> {
        let keys = if config.key_patterns.is_empty() {
            None
        } else {
            for p in &config.key_patterns {
                compile(&format!("key:{p}"), p, true)?;
            }
            let joined = config
                .key_patterns
                .iter()
                .map(|p| format!("(?:{p})"))
                .collect::<Vec<_>>()
                .join("|");
            Some(compile("key_patterns", &joined, true)?)
        };
        let mut rules = Vec::new();
        for name in &config.builtin_patterns {
            if name == "key_value" {
                if !config.key_patterns.is_empty() {
                    let re = compile(name, &patterns::key_value(&config.key_patterns), false)?;
                    rules.push(ValueRule::new(name, re));
                }
                continue;
            }
            let pattern =
                patterns::builtin(name).ok_or_else(|| RedactError::UnknownBuiltin(name.clone()))?;
            rules.push(ValueRule::new(name, compile(name, pattern, false)?));
        }
        for p in &config.patterns {
            rules.push(ValueRule::new(&p.name, compile(&p.name, &p.regex, false)?));
        }
        let any_rule = RegexSet::new(rules.iter().map(|r| r.re.as_str())).map_err(|e| {
            RedactError::BadPattern {
                rule: "value patterns".into(),
                message: e.to_string(),
            }
        })?;
        let hash_key = match (config.replacement, &config.hash_key) {
            (Replacement::Hash, None) => return Err(RedactError::MissingHashKey),
            (_, key) => key.clone().unwrap_or_default().into_bytes(),
        };
        let mut remove: HashSet<String> = config.remove_fields.iter().cloned().collect();
        remove.extend(ALWAYS_REMOVED.iter().map(|s| s.to_string()));
        Ok(Redactor {
            keys,
            remove,
            rules,
            any_rule,
            secrets: RwLock::new(Secrets {
                size_limit: SECRETS_SIZE_LIMIT,
                ..Secrets::default()
            }),
            replacement: config.replacement,
            hash_key,
            strip_embedded: config.strip_embedded_entities,
            counters: Family::default(),
        })
    }

    /// Replaces the set of resolved secret values scrubbed as literals.
    /// Values shorter than [`MIN_SECRET_LEN`] are ignored. A set that cannot
    /// be compiled is logged at ERROR and handled as [`Redactor::try_set_secrets`]
    /// describes (fail closed).
    pub fn set_secrets<I, S>(&self, values: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        if let Err(e) = self.try_set_secrets(values) {
            tracing::error!(error = %e, "redaction: secret values not updated");
        }
    }

    /// Replaces the set of resolved secret values scrubbed as literals;
    /// returns how many are scrubbed. If they cannot be compiled, the
    /// previous set stays in force and [`Redactor::check`] fails until a set
    /// compiles, so that delivery pauses rather than ship a secret it was
    /// told about.
    pub fn try_set_secrets<I, S>(&self, values: I) -> Result<usize, RedactError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut lits: Vec<String> = values
            .into_iter()
            .filter(|v| v.as_ref().len() >= MIN_SECRET_LEN)
            .map(|v| regex::escape(v.as_ref()))
            .collect();
        // Longest first, so a secret containing another is replaced whole.
        lits.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        lits.dedup();
        let count = lits.len();
        let size_limit = self
            .secrets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .size_limit;
        let built = if lits.is_empty() {
            Ok(None)
        } else {
            RegexBuilder::new(&lits.join("|"))
                .size_limit(size_limit)
                .build()
                .map(Some)
        };
        let mut secrets = self.secrets.write().unwrap_or_else(|p| p.into_inner());
        match built {
            Ok(re) => {
                secrets.re = re;
                secrets.stale = None;
                Ok(count)
            }
            Err(e) => {
                let message = e.to_string().chars().take(300).collect::<String>();
                secrets.stale = Some(message.clone());
                Err(RedactError::Secrets { count, message })
            }
        }
    }

    /// Whether the redaction knows every secret it was told about: fails
    /// while the last [`Redactor::try_set_secrets`] could not be compiled.
    pub fn check(&self) -> Result<(), RedactError> {
        let secrets = self.secrets.read().unwrap_or_else(|p| p.into_inner());
        match &secrets.stale {
            None => Ok(()),
            Some(message) => Err(RedactError::Secrets {
                count: 0,
                message: message.clone(),
            }),
        }
    }

    /// Test hook: the size bound of the compiled secret values (64 MiB).
    #[doc(hidden)]
    pub fn set_secrets_size_limit(&self, bytes: usize) {
        self.secrets
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .size_limit = bytes;
    }

    /// Registers `shipper_redactions_total{rule}`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "shipper_redactions",
            "Values replaced or removed by redaction, by rule",
            self.counters.clone(),
        );
    }

    /// How many redactions `rule` has made.
    pub fn count(&self, rule: &str) -> u64 {
        self.counters
            .get_or_create(&RuleLabel {
                rule: rule.to_string(),
            })
            .get()
    }

    fn hit(&self, rule: &str, n: u64) {
        self.counters
            .get_or_create(&RuleLabel {
                rule: rule.to_string(),
            })
            .inc_by(n);
    }

    fn replacement_for(&self, value: &str) -> String {
        match self.replacement {
            Replacement::Mask => MASK.to_string(),
            Replacement::Hash => {
                let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.hash_key)
                    .expect("HMAC takes keys of any length");
                mac.update(value.as_bytes());
                let digest = mac.finalize().into_bytes();
                format!("[REDACTED:{}]", hex::encode(&digest[..8]))
            }
        }
    }

    /// Byte ranges of `s` to replace, sorted and disjoint, each with the
    /// rule that found it first. Matches of every rule (and of the secret
    /// values) are found on the original text; where two overlap they are
    /// merged into one replaced range, so a secret inside a larger match
    /// (or straddling two) can never leave part of either readable.
    fn spans(&self, s: &str) -> Vec<(std::ops::Range<usize>, &str)> {
        // start -> (end, rule)
        let mut found: BTreeMap<usize, (usize, &str)> = BTreeMap::new();
        {
            let secrets = self.secrets.read().unwrap_or_else(|p| p.into_inner());
            if let Some(re) = secrets.re.as_ref() {
                for m in re.find_iter(s) {
                    if !m.is_empty() {
                        add_span(&mut found, m.start(), m.end(), "secret_value");
                    }
                }
            }
        }
        if !self.rules.is_empty() {
            let mut ranges = Vec::new();
            for i in self.any_rule.matches(s).into_iter() {
                let rule = &self.rules[i];
                ranges.clear();
                rule.spans(s, &mut ranges);
                for r in ranges.drain(..) {
                    add_span(&mut found, r.start, r.end, rule.name.as_str());
                }
            }
        }
        found
            .into_iter()
            .map(|(start, (end, rule))| (start..end, rule))
            .collect()
    }

    /// Scrubs one string in place. Returns whether it changed.
    pub fn scrub(&self, s: &mut String) -> bool {
        let spans = self.spans(s);
        if spans.is_empty() {
            return false;
        }
        let mut out = String::with_capacity(s.len() + spans.len() * MASK.len());
        let mut at = 0;
        for (r, rule) in &spans {
            out.push_str(&s[at..r.start]);
            out.push_str(&self.replacement_for(&s[r.clone()]));
            at = r.end;
            self.hit(rule, 1);
        }
        out.push_str(&s[at..]);
        if out.len() > max_scrubbed_len(s.len()) {
            self.hit("oversized", 1);
            out = MASK.to_string();
        }
        *s = out;
        true
    }

    /// The largest cut position `<= at` (on a char boundary) that does not
    /// fall inside anything redaction would replace in `text`, so that
    /// cutting a long text into pieces never splits a secret between two
    /// pieces (where neither half would be recognised). `at` itself when no
    /// such position exists above 0.
    pub fn safe_cut(&self, text: &str, at: usize) -> usize {
        let mut at = at.min(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let spans = self.spans(text);
        let mut cut = at;
        // Spans are sorted and disjoint: walking back over the ones that
        // contain the cut ends at a safe place.
        for (r, _) in spans.iter().rev() {
            if r.start < cut && cut < r.end {
                cut = r.start;
            }
        }
        if cut == 0 {
            at
        } else {
            cut
        }
    }

    fn scrub_opt(&self, s: &mut Option<String>) {
        if let Some(s) = s {
            self.scrub(s);
        }
    }

    fn sensitive_key(&self, key: &str) -> bool {
        self.keys.as_ref().is_some_and(|re| re.is_match(key))
    }

    fn mask_value(&self, v: &Value) -> Value {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Value::String(self.replacement_for(&text))
    }

    /// Redacts a JSON value in place, at any depth.
    pub fn redact_value(&self, v: &mut Value) {
        match v {
            Value::String(s) => {
                self.scrub(s);
            }
            Value::Array(items) => items.iter_mut().for_each(|x| self.redact_value(x)),
            Value::Object(map) => {
                let before = map.len();
                map.retain(|k, _| !self.remove.contains(k));
                if map.len() != before {
                    self.hit("removed_field", (before - map.len()) as u64);
                }
                if self.strip_embedded
                    && map.get("type").and_then(Value::as_str) == Some("embedded")
                    && map.remove("entities").is_some()
                {
                    self.hit("embedded_entities", 1);
                }
                // Keys can carry secrets too; rebuild the map only if one does.
                let needs_rename = map.keys().any(|k| self.would_scrub(k));
                if needs_rename {
                    let old = std::mem::take(map);
                    for (mut k, val) in old {
                        self.scrub(&mut k);
                        map.insert(k, val);
                    }
                }
                for (k, x) in map.iter_mut() {
                    if self.sensitive_key(k) {
                        if !matches!(x, Value::Null) {
                            *x = self.mask_value(x);
                            self.hit("sensitive_key", 1);
                        }
                    } else {
                        self.redact_value(x);
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether `s` would change, without counting.
    fn would_scrub(&self, s: &str) -> bool {
        !self.spans(s).is_empty()
    }

    /// Redacts one record in place.
    pub fn redact(&self, record: &mut Record) {
        match &mut record.body {
            Body::Log(l) => {
                self.scrub(&mut l.message);
                self.scrub(&mut l.target);
                let mut fields = Value::Object(std::mem::take(&mut l.fields).into_iter().collect());
                self.redact_value(&mut fields);
                if let Value::Object(m) = fields {
                    l.fields = m.into_iter().collect();
                }
            }
            Body::Execution(e) => {
                let removed =
                    e.exception_entity.take().is_some() as u64 + e.entity.take().is_some() as u64;
                if removed > 0 {
                    self.hit("removed_field", removed);
                }
                self.scrub(&mut e.pipe);
                self.scrub_opt(&mut e.run_id);
                self.scrub_opt(&mut e.reason_why_stopped);
                self.scrub_opt(&mut e.traceback);
                self.scrub_opt(&mut e.original_error_message);
                self.scrub_opt(&mut e.entity_id);
                self.scrub_opt(&mut e.error_code);
                self.scrub_opt(&mut e.start_time);
                self.scrub_opt(&mut e.end_time);
            }
            Body::Health(h) => {
                for c in &mut h.checks {
                    self.scrub(&mut c.name);
                    self.scrub_opt(&mut c.detail);
                }
            }
            Body::Config(c) => {
                for entity in &mut c.config {
                    self.redact_value(entity);
                }
            }
            Body::System(s) => {
                self.scrub(&mut s.message);
                self.scrub_opt(&mut s.file);
                self.scrub_opt(&mut s.facility);
            }
        }
    }
}

#[cfg(test)]
mod tests;

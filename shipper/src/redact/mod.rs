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
//!   patterns: bearer tokens, JWTs, `user:password@` in URLs, PEM private
//!   keys, AWS access key ids, Luhn-valid card numbers, user regexes, and
//!   every resolved secret value registered with [`Redactor::set_secrets`].
//!
//! `execution` and `health` bodies are allow-listed by their Rust types:
//! a field not declared in `schemas` does not survive decoding (fail closed).
//! Counters per rule (`shipper_redactions_total{rule}`) count replacements,
//! never values.

mod config;
mod patterns;

use std::collections::HashSet;
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
    #[error("redaction rule {0:?} is not a built-in pattern (known: bearer_token, jwt, url_credentials, pem_private_key, aws_access_key, card_number)")]
    UnknownBuiltin(String),
    #[error("replacement = \"hash\" needs hash_key")]
    MissingHashKey,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Debug)]
struct ValueRule {
    name: String,
    re: Regex,
    luhn: bool,
}

/// Compiled redaction rules; cheap to share (`Arc<Redactor>`).
#[derive(Debug)]
pub struct Redactor {
    keys: Option<Regex>,
    remove: HashSet<String>,
    rules: Vec<ValueRule>,
    any_rule: RegexSet,
    /// Literal secret values (an escaped alternation), replaced at runtime.
    secrets: RwLock<Option<Regex>>,
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
            let pattern =
                patterns::builtin(name).ok_or_else(|| RedactError::UnknownBuiltin(name.clone()))?;
            rules.push(ValueRule {
                name: name.clone(),
                re: compile(name, pattern, false)?,
                luhn: name == "card_number",
            });
        }
        for p in &config.patterns {
            rules.push(ValueRule {
                name: p.name.clone(),
                re: compile(&p.name, &p.regex, false)?,
                luhn: false,
            });
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
            secrets: RwLock::new(None),
            replacement: config.replacement,
            hash_key,
            strip_embedded: config.strip_embedded_entities,
            counters: Family::default(),
        })
    }

    /// Replaces the set of resolved secret values scrubbed as literals.
    /// Values shorter than [`MIN_SECRET_LEN`] are ignored.
    pub fn set_secrets<I, S>(&self, values: I)
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
        lits.sort_by_key(|l| std::cmp::Reverse(l.len()));
        lits.dedup();
        let re = if lits.is_empty() {
            None
        } else {
            RegexBuilder::new(&lits.join("|"))
                .size_limit(64 << 20)
                .build()
                .ok()
        };
        *self.secrets.write().unwrap_or_else(|p| p.into_inner()) = re;
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

    /// Scrubs one string in place. Returns whether it changed.
    pub fn scrub(&self, s: &mut String) -> bool {
        let mut changed = false;
        // Secrets first: a secret inside a URL or token must go whole.
        let secrets = self.secrets.read().unwrap_or_else(|p| p.into_inner());
        if let Some(re) = secrets.as_ref() {
            let mut n = 0u64;
            let out = re.replace_all(s, |c: &regex::Captures<'_>| {
                n += 1;
                self.replacement_for(&c[0])
            });
            if n > 0 {
                *s = out.into_owned();
                self.hit("secret_value", n);
                changed = true;
            }
        }
        drop(secrets);
        if self.rules.is_empty() {
            return changed;
        }
        let matched: Vec<usize> = self.any_rule.matches(s).into_iter().collect();
        for i in matched {
            let rule = &self.rules[i];
            let mut n = 0u64;
            let out = rule.re.replace_all(s, |c: &regex::Captures<'_>| {
                let m = &c[0];
                if rule.luhn && !luhn_valid(m) {
                    return m.to_string();
                }
                n += 1;
                self.replacement_for(m)
            });
            if n > 0 {
                *s = out.into_owned();
                self.hit(&rule.name, n);
                changed = true;
            }
        }
        changed
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
        let secrets = self.secrets.read().unwrap_or_else(|p| p.into_inner());
        if secrets.as_ref().is_some_and(|re| re.is_match(s)) {
            return true;
        }
        drop(secrets);
        let matched: Vec<usize> = self.any_rule.matches(s).into_iter().collect();
        matched.into_iter().any(|i| {
            let rule = &self.rules[i];
            rule.re
                .find_iter(s)
                .any(|m| !rule.luhn || luhn_valid(m.as_str()))
        })
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

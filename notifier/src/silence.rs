//! Silences: label matchers and a time window that mute notifications of
//! the matching alerts of one subscription (the alerts keep firing).
//!
//! A silence is validated and compiled once ([`ActiveSilence::compile`]):
//! the number of matchers, each pattern's length, the regexes' compiled
//! size (the silence's regex budget is shared by its regex matchers) and
//! the window are bounded by [`Limits`].

use std::collections::BTreeMap;

use schemas::notify::Silence;

use crate::error::NotifierError;
use crate::limits::{self, Limits};
use crate::rule::{check_count, check_id, check_text, compile_regex, over_limit};

/// One compiled matcher.
#[derive(Debug, Clone)]
pub struct LabelMatcher {
    pub name: String,
    /// Set for regex matchers (anchored at both ends).
    pub regex: Option<regex::Regex>,
    pub value: String,
    /// `false` negates the matcher.
    pub equal: bool,
}

impl LabelMatcher {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.name).map(String::as_str).unwrap_or("");
        let m = match &self.regex {
            Some(re) => re.is_match(v),
            None => v == self.value,
        };
        m == self.equal
    }
}

/// A validated silence.
#[derive(Debug, Clone)]
pub struct ActiveSilence {
    pub silence: Silence,
    pub starts: i64,
    pub ends: i64,
    pub matchers: Vec<LabelMatcher>,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> NotifierError {
    NotifierError::invalid(field, message)
}

impl ActiveSilence {
    /// Validates `silence` (id, subscription and `startsAt` filled in)
    /// at collector time `now`; `None` restores a stored silence (its
    /// window was checked when it was created, and it may have ended).
    pub fn compile(
        silence: Silence,
        now: Option<i64>,
        limits: &Limits,
    ) -> Result<ActiveSilence, NotifierError> {
        check_id("id", &silence.id)?;
        check_text("comment", &silence.comment, limits)?;
        check_text("createdBy", &silence.created_by, limits)?;
        if silence.matchers.is_empty() {
            return Err(invalid("matchers", "a silence needs at least one matcher"));
        }
        check_count(
            "matchers",
            silence.matchers.len(),
            limits.max_matchers_per_silence,
            "matchers",
        )?;
        let starts = schemas::time::parse_rfc3339(&silence.starts_at)
            .ok_or_else(|| invalid("startsAt", "startsAt must be an RFC 3339 time"))?;
        let ends = schemas::time::parse_rfc3339(&silence.ends_at)
            .ok_or_else(|| invalid("endsAt", "endsAt must be an RFC 3339 time"))?;
        if ends <= starts {
            return Err(invalid("endsAt", "endsAt must be after startsAt"));
        }
        if let Some(now) = now {
            if ends <= now {
                return Err(invalid("endsAt", "endsAt must be in the future"));
            }
            let max = i64::try_from(limits.max_silence_duration.as_nanos()).unwrap_or(i64::MAX);
            let span = ends.saturating_sub(starts.max(now));
            if span > max || starts.saturating_sub(now) > max {
                return Err(over_limit(
                    "endsAt",
                    "duration",
                    format!(
                        "a silence may last at most {} and start at most that far ahead (--max-silence-duration)",
                        limits::human(limits.max_silence_duration)
                    ),
                ));
            }
        }
        let regexes = silence.matchers.iter().filter(|m| m.is_regex).count();
        let mut matchers = Vec::with_capacity(silence.matchers.len());
        for (i, m) in silence.matchers.iter().enumerate() {
            if m.name.is_empty() {
                return Err(invalid(
                    format!("matchers[{i}].name"),
                    "label name must not be empty",
                ));
            }
            check_text(&format!("matchers[{i}].name"), &m.name, limits)?;
            let field = format!("matchers[{i}].value");
            let regex = if m.is_regex {
                Some(compile_regex(
                    &field,
                    &format!("^(?:{})$", m.value),
                    &m.value,
                    regexes,
                    limits,
                )?)
            } else {
                check_text(&field, &m.value, limits)?;
                None
            };
            matchers.push(LabelMatcher {
                name: m.name.clone(),
                regex,
                value: m.value.clone(),
                equal: m.is_equal,
            });
        }
        Ok(ActiveSilence {
            silence,
            starts,
            ends,
            matchers,
        })
    }

    /// Whether the silence mutes an alert with `labels` of subscription
    /// `sub` at `now`.
    pub fn mutes(&self, sub: &str, labels: &BTreeMap<String, String>, now: i64) -> bool {
        now >= self.starts
            && now < self.ends
            && self.silence.subscription == sub
            && self.matchers.iter().all(|m| m.matches(labels))
    }

    /// `pending`, `active` or `expired` at `now`.
    pub fn state(&self, now: i64) -> &'static str {
        if now < self.starts {
            "pending"
        } else if now < self.ends {
            "active"
        } else {
            "expired"
        }
    }
}

/// The silences of every subscription, by (subscription, id).
#[derive(Debug, Default)]
pub(crate) struct Silences {
    map: BTreeMap<(String, String), ActiveSilence>,
}

impl Silences {
    pub(crate) fn get(&self, key: &(String, String)) -> Option<&ActiveSilence> {
        self.map.get(key)
    }

    pub(crate) fn insert(&mut self, s: ActiveSilence) {
        let key = (s.silence.subscription.clone(), s.silence.id.clone());
        self.map.insert(key, s);
    }

    pub(crate) fn remove(&mut self, key: &(String, String)) -> Option<ActiveSilence> {
        self.map.remove(key)
    }

    /// The silences of `sub`.
    pub(crate) fn of<'a>(&'a self, sub: &'a str) -> impl Iterator<Item = &'a ActiveSilence> + 'a {
        self.map
            .range((sub.to_string(), String::new())..)
            .take_while(move |((s, _), _)| s == sub)
            .map(|(_, v)| v)
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &ActiveSilence> {
        self.map.values()
    }

    pub(crate) fn keys(&self) -> Vec<(String, String)> {
        self.map.keys().cloned().collect()
    }

    pub(crate) fn count(&self, sub: &str) -> usize {
        self.of(sub).count()
    }

    /// Ids of the silences of `sub` muting `labels` at `now`.
    pub(crate) fn muting(
        &self,
        sub: &str,
        labels: &BTreeMap<String, String>,
        now: i64,
    ) -> Vec<String> {
        self.of(sub)
            .filter(|s| s.mutes(sub, labels, now))
            .map(|s| s.silence.id.clone())
            .collect()
    }

    /// Whether a silence of `sub` mutes `labels` at `now`.
    pub(crate) fn mutes(&self, sub: &str, labels: &BTreeMap<String, String>, now: i64) -> bool {
        self.of(sub).any(|s| s.mutes(sub, labels, now))
    }

    pub(crate) fn purge(&mut self, sub: &str) {
        self.map.retain(|(s, _), _| s != sub);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_767_225_600_000_000_000;

    fn silence(matchers: serde_json::Value, ends_in_secs: i64) -> Silence {
        serde_json::from_value(json!({
            "id": "s1", "subscription": "acme", "matchers": matchers,
            "startsAt": schemas::time::rfc3339_from_nanos(NOW),
            "endsAt": schemas::time::rfc3339_from_nanos(NOW + ends_in_secs * 1_000_000_000),
        }))
        .unwrap()
    }

    fn field(r: Result<ActiveSilence, NotifierError>) -> (String, String) {
        let e = r.unwrap_err();
        (e.field.unwrap_or_default(), e.message)
    }

    #[test]
    fn too_many_matchers_are_refused_before_anything_compiles() {
        let many: Vec<_> = (0..300)
            .map(|i| json!({"name": "pipe", "value": format!("(a+)+{i}\\w{{100}}"), "isRegex": true}))
            .collect();
        let t = std::time::Instant::now();
        let (f, m) = field(ActiveSilence::compile(
            silence(json!(many), 60),
            Some(NOW),
            &Limits::default(),
        ));
        assert!(t.elapsed() < std::time::Duration::from_millis(50));
        assert_eq!(f, "matchers");
        assert!(m.contains("limit of 32"), "{m}");
    }

    #[test]
    fn regex_budget_is_shared_by_the_silence() {
        let limits = Limits::default();
        // A Unicode class (~40 KiB compiled) fits the whole budget, but
        // not a 32nd of it.
        let big = json!({"name": "pipe", "value": "\\w", "isRegex": true});
        assert!(
            ActiveSilence::compile(silence(json!([big.clone()]), 60), Some(NOW), &limits).is_ok()
        );
        let many: Vec<_> = (0..32).map(|_| big.clone()).collect();
        let (f, m) = field(ActiveSilence::compile(
            silence(json!(many), 60),
            Some(NOW),
            &limits,
        ));
        assert_eq!(f, "matchers[0].value");
        assert!(m.contains("regex budget"), "{m}");
    }

    #[test]
    fn windows_are_bounded() {
        let limits = Limits::default();
        let m = json!([{"name": "pipe", "value": "x"}]);
        assert_eq!(
            field(ActiveSilence::compile(
                silence(m.clone(), 40_000 * 86_400),
                Some(NOW),
                &limits
            ))
            .0,
            "endsAt"
        );
        assert_eq!(
            field(ActiveSilence::compile(
                silence(m.clone(), -10),
                Some(NOW),
                &limits
            ))
            .0,
            "endsAt"
        );
        let s = ActiveSilence::compile(silence(m, 3600), Some(NOW), &limits).unwrap();
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("pipe".to_string(), "x".to_string());
        assert!(s.mutes("acme", &labels, NOW + 1));
        assert!(!s.mutes("other", &labels, NOW + 1));
        assert!(!s.mutes("acme", &labels, NOW + 3601 * 1_000_000_000));
    }
}

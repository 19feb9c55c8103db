//! The notifier's API as methods: rules, rule types, receivers, silences,
//! alerts and the notification history, scoped by [`Scope`]. Operators
//! manage their own subscription; admins every one. Rule and silence ids
//! are unique within a subscription; another tenant's id is simply not
//! found. Every refusal is counted by reason and subscription.

use std::path::Path;
use std::sync::Arc;

use rand::RngExt;
use schemas::notify::{NotificationRule, Receiver, RuleType, Silence};
use schemas::time::rfc3339_from_nanos;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::engine::Engine;
use crate::error::{ErrorKind, NotifierError};
use crate::model::Change;
use crate::receiver;
use crate::rule::{self, CompiledRule, RuleKey};
use crate::service::{lock, Notifier};
use crate::silence::ActiveSilence;
use crate::telemetry::labels;

/// Whose data a caller may see and change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Admin: every subscription.
    All,
    /// Operator of one subscription.
    Subscription(String),
}

impl Scope {
    /// The subscription a caller names for an object: an operator's own
    /// (an explicit other one is refused); for an admin the given one.
    pub(crate) fn claim(&self, field: &str, sub: &mut String) -> Result<(), NotifierError> {
        match self {
            Scope::Subscription(s) if sub.is_empty() => {
                *sub = s.clone();
                Ok(())
            }
            Scope::Subscription(s) if s != sub => Err(NotifierError::forbidden(
                field,
                format!("this token may only manage subscription {s:?}"),
            )),
            Scope::All if sub.is_empty() => Err(NotifierError::invalid(
                field,
                "subscription is required for an admin token",
            )),
            _ => Ok(()),
        }
    }

    /// The subscription a caller means in a path lookup (`sub` from
    /// `?subscription=`): an operator's own whatever it says; an admin's
    /// choice (`None`: find it).
    pub(crate) fn lookup<'a>(&'a self, sub: Option<&'a str>) -> Option<&'a str> {
        match self {
            Scope::Subscription(s) => Some(s.as_str()),
            Scope::All => sub,
        }
    }

    /// The subscription to count a refusal under.
    pub(crate) fn label(&self, sub: &str) -> String {
        match self {
            Scope::Subscription(s) => s.clone(),
            Scope::All => sub.to_string(),
        }
    }
}

/// A rules file: receivers, rules and silences to load at start.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default)]
    pub receivers: Vec<Receiver>,
    #[serde(default)]
    pub rules: Vec<NotificationRule>,
    #[serde(default)]
    pub silences: Vec<Silence>,
}

fn random_id(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}-{n:016x}")
}

impl Notifier {
    /// Counts an API refusal under its reason and `sub`.
    fn refused(&self, sub: &str, e: &NotifierError) {
        if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Storage) {
            return;
        }
        let reason = e.reason.unwrap_or("invalid");
        self.inner
            .metrics
            .refusals
            .get_or_create(&labels(&[("reason", reason), ("subscription", sub)]))
            .inc();
    }

    // ---- rules ---------------------------------------------------------------

    /// `GET /api/v1/notification-rule-types`.
    pub fn rule_types() -> Value {
        let types: Vec<Value> = RuleType::ALL
            .iter()
            .map(|t| {
                json!({
                    "type": t.as_str(),
                    "description": t.description(),
                    "params_schema": schemas::notify::params_schema(*t),
                })
            })
            .collect();
        json!({ "types": types })
    }

    /// The rules `scope` may see (an admin may narrow to `sub`).
    pub fn rules(&self, scope: &Scope, sub: Option<&str>) -> Vec<NotificationRule> {
        let e = lock(&self.inner.engine);
        match scope.lookup(sub) {
            Some(s) => e.rules_of(s).map(|r| r.rule.clone()).collect(),
            None => e.rules.values().map(|r| r.rule.clone()).collect(),
        }
    }

    /// The rules `scope` may see (an admin may narrow to `sub`) that
    /// apply to `pipe` of `source`: their source glob matches the source
    /// and one of their pipe globs the pipe.
    pub fn rules_for_pipe(
        &self,
        scope: &Scope,
        sub: Option<&str>,
        source: &str,
        pipe: &str,
    ) -> Vec<NotificationRule> {
        let e = lock(&self.inner.engine);
        let applies = |r: &&Arc<CompiledRule>| r.matches_source(source) && r.matches_pipe(pipe);
        match scope.lookup(sub) {
            Some(s) => e
                .rules_of(s)
                .filter(applies)
                .map(|r| r.rule.clone())
                .collect(),
            None => e
                .rules
                .values()
                .filter(applies)
                .map(|r| r.rule.clone())
                .collect(),
        }
    }

    /// The key of rule `id` as `scope` means it: its own subscription, or
    /// for an admin `sub` or the only subscription that has such a rule.
    fn find_rule(
        e: &Engine,
        scope: &Scope,
        sub: Option<&str>,
        id: &str,
    ) -> Result<RuleKey, NotifierError> {
        let missing = || NotifierError::not_found(format!("no notification rule {id:?}"));
        if let Some(s) = scope.lookup(sub) {
            let k = RuleKey::new(s, id);
            return e.rules.contains_key(&k).then_some(k).ok_or_else(missing);
        }
        let found: Vec<&RuleKey> = e.rules.keys().filter(|k| k.id == id).take(2).collect();
        match found.as_slice() {
            [k] => Ok((*k).clone()),
            [] => Err(missing()),
            _ => Err(NotifierError::invalid(
                "subscription",
                format!("several subscriptions have a rule {id:?}; give ?subscription="),
            )),
        }
    }

    pub fn rule(
        &self,
        scope: &Scope,
        sub: Option<&str>,
        id: &str,
    ) -> Result<NotificationRule, NotifierError> {
        let e = lock(&self.inner.engine);
        let k = Self::find_rule(&e, scope, sub, id)?;
        e.rules
            .get(&k)
            .map(|r| r.rule.clone())
            .ok_or_else(|| NotifierError::not_found(format!("no notification rule {id:?}")))
    }

    /// Creates (`id` None: POST) or replaces (`id` Some: PUT) a rule.
    /// Returns the stored rule, warnings, and whether it was created.
    /// Compiles regexes: call it off the async workers.
    pub fn put_rule(
        &self,
        scope: &Scope,
        id: Option<&str>,
        mut rule: NotificationRule,
    ) -> Result<(NotificationRule, Vec<String>, bool), NotifierError> {
        let label = scope.label(&rule.subscription);
        let r = self.put_rule_inner(scope, id, &mut rule);
        if let Err(e) = &r {
            self.refused(&label, e);
        }
        r
    }

    fn put_rule_inner(
        &self,
        scope: &Scope,
        id: Option<&str>,
        rule: &mut NotificationRule,
    ) -> Result<(NotificationRule, Vec<String>, bool), NotifierError> {
        scope.claim("subscription", &mut rule.subscription)?;
        if rule.params.is_null() {
            rule.params = Value::Object(Default::default());
        }
        match id {
            Some(id) if !rule.id.is_empty() && rule.id != id => {
                return Err(NotifierError::invalid(
                    "id",
                    format!("id {:?} differs from the path's {id:?}", rule.id),
                ))
            }
            Some(id) => rule.id = id.to_string(),
            None if rule.id.is_empty() => rule.id = random_id("rule"),
            None => {}
        }
        let limits = &self.inner.config.limits;
        let compiled = Arc::new(rule::compile(rule.clone(), limits)?);
        let rule = compiled.rule.clone();
        let r = rule.clone();
        let max_rules = limits.max_rules_per_subscription;
        let (warnings, created) = self.with_engine(move |e, now| {
            let exists = e.rules.contains_key(&compiled.key());
            if exists && id.is_none() {
                return Err(NotifierError::conflict(
                    "id",
                    format!("a rule with id {:?} exists; PUT to replace it", r.id),
                ));
            }
            if !exists && e.rule_count(&r.subscription) >= max_rules {
                return Err(NotifierError::invalid(
                    "id",
                    format!(
                        "subscription {:?} has {max_rules} rules, the limit (--max-rules-per-subscription)",
                        r.subscription
                    ),
                )
                .with_reason("rules"));
            }
            for (i, name) in r.receivers.iter().enumerate() {
                if !e
                    .receivers
                    .contains_key(&(r.subscription.clone(), name.clone()))
                {
                    return Err(NotifierError::invalid(
                        format!("receivers[{i}]"),
                        format!(
                            "no receiver {name:?} in subscription {:?}; PUT /api/v1/receivers/{name} first",
                            r.subscription
                        ),
                    ));
                }
            }
            let mut warnings = Vec::new();
            if compiled.is_pipe_rule() {
                let known = e.known_pipes(&r.subscription);
                if !known.is_empty() {
                    for (i, p) in compiled.pipes.iter().enumerate() {
                        if !known.iter().any(|k| p.matches(k)) {
                            warnings.push(format!(
                                "pipes[{i}]: {:?} matches none of the {} pipes seen in subscription {:?}",
                                p.as_str(),
                                known.len(),
                                r.subscription
                            ));
                        }
                    }
                }
            }
            e.record(Change::Rule(compiled.rule.clone()));
            e.set_rule(compiled, now);
            Ok((warnings, !exists))
        })??;
        self.refresh_metric_watch();
        Ok((rule, warnings, created))
    }

    /// Deletes a rule (resolving its alerts). Writes RocksDB: call it off
    /// the async workers.
    pub fn delete_rule(
        &self,
        scope: &Scope,
        sub: Option<&str>,
        id: &str,
    ) -> Result<(), NotifierError> {
        self.with_engine(|e, now| {
            let k = Self::find_rule(e, scope, sub, id)?;
            e.remove_rule(&k, now);
            e.record(Change::RuleGone(k));
            Ok(())
        })??;
        self.refresh_metric_watch();
        Ok(())
    }

    // ---- receivers -------------------------------------------------------

    fn masked(r: &Receiver) -> Receiver {
        let mut r = r.clone();
        if r.secret.is_some() {
            r.secret = Some("<set>".into());
        }
        r
    }

    pub fn receivers(&self, scope: &Scope, sub: Option<&str>) -> Vec<Receiver> {
        let want = scope.lookup(sub);
        lock(&self.inner.engine)
            .receivers
            .values()
            .filter(|r| want.is_none_or(|s| s == r.subscription))
            .map(Self::masked)
            .collect()
    }

    pub fn receiver(
        &self,
        scope: &Scope,
        sub: Option<&str>,
        name: &str,
    ) -> Result<Receiver, NotifierError> {
        let e = lock(&self.inner.engine);
        let want = scope.lookup(sub);
        e.receivers
            .values()
            .find(|r| r.name == name && want.is_none_or(|s| s == r.subscription))
            .map(Self::masked)
            .ok_or_else(|| NotifierError::not_found(format!("no receiver {name:?}")))
    }

    /// `PUT /api/v1/receivers/{name}`: creates or replaces.
    pub fn put_receiver(
        &self,
        scope: &Scope,
        name: &str,
        mut r: Receiver,
    ) -> Result<(Receiver, bool), NotifierError> {
        let label = scope.label(&r.subscription);
        let out = self.put_receiver_inner(scope, name, &mut r);
        if let Err(e) = &out {
            self.refused(&label, e);
        }
        out
    }

    fn put_receiver_inner(
        &self,
        scope: &Scope,
        name: &str,
        r: &mut Receiver,
    ) -> Result<(Receiver, bool), NotifierError> {
        rule::check_id("name", name)?;
        if !r.name.is_empty() && r.name != name {
            return Err(NotifierError::invalid(
                "name",
                format!("name {:?} differs from the path's {name:?}", r.name),
            ));
        }
        r.name = name.to_string();
        scope.claim("subscription", &mut r.subscription)?;
        let limits = &self.inner.config.limits;
        receiver::validate(r, limits, &self.policy())?;
        if r.secret.as_deref() == Some("<set>") {
            // A masked secret sent back: keep the stored one.
            let e = lock(&self.inner.engine);
            r.secret = e
                .receivers
                .get(&(r.subscription.clone(), r.name.clone()))
                .and_then(|old| old.secret.clone());
        }
        let r = r.clone();
        let masked = Self::masked(&r);
        let max = limits.max_receivers_per_subscription;
        let created = self.with_engine(|e, _| {
            let key = (r.subscription.clone(), r.name.clone());
            let exists = e.receivers.contains_key(&key);
            if !exists && e.receiver_count(&r.subscription) >= max {
                return Err(NotifierError::invalid(
                    "name",
                    format!(
                        "subscription {:?} has {max} receivers, the limit (--max-receivers-per-subscription)",
                        r.subscription
                    ),
                )
                .with_reason("receivers"));
            }
            e.set_receiver(r);
            Ok(!exists)
        })??;
        Ok((masked, created))
    }

    pub fn delete_receiver(
        &self,
        scope: &Scope,
        sub: Option<&str>,
        name: &str,
    ) -> Result<(), NotifierError> {
        let want = scope.lookup(sub);
        self.with_engine(|e, _| {
            let key = e
                .receivers
                .keys()
                .find(|(s, n)| n == name && want.is_none_or(|x| x == s))
                .cloned()
                .ok_or_else(|| NotifierError::not_found(format!("no receiver {name:?}")))?;
            let users: Vec<String> = e
                .rules_of(&key.0)
                .filter(|r| r.rule.receivers.contains(&key.1))
                .map(|r| r.id().to_string())
                .take(20)
                .collect();
            if !users.is_empty() {
                return Err(NotifierError::conflict(
                    "name",
                    format!("receiver {name:?} is used by rules {users:?}"),
                ));
            }
            e.remove_receiver(&key.0, &key.1);
            Ok(())
        })?
    }

    // ---- silences ----------------------------------------------------------

    pub fn silences(&self, scope: &Scope, sub: Option<&str>) -> Vec<Value> {
        let e = lock(&self.inner.engine);
        let now = self.inner.clock.now();
        e.silences(scope.lookup(sub))
            .into_iter()
            .map(|s| {
                let mut v = serde_json::to_value(&s.silence).unwrap_or(Value::Null);
                v["status"] = json!({ "state": s.state(now) });
                v
            })
            .collect()
    }

    /// `POST /api/v1/silences`: creates, or replaces the silence with the
    /// same id in the subscription. Compiles regexes: call it off the
    /// async workers.
    pub fn create_silence(&self, scope: &Scope, mut s: Silence) -> Result<Value, NotifierError> {
        let label = scope.label(&s.subscription);
        let out = self.create_silence_inner(scope, &mut s);
        if let Err(e) = &out {
            self.refused(&label, e);
        }
        out
    }

    fn create_silence_inner(&self, scope: &Scope, s: &mut Silence) -> Result<Value, NotifierError> {
        scope.claim("subscription", &mut s.subscription)?;
        rule::check_name("subscription", &s.subscription)?;
        if s.id.is_empty() {
            s.id = random_id("silence");
        }
        let now = self.inner.clock.now();
        if s.starts_at.is_empty() {
            s.starts_at = rfc3339_from_nanos(now);
        }
        let limits = &self.inner.config.limits;
        let active = ActiveSilence::compile(s.clone(), Some(now), limits)?;
        let stored = s.clone();
        let (sub, id) = (s.subscription.clone(), s.id.clone());
        let max = limits.max_silences_per_subscription;
        self.with_engine(|e, now| {
            let exists = e.silence_of(&(sub.clone(), id.clone())).is_some();
            if !exists && e.silence_count(&sub) >= max {
                return Err(NotifierError::invalid(
                    "id",
                    format!(
                        "subscription {sub:?} has {max} silences, the limit (--max-silences-per-subscription); delete expired ones"
                    ),
                )
                .with_reason("silences"));
            }
            e.record(Change::Silence(stored));
            e.set_silence(active, now);
            Ok(())
        })??;
        Ok(json!({ "silenceID": s.id }))
    }

    pub fn delete_silence(
        &self,
        scope: &Scope,
        sub: Option<&str>,
        id: &str,
    ) -> Result<(), NotifierError> {
        let want = scope.lookup(sub);
        self.with_engine(|e, now| {
            let found: Vec<(String, String)> = e
                .silences(want)
                .into_iter()
                .filter(|s| s.silence.id == id)
                .take(2)
                .map(|s| (s.silence.subscription.clone(), s.silence.id.clone()))
                .collect();
            let key = match found.as_slice() {
                [k] => k.clone(),
                [] => return Err(NotifierError::not_found(format!("no silence {id:?}"))),
                _ => {
                    return Err(NotifierError::invalid(
                        "subscription",
                        format!("several subscriptions have a silence {id:?}; give ?subscription="),
                    ))
                }
            };
            e.remove_silence(&key, now);
            e.record(Change::SilenceGone {
                sub: key.0,
                id: key.1,
            });
            Ok(())
        })?
    }

    /// Loads a rules file (TOML, or JSON when it ends in `.json`):
    /// receivers first, then rules, then silences. Entries replace those
    /// with the same id.
    pub fn load_file(&self, path: &Path) -> Result<usize, NotifierError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            NotifierError::invalid("rules", format!("read {}: {e}", path.display()))
        })?;
        let file: RulesFile = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text)
                .map_err(|e| NotifierError::invalid("rules", format!("{}: {e}", path.display())))?
        } else {
            toml::from_str(&text)
                .map_err(|e| NotifierError::invalid("rules", format!("{}: {e}", path.display())))?
        };
        let n = file.rules.len();
        lock(&self.inner.engine).bulk = true;
        let loaded = self.load_entries(file);
        lock(&self.inner.engine).bulk = false;
        loaded?;
        self.inner.db.sync()?;
        Ok(n)
    }

    fn load_entries(&self, file: RulesFile) -> Result<(), NotifierError> {
        for (i, r) in file.receivers.into_iter().enumerate() {
            let name = r.name.clone();
            self.put_receiver(&Scope::All, &name, r)
                .map_err(|e| e.at(&format!("receivers[{i}]")))?;
        }
        for (i, r) in file.rules.into_iter().enumerate() {
            if r.id.is_empty() {
                return Err(NotifierError::invalid(
                    format!("rules[{i}].id"),
                    format!("rules[{i}]: rules in a file need an id"),
                ));
            }
            let id = r.id.clone();
            let (_, warnings, _) = self
                .put_rule(&Scope::All, Some(&id), r)
                .map_err(|e| e.at(&format!("rules[{i}]")))?;
            for w in warnings {
                tracing::warn!(rule = %id, "{w}");
            }
        }
        for (i, s) in file.silences.into_iter().enumerate() {
            self.create_silence(&Scope::All, s)
                .map_err(|e| e.at(&format!("silences[{i}]")))?;
        }
        Ok(())
    }
}

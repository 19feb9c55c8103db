//! The node's configuration: a JSON array of Sesam-style entities, parsed
//! and validated into a [`ResolvedConfig`].
//!
//! Entity types:
//! - `pipe`: `source`, optional `transform` (DTL, see [`crate::dtl`]), `sink`
//!   (default: a dataset named after the pipe), `pump`, `monitoring`;
//! - `system:url`: an HTTP system for `json` sources and sinks (`base_url` or
//!   `url_pattern`, `headers`, `timeout`); its strings may reference secrets
//!   as `$SECRET(name)`, resolved from the secrets store at run time;
//! - `metadata`: node settings (`monitoring.enabled`, the default of every
//!   pipe).
//!
//! Validation reports every problem with the entity `_id` and the field
//! (`source.type`, `transform.rules.default[2]`, ...), so that an operator can
//! fix a config from the error alone. Nothing of an invalid config is applied.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::dtl::Dtl;
use crate::limits::{MAX_BATCH_SIZE, MAX_HEADERS, MAX_ID_CHARS, MAX_URL_CHARS};

/// One problem of a configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("entity {entity:?}, field {field:?}: {message}")]
pub struct ConfigError {
    /// `_id` of the offending entity (`"#3"` for the 4th one when it has none).
    #[serde(rename = "_id")]
    pub entity: String,
    pub field: String,
    pub message: String,
}

/// Every problem of a refused configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.first().map(ToString::to_string).unwrap_or_default())]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn err(entity: &str, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        entity: entity.to_string(),
        field: field.into(),
        message: message.into(),
    }
}

/// Where a pipe reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Entities given inline in the config.
    Embedded { entities: Vec<Value> },
    /// Another dataset, read incrementally by `_updated`.
    Dataset { dataset: String },
    /// HTTP GET of a `system:url` URL that answers a JSON array of entities.
    Json {
        system: String,
        /// Appended to the system's `base_url`, or substituted for `%s` in its
        /// `url_pattern`.
        #[serde(default)]
        url: Option<String>,
    },
}

fn default_batch_size() -> NonZeroUsize {
    NonZeroUsize::new(100).expect("non-zero")
}

/// Where a pipe writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// A dataset, by default named after the pipe.
    Dataset {
        #[serde(default)]
        dataset: Option<String>,
    },
    /// HTTP POST of each batch of entities as a JSON array.
    Json {
        system: String,
        #[serde(default)]
        url: Option<String>,
        #[serde(default = "default_batch_size")]
        batch_size: NonZeroUsize,
    },
}

/// How a pump is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PumpMode {
    /// Runs on its schedule (and when started).
    #[default]
    Scheduled,
    /// Runs only when started through the API.
    Manual,
    /// Never runs.
    Off,
}

/// The `pump` object of a pipe.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PumpConfig {
    /// Seconds between runs (default 30 when no `cron_expr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_interval: Option<f64>,
    /// A cron expression (5 fields as in Sesam, or 6-7 with seconds), UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_expr: Option<String>,
    #[serde(default)]
    pub mode: PumpMode,
}

/// `monitoring` of a pipe or of the node metadata.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// A resolved schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    Interval(Duration),
    Cron(Box<cron::Schedule>),
    Manual,
    Off,
}

impl Schedule {
    /// Time until the next scheduled run after `now`, `None` for no schedule.
    pub fn next_after(&self, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
        match self {
            Schedule::Interval(d) => Some(*d),
            Schedule::Cron(s) => s.after(&now).next().and_then(|t| (t - now).to_std().ok()),
            Schedule::Manual | Schedule::Off => None,
        }
    }
}

/// A validated pipe.
#[derive(Debug, Clone)]
pub struct PipeConfig {
    pub id: String,
    pub source: SourceConfig,
    pub transforms: Vec<Dtl>,
    pub sink: SinkConfig,
    pub schedule: Schedule,
    /// The `system:url` of its `json` source, resolved: a pipe carries
    /// what it needs to run, and a change of its system is a change of the
    /// pipe.
    pub source_system: Option<Arc<UrlSystem>>,
    /// The `system:url` of its `json` sink, resolved.
    pub sink_system: Option<Arc<UrlSystem>>,
    /// Whether the pipe's execution events go to the outbox.
    pub monitoring: bool,
    /// The entity as written by the operator.
    pub original: Value,
    /// The entity with every default filled in.
    pub effective: Value,
}

impl PipeConfig {
    pub fn execution_dataset(&self) -> String {
        format!("system:pump:{}", self.id)
    }

    /// The dataset the pipe writes, if its sink is a dataset.
    pub fn sink_dataset(&self) -> Option<&str> {
        match &self.sink {
            SinkConfig::Dataset { dataset } => Some(dataset.as_deref().unwrap_or(&self.id)),
            SinkConfig::Json { .. } => None,
        }
    }
}

/// A validated `system:url`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlSystem {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_pattern: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Seconds for the whole request (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl UrlSystem {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout.unwrap_or(30.0))
    }

    /// The URL for a source's or sink's `url` (still with secret references).
    pub fn url_for(&self, url: Option<&str>) -> String {
        let part = url.unwrap_or("");
        if let Some(p) = &self.url_pattern {
            return p.replace("%s", part);
        }
        let base = self.base_url.as_deref().unwrap_or("");
        if part.is_empty() {
            base.to_string()
        } else if base.ends_with('/') || part.starts_with('/') {
            format!("{base}{part}")
        } else {
            format!("{base}/{part}")
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct ResolvedConfig {
    /// The entities as given, in order.
    pub entities: Vec<Value>,
    /// Hex SHA-256 of the entities' canonical JSON.
    pub hash: String,
    /// The node default of `monitoring.enabled`.
    pub monitoring_default: bool,
    pub pipes: BTreeMap<String, Arc<PipeConfig>>,
    pub systems: BTreeMap<String, Arc<UrlSystem>>,
    /// Problems that do not stop the configuration from running (unknown
    /// properties, which are ignored), by entity.
    pub warnings: Vec<ConfigError>,
}

impl ResolvedConfig {
    /// The warnings of one entity.
    pub fn warnings_of(&self, id: &str) -> Vec<ConfigError> {
        self.warnings
            .iter()
            .filter(|w| w.entity == id)
            .cloned()
            .collect()
    }
}

impl ResolvedConfig {
    /// An empty configuration (no pipes, no systems).
    pub fn empty() -> ResolvedConfig {
        resolve(Vec::new()).expect("the empty config is valid")
    }
}

/// Parses and validates a configuration file's bytes.
pub fn parse(bytes: &[u8]) -> Result<ResolvedConfig, ConfigErrors> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ConfigErrors(vec![err(
            "",
            "",
            format!("the configuration is not valid JSON: {e}"),
        )])
    })?;
    from_value(value)
}

/// Validates a configuration given as a JSON value: an array of entities.
/// A single object is refused rather than taken as a whole configuration,
/// which would silently remove every other entity.
pub fn from_value(value: Value) -> Result<ResolvedConfig, ConfigErrors> {
    match value {
        Value::Array(entities) => resolve(entities),
        _ => Err(ConfigErrors(vec![err(
            "",
            "",
            "the configuration must be a JSON array of entities",
        )])),
    }
}

const SECRET_PREFIX: &str = "$SECRET(";

/// Secret names referenced as `$SECRET(name)` in `s`, or the malformed rest.
pub fn secret_refs(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(at) = rest.find(SECRET_PREFIX) {
        let after = &rest[at + SECRET_PREFIX.len()..];
        let Some(end) = after.find(')') else {
            return Err("unterminated $SECRET( reference".into());
        };
        let name = &after[..end];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(format!("invalid secret name {name:?} in $SECRET(...)"));
        }
        out.push(name);
        rest = &after[end + 1..];
    }
    Ok(out)
}

fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    schemas::schedule::parse_cron(expr).map_err(|e| e.to_string())
}

/// Splits a serde error into (field suffix, message) when it names a field.
fn serde_field(e: &serde_json::Error) -> Option<String> {
    let msg = e.to_string();
    for marker in ["unknown field `", "missing field `"] {
        if let Some(i) = msg.find(marker) {
            let rest = &msg[i + marker.len()..];
            if let Some(end) = rest.find('`') {
                return Some(rest[..end].to_string());
            }
        }
    }
    if msg.contains("unknown variant") || msg.contains("missing field `type`") {
        return Some("type".into());
    }
    None
}

fn sub<T: serde::de::DeserializeOwned>(id: &str, field: &str, v: &Value) -> Result<T, ConfigError> {
    serde_json::from_value(v.clone()).map_err(|e| {
        let f = match serde_field(&e) {
            Some(s) => format!("{field}.{s}"),
            None => field.to_string(),
        };
        // serde_json appends " at line 0 column 0" for values; drop the noise.
        let m = e.to_string();
        let m = m.split(" at line ").next().unwrap_or(&m).to_string();
        err(id, f, m)
    })
}

/// The properties a part of the configuration knows, by where it is.
fn known_keys(part: &str, kind: Option<&str>) -> &'static [&'static str] {
    match (part, kind) {
        ("source", Some("embedded")) => &["type", "entities"],
        ("source", Some("dataset")) => &["type", "dataset"],
        ("source", Some("json")) => &["type", "system", "url"],
        ("sink", Some("dataset")) => &["type", "dataset"],
        ("sink", Some("json")) => &["type", "system", "url", "batch_size"],
        ("pump", _) => &["schedule_interval", "cron_expr", "mode"],
        ("monitoring", _) => &["enabled"],
        ("transform", _) => &["type", "rules", "name", "description", "comment"],
        ("system:url", _) => &[
            "_id",
            "type",
            "base_url",
            "url_pattern",
            "headers",
            "timeout",
            "name",
            "description",
            "comment",
        ],
        ("metadata", _) => &[
            "_id",
            "type",
            "name",
            "description",
            "comment",
            "monitoring",
        ],
        ("pipe", _) => &[
            "_id",
            "type",
            "name",
            "description",
            "comment",
            "source",
            "transform",
            "sink",
            "pump",
            "monitoring",
        ],
        // Unknown source/sink types are errors of their own (`type`).
        _ => &[],
    }
}

/// `v` without the properties `part` does not know; each one dropped is a
/// warning (Sesam accepts unknown properties with a warning in the pipe's
/// `config-errors`, so that a typo never takes a node down). `prefix` is
/// the field path of `v` (`source`, `pump`, or empty for an entity).
fn lenient(
    id: &str,
    part: &str,
    prefix: &str,
    v: &Value,
    warnings: &mut Vec<ConfigError>,
) -> Value {
    let Value::Object(obj) = v else {
        return v.clone();
    };
    let kind = obj.get("type").and_then(Value::as_str);
    let known = known_keys(part, kind);
    if known.is_empty() {
        return v.clone();
    }
    let mut kept = Map::new();
    for (k, val) in obj {
        if known.contains(&k.as_str()) {
            kept.insert(k.clone(), val.clone());
        } else {
            let field = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            warnings.push(err(
                id,
                field,
                format!(
                    "unknown property `{k}` in {}; it is ignored",
                    match kind {
                        Some(t) if part == "source" || part == "sink" => format!("a {t} {part}"),
                        _ => format!("a {part}"),
                    }
                ),
            ));
        }
    }
    Value::Object(kept)
}

/// Validates `entities` into a [`ResolvedConfig`], or every problem found.
pub fn resolve(entities: Vec<Value>) -> Result<ResolvedConfig, ConfigErrors> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut ids = BTreeSet::new();
    let mut monitoring_default = false;
    let mut systems = BTreeMap::new();
    let mut pipe_entities = Vec::new();

    for (i, e) in entities.iter().enumerate() {
        let Value::Object(obj) = e else {
            errors.push(err(&format!("#{i}"), "", "an entity must be a JSON object"));
            continue;
        };
        let id = match obj.get("_id") {
            Some(Value::String(s)) if s.chars().count() > MAX_ID_CHARS => {
                errors.push(err(
                    &format!("#{i}"),
                    "_id",
                    format!("an _id is at most {MAX_ID_CHARS} characters"),
                ));
                continue;
            }
            Some(Value::String(s)) if !s.is_empty() && !s.contains('\0') => s.clone(),
            _ => {
                errors.push(err(
                    &format!("#{i}"),
                    "_id",
                    "every entity needs a non-empty string _id",
                ));
                continue;
            }
        };
        if !ids.insert(id.clone()) {
            errors.push(err(&id, "_id", "duplicate _id"));
            continue;
        }
        match obj.get("type").and_then(Value::as_str) {
            Some("pipe") => pipe_entities.push((id, obj)),
            Some("system:url") => match sub::<UrlSystem>(
                &id,
                "",
                &lenient(&id, "system:url", "", e, &mut warnings),
            ) {
                Ok(sys) => {
                    let mut ok = true;
                    if sys.base_url.is_none() == sys.url_pattern.is_none() {
                        errors.push(err(&id, "base_url", "a system:url needs exactly one of base_url and url_pattern"));
                        ok = false;
                    }
                    let mut strings: Vec<(String, &str)> = sys
                        .headers
                        .iter()
                        .map(|(k, v)| (format!("headers.{k}"), v.as_str()))
                        .collect();
                    if let Some(u) = &sys.base_url {
                        strings.push(("base_url".into(), u));
                    }
                    if let Some(u) = &sys.url_pattern {
                        strings.push(("url_pattern".into(), u));
                    }
                    for (field, s) in strings {
                        if let Err(m) = secret_refs(s) {
                            errors.push(err(&id, field, m));
                            ok = false;
                        }
                    }
                    if sys.headers.len() > MAX_HEADERS {
                        errors.push(err(&id, "headers", format!("a system has at most {MAX_HEADERS} headers, not {}", sys.headers.len())));
                        ok = false;
                    }
                    for k in sys.headers.keys() {
                        if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
                            errors.push(err(&id, format!("headers.{k}"), format!("{k:?} is not a valid HTTP header name")));
                            ok = false;
                        }
                    }
                    for (field, u) in [("base_url", &sys.base_url), ("url_pattern", &sys.url_pattern)] {
                        let Some(u) = u else { continue };
                        if u.chars().count() > MAX_URL_CHARS {
                            errors.push(err(&id, field, format!("{field} is longer than {MAX_URL_CHARS} characters")));
                            ok = false;
                        } else if !(u.starts_with("http://") || u.starts_with("https://")) {
                            errors.push(err(&id, field, format!("{field} must start with http:// or https://")));
                            ok = false;
                        }
                    }
                    if let Some(t) = sys.timeout {
                        if !(t.is_finite() && t > 0.0 && t <= 3600.0) {
                            errors.push(err(&id, "timeout", "timeout must be between 0 and 3600 seconds"));
                            ok = false;
                        }
                    }
                    if ok {
                        systems.insert(id, Arc::new(sys));
                    }
                }
                Err(e) => errors.push(fix_root_field(e)),
            },
            Some("metadata") => {
                let known = lenient(&id, "metadata", "", e, &mut warnings);
                if let Some(v) = known.get("monitoring") {
                    let v = lenient(&id, "monitoring", "monitoring", v, &mut warnings);
                    match sub::<MonitoringConfig>(&id, "monitoring", &v) {
                        Ok(m) => monitoring_default = m.enabled.unwrap_or(false),
                        Err(e) => errors.push(e),
                    }
                }
            }
            Some(other) => errors.push(err(
                &id,
                "type",
                format!("unknown entity type {other:?}; supported: \"pipe\", \"system:url\", \"metadata\""),
            )),
            None => errors.push(err(&id, "type", "every entity needs a string type")),
        }
    }

    let mut pipes = BTreeMap::new();
    for (id, obj) in pipe_entities {
        match resolve_pipe(&id, obj, &systems, monitoring_default, &mut warnings) {
            Ok(p) => {
                pipes.insert(id, Arc::new(p));
            }
            Err(mut es) => errors.append(&mut es),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let hash = hex::encode(Sha256::digest(
        Value::Array(entities.clone()).to_string().as_bytes(),
    ));
    Ok(ResolvedConfig {
        entities,
        hash,
        monitoring_default,
        pipes,
        systems,
        warnings,
    })
}

fn fix_root_field(mut e: ConfigError) -> ConfigError {
    if let Some(f) = e.field.strip_prefix('.') {
        e.field = f.to_string();
    }
    e
}

fn resolve_pipe(
    id: &str,
    raw: &Map<String, Value>,
    systems: &BTreeMap<String, Arc<UrlSystem>>,
    monitoring_default: bool,
    warnings: &mut Vec<ConfigError>,
) -> Result<PipeConfig, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let known = lenient(id, "pipe", "", &Value::Object(raw.clone()), warnings);
    let obj = known.as_object().cloned().unwrap_or_default();
    let obj = &obj;
    if id.starts_with("system:") {
        errors.push(err(id, "_id", "a pipe _id must not start with \"system:\""));
    }
    let source = match obj.get("source") {
        None => {
            errors.push(err(id, "source", "a pipe needs a source"));
            None
        }
        Some(v) => {
            match sub::<SourceConfig>(id, "source", &lenient(id, "source", "source", v, warnings)) {
                Ok(s) => Some(s),
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        }
    };
    match &source {
        Some(SourceConfig::Embedded { entities }) => {
            for (i, e) in entities.iter().enumerate() {
                if !matches!(e.get("_id"), Some(Value::String(s)) if !s.is_empty()) {
                    errors.push(err(
                        id,
                        format!("source.entities[{i}]._id"),
                        "every embedded entity needs a non-empty string _id",
                    ));
                }
            }
        }
        Some(SourceConfig::Json { system, .. }) if !systems.contains_key(system) => {
            errors.push(err(
                id,
                "source.system",
                format!("no system:url with _id {system:?}"),
            ));
        }
        Some(SourceConfig::Dataset { dataset })
            if dataset.is_empty()
                || dataset.contains('\0')
                || dataset.chars().count() > MAX_ID_CHARS =>
        {
            errors.push(err(
                id,
                "source.dataset",
                format!("a dataset name must be non-empty and at most {MAX_ID_CHARS} characters"),
            ));
        }
        _ => {}
    }
    let mut transforms = Vec::new();
    let transform_values: Vec<(String, &Value)> = match obj.get("transform") {
        None => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("transform[{i}]"), t))
            .collect(),
        Some(t) => vec![("transform".to_string(), t)],
    };
    for (field, t) in transform_values {
        let t = &lenient(id, "transform", &field, t, warnings);
        match Dtl::compile(t) {
            Ok(d) => transforms.push(d),
            Err(e) => errors.push(err(
                id,
                if e.path.is_empty() {
                    field
                } else {
                    format!("{field}.{}", e.path)
                },
                e.message,
            )),
        }
    }
    let sink = match obj.get("sink") {
        None => Some(SinkConfig::Dataset { dataset: None }),
        Some(v) => match sub::<SinkConfig>(id, "sink", &lenient(id, "sink", "sink", v, warnings)) {
            Ok(s) => Some(s),
            Err(e) => {
                errors.push(e);
                None
            }
        },
    };
    match &sink {
        Some(SinkConfig::Json { batch_size, .. }) if batch_size.get() > MAX_BATCH_SIZE => {
            errors.push(err(
                id,
                "sink.batch_size",
                format!("batch_size is at most {MAX_BATCH_SIZE}"),
            ));
        }
        Some(SinkConfig::Json { system, .. }) if !systems.contains_key(system) => {
            errors.push(err(
                id,
                "sink.system",
                format!("no system:url with _id {system:?}"),
            ));
        }
        Some(SinkConfig::Dataset { dataset: Some(d) })
            if d.is_empty()
                || d.starts_with("system:")
                || d.contains('\0')
                || d.chars().count() > MAX_ID_CHARS =>
        {
            errors.push(err(
                id,
                "sink.dataset",
                format!("a sink dataset name must be non-empty, at most {MAX_ID_CHARS} characters and not start with \"system:\""),
            ));
        }
        _ => {}
    }
    let pump: PumpConfig = match obj.get("pump") {
        None => PumpConfig::default(),
        Some(v) => sub(id, "pump", &lenient(id, "pump", "pump", v, warnings)).unwrap_or_else(|e| {
            errors.push(e);
            PumpConfig::default()
        }),
    };
    let schedule = match (&pump.mode, pump.schedule_interval, &pump.cron_expr) {
        (PumpMode::Off, _, _) => Schedule::Off,
        (PumpMode::Manual, _, _) => Schedule::Manual,
        (_, Some(_), Some(_)) => {
            errors.push(err(
                id,
                "pump.cron_expr",
                "set either schedule_interval or cron_expr, not both",
            ));
            Schedule::Manual
        }
        (_, Some(secs), None) => {
            if (0.1..=366.0 * 86_400.0).contains(&secs) {
                Schedule::Interval(Duration::from_secs_f64(secs))
            } else {
                errors.push(err(
                    id,
                    "pump.schedule_interval",
                    "schedule_interval must be a number of seconds from 0.1 to a year",
                ));
                Schedule::Manual
            }
        }
        (_, None, Some(expr)) => match parse_cron(expr) {
            Ok(s) => Schedule::Cron(Box::new(s)),
            Err(m) => {
                errors.push(err(id, "pump.cron_expr", m));
                Schedule::Manual
            }
        },
        (_, None, None) => Schedule::Interval(Duration::from_secs(30)),
    };
    let monitoring: MonitoringConfig = match obj.get("monitoring") {
        None => MonitoringConfig::default(),
        Some(v) => sub(
            id,
            "monitoring",
            &lenient(id, "monitoring", "monitoring", v, warnings),
        )
        .unwrap_or_else(|e| {
            errors.push(e);
            MonitoringConfig::default()
        }),
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let (Some(source), Some(sink)) = (source, sink) else {
        return Err(vec![err(id, "source", "invalid pipe")]);
    };
    let monitoring_on = monitoring.enabled.unwrap_or(monitoring_default);
    let source_system = match &source {
        SourceConfig::Json { system, .. } => systems.get(system).cloned(),
        _ => None,
    };
    let sink_system = match &sink {
        SinkConfig::Json { system, .. } => systems.get(system).cloned(),
        _ => None,
    };
    let mut effective = obj.clone();
    effective.insert(
        "sink".into(),
        serde_json::to_value(match &sink {
            SinkConfig::Dataset { dataset } => SinkConfig::Dataset {
                dataset: Some(dataset.clone().unwrap_or_else(|| id.to_string())),
            },
            other => other.clone(),
        })
        .unwrap_or(Value::Null),
    );
    let mut pump_eff = pump.clone();
    if pump_eff.schedule_interval.is_none()
        && pump_eff.cron_expr.is_none()
        && pump_eff.mode == PumpMode::Scheduled
    {
        pump_eff.schedule_interval = Some(30.0);
    }
    effective.insert(
        "pump".into(),
        serde_json::to_value(pump_eff).unwrap_or(Value::Null),
    );
    effective.insert(
        "monitoring".into(),
        serde_json::json!({"enabled": monitoring_on}),
    );
    Ok(PipeConfig {
        id: id.to_string(),
        source,
        transforms,
        sink,
        schedule,
        source_system,
        sink_system,
        monitoring: monitoring_on,
        original: Value::Object(raw.clone()),
        effective: Value::Object(effective),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(v: Value) -> Vec<ConfigError> {
        from_value(v).unwrap_err().0
    }

    #[test]
    fn valid_config_resolves_with_defaults() {
        let c = from_value(json!([
            {"_id": "node", "type": "metadata", "monitoring": {"enabled": true}},
            {"_id": "api", "type": "system:url", "base_url": "http://x/", "headers": {"Authorization": "Bearer $SECRET(tok)"}},
            {"_id": "a", "type": "pipe", "source": {"type": "embedded", "entities": [{"_id": "1"}]}},
            {"_id": "b", "type": "pipe", "source": {"type": "json", "system": "api", "url": "items"},
             "pump": {"cron_expr": "*/5 * * * *"}, "monitoring": {"enabled": false}},
        ]))
        .unwrap();
        let a = &c.pipes["a"];
        assert!(a.monitoring);
        assert_eq!(a.sink_dataset(), Some("a"));
        assert_eq!(a.effective["pump"]["schedule_interval"], json!(30.0));
        assert!(matches!(c.pipes["b"].schedule, Schedule::Cron(_)));
        assert!(!c.pipes["b"].monitoring);
        assert_eq!(c.systems["api"].url_for(Some("items")), "http://x/items");
        assert_eq!(c.hash.len(), 64);
    }

    #[test]
    fn errors_name_the_entity_and_the_field() {
        let es = errors(json!([
            {"_id": "p1", "type": "pipe", "source": {"type": "ftp", "host": "x"}},
            {"_id": "p2", "type": "pipe", "source": {"type": "embedded", "entities": []}, "sink": {"type": "json", "system": "nope"}},
            {"_id": "p3", "type": "pipe", "source": {"type": "embedded", "entities": []},
             "transform": {"type": "dtl", "rules": {"default": [["add", "x", ["upper", "_S.a"]]]}}},
            {"_id": "p4", "type": "pipe", "source": {"type": "embedded", "entities": [], "extra": 1}, "pump": {"cron_expr": "nonsense"}},
            {"_id": "s", "type": "system:url", "base_url": "http://x", "headers": {"A": "$SECRET(unterminated"}},
            {"_id": "w", "type": "widget"},
            {"_id": "p1", "type": "pipe"},
        ]));
        let has = |id: &str, field: &str| es.iter().any(|e| e.entity == id && e.field == field);
        assert!(has("p1", "source.type"), "{es:#?}");
        assert!(has("p2", "sink.system"), "{es:#?}");
        assert!(has("p3", "transform.rules.default[0][2]"), "{es:#?}");
        // An unknown property is a warning, not an error (see below).
        assert!(!has("p4", "source.extra"), "{es:#?}");
        assert!(has("p4", "pump.cron_expr"), "{es:#?}");
        assert!(has("s", "headers.A"), "{es:#?}");
        assert!(has("w", "type"), "{es:#?}");
        assert!(has("p1", "_id"), "{es:#?}");
    }

    #[test]
    fn unknown_properties_are_warnings_and_ignored() {
        let c = from_value(json!([
            {"_id": "node", "type": "metadata", "colour": "blue", "monitoring": {"enabled": true, "level": 3}},
            {"_id": "s", "type": "system:url", "base_url": "http://x", "verify_ssl": false},
            {"_id": "p", "type": "pipe", "sorce": 1,
             "source": {"type": "embedded", "entities": [], "extra": 1},
             "transform": {"type": "dtl", "rules": {"default": [["copy", "*"]]}, "note": "x"},
             "sink": {"type": "json", "system": "s", "batch_sise": 5},
             "pump": {"schedul_interval": 5, "mode": "manual"}},
        ]))
        .unwrap();
        let fields =
            |id: &str| -> Vec<String> { c.warnings_of(id).into_iter().map(|w| w.field).collect() };
        assert_eq!(fields("node"), vec!["colour", "monitoring.level"]);
        assert_eq!(fields("s"), vec!["verify_ssl"]);
        assert_eq!(
            fields("p"),
            vec![
                "sorce",
                "source.extra",
                "transform.note",
                "sink.batch_sise",
                "pump.schedul_interval"
            ]
        );
        assert!(c.warnings_of("p")[0].message.contains("`sorce`"));
        let p = &c.pipes["p"];
        // The original keeps what the operator wrote; the effective config
        // is what runs.
        assert_eq!(p.original["sorce"], json!(1));
        assert!(p.effective.get("sorce").is_none());
        assert!(matches!(p.schedule, Schedule::Manual));
        assert!(c.monitoring_default);
    }

    #[test]
    fn malformed_json_and_non_arrays_are_refused() {
        assert!(parse(b"[{").is_err());
        assert!(parse(b"42").is_err());
        assert!(parse(br#"{"_id": "a", "type": "metadata"}"#).is_err());
        assert!(parse(b"[]").is_ok());
    }

    #[test]
    fn secret_references() {
        assert_eq!(
            secret_refs("a $SECRET(x) b $SECRET(y.z)").unwrap(),
            vec!["x", "y.z"]
        );
        assert!(secret_refs("$SECRET()").is_err());
        assert!(secret_refs("plain").unwrap().is_empty());
    }
}

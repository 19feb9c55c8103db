//! Pumps: the scheduler and the runs of a pipe.
//!
//! Each pipe has one pump task. It sleeps until the next scheduled time
//! (`schedule_interval` or `cron_expr`) or a start request from the API, then
//! runs the pipe once: read the source, apply the transforms, write the sink,
//! and record the run in the execution dataset `system:pump:<pipe>`
//! (`pump-started`, then `pump-completed` or `pump-failed`, plus a
//! `write-error` per entity a sink refused). Runs of one pipe never overlap;
//! a failing pipe never affects the others.
//!
//! A run is cancelled by the `stop` operation or by a configuration change
//! that alters or removes the pipe; it then ends with a `pump-failed` whose
//! `reason_why_stopped` says which. On node shutdown no new run starts and a
//! running one may finish within 70% of the shutdown timeout; only past that
//! it is cancelled (`the pump was stopped because the node is shutting down`).
//!
//! Secret values (`$SECRET(name)` in systems) are resolved at run time and
//! scrubbed from every error message a run produces, so that a server
//! echoing a header back cannot leak a secret into the execution dataset.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use schemas::time::{now_nanos, rfc3339_from_nanos};
use schemas::{EventType, ExecutionBody, ExecutionMetrics, SyncType};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{secret_refs, PipeConfig, Schedule, SinkConfig, SourceConfig, UrlSystem};
use crate::limits::{MAX_ENTITY_ID_CHARS, MAX_ERROR_EVENTS};
use crate::metrics::Metrics;
use crate::state::{blocking, Shared};
use crate::store::{PumpMeta, ReadOptions};

/// Runtime state of a pump, as the pump object of the API shows it.
#[derive(Debug, Clone, Default)]
pub struct PumpState {
    pub is_running: bool,
    pub disabled: bool,
    /// Start time (Unix ns) of the last run.
    pub last_run: Option<i64>,
    /// End time (Unix ns) of the last run.
    pub last_end: Option<i64>,
    /// Next scheduled run (Unix ns).
    pub next_run: Option<i64>,
    pub success: Option<bool>,
    pub last_error: Option<String>,
    /// The source offset (`_updated`) consumed so far, for dataset sources.
    pub last_seen: Option<u64>,
    /// Entities processed by the current (or last) run.
    pub progress: u64,
}

/// One pipe's pump: its configuration, state and control handles.
#[derive(Debug)]
pub struct Pump {
    pub id: String,
    config: Mutex<Arc<PipeConfig>>,
    state: Mutex<PumpState>,
    start_tx: mpsc::Sender<()>,
    start_rx: tokio::sync::Mutex<mpsc::Receiver<()>>,
    /// Cancels the pump task (pipe removed or changed, node shutdown).
    task: Mutex<CancellationToken>,
    /// Cancels the current run (the `stop` operation).
    run: Mutex<Option<CancellationToken>>,
}

/// Why a start request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartRefused {
    Running,
    Off,
}

impl Pump {
    pub fn new(config: Arc<PipeConfig>, meta: PumpMeta) -> Pump {
        let (start_tx, start_rx) = mpsc::channel(1);
        Pump {
            id: config.id.clone(),
            config: Mutex::new(config),
            state: Mutex::new(PumpState {
                disabled: meta.disabled,
                ..PumpState::default()
            }),
            start_tx,
            start_rx: tokio::sync::Mutex::new(start_rx),
            task: Mutex::new(CancellationToken::new()),
            run: Mutex::new(None),
        }
    }

    pub fn config(&self) -> Arc<PipeConfig> {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_config(&self, c: Arc<PipeConfig>) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = c;
    }

    pub fn state(&self) -> PumpState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut PumpState)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Asks the pump task to run now.
    pub fn request_start(&self) -> Result<(), StartRefused> {
        if matches!(self.config().schedule, Schedule::Off) {
            return Err(StartRefused::Off);
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.is_running {
            return Err(StartRefused::Running);
        }
        if self.start_tx.try_send(()).is_err() {
            // A start is already queued.
            return Err(StartRefused::Running);
        }
        s.is_running = true;
        // The run's token exists from now on, so that a `stop` right after
        // the start cancels the queued run too.
        *self.run.lock().unwrap_or_else(|p| p.into_inner()) = Some(CancellationToken::new());
        Ok(())
    }

    /// Cancels the current run, if any; returns whether one was running.
    pub fn stop(&self) -> bool {
        match self.run.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(t) => {
                t.cancel();
                true
            }
            None => false,
        }
    }

    pub fn set_disabled(&self, disabled: bool) {
        self.update(|s| s.disabled = disabled);
    }

    /// Stops the pump task (and its run).
    pub fn cancel_task(&self) {
        self.task.lock().unwrap_or_else(|p| p.into_inner()).cancel();
    }

    /// Restores last-run facts from the execution dataset after a restart.
    pub fn restore(&self, shared: &Shared) {
        let ds = self.config().execution_dataset();
        let mut latest: Option<(i64, bool, Option<String>)> = None;
        for (t, ok) in [("pump-completed", true), ("pump-failed", false)] {
            if let Ok(Some(e)) = shared.store.get_entity(&ds, t) {
                let end = e
                    .get("end_time")
                    .and_then(Value::as_str)
                    .and_then(schemas::time::parse_rfc3339);
                if let Some(end) = end {
                    if latest.as_ref().is_none_or(|(l, _, _)| end > *l) {
                        let why = e
                            .get("reason_why_stopped")
                            .and_then(Value::as_str)
                            .map(str::to_string);
                        latest = Some((end, ok, why));
                    }
                }
            }
        }
        let offset = shared.store.pipe_offset(&self.id).ok().filter(|o| *o > 0);
        self.update(|s| {
            if let Some((end, ok, why)) = latest {
                s.last_end = Some(end);
                s.last_run = Some(end);
                s.success = Some(ok);
                s.last_error = why;
            }
            s.last_seen = offset;
        });
    }
}

/// Starts the pump task of `pump` on the node's tracker.
pub fn spawn(shared: Arc<Shared>, pump: Arc<Pump>) {
    let token = shared.shutdown.child_token();
    *pump.task.lock().unwrap_or_else(|p| p.into_inner()) = token.clone();
    let s = shared.clone();
    shared.tracker.spawn(async move {
        let mut rx = pump.start_rx.lock().await;
        loop {
            let config = pump.config();
            let wait = config.schedule.next_after(chrono::Utc::now());
            pump.update(|s| {
                s.next_run = wait.map(|w| now_nanos().saturating_add(w.as_nanos() as i64));
            });
            let sleep = async {
                match wait {
                    Some(w) => tokio::time::sleep(w).await,
                    None => std::future::pending().await,
                }
            };
            let manual = tokio::select! {
                _ = token.cancelled() => break,
                r = rx.recv() => {
                    if r.is_none() { break; }
                    true
                }
                _ = sleep => false,
            };
            if !manual && pump.state().disabled {
                continue;
            }
            run_once(&s, &pump, config, &token).await;
            // A start request can only be queued while idle; drop a stale one.
            while rx.try_recv().is_ok() {}
        }
        *pump.run.lock().unwrap_or_else(|p| p.into_inner()) = None;
        pump.update(|s| {
            s.next_run = None;
            // A start queued but never run must not leave the pump "running".
            s.is_running = false;
        });
    });
}

/// Why a run stopped, with what Sesam's pump-failed event carries.
#[derive(Debug, Default)]
struct Failure {
    reason: String,
    original: String,
    traceback: String,
    exception_entity: Option<Value>,
    read_errors: EntityErrors,
    write_errors: EntityErrors,
}

/// The `read-error` or `write-error` events of one run: every error is
/// counted, the first [`MAX_ERROR_EVENTS`] become events (so a source of a
/// million bad entities cannot flood the execution dataset).
#[derive(Debug, Default)]
struct EntityErrors {
    count: u64,
    events: Vec<ExecutionBody>,
}

impl EntityErrors {
    fn push(&mut self, event: ExecutionBody) {
        self.count += 1;
        if self.events.len() < MAX_ERROR_EVENTS {
            self.events.push(event);
        }
    }

    fn append(&mut self, other: EntityErrors) {
        self.count += other.count;
        for e in other.events {
            if self.events.len() < MAX_ERROR_EVENTS {
                self.events.push(e);
            }
        }
    }
}

/// An entity `_id` as an event may carry it: control characters escaped
/// (a NUL cannot be a key of the execution dataset) and cut at
/// [`crate::limits::MAX_ID_CHARS`].
fn printable_id(id: &str) -> String {
    let mut out = String::new();
    for c in id.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.chars().count() >= crate::limits::MAX_ID_CHARS {
            out.push_str("...");
            break;
        }
    }
    out
}

/// A `read-error` or `write-error` event about one entity: its `_id` when
/// it has one, never the entity itself.
fn entity_error(
    pipe: &str,
    event_type: EventType,
    entity_id: Option<&str>,
    message: String,
) -> ExecutionBody {
    let mut e = ExecutionBody::new(pipe.to_string(), event_type);
    e.entity_id = entity_id.map(printable_id);
    e.original_error_message = Some(message);
    e.end_time = Some(rfc3339_from_nanos(now_nanos()));
    e
}

/// What a source read.
#[derive(Debug, Default)]
struct SourceBatch {
    entities: Vec<Value>,
    /// The new offset of a dataset source.
    offset: Option<u64>,
    read_errors: EntityErrors,
}

/// What a sink wrote.
#[derive(Debug, Default)]
struct SinkResult {
    changes: u64,
    write_errors: EntityErrors,
}

/// Secrets resolved for one run, scrubbed from its error messages.
#[derive(Debug, Default)]
struct Secrets {
    used: Vec<(String, String)>,
}

impl Secrets {
    fn resolve(
        &mut self,
        shared: &Shared,
        system: &str,
        field: &str,
        s: &str,
    ) -> Result<String, Box<Failure>> {
        let names = secret_refs(s).map_err(|m| fail(format!("system {system:?} {field}: {m}")))?;
        let mut out = s.to_string();
        for name in names {
            let value = match shared.store.secret(name) {
                Ok(Some(v)) => v,
                Ok(None) => {
                    return Err(fail(format!(
                        "secret {name:?} is not set (referenced by system {system:?} in {field}); set it with PUT /api/secrets"
                    )))
                }
                Err(e) => return Err(fail(format!("could not read secret {name:?}: {e}"))),
            };
            out = out.replace(&format!("$SECRET({name})"), &value);
            if !value.is_empty() {
                self.used.push((name.to_string(), value));
            }
        }
        Ok(out)
    }

    fn scrub(&self, s: &str) -> String {
        let mut out = s.to_string();
        for (name, value) in &self.used {
            out = out.replace(value.as_str(), &format!("$SECRET({name})"));
        }
        out
    }
}

fn fail(reason: String) -> Box<Failure> {
    Box::new(Failure {
        original: reason.clone(),
        traceback: reason.clone(),
        reason,
        ..Failure::default()
    })
}

/// A prepared HTTP request target: URL and headers with secrets resolved.
struct Target {
    url: String,
    headers: reqwest::header::HeaderMap,
    timeout: Duration,
}

fn target(
    shared: &Shared,
    secrets: &mut Secrets,
    system: &UrlSystem,
    url: Option<&str>,
) -> Result<Target, Box<Failure>> {
    let url = secrets.resolve(shared, &system.id, "url", &system.url_for(url))?;
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in &system.headers {
        let v = secrets.resolve(shared, &system.id, &format!("headers.{k}"), v)?;
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| fail(format!("system {:?}: invalid header name {k:?}", system.id)))?;
        let mut value = reqwest::header::HeaderValue::from_str(&v).map_err(|_| {
            fail(format!(
                "system {:?}: invalid value for header {k:?}",
                system.id
            ))
        })?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(Target {
        url,
        headers,
        timeout: system.timeout(),
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn body_excerpt(b: &str) -> String {
    let t: String = b.chars().take(200).collect();
    if t.len() < b.len() {
        format!("{t}...")
    } else {
        t
    }
}

enum BodyError {
    TooLarge,
    Read(reqwest::Error),
}

/// Reads a response body of at most `limit` bytes, refusing a larger one
/// as soon as it shows (by `Content-Length` or while streaming).
async fn read_limited(mut resp: reqwest::Response, limit: u64) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Read)? {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(BodyError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Reads the source: (entities, new offset for dataset sources, sync type).
async fn read_source(
    shared: &Arc<Shared>,
    config: &PipeConfig,
    secrets: &mut Secrets,
) -> Result<SourceBatch, Box<Failure>> {
    match &config.source {
        SourceConfig::Embedded { entities } => Ok(SourceBatch {
            entities: entities.clone(),
            ..SourceBatch::default()
        }),
        SourceConfig::Dataset { dataset } => {
            let store = shared.store.clone();
            let pipe = config.id.clone();
            let name = dataset.clone();
            let r = blocking(move || {
                let since = store.pipe_offset(&pipe)?;
                let mut damaged = Vec::new();
                let entities = store.read_entities_lenient(
                    &name,
                    ReadOptions {
                        since: Some(since),
                        history: false,
                        ..ReadOptions::default()
                    },
                    &mut damaged,
                )?;
                Ok::<_, crate::store::StoreError>((since, entities, damaged))
            })
            .await;
            let (since, entities, damaged) =
                r.map_err(|e| fail(format!("could not read the source dataset: {e}")))?;
            // Damaged versions are passed over (the offset moves past them)
            // and recorded, so that one cannot stop the pipe forever.
            let mut read_errors = EntityErrors::default();
            for (updated, why) in &damaged {
                read_errors.push(entity_error(
                    &config.id,
                    EventType::ReadError,
                    None,
                    format!("the version with _updated {updated} of dataset {dataset:?} is damaged and was skipped: {why}"),
                ));
            }
            let last = entities
                .iter()
                .filter_map(|e| e.get("_updated").and_then(Value::as_u64))
                .chain(damaged.iter().map(|(u, _)| *u))
                .max()
                .unwrap_or(since);
            // The store's own properties are regenerated by the sink.
            let entities = entities
                .into_iter()
                .map(|mut e| {
                    if let Value::Object(m) = &mut e {
                        for k in ["_updated", "_ts", "_hash", "_previous"] {
                            m.remove(k);
                        }
                    }
                    e
                })
                .collect();
            Ok(SourceBatch {
                entities,
                offset: Some(last),
                read_errors,
            })
        }
        SourceConfig::Json { system, url } => {
            let sys = shared
                .config()
                .systems
                .get(system)
                .cloned()
                .ok_or_else(|| fail(format!("system {system:?} is not configured")))?;
            let t = target(shared, secrets, &sys, url.as_deref())?;
            let resp = shared
                .http
                .get(&t.url)
                .headers(t.headers)
                .timeout(t.timeout)
                .send()
                .await
                .map_err(|e| {
                    let mut f = fail(format!(
                        "could not read from system {system:?}: {}",
                        error_chain(&e)
                    ));
                    f.read_errors.count = 1;
                    f
                })?;
            let status = resp.status();
            let limit = shared.limits.max_source_bytes;
            let bytes = read_limited(resp, limit).await.map_err(|e| {
                let mut f = fail(match e {
                    BodyError::TooLarge => format!(
                        "the response of system {system:?} is larger than {limit} bytes (--max-source-response-bytes)"
                    ),
                    BodyError::Read(e) => format!(
                        "could not read the response of system {system:?}: {}",
                        error_chain(&e)
                    ),
                });
                f.read_errors.count = 1;
                f
            })?;
            let text = String::from_utf8_lossy(&bytes);
            if !status.is_success() {
                let mut f = fail(format!(
                    "system {system:?} answered HTTP {status}: {}",
                    body_excerpt(&text)
                ));
                f.read_errors.count = 1;
                return Err(f);
            }
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| fail(format!("system {system:?} did not answer JSON: {e}")))?;
            let entities = match v {
                Value::Array(a) => a,
                obj @ Value::Object(_) => vec![obj],
                _ => {
                    return Err(fail(format!(
                        "system {system:?} did not answer a JSON array of entities"
                    )))
                }
            };
            // An entity without a usable `_id` cannot be processed: it is a
            // read error (recorded, counted) and the others go on.
            let mut read_errors = EntityErrors::default();
            let mut good = Vec::with_capacity(entities.len());
            for (i, e) in entities.into_iter().enumerate() {
                match e.get("_id") {
                    Some(Value::String(s)) if !s.is_empty() => good.push(e),
                    _ => read_errors.push(entity_error(
                        &config.id,
                        EventType::ReadError,
                        None,
                        format!(
                            "entity {i} of the answer of system {system:?} has no non-empty string _id; it was skipped"
                        ),
                    )),
                }
            }
            Ok(SourceBatch {
                entities: good,
                offset: None,
                read_errors,
            })
        }
    }
}

fn transform(config: &PipeConfig, entities: Vec<Value>) -> Result<Vec<Value>, Box<Failure>> {
    if config.transforms.is_empty() {
        return Ok(entities);
    }
    let mut out = Vec::with_capacity(entities.len());
    'entities: for e in entities {
        let Value::Object(mut m) = e else {
            return Err(fail("a source entity is not a JSON object".into()));
        };
        for (i, t) in config.transforms.iter().enumerate() {
            match t.apply(&m) {
                Ok(Some(next)) => m = next,
                Ok(None) => {
                    // As in Sesam, a filtered entity is deleted from the sink
                    // if an earlier run wrote it (the sink skips the
                    // tombstone of an entity it never had).
                    if let Some(id) = m.get("_id").cloned() {
                        let mut tomb = serde_json::Map::new();
                        tomb.insert("_id".into(), id);
                        tomb.insert("_deleted".into(), Value::Bool(true));
                        tomb.insert("_filtered".into(), Value::Bool(true));
                        out.push(Value::Object(tomb));
                    }
                    continue 'entities;
                }
                Err(err) => {
                    let id = m
                        .get("_id")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string();
                    let reason = format!("transform failed on entity {id:?}: {}", err.message);
                    return Err(Box::new(Failure {
                        traceback: format!(
                            "pipe {:?}, transform[{i}].{}: {}\n  entity: {id:?}",
                            config.id, err.path, err.message
                        ),
                        original: err.message,
                        reason,
                        exception_entity: Some(Value::Object(m)),
                        ..Failure::default()
                    }));
                }
            }
        }
        out.push(Value::Object(m));
    }
    Ok(out)
}

/// Writes the sink: (changes, write errors count).
/// Why the store would refuse an entity, checked before the write so that
/// one bad entity is a write error and not a failed batch.
fn unstorable(e: &Value) -> Option<String> {
    let Value::Object(m) = e else {
        return Some("the entity is not a JSON object".into());
    };
    match m.get("_id") {
        Some(Value::String(id)) if id.is_empty() => Some("the entity's _id is empty".into()),
        Some(Value::String(id)) if id.contains('\0') => {
            Some("the entity's _id contains a NUL character".into())
        }
        Some(Value::String(id)) if id.chars().count() > MAX_ENTITY_ID_CHARS => Some(format!(
            "the entity's _id is longer than {MAX_ENTITY_ID_CHARS} characters"
        )),
        Some(Value::String(_)) => None,
        _ => Some("the entity has no string _id".into()),
    }
}

async fn write_sink(
    shared: &Arc<Shared>,
    config: &PipeConfig,
    secrets: &mut Secrets,
    entities: Vec<Value>,
) -> Result<SinkResult, Box<Failure>> {
    match &config.sink {
        SinkConfig::Dataset { dataset } => {
            let name = dataset.clone().unwrap_or_else(|| config.id.clone());
            let mut write_errors = EntityErrors::default();
            let mut good = Vec::with_capacity(entities.len());
            for e in entities {
                match unstorable(&e) {
                    None => good.push(e),
                    Some(why) => {
                        let mut w = entity_error(
                            &config.id,
                            EventType::WriteError,
                            e.get("_id").and_then(Value::as_str),
                            format!("could not write to dataset {name:?}: {why}"),
                        );
                        w.error_code = Some("invalid-entity".into());
                        w.retryable = Some(false);
                        write_errors.push(w);
                    }
                }
            }
            let store = shared.store.clone();
            let r = blocking(move || store.write_entities(&name, &good)).await;
            let changes = r
                .map(|s| s.changes)
                .map_err(|e| fail(format!("could not write the sink dataset: {e}")))?;
            Ok(SinkResult {
                changes,
                write_errors,
            })
        }
        SinkConfig::Json {
            system,
            url,
            batch_size,
        } => {
            let sys = shared
                .config()
                .systems
                .get(system)
                .cloned()
                .ok_or_else(|| fail(format!("system {system:?} is not configured")))?;
            let t = target(shared, secrets, &sys, url.as_deref())?;
            let mut written = 0u64;
            // The receiving system never had a filtered entity's tombstone
            // to act on; only a dataset sink keeps what was written.
            let entities: Vec<Value> = entities
                .into_iter()
                .filter(|e| e.get("_filtered") != Some(&Value::Bool(true)))
                .collect();
            for chunk in entities.chunks(batch_size.get()) {
                let res = shared
                    .http
                    .post(&t.url)
                    .headers(t.headers.clone())
                    .timeout(t.timeout)
                    .json(chunk)
                    .send()
                    .await;
                let (code, retryable, message) = match res {
                    Ok(r) if r.status().is_success() => {
                        written += chunk.len() as u64;
                        continue;
                    }
                    Ok(r) => {
                        let status = r.status();
                        // Only an excerpt is kept: never buffer a large error body.
                        let text = match read_limited(r, 64 << 10).await {
                            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                            Err(_) => String::new(),
                        };
                        (
                            status.as_u16().to_string(),
                            status.is_server_error() || status.as_u16() == 429,
                            format!(
                                "system {system:?} answered HTTP {status}: {}",
                                body_excerpt(&text)
                            ),
                        )
                    }
                    Err(e) => (
                        if e.is_timeout() {
                            "timeout"
                        } else {
                            "connection-error"
                        }
                        .to_string(),
                        true,
                        format!("could not write to system {system:?}: {}", error_chain(&e)),
                    ),
                };
                let message = secrets.scrub(&message);
                let mut f = fail(format!("{message} ({} entities not written)", chunk.len()));
                f.original = message.clone();
                for e in chunk {
                    let mut w = entity_error(
                        &config.id,
                        EventType::WriteError,
                        e.get("_id").and_then(Value::as_str),
                        message.clone(),
                    );
                    w.error_code = Some(code.clone());
                    w.retryable = Some(retryable);
                    // Sesam's write-error keeps the entity in the node's
                    // execution dataset; it never goes into the outbox.
                    w.entity = Some(e.clone());
                    f.write_errors.push(w);
                }
                return Err(f);
            }
            Ok(SinkResult {
                changes: written,
                write_errors: EntityErrors::default(),
            })
        }
    }
}

fn metrics_of(
    seen: u64,
    changes: u64,
    read_errors: u64,
    write_errors: u64,
    times: [f64; 3],
) -> ExecutionMetrics {
    ExecutionMetrics {
        entities_last_run: Some(seen),
        changes_last_run: Some(changes),
        read_errors_last_run: Some(read_errors),
        write_errors_last_run: Some(write_errors),
        source_time: Some(times[0]),
        transform_time: Some(times[1]),
        sink_time: Some(times[2]),
        ..ExecutionMetrics::default()
    }
}

/// Runs the pipe once and records the run.
async fn run_once(
    shared: &Arc<Shared>,
    pump: &Arc<Pump>,
    config: Arc<PipeConfig>,
    task: &CancellationToken,
) {
    let cancel = pump
        .run
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(CancellationToken::new)
        .clone();
    let run_id = uuid::Uuid::new_v4().to_string();
    let start = now_nanos();
    let started = Instant::now();
    pump.update(|s| {
        s.is_running = true;
        s.last_run = Some(start);
        s.progress = 0;
    });
    let label = Metrics::pipe(&config.id);
    shared.metrics.pump_started.get_or_create(&label).inc();
    let sync_type = match &config.source {
        SourceConfig::Dataset { .. } => {
            let store = shared.store.clone();
            let id = config.id.clone();
            match blocking(move || store.pipe_offset(&id)).await {
                Ok(0) | Err(_) => SyncType::Full,
                Ok(_) => SyncType::Incremental,
            }
        }
        _ => SyncType::Full,
    };
    let mut ev = ExecutionBody::new(config.id.clone(), EventType::PumpStarted);
    ev.run_id = Some(run_id.clone());
    ev.start_time = Some(rfc3339_from_nanos(start));
    ev.sync_type = Some(sync_type);
    shared.execution_event(ev, config.monitoring).await;

    let mut secrets = Secrets::default();
    let mut times = [0.0f64; 3];
    let mut seen = 0u64;
    let mut changes = 0u64;
    let mut read_errors = EntityErrors::default();
    let mut write_errors = EntityErrors::default();
    let result = {
        let work = async {
            let t = Instant::now();
            let read = read_source(shared, &config, &mut secrets).await;
            times[0] = t.elapsed().as_secs_f64();
            let batch = read?;
            read_errors.append(batch.read_errors);
            let offset = batch.offset;
            seen = batch.entities.len() as u64;
            pump.update(|s| s.progress = seen);
            // Stage times are recorded whether or not the stage fails.
            let t = Instant::now();
            let out = transform(&config, batch.entities);
            times[1] = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let written = write_sink(shared, &config, &mut secrets, out?).await;
            times[2] = t.elapsed().as_secs_f64();
            let written = written?;
            changes = written.changes;
            write_errors.append(written.write_errors);
            if let Some(o) = offset {
                let store = shared.store.clone();
                let id = config.id.clone();
                blocking(move || store.set_pipe_offset(&id, o))
                    .await
                    .map_err(|e| fail(format!("could not save the pipe offset: {e}")))?;
                pump.update(|s| s.last_seen = Some(o));
            }
            Ok::<(), Box<Failure>>(())
        };
        tokio::pin!(work);
        let stopped = || {
            Err(fail(
                "the pump was stopped by the stop operation".to_string(),
            ))
        };
        tokio::select! {
            r = &mut work => r,
            _ = cancel.cancelled() => stopped(),
            _ = task.cancelled() => {
                if shared.shutdown.is_cancelled() {
                    // A shutdown lets the run finish within the grace period, so
                    // that a deploy does not turn every running pump into a
                    // pump-failed.
                    tokio::select! {
                        r = &mut work => r,
                        _ = cancel.cancelled() => stopped(),
                        _ = tokio::time::sleep(shared.run_grace) => Err(fail(
                            "the pump was stopped because the node is shutting down".to_string(),
                        )),
                    }
                } else {
                    Err(fail(
                        "the pump was stopped because its configuration changed or was removed".to_string(),
                    ))
                }
            }
        }
    };
    let end = now_nanos();
    let total = started.elapsed().as_secs_f64();
    let next_interval = config
        .schedule
        .next_after(chrono::Utc::now())
        .map(|d| d.as_secs_f64());
    let result = result.map_err(|mut f| {
        read_errors.append(std::mem::take(&mut f.read_errors));
        write_errors.append(std::mem::take(&mut f.write_errors));
        f
    });
    // Per-entity errors first, then the run's end, as Sesam orders them.
    for mut e in read_errors
        .events
        .drain(..)
        .chain(write_errors.events.drain(..))
    {
        e.run_id = Some(run_id.clone());
        if let Some(m) = e.original_error_message.take() {
            e.original_error_message = Some(secrets.scrub(&m));
        }
        shared.execution_event(e, config.monitoring).await;
    }
    let (read_n, write_n) = (read_errors.count, write_errors.count);
    match result {
        Ok(()) => {
            let mut ev = ExecutionBody::new(config.id.clone(), EventType::PumpCompleted);
            ev.run_id = Some(run_id);
            ev.start_time = Some(rfc3339_from_nanos(start));
            ev.end_time = Some(rfc3339_from_nanos(end));
            ev.total_time = Some(total);
            ev.sync_type = Some(sync_type);
            ev.next_interval = next_interval;
            ev.metrics = metrics_of(seen, changes, read_n, write_n, times);
            ev.entities_succeeded = Some(seen.saturating_sub(write_n));
            ev.entities_failed = Some(read_n + write_n);
            shared.execution_event(ev, config.monitoring).await;
            shared.metrics.pump_completed.get_or_create(&label).inc();
            shared
                .metrics
                .entities_changes
                .get_or_create(&label)
                .inc_by(changes);
            shared
                .metrics
                .entities_seen
                .get_or_create(&label)
                .inc_by(seen);
            shared
                .metrics
                .last_completed_time
                .get_or_create(&label)
                .set(end as f64 / 1e9);
            pump.update(|s| {
                s.success = Some(true);
                s.last_error = None;
            });
            // A run that changed nothing is routine: the log at INFO reads as
            // a record of changes (and of errors).
            if changes == 0 && read_n == 0 && write_n == 0 {
                tracing::debug!(pipe = %config.id, seen, "pump completed with nothing to do");
            } else if read_n + write_n > 0 {
                tracing::warn!(pipe = %config.id, seen, changes, read_errors = read_n, write_errors = write_n, "pump completed with entity errors");
            } else {
                tracing::info!(pipe = %config.id, seen, changes, "pump completed");
            }
        }
        Err(f) => {
            let reason = secrets.scrub(&f.reason);
            let mut ev = ExecutionBody::new(config.id.clone(), EventType::PumpFailed);
            ev.run_id = Some(run_id);
            ev.start_time = Some(rfc3339_from_nanos(start));
            ev.end_time = Some(rfc3339_from_nanos(end));
            ev.total_time = Some(total);
            ev.sync_type = Some(sync_type);
            ev.next_interval = next_interval;
            ev.reason_why_stopped = Some(reason.clone());
            ev.original_error_message = Some(secrets.scrub(&f.original));
            ev.traceback = Some(secrets.scrub(&f.traceback));
            ev.metrics = metrics_of(seen, changes, read_n, write_n, times);
            ev.entity_id = f
                .exception_entity
                .as_ref()
                .and_then(|e| e.get("_id"))
                .and_then(Value::as_str)
                .map(str::to_string);
            ev.exception_entity = f.exception_entity;
            shared.execution_event(ev, config.monitoring).await;
            shared.metrics.pump_failed.get_or_create(&label).inc();
            pump.update(|s| {
                s.success = Some(false);
                s.last_error = Some(reason.clone());
            });
            tracing::warn!(pipe = %config.id, reason = %reason, "pump failed");
        }
    }
    shared.metrics.total_time.get_or_create(&label).set(total);
    *pump.run.lock().unwrap_or_else(|p| p.into_inner()) = None;
    pump.update(|s| {
        s.is_running = false;
        s.last_end = Some(end);
    });
    shared.health_wakeup.notify_one();
}

/// Emits pump-enabled / pump-disabled and persists the flag.
pub async fn set_enabled(
    shared: &Arc<Shared>,
    pump: &Arc<Pump>,
    enabled: bool,
) -> Result<(), crate::store::StoreError> {
    let store = shared.store.clone();
    let id = pump.id.clone();
    blocking(move || store.set_pump_meta(&id, &PumpMeta { disabled: !enabled })).await?;
    pump.set_disabled(!enabled);
    shared
        .metrics
        .pipe_enabled
        .get_or_create(&Metrics::pipe(&pump.id))
        .set(i64::from(enabled));
    let config = pump.config();
    let mut ev = ExecutionBody::new(
        pump.id.clone(),
        if enabled {
            EventType::PumpEnabled
        } else {
            EventType::PumpDisabled
        },
    );
    ev.end_time = Some(rfc3339_from_nanos(now_nanos()));
    shared.execution_event(ev, config.monitoring).await;
    tracing::info!(pipe = %pump.id, enabled, "pump {}", if enabled { "enabled" } else { "disabled" });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_replaces_every_used_secret_value() {
        let s = Secrets {
            used: vec![("tok".into(), "hunter2".into())],
        };
        assert_eq!(
            s.scrub("server said: Bearer hunter2 is wrong (hunter2)"),
            "server said: Bearer $SECRET(tok) is wrong ($SECRET(tok))"
        );
    }

    #[test]
    fn transform_failure_carries_the_entity() {
        let c = crate::config::from_value(serde_json::json!([{
            "_id": "p", "type": "pipe",
            "source": {"type": "embedded", "entities": []},
            "transform": {"type": "dtl", "rules": {"default": [["copy", "*"], ["add", "n", ["integer", "_S.n"]]]}}
        }]))
        .unwrap();
        let p = &c.pipes["p"];
        let ok = serde_json::json!({"_id": "a", "n": "1"});
        let bad = serde_json::json!({"_id": "b", "n": "x"});
        let f = transform(p, vec![ok, bad.clone()]).unwrap_err();
        assert_eq!(f.exception_entity, Some(bad));
        assert!(f.reason.contains("\"b\""), "{}", f.reason);
        assert!(f.traceback.contains("rules.default[1]"), "{}", f.traceback);
    }
}

//! Sinks: where a run writes its entities.
//!
//! - `dataset`: the entities are stored (unchanged ones are skipped by the
//!   store); an entity the store cannot hold (`_id` with a NUL, longer than
//!   [`MAX_ENTITY_ID_CHARS`], not an object) is a `write-error` and the
//!   others are written; a DTL filter's tombstone deletes what an earlier
//!   run wrote;
//! - `json`: HTTP POST of each batch as a JSON array; a refused batch fails
//!   the run with a `write-error` per entity of it. Filtered entities are
//!   not sent.

use schemas::EventType;
use serde_json::Value;

use crate::config::{PipeConfig, SinkConfig};
use crate::limits::MAX_ENTITY_ID_CHARS;
use crate::store::blocking;

use super::context::PumpContext;
use super::outcome::{entity_error, fail, EntityErrors, Failure, SinkResult};
use super::system::{body_excerpt, error_chain, read_limited, target, Secrets};

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

/// Writes the entities of a run to the pipe's sink.
pub async fn write_sink(
    ctx: &PumpContext,
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
            let store = ctx.store.clone();
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
            let sys = config
                .sink_system
                .clone()
                .ok_or_else(|| fail(format!("system {system:?} is not configured")))?;
            let t = target(&ctx.store, secrets, &sys, url.as_deref()).await?;
            let mut written = 0u64;
            // The receiving system never had a filtered entity's tombstone
            // to act on; only a dataset sink keeps what was written.
            let entities: Vec<Value> = entities
                .into_iter()
                .filter(|e| e.get("_filtered") != Some(&Value::Bool(true)))
                .collect();
            for chunk in entities.chunks(batch_size.get()) {
                let res = ctx
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

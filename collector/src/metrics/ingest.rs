//! One metrics push, after admission: undo the encoding, decode
//! (remote-write's protobuf walk or OTLP), validate into series, apply to
//! the latest-sample table, count, and hand the accepted samples to the
//! observers. Runs on a blocking thread; knows nothing of HTTP.

use super::series::{Refused, SeriesBuilder, SeriesError};
use super::{otlp, remote_write, MetricStore, Protocol, ProtocolLabel};
use crate::compression::{decompress, unsnappy, DecompressError};
use crate::telemetry::{Metrics, ReasonLabel};

/// A request refused as a whole: nothing of it is stored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("Content-Encoding {0:?} is not supported; remote-write bodies are snappy")]
    UnsupportedEncoding(String),
    #[error("{error}")]
    Decompress {
        error: DecompressError,
        /// Snappy (remote-write) rather than `Content-Encoding` (OTLP).
        snappy: bool,
    },
    #[error("{0}")]
    Malformed(String),
    #[error(transparent)]
    Series(#[from] SeriesError),
}

impl Refusal {
    /// The counter reason of this refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::UnsupportedEncoding(_) => "unsupported_encoding",
            Refusal::Decompress { error, snappy } => match error {
                DecompressError::Unsupported(_) => "unsupported_encoding",
                DecompressError::TooLarge { .. } => "decompressed_too_large",
                DecompressError::Bad { .. } if *snappy => "bad_snappy",
                DecompressError::Bad { .. } => "bad_compression",
            },
            Refusal::Malformed(_) => "malformed",
            Refusal::Series(e) => e.reason(),
        }
    }
}

/// What was stored of a request.
#[derive(Debug, Default)]
pub struct Outcome {
    pub accepted: u64,
    /// Samples refused one by one (the others were stored).
    pub refused: Refused,
    /// The accepted samples as a remote-write request to VictoriaMetrics,
    /// when the store keeps them there (written before the push is
    /// answered).
    pub forward: Vec<u8>,
}

/// Bounds of one push.
#[derive(Debug, Clone, Copy)]
pub struct PushLimits {
    pub max_decompressed_bytes: usize,
    /// Newest accepted sample time, relative to now (ms).
    pub accept_future_ms: i64,
}

/// Decodes, validates and applies one request; `forced` is the token's
/// subscription (`None`: an admin's series name theirs).
pub fn ingest(
    store: &MetricStore,
    telemetry: &Metrics,
    forced: Option<&str>,
    encoding: Option<&str>,
    body: &[u8],
    protocol: Protocol,
    limits: PushLimits,
) -> Result<Outcome, Refusal> {
    let now = schemas::time::now_nanos() / 1_000_000;
    let mut builder = SeriesBuilder::new(forced, now, limits.accept_future_ms)
        .with_label_limits(store.table.limits().labels);
    let limit = limits.max_decompressed_bytes;
    match protocol {
        Protocol::RemoteWrite => {
            match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
                None | Some("") | Some("snappy") => {}
                Some(other) => return Err(Refusal::UnsupportedEncoding(other.to_string())),
            }
            let raw = unsnappy(body, limit).map_err(|error| Refusal::Decompress {
                error,
                snappy: true,
            })?;
            remote_write::prepare_raw(&raw, &mut builder).map_err(|e| match e {
                remote_write::RawError::Wire(w) => Refusal::Malformed(w.to_string()),
                remote_write::RawError::Series(e) => Refusal::Series(e),
            })?;
        }
        Protocol::Otlp => {
            let raw = decompress(encoding, body, limit).map_err(|error| Refusal::Decompress {
                error,
                snappy: false,
            })?;
            let req = otlp::decode(&raw)
                .map_err(|e| Refusal::Malformed(format!("malformed protobuf: {e}")))?;
            otlp::prepare(&req, &mut builder)?;
        }
    }
    let mut prepared = builder.prepared;
    let applied = store.table.apply(&prepared, now);
    let c = &store.counters;
    c.series_created.inc_by(applied.created);
    c.series_evicted.inc_by(applied.evicted + applied.deleted);
    c.samples_accepted
        .get_or_create(&ProtocolLabel {
            protocol: protocol.as_str(),
        })
        .inc_by(applied.accepted);
    for &(i, reason) in &applied.refused {
        let what = super::table::Table::describe(&prepared, i);
        prepared.refused.add(reason, 1, || match reason {
            "series_bytes_limit" => format!(
                "new series {what} would pass its subscription's series memory limit (--max-metric-bytes-per-subscription, --max-metric-bytes)"
            ),
            _ => format!("new series {what} is over the series limit of its subscription"),
        });
    }
    for (reason, n) in &prepared.refused.by_reason {
        c.samples_refused
            .get_or_create(&ReasonLabel { reason })
            .inc_by(*n);
        if matches!(
            *reason,
            "series_limit" | "series_bytes_limit" | "label_limit"
        ) {
            for sub in &prepared.tenants {
                telemetry.refuse_tenant(sub, reason);
            }
        }
    }
    let refused = applied.refused_indexes();
    let forward = match &store.victoria {
        Some(_) => super::victoria::write_request(&prepared, &refused),
        None => Vec::new(),
    };
    store.notify(&prepared, &refused);
    Ok(Outcome {
        accepted: applied.accepted,
        refused: prepared.refused,
        forward,
    })
}

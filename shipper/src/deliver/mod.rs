//! Delivery: drains an outbox sink cursor to a receiver (the collector's
//! ingest, or an OTLP endpoint), redacting every record first.
//!
//! Pipeline per sink:
//! 1. a *producer* reads the outbox after its read position (waiting for new
//!    records on the outbox's watch channel, lingering up to `linger` to fill
//!    a batch), filters, redacts and encodes a batch on a blocking thread;
//! 2. a *dispatcher* keeps up to `in_flight` batches in delivery; each batch
//!    task retries until its whole seq range is delivered (network errors,
//!    timeouts, 429 honouring `Retry-After`, 5xx, 401/403 and answers that
//!    are not the receiver's: exponential backoff with full jitter, forever),
//!    splitting on 400/413 down to single records, and moving a single
//!    rejected record to the outbox quarantine (dead letter);
//! 3. the cursor is acknowledged only over the contiguous prefix of
//!    delivered batches, so a crash re-sends at most what was in flight and
//!    the receiver's (subscription, source, seq) dedupe makes that harmless.
//!    An acknowledgement the outbox cannot write (disk full) is retried
//!    every [`ACK_RETRY`] until it can; delivery goes on meanwhile.
//!
//! Drops reported by the outbox (`when_full`) travel in the next batch's
//! `dropped` field and are acknowledged with the cursor. A batch that is
//! delivered but whose answer is lost is sent again; its records are deduped
//! by the receiver, but its `dropped` count may be counted twice: the drop
//! counter is at-least-once.

mod backoff;
pub mod collector;
mod metrics;
pub mod otlp;

use std::collections::BTreeMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use schemas::Record;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use backoff::Backoff;
pub use collector::CollectorEndpoint;
pub use metrics::{DeliveryMetrics, SinkLabel};
pub use otlp::OtlpEndpoint;

use crate::outbox::{Outbox, OutboxError};
use crate::redact::Redactor;

/// Decides whether a record may leave the host at all (e.g. execution events
/// of pipes without monitoring must not). Filtered records are acknowledged
/// without being sent.
pub type RecordFilter = Arc<dyn Fn(&Record) -> bool + Send + Sync>;

/// The longest `Retry-After` honoured; a larger one is clamped to it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// What a receiver made of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    Delivered,
    /// Try again later; `after` is the receiver's `Retry-After`, if any.
    Retry {
        reason: &'static str,
        after: Option<Duration>,
    },
    /// The receiver refused the content (400/413): split, and dead-letter a
    /// single record it still refuses.
    Reject {
        status: u16,
        message: String,
    },
}

/// A receiver of record batches.
pub trait Endpoint: Send + Sync + 'static {
    /// Whether `b` may travel in the same request as `a` (e.g. the collector
    /// takes one source and subscription per batch).
    fn compatible(&self, a: &Record, b: &Record) -> bool {
        let _ = (a, b);
        true
    }
    /// Encodes already-redacted records into a request body.
    fn encode(&self, records: &[Record], dropped: u64) -> Result<Vec<u8>, String>;
    /// Sends one body. Must not panic; every failure is an outcome.
    fn send(&self, body: Vec<u8>) -> impl Future<Output = SendOutcome> + Send;
}

/// Settings of one delivery sink.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// The outbox sink (cursor) name.
    pub sink: String,
    pub max_batch_records: NonZeroUsize,
    /// Bound of the stored bytes read into one batch (past its first record).
    pub max_batch_bytes: NonZeroUsize,
    /// How long to wait for a batch to fill before sending what there is.
    pub linger: Duration,
    /// Batches delivered concurrently.
    pub in_flight: NonZeroUsize,
    pub backoff: Backoff,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            sink: "collector".into(),
            max_batch_records: NonZeroUsize::new(5_000).expect("non-zero"),
            max_batch_bytes: NonZeroUsize::new(4 << 20).expect("non-zero"),
            linger: Duration::from_millis(200),
            in_flight: NonZeroUsize::new(4).expect("non-zero"),
            backoff: Backoff::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("outbox: {0}")]
    Outbox(#[from] OutboxError),
    #[error("reader thread failed: {0}")]
    Reader(String),
}

/// How often a failed acknowledgement is tried again.
pub const ACK_RETRY: Duration = Duration::from_secs(1);

/// One batch on its way.
struct Batch {
    first_seq: u64,
    last_seq: u64,
    records: Vec<Record>,
    body: Option<Vec<u8>>,
    dropped: u64,
    /// Value of the outbox's drop counter this batch reports up to.
    dropped_upto: u64,
    oldest_ts: Option<i64>,
}

struct Slot {
    last_seq: u64,
    done: bool,
    dropped_upto: u64,
    oldest_ts: Option<i64>,
}

/// Everything a sink needs; build one per receiver.
pub struct Sink<E: Endpoint> {
    pub outbox: Outbox,
    pub endpoint: Arc<E>,
    pub redactor: Arc<Redactor>,
    pub filter: Option<RecordFilter>,
    pub config: DeliveryConfig,
    pub metrics: DeliveryMetrics,
}

impl<E: Endpoint> std::fmt::Debug for Sink<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("outbox", &self.outbox)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<E: Endpoint> Sink<E> {
    /// Delivers until `shutdown` is cancelled. On shutdown, stops reading,
    /// lets in-flight batches finish their current attempt, acknowledges the
    /// delivered prefix and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DeliveryError> {
        let state = self.outbox.register_sink(&self.config.sink).await?;
        let label = self.metrics.sink(&self.config.sink);
        // One batch ready ahead of the in-flight ones is enough to keep the
        // pipe full; more would only hold decoded records in memory.
        let (tx, mut rx) = mpsc::channel::<Batch>(1);
        let producer = tokio::spawn(produce(
            self.outbox.clone(),
            self.endpoint.clone(),
            self.redactor.clone(),
            self.filter.clone(),
            self.config.clone(),
            self.metrics.clone(),
            state.acked,
            state.dropped_reported,
            tx,
            shutdown.clone(),
        ));

        let mut slots: BTreeMap<u64, Slot> = BTreeMap::new();
        let mut tasks: JoinSet<(u64, bool)> = JoinSet::new();
        let mut producing = true;
        // Delivered batches whose acknowledgement the outbox refused.
        let mut ack_failed = false;
        loop {
            let room = tasks.len() < self.config.in_flight.get();
            tokio::select! {
                _ = tokio::time::sleep(ACK_RETRY), if ack_failed => {
                    ack_failed = !self.ack_prefix(&mut slots).await;
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    let (first_seq, delivered) = match joined {
                        Ok(v) => v,
                        Err(e) => {
                            // A panicking batch task is a bug; keep the cursor where it is.
                            tracing::error!(error = %e, "delivery task failed");
                            continue;
                        }
                    };
                    if delivered {
                        if let Some(s) = slots.get_mut(&first_seq) {
                            s.done = true;
                        }
                        ack_failed = !self.ack_prefix(&mut slots).await;
                    }
                    self.metrics.in_flight.get_or_create(&label).set(tasks.len() as i64);
                }
                batch = rx.recv(), if room && producing => {
                    match batch {
                        Some(b) => {
                            slots.insert(b.first_seq, Slot {
                                last_seq: b.last_seq,
                                done: false,
                                dropped_upto: b.dropped_upto,
                                oldest_ts: b.oldest_ts,
                            });
                            if b.records.is_empty() {
                                // Everything in it was filtered: nothing to send.
                                if let Some(s) = slots.get_mut(&b.first_seq) {
                                    s.done = true;
                                }
                                ack_failed = !self.ack_prefix(&mut slots).await;
                                continue;
                            }
                            tasks.spawn(deliver_batch(
                                b,
                                self.endpoint.clone(),
                                self.outbox.clone(),
                                self.config.backoff,
                                self.metrics.clone(),
                                label.clone(),
                                shutdown.clone(),
                            ));
                            self.metrics.in_flight.get_or_create(&label).set(tasks.len() as i64);
                        }
                        None => producing = false,
                    }
                }
                else => break,
            }
            if !producing && tasks.is_empty() {
                if ack_failed && !self.ack_prefix(&mut slots).await {
                    tracing::warn!(
                        sink = %self.config.sink,
                        "stopping with delivered records unacknowledged; they will be sent again"
                    );
                }
                break;
            }
        }
        match producer.await {
            Ok(r) => r,
            Err(e) => Err(DeliveryError::Reader(e.to_string())),
        }
    }

    /// Acknowledges the delivered prefix of `slots` and removes it. Returns
    /// false (and keeps the prefix, to be tried again) when the outbox
    /// refuses the acknowledgement, e.g. because its disk is full: that is
    /// no reason to stop delivering, and the cursor stays where it is
    /// durably, so nothing is lost either way.
    async fn ack_prefix(&self, slots: &mut BTreeMap<u64, Slot>) -> bool {
        let upto = slots
            .values()
            .take_while(|s| s.done)
            .last()
            .map(|s| (s.last_seq, s.dropped_upto));
        let mut acked = true;
        if let Some((seq, dropped)) = upto {
            match self.outbox.ack(&self.config.sink, seq, dropped).await {
                Ok(()) => slots.retain(|_, s| s.last_seq > seq),
                Err(e) => {
                    tracing::warn!(sink = %self.config.sink, upto = seq, error = %e,
                        "cannot acknowledge delivered records; retrying");
                    acked = false;
                }
            }
        }
        let label = self.metrics.sink(&self.config.sink);
        let lag = match slots.values().find_map(|s| s.oldest_ts) {
            Some(ts) => ((schemas::time::now_nanos() - ts) as f64 / 1e9).max(0.0),
            None => 0.0,
        };
        self.metrics.lag_seconds.get_or_create(&label).set(lag);
        acked
    }
}

/// Reads, filters, redacts and encodes batches in seq order.
#[allow(clippy::too_many_arguments)]
async fn produce<E: Endpoint>(
    outbox: Outbox,
    endpoint: Arc<E>,
    redactor: Arc<Redactor>,
    filter: Option<RecordFilter>,
    config: DeliveryConfig,
    metrics: DeliveryMetrics,
    mut read_pos: u64,
    mut dropped_sent: u64,
    tx: mpsc::Sender<Batch>,
    shutdown: CancellationToken,
) -> Result<(), DeliveryError> {
    let mut appended = outbox.watch();
    let label = metrics.sink(&config.sink);
    let max_records = config.max_batch_records.get();
    loop {
        // Wait for records, then linger for a full batch.
        let mut since: Option<Instant> = None;
        loop {
            let available = outbox.last_seq().saturating_sub(read_pos);
            if available >= max_records as u64 {
                break;
            }
            if available > 0 {
                let started = *since.get_or_insert_with(Instant::now);
                if started.elapsed() >= config.linger {
                    break;
                }
                let left = config.linger.saturating_sub(started.elapsed());
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(left) => {}
                    _ = appended.changed() => {}
                }
            } else {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    changed = appended.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let (ob, ep, rd, fl) = (
            outbox.clone(),
            endpoint.clone(),
            redactor.clone(),
            filter.clone(),
        );
        let max_bytes = config.max_batch_bytes.get();
        let built = tokio::task::spawn_blocking(move || {
            build_batch(
                &ob,
                &*ep,
                &rd,
                fl.as_ref(),
                read_pos,
                max_records,
                max_bytes,
                dropped_sent,
            )
        })
        .await
        .map_err(|e| DeliveryError::Reader(e.to_string()))??;
        let Some((batch, filtered)) = built else {
            continue;
        };
        if filtered > 0 {
            metrics.filtered.get_or_create(&label).inc_by(filtered);
        }
        read_pos = batch.last_seq;
        dropped_sent = batch.dropped_upto;
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            sent = tx.send(batch) => {
                if sent.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Builds the next batch after `after`. Blocking: runs on a blocking thread.
#[allow(clippy::too_many_arguments)]
fn build_batch<E: Endpoint>(
    outbox: &Outbox,
    endpoint: &E,
    redactor: &Redactor,
    filter: Option<&RecordFilter>,
    after: u64,
    max_records: usize,
    max_bytes: usize,
    dropped_sent: u64,
) -> Result<Option<(Batch, u64)>, DeliveryError> {
    let read = outbox.read(after, max_records, max_bytes)?;
    if read.last_seq == after {
        return Ok(None);
    }
    let mut last_seq = read.last_seq;
    let mut records = Vec::with_capacity(read.records.len());
    let mut filtered = 0u64;
    let mut first: Option<Record> = None;
    for mut r in read.records {
        if let Some(f) = &first {
            if !endpoint.compatible(f, &r) {
                // Cut here; the rest goes in the next batch.
                last_seq = r.seq - 1;
                break;
            }
        } else {
            first = Some(r.clone());
        }
        if filter.is_some_and(|f| !f(&r)) {
            filtered += 1;
            continue;
        }
        redactor.redact(&mut r);
        records.push(r);
    }
    let total_dropped = outbox.stats().dropped_total();
    let dropped = total_dropped.saturating_sub(dropped_sent);
    let oldest_ts = records.iter().map(|r| r.ts).min();
    let body = if records.is_empty() {
        None
    } else {
        Some(
            endpoint
                .encode(&records, dropped)
                .map_err(DeliveryError::Reader)?,
        )
    };
    Ok(Some((
        Batch {
            first_seq: after + 1,
            last_seq,
            records,
            body,
            dropped,
            dropped_upto: total_dropped,
            oldest_ts,
        },
        filtered,
    )))
}

/// Delivers one batch completely (retrying, splitting, dead-lettering).
/// Returns (first_seq, delivered); `delivered` is false only on shutdown.
async fn deliver_batch<E: Endpoint>(
    batch: Batch,
    endpoint: Arc<E>,
    outbox: Outbox,
    backoff: Backoff,
    metrics: DeliveryMetrics,
    label: SinkLabel,
    shutdown: CancellationToken,
) -> (u64, bool) {
    let first_seq = batch.first_seq;
    // Parts still to deliver, in order; the first carries the drop count.
    let mut parts: Vec<(Vec<Record>, Option<Vec<u8>>, u64)> =
        vec![(batch.records, batch.body, batch.dropped)];
    while let Some((records, body, dropped)) = parts.pop() {
        let mut body = body;
        let mut attempt = 0u32;
        loop {
            let payload = match body.take() {
                Some(b) => b,
                None => match endpoint.encode(&records, dropped) {
                    Ok(b) => b,
                    Err(e) => {
                        // Cannot happen for records that decoded from the
                        // outbox; dead-letter rather than wedge.
                        tracing::error!(error = %e, "encode batch");
                        dead_letter(&outbox, &records, &e, &metrics, &label).await;
                        break;
                    }
                },
            };
            let size = payload.len() as u64;
            let started = Instant::now();
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return (first_seq, false),
                o = endpoint.send(payload.clone()) => o,
            };
            metrics
                .request_duration
                .get_or_create(&label)
                .observe(started.elapsed().as_secs_f64());
            match outcome {
                SendOutcome::Delivered => {
                    metrics
                        .records_sent
                        .get_or_create(&label)
                        .inc_by(records.len() as u64);
                    metrics.batches_sent.get_or_create(&label).inc();
                    metrics.bytes_sent.get_or_create(&label).inc_by(size);
                    break;
                }
                SendOutcome::Retry { reason, after } => {
                    metrics
                        .failures
                        .get_or_create(&metrics::ReasonLabel {
                            sink: label.sink.clone(),
                            reason: reason.to_string(),
                        })
                        .inc();
                    metrics.retries.get_or_create(&label).inc();
                    // A receiver's Retry-After wins, within reason.
                    let wait = after
                        .map(|a| a.min(MAX_RETRY_AFTER))
                        .unwrap_or_else(|| backoff.delay(attempt));
                    attempt = attempt.saturating_add(1);
                    if attempt == 1 || attempt.is_multiple_of(10) {
                        tracing::warn!(sink = %label.sink, reason, attempt, ?wait, first_seq, "delivery failed; retrying");
                    }
                    body = Some(payload);
                    tokio::select! {
                        _ = shutdown.cancelled() => return (first_seq, false),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                SendOutcome::Reject { status, message } => {
                    metrics
                        .failures
                        .get_or_create(&metrics::ReasonLabel {
                            sink: label.sink.clone(),
                            reason: format!("rejected_{status}"),
                        })
                        .inc();
                    if records.len() == 1 {
                        let reason = format!("receiver answered {status}: {message}");
                        dead_letter(&outbox, &records, &reason, &metrics, &label).await;
                    } else {
                        let mut left = records;
                        let right = left.split_off(left.len() / 2);
                        // Stack: push the later half first so the earlier goes next.
                        parts.push((right, None, 0));
                        parts.push((left, None, dropped));
                    }
                    break;
                }
            }
        }
    }
    (first_seq, true)
}

async fn dead_letter(
    outbox: &Outbox,
    records: &[Record],
    reason: &str,
    metrics: &DeliveryMetrics,
    label: &SinkLabel,
) {
    for r in records {
        tracing::error!(seq = r.seq, %reason, "record rejected by the receiver; moved to the outbox quarantine");
        match outbox.quarantine(r.seq, reason).await {
            Ok(_) => {
                metrics.dead_letters.get_or_create(label).inc();
            }
            Err(e) => tracing::error!(seq = r.seq, error = %e, "quarantine rejected record"),
        }
    }
}

#[cfg(test)]
mod tests;

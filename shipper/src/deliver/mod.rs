//! Delivery: drains an outbox sink cursor to a receiver (the collector's
//! ingest, or an OTLP endpoint), redacting every record first.
//!
//! Pipeline per sink:
//! 1. a *producer* reads the outbox after its read position (waiting for new
//!    records on the outbox's watch channel, lingering up to `linger` to fill
//!    a batch), and on a blocking thread decodes, filters, redacts and
//!    encodes its records one at a time straight from the stored values into
//!    the request body (a batch never exists as decoded records);
//! 2. a *dispatcher* keeps up to `in_flight` batches in delivery; a batch in
//!    flight is its seq range and its encoded body, never the decoded
//!    records: a batch task retries until its whole seq range is delivered,
//!    and whatever it needs again (a half after a split, the range after a
//!    failed task) it reads back from the outbox, where the records stay
//!    until acknowledged;
//! 3. the cursor is acknowledged only over the contiguous prefix of
//!    delivered batches, so a crash re-sends at most what was in flight and
//!    the receiver's (subscription, source, epoch, seq) dedupe makes that
//!    harmless. An acknowledgement the outbox cannot write (disk full) is
//!    retried every [`ACK_RETRY`] until it can; delivery goes on meanwhile.
//!
//! # Retry policy
//!
//! One policy for every sink (the collector and OTLP), applied to each
//! attempt's answer; it is the pipeline's shared retry policy
//! ([`sesam_common::http`]) applied to a sender that holds acknowledged
//! data:
//!
//! | answer | what happens | counted as `reason` |
//! |---|---|---|
//! | 2xx with a receiver's answer (`IngestResponse`, OTLP response) | delivered | - |
//! | 2xx with anything else (a proxy page) | retried: not proof of delivery | `garbage_answer` |
//! | connection error, timeout | next collector at once, then retried with backoff | `network`, `timeout` |
//! | 5xx | next collector at once, then retried (`Retry-After` honoured) | `server_error` |
//! | 429 | next collector at once, then retried after `Retry-After` (else backoff) | `throttled` |
//! | 409 `{"reason": "source_conflict"}` | retried with backoff, logged at ERROR with the collector's message every round; never split, never dead-lettered | `source_conflict` |
//! | other 409 | retried with backoff | `conflict` |
//! | 401, 403 | retried with backoff (a token being rotated must not lose data) | `unauthorized` |
//! | 400, 413, 422 | the batch is split in halves down to single records; a single record still refused is dead-lettered (moved to the outbox `quarantine` family) and counted | `rejected_400`, `rejected_413` |
//! | any other status | retried with backoff | `client_error` |
//!
//! Backoff is exponential with full jitter (100 ms doubling to 30 s), for
//! ever: the outbox keeps everything meanwhile. A `Retry-After` (seconds) is
//! clamped to [0.1 s, `max_retry_after`] (default [`MAX_RETRY_AFTER`], 300 s;
//! `--max-retry-after`); a negative, NaN, infinite or
//! unparsable one is ignored for the backoff. "Next collector at once" is
//! failover between several collectors (see [`collector`]); the backoff
//! starts when every collector failed in a round.
//!
//! A batch task that fails (a panic in an endpoint, a failed read of its
//! range) is re-dispatched for the same seq range after a backoff: a failed
//! task never leaves a hole that the cursor could skip, and never stops the
//! sink. Counted as `task_failed`; a failed read or build of a batch by the
//! producer is retried the same way (`build_failed`).
//!
//! Drops reported by the outbox (`when_full`) travel in the next batch's
//! `dropped` field and are acknowledged with the cursor. A batch that is
//! delivered but whose answer is lost is sent again; its records are deduped
//! by the receiver, but its `dropped` count may be counted twice: the drop
//! counter is at-least-once.

pub mod collector;
mod metrics;
pub mod otlp;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use schemas::Record;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use collector::CollectorEndpoint;
pub use metrics::{DeliveryMetrics, ReasonLabel, SinkLabel};
pub use otlp::OtlpEndpoint;
pub use sesam_common::http::Backoff;

use crate::outbox::{Outbox, OutboxError, Visit};
use crate::redact::Redactor;

/// Decides whether a record may leave the host at all (e.g. execution events
/// of pipes without monitoring must not). Filtered records are acknowledged
/// without being sent.
pub type RecordFilter = Arc<dyn Fn(&Record) -> bool + Send + Sync>;

/// The longest `Retry-After` honoured by default; a larger one is clamped
/// to it ([`DeliveryConfig::max_retry_after`]); parsing clamps to it too.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// What a receiver made of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    Delivered,
    /// Try again later; `after` is the receiver's `Retry-After`, if any;
    /// `message` its explanation, if it gave one.
    Retry {
        reason: &'static str,
        after: Option<Duration>,
        message: Option<String>,
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
    /// Starts a request body in `out` (clearing it): whatever precedes
    /// the records.
    fn begin_body(&self, out: &mut Vec<u8>) {
        out.clear();
    }
    /// Appends the encoding of one (already redacted) record to a body
    /// started by [`Endpoint::begin_body`].
    fn encode_record(&self, record: &Record, out: &mut Vec<u8>) -> Result<(), String>;
    /// The request body made of `body` (begun by [`Endpoint::begin_body`],
    /// then `count` records of `source` and `subscription` from the outbox
    /// of epoch `epoch` appended by [`Endpoint::encode_record`]). May
    /// append to `body` and use it as scratch space.
    fn finish_body(
        &self,
        epoch: &str,
        source: &str,
        subscription: &str,
        count: usize,
        body: &mut Vec<u8>,
        dropped: u64,
    ) -> Result<Vec<u8>, String>;
    /// Encodes already-redacted records (all compatible) into a request body.
    fn encode(&self, epoch: &str, records: &[Record], dropped: u64) -> Result<Vec<u8>, String> {
        let first = records.first().ok_or("empty batch")?;
        let mut buf = Vec::new();
        self.begin_body(&mut buf);
        for r in records {
            self.encode_record(r, &mut buf)?;
        }
        self.finish_body(
            epoch,
            &first.source,
            &first.subscription,
            records.len(),
            &mut buf,
            dropped,
        )
    }
    /// Sends one body. Every failure should be an outcome; a panic is
    /// survived (the batch is re-dispatched) but is a bug.
    fn send(&self, body: Bytes) -> impl Future<Output = SendOutcome> + Send;
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
    /// The longest wait a receiver's `Retry-After` can impose; a longer one
    /// is clamped to it (default [`MAX_RETRY_AFTER`]).
    pub max_retry_after: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            sink: "collector".into(),
            max_batch_records: NonZeroUsize::new(5_000).expect("non-zero"),
            max_batch_bytes: NonZeroUsize::new(4 << 20).expect("non-zero"),
            linger: Duration::from_millis(200),
            in_flight: NonZeroUsize::new(4).expect("non-zero"),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
            max_retry_after: MAX_RETRY_AFTER,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("outbox: {0}")]
    Outbox(#[from] OutboxError),
    #[error("reader task failed: {0}")]
    Reader(String),
}

/// How often a failed acknowledgement is tried again.
pub const ACK_RETRY: Duration = Duration::from_secs(1);

/// An encoded request and the seqs of the records in it.
#[derive(Debug)]
struct Built {
    /// The body, or why the records could not be encoded together.
    body: Result<Bytes, String>,
    seqs: Vec<u64>,
    oldest_ts: Option<i64>,
}

/// One batch on its way: a seq range and what to send for it (`None` when
/// every record of the range was filtered out).
#[derive(Debug)]
struct Batch {
    first_seq: u64,
    last_seq: u64,
    built: Option<Built>,
    dropped: u64,
    /// Value of the outbox's drop counter this batch reports up to.
    dropped_upto: u64,
}

struct Slot {
    last_seq: u64,
    done: bool,
    dropped: u64,
    dropped_upto: u64,
    oldest_ts: Option<i64>,
    /// How often its task failed and was dispatched again.
    restarts: u32,
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

/// What the producer and the batch tasks of one sink share.
struct Ctx<E: Endpoint> {
    outbox: Outbox,
    endpoint: Arc<E>,
    redactor: Arc<Redactor>,
    filter: Option<RecordFilter>,
    config: DeliveryConfig,
    metrics: DeliveryMetrics,
    label: SinkLabel,
    shutdown: CancellationToken,
    /// The producer's buffer of encoded records. A std mutex, held while
    /// one batch is built on a blocking thread, never across an await.
    scratch: std::sync::Mutex<Vec<u8>>,
}

impl<E: Endpoint> Ctx<E> {
    fn fail(&self, reason: &str) {
        self.metrics
            .failures
            .get_or_create(&ReasonLabel {
                sink: self.label.sink.clone(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Sleeps `d` unless shutdown comes first; returns false on shutdown.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

impl<E: Endpoint> Sink<E> {
    /// Delivers until `shutdown` is cancelled. On shutdown, stops reading,
    /// lets in-flight batches finish their current attempt, acknowledges the
    /// delivered prefix and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DeliveryError> {
        let state = self.outbox.register_sink(&self.config.sink).await?;
        let ctx = Arc::new(Ctx {
            label: self.metrics.sink(&self.config.sink),
            outbox: self.outbox,
            endpoint: self.endpoint,
            redactor: self.redactor,
            filter: self.filter,
            config: self.config,
            metrics: self.metrics,
            shutdown: shutdown.clone(),
            scratch: std::sync::Mutex::new(Vec::new()),
        });
        // One batch ready ahead of the in-flight ones is enough to keep the
        // pipe full; more would only hold memory.
        let (tx, mut rx) = mpsc::channel::<Batch>(1);
        let producer = tokio::spawn(produce(
            ctx.clone(),
            state.acked,
            state.dropped_reported,
            tx,
        ));

        let mut slots: BTreeMap<u64, Slot> = BTreeMap::new();
        let mut tasks: JoinSet<(u64, bool)> = JoinSet::new();
        // Which batch (first seq) each running task delivers.
        let mut running: HashMap<tokio::task::Id, u64> = HashMap::new();
        let mut producing = true;
        // Delivered batches whose acknowledgement the outbox refused.
        let mut ack_failed = false;
        loop {
            let room = tasks.len() < ctx.config.in_flight.get();
            tokio::select! {
                _ = tokio::time::sleep(ACK_RETRY), if ack_failed => {
                    ack_failed = !ack_prefix(&ctx, &mut slots).await;
                }
                Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    match joined {
                        Ok((id, (first_seq, delivered))) => {
                            running.remove(&id);
                            if delivered {
                                if let Some(s) = slots.get_mut(&first_seq) {
                                    s.done = true;
                                }
                                ack_failed = !ack_prefix(&ctx, &mut slots).await;
                            }
                        }
                        Err(e) => {
                            let Some(first_seq) = running.remove(&e.id()) else {
                                continue;
                            };
                            if e.is_cancelled() || shutdown.is_cancelled() {
                                continue;
                            }
                            // The task died (a panic): its range is still in
                            // the outbox, unacknowledged. Deliver it again.
                            let Some(slot) = slots.get_mut(&first_seq) else {
                                continue;
                            };
                            slot.restarts = slot.restarts.saturating_add(1);
                            ctx.fail("task_failed");
                            tracing::error!(sink = %ctx.label.sink, first_seq,
                                last_seq = slot.last_seq, restarts = slot.restarts, error = %e,
                                "delivery task failed; delivering its records again");
                            let batch = Batch {
                                first_seq,
                                last_seq: slot.last_seq,
                                built: None,
                                dropped: slot.dropped,
                                dropped_upto: slot.dropped_upto,
                            };
                            let h = tasks.spawn(deliver_batch(ctx.clone(), batch, slot.restarts));
                            running.insert(h.id(), first_seq);
                        }
                    }
                    ctx.metrics.in_flight.get_or_create(&ctx.label).set(tasks.len() as i64);
                }
                batch = rx.recv(), if room && producing => {
                    match batch {
                        Some(b) => {
                            slots.insert(b.first_seq, Slot {
                                last_seq: b.last_seq,
                                done: false,
                                dropped: b.dropped,
                                dropped_upto: b.dropped_upto,
                                oldest_ts: b.built.as_ref().and_then(|x| x.oldest_ts),
                                restarts: 0,
                            });
                            if b.built.is_none() {
                                // Everything in it was filtered: nothing to send.
                                if let Some(s) = slots.get_mut(&b.first_seq) {
                                    s.done = true;
                                }
                                ack_failed = !ack_prefix(&ctx, &mut slots).await;
                                continue;
                            }
                            let first_seq = b.first_seq;
                            let h = tasks.spawn(deliver_batch(ctx.clone(), b, 0));
                            running.insert(h.id(), first_seq);
                            ctx.metrics.in_flight.get_or_create(&ctx.label).set(tasks.len() as i64);
                        }
                        None => producing = false,
                    }
                }
                else => break,
            }
            if !producing && tasks.is_empty() {
                if ack_failed && !ack_prefix(&ctx, &mut slots).await {
                    tracing::warn!(
                        sink = %ctx.label.sink,
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
}

/// Acknowledges the delivered prefix of `slots` and removes it. Returns
/// false (and keeps the prefix, to be tried again) when the outbox refuses
/// the acknowledgement, e.g. because its disk is full: that is no reason to
/// stop delivering, and the cursor stays where it is durably, so nothing is
/// lost either way.
async fn ack_prefix<E: Endpoint>(ctx: &Ctx<E>, slots: &mut BTreeMap<u64, Slot>) -> bool {
    let upto = slots
        .values()
        .take_while(|s| s.done)
        .last()
        .map(|s| (s.last_seq, s.dropped_upto));
    let mut acked = true;
    if let Some((seq, dropped)) = upto {
        match ctx.outbox.ack(&ctx.config.sink, seq, dropped).await {
            Ok(()) => slots.retain(|_, s| s.last_seq > seq),
            Err(e) => {
                tracing::warn!(sink = %ctx.config.sink, upto = seq, error = %e,
                    "cannot acknowledge delivered records; retrying");
                acked = false;
            }
        }
    }
    let lag = match slots.values().find_map(|s| s.oldest_ts) {
        Some(ts) => ((schemas::time::now_nanos() - ts) as f64 / 1e9).max(0.0),
        None => 0.0,
    };
    ctx.metrics.lag_seconds.get_or_create(&ctx.label).set(lag);
    acked
}

/// Reads, filters, redacts and encodes batches in seq order.
async fn produce<E: Endpoint>(
    ctx: Arc<Ctx<E>>,
    mut read_pos: u64,
    mut dropped_sent: u64,
    tx: mpsc::Sender<Batch>,
) -> Result<(), DeliveryError> {
    let mut appended = ctx.outbox.watch();
    let max_records = ctx.config.max_batch_records.get();
    let shutdown = ctx.shutdown.clone();
    // Consecutive failed builds, for the backoff.
    let mut failures = 0u32;
    let mut unhealthy_logged: Option<Instant> = None;
    loop {
        // Wait for records, then linger for a full batch.
        let mut since: Option<Instant> = None;
        loop {
            let available = ctx.outbox.last_seq().saturating_sub(read_pos);
            if available >= max_records as u64 {
                break;
            }
            if available > 0 {
                let started = *since.get_or_insert_with(Instant::now);
                if started.elapsed() >= ctx.config.linger {
                    break;
                }
                let left = ctx.config.linger.saturating_sub(started.elapsed());
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
        // Fail closed: while the redaction cannot be trusted to know every
        // secret, nothing leaves.
        if let Err(e) = ctx.redactor.check() {
            if unhealthy_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                tracing::error!(sink = %ctx.label.sink, error = %e,
                    "redaction is not ready; shipping paused until it is");
                unhealthy_logged = Some(Instant::now());
            }
            ctx.fail("redaction_unavailable");
            if !ctx.pause(Duration::from_secs(1)).await {
                return Ok(());
            }
            continue;
        }
        let c = ctx.clone();
        let built =
            tokio::task::spawn_blocking(move || build_batch(&c, read_pos, dropped_sent)).await;
        let batch = match built {
            Ok(Ok(Some((batch, filtered)))) => {
                failures = 0;
                if filtered > 0 {
                    ctx.metrics
                        .filtered
                        .get_or_create(&ctx.label)
                        .inc_by(filtered);
                }
                batch
            }
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                tracing::error!(sink = %ctx.label.sink, after = read_pos, error = %e,
                    "cannot read the next batch from the outbox; retrying");
                ctx.fail("build_failed");
                if !ctx.pause(ctx.config.backoff.delay(failures)).await {
                    return Ok(());
                }
                failures = failures.saturating_add(1);
                continue;
            }
            Err(e) => {
                tracing::error!(sink = %ctx.label.sink, after = read_pos, error = %e,
                    "building the next batch failed; retrying");
                ctx.fail("build_failed");
                if !ctx.pause(ctx.config.backoff.delay(failures)).await {
                    return Ok(());
                }
                failures = failures.saturating_add(1);
                continue;
            }
        };
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

/// The most of the encoding buffer a sink keeps between batches.
const SCRATCH_KEEP: usize = 2 << 20;

/// What one scan of the outbox made of its records.
struct Collected {
    /// The highest seq the scan covered.
    last_seq: u64,
    built: Option<Built>,
    filtered: u64,
}

/// Scans the records after `after` (up to `to`, if given), one at a time:
/// decodes, filters, redacts and encodes each straight into the request's
/// record bytes, so a batch never exists as decoded records (only as the
/// stored values being read and the encoded bytes). Cuts before the first
/// record that cannot travel with the first one. `dropped` is the drop count
/// the body reports, or `None` to take the outbox's unreported drops since
/// `dropped_sent` (a new batch). Blocking: runs on a blocking thread.
fn collect<E: Endpoint>(
    ctx: &Ctx<E>,
    after: u64,
    to: Option<u64>,
    max_records: usize,
    dropped: u64,
) -> Result<Collected, OutboxError> {
    let mut first: Option<Record> = None;
    let mut seqs = Vec::new();
    // The encoded records, in the sink's reusable buffer when it is free
    // (a batch's bytes every time, allocated once rather than grown and
    // freed per batch).
    let mut scratch = ctx.scratch.try_lock().ok();
    let mut own = Vec::new();
    let buf: &mut Vec<u8> = match scratch.as_deref_mut() {
        Some(b) => b,
        None => &mut own,
    };
    ctx.endpoint.begin_body(buf);
    // Room for a batch of `max_batch_bytes` at once (up to what the buffer
    // keeps), rather than growing to twice that by doubling.
    let room = ctx.config.max_batch_bytes.get().min(SCRATCH_KEEP) + (16 << 10);
    buf.reserve_exact(room.saturating_sub(buf.len()));
    let mut filtered = 0u64;
    let mut oldest_ts: Option<i64> = None;
    let scanned = ctx.outbox.scan(
        after,
        max_records,
        ctx.config.max_batch_bytes.get(),
        |seq, payload| {
            if to.is_some_and(|to| seq > to) {
                return Ok(Visit::Stop);
            }
            let mut r: Record =
                schemas::from_msgpack(payload).map_err(|e| format!("undecodable record: {e}"))?;
            r.seq = seq;
            match &first {
                Some(f) if !ctx.endpoint.compatible(f, &r) => return Ok(Visit::Stop),
                Some(_) => {}
                None => first = Some(r.clone()),
            }
            if ctx.filter.as_ref().is_some_and(|f| !f(&r)) {
                filtered += 1;
                return Ok(Visit::Take);
            }
            ctx.redactor.redact(&mut r);
            ctx.endpoint
                .encode_record(&r, buf)
                .map_err(|e| format!("cannot encode the record: {e}"))?;
            seqs.push(seq);
            oldest_ts = Some(oldest_ts.map_or(r.ts, |t| t.min(r.ts)));
            Ok(Visit::Take)
        },
    )?;
    let built = match (&first, seqs.is_empty()) {
        (Some(f), false) => Some(Built {
            body: ctx
                .endpoint
                .finish_body(
                    ctx.outbox.epoch(),
                    &f.source,
                    &f.subscription,
                    seqs.len(),
                    buf,
                    dropped,
                )
                .map(Bytes::from),
            seqs,
            oldest_ts,
        }),
        _ => None,
    };
    if buf.capacity() > SCRATCH_KEEP {
        buf.clear();
        buf.shrink_to(SCRATCH_KEEP);
    }
    Ok(Collected {
        last_seq: scanned.last_seq,
        built,
        filtered,
    })
}

/// Builds the next batch after `after`. Blocking: runs on a blocking thread.
fn build_batch<E: Endpoint>(
    ctx: &Ctx<E>,
    after: u64,
    dropped_sent: u64,
) -> Result<Option<(Batch, u64)>, DeliveryError> {
    let total_dropped = ctx.outbox.stats().dropped_total();
    let dropped = total_dropped.saturating_sub(dropped_sent);
    let c = collect(
        ctx,
        after,
        None,
        ctx.config.max_batch_records.get(),
        dropped,
    )?;
    if c.last_seq == after {
        return Ok(None);
    }
    Ok(Some((
        Batch {
            first_seq: after + 1,
            last_seq: c.last_seq,
            built: c.built,
            dropped,
            dropped_upto: total_dropped,
        },
        c.filtered,
    )))
}

/// Builds the request for the records still stored in `from..=to` (a
/// batch's range, or part of it). Blocking.
fn build_range<E: Endpoint>(
    ctx: &Ctx<E>,
    from: u64,
    to: u64,
    dropped: u64,
) -> Result<Option<Built>, OutboxError> {
    let span = usize::try_from(to.saturating_sub(from) + 1).unwrap_or(usize::MAX);
    Ok(collect(ctx, from - 1, Some(to), span, dropped)?.built)
}

/// Part of a batch still to deliver.
struct Part {
    from: u64,
    to: u64,
    dropped: u64,
    built: Option<Built>,
}

/// Reads and builds `part` again, retrying until it works. `None` on
/// shutdown; `Some(None)` when none of its records is left to send.
async fn rebuild<E: Endpoint>(ctx: &Arc<Ctx<E>>, part: &Part) -> Option<Option<Built>> {
    let mut failures = 0u32;
    loop {
        let (c, from, to, dropped) = (ctx.clone(), part.from, part.to, part.dropped);
        match tokio::task::spawn_blocking(move || build_range(&c, from, to, dropped)).await {
            Ok(Ok(built)) => return Some(built),
            Ok(Err(e)) => {
                tracing::error!(sink = %ctx.label.sink, from, to, error = %e,
                    "cannot read a batch back from the outbox; retrying");
            }
            Err(e) => {
                tracing::error!(sink = %ctx.label.sink, from, to, error = %e,
                    "building a batch failed; retrying");
            }
        }
        ctx.fail("build_failed");
        if !ctx.pause(ctx.config.backoff.delay(failures)).await {
            return None;
        }
        failures = failures.saturating_add(1);
    }
}

/// Delivers one batch completely (retrying, splitting, dead-lettering).
/// Returns (first_seq, delivered); `delivered` is false only on shutdown.
/// `restarts` > 0 when an earlier task for this batch failed: it waits for
/// a backoff first and reads the batch back from the outbox.
async fn deliver_batch<E: Endpoint>(ctx: Arc<Ctx<E>>, batch: Batch, restarts: u32) -> (u64, bool) {
    let first_seq = batch.first_seq;
    if restarts > 0 && !ctx.pause(ctx.config.backoff.delay(restarts - 1)).await {
        return (first_seq, false);
    }
    // Parts still to deliver, in order (a stack: the next is last).
    let mut parts = vec![Part {
        from: batch.first_seq,
        to: batch.last_seq,
        dropped: batch.dropped,
        built: batch.built,
    }];
    while let Some(mut part) = parts.pop() {
        let built = match part.built.take() {
            Some(b) => b,
            None => match rebuild(&ctx, &part).await {
                None => return (first_seq, false),
                Some(None) => continue,
                Some(Some(b)) => b,
            },
        };
        let body = match built.body {
            Ok(body) => body,
            Err(e) => {
                // Records that cannot be encoded together: alone, each
                // either encodes or is dead-lettered.
                tracing::error!(sink = %ctx.label.sink, error = %e, "encode batch");
                if !refuse(
                    &ctx,
                    &mut parts,
                    &part,
                    &built.seqs,
                    &format!("cannot encode: {e}"),
                )
                .await
                {
                    return (first_seq, false);
                }
                continue;
            }
        };
        let mut attempt = 0u32;
        loop {
            let started = Instant::now();
            let outcome = tokio::select! {
                _ = ctx.shutdown.cancelled() => return (first_seq, false),
                o = ctx.endpoint.send(body.clone()) => o,
            };
            ctx.metrics
                .request_duration
                .get_or_create(&ctx.label)
                .observe(started.elapsed().as_secs_f64());
            match outcome {
                SendOutcome::Delivered => {
                    let m = &ctx.metrics;
                    m.records_sent
                        .get_or_create(&ctx.label)
                        .inc_by(built.seqs.len() as u64);
                    m.batches_sent.get_or_create(&ctx.label).inc();
                    m.bytes_sent
                        .get_or_create(&ctx.label)
                        .inc_by(body.len() as u64);
                    break;
                }
                SendOutcome::Retry {
                    reason,
                    after,
                    message,
                } => {
                    ctx.fail(reason);
                    ctx.metrics.retries.get_or_create(&ctx.label).inc();
                    // A receiver's Retry-After wins, within reason.
                    let wait = match after {
                        Some(a) => {
                            let max = ctx.config.max_retry_after;
                            a.min(max).max(ctx.config.backoff.base.min(max))
                        }
                        None => ctx.config.backoff.delay(attempt),
                    };
                    attempt = attempt.saturating_add(1);
                    let message = message.unwrap_or_default();
                    if reason == "source_conflict" {
                        // Not something a retry alone fixes: an operator must
                        // look. Said once per backoff round, never skipped.
                        tracing::error!(sink = %ctx.label.sink, attempt, ?wait,
                            from = part.from, to = part.to, epoch = ctx.outbox.epoch(),
                            collector_message = %message,
                            "the collector refuses this source's records (source_conflict: another outbox epoch writes this source, or a seq was re-sent with different content); retrying");
                    } else if attempt == 1 || attempt.is_multiple_of(10) {
                        tracing::warn!(sink = %ctx.label.sink, reason, attempt, ?wait,
                            from = part.from, to = part.to, receiver_message = %message,
                            "delivery failed; retrying");
                    }
                    if !ctx.pause(wait).await {
                        return (first_seq, false);
                    }
                }
                SendOutcome::Reject { status, message } => {
                    ctx.fail(&format!("rejected_{status}"));
                    let reason = format!("receiver answered {status}: {message}");
                    if !refuse(&ctx, &mut parts, &part, &built.seqs, &reason).await {
                        return (first_seq, false);
                    }
                    break;
                }
            }
        }
    }
    (first_seq, true)
}

/// A part the receiver refused (or that cannot be encoded): split it in two
/// halves by record count, or dead-letter its single record. Returns false
/// on shutdown.
async fn refuse<E: Endpoint>(
    ctx: &Ctx<E>,
    parts: &mut Vec<Part>,
    part: &Part,
    seqs: &[u64],
    reason: &str,
) -> bool {
    if seqs.len() <= 1 {
        for &seq in seqs {
            if !dead_letter(ctx, seq, reason).await {
                return false;
            }
        }
        return true;
    }
    let mid = seqs[seqs.len() / 2];
    // Stack: push the later half first so the earlier goes next; the
    // earlier carries the drop count.
    parts.push(Part {
        from: mid,
        to: part.to,
        dropped: 0,
        built: None,
    });
    parts.push(Part {
        from: part.from,
        to: mid - 1,
        dropped: part.dropped,
        built: None,
    });
    true
}

/// Moves record `seq` to the outbox quarantine, retrying until the outbox
/// takes it: the batch must not count as done while the record is neither
/// delivered nor dead-lettered. Returns false on shutdown.
async fn dead_letter<E: Endpoint>(ctx: &Ctx<E>, seq: u64, reason: &str) -> bool {
    let mut failures = 0u32;
    loop {
        match ctx.outbox.quarantine(seq, reason).await {
            Ok(moved) => {
                if moved {
                    tracing::error!(sink = %ctx.label.sink, seq, %reason,
                        "record refused; moved to the outbox quarantine (dead letter)");
                    ctx.metrics.dead_letters.get_or_create(&ctx.label).inc();
                }
                return true;
            }
            Err(e) => {
                tracing::error!(sink = %ctx.label.sink, seq, error = %e,
                    "cannot quarantine a rejected record; retrying");
                if !ctx.pause(ctx.config.backoff.delay(failures)).await {
                    return false;
                }
                failures = failures.saturating_add(1);
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! Admission of write requests (log ingest, remote-write, OTLP metrics):
//! the one path every pushed body takes before it is decoded.
//!
//! 1. Authentication and role, then the declared `Content-Length` and
//!    `Content-Type` are checked without reading anything.
//! 2. The body is read **before** any shared slot is taken, under a
//!    deadline and a minimum rate: it must arrive within `body_grace +
//!    received / body_min_rate` (and never after `body_timeout`), or the
//!    request gets 408. A stalled upload therefore only holds its own
//!    connection and the bytes it sent, never a slot another tenant needs.
//! 3. Those bytes are reserved in a byte budget for bodies in flight, in all
//!    (`max_inflight_body_bytes`) and per subscription
//!    (`max_inflight_body_bytes_per_subscription`): a body that does not fit
//!    gets 429 at once. Memory held by bodies is bounded by the global
//!    budget whatever the clients do.
//! 4. Then a decode slot: at most `max_concurrent_ingests` requests decode
//!    or wait for their commit at once, and one subscription holds at most
//!    `max_ingests_per_subscription` of them, so a busy tenant leaves the
//!    rest to the others. A request waits up to `admission_wait` for a slot
//!    (the body is already paid for), then gets 429 with `Retry-After`.
//!
//! 5. Decoding then runs on the blocking pool, at the collector's priority,
//!    for a subscription's first write request in flight; its further
//!    concurrent ones (ingest, remote-write, OTLP), and any body of at
//!    least `bulk_body_bytes` (for a compressed log batch: once
//!    decompressed, [`decode_sized`]; a 20,000-record batch is tens of
//!    milliseconds of decoding), while another subscription was served in
//!    the last second, decode on the *bulk lane* ([`decode`]):
//!    `bulk_threads` threads
//!    `bulk_nice` steps below the collector, one per subscription at a
//!    time (a request waits up to `admission_wait` for it, then 429). A
//!    tenant pushing many batches at once (a flood, or a shipper catching
//!    up) still gets every core nobody else wants, but a neighbour's
//!    steady ingest and queries are served first.
//!
//! Admin tokens (which write any subscription) share the budget key `*`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::{ApiError, AppState, RETRY_AFTER_SECS};
use crate::auth::{Principal, Role};
use crate::fair::{Slot, Slots};
use crate::logs::query::pool::{ForegroundGuard, PoolError, Priorities, QueryPool};
use crate::telemetry::Metrics;

/// Bounds of admission; see the module documentation.
#[derive(Debug, Clone)]
pub struct AdmissionLimits {
    /// Requests decoding or waiting for their commit at once, all
    /// subscriptions together.
    pub max_concurrent_ingests: usize,
    /// Of those, at most this many for one subscription.
    pub max_ingests_per_subscription: usize,
    /// How long a request whose body was read may wait for a slot.
    pub admission_wait: Duration,
    /// Request body bytes held in memory at once, all subscriptions.
    pub max_inflight_body_bytes: usize,
    /// Request body bytes held in memory at once for one subscription.
    pub max_inflight_body_bytes_per_subscription: usize,
    /// A body must be complete this long after its headers, whatever its
    /// rate.
    pub body_timeout: Duration,
    /// Time a body may take before the minimum rate applies.
    pub body_grace: Duration,
    /// Slowest accepted upload rate (bytes per second, averaged since the
    /// headers, after `body_grace`).
    pub body_min_rate: u64,
    /// Nice steps below the collector of the bulk lane's threads (0: no
    /// bulk lane, every body decodes at the collector's priority).
    pub bulk_nice: i32,
    /// Threads of the bulk lane.
    pub bulk_threads: usize,
    /// A body this large (a compressed log batch: once decompressed)
    /// decodes on the bulk lane while another subscription is active,
    /// even when it is its subscription's only one in flight.
    pub bulk_body_bytes: usize,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            max_concurrent_ingests: 16,
            max_ingests_per_subscription: 8,
            admission_wait: Duration::from_secs(2),
            max_inflight_body_bytes: 256 << 20,
            max_inflight_body_bytes_per_subscription: 64 << 20,
            body_timeout: Duration::from_secs(120),
            body_grace: Duration::from_secs(10),
            body_min_rate: 32 << 10,
            bulk_nice: 10,
            bulk_threads: 2,
            bulk_body_bytes: 256 << 10,
        }
    }
}

#[derive(Debug, Default)]
struct BudgetState {
    total: usize,
    per_key: HashMap<String, usize>,
}

/// The byte budget of bodies in flight.
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    per_key_limit: usize,
    state: Mutex<BudgetState>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

/// Which budget a reservation did not fit in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    Subscription { limit: usize },
    Total { limit: usize },
}

impl ByteBudget {
    /// A budget of `limit` bytes in all and `per_key_limit` per key, whose
    /// use is shown in `gauge`.
    pub fn new(
        limit: usize,
        per_key_limit: usize,
        gauge: prometheus_client::metrics::gauge::Gauge,
    ) -> Arc<ByteBudget> {
        Arc::new(ByteBudget {
            limit,
            per_key_limit,
            state: Mutex::default(),
            gauge,
        })
    }

    /// An empty reservation of `key`, grown with [`Reservation::grow`].
    pub fn reserve(self: &Arc<Self>, key: &str) -> Reservation {
        Reservation {
            budget: self.clone(),
            key: key.to_string(),
            bytes: 0,
        }
    }

    /// Bytes reserved now, all keys.
    pub fn in_use(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    fn take(&self, key: &str, n: usize) -> Result<(), Exhausted> {
        // Short critical section, never held across an await.
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mine = s.per_key.get(key).copied().unwrap_or(0);
        if mine + n > self.per_key_limit {
            return Err(Exhausted::Subscription {
                limit: self.per_key_limit,
            });
        }
        if s.total + n > self.limit {
            return Err(Exhausted::Total { limit: self.limit });
        }
        s.total += n;
        *s.per_key.entry(key.to_string()).or_default() += n;
        self.gauge.set(s.total as i64);
        Ok(())
    }

    fn give(&self, key: &str, n: usize) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.total = s.total.saturating_sub(n);
        if let Some(v) = s.per_key.get_mut(key) {
            *v = v.saturating_sub(n);
            if *v == 0 {
                s.per_key.remove(key);
            }
        }
        self.gauge.set(s.total as i64);
    }
}

/// Bytes of one request in a [`ByteBudget`]; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<ByteBudget>,
    key: String,
    bytes: usize,
}

impl Reservation {
    pub fn grow(&mut self, n: usize) -> Result<(), Exhausted> {
        self.budget.take(&self.key, n)?;
        self.bytes += n;
        Ok(())
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give(&self.key, self.bytes);
        }
    }
}

/// Budget, slots and deadlines shared by the write endpoints.
#[derive(Debug)]
pub struct Admission {
    pub limits: AdmissionLimits,
    pub budget: Arc<ByteBudget>,
    pub slots: Slots,
    /// The bulk lane (see the module documentation).
    pub bulk: Option<Arc<QueryPool>>,
}

impl Admission {
    pub fn new(limits: AdmissionLimits, metrics: &Metrics) -> Admission {
        Admission {
            slots: Slots::new(
                limits.max_concurrent_ingests,
                limits.max_ingests_per_subscription,
            ),
            budget: ByteBudget::new(
                limits.max_inflight_body_bytes,
                limits.max_inflight_body_bytes_per_subscription,
                metrics.bodies_in_flight_bytes.clone(),
            ),
            bulk: (limits.bulk_nice > 0).then(|| {
                QueryPool::new(
                    limits.bulk_threads,
                    1,
                    Priorities {
                        nice: limits.bulk_nice,
                        demoted_nice: limits.bulk_nice,
                        quantum: Duration::ZERO,
                        max_pause: Duration::ZERO,
                    },
                    None,
                )
            }),
            limits,
        }
    }
}

/// What a write endpoint accepts.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// For messages: "ingest", "remote-write", "OTLP metrics".
    pub what: &'static str,
    /// Whether a `Content-Type` is acceptable.
    pub content_type: fn(&str) -> bool,
    /// What to send instead, for the 415 message.
    pub want: &'static str,
}

/// An admitted request: its principal, its body (still reserved in the
/// budget) and its decode slot.
#[derive(Debug)]
pub struct Admitted {
    pub principal: Principal,
    pub body: Bytes,
    pub slot: Slot,
    pub reservation: Reservation,
    /// Decode slots its subscription held once it got its own (itself
    /// included): more than 1 sends the decoding to the bulk lane.
    pub concurrent: usize,
    /// Counts the request as being served (demoted searches give way).
    pub foreground: ForegroundGuard,
}

/// Runs admission for one write request; `reject` counts a refusal under
/// its reason (the endpoint's own counter), per-subscription refusals are
/// counted here.
pub async fn admit(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
    spec: Spec,
    reject: impl Fn(&'static str),
) -> Result<Admitted, ApiError> {
    let principal = s
        .authenticate(headers)
        .inspect_err(|_| reject("unauthorized"))?;
    if !matches!(principal.role, Role::Shipper | Role::Admin) {
        reject("forbidden");
        return Err(ApiError::forbidden(format!(
            "role {:?} may not use {} (shipper or admin tokens only)",
            principal.role, spec.what
        ))
        .with_field("Authorization"));
    }
    let key = principal.subscription().unwrap_or("*").to_string();
    let limit = s.limits.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared {
        if len > limit as u64 {
            reject("body_too_large");
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "body of {len} bytes is over the limit of {limit} bytes (--max-body-bytes)"
                ),
            )
            .with_field("body"));
        }
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?").to_ascii_lowercase())
        .unwrap_or_default();
    if !(spec.content_type)(&ct) {
        reject("unsupported_media_type");
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type {ct:?} is not supported; send {}", spec.want),
        )
        .with_field("Content-Type"));
    }
    let metrics = &s.metrics;
    let adm = &s.admission;
    let (bytes, reservation) =
        read_body(adm, &key, body, limit, declared, &reject, metrics).await?;
    let Some(slot) = adm.slots.acquire(&key, adm.limits.admission_wait).await else {
        reject("busy");
        metrics.refuse_tenant(&key, "busy");
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} is saturated (no decode slot within {:?}); retry later",
                spec.what, adm.limits.admission_wait
            ),
        )
        .with("reason", "busy".into())
        .retry_after(RETRY_AFTER_SECS));
    };
    let concurrent = adm.slots.held(&key);
    Ok(Admitted {
        principal,
        body: bytes,
        slot,
        reservation,
        concurrent,
        foreground: s.foreground.enter(&key),
    })
}

/// Runs `job`, the decoding of an admitted body, on the blocking pool, or
/// on the bulk lane when its subscription has other write requests in
/// flight or the body is large, and another subscription was served in
/// the last second (see the module documentation); `reject` counts a
/// refusal.
pub async fn decode<T, F>(
    s: &AppState,
    admitted: &Admitted,
    reject: impl Fn(&'static str),
    job: F,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    decode_sized(s, admitted, admitted.body.len(), reject, job).await
}

/// [`decode`] of a body that is `size` bytes once decompressed (a
/// compressed body that expands past `bulk_body_bytes` is as much work as
/// a large one: its decompression ran first, at the collector's priority).
pub async fn decode_sized<T, F>(
    s: &AppState,
    admitted: &Admitted,
    size: usize,
    reject: impl Fn(&'static str),
    job: F,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let key = admitted.principal.subscription().unwrap_or("*");
    // A tenant alone keeps every core: the lane only orders its
    // concurrent pushes behind a neighbour that was served in the last
    // second (serializing a lone tenant's pushes halved its rate and left
    // a core idle).
    let large = size >= s.admission.limits.bulk_body_bytes;
    let demote = (admitted.concurrent > 1 || large) && s.foreground.others_active(key);
    match (&s.admission.bulk, demote) {
        (Some(bulk), true) => {
            s.metrics.ingest_bulk_decodes.inc();
            let wait = s.admission.limits.admission_wait;
            bulk.run(key, wait, move |_| job()).await.map_err(|e| match e {
                PoolError::Busy(wait) => {
                    reject("busy");
                    s.metrics.refuse_tenant(key, "busy");
                    ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "this subscription's concurrent write requests wait for the bulk lane (no turn within {wait:?}); retry later"
                        ),
                    )
                    .with("reason", "busy".into())
                    .retry_after(RETRY_AFTER_SECS)
                }
                PoolError::Stopped => ApiError::unavailable("shutting down"),
            })
        }
        _ => tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| ApiError::internal(format!("decoder task failed: {e}"))),
    }
}

/// Reads `body` into memory under the deadline, the minimum rate, `limit`
/// and the byte budget of `key`.
async fn read_body(
    adm: &Admission,
    key: &str,
    mut body: Body,
    limit: usize,
    declared: Option<u64>,
    reject: &impl Fn(&'static str),
    metrics: &Metrics,
) -> Result<(Bytes, Reservation), ApiError> {
    let l = &adm.limits;
    let started = Instant::now();
    let hard = started + l.body_timeout;
    let mut reservation = adm.budget.reserve(key);
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut received = 0usize;
    let slow = |received: usize| {
        reject("body_timeout");
        metrics.refuse_tenant(key, "body_timeout");
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "body too slow: {received} bytes in {:.1} s (it must arrive within {:?} at {} bytes/s or more after {:?}; --body-timeout, --body-min-rate)",
                started.elapsed().as_secs_f64(),
                l.body_timeout,
                l.body_min_rate,
                l.body_grace
            ),
        )
        .with_field("body")
    };
    loop {
        let rate_deadline = started
            + l.body_grace
            + Duration::from_secs_f64(received as f64 / l.body_min_rate.max(1) as f64);
        let deadline = rate_deadline.min(hard);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(slow(received)),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                reject("body_read");
                return Err(ApiError::bad_request(
                    format!("cannot read body: {e}"),
                    "body",
                ));
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if received + data.len() > limit {
            reject("body_too_large");
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is over the limit of {limit} bytes (--max-body-bytes)"),
            )
            .with_field("body"));
        }
        if let Err(e) = reservation.grow(data.len()) {
            reject("body_budget");
            metrics.refuse_tenant(key, "body_budget");
            let which = match e {
                Exhausted::Subscription { limit } => format!(
                    "this subscription's request bodies in flight would pass {limit} bytes (--max-inflight-body-bytes-per-subscription)"
                ),
                Exhausted::Total { limit } => format!(
                    "request bodies in flight would pass {limit} bytes (--max-inflight-body-bytes)"
                ),
            };
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{which}; retry later"),
            )
            .with_field("body")
            .with("reason", "body_budget".into())
            .retry_after(RETRY_AFTER_SECS));
        }
        received += data.len();
        chunks.push(data);
        if Instant::now() > hard {
            return Err(slow(received));
        }
    }
    if let Some(d) = declared {
        if d != received as u64 {
            reject("body_read");
            return Err(ApiError::bad_request(
                format!("body ended after {received} of {d} declared bytes"),
                "body",
            ));
        }
    }
    let bytes = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut all = Vec::with_capacity(received);
            for c in &chunks {
                all.extend_from_slice(c);
            }
            Bytes::from(all)
        }
    };
    Ok((bytes, reservation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_bounds_each_key_and_the_total_and_frees_on_drop() {
        let b = ByteBudget::new(100, 60, Default::default());
        let mut a1 = b.reserve("a");
        a1.grow(50).expect("fits");
        assert_eq!(
            a1.grow(20),
            Err(Exhausted::Subscription { limit: 60 }),
            "a's own share"
        );
        let mut bb = b.reserve("b");
        bb.grow(50).expect("b has its own share");
        assert_eq!(bb.grow(10), Err(Exhausted::Total { limit: 100 }));
        assert_eq!(b.in_use(), 100);
        drop(a1);
        assert_eq!(b.in_use(), 50);
        bb.grow(10).expect("room again");
        drop(bb);
        assert_eq!(b.in_use(), 0);
    }
}

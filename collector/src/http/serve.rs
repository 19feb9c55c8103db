//! The HTTP server: an accept loop over hyper-util with connection hygiene.
//!
//! `axum::serve` has no timeouts and no connection limits: a client with
//! half-sent headers stayed forever, and a few hundred idle sockets used up
//! the process's file descriptors and stopped every tenant. Here:
//!
//! - **Connection limits.** At most `max_connections` connections in all
//!   and `max_connections_per_peer` from one IP address. A connection past
//!   either is answered at once (`429` for the peer limit, `503` for the
//!   global one, JSON body, `Retry-After`) and closed; another peer keeps
//!   being served. Refusals are counted in
//!   `collector_connections_refused_total{reason}`.
//! - **Header read timeout.** A request head (the first one right after
//!   accept, later ones from their first byte) must be complete within
//!   `header_read_timeout`, or the connection is closed.
//! - **Idle timeout.** A connection with no request in progress and no
//!   bytes moving for `idle_timeout` is closed (this also ends a client
//!   that stops reading its answer).
//! - **Request timeout.** A handler that has not produced its answer within
//!   `request_timeout` is answered 503 (handlers have tighter bounds of
//!   their own: body deadlines, the query timeout).
//! - **Bounded heads.** Request heads over `max_header_bytes` are refused
//!   by hyper (431); HTTP/2 streams per connection are capped.
//!
//! Timeouts are watched by one cheap task per connection that ticks and
//! compares atomics updated by the I/O wrapper ([`Activity`]) and the
//! service wrapper, so the rules hold for HTTP/1.1 and HTTP/2 alike.
//!
//! Graceful shutdown: on the shutdown signal the listener stops accepting,
//! every connection is asked to finish its requests and close
//! (`graceful_shutdown`), and whatever still runs after the deadline is
//! dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::ApiError;
use crate::telemetry::{Metrics, ReasonLabel};

/// Connection limits and timeouts; see the module documentation.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    /// Largest request head (HTTP/1 read buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams_per_connection: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 2048,
            max_connections_per_peer: 256,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(120),
            max_header_bytes: 64 << 10,
            max_streams_per_connection: 64,
        }
    }
}

/// Refused connections answered at once; beyond it they are just closed.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;
const NONE: u64 = u64::MAX;

/// What the watchdog of one connection looks at.
#[derive(Debug)]
struct ConnState {
    start: Instant,
    /// Milliseconds since `start` of the last byte read or written.
    last_activity: AtomicU64,
    /// Milliseconds since `start` at which an unfinished request head
    /// started; [`NONE`] while no head is being read.
    head_started: AtomicU64,
    /// Requests whose answer is not produced yet.
    active: AtomicUsize,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            start: Instant::now(),
            last_activity: AtomicU64::new(0),
            // The first request's head is awaited from the accept on.
            head_started: AtomicU64::new(0),
            active: AtomicUsize::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn read(&self) {
        self.read_at(self.now_ms());
    }

    /// Bytes were read at `now` (ms since the accept).
    fn read_at(&self, now: u64) {
        self.last_activity.store(now, Ordering::Relaxed);
        if self.active.load(Ordering::Acquire) == 0 {
            let _ =
                self.head_started
                    .compare_exchange(NONE, now, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
        self.last_activity.store(self.now_ms(), Ordering::Relaxed);
    }

    fn request_started(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NONE, Ordering::Release);
    }

    fn request_done(&self) {
        self.request_done_at(self.now_ms());
    }

    fn request_done_at(&self, now: u64) {
        self.last_activity.store(now, Ordering::Relaxed);
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// Why the connection must be closed now, if it must.
    fn expired(&self, limits: &ServerLimits) -> Option<&'static str> {
        self.expired_at(limits, self.now_ms())
    }

    /// Why the connection must be closed at `now` (ms since the accept).
    fn expired_at(&self, limits: &ServerLimits, now: u64) -> Option<&'static str> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head = self.head_started.load(Ordering::Acquire);
        if head != NONE && now.saturating_sub(head) > limits.header_read_timeout.as_millis() as u64
        {
            return Some("header_timeout");
        }
        let last = self.last_activity.load(Ordering::Relaxed);
        (now.saturating_sub(last) > limits.idle_timeout.as_millis() as u64)
            .then_some("idle_timeout")
    }
}

/// A socket that tells its [`ConnState`] when bytes move.
struct Activity {
    io: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Activity {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.read();
        }
        r
    }
}

impl AsyncWrite for Activity {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.state.wrote();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.state.wrote();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Open connections per peer address.
#[derive(Debug, Default)]
struct Peers {
    // Short critical sections, never held across an await.
    counts: Mutex<HashMap<IpAddr, usize>>,
}

#[derive(Debug)]
struct PeerGuard {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Peers {
    fn try_add(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<PeerGuard> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.entry(ip).or_default();
        if *n >= limit {
            if *n == 0 {
                c.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(PeerGuard {
            peers: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        let mut c = self.peers.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.ip);
            }
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then drains the
/// connections for at most `deadline`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    metrics: Metrics,
    shutdown: CancellationToken,
    deadline: Duration,
) {
    let limits = Arc::new(limits);
    let global = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let peers = Arc::new(Peers::default());
    let tracker = TaskTracker::new();
    let abandon = CancellationToken::new();
    let mut accept_errors_logged = Instant::now() - Duration::from_secs(60);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors (or memory): wait for connections
                // to close instead of spinning; log at most every 10 s.
                if accept_errors_logged.elapsed() > Duration::from_secs(10) {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    accept_errors_logged = Instant::now();
                }
                metrics
                    .connections_refused
                    .get_or_create(&ReasonLabel {
                        reason: "accept_error",
                    })
                    .inc();
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                continue;
            }
        };
        let Some(peer_guard) = peers.try_add(peer.ip(), limits.max_connections_per_peer) else {
            refuse(
                stream,
                &refusals,
                &metrics,
                "peer_limit",
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many connections from {} (limit {}, --max-connections-per-peer)",
                    peer.ip(),
                    limits.max_connections_per_peer
                ),
            );
            continue;
        };
        let Ok(permit) = global.clone().try_acquire_owned() else {
            drop(peer_guard);
            refuse(
                stream,
                &refusals,
                &metrics,
                "limit",
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the collector has its maximum of {} connections open (--max-connections)",
                    limits.max_connections
                ),
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        metrics.connections_accepted.inc();
        tracker.spawn(connection(
            stream,
            peer,
            router.clone(),
            limits.clone(),
            metrics.clone(),
            shutdown.clone(),
            abandon.clone(),
            (permit, peer_guard),
        ));
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(deadline, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?deadline,
            "requests still running at the shutdown deadline; abandoning them"
        );
        abandon.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
    }
}

/// Answers a refused connection with `status` and a JSON body, then closes
/// it; with too many refusals in flight it is closed at once.
fn refuse(
    mut stream: TcpStream,
    refusals: &Arc<Semaphore>,
    metrics: &Metrics,
    reason: &'static str,
    status: StatusCode,
    message: String,
) {
    metrics
        .connections_refused
        .get_or_create(&ReasonLabel { reason })
        .inc();
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let body = serde_json::json!({"error": message, "field": "connection", "reason": reason})
            .to_string();
        let head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body.as_bytes()).await?;
            stream.shutdown().await?;
            // Drain what the client sent so the close is a FIN, not a
            // reset that could destroy the answer in flight.
            let mut sink = [0u8; 4096];
            loop {
                match tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            Ok::<_, io::Error>(())
        })
        .await;
    });
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Arc<ServerLimits>,
    metrics: Metrics,
    shutdown: CancellationToken,
    abandon: CancellationToken,
    _held: (OwnedSemaphorePermit, PeerGuard),
) {
    metrics.connections_open.inc();
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(Activity {
        io: stream,
        state: state.clone(),
    });
    let svc_state = state.clone();
    let svc_metrics = metrics.clone();
    let timeout = limits.request_timeout;
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let router = router.clone();
        let state = svc_state.clone();
        let metrics = svc_metrics.clone();
        state.request_started();
        async move {
            let answer = tokio::time::timeout(timeout, router.oneshot(req.map(Body::new))).await;
            state.request_done();
            let resp = match answer {
                Ok(Ok(r)) => r,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    metrics.requests_timed_out.inc();
                    ApiError::unavailable(format!(
                        "the request took longer than {timeout:?} (--request-timeout)"
                    ))
                    .with_field("request")
                    .into_response()
                }
            };
            Ok::<Response<Body>, Infallible>(resp)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .max_concurrent_streams(limits.max_streams_per_connection)
        .max_header_list_size(limits.max_header_bytes as u32);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let tick = (limits.header_read_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = ticker.tick() => {
                if let Some(reason) = state.expired(&limits) {
                    tracing::debug!(%peer, reason, "closing connection");
                    metrics
                        .connections_closed
                        .get_or_create(&ReasonLabel { reason })
                        .inc();
                    break;
                }
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = abandon.cancelled() => break,
        }
    }
    metrics.connections_open.dec();
}

/// Raises the soft limit of open files to the hard limit (connections,
/// RocksDB's files); returns the soft limit in effect.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if let (Some(cur), max) = (l.current, l.maximum) {
        let target = max.unwrap_or(cur.max(1 << 20));
        if target > cur {
            l.current = Some(target);
            if setrlimit(Resource::Nofile, l).is_ok() {
                return Some(target);
            }
        }
        return Some(cur);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_rules_follow_the_clock_they_are_given() {
        let limits = ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..ServerLimits::default()
        };
        let s = |secs: u64| secs * 1000;
        // A fresh connection must send its first head in time.
        let c = ConnState::new();
        assert_eq!(c.expired_at(&limits, s(9)), None);
        c.read_at(s(5)); // half a head: the clock still runs from the accept
        assert_eq!(c.expired_at(&limits, s(11)), Some("header_timeout"));

        // A request in progress is never cut by the watchdog.
        let c = ConnState::new();
        c.read_at(s(1));
        c.request_started();
        assert_eq!(c.expired_at(&limits, s(600)), None);
        // After its answer the connection may idle up to idle_timeout...
        c.request_done_at(s(600));
        assert_eq!(c.expired_at(&limits, s(659)), None);
        assert_eq!(c.expired_at(&limits, s(661)), Some("idle_timeout"));

        // ...but a next head that started must finish in header_read_timeout.
        let c = ConnState::new();
        c.request_started();
        c.request_done_at(s(1));
        c.read_at(s(5));
        assert_eq!(c.expired_at(&limits, s(14)), None);
        assert_eq!(c.expired_at(&limits, s(16)), Some("header_timeout"));
        // Its request arrives: no head pending any more.
        c.request_started();
        c.request_done_at(s(17));
        assert_eq!(c.expired_at(&limits, s(70)), None);
    }

    #[test]
    fn peer_counts_are_bounded_and_released() {
        let peers = Arc::new(Peers::default());
        let ip: IpAddr = "127.0.0.2".parse().expect("ip");
        let a = peers.try_add(ip, 2).expect("1");
        let b = peers.try_add(ip, 2).expect("2");
        assert!(peers.try_add(ip, 2).is_none());
        let other: IpAddr = "127.0.0.3".parse().expect("ip");
        let _c = peers.try_add(other, 2).expect("another peer");
        drop(a);
        let _d = peers.try_add(ip, 2).expect("freed");
        drop(b);
        assert_eq!(peers.counts.lock().expect("lock").get(&ip), Some(&1));
    }
}

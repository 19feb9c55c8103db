//! ClickHouse over its HTTP interface: SQL in, `RowBinary` (or text) out,
//! on a small runtime of the store's own so that blocking callers (query
//! threads) and async ones (the writer, retention) share one client.
//!
//! No SQL is built by pasting user text: every string goes through
//! [`quote`], which escapes the quote and backslash and writes every
//! control byte as `\xHH`, and numbers are formatted from integers.
//! (ClickHouse 18.16, Debian's, has no query parameters; they came in
//! 19.x.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;

/// What ClickHouse (or the way to it) answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChError {
    #[error("ClickHouse at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("ClickHouse refused the credentials of user {user:?}: {message}")]
    Auth { user: String, message: String },
    #[error("ClickHouse error {code}: {message}")]
    Server { code: u32, message: String },
    #[error("ClickHouse answer: {0}")]
    Answer(String),
    #[error("ClickHouse client stopped")]
    Stopped,
}

impl ChError {
    /// A server error code, for the caller to tell e.g. "table missing".
    pub fn code(&self) -> Option<u32> {
        match self {
            ChError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Where and as whom.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `http://host:8123` (no path): one server, or several (replicas, or
    /// servers of a cluster) to fail over between, tried in order and
    /// sticky to the last that answered.
    pub urls: Vec<String>,
    pub user: String,
    pub password: Option<String>,
    /// Per request.
    pub timeout: Duration,
    /// Settings every request carries.
    pub settings: Vec<(String, String)>,
}

/// The client and the runtime it runs on.
pub struct Client {
    target: Target,
    rt: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
}

/// What a request needs, cheap to clone into a task.
#[derive(Clone)]
struct Target {
    ep: Arc<Endpoint>,
    http: reqwest::Client,
    /// The server requests go to first.
    current: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("urls", &self.target.ep.urls)
            .field("user", &self.target.ep.user)
            .finish_non_exhaustive()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics on an async worker.
        if let Some(rt) = self.rt.lock().ok().and_then(|mut r| r.take()) {
            rt.shutdown_background();
        }
    }
}

impl Client {
    pub fn new(ep: Endpoint) -> Result<Client, ChError> {
        if ep.urls.is_empty() {
            return Err(ChError::Answer("no ClickHouse URL".into()));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("clickhouse")
            .enable_all()
            .build()
            .map_err(|e| ChError::Answer(format!("start the ClickHouse client runtime: {e}")))?;
        // ClickHouse is where the operator put it: no proxy, no redirects.
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(3))
            .timeout(ep.timeout)
            .pool_max_idle_per_host(16)
            .build()
            .map_err(|e| ChError::Answer(format!("build the HTTP client: {e}")))?;
        let handle = rt.handle().clone();
        Ok(Client {
            target: Target {
                ep: Arc::new(ep),
                http,
                current: Arc::new(AtomicUsize::new(0)),
            },
            rt: Mutex::new(Some(rt)),
            handle,
        })
    }

    /// The servers, as configured.
    pub fn urls(&self) -> &[String] {
        &self.target.ep.urls
    }

    /// The first server (for messages).
    pub fn url(&self) -> &str {
        &self.target.ep.urls[0]
    }

    /// Runs `fut` on the client's runtime and waits for it; callable from
    /// any thread (an async worker is blocked meanwhile, so async callers
    /// use [`Client::spawn`]).
    pub fn block<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, ChError> {
        futures::executor::block_on(self.handle.spawn(fut)).map_err(|_| ChError::Stopped)
    }

    /// Runs `fut` on the client's runtime.
    pub async fn spawn<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, ChError> {
        self.handle.spawn(fut).await.map_err(|_| ChError::Stopped)
    }

    /// Runs `fut` on the client's runtime without waiting.
    pub fn spawn_detached(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        self.handle.spawn(fut);
    }

    /// `sql` (a statement or a query), answering the body; on the first
    /// server that can be reached. `settings` go in the URL (names and
    /// values are ours, not a client's). With `data`, the statement goes
    /// in the URL and the data is the body (`INSERT ... FORMAT RowBinary`).
    pub fn request(
        &self,
        sql: String,
        data: Option<Vec<u8>>,
        settings: &[(&str, &str)],
    ) -> BoxFuture<'static, Result<Vec<u8>, ChError>> {
        self.request_to(None, sql, data, settings)
    }

    /// [`Client::request`] on server `only` of [`Client::urls`] (no
    /// failover), or the first that answers.
    pub fn request_to(
        &self,
        only: Option<usize>,
        sql: String,
        data: Option<Vec<u8>>,
        settings: &[(&str, &str)],
    ) -> BoxFuture<'static, Result<Vec<u8>, ChError>> {
        let t = self.target.clone();
        let settings = owned(settings);
        Box::pin(async move {
            let (resp, url) = t
                .send(&sql, data.map(bytes::Bytes::from), &settings, only)
                .await?;
            read_answer(resp, &url, &t.ep.user).await
        })
    }

    /// [`Client::request`] on server `i` of [`Client::urls`] only (schema
    /// changes, which every server needs). Blocking.
    pub fn request_on(&self, i: usize, sql: String) -> Result<Vec<u8>, ChError> {
        self.block(self.request_to(Some(i), sql, None, &[]))?
    }

    /// Runs a query and hands its answer over as it arrives, a few chunks
    /// ahead of the reader: memory stays bounded however much it answers,
    /// and dropping the [`Chunks`] closes the connection (ClickHouse then
    /// stops the query).
    pub fn stream(&self, sql: String, settings: &[(&str, &str)]) -> Chunks {
        let t = self.target.clone();
        let settings = owned(settings);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        self.handle.spawn(async move {
            let (mut resp, url) = match t.send(&sql, None, &settings, None).await {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            if !resp.status().is_success() {
                let body = resp.bytes().await.unwrap_or_default();
                let _ = tx.send(Err(server_error(&body, &t.ep.user))).await;
                return;
            }
            loop {
                tokio::select! {
                    c = resp.chunk() => match c {
                        Ok(Some(b)) => {
                            if tx.send(Ok(b)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(e) => {
                            let _ = tx.send(Err(unreachable(&url, &e))).await;
                            return;
                        }
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Chunks { rx }
    }

    /// [`Client::request`], blocking.
    pub fn query(&self, sql: String) -> Result<Vec<u8>, ChError> {
        self.block(self.request(sql, None, &[]))?
    }
}

/// A query's answer as it arrives (see [`Client::stream`]).
#[derive(Debug)]
pub struct Chunks {
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, ChError>>,
}

impl Chunks {
    /// The next piece, blocking; `None` at the end.
    pub fn next_chunk(&mut self) -> Option<Result<bytes::Bytes, ChError>> {
        futures::executor::block_on(self.rx.recv())
    }
}

fn unreachable(base: &str, e: &reqwest::Error) -> ChError {
    ChError::Unreachable {
        url: base.to_string(),
        reason: error_chain(e),
    }
}

fn owned(settings: &[(&str, &str)]) -> Vec<(String, String)> {
    settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn read_answer(resp: reqwest::Response, url: &str, user: &str) -> Result<Vec<u8>, ChError> {
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| unreachable(url, &e))?;
    if status.is_success() {
        return Ok(body.to_vec());
    }
    Err(server_error(&body, user))
}

impl Target {
    /// Sends to the current server, failing over to the next ones (in
    /// order) when one cannot be reached; `only` pins one server.
    async fn send(
        &self,
        sql: &str,
        data: Option<bytes::Bytes>,
        settings: &[(String, String)],
        only: Option<usize>,
    ) -> Result<(reqwest::Response, String), ChError> {
        let urls = &self.ep.urls;
        let n = urls.len();
        let first = only.unwrap_or_else(|| self.current.load(Ordering::Relaxed) % n);
        let tries = if only.is_some() { 1 } else { n };
        let mut last = None;
        for k in 0..tries {
            let i = (first + k) % n;
            let req = self.build(&urls[i], sql, data.clone(), settings);
            match req.send().await {
                Ok(r) => {
                    if k > 0 && only.is_none() {
                        self.current.store(i, Ordering::Relaxed);
                        tracing::warn!(from = %urls[first], to = %urls[i], "ClickHouse unreachable: failed over");
                    }
                    return Ok((r, urls[i].clone()));
                }
                Err(e) => last = Some(unreachable(&urls[i], &e)),
            }
        }
        Err(last.unwrap_or(ChError::Stopped))
    }

    fn build(
        &self,
        base: &str,
        sql: &str,
        data: Option<bytes::Bytes>,
        settings: &[(String, String)],
    ) -> reqwest::RequestBuilder {
        let mut url = format!("{}/?", base.trim_end_matches('/'));
        for (k, v) in self.ep.settings.iter().chain(settings) {
            url.push_str(k);
            url.push('=');
            url.push_str(&percent_encode(v));
            url.push('&');
        }
        let body = match data {
            Some(d) => {
                url.push_str("query=");
                url.push_str(&percent_encode(sql));
                d
            }
            None => bytes::Bytes::from(sql.to_string()),
        };
        self.http
            .post(url)
            .body(body)
            .basic_auth(&self.ep.user, self.ep.password.as_deref())
    }
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

/// `Code: 60, e.displayText() = DB::Exception: Table ... doesn't exist, ...`
fn server_error(body: &[u8], user: &str) -> ChError {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let code = text
        .strip_prefix("Code: ")
        .and_then(|r| r.split(',').next())
        .and_then(|c| c.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let message = text
        .split_once("DB::Exception: ")
        .map_or(text, |(_, m)| m)
        .split(", e.what()")
        .next()
        .unwrap_or(text)
        .chars()
        .take(2000)
        .collect::<String>();
    // 192 unknown user, 193 wrong password, 516 authentication failed.
    if matches!(code, 192 | 193 | 516) {
        return ChError::Auth {
            user: user.to_string(),
            message,
        };
    }
    ChError::Server { code, message }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `s` as a ClickHouse string literal: quote and backslash escaped, every
/// control byte as `\xHH`. Any byte string is safe here.
pub fn quote(s: &str) -> String {
    quote_bytes(s.as_bytes())
}

/// [`quote`] for bytes.
pub fn quote_bytes(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        match b {
            b'\'' => out.push_str("\\'"),
            b'\\' => out.push_str("\\\\"),
            0x00..=0x1f | 0x7f => out.push_str(&format!("\\x{b:02X}")),
            0x20..=0x7e => out.push(b as char),
            _ => {
                // Whole UTF-8 sequences pass as they are; stray bytes as
                // escapes.
                let len = utf8_len(&s[i..]);
                if len > 0 {
                    if let Ok(c) = std::str::from_utf8(&s[i..i + len]) {
                        out.push_str(c);
                    }
                    i += len;
                    continue;
                }
                out.push_str(&format!("\\x{b:02X}"));
            }
        }
        i += 1;
    }
    out.push('\'');
    out
}

fn utf8_len(s: &[u8]) -> usize {
    let want = match s[0] {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return 0,
    };
    if s.len() >= want && std::str::from_utf8(&s[..want]).is_ok() {
        want
    } else {
        0
    }
}

/// Writes ClickHouse `RowBinary`.
#[derive(Debug, Default)]
pub struct RowWriter {
    pub buf: Vec<u8>,
}

impl RowWriter {
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// `Date`: days since 1970-01-01.
    pub fn date(&mut self, days: u16) {
        self.buf.extend_from_slice(&days.to_le_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        let mut n = v.len() as u64;
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                self.buf.push(b);
                break;
            }
            self.buf.push(b | 0x80);
        }
        self.buf.extend_from_slice(v);
    }
    pub fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
}

/// Reads ClickHouse `RowBinary`.
#[derive(Debug)]
pub struct RowReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> RowReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        RowReader { buf, pos: 0 }
    }
    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }
    pub fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ChError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| ChError::Answer("RowBinary answer cut short".into()))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, ChError> {
        Ok(self.take(1)?[0])
    }
    pub fn u64(&mut self) -> Result<u64, ChError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }
    pub fn i64(&mut self) -> Result<i64, ChError> {
        Ok(self.u64()? as i64)
    }
    pub fn u32(&mut self) -> Result<u32, ChError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
    }
    pub fn date(&mut self) -> Result<u16, ChError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes(b.try_into().unwrap_or([0; 2])))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], ChError> {
        let mut n: u64 = 0;
        let mut shift = 0;
        loop {
            let b = self.take(1)?[0];
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return Err(ChError::Answer("RowBinary length too long".into()));
            }
        }
        self.take(usize::try_from(n).map_err(|_| ChError::Answer("length".into()))?)
    }
    pub fn string(&mut self) -> Result<String, ChError> {
        Ok(String::from_utf8_lossy(self.bytes()?).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_everything_that_could_end_the_literal() {
        assert_eq!(quote("a'b"), r"'a\'b'");
        assert_eq!(quote(r"a\'b"), r"'a\\\'b'");
        assert_eq!(quote("x\0y\n"), r"'x\x00y\x0A'");
        assert_eq!(quote("é"), "'é'");
        assert_eq!(quote_bytes(&[0xff, b'a']), r"'\xFFa'");
        // Nothing but the closing quote is an unescaped quote.
        for s in ["'", "\\", "\\'", "'; DROP TABLE x; --", "\u{7f}"] {
            let q = quote(s);
            let inner = &q[1..q.len() - 1];
            let mut esc = false;
            for c in inner.chars() {
                assert!(esc || c != '\'', "{s:?} -> {q}");
                esc = !esc && c == '\\';
            }
            assert!(!esc, "{s:?} ends in a lone backslash: {q}");
        }
    }

    #[test]
    fn row_binary_round_trips() {
        let mut w = RowWriter::default();
        w.u64(7);
        w.i64(-3);
        w.str(&"x".repeat(300));
        w.u32(9);
        w.date(20_000);
        let mut r = RowReader::new(&w.buf);
        assert_eq!(r.u64().unwrap(), 7);
        assert_eq!(r.i64().unwrap(), -3);
        assert_eq!(r.string().unwrap().len(), 300);
        assert_eq!(r.u32().unwrap(), 9);
        assert_eq!(r.date().unwrap(), 20_000);
        assert!(r.done());
        assert!(RowReader::new(&[0xff]).bytes().is_err());
    }

    #[test]
    fn server_errors_are_parsed() {
        let e = server_error(
            b"Code: 60, e.displayText() = DB::Exception: Table sesam.x doesn't exist., e.what() = DB::Exception\n",
            "default",
        );
        assert_eq!(e.code(), Some(60));
        assert!(e.to_string().contains("Table sesam.x doesn't exist"));
        let e = server_error(b"Code: 193, e.displayText() = DB::Exception: Wrong password for user default, e.what() = DB::Exception", "default");
        assert!(matches!(e, ChError::Auth { .. }));
    }
}

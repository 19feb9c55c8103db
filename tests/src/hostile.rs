//! Requests of hostile tenants against a running `sesam-collector`:
//! ingest batches with outbox epochs, remote-write bodies, raw sockets from
//! a chosen loopback address (every `127.0.0.0/8` address reaches the
//! collector on Linux, so one test can play several peers), stalled
//! uploads, and a tokens file of one's own.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use collector::metrics::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use schemas::{Body, IngestBatch, Record};
use serde_json::Value;
use testkit::records;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A log record; `pipe` (when given) goes into `fields.pipe`, which makes
/// a stream label.
pub fn log(
    sub: &str,
    source: &str,
    seq: u64,
    ts: i64,
    message: &str,
    pipe: Option<&str>,
) -> Record {
    let mut body = records::log_body("hostile", message);
    if let (Body::Log(l), Some(p)) = (&mut body, pipe) {
        l.fields
            .insert("pipe".to_string(), Value::String(p.to_string()));
    }
    records::record(sub, source, seq, ts, body)
}

pub use testkit::records::batch;

/// Posts `b` as MessagePack (no compression): (status, JSON answer, time).
pub async fn post_batch(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    b: &IngestBatch,
) -> (u16, Value, Duration) {
    let body = schemas::to_msgpack(b).expect("encode batch");
    let started = Instant::now();
    let r = client
        .post(format!("{url}/api/v1/ingest"))
        .bearer_auth(token)
        .header("content-type", "application/msgpack")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST ingest: {e}"));
    let status = r.status().as_u16();
    let v = r.json().await.unwrap_or(Value::Null);
    (status, v, started.elapsed())
}

/// A remote-write 1.0 body (snappy protobuf) of one sample per series;
/// each series' labels are sorted here.
pub fn remote_write(series: &[(Vec<(String, String)>, f64)], ts_ms: i64) -> Vec<u8> {
    let req = WriteRequest {
        timeseries: series
            .iter()
            .map(|(labels, v)| {
                let mut l = labels.clone();
                l.sort();
                TimeSeries {
                    labels: l.iter().map(|(k, v)| Label::new(k, v)).collect(),
                    samples: vec![Sample {
                        value: *v,
                        timestamp: ts_ms,
                    }],
                    histograms: Vec::new(),
                }
            })
            .collect(),
        metadata: Vec::new(),
    };
    let raw = prost::Message::encode_to_vec(&req);
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("snappy")
}

/// Posts a remote-write body: (status, JSON answer or Null).
pub async fn post_remote_write(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let r = client
        .post(format!("{url}/api/v1/write"))
        .bearer_auth(token)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "snappy")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST remote-write: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A TCP connection to `to` from the loopback address `from`.
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    s.connect(to).await
}

/// A client whose connections come from `from`.
pub fn client_from(from: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client")
}

/// Sends the head of an ingest request announcing `length` body bytes and
/// `sent` of them, then stalls (the caller keeps the stream).
pub async fn stalled_upload(
    from: IpAddr,
    to: SocketAddr,
    token: &str,
    length: usize,
    sent: usize,
) -> TcpStream {
    let mut s = connect_from(from, to).await.expect("connect");
    let head = format!(
        "POST /api/v1/ingest HTTP/1.1\r\nhost: collector\r\nauthorization: Bearer {token}\r\ncontent-type: application/msgpack\r\ncontent-length: {length}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(&vec![0x90u8; sent]).await.expect("write body");
    s
}

/// Reads what the server sends until it closes the connection or
/// `within` passes: (bytes read, closed by the server).
pub async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Writes a tokens file (mode 0600) with plain-token entries
/// `(token, subscription, role, sources)`.
pub fn write_tokens(path: &Path, entries: &[(&str, &str, &str, Option<&[&str]>)]) {
    let mut toml = String::new();
    for (token, sub, role, sources) in entries {
        toml.push_str(&format!(
            "[[tokens]]\ntoken = \"{token}\"\nsubscription = \"{sub}\"\nrole = \"{role}\"\n"
        ));
        if let Some(s) = sources {
            let list: Vec<String> = s.iter().map(|x| format!("\"{x}\"")).collect();
            toml.push_str(&format!("sources = [{}]\n", list.join(", ")));
        }
        toml.push('\n');
    }
    std::fs::write(path, toml).expect("write tokens");
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod tokens");
}

/// The collector's `/metrics` text (with `token`, e.g. an admin's to see the
/// per-subscription section).
pub async fn metrics_text(client: &reqwest::Client, url: &str, token: Option<&str>) -> String {
    let mut r = client.get(format!("{url}/metrics"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of the sample `series` (exact name and labels as printed).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

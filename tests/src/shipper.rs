//! `sesam-shipper` tailing files into its own outbox and shipping them, as a
//! child process; and a numbered, growing log file to tail.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::shipper::outbox::OutboxStats;
use serde_json::Value;

use crate::process::{bin, free_port, Service};

#[derive(Debug)]
pub struct Shipper {
    pub root: PathBuf,
    pub data_dir: PathBuf,
    pub source: String,
    pub subscription: String,
    pub collector: String,
    pub token_file: PathBuf,
    /// `--file` globs.
    pub files: Vec<String>,
    /// Extra flags of every start.
    pub args: Vec<String>,
    /// `/metrics` address (`--listen`).
    pub metrics_port: u16,
    /// The process (start, SIGKILL, SIGTERM, log), also reached through
    /// `Deref`: `shipper.kill()`.
    service: Service,
    client: reqwest::Client,
}

impl Shipper {
    pub fn new(
        root: &Path,
        source: &str,
        subscription: &str,
        collector: &str,
        token_file: &Path,
        files: &[&Path],
    ) -> Shipper {
        std::fs::create_dir_all(root).expect("create shipper root");
        Shipper {
            root: root.to_path_buf(),
            data_dir: root.join("data"),
            source: source.to_string(),
            subscription: subscription.to_string(),
            collector: collector.to_string(),
            token_file: token_file.to_path_buf(),
            files: files.iter().map(|f| f.display().to_string()).collect(),
            args: Vec::new(),
            metrics_port: free_port(),
            service: Service::new("sesam-shipper", root.join("shipper.log")),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client"),
        }
    }

    pub fn spawn(&mut self) {
        let mut cmd = Command::new(bin("sesam-shipper"));
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--collector", &self.collector])
            .arg("--token-file")
            .arg(&self.token_file)
            .args(["--source", &self.source])
            .args(["--subscription", &self.subscription])
            .arg("--no-kmsg")
            .args(["--listen", &format!("127.0.0.1:{}", self.metrics_port)])
            .args(&self.args)
            .env("RUST_LOG", "warn");
        for f in &self.files {
            cmd.args(["--file", f]);
        }
        self.service.spawn(cmd);
    }

    /// Starts the process and waits until it serves `/metrics` (its signal
    /// handlers are installed by then).
    pub async fn start(&mut self) {
        self.spawn();
        let (client, url) = (self.client.clone(), self.metrics_url());
        let ready = || metrics(&client, &url);
        let ready = || async { ready().await.is_some() };
        self.service
            .wait_ready(Duration::from_secs(30), ready)
            .await;
    }

    fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.metrics_port)
    }

    /// Its `/metrics` text, if it answers.
    pub async fn metrics(&self) -> Option<String> {
        metrics(&self.client, &self.metrics_url()).await
    }

    /// The sum of metric `name` in its `/metrics`, if it answers.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        crate::process::metric_sum(&self.metrics().await?, name)
    }

    /// The stopped shipper's outbox counters.
    pub fn outbox_stats(&self) -> OutboxStats {
        assert!(
            !self.is_running(),
            "the shipper must be stopped to open its outbox"
        );
        crate::outbox_stats(&self.data_dir.join("outbox"))
    }

    /// Records the stopped shipper's outbox ever accepted (its last seq).
    pub fn accepted(&self) -> u64 {
        self.outbox_stats().next_seq.saturating_sub(1)
    }
}

async fn metrics(client: &reqwest::Client, url: &str) -> Option<String> {
    let r = client.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.text().await.ok()
}

impl std::ops::Deref for Shipper {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.service
    }
}

impl std::ops::DerefMut for Shipper {
    fn deref_mut(&mut self) -> &mut Service {
        &mut self.service
    }
}

/// The line numbered `i` of a [`LogWriter`] file.
pub fn numbered_line(i: u64) -> String {
    format!("line {i:08} of the growing file, padded to the length of a typical service log line")
}

/// The number of a [`numbered_line`] stored by the collector (a `system`
/// record's body), if it is one.
pub fn line_number(body: &Value) -> Option<u64> {
    body["message"]
        .as_str()?
        .strip_prefix("line ")?
        .get(..8)?
        .parse()
        .ok()
}

/// A thread appending numbered lines to a file at a steady rate.
#[derive(Debug)]
pub struct LogWriter {
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogWriter {
    /// Appends lines `0..total` to `path`, `rate` lines per second, in
    /// chunks every 10 ms.
    pub fn start(path: &Path, total: u64, rate: u64) -> LogWriter {
        let written = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s, path) = (written.clone(), stop.clone(), path.to_path_buf());
        let thread = std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .expect("open the growing file");
            let started = Instant::now();
            let mut next = 0u64;
            while next < total && !s.load(Ordering::Relaxed) {
                let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
                if due > next {
                    let mut chunk = String::new();
                    for i in next..due {
                        chunk.push_str(&numbered_line(i));
                        chunk.push('\n');
                    }
                    f.write_all(chunk.as_bytes())
                        .expect("append to the growing file");
                    next = due;
                    w.store(next, Ordering::Release);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        LogWriter {
            written,
            stop,
            thread: Some(thread),
        }
    }

    /// Lines written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Waits for the writer to finish.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            t.join().expect("writer thread");
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes lines `0..n` to `path` at once.
pub fn write_numbered_file(path: &Path, n: u64) {
    let mut text = String::with_capacity(n as usize * 100);
    for i in 0..n {
        text.push_str(&numbered_line(i));
        text.push('\n');
    }
    std::fs::write(path, text).expect("write the log file");
}

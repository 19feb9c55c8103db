//! The real `sesam-shipper` binary against hostile or failing receivers
//! (issue #9): absurd `Retry-After` values, failing batches, a dropped OTLP
//! sink, secrets in tailed files, `409 source_conflict`, and failover
//! between two collectors while one is down.
//!
//! The receivers are `testkit::receiver::Receiver`s served by the test (a
//! stand-in for the collector's ingest that dedupes by (subscription,
//! source, seq) and can be told to misbehave); they keep what they got, so
//! the checks are on the bytes that left the host.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::process::{free_port, until};
use e2e::shipper::{numbered_line, Shipper};
use schemas::Body;
use testkit::receiver::Receiver;

const HOST: &str = "host-hostile";
const SUB: &str = "sub-1";

struct Setup {
    dir: tempfile::TempDir,
    token: PathBuf,
    log: PathBuf,
}

fn setup() -> Setup {
    let dir = e2e::scratch();
    let token = dir.path().join("token");
    std::fs::write(&token, "test-token").unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(&log, "").unwrap();
    Setup { dir, token, log }
}

impl Setup {
    fn shipper(&self, collector: &str, args: &[&str]) -> Shipper {
        let mut s = Shipper::new(
            &self.dir.path().join("shipper"),
            HOST,
            SUB,
            collector,
            &self.token,
            &[self.log.as_path()],
        );
        s.args = args.iter().map(|a| a.to_string()).collect();
        s
    }
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn append_numbered(path: &Path, from: u64, to: u64) {
    let text: String = (from..to).map(|i| numbered_line(i) + "\n").collect();
    append(path, &text);
}

/// Line number -> how many records of the receiver hold it.
fn line_counts(rx: &Receiver) -> BTreeMap<u64, u32> {
    let got = rx.received.lock().unwrap();
    let mut counts = BTreeMap::new();
    for r in got.records.values() {
        if let Body::System(s) = &r.body {
            if let Some(n) = s
                .message
                .strip_prefix("line ")
                .and_then(|m| m.get(..8))
                .and_then(|n| n.parse::<u64>().ok())
            {
                *counts.entry(n).or_insert(0) += 1;
            }
        }
    }
    counts
}

fn assert_each_line_once(counts: &BTreeMap<u64, u32>, total: u64) {
    assert_eq!(counts.len() as u64, total, "distinct lines stored");
    assert!(
        (0..total).all(|i| counts.get(&i) == Some(&1)),
        "every line 0..{total} exactly once"
    );
}

/// The value of `name{...label...}` in the shipper's `/metrics`.
async fn metric_with(s: &Shipper, name: &str, label: &str) -> f64 {
    let text = s.metrics().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn stored(rx: &Receiver, n: usize, what: &str) {
    until(what, Duration::from_secs(60), || async {
        (rx.stored() >= n).then_some(())
    })
    .await;
}

/// Waits until the running shipper's outbox is empty (every sink acknowledged
/// everything): a record can be stored by the receiver before the shipper
/// knows it (a lost answer), so "all stored" is not yet "all acknowledged".
async fn drained(s: &Shipper) {
    until("the outbox drained", Duration::from_secs(60), || async {
        (s.metric("outbox_records").await == Some(0.0)).then_some(())
    })
    .await;
}

/// Regression: `Retry-After: 1e20` panicked the delivery task and the
/// outbox never drained until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_retry_after_values_neither_panic_nor_wedge_the_shipper() {
    let t = setup();
    let rx = Receiver::default();
    let (url, _server) = rx.start().await.unwrap();
    let mut s = t.shipper(&url, &["--max-retry-after", "1s"]);
    s.start().await;
    let values = [
        "1e20",
        "-1",
        "NaN",
        "garbage",
        "1e400",
        "99999999999999999999",
    ];
    let mut written = 0;
    for value in values {
        {
            let mut f = rx.faults.lock().unwrap();
            f.throttled = 3;
            f.retry_after = Some(value.into());
        }
        append_numbered(&t.log, written, written + 500);
        written += 500;
        stored(
            &rx,
            written as usize,
            &format!("lines after Retry-After: {value}"),
        )
        .await;
        assert_eq!(rx.faults.lock().unwrap().throttled, 0, "{value}: throttled");
        assert!(
            s.process_mut().and_then(|p| p.exited()).is_none(),
            "{value}: the shipper exited:\n{}",
            s.log_text()
        );
    }
    drained(&s).await;
    let throttled = metric_with(&s, "shipper_send_failures_total", "reason=\"throttled\"").await;
    assert_eq!(throttled, 3.0 * values.len() as f64);
    s.stop();
    assert_eq!(s.outbox_stats().records, 0, "the outbox drained");
    assert!(!s.log_text().contains("panicked"), "{}", s.log_text());
    assert_each_line_once(&line_counts(&rx), written);
}

/// Batches that fail every way a receiver can make them fail (503, a 2xx
/// that is not an answer, a stored batch whose answer is lost, requests
/// that time out) are sent again: no hole, every line once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_batches_are_sent_again_and_every_line_arrives_once() {
    let t = setup();
    let rx = Receiver::default();
    {
        let mut f = rx.faults.lock().unwrap();
        f.unavailable = 5;
        f.garbage = 3;
        f.fail_after_store = 4;
    }
    let (url, _server) = rx.start().await.unwrap();
    let mut s = t.shipper(
        &url,
        &[
            "--request-timeout",
            "1s",
            "--batch-max-records",
            "100",
            "--backoff-max",
            "500ms",
        ],
    );
    s.start().await;
    append_numbered(&t.log, 0, 3000);
    stored(&rx, 3000, "the first 3000 lines").await;
    // A receiver slower than the request timeout: every attempt times out.
    rx.faults.lock().unwrap().delay = Duration::from_millis(1500);
    append_numbered(&t.log, 3000, 3500);
    until("timeouts", Duration::from_secs(30), || async {
        (metric_with(&s, "shipper_send_failures_total", "reason=\"timeout\"").await >= 2.0)
            .then_some(())
    })
    .await;
    rx.faults.lock().unwrap().delay = Duration::ZERO;
    stored(&rx, 3500, "the lines sent while the receiver was slow").await;
    drained(&s).await;
    let server_errors =
        metric_with(&s, "shipper_send_failures_total", "reason=\"server_error\"").await;
    let garbage = metric_with(
        &s,
        "shipper_send_failures_total",
        "reason=\"garbage_answer\"",
    )
    .await;
    assert!(
        server_errors >= 9.0,
        "503s and lost answers: {server_errors}"
    );
    assert_eq!(garbage, 3.0);
    s.stop();
    assert_eq!(s.outbox_stats().records, 0);
    let got = rx.received.lock().unwrap();
    assert!(got.duplicates >= 1, "lost answers were re-sent and deduped");
    let seqs: Vec<u64> = {
        let mut v: Vec<u64> = got.records.keys().map(|k| k.2).collect();
        v.sort();
        v
    };
    drop(got);
    assert_eq!(
        seqs,
        (1..=3500).collect::<Vec<u64>>(),
        "no hole in the seqs"
    );
    assert_each_line_once(&line_counts(&rx), 3500);
}

/// A port nothing listens on.
fn closed_port_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// Regression: a durable sink that is no longer configured (`--otlp`
/// dropped) kept the outbox from ever shrinking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_otlp_from_a_restart_lets_the_outbox_shrink() {
    let t = setup();
    let rx = Receiver::default();
    let (url, _server) = rx.start().await.unwrap();
    let otlp = closed_port_url();
    let mut s = t.shipper(&url, &["--otlp", &otlp]);
    s.start().await;
    append_numbered(&t.log, 0, 1000);
    stored(&rx, 1000, "lines at the collector").await;
    s.stop();
    let stats = s.outbox_stats();
    assert_eq!(
        stats.records, 1000,
        "kept for the OTLP endpoint that is down"
    );
    assert!(stats.sinks.contains_key("otlp"));

    s.args.clear();
    s.start().await;
    append_numbered(&t.log, 1000, 1010);
    stored(&rx, 1010, "lines after the restart").await;
    drained(&s).await;
    s.stop();
    let stats = s.outbox_stats();
    assert_eq!(stats.records, 0);
    assert_eq!(stats.sinks.keys().collect::<Vec<_>>(), vec!["collector"]);
    assert!(
        s.log_text().contains("not configured any more"),
        "{}",
        s.log_text()
    );
    assert_each_line_once(&line_counts(&rx), 1010);
}

/// Whether any 12-byte window of `secret` is in one of `bodies`.
fn leaked(bodies: &[Vec<u8>], secret: &str) -> Option<String> {
    let w = secret.len().min(12);
    (0..=secret.len() - w)
        .map(|i| &secret[i..i + w])
        .find(|frag| {
            bodies
                .iter()
                .any(|b| b.windows(frag.len()).any(|x| x == frag.as_bytes()))
        })
        .map(String::from)
}

/// Regression: free-text secrets of a tailed file were stored unredacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_a_tailed_file_leave_the_host_redacted() {
    let t = setup();
    let rx = Receiver::default();
    rx.received.lock().unwrap().keep_bodies = true;
    let (url, _server) = rx.start().await.unwrap();
    let mut s = t.shipper(&url, &[]);
    s.start().await;
    let secrets = [
        "hunter2hunter2xyz",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "YWRtaW46cDRzc3cwcmQhIQ",
        "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
        "3f9a1c0de55b4b8e1f2a",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "ss@db-secret-part",
        "xoxb-263594206564-2343594206574-FGqddMF8t08v8N7Oq4i57vs1",
        "rk_live_51H8abcdEFGHijklMNOPqrst",
        "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
        "Zq3xT7vN2mK8pL4rW9sY6uB1cD5eF0gH2jQ4",
    ];
    let mut text = String::new();
    text.push_str(&format!("login failed: password={}\n", secrets[0]));
    text.push_str(&format!(
        "GET /v1/charges?api_key={}&limit=3 200\n",
        secrets[1]
    ));
    text.push_str(&format!("Authorization: Basic {}\n", secrets[2]));
    text.push_str(&format!("Authorization: token {}\n", secrets[3]));
    text.push_str(&format!("X-Api-Key: {}\n", secrets[4]));
    text.push_str(&format!("aws_secret_access_key = {}\n", secrets[5]));
    text.push_str(&format!(
        "connect postgres://admin:p@{}@db/app\n",
        secrets[6]
    ));
    text.push_str(&format!("slack {} ready\n", secrets[7]));
    text.push_str(&format!("stripe {} loaded\n", secrets[8]));
    text.push_str(&format!("maps {} here\n", secrets[9]));
    text.push_str(&format!("token {} done\n", secrets[10]));
    text.push_str(&format!(
        r#"{{"user": "bob", "password": "{}"}}"#,
        secrets[0]
    ));
    text.push('\n');
    // A 70 KB line cut in 64 KiB pieces, with a token across the cut.
    let at = (64 << 10) - 20;
    let long = format!(
        "{} ghp_{} {}\n",
        "x".repeat(at),
        secrets[11],
        "y".repeat(6000)
    );
    text.push_str(&long);
    text.push_str("END-OF-SECRETS\n");
    append(&t.log, &text);
    until("the last line", Duration::from_secs(60), || async {
        let got = rx.received.lock().unwrap();
        got.records
            .values()
            .any(|r| matches!(&r.body, Body::System(l) if l.message == "END-OF-SECRETS"))
            .then_some(())
    })
    .await;
    s.stop();
    let got = rx.received.lock().unwrap();
    assert!(got.records.len() >= 15, "{} records", got.records.len());
    for secret in secrets {
        assert!(
            leaked(&got.bodies, secret).is_none(),
            "{secret}: {:?} left the host",
            leaked(&got.bodies, secret)
        );
    }
    let all: String = got
        .records
        .values()
        .filter_map(|r| match &r.body {
            Body::System(l) => Some(l.message.clone()),
            _ => None,
        })
        .collect();
    assert!(all.contains("password=[REDACTED]"));
    assert!(all.contains("postgres://admin:[REDACTED]@db/app"));
}

/// A 409 `source_conflict` (another outbox epoch writes this source) is
/// retried with backoff, never split or dead-lettered; the records arrive
/// once it clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_conflict_is_retried_not_dead_lettered() {
    let t = setup();
    let rx = Receiver::default();
    rx.faults.lock().unwrap().conflict = 4;
    let (url, _server) = rx.start().await.unwrap();
    let mut s = t.shipper(&url, &["--backoff-max", "500ms"]);
    s.start().await;
    append_numbered(&t.log, 0, 500);
    stored(&rx, 500, "the lines once the conflict clears").await;
    drained(&s).await;
    let conflicts = metric_with(
        &s,
        "shipper_send_failures_total",
        "reason=\"source_conflict\"",
    )
    .await;
    assert_eq!(conflicts, 4.0);
    assert_eq!(
        s.metric("shipper_dead_letters_total").await.unwrap_or(0.0),
        0.0
    );
    s.stop();
    let log = s.log_text();
    let errors = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("source_conflict"))
        .count();
    assert_eq!(errors, 4, "once per backoff round:\n{log}");
    assert!(
        log.contains("written by another outbox epoch"),
        "the collector's message:\n{log}"
    );
    assert_eq!(s.outbox_stats().quarantined, 0);
    assert_each_line_once(&line_counts(&rx), 500);
}

/// Two collectors, one down: everything goes to the other; then the first
/// comes up and the second fails, and the shipper follows. Each line is
/// stored once across the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_one_down_fail_over_and_every_line_arrives_once() {
    let t = setup();
    let first_port = free_port();
    let first_url = format!("http://127.0.0.1:{first_port}");
    let second = Receiver::default();
    let (second_url, _second_server) = second.start().await.unwrap();
    let mut s = t.shipper(
        &first_url,
        &["--collector", &second_url, "--backoff-max", "500ms"],
    );
    s.start().await;
    append_numbered(&t.log, 0, 1000);
    stored(&second, 1000, "lines at the second collector").await;
    assert_eq!(
        s.metric("shipper_collector_failovers_total").await,
        Some(1.0)
    );

    // The first comes up, the second goes down (503).
    let first = Receiver::default();
    let (_, _first_server) = first
        .start_on(SocketAddr::from(([127, 0, 0, 1], first_port)))
        .await
        .unwrap();
    second.faults.lock().unwrap().unavailable = u32::MAX;
    append_numbered(&t.log, 1000, 2000);
    stored(&first, 1000, "lines at the first collector").await;
    drained(&s).await;
    assert!(s.metric("shipper_collector_failovers_total").await >= Some(2.0));
    s.stop();
    assert_eq!(s.outbox_stats().records, 0);
    let (a, b) = (line_counts(&first), line_counts(&second));
    let mut both = b.clone();
    for (line, n) in &a {
        *both.entry(*line).or_insert(0) += n;
    }
    assert_each_line_once(&both, 2000);
}

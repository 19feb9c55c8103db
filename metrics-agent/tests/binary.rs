//! The `sesam-metrics-agent` binary: flag errors and graceful SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(agent_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run agent");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_are_refused_with_a_message() {
    let (ok, err) = run(&[]);
    assert!(!ok);
    assert!(err.contains("nothing to do"), "{err}");
    let (ok, err) = run(&["--remote-write", "collector:3100/api/v1/write"]);
    assert!(!ok);
    assert!(err.contains("must start with http"), "{err}");
    let (ok, err) = run(&["--remote-write", "http://a/w", "--otlp", "http://b"]);
    assert!(!ok);
    assert!(err.contains("cannot be used with"), "{err}");
    let (ok, err) = run(&["--listen", "127.0.0.1:0", "--scrape", "ftp://x/metrics"]);
    assert!(!ok);
    assert!(err.contains("http://"), "{err}");
    let (ok, err) = run(&[
        "--remote-write",
        "http://127.0.0.1:1/w",
        "--scrape-token-file",
        "nope=/tmp/x",
    ]);
    assert!(!ok);
    assert!(err.contains("no --scrape target with job"), "{err}");
    let (ok, err) = run(&["--listen", "127.0.0.1:0", "--buffer-samples", "0"]);
    assert!(!ok);
    assert!(err.contains("buffer-samples"), "{err}");
    let (ok, err) = run(&[
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        "/nonexistent/token",
    ]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/token"), "{err}");
}

#[test]
fn sigterm_stops_it_within_the_deadline_even_with_the_receiver_down() {
    let port = free_port();
    let mut child = Command::new(agent_bin())
        .args(["--interval", "100ms", "--shutdown-deadline", "1s"])
        // Nothing listens there: every push fails and is retried.
        .args([
            "--remote-write",
            &format!("http://127.0.0.1:{}/api/v1/write", free_port()),
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agent");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "agent did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "no exit within 5 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("shutdown signal received"), "{err}");
    assert!(
        err.contains("samples still buffered at shutdown are lost"),
        "{err}"
    );
}

//! The real binary: token add, serve, search CLI, checkpoint, SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use testkit::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_sesam-collector");

fn token_add(tokens: &std::path::Path, sub: &str, role: &str) -> String {
    let out = Command::new(BIN)
        .args(["token", "add", "--tokens"])
        .arg(tokens)
        .args(["--subscription", sub, "--role", role])
        .output()
        .expect("run token add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_searches_checkpoints_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens.toml");
    let shipper = token_add(&tokens, "acme", "shipper");
    let operator = token_add(&tokens, "acme", "operator");
    let admin = token_add(&tokens, "*", "admin");
    let text = std::fs::read_to_string(&tokens).expect("read");
    assert!(!text.contains(&shipper) && !text.contains(&operator) && !text.contains(&admin));
    let bad = Command::new(BIN)
        .args(["token", "add", "--tokens"])
        .arg(&tokens)
        .args(["--subscription", "acme", "--role", "root"])
        .output()
        .expect("run");
    assert!(!bad.status.success());

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let data = dir.path().join("data");
    let cps = dir.path().join("cps");
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--tokens"])
        .arg(&tokens)
        .arg("--checkpoint-dir")
        .arg(&cps)
        .args(["--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(format!("{url}/readyz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "collector did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let t0 = now() - 5_000_000_000;
    let raw = schemas::to_msgpack(&batch(
        "acme",
        "node-1",
        vec![
            log_record("acme", "node-1", 1, t0, "disk almost full"),
            log_record("acme", "node-1", 2, t0 + 1, "all fine"),
        ],
    ))
    .expect("encode");
    let r = client
        .post(format!("{url}/api/v1/ingest"))
        .bearer_auth(&shipper)
        .header("content-encoding", "zstd")
        .body(zstd::encode_all(raw.as_slice(), 3).expect("zstd"))
        .send()
        .await
        .expect("ingest");
    assert_eq!(r.status(), 200);

    let token_file = dir.path().join("op.token");
    std::fs::write(&token_file, format!("{operator}\n")).expect("write");
    let (u, tf) = (url.clone(), token_file.clone());
    let out = tokio::task::spawn_blocking(move || {
        let run = |output: &str| {
            Command::new(BIN)
                .args([
                    "search",
                    r#"{source="node-1"} |= "disk""#,
                    "--since",
                    "1h",
                    "--url",
                    &u,
                ])
                .arg("--token-file")
                .arg(&tf)
                .args(["--output", output])
                .output()
                .expect("search")
        };
        (run("text"), run("json"))
    })
    .await
    .expect("join");
    assert!(
        out.0.status.success(),
        "{}",
        String::from_utf8_lossy(&out.0.stderr)
    );
    let text = String::from_utf8_lossy(&out.0.stdout);
    assert!(
        text.contains("disk almost full") && !text.contains("all fine"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.1.stdout).expect("json output");
    assert_eq!(json.as_array().map(Vec::len), Some(1));

    // A query error reaches the operator as a message, not a panic.
    let url2 = url.clone();
    let tf = token_file.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["search", "{source=", "--url", &url2])
            .arg("--token-file")
            .arg(&tf)
            .output()
            .expect("search")
    })
    .await
    .expect("join");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected"));

    // A metric query prints a table.
    let (u, tf) = (url.clone(), token_file.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args([
                "search",
                r#"sum(count_over_time({source="node-1"}[1h]))"#,
                "--since",
                "10m",
                "--step",
                "5m",
                "--url",
                &u,
            ])
            .arg("--token-file")
            .arg(&tf)
            .output()
            .expect("search")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .is_some_and(|h| h.starts_with("TIME") && h.contains("VALUE")),
        "{text}"
    );
    let rows: Vec<&str> = lines.collect();
    assert!(
        !rows.is_empty()
            && rows
                .iter()
                .all(|r| r.split_whitespace().nth(1) == Some("2")),
        "{text}"
    );

    // --tail prints the history, then what is stored while it runs.
    let mut tail = Command::new(BIN)
        .args([
            "search",
            r#"{source="node-1"}"#,
            "--tail",
            "--limit",
            "1",
            "--url",
            &url,
        ])
        .arg("--token-file")
        .arg(&token_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tail");
    let stdout = tail.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("history line");
    assert!(
        first.contains("all fine"),
        "the newest record first: {first}"
    );
    let raw = schemas::to_msgpack(&batch(
        "acme",
        "node-1",
        vec![log_record("acme", "node-1", 3, now(), "tailed live")],
    ))
    .expect("encode");
    // The history line came after the tail subscribed: this one is live.
    let r = client
        .post(format!("{url}/api/v1/ingest"))
        .bearer_auth(&shipper)
        .header("content-encoding", "zstd")
        .body(zstd::encode_all(raw.as_slice(), 3).expect("zstd"))
        .send()
        .await
        .expect("ingest");
    assert_eq!(r.status(), 200);
    let live = rx.recv_timeout(Duration::from_secs(10)).expect("live line");
    assert!(live.contains("tailed live"), "{live}");
    let _ = tail.kill();
    let _ = tail.wait();

    // Checkpoint through the running collector.
    let admin_file = dir.path().join("admin.token");
    std::fs::write(&admin_file, &admin).expect("write");
    let url3 = url.clone();
    let af = admin_file.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["checkpoint", "--url", &url3])
            .arg("--token-file")
            .arg(&af)
            .output()
            .expect("checkpoint")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(collector::checkpoint::list(&cps).expect("list").len(), 1);

    // SIGTERM: clean exit.
    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit}");

    // Offline checkpoint of the stopped store, then the data is in it.
    let out = Command::new(BIN)
        .args(["checkpoint", "--data-dir"])
        .arg(&data)
        .arg("--checkpoint-dir")
        .arg(&cps)
        .output()
        .expect("checkpoint");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let newest = collector::checkpoint::list(&cps).expect("list");
    assert_eq!(newest.len(), 2);
    let h = Harness::start(newest.last().expect("cp")).await;
    // The two records above and the one stored while tailing.
    assert_eq!(h.logs(ADMIN, "{}", 10).await.len(), 3);
    h.stop().await;
}

#[test]
fn out_of_range_scheduling_and_queue_flags_are_refused_naming_the_flag() {
    for (flag, value) in [
        ("--notifier-queue-records", "0"),
        ("--notifier-queue-records", "99999999999"),
        ("--notifier-queue-bytes", "0"),
        ("--notifier-queue-bytes", "99999999999999"),
        ("--max-deferred-bytes-per-subscription", "1024"),
        ("--bulk-ingest-body-bytes", "12"),
        ("--bulk-ingest-body-bytes", "1e9"),
        ("--tail-buffer-bytes", "100"),
        ("--tail-buffer-bytes-per-subscription", "99999999999999"),
        ("--query-background-share", "5"),
        ("--query-nice", "40"),
        ("--skip-index", "maybe"),
    ] {
        let out = std::process::Command::new(BIN)
            .args([flag, value])
            .output()
            .expect("run sesam-collector");
        assert!(!out.status.success(), "{flag} {value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
}

#[test]
fn metrics_storage_flags_are_checked_before_anything_starts() {
    for (args, want) in [
        (
            &["--metrics-storage", "victoriametrics"][..],
            "--metrics-storage victoriametrics needs --victoriametrics-url",
        ),
        (
            &["--victoriametrics-url", "http://127.0.0.1:8428"][..],
            "--victoriametrics-url needs --metrics-storage victoriametrics",
        ),
        (
            &[
                "--metrics-storage",
                "victoriametrics",
                "--victoriametrics-url",
                "127.0.0.1:8428",
            ][..],
            "must be an http:// or https:// URL",
        ),
        (&["--metrics-storage", "graphite"][..], "--metrics-storage"),
    ] {
        let out = std::process::Command::new(BIN)
            .args(args)
            .output()
            .expect("run sesam-collector");
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn coordination_flags_are_checked_before_anything_starts() {
    let zk = "zookeeper://127.0.0.1:1/sesam";
    for (args, want) in [
        (
            &["--member-id", "c1"][..],
            "--member-id needs --coordination",
        ),
        (
            &["--coordination", zk][..],
            "--coordination needs --member-id",
        ),
        (
            &[
                "--coordination",
                "zookeeper://127.0.0.1/sesam",
                "--member-id",
                "c1",
            ][..],
            "--coordination:",
        ),
        (
            &["--coordination", zk, "--member-id", "a/b"][..],
            "--member-id \"a/b\" is invalid",
        ),
        (
            &[
                "--coordination",
                zk,
                "--member-id",
                "c1",
                "--coordination-poll",
                "1ms",
            ][..],
            "--coordination-poll 1ms is outside 10ms..10s",
        ),
        (
            &[
                "--coordination",
                zk,
                "--member-id",
                "c1",
                "--coordination-feed-days",
                "0",
            ][..],
            "--coordination-feed-days 0 is outside 1..365",
        ),
        (
            &[
                "--coordination",
                zk,
                "--member-id",
                "c1",
                "--advertise-url",
                "10.0.0.1:3100",
            ][..],
            "--advertise-url \"10.0.0.1:3100\" must be an http:// or https:// URL",
        ),
    ] {
        let out = std::process::Command::new(BIN)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .expect("run sesam-collector");
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // Over the embedded store there is nothing shared to coordinate on.
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens.toml");
    token_add(&tokens, "acme", "operator");
    let out = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--tokens"])
        .arg(&tokens)
        .args(["--coordination", zk, "--member-id", "c1"])
        .output()
        .expect("run sesam-collector");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--coordination needs --storage clickhouse"),
        "{err}"
    );
}

//! The real `sesam-node` binary: flags, the API token file, service logs in
//! the outbox and on stdout without secrets, and graceful shutdown on SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_system, outbox_records};
use schemas::{Body, Kind, Level};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_logs_to_stdout_and_outbox_without_secrets_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = http_system().await;
    let secret = "binary-secret-5e6f7a";
    let config = json!([
        {"_id": "node", "type": "metadata", "monitoring": {"enabled": true}},
        {"_id": "api", "type": "system:url", "base_url": format!("{base}/api"), "headers": {"Authorization": "$SECRET(pw)"}},
        {"_id": "broken", "type": "pipe", "source": {"type": "embedded", "entities": [{"_id": "a"}]},
         "sink": {"type": "json", "system": "api", "url": "broken"}, "pump": {"mode": "manual"}},
    ]);
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, "bin-token\n").unwrap();
    // Readable by others: the node starts, and says so.
    std::fs::set_permissions(
        &token_path,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644),
    )
    .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let stdout_path = dir.path().join("stdout.log");
    let stdout = std::fs::File::create(&stdout_path).unwrap();
    let stderr = stdout.try_clone().unwrap();
    let data_dir = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sesam-node"))
        .arg("--config")
        .arg(&config_path)
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--node-id",
            "bin-node",
            "--subscription",
            "bin-sub",
            "--log-format",
            "json",
        ])
        .arg("--api-token-file")
        .arg(&token_path)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(url("/api/ping")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the node did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = client.get(url("/api/pipes")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .put(url("/api/secrets"))
        .bearer_auth("bin-token")
        .json(&json!({"pw": secret}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(url("/api/pipes/broken/pump"))
        .bearer_auth("bin-token")
        .form(&[("operation", "start")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log: Value = client
            .get(url("/api/pipes/broken/log"))
            .bearer_auth("bin-token")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if log
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event_type"] == "pump-failed")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the run did not fail: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let started = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");

    let out = std::fs::read_to_string(&stdout_path).unwrap();
    assert!(
        out.contains("pump failed"),
        "stdout lacks the failure: {out}"
    );
    assert!(!out.contains(secret), "stdout leaks the secret:\n{out}");
    assert!(
        out.contains("the API token file is readable by other users"),
        "{out}"
    );

    let records = outbox_records(&data_dir);
    for r in &records {
        let j = serde_json::to_string(r).unwrap();
        assert!(!j.contains(secret), "outbox leaks the secret: {j}");
        assert_eq!(
            (r.source.as_str(), r.subscription.as_str()),
            ("bin-node", "bin-sub")
        );
    }
    let logs: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.body {
            Body::Log(l) => Some(l),
            _ => None,
        })
        .collect();
    assert!(
        logs.iter().any(|l| l.level == Level::Warn
            && l.message == "pump failed"
            && l.fields["pipe"] == "broken"),
        "the WARN line is in the outbox: {logs:?}"
    );
    // Only WARN and above by default.
    assert!(logs.iter().all(|l| l.level >= Level::Warn), "{logs:?}");
    assert!(records.iter().any(|r| r.kind() == Kind::Execution));
}

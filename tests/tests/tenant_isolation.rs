//! Tenant isolation over every read endpoint. Subscription `alpha` gets
//! everything the collector can hold: a node's execution events, logs,
//! health and config (its pipe fails, so an alert fires and a notification
//! is delivered), a shipper's file lines, host metrics pushed by
//! `sesam-metrics-agent` (remote-write), a receiver, a rule and a silence.
//! Subscription `bravo` has a shipper, a receiver and a rule of its own.
//!
//! Every read endpoint (`/api/v1/logs`, `/loki/api/v1/query_range`,
//! `/loki/api/v1/labels`, `/loki/api/v1/label/{name}/values`,
//! `/api/v1/sources`, `/api/v1/alerts`, `/api/v1/notifications`,
//! `/api/v1/notification-rules`, `/api/v1/receivers`, `/api/v1/silences`,
//! `/federate`), called with bravo's operator token, also with selectors
//! and `subscription=` parameters naming alpha, answers nothing of alpha:
//! no occurrence of "alpha" anywhere in the body, and label values exactly
//! bravo's own. Reading alpha's rule or receiver by id/name answers exactly
//! as for one that does not exist. The same calls with alpha's token do
//! show alpha's data, so the check can fail. Alpha's failure is notified
//! exactly once.
//!
//! The same run three times: on the defaults (RocksDB, in-memory metrics),
//! with `--storage clickhouse` (a `clickhouse-server` started for the
//! test) and with `--metrics-storage victoriametrics` (a
//! `victoria-metrics` started for the test).

use std::process::Command;
use std::time::Duration;

use e2e::collector::{operator_token, Collector, ADMIN};
use e2e::node::{failing_pipe_config, Node};
use e2e::process::{bin, free_port, until, Proc};
use e2e::shipper::{write_numbered_file, Shipper};
use e2e::webhook::Webhook;
use serde_json::{json, Value};

const A: &str = "alpha";
const B: &str = "bravo";
const A_NODE: &str = "alpha-node";
const A_HOST: &str = "alpha-host";
const A_PIPE: &str = "alpha-orders";
const B_HOST: &str = "bravo-host";

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_subscriptions_operator_sees_nothing_of_it() {
    let dir = e2e::scratch();
    let collector = Collector::new(&dir.path().join("collector"), &[A, B]);
    isolation(&dir, collector).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_subscriptions_operator_sees_nothing_of_it_on_clickhouse() {
    let test = "another_subscriptions_operator_sees_nothing_of_it_on_clickhouse";
    let Some(ch) = e2e::clickhouse::start_or_skip(test, Default::default()) else {
        return;
    };
    let dir = e2e::scratch();
    let collector =
        e2e::clickhouse::collector(&dir.path().join("collector"), &[A, B], &[], &[ch.url()]);
    isolation(&dir, collector).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_subscriptions_operator_sees_nothing_of_it_on_victoriametrics() {
    if !std::path::Path::new("/usr/bin/victoria-metrics").exists() {
        testkit::engines::skip(
            "another_subscriptions_operator_sees_nothing_of_it_on_victoriametrics",
            "victoria-metrics is not installed (scripts/setup.sh)",
        );
        return;
    }
    let vm = testkit::engines::VictoriaMetrics::start()
        .unwrap_or_else(|e| panic!("victoria-metrics did not start: {e}"));
    let dir = e2e::scratch();
    let mut collector = Collector::new(&dir.path().join("collector"), &[A, B]);
    collector.args.extend([
        "--metrics-storage".into(),
        "victoriametrics".into(),
        "--victoriametrics-url".into(),
        vm.url(),
    ]);
    isolation(&dir, collector).await;
}

async fn isolation(dir: &tempfile::TempDir, mut collector: Collector) {
    let hook = Webhook::start().await;
    collector.start().await;
    let (op_a, op_b) = (operator_token(A), operator_token(B));

    // alpha: rule, receiver, silence (on another pipe, so the alert notifies).
    let rule_a = collector
        .pump_failed_rule(A, "alpha-ops", &[A_PIPE], &hook.url)
        .await;
    let (st, body) = collector
        .send(
            "POST",
            "/api/v1/silences",
            &op_a,
            json!({"matchers": [{"name": "pipe", "value": "alpha-quiet", "isRegex": false, "isEqual": true}],
                   "endsAt": schemas::time::rfc3339_from_nanos(schemas::time::now_nanos() + 86_400_000_000_000),
                   "comment": "alpha maintenance"}),
        )
        .await;
    assert!(st == 200 || st == 201, "create silence: {st} {body}");
    // bravo: its own receiver and rule.
    collector
        .pump_failed_rule(B, "bravo-ops", &["bravo-pipe"], &hook.url)
        .await;

    // alpha: a node whose pipe fails, a shipper, a metrics agent.
    let mut node = Node::new(
        &dir.path().join("node"),
        A_NODE,
        A,
        &failing_pipe_config(A_PIPE),
    );
    node.collector = Some((collector.url.clone(), collector.token_file(A)));
    node.start(&[]).await;
    assert_eq!(node.start_pump(A_PIPE).await, Some(200));
    let mut shippers = Vec::new();
    for (sub, host) in [(A, A_HOST), (B, B_HOST)] {
        let root = dir.path().join(host);
        std::fs::create_dir_all(&root).unwrap();
        let file = root.join("app.log");
        write_numbered_file(&file, 100);
        let mut s = Shipper::new(
            &root,
            host,
            sub,
            &collector.url,
            &collector.token_file(sub),
            &[&file],
        );
        s.start().await;
        shippers.push(s);
    }
    let mut agent = {
        let mut cmd = Command::new(bin("sesam-metrics-agent"));
        cmd.args(["--interval", "1s"])
            .args(["--remote-write", &format!("{}/api/v1/write", collector.url)])
            .arg("--token-file")
            .arg(collector.token_file(A))
            .args(["--instance", "alpha-metrics", "--subscription", A])
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .env("RUST_LOG", "warn");
        Proc::spawn("sesam-metrics-agent", cmd, &dir.path().join("agent.log"))
    };

    // Wait until alpha has data everywhere and bravo has its lines.
    for (sub, source, n) in [(A, A_HOST, 100), (B, B_HOST, 100), (A, A_NODE, 1)] {
        collector
            .wait_records(sub, source, n, Duration::from_secs(60))
            .await;
    }
    until("alpha's notification", Duration::from_secs(60), || async {
        (!hook.deliveries().is_empty()).then_some(())
    })
    .await;
    let federate_all = format!("/federate?match[]={}", enc(r#"{__name__=~".+"}"#));
    until("alpha's metrics", Duration::from_secs(60), || async {
        let (st, body) = collector.get(&federate_all, &op_a).await;
        (st == 200 && body.contains("subscription=\"alpha\"")).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let q = |query: &str| enc(query);
    let endpoints: Vec<(String, bool)> = vec![
        // (path, whether alpha's own token must see alpha in the answer)
        (
            format!("/api/v1/logs?since=1h&limit=5000&query={}", q("{}")),
            true,
        ),
        (
            format!(
                "/api/v1/logs?since=1h&query={}",
                q(r#"{subscription="alpha"}"#)
            ),
            true,
        ),
        (
            format!(
                "/api/v1/logs?since=1h&query={}",
                q(r#"{source=~"alpha.*"}"#)
            ),
            true,
        ),
        (
            format!(
                "/api/v1/logs?since=1h&query={}",
                q(r#"{kind="execution"} |= "alpha""#)
            ),
            true,
        ),
        (
            format!("/api/v1/logs?since=1h&query={}&subscription=alpha", q("{}")),
            true,
        ),
        (
            format!(
                "/loki/api/v1/query_range?since=1h&limit=5000&query={}",
                q("{}")
            ),
            true,
        ),
        (
            format!(
                "/loki/api/v1/query_range?since=1h&query={}",
                q(r#"{subscription="alpha"} | json"#)
            ),
            true,
        ),
        ("/loki/api/v1/labels?since=1h".into(), false),
        ("/loki/api/v1/label/subscription/values".into(), true),
        ("/loki/api/v1/label/source/values".into(), true),
        ("/loki/api/v1/label/pipe/values".into(), true),
        ("/loki/api/v1/label/event_type/values".into(), false),
        (
            format!(
                "/loki/api/v1/label/source/values?query={}",
                q(r#"{subscription="alpha"}"#)
            ),
            true,
        ),
        ("/api/v1/sources".into(), true),
        ("/api/v1/sources?subscription=alpha".into(), true),
        ("/api/v1/alerts".into(), true),
        ("/api/v1/alerts?subscription=alpha".into(), true),
        ("/api/v1/notifications".into(), true),
        ("/api/v1/notifications?subscription=alpha".into(), true),
        ("/api/v1/notification-rules".into(), true),
        ("/api/v1/notification-rules?subscription=alpha".into(), true),
        ("/api/v1/receivers".into(), true),
        ("/api/v1/receivers?subscription=alpha".into(), true),
        ("/api/v1/silences".into(), true),
        ("/api/v1/silences?subscription=alpha".into(), true),
        (federate_all.clone(), true),
        (
            format!("/federate?match[]={}", q(r#"{subscription="alpha"}"#)),
            true,
        ),
        (
            format!("/federate?match[]={}", q(r#"{instance="alpha-metrics"}"#)),
            true,
        ),
    ];
    for (path, alpha_sees_itself) in &endpoints {
        let (st, body) = collector.get(path, &op_b).await;
        // A refusal may echo the request (which names alpha); an answer
        // must not contain anything of alpha.
        assert!(st == 200 || st == 403, "GET {path} as bravo: {st} {body}");
        assert!(
            st != 200 || !body.to_lowercase().contains("alpha"),
            "GET {path} as bravo shows alpha's data: {body}"
        );
        let (st_a, body_a) = collector.get(path, &op_a).await;
        assert!(
            st_a == 200 || st_a == 403,
            "GET {path} as alpha: {st_a} {body_a}"
        );
        if *alpha_sees_itself && st_a == 200 {
            assert!(
                body_a.contains("alpha"),
                "GET {path} as alpha shows nothing of alpha: {body_a}"
            );
        }
        eprintln!(
            "GET {path}: bravo {st} ({} bytes), alpha {st_a} ({} bytes)",
            body.len(),
            body_a.len()
        );
    }

    // Label values are exactly bravo's own.
    for (label, want) in [
        ("subscription", json!([B])),
        ("source", json!([B_HOST])),
        ("pipe", json!([])),
        ("event_type", json!([])),
        ("kind", json!(["system"])),
    ] {
        let v = collector
            .get_json(&format!("/loki/api/v1/label/{label}/values"), &op_b)
            .await;
        assert_eq!(v["data"], want, "bravo's values of label {label}");
    }
    let sources = collector.get_json("/api/v1/sources", &op_b).await;
    let names: Vec<&str> = sources["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["source"].as_str())
        .collect();
    assert_eq!(names, vec![B_HOST]);
    let logs = collector
        .search(&op_b, "{}")
        .await
        .into_iter()
        .map(|r| r["subscription"].clone())
        .collect::<Vec<Value>>();
    assert_eq!(logs.len(), 100, "bravo sees its own 100 lines");
    assert!(logs.iter().all(|s| s == B));

    // By id / name: alpha's objects look exactly like missing ones.
    for (theirs, missing) in [
        (
            format!("/api/v1/notification-rules/{rule_a}"),
            "/api/v1/notification-rules/no-such-rule".to_string(),
        ),
        (
            "/api/v1/receivers/alpha-ops".to_string(),
            "/api/v1/receivers/nobody-ops".to_string(),
        ),
    ] {
        let (st, body) = collector.get(&theirs, &op_b).await;
        let (st_missing, _) = collector.get(&missing, &op_b).await;
        assert_eq!(st, st_missing, "GET {theirs} as bravo: {body}");
        assert!(st == 404 || st == 403, "GET {theirs} as bravo: {st} {body}");
        let (st_a, _) = collector.get(&theirs, &op_a).await;
        assert_eq!(st_a, 200, "GET {theirs} as alpha");
    }
    // The admin sees both, so both really are there.
    let all = collector
        .get_json("/api/v1/sources", ADMIN)
        .await
        .to_string();
    assert!(all.contains(A_NODE) && all.contains(B_HOST));

    hook.assert_exactly(&[("firing", A_NODE, A_PIPE)]);
    agent.kill();
    for s in &mut shippers {
        s.stop();
    }
    node.stop();
    collector.stop();
}

//! Every metric name the Grafana dashboard (deploy/grafana/) queries is one
//! the running system exposes: the collector's `/metrics` and `/federate`,
//! the node's `/api/metrics` (with its in-process shipper) and the agent's
//! `/metrics`, all started here.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use metrics_agent::{AgentConfig, Listen, PushProtocol, PushTarget, ScrapeTarget};
use tokio_util::sync::CancellationToken;

const KEYWORDS: [&str; 14] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
    "atan2",
];

/// Removes `open ... close` spans (nesting-aware) from `s`.
fn strip(s: &str, open: char, close: char) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in s.chars() {
        if c == open {
            depth += 1;
        } else if c == close && depth > 0 {
            depth -= 1;
        } else if depth == 0 {
            out.push(c);
        }
    }
    out
}

fn strip_strings(s: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in s.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '"' || c == '\'' || c == '`' => quote = Some(c),
            None => out.push(c),
        }
    }
    out
}

/// Metric names a PromQL expression (or a Grafana `label_values(...)`
/// variable query) refers to.
fn promql_names(expr: &str) -> BTreeSet<String> {
    let mut e = strip_strings(expr);
    if let Some(inner) = e.trim().strip_prefix("label_values(") {
        // label_values(selector, label): the label is not a metric.
        e = inner
            .rsplit_once(',')
            .map(|(sel, _)| sel.to_string())
            .unwrap_or_default();
    }
    let e = strip(&strip(&e, '{', '}'), '[', ']');
    // Grouping clauses list labels: by (pipe), on (instance), ...
    let mut cleaned = String::new();
    let mut rest = e.as_str();
    'outer: while !rest.is_empty() {
        for kw in [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ] {
            if let Some(after) = rest.strip_prefix(kw) {
                let boundary_before = cleaned
                    .chars()
                    .last()
                    .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
                let t = after.trim_start();
                if boundary_before && t.starts_with('(') {
                    let close = t.find(')').map_or(t.len(), |i| i + 1);
                    rest = &t[close..];
                    cleaned.push(' ');
                    continue 'outer;
                }
            }
        }
        let c = rest.chars().next().unwrap();
        cleaned.push(c);
        rest = &rest[c.len_utf8()..];
    }
    let mut out = BTreeSet::new();
    let b = cleaned.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &cleaned[start..i];
            let var = start > 0 && b[start - 1] == b'$';
            let call = cleaned[i..].trim_start().starts_with('(');
            if !var && !call && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                out.insert(word.to_string());
            }
        } else if c.is_ascii_digit() || c == b'.' {
            // A number (or a duration like 5m after stripping): skip it whole.
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Every expression of a dashboard: panel targets and variable queries.
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::Object(q)) => {
                        if let Some(s) = q.get("query").and_then(|s| s.as_str()) {
                            out.push(s.to_string());
                        }
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

fn missing(queries: &[String], exposed: &BTreeSet<String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for q in queries {
        for n in promql_names(q) {
            if !exposed.contains(&n) {
                out.push((n, q.clone()));
            }
        }
    }
    out
}

#[test]
fn promql_names_are_extracted() {
    let q = r#"histogram_quantile(0.99, sum by (le) (rate(collector_ingest_commit_duration_seconds_bucket{job=~"$j"}[5m]))) + on (instance) group_left(pipe) node_load1 offset 5m - 1e3"#;
    let want: BTreeSet<String> = [
        "collector_ingest_commit_duration_seconds_bucket",
        "node_load1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(promql_names(q), want);
    assert_eq!(
        promql_names(r#"label_values(node_load1{subscription=~"$subscription"}, instance)"#),
        ["node_load1".to_string()].into_iter().collect()
    );
    assert_eq!(
        promql_names("time() - sesam_pump_last_completed_time"),
        ["sesam_pump_last_completed_time".to_string()]
            .into_iter()
            .collect()
    );
    // A misspelt name is reported.
    let exposed: BTreeSet<String> = ["node_load1".to_string()].into_iter().collect();
    let m = missing(&["node_load1 + node_laod5".to_string()], &exposed);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].0, "node_laod5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exposed() {
    let path = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../deploy/grafana/sesam-overview.json");
    let dash: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read dashboard"))
            .expect("dashboard is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dash, &mut queries);
    assert!(queries.len() >= 30, "{} queries found", queries.len());

    let dir = tempfile::tempdir().unwrap();
    // Counters that only appear once something went wrong are made to
    // appear: the node starts while its collector is still down (send
    // failures) with a tiny drop-oldest outbox (drops), then the collector
    // comes up on the address the node was given.
    let port = free_port();
    let node = Node::start_with(dir.path(), Some(format!("http://127.0.0.1:{port}")), |c| {
        c.outbox.max_records = std::num::NonZeroU64::new(3).unwrap();
        c.outbox.when_full = shipper::WhenFull::DropOldest;
    })
    .await;
    node.run_pipes().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let collector = Collector::start_at(dir.path(), port).await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_addr = l.local_addr().unwrap();
    let mut c = AgentConfig::new("vm-dash", "acme");
    c.interval = Duration::from_millis(200);
    c.listen = Some(Listen::Listener(l));
    c.push = Some(PushTarget {
        protocol: PushProtocol::RemoteWrite,
        url: collector.url("/api/v1/write"),
        token: Some(SHIP_ACME.into()),
    });
    let mut t = ScrapeTarget::parse(&format!("sesam-node={}", node.url("/api/metrics"))).unwrap();
    t.token = Some(NODE_TOKEN.into());
    c.scrape.push(t);
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(metrics_agent::run(c, shutdown.clone()));

    let client = reqwest::Client::new();
    // A refused log ingest and a refused (NaN) metrics sample.
    let r = client
        .post(collector.url("/api/v1/ingest"))
        .bearer_auth("wrong-token")
        .body(vec![0u8])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let nan = metrics_agent::remote_write::WriteRequest {
        timeseries: vec![metrics_agent::remote_write::TimeSeries {
            labels: vec![metrics_agent::remote_write::Label {
                name: "__name__".into(),
                value: "broken_gauge".into(),
            }],
            samples: vec![metrics_agent::remote_write::Sample {
                value: f64::NAN,
                timestamp: 1,
            }],
            histograms: Vec::new(),
        }],
        metadata: vec![],
    };
    let body = snap::raw::Encoder::new()
        .compress_vec(&prost::Message::encode_to_vec(&nan))
        .unwrap();
    let r = client
        .post(collector.url("/api/v1/write"))
        .bearer_auth(SHIP_ACME)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let federate = format!(
        "{}?match[]=%7B__name__%3D~%22.%2B%22%7D",
        collector.url("/federate")
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut fed = String::new();
    while Instant::now() < deadline {
        fed = get_text(&client, &federate, Some(OP_ACME)).await;
        if fed.contains("sesam_pump_failed_total")
            && fed.contains("shipper_lag_seconds")
            && fed.contains("shipper_send_failures_total")
            && fed.contains("outbox_records_dropped_total")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut exposed = exposed_names(&fed);
    for (url, token) in [
        (collector.url("/metrics"), None),
        (node.url("/api/metrics"), Some(NODE_TOKEN)),
        (format!("http://{agent_addr}/metrics"), None),
    ] {
        exposed.extend(exposed_names(&get_text(&client, &url, token).await));
    }
    let missing = missing(&queries, &exposed);
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics nothing exposes: {missing:#?}"
    );
    // The names the issue lists for the dashboard are really used.
    let used: BTreeSet<String> = queries.iter().flat_map(|q| promql_names(q)).collect();
    for n in [
        "node_memory_MemAvailable_bytes",
        "node_filesystem_avail_bytes",
        "node_cpu_seconds_total",
        "sesam_pump_completed_total",
        "sesam_pump_failed_total",
        "shipper_lag_seconds",
        "outbox_records",
        "collector_ingest_records_total",
    ] {
        assert!(used.contains(n), "dashboard does not show {n}");
    }
    shutdown.cancel();
    let _ = agent.await;
    node.stop().await;
    collector.stop().await;
}

//! The Loki API Grafana uses, over real HTTP: metric queries in the
//! `matrix` and `vector` shapes, `series`, `index/stats`, `index/volume`,
//! the live tail over a real WebSocket client, the limits each answers
//! with a 400 naming the field, and tenant isolation on every one.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::{SinkExt, StreamExt};
use schemas::EventType;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const S: i64 = 1_000_000_000;

/// acme: 3 log records + 2 pump-failed + 1 pump-completed of pipe orders in
/// the minute from `t0`; beta: 4 log records in the same minute.
async fn seed(h: &Harness, t0: i64) {
    let mut recs: Vec<_> = (1..=3)
        .map(|s| {
            log_record(
                "acme",
                "node-1",
                s,
                t0 + s as i64 * S,
                &format!("hello {s}"),
            )
        })
        .collect();
    recs.push(exec_record(
        "acme",
        "node-1",
        4,
        t0 + 10 * S,
        "orders",
        EventType::PumpFailed,
        None,
    ));
    recs.push(exec_record(
        "acme",
        "node-1",
        5,
        t0 + 20 * S,
        "orders",
        EventType::PumpFailed,
        None,
    ));
    recs.push(exec_record(
        "acme",
        "node-1",
        6,
        t0 + 30 * S,
        "orders",
        EventType::PumpCompleted,
        Some(150),
    ));
    h.ingest_ok(SHIP_ACME, &batch("acme", "node-1", recs)).await;
    let beta: Vec<_> = (1..=4)
        .map(|s| log_record("beta", "node-b", s, t0 + s as i64 * S, "secret beta line"))
        .collect();
    h.ingest_ok(SHIP_BETA, &batch("beta", "node-b", beta)).await;
}

fn values(series: &Value) -> Vec<(f64, f64)> {
    series["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|p| {
            (
                p[0].as_f64().expect("time is a number"),
                p[1].as_str()
                    .expect("value is a string")
                    .parse()
                    .expect("number"),
            )
        })
        .collect()
}

#[tokio::test]
async fn metric_queries_answer_lokis_matrix_and_vector() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start(dir.path()).await;
    // A minute boundary 10 minutes ago.
    let t0 = (now() / (60 * S) - 10) * 60 * S;
    seed(&h, t0).await;
    let start = t0.to_string();
    let end = (t0 + 2 * 60 * S).to_string();

    // Grafana's log-volume histogram.
    let (status, body) = h
        .get_json(
            OP_ACME,
            "/loki/api/v1/query_range",
            &[
                (
                    "query",
                    r#"sum by (level) (count_over_time({subscription="acme"}[1m]))"#,
                ),
                ("start", &start),
                ("end", &end),
                ("step", "60s"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "success");
    assert_eq!(body["data"]["resultType"], "matrix");
    let result = body["data"]["result"].as_array().expect("result");
    let by_level: std::collections::BTreeMap<String, Vec<(f64, f64)>> = result
        .iter()
        .map(|s| {
            assert_eq!(s["metric"].as_object().expect("metric").len(), 1, "{s}");
            (
                s["metric"]["level"].as_str().expect("level").to_string(),
                values(s),
            )
        })
        .collect();
    // Every record is in (t0, t0 + 60 s]: the step at t0 + 60 s holds them.
    let t1 = (t0 + 60 * S) as f64 / 1e9;
    assert_eq!(by_level["INFO"], vec![(t1, 4.0)], "{body}");
    assert_eq!(by_level["ERROR"], vec![(t1, 2.0)], "{body}");
    assert_eq!(by_level.len(), 2, "{body}");

    // rate, bytes and an unwrapped field; instant vector.
    let (status, body) = h
        .get_json(
            OP_ACME,
            "/loki/api/v1/query",
            &[
                ("query", r#"sum(sum_over_time({pipe="orders"} | json | unwrap metrics_entities_changes_last_run [5m]))"#),
                ("time", &(t0 + 60 * S).to_string()),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["resultType"], "vector");
    let v = &body["data"]["result"][0]["value"];
    assert_eq!(v[0].as_f64(), Some(t1), "{body}");
    assert_eq!(v[1], "150", "{body}");

    let (status, body) = h
        .get_json(
            OP_ACME,
            "/loki/api/v1/query",
            &[
                (
                    "query",
                    r#"rate({subscription="acme", pipe="orders"} |= "timeout" [1m])"#,
                ),
                ("time", &(t0 + 60 * S).to_string()),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let r = body["data"]["result"].as_array().expect("result");
    assert_eq!(r.len(), 1, "one stream (pump-failed) has the word: {body}");
    assert_eq!(r[0]["metric"]["event_type"], "pump-failed");
    let rate: f64 = r[0]["value"][1].as_str().expect("v").parse().expect("f");
    assert!((rate - 2.0 / 60.0).abs() < 1e-9, "{body}");

    // topk keeps the series' labels.
    let (status, body) = h
        .get_json(
            OP_ACME,
            "/loki/api/v1/query",
            &[
                (
                    "query",
                    r#"topk(1, bytes_over_time({subscription="acme"}[1m]))"#,
                ),
                ("time", &(t0 + 60 * S).to_string()),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let r = body["data"]["result"].as_array().expect("result");
    assert_eq!(r.len(), 1, "{body}");
    assert_eq!(r[0]["metric"]["subscription"], "acme");

    // A log query on /query answers streams.
    let (status, body) = h
        .get_json(
            OP_ACME,
            "/loki/api/v1/query",
            &[("query", r#"{pipe="orders"}"#), ("since", "1h")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["resultType"], "streams");

    // The other tenant's numbers never show: its records are in beta.
    let (status, body) = h
        .get_json(
            OP_BETA,
            "/loki/api/v1/query_range",
            &[
                (
                    "query",
                    r#"sum(count_over_time({subscription="acme"}[1m]))"#,
                ),
                ("start", &start),
                ("end", &end),
                ("step", "60"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["result"], serde_json::json!([]), "{body}");
    let (status, body) = h
        .get_json(
            OP_BETA,
            "/loki/api/v1/query_range",
            &[
                ("query", r#"sum(count_over_time({kind="log"}[1m]))"#),
                ("start", &start),
                ("end", &end),
                ("step", "1m"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        values(&body["data"]["result"][0]),
        vec![(t1, 4.0)],
        "{body}"
    );

    // Bounds and errors name the field.
    for (q, step, field, needle) in [
        (
            r#"count_over_time({subscription="acme"}[1m])"#,
            "0",
            "step",
            "positive",
        ),
        (
            r#"count_over_time({subscription="acme"}[1m])"#,
            "1ms",
            "step",
            "11000",
        ),
        (
            r#"count_over_time({subscription="acme"}[1m])"#,
            "soon",
            "step",
            "cannot parse",
        ),
        (
            r#"count_over_time({subscription="acme"})"#,
            "60",
            "query",
            "range",
        ),
        (
            r#"count_over_time({subscription="acme"}[40d])"#,
            "60",
            "query",
            "31 days",
        ),
        (
            r#"sum_over_time({subscription="acme"}[1m])"#,
            "60",
            "query",
            "unwrap",
        ),
        (
            r#"topk(0, count_over_time({subscription="acme"}[1m]))"#,
            "60",
            "query",
            "k",
        ),
    ] {
        let (status, body) = h
            .get_json(
                OP_ACME,
                "/loki/api/v1/query_range",
                &[
                    ("query", q),
                    ("start", &start),
                    ("end", &end),
                    ("step", step),
                ],
            )
            .await;
        assert_eq!(status, 400, "{q} step {step}: {body}");
        assert_eq!(body["field"], field, "{q}: {body}");
        assert!(
            body["error"].as_str().expect("error").contains(needle),
            "{q}: {body}"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn series_limit_and_scan_limit_are_400_naming_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start_with(dir.path(), |c| {
        c.read.max_series = 2;
        c.read.max_scanned_bytes = 100;
    })
    .await;
    let t0 = (now() / (60 * S) - 10) * 60 * S;
    seed(&h, t0).await;
    let (status, body) = h
        .get_json(
            OP_ACME,
            "/loki/api/v1/query",
            &[
                (
                    "query",
                    r#"count_over_time({subscription="acme"} |= "o" [5m])"#,
                ),
                ("time", &(t0 + 60 * S).to_string()),
            ],
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .expect("e")
            .contains("--max-query-scan-bytes"),
        "{body}"
    );
    assert_eq!(body["reason"], "scan_limit");
    assert_eq!(body["limit"], 100);
    // A search hits the same limit.
    let (status, body) = h
        .get_json(
            OP_ACME,
            "/api/v1/logs",
            &[
                ("query", r#"{subscription="acme"} |= "zzz""#),
                ("since", "1h"),
            ],
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["reason"], "scan_limit");
    h.stop().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start_with(dir.path(), |c| c.read.max_series = 2).await;
    seed(&h, t0).await;
    let (status, body) = h
        .get_json(
            OP_ACME,
            "/loki/api/v1/query",
            &[
                ("query", r#"count_over_time({subscription="acme"}[5m])"#),
                ("time", &(t0 + 60 * S).to_string()),
            ],
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .expect("e")
            .contains("--max-query-series"),
        "{body}"
    );
    assert_eq!(body["reason"], "too_many_series");
    h.stop().await;
}

#[tokio::test]
async fn series_index_stats_and_volume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start(dir.path()).await;
    let t0 = (now() / (60 * S) - 10) * 60 * S;
    seed(&h, t0).await;
    let start = t0.to_string();
    let end = (t0 + 2 * 60 * S).to_string();
    let r = h
        .client
        .get(h.url("/loki/api/v1/series"))
        .bearer_auth(OP_ACME)
        .query(&[
            ("match[]", r#"{pipe="orders"}"#),
            ("match[]", r#"{kind="log"}"#),
            ("start", start.as_str()),
            ("end", end.as_str()),
        ])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), 3, "2 orders streams + 1 log stream: {body}");
    assert!(data.iter().all(|s| s["subscription"] == "acme"), "{body}");
    // An admin's view spans subscriptions.
    let (status, body) = h
        .get_json(
            ADMIN,
            "/loki/api/v1/series",
            &[
                ("match[]", r#"{kind="log"}"#),
                ("start", &start),
                ("end", &end),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().expect("data").len(), 2, "{body}");
    let many: Vec<(&str, &str)> = (0..65).map(|_| ("match[]", "{}")).collect();
    let (status, body) = h.get_json(OP_ACME, "/loki/api/v1/series", &many).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("match[]")),
        "{body}"
    );
    assert_eq!(body["limit"], 64, "{body}");
    let (status, body) = h.get_json(OP_ACME, "/loki/api/v1/series", &[]).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("match[]")),
        "{body}"
    );

    let (status, body) = h
        .get_json(
            OP_ACME,
            "/loki/api/v1/index/stats",
            &[
                ("query", r#"{subscription="acme"}"#),
                ("start", &start),
                ("end", &end),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["streams"], 3, "{body}");
    assert_eq!(body["entries"], 6, "{body}");
    assert!(body["bytes"].as_u64().expect("bytes") > 100, "{body}");
    assert!(body["chunks"].as_u64().expect("chunks") >= 3, "{body}");
    // beta's view of the same selector is its own.
    let (_, body) = h
        .get_json(
            OP_BETA,
            "/loki/api/v1/index/stats",
            &[
                ("query", r#"{kind="log"}"#),
                ("start", &start),
                ("end", &end),
            ],
        )
        .await;
    assert_eq!(body["entries"], 4, "{body}");

    let (status, body) = h
        .get_json(
            OP_ACME,
            "/loki/api/v1/index/volume",
            &[
                ("query", r#"{subscription="acme"}"#),
                ("start", &start),
                ("end", &end),
                ("targetLabels", "kind"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["resultType"], "vector");
    let r = body["data"]["result"].as_array().expect("result");
    assert_eq!(r.len(), 2, "log and execution: {body}");
    let kinds: Vec<&str> = r
        .iter()
        .map(|x| x["metric"]["kind"].as_str().expect("kind"))
        .collect();
    assert!(
        kinds.contains(&"log") && kinds.contains(&"execution"),
        "{body}"
    );
    let b0: f64 = r[0]["value"][1].as_str().expect("v").parse().expect("f");
    let b1: f64 = r[1]["value"][1].as_str().expect("v").parse().expect("f");
    assert!(b0 >= b1, "largest first: {body}");
    let (status, body) = h
        .get_json(
            OP_ACME,
            "/loki/api/v1/index/volume",
            &[("query", r#"{subscription="acme"}"#), ("limit", "0")],
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("limit")),
        "{body}"
    );
    h.stop().await;
}

/// A tail request with `token` for `query` (and `extra` query text).
fn tail_request(
    h: &Harness,
    token: &str,
    query: &str,
    extra: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut url = reqwest::Url::parse(&format!("ws://{}/loki/api/v1/tail", h.addr)).expect("url");
    url.query_pairs_mut().append_pair("query", query);
    let mut req = format!("{url}{extra}")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    req
}

async fn connect(
    h: &Harness,
    token: &str,
    query: &str,
    extra: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    tokio_tungstenite::connect_async(tail_request(h, token, query, extra))
        .await
        .expect("connect")
        .0
}

/// Lines of the tail messages received within `wait`, until `want` lines.
async fn lines(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    want: usize,
    wait: Duration,
) -> Vec<(Value, String)> {
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    while out.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(msg)) = tokio::time::timeout(left, ws.next()).await else {
            break;
        };
        if let Message::Text(t) = msg.expect("message") {
            let v: Value = serde_json::from_str(&t).expect("json");
            for s in v["streams"].as_array().expect("streams") {
                for e in s["values"].as_array().expect("values") {
                    out.push((
                        s["stream"].clone(),
                        e[1].as_str().expect("line").to_string(),
                    ));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn live_tail_over_websocket_sends_history_then_new_records_of_its_tenant_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start_with(dir.path(), |c| c.tail.max_tails_per_subscription = 2).await;
    let t0 = now() - 60 * S;
    seed(&h, t0).await;
    let mut ws = connect(&h, OP_ACME, r#"{kind="log"} |= "hello""#, "&limit=2").await;
    // History: the newest 2 matching records, oldest first.
    let got = lines(&mut ws, 2, Duration::from_secs(5)).await;
    let msgs: Vec<&str> = got.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(msgs.len(), 2, "{got:?}");
    assert!(
        msgs[0].contains("hello 2") && msgs[1].contains("hello 3"),
        "{msgs:?}"
    );
    // A beta tail of the same query sees none of acme's lines.
    let mut beta = connect(&h, OP_BETA, r#"{kind="log"}"#, "&limit=0").await;

    // New records arrive within a second of being stored.
    let stored = Instant::now();
    let recs = vec![
        log_record("acme", "node-1", 100, now(), "hello live"),
        log_record("acme", "node-1", 101, now(), "bye live"),
    ];
    h.ingest_ok(SHIP_ACME, &batch("acme", "node-1", recs)).await;
    let got = lines(&mut ws, 1, Duration::from_secs(5)).await;
    let took = stored.elapsed();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].1.contains("hello live"), "{got:?}");
    assert_eq!(got[0].0["subscription"], "acme");
    assert!(took < Duration::from_secs(1), "tail took {took:?}");
    h.ingest_ok(
        SHIP_BETA,
        &batch(
            "beta",
            "node-b",
            vec![log_record("beta", "node-b", 50, now(), "beta live")],
        ),
    )
    .await;
    let got = lines(&mut beta, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].1.contains("beta live"),
        "beta sees only its own: {got:?}"
    );
    assert_eq!(got[0].0["subscription"], "beta");
    // And acme's tail got nothing of beta's.
    assert!(lines(&mut ws, 1, Duration::from_millis(300))
        .await
        .is_empty());

    // Per-subscription limit: acme has one open; a second is fine, a
    // third is refused with 429 naming the flag.
    let _second = connect(&h, OP_ACME, r#"{kind="log"}"#, "").await;
    let req = tail_request(&h, OP_ACME, r#"{kind="log"}"#, "");
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429);
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().expect("body")).expect("json");
            assert!(
                body["error"]
                    .as_str()
                    .expect("e")
                    .contains("--max-tails-per-subscription"),
                "{body}"
            );
        }
        other => panic!("expected 429, got {:?}", other.map(|x| x.1.status())),
    }
    // Closing a tail frees its place.
    ws.close(None).await.expect("close");
    drop(ws);
    let mut reopened = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let req = tail_request(&h, OP_ACME, r#"{kind="log"}"#, "");
        if let Ok((s, _)) = tokio_tungstenite::connect_async(req).await {
            reopened = Some(s);
            break;
        }
    }
    assert!(reopened.is_some(), "a closed tail's place was not freed");

    // Bad input: a bad query is a 400 before the upgrade; no token is 401.
    let (status, body) = h
        .get_json(OP_ACME, "/loki/api/v1/tail", &[("query", "{kind=")])
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = h
        .get_json("nope", "/loki/api/v1/tail", &[("query", "{}")])
        .await;
    assert_eq!(status, 401);
    let (status, body) = h
        .get_json(
            OP_ACME,
            "/loki/api/v1/tail",
            &[("query", "{}"), ("delay_for", "60")],
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("delay_for")),
        "{body}"
    );
    let _ = beta.send(Message::Close(None)).await;
    h.stop().await;
}

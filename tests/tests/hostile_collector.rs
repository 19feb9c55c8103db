//! Hostile tenants against the real `sesam-collector` (issue #9): each
//! attack of the issue is mounted and the collector must refuse it at the
//! edge, with a 4xx naming the field and the limit, while another tenant
//! (or peer) keeps being served and nothing accepted is lost.
//!
//! Tenants: `acme` plays the attacker, `beta` the neighbour. Peers are
//! loopback addresses: `127.0.0.3` floods, `127.0.0.2` is the innocent
//! one (the harness itself talks from `127.0.0.1`).

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::collector::{operator_token, shipper_token, Collector, ADMIN};
use e2e::hostile::{
    batch, client_from, connect_from, log, metrics_text, post_batch, post_remote_write,
    read_until_closed, remote_write, sample, stalled_upload, write_tokens,
};
use e2e::process::bin;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const A: &str = "acme";
const B: &str = "beta";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn addr(c: &Collector) -> SocketAddr {
    SocketAddr::new(ip("127.0.0.1"), c.port)
}

fn now() -> i64 {
    schemas::time::now_nanos()
}

async fn started(root: &std::path::Path, args: &[&str]) -> Collector {
    let mut c = Collector::new(root, &[A, B]);
    c.args = args.iter().map(|s| s.to_string()).collect();
    c.start().await;
    c
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_and_idle_connections_are_closed_after_their_timeouts() {
    let dir = e2e::scratch();
    let mut c = started(
        dir.path(),
        &["--header-read-timeout", "1s", "--idle-timeout", "2s"],
    )
    .await;
    let peer = ip("127.0.0.2");
    // Half a request head, then nothing; and a connection that never speaks.
    let mut half = connect_from(peer, addr(&c)).await.expect("connect");
    half.write_all(b"POST /api/v1/ingest HTTP/1.1\r\nhost: x\r\nauthoriz")
        .await
        .expect("write");
    let mut silent = connect_from(peer, addr(&c)).await.expect("connect");
    let t = Instant::now();
    for (what, s) in [
        ("half-sent head", &mut half),
        ("silent connection", &mut silent),
    ] {
        let (_, closed) = read_until_closed(s, Duration::from_secs(10)).await;
        assert!(closed, "{what}: still open after 10 s");
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}, want about 1 s"
    );
    // A keep-alive connection idle after its answer goes after 2 s.
    let mut idle = connect_from(peer, addr(&c)).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let t = Instant::now();
    let (answer, closed) = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(closed, "idle connection still open after 10 s");
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t.elapsed()
    );
    // The server is fine, and it counted what it closed.
    let client = client_from(peer);
    let text = metrics_text(&client, &c.url, None).await;
    assert!(
        sample(
            &text,
            r#"collector_connections_closed_total{reason="header_timeout"}"#
        )
        .is_some_and(|v| v >= 2.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"collector_connections_closed_total{reason="idle_timeout"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    c.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_flood_past_the_peer_limit_is_refused_while_another_peer_is_served() {
    let dir = e2e::scratch();
    let mut c = started(
        dir.path(),
        &[
            "--max-connections-per-peer",
            "20",
            "--header-read-timeout",
            "60s",
        ],
    )
    .await;
    let flood = ip("127.0.0.3");
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(connect_from(flood, addr(&c)).await.expect("connect"));
    }
    // Past the limit: answered 429 at once and closed.
    let t = Instant::now();
    let mut refused = 0;
    for _ in 0..200 {
        let Ok(mut s) = connect_from(flood, addr(&c)).await else {
            continue;
        };
        let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(closed, "a connection past the limit stays open");
        assert!(text.starts_with("HTTP/1.1 429"), "{text}");
        assert!(text.contains("--max-connections-per-peer"), "{text}");
        refused += 1;
    }
    assert_eq!(refused, 200);
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    // Another peer is served normally, ingest included.
    let other = client_from(ip("127.0.0.2"));
    let r = other
        .get(format!("{}/healthz", c.url))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
    let (status, body, _) = post_batch(
        &other,
        &c.url,
        &shipper_token(B),
        &batch(B, "b1", "e", vec![log(B, "b1", 1, now(), "hello", None)]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let text = metrics_text(&other, &c.url, None).await;
    assert!(
        sample(
            &text,
            r#"collector_connections_refused_total{reason="peer_limit"}"#
        )
        .is_some_and(|v| v >= 200.0),
        "{text}"
    );
    drop(held);
    c.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_of_one_tenant_do_not_make_anothers_ingest_429() {
    let dir = e2e::scratch();
    let mut c = started(
        dir.path(),
        &["--body-grace", "4s", "--body-min-rate", "1000"],
    )
    .await;
    // 16 uploads of acme that send a little and stall: the issue's attack
    // held all 16 ingest slots with these.
    let mut stalled = Vec::new();
    for _ in 0..16 {
        stalled.push(
            stalled_upload(ip("127.0.0.3"), addr(&c), &shipper_token(A), 100_000, 1000).await,
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = client_from(ip("127.0.0.2"));
    let mut times = Vec::new();
    for i in 0..20u64 {
        let (status, body, took) = post_batch(
            &client,
            &c.url,
            &shipper_token(B),
            &batch(
                B,
                "b1",
                "e",
                vec![log(B, "b1", i + 1, now(), "steady", None)],
            ),
        )
        .await;
        assert_eq!(status, 200, "beta's ingest {i}: {body}");
        times.push(took);
    }
    let worst = times.iter().max().copied().unwrap_or_default();
    assert!(
        worst < Duration::from_secs(2),
        "beta's slowest ingest {worst:?}"
    );
    // The stalled uploads are cut by the rate deadline (408), not kept.
    let (answer, _) = read_until_closed(&mut stalled[0], Duration::from_secs(20)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("--body-min-rate"), "{text}");
    let m = metrics_text(&client, &c.url, Some(ADMIN)).await;
    assert!(
        sample(
            &m,
            r#"collector_tenant_refusals_total{subscription="acme",reason="body_timeout"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "{m}"
    );
    c.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_bombs_are_refused_fast_with_400_naming_the_field_and_limit() {
    let dir = e2e::scratch();
    let mut c = started(dir.path(), &[]).await;
    let client = reqwest::Client::new();
    let op = operator_token(A);
    // 700 line filters.
    let q = format!("{{source=\"n\"}}{}", " |= \"needle\"".repeat(700));
    let t = Instant::now();
    let r = client
        .get(format!("{}/api/v1/logs", c.url))
        .query(&[("query", q.as_str())])
        .bearer_auth(&op)
        .send()
        .await
        .expect("logs");
    let took = t.elapsed();
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("json");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "query");
    assert_eq!(body["reason"], "too_many_stages");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("at most 64 stages") && e.contains("--max-query-stages")),
        "{body}"
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    // Regexes that each pass but together exceed the request's budget.
    let q = format!("{{}}{}", r#" |~ "\\w{30}\\d+""#.repeat(60));
    let r = client
        .get(format!("{}/api/v1/logs", c.url))
        .query(&[("query", q.as_str())])
        .bearer_auth(&op)
        .send()
        .await
        .expect("logs");
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["reason"], "regex_budget", "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("--max-query-regex-bytes")),
        "{body}"
    );
    // 1,000 match[] on /federate.
    let query: String = (0..1000)
        .map(|i| format!("match[]=metric_{i}"))
        .collect::<Vec<_>>()
        .join("&");
    let t = Instant::now();
    let r = client
        .get(format!("{}/federate?{query}", c.url))
        .bearer_auth(&op)
        .send()
        .await
        .expect("federate");
    let took = t.elapsed();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["field"], "match[]");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("1000 match[]") && e.contains("--max-federate-selectors")),
        "{body}"
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    let m = metrics_text(&client, &c.url, Some(ADMIN)).await;
    assert!(
        sample(
            &m,
            r#"collector_tenant_refusals_total{subscription="acme",reason="query_limit"}"#
        )
        .is_some_and(|v| v >= 3.0),
        "{m}"
    );
    c.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_of_large_lines_stop_at_the_byte_budget_and_memory_stays_bounded() {
    let dir = e2e::scratch();
    let mut c = started(dir.path(), &[]).await;
    let client = reqwest::Client::new();
    // 300 lines of 200 KiB (60 MB).
    let big = "x".repeat(200 << 10);
    let t0 = now() - 60_000_000_000;
    for b in 0..15u64 {
        let records = (0..20u64)
            .map(|i| {
                let seq = b * 20 + i + 1;
                log(A, "big", seq, t0 + seq as i64 * 1_000_000, &big, None)
            })
            .collect();
        let (status, body, _) = post_batch(
            &client,
            &c.url,
            &shipper_token(A),
            &batch(A, "big", "e", records),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    // 4 concurrent queries asking for 1,000 lines each (200 MB each).
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (client, url, op) = (client.clone(), c.url.clone(), operator_token(A));
        tasks.push(tokio::spawn(async move {
            let r = client
                .get(format!("{url}/api/v1/logs"))
                .query(&[
                    ("query", "{source=\"big\"}"),
                    ("limit", "1000"),
                    ("since", "1h"),
                ])
                .bearer_auth(op)
                .send()
                .await
                .expect("logs");
            assert_eq!(r.status(), 200);
            let bytes = r.bytes().await.expect("body");
            let v: Value = serde_json::from_slice(&bytes).expect("valid JSON");
            (
                v["records"].as_array().map_or(0, Vec::len),
                v["stats"].clone(),
                bytes.len(),
            )
        }));
    }
    for t in tasks {
        let (n, stats, len) = t.await.expect("join");
        assert_eq!(stats["truncated"], true, "{stats}");
        assert!(n > 0 && n < 300, "{n} records");
        assert!(
            stats["returned_bytes"]
                .as_u64()
                .is_some_and(|b| b <= 32 << 20),
            "{stats}"
        );
        assert!(len < 40 << 20, "answer of {len} bytes");
    }
    let hwm = c.process().and_then(|p| p.vm_hwm_bytes()).expect("VmHWM");
    eprintln!("collector peak RSS {} MiB", hwm >> 20);
    assert!(hwm < 900 << 20, "collector peak RSS {} MiB", hwm >> 20);
    c.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_pipes_stop_at_the_stream_limit_and_do_not_slow_the_neighbour() {
    let dir = e2e::scratch();
    let mut c = started(dir.path(), &["--max-streams-per-subscription", "1000"]).await;
    let client = reqwest::Client::new();
    let t0 = now() - 600_000_000_000;
    let records = (1..=200u64)
        .map(|s| {
            log(
                B,
                "b1",
                s,
                t0 + s as i64,
                "neighbour line",
                Some(&format!("b-pipe-{}", s % 5)),
            )
        })
        .collect();
    let (status, body, _) = post_batch(
        &client,
        &c.url,
        &shipper_token(B),
        &batch(B, "b1", "e", records),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let op_b = operator_token(B);
    let queries = |client: reqwest::Client, url: String, op_b: String| async move {
        let mut times = Vec::new();
        for i in 0..20 {
            for (path, q) in [
                ("/loki/api/v1/labels", None),
                ("/loki/api/v1/label/pipe/values", None),
                (
                    "/api/v1/logs",
                    Some(format!("{{pipe=\"b-pipe-{}\"}}", i % 5)),
                ),
            ] {
                let mut r = client.get(format!("{url}{path}")).bearer_auth(&op_b);
                if let Some(q) = &q {
                    r = r.query(&[("query", q.as_str()), ("since", "1h")]);
                }
                let t = Instant::now();
                let resp = r.send().await.expect("query");
                assert_eq!(resp.status(), 200);
                let v: Value = resp.json().await.expect("json");
                if q.is_some() {
                    assert_eq!(v["records"].as_array().map(Vec::len), Some(40));
                }
                times.push(t.elapsed());
            }
        }
        times
    };
    let quiet = queries(client.clone(), c.url.clone(), op_b.clone()).await;
    // acme: 100,000 records, each with its own pipe.
    let mut seq = 0u64;
    for _ in 0..20 {
        let records = (0..5000)
            .map(|_| {
                seq += 1;
                log(
                    A,
                    "a1",
                    seq,
                    t0 + seq as i64,
                    "pipe flood",
                    Some(&format!("a-pipe-{seq}")),
                )
            })
            .collect();
        let (status, body, _) = post_batch(
            &client,
            &c.url,
            &shipper_token(A),
            &batch(A, "a1", "e", records),
        )
        .await;
        assert_eq!(status, 200, "a tenant limit never refuses records: {body}");
    }
    let loud = queries(client.clone(), c.url.clone(), op_b.clone()).await;
    let (pq, pl) = (p50(quiet.clone()), p50(loud.clone()));
    eprintln!("beta's label/log queries: p50 {pq:?} quiet, {pl:?} after acme's 100k pipes");
    assert!(
        pl <= pq * 3 + Duration::from_millis(20),
        "p50 {pq:?} -> {pl:?}"
    );
    assert!(loud.iter().all(|t| *t < Duration::from_secs(1)), "{loud:?}");
    // acme's pipe streams stopped at the limit; every record is stored.
    let v = c
        .get_json(
            "/loki/api/v1/label/pipe/values?since=1h",
            &operator_token(A),
        )
        .await;
    let pipes = v["data"].as_array().map_or(0, Vec::len);
    assert!((1..=1000).contains(&pipes), "{pipes} pipe values");
    let labels = c
        .get_json("/loki/api/v1/labels?since=1h", &operator_token(A))
        .await;
    assert!(
        labels["data"]
            .as_array()
            .is_some_and(|l| l.contains(&Value::from("overflow"))),
        "{labels}"
    );
    let s = c.source(A, "a1").await.expect("source");
    assert_eq!(s.records, 100_000);
    let m = metrics_text(&client, &c.url, Some(ADMIN)).await;
    assert_eq!(
        sample(
            &m,
            r#"collector_tenant_overflow_records_total{subscription="acme"}"#
        ),
        Some(99_000.0),
        "{m}"
    );
    // Overflowed records are still found by their pipe.
    let hits = c
        .search(
            &operator_token(A),
            "{overflow=\"pipe\"} | json | fields_pipe=\"a-pipe-50000\"",
        )
        .await;
    assert_eq!(hits.len(), 1);
    c.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_series_with_a_huge_label_value_or_too_many_labels_are_refused_with_400() {
    let dir = e2e::scratch();
    let mut c = started(dir.path(), &[]).await;
    let client = reqwest::Client::new();
    let ts = now() / 1_000_000;
    let good = (vec![("__name__".to_string(), "ok_metric".to_string())], 1.0);
    let huge = (
        vec![
            ("__name__".to_string(), "big".to_string()),
            ("v".to_string(), "x".repeat(1 << 20)),
        ],
        1.0,
    );
    let (status, body) = post_remote_write(
        &client,
        &c.url,
        &shipper_token(A),
        remote_write(&[good.clone(), huge], ts),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "labels");
    assert_eq!(body["accepted"], 1);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("--max-metric-label-value-bytes")),
        "{body}"
    );
    assert!(
        body["error"].as_str().is_some_and(|e| e.len() < 2000),
        "the answer does not echo the value"
    );
    let mut many = vec![("__name__".to_string(), "wide".to_string())];
    many.extend((0..1000).map(|i| (format!("l{i:04}"), "v".to_string())));
    let (status, body) = post_remote_write(
        &client,
        &c.url,
        &shipper_token(A),
        remote_write(&[(many, 1.0)], ts),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("1000 labels") || e.contains("1001 labels")),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("--max-metric-labels-per-series")),
        "{body}"
    );
    let r = client
        .get(format!("{}/federate", c.url))
        .query(&[("match[]", "{__name__=~\".+\"}")])
        .bearer_auth(operator_token(A))
        .send()
        .await
        .expect("federate");
    let text = r.text().await.expect("text");
    assert!(text.contains("ok_metric{"), "{text}");
    assert!(!text.contains("big{") && !text.contains("wide{"), "{text}");
    assert!(text.len() < 4096);
    c.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_outbox_is_stored_in_full_and_epoch_or_content_conflicts_get_409() {
    let dir = e2e::scratch();
    let mut c = started(dir.path(), &[]).await;
    let client = reqwest::Client::new();
    let tok = shipper_token(A);
    let t0 = now() - 60_000_000_000;
    let life = |epoch: &str, from: u64, to: u64, text: &str| {
        batch(
            A,
            "n1",
            epoch,
            (from..=to)
                .map(|s| log(A, "n1", s, t0 + s as i64 * 1000, text, None))
                .collect(),
        )
    };
    let (st, body, _) =
        post_batch(&client, &c.url, &tok, &life("life-1", 1, 100, "first life")).await;
    assert_eq!((st, body["accepted"].as_u64()), (200, Some(100)), "{body}");
    // The node's data dir is wiped: a new outbox epoch, seqs from 1 again.
    let (st, body, _) =
        post_batch(&client, &c.url, &tok, &life("life-2", 1, 60, "second life")).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), body["duplicates"].as_u64()),
        (Some(60), Some(0)),
        "{body}"
    );
    let s = c.source(A, "n1").await.expect("source");
    assert_eq!(s.records, 160, "nothing of either life is lost");
    let second = c
        .search(&operator_token(A), "{source=\"n1\"} |= \"second life\"")
        .await;
    assert_eq!(second.len(), 60);
    let sources = c.get_json("/api/v1/sources", &operator_token(A)).await;
    assert_eq!(sources["sources"][0]["epoch"], "life-2", "{sources}");
    assert_eq!(
        sources["sources"][0]["previous_epochs"][0]["epoch"], "life-1",
        "{sources}"
    );

    // The old outbox comes back to life (two nodes, one --node-id): its
    // re-sends are duplicates, its new records a 409.
    let (st, body, _) = post_batch(
        &client,
        &c.url,
        &tok,
        &life("life-1", 91, 100, "first life"),
    )
    .await;
    assert_eq!((st, body["duplicates"].as_u64()), (200, Some(10)), "{body}");
    let (st, body, _) = post_batch(
        &client,
        &c.url,
        &tok,
        &life("life-1", 101, 110, "first life"),
    )
    .await;
    assert_eq!(st, 409, "{body}");
    assert_eq!(body["reason"], "source_conflict");
    assert_eq!(body["field"], "epoch");
    // The two alternate: life-2 goes on, life-1 keeps being refused.
    let (st, _, _) = post_batch(
        &client,
        &c.url,
        &tok,
        &life("life-2", 61, 70, "second life"),
    )
    .await;
    assert_eq!(st, 200);
    let (st, body, _) = post_batch(
        &client,
        &c.url,
        &tok,
        &life("life-1", 101, 110, "first life"),
    )
    .await;
    assert_eq!(
        (st, &body["reason"]),
        (409, &Value::from("source_conflict")),
        "{body}"
    );

    // A seq re-sent with other content within one epoch.
    let (st, body, _) =
        post_batch(&client, &c.url, &tok, &life("life-2", 70, 71, "tampered")).await;
    assert_eq!(st, 409, "{body}");
    assert_eq!(body["field"], "records[0]");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("other content")),
        "{body}"
    );
    let s = c.source(A, "n1").await.expect("source");
    assert_eq!(s.records, 170, "refused batches stored nothing");
    let m = metrics_text(&client, &c.url, None).await;
    assert_eq!(
        sample(&m, r#"collector_source_conflicts_total{reason="epoch"}"#),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, r#"collector_source_conflicts_total{reason="content"}"#),
        Some(1.0),
        "{m}"
    );
    c.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bound_to_sources_cannot_write_another_source() {
    let dir = e2e::scratch();
    let mut c = Collector::new(dir.path(), &[A, B]);
    write_tokens(
        &dir.path().join("tokens.toml"),
        &[
            (ADMIN, "*", "admin", None),
            ("bound", A, "shipper", Some(&["node-*"])),
        ],
    );
    c.start().await;
    let client = reqwest::Client::new();
    let ok = batch(
        A,
        "node-1",
        "e",
        vec![log(A, "node-1", 1, now(), "mine", None)],
    );
    let (st, body, _) = post_batch(&client, &c.url, "bound", &ok).await;
    assert_eq!(st, 200, "{body}");
    let other = batch(
        A,
        "db-1",
        "e",
        vec![log(A, "db-1", 1, now(), "not mine", None)],
    );
    let (st, body, _) = post_batch(&client, &c.url, "bound", &other).await;
    assert_eq!(st, 403, "{body}");
    assert_eq!(body["field"], "source");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("db-1")),
        "{body}"
    );
    assert!(c.source(A, "db-1").await.is_none());
    c.stop();
}

#[test]
fn a_tokens_file_others_can_read_is_refused_at_start() {
    let dir = e2e::scratch();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        "[[tokens]]\ntoken = \"t\"\nsubscription = \"*\"\nrole = \"admin\"\n",
    )
    .expect("write");
    std::fs::set_permissions(&tokens, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let out = Command::new(bin("sesam-collector"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--tokens"])
        .arg(&tokens)
        .output()
        .expect("run sesam-collector");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!dir.path().join("data").exists(), "nothing was started");
    // token add makes it private; then the collector starts (and its data
    // dir is created 0700).
    let add = Command::new(bin("sesam-collector"))
        .args([
            "token",
            "add",
            "--subscription",
            "acme",
            "--role",
            "shipper",
            "--tokens",
        ])
        .arg(&tokens)
        .output()
        .expect("token add");
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let mode = std::fs::metadata(&tokens).expect("meta").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_leaves_no_metric_series_nor_logs() {
    let dir = e2e::scratch();
    let mut c = started(dir.path(), &[]).await;
    let client = reqwest::Client::new();
    let ts = now() / 1_000_000;
    for sub in [A, B] {
        let series = vec![(
            vec![
                ("__name__".to_string(), "node_load1".to_string()),
                ("instance".to_string(), format!("{sub}-host")),
            ],
            0.5,
        )];
        let (st, body) = post_remote_write(
            &client,
            &c.url,
            &shipper_token(sub),
            remote_write(&series, ts),
        )
        .await;
        assert_eq!(st, 204, "{body}");
        let (st, body, _) = post_batch(
            &client,
            &c.url,
            &shipper_token(sub),
            &batch(
                sub,
                "n1",
                "e",
                vec![log(sub, "n1", 1, now(), "hello", None)],
            ),
        )
        .await;
        assert_eq!(st, 200, "{body}");
    }
    let federate = |token: String| {
        let (client, url) = (client.clone(), c.url.clone());
        async move {
            client
                .get(format!("{url}/federate"))
                .query(&[("match[]", "{__name__=~\".+\"}")])
                .bearer_auth(token)
                .send()
                .await
                .expect("federate")
                .text()
                .await
                .expect("text")
        }
    };
    assert!(federate(ADMIN.to_string()).await.contains("acme-host"));
    let (st, body) = c
        .send(
            "DELETE",
            &format!("/api/v1/subscriptions/{A}"),
            ADMIN,
            Value::Null,
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["deleted"]["metric_series"], 1, "{body}");
    let all = federate(ADMIN.to_string()).await;
    assert!(!all.contains("acme"), "{all}");
    assert!(
        all.contains("beta-host"),
        "the neighbour keeps its series: {all}"
    );
    assert!(federate(operator_token(A)).await.trim().is_empty());
    assert!(c
        .search(&operator_token(A), "{source=\"n1\"}")
        .await
        .is_empty());
    assert_eq!(
        c.search(&operator_token(B), "{source=\"n1\"}").await.len(),
        1
    );
    c.stop();
}

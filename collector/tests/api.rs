//! End-to-end API tests over real HTTP on loopback with a real store.

mod common;

use common::*;
use schemas::EventType;
use serde_json::Value;

#[tokio::test]
async fn ingest_then_search_logs_loki_labels_and_sources() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start(dir.path()).await;
    let t0 = now() - 60_000_000_000;
    let records = vec![
        exec_record(
            "acme",
            "node-1",
            1,
            t0,
            "orders",
            EventType::PumpStarted,
            None,
        ),
        exec_record(
            "acme",
            "node-1",
            2,
            t0 + 1_000,
            "orders",
            EventType::PumpCompleted,
            Some(150),
        ),
        exec_record(
            "acme",
            "node-1",
            3,
            t0 + 2_000,
            "crm",
            EventType::PumpCompleted,
            Some(5),
        ),
        exec_record(
            "acme",
            "node-1",
            4,
            t0 + 3_000,
            "crm",
            EventType::PumpFailed,
            None,
        ),
        log_record("acme", "node-1", 5, t0 + 4_000, "pipe orders slow"),
    ];
    let (accepted, dups) = h
        .ingest_ok(SHIP_ACME, &batch("acme", "node-1", records))
        .await;
    assert_eq!((accepted, dups), (5, 0));

    // Stream selector + line filter.
    let recs = h.logs(OP_ACME, r#"{pipe="crm"} |= "timeout""#, 100).await;
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["seq"], 4);
    assert_eq!(recs[0]["labels"]["event_type"], "pump-failed");
    assert_eq!(recs[0]["labels"]["level"], "ERROR");
    assert_eq!(recs[0]["body"]["pipe"], "crm");

    // json + numeric filter on an extracted metric.
    let recs = h
        .logs(
            OP_ACME,
            r#"{kind="execution"} | json | metrics_entities_changes_last_run > 100"#,
            100,
        )
        .await;
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["seq"], 2);
    assert_eq!(recs[0]["fields"]["pipe_extracted"], "orders");

    // Regex matchers, negative line filters, forward direction order.
    let (status, body) = h
        .get_json(
            OP_ACME,
            "/api/v1/logs",
            &[
                (
                    "query",
                    r#"{pipe=~"or.*|crm", event_type!="pump-failed"} !~ "started""#,
                ),
                ("since", "2h"),
                ("direction", "forward"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let seqs: Vec<u64> = body["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, vec![2, 3]);

    // Backward (default) is newest first; limit applies.
    let recs = h.logs(OP_ACME, r#"{subscription="acme"}"#, 2).await;
    let seqs: Vec<u64> = recs
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, vec![5, 4]);

    // Loki query_range in Loki's shape, with ns string timestamps.
    let start = (t0 - 1_000_000_000).to_string();
    let end = (now()).to_string();
    let (status, body) = h
        .get_json(
            OP_ACME,
            "/loki/api/v1/query_range",
            &[
                ("query", r#"{pipe="orders"}"#),
                ("start", &start),
                ("end", &end),
                ("limit", "10"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "success");
    assert_eq!(body["data"]["resultType"], "streams");
    let result = body["data"]["result"].as_array().expect("result");
    assert_eq!(result.len(), 2, "one stream per event type: {body}");
    let mut total = 0;
    for s in result {
        assert_eq!(s["stream"]["pipe"], "orders");
        for v in s["values"].as_array().expect("values") {
            let pair = v.as_array().expect("pair");
            assert_eq!(pair.len(), 2);
            let ts: i64 = pair[0].as_str().expect("ts string").parse().expect("ns");
            assert!(ts >= t0);
            let line: Value =
                serde_json::from_str(pair[1].as_str().expect("line")).expect("json line");
            assert_eq!(line["pipe"], "orders");
            total += 1;
        }
    }
    assert_eq!(total, 2);

    // RFC 3339 and seconds-with-fraction times are accepted too.
    let rfc_start = schemas::time::rfc3339_from_nanos(t0 - 1_000_000_000);
    let secs_end = format!("{:.3}", now() as f64 / 1e9);
    let (status, body) = h
        .get_json(
            OP_ACME,
            "/loki/api/v1/query_range",
            &[
                ("query", r#"{kind="log"}"#),
                ("start", &rfc_start),
                ("end", &secs_end),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["result"].as_array().map(Vec::len), Some(1));

    let (status, body) = h.get_json(OP_ACME, "/loki/api/v1/labels", &[]).await;
    assert_eq!(status, 200);
    let labels: Vec<&str> = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for l in [
        "event_type",
        "kind",
        "level",
        "pipe",
        "source",
        "subscription",
    ] {
        assert!(labels.contains(&l), "{l} missing from {labels:?}");
    }
    let (status, body) = h
        .get_json(OP_ACME, "/loki/api/v1/label/pipe/values", &[])
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"], serde_json::json!(["crm", "orders"]));

    let (status, body) = h.get_json(OP_ACME, "/api/v1/sources", &[]).await;
    assert_eq!(status, 200);
    let sources = body["sources"].as_array().expect("sources");
    assert_eq!(sources.len(), 1);
    assert_eq!(sources[0]["source"], "node-1");
    assert_eq!(sources[0]["last_seq"], 5);
    assert_eq!(sources[0]["records"], 5);
    let lag = sources[0]["lag_seconds"].as_f64().expect("lag");
    assert!((59.0..600.0).contains(&lag), "lag {lag}");

    // Parse errors are 400 with the column and what was expected.
    let (status, body) = h
        .get_json(OP_ACME, "/api/v1/logs", &[("query", r#"{pipe="a" |= "x""#)])
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "query");
    assert_eq!(body["column"], 11);
    assert!(
        body["error"].as_str().expect("error").contains("expected"),
        "{body}"
    );

    // Metrics count what happened.
    let text = h
        .client
        .get(h.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(text.contains("collector_ingest_records_total 5"), "{text}");
    assert!(
        text.contains("collector_query_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("collector_store_disk_bytes"), "{text}");
    h.stop().await;
}

#[tokio::test]
async fn duplicates_and_reordered_retries_are_stored_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start(dir.path()).await;
    let t0 = now() - 10_000_000_000;
    assert_eq!(
        h.ingest_ok(SHIP_ACME, &logs_batch("acme", "n1", 1, 100, t0))
            .await,
        (100, 0)
    );
    // Overlapping retry, in reverse order, with new seqs beyond.
    let mut b = logs_batch("acme", "n1", 50, 101, t0);
    b.records.reverse();
    assert_eq!(h.ingest_ok(SHIP_ACME, &b).await, (50, 51));
    // A gap filled later (out of order) is new; the same again is not.
    assert_eq!(
        h.ingest_ok(SHIP_ACME, &logs_batch("acme", "n1", 300, 5, t0))
            .await,
        (5, 0)
    );
    assert_eq!(
        h.ingest_ok(SHIP_ACME, &logs_batch("acme", "n1", 200, 10, t0))
            .await,
        (10, 0)
    );
    assert_eq!(
        h.ingest_ok(SHIP_ACME, &logs_batch("acme", "n1", 195, 20, t0))
            .await,
        (10, 10)
    );
    // A batch repeating a seq inside itself stores it once.
    let mut b = logs_batch("acme", "n1", 400, 3, t0);
    b.records.push(b.records[0].clone());
    assert_eq!(h.ingest_ok(SHIP_ACME, &b).await, (3, 1));
    // Same seqs from another source or subscription are different records.
    assert_eq!(
        h.ingest_ok(SHIP_ACME, &logs_batch("acme", "n2", 1, 10, t0))
            .await,
        (10, 0)
    );
    assert_eq!(
        h.ingest_ok(SHIP_BETA, &logs_batch("beta", "n1", 1, 10, t0))
            .await,
        (10, 0)
    );

    // Concurrent identical retries: exactly one stores.
    let b = logs_batch("acme", "n3", 1, 50, t0);
    let results = futures_join(&h, &b, 6).await;
    let accepted: u64 = results.iter().map(|r| r.0).sum();
    assert_eq!(accepted, 50, "{results:?}");

    let recs = h
        .logs(ADMIN, r#"{source="n1", subscription="acme"}"#, 5000)
        .await;
    assert_eq!(recs.len(), 100 + 50 + 5 + 10 + 10 + 3);
    let mut seqs: Vec<u64> = recs
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    seqs.sort_unstable();
    let before = seqs.len();
    seqs.dedup();
    assert_eq!(before, seqs.len(), "no seq stored twice");

    // Survives a restart: the dedupe state is on disk.
    h.stop().await;
    let h = Harness::start(dir.path()).await;
    assert_eq!(
        h.ingest_ok(SHIP_ACME, &logs_batch("acme", "n1", 1, 150, t0))
            .await,
        (0, 150)
    );
    assert_eq!(
        h.ingest_ok(SHIP_ACME, &logs_batch("acme", "n1", 151, 1, t0))
            .await,
        (1, 0)
    );
    h.stop().await;
}

async fn futures_join(h: &Harness, b: &schemas::IngestBatch, n: usize) -> Vec<(u64, u64)> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let client = h.client.clone();
        let url = h.url("/api/v1/ingest");
        let body = schemas::to_msgpack(b).expect("encode");
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(SHIP_ACME)
                .body(body)
                .send()
                .await
                .expect("send");
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.expect("json");
            (
                v["accepted"].as_u64().expect("a"),
                v["duplicates"].as_u64().expect("d"),
            )
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn tokens_roles_and_tenants_are_enforced_on_every_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start(dir.path()).await;
    let t0 = now() - 1_000_000_000;
    h.ingest_ok(SHIP_ACME, &logs_batch("acme", "a-node", 1, 5, t0))
        .await;
    h.ingest_ok(SHIP_BETA, &logs_batch("beta", "b-node", 1, 5, t0))
        .await;

    // 401: missing, malformed and unknown tokens.
    let r = h
        .client
        .post(h.url("/api/v1/ingest"))
        .body(vec![1])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["field"], "Authorization");
    let r = h
        .client
        .get(h.url("/api/v1/logs"))
        .header("authorization", "Basic abc")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    let r = h
        .ingest("nope", &logs_batch("acme", "a-node", 6, 1, t0))
        .await;
    assert_eq!(r.status(), 401);

    // 403: shipper for another subscription; operator ingesting; shipper reading.
    let r = h
        .ingest(SHIP_ACME, &logs_batch("beta", "b-node", 6, 1, t0))
        .await;
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["field"], "subscription");
    let r = h
        .ingest(OP_ACME, &logs_batch("acme", "a-node", 6, 1, t0))
        .await;
    assert_eq!(r.status(), 403);
    for path in [
        "/api/v1/logs",
        "/api/v1/sources",
        "/loki/api/v1/labels",
        "/loki/api/v1/query_range",
    ] {
        let (status, _) = h.get_json(SHIP_ACME, path, &[("query", "{}")]).await;
        assert_eq!(status, 403, "{path}");
    }
    let r = h
        .client
        .delete(h.url("/api/v1/subscriptions/beta"))
        .bearer_auth(OP_ACME)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    let r = h
        .client
        .post(h.url("/api/v1/checkpoints"))
        .bearer_auth(OP_ACME)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);

    // An operator never sees another subscription, whatever the selector says.
    for q in [
        r#"{subscription="beta"}"#,
        r#"{source="b-node"}"#,
        "{}",
        r#"{subscription=~".*"}"#,
    ] {
        let recs = h.logs(OP_ACME, q, 100).await;
        assert!(
            recs.iter().all(|r| r["subscription"] == "acme"),
            "{q}: {recs:?}"
        );
    }
    assert_eq!(h.logs(OP_ACME, "{}", 100).await.len(), 5);
    let (_, body) = h
        .get_json(OP_ACME, "/loki/api/v1/label/source/values", &[])
        .await;
    assert_eq!(body["data"], serde_json::json!(["a-node"]));
    let (_, body) = h
        .get_json(OP_ACME, "/loki/api/v1/label/subscription/values", &[])
        .await;
    assert_eq!(body["data"], serde_json::json!(["acme"]));
    let (_, body) = h.get_json(OP_BETA, "/api/v1/sources", &[]).await;
    let subs: Vec<&str> = body["sources"]
        .as_array()
        .expect("s")
        .iter()
        .filter_map(|s| s["subscription"].as_str())
        .collect();
    assert_eq!(subs, vec!["beta"]);
    let (_, body) = h
        .get_json(
            OP_BETA,
            "/loki/api/v1/query_range",
            &[("query", r#"{subscription="acme"}"#), ("since", "1h")],
        )
        .await;
    assert_eq!(body["data"]["result"], serde_json::json!([]));

    // The admin sees both.
    assert_eq!(h.logs(ADMIN, "{}", 100).await.len(), 10);
    let (_, body) = h.get_json(ADMIN, "/api/v1/sources", &[]).await;
    assert_eq!(body["sources"].as_array().map(Vec::len), Some(2));
    h.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_accepted_data_is_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start_with(dir.path(), |c| {
        c.limits.max_body_bytes = 256 << 10;
        c.limits.max_decompressed_bytes = 1 << 20;
        c.limits.max_record_bytes = 8 << 10;
    })
    .await;
    let t0 = now() - 1_000_000_000;
    h.ingest_ok(SHIP_ACME, &logs_batch("acme", "n1", 1, 20, t0))
        .await;

    let expect = |status: u16, field: &'static str| {
        move |r: (u16, Value)| {
            assert_eq!(r.0, status, "{}", r.1);
            assert_eq!(r.1["field"], field, "{}", r.1);
            assert!(r.1["error"].as_str().is_some_and(|e| !e.is_empty()));
        }
    };
    async fn send(h: &Harness, body: Vec<u8>, enc: Option<&str>) -> (u16, Value) {
        let r = h.post_raw(SHIP_ACME, body, enc).await;
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    // Malformed and truncated MessagePack.
    expect(400, "body")(send(&h, b"\xc1\xc1garbage".to_vec(), None).await);
    let good = schemas::to_msgpack(&logs_batch("acme", "n1", 21, 5, t0)).expect("enc");
    expect(400, "records[4].record")(send(&h, good[..good.len() - 10].to_vec(), None).await);
    // Unknown kind in record 2: named by index.
    let mut v = serde_json::to_value(logs_batch("acme", "n1", 21, 5, t0)).expect("json");
    v["records"][2]["kind"] = serde_json::json!("gossip");
    let r = send(&h, rmp_serde::to_vec_named(&v).expect("enc"), None).await;
    assert_eq!(r.1["index"], 2, "{}", r.1);
    expect(400, "records[2].record")(r);
    // Invalid UTF-8 in a string.
    let mut raw = schemas::to_msgpack(&logs_batch("acme", "n1", 21, 1, t0)).expect("enc");
    let pos = raw
        .windows(6)
        .position(|w| w == b"line 2")
        .expect("message present");
    raw[pos] = 0xff;
    expect(400, "records[0].record")(send(&h, raw, None).await);
    // Timestamps outside the window.
    let b = batch(
        "acme",
        "n1",
        vec![log_record(
            "acme",
            "n1",
            30,
            now() + 3_600_000_000_000,
            "future",
        )],
    );
    expect(400, "records[0].ts")(send(&h, schemas::to_msgpack(&b).expect("enc"), None).await);
    let b = batch(
        "acme",
        "n1",
        vec![log_record("acme", "n1", 30, 1_000_000_000, "1970")],
    );
    expect(400, "records[0].ts")(send(&h, schemas::to_msgpack(&b).expect("enc"), None).await);
    // Oversized record and body.
    let big = "x".repeat(20 << 10);
    let b = batch("acme", "n1", vec![log_record("acme", "n1", 30, t0, &big)]);
    expect(413, "records[0].body")(send(&h, schemas::to_msgpack(&b).expect("enc"), None).await);
    expect(413, "body")(send(&h, vec![0u8; 300 << 10], None).await);
    // zstd bomb: tiny compressed, huge decompressed.
    let bomb = zstd::encode_all(vec![0u8; 64 << 20].as_slice(), 3).expect("zstd");
    assert!(bomb.len() < 256 << 10);
    expect(413, "body")(send(&h, bomb, Some("zstd")).await);
    // gzip that is not gzip; an unknown encoding.
    expect(400, "body")(send(&h, b"not gzip at all".to_vec(), Some("gzip")).await);
    expect(415, "Content-Encoding")(send(&h, good.clone(), Some("br")).await);
    // Record envelope disagreeing with the batch.
    let mut b = logs_batch("acme", "n1", 40, 2, t0);
    b.records[1].source = "other".into();
    expect(400, "records[1].source")(send(&h, schemas::to_msgpack(&b).expect("enc"), None).await);

    // gzip works when it is gzip.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &good).expect("gz");
    let r = send(&h, gz.finish().expect("gz"), Some("gzip")).await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["accepted"], 5);

    // Catastrophic regexes are refused.
    let (status, body) = h
        .get_json(
            OP_ACME,
            "/api/v1/logs",
            &[("query", r#"{} |~ "(((a{100}){100}){100})""#)],
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // Everything accepted before is still there, and the server still serves.
    assert_eq!(h.logs(OP_ACME, r#"{source="n1"}"#, 1000).await.len(), 25);
    let text = h
        .client
        .get(h.url("/metrics"))
        .send()
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    assert!(
        text.contains("collector_ingest_rejections_total{reason=\"decompressed_too_large\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("collector_ingest_rejections_total{reason=\"timestamp_out_of_window\"} 2"),
        "{text}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_stalled_upload_holds_no_slot_and_a_full_body_budget_answers_429_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start_with(dir.path(), |c| {
        c.admission.max_concurrent_ingests = 1;
        c.admission.max_inflight_body_bytes_per_subscription = 64 << 10;
    })
    .await;
    // An upload of acme that sends almost its whole budget, then stalls.
    let mut slow = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/v1/ingest HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {SHIP_ACME}\r\ncontent-type: application/msgpack\r\ncontent-length: 200000\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut slow, head.as_bytes())
        .await
        .expect("write");
    tokio::io::AsyncWriteExt::write_all(&mut slow, &vec![0x7fu8; (64 << 10) - 64])
        .await
        .expect("write");
    // The only decode slot is free: another tenant ingests at once.
    let (accepted, _) = h
        .ingest_ok(SHIP_BETA, &logs_batch("beta", "b1", 1, 1, now()))
        .await;
    assert_eq!(accepted, 1);
    // acme's own bodies in flight are at their budget: 429, retry later.
    let mut saw_429 = false;
    for _ in 0..100 {
        let r = h
            .ingest(SHIP_ACME, &logs_batch("acme", "n1", 1, 3, now()))
            .await;
        if r.status() == 429 {
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            assert_eq!(retry.as_deref(), Some("1"));
            let body: Value = r.json().await.expect("json");
            assert_eq!(body["reason"], "body_budget", "{body}");
            assert!(
                body["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("--max-inflight-body-bytes-per-subscription")),
                "{body}"
            );
            saw_429 = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(saw_429, "acme's budget is held by its stalled upload");
    drop(slow);
    // Once the stalled upload is gone, acme ingests again.
    let mut ok = false;
    for _ in 0..100 {
        let r = h
            .ingest(SHIP_ACME, &logs_batch("acme", "n1", 1, 3, now()))
            .await;
        if r.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(ok);
    h.stop().await;
}

#[tokio::test]
async fn terminating_a_subscription_leaves_nothing_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start(dir.path()).await;
    let t0 = now() - 1_000_000_000;
    h.ingest_ok(SHIP_ACME, &logs_batch("acme", "n1", 1, 30, t0))
        .await;
    h.ingest_ok(
        SHIP_ACME,
        &batch(
            "acme",
            "n2",
            vec![exec_record(
                "acme",
                "n2",
                1,
                t0,
                "orders",
                EventType::PumpFailed,
                None,
            )],
        ),
    )
    .await;
    h.ingest_ok(SHIP_BETA, &logs_batch("beta", "n1", 1, 7, t0))
        .await;

    let r = h
        .client
        .delete(h.url("/api/v1/subscriptions/acme"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["deleted"]["records"], 31);
    assert_eq!(body["deleted"]["sources"], 2);

    assert!(h
        .logs(ADMIN, r#"{subscription="acme"}"#, 1000)
        .await
        .is_empty());
    assert!(h.logs(OP_ACME, "{}", 1000).await.is_empty());
    let (_, body) = h
        .get_json(ADMIN, "/loki/api/v1/label/subscription/values", &[])
        .await;
    assert_eq!(body["data"], serde_json::json!(["beta"]));
    let (_, body) = h
        .get_json(ADMIN, "/loki/api/v1/label/pipe/values", &[])
        .await;
    assert_eq!(body["data"], serde_json::json!([]));
    let (_, body) = h.get_json(ADMIN, "/api/v1/sources", &[]).await;
    let subs: Vec<&str> = body["sources"]
        .as_array()
        .expect("s")
        .iter()
        .filter_map(|s| s["subscription"].as_str())
        .collect();
    assert_eq!(subs, vec!["beta"]);
    // The other tenant is untouched.
    assert_eq!(h.logs(OP_BETA, "{}", 1000).await.len(), 7);
    // Nothing comes back after a restart either, and the dedupe state is
    // gone: the same seqs are new again.
    h.stop().await;
    let h = Harness::start(dir.path()).await;
    assert!(h
        .logs(ADMIN, r#"{subscription="acme"}"#, 1000)
        .await
        .is_empty());
    assert_eq!(
        h.ingest_ok(SHIP_ACME, &logs_batch("acme", "n1", 1, 3, t0))
            .await,
        (3, 0)
    );
    h.stop().await;
}

#[tokio::test]
async fn checkpoint_then_restore_reads_the_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let cps = dir.path().join("checkpoints");
    let h = Harness::start_with(&data, |c| {
        c.checkpoint_dir = Some(cps.clone());
        c.checkpoint_keep = 2;
    })
    .await;
    let t0 = now() - 1_000_000_000;
    h.ingest_ok(SHIP_ACME, &logs_batch("acme", "n1", 1, 40, t0))
        .await;
    let mut paths = Vec::new();
    for _ in 0..3 {
        let r = h
            .client
            .post(h.url("/api/v1/checkpoints"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.expect("json");
        paths.push(std::path::PathBuf::from(
            body["path"].as_str().expect("path"),
        ));
    }
    // Written after the checkpoints: not in them.
    h.ingest_ok(SHIP_ACME, &logs_batch("acme", "n1", 41, 10, t0))
        .await;
    h.stop().await;
    let kept = collector::checkpoint::list(&cps).expect("list");
    assert_eq!(kept.len(), 2, "only the newest 2 are kept: {kept:?}");
    assert_eq!(kept.last(), paths.last());

    let restored = dir.path().join("restored");
    copy_dir(kept.last().expect("one"), &restored);
    let h = Harness::start(&restored).await;
    let recs = h.logs(OP_ACME, "{}", 1000).await;
    assert_eq!(recs.len(), 40);
    // The dedupe state came back with it.
    assert_eq!(
        h.ingest_ok(SHIP_ACME, &logs_batch("acme", "n1", 1, 50, t0))
            .await,
        (10, 40)
    );
    h.stop().await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

#[tokio::test]
async fn shutdown_keeps_everything_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start(dir.path()).await;
    let t0 = now() - 1_000_000_000;
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let client = h.client.clone();
        let url = h.url("/api/v1/ingest");
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..200u64 {
                let first = 1 + i * 10;
                let b = logs_batch("acme", &format!("w{w}"), first, 10, t0);
                let body = schemas::to_msgpack(&b).expect("enc");
                match client
                    .post(&url)
                    .bearer_auth(SHIP_ACME)
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => acked.push(first),
                    _ => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    h.stop().await;
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(t.await.expect("task"));
    }
    let h = Harness::start(dir.path()).await;
    for (w, firsts) in acked.iter().enumerate() {
        assert!(!firsts.is_empty(), "worker {w} got nothing acknowledged");
        for first in firsts {
            let b = logs_batch("acme", &format!("w{w}"), *first, 10, t0);
            assert_eq!(
                h.ingest_ok(SHIP_ACME, &b).await,
                (0, 10),
                "acknowledged batch {first} of w{w} lost"
            );
        }
    }
    h.stop().await;
}

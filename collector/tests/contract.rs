//! The log store contract, on both backends: every test runs one collector
//! on RocksDB and one on ClickHouse (Debian's `clickhouse-server`, started
//! once for this test binary on free loopback ports, a database per test),
//! feeds both the same batches, and asserts the same answers: ingest and
//! dedupe (retries, reordering, conflicts, epochs), every LogQL construct
//! through `/api/v1/logs` and the Loki API (selectors, line filters,
//! `| json`, label filters, metric queries, labels, series, stats,
//! volume), answer limits, sources, tenant isolation (SQL-significant
//! characters in labels and filters included), retention and termination.
//! Each answer is also checked against what it must hold, so that two
//! equal wrong answers fail too.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use collector::logs::clickhouse::ClickHouseConfig;
use collector::{CollectorConfig, Storage};
use common::*;
use schemas::EventType;
use serde_json::Value;
use testkit::engines::{ClickHouse, ClickHouseOptions};

const S: i64 = 1_000_000_000;

fn clickhouse() -> Option<&'static ClickHouse> {
    static CH: OnceLock<Option<ClickHouse>> = OnceLock::new();
    CH.get_or_init(|| match ClickHouse::start(ClickHouseOptions::default()) {
        Ok(c) => Some(c),
        Err(e) if !std::path::Path::new("/usr/sbin/clickhouse-server").exists() => {
            testkit::engines::skip("the ClickHouse contract tests", &e);
            None
        }
        Err(e) => panic!("clickhouse-server is installed but did not start: {e}"),
    })
    .as_ref()
}

/// One collector per backend, fed alike.
struct Pair {
    rocks: Harness,
    ch: Harness,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

fn ch_config(db: &str) -> Option<ClickHouseConfig> {
    let server = clickhouse()?;
    let mut c = ClickHouseConfig::new(server.url());
    c.database = db.to_string();
    Some(c)
}

impl Pair {
    async fn start(db: &str, tweak: impl Fn(&mut CollectorConfig)) -> Option<Pair> {
        let cfg = ch_config(db)?;
        let (a, b) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let rocks = Harness::start_with(a.path(), &tweak).await;
        let ch = Harness::start_with(b.path(), |c| {
            tweak(c);
            c.storage = Storage::ClickHouse(cfg);
        })
        .await;
        Some(Pair {
            rocks,
            ch,
            _dirs: (a, b),
        })
    }

    async fn ingest(&self, token: &str, b: &schemas::IngestBatch) -> (u64, u64) {
        let r = self.rocks.ingest_ok(token, b).await;
        let c = self.ch.ingest_ok(token, b).await;
        assert_eq!(r, c, "ingest answers differ (rocks, clickhouse)");
        r
    }

    /// `GET path?query` on both: (status, body) equal after `normalize`.
    async fn get(&self, token: &str, path: &str, q: &[(&str, &str)]) -> (u16, Value) {
        let (sr, mut br) = self.rocks.get_json(token, path, q).await;
        let (sc, mut bc) = self.ch.get_json(token, path, q).await;
        normalize(&mut br);
        normalize(&mut bc);
        if (sr, &br) != (sc, &bc) {
            let (a, b) = (br.to_string(), bc.to_string());
            let at = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
            let from = at.saturating_sub(300);
            panic!(
                "{path} {q:?}: rocks ({sr}) and clickhouse ({sc}) differ at byte {at}:\n  rocks: ...{}\n  click: ...{}",
                &a[from..(at + 300).min(a.len())],
                &b[from..(at + 300).min(b.len())]
            );
        }
        (sr, br)
    }

    async fn stop(self) {
        self.rocks.stop().await;
        self.ch.stop().await;
    }
}

/// Drops what differs by design between backends: query statistics
/// (bytes read, time taken) and stream ids.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for k in [
                "stats",
                "scanned",
                "scanned_bytes",
                "took_ms",
                "elapsed_ms",
                "stream_id",
            ] {
                m.remove(k);
            }
            for (_, x) in m.iter_mut() {
                normalize(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

fn json_line(sub: &str, source: &str, seq: u64, ts: i64, msg: &str) -> schemas::Record {
    let mut r = log_record(sub, source, seq, ts, msg);
    if let schemas::Body::Log(b) = &mut r.body {
        b.fields
            .insert("pipe".into(), Value::String(format!("p{}", seq % 3)));
        b.fields.insert("n".into(), Value::from(seq));
    }
    r
}

/// acme: 60 log records over a minute (three pipes, messages with quotes,
/// backslashes, SQL and regex characters), failures and completions of
/// two pipes; beta: its own records with the same words.
async fn seed(p: &Pair, t0: i64) {
    let msgs = [
        "plain hello",
        "it's a quote' OR '1'='1",
        r"back\slash \' and \\",
        "percent % underscore _ star *",
        "regex .* [a-z]+ (x|y)",
        "unicode é ü 日本",
        "error: connection timeout",
        "tab\tand newline\\n literal",
    ];
    let recs: Vec<_> = (1..=60u64)
        .map(|s| {
            json_line(
                "acme",
                "node-1",
                s,
                t0 + s as i64 * S,
                msgs[s as usize % msgs.len()],
            )
        })
        .collect();
    assert_eq!(
        p.ingest(SHIP_ACME, &batch("acme", "node-1", recs)).await,
        (60, 0)
    );
    let mut ex = Vec::new();
    for i in 0..10u64 {
        let (pipe, ev) = if i % 3 == 0 {
            ("orders", EventType::PumpFailed)
        } else if i % 2 == 0 {
            ("orders", EventType::PumpCompleted)
        } else {
            ("crm'; DROP TABLE records; --", EventType::PumpCompleted)
        };
        ex.push(exec_record(
            "acme",
            "node-2",
            i + 1,
            t0 + (i as i64 * 5 + 2) * S + S / 2,
            pipe,
            ev,
            Some(i * 10),
        ));
    }
    assert_eq!(
        p.ingest(SHIP_ACME, &batch("acme", "node-2", ex)).await,
        (10, 0)
    );
    let beta: Vec<_> = (1..=20u64)
        .map(|s| {
            json_line(
                "beta",
                "node-b",
                s,
                t0 + s as i64 * S,
                "secret beta plain hello",
            )
        })
        .collect();
    assert_eq!(
        p.ingest(SHIP_BETA, &batch("beta", "node-b", beta)).await,
        (20, 0)
    );
}

fn records(v: &Value) -> &Vec<Value> {
    v["records"].as_array().expect("records")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ingest_dedupe_conflicts_and_epochs_answer_alike() {
    let Some(p) = Pair::start("c_dedupe", |_| {}).await else {
        return;
    };
    let t0 = now() - 600 * S;
    assert_eq!(
        p.ingest(SHIP_ACME, &logs_batch("acme", "n1", 1, 100, t0))
            .await,
        (100, 0)
    );
    let mut b = logs_batch("acme", "n1", 50, 101, t0);
    b.records.reverse();
    assert_eq!(p.ingest(SHIP_ACME, &b).await, (50, 51));
    let mut b = logs_batch("acme", "n1", 400, 3, t0);
    b.records.push(b.records[0].clone());
    assert_eq!(p.ingest(SHIP_ACME, &b).await, (3, 1));
    // Same seq, other content: 409 on both, nothing of the batch stored.
    let mut b = logs_batch("acme", "n1", 399, 3, t0);
    b.records[1] = log_record("acme", "n1", 400, t0 + 5 * S, "changed");
    let r1 = p.rocks.ingest(SHIP_ACME, &b).await;
    let r2 = p.ch.ingest(SHIP_ACME, &b).await;
    assert_eq!(
        (r1.status(), r2.status()),
        (409.try_into().unwrap(), 409.try_into().unwrap())
    );
    let (e1, e2): (Value, Value) = (r1.json().await.unwrap(), r2.json().await.unwrap());
    assert_eq!(e1["field"], e2["field"], "{e1} / {e2}");
    // A new epoch is a new sequence space; the old one may not write new
    // seqs any more.
    let e = testkit::records::batch(
        "acme",
        "n1",
        "epoch-2",
        (1..=5)
            .map(|s| log_record("acme", "n1", s, t0 + 200 * S + s as i64, "second life"))
            .collect(),
    );
    assert_eq!(p.ingest(SHIP_ACME, &e).await, (5, 0));
    assert_eq!(p.ingest(SHIP_ACME, &e).await, (0, 5));
    let old = logs_batch("acme", "n1", 1000, 1, t0);
    let (r1, r2) = (
        p.rocks.ingest(SHIP_ACME, &old).await.status().as_u16(),
        p.ch.ingest(SHIP_ACME, &old).await.status().as_u16(),
    );
    assert_eq!((r1, r2), (409, 409));
    // A re-send of the old epoch's stored records is still a duplicate.
    assert_eq!(
        p.ingest(SHIP_ACME, &logs_batch("acme", "n1", 1, 10, t0))
            .await,
        (0, 10)
    );

    let (_, v) = p
        .get(
            ADMIN,
            "/api/v1/logs",
            &[
                ("query", r#"{source="n1"}"#),
                ("since", "2h"),
                ("limit", "5000"),
            ],
        )
        .await;
    assert_eq!(records(&v).len(), 100 + 50 + 3 + 5);
    for (name, h) in [("rocks", &p.rocks), ("clickhouse", &p.ch)] {
        let (_, s) = h.get_json(OP_ACME, "/api/v1/sources", &[]).await;
        let src = s["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["source"] == "n1")
            .unwrap_or_else(|| panic!("{name}: n1 in {s}"));
        assert_eq!(src["records"], 158, "{name}: {src}");
        assert_eq!(src["epoch"], "epoch-2", "{name}: {src}");
        assert_eq!(src["last_seq"], 5, "{name}: {src}");
        assert_eq!(src["duplicates"], 67, "{name}: {src}");
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_logql_construct_answers_alike() {
    let Some(p) = Pair::start("c_logql", |_| {}).await else {
        return;
    };
    let t0 = now() - 900 * S;
    seed(&p, t0).await;
    // (query, records it must find for acme)
    let cases: &[(&str, usize)] = &[
        (r#"{source="node-1"}"#, 60),
        (r#"{source="node-1", pipe="p1"}"#, 20),
        (r#"{source=~"node-.*", pipe!="p1"}"#, 40 + 10),
        (r#"{pipe=~"p[02]"}"#, 40),
        (r#"{pipe!~"p.*"}"#, 10),
        (r#"{kind="execution", level="ERROR"}"#, 4),
        (r#"{pipe="crm'; DROP TABLE records; --"}"#, 3),
        (r#"{pipe="crm\\'; DROP TABLE records; --"}"#, 0),
        (r#"{source="node-1"} |= "hello""#, 7),
        (r#"{source="node-1"} != "hello""#, 53),
        (r#"{source="node-1"} |= "quote' OR '1'='1""#, 8),
        (r#"{source="node-1"} |= "\\'""#, 8),
        (r#"{source="node-1"} |= "%""#, 8),
        (r#"{source="node-1"} |= "日本""#, 7),
        (r#"{source="node-1"} |~ "time(out|d)""#, 7),
        (r#"{source="node-1"} !~ "(?i)HELLO|quote""#, 45),
        (r#"{source="node-1"} |= "a" |~ "[0-9]+" "#, 60),
        (r#"{source="node-1"} | json | fields_n > 30"#, 30),
        (
            r#"{source="node-1"} | json | fields_n > 30 | message =~ ".*hello.*""#,
            4,
        ),
        (
            r#"{source="node-1"} |= "e" | json | fields_pipe = "p2""#,
            20,
        ),
        (r#"{kind="execution"} | json | pipe = "orders""#, 7),
        (
            r#"{kind="execution"} | json | pipe_extracted = "orders""#,
            7,
        ),
        (r#"{source="nothing"}"#, 0),
        (r#"{source="node-1"} |= """#, 60),
    ];
    for (q, want) in cases {
        for dir in ["backward", "forward"] {
            let (status, v) = p
                .get(
                    OP_ACME,
                    "/api/v1/logs",
                    &[
                        ("query", q),
                        ("since", "2h"),
                        ("limit", "1000"),
                        ("direction", dir),
                    ],
                )
                .await;
            assert_eq!(status, 200, "{q}: {v}");
            assert_eq!(records(&v).len(), *want, "{q} {dir}: {v}");
            assert!(
                records(&v).iter().all(|r| r["subscription"] == "acme"),
                "{q}: another subscription's record in {v}"
            );
        }
        // Limits: the first 7 either way.
        let (_, v) = p
            .get(
                OP_ACME,
                "/api/v1/logs",
                &[("query", q), ("since", "2h"), ("limit", "7")],
            )
            .await;
        assert_eq!(records(&v).len(), (*want).min(7), "{q} limit 7");
    }
    // Errors alike.
    let (status, _) = p
        .get(
            OP_ACME,
            "/api/v1/logs",
            &[("query", r#"{source="x"} |~ "(""#), ("since", "2h")],
        )
        .await;
    assert_eq!(status, 400);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn loki_api_and_metric_queries_answer_alike() {
    let Some(p) = Pair::start("c_loki", |_| {}).await else {
        return;
    };
    let t0 = (now() / (60 * S) - 20) * 60 * S;
    seed(&p, t0).await;
    let (start, end) = ((t0 / S).to_string(), ((t0 + 120 * S) / S).to_string());
    let range = |q: &'static str| {
        vec![
            ("query", q),
            ("start", start.as_str()),
            ("end", end.as_str()),
            ("step", "10"),
        ]
    };
    for q in [
        r#"count_over_time({source="node-1"}[10s])"#,
        r#"sum by (pipe) (count_over_time({source=~"node.*"} |= "e" [30s]))"#,
        r#"rate({kind="execution"}[1m])"#,
        r#"sum(bytes_over_time({source="node-1"} |~ "quote|slash" [20s]))"#,
        r#"sum by (level) (count_over_time({subscription="beta"}[1m]))"#,
    ] {
        let (status, v) = p.get(OP_ACME, "/loki/api/v1/query_range", &range(q)).await;
        assert_eq!(status, 200, "{q}: {v}");
        assert_eq!(v["data"]["resultType"], "matrix", "{q}: {v}");
        if !q.contains("beta") {
            assert!(
                !v["data"]["result"].as_array().unwrap().is_empty(),
                "{q}: {v}"
            );
        } else {
            assert!(
                v["data"]["result"].as_array().unwrap().is_empty(),
                "{q} leaked beta: {v}"
            );
        }
    }
    let (_, v) = p
        .get(
            OP_ACME,
            "/loki/api/v1/query_range",
            &[
                ("query", r#"{pipe="orders"}"#),
                ("start", &start),
                ("end", &end),
                ("limit", "100"),
            ],
        )
        .await;
    assert_eq!(v["data"]["resultType"], "streams");
    let window = [("start", start.as_str()), ("end", end.as_str())];
    let (_, v) = p.get(OP_ACME, "/loki/api/v1/labels", &window).await;
    assert!(
        v["data"].as_array().unwrap().iter().any(|l| l == "pipe"),
        "{v}"
    );
    let (_, v) = p
        .get(OP_ACME, "/loki/api/v1/label/pipe/values", &window)
        .await;
    let values = v["data"].as_array().unwrap();
    assert!(
        values.iter().any(|x| x == "crm'; DROP TABLE records; --"),
        "{v}"
    );
    assert!(values.len() == 5, "p0 p1 p2 orders crm: {v}");
    let mut q = window.to_vec();
    q.push(("match[]", r#"{source="node-2"}"#));
    let (_, v) = p.get(OP_ACME, "/loki/api/v1/series", &q).await;
    assert_eq!(v["data"].as_array().unwrap().len(), 3, "{v}");
    let mut q = window.to_vec();
    q.push(("query", r#"{source="node-1"}"#));
    let (_, v) = p.get(OP_ACME, "/loki/api/v1/index/stats", &q).await;
    assert_eq!(v["entries"], 60, "{v}");
    let (_, v) = p.get(OP_ACME, "/loki/api/v1/index/volume", &q).await;
    assert!(!v["data"]["result"].as_array().unwrap().is_empty(), "{v}");
    // The console's pipes view reads through the store too.
    let (status, v) = p.get(OP_ACME, "/api/v1/pipes", &[("since", "2h")]).await;
    assert_eq!(status, 200, "{v}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_stay_apart_and_termination_and_retention_delete() {
    let Some(p) = Pair::start("c_tenants", |c| {
        c.retention
            .overrides
            .insert("beta".into(), Duration::from_secs(4));
        c.retention_interval = Duration::from_millis(300);
        c.limits.accept_past = Duration::from_secs(3600);
    })
    .await
    else {
        return;
    };
    let t0 = now() - 1800 * S;
    let acme: Vec<_> = (1..=30u64)
        .map(|s| json_line("acme", "node-1", s, t0 + s as i64 * S, "acme line"))
        .collect();
    p.ingest(SHIP_ACME, &batch("acme", "node-1", acme)).await;
    // beta's records are 1-3 s old: retention (4 s) takes them soon.
    let tb = now() - 2 * S;
    let beta: Vec<_> = (1..=10u64)
        .map(|s| json_line("beta", "node-b", s, tb + s as i64 * 1_000_000, "beta line"))
        .collect();
    p.ingest(SHIP_BETA, &batch("beta", "node-b", beta)).await;
    // beta's operator sees none of acme's, however it asks.
    for q in [
        r#"{subscription="acme"}"#,
        r#"{source="node-1"}"#,
        r#"{subscription=~".*"} |= "acme""#,
        r#"{source="node-1' OR subscription='acme"}"#,
        r#"{source=~".*') OR ('1'='1"}"#,
    ] {
        for h in [&p.rocks, &p.ch] {
            let (status, v) = h
                .get_json(
                    OP_BETA,
                    "/api/v1/logs",
                    &[("query", q), ("since", "2h"), ("subscription", "acme")],
                )
                .await;
            assert!(
                status == 200 || status == 400 || status == 403,
                "{q}: {status} {v}"
            );
            if status == 200 {
                assert!(
                    records(&v).iter().all(|r| r["subscription"] == "beta"),
                    "{q}: acme leaked to beta: {v}"
                );
            }
        }
    }
    // Retention takes beta's records on both.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = p.rocks.logs(OP_BETA, "{}", 100).await.len();
        let c = p.ch.logs(OP_BETA, "{}", 100).await.len();
        if r == 0 && c == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retention left rocks {r}, clickhouse {c}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(p.ch.logs(OP_ACME, "{}", 100).await.len(), 30);
    // Termination leaves nothing of acme readable.
    for h in [&p.rocks, &p.ch] {
        let r = h
            .client
            .delete(h.url("/api/v1/subscriptions/acme"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["deleted"]["records"], 30, "{v}");
        assert!(h
            .logs(ADMIN, r#"{subscription="acme"}"#, 100)
            .await
            .is_empty());
        let (_, s) = h.get_json(ADMIN, "/api/v1/sources", &[]).await;
        assert!(
            !s["sources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["subscription"] == "acme"),
            "{s}"
        );
    }
    p.stop().await;
}

const BIN: &str = env!("CARGO_BIN_EXE_sesam-collector");

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Starts the binary with `args` (after a data dir, listen address and
/// tokens file) and expects it to exit non-zero within 30 s; its stderr.
fn refused(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, testkit::tokens::toml(&["acme"])).expect("tokens");
    set_mode(&tokens, 0o600);
    let mut child = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{}", testkit::free_port())])
        .arg("--tokens")
        .arg(&tokens)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err)
                .expect("read stderr");
            assert!(!status.success(), "{args:?} started: {err}");
            return err;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?}: still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_missing_unreachable_or_wrong_clickhouse_is_named_at_start() {
    let closed = format!("http://127.0.0.1:{}", testkit::free_port());
    let err = refused(&["--storage", "clickhouse"]);
    assert!(
        err.contains("--storage clickhouse needs --clickhouse-url"),
        "{err}"
    );
    let err = refused(&["--storage", "clickhouse", "--clickhouse-url", &closed]);
    assert!(
        err.contains("unreachable") && err.contains("is clickhouse-server running"),
        "{err}"
    );
    let err = refused(&[
        "--storage",
        "clickhouse",
        "--clickhouse-url",
        "127.0.0.1:8123",
    ]);
    assert!(err.contains("must start with http://"), "{err}");
    let err = refused(&["--clickhouse-url", &closed]);
    assert!(
        err.contains("--clickhouse-url needs --storage clickhouse"),
        "{err}"
    );
    let mut many = vec!["--storage", "clickhouse"];
    for _ in 0..17 {
        many.extend(["--clickhouse-url", closed.as_str()]);
    }
    let err = refused(&many);
    assert!(
        err.contains("--clickhouse-url given 17 times; at most 16"),
        "{err}"
    );
    let long = format!("http://{}", "a".repeat(2100));
    let err = refused(&["--storage", "clickhouse", "--clickhouse-url", &long]);
    assert!(err.contains("at most 2048"), "{err}");
    let err = refused(&[
        "--storage",
        "clickhouse",
        "--clickhouse-url",
        &closed,
        "--clickhouse-user",
        "",
    ]);
    assert!(err.contains("--clickhouse-user must be 1-256"), "{err}");
    let big = tempfile::tempdir().expect("tempdir");
    let big_pw = big.path().join("pw");
    std::fs::write(&big_pw, "p".repeat(5000)).expect("pw");
    set_mode(&big_pw, 0o600);
    let err = refused(&[
        "--storage",
        "clickhouse",
        "--clickhouse-url",
        &closed,
        "--clickhouse-password-file",
        &big_pw.display().to_string(),
    ]);
    assert!(
        err.contains("is 5000 bytes; a password file holds at most 4096"),
        "{err}"
    );
    let Some(server) = clickhouse() else {
        return;
    };
    let err = refused(&[
        "--storage",
        "clickhouse",
        "--clickhouse-url",
        &server.url(),
        "--clickhouse-database",
        "x; DROP DATABASE default",
    ]);
    assert!(
        err.contains("--clickhouse-database") && err.contains("[A-Za-z0-9_]"),
        "{err}"
    );
    let err = refused(&[
        "--storage",
        "clickhouse",
        "--clickhouse-url",
        &server.url(),
        "--checkpoint-dir",
        "/tmp/x",
    ]);
    assert!(
        err.contains("--checkpoint-dir works with --storage rocksdb only"),
        "{err}"
    );
    // Something that is not ClickHouse answers there: said so.
    let other = ClickHouse::start(ClickHouseOptions {
        password: Some("right".into()),
        ..ClickHouseOptions::default()
    })
    .expect("a second clickhouse-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "wrong\n").expect("pw");
    set_mode(&pw, 0o644);
    let pws = pw.display().to_string();
    let err = refused(&[
        "--storage",
        "clickhouse",
        "--clickhouse-url",
        &other.url(),
        "--clickhouse-password-file",
        &pws,
    ]);
    assert!(err.contains("group or others may read it"), "{err}");
    set_mode(&pw, 0o600);
    let err = refused(&[
        "--storage",
        "clickhouse",
        "--clickhouse-url",
        &other.url(),
        "--clickhouse-password-file",
        &pws,
    ]);
    assert!(
        err.contains("refused the credentials of user \"default\""),
        "{err}"
    );
    // The collector's own HTTP port is not ClickHouse.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for s in listener.incoming().flatten().take(4) {
            let mut s = s;
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
            );
        }
    });
    let err = refused(&[
        "--storage",
        "clickhouse",
        "--clickhouse-url",
        &format!("http://127.0.0.1:{port}"),
    ]);
    assert!(err.contains("is this ClickHouse's HTTP port"), "{err}");
}

async fn seed_wide(p: &Pair) {
    let t0 = now() - 900 * S;
    let recs: Vec<_> = (1..=400u64)
        .map(|s| json_line("acme", "node-1", s, t0 + s as i64 * S, &"x".repeat(150)))
        .collect();
    assert_eq!(
        p.ingest(SHIP_ACME, &batch("acme", "node-1", recs)).await,
        (400, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answer_and_scan_budgets_cut_alike() {
    // The answer stops at the byte budget, marked, on both.
    let Some(p) = Pair::start("c_answer_budget", |c| c.read.max_answer_bytes = 4_000).await else {
        return;
    };
    seed_wide(&p).await;
    let (status, v) = p
        .get(
            OP_ACME,
            "/api/v1/logs",
            &[("query", "{}"), ("since", "2h"), ("limit", "1000")],
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let n = records(&v).len();
    assert!(n > 0 && n < 400, "cut by the answer budget: {n}");
    p.stop().await;
    // A search that must read more than the scan budget is refused alike
    // (ClickHouse counts what the server reads: whole granules of every
    // column, so a small budget refuses earlier there; see README).
    let Some(p) = Pair::start("c_scan_budget", |c| c.read.max_scanned_bytes = 60_000).await else {
        return;
    };
    seed_wide(&p).await;
    let (status, v) = p
        .get(
            OP_ACME,
            "/api/v1/logs",
            &[
                ("query", r#"{} |= "absent-needle""#),
                ("since", "2h"),
                ("limit", "10"),
            ],
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("max-query-scan-bytes"), "{v}");
    p.stop().await;
}

//! Each engine of `testkit::engines` starts on loopback, answers, and is
//! gone after it is dropped. A missing package fails the test: `./scripts/setup.sh`
//! installs all of them.

use std::time::Duration;

use testkit::engines::{
    four_letter, http, ChromeDriver, ClickHouse, ClickHouseOptions, VictoriaMetrics, ZooKeeper,
};

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split_whitespace().nth(2).is_some_and(|st| st != "Z"))
}

fn gone(pid: u32) {
    for _ in 0..50 {
        if !alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("process {pid} still runs after its engine was dropped");
}

#[test]
fn clickhouse_answers_queries_and_restarts_on_its_data() {
    let mut ch = ClickHouse::start(ClickHouseOptions::default()).expect("start clickhouse-server");
    assert!(
        ch.query("SELECT version()").unwrap().starts_with("18."),
        "Debian's 18.16 expected"
    );
    ch.query("CREATE TABLE t (k UInt64, v String) ENGINE = ReplacingMergeTree ORDER BY k")
        .unwrap();
    ch.query("INSERT INTO t VALUES (1, 'a'), (1, 'b'), (2, 'c')")
        .unwrap();
    ch.restart().expect("restart");
    assert_eq!(ch.query("SELECT count() FROM t FINAL").unwrap().trim(), "2");
    let err = ch.query("SELECT nope FROM t").unwrap_err();
    assert!(err.contains("nope"), "{err}");
    let pid = ch.pid();
    drop(ch);
    gone(pid);
}

#[test]
fn two_clickhouse_replicas_replicate_through_zookeeper() {
    let zk = ZooKeeper::start().expect("start zookeeper");
    // `srvr` may answer empty while the server is still settling.
    let srvr = (0..50)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            four_letter(&zk.address(), "srvr").unwrap_or_default()
        })
        .find(|s| s.contains("Mode:"))
        .expect("srvr answers");
    assert!(srvr.contains("Mode: standalone"), "{srvr}");
    let (p1, p2) = (ClickHouse::reserve_ports(), ClickHouse::reserve_ports());
    let replica = |name: &str, ports| ClickHouseOptions {
        zookeeper: Some(zk.address()),
        shard: Some("01".into()),
        replica: Some(name.into()),
        cluster: vec![vec![p1.1, p2.1]],
        ports: Some(ports),
        password: None,
    };
    let a = ClickHouse::start(replica("r1", p1)).expect("replica r1");
    let b = ClickHouse::start(replica("r2", p2)).expect("replica r2");
    let ddl = "CREATE TABLE r (k UInt64) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/r', '{replica}') ORDER BY k";
    a.query(ddl).unwrap();
    b.query(ddl).unwrap();
    a.query("INSERT INTO r VALUES (1), (2), (3)").unwrap();
    let mut n = String::new();
    for _ in 0..100 {
        n = b.query("SELECT count() FROM r").unwrap();
        if n.trim() == "3" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(n.trim(), "3", "the second replica has the rows");
}

#[test]
fn victoria_metrics_takes_prometheus_text_and_answers_promql() {
    let vm = VictoriaMetrics::start().expect("start victoria-metrics");
    let addr = format!("127.0.0.1:{}", vm.port);
    let (s, _) = http(
        "POST",
        &addr,
        "/api/v1/import/prometheus",
        b"up{job=\"t\"} 1\n",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(s, 204);
    let (_, body) = http(
        "GET",
        &addr,
        "/internal/force_flush",
        b"",
        Duration::from_secs(5),
    )
    .unwrap();
    let _ = body;
    let mut answer = String::new();
    for _ in 0..50 {
        answer = http(
            "GET",
            &addr,
            "/api/v1/query?query=up",
            b"",
            Duration::from_secs(5),
        )
        .unwrap()
        .1;
        if answer.contains("\"job\":\"t\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(answer.contains("\"job\":\"t\""), "{answer}");
}

#[test]
fn chromedriver_opens_a_headless_chromium_session() {
    let cd = ChromeDriver::start().expect("start chromedriver");
    let addr = format!("127.0.0.1:{}", cd.port);
    let caps = serde_json::to_vec(&cd.capabilities(1280, 800)).unwrap();
    let (status, body) = http("POST", &addr, "/session", &caps, Duration::from_secs(60)).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = v["value"]["sessionId"]
        .as_str()
        .expect("session id")
        .to_string();
    let (status, _) = http(
        "DELETE",
        &addr,
        &format!("/session/{id}"),
        b"",
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(status, 200);
}

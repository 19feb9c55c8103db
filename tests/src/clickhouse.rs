//! Collectors over ClickHouse: the engines started or the test skipped
//! (loudly, only where the package is missing), collectors with the
//! ClickHouse flags, batches of numbered records, and counts read straight
//! from a server.

use std::path::Path;

use serde_json::Value;
use testkit::engines::{skip, ClickHouse, ClickHouseOptions, ZooKeeper};

use crate::collector::{shipper_token, Collector};
use crate::shipper::Shipper;

const CLICKHOUSE: &str = "/usr/sbin/clickhouse-server";
const ZOOKEEPER: &str = "/usr/share/zookeeper";

/// A `clickhouse-server`; `None` (with a loud skip notice) only when the
/// package is not installed.
pub fn start_or_skip(test: &str, opts: ClickHouseOptions) -> Option<ClickHouse> {
    if !Path::new(CLICKHOUSE).exists() {
        skip(
            test,
            "clickhouse-server is not installed (scripts/setup.sh)",
        );
        return None;
    }
    Some(ClickHouse::start(opts).unwrap_or_else(|e| panic!("clickhouse-server did not start: {e}")))
}

/// A ZooKeeper; `None` (with a loud skip notice) only when the package is
/// not installed.
pub fn zookeeper_or_skip(test: &str) -> Option<ZooKeeper> {
    if !Path::new(ZOOKEEPER).exists() || !Path::new(CLICKHOUSE).exists() {
        skip(
            test,
            "zookeeper or clickhouse-server is not installed (scripts/setup.sh)",
        );
        return None;
    }
    Some(ZooKeeper::start().unwrap_or_else(|e| panic!("zookeeper did not start: {e}")))
}

/// A collector in `root` for `subscriptions` with `--storage clickhouse`,
/// `flags`, and `--clickhouse-url` for each of `urls` in order.
pub fn collector(
    root: &Path,
    subscriptions: &[&str],
    flags: &[&str],
    urls: &[String],
) -> Collector {
    let mut c = Collector::new(root, subscriptions);
    c.args.extend(["--storage".into(), "clickhouse".into()]);
    c.args.extend(flags.iter().map(|f| f.to_string()));
    for u in urls {
        c.args.extend(["--clickhouse-url".into(), u.clone()]);
    }
    c
}

/// A shipper in `dir/shipper` for `file` as `source`, delivering to the
/// first of `collectors` and failing over to the others (`--collector`).
pub fn shipper_over(
    dir: &Path,
    source: &str,
    subscription: &str,
    collectors: &[Collector],
    file: &Path,
) -> Shipper {
    let mut shipper = Shipper::new(
        &dir.join("shipper"),
        source,
        subscription,
        &collectors[0].url,
        &collectors[0].token_file(subscription),
        &[file],
    );
    for c in &collectors[1..] {
        shipper.args.extend(["--collector".into(), c.url.clone()]);
    }
    shipper
}

/// `n` log records `record <seq> of <source>`, a millisecond apart, posted
/// to `first` (all new) and then to `second` (all duplicates).
pub async fn ingest_twice(first: &Collector, second: &Collector, sub: &str, source: &str, n: u64) {
    let now = schemas::time::now_nanos();
    let records: Vec<_> = (1..=n)
        .map(|q| {
            testkit::records::record(
                sub,
                source,
                q,
                now - 60_000_000_000 + q as i64 * 1_000_000,
                testkit::records::log_body("app", &format!("record {q} of {source}")),
            )
        })
        .collect();
    let batch = testkit::records::batch(sub, source, "", records);
    let body = schemas::to_msgpack(&batch).expect("encode");
    let client = reqwest::Client::new();
    for (c, want) in [(first, n), (second, 0)] {
        let r = client
            .post(format!("{}/api/v1/ingest", c.url))
            .bearer_auth(shipper_token(sub))
            .header("content-type", "application/msgpack")
            .body(body.clone())
            .send()
            .await
            .expect("ingest");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["accepted"], want, "{} {source}: {v}", c.url);
    }
}

/// A number `sql` answers on `server`.
pub fn count(server: &ClickHouse, sql: &str) -> u64 {
    server
        .query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

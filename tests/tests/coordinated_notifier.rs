//! One notifier per subscription across collectors (`--coordination`):
//! two `sesam-collector` processes over one ClickHouse, coordinating
//! through one ZooKeeper (Debian's packages, on free loopback ports).
//!
//! The incident: a pipe fails (records sent to the collector that does not
//! evaluate the subscription), fails again, the evaluating collector is
//! killed with SIGKILL mid-incident, the survivor takes over, the pipe
//! fails once more and then recovers; the killed collector comes back,
//! ownership may move back to it, and a new incident starts. The webhook
//! must see exactly: firing, resolved, firing (repeats only with an
//! already-seen `X-Notification-Id`). Rules are created through the
//! collector that does not own the subscription (forwarded to the owner).
//!
//! The second test runs three collectors and kills the owner while the
//! webhook holds the firing notification's request unanswered: the new
//! owner sends it again with the same `X-Notification-Id`.

use std::time::{Duration, Instant};

use e2e::collector::{shipper_token, Collector};
use e2e::coordinated::{collector, Client};
use e2e::process::until;
use e2e::webhook::Webhook;
use schemas::EventType;
use serde_json::json;
use testkit::engines::ClickHouseOptions;

const SUB: &str = "coord";
const SOURCE: &str = "node-1";
const PIPE: &str = "orders";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_evaluator_per_subscription_survives_the_owners_kill_without_paging_again() {
    let Some(zk) = e2e::clickhouse::zookeeper_or_skip("coordinated notifier") else {
        return;
    };
    let Some(ch) =
        e2e::clickhouse::start_or_skip("coordinated notifier", ClickHouseOptions::default())
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start().await;
    let mut cs: Vec<Collector> = ["c0", "c1"]
        .iter()
        .map(|id| collector(&dir.path().join(id), id, &[SUB], &zk.address(), &ch.url()))
        .collect();
    for c in &mut cs {
        c.start().await;
    }
    let api = Client::new(SUB);

    // Who owns the subscription: the collector that answers its API.
    let owner = api.owner_of(&cs, &[0, 1]).await;
    let owner_id = format!("c{owner}");
    let other = 1 - owner;
    eprintln!("owner: c{owner}");

    // Rules made through the collector that does not own it.
    api.webhook_rule(&cs[other], &hook.url, &owner_id, PIPE, None)
        .await;
    // A body over the limit is refused by the forwarding collector,
    // naming the field and the limit, not buffered or passed on.
    let big = "x".repeat(3 << 20);
    let (st, _, body) = api
        .call(
            &cs[other],
            "POST",
            "/api/v1/notification-rules",
            Some(json!({"name": big})),
        )
        .await;
    assert_eq!((st, body["field"].as_str()), (413, Some("body")), "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("2097152")),
        "{body}"
    );
    // Both collectors list it (the other one forwards).
    for c in &cs {
        let (st, by, body) = api.call(c, "GET", "/api/v1/notification-rules", None).await;
        assert_eq!((st, by.as_str()), (200, owner_id.as_str()), "{body}");
        assert_eq!(body["rules"].as_array().map(Vec::len), Some(1), "{body}");
    }

    // The pipe fails: sent to the collector that does not evaluate it.
    api.event(&cs[other], SOURCE, PIPE, 1, EventType::PumpFailed)
        .await;
    until(
        "the firing notification",
        Duration::from_secs(20),
        || async { (hook.distinct().0.len() == 1).then_some(()) },
    )
    .await;
    // And again, through the owner: no second page.
    api.event(&cs[owner], SOURCE, PIPE, 2, EventType::PumpFailed)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    hook.assert_exactly(&[("firing", SOURCE, PIPE)]);

    // The owner dies mid-incident.
    cs[owner].kill();
    let killed = Instant::now();
    let alerts = until(
        "the survivor's takeover",
        Duration::from_secs(30),
        || async {
            let (st, by, body) = api.call(&cs[other], "GET", "/api/v1/alerts", None).await;
            (st == 200 && by == format!("c{other}")).then_some(body)
        },
    )
    .await;
    let takeover = killed.elapsed();
    eprintln!("takeover after SIGKILL (session timeout 2 s): {takeover:?}");
    assert_eq!(
        alerts["alerts"].as_array().map(Vec::len),
        Some(1),
        "the firing alert moved with the subscription: {alerts}"
    );
    // Still failing: no page; then it recovers: one resolved page.
    api.event(&cs[other], SOURCE, PIPE, 3, EventType::PumpFailed)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    hook.assert_exactly(&[("firing", SOURCE, PIPE)]);
    api.event(&cs[other], SOURCE, PIPE, 4, EventType::PumpCompleted)
        .await;
    until(
        "the resolved notification",
        Duration::from_secs(20),
        || async { (hook.distinct().0.len() == 2).then_some(()) },
    )
    .await;

    // The killed collector returns; the subscription may move back to it.
    cs[owner].start().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now_owner = until(
        "an owner after the return",
        Duration::from_secs(30),
        || async {
            let (st, by, _) = api.call(&cs[other], "GET", "/api/v1/alerts", None).await;
            (st == 200 && !by.is_empty()).then_some(by)
        },
    )
    .await;
    eprintln!("owner after the return: {now_owner}");
    // Recovered already: nothing; then a new incident: one page.
    api.event(&cs[owner], SOURCE, PIPE, 5, EventType::PumpCompleted)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(hook.distinct().0.len(), 2, "a second resolved page");
    api.event(&cs[owner], SOURCE, PIPE, 6, EventType::PumpFailed)
        .await;
    until(
        "the new incident's page",
        Duration::from_secs(20),
        || async { (hook.distinct().0.len() == 3).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let repeats = hook.assert_exactly(&[
        ("firing", SOURCE, PIPE),
        ("resolved", SOURCE, PIPE),
        ("firing", SOURCE, PIPE),
    ]);
    eprintln!("{repeats} repeat(s); takeover {takeover:?}");
    for c in &mut cs {
        c.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_in_flight_at_the_owners_kill_is_sent_again_with_its_id() {
    let Some(zk) = e2e::clickhouse::zookeeper_or_skip("coordinated notifier, in flight") else {
        return;
    };
    let Some(ch) = e2e::clickhouse::start_or_skip(
        "coordinated notifier, in flight",
        ClickHouseOptions::default(),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // The first request is recorded at once and answered after 20 s.
    let hook = Webhook::start_slow_first(Duration::from_secs(20)).await;
    let mut cs: Vec<Collector> = ["c0", "c1", "c2"]
        .iter()
        .map(|id| collector(&dir.path().join(id), id, &[SUB], &zk.address(), &ch.url()))
        .collect();
    for c in &mut cs {
        c.start().await;
    }
    let api = Client::new(SUB);
    let owner = api.owner_of(&cs, &[0, 1, 2]).await;
    let other = (owner + 1) % 3;
    api.webhook_rule(&cs[other], &hook.url, &format!("c{owner}"), PIPE, None)
        .await;
    api.event(&cs[other], SOURCE, PIPE, 1, EventType::PumpFailed)
        .await;
    // The owner has sent it and waits for the answer: killed now.
    until(
        "the first delivery attempt",
        Duration::from_secs(20),
        || async { (!hook.deliveries().is_empty()).then_some(()) },
    )
    .await;
    cs[owner].kill();
    let killed = Instant::now();
    let alive: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    let next = api.new_owner(&cs, alive[0], owner).await;
    eprintln!("new owner c{next} after {:?}", killed.elapsed());
    until(
        "the notification sent again",
        Duration::from_secs(30),
        || async { (hook.deliveries().len() >= 2).then_some(()) },
    )
    .await;
    eprintln!(
        "in-flight notification sent again {:?} after the owner's SIGKILL (session timeout 2 s)",
        killed.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let repeats = hook.assert_exactly(&[("firing", SOURCE, PIPE)]);
    assert!(repeats >= 1, "the new owner did not send it again");
    // The new owner recorded it as delivered: nothing more comes.
    api.event(&cs[alive[1]], SOURCE, PIPE, 2, EventType::PumpFailed)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    hook.assert_exactly(&[("firing", SOURCE, PIPE)]);
    for c in &mut cs {
        c.stop();
    }
}

/// Pushes one `disk_free_bytes` sample of `node-1` to `c` (remote-write).
async fn push_disk(c: &Collector, value: f64) {
    let body = e2e::hostile::remote_write(
        &[(
            vec![
                ("__name__".into(), "disk_free_bytes".into()),
                ("instance".into(), SOURCE.into()),
            ],
            value,
        )],
        schemas::time::now_nanos() / 1_000_000,
    );
    let (st, v) =
        e2e::hostile::post_remote_write(&reqwest::Client::new(), &c.url, &shipper_token(SUB), body)
            .await;
    assert!(
        (200..300).contains(&st),
        "remote-write to {}: {st} {v}",
        c.url
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_threshold_fires_once_whichever_collector_the_samples_reach() {
    let Some(zk) = e2e::clickhouse::zookeeper_or_skip("coordinated metric_threshold") else {
        return;
    };
    let Some(ch) = e2e::clickhouse::start_or_skip(
        "coordinated metric_threshold",
        ClickHouseOptions::default(),
    ) else {
        return;
    };
    if !std::path::Path::new("/usr/bin/victoria-metrics").exists() {
        testkit::engines::skip(
            "metric_threshold_fires_once_whichever_collector_the_samples_reach",
            "victoria-metrics is not installed (scripts/setup.sh)",
        );
        return;
    }
    let vm = testkit::engines::VictoriaMetrics::start()
        .unwrap_or_else(|e| panic!("victoria-metrics did not start: {e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start().await;
    let mut cs: Vec<Collector> = ["c0", "c1"]
        .iter()
        .map(|id| {
            let mut c = collector(&dir.path().join(id), id, &[SUB], &zk.address(), &ch.url());
            c.args.extend([
                "--metrics-storage".into(),
                "victoriametrics".into(),
                "--victoriametrics-url".into(),
                vm.url(),
                "--coordination-metric-interval".into(),
                "1s".into(),
            ]);
            c
        })
        .collect();
    for c in &mut cs {
        c.start().await;
    }
    let api = Client::new(SUB);
    let owner = api.owner_of(&cs, &[0, 1]).await;
    let other = 1 - owner;
    let rule = json!({"name": "DiskLow", "type": "metric_threshold", "receivers": ["ops"],
        "params": {"metric": "disk_free_bytes", "op": "<", "value": 1000}});
    api.webhook_rule(
        &cs[other],
        &hook.url,
        &format!("c{owner}"),
        PIPE,
        Some(rule),
    )
    .await;
    // Low, pushed to the collector that does not evaluate: one page.
    push_disk(&cs[other], 10.0).await;
    until(
        "the firing notification",
        Duration::from_secs(30),
        || async { (hook.distinct().0.len() == 1).then_some(()) },
    )
    .await;
    // Low again, to the owner: still one page (several polls pass).
    push_disk(&cs[owner], 20.0).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(hook.distinct().0.len(), 1, "paged again");
    // Recovered, pushed to the other: one resolved page.
    push_disk(&cs[other], 5000.0).await;
    until(
        "the resolved notification",
        Duration::from_secs(30),
        || async { (hook.distinct().0.len() == 2).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (distinct, repeats) = hook.distinct();
    let statuses: Vec<&str> = distinct
        .iter()
        .map(|d| d.body["alerts"][0]["status"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(statuses, ["firing", "resolved"], "{repeats} repeats");
    for c in &mut cs {
        c.stop();
    }
}

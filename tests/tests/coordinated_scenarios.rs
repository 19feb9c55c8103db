//! The notifier's alert scenarios across a takeover (`--coordination`):
//! two `sesam-collector` processes over one ClickHouse and one ZooKeeper
//! (Debian's packages, on free loopback ports), the owner of the
//! subscription killed with SIGKILL in the middle of each scenario. The
//! webhook must see exactly the notifications one collector would have
//! sent (repeats only with an already-seen `X-Notification-Id`).
//!
//! - flapping, a silence and a repeat count: a pipe fails, recovers and
//!   fails again while another pipe fails under a silence; the owner dies;
//!   the silence ends on the new owner (one page), the repeat counts the
//!   events of both owners, each recovery pages once;
//! - a receiver down: the owner cannot deliver, dies; the new owner keeps
//!   retrying and delivers once the receiver is back, once;
//! - a node killed and returning: its heartbeat fires, the owner dies,
//!   comes back, the node returns: exactly the heartbeat's firing and
//!   resolved pages, none for its pipes.

use std::time::{Duration, Instant};

use e2e::collector::Collector;
use e2e::coordinated::{collector, Client};
use e2e::node::Node;
use e2e::process::until;
use e2e::webhook::Webhook;
use schemas::EventType;
use serde_json::{json, Value};
use testkit::engines::{ClickHouse, ClickHouseOptions, ZooKeeper};

const SUB: &str = "scenes";
const SOURCE: &str = "node-1";

/// ZooKeeper, ClickHouse and two started coordinated collectors, or a loud
/// skip when the engines are not installed.
async fn two_collectors(
    test: &str,
    dir: &std::path::Path,
) -> Option<(ZooKeeper, ClickHouse, Vec<Collector>)> {
    let zk = e2e::clickhouse::zookeeper_or_skip(test)?;
    let ch = e2e::clickhouse::start_or_skip(test, ClickHouseOptions::default())?;
    let mut cs: Vec<Collector> = ["c0", "c1"]
        .iter()
        .map(|id| collector(&dir.join(id), id, &[SUB], &zk.address(), &ch.url()))
        .collect();
    for c in &mut cs {
        c.start().await;
    }
    Some((zk, ch, cs))
}

/// The (status, pipe, `triggered_additional`) of every distinct
/// notification, in arrival order.
fn received(hook: &Webhook) -> Vec<(String, String, String)> {
    hook.distinct()
        .0
        .iter()
        .map(|d| {
            let a = &d.body["alerts"][0];
            let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
            (
                s(&a["status"]),
                s(&a["labels"]["pipe"]),
                s(&a["annotations"]["triggered_additional"]),
            )
        })
        .collect()
}

async fn count(hook: &Webhook, what: &str, n: usize) {
    until(what, Duration::from_secs(30), || async {
        (hook.distinct().0.len() >= n).then_some(())
    })
    .await;
}

/// The state of the alert of `pipe` in `GET /api/v1/alerts`.
fn alert_of(alerts: &Value, pipe: &str) -> Option<Value> {
    alerts["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["labels"]["pipe"] == pipe)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_a_silence_and_a_repeat_count_move_with_the_subscription() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((_zk, _ch, mut cs)) = two_collectors("coordinated scenarios", dir.path()).await else {
        return;
    };
    let hook = Webhook::start().await;
    let api = Client::new(SUB);
    let owner = api.owner_of(&cs, &[0, 1]).await;
    let other = 1 - owner;
    // Every pipe; a repeat after 20 s counts the events in between.
    let rule = json!({"name": "failed", "type": "pump_failed", "receivers": ["ops"],
                      "repeat_interval": "20s"});
    api.webhook_rule(&cs[other], &hook.url, &format!("c{owner}"), "*", Some(rule))
        .await;
    // `customers` is silenced for the next 15 s (made through the
    // collector that does not own the subscription).
    let ends = schemas::time::rfc3339_from_nanos(schemas::time::now_nanos() + 15_000_000_000);
    let silence = json!({"matchers": [{"name": "pipe", "value": "customers"}],
                         "endsAt": ends, "comment": "maintenance"});
    let (st, by, body) = api
        .call(&cs[other], "POST", "/api/v1/silences", Some(silence))
        .await;
    assert!(st == 200 || st == 201, "silence: {st} {body}");
    assert_eq!(by, format!("c{owner}"));
    let silenced_at = Instant::now();

    // `orders` flaps: fails, recovers, fails (records to both collectors).
    api.event(&cs[other], SOURCE, "orders", 1, EventType::PumpFailed)
        .await;
    count(&hook, "the first firing", 1).await;
    api.event(&cs[owner], SOURCE, "orders", 2, EventType::PumpCompleted)
        .await;
    count(&hook, "the first resolution", 2).await;
    api.event(&cs[other], SOURCE, "orders", 3, EventType::PumpFailed)
        .await;
    count(&hook, "the second firing", 3).await;
    // `customers` fails under the silence; `orders` fails once more (a
    // further event, counted for the repeat).
    api.event(&cs[other], SOURCE, "customers", 4, EventType::PumpFailed)
        .await;
    api.event(&cs[owner], SOURCE, "orders", 5, EventType::PumpFailed)
        .await;
    until(
        "customers firing under the silence",
        Duration::from_secs(20),
        || async {
            let (_, _, alerts) = api.call(&cs[owner], "GET", "/api/v1/alerts", None).await;
            alert_of(&alerts, "customers").filter(|a| a["status"]["state"] == "suppressed")
        },
    )
    .await;

    // The owner dies at once (its last state write may be a second old:
    // the new owner evaluates those records again).
    cs[owner].kill();
    let new = api.new_owner(&cs, other, owner).await;
    assert_eq!(new, other);
    let (_, _, silences) = api.call(&cs[other], "GET", "/api/v1/silences", None).await;
    assert_eq!(
        silences["silences"].as_array().map(Vec::len),
        Some(1),
        "the silence moved: {silences}"
    );
    // The alert under the silence: imported, or evaluated again from the
    // records after the last state write.
    let customers = until(
        "customers' alert on the new owner",
        Duration::from_secs(10),
        || async {
            let (_, _, alerts) = api.call(&cs[other], "GET", "/api/v1/alerts", None).await;
            alert_of(&alerts, "customers")
        },
    )
    .await;
    assert_eq!(
        customers["status"]["silencedBy"].as_array().map(Vec::len),
        Some(1),
        "{customers}"
    );
    // One more failure of `orders`, on the new owner: counted too.
    api.event(&cs[other], SOURCE, "orders", 6, EventType::PumpFailed)
        .await;
    assert!(
        silenced_at.elapsed() < Duration::from_secs(15),
        "the takeover took longer than the silence; the test cannot check it"
    );
    assert_eq!(received(&hook).len(), 3, "nothing paged during the silence");

    // The silence ends: `customers` pages once, from the new owner.
    count(&hook, "customers' page after the silence", 4).await;
    // The repeat of `orders`: 20 s after its second firing, counting the
    // events of both owners (5 and 6).
    count(&hook, "the repeat of orders", 5).await;
    api.event(&cs[other], SOURCE, "orders", 7, EventType::PumpCompleted)
        .await;
    api.event(&cs[other], SOURCE, "customers", 8, EventType::PumpCompleted)
        .await;
    count(&hook, "both resolutions", 7).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = received(&hook);
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        got[..5],
        [
            s("firing", "orders", "-"),
            s("resolved", "orders", "-"),
            s("firing", "orders", "-"),
            s("firing", "customers", "-"),
            s("firing", "orders", "2"),
        ],
        "{got:?}"
    );
    let mut last = got[5..].to_vec();
    last.sort();
    assert_eq!(
        last,
        [
            s("resolved", "customers", "-"),
            s("resolved", "orders", "-")
        ],
        "{got:?}"
    );
    for c in &mut cs {
        c.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_across_a_takeover_gets_the_page_once_it_is_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((_zk, _ch, mut cs)) = two_collectors("coordinated receiver down", dir.path()).await
    else {
        return;
    };
    let hook = Webhook::start().await;
    hook.set_down(true);
    let api = Client::new(SUB);
    let owner = api.owner_of(&cs, &[0, 1]).await;
    let other = 1 - owner;
    api.webhook_rule(&cs[other], &hook.url, &format!("c{owner}"), "orders", None)
        .await;
    api.event(&cs[other], SOURCE, "orders", 1, EventType::PumpFailed)
        .await;
    until(
        "the owner's first attempt",
        Duration::from_secs(20),
        || async { (hook.refused() >= 1).then_some(()) },
    )
    .await;

    // The owner dies with the notification undelivered.
    cs[owner].kill();
    api.new_owner(&cs, other, owner).await;
    let refused = hook.refused();
    until(
        "the new owner's attempt",
        Duration::from_secs(40),
        || async { (hook.refused() > refused).then_some(()) },
    )
    .await;
    let (_, _, notes) = api
        .call(&cs[other], "GET", "/api/v1/notifications", None)
        .await;
    eprintln!("notifications on the new owner: {notes}");

    // The receiver is back: the page arrives once (the retry backoff is
    // at most 16 s at this point).
    hook.set_down(false);
    count(&hook, "the page after the receiver's return", 1).await;
    api.event(&cs[other], SOURCE, "orders", 2, EventType::PumpCompleted)
        .await;
    count(&hook, "the resolution", 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    hook.assert_exactly(&[("firing", SOURCE, "orders"), ("resolved", SOURCE, "orders")]);
    for c in &mut cs {
        c.stop();
    }
}

const NODE: &str = "node-returns";
const HEARTBEAT_SECS: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_returning_while_its_owner_dies_pages_only_for_its_heartbeat() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((_zk, _ch, mut cs)) = two_collectors("coordinated returning node", dir.path()).await
    else {
        return;
    };
    let hook = Webhook::start().await;
    let api = Client::new(SUB);
    let owner = api.owner_of(&cs, &[0, 1]).await;
    let other = 1 - owner;
    let by = format!("c{owner}");
    api.webhook_rule(
        &cs[other],
        &hook.url,
        &by,
        "*",
        Some(
            json!({"id": "silent", "name": "Node silent", "type": "node_heartbeat_overdue",
                    "params": {"interval": format!("{HEARTBEAT_SECS}s")}, "receivers": ["ops"]}),
        ),
    )
    .await;
    let (st, _, body) = api
        .call(
            &cs[other],
            "POST",
            "/api/v1/notification-rules",
            Some(
                json!({"id": "late", "name": "Pipe late", "type": "pump_started_overdue",
                        "params": {"grace": "3s"}, "receivers": ["ops"]}),
            ),
        )
        .await;
    assert_eq!(st, 201, "{body}");

    // The node ships to the collector that does not evaluate it.
    let mut n = Node::new(
        &dir.path().join("node"),
        NODE,
        SUB,
        &e2e::node::scheduled_pipes_config(&["orders", "customers"]),
    );
    n.collector = Some((cs[other].url.clone(), cs[other].token_file(SUB)));
    let node_flags = ["--health-interval".to_string(), "1s".to_string()];
    n.start(&node_flags).await;
    cs[other].wait_pipe_runs(SUB, 2, 3).await;
    assert!(hook.deliveries().is_empty(), "{:?}", hook.deliveries());

    // The node dies; its heartbeat pages.
    n.kill();
    until("the heartbeat page", Duration::from_secs(60), || async {
        (!hook.deliveries().is_empty()).then_some(())
    })
    .await;
    // The owner dies while the node is dead, and comes back.
    cs[owner].kill();
    api.new_owner(&cs, other, owner).await;
    tokio::time::sleep(Duration::from_secs(HEARTBEAT_SECS)).await;
    assert_eq!(
        hook.distinct().0.len(),
        1,
        "no second page after the takeover"
    );
    cs[owner].start().await;
    api.owner_of(&cs, &[0, 1]).await;

    // The node returns: its heartbeat resolves, its pipes do not page.
    n.start(&node_flags).await;
    cs[other].wait_pipe_runs(SUB, 2, 5).await;
    // Longer than the fresh grace (schedule 2 s + grace 3 s).
    tokio::time::sleep(Duration::from_secs(8)).await;
    hook.assert_exactly(&[("firing", NODE, "?"), ("resolved", NODE, "?")]);
    n.stop();
    for c in &mut cs {
        c.stop();
    }
}

/// A member id `c<N>` (N > 0) that rendezvous hashing gives `SUB` to over
/// `c0`.
fn joiner_taking_the_subscription() -> usize {
    (1..100)
        .find(|i| {
            let ids = ["c0".to_string(), format!("c{i}")];
            coordination::rendezvous::owner(SUB, ids.iter().map(String::as_str))
                == Some(ids[1].as_str())
        })
        .expect("one of 99 ids wins the subscription")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_move_hands_over_a_delivery_in_flight_without_sending_it_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(zk) = e2e::clickhouse::zookeeper_or_skip("coordinated clean move") else {
        return;
    };
    let Some(ch) =
        e2e::clickhouse::start_or_skip("coordinated clean move", ClickHouseOptions::default())
    else {
        return;
    };
    // The receiver answers its first request after 1 s: the move starts
    // while that delivery is in flight.
    let hook = Webhook::start_slow_first(Duration::from_secs(1)).await;
    let j = joiner_taking_the_subscription();
    let mut cs: Vec<Collector> = (0..=j)
        .map(|i| {
            let id = format!("c{i}");
            collector(&dir.path().join(&id), &id, &[SUB], &zk.address(), &ch.url())
        })
        .collect();
    cs[0].start().await;
    let api = Client::new(SUB);
    assert_eq!(api.owner_of(&cs, &[0]).await, 0);
    api.webhook_rule(&cs[0], &hook.url, "c0", "orders", None)
        .await;
    api.event(&cs[0], SOURCE, "orders", 1, EventType::PumpFailed)
        .await;
    until(
        "the delivery in flight",
        Duration::from_secs(20),
        || async { (!hook.deliveries().is_empty()).then_some(()) },
    )
    .await;
    // A collector joins that takes the subscription.
    let joined = Instant::now();
    cs[j].start().await;
    assert_eq!(api.owner_of(&cs, &[0, j]).await, j);
    eprintln!(
        "subscription moved {:?} after the join began",
        joined.elapsed()
    );
    // The new owner has the delivery as done: nothing is sent again, and
    // the incident goes on there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let repeats = hook.assert_exactly(&[("firing", SOURCE, "orders")]);
    assert_eq!(
        repeats, 0,
        "the notification delivered by c0 was sent again"
    );
    api.event(&cs[j], SOURCE, "orders", 2, EventType::PumpCompleted)
        .await;
    count(&hook, "the resolution from the new owner", 2).await;
    hook.assert_exactly(&[("firing", SOURCE, "orders"), ("resolved", SOURCE, "orders")]);

    // A rolling restart: the owner is stopped (SIGTERM) while a delivery
    // is in flight; it lets the delivery land, writes its state and
    // leaves, so c0 takes over at once and sends nothing again.
    hook.set_slow(Duration::from_millis(1500));
    api.event(&cs[0], SOURCE, "orders", 3, EventType::PumpFailed)
        .await;
    until(
        "the second delivery in flight",
        Duration::from_secs(20),
        || async { (hook.deliveries().len() >= 3).then_some(()) },
    )
    .await;
    let stopping = Instant::now();
    cs[j].stop();
    assert_eq!(api.owner_of(&cs, &[0]).await, 0);
    let moved = stopping.elapsed();
    eprintln!("SIGTERM of the owner -> c0 owns the subscription after {moved:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let repeats = hook.assert_exactly(&[
        ("firing", SOURCE, "orders"),
        ("resolved", SOURCE, "orders"),
        ("firing", SOURCE, "orders"),
    ]);
    assert_eq!(
        repeats, 0,
        "a notification delivered before the stop was sent again"
    );
    cs[0].stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_conflict_and_a_termination_through_the_non_owner_reach_the_owner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((_zk, _ch, mut cs)) = two_collectors("coordinated conflict", dir.path()).await else {
        return;
    };
    let hook = Webhook::start().await;
    let api = Client::new(SUB);
    let owner = api.owner_of(&cs, &[0, 1]).await;
    let other = 1 - owner;
    let rule = json!({"name": "two lives", "type": "source_conflict", "receivers": ["ops"]});
    api.webhook_rule(&cs[other], &hook.url, &format!("c{owner}"), "*", Some(rule))
        .await;
    // Two outbox epochs write one source, through the collector that does
    // not own the subscription: the second is refused there.
    let ev = EventType::PumpCompleted;
    let (st, body) = api
        .event_in(&cs[other], "life-1", SOURCE, "orders", 1, ev)
        .await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = api
        .event_in(&cs[other], "life-2", SOURCE, "orders", 1, ev)
        .await;
    assert_eq!(st, 200, "a new life: {body}");
    let (st, body) = api
        .event_in(&cs[other], "life-1", SOURCE, "orders", 2, ev)
        .await;
    assert_eq!(
        (st, body["reason"].as_str()),
        (409, Some("source_conflict")),
        "{body}"
    );
    // The owner pages it, once.
    count(&hook, "the conflict's page from the owner", 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (got, _) = hook.distinct();
    let a = &got[0].body["alerts"][0];
    assert_eq!(a["labels"]["rule_type"], "source_conflict", "{a}");
    assert_eq!(a["labels"]["source"], SOURCE, "{a}");
    assert_eq!(got.len(), 1, "one page");

    // The subscription is terminated through the collector that does not
    // own it: the owner's notifier state goes too.
    let r = api
        .http
        .delete(format!("{}/api/v1/subscriptions/{SUB}", cs[other].url))
        .bearer_auth(e2e::collector::ADMIN)
        .send()
        .await
        .expect("terminate");
    assert_eq!(r.status(), 200);
    until(
        "the owner's state purged",
        Duration::from_secs(20),
        || async {
            let (st, by, rules) = api
                .call(&cs[other], "GET", "/api/v1/notification-rules", None)
                .await;
            (st == 200
                && by == format!("c{owner}")
                && rules["rules"].as_array().is_some_and(Vec::is_empty))
            .then_some(())
        },
    )
    .await;
    let (_, _, alerts) = api.call(&cs[owner], "GET", "/api/v1/alerts", None).await;
    assert_eq!(
        alerts["alerts"].as_array().map(Vec::len),
        Some(0),
        "{alerts}"
    );
    for c in &mut cs {
        c.stop();
    }
}

//! Ownership against a real ZooKeeper (one server for this binary, one
//! chroot per test): sharing, clean handover, joining, fencing, shared
//! state, bad configuration.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use coordination::{
    inspect, rendezvous, CoordinationUrl, Coordinator, CoordinatorConfig, Error, FenceError,
    StateError,
};
use zookeeper_client as zk;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_share_thirty_subscriptions_exactly_once_and_a_dropped_one_hands_over() {
    let url = url("share");
    let all = subs(30);
    let rec = Recorder::default();
    let a = Arc::new(start(&url, "c1", &all).await);
    rec.watch(&a);
    let b = Arc::new(start(&url, "c2", &all).await);
    rec.watch(&b);
    let c = Arc::new(start(&url, "c3", &all).await);
    rec.watch(&c);
    let stop = rec.sample(vec![a.clone(), b.clone(), c.clone()], all.clone());

    let owners = until_shared(
        "30 owned once",
        &[&a, &b, &c],
        &all,
        Duration::from_secs(20),
    )
    .await;
    // Spread by rendezvous: each owns exactly its designated share.
    let ids = ["c1", "c2", "c3"];
    for (s, (i, epoch)) in &owners {
        assert_eq!(rendezvous::owner(s, ids), Some(ids[*i]), "{s}");
        assert!(*epoch >= 1);
    }
    for (i, id) in ids.iter().enumerate() {
        let n = owners.values().filter(|(j, _)| *j == i).count();
        assert!(n > 0, "{id} owns nothing of 30");
    }
    // ZooKeeper agrees: one owner node per subscription, epochs stored.
    let view = inspect(&url, Duration::from_secs(5)).await.unwrap();
    assert_eq!(view.members.len(), 3);
    assert_eq!(view.members["c2"], "http://c2.test:8080");
    assert_eq!(a.members().len(), 3);
    for (s, (i, epoch)) in &owners {
        assert_eq!(view.owners[s], (ids[*i].to_string(), *epoch), "{s}");
        assert_eq!(view.epochs[s], *epoch, "{s}");
        assert_eq!(a.designated_owner(s).unwrap().id, ids[*i]);
    }

    // c3 goes away cleanly: its share moves to c1 and c2 at once (no
    // session timeout to wait for), with higher epochs; nothing else moves.
    let c3_share: Vec<String> = owners
        .iter()
        .filter(|(_, (i, _))| *i == 2)
        .map(|(s, _)| s.clone())
        .collect();
    let t0 = std::time::Instant::now();
    stop.stop().await;
    let c = Arc::try_unwrap(c).expect("only the test holds c3 now");
    c.shutdown().await;
    let stop = rec.sample(vec![a.clone(), b.clone()], all.clone());
    let after = until_shared("30 owned by two", &[&a, &b], &all, Duration::from_secs(10)).await;
    let took = t0.elapsed();
    assert!(
        took < SESSION,
        "clean handover took {took:?}, as long as a session timeout"
    );
    for (s, (i, epoch)) in &after {
        let (before_i, before_epoch) = owners[s];
        if c3_share.contains(s) {
            assert!(
                *epoch > before_epoch,
                "{s}: epoch {epoch} after {before_epoch}"
            );
            assert_eq!(rendezvous::owner(s, ["c1", "c2"]), Some(["c1", "c2"][*i]));
        } else {
            assert_eq!(
                (*i, *epoch),
                (before_i, before_epoch),
                "{s} moved needlessly"
            );
        }
    }
    // A dropped (not shut down) coordinator also releases in the background.
    let b_share: Vec<String> = b.owned().into_keys().collect();
    stop.stop().await;
    drop(Arc::try_unwrap(b).expect("only the test holds c2 now"));
    let only = until_shared(
        "30 owned by c1",
        &[&a],
        &all,
        Duration::from_secs(SESSION.as_secs() * 3),
    )
    .await;
    for s in &b_share {
        assert!(only[s].1 > after[s].1);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    rec.assert_never_two_owners();
    assert!(rec.samples() > 20, "sampler ran {} times", rec.samples());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_member_takes_exactly_its_share_and_nothing_else_moves() {
    let url = url("join");
    let all = subs(120);
    let rec = Recorder::default();
    let a = Arc::new(start(&url, "j1", &all).await);
    let b = Arc::new(start(&url, "j2", &all).await);
    let c = Arc::new(start(&url, "j3", &all).await);
    for x in [&a, &b, &c] {
        rec.watch(x);
    }
    let before = until_shared(
        "120 owned by three",
        &[&a, &b, &c],
        &all,
        Duration::from_secs(20),
    )
    .await;
    let d = Arc::new(start(&url, "j4", &all).await);
    rec.watch(&d);
    let stop = rec.sample(
        vec![a.clone(), b.clone(), c.clone(), d.clone()],
        all.clone(),
    );
    let after = until_shared(
        "120 owned by four",
        &[&a, &b, &c, &d],
        &all,
        Duration::from_secs(20),
    )
    .await;
    let four = ["j1", "j2", "j3", "j4"];
    let mut moved = 0;
    for s in &all {
        let (bi, be) = before[s];
        let (ai, ae) = after[s];
        if rendezvous::owner(s, four) == Some("j4") {
            assert_eq!(ai, 3, "{s} should be j4's");
            assert!(ae > be, "{s}: epoch {ae} after {be}");
            moved += 1;
        } else {
            assert_eq!((ai, ae), (bi, be), "{s} moved although j4 is not its owner");
        }
    }
    // About a quarter moves; all of it to the newcomer.
    assert!((10..=50).contains(&moved), "{moved} of 120 moved");
    stop.stop().await;
    rec.assert_never_two_owners();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_owners_fence_and_fenced_writes_fail() {
    let url = url("fence");
    let all = subs(4);
    let a = start(&url, "f1", &all).await;
    let owned = until_shared("f1 owns all", &[&a], &all, Duration::from_secs(10)).await;
    let (_, epoch) = owned["sub-0"];
    a.fence("sub-0", epoch)
        .await
        .expect("current owner passes the fence");
    assert!(matches!(
        a.fence("sub-0", epoch - 1 + 2).await,
        Err(FenceError::NotOwner { current: Some(e), .. }) if e == epoch
    ));
    let v = a
        .set_if_version_fenced("alerts/sub-0", b"{}", None, "sub-0", epoch)
        .await
        .expect("fenced create by the owner");
    assert_eq!(v, 0);

    // Another party takes over behind f1's back (what a new owner does after
    // f1's session expired unnoticed): the epoch moves on in ZooKeeper.
    let raw = zk::Client::connect(&format!("{}{}", url.connect_string(), url.chroot()))
        .await
        .unwrap();
    let path = "/epochs/sub-0";
    let (data, stat) = raw.get_data(path).await.unwrap();
    assert_eq!(std::str::from_utf8(&data).unwrap(), epoch.to_string());
    raw.set_data(path, (epoch + 1).to_string().as_bytes(), Some(stat.version))
        .await
        .unwrap();
    let mut changes = a.changes();
    // The late write of the deposed owner is refused, and it stops owning.
    let err = a
        .set_if_version_fenced("alerts/sub-0", b"late", Some(0), "sub-0", epoch)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StateError::Fence(FenceError::Deposed { .. })),
        "{err}"
    );
    assert_eq!(
        a.get_versioned("alerts/sub-0").await.unwrap().unwrap().data,
        b"{}"
    );
    assert_eq!(a.is_owner("sub-0"), None);
    assert!(matches!(
        a.fence("sub-0", epoch).await,
        Err(FenceError::NotOwner { .. })
    ));
    // Consumers see the loss.
    let mut saw_loss = false;
    for _ in 0..8 {
        let ev = tokio::time::timeout(Duration::from_secs(5), changes.next())
            .await
            .unwrap()
            .unwrap();
        if ev.subscription == "sub-0" && !ev.owned && ev.epoch == epoch {
            saw_loss = true;
            break;
        }
    }
    assert!(saw_loss);
    // Fence refusals are counted by reason.
    let mut reg = prometheus_client::registry::Registry::default();
    a.register_metrics(&mut reg);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    assert!(
        text.contains("coordination_fence_refusals_total{reason=\"not_owner\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("coordination_state_refusals_total{reason=\"deposed\"} 1"),
        "{text}"
    );

    // The owner node is still f1's (same session), so f1 re-acquires with an
    // epoch above the one set behind its back.
    let e2 = testkit::until("f1 re-owns sub-0", Duration::from_secs(10), || async {
        a.is_owner("sub-0")
    })
    .await;
    assert!(e2 > epoch + 1, "re-acquired at {e2}");
    a.fence("sub-0", e2).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_state_is_compare_and_set_and_bounded() {
    let url = url("state");
    let a = start(&url, "s1", &[]).await;
    let b = start(&url, "s2", &[]).await;
    assert_eq!(a.get_versioned("wm/acme/node-1").await.unwrap(), None);
    let v0 = a
        .set_if_version("wm/acme/node-1", b"10", None)
        .await
        .unwrap();
    assert_eq!(v0, 0);
    // A second creation conflicts.
    assert!(matches!(
        b.set_if_version("wm/acme/node-1", b"11", None).await,
        Err(StateError::Conflict { expected: None, .. })
    ));
    let got = b.get_versioned("wm/acme/node-1").await.unwrap().unwrap();
    assert_eq!((got.data.as_slice(), got.version), (&b"10"[..], 0));
    let v1 = b
        .set_if_version("wm/acme/node-1", b"12", Some(0))
        .await
        .unwrap();
    assert_eq!(v1, 1);
    // a's write with the version it read before loses.
    let err = a
        .set_if_version("wm/acme/node-1", b"13", Some(0))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StateError::Conflict {
                expected: Some(0),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("wm/acme/node-1"), "{err}");
    assert_eq!(
        a.get_versioned("wm/acme/node-1")
            .await
            .unwrap()
            .unwrap()
            .data,
        b"12"
    );
    // Too large: refused before sending, naming the limit.
    let big = vec![0u8; 1_000_001];
    let err = a.set_if_version("big", &big, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            StateError::TooLarge {
                size: 1_000_001,
                limit: 1_000_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("max_state_bytes"), "{err}");
    assert_eq!(a.get_versioned("big").await.unwrap(), None);
    // The largest allowed value goes through.
    let max = vec![7u8; 1_000_000];
    a.set_if_version("big", &max, None).await.unwrap();
    assert_eq!(
        a.get_versioned("big").await.unwrap().unwrap().data.len(),
        1_000_000
    );
    // Bad keys are named.
    for key in ["", "../x", "a//b", "a b", "/abs"] {
        let err = a.get_versioned(key).await.unwrap_err();
        assert!(matches!(err, StateError::Key { .. }), "{key:?}: {err}");
    }
    // Fenced writes need ownership.
    let err = a
        .set_if_version_fenced("x", b"1", None, "nobody-owns-this", 1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StateError::Fence(FenceError::NotOwner { .. })),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_and_subscriptions_are_refused_by_name() {
    let url = url("config");
    let bad = |f: fn(&mut CoordinatorConfig)| {
        let mut cfg = config(&url, "ok");
        f(&mut cfg);
        cfg
    };
    let cases: Vec<(CoordinatorConfig, &str)> = vec![
        (bad(|c| c.member_id = "a/b".into()), "member id `a/b`"),
        (bad(|c| c.member_id = String::new()), "member id"),
        (
            bad(|c| c.session_timeout = Duration::from_millis(10)),
            "session timeout",
        ),
        (bad(|c| c.max_state_bytes = 2 << 20), "max_state_bytes"),
        (bad(|c| c.max_subscriptions = 0), "max_subscriptions"),
        (bad(|c| c.claim_concurrency = 0), "claim_concurrency"),
        (
            bad(|c| c.advertised_url = "x".repeat(3000)),
            "advertised URL",
        ),
    ];
    for (cfg, part) in cases {
        let err = Coordinator::start(cfg).await.unwrap_err().to_string();
        assert!(err.contains(part), "`{err}` should name {part}");
    }
    let mut cfg = config(&url, "lim");
    cfg.max_subscriptions = 5;
    let c = Coordinator::start(cfg).await.unwrap();
    let err = c.set_subscriptions(subs(6)).unwrap_err();
    assert!(
        matches!(err, Error::TooManySubscriptions { count: 6, limit: 5 }),
        "{err}"
    );
    let err = c.set_subscriptions(["fine", "", "x"]).unwrap_err();
    assert!(err.to_string().contains("subscription ``"), "{err}");
    // Subscriptions with path characters are just names.
    c.set_subscriptions(["../../zookeeper", "a/b", "%2F"])
        .unwrap();
    let owned = testkit::until("odd names owned", Duration::from_secs(10), || async {
        let o = c.owned();
        (o.len() == 3).then_some(o)
    })
    .await;
    assert!(
        owned.contains_key("../../zookeeper")
            && owned.contains_key("a/b")
            && owned.contains_key("%2F")
    );
    let view = inspect(&url, Duration::from_secs(5)).await.unwrap();
    assert_eq!(view.owners.len(), 3, "{view:?}");
    // Nothing to connect to: a clear error naming the URL.
    let nowhere =
        CoordinationUrl::parse(&format!("zookeeper://127.0.0.1:{}/x", testkit::free_port()))
            .unwrap();
    let mut cfg = config(&nowhere, "n1");
    cfg.session_timeout = Duration::from_secs(1);
    let err = tokio::time::timeout(Duration::from_secs(30), Coordinator::start(cfg))
        .await
        .expect("start gives up")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("connect to ZooKeeper zookeeper://127.0.0.1"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_subscriptions_are_released_and_a_member_id_in_use_waits() {
    let url = url("remove");
    let a = start(&url, "r1", &subs(6)).await;
    until_shared("r1 owns 6", &[&a], &subs(6), Duration::from_secs(10)).await;
    a.set_subscriptions(subs(2)).unwrap();
    until_shared("r1 owns 2", &[&a], &subs(2), Duration::from_secs(10)).await;
    let view = inspect(&url, Duration::from_secs(5)).await.unwrap();
    assert_eq!(view.owners.keys().cloned().collect::<Vec<_>>(), subs(2));
    // Epochs stay (persistent): a later owner continues above them.
    assert_eq!(view.epochs.len(), 6);

    // A second process with the same id waits until the first is gone.
    let started = tokio::spawn({
        let url = url.clone();
        async move { Coordinator::start(config(&url, "r1")).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !started.is_finished(),
        "a duplicate member id must not register"
    );
    a.shutdown().await;
    let b = tokio::time::timeout(Duration::from_secs(10), started)
        .await
        .expect("registers once the id is free")
        .unwrap()
        .unwrap();
    b.set_subscriptions(subs(2)).unwrap();
    let again = until_shared("new r1 owns 2", &[&b], &subs(2), Duration::from_secs(10)).await;
    let prev: BTreeMap<_, _> = view.epochs.clone();
    for (s, (_, e)) in again {
        assert!(e > prev[&s]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_hands_each_item_to_one_taker_in_order_and_is_bounded() {
    let url = common::url("queue");
    let a = common::start(&url, "a", &[]).await;
    let b = common::start(&url, "b", &[]).await;
    let key = "conflicts/sub-1";
    assert!(a.take(key, 10).await.unwrap().is_empty(), "no queue yet");
    for i in 0..3u8 {
        a.enqueue(key, &[i]).await.unwrap();
    }
    assert_eq!(b.take(key, 2).await.unwrap(), vec![vec![0], vec![1]]);
    assert_eq!(a.take(key, 10).await.unwrap(), vec![vec![2]]);
    assert!(b.take(key, 10).await.unwrap().is_empty());
    // Two takers at once: every item exactly once between them.
    for i in 0..50u8 {
        b.enqueue(key, &[i]).await.unwrap();
    }
    let (x, y) = tokio::join!(a.take(key, 100), b.take(key, 100));
    let mut all: Vec<Vec<u8>> = x.unwrap().into_iter().chain(y.unwrap()).collect();
    all.sort();
    assert_eq!(all, (0..50u8).map(|i| vec![i]).collect::<Vec<_>>());
    // Bounded: item size, key, and item count.
    let big = vec![0u8; 1_000_001];
    assert!(matches!(
        a.enqueue(key, &big).await,
        Err(coordination::StateError::TooLarge { .. })
    ));
    assert!(matches!(
        a.enqueue("../x", b"1").await,
        Err(coordination::StateError::Key { .. })
    ));
    let full = "conflicts/full";
    for _ in 0..coordination::MAX_QUEUE_ITEMS {
        a.enqueue(full, b"x").await.unwrap();
    }
    let e = a.enqueue(full, b"x").await.unwrap_err();
    assert!(
        matches!(e, coordination::StateError::QueueFull { limit: 1000, .. }),
        "{e}"
    );
    assert_eq!(a.take(full, 5).await.unwrap().len(), 5);
    a.enqueue(full, b"x").await.unwrap();
}

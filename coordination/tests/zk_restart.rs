//! ZooKeeper killed and restarted under three members: ownership recovers,
//! and a recorder of every ownership change of every member (plus a sampler
//! of `is_owner`) shows that no subscription ever had two owners. Once with
//! a short outage (sessions survive; leases lapse and claims are
//! re-acquired with new epochs), once with an outage longer than the
//! client's session expiry (new sessions, registration again).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use coordination::Coordinator;

fn metric(c: &Coordinator, name: &str) -> f64 {
    let mut reg = prometheus_client::registry::Registry::default();
    c.register_metrics(&mut reg);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    testkit::process::metric_sum(&text, name).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_recovers_from_zookeeper_restarts_without_two_owners() {
    let url = url("restart");
    let all = subs(30);
    let rec = Recorder::default();
    let a = Arc::new(start(&url, "z1", &all).await);
    let b = Arc::new(start(&url, "z2", &all).await);
    let c = Arc::new(start(&url, "z3", &all).await);
    for x in [&a, &b, &c] {
        rec.watch(x);
    }
    let sampler = rec.sample(vec![a.clone(), b.clone(), c.clone()], all.clone());
    let coords = [&*a, &*b, &*c];
    let before = until_shared("settled", &coords, &all, Duration::from_secs(20)).await;

    // Short outage: longer than the lease (half the session timeout), shorter
    // than the session timeout.
    tokio::task::block_in_place(|| shared_zk().lock().unwrap().kill());
    let down = Instant::now();
    wait_for("every member stops owning", SESSION, || {
        coords.iter().all(|c| c.owned().is_empty())
    })
    .await;
    let stopped_after = down.elapsed();
    assert!(
        stopped_after <= SESSION / 2 + Duration::from_millis(500),
        "owned {stopped_after:?} into the outage"
    );
    tokio::task::block_in_place(|| shared_zk().lock().unwrap().restart())
        .expect("restart ZooKeeper");
    let mid = until_shared(
        "recovered after a short outage",
        &coords,
        &all,
        Duration::from_secs(60),
    )
    .await;
    for s in &all {
        assert_eq!(mid[s].0, before[s].0, "{s} changed member");
        assert!(
            mid[s].1 > before[s].1,
            "{s}: re-acquired without a new epoch"
        );
    }
    let sessions: Vec<f64> = coords
        .iter()
        .map(|c| metric(c, "coordination_sessions_total"))
        .collect();

    // Long outage: the clients give their sessions up; new ones register
    // once ZooKeeper has expired the old ones.
    tokio::task::block_in_place(|| shared_zk().lock().unwrap().kill());
    tokio::time::sleep(SESSION * 2).await;
    tokio::task::block_in_place(|| shared_zk().lock().unwrap().restart())
        .expect("restart ZooKeeper");
    let after = until_shared(
        "recovered after a long outage",
        &coords,
        &all,
        Duration::from_secs(90),
    )
    .await;
    for s in &all {
        assert!(after[s].1 > mid[s].1, "{s}: epoch did not grow");
    }
    let sessions_after: Vec<f64> = coords
        .iter()
        .map(|c| metric(c, "coordination_sessions_total"))
        .collect();
    for (x, y) in sessions.iter().zip(&sessions_after) {
        assert!(
            y > x,
            "no new session after the long outage: {sessions:?} -> {sessions_after:?}"
        );
    }
    sampler.stop().await;
    rec.assert_never_two_owners();
    let losses: BTreeMap<String, usize> =
        rec.events()
            .iter()
            .filter(|e| !e.ev.owned)
            .fold(BTreeMap::new(), |mut m, e| {
                *m.entry(e.member.clone()).or_default() += 1;
                m
            });
    // Every member saw its share lost twice (once per outage).
    for (i, id) in ["z1", "z2", "z3"].iter().enumerate() {
        let share = before.values().filter(|(j, _)| *j == i).count();
        assert!(
            losses.get(*id).copied().unwrap_or(0) >= 2 * share,
            "{id}: {losses:?}"
        );
    }
}

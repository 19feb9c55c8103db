//! Takeover time after SIGKILL of an owning member, per session timeout.
//!
//! `cargo bench -p coordination --bench takeover [-- ROUNDS]` starts a real
//! ZooKeeper, two members in this process and one in a child process
//! (`sesam-coordination join`) sharing 30 subscriptions, kills the child
//! with SIGKILL and measures, for each of its subscriptions, the time from
//! the kill to the survivor's claim (first and last claim). The baseline in
//! the same run is a clean stop of the child (SIGTERM: it releases, no
//! timeout to wait for).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use coordination::{inspect, rendezvous, CoordinationUrl, Coordinator, CoordinatorConfig};

async fn round(
    url: &CoordinationUrl,
    session: Duration,
    kill: bool,
) -> (Duration, Duration, usize) {
    let all = subs(30);
    let mk = |id: &str| {
        let mut cfg = CoordinatorConfig::new(url.clone(), id);
        cfg.session_timeout = session;
        cfg
    };
    let a = Arc::new(Coordinator::start(mk("b1")).await.unwrap());
    let b = Arc::new(Coordinator::start(mk("b2")).await.unwrap());
    a.set_subscriptions(all.clone()).unwrap();
    b.set_subscriptions(all.clone()).unwrap();
    let rec = Recorder::default();
    rec.watch(&a);
    rec.watch(&b);
    let mut child = Child::spawn(url, "b3", all.len(), session);
    let ids = ["b1", "b2", "b3"];
    let view = testkit::until("settled", Duration::from_secs(60), || async {
        let v = inspect(url, Duration::from_secs(5)).await.ok()?;
        let ok = v.members.len() == 3
            && v.owners.len() == 30
            && v.owners
                .iter()
                .all(|(s, (m, _))| rendezvous::owner(s, ids) == Some(m.as_str()));
        ok.then_some(v)
    })
    .await;
    let share: Vec<(String, u64)> = view
        .owners
        .iter()
        .filter(|(_, (m, _))| m == "b3")
        .map(|(s, (_, e))| (s.clone(), *e))
        .collect();
    wait_for("child reports", Duration::from_secs(10), || {
        child.owned() == share.iter().cloned().collect()
    })
    .await;
    let t0 = Instant::now();
    if kill {
        child.proc.kill();
    } else {
        child.proc.terminate(Duration::from_secs(30));
    }
    until_shared(
        "taken over",
        &[&a, &b],
        &all,
        session * 4 + Duration::from_secs(10),
    )
    .await;
    let evs = rec.events();
    let mut times: Vec<Duration> = share
        .iter()
        .map(|(s, old)| {
            evs.iter()
                .filter(|e| &e.ev.subscription == s && e.ev.owned && e.ev.epoch > *old)
                .map(|e| e.ev.at.saturating_duration_since(t0))
                .min()
                .expect("claim recorded")
        })
        .collect();
    times.sort();
    rec.assert_never_two_owners();
    drop(a);
    drop(b);
    // Let the dropped members release before the next round's chroot.
    tokio::time::sleep(Duration::from_millis(200)).await;
    (times[0], times[times.len() - 1], times.len())
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr = zk_address();
        println!("takeover of a member's subscriptions (30 over 3 members), {rounds} rounds each");
        println!(
            "{:<10} {:<9} {:>12} {:>12} {:>12} {:>6}",
            "session", "stop", "first min", "last median", "last max", "subs"
        );
        let mut n = 0;
        for session in [
            Duration::from_secs(2),
            Duration::from_secs(4),
            Duration::from_secs(10),
        ] {
            for kill in [false, true] {
                let mut firsts = Vec::new();
                let mut lasts = Vec::new();
                let mut count = 0;
                for _ in 0..rounds {
                    n += 1;
                    let url =
                        CoordinationUrl::parse(&format!("zookeeper://{addr}/bench/takeover-{n}"))
                            .unwrap();
                    let (f, l, c) = round(&url, session, kill).await;
                    firsts.push(f);
                    lasts.push(l);
                    count = c;
                }
                firsts.sort();
                lasts.sort();
                println!(
                    "{:<10} {:<9} {:>12} {:>12} {:>12} {:>6}",
                    format!("{session:?}"),
                    if kill { "SIGKILL" } else { "SIGTERM" },
                    format!("{} ms", firsts[0].as_millis()),
                    format!("{} ms", lasts[lasts.len() / 2].as_millis()),
                    format!("{} ms", lasts[lasts.len() - 1].as_millis()),
                    count
                );
            }
        }
    });
}

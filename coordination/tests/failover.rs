//! Failover: a member killed with SIGKILL (its own process) loses its
//! subscriptions to the others once ZooKeeper expires its session; nobody
//! takes over earlier, the epochs grow, and the time is reported.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use coordination::{inspect, rendezvous};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_is_taken_over_after_its_session_times_out() {
    let url = url("kill");
    let all = subs(30);
    let rec = Recorder::default();
    let a = Arc::new(start(&url, "k1", &all).await);
    let b = Arc::new(start(&url, "k2", &all).await);
    rec.watch(&a);
    rec.watch(&b);
    let mut child = Child::spawn(&url, "k3", all.len(), SESSION);

    // Settled: ZooKeeper shows each subscription owned by its designated
    // member, the child included.
    let ids = ["k1", "k2", "k3"];
    let view = testkit::until("three members settled", Duration::from_secs(30), || async {
        let v = inspect(&url, Duration::from_secs(5)).await.ok()?;
        let settled = v.members.len() == 3
            && v.owners.len() == 30
            && v.owners
                .iter()
                .all(|(s, (m, _))| rendezvous::owner(s, ids) == Some(m.as_str()));
        settled.then_some(v)
    })
    .await;
    let child_share: Vec<(String, u64)> = view
        .owners
        .iter()
        .filter(|(_, (m, _))| m == "k3")
        .map(|(s, (_, e))| (s.clone(), *e))
        .collect();
    assert!(!child_share.is_empty(), "k3 owns nothing: {view:?}");
    // The child's own account agrees with ZooKeeper.
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.owned() != child_share.iter().cloned().collect() {
        assert!(
            Instant::now() < deadline,
            "k3 reports {:?}, ZooKeeper {child_share:?}; its log:\n{}",
            child.owned(),
            child.proc.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let sampler = rec.sample(vec![a.clone(), b.clone()], all.clone());
    let killed_at = Instant::now();
    child.proc.kill();
    let after = until_shared("k1 and k2 own all 30", &[&a, &b], &all, SESSION * 4).await;
    sampler.stop().await;

    let events = rec.events();
    let mut takeovers = Vec::new();
    for (s, old_epoch) in &child_share {
        let (_, epoch) = after[s];
        assert!(
            epoch > *old_epoch,
            "{s}: epoch {epoch} after k3's {old_epoch}"
        );
        let claimed = events
            .iter()
            .find(|e| &e.ev.subscription == s && e.ev.owned && e.ev.epoch == epoch)
            .unwrap_or_else(|| panic!("no claim event for {s}"));
        takeovers.push(claimed.ev.at.saturating_duration_since(killed_at));
    }
    takeovers.sort();
    let (first, last) = (takeovers[0], takeovers[takeovers.len() - 1]);
    eprintln!(
        "takeover after SIGKILL with a {SESSION:?} session timeout: first claim {first:?}, last claim {last:?} ({} subscriptions)",
        takeovers.len()
    );
    // Nobody may claim before ZooKeeper expired k3's session, which it
    // cannot do before a session timeout after k3's last heartbeat (sent at
    // most a sixth of the timeout before the kill).
    assert!(
        first >= SESSION / 2,
        "claimed after {first:?}: before k3's session could expire"
    );
    // Generous bound: the timeout, ZooKeeper's tick rounding, the reaction.
    assert!(
        last < SESSION + Duration::from_secs(4),
        "takeover took {last:?}"
    );
    // Nothing moved between the survivors.
    for (s, (i, e)) in &after {
        if !child_share.iter().any(|(c, _)| c == s) {
            let (m, old) = &view.owners[s];
            assert_eq!(
                (ids[*i], *e),
                (m.as_str(), *old),
                "{s} moved between survivors"
            );
        }
    }
    rec.assert_never_two_owners();
}

//! Failover: a member killed with SIGKILL (its own process) loses its
//! subscriptions to the others once ZooKeeper expires its session; nobody
//! takes over earlier, the epochs grow, and the time is reported.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// A member frozen (SIGSTOP) longer than its session timeout, as in a long
/// GC pause or a VM stall: the others take over after the timeout; when it
/// wakes, `is_owner` answers nothing of its old share at once (the lease ran
/// out while it slept), it publishes the losses, gets a new session and
/// takes its share back with new epochs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_member_never_owns_an_old_epoch_after_waking() {
    let url = url("pause");
    let all = subs(30);
    let a = Arc::new(start(&url, "p1", &all).await);
    let b = Arc::new(start(&url, "p2", &all).await);
    let child = Child::spawn_with(&url, "p3", all.len(), SESSION, &["--report-every", "20ms"]);
    let ids = ["p1", "p2", "p3"];
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
    let share: Vec<String> = view
        .owners
        .iter()
        .filter(|(_, (m, _))| m == "p3")
        .map(|(s, _)| s.clone())
        .collect();
    assert!(!share.is_empty());

    signal(child.proc.pid(), "-STOP");
    let taken = until_shared("p1 and p2 take over", &[&a, &b], &all, SESSION * 4).await;
    let resumed_ms = unix_ms();
    signal(child.proc.pid(), "-CONT");

    // p3 comes back and takes its share again, above the survivors' epochs.
    let back = testkit::until(
        "p3 takes its share back",
        Duration::from_secs(30),
        || async {
            let v = inspect(&url, Duration::from_secs(5)).await.ok()?;
            let settled = v.owners.len() == 30
                && v.owners
                    .iter()
                    .all(|(s, (m, _))| rendezvous::owner(s, ids) == Some(m.as_str()));
            settled.then_some(v)
        },
    )
    .await;
    for s in &share {
        assert!(
            back.owners[s].1 > taken[s].1,
            "{s}: {:?} after {:?}",
            back.owners[s],
            taken[s]
        );
    }
    wait_for("p3 reports its share back", Duration::from_secs(10), || {
        share.iter().all(|s| child.owned().contains_key(s))
    })
    .await;

    // What p3's `is_owner` answered after waking never held an old epoch:
    // nothing of its share at an epoch at or below the survivors'.
    let events = child.events();
    let ticks: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "tick" && e["t_ms"].as_u64() >= Some(resumed_ms))
        .collect();
    assert!(!ticks.is_empty(), "no report after waking");
    for t in &ticks {
        for (s, e) in t["owned"].as_object().unwrap() {
            let e = e.as_u64().unwrap();
            if let Some((_, survivor_epoch)) = taken.get(s) {
                assert!(e > *survivor_epoch, "p3 answered owner of {s} at epoch {e} (survivor had {survivor_epoch}) after waking: {t}");
            }
        }
    }
    // And it published the loss of each old claim before owning again.
    for s in &share {
        let old = view.owners[s].1;
        let lost = events.iter().position(|e| {
            e["event"] == "lost" && e["subscription"] == s.as_str() && e["epoch"] == old
        });
        let owned_again = events.iter().position(|e| {
            e["event"] == "owned"
                && e["subscription"] == s.as_str()
                && e["epoch"].as_u64() > Some(old)
        });
        assert!(
            matches!((lost, owned_again), (Some(l), Some(o)) if l < o),
            "{s}: lost at {lost:?}, owned again at {owned_again:?}"
        );
    }
}

//! A dead node pages once, not once per pipe when it comes back (issue
//! #10): a source that returns after a silence gets a fresh grace for
//! every overdue deadline. The return itself is tested, not only the
//! silence: a node killed and returning (with and without the records it
//! had not shipped), a collector restart mid-incident, a backlog arriving
//! late, a node returning after an hour, and a pipe still stuck after the
//! return (which must still page). Manual clock, no sleeps.

mod common;

use common::*;
use notifier::NotificationKind as K;
use schemas::{EventType, HealthStatus};
use serde_json::json;

const PIPES: [&str; 5] = ["p0", "p1", "p2", "p3", "p4"];

/// Rules of the scenario of the issue: pipes every 2 s with their
/// schedule from the node's config, a heartbeat rule, an overdue rule.
fn scenario() -> H {
    let mut h = H::new();
    h.rule(
        "hb",
        "node_heartbeat_overdue",
        &["*"],
        json!({"interval": "10s"}),
    );
    h.rule(
        "late",
        "pump_started_overdue",
        &["*"],
        json!({"grace": "3s"}),
    );
    let pipes: Vec<(&str, serde_json::Value)> = PIPES
        .iter()
        .map(|p| (*p, json!({"schedule_interval": 2})))
        .collect();
    h.send(config(&pipes));
    h
}

/// The node runs for `secs` seconds: health every second, every pipe
/// started and completed every 2 s (records sent as they happen).
fn run(h: &mut H, secs: u64) {
    for s in 0..secs {
        h.advance(1);
        h.send(health(HealthStatus::Ok));
        if s % 2 == 0 {
            for p in PIPES {
                h.send(exec(p, EventType::PumpStarted));
                h.send(exec(p, EventType::PumpCompleted));
            }
        }
    }
}

/// Only the heartbeat's firing and resolution, once each.
fn assert_only_the_heartbeat(h: &H) {
    let got: Vec<(String, K)> = h.notes().into_iter().map(|n| (n.rule_id, n.kind)).collect();
    assert_eq!(
        got,
        vec![
            ("hb".to_string(), K::Firing),
            ("hb".to_string(), K::Resolved)
        ],
        "{:#?}",
        h.notes()
            .iter()
            .map(|n| n.alert.annotations["summary"].clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(h.firing(), 0, "{:#?}", h.n.active_alerts());
}

#[test]
fn a_node_killed_and_returning_pages_only_for_its_heartbeat() {
    let mut h = scenario();
    run(&mut h, 20);
    assert!(h.notes().is_empty());
    // SIGKILL: nothing for two minutes; the heartbeat pages once.
    for _ in 0..120 {
        h.advance(1);
    }
    assert_eq!(h.kinds(), vec![K::Firing]);
    // It comes back: its first records, then its pipes on schedule.
    run(&mut h, 30);
    assert_only_the_heartbeat(&h);
}

#[test]
fn a_node_returning_with_records_it_had_not_shipped_pages_only_for_its_heartbeat() {
    let mut h = scenario();
    run(&mut h, 20);
    // Its last seconds before the kill were in its outbox, not shipped.
    let t = h.now();
    let mut unshipped = Vec::new();
    for s in 1..=3 {
        unshipped.push(h.record(SRC, t + s * SEC, health(HealthStatus::Ok)));
    }
    for _ in 0..120 {
        h.advance(1);
    }
    assert_eq!(h.kinds(), vec![K::Firing]);
    // The restarted node ships the old records first, then its new ones.
    let now = h.now();
    let mut batch = unshipped;
    batch.push(h.record(SRC, now, health(HealthStatus::Ok)));
    h.n.on_records(&batch);
    run(&mut h, 30);
    assert_only_the_heartbeat(&h);
}

#[test]
fn a_collector_restart_mid_incident_pages_only_for_the_heartbeat() {
    let mut h = scenario();
    run(&mut h, 20);
    for _ in 0..60 {
        h.advance(1);
    }
    assert_eq!(h.kinds(), vec![K::Firing]);
    // The collector restarts while the node is dead (and is down a while).
    h.clock.advance(std::time::Duration::from_secs(30));
    h = h.restarted();
    for _ in 0..60 {
        h.advance(1);
    }
    assert_eq!(
        h.kinds(),
        vec![K::Firing],
        "no second page after the restart"
    );
    run(&mut h, 30);
    assert_only_the_heartbeat(&h);
}

#[test]
fn a_backlog_arriving_late_pages_only_for_the_heartbeat() {
    // The node kept running on time, but shipping stalled for two
    // minutes: the heartbeat pages (nothing arrived), and the backlog,
    // continuous in event time, pages nothing else.
    let mut h = scenario();
    run(&mut h, 20);
    let t = h.now();
    let mut backlog = Vec::new();
    for s in 1..=120 {
        let ts = t + s * SEC;
        backlog.push(h.record(SRC, ts, health(HealthStatus::Ok)));
        if s % 2 == 0 {
            for p in PIPES {
                backlog.push(h.record(SRC, ts, exec(p, EventType::PumpStarted)));
                backlog.push(h.record(SRC, ts, exec(p, EventType::PumpCompleted)));
            }
        }
    }
    for _ in 0..120 {
        h.advance(1);
    }
    assert_eq!(h.kinds(), vec![K::Firing]);
    for chunk in backlog.chunks(200) {
        h.n.on_records(chunk);
    }
    run(&mut h, 10);
    assert_only_the_heartbeat(&h);
}

#[test]
fn a_node_returning_after_an_hour_pages_only_for_its_heartbeat() {
    let mut h = scenario();
    run(&mut h, 20);
    for _ in 0..60 {
        h.advance(60);
    }
    assert_eq!(h.kinds(), vec![K::Firing], "one page for the hour");
    run(&mut h, 30);
    assert_only_the_heartbeat(&h);
}

#[test]
fn a_pipe_still_stuck_after_the_return_pages_after_the_fresh_grace() {
    let mut h = scenario();
    run(&mut h, 20);
    for _ in 0..120 {
        h.advance(1);
    }
    // Back, but p4 never starts again.
    for s in 0..30 {
        h.advance(1);
        h.send(health(HealthStatus::Ok));
        if s % 2 == 0 {
            for p in &PIPES[..4] {
                h.send(exec(p, EventType::PumpStarted));
                h.send(exec(p, EventType::PumpCompleted));
            }
        }
    }
    let got: Vec<(String, K, Option<String>)> = h
        .notes()
        .into_iter()
        .map(|n| (n.rule_id, n.kind, n.alert.labels.get("pipe").cloned()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("hb".to_string(), K::Firing, None),
            ("hb".to_string(), K::Resolved, None),
            ("late".to_string(), K::Firing, Some("p4".to_string())),
        ]
    );
    // The page came after the fresh grace (schedule 2 s + grace 3 s after
    // the return), not at the return.
    let late = h.notes().into_iter().find(|n| n.rule_id == "late").unwrap();
    let resolved = h
        .notes()
        .into_iter()
        .find(|n| n.rule_id == "hb" && n.kind == K::Resolved)
        .unwrap();
    assert!(late.created_at >= resolved.created_at + 5 * SEC);
}

#[test]
fn without_a_heartbeat_rule_a_silence_still_pages_no_pipe() {
    let mut h = H::new();
    h.rule(
        "late",
        "pump_started_overdue",
        &["*"],
        json!({"grace": "3s"}),
    );
    let pipes: Vec<(&str, serde_json::Value)> = PIPES
        .iter()
        .map(|p| (*p, json!({"schedule_interval": 2})))
        .collect();
    h.send(config(&pipes));
    run(&mut h, 20);
    // Ten minutes of silence (more than --notifier-source-gap, 2 min).
    for _ in 0..10 {
        h.advance(60);
    }
    run(&mut h, 30);
    assert!(h.notes().is_empty(), "{:#?}", h.notes());
}

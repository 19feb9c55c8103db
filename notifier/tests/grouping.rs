//! Grouping (`group_by`, `group_wait`): an incident touching many pipes of
//! one node is one page when the rule asks for it, as in Alertmanager.

mod common;

use common::*;
use notifier::{NotificationKind as K, Scope};
use schemas::notify::NotificationRule;
use serde_json::json;

fn grouped(h: &H, id: &str, wait: &str) {
    let r: NotificationRule = serde_json::from_value(json!({
        "id": id, "name": "Pipes failed", "type": "pump_failed", "receivers": ["hook"],
        "group_by": ["source"], "group_wait": wait,
    }))
    .unwrap();
    h.n.put_rule(&Scope::Subscription(SUB.into()), Some(id), r)
        .unwrap();
}

#[test]
fn fifty_pipes_of_one_node_failing_together_are_one_page_and_one_resolution() {
    let mut h = H::new();
    grouped(&h, "g", "30s");
    for i in 0..50 {
        h.send(failed(&format!("p{i}"), "upstream down"));
        if i % 10 == 9 {
            h.advance(2);
        }
    }
    // Another node's failure is another group.
    let t = h.now();
    h.send_at("node-2", t, failed("other", "x"));
    assert!(h.notes().is_empty(), "nothing before group_wait");
    h.advance(30);
    let notes = h.notes();
    assert_eq!(notes.len(), 2, "one page per node");
    let n1 = notes
        .iter()
        .find(|n| n.group_labels.get("source").map(String::as_str) == Some(SRC))
        .unwrap();
    assert_eq!(n1.kind, K::Firing);
    assert_eq!(n1.alerts().count(), 50);
    assert!(n1.alerts().all(|a| a.status == "firing"));
    assert_eq!(h.firing(), 51);
    // They recover together: one resolution listing them.
    for i in 0..50 {
        h.send(completed(&format!("p{i}"), 1));
    }
    h.advance(31);
    let resolved: Vec<_> = h
        .notes()
        .into_iter()
        .filter(|n| n.kind == K::Resolved)
        .collect();
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].alerts().count(), 50);
    assert!(resolved[0].alerts().all(|a| a.status == "resolved"));
}

#[test]
fn an_alert_resolving_before_its_group_went_out_is_never_announced() {
    let mut h = H::new();
    grouped(&h, "g", "30s");
    h.send(failed("flaky", "x"));
    h.send(failed("broken", "y"));
    h.advance(5);
    h.send(completed("flaky", 1));
    h.advance(30);
    let notes = h.notes();
    assert_eq!(notes.len(), 1);
    let pipes: Vec<&str> = notes[0]
        .alerts()
        .map(|a| a.labels["pipe"].as_str())
        .collect();
    assert_eq!(pipes, vec!["broken"]);
    h.advance(60);
    assert_eq!(h.notes().len(), 1, "no resolution of the flaky pipe");
}

#[test]
fn a_group_waiting_across_a_restart_goes_out_once() {
    let mut h = H::new();
    grouped(&h, "g", "30s");
    h.send(failed("a", "x"));
    h.send(failed("b", "x"));
    h.advance(10);
    h = h.restarted();
    h.advance(10);
    assert!(h.notes().is_empty());
    h.advance(11);
    let notes = h.notes();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].alerts().count(), 2);
    h = h.restarted();
    h.advance(120);
    assert_eq!(h.notes().len(), 1);
    // Repeats stay per alert.
    h.send(failed("a", "again"));
    h.advance(3600);
    let repeats = h.kinds().iter().filter(|k| **k == K::Repeat).count();
    assert_eq!(repeats, 1);
}

#[test]
fn group_settings_are_validated() {
    let h = H::new();
    let bad = |v: serde_json::Value| {
        let mut base = json!({"name": "x", "type": "pump_failed"});
        for (k, x) in v.as_object().unwrap() {
            base[k] = x.clone();
        }
        let r: NotificationRule = serde_json::from_value(base).unwrap();
        h.n.put_rule(&Scope::Subscription(SUB.into()), None, r)
            .unwrap_err()
            .field
            .unwrap_or_default()
    };
    assert_eq!(bad(json!({"group_wait": "30s"})), "group_wait");
    assert_eq!(
        bad(json!({"group_by": ["source"], "group_wait": "300y"})),
        "group_wait"
    );
    assert_eq!(bad(json!({"group_by": [""]})), "group_by[0]");
    let many: Vec<String> = (0..40).map(|i| format!("l{i}")).collect();
    assert_eq!(bad(json!({"group_by": many})), "group_by");
}

#[test]
fn a_grouped_notification_is_one_webhook_payload_listing_its_alerts() {
    let mut h = H::new();
    grouped(&h, "g", "10s");
    for p in ["a", "b", "c"] {
        h.send(failed(p, "upstream down"));
    }
    h.advance(11);
    let notes = h.notes();
    assert_eq!(notes.len(), 1);
    let p = notifier::delivery::webhook_payload("hook", &notes[0], "http://c");
    assert_eq!(p.alerts.len(), 3);
    assert_eq!(p.status, "firing");
    assert_eq!(p.group_labels["source"], SRC);
    assert_eq!(p.group_labels["alertname"], "Pipes failed");
    assert_eq!(p.common_labels["source"], SRC);
    assert!(!p.common_labels.contains_key("pipe"), "pipes differ");
    assert!(p.group_key.contains("source"));
    let mut pipes: Vec<&str> = p.alerts.iter().map(|a| a.labels["pipe"].as_str()).collect();
    pipes.sort();
    assert_eq!(pipes, vec!["a", "b", "c"]);
}

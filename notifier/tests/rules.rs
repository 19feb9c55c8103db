//! Every rule type fires and resolves; repeats carry counts; silences,
//! inhibition and restarts behave. Driven by a manual clock: no sleeps.

mod common;

use common::*;
use notifier::{NotificationKind as K, SampleRef, Scope};
use schemas::notify::Silence;
use schemas::{EventType, HealthStatus};
use serde_json::json;

#[test]
fn pump_failed_fires_once_repeats_with_count_and_resolves() {
    let mut h = H::new();
    h.rule("f", "pump_failed", &["orders*"], json!({}));
    h.send(exec("orders", EventType::PumpStarted));
    h.send(failed("orders", "bad entity o2"));
    assert_eq!(h.kinds(), vec![K::Firing]);
    let n = &h.notes()[0];
    assert_eq!(n.alert.labels["pipe"], "orders");
    assert_eq!(n.alert.labels["alertname"], "f alert");
    assert_eq!(n.alert.annotations["reason_why_stopped"], "bad entity o2");
    assert_eq!(n.alert.annotations["event_count"], "1");
    assert_eq!(n.alert.status, "firing");

    // Two more failures within the hour: counted, not sent.
    h.advance(600);
    h.send(failed("orders", "bad entity o2"));
    h.advance(600);
    h.send(failed("orders", "bad entity o3"));
    assert_eq!(h.kinds(), vec![K::Firing]);
    // Another pipe that does not match the glob never fires.
    h.send(failed("customers", "x"));
    assert_eq!(h.firing(), 1);

    // After repeat_interval (1 h): one repeat with the count.
    h.advance(2400);
    assert_eq!(h.kinds(), vec![K::Firing, K::Repeat]);
    let rep = &h.notes()[1];
    assert_eq!(rep.alert.annotations["triggered_additional"], "2");
    assert!(rep.alert.annotations["summary"].contains("triggered an additional 2 times"));
    assert_eq!(rep.alert.annotations["event_count"], "3");
    assert_eq!(rep.alert.annotations["reason_why_stopped"], "bad entity o3");

    // Nothing new: no further notification an hour later.
    h.advance(3700);
    assert_eq!(h.kinds(), vec![K::Firing, K::Repeat]);

    h.send(completed("orders", 3));
    assert_eq!(h.kinds(), vec![K::Firing, K::Repeat, K::Resolved]);
    let res = &h.notes()[2];
    assert_eq!(res.alert.status, "resolved");
    assert_ne!(res.alert.ends_at, "0001-01-01T00:00:00Z");
    assert_eq!(h.firing(), 0);
    // Same fingerprint throughout.
    let fps: Vec<_> = h.notes().iter().map(|n| n.fingerprint.clone()).collect();
    assert!(fps.iter().all(|f| f == &fps[0]));
}

fn entity_error(pipe: &str, ev: EventType, id: &str) -> schemas::Body {
    let mut e = schemas::ExecutionBody::new(pipe, ev);
    e.entity_id = Some(id.into());
    schemas::Body::Execution(Box::new(e))
}

fn completed_with_errors(pipe: &str, read: u64, write: u64) -> schemas::Body {
    let mut e = schemas::ExecutionBody::new(pipe, EventType::PumpCompleted);
    e.metrics.read_errors_last_run = Some(read);
    e.metrics.write_errors_last_run = Some(write);
    schemas::Body::Execution(Box::new(e))
}

#[test]
fn pump_failed_event_types_page_on_entity_errors_and_resolve_on_a_clean_run() {
    let mut h = H::new();
    // The default pages on pump-failed only.
    h.rule("default", "pump_failed", &["orders"], json!({}));
    h.send(entity_error("orders", EventType::ReadError, "o-1"));
    h.send(entity_error("orders", EventType::WriteError, "o-2"));
    assert!(h.kinds().is_empty(), "the default ignores entity errors");
    h.n.delete_rule(&Scope::Subscription(SUB.into()), None, "default")
        .unwrap();

    h.rule(
        "entities",
        "pump_failed",
        &["orders"],
        json!({"event_types": ["read-error", "write-error"]}),
    );
    h.send(failed("orders", "not paged by this rule"));
    assert!(
        h.kinds().is_empty(),
        "pump-failed is not among its event types"
    );
    h.send(entity_error("orders", EventType::WriteError, "o-7"));
    assert_eq!(h.kinds(), vec![K::Firing]);
    let n = &h.notes()[0];
    assert_eq!(n.alert.annotations["entity_id"], "o-7");
    assert_eq!(n.alert.annotations["event_type"], "write-error");
    assert!(n.alert.annotations["summary"].contains("could not write entity o-7"));
    // A run that still had errors does not resolve; a clean one does.
    h.send(completed_with_errors("orders", 0, 3));
    h.send(completed_with_errors("orders", 1, 0));
    assert_eq!(h.kinds(), vec![K::Firing]);
    h.send(completed_with_errors("orders", 0, 0));
    assert_eq!(h.kinds(), vec![K::Firing, K::Resolved]);
    // Absent counts are no errors.
    h.send(entity_error("orders", EventType::ReadError, "o-8"));
    h.send(completed("orders", 5));
    assert_eq!(
        h.kinds(),
        vec![K::Firing, K::Resolved, K::Firing, K::Resolved]
    );
}

#[test]
fn bad_event_types_are_refused_naming_the_entry() {
    let h = H::new();
    let sub = Scope::Subscription(SUB.into());
    let bad = |params: serde_json::Value| -> String {
        let r =
            serde_json::from_value(json!({"name": "x", "type": "pump_failed", "params": params}))
                .unwrap();
        h.n.put_rule(&sub, None, r)
            .unwrap_err()
            .field
            .unwrap_or_default()
    };
    assert_eq!(
        bad(json!({"event_types": ["read-error", "pump-started"]})),
        "params.event_types[1]"
    );
    assert_eq!(bad(json!({"event_types": []})), "params.event_types");
    assert_eq!(
        bad(json!({"event_types": "read-error"})),
        "params.event_types"
    );
}

#[test]
fn pump_started_overdue_uses_the_config_schedule_and_event_time() {
    let mut h = H::new();
    h.rule("o", "pump_started_overdue", &["*"], json!({"grace": 30}));
    h.send(config(&[
        ("every-minute", json!({"schedule_interval": 60})),
        ("manual", json!({"mode": "manual"})),
        ("cron", json!({"cron_expr": "*/10 * * * *"})),
    ]));
    h.send(exec("every-minute", EventType::PumpStarted));
    h.send(exec("every-minute", EventType::PumpCompleted));
    // Health every 20 s keeps the source's clock moving; the pipe starts
    // on time for three rounds.
    for _ in 0..3 {
        for _ in 0..3 {
            h.advance(20);
            h.send(health(HealthStatus::Ok));
        }
        h.send(exec("every-minute", EventType::PumpStarted));
        h.send(exec("every-minute", EventType::PumpCompleted));
    }
    assert_eq!(h.firing(), 0);
    // Then it stops starting: overdue after 60 s + 30 s grace.
    for _ in 0..4 {
        h.advance(20);
        h.send(health(HealthStatus::Ok));
    }
    assert_eq!(h.firing(), 0, "80 s: within schedule + grace");
    h.advance(20);
    h.send(health(HealthStatus::Ok));
    let alerts = h.n.active_alerts();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].pipe.as_deref(), Some("every-minute"));
    assert_eq!(h.kinds(), vec![K::Firing]);
    h.send(exec("every-minute", EventType::PumpStarted));
    assert_eq!(h.kinds(), vec![K::Firing, K::Resolved]);
    // The manual pipe never pages; the cron pipe (every 10 min) pages once
    // its next slot plus grace passed without a start.
    for _ in 0..40 {
        h.advance(20);
        h.send(health(HealthStatus::Ok));
        h.send(exec("every-minute", EventType::PumpStarted));
        h.send(exec("every-minute", EventType::PumpCompleted));
    }
    let pipes: Vec<_> =
        h.n.active_alerts()
            .into_iter()
            .filter_map(|a| a.pipe)
            .collect();
    assert_eq!(pipes, vec!["cron".to_string()]);
}

#[test]
fn a_shipping_outage_does_not_page_for_every_pipe() {
    // The node keeps running its pipes on time, but its records arrive
    // 15 minutes late in one burst: overdue is measured in the node's
    // event time, so nothing fires.
    let mut h = H::new();
    h.rule(
        "o",
        "pump_started_overdue",
        &["*"],
        json!({"grace": 10, "interval": 60}),
    );
    let pipes = ["a", "b", "c"];
    let t = h.now();
    for p in pipes {
        h.send_at(SRC, t, exec(p, EventType::PumpStarted));
        h.send_at(SRC, t, exec(p, EventType::PumpCompleted));
    }
    h.advance(15 * 60); // nothing arrives meanwhile
    assert_eq!(h.firing(), 0);
    let mut batch = Vec::new();
    for i in 1..=15 {
        for p in pipes {
            batch.push(h.record(SRC, t + i * 60 * SEC, exec(p, EventType::PumpStarted)));
            batch.push(h.record(
                SRC,
                t + i * 60 * SEC + SEC,
                exec(p, EventType::PumpCompleted),
            ));
        }
    }
    h.n.on_records(&batch);
    assert_eq!(h.firing(), 0, "{:#?}", h.n.active_alerts());
    assert!(h.notes().is_empty());
}

#[test]
fn pump_finished_overdue_fires_on_a_long_run() {
    let mut h = H::new();
    h.rule(
        "fin",
        "pump_finished_overdue",
        &["slow"],
        json!({"limit": "2m"}),
    );
    h.send(exec("slow", EventType::PumpStarted));
    h.advance(100);
    h.send(health(HealthStatus::Ok));
    assert_eq!(h.firing(), 0);
    h.advance(30);
    h.send(health(HealthStatus::Ok));
    assert_eq!(h.kinds(), vec![K::Firing]);
    assert!(h.notes()[0].alert.annotations["summary"].contains("longer than 2m"));
    h.send(completed("slow", 1));
    assert_eq!(h.kinds(), vec![K::Firing, K::Resolved]);
}

#[test]
fn pattern_match_on_error_fields_and_log_messages() {
    let mut h = H::new();
    h.rule(
        "pw",
        "pattern_match",
        &["*"],
        json!({"field": "reason_why_stopped", "pattern": "*entity o?"}),
    );
    h.rule(
        "pr",
        "pattern_match",
        &["*"],
        json!({"field": "log_message", "pattern": "disk (full|quota)", "syntax": "regex", "resolve_after": "10m"}),
    );
    h.rule(
        "tb",
        "pattern_match",
        &["*"],
        json!({"field": "traceback", "pattern": "*Traceback*"}),
    );
    h.send(failed("orders", "failed on entity o7"));
    h.send(failed("orders", "timeout talking to crm")); // tb only (re-fire)
    let firing: Vec<_> = h.n.active_alerts().into_iter().map(|a| a.rule_id).collect();
    assert_eq!(firing.len(), 2, "{firing:?}");
    h.send(log("disk full on /data", None));
    assert_eq!(h.firing(), 3);
    h.send(log("all good", None));
    assert_eq!(h.firing(), 3);
    // Execution-field alerts clear on the next completed run.
    h.send(completed("orders", 1));
    let firing: Vec<_> = h.n.active_alerts().into_iter().map(|a| a.rule_id).collect();
    assert_eq!(firing, vec!["pr".to_string()]);
    // The log alert clears after 10 minutes without a match.
    h.advance(9 * 60);
    assert_eq!(h.firing(), 1);
    h.advance(61);
    assert_eq!(h.firing(), 0);
    let resolved = h.kinds().iter().filter(|k| **k == K::Resolved).count();
    assert_eq!(resolved, 3);
}

#[test]
fn value_too_high_and_too_low_last_run_and_summed() {
    let mut h = H::new();
    h.rule(
        "hi",
        "pump_completed_value_too_high",
        &["p"],
        json!({"key": "entities.changes_last_run", "limit": 100}),
    );
    h.rule(
        "lo",
        "pump_completed_value_too_low",
        &["p"],
        json!({"key": "entities.changes_last_run", "limit": 1}),
    );
    h.rule(
        "sum",
        "pump_completed_value_too_high",
        &["p"],
        json!({"key": "entities.changes_last_run", "limit": 250, "interval": "10m"}),
    );
    h.send(completed("p", 50));
    assert_eq!(h.firing(), 0);
    h.advance(60);
    h.send(completed("p", 150)); // hi fires
    let ids = |h: &H| {
        let mut v: Vec<_> = h.n.active_alerts().into_iter().map(|a| a.rule_id).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&h), vec!["hi"]);
    h.advance(60);
    h.send(completed("p", 90)); // hi resolves; sum = 290 > 250 fires
    assert_eq!(ids(&h), vec!["sum"]);
    h.advance(60);
    h.send(completed("p", 0)); // lo fires; sum still 290
    assert_eq!(ids(&h), vec!["lo", "sum"]);
    h.advance(11 * 60);
    h.send(completed("p", 5)); // window now holds only 5: sum resolves, lo resolves
    assert_eq!(ids(&h), Vec::<String>::new());
    let hi = h.notes().into_iter().find(|n| n.rule_id == "hi").unwrap();
    assert_eq!(hi.alert.annotations["value"], "150");
}

#[test]
fn node_heartbeat_overdue_and_service_unhealthy() {
    let mut h = H::new();
    h.rule(
        "hb",
        "node_heartbeat_overdue",
        &["*"],
        json!({"interval": "2m"}),
    );
    h.rule(
        "uh",
        "service_unhealthy",
        &["*"],
        json!({"statuses": ["failed", "degraded"]}),
    );
    h.send(health(HealthStatus::Ok));
    h.advance(110);
    assert_eq!(h.firing(), 0);
    h.send(health(HealthStatus::Degraded));
    assert_eq!(h.n.active_alerts()[0].rule_id, "uh");
    h.advance(119);
    assert_eq!(h.firing(), 1);
    h.advance(2);
    assert_eq!(h.firing(), 2, "heartbeat overdue after 2 min of silence");
    let hb = h.notes().into_iter().find(|n| n.rule_id == "hb").unwrap();
    assert!(hb.alert.annotations["summary"].contains("No record from node-1"));
    assert_eq!(hb.alert.labels["source"], "node-1");
    h.send(health(HealthStatus::Ok));
    assert_eq!(h.firing(), 0);
    assert_eq!(
        h.kinds(),
        vec![K::Firing, K::Firing, K::Resolved, K::Resolved]
    );
    // A second source is watched on its own.
    let t = h.now();
    h.send_at("node-2", t, health(HealthStatus::Failed));
    assert_eq!(h.n.active_alerts()[0].source.as_deref(), Some("node-2"));
}

#[test]
fn metric_threshold_for_a_duration_and_staleness() {
    let h = H::new();
    h.rule(
        "disk",
        "metric_threshold",
        &["*"],
        json!({"metric": "node_filesystem_avail_bytes", "labels": {"mountpoint": "/"}, "op": "<", "value": 1000, "for": "1m"}),
    );
    let labels = |mp: &str| {
        vec![
            ("instance".to_string(), "node-1".to_string()),
            ("mountpoint".to_string(), mp.to_string()),
            ("subscription".to_string(), SUB.to_string()),
        ]
    };
    let (root, data) = (labels("/"), labels("/data"));
    let push = |h: &H, v: f64, l: &Vec<(String, String)>| {
        h.n.on_samples(
            SUB,
            &[SampleRef {
                name: "node_filesystem_avail_bytes",
                labels: l,
                value: v,
            }],
        )
    };
    push(&h, 500.0, &root);
    push(&h, 10.0, &data); // other mountpoint: no rule
    h.advance(30);
    push(&h, 400.0, &root);
    assert_eq!(h.firing(), 0, "not yet held for 1m");
    h.advance(31);
    assert_eq!(h.firing(), 1, "fires from the timer once held for 1m");
    let a = &h.n.active_alerts()[0];
    assert_eq!(a.labels["mountpoint"], "/");
    assert_eq!(a.labels["source"], "node-1");
    push(&h, 5000.0, &root);
    assert_eq!(h.firing(), 0);
    assert_eq!(h.kinds(), vec![K::Firing, K::Resolved]);
    // Fires again, then the series goes stale: resolved after 5 min.
    push(&h, 1.0, &root);
    h.advance(61);
    assert_eq!(h.firing(), 1);
    h.advance(300);
    assert_eq!(h.firing(), 0);
    assert_eq!(
        h.kinds(),
        vec![K::Firing, K::Resolved, K::Firing, K::Resolved]
    );
}

#[test]
fn silences_mute_but_keep_firing_and_notify_when_they_end() {
    let mut h = H::new();
    h.rule("f", "pump_failed", &["*"], json!({}));
    let now = h.now();
    let s: Silence = serde_json::from_value(json!({
        "matchers": [{"name": "pipe", "value": "ord.*", "isRegex": true}],
        "endsAt": schemas::time::rfc3339_from_nanos(now + 600 * SEC),
        "comment": "maintenance",
    }))
    .unwrap();
    let sub = Scope::Subscription(SUB.into());
    h.n.create_silence(&sub, s).unwrap();
    h.send(failed("orders", "x"));
    h.send(failed("customers", "y"));
    assert_eq!(h.firing(), 2);
    let notes = h.notes();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].alert.labels["pipe"], "customers");
    let alerts = h.n.alerts(&sub, None);
    let orders = alerts
        .iter()
        .find(|a| a["labels"]["pipe"] == "orders")
        .unwrap();
    assert_eq!(orders["status"]["state"], "suppressed");
    assert_eq!(orders["status"]["silencedBy"].as_array().unwrap().len(), 1);
    // Another subscription's operator cannot see or delete it.
    let other = Scope::Subscription("other".into());
    assert!(h.n.silences(&other, None).is_empty());
    assert!(h.n.alerts(&other, None).is_empty());
    // The silence ends: the still-firing alert notifies.
    h.advance(601);
    let notes = h.notes();
    assert_eq!(notes.len(), 2);
    assert_eq!(notes[1].alert.labels["pipe"], "orders");
}

#[test]
fn heartbeat_inhibits_the_pipes_overdue_alerts() {
    let mut h = H::new();
    h.rule(
        "o",
        "pump_started_overdue",
        &["*"],
        json!({"grace": 0, "interval": 60}),
    );
    h.rule(
        "hb",
        "node_heartbeat_overdue",
        &["*"],
        json!({"interval": "5m"}),
    );
    h.send(exec("p", EventType::PumpCompleted));
    h.advance(61);
    h.send(health(HealthStatus::Ok));
    assert_eq!(h.kinds(), vec![K::Firing], "the pipe is overdue");
    // The node goes silent: the heartbeat alert fires and the pipe's
    // overdue alert is suppressed (no repeats while it lasts).
    h.advance(301);
    assert_eq!(h.firing(), 2);
    let sub = Scope::Subscription(SUB.into());
    let alerts = h.n.alerts(&sub, None);
    let overdue = alerts
        .iter()
        .find(|a| a["labels"]["rule_id"] == "o")
        .unwrap();
    assert_eq!(overdue["status"]["state"], "suppressed");
    assert!(overdue["status"]["inhibitedBy"]["reason"]
        .as_str()
        .unwrap()
        .contains("node_heartbeat_overdue"));
    h.advance(3600);
    let kinds = h.kinds();
    assert_eq!(
        kinds,
        vec![K::Firing, K::Firing],
        "no repeat while inhibited"
    );
}

#[test]
fn heartbeat_overdue_pages_once_for_the_node_not_per_pipe() {
    let mut h = H::new();
    h.rule(
        "o",
        "pump_started_overdue",
        &["*"],
        json!({"grace": 0, "interval": 60}),
    );
    h.rule(
        "hb",
        "node_heartbeat_overdue",
        &["*"],
        json!({"interval": "3m"}),
    );
    for p in ["a", "b", "c", "d"] {
        h.send(exec(p, EventType::PumpCompleted));
    }
    // The node dies: 30 minutes of silence.
    for _ in 0..30 {
        h.advance(60);
    }
    let notes = h.notes();
    assert_eq!(notes.len(), 1, "{notes:#?}");
    assert_eq!(notes[0].rule_id, "hb");
}

#[test]
fn a_restart_mid_incident_neither_pages_again_nor_forgets_to_resolve() {
    let mut h = H::new();
    h.rule("f", "pump_failed", &["*"], json!({}));
    h.rule(
        "hb",
        "node_heartbeat_overdue",
        &["*"],
        json!({"interval": "10m"}),
    );
    h.send(failed("orders", "x"));
    assert_eq!(h.kinds(), vec![K::Firing]);
    h = h.restarted();
    assert_eq!(h.firing(), 1);
    h.send(failed("orders", "x again"));
    h.advance(60);
    assert_eq!(
        h.kinds(),
        vec![K::Firing],
        "no second page after the restart"
    );
    h.send(completed("orders", 1));
    assert_eq!(h.kinds(), vec![K::Firing, K::Resolved]);
    // The heartbeat deadline counts from the restart, not from the last
    // record before the collector went down for an hour.
    h.send(health(HealthStatus::Ok));
    h.clock.advance(std::time::Duration::from_secs(3600));
    h = h.restarted();
    h.advance(9 * 60);
    assert_eq!(h.firing(), 0);
    h.advance(61);
    assert_eq!(h.firing(), 1);
}

#[test]
fn bad_rules_and_receivers_are_refused_with_the_field_and_others_keep_working() {
    let mut h = H::new();
    h.rule("f", "pump_failed", &["*"], json!({}));
    let sub = Scope::Subscription(SUB.into());
    let bad = |v: serde_json::Value| -> String {
        let r = serde_json::from_value(v).unwrap();
        h.n.put_rule(&sub, None, r)
            .unwrap_err()
            .field
            .unwrap_or_default()
    };
    assert_eq!(
        bad(
            json!({"name": "x", "type": "pattern_match", "params": {"field": "traceback", "pattern": "([", "syntax": "regex"}})
        ),
        "params.pattern"
    );
    assert_eq!(
        bad(json!({"name": "x", "type": "pump_failed", "receivers": ["nope"]})),
        "receivers[0]"
    );
    assert_eq!(
        bad(json!({"name": "x", "type": "pump_failed", "subscription": "other"})),
        "subscription"
    );
    let r = serde_json::from_value(json!({"type": "webhook", "url": "ftp://x/y"})).unwrap();
    assert_eq!(
        h.n.put_receiver(&sub, "ftp", r)
            .unwrap_err()
            .field
            .as_deref(),
        Some("url")
    );
    let r =
        serde_json::from_value(json!({"type": "alertmanager", "url": "http://am", "secret": "s"}))
            .unwrap();
    assert_eq!(
        h.n.put_receiver(&sub, "am", r)
            .unwrap_err()
            .field
            .as_deref(),
        Some("secret")
    );
    // A glob that matches none of the known pipes is a warning.
    h.send(exec("orders", EventType::PumpStarted));
    let w = h.rule("g", "pump_failed", &["nosuch*"], json!({}));
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("matches none"), "{w:?}");
    // The first rule still works.
    h.send(failed("orders", "x"));
    assert_eq!(h.kinds(), vec![K::Firing]);
    // Deleting the rule resolves its alert.
    h.n.delete_rule(&sub, None, "f").unwrap();
    assert_eq!(h.kinds(), vec![K::Firing, K::Resolved]);
}

#[test]
fn rules_file_loads_receivers_rules_and_silences() {
    let h = H::new();
    let path = h.dir.path().join("rules.toml");
    std::fs::write(
        &path,
        r#"
[[receivers]]
name = "ops"
subscription = "acme"
type = "webhook"
url = "http://127.0.0.1:9/ops"
secret = "s3cret"

[[rules]]
id = "orders-failed"
name = "Orders failed"
type = "pump_failed"
subscription = "acme"
pipes = ["orders"]
receivers = ["ops"]
repeat_interval = "30m"
"#,
    )
    .unwrap();
    assert_eq!(h.n.load_file(&path).unwrap(), 1);
    let r = h.n.rule(&Scope::All, None, "orders-failed").unwrap();
    assert_eq!(r.repeat_interval.0.as_secs(), 1800);
    assert_eq!(
        h.n.receivers(&Scope::All, None)
            .iter()
            .find(|r| r.name == "ops")
            .unwrap()
            .secret
            .as_deref(),
        Some("<set>")
    );
    std::fs::write(&path, "[[rules]]\nid = \"x\"\nname = \"x\"\ntype = \"pump_failed\"\nsubscription = \"acme\"\nparams = { limit = 1 }\n").unwrap();
    let e = h.n.load_file(&path).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("rules[0].params.limit"), "{e:?}");
}

#[test]
fn metric_threshold_pending_state_survives_a_restart() {
    let mut h = H::new();
    h.rule(
        "disk",
        "metric_threshold",
        &["*"],
        json!({"metric": "node_filesystem_avail_bytes", "op": "<", "value": 1000, "for": "1m"}),
    );
    let labels = vec![
        ("instance".to_string(), "node-1".to_string()),
        ("subscription".to_string(), SUB.to_string()),
    ];
    let push = |h: &H, v: f64| {
        h.n.on_samples(
            SUB,
            &[SampleRef {
                name: "node_filesystem_avail_bytes",
                labels: &labels,
                value: v,
            }],
        )
    };
    push(&h, 10.0);
    h.advance(40);
    push(&h, 10.0);
    // Restart 40 s into the minute: the minute is not started over.
    h = h.restarted();
    h.advance(15);
    push(&h, 10.0);
    assert_eq!(h.firing(), 0, "55 s: not yet");
    h.advance(6);
    assert_eq!(
        h.firing(),
        1,
        "61 s after the first sample, across the restart"
    );
    assert_eq!(h.kinds(), vec![K::Firing]);
    // And the resolution after another restart.
    h = h.restarted();
    push(&h, 5000.0);
    assert_eq!(h.kinds(), vec![K::Firing, K::Resolved]);
}

//! Hostile tenants (issue #9): every input is bounded and refused with the
//! field and the limit, deadlines never overflow, a tick does bounded work,
//! ids are per subscription, one tenant's rules cannot use up another's
//! evaluation, and termination leaves nothing behind. Manual clock, no
//! sleeps.

mod common;

use std::time::{Duration, Instant};

use common::*;
use notifier::{Limits, NotificationKind as K, NotifierConfig, Scope};
use schemas::notify::{NotificationRule, Receiver, Silence};
use schemas::EventType;
use serde_json::{json, Value};

const OTHER: &str = "beta";

fn rule_json(v: Value) -> NotificationRule {
    serde_json::from_value(v).unwrap()
}

fn acme() -> Scope {
    Scope::Subscription(SUB.into())
}

fn beta() -> Scope {
    Scope::Subscription(OTHER.into())
}

/// Runs the background evaluation until no deferred record is left (its
/// share of evaluation time refills with real time).
fn drain(h: &H) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if h.n.deferred() == 0 {
            return;
        }
        h.n.tick();
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{} records still deferred", h.n.deferred());
}

fn with_limits(f: impl FnOnce(&mut Limits)) -> H {
    let mut c: NotifierConfig = notifier_config();
    f(&mut c.limits);
    H::with_config(c)
}

#[test]
fn a_300_year_repeat_interval_is_refused_naming_the_field_and_the_limit() {
    let h = H::new();
    for (bad, field) in [
        (json!({"repeat_interval": "300y"}), "repeat_interval"),
        (json!({"repeat_interval": 9e11}), "repeat_interval"),
        (
            json!({"type": "pump_started_overdue", "params": {"grace": "31d"}}),
            "params.grace",
        ),
        (
            json!({"type": "pump_started_overdue", "params": {"interval": "1000y"}}),
            "params.interval",
        ),
        (
            json!({"type": "pump_finished_overdue", "params": {"limit": "100y"}}),
            "params.limit",
        ),
        (
            json!({"type": "node_heartbeat_overdue", "params": {"interval": "40d"}}),
            "params.interval",
        ),
        (
            json!({"type": "metric_threshold", "params": {"metric": "m", "op": ">", "value": 1, "for": "300y"}}),
            "params.for",
        ),
        (
            json!({"type": "pattern_match", "params": {"field": "traceback", "pattern": "x", "resolve_after": "300y"}}),
            "params.resolve_after",
        ),
        (
            json!({"type": "source_conflict", "params": {"resolve_after": "300y"}}),
            "params.resolve_after",
        ),
        (
            json!({"type": "pump_completed_value_too_high", "params": {"key": "entities.changes_last_run", "limit": 1, "interval": "300y"}}),
            "params.interval",
        ),
    ] {
        let mut v = json!({"name": "x", "type": "pump_failed", "receivers": ["hook"]});
        for (k, val) in bad.as_object().unwrap() {
            v[k] = val.clone();
        }
        let e =
            h.n.put_rule(&acme(), None, rule_json(v.clone()))
                .unwrap_err();
        assert_eq!(e.field.as_deref(), Some(field), "{v} -> {e:?}");
        assert!(
            e.message.contains("over the limit of 30days"),
            "{v} -> {}",
            e.message
        );
    }
    assert!(
        h.metrics()
            .contains("notifier_refusals_total{reason=\"duration\",subscription=\"acme\"} 10"),
        "{}",
        h.metrics()
    );
}

#[test]
fn a_rule_at_the_maximum_durations_with_a_failure_keeps_ticking_in_bounded_time() {
    let mut h = H::new();
    let r = rule_json(json!({
        "id": "max", "name": "max", "type": "pump_failed", "receivers": ["hook"],
        "repeat_interval": "30d",
    }));
    h.n.put_rule(&acme(), None, r).unwrap();
    h.rule(
        "o",
        "pump_started_overdue",
        &["*"],
        json!({"grace": "30d", "interval": "30d"}),
    );
    h.send(failed("orders", "boom"));
    assert_eq!(h.kinds(), vec![K::Firing]);
    // Another failure within the 30 days is counted, and repeated once
    // when they are over; time passing in big steps never loops.
    h.clock.advance(Duration::from_secs(10 * 86_400));
    h.send(failed("orders", "boom"));
    let started = Instant::now();
    for _ in 0..40 {
        h.clock.advance(Duration::from_secs(10 * 86_400));
        h.n.tick();
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(h.kinds(), vec![K::Firing, K::Repeat]);
    // The clock at the end of time: deadlines saturate, ticks end.
    h.clock.set(i64::MAX - 1_000);
    h.n.tick();
    h.send(failed("orders", "again"));
    h.n.tick();
    assert_eq!(h.firing(), 1);
}

#[test]
fn a_tick_with_thousands_of_due_timers_runs_them_all_in_bounded_rounds() {
    let mut h = H::new();
    h.rule("f", "pump_failed", &["*"], json!({}));
    let t = h.now();
    let batch: Vec<_> = (0..5000)
        .map(|i| h.record(SRC, t, failed(&format!("p{i}"), "x")))
        .collect();
    // One commit group may outlast the evaluation budget: the rest is
    // deferred, not lost.
    h.n.on_records(&batch);
    drain(&h);
    assert_eq!(h.firing(), 5000);
    // 5,000 repeat timers fall due at once: more than one round.
    for i in 0..5000 {
        let r = h.record(SRC, t + 1, failed(&format!("p{i}"), "y"));
        h.n.on_records(&[r]);
    }
    drain(&h);
    h.advance(3601);
    let repeats = h.kinds().iter().filter(|k| **k == K::Repeat).count();
    assert_eq!(repeats, 5000);
}

#[test]
fn counts_and_sizes_are_bounded_per_subscription() {
    let h = with_limits(|l| {
        l.max_rules_per_subscription = 3;
        l.max_receivers_per_subscription = 2;
        l.max_silences_per_subscription = 2;
    });
    for i in 0..3 {
        h.rule(&format!("r{i}"), "pump_failed", &["*"], json!({}));
    }
    let e =
        h.n.put_rule(
            &acme(),
            None,
            rule_json(json!({"name": "x", "type": "pump_failed"})),
        )
        .unwrap_err();
    assert_eq!(e.field.as_deref(), Some("id"));
    assert!(e.message.contains("3 rules, the limit"), "{}", e.message);
    // Replacing an existing rule is not a new one.
    h.rule("r0", "pump_failed", &["a"], json!({}));
    // Another subscription has its own count.
    let b = rule_json(json!({"name": "x", "type": "pump_failed"}));
    h.n.put_rule(&beta(), None, b).unwrap();
    // A deleted rule frees its place, and the count is the same after a
    // restart (it is kept beside the rules, not recounted per rule added).
    h.n.delete_rule(&acme(), None, "r2").unwrap();
    h.rule("r3", "pump_failed", &["*"], json!({}));
    let mut h = h.restarted();
    let over = rule_json(json!({"name": "x", "type": "pump_failed"}));
    let e = h.n.put_rule(&acme(), None, over).unwrap_err();
    assert!(e.message.contains("3 rules, the limit"), "{}", e.message);
    h.n.delete_rule(&acme(), None, "r3").unwrap();
    h.rule("r4", "pump_failed", &["*"], json!({}));

    h.receiver("second", "http://127.0.0.1:9/two");
    let r: Receiver =
        serde_json::from_value(json!({"type": "webhook", "url": "http://127.0.0.1:9/3"})).unwrap();
    let e = h.n.put_receiver(&acme(), "third", r).unwrap_err();
    assert!(
        e.message.contains("2 receivers, the limit"),
        "{}",
        e.message
    );

    let silence = |n: usize| -> Silence {
        serde_json::from_value(json!({
            "id": format!("s{n}"),
            "matchers": [{"name": "pipe", "value": "x"}],
            "endsAt": schemas::time::rfc3339_from_nanos(T0 + 3600 * SEC),
        }))
        .unwrap()
    };
    h.n.create_silence(&acme(), silence(0)).unwrap();
    h.n.create_silence(&acme(), silence(1)).unwrap();
    h.n.create_silence(&acme(), silence(1)).unwrap(); // replaces
    let e = h.n.create_silence(&acme(), silence(2)).unwrap_err();
    assert!(e.message.contains("2 silences, the limit"), "{}", e.message);

    // Pattern length and the silence's regex budget.
    let long = "a".repeat(2000);
    let e = h
        .n
        .put_rule(
            &acme(),
            Some("r1"),
            rule_json(json!({"name": "x", "type": "pattern_match", "params": {"field": "traceback", "pattern": long}})),
        )
        .unwrap_err();
    assert_eq!(e.field.as_deref(), Some("params.pattern"));
    assert!(e.message.contains("limit of 1 KiB"), "{}", e.message);
    let m = h.metrics();
    for reason in ["rules", "receivers", "silences", "pattern_bytes"] {
        assert!(
            m.contains(&format!(
                "notifier_refusals_total{{reason=\"{reason}\",subscription=\"acme\"}} 1"
            )),
            "{reason}: {m}"
        );
    }
}

#[test]
fn a_300_matcher_silence_is_refused_fast() {
    let h = H::new();
    let matchers: Vec<Value> = (0..300)
        .map(|i| json!({"name": "pipe", "value": format!("(x+x+)+y{i}\\w{{50}}"), "isRegex": true}))
        .collect();
    let s: Silence = serde_json::from_value(json!({
        "matchers": matchers,
        "endsAt": schemas::time::rfc3339_from_nanos(T0 + 3600 * SEC),
    }))
    .unwrap();
    let t = Instant::now();
    let e = h.n.create_silence(&acme(), s).unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(e.field.as_deref(), Some("matchers"));
    assert!(e.message.contains("limit of 32"), "{}", e.message);
    // 32 big ones: refused by the budget, still fast.
    let matchers: Vec<Value> = (0..32)
        .map(|i| json!({"name": "pipe", "value": format!("\\w{{50}}{i}"), "isRegex": true}))
        .collect();
    let s: Silence = serde_json::from_value(json!({
        "matchers": matchers,
        "endsAt": schemas::time::rfc3339_from_nanos(T0 + 3600 * SEC),
    }))
    .unwrap();
    let t = Instant::now();
    let e = h.n.create_silence(&acme(), s).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(e.message.contains("regex budget"), "{}", e.message);
}

#[test]
fn rule_and_silence_ids_are_per_subscription() {
    let mut h = H::new();
    h.rule("orders-failed", "pump_failed", &["orders"], json!({}));
    // Beta uses the same id: its own rule, no conflict, no leak.
    let b = rule_json(json!({"name": "beta's", "type": "pump_failed", "pipes": ["x"]}));
    let (_, _, created) = h.n.put_rule(&beta(), Some("orders-failed"), b).unwrap();
    assert!(created);
    assert_eq!(
        h.n.rule(&beta(), None, "orders-failed").unwrap().name,
        "beta's"
    );
    assert_eq!(
        h.n.rule(&acme(), None, "orders-failed").unwrap().name,
        "orders-failed alert"
    );
    // Acme's other ids are simply not found for beta.
    h.rule("acme-only", "pump_failed", &["*"], json!({}));
    let e = h.n.rule(&beta(), None, "acme-only").unwrap_err();
    assert_eq!(e.kind, notifier::ErrorKind::NotFound);
    let e = h.n.delete_rule(&beta(), None, "acme-only").unwrap_err();
    assert_eq!(e.kind, notifier::ErrorKind::NotFound);
    // An admin must say which one when the id is ambiguous.
    let e = h.n.rule(&Scope::All, None, "orders-failed").unwrap_err();
    assert_eq!(e.field.as_deref(), Some("subscription"));
    assert_eq!(
        h.n.rule(&Scope::All, Some(OTHER), "orders-failed")
            .unwrap()
            .name,
        "beta's"
    );
    // Deleting beta's leaves acme's working.
    h.n.delete_rule(&beta(), None, "orders-failed").unwrap();
    h.send(failed("orders", "x"));
    let mut fired: Vec<String> = h.notes().into_iter().map(|n| n.rule_id).collect();
    fired.sort();
    assert_eq!(fired, vec!["acme-only", "orders-failed"]);

    let silence: Silence = serde_json::from_value(json!({
        "id": "maint",
        "matchers": [{"name": "pipe", "value": "nothing"}],
        "endsAt": schemas::time::rfc3339_from_nanos(T0 + 3600 * SEC),
    }))
    .unwrap();
    h.n.create_silence(&acme(), silence.clone()).unwrap();
    h.n.create_silence(&beta(), silence).unwrap();
    assert_eq!(h.n.silences(&acme(), None).len(), 1);
    h.n.delete_silence(&beta(), None, "maint").unwrap();
    assert_eq!(h.n.silences(&acme(), None).len(), 1);
    assert!(h.n.delete_silence(&beta(), None, "maint").is_err());
    // The same after a restart.
    h = h.restarted();
    assert_eq!(h.n.silences(&acme(), None).len(), 1);
    assert!(h.n.rule(&beta(), None, "orders-failed").is_err());
    assert!(h.n.rule(&acme(), None, "orders-failed").is_ok());
}

#[test]
fn a_tenant_over_its_evaluation_budget_is_deferred_in_order_never_charged_to_another() {
    use notifier::Budget;
    use notifier::Engine;
    use std::sync::Arc;
    let mut e = Engine::new("http://c", T0, Limits::default());
    for sub in [SUB, OTHER] {
        let r =
            rule_json(json!({"id": "f", "name": "f", "type": "pump_failed", "subscription": sub}));
        e.set_rule(
            Arc::new(notifier::rule::compile(r, &Limits::default()).unwrap()),
            T0,
        );
    }
    let rec = |seq: u64, sub: &str, body| schemas::Record {
        seq,
        ts: T0,
        source: SRC.into(),
        subscription: sub.into(),
        body,
    };
    // 3 records per subscription per evaluation: acme's pipe "last" fails
    // and then completes, both past the budget.
    let mut batch = Vec::new();
    for i in 0..10 {
        batch.push(rec(i, SUB, failed(&format!("a{i}"), "x")));
        batch.push(rec(100 + i, OTHER, failed(&format!("b{i}"), "x")));
    }
    batch.push(rec(50, SUB, failed("last", "x")));
    batch.push(rec(51, SUB, completed("last", 1)));
    let mut budget = Budget::records(3);
    e.on_records(&batch, T0, &mut budget);
    let firing = |e: &Engine, sub: &str| e.alerts_of(sub).count();
    assert_eq!((firing(&e, SUB), firing(&e, OTHER)), (3, 3));
    assert_eq!(budget.deferred[SUB], 9);
    assert_eq!(budget.deferred[OTHER], 7);
    assert_eq!(e.deferred(), 16);
    // A later commit group: behind the backlog, whatever its budget.
    let mut budget = Budget::records(100);
    e.on_records(&[rec(60, SUB, failed("later", "x"))], T0, &mut budget);
    assert_eq!(budget.deferred[SUB], 1);
    let mut rounds = 0;
    while e.drain(T0, &mut Budget::records(3)) > 0 {
        rounds += 1;
    }
    assert!(rounds >= 5, "{rounds}");
    assert_eq!(e.deferred(), 0);
    // Everything evaluated, in order: "last" failed, then resolved.
    assert_eq!(firing(&e, SUB), 11);
    assert_eq!(firing(&e, OTHER), 10);
    assert!(e.alerts_of(SUB).all(|a| a.pipe.as_deref() != Some("last")));
    let fx = e.take_effects();
    let kinds: Vec<K> = fx
        .notifications
        .iter()
        .filter(|n| n.alert.labels.get("pipe").map(String::as_str) == Some("last"))
        .map(|n| n.kind)
        .collect();
    assert!(kinds.is_empty(), "the rule has no receivers: {kinds:?}");
    // A full backlog drops (and counts) what does not fit.
    let mut e = Engine::new(
        "http://c",
        T0,
        Limits {
            max_deferred_per_subscription: 2,
            ..Limits::default()
        },
    );
    let r = rule_json(json!({"id": "f", "name": "f", "type": "pump_failed", "subscription": SUB}));
    e.set_rule(
        Arc::new(notifier::rule::compile(r, &Limits::default()).unwrap()),
        T0,
    );
    let batch: Vec<_> = (0..10)
        .map(|i| rec(i, SUB, failed(&format!("a{i}"), "x")))
        .collect();
    let mut budget = Budget::records(1);
    e.on_records(&batch, T0, &mut budget);
    assert_eq!(
        (budget.deferred[SUB], budget.skipped[SUB], e.deferred()),
        (2, 7, 2)
    );
}

#[test]
fn expensive_rules_of_one_tenant_cost_it_its_own_evaluations_only() {
    let mut h = with_limits(|l| l.eval_budget = Duration::from_millis(5));
    for i in 0..200 {
        h.rule(
            &format!("slow{i}"),
            "pattern_match",
            &["*"],
            json!({"field": "reason_why_stopped", "pattern": format!("[a-q][^u-z]{{12}}x{i}"), "syntax": "regex"}),
        );
    }
    let b = rule_json(json!({"name": "beta failed", "type": "pump_failed", "id": "bf"}));
    h.n.put_rule(&beta(), None, b).unwrap();
    // Letters and digits: the regexes can neither skip ahead nor keep
    // their DFAs small.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let text: String = (0..64_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b"abcdefghijklmnopqrstuvwxyz0123456789"[(x % 36) as usize] as char
        })
        .collect();
    let t = h.now();
    let mut batch = Vec::new();
    for i in 0..50 {
        batch.push(h.record_for(SUB, SRC, t, failed(&format!("a{i}"), &text)));
        batch.push(h.record_for(OTHER, SRC, t, failed(&format!("b{i}"), "x")));
    }
    let started = Instant::now();
    h.n.on_records(&batch);
    let took = started.elapsed();
    let beta_alerts =
        h.n.active_alerts()
            .into_iter()
            .filter(|a| a.subscription == OTHER)
            .count();
    assert_eq!(beta_alerts, 50, "beta's records are all evaluated at once");
    assert!(h.n.deferred() > 0, "acme's records wait");
    // Generous: acme's share of the call is its 5 ms plus one regex match.
    assert!(took < Duration::from_millis(500), "{took:?}");
    let m = h.metrics();
    assert!(
        m.contains("notifier_evaluation_deferred_records_total{subscription=\"acme\"}"),
        "{m}"
    );
    assert!(!m.contains("subscription=\"beta\"} "), "{m}");
    // The background evaluation works through acme's records.
    drain(&h);
    assert_eq!(h.n.deferred(), 0);
}

#[test]
fn per_subscription_state_is_bounded_and_counted() {
    let mut h = with_limits(|l| {
        l.max_pipes_per_subscription = 10;
        l.max_alerts_per_subscription = 5;
        l.max_sources_per_subscription = 2;
    });
    h.rule("f", "pump_failed", &["*"], json!({}));
    h.rule("o", "pump_started_overdue", &["*"], json!({"interval": 60}));
    let t = h.now();
    let batch: Vec<_> = (0..100)
        .map(|i| h.record(SRC, t, exec(&format!("p{i}"), EventType::PumpCompleted)))
        .collect();
    h.n.on_records(&batch);
    let batch: Vec<_> = (0..100)
        .map(|i| h.record(SRC, t, failed(&format!("p{i}"), "x")))
        .collect();
    h.n.on_records(&batch);
    assert_eq!(h.firing(), 5);
    for s in ["n2", "n3", "n4"] {
        h.send_at(s, t, exec("p", EventType::PumpCompleted));
    }
    let m = h.metrics();
    for (reason, min) in [("pipes", 90), ("alerts", 95), ("sources", 2)] {
        let line = m
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "notifier_limited_total{{reason=\"{reason}\",subscription=\"acme\"}}"
                ))
            })
            .unwrap_or_else(|| panic!("no {reason} line: {m}"));
        let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= min as f64, "{line}");
    }
}

#[test]
fn termination_leaves_nothing_of_the_subscription() {
    let mut h = H::new();
    h.rule("f", "pump_failed", &["*"], json!({}));
    h.rule(
        "hb",
        "node_heartbeat_overdue",
        &["*"],
        json!({"interval": "5m"}),
    );
    h.rule(
        "v",
        "pump_completed_value_too_high",
        &["*"],
        json!({"key": "entities.changes_last_run", "limit": 10, "interval": "1h"}),
    );
    let s: Silence = serde_json::from_value(json!({
        "matchers": [{"name": "pipe", "value": "nothing"}],
        "endsAt": schemas::time::rfc3339_from_nanos(T0 + 3600 * SEC),
    }))
    .unwrap();
    h.n.create_silence(&acme(), s).unwrap();
    h.send(completed("orders", 50));
    h.send(failed("orders", "x"));
    // Beta has the same rule id and an alert too.
    let r: Receiver =
        serde_json::from_value(json!({"type": "webhook", "url": "http://127.0.0.1:9/b"})).unwrap();
    h.n.put_receiver(&beta(), "hook", r).unwrap();
    let b =
        rule_json(json!({"name": "b", "type": "pump_failed", "id": "f", "receivers": ["hook"]}));
    h.n.put_rule(&beta(), None, b).unwrap();
    h.send_for(OTHER, failed("orders", "y"));
    assert!(h.notes().iter().any(|n| n.subscription == SUB));
    assert!(h.n.pending() > 0, "queued for delivery");

    h.n.purge(SUB);
    let check = |h: &H| {
        assert!(h.n.rules(&acme(), None).is_empty());
        assert!(h.n.receivers(&acme(), None).is_empty());
        assert!(h.n.silences(&acme(), None).is_empty());
        assert!(h.n.alerts(&acme(), None).is_empty());
        let hist =
            h.n.notifications(
                &acme(),
                &notifier::NotificationFilter {
                    limit: 100,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(hist.is_empty(), "{hist:?}");
        assert!(h.notes().iter().all(|n| n.subscription == OTHER));
        // Beta is untouched.
        assert_eq!(h.n.rules(&beta(), None).len(), 1);
        assert_eq!(h.n.alerts(&beta(), None).len(), 1);
    };
    check(&h);
    assert_eq!(h.n.pending(), 1, "only beta's notification is still queued");
    // Nothing comes back from disk, and no timer of acme fires.
    h = h.restarted();
    check(&h);
    h.advance(3600);
    check(&h);
}

#[test]
fn source_conflicts_fire_once_per_source_repeat_with_counts_and_resolve() {
    let h = H::new();
    h.rule(
        "c",
        "source_conflict",
        &["*"],
        json!({"resolve_after": "30m"}),
    );
    h.n.on_source_conflict(SUB, "node-1", "epoch e2 wrote seq 5 after epoch e3 started");
    h.n.on_source_conflict(SUB, "node-2", "seq 9 re-sent with other content");
    assert_eq!(h.kinds(), vec![K::Firing, K::Firing]);
    let n = &h.notes()[0];
    assert_eq!(n.alert.labels["rule_type"], "source_conflict");
    assert_eq!(n.alert.labels["source"], "node-1");
    assert!(n.alert.annotations["description"].contains("epoch e2"));
    // More conflicts of node-1: counted, repeated after the interval.
    h.advance(600);
    h.n.on_source_conflict(SUB, "node-1", "again");
    h.n.on_source_conflict(SUB, "node-1", "and again");
    // Another subscription's conflict does not touch acme's.
    h.n.on_source_conflict(OTHER, "node-1", "beta's");
    assert_eq!(h.notes().len(), 2);
    h.advance(1500);
    // node-2 resolved after 30 quiet minutes; node-1 is still firing.
    let kinds = h.kinds();
    assert!(kinds.contains(&K::Resolved), "{kinds:?}");
    assert_eq!(h.firing(), 1);
    h.advance(1500);
    assert_eq!(h.firing(), 0);
    assert_eq!(h.kinds().iter().filter(|k| **k == K::Resolved).count(), 2);
}

#[test]
fn a_layout_1_store_is_migrated() {
    use notifier::store::keys;
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_db(dir.path());
        let cf = db.cf_handle(notifier::COLUMN_FAMILY).unwrap();
        let rule = json!({"id": "old", "name": "Old", "type": "pump_failed", "subscription": SUB,
                          "pipes": ["*"], "params": {}, "severity": "warning", "receivers": ["hook"],
                          "repeat_interval": "1h"});
        let receiver = json!({"name": "hook", "subscription": SUB, "type": "webhook",
                              "url": "http://127.0.0.1:9/hook", "timeout": "10s", "send_resolved": true});
        db.put_cf(cf, b"r\0old", serde_json::to_vec(&rule).unwrap())
            .unwrap();
        db.put_cf(
            cf,
            keys::receiver(SUB, "hook"),
            serde_json::to_vec(&receiver).unwrap(),
        )
        .unwrap();
        let silence = json!({"id": "s1", "subscription": SUB, "matchers": [{"name": "pipe", "value": "x"}],
                             "startsAt": "2026-01-01T00:00:00Z", "endsAt": "2026-01-02T00:00:00Z"});
        db.put_cf(cf, b"s\0s1", serde_json::to_vec(&silence).unwrap())
            .unwrap();
        let mut nkey = b"n\0".to_vec();
        nkey.extend_from_slice(&7u64.to_be_bytes());
        let note = json!({"id": 7, "subscription": SUB, "receiver": "hook", "rule_id": "old",
            "fingerprint": "abc", "kind": "firing", "alert": {"status": "firing", "labels": {},
            "annotations": {}, "startsAt": "x", "endsAt": "y", "generatorURL": "z", "fingerprint": "abc"},
            "expires_at": 0, "created_at": T0, "state": "delivered", "attempts": 1,
            "last_error": null, "finished_at": T0});
        db.put_cf(cf, &nkey, serde_json::to_vec(&note).unwrap())
            .unwrap();
    }
    let clock = std::sync::Arc::new(notifier::ManualClock::new(T0));
    let config = notifier_config();
    let n = notifier::Notifier::open(open_db(dir.path()), config.clone(), clock.clone()).unwrap();
    let h = H {
        n,
        clock,
        dir,
        seq: 0,
        config,
    };
    assert_eq!(h.n.rule(&acme(), None, "old").unwrap().name, "Old");
    assert_eq!(h.n.silences(&acme(), None).len(), 1);
    let hist =
        h.n.notifications(
            &acme(),
            &notifier::NotificationFilter {
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(hist.len(), 1);
    assert!(h.n.rule(&beta(), None, "old").is_err());
}

//! The engine against a small reference model, with the manual clock:
//! random sequences of pipe runs, health records, time passing (ticks),
//! silences and collector restarts. For every sequence:
//! - per fingerprint, at most one firing notification between
//!   resolutions, and every resolved follows a firing;
//! - a restart at any point changes no notification (the same sequence
//!   without restarts gives the same notifications, at the same times);
//! - no overdue page is caused by time passing while the source was
//!   silent (no deadline inside a gap of its records longer than the
//!   silence gap);
//! - `pump_failed` firings and resolutions are exactly the reference
//!   model's (a pipe starts failing: firing unless silenced, then when the
//!   silence ends; it completes: resolved if the firing went out, silenced
//!   or not).
//!
//! Cases: `MODEL_CASES` (default 64).

mod common;

use std::collections::{BTreeMap, HashMap};

use common::*;
use notifier::{Limits, Notification, NotificationKind as K, NotifierConfig, Scope};
use proptest::prelude::*;
use schemas::notify::Silence;
use schemas::{EventType, HealthStatus};
use serde_json::json;

const PIPES: usize = 3;
/// The heartbeat interval (seconds), and so the source's silence gap.
const HEARTBEAT: i64 = 60;

#[derive(Debug, Clone)]
enum Op {
    /// The pipe runs now: started, then completed (`ok`) or failed.
    Run {
        pipe: usize,
        ok: bool,
    },
    Health,
    /// Seconds pass (the node says nothing), then a tick.
    Advance(u64),
    /// Silences the pipe's alerts for a while (replacing its silence).
    Silence {
        pipe: usize,
        secs: u64,
    },
    Unsilence {
        pipe: usize,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PIPES, any::<bool>()).prop_map(|(pipe, ok)| Op::Run { pipe, ok }),
        3 => Just(Op::Health),
        4 => prop_oneof![1u64..20, 20u64..200, 200u64..4000].prop_map(Op::Advance),
        1 => (0..PIPES, 1u64..600).prop_map(|(pipe, secs)| Op::Silence { pipe, secs }),
        1 => (0..PIPES).prop_map(|pipe| Op::Unsilence { pipe }),
        2 => Just(Op::Restart),
    ]
}

fn pipe(i: usize) -> String {
    format!("p{i}")
}

fn setup() -> H {
    let config = NotifierConfig {
        limits: Limits {
            eval_budget: std::time::Duration::MAX,
            ..Limits::default()
        },
        ..notifier_config()
    };
    let mut h = H::with_config(config);
    h.rule("f", "pump_failed", &["*"], json!({}));
    h.rule(
        "hb",
        "node_heartbeat_overdue",
        &["*"],
        json!({"interval": HEARTBEAT}),
    );
    h.rule(
        "late",
        "pump_started_overdue",
        &["*"],
        json!({"interval": 30, "grace": 10}),
    );
    h.send(health(HealthStatus::Ok));
    h
}

/// Runs `ops`; restarts only when `restarts`. Returns the notifications
/// and the timestamps of the records sent.
fn execute(ops: &[Op], restarts: bool) -> (Vec<Notification>, Vec<i64>) {
    let mut h = setup();
    let mut sent = vec![h.now()];
    let scope = Scope::Subscription(SUB.into());
    for op in ops {
        match op {
            Op::Run { pipe: p, ok } => {
                h.send(exec(&pipe(*p), EventType::PumpStarted));
                if *ok {
                    h.send(completed(&pipe(*p), 1));
                } else {
                    h.send(failed(&pipe(*p), "boom"));
                }
                sent.push(h.now());
            }
            Op::Health => {
                h.send(health(HealthStatus::Ok));
                sent.push(h.now());
            }
            Op::Advance(s) => h.advance(*s),
            Op::Silence { pipe: p, secs } => {
                let s: Silence = serde_json::from_value(json!({
                    "id": format!("s{p}"),
                    "matchers": [{"name": "pipe", "value": pipe(*p)}],
                    "endsAt": schemas::time::rfc3339_from_nanos(h.now() + *secs as i64 * SEC),
                }))
                .unwrap();
                h.n.create_silence(&scope, s).unwrap();
            }
            Op::Unsilence { pipe: p } => {
                let _ = h.n.delete_silence(&scope, None, &format!("s{p}"));
            }
            Op::Restart if restarts => h = h.restarted(),
            Op::Restart => {}
        }
    }
    (h.notes(), sent)
}

/// The reference model of the `pump_failed` rule: (seconds since the
/// start, kind, pipe).
fn model(ops: &[Op]) -> Vec<(i64, K, String)> {
    #[derive(Default, Clone, Copy)]
    struct Pipe {
        failing: bool,
        notified: bool,
    }
    let mut now: i64 = 0;
    let mut pipes = [Pipe::default(); PIPES];
    let mut silences: HashMap<usize, (i64, i64)> = HashMap::new();
    let mut out = Vec::new();
    let silenced = |s: &HashMap<usize, (i64, i64)>, p: usize, t: i64| {
        s.get(&p).is_some_and(|(a, b)| t >= *a && t < *b)
    };
    let flush = |pipes: &mut [Pipe; PIPES],
                 s: &HashMap<usize, (i64, i64)>,
                 t: i64,
                 out: &mut Vec<(i64, K, String)>| {
        for (i, p) in pipes.iter_mut().enumerate() {
            if p.failing && !p.notified && !silenced(s, i, t) {
                p.notified = true;
                out.push((t, K::Firing, pipe(i)));
            }
        }
    };
    for op in ops {
        match op {
            Op::Run { pipe: i, ok } => {
                let p = &mut pipes[*i];
                if *ok {
                    if p.failing && p.notified {
                        out.push((now, K::Resolved, pipe(*i)));
                    }
                    *p = Pipe::default();
                } else if !p.failing {
                    p.failing = true;
                    if !silenced(&silences, *i, now) {
                        p.notified = true;
                        out.push((now, K::Firing, pipe(*i)));
                    }
                }
            }
            Op::Health | Op::Restart => {}
            Op::Advance(s) => {
                let edge = silences.values().any(|(a, b)| {
                    (*a > now && *a <= now + *s as i64) || (*b > now && *b <= now + *s as i64)
                });
                now += *s as i64;
                if edge {
                    flush(&mut pipes, &silences, now, &mut out);
                }
            }
            Op::Silence { pipe: i, secs } => {
                silences.insert(*i, (now, now + *secs as i64));
                flush(&mut pipes, &silences, now, &mut out);
            }
            Op::Unsilence { pipe: i } => {
                silences.remove(i);
                flush(&mut pipes, &silences, now, &mut out);
            }
        }
    }
    out.sort();
    out
}

fn cases() -> u32 {
    std::env::var("MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn the_engine_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..50)) {
        let (notes, sent) = execute(&ops, true);

        // At most one firing per fingerprint between resolutions; every
        // resolved follows a firing.
        let mut firing: BTreeMap<&str, bool> = BTreeMap::new();
        for n in &notes {
            let f = firing.entry(n.fingerprint.as_str()).or_default();
            match n.kind {
                K::Firing => {
                    prop_assert!(!*f, "a second firing of {} before its resolution: {notes:#?}", n.fingerprint);
                    *f = true;
                }
                K::Resolved => {
                    prop_assert!(*f, "a resolution of {} without a firing: {notes:#?}", n.fingerprint);
                    *f = false;
                }
                K::Repeat | K::Refresh => prop_assert!(*f),
            }
        }

        // A restart changes no notification: the same ones at the same
        // times (their order within one instant may differ: timers due at
        // once run in the order they were armed).
        let (plain, _) = execute(&ops, false);
        let key = |n: &Notification| (n.created_at, n.kind, n.fingerprint.clone(), n.receiver.clone());
        let mut with: Vec<_> = notes.iter().map(key).collect();
        let mut without: Vec<_> = plain.iter().map(key).collect();
        with.sort();
        without.sort();
        prop_assert_eq!(with, without);

        // No overdue page from a deadline inside a silence of the source.
        for n in notes.iter().filter(|n| n.rule_id == "late" && n.kind == K::Firing) {
            let d = schemas::time::parse_rfc3339(&n.alert.annotations["expected_by"]).unwrap();
            let before = sent.iter().filter(|t| **t <= d).max();
            let after = sent.iter().filter(|t| **t > d).min();
            if let (Some(a), Some(b)) = (before, after) {
                prop_assert!(
                    b - a <= HEARTBEAT * SEC,
                    "overdue page for a deadline at {d} inside a silence from {a} to {b}"
                );
            }
        }

        // pump_failed is exactly the reference model (the same firings and
        // resolutions at the same times).
        let mut got: Vec<(i64, K, String)> = notes
            .iter()
            .filter(|n| n.rule_id == "f" && matches!(n.kind, K::Firing | K::Resolved))
            .map(|n| ((n.created_at - T0) / SEC, n.kind, n.alert.labels["pipe"].clone()))
            .collect();
        got.sort();
        prop_assert_eq!(got, model(&ops));
    }
}

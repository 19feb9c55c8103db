//! The committed JSON Schemas match the Rust types, and sample records of
//! every kind validate against them in JSON and survive MessagePack.

use std::path::PathBuf;

use schemas::*;
use serde_json::{json, Value};

fn json_dir() -> PathBuf {
    std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("json")
}

#[test]
fn committed_schemas_match_rust_types() {
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for (file, schema) in wire_schemas() {
        let generated = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        let path = json_dir().join(&file);
        if update {
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(committed) if committed == generated => {}
            _ => stale.push(file),
        }
    }
    assert!(
        stale.is_empty(),
        "schemas/json/ is out of date for {stale:?}; run UPDATE_SCHEMAS=1 cargo test -p schemas"
    );
}

fn validator(file: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(json_dir().join(file)).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn record(seq: u64, body: Body) -> Record {
    Record {
        seq,
        ts: 1_764_280_000_000_000_000 + seq as i64,
        source: "acme-prod".into(),
        subscription: "sub-1".into(),
        body,
    }
}

fn samples() -> Vec<Record> {
    let mut started = ExecutionBody::new("orders", EventType::PumpStarted);
    started.run_id = Some("r1".into());
    started.start_time = Some("2026-11-27T10:00:00.000000Z".into());
    started.sync_type = Some(SyncType::Incremental);

    let mut completed = ExecutionBody::new("orders", EventType::PumpCompleted);
    completed.run_id = Some("r1".into());
    completed.start_time = started.start_time.clone();
    completed.end_time = Some("2026-11-27T10:00:01.500000Z".into());
    completed.total_time = Some(1.5);
    completed.metrics = ExecutionMetrics {
        entities_last_run: Some(120),
        changes_last_run: Some(7),
        read_errors_last_run: Some(0),
        write_errors_last_run: Some(0),
        source_time: Some(0.4),
        transform_time: Some(0.3),
        sink_time: Some(0.8),
        ..Default::default()
    };

    let mut failed = ExecutionBody::new("orders", EventType::PumpFailed);
    failed.run_id = Some("r2".into());
    failed.reason_why_stopped = Some("Transform failed: integer(\"abc\")".into());
    failed.traceback = Some("Traceback:\n  at dtl integer".into());
    failed.original_error_message = Some("not a number: \"abc\"".into());
    failed.exception_entity =
        Some(json!({"_id": "o-17", "amount": "abc", "card": "4111111111111111"}));

    vec![
        record(1, Body::Execution(Box::new(started))),
        record(2, Body::Execution(Box::new(completed))),
        record(3, Body::Execution(Box::new(failed))),
        record(
            4,
            Body::Log(LogBody {
                level: Level::Warn,
                target: "node::pump".into(),
                message: "pipe orders is slow".into(),
                fields: [("pipe".to_string(), json!("orders"))]
                    .into_iter()
                    .collect(),
            }),
        ),
        record(
            5,
            Body::Health(HealthBody {
                status: HealthStatus::Degraded,
                checks: vec![
                    HealthCheck {
                        name: "storage".into(),
                        status: HealthStatus::Ok,
                        detail: None,
                    },
                    HealthCheck {
                        name: "outbox".into(),
                        status: HealthStatus::Degraded,
                        detail: Some("92% full".into()),
                    },
                ],
            }),
        ),
        record(
            6,
            Body::Config(ConfigBody {
                hash: "9f86d081884c7d65".into(),
                config: vec![
                    json!({"_id": "orders", "type": "pipe", "source": {"type": "dataset", "dataset": "raw"}}),
                ],
            }),
        ),
        record(
            7,
            Body::System(SystemBody {
                facility: Some("kern".into()),
                priority: Some(4),
                message: "EXT4-fs (vda): mounted filesystem".into(),
                file: None,
            }),
        ),
    ]
}

#[test]
fn sample_records_validate_against_committed_schemas() {
    let records = validator("record.json");
    let batch = validator("ingest-batch.json");
    let samples = samples();
    assert_eq!(samples.len(), 7);
    for r in &samples {
        let v = serde_json::to_value(r).unwrap();
        assert_eq!(v["kind"], json!(r.kind().as_str()));
        let errors: Vec<String> = records.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{} invalid: {errors:?}\n{v:#}", r.kind());
        let body_file = format!("body-{}.json", r.kind());
        assert!(validator(&body_file).is_valid(&v["body"]), "{body_file}");
    }
    let b = IngestBatch {
        epoch: String::new(),
        source: "acme-prod".into(),
        subscription: "sub-1".into(),
        records: samples,
        dropped: 3,
    };
    assert!(batch.is_valid(&serde_json::to_value(&b).unwrap()));
}

#[test]
fn schemas_reject_wrong_records() {
    let records = validator("record.json");
    let mut v = serde_json::to_value(&samples()[0]).unwrap();
    v["kind"] = json!("health"); // an execution body under the health kind
    assert!(!records.is_valid(&v));
    let mut v = serde_json::to_value(&samples()[3]).unwrap();
    v["body"]["level"] = json!("LOUD");
    assert!(!records.is_valid(&v));
    let mut v = serde_json::to_value(&samples()[0]).unwrap();
    v.as_object_mut().unwrap().remove("seq");
    assert!(!records.is_valid(&v));
}

#[test]
fn messagepack_round_trips_every_kind() {
    for r in samples() {
        let bytes = to_msgpack(&r).unwrap();
        let back: Record = from_msgpack(&bytes).unwrap();
        assert_eq!(back, r);
    }
    let b = IngestBatch {
        epoch: String::new(),
        source: "s".into(),
        subscription: "t".into(),
        records: samples(),
        dropped: 0,
    };
    let back: IngestBatch = from_msgpack(&to_msgpack(&b).unwrap()).unwrap();
    assert_eq!(back, b);
}

#[test]
fn body_before_kind_and_unknown_fields_are_accepted() {
    let text = r#"{"body": {"level": "INFO", "target": "t", "message": "m", "colour": "red"},
                   "future_field": [1, 2], "seq": 9, "ts": 5, "source": "s",
                   "subscription": "x", "kind": "log"}"#;
    let r: Record = serde_json::from_str(text).unwrap();
    assert_eq!(r.seq, 9);
    match r.body {
        Body::Log(l) => assert_eq!(l.message, "m"),
        other => panic!("wrong body {other:?}"),
    }
}

#[test]
fn unknown_kind_and_missing_fields_are_named_in_errors() {
    let e = serde_json::from_str::<Record>(
        r#"{"seq":1,"ts":1,"source":"s","subscription":"x","kind":"metric","body":{}}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("metric"), "{e}");
    let e = serde_json::from_str::<Record>(r#"{"seq":1,"ts":1,"source":"s","kind":"log","body":{"level":"INFO","target":"t","message":"m"}}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("subscription"), "{e}");
}

#[test]
fn execution_bodies_drop_undeclared_fields() {
    // Allow-listing: a field that is not in the schema does not survive a decode.
    let v = json!({"pipe": "p", "event_type": "pump-failed", "password": "hunter2",
                   "metrics": {"entities.changes_last_run": 3, "secret_metric": 1}});
    let b: ExecutionBody = serde_json::from_value(v).unwrap();
    let out = serde_json::to_string(&b).unwrap();
    assert!(
        !out.contains("hunter2") && !out.contains("secret_metric"),
        "{out}"
    );
    assert_eq!(b.metrics.get("entities.changes_last_run"), Some(3.0));
}

//! Test harness: a notifier over a temporary RocksDB, a manual clock, and
//! helpers to make records.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notifier::{
    EgressPolicy, ManualClock, Notification, NotificationKind, Notifier, NotifierConfig, Scope,
};
use schemas::notify::{NotificationRule, Receiver};
use schemas::{Body, EventType, ExecutionBody, HealthBody, HealthStatus, Level, LogBody, Record};
use serde_json::{json, Value};

pub const SUB: &str = "acme";
pub const SRC: &str = "node-1";
/// 2026-01-01T00:00:00Z
pub const T0: i64 = 1_767_225_600_000_000_000;
pub const SEC: i64 = 1_000_000_000;

/// The harness's config: receivers on this host are allowed (the tests'
/// webhooks listen on loopback).
pub fn notifier_config() -> NotifierConfig {
    NotifierConfig {
        egress: EgressPolicy::allowing(&["127.0.0.1/32"]),
        ..NotifierConfig::default()
    }
}

pub fn open_db(dir: &Path) -> Arc<rocksdb::DB> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    Arc::new(rocksdb::DB::open_cf(&opts, dir, [notifier::COLUMN_FAMILY]).expect("open db"))
}

pub struct H {
    pub n: Notifier,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
    pub seq: u64,
    pub config: NotifierConfig,
}

impl H {
    pub fn new() -> H {
        H::with_config(notifier_config())
    }

    pub fn with_config(config: NotifierConfig) -> H {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let n = Notifier::open(open_db(dir.path()), config.clone(), clock.clone()).unwrap();
        let mut h = H {
            n,
            clock,
            dir,
            seq: 0,
            config,
        };
        h.receiver("hook", "http://127.0.0.1:9/hook");
        h
    }

    /// Closes the notifier and opens it again on the same database (a
    /// collector restart).
    pub fn restarted(self) -> H {
        let H {
            n,
            clock,
            dir,
            seq,
            config,
        } = self;
        drop(n); // releases the RocksDB lock
        let n = Notifier::open(open_db(dir.path()), config.clone(), clock.clone()).unwrap();
        H {
            n,
            clock,
            dir,
            seq,
            config,
        }
    }

    pub fn now(&self) -> i64 {
        self.n.now()
    }

    pub fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
        self.n.tick();
    }

    pub fn receiver(&mut self, name: &str, url: &str) {
        let r: Receiver = serde_json::from_value(json!({"type": "webhook", "url": url})).unwrap();
        self.n
            .put_receiver(&Scope::Subscription(SUB.into()), name, r)
            .unwrap();
    }

    pub fn rule(&self, id: &str, ty: &str, pipes: &[&str], params: Value) -> Vec<String> {
        let r: NotificationRule = serde_json::from_value(json!({
            "id": id, "name": format!("{id} alert"), "type": ty, "subscription": SUB,
            "pipes": pipes, "params": params, "receivers": ["hook"],
        }))
        .unwrap();
        self.n
            .put_rule(&Scope::Subscription(SUB.into()), Some(id), r)
            .unwrap()
            .1
    }

    pub fn record(&mut self, source: &str, ts: i64, body: Body) -> Record {
        self.record_for(SUB, source, ts, body)
    }

    pub fn record_for(&mut self, sub: &str, source: &str, ts: i64, body: Body) -> Record {
        self.seq += 1;
        Record {
            seq: self.seq,
            ts,
            source: source.into(),
            subscription: sub.into(),
            body,
        }
    }

    /// Stores one record of subscription `sub` now.
    pub fn send_for(&mut self, sub: &str, body: Body) {
        let ts = self.now();
        let r = self.record_for(sub, SRC, ts, body);
        self.n.on_records(&[r]);
    }

    /// The notifier's metrics as Prometheus text.
    pub fn metrics(&self) -> String {
        let mut reg = prometheus_client::registry::Registry::default();
        self.n.register_metrics(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        out
    }

    /// Stores one record now (its ts = the clock).
    pub fn send(&mut self, body: Body) {
        let ts = self.now();
        self.send_at(SRC, ts, body);
    }

    pub fn send_at(&mut self, source: &str, ts: i64, body: Body) {
        let r = self.record(source, ts, body);
        self.n.on_records(&[r]);
    }

    pub fn notes(&self) -> Vec<Notification> {
        self.n.notification_log().unwrap()
    }

    pub fn kinds(&self) -> Vec<NotificationKind> {
        self.notes().iter().map(|n| n.kind).collect()
    }

    pub fn firing(&self) -> usize {
        self.n.active_alerts().len()
    }
}

pub fn exec(pipe: &str, ev: EventType) -> Body {
    Body::Execution(Box::new(ExecutionBody::new(pipe, ev)))
}

pub fn failed(pipe: &str, reason: &str) -> Body {
    let mut e = ExecutionBody::new(pipe, EventType::PumpFailed);
    e.reason_why_stopped = Some(reason.into());
    e.original_error_message = Some(format!("boom: {reason}"));
    e.traceback = Some(format!("Traceback (most recent call last):\n  {reason}"));
    Body::Execution(Box::new(e))
}

pub fn completed(pipe: &str, changes: u64) -> Body {
    let mut e = ExecutionBody::new(pipe, EventType::PumpCompleted);
    e.metrics.changes_last_run = Some(changes);
    Body::Execution(Box::new(e))
}

pub fn health(status: HealthStatus) -> Body {
    Body::Health(HealthBody {
        status,
        checks: vec![schemas::HealthCheck {
            name: "store".into(),
            status,
            detail: (status != HealthStatus::Ok).then(|| "disk full".into()),
        }],
    })
}

pub fn log(message: &str, pipe: Option<&str>) -> Body {
    let mut fields = std::collections::BTreeMap::new();
    if let Some(p) = pipe {
        fields.insert("pipe".to_string(), json!(p));
    }
    Body::Log(LogBody {
        level: Level::Error,
        target: "node::pump".into(),
        message: message.into(),
        fields,
    })
}

pub fn config(pipes: &[(&str, Value)]) -> Body {
    Body::Config(schemas::ConfigBody {
        hash: "h".into(),
        config: pipes
            .iter()
            .map(|(id, pump)| json!({"_id": id, "type": "pipe", "pump": pump}))
            .collect(),
    })
}

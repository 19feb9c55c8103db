//! Collectors with `--coordination` (one notifier per subscription across
//! collectors over one ClickHouse and one ZooKeeper): the collector's
//! flags, a client that reads which collector answered a notifier call,
//! and finding the subscription's owner.

use std::path::Path;
use std::time::Duration;

use schemas::EventType;
use serde_json::{json, Value};

use crate::collector::{operator_token, shipper_token, Collector};
use crate::process::until;

/// A coordinated collector `id` (member id) in `root` for `subscriptions`
/// over ZooKeeper `zk` and ClickHouse `ch`, session timeout 2 s. All share
/// one `--external-url` (the address operators reach them at, e.g. a load
/// balancer: the links in a notification, so a copy sent by another owner
/// is identical) and advertise their own address to each other.
pub fn collector(root: &Path, id: &str, subscriptions: &[&str], zk: &str, ch: &str) -> Collector {
    let mut c = crate::clickhouse::collector(
        root,
        subscriptions,
        &[
            "--coordination",
            &format!("zookeeper://{zk}/sesam-test"),
            "--member-id",
            id,
            "--coordination-session-timeout",
            "2s",
            "--coordination-poll",
            "50ms",
        ],
        &[ch.to_string()],
    );
    let own = c.url.clone();
    c.args.extend([
        "--external-url".into(),
        "http://alerts.example.test".into(),
        "--advertise-url".into(),
        own,
    ]);
    c
}

/// Calls to coordinated collectors as the operator of one subscription.
#[derive(Debug)]
pub struct Client {
    pub http: reqwest::Client,
    pub subscription: String,
}

impl Client {
    pub fn new(subscription: &str) -> Client {
        Client {
            http: reqwest::Client::new(),
            subscription: subscription.into(),
        }
    }

    /// `method path` with the operator token: (status, answering
    /// collector from `X-Sesam-Collector`, JSON body).
    pub async fn call(
        &self,
        c: &Collector,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, String, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut r = self
            .http
            .request(m, format!("{}{path}", c.url))
            .bearer_auth(operator_token(&self.subscription));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = r.status().as_u16();
        let by = r
            .headers()
            .get("x-sesam-collector")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (status, by, r.json().await.unwrap_or(Value::Null))
    }

    /// Receiver `ops` (a webhook at `url`) and `rule` (default:
    /// `pump_failed` on `pipe`), made through `c` and answered by the
    /// collector `owner`.
    pub async fn webhook_rule(
        &self,
        c: &Collector,
        url: &str,
        owner: &str,
        pipe: &str,
        rule: Option<Value>,
    ) {
        let (st, by, body) = self
            .call(
                c,
                "PUT",
                "/api/v1/receivers/ops",
                Some(json!({"type": "webhook", "url": url})),
            )
            .await;
        assert!(st == 200 || st == 201, "receiver: {st} {body}");
        assert_eq!(by, owner, "the receiver was made by the owner");
        let rule = rule.unwrap_or_else(|| {
            json!({"name": "orders failed", "type": "pump_failed", "pipes": [pipe],
                   "receivers": ["ops"], "severity": "critical"})
        });
        let (st, by, body) = self
            .call(c, "POST", "/api/v1/notification-rules", Some(rule))
            .await;
        assert_eq!(st, 201, "rule: {body}");
        assert_eq!(by, owner, "the rule was made by the owner");
    }

    /// Posts one execution event of `pipe` from `source` as record `seq`
    /// (outbox epoch `life-1`), timestamped now; it must be accepted.
    pub async fn event(&self, c: &Collector, source: &str, pipe: &str, seq: u64, event: EventType) {
        let (st, body) = self.event_in(c, "life-1", source, pipe, seq, event).await;
        assert_eq!(st, 200, "ingest seq {seq} at {}: {body}", c.url);
    }

    /// [`Client::event`] from outbox epoch `epoch`: (status, JSON answer).
    pub async fn event_in(
        &self,
        c: &Collector,
        epoch: &str,
        source: &str,
        pipe: &str,
        seq: u64,
        event: EventType,
    ) -> (u16, Value) {
        let sub = self.subscription.as_str();
        let rec = testkit::records::record(
            sub,
            source,
            seq,
            schemas::time::now_nanos(),
            testkit::records::execution_body(pipe, event, "the database is down"),
        );
        let batch = testkit::records::batch(sub, source, epoch, vec![rec]);
        let r = self
            .http
            .post(format!("{}/api/v1/ingest", c.url))
            .bearer_auth(shipper_token(sub))
            .header("content-type", "application/msgpack")
            .body(schemas::to_msgpack(&batch).expect("encode"))
            .send()
            .await
            .expect("ingest");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The index in `cs` of the subscription's owner (member ids are
    /// `c<index>`): the collector that answers the API, once every
    /// collector in `alive` agrees on it.
    pub async fn owner_of(&self, cs: &[Collector], alive: &[usize]) -> usize {
        let id = until(
            "an owner of the subscription that every collector agrees on",
            Duration::from_secs(30),
            || async {
                let mut agreed: Option<String> = None;
                for &i in alive {
                    let (st, by, _) = self
                        .call(&cs[i], "GET", "/api/v1/notification-rules", None)
                        .await;
                    if st != 200 || by.is_empty() || agreed.as_ref().is_some_and(|a| *a != by) {
                        return None;
                    }
                    agreed = Some(by);
                }
                agreed
            },
        )
        .await;
        id.trim_start_matches('c').parse().expect("member id c<N>")
    }

    /// Waits until a collector other than `dead` answers the API from
    /// `via`; its index.
    pub async fn new_owner(&self, cs: &[Collector], via: usize, dead: usize) -> usize {
        let dead = format!("c{dead}");
        let id = until(
            "a new owner of the subscription",
            Duration::from_secs(30),
            || async {
                let (st, by, _) = self.call(&cs[via], "GET", "/api/v1/alerts", None).await;
                (st == 200 && !by.is_empty() && by != dead).then_some(by)
            },
        )
        .await;
        id.trim_start_matches('c').parse().expect("member id c<N>")
    }
}

//! The record every shipper benchmark uses: a ~243-byte (MessagePack) log
//! line of a pump run, numbered `i`, one minute old.

use schemas::{Body, Level, LogBody, Record};

pub fn record(i: u64) -> Record {
    Record {
        seq: 0,
        ts: schemas::time::now_nanos() - 60_000_000_000 + i as i64,
        source: "acme-prod".into(),
        subscription: "sub-1".into(),
        body: Body::Log(LogBody {
            level: Level::Info,
            target: "node::pipes::orders".into(),
            message: format!(
                "pump completed for pipe orders: 1200 entities read, 17 changed, 0 errors, run {i:010}, next run in 60 s"
            ),
            fields: [("pipe".to_string(), serde_json::json!("orders"))].into_iter().collect(),
        }),
    }
}

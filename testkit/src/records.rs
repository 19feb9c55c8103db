//! Records and ingest batches as shippers send them, for tests and
//! benchmarks of the collector and the notifier.

use schemas::{Body, EventType, ExecutionBody, IngestBatch, Level, LogBody, Record};

/// A record of `subscription` from `source` with this body.
pub fn record(subscription: &str, source: &str, seq: u64, ts: i64, body: Body) -> Record {
    Record {
        seq,
        ts,
        source: source.into(),
        subscription: subscription.into(),
        body,
    }
}

/// An INFO service log line of `target` (no fields).
pub fn log_body(target: &str, message: &str) -> Body {
    Body::Log(LogBody {
        level: Level::Info,
        target: target.into(),
        message: message.into(),
        fields: Default::default(),
    })
}

/// An execution event of `pipe`; a `pump-failed` one carries `reason` as
/// its `reason_why_stopped`.
pub fn execution_body(pipe: &str, event: EventType, reason: &str) -> Body {
    let mut b = ExecutionBody::new(pipe, event);
    if event == EventType::PumpFailed {
        b.reason_why_stopped = Some(reason.to_string());
    }
    Body::Execution(Box::new(b))
}

/// A batch of `records` of one source (`epoch` as the outbox names its
/// life; empty for none).
pub fn batch(subscription: &str, source: &str, epoch: &str, records: Vec<Record>) -> IngestBatch {
    IngestBatch {
        epoch: epoch.into(),
        source: source.into(),
        subscription: subscription.into(),
        records,
        dropped: 0,
    }
}

/// `n` bytes of pseudo-random letters and digits (the same every call):
/// text on which an expensive rule's regex cannot skip ahead and its DFA
/// blows up.
pub fn noise(n: usize) -> String {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            alphabet[(x % alphabet.len() as u64) as usize] as char
        })
        .collect()
}

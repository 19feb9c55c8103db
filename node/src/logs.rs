//! A `tracing` layer that turns the node's service logs into `log` records
//! for the outbox, next to the normal stdout output.
//!
//! The layer never blocks and never appends itself: [`Layer::on_event`] only
//! formats the event and `try_send`s it into a bounded channel; a task of
//! the node ([`LogReceiver`], drained by `crate::node`) appends batches to the
//! outbox. When the channel is full the line is dropped and counted
//! ([`LogReceiver::dropped`], exported as `sesam_node_log_records_dropped_total`).
//! Events of the drain task itself (target `node::logs`) and of the outbox's
//! writer (target `shipper::outbox::writer`, which only reports that the
//! outbox could not write) are not forwarded, so an outbox failure cannot
//! feed on its own error messages: with a full disk, every failed append
//! would otherwise log an error that becomes a record whose append fails
//! and logs again, a loop that burns a core and floods stdout.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use schemas::{Level, LogBody};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// The drain task's own target; its events stay on stdout only.
pub const DRAIN_TARGET: &str = "node::logs";

/// The outbox writer's target (write failures); its events stay on stdout only.
pub const OUTBOX_WRITER_TARGET: &str = "shipper::outbox::writer";

/// Forwards WARN and above (or INFO and above) events into a bounded channel.
#[derive(Debug, Clone)]
pub struct OutboxLogLayer {
    tx: mpsc::Sender<(i64, LogBody)>,
    max_verbosity: tracing::Level,
    dropped: Arc<AtomicU64>,
}

/// The receiving end: hand it to the node in [`crate::NodeConfig::log_records`].
#[derive(Debug)]
pub struct LogReceiver {
    pub(crate) rx: mpsc::Receiver<(i64, LogBody)>,
    pub(crate) dropped: Arc<AtomicU64>,
}

impl LogReceiver {
    /// Log lines dropped because the channel was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Which service logs become outbox records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutboxLogLevel {
    #[default]
    Warn,
    Info,
}

/// A layer and its receiver; `capacity` bounds the lines in flight.
pub fn outbox_log_layer(level: OutboxLogLevel, capacity: usize) -> (OutboxLogLayer, LogReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    let max_verbosity = match level {
        OutboxLogLevel::Warn => tracing::Level::WARN,
        OutboxLogLevel::Info => tracing::Level::INFO,
    };
    (
        OutboxLogLayer {
            tx,
            max_verbosity,
            dropped: dropped.clone(),
        },
        LogReceiver { rx, dropped },
    )
}

fn level(l: &tracing::Level) -> Level {
    match *l {
        tracing::Level::ERROR => Level::Error,
        tracing::Level::WARN => Level::Warn,
        tracing::Level::INFO => Level::Info,
        tracing::Level::DEBUG => Level::Debug,
        tracing::Level::TRACE => Level::Trace,
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: BTreeMap<String, Value>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.fields.insert(
                field.name().to_string(),
                Value::String(format!("{value:?}")),
            );
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields
                .insert(field.name().to_string(), Value::String(value.to_string()));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields
            .insert(field.name().to_string(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields
            .insert(field.name().to_string(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields
            .insert(field.name().to_string(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields
            .insert(field.name().to_string(), Value::from(value));
    }
}

impl<S: Subscriber> Layer<S> for OutboxLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        // tracing orders levels by verbosity: TRACE > ... > ERROR.
        if *meta.level() > self.max_verbosity
            || meta.target() == DRAIN_TARGET
            || meta.target() == OUTBOX_WRITER_TARGET
        {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let body = LogBody {
            level: level(meta.level()),
            target: meta.target().to_string(),
            message: f.message,
            fields: f.fields,
        };
        if self
            .tx
            .try_send((schemas::time::now_nanos(), body))
            .is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn forwards_warn_and_above_and_drops_when_full() {
        let (layer, mut rx) = outbox_log_layer(OutboxLogLevel::Warn, 2);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("not forwarded");
            tracing::warn!(pipe = "p1", count = 3u64, "first");
            tracing::error!("second");
            tracing::error!("third, dropped");
            tracing::warn!(target: "node::logs", "own line, never forwarded");
        });
        let (_, a) = rx.rx.try_recv().unwrap();
        assert_eq!((a.level, a.message.as_str()), (Level::Warn, "first"));
        assert_eq!(a.fields["pipe"], Value::from("p1"));
        assert_eq!(a.fields["count"], Value::from(3u64));
        let (_, b) = rx.rx.try_recv().unwrap();
        assert_eq!(b.message, "second");
        assert!(rx.rx.try_recv().is_err());
        assert_eq!(rx.dropped(), 1);
    }

    /// Regression: with a full disk, each failed group commit's error was
    /// forwarded into the outbox, failed again and logged again, in a loop.
    #[test]
    fn outbox_write_failures_are_not_fed_back_into_the_outbox() {
        let (layer, mut rx) = outbox_log_layer(OutboxLogLevel::Warn, 16);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "shipper::outbox::writer", "outbox: write batch failed");
            tracing::warn!(target: "shipper::outbox", "outbox: quarantined a corrupt record");
        });
        let (_, only) = rx.rx.try_recv().unwrap();
        assert_eq!(only.target, "shipper::outbox");
        assert!(rx.rx.try_recv().is_err());
    }
}

//! The record envelope that crosses every process boundary.
//!
//! On the wire a record is a map with six keys, `seq`, `ts`, `source`,
//! `subscription`, `kind` and `body`, in JSON or in MessagePack with named
//! fields (`rmp_serde::to_vec_named`), so that stored and shipped records are
//! self-describing and a field added later does not break an older reader.
//!
//! In Rust the `kind` is not a separate field: it is implied by the [`Body`]
//! variant, so a record can never carry a body that disagrees with its kind.
//! Serialization writes `kind` before `body`; deserialization accepts either
//! order (a body that arrives before its kind is buffered as JSON first).

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::body::{ConfigBody, ExecutionBody, HealthBody, LogBody, SystemBody};

/// What a record is about; the name of its body's variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A service log line of the node or a shipper.
    Log,
    /// An entity of a pipe's execution dataset.
    Execution,
    /// The result of a health check.
    Health,
    /// A (redacted) snapshot of the node's configuration.
    Config,
    /// A kernel log line or a line of a tailed file.
    System,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Log,
        Kind::Execution,
        Kind::Health,
        Kind::Config,
        Kind::System,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Log => "log",
            Kind::Execution => "execution",
            Kind::Health => "health",
            Kind::Config => "config",
            Kind::System => "system",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown kind {s:?}"))
    }
}

/// A kind-specific record body.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Log(LogBody),
    /// Boxed: an execution body is several times larger than the others.
    Execution(Box<ExecutionBody>),
    Health(HealthBody),
    Config(ConfigBody),
    System(SystemBody),
}

impl Body {
    pub fn kind(&self) -> Kind {
        match self {
            Body::Log(_) => Kind::Log,
            Body::Execution(_) => Kind::Execution,
            Body::Health(_) => Kind::Health,
            Body::Config(_) => Kind::Config,
            Body::System(_) => Kind::System,
        }
    }
}

/// One record: an event of a node or host, numbered by its outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Per-source sequence number assigned by the outbox; strictly increasing.
    /// Zero until the record has been appended to an outbox.
    pub seq: u64,
    /// Event time, Unix nanoseconds.
    pub ts: i64,
    /// The emitting node or host id, e.g. `acme-prod` or `host:vm-1`.
    pub source: String,
    /// Tenant id.
    pub subscription: String,
    /// The body; its variant is the record's kind.
    pub body: Body,
}

impl Record {
    pub fn kind(&self) -> Kind {
        self.body.kind()
    }
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Record", 6)?;
        s.serialize_field("seq", &self.seq)?;
        s.serialize_field("ts", &self.ts)?;
        s.serialize_field("source", &self.source)?;
        s.serialize_field("subscription", &self.subscription)?;
        s.serialize_field("kind", &self.kind())?;
        match &self.body {
            Body::Log(b) => s.serialize_field("body", b)?,
            Body::Execution(b) => s.serialize_field("body", b)?,
            Body::Health(b) => s.serialize_field("body", b)?,
            Body::Config(b) => s.serialize_field("body", b)?,
            Body::System(b) => s.serialize_field("body", b)?,
        }
        s.end()
    }
}

/// Deserializes the body for a kind that is already known, without buffering.
struct BodySeed(Kind);

impl<'de> DeserializeSeed<'de> for BodySeed {
    type Value = Body;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Body, D::Error> {
        Ok(match self.0 {
            Kind::Log => Body::Log(LogBody::deserialize(d)?),
            Kind::Execution => Body::Execution(Box::new(ExecutionBody::deserialize(d)?)),
            Kind::Health => Body::Health(HealthBody::deserialize(d)?),
            Kind::Config => Body::Config(ConfigBody::deserialize(d)?),
            Kind::System => Body::System(SystemBody::deserialize(d)?),
        })
    }
}

fn body_from_json<E: de::Error>(kind: Kind, value: serde_json::Value) -> Result<Body, E> {
    BodySeed(kind)
        .deserialize(value)
        .map_err(|e| E::custom(format_args!("invalid {kind} body: {e}")))
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RecordVisitor;

        impl<'de> Visitor<'de> for RecordVisitor {
            type Value = Record;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a record map with seq, ts, source, subscription, kind and body")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record, A::Error> {
                let mut seq = None;
                let mut ts = None;
                let mut source = None;
                let mut subscription = None;
                let mut kind: Option<Kind> = None;
                let mut body: Option<Body> = None;
                let mut early_body: Option<serde_json::Value> = None;
                while let Some(key) = map.next_key::<FieldName>()? {
                    match key {
                        FieldName::Seq => seq = Some(map.next_value()?),
                        FieldName::Ts => ts = Some(map.next_value()?),
                        FieldName::Source => source = Some(map.next_value()?),
                        FieldName::Subscription => subscription = Some(map.next_value()?),
                        FieldName::Kind => {
                            let k: Kind = map.next_value()?;
                            if let Some(v) = early_body.take() {
                                body = Some(body_from_json(k, v)?);
                            }
                            kind = Some(k);
                        }
                        FieldName::Body => match kind {
                            Some(k) => body = Some(map.next_value_seed(BodySeed(k))?),
                            None => early_body = Some(map.next_value()?),
                        },
                        FieldName::Other => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                if kind.is_none() {
                    return Err(de::Error::missing_field("kind"));
                }
                Ok(Record {
                    seq: seq.ok_or_else(|| de::Error::missing_field("seq"))?,
                    ts: ts.ok_or_else(|| de::Error::missing_field("ts"))?,
                    source: source.ok_or_else(|| de::Error::missing_field("source"))?,
                    subscription: subscription
                        .ok_or_else(|| de::Error::missing_field("subscription"))?,
                    body: body.ok_or_else(|| de::Error::missing_field("body"))?,
                })
            }
        }

        deserializer.deserialize_struct(
            "Record",
            &["seq", "ts", "source", "subscription", "kind", "body"],
            RecordVisitor,
        )
    }
}

enum FieldName {
    Seq,
    Ts,
    Source,
    Subscription,
    Kind,
    Body,
    Other,
}

impl<'de> Deserialize<'de> for FieldName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = FieldName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldName, E> {
                Ok(match v {
                    "seq" => FieldName::Seq,
                    "ts" => FieldName::Ts,
                    "source" => FieldName::Source,
                    "subscription" => FieldName::Subscription,
                    "kind" => FieldName::Kind,
                    "body" => FieldName::Body,
                    _ => FieldName::Other,
                })
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<FieldName, E> {
                match std::str::from_utf8(v) {
                    Ok(s) => self.visit_str(s),
                    Err(_) => Ok(FieldName::Other),
                }
            }
        }
        d.deserialize_identifier(V)
    }
}

/// The JSON Schema shape of a record: the envelope plus a `kind`-tagged body.
/// Only used to generate `schemas/json/record.json`; [`Record`]'s hand-written
/// serde impls produce exactly this shape (tested against sample records).
#[derive(JsonSchema)]
#[schemars(
    title = "Record",
    description = "A record: an event of a node or host, numbered by its outbox."
)]
#[allow(dead_code)]
struct RecordShape {
    /// Per-source sequence number assigned by the outbox; strictly increasing.
    seq: u64,
    /// Event time, Unix nanoseconds.
    ts: i64,
    /// The emitting node or host id, e.g. `acme-prod` or `host:vm-1`.
    source: String,
    /// Tenant id.
    subscription: String,
    #[serde(flatten)]
    body: BodyShape,
}

#[derive(JsonSchema)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
#[allow(dead_code, clippy::large_enum_variant)]
enum BodyShape {
    Log(LogBody),
    Execution(ExecutionBody),
    Health(HealthBody),
    Config(ConfigBody),
    System(SystemBody),
}

impl JsonSchema for Record {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Record".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        RecordShape::json_schema(generator)
    }
}

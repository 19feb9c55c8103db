//! OTLP/HTTP logs export (`POST <endpoint>/v1/logs`, protobuf), so records
//! can go to any OpenTelemetry Collector, Loki's OTLP endpoint, or others.
//!
//! Mapping: one `ResourceLogs` per request with resource attributes
//! `service.name`, `host.name` (the record's source),
//! `sesam.subscription` and `sesam.outbox.epoch` (the outbox epoch: with
//! `sesam.seq` it identifies a record uniquely, for receivers that dedupe); each record is a `LogRecord` with `time_unix_nano`
//! = the record's `ts`, a severity derived from its level / priority / event
//! type, the message (log, system) or the JSON body (others) as body, and
//! attributes `sesam.kind`, `sesam.seq` plus the record's key fields
//! (`pipe`, `event_type`, `target`, `file`, `facility`, log fields).

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use schemas::{Body, EventType, HealthStatus, Level, Record};

use super::collector::EndpointError;
use super::{Endpoint, SendOutcome};

#[derive(Debug, Clone)]
pub struct OtlpEndpoint {
    client: reqwest::Client,
    url: String,
    service_name: String,
}

impl OtlpEndpoint {
    /// `endpoint` is the OTLP/HTTP base (`http://otel:4318`) or the full
    /// logs URL (ending in `/v1/logs`). `token`, if any, is sent as a bearer.
    pub fn new(
        endpoint: &str,
        token: Option<&str>,
        service_name: &str,
        timeout: Duration,
    ) -> Result<Self, EndpointError> {
        super::collector::check_url(endpoint)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        if let Some(t) = token {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", t.trim()))
                .map_err(|_| EndpointError::BadToken)?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .build()?;
        let base = endpoint.trim_end_matches('/');
        let url = if base.ends_with("/v1/logs") {
            base.to_string()
        } else {
            format!("{base}/v1/logs")
        };
        Ok(OtlpEndpoint {
            client,
            url,
            service_name: service_name.to_string(),
        })
    }
}

fn s(v: impl Into<String>) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(v.into())),
    })
}

fn kv(key: &str, value: Option<AnyValue>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value,
        ..Default::default()
    }
}

fn json_any(v: &serde_json::Value) -> Option<AnyValue> {
    let value = match v {
        serde_json::Value::Bool(b) => any_value::Value::BoolValue(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => any_value::Value::IntValue(i),
            None => any_value::Value::DoubleValue(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(x) => any_value::Value::StringValue(x.clone()),
        other => any_value::Value::StringValue(other.to_string()),
    };
    Some(AnyValue { value: Some(value) })
}

/// OTLP severity (number, text) of a record.
fn severity(r: &Record) -> (i32, &'static str) {
    const DEBUG: (i32, &str) = (5, "DEBUG");
    const INFO: (i32, &str) = (9, "INFO");
    const WARN: (i32, &str) = (13, "WARN");
    const ERROR: (i32, &str) = (17, "ERROR");
    match &r.body {
        Body::Log(l) => match l.level {
            Level::Trace => (1, "TRACE"),
            Level::Debug => DEBUG,
            Level::Info => INFO,
            Level::Warn => WARN,
            Level::Error => ERROR,
        },
        Body::System(s) => match s.priority {
            Some(0..=2) => (21, "FATAL"),
            Some(3) => ERROR,
            Some(4) => WARN,
            Some(7) => DEBUG,
            _ => INFO,
        },
        Body::Execution(e) => match e.event_type {
            EventType::PumpFailed | EventType::ReadError | EventType::WriteError => ERROR,
            _ => INFO,
        },
        Body::Health(h) => match h.status {
            HealthStatus::Ok => INFO,
            HealthStatus::Degraded => WARN,
            HealthStatus::Failed => ERROR,
        },
        Body::Config(_) => INFO,
    }
}

/// Maps one (redacted) record to an OTLP log record.
pub fn log_record(r: &Record, observed: u64) -> LogRecord {
    let (number, text) = severity(r);
    let mut attributes = vec![
        kv("sesam.kind", s(r.kind().as_str())),
        kv(
            "sesam.seq",
            Some(AnyValue {
                value: Some(any_value::Value::IntValue(r.seq as i64)),
            }),
        ),
    ];
    let body = match &r.body {
        Body::Log(l) => {
            attributes.push(kv("log.target", s(l.target.clone())));
            for (k, v) in &l.fields {
                attributes.push(kv(k, json_any(v)));
            }
            s(l.message.clone())
        }
        Body::System(x) => {
            if let Some(f) = &x.file {
                attributes.push(kv("log.file.path", s(f.clone())));
            }
            if let Some(f) = &x.facility {
                attributes.push(kv("syslog.facility", s(f.clone())));
            }
            s(x.message.clone())
        }
        Body::Execution(e) => {
            attributes.push(kv("sesam.pipe", s(e.pipe.clone())));
            attributes.push(kv("sesam.event_type", s(e.event_type.as_str())));
            s(serde_json::to_string(e).unwrap_or_default())
        }
        Body::Health(h) => s(serde_json::to_string(h).unwrap_or_default()),
        Body::Config(c) => s(serde_json::to_string(c).unwrap_or_default()),
    };
    LogRecord {
        time_unix_nano: r.ts.max(0) as u64,
        observed_time_unix_nano: observed,
        severity_number: number,
        severity_text: text.to_string(),
        body,
        attributes,
        ..Default::default()
    }
}

/// Builds the export request for records of one source and subscription
/// from the outbox of epoch `epoch`.
pub fn export_request(
    epoch: &str,
    records: &[Record],
    service_name: &str,
) -> ExportLogsServiceRequest {
    let observed = schemas::time::now_nanos().max(0) as u64;
    let (source, subscription) = records
        .first()
        .map(|r| (r.source.as_str(), r.subscription.as_str()))
        .unwrap_or_default();
    let mut resource = resource_logs(epoch, source, subscription, service_name);
    resource.scope_logs[0].log_records = records.iter().map(|r| log_record(r, observed)).collect();
    ExportLogsServiceRequest {
        resource_logs: vec![resource],
    }
}

/// The `ResourceLogs` of a request, with one `ScopeLogs` and no records.
fn resource_logs(
    epoch: &str,
    source: &str,
    subscription: &str,
    service_name: &str,
) -> ResourceLogs {
    ResourceLogs {
        resource: Some(Resource {
            attributes: vec![
                kv("service.name", s(service_name)),
                kv("host.name", s(source)),
                kv("sesam.subscription", s(subscription)),
                kv("sesam.outbox.epoch", s(epoch)),
            ],
            ..Default::default()
        }),
        scope_logs: vec![ScopeLogs {
            scope: Some(InstrumentationScope {
                name: "sesam-shipper".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Field numbers of the messages assembled by hand from encoded parts.
const REQUEST_RESOURCE_LOGS: u32 = 1;
const RESOURCE_LOGS_SCOPE_LOGS: u32 = 2;
const SCOPE_LOGS_LOG_RECORDS: u32 = 2;

/// Appends the key and length of a length-delimited field `tag` of `len`
/// bytes (the bytes follow).
fn put_field_head(tag: u32, len: usize, out: &mut Vec<u8>) {
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(len as u64, out);
}

/// Bytes of a field's key and length (tag < 16) before `len` bytes.
fn field_head_len(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64)
}

/// One record as an element of `ScopeLogs.log_records` (key included), so
/// that records encoded one at a time concatenate into the message.
pub fn encode_log_record(r: &Record, out: &mut Vec<u8>) -> Result<(), String> {
    let observed = schemas::time::now_nanos().max(0) as u64;
    let lr = log_record(r, observed);
    prost::encoding::encode_key(
        SCOPE_LOGS_LOG_RECORDS,
        prost::encoding::WireType::LengthDelimited,
        out,
    );
    lr.encode_length_delimited(out).map_err(|e| e.to_string())
}

/// The export request around records encoded by [`encode_log_record`]:
/// the same message [`export_request`] builds, assembled from its parts
/// (protobuf lets repeated fields and fields in any order concatenate).
pub fn export_body(
    epoch: &str,
    source: &str,
    subscription: &str,
    records: &[u8],
    service_name: &str,
) -> Vec<u8> {
    let mut resource = resource_logs(epoch, source, subscription, service_name);
    let scope = resource.scope_logs.remove(0).encode_to_vec();
    let resource = resource.encode_to_vec();
    // Written once into a buffer of the exact size: the records are
    // copied once, not once per level of nesting.
    let scope_len = scope.len() + records.len();
    let rl_len = resource.len() + field_head_len(scope_len) + scope_len;
    let mut out = Vec::with_capacity(field_head_len(rl_len) + rl_len);
    put_field_head(REQUEST_RESOURCE_LOGS, rl_len, &mut out);
    out.extend_from_slice(&resource);
    put_field_head(RESOURCE_LOGS_SCOPE_LOGS, scope_len, &mut out);
    out.extend_from_slice(&scope);
    out.extend_from_slice(records);
    debug_assert_eq!(out.len(), out.capacity());
    out
}

impl Endpoint for OtlpEndpoint {
    fn compatible(&self, a: &Record, b: &Record) -> bool {
        a.source == b.source && a.subscription == b.subscription
    }

    fn encode_record(&self, record: &Record, out: &mut Vec<u8>) -> Result<(), String> {
        encode_log_record(record, out)
    }

    fn finish_body(
        &self,
        epoch: &str,
        source: &str,
        subscription: &str,
        _count: usize,
        records: &mut Vec<u8>,
        _dropped: u64,
    ) -> Result<Vec<u8>, String> {
        Ok(export_body(
            epoch,
            source,
            subscription,
            records,
            &self.service_name,
        ))
    }

    async fn send(&self, body: Bytes) -> SendOutcome {
        let (status, after, bytes) =
            match super::collector::post(&self.client, &self.url, body).await {
                Ok(answer) => answer,
                Err(outcome) => return outcome,
            };
        if status.is_success() {
            // An OTLP answer is an ExportLogsServiceResponse (possibly empty).
            return match ExportLogsServiceResponse::decode(bytes.as_ref()) {
                Ok(_) => SendOutcome::Delivered,
                Err(_) => SendOutcome::Retry {
                    reason: "garbage_answer",
                    after: None,
                    message: None,
                },
            };
        }
        super::collector::classify(status, after, &String::from_utf8_lossy(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{ExecutionBody, LogBody};

    #[test]
    fn records_map_to_otlp_log_records_and_round_trip() {
        let mut e = ExecutionBody::new("orders", EventType::PumpFailed);
        e.reason_why_stopped = Some("boom".into());
        let records = vec![
            Record {
                seq: 7,
                ts: 1_700_000_000_000_000_000,
                source: "acme".into(),
                subscription: "sub".into(),
                body: Body::Log(LogBody {
                    level: Level::Warn,
                    target: "node".into(),
                    message: "slow".into(),
                    fields: [("pipe".to_string(), serde_json::json!("orders"))]
                        .into_iter()
                        .collect(),
                }),
            },
            Record {
                seq: 8,
                ts: 1_700_000_000_000_000_001,
                source: "acme".into(),
                subscription: "sub".into(),
                body: Body::Execution(Box::new(e)),
            },
        ];
        let bytes = export_request("0123abcd", &records, "sesam-node").encode_to_vec();
        // Assembled from records encoded one at a time: the same message.
        let mut parts = Vec::new();
        for r in &records {
            encode_log_record(r, &mut parts).unwrap();
        }
        let assembled = ExportLogsServiceRequest::decode(
            export_body("0123abcd", "acme", "sub", &parts, "sesam-node").as_slice(),
        )
        .unwrap();
        let mut whole = ExportLogsServiceRequest::decode(bytes.as_slice()).unwrap();
        let mut assembled = assembled;
        for req in [&mut whole, &mut assembled] {
            for lr in &mut req.resource_logs[0].scope_logs[0].log_records {
                lr.observed_time_unix_nano = 0;
            }
        }
        assert_eq!(assembled, whole);
        let back = ExportLogsServiceRequest::decode(bytes.as_slice()).unwrap();
        let rl = &back.resource_logs[0];
        let attrs: Vec<(String, String)> = rl
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(
                |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => (kv.key.clone(), s.clone()),
                    _ => (kv.key.clone(), String::new()),
                },
            )
            .collect();
        assert!(attrs.contains(&("service.name".into(), "sesam-node".into())));
        assert!(attrs.contains(&("host.name".into(), "acme".into())));
        assert!(attrs.contains(&("sesam.subscription".into(), "sub".into())));
        assert!(attrs.contains(&("sesam.outbox.epoch".into(), "0123abcd".into())));
        let logs = &rl.scope_logs[0].log_records;
        assert_eq!(logs.len(), 2);
        assert_eq!(logs[0].time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(
            (logs[0].severity_number, logs[0].severity_text.as_str()),
            (13, "WARN")
        );
        assert_eq!(logs[1].severity_number, 17);
        match logs[1].body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => {
                assert!(s.contains("\"reason_why_stopped\":\"boom\""))
            }
            other => panic!("{other:?}"),
        }
        assert!(logs[1]
            .attributes
            .iter()
            .any(|kv| kv.key == "sesam.event_type"));
    }
}

//! Property: secrets planted in random places of random records never
//! appear, as any byte sequence, in the encoded ingest batch that would be
//! sent to the collector (decompressed), nor in the OTLP request.

use proptest::prelude::*;
use prost::Message;
use schemas::{
    Body, ConfigBody, EventType, ExecutionBody, HealthBody, HealthCheck, HealthStatus, Level,
    LogBody, Record, SystemBody,
};
use serde_json::{json, Map, Value};
use shipper::deliver::collector::encode_ingest_body;
use shipper::deliver::otlp::export_request;
use shipper::redact::{RedactConfig, Redactor};

/// Where a secret is planted.
#[derive(Debug, Clone)]
enum Place {
    /// Under a sensitive key at some depth of log fields.
    SensitiveKey { key: &'static str, depth: usize },
    /// As the password of a URL inside a message.
    UrlPassword,
    /// As a bearer token inside a traceback.
    BearerInTraceback,
    /// A registered node secret anywhere in free text.
    RegisteredInText,
    /// A registered node secret as a map key.
    RegisteredAsKey,
    /// Inside the exception entity of a pump-failed event.
    ExceptionEntity,
    /// Inside embedded entities of a config snapshot.
    EmbeddedEntity,
    /// In the config of a system, under a sensitive key.
    ConfigSecretKey,
    /// In a health check detail, as a registered secret.
    HealthDetail,
    /// A registered secret in a kernel line.
    SystemLine,
}

fn place() -> impl Strategy<Value = Place> {
    prop_oneof![
        (
            prop::sample::select(vec![
                "password",
                "Api-Key",
                "client_secret",
                "AUTHORIZATION",
                "private_key",
                "token"
            ]),
            0usize..4
        )
            .prop_map(|(key, depth)| Place::SensitiveKey { key, depth }),
        Just(Place::UrlPassword),
        Just(Place::BearerInTraceback),
        Just(Place::RegisteredInText),
        Just(Place::RegisteredAsKey),
        Just(Place::ExceptionEntity),
        Just(Place::EmbeddedEntity),
        Just(Place::ConfigSecretKey),
        Just(Place::HealthDetail),
        Just(Place::SystemLine),
    ]
}

/// Secrets: 10-40 characters of base64url-ish text, always with a digit and
/// a letter so they look like real credentials.
fn secret() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_\\-]{8,38}".prop_map(|s| format!("Q7{s}"))
}

fn nest(depth: usize, key: &str, secret: &str) -> Value {
    let mut v = json!({ key: secret });
    for i in 0..depth {
        v = json!({ format!("level{i}"): v, "other": [1, "x"] });
    }
    v
}

fn base(body: Body) -> Record {
    Record {
        seq: 1,
        ts: 1,
        source: "node-a".into(),
        subscription: "sub".into(),
        body,
    }
}

fn plant(place: &Place, secret: &str, noise: &str) -> Record {
    match place {
        Place::SensitiveKey { key, depth } => base(Body::Log(LogBody {
            level: Level::Info,
            target: "t".into(),
            message: format!("config loaded {noise}"),
            fields: [("cfg".to_string(), nest(*depth, key, secret))]
                .into_iter()
                .collect(),
        })),
        Place::UrlPassword => base(Body::Log(LogBody {
            level: Level::Error,
            target: "http".into(),
            message: format!("GET https://svc-user:{secret}@api.example.com/v1 failed {noise}"),
            fields: Default::default(),
        })),
        Place::BearerInTraceback => {
            let mut e = ExecutionBody::new("p", EventType::PumpFailed);
            e.traceback = Some(format!(
                "{noise}\n  headers: Authorization: Bearer {secret}\n"
            ));
            base(Body::Execution(Box::new(e)))
        }
        Place::RegisteredInText => base(Body::Log(LogBody {
            level: Level::Warn,
            target: "t".into(),
            message: format!("{noise}{secret}{noise}"),
            fields: Default::default(),
        })),
        Place::RegisteredAsKey => {
            let mut m = Map::new();
            m.insert(secret.to_string(), json!(noise));
            base(Body::Log(LogBody {
                level: Level::Info,
                target: "t".into(),
                message: "m".into(),
                fields: [("map".to_string(), Value::Object(m))]
                    .into_iter()
                    .collect(),
            }))
        }
        Place::ExceptionEntity => {
            let mut e = ExecutionBody::new("p", EventType::PumpFailed);
            e.exception_entity =
                Some(json!({"_id": "x", "value": secret, "nested": {"deep": secret}}));
            base(Body::Execution(Box::new(e)))
        }
        Place::EmbeddedEntity => base(Body::Config(ConfigBody {
            hash: "h".into(),
            config: vec![json!({"_id": "p", "type": "pipe",
                "source": {"type": "embedded", "entities": [{"_id": "1", "data": secret}]}})],
        })),
        Place::ConfigSecretKey => base(Body::Config(ConfigBody {
            hash: "h".into(),
            config: vec![
                json!({"_id": "crm", "type": "system:url", "url_pattern": "https://crm/",
                "headers": {"X-Api-Key": secret}, "password": secret}),
            ],
        })),
        Place::HealthDetail => base(Body::Health(HealthBody {
            status: HealthStatus::Degraded,
            checks: vec![HealthCheck {
                name: "db".into(),
                status: HealthStatus::Failed,
                detail: Some(format!("login {secret} refused")),
            }],
        })),
        Place::SystemLine => base(Body::System(SystemBody {
            facility: Some("kern".into()),
            priority: Some(3),
            message: format!("audit: key={secret}"),
            file: None,
        })),
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn no_planted_secret_survives_encoding(
        planted in prop::collection::vec((place(), secret()), 1..8),
        noise in "[a-z ]{0,20}",
    ) {
        let redactor = Redactor::new(&RedactConfig::default()).unwrap();
        // The node registers its resolved secrets with the shipper.
        redactor.set_secrets(planted.iter().map(|(_, s)| s.clone()));
        let mut records: Vec<Record> = planted.iter().map(|(p, s)| plant(p, s, &noise)).collect();
        for r in &mut records {
            redactor.redact(r);
        }
        let compressed = encode_ingest_body(&records, 0, 3).unwrap();
        let batch = zstd::bulk::decompress(&compressed, 64 << 20).unwrap();
        let otlp = export_request(&records, "sesam-node").encode_to_vec();
        for (place, s) in &planted {
            prop_assert!(!contains(&batch, s), "secret from {:?} in ingest batch", place);
            prop_assert!(!contains(&otlp, s), "secret from {:?} in OTLP request", place);
        }
    }

    #[test]
    fn unregistered_secrets_in_structured_places_are_caught_too(
        depth in 0usize..5,
        key in prop::sample::select(vec!["password", "secret", "apiKey", "Authorization", "privateKey", "access_token"]),
        s in secret(),
    ) {
        // Without registering: key patterns and built-in value patterns alone.
        let redactor = Redactor::new(&RedactConfig::default()).unwrap();
        let mut records = vec![
            plant(&Place::SensitiveKey { key: "password", depth }, &s, ""),
            plant(&Place::UrlPassword, &s, ""),
            plant(&Place::BearerInTraceback, &s, ""),
            plant(&Place::ExceptionEntity, &s, ""),
            plant(&Place::EmbeddedEntity, &s, ""),
            base(Body::Log(LogBody { level: Level::Info, target: "t".into(), message: "m".into(),
                fields: [("x".to_string(), nest(depth, key, &s))].into_iter().collect() })),
        ];
        for r in &mut records {
            redactor.redact(r);
        }
        let batch = zstd::bulk::decompress(&encode_ingest_body(&records, 0, 3).unwrap(), 64 << 20).unwrap();
        prop_assert!(!contains(&batch, &s));
    }
}

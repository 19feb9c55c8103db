//! Property: secrets planted in random places of random records never
//! appear, as any byte sequence, in the encoded ingest batch that would be
//! sent to the collector (decompressed), nor in the OTLP request: neither
//! structured secrets (sensitive keys, registered values) nor the shapes
//! secrets take in free text (`password=...`, `Authorization: Basic ...`,
//! `?api_key=...`, `postgres://user:p@ss@db`, GitHub / Slack / Stripe /
//! Google tokens), planted in file lines, log messages, log fields and URLs.

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
        let compressed = encode_ingest_body("e1", &records, 0, 3).unwrap();
        let batch = zstd::bulk::decompress(&compressed, 64 << 20).unwrap();
        let otlp = export_request("e1", &records, "sesam-node").encode_to_vec();
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
        let batch = zstd::bulk::decompress(&encode_ingest_body("e1", &records, 0, 3).unwrap(), 64 << 20).unwrap();
        prop_assert!(!contains(&batch, &s));
    }
}

/// How a secret is written in free text.
#[derive(Debug, Clone, Copy)]
enum Shape {
    PasswordEquals,
    PasswordColon,
    JsonPassword,
    QueryApiKey,
    BasicAuth,
    TokenAuth,
    XApiKey,
    AwsSecretKey,
    UrlPasswordWithAt,
    GitHub(&'static str),
    Slack(char),
    Stripe(&'static str),
    GoogleApiKey,
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::PasswordEquals),
        Just(Shape::PasswordColon),
        Just(Shape::JsonPassword),
        Just(Shape::QueryApiKey),
        Just(Shape::BasicAuth),
        Just(Shape::TokenAuth),
        Just(Shape::XApiKey),
        Just(Shape::AwsSecretKey),
        Just(Shape::UrlPasswordWithAt),
        prop::sample::select(vec!["ghp_", "gho_", "ghs_", "github_pat_"]).prop_map(Shape::GitHub),
        prop::sample::select(vec!['b', 'p', 'a', 'r', 's']).prop_map(Shape::Slack),
        prop::sample::select(vec!["sk_live_", "rk_live_", "sk_test_"]).prop_map(Shape::Stripe),
        Just(Shape::GoogleApiKey),
    ]
}

/// Where the text holding the secret is planted.
#[derive(Debug, Clone, Copy)]
enum Spot {
    FileLine,
    LogMessage,
    LogField,
    UrlField,
    Traceback,
}

fn spot() -> impl Strategy<Value = Spot> {
    prop_oneof![
        Just(Spot::FileLine),
        Just(Spot::LogMessage),
        Just(Spot::LogField),
        Just(Spot::UrlField),
        Just(Spot::Traceback),
    ]
}

/// The text, and the strings that must not leave (the secret, and for Basic
/// credentials their base64 form).
fn write(shape: Shape, secret: &str) -> (String, Vec<String>) {
    use base64::Engine;
    let mut must_not_leave = vec![secret.to_string()];
    let text = match shape {
        Shape::PasswordEquals => format!("login failed for bob password={secret} retrying"),
        Shape::PasswordColon => format!("DB_PASSWORD: {secret}"),
        Shape::JsonPassword => format!(r#"body {{"user": "bob", "password": "{secret}", "n": 1}}"#),
        Shape::QueryApiKey => {
            format!("GET https://api.example.com/v1/charges?api_key=sk_live_{secret}&limit=10 200")
        }
        Shape::BasicAuth => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(format!("admin:{secret}"));
            must_not_leave.push(b64.clone());
            format!("request headers: Authorization: Basic {b64}")
        }
        Shape::TokenAuth => {
            format!("curl -H 'Authorization: token {secret}' https://api.github.com/user")
        }
        Shape::XApiKey => format!("sending X-Api-Key: {secret} to upstream"),
        Shape::AwsSecretKey => format!("[default]\taws_secret_access_key = {secret}"),
        Shape::UrlPasswordWithAt => {
            format!("connect postgres://admin:p@{secret}@db.internal:5432/app failed")
        }
        Shape::GitHub(prefix) => format!("pushing with {prefix}{secret} now"),
        Shape::Slack(kind) => format!("slack client xox{kind}-1234567890-{secret} ready"),
        Shape::Stripe(prefix) => format!("stripe key {prefix}{secret} loaded"),
        Shape::GoogleApiKey => format!(
            "maps key=AIza{} in use",
            &format!("{secret}{}", "Q".repeat(35))[..35]
        ),
    };
    if let Shape::GoogleApiKey = shape {
        must_not_leave = vec![format!("{secret}{}", "Q".repeat(35))[..35].to_string()];
    }
    (text, must_not_leave)
}

fn put(spot: Spot, text: String) -> Record {
    match spot {
        Spot::FileLine => base(Body::System(SystemBody {
            facility: None,
            priority: None,
            message: text,
            file: Some("/var/log/app/app.log".into()),
        })),
        Spot::LogMessage => base(Body::Log(LogBody {
            level: Level::Warn,
            target: "app".into(),
            message: text,
            fields: Default::default(),
        })),
        Spot::LogField => base(Body::Log(LogBody {
            level: Level::Info,
            target: "app".into(),
            message: "request".into(),
            fields: [("detail".to_string(), json!(text))].into_iter().collect(),
        })),
        Spot::UrlField => base(Body::Log(LogBody {
            level: Level::Info,
            target: "http".into(),
            message: "request".into(),
            fields: [("url".to_string(), json!({ "target": text }))]
                .into_iter()
                .collect(),
        })),
        Spot::Traceback => {
            let mut e = ExecutionBody::new("p", EventType::PumpFailed);
            e.traceback = Some(format!("Traceback:\n  File x.py\n{text}\n"));
            base(Body::Execution(Box::new(e)))
        }
    }
}

/// Whether any 12-byte window of `secret` (or all of a shorter one) occurs.
fn leaks(haystack: &[u8], secret: &str) -> Option<String> {
    let w = secret.len().min(12);
    (0..=secret.len() - w)
        .map(|i| &secret[i..i + w])
        .find(|frag| contains(haystack, frag))
        .map(String::from)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn free_text_secret_shapes_never_leave(
        planted in prop::collection::vec((shape(), spot(), "[A-Za-z0-9]{20,40}"), 1..6),
    ) {
        let redactor = Redactor::new(&RedactConfig::default()).unwrap();
        let mut records = Vec::new();
        let mut secrets = Vec::new();
        for (shape, spot, secret) in &planted {
            let (text, must_not_leave) = write(*shape, secret);
            records.push(put(*spot, text));
            secrets.extend(must_not_leave.into_iter().map(|s| (*shape, *spot, s)));
        }
        for r in &mut records {
            redactor.redact(r);
        }
        let batch = zstd::bulk::decompress(&encode_ingest_body("e1", &records, 0, 3).unwrap(), 64 << 20).unwrap();
        let otlp = export_request("e1", &records, "sesam-shipper").encode_to_vec();
        for (shape, spot, s) in &secrets {
            prop_assert!(leaks(&batch, s).is_none(), "{:?} in {:?}: {:?} leaked in the ingest batch: {}", shape, spot, leaks(&batch, s), String::from_utf8_lossy(&batch));
            prop_assert!(leaks(&otlp, s).is_none(), "{:?} in {:?}: {:?} leaked in the OTLP request", shape, spot, leaks(&otlp, s));
        }
    }
}

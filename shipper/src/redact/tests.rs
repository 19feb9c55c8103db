use schemas::{Body, ConfigBody, EventType, ExecutionBody, Level, LogBody, Record};
use serde_json::json;

use super::*;

fn redactor() -> Redactor {
    Redactor::new(&RedactConfig::default()).unwrap()
}

fn scrubbed(r: &Redactor, s: &str) -> String {
    let mut s = s.to_string();
    r.scrub(&mut s);
    s
}

fn record(body: Body) -> Record {
    Record {
        seq: 1,
        ts: 1,
        source: "node".into(),
        subscription: "sub".into(),
        body,
    }
}

#[test]
fn builtin_value_patterns_are_replaced() {
    let r = redactor();
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    let cases = [
        ("Authorization: Bearer abc.DEF-123_x", "abc.DEF-123_x"),
        (&*format!("id {jwt} end"), jwt),
        ("GET https://alice:s3cr3tpw@db.example.com/x", "s3cr3tpw"),
        ("key AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE"),
        ("card 4111 1111 1111 1111 charged", "4111 1111 1111 1111"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
            "MIIEowIBAAKCAQEA",
        ),
    ];
    for (input, secret) in cases {
        let out = scrubbed(&r, input);
        assert!(!out.contains(secret), "{input:?} -> {out:?}");
        assert!(out.contains(MASK), "{out}");
    }
    assert!(r.count("jwt") >= 1 && r.count("card_number") == 1 && r.count("url_credentials") == 1);
}

#[test]
fn numbers_that_fail_luhn_and_plain_text_are_kept() {
    let r = redactor();
    for s in [
        "order 4111 1111 1111 1112",
        "run 1234567890123 took 3 s",
        "plain words, no secrets",
    ] {
        assert_eq!(scrubbed(&r, s), s);
    }
}

#[test]
fn sensitive_keys_are_masked_at_any_depth_and_removed_fields_vanish() {
    let r = redactor();
    let mut v = json!({
        "name": "crm",
        "headers": {"Authorization": "Basic dXNlcjpwdw==", "X-Api-Key": "k-123456"},
        "nested": [{"db": {"Password": "hunter22", "user": "bob"}}],
        "entity": {"card": "x"},
        "client_secret": {"a": 1},
    });
    r.redact_value(&mut v);
    let text = v.to_string();
    for secret in ["dXNlcjpwdw==", "k-123456", "hunter22", "card"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert_eq!(v["nested"][0]["db"]["user"], "bob");
    assert_eq!(v["client_secret"], MASK);
    assert!(v.get("entity").is_none());
}

#[test]
fn embedded_entities_of_config_snapshots_are_dropped() {
    let r = redactor();
    let mut rec = record(Body::Config(ConfigBody {
        hash: "h".into(),
        config: vec![json!({
            "_id": "p", "type": "pipe",
            "source": {"type": "embedded", "entities": [{"_id": "1", "ssn": "010190-12345"}]},
            "sink": {"type": "json", "system": "crm"},
        })],
    }));
    r.redact(&mut rec);
    let text = serde_json::to_string(&rec).unwrap();
    assert!(!text.contains("010190-12345"), "{text}");
    assert!(text.contains("\"system\":\"crm\""));
    assert_eq!(r.count("embedded_entities"), 1);
}

#[test]
fn execution_events_lose_their_entities_and_secret_text() {
    let r = redactor();
    r.set_secrets(["topsecret-value", "ab"]);
    let mut e = ExecutionBody::new("orders", EventType::PumpFailed);
    e.exception_entity = Some(json!({"_id": "o1", "cpr": "0101901234"}));
    e.traceback = Some("connect with topsecret-value failed".into());
    e.reason_why_stopped = Some("Bearer zzz.yyy.xxx rejected".into());
    let mut rec = record(Body::Execution(Box::new(e)));
    r.redact(&mut rec);
    let text = serde_json::to_string(&rec).unwrap();
    assert!(
        !text.contains("0101901234")
            && !text.contains("topsecret-value")
            && !text.contains("zzz.yyy"),
        "{text}"
    );
    assert_eq!(r.count("secret_value"), 1);
}

#[test]
fn short_secrets_are_not_scrubbed_as_literals() {
    let r = redactor();
    r.set_secrets(["ab"]);
    assert_eq!(scrubbed(&r, "about tabs"), "about tabs");
}

#[test]
fn hash_replacement_is_keyed_and_stable() {
    let config = RedactConfig {
        replacement: Replacement::Hash,
        hash_key: Some("k1".into()),
        ..RedactConfig::default()
    };
    let r = Redactor::new(&config).unwrap();
    let a = scrubbed(&r, "AKIAIOSFODNN7EXAMPLE");
    let b = scrubbed(&r, "AKIAIOSFODNN7EXAMPLE");
    let c = scrubbed(&r, "AKIAIOSFODNN7EXAMPLF");
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(
        a.starts_with("[REDACTED:") && a.len() == "[REDACTED:]".len() + 16,
        "{a}"
    );
    let other_key = Redactor::new(&RedactConfig {
        hash_key: Some("k2".into()),
        ..config
    })
    .unwrap();
    assert_ne!(scrubbed(&other_key, "AKIAIOSFODNN7EXAMPLE"), a);
}

#[test]
fn user_patterns_apply_and_bad_ones_name_the_rule() {
    let config = RedactConfig {
        patterns: vec![UserPattern {
            name: "employee_id".into(),
            regex: r"EMP-\d{6}".into(),
        }],
        ..RedactConfig::default()
    };
    let r = Redactor::new(&config).unwrap();
    assert_eq!(scrubbed(&r, "by EMP-123456 today"), "by [REDACTED] today");
    assert_eq!(r.count("employee_id"), 1);

    let bad = RedactConfig {
        patterns: vec![UserPattern {
            name: "broken".into(),
            regex: "(unclosed".into(),
        }],
        ..RedactConfig::default()
    };
    let e = Redactor::new(&bad).unwrap_err().to_string();
    assert!(e.contains("broken"), "{e}");
    let e = Redactor::new(&RedactConfig {
        builtin_patterns: vec!["nope".into()],
        ..RedactConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("nope"), "{e}");
    let e = Redactor::new(&RedactConfig {
        replacement: Replacement::Hash,
        ..RedactConfig::default()
    })
    .unwrap_err();
    assert!(matches!(e, RedactError::MissingHashKey));
}

#[test]
fn rules_files_load_from_toml_and_json_and_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let toml_path = dir.path().join("rules.toml");
    std::fs::write(
        &toml_path,
        "replacement = \"hash\"\nhash_key = \"k\"\n[[patterns]]\nname = \"ticket\"\nregex = \"T-[0-9]+\"\n",
    )
    .unwrap();
    let c = RedactConfig::from_file(&toml_path).unwrap();
    assert_eq!(c.replacement, Replacement::Hash);
    assert_eq!(c.patterns[0].name, "ticket");
    assert_eq!(
        c.key_patterns,
        RedactConfig::default().key_patterns,
        "defaults kept"
    );

    let json_path = dir.path().join("rules.json");
    std::fs::write(&json_path, r#"{"key_patterns": ["pin"]}"#).unwrap();
    assert_eq!(
        RedactConfig::from_file(&json_path).unwrap().key_patterns,
        vec!["pin"]
    );

    std::fs::write(&json_path, r#"{"key_paterns": ["pin"]}"#).unwrap();
    let e = RedactConfig::from_file(&json_path).unwrap_err().to_string();
    assert!(e.contains("rules.json") && e.contains("key_paterns"), "{e}");
}

#[test]
fn log_fields_are_redacted_and_keys_carrying_secrets_renamed() {
    let r = redactor();
    r.set_secrets(["s3cr3t-value"]);
    let mut rec = record(Body::Log(LogBody {
        level: Level::Warn,
        target: "t".into(),
        message: "login with s3cr3t-value".into(),
        fields: [
            ("api_key".to_string(), json!("abcd1234")),
            ("s3cr3t-value".to_string(), json!(1)),
            ("url".to_string(), json!("https://u:pw12345@h/")),
        ]
        .into_iter()
        .collect(),
    }));
    r.redact(&mut rec);
    let text = serde_json::to_string(&rec).unwrap();
    for secret in ["abcd1234", "s3cr3t-value", "pw12345"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

/// Regression (the shapes found stored unredacted from a tailed file).
#[test]
fn free_text_secrets_from_the_issue_are_redacted() {
    let r = redactor();
    let cases = [
        ("password=hunter2", "password=[REDACTED]"),
        (
            "GET /v1/charges?api_key=sk_live_4eC39HqLyjWDarjtT1zdp7dc&limit=3 200",
            "GET /v1/charges?api_key=[REDACTED]&limit=3 200",
        ),
        (
            "Authorization: Basic dXNlcjpodW50ZXIy",
            "Authorization: Basic [REDACTED]",
        ),
        (
            "Authorization: token ghp_16C7e42F292c6912E7710c838347Ae178B4a",
            "Authorization: token [REDACTED]",
        ),
        ("X-Api-Key: 3f9a1c0de55b4b8e", "X-Api-Key: [REDACTED]"),
        (
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "aws_secret_access_key = [REDACTED]",
        ),
        (
            "connect postgres://admin:p@ss@db/app failed",
            "connect postgres://admin:[REDACTED]@db/app failed",
        ),
        (
            r#"{"user": "bob", "password": "hunter2", "n": 1}"#,
            r#"{"user": "bob", "password": "[REDACTED]", "n": 1}"#,
        ),
        (
            "Password: hunter2\nnext line",
            "Password: [REDACTED]\nnext line",
        ),
        (
            "slack xoxb-263594206564-2343594206574-FGqddMF8t08v8N7Oq4i57vs1 ok",
            "slack [REDACTED] ok",
        ),
        (
            "key rk_live_51H8abcdEFGHijklMNOP in use",
            "key [REDACTED] in use",
        ),
        (
            "maps AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY here",
            "maps [REDACTED] here",
        ),
        (
            "token github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuv done",
            "token [REDACTED] done",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(scrubbed(&r, input), want, "{input}");
    }
    // Ordinary text that only looks alike survives.
    for text in [
        "a basic example of what the password policy requires",
        "see https://example.com/a@b and http://host:8080/path",
        "Basic information about the run",
        "pk_live_1234567890abcdef is a publishable key",
    ] {
        assert_eq!(scrubbed(&r, text), text);
    }
    assert!(r.count("key_value") >= 4);
    assert_eq!(r.count("url_credentials"), 1);
}

#[test]
fn redacting_twice_changes_nothing_more() {
    for replacement in [Replacement::Mask, Replacement::Hash] {
        let r = Redactor::new(&RedactConfig {
            replacement,
            hash_key: Some("k".into()),
            ..RedactConfig::default()
        })
        .unwrap();
        let once = scrubbed(&r, "password=hunter2 and Bearer abc.def and token: xyz");
        assert_eq!(scrubbed(&r, &once), once, "{replacement:?}");
    }
}

#[test]
fn output_is_bounded_and_empty_matches_replace_nothing() {
    let r = Redactor::new(&RedactConfig {
        patterns: vec![UserPattern {
            name: "anything".into(),
            regex: "x*".into(),
        }],
        ..RedactConfig::default()
    })
    .unwrap();
    assert_eq!(scrubbed(&r, "abc"), "abc", "empty matches are not replaced");
    // Dense tiny secrets in hash mode would grow 7x: replaced whole.
    let h = Redactor::new(&RedactConfig {
        replacement: Replacement::Hash,
        hash_key: Some("k".into()),
        ..RedactConfig::default()
    })
    .unwrap();
    let dense = "token=a&".repeat(200);
    let out = scrubbed(&h, &dense);
    assert!(out.len() <= max_scrubbed_len(dense.len()), "{}", out.len());
    assert_eq!(out, MASK);
    assert_eq!(h.count("oversized"), 1);
}

#[test]
fn a_secret_set_that_cannot_compile_fails_closed_and_keeps_the_last_good_one() {
    let r = redactor();
    assert_eq!(r.try_set_secrets(["old-secret-value"]).unwrap(), 1);
    r.set_secrets_size_limit(16);
    let e = r
        .try_set_secrets((0..100).map(|i| format!("new-secret-{i:03}")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("100 secret values") && e.contains("paused"),
        "{e}"
    );
    assert!(r.check().is_err());
    assert_eq!(
        scrubbed(&r, "old-secret-value"),
        MASK,
        "the last good set stays"
    );
    r.set_secrets_size_limit(64 << 20);
    r.set_secrets(["new-secret-001"]);
    assert!(r.check().is_ok());
    assert_eq!(scrubbed(&r, "x new-secret-001"), "x [REDACTED]");
}

#[test]
fn a_safe_cut_never_falls_inside_a_secret() {
    let r = redactor();
    let text = "aaaa password=hunter2 bbbb";
    let inside = text.find("hunter2").unwrap() + 3;
    assert_eq!(r.safe_cut(text, inside), text.find("hunter2").unwrap());
    assert_eq!(r.safe_cut(text, 3), 3, "nothing to avoid");
    assert_eq!(r.safe_cut(text, 1000), text.len());
    let multi = "é".repeat(10);
    assert!(multi.is_char_boundary(r.safe_cut(&multi, 5)));
}

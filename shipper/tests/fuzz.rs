//! Fuzzing under proptest of what hostile input reaches in the shipper:
//! the `Retry-After` parser (receiver answers), the duration and size
//! parsers of flags and config, and the redaction engine on arbitrary text.
//! Properties: never a panic, results within their bounds.
//!
//! `FUZZ_CASES=N` sets the cases per property (default 256 for CI); the
//! long run recorded in BENCHMARKS.md ("Fuzzing") used 1,000,000:
//! `FUZZ_CASES=1000000 cargo test --release -p shipper --test fuzz`.

use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use schemas::{Body, LogBody, Record, SystemBody};
use shipper::deliver::collector::parse_retry_after;
use shipper::deliver::MAX_RETRY_AFTER;
use shipper::redact::{max_scrubbed_len, RedactConfig, Redactor, Replacement};
use shipper::units::{parse_duration, parse_size, seconds};

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// Text made of the pieces the parsers and rules look for, glued at random,
/// so the fuzzer reaches deep into them rather than failing at the first
/// character; mixed with arbitrary strings.
fn textish(pieces: &'static [&'static str]) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(pieces).prop_map(String::from),
        2 => "[0-9]{1,30}",
        1 => "[A-Za-z0-9+/=_.-]{1,40}",
        1 => any::<String>(),
        1 => prop::sample::select(vec![" ", "\t", "\n", "\"", "'", "&", "?", "@", ":", "=", "/", "é", "\u{FFFD}", "\0"]).prop_map(String::from),
    ];
    prop_oneof![
        1 => any::<String>(),
        3 => prop::collection::vec(piece, 0..24).prop_map(|v| v.concat()),
    ]
}

const NUMERIC: &[&str] = &[
    "1e20",
    "1e308",
    "1e-308",
    "-0",
    ".5",
    "0.",
    "NaN",
    "inf",
    "-inf",
    "+1",
    "1_000",
    "e",
    "E",
    "99999999999999999999999999",
    "0x10",
    "300",
    "301",
    "1.5",
    "-1",
];
const UNITS: &[&str] = &[
    "ns", "us", "µs", "ms", "s", "sec", "m", "min", "h", "hr", "d", "days", "k", "K", "KiB", "M",
    "MB", "MiB", "G", "GiB", "T", "TiB", "B", "b", ".", "..",
];
const SECRETY: &[&str] = &[
    "password",
    "Password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "Api-Key",
    "X-Api-Key",
    "apikey",
    "Authorization",
    "authorization",
    "Proxy-Authorization",
    "private_key",
    "=",
    ": ",
    ":",
    "=>",
    ":=",
    "\"",
    "'",
    "?",
    "&",
    "Bearer ",
    "bearer ",
    "Basic ",
    "basic ",
    "token ",
    "dXNlcjpwdw==",
    "YWRtaW46aHVudGVyMg",
    "eyJhbGciOiJIUzI1NiJ9",
    ".",
    "://",
    "postgres://",
    "https://",
    "user:",
    "p@ss",
    "@",
    "@db",
    "/",
    "ghp_",
    "gho_",
    "ghs_",
    "github_pat_",
    "xoxb-",
    "xoxp-",
    "sk_live_",
    "rk_live_",
    "sk_test_",
    "AIza",
    "AKIA",
    "4111 1111 1111 1111",
    "4111111111111111",
    "-----BEGIN RSA PRIVATE KEY-----",
    "-----END RSA PRIVATE KEY-----",
    "[REDACTED]",
    "[REDACTED:",
    "aws_secret_access_key = ",
];

fn redactors() -> &'static [Redactor; 2] {
    static R: OnceLock<[Redactor; 2]> = OnceLock::new();
    R.get_or_init(|| {
        let mask = Redactor::new(&RedactConfig::default()).unwrap();
        mask.set_secrets(["hunter2hunter2", "s3cr3t-value", "abcd"]);
        let hash = Redactor::new(&RedactConfig {
            replacement: Replacement::Hash,
            hash_key: Some("fuzz".into()),
            ..RedactConfig::default()
        })
        .unwrap();
        hash.set_secrets(["hunter2hunter2", "abcd"]);
        [mask, hash]
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn retry_after_never_panics_and_stays_bounded(s in textish(NUMERIC)) {
        if let Some(d) = parse_retry_after(&s) {
            prop_assert!(d <= MAX_RETRY_AFTER, "{:?} -> {:?}", s, d);
        }
    }

    #[test]
    fn durations_never_panic_and_stay_in_bounds(
        s in textish(&[NUMERIC, UNITS].concat().leak()[..]),
        min_ms in 0u64..10_000,
        span_ms in 0u64..100_000_000,
    ) {
        let (min, max) = (Duration::from_millis(min_ms), Duration::from_millis(min_ms + span_ms));
        match parse_duration(&s, min, max) {
            Ok(d) => prop_assert!(min <= d && d <= max, "{:?} -> {:?}", s, d),
            Err(e) => prop_assert!(e.starts_with("invalid duration") && e.len() < 400, "{}", e),
        }
    }

    #[test]
    fn sizes_never_panic_and_stay_in_bounds(
        s in textish(&[NUMERIC, UNITS].concat().leak()[..]),
        min in 0u64..4096,
        span in 0u64..(1 << 50),
    ) {
        let max = min + span;
        match parse_size(&s, min, max) {
            Ok(n) => prop_assert!(min <= n && n <= max, "{:?} -> {}", s, n),
            Err(e) => prop_assert!(e.starts_with("invalid size") && e.len() < 400, "{}", e),
        }
    }

    #[test]
    fn config_seconds_never_panic(secs in any::<f64>()) {
        let (min, max) = (Duration::from_millis(1), Duration::from_secs(86_400));
        if let Ok(d) = seconds(secs, min, max) {
            prop_assert!(min <= d && d <= max);
        }
    }

    #[test]
    fn redaction_never_panics_and_output_is_bounded(s in textish(SECRETY), at in any::<usize>()) {
        for r in redactors() {
            let mut out = s.clone();
            r.scrub(&mut out);
            prop_assert!(out.len() <= max_scrubbed_len(s.len()), "{} -> {}", s.len(), out.len());
            let cut = r.safe_cut(&s, at % (s.len() + 1));
            prop_assert!(cut <= s.len() && s.is_char_boundary(cut));
            // Whole records too: message, target, fields (keys and values).
            let mut record = Record {
                seq: 1,
                ts: 1,
                source: s.clone(),
                subscription: "sub".into(),
                body: Body::Log(LogBody {
                    level: schemas::Level::Info,
                    target: s.clone(),
                    message: s.clone(),
                    fields: [(s.clone(), serde_json::json!({ "password": s, "x": [s.clone()] }))]
                        .into_iter()
                        .collect(),
                }),
            };
            r.redact(&mut record);
            let mut line = Record {
                body: Body::System(SystemBody { facility: None, priority: None, message: s.clone(), file: Some(s.clone()) }),
                ..record
            };
            r.redact(&mut line);
            if let Body::System(l) = &line.body {
                prop_assert!(l.message.len() <= max_scrubbed_len(s.len()));
            }
        }
    }
}

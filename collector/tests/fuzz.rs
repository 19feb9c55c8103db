//! Property tests: the ingest decoder and the LogQL parser never panic,
//! whatever bytes or text they get, and valid input round-trips.

use collector::ingest::{decode, decompress};
use collector::query::parse;
use proptest::prelude::*;
use schemas::{Body, IngestBatch, Level, LogBody, Record};

fn batch(n: usize) -> Vec<u8> {
    let records = (0..n as u64)
        .map(|s| Record {
            seq: s + 1,
            ts: 1_700_000_000_000_000_000 + s as i64,
            source: "n".into(),
            subscription: "a".into(),
            body: Body::Log(LogBody {
                level: Level::Info,
                target: "t".into(),
                message: format!("m{s}"),
                fields: Default::default(),
            }),
        })
        .collect();
    schemas::to_msgpack(&IngestBatch {
        epoch: String::new(),
        source: "n".into(),
        subscription: "a".into(),
        records,
        dropped: 0,
    })
    .expect("encode")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes, 1000);
        let _ = decompress(Some("zstd"), &bytes, 1 << 16);
        let _ = decompress(Some("gzip"), &bytes, 1 << 16);
    }

    #[test]
    fn decoder_never_panics_on_mutated_batches(
        n in 1usize..6,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = batch(n);
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        let end = cut.index(bytes.len() + 1);
        if let Ok(b) = decode(&bytes[..end], 1000) {
            prop_assert!(b.records.len() <= 1000);
        }
    }

    #[test]
    fn valid_batches_decode_exactly(n in 0usize..40) {
        let b = decode(&batch(n), 1000).expect("valid batch decodes");
        prop_assert_eq!(b.records.len(), n);
    }

    #[test]
    fn parser_never_panics_on_arbitrary_text(s in "\\PC{0,80}") {
        let _ = parse(&s);
    }

    #[test]
    fn parser_never_panics_on_logql_like_text(
        s in r#"[{}=!~|"`,a-z_0-9 .*()\[\]\\<>+-]{0,60}"#
    ) {
        if let Err(e) = parse(&s) {
            prop_assert!(e.column >= 1 && e.column <= s.chars().count() + 1, "{e} for {s:?}");
        }
    }

    #[test]
    fn generated_queries_parse(
        name in "[a-z_][a-z0-9_]{0,10}",
        value in "[a-zA-Z0-9 ._-]{0,20}",
        text in "[a-zA-Z0-9 ]{0,20}",
        n in -1000i64..1000,
    ) {
        let q = format!(r#"{{{name}="{value}", {name}!~"x.*"}} |= "{text}" != "{text}" | json | {name} > {n}"#);
        let parsed = parse(&q);
        prop_assert!(parsed.is_ok(), "{q}: {parsed:?}");
    }
}

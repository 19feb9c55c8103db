//! `--metrics-storage victoriametrics`: pushed samples are written to a
//! real VictoriaMetrics (Debian's `victoria-metrics`, started on a free
//! loopback port) before the push is answered, with the subscription of
//! the token; `/federate` is answered from it with the operator's
//! subscription always applied; a VictoriaMetrics that is down makes
//! pushes 503 (nothing acknowledged) rather than losing them.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use collector::metrics::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use common::*;
use prost::Message;
use testkit::engines::{skip, VictoriaMetrics};

fn now_ms() -> i64 {
    now() / 1_000_000
}

fn vm_or_skip(test: &str) -> Option<VictoriaMetrics> {
    if !Path::new("/usr/bin/victoria-metrics").exists() {
        skip(test, "victoria-metrics is not installed (scripts/setup.sh)");
        return None;
    }
    Some(VictoriaMetrics::start().unwrap_or_else(|e| panic!("victoria-metrics did not start: {e}")))
}

fn write_body(series: &[(&[(&str, &str)], f64)]) -> Vec<u8> {
    let t = now_ms();
    let req = WriteRequest {
        timeseries: series
            .iter()
            .map(|(labels, v)| TimeSeries {
                labels: labels.iter().map(|(k, v)| Label::new(k, v)).collect(),
                samples: vec![Sample {
                    value: *v,
                    timestamp: t,
                }],
                histograms: vec![],
            })
            .collect(),
        metadata: vec![],
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap()
}

async fn push(h: &Harness, token: &str, body: Vec<u8>) -> (u16, Option<String>, String) {
    post_remote_write(h, token, body).await
}

async fn federate(h: &Harness, token: &str, selector: &str) -> (u16, String) {
    let r = h
        .client
        .get(h.url("/federate"))
        .bearer_auth(token)
        .query(&[("match[]", selector)])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Sample lines of a federate answer, without the timestamp, sorted.
fn lines(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.rsplit_once(' ').map(|(a, _)| a.to_string()).unwrap())
        .collect();
    v.sort();
    v
}

/// Polls `/federate` until it answers `want` lines (VictoriaMetrics makes
/// new samples searchable within about a second).
async fn federate_until(h: &Harness, token: &str, selector: &str, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, body) = federate(h, token, selector).await;
        assert_eq!(st, 200, "{body}");
        let l = lines(&body);
        if l.len() >= want || Instant::now() > deadline {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const ALL: &str = r#"{__name__=~".+"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_land_in_victoriametrics_and_federate_is_per_subscription() {
    let Some(vm) = vm_or_skip("samples_land_in_victoriametrics_and_federate_is_per_subscription")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = vm.url();
    let h = Harness::start_with(dir.path(), |c| c.victoriametrics_url = Some(url)).await;

    // acme claims beta's subscription in a label: forced to acme.
    let (st, _, body) = push(
        &h,
        SHIP_ACME,
        write_body(&[
            (
                &[
                    ("__name__", "vm_up"),
                    ("instance", "a1"),
                    ("subscription", "beta"),
                ],
                1.0,
            ),
            (
                &[
                    ("__name__", "vm_load"),
                    ("instance", "a1"),
                    ("zone", "x\"y"),
                ],
                0.5,
            ),
        ]),
    )
    .await;
    assert_eq!(st, 204, "{body}");
    let (st, _, body) = push(
        &h,
        SHIP_BETA,
        write_body(&[(&[("__name__", "vm_up"), ("instance", "b1")], 0.0)]),
    )
    .await;
    assert_eq!(st, 204, "{body}");

    let acme = federate_until(&h, OP_ACME, ALL, 2).await;
    assert_eq!(
        acme,
        vec![
            r#"vm_load{instance="a1",subscription="acme",zone="x\"y"} 0.5"#.to_string(),
            r#"vm_up{instance="a1",subscription="acme"} 1"#.to_string(),
        ]
    );
    let beta = federate_until(&h, OP_BETA, ALL, 1).await;
    assert_eq!(
        beta,
        vec![r#"vm_up{instance="b1",subscription="beta"} 0"#.to_string()]
    );
    // A selector naming the other tenant still gets only its own.
    for sel in [
        r#"{subscription="beta"}"#,
        r#"{subscription=~".+"}"#,
        r#"{__name__=~".+",subscription!="acme"}"#,
        r#"vm_up{instance="b1"}"#,
    ] {
        let (st, body) = federate(&h, OP_ACME, sel).await;
        assert_eq!(st, 200, "{sel}: {body}");
        assert!(
            !body.contains("beta") && !body.contains("b1"),
            "{sel}: {body}"
        );
    }
    // The admin sees both.
    let all = federate_until(&h, ADMIN, ALL, 3).await;
    assert_eq!(all.len(), 3, "{all:?}");
    // Straight from VictoriaMetrics: what it stores carries the forced label.
    let export = reqwest::get(format!("{}/api/v1/export?match[]=vm_up", vm.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(export.contains(r#""subscription":"acme""#), "{export}");
    assert_eq!(
        export.matches("\"subscription\":\"beta\"").count(),
        1,
        "{export}"
    );
    // Bounds are checked here before VictoriaMetrics is asked.
    let (st, body) = federate(&h, OP_ACME, "{").await;
    assert_eq!(st, 400, "{body}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_victoriametrics_that_is_down_is_a_503_and_nothing_is_acknowledged() {
    let Some(mut vm) =
        vm_or_skip("a_victoriametrics_that_is_down_is_a_503_and_nothing_is_acknowledged")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = vm.url();
    let h = Harness::start_with(dir.path(), |c| c.victoriametrics_url = Some(url)).await;
    let body = write_body(&[(&[("__name__", "vm_up"), ("instance", "a1")], 1.0)]);
    assert_eq!(push(&h, SHIP_ACME, body.clone()).await.0, 204);
    vm.kill();
    let (st, retry, text) = push(&h, SHIP_ACME, body).await;
    assert_eq!(st, 503, "{text}");
    assert_eq!(retry.as_deref(), Some("5"));
    assert!(text.contains("nothing is acknowledged"), "{text}");
    // The tenant is not told where the metrics store is.
    assert!(!text.contains("127.0.0.1"), "{text}");
    let (st, text) = federate(&h, OP_ACME, ALL).await;
    assert_eq!(st, 503, "{text}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_victoriametrics_is_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = collector::CollectorConfig::new(
        dir.path(),
        collector::Listen::Listener(listener),
        tokens(),
    );
    config.victoriametrics_url = Some(format!("http://127.0.0.1:{}", testkit::free_port()));
    let err = collector::run(config, Default::default())
        .await
        .expect_err("started without VictoriaMetrics");
    assert!(
        err.to_string().contains("is unreachable")
            && err
                .to_string()
                .contains("is victoria-metrics running there"),
        "{err}"
    );
}

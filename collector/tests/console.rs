//! The operator console in a real browser (headless Debian Chromium over
//! WebDriver), against an in-process collector on loopback: sign-in into
//! a session cookie, search with the histogram and label chips, a query
//! error shown at its column, live tail, sources, sign-out; and the
//! session's protections tried with a plain HTTP client (CSRF, another
//! site's Origin, shipper tokens, tenant scope through the cookie).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use testkit::engines::ChromeDriver;
use testkit::webdriver::Browser;

const S: i64 = 1_000_000_000;

/// Saves a screenshot of the page for a reviewer, under the target
/// directory (`target/.../tmp/console-screenshots/NAME.png`).
async fn shot(b: &Browser, name: &str) {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("console-screenshots")
        .join(format!("{name}.png"));
    b.screenshot(&path).await.expect("screenshot");
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert!(size > 1000, "{}: {size} bytes", path.display());
}

async fn seed(h: &Harness, t0: i64) {
    let mut recs: Vec<_> = (1..=5)
        .map(|s| {
            log_record(
                "acme",
                "node-1",
                s,
                t0 + s as i64 * S,
                &format!("hello console {s}"),
            )
        })
        .collect();
    recs.push(exec_record(
        "acme",
        "node-1",
        6,
        t0 + 10 * S,
        "orders",
        schemas::EventType::PumpFailed,
        None,
    ));
    h.ingest_ok(SHIP_ACME, &batch("acme", "node-1", recs)).await;
    let beta = vec![log_record("beta", "node-9", 1, t0 + S, "beta secret line")];
    h.ingest_ok(SHIP_BETA, &batch("beta", "node-9", beta)).await;
}

/// Signs in with `token` in the browser; returns once the console shows.
async fn sign_in(b: &Browser, h: &Harness, token: &str) {
    b.goto(&h.url("/ui/")).await.expect("goto");
    let field = b
        .wait_for("#token", Duration::from_secs(10))
        .await
        .expect("sign-in form");
    b.type_text(&field, token).await.expect("type");
    let button = b.find("#sign-in").await.expect("find").expect("button");
    b.click(&button).await.expect("click");
    b.wait_for("#search-form", Duration::from_secs(10))
        .await
        .expect("the console after sign-in");
}

/// The rendered texts of the elements `css` selects, read in one script
/// (so a page drawn again meanwhile cannot leave stale references).
async fn texts(b: &Browser, css: &str) -> Vec<String> {
    let v = b
        .execute(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.getClientRects().length ? e.innerText.trim() : '');",
            vec![Value::from(css)],
        )
        .await
        .expect("script");
    v.as_array()
        .unwrap_or_else(|| panic!("{css}: {v}"))
        .iter()
        .map(|t| t.as_str().unwrap_or_default().to_string())
        .collect()
}

/// Waits until `f` holds for the texts of `css`.
async fn until_texts(b: &Browser, css: &str, f: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = texts(b, css).await;
        if f(&t) {
            return t;
        }
        assert!(Instant::now() < deadline, "{css}: {t:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_searches_tails_and_signs_out_in_a_real_browser() {
    let driver = ChromeDriver::start().expect("chromedriver (scripts/setup.sh installs it)");
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start(dir.path()).await;
    let t0 = now() - 120 * S;
    seed(&h, t0).await;

    let b = Browser::open(&driver, 1280, 800).await.expect("browser");
    // Not signed in: the console sends to the sign-in page; a wrong token
    // is told so there.
    b.goto(&h.url("/ui/")).await.expect("goto");
    let field = b
        .wait_for("#token", Duration::from_secs(10))
        .await
        .expect("form");
    b.type_text(&field, "not-a-token").await.expect("type");
    b.click(&b.find("#sign-in").await.expect("find").expect("button"))
        .await
        .expect("click");
    let err = b
        .wait_for("#login-error", Duration::from_secs(10))
        .await
        .expect("error");
    assert_eq!(b.text(&err).await.expect("text"), "unknown token");
    shot(&b, "sign-in-refused").await;

    sign_in(&b, &h, OP_ACME).await;
    let cookies = b.cookies().await.expect("cookies");
    let session = cookies
        .iter()
        .find(|c| c["name"] == "sesam_session")
        .expect("session cookie");
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    let who = b.find("#who").await.expect("find").expect("who");
    assert_eq!(b.text(&who).await.expect("text"), "operator of acme");

    // The default search ({} over the last hour): acme's six records,
    // newest first, never beta's.
    let rows = until_texts(&b, "#results > li summary", |t| t.len() == 6).await;
    assert!(rows[1].contains("hello console 5"), "{rows:?}");
    assert!(rows.iter().all(|r| !r.contains("beta")), "{rows:?}");
    // The histogram: stacked bars of the records by level.
    if let Err(e) = b
        .wait_for("#histogram-svg rect.bar", Duration::from_secs(10))
        .await
    {
        panic!(
            "histogram bars: {e}; it shows {:?}",
            b.execute(
                "return document.getElementById('histogram').innerHTML;",
                vec![]
            )
            .await
        );
    }
    let counted = b
        .execute(
            "return [...document.querySelectorAll('#histogram-svg rect.bar title')].map(t => Number(t.textContent.split(': ')[1].split(' ')[0])).reduce((a, b) => a + b, 0);",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(counted, Value::from(6), "bars count every record");
    shot(&b, "search").await;

    // A label chip narrows the query to that label's value.
    let first = b
        .find("#results > li details")
        .await
        .expect("find")
        .expect("row");
    b.click(&first).await.expect("expand");
    let chip = b
        .execute(
            "const c = [...document.querySelectorAll('#results > li:first-child a.chip')].find(a => a.textContent.startsWith('kind=')); c.click(); return c.textContent;",
            vec![],
        )
        .await
        .expect("chip");
    assert_eq!(chip, Value::from("kind=execution"));
    until_texts(&b, "#results > li summary", |t| t.len() == 1).await;
    let q = b.find("#query").await.expect("find").expect("query");
    let text = b.property(&q, "value").await.expect("value");
    assert_eq!(text, Value::from(r#"{kind="execution"}"#));

    // A query error is shown at its column.
    b.clear(&q).await.expect("clear");
    b.type_text(&q, "{kind=}\u{E007}").await.expect("type");
    let caret = b
        .wait_for("#error-caret", Duration::from_secs(10))
        .await
        .expect("caret");
    let caret = b.text(&caret).await.expect("text");
    assert_eq!(
        caret, "{kind=}\n      ^",
        "the caret under the column at fault"
    );
    shot(&b, "search-error").await;

    // Live tail: a record stored while tailing appears within 2 s.
    b.goto(&h.url("/ui/#search?q=%7B%7D&range=1h"))
        .await
        .expect("goto");
    until_texts(&b, "#results > li summary", |t| t.len() == 6).await;
    b.click(&b.find("#tail").await.expect("find").expect("tail"))
        .await
        .expect("tail");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = Instant::now();
    h.ingest_ok(
        SHIP_ACME,
        &batch(
            "acme",
            "node-1",
            vec![log_record("acme", "node-1", 7, now(), "tailed live")],
        ),
    )
    .await;
    b.wait_for("#results > li.tailed", Duration::from_secs(5))
        .await
        .expect("tailed record");
    assert!(
        stored.elapsed() < Duration::from_secs(2),
        "{:?}",
        stored.elapsed()
    );
    let tailed = texts(&b, "#results > li.tailed summary").await;
    assert!(tailed[0].contains("tailed live"), "{tailed:?}");

    // Sources: acme's one source.
    b.goto(&h.url("/ui/#sources")).await.expect("goto");
    let cells = until_texts(&b, "#sources tbody td", |t| !t.is_empty()).await;
    assert_eq!(&cells[..2], ["acme", "node-1"]);
    shot(&b, "sources").await;

    // Sign-out ends the session: the old cookie no longer works.
    b.goto(&h.url("/ui/")).await.expect("goto");
    b.wait_for("#sign-out", Duration::from_secs(10))
        .await
        .expect("sign-out");
    let old = session["value"].as_str().expect("value").to_string();
    b.click(&b.find("#sign-out").await.expect("find").expect("button"))
        .await
        .expect("click");
    b.wait_for("#token", Duration::from_secs(10))
        .await
        .expect("back to sign-in");
    let (status, _) = get_as(&h, "/api/v1/sources", &format!("sesam_session={old}")).await;
    assert_eq!(status, 401);
    b.close().await;

    // The same console at a phone's width.
    let phone = Browser::open(&driver, 390, 844).await.expect("browser");
    sign_in(&phone, &h, OP_ACME).await;
    until_texts(&phone, "#results > li summary", |t| t.len() == 7).await;
    let overflow = phone
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(overflow, Value::Bool(true), "no sideways scrolling");
    shot(&phone, "search-phone").await;
    phone.close().await;
    h.stop().await;
}

/// GET `path` with the session `cookie`: the status and the JSON body
/// (`Null` if there is none).
async fn get_as(h: &Harness, path: &str, cookie: &str) -> (u16, Value) {
    let r = h
        .client
        .get(h.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .expect("get");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Signs in over plain HTTP; returns the session cookie and CSRF token.
async fn session(h: &Harness, token: &str) -> (String, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = client
        .post(h.url("/ui/login"))
        .form(&[("token", token)])
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .split(';')
        .next()
        .expect("pair")
        .to_string();
    let page = client
        .get(h.url("/ui/"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("console");
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .contains("default-src 'self'"));
    let html = page.text().await.expect("html");
    let csrf = html
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("csrf meta")
        .to_string();
    (cookie, csrf)
}

#[tokio::test]
async fn a_session_cookie_is_guarded_against_other_sites_and_keeps_the_tenant_scope() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start(dir.path()).await;
    seed(&h, now() - 60 * S).await;
    let (cookie, csrf) = session(&h, OP_ACME).await;
    let ends = schemas::time::rfc3339_from_nanos(now() + 3600 * S);
    let silence = serde_json::json!({
        "matchers": [{"name": "pipe", "value": "orders"}],
        "endsAt": ends,
        "comment": "maintenance"
    });
    // State changes need the CSRF token.
    let r = h
        .client
        .post(h.url("/api/v1/silences"))
        .header("cookie", &cookie)
        .json(&silence)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["field"], "X-CSRF-Token");
    let r = h
        .client
        .post(h.url("/api/v1/silences"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .json(&silence)
        .send()
        .await
        .expect("post");
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );
    // Another site's page may not use the session, not even to read.
    let r = h
        .client
        .get(h.url("/api/v1/sources"))
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 403);
    // The session keeps its token's scope: acme's records only, and beta's
    // subscription is refused as through the API.
    let (_, r) = get_as(&h, "/api/v1/logs?query=%7B%7D", &cookie).await;
    let records = r["records"].as_array().expect("records");
    assert_eq!(records.len(), 6);
    assert!(records.iter().all(|x| x["subscription"] == "acme"));
    let (_, v) = get_as(
        &h,
        "/api/v1/logs?query=%7Bsubscription%3D%22beta%22%7D",
        &cookie,
    )
    .await;
    assert_eq!(v["records"].as_array().map(Vec::len), Some(0), "{v}");
    // Sign-out needs the token too, and then ends the session.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = client
        .post(h.url("/ui/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", "wrong")])
        .send()
        .await
        .expect("logout");
    assert_eq!(r.status(), 403);
    let r = client
        .post(h.url("/ui/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("logout");
    assert_eq!(r.status(), 303);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .contains("Max-Age=0"));
    assert_eq!(get_as(&h, "/api/v1/sources", &cookie).await.0, 401);
    // An admin's session is every subscription's.
    let (admin, _) = session(&h, ADMIN).await;
    let (_, v) = get_as(&h, "/api/v1/sources", &admin).await;
    assert_eq!(v["sources"].as_array().map(Vec::len), Some(2), "{v}");
    // Shipper tokens may not sign in; oversized tokens are refused.
    let r = client
        .post(h.url("/ui/login"))
        .form(&[("user", "x")])
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 400, "a form without a token");
    for (token, status) in [(SHIP_ACME.to_string(), 403), ("x".repeat(5000), 400)] {
        let r = client
            .post(h.url("/ui/login"))
            .form(&[("token", token.as_str())])
            .send()
            .await
            .expect("login");
        assert_eq!(r.status(), status);
    }
    h.stop().await;
}

#[tokio::test]
async fn the_console_can_be_turned_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start_with(dir.path(), |c| c.ui.enabled = false).await;
    let r = h.client.get(h.url("/ui/")).send().await.expect("get");
    assert_eq!(r.status(), 404);
    h.stop().await;
}

/// Serves `html` to every request on a free loopback port (another
/// origin than the collector's): the page of a hostile site.
async fn serve_page(html: String) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
                html.len()
            );
            let _ = sock.write_all(answer.as_bytes()).await;
        }
    });
    (url, task)
}

/// Waits for `css`; on timeout fails with what the page shows.
async fn shows(b: &Browser, css: &str) -> testkit::webdriver::Element {
    match b.wait_for(css, Duration::from_secs(10)).await {
        Ok(e) => e,
        Err(e) => {
            let page = b
                .execute(
                    "return location.hash + '\\n' + document.getElementById('view')?.innerText;",
                    vec![],
                )
                .await;
            panic!("{css}: {e}; the page shows {page:?}")
        }
    }
}

/// Sets a form control's value the way a user's choice would (with its
/// `change` event).
async fn choose(b: &Browser, css: &str, value: &str) {
    let done = b
        .execute(
            "const e = document.querySelector(arguments[0]); e.value = arguments[1]; e.dispatchEvent(new Event('change', {bubbles: true})); return e.value;",
            vec![Value::from(css), Value::from(value)],
        )
        .await
        .expect("script");
    assert_eq!(done, Value::from(value), "{css}");
}

async fn set_text(b: &Browser, css: &str, text: &str) {
    let e = b.find(css).await.expect("find").expect(css);
    b.clear(&e).await.expect("clear");
    b.type_text(&e, text).await.expect("type");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_manages_pipes_rules_and_alerts_in_a_real_browser() {
    let driver = ChromeDriver::start().expect("chromedriver (scripts/setup.sh installs it)");
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start(dir.path()).await;
    let t0 = now() - 600 * S;
    use schemas::EventType::{PumpCompleted, PumpFailed, PumpStarted};
    let runs = vec![
        exec_record("acme", "node-1", 1, t0, "orders", PumpStarted, None),
        exec_record(
            "acme",
            "node-1",
            2,
            t0 + S,
            "orders",
            PumpCompleted,
            Some(4),
        ),
        exec_record(
            "acme",
            "node-1",
            3,
            t0 + 60 * S,
            "orders",
            PumpStarted,
            None,
        ),
        exec_record("acme", "node-1", 4, t0 + 61 * S, "orders", PumpFailed, None),
        exec_record(
            "acme",
            "node-1",
            5,
            t0 + 62 * S,
            "crm",
            PumpCompleted,
            Some(9),
        ),
    ];
    h.ingest_ok(SHIP_ACME, &batch("acme", "node-1", runs)).await;
    let beta = vec![exec_record(
        "beta", "node-9", 1, t0, "ledger", PumpFailed, None,
    )];
    h.ingest_ok(SHIP_BETA, &batch("beta", "node-9", beta)).await;

    let b = Browser::open(&driver, 1280, 800).await.expect("browser");
    sign_in(&b, &h, OP_ACME).await;

    // Pipes: each pipe's last run, its timeline with the failure marked.
    b.goto(&h.url("/ui/#pipes")).await.expect("goto");
    let rows = until_texts(&b, "#pipes tbody tr", |t| t.len() == 2).await;
    assert!(
        rows[0].contains("crm") && rows[0].contains("ok"),
        "{rows:?}"
    );
    assert!(
        rows[1].contains("orders") && rows[1].contains("failed"),
        "{rows:?}"
    );
    assert!(rows[1].contains("connection timeout"), "{rows:?}");
    let marks = b
        .execute(
            "return [...document.querySelectorAll('#pipes tbody tr:nth-child(2) rect')].map(r => r.getAttribute('class'));",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(
        marks,
        serde_json::json!(["run run-completed", "run run-failed"])
    );
    shot(&b, "pipes").await;

    // A pipe's page: the failure reason, its events, no rule yet; "add
    // rule for this pipe" opens the form for it.
    b.click(
        &b.find("#pipes tbody tr:nth-child(2) a.pipe-link")
            .await
            .expect("find")
            .expect("link"),
    )
    .await
    .expect("click");
    let reason = b
        .wait_for("#failure-reason pre", Duration::from_secs(10))
        .await
        .expect("reason");
    assert_eq!(
        b.text(&reason).await.expect("text"),
        "connection timeout talking to crm"
    );
    until_texts(&b, "#pipe-events > li summary", |t| t.len() == 4).await;
    assert!(b.find("#pipe-rules-none").await.expect("find").is_some());
    shot(&b, "pipe").await;
    b.click(&b.find("#add-rule").await.expect("find").expect("add"))
        .await
        .expect("click");
    let pipes = b
        .wait_for("#f-pipes", Duration::from_secs(10))
        .await
        .expect("form");
    assert_eq!(
        b.property(&pipes, "value").await.expect("value"),
        Value::from("orders")
    );
    let source = b.find("#f-source").await.expect("find").expect("source");
    assert_eq!(
        b.property(&source, "value").await.expect("value"),
        Value::from("node-1")
    );

    // The form is built from the rule types: a pattern rule without its
    // pattern is refused at the pattern's field.
    set_text(&b, "#f-name", "Orders failed").await;
    choose(&b, "#f-type", "pattern_match").await;
    b.wait_for("#f-params-pattern", Duration::from_secs(5))
        .await
        .expect("the pattern field of pattern_match");
    b.click(&b.find("#rule-save").await.expect("find").expect("save"))
        .await
        .expect("click");
    let err = b
        .wait_for(
            "#f-params-pattern-error:not([hidden])",
            Duration::from_secs(10),
        )
        .await
        .expect("error at the pattern field");
    assert!(
        b.text(&err).await.expect("text").contains("pattern"),
        "{:?}",
        b.text(&err).await
    );
    shot(&b, "rule-error").await;
    // A wrong repeat interval is shown at its field.
    choose(&b, "#f-type", "pump_failed").await;
    set_text(&b, "#f-repeat_interval", "300y").await;
    b.click(&b.find("#rule-save").await.expect("find").expect("save"))
        .await
        .expect("click");
    let err = b
        .wait_for(
            "#f-repeat_interval-error:not([hidden])",
            Duration::from_secs(10),
        )
        .await
        .expect("error at repeat_interval");
    assert!(b.text(&err).await.expect("text").contains("over the limit"));
    let invalid = b
        .find("#f-repeat_interval")
        .await
        .expect("find")
        .expect("input");
    assert_eq!(
        b.property(&invalid, "ariaInvalid").await.expect("aria"),
        Value::from("true")
    );
    // Right: it is saved and the API has it.
    set_text(&b, "#f-repeat_interval", "1h").await;
    b.click(&b.find("#rule-save").await.expect("find").expect("save"))
        .await
        .expect("click");
    until_texts(&b, "#rules tbody tr", |t| t.len() == 1).await;
    let (_, rules) = h.get_json(OP_ACME, "/api/v1/notification-rules", &[]).await;
    let rule = &rules["rules"][0];
    assert_eq!(rule["name"], "Orders failed");
    assert_eq!(rule["type"], "pump_failed");
    assert_eq!(rule["pipes"], serde_json::json!(["orders"]));
    assert_eq!(rule["source"], "node-1");
    shot(&b, "rules").await;

    // A receiver: an address the egress policy refuses is shown at the
    // URL field; a public one is saved.
    b.click(&b.find("#new-receiver").await.expect("find").expect("new"))
        .await
        .expect("click");
    shows(&b, "#f-url").await;
    set_text(&b, "#f-name", "ops").await;
    set_text(&b, "#f-url", "http://169.254.169.254/latest/meta-data").await;
    b.click(&b.find("#receiver-save").await.expect("find").expect("save"))
        .await
        .expect("click");
    shows(&b, "#f-url-error:not([hidden])").await;
    set_text(&b, "#f-url", "https://hooks.example.com/sesam").await;
    b.click(&b.find("#receiver-save").await.expect("find").expect("save"))
        .await
        .expect("click");
    until_texts(&b, "#receivers tbody tr", |t| {
        t.len() == 1 && t[0].starts_with("ops")
    })
    .await;
    let (_, recv) = h.get_json(OP_ACME, "/api/v1/receivers/ops", &[]).await;
    assert_eq!(recv["url"], "https://hooks.example.com/sesam", "{recv}");

    // A glob that matches no known pipe is saved with a warning shown.
    b.goto(&h.url("/ui/#rule-new")).await.expect("goto");
    b.wait_for("#f-name", Duration::from_secs(10))
        .await
        .expect("form");
    set_text(&b, "#f-name", "Typo").await;
    set_text(&b, "#f-pipes", "ordres*").await;
    b.click(&b.find("#rule-save").await.expect("find").expect("save"))
        .await
        .expect("click");
    shows(&b, "#flash.warning").await;
    until_texts(&b, "#flash.warning", |t| {
        t.len() == 1 && t[0].contains("matches none")
    })
    .await;

    // The pipe's page lists the rule now.
    b.goto(&h.url("/ui/#pipe?source=node-1&pipe=orders"))
        .await
        .expect("goto");
    let listed = until_texts(&b, "#pipe-rules li", |t| !t.is_empty()).await;
    assert_eq!(listed.len(), 1, "the typo glob does not apply: {listed:?}");
    assert!(listed[0].starts_with("Orders failed"), "{listed:?}");

    // A failure fires the rule; the alert is silenced from the alerts page.
    h.ingest_ok(
        SHIP_ACME,
        &batch(
            "acme",
            "node-1",
            vec![exec_record(
                "acme",
                "node-1",
                6,
                now(),
                "orders",
                PumpFailed,
                None,
            )],
        ),
    )
    .await;
    b.goto(&h.url("/ui/#alerts")).await.expect("goto");
    let alerts = until_texts(&b, "#alerts tbody tr", |t| t.len() == 1).await;
    assert!(alerts[0].starts_with("firing"), "{alerts:?}");
    shot(&b, "alerts").await;
    b.click(
        &b.find("#alerts button.silence")
            .await
            .expect("find")
            .expect("silence"),
    )
    .await
    .expect("click");
    b.wait_for("#silence-form", Duration::from_secs(5))
        .await
        .expect("silence form");
    shot(&b, "silence-form").await;
    b.click(
        &b.find("#silence-create")
            .await
            .expect("find")
            .expect("create"),
    )
    .await
    .expect("click");
    let alerts = until_texts(&b, "#alerts tbody tr", |t| {
        t.len() == 1 && t[0].starts_with("suppressed")
    })
    .await;
    assert!(alerts[0].contains("silenced by"), "{alerts:?}");
    let (_, api) = h.get_json(OP_ACME, "/api/v1/alerts", &[]).await;
    let st = &api["alerts"][0]["status"];
    assert_eq!(st["state"], "suppressed", "{api}");
    assert_eq!(st["silencedBy"].as_array().map(Vec::len), Some(1), "{api}");
    let (_, silences) = h.get_json(OP_ACME, "/api/v1/silences", &[]).await;
    let matchers: Vec<&str> = silences["silences"][0]["matchers"]
        .as_array()
        .expect("matchers")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(matchers.contains(&"pipe"), "{silences}");
    shot(&b, "alerts-silenced").await;
    // Expiring the silence makes the alert fire again.
    b.click(
        &b.find("#silences button.expire")
            .await
            .expect("find")
            .expect("expire"),
    )
    .await
    .expect("click");
    until_texts(&b, "#alerts tbody tr", |t| {
        t.len() == 1 && t[0].starts_with("firing")
    })
    .await;
    assert!(b.find("#no-silences").await.expect("find").is_some());

    // Notifications: the history page answers (no receiver: none sent).
    b.goto(&h.url("/ui/#notifications")).await.expect("goto");
    b.wait_for("#no-notifications, #notifications", Duration::from_secs(10))
        .await
        .expect("history");

    // A hostile page of another origin posts a form to the collector with
    // the operator's cookie: refused, nothing created, session intact.
    let attack = format!(
        "<!doctype html><form id=f method=post enctype=text/plain action=\"{}\"><input name='{{\"matchers\":[{{\"name\":\"pipe\",\"value\":\"orders\"}}],\"endsAt\":\"2999-01-01T00:00:00Z\",\"x\":\"' value='\"}}'></form><script>document.getElementById('f').submit()</script>",
        h.url("/api/v1/silences")
    );
    let (evil, server) = serve_page(attack).await;
    b.goto(&evil).await.expect("goto");
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let t = b
            .execute(
                "return document.body ? document.body.innerText : '';",
                vec![],
            )
            .await
            .expect("script");
        let t = t.as_str().unwrap_or("").to_string();
        if t.contains("error") {
            break t;
        }
        assert!(Instant::now() < deadline, "{t:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(answer.contains("another site"), "{answer}");
    server.abort();
    let (_, silences) = h.get_json(OP_ACME, "/api/v1/silences", &[]).await;
    assert_eq!(silences["silences"], serde_json::json!([]), "{silences}");
    b.goto(&h.url("/ui/#rules")).await.expect("goto");
    until_texts(&b, "#rules tbody tr", |t| t.len() == 2).await;
    // Edit a rule (its form is filled from the API), then delete the other.
    b.execute(
        "[...document.querySelectorAll('#rules tbody a')].find(a => a.textContent === 'Orders failed').click(); return true;",
        vec![],
    )
    .await
    .expect("script");
    let name = shows(&b, "#f-name").await;
    until_texts(&b, "#rule-form legend", |t| {
        t.iter().any(|l| l.contains("pump_failed"))
    })
    .await;
    assert_eq!(
        b.property(&name, "value").await.expect("value"),
        Value::from("Orders failed")
    );
    choose(&b, "#f-severity", "critical").await;
    b.click(&b.find("#rule-save").await.expect("find").expect("save"))
        .await
        .expect("click");
    until_texts(&b, "#rules tbody tr", |t| {
        t.iter()
            .any(|r| r.starts_with("Orders failed") && r.contains("critical"))
    })
    .await;
    b.execute(
        "window.confirm = () => true; [...document.querySelectorAll('#rules tbody tr')].find(r => r.textContent.startsWith('Typo')).querySelector('button.delete').click(); return true;",
        vec![],
    )
    .await
    .expect("script");
    until_texts(&b, "#rules tbody tr", |t| t.len() == 1).await;
    let (_, rules) = h.get_json(OP_ACME, "/api/v1/notification-rules", &[]).await;
    assert_eq!(rules["rules"].as_array().map(Vec::len), Some(1), "{rules}");
    assert_eq!(rules["rules"][0]["severity"], "critical", "{rules}");
    b.close().await;

    // Every page at a phone's width: no sideways scrolling.
    let phone = Browser::open(&driver, 390, 844).await.expect("browser");
    sign_in(&phone, &h, OP_ACME).await;
    for (page, ready) in [
        ("pipes", "#pipes"),
        ("pipe?source=node-1&pipe=orders", "#pipe-summary"),
        ("alerts", "#alerts"),
        ("rules", "#rules"),
        ("rule-new", "#rule-form"),
        ("notifications", "#no-notifications, #notifications"),
        ("sources", "#sources"),
    ] {
        phone
            .goto(&h.url(&format!("/ui/#{page}")))
            .await
            .expect("goto");
        shows(&phone, ready).await;
        let fits = phone
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
                vec![],
            )
            .await
            .expect("script");
        assert_eq!(fits, Value::Bool(true), "{page}: sideways scrolling");
    }
    shot(&phone, "sources-phone").await;
    phone.close().await;

    // Another subscription's operator sees none of it.
    let other = Browser::open(&driver, 1280, 800).await.expect("browser");
    sign_in(&other, &h, OP_BETA).await;
    other.goto(&h.url("/ui/#pipes")).await.expect("goto");
    let rows = until_texts(&other, "#pipes tbody tr", |t| t.len() == 1).await;
    assert!(rows[0].contains("ledger"), "{rows:?}");
    other.goto(&h.url("/ui/#rules")).await.expect("goto");
    other
        .wait_for("#no-rules", Duration::from_secs(10))
        .await
        .expect("no rules");
    other.goto(&h.url("/ui/#alerts")).await.expect("goto");
    other
        .wait_for("#no-alerts", Duration::from_secs(10))
        .await
        .expect("no alerts");
    other
        .goto(&h.url("/ui/#pipe?source=node-1&pipe=orders"))
        .await
        .expect("goto");
    other
        .wait_for("#pipe-rules-none", Duration::from_secs(10))
        .await
        .expect("acme's rules hidden");
    assert!(other.find("#failure-reason").await.expect("find").is_none());
    shot(&other, "other-subscription").await;
    other.close().await;
    h.stop().await;
}

#[tokio::test]
async fn the_pipes_api_answers_runs_per_pipe_within_bounds_and_scope() {
    use schemas::EventType::{PumpCompleted, PumpFailed, PumpStarted};
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start(dir.path()).await;
    let t0 = now() - 300 * S;
    let mut recs = Vec::new();
    for i in 0..40u64 {
        let event = if i % 10 == 9 {
            PumpFailed
        } else {
            PumpCompleted
        };
        recs.push(exec_record(
            "acme",
            "node-1",
            2 * i + 1,
            t0 + (2 * i as i64) * S,
            "orders",
            PumpStarted,
            None,
        ));
        recs.push(exec_record(
            "acme",
            "node-1",
            2 * i + 2,
            t0 + (2 * i as i64 + 1) * S,
            "orders",
            event,
            Some(i),
        ));
    }
    // crm failed once, long before its last ten runs.
    recs.push(exec_record(
        "acme", "node-1", 100, t0, "crm", PumpFailed, None,
    ));
    for i in 0..10u64 {
        recs.push(exec_record(
            "acme",
            "node-1",
            101 + i,
            t0 + (200 + i as i64) * S,
            "crm",
            PumpCompleted,
            Some(i),
        ));
    }
    recs.push(exec_record(
        "acme",
        "node-1",
        81,
        t0 + 100 * S,
        "orders",
        PumpStarted,
        None,
    ));
    h.ingest_ok(SHIP_ACME, &batch("acme", "node-1", recs)).await;
    let beta = vec![exec_record(
        "beta", "node-9", 1, t0, "ledger", PumpFailed, None,
    )];
    h.ingest_ok(SHIP_BETA, &batch("beta", "node-9", beta)).await;

    let (status, v) = h.get_json(OP_ACME, "/api/v1/pipes", &[("runs", "5")]).await;
    assert_eq!(status, 200, "{v}");
    let pipes = v["pipes"].as_array().expect("pipes");
    assert_eq!(pipes.len(), 2, "acme's pipes only: {v}");
    let crm = &pipes[0];
    assert_eq!(crm["pipe"], "crm");
    assert_eq!(crm["status"], "completed");
    assert_eq!(crm["runs_in_range"], 11);
    assert_eq!(crm["failures_in_range"], 1);
    assert_eq!(crm["runs"][0]["changes"], 9);
    assert!(crm["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .all(|r| r["status"] == "completed"));
    assert_eq!(
        crm["last_failure"]["reason"], "connection timeout talking to crm",
        "the last failure, older than the runs shown: {crm}"
    );
    let p = &pipes[1];
    assert_eq!(p["pipe"], "orders");
    assert_eq!(p["status"], "running", "a start after the last finish");
    assert_eq!(p["runs_in_range"], 40);
    assert_eq!(p["failures_in_range"], 4);
    let runs = p["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 5, "the newest five");
    assert_eq!(runs[0]["changes"], 39, "newest first");
    assert_eq!(runs[0]["status"], "failed");
    assert_eq!(
        p["last_failure"]["reason"],
        "connection timeout talking to crm"
    );
    // Narrowed to a pipe that is not there: nothing.
    let (_, v) = h
        .get_json(
            OP_ACME,
            "/api/v1/pipes",
            &[("source", "node-1"), ("pipe", "ledger")],
        )
        .await;
    assert_eq!(v["pipes"], serde_json::json!([]));
    // An admin sees both subscriptions' pipes, and may narrow to one.
    let (_, v) = h.get_json(ADMIN, "/api/v1/pipes", &[]).await;
    assert_eq!(v["pipes"].as_array().map(Vec::len), Some(3), "{v}");
    let (_, v) = h
        .get_json(ADMIN, "/api/v1/pipes", &[("subscription", "beta")])
        .await;
    assert_eq!(v["pipes"][0]["pipe"], "ledger", "{v}");
    // Bounds, each named.
    let long = "x".repeat(300);
    for (k, val) in [
        ("runs", "0"),
        ("runs", "201"),
        ("source", long.as_str()),
        ("pipe", ""),
        ("since", "soon"),
    ] {
        let (status, v) = h.get_json(OP_ACME, "/api/v1/pipes", &[(k, val)]).await;
        assert_eq!(status, 400, "{k}={val}: {v}");
        assert_eq!(v["field"], k, "{v}");
    }
    // Rules that apply to a pipe need its source.
    let (status, v) = h
        .get_json(OP_ACME, "/api/v1/notification-rules", &[("pipe", "orders")])
        .await;
    assert_eq!(status, 400);
    assert_eq!(v["field"], "source");
    // Shippers may not read it.
    let (status, _) = h.get_json(SHIP_ACME, "/api/v1/pipes", &[]).await;
    assert_eq!(status, 403);
    h.stop().await;
}

//! The node and the stack against hostile and careless surroundings, with
//! the real binaries:
//! - `sesam-stack` keeps its data private (directories 0700, every file it
//!   writes 0600, RocksDB's files too), tightens broader modes left by an
//!   earlier start, and its node API refuses requests without the node API
//!   token it generated (reused on restart), except `/api/health` and
//!   `/api/ping`; the metrics agent scrapes the node with that token;
//! - `sesam-node` answers `/api/health` 200 while a pipe fails (degraded)
//!   and 503 once its outbox refuses appends (failed);
//! - `sesam-node`'s bounds are flags, and requests over them are refused
//!   with a 4xx naming the field and the limit, and counted by reason.

use std::path::Path;
use std::time::Duration;

use e2e::node::{failing_pipe_config, Node};
use e2e::process::{bin, free_port, metric_sum, until, Service};
use serde_json::{json, Value};

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file and directory under `dir` is private to its user.
fn assert_private_tree(dir: &Path) -> usize {
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        let m = mode(&p);
        assert_eq!(m & 0o077, 0, "{} is mode {m:o}", p.display());
        checked += 1;
        if p.is_dir() {
            checked += assert_private_tree(&p);
        }
    }
    checked
}

struct Stack {
    service: Service,
    data: std::path::PathBuf,
    node: String,
    collector: String,
    args: Vec<String>,
}

impl Stack {
    fn new(root: &Path) -> Stack {
        let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
        let data = root.join("data");
        Stack {
            service: Service::new("sesam-stack", root.join("stack.log")),
            node: format!("http://127.0.0.1:{}", ports[1]),
            collector: format!("http://127.0.0.1:{}", ports[0]),
            args: vec![
                "--data-dir".into(),
                data.display().to_string(),
                "--collector-listen".into(),
                format!("127.0.0.1:{}", ports[0]),
                "--node-listen".into(),
                format!("127.0.0.1:{}", ports[1]),
                "--agent-listen".into(),
                format!("127.0.0.1:{}", ports[2]),
                "--demo-listen".into(),
                format!("127.0.0.1:{}", ports[3]),
                "--metrics-interval".into(),
                "1s".into(),
            ],
            data,
        }
    }

    async fn start(&mut self) {
        let mut cmd = std::process::Command::new(bin("sesam-stack"));
        cmd.args(&self.args).env("RUST_LOG", "info");
        let banners = |log: &Path| {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            text.matches("sesam-stack is running").count()
        };
        let log = self.service.log_path().to_path_buf();
        let before = banners(&log);
        self.service.spawn(cmd);
        let printed = || std::future::ready(banners(&log) > before);
        self.service
            .wait_ready(Duration::from_secs(90), printed)
            .await;
    }

    fn stop(&mut self) {
        self.service.stop_within(Duration::from_secs(60));
    }

    fn node_token(&self) -> String {
        std::fs::read_to_string(self.data.join("node-api.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn log_text(&self) -> String {
        self.service.log_text()
    }
}

const STACK_FILES: [&str; 7] = [
    "tokens.toml",
    "shipper.token",
    "operator.token",
    "admin.token",
    "node-api.token",
    "rules.toml",
    "node-config.json",
];

fn assert_stack_private(data: &Path) {
    assert_eq!(mode(data), 0o700, "{}", data.display());
    for d in [
        "collector",
        "node",
        "node/node",
        "node/outbox",
        "checkpoints",
    ] {
        assert_eq!(mode(&data.join(d)), 0o700, "{d}");
    }
    for f in STACK_FILES {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    // RocksDB's own files too (the process umask is 0077).
    let n = assert_private_tree(data);
    assert!(n > 20, "only {n} paths checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_keeps_its_files_private_and_its_node_api_closed() {
    let dir = e2e::scratch();
    let mut stack = Stack::new(dir.path());
    stack.start().await;
    assert_stack_private(&stack.data);
    let token = stack.node_token();
    assert!(token.starts_with("snt_") && token.len() == 68, "{token}");
    assert!(
        stack.log_text().contains(&token),
        "the banner prints the node API token"
    );

    let http = reqwest::Client::new();
    let pipes = format!("{}/api/pipes", stack.node);
    let r = http.get(&pipes).send().await.unwrap();
    assert_eq!(r.status(), 401, "the node API is closed without its token");
    let r = http.get(&pipes).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http.get(&pipes).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let list: Value = r.json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 4, "{list}");
    for open in ["/api/health", "/api/ping"] {
        let r = http
            .get(format!("{}{open}", stack.node))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{open} stays open");
    }
    // The agent scrapes the node's metrics with the token: they reach the
    // collector's federation.
    let operator = std::fs::read_to_string(stack.data.join("operator.token"))
        .unwrap()
        .trim()
        .to_string();
    let fed = format!(
        "{}/federate?match[]=%7B__name__%3D%22sesam_pump_started_total%22%7D",
        stack.collector
    );
    until(
        "the node's scraped metrics in /federate",
        Duration::from_secs(60),
        || {
            let (http, fed, operator) = (http.clone(), fed.clone(), operator.clone());
            async move {
                let text = http
                    .get(&fed)
                    .bearer_auth(&operator)
                    .send()
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                text.contains("sesam_pump_started_total{").then_some(())
            }
        },
    )
    .await;
    stack.stop();

    // Modes loosened by hand (or by an older version) are tightened at the
    // next start; the token is reused.
    {
        use std::os::unix::fs::PermissionsExt;
        let open = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        open(&stack.data, 0o755);
        open(&stack.data.join("node"), 0o755);
        for f in STACK_FILES {
            open(&stack.data.join(f), 0o644);
        }
    }
    stack.start().await;
    for f in STACK_FILES {
        assert_eq!(mode(&stack.data.join(f)), 0o600, "{f} after restart");
    }
    assert_eq!(mode(&stack.data), 0o700);
    assert_eq!(mode(&stack.data.join("node")), 0o700);
    assert_eq!(stack.node_token(), token, "the node API token is reused");
    let r = http.get(&pipes).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    stack.stop();
}

fn node_with_token(root: &Path, config: &Value) -> (Node, String) {
    let node = Node::new(root, "hostile-node", "hostile", config);
    let token_file = root.join("api.token");
    std::fs::write(&token_file, "hostile-api-token\n").unwrap();
    (node, token_file.display().to_string())
}

async fn start_pump(http: &reqwest::Client, node_url: &str, pipe: &str) -> u16 {
    http.post(format!("{node_url}/api/pipes/{pipe}/pump"))
        .bearer_auth("hostile-api-token")
        .form(&[("operation", "start")])
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn health(http: &reqwest::Client, node_url: &str) -> (u16, Value) {
    let r = http
        .get(format!("{node_url}/api/health"))
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_health_is_200_when_degraded_and_503_when_it_cannot_work() {
    let dir = e2e::scratch();
    let (mut node, token_file) = node_with_token(dir.path(), &failing_pipe_config("orders"));
    node.start(&[
        "--api-token-file".into(),
        token_file,
        "--outbox-max-records".into(),
        "60".into(),
        "--outbox-block-timeout".into(),
        "200ms".into(),
        "--health-min-interval".into(),
        "0s".into(),
        "--health-interval".into(),
        "1h".into(),
    ])
    .await;
    // The binary's own files are private too.
    assert_eq!(mode(&node.data_dir), 0o700);
    assert_private_tree(&node.data_dir);

    let http = reqwest::Client::new();
    let (code, body) = health(&http, &node.url).await;
    assert_eq!((code, body["status"].as_str()), (200, Some("ok")), "{body}");
    assert_eq!(start_pump(&http, &node.url, "orders").await, 200);
    let (code, body) = until(
        "the failing pipe to degrade health",
        Duration::from_secs(20),
        || {
            let (http, url) = (http.clone(), node.url.clone());
            async move {
                let (code, body) = health(&http, &url).await;
                (body["status"] == "degraded").then_some((code, body))
            }
        },
    )
    .await;
    assert_eq!(code, 200, "degraded is still in service: {body}");

    // Nothing drains the outbox (no collector): runs fill it until appends
    // are refused; then the node cannot work and says so with 503.
    let (code, body) = until(
        "the outbox to refuse appends",
        Duration::from_secs(60),
        || {
            let (http, url) = (http.clone(), node.url.clone());
            async move {
                start_pump(&http, &url, "orders").await;
                let (code, body) = health(&http, &url).await;
                (body["status"] == "failed").then_some((code, body))
            }
        },
    )
    .await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "outbox" && c["status"] == "failed"),
        "{body}"
    );
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_bounds_are_flags_and_refusals_name_field_and_limit() {
    let dir = e2e::scratch();
    let config = json!([
        {"_id": "many", "type": "pipe", "source": {"type": "embedded",
         "entities": (0..20).map(|i| json!({"_id": format!("e{i}")})).collect::<Vec<_>>()},
         "pump": {"mode": "manual"}}
    ]);
    let (mut node, token_file) = node_with_token(dir.path(), &config);
    node.start(&[
        "--api-token-file".into(),
        token_file,
        "--max-page-entities".into(),
        "5".into(),
        "--max-config-bytes".into(),
        "2048".into(),
        "--max-config-entities".into(),
        "2".into(),
        "--max-secrets-bytes".into(),
        "1024".into(),
        "--max-secrets".into(),
        "1".into(),
    ])
    .await;
    let http = reqwest::Client::new();
    let t = "hostile-api-token";
    assert_eq!(start_pump(&http, &node.url, "many").await, 200);
    let get = |path: String| {
        let http = http.clone();
        async move {
            let r = http.get(path).bearer_auth(t).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (code, body) = get(format!("{}/api/pipes/many/log?limit=6", node.url)).await;
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("limit")),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--max-page-entities"),
        "{body}"
    );
    let (code, body) = get(format!("{}/api/pipes/many/log?since=x", node.url)).await;
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("since")),
        "{body}"
    );

    let send = |method: reqwest::Method, path: &str, body: Vec<u8>| {
        let req = http
            .request(method, format!("{}{path}", node.url))
            .bearer_auth(t)
            .header("content-type", "application/json")
            .body(body);
        async move {
            let r = req.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let big = json!([{"_id": "x", "type": "pipe", "source": {"type": "embedded", "entities": [{"_id": "a", "pad": "p".repeat(3000)}]}}]);
    let (code, body) = send(
        reqwest::Method::PUT,
        "/api/config",
        big.to_string().into_bytes(),
    )
    .await;
    assert_eq!(
        (code, body["field"].as_str()),
        (413, Some("body")),
        "{body}"
    );
    assert!(body["error"].as_str().unwrap().contains("2048"), "{body}");
    let three = json!([
        {"_id": "a", "type": "metadata"},
        {"_id": "b", "type": "system:url", "base_url": "http://127.0.0.1:1"},
        {"_id": "c", "type": "system:url", "base_url": "http://127.0.0.1:1"}
    ]);
    let (code, body) = send(
        reqwest::Method::PUT,
        "/api/config",
        three.to_string().into_bytes(),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--max-config-entities"),
        "{body}"
    );
    let (code, body) = send(
        reqwest::Method::PUT,
        "/api/secrets",
        json!({"a": "1", "b": "2"}).to_string().into_bytes(),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("--max-secrets"),
        "{body}"
    );
    let (code, body) = send(
        reqwest::Method::PUT,
        "/api/secrets",
        json!({"a": "v".repeat(2000)}).to_string().into_bytes(),
    )
    .await;
    assert_eq!(
        (code, body["field"].as_str()),
        (413, Some("body")),
        "{body}"
    );
    // Malformed JSON and a non-object are 400s, never 5xx.
    let (code, _) = send(reqwest::Method::PUT, "/api/secrets", b"{\"a\": ".to_vec()).await;
    assert_eq!(code, 400);
    let (code, _) = send(reqwest::Method::PUT, "/api/config", b"\x00\xff".to_vec()).await;
    assert_eq!(code, 400);

    let metrics = http
        .get(format!("{}/api/metrics", node.url))
        .bearer_auth(t)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric_sum(&metrics, "sesam_node_api_refused_total").unwrap_or(0.0) >= 7.0,
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"limit_too_large\""), "{metrics}");
    assert!(metrics.contains("reason=\"body_too_large\""), "{metrics}");
    node.stop();
}

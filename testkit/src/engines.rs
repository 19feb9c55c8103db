//! The real engines from Debian's packages (installed by `scripts/setup.sh`),
//! started by tests on free loopback ports with throw-away data directories,
//! never as system services:
//!
//! - [`ClickHouse`]: `clickhouse-server` (18.16 on Debian 12), optionally a
//!   replica of a shard coordinated by ZooKeeper, with a cluster definition
//!   for `Distributed` tables;
//! - [`ZooKeeper`]: a standalone `zookeeper` 3.8 server (Java);
//! - [`VictoriaMetrics`]: single-node `victoria-metrics` with the instant
//!   query latency offset turned down so tests need not sleep 30 s;
//! - [`ChromeDriver`]: `chromedriver` for WebDriver tests of headless
//!   `chromium`.
//!
//! Every engine is a [`Proc`]: killed when dropped, and also watched by a
//! small shell watchdog that kills it when the test process is gone (a test
//! binary that keeps an engine in a `static` never runs its destructor), so
//! nothing outlives the test run. `start` answers `Err` with the reason when
//! the engine's package is missing or it does not come up; tests turn that
//! into a loud skip with [`skip`] only where the machine cannot run it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{free_port, Proc};

/// Prints a loud skip notice (visible with `--nocapture` and in CI logs).
pub fn skip(test: &str, why: &str) {
    eprintln!("\n*** SKIPPED {test}: {why} ***\n");
}

/// Kills `pid` once this (test) process has exited, checking twice a second.
fn watchdog(pid: u32) {
    let me = std::process::id();
    let script =
        format!("while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -9 {pid} 2>/dev/null");
    let _ = Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

fn spawn_watched(name: &str, cmd: Command, log: &Path) -> Proc {
    let p = Proc::spawn(name, cmd, log);
    watchdog(p.pid());
    p
}

/// A minimal blocking HTTP/1.1 request (`Connection: close`) for readiness
/// checks and simple queries: `(status, body)`.
pub fn http(
    method: &str,
    addr: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .map_err(|e| format!("send to {addr}: {e}"))?;
    // Read until the answer is complete: by Content-Length, by the last
    // chunk, or by the peer closing (servers need not honour `close`).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        if let Some(done) = complete(&raw) {
            raw.truncate(done);
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read from {addr}: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer from {addr}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line from {addr}: {head:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

/// The length of a complete HTTP answer at the start of `raw`, if it is
/// complete.
fn complete(raw: &[u8]) -> Option<usize> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    for line in head.lines() {
        if let Some(v) = line.strip_prefix("content-length:") {
            let n: usize = v.trim().parse().ok()?;
            return (raw.len() >= head_end + n).then_some(head_end + n);
        }
        if line.starts_with("transfer-encoding:") && line.contains("chunked") {
            return raw[head_end..]
                .windows(5)
                .position(|w| w == b"0\r\n\r\n")
                .map(|p| head_end + p + 5);
        }
    }
    None
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `ready` every 100 ms until it holds or `timeout` passes; on a
/// timeout (or the process exiting) answers the log's tail as the reason.
fn wait_until(
    p: &mut Proc,
    what: &str,
    timeout: Duration,
    ready: impl Fn() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        if let Some(status) = p.exited() {
            return Err(format!(
                "{what} exited ({status}) while starting; its log ends with:\n{}",
                p.log_tail(20)
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{what} did not come up within {timeout:?}; its log ends with:\n{}",
                p.log_tail(20)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn require(bin: &str, package: &str) -> Result<(), String> {
    if Path::new(bin).is_file() {
        Ok(())
    } else {
        Err(format!(
            "{bin} not found: install Debian's {package} (./scripts/setup.sh)"
        ))
    }
}

// ---------------------------------------------------------------- ZooKeeper

const ZK_SCRIPT: &str = "/usr/share/zookeeper/bin/zkServer.sh";

/// A standalone ZooKeeper server on a free loopback port.
#[derive(Debug)]
pub struct ZooKeeper {
    proc: Proc,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub port: u16,
}

impl ZooKeeper {
    /// Starts a server with its data under a new temporary directory.
    pub fn start() -> Result<ZooKeeper, String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = tmp.path().to_path_buf();
        let mut zk = ZooKeeper::start_in(&dir, free_port())?;
        zk._tmp = Some(tmp);
        Ok(zk)
    }

    fn start_in(dir: &Path, port: u16) -> Result<ZooKeeper, String> {
        require(ZK_SCRIPT, "zookeeper")?;
        std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
        let cfg = format!(
            "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\n\
             clientPortAddress=127.0.0.1\nadmin.enableServer=false\n\
             4lw.commands.whitelist=ruok,srvr,mntr\nmaxSessionTimeout=60000\nminSessionTimeout=1000\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("zoo.cfg"), cfg).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(ZK_SCRIPT);
        cmd.arg("start-foreground")
            .arg(dir.join("zoo.cfg"))
            .env("ZOOCFGDIR", dir)
            .env("ZOO_LOG_DIR", dir)
            .env("JVMFLAGS", "-Xmx256m -XX:+UseSerialGC");
        let mut proc = spawn_watched("zookeeper", cmd, &dir.join("zookeeper.log"));
        let addr = format!("127.0.0.1:{port}");
        wait_until(&mut proc, "zookeeper", Duration::from_secs(60), || {
            four_letter(&addr, "ruok").is_ok_and(|a| a == "imok")
        })?;
        Ok(ZooKeeper {
            proc,
            dir: dir.to_path_buf(),
            _tmp: None,
            port,
        })
    }

    /// `127.0.0.1:PORT`
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) -> Result<(), String> {
        self.proc.kill();
        let tmp = self._tmp.take();
        let mut again = ZooKeeper::start_in(&self.dir, self.port)?;
        again._tmp = tmp;
        *self = again;
        Ok(())
    }
}

/// Sends a ZooKeeper four-letter command and answers the reply.
pub fn four_letter(addr: &str, cmd: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.write_all(cmd.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

// --------------------------------------------------------------- ClickHouse

const CLICKHOUSE: &str = "/usr/sbin/clickhouse-server";

/// How a [`ClickHouse`] server is set up.
#[derive(Debug, Clone, Default)]
pub struct ClickHouseOptions {
    /// ZooKeeper `host:port` for replicated tables.
    pub zookeeper: Option<String>,
    /// `{shard}` and `{replica}` macros of this server.
    pub shard: Option<String>,
    pub replica: Option<String>,
    /// A cluster named `sesam` for `Distributed` tables: shards, each a list
    /// of replicas' native (TCP) ports on 127.0.0.1.
    pub cluster: Vec<Vec<u16>>,
    /// Fixed ports (`http`, `tcp`, `interserver`); free ones when `None`.
    pub ports: Option<(u16, u16, u16)>,
    /// A password for the `default` user (none when `None`).
    pub password: Option<String>,
}

/// A `clickhouse-server` on free loopback ports.
#[derive(Debug)]
pub struct ClickHouse {
    proc: Proc,
    dir: PathBuf,
    opts: ClickHouseOptions,
    _tmp: Option<tempfile::TempDir>,
    pub http_port: u16,
    pub tcp_port: u16,
    pub interserver_port: u16,
}

impl ClickHouse {
    /// Starts a server with its data under a new temporary directory.
    pub fn start(opts: ClickHouseOptions) -> Result<ClickHouse, String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = tmp.path().to_path_buf();
        let ports = opts
            .ports
            .unwrap_or_else(|| (free_port(), free_port(), free_port()));
        let mut ch = ClickHouse::start_in(
            &dir,
            ClickHouseOptions {
                ports: Some(ports),
                ..opts
            },
        )?;
        ch._tmp = Some(tmp);
        Ok(ch)
    }

    /// The ports a server will take, chosen before it starts (for cluster
    /// definitions that name each other).
    pub fn reserve_ports() -> (u16, u16, u16) {
        (free_port(), free_port(), free_port())
    }

    fn start_in(dir: &Path, opts: ClickHouseOptions) -> Result<ClickHouse, String> {
        require(CLICKHOUSE, "clickhouse-server")?;
        let (http_port, tcp_port, interserver_port) =
            opts.ports.ok_or("ClickHouse ports not chosen")?;
        for sub in ["data", "tmp", "user_files", "format_schemas"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
        }
        let mut extra = String::new();
        if let Some(zk) = &opts.zookeeper {
            let (host, port) = zk.rsplit_once(':').ok_or("zookeeper must be host:port")?;
            extra += &format!(
                "<zookeeper><node><host>{host}</host><port>{port}</port></node>\
                 <session_timeout_ms>6000</session_timeout_ms></zookeeper>\n"
            );
        }
        if opts.shard.is_some() || opts.replica.is_some() {
            extra += &format!(
                "<macros><shard>{}</shard><replica>{}</replica></macros>\n",
                opts.shard.as_deref().unwrap_or("01"),
                opts.replica.as_deref().unwrap_or("r1")
            );
        }
        if !opts.cluster.is_empty() {
            extra += "<remote_servers><sesam>";
            for shard in &opts.cluster {
                extra += "<shard><internal_replication>true</internal_replication>";
                for port in shard {
                    extra += &format!(
                        "<replica><host>127.0.0.1</host><port>{port}</port>{}</replica>",
                        opts.password
                            .as_ref()
                            .map(|p| format!("<password>{p}</password>"))
                            .unwrap_or_default()
                    );
                }
                extra += "</shard>";
            }
            extra += "</sesam></remote_servers>\n";
        }
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><console>1</console></logger>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <interserver_http_port>{interserver_port}</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <listen_host>127.0.0.1</listen_host>
    <path>{d}/data/</path>
    <tmp_path>{d}/tmp/</tmp_path>
    <user_files_path>{d}/user_files/</user_files_path>
    <format_schema_path>{d}/format_schemas/</format_schema_path>
    <mark_cache_size>67108864</mark_cache_size>
    <uncompressed_cache_size>67108864</uncompressed_cache_size>
    <max_concurrent_queries>50</max_concurrent_queries>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mlock_executable>false</mlock_executable>
    {extra}
</yandex>
"#,
            d = dir.display()
        );
        let users = format!(
            r#"<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
    <users><default><password>{}</password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"#,
            opts.password.as_deref().unwrap_or("")
        );
        std::fs::write(dir.join("config.xml"), config).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("users.xml"), users).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(CLICKHOUSE);
        cmd.arg(format!(
            "--config-file={}",
            dir.join("config.xml").display()
        ))
        .current_dir(dir);
        let mut proc = spawn_watched("clickhouse", cmd, &dir.join("clickhouse.log"));
        let addr = format!("127.0.0.1:{http_port}");
        wait_until(
            &mut proc,
            "clickhouse-server",
            Duration::from_secs(60),
            || {
                http("GET", &addr, "/ping", b"", Duration::from_secs(2))
                    .is_ok_and(|(s, b)| s == 200 && b.starts_with("Ok"))
            },
        )?;
        Ok(ClickHouse {
            proc,
            dir: dir.to_path_buf(),
            opts,
            _tmp: None,
            http_port,
            tcp_port,
            interserver_port,
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Runs `sql` over HTTP (POST body) and answers the text, or the
    /// server's error.
    pub fn query(&self, sql: &str) -> Result<String, String> {
        let addr = format!("127.0.0.1:{}", self.http_port);
        let path = match &self.opts.password {
            Some(p) => format!("/?user=default&password={p}"),
            None => "/".to_string(),
        };
        let (status, body) = http(
            "POST",
            &addr,
            &path,
            sql.as_bytes(),
            Duration::from_secs(60),
        )?;
        if status == 200 {
            Ok(body)
        } else {
            Err(format!("ClickHouse answered {status}: {}", body.trim()))
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) -> Result<(), String> {
        self.proc.kill();
        let tmp = self._tmp.take();
        let mut again = ClickHouse::start_in(&self.dir, self.opts.clone())?;
        again._tmp = tmp;
        *self = again;
        Ok(())
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.proc.log_tail(n)
    }
}

// ---------------------------------------------------------- VictoriaMetrics

const VICTORIA_METRICS: &str = "/usr/bin/victoria-metrics";

/// A single-node `victoria-metrics` on a free loopback port.
#[derive(Debug)]
pub struct VictoriaMetrics {
    proc: Proc,
    _tmp: tempfile::TempDir,
    pub port: u16,
}

impl VictoriaMetrics {
    /// Starts a server with a new temporary storage directory. Instant
    /// queries see samples at most 1 s old (`-search.latencyOffset=1s`
    /// instead of the default 30 s), so tests query without sleeping.
    pub fn start() -> Result<VictoriaMetrics, String> {
        require(VICTORIA_METRICS, "victoria-metrics")?;
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port();
        let mut cmd = Command::new(VICTORIA_METRICS);
        cmd.arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!(
                "-storageDataPath={}",
                tmp.path().join("data").display()
            ))
            .arg("-search.latencyOffset=1s")
            .arg("-search.disableCache")
            .arg("-loggerLevel=WARN")
            .arg("-memory.allowedPercent=10");
        let mut proc = spawn_watched(
            "victoria-metrics",
            cmd,
            &tmp.path().join("victoria-metrics.log"),
        );
        let addr = format!("127.0.0.1:{port}");
        wait_until(
            &mut proc,
            "victoria-metrics",
            Duration::from_secs(30),
            || {
                http("GET", &addr, "/health", b"", Duration::from_secs(2))
                    .is_ok_and(|(s, _)| s == 200)
            },
        )?;
        Ok(VictoriaMetrics {
            proc,
            _tmp: tmp,
            port,
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

// ------------------------------------------------------------- ChromeDriver

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// `chromedriver` on a free loopback port, for WebDriver sessions of
/// headless Debian `chromium`.
#[derive(Debug)]
pub struct ChromeDriver {
    proc: Proc,
    tmp: tempfile::TempDir,
    pub port: u16,
}

impl ChromeDriver {
    pub fn start() -> Result<ChromeDriver, String> {
        require(CHROMEDRIVER, "chromium-driver")?;
        require(CHROMIUM, "chromium")?;
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!(
                "--log-path={}",
                tmp.path().join("chromedriver-verbose.log").display()
            ));
        let mut proc = spawn_watched("chromedriver", cmd, &tmp.path().join("chromedriver.log"));
        let addr = format!("127.0.0.1:{port}");
        wait_until(&mut proc, "chromedriver", Duration::from_secs(30), || {
            http("GET", &addr, "/status", b"", Duration::from_secs(2))
                .is_ok_and(|(s, b)| s == 200 && b.contains("\"ready\":true"))
        })?;
        Ok(ChromeDriver { proc, tmp, port })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// W3C capabilities for a headless Chromium of `width` x `height` that
    /// makes no connection of its own (this machine's network is closed,
    /// and the console must work without one), with a new profile.
    pub fn capabilities(&self, width: u32, height: u32) -> serde_json::Value {
        let profile = self.tmp.path().join(format!("profile-{}", free_port()));
        serde_json::json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage",
                        format!("--window-size={width},{height}"),
                        format!("--user-data-dir={}", profile.display()),
                    ]
                }
            }}
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

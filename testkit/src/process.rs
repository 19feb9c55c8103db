//! Real processes: finding the workspace's binaries, spawning them with
//! their output in a log file, SIGKILL and SIGTERM, their memory high-water
//! mark, free loopback ports, and polling until a condition holds.
//!
//! The binaries of the other packages (`sesam-collector`, `sesam-node`,
//! `sesam-shipper`, `sesam-metrics-agent`) are looked up next to the test
//! executable (`target/release/deps/..` -> `target/release/`). `cargo test
//! --workspace` builds them before running any test; when running only this
//! package, build them first: `cargo build --release --bins`.

use std::fs::OpenOptions;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The path of the workspace binary `name`: in `$SESAM_BIN_DIR` (or its
/// older name `$E2E_BIN_DIR`) when set (binaries copied aside, so that
/// builds of other checkouts sharing the target directory cannot swap them
/// during a run), else next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("SESAM_BIN_DIR").or_else(|| std::env::var_os("E2E_BIN_DIR"))
    {
        let p = Path::new(&dir).join(name);
        assert!(
            p.is_file(),
            "binary {name} not found in SESAM_BIN_DIR {}",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("path of the test executable");
    for dir in exe.ancestors().skip(1).take(3) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "binary {name} not found near {}: build the workspace binaries first \
         (`cargo build --release --bins`)",
        exe.display()
    );
}

/// A loopback port that was free a moment ago, for a child to listen on.
///
/// Taken below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), where no process's outgoing
/// connection or `bind(0)` is given a port between this check and the
/// child's `bind` (50 shippers connecting to a collector made that race
/// real), and never the same port twice in one test process.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (first, span) = (low.saturating_sub(12_000).max(1024), 12_000u16);
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    if low > first {
        let span = span.min(low - first);
        // A random start, so that test processes running at once mostly
        // pick different ports.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let start = (h.finish() % u64::from(span)) as u16;
        for i in 0..span {
            let port = first + (start + i) % span;
            if !handed.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                handed.insert(port);
                return port;
            }
        }
    }
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if handed.insert(port) {
            return port;
        }
    }
}

/// A running child process; killed (SIGKILL) when dropped, so a failing test
/// leaves nothing behind.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open log {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log handle");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `timeout` for the exit (SIGKILL and panic
    /// after that).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let Some(mut c) = self.child.take() else {
            panic!("{} is not running", self.name);
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "{} did not stop within {timeout:?} of SIGTERM; its log ends with:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the process has exited on its own.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Peak resident memory (`VmHWM` of `/proc/PID/status`) in bytes.
    pub fn vm_hwm_bytes(&self) -> Option<u64> {
        status_kib(self.pid(), "VmHWM").map(|kib| kib * 1024)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log (every start of this process appends to it).
    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        last_lines(&self.log_text(), n)
    }
}

fn read_log(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A field of `/proc/PID/status` measured in KiB (`VmHWM`, `VmRSS`,
/// `RssAnon`, ...); `None` if the process or the field is gone.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// CPU seconds (user + system) a process has used so far; 0 if it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses;
    // utime and stime are the 14th and 15th, in clock ticks (100 a second).
    let rest = &s[s.rfind(')').map_or(0, |i| i + 1)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

/// CPU time (ms) of each thread group of `pid` (threads named alike, the
/// digits of their names dropped: `query-0`, `query-1` are `query-`).
pub fn thread_cpu_ms(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    // USER_HZ is 100 on Linux.
    for t in tasks.filter_map(Result::ok) {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name: String = stat[open + 1..close]
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .collect();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // After the name: state(0) ... utime(11) stime(12).
        *out.entry(name).or_default() += (ticks(11) + ticks(12)) * 10;
    }
    // The whole process, exited threads included.
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        if let Some(close) = stat.rfind(')') {
            let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            out.insert("(total)".into(), (ticks(11) + ticks(12)) * 10);
        }
    }
    out
}

/// A workspace binary under test that is started, killed and restarted on
/// the same data directory and log, at most one process at a time (the
/// end-to-end tests' collector, node and shipper).
#[derive(Debug)]
pub struct Service {
    name: String,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Service {
    /// A stopped service whose every start appends to `log`.
    pub fn new(name: &str, log: PathBuf) -> Service {
        Service {
            name: name.to_string(),
            log,
            proc: None,
        }
    }

    /// Starts `cmd` without waiting for it; panics if it is running.
    pub fn spawn(&mut self, cmd: Command) {
        assert!(self.proc.is_none(), "{} is already running", self.name);
        self.proc = Some(Proc::spawn(&self.name, cmd, &self.log));
    }

    /// Polls `ready` every 25 ms until it says yes; panics with the log's
    /// end if the process exits first or `timeout` passes.
    pub async fn wait_ready<F, Fut>(&mut self, timeout: Duration, mut ready: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.proc.as_mut().and_then(Proc::exited) {
                panic!(
                    "{} exited at start ({status}):\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            if ready().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not up within {timeout:?}:\n{}",
                self.name,
                self.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    pub fn process(&self) -> Option<&Proc> {
        self.proc.as_ref()
    }

    pub fn process_mut(&mut self) -> Option<&mut Proc> {
        self.proc.as_mut()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// SIGTERM; the process must exit successfully within 30 s.
    pub fn stop(&mut self) {
        self.stop_within(Duration::from_secs(30));
    }

    /// SIGTERM; the process must exit successfully within `timeout`.
    pub fn stop_within(&mut self, timeout: Duration) {
        if let Some(mut p) = self.proc.take() {
            let status = p.terminate(timeout);
            assert!(
                status.success(),
                "{} exited with {status} on SIGTERM:\n{}",
                self.name,
                self.log_tail(30)
            );
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log, every start's output.
    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        last_lines(&self.log_text(), n)
    }
}

/// Polls `url` until it answers 2xx; panics naming `what` after `timeout`.
pub async fn wait_http_ok(client: &reqwest::Client, url: &str, what: &str, timeout: Duration) {
    let ok = || async {
        client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
            .then_some(())
    };
    until(&format!("{what} to answer at {url}"), timeout, ok).await
}

/// Polls `f` every 50 ms until it returns `Some`, or panics naming `what`
/// after `timeout`.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sums the samples of metric `name` (any labels) in a Prometheus /
/// OpenMetrics text exposition; `None` if there are none.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// A tmpfs mounted for the lifetime of the value (unmounted on drop).
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `16m`) on `dir` (created if missing).
    /// `Err` with the reason when the machine refuses (not root, no
    /// `mount`, a container without the capability).
    pub fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    /// Changes the size of the mounted filesystem (space returns).
    pub fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .status()
            .expect("run mount -o remount");
        assert!(status.success(), "remount {} failed", self.dir.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it (a process killed a moment ago): detach.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

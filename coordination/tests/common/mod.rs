//! Helpers shared by the coordination tests: a ZooKeeper per test binary,
//! coordinators on their own chroot, and the *recorder*: every ownership
//! change of every coordinator with its timestamp, plus a sampler of
//! `is_owner` on all of them, so a test can assert that no subscription
//! ever had two owners.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use coordination::{CoordinationUrl, Coordinator, CoordinatorConfig, Ownership};
use testkit::engines::ZooKeeper;

pub const SESSION: Duration = Duration::from_secs(4);

/// The ZooKeeper shared by the tests of one binary (started once; killed
/// by testkit's watchdog when the binary exits).
pub fn shared_zk() -> &'static Mutex<ZooKeeper> {
    static ZK: OnceLock<Mutex<ZooKeeper>> = OnceLock::new();
    ZK.get_or_init(|| {
        Mutex::new(
            ZooKeeper::start()
                .expect("start ZooKeeper (install Debian's zookeeper: scripts/setup.sh)"),
        )
    })
}

pub fn zk_address() -> String {
    let zk = shared_zk();
    let a = tokio::task::block_in_place(|| zk.lock().unwrap().address());
    a
}

/// A URL with a chroot unique to `test`.
pub fn url(test: &str) -> CoordinationUrl {
    CoordinationUrl::parse(&format!("zookeeper://{}/sesam-test/{test}", zk_address())).unwrap()
}

pub fn config(url: &CoordinationUrl, id: &str) -> CoordinatorConfig {
    let mut cfg = CoordinatorConfig::new(url.clone(), id);
    cfg.session_timeout = SESSION;
    cfg.advertised_url = format!("http://{id}.test:8080");
    cfg
}

pub fn subs(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("sub-{i}")).collect()
}

pub async fn start(url: &CoordinationUrl, id: &str, subscriptions: &[String]) -> Coordinator {
    let c = Coordinator::start(config(url, id))
        .await
        .expect("start coordinator");
    c.set_subscriptions(subscriptions.iter().cloned()).unwrap();
    c
}

/// Waits until the coordinators together own `expected` exactly once each
/// (and nothing else); answers subscription -> (member index, epoch).
/// (each by its designated member among `coords`, by rendezvous).
pub async fn until_shared(
    what: &str,
    coords: &[&Coordinator],
    expected: &[String],
    timeout: Duration,
) -> BTreeMap<String, (usize, u64)> {
    let ids: Vec<String> = coords.iter().map(|c| c.member_id().to_string()).collect();
    testkit::until(what, timeout, || async {
        let mut all = BTreeMap::new();
        for (i, c) in coords.iter().enumerate() {
            for (s, e) in c.owned() {
                if all.insert(s, (i, e)).is_some() {
                    return None;
                }
            }
        }
        let settled = all.len() == expected.len()
            && expected.iter().all(|s| {
                all.get(s).is_some_and(|(i, _)| {
                    coordination::rendezvous::owner(s, ids.iter().map(String::as_str))
                        == Some(ids[*i].as_str())
                })
            });
        settled.then_some(all)
    })
    .await
}

/// A running `is_owner` sampler; [`Sampler::stop`] ends it and lets go of
/// the coordinators.
pub struct Sampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

#[derive(Clone, Debug)]
pub struct Event {
    pub member: String,
    pub ev: Ownership,
}

/// Records every change of the coordinators it is given, and samples
/// `is_owner` of all of them every millisecond.
#[derive(Clone, Default)]
pub struct Recorder {
    events: Arc<Mutex<Vec<Event>>>,
    violations: Arc<Mutex<Vec<String>>>,
    samples: Arc<AtomicUsize>,
}

impl Recorder {
    pub fn watch(&self, c: &Coordinator) {
        let mut changes = c.changes();
        let member = c.member_id().to_string();
        let events = self.events.clone();
        tokio::spawn(async move {
            while let Some(ev) = changes.next().await {
                events.lock().unwrap().push(Event {
                    member: member.clone(),
                    ev,
                });
            }
        });
    }

    /// Samples `is_owner` for `subs` on `coords` until `stop` is dropped.
    pub fn sample(&self, coords: Vec<Arc<Coordinator>>, subs: Vec<String>) -> Sampler {
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let violations = self.violations.clone();
        let samples = self.samples.clone();
        let task = tokio::spawn(async move {
            loop {
                for s in &subs {
                    let owners: Vec<(String, u64)> = coords
                        .iter()
                        .filter_map(|c| c.is_owner(s).map(|e| (c.member_id().to_string(), e)))
                        .collect();
                    if owners.len() > 1 {
                        violations
                            .lock()
                            .unwrap()
                            .push(format!("{s} owned by {owners:?} at once"));
                    }
                }
                samples.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                    _ = &mut rx => return,
                }
            }
        });
        Sampler { stop: tx, task }
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Asserts that no subscription was owned by two members at once (by
    /// the published changes, in the order of their timestamps, and by the
    /// sampler), and that each subscription's epochs only grew.
    pub fn assert_never_two_owners(&self) {
        let v = self.violations.lock().unwrap().clone();
        assert!(v.is_empty(), "sampler saw two owners: {v:?}");
        let mut evs = self.events();
        evs.sort_by_key(|e| e.ev.at);
        let mut owner: HashMap<String, (String, u64)> = HashMap::new();
        let mut last_epoch: HashMap<String, u64> = HashMap::new();
        for e in &evs {
            let s = &e.ev.subscription;
            if e.ev.owned {
                if let Some((m, ep)) = owner.get(s) {
                    panic!(
                        "{s}: {} claimed epoch {} while {m} still owned epoch {ep}; events: {:#?}",
                        e.member,
                        e.ev.epoch,
                        evs.iter()
                            .filter(|x| &x.ev.subscription == s)
                            .collect::<Vec<_>>()
                    );
                }
                let prev = last_epoch.insert(s.clone(), e.ev.epoch).unwrap_or(0);
                assert!(e.ev.epoch > prev, "{s}: epoch {} after {prev}", e.ev.epoch);
                owner.insert(s.clone(), (e.member.clone(), e.ev.epoch));
            } else {
                match owner.get(s) {
                    Some((m, ep)) if *m == e.member && *ep == e.ev.epoch => {
                        owner.remove(s);
                    }
                    other => panic!(
                        "{s}: {} lost epoch {} but the owner was {other:?}",
                        e.member, e.ev.epoch
                    ),
                }
            }
        }
    }

    pub fn samples(&self) -> usize {
        self.samples.load(Ordering::Relaxed)
    }
}

/// Polls `f` (synchronous) every 20 ms until it holds.
pub async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A member in its own process (`sesam-coordination join`), for SIGKILL.
pub struct Child {
    pub proc: testkit::Proc,
    _dir: tempfile::TempDir,
}

impl Child {
    pub fn spawn(url: &CoordinationUrl, id: &str, count: usize, session: Duration) -> Child {
        Child::spawn_with(url, id, count, session, &[])
    }

    pub fn spawn_with(
        url: &CoordinationUrl,
        id: &str,
        count: usize,
        session: Duration,
        extra: &[&str],
    ) -> Child {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sesam-coordination"));
        cmd.arg("join")
            .arg(url.to_string())
            .args(["--member-id", id])
            .args(["--session-timeout", &format!("{}ms", session.as_millis())])
            .args(["--subscription-count", &count.to_string()])
            .args(extra)
            .env("RUST_LOG", "info");
        let proc = testkit::Proc::spawn(id, cmd, &dir.path().join("member.log"));
        Child { proc, _dir: dir }
    }

    /// The JSON event lines printed so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.proc
            .log_text()
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// What the child owns by its own account.
    pub fn owned(&self) -> BTreeMap<String, u64> {
        let mut owned = BTreeMap::new();
        for e in self.events() {
            let (Some(s), Some(ep)) = (e["subscription"].as_str(), e["epoch"].as_u64()) else {
                continue;
            };
            match e["event"].as_str() {
                Some("owned") => {
                    owned.insert(s.to_string(), ep);
                }
                Some("lost") => {
                    owned.remove(s);
                }
                _ => {}
            }
        }
        owned
    }
}

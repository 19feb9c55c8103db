//! The coordinator's own metrics, registered by the host (the collector)
//! into its registry with [`crate::Coordinator::register_metrics`], under
//! `coordination_*`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Reason = Vec<(&'static str, &'static str)>;

/// Counters and gauges; clones share the values.
#[derive(Clone, Debug, Default)]
pub(crate) struct Metrics {
    pub sessions: Counter,
    pub connect_failures: Counter,
    pub claims: Counter,
    pub releases: Counter,
    pub hand_overs: Counter,
    pub hand_over_timeouts: Counter,
    pub lost: Family<Reason, Counter>,
    pub fence_refusals: Family<Reason, Counter>,
    pub state_refusals: Family<Reason, Counter>,
    pub owned: Gauge,
    pub members: Gauge,
}

impl Metrics {
    pub fn lost(&self, reason: &'static str) {
        self.lost.get_or_create(&vec![("reason", reason)]).inc();
    }

    pub fn fence_refused(&self, reason: &'static str) {
        self.fence_refusals
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    pub fn state_refused(&self, reason: &'static str) {
        self.state_refusals
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("coordination");
        r.register(
            "sessions",
            "ZooKeeper sessions established (1 + re-registrations after an expiry)",
            self.sessions.clone(),
        );
        r.register(
            "connect_failures",
            "Failed attempts to establish a ZooKeeper session",
            self.connect_failures.clone(),
        );
        r.register(
            "hand_overs",
            "Subscriptions handed over on a clean move (the hand-over ran before the release)",
            self.hand_overs.clone(),
        );
        r.register(
            "hand_over_timeouts",
            "Clean moves whose hand-overs did not finish within the session timeout (released anyway)",
            self.hand_over_timeouts.clone(),
        );
        r.register(
            "claims",
            "Subscriptions claimed (each with a new fencing epoch)",
            self.claims.clone(),
        );
        r.register(
            "releases",
            "Subscriptions released to another member or dropped from the set",
            self.releases.clone(),
        );
        r.register(
            "ownership_lost",
            "Subscriptions this member stopped owning without releasing them, by reason (lease_expired, session_ended, node_deleted, deposed)",
            self.lost.clone(),
        );
        r.register(
            "fence_refusals",
            "Side effects refused by fence(), by reason (not_owner, deposed, unavailable)",
            self.fence_refusals.clone(),
        );
        r.register(
            "state_refusals",
            "Shared-state writes refused, by reason (too_large, conflict, bad_key, not_owner, deposed, unavailable, no_session, zookeeper)",
            self.state_refusals.clone(),
        );
        r.register(
            "owned_subscriptions",
            "Subscriptions this member owns now",
            self.owned.clone(),
        );
        r.register(
            "members",
            "Live members seen in ZooKeeper",
            self.members.clone(),
        );
    }
}

//! The latest-sample table: per subscription, the newest sample of every
//! pushed series, keyed by its series key (see [`super::series`]).
//!
//! # Memory bound
//! At most `max_series_per_subscription` series per subscription and
//! `max_series` in all; a sample of a new series beyond either limit is
//! refused and counted (`reason="series_limit"`), existing series still
//! update. A series costs its key (name and labels, typically 100-200
//! bytes, bounded by the label limits of `series.rs`) plus
//! [`SERIES_OVERHEAD`] bytes; that cost is counted per subscription and in
//! all, and a new series past `max_bytes_per_subscription` or `max_bytes`
//! is refused too (`reason="series_bytes_limit"`). The defaults bound the
//! table at 64 MiB per subscription and 512 MiB in all, whatever the
//! labels.
//!
//! # Staleness
//! A series whose newest sample is older than `staleness` (5 minutes, like
//! Prometheus' lookback) is no longer served, and is evicted by the sweep
//! that runs at most every 30 s per subscription on its next push or the
//! next `/federate`, so stale series stop counting against the limits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::selector::Selector;
use schemas::prom::text;

use super::series::{display_key, split_key, MetricType, Prepared};

/// Bounds of the table.
#[derive(Debug, Clone)]
pub struct MetricLimits {
    pub max_series_per_subscription: usize,
    pub max_series: usize,
    /// Bytes of series (keys plus overhead) per subscription.
    pub max_bytes_per_subscription: usize,
    /// Bytes of series in all.
    pub max_bytes: usize,
    /// Bounds of one series' labels.
    pub labels: super::series::LabelLimits,
    /// Series not updated for this long are not served and get evicted.
    pub staleness: Duration,
}

impl Default for MetricLimits {
    fn default() -> Self {
        MetricLimits {
            max_series_per_subscription: 100_000,
            max_series: 1_000_000,
            max_bytes_per_subscription: 64 << 20,
            max_bytes: 512 << 20,
            labels: super::series::LabelLimits::default(),
            staleness: Duration::from_secs(300),
        }
    }
}

/// Bytes a series costs besides its key (map entry, sample, hash).
pub const SERIES_OVERHEAD: usize = 64;

fn series_cost(key: &[u8]) -> usize {
    key.len() + SERIES_OVERHEAD
}

const SWEEP_EVERY_MS: i64 = 30_000;

#[derive(Debug, Clone, Copy)]
struct Latest {
    value: f64,
    timestamp_ms: i64,
}

/// Series keys are hashed with foldhash (randomly seeded per table): the
/// standard SipHash was a tenth of the ingest CPU; keys come from
/// authenticated tenants, each in its own table.
type SeriesMap = HashMap<Box<[u8]>, Latest, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
struct Tenant {
    series: SeriesMap,
    types: HashMap<Box<str>, MetricType>,
    last_sweep_ms: i64,
    /// Cost of its series ([`series_cost`]).
    bytes: usize,
}

/// What applying a request did.
#[derive(Debug, Default)]
pub struct Applied {
    pub accepted: u64,
    pub created: u64,
    pub deleted: u64,
    pub evicted: u64,
    /// Indexes into `Prepared::samples` refused for a series limit, with
    /// the reason (`series_limit`, `series_bytes_limit`), in index order.
    pub refused: Vec<(usize, &'static str)>,
}

impl Applied {
    /// The refused indexes alone, sorted.
    pub fn refused_indexes(&self) -> Vec<usize> {
        self.refused.iter().map(|(i, _)| *i).collect()
    }
}

/// A `/federate` answer that would pass its byte budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerTooLarge {
    pub limit: usize,
}

/// One federated series.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    /// Sorted, with `subscription` and `instance`, without `__name__`.
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub timestamp_ms: i64,
    pub metric_type: MetricType,
}

/// Every subscription's latest samples.
#[derive(Debug, Default)]
pub struct Table {
    tenants: RwLock<HashMap<String, Arc<Mutex<Tenant>>>>,
    series_total: AtomicUsize,
    bytes_total: AtomicUsize,
    limits: MetricLimits,
}

impl Table {
    pub fn new(limits: MetricLimits) -> Table {
        Table {
            tenants: RwLock::default(),
            series_total: AtomicUsize::new(0),
            bytes_total: AtomicUsize::new(0),
            limits,
        }
    }

    /// Bytes of series held, all subscriptions ([`SERIES_OVERHEAD`] included).
    pub fn bytes(&self) -> usize {
        self.bytes_total.load(Ordering::Relaxed)
    }

    /// Series and bytes of one subscription.
    pub fn usage(&self, subscription: &str) -> (usize, usize) {
        let t = self
            .tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(subscription)
            .cloned();
        t.map_or((0, 0), |t| {
            let t = t.lock().unwrap_or_else(|e| e.into_inner());
            (t.series.len(), t.bytes)
        })
    }

    /// Drops every series of `subscription` (termination); returns how many.
    pub fn purge(&self, subscription: &str) -> usize {
        let t = self
            .tenants
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(subscription);
        let Some(t) = t else { return 0 };
        let t = t.lock().unwrap_or_else(|e| e.into_inner());
        self.series_total
            .fetch_sub(t.series.len(), Ordering::Relaxed);
        self.bytes_total.fetch_sub(t.bytes, Ordering::Relaxed);
        t.series.len()
    }

    pub fn limits(&self) -> &MetricLimits {
        &self.limits
    }

    /// Series held, all subscriptions.
    pub fn len(&self) -> usize {
        self.series_total.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn tenant(&self, name: &str) -> Arc<Mutex<Tenant>> {
        if let Some(t) = self
            .tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return t.clone();
        }
        self.tenants
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Evicts `t`'s stale series if it was not swept for `SWEEP_EVERY_MS`;
    /// returns how many went.
    fn sweep(&self, t: &mut Tenant, now_ms: i64) -> u64 {
        if now_ms - t.last_sweep_ms < SWEEP_EVERY_MS {
            return 0;
        }
        t.last_sweep_ms = now_ms;
        let stale_before = self.stale_before(now_ms);
        let before = t.series.len();
        let mut freed = 0usize;
        t.series.retain(|k, l| {
            let keep = l.timestamp_ms >= stale_before;
            if !keep {
                freed += series_cost(k);
            }
            keep
        });
        let evicted = before - t.series.len();
        if evicted > 0 {
            self.series_total.fetch_sub(evicted, Ordering::Relaxed);
            self.bytes_total.fetch_sub(freed, Ordering::Relaxed);
            t.bytes -= freed;
        }
        evicted as u64
    }

    fn stale_before(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.limits.staleness.as_millis() as i64)
    }

    /// Applies the accepted samples of `p`: newer samples replace older
    /// ones, staleness markers delete their series.
    pub fn apply(&self, p: &Prepared, now_ms: i64) -> Applied {
        let mut out = Applied::default();
        for (ti, name) in p.tenants.iter().enumerate() {
            let tenant = self.tenant(name);
            // Short critical section without awaits: std Mutex is right.
            let mut t = tenant.lock().unwrap_or_else(|e| e.into_inner());
            out.evicted += self.sweep(&mut t, now_ms);
            for (name, ty) in &p.types {
                if t.types.len() < self.limits.max_series_per_subscription
                    || t.types.contains_key(name.as_str())
                {
                    t.types.insert(name.as_str().into(), *ty);
                }
            }
            for (i, s) in p.samples.iter().enumerate() {
                if s.tenant as usize != ti {
                    continue;
                }
                let key = p.key(s);
                if s.stale {
                    if t.series.remove(key).is_some() {
                        self.series_total.fetch_sub(1, Ordering::Relaxed);
                        self.bytes_total
                            .fetch_sub(series_cost(key), Ordering::Relaxed);
                        t.bytes -= series_cost(key);
                        out.deleted += 1;
                    }
                    out.accepted += 1;
                    continue;
                }
                let new = Latest {
                    value: s.value,
                    timestamp_ms: s.timestamp_ms,
                };
                if let Some(l) = t.series.get_mut(key) {
                    if s.timestamp_ms >= l.timestamp_ms {
                        *l = new;
                    }
                    out.accepted += 1;
                    continue;
                }
                if t.series.len() >= self.limits.max_series_per_subscription
                    || self.series_total.load(Ordering::Relaxed) >= self.limits.max_series
                {
                    out.refused.push((i, "series_limit"));
                    continue;
                }
                let cost = series_cost(key);
                if t.bytes + cost > self.limits.max_bytes_per_subscription
                    || self.bytes_total.load(Ordering::Relaxed) + cost > self.limits.max_bytes
                {
                    out.refused.push((i, "series_bytes_limit"));
                    continue;
                }
                t.series.insert(key.into(), new);
                t.bytes += cost;
                self.bytes_total.fetch_add(cost, Ordering::Relaxed);
                self.series_total.fetch_add(1, Ordering::Relaxed);
                out.created += 1;
                out.accepted += 1;
            }
        }
        out
    }

    /// The fresh series of `subscription` (every one when `None`) that
    /// match any of `selectors`, sorted by name and labels.
    pub fn select(
        &self,
        subscription: Option<&str>,
        selectors: &[Selector],
        now_ms: i64,
    ) -> Vec<Row> {
        self.select_bounded(subscription, selectors, now_ms, usize::MAX)
            .unwrap_or_default()
    }

    /// [`Table::select`] that gives up once the text answer would pass
    /// `max_bytes` (estimated from the rows, before encoding).
    pub fn select_bounded(
        &self,
        subscription: Option<&str>,
        selectors: &[Selector],
        now_ms: i64,
        max_bytes: usize,
    ) -> Result<Vec<Row>, AnswerTooLarge> {
        let mut answer = 0usize;
        let stale_before = self.stale_before(now_ms);
        let tenants: Vec<(String, Arc<Mutex<Tenant>>)> = {
            let all = self.tenants.read().unwrap_or_else(|e| e.into_inner());
            all.iter()
                .filter(|(name, _)| subscription.is_none_or(|s| s == name.as_str()))
                .map(|(n, t)| (n.clone(), t.clone()))
                .collect()
        };
        let mut rows = Vec::new();
        for (sub, tenant) in &tenants {
            let mut t = tenant.lock().unwrap_or_else(|e| e.into_inner());
            // A subscription that stopped pushing is swept here.
            self.sweep(&mut t, now_ms);
            let t = &*t;
            let mut labels: Vec<(&str, &str)> = Vec::with_capacity(16);
            for (key, l) in &t.series {
                if l.timestamp_ms < stale_before {
                    continue;
                }
                let (name, ls) = split_key(key);
                labels.clear();
                let mut added = false;
                for (k, v) in ls {
                    if !added && k > "subscription" {
                        labels.push(("subscription", sub));
                        added = true;
                    }
                    labels.push((k, v));
                }
                if !added {
                    labels.push(("subscription", sub));
                }
                if !selectors.iter().any(|s| s.matches(name, &labels)) {
                    continue;
                }
                // name{k="v",...} value timestamp, plus a # TYPE line at most.
                answer += name.len() * 2
                    + 64
                    + labels
                        .iter()
                        .map(|(k, v)| k.len() + v.len() + 4)
                        .sum::<usize>();
                if answer > max_bytes {
                    return Err(AnswerTooLarge { limit: max_bytes });
                }
                rows.push(Row {
                    name: name.to_string(),
                    labels: labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    value: l.value,
                    timestamp_ms: l.timestamp_ms,
                    metric_type: t.types.get(name).copied().unwrap_or(MetricType::Untyped),
                });
            }
        }
        rows.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.labels.cmp(&b.labels)));
        Ok(rows)
    }

    /// Describes a refused sample of `p`, for messages.
    pub fn describe(p: &Prepared, i: usize) -> String {
        display_key(p.key(&p.samples[i]))
    }
}

/// Writes `rows` in the Prometheus text format 0.0.4, with one `# TYPE`
/// line per metric name and the sample timestamps.
pub fn encode_text(rows: &[Row]) -> String {
    let mut out = String::with_capacity(rows.len() * 128);
    let mut last: Option<&str> = None;
    for r in rows {
        if last != Some(r.name.as_str()) {
            text::write_type(&mut out, &r.name, r.metric_type);
            last = Some(r.name.as_str());
        }
        text::write_sample(
            &mut out,
            &r.name,
            r.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            r.value,
            Some(r.timestamp_ms),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::series::SeriesBuilder;
    use super::*;

    fn push(
        table: &Table,
        sub: &str,
        labels: &[(&str, &str)],
        v: f64,
        ts: i64,
        now: i64,
    ) -> Applied {
        let mut b = SeriesBuilder::new(Some(sub), now, 600_000);
        b.series(0, labels, std::iter::once((v, ts))).unwrap();
        table.apply(&b.prepared, now)
    }

    fn all() -> Vec<Selector> {
        vec![Selector::parse(r#"{__name__=~".+"}"#).unwrap()]
    }

    #[test]
    fn newest_sample_wins_and_stale_series_are_not_served() {
        let t = Table::new(MetricLimits::default());
        let now = 10_000_000;
        let l = [("__name__", "m"), ("instance", "h1")];
        push(&t, "acme", &l, 2.0, now - 1000, now);
        push(&t, "acme", &l, 1.0, now - 2000, now); // older: ignored
        let rows = t.select(None, &all(), now);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].value, rows[0].timestamp_ms), (2.0, now - 1000));
        assert_eq!(
            rows[0].labels,
            vec![
                ("instance".to_string(), "h1".to_string()),
                ("subscription".to_string(), "acme".to_string())
            ]
        );
        // Five minutes after its sample the series is still served; a
        // millisecond later it is stale.
        assert_eq!(t.select(None, &all(), now - 1000 + 300_000).len(), 1);
        assert!(t.select(None, &all(), now - 1000 + 300_001).is_empty());
    }

    #[test]
    fn series_limit_refuses_new_series_only_and_sweep_frees_them() {
        let t = Table::new(MetricLimits {
            max_series_per_subscription: 2,
            ..MetricLimits::default()
        });
        let now = 100_000_000;
        for i in 0..2 {
            let a = push(&t, "acme", &[("__name__", &format!("m{i}"))], 1.0, now, now);
            assert_eq!(a.created, 1);
        }
        let a = push(&t, "acme", &[("__name__", "m9")], 1.0, now, now);
        assert_eq!((a.accepted, a.refused.len()), (0, 1));
        assert_eq!(a.refused[0].1, "series_limit");
        let a = push(&t, "acme", &[("__name__", "m0")], 3.0, now + 1, now);
        assert_eq!(
            (a.accepted, a.refused.len()),
            (1, 0),
            "existing series update"
        );
        // Another subscription has its own budget.
        assert_eq!(
            push(&t, "beta", &[("__name__", "m9")], 1.0, now, now).created,
            1
        );
        // Ten minutes on, the sweep evicts acme's stale series: room again.
        let later = now + 600_000;
        let a = push(&t, "acme", &[("__name__", "m9")], 1.0, later, later);
        assert_eq!((a.created, a.evicted), (1, 2));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn series_bytes_are_bounded_per_subscription_and_freed_by_purge() {
        let t = Table::new(MetricLimits {
            max_bytes_per_subscription: 4 * (SERIES_OVERHEAD + 40),
            ..MetricLimits::default()
        });
        let now = 100_000_000;
        let mut refused = Vec::new();
        for i in 0..10 {
            let a = push(
                &t,
                "acme",
                &[("__name__", &format!("m{i:02}")), ("l", "x")],
                1.0,
                now,
                now,
            );
            refused.extend(a.refused);
        }
        let (series, bytes) = t.usage("acme");
        assert!((2..10).contains(&series), "{series} series");
        assert!(bytes <= 4 * (SERIES_OVERHEAD + 40), "{bytes} bytes");
        assert!(refused.iter().all(|(_, r)| *r == "series_bytes_limit"));
        assert_eq!(series + refused.len(), 10);
        assert_eq!(t.bytes(), bytes);
        // Another subscription is not held back.
        assert_eq!(
            push(&t, "beta", &[("__name__", "m")], 1.0, now, now).created,
            1
        );
        assert_eq!(t.purge("acme"), series);
        assert_eq!(t.usage("acme"), (0, 0));
        assert_eq!(t.len(), 1);
        assert!(t.select(Some("acme"), &all(), now).is_empty());
    }

    #[test]
    fn bounded_select_gives_up_at_its_byte_budget() {
        let t = Table::new(MetricLimits::default());
        let now = 100_000_000;
        for i in 0..100 {
            push(
                &t,
                "acme",
                &[("__name__", &format!("metric_{i}")), ("l", "x")],
                1.0,
                now,
                now,
            );
        }
        assert_eq!(
            t.select_bounded(None, &all(), now, 1 << 20)
                .map(|r| r.len()),
            Ok(100)
        );
        assert_eq!(
            t.select_bounded(None, &all(), now, 2000),
            Err(AnswerTooLarge { limit: 2000 })
        );
    }

    #[test]
    fn federate_sweeps_a_subscription_that_stopped_pushing() {
        let t = Table::new(MetricLimits::default());
        let now = 10_000_000;
        push(&t, "gone", &[("__name__", "m")], 1.0, now, now);
        assert_eq!(t.len(), 1);
        assert!(t.select(None, &all(), now + 600_000).is_empty());
        assert_eq!(t.len(), 0, "evicted, not only hidden");
    }

    #[test]
    fn staleness_marker_deletes_the_series() {
        let t = Table::new(MetricLimits::default());
        let now = 10_000_000;
        push(&t, "acme", &[("__name__", "m")], 1.0, now, now);
        let stale = f64::from_bits(super::super::series::STALE_NAN_BITS);
        let a = push(&t, "acme", &[("__name__", "m")], stale, now + 1, now);
        assert_eq!(a.deleted, 1);
        assert!(t.is_empty());
    }

    #[test]
    fn text_encoding_escapes_and_groups_by_name() {
        let rows = vec![
            Row {
                name: "a".into(),
                labels: vec![("l".into(), "x\"y\\z\nw".into())],
                value: 1.5,
                timestamp_ms: 7,
                metric_type: MetricType::Gauge,
            },
            Row {
                name: "a".into(),
                labels: vec![("l".into(), "2".into())],
                value: 1e21,
                timestamp_ms: 8,
                metric_type: MetricType::Gauge,
            },
        ];
        assert_eq!(
            encode_text(&rows),
            "# TYPE a gauge\na{l=\"x\\\"y\\\\z\\nw\"} 1.5 7\na{l=\"2\"} 1000000000000000000000 8\n"
        );
    }
}

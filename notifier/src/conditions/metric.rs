//! `metric_threshold`: a pushed metric sample (remote-write or OTLP)
//! compares true against a bound for a duration (`for`); resolves when a
//! sample compares false or the series is stale (no sample for 5 min).
//!
//! The pending state of a series (since when its comparison holds) is
//! persisted when it starts and ends, so a restart does not start `for`
//! over; a restart counts as a sample for staleness.

use std::sync::Arc;

use crate::dispatch::SampleRef;
use crate::engine::Engine;
use crate::lifecycle::Fire;
use crate::model::{fingerprint, secs, series_id, short, MetricState, METRIC_STALE_NANOS};
use crate::rule::{CompiledRule, Kind};
use crate::schedule::Timer;

impl Engine {
    /// Evaluates pushed metric samples of `sub`.
    pub fn on_samples(&mut self, sub: &str, samples: &[SampleRef<'_>], now: i64) {
        if !self.index.has_metric_rules(sub) {
            return;
        }
        let mut hits: Vec<(Arc<CompiledRule>, usize)> = Vec::new();
        for (i, s) in samples.iter().enumerate() {
            for rule in self.index.metric_rules(sub, s.name) {
                let Kind::Metric { labels, .. } = &rule.kind else {
                    continue;
                };
                let get = |n: &str| {
                    s.labels
                        .iter()
                        .find(|(k, _)| k == n)
                        .map(|(_, v)| v.as_str())
                };
                if !labels.iter().all(|(k, v)| get(k) == Some(v.as_str())) {
                    continue;
                }
                if rule.source.is_some() && !rule.matches_source(get("instance").unwrap_or("")) {
                    continue;
                }
                if let Some(p) = get("pipe") {
                    if !rule.matches_pipe(p) {
                        continue;
                    }
                } else if rule.rule.pipes.iter().any(|p| p != "*") {
                    continue;
                }
                hits.push((rule.clone(), i));
            }
        }
        for (rule, i) in hits {
            self.sample(&rule, sub, &samples[i], now);
        }
    }

    fn sample(&mut self, rule: &Arc<CompiledRule>, sub: &str, s: &SampleRef<'_>, now: i64) {
        let Kind::Metric {
            op, value, for_, ..
        } = &rule.kind
        else {
            return;
        };
        let series = series_id(s.name, s.labels);
        let key = format!("{sub}\0{}\0{series}", rule.id());
        if !s.value.is_finite() || !op.holds(s.value, *value) {
            self.drop_metric(&key);
            let fp = fingerprint(rule.id(), sub, "", "", &series);
            self.resolve(&fp, now);
            return;
        }
        if !self.metric.contains_key(&key) {
            if self.count(sub).series >= self.limits.max_series_per_subscription {
                self.limited(sub, "series");
                return;
            }
            self.count(sub).series += 1;
            self.metric.insert(
                key.clone(),
                MetricState {
                    rule: rule.key(),
                    labels: s.labels.to_vec(),
                    value: s.value,
                    since: now,
                    last_seen: now,
                },
            );
            self.dirty.metrics.insert(key.clone());
        }
        let Some(st) = self.metric.get_mut(&key) else {
            return;
        };
        st.value = s.value;
        st.last_seen = now;
        let due = st.since.saturating_add(*for_);
        if now >= due {
            self.fire_metric(&key, now);
            self.arm(
                Timer::Metric { key },
                now.saturating_add(METRIC_STALE_NANOS),
            );
        } else {
            self.arm(Timer::Metric { key }, due);
        }
    }

    fn drop_metric(&mut self, key: &str) {
        if self.metric.remove(key).is_some() {
            let sub = key.split('\0').next().unwrap_or("").to_string();
            let c = self.count(&sub);
            c.series = c.series.saturating_sub(1);
            self.dirty.metrics.insert(key.to_string());
        }
    }

    fn fire_metric(&mut self, key: &str, now: i64) {
        let Some(st) = self.metric.get(key) else {
            return;
        };
        let Some(rule) = self.rules.get(&st.rule).cloned() else {
            self.drop_metric(key);
            return;
        };
        let Kind::Metric {
            metric,
            op,
            value,
            for_,
            ..
        } = &rule.kind
        else {
            return;
        };
        let (labels, v) = (st.labels.clone(), st.value);
        let shown: Vec<String> = labels
            .iter()
            .take(30)
            .map(|(k, v)| format!("{}={:?}", short(k, 100), short(v, 200)))
            .collect();
        let mut f = Fire::new(
            &rule,
            None,
            None,
            now,
            format!(
                "{metric}{{{}}} = {v} {} {value} for {}",
                shown.join(","),
                op.as_str(),
                secs(*for_)
            ),
        )
        .note("value", v.to_string());
        f.extra = labels
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "subscription" | "__name__"))
            .cloned()
            .collect();
        f.extra.push(("metric".into(), metric.clone()));
        if let Some((_, i)) = labels.iter().find(|(k, _)| k == "instance") {
            f.extra.push(("source".into(), i.clone()));
        }
        f.identity = key.splitn(3, '\0').nth(2).unwrap_or("").to_string();
        self.fire(f, now);
    }

    /// The timer of metric series `key` popped: stale, due, or not yet.
    pub(crate) fn metric_due(&mut self, key: &str, _at: i64, now: i64) {
        let Some(st) = self.metric.get(key) else {
            return;
        };
        if now.saturating_sub(st.last_seen) >= METRIC_STALE_NANOS {
            // No sample for 5 minutes: the series is stale.
            let rule = st.rule.clone();
            self.drop_metric(key);
            let series = key.splitn(3, '\0').nth(2).unwrap_or("");
            let fp = fingerprint(&rule.id, &rule.sub, "", "", series);
            self.resolve(&fp, now);
            return;
        }
        let Some(Kind::Metric { for_, .. }) = self.rules.get(&st.rule).map(|r| &r.kind) else {
            self.drop_metric(key);
            return;
        };
        let due = st.since.saturating_add(*for_);
        let key = key.to_string();
        if now >= due {
            let next = st.last_seen.saturating_add(METRIC_STALE_NANOS);
            self.fire_metric(&key, now);
            self.arm(Timer::Metric { key }, next);
        } else {
            self.arm(Timer::Metric { key }, due);
        }
    }

    /// Restores pending series states (a restart counts as a sample).
    pub(crate) fn restore_metrics(&mut self, states: Vec<(String, MetricState)>, now: i64) {
        for (key, mut st) in states {
            let Some(Kind::Metric { for_, .. }) = self.rules.get(&st.rule).map(|r| &r.kind) else {
                continue;
            };
            let due = st.since.saturating_add(*for_).max(now);
            st.last_seen = st.last_seen.max(now);
            let sub = key.split('\0').next().unwrap_or("").to_string();
            self.count(&sub).series += 1;
            self.metric.insert(key.clone(), st);
            self.arm(Timer::Metric { key }, due);
        }
    }
}

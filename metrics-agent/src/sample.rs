//! Samples as the agent collects them, and the interned series they belong
//! to once relabelled for pushing.

use std::collections::HashSet;
use std::sync::Arc;

/// The Prometheus type of a sample's family (the agent makes counters,
/// gauges, and untyped for histogram and summary parts and families of
/// unknown type).
pub use schemas::prom::MetricType as Kind;

/// One collected sample: name, labels (sorted by name, no `__name__`),
/// value, and when it was taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub timestamp_ms: i64,
    pub kind: Kind,
}

impl Sample {
    pub fn new(name: impl Into<String>, kind: Kind, value: f64, timestamp_ms: i64) -> Sample {
        Sample {
            name: name.into(),
            labels: Vec::new(),
            value,
            timestamp_ms,
            kind,
        }
    }

    /// Adds a label; call [`Sample::sorted`] after the last one.
    pub fn label(mut self, name: &str, value: impl Into<String>) -> Sample {
        self.labels.push((name.to_string(), value.into()));
        self
    }

    pub fn sorted(mut self) -> Sample {
        self.labels.sort();
        self
    }

    pub fn get(&self, label: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == label)
            .map(|(_, v)| v.as_str())
    }
}

/// A pushed series: name, sorted labels including the target labels
/// (`instance`, `subscription`, `job`), and its type.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Series {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub kind: Kind,
}

/// A buffered sample: 24 bytes plus the shared series.
#[derive(Debug, Clone)]
pub struct Point {
    pub series: Arc<Series>,
    pub value: f64,
    pub timestamp_ms: i64,
}

/// Labels added to every pushed series; a sample's own label of the same
/// name is kept as `exported_<name>` (Prometheus' `honor_labels: false`).
#[derive(Debug, Clone)]
pub struct TargetLabels {
    pub labels: Vec<(String, String)>,
}

impl TargetLabels {
    pub fn new(job: &str, instance: &str, subscription: &str) -> TargetLabels {
        TargetLabels {
            labels: vec![
                ("instance".into(), instance.into()),
                ("job".into(), job.into()),
                ("subscription".into(), subscription.into()),
            ],
        }
    }

    /// The sample's labels with the target labels applied, sorted.
    pub fn apply(&self, own: &[(String, String)]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::with_capacity(own.len() + self.labels.len());
        for (k, v) in own {
            if v.is_empty() {
                continue;
            }
            if self.labels.iter().any(|(t, _)| t == k) {
                out.push((format!("exported_{k}"), v.clone()));
            } else {
                out.push((k.clone(), v.clone()));
            }
        }
        out.extend(self.labels.iter().cloned());
        out.sort();
        out.dedup_by(|b, a| a.0 == b.0);
        out
    }
}

/// Shares one [`Series`] between the collections that repeat it, so the
/// buffer holds 24 bytes per sample instead of a copy of every label.
#[derive(Debug, Default)]
pub struct Interner {
    set: HashSet<Arc<Series>>,
}

impl Interner {
    pub fn point(&mut self, s: Sample, target: &TargetLabels) -> Point {
        let series = Series {
            labels: target.apply(&s.labels),
            name: s.name,
            kind: s.kind,
        };
        let series = match self.set.get(&series) {
            Some(a) => a.clone(),
            None => {
                let a = Arc::new(series);
                self.set.insert(a.clone());
                a
            }
        };
        Point {
            series,
            value: s.value,
            timestamp_ms: s.timestamp_ms,
        }
    }

    /// Forgets series no buffered sample refers to any more.
    pub fn prune(&mut self) {
        self.set.retain(|a| Arc::strong_count(a) > 1);
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_labels_win_and_conflicts_are_exported() {
        let t = TargetLabels::new("node", "vm-1", "acme");
        let got = t.apply(&[
            ("instance".into(), "other".into()),
            ("pipe".into(), "orders".into()),
            ("empty".into(), String::new()),
        ]);
        let want: Vec<(String, String)> = [
            ("exported_instance", "other"),
            ("instance", "vm-1"),
            ("job", "node"),
            ("pipe", "orders"),
            ("subscription", "acme"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn interner_shares_series_and_prunes_unused_ones() {
        let t = TargetLabels::new("j", "i", "s");
        let mut int = Interner::default();
        let a = int.point(Sample::new("m", Kind::Gauge, 1.0, 1).label("x", "1"), &t);
        let b = int.point(Sample::new("m", Kind::Gauge, 2.0, 2).label("x", "1"), &t);
        assert!(Arc::ptr_eq(&a.series, &b.series));
        assert_eq!(int.len(), 1);
        drop((a, b));
        int.prune();
        assert!(int.is_empty());
    }
}

//! Validation shared by both receivers: a pushed series (its labels and
//! samples) becomes a [`PreparedSample`] keyed by its canonical series key.
//!
//! # Series key
//! `name 0xFF label 0xFE value 0xFF label 0xFE value ...`, labels sorted by
//! name, without `__name__` and `subscription` (the subscription is the
//! table the key lives in), always with `instance` (`unknown` when the
//! sender gave none) and without empty-valued labels (Prometheus treats
//! them as absent). 0xFE and 0xFF never occur in UTF-8, so the key decodes
//! back into the labels without escaping.
//!
//! # What is refused
//! The whole request (400, nothing stored): labels not sorted by name, a
//! label twice, an invalid label or metric name, no `__name__`, an admin
//! token's series without a `subscription` label, text that is not UTF-8.
//! One sample (the rest is stored, the answer is still a 400 naming it):
//! NaN other than Prometheus' staleness marker, ±Inf, a time more than the
//! future allowance ahead. A staleness marker (NaN with bits
//! `0x7ff0000000000002`) deletes the series.

use std::fmt::Write as _;

/// Prometheus' staleness marker (`value.StaleNaN`).
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;
/// `instance` of series pushed without one.
pub const UNKNOWN_INSTANCE: &str = "unknown";

const LABEL_SEP: u8 = 0xFF;
const VALUE_SEP: u8 = 0xFE;

pub use schemas::prom::MetricType;

/// A request refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("series {index}: {message}")]
pub struct SeriesError {
    pub index: usize,
    pub field: &'static str,
    pub message: String,
}

impl SeriesError {
    pub fn new(index: usize, field: &'static str, message: impl Into<String>) -> SeriesError {
        SeriesError {
            index,
            field,
            message: message.into(),
        }
    }

    /// The counter reason of this refusal.
    pub fn reason(&self) -> &'static str {
        if self.message.contains("not sorted") {
            "unsorted_labels"
        } else if self.message.contains("twice") {
            "duplicate_label"
        } else if self.field == "subscription" {
            "missing_subscription"
        } else {
            "bad_labels"
        }
    }
}

/// One accepted sample of a request, before it is applied to the table.
#[derive(Debug, Clone, Copy)]
pub struct PreparedSample {
    /// Index into [`Prepared::tenants`].
    pub tenant: u32,
    /// Range of the series key in [`Prepared::arena`].
    pub key: (u32, u32),
    pub value: f64,
    pub timestamp_ms: i64,
    /// A staleness marker: the series ended.
    pub stale: bool,
}

/// Samples refused one by one.
#[derive(Debug, Clone, Default)]
pub struct Refused {
    pub total: u64,
    pub by_reason: Vec<(&'static str, u64)>,
    /// The first few, for the answer's message.
    pub examples: Vec<String>,
}

impl Refused {
    pub fn add(&mut self, reason: &'static str, n: u64, example: impl FnOnce() -> String) {
        self.total += n;
        match self.by_reason.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, c)) => *c += n,
            None => self.by_reason.push((reason, n)),
        }
        if self.examples.len() < 3 {
            self.examples.push(example());
        }
    }
}

/// A validated request: keys, samples, types and the samples refused.
#[derive(Debug, Default)]
pub struct Prepared {
    pub tenants: Vec<String>,
    pub arena: Vec<u8>,
    pub samples: Vec<PreparedSample>,
    pub types: Vec<(String, MetricType)>,
    pub refused: Refused,
}

impl Prepared {
    pub fn key(&self, s: &PreparedSample) -> &[u8] {
        &self.arena[s.key.0 as usize..s.key.1 as usize]
    }
}

/// Bounds of one series' labels (`__name__` included): a series past one is
/// refused with all its samples (`label_limit`), the rest of the request is
/// stored.
#[derive(Debug, Clone, Copy)]
pub struct LabelLimits {
    pub max_labels: usize,
    pub max_name_bytes: usize,
    pub max_value_bytes: usize,
}

impl Default for LabelLimits {
    fn default() -> Self {
        LabelLimits {
            max_labels: 40,
            max_name_bytes: 128,
            max_value_bytes: 2048,
        }
    }
}

/// Builds a [`Prepared`] request series by series.
#[derive(Debug)]
pub struct SeriesBuilder<'a> {
    /// The token's subscription, forced on every series; `None` for admin
    /// tokens, whose series name theirs in a `subscription` label.
    forced: Option<&'a str>,
    now_ms: i64,
    max_future_ms: i64,
    labels: LabelLimits,
    pub prepared: Prepared,
}

pub fn valid_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

pub fn valid_metric_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_' || b[0] == b':')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b':')
}

impl<'a> SeriesBuilder<'a> {
    pub fn new(forced: Option<&'a str>, now_ms: i64, max_future_ms: i64) -> Self {
        SeriesBuilder {
            forced,
            now_ms,
            max_future_ms,
            labels: LabelLimits::default(),
            prepared: Prepared::default(),
        }
    }

    /// The same with other label bounds.
    pub fn with_label_limits(mut self, limits: LabelLimits) -> Self {
        self.labels = limits;
        self
    }

    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    pub fn refuse_n(&mut self, reason: &'static str, n: u64, example: impl FnOnce() -> String) {
        self.prepared.refused.add(reason, n, example);
    }

    pub fn metric_type(&mut self, name: &str, t: MetricType) {
        if t != MetricType::Untyped && valid_metric_name(name) {
            self.prepared.types.push((name.to_string(), t));
        }
    }

    fn tenant_index(&mut self, tenant: &str) -> u32 {
        let tenants = &mut self.prepared.tenants;
        match tenants.iter().position(|t| t == tenant) {
            Some(i) => i as u32,
            None => {
                tenants.push(tenant.to_string());
                (tenants.len() - 1) as u32
            }
        }
    }

    /// Validates one series (`labels` as sent, including `__name__`) and
    /// its samples `(value, Unix ms)`.
    pub fn series(
        &mut self,
        index: usize,
        labels: &[(&str, &str)],
        samples: impl Iterator<Item = (f64, i64)>,
    ) -> Result<(), SeriesError> {
        let lim = self.labels;
        let too_big = if labels.len() > lim.max_labels {
            Some(format!(
                "{} labels, over the limit of {} (--max-metric-labels-per-series)",
                labels.len(),
                lim.max_labels
            ))
        } else if let Some((k, _)) = labels.iter().find(|(k, _)| k.len() > lim.max_name_bytes) {
            Some(format!(
                "label name {:?}... is {} bytes, over the limit of {} (--max-metric-label-name-bytes)",
                k.chars().take(32).collect::<String>(),
                k.len(),
                lim.max_name_bytes
            ))
        } else {
            labels
                .iter()
                .find(|(_, v)| v.len() > lim.max_value_bytes)
                .map(|(k, v)| {
                    format!(
                        "value of label {:?} is {} bytes, over the limit of {} (--max-metric-label-value-bytes)",
                        k.chars().take(64).collect::<String>(),
                        v.len(),
                        lim.max_value_bytes
                    )
                })
        };
        if let Some(why) = too_big {
            let n = samples.count() as u64;
            let name: String = labels
                .iter()
                .find(|(k, _)| *k == "__name__")
                .map(|(_, v)| v.chars().take(64).collect())
                .unwrap_or_default();
            self.prepared.refused.add("label_limit", n.max(1), || {
                format!("series {index} ({name}): {why}")
            });
            return Ok(());
        }
        let mut name = None;
        let mut sub_label = None;
        let mut prev: Option<&str> = None;
        for &(k, v) in labels {
            if let Some(p) = prev {
                if k == p {
                    return Err(SeriesError::new(
                        index,
                        "labels",
                        format!("label {k:?} appears twice"),
                    ));
                }
                if k < p {
                    return Err(SeriesError::new(
                        index,
                        "labels",
                        format!("labels are not sorted by name ({k:?} after {p:?})"),
                    ));
                }
            }
            prev = Some(k);
            if !valid_label_name(k) {
                return Err(SeriesError::new(
                    index,
                    "labels",
                    format!("invalid label name {k:?}"),
                ));
            }
            match k {
                "__name__" => name = Some(v),
                "subscription" => sub_label = Some(v),
                _ => {}
            }
        }
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            return Err(SeriesError::new(
                index,
                "labels",
                "no metric name (label __name__)",
            ));
        };
        if !valid_metric_name(name) {
            return Err(SeriesError::new(
                index,
                "labels",
                format!("invalid metric name {name:?}"),
            ));
        }
        let tenant = match self.forced {
            Some(s) => self.tenant_index(s),
            None => match sub_label.filter(|s| !s.is_empty()) {
                Some(s) => self.tenant_index(s),
                None => {
                    return Err(SeriesError::new(
                        index,
                        "subscription",
                        "an admin token's series must carry a subscription label",
                    ))
                }
            },
        };

        let arena = &mut self.prepared.arena;
        let start = arena.len();
        arena.extend_from_slice(name.as_bytes());
        let mut has_instance = false;
        let push = |arena: &mut Vec<u8>, k: &str, v: &str| {
            arena.push(LABEL_SEP);
            arena.extend_from_slice(k.as_bytes());
            arena.push(VALUE_SEP);
            arena.extend_from_slice(v.as_bytes());
        };
        for &(k, v) in labels {
            if k == "__name__" || k == "subscription" || v.is_empty() {
                continue;
            }
            if !has_instance && k > "instance" {
                push(arena, "instance", UNKNOWN_INSTANCE);
                has_instance = true;
            }
            if k == "instance" {
                has_instance = true;
            }
            push(arena, k, v);
        }
        if !has_instance {
            push(arena, "instance", UNKNOWN_INSTANCE);
        }
        let key = (start as u32, arena.len() as u32);

        for (i, (value, ts)) in samples.enumerate() {
            let stale = value.to_bits() == STALE_NAN_BITS;
            let reason = if stale {
                None
            } else if value.is_nan() {
                Some("nan")
            } else if value.is_infinite() {
                Some("inf")
            } else if ts > self.now_ms.saturating_add(self.max_future_ms) {
                Some("too_new")
            } else {
                None
            };
            if let Some(reason) = reason {
                let arena = &self.prepared.arena;
                self.prepared.refused.add(reason, 1, || {
                    let what = match reason {
                        "nan" => "value is NaN".to_string(),
                        "inf" => format!("value is {value}"),
                        _ => format!("timestamp {ts} ms is in the future"),
                    };
                    format!(
                        "series {index} ({}) sample {i}: {what}",
                        display_key(&arena[key.0 as usize..key.1 as usize])
                    )
                });
                continue;
            }
            self.prepared.samples.push(PreparedSample {
                tenant,
                key,
                value,
                timestamp_ms: ts,
                stale,
            });
        }
        Ok(())
    }
}

/// The metric name and the labels of a series key.
pub fn split_key(key: &[u8]) -> (&str, impl Iterator<Item = (&str, &str)>) {
    let mut parts = key.split(|b| *b == LABEL_SEP);
    let name = std::str::from_utf8(parts.next().unwrap_or_default()).unwrap_or_default();
    let labels = parts.map(|p| {
        let mut kv = p.splitn(2, |b| *b == VALUE_SEP);
        let k = std::str::from_utf8(kv.next().unwrap_or_default()).unwrap_or_default();
        let v = std::str::from_utf8(kv.next().unwrap_or_default()).unwrap_or_default();
        (k, v)
    });
    (name, labels)
}

/// `name{k="v",...}` of a series key, for messages.
pub fn display_key(key: &[u8]) -> String {
    let (name, labels) = split_key(key);
    let mut s = name.to_string();
    s.push('{');
    for (i, (k, v)) in labels.enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}={v:?}");
    }
    s.push('}');
    s
}

/// The labels of a series key with `subscription` added, sorted.
pub fn labels_with_subscription(key: &[u8], subscription: &str) -> Vec<(String, String)> {
    let (_, labels) = split_key(key);
    let mut out: Vec<(String, String)> = Vec::with_capacity(8);
    let mut added = false;
    for (k, v) in labels {
        if !added && k > "subscription" {
            out.push(("subscription".into(), subscription.into()));
            added = true;
        }
        out.push((k.into(), v.into()));
    }
    if !added {
        out.push(("subscription".into(), subscription.into()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(labels: &[(&str, &str)], value: f64) -> Result<Prepared, SeriesError> {
        let mut b = SeriesBuilder::new(Some("acme"), 1_000_000, 600_000);
        b.series(0, labels, std::iter::once((value, 999_000)))?;
        Ok(b.prepared)
    }

    #[test]
    fn key_round_trips_with_instance_added_and_subscription_forced() {
        let p = build(
            &[
                ("__name__", "node_load1"),
                ("job", "node"),
                ("subscription", "evil"),
                ("zone", "a"),
            ],
            1.5,
        )
        .unwrap();
        assert_eq!(p.tenants, vec!["acme".to_string()]);
        let key = p.key(&p.samples[0]);
        assert_eq!(
            display_key(key),
            r#"node_load1{instance="unknown",job="node",zone="a"}"#
        );
        let labels = labels_with_subscription(key, "acme");
        let names: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["instance", "job", "subscription", "zone"]);
    }

    #[test]
    fn unsorted_duplicate_and_invalid_labels_refuse_the_request() {
        let e = build(&[("__name__", "x"), ("b", "1"), ("a", "2")], 1.0).unwrap_err();
        assert_eq!(e.reason(), "unsorted_labels", "{e}");
        let e = build(&[("__name__", "x"), ("a", "1"), ("a", "2")], 1.0).unwrap_err();
        assert_eq!(e.reason(), "duplicate_label", "{e}");
        let e = build(&[("__name__", "x"), ("a-b", "1")], 1.0).unwrap_err();
        assert_eq!(e.reason(), "bad_labels", "{e}");
        let e = build(&[("job", "x")], 1.0).unwrap_err();
        assert!(e.message.contains("no metric name"), "{e}");
        let e = build(&[("__name__", "a-b")], 1.0).unwrap_err();
        assert!(e.message.contains("invalid metric name"), "{e}");
    }

    #[test]
    fn nan_and_inf_are_refused_but_the_staleness_marker_is_kept() {
        for (v, reason) in [
            (f64::NAN, "nan"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "inf"),
        ] {
            let p = build(&[("__name__", "x")], v).unwrap();
            assert!(p.samples.is_empty());
            assert_eq!(p.refused.by_reason, vec![(reason, 1)]);
        }
        let p = build(&[("__name__", "x")], f64::from_bits(STALE_NAN_BITS)).unwrap();
        assert!(p.samples[0].stale);
        assert_eq!(p.refused.total, 0);
    }

    #[test]
    fn series_over_the_label_limits_are_refused_alone() {
        let limits = LabelLimits {
            max_labels: 3,
            max_name_bytes: 8,
            max_value_bytes: 16,
        };
        let mut b = SeriesBuilder::new(Some("acme"), 1_000_000, 600_000).with_label_limits(limits);
        let long = "v".repeat(17);
        b.series(
            0,
            &[("__name__", "ok"), ("a", "1")],
            std::iter::once((1.0, 999_000)),
        )
        .unwrap();
        b.series(
            1,
            &[("__name__", "x"), ("a", &long)],
            std::iter::once((1.0, 999_000)),
        )
        .unwrap();
        b.series(
            2,
            &[("__name__", "x"), ("a", "1"), ("b", "1"), ("c", "1")],
            [(1.0, 999_000), (2.0, 999_001)].into_iter(),
        )
        .unwrap();
        b.series(
            3,
            &[("__name__", "x"), ("longlabelname", "1")],
            std::iter::once((1.0, 999_000)),
        )
        .unwrap();
        let p = b.prepared;
        assert_eq!(p.samples.len(), 1, "only the first series is kept");
        assert_eq!(p.refused.by_reason, vec![("label_limit", 4)]);
        assert!(
            p.refused.examples[0].contains("--max-metric-label-value-bytes"),
            "{:?}",
            p.refused.examples
        );
        assert!(
            p.refused.examples[1].contains("4 labels"),
            "{:?}",
            p.refused.examples
        );
        assert!(
            !p.refused.examples.concat().contains(&long),
            "messages stay short"
        );
    }

    #[test]
    fn admin_series_need_a_subscription_label() {
        let mut b = SeriesBuilder::new(None, 0, 0);
        let e = b
            .series(3, &[("__name__", "x")], std::iter::once((1.0, 0)))
            .unwrap_err();
        assert_eq!((e.index, e.field), (3, "subscription"));
        b.series(
            4,
            &[("__name__", "x"), ("subscription", "beta")],
            std::iter::once((1.0, 0)),
        )
        .unwrap();
        assert_eq!(b.prepared.tenants, vec!["beta".to_string()]);
    }
}

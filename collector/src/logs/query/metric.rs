//! Metric queries: LogQL range aggregations (`count_over_time`, `rate`,
//! `bytes_over_time`, `bytes_rate`, and `sum/avg/min/max_over_time` over
//! an unwrapped field) and vector aggregations over them (`sum`, `avg`,
//! `min`, `max`, `count`, `topk`, `bottomk`, `by` / `without`), evaluated
//! at `start, start + step, ...` up to `end`, backend-neutral over a
//! [`LogStore`].
//!
//! A range `[r]` at step time `t` holds the records with `t - r < ts <= t`
//! (left-open, right-closed, as Loki). A step without records has no point.
//!
//! Two ways to the numbers: line and byte counts of a selector without
//! stages, at a start, step and range that are multiples of the volume
//! index's bucket ([`VOLUME_BUCKET_NS`], 10 s), come from the store's
//! volume index without reading a line; everything else scans the matching
//! records once ([`LogStore::scan_matches`]) and adds each to the steps
//! whose range holds it. Bounds: the number of steps ([`MAX_POINTS`], as
//! Loki), the number of series (`max_series`), and the scan's byte and
//! time limits.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use super::parser::{AggOp, Grouping, MetricExpr, Query, RangeFn};
use super::{MatchedRecord, ScanParams, ScanStats, SearchError, VOLUME_BUCKET_NS};
use crate::logs::model::StreamInfo;
use crate::logs::LogStore;

/// Most steps one query may evaluate (Loki's limit of points per series).
pub const MAX_POINTS: i64 = 11_000;

/// Where and how finely to evaluate.
#[derive(Debug, Clone)]
pub struct MetricParams {
    /// The first step (Unix ns).
    pub start: i64,
    /// The last step is the last `start + k * step` at or before this.
    pub end: i64,
    /// ns, > 0.
    pub step: i64,
    /// Only this subscription's streams (`None`: every subscription).
    pub subscription: Option<String>,
    pub deadline: Instant,
    pub max_scanned_bytes: u64,
    /// Most series the query (or any of its parts) may produce.
    pub max_series: usize,
}

impl MetricParams {
    /// Number of steps, or `None` when the range is empty or the step is
    /// not positive.
    pub fn steps(&self) -> Option<i64> {
        if self.step <= 0 || self.end < self.start {
            return None;
        }
        let n = (i128::from(self.end) - i128::from(self.start)) / i128::from(self.step) + 1;
        i64::try_from(n).ok()
    }
}

/// One result series: its labels and its (time, value) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(i64, f64)>,
}

/// What a metric query answered and what it read.
#[derive(Debug, Clone, Default)]
pub struct MetricResult {
    pub series: Vec<Series>,
    pub stats: ScanStats,
    /// Streams selected (over every range aggregation of the query).
    pub streams: usize,
    /// Of those, the ones answered from the volume index.
    pub from_index: usize,
}

/// A series over the steps, `NaN` where it has no point.
#[derive(Debug)]
struct Dense {
    labels: BTreeMap<String, String>,
    values: Vec<f64>,
}

/// Evaluates `expr` over `store`.
pub fn evaluate(
    store: &dyn LogStore,
    expr: &MetricExpr,
    p: &MetricParams,
) -> Result<MetricResult, SearchError> {
    let n = match p.steps() {
        Some(n) if n <= MAX_POINTS => n as usize,
        _ => return Ok(MetricResult::default()),
    };
    let mut result = MetricResult::default();
    let dense = eval(store, expr, p, n, &mut result)?;
    result.series = dense
        .into_iter()
        .filter_map(|d| {
            let points: Vec<(i64, f64)> = d
                .values
                .iter()
                .enumerate()
                .filter(|(_, v)| !v.is_nan())
                .map(|(i, v)| (p.start + i as i64 * p.step, *v))
                .collect();
            (!points.is_empty()).then_some(Series {
                labels: d.labels,
                points,
            })
        })
        .collect();
    result.series.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(result)
}

fn eval(
    store: &dyn LogStore,
    expr: &MetricExpr,
    p: &MetricParams,
    n: usize,
    result: &mut MetricResult,
) -> Result<Vec<Dense>, SearchError> {
    match expr {
        MetricExpr::Range {
            func,
            query,
            unwrap,
            range,
        } => eval_range(store, *func, query, unwrap.as_deref(), *range, p, n, result),
        MetricExpr::Aggregate {
            op,
            k,
            grouping,
            inner,
        } => {
            let input = eval(store, inner, p, n, result)?;
            Ok(aggregate(*op, *k, grouping.as_ref(), input, n))
        }
    }
}

/// The step indexes `i < n` whose time `start + i * step` is within
/// `[first, last]`.
fn step_span(p: &MetricParams, n: usize, first: i64, last: i64) -> Option<(usize, usize)> {
    let (start, step) = (i128::from(p.start), i128::from(p.step));
    let lo = (i128::from(first) - start + step - 1)
        .div_euclid(step)
        .max(0);
    let hi = (i128::from(last) - start)
        .div_euclid(step)
        .min(n as i128 - 1);
    (lo <= hi).then_some((lo as usize, hi as usize))
}

/// Per-series accumulators over the steps.
struct Acc {
    labels: BTreeMap<String, String>,
    count: Vec<u64>,
    value: Vec<f64>,
}

impl Acc {
    fn new(labels: BTreeMap<String, String>, n: usize) -> Acc {
        Acc {
            labels,
            count: vec![0; n],
            value: vec![0.0; n],
        }
    }

    /// Adds `records` records weighing `bytes` (or one value `v` for the
    /// unwrapped functions) to steps `lo..=hi`.
    fn add(&mut self, func: RangeFn, lo: usize, hi: usize, records: u64, bytes: u64, v: f64) {
        for i in lo..=hi {
            let first = self.count[i] == 0;
            self.count[i] += records;
            let x = &mut self.value[i];
            match func {
                RangeFn::CountOverTime | RangeFn::Rate => {}
                RangeFn::BytesOverTime | RangeFn::BytesRate => *x += bytes as f64,
                RangeFn::SumOverTime | RangeFn::AvgOverTime => *x += v,
                RangeFn::MinOverTime => *x = if first { v } else { x.min(v) },
                RangeFn::MaxOverTime => *x = if first { v } else { x.max(v) },
            }
        }
    }

    fn finish(self, func: RangeFn, range: i64) -> Dense {
        let secs = range as f64 / 1e9;
        let values = self
            .count
            .iter()
            .zip(&self.value)
            .map(|(&c, &v)| {
                if c == 0 {
                    return f64::NAN;
                }
                match func {
                    RangeFn::CountOverTime => c as f64,
                    RangeFn::Rate => c as f64 / secs,
                    RangeFn::BytesOverTime => v,
                    RangeFn::BytesRate => v / secs,
                    RangeFn::SumOverTime | RangeFn::MinOverTime | RangeFn::MaxOverTime => v,
                    RangeFn::AvgOverTime => v / c as f64,
                }
            })
            .collect();
        Dense {
            labels: self.labels,
            values,
        }
    }
}

/// Whether a range aggregation can be answered from the volume index.
fn from_volume(
    func: RangeFn,
    query: &Query,
    unwrap: Option<&str>,
    range: i64,
    p: &MetricParams,
) -> bool {
    let w = VOLUME_BUCKET_NS;
    query.stages.is_empty()
        && unwrap.is_none()
        && matches!(
            func,
            RangeFn::CountOverTime | RangeFn::Rate | RangeFn::BytesOverTime | RangeFn::BytesRate
        )
        && p.start.rem_euclid(w) == 0
        && p.step % w == 0
        && range % w == 0
}

#[allow(clippy::too_many_arguments)]
fn eval_range(
    store: &dyn LogStore,
    func: RangeFn,
    query: &Query,
    unwrap: Option<&str>,
    range: i64,
    p: &MetricParams,
    n: usize,
    result: &mut MetricResult,
) -> Result<Vec<Dense>, SearchError> {
    let last_step = p.start + (n as i64 - 1) * p.step;
    // Records in (start - range, last_step].
    let lo = p.start.saturating_sub(range).saturating_add(1);
    let hi = last_step.saturating_add(1);
    let streams = store.select_streams(query, p.subscription.as_deref(), lo, hi);
    result.streams += streams.len();
    let mut accs: Vec<Acc> = Vec::new();
    let mut by_stream: HashMap<u64, usize> = HashMap::new();
    let mut to_scan: Vec<Arc<StreamInfo>> = Vec::new();
    let indexed = from_volume(func, query, unwrap, range, p);
    for s in streams {
        let buckets = if indexed {
            store.volume(&s, p.start - range, last_step).transpose()?
        } else {
            None
        };
        let Some(buckets) = buckets else {
            to_scan.push(s);
            continue;
        };
        result.from_index += 1;
        if buckets.is_empty() {
            continue;
        }
        if accs.len() >= p.max_series {
            return Err(SearchError::TooManySeries(p.max_series));
        }
        let mut acc = Acc::new((*s.labels).clone(), n);
        for b in buckets {
            // Every record of (b.end - W, b.end] is in the range of the
            // steps t with b.end <= t <= b.end - W + range.
            if let Some((i, j)) = step_span(p, n, b.end, b.end - VOLUME_BUCKET_NS + range) {
                acc.add(func, i, j, b.records, b.bytes, 0.0);
            }
        }
        by_stream.insert(s.id, accs.len());
        accs.push(acc);
    }
    if !to_scan.is_empty() {
        let mut by_labels: HashMap<BTreeMap<String, String>, usize> = HashMap::new();
        let json = query.has_json();
        let mut too_many = false;
        let mut last: Option<(u64, usize)> = None;
        let scan = ScanParams {
            start: lo,
            end: hi,
            deadline: p.deadline,
            max_scanned_bytes: p.max_scanned_bytes,
        };
        let stats = store.scan_matches(query, &to_scan, &scan, &mut |m: MatchedRecord<'_>| {
            let v = match unwrap {
                None => 0.0,
                Some(field) => match unwrapped(&m, field) {
                    Some(v) => v,
                    None => return true,
                },
            };
            let Some((i, j)) = step_span(p, n, m.ts, m.ts.saturating_add(range - 1)) else {
                return true;
            };
            let idx = if json {
                let mut labels = (*m.stream.labels).clone();
                for (k, v) in m.extracted.unwrap_or_default() {
                    if Some(k.as_str()) != unwrap {
                        labels.insert(k.clone(), v.clone());
                    }
                }
                match by_labels.get(&labels) {
                    Some(i) => *i,
                    None => {
                        if accs.len() >= p.max_series {
                            too_many = true;
                            return false;
                        }
                        by_labels.insert(labels.clone(), accs.len());
                        accs.push(Acc::new(labels, n));
                        accs.len() - 1
                    }
                }
            } else {
                match last {
                    Some((id, idx)) if id == m.stream.id => idx,
                    _ => {
                        let idx = match by_stream.get(&m.stream.id) {
                            Some(i) => *i,
                            None => {
                                if accs.len() >= p.max_series {
                                    too_many = true;
                                    return false;
                                }
                                by_stream.insert(m.stream.id, accs.len());
                                accs.push(Acc::new((*m.stream.labels).clone(), n));
                                accs.len() - 1
                            }
                        };
                        last = Some((m.stream.id, idx));
                        idx
                    }
                }
            };
            accs[idx].add(func, i, j, 1, m.line.len() as u64, v);
            true
        })?;
        result.stats.scanned += stats.scanned;
        result.stats.scanned_bytes += stats.scanned_bytes;
        if too_many {
            return Err(SearchError::TooManySeries(p.max_series));
        }
    }
    Ok(accs.into_iter().map(|a| a.finish(func, range)).collect())
}

/// The value of `field` (an extracted field, else a stream label) as a
/// finite number.
fn unwrapped(m: &MatchedRecord<'_>, field: &str) -> Option<f64> {
    let v = m
        .extracted
        .and_then(|x| x.iter().rev().find(|(k, _)| k == field))
        .map(|(_, v)| v.as_str())
        .or_else(|| m.stream.labels.get(field).map(String::as_str))?;
    v.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

/// The labels a grouping keeps of `labels`.
fn group_labels(
    g: Option<&Grouping>,
    labels: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    match g {
        None => BTreeMap::new(),
        Some(g) if g.without => labels
            .iter()
            .filter(|(k, _)| !g.labels.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        Some(g) => labels
            .iter()
            .filter(|(k, _)| g.labels.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn aggregate(op: AggOp, k: usize, g: Option<&Grouping>, input: Vec<Dense>, n: usize) -> Vec<Dense> {
    let mut groups: Vec<(BTreeMap<String, String>, Vec<Dense>)> = Vec::new();
    let mut index: HashMap<BTreeMap<String, String>, usize> = HashMap::new();
    for d in input {
        let key = group_labels(g, &d.labels);
        let i = *index.entry(key.clone()).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(d);
    }
    let mut out = Vec::new();
    for (labels, members) in groups {
        match op {
            AggOp::Topk | AggOp::Bottomk => {
                let mut kept: Vec<Vec<f64>> = vec![vec![f64::NAN; n]; members.len()];
                let mut order: Vec<usize> = Vec::with_capacity(members.len());
                #[allow(clippy::needless_range_loop)] // indexes both members and kept
                for step in 0..n {
                    order.clear();
                    order.extend((0..members.len()).filter(|&m| !members[m].values[step].is_nan()));
                    order.sort_by(|&a, &b| {
                        let (x, y) = (members[a].values[step], members[b].values[step]);
                        let c = x.total_cmp(&y);
                        let c = if op == AggOp::Topk { c.reverse() } else { c };
                        c.then_with(|| members[a].labels.cmp(&members[b].labels))
                    });
                    for &m in order.iter().take(k) {
                        kept[m][step] = members[m].values[step];
                    }
                }
                for (m, values) in members.into_iter().zip(kept) {
                    out.push(Dense {
                        labels: m.labels,
                        values,
                    });
                }
            }
            _ => {
                let values = (0..n)
                    .map(|step| {
                        let mut it = members
                            .iter()
                            .map(|m| m.values[step])
                            .filter(|v| !v.is_nan())
                            .peekable();
                        if it.peek().is_none() {
                            return f64::NAN;
                        }
                        match op {
                            AggOp::Sum => it.sum(),
                            AggOp::Count => it.count() as f64,
                            AggOp::Avg => {
                                let (s, c) = it.fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
                                s / c as f64
                            }
                            AggOp::Min => it.fold(f64::INFINITY, f64::min),
                            AggOp::Max => it.fold(f64::NEG_INFINITY, f64::max),
                            AggOp::Topk | AggOp::Bottomk => f64::NAN,
                        }
                    })
                    .collect();
                out.push(Dense { labels, values });
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "metric_tests.rs"]
mod tests;

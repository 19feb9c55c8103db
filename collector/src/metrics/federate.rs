//! `/federate` without HTTP: the `match[]` selectors of a request parsed
//! within its bounds (count, matchers, one regex budget for all of them),
//! the fresh series selected within the answer's byte budget, and the
//! text exposition written in pieces while the client reads.

use super::selector::{Selector, SelectorError, MAX_MATCHERS};
use super::table::{encode_text, Row};
use super::MetricStore;
use crate::pattern::RegexBudget;

/// Bounds of one `/federate` request.
#[derive(Debug, Clone, Copy)]
pub struct FederateLimits {
    pub max_selectors: usize,
    pub max_regex_bytes: usize,
    pub max_answer_bytes: usize,
}

/// Why a request is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FederateError {
    #[error("give at least one match[] selector, e.g. match[]={{__name__=~\".+\"}}")]
    NoSelector,
    #[error("{count} match[] selectors, over the limit of {limit} (--max-federate-selectors)")]
    TooManySelectors { count: usize, limit: usize },
    #[error(transparent)]
    Selector(#[from] SelectorError),
    #[error(
        "the answer would pass {limit} bytes (--max-federate-bytes); narrow the match[] selectors"
    )]
    AnswerTooLarge { limit: usize },
}

impl FederateError {
    /// The counter reason; `None` for a plain mistake.
    pub fn reason(&self) -> &'static str {
        match self {
            FederateError::NoSelector => "syntax",
            FederateError::TooManySelectors { .. } => "too_many_selectors",
            FederateError::Selector(e) if e.message.contains("--max-query-regex-bytes") => {
                "regex_budget"
            }
            FederateError::Selector(_) => "syntax",
            FederateError::AnswerTooLarge { .. } => "answer_too_large",
        }
    }

    /// The column of a selector error.
    pub fn column(&self) -> Option<usize> {
        match self {
            FederateError::Selector(e) => Some(e.column),
            _ => None,
        }
    }
}

/// Checks the count of selectors before anything is compiled.
pub fn check_count(params: &[String], limits: &FederateLimits) -> Result<(), FederateError> {
    if params.is_empty() {
        return Err(FederateError::NoSelector);
    }
    if params.len() > limits.max_selectors {
        return Err(FederateError::TooManySelectors {
            count: params.len(),
            limit: limits.max_selectors,
        });
    }
    Ok(())
}

/// The selectors of `params`, within the request's bounds (count,
/// matchers, one regex budget).
pub fn parse(params: &[String], limits: &FederateLimits) -> Result<Vec<Selector>, FederateError> {
    check_count(params, limits)?;
    let mut budget = RegexBudget::new(limits.max_regex_bytes);
    Ok(params
        .iter()
        .map(|p| Selector::parse_with(p, &mut budget, MAX_MATCHERS))
        .collect::<Result<Vec<_>, _>>()?)
}

/// The rows of `subscription` (every one when `None`) matching `params`
/// (blocking: regexes are compiled here).
pub fn select(
    store: &MetricStore,
    subscription: Option<&str>,
    params: &[String],
    limits: &FederateLimits,
    now_ms: i64,
) -> Result<Vec<Row>, FederateError> {
    let selectors = parse(params, limits)?;
    let rows = store
        .table
        .select_bounded(subscription, &selectors, now_ms, limits.max_answer_bytes)
        .map_err(|e| FederateError::AnswerTooLarge { limit: e.limit })?;
    store.counters.federate_series.inc_by(rows.len() as u64);
    Ok(rows)
}

/// The text exposition of `rows` in pieces of 256 series, with a `# TYPE`
/// line only where the metric name changes (across pieces too).
pub fn pieces(rows: Vec<Row>) -> impl Iterator<Item = String> + Send + Unpin + 'static {
    let mut rows = rows.into_iter().peekable();
    let mut last: Option<String> = None;
    std::iter::from_fn(move || {
        rows.peek()?;
        let chunk: Vec<Row> = rows.by_ref().take(256).collect();
        let text = encode_text(&chunk);
        let text = match (&last, chunk.first()) {
            (Some(prev), Some(first)) if *prev == first.name => text
                .split_once('\n')
                .map(|(_, rest)| rest.to_string())
                .unwrap_or_default(),
            _ => text,
        };
        last = chunk.last().map(|r| r.name.clone());
        Some(text)
    })
}

#[cfg(test)]
mod tests {
    use super::super::series::SeriesBuilder;
    use super::super::MetricLimits;
    use super::*;

    #[test]
    fn pieces_join_into_one_exposition_with_one_type_line_per_name() {
        let store = MetricStore::new(MetricLimits::default(), Vec::new());
        let now = 100_000_000;
        let mut b = SeriesBuilder::new(Some("acme"), now, 600_000);
        for i in 0..600 {
            b.series(
                i,
                &[("__name__", "m"), ("i", &i.to_string())],
                std::iter::once((1.0, now)),
            )
            .expect("series");
        }
        store.table.apply(&b.prepared, now);
        let limits = FederateLimits {
            max_selectors: 2,
            max_regex_bytes: 1 << 20,
            max_answer_bytes: 1 << 20,
        };
        let rows = select(&store, None, &["m".to_string()], &limits, now).expect("select");
        assert_eq!(rows.len(), 600);
        let text: String = pieces(rows).collect();
        assert_eq!(text.matches("# TYPE m ").count(), 1, "one TYPE line");
        assert_eq!(text.lines().count(), 601);
        assert_eq!(
            select(
                &store,
                None,
                &["a".into(), "b".into(), "c".into()],
                &limits,
                now
            )
            .map(|r| r.len()),
            Err(FederateError::TooManySelectors { count: 3, limit: 2 })
        );
        let small = FederateLimits {
            max_answer_bytes: 1000,
            ..limits
        };
        assert_eq!(
            select(&store, None, &["m".to_string()], &small, now).map(|r| r.len()),
            Err(FederateError::AnswerTooLarge { limit: 1000 })
        );
    }
}

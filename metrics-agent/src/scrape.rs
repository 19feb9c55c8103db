//! Scraping local targets (the node's `/api/metrics`, shippers'
//! `/metrics`) in the Prometheus text format or OpenMetrics.
//!
//! Every scrape is bounded: `timeout` for the whole exchange (a target
//! that accepts and never answers, or trickles, fails with `timeout`) and
//! `max_bytes` of body. A failed scrape yields no samples of the target,
//! `up{job} 0`, and a counted error by reason (`connect`, `timeout`,
//! `status`, `too_large`, `parse`, `body`).

use std::time::{Duration, Instant};

use crate::sample::{Kind, Sample};
use crate::text::{self, Format, ParseError};

/// A target: its job name, URL and optional bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeTarget {
    pub job: String,
    pub url: String,
    pub token: Option<String>,
}

impl ScrapeTarget {
    /// `[JOB=]URL`; without a job, the URL's `host:port`.
    pub fn parse(s: &str) -> Result<ScrapeTarget, String> {
        let (job, url) = match s.split_once('=') {
            Some((j, u)) if !j.contains('/') && !j.contains(':') => (Some(j.to_string()), u),
            _ => (None, s),
        };
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| {
                format!("scrape target {s:?}: the URL must start with http:// or https://")
            })?;
        let hostport = rest.split('/').next().unwrap_or_default();
        if hostport.is_empty() {
            return Err(format!("scrape target {s:?}: no host"));
        }
        Ok(ScrapeTarget {
            job: job.unwrap_or_else(|| hostport.to_string()),
            url: url.to_string(),
            token: None,
        })
    }
}

/// Why a scrape produced nothing.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("answered {0}")]
    Status(u16),
    #[error("body over the limit of {0} bytes")]
    TooLarge(usize),
    #[error("cannot read body: {0}")]
    Body(String),
    #[error("not in the Prometheus text format: {0}")]
    Parse(#[from] ParseError),
}

impl ScrapeError {
    pub fn reason(&self) -> &'static str {
        match self {
            ScrapeError::Connect(_) => "connect",
            ScrapeError::Timeout(_) => "timeout",
            ScrapeError::Status(_) => "status",
            ScrapeError::TooLarge(_) => "too_large",
            ScrapeError::Body(_) => "body",
            ScrapeError::Parse(_) => "parse",
        }
    }
}

async fn fetch(
    client: &reqwest::Client,
    target: &ScrapeTarget,
    timeout: Duration,
    max_bytes: usize,
) -> Result<(String, Format), ScrapeError> {
    let failed = |e: reqwest::Error, body: bool| {
        if e.is_timeout() {
            ScrapeError::Timeout(timeout)
        } else if body {
            ScrapeError::Body(e.to_string())
        } else {
            ScrapeError::Connect(e.to_string())
        }
    };
    let mut req = client.get(&target.url).header(
        reqwest::header::ACCEPT,
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    );
    if let Some(t) = &target.token {
        req = req.bearer_auth(t.trim());
    }
    let mut resp = req
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| failed(e, false))?;
    if !resp.status().is_success() {
        return Err(ScrapeError::Status(resp.status().as_u16()));
    }
    let format = Format::from_content_type(
        resp.headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    );
    if resp.content_length().is_some_and(|l| l > max_bytes as u64) {
        return Err(ScrapeError::TooLarge(max_bytes));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| failed(e, true))? {
        if body.len() + chunk.len() > max_bytes {
            return Err(ScrapeError::TooLarge(max_bytes));
        }
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body).map_err(|_| ScrapeError::Body("not UTF-8".into()))?;
    Ok((text, format))
}

/// Scrapes `target`: its samples (timestamped `now_ms` unless the target
/// gave times) or why not, and how long it took.
pub async fn scrape(
    client: &reqwest::Client,
    target: &ScrapeTarget,
    timeout: Duration,
    max_bytes: usize,
    now_ms: i64,
) -> (Result<Vec<Sample>, ScrapeError>, Duration) {
    let started = Instant::now();
    let r = match tokio::time::timeout(timeout, fetch(client, target, timeout, max_bytes)).await {
        Err(_) => Err(ScrapeError::Timeout(timeout)),
        Ok(Err(e)) => Err(e),
        Ok(Ok((text, format))) => text::parse(&text, format, now_ms).map_err(ScrapeError::from),
    };
    (r, started.elapsed())
}

/// Prometheus' synthetic series for a scrape: `up`,
/// `scrape_duration_seconds`, `scrape_samples_scraped`.
pub fn meta(ok: bool, samples: usize, took: Duration, now_ms: i64) -> Vec<Sample> {
    vec![
        Sample::new("up", Kind::Gauge, if ok { 1.0 } else { 0.0 }, now_ms),
        Sample::new(
            "scrape_duration_seconds",
            Kind::Gauge,
            took.as_secs_f64(),
            now_ms,
        ),
        Sample::new(
            "scrape_samples_scraped",
            Kind::Gauge,
            samples as f64,
            now_ms,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_and_without_job() {
        let t = ScrapeTarget::parse("sesam-node=http://127.0.0.1:9042/api/metrics").unwrap();
        assert_eq!(
            (t.job.as_str(), t.url.as_str()),
            ("sesam-node", "http://127.0.0.1:9042/api/metrics")
        );
        let t = ScrapeTarget::parse("http://127.0.0.1:9100/metrics?x=1").unwrap();
        assert_eq!(t.job, "127.0.0.1:9100");
        assert!(ScrapeTarget::parse("ftp://x").is_err());
        assert!(ScrapeTarget::parse("job=http://").is_err());
    }
}

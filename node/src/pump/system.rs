//! HTTP systems (`system:url`) as a run uses them: secrets resolved into
//! the URL and headers (and scrubbed from every message afterwards),
//! bounded reads of answers, and readable error texts.

use std::time::Duration;

use crate::config::{secret_refs, UrlSystem};
use crate::store::blocking;
use crate::store::Store;

use super::outcome::{fail, Failure};

/// Secrets resolved for one run, scrubbed from its error messages.
#[derive(Debug, Default)]
pub struct Secrets {
    used: Vec<(String, String)>,
}

impl Secrets {
    /// `s` with its `$SECRET(name)` references replaced by the values in
    /// `values` (read from the store beforehand).
    fn resolve(
        &mut self,
        values: &[(String, Option<String>)],
        system: &str,
        field: &str,
        s: &str,
    ) -> Result<String, Box<Failure>> {
        let names = secret_refs(s).map_err(|m| fail(format!("system {system:?} {field}: {m}")))?;
        let mut out = s.to_string();
        for name in names {
            let value = match values.iter().find(|(n, _)| n == name) {
                Some((_, Some(v))) => v.clone(),
                _ => {
                    return Err(fail(format!(
                        "secret {name:?} is not set (referenced by system {system:?} in {field}); set it with PUT /api/secrets"
                    )))
                }
            };
            out = out.replace(&format!("$SECRET({name})"), &value);
            if !value.is_empty() {
                self.used.push((name.to_string(), value));
            }
        }
        Ok(out)
    }

    /// `s` with every secret value used by the run replaced by its reference.
    pub fn scrub(&self, s: &str) -> String {
        let mut out = s.to_string();
        for (name, value) in &self.used {
            out = out.replace(value.as_str(), &format!("$SECRET({name})"));
        }
        out
    }
}

/// A prepared HTTP request target: URL and headers with secrets resolved.
#[derive(Debug)]
pub struct Target {
    pub url: String,
    pub headers: reqwest::header::HeaderMap,
    pub timeout: Duration,
}

/// The request target of `system` for a source's or sink's `url`.
pub async fn target(
    store: &Store,
    secrets: &mut Secrets,
    system: &UrlSystem,
    url: Option<&str>,
) -> Result<Target, Box<Failure>> {
    let raw_url = system.url_for(url);
    // The secret values are read off the async workers, in one go.
    let mut names: Vec<String> = Vec::new();
    for s in std::iter::once(raw_url.as_str()).chain(system.headers.values().map(String::as_str)) {
        for n in secret_refs(s).unwrap_or_default() {
            if !names.iter().any(|x| x == n) {
                names.push(n.to_string());
            }
        }
    }
    let st = store.clone();
    let values = blocking(move || {
        names
            .into_iter()
            .map(|n| st.secret(&n).map(|v| (n, v)))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| {
        fail(format!(
            "could not read the secrets of system {:?}: {e}",
            system.id
        ))
    })?;
    let url = secrets.resolve(&values, &system.id, "url", &raw_url)?;
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in &system.headers {
        let v = secrets.resolve(&values, &system.id, &format!("headers.{k}"), v)?;
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| fail(format!("system {:?}: invalid header name {k:?}", system.id)))?;
        let mut value = reqwest::header::HeaderValue::from_str(&v).map_err(|_| {
            fail(format!(
                "system {:?}: invalid value for header {k:?}",
                system.id
            ))
        })?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(Target {
        url,
        headers,
        timeout: system.timeout(),
    })
}

/// An error and its sources, `: `-separated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The first 200 characters of an answer, for an error message.
pub fn body_excerpt(b: &str) -> String {
    let t: String = b.chars().take(200).collect();
    if t.len() < b.len() {
        format!("{t}...")
    } else {
        t
    }
}

/// Why an answer could not be read.
#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Read(reqwest::Error),
}

/// Reads a response body of at most `limit` bytes, refusing a larger one
/// as soon as it shows (by `Content-Length` or while streaming).
pub async fn read_limited(mut resp: reqwest::Response, limit: u64) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Read)? {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(BodyError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Redirects a `json` system may answer: at most
/// [`crate::limits::MAX_REDIRECTS`], and only to the same scheme, host and
/// port. A system is configured by the operator, so the node may reach its
/// URL; a redirect is chosen by the system, and following it elsewhere
/// would let an upstream steer the node at any address it can reach.
pub fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() > crate::limits::MAX_REDIRECTS {
            return attempt.error(format!(
                "more than {} redirects",
                crate::limits::MAX_REDIRECTS
            ));
        }
        let same = attempt.previous().first().is_some_and(|first| {
            first.scheme() == attempt.url().scheme()
                && first.host_str() == attempt.url().host_str()
                && first.port_or_known_default() == attempt.url().port_or_known_default()
        });
        if same {
            attempt.follow()
        } else {
            let to = format!(
                "{}://{}",
                attempt.url().scheme(),
                attempt.url().host_str().unwrap_or("")
            );
            attempt.error(format!(
                "refused a redirect to another origin ({to}); only same-origin redirects are followed"
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_replaces_every_used_secret_value() {
        let s = Secrets {
            used: vec![("tok".into(), "hunter2".into())],
        };
        assert_eq!(
            s.scrub("server said: Bearer hunter2 is wrong (hunter2)"),
            "server said: Bearer $SECRET(tok) is wrong ($SECRET(tok))"
        );
    }

    #[test]
    fn resolve_fills_references_and_refuses_missing_secrets() {
        let mut s = Secrets::default();
        let values = vec![
            ("a".to_string(), Some("x1".to_string())),
            ("b".to_string(), None),
        ];
        assert_eq!(
            s.resolve(&values, "sys", "url", "u/$SECRET(a)/v").unwrap(),
            "u/x1/v"
        );
        let e = s
            .resolve(&values, "sys", "headers.H", "$SECRET(b)")
            .unwrap_err();
        assert!(e.reason.contains("secret \"b\" is not set"), "{}", e.reason);
        assert_eq!(s.scrub("x1"), "$SECRET(a)");
    }
}

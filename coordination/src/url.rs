//! The `--coordination` URL: `zookeeper://host:port[,host:port...]/chroot`.
//!
//! Every part is checked and a bad one is named in the error: the scheme
//! (only `zookeeper`), each host (non-empty, no user info), each port (1..=65535,
//! required: ZooKeeper has no port worth guessing in production), and the
//! chroot (an absolute ZooKeeper path, at least one segment, no empty, `.` or
//! `..` segments, no trailing slash, no query or fragment). The chroot keeps
//! several deployments (or tests) apart on one ensemble.

use std::fmt;

/// Longest accepted URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Most hosts accepted in one URL.
pub const MAX_HOSTS: usize = 16;

/// A parsed and validated coordination URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinationUrl {
    hosts: Vec<(String, u16)>,
    chroot: String,
}

/// What is wrong with a coordination URL; each variant names the part.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("coordination URL is longer than {MAX_URL_BYTES} bytes")]
    TooLong,
    #[error("coordination URL scheme must be `zookeeper://`, found `{0}`")]
    Scheme(String),
    #[error("coordination URL has no host: expected zookeeper://host:port/chroot")]
    NoHost,
    #[error("coordination URL lists more than {MAX_HOSTS} hosts")]
    TooManyHosts,
    #[error("coordination URL host `{host}` is invalid: {reason}")]
    Host { host: String, reason: &'static str },
    #[error("coordination URL port of `{host}` is invalid: {reason}")]
    Port { host: String, reason: &'static str },
    #[error("coordination URL chroot `{chroot}` is invalid: {reason}")]
    Chroot {
        chroot: String,
        reason: &'static str,
    },
}

impl CoordinationUrl {
    /// Parses `zookeeper://host:port[,host:port...]/chroot`.
    pub fn parse(url: &str) -> Result<CoordinationUrl, UrlError> {
        if url.len() > MAX_URL_BYTES {
            return Err(UrlError::TooLong);
        }
        let rest = match url.split_once("://") {
            Some(("zookeeper", rest)) => rest,
            Some((scheme, _)) => return Err(UrlError::Scheme(scheme.to_string())),
            None => return Err(UrlError::Scheme(String::new())),
        };
        let (authority, chroot) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(UrlError::NoHost);
        }
        let mut hosts = Vec::new();
        for part in authority.split(',') {
            if hosts.len() == MAX_HOSTS {
                return Err(UrlError::TooManyHosts);
            }
            hosts.push(parse_host_port(part)?);
        }
        validate_chroot(chroot)?;
        Ok(CoordinationUrl {
            hosts,
            chroot: chroot.to_string(),
        })
    }

    /// The `(host, port)` pairs, in the order given.
    pub fn hosts(&self) -> &[(String, u16)] {
        &self.hosts
    }

    /// The chroot, e.g. `/sesam`.
    pub fn chroot(&self) -> &str {
        &self.chroot
    }

    /// The connect string for the client, without the chroot
    /// (`host:port,host:port`); the chroot is created first, then entered.
    pub fn connect_string(&self) -> String {
        self.hosts
            .iter()
            .map(|(h, p)| {
                if h.contains(':') {
                    format!("[{h}]:{p}")
                } else {
                    format!("{h}:{p}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Display for CoordinationUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "zookeeper://{}{}", self.connect_string(), self.chroot)
    }
}

impl std::str::FromStr for CoordinationUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CoordinationUrl::parse(s)
    }
}

fn parse_host_port(part: &str) -> Result<(String, u16), UrlError> {
    let host_err = |reason| UrlError::Host {
        host: part.to_string(),
        reason,
    };
    if part.is_empty() {
        return Err(host_err("empty host (stray comma?)"));
    }
    if part.contains('@') {
        return Err(host_err(
            "user info is not supported (ZooKeeper auth is not configured by URL)",
        ));
    }
    if part.contains(['?', '#']) {
        return Err(host_err("query and fragment are not supported"));
    }
    let (host, port) = if let Some(stripped) = part.strip_prefix('[') {
        // [v6]:port
        let (h, rest) = stripped
            .split_once(']')
            .ok_or_else(|| host_err("unclosed `[` of an IPv6 address"))?;
        let port = rest.strip_prefix(':').ok_or_else(|| UrlError::Port {
            host: part.to_string(),
            reason: "missing (host:port)",
        })?;
        (h, port)
    } else {
        match part.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => {
                return Err(UrlError::Port {
                    host: part.to_string(),
                    reason: "missing (host:port)",
                })
            }
        }
    };
    if host.is_empty() {
        return Err(host_err("empty host name"));
    }
    if host.len() > 253 {
        return Err(host_err("longer than 253 bytes"));
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err(host_err(
            "only letters, digits, `.`, `-`, `_` (and `:` inside [IPv6]) are allowed",
        ));
    }
    if host.contains(':') && !part.starts_with('[') {
        return Err(host_err("an IPv6 address must be written [addr]:port"));
    }
    let port_err = |reason| UrlError::Port {
        host: host.to_string(),
        reason,
    };
    if port.is_empty() {
        return Err(port_err("empty"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| port_err("not a number in 1..=65535"))?;
    if port == 0 {
        return Err(port_err("0 is not a usable port"));
    }
    Ok((host.to_string(), port))
}

fn validate_chroot(chroot: &str) -> Result<(), UrlError> {
    let err = |reason| UrlError::Chroot {
        chroot: chroot.to_string(),
        reason,
    };
    if chroot.is_empty() || chroot == "/" {
        return Err(err(
            "missing: give a path such as /sesam so deployments sharing the ensemble stay apart",
        ));
    }
    if chroot.contains(['?', '#']) {
        return Err(err("query and fragment are not supported"));
    }
    if chroot.ends_with('/') {
        return Err(err("must not end with `/`"));
    }
    if chroot.len() > 256 {
        return Err(err("longer than 256 bytes"));
    }
    if chroot == "/zookeeper" || chroot.starts_with("/zookeeper/") {
        return Err(err("/zookeeper is reserved by ZooKeeper"));
    }
    for seg in chroot[1..].split('/') {
        if seg.is_empty() {
            return Err(err("empty path segment (`//`)"));
        }
        if seg == "." || seg == ".." {
            return Err(err("`.` and `..` segments are not allowed"));
        }
        if !seg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(err(
                "segments may hold only letters, digits, `.`, `-` and `_`",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_one_and_several_hosts() {
        let u = CoordinationUrl::parse("zookeeper://zk1:2181/sesam").unwrap();
        assert_eq!(u.hosts(), &[("zk1".to_string(), 2181)]);
        assert_eq!(u.chroot(), "/sesam");
        assert_eq!(u.connect_string(), "zk1:2181");
        let u = CoordinationUrl::parse("zookeeper://a:1,b.example:2,[::1]:3/x/y-z").unwrap();
        assert_eq!(u.hosts().len(), 3);
        assert_eq!(u.hosts()[2], ("::1".to_string(), 3));
        assert_eq!(u.connect_string(), "a:1,b.example:2,[::1]:3");
        assert_eq!(u.chroot(), "/x/y-z");
        assert_eq!(u.to_string(), "zookeeper://a:1,b.example:2,[::1]:3/x/y-z");
    }

    #[test]
    fn bad_urls_name_the_part() {
        let cases: &[(&str, &str)] = &[
            ("http://zk:2181/s", "scheme"),
            ("zk:2181/s", "scheme"),
            ("zookeeper:///s", "no host"),
            ("zookeeper://zk/s", "port of `zk`"),
            ("zookeeper://zk:/s", "port of `zk`"),
            ("zookeeper://zk:99999/s", "port of `zk`"),
            ("zookeeper://zk:0/s", "port of `zk`"),
            ("zookeeper://zk:x/s", "port of `zk`"),
            ("zookeeper://zk:1,,zk2:2/s", "host ``"),
            ("zookeeper://u:p@zk:1/s", "host `u:p@zk:1`"),
            ("zookeeper://z k:1/s", "host `z k:1`"),
            ("zookeeper://::1:2181/s", "IPv6"),
            ("zookeeper://zk:2181", "chroot"),
            ("zookeeper://zk:2181/", "chroot"),
            ("zookeeper://zk:2181/a//b", "chroot"),
            ("zookeeper://zk:2181/a/../b", "chroot"),
            ("zookeeper://zk:2181/a/", "chroot"),
            ("zookeeper://zk:2181/zookeeper", "chroot"),
            ("zookeeper://zk:2181/a?x=1", "chroot"),
            ("zookeeper://zk:2181/a b", "chroot"),
        ];
        for (url, part) in cases {
            let err = CoordinationUrl::parse(url).expect_err(url).to_string();
            assert!(err.contains(part), "{url}: `{err}` should name {part}");
        }
        let long = format!("zookeeper://zk:1/{}", "a".repeat(MAX_URL_BYTES));
        assert_eq!(CoordinationUrl::parse(&long), Err(UrlError::TooLong));
        let many = format!("zookeeper://{}/s", vec!["h:1"; MAX_HOSTS + 1].join(","));
        assert_eq!(CoordinationUrl::parse(&many), Err(UrlError::TooManyHosts));
    }
}

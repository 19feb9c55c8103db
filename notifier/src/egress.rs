//! The egress policy: where receivers may send notifications.
//!
//! Receiver URLs come from tenants, so every outgoing request is checked
//! against the policy on the address it actually connects to:
//! - hostnames go through [`EgressResolver`], the HTTP client's DNS
//!   resolver, which drops denied addresses *after* resolution (a name
//!   that resolves to 127.0.0.1 is refused even if it resolved elsewhere
//!   when the receiver was stored);
//! - IP-literal URLs (which skip DNS) and `localhost` names are checked
//!   before the request, and already when the receiver is stored.
//!
//! Denied by default: loopback, private (RFC 1918, unique local fc00::/7),
//! link-local (169.254/16 with cloud metadata endpoints, fe80::/10),
//! multicast, unspecified, broadcast and reserved (0/8, 240/4), CGNAT
//! 100.64/10, site-local fec0::/10, and IPv6 forms that embed a denied
//! IPv4 address (IPv4-mapped, IPv4-compatible, NAT64 64:ff9b::/96, 6to4
//! 2002::/16). Admin allow-list entries (`--egress-allow CIDR`) lift the
//! range denials. The collector's own listen address is always refused:
//! its (address, port) for IP-literal URLs, and its address on any port
//! for names (the port is not known to the resolver). When the collector
//! listens on a wildcard address, loopback counts as its own address.
//!
//! The client follows no redirects and ignores proxy environment
//! variables (a proxy would connect on our behalf, past the policy).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

/// An address range, e.g. `127.0.0.1/32` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, String> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("prefix /{prefix} is longer than {max} bits"));
        }
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// Whether `ip` (canonical: IPv4-mapped IPv6 is read as IPv4) lies in
    /// the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;
    /// `ADDR/PREFIX`, or a bare address (a single host).
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = canonical(
            IpAddr::from_str(a.trim())
                .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?,
        );
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .map_err(|_| format!("{s:?}: bad prefix length {p:?}"))?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Cidr::new(addr, prefix)
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix.min(128)))
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// An IPv4 address embedded in an IPv6 one by a transition mechanism
/// (IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0, 0, 0, 0, 0, 0] && u128::from(v6) > 1 {
        return Some(low);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified (0.0.0.0/8)")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private (RFC 1918)")
    } else if ip.is_link_local() {
        Some("link-local (169.254.0.0/16, cloud metadata)")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared address space (CGNAT 100.64.0.0/10)")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || o[0] >= 240 {
        Some("reserved (240.0.0.0/4)")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("reserved (IETF protocol assignments 192.0.0.0/24)")
    } else {
        None
    }
}

/// Why `ip` is denied by the default ranges, if it is.
pub fn deny_reason(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_unspecified() {
                Some("unspecified (::)")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if (first & 0xfe00) == 0xfc00 {
                Some("unique local (fc00::/7)")
            } else if (first & 0xffc0) == 0xfe80 {
                Some("link-local (fe80::/10)")
            } else if (first & 0xffc0) == 0xfec0 {
                Some("site-local (fec0::/10)")
            } else if (first & 0xff00) == 0xff00 {
                Some("multicast")
            } else if let Some(v4) = embedded_v4(v6) {
                v4_reason(v4).map(|_| "an IPv6 form of a denied IPv4 address")
            } else {
                None
            }
        }
    }
}

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub ip: IpAddr,
    pub reason: &'static str,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refused by egress policy: {} is {}",
            self.ip, self.reason
        )
    }
}

impl std::error::Error for Refusal {}

/// Where notifications may go (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Ranges allowed although a default rule denies them
    /// (`--egress-allow`, repeatable).
    pub allow: Vec<Cidr>,
    /// The collector's own listen address (set when it is bound).
    pub own_address: Option<SocketAddr>,
}

impl EgressPolicy {
    /// A policy that allows `ranges` on top of the defaults.
    pub fn allowing(ranges: &[&str]) -> EgressPolicy {
        EgressPolicy {
            allow: ranges.iter().filter_map(|r| r.parse().ok()).collect(),
            own_address: None,
        }
    }

    fn is_own(&self, ip: IpAddr, port: Option<u16>) -> bool {
        let Some(own) = self.own_address else {
            return false;
        };
        if port.is_some_and(|p| p != own.port()) {
            return false;
        }
        let (ip, own_ip) = (canonical(ip), canonical(own.ip()));
        ip == own_ip || (own_ip.is_unspecified() && (ip.is_loopback() || ip.is_unspecified()))
    }

    /// Checks a destination; `port` is `None` for addresses a name
    /// resolved to (then the collector's own address is refused on any
    /// port).
    pub fn check(&self, ip: IpAddr, port: Option<u16>) -> Result<(), Refusal> {
        if self.is_own(ip, port) {
            return Err(Refusal {
                ip,
                reason: "the collector's own address",
            });
        }
        if self.allow.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        match deny_reason(ip) {
            Some(reason) => Err(Refusal { ip, reason }),
            None => Ok(()),
        }
    }

    /// The checks that need no DNS: an IP-literal host, or a `localhost`
    /// name (RFC 6761: always loopback). `Ok` for other names: those are
    /// checked on the addresses they resolve to, at each delivery.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refusal> {
        let port = url.port_or_known_default();
        let Some(host) = url.host_str() else {
            return Ok(());
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = IpAddr::from_str(bare) {
            return self.check(ip, port);
        }
        let d = host.trim_end_matches('.').to_ascii_lowercase();
        if d == "localhost" || d.ends_with(".localhost") {
            // Refused when neither loopback address may be reached (the
            // resolver keeps whichever is allowed).
            let v4 = self.check(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            let v6 = self.check(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
            return v4.or(v6);
        }
        Ok(())
    }
}

/// The policy as shared by the client's resolver and the notifier.
pub type SharedPolicy = Arc<RwLock<EgressPolicy>>;

pub(crate) fn read(p: &SharedPolicy) -> EgressPolicy {
    p.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// DNS resolution that keeps only the addresses the policy allows.
#[derive(Debug, Clone)]
pub struct EgressResolver {
    policy: SharedPolicy,
}

impl EgressResolver {
    pub fn new(policy: SharedPolicy) -> EgressResolver {
        EgressResolver { policy }
    }
}

impl reqwest::dns::Resolve for EgressResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if found.is_empty() {
                return Err(format!("{host} has no address").into());
            }
            let policy = read(&policy);
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check(a.ip(), None) {
                    Ok(()) => true,
                    Err(r) => {
                        refused.get_or_insert(r);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(r)) => Err(Box::new(r) as Box<dyn std::error::Error + Send + Sync>),
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// Whether an error (or one of its sources) is an egress refusal.
pub fn refusal_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refusal> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refusal>() {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

/// A URL as it may be logged: scheme, host and port only (never userinfo,
/// path or query, which may carry credentials).
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}:{}",
            u.scheme(),
            u.host_str().unwrap_or("?"),
            u.port_or_known_default().unwrap_or(0)
        ),
        Err(_) => "<invalid url>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(s: &str) -> bool {
        EgressPolicy::default()
            .check(s.parse().unwrap(), Some(80))
            .is_err()
    }

    #[test]
    fn default_ranges_are_denied_and_public_addresses_allowed() {
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            assert!(denied(ip), "{ip} must be denied");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "172.32.0.1",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
        ] {
            assert!(!denied(ip), "{ip} must be allowed");
        }
    }

    #[test]
    fn allow_list_lifts_denials_but_never_for_the_collector_itself() {
        let mut p = EgressPolicy::allowing(&["127.0.0.1/32", "10.0.0.0/8"]);
        p.own_address = Some("127.0.0.1:3100".parse().unwrap());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(p.check(ip("127.0.0.1"), Some(9099)).is_ok());
        assert!(p.check(ip("::ffff:127.0.0.1"), Some(9099)).is_ok());
        assert!(p.check(ip("10.9.8.7"), Some(80)).is_ok());
        assert!(p.check(ip("127.0.0.2"), Some(80)).is_err());
        let own = p.check(ip("127.0.0.1"), Some(3100)).unwrap_err();
        assert!(own.to_string().contains("own address"), "{own}");
        // A name resolving to the collector's address: refused on any port.
        assert!(p.check(ip("127.0.0.1"), None).is_err());
        // Wildcard listen: loopback is the collector's own.
        p.own_address = Some("0.0.0.0:3100".parse().unwrap());
        assert!(p.check(ip("127.0.0.1"), Some(3100)).is_err());
        assert!(p.check(ip("127.0.0.1"), Some(3101)).is_ok());
    }

    #[test]
    fn cidr_parsing() {
        assert!("10.0.0.0/8".parse::<Cidr>().is_ok());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        let c: Cidr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(c.contains("10.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("127.0.0.1".parse().unwrap()));
        assert!(!all.contains("::1".parse().unwrap()));
    }

    #[test]
    fn urls_are_checked_without_dns_where_possible_and_redacted_for_logs() {
        let p = EgressPolicy::default();
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(p.check_url(&u("http://127.0.0.1:9/x")).is_err());
        assert!(p.check_url(&u("http://[::1]/x")).is_err());
        assert!(p.check_url(&u("http://LocalHost./x")).is_err());
        assert!(p.check_url(&u("http://a.localhost/x")).is_err());
        assert!(p.check_url(&u("http://169.254.169.254/latest")).is_err());
        assert!(p.check_url(&u("http://0x7f000001/")).is_err());
        assert!(p.check_url(&u("http://example.com/x")).is_ok());
        assert_eq!(
            redact("https://user:pw@hooks.example.com/T0/secret?token=x"),
            "https://hooks.example.com:443"
        );
    }
}

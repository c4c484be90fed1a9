//! Host and port matchers shared by the access rules and the direct list: `NO_PROXY` syntax
//! (`example.com` and `.example.com` match the domain and its subdomains, `*.corp` only
//! subdomains, `*` everything, IP literals and CIDRs match addresses), and port sets.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// Matches the name itself and every subdomain.
    Domain(String),
    /// Matches subdomains only (`*.corp`).
    Subdomains(String),
    Net(IpNet),
}

/// An ordered list of host patterns, kept with its source text for messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostList {
    patterns: Vec<(HostPattern, String)>,
}

impl HostList {
    /// Parses entries; each bad entry is reported by its text.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for raw in entries {
            let text = raw.as_ref().trim();
            if text.is_empty() {
                continue;
            }
            let p = parse_pattern(text).ok_or_else(|| format!("invalid host pattern `{text}`"))?;
            patterns.push((p, text.to_string()));
        }
        Ok(Self { patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The first pattern that matches `host` (a lower-cased name or IP literal), as written.
    pub fn matching(&self, host: &str) -> Option<&str> {
        let ip: Option<IpAddr> = host.parse().ok();
        self.patterns
            .iter()
            .find(|(p, _)| match (p, ip) {
                (HostPattern::Any, _) => true,
                (HostPattern::Net(n), Some(ip)) => n.contains(&canonical_ip(ip)),
                (HostPattern::Net(_), None) => false,
                (HostPattern::Domain(d), None) => {
                    host == d
                        || host
                            .strip_suffix(d.as_str())
                            .is_some_and(|r| r.ends_with('.'))
                }
                (HostPattern::Subdomains(d), None) => host
                    .strip_suffix(d.as_str())
                    .is_some_and(|r| r.len() > 1 && r.ends_with('.')),
                (HostPattern::Domain(d), Some(_)) => host == d,
                (HostPattern::Subdomains(_), Some(_)) => false,
            })
            .map(|(_, text)| text.as_str())
    }

    pub fn matches(&self, host: &str) -> bool {
        self.matching(host).is_some()
    }
}

impl fmt::Display for HostList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let texts: Vec<&str> = self.patterns.iter().map(|(_, t)| t.as_str()).collect();
        write!(f, "{}", texts.join(","))
    }
}

fn parse_pattern(text: &str) -> Option<HostPattern> {
    let lower = text.to_ascii_lowercase();
    if lower == "*" {
        return Some(HostPattern::Any);
    }
    if let Ok(net) = lower.parse::<IpNet>() {
        return Some(HostPattern::Net(net));
    }
    let unbracketed = lower.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Some(HostPattern::Net(IpNet::from(canonical_ip(ip))));
    }
    let (sub_only, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.trim_start_matches('.')),
    };
    let name = name.trim_end_matches('.');
    let valid = !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return None;
    }
    Some(if sub_only {
        HostPattern::Subdomains(name.to_string())
    } else {
        HostPattern::Domain(name.to_string())
    })
}

/// An IPv6 address that carries an IPv4 address is treated as that IPv4 address, so that a
/// rule written for IPv4 (loopback, link-local, a deny-dest CIDR) cannot be bypassed by
/// spelling the address in IPv6:
/// - IPv4-mapped `::ffff:a.b.c.d` (RFC 4291 §2.5.5.2), which a dual-stack socket connects to
///   the IPv4 address itself;
/// - IPv4-compatible `::a.b.c.d` (RFC 4291 §2.5.5.1, deprecated), except `::` and `::1`,
///   which are the IPv6 unspecified and loopback addresses;
/// - the NAT64 well-known prefix `64:ff9b::/96` (RFC 6052 §2.1), which a NAT64 gateway
///   translates to the IPv4 address in the last 32 bits.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let embedded = || {
        let o = v6.octets();
        IpAddr::V4(std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]))
    };
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return embedded();
    }
    if s[..6] == [0; 6] && !v6.is_unspecified() && !v6.is_loopback() {
        return embedded();
    }
    ip
}

/// Allowed ports for CONNECT: any, or a list of ports and ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSet {
    Any,
    Ranges(Vec<(u16, u16)>),
}

impl PortSet {
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for raw in entries {
            let t = raw.as_ref().trim();
            if t.is_empty() {
                continue;
            }
            if t.eq_ignore_ascii_case("any") || t == "*" {
                return Ok(PortSet::Any);
            }
            let (lo, hi) = match t.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (t, t),
            };
            let p = |s: &str| s.parse::<u16>().ok().filter(|n| *n > 0);
            match (p(lo), p(hi)) {
                (Some(a), Some(b)) if a <= b => ranges.push((a, b)),
                _ => return Err(format!("invalid port or range `{t}`")),
            }
        }
        if ranges.is_empty() {
            return Ok(PortSet::Any);
        }
        Ok(PortSet::Ranges(ranges))
    }

    pub fn contains(&self, port: u16) -> bool {
        match self {
            PortSet::Any => true,
            PortSet::Ranges(r) => r.iter().any(|(a, b)| (*a..=*b).contains(&port)),
        }
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSet::Any => write!(f, "any"),
            PortSet::Ranges(r) => {
                let parts: Vec<String> = r
                    .iter()
                    .map(|(a, b)| {
                        if a == b {
                            a.to_string()
                        } else {
                            format!("{a}-{b}")
                        }
                    })
                    .collect();
                write!(f, "{}", parts.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_semantics() {
        let l = HostList::parse(&[
            "example.com",
            ".corp.net",
            "*.internal",
            "10.0.0.0/8",
            "::1",
        ])
        .unwrap();
        assert!(l.matches("example.com"));
        assert!(l.matches("a.b.example.com"));
        assert!(!l.matches("badexample.com"));
        assert!(l.matches("corp.net"));
        assert!(l.matches("x.corp.net"));
        assert!(l.matches("svc.internal"));
        assert!(!l.matches("internal"));
        assert!(l.matches("10.1.2.3"));
        assert!(!l.matches("11.1.2.3"));
        assert!(l.matches("::1"));
        assert_eq!(l.matching("x.corp.net"), Some(".corp.net"));
        assert!(HostList::parse(&["*"]).unwrap().matches("anything"));
        assert!(HostList::parse(&["bad host"]).is_err());
    }

    #[test]
    fn mapped_ipv4_is_canonical() {
        let l = HostList::parse(&["169.254.0.0/16"]).unwrap();
        assert!(l.matches("::ffff:169.254.169.254"));
    }

    #[test]
    fn ipv4_embedded_in_ipv6_is_canonical() {
        let c = |s: &str| canonical_ip(s.parse().unwrap()).to_string();
        assert_eq!(c("::ffff:127.0.0.1"), "127.0.0.1");
        assert_eq!(c("::ffff:7f00:1"), "127.0.0.1");
        assert_eq!(c("::127.0.0.1"), "127.0.0.1");
        assert_eq!(c("64:ff9b::7f00:1"), "127.0.0.1");
        assert_eq!(c("64:ff9b::169.254.169.254"), "169.254.169.254");
        // The IPv6 loopback and unspecified addresses stay what they are.
        assert_eq!(c("::1"), "::1");
        assert_eq!(c("::"), "::");
        // Other IPv6 addresses are untouched (64:ff9b:1::/48 is not the well-known prefix).
        assert_eq!(c("2001:db8::7f00:1"), "2001:db8::7f00:1");
        assert_eq!(c("64:ff9b:1::7f00:1"), "64:ff9b:1::7f00:1");
        assert_eq!(c("10.0.0.1"), "10.0.0.1");
    }

    #[test]
    fn port_sets() {
        let p = PortSet::parse(&["443", "8000-8100"]).unwrap();
        assert!(p.contains(443) && p.contains(8050) && !p.contains(80));
        assert_eq!(p.to_string(), "443,8000-8100");
        assert_eq!(PortSet::parse(&["any"]).unwrap(), PortSet::Any);
        assert!(PortSet::parse(&["0"]).is_err());
        assert!(PortSet::parse(&["9-1"]).is_err());
    }
}

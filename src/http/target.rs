//! Request targets: the absolute-form URI of a forwarded request and the authority-form
//! target of CONNECT (RFC 9112 §3.2), parsed without trusting anything the client sent.

use std::fmt;
use std::net::IpAddr;

use http::Uri;

use crate::error::ProxyError;

/// Where a request goes: a lower-cased host (IPv6 without brackets) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl Target {
    /// The host as an IP address, when it is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// `host:port` with IPv6 literals bracketed, as used in `CONNECT` and `Host`.
    pub fn authority(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn bad(msg: impl Into<String>) -> ProxyError {
    ProxyError::ClientBadRequest(msg.into())
}

/// Splits and checks an authority (`host[:port]`) the client sent.
///
/// RFC 9110 §4.2.4: a sender MUST NOT generate userinfo in an "http" URI, and a recipient
/// SHOULD treat it as an error; we refuse it so that credentials in URLs never reach logs.
fn parse_authority(auth: &str, default_port: Option<u16>) -> Result<Target, ProxyError> {
    if auth.contains('@') {
        return Err(bad(
            "URLs with user:password@ are not accepted; use headers for credentials",
        ));
    }
    let (host, port) = if let Some(rest) = auth.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("unterminated IPv6 literal in host"))?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("invalid IPv6 literal in host"));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("junk after IPv6 literal"))?,
            ),
        };
        (h, port)
    } else {
        match auth.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (auth, None),
        }
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
    {
        return Err(bad("invalid character in host"));
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let host = match numeric_ipv4(&host) {
        None => host,
        Some(Ok(v4)) => v4.to_string(),
        Some(Err(())) => {
            return Err(bad(format!(
                "host `{host}` ends in a number but is not a valid IPv4 address"
            )));
        }
    };
    let port = match (port, default_port) {
        (Some(p), _) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad(format!("invalid port `{p}`"))),
            Ok(n) => n,
        },
        (None, Some(d)) => d,
        (None, None) => return Err(bad("CONNECT target needs host:port")),
    };
    Ok(Target { host, port })
}

/// Reads a host the way the WHATWG URL Standard's host parser does (§3.5, "ends in a number
/// checker" and "IPv4 parser"): a host whose last label is a number is an IPv4 address, each
/// part decimal, octal with a leading `0` or hexadecimal with `0x`, the last part filling the
/// remaining bytes. Browsers, curl and `getaddrinfo` (through `inet_aton`) all read
/// `127.1`, `0x7f000001`, `2130706433` and `0177.0.0.1` as `127.0.0.1`, so the proxy must
/// too: otherwise a rule on `127.0.0.0/8` sees a name, and the resolver (or a parent proxy)
/// connects to the address.
///
/// `None`: the host does not end in a number (a name, or an IPv6 literal). `Some(Err)`: it
/// does, but is no valid IPv4 address (the standard's "failure"). `host` has no trailing dot.
pub fn numeric_ipv4(host: &str) -> Option<Result<std::net::Ipv4Addr, ()>> {
    let parts: Vec<&str> = host.split('.').collect();
    let last = parts.last()?;
    let ends_in_number = (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
        || ipv4_number(last).is_some();
    if !ends_in_number || host.contains(':') {
        return None;
    }
    if parts.len() > 4 {
        return Some(Err(()));
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for p in &parts {
        match ipv4_number(p) {
            Some(n) => numbers.push(n),
            None => return Some(Err(())),
        }
    }
    let (last, init) = numbers.split_last()?;
    if init.iter().any(|n| *n > 255) {
        return Some(Err(()));
    }
    // The last part fills the bytes the others did not: 256^(5 - n).
    let room = 1u64 << (8 * (5 - numbers.len()));
    if *last >= room {
        return Some(Err(()));
    }
    let mut addr = *last;
    for (i, n) in init.iter().enumerate() {
        addr += n << (8 * (3 - i));
    }
    Some(
        u32::try_from(addr)
            .map(std::net::Ipv4Addr::from)
            .map_err(|_| ()),
    )
}

/// The WHATWG "IPv4 number parser": `0x`/`0X` for hexadecimal, a leading `0` for octal,
/// decimal otherwise; `0x` alone is 0. `None` for anything else, or past `u64`.
fn ipv4_number(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) =
        if let Some(h) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (h, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        return Some(0);
    }
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// The target of an absolute-form request (`GET http://host:port/path`).
pub fn absolute(uri: &Uri) -> Result<Target, ProxyError> {
    let scheme = uri.scheme_str().ok_or(ProxyError::ClientOriginForm)?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        // Absolute https URLs are fetched over TLS by the proxy: requests decrypted from an
        // intercepted CONNECT take this form, and so may clients that send them directly.
        "https" => 443,
        other => return Err(bad(format!("unsupported URL scheme `{other}`"))),
    };
    let auth = uri
        .authority()
        .ok_or_else(|| bad("absolute URL without a host"))?;
    parse_authority(auth.as_str(), Some(default_port))
}

/// The target of a CONNECT request (`CONNECT host:port`).
pub fn connect(uri: &Uri) -> Result<Target, ProxyError> {
    if uri.scheme().is_some() || uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(bad("CONNECT needs an authority-form target (host:port)"));
    }
    let auth = uri
        .authority()
        .ok_or_else(|| bad("CONNECT needs an authority-form target (host:port)"))?;
    parse_authority(auth.as_str(), None)
}

/// The URL as it may appear in logs: scheme, host, port, path, query; never userinfo.
pub fn loggable(uri: &Uri) -> String {
    match (uri.scheme_str(), uri.authority()) {
        (Some(s), Some(a)) => {
            let host = a.as_str().rsplit('@').next().unwrap_or_default();
            let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            format!("{s}://{host}{pq}")
        }
        (None, Some(a)) => a
            .as_str()
            .rsplit('@')
            .next()
            .unwrap_or_default()
            .to_string(),
        _ => uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abs(s: &str) -> Result<Target, ProxyError> {
        absolute(&s.parse::<Uri>().unwrap())
    }

    #[test]
    fn absolute_targets() {
        assert_eq!(
            abs("http://Example.COM/x").unwrap(),
            Target {
                host: "example.com".into(),
                port: 80
            }
        );
        assert_eq!(abs("http://h:8080/").unwrap().port, 8080);
        let t = abs("http://[::1]:81/").unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(t.authority(), "[::1]:81");
        assert!(abs("http://u:p@h/").is_err());
        assert!(abs("http://h:0/").is_err());
        assert!(abs("ftp://h/").is_err());
        assert_eq!(abs("https://h/").unwrap().port, 443);
        assert!(matches!(abs("/path"), Err(ProxyError::ClientOriginForm)));
    }

    #[test]
    fn connect_targets() {
        let c = |s: &str| connect(&s.parse::<Uri>().unwrap());
        assert_eq!(c("example.com:443").unwrap().port, 443);
        assert_eq!(c("[2001:db8::1]:443").unwrap().host, "2001:db8::1");
        assert!(c("example.com").is_err());
        assert!(c("example.com:0").is_err());
        assert!(c("[zz]:443").is_err());
    }

    #[test]
    fn numeric_hosts_are_ipv4_addresses() {
        let n = |s: &str| numeric_ipv4(s).map(|r| r.map(|a| a.to_string()));
        let ok = |s: &str| Some(Ok(s.to_string()));
        assert_eq!(n("127.0.0.1"), ok("127.0.0.1"));
        assert_eq!(n("127.1"), ok("127.0.0.1"));
        assert_eq!(n("0x7f000001"), ok("127.0.0.1"));
        assert_eq!(n("0X7F.1"), ok("127.0.0.1"));
        assert_eq!(n("2130706433"), ok("127.0.0.1"));
        assert_eq!(n("0177.0.0.1"), ok("127.0.0.1"));
        assert_eq!(n("0"), ok("0.0.0.0"));
        assert_eq!(n("0x"), ok("0.0.0.0"));
        assert_eq!(n("169.254.43518"), ok("169.254.169.254"));
        assert_eq!(n("4294967295"), ok("255.255.255.255"));
        // Ends in a number, but no address: refused, never resolved.
        assert_eq!(n("4294967296"), Some(Err(())));
        assert_eq!(n("256.0.0.1"), Some(Err(())));
        assert_eq!(n("1.2.3.4.5"), Some(Err(())));
        assert_eq!(n("08.0.0.1"), Some(Err(())));
        assert_eq!(n("example.123"), Some(Err(())));
        assert_eq!(n("99999999999999999999999"), Some(Err(())));
        // Names.
        assert_eq!(n("example.com"), None);
        assert_eq!(n("0x7f.example"), None);
        assert_eq!(n("1.2.3.x"), None);
        assert_eq!(n("::1"), None);
    }

    #[test]
    fn numeric_hosts_are_canonical_targets() {
        assert_eq!(abs("http://0x7f000001:9128/").unwrap().host, "127.0.0.1");
        assert_eq!(abs("http://2130706433/").unwrap().host, "127.0.0.1");
        assert_eq!(abs("http://127.1./").unwrap().host, "127.0.0.1");
        let c = |s: &str| connect(&s.parse::<Uri>().unwrap());
        assert_eq!(c("0177.0.0.1:9128").unwrap().host, "127.0.0.1");
        assert!(c("1.2.3.4.5:443").is_err());
        assert!(abs("http://256.1.1.1/").is_err());
    }

    #[test]
    fn loggable_drops_userinfo() {
        let u: Uri = "http://user:secret@h:1/p?q".parse().unwrap();
        assert_eq!(loggable(&u), "http://h:1/p?q");
    }
}

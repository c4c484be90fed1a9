//! Destination address checks that run on literal IPs and again on every address a name
//! resolves to, so that DNS cannot steer the proxy into a denied network (loopback, cloud
//! metadata) or back into itself (a forwarding loop, or the admin port); and the matching
//! check on the client side: a connection that comes from this host to its own proxy port.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::hosts::canonical_ip;

/// Networks no request reaches unless `--allow-dest` lifts them: this host (loopback,
/// `0.0.0.0/8` and `::`, which Linux connects to the local host) and link-local (cloud
/// metadata at 169.254.169.254). Addresses are compared after [`canonical_ip`], so IPv4
/// spelled in IPv6 is covered by the IPv4 entries.
pub const BUILTIN_DENY: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "0.0.0.0/8",
    "::/128",
    "169.254.0.0/16",
    "fe80::/10",
];

/// The built-in denied networks, parsed.
pub fn builtin_deny() -> Vec<IpNet> {
    BUILTIN_DENY.iter().filter_map(|s| s.parse().ok()).collect()
}

#[derive(Debug, Clone, Default)]
pub struct IpGuard {
    /// Always refused (`--deny-dest`).
    deny: Vec<IpNet>,
    /// Refused unless in `allow` ([`BUILTIN_DENY`]).
    builtin: Vec<IpNet>,
    /// Lifts built-in denials (`--allow-dest`); never the loop guard, never `deny`.
    allow: Vec<IpNet>,
    /// The proxy's own listening addresses and the admin port's.
    own: Vec<SocketAddr>,
}

impl IpGuard {
    pub fn new(deny: Vec<IpNet>, allow: Vec<IpNet>, own: Vec<SocketAddr>) -> Self {
        Self {
            deny,
            builtin: builtin_deny(),
            allow,
            own,
        }
    }

    /// `Err((reason, rule))` says why the address may not be reached (a bounded reason for
    /// metrics, and the rule for the message).
    pub fn check(&self, addr: SocketAddr) -> Result<(), (&'static str, String)> {
        let ip = canonical_ip(addr.ip());
        if let Some(net) = self.deny.iter().find(|n| n.contains(&ip)) {
            return Err((
                "deny_dest",
                format!("destination {ip} is in denied network {net} (deny-dest)"),
            ));
        }
        if self.is_self(ip, addr.port()) {
            return Err((
                "loop",
                format!(
                    "destination {} is this proxy's own listening or admin address \
                     (forwarding loop)",
                    SocketAddr::new(ip, addr.port())
                ),
            ));
        }
        if let Some(net) = self.builtin.iter().find(|n| n.contains(&ip))
            && !self.allow.iter().any(|n| n.contains(&ip))
        {
            return Err((
                "deny_dest",
                format!(
                    "destination {ip} is in {net}, denied by default (deny-dest: loopback, \
                     this host and link-local are never reached unless allow-dest lists them)"
                ),
            ));
        }
        Ok(())
    }

    /// Whether `ip:port` reaches one of the proxy's own listeners. A listener on a wildcard
    /// address answers on every address of the host: loopback, `0.0.0.0`/`::`, and the pod's
    /// own interface addresses.
    fn is_self(&self, ip: IpAddr, port: u16) -> bool {
        let mut wildcard = false;
        for own in self.own.iter().filter(|o| o.port() == port) {
            let own_ip = canonical_ip(own.ip());
            if own_ip == ip || ip.is_unspecified() {
                return true;
            }
            wildcard |= own_ip.is_unspecified();
        }
        wildcard && (ip.is_loopback() || is_local_address(ip))
    }
}

/// Whether `ip` is one of this host's addresses. Binding a socket to it succeeds exactly
/// then (`EADDRNOTAVAIL` otherwise), which follows address changes without reading the
/// interface list. Only asked for a destination on one of the proxy's own ports; any error
/// other than "not available" counts as local, so that a doubt refuses rather than loops.
pub fn is_local_address(ip: IpAddr) -> bool {
    match std::net::UdpSocket::bind(SocketAddr::new(ip, 0)) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::AddrNotAvailable,
    }
}

/// A client connection from the address it was sent to: the proxy (or something in its pod)
/// connected to its own proxy port, through the pod address or a Service that keeps the
/// source address. Loopback is not counted: local tools and sidecars use it, and the
/// destination guard already refuses loopback and the proxy's own ports.
pub fn is_self_connection(peer: SocketAddr, local: SocketAddr) -> bool {
    let (p, l) = (canonical_ip(peer.ip()), canonical_ip(local.ip()));
    p == l && !p.is_loopback() && !p.is_unspecified()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn denies_metadata_and_self() {
        let g = IpGuard::new(
            vec![],
            vec![],
            vec![
                "0.0.0.0:3128".parse().unwrap(),
                "127.0.0.1:9999".parse().unwrap(),
            ],
        );
        assert!(g.check("169.254.169.254:80".parse().unwrap()).is_err());
        assert!(g.check("[fe80::1]:80".parse().unwrap()).is_err());
        assert!(g.check("[::ffff:169.254.1.1]:80".parse().unwrap()).is_err());
        assert!(g.check("127.0.0.1:3128".parse().unwrap()).is_err());
        assert!(g.check("127.0.0.1:9999".parse().unwrap()).is_err());
        assert!(g.check("10.0.0.1:3128".parse().unwrap()).is_ok());
    }

    #[test]
    fn this_host_is_denied_by_default() {
        let g = IpGuard::new(vec![], vec![], vec![]);
        for a in [
            "127.0.0.1:8080",
            "127.1.2.3:80",
            "[::1]:80",
            "0.0.0.0:80",
            "[::]:80",
            "[::ffff:127.0.0.1]:80",
            "[::127.0.0.1]:80",
            "[64:ff9b::7f00:1]:80",
            "[64:ff9b::a9fe:a9fe]:80",
        ] {
            let e = g.check(a.parse().unwrap()).unwrap_err();
            assert_eq!(e.0, "deny_dest", "{a}");
            assert!(e.1.contains("allow-dest"), "{a}: {}", e.1);
        }
        assert!(g.check("10.0.0.1:80".parse().unwrap()).is_ok());
        assert!(g.check("[2001:db8::1]:80".parse().unwrap()).is_ok());
    }

    #[test]
    fn allow_dest_lifts_builtins_but_not_the_loop_guard_or_deny_dest() {
        let g = IpGuard::new(
            nets(&["127.0.0.9/32"]),
            nets(&["127.0.0.0/8", "::1/128"]),
            vec![
                "127.0.0.1:3128".parse().unwrap(),
                "127.0.0.1:9128".parse().unwrap(),
            ],
        );
        assert!(g.check("127.0.0.1:8080".parse().unwrap()).is_ok());
        assert!(g.check("[::1]:8080".parse().unwrap()).is_ok());
        assert!(g.check("[::ffff:127.0.0.1]:8080".parse().unwrap()).is_ok());
        // The proxy's own ports stay refused, however they are spelled.
        for a in [
            "127.0.0.1:3128",
            "127.0.0.1:9128",
            "[::ffff:127.0.0.1]:9128",
            "0.0.0.0:9128",
            "[::]:9128",
        ] {
            assert_eq!(g.check(a.parse().unwrap()).unwrap_err().0, "loop", "{a}");
        }
        // Still denied: not lifted, or denied explicitly.
        assert!(g.check("0.0.0.0:80".parse().unwrap()).is_err());
        assert!(g.check("169.254.169.254:80".parse().unwrap()).is_err());
        assert_eq!(
            g.check("127.0.0.9:80".parse().unwrap()).unwrap_err().0,
            "deny_dest"
        );
    }

    #[test]
    fn a_wildcard_listener_is_reached_on_every_local_address() {
        let g = IpGuard::new(
            vec![],
            nets(&["127.0.0.0/8"]),
            vec!["0.0.0.0:3128".parse().unwrap()],
        );
        // Any loopback address reaches 0.0.0.0:3128.
        assert_eq!(
            g.check("127.0.0.2:3128".parse().unwrap()).unwrap_err().0,
            "loop"
        );
        // Every address of a local interface too (loopback is one the test can count on).
        assert!(is_local_address("127.0.0.1".parse().unwrap()));
        // TEST-NET-3 is nobody's address.
        assert!(!is_local_address("203.0.113.77".parse().unwrap()));
        assert!(g.check("203.0.113.77:3128".parse().unwrap()).is_ok());
    }

    #[test]
    fn self_connections() {
        let s = |p: &str, l: &str| is_self_connection(p.parse().unwrap(), l.parse().unwrap());
        assert!(s("10.1.2.3:40000", "10.1.2.3:3128"));
        assert!(s("[fd00::2]:40000", "[fd00::2]:3128"));
        assert!(s("[::ffff:10.1.2.3]:40000", "10.1.2.3:3128"));
        assert!(!s("10.1.2.4:40000", "10.1.2.3:3128"));
        assert!(!s("127.0.0.1:40000", "127.0.0.1:3128"));
        assert!(!s("[::1]:40000", "[::1]:3128"));
    }
}

//! Destination address checks that run on literal IPs and again on every address a name
//! resolves to, so that DNS cannot steer the proxy into a denied network (cloud metadata)
//! or back into itself (a forwarding loop).

use std::net::SocketAddr;

use ipnet::IpNet;

use super::hosts::canonical_ip;

#[derive(Debug, Clone, Default)]
pub struct IpGuard {
    deny: Vec<IpNet>,
    own: Vec<SocketAddr>,
}

impl IpGuard {
    pub fn new(deny: Vec<IpNet>, own: Vec<SocketAddr>) -> Self {
        Self { deny, own }
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
        let is_self = self.own.iter().any(|own| {
            own.port() == addr.port()
                && (canonical_ip(own.ip()) == ip
                    || ((own.ip().is_unspecified() || ip.is_unspecified())
                        && (ip.is_loopback() || ip.is_unspecified())))
        });
        if is_self {
            return Err((
                "loop",
                format!(
                    "destination {} is this proxy's own listening address (forwarding loop)",
                    SocketAddr::new(ip, addr.port())
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denies_metadata_and_self() {
        let g = IpGuard::new(
            vec![
                "169.254.0.0/16".parse().unwrap(),
                "fe80::/10".parse().unwrap(),
            ],
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
        assert!(g.check("127.0.0.1:8080".parse().unwrap()).is_ok());
        assert!(g.check("10.0.0.1:3128".parse().unwrap()).is_ok());
    }
}

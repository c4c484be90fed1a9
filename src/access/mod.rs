//! Access policy: who may use the proxy (client networks, proxy authentication) and where
//! requests may go (domain patterns, CONNECT ports, denied networks before and after DNS).
//! Every denial names the rule that matched.

pub mod auth;
pub mod hosts;
pub mod ip_guard;

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

use crate::error::ProxyError;
use crate::http::target::Target;
use auth::Users;
use hosts::{HostList, PortSet, canonical_ip};
use ip_guard::IpGuard;

/// The access rules as configured (built by `config`).
#[derive(Debug, Clone)]
pub struct AccessSettings {
    /// Client networks allowed to use the proxy.
    pub allow_client: Vec<IpNet>,
    /// With users, clients must authenticate (Basic).
    pub users: Option<Users>,
    pub realm: String,
    /// When not empty, the only destination hosts allowed.
    pub allow_domain: HostList,
    pub deny_domain: HostList,
    pub connect_ports: PortSet,
    /// Denied in addition to the built-in networks ([`ip_guard::BUILTIN_DENY`]).
    pub deny_dest: Vec<IpNet>,
    /// Built-in denied networks allowed after all.
    pub allow_dest: Vec<IpNet>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    allow_client: Vec<IpNet>,
    users: Option<Users>,
    pub realm: String,
    allow_domain: HostList,
    deny_domain: HostList,
    connect_ports: PortSet,
    guard: IpGuard,
}

fn denied(reason: &'static str, rule: impl Into<String>) -> ProxyError {
    ProxyError::Denied {
        reason,
        rule: rule.into(),
    }
}

impl Policy {
    /// `own` are the proxy's bound listening addresses and the admin port's (to refuse
    /// loops, and requests to the admin API through the proxy).
    pub fn new(cfg: &AccessSettings, own: Vec<SocketAddr>) -> Self {
        Self {
            allow_client: cfg.allow_client.clone(),
            users: cfg.users.clone(),
            realm: cfg.realm.clone(),
            allow_domain: cfg.allow_domain.clone(),
            deny_domain: cfg.deny_domain.clone(),
            connect_ports: cfg.connect_ports.clone(),
            guard: IpGuard::new(cfg.deny_dest.clone(), cfg.allow_dest.clone(), own),
        }
    }

    pub fn check_client(&self, ip: IpAddr) -> Result<(), ProxyError> {
        let ip = canonical_ip(ip);
        if self.allow_client.iter().any(|n| n.contains(&ip)) {
            Ok(())
        } else {
            Err(denied(
                "client_network",
                format!("client {ip} is not in allow-client"),
            ))
        }
    }

    /// Whether clients must authenticate.
    pub fn requires_auth(&self) -> bool {
        self.users.is_some()
    }

    /// With authentication on, the user name; `ClientAuthRequired` when missing or wrong,
    /// `ClientAuthThrottled` when `client` has failed too often lately.
    pub async fn authenticate(
        &self,
        client: IpAddr,
        headers: &HeaderMap,
    ) -> Result<Option<String>, ProxyError> {
        match &self.users {
            None => Ok(None),
            Some(users) => users.authenticate(client, headers).await.map(Some),
        }
    }

    /// Checks the destination as named by the client (before any DNS lookup).
    pub fn check_destination(&self, t: &Target, is_connect: bool) -> Result<(), ProxyError> {
        if is_connect && !self.connect_ports.contains(t.port) {
            return Err(denied(
                "connect_port",
                format!(
                    "CONNECT to port {} is not in connect-ports ({})",
                    t.port, self.connect_ports
                ),
            ));
        }
        if let Some(rule) = self.deny_domain.matching(&t.host) {
            return Err(denied(
                "deny_domain",
                format!("host {} matches deny-domain `{rule}`", t.host),
            ));
        }
        if !self.allow_domain.is_empty() && !self.allow_domain.matches(&t.host) {
            return Err(denied(
                "allow_domain",
                format!("host {} is not in allow-domain", t.host),
            ));
        }
        if let Some(ip) = t.ip() {
            self.check_address(SocketAddr::new(ip, t.port))?;
        } else if is_localhost_name(&t.host) {
            // Checked before any lookup: with a parent the name is never resolved here.
            for ip in [
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
            ] {
                self.check_address(SocketAddr::new(ip, t.port))?;
            }
        }
        Ok(())
    }

    /// Checks one resolved address of the destination.
    pub fn check_address(&self, addr: SocketAddr) -> Result<(), ProxyError> {
        self.guard
            .check(addr)
            .map_err(|(reason, rule)| denied(reason, rule))
    }
}

/// RFC 6761 §6.3: `localhost` and every name under `.localhost` are the loopback addresses,
/// whatever a resolver (or a parent proxy's resolver) would say.
pub fn is_localhost_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost" || (h.ends_with(".localhost") && h.len() > ".localhost".len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_names() {
        assert!(is_localhost_name("localhost"));
        assert!(is_localhost_name("LocalHost."));
        assert!(is_localhost_name("admin.localhost"));
        assert!(!is_localhost_name("localhost.example"));
        assert!(!is_localhost_name("notlocalhost"));
        assert!(!is_localhost_name(".localhost"));
    }
}

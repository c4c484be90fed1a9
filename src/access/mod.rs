//! Access policy: who may use the proxy (client networks, proxy authentication) and where
//! requests may go (domain patterns, CONNECT ports, denied networks before and after DNS).
//! Every denial names the rule that matched.

pub mod auth;
pub mod hosts;
pub mod ip_guard;

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

use crate::config::ValidConfig;
use crate::error::ProxyError;
use crate::http::target::Target;
use auth::Users;
use hosts::{HostList, PortSet, canonical_ip};
use ip_guard::IpGuard;

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
    /// `own` are the proxy's bound listening addresses (to refuse loops).
    pub fn new(cfg: &ValidConfig, own: Vec<SocketAddr>) -> Self {
        Self {
            allow_client: cfg.allow_client.clone(),
            users: cfg.users.clone(),
            realm: cfg.auth_realm.clone(),
            allow_domain: cfg.allow_domain.clone(),
            deny_domain: cfg.deny_domain.clone(),
            connect_ports: cfg.connect_ports.clone(),
            guard: IpGuard::new(cfg.deny_dest.clone(), own),
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

    /// With authentication on, the user name; `ClientAuthRequired` when missing or wrong.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Option<String>, ProxyError> {
        match &self.users {
            None => Ok(None),
            Some(users) => match users.authenticate(headers).await {
                Some(u) => Ok(Some(u)),
                None => Err(ProxyError::ClientAuthRequired),
            },
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

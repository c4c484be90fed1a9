//! Upstream choice: a destination goes direct when there is no parent or its host is on the
//! direct list; otherwise it goes through the parents in order (Squid's `never_direct`),
//! skipping peers marked down. Also the direct path's connect: DNS, the post-DNS address
//! check, and a timed TCP connect.

pub mod auth;
pub mod parent;
pub mod proxied;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::access::Policy;
use crate::access::hosts::HostList;
use crate::config::ValidConfig;
use crate::error::ProxyError;
use crate::http::target::Target;
use parent::Peer;

/// Where one request goes.
pub enum Route {
    Direct,
    /// Peers to try in order.
    Parents(Vec<Arc<Peer>>),
}

pub struct Upstream {
    peers: Vec<Arc<Peer>>,
    direct: HostList,
}

impl Upstream {
    pub fn new(cfg: &ValidConfig) -> Self {
        Self {
            peers: cfg
                .peers
                .iter()
                .map(|p| Peer::new(p.clone(), cfg.timeouts.peer_backoff))
                .collect(),
            direct: cfg.direct.clone(),
        }
    }

    pub fn peers(&self) -> &[Arc<Peer>] {
        &self.peers
    }

    /// Up peers first in configured order; when none is up, all of them (a retry beats a
    /// certain failure).
    pub fn route(&self, host: &str) -> Route {
        if self.peers.is_empty() || self.direct.matches(host) {
            return Route::Direct;
        }
        let up: Vec<Arc<Peer>> = self.peers.iter().filter(|p| p.is_up()).cloned().collect();
        if up.is_empty() {
            Route::Parents(self.peers.clone())
        } else {
            Route::Parents(up)
        }
    }
}

/// Resolves `target`, refuses it if any address is denied, and connects to the first
/// address that answers within the connect timeout.
pub async fn connect_direct(
    target: &Target,
    policy: &Policy,
    connect_timeout: std::time::Duration,
) -> Result<(TcpStream, SocketAddr), ProxyError> {
    let secs = connect_timeout.as_secs();
    let attempt = async {
        let addrs: Vec<SocketAddr> = match target.ip() {
            Some(ip) => vec![SocketAddr::new(ip, target.port)],
            None => tokio::net::lookup_host((target.host.as_str(), target.port))
                .await
                .map_err(|e| ProxyError::UpstreamDns {
                    host: target.host.clone(),
                    cause: e.to_string(),
                })?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(ProxyError::UpstreamDns {
                host: target.host.clone(),
                cause: "no addresses".into(),
            });
        }
        for a in &addrs {
            policy.check_address(*a)?;
        }
        let mut last = None;
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok((s, a));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(ProxyError::UpstreamConnect {
            host: target.authority(),
            cause: last.map_or_else(|| "no address".to_string(), |e| e.to_string()),
        })
    };
    match timeout(connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(ProxyError::UpstreamConnectTimeout {
            host: target.authority(),
            secs,
        }),
    }
}

//! Every way out of the proxy: the route choice ([`Upstream::route`]: direct when there is no
//! parent or the host is on the direct list, otherwise the parents in order, Squid's
//! `never_direct`, skipping peers marked down), the direct connect with its post-DNS address
//! check ([`direct`]), parents and their `CONNECT` handshake ([`parent`]), the pooled HTTP
//! clients that carry plain and HTTPS requests ([`client`]; plain requests to a parent go
//! over [`proxied`], whose connections authenticate once with [`auth`]: Basic, NTLM or
//! Kerberos), the TLS client configuration
//! that verifies every HTTPS origin ([`tls`]), and the opening of blind tunnels
//! ([`Upstream::open_tunnel`]).

pub mod auth;
pub mod client;
pub mod direct;
pub mod parent;
pub mod proxied;
pub mod settings;
pub mod tls;

use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::access::Policy;
use crate::access::hosts::HostList;
use crate::error::ProxyError;
use crate::http::target::Target;
use crate::telemetry::record::Hierarchy;
use client::Clients;
use parent::Peer;
pub use settings::{Timeouts, UpstreamSettings};

/// Where one request goes.
pub enum Route {
    Direct,
    /// Peers to try in order.
    Parents(Vec<Arc<Peer>>),
}

/// The upstream side of one configuration: parents with their failover state, the direct
/// list, the pooled clients.
pub struct Upstream {
    peers: Vec<Arc<Peer>>,
    direct: HostList,
    timeouts: Timeouts,
    policy: Arc<Policy>,
    pub clients: Clients,
}

impl Upstream {
    /// `policy` is checked again on the addresses a name resolves to.
    pub fn new(settings: &UpstreamSettings, policy: Arc<Policy>) -> Self {
        let peers: Vec<Arc<Peer>> = settings
            .peers
            .iter()
            .map(|p| Peer::new(p.clone(), settings.timeouts.peer_backoff))
            .collect();
        let clients = Clients::new(settings, policy.clone(), &peers);
        Self {
            peers,
            direct: settings.direct.clone(),
            timeouts: settings.timeouts.clone(),
            policy,
            clients,
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

    /// Opens the upstream leg of a blind tunnel to `target`: directly, or through the parents
    /// in order (a parent that cannot be reached is marked down and the next one tried).
    /// Returns the stream and any bytes a parent sent past its `CONNECT` answer; `hier` is the
    /// way it went (or was last tried).
    pub async fn open_tunnel(
        &self,
        target: &Target,
        hier: &mut Hierarchy,
    ) -> Result<(TcpStream, Bytes), ProxyError> {
        let peers = match self.route(&target.host) {
            Route::Direct => {
                let (s, addr) =
                    direct::connect_direct(target, &self.policy, self.timeouts.connect).await?;
                *hier = Hierarchy::direct(addr.ip());
                return Ok((s, Bytes::new()));
            }
            Route::Parents(peers) => peers,
        };
        let mut last = None;
        for peer in peers {
            *hier = Hierarchy::parent(&peer.name);
            match peer.open_tunnel(target, &self.timeouts).await {
                Ok(x) => {
                    peer.mark_up();
                    return Ok(x);
                }
                Err(e) if e.is_peer_unreachable() => {
                    peer.mark_down();
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ProxyError::UpstreamConnect {
            host: target.authority(),
            cause: "no parent configured".into(),
        }))
    }
}

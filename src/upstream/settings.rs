//! What the upstream side is configured with: the parents, the direct list, the TLS client
//! configuration for HTTPS origins and the timeouts of every way out. Built by `config`.
//! A parent's configuration shows its user but never its password.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use rustls::ClientConfig;

use crate::access::hosts::HostList;
use crate::http::target::Target;
use crate::upstream::auth::{Choice, Credentials, kerberos};

/// Timeouts of the connections cuttle opens.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// TCP connect to an origin (and the TLS handshake with it).
    pub connect: Duration,
    /// TCP connect to a parent.
    pub parent_connect: Duration,
    /// A parent's answer to `CONNECT`.
    pub parent_handshake: Duration,
    /// How long a parent that failed to connect is skipped.
    pub peer_backoff: Duration,
    /// Idle pooled connections are closed after this long.
    pub pool_idle: Duration,
}

#[derive(Clone)]
pub struct UpstreamSettings {
    /// Parents in failover order (empty: every destination goes direct).
    pub peers: Vec<PeerConfig>,
    /// Destinations reached without the parents.
    pub direct: HostList,
    /// TLS client configuration for HTTPS origins.
    pub tls: Arc<ClientConfig>,
    pub timeouts: Timeouts,
}

/// One parent as configured. `auth` is the precomputed, sensitive Basic
/// `Proxy-Authorization`; `credentials` the same user and password for NTLM and Kerberos.
/// The most an upstream HTTP/1 connection buffers of what it reads (hyper's default grows to
/// 400 KiB on a fast body and keeps it while the connection is pooled). One term of the
/// per-connection cost in the memory formula (`config::sizing`).
pub const READ_BUF_MAX: usize = 64 * 1024;

#[derive(Clone)]
pub struct PeerConfig {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub auth: Option<HeaderValue>,
    pub credentials: Option<Arc<Credentials>>,
    /// `--parent-auth` (or the peer's own `auth` in the config file).
    pub scheme: Choice,
    /// NTLM's workstation name (`--parent-workstation`).
    pub workstation: String,
    /// The Kerberos client, when Negotiate is possible with this configuration.
    pub kerberos: Option<Arc<kerberos::Client>>,
}

impl PeerConfig {
    /// `host:port` with IPv6 bracketed: the peer's name in logs and messages.
    pub fn name(&self) -> String {
        Target {
            host: self.host.clone(),
            port: self.port,
        }
        .authority()
    }
}

impl fmt::Debug for PeerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerConfig({self})")
    }
}

/// Shows the user but never the password (`user:****@host:port`).
impl fmt::Display for PeerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.user, &self.auth) {
            (Some(u), _) => write!(f, "{u}:****@{}", self.name()),
            (None, Some(_)) => write!(f, ":****@{}", self.name()),
            (None, None) => write!(f, "{}", self.name()),
        }
    }
}

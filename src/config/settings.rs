//! The checked configuration ([`ValidConfig`]): the settings of each part, built by
//! validation, and how `check-config` prints it (the options themselves, secrets masked by
//! their type, then what cuttle derived from them).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::options::{Options, Secret};
use crate::access::AccessSettings;
use crate::access::hosts::HostList;
use crate::cache::CacheSettings;
use crate::mitm::ca::Ca;
use crate::telemetry::LogFormat;
use crate::upstream::UpstreamSettings;

/// Timeouts on the client side and of the exchanges the handlers run (the connections cuttle
/// opens have theirs in [`UpstreamSettings`]).
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// Time to wait for a response head, and the longest pause inside a response body.
    pub read: Duration,
    /// A tunnel with no traffic either way for this long is closed.
    pub tunnel_idle: Duration,
    /// Time a client has to send a complete request head, and the longest idle time between
    /// requests on a client connection.
    pub header_read: Duration,
    /// Grace period for in-flight requests and tunnels at shutdown.
    pub shutdown_grace: Duration,
}

/// Interception: which CONNECTs are intercepted, and with which CA.
#[derive(Clone, Default)]
pub struct InterceptSettings {
    pub hosts: HostList,
    /// The patterns as written (the CA's name constraints).
    pub patterns: Vec<String>,
    pub exclude: HostList,
    /// The interception CA, when given (otherwise an ephemeral one is made when intercepting).
    pub ca: Option<Arc<Ca>>,
}

impl InterceptSettings {
    pub fn is_on(&self) -> bool {
        !self.hosts.is_empty()
    }
}

/// The checked configuration the proxy runs with.
#[derive(Clone)]
pub struct ValidConfig {
    /// What the user gave, with defaults filled in (what `check-config` prints).
    pub options: Options,
    pub listen: Vec<SocketAddr>,
    pub timeouts: Timeouts,
    pub max_header_size: usize,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub access: AccessSettings,
    pub upstream: UpstreamSettings,
    /// `None` when both cache tiers are off.
    pub cache: Option<CacheSettings>,
    pub intercept: InterceptSettings,
    /// Registry mirror routes on the proxy port.
    pub mirrors: Vec<crate::mirror::MirrorSettings>,
    /// The TLS listener (`--tls-listen`): its addresses and server configuration.
    pub tls_listen: Vec<SocketAddr>,
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// `None` when the admin port is off.
    pub admin_listen: Option<SocketAddr>,
    pub admin_token: Option<Secret>,
    pub log_format: LogFormat,
    pub log_level: String,
}

impl fmt::Debug for ValidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidConfig")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The effective configuration as `check-config` prints it: every option as given or
/// defaulted (TOML, printed from [`Options`] itself, secrets masked by their type), then
/// what cuttle derived from them.
impl fmt::Display for ValidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.options.to_toml())?;
        let list = |v: Vec<String>| {
            format!(
                "[{}]",
                v.iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        writeln!(f, "\n# What cuttle made of the options above:\n[effective]")?;
        let parents = self.upstream.peers.iter().map(|p| p.to_string()).collect();
        writeln!(f, "parents = {}", list(parents))?;
        let schemes = self
            .upstream
            .peers
            .iter()
            .map(|p| {
                let krb = p
                    .kerberos
                    .as_ref()
                    .map(|k| format!(" (kerberos {})", k.settings().principal_name()))
                    .unwrap_or_default();
                format!("{}={}{krb}", p.name(), p.scheme)
            })
            .collect();
        writeln!(f, "parent-auth = {}", list(schemes))?;
        // The built-in networks, then the configured ones.
        let deny = crate::access::ip_guard::builtin_deny()
            .iter()
            .chain(&self.access.deny_dest)
            .map(|n| n.to_string())
            .collect();
        writeln!(f, "deny-dest = {}", list(deny))?;
        match &self.access.users {
            Some(u) => writeln!(f, "auth = \"basic, {} user(s)\"", u.len())?,
            None => writeln!(f, "auth = \"off\"")?,
        }
        let ca = match (&self.intercept.ca, self.intercept.is_on()) {
            (Some(_), _) => "loaded",
            (None, true) => "ephemeral",
            (None, false) => "off",
        };
        writeln!(f, "ca = \"{ca}\"")?;
        match &self.cache {
            None => writeln!(f, "cache = \"off\""),
            Some(c) => {
                let dir = c
                    .dir
                    .as_ref()
                    .map_or_else(|| "off".to_string(), |d| d.display().to_string());
                writeln!(f, "cache-dir = {dir:?}")?;
                writeln!(f, "cache-size = {}", c.disk_size)?;
                writeln!(f, "cache-mem = {}", c.mem_size)?;
                writeln!(f, "max-mem-object-size = {}", c.mem_object)?;
                match &c.shared {
                    Some(s) => {
                        let creds = if s.credentials.is_some() {
                            "static keys"
                        } else {
                            "AWS credential chain"
                        };
                        writeln!(f, "shared-cache = {:?}", s.url())?;
                        writeln!(
                            f,
                            "shared-cache-store = \"{}, region {}, {}, {creds}\"",
                            s.endpoint.as_deref().unwrap_or("AWS S3"),
                            s.region,
                            if s.path_style {
                                "path-style"
                            } else {
                                "virtual-hosted"
                            },
                        )?;
                        let lease = s.lease.map_or_else(
                            || "off".to_string(),
                            |t| format!("on, timeout {}", humantime::format_duration(t)),
                        );
                        writeln!(f, "shared-cache-lease = {lease:?}")?;
                    }
                    None => writeln!(f, "shared-cache = \"off\"")?,
                }
                writeln!(f, "cache-rules = {}", c.rules.len())
            }
        }
    }
}

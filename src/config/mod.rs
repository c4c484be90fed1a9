//! Configuration: one `Options` struct read from flags (each with a `CUTTLE_*` variable), the
//! environment and an optional TOML file, merged with precedence flags > env > file >
//! defaults, then checked once by [`Options::validate`] into a [`ValidConfig`] whose values
//! are ready to use (parsed networks, the parent's `Proxy-Authorization`, loaded users).

pub mod env;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::access::auth::Users;
use crate::access::hosts::{HostList, PortSet};
use crate::upstream::parent::PeerConfig;

/// Every setting, as given by the user. `None` means "not given here".
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Options {
    /// Addresses to listen on for proxy clients (comma-separated; IPv6 as [::]:3128).
    #[arg(long, env = "CUTTLE_LISTEN", value_delimiter = ',')]
    pub listen: Option<Vec<String>>,

    /// Parent proxies: url_encoded_user:url_encoded_password:host:port or
    /// http://user:pass@host:port, comma-separated for failover.
    #[arg(long, env = "CACHE_PEER", hide_env_values = true)]
    pub cache_peer: Option<String>,

    /// File holding the CACHE_PEER value (e.g. a mounted Kubernetes Secret).
    #[arg(long, env = "CACHE_PEER_FILE")]
    pub cache_peer_file: Option<PathBuf>,

    /// Destinations reached without the parent (NO_PROXY syntax: suffixes, *.corp, IPs, CIDRs).
    #[arg(long, env = "CUTTLE_DIRECT", value_delimiter = ',')]
    pub direct: Option<Vec<String>>,

    /// Ports CONNECT may reach: `any` (default) or a list such as 443,8443,9000-9100.
    #[arg(long, env = "CUTTLE_CONNECT_PORTS", value_delimiter = ',')]
    pub connect_ports: Option<Vec<String>>,

    /// Client networks allowed to use the proxy (default: loopback, RFC 1918, RFC 4193,
    /// 100.64.0.0/10).
    #[arg(long, env = "CUTTLE_ALLOW_CLIENT", value_delimiter = ',')]
    pub allow_client: Option<Vec<String>>,

    /// htpasswd file with bcrypt entries; when set, clients must authenticate (Basic).
    #[arg(long, env = "CUTTLE_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,

    /// Realm shown in the Proxy-Authenticate challenge.
    #[arg(long, env = "CUTTLE_AUTH_REALM")]
    pub auth_realm: Option<String>,

    /// Destination networks that are never reached (checked after DNS too). Default:
    /// link-local 169.254.0.0/16 and fe80::/10 (cloud metadata).
    #[arg(long, env = "CUTTLE_DENY_DEST", value_delimiter = ',')]
    pub deny_dest: Option<Vec<String>>,

    /// If set, only these destination hosts are allowed (host patterns).
    #[arg(long, env = "CUTTLE_ALLOW_DOMAIN", value_delimiter = ',')]
    pub allow_domain: Option<Vec<String>>,

    /// Destination hosts that are denied (host patterns).
    #[arg(long, env = "CUTTLE_DENY_DOMAIN", value_delimiter = ',')]
    pub deny_domain: Option<Vec<String>>,

    /// TCP connect timeout to origins (e.g. 10s).
    #[arg(long, env = "CUTTLE_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<String>,

    /// Time to wait for a response head, and the longest pause inside a response body.
    #[arg(long, env = "CUTTLE_READ_TIMEOUT")]
    pub read_timeout: Option<String>,

    /// TCP connect timeout to a parent proxy.
    #[arg(long, env = "CUTTLE_PARENT_CONNECT_TIMEOUT")]
    pub parent_connect_timeout: Option<String>,

    /// Time for a parent to answer a CONNECT.
    #[arg(long, env = "CUTTLE_PARENT_HANDSHAKE_TIMEOUT")]
    pub parent_handshake_timeout: Option<String>,

    /// How long a parent that failed to connect is skipped before it is tried again.
    #[arg(long, env = "CUTTLE_PEER_BACKOFF")]
    pub peer_backoff: Option<String>,

    /// A tunnel with no traffic either way for this long is closed.
    #[arg(long, env = "CUTTLE_TUNNEL_IDLE_TIMEOUT")]
    pub tunnel_idle_timeout: Option<String>,

    /// Time a client has to send a complete request head (slowloris guard).
    #[arg(long, env = "CUTTLE_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<String>,

    /// Idle pooled upstream connections are closed after this long.
    #[arg(long, env = "CUTTLE_POOL_IDLE_TIMEOUT")]
    pub pool_idle_timeout: Option<String>,

    /// Grace period for in-flight requests and tunnels at shutdown.
    #[arg(long, env = "CUTTLE_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,

    /// Largest request head accepted, in bytes (at least 8192).
    #[arg(long, env = "CUTTLE_MAX_HEADER_SIZE")]
    pub max_header_size: Option<u64>,

    /// Most client connections served at once; more are refused with 503.
    #[arg(long, env = "CUTTLE_MAX_CONNECTIONS")]
    pub max_connections: Option<u64>,

    /// Access log format on stdout: squid (native) or json.
    #[arg(long, env = "CUTTLE_LOG_FORMAT")]
    pub log_format: Option<String>,

    /// Diagnostics filter for stderr (tracing syntax, e.g. info or cuttle=debug).
    #[arg(long, env = "CUTTLE_LOG_LEVEL")]
    pub log_level: Option<String>,
}

macro_rules! merge_fields {
    ($hi:expr, $lo:expr, $($f:ident),+) => {
        Options { $($f: $hi.$f.or($lo.$f)),+ }
    };
}

impl Options {
    /// `self` wins where it has a value; `lower` fills the rest.
    pub fn or(self, lower: Options) -> Options {
        merge_fields!(
            self,
            lower,
            listen,
            cache_peer,
            cache_peer_file,
            direct,
            connect_ports,
            allow_client,
            auth_file,
            auth_realm,
            deny_dest,
            allow_domain,
            deny_domain,
            connect_timeout,
            read_timeout,
            parent_connect_timeout,
            parent_handshake_timeout,
            peer_backoff,
            tunnel_idle_timeout,
            header_read_timeout,
            pool_idle_timeout,
            shutdown_grace,
            max_header_size,
            max_connections,
            log_format,
            log_level
        )
    }

    /// Reads a TOML config file (keys are the flag names, e.g. `connect-timeout = "5s"`).
    pub fn from_file(path: &std::path::Path) -> Result<Options, Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("config: cannot read {}: {e}", path.display())])?;
        toml::from_str(&text).map_err(|e| {
            vec![format!(
                "config {}: {}",
                path.display(),
                e.to_string().trim()
            )]
        })
    }

    /// Checks every field and precomputes what the proxy needs. All problems are returned,
    /// one line each, naming the field.
    pub fn validate(self) -> Result<ValidConfig, Vec<String>> {
        let mut errs = Vec::new();
        let mut dur = |field: &str, v: Option<String>, default: Duration| -> Duration {
            match v {
                None => default,
                Some(s) => match humantime::parse_duration(s.trim()) {
                    Ok(d) if !d.is_zero() => d,
                    Ok(_) => {
                        errs.push(format!("{field}: must be greater than zero"));
                        default
                    }
                    Err(e) => {
                        errs.push(format!("{field}: invalid duration `{s}`: {e}"));
                        default
                    }
                },
            }
        };
        let timeouts = Timeouts {
            connect: dur(
                "connect-timeout",
                self.connect_timeout,
                Duration::from_secs(10),
            ),
            read: dur("read-timeout", self.read_timeout, Duration::from_secs(300)),
            parent_connect: dur(
                "parent-connect-timeout",
                self.parent_connect_timeout,
                Duration::from_secs(10),
            ),
            parent_handshake: dur(
                "parent-handshake-timeout",
                self.parent_handshake_timeout,
                Duration::from_secs(30),
            ),
            peer_backoff: dur("peer-backoff", self.peer_backoff, Duration::from_secs(30)),
            tunnel_idle: dur(
                "tunnel-idle-timeout",
                self.tunnel_idle_timeout,
                Duration::from_secs(3600),
            ),
            header_read: dur(
                "header-read-timeout",
                self.header_read_timeout,
                Duration::from_secs(30),
            ),
            pool_idle: dur(
                "pool-idle-timeout",
                self.pool_idle_timeout,
                Duration::from_secs(90),
            ),
            shutdown_grace: dur(
                "shutdown-grace",
                self.shutdown_grace,
                Duration::from_secs(25),
            ),
        };

        let mut listen = Vec::new();
        for a in self.listen.unwrap_or_else(|| vec!["0.0.0.0:3128".into()]) {
            match a.trim().parse::<SocketAddr>() {
                Ok(sa) => listen.push(sa),
                Err(_) => errs.push(format!(
                    "listen: `{a}` is not an address:port (IPv6 as [::]:3128)"
                )),
            }
        }
        if listen.is_empty() && errs.is_empty() {
            errs.push("listen: at least one address is needed".into());
        }

        let peer_text = match (self.cache_peer, self.cache_peer_file) {
            (Some(v), _) if !v.trim().is_empty() => Some(v),
            (_, Some(path)) => match env::read_secret_file(&path) {
                Ok(v) => Some(v),
                Err(e) => {
                    errs.push(format!("cache-peer-file: {e}"));
                    None
                }
            },
            _ => None,
        };
        let peers = match peer_text {
            Some(t) if !t.trim().is_empty() => match env::parse_cache_peer(&t) {
                Ok(p) => p,
                Err(e) => {
                    errs.push(format!("CACHE_PEER: {e}"));
                    Vec::new()
                }
            },
            _ => Vec::new(),
        };

        let mut hosts = |field: &str, v: Option<Vec<String>>| -> HostList {
            match HostList::parse(&v.unwrap_or_default()) {
                Ok(l) => l,
                Err(e) => {
                    errs.push(format!("{field}: {e}"));
                    HostList::default()
                }
            }
        };
        let direct = hosts("direct", self.direct);
        let allow_domain = hosts("allow-domain", self.allow_domain);
        let deny_domain = hosts("deny-domain", self.deny_domain);

        let connect_ports = match PortSet::parse(&self.connect_ports.unwrap_or_default()) {
            Ok(p) => p,
            Err(e) => {
                errs.push(format!("connect-ports: {e}"));
                PortSet::Any
            }
        };

        let mut nets = |field: &str, v: Option<Vec<String>>, default: &[&str]| -> Vec<IpNet> {
            let list = v.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
            let mut out = Vec::new();
            for s in list {
                let s = s.trim();
                if s.is_empty() {
                    continue;
                }
                match s
                    .parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                {
                    Ok(n) => out.push(n),
                    Err(_) => errs.push(format!("{field}: `{s}` is not an IP network")),
                }
            }
            out
        };
        let allow_client = nets(
            "allow-client",
            self.allow_client,
            &[
                "127.0.0.0/8",
                "::1/128",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "fc00::/7",
                "100.64.0.0/10",
            ],
        );
        let deny_dest = nets(
            "deny-dest",
            self.deny_dest,
            &["169.254.0.0/16", "fe80::/10"],
        );

        let users = match &self.auth_file {
            None => None,
            Some(p) => match Users::load(p) {
                Ok(u) => Some(u),
                Err(e) => {
                    errs.push(format!("auth-file: {e}"));
                    None
                }
            },
        };

        let max_header_size = self.max_header_size.unwrap_or(65536);
        if max_header_size < 8192 {
            errs.push("max-header-size: must be at least 8192".into());
        }
        let max_connections = self.max_connections.unwrap_or(10_000);
        if max_connections == 0 {
            errs.push("max-connections: must be at least 1".into());
        }
        let log_format = match self.log_format.as_deref().map(str::trim) {
            None | Some("squid") => LogFormat::Squid,
            Some("json") => LogFormat::Json,
            Some(other) => {
                errs.push(format!("log-format: `{other}` is not one of squid, json"));
                LogFormat::Squid
            }
        };

        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(ValidConfig {
            listen,
            peers,
            direct,
            connect_ports,
            allow_client,
            deny_dest,
            allow_domain,
            deny_domain,
            users,
            auth_realm: self.auth_realm.unwrap_or_else(|| "cuttle".into()),
            timeouts,
            max_header_size: max_header_size.min(usize::MAX as u64) as usize,
            max_connections: max_connections.min(usize::MAX as u64) as usize,
            log_format,
            log_level: self.log_level.unwrap_or_else(|| "info".into()),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Squid,
    Json,
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub parent_connect: Duration,
    pub parent_handshake: Duration,
    pub peer_backoff: Duration,
    pub tunnel_idle: Duration,
    pub header_read: Duration,
    pub pool_idle: Duration,
    pub shutdown_grace: Duration,
}

/// The checked configuration the proxy runs with.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    pub listen: Vec<SocketAddr>,
    pub peers: Vec<PeerConfig>,
    pub direct: HostList,
    pub connect_ports: PortSet,
    pub allow_client: Vec<IpNet>,
    pub deny_dest: Vec<IpNet>,
    pub allow_domain: HostList,
    pub deny_domain: HostList,
    pub users: Option<Users>,
    pub auth_realm: String,
    pub timeouts: Timeouts,
    pub max_header_size: usize,
    pub max_connections: usize,
    pub log_format: LogFormat,
    pub log_level: String,
}

/// The effective configuration as `check-config` prints it: TOML-like, secrets masked.
impl fmt::Display for ValidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[String]| {
            format!(
                "[{}]",
                v.iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let secs = |d: Duration| format!("\"{}\"", humantime::format_duration(d));
        let t = &self.timeouts;
        writeln!(
            f,
            "listen = {}",
            list(
                &self
                    .listen
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
            )
        )?;
        let peers: Vec<String> = self.peers.iter().map(|p| p.to_string()).collect();
        writeln!(f, "cache-peer = {}", list(&peers))?;
        writeln!(f, "direct = {:?}", self.direct.to_string())?;
        writeln!(f, "connect-ports = {:?}", self.connect_ports.to_string())?;
        writeln!(
            f,
            "allow-client = {}",
            list(
                &self
                    .allow_client
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
            )
        )?;
        writeln!(
            f,
            "deny-dest = {}",
            list(
                &self
                    .deny_dest
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
            )
        )?;
        writeln!(f, "allow-domain = {:?}", self.allow_domain.to_string())?;
        writeln!(f, "deny-domain = {:?}", self.deny_domain.to_string())?;
        match &self.users {
            Some(u) => writeln!(f, "auth = \"basic, {} user(s)\"", u.len())?,
            None => writeln!(f, "auth = \"off\"")?,
        }
        writeln!(f, "auth-realm = {:?}", self.auth_realm)?;
        writeln!(f, "connect-timeout = {}", secs(t.connect))?;
        writeln!(f, "read-timeout = {}", secs(t.read))?;
        writeln!(f, "parent-connect-timeout = {}", secs(t.parent_connect))?;
        writeln!(f, "parent-handshake-timeout = {}", secs(t.parent_handshake))?;
        writeln!(f, "peer-backoff = {}", secs(t.peer_backoff))?;
        writeln!(f, "tunnel-idle-timeout = {}", secs(t.tunnel_idle))?;
        writeln!(f, "header-read-timeout = {}", secs(t.header_read))?;
        writeln!(f, "pool-idle-timeout = {}", secs(t.pool_idle))?;
        writeln!(f, "shutdown-grace = {}", secs(t.shutdown_grace))?;
        writeln!(f, "max-header-size = {}", self.max_header_size)?;
        writeln!(f, "max-connections = {}", self.max_connections)?;
        writeln!(
            f,
            "log-format = \"{}\"",
            match self.log_format {
                LogFormat::Squid => "squid",
                LogFormat::Json => "json",
            }
        )?;
        writeln!(f, "log-level = {:?}", self.log_level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let c = Options::default().validate().unwrap();
        assert_eq!(
            c.listen,
            vec!["0.0.0.0:3128".parse::<SocketAddr>().unwrap()]
        );
        assert!(c.peers.is_empty());
        assert_eq!(c.timeouts.shutdown_grace, Duration::from_secs(25));
        assert_eq!(c.allow_client.len(), 7);
    }

    #[test]
    fn precedence_higher_wins() {
        let flags = Options {
            connect_timeout: Some("1s".into()),
            ..Default::default()
        };
        let file = Options {
            connect_timeout: Some("9s".into()),
            read_timeout: Some("7s".into()),
            ..Default::default()
        };
        let c = flags.or(file).validate().unwrap();
        assert_eq!(c.timeouts.connect, Duration::from_secs(1));
        assert_eq!(c.timeouts.read, Duration::from_secs(7));
    }

    #[test]
    fn every_problem_is_reported_by_field() {
        let o = Options {
            listen: Some(vec!["nope".into()]),
            connect_timeout: Some("soon".into()),
            cache_peer: Some("u:hunter2:h:0".into()),
            max_header_size: Some(10),
            log_format: Some("xml".into()),
            allow_client: Some(vec!["10.0.0.0/33".into()]),
            ..Default::default()
        };
        let errs = o.validate().unwrap_err();
        let all = errs.join("\n");
        for field in [
            "listen",
            "connect-timeout",
            "CACHE_PEER",
            "max-header-size",
            "log-format",
            "allow-client",
        ] {
            assert!(all.contains(field), "{field} missing in {all}");
        }
        assert!(!all.contains("hunter2"));
    }

    #[test]
    fn toml_file_uses_flag_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "listen = [\"127.0.0.1:8080\"]\nconnect-timeout = \"3s\"\nmax-connections = 5\n",
        )
        .unwrap();
        let o = Options::from_file(&p).unwrap();
        let c = o.validate().unwrap();
        assert_eq!(c.max_connections, 5);
        std::fs::write(&p, "bogus = 1\n").unwrap();
        let e = Options::from_file(&p).unwrap_err();
        assert!(e[0].contains("bogus"), "{e:?}");
    }

    #[test]
    fn display_masks_secrets() {
        let o = Options {
            cache_peer: Some("bob:hunter2:proxy:3128".into()),
            ..Default::default()
        };
        let shown = o.validate().unwrap().to_string();
        assert!(shown.contains("proxy:3128"));
        assert!(!shown.contains("hunter2"));
    }
}

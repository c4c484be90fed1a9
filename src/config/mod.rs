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
use crate::cache::CacheSettings;
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

    /// How to authenticate to the parent: auto (answer its 407 with the strongest scheme it
    /// offers: Negotiate, then NTLM, then Basic), basic (sent pre-emptively), ntlm, negotiate.
    #[arg(long, env = "CUTTLE_PARENT_AUTH")]
    pub parent_auth: Option<String>,

    /// Workstation name sent in NTLM authentication (default: none).
    #[arg(long, env = "CUTTLE_PARENT_WORKSTATION")]
    pub parent_workstation: Option<String>,

    /// Keytab with the Kerberos key for Negotiate to the parent (the principal is the
    /// CACHE_PEER user, or the keytab's first one).
    #[arg(long, env = "CUTTLE_PARENT_KEYTAB")]
    pub parent_keytab: Option<PathBuf>,

    /// krb5.conf giving the default realm and the realms' KDCs.
    #[arg(long, env = "CUTTLE_KRB5_CONF")]
    pub krb5_conf: Option<PathBuf>,

    /// Kerberos realm of the parent user (default: krb5.conf's default_realm).
    #[arg(long, env = "CUTTLE_KRB5_REALM")]
    pub krb5_realm: Option<String>,

    /// KDCs as host[:port] (comma-separated; default: the realm's kdc lines in krb5.conf).
    #[arg(long, env = "CUTTLE_KRB5_KDC", value_delimiter = ',')]
    pub krb5_kdc: Option<Vec<String>>,

    /// Per-parent authentication (config file only: `[[peer]]` tables with name = "host:port",
    /// auth, workstation, keytab).
    #[arg(skip)]
    pub peer: Option<Vec<crate::upstream::auth::setup::PeerAuthOptions>>,

    /// Destinations reached without the parent (NO_PROXY syntax: suffixes, *.corp, IPs, CIDRs).
    #[arg(long, env = "CUTTLE_DIRECT", value_delimiter = ',')]
    pub direct: Option<Vec<String>>,

    /// Ports CONNECT may reach: `any` (default, as the Squid image allowed) or a list such as
    /// 443,8443,9000-9100 (stricter: tunnels only to HTTPS-like ports).
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

    /// Destination networks never reached (checked after DNS too), in addition to the
    /// built-in ones: loopback, 0.0.0.0/8, ::, link-local (cloud metadata).
    #[arg(long, env = "CUTTLE_DENY_DEST", value_delimiter = ',')]
    pub deny_dest: Option<Vec<String>>,

    /// Built-in denied destination networks to allow after all, e.g. 127.0.0.0/8,::1 for
    /// origins on the proxy's own host. The proxy's own ports stay refused.
    #[arg(long, env = "CUTTLE_ALLOW_DEST", value_delimiter = ',')]
    pub allow_dest: Option<Vec<String>>,

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

    /// Most connections one client address may have open at once; more are refused with 503.
    #[arg(long, env = "CUTTLE_MAX_CONNECTIONS_PER_CLIENT")]
    pub max_connections_per_client: Option<u64>,

    /// Access log format on stdout: squid (native) or json.
    #[arg(long, env = "CUTTLE_LOG_FORMAT")]
    pub log_format: Option<String>,

    /// Diagnostics filter for stderr (tracing syntax, e.g. info or cuttle=debug).
    #[arg(long, env = "CUTTLE_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Disk cache directory (default: cuttle-cache under the system temp dir).
    #[arg(long, env = "CUTTLE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Disk cache bound (e.g. 10GiB; 0 turns the disk tier off).
    #[arg(long, env = "CUTTLE_CACHE_SIZE")]
    pub cache_size: Option<String>,

    /// Memory cache bound (e.g. 256MiB; 0 turns the memory tier off).
    #[arg(long, env = "CUTTLE_CACHE_MEM")]
    pub cache_mem: Option<String>,

    /// Largest object stored (e.g. 4GiB).
    #[arg(long, env = "CUTTLE_MAX_OBJECT_SIZE")]
    pub max_object_size: Option<String>,

    /// Largest object kept in the memory tier (e.g. 8MiB).
    #[arg(long, env = "CUTTLE_MAX_MEM_OBJECT_SIZE")]
    pub max_mem_object_size: Option<String>,

    /// How long past freshness a stored response may be served when the origin or parent
    /// fails (e.g. 7d; 0s turns it off).
    #[arg(long, env = "CUTTLE_SERVE_STALE_ON_ERROR")]
    pub serve_stale_on_error: Option<String>,

    /// A Range request that misses fetches the whole object when it is at most this large.
    #[arg(long, env = "CUTTLE_RANGE_FETCH_LIMIT")]
    pub range_fetch_limit: Option<String>,

    /// Client networks allowed to send PURGE (default: none, PURGE is forwarded).
    #[arg(long, env = "CUTTLE_PURGE_ALLOW", value_delimiter = ',')]
    pub purge_allow: Option<Vec<String>>,

    /// Apply the built-in artifact rules (npm, Maven, PyPI, cargo, apt, Go): true or false.
    #[arg(long, env = "CUTTLE_BUILTIN_CACHE_RULES")]
    pub builtin_cache_rules: Option<bool>,

    /// Admin port (health probes, metrics, status page): address:port, or `off`.
    #[arg(long, env = "CUTTLE_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,

    /// Token required as `Authorization: Bearer` on the admin port (not for the probes).
    #[arg(long, env = "CUTTLE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// File holding the admin token.
    #[arg(long, env = "CUTTLE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Hosts whose CONNECT tunnels are intercepted (TLS terminated with cuttle's CA, so
    /// their HTTPS artifacts are cached): host patterns like registry.example.com,
    /// *.files.example.org.
    #[arg(long, env = "CUTTLE_INTERCEPT", value_delimiter = ',')]
    pub intercept: Option<Vec<String>>,

    /// Hosts never intercepted even when --intercept matches (e.g. certificate-pinning clients).
    #[arg(long, env = "CUTTLE_NO_INTERCEPT", value_delimiter = ',')]
    pub no_intercept: Option<Vec<String>>,

    /// The interception CA certificate (PEM). Without it, an ephemeral CA is generated.
    #[arg(long, env = "CUTTLE_CA_CERT_FILE")]
    pub ca_cert: Option<PathBuf>,

    /// The interception CA private key (PEM).
    #[arg(long, env = "CUTTLE_CA_KEY_FILE")]
    pub ca_key: Option<PathBuf>,

    /// Extra CA bundle (PEM) trusted for HTTPS origins, besides the system roots.
    #[arg(long, env = "CUTTLE_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,

    /// Cache rules (config file only: `[[cache-rule]]` tables).
    #[arg(skip)]
    pub cache_rule: Option<Vec<crate::cache::rules::RuleConfig>>,
}

/// Far above what one build pod opens (npm, Maven, cargo and pip use from a handful to a
/// few dozen connections; a node's pods behind one NAT address a few hundred), far below
/// `--max-connections`: one address, or a tunnel loop through a Service, cannot take the
/// whole proxy.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: u64 = 1000;

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
            parent_auth,
            parent_workstation,
            parent_keytab,
            krb5_conf,
            krb5_realm,
            krb5_kdc,
            peer,
            direct,
            connect_ports,
            allow_client,
            auth_file,
            auth_realm,
            deny_dest,
            allow_dest,
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
            max_connections_per_client,
            log_format,
            log_level,
            cache_dir,
            cache_size,
            cache_mem,
            max_object_size,
            max_mem_object_size,
            serve_stale_on_error,
            range_fetch_limit,
            purge_allow,
            builtin_cache_rules,
            admin_listen,
            admin_token,
            admin_token_file,
            intercept,
            no_intercept,
            ca_cert,
            ca_key,
            upstream_ca,
            cache_rule
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
                // Why five minutes: README, "Timeouts and limits".
                Duration::from_secs(300),
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
        let mut peers = match peer_text {
            Some(t) if !t.trim().is_empty() => match env::parse_cache_peer(&t) {
                Ok(p) => p,
                Err(e) => {
                    errs.push(format!("CACHE_PEER: {e}"));
                    Vec::new()
                }
            },
            _ => Vec::new(),
        };
        errs.extend(crate::upstream::auth::setup::apply(
            &mut peers,
            &crate::upstream::auth::setup::AuthOptions {
                scheme: self.parent_auth.as_deref(),
                workstation: self.parent_workstation.as_deref(),
                keytab: self.parent_keytab.as_deref(),
                krb5_conf: self.krb5_conf.as_deref(),
                realm: self.krb5_realm.as_deref(),
                kdcs: self.krb5_kdc.as_deref().unwrap_or_default(),
                per_peer: self.peer.as_deref().unwrap_or_default(),
                kdc_timeout: timeouts.parent_connect,
            },
        ));

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
        let intercept_patterns = self.intercept.clone().unwrap_or_default();
        let intercept = hosts("intercept", self.intercept);
        let no_intercept = hosts("no-intercept", self.no_intercept);
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
        let deny_dest = nets("deny-dest", self.deny_dest, &[]);
        let allow_dest = nets("allow-dest", self.allow_dest, &[]);
        let purge_allow = nets("purge-allow", self.purge_allow, &[]);

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
        let max_connections_per_client = self
            .max_connections_per_client
            .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_CLIENT);
        if max_connections_per_client == 0 {
            errs.push("max-connections-per-client: must be at least 1".into());
        }
        let log_format = match self.log_format.as_deref().map(str::trim) {
            None | Some("squid") => LogFormat::Squid,
            Some("json") => LogFormat::Json,
            Some(other) => {
                errs.push(format!("log-format: `{other}` is not one of squid, json"));
                LogFormat::Squid
            }
        };

        let mut size = |field: &str, v: Option<String>, default: u64| -> u64 {
            match v {
                None => default,
                Some(s) => match parse_size(&s) {
                    Some(n) => n,
                    None => {
                        errs.push(format!(
                            "{field}: `{s}` is not a size (e.g. 512MiB, 10GiB, 4096)"
                        ));
                        default
                    }
                },
            }
        };
        let disk_size = size("cache-size", self.cache_size, 10 << 30);
        let mem_size = size("cache-mem", self.cache_mem, 256 << 20);
        let max_object = size("max-object-size", self.max_object_size, 4 << 30);
        let mem_object = size("max-mem-object-size", self.max_mem_object_size, 8 << 20);
        let range_fetch_limit = size("range-fetch-limit", self.range_fetch_limit, 1 << 30);
        let serve_stale = match self.serve_stale_on_error {
            None => Duration::from_secs(7 * 24 * 3600),
            Some(s) => match humantime::parse_duration(s.trim()) {
                Ok(d) => d,
                Err(e) => {
                    errs.push(format!("serve-stale-on-error: invalid duration `{s}`: {e}"));
                    Duration::ZERO
                }
            },
        };
        let rules = match crate::cache::rules::Rules::build(
            &self.cache_rule.unwrap_or_default(),
            self.builtin_cache_rules.unwrap_or(true),
        ) {
            Ok(r) => r,
            Err(e) => {
                errs.push(e);
                crate::cache::rules::Rules::default()
            }
        };
        let cache = (disk_size > 0 || mem_size > 0).then(|| CacheSettings {
            dir: (disk_size > 0).then(|| {
                self.cache_dir
                    .unwrap_or_else(|| std::env::temp_dir().join("cuttle-cache"))
            }),
            disk_size,
            mem_size,
            mem_object: mem_object.min(mem_size),
            max_object,
            serve_stale_on_error: serve_stale,
            range_fetch_limit,
            rules,
            purge_allow,
            reader_stall: timeouts.read,
        });

        let admin_listen = match self.admin_listen.as_deref().map(str::trim) {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9128))),
            Some("off") | Some("none") | Some("") => None,
            Some(a) => match a.parse::<SocketAddr>() {
                Ok(sa) => Some(sa),
                Err(_) => {
                    errs.push(format!(
                        "admin-listen: `{a}` is not an address:port (or off)"
                    ));
                    None
                }
            },
        };
        let admin_token = match (self.admin_token, self.admin_token_file) {
            (Some(t), _) if !t.trim().is_empty() => Some(t.trim().to_string()),
            (_, Some(path)) => match env::read_secret_file(&path) {
                Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
                Ok(_) => {
                    errs.push("admin-token-file: the file is empty".into());
                    None
                }
                Err(e) => {
                    errs.push(format!("admin-token-file: {e}"));
                    None
                }
            },
            _ => None,
        };

        let ca = match (&self.ca_cert, &self.ca_key) {
            (Some(c), Some(k)) => match crate::mitm::ca::Ca::load(c, k) {
                Ok(ca) => Some(std::sync::Arc::new(ca)),
                Err(e) => {
                    errs.push(format!("ca-cert/ca-key: {e}"));
                    None
                }
            },
            (None, None) => None,
            _ => {
                errs.push("ca-cert/ca-key: give both the CA certificate and its key".into());
                None
            }
        };
        if let Some(ca) = &ca {
            let outside = ca.outside_constraints(&intercept_patterns);
            if !outside.is_empty() {
                errs.push(format!(
                    "intercept: {} outside the name constraints of the CA in ca-cert (clients \
                     would reject its certificates); make a CA for this list with \
                     `cuttle ca init --intercept ...`",
                    outside.join(", ")
                ));
            }
        }
        let upstream_tls =
            match crate::mitm::upstream_tls::client_config(self.upstream_ca.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    errs.push(e);
                    return Err(errs);
                }
            };

        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(ValidConfig {
            intercept,
            intercept_patterns,
            no_intercept,
            ca,
            upstream_tls,
            admin_listen,
            admin_token,
            cache,
            listen,
            peers,
            direct,
            connect_ports,
            allow_client,
            deny_dest,
            allow_dest,
            allow_domain,
            deny_domain,
            users,
            auth_realm: self.auth_realm.unwrap_or_else(|| "cuttle".into()),
            timeouts,
            max_header_size: max_header_size.min(usize::MAX as u64) as usize,
            max_connections: max_connections.min(usize::MAX as u64) as usize,
            max_connections_per_client: max_connections_per_client.min(usize::MAX as u64) as usize,
            log_format,
            log_level: self.log_level.unwrap_or_else(|| "info".into()),
        })
    }
}

/// Merges options (flags and environment, as parsed) with the TOML file, if any, and
/// validates: how the configuration is loaded at start and at every reload.
pub fn load(opts: &Options, file: Option<&std::path::Path>) -> Result<ValidConfig, Vec<String>> {
    let from_file = match file {
        Some(p) => Options::from_file(p)?,
        None => Options::default(),
    };
    opts.clone().or(from_file).validate()
}

/// Parses a byte size: a number with an optional unit (K, M, G, T as powers of 1024;
/// KB/MB/GB/TB as powers of 1000; KiB, MiB... explicitly binary).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
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
    /// Denied in addition to the built-in networks ([`crate::access::ip_guard::BUILTIN_DENY`]).
    pub deny_dest: Vec<IpNet>,
    /// Built-in denied networks allowed after all.
    pub allow_dest: Vec<IpNet>,
    pub allow_domain: HostList,
    pub deny_domain: HostList,
    pub users: Option<Users>,
    pub auth_realm: String,
    pub timeouts: Timeouts,
    pub max_header_size: usize,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    /// `None` when both cache tiers are off.
    pub cache: Option<CacheSettings>,
    /// `None` when the admin port is off.
    pub admin_listen: Option<SocketAddr>,
    pub admin_token: Option<String>,
    /// Hosts whose tunnels are intercepted, and the patterns as written (name constraints).
    pub intercept: HostList,
    pub intercept_patterns: Vec<String>,
    pub no_intercept: HostList,
    /// The interception CA, when given.
    pub ca: Option<std::sync::Arc<crate::mitm::ca::Ca>>,
    /// TLS client configuration for HTTPS origins.
    pub upstream_tls: std::sync::Arc<rustls::ClientConfig>,
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
        let schemes: Vec<String> = self
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
        writeln!(f, "parent-auth = {}", list(&schemes))?;
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
        // The effective list: the built-in networks, then the configured ones.
        writeln!(
            f,
            "deny-dest = {}",
            list(
                &crate::access::ip_guard::builtin_deny()
                    .iter()
                    .chain(&self.deny_dest)
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
            )
        )?;
        writeln!(
            f,
            "allow-dest = {}",
            list(
                &self
                    .allow_dest
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
            "max-connections-per-client = {}",
            self.max_connections_per_client
        )?;
        writeln!(
            f,
            "log-format = \"{}\"",
            match self.log_format {
                LogFormat::Squid => "squid",
                LogFormat::Json => "json",
            }
        )?;
        writeln!(f, "log-level = {:?}", self.log_level)?;
        match self.admin_listen {
            Some(a) => writeln!(f, "admin-listen = \"{a}\"")?,
            None => writeln!(f, "admin-listen = \"off\"")?,
        }
        writeln!(
            f,
            "admin-token = \"{}\"",
            if self.admin_token.is_some() {
                "****"
            } else {
                "off"
            }
        )?;
        writeln!(f, "intercept = {:?}", self.intercept.to_string())?;
        writeln!(f, "no-intercept = {:?}", self.no_intercept.to_string())?;
        writeln!(
            f,
            "ca = \"{}\"",
            if self.ca.is_some() {
                "loaded"
            } else {
                "ephemeral when intercepting"
            }
        )?;
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
                writeln!(f, "max-object-size = {}", c.max_object)?;
                writeln!(f, "max-mem-object-size = {}", c.mem_object)?;
                writeln!(f, "serve-stale-on-error = {}", secs(c.serve_stale_on_error))?;
                writeln!(f, "range-fetch-limit = {}", c.range_fetch_limit)?;
                writeln!(
                    f,
                    "purge-allow = {}",
                    list(
                        &c.purge_allow
                            .iter()
                            .map(|n| n.to_string())
                            .collect::<Vec<_>>()
                    )
                )?;
                writeln!(f, "cache-rules = {}", c.rules.len())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB"), Some(256 << 20));
        assert_eq!(parse_size("10G"), Some(10 << 30));
        assert_eq!(parse_size("5MB"), Some(5_000_000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1.5G"), None);
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn cache_rules_from_toml() {
        let o: Options = toml::from_str(
            "[[cache-rule]]\npattern = '\\.iso$'\nmin = \"1d\"\nignore-client-no-cache = true\n",
        )
        .unwrap();
        let c = o.validate().unwrap();
        let rules = &c.cache.unwrap().rules;
        assert!(
            rules
                .classify("http://h/a.iso")
                .unwrap()
                .ignore_client_no_cache
        );
        let bad: Options = toml::from_str("[[cache-rule]]\npattern = '('\n").unwrap();
        assert!(bad.validate().unwrap_err()[0].contains("cache-rule 1"));
    }

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

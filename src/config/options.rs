//! Every option, written once: the [`options!`] table below declares each field with its
//! flag, environment variable, documentation and default, and generates the [`Options`]
//! struct (clap and serde read it), the precedence merge ([`Options::or`]), the defaults
//! ([`Options::with_defaults`]) and the printing (`check-config`) from it. Secrets have the
//! [`Secret`] type, whose every rendering is masked, so a new secret field cannot be printed
//! by mistake. The defaults themselves are named constants in [`defaults`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::cache::rules::RuleConfig;
use crate::mirror::MirrorConfig;
use crate::upstream::auth::setup::PeerAuthOptions;

/// The default of every option that has one.
pub mod defaults {
    use std::path::PathBuf;

    pub const LISTEN: &str = "0.0.0.0:3128";
    /// Any port, as the Squid image this replaces allowed (`443` is the strict choice).
    pub const CONNECT_PORTS: &str = "any";
    /// Loopback, RFC 1918, RFC 4193 and the carrier-grade NAT range (Squid's `localnet`).
    pub const ALLOW_CLIENT: &[&str] = &[
        "127.0.0.0/8",
        "::1/128",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fc00::/7",
        "100.64.0.0/10",
    ];
    pub const AUTH_REALM: &str = "cuttle";
    /// Answer the parent's 407 with the strongest scheme it offers; nothing is sent before.
    pub const PARENT_AUTH: &str = "auto";
    pub const CONNECT_TIMEOUT: &str = "10s";
    pub const READ_TIMEOUT: &str = "5m";
    pub const PARENT_CONNECT_TIMEOUT: &str = "10s";
    pub const PARENT_HANDSHAKE_TIMEOUT: &str = "30s";
    pub const PEER_BACKOFF: &str = "30s";
    /// Why 5 minutes: README, "Why tunnels close after 5 idle minutes".
    pub const TUNNEL_IDLE_TIMEOUT: &str = "5m";
    pub const HEADER_READ_TIMEOUT: &str = "30s";
    pub const POOL_IDLE_TIMEOUT: &str = "90s";
    /// Under Kubernetes' default 30 s termination grace period.
    pub const SHUTDOWN_GRACE: &str = "25s";
    pub const MAX_HEADER_SIZE: u64 = 65_536;
    /// The least `max-header-size` accepted.
    pub const MIN_HEADER_SIZE: u64 = 8192;
    pub const MAX_CONNECTIONS: u64 = 10_000;
    /// A build farm's busiest pod opens tens of connections; an abuser opens thousands.
    pub const MAX_CONNECTIONS_PER_CLIENT: u64 = 1000;
    pub const LOG_FORMAT: &str = "squid";
    pub const LOG_LEVEL: &str = "info";
    pub const CACHE_SIZE: &str = "10GiB";
    pub const CACHE_MEM: &str = "256MiB";
    pub const MAX_OBJECT_SIZE: &str = "4GiB";
    pub const MAX_MEM_OBJECT_SIZE: &str = "8MiB";
    pub const SERVE_STALE_ON_ERROR: &str = "7d";
    pub const RANGE_FETCH_LIMIT: &str = "1GiB";
    pub const BUILTIN_CACHE_RULES: bool = true;
    /// Nexus's default "maximum metadata age" is 30 minutes; builds see new versions sooner.
    pub const METADATA_MAX_AGE: &str = "5m";
    pub const METADATA_GRACE: &str = "1h";
    pub const NEGATIVE_TTL: &str = "1m";
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9128";
    /// MinIO, Ceph RGW and most S3-compatible stores address buckets by path.
    pub const SHARED_CACHE_PATH_STYLE: bool = true;
    pub const SHARED_CACHE_REGION: &str = "us-east-1";
    /// A lookup in the shared tier waits at most this long before going upstream.
    pub const SHARED_CACHE_TIMEOUT: &str = "2s";
    pub const SHARED_CACHE_MAX_AGE: &str = "30d";
    pub const SHARED_CACHE_UPLOADS: u64 = 4;
    pub const SHARED_CACHE_UPLOAD_QUEUE: u64 = 256;
    pub const SHARED_CACHE_BACKOFF: &str = "30s";
    pub const SHARED_CACHE_LEASE: bool = false;
    pub const SHARED_CACHE_LEASE_TIMEOUT: &str = "30s";

    /// `cuttle-cache` under the system's temporary directory.
    pub fn cache_dir() -> PathBuf {
        std::env::temp_dir().join("cuttle-cache")
    }
}

/// A secret option value (a password, a token). It is shown as `****` by `Debug`, `Display`
/// and the `check-config` printing; only [`Secret::expose`] gives the value.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("****")
    }
}

/// Declares the options. Each field: documentation, clap attributes, `name: Type` and an
/// optional `= default` (a function giving the value). Generates [`Options`] with every field
/// an `Option` ("not given here"), and its merge, defaults and field names.
macro_rules! options {
    ($( $(#[$meta:meta])* $name:ident : $ty:ty $(= $default:expr)? ; )*) => {
        /// Every setting, as given by the user. `None` means "not given here".
        #[derive(Debug, Clone, Default, clap::Args, serde::Deserialize, serde::Serialize)]
        #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
        pub struct Options {
            $( $(#[$meta])* pub $name: Option<$ty>, )*
        }

        impl Options {
            /// `self` wins where it has a value; `lower` fills the rest.
            pub fn or(self, lower: Options) -> Options {
                Options { $( $name: self.$name.or(lower.$name), )* }
            }

            /// Every option that has a default and was not given gets it.
            pub fn with_defaults(self) -> Options {
                Options { $( $name: self.$name.or_else(|| options!(@default $($default)?)), )* }
            }
        }
    };
    (@default $default:expr) => { Some(($default)()) };
    (@default) => { None };
}

options! {
    /// Addresses to listen on for proxy clients (comma-separated; IPv6 as [::]:3128).
    #[arg(long, env = "CUTTLE_LISTEN", value_delimiter = ',')]
    listen: Vec<String> = || vec![defaults::LISTEN.into()];

    /// Parent proxies: url_encoded_user:url_encoded_password:host:port or
    /// http://user:pass@host:port, comma-separated for failover.
    #[arg(long, env = "CACHE_PEER", hide_env_values = true)]
    cache_peer: Secret;

    /// File holding the CACHE_PEER value (e.g. a mounted Kubernetes Secret).
    #[arg(long, env = "CACHE_PEER_FILE")]
    cache_peer_file: PathBuf;

    /// How to authenticate to the parent: auto (answer its 407 with the strongest scheme it
    /// offers: Negotiate, then NTLM, then Basic), basic (sent pre-emptively), ntlm, negotiate.
    #[arg(long, env = "CUTTLE_PARENT_AUTH")]
    parent_auth: String = || defaults::PARENT_AUTH.into();

    /// Workstation name sent in NTLM authentication (default: none).
    #[arg(long, env = "CUTTLE_PARENT_WORKSTATION")]
    parent_workstation: String;

    /// Keytab with the Kerberos key for Negotiate to the parent (the principal is the
    /// CACHE_PEER user, or the keytab's first one).
    #[arg(long, env = "CUTTLE_PARENT_KEYTAB")]
    parent_keytab: PathBuf;

    /// krb5.conf giving the default realm and the realms' KDCs.
    #[arg(long, env = "CUTTLE_KRB5_CONF")]
    krb5_conf: PathBuf;

    /// Kerberos realm of the parent user (default: krb5.conf's default_realm).
    #[arg(long, env = "CUTTLE_KRB5_REALM")]
    krb5_realm: String;

    /// KDCs as host[:port] (comma-separated; default: the realm's kdc lines in krb5.conf).
    #[arg(long, env = "CUTTLE_KRB5_KDC", value_delimiter = ',')]
    krb5_kdc: Vec<String>;

    /// Per-parent authentication (config file only: `[[peer]]` tables with name = "host:port",
    /// auth, workstation, keytab).
    #[arg(skip)]
    peer: Vec<PeerAuthOptions>;

    /// Destinations reached without the parent (NO_PROXY syntax: suffixes, *.corp, IPs, CIDRs).
    #[arg(long, env = "CUTTLE_DIRECT", value_delimiter = ',')]
    direct: Vec<String>;

    /// Ports CONNECT may reach: `any` (default, as the Squid image allowed) or a list such as
    /// 443,8443,9000-9100 (stricter: tunnels only to HTTPS-like ports).
    #[arg(long, env = "CUTTLE_CONNECT_PORTS", value_delimiter = ',')]
    connect_ports: Vec<String> = || vec![defaults::CONNECT_PORTS.into()];

    /// Client networks allowed to use the proxy (default: loopback, RFC 1918, RFC 4193,
    /// 100.64.0.0/10).
    #[arg(long, env = "CUTTLE_ALLOW_CLIENT", value_delimiter = ',')]
    allow_client: Vec<String> = || defaults::ALLOW_CLIENT.iter().map(|s| s.to_string()).collect();

    /// htpasswd file with bcrypt entries; when set, clients must authenticate (Basic).
    #[arg(long, env = "CUTTLE_AUTH_FILE")]
    auth_file: PathBuf;

    /// Realm shown in the Proxy-Authenticate challenge.
    #[arg(long, env = "CUTTLE_AUTH_REALM")]
    auth_realm: String = || defaults::AUTH_REALM.into();

    /// Destination networks never reached (checked after DNS too), in addition to the
    /// built-in ones: loopback, 0.0.0.0/8, ::, link-local (cloud metadata).
    #[arg(long, env = "CUTTLE_DENY_DEST", value_delimiter = ',')]
    deny_dest: Vec<String>;

    /// Built-in denied destination networks to allow after all, e.g. 127.0.0.0/8,::1 for
    /// origins on the proxy's own host. The proxy's own ports stay refused.
    #[arg(long, env = "CUTTLE_ALLOW_DEST", value_delimiter = ',')]
    allow_dest: Vec<String>;

    /// If set, only these destination hosts are allowed (host patterns).
    #[arg(long, env = "CUTTLE_ALLOW_DOMAIN", value_delimiter = ',')]
    allow_domain: Vec<String>;

    /// Destination hosts that are denied (host patterns).
    #[arg(long, env = "CUTTLE_DENY_DOMAIN", value_delimiter = ',')]
    deny_domain: Vec<String>;

    /// TCP connect timeout to origins (e.g. 10s).
    #[arg(long, env = "CUTTLE_CONNECT_TIMEOUT")]
    connect_timeout: String = || defaults::CONNECT_TIMEOUT.into();

    /// Time to wait for a response head, and the longest pause inside a response body.
    #[arg(long, env = "CUTTLE_READ_TIMEOUT")]
    read_timeout: String = || defaults::READ_TIMEOUT.into();

    /// TCP connect timeout to a parent proxy.
    #[arg(long, env = "CUTTLE_PARENT_CONNECT_TIMEOUT")]
    parent_connect_timeout: String = || defaults::PARENT_CONNECT_TIMEOUT.into();

    /// Time for a parent to answer a CONNECT.
    #[arg(long, env = "CUTTLE_PARENT_HANDSHAKE_TIMEOUT")]
    parent_handshake_timeout: String = || defaults::PARENT_HANDSHAKE_TIMEOUT.into();

    /// How long a parent that failed to connect is skipped before it is tried again.
    #[arg(long, env = "CUTTLE_PEER_BACKOFF")]
    peer_backoff: String = || defaults::PEER_BACKOFF.into();

    /// A tunnel with no traffic either way for this long is closed.
    #[arg(long, env = "CUTTLE_TUNNEL_IDLE_TIMEOUT")]
    tunnel_idle_timeout: String = || defaults::TUNNEL_IDLE_TIMEOUT.into();

    /// Time a client has to send a complete request head (slowloris guard).
    #[arg(long, env = "CUTTLE_HEADER_READ_TIMEOUT")]
    header_read_timeout: String = || defaults::HEADER_READ_TIMEOUT.into();

    /// Idle pooled upstream connections are closed after this long.
    #[arg(long, env = "CUTTLE_POOL_IDLE_TIMEOUT")]
    pool_idle_timeout: String = || defaults::POOL_IDLE_TIMEOUT.into();

    /// Grace period for in-flight requests and tunnels at shutdown.
    #[arg(long, env = "CUTTLE_SHUTDOWN_GRACE")]
    shutdown_grace: String = || defaults::SHUTDOWN_GRACE.into();

    /// Largest request head accepted, in bytes (at least 8192).
    #[arg(long, env = "CUTTLE_MAX_HEADER_SIZE")]
    max_header_size: u64 = || defaults::MAX_HEADER_SIZE;

    /// Most client connections served at once; more are refused with 503.
    #[arg(long, env = "CUTTLE_MAX_CONNECTIONS")]
    max_connections: u64 = || defaults::MAX_CONNECTIONS;

    /// Most connections one client address may have open at once; more are refused with 503.
    #[arg(long, env = "CUTTLE_MAX_CONNECTIONS_PER_CLIENT")]
    max_connections_per_client: u64 = || defaults::MAX_CONNECTIONS_PER_CLIENT;

    /// Access log format on stdout: squid (native) or json.
    #[arg(long, env = "CUTTLE_LOG_FORMAT")]
    log_format: String = || defaults::LOG_FORMAT.into();

    /// Diagnostics filter for stderr (tracing syntax, e.g. info or cuttle=debug).
    #[arg(long, env = "CUTTLE_LOG_LEVEL")]
    log_level: String = || defaults::LOG_LEVEL.into();

    /// Disk cache directory (default: cuttle-cache under the system temp dir).
    #[arg(long, env = "CUTTLE_CACHE_DIR")]
    cache_dir: PathBuf = defaults::cache_dir;

    /// Disk cache bound (e.g. 10GiB; 0 turns the disk tier off).
    #[arg(long, env = "CUTTLE_CACHE_SIZE")]
    cache_size: String = || defaults::CACHE_SIZE.into();

    /// Memory cache bound (e.g. 256MiB; 0 turns the memory tier off).
    #[arg(long, env = "CUTTLE_CACHE_MEM")]
    cache_mem: String = || defaults::CACHE_MEM.into();

    /// Largest object stored (e.g. 4GiB).
    #[arg(long, env = "CUTTLE_MAX_OBJECT_SIZE")]
    max_object_size: String = || defaults::MAX_OBJECT_SIZE.into();

    /// Largest object kept in the memory tier when stored (e.g. 8MiB); objects up to four
    /// times that are promoted from the disk tier once they are hot.
    #[arg(long, env = "CUTTLE_MAX_MEM_OBJECT_SIZE")]
    max_mem_object_size: String = || defaults::MAX_MEM_OBJECT_SIZE.into();

    /// How long past freshness a stored response may be served when the origin or parent
    /// fails (e.g. 7d; 0s turns it off).
    #[arg(long, env = "CUTTLE_SERVE_STALE_ON_ERROR")]
    serve_stale_on_error: String = || defaults::SERVE_STALE_ON_ERROR.into();

    /// A Range request that misses fetches the whole object when it is at most this large.
    #[arg(long, env = "CUTTLE_RANGE_FETCH_LIMIT")]
    range_fetch_limit: String = || defaults::RANGE_FETCH_LIMIT.into();

    /// Client networks allowed to send PURGE (default: none, PURGE is forwarded).
    #[arg(long, env = "CUTTLE_PURGE_ALLOW", value_delimiter = ',')]
    purge_allow: Vec<String>;

    /// Apply the built-in artifact rules (npm, Maven, PyPI, cargo, apt, Go): true or false.
    #[arg(long, env = "CUTTLE_BUILTIN_CACHE_RULES")]
    builtin_cache_rules: bool = || defaults::BUILTIN_CACHE_RULES;

    /// How long mutable registry metadata (npm packuments, PyPI simple pages,
    /// maven-metadata.xml, cargo index files, Go @v/list and @latest, apt indexes) is served
    /// from the cache when the origin gives no explicit freshness (e.g. 5m).
    #[arg(long, env = "CUTTLE_METADATA_MAX_AGE")]
    metadata_max_age: String = || defaults::METADATA_MAX_AGE.into();

    /// After metadata-max-age, how long the stored metadata is still served while one
    /// background refresh runs (0s: refresh before answering).
    #[arg(long, env = "CUTTLE_METADATA_GRACE")]
    metadata_grace: String = || defaults::METADATA_GRACE.into();

    /// How long a 404 or 410 without explicit freshness is remembered (0s: not at all);
    /// 5xx answers never are.
    #[arg(long, env = "CUTTLE_NEGATIVE_TTL")]
    negative_ttl: String = || defaults::NEGATIVE_TTL.into();

    /// Admin port (health probes, metrics, status page): address:port, or `off`.
    #[arg(long, env = "CUTTLE_ADMIN_LISTEN")]
    admin_listen: String = || defaults::ADMIN_LISTEN.into();

    /// Token required as `Authorization: Bearer` on the admin port (not for the probes).
    #[arg(long, env = "CUTTLE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Secret;

    /// File holding the admin token.
    #[arg(long, env = "CUTTLE_ADMIN_TOKEN_FILE")]
    admin_token_file: PathBuf;

    /// Hosts whose CONNECT tunnels are intercepted (TLS terminated with cuttle's CA, so
    /// their HTTPS artifacts are cached): host patterns like registry.example.com,
    /// *.files.example.org.
    #[arg(long, env = "CUTTLE_INTERCEPT", value_delimiter = ',')]
    intercept: Vec<String>;

    /// Hosts never intercepted even when --intercept matches (e.g. certificate-pinning clients).
    #[arg(long, env = "CUTTLE_NO_INTERCEPT", value_delimiter = ',')]
    no_intercept: Vec<String>;

    /// The interception CA certificate (PEM). Without it, an ephemeral CA is generated.
    #[arg(long, env = "CUTTLE_CA_CERT_FILE")]
    ca_cert: PathBuf;

    /// The interception CA private key (PEM).
    #[arg(long, env = "CUTTLE_CA_KEY_FILE")]
    ca_key: PathBuf;

    /// Extra CA bundle (PEM) trusted for HTTPS origins, besides the system roots.
    #[arg(long, env = "CUTTLE_UPSTREAM_CA")]
    upstream_ca: PathBuf;

    /// Addresses of a TLS listener (comma-separated) serving the same as the proxy port over
    /// HTTPS, for mirror clients that refuse plain-HTTP repositories; needs --tls-cert and
    /// --tls-key.
    #[arg(long, env = "CUTTLE_TLS_LISTEN", value_delimiter = ',')]
    tls_listen: Vec<String>;

    /// The TLS listener's certificate chain (PEM, leaf first).
    #[arg(long, env = "CUTTLE_TLS_CERT")]
    tls_cert: PathBuf;

    /// The TLS listener's private key (PEM).
    #[arg(long, env = "CUTTLE_TLS_KEY")]
    tls_key: PathBuf;
    /// Shared cache tier in S3-compatible object storage, e.g. s3://bucket/prefix: replicas
    /// with the same value share what they cache (memory, disk, then this, then upstream).
    #[arg(long, env = "CUTTLE_SHARED_CACHE")]
    shared_cache: String;

    /// S3 endpoint of the shared cache (MinIO, Ceph RGW, ...), e.g. http://minio:9000
    /// (default: AWS S3 in the region).
    #[arg(long, env = "CUTTLE_SHARED_CACHE_ENDPOINT")]
    shared_cache_endpoint: String;

    /// Region of the shared cache bucket (default: AWS_REGION, else us-east-1).
    #[arg(long, env = "CUTTLE_SHARED_CACHE_REGION")]
    shared_cache_region: String;

    /// Path-style bucket addressing (endpoint/bucket/key), as MinIO and Ceph expect: true or
    /// false (false: virtual-hosted, bucket.endpoint/key).
    #[arg(long, env = "CUTTLE_SHARED_CACHE_PATH_STYLE")]
    shared_cache_path_style: bool = || defaults::SHARED_CACHE_PATH_STYLE;

    /// Access key id for the shared cache (default: the AWS credential chain: web identity
    /// (IRSA), profile, instance metadata).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    shared_cache_access_key_id: Secret;

    /// File holding the access key id (a mounted Secret).
    #[arg(long, env = "AWS_ACCESS_KEY_ID_FILE")]
    shared_cache_access_key_id_file: PathBuf;

    /// Secret access key for the shared cache.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    shared_cache_secret_access_key: Secret;

    /// File holding the secret access key (a mounted Secret).
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY_FILE")]
    shared_cache_secret_access_key_file: PathBuf;

    /// Session token for temporary credentials.
    #[arg(long, env = "AWS_SESSION_TOKEN", hide_env_values = true)]
    shared_cache_session_token: Secret;

    /// Longest wait for the shared cache on a lookup (then the request goes upstream), and
    /// for each step of a transfer.
    #[arg(long, env = "CUTTLE_SHARED_CACHE_TIMEOUT")]
    shared_cache_timeout: String = || defaults::SHARED_CACHE_TIMEOUT.into();

    /// Shared objects older than this are ignored and replaced (bucket lifecycle rules evict).
    #[arg(long, env = "CUTTLE_SHARED_CACHE_MAX_AGE")]
    shared_cache_max_age: String = || defaults::SHARED_CACHE_MAX_AGE.into();

    /// Uploads to the shared cache running at once (each holds one 8 MiB part).
    #[arg(long, env = "CUTTLE_SHARED_CACHE_UPLOADS")]
    shared_cache_uploads: u64 = || defaults::SHARED_CACHE_UPLOADS;

    /// Uploads waiting; when the queue is full new ones are skipped (and counted).
    #[arg(long, env = "CUTTLE_SHARED_CACHE_UPLOAD_QUEUE")]
    shared_cache_upload_queue: u64 = || defaults::SHARED_CACHE_UPLOAD_QUEUE;

    /// How long the shared cache is skipped after repeated failures (doubling up to 8x while
    /// it keeps failing).
    #[arg(long, env = "CUTTLE_SHARED_CACHE_BACKOFF")]
    shared_cache_backoff: String = || defaults::SHARED_CACHE_BACKOFF.into();

    /// Coalesce upstream fetches across replicas: on a local and shared miss a replica takes
    /// a lease object in the bucket (a conditional write) before fetching; the others wait
    /// for its upload instead of fetching too. true or false; needs a store with conditional
    /// writes (else it stays off).
    #[arg(long, env = "CUTTLE_SHARED_CACHE_LEASE")]
    shared_cache_lease: bool = || defaults::SHARED_CACHE_LEASE;

    /// Leases older than this are ignored and replaced (a replica that died holding one
    /// blocks the others this long at most); also the longest wait for another replica's
    /// upload.
    #[arg(long, env = "CUTTLE_SHARED_CACHE_LEASE_TIMEOUT")]
    shared_cache_lease_timeout: String = || defaults::SHARED_CACHE_LEASE_TIMEOUT.into();

    /// Cache rules (config file only: `[[cache-rule]]` tables).
    #[arg(skip)]
    cache_rule: Vec<RuleConfig>;

    /// Registry mirror routes served on the proxy port, as NAME=KIND=URL (comma-separated;
    /// several upstreams of one mirror joined with `|`, tried in order), e.g.
    /// npm=npm=https://registry.example.org/ serves it at http://cuttle:3128/npm/. KIND is
    /// npm, pypi, maven, cargo, go, apt or raw. The config file's `[[mirror]]` tables have
    /// more settings (public-url, metadata-max-age, allow-write, forward-credentials).
    #[arg(long, env = "CUTTLE_MIRROR", value_delimiter = ',')]
    mirror: Vec<MirrorConfig>;
}

impl Options {
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

    /// The options as a TOML document (`check-config`): every field given or defaulted,
    /// secrets masked by their type.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print the options: {e}\n"))
    }
}

//! Checking the options, one function per section (server, access, upstream, cache,
//! interception, admin, logs). Each turns its options into the settings its module owns and
//! records every problem, naming the field, so one run reports them all. The options arrive
//! with their defaults filled in ([`Options::with_defaults`]).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

use super::options::{Options, Secret, defaults};
use super::peer;
use super::settings::{InterceptSettings, Timeouts, ValidConfig};
use crate::access::AccessSettings;
use crate::access::auth::Users;
use crate::access::hosts::{HostList, PortSet};
use crate::cache::CacheSettings;
use crate::cache::rules::{MetadataAge, RuleDefaults, Rules};
use crate::cache::shared::{self, SharedSettings, StaticCredentials};
use crate::mirror::MirrorSettings;
use crate::mitm::ca::Ca;
use crate::telemetry::LogFormat;
use crate::upstream::{self, UpstreamSettings};

/// Problems found so far, and the parsers that record them.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, p: String) {
        self.0.push(p);
    }

    /// A positive duration (`10s`, `5m`).
    fn duration(&mut self, field: &str, v: Option<String>) -> Duration {
        let s = v.unwrap_or_default();
        match humantime::parse_duration(s.trim()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.push(format!("{field}: must be greater than zero"));
                Duration::from_secs(1)
            }
            Err(e) => {
                self.push(format!("{field}: invalid duration `{s}`: {e}"));
                Duration::from_secs(1)
            }
        }
    }

    /// A duration that may be zero (`0s` turns the feature off).
    fn duration_or_zero(&mut self, field: &str, v: Option<String>) -> Duration {
        let s = v.unwrap_or_default();
        match humantime::parse_duration(s.trim()) {
            Ok(d) => d,
            Err(e) => {
                self.push(format!("{field}: invalid duration `{s}`: {e}"));
                Duration::ZERO
            }
        }
    }

    /// A byte size (`512MiB`, `10GiB`, `4096`).
    fn size(&mut self, field: &str, v: Option<String>) -> u64 {
        let s = v.unwrap_or_default();
        match parse_size(&s) {
            Some(n) => n,
            None => {
                self.push(format!(
                    "{field}: `{s}` is not a size (e.g. 512MiB, 10GiB, 4096)"
                ));
                0
            }
        }
    }

    /// A count of at least `min`.
    fn count(&mut self, field: &str, v: Option<u64>, min: u64) -> usize {
        let n = v.unwrap_or(min);
        if n < min {
            self.push(format!("{field}: must be at least {min}"));
        }
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    fn hosts(&mut self, field: &str, v: Option<Vec<String>>) -> HostList {
        match HostList::parse(&v.unwrap_or_default()) {
            Ok(l) => l,
            Err(e) => {
                self.push(format!("{field}: {e}"));
                HostList::default()
            }
        }
    }

    fn nets(&mut self, field: &str, v: Option<Vec<String>>) -> Vec<IpNet> {
        let mut out = Vec::new();
        for s in v.unwrap_or_default() {
            let s = s.trim();
            if s.is_empty() {
                continue;
            }
            match s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
            {
                Ok(n) => out.push(n),
                Err(_) => self.push(format!("{field}: `{s}` is not an IP network")),
            }
        }
        out
    }

    /// A secret given directly or as a file (the file counts only when no value is given).
    /// An empty file means "none" unless `required_in_file`.
    fn secret(
        &mut self,
        field: &str,
        value: Option<Secret>,
        file: Option<std::path::PathBuf>,
        required_in_file: bool,
    ) -> Option<String> {
        match (value, file) {
            (Some(v), _) if !v.expose().trim().is_empty() => Some(v.expose().to_string()),
            (_, Some(path)) => match peer::read_secret_file(&path) {
                Ok(v) if !v.trim().is_empty() => Some(v),
                Ok(_) if !required_in_file => None,
                Ok(_) => {
                    self.push(format!("{field}-file: the file is empty"));
                    None
                }
                Err(e) => {
                    self.push(format!("{field}-file: {e}"));
                    None
                }
            },
            _ => None,
        }
    }
}

pub(super) fn validate(o: Options) -> Result<ValidConfig, Vec<String>> {
    let mut p = Problems::default();
    let timeouts = Timeouts {
        read: p.duration("read-timeout", o.read_timeout.clone()),
        tunnel_idle: p.duration("tunnel-idle-timeout", o.tunnel_idle_timeout.clone()),
        header_read: p.duration("header-read-timeout", o.header_read_timeout.clone()),
        shutdown_grace: p.duration("shutdown-grace", o.shutdown_grace.clone()),
    };
    let listen = listen(&mut p, &o);
    let max_header_size = p.count(
        "max-header-size",
        o.max_header_size,
        defaults::MIN_HEADER_SIZE,
    );
    let max_connections = p.count("max-connections", o.max_connections, 1);
    let max_connections_per_client = p.count(
        "max-connections-per-client",
        o.max_connections_per_client,
        1,
    );
    let access = access(&mut p, &o);
    let upstream = upstream(&mut p, &o);
    let mut cache = cache(&mut p, &o, timeouts.read);
    let intercept = intercept(&mut p, &o);
    let mirrors = mirrors(&mut p, &o);
    let (tls_listen, tls_server) = tls_listen(&mut p, &o);
    let admin_listen = admin_listen(&mut p, &o);
    let admin_token = p
        .secret(
            "admin-token",
            o.admin_token.clone(),
            o.admin_token_file.clone(),
            true,
        )
        .map(|t| t.trim().parse().unwrap_or_default());
    let log_format = match o.log_format.as_deref().map(str::trim) {
        Some("json") => LogFormat::Json,
        Some("squid") | None => LogFormat::Squid,
        Some(other) => {
            p.push(format!("log-format: `{other}` is not one of squid, json"));
            LogFormat::Squid
        }
    };
    let shared = upstream
        .as_ref()
        .and_then(|u| shared_cache(&mut p, &o, &u.tls));
    match (&mut cache, shared) {
        (Some(c), shared) => c.shared = shared,
        (None, Some(_)) => p.push(
            "shared-cache: needs a local cache tier (cache-mem or cache-size above 0)".into(),
        ),
        (None, None) => {}
    }
    // The upstream TLS configuration is needed by everything that follows; without it there
    // is no configuration to return.
    let upstream = match upstream {
        Some(u) => u,
        None => return Err(p.0),
    };
    if !p.0.is_empty() {
        return Err(p.0);
    }
    Ok(ValidConfig {
        log_level: o.log_level.clone().unwrap_or_default(),
        options: o,
        listen,
        timeouts,
        max_header_size,
        max_connections,
        max_connections_per_client,
        access,
        upstream,
        cache,
        intercept,
        mirrors,
        tls_listen,
        tls_server,
        admin_listen,
        admin_token,
        log_format,
    })
}

fn listen(p: &mut Problems, o: &Options) -> Vec<SocketAddr> {
    let mut listen = Vec::new();
    for a in o.listen.clone().unwrap_or_default() {
        match a.trim().parse::<SocketAddr>() {
            Ok(sa) => listen.push(sa),
            Err(_) => p.push(format!(
                "listen: `{a}` is not an address:port (IPv6 as [::]:3128)"
            )),
        }
    }
    if listen.is_empty() && p.0.is_empty() {
        p.push("listen: at least one address is needed".into());
    }
    listen
}

fn access(p: &mut Problems, o: &Options) -> AccessSettings {
    let users = o.auth_file.as_deref().and_then(|path: &Path| {
        Users::load(path)
            .map_err(|e| p.push(format!("auth-file: {e}")))
            .ok()
    });
    let connect_ports = match PortSet::parse(&o.connect_ports.clone().unwrap_or_default()) {
        Ok(ports) => ports,
        Err(e) => {
            p.push(format!("connect-ports: {e}"));
            PortSet::Any
        }
    };
    AccessSettings {
        allow_client: p.nets("allow-client", o.allow_client.clone()),
        users,
        realm: o.auth_realm.clone().unwrap_or_default(),
        allow_domain: p.hosts("allow-domain", o.allow_domain.clone()),
        deny_domain: p.hosts("deny-domain", o.deny_domain.clone()),
        connect_ports,
        deny_dest: p.nets("deny-dest", o.deny_dest.clone()),
        allow_dest: p.nets("allow-dest", o.allow_dest.clone()),
    }
}

/// `None` when the TLS client configuration cannot be built (the problem is recorded).
fn upstream(p: &mut Problems, o: &Options) -> Option<UpstreamSettings> {
    let mut peers = match p.secret(
        "cache-peer",
        o.cache_peer.clone(),
        o.cache_peer_file.clone(),
        false,
    ) {
        Some(text) => peer::parse_cache_peer(&text).unwrap_or_else(|e| {
            p.push(format!("CACHE_PEER: {e}"));
            Vec::new()
        }),
        None => Vec::new(),
    };
    let timeouts = upstream::Timeouts {
        connect: p.duration("connect-timeout", o.connect_timeout.clone()),
        parent_connect: p.duration("parent-connect-timeout", o.parent_connect_timeout.clone()),
        parent_handshake: p.duration(
            "parent-handshake-timeout",
            o.parent_handshake_timeout.clone(),
        ),
        peer_backoff: p.duration("peer-backoff", o.peer_backoff.clone()),
        pool_idle: p.duration("pool-idle-timeout", o.pool_idle_timeout.clone()),
    };
    for problem in upstream::auth::setup::apply(
        &mut peers,
        &upstream::auth::setup::AuthOptions {
            scheme: o.parent_auth.as_deref(),
            workstation: o.parent_workstation.as_deref(),
            keytab: o.parent_keytab.as_deref(),
            krb5_conf: o.krb5_conf.as_deref(),
            realm: o.krb5_realm.as_deref(),
            kdcs: o.krb5_kdc.as_deref().unwrap_or_default(),
            per_peer: o.peer.as_deref().unwrap_or_default(),
            kdc_timeout: timeouts.parent_connect,
        },
    ) {
        p.push(problem);
    }
    let direct = p.hosts("direct", o.direct.clone());
    match upstream::tls::client_config(o.upstream_ca.as_deref()) {
        Ok(tls) => Some(UpstreamSettings {
            peers,
            direct,
            tls,
            timeouts,
        }),
        Err(e) => {
            p.push(e);
            None
        }
    }
}

fn cache(p: &mut Problems, o: &Options, read_timeout: Duration) -> Option<CacheSettings> {
    let disk_size = p.size("cache-size", o.cache_size.clone());
    let mem_size = p.size("cache-mem", o.cache_mem.clone());
    let max_object = p.size("max-object-size", o.max_object_size.clone());
    let mem_object = p.size("max-mem-object-size", o.max_mem_object_size.clone());
    let range_fetch_limit = p.size("range-fetch-limit", o.range_fetch_limit.clone());
    let serve_stale = p.duration_or_zero("serve-stale-on-error", o.serve_stale_on_error.clone());
    let purge_allow = p.nets("purge-allow", o.purge_allow.clone());
    let rule_defaults = RuleDefaults {
        metadata: MetadataAge {
            max_age: p.duration_or_zero("metadata-max-age", o.metadata_max_age.clone()),
            grace: p.duration_or_zero("metadata-grace", o.metadata_grace.clone()),
        },
        negative_ttl: p.duration_or_zero("negative-ttl", o.negative_ttl.clone()),
    };
    let rules = Rules::build(
        &o.cache_rule.clone().unwrap_or_default(),
        o.builtin_cache_rules
            .unwrap_or(defaults::BUILTIN_CACHE_RULES),
        rule_defaults,
    )
    .unwrap_or_else(|e| {
        p.push(e);
        Rules::default()
    });
    (disk_size > 0 || mem_size > 0).then(|| CacheSettings {
        dir: (disk_size > 0).then(|| o.cache_dir.clone().unwrap_or_else(defaults::cache_dir)),
        disk_size,
        mem_size,
        mem_object: mem_object.min(mem_size),
        max_object,
        serve_stale_on_error: serve_stale,
        range_fetch_limit,
        rules,
        purge_allow,
        reader_stall: read_timeout,
        shared: None,
    })
}

/// The shared tier (`--shared-cache` and its options); `None` when not configured.
fn shared_cache(
    p: &mut Problems,
    o: &Options,
    tls: &std::sync::Arc<rustls::ClientConfig>,
) -> Option<SharedSettings> {
    let url = o
        .shared_cache
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())?;
    let (bucket, prefix) = shared::parse_url(url)
        .map_err(|e| p.push(format!("shared-cache: {e}")))
        .ok()?;
    let endpoint = o
        .shared_cache_endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty());
    if let Some(e) = endpoint {
        match url::Url::parse(e) {
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {
                if !u.username().is_empty() || u.password().is_some() {
                    p.push("shared-cache-endpoint: give credentials as AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, not in the URL".into());
                }
            }
            _ => p.push(format!(
                "shared-cache-endpoint: `{e}` is not an http:// or https:// URL"
            )),
        }
    }
    let region = o
        .shared_cache_region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| defaults::SHARED_CACHE_REGION.into());
    let id = p.secret(
        "shared-cache-access-key-id",
        o.shared_cache_access_key_id.clone(),
        o.shared_cache_access_key_id_file.clone(),
        // An empty file (a placeholder Secret): the AWS credential chain.
        false,
    );
    let key = p.secret(
        "shared-cache-secret-access-key",
        o.shared_cache_secret_access_key.clone(),
        o.shared_cache_secret_access_key_file.clone(),
        // An empty file (a placeholder Secret): the AWS credential chain.
        false,
    );
    let credentials = match (id, key) {
        (Some(id), Some(key)) => Some(StaticCredentials {
            access_key_id: id.trim().to_string(),
            secret_access_key: key.trim().to_string(),
            session_token: o
                .shared_cache_session_token
                .as_ref()
                .map(|t| t.expose().trim().to_string())
                .filter(|t| !t.is_empty()),
        }),
        (None, None) => None,
        _ => {
            p.push("shared-cache-access-key-id/shared-cache-secret-access-key: give both (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or neither for the AWS credential chain".into());
            None
        }
    };
    Some(SharedSettings {
        bucket,
        prefix,
        endpoint: endpoint.map(str::to_string),
        region: region.trim().to_string(),
        path_style: o
            .shared_cache_path_style
            .unwrap_or(defaults::SHARED_CACHE_PATH_STYLE),
        credentials,
        timeout: p.duration("shared-cache-timeout", o.shared_cache_timeout.clone()),
        max_age: p.duration("shared-cache-max-age", o.shared_cache_max_age.clone()),
        uploads: p.count("shared-cache-uploads", o.shared_cache_uploads, 1),
        queue: p.count("shared-cache-upload-queue", o.shared_cache_upload_queue, 1),
        backoff: p.duration("shared-cache-backoff", o.shared_cache_backoff.clone()),
        tls: tls.clone(),
        lease: {
            let timeout = p.duration(
                "shared-cache-lease-timeout",
                o.shared_cache_lease_timeout.clone(),
            );
            o.shared_cache_lease
                .unwrap_or(defaults::SHARED_CACHE_LEASE)
                .then_some(timeout)
        },
    })
}

fn intercept(p: &mut Problems, o: &Options) -> InterceptSettings {
    let patterns = o.intercept.clone().unwrap_or_default();
    let hosts = p.hosts("intercept", o.intercept.clone());
    let exclude = p.hosts("no-intercept", o.no_intercept.clone());
    let ca = match (&o.ca_cert, &o.ca_key) {
        (Some(c), Some(k)) => Ca::load(c, k)
            .map(std::sync::Arc::new)
            .map_err(|e| p.push(format!("ca-cert/ca-key: {e}")))
            .ok(),
        (None, None) => None,
        _ => {
            p.push("ca-cert/ca-key: give both the CA certificate and its key".into());
            None
        }
    };
    if let Some(ca) = &ca {
        let outside = ca.outside_constraints(&patterns);
        if !outside.is_empty() {
            p.push(format!(
                "intercept: {} outside the name constraints of the CA in ca-cert (clients \
                 would reject its certificates); make a CA for this list with \
                 `cuttle ca init --intercept ...`",
                outside.join(", ")
            ));
        }
    }
    InterceptSettings {
        hosts,
        patterns,
        exclude,
        ca,
    }
}

fn tls_listen(
    p: &mut Problems,
    o: &Options,
) -> (
    Vec<SocketAddr>,
    Option<std::sync::Arc<rustls::ServerConfig>>,
) {
    let mut addrs = Vec::new();
    for a in o.tls_listen.clone().unwrap_or_default() {
        match a.trim().parse::<SocketAddr>() {
            Ok(sa) => addrs.push(sa),
            Err(_) => p.push(format!("tls-listen: `{a}` is not an address:port")),
        }
    }
    if addrs.is_empty() {
        return (addrs, None);
    }
    match (&o.tls_cert, &o.tls_key) {
        (Some(c), Some(k)) => match crate::mirror::tls::server_config(c, k) {
            Ok(cfg) => (addrs, Some(cfg)),
            Err(e) => {
                p.push(e);
                (addrs, None)
            }
        },
        _ => {
            p.push("tls-listen: give the certificate and key with --tls-cert and --tls-key".into());
            (addrs, None)
        }
    }
}

fn mirrors(p: &mut Problems, o: &Options) -> Vec<MirrorSettings> {
    let mut out: Vec<MirrorSettings> = Vec::new();
    for c in o.mirror.clone().unwrap_or_default() {
        match MirrorSettings::from_config(&c) {
            Ok(m) if out.iter().any(|x| x.name == m.name) => {
                p.push(format!("mirror: the name `{}` is used twice", m.name));
            }
            Ok(m) => out.push(m),
            Err(e) => p.push(format!("mirror: {e}")),
        }
    }
    out
}

fn admin_listen(p: &mut Problems, o: &Options) -> Option<SocketAddr> {
    match o.admin_listen.as_deref().map(str::trim) {
        Some("off") | Some("none") | Some("") | None => None,
        Some(a) => match a.parse::<SocketAddr>() {
            Ok(sa) => Some(sa),
            Err(_) => {
                p.push(format!(
                    "admin-listen: `{a}` is not an address:port (or off)"
                ));
                None
            }
        },
    }
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

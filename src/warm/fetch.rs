//! How `cuttle warm` reaches artifacts: an upstream URL covered by a `--mirror` pair is
//! fetched from the mirror route directly; any other goes through the running cuttle as an
//! HTTP proxy (`--proxy`: absolute-form for http, `CONNECT` for https, cached when cuttle
//! intercepts that host). Each body is hashed as it streams and checked against the
//! lockfile's digest; cuttle's `Cache-Status` entry tells a hit from a fresh fetch.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::gosum;
use super::integrity::{Digest, Hasher, strongest};
use crate::mirror::rewrite::UrlMap;

/// Go refuses module zips over 500 MiB (x/mod `zip.MaxZipFile`); so does warm, which holds
/// a module zip in memory to hash its entries.
const MAX_GO_ZIP: u64 = 500 << 20;

/// What a fetched body must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Any digest of the strongest algorithm listed (W3C SRI's rule).
    Digests(Vec<Digest>),
    /// Go's h1 hash of a module zip's entries.
    GoZip(String),
    /// Go's h1 hash of a go.mod file.
    GoMod(String),
    /// The lockfile records no digest.
    Unverified,
}

/// One URL to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub label: String,
    pub url: String,
    pub check: Check,
}

/// Where an answer came from, by cuttle's own `Cache-Status` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from cuttle's cache.
    Hit,
    /// Fetched upstream and stored (or joined a fetch being stored).
    Stored,
    /// Fetched, not stored: no entry from cuttle (a blind CONNECT tunnel, or an answer
    /// the cache may not keep).
    NotStored,
}

/// RFC 9211 §2: `Cache-Status` is a list with one member per cache, in the order the
/// response passed them (the last is nearest the client); a member is the cache's name
/// with parameters such as `hit`, `fwd=miss`, `stored`. Reads cuttle's last member.
pub fn cache_outcome(headers: &HeaderMap) -> CacheOutcome {
    let members: Vec<String> = headers
        .get_all("cache-status")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::to_string)
        .collect();
    let Some(ours) = members.iter().rev().find(|m| {
        m.split(';')
            .next()
            .is_some_and(|n| n.trim().trim_matches('"').eq_ignore_ascii_case("cuttle"))
    }) else {
        return CacheOutcome::NotStored;
    };
    let params: Vec<&str> = ours.split(';').skip(1).map(str::trim).collect();
    let has = |p: &str| params.iter().any(|x| x.eq_ignore_ascii_case(p));
    if has("hit") {
        CacheOutcome::Hit
    } else if has("stored") || has("collapsed") {
        CacheOutcome::Stored
    } else {
        CacheOutcome::NotStored
    }
}

/// A URL for messages: any `user:password@` is replaced, since lockfiles of private
/// registries and proxy URLs may carry credentials.
pub fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[start..];
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..auth_end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..start], &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Roots for https: the system's (or the bundled WebPKI set where there is none, as in a
/// `FROM scratch` image) plus `--ca-cert`, which is how cuttle's interception CA is trusted.
fn tls_config(extra: Option<&Path>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    let (added, _) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if added == 0 {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = extra {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("--ca-cert: cannot read {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("--ca-cert: {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "--ca-cert: {} holds no certificate",
                path.display()
            ));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("--ca-cert: {}: {e}", path.display()))?;
        }
    }
    let mut cfg =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Settings for [`Fetcher::new`].
pub struct FetchOptions<'a> {
    pub proxy: Option<&'a str>,
    pub mirrors: UrlMap,
    pub ca_cert: Option<&'a Path>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub retries: u32,
}

pub struct Fetcher {
    proxied: Option<reqwest::Client>,
    direct: reqwest::Client,
    mirrors: UrlMap,
    retries: u32,
}

/// A successful fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    pub cache: CacheOutcome,
    pub bytes: u64,
    pub verified: bool,
}

/// Whether a failure is worth another try (the network, or the server's 5xx), or final
/// (a 404, a digest mismatch).
#[derive(Debug)]
enum Failure {
    Transient(String),
    Final(String),
}

fn request_error(e: reqwest::Error) -> Failure {
    // The URL is named by the caller, redacted; reqwest's own message would repeat it.
    let e = e.without_url();
    Failure::Transient(crate::error::chain(&e))
}

impl Fetcher {
    pub fn new(o: FetchOptions<'_>) -> Result<Fetcher, String> {
        let builder = || -> Result<reqwest::ClientBuilder, String> {
            Ok(reqwest::Client::builder()
                .use_preconfigured_tls(tls_config(o.ca_cert)?)
                .connect_timeout(o.connect_timeout)
                .read_timeout(o.read_timeout)
                .user_agent(concat!("cuttle-warm/", env!("CARGO_PKG_VERSION")))
                .no_proxy())
        };
        let direct = builder()?
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let proxied = match o.proxy {
            None => None,
            Some(p) => {
                let proxy =
                    reqwest::Proxy::all(p).map_err(|e| format!("--proxy {}: {e}", redact(p)))?;
                Some(
                    builder()?
                        .proxy(proxy)
                        .build()
                        .map_err(|e| format!("cannot build the HTTP client: {e}"))?,
                )
            }
        };
        Ok(Fetcher {
            proxied,
            direct,
            mirrors: o.mirrors,
            retries: o.retries,
        })
    }

    /// The client and URL an upstream URL is fetched with.
    fn route(&self, url: &str) -> Result<(&reqwest::Client, String), String> {
        if let Some(m) = self.mirrors.map(url) {
            return Ok((&self.direct, m));
        }
        if self.mirrors.is_public(url) {
            return Ok((&self.direct, url.to_string()));
        }
        match &self.proxied {
            Some(c) => Ok((c, url.to_string())),
            None => Err(format!(
                "no --mirror covers {}, and no --proxy was given",
                redact(url)
            )),
        }
    }

    /// Fetches a small document (an index page, a registry's config.json) through the same
    /// route as artifacts; returns the final URL (after redirects), the content type and the
    /// body.
    pub async fn document(
        &self,
        url: &str,
        accept: &str,
    ) -> Result<(String, String, Vec<u8>), String> {
        const MAX_DOC: usize = 64 << 20;
        let (client, target) = self.route(url)?;
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
            let resp = match client.get(&target).header("accept", accept).send().await {
                Ok(r) => r,
                Err(e) => {
                    last = crate::error::chain(&e.without_url());
                    continue;
                }
            };
            let status = resp.status();
            if status.is_server_error() {
                last = format!("HTTP {status}");
                continue;
            }
            if !status.is_success() {
                return Err(format!("HTTP {status} for {}", redact(&target)));
            }
            let final_url = resp.url().to_string();
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let mut body = Vec::new();
            let mut resp = resp;
            loop {
                match resp.chunk().await {
                    Ok(Some(c)) => {
                        body.extend_from_slice(&c);
                        if body.len() > MAX_DOC {
                            return Err(format!("{} is over 64 MiB", redact(&target)));
                        }
                    }
                    Ok(None) => return Ok((final_url, ct, body)),
                    Err(e) => {
                        last = crate::error::chain(&e.without_url());
                        break;
                    }
                }
            }
        }
        Err(format!("{}: {last}", redact(&target)))
    }

    /// Fetches one artifact, calling `on_bytes` as data arrives, with retries for network
    /// errors and 5xx answers.
    pub async fn artifact(
        &self,
        a: &Artifact,
        on_bytes: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Fetched, String> {
        let (client, target) = self.route(&a.url)?;
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
            match fetch_once(client, &target, &a.check, on_bytes).await {
                Ok(f) => return Ok(f),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Transient(e)) => last = e,
            }
        }
        Err(last)
    }
}

/// The running check of a body.
enum Running {
    Hash(Box<Hasher>),
    Buffer(Vec<u8>),
    None,
}

async fn fetch_once(
    client: &reqwest::Client,
    url: &str,
    check: &Check,
    on_bytes: &(dyn Fn(u64) + Send + Sync),
) -> Result<Fetched, Failure> {
    let mut resp = client.get(url).send().await.map_err(request_error)?;
    let status = resp.status();
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(Failure::Transient(format!("HTTP {status}")));
    }
    if !status.is_success() {
        return Err(Failure::Final(format!("HTTP {status}")));
    }
    let cache = cache_outcome(resp.headers());
    let mut running = match check {
        Check::Digests(d) => match strongest(d) {
            Some((alg, _)) => Running::Hash(Box::new(Hasher::new(alg))),
            None => Running::None,
        },
        Check::GoZip(_) | Check::GoMod(_) => Running::Buffer(Vec::new()),
        Check::Unverified => Running::None,
    };
    let mut bytes = 0u64;
    while let Some(chunk) = resp.chunk().await.map_err(request_error)? {
        bytes += chunk.len() as u64;
        on_bytes(chunk.len() as u64);
        match &mut running {
            Running::Hash(h) => h.update(&chunk),
            Running::Buffer(b) => {
                if bytes > MAX_GO_ZIP {
                    return Err(Failure::Final("module zip over 500 MiB".into()));
                }
                b.extend_from_slice(&chunk);
            }
            Running::None => {}
        }
    }
    let verified = match (check, running) {
        (Check::Digests(want), Running::Hash(h)) => {
            let got = h.finish();
            if !strongest(want).is_some_and(|(_, ds)| ds.contains(&&got)) {
                let want = want
                    .iter()
                    .filter(|d| d.alg == got.alg)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" or ");
                return Err(Failure::Final(format!(
                    "integrity mismatch: the lockfile says {want}, the artifact is {got}"
                )));
            }
            true
        }
        (Check::GoZip(want), Running::Buffer(b)) => {
            let got = gosum::hash_zip(std::io::Cursor::new(b)).map_err(Failure::Final)?;
            go_check(want, &got)?;
            true
        }
        (Check::GoMod(want), Running::Buffer(b)) => {
            go_check(want, &gosum::hash_mod(&b))?;
            true
        }
        _ => false,
    };
    Ok(Fetched {
        cache,
        bytes,
        verified,
    })
}

fn go_check(want: &str, got: &str) -> Result<(), Failure> {
    if want == got {
        Ok(())
    } else {
        Err(Failure::Final(format!(
            "integrity mismatch: go.sum says {want}, the download hashes to {got}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(values: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in values {
            m.append("cache-status", v.parse().unwrap());
        }
        m
    }

    #[test]
    fn reads_cuttles_own_cache_status_entry() {
        assert_eq!(cache_outcome(&h(&["cuttle; hit"])), CacheOutcome::Hit);
        assert_eq!(
            cache_outcome(&h(&["cuttle; hit; fwd=stale; detail=stale-if-error"])),
            CacheOutcome::Hit
        );
        assert_eq!(
            cache_outcome(&h(&["upstream; hit, cuttle; fwd=miss; stored"])),
            CacheOutcome::Stored
        );
        assert_eq!(
            cache_outcome(&h(&["cuttle; fwd=miss; collapsed"])),
            CacheOutcome::Stored
        );
        // Another cache's hit is not cuttle's.
        assert_eq!(
            cache_outcome(&h(&["upstream; hit"])),
            CacheOutcome::NotStored
        );
        assert_eq!(cache_outcome(&HeaderMap::new()), CacheOutcome::NotStored);
        // Several cuttles in a chain: the one nearest the client speaks.
        assert_eq!(
            cache_outcome(&h(&["cuttle; hit", "cuttle; fwd=miss; stored"])),
            CacheOutcome::Stored
        );
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact("http://user:p%40ss@cuttle:3128/x@y"),
            "http://***@cuttle:3128/x@y"
        );
        assert_eq!(
            redact("https://registry.example.org/a"),
            "https://registry.example.org/a"
        );
        assert_eq!(redact("no scheme"), "no scheme");
    }

    #[test]
    fn routes_by_mirror_then_proxy() {
        let m =
            UrlMap::new([("https://registry.example.org/", "http://cuttle:3128/npm/")]).unwrap();
        let mk = |proxy: Option<&str>, m: UrlMap| {
            Fetcher::new(FetchOptions {
                proxy,
                mirrors: m,
                ca_cert: None,
                connect_timeout: Duration::from_secs(1),
                read_timeout: Duration::from_secs(1),
                retries: 0,
            })
            .unwrap()
        };
        let f = mk(None, m.clone());
        assert_eq!(
            f.route("https://registry.example.org/a/-/a-1.tgz")
                .unwrap()
                .1,
            "http://cuttle:3128/npm/a/-/a-1.tgz"
        );
        assert_eq!(
            f.route("http://cuttle:3128/npm/b").unwrap().1,
            "http://cuttle:3128/npm/b"
        );
        let e = f.route("https://u:secret@files.example.org/x").unwrap_err();
        assert!(e.contains("no --mirror") && !e.contains("secret"), "{e}");
        let f = mk(Some("http://cuttle:3128"), m);
        assert_eq!(
            f.route("https://files.example.org/x").unwrap().1,
            "https://files.example.org/x"
        );
    }
}

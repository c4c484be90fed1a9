//! Registry mirror routes: `http://cuttle:3128/<mirror>/...` serves a registry without a
//! proxy setting or a CA in the client (the client's registry URL points at cuttle). This
//! module is the domain part: the settings ([`MirrorConfig`] as written, [`MirrorSettings`]
//! checked), what each kind of registry's URLs are ([`Kind`]: which artifact rule governs a
//! path, which documents carry absolute URLs and are rewritten), the safe mapping of a request
//! path onto an upstream base ([`upstream_path`]), the public base a client reached cuttle by
//! ([`public_base`]) and the per-mirror figures ([`MirrorStats`]). The handler is
//! [`route`]; the URL rewriting is [`rewrite`].
//!
//! The cache key of a mirrored object is its upstream URL, so the mirror and the forward and
//! intercepted paths share entries; the cache holds the upstream's document unrewritten and
//! each response is rewritten for the host its client used.

pub mod rewrite;
pub mod route;
pub mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rewrite::{Rewrite, UrlMap};

/// A mirror as written in the config file (`[[mirror]]`) or as `--mirror NAME=KIND=URL`.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MirrorConfig {
    /// The first path segment it is served at: `npm` is `http://cuttle:3128/npm/`.
    pub name: String,
    /// npm | pypi | maven | cargo | go | apt | raw.
    pub kind: String,
    /// Upstream base URLs, tried in order (a 404, a 5xx or no answer tries the next).
    pub upstream: Vec<String>,
    /// The URL clients reach this mirror by (e.g. `https://cuttle.example.org/npm/`); by
    /// default the scheme and `Host` of each request.
    pub public_url: Option<String>,
    /// Freshness of this mirror's metadata when the upstream gives none (default: the
    /// rule's, `--metadata-max-age`).
    pub metadata_max_age: Option<String>,
    /// Pass write methods (`npm publish`, uploads) through to the first upstream; refused
    /// with 405 otherwise.
    #[serde(default)]
    pub allow_write: bool,
    /// Forward the client's `Authorization` and `Cookie` upstream (a private registry that
    /// wants each user's token). Off: they are dropped, and the mirror serves anonymously.
    #[serde(default)]
    pub forward_credentials: bool,
    /// Why the flag form did not parse: reported by validation (the command line itself
    /// accepts any value, like every other option).
    #[serde(skip)]
    pub parse_error: Option<String>,
}

impl MirrorConfig {
    /// Parses `NAME=KIND=URL[,URL...]` (the flag and environment form).
    pub fn parse_flag(s: &str) -> Result<MirrorConfig, String> {
        let mut parts = s.trim().splitn(3, '=');
        let (Some(name), Some(kind), Some(urls)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "`{s}` is not NAME=KIND=URL (e.g. npm=npm=https://registry.example.org/)"
            ));
        };
        Ok(MirrorConfig {
            name: name.trim().into(),
            kind: kind.trim().into(),
            upstream: urls
                .split(['|', ' '])
                .filter(|u| !u.trim().is_empty())
                .map(|u| u.trim().to_string())
                .collect(),
            ..Default::default()
        })
    }
}

impl std::str::FromStr for MirrorConfig {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(
            MirrorConfig::parse_flag(s).unwrap_or_else(|e| MirrorConfig {
                name: s.to_string(),
                parse_error: Some(e),
                ..Default::default()
            }),
        )
    }
}

/// What kind of registry a mirror serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Npm,
    Pypi,
    Maven,
    Cargo,
    Go,
    Apt,
    Raw,
}

/// How a response to a path is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Document {
    NpmPackument,
    PypiSimple,
    CargoConfig,
}

impl Kind {
    pub const ALL: &'static str = "npm, pypi, maven, cargo, go, apt, raw";

    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "npm" => Kind::Npm,
            "pypi" => Kind::Pypi,
            "maven" => Kind::Maven,
            "cargo" => Kind::Cargo,
            "go" => Kind::Go,
            "apt" => Kind::Apt,
            "raw" => Kind::Raw,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Npm => "npm",
            Kind::Pypi => "pypi",
            Kind::Maven => "maven",
            Kind::Cargo => "cargo",
            Kind::Go => "go",
            Kind::Apt => "apt",
            Kind::Raw => "raw",
        }
    }

    /// The built-in artifact rule for a path of this kind (path below the mirror, with its
    /// leading `/`, no query), when the kind knows better than the URL patterns (npm and
    /// cargo registries on any host, Go's protocol). `None`: the URL patterns decide.
    pub fn rule_name(self, path: &str) -> Option<&'static str> {
        match self {
            Kind::Npm => {
                if path.contains("/-/") {
                    path.ends_with(".tgz").then_some("npm-tarball")
                } else if path.len() > 1 {
                    Some("npm-packument")
                } else {
                    None
                }
            }
            Kind::Pypi => {
                if path.starts_with("/simple/") || path.contains("/simple/") {
                    Some("pypi-simple")
                } else if path.starts_with("/packages/") {
                    Some("pypi-file")
                } else {
                    None
                }
            }
            Kind::Cargo => {
                if path.ends_with("/download") || path.ends_with(".crate") {
                    Some("crate")
                } else if path.starts_with("/api/") {
                    None
                } else {
                    Some("cargo-index")
                }
            }
            Kind::Go => {
                if path.starts_with("/sumdb/") {
                    None
                } else if path.ends_with("/@v/list") || path.ends_with("/@latest") {
                    Some("go-list")
                } else if path.contains("/@v/")
                    && (path.ends_with(".zip") || path.ends_with(".mod") || path.ends_with(".info"))
                {
                    Some("go-module")
                } else {
                    None
                }
            }
            Kind::Maven | Kind::Apt | Kind::Raw => None,
        }
    }

    /// The document a path holds that carries absolute URLs to rewrite (decided by path, so
    /// the upstream request can ask for an unencoded body and no range).
    pub fn document(self, path: &str) -> Option<Document> {
        match self {
            Kind::Npm => {
                (!path.contains("/-/") && path.len() > 1).then_some(Document::NpmPackument)
            }
            Kind::Pypi => path.contains("/simple/").then_some(Document::PypiSimple),
            Kind::Cargo => (path == "/config.json").then_some(Document::CargoConfig),
            _ => None,
        }
    }
}

impl Document {
    /// The rewriter for a response of `content_type`, or `None` when the response is not the
    /// document expected (an error page, another format): it is then passed as it is.
    pub fn rewriter(
        self,
        map: Arc<UrlMap>,
        content_type: &str,
        upstream_url: &str,
    ) -> Option<Box<dyn Rewrite>> {
        let mt = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match self {
            Document::NpmPackument => (mt == rewrite::npm::FULL
                || mt == rewrite::npm::ABBREVIATED
                || mt.ends_with("+json"))
            .then(|| rewrite::npm::packument(map)),
            Document::PypiSimple => rewrite::pypi::Format::of_content_type(content_type)
                .map(|f| rewrite::pypi::simple_page(map, f, Some(upstream_url))),
            Document::CargoConfig => {
                (mt == "application/json" || mt.is_empty() || mt == "text/plain")
                    .then(|| rewrite::cargo::config_json(map))
            }
        }
    }
}

/// A checked mirror.
#[derive(Debug, Clone)]
pub struct MirrorSettings {
    pub name: String,
    pub kind: Kind,
    /// Upstream bases, each an absolute http(s) URL ending in `/`.
    pub upstream: Vec<String>,
    /// The configured public URL (ending in `/`), if any.
    pub public_url: Option<String>,
    pub metadata_max_age: Option<Duration>,
    pub allow_write: bool,
    pub forward_credentials: bool,
}

impl MirrorSettings {
    /// Checks a configured mirror; errors name the field.
    pub fn from_config(c: &MirrorConfig) -> Result<MirrorSettings, String> {
        if let Some(e) = &c.parse_error {
            return Err(e.clone());
        }
        let name = c.name.trim();
        let what = format!("mirror `{name}`");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            || name.starts_with('.')
        {
            return Err(format!(
                "{what}: a name is letters, digits, `-`, `_` and `.` (it is the first path segment)"
            ));
        }
        let kind = Kind::parse(&c.kind)
            .ok_or_else(|| format!("{what}: kind `{}` is not one of {}", c.kind, Kind::ALL))?;
        if c.upstream.is_empty() {
            return Err(format!("{what}: at least one upstream URL is needed"));
        }
        let base = |u: &str, field: &str| -> Result<String, String> {
            let u = u.trim();
            let parsed = url::Url::parse(u).map_err(|e| format!("{what}: {field} `{u}`: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https")
                || parsed.host_str().is_none()
                || parsed.query().is_some()
                || parsed.fragment().is_some()
                || !parsed.username().is_empty()
                || parsed.password().is_some()
            {
                return Err(format!(
                    "{what}: {field} `{u}` must be an http(s) URL without credentials, query or fragment"
                ));
            }
            // Validated against the same rules as the rewriting prefixes.
            UrlMap::new([(parsed.as_str(), "http://check.invalid/")])
                .map_err(|e| format!("{what}: {field}: {e}"))?;
            let s = parsed.to_string();
            Ok(if s.ends_with('/') { s } else { format!("{s}/") })
        };
        let upstream = c
            .upstream
            .iter()
            .map(|u| base(u, "upstream"))
            .collect::<Result<Vec<_>, _>>()?;
        let public_url = c
            .public_url
            .as_deref()
            .map(|u| base(u, "public-url"))
            .transpose()?;
        let metadata_max_age = c
            .metadata_max_age
            .as_deref()
            .map(|s| {
                humantime::parse_duration(s.trim())
                    .map_err(|e| format!("{what}: metadata-max-age `{s}`: {e}"))
            })
            .transpose()?;
        Ok(MirrorSettings {
            name: name.to_string(),
            kind,
            upstream,
            public_url,
            metadata_max_age,
            allow_write: c.allow_write,
            forward_credentials: c.forward_credentials,
        })
    }
}

/// Figures of one mirror (status page and `/metrics`).
#[derive(Debug, Default)]
pub struct MirrorStats {
    pub requests: AtomicU64,
    /// Answers served from the cache (fresh, revalidated, stale, or joined to another fetch).
    pub hits: AtomicU64,
    /// Body bytes of those answers: what did not have to come from upstream.
    pub bytes_saved: AtomicU64,
    /// Upstream failures: no answer, or a 5xx (from the last upstream tried).
    pub upstream_errors: AtomicU64,
    /// Documents that should have been rewritten and were passed as they were (an encoded
    /// body, an unexpected type, an unusable `Host`).
    pub rewrite_errors: AtomicU64,
}

impl MirrorStats {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// One configured mirror and its figures.
#[derive(Debug)]
pub struct Mirror {
    pub settings: MirrorSettings,
    pub stats: MirrorStats,
}

/// Every configured mirror.
#[derive(Debug, Default)]
pub struct Mirrors {
    pub list: Vec<Arc<Mirror>>,
}

impl Mirrors {
    pub fn new(settings: &[MirrorSettings]) -> Mirrors {
        Mirrors {
            list: settings
                .iter()
                .map(|s| {
                    Arc::new(Mirror {
                        settings: s.clone(),
                        stats: MirrorStats::default(),
                    })
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The mirror an origin-form path is addressed to (`/npm/...` or `/npm`), with the rest
    /// of the path (`/...`, possibly empty).
    pub fn find<'a>(&self, path: &'a str) -> Option<(Arc<Mirror>, &'a str)> {
        let rest = path.strip_prefix('/')?;
        let (first, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        self.list
            .iter()
            .find(|m| m.settings.name == first)
            .map(|m| (m.clone(), tail))
    }

    /// The URL map for a response: every mirror's upstreams to that mirror's public base, so
    /// a document from one mirror that links another mirror's upstream (a PyPI index linking
    /// its files host) sends the client there through cuttle too.
    pub fn url_map(&self, public_origin: &str) -> Result<UrlMap, String> {
        let mut pairs = Vec::new();
        for m in &self.list {
            let public = match &m.settings.public_url {
                Some(u) => u.clone(),
                None => format!("{public_origin}/{}/", m.settings.name),
            };
            for up in &m.settings.upstream {
                pairs.push((up.clone(), public.clone()));
            }
        }
        UrlMap::new(pairs)
    }
}

/// The part of the request path below a mirror (`/a/b?q`), checked so that it stays below the
/// upstream base: no `.` or `..` segment, also when percent-encoded (`%2e%2e`) or hidden in an
/// encoded slash (`a%2f..`), no backslash, no empty segment except a trailing one, no control
/// characters, and no invalid percent-encoding. Returns it without the leading `/`.
pub fn upstream_path(rest: &str) -> Result<&str, String> {
    let (path, _query) = rest.split_once('?').unwrap_or((rest, ""));
    let Some(rel) = rest.strip_prefix('/') else {
        return if rest.is_empty() {
            Ok("")
        } else {
            Err("the path must start with /".into())
        };
    };
    if rest.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\') {
        return Err("control characters and backslashes are not allowed in mirror paths".into());
    }
    let segs: Vec<&str> = path[1..].split('/').collect();
    for (i, seg) in segs.iter().enumerate() {
        if seg.is_empty() && i + 1 != segs.len() {
            return Err("empty path segments (`//`) are not allowed in mirror paths".into());
        }
        let decoded = percent_decode(seg).ok_or("invalid percent-encoding in the path")?;
        if decoded.iter().any(|b| *b < 0x20 || *b == 0x7f) {
            return Err("encoded control characters are not allowed in mirror paths".into());
        }
        if decoded
            .split(|b| *b == b'/' || *b == b'\\')
            .any(|part| part == b"." || part == b"..")
        {
            return Err("`.` and `..` segments are not allowed in mirror paths".into());
        }
    }
    Ok(rel)
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// `scheme://host[:port]` for the documents a client gets, from the `Host` it used: only a
/// plain host name or IP literal with an optional port (anything else could inject markup or
/// another site into the rewritten document). `None` when the `Host` is unusable.
pub fn public_base(scheme: &str, host: &str) -> Option<String> {
    let host = host.trim();
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        ip.parse::<std::net::Ipv6Addr>().ok()?;
        (&host[..ip.len() + 2], after.strip_prefix(':'))
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        }
    };
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return None;
    }
    let plain = name.starts_with('[')
        || (!name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'));
    plain.then(|| format!("{scheme}://{}", host.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn flag_form() {
        let m = MirrorConfig::parse_flag("npm=npm=https://registry.example.org/").unwrap();
        assert_eq!(m.name, "npm");
        assert_eq!(m.kind, "npm");
        assert_eq!(m.upstream, vec!["https://registry.example.org/"]);
        let m =
            MirrorConfig::parse_flag("m2=maven=https://a.example.org/m2|https://b.example.org/")
                .unwrap();
        assert_eq!(m.upstream.len(), 2);
        assert!(MirrorConfig::parse_flag("npm=https://x").is_err());
        let unparsed: MirrorConfig = "npm=https://x".parse().unwrap();
        assert!(
            MirrorSettings::from_config(&unparsed)
                .unwrap_err()
                .contains("NAME=KIND=URL")
        );
        let s = MirrorSettings::from_config(&m).unwrap();
        assert_eq!(s.upstream[0], "https://a.example.org/m2/");
        for bad in [
            "n=npm=ftp://registry.example.org/",
            "n=npm=https://user:pw@registry.example.org/",
            "n=npm=https://registry.example.org/?q",
            "n=nope=https://registry.example.org/",
            "../x=npm=https://registry.example.org/",
            "=npm=https://registry.example.org/",
        ] {
            let c = MirrorConfig::parse_flag(bad).unwrap();
            assert!(MirrorSettings::from_config(&c).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_stay_below_the_base() {
        for ok in [
            "/left-pad",
            "/@scope%2fpkg",
            "/@scope/pkg/-/pkg-1.0.0.tgz",
            "/simple/requests/",
            "/org/x/1.0/x-1.0.jar?foo=../bar",
            "/http:/evil.example.org/x",
            "",
            "/",
        ] {
            assert!(upstream_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/../admin",
            "/a/../../b",
            "/%2e%2e/admin",
            "/%2E%2e/x",
            "/.%2e/x",
            "/a%2f..%2fb",
            "/a%2F%2E%2E",
            "/a/./b",
            "/a\\..\\b",
            "/a%5c..%5cb",
            "//evil.example.org/x",
            "/a//b",
            "/a%zz",
            "/a%00b",
            "/a\r\nb",
            "/..",
        ] {
            assert!(upstream_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_is_validated_before_it_is_written_into_documents() {
        assert_eq!(
            public_base("http", "Cuttle:3128").as_deref(),
            Some("http://cuttle:3128")
        );
        assert_eq!(
            public_base("http", "[::1]:3128").as_deref(),
            Some("http://[::1]:3128")
        );
        assert_eq!(
            public_base("http", "10.0.0.1").as_deref(),
            Some("http://10.0.0.1")
        );
        for bad in [
            "",
            "a\"b",
            "evil.example.org/x",
            "x:99999",
            "a b",
            "<script>",
            "u@h",
            "[zz]:1",
            "h:1:2",
        ] {
            assert_eq!(public_base("http", bad), None, "{bad}");
        }
    }

    #[test]
    fn kinds_classify_paths() {
        assert_eq!(Kind::Npm.rule_name("/@s%2fa"), Some("npm-packument"));
        assert_eq!(
            Kind::Npm.rule_name("/@s/a/-/a-1.0.0.tgz"),
            Some("npm-tarball")
        );
        assert_eq!(Kind::Npm.rule_name("/-/v1/search"), None);
        assert_eq!(Kind::Cargo.rule_name("/se/rd/serde"), Some("cargo-index"));
        assert_eq!(
            Kind::Cargo.rule_name("/api/v1/crates/serde/1.0.0/download"),
            Some("crate")
        );
        assert_eq!(Kind::Go.rule_name("/x.org/m/@v/list"), Some("go-list"));
        assert_eq!(
            Kind::Go.rule_name("/x.org/m/@v/v1.0.0.info"),
            Some("go-module")
        );
        assert_eq!(Kind::Go.rule_name("/sumdb/sum.example.org/latest"), None);
        assert_eq!(Kind::Npm.document("/a"), Some(Document::NpmPackument));
        assert_eq!(Kind::Npm.document("/a/-/a-1.tgz"), None);
        assert_eq!(
            Kind::Cargo.document("/config.json"),
            Some(Document::CargoConfig)
        );
        assert_eq!(Kind::Maven.document("/maven-metadata.xml"), None);
    }

    #[test]
    fn find_by_first_segment() {
        let c = MirrorConfig::parse_flag("npm=npm=https://registry.example.org/").unwrap();
        let ms = Mirrors::new(&[MirrorSettings::from_config(&c).unwrap()]);
        assert_eq!(ms.find("/npm/x").map(|(_, r)| r), Some("/x"));
        assert_eq!(ms.find("/npm").map(|(_, r)| r), Some(""));
        assert!(ms.find("/npmx/x").is_none());
        assert!(ms.find("/").is_none());
        let map = ms.url_map("http://cuttle:3128").unwrap();
        assert_eq!(
            map.map("https://registry.example.org/a/-/a-1.tgz")
                .as_deref(),
            Some("http://cuttle:3128/npm/a/-/a-1.tgz")
        );
    }

    proptest! {
        /// Whatever the rest of the path, an accepted one appended to the base never leaves it
        /// once a server resolves dot segments (RFC 3986 §5.2.4) after decoding.
        #[test]
        fn accepted_paths_never_escape(rest in "(/[a-zA-Z0-9%._~@:-]{0,12}){0,5}") {
            if let Ok(rel) = upstream_path(&rest) {
                // A server that decodes the path before resolving dot segments.
                let decoded = String::from_utf8_lossy(&percent_decode(rel).unwrap_or_default()).into_owned();
                let joined = url::Url::parse(&format!(
                    "https://registry.example.org/base/{}",
                    decoded.replace(['?', '#'], "_")
                ))
                .unwrap();
                prop_assert_eq!(joined.host_str(), Some("registry.example.org"));
                prop_assert!(joined.path().starts_with("/base/"), "{} -> {}", rest, joined);
            }
        }
    }
}

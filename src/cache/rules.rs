//! Artifact rules, like Squid's `refresh_pattern` but with defaults that know package
//! ecosystems: immutable artifacts (npm tarballs, Maven release files, PyPI files, crates,
//! apt pool files and by-hash indexes, Go module zips) stay fresh for a long time even without
//! cache headers and even when the client sends `no-cache` (Maven does on every request);
//! mutable metadata (packuments, maven-metadata.xml, /simple/ pages, apt indexes, sparse
//! index files, @v/list) is revalidated on every use. User rules from the config file come
//! first; the first rule whose pattern matches the URL (without its query) applies.

use std::time::Duration;

use regex::Regex;

#[cfg(test)]
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// A rule as written in the config file (`[[cache-rule]]`).
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RuleConfig {
    /// A name for logs and `Cache-Status`; defaults to the pattern.
    pub name: Option<String>,
    /// Regular expression matched against `scheme://host[:port]/path` (no query).
    pub pattern: String,
    /// URLs matching this are excluded from the rule.
    pub exclude: Option<String>,
    /// Least freshness lifetime, whatever the origin said (e.g. "1h").
    pub min: Option<String>,
    /// Greatest freshness lifetime (e.g. "0s" to revalidate on every use).
    pub max: Option<String>,
    /// Ignore `Cache-Control: no-cache`, `max-age=0` and `Pragma: no-cache` from clients.
    #[serde(default)]
    pub ignore_client_no_cache: bool,
    /// Request headers to key variants on even when the origin sends no `Vary`.
    #[serde(default)]
    pub vary: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pattern: Regex,
    exclude: Option<Regex>,
    pub min: Duration,
    pub max: Option<Duration>,
    pub ignore_client_no_cache: bool,
    pub vary: Vec<String>,
}

impl Rule {
    /// The freshness lifetime to use, given the origin's.
    pub fn clamp(&self, origin: Duration) -> Duration {
        let d = origin.max(self.min);
        match self.max {
            Some(m) => d.min(m),
            None => d,
        }
    }

    /// A rule whose least freshness is a day or more names immutable artifacts: it overrides
    /// the origin's `no-cache`/`must-revalidate` too.
    pub fn overrides_revalidation(&self) -> bool {
        self.min >= Duration::from_secs(24 * 3600)
    }
}

#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
    /// Every pattern in one automaton: a URL is scanned once per request, not once per rule.
    set: regex::RegexSet,
}

fn builtin(
    name: &str,
    pattern: &str,
    exclude: Option<&str>,
    immutable: bool,
    vary: &[&str],
) -> RuleConfig {
    RuleConfig {
        name: Some(name.into()),
        pattern: pattern.into(),
        exclude: exclude.map(Into::into),
        min: immutable.then(|| "365d".into()),
        max: (!immutable).then(|| "0s".into()),
        ignore_client_no_cache: immutable,
        vary: vary.iter().map(|s| s.to_string()).collect(),
    }
}

/// The built-in table (research/artifact-caches.md §2).
pub fn builtin_rules() -> Vec<RuleConfig> {
    vec![
        builtin("npm-tarball", r"/-/[^/]+\.tgz$", None, true, &[]),
        builtin(
            "maven-release",
            r"\.(jar|pom|war|aar|ear|module|klib)(\.(sha1|sha256|sha512|md5|asc))?$",
            Some(r"-SNAPSHOT|/maven-metadata"),
            true,
            &[],
        ),
        builtin(
            "pypi-file",
            r"^https?://[^/]+/packages/.+\.(whl|tar\.gz|zip|tar\.bz2|egg|metadata)$",
            None,
            true,
            &[],
        ),
        builtin(
            "crate",
            r"(/crates/[^/]+/[^/]+/download|\.crate)$",
            None,
            true,
            &[],
        ),
        builtin(
            "apt-pool",
            r"/pool/.+\.(deb|udeb|ddeb|dsc|tar\.(gz|xz|bz2|zst)|diff\.gz)$",
            None,
            true,
            &[],
        ),
        builtin(
            "apt-by-hash",
            r"/by-hash/(SHA256|SHA512|MD5Sum)/[0-9a-fA-F]+$",
            None,
            true,
            &[],
        ),
        builtin("go-module", r"/@v/[^/]+\.(zip|mod)$", None, true, &[]),
        builtin(
            "npm-packument",
            r"^https?://registry\.[^/]+/(@[^/]+/|@[^/%]+%2[fF])?[^/@]+/?$",
            None,
            false,
            &["accept"],
        ),
        builtin(
            "maven-metadata",
            r"/maven-metadata\.xml(\.(sha1|sha256|sha512|md5))?$",
            None,
            false,
            &[],
        ),
        builtin("pypi-simple", r"/simple/", None, false, &["accept"]),
        builtin(
            "apt-index",
            r"/dists/.+/(InRelease|Release|Release\.gpg|(Packages|Sources|Contents-[^/]+|Translation-[^/]+)(\.(gz|xz|bz2|lzma|zst))?)$",
            None,
            false,
            &[],
        ),
        builtin("cargo-index", r"^https?://index\.[^/]+/", None, false, &[]),
        builtin("go-list", r"/@v/list$|/@latest$", None, false, &[]),
    ]
}

impl Rules {
    /// User rules (first) then, unless disabled, the built-in ones. Errors name the rule.
    pub fn build(user: &[RuleConfig], with_builtins: bool) -> Result<Rules, String> {
        let mut rules = Vec::new();
        let builtins = if with_builtins {
            builtin_rules()
        } else {
            Vec::new()
        };
        for (i, rc) in user.iter().chain(builtins.iter()).enumerate() {
            let label = rc.name.clone().unwrap_or_else(|| rc.pattern.clone());
            let err = |what: &str, e: &dyn std::fmt::Display| {
                format!("cache-rule {} ({label}): {what}: {e}", i + 1)
            };
            let pattern = Regex::new(&rc.pattern).map_err(|e| err("invalid pattern", &e))?;
            let exclude = match &rc.exclude {
                Some(x) => Some(Regex::new(x).map_err(|e| err("invalid exclude", &e))?),
                None => None,
            };
            let dur = |v: &Option<String>, what: &str| -> Result<Option<Duration>, String> {
                match v {
                    None => Ok(None),
                    Some(s) => humantime::parse_duration(s.trim())
                        .map(Some)
                        .map_err(|e| err(what, &e)),
                }
            };
            let min = dur(&rc.min, "invalid min")?.unwrap_or(Duration::ZERO);
            let max = dur(&rc.max, "invalid max")?;
            if let Some(m) = max
                && m < min
            {
                return Err(format!("cache-rule {} ({label}): max is below min", i + 1));
            }
            rules.push(Rule {
                name: label,
                pattern,
                exclude,
                min,
                max,
                ignore_client_no_cache: rc.ignore_client_no_cache,
                vary: rc
                    .vary
                    .iter()
                    .map(|v| v.trim().to_ascii_lowercase())
                    .collect(),
            });
        }
        let set = regex::RegexSet::new(rules.iter().map(|r| r.pattern.as_str()))
            .map_err(|e| format!("cache rules: {e}"))?;
        Ok(Rules { rules, set })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rule for `url` (query ignored).
    pub fn classify(&self, url: &str) -> Option<&Rule> {
        let path = url.split('?').next().unwrap_or(url);
        // Matches come back in rule order: the first one not excluded wins.
        self.set
            .matches(path)
            .into_iter()
            .map(|i| &self.rules[i])
            .find(|r| !r.exclude.as_ref().is_some_and(|e| e.is_match(path)))
    }
}

impl Default for Rules {
    fn default() -> Self {
        Rules::build(&[], true).unwrap_or_else(|_| Rules {
            rules: Vec::new(),
            set: regex::RegexSet::empty(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(url: &str) -> Option<String> {
        Rules::default().classify(url).map(|r| r.name.clone())
    }

    #[test]
    fn ecosystem_urls() {
        let cases = [
            (
                "http://registry.example.org/left-pad/-/left-pad-1.3.0.tgz",
                Some("npm-tarball"),
            ),
            (
                "http://registry.example.org/@types/node/-/node-20.1.0.tgz",
                Some("npm-tarball"),
            ),
            (
                "http://registry.example.org/left-pad",
                Some("npm-packument"),
            ),
            (
                "http://registry.example.org/@types%2fnode",
                Some("npm-packument"),
            ),
            (
                "http://maven.example.org/maven2/org/x/a/1.0/a-1.0.jar",
                Some("maven-release"),
            ),
            (
                "http://maven.example.org/maven2/org/x/a/1.0/a-1.0.jar.sha1",
                Some("maven-release"),
            ),
            (
                "http://repo/maven2/org/x/a/1.0-SNAPSHOT/a-1.0-20240101.jar",
                None,
            ),
            (
                "http://repo/maven2/org/x/a/maven-metadata.xml",
                Some("maven-metadata"),
            ),
            (
                "http://repo/maven2/org/x/a/maven-metadata.xml.sha1",
                Some("maven-metadata"),
            ),
            (
                "http://files.example.org/packages/ab/cd/x-1.0-py3-none-any.whl",
                Some("pypi-file"),
            ),
            (
                "http://pypi.example.org/simple/requests/",
                Some("pypi-simple"),
            ),
            (
                "http://static.example.org/crates/serde/1.0.0/download",
                Some("crate"),
            ),
            (
                "http://apt.example.org/debian/pool/main/c/curl/curl_7.88_amd64.deb",
                Some("apt-pool"),
            ),
            (
                "http://apt.example.org/debian/dists/bookworm/InRelease",
                Some("apt-index"),
            ),
            (
                "http://apt.example.org/debian/dists/bookworm/main/binary-amd64/Packages.xz",
                Some("apt-index"),
            ),
            (
                "http://apt.example.org/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/0a1b",
                Some("apt-by-hash"),
            ),
            (
                "http://goproxy.example.org/github.com/x/y/@v/v1.2.3.zip",
                Some("go-module"),
            ),
            (
                "http://goproxy.example.org/github.com/x/y/@v/list",
                Some("go-list"),
            ),
            ("http://index.example.org/se/rd/serde", Some("cargo-index")),
            ("http://example.com/index.html", None),
        ];
        for (url, want) in cases {
            assert_eq!(class(url).as_deref(), want, "{url}");
        }
    }

    #[test]
    fn query_is_ignored_and_user_rules_come_first() {
        let user = RuleConfig {
            name: Some("mine".into()),
            pattern: r"\.tgz$".into(),
            max: Some("1h".into()),
            ..Default::default()
        };
        let r = Rules::build(&[user], true).unwrap();
        assert_eq!(r.classify("http://h/-/a.tgz?x=1").unwrap().name, "mine");
    }

    #[test]
    fn clamp_and_errors() {
        let r = Rules::default();
        let tgz = r.classify("http://h/-/a-1.tgz").unwrap();
        assert_eq!(tgz.clamp(Duration::from_secs(300)), YEAR);
        let meta = r.classify("http://h/maven-metadata.xml").unwrap();
        assert_eq!(meta.clamp(Duration::from_secs(300)), Duration::ZERO);
        let bad = RuleConfig {
            pattern: "(".into(),
            ..Default::default()
        };
        assert!(
            Rules::build(&[bad], false)
                .unwrap_err()
                .contains("invalid pattern")
        );
    }
}

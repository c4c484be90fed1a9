//! Artifact rules, like Squid's `refresh_pattern` but with defaults that know package
//! ecosystems: immutable artifacts (npm tarballs, Maven release files, PyPI files, crates,
//! apt pool files and by-hash indexes, Go module zips) stay fresh for a long time even without
//! cache headers and even when the client sends `no-cache` (Maven does on every request);
//! mutable metadata (packuments, maven-metadata.xml, /simple/ pages, apt indexes, sparse
//! index files, @v/list, @latest) follows the metadata policy ([`MetadataAge`], like a
//! repository manager's "maximum metadata age"): when the origin gives no explicit freshness
//! it is fresh for `metadata-max-age` (default 5 minutes), then served stale for a grace
//! period while one background refresh runs (conditional when the entry has validators), and
//! served stale whenever the origin fails. User rules from the config file come first; the
//! first rule whose pattern matches the URL (without its query) applies. A user rule without
//! a pattern names a built-in rule and changes its settings (e.g. `name = "npm-packument"`,
//! `metadata-max-age = "1m"`). 404 and 410 answers follow the negative rule instead
//! ([`Rules::negative`]): remembered for `negative-ttl` (default 1 minute).

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
    /// Regular expression matched against `scheme://host[:port]/path` (no query). Empty (or
    /// absent): the rule changes the built-in rule called `name`.
    #[serde(default)]
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
    /// Makes this a metadata rule: when the origin gives no explicit freshness, responses are
    /// fresh this long (e.g. "5m"), then refreshed in the background (see the module doc).
    pub metadata_max_age: Option<String>,
    /// For a metadata rule: how long past `metadata-max-age` the stored copy is still served
    /// while the background refresh runs (default: `--metadata-grace`).
    pub metadata_grace: Option<String>,
}

/// The metadata policy of a rule: freshness when the origin gives none, and the
/// stale-while-revalidate grace after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataAge {
    pub max_age: Duration,
    pub grace: Duration,
}

/// What the rules do when a rule or the origin does not say: the metadata policy of the
/// built-in metadata rules and the negative-answer lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleDefaults {
    pub metadata: MetadataAge,
    /// How long a 404 or 410 without explicit freshness is remembered (zero: not at all).
    pub negative_ttl: Duration,
}

impl Default for RuleDefaults {
    fn default() -> Self {
        RuleDefaults {
            metadata: MetadataAge {
                max_age: Duration::from_secs(300),
                grace: Duration::from_secs(3600),
            },
            negative_ttl: Duration::from_secs(60),
        }
    }
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
    /// The metadata policy, for metadata rules.
    pub metadata: Option<MetadataAge>,
    /// The rule for 404 and 410 answers ([`Rules::negative`]), applied to nothing else.
    pub negative: bool,
    /// One of the built-in rules (possibly changed by a user rule without a pattern).
    pub builtin: bool,
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

    /// The freshness lifetime of a response this rule governs: the metadata age when the
    /// rule has one and the origin gave no explicit freshness, else the origin's clamped.
    pub fn lifetime(&self, origin: Duration, explicit: bool) -> Duration {
        match self.metadata {
            Some(m) if !explicit => m.max_age,
            _ => self.clamp(origin),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
    /// Every pattern in one automaton: a URL is scanned once per request, not once per rule.
    set: regex::RegexSet,
    /// The rule for 404 and 410 answers; `None` when `negative-ttl` is zero.
    negative: Option<Rule>,
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
        max: None,
        // Metadata too: pip asks for `max-age=0` on every index page, which would send every
        // page upstream; the metadata age decides instead (what a repository manager does).
        ignore_client_no_cache: true,
        vary: vary.iter().map(|s| s.to_string()).collect(),
        // Marks a metadata rule; the value comes from `--metadata-max-age`.
        metadata_max_age: (!immutable).then(String::new),
        metadata_grace: None,
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
    /// User rules (first) then, unless disabled, the built-in ones. A user rule without a
    /// pattern changes the built-in rule it names instead. Errors name the rule.
    pub fn build(
        user: &[RuleConfig],
        with_builtins: bool,
        defaults: RuleDefaults,
    ) -> Result<Rules, String> {
        let mut builtins = builtin_rules();
        let mut own = Vec::new();
        for (i, rc) in user.iter().enumerate() {
            if !rc.pattern.trim().is_empty() {
                own.push(rc.clone());
                continue;
            }
            let name = rc.name.as_deref().unwrap_or_default();
            let Some(b) = builtins
                .iter_mut()
                .find(|b| b.name.as_deref() == Some(name))
            else {
                return Err(format!(
                    "cache-rule {}: without a pattern, `name` must be a built-in rule (`{name}` is not one: {})",
                    i + 1,
                    builtin_rules()
                        .iter()
                        .filter_map(|b| b.name.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            if rc.exclude.is_some() {
                b.exclude = rc.exclude.clone();
            }
            if rc.min.is_some() {
                b.min = rc.min.clone();
            }
            if rc.max.is_some() {
                b.max = rc.max.clone();
            }
            if rc.ignore_client_no_cache {
                b.ignore_client_no_cache = true;
            }
            if !rc.vary.is_empty() {
                b.vary = rc.vary.clone();
            }
            if rc.metadata_max_age.is_some() {
                b.metadata_max_age = rc.metadata_max_age.clone();
            }
            if rc.metadata_grace.is_some() {
                b.metadata_grace = rc.metadata_grace.clone();
            }
        }
        let builtin_count = if with_builtins { builtins.len() } else { 0 };
        let mut rules = Vec::new();
        let all = own
            .iter()
            .map(|r| (r, false))
            .chain(builtins.iter().take(builtin_count).map(|r| (r, true)));
        for (i, (rc, builtin)) in all.enumerate() {
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
            // An empty metadata-max-age (the built-in metadata rules) takes the default.
            let metadata = match rc.metadata_max_age.as_deref().map(str::trim) {
                None => None,
                Some(v) => Some(MetadataAge {
                    max_age: if v.is_empty() {
                        defaults.metadata.max_age
                    } else {
                        dur(&Some(v.to_string()), "invalid metadata-max-age")?
                            .unwrap_or(defaults.metadata.max_age)
                    },
                    grace: dur(&rc.metadata_grace, "invalid metadata-grace")?
                        .unwrap_or(defaults.metadata.grace),
                }),
            };
            if rc.metadata_grace.is_some() && metadata.is_none() {
                return Err(format!(
                    "cache-rule {} ({label}): metadata-grace needs metadata-max-age",
                    i + 1
                ));
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
                metadata,
                negative: false,
                builtin,
            });
        }
        let set = regex::RegexSet::new(rules.iter().map(|r| r.pattern.as_str()))
            .map_err(|e| format!("cache rules: {e}"))?;
        // Never matched against URLs (it is not in `set`): chosen by status.
        let never = Regex::new("$^").map_err(|e| format!("cache rules: {e}"))?;
        let negative = (!defaults.negative_ttl.is_zero()).then(|| Rule {
            name: "negative".into(),
            pattern: never,
            exclude: None,
            min: Duration::ZERO,
            max: None,
            ignore_client_no_cache: false,
            vary: Vec::new(),
            metadata: Some(MetadataAge {
                max_age: defaults.negative_ttl,
                grace: Duration::ZERO,
            }),
            negative: true,
            builtin: true,
        });
        Ok(Rules {
            rules,
            set,
            negative,
        })
    }

    /// The rule a response with `status` to a URL whose rule is `rule` is stored under: the
    /// negative rule for 404 and 410, the URL's rule for 2xx, none otherwise.
    pub fn for_status(&self, rule: Option<&Rule>, status: http::StatusCode) -> Option<Rule> {
        match status.as_u16() {
            404 | 410 => self.negative.clone(),
            200..=299 => rule.cloned(),
            _ => None,
        }
    }

    /// The rule for 404 and 410 answers (none when `negative-ttl` is zero).
    pub fn negative(&self) -> Option<&Rule> {
        self.negative.as_ref()
    }

    /// The rule called `name`.
    pub fn named(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
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
        Rules::build(&[], true, RuleDefaults::default()).unwrap_or_else(|_| Rules {
            rules: Vec::new(),
            set: regex::RegexSet::empty(),
            negative: None,
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
        let r = Rules::build(&[user], true, RuleDefaults::default()).unwrap();
        assert_eq!(r.classify("http://h/-/a.tgz?x=1").unwrap().name, "mine");
        assert!(!r.classify("http://h/-/a.tgz").unwrap().builtin);
    }

    #[test]
    fn clamp_and_errors() {
        let r = Rules::default();
        let tgz = r.classify("http://h/-/a-1.tgz").unwrap();
        assert_eq!(tgz.clamp(Duration::from_secs(300)), YEAR);
        let meta = r.classify("http://h/maven-metadata.xml").unwrap();
        let five = Duration::from_secs(300);
        assert_eq!(meta.lifetime(Duration::ZERO, false), five);
        assert_eq!(
            meta.lifetime(Duration::from_secs(7), true),
            Duration::from_secs(7)
        );
        let bad = RuleConfig {
            pattern: "(".into(),
            ..Default::default()
        };
        assert!(
            Rules::build(&[bad], false, RuleDefaults::default())
                .unwrap_err()
                .contains("invalid pattern")
        );
    }

    #[test]
    fn every_mutable_builtin_is_a_metadata_rule_with_the_defaults() {
        let d = RuleDefaults {
            metadata: MetadataAge {
                max_age: Duration::from_secs(42),
                grace: Duration::from_secs(7),
            },
            negative_ttl: Duration::from_secs(60),
        };
        let r = Rules::build(&[], true, d).unwrap();
        for name in [
            "npm-packument",
            "maven-metadata",
            "pypi-simple",
            "apt-index",
            "cargo-index",
            "go-list",
        ] {
            let rule = r.named(name).unwrap();
            assert_eq!(rule.metadata, Some(d.metadata), "{name}");
            assert!(rule.builtin && !rule.overrides_revalidation(), "{name}");
        }
        for name in ["npm-tarball", "crate", "go-module", "pypi-file"] {
            assert_eq!(r.named(name).unwrap().metadata, None, "{name}");
        }
        assert!(
            Rules::default()
                .classify("http://h/x/@latest")
                .is_some_and(|r| r.name == "go-list")
        );
    }

    #[test]
    fn a_rule_without_pattern_changes_a_builtin() {
        let user = RuleConfig {
            name: Some("npm-packument".into()),
            metadata_max_age: Some("1m".into()),
            metadata_grace: Some("10s".into()),
            ..Default::default()
        };
        let r = Rules::build(&[user], true, RuleDefaults::default()).unwrap();
        let p = r.classify("http://registry.example.org/left-pad").unwrap();
        assert_eq!(p.name, "npm-packument");
        assert_eq!(
            p.metadata,
            Some(MetadataAge {
                max_age: Duration::from_secs(60),
                grace: Duration::from_secs(10)
            })
        );
        let unknown = RuleConfig {
            name: Some("nope".into()),
            ..Default::default()
        };
        let e = Rules::build(&[unknown], true, RuleDefaults::default()).unwrap_err();
        assert!(e.contains("npm-packument"), "{e}");
        let user_meta = RuleConfig {
            pattern: r"/index\.json$".into(),
            metadata_max_age: Some("2m".into()),
            ..Default::default()
        };
        let r = Rules::build(&[user_meta], false, RuleDefaults::default()).unwrap();
        let m = r
            .classify("http://h/a/index.json")
            .unwrap()
            .metadata
            .unwrap();
        assert_eq!(m.max_age, Duration::from_secs(120));
        assert_eq!(m.grace, RuleDefaults::default().metadata.grace);
    }

    #[test]
    fn negative_rule_by_status() {
        let r = Rules::default();
        let tgz = r.classify("http://h/-/a-1.tgz");
        assert_eq!(
            r.for_status(tgz, http::StatusCode::NOT_FOUND)
                .map(|r| r.negative),
            Some(true)
        );
        assert_eq!(
            r.for_status(tgz, http::StatusCode::OK).map(|r| r.name),
            Some("npm-tarball".into())
        );
        assert!(r.for_status(tgz, http::StatusCode::BAD_GATEWAY).is_none());
        let off = RuleDefaults {
            negative_ttl: Duration::ZERO,
            ..Default::default()
        };
        let r = Rules::build(&[], true, off).unwrap();
        assert!(r.for_status(None, http::StatusCode::NOT_FOUND).is_none());
    }
}

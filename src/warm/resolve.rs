//! From lockfile items to artifact URLs: npm names through the registry base, Python pins
//! through the index's simple pages (PEP 691 JSON, or PEP 503 HTML when that is all the
//! index serves), crates through the registry's `config.json` `dl` template, Go modules
//! through the module proxy. Each index page is fetched once however many items need it.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;
use regex::Regex;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::fetch::{Artifact, Check, Fetcher};
use super::gosum::{self, GoFile};
use super::integrity::{Alg, Digest};
use super::lockfile::cargo::download_url;
use super::lockfile::npm::tarball_url;
use super::lockfile::python::normalize;
use super::lockfile::{Item, Select};

/// The index bases the items may need (upstream URLs; `--mirror` pairs apply to them too).
#[derive(Debug, Clone, Default)]
pub struct Indexes {
    pub npm_registry: Option<String>,
    pub pypi_index: Option<String>,
    pub cargo_index: Option<String>,
    pub goproxy: Option<String>,
}

/// What is missing to resolve these items: one line per flag, naming it.
pub fn missing(items: &[Item], idx: &Indexes) -> Vec<String> {
    let mut out = Vec::new();
    let mut note = |s: &str| {
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    };
    for i in items {
        match i {
            Item::Npm { .. } if idx.npm_registry.is_none() => note(
                "the npm lockfile names packages by version only (pnpm-lock.yaml, or \
                 package-lock.json without `resolved`): give --npm-registry URL (the registry \
                 the lockfile was made against)",
            ),
            Item::Python { index: None, .. } if idx.pypi_index.is_none() => note(
                "the Python lockfile gives no file URLs: give --pypi-index URL (the simple API \
                 base, e.g. https://registry.example.org/simple)",
            ),
            Item::Crate { source, .. }
                if source.starts_with("registry+") && idx.cargo_index.is_none() =>
            {
                note(
                    "Cargo.lock names a git-index registry: give --cargo-index URL (its sparse \
                     index, the directory holding config.json)",
                )
            }
            Item::Go(_) if idx.goproxy.is_none() => {
                note("go.sum needs a module proxy: give --goproxy URL")
            }
            _ => {}
        }
    }
    out
}

/// A file a simple page lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyFile {
    pub filename: String,
    pub url: String,
    pub digests: Vec<Digest>,
}

type Shared<T> = Arc<OnceCell<Result<T, String>>>;

pub struct Resolver {
    fetcher: Arc<Fetcher>,
    idx: Indexes,
    pages: Mutex<HashMap<String, Shared<Arc<Vec<PyFile>>>>>,
    dl: Mutex<HashMap<String, Shared<String>>>,
}

fn join(base: &str, rest: &str) -> String {
    format!("{}/{rest}", base.trim_end_matches('/'))
}

impl Resolver {
    pub fn new(fetcher: Arc<Fetcher>, idx: Indexes) -> Resolver {
        Resolver {
            fetcher,
            idx,
            pages: Mutex::new(HashMap::new()),
            dl: Mutex::new(HashMap::new()),
        }
    }

    pub async fn resolve(&self, item: &Item) -> Result<Vec<Artifact>, String> {
        let label = item.label();
        match item {
            Item::Url { url, digests, .. } => Ok(vec![Artifact {
                label,
                url: url.clone(),
                check: check_of(digests),
            }]),
            Item::Npm {
                name,
                version,
                digests,
            } => {
                let reg = self
                    .idx
                    .npm_registry
                    .as_deref()
                    .ok_or("no --npm-registry")?;
                Ok(vec![Artifact {
                    label,
                    url: tarball_url(reg, name, version),
                    check: check_of(digests),
                }])
            }
            Item::Python {
                index,
                name,
                select,
                ..
            } => {
                let index = index
                    .as_deref()
                    .or(self.idx.pypi_index.as_deref())
                    .ok_or("no --pypi-index")?;
                let files = self.simple_page(index, name).await?;
                pick(&label, &files, select)
            }
            Item::Crate {
                source,
                name,
                version,
                sha256,
            } => {
                let index = match source.strip_prefix("sparse+") {
                    Some(u) => u,
                    None => self.idx.cargo_index.as_deref().ok_or("no --cargo-index")?,
                };
                let dl = self.dl_template(index).await?;
                Ok(vec![Artifact {
                    label,
                    url: download_url(&dl, name, version, &sha256.hex()),
                    check: Check::Digests(vec![sha256.clone()]),
                }])
            }
            Item::Go(line) => {
                let proxy = self.idx.goproxy.as_deref().ok_or("no --goproxy")?;
                Ok(vec![Artifact {
                    label,
                    url: join(proxy, &gosum::proxy_path(line)?),
                    check: match line.file {
                        GoFile::Zip => Check::GoZip(line.h1.clone()),
                        GoFile::Mod => Check::GoMod(line.h1.clone()),
                    },
                }])
            }
        }
    }

    async fn simple_page(&self, index: &str, name: &str) -> Result<Arc<Vec<PyFile>>, String> {
        let url = join(index, &format!("{}/", normalize(name)));
        let cell = self.pages.lock().entry(url.clone()).or_default().clone();
        cell.get_or_init(|| async {
            // PEP 691 §"Version + Format Selection": prefer JSON, accept HTML.
            let accept = "application/vnd.pypi.simple.v1+json, \
                          application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";
            let (final_url, ct, body) = self.fetcher.document(&url, accept).await?;
            parse_simple(&final_url, &ct, &body).map(Arc::new)
        })
        .await
        .clone()
    }

    async fn dl_template(&self, index: &str) -> Result<String, String> {
        let cell = self.dl.lock().entry(index.to_string()).or_default().clone();
        cell.get_or_init(|| async {
            let url = join(index, "config.json");
            let (_, _, body) = self.fetcher.document(&url, "application/json").await?;
            let v: Value =
                serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))?;
            v.get("dl")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("{url} has no `dl`"))
        })
        .await
        .clone()
    }
}

fn check_of(digests: &[Digest]) -> Check {
    if digests.is_empty() {
        Check::Unverified
    } else {
        Check::Digests(digests.to_vec())
    }
}

/// Chooses the files a Python item pins. Every lockfile digest (or file name) must find its
/// file: one that does not is reported, since the lockfile then cannot be installed as is.
fn pick(label: &str, files: &[PyFile], select: &Select) -> Result<Vec<Artifact>, String> {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    match select {
        Select::Hashes(want) => {
            for d in want {
                match files.iter().find(|f| f.digests.contains(d)) {
                    Some(f) => out.push(Artifact {
                        label: format!("{label} {}", f.filename),
                        url: f.url.clone(),
                        check: Check::Digests(vec![d.clone()]),
                    }),
                    None => missing.push(d.to_string()),
                }
            }
        }
        Select::Files(want) => {
            for (name, d) in want {
                match files.iter().find(|f| &f.filename == name) {
                    Some(f) => out.push(Artifact {
                        label: format!("{label} {name}"),
                        url: f.url.clone(),
                        check: Check::Digests(vec![d.clone()]),
                    }),
                    None => missing.push(name.clone()),
                }
            }
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "the index lists no file for {}{}",
            missing.join(", "),
            if out.is_empty() {
                String::new()
            } else {
                format!(" ({} other file(s) found)", out.len())
            }
        ));
    }
    Ok(out)
}

/// Parses a simple page by its content type: PEP 691 JSON or PEP 503 HTML. Links are
/// resolved against the page's own URL (after redirects).
pub fn parse_simple(
    page_url: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Vec<PyFile>, String> {
    let base = url::Url::parse(page_url).map_err(|e| format!("{page_url}: {e}"))?;
    let abs = |href: &str| -> Result<String, String> {
        let mut u = base
            .join(href)
            .map_err(|e| format!("bad link `{href}` on {page_url}: {e}"))?;
        u.set_fragment(None);
        Ok(u.to_string())
    };
    let mt = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mt.ends_with("+json") || mt == "application/json" {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| format!("{page_url}: not JSON: {e}"))?;
        let mut out = Vec::new();
        for f in v
            .get("files")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{page_url}: no `files` list"))?
        {
            let (Some(filename), Some(href)) = (
                f.get("filename").and_then(Value::as_str),
                f.get("url").and_then(Value::as_str),
            ) else {
                continue;
            };
            let mut digests = Vec::new();
            for (alg, hex) in f
                .get("hashes")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                if let (Some(alg), Some(hex)) = (Alg::parse(alg), hex.as_str()) {
                    if let Ok(d) = Digest::from_hex(alg, hex) {
                        digests.push(d);
                    }
                }
            }
            out.push(PyFile {
                filename: filename.to_string(),
                url: abs(href)?,
                digests,
            });
        }
        return Ok(out);
    }
    static ANCHOR: LazyLock<Option<Regex>> =
        LazyLock::new(|| Regex::new(r"(?is)<a\b([^>]*)>(.*?)</a\s*>").ok());
    static HREF: LazyLock<Option<Regex>> = LazyLock::new(|| {
        Regex::new(r#"(?i)\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))"#).ok()
    });
    let (Some(anchor), Some(href_re)) = (ANCHOR.as_ref(), HREF.as_ref()) else {
        return Err("internal: bad pattern".into());
    };
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    for a in anchor.captures_iter(&text) {
        let attrs = a.get(1).map_or("", |m| m.as_str());
        let Some(h) = href_re.captures(attrs) else {
            continue;
        };
        let href = unescape(
            h.get(1)
                .or_else(|| h.get(2))
                .or_else(|| h.get(3))
                .map_or("", |m| m.as_str()),
        );
        // PEP 503: the fragment `#<hashname>=<hex>` is the file's digest.
        let mut digests = Vec::new();
        if let Some((alg, hex)) = href.split_once('#').and_then(|(_, f)| f.split_once('=')) {
            if let Some(d) = Alg::parse(alg).and_then(|a| Digest::from_hex(a, hex).ok()) {
                digests.push(d);
            }
        }
        let url = abs(&href)?;
        let shown = unescape(a.get(2).map_or("", |m| m.as_str()).trim());
        let filename = if shown.is_empty() {
            url.rsplit('/').next().unwrap_or("").to_string()
        } else {
            shown
        };
        out.push(PyFile {
            filename,
            url,
            digests,
        });
    }
    Ok(out)
}

/// The character references a simple page uses in links and names.
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "3333333333333333333333333333333333333333333333333333333333333333";

    #[test]
    fn parses_json_and_html_pages() {
        let json = format!(
            r#"{{"meta":{{"api-version":"1.0"}},"name":"a","files":[
            {{"filename":"a-1.0.tar.gz","url":"../../packages/a-1.0.tar.gz","hashes":{{"sha256":"{H}"}}}},
            {{"filename":"a-1.0-py3-none-any.whl","url":"https://files.example.org/a.whl","hashes":{{}}}}]}}"#
        );
        let f = parse_simple(
            "http://registry.example.org/simple/a/",
            "application/vnd.pypi.simple.v1+json",
            json.as_bytes(),
        )
        .unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(
            f[0].url,
            "http://registry.example.org/packages/a-1.0.tar.gz"
        );
        assert_eq!(f[0].digests[0].hex(), H);
        let html = format!(
            "<html><body><a href=\"/p/a-1.0.tar.gz#sha256={H}\" data-requires-python=\"&gt;=3\">a-1.0.tar.gz</a>\n\
             <A HREF='https://files.example.org/a.whl?x=1&amp;y=2'>a-1.0-py3-none-any.whl</A></body></html>"
        );
        let f = parse_simple(
            "http://registry.example.org/simple/a/",
            "text/html",
            html.as_bytes(),
        )
        .unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].url, "http://registry.example.org/p/a-1.0.tar.gz");
        assert_eq!(f[0].filename, "a-1.0.tar.gz");
        assert_eq!(f[0].digests.len(), 1);
        assert_eq!(f[1].url, "https://files.example.org/a.whl?x=1&y=2");
        assert!(parse_simple("http://r/", "application/vnd.pypi.simple.v1+json", b"{").is_err());
    }

    #[test]
    fn picks_files_by_hash_or_name() {
        let d = Digest::from_hex(Alg::Sha256, H).unwrap();
        let other = Digest::from_hex(Alg::Sha256, &"4".repeat(64)).unwrap();
        let files = vec![PyFile {
            filename: "a-1.0.tar.gz".into(),
            url: "http://r/a".into(),
            digests: vec![d.clone()],
        }];
        let a = pick("a==1.0", &files, &Select::Hashes(vec![d.clone()])).unwrap();
        assert_eq!(a[0].url, "http://r/a");
        let e = pick("a==1.0", &files, &Select::Hashes(vec![d.clone(), other])).unwrap_err();
        assert!(e.contains("sha256:4444") && e.contains("1 other"), "{e}");
        let a = pick(
            "a==1.0",
            &files,
            &Select::Files(vec![("a-1.0.tar.gz".into(), d.clone())]),
        )
        .unwrap();
        assert_eq!(a[0].check, Check::Digests(vec![d.clone()]));
        assert!(pick("a==1.0", &files, &Select::Files(vec![("b".into(), d)])).is_err());
    }

    #[test]
    fn names_the_missing_flags() {
        let items = vec![
            Item::Npm {
                name: "a".into(),
                version: "1".into(),
                digests: vec![],
            },
            Item::Crate {
                source: "sparse+http://registry.example.org/".into(),
                name: "c".into(),
                version: "1".into(),
                sha256: Digest::from_hex(Alg::Sha256, H).unwrap(),
            },
        ];
        let m = missing(&items, &Indexes::default());
        assert_eq!(m.len(), 1);
        assert!(m[0].contains("--npm-registry"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, failure_persistence: None, ..Default::default() })]

        /// Index pages come from the network: no body makes the parser panic.
        #[test]
        fn no_simple_page_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
                                 text in "(<a href=[\"']?[a-z:/.#=0-9%]{0,30}[\"']?>[a-z.]{0,10}</a>){0,5}") {
            for ct in ["application/vnd.pypi.simple.v1+json", "text/html"] {
                let _ = parse_simple("http://registry.example.org/simple/a/", ct, &body);
                let _ = parse_simple("http://registry.example.org/simple/a/", ct, text.as_bytes());
            }
        }
    }
}

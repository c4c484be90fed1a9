//! npm-family lockfiles: `package-lock.json` (a `resolved` URL and an SRI `integrity` per
//! package), yarn v1 `yarn.lock` (`resolved "URL#sha1"` and `integrity`) and
//! `pnpm-lock.yaml` (`resolution: {integrity}`; the URL comes from the registry base).

use std::collections::HashSet;

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use super::item::{Item, Parsed, is_http};
use crate::warm::integrity::{Alg, Digest};

fn digests(integrity: Option<&str>, what: &str) -> Result<Vec<Digest>, String> {
    match integrity {
        None => Ok(Vec::new()),
        Some(i) => Digest::parse_sri(i).map_err(|e| format!("{what}: {e}")),
    }
}

/// `package-lock.json`: lockfileVersion 2 and 3 list every installed package under
/// `packages` (keyed by its `node_modules/...` path); version 1 nests `dependencies`.
pub fn package_lock(text: &str) -> Result<Parsed, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let mut out = Parsed::default();
    let mut seen = HashSet::new();
    let v1 = doc.get("packages").is_none();
    let mut add = |out: &mut Parsed, key: &str, p: &Value| -> Result<(), String> {
        if p.get("link").and_then(Value::as_bool) == Some(true) {
            return Ok(());
        }
        let Some(url) = p.get("resolved").and_then(Value::as_str) else {
            // npm with `omit-lockfile-registry-resolved` records registry packages by
            // version alone: the URL is derived from the registry, as for pnpm.
            let version = p.get("version").and_then(Value::as_str);
            let bundled = p.get("inBundle").and_then(Value::as_bool) == Some(true);
            let installed = v1 || key.contains("node_modules/");
            if let (Some(v), false, true) = (version, bundled, installed) {
                if v.contains([':', '/']) {
                    out.notes.push(format!("{key}: not fetched ({v})"));
                    return Ok(());
                }
                let name = p
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| package_name(key));
                if seen.insert(format!("{name}@{v}")) {
                    out.items.push(Item::Npm {
                        name: name.to_string(),
                        version: v.to_string(),
                        digests: digests(p.get("integrity").and_then(Value::as_str), key)?,
                    });
                }
            }
            return Ok(());
        };
        if !is_http(url) {
            out.notes.push(format!("{key}: not fetched ({url})"));
            return Ok(());
        }
        if !seen.insert(url.to_string()) {
            return Ok(());
        }
        out.items.push(Item::Url {
            label: package_name(key).to_string(),
            url: url.to_string(),
            digests: digests(p.get("integrity").and_then(Value::as_str), key)?,
        });
        Ok(())
    };
    if let Some(pkgs) = doc.get("packages").and_then(Value::as_object) {
        for (key, p) in pkgs {
            if !key.is_empty() {
                add(&mut out, key, p)?;
            }
        }
    } else if let Some(deps) = doc.get("dependencies") {
        // lockfileVersion 1: a tree; walk it without recursion so depth is not a stack risk.
        let mut stack = vec![deps];
        while let Some(deps) = stack.pop() {
            for (name, p) in deps.as_object().into_iter().flatten() {
                add(&mut out, name, p)?;
                if let Some(d) = p.get("dependencies") {
                    stack.push(d);
                }
            }
        }
    } else {
        return Err("no `packages` or `dependencies`: not a package-lock.json".into());
    }
    Ok(out)
}

/// `node_modules/a/node_modules/@s/b` names the package `@s/b`.
fn package_name(key: &str) -> &str {
    match key.rfind("node_modules/") {
        Some(i) => &key[i + "node_modules/".len()..],
        None => key,
    }
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

/// yarn v1 `yarn.lock`: blocks headed by `"name@range", name@range2:` at column 0 with
/// indented `key value` lines. `resolved` carries the tarball URL with the sha1 as the
/// fragment; `integrity` (SRI) is the stronger check when present.
pub fn yarn(text: &str) -> Result<Parsed, String> {
    if text.contains("\n__metadata:") || text.starts_with("__metadata:") {
        return Err(
            "a yarn 2+ (berry) lockfile: only yarn v1 lockfiles are read (berry's checksums \
             are of its own zip cache, not of the registry tarballs)"
                .into(),
        );
    }
    let mut out = Parsed::default();
    let mut seen = HashSet::new();
    let mut block: Option<(String, Option<String>, Option<String>)> = None;
    let mut flush = |out: &mut Parsed,
                     b: Option<(String, Option<String>, Option<String>)>|
     -> Result<(), String> {
        let Some((head, resolved, integrity)) = b else {
            return Ok(());
        };
        let Some(resolved) = resolved else {
            return Ok(());
        };
        let (url, frag) = match resolved.split_once('#') {
            Some((u, f)) => (u.to_string(), Some(f.to_string())),
            None => (resolved.clone(), None),
        };
        if !is_http(&url) {
            out.notes.push(format!("{head}: not fetched ({url})"));
            return Ok(());
        }
        if !seen.insert(url.clone()) {
            return Ok(());
        }
        let mut d = digests(integrity.as_deref(), &head)?;
        if d.is_empty() {
            if let Some(f) = frag.filter(|f| f.len() == 40) {
                d.push(Digest::from_hex(Alg::Sha1, &f).map_err(|e| format!("{head}: {e}"))?);
            }
        }
        out.items.push(Item::Url {
            label: head,
            url,
            digests: d,
        });
        Ok(())
    };
    for line in text.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') {
            flush(&mut out, block.take())?;
            // `"@s/a@^1", "@s/a@^1.1":` -> `@s/a@^1` for messages.
            let first = line
                .trim_end_matches(':')
                .split(", ")
                .next()
                .unwrap_or(line);
            block = Some((unquote(first).to_string(), None, None));
            continue;
        }
        let Some((_, resolved, integrity)) = block.as_mut() else {
            return Err(format!("indented line outside a block: `{line}`"));
        };
        let l = line.trim();
        if let Some(v) = l.strip_prefix("resolved ") {
            *resolved = Some(unquote(v).to_string());
        } else if let Some(v) = l.strip_prefix("integrity ") {
            *integrity = Some(unquote(v).to_string());
        }
    }
    flush(&mut out, block.take())?;
    Ok(out)
}

/// Splits a pnpm `packages` key into name and version. Version 9 writes `name@version`,
/// versions 6-8 `/name@version`, 5.x `/name/version`; peer-dependency suffixes (`(peer@1)`
/// from v6, `_peer@1` in v5) follow the version and are dropped.
fn pnpm_key(key: &str, slash_form: bool) -> Option<(String, String)> {
    let k = key.strip_prefix('/').unwrap_or(key);
    let k = k.split('(').next().unwrap_or(k);
    let (name, version) = if slash_form {
        let (n, v) = k.rsplit_once('/')?;
        (n, v.split('_').next().unwrap_or(v))
    } else {
        let at = k.get(1..)?.rfind('@')? + 1;
        (&k[..at], &k[at + 1..])
    };
    if name.is_empty() || version.is_empty() {
        return None;
    }
    Some((name.to_string(), version.to_string()))
}

/// `pnpm-lock.yaml`: every package under `packages` with `resolution.integrity`; a
/// `resolution.tarball` URL (packages not from the registry) is used as is.
pub fn pnpm(text: &str) -> Result<Parsed, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    let doc = docs.first().ok_or("empty file")?;
    let version = match &doc["lockfileVersion"] {
        Yaml::Real(s) | Yaml::String(s) => s.parse::<f64>().ok(),
        Yaml::Integer(i) => Some(*i as f64),
        _ => None,
    }
    .ok_or("no lockfileVersion: not a pnpm-lock.yaml")?;
    let slash_form = version < 6.0;
    let mut out = Parsed::default();
    let Some(pkgs) = doc["packages"].as_hash() else {
        return Ok(out);
    };
    let mut seen = HashSet::new();
    for (k, p) in pkgs {
        let Some(key) = k.as_str() else { continue };
        let res = &p["resolution"];
        let d = digests(res["integrity"].as_str(), key)?;
        if let Some(url) = res["tarball"].as_str() {
            if is_http(url) {
                if seen.insert(url.to_string()) {
                    out.items.push(Item::Url {
                        label: key.to_string(),
                        url: url.to_string(),
                        digests: d,
                    });
                }
            } else {
                out.notes.push(format!("{key}: not fetched ({url})"));
            }
            continue;
        }
        if d.is_empty() {
            // git and directory resolutions carry no integrity and no registry tarball.
            out.notes
                .push(format!("{key}: not from a registry, not fetched"));
            continue;
        }
        let named = match (p["name"].as_str(), p["version"].as_str()) {
            (Some(n), Some(v)) => Some((n.to_string(), v.to_string())),
            _ => pnpm_key(key, slash_form),
        };
        let Some((name, version)) = named else {
            return Err(format!("cannot read a name and version from `{key}`"));
        };
        if seen.insert(format!("{name}@{version}")) {
            out.items.push(Item::Npm {
                name,
                version,
                digests: d,
            });
        }
    }
    Ok(out)
}

/// The registry tarball URL of `name@version`: `<registry>/<name>/-/<base>-<version>.tgz`,
/// where `base` is the name without its scope (npm's own layout; the scope's slash stays).
pub fn tarball_url(registry: &str, name: &str, version: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    format!(
        "{}/{name}/-/{base}-{version}.tgz",
        registry.trim_end_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use sha2::Digest as _;

    fn sri(data: &[u8]) -> String {
        format!(
            "sha512-{}",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(data))
        )
    }

    #[test]
    fn package_lock_v3_and_v1() {
        let v3 = format!(
            r#"{{"lockfileVersion":3,"packages":{{
              "":{{"name":"root"}},
              "node_modules/a":{{"version":"1.0.0","resolved":"https://registry.example.org/a/-/a-1.0.0.tgz","integrity":"{}"}},
              "node_modules/a/node_modules/@s/b":{{"resolved":"https://registry.example.org/@s/b/-/b-2.0.0.tgz"}},
              "node_modules/c":{{"resolved":"git+ssh://git@example.org/c.git"}},
              "packages/d":{{"link":true,"resolved":"packages/d"}},
              "node_modules/bundled":{{"inBundle":true,"version":"1.0.0"}},
              "node_modules/@s/noresolved":{{"version":"3.0.0","integrity":"{0}"}},
              "node_modules/alias":{{"name":"real","version":"4.0.0"}},
              "node_modules/gitdep":{{"version":"git+ssh://git@example.org/g.git#abc"}},
              "packages/workspace":{{"version":"0.0.1"}}
            }}}}"#,
            sri(b"a")
        );
        let p = package_lock(&v3).unwrap();
        assert_eq!(p.items.len(), 4, "{p:?}");
        assert!(
            p.items
                .iter()
                .any(|i| matches!(i, Item::Npm { name, version, digests }
            if name == "@s/noresolved" && version == "3.0.0" && digests.len() == 1))
        );
        assert!(
            p.items
                .iter()
                .any(|i| matches!(i, Item::Npm { name, .. } if name == "real"))
        );
        assert!(
            p.items
                .iter()
                .any(|i| matches!(i, Item::Url { label, digests, .. }
            if label == "@s/b" && digests.is_empty()))
        );
        assert_eq!(p.notes.len(), 2, "{:?}", p.notes);
        let v1 = r#"{"lockfileVersion":1,"dependencies":{"a":{"resolved":"http://registry.example.org/a.tgz",
            "dependencies":{"b":{"resolved":"http://registry.example.org/b.tgz"}}}}}"#;
        assert_eq!(package_lock(v1).unwrap().items.len(), 2);
        assert!(package_lock("{}").is_err());
        assert!(package_lock("nope").is_err());
        let bad = r#"{"packages":{"node_modules/a":{"resolved":"http://h/a.tgz","integrity":"sha512-xx"}}}"#;
        assert!(package_lock(bad).is_err());
    }

    #[test]
    fn yarn_v1() {
        let text = format!(
            "# yarn lockfile v1\n\n\"@s/a@^1.0.0\", \"@s/a@^1.1.0\":\n  version \"1.2.0\"\n  \
             resolved \"https://registry.example.org/@s/a/-/a-1.2.0.tgz#{sha1}\"\n  integrity {i}\n  \
             dependencies:\n    b \"^2\"\n\nb@^2:\n  version \"2.0.0\"\n  resolved \
             \"https://registry.example.org/b/-/b-2.0.0.tgz#{sha1}\"\n\nc@file:../c:\n  version \"0.0.0\"\n",
            sha1 = "a".repeat(40),
            i = sri(b"a")
        );
        let p = yarn(&text).unwrap();
        assert_eq!(p.items.len(), 2);
        let Item::Url {
            label,
            url,
            digests,
        } = &p.items[0]
        else {
            panic!()
        };
        assert_eq!(label, "@s/a@^1.0.0");
        assert_eq!(url, "https://registry.example.org/@s/a/-/a-1.2.0.tgz");
        assert_eq!(digests[0].alg, Alg::Sha512);
        let Item::Url { digests, .. } = &p.items[1] else {
            panic!()
        };
        assert_eq!(digests[0].alg, Alg::Sha1);
        assert!(yarn("__metadata:\n  version: 6\n").is_err());
    }

    #[test]
    fn pnpm_keys() {
        assert_eq!(
            pnpm_key("@s/a@1.0.0(react@18.0.0)", false),
            Some(("@s/a".into(), "1.0.0".into()))
        );
        assert_eq!(
            pnpm_key("/a@1.0.0", false),
            Some(("a".into(), "1.0.0".into()))
        );
        assert_eq!(
            pnpm_key("/@s/a/1.0.0_react@18.0.0", true),
            Some(("@s/a".into(), "1.0.0".into()))
        );
        assert_eq!(pnpm_key("@s", false), None);
    }

    #[test]
    fn pnpm_v9_and_v5() {
        let v9 = format!(
            "lockfileVersion: '9.0'\n\npackages:\n\n  '@s/a@1.0.0':\n    resolution: {{integrity: {i}}}\n\n  \
             b@2.0.0:\n    resolution: {{integrity: {i}, tarball: https://files.example.org/b.tgz}}\n\n  \
             c@git+https://example.org/c.git#abc:\n    resolution: {{type: git, repo: x, commit: abc}}\n",
            i = sri(b"a")
        );
        let p = pnpm(&v9).unwrap();
        assert_eq!(p.items.len(), 2, "{p:?}");
        assert!(
            matches!(&p.items[0], Item::Npm { name, version, .. } if name == "@s/a" && version == "1.0.0")
        );
        assert!(
            matches!(&p.items[1], Item::Url { url, .. } if url == "https://files.example.org/b.tgz")
        );
        assert_eq!(p.notes.len(), 1);
        let v5 = format!(
            "lockfileVersion: 5.4\npackages:\n  /a/1.0.0:\n    resolution: {{integrity: {}}}\n",
            sri(b"a")
        );
        let p = pnpm(&v5).unwrap();
        assert!(
            matches!(&p.items[0], Item::Npm { name, version, .. } if name == "a" && version == "1.0.0")
        );
        assert!(pnpm("packages: {}\n").is_err());
        assert!(pnpm(": : :\n  - [").is_err());
    }

    #[test]
    fn tarball_urls() {
        assert_eq!(
            tarball_url("https://registry.example.org/", "@s/a", "1.0.0"),
            "https://registry.example.org/@s/a/-/a-1.0.0.tgz"
        );
        assert_eq!(
            tarball_url("https://registry.example.org/npm", "a", "1.0.0-rc.1"),
            "https://registry.example.org/npm/a/-/a-1.0.0-rc.1.tgz"
        );
    }
}

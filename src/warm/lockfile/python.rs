//! Python lockfiles: pip `requirements.txt` with `--hash` (names, versions and digests; the
//! files are found on the index by digest), `uv.lock` (file URLs with digests) and
//! `poetry.lock` (file names with digests; found on the index by name).

use std::collections::HashSet;

use super::item::{Item, Parsed, Select, is_http};
use crate::warm::integrity::Digest;

/// PEP 503 §"Normalized Names": lower-case, and every run of `-`, `_`, `.` becomes one `-`.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
            continue;
        }
        if sep && !out.is_empty() {
            out.push('-');
        }
        sep = false;
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Joins backslash-continued lines and drops comments (pip: a `#` at the start of a line or
/// after whitespace starts a comment).
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for raw in text.lines() {
        let line = match raw.find(" #").or_else(|| raw.find("\t#")) {
            Some(i) => &raw[..i],
            None if raw.trim_start().starts_with('#') => "",
            None => raw,
        };
        match line.trim_end().strip_suffix('\\') {
            Some(l) => {
                cur.push_str(l);
                cur.push(' ');
            }
            None => {
                cur.push_str(line);
                if !cur.trim().is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                cur.clear();
            }
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// pip's requirements format: `name[extras]==version [; marker] --hash=alg:hex ...`, or a
/// direct reference `name @ https://...` with its hash; `-i/--index-url` names the index.
pub fn requirements(text: &str) -> Result<Parsed, String> {
    let mut out = Parsed::default();
    let mut unhashed = 0;
    for line in logical_lines(text) {
        let tokens: Vec<&str> = line.split_ascii_whitespace().collect();
        if let Some(first) = tokens.first().filter(|t| t.starts_with('-')) {
            let value = |flag: &str| -> Option<String> {
                if let Some(v) = first.strip_prefix(&format!("{flag}=")) {
                    return Some(v.to_string());
                }
                (*first == flag).then(|| tokens.get(1).map(|s| s.to_string()))?
            };
            if let Some(v) = value("--index-url").or_else(|| value("-i")) {
                out.index_url = Some(v);
            } else if !first.starts_with("--hash") {
                out.notes.push(format!("option ignored: {}", line.trim()));
            }
            continue;
        }
        let mut hashes = Vec::new();
        let mut spec = Vec::new();
        let mut i = 0;
        while i < tokens.len() {
            let t = tokens[i];
            if let Some(h) = t.strip_prefix("--hash=") {
                hashes.push(Digest::parse_prefixed_hex(h).map_err(|e| format!("{line}: {e}"))?);
            } else if t == "--hash" {
                i += 1;
                let h = tokens
                    .get(i)
                    .ok_or_else(|| format!("{line}: --hash without value"))?;
                hashes.push(Digest::parse_prefixed_hex(h).map_err(|e| format!("{line}: {e}"))?);
            } else if t.starts_with("--") {
                // Per-requirement options such as --config-settings: no bearing on files.
            } else {
                spec.push(t);
            }
            i += 1;
        }
        let spec = spec.join(" ");
        let req = spec.split(';').next().unwrap_or(&spec).trim();
        if hashes.is_empty() {
            unhashed += 1;
            continue;
        }
        if let Some((name, url)) = req.split_once(" @ ").or_else(|| req.split_once('@')) {
            let url = url.trim();
            if !is_http(url) {
                out.notes
                    .push(format!("{}: not fetched ({url})", name.trim()));
                continue;
            }
            let url = url.split('#').next().unwrap_or(url);
            out.items.push(Item::Url {
                label: name.trim().to_string(),
                url: url.to_string(),
                digests: hashes,
            });
            continue;
        }
        let (name, version) = req
            .split_once("===")
            .or_else(|| req.split_once("=="))
            .ok_or_else(|| format!("`{req}` is not pinned with == (hashes need pins)"))?;
        let name = name.split('[').next().unwrap_or(name).trim();
        let version = version.trim();
        if name.is_empty() || version.is_empty() || version.contains('*') {
            return Err(format!("`{req}` is not an exact pin"));
        }
        out.items.push(Item::Python {
            index: None,
            name: name.to_string(),
            version: version.to_string(),
            select: Select::Hashes(hashes),
        });
    }
    if unhashed > 0 {
        out.notes.push(format!(
            "{unhashed} requirement(s) without --hash left out (without a digest there is no \
             way to tell which file pip would pick)"
        ));
    }
    Ok(out)
}

fn toml_doc(text: &str) -> Result<toml::Table, String> {
    text.parse::<toml::Table>()
        .map_err(|e| format!("not TOML: {}", e.message()))
}

fn packages(doc: &toml::Table) -> impl Iterator<Item = &toml::Table> {
    doc.get("package")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_table())
}

fn str_of<'a>(t: &'a toml::Table, k: &str) -> Option<&'a str> {
    t.get(k).and_then(|v| v.as_str())
}

/// `uv.lock`: each `[[package]]` lists its `sdist` and `wheels` with `url` and `hash`.
pub fn uv(text: &str) -> Result<Parsed, String> {
    let doc = toml_doc(text)?;
    if !doc.contains_key("package") {
        return Err("no [[package]] tables: not a uv.lock".into());
    }
    let mut out = Parsed::default();
    let mut seen = HashSet::new();
    for p in packages(&doc) {
        let name = str_of(p, "name").unwrap_or("?");
        let version = str_of(p, "version").unwrap_or("?");
        let sdist = p.get("sdist").and_then(|s| s.as_table());
        let wheels = p
            .get("wheels")
            .and_then(|w| w.as_array())
            .into_iter()
            .flatten()
            .filter_map(|w| w.as_table());
        for f in sdist.into_iter().chain(wheels) {
            let Some(url) = str_of(f, "url") else {
                // Local paths (`path = ...`) have nothing to warm.
                continue;
            };
            if !is_http(url) || !seen.insert(url.to_string()) {
                continue;
            }
            let digests = match str_of(f, "hash") {
                Some(h) => vec![
                    Digest::parse_prefixed_hex(h).map_err(|e| format!("{name} {version}: {e}"))?,
                ],
                None => Vec::new(),
            };
            let file = url.rsplit('/').next().unwrap_or(url);
            out.items.push(Item::Url {
                label: format!("{name}=={version} {file}"),
                url: url.to_string(),
                digests,
            });
        }
    }
    Ok(out)
}

fn poetry_files(list: Option<&toml::Value>, what: &str) -> Result<Vec<(String, Digest)>, String> {
    let mut out = Vec::new();
    for f in list
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_table())
    {
        let (Some(file), Some(hash)) = (str_of(f, "file"), str_of(f, "hash")) else {
            continue;
        };
        out.push((
            file.to_string(),
            Digest::parse_prefixed_hex(hash).map_err(|e| format!("{what}: {e}"))?,
        ));
    }
    Ok(out)
}

/// `poetry.lock`: each `[[package]]` has `files = [{file, hash}]` (poetry ≥ 1.2; older
/// versions put them under `[metadata.files]`) and an optional `[package.source]`.
pub fn poetry(text: &str) -> Result<Parsed, String> {
    let doc = toml_doc(text)?;
    if !doc.contains_key("package") {
        return Err("no [[package]] tables: not a poetry.lock".into());
    }
    let old_files = doc
        .get("metadata")
        .and_then(|m| m.get("files"))
        .and_then(|f| f.as_table());
    let mut out = Parsed::default();
    for p in packages(&doc) {
        let (Some(name), Some(version)) = (str_of(p, "name"), str_of(p, "version")) else {
            continue;
        };
        let what = format!("{name}=={version}");
        let mut files = poetry_files(p.get("files"), &what)?;
        if files.is_empty() {
            files = poetry_files(old_files.and_then(|t| t.get(name)), &what)?;
        }
        let source = p.get("source").and_then(|s| s.as_table());
        let (kind, src_url) = source
            .map(|s| (str_of(s, "type").unwrap_or(""), str_of(s, "url")))
            .unwrap_or(("", None));
        match kind {
            "" | "legacy" => {
                if files.is_empty() {
                    out.notes.push(format!("{what}: no files listed"));
                    continue;
                }
                out.items.push(Item::Python {
                    index: if kind == "legacy" {
                        src_url.map(str::to_string)
                    } else {
                        None
                    },
                    name: name.to_string(),
                    version: version.to_string(),
                    select: Select::Files(files),
                });
            }
            "url" => match src_url {
                Some(u) if is_http(u) => out.items.push(Item::Url {
                    label: what,
                    url: u.to_string(),
                    digests: files.into_iter().map(|(_, d)| d).collect(),
                }),
                _ => out.notes.push(format!("{what}: not fetched (url source)")),
            },
            other => out
                .notes
                .push(format!("{what}: not fetched ({other} source)")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn pep503_normalisation() {
        assert_eq!(normalize("Foo.Bar__baz-_-Qux"), "foo-bar-baz-qux");
        assert_eq!(normalize("zope.interface"), "zope-interface");
        assert_eq!(normalize("A"), "a");
    }

    #[test]
    fn requirements_with_hashes() {
        let text = format!(
            "# generated\n--index-url http://registry.example.org/simple\n\
             Foo_Bar[extra]==1.0 ; python_version >= \"3.8\" \\\n    --hash=sha256:{H1} \\\n    \
             --hash sha256:{H2}  # comment\nnohash==2.0\n\
             direct @ https://files.example.org/d-1.0.whl#egg=d --hash=sha256:{H1}\n\
             -r other.txt\n"
        );
        let p = requirements(&text).unwrap();
        assert_eq!(
            p.index_url.as_deref(),
            Some("http://registry.example.org/simple")
        );
        assert_eq!(p.items.len(), 2, "{p:?}");
        let Item::Python {
            name,
            version,
            select: Select::Hashes(h),
            ..
        } = &p.items[0]
        else {
            panic!("{p:?}")
        };
        assert_eq!(
            (name.as_str(), version.as_str(), h.len()),
            ("Foo_Bar", "1.0", 2)
        );
        assert!(
            matches!(&p.items[1], Item::Url { url, .. } if url == "https://files.example.org/d-1.0.whl")
        );
        assert_eq!(p.notes.len(), 2, "{:?}", p.notes);
        assert!(requirements(&format!("foo>=1 --hash=sha256:{H1}")).is_err());
        assert!(requirements("foo==1 --hash=sha256:zz").is_err());
    }

    #[test]
    fn uv_lock() {
        let text = format!(
            "version = 1\n[[package]]\nname = \"foo\"\nversion = \"1.0\"\n\
             source = {{ registry = \"https://registry.example.org/simple\" }}\n\
             sdist = {{ url = \"https://files.example.org/foo-1.0.tar.gz\", hash = \"sha256:{H1}\", size = 1 }}\n\
             wheels = [\n  {{ url = \"https://files.example.org/foo-1.0-py3-none-any.whl\", hash = \"sha256:{H2}\" }},\n]\n\
             [[package]]\nname = \"local\"\nversion = \"0.1\"\nsource = {{ editable = \".\" }}\n"
        );
        let p = uv(&text).unwrap();
        assert_eq!(p.items.len(), 2);
        assert!(matches!(&p.items[1], Item::Url { label, digests, .. }
            if label == "foo==1.0 foo-1.0-py3-none-any.whl" && digests[0].hex() == H2));
        assert!(uv("x = 1").is_err());
    }

    #[test]
    fn poetry_lock_new_and_old() {
        let text = format!(
            "[[package]]\nname = \"foo\"\nversion = \"1.0\"\nfiles = [\n  {{file = \"foo-1.0.tar.gz\", hash = \"sha256:{H1}\"}},\n]\n\
             [package.source]\ntype = \"legacy\"\nurl = \"http://registry.example.org/simple\"\nreference = \"corp\"\n\
             [[package]]\nname = \"bar\"\nversion = \"2.0\"\n\
             [[package]]\nname = \"g\"\nversion = \"0\"\n[package.source]\ntype = \"git\"\nurl = \"x\"\n\
             [metadata.files]\nbar = [\n  {{file = \"bar-2.0.whl\", hash = \"sha256:{H2}\"}},\n]\n"
        );
        let p = poetry(&text).unwrap();
        assert_eq!(p.items.len(), 2, "{p:?}");
        assert!(
            matches!(&p.items[0], Item::Python { index: Some(i), .. } if i == "http://registry.example.org/simple")
        );
        assert!(
            matches!(&p.items[1], Item::Python { index: None, select: Select::Files(f), .. } if f[0].0 == "bar-2.0.whl")
        );
        assert_eq!(p.notes.len(), 1);
    }
}

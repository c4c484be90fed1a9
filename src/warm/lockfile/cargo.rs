//! `Cargo.lock`: registry packages carry `source = "registry+URL"` or `"sparse+URL"` and a
//! sha256 `checksum` of the `.crate` file; the download URL comes from the registry's
//! `config.json` `dl` template.

use super::item::{Item, Parsed};
use crate::warm::integrity::{Alg, Digest};

pub fn cargo_lock(text: &str) -> Result<Parsed, String> {
    let doc = text
        .parse::<toml::Table>()
        .map_err(|e| format!("not TOML: {}", e.message()))?;
    // Lockfile format 1 kept checksums apart: `"checksum NAME VERSION (SOURCE)" = "hex"`.
    let old = doc.get("metadata").and_then(|m| m.as_table());
    let mut out = Parsed::default();
    for p in doc
        .get("package")
        .and_then(|p| p.as_array())
        .ok_or("no [[package]] tables: not a Cargo.lock")?
        .iter()
        .filter_map(|p| p.as_table())
    {
        let s = |k: &str| p.get(k).and_then(|v| v.as_str());
        let (Some(name), Some(version)) = (s("name"), s("version")) else {
            continue;
        };
        let Some(source) = s("source") else {
            continue; // a workspace or path package
        };
        if !source.starts_with("registry+") && !source.starts_with("sparse+") {
            out.notes
                .push(format!("{name} {version}: not fetched ({source})"));
            continue;
        }
        let checksum = s("checksum").map(str::to_string).or_else(|| {
            old?.get(&format!("checksum {name} {version} ({source})"))?
                .as_str()
                .map(str::to_string)
        });
        let Some(checksum) = checksum else {
            out.notes
                .push(format!("{name} {version}: no checksum, not fetched"));
            continue;
        };
        out.items.push(Item::Crate {
            source: source.to_string(),
            name: name.to_string(),
            version: version.to_string(),
            sha256: Digest::from_hex(Alg::Sha256, &checksum)
                .map_err(|e| format!("{name} {version}: {e}"))?,
        });
    }
    Ok(out)
}

/// The index directory of a crate name (the Cargo book, "Index format"): `1/`, `2/`,
/// `3/<first char>/`, else `<first two>/<next two>/`.
fn prefix(name: &str) -> String {
    match name.len() {
        0 => String::new(),
        1 => "1".into(),
        2 => "2".into(),
        3 => format!("3/{}", name.get(..1).unwrap_or("")),
        _ => format!(
            "{}/{}",
            name.get(..2).unwrap_or(""),
            name.get(2..4).unwrap_or("")
        ),
    }
}

/// The download URL from a registry's `dl` template (the Cargo book, "Index configuration"):
/// markers `{crate}`, `{version}`, `{prefix}`, `{lowerprefix}`, `{sha256-checksum}`; with
/// none of them, `/{crate}/{version}/download` is appended.
pub fn download_url(dl: &str, name: &str, version: &str, sha256_hex: &str) -> String {
    const MARKERS: [&str; 5] = [
        "{crate}",
        "{version}",
        "{prefix}",
        "{lowerprefix}",
        "{sha256-checksum}",
    ];
    if !MARKERS.iter().any(|m| dl.contains(m)) {
        return format!("{}/{name}/{version}/download", dl.trim_end_matches('/'));
    }
    let p = prefix(name);
    dl.replace("{crate}", name)
        .replace("{version}", version)
        .replace("{prefix}", &p)
        .replace("{lowerprefix}", &p.to_lowercase())
        .replace("{sha256-checksum}", sha256_hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "abababababababababababababababababababababababababababababababab";

    #[test]
    fn reads_registry_packages_only() {
        let text = format!(
            "version = 3\n[[package]]\nname = \"me\"\nversion = \"0.1.0\"\n\
             [[package]]\nname = \"a\"\nversion = \"1.0.0\"\nsource = \"sparse+http://registry.example.org/index/\"\nchecksum = \"{H}\"\n\
             [[package]]\nname = \"g\"\nversion = \"1.0.0\"\nsource = \"git+https://example.org/g#abc\"\n"
        );
        let p = cargo_lock(&text).unwrap();
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.notes.len(), 1);
        let old = format!(
            "[[package]]\nname = \"a\"\nversion = \"1.0.0\"\nsource = \"registry+https://example.org/index\"\n\
             [metadata]\n\"checksum a 1.0.0 (registry+https://example.org/index)\" = \"{H}\"\n"
        );
        assert!(
            matches!(&cargo_lock(&old).unwrap().items[0], Item::Crate { sha256, .. } if sha256.hex() == H)
        );
        assert!(cargo_lock("[x]").is_err());
    }

    #[test]
    fn dl_templates() {
        assert_eq!(
            download_url("https://files.example.org/crates", "serde", "1.0.0", H),
            "https://files.example.org/crates/serde/1.0.0/download"
        );
        assert_eq!(
            download_url(
                "https://files.example.org/{prefix}/{lowerprefix}/{crate}/{crate}-{version}.crate?sum={sha256-checksum}",
                "AbCd",
                "0.1.0",
                "ff"
            ),
            "https://files.example.org/Ab/Cd/ab/cd/AbCd/AbCd-0.1.0.crate?sum=ff"
        );
        assert_eq!(prefix("a"), "1");
        assert_eq!(prefix("ab"), "2");
        assert_eq!(prefix("abc"), "3/a");
        assert_eq!(prefix("abcd"), "ab/cd");
    }
}

//! Lockfile readers: each turns one lockfile into the artifacts it pins ([`Item`]), with the
//! digest the lockfile records for each. Reading is pure; turning an item into a URL may need
//! an index (see `warm::resolve`).

pub mod cargo;
pub mod npm;
pub mod python;

use std::path::Path;

use super::gosum::{self, GoFile};
use super::integrity::Digest;

/// The lockfile formats `cuttle warm` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `package-lock.json` / `npm-shrinkwrap.json` (lockfileVersion 1, 2, 3).
    NpmLock,
    /// `yarn.lock`, yarn v1 ("classic") format.
    Yarn,
    /// `pnpm-lock.yaml` (lockfile versions 5 to 9).
    Pnpm,
    /// pip `requirements.txt` with `--hash` options.
    Requirements,
    Uv,
    Poetry,
    Cargo,
    GoSum,
}

impl Kind {
    pub const NAMES: &'static str = "npm, yarn, pnpm, requirements, uv, poetry, cargo, go";

    pub fn from_name(s: &str) -> Option<Kind> {
        Some(match s {
            "npm" => Kind::NpmLock,
            "yarn" => Kind::Yarn,
            "pnpm" => Kind::Pnpm,
            "requirements" | "pip" => Kind::Requirements,
            "uv" => Kind::Uv,
            "poetry" => Kind::Poetry,
            "cargo" => Kind::Cargo,
            "go" => Kind::GoSum,
            _ => return None,
        })
    }

    /// The kind a file's name says it is.
    pub fn detect(path: &Path) -> Option<Kind> {
        let name = path.file_name()?.to_str()?;
        Some(match name {
            "package-lock.json" | "npm-shrinkwrap.json" => Kind::NpmLock,
            "yarn.lock" => Kind::Yarn,
            "pnpm-lock.yaml" => Kind::Pnpm,
            "uv.lock" => Kind::Uv,
            "poetry.lock" => Kind::Poetry,
            "Cargo.lock" => Kind::Cargo,
            "go.sum" => Kind::GoSum,
            n if n.ends_with(".txt") || n.starts_with("requirements") => Kind::Requirements,
            _ => return None,
        })
    }
}

/// How a Python file is chosen among those the index lists for a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    /// Every file whose digest is one of these (requirements.txt `--hash`).
    Hashes(Vec<Digest>),
    /// These file names, each with its digest (poetry.lock `files`).
    Files(Vec<(String, Digest)>),
}

/// One thing a lockfile pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// An artifact whose URL the lockfile gives, with the digests it must match (none when
    /// the lockfile records none: fetched, reported unverified).
    Url {
        label: String,
        url: String,
        digests: Vec<Digest>,
    },
    /// An npm registry package named by version only (pnpm): the tarball URL is derived
    /// from the registry base.
    Npm {
        name: String,
        version: String,
        digests: Vec<Digest>,
    },
    /// A Python distribution found on a PEP 503/691 index.
    Python {
        index: Option<String>,
        name: String,
        version: String,
        select: Select,
    },
    /// A crate from a registry (`source` as Cargo.lock writes it).
    Crate {
        source: String,
        name: String,
        version: String,
        sha256: Digest,
    },
    /// A Go module zip or go.mod from a module proxy.
    Go(gosum::GoSumLine),
}

impl Item {
    /// How many artifacts this item should turn into (for the progress total).
    pub fn expected(&self) -> u64 {
        match self {
            Item::Python {
                select: Select::Hashes(h),
                ..
            } => h.len() as u64,
            Item::Python {
                select: Select::Files(f),
                ..
            } => f.len() as u64,
            _ => 1,
        }
    }

    /// A short name for messages.
    pub fn label(&self) -> String {
        match self {
            Item::Url { label, .. } => label.clone(),
            Item::Npm { name, version, .. } => format!("{name}@{version}"),
            Item::Python { name, version, .. } => format!("{name}=={version}"),
            Item::Crate { name, version, .. } => format!("{name} {version}"),
            Item::Go(l) => match l.file {
                GoFile::Zip => format!("{} {}", l.module, l.version),
                GoFile::Mod => format!("{} {}/go.mod", l.module, l.version),
            },
        }
    }
}

/// What one lockfile yields: the items, and remarks about entries left out (a pinned
/// requirement without `--hash`, a git dependency...).
#[derive(Debug, Default)]
pub struct Parsed {
    pub items: Vec<Item>,
    pub notes: Vec<String>,
    /// An index URL the lockfile itself names (requirements.txt `--index-url`).
    pub index_url: Option<String>,
}

/// Reads one lockfile of a known kind.
pub fn parse(kind: Kind, text: &str) -> Result<Parsed, String> {
    match kind {
        Kind::NpmLock => npm::package_lock(text),
        Kind::Yarn => npm::yarn(text),
        Kind::Pnpm => npm::pnpm(text),
        Kind::Requirements => python::requirements(text),
        Kind::Uv => python::uv(text),
        Kind::Poetry => python::poetry(text),
        Kind::Cargo => cargo::cargo_lock(text),
        Kind::GoSum => Ok(Parsed {
            items: gosum::parse(text)?.into_iter().map(Item::Go).collect(),
            ..Parsed::default()
        }),
    }
}

/// Whether a URL is one `cuttle warm` can fetch (lockfiles also hold `file:`, `git+ssh:`...).
pub fn is_http(url: &str) -> bool {
    let l = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_kinds_by_name() {
        let k = |n: &str| Kind::detect(Path::new(n));
        assert_eq!(k("a/package-lock.json"), Some(Kind::NpmLock));
        assert_eq!(k("yarn.lock"), Some(Kind::Yarn));
        assert_eq!(k("pnpm-lock.yaml"), Some(Kind::Pnpm));
        assert_eq!(k("requirements-dev.txt"), Some(Kind::Requirements));
        assert_eq!(k("requirements.lock"), Some(Kind::Requirements));
        assert_eq!(k("uv.lock"), Some(Kind::Uv));
        assert_eq!(k("poetry.lock"), Some(Kind::Poetry));
        assert_eq!(k("Cargo.lock"), Some(Kind::Cargo));
        assert_eq!(k("go.sum"), Some(Kind::GoSum));
        assert_eq!(k("Gemfile.lock"), None);
        for n in Kind::NAMES.split(", ") {
            assert!(Kind::from_name(n).is_some(), "{n}");
        }
    }

    #[test]
    fn http_urls_only() {
        assert!(is_http("https://registry.example.org/a"));
        assert!(is_http("HTTP://registry.example.org/a"));
        assert!(!is_http("git+ssh://git@example.org/a.git"));
        assert!(!is_http("file:../a"));
        assert!(!is_http("http"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, failure_persistence: None, ..Default::default() })]

        /// Lockfiles are outside input: whatever the text, an error or items, never a panic.
        #[test]
        fn no_lockfile_text_panics(
            text in proptest::prop_oneof![
                ".{0,400}",
                "([a-z@/_.\"{}\\[\\]:=#, -]{0,20}(\n  |\n|\\\n)){0,30}",
            ]
        ) {
            for k in Kind::NAMES.split(", ").filter_map(Kind::from_name) {
                let _ = parse(k, &text);
            }
        }
    }
}

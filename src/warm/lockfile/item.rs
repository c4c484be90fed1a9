//! What a lockfile pins: the items every reader produces, and what one lockfile yields.

use crate::warm::gosum::{self, GoFile};
use crate::warm::integrity::Digest;

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

/// Whether a URL is one `cuttle warm` can fetch (lockfiles also hold `file:`, `git+ssh:`...).
pub fn is_http(url: &str) -> bool {
    let l = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

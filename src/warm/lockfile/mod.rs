//! Lockfile readers: each turns one lockfile into the artifacts it pins ([`Item`]), with the
//! digest the lockfile records for each. Reading is pure; turning an item into a URL may need
//! an index (see `warm::resolve`).

pub mod cargo;
pub mod item;
pub mod npm;
pub mod python;

use std::path::Path;

use super::gosum;
pub use item::{Item, Parsed, Select, is_http};

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

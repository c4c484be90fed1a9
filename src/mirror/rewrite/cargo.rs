//! Cargo sparse registries: `config.json` at the index root names the download base (`dl`,
//! possibly a template with `{crate}`-style markers, kept as they are) and the web API
//! (`api`). The per-crate index files carry no URLs, so they pass through unchanged.

use std::sync::Arc;

use super::json::{JsonRewriter, Rule};
use super::{Rewrite, UrlMap};

const RULES: &[Rule] = &[
    Rule {
        path: &[],
        key: "dl",
    },
    Rule {
        path: &[],
        key: "api",
    },
];

/// A rewriter for a sparse index's `config.json`.
pub fn config_json(map: Arc<UrlMap>) -> Box<dyn Rewrite> {
    Box::new(JsonRewriter::new(map, None, RULES))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::rewrite::rewrite_all;
    use proptest::prelude::*;

    fn map() -> Arc<UrlMap> {
        Arc::new(
            UrlMap::new([
                ("https://index.example.org/", "http://cuttle:3128/cargo/"),
                ("https://files.example.org/", "http://cuttle:3128/cargo-dl/"),
            ])
            .unwrap(),
        )
    }

    #[test]
    fn dl_and_api_move_to_the_mirror() {
        let doc = br#"{
  "dl": "https://files.example.org/api/v1/crates/{crate}/{version}/download",
  "api": "https://index.example.org",
  "auth-required": false,
  "x": {"dl": "https://files.example.org/nested"}
}"#;
        let out = rewrite_all(&mut *config_json(map()), doc);
        let want = String::from_utf8_lossy(doc)
            .replace(
                "\"https://files.example.org/api",
                "\"http://cuttle:3128/cargo-dl/api",
            )
            .replace(
                "\"https://index.example.org\"",
                "\"http://cuttle:3128/cargo\"",
            );
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    proptest! {
        #[test]
        fn any_dl_path_is_kept_after_the_prefix(path in "[a-zA-Z0-9/{}._-]{0,40}") {
            let doc = format!(r#"{{"dl":"https://files.example.org/{path}"}}"#);
            let out = rewrite_all(&mut *config_json(map()), doc.as_bytes());
            prop_assert_eq!(
                String::from_utf8(out).unwrap(),
                format!(r#"{{"dl":"http://cuttle:3128/cargo-dl/{path}"}}"#)
            );
        }
    }
}

//! npm packuments, full (`application/json`) and abbreviated
//! (`application/vnd.npm.install-v1+json`): both carry each version's tarball URL at
//! `versions.<version>.dist.tarball`, the only URL npm fetches next. Scoped names may appear
//! as `@scope/name` or `@scope%2fname` in the path; either way everything after the mapped
//! prefix is kept byte for byte.

use std::sync::Arc;

use super::json::{JsonRewriter, Pat, Rule};
use super::{Rewrite, UrlMap};

const RULES: &[Rule] = &[Rule {
    path: &[Pat::Key("versions"), Pat::AnyKey, Pat::Key("dist")],
    key: "tarball",
}];

/// The media types of packuments (the registry API's `Accept` values).
pub const FULL: &str = "application/json";
pub const ABBREVIATED: &str = "application/vnd.npm.install-v1+json";

/// A rewriter for one packument body, full or abbreviated.
pub fn packument(map: Arc<UrlMap>) -> Box<dyn Rewrite> {
    Box::new(JsonRewriter::new(map, None, RULES))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UP: &str = "https://registry.example.org";
    const MIRROR: &str = "http://cuttle.example:3128/npm";

    fn map() -> Arc<UrlMap> {
        Arc::new(UrlMap::new([(format!("{UP}/"), format!("{MIRROR}/"))]).unwrap())
    }

    /// A packument the way the registry writes one, with URLs in places that must stay
    /// (repository, homepage, readme text) beside the tarballs.
    fn packument_doc(
        name: &str,
        path_name: &str,
        versions: &[String],
        abbreviated: bool,
    ) -> String {
        let base = name.rsplit('/').next().unwrap_or(name);
        let vs: Vec<String> = versions
            .iter()
            .map(|v| {
                let extra = if abbreviated {
                    String::new()
                } else {
                    format!(
                        r#","homepage":"{UP}/{path_name}","repository":{{"type":"git","url":"{UP}/{path_name}.git"}},"description":"see \"tarball\": {UP}/x""#
                    )
                };
                format!(
                    r#""{v}":{{"name":"{name}","version":"{v}"{extra},"dist":{{"shasum":"00","integrity":"sha512-AA==","tarball":"{UP}/{path_name}/-/{base}-{v}.tgz","fileCount":1}}}}"#
                )
            })
            .collect();
        format!(
            r##"{{"_id":"{name}","name":"{name}","dist-tags":{{"latest":"{}"}},"versions":{{{}}},"readme":"# tarball {UP}/{path_name}/-/{base}.tgz"}}"##,
            versions.last().map_or("", String::as_str),
            vs.join(",\n")
        )
    }

    fn rewrite_in_chunks(doc: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut r = packument(map());
        let mut out = Vec::new();
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (doc.len() + 1)).collect();
        cuts.sort_unstable();
        for c in cuts {
            r.push(&doc[at..c], &mut out);
            at = c;
        }
        r.push(&doc[at..], &mut out);
        r.finish(&mut out);
        out
    }

    fn name_strategy() -> impl Strategy<Value = (String, String)> {
        let part = "[a-z0-9][a-z0-9._~-]{0,20}";
        prop_oneof![
            part.prop_map(|n| (n.clone(), n)),
            (part, part, any::<bool>()).prop_map(|(s, n, enc)| {
                let name = format!("@{s}/{n}");
                let path = if enc {
                    format!("@{s}%2f{n}")
                } else {
                    name.clone()
                };
                (name, path)
            }),
        ]
    }

    proptest! {
        /// Any name (scoped or not, `%2f` or `/`), any versions, any chunking: exactly the
        /// tarball URLs change, and the output is the same however the body is cut.
        #[test]
        fn only_tarballs_change_whatever_the_chunks(
            (name, path) in name_strategy(),
            versions in proptest::collection::vec("[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(-[a-z0-9.]{1,8})?", 1..6),
            abbreviated in any::<bool>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let doc = packument_doc(&name, &path, &versions, abbreviated);
            let out = rewrite_in_chunks(doc.as_bytes(), &cuts);
            let base = name.rsplit('/').next().unwrap();
            let mut want = doc.clone();
            for v in &versions {
                let t = format!("\"tarball\":\"{UP}/{path}/-/{base}-{v}.tgz\"");
                let m = format!("\"tarball\":\"{MIRROR}/{path}/-/{base}-{v}.tgz\"");
                want = want.replace(&t, &m);
            }
            prop_assert_eq!(String::from_utf8(out.clone()).unwrap(), want);
            // Byte-identical apart from the rewritten URLs: mapping back gives the original.
            let back = String::from_utf8(out).unwrap().replace(&format!("\"{MIRROR}/"), &format!("\"{UP}/"));
            prop_assert_eq!(back, doc);
        }
    }

    #[test]
    fn a_large_packument_streams_with_bounded_buffering() {
        let versions: Vec<String> = (0..5000).map(|i| format!("1.{i}.0")).collect();
        let doc = packument_doc("@big/pkg", "@big%2fpkg", &versions, false);
        assert!(doc.len() > 1_000_000);
        // A mirror prefix as long as the upstream one: then input fed minus output given
        // is exactly what the rewriter holds back.
        let same_len = "http://cuttle.example:31/npm";
        assert_eq!(same_len.len(), UP.len());
        let m = Arc::new(UrlMap::new([(format!("{UP}/"), format!("{same_len}/"))]).unwrap());
        let mut r = packument(m);
        let mut out = Vec::new();
        let (mut fed, mut max_held) = (0usize, 0usize);
        for chunk in doc.as_bytes().chunks(8192) {
            r.push(chunk, &mut out);
            fed += chunk.len();
            max_held = max_held.max(fed - out.len());
        }
        r.finish(&mut out);
        assert_eq!(out.len(), doc.len());
        // Never more than the one string being read (a tarball URL here).
        assert!(max_held < 200, "held back {max_held} bytes");
        let out = String::from_utf8(out).unwrap();
        let rewritten = format!("\"tarball\":\"{same_len}/@big%2fpkg/-/pkg-");
        assert_eq!(out.matches(&rewritten).count(), 5000);
        assert_eq!(out.matches(&format!("\"{UP}/")).count(), 2 * 5000);
    }
}

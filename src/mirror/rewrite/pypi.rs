//! PyPI simple repository API pages, HTML (PEP 503) and JSON (PEP 691): each file's URL is
//! rewritten (keeping its `#sha256=` fragment); the other attributes and keys
//! (`data-requires-python`, `data-dist-info-metadata`/`data-core-metadata`, `hashes`,
//! `requires-python`, `core-metadata`, `yanked`) are left as they are, since pip asks for the
//! metadata file at the file's own URL plus `.metadata` (PEP 658), which the rewrite already
//! covers. Files usually live on another host than the index, so the map needs a pair for
//! each.

use std::sync::Arc;

use super::html::HtmlRewriter;
use super::json::{JsonRewriter, Pat, Rule};
use super::{Rewrite, UrlMap};

const JSON_RULES: &[Rule] = &[Rule {
    path: &[Pat::Key("files"), Pat::Item],
    key: "url",
}];

/// PEP 691 media types (and the HTML ones, PEP 691 §"Project detail").
pub const JSON: &str = "application/vnd.pypi.simple.v1+json";
pub const HTML: &str = "application/vnd.pypi.simple.v1+html";

/// The two serialisations of a simple page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Html,
    Json,
}

impl Format {
    /// The format of a response by its `Content-Type` (parameters ignored); None for
    /// anything else, which a route passes through unchanged.
    pub fn of_content_type(ct: &str) -> Option<Format> {
        let mt = ct
            .split(';')
            .next()
            .unwrap_or(ct)
            .trim()
            .to_ascii_lowercase();
        match mt.as_str() {
            JSON => Some(Format::Json),
            HTML | "text/html" => Some(Format::Html),
            _ => None,
        }
    }
}

/// A rewriter for one simple page. `page_url` is the page's upstream URL: relative links
/// (allowed by PEP 503, used by some indexes) are resolved against it and then mapped.
pub fn simple_page(map: Arc<UrlMap>, format: Format, page_url: Option<&str>) -> Box<dyn Rewrite> {
    let base = page_url.and_then(|u| url::Url::parse(u).ok());
    match format {
        Format::Html => Box::new(HtmlRewriter::new(map, base)),
        Format::Json => Box::new(JsonRewriter::new(map, base, JSON_RULES)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const INDEX: &str = "https://registry.example.org";
    const FILES: &str = "https://files.example.org";
    const M_INDEX: &str = "http://cuttle.example:3128/pypi";
    const M_FILES: &str = "http://cuttle.example:3128/pypi-files";

    fn map() -> Arc<UrlMap> {
        Arc::new(
            UrlMap::new([
                (format!("{INDEX}/"), format!("{M_INDEX}/")),
                (format!("{FILES}/"), format!("{M_FILES}/")),
            ])
            .unwrap(),
        )
    }

    fn run(format: Format, doc: &str, cuts: &[usize]) -> String {
        let mut r = simple_page(map(), format, Some(&format!("{INDEX}/simple/x/")));
        let mut out = Vec::new();
        let bytes = doc.as_bytes();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut at = 0;
        for c in cuts {
            r.push(&bytes[at..c], &mut out);
            at = c;
        }
        r.push(&bytes[at..], &mut out);
        r.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn html_page(name: &str, files: &[(String, String)]) -> String {
        let links: Vec<String> = files
            .iter()
            .map(|(f, h)| {
                format!(
                    "    <a href=\"{FILES}/packages/ab/cd/{f}#sha256={h}\" data-requires-python=\"&gt;=3.8\" \
                     data-dist-info-metadata=\"sha256={h}\" data-core-metadata=\"sha256={h}\">{f}</a><br />\n"
                )
            })
            .collect();
        format!(
            "<!DOCTYPE html>\n<html>\n  <head>\n    <meta name=\"pypi:repository-version\" content=\"1.1\">\n    \
             <title>Links for {name}</title>\n  </head>\n  <body>\n    <h1>Links for {name}</h1>\n{}  </body>\n</html>\n",
            links.concat()
        )
    }

    fn json_page(name: &str, files: &[(String, String)]) -> String {
        let fs: Vec<String> = files
            .iter()
            .map(|(f, h)| {
                format!(
                    r#"{{"filename":"{f}","url":"{FILES}/packages/ab/cd/{f}","hashes":{{"sha256":"{h}"}},"requires-python":">=3.8","core-metadata":{{"sha256":"{h}"}},"data-dist-info-metadata":{{"sha256":"{h}"}},"yanked":false}}"#
                )
            })
            .collect();
        format!(
            r#"{{"meta":{{"api-version":"1.1","_last-serial":1}},"name":"{name}","files":[{}],"versions":["1.0"]}}"#,
            fs.join(",")
        )
    }

    fn files_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
        proptest::collection::vec(
            (
                "[A-Za-z0-9][A-Za-z0-9._-]{0,15}-[0-9.]{1,6}(-py3-none-any\\.whl|\\.tar\\.gz)",
                "[0-9a-f]{64}",
            ),
            0..6,
        )
    }

    proptest! {
        #[test]
        fn html_only_file_urls_change(
            name in "[A-Za-z0-9][A-Za-z0-9._-]{0,20}",
            files in files_strategy(),
            cuts in proptest::collection::vec(any::<usize>(), 0..10),
        ) {
            let doc = html_page(&name, &files);
            let out = run(Format::Html, &doc, &cuts);
            prop_assert_eq!(&out, &doc.replace(&format!("href=\"{FILES}/"), &format!("href=\"{M_FILES}/")));
            prop_assert_eq!(out.replace(M_FILES, FILES), doc);
        }

        #[test]
        fn json_only_file_urls_change(
            name in "[A-Za-z0-9][A-Za-z0-9._-]{0,20}",
            files in files_strategy(),
            cuts in proptest::collection::vec(any::<usize>(), 0..10),
        ) {
            let doc = json_page(&name, &files);
            let out = run(Format::Json, &doc, &cuts);
            prop_assert_eq!(&out, &doc.replace(&format!("\"url\":\"{FILES}/"), &format!("\"url\":\"{M_FILES}/")));
            prop_assert_eq!(out.replace(M_FILES, FILES), doc);
        }
    }

    #[test]
    fn index_links_and_relative_links() {
        let root = "<a href=\"/simple/foo/\">foo</a>\n<a href=\"https://registry.example.org/simple/bar/\">bar</a>";
        assert_eq!(
            run(Format::Html, root, &[]),
            format!(
                "<a href=\"{M_INDEX}/simple/foo/\">foo</a>\n<a href=\"{M_INDEX}/simple/bar/\">bar</a>"
            )
        );
        let json = r#"{"files":[{"filename":"a.whl","url":"../../packages/a.whl"}]}"#;
        assert_eq!(
            run(Format::Json, json, &[]),
            format!(r#"{{"files":[{{"filename":"a.whl","url":"{M_INDEX}/packages/a.whl"}}]}}"#)
        );
    }

    #[test]
    fn formats_by_content_type() {
        assert_eq!(
            Format::of_content_type("application/vnd.pypi.simple.v1+json"),
            Some(Format::Json)
        );
        assert_eq!(
            Format::of_content_type("text/html; charset=utf-8"),
            Some(Format::Html)
        );
        assert_eq!(
            Format::of_content_type("Application/Vnd.Pypi.Simple.V1+Html"),
            Some(Format::Html)
        );
        assert_eq!(Format::of_content_type("application/octet-stream"), None);
    }
}

//! URL rewriting for mirror routes: a [`UrlMap`] of (upstream prefix, public prefix) pairs,
//! and streaming rewriters for registry metadata (npm packuments, PyPI simple pages in HTML
//! and JSON, cargo's sparse `config.json`) that replace every URL a client will fetch next by
//! its mirror URL, leaving every other byte as it was. Rewriters work over body chunks with
//! buffering bounded by one token (a JSON string or an HTML attribute value), never the whole
//! document; [`RewriteBody`] applies one to an `http_body::Body`.
//!
//! The mapping is a list because one ecosystem can span several hosts: a PyPI index page on
//! `registry.example.org` links files on `files.example.org`, so a mirror needs a second
//! prefix for the files (e.g. `/pypi/` and `/pypi-files/`), and the page is rewritten with
//! both pairs.

pub mod cargo;
mod html;
mod json;
pub mod npm;
pub mod pypi;

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame};

/// Longest JSON string or HTML attribute value held while deciding whether it is a URL to
/// rewrite; longer ones pass through untouched (no registry URL comes near this).
pub const MAX_TOKEN: usize = 64 * 1024;

/// One (upstream prefix, public prefix) pair, both stored without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pair {
    upstream: String,
    /// Length of `scheme://authority` in `upstream` (compared without regard to case).
    upstream_origin: usize,
    public: String,
    public_origin: usize,
}

/// Where mirrored upstream URLs live on the mirror.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlMap {
    /// Longest upstream prefix first, so the most specific pair wins.
    pairs: Vec<Pair>,
}

/// Length of `scheme://authority` of an absolute http(s) URL, or None for anything else.
fn origin_len(url: &str) -> Option<usize> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest_at = if lower.starts_with("http://") {
        7
    } else if lower.starts_with("https://") {
        8
    } else {
        return None;
    };
    let end = url
        .get(rest_at..)?
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| rest_at + i);
    (end > rest_at).then_some(end)
}

/// RFC 3986 §2 unreserved and reserved characters, and `%` for percent-encoding.
fn is_url_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&()*+,;=%".contains(c)
}

/// Whether `url` starts with `prefix` (scheme and authority compared ignoring ASCII case, the
/// path exactly) and the match ends at a path boundary, so `https://h/a` covers `https://h/a`,
/// `https://h/a/x` and `https://h/a?q`, but not `https://h/ab` or `https://h.evil/`.
fn covers(url: &str, prefix: &str, origin: usize) -> bool {
    let (u, p) = (url.as_bytes(), prefix.as_bytes());
    u.len() >= p.len()
        && u[..origin].eq_ignore_ascii_case(&p[..origin])
        && u[origin..p.len()] == p[origin..]
        && matches!(u.get(p.len()), None | Some(b'/' | b'?' | b'#'))
}

impl UrlMap {
    /// Builds a map from (upstream prefix, public prefix) pairs, each an absolute http(s) URL
    /// without query or fragment, e.g. (`https://registry.example.org/`,
    /// `http://cuttle:3128/npm/`).
    pub fn new<I, A, B>(pairs: I) -> Result<UrlMap, String>
    where
        I: IntoIterator<Item = (A, B)>,
        A: AsRef<str>,
        B: AsRef<str>,
    {
        let mut out = Vec::new();
        for (up, public) in pairs {
            let (up, public) = (up.as_ref(), public.as_ref());
            let check = |u: &str| -> Result<(String, usize), String> {
                let o =
                    origin_len(u).ok_or_else(|| format!("`{u}` is not an absolute http(s) URL"))?;
                if u.contains(['?', '#']) {
                    return Err(format!("`{u}`: a mirror prefix has no query or fragment"));
                }
                // Prefixes are written into HTML attributes and JSON strings unescaped.
                if let Some(c) = u.chars().find(|c| !is_url_char(*c)) {
                    return Err(format!("`{u}`: {c:?} has no place in a mirror prefix"));
                }
                Ok((u.trim_end_matches('/').to_string(), o))
            };
            let (upstream, upstream_origin) = check(up)?;
            let (public, public_origin) = check(public)?;
            out.push(Pair {
                upstream,
                upstream_origin,
                public,
                public_origin,
            });
        }
        out.sort_by_key(|p| std::cmp::Reverse(p.upstream.len()));
        Ok(UrlMap { pairs: out })
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The mirror URL of an upstream URL, or None when no pair covers it. Everything after
    /// the prefix (path, query, fragment such as `#sha256=...`) is kept byte for byte.
    pub fn map(&self, url: &str) -> Option<String> {
        let p = self
            .pairs
            .iter()
            .find(|p| covers(url, &p.upstream, p.upstream_origin))?;
        Some(format!("{}{}", p.public, url.get(p.upstream.len()..)?))
    }

    /// The upstream URL of a mirror URL (what a route fetches for a client's request).
    pub fn unmap(&self, url: &str) -> Option<String> {
        let p = self
            .pairs
            .iter()
            .filter(|p| covers(url, &p.public, p.public_origin))
            .max_by_key(|p| p.public.len())?;
        Some(format!("{}{}", p.upstream, url.get(p.public.len()..)?))
    }

    /// Whether a URL already points at the mirror.
    pub fn is_public(&self, url: &str) -> bool {
        self.pairs
            .iter()
            .any(|p| covers(url, &p.public, p.public_origin))
    }

    /// Maps a URL as written in a document: absolute ones directly; relative ones (PEP 503
    /// allows them) only when the document's own upstream URL is known, by resolving them
    /// against it (RFC 3986 §5.2) and mapping the result.
    fn map_reference(&self, reference: &str, base: Option<&url::Url>) -> Option<String> {
        if origin_len(reference).is_some() {
            return self.map(reference);
        }
        // Any other scheme (`data:`, `mailto:`) is not ours to touch.
        if reference
            .split(['/', '?', '#'])
            .next()
            .is_some_and(|s| s.contains(':'))
        {
            return None;
        }
        let abs = base?.join(reference).ok()?;
        self.map(abs.as_str())
    }
}

/// A streaming rewrite of one document: bytes in, bytes out, in order.
pub trait Rewrite: Send {
    /// Consumes one chunk, appending whatever output is settled to `out`.
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>);
    /// Ends the document, appending whatever is still held.
    fn finish(&mut self, out: &mut Vec<u8>);
}

/// Runs a rewriter over a whole document (tests, and small documents such as `config.json`).
pub fn rewrite_all(r: &mut dyn Rewrite, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    r.push(input, &mut out);
    r.finish(&mut out);
    out
}

pin_project_lite::pin_project! {
    /// A body whose data frames go through a [`Rewrite`]. The length changes, so the route
    /// must drop `Content-Length` (and must only rewrite identity-encoded bodies).
    pub struct RewriteBody<B> {
        #[pin]
        inner: B,
        rewrite: Box<dyn Rewrite>,
        done: bool,
        trailers: Option<Frame<Bytes>>,
    }
}

impl<B> RewriteBody<B> {
    pub fn new(inner: B, rewrite: Box<dyn Rewrite>) -> Self {
        RewriteBody {
            inner,
            rewrite,
            done: false,
            trailers: None,
        }
    }
}

impl<B> Body for RewriteBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(this.trailers.take().map(Ok));
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let mut out = Vec::new();
                        this.rewrite.push(&data, &mut out);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    // Trailers end the body: flush what is held first, then send them.
                    Err(frame) => {
                        let mut out = Vec::new();
                        this.rewrite.finish(&mut out);
                        *this.done = true;
                        *this.trailers = Some(frame);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    let mut out = Vec::new();
                    this.rewrite.finish(&mut out);
                    *this.done = true;
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn map() -> UrlMap {
        UrlMap::new([
            ("https://registry.example.org/", "http://cuttle:3128/pypi/"),
            ("https://files.example.org", "http://cuttle:3128/pypi-files"),
            (
                "https://registry.example.org/special/",
                "http://cuttle:3128/special/",
            ),
        ])
        .unwrap()
    }

    #[test]
    fn maps_by_longest_prefix_at_boundaries() {
        let m = map();
        assert_eq!(
            m.map("https://registry.example.org/simple/a/").as_deref(),
            Some("http://cuttle:3128/pypi/simple/a/")
        );
        assert_eq!(
            m.map("HTTPS://Files.Example.Org/p/a.whl#sha256=ab")
                .as_deref(),
            Some("http://cuttle:3128/pypi-files/p/a.whl#sha256=ab")
        );
        assert_eq!(
            m.map("https://registry.example.org/special/x").as_deref(),
            Some("http://cuttle:3128/special/x")
        );
        assert_eq!(
            m.map("https://registry.example.org").as_deref(),
            Some("http://cuttle:3128/pypi")
        );
        assert_eq!(m.map("https://registry.example.org.evil/x"), None);
        assert_eq!(m.map("https://registry.example.orgx/x"), None);
        assert_eq!(m.map("http://registry.example.org/x"), None);
        assert_eq!(m.map("/relative"), None);
        assert_eq!(
            m.unmap("http://cuttle:3128/pypi-files/p/a.whl").as_deref(),
            Some("https://files.example.org/p/a.whl")
        );
        assert!(m.is_public("http://cuttle:3128/pypi/x"));
        assert!(!m.is_public("http://cuttle:3128/pypix"));
    }

    #[test]
    fn special_path_bytes_survive() {
        let m = map();
        let u = "https://registry.example.org/@s%2fa/-/a-1.0.0.tgz?x=%2F#f";
        assert_eq!(
            m.map(u).unwrap(),
            "http://cuttle:3128/pypi/@s%2fa/-/a-1.0.0.tgz?x=%2F#f"
        );
        assert_eq!(m.unmap(&m.map(u).unwrap()).unwrap(), u);
    }

    #[test]
    fn rejects_bad_prefixes() {
        assert!(UrlMap::new([("registry.example.org", "http://c/")]).is_err());
        assert!(UrlMap::new([("https://registry.example.org/?q", "http://c/")]).is_err());
        assert!(UrlMap::new([("https://", "http://c/")]).is_err());
        assert!(UrlMap::new([("https://r.example.org/", "ftp://c/")]).is_err());
        assert!(UrlMap::new([("https://r.example.org/", "http://c\"><script>/")]).is_err());
        assert!(UrlMap::new([("https://r.example.org/", "http://c'/")]).is_err());
    }

    #[test]
    fn relative_references() {
        let m = map();
        let base = url::Url::parse("https://registry.example.org/simple/a/").ok();
        assert_eq!(
            m.map_reference("../../packages/a.whl#sha256=00", base.as_ref())
                .as_deref(),
            Some("http://cuttle:3128/pypi/packages/a.whl#sha256=00")
        );
        assert_eq!(m.map_reference("a.whl", None), None);
        assert_eq!(m.map_reference("mailto:x@example.org", base.as_ref()), None);
    }

    fn cut_run(r: &mut dyn Rewrite, input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut at = 0;
        for c in cuts {
            r.push(&input[at..c], &mut out);
            at = c;
        }
        r.push(&input[at..], &mut out);
        r.finish(&mut out);
        out
    }

    fn all_rewriters(map: &Arc<UrlMap>) -> Vec<Box<dyn Rewrite>> {
        vec![
            npm::packument(map.clone()),
            cargo::config_json(map.clone()),
            pypi::simple_page(
                map.clone(),
                pypi::Format::Json,
                Some("https://r.example.org/s/"),
            ),
            pypi::simple_page(
                map.clone(),
                pypi::Format::Html,
                Some("https://r.example.org/s/"),
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..Default::default() })]

        /// Whatever the bytes and however they are cut: no panic, and with nothing to map the
        /// output is the input.
        #[test]
        fn unmapped_documents_pass_through_byte_for_byte(
            input in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..1500),
                "[{}\\[\\]\":,\\\\a-z0-9<>!='/ #?.-]{0,600}".prop_map(String::into_bytes),
            ],
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let map = Arc::new(UrlMap::new([("https://never.example.org/", "http://m/")]).unwrap());
            for mut r in all_rewriters(&map) {
                prop_assert_eq!(&cut_run(&mut *r, &input, &cuts), &input);
            }
        }

        /// With URLs that do map, the output does not depend on where the chunks are cut.
        #[test]
        fn output_is_independent_of_chunking(
            body in "[{}\\[\\]\":,a-z<>='/ -]{0,200}",
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let map = Arc::new(UrlMap::new([("https://r.example.org/", "http://m/")]).unwrap());
            let doc = format!(
                r#"{{"versions":{{"1":{{"dist":{{"tarball":"https://r.example.org/a"}}}}}},"files":[{{"url":"https://r.example.org/b"}}],"dl":"https://r.example.org/c",<a href="https://r.example.org/d">{body}"#
            );
            for (mut whole, mut cut) in all_rewriters(&map).into_iter().zip(all_rewriters(&map)) {
                let one = rewrite_all(&mut *whole, doc.as_bytes());
                prop_assert_eq!(cut_run(&mut *cut, doc.as_bytes(), &cuts), one);
            }
        }
    }

    #[tokio::test]
    async fn rewrite_body_streams_frames_and_keeps_trailers() {
        use http_body_util::{BodyExt, StreamBody};
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-t", http::HeaderValue::from_static("1"));
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"{\"dl\":\"https://r.exa"))),
            Ok(Frame::data(Bytes::from_static(
                b"mple.org/x\",\"api\":\"https://r.example.org",
            ))),
            Ok(Frame::data(Bytes::from_static(b"\"}"))),
            Ok(Frame::trailers(trailers)),
        ];
        let map = Arc::new(UrlMap::new([("https://r.example.org/", "http://m/")]).unwrap());
        let body = RewriteBody::new(
            StreamBody::new(futures_util::stream::iter(frames)),
            cargo::config_json(map),
        );
        let got = body.collect().await.unwrap();
        assert_eq!(
            got.trailers()
                .and_then(|t| t.get("x-t"))
                .map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert_eq!(
            &got.to_bytes()[..],
            br#"{"dl":"http://m/x","api":"http://m"}"#
        );
    }
}

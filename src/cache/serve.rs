//! Answering from a stored or in-progress entry: client conditionals (RFC 9110 §13: a 304
//! from the cache), `Range` and `If-Range` (RFC 9110 §14: 206 with one range or
//! `multipart/byteranges`, 416 when unsatisfiable), HEAD from a stored GET, and the
//! `Cache-Status` field (RFC 9211).

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;

use crate::http::body::{Body, boxed, empty, full};

/// Most range-specs honoured in one request; more is treated as a plain GET (RFC 9110 §14.2:
/// "A server that supports range requests MAY ignore or reject a Range header field that
/// contains ... a set of many small ranges").
const MAX_RANGES: usize = 16;

#[derive(Debug, PartialEq, Eq)]
pub enum Ranges {
    /// No (usable) Range: send the whole representation.
    Full,
    /// Half-open byte ranges `[start, end)`, each non-empty, ascending and disjoint.
    Parts(Vec<(u64, u64)>),
    Unsatisfiable,
}

/// Parses `Range: bytes=...` against a representation of `len` bytes. Overlapping and
/// adjacent ranges are coalesced (RFC 9110 §14.2: "... excluding those ranges that were ...
/// coalesced into other ranges"), so the answer is never larger than the representation plus
/// the part headers of at most [`MAX_RANGES`] parts.
pub fn parse_range(h: &HeaderMap, len: u64) -> Ranges {
    let Some(v) = h.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ranges::Full;
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ranges::Full;
    };
    if spec.split(',').filter(|r| !r.trim().is_empty()).count() > MAX_RANGES {
        return Ranges::Full;
    }
    // RFC 9110 §14.1.1: "If the selected representation has zero length, the only
    // satisfiable form of range-spec is a suffix-range with a non-zero suffix-length" -- and
    // no Content-Range can describe a part of nothing: send the (empty) whole.
    let has_suffix = spec.split(',').any(|r| {
        r.trim()
            .strip_prefix('-')
            .is_some_and(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
    });
    if len == 0 && has_suffix {
        return Ranges::Full;
    }
    let mut parts = Vec::new();
    for r in spec.split(',') {
        let r = r.trim();
        if r.is_empty() {
            continue;
        }
        let Some((a, b)) = r.split_once('-') else {
            return Ranges::Full;
        };
        let (a, b) = (a.trim(), b.trim());
        let range = if a.is_empty() {
            // suffix: the last b bytes
            let Ok(n) = b.parse::<u64>() else {
                return Ranges::Full;
            };
            if n == 0 || len == 0 {
                continue;
            }
            (len.saturating_sub(n), len)
        } else {
            let Ok(start) = a.parse::<u64>() else {
                return Ranges::Full;
            };
            let end = if b.is_empty() {
                len
            } else {
                let Ok(last) = b.parse::<u64>() else {
                    return Ranges::Full;
                };
                if last < start {
                    return Ranges::Full;
                }
                last.saturating_add(1).min(len)
            };
            if start >= len {
                continue;
            }
            (start, end)
        };
        parts.push(range);
    }
    if parts.is_empty() {
        return Ranges::Unsatisfiable;
    }
    Ranges::Parts(coalesce(parts))
}

/// Sorts ranges and merges those that overlap or touch.
fn coalesce(mut parts: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    parts.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(parts.len());
    for (s, e) in parts {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

fn etags(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// RFC 9110 §13.1.5: `If-Range` holds a strong validator equal to the stored one.
pub fn if_range_holds(req: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(v) = req.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let v = v.trim();
    if v.starts_with('"') {
        return stored
            .get(header::ETAG)
            .and_then(|e| e.to_str().ok())
            .is_some_and(|e| !e.starts_with("W/") && e.trim() == v);
    }
    if v.starts_with("W/") {
        return false;
    }
    let lm = stored
        .get(header::LAST_MODIFIED)
        .and_then(|e| e.to_str().ok());
    match (
        httpdate::parse_http_date(v),
        lm.map(httpdate::parse_http_date),
    ) {
        (Ok(a), Some(Ok(b))) => a == b,
        _ => false,
    }
}

/// RFC 9110 §13.1.2/§13.1.3: whether a GET/HEAD with these conditionals gets 304 from the
/// stored response (If-None-Match with weak comparison; If-Modified-Since only without it).
pub fn is_not_modified(req: &HeaderMap, stored: &HeaderMap) -> bool {
    let etag = stored
        .get(header::ETAG)
        .and_then(|e| e.to_str().ok())
        .map(|e| e.trim());
    if let Some(inm) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let Some(etag) = etag else { return false };
        let weak = |t: &str| t.trim_start_matches("W/").to_string();
        return etags(inm).any(|t| t == "*" || weak(t) == weak(etag));
    }
    if let Some(ims) = req
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
    {
        let lm = stored
            .get(header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok());
        if let (Ok(since), Some(Ok(modified))) = (
            httpdate::parse_http_date(ims),
            lm.map(httpdate::parse_http_date),
        ) {
            return modified <= since;
        }
    }
    false
}

/// Fields a 304 carries (RFC 9110 §15.4.5).
fn not_modified_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [
        header::CACHE_CONTROL,
        header::CONTENT_LOCATION,
        header::DATE,
        header::ETAG,
        header::EXPIRES,
        header::VARY,
        header::LAST_MODIFIED,
        header::AGE,
    ] {
        for v in h.get_all(&name) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

/// Where the body of an answer comes from.
pub trait Source {
    /// The full length, when known.
    fn total_len(&self) -> Option<u64>;
    /// Bytes `[start, end)`.
    fn range(&self, start: u64, end: u64) -> Body;
    /// The whole body.
    fn all(&self) -> Body;
}

/// A response from `head` (status and fields, Age and Date already set) and `source`, honouring
/// the client's conditionals and ranges. Returns the response and a short label of what was
/// done (`304`, `206`, `full`) for the log.
pub fn answer(
    method: &Method,
    req: &HeaderMap,
    status: StatusCode,
    mut headers: HeaderMap,
    source: &dyn Source,
) -> Response<Body> {
    let ok = status == StatusCode::OK;
    if ok && is_not_modified(req, &headers) {
        return build(
            StatusCode::NOT_MODIFIED,
            not_modified_headers(&headers),
            empty(),
        );
    }
    if ok
        && *method == Method::GET
        && req.contains_key(header::RANGE)
        && if_range_holds(req, &headers)
    {
        if let Some(len) = source.total_len() {
            match parse_range(req, len) {
                Ranges::Full => {}
                Ranges::Unsatisfiable => {
                    let mut h = HeaderMap::new();
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                        h.insert(header::CONTENT_RANGE, v);
                    }
                    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                    return build(StatusCode::RANGE_NOT_SATISFIABLE, h, empty());
                }
                Ranges::Parts(parts) if parts.len() == 1 => {
                    let (s, e) = parts[0];
                    set(
                        &mut headers,
                        header::CONTENT_RANGE,
                        &format!("bytes {s}-{}/{len}", e - 1),
                    );
                    set(&mut headers, header::CONTENT_LENGTH, &(e - s).to_string());
                    return build(StatusCode::PARTIAL_CONTENT, headers, source.range(s, e));
                }
                Ranges::Parts(parts) => return multipart(headers, source, &parts, len),
            }
        }
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(len) = source.total_len()
        && !headers.contains_key(header::CONTENT_LENGTH)
        && !status_without_body(status)
    {
        set(&mut headers, header::CONTENT_LENGTH, &len.to_string());
    }
    let body = if *method == Method::HEAD {
        empty()
    } else {
        source.all()
    };
    build(status, headers, body)
}

fn status_without_body(s: StatusCode) -> bool {
    s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED || s.is_informational()
}

fn multipart(
    mut headers: HeaderMap,
    source: &dyn Source,
    parts: &[(u64, u64)],
    len: u64,
) -> Response<Body> {
    let boundary = format!("cuttle-{:016x}", rand_u64());
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    let mut pieces: Vec<Body> = Vec::new();
    let mut total = 0u64;
    for (s, e) in parts {
        let head = format!(
            "\r\n--{boundary}\r\nContent-Type: {ctype}\r\nContent-Range: bytes {s}-{}/{len}\r\n\r\n",
            e - 1
        );
        total += head.len() as u64 + (e - s);
        pieces.push(full(Bytes::from(head)));
        pieces.push(source.range(*s, *e));
    }
    let tail = format!("\r\n--{boundary}--\r\n");
    total += tail.len() as u64;
    pieces.push(full(Bytes::from(tail)));
    let stream = futures_util::stream::iter(pieces)
        .flat_map(|b| b.into_data_stream())
        .map(|r| r.map(http_body::Frame::data));
    headers.remove(header::CONTENT_TYPE);
    // Each part has its own Content-Range; one in the head (stored with the response) would
    // describe a range the body is not.
    headers.remove(header::CONTENT_RANGE);
    set(
        &mut headers,
        header::CONTENT_TYPE,
        &format!("multipart/byteranges; boundary={boundary}"),
    );
    set(&mut headers, header::CONTENT_LENGTH, &total.to_string());
    build(
        StatusCode::PARTIAL_CONTENT,
        headers,
        boxed(http_body_util::StreamBody::new(stream)),
    )
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish()
}

fn set(h: &mut HeaderMap, name: header::HeaderName, v: &str) {
    if let Ok(v) = HeaderValue::from_str(v) {
        h.insert(name, v);
    }
}

fn build(status: StatusCode, headers: HeaderMap, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// Appends this cache's entry to `Cache-Status` (RFC 9211 §2: caches append in order).
pub fn add_cache_status(h: &mut HeaderMap, entry: &str) {
    let joined = h
        .get_all("cache-status")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .chain(std::iter::once(entry))
        .collect::<Vec<_>>()
        .join(", ");
    if let Ok(v) = HeaderValue::from_str(&joined) {
        h.insert("cache-status", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn ranges() {
        let r = |s: &str| parse_range(&h(&[("range", s)]), 100);
        assert_eq!(r("bytes=0-9"), Ranges::Parts(vec![(0, 10)]));
        assert_eq!(r("bytes=90-"), Ranges::Parts(vec![(90, 100)]));
        assert_eq!(r("bytes=-5"), Ranges::Parts(vec![(95, 100)]));
        assert_eq!(r("bytes=95-200"), Ranges::Parts(vec![(95, 100)]));
        assert_eq!(r("bytes=0-0,50-59"), Ranges::Parts(vec![(0, 1), (50, 60)]));
        assert_eq!(r("bytes=200-300"), Ranges::Unsatisfiable);
        assert_eq!(r("bytes=9-1"), Ranges::Full);
        assert_eq!(r("items=0-1"), Ranges::Full);
        assert_eq!(r("bytes=x-1"), Ranges::Full);
        assert_eq!(parse_range(&HeaderMap::new(), 100), Ranges::Full);
    }

    #[test]
    fn overlapping_ranges_are_coalesced() {
        let r = |s: &str| parse_range(&h(&[("range", s)]), 100);
        let sixteen = format!("bytes={}", vec!["0-"; 16].join(","));
        assert_eq!(r(&sixteen), Ranges::Parts(vec![(0, 100)]));
        assert_eq!(
            r("bytes=50-59,0-9,5-14,15-19,-10"),
            Ranges::Parts(vec![(0, 20), (50, 60), (90, 100)])
        );
        let seventeen = format!("bytes={}", vec!["0-0"; 17].join(","));
        assert_eq!(r(&seventeen), Ranges::Full);
    }

    struct Mem(Bytes);

    impl Source for Mem {
        fn total_len(&self) -> Option<u64> {
            Some(self.0.len() as u64)
        }
        fn range(&self, start: u64, end: u64) -> Body {
            full(self.0.slice(start as usize..end as usize))
        }
        fn all(&self) -> Body {
            full(self.0.clone())
        }
    }

    /// Found by fuzz/ (range): a `Content-Range` stored with the response stayed in the head
    /// of a multipart answer, where it describes a range the body is not (RFC 9110
    /// §14.6: each part carries its own). A single-part answer replaces it already.
    #[test]
    fn a_stored_content_range_never_heads_a_multipart_answer() {
        let stored = h(&[("content-range", "bytes 0-9/1000"), ("etag", "\"a\"")]);
        let body = Bytes::from(vec![b'x'; 1000]);
        let resp = answer(
            &Method::GET,
            &h(&[("range", "bytes=0-9, 20-29")]),
            StatusCode::OK,
            stored,
            &Mem(body),
        );
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
        assert!(
            resp.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("multipart/byteranges")
        );
        assert_eq!(resp.headers().get(header::CONTENT_RANGE), None);
    }

    #[test]
    fn ranges_of_an_empty_representation() {
        let r = |s: &str| parse_range(&h(&[("range", s)]), 0);
        assert_eq!(r("bytes=-5"), Ranges::Full);
        assert_eq!(r("bytes=0-"), Ranges::Unsatisfiable);
        assert_eq!(r("bytes=-0"), Ranges::Unsatisfiable);
    }

    /// Every part `answer` writes is a valid `first-last` (no `e - 1` underflow).
    #[test]
    fn parts_are_never_empty() {
        for len in [0u64, 1, 2, 100] {
            for spec in ["-1", "-5", "0-", "0-0", "1-", "-0", "0-,0-", "-1,-1,0-0"] {
                if let Ranges::Parts(p) =
                    parse_range(&h(&[("range", &format!("bytes={spec}"))]), len)
                {
                    assert!(
                        p.iter().all(|(s, e)| s < e && *e <= len),
                        "{spec} on {len}: {p:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn conditionals() {
        let stored = h(&[
            ("etag", "\"abc\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(is_not_modified(
            &h(&[("if-none-match", "W/\"abc\", \"x\"")]),
            &stored
        ));
        assert!(!is_not_modified(
            &h(&[("if-none-match", "\"zzz\"")]),
            &stored
        ));
        assert!(is_not_modified(
            &h(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]),
            &stored
        ));
        assert!(!is_not_modified(
            &h(&[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")]),
            &stored
        ));
        // If-None-Match wins over If-Modified-Since.
        assert!(!is_not_modified(
            &h(&[
                ("if-none-match", "\"zzz\""),
                ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")
            ]),
            &stored
        ));
        assert!(if_range_holds(&h(&[("if-range", "\"abc\"")]), &stored));
        assert!(!if_range_holds(&h(&[("if-range", "\"old\"")]), &stored));
        assert!(!if_range_holds(&h(&[("if-range", "W/\"abc\"")]), &stored));
        assert!(if_range_holds(
            &h(&[("if-range", "Sun, 06 Nov 1994 08:49:37 GMT")]),
            &stored
        ));
    }

    #[test]
    fn cache_status_appends() {
        let mut m = h(&[("cache-status", "upstream; hit")]);
        add_cache_status(&mut m, "cuttle; fwd=miss; stored");
        assert_eq!(m["cache-status"], "upstream; hit, cuttle; fwd=miss; stored");
    }

    proptest::proptest! {
        /// Whatever the header, no part is empty or out of bounds and the parts never add up
        /// to more than the representation (RFC 9110 §14.2 amplification).
        #[test]
        fn any_range_header_is_bounded(spec in "[-0-9, ]{0,60}", len in 0u64..500) {
            let Ok(v) = HeaderValue::from_str(&format!("bytes={spec}")) else {
                return Ok(());
            };
            let mut m = HeaderMap::new();
            m.insert(header::RANGE, v);
            if let Ranges::Parts(p) = parse_range(&m, len) {
                proptest::prop_assert!(p.len() <= MAX_RANGES);
                proptest::prop_assert!(p.iter().all(|(s, e)| s < e && *e <= len));
                proptest::prop_assert!(p.windows(2).all(|w| w[0].1 < w[1].0));
                proptest::prop_assert!(p.iter().map(|(s, e)| e - s).sum::<u64>() <= len);
            }
        }
    }
}

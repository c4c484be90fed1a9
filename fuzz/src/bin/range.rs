//! `Range`, `If-Range` and the conditionals answered from a stored entry. Input: 8 bytes of
//! representation length, the request's fields, `--`, the stored response's fields. The
//! parse is checked against its contract for any length; for small lengths the whole answer
//! is built and its body must match its `Content-Length` and `Content-Range`.
use bytes::Bytes;
use cuttle::cache::serve::{self, Ranges, Source};
use cuttle::http::body::{Body, full};
use http::{Method, StatusCode, header};
use http_body_util::BodyExt;

struct Stored(Bytes);

impl Source for Stored {
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

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if data.len() < 8 {
            return;
        }
        let len = u64::from_le_bytes(data[..8].try_into().unwrap_or_default());
        let (req, stored) = cuttle_fuzz::two_parts(&data[8..]);
        let (req, stored) = (cuttle_fuzz::fields(req), cuttle_fuzz::fields(stored));

        if let Ranges::Parts(parts) = serve::parse_range(&req, len) {
            assert!(!parts.is_empty() && parts.len() <= 16, "{parts:?}");
            let mut prev_end = None;
            for &(s, e) in &parts {
                assert!(s < e && e <= len, "{parts:?} of {len}");
                // Ascending and disjoint, not even touching (those are coalesced).
                assert!(prev_end.is_none_or(|p| p < s), "{parts:?}");
                prev_end = Some(e);
            }
        }
        let _ = serve::if_range_holds(&req, &stored);
        let _ = serve::is_not_modified(&req, &stored);

        let small = (len % 4096) as usize;
        let body = Bytes::from((0..small).map(|i| i as u8).collect::<Vec<u8>>());
        let resp = serve::answer(
            &Method::GET,
            &req,
            StatusCode::OK,
            stored,
            &Stored(body.clone()),
        );
        let (parts, b) = resp.into_parts();
        let got = cuttle_fuzz::runtime()
            .block_on(b.collect())
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        if let Some(cl) = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            && parts.status == StatusCode::PARTIAL_CONTENT
        {
            // (A full answer keeps the stored Content-Length, which here is made up.)
            assert_eq!(cl, got.len(), "{:?}", parts.headers);
        }
        if parts.status == StatusCode::PARTIAL_CONTENT
            && let Some(cr) = parts.headers.get(header::CONTENT_RANGE)
        {
            let cr = cr.to_str().unwrap_or_default();
            let spec = cr.strip_prefix("bytes ").unwrap_or_default();
            let (range, total) = spec.split_once('/').unwrap_or_default();
            let (s, e) = range.split_once('-').unwrap_or_default();
            let (s, e): (usize, usize) = (s.parse().unwrap_or(0), e.parse().unwrap_or(0));
            assert_eq!(total, small.to_string());
            assert!(s <= e && e < small, "{cr}");
            assert_eq!(&got[..], &body[s..=e], "{cr}");
        }
    });
}

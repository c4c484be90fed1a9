//! A stored cache file as cuttle reads it back (after a crash, a full disk or a bit flip):
//! magic, version, metadata length, JSON metadata; then every use of the metadata a lookup
//! makes. Input: the file's first bytes; 8 bytes of the file's length come first.
use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, Method};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if data.len() < 8 {
            return;
        }
        let file_len = u64::from_le_bytes(data[..8].try_into().unwrap_or_default());
        let mut file = &data[8..];
        let Ok((meta, offset, len)) = cuttle::fuzzing::disk_entry_head(&mut file, file_len) else {
            return;
        };
        assert!(offset <= file_len && len <= file_len);
        let _ = meta.key();
        let _ = meta.status();
        let _ = meta.content_length();
        let mut req = HeaderMap::new();
        req.insert("accept-encoding", http::HeaderValue::from_static("gzip"));
        let _ = meta.variant.matches(&req);
        let _ = meta.variant.id();
        let uri: http::Uri = meta.url.parse().unwrap_or_default();
        let view = cuttle::cache::policy::request_view(&Method::GET, &uri, "h", &req, None);
        for t in [0u64, 1_700_000_000, u64::from(u32::MAX) * 4] {
            let t = UNIX_EPOCH + Duration::from_secs(t);
            let _ = meta.policy.may_reuse(&view);
            let _ = meta.policy.lookup(&view, t);
            let _ = meta.policy.stale_headers(&meta.headers, t);
            let _ = meta
                .policy
                .may_serve_on_error(&view, t, Duration::from_secs(60));
            let _ = meta.policy.may_serve_while_revalidating(&view, t);
        }
        let _ = meta.encode_prefix();
    });
}

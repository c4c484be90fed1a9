//! Cache-Control and the rest of RFC 9111 as the cache reads a response and a request:
//! directives, `Age`, `Expires`/`Date`, `Vary`, credentials. Input: 2 bytes of status, the
//! request's fields, `--`, the response's fields. Every decision the cache takes on a
//! stored response is taken, now and far in the future, with and without an artifact rule.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cuttle::cache::policy::{self, StoredPolicy};
use cuttle::cache::rules::Rules;
use http::{Method, StatusCode, Uri, header};

fn main() {
    let rules = Rules::default();
    let uri: Uri = "http://registry.example.org/pkg/-/pkg-1.0.0.tgz"
        .parse()
        .unwrap_or_default();
    let rule = rules.classify(&uri.to_string()).cloned();
    afl::fuzz!(|data: &[u8]| {
        if data.len() < 2 {
            return;
        }
        let status = StatusCode::from_u16(100 + u16::from_le_bytes([data[0], data[1]]) % 500)
            .unwrap_or(StatusCode::OK);
        let (req, resp) = cuttle_fuzz::two_parts(&data[2..]);
        let (mut req_h, resp_h) = (cuttle_fuzz::fields(req), cuttle_fuzz::fields(resp));
        let _ = cuttle::fuzzing::cache_control_directives(&resp_h);
        let _ = cuttle::fuzzing::age_value(&resp_h);
        cuttle::fuzzing::lowercase_directive_names(&mut req_h, header::CACHE_CONTROL);
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for rule in [None, rule.as_ref()] {
            let view =
                policy::request_view(&Method::GET, &uri, "registry.example.org", &req_h, rule);
            let Some(p) = StoredPolicy::new(&view, status, &resp_h, now, rule) else {
                continue;
            };
            for later in [0u64, 1, 3600, 86_400 * 365, 86_400 * 365 * 50] {
                let t = now + Duration::from_secs(later);
                let _ = p.may_reuse(&view);
                let _ = p.lookup(&view, t);
                let _ = p.stale_headers(&resp_h, t);
                let _ = p.staleness(t);
                let _ = p.may_serve_while_revalidating(&view, t);
                let _ = p.may_serve_on_error(&view, t, Duration::from_secs(86_400));
                let _ = p.after_not_modified(&view, status, &resp_h, &resp_h, t, rule);
            }
            let _ = p.lookup(&view, SystemTime::UNIX_EPOCH);
        }
    });
}

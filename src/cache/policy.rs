//! RFC 9111 decisions, through `http-cache-semantics` (`shared: true`), with its RFC 7234
//! leftovers corrected: no `Warning` header is ever produced (RFC 9111 §5.5 obsoletes it),
//! `Date` is written in IMF-fixdate (RFC 9110 §5.6.7), and dates the origin sent in the
//! obsolete RFC 850 or asctime forms are normalised before the crate sees them. Artifact rules
//! ([`super::rules`]) are applied here by rewriting the freshness the policy is built from, and
//! the RFC 5861 extensions (`stale-while-revalidate`, `stale-if-error`) are read here too.

use std::time::{Duration, SystemTime};

#[cfg(test)]
use http::header::HeaderName;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Uri};
use http_cache_semantics::{AfterResponse, BeforeRequest, CacheOptions, CachePolicy};

use super::rules::Rule;

/// Request headers that never take part in cache decisions for the next hop.
const REQUEST_HOP: [&str; 4] = [
    "proxy-authorization",
    "proxy-connection",
    "connection",
    "te",
];

/// The policy of one stored response plus what `http-cache-semantics` does not know.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StoredPolicy {
    policy: CachePolicy,
    /// Effective freshness lifetime (after artifact rules).
    pub lifetime: Duration,
    /// `stale-while-revalidate=N`.
    pub swr: Option<Duration>,
    /// `stale-if-error=N`.
    pub sie: Option<Duration>,
    /// `must-revalidate`, `proxy-revalidate`, `no-cache` or `s-maxage`: no stale serving
    /// (RFC 9111 §4.2.4), unless an artifact rule overrides it.
    pub no_stale: bool,
    /// Name of the artifact rule applied, if any.
    pub rule: Option<String>,
    /// The response's `Vary` names (lower-cased, no `*`): the policy sees these request fields
    /// normalised like the variant key does, so both agree on which requests match.
    #[serde(default)]
    vary: Vec<String>,
    /// The origin's `Cache-Control`, when the policy was given an edited one (see
    /// [`policy_view`]); fresh answers carry the original.
    #[serde(default)]
    origin_cache_control: Option<String>,
}

/// What a lookup decided.
pub enum Freshness {
    /// Serve from cache with these headers (Age and Date set).
    Fresh(HeaderMap),
    /// Contact the origin: these are the request headers for revalidation (with
    /// `If-None-Match`/`If-Modified-Since` when the entry has validators).
    Stale(HeaderMap),
}

/// The request as the policy sees it: absolute URI, `Host`, no hop-by-hop fields, `Vary`'d
/// fields normalised, and the client's reload directives dropped when the rule says so.
pub fn request_view(
    method: &Method,
    uri: &Uri,
    authority: &str,
    headers: &HeaderMap,
    rule: Option<&Rule>,
) -> http::request::Parts {
    let mut h = headers.clone();
    for n in REQUEST_HOP {
        h.remove(n);
    }
    if let Ok(v) = HeaderValue::from_str(authority) {
        h.insert(header::HOST, v);
    }
    if rule.is_some_and(|r| r.ignore_client_no_cache) {
        h.remove(header::PRAGMA);
        let kept: Vec<String> = h
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|d| d.trim().to_string())
            .filter(|d| {
                let l = d.to_ascii_lowercase();
                !(l == "no-cache" || l.starts_with("max-age") || l.starts_with("min-fresh"))
            })
            .collect();
        h.remove(header::CACHE_CONTROL);
        if !kept.is_empty()
            && let Ok(v) = HeaderValue::from_str(&kept.join(", "))
        {
            h.insert(header::CACHE_CONTROL, v);
        }
    }
    let mut req = http::Request::new(());
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri.clone();
    *req.headers_mut() = h;
    req.into_parts().0
}

fn response(status: StatusCode, headers: HeaderMap) -> http::response::Parts {
    let mut r = http::Response::new(());
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r.into_parts().0
}

/// Response `Cache-Control` directives, lower-cased, with their values.
fn directives(h: &HeaderMap) -> Vec<(String, Option<String>)> {
    h.get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|d| {
            let d = d.trim();
            if d.is_empty() {
                return None;
            }
            Some(match d.split_once('=') {
                Some((k, v)) => (
                    k.trim().to_ascii_lowercase(),
                    Some(v.trim().trim_matches('"').to_string()),
                ),
                None => (d.to_ascii_lowercase(), None),
            })
        })
        .collect()
}

fn seconds(dirs: &[(String, Option<String>)], name: &str) -> Option<Duration> {
    dirs.iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref()?.parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Rewrites obsolete date formats as IMF-fixdate; drops dates that cannot be parsed
/// (RFC 9111 §5.3: an invalid `Expires` means already expired, which is what a missing one
/// with `max-age=0`... is not: so an unparsable `Expires` becomes `max-age=0`).
fn normalise_dates(h: &mut HeaderMap) {
    for name in [header::DATE, header::LAST_MODIFIED, header::EXPIRES] {
        let Some(v) = h.get(&name) else { continue };
        let parsed = v
            .to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s.trim()).ok());
        match parsed {
            Some(t) => {
                if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(t)) {
                    h.insert(name, v);
                }
            }
            None => {
                h.remove(&name);
                if name == header::EXPIRES {
                    h.append(header::CACHE_CONTROL, HeaderValue::from_static("max-age=0"));
                }
            }
        }
    }
}

/// `req` with the fields named in `vary` normalised as the variant key does (RFC 9111 §4.1:
/// "normalizing both header field values in a way that is known to have identical
/// semantics"); without this the policy's own Vary check would refuse a variant that the key
/// selected (`gzip,deflate` against a stored `gzip, deflate`).
fn normalise_vary(req: &http::request::Parts, vary: &[String]) -> http::request::Parts {
    let mut out = req.clone();
    // Fields compared exactly are left as sent (their normalised form is not a field value).
    for name in vary.iter().filter(|n| super::key::is_normalised_field(n)) {
        let Ok(n) = header::HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        let v = super::key::normalised(&req.headers, name);
        out.headers.remove(&n);
        if let Some(v) = v.and_then(|v| HeaderValue::from_str(&v).ok()) {
            out.headers.insert(n, v);
        }
    }
    out
}

/// The response fields as `http-cache-semantics` is given them. It treats `proxy-revalidate`
/// as zero freshness in a shared cache, but RFC 9111 §5.2.2.8 makes it `must-revalidate` for
/// shared caches (it only matters once the response is stale): the policy gets that instead.
/// Returns the original `Cache-Control` when it was edited.
fn policy_view(h: &mut HeaderMap) -> Option<String> {
    let dirs = directives(h);
    if !dirs.iter().any(|(k, _)| k == "proxy-revalidate") {
        return None;
    }
    let original = h
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    let has_must = dirs.iter().any(|(k, _)| k == "must-revalidate");
    let edited: Vec<String> = dirs
        .iter()
        .filter(|(k, _)| k != "proxy-revalidate")
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k.clone(),
        })
        .chain((!has_must).then(|| "must-revalidate".to_string()))
        .collect();
    h.remove(header::CACHE_CONTROL);
    if let Ok(v) = HeaderValue::from_str(&edited.join(", ")) {
        h.insert(header::CACHE_CONTROL, v);
    }
    Some(original)
}

impl StoredPolicy {
    /// The policy for a response, or `None` when RFC 9111 §3 forbids storing it.
    pub fn new(
        req: &http::request::Parts,
        status: StatusCode,
        headers: &HeaderMap,
        response_time: SystemTime,
        rule: Option<&Rule>,
    ) -> Option<StoredPolicy> {
        let mut h = headers.clone();
        h.remove("warning");
        normalise_dates(&mut h);
        let opts = CacheOptions {
            shared: true,
            ..CacheOptions::default()
        };
        let (vary, _) = super::key::vary_names(&h);
        let req = &normalise_vary(req, &vary);
        let dirs = directives(&h);
        let mut viewed = h.clone();
        let origin_cache_control = policy_view(&mut viewed);
        let first = CachePolicy::new_options(req, &response(status, viewed), response_time, opts);
        let has = |n: &str| dirs.iter().any(|(k, _)| k == n);
        let mut storable = first.is_storable();
        if !storable && rule.is_some_and(|r| r.is_immutable()) {
            // Immutable artifacts are stored unless the origin forbids storing outright.
            storable = !has("no-store") && !has("private") && status == StatusCode::OK;
        }
        if !storable {
            return None;
        }
        let origin_lifetime = first.time_to_live(response_time) + first.age(response_time);
        let no_stale_directives =
            has("must-revalidate") || has("proxy-revalidate") || has("no-cache") || has("s-maxage");
        let (policy, lifetime, no_stale) = match rule {
            Some(r) => {
                let lifetime = r.clamp(origin_lifetime);
                let immutable = r.is_immutable();
                let kept: Vec<String> = dirs
                    .iter()
                    .filter(|(k, _)| {
                        !(k == "max-age"
                            || k == "s-maxage"
                            || (immutable
                                && (k == "no-cache"
                                    || k == "must-revalidate"
                                    || k == "proxy-revalidate")))
                    })
                    .map(|(k, v)| match v {
                        Some(v) => format!("{k}={v}"),
                        None => k.clone(),
                    })
                    .chain(std::iter::once(format!("max-age={}", lifetime.as_secs())))
                    .collect();
                h.remove(header::CACHE_CONTROL);
                h.remove(header::EXPIRES);
                h.remove(header::PRAGMA);
                if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
                    h.insert(header::CACHE_CONTROL, v);
                }
                policy_view(&mut h);
                let p = CachePolicy::new_options(req, &response(status, h), response_time, opts);
                (p, lifetime, no_stale_directives && !immutable)
            }
            None => (first, origin_lifetime, no_stale_directives),
        };
        // Rule-governed answers carry the rule's Cache-Control, as before.
        let origin_cache_control = origin_cache_control.filter(|_| rule.is_none());
        Some(StoredPolicy {
            policy,
            lifetime,
            swr: seconds(&dirs, "stale-while-revalidate"),
            sie: seconds(&dirs, "stale-if-error"),
            no_stale,
            rule: rule.map(|r| r.name.clone()),
            vary,
            origin_cache_control,
        })
    }

    /// Decides whether the stored response answers `req` now.
    pub fn lookup(&self, req: &http::request::Parts, now: SystemTime) -> Freshness {
        match self
            .policy
            .before_request(&normalise_vary(req, &self.vary), now)
        {
            BeforeRequest::Fresh(parts) => {
                let mut h = parts.headers;
                if let Some(v) = self
                    .origin_cache_control
                    .as_deref()
                    .and_then(|v| HeaderValue::from_str(v).ok())
                {
                    h.insert(header::CACHE_CONTROL, v);
                }
                Freshness::Fresh(fix_response_headers(h, now))
            }
            BeforeRequest::Stale { request, .. } => {
                // The request goes upstream with the client's own values of the Vary'd fields.
                let mut h = request.headers;
                for name in &self.vary {
                    h.remove(name.as_str());
                    for v in req.headers.get_all(name.as_str()) {
                        if let Ok(n) = header::HeaderName::from_bytes(name.as_bytes()) {
                            h.append(n, v.clone());
                        }
                    }
                }
                Freshness::Stale(h)
            }
        }
    }

    /// The headers to send with a stored response served without contacting the origin
    /// (stale serving): the stored fields with `Age` and `Date` brought up to date.
    pub fn stale_headers(&self, stored: &HeaderMap, now: SystemTime) -> HeaderMap {
        let mut h = stored.clone();
        if let Ok(v) = HeaderValue::from_str(&self.policy.age(now).as_secs().to_string()) {
            h.insert(header::AGE, v);
        }
        fix_response_headers(h, now)
    }

    /// How long past its freshness the entry is at `now` (zero while fresh).
    pub fn staleness(&self, now: SystemTime) -> Duration {
        self.policy.age(now).saturating_sub(self.lifetime)
    }

    pub fn age(&self, now: SystemTime) -> Duration {
        self.policy.age(now)
    }

    /// RFC 5861 §3: may be served while a background revalidation runs.
    pub fn may_serve_while_revalidating(&self, now: SystemTime) -> bool {
        !self.no_stale && self.swr.is_some_and(|w| self.staleness(now) <= w)
    }

    /// RFC 5861 §4 and `--serve-stale-on-error`: may be served when the origin fails.
    pub fn may_serve_on_error(&self, now: SystemTime, default_window: Duration) -> bool {
        if self.no_stale {
            return false;
        }
        self.staleness(now) <= self.sie.unwrap_or_default().max(default_window)
    }

    /// Merges a 304 into the stored response (RFC 9111 §4.3.4) and re-derives the policy
    /// (artifact rules included). `stored` are the entry's fields. `None` when the 304 does not
    /// match the stored response.
    pub fn after_not_modified(
        &self,
        req: &http::request::Parts,
        stored: &HeaderMap,
        not_modified: &HeaderMap,
        now: SystemTime,
        rule: Option<&Rule>,
    ) -> Option<(StoredPolicy, StatusCode, HeaderMap)> {
        let mut nm = not_modified.clone();
        if !nm.contains_key(header::ETAG) && !nm.contains_key(header::LAST_MODIFIED) {
            // A 304 without validators answers the conditional request made from this entry's
            // own validators (RFC 9110 §15.4.5 requires only ETag among them, and origins such
            // as Python's http.server send neither): it selects this entry.
            for name in [header::ETAG, header::LAST_MODIFIED] {
                if let Some(v) = stored.get(&name) {
                    nm.insert(name, v.clone());
                }
            }
        }
        policy_view(&mut nm);
        let resp = response(StatusCode::NOT_MODIFIED, nm);
        match self
            .policy
            .after_response(&normalise_vary(req, &self.vary), &resp, now)
        {
            AfterResponse::NotModified(_, parts) => {
                let mut h = parts.headers;
                // Cache-Control as the origin wrote it (the 304's, else the stored one).
                if not_modified.contains_key(header::CACHE_CONTROL) {
                    h.remove(header::CACHE_CONTROL);
                    for v in not_modified.get_all(header::CACHE_CONTROL) {
                        h.append(header::CACHE_CONTROL, v.clone());
                    }
                } else if let Some(v) = self
                    .origin_cache_control
                    .as_deref()
                    .and_then(|v| HeaderValue::from_str(v).ok())
                {
                    h.insert(header::CACHE_CONTROL, v);
                }
                h.remove(header::AGE);
                h.remove("warning");
                match not_modified.get(header::DATE) {
                    Some(d) => {
                        h.insert(header::DATE, d.clone());
                    }
                    None => {
                        h.remove(header::DATE);
                    }
                }
                let status = parts.status;
                StoredPolicy::new(req, status, &h, now, rule).map(|p| (p, status, h))
            }
            AfterResponse::Modified(..) => None,
        }
    }
}

/// No `Warning` (obsolete), `Date` in IMF-fixdate.
fn fix_response_headers(mut h: HeaderMap, now: SystemTime) -> HeaderMap {
    h.remove("warning");
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(now)) {
        h.insert(header::DATE, v);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::rules::Rules;

    fn req(headers: &[(&str, &str)]) -> http::request::Parts {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        request_view(&Method::GET, &"http://h/x".parse().unwrap(), "h", &h, None)
    }

    fn resp(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn s_maxage_beats_max_age_beats_expires() {
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let exp = httpdate::fmt_http_date(now + Duration::from_secs(50));
        let p = StoredPolicy::new(
            &req(&[]),
            StatusCode::OK,
            &resp(&[
                ("cache-control", "max-age=100, s-maxage=200"),
                ("date", &date),
                ("expires", &exp),
            ]),
            now,
            None,
        )
        .unwrap();
        assert_eq!(p.lifetime, Duration::from_secs(200));
        let p = StoredPolicy::new(
            &req(&[]),
            StatusCode::OK,
            &resp(&[
                ("cache-control", "max-age=100"),
                ("date", &date),
                ("expires", &exp),
            ]),
            now,
            None,
        )
        .unwrap();
        assert_eq!(p.lifetime, Duration::from_secs(100));
        let p = StoredPolicy::new(
            &req(&[]),
            StatusCode::OK,
            &resp(&[("date", &date), ("expires", &exp)]),
            now,
            None,
        )
        .unwrap();
        assert_eq!(p.lifetime, Duration::from_secs(50));
    }

    #[test]
    fn not_storable() {
        let now = SystemTime::now();
        assert!(
            StoredPolicy::new(
                &req(&[]),
                StatusCode::OK,
                &resp(&[("cache-control", "no-store")]),
                now,
                None
            )
            .is_none()
        );
        assert!(
            StoredPolicy::new(
                &req(&[]),
                StatusCode::OK,
                &resp(&[("cache-control", "private, max-age=60")]),
                now,
                None
            )
            .is_none()
        );
        assert!(
            StoredPolicy::new(
                &req(&[("authorization", "Basic x")]),
                StatusCode::OK,
                &resp(&[("cache-control", "max-age=60")]),
                now,
                None
            )
            .is_none()
        );
        assert!(
            StoredPolicy::new(
                &req(&[("authorization", "Basic x")]),
                StatusCode::OK,
                &resp(&[("cache-control", "public, max-age=60")]),
                now,
                None
            )
            .is_some()
        );
        assert!(
            StoredPolicy::new(
                &req(&[]),
                StatusCode::from_u16(500).unwrap(),
                &resp(&[("cache-control", "max-age=60")]),
                now,
                None
            )
            .is_none()
        );
    }

    #[test]
    fn fresh_headers_have_age_and_imf_date_and_no_warning() {
        let t0 = SystemTime::now() - Duration::from_secs(3 * 24 * 3600);
        let lm = httpdate::fmt_http_date(t0 - Duration::from_secs(300 * 24 * 3600));
        // Heuristic freshness over 24 h is the case where the crate adds Warning 113.
        let p = StoredPolicy::new(
            &req(&[]),
            StatusCode::OK,
            &resp(&[
                ("last-modified", &lm),
                ("date", &httpdate::fmt_http_date(t0)),
            ]),
            t0,
            None,
        )
        .unwrap();
        match p.lookup(&req(&[]), SystemTime::now()) {
            Freshness::Fresh(h) => {
                assert!(h.get("warning").is_none());
                assert!(h["date"].to_str().unwrap().ends_with(" GMT"));
                assert!(h["age"].to_str().unwrap().parse::<u64>().unwrap() >= 3 * 24 * 3600);
            }
            Freshness::Stale(_) => panic!("should be fresh"),
        }
    }

    #[test]
    fn obsolete_dates_are_normalised() {
        let mut h = resp(&[
            ("expires", "Sunday, 06-Nov-94 08:49:37 GMT"),
            ("last-modified", "Sun Nov  6 08:49:37 1994"),
        ]);
        normalise_dates(&mut h);
        assert_eq!(h["expires"], "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(h["last-modified"], "Sun, 06 Nov 1994 08:49:37 GMT");
        let mut h = resp(&[("expires", "0")]);
        normalise_dates(&mut h);
        assert!(h.get("expires").is_none());
        assert_eq!(h["cache-control"], "max-age=0");
    }

    #[test]
    fn immutable_rule_ignores_client_no_cache_and_short_max_age() {
        let rules = Rules::default();
        let rule = rules.classify("http://h/-/a-1.0.0.tgz");
        let now = SystemTime::now();
        let view = |h: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in h {
                m.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            request_view(
                &Method::GET,
                &"http://h/-/a-1.0.0.tgz".parse().unwrap(),
                "h",
                &m,
                rule,
            )
        };
        let p = StoredPolicy::new(
            &view(&[]),
            StatusCode::OK,
            &resp(&[("cache-control", "max-age=10, must-revalidate")]),
            now,
            rule,
        )
        .unwrap();
        assert!(p.lifetime >= Duration::from_secs(365 * 24 * 3600));
        let later = now + Duration::from_secs(3600);
        assert!(matches!(
            p.lookup(
                &view(&[("cache-control", "no-cache"), ("pragma", "no-cache")]),
                later
            ),
            Freshness::Fresh(_)
        ));
        assert!(!p.no_stale);
    }

    #[test]
    fn stale_revalidation_carries_validators() {
        let now = SystemTime::now();
        let p = StoredPolicy::new(
            &req(&[]),
            StatusCode::OK,
            &resp(&[
                ("cache-control", "max-age=0"),
                ("etag", "\"v1\""),
                ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ]),
            now,
            None,
        )
        .unwrap();
        match p.lookup(&req(&[]), now + Duration::from_secs(1)) {
            Freshness::Stale(h) => {
                assert_eq!(h["if-none-match"], "\"v1\"");
                assert_eq!(h["if-modified-since"], "Sun, 06 Nov 1994 08:49:37 GMT");
            }
            Freshness::Fresh(_) => panic!("should be stale"),
        }
        // 304 merge keeps the entry and refreshes it.
        let nm = resp(&[("cache-control", "max-age=60"), ("etag", "\"v1\"")]);
        let stored = resp(&[("etag", "\"v1\"")]);
        let (p2, status, h) = p
            .after_not_modified(&req(&[]), &stored, &nm, now, None)
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(p2.lifetime, Duration::from_secs(60));
        assert_eq!(h["cache-control"], "max-age=60");
        // A different validator does not match.
        let other = resp(&[("etag", "\"v2\"")]);
        assert!(
            p.after_not_modified(&req(&[]), &stored, &other, now, None)
                .is_none()
        );
    }

    #[test]
    fn not_modified_without_validators_refreshes_the_entry() {
        let now = SystemTime::now();
        let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
        let stored = resp(&[("cache-control", "max-age=0"), ("last-modified", lm)]);
        let p = StoredPolicy::new(&req(&[]), StatusCode::OK, &stored, now, None).unwrap();
        let nm = resp(&[("cache-control", "max-age=60")]);
        let (p2, _, h) = p
            .after_not_modified(&req(&[]), &stored, &nm, now, None)
            .unwrap();
        assert_eq!(p2.lifetime, Duration::from_secs(60));
        assert_eq!(h["last-modified"], lm);
    }

    #[test]
    fn vary_is_matched_on_normalised_values() {
        let now = SystemTime::now();
        let p = StoredPolicy::new(
            &req(&[("accept-encoding", "gzip, deflate")]),
            StatusCode::OK,
            &resp(&[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")]),
            now,
            None,
        )
        .unwrap();
        assert!(matches!(
            p.lookup(&req(&[("accept-encoding", "GZIP,deflate")]), now),
            Freshness::Fresh(_)
        ));
        match p.lookup(&req(&[("accept-encoding", "br")]), now) {
            // Revalidation goes upstream with the client's own value.
            Freshness::Stale(h) => assert_eq!(h["accept-encoding"], "br"),
            Freshness::Fresh(_) => panic!("another variant"),
        }
    }

    #[test]
    fn proxy_revalidate_keeps_freshness_but_forbids_stale() {
        let now = SystemTime::now();
        let p = StoredPolicy::new(
            &req(&[]),
            StatusCode::OK,
            &resp(&[("cache-control", "max-age=60, proxy-revalidate")]),
            now,
            None,
        )
        .unwrap();
        assert_eq!(p.lifetime, Duration::from_secs(60));
        assert!(p.no_stale);
        match p.lookup(&req(&[]), now) {
            Freshness::Fresh(h) => assert_eq!(h["cache-control"], "max-age=60, proxy-revalidate"),
            Freshness::Stale(_) => panic!("fresh for 60 s"),
        }
        assert!(matches!(
            p.lookup(
                &req(&[("cache-control", "max-stale=600")]),
                now + Duration::from_secs(61)
            ),
            Freshness::Stale(_)
        ));
    }

    #[test]
    fn stale_windows() {
        let now = SystemTime::now();
        let p = StoredPolicy::new(
            &req(&[]),
            StatusCode::OK,
            &resp(&[(
                "cache-control",
                "max-age=10, stale-while-revalidate=30, stale-if-error=60",
            )]),
            now,
            None,
        )
        .unwrap();
        let at = |s| now + Duration::from_secs(s);
        assert!(p.may_serve_while_revalidating(at(30)));
        assert!(!p.may_serve_while_revalidating(at(50)));
        assert!(p.may_serve_on_error(at(60), Duration::from_secs(7 * 86400)));
        assert!(!p.may_serve_on_error(at(100), Duration::ZERO));
        let strict = StoredPolicy::new(
            &req(&[]),
            StatusCode::OK,
            &resp(&[("cache-control", "max-age=10, must-revalidate")]),
            now,
            None,
        )
        .unwrap();
        assert!(!strict.may_serve_on_error(at(11), Duration::from_secs(86400)));
    }
}

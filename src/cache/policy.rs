//! RFC 9111 decisions, through `http-cache-semantics` (`shared: true`), with what the crate gets
//! wrong for RFC 9111 corrected here:
//! - no `Warning` header is ever produced (RFC 9111 §5.5 obsoletes it);
//! - a stored response keeps the origin's `Date` (RFC 9110 §6.6.1), in IMF-fixdate
//!   (RFC 9110 §5.6.7), and dates in the obsolete RFC 850 or asctime forms are normalised
//!   before the crate sees them;
//! - `Cache-Control` directive names are case-insensitive (RFC 9111 §5.2), `Age` is read by
//!   its first member (§5.1), `proxy-revalidate`, `s-maxage` and `no-cache` forbid serving
//!   stale even to a client that sends `max-stale` (§4.2.4);
//! - every final status the cache understands is storable with explicit freshness (§3), not
//!   only the crate's short list;
//! - a response to a request with `Authorization` (§3.5) is stored only when it says `public`,
//!   `s-maxage` or `must-revalidate`, no artifact rule overrides that, and it is revalidated
//!   for each request with other credentials; `Set-Cookie` is never stored, so no client is
//!   served another's cookie.
//!
//! Artifact rules ([`super::rules`]) are applied here by rewriting the freshness the policy is
//! built from, and the RFC 5861 extensions (`stale-while-revalidate`, `stale-if-error`) are
//! read here too.

use std::sync::Arc;
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

/// Response fields meant for the one client a response was sent to: never stored, so never
/// served to another client from the cache (RFC 6265 §8: cookies carry session state).
const PER_CLIENT: [&str; 2] = ["set-cookie", "set-cookie2"];

/// Statuses `http-cache-semantics` stores (its `UNDERSTOOD_STATUSES`).
const CRATE_UNDERSTOOD: [u16; 14] = [
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501,
];

/// RFC 9111 §3: a cache stores a response only if "the response status code is final" and
/// understood by the cache. These are the final statuses RFC 9110 §15 defines (206 and 304
/// are never stored as responses of their own), except the authentication challenges 401 and
/// 407 and the refusal 403: they answer the credentials a request carried, which are not part
/// of the key, so a stored one would refuse clients that have the right credentials.
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=205 | 300..=305 | 307 | 308 | 400 | 402 | 404..=406 | 408..=417 | 421 | 422 | 426
            | 500..=505
    )
}

/// The greatest `Age` taken into account (RFC 9111 §1.2.2: an overflowing delta-seconds "MUST
/// [be considered] to be 2147483648"); it also keeps the crate's age arithmetic from overflowing.
const MAX_AGE_VALUE: u64 = 1 << 31;

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
    /// The `Date` answers from the cache carry: the origin's (RFC 9110 §6.6.1), or when the
    /// response was received if it had none. `None` in entries written before it was kept.
    #[serde(default)]
    date: Option<String>,
    /// The response was obtained by a request with `Authorization` (RFC 9111 §3.5).
    #[serde(default)]
    credentialed: bool,
    /// For a credentialed entry: the keyed fingerprint of the `Authorization` of the request
    /// that last fetched or validated it (`None`: a request without one). Another request is
    /// served the entry only after revalidating with its own credentials.
    #[serde(default)]
    credentials: Option<String>,
    /// False in entries written before the two fields above were recorded: whether such an
    /// entry answered a request with `Authorization` is unknown (earlier versions stored some
    /// under artifact rules), so it is revalidated once before any reuse; the 304 (or new
    /// response) records it properly.
    #[serde(default)]
    recorded: bool,
    /// The last fresh answer to a plain GET (see [`StoredPolicy::fresh_for_plain_get`]).
    #[serde(skip)]
    memo: FreshMemo,
}

/// The headers of the last fresh answer to a plain GET, with the age (whole seconds) they were
/// made for. A copy of a policy starts without one.
#[derive(Debug, Default)]
struct FreshMemo(arc_swap::ArcSwapOption<(u64, HeaderMap)>);

impl Clone for FreshMemo {
    fn clone(&self) -> FreshMemo {
        FreshMemo::default()
    }
}

/// A request whose answer from the cache can depend on nothing but the entry's age: no
/// `Cache-Control` and no `Pragma` of its own.
pub fn is_plain(req: &HeaderMap) -> bool {
    !req.contains_key(header::CACHE_CONTROL) && !req.contains_key(header::PRAGMA)
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
/// fields normalised, `Cache-Control`/`Pragma` directive names lower-cased, and the client's
/// reload directives dropped when the rule says so (never for a request with credentials:
/// artifact rules do not apply to those).
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
    lowercase_directive_names(&mut h, header::CACHE_CONTROL);
    lowercase_directive_names(&mut h, header::PRAGMA);
    let rule = rule.filter(|_| !h.contains_key(header::AUTHORIZATION));
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

/// Removes the fields meant for one client only ([`PER_CLIENT`]) from fields to be stored or
/// served from the cache.
pub fn strip_per_client(h: &mut HeaderMap) {
    for n in PER_CLIENT {
        h.remove(n);
    }
}

/// The fields of `h` meant for the client it was sent to (its `Set-Cookie`).
pub fn per_client_fields(h: &HeaderMap) -> Vec<(header::HeaderName, HeaderValue)> {
    h.iter()
        .filter(|(n, _)| PER_CLIENT.contains(&n.as_str()))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

fn response(status: StatusCode, headers: HeaderMap) -> http::response::Parts {
    let mut r = http::Response::new(());
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r.into_parts().0
}

/// RFC 9111 §5.2: "Cache directives are identified by a token, to be compared
/// case-insensitively" (the crate compares them as sent). Pragma's `no-cache` likewise.
pub(crate) fn lowercase_directive_names(h: &mut HeaderMap, name: header::HeaderName) {
    let lines: Vec<HeaderValue> = h.get_all(&name).iter().cloned().collect();
    if lines.is_empty() {
        return;
    }
    let mut changed = false;
    let mut out = Vec::with_capacity(lines.len());
    for line in lines {
        let Ok(s) = line.to_str() else {
            out.push(line);
            continue;
        };
        let rewritten = s
            .split(',')
            .map(|d| match d.split_once('=') {
                Some((k, v)) => format!("{}={v}", k.to_ascii_lowercase()),
                None => d.to_ascii_lowercase(),
            })
            .collect::<Vec<_>>()
            .join(",");
        if rewritten == s {
            out.push(line);
        } else if let Ok(v) = HeaderValue::from_str(&rewritten) {
            changed = true;
            out.push(v);
        } else {
            out.push(line);
        }
    }
    if changed {
        h.remove(&name);
        for v in out {
            h.append(&name, v);
        }
    }
}

/// Response `Cache-Control` directives, lower-cased, with their values.
pub(crate) fn directives(h: &HeaderMap) -> Vec<(String, Option<String>)> {
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

/// RFC 9111 §5.1: "a cache encountering a message with a list-based Age field value SHOULD use
/// the first member of the field value, discarding subsequent ones. If the field value (after
/// discarding additional members ...) is invalid ..., a cache SHOULD ignore the field." Several
/// field lines are one list (RFC 9110 §5.3).
pub(crate) fn age_value(h: &HeaderMap) -> Option<u64> {
    let first = h.get(header::AGE)?.to_str().ok()?;
    let member = first.split(',').next()?.trim();
    if member.is_empty() || !member.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        member
            .parse::<u64>()
            .map_or(MAX_AGE_VALUE, |a| a.min(MAX_AGE_VALUE)),
    )
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

/// The request as the crate stores it (it is written to disk with the entry): only what its
/// decisions read -- `Host`, the request's `Cache-Control`/`Pragma`, the `Vary`'d fields --
/// and whether `Authorization` was present, never the credentials themselves (nor cookies).
fn stored_request(req: &http::request::Parts, vary: &[String]) -> http::request::Parts {
    let mut out = req.clone();
    let keep =
        |n: &str| matches!(n, "host" | "cache-control" | "pragma") || vary.iter().any(|v| v == n);
    let names: Vec<header::HeaderName> = req
        .headers
        .keys()
        .filter(|n| !keep(n.as_str()))
        .cloned()
        .collect();
    for n in names {
        out.headers.remove(&n);
    }
    if req.headers.contains_key(header::AUTHORIZATION) && !keep("authorization") {
        out.headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("[credentials]"),
        );
    }
    out
}

/// The `Authorization` of a request (every line), if any.
fn authorization(req: &http::request::Parts) -> Option<Vec<u8>> {
    let mut lines = req.headers.get_all(header::AUTHORIZATION).iter().peekable();
    lines.peek()?;
    Some(lines.map(|v| v.as_bytes()).collect::<Vec<_>>().join(&b'\n'))
}

/// The response fields as `http-cache-semantics` is given them:
/// - directive names lower-cased (RFC 9111 §5.2; the crate matches them as sent);
/// - `proxy-revalidate`: the crate treats it as zero freshness in a shared cache, but RFC 9111
///   §5.2.2.8 makes it `must-revalidate` for shared caches (it only matters once stale);
/// - `s-maxage` (§5.2.2.10: it "also implies the semantics of proxy-revalidate") and
///   `no-cache` (§5.2.2.4: never used "without successful validation") get `must-revalidate`
///   too: the crate would otherwise serve them stale to a client sending `max-stale`;
/// - `Age` by its first member ([`age_value`]);
/// - no `Set-Cookie` (never stored); a response that set one is revalidated on every use
///   unless it says `public` or `immutable` or an immutable artifact rule applies (the crate's
///   own rule, kept: a page that sets a session is likely personal).
///
/// Returns the original `Cache-Control` when it was edited.
fn policy_view(h: &mut HeaderMap, immutable_rule: bool) -> Option<String> {
    let dirs = directives(h);
    let has = |n: &str| dirs.iter().any(|(k, _)| k == n);
    let cookie = PER_CLIENT.iter().any(|n| h.contains_key(*n));
    strip_per_client(h);
    match age_value(h) {
        Some(a) => {
            h.insert(header::AGE, HeaderValue::from(a));
        }
        None => {
            h.remove(header::AGE);
        }
    }
    lowercase_directive_names(h, header::PRAGMA);
    let add_no_cache = cookie && !has("public") && !has("immutable") && !immutable_rule;
    let add_must = !has("must-revalidate")
        && (has("proxy-revalidate") || has("s-maxage") || has("no-cache") || add_no_cache);
    let edited: Vec<String> = dirs
        .iter()
        .filter(|(k, _)| k != "proxy-revalidate")
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k.clone(),
        })
        .chain(add_no_cache.then(|| "no-cache".to_string()))
        .chain(add_must.then(|| "must-revalidate".to_string()))
        .collect();
    let original = h
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    let edited = edited.join(", ");
    if edited == original {
        return None;
    }
    h.remove(header::CACHE_CONTROL);
    if !edited.is_empty()
        && let Ok(v) = HeaderValue::from_str(&edited)
    {
        h.insert(header::CACHE_CONTROL, v);
    }
    (!original.is_empty()).then_some(original)
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
        let credentials = authorization(req);
        // Artifact rules never apply to credentialed requests: their freshness would override
        // RFC 9111 §3.5.
        // Rules for artifacts and metadata describe successful answers; the negative rule
        // describes 404 and 410 only ([`super::rules::Rules::for_status`]).
        let rule = rule.filter(|r| {
            credentials.is_none()
                && if r.negative {
                    matches!(status.as_u16(), 404 | 410)
                } else {
                    status.is_success()
                }
        });
        let mut h = headers.clone();
        h.remove("warning");
        normalise_dates(&mut h);
        let dirs = directives(&h);
        let has = |n: &str| dirs.iter().any(|(k, _)| k == n);
        // RFC 9111 §3.5: "A shared cache MUST NOT use a cached response to a request with an
        // Authorization header field ... unless ... a response directive that allows such
        // responses to be stored is present": must-revalidate, public, s-maxage.
        if credentials.is_some() && !(has("public") || has("s-maxage") || has("must-revalidate")) {
            return None;
        }
        if !understood(status) {
            return None;
        }
        // A final status the crate does not know is stored with explicit freshness (§3: "the
        // response ... contains ... a max-age response directive ... s-maxage ... Expires");
        // the crate is given 200 in its place (explicit freshness wins over its heuristics,
        // and the entry keeps the real status).
        let explicit = has("max-age") || has("s-maxage") || h.contains_key(header::EXPIRES);
        let crate_status = if CRATE_UNDERSTOOD.contains(&status.as_u16()) {
            status
        } else if explicit {
            StatusCode::OK
        } else {
            return None;
        };
        let date = h
            .get(header::DATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| httpdate::fmt_http_date(response_time));
        let opts = CacheOptions {
            shared: true,
            ..CacheOptions::default()
        };
        let (vary, _) = super::key::vary_names(&h);
        let req = &stored_request(&normalise_vary(req, &vary), &vary);
        let immutable = rule.is_some_and(|r| r.overrides_revalidation());
        let mut viewed = h.clone();
        let origin_cache_control = policy_view(&mut viewed, immutable);
        let first =
            CachePolicy::new_options(req, &response(crate_status, viewed), response_time, opts);
        let mut storable = first.is_storable();
        if !storable && immutable {
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
                // `no-cache` from the origin is explicit too: it asks for revalidation.
                let lifetime = r.lifetime(origin_lifetime, explicit || has("no-cache"));
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
                policy_view(&mut h, immutable);
                let p =
                    CachePolicy::new_options(req, &response(crate_status, h), response_time, opts);
                (p, lifetime, no_stale_directives && !immutable)
            }
            None => (first, origin_lifetime, no_stale_directives),
        };
        // Rule-governed answers carry the rule's Cache-Control, as before.
        let origin_cache_control = origin_cache_control.filter(|_| rule.is_none());
        Some(StoredPolicy {
            policy,
            lifetime,
            // A metadata rule's grace is a stale-while-revalidate the origin did not give.
            swr: seconds(&dirs, "stale-while-revalidate").or_else(|| {
                rule.and_then(|r| r.metadata)
                    .map(|m| m.grace)
                    .filter(|g| !g.is_zero())
            }),
            sie: seconds(&dirs, "stale-if-error"),
            no_stale,
            rule: rule.map(|r| r.name.clone()),
            vary,
            origin_cache_control,
            date: Some(date),
            credentialed: credentials.is_some(),
            credentials: credentials.map(|c| super::key::fingerprint(&c)),
            recorded: true,
            memo: FreshMemo::default(),
        })
    }

    /// Whether the stored response may be reused for `req` without contacting the origin with
    /// `req`'s own credentials: always for a response to a request without `Authorization`;
    /// for one with, only for the credentials that last fetched or validated it.
    pub fn may_reuse(&self, req: &http::request::Parts) -> bool {
        if !self.recorded {
            return false;
        }
        if !self.credentialed {
            return true;
        }
        match (authorization(req), &self.credentials) {
            (None, None) => true,
            (Some(a), Some(fp)) => !fp.is_empty() && super::key::fingerprint(&a) == *fp,
            _ => false,
        }
    }

    /// Whether any client may reuse the stored response (it was not fetched or last validated
    /// with credentials, RFC 9111 §3.5): what the shared tier is allowed to hold.
    pub fn is_shared_reusable(&self) -> bool {
        self.recorded && !self.credentialed
    }

    /// Whether [`StoredPolicy::lookup`]'s answer to a plain GET (see [`is_plain`]) depends on
    /// the entry's age alone: any client may reuse it, it has no `Vary` and a fixed `Date`.
    fn memoizable(&self) -> bool {
        self.recorded && !self.credentialed && self.vary.is_empty() && self.date.is_some()
    }

    /// The hit path's shortcut: for a plain GET (the caller checks [`is_plain`] on the
    /// client's own headers), the headers [`StoredPolicy::lookup`] answered `Fresh` with for
    /// another plain GET while the entry had the same age in whole seconds. That answer is
    /// the same for every such request: the policy's inputs are then the age (freshness is a
    /// whole number of seconds compared with it) and fields fixed at store time. `None`:
    /// ask [`StoredPolicy::lookup`].
    pub fn fresh_for_plain_get(&self, now: SystemTime) -> Option<HeaderMap> {
        if !self.memoizable() {
            return None;
        }
        let age = self.policy.age(now).as_secs();
        match &*self.memo.0.load() {
            Some(m) if m.0 == age => Some(m.1.clone()),
            _ => None,
        }
    }

    /// Decides whether the stored response answers `req` now.
    pub fn lookup(&self, req: &http::request::Parts, now: SystemTime) -> Freshness {
        let answer = self.decide(req, now);
        if let Freshness::Fresh(h) = &answer
            && req.method == http::Method::GET
            && is_plain(&req.headers)
            && self.memoizable()
        {
            let age = self.policy.age(now).as_secs();
            self.memo.0.store(Some(Arc::new((age, h.clone()))));
        }
        answer
    }

    fn decide(&self, req: &http::request::Parts, now: SystemTime) -> Freshness {
        let mut view = normalise_vary(req, &self.vary);
        let reuse = self.may_reuse(req);
        if !reuse {
            // Revalidate with this request's credentials: the crate builds the conditional
            // request when told the client wants no stored answer without validation.
            view.headers
                .append(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        match self.policy.before_request(&view, now) {
            BeforeRequest::Fresh(parts) if reuse => {
                let mut h = parts.headers;
                if let Some(v) = self
                    .origin_cache_control
                    .as_deref()
                    .and_then(|v| HeaderValue::from_str(v).ok())
                {
                    h.insert(header::CACHE_CONTROL, v);
                }
                Freshness::Fresh(self.fix_response_headers(h, now))
            }
            // Not reached (a request with `no-cache` is never fresh); unconditional if it were.
            BeforeRequest::Fresh(_) => Freshness::Stale(req.headers.clone()),
            BeforeRequest::Stale { request, .. } => {
                // The request goes upstream with the client's own values of the Vary'd fields
                // (and its own Cache-Control).
                let mut h = request.headers;
                let client_fields = self
                    .vary
                    .iter()
                    .map(String::as_str)
                    .chain((!reuse).then_some("cache-control"));
                for name in client_fields {
                    h.remove(name);
                    for v in req.headers.get_all(name) {
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
    /// (stale serving): the stored fields with `Age` brought up to date.
    pub fn stale_headers(&self, stored: &HeaderMap, now: SystemTime) -> HeaderMap {
        let mut h = stored.clone();
        if let Ok(v) = HeaderValue::from_str(&self.policy.age(now).as_secs().to_string()) {
            h.insert(header::AGE, v);
        }
        self.fix_response_headers(h, now)
    }

    /// How long past its freshness the entry is at `now` (zero while fresh).
    pub fn staleness(&self, now: SystemTime) -> Duration {
        self.policy.age(now).saturating_sub(self.lifetime)
    }

    /// RFC 5861 §3: may be served to `req` while a background revalidation runs.
    pub fn may_serve_while_revalidating(
        &self,
        req: &http::request::Parts,
        now: SystemTime,
    ) -> bool {
        self.may_reuse(req) && !self.no_stale && self.swr.is_some_and(|w| self.staleness(now) <= w)
    }

    /// RFC 5861 §4 and `--serve-stale-on-error`: may be served to `req` when the origin fails.
    pub fn may_serve_on_error(
        &self,
        req: &http::request::Parts,
        now: SystemTime,
        default_window: Duration,
    ) -> bool {
        if self.no_stale || !self.may_reuse(req) {
            return false;
        }
        self.staleness(now) <= self.sie.unwrap_or_default().max(default_window)
    }

    /// Merges a 304 into the stored response (RFC 9111 §4.3.4) and re-derives the policy
    /// (artifact rules included). `status` and `stored` are the entry's status and fields.
    /// `None` when the 304 does not match the stored response. The merged fields hold nothing
    /// meant for one client only (the 304's `Set-Cookie` is for the client that asked).
    pub fn after_not_modified(
        &self,
        req: &http::request::Parts,
        status: StatusCode,
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
        strip_per_client(&mut nm);
        policy_view(&mut nm, false);
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
                strip_per_client(&mut h);
                match not_modified.get(header::DATE) {
                    Some(d) => {
                        h.insert(header::DATE, d.clone());
                    }
                    None => {
                        h.remove(header::DATE);
                    }
                }
                // An entry fetched without credentials stays one: the 304 to a credentialed
                // request vouches for the same representation. A credentialed entry stays
                // credentialed, now bound to the credentials that validated it.
                let mut entry_req = req.clone();
                if !self.credentialed {
                    entry_req.headers.remove(header::AUTHORIZATION);
                }
                let mut p = StoredPolicy::new(&entry_req, status, &h, now, rule)?;
                if self.credentialed && !p.credentialed {
                    p.credentialed = true;
                    p.credentials = None;
                }
                Some((p, status, h))
            }
            AfterResponse::Modified(..) => None,
        }
    }

    /// No `Warning` (obsolete), the stored `Date` (RFC 9110 §6.6.1: the origin's time; `Age`
    /// carries the time since), nothing meant for another client.
    fn fix_response_headers(&self, mut h: HeaderMap, now: SystemTime) -> HeaderMap {
        h.remove("warning");
        strip_per_client(&mut h);
        let date = self
            .date
            .clone()
            .unwrap_or_else(|| httpdate::fmt_http_date(now));
        if let Ok(v) = HeaderValue::from_str(&date) {
            h.insert(header::DATE, v);
        }
        h
    }
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
        // RFC 9111 §3: a final status the cache understands is stored with explicit
        // freshness, not without (500 is not cacheable by default).
        let status = |s: u16, h: &[(&str, &str)]| {
            StoredPolicy::new(
                &req(&[]),
                StatusCode::from_u16(s).unwrap(),
                &resp(h),
                now,
                None,
            )
        };
        for s in [400, 500, 502, 503, 504] {
            assert!(
                status(s, &[("cache-control", "max-age=60")]).is_some(),
                "{s}"
            );
            assert!(status(s, &[]).is_none(), "{s}");
        }
        assert!(status(503, &[("expires", &httpdate::fmt_http_date(now))]).is_some());
        assert!(status(404, &[]).is_some(), "cacheable by default");
        for s in [103, 206, 299, 401, 403, 407, 418, 599] {
            assert!(
                status(s, &[("cache-control", "max-age=60")]).is_none(),
                "{s}"
            );
        }
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

    /// The plain-GET shortcut answers exactly what the policy answered for the same age, and
    /// nothing when the age, the request or the entry would make the answer different.
    #[test]
    fn plain_get_shortcut_repeats_the_policys_fresh_answer() {
        let t0 = SystemTime::now() - Duration::from_secs(10);
        let date = httpdate::fmt_http_date(t0);
        let stored = resp(&[
            ("cache-control", "max-age=60"),
            ("date", &date),
            ("etag", "\"a\""),
        ]);
        let p = StoredPolicy::new(&req(&[]), StatusCode::OK, &stored, t0, None).unwrap();
        let now = SystemTime::now();
        assert!(
            p.fresh_for_plain_get(now).is_none(),
            "nothing known before a lookup"
        );
        // A request with its own Cache-Control is not plain: its answer is not remembered.
        let Freshness::Fresh(_) = p.lookup(&req(&[("cache-control", "max-stale=5")]), now) else {
            panic!("should be fresh");
        };
        assert!(p.fresh_for_plain_get(now).is_none());
        let Freshness::Fresh(full) = p.lookup(&req(&[]), now) else {
            panic!("should be fresh");
        };
        let short = p.fresh_for_plain_get(now).unwrap();
        assert_eq!(short, full);
        assert_eq!(short["age"], "10");
        // One second older: the age differs, so the policy decides again.
        assert!(
            p.fresh_for_plain_get(now + Duration::from_secs(1))
                .is_none()
        );
        // Stale: never answered fresh, so never remembered.
        let late = now + Duration::from_secs(60);
        assert!(matches!(p.lookup(&req(&[]), late), Freshness::Stale(_)));
        assert!(p.fresh_for_plain_get(late).is_none());
        // A copy (a refreshed entry) starts without the remembered answer.
        let _ = p.lookup(&req(&[]), now);
        assert!(p.clone().fresh_for_plain_get(now).is_none());

        // Entries whose answer depends on more than the age are never shortcut: Vary, and
        // a response to a request with Authorization.
        let varying = resp(&[
            ("cache-control", "max-age=60"),
            ("date", &date),
            ("vary", "accept"),
        ]);
        let p = StoredPolicy::new(&req(&[]), StatusCode::OK, &varying, t0, None).unwrap();
        assert!(matches!(p.lookup(&req(&[]), now), Freshness::Fresh(_)));
        assert!(p.fresh_for_plain_get(now).is_none());
        let public = resp(&[("cache-control", "public, max-age=60"), ("date", &date)]);
        let authed = req(&[("authorization", "Basic YTpi")]);
        let p = StoredPolicy::new(&authed, StatusCode::OK, &public, t0, None).unwrap();
        assert!(matches!(p.lookup(&authed, now), Freshness::Fresh(_)));
        assert!(p.fresh_for_plain_get(now).is_none());
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
            .after_not_modified(&req(&[]), StatusCode::OK, &stored, &nm, now, None)
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(p2.lifetime, Duration::from_secs(60));
        assert_eq!(h["cache-control"], "max-age=60");
        // A different validator does not match.
        let other = resp(&[("etag", "\"v2\"")]);
        assert!(
            p.after_not_modified(&req(&[]), StatusCode::OK, &stored, &other, now, None)
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
            .after_not_modified(&req(&[]), StatusCode::OK, &stored, &nm, now, None)
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
        assert!(p.may_serve_while_revalidating(&req(&[]), at(30)));
        assert!(!p.may_serve_while_revalidating(&req(&[]), at(50)));
        assert!(p.may_serve_on_error(&req(&[]), at(60), Duration::from_secs(7 * 86400)));
        assert!(!p.may_serve_on_error(&req(&[]), at(100), Duration::ZERO));
        let strict = StoredPolicy::new(
            &req(&[]),
            StatusCode::OK,
            &resp(&[("cache-control", "max-age=10, must-revalidate")]),
            now,
            None,
        )
        .unwrap();
        assert!(!strict.may_serve_on_error(&req(&[]), at(11), Duration::from_secs(86400)));
    }

    fn fresh(p: &StoredPolicy, r: &http::request::Parts, now: SystemTime) -> Option<HeaderMap> {
        match p.lookup(r, now) {
            Freshness::Fresh(h) => Some(h),
            Freshness::Stale(_) => None,
        }
    }

    #[test]
    fn age_is_read_by_its_first_member() {
        let now = SystemTime::now();
        let with_age = |age: &str| {
            StoredPolicy::new(
                &req(&[]),
                StatusCode::OK,
                &resp(&[("cache-control", "max-age=3600"), ("age", age)]),
                now,
                None,
            )
            .unwrap()
        };
        assert!(fresh(&with_age("7200, 0"), &req(&[]), now).is_none());
        assert!(fresh(&with_age("0, 7200"), &req(&[]), now).is_some());
        assert!(fresh(&with_age("100"), &req(&[]), now).is_some());
        // Invalid: ignored.
        assert!(fresh(&with_age("-5"), &req(&[]), now).is_some());
        assert!(fresh(&with_age("soon, 7200"), &req(&[]), now).is_some());
        // Too large for the arithmetic: capped, stale, no overflow.
        let huge = with_age("99999999999999999999999");
        assert!(fresh(&huge, &req(&[]), now).is_none());
        let age = huge.stale_headers(&HeaderMap::new(), now);
        assert_eq!(age[header::AGE], MAX_AGE_VALUE.to_string().as_str());
    }

    #[test]
    fn directive_names_are_case_insensitive() {
        let now = SystemTime::now();
        let p = |cc: &str| {
            StoredPolicy::new(
                &req(&[]),
                StatusCode::OK,
                &resp(&[("cache-control", cc)]),
                now,
                None,
            )
        };
        assert!(p("No-Store, max-age=60").is_none());
        assert!(p("PRIVATE, max-age=60").is_none());
        let nc = p("Max-Age=60, No-Cache").unwrap();
        assert!(fresh(&nc, &req(&[]), now).is_none());
        assert!(nc.no_stale);
        let ok = p("Max-Age=60").unwrap();
        assert_eq!(ok.lifetime, Duration::from_secs(60));
        let h = fresh(&ok, &req(&[]), now).unwrap();
        assert_eq!(
            h["cache-control"], "Max-Age=60",
            "served as the origin wrote it"
        );
        assert!(fresh(&ok, &req(&[("cache-control", "No-Cache")]), now).is_none());
        assert!(fresh(&ok, &req(&[("pragma", "No-Cache")]), now).is_none());
    }

    #[test]
    fn no_cache_and_s_maxage_are_not_served_stale_to_max_stale() {
        let now = SystemTime::now();
        let later = now + Duration::from_secs(120);
        let max_stale = req(&[("cache-control", "max-stale=3600")]);
        for cc in [
            "max-age=60, no-cache",
            "s-maxage=60",
            "max-age=60, proxy-revalidate",
        ] {
            let p = StoredPolicy::new(
                &req(&[]),
                StatusCode::OK,
                &resp(&[("cache-control", cc)]),
                now,
                None,
            )
            .unwrap();
            assert!(fresh(&p, &max_stale, later).is_none(), "{cc}");
        }
        // Control: without them the client may take a stale answer.
        let p = StoredPolicy::new(
            &req(&[]),
            StatusCode::OK,
            &resp(&[("cache-control", "max-age=60")]),
            now,
            None,
        )
        .unwrap();
        assert!(fresh(&p, &max_stale, later).is_some());
    }

    #[test]
    fn cached_answers_keep_the_origin_date() {
        let t0 = SystemTime::now() - Duration::from_secs(50);
        let date = httpdate::fmt_http_date(t0);
        let now = SystemTime::now();
        let stored = resp(&[
            ("cache-control", "max-age=600, stale-if-error=600"),
            ("date", &date),
        ]);
        let p = StoredPolicy::new(&req(&[]), StatusCode::OK, &stored, now, None).unwrap();
        let later = now + Duration::from_secs(30);
        assert_eq!(fresh(&p, &req(&[]), later).unwrap()["date"], date.as_str());
        assert_eq!(p.stale_headers(&stored, later)["date"], date.as_str());
        // An obsolete form is served in IMF-fixdate; none at all: when it was received.
        let p = StoredPolicy::new(
            &req(&[]),
            StatusCode::OK,
            &resp(&[
                ("cache-control", "max-age=600"),
                ("date", "Sunday, 06-Nov-94 08:49:37 GMT"),
            ]),
            now,
            None,
        )
        .unwrap();
        assert_eq!(
            fresh(&p, &req(&[]), later).unwrap()["date"],
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        let p = StoredPolicy::new(
            &req(&[]),
            StatusCode::OK,
            &resp(&[("cache-control", "max-age=600")]),
            now,
            None,
        )
        .unwrap();
        assert_eq!(
            fresh(&p, &req(&[]), later).unwrap()["date"],
            httpdate::fmt_http_date(now).as_str()
        );
    }

    #[test]
    fn a_stand_in_status_is_kept_through_a_304() {
        let now = SystemTime::now();
        let stored = resp(&[("cache-control", "max-age=0"), ("etag", "\"e\"")]);
        let p = StoredPolicy::new(
            &req(&[]),
            StatusCode::SERVICE_UNAVAILABLE,
            &stored,
            now,
            None,
        )
        .unwrap();
        let nm = resp(&[("cache-control", "max-age=60"), ("etag", "\"e\"")]);
        let (p2, status, _) = p
            .after_not_modified(
                &req(&[]),
                StatusCode::SERVICE_UNAVAILABLE,
                &stored,
                &nm,
                now,
                None,
            )
            .unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(p2.lifetime, Duration::from_secs(60));
    }

    #[test]
    fn credentialed_responses() {
        let now = SystemTime::now();
        let alice = req(&[("authorization", "Bearer alice-s3cret")]);
        let bob = req(&[("authorization", "Bearer bob")]);
        let anon = req(&[]);
        let stored = resp(&[
            (
                "cache-control",
                "public, max-age=600, stale-if-error=600, stale-while-revalidate=600",
            ),
            ("etag", "\"v1\""),
        ]);
        let p = StoredPolicy::new(&alice, StatusCode::OK, &stored, now, None).unwrap();
        assert!(fresh(&p, &alice, now).is_some());
        for other in [&bob, &anon] {
            match p.lookup(other, now) {
                Freshness::Stale(h) => {
                    assert_eq!(h["if-none-match"], "\"v1\"");
                    assert_eq!(
                        h.get("authorization"),
                        other.headers.get("authorization"),
                        "revalidated with the client's own credentials"
                    );
                    assert!(h.get("cache-control").is_none());
                }
                Freshness::Fresh(_) => panic!("served to other credentials"),
            }
            let later = now + Duration::from_secs(700);
            assert!(!p.may_serve_on_error(other, later, Duration::from_secs(86400)));
            assert!(!p.may_serve_while_revalidating(other, later));
        }
        let later = now + Duration::from_secs(700);
        assert!(p.may_serve_on_error(&alice, later, Duration::ZERO));
        // Nothing of the credentials is kept (the policy is written to disk).
        let json = serde_json::to_string(&p).unwrap();
        assert!(!json.contains("alice-s3cret"), "{json}");

        // Validated by bob: now bob's, and still not anonymous.
        let nm = resp(&[("etag", "\"v1\"")]);
        let (pb, _, _) = p
            .after_not_modified(&bob, StatusCode::OK, &stored, &nm, now, None)
            .unwrap();
        assert!(fresh(&pb, &bob, now).is_some());
        assert!(fresh(&pb, &alice, now).is_none());
        assert!(fresh(&pb, &anon, now).is_none());
        // Validated without credentials: served to requests without them.
        let (pa, _, _) = p
            .after_not_modified(&anon, StatusCode::OK, &stored, &nm, now, None)
            .unwrap();
        assert!(fresh(&pa, &anon, now).is_some());
        assert!(fresh(&pa, &alice, now).is_none());

        // An entry fetched without credentials serves everyone.
        let open = StoredPolicy::new(&anon, StatusCode::OK, &stored, now, None).unwrap();
        assert!(fresh(&open, &alice, now).is_some());
        // ... and stays so when a credentialed request validates it.
        let (po, _, _) = open
            .after_not_modified(&alice, StatusCode::OK, &stored, &nm, now, None)
            .unwrap();
        assert!(fresh(&po, &anon, now).is_some());
    }

    #[test]
    fn artifact_rules_never_apply_to_credentialed_requests() {
        let rules = Rules::default();
        let rule = rules.classify("http://h/-/a-1.0.0.tgz");
        assert!(rule.is_some());
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
        let now = SystemTime::now();
        let authed = view(&[
            ("authorization", "Basic dTpw"),
            ("cache-control", "no-cache"),
        ]);
        assert_eq!(
            authed.headers["cache-control"], "no-cache",
            "client reload kept"
        );
        assert!(StoredPolicy::new(&authed, StatusCode::OK, &HeaderMap::new(), now, rule).is_none());
        let p = StoredPolicy::new(
            &authed,
            StatusCode::OK,
            &resp(&[("cache-control", "public, max-age=60")]),
            now,
            rule,
        )
        .unwrap();
        assert_eq!(p.lifetime, Duration::from_secs(60));
        assert!(p.rule.is_none());
        // Control: without credentials the rule applies.
        let p =
            StoredPolicy::new(&view(&[]), StatusCode::OK, &HeaderMap::new(), now, rule).unwrap();
        assert!(p.lifetime >= Duration::from_secs(365 * 24 * 3600));
    }

    #[test]
    fn entries_from_before_credentials_were_recorded_are_revalidated_once() {
        let now = SystemTime::now();
        let stored = resp(&[("cache-control", "public, max-age=600"), ("etag", "\"v1\"")]);
        let p = StoredPolicy::new(&req(&[]), StatusCode::OK, &stored, now, None).unwrap();
        let mut json = serde_json::to_value(&p).unwrap();
        let obj = json.as_object_mut().unwrap();
        for field in ["credentialed", "credentials", "recorded", "date"] {
            obj.remove(field);
        }
        let legacy: StoredPolicy = serde_json::from_value(json).unwrap();
        assert!(fresh(&legacy, &req(&[]), now).is_none());
        let later = now + Duration::from_secs(700);
        assert!(!legacy.may_serve_on_error(&req(&[]), later, Duration::from_secs(86400)));
        let (p2, _, _) = legacy
            .after_not_modified(
                &req(&[]),
                StatusCode::OK,
                &stored,
                &resp(&[("etag", "\"v1\"")]),
                now,
                None,
            )
            .unwrap();
        assert!(fresh(&p2, &req(&[]), now).is_some());
    }

    #[test]
    fn set_cookie_is_never_served_from_the_cache() {
        let now = SystemTime::now();
        let stored = resp(&[
            ("cache-control", "public, max-age=600"),
            ("set-cookie", "sid=1"),
        ]);
        let p = StoredPolicy::new(&req(&[]), StatusCode::OK, &stored, now, None).unwrap();
        let h = fresh(&p, &req(&[]), now).unwrap();
        assert!(h.get("set-cookie").is_none());
        assert!(p.stale_headers(&stored, now).get("set-cookie").is_none());
        let json = serde_json::to_string(&p).unwrap();
        assert!(!json.contains("sid=1"), "{json}");
        // Without `public` a response that set a cookie is revalidated on every use.
        let p = StoredPolicy::new(
            &req(&[]),
            StatusCode::OK,
            &resp(&[("cache-control", "max-age=600"), ("set-cookie", "sid=1")]),
            now,
            None,
        )
        .unwrap();
        assert!(fresh(&p, &req(&[]), now).is_none());
        // A 304's cookie is not merged into the entry.
        let (_, _, merged) = p
            .after_not_modified(
                &req(&[]),
                StatusCode::OK,
                &stored,
                &resp(&[("set-cookie", "sid=2")]),
                now,
                None,
            )
            .unwrap();
        assert!(merged.get("set-cookie").is_none());
    }

    proptest::proptest! {
        /// Whatever the origin's Age, Cache-Control and Date, building the policy and looking
        /// it up later never panics (the crate's Duration arithmetic included).
        #[test]
        fn response_fields_never_panic(
            age in "[ -~]{0,24}",
            cc in "[ -~]{0,40}",
            date in "[ -~]{0,32}",
            status in 100u16..600,
            later in 0u64..(100 * 365 * 86400),
        ) {
            let mut h = HeaderMap::new();
            let fields = [("age", &age), ("cache-control", &cc), ("date", &date)];
            for (n, v) in fields.into_iter().chain([("expires", &date)]) {
                if let Ok(v) = HeaderValue::from_str(v) {
                    h.insert(n, v);
                }
            }
            let now = SystemTime::now();
            let Ok(status) = StatusCode::from_u16(status) else { return Ok(()); };
            if let Some(p) = StoredPolicy::new(&req(&[]), status, &h, now, None) {
                let at = now + Duration::from_secs(later);
                let _ = p.lookup(&req(&[("cache-control", "max-stale")]), at);
                let _ = p.stale_headers(&h, at);
                let _ = p.may_serve_on_error(&req(&[]), at, Duration::from_secs(1 << 40));
            }
        }
    }
}

//! Cache keys. The primary key is the normalised absolute URL (scheme and host lower-cased,
//! default port dropped, path and query as sent). The host is the one the connection is made
//! for, trailing dot included: `registry.` is an absolute DNS name while `registry` goes
//! through the resolver's search list (Kubernetes pods search several domains with
//! `ndots:5`), so the two can be different hosts and must not share entries. A stored
//! response that names request headers in `Vary` is one variant of its URL; the variant key
//! holds the values of those headers, normalised only where the field's definition makes two
//! forms equivalent (RFC 9111 §4.1), so `gzip,deflate` and `GZIP, deflate` select the same
//! variant while `Bearer AbCdEf` and `Bearer aBcDeF` do not.

use std::fmt;
use std::sync::OnceLock;

use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::http::target::Target;

/// The URL a response is stored under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PrimaryKey {
    url: String,
    /// Hex SHA-256 of the URL: the name of the entry's directory and its lock and memory
    /// key, computed once per request.
    hex: String,
}

impl PrimaryKey {
    /// An `http` URL: `target` is the request's checked target; `path_and_query` as sent.
    pub fn new(target: &Target, path_and_query: &str) -> PrimaryKey {
        Self::with_scheme(false, target, path_and_query)
    }

    /// The key of a request URI (`http` or `https`) with its checked target.
    pub fn for_uri(uri: &http::Uri, target: &Target) -> PrimaryKey {
        let pq = uri.path_and_query().map_or("/", |p| p.as_str());
        Self::sibling(uri, target, pq)
    }

    /// The key of `path_and_query` on the origin of the request URI `uri` (a relative
    /// `Location`, say).
    pub fn sibling(uri: &http::Uri, target: &Target, path_and_query: &str) -> PrimaryKey {
        let https = uri
            .scheme_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"));
        Self::with_host(
            https,
            &connection_host(uri, target),
            target.port,
            path_and_query,
        )
    }

    fn with_scheme(https: bool, target: &Target, path_and_query: &str) -> PrimaryKey {
        Self::with_host(https, &target.host, target.port, path_and_query)
    }

    fn with_host(https: bool, host: &str, port: u16, path_and_query: &str) -> PrimaryKey {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let (scheme, default_port) = if https { ("https", 443) } else { ("http", 80) };
        let url = if port == default_port {
            format!("{scheme}://{host}{path_and_query}")
        } else {
            format!("{scheme}://{host}:{port}{path_and_query}")
        };
        PrimaryKey::from_url(url)
    }

    /// A key from an already normalised URL (as stored in an entry's metadata).
    pub fn from_url(url: String) -> PrimaryKey {
        let hex = hex::encode(Sha256::digest(url.as_bytes()));
        PrimaryKey { url, hex }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }
}

/// The host the upstream connection is made for: the URI's own host (the connectors resolve
/// or send exactly that), lower-cased, without IPv6 brackets. The checked target's host has
/// any trailing dot trimmed for access rules; the key must keep it (see the module doc).
fn connection_host(uri: &http::Uri, target: &Target) -> String {
    match uri.host() {
        Some(h) => {
            let h = h
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase();
            // A URI whose host is not the checked target's (never for forwarded requests)
            // keys on the target.
            if h.trim_end_matches('.') == target.host {
                h
            } else {
                target.host.clone()
            }
        }
        None => target.host.clone(),
    }
}

impl fmt::Display for PrimaryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// The `Vary` selection of one stored response: header names and the normalised values the
/// request that produced it carried (`None` when absent).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Variant {
    pub fields: Vec<(String, Option<String>)>,
    /// `Vary: *`: never matches another request.
    pub star: bool,
}

impl Variant {
    /// The variant a response with `vary` selects for a request with `req` headers.
    pub fn of(vary: &HeaderMap, req: &HeaderMap) -> Variant {
        let (names, star) = vary_names(vary);
        let fields = names
            .into_iter()
            .map(|n| {
                let v = normalised(req, &n);
                (n, v)
            })
            .collect();
        Variant { fields, star }
    }

    /// Whether a new request selects this stored variant.
    pub fn matches(&self, req: &HeaderMap) -> bool {
        !self.star && self.fields.iter().all(|(n, v)| normalised(req, n) == *v)
    }

    /// A short stable id (file name on disk); empty selection hashes like any other.
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        for (n, v) in &self.fields {
            h.update(n.as_bytes());
            h.update([0]);
            match v {
                Some(v) => {
                    h.update([1]);
                    h.update(v.as_bytes());
                }
                None => h.update([2]),
            }
            h.update([0xff]);
        }
        if self.star {
            h.update(b"*");
        }
        hex::encode(&h.finalize()[..16])
    }
}

/// The field names a response's `Vary` lists (lower-cased, sorted, once each, without `*`),
/// and whether it lists `*`.
pub(crate) fn vary_names(h: &HeaderMap) -> (Vec<String>, bool) {
    let mut names: Vec<String> = h
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    let star = names.iter().any(|n| n == "*");
    names.retain(|n| n != "*");
    (names, star)
}

/// How two values of a request field compare for `Vary`. RFC 9111 §4.1 allows "adding or
/// removing whitespace, where allowed in the header field's syntax; combining multiple header
/// field lines ...; normalizing both header field values in a way that is known to have
/// identical semantics, according to the header field's specification (e.g., ...
/// case-normalization, where values are defined to be case-insensitive)".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Equivalence {
    /// Any field this cache does not know: byte for byte, each line without the optional
    /// whitespace at its ends (RFC 9110 §5.5: not part of the value).
    Exact,
    /// A list of case-insensitive tokens with parameters: content codings (RFC 9110 §8.4.1),
    /// charsets (§8.3.2), language ranges (RFC 4647 §2), all with `;q=` weights (§12.4.2).
    Tokens,
    /// `Accept`: media ranges whose type, subtype and parameter names are case-insensitive
    /// (RFC 9110 §8.3.1); parameter values are kept as sent.
    MediaRanges,
    /// Credentials (`Authorization`, `Proxy-Authorization`, `Cookie`): compared exactly, but
    /// through a keyed fingerprint ([`fingerprint`]), so a `Vary` on them never puts the
    /// credentials into a key or a file on disk.
    Credentials,
}

fn equivalence(name: &str) -> Equivalence {
    match name {
        "accept-encoding" | "accept-charset" | "accept-language" => Equivalence::Tokens,
        "accept" => Equivalence::MediaRanges,
        "authorization" | "proxy-authorization" | "cookie" => Equivalence::Credentials,
        _ => Equivalence::Exact,
    }
}

/// Whether the variant key changes the values of `name` (the policy view then needs them
/// replaced by the normalised form).
pub(crate) fn is_normalised_field(name: &str) -> bool {
    equivalence(name) != Equivalence::Exact
}

/// The values of `name` in `req` in the form two equivalent requests share (see
/// [`Equivalence`]); `None` when absent. Bytes outside printable ASCII are escaped, so the
/// form is injective (distinct byte strings never collide) and a valid field value for lists.
pub(crate) fn normalised(req: &HeaderMap, name: &str) -> Option<String> {
    let mut values = req.get_all(name).iter().peekable();
    values.peek()?;
    let eq = equivalence(name);
    if eq == Equivalence::Credentials {
        let lines: Vec<&[u8]> = values.map(|v| trim_ows(v.as_bytes())).collect();
        return Some(format!("fp-{}", fingerprint(&lines.join(&b'\n'))));
    }
    if eq == Equivalence::Exact {
        // Lines are kept apart: combining them is only allowed for list-based fields.
        return Some(
            values
                .map(|v| escape(trim_ows(v.as_bytes())))
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
    let items: Vec<String> = values
        .flat_map(|v| split_outside_quotes(v.as_bytes(), b','))
        .filter_map(|item| list_item(item, eq))
        .collect();
    Some(items.join(", "))
}

/// One list member: parameters split off at `;` with the whitespace around `;` and `=` gone
/// (`OWS ";" OWS` and `BWS "=" BWS`), lower-cased as the field allows.
fn list_item(item: &[u8], eq: Equivalence) -> Option<String> {
    let mut pieces = split_outside_quotes(item, b';').into_iter().map(trim_ows);
    let head = pieces.next().filter(|h| !h.is_empty())?;
    let mut out = escape(&head.to_ascii_lowercase());
    for p in pieces.filter(|p| !p.is_empty()) {
        let (k, v) = match p.iter().position(|&b| b == b'=') {
            Some(i) => (trim_ows(&p[..i]), Some(trim_ows(&p[i + 1..]))),
            None => (p, None),
        };
        out.push(';');
        out.push_str(&escape(&k.to_ascii_lowercase()));
        if let Some(v) = v {
            out.push('=');
            let weight = k.eq_ignore_ascii_case(b"q");
            if eq == Equivalence::Tokens || weight {
                out.push_str(&escape(&v.to_ascii_lowercase()));
            } else {
                out.push_str(&escape(v));
            }
        }
    }
    Some(out)
}

/// Splits at `sep` except inside quoted strings (RFC 9110 §5.6.4, with `\` escapes).
fn split_outside_quotes(v: &[u8], sep: u8) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &b) in v.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            out.push(&v[start..i]);
            start = i + 1;
        }
    }
    out.push(&v[start..]);
    out
}

/// Without the optional whitespace (SP, HTAB) at both ends.
fn trim_ows(v: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    &v[start..end]
}

fn escape(v: &[u8]) -> String {
    v.escape_ascii().to_string()
}

/// One stored response: the hex hash of its URL and its variant id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKey {
    pub primary: String,
    pub variant: String,
}

/// A fingerprint of credentials that tells two requests' credentials apart without keeping
/// them: HMAC-SHA256 under a key made at start and never written anywhere, so entries on disk
/// hold nothing that can be tested against guessed passwords (after a restart their
/// fingerprints match nothing and credentialed entries are revalidated). Empty when no key
/// could be made (then credentials never match).
pub(crate) fn fingerprint(credentials: &[u8]) -> String {
    static KEY: OnceLock<Option<ring::hmac::Key>> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new()).ok()
    });
    match key {
        Some(k) => hex::encode(ring::hmac::sign(k, credentials).as_ref()),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn primary_key_normalises_default_port_and_case() {
        let t = |h: &str, p| Target {
            host: h.into(),
            port: p,
        };
        assert_eq!(
            PrimaryKey::new(&t("example.com", 80), "/a?b").url(),
            "http://example.com/a?b"
        );
        assert_eq!(
            PrimaryKey::new(&t("example.com", 8080), "/").url(),
            "http://example.com:8080/"
        );
        assert_eq!(
            PrimaryKey::new(&t("::1", 81), "/").url(),
            "http://[::1]:81/"
        );
    }

    #[test]
    fn trailing_dot_is_kept_as_the_connection_keeps_it() {
        let key = |u: &str| {
            let uri: http::Uri = u.parse().unwrap();
            let t = crate::http::target::absolute(&uri).unwrap();
            PrimaryKey::for_uri(&uri, &t).url().to_string()
        };
        assert_eq!(key("http://LocalHost:8080/k"), "http://localhost:8080/k");
        assert_eq!(key("http://LocalHost.:8080/k"), "http://localhost.:8080/k");
        assert_eq!(
            key("https://Registry.Example.org./a"),
            "https://registry.example.org./a"
        );
        assert_eq!(key("http://[::1]:81/"), "http://[::1]:81/");
        let uri: http::Uri = "https://h.example.:8443/a?b".parse().unwrap();
        let t = crate::http::target::absolute(&uri).unwrap();
        assert_eq!(
            PrimaryKey::sibling(&uri, &t, "/c").url(),
            "https://h.example.:8443/c"
        );
    }

    #[test]
    fn vary_matching_is_normalised() {
        let vary = h(&[("vary", "Accept-Encoding, accept")]);
        let v = Variant::of(
            &vary,
            &h(&[
                ("accept-encoding", "gzip,  deflate"),
                ("accept", "application/json"),
            ]),
        );
        assert!(v.matches(&h(&[
            ("accept-encoding", "GZIP, deflate"),
            ("accept", "application/json")
        ])));
        assert!(!v.matches(&h(&[
            ("accept-encoding", "br"),
            ("accept", "application/json")
        ])));
        assert!(!v.matches(&h(&[("accept", "application/json")])));
        let none = Variant::of(&vary, &HeaderMap::new());
        assert!(none.matches(&HeaderMap::new()));
        assert_ne!(v.id(), none.id());
    }

    #[test]
    fn vary_on_a_case_sensitive_field_is_exact() {
        let vary = h(&[("vary", "Authorization, Cookie, X-Token")]);
        let v = Variant::of(
            &vary,
            &h(&[
                ("authorization", "Bearer AbCdEf"),
                ("cookie", "a=1, b=2"),
                ("x-token", "t1"),
                ("x-token", "t2"),
            ]),
        );
        let with = |auth: &str, cookie: &str, tokens: &[&str]| {
            let mut m = h(&[("authorization", auth), ("cookie", cookie)]);
            for t in tokens {
                m.append("x-token", t.parse().unwrap());
            }
            v.matches(&m)
        };
        assert!(with("Bearer AbCdEf", "a=1, b=2", &["t1", "t2"]));
        assert!(with(" Bearer AbCdEf ", "a=1, b=2", &["t1", "t2"]));
        assert!(!with("Bearer aBcDeF", "a=1, b=2", &["t1", "t2"]));
        assert!(!with("bearer AbCdEf", "a=1, b=2", &["t1", "t2"]));
        assert!(!with("Bearer AbCdEf", "a=1,b=2", &["t1", "t2"]));
        assert!(!with("Bearer AbCdEf", "a=1, b=2", &["t1, t2"]));
        assert!(!with("Bearer AbCdEf", "a=1, b=2", &["t2", "t1"]));
    }

    #[test]
    fn varied_credentials_are_kept_only_as_fingerprints() {
        let vary = h(&[("vary", "Authorization, Cookie, Proxy-Authorization")]);
        let req = h(&[
            ("authorization", "Basic c2VjcmV0OnB3"),
            ("cookie", "session=TOPSECRET"),
            ("proxy-authorization", "Basic cHJveHk6cHc="),
        ]);
        let v = Variant::of(&vary, &req);
        let text = format!("{v:?} {}", serde_json::to_string(&v).unwrap());
        for secret in ["c2VjcmV0OnB3", "TOPSECRET", "cHJveHk6cHc="] {
            assert!(!text.contains(secret), "{secret} kept in {text}");
        }
        assert!(v.matches(&req));
        let other = h(&[
            ("authorization", "Basic b3RoZXI6cHc="),
            ("cookie", "session=TOPSECRET"),
            ("proxy-authorization", "Basic cHJveHk6cHc="),
        ]);
        assert!(!v.matches(&other));
    }

    #[test]
    fn list_fields_normalise_whitespace_and_case_only_where_defined() {
        let n = |name: &str, v: &str| normalised(&h(&[(name, v)]), name).unwrap();
        assert_eq!(
            n("accept-encoding", " GZip ;Q=0.5 ,, br"),
            n("accept-encoding", "gzip;q=0.5, br")
        );
        assert_eq!(n("accept-language", "en-GB"), n("accept-language", "en-gb"));
        assert_eq!(
            n("accept", "Application/JSON ; Charset=utf-8"),
            n("accept", "application/json;charset=utf-8")
        );
        // A media type parameter's value is not defined as case-insensitive.
        assert_ne!(
            n("accept", "application/x; profile=\"A\""),
            n("accept", "application/x; profile=\"a\"")
        );
        // A comma inside a quoted string does not split the list.
        assert_ne!(
            n("accept", "a/b; p=\"x, y\""),
            n("accept", "a/b; p=\"x,y\"")
        );
        // Values that are not UTF-8 do not collide.
        let raw = |b: &[u8]| {
            let mut m = HeaderMap::new();
            m.insert("x-k", http::HeaderValue::from_bytes(b).unwrap());
            normalised(&m, "x-k").unwrap()
        };
        assert_ne!(raw(b"\xff"), raw(b"\xfe"));
        assert_ne!(raw(b"\\xff"), raw(b"\xff"));
    }

    #[test]
    fn vary_star_never_matches() {
        let v = Variant::of(&h(&[("vary", "*")]), &HeaderMap::new());
        assert!(!v.matches(&HeaderMap::new()));
    }

    #[test]
    fn no_vary_matches_everything() {
        let v = Variant::of(&HeaderMap::new(), &h(&[("accept", "x")]));
        assert!(v.matches(&h(&[("accept", "y")])));
    }

    proptest::proptest! {
        /// Two different values of a field compared exactly never share a key.
        #[test]
        fn exact_fields_never_collide(
            a in proptest::collection::vec(proptest::num::u8::ANY, 0..12),
            b in proptest::collection::vec(proptest::num::u8::ANY, 0..12),
        ) {
            let (Ok(va), Ok(vb)) =
                (http::HeaderValue::from_bytes(&a), http::HeaderValue::from_bytes(&b))
            else {
                return Ok(());
            };
            let trim = |v: &[u8]| trim_ows(v).to_vec();
            let (mut ma, mut mb) = (HeaderMap::new(), HeaderMap::new());
            ma.insert("authorization", va);
            mb.insert("authorization", vb);
            let same = normalised(&ma, "authorization") == normalised(&mb, "authorization");
            proptest::prop_assert_eq!(same, trim(&a) == trim(&b));
        }

        #[test]
        fn list_fields_never_panic(v in "[ -~]{0,40}") {
            let mut m = HeaderMap::new();
            if let Ok(h) = http::HeaderValue::from_str(&v) {
                m.insert("accept", h.clone());
                m.insert("accept-encoding", h);
                let _ = normalised(&m, "accept");
                let _ = normalised(&m, "accept-encoding");
            }
        }
    }
}

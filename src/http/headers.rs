//! Hop-by-hop header rules and `Via`: small pure functions, each quoting the RFC it follows.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The pseudonym cuttle writes in `Via` (RFC 9110 §7.6.3 allows a pseudonym for the host).
pub const VIA_PSEUDONYM: &str = "cuttle";

/// Headers that are hop-by-hop by definition, whatever `Connection` says.
///
/// RFC 9110 §7.6.1: "Intermediaries MUST parse a received Connection header field before a
/// message is forwarded and, for each connection-option in this field, remove any header or
/// trailer field(s) from the message with the same name as the connection-option, and then
/// remove the Connection header field itself". It also names `Proxy-Connection`,
/// `Keep-Alive`, `TE`, `Transfer-Encoding` and `Upgrade` as fields a proxy must not forward
/// blindly; `Proxy-Authorization` (§11.7.2) and `Proxy-Authenticate` (§11.7.1) are consumed by
/// the proxy they are meant for. `Trailer` announces fields of this hop's framing.
const ALWAYS_HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Whether `Connection` (every instance of it) lists `token`, case-insensitively.
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The protocol an upgrade request asks for (RFC 9110 §7.8: `Upgrade` is only meaningful
/// when `Connection: upgrade` is present too).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    if connection_has(headers, "upgrade") {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Removes every hop-by-hop header (see [`ALWAYS_HOP_BY_HOP`] and every name listed in any
/// `Connection` header). With `keep_upgrade`, the upgrade handshake is re-sent to the next
/// hop as `Connection: upgrade` + the original `Upgrade` value, since RFC 9110 §7.8 lets an
/// intermediary pass an upgrade along when it forwards it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let upgrade = if keep_upgrade {
        upgrade_protocol(headers)
    } else {
        None
    };
    let listed: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(&name);
    }
    for name in ALWAYS_HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(proto) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto);
    }
}

/// The `Content-Length` of a message, when present and valid.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Removes a received `Content-Length` that sits beside a `Transfer-Encoding`; returns
/// whether it did.
///
/// RFC 9112 §6.3 item 3: "If a message is received with both a Transfer-Encoding and a
/// Content-Length header field, the Transfer-Encoding overrides the Content-Length. [...] An
/// intermediary that chooses to forward the message MUST first remove the received
/// Content-Length field and process the Transfer-Encoding (as described below) prior to
/// forwarding the message downstream." hyper frames the body by the Transfer-Encoding but
/// leaves the length in the headers, where it would be forwarded (and stored) as the length
/// of a body it does not describe.
pub fn drop_length_beside_transfer_coding(headers: &mut HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        && headers.remove(header::CONTENT_LENGTH).is_some()
}

/// Whether a request's `Transfer-Encoding` (every line of it) is absent or exactly one
/// `chunked`, the only transfer coding cuttle accepts on a request.
///
/// RFC 9112 §6.3 item 4: "If a Transfer-Encoding header field is present in a request and the
/// chunked transfer coding is not the final encoding, the message body length cannot be
/// determined reliably; the server MUST respond with the 400 (Bad Request) status code and
/// then close the connection." §6.1: "A sender MUST NOT apply the chunked transfer coding more
/// than once to a message body". Codings before `chunked` (`gzip, chunked`,
/// `identity, chunked`) are refused too: cuttle does not decode them, and forwarding the
/// content re-framed without them would hand the next hop bytes it cannot interpret. Empty list
/// elements are ignored (RFC 9110 §5.6.1.2).
pub fn request_transfer_coding_ok(headers: &HeaderMap) -> bool {
    let mut codings = Vec::new();
    for v in headers.get_all(header::TRANSFER_ENCODING) {
        let Ok(v) = v.to_str() else {
            return false;
        };
        codings.extend(v.split(',').map(str::trim).filter(|c| !c.is_empty()));
    }
    match codings.as_slice() {
        [] => !headers.contains_key(header::TRANSFER_ENCODING),
        [only] => only.eq_ignore_ascii_case("chunked"),
        _ => false,
    }
}

/// Appends cuttle to `Via` (RFC 9110 §7.6.3: "A proxy MUST send an appropriate Via header
/// field ... in each message that it forwards"), keeping earlier hops in order.
pub fn append_via(headers: &mut HeaderMap, version: http::Version) {
    let proto = match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    };
    let ours = format!("{proto} {VIA_PSEUDONYM}");
    let joined = headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .chain(std::iter::once(ours.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(header::VIA, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_beside_transfer_encoding_goes() {
        let mut h = map(&[("content-length", "5"), ("transfer-encoding", "chunked")]);
        assert!(drop_length_beside_transfer_coding(&mut h));
        assert!(!h.contains_key("content-length"));
        assert_eq!(h["transfer-encoding"], "chunked");
        // A coding hyper reads to EOF overrides the length just the same.
        let mut h = map(&[("content-length", "5"), ("transfer-encoding", "gzip")]);
        assert!(drop_length_beside_transfer_coding(&mut h));
        assert!(!h.contains_key("content-length"));
        // Alone, the length is the framing and stays.
        let mut h = map(&[("content-length", "5")]);
        assert!(!drop_length_beside_transfer_coding(&mut h));
        assert_eq!(h["content-length"], "5");
    }

    #[test]
    fn only_a_lone_chunked_request_coding_is_accepted() {
        let ok = |lines: &[&str]| {
            let pairs: Vec<(&str, &str)> =
                lines.iter().map(|l| ("transfer-encoding", *l)).collect();
            request_transfer_coding_ok(&map(&pairs))
        };
        assert!(ok(&[]));
        assert!(ok(&["chunked"]));
        assert!(ok(&["Chunked"]));
        assert!(ok(&[" chunked "]));
        assert!(ok(&[", chunked"]));
        assert!(!ok(&["identity, chunked"]));
        assert!(!ok(&["identity", "chunked"]));
        assert!(!ok(&["gzip, chunked"]));
        assert!(!ok(&["chunked, chunked"]));
        assert!(!ok(&["chunked", "chunked"]));
        assert!(!ok(&["chunked, gzip"]));
        assert!(!ok(&["identity"]));
        assert!(!ok(&[""]));
        assert!(!ok(&["chunkedx"]));
        let mut h = HeaderMap::new();
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_bytes(b"chunked\xff").unwrap(),
        );
        assert!(!request_transfer_coding_ok(&h));
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_every_connection_header_and_listed_names() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Foo"),
            ("connection", "x-bar"),
            ("x-foo", "1"),
            ("x-bar", "2"),
            ("x-keep", "3"),
            ("proxy-connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic c2VjcmV0"),
            ("proxy-authenticate", "Basic"),
            ("transfer-encoding", "chunked"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "3");
    }

    #[test]
    fn keeps_upgrade_when_upgrading() {
        let mut h = map(&[
            ("connection", "Upgrade, x-foo"),
            ("upgrade", "websocket"),
            ("x-foo", "1"),
            ("sec-websocket-key", "abc"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert!(h.get("x-foo").is_none());
        assert_eq!(h["sec-websocket-key"], "abc");
    }

    #[test]
    fn upgrade_needs_connection_token() {
        let h = map(&[("upgrade", "websocket")]);
        assert!(upgrade_protocol(&h).is_none());
    }

    #[test]
    fn via_appends_in_order() {
        let mut h = map(&[("via", "1.0 fred"), ("via", "1.1 p.example")]);
        append_via(&mut h, http::Version::HTTP_11);
        assert_eq!(h[header::VIA], "1.0 fred, 1.1 p.example, 1.1 cuttle");
        let mut h = HeaderMap::new();
        append_via(&mut h, http::Version::HTTP_10);
        assert_eq!(h[header::VIA], "1.0 cuttle");
    }
}

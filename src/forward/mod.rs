//! Forwarding of absolute-form requests: the one path every plain HTTP request (and every
//! request decrypted from an intercepted tunnel) takes. It checks the destination, rewrites
//! headers for the next hop, and sends GET and HEAD through the cache ([`cached`]); anything
//! else goes straight upstream ([`exchange`]: the route, failover while the request body is
//! untouched, the response streamed back, upgrades bridged, the log written when the body
//! ends). Non-error answers to unsafe methods invalidate what the cache holds for the URL.

pub mod cached;
pub mod exchange;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use crate::error::{ProxyError, chain};
use crate::http::body::{Body, boxed};
use crate::http::headers::{
    append_via, request_transfer_coding_ok, strip_hop_by_hop, upgrade_protocol,
};
use crate::http::target::{self, Target};
use crate::state::Scope;
use crate::telemetry::record::{AccessRecord, ResultCode};
use exchange::{Outgoing, respond, send};

#[tracing::instrument(level = "debug", skip_all, fields(method = %req.method(), url = %rec.url))]
pub async fn handle(
    scope: &Scope,
    req: Request<Incoming>,
    rec: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    rec.result = ResultCode::TcpMiss;
    if !request_transfer_coding_ok(req.headers()) {
        return Err(ProxyError::ClientBadRequest(
            "Transfer-Encoding must be a lone `chunked`".into(),
        ));
    }
    let target = target::absolute(req.uri())?;
    scope.snap.policy.check_destination(&target, false)?;

    let (mut parts, body) = req.into_parts();
    let upgrade = upgrade_protocol(&parts.headers);
    let client_upgrade = match upgrade {
        Some(_) => parts.extensions.remove::<OnUpgrade>(),
        None => None,
    };
    strip_hop_by_hop(&mut parts.headers, upgrade.is_some());
    // RFC 9112 §3.2.2: a proxy MUST ignore a received Host and use the URI's authority;
    // hyper-util writes it from the URI.
    parts.headers.remove(header::HOST);
    append_via(&mut parts.headers, parts.version);
    let out = Outgoing {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
    };

    if let Some(cache) = scope.state.cache.clone() {
        if is_purge(&out.method)
            && cache
                .settings
                .purge_allow
                .iter()
                .any(|n| n.contains(&crate::access::hosts::canonical_ip(scope.conn.peer.ip())))
        {
            return purge(scope, &cache, &target, &out, rec).await;
        }
        // A GET with a body (Elasticsearch-style) is forwarded, never cached: the body
        // would be part of what selects the response.
        let cacheable_method = out.method == Method::GET || out.method == Method::HEAD;
        if cacheable_method && upgrade.is_none() && http_body::Body::is_end_stream(&body) {
            return cached::handle(scope, &cache, &target, &out, rec).await;
        }
    }

    let unsafe_method = !matches!(
        out.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    let body = boxed(body.map_err(client_body_error));
    let resp = send(scope, &target, &out, body, rec).await?;
    if unsafe_method
        && let Some(cache) = &scope.state.cache
        && (resp.status().is_success() || resp.status().is_redirection())
    {
        invalidate_after_unsafe(cache, &target, &out, resp.headers()).await;
    }
    respond(scope, resp, client_upgrade, rec)
}

/// Squid's `PURGE` method, compared by name: a method built at run time could only fall
/// back to some other method if building it failed.
const PURGE: &str = "PURGE";

fn is_purge(method: &Method) -> bool {
    method.as_str() == PURGE
}

/// A failure reading the client's request body (bad chunk framing, too many trailers, the
/// client going away) is the client's error, 400, whatever the upstream exchange it was
/// feeding makes of it: hyper-util returns it inside its own error, where
/// [`exchange::map_client_error`] finds it.
pub(crate) fn client_body_error(e: hyper::Error) -> ProxyError {
    ProxyError::ClientBadRequest(format!("reading the request body: {}", chain(&e)))
}

/// RFC 9111 §4.4: a non-error response to an unsafe method invalidates the target URI and the
/// `Location` / `Content-Location` URIs on the same origin.
async fn invalidate_after_unsafe(
    cache: &crate::cache::Cache,
    target: &Target,
    out: &Outgoing,
    resp: &http::HeaderMap,
) {
    use crate::cache::key::PrimaryKey;
    cache
        .invalidate(&PrimaryKey::for_uri(&out.uri, target))
        .await;
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(v) = resp.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let Ok(uri) = v.parse::<http::Uri>() else {
            continue;
        };
        let key = match uri.authority() {
            None => uri
                .path_and_query()
                .filter(|p| p.as_str().starts_with('/'))
                .map(|pq| PrimaryKey::sibling(&out.uri, target, pq.as_str())),
            Some(_) => target::absolute(&uri)
                .ok()
                .filter(|t| t == target)
                .map(|t| PrimaryKey::for_uri(&uri, &t)),
        };
        if let Some(key) = key {
            cache.invalidate(&key).await;
        }
    }
}

/// `PURGE url` from an allowed client: drops every stored variant of the URL.
async fn purge(
    scope: &Scope,
    cache: &crate::cache::Cache,
    target: &Target,
    out: &Outgoing,
    rec: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    let key = crate::cache::key::PrimaryKey::for_uri(&out.uri, target);
    let found = cache.invalidate(&key).await;
    let (status, text) = if found {
        (StatusCode::OK, format!("purged {key}\n"))
    } else {
        (StatusCode::NOT_FOUND, format!("not in cache: {key}\n"))
    };
    tracing::info!(url = %key, found, "purge");
    rec.result = ResultCode::TcpPurge;
    rec.status = status.as_u16();
    rec.bytes = text.len() as u64;
    scope.state.log.write(rec);
    let mut resp = Response::new(crate::http::body::full(text));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_is_recognised_by_name_only() {
        assert!(is_purge(&Method::from_bytes(b"PURGE").unwrap()));
        for m in [Method::GET, Method::HEAD, Method::DELETE] {
            assert!(!is_purge(&m), "{m}");
        }
        // Methods are case-sensitive (RFC 9110 §9.1).
        assert!(!is_purge(&Method::from_bytes(b"purge").unwrap()));
    }
}

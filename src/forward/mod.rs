//! Forwarding of absolute-form requests: the one path every plain HTTP request takes. It
//! checks the destination, rewrites headers for the next hop, picks the route (direct or the
//! parents in order, failing over while the request body is still untouched), streams the
//! response back, passes WebSocket-style upgrades through, and logs when the body ends.

pub mod cached;
pub mod client;

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::app::State;
use crate::error::{ProxyError, chain, find_in_chain};
use crate::http::body::{Body, BodyEnd, CountingBody, IdleTimeoutBody, ReplaySlot, boxed};
use crate::http::headers::{
    append_via, request_transfer_coding_ok, strip_hop_by_hop, upgrade_protocol,
};
use crate::http::target::{self, Target};
use crate::server::dispatch::ConnCtx;
use crate::telemetry::AccessRecord;
use crate::tunnel::bridge;
use crate::upstream::Route;
use client::Hop;

/// The request head to send upstream; rebuilt for each attempt.
struct Outgoing {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
}

impl Outgoing {
    fn request(&self, body: Body) -> Request<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

#[tracing::instrument(skip_all, fields(method = %req.method(), url = %rec.url))]
pub async fn handle(
    state: Arc<State>,
    ctx: &ConnCtx,
    req: Request<Incoming>,
    rec: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    rec.result = "TCP_MISS";
    if !request_transfer_coding_ok(req.headers()) {
        return Err(ProxyError::ClientBadRequest(
            "Transfer-Encoding must be a lone `chunked`".into(),
        ));
    }
    let target = target::absolute(req.uri())?;
    state.dynamic().policy.check_destination(&target, false)?;

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

    if let Some(cache) = state.cache.clone() {
        if is_purge(&out.method)
            && cache
                .settings
                .purge_allow
                .iter()
                .any(|n| n.contains(&crate::access::hosts::canonical_ip(ctx.peer.ip())))
        {
            return purge(&state, &cache, &target, &out, rec).await;
        }
        // A GET with a body (Elasticsearch-style) is forwarded, never cached: the body
        // would be part of what selects the response.
        let cacheable_method = out.method == Method::GET || out.method == Method::HEAD;
        if cacheable_method && upgrade.is_none() && http_body::Body::is_end_stream(&body) {
            return cached::handle(&state, &cache, ctx, &target, &out, rec).await;
        }
    }

    let unsafe_method = !matches!(
        out.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    let body = boxed(body.map_err(client_body_error));
    let resp = send(&state, &target, &out, body, rec).await?;
    if unsafe_method
        && let Some(cache) = &state.cache
        && (resp.status().is_success() || resp.status().is_redirection())
    {
        invalidate_after_unsafe(cache, &target, &out, resp.headers()).await;
    }
    respond(state, ctx, resp, client_upgrade, rec)
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
/// [`map_client_error`] finds it.
fn client_body_error(e: hyper::Error) -> ProxyError {
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
    state: &State,
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
    rec.result = "TCP_PURGE";
    rec.status = status.as_u16();
    rec.bytes = text.len() as u64;
    state.log.write(rec);
    let mut resp = Response::new(crate::http::body::full(text));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}

/// [`send_on_route`], timing the upstream exchange for the metrics.
async fn send(
    state: &State,
    target: &Target,
    out: &Outgoing,
    body: Body,
    rec: &mut AccessRecord,
) -> Result<Response<Incoming>, ProxyError> {
    let started = std::time::Instant::now();
    let r = send_on_route(state, target, out, body, rec).await;
    if r.is_ok() {
        rec.upstream_latency = Some(started.elapsed());
    }
    r
}

/// Sends the request on its route; on a parent that cannot be connected, the next parent
/// gets the same request as long as no byte of the body has been read.
async fn send_on_route(
    state: &State,
    target: &Target,
    out: &Outgoing,
    body: Body,
    rec: &mut AccessRecord,
) -> Result<Response<Incoming>, ProxyError> {
    let read = state.config.timeouts.read;
    let timed_out = || ProxyError::UpstreamReadTimeout {
        host: target.authority(),
        secs: read.as_secs(),
    };
    let dynamic = state.dynamic();
    match dynamic.upstream.route(&target.host) {
        Route::Direct => {
            rec.hierarchy = "HIER_DIRECT/-".into();
            match tokio::time::timeout(read, dynamic.clients.direct.request(out.request(body)))
                .await
            {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(map_client_error(&e, target)),
                Err(_) => Err(timed_out()),
            }
        }
        Route::Parents(peers) => {
            let slot = ReplaySlot::new(body);
            let mut last = None;
            for peer in peers {
                let Some(client) = dynamic.clients.parent(&peer) else {
                    continue;
                };
                rec.hierarchy = format!("FIRSTUP_PARENT/{}", peer.name);
                let req = out.request(slot.attempt());
                // Parent authentication is per connection (`upstream::proxied` for plain
                // http, the CONNECT for https); nothing is added to the request here, so
                // no credential can travel inside a tunnel to an origin.
                let sent = async {
                    if client::parent_leg(&out.uri) == client::ParentLeg::Tunnelled {
                        client
                            .tunnelled
                            .request(req)
                            .await
                            .map_err(|e| map_client_error(&e, target))
                    } else {
                        client.proxied.send(req).await
                    }
                };
                match tokio::time::timeout(read, sent).await {
                    Ok(Ok(r)) => {
                        peer.mark_up();
                        return Ok(r);
                    }
                    Ok(Err(err)) => {
                        if err.is_peer_unreachable() {
                            peer.mark_down();
                            if slot.is_untouched() {
                                last = Some(err);
                                continue;
                            }
                        }
                        return Err(err);
                    }
                    Err(_) => return Err(timed_out()),
                }
            }
            Err(last.unwrap_or_else(|| ProxyError::UpstreamConnect {
                host: target.authority(),
                cause: "no parent available".into(),
            }))
        }
    }
}

fn map_client_error(e: &hyper_util::client::legacy::Error, target: &Target) -> ProxyError {
    if let Some(p) = find_in_chain(e) {
        return p.clone();
    }
    if e.is_connect() {
        return ProxyError::UpstreamConnect {
            host: target.authority(),
            cause: chain(e),
        };
    }
    ProxyError::UpstreamProtocol {
        host: target.authority(),
        cause: chain(e),
    }
}

/// Turns the upstream response into the client's: hop-by-hop headers out, `Via` in, body
/// streamed with an idle timeout and counted for the access log; 101 bridges both sides.
fn respond(
    state: Arc<State>,
    ctx: &ConnCtx,
    resp: Response<Incoming>,
    client_upgrade: Option<OnUpgrade>,
    rec: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    let (mut parts, body) = resp.into_parts();
    if let Some(hop) = parts.extensions.get::<Hop>() {
        rec.hierarchy = hop.0.to_string();
    }
    rec.status = parts.status.as_u16();
    rec.head_ready();
    rec.content_type = content_type(&parts.headers);
    let head_len = head_size(&parts);

    let upgrading = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    let origin_upgrade = if upgrading {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    strip_hop_by_hop(&mut parts.headers, upgrading && client_upgrade.is_some());
    append_via(&mut parts.headers, Version::HTTP_11);

    if let (true, Some(client_up), Some(origin_up)) = (upgrading, client_upgrade, origin_upgrade) {
        let mut rec = rec.clone();
        rec.bytes = head_len;
        let idle = state.config.timeouts.tunnel_idle;
        let stop = state.hard_stop.clone();
        crate::tunnel::spawn_logged(&state, ctx, async move {
            match tokio::try_join!(client_up, origin_up) {
                Ok((c, o)) => {
                    let s = bridge::run(TokioIo::new(c), TokioIo::new(o), idle, stop).await;
                    rec.bytes += s.upstream_to_client;
                    rec.bytes_in = s.client_to_upstream;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    rec.result = "TCP_MISS_ABORTED";
                }
            }
            rec
        });
        return Ok(Response::from_parts(parts, crate::http::body::empty()));
    }
    if upgrading {
        // The origin switched protocols without being asked to: we cannot follow.
        return Err(ProxyError::UpstreamProtocol {
            host: rec.url.clone(),
            cause: "unexpected 101 Switching Protocols".into(),
        });
    }

    let log = state.log.clone();
    let mut done = rec.clone();
    let body = CountingBody::new(
        IdleTimeoutBody::new(body, state.config.timeouts.read),
        move |bytes, end| {
            done.bytes = head_len + bytes;
            if end != BodyEnd::Complete {
                done.result = "TCP_MISS_ABORTED";
            }
            log.write(&done);
        },
    )
    .expecting(crate::http::headers::content_length(&parts.headers));
    Ok(Response::from_parts(parts, boxed(body)))
}

/// The media type for the log (`text/plain` of `text/plain; charset=utf-8`), or `-`.
fn content_type(h: &http::HeaderMap) -> String {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && !v.contains(char::is_whitespace))
        .unwrap_or_else(|| "-".into())
}

/// Size of the response head as the client receives it (status line and headers).
fn head_size(parts: &http::response::Parts) -> u64 {
    let headers: usize = parts
        .headers
        .iter()
        .map(|(k, v): (&header::HeaderName, &HeaderValue)| k.as_str().len() + v.len() + 4)
        .sum();
    (headers + 19) as u64
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

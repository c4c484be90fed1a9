//! One exchange with the next hop: the request head to send ([`Outgoing`]), sending it on its
//! route (direct, or the parents in order, failing over while the request body is still
//! untouched), and turning the upstream response into the client's (hop-by-hop headers out,
//! `Via` in, the body streamed with an idle timeout and counted for the access log, a 101
//! bridged both ways).

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::error::{ProxyError, chain, find_in_chain};
use crate::http::body::{Body, BodyEnd, CountingBody, IdleTimeoutBody, ReplaySlot, boxed};
use crate::http::headers::{append_via, strip_hop_by_hop};
use crate::http::target::Target;
use crate::io::bridge;
use crate::state::Scope;
use crate::state::tasks::spawn_logged;
use crate::telemetry::record::{AccessRecord, Hierarchy};
use crate::upstream::Route;
use crate::upstream::client;

/// The request head to send upstream; rebuilt for each attempt.
pub struct Outgoing {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
}

impl Outgoing {
    pub fn request(&self, body: Body) -> Request<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// [`send_on_route`], timing the upstream exchange for the metrics.
pub async fn send(
    scope: &Scope,
    target: &Target,
    out: &Outgoing,
    body: Body,
    rec: &mut AccessRecord,
) -> Result<Response<Incoming>, ProxyError> {
    let started = std::time::Instant::now();
    let r = send_on_route(scope, target, out, body, rec).await;
    if r.is_ok() {
        rec.upstream_latency = Some(started.elapsed());
    }
    r
}

/// Sends the request on its route; on a parent that cannot be connected, the next parent
/// gets the same request as long as no byte of the body has been read.
async fn send_on_route(
    scope: &Scope,
    target: &Target,
    out: &Outgoing,
    body: Body,
    rec: &mut AccessRecord,
) -> Result<Response<Incoming>, ProxyError> {
    let read = scope.state.config.timeouts.read;
    let timed_out = || ProxyError::UpstreamReadTimeout {
        host: target.authority(),
        secs: read.as_secs(),
    };
    let upstream = &scope.snap.upstream;
    match upstream.route(&target.host) {
        Route::Direct => {
            rec.hierarchy = Hierarchy::direct("-");
            match tokio::time::timeout(read, upstream.clients.direct.request(out.request(body)))
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
                let Some(client) = upstream.clients.parent(&peer) else {
                    continue;
                };
                rec.hierarchy = Hierarchy::parent(&peer.name);
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

pub fn map_client_error(e: &hyper_util::client::legacy::Error, target: &Target) -> ProxyError {
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
pub fn respond(
    scope: &Scope,
    resp: Response<Incoming>,
    client_upgrade: Option<OnUpgrade>,
    rec: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    let (mut parts, body) = resp.into_parts();
    if let Some(hop) = parts.extensions.get::<Hierarchy>() {
        rec.hierarchy = hop.clone();
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
        let idle = scope.state.config.timeouts.tunnel_idle;
        let stop = scope.state.hard_stop.clone();
        spawn_logged(scope, async move {
            match tokio::try_join!(client_up, origin_up) {
                Ok((c, o)) => {
                    let s = bridge::run(TokioIo::new(c), TokioIo::new(o), idle, stop).await;
                    rec.bytes += s.upstream_to_client;
                    rec.bytes_in = s.client_to_upstream;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    rec.aborted = true;
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

    let log = scope.state.log.clone();
    let mut done = rec.clone();
    let body = CountingBody::new(
        IdleTimeoutBody::new(body, scope.state.config.timeouts.read),
        move |bytes, end| {
            done.bytes = head_len + bytes;
            if end != BodyEnd::Complete {
                done.aborted = true;
            }
            log.write(&done);
        },
    )
    .expecting(crate::http::headers::content_length(&parts.headers));
    Ok(Response::from_parts(parts, boxed(body)))
}

/// The media type for the log (`text/plain` of `text/plain; charset=utf-8`), or `-`.
pub fn content_type(h: &http::HeaderMap) -> String {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && !v.contains(char::is_whitespace))
        .unwrap_or_else(|| "-".into())
}

/// Size of the response head as the client receives it (status line and headers).
pub fn head_size(parts: &http::response::Parts) -> u64 {
    let headers: usize = parts
        .headers
        .iter()
        .map(|(k, v): (&header::HeaderName, &HeaderValue)| k.as_str().len() + v.len() + 4)
        .sum();
    (headers + 19) as u64
}

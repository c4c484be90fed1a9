//! The hyper service entry: checks the client (network, then proxy authentication), sends
//! CONNECT to [`crate::tunnel`] and absolute-form requests to [`crate::forward`], refuses
//! origin-form requests, and turns every error into its response and its access-log line.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::app::State;
use crate::error::ProxyError;
use crate::http::body::Body;
use crate::http::target;
use crate::telemetry::AccessRecord;

/// Per-connection facts shared by its requests. The permit counts the connection against
/// `max-connections` and `max-connections-per-client` until the connection and any tunnel
/// it became are gone.
pub struct ConnCtx {
    pub peer: SocketAddr,
    pub permit: Arc<crate::server::limits::ConnPermit>,
}

pub async fn handle(
    state: Arc<State>,
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Response<Body> {
    let mut rec = AccessRecord::new(ctx.peer, req.method().as_str(), target::loggable(req.uri()));
    let result = route(&state, &ctx, req, &mut rec).await;
    finish(&state, &ctx, result, rec)
}

/// A request decrypted from an intercepted CONNECT to `authority`: made absolute
/// (`https://authority/path`) and forwarded like any plain request. The client was checked
/// (network, credentials) on the CONNECT.
pub async fn intercepted(
    state: Arc<State>,
    ctx: Arc<ConnCtx>,
    authority: &str,
    user: Option<String>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let url = format!("https://{authority}{pq}");
    let mut rec = AccessRecord::new(ctx.peer, req.method().as_str(), url.clone());
    rec.user = user;
    let result = match url.parse::<http::Uri>() {
        Ok(uri) => {
            *req.uri_mut() = uri;
            rec.url = target::loggable(req.uri());
            crate::forward::handle(state.clone(), &ctx, req, &mut rec).await
        }
        Err(_) => Err(ProxyError::ClientBadRequest(
            "invalid request target".into(),
        )),
    };
    finish(&state, &ctx, result, rec)
}

/// The handler's response, or the error's response and its access-log line.
fn finish(
    state: &Arc<State>,
    ctx: &ConnCtx,
    result: Result<Response<Body>, ProxyError>,
    mut rec: AccessRecord,
) -> Response<Body> {
    match result {
        // The handler owns the access-log line from here (written when the body or the
        // tunnel ends).
        Ok(resp) => resp,
        Err(e) => {
            rec.status = e.status().as_u16();
            rec.error = Some(e.label());
            rec.error_message = Some(e.to_string());
            rec.deny_reason = match &e {
                ProxyError::Denied { reason, .. } => Some(reason),
                ProxyError::ClientAuthRequired | ProxyError::ClientAuthThrottled { .. } => {
                    Some("auth")
                }
                _ => None,
            };
            rec.head_ready();
            rec.result = match e {
                ProxyError::Denied { .. }
                | ProxyError::ClientAuthRequired
                | ProxyError::ClientAuthThrottled { .. } => "TCP_DENIED",
                ProxyError::ClientBadRequest(_) | ProxyError::ClientOriginForm => "NONE_NONE",
                _ => rec.result,
            };
            match &e {
                ProxyError::Denied { .. }
                | ProxyError::ClientAuthRequired
                | ProxyError::ClientAuthThrottled { .. } => {
                    tracing::debug!(client = %ctx.peer, error = %e, "request refused")
                }
                _ => {
                    tracing::info!(client = %ctx.peer, url = %rec.url, error = %e, "request failed")
                }
            }
            let resp = e.to_response(&state.dynamic().policy.realm);
            rec.bytes = http_body::Body::size_hint(resp.body()).exact().unwrap_or(0);
            state.log.write(&rec);
            resp
        }
    }
}

async fn route(
    state: &Arc<State>,
    ctx: &Arc<ConnCtx>,
    req: Request<Incoming>,
    rec: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    let policy = state.dynamic().policy.clone();
    policy.check_client(ctx.peer.ip())?;
    rec.user = policy.authenticate(ctx.peer.ip(), req.headers()).await?;
    if req.method() == Method::CONNECT {
        crate::tunnel::handle(state.clone(), ctx, req, rec).await
    } else if req.uri().scheme().is_some() {
        crate::forward::handle(state.clone(), ctx, req, rec).await
    } else {
        Err(ProxyError::ClientOriginForm)
    }
}

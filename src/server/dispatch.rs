//! The hyper service entry: loads the configuration snapshot once for the request, checks the
//! client (network, then proxy authentication), and routes: `CONNECT` to an intercepted host
//! to [`crate::mitm::intercept`], any other `CONNECT` to [`crate::tunnel`] (a blind tunnel,
//! or one whose ClientHello decides), absolute-form requests to [`crate::forward`];
//! origin-form requests for a configured mirror (`GET /npm/...`) to [`crate::mirror::route`];
//! other origin-form requests are refused. Every error goes through the one [`rescue`].

use std::sync::Arc;

use http::{Method, Request, Response, header};
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::http::body::Body;
use crate::http::target::{self, Target};
use crate::state::conn::ConnCtx;
use crate::state::rescue::rescue;
use crate::state::{Scope, State};
use crate::telemetry::record::{AccessRecord, ResultCode};

pub async fn handle(
    state: Arc<State>,
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Response<Body> {
    let scope = Scope::begin(&state, &conn);
    let mut rec = AccessRecord::new(
        conn.peer,
        req.method().as_str(),
        target::loggable(req.uri()),
    );
    let result = route(&scope, req, &mut rec).await;
    rescue(&scope, result, rec)
}

async fn route(
    scope: &Scope,
    req: Request<Incoming>,
    rec: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    let policy = &scope.snap.policy;
    let client = scope.conn.peer.ip();
    policy.check_client(client)?;
    // Origin-form, addressed to a mirror route: the path and query below the mirror name.
    // Over HTTP/2 (only on the TLS listener) every request carries a scheme and authority:
    // one under a mirror name is a mirror request, as its origin-form HTTP/1.1 twin.
    let origin_form = req.uri().scheme().is_none()
        || (scope.conn.secure && req.version() == http::Version::HTTP_2);
    let mirror = if origin_form && req.method() != Method::CONNECT {
        scope
            .state
            .mirrors
            .find(req.uri().path())
            .map(|(m, rest)| match req.uri().query() {
                Some(q) => (m, format!("{rest}?{q}")),
                None => (m, rest.to_string()),
            })
    } else {
        None
    };
    let Some((mirror, rest)) = mirror else {
        rec.user = policy.authenticate(client, req.headers()).await?;
        return if req.method() == Method::CONNECT {
            connect(scope, req, rec).await
        } else if req.uri().scheme().is_some() {
            crate::forward::handle(scope, req, rec).await
        } else {
            Err(ProxyError::ClientOriginForm)
        };
    };
    // A mirror client (npm, pip...) talks to cuttle as to a registry: it authenticates with
    // `Authorization` (the same users), and is asked with a 401. The `Authorization` that
    // authenticated it to cuttle is consumed here, never forwarded.
    let mut req = req;
    if policy.requires_auth() && !req.headers().contains_key(header::PROXY_AUTHORIZATION) {
        let mut h = http::HeaderMap::new();
        if let Some(v) = req.headers_mut().remove(header::AUTHORIZATION) {
            h.insert(header::PROXY_AUTHORIZATION, v);
        }
        rec.user = policy.authenticate(client, &h).await.map_err(|e| match e {
            ProxyError::ClientAuthRequired => ProxyError::MirrorAuthRequired,
            e => e,
        })?;
    } else {
        rec.user = policy.authenticate(client, req.headers()).await?;
    }
    crate::mirror::route::handle(scope, mirror, rest, req, rec).await
}

/// A `CONNECT`: intercepted when its host is on the intercept list; when it names an address
/// on the HTTPS port while interception is on, the ClientHello's server name decides (only
/// port 443: protocols whose server speaks first would wait forever for a ClientHello);
/// otherwise a blind tunnel.
async fn connect(
    scope: &Scope,
    req: Request<Incoming>,
    rec: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    rec.result = ResultCode::TcpTunnel;
    let target: Target = target::connect(req.uri())?;
    scope.snap.policy.check_destination(&target, true)?;
    let Some(issuer) = scope.state.issuer.clone() else {
        return crate::tunnel::handle(scope, req, target, rec).await;
    };
    if scope.snap.intercepts(&target.host) {
        return crate::mitm::intercept::handle(scope, issuer, req, target, rec);
    }
    if !scope.snap.intercept.is_empty() && target.ip().is_some() && target.port == 443 {
        return crate::mitm::intercept::handle_by_sni(scope, issuer, req, target, rec);
    }
    crate::tunnel::handle(scope, req, target, rec).await
}

//! The hyper service entry: loads the configuration snapshot once for the request, checks the
//! client (network, then proxy authentication), and routes: `CONNECT` to an intercepted host
//! to [`crate::mitm::intercept`], any other `CONNECT` to [`crate::tunnel`] (a blind tunnel,
//! or one whose ClientHello decides), absolute-form requests to [`crate::forward`];
//! origin-form requests are refused. Every error goes through the one [`rescue`].

use std::sync::Arc;

use http::{Method, Request, Response};
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
    rec.user = policy.authenticate(client, req.headers()).await?;
    if req.method() == Method::CONNECT {
        connect(scope, req, rec).await
    } else if req.uri().scheme().is_some() {
        crate::forward::handle(scope, req, rec).await
    } else {
        Err(ProxyError::ClientOriginForm)
    }
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

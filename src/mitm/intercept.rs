//! An intercepted CONNECT: answer 200, terminate the client's TLS with a certificate minted
//! for the host (the SNI name, or the CONNECT host), then serve HTTP/1.1 or HTTP/2 (by ALPN)
//! on the decrypted stream. Every inner request becomes an absolute `https://` request that
//! re-enters `forward::handle` exactly like plain HTTP: cached, coalesced, logged, counted.
//! cuttle then speaks TLS to the origin itself, verifying it.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_rustls::LazyConfigAcceptor;

use crate::app::State;
use crate::error::ProxyError;
use crate::http::body::{Body, empty};
use crate::http::target::Target;
use crate::server::dispatch::{self, ConnCtx};
use crate::telemetry::AccessRecord;

/// Time for the client to complete its TLS handshake with cuttle.
const HANDSHAKE: Duration = Duration::from_secs(30);

/// Whether a TLS error says the client refused cuttle's certificate.
fn client_rejected_certificate(e: &std::io::Error) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    [
        "unknownca",
        "unknown_ca",
        "badcertificate",
        "bad_certificate",
        "certificateunknown",
        "certificate_unknown",
        "decrypterror",
        "accessdenied",
    ]
    .iter()
    .any(|k| text.replace(' ', "").contains(k))
}

type ClientTls = tokio_rustls::server::TlsStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Completes the client side: upgrade, ClientHello, a certificate for its SNI (or the CONNECT
/// host), handshake. `Err` carries the error label for the log (if any); the reason has been
/// logged.
async fn accept(
    on_upgrade: hyper::upgrade::OnUpgrade,
    target: &Target,
    issuer: &crate::mitm::issuer::CertIssuer,
) -> Result<ClientTls, Option<&'static str>> {
    let upgraded = on_upgrade.await.map_err(|e| {
        tracing::debug!(error = %e, "client connection was not upgraded");
        None
    })?;
    let acceptor =
        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), TokioIo::new(upgraded));
    let start = match tokio::time::timeout(HANDSHAKE, acceptor).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(host = %target.host, error = %e, "no TLS ClientHello on an intercepted tunnel");
            return Err(None);
        }
        Err(_) => return Err(None),
    };
    let cert_host = start
        .client_hello()
        .server_name()
        .filter(|s| !s.is_empty())
        .map_or_else(|| target.host.clone(), str::to_string);
    let config = issuer.config_for(&cert_host).await.map_err(|e| {
        tracing::warn!(host = %cert_host, error = %e, "cannot mint a certificate");
        None
    })?;
    match tokio::time::timeout(HANDSHAKE, start.into_stream(config)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => {
            if client_rejected_certificate(&e) {
                tracing::warn!(
                    host = %cert_host,
                    error = %e,
                    "the client rejected cuttle's certificate: make it trust cuttle's CA \
                     (GET /ca.pem on the admin port, or `cuttle ca export`), or exclude the \
                     host with --no-intercept"
                );
            } else {
                tracing::info!(host = %cert_host, error = %e, "TLS handshake with the client failed");
            }
            Err(Some("ERR_SECURE_ACCEPT_FAIL"))
        }
        Err(_) => Err(None),
    }
}

pub async fn handle(
    state: Arc<State>,
    ctx: Arc<ConnCtx>,
    mut req: Request<Incoming>,
    target: Target,
    rec: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    let Some(issuer) = state.issuer.clone() else {
        return Err(ProxyError::UpstreamTls {
            host: target.authority(),
            cause: "interception is not available (no CA); restart with --intercept set".into(),
        });
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    rec.result = "TCP_BUMP";
    rec.status = 200;
    rec.hierarchy = "HIER_NONE/-".into();
    rec.head_ready();
    let mut rec = rec.clone();
    let st = state.clone();
    let conn = ctx.clone();
    crate::tunnel::spawn_logged(&state, &ctx, async move {
        let ctx = conn;
        let tls = match accept(on_upgrade, &target, &issuer).await {
            Ok(tls) => tls,
            Err(error) => {
                rec.result = "TCP_BUMP_ABORTED";
                rec.error = error;
                return rec;
            }
        };
        let authority = target.authority();
        let user = rec.user.clone();
        let svc_state = st.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let (state, ctx, authority, user) = (
                svc_state.clone(),
                ctx.clone(),
                authority.clone(),
                user.clone(),
            );
            async move {
                Ok::<_, std::convert::Infallible>(
                    dispatch::intercepted(state, ctx, &authority, user, req).await,
                )
            }
        });
        let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(TokioIo::new(tls), svc)
            .await;
        if let Err(e) = served {
            tracing::debug!(error = %e, "intercepted connection ended with an error");
        }
        rec
    });
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}

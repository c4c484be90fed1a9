//! An intercepted CONNECT: answer 200, terminate the client's TLS with a certificate minted
//! for the CONNECT's host name (a ClientHello naming another host is refused; only for a
//! CONNECT to an address does the SNI name decide), then serve HTTP/1.1 or HTTP/2 (by ALPN)
//! on the decrypted stream with the listener's limits ([`crate::state::serve::serve`]). Every
//! inner request becomes an absolute `https://` request that goes to `forward::handle` exactly
//! like plain HTTP: cached, coalesced, logged, counted. cuttle then speaks TLS to the origin
//! itself, verifying it. A CONNECT to an address on the HTTPS port waits for the ClientHello:
//! an intercepted server name is intercepted, anything else becomes a blind tunnel.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_rustls::LazyConfigAcceptor;

use crate::error::ProxyError;
use crate::http::body::{Body, empty};
use crate::http::target::{self, Target};
use crate::io::bridge;
use crate::io::rewind::Rewind;
use crate::io::upgrade::client_socket;
use crate::mitm::issuer::CertIssuer;
use crate::state::rescue::rescue;
use crate::state::serve::{self, protocol_from_alpn};
use crate::state::tasks::spawn_logged;
use crate::state::{Scope, Snapshot};
use crate::telemetry::record::{AccessRecord, Hierarchy, ResultCode};

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

/// The host name the certificate for an intercepted CONNECT to `connect_host` is minted for,
/// given the ClientHello's server name (RFC 6066 §3: a DNS name, never an address). The
/// CONNECT chose the destination, so a name there is the name: a ClientHello naming another
/// host is refused (else any client could have any name minted). Only a CONNECT to an
/// address leaves the name to the ClientHello, and then only a name that is intercepted.
pub fn certificate_host<'a>(
    connect_host: &'a str,
    sni: Option<&'a str>,
    intercepted: impl Fn(&str) -> bool,
) -> Result<&'a str, String> {
    let same = |a: &str, b: &str| {
        a.trim_end_matches('.')
            .eq_ignore_ascii_case(b.trim_end_matches('.'))
    };
    match sni.filter(|s| !s.is_empty()) {
        None => Ok(connect_host),
        Some(name) if same(name, connect_host) => Ok(connect_host),
        Some(name) if connect_host.parse::<std::net::IpAddr>().is_ok() && intercepted(name) => {
            Ok(name)
        }
        Some(name) => Err(format!(
            "the TLS server name {name} differs from the CONNECT host {connect_host}"
        )),
    }
}

/// Completes the client side on `io` (after the 200): ClientHello, a certificate for the
/// name [`certificate_host`] allows, handshake, each step within `limit`. `Err` carries the
/// error label for the log (if any); the reason has been logged.
async fn accept<IO>(
    io: IO,
    target: &Target,
    scope: &Scope,
    issuer: &CertIssuer,
) -> Result<tokio_rustls::server::TlsStream<IO>, Option<&'static str>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let limit = scope.state.config.timeouts.header_read;
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match tokio::time::timeout(limit, acceptor).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(host = %target.host, error = %e, "no TLS ClientHello on an intercepted tunnel");
            return Err(None);
        }
        Err(_) => return Err(None),
    };
    let sni = start.client_hello().server_name().map(str::to_string);
    let intercepted = |n: &str| scope.snap.intercepts(n);
    let cert_host = match certificate_host(&target.host, sni.as_deref(), intercepted) {
        Ok(h) => h.to_string(),
        Err(why) => {
            tracing::warn!(host = %target.host, "refused an intercepted TLS handshake: {why}");
            return Err(Some("ERR_SECURE_ACCEPT_FAIL"));
        }
    };
    let config = issuer.config_for(&cert_host).await.map_err(|e| {
        tracing::warn!(host = %cert_host, error = %e, "cannot mint a certificate");
        Some("ERR_SECURE_ACCEPT_FAIL")
    })?;
    match tokio::time::timeout(limit, start.into_stream(config)).await {
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

/// Terminates TLS on `io` and serves the decrypted requests for `target`; returns the
/// tunnel's record for the log.
async fn serve<IO>(
    scope: Scope,
    io: IO,
    target: Target,
    issuer: &CertIssuer,
    mut rec: AccessRecord,
) -> AccessRecord
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    rec.result = ResultCode::TcpBump;
    let tls = match accept(io, &target, &scope, issuer).await {
        Ok(tls) => tls,
        Err(error) => {
            rec.aborted = true;
            rec.error = error;
            return rec;
        }
    };
    // `https://host/...` for the default port, as clients write it (and as it is logged).
    let authority = match (target.port, target.host.contains(':')) {
        (443, false) => target.host.clone(),
        (443, true) => format!("[{}]", target.host),
        _ => target.authority(),
    };
    let user = rec.user.clone();
    let protocol = protocol_from_alpn(tls.get_ref().1.alpn_protocol());
    let (state, connection) = (scope.state.clone(), scope.conn.clone());
    let handler = move |req: Request<Incoming>| {
        // Each inner request sees the configuration of its own time, as a plain request does.
        let scope = Scope::begin(&state, &connection);
        let (authority, user) = (authority.clone(), user.clone());
        async move { inner_request(&scope, &authority, user, req).await }
    };
    if let Err(e) = serve::serve(TokioIo::new(tls), protocol, &scope.state, handler).await {
        tracing::debug!(error = %e, "intercepted connection ended with an error");
    }
    rec
}

/// A request decrypted from an intercepted CONNECT to `authority`: made absolute
/// (`https://authority/path`) and forwarded like any plain request. The client was checked
/// (network, credentials) on the CONNECT.
async fn inner_request(
    scope: &Scope,
    authority: &str,
    user: Option<String>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let url = format!("https://{authority}{pq}");
    let mut rec = AccessRecord::new(scope.conn.peer, req.method().as_str(), url.clone());
    rec.user = user;
    let result = match url.parse::<http::Uri>() {
        Ok(uri) => {
            *req.uri_mut() = uri;
            rec.url = target::loggable(req.uri());
            crate::forward::handle(scope, req, &mut rec).await
        }
        Err(_) => Err(ProxyError::ClientBadRequest(
            "invalid request target".into(),
        )),
    };
    rescue(scope, result, rec)
}

fn ok_200(rec: &mut AccessRecord) -> Response<Body> {
    rec.status = 200;
    rec.hierarchy = Hierarchy::none();
    rec.head_ready();
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::OK;
    resp
}

/// A CONNECT to a host on the intercept list (checked by the dispatcher).
pub fn handle(
    scope: &Scope,
    issuer: Arc<CertIssuer>,
    mut req: Request<Incoming>,
    target: Target,
    rec: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let resp = ok_200(rec);
    let mut rec = rec.clone();
    let tunnel = scope.clone();
    spawn_logged(scope, async move {
        match on_upgrade.await {
            Ok(up) => serve(tunnel, TokioIo::new(up), target, &issuer, rec).await,
            Err(e) => {
                tracing::debug!(error = %e, "client connection was not upgraded");
                rec.result = ResultCode::TcpBump;
                rec.aborted = true;
                rec
            }
        }
    });
    Ok(resp)
}

/// A CONNECT to an IP address while interception is on: the decision waits for the
/// ClientHello. A server name on the intercept list is intercepted (and requests go to that
/// name); anything else becomes a blind tunnel to the address, the ClientHello replayed.
pub fn handle_by_sni(
    scope: &Scope,
    issuer: Arc<CertIssuer>,
    mut req: Request<Incoming>,
    target: Target,
    rec: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let resp = ok_200(rec);
    let mut rec = rec.clone();
    let tunnel = scope.clone();
    spawn_logged(scope, async move {
        // Until the ClientHello decides, this is a tunnel.
        rec.result = ResultCode::TcpTunnel;
        // The client's own socket: a blind tunnel then holds no copy buffers while idle.
        let socket = match on_upgrade.await.map(client_socket) {
            Ok(Ok(x)) => x,
            Ok(Err(_)) | Err(_) => {
                tracing::debug!(target = %target, "client connection was not upgraded to its socket");
                rec.aborted = true;
                return rec;
            }
        };
        let limit = tunnel.state.config.timeouts.header_read;
        let mut io = Rewind::new(socket.1, socket.0);
        let (hello, sni) = match peek_client_hello(&mut io, limit).await {
            Ok(x) => x,
            Err(why) => {
                tracing::debug!(target = %target, why, "no usable ClientHello");
                rec.aborted = true;
                return rec;
            }
        };
        // Everything the client sent so far, to replay: the ClientHello and any bytes hyper
        // had read past the CONNECT head that the ClientHello did not need.
        let (rest, mut io) = io.into_parts();
        let hello = if rest.is_empty() {
            hello
        } else {
            [hello, rest].concat().into()
        };
        let snap: &Snapshot = &tunnel.snap;
        match sni.filter(|name| snap.intercepts(name)) {
            Some(name) => {
                let named = Target {
                    host: name,
                    port: target.port,
                };
                if let Err(e) = snap.policy.check_destination(&named, true) {
                    rec.result = ResultCode::TcpDenied;
                    rec.error = Some(e.label());
                    return rec;
                }
                serve(tunnel.clone(), Rewind::new(hello, io), named, &issuer, rec).await
            }
            None => {
                match snap.upstream.open_tunnel(&target, &mut rec.hierarchy).await {
                    Ok((mut upstream, early)) => {
                        use tokio::io::AsyncWriteExt;
                        if upstream.write_all(&hello).await.is_err()
                            || io.write_all(&early).await.is_err()
                        {
                            rec.aborted = true;
                            return rec;
                        }
                        let stats = bridge::run_tcp(
                            io,
                            upstream,
                            tunnel.state.config.timeouts.tunnel_idle,
                            tunnel.state.hard_stop.clone(),
                        )
                        .await;
                        rec.bytes = stats.upstream_to_client + early.len() as u64;
                        rec.bytes_in = stats.client_to_upstream + hello.len() as u64;
                    }
                    Err(e) => {
                        tracing::info!(target = %target, error = %e, "tunnel after ClientHello failed");
                        rec.aborted = true;
                        rec.error = Some(e.label());
                    }
                }
                rec
            }
        }
    });
    Ok(resp)
}

/// Largest ClientHello read before deciding.
const MAX_HELLO: usize = 16 * 1024;

/// Reads the client's first TLS flight until its ClientHello parses; returns the bytes read
/// (to replay) and the SNI name.
pub(crate) async fn peek_client_hello<IO>(
    io: &mut IO,
    limit: Duration,
) -> Result<(bytes::Bytes, Option<String>), &'static str>
where
    IO: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = bytes::BytesMut::with_capacity(4096);
    let mut acceptor = rustls::server::Acceptor::default();
    let read = async {
        loop {
            let before = buf.len();
            if before >= MAX_HELLO {
                return Err("ClientHello too large");
            }
            let n = io.read_buf(&mut buf).await.map_err(|_| "read error")?;
            if n == 0 {
                return Err("closed before a ClientHello");
            }
            let mut fresh = &buf[before..];
            while !fresh.is_empty() {
                if acceptor.read_tls(&mut fresh).is_err() {
                    // Not TLS: no name to decide on; the bytes are replayed to the origin.
                    return Ok(None);
                }
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let sni = accepted
                        .client_hello()
                        .server_name()
                        .map(|s| s.to_ascii_lowercase());
                    return Ok(sni);
                }
                Ok(None) => continue,
                Err(_) => return Ok(None),
            }
        }
    };
    let sni = tokio::time::timeout(limit, read)
        .await
        .map_err(|_| "no ClientHello in time")??;
    Ok((buf.freeze(), sni))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_name_fixes_the_certificate_name() {
        let listed = |n: &str| n.ends_with(".example.test");
        let h = |connect, sni| certificate_host(connect, sni, listed);
        assert_eq!(h("a.example.test", None), Ok("a.example.test"));
        assert_eq!(h("a.example.test", Some("")), Ok("a.example.test"));
        assert_eq!(
            h("a.example.test", Some("A.Example.Test.")),
            Ok("a.example.test")
        );
        // Another name, even an intercepted one, is refused.
        assert!(h("a.example.test", Some("b.example.test")).is_err());
        assert!(h("a.example.test", Some("elsewhere.test")).is_err());
    }

    #[test]
    fn for_an_address_only_an_intercepted_sni_decides() {
        let listed = |n: &str| n.ends_with(".example.test");
        let h = |connect, sni| certificate_host(connect, sni, listed);
        assert_eq!(h("192.0.2.7", Some("a.example.test")), Ok("a.example.test"));
        assert_eq!(
            h("2001:db8::7", Some("a.example.test")),
            Ok("a.example.test")
        );
        assert_eq!(h("192.0.2.7", None), Ok("192.0.2.7"));
        assert!(h("192.0.2.7", Some("elsewhere.test")).is_err());
    }
}

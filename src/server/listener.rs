//! Accepting client connections: binding (IPv6 sockets are v6-only so `0.0.0.0` and `[::]`
//! can both be listened on), the connection limits, proxy-wide and per client address (over
//! them: a polite 503, then close), refusing connections that come from the proxy's own
//! address (a loop), and handing each connection to [`serve::serve`] (HTTP/1.1 with its header
//! limits, timeouts and drain).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::dispatch;
use crate::state::State;
use crate::state::conn::ConnCtx;
use crate::state::limits::ConnPermit;
use crate::state::serve::{self, Protocol};
use crate::telemetry::record::{AccessRecord, ResultCode};

/// Binds one listening address.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Accepts until shutdown starts.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    serve_with(listener, state, None).await
}

/// Accepts until shutdown starts; with `tls`, each connection is a TLS one (`--tls-listen`).
pub async fn serve_with(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Ok(local) = stream.local_addr()
            && crate::access::ip_guard::is_self_connection(peer, local)
        {
            refuse_loop(&state, stream, peer, local);
            continue;
        }
        let Ok(permit) = state.conn_limit.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream, TOO_MANY));
            continue;
        };
        let Some(slot) = state.client_slots.try_acquire(peer.ip()) else {
            tracing::debug!(client = %peer, "client is at max-connections-per-client");
            tokio::spawn(refuse(stream, TOO_MANY_FROM_CLIENT));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = Arc::new(ConnCtx {
            peer,
            permit: Arc::new(ConnPermit::new(permit, slot)),
            secure: tls.is_some(),
        });
        match &tls {
            None => state
                .tracker
                .spawn(serve_connection(stream, ctx, state.clone())),
            Some(acceptor) => state.tracker.spawn(serve_tls_connection(
                stream,
                acceptor.clone(),
                ctx,
                state.clone(),
            )),
        };
    }
}

/// The TLS listener: the handshake within the header-read timeout, then the connection is
/// served as one on the proxy port (HTTP/2 or HTTP/1.1 by ALPN).
async fn serve_tls_connection(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    ctx: Arc<ConnCtx>,
    state: Arc<State>,
) {
    let _open = state.metrics.connection();
    let peer = ctx.peer;
    let timeout = state.config.timeouts.header_read;
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(client = %peer, "TLS handshake timed out");
            return;
        }
    };
    let protocol = serve::protocol_from_alpn(tls.get_ref().1.alpn_protocol());
    let svc_state = state.clone();
    let handler = move |req| dispatch::handle(svc_state.clone(), ctx.clone(), req);
    if let Err(e) = serve::serve(TokioIo::new(tls), protocol, &state, handler).await {
        tracing::debug!(client = %peer, error = %e, "TLS client connection ended with an error");
    }
}

const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Connection: close\r\nRetry-After: 1\r\nContent-Length: 63\r\n\r\n\
ERR_TOO_MANY_CONNECTIONS: the proxy is at max-connections; retry\n";

const TOO_MANY_FROM_CLIENT: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: text/plain\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 86\r\n\r\n\
ERR_TOO_MANY_CONNECTIONS: this client address is at max-connections-per-client; retry\n";

async fn refuse(mut stream: TcpStream, answer: &'static [u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(answer).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// A connection from the proxy's own address to its own port: the proxy tunnelled or
/// forwarded to itself (through its pod address, or a Service that kept the source). Refused
/// before it takes a connection slot, with a 403 that names the rule, and logged as a denial.
fn refuse_loop(state: &Arc<State>, stream: TcpStream, peer: SocketAddr, local: SocketAddr) {
    let e = crate::error::ProxyError::Denied {
        reason: "loop",
        rule: format!(
            "connection from {peer}, this proxy's own address, to its proxy port {local} \
             (forwarding loop)"
        ),
    };
    let body = format!("{}: {e}\n", e.label());
    let answer = format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n\
         X-Cuttle-Error: {}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        e.label(),
        body.len()
    );
    let mut rec = AccessRecord::new(peer, "NONE", "error:forwarding-loop".into());
    rec.status = 403;
    rec.result = ResultCode::TcpDenied;
    rec.error = Some(e.label());
    rec.error_message = Some(e.to_string());
    rec.deny_reason = Some("loop");
    rec.bytes = answer.len() as u64;
    state.log.write(&rec);
    tracing::debug!(client = %peer, "connection from this proxy's own address refused (loop)");
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
        })
        .await;
    });
}

async fn serve_connection(stream: TcpStream, ctx: Arc<ConnCtx>, state: Arc<State>) {
    let _open = state.metrics.connection();
    let peer = ctx.peer;
    let svc_state = state.clone();
    let handler = move |req| dispatch::handle(svc_state.clone(), ctx.clone(), req);
    let result = serve::serve(TokioIo::new(stream), Protocol::Http1, &state, handler).await;
    if let Err(e) = result {
        if e.is_parse() || e.is_parse_too_large() {
            let mut rec = AccessRecord::new(peer, "NONE", "error:invalid-request".into());
            rec.status = if e.is_parse_too_large() { 431 } else { 400 };
            rec.error = Some("ERR_INVALID_REQ");
            state.log.write(&rec);
            tracing::debug!(client = %peer, error = %e, "malformed request");
        } else if e.is_timeout() {
            tracing::debug!(client = %peer, "client did not send a request head in time");
        } else {
            tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
        }
    }
}

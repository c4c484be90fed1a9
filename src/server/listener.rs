//! Accepting client connections: binding (IPv6 sockets are v6-only so `0.0.0.0` and `[::]`
//! can both be listened on), the connection limit (over it: a polite 503, then close), the
//! connection served as HTTP/1.1 by [`super::conn`] (header limits, timeouts, drain).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::conn::Protocol;
use super::dispatch::{self, ConnCtx};
use crate::app::State;
use crate::telemetry::AccessRecord;

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
        let Ok(permit) = state.conn_limit.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = Arc::new(ConnCtx {
            peer,
            permit: Arc::new(permit),
        });
        state
            .tracker
            .spawn(serve_connection(stream, ctx, state.clone()));
    }
}

const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Connection: close\r\nRetry-After: 1\r\nContent-Length: 63\r\n\r\n\
ERR_TOO_MANY_CONNECTIONS: the proxy is at max-connections; retry\n";

async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(TOO_MANY).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn serve_connection(stream: TcpStream, ctx: Arc<ConnCtx>, state: Arc<State>) {
    let _open = state.metrics.connection();
    let peer = ctx.peer;
    let svc_state = state.clone();
    let handler = move |req| dispatch::handle(svc_state.clone(), ctx.clone(), req);
    let result = super::conn::serve(TokioIo::new(stream), Protocol::Http1, &state, handler).await;
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

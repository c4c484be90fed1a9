//! Benchmark origin for `bench/run.sh`: an HTTP/1.1 server on 127.0.0.1 that answers
//! `GET /bytes/<n>` with `n` bytes from a preallocated buffer, marked `Cache-Control: no-store`
//! so caching proxies forward every request (the bench measures forwarding, not caching).
//!
//! Usage: `bench_origin [port]` (default 0: any free port). The bound address is printed on
//! stdout as `listening on 127.0.0.1:<port>` once the server accepts connections.

use std::convert::Infallible;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Size of the preallocated buffer; larger bodies repeat it.
const CHUNK: usize = 1 << 20;
/// Largest body served (16 GiB), so a typo cannot ask for an endless stream.
const MAX_LEN: u64 = 16 << 30;

/// A body of `remaining` bytes sent as slices of one shared buffer (no copies).
struct Repeat {
    chunk: Bytes,
    remaining: u64,
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = usize::try_from(self.remaining).map_or(CHUNK, |r| r.min(CHUNK));
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

fn respond(chunk: &Bytes, req: &Request<Incoming>) -> Response<Repeat> {
    let len = req
        .uri()
        .path()
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n <= MAX_LEN);
    let (status, remaining) = match len {
        Some(n) => (StatusCode::OK, n),
        None => (StatusCode::NOT_FOUND, 0),
    };
    let mut resp = Response::new(Repeat {
        chunk: chunk.clone(),
        remaining,
    });
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port = match std::env::args().nth(1) {
        Some(p) => p.parse::<u16>().context("port must be a number 0-65535")?,
        None => 0,
    };
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .context("bind")?;
    let addr = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    drop(out);

    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let chunk = chunk.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = respond(&chunk, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            // A client that goes away mid-response is normal under load; nothing to report.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

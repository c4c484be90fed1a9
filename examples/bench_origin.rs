//! Benchmark origin for `bench/run.sh`: an HTTP/1.1 server on 127.0.0.1 that answers
//!
//! - `GET /bytes/<n>` with `n` bytes from a preallocated buffer, marked `Cache-Control: no-store`
//!   so caching proxies forward every request (the forwarding scenarios);
//! - `GET /cached/<n>` with the same `n` bytes, marked `Cache-Control: max-age=3600` with a
//!   strong `ETag` (`"bench-<n>"`), so caching proxies store it (the cache-hit scenarios). A
//!   request whose `If-None-Match` names that tag gets `304 Not Modified` without a body.
//!
//! Usage: `bench_origin [port] [--tls <ca.pem>]` (port default 0: any free port). The bound
//! address is printed on stdout as `listening on 127.0.0.1:<port>` once the server accepts
//! connections.
//!
//! With `--tls <ca.pem>` it also serves the same paths over TLS 1.3 only (HTTP/1.1 by ALPN) on
//! a second free port, printed as `tls listening on 127.0.0.1:<port>` after the first line. Its
//! certificate names `localhost` and `127.0.0.1` and is issued by a CA made for this run, whose
//! certificate is written to `<ca.pem>`: clients verify the origin with `curl --cacert <ca.pem>`
//! (the TLS CONNECT tunnel and interception benchmarks).

#[path = "common/bench_tls.rs"]
mod bench_tls;

use std::convert::Infallible;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use anyhow::Context as _;
use bench_tls::tls_acceptor;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
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

/// What a request path asks for: a body length and whether it may be cached.
fn route(path: &str) -> Option<(u64, bool)> {
    let (rest, cacheable) = if let Some(n) = path.strip_prefix("/bytes/") {
        (n, false)
    } else if let Some(n) = path.strip_prefix("/cached/") {
        (n, true)
    } else {
        return None;
    };
    let n = rest.parse::<u64>().ok().filter(|n| *n <= MAX_LEN)?;
    Some((n, cacheable))
}

/// True when an `If-None-Match` header value lists `etag` (or is `*`).
fn etag_matches(if_none_match: &header::HeaderValue, etag: &str) -> bool {
    if_none_match.to_str().is_ok_and(|v| {
        v.split(',')
            .map(str::trim)
            .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
    })
}

fn respond(chunk: &Bytes, req: &Request<Incoming>) -> Response<Repeat> {
    let (status, remaining, cache) = match route(req.uri().path()) {
        Some((n, false)) => (StatusCode::OK, n, None),
        Some((n, true)) => {
            let etag = format!("\"bench-{n}\"");
            let fresh = req
                .headers()
                .get(header::IF_NONE_MATCH)
                .is_some_and(|v| etag_matches(v, &etag));
            if fresh {
                (StatusCode::NOT_MODIFIED, 0, Some(etag))
            } else {
                (StatusCode::OK, n, Some(etag))
            }
        }
        None => (StatusCode::NOT_FOUND, 0, None),
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
    match cache {
        None => {
            h.insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
        }
        Some(etag) => {
            h.insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("max-age=3600"),
            );
            if let Ok(v) = header::HeaderValue::from_str(&etag) {
                h.insert(header::ETAG, v);
            }
        }
    }
    resp
}

/// Serves HTTP/1.1 on one accepted connection (plain TCP or TLS).
async fn serve<S>(io: S, chunk: Bytes)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let resp = respond(&chunk, &req);
        async move { Ok::<_, Infallible>(resp) }
    });
    // A client that goes away mid-response is normal under load; nothing to report.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

async fn bind_loopback(port: u16) -> anyhow::Result<TcpListener> {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .context("bind")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut port = 0u16;
    let mut tls_ca: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--tls" {
            tls_ca = Some(
                args.next()
                    .context("--tls needs a file name for the CA certificate")?,
            );
        } else {
            port = a.parse::<u16>().context("port must be a number 0-65535")?;
        }
    }
    let listener = bind_loopback(port).await?;
    let tls = match &tls_ca {
        Some(ca) => Some((
            bind_loopback(0).await?,
            tls_acceptor(Path::new(ca), "cuttle bench origin CA", true)?,
        )),
        None => None,
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {}", listener.local_addr()?)?;
    if let Some((l, _)) = &tls {
        writeln!(out, "tls listening on {}", l.local_addr()?)?;
    }
    out.flush()?;
    drop(out);

    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    if let Some((tls_listener, acceptor)) = tls {
        let chunk = chunk.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = tls_listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, chunk) = (acceptor.clone(), chunk.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        serve(tls, chunk).await;
                    }
                });
            }
        });
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, chunk.clone()));
    }
}

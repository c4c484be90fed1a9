//! Package registry for `bench/mirror.sh`: an HTTP/1.1 server on 127.0.0.1 serving a directory
//! the way a remote registry would, slowly enough to stand for one.
//!
//! - Every request waits `--latency-ms` (default 40) before its response head, and every body
//!   is sent at no more than `--rate-mbps` MB/s (default 20; 1 MB = 10^6 bytes). HTTP/1.1
//!   serves one response at a time per connection, so that is the per-connection cap.
//! - `GET /<path>` serves `<dir>/<path>`; a directory serves its `index.html` (a PyPI simple
//!   page, `text/html`) or `index.json` (an npm packument, `application/json`); anything else
//!   is `application/octet-stream`. In HTML and JSON documents `{origin}` becomes the scheme
//!   and `Host` of the request (`http://127.0.0.1:<port>`), so documents link their files with
//!   absolute URLs, as public registries do. Paths with `..`, `.` or empty segments are 404.
//! - Documents say `Cache-Control: public, max-age=300`, files
//!   `Cache-Control: public, max-age=31536000, immutable` (what public registries send).
//! - `GET /_stats` (no delay, not counted) answers `requests <n>`: the requests served so far on
//!   both ports, the "upstream requests" of the benchmark.
//! - `GET /_down` and `GET /_up` (not counted) cut the registry off and bring it back: while it
//!   is down every other request (still counted) is answered by closing the connection
//!   without a response, as a registry behind a failed link would, on both ports.
//!
//! Usage: `bench_registry --dir <dir> [--latency-ms 40] [--rate-mbps 20] [--tls <ca.pem>]`.
//! Prints `listening on 127.0.0.1:<port>` and, with `--tls`, `tls listening on
//! 127.0.0.1:<port>`: the same over TLS (1.2 or 1.3, HTTP/1.1), with a certificate for
//! `localhost` and `127.0.0.1` issued by a CA made for the run and written to `<ca.pem>`.

#[path = "common/bench_tls.rs"]
mod bench_tls;

use std::convert::Infallible;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

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
use tokio::time::{Instant, Sleep};

/// Bytes released at once by the rate limit.
const SLICE: usize = 16 * 1024;

struct Settings {
    dir: PathBuf,
    latency: Duration,
    /// Bytes per second.
    rate: u64,
    requests: AtomicU64,
    /// Cut off (`/_down`): requests get no response.
    down: std::sync::atomic::AtomicBool,
}

/// A body released in slices no faster than `rate` bytes per second from its first poll.
struct Paced {
    data: Bytes,
    sent: usize,
    rate: u64,
    start: Option<Instant>,
    sleep: Pin<Box<Sleep>>,
}

impl Body for Paced {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent >= self.data.len() {
            return Poll::Ready(None);
        }
        let now = Instant::now();
        let start = *self.start.get_or_insert(now);
        let n = SLICE.min(self.data.len() - self.sent);
        // This slice may leave once the bytes before it and itself fit the rate.
        let due = start + Duration::from_secs_f64((self.sent + n) as f64 / self.rate as f64);
        if due > now {
            self.sleep.as_mut().reset(due);
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let chunk = self.data.slice(self.sent..self.sent + n);
        self.sent += n;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.data.len()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.data.len() - self.sent) as u64)
    }
}

/// The file a request path names, if it stays inside `dir`.
fn file_for(dir: &Path, path: &str) -> Option<PathBuf> {
    let rel = path.strip_prefix('/')?;
    let mut out = dir.to_path_buf();
    let segments: Vec<&str> = rel.split('/').collect();
    for (i, s) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if (s.is_empty() && !last) || *s == "." || *s == ".." || s.contains('\\') {
            return None;
        }
        if !s.is_empty() {
            out.push(s);
        }
    }
    if out.is_dir() {
        let html = out.join("index.html");
        return Some(if html.is_file() {
            html
        } else {
            out.join("index.json")
        });
    }
    Some(out)
}

/// The response, or none (the connection is closed) while the registry is down.
async fn respond(
    s: &Settings,
    req: Request<Incoming>,
    scheme: &str,
) -> Result<Response<Paced>, std::io::Error> {
    let path = req.uri().path().to_string();
    let mut status = StatusCode::OK;
    let mut ct = "application/octet-stream";
    let mut cache = "public, max-age=31536000, immutable";
    let body = if let Some(state) = path
        .strip_prefix("/_")
        .filter(|p| *p == "down" || *p == "up")
    {
        s.down.store(state == "down", Ordering::SeqCst);
        ct = "text/plain";
        cache = "no-store";
        Bytes::from(format!("{state}\n"))
    } else if path == "/_stats" {
        ct = "text/plain";
        cache = "no-store";
        Bytes::from(format!("requests {}\n", s.requests.load(Ordering::SeqCst)))
    } else {
        s.requests.fetch_add(1, Ordering::SeqCst);
        if s.down.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("the registry is down"));
        }
        tokio::time::sleep(s.latency).await;
        let file = file_for(&s.dir, &path);
        match file.as_ref().map(tokio::fs::read) {
            Some(read) => match read.await {
                Ok(bytes) => {
                    let name = file
                        .as_deref()
                        .and_then(Path::file_name)
                        .and_then(|n| n.to_str())
                        .unwrap_or_default();
                    ct = match name {
                        "index.html" => "text/html; charset=utf-8",
                        "index.json" => "application/json",
                        _ => ct,
                    };
                    if ct == "application/octet-stream" {
                        Bytes::from(bytes)
                    } else {
                        cache = "public, max-age=300";
                        let host = req
                            .headers()
                            .get(header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("127.0.0.1");
                        let text = String::from_utf8_lossy(&bytes);
                        Bytes::from(text.replace("{origin}", &format!("{scheme}://{host}")))
                    }
                }
                Err(_) => {
                    status = StatusCode::NOT_FOUND;
                    Bytes::from_static(b"not found\n")
                }
            },
            None => {
                status = StatusCode::NOT_FOUND;
                Bytes::from_static(b"not found\n")
            }
        }
    };
    if status != StatusCode::OK {
        ct = "text/plain";
        cache = "no-store";
    }
    let mut resp = Response::new(Paced {
        data: body,
        sent: 0,
        rate: s.rate,
        start: None,
        sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
    });
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ct));
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static(cache),
    );
    Ok(resp)
}

/// Serves HTTP/1.1 on one accepted connection (plain TCP or TLS).
async fn serve<S>(io: S, s: Arc<Settings>, scheme: &'static str)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let s = s.clone();
        async move { respond(&s, req, scheme).await }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (mut dir, mut latency_ms, mut rate_mbps, mut tls_ca) = (None, 40u64, 20f64, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--latency-ms" => latency_ms = value()?.parse().context("--latency-ms")?,
            "--rate-mbps" => rate_mbps = value()?.parse().context("--rate-mbps")?,
            "--tls" => tls_ca = Some(PathBuf::from(value()?)),
            _ => anyhow::bail!("unknown argument {a}"),
        }
    }
    anyhow::ensure!(rate_mbps > 0.0, "--rate-mbps must be above 0");
    let settings = Arc::new(Settings {
        dir: dir.context("--dir is required")?,
        latency: Duration::from_millis(latency_ms),
        rate: (rate_mbps * 1e6) as u64,
        requests: AtomicU64::new(0),
        down: std::sync::atomic::AtomicBool::new(false),
    });
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let listener = TcpListener::bind(loopback).await.context("bind")?;
    let tls = match &tls_ca {
        Some(ca) => Some((
            TcpListener::bind(loopback).await.context("bind")?,
            tls_acceptor(ca, "cuttle bench registry CA", false)?,
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

    if let Some((tls_listener, acceptor)) = tls {
        let s = settings.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = tls_listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, s) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        serve(tls, s, "https").await;
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
        tokio::spawn(serve(stream, settings.clone(), "http"));
    }
}

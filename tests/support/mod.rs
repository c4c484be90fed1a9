//! Test harness shared by the integration tests: in-process origins, the proxy started
//! in-process on 127.0.0.1:0 with its access log captured, raw-socket helpers, and (in
//! `squid`) a real Squid as an authenticating parent. Nothing here uses fixed ports.
#![allow(dead_code, clippy::disallowed_types)]

pub mod parent_auth;
pub mod s3;
pub mod squid;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cuttle::app::Proxy;
use cuttle::config::Options;
use cuttle::http::body::{Body, full};
use cuttle::telemetry::AccessLog;
use cuttle::telemetry::LogFormat;
use http::{HeaderMap, Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What an origin saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

/// An HTTP/1.1 origin on 127.0.0.1:0 that records every request head it receives.
pub struct Origin {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    /// Serves every request with `handler`.
    pub async fn start<F, Fut>(handler: F) -> Origin
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, handler)
    }

    /// Serves on an already bound listener (e.g. `[::1]:0`).
    pub fn serve<F, Fut>(listener: TcpListener, handler: F) -> Origin
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let (s2, c2) = (seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c2.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let seen = s2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        seen.lock().unwrap().push(Seen {
                            method: req.method().clone(),
                            uri: req.uri().clone(),
                            headers: req.headers().clone(),
                        });
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Origin {
            addr,
            seen,
            connections,
            task,
        }
    }

    /// An origin answering every request with 200 and `body` as text/plain.
    pub async fn text(body: &'static str) -> Origin {
        Self::start(move |_req| async move {
            Response::builder()
                .header("content-type", "text/plain")
                .body(full(body))
                .unwrap()
        })
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("origin saw no request")
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// cuttle running in-process with its access log captured.
pub struct TestProxy {
    pub addr: SocketAddr,
    /// The cache directory, when the test did not choose one.
    pub cache_dir: Option<tempfile::TempDir>,
    proxy: Option<Proxy>,
    log: std::sync::mpsc::Receiver<String>,
    lines: Mutex<Vec<String>>,
}

/// The `--allow-dest` value that lets a proxy reach origins on loopback (test origins).
pub const LOOPBACK: &[&str] = &["127.0.0.0/8", "::1/128"];

/// Options for a test proxy: listening on 127.0.0.1:0, defaults otherwise.
pub fn opts() -> Options {
    Options {
        listen: Some(vec!["127.0.0.1:0".into()]),
        ..Options::default()
    }
}

impl TestProxy {
    pub async fn start(o: Options) -> TestProxy {
        Self::try_start(o).await.unwrap()
    }

    pub async fn try_start(o: Options) -> Result<TestProxy, String> {
        Self::start_inner(o, None).await
    }

    /// A proxy whose configuration is `base` merged with the TOML `file`, re-read on reload.
    pub async fn start_reloadable(mut base: Options, file: std::path::PathBuf) -> TestProxy {
        // Reloads must keep the loopback allowance the start gets (see start_inner).
        if base.allow_dest.is_none() {
            base.allow_dest = Some(LOOPBACK.iter().map(|s| s.to_string()).collect());
        }
        let o = Options::from_file(&file).unwrap().or(base.clone());
        let reloader = cuttle::config::reload::Reloader::new(Arc::new(move || {
            cuttle::config::load(&base, Some(&file))
        }));
        Self::start_inner(o, Some(reloader)).await.unwrap()
    }

    async fn start_inner(
        mut o: Options,
        reloader: Option<cuttle::config::reload::Reloader>,
    ) -> Result<TestProxy, String> {
        let mut cache_dir = None;
        if o.cache_dir.is_none() {
            let d = tempfile::tempdir().map_err(|e| e.to_string())?;
            o.cache_dir = Some(d.path().to_path_buf());
            cache_dir = Some(d);
        }
        // Never the fixed default admin port: tests run in parallel.
        if o.admin_listen.is_none() {
            o.admin_listen = Some("127.0.0.1:0".into());
        }
        // Test origins listen on loopback, which the proxy refuses by default: allow it
        // (the proxy's own and admin ports stay refused). Tests of the default set their own.
        if o.allow_dest.is_none() {
            o.allow_dest = Some(LOOPBACK.iter().map(|s| s.to_string()).collect());
        }
        // Tests that leave a tunnel open must not wait the production grace period.
        if o.shutdown_grace.is_none() {
            o.shutdown_grace = Some("3s".into());
        }
        let format = match o.log_format.as_deref() {
            Some("json") => LogFormat::Json,
            _ => LogFormat::Squid,
        };
        let cfg = o.validate().map_err(|e| e.join("; "))?;
        let (log, rx) = AccessLog::channel(format);
        let proxy = Proxy::start(cfg, log, reloader)
            .await
            .map_err(|e| e.to_string())?;
        Ok(TestProxy {
            cache_dir,
            addr: proxy.addrs()[0],
            proxy: Some(proxy),
            log: rx,
            lines: Mutex::new(Vec::new()),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://<admin addr>` (the admin port is on 127.0.0.1:0 in tests).
    pub fn admin_url(&self) -> String {
        format!(
            "http://{}",
            self.proxy().admin_addr().expect("admin port is off")
        )
    }

    pub fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().unwrap()
    }

    /// A reqwest client that uses this proxy for everything.
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .proxy(reqwest::Proxy::all(self.url()).unwrap())
            .build()
            .unwrap()
    }

    /// Waits (up to 10 s) for the next access-log line.
    pub async fn next_log(&self) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(l) = self.log.try_recv() {
                self.lines.lock().unwrap().push(l.clone());
                return l;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no access-log line within 10s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits for a log line containing `needle`, skipping others.
    pub async fn log_with(&self, needle: &str) -> String {
        loop {
            let l = self.next_log().await;
            if l.contains(needle) {
                return l;
            }
        }
    }

    /// Every access-log line seen so far (including ones returned by `next_log`).
    pub fn all_logs(&self) -> Vec<String> {
        while let Ok(l) = self.log.try_recv() {
            self.lines.lock().unwrap().push(l);
        }
        self.lines.lock().unwrap().clone()
    }

    pub async fn shutdown(mut self) {
        if let Some(p) = self.proxy.take() {
            p.shutdown().await;
        }
    }
}

/// Sends raw bytes to `addr` and returns everything read until EOF or 10 s.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one HTTP response head from a stream (up to the blank line), returning it as text.
pub async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("timed out reading a response head")
            .unwrap();
        assert!(
            n > 0,
            "EOF before the end of the response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Reads a body of the response `head`'s `Content-Length` (0 without one) from `s`.
pub async fn read_body(s: &mut TcpStream, head: &str) -> String {
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut body))
        .await
        .expect("timed out reading the body")
        .unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

/// Sends one request on a fresh connection and returns the response head and body (read by
/// Content-Length), without waiting for the proxy to close the connection.
pub async fn exchange(addr: SocketAddr, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    let body = read_body(&mut s, &head).await;
    (head, body)
}

/// A response with a body and status.
pub fn respond(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(full(body.into()))
        .unwrap()
}

/// Whether the `curl` binary is available (tests that need it fail loudly without it).
pub fn curl() -> std::process::Command {
    let probe = std::process::Command::new("curl").arg("--version").output();
    assert!(
        probe.is_ok(),
        "curl not found: run scripts/test.sh or apt-get install curl"
    );
    let mut c = std::process::Command::new("curl");
    c.env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("NO_PROXY");
    c
}

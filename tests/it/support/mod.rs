//! The kit every integration test uses: in-process origins and the proxy started in-process
//! on 127.0.0.1:0 with its access log captured (here); raw sockets and CONNECT (`raw`);
//! curl, cuttle and client launchers with a scrubbed environment (`commands`); the proxy's CA
//! (`ca`); waits for cache fills (`fills`); TLS origins (`tls`); a real Squid parent
//! (`squid`, `parent_auth`). Nothing here uses fixed ports.
#![allow(dead_code, clippy::disallowed_types)]

pub mod parent_auth;
pub mod s3;
pub mod squid;
pub mod tls;

mod ca;
mod commands;
mod fills;
mod raw;

pub use ca::*;
pub use commands::*;
pub use fills::*;
pub use raw::*;

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
use tokio::net::TcpListener;

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

/// A response with a body and status.
pub fn respond(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(full(body.into()))
        .unwrap()
}

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_types,
    clippy::disallowed_methods
)]
//! Connection lifetimes and memory: intercepted TLS connections get the listener's limits
//! (header size, header-read timeout, keep-alive idle timeout, drain at shutdown; HTTP/2
//! limits too), idle CONNECT tunnels stay small enough for `--max-connections` to fit the
//! pod's memory limit (measured on the real binary), and interception mints certificates
//! only for the name the client asked the proxy for, at a bounded rate.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::tls::{TlsOrigin, intercepting};
use crate::support::*;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Generous bound for "closed by the proxy": far above the few seconds the tests configure,
/// far below "never".
const CLOSE_WITHIN: Duration = Duration::from_secs(30);

async fn artifact_origin() -> TlsOrigin {
    TlsOrigin::start(|req| async move { respond(200, format!("artifact at {}", req.uri().path())) })
        .await
}

/// CONNECT `target`, then a TLS handshake with `sni`, trusting `roots`, offering `alpn`.
async fn tls_via(
    proxy: SocketAddr,
    target: &str,
    sni: &str,
    roots: &rustls::RootCertStore,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let s = tunnel(proxy, target).await;
    let mut cfg = tls_client_config(roots.clone());
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, s),
    )
    .await
    .unwrap_or_else(|_| Err(std::io::Error::other("TLS handshake timed out")))
}

/// Waits until the peer closes `s` (EOF or an error); panics after [`CLOSE_WITHIN`].
async fn closed_by_proxy<S: tokio::io::AsyncRead + Unpin>(s: &mut S, what: &str) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((start + CLOSE_WITHIN).into(), s.read(&mut buf)).await {
            Err(_) => panic!("{what}: still open after {CLOSE_WITHIN:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            // A response (e.g. a 408 or 431) before the close is fine.
            Ok(Ok(_)) => continue,
        }
    }
}

async fn minted(p: &TestProxy) -> u64 {
    let text = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/metrics", p.admin_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("cuttle_certificates_minted_total "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Intercepted connections get the listener's limits.

/// An intercepted connection that sends nothing after its TLS handshake is closed after the
/// header-read timeout, and its connection permit is free again (`--max-connections 1`).
#[tokio::test]
async fn idle_intercepted_connection_is_closed_and_frees_its_permit() {
    let origin = artifact_origin().await;
    let mut o = intercepting(&origin);
    o.header_read_timeout = Some("2s".into());
    o.max_connections = Some(1);
    let p = TestProxy::start(o).await;
    let roots = proxy_roots(&p).await;
    let target = format!("localhost:{}", origin.addr.port());
    let mut tls = tls_via(p.addr, &target, "localhost", &roots, &[b"http/1.1"])
        .await
        .unwrap();
    closed_by_proxy(&mut tls, "idle intercepted connection").await;
    // The tunnel's log line is written once its permit is released.
    let line = p.log_with("CONNECT").await;
    assert!(line.contains("TCP_BUMP/200"), "{line}");
    let mut tls = tls_via(p.addr, &target, "localhost", &roots, &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(b"GET /again HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("artifact at /again"), "{out}");
    p.shutdown().await;
}

/// Half a request head inside an intercepted connection (slowloris) is cut off after the
/// header-read timeout.
#[tokio::test]
async fn half_sent_head_in_an_intercepted_connection_is_cut_off() {
    let origin = artifact_origin().await;
    let mut o = intercepting(&origin);
    o.header_read_timeout = Some("2s".into());
    let p = TestProxy::start(o).await;
    let roots = proxy_roots(&p).await;
    let target = format!("localhost:{}", origin.addr.port());
    let mut tls = tls_via(p.addr, &target, "localhost", &roots, &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\nX-Drip: 1\r\n")
        .await
        .unwrap();
    closed_by_proxy(&mut tls, "half-sent request head").await;
    assert_eq!(origin.hits(), 0);
    p.shutdown().await;
}

/// A kept-alive HTTP/1.1 connection inside interception is closed once idle for the
/// header-read timeout after its last response, like a listener connection.
#[tokio::test]
async fn kept_alive_intercepted_http1_connection_is_closed_when_idle() {
    let origin = artifact_origin().await;
    let mut o = intercepting(&origin);
    o.header_read_timeout = Some("2s".into());
    let p = TestProxy::start(o).await;
    let roots = proxy_roots(&p).await;
    let target = format!("localhost:{}", origin.addr.port());
    let tls = tls_via(p.addr, &target, "localhost", &roots, &[b"http/1.1"])
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let resp = send
        .send_request(
            http::Request::get("/one")
                .header("host", "localhost")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "artifact at /one");
    tokio::time::timeout(CLOSE_WITHIN, conn)
        .await
        .expect("kept-alive intercepted connection still open")
        .unwrap()
        .ok();
    p.shutdown().await;
}

/// The same for HTTP/2 (by ALPN): no stream open for the idle timeout, the proxy ends the
/// connection (GOAWAY, close).
#[tokio::test]
async fn idle_intercepted_http2_connection_is_closed() {
    let origin = artifact_origin().await;
    let mut o = intercepting(&origin);
    o.header_read_timeout = Some("2s".into());
    let p = TestProxy::start(o).await;
    let roots = proxy_roots(&p).await;
    let target = format!("localhost:{}", origin.addr.port());
    let tls = tls_via(p.addr, &target, "localhost", &roots, &[b"h2"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let resp = send
        .send_request(
            http::Request::get(format!("https://{target}/h2"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "artifact at /h2");
    tokio::time::timeout(CLOSE_WITHIN, conn)
        .await
        .expect("idle intercepted HTTP/2 connection still open")
        .unwrap()
        .ok();
    p.shutdown().await;
}

fn small_heads(origin: &TlsOrigin) -> cuttle::config::Options {
    let mut o = intercepting(origin);
    o.max_header_size = Some(8192);
    o
}

/// `--max-header-size` holds inside interception: an HTTP/1.1 head over it is refused (431).
#[tokio::test]
async fn max_header_size_holds_for_intercepted_http1() {
    let origin = artifact_origin().await;
    let p = TestProxy::start(small_heads(&origin)).await;
    let roots = proxy_roots(&p).await;
    let target = format!("localhost:{}", origin.addr.port());
    let big = "x".repeat(12 * 1024);
    let mut tls = tls_via(p.addr, &target, "localhost", &roots, &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(
        format!("GET /big HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(origin.hits(), 0);
    p.shutdown().await;
}

/// The same bound on an HTTP/2 header list (SETTINGS_MAX_HEADER_LIST_SIZE): over it, the
/// request is refused and never forwarded; under it, served.
#[tokio::test]
async fn max_header_size_holds_for_intercepted_http2() {
    let origin = artifact_origin().await;
    let p = TestProxy::start(small_heads(&origin)).await;
    let roots = proxy_roots(&p).await;
    let target = format!("localhost:{}", origin.addr.port());
    let tls = tls_via(p.addr, &target, "localhost", &roots, &[b"h2"])
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let get = |size: usize| {
        http::Request::get(format!("https://{target}/h"))
            .header("x-big", "x".repeat(size))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let small = send.send_request(get(1024)).await.unwrap();
    assert_eq!(small.status(), 200);
    let big = send.send_request(get(12 * 1024)).await.unwrap();
    assert_eq!(big.status(), 431, "{:?}", big.headers());
    assert_eq!(origin.hits(), 1);
    p.shutdown().await;
}

/// At shutdown an idle intercepted connection is closed at once (drained like a listener
/// connection), so the proxy stops well within the grace period.
#[tokio::test]
async fn intercepted_connections_are_drained_at_shutdown() {
    let origin = artifact_origin().await;
    let mut o = intercepting(&origin);
    o.header_read_timeout = Some("60s".into());
    o.shutdown_grace = Some("30s".into());
    let p = TestProxy::start(o).await;
    let roots = proxy_roots(&p).await;
    let target = format!("localhost:{}", origin.addr.port());
    let mut tls = tls_via(p.addr, &target, "localhost", &roots, &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(b"GET /first HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let stop = tokio::spawn(p.shutdown());
    let closed = closed_by_proxy(&mut tls, "intercepted connection at shutdown").await;
    assert!(closed < Duration::from_secs(10), "closed after {closed:?}");
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .expect("shutdown waited for an idle intercepted connection")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));
}

// ---------------------------------------------------------------------------------------
// Certificates: only for the name asked for, at a bounded rate.

/// A CONNECT to a name fixes the certificate's name: a ClientHello naming another host is
/// refused and nothing is minted for it; the CONNECT's own name works.
#[tokio::test]
async fn sni_other_than_the_connect_name_is_refused_without_minting() {
    let origin = artifact_origin().await;
    let p = TestProxy::start(intercepting(&origin)).await;
    let roots = proxy_roots(&p).await;
    let target = format!("localhost:{}", origin.addr.port());
    for sni in ["other.example.test", "evil.localhost"] {
        let r = tls_via(p.addr, &target, sni, &roots, &[b"http/1.1"]).await;
        assert!(r.is_err(), "handshake with SNI {sni} succeeded");
        let line = p.log_with("CONNECT").await;
        assert!(line.contains("TCP_BUMP_ABORTED"), "{line}");
    }
    assert_eq!(
        minted(&p).await,
        0,
        "a certificate was minted for a foreign SNI"
    );
    let mut tls = tls_via(p.addr, &target, "LocalHost", &roots, &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(b"GET /ok HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut out)).await;
    assert!(String::from_utf8_lossy(&out).ends_with("artifact at /ok"));
    assert_eq!(minted(&p).await, 1);
    p.shutdown().await;
}

/// Minting new certificates is rate-limited: 200 distinct intercepted names as fast as a
/// client can ask get at most the burst plus the refill for the time taken; names already
/// minted keep working while new ones are refused.
#[tokio::test]
async fn minting_rate_is_bounded() {
    use cuttle::mitm::issuer::{MINT_BURST, MINT_PER_SECOND};
    let origin = artifact_origin().await;
    let mut o = intercepting(&origin);
    o.intercept = Some(vec!["*.example.test".into()]);
    let p = TestProxy::start(o).await;
    let roots = Arc::new(proxy_roots(&p).await);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    for i in 0..200 {
        let (addr, roots, sem) = (p.addr, roots.clone(), sem.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            let name = format!("h{i}.example.test");
            tls_via(addr, &format!("{name}:443"), &name, &roots, &[b"http/1.1"])
                .await
                .ok()
                .map(|_| name)
        });
    }
    let mut served = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Some(name) = r.unwrap() {
            served.push(name);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let allowed = MINT_BURST as f64 + MINT_PER_SECOND as f64 * elapsed + 1.0;
    let minted_now = minted(&p).await;
    let ok = served.len();
    assert!(
        (minted_now as f64) <= allowed && (ok as f64) <= allowed,
        "{minted_now} minted ({ok} handshakes) in {elapsed:.1}s; at most {allowed:.0} allowed"
    );
    assert!((1..200).contains(&ok), "{ok} of 200 handshakes succeeded");
    // A name already minted needs no new certificate.
    let name = &served[0];
    tls_via(p.addr, &format!("{name}:443"), name, &roots, &[b"http/1.1"])
        .await
        .unwrap();
    p.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Memory of idle CONNECT tunnels, measured on the real binary.

/// The cuttle binary as a child process (its RSS is measurable, apart from the test's).
struct Binary {
    child: Child,
    addr: SocketAddr,
}

impl Binary {
    fn start(args: &[&str]) -> Binary {
        let mut c = crate::support::cuttle();
        let mut child = c
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--cache-size", "0", "--cache-mem", "0"])
            // The origins of these tests are on loopback, which is refused by default.
            .args(["--allow-dest", "127.0.0.0/8,::1"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(a) = line.split("addr=").nth(1) {
                    let _ = tx.send(a.trim().to_string());
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cuttle did not report its listening address");
        };
        Binary {
            addr: addr.parse().unwrap(),
            child,
        }
    }

    /// Resident set size, in KiB, from /proc/PID/status.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP origin that echoes every byte back, holding its connections open.
async fn echo_origin() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Opens a tunnel to `origin` and passes 64 KiB each way through it (the size of a copy
/// buffer).
async fn used_tunnel(proxy: SocketAddr, origin: SocketAddr) -> TcpStream {
    let mut s = tunnel(proxy, origin).await;
    let msg = vec![b'a'; 64 * 1024];
    s.write_all(&msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut back))
        .await
        .expect("echo through the tunnel timed out")
        .unwrap();
    assert_eq!(back, msg);
    s
}

/// Tunnels per measurement: enough that per-connection costs dominate the noise.
const TUNNELS: usize = 2000;
/// The goal per idle tunnel.
const PER_TUNNEL_KIB: u64 = 16;
/// The pod's memory limit and memory cache in deploy/ (kubernetes base, Helm, OpenShift).
const POD_LIMIT_KIB: u64 = 768 * 1024;
const CACHE_MEM_KIB: u64 = 256 * 1024;
const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;

/// 2,000 idle CONNECT tunnels that have carried traffic cost at most 16 KiB each in the
/// proxy's resident memory, so the default 10,000 connections fit the pod's 768 MiB limit
/// beside the 256 MiB memory cache with room to spare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnels_fit_the_memory_limit() {
    let origin = echo_origin().await;
    // All the tunnels come from this one test client.
    let proxy = Binary::start(&["--max-connections-per-client", "10000"]);
    // Warm-up: runtime threads, allocator arenas, lazily built state.
    let mut warm = Vec::new();
    for _ in 0..100 {
        warm.push(used_tunnel(proxy.addr, origin).await);
    }
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = proxy.rss_kib();
    let tunnels: Vec<TcpStream> = futures_util::stream::iter(0..TUNNELS)
        .map(|_| used_tunnel(proxy.addr, origin))
        .buffer_unordered(32)
        .collect()
        .await;
    // Let the proxy finish the last copies and go idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = proxy.rss_kib();
    let per_tunnel = after.saturating_sub(before) / TUNNELS as u64;
    eprintln!(
        "RSS before {before} KiB, after {TUNNELS} idle tunnels {after} KiB: {per_tunnel} KiB per tunnel"
    );
    assert!(
        per_tunnel <= PER_TUNNEL_KIB,
        "{per_tunnel} KiB per idle tunnel (RSS {before} -> {after} KiB for {TUNNELS})"
    );
    let at_default = before + CACHE_MEM_KIB + DEFAULT_MAX_CONNECTIONS * per_tunnel;
    assert!(
        at_default * 10 <= POD_LIMIT_KIB * 8,
        "at the default max-connections: {at_default} KiB, over 80% of {POD_LIMIT_KIB} KiB"
    );
    drop(tunnels);
}

use futures_util::StreamExt;

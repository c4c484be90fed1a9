//! Failures end to end: what the client gets (status, ERR_* label, a message naming the host)
//! when DNS, connect, reads or parents fail, when the origin dies mid-body, when the client
//! sends malformed or oversized input or stalls, and when the connection limit is reached;
//! and that the proxy keeps serving afterwards. Also `CACHE_PEER` validation messages.
use crate::support::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// What a raw upstream does after reading a request head.
#[derive(Clone, Copy)]
enum Then {
    /// Writes these bytes and keeps the connection open without writing more.
    Stall(&'static [u8]),
    /// Writes these bytes and closes normally (FIN).
    Close(&'static [u8]),
    /// Writes these bytes and resets the connection (RST).
    Reset(&'static [u8]),
}

/// A raw TCP upstream on 127.0.0.1:0 that reads each request head, records it, and then
/// misbehaves as told. Stalled connections are kept open until the server is dropped.
struct RawUpstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    async fn start(then: Then) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let h2 = heads.clone();
        let task = tokio::spawn(async move {
            let mut parked = Vec::new();
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let Some(head) = read_request_head(&mut s).await else {
                    continue;
                };
                h2.lock().await.push(head);
                match then {
                    Then::Stall(b) => {
                        let _ = s.write_all(b).await;
                        parked.push(s);
                    }
                    Then::Close(b) => {
                        let _ = s.write_all(b).await;
                        let _ = s.shutdown().await;
                        drop(s);
                    }
                    Then::Reset(b) => {
                        let _ = s.write_all(b).await;
                        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                        drop(s);
                    }
                }
            }
        });
        RawUpstream { addr, heads, task }
    }

    async fn heads(&self) -> Vec<String> {
        self.heads.lock().await.clone()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Proves the proxy still serves a normal request.
async fn still_serves(p: &TestProxy) {
    let origin = Origin::text("still here").await;
    let r = p.client().get(origin.url("/after")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "still here");
}

fn body_error_label(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-cuttle-error")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

// ---- upstream failures --------------------------------------------------------------------

#[tokio::test]
async fn dns_failure_is_502_naming_the_host() {
    let p = TestProxy::start(opts()).await;
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        p.client().get("http://does-not-exist.invalid/x").send(),
    )
    .await
    .expect("DNS failure was not reported")
    .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(body_error_label(&r), "ERR_DNS_FAIL");
    let body = r.text().await.unwrap();
    assert!(body.starts_with("ERR_DNS_FAIL"), "{body}");
    assert!(body.contains("does-not-exist.invalid"), "{body}");
    let line = p.next_log().await;
    assert!(line.contains("/502 "), "{line}");
    assert!(line.contains("http://does-not-exist.invalid/x"), "{line}");

    let (head, body) = exchange(
        p.addr,
        "CONNECT does-not-exist.invalid:443 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(body.starts_with("ERR_DNS_FAIL"), "{body}");
    assert!(body.contains("does-not-exist.invalid"), "{body}");
    p.shutdown().await;
}

/// A loopback port with nothing listening on it.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn refused_connection_is_502_naming_host_and_port() {
    let dead = closed_port();
    let p = TestProxy::start(opts()).await;
    let r = p
        .client()
        .get(format!("http://{dead}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(body_error_label(&r), "ERR_CONNECT_FAIL");
    let body = r.text().await.unwrap();
    assert!(body.contains(&dead.to_string()), "{body}");

    let (head, body) = exchange(p.addr, &connect_request(dead, "")).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(body.starts_with("ERR_CONNECT_FAIL"), "{body}");
    assert!(body.contains(&dead.to_string()), "{body}");
    still_serves(&p).await;
    p.shutdown().await;
}

/// A loopback listener that never accepts, with its backlog filled so that further
/// connection attempts get no answer (their SYNs are dropped). Returns `None` when this
/// kernel completes handshakes anyway.
async fn black_hole() -> Option<(socket2::Socket, Vec<TcpStream>, SocketAddr)> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut held = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => held.push(s),
            Ok(Err(e)) => panic!("connecting to the backlog listener failed: {e}"),
            Err(_) => return Some((sock, held, addr)),
        }
    }
    None
}

#[tokio::test]
async fn connect_timeout_is_504() {
    let Some((_listener, _held, addr)) = black_hole().await else {
        panic!("this kernel completes TCP handshakes beyond the listen backlog");
    };
    let mut o = opts();
    o.connect_timeout = Some("1s".into());
    let p = TestProxy::start(o).await;
    let r = p
        .client()
        .get(format!("http://{addr}/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(body_error_label(&r), "ERR_CONNECT_FAIL");
    let body = r.text().await.unwrap();
    assert!(body.contains(&addr.to_string()), "{body}");
    assert!(body.contains("timed out"), "{body}");
    let line = p.next_log().await;
    assert!(line.contains("/504 "), "{line}");

    let (head, body) = exchange(p.addr, &connect_request(addr, "")).await;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(body.contains("timed out"), "{body}");
    p.shutdown().await;
}

#[tokio::test]
async fn origin_that_never_answers_is_504_read_timeout() {
    let up = RawUpstream::start(Then::Stall(b"")).await;
    let mut o = opts();
    o.read_timeout = Some("1s".into());
    let p = TestProxy::start(o).await;
    let r = p
        .client()
        .get(format!("http://{}/", up.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(body_error_label(&r), "ERR_READ_TIMEOUT");
    let body = r.text().await.unwrap();
    assert!(body.contains(&up.addr.to_string()), "{body}");
    assert_eq!(up.heads().await.len(), 1, "the origin got the request");
    let line = p.next_log().await;
    assert!(line.contains("/504 "), "{line}");
    still_serves(&p).await;
    p.shutdown().await;
}

#[tokio::test]
async fn body_that_stalls_midway_is_aborted() {
    let up = RawUpstream::start(Then::Stall(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789",
    ))
    .await;
    let mut o = opts();
    o.read_timeout = Some("1s".into());
    let p = TestProxy::start(o).await;
    let r = p
        .client()
        .get(format!("http://{}/", up.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(15), r.bytes())
        .await
        .expect("the stalled body was never cut off");
    assert!(
        body.is_err(),
        "client got a complete-looking body: {body:?}"
    );
    let line = p.next_log().await;
    assert!(line.contains("TCP_MISS_ABORTED/200"), "{line}");
    still_serves(&p).await;
    p.shutdown().await;
}

const LONG_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\nonly a few bytes";

#[tokio::test]
async fn origin_dying_mid_body_never_looks_complete() {
    let p = TestProxy::start(opts()).await;
    for then in [Then::Close(LONG_HEAD), Then::Reset(LONG_HEAD)] {
        let up = RawUpstream::start(then).await;
        // The origin's head and first bytes are read before the close or reset (the
        // kernel delivers queued data first), so the head is relayed and the body fails.
        let r = p
            .client()
            .get(format!("http://{}/", up.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body = r.bytes().await;
        assert!(
            body.is_err(),
            "complete-looking body: {:?}",
            body.map(|b| b.len())
        );
        let line = p.next_log().await;
        assert!(line.contains("TCP_MISS_ABORTED/200"), "{line}");
    }
    // Same through a raw socket: fewer bytes than announced, then the connection ends.
    let up = RawUpstream::start(Then::Close(LONG_HEAD)).await;
    let out = raw_until_close(
        p.addr,
        format!("GET http://{}/ HTTP/1.1\r\nHost: x\r\n\r\n", up.addr).as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let (_, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(body.len() < 100_000, "body of {} bytes", body.len());
    let line = p.next_log().await;
    assert!(line.contains("TCP_MISS_ABORTED/200"), "{line}");
    still_serves(&p).await;
    p.shutdown().await;
}

#[tokio::test]
async fn origin_closing_without_a_response_is_502() {
    let up = RawUpstream::start(Then::Close(b"")).await;
    let p = TestProxy::start(opts()).await;
    let r = p
        .client()
        .get(format!("http://{}/", up.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(body_error_label(&r), "ERR_READ_ERROR");
    let body = r.text().await.unwrap();
    assert!(body.contains(&up.addr.to_string()), "{body}");
    let line = p.next_log().await;
    assert!(line.contains("/502 "), "{line}");
    still_serves(&p).await;
    p.shutdown().await;
}

// ---- bad input from clients ---------------------------------------------------------------

#[tokio::test]
async fn malformed_requests_are_400_and_the_proxy_keeps_serving() {
    let origin = Origin::text("x").await;
    let o = origin.addr;
    let p = TestProxy::start(opts()).await;
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("garbage request line", "BLAH\r\n\r\n".into(), None),
        (
            "header without colon",
            format!("GET http://{o}/ HTTP/1.1\r\nHost {o}\r\n\r\n"),
            None,
        ),
        (
            "space in host",
            "GET http://a b/ HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            None,
        ),
        (
            "userinfo in URL",
            format!("GET http://user:pw@{o}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some("user:password@"),
        ),
        (
            "port 0",
            "GET http://127.0.0.1:0/ HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            Some("port"),
        ),
        (
            "port 99999",
            "GET http://127.0.0.1:99999/ HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            None,
        ),
        (
            "ftp scheme",
            format!("GET ftp://{o}/file HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some("ftp"),
        ),
        (
            "CONNECT without port",
            "CONNECT example.com HTTP/1.1\r\nHost: example.com\r\n\r\n".into(),
            Some("host:port"),
        ),
    ];
    for (what, req, says) in cases {
        let out = raw_until_close(p.addr, req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{what}: {out}");
        if let Some(says) = says {
            assert!(out.contains(says), "{what}: expected `{says}` in {out}");
        }
        assert!(!out.contains("pw@"), "{what}: {out}");
        still_serves(&p).await;
    }
    assert_eq!(origin.hits(), 0, "a malformed request reached the origin");
    let logs = p.all_logs();
    for l in &logs {
        assert!(
            !l.contains("pw"),
            "credentials from the URL in the log: {l}"
        );
    }
    assert!(
        logs.iter().filter(|l| l.contains("/400 ")).count() >= 8,
        "every malformed request is logged: {logs:#?}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn oversized_request_head_is_431() {
    let origin = Origin::text("x").await;
    let p = TestProxy::start(opts()).await;
    let big = "a".repeat(100 * 1024);
    let req = format!(
        "GET http://{}/ HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n",
        origin.addr
    );
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let (mut rd, mut wr) = s.split();
    // Write and read at once: the proxy answers before it has read everything.
    let write = async {
        let _ = wr.write_all(req.as_bytes()).await;
    };
    let read = async {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut out)).await;
        out
    };
    let ((), out) = tokio::join!(write, read);
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "oversized head answered with: {out:?}"
    );
    let line = p.log_with("/431 ").await;
    assert!(line.contains("NONE"), "{line}");
    assert_eq!(origin.hits(), 0);
    still_serves(&p).await;
    p.shutdown().await;
}

#[tokio::test]
async fn slow_request_head_is_cut_off() {
    let mut o = opts();
    o.header_read_timeout = Some("1s".into());
    let p = TestProxy::start(o).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0")
        .await
        .unwrap();
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut out)).await;
    let r = r.expect("a client sending half a request head was not disconnected");
    // hyper closes without a response (EOF); a 408 would be acceptable too, a success not.
    r.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    still_serves(&p).await;
    p.shutdown().await;
}

#[tokio::test]
async fn max_connections_refuses_with_503_then_recovers() {
    let origin = Origin::text("after").await;
    let mut o = opts();
    o.max_connections = Some(2);
    let p = TestProxy::start(o).await;

    // Hold one idle connection and one CONNECT tunnel.
    let idle = TcpStream::connect(p.addr).await.unwrap();
    let mut tunnel = tunnel(p.addr, origin.addr).await;

    // The refusal comes unasked (sending a request would make the close a reset).
    let out = raw_until_close(p.addr, b"").await;
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(out.contains("ERR_TOO_MANY_CONNECTIONS"), "{out}");
    assert_eq!(origin.hits(), 0);

    // The tunnel still works while the limit is reached.
    tunnel
        .write_all(b"GET /in-tunnel HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut tunnel).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    drop(idle);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // `raw` tolerates the reset that follows a refusal of a connection that sent a request.
        let out = raw(
            p.addr,
            format!(
                "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                origin.url("/again")
            )
            .as_bytes(),
        )
        .await;
        if out.starts_with("HTTP/1.1 200") {
            assert!(out.ends_with("after"), "{out}");
            break;
        }
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 503"), "{out}");
        assert!(
            std::time::Instant::now() < deadline,
            "no slot freed after closing a connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(origin.last().uri, "/again");
    drop(tunnel);
    p.shutdown().await;
}

// ---- parents ------------------------------------------------------------------------------

const PEER_PASS: &str = "s3cretpw";

fn peer_opts(parent: SocketAddr) -> cuttle::config::Options {
    let mut o = opts();
    o.cache_peer = Some(format!("user:{PEER_PASS}:{}:{}", parent.ip(), parent.port()).into());
    // Basic sent with every request (the default `auto` waits for a 407 first).
    o.parent_auth = Some("basic".into());
    o
}

/// `Basic base64(user:s3cretpw)`, the value cuttle must send to the parent.
fn peer_auth() -> String {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("user:{PEER_PASS}"));
    format!("Basic {token}")
}

fn assert_no_secret(text: &str) {
    assert!(!text.contains(PEER_PASS), "password leaked: {text}");
    let auth = peer_auth();
    assert!(
        !text.contains(auth.trim_start_matches("Basic ")),
        "credentials leaked: {text}"
    );
}

#[tokio::test]
async fn parent_sending_junk_to_connect_is_502_parent_fail() {
    let parent =
        RawUpstream::start(Then::Close(b"SSH-2.0-OpenSSH_9.6 this is not http\r\n\r\n")).await;
    let p = TestProxy::start(peer_opts(parent.addr)).await;
    let (head, body) = exchange(
        p.addr,
        "CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(body.starts_with("ERR_PARENT_FAIL"), "{body}");
    assert!(body.contains(&parent.addr.to_string()), "{body}");
    assert_no_secret(&body);
    let seen = parent.heads().await;
    assert!(
        seen[0].starts_with("CONNECT example.test:443 HTTP/1.1"),
        "{seen:?}"
    );
    assert!(
        seen[0].contains(&peer_auth()),
        "no credentials sent: {seen:?}"
    );
    let line = p.next_log().await;
    assert!(line.contains("/502 "), "{line}");
    assert_no_secret(&line);
    p.shutdown().await;
}

const PARENT_407: &[u8] = b"HTTP/1.1 407 Proxy Authentication Required\r\n\
Proxy-Authenticate: Basic realm=\"upstream\"\r\nContent-Length: 0\r\n\r\n";

#[tokio::test]
async fn parent_rejecting_credentials_is_502_without_the_password() {
    let parent = RawUpstream::start(Then::Stall(PARENT_407)).await;
    let p = TestProxy::start(peer_opts(parent.addr)).await;

    // CONNECT
    let (head, body) = exchange(
        p.addr,
        "CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(body.contains("rejected cuttle's credentials"), "{body}");
    assert!(body.contains(&parent.addr.to_string()), "{body}");
    assert!(
        !head.to_ascii_lowercase().contains("proxy-authenticate"),
        "the parent's challenge must not reach the client: {head}"
    );
    assert_no_secret(&head);
    assert_no_secret(&body);

    // Plain GET through the parent
    let r = p
        .client()
        .get("http://example.test/pkg.tgz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(body_error_label(&r), "ERR_PARENT_AUTH");
    assert!(!r.headers().contains_key("proxy-authenticate"));
    let body = r.text().await.unwrap();
    assert!(body.contains("rejected cuttle's credentials"), "{body}");
    assert_no_secret(&body);

    let seen = parent.heads().await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[1].starts_with("GET http://example.test/pkg.tgz HTTP/1.1"),
        "{seen:?}"
    );
    for h in &seen {
        assert!(h.contains(&peer_auth()), "no credentials sent: {h}");
    }
    for l in p.all_logs() {
        assert!(l.contains("/502 "), "{l}");
        assert_no_secret(&l);
    }
    p.shutdown().await;
}

// ---- CACHE_PEER validation ----------------------------------------------------------------

#[test]
fn invalid_cache_peer_values_are_config_errors() {
    let cases = [
        ("user:s3cretpw:proxy.example", "port"),
        ("http://user:s3cretpw@proxy.example", "port"),
        (
            "user:s3cretpw:proxy.example:0",
            "port is not a number from 1 to 65535",
        ),
        (
            "user:s3cretpw:proxy.example:70000",
            "port is not a number from 1 to 65535",
        ),
        ("user:s3cretpw::3128", "host is empty"),
        ("http://user:s3cretpw@:3128", "host is empty"),
        ("socks5://user:s3cretpw@proxy.example:1080", "http://"),
        ("user:s3cretpw:[::1:3128", "IPv6"),
        ("user:s3cretpw:::1]:3128", "]"),
        ("user:s3cretpw:[zz]:3128", "IPv6"),
        ("user:s3cretpw:[2001:db8::1", "IPv6"),
        ("http://user:s3cretpw@[::1:3128", "IPv6"),
    ];
    for (value, names) in cases {
        let mut o = opts();
        o.cache_peer = Some(value.into());
        let errs = match o.validate() {
            Ok(c) => panic!("`{value}` was accepted as {:?}", c.upstream.peers),
            Err(e) => e,
        };
        let line = errs
            .iter()
            .find(|e| e.starts_with("CACHE_PEER"))
            .unwrap_or_else(|| panic!("no CACHE_PEER error for `{value}`: {errs:?}"));
        assert!(line.contains(names), "`{value}`: `{names}` not in {line}");
        assert!(!line.contains("s3cretpw"), "`{value}`: password in {line}");
    }
}

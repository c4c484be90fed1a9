//! Parent proxies against a real Squid requiring Basic auth: plain requests and CONNECT
//! tunnels through it with credentials full of '@', ':', '%' and '\', curl as the client,
//! a rejected password, failover past a dead peer and its retry after the backoff, the
//! direct list, request bodies, and the `http://user:pass@host:port` form.
use crate::support::squid::SquidParent;
use crate::support::*;

use std::net::SocketAddr;
use std::time::Duration;

use cuttle::config::Options;
use http_body_util::BodyExt;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const USER: &str = "corp\\build@x";
const PASS: &str = "p@ss:w%rd";

// ---- helpers --------------------------------------------------------------------------------

/// The user name as squid's native access log writes it (a `\` is doubled).
fn squid_user() -> String {
    USER.replace('\\', "\\\\")
}

fn peer_opts(cache_peer: &str) -> Options {
    let mut o = opts();
    o.cache_peer = Some(cache_peer.into());
    // These tests are about Basic sent with every request (the default `auto` waits for the
    // parent's 407 first: tests/parent_auth.rs).
    o.parent_auth = Some("basic".into());
    o
}

/// A 127.0.0.1 port nobody listens on (bound and released; nothing else binds it in time).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The Squid-image `CACHE_PEER` form for a peer on 127.0.0.1:`port`.
fn peer_entry(user: &str, pass: &str, port: u16) -> String {
    format!(
        "{}:{}:127.0.0.1:{port}",
        utf8_percent_encode(user, NON_ALPHANUMERIC),
        utf8_percent_encode(pass, NON_ALPHANUMERIC)
    )
}

/// An origin echoing the request body back.
async fn echo_origin() -> Origin {
    Origin::start(|req| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        respond(200, body)
    })
    .await
}

/// Opens a tunnel to `target` through the proxy at `proxy`, sends a GET for `path` inside it
/// and returns the CONNECT response head and everything the origin answered until EOF.
async fn tunnel_get(proxy: SocketAddr, target: SocketAddr, path: &str) -> (String, String) {
    let (mut s, head) = connect_via(proxy, target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "CONNECT failed: {head}");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    (
        head,
        String::from_utf8_lossy(&read_to_eof(&mut s).await).into_owned(),
    )
}

/// Sends a CONNECT that is expected to fail and returns the response head and body.
async fn failed_connect(proxy: SocketAddr, target: SocketAddr) -> (String, String) {
    let (mut s, head) = connect_via(proxy, target).await;
    assert!(header_of(&head, "content-length").is_some(), "{head}");
    let body = read_body(&mut s, &head).await;
    (head, body)
}

/// Asserts no captured cuttle log line carries the password, raw or percent-encoded.
fn assert_no_password(p: &TestProxy, pass: &str) {
    let encoded = utf8_percent_encode(pass, NON_ALPHANUMERIC).to_string();
    for l in p.all_logs() {
        assert!(
            !l.contains(pass) && !l.contains(&encoded),
            "password in log: {l}"
        );
    }
}

// ---- tests ------------------------------------------------------------------------------------

/// Plain GET through cuttle and Squid: absolute-form request with Proxy-Authorization that
/// squid accepts, the origin sees both Via entries and no credentials.
#[tokio::test]
async fn plain_get_through_squid() {
    let squid = SquidParent::start(USER, PASS).await;
    let origin = Origin::text("through the parent").await;
    let p = TestProxy::start(peer_opts(&squid.cache_peer())).await;

    let url = origin.url("/plain?q=1");
    let r = p.client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "through the parent");

    let line = squid.wait_for_access_log(&url).await;
    let line = line.lines().find(|l| l.contains(&url)).unwrap();
    assert!(line.contains("TCP_MISS/200"), "{line}");
    assert!(
        line.contains(&format!("GET {url} {}", squid_user())),
        "{line}"
    );

    let seen = origin.last();
    assert_eq!(seen.uri, "/plain?q=1");
    assert!(seen.headers.get("proxy-authorization").is_none());
    let via = seen.headers["via"].to_str().unwrap().to_string();
    assert!(via.starts_with("1.1 cuttle, "), "{via}");
    assert!(via.contains("cuttle-test-squid"), "{via}");

    let log = p.next_log().await;
    assert!(log.contains("TCP_MISS/200"), "{log}");
    assert!(
        log.contains(&format!("FIRSTUP_PARENT/127.0.0.1:{}", squid.addr.port())),
        "{log}"
    );
    assert_no_password(&p, PASS);
    p.shutdown().await;
}

/// CONNECT through cuttle and Squid: an HTTP exchange inside the tunnel, both logs agree.
#[tokio::test]
async fn connect_through_squid() {
    let squid = SquidParent::start(USER, PASS).await;
    let origin = Origin::text("inside the tunnel").await;
    let p = TestProxy::start(peer_opts(&squid.cache_peer())).await;

    let (_, resp) = tunnel_get(p.addr, origin.addr, "/tunneled").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("inside the tunnel"), "{resp}");
    assert_eq!(origin.last().uri, "/tunneled");

    let log = squid
        .wait_for_access_log(&format!("CONNECT {}", origin.addr))
        .await;
    let line = log.lines().find(|l| l.contains("CONNECT")).unwrap();
    assert!(line.contains("TCP_TUNNEL/200"), "{line}");
    assert!(
        line.contains(&format!("CONNECT {} {}", origin.addr, squid_user())),
        "{line}"
    );

    let log = p.log_with("CONNECT").await;
    assert!(log.contains("TCP_TUNNEL/200"), "{log}");
    assert!(
        log.contains(&format!("FIRSTUP_PARENT/127.0.0.1:{}", squid.addr.port())),
        "{log}"
    );
    assert_no_password(&p, PASS);
    p.shutdown().await;
}

/// curl as the client, plain (`-x`) and tunnelled (`-p -x`), through cuttle and Squid.
#[tokio::test]
async fn curl_through_cuttle_and_squid() {
    let squid = SquidParent::start(USER, PASS).await;
    let origin = Origin::text("curl body").await;
    let p = TestProxy::start(peer_opts(&squid.cache_peer())).await;

    for (tunnel, path) in [(false, "/curl-plain"), (true, "/curl-tunnel")] {
        let mut args = vec!["-sS".to_string(), "--max-time".into(), "20".into()];
        if tunnel {
            args.push("-p".into());
        }
        args.extend(["-x".into(), p.url(), origin.url(path)]);
        let out = run_curl(args).await;
        assert!(
            out.status.success(),
            "curl {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "curl body", "{path}");
        assert_eq!(origin.last().uri, path);
    }
    // The plain request went through squid as a GET, the tunnelled one as a CONNECT.
    squid.wait_for_access_log(&origin.url("/curl-plain")).await;
    squid.wait_for_access_log("TCP_TUNNEL/200").await;
    let via = origin.seen()[0].headers["via"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(via.contains("cuttle-test-squid"), "{via}");
    // Inside the tunnel nobody rewrites the request.
    assert!(origin.last().headers.get("via").is_none());

    let plain = p.log_with("/curl-plain").await;
    assert!(plain.contains("FIRSTUP_PARENT/"), "{plain}");
    let tunnel = p.log_with("CONNECT").await;
    assert!(tunnel.contains("TCP_TUNNEL/200"), "{tunnel}");
    assert!(tunnel.contains("FIRSTUP_PARENT/"), "{tunnel}");
    p.shutdown().await;
}

/// A wrong password: squid answers 407, cuttle turns it into a 502 that says so without
/// repeating the password, for plain requests and tunnels alike.
#[tokio::test]
async fn wrong_password_gives_502() {
    let squid = SquidParent::start(USER, PASS).await;
    let origin = Origin::text("never").await;
    let wrong = "wr@ng:p%ss";
    let p = TestProxy::start(peer_opts(&peer_entry(USER, wrong, squid.addr.port()))).await;

    let r = p.client().get(origin.url("/denied")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-cuttle-error"], "ERR_PARENT_AUTH");
    let body = r.text().await.unwrap();
    assert!(body.contains("rejected cuttle's credentials"), "{body}");
    assert!(!body.contains(wrong) && !body.contains("wr%40ng"), "{body}");
    let log = squid.wait_for_access_log("TCP_DENIED/407").await;
    assert!(log.contains(&origin.url("/denied")), "{log}");

    let (head, body) = failed_connect(p.addr, origin.addr).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(body.contains("rejected cuttle's credentials"), "{body}");
    assert!(!body.contains(wrong), "{body}");
    let log = squid
        .wait_for_access_log(&format!("CONNECT {}", origin.addr))
        .await;
    let line = log.lines().find(|l| l.contains("CONNECT")).unwrap();
    assert!(line.contains("TCP_DENIED/407"), "{line}");

    assert_eq!(origin.hits(), 0, "nothing reached the origin");
    let log = p.log_with("/denied").await;
    assert!(log.contains("/502"), "{log}");
    assert_no_password(&p, wrong);
    p.shutdown().await;
}

/// A dead first peer (closed port): plain requests fail over to Squid, the peer is skipped
/// while down and tried again after `peer-backoff`.
#[tokio::test]
async fn failover_and_retry_after_backoff() {
    let squid = SquidParent::start(USER, PASS).await;
    let origin = Origin::text("via squid").await;
    let dead = closed_port();
    let mut o = peer_opts(&format!(
        "{},{}",
        peer_entry(USER, PASS, dead),
        squid.cache_peer()
    ));
    o.peer_backoff = Some("1s".into());
    let p = TestProxy::start(o).await;
    let via_squid = format!("FIRSTUP_PARENT/127.0.0.1:{}", squid.addr.port());

    for path in ["/first", "/second"] {
        let r = p.client().get(origin.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.text().await.unwrap(), "via squid");
        let log = p.log_with(path).await;
        assert!(log.contains("TCP_MISS/200"), "{log}");
        assert!(log.contains(&via_squid), "{log}");
    }
    squid.wait_for_access_log(&origin.url("/second")).await;

    // The dead peer comes back on the same port, as a "proxy" answering every request.
    let listener = TcpListener::bind(("127.0.0.1", dead))
        .await
        .unwrap_or_else(|e| panic!("rebind the dead peer's port {dead}: {e}"));
    let revived = Origin::serve(listener, |_req| async { respond(200, "revived peer") });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    loop {
        n += 1;
        let path = format!("/retry{n}");
        let r = p.client().get(origin.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body = r.text().await.unwrap();
        let log = p.log_with(&path).await;
        if body == "revived peer" {
            assert!(
                log.contains(&format!("FIRSTUP_PARENT/127.0.0.1:{dead}")),
                "{log}"
            );
            break;
        }
        assert_eq!(body, "via squid");
        assert!(log.contains(&via_squid), "{log}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first peer was not retried within 15s of a 1s backoff"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(revived.connections() >= 1);
    // It got the request in absolute form with the credentials meant for it.
    let seen = revived.last();
    assert_eq!(seen.uri.to_string(), origin.url(&format!("/retry{n}")));
    assert_eq!(
        seen.headers["proxy-authorization"].to_str().unwrap(),
        squid.proxy_authorization()
    );
    p.shutdown().await;
}

/// CONNECT fails over past a dead first peer too, and the peer stays skipped while down
/// (default backoff): something listening on its port again gets no connection.
#[tokio::test]
async fn connect_failover() {
    let squid = SquidParent::start(USER, PASS).await;
    let origin = Origin::text("tunnel via squid").await;
    let dead = closed_port();
    let p = TestProxy::start(peer_opts(&format!(
        "{},{}",
        peer_entry(USER, PASS, dead),
        squid.cache_peer()
    )))
    .await;
    let via_squid = format!("FIRSTUP_PARENT/127.0.0.1:{}", squid.addr.port());

    let (_, resp) = tunnel_get(p.addr, origin.addr, "/t1").await;
    assert!(resp.ends_with("tunnel via squid"), "{resp}");
    let log = p.log_with("CONNECT").await;
    assert!(log.contains("TCP_TUNNEL/200"), "{log}");
    assert!(log.contains(&via_squid), "{log}");

    let listener = TcpListener::bind(("127.0.0.1", dead))
        .await
        .unwrap_or_else(|e| panic!("rebind the dead peer's port {dead}: {e}"));
    let revived = Origin::serve(listener, |_req| async { respond(200, "revived peer") });
    let (_, resp) = tunnel_get(p.addr, origin.addr, "/t2").await;
    assert!(resp.ends_with("tunnel via squid"), "{resp}");
    let log = p.log_with("CONNECT").await;
    assert!(log.contains(&via_squid), "{log}");
    assert_eq!(revived.connections(), 0, "a peer marked down was tried");

    let log = squid.access_log();
    assert_eq!(
        log.lines().filter(|l| l.contains("TCP_TUNNEL/200")).count(),
        2,
        "{log}"
    );
    p.shutdown().await;
}

/// The direct list: `localhost` goes direct (squid never sees it), `127.0.0.1` (the same
/// origin) goes through squid; CONNECT follows the same rule.
#[tokio::test]
async fn direct_list_bypasses_the_parent() {
    let squid = SquidParent::start(USER, PASS).await;
    let origin = Origin::text("either way").await;
    let mut o = peer_opts(&squid.cache_peer());
    o.direct = Some(vec!["localhost".into()]);
    let p = TestProxy::start(o).await;
    let port = origin.addr.port();

    let direct_url = format!("http://localhost:{port}/direct");
    let r = p.client().get(&direct_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "either way");
    let log = p.log_with("/direct").await;
    assert!(log.contains("HIER_DIRECT/"), "{log}");
    let seen = origin.last();
    assert_eq!(seen.uri, "/direct");
    assert_eq!(seen.headers["via"], "1.1 cuttle");

    let parent_url = origin.url("/parent");
    let r = p.client().get(&parent_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "either way");
    let log = p.log_with("/parent").await;
    assert!(log.contains("FIRSTUP_PARENT/"), "{log}");
    let via = origin.last().headers["via"].to_str().unwrap().to_string();
    assert!(via.contains("cuttle-test-squid"), "{via}");

    // A tunnel to localhost goes direct as well.
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(
        format!("GET /direct-tunnel HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.ends_with("either way"), "{out}");
    drop(s);
    let log = p.log_with("CONNECT").await;
    assert!(log.contains("HIER_DIRECT/"), "{log}");

    let slog = squid.wait_for_access_log(&parent_url).await;
    assert!(!slog.contains("/direct"), "{slog}");
    assert!(!slog.contains("localhost"), "{slog}");
    p.shutdown().await;
}

/// Request bodies reach the origin intact through squid, with a length and chunked.
#[tokio::test]
async fn post_body_through_squid() {
    let squid = SquidParent::start(USER, PASS).await;
    let origin = echo_origin().await;
    let p = TestProxy::start(peer_opts(&squid.cache_peer())).await;
    let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();

    let r = p
        .client()
        .post(origin.url("/upload"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.unwrap() == body,
        "length-delimited body changed"
    );
    let seen = origin.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(
        seen.headers["content-length"],
        body.len().to_string().as_str()
    );

    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(30_000).map(|c| Ok(c.to_vec())).collect();
    let r = p
        .client()
        .post(origin.url("/upload-chunked"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == body, "chunked body changed");
    assert_eq!(origin.last().uri, "/upload-chunked");

    let log = squid.wait_for_access_log("/upload-chunked").await;
    assert_eq!(log.matches("POST http://").count(), 2, "{log}");
    p.shutdown().await;
}

/// `CACHE_PEER=http://user:pass@127.0.0.1:PORT` with percent-encoded credentials.
#[tokio::test]
async fn url_form_cache_peer() {
    let squid = SquidParent::start(USER, PASS).await;
    let origin = Origin::text("url form").await;
    let peer = format!(
        "http://{}:{}@{}/",
        utf8_percent_encode(USER, NON_ALPHANUMERIC),
        utf8_percent_encode(PASS, NON_ALPHANUMERIC),
        squid.addr
    );
    let p = TestProxy::start(peer_opts(&peer)).await;

    let r = p
        .client()
        .get(origin.url("/url-form"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "url form");
    // The line with the user: a first 407 (cuttle learning the scheme) may be logged first.
    squid
        .wait_for_access_log(&format!("{} {}", origin.url("/url-form"), squid_user()))
        .await;

    let (_, resp) = tunnel_get(p.addr, origin.addr, "/url-form-tunnel").await;
    assert!(resp.ends_with("url form"), "{resp}");
    squid.wait_for_access_log("TCP_TUNNEL/200").await;
    assert_no_password(&p, PASS);
    p.shutdown().await;
}

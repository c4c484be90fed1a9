//! Plain HTTP forwarding through cuttle: listening on several addresses (IPv6 too), every
//! method, streaming large bodies both ways without buffering, keep-alive on both legs,
//! `Expect: 100-continue`, hop-by-hop headers, upgrades, origin-form refusal, curl as a real
//! client, and the access-log formats.
use crate::support::*;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cuttle::config::Options;
use cuttle::http::body::{boxed, full};
use futures_util::StreamExt;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---- helpers --------------------------------------------------------------------------------

/// An origin answering `METHOD URI\n` followed by the request body it received.
async fn echo_origin() -> Origin {
    Origin::start(|req| async move {
        let line = format!("{} {}\n", req.method(), req.uri());
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let mut out = line.into_bytes();
        out.extend_from_slice(&body);
        Response::builder()
            .header("content-type", "text/plain")
            .body(full(out))
            .unwrap()
    })
    .await
}

/// A field of /proc/self/status in KiB (VmRSS, VmHWM).
fn proc_status_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing in /proc/self/status"))
}

// ---- listening --------------------------------------------------------------------------------

#[tokio::test]
async fn listens_on_ipv4_and_ipv6_and_reaches_ipv6_origins() {
    let origin = Origin::text("v4 origin").await;
    let v6 = TcpListener::bind("[::1]:0").await.unwrap();
    let origin6 = Origin::serve(v6, |_req| async { respond(200, "v6 origin") });
    let p = TestProxy::start(Options {
        listen: Some(vec!["127.0.0.1:0".into(), "[::1]:0".into()]),
        ..opts()
    })
    .await;
    let addrs = p.proxy().addrs().to_vec();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert!(addrs[0].is_ipv4() && addrs[0].port() != 0, "{addrs:?}");
    assert!(addrs[1].is_ipv6() && addrs[1].port() != 0, "{addrs:?}");
    for a in &addrs {
        let client = reqwest::Client::builder()
            .no_proxy()
            .proxy(reqwest::Proxy::all(format!("http://{a}")).unwrap())
            .build()
            .unwrap();
        let r = client.get(origin.url("/four")).send().await.unwrap();
        assert_eq!(r.status(), 200, "via {a}");
        assert_eq!(r.text().await.unwrap(), "v4 origin", "via {a}");
        let url6 = format!("http://[::1]:{}/six", origin6.addr.port());
        let r = client.get(&url6).send().await.unwrap();
        assert_eq!(r.status(), 200, "via {a}");
        assert_eq!(r.text().await.unwrap(), "v6 origin", "via {a}");
    }
    assert_eq!(origin.hits(), 2);
    assert_eq!(origin6.hits(), 2);
    assert_eq!(origin6.last().uri, "/six");
    // The client address logged for the IPv6 listener is ::1, and the hop is the v6 origin.
    let logs = [
        p.next_log().await,
        p.next_log().await,
        p.next_log().await,
        p.next_log().await,
    ];
    assert!(
        logs.iter().any(|l| l.contains(" ::1 ")
            && l.contains("TCP_MISS/200")
            && l.contains("HIER_DIRECT/::1")),
        "{logs:#?}"
    );
    p.shutdown().await;
}

// ---- methods ----------------------------------------------------------------------------------

#[tokio::test]
async fn every_method_is_forwarded_with_path_query_and_body() {
    let origin = echo_origin().await;
    let p = TestProxy::start(opts()).await;
    let client = p.client();
    let methods = [
        "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE", "PROPFIND",
    ];
    for (i, m) in methods.iter().enumerate() {
        let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
        let path = format!("/p/{i}/x%20y?q={m}&n={i}");
        let body = format!("body of {m} #{i}");
        let r = client
            .request(method, origin.url(&path))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{m}");
        assert_eq!(r.headers()["via"], "1.1 cuttle", "{m}");
        let text = r.text().await.unwrap();
        assert_eq!(text, format!("{m} {path}\n{body}"), "{m}");
        let seen = origin.last();
        assert_eq!(seen.method.as_str(), *m);
        assert_eq!(seen.uri.to_string(), path);
        let line = p.next_log().await;
        assert!(line.contains("TCP_MISS/200"), "{line}");
        assert!(line.contains(&format!(" {m} ")), "{line}");
    }
    // HEAD: no body comes back, but the method and the target reach the origin.
    let r = client.head(origin.url("/head?x=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().is_empty());
    assert_eq!(origin.last().method, http::Method::HEAD);
    assert_eq!(origin.last().uri, "/head?x=1");
    assert_eq!(origin.hits(), methods.len() + 1);
    p.shutdown().await;
}

// ---- streaming --------------------------------------------------------------------------------

const CHUNK: usize = 64 * 1024;

/// Origin for streaming: `POST /count` counts the request body without keeping it and
/// answers the count; `GET /sized/N` and `GET /chunked/N` send N generated bytes.
async fn streaming_origin() -> Origin {
    Origin::start(|req| async move {
        let path = req.uri().path().to_string();
        if path == "/count" {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(frame) = body.frame().await {
                if let Ok(d) = frame.unwrap().into_data() {
                    n += d.len() as u64;
                }
            }
            return respond(200, n.to_string());
        }
        let (kind, n) = path[1..].split_once('/').unwrap();
        let n: usize = n.parse().unwrap();
        let chunk = Bytes::from(vec![b'x'; CHUNK]);
        let frames = futures_util::stream::iter((0..n.div_ceil(CHUNK)).map(move |i| {
            let len = CHUNK.min(n - i * CHUNK);
            Ok::<_, Infallible>(Frame::data(chunk.slice(..len)))
        }));
        let mut resp = Response::builder().header("content-type", "application/octet-stream");
        if kind == "sized" {
            resp = resp.header("content-length", n);
        }
        resp.body(boxed(StreamBody::new(frames))).unwrap()
    })
    .await
}

fn generated_upload(n: usize) -> reqwest::Body {
    let chunk = Bytes::from(vec![b'u'; CHUNK]);
    reqwest::Body::wrap_stream(futures_util::stream::iter(
        (0..n.div_ceil(CHUNK))
            .map(move |i| Ok::<_, Infallible>(chunk.slice(..CHUNK.min(n - i * CHUNK)))),
    ))
}

/// Set in the child process that runs the streaming test alone.
const STREAM_CHILD: &str = "CUTTLE_TEST_STREAM_CHILD";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_without_buffering() {
    // Memory is measured for the whole process, so the measurement runs alone in a child
    // process: other tests of this file (or the backtrace a failing one symbolizes) would
    // otherwise count as growth.
    if std::env::var_os(STREAM_CHILD).is_none() {
        // The test's name in the `it` binary: its module path without the crate.
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        let name = format!("{module}::large_bodies_stream_both_ways_without_buffering");
        let out = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &name, "--nocapture", "--test-threads=1"])
            .env(STREAM_CHILD, "1")
            .output()
            .await
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "child test failed:\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains("1 passed"),
            "child did not run the test:\n{stdout}"
        );
        eprint!("{stderr}");
        return;
    }
    // Each transfer is much larger than the memory growth allowed below, so a proxy that
    // buffered any one body whole would fail; loopback keeps this a few seconds in debug.
    const N: usize = 256 * 1024 * 1024 + 12_345;
    const ALLOWED_GROWTH_KIB: u64 = 64 * 1024;
    let origin = streaming_origin().await;
    let p = TestProxy::start(opts()).await;
    let client = p.client();
    // Warm up (pools, lazily allocated buffers) before measuring.
    let r = client.get(origin.url("/sized/1000")).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 1000);
    // Reset the peak-RSS counter when the kernel allows it (Linux >= 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = proc_status_kib("VmRSS");
    let started = Instant::now();

    // Upload, chunked (no length known up front).
    let r = client
        .post(origin.url("/count"))
        .body(generated_upload(N))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), N.to_string());
    let seen = origin.last();
    assert_eq!(seen.headers["transfer-encoding"], "chunked");
    assert!(seen.headers.get("content-length").is_none());

    // Upload with a Content-Length.
    let r = client
        .post(origin.url("/count"))
        .header("content-length", N.to_string())
        .body(generated_upload(N))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), N.to_string());
    let seen = origin.last();
    assert_eq!(seen.headers["content-length"], N.to_string().as_str());
    assert!(seen.headers.get("transfer-encoding").is_none());

    // Downloads, sized and chunked, counted as they arrive.
    for kind in ["sized", "chunked"] {
        let r = client
            .get(origin.url(&format!("/{kind}/{N}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        match kind {
            "sized" => assert_eq!(r.headers()["content-length"], N.to_string().as_str()),
            _ => assert!(r.headers().get("content-length").is_none(), "{kind}"),
        }
        let mut got = 0usize;
        let mut stream = r.bytes_stream();
        while let Some(chunk) = stream.next().await {
            got += chunk.unwrap().len();
        }
        assert_eq!(got, N, "{kind}");
    }
    let peak = proc_status_kib("VmHWM");
    let growth = peak.saturating_sub(rss_before);
    eprintln!(
        "streamed 4 x {} MiB in {:?}; RSS before {rss_before} KiB, peak {peak} KiB",
        N >> 20,
        started.elapsed()
    );
    assert!(
        growth < ALLOWED_GROWTH_KIB,
        "memory grew by {growth} KiB while streaming {N}-byte bodies: something buffers whole"
    );
    // The access log has the byte counts: each download's line counts at least the body.
    let mut downloads = 0;
    for _ in 0..5 {
        let l = p.next_log().await;
        let f: Vec<&str> = l.split_whitespace().collect();
        if f[5] == "GET" && f[6].contains(&N.to_string()) {
            downloads += 1;
            assert!(f[4].parse::<usize>().unwrap() >= N, "{l}");
        }
    }
    assert_eq!(downloads, 2);
    p.shutdown().await;
}

// ---- keep-alive -------------------------------------------------------------------------------

#[tokio::test]
async fn keep_alive_reuses_one_upstream_connection() {
    let origin = Origin::text("pooled").await;
    let p = TestProxy::start(opts()).await;
    let client = p.client();
    for i in 0..5 {
        let r = client
            .get(origin.url(&format!("/k/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "pooled");
        // The access-log line is written when the response body has been passed on, i.e.
        // once the upstream exchange is complete and its connection can go back to the pool.
        p.next_log().await;
    }
    assert_eq!(origin.hits(), 5);
    assert_eq!(
        origin.connections(),
        1,
        "sequential requests should share one pooled upstream connection"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn client_connection_is_kept_alive_between_requests() {
    let origin = Origin::text("again").await;
    let p = TestProxy::start(opts()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    for i in 0..3 {
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\n\r\n",
            origin.url(&format!("/ka/{i}")),
            origin.addr
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut s, false).await;
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
        assert_eq!(body, b"again", "request {i}");
    }
    assert_eq!(origin.hits(), 3);
    assert_eq!(origin.last().uri, "/ka/2");
    p.shutdown().await;
}

// ---- Expect: 100-continue ---------------------------------------------------------------------

#[tokio::test]
async fn expect_100_continue_gets_100_before_the_body_is_sent() {
    let origin = echo_origin().await;
    let p = TestProxy::start(opts()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let body = b"the body after 100";
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\
         Content-Type: text/plain\r\n\r\n",
        origin.url("/upload?e=1"),
        origin.addr,
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // No body byte has been sent: the interim response must come first.
    let interim = read_head(&mut s).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    s.write_all(body).await.unwrap();
    let (head, got) = read_response(&mut s, false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        String::from_utf8(got).unwrap(),
        format!("POST /upload?e=1\n{}", String::from_utf8_lossy(body))
    );
    let line = p.next_log().await;
    assert!(
        line.contains("TCP_MISS/200") && line.contains(" POST "),
        "{line}"
    );
    p.shutdown().await;
}

// ---- hop-by-hop headers and Host --------------------------------------------------------------

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let origin = Origin::start(|_req| async {
        Response::builder()
            .header("content-type", "text/plain")
            .header("connection", "x-resp-hop")
            .header("x-resp-hop", "secret")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic realm=\"origin\"")
            .header("trailer", "x-checksum")
            .header("x-end-to-end", "kept")
            .body(full("hop"))
            .unwrap()
    })
    .await;
    let p = TestProxy::start(opts()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive, X-Secret-Hop\r\n\
         X-Secret-Hop: 1\r\nProxy-Connection: keep-alive\r\nKeep-Alive: timeout=30\r\n\
         TE: trailers\r\nTrailer: x-sum\r\nUpgrade: h2c\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\nX-End-To-End: yes\r\n\r\n",
        origin.url("/hop"),
        origin.addr
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut s, false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"hop");

    let seen = origin.last();
    for h in [
        "x-secret-hop",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
    ] {
        assert!(seen.headers.get(h).is_none(), "origin saw {h}: {seen:?}");
    }
    // Hyper's client may add its own `connection` only for its own hop; it must not carry
    // the client's tokens.
    for v in seen.headers.get_all("connection") {
        assert!(
            !v.to_str()
                .unwrap()
                .to_ascii_lowercase()
                .contains("x-secret-hop"),
            "{seen:?}"
        );
    }
    assert_eq!(seen.headers["via"], "1.1 cuttle");
    assert_eq!(seen.headers["x-end-to-end"], "yes");

    for h in ["x-resp-hop", "keep-alive", "proxy-authenticate", "trailer"] {
        assert!(header_of(&head, h).is_none(), "client saw {h}: {head}");
    }
    if let Some(c) = header_of(&head, "connection") {
        assert!(!c.to_ascii_lowercase().contains("x-resp-hop"), "{head}");
    }
    assert_eq!(header_of(&head, "via").as_deref(), Some("1.1 cuttle"));
    assert_eq!(header_of(&head, "x-end-to-end").as_deref(), Some("kept"));
    p.shutdown().await;
}

#[tokio::test]
async fn origin_sees_the_urls_authority_as_host() {
    let origin = Origin::text("host").await;
    let p = TestProxy::start(opts()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: evil.example:666\r\n\r\n",
        origin.url("/h")
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut s, false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"host");
    let seen = origin.last();
    assert_eq!(seen.headers.get_all("host").iter().count(), 1, "{seen:?}");
    assert_eq!(seen.headers["host"], origin.addr.to_string().as_str());
    p.shutdown().await;
}

// ---- upgrades ---------------------------------------------------------------------------------

#[tokio::test]
async fn websocket_style_upgrade_is_bridged() {
    let origin = Origin::start(|mut req| async move {
        let wants = req
            .headers()
            .get("upgrade")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if !wants {
            return respond(426, "upgrade required");
        }
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(up) = on.await else { return };
            let mut io = TokioIo::new(up);
            let mut buf = [0u8; 1024];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = io.shutdown().await;
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .body(cuttle::http::body::empty())
            .unwrap()
    })
    .await;
    let p = TestProxy::start(opts()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        origin.url("/ws"),
        origin.addr
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(header_of(&head, "upgrade").as_deref(), Some("websocket"));
    assert!(
        header_of(&head, "connection")
            .unwrap_or_default()
            .eq_ignore_ascii_case("upgrade"),
        "{head}"
    );
    assert_eq!(
        header_of(&head, "sec-websocket-accept").as_deref(),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    let seen = origin.last();
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert_eq!(
        seen.headers["sec-websocket-key"],
        "dGhlIHNhbXBsZSBub25jZQ=="
    );

    let mut sent = 0;
    for msg in [&b"first frame"[..], b"second", &[0u8, 1, 2, 255, 254]] {
        s.write_all(msg).await.unwrap();
        assert_eq!(read_exact_n(&mut s, msg.len()).await, msg);
        sent += msg.len();
    }
    // Nothing is logged while the upgraded connection is open.
    assert!(
        p.all_logs().iter().all(|l| !l.contains("/ws")),
        "{:?}",
        p.all_logs()
    );
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("upgraded connection did not close")
        .unwrap();
    assert!(rest.is_empty());
    let line = p.log_with("/ws").await;
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f[3], "TCP_MISS/101", "{line}");
    assert_eq!(f[5], "GET", "{line}");
    assert!(f[4].parse::<usize>().unwrap() >= sent, "{line}");
    p.shutdown().await;
}

// ---- origin-form ------------------------------------------------------------------------------

#[tokio::test]
async fn origin_form_request_gets_400_explaining_forward_proxy() {
    let p = TestProxy::start(opts()).await;
    let reply = raw(
        p.addr,
        format!(
            "GET /index.html HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            p.addr
        )
        .as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("HTTP_PROXY"), "{reply}");
    assert!(reply.contains("forward proxy"), "{reply}");
    let line = p.next_log().await;
    assert!(line.contains("NONE_NONE/400"), "{line}");
    assert!(line.contains("/index.html"), "{line}");
    p.shutdown().await;
}

// ---- curl -------------------------------------------------------------------------------------

#[tokio::test]
async fn curl_gets_and_heads_through_the_proxy() {
    let origin = Origin::text("curl body").await;
    let p = TestProxy::start(opts()).await;
    let out = run_curl(["-sS", "-x", &p.url(), &origin.url("/c?x=1")]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "curl body");
    assert_eq!(origin.last().uri, "/c?x=1");
    assert_eq!(origin.last().headers["via"], "1.1 cuttle");

    let out = run_curl(["-sS", "-I", "-x", &p.url(), &origin.url("/c")]).await;
    assert!(out.status.success(), "{out:?}");
    let head = String::from_utf8_lossy(&out.stdout);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(header_of(&head, "via").as_deref(), Some("1.1 cuttle"));
    assert_eq!(origin.last().method, http::Method::HEAD);
    p.shutdown().await;
}

// ---- access log -------------------------------------------------------------------------------

#[tokio::test]
async fn access_log_squid_native_line() {
    let body = "x".repeat(5000);
    let origin = Origin::start(move |_req| {
        let body = body.clone();
        async move {
            Response::builder()
                .header("content-type", "text/plain; charset=utf-8")
                .body(full(body))
                .unwrap()
        }
    })
    .await;
    let p = TestProxy::start(opts()).await;
    let url = origin.url("/log/me?q=1");
    let r = p.client().get(&url).send().await.unwrap();
    assert_eq!(r.text().await.unwrap().len(), 5000);
    let line = p.next_log().await;
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 10, "{line}");
    let (secs, ms) = f[0].split_once('.').unwrap();
    assert!(secs.parse::<u64>().unwrap() > 1_600_000_000, "{line}");
    assert_eq!(ms.len(), 3, "{line}");
    f[1].parse::<u64>().unwrap();
    assert_eq!(f[2], "127.0.0.1");
    assert_eq!(f[3], "TCP_MISS/200");
    assert!(f[4].parse::<u64>().unwrap() >= 5000, "{line}");
    assert_eq!(f[5], "GET");
    assert_eq!(f[6], url);
    assert_eq!(f[7], "-");
    assert_eq!(f[8], "HIER_DIRECT/127.0.0.1");
    assert_eq!(f[9], "text/plain");
    p.shutdown().await;
}

#[tokio::test]
async fn access_log_json_line() {
    let origin = Origin::text("json please").await;
    let p = TestProxy::start(Options {
        log_format: Some("json".into()),
        ..opts()
    })
    .await;
    let url = origin.url("/j?k=v");
    let r = p
        .client()
        .post(&url)
        .body("twelve bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "json please");
    let line = p.next_log().await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["result"], "TCP_MISS", "{line}");
    assert_eq!(v["status"], 200, "{line}");
    assert!(
        v["bytes"].as_u64().unwrap() >= "json please".len() as u64,
        "{line}"
    );
    assert_eq!(v["method"], "POST", "{line}");
    assert_eq!(v["url"], url.as_str(), "{line}");
    assert_eq!(v["client"], "127.0.0.1", "{line}");
    assert_eq!(v["hierarchy"], "HIER_DIRECT/127.0.0.1", "{line}");
    assert_eq!(v["content_type"], "text/plain", "{line}");
    assert!(v["user"].is_null(), "{line}");
    assert!(v["error"].is_null(), "{line}");
    assert!(v["time"].as_f64().unwrap() > 1.6e9, "{line}");
    assert!(v["elapsed_ms"].is_u64(), "{line}");
    p.shutdown().await;
}

//! CONNECT tunnels through cuttle: bytes both ways, half-close, the idle timeout, the
//! connect-ports rule, connect failures, curl's --proxytunnel, bytes pipelined after the
//! CONNECT head, many tunnels at once, and the byte counts in the access log.
use crate::support::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cuttle::config::Options;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---- helpers --------------------------------------------------------------------------------

/// A TCP server on 127.0.0.1:0 running `conn` for every accepted connection.
async fn tcp_server<F, Fut>(conn: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(conn(s));
        }
    });
    (addr, task)
}

/// Echoes every byte back until EOF, then closes.
async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    tcp_server(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

// ---- tests ------------------------------------------------------------------------------------

#[tokio::test]
async fn bytes_flow_both_ways_and_200_comes_first() {
    // A server that speaks first (like SSH or SMTP), then echoes.
    let (upstream, _task) = tcp_server(|mut s| async move {
        if s.write_all(b"banner\n").await.is_err() {
            return;
        }
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await;
    let p = TestProxy::start(opts()).await;
    let (mut s, head) = connect_via(p.addr, upstream).await;
    // read_head stops at the blank line: the 200 head arrived whole before the banner.
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!head.contains("banner"), "{head}");
    assert_eq!(read_exact_n(&mut s, 7).await, b"banner\n");
    for msg in [&b"ping"[..], b"a longer message \x00\xff with binary", b"x"] {
        s.write_all(msg).await.unwrap();
        assert_eq!(read_exact_n(&mut s, msg.len()).await, msg);
    }
    // Nothing is logged while the tunnel is open.
    assert!(p.all_logs().is_empty(), "{:?}", p.all_logs());
    drop(s);
    let line = p.log_with("CONNECT").await;
    assert!(line.contains("TCP_TUNNEL/200"), "{line}");
    assert!(line.contains(&format!(" {upstream} ")), "{line}");
    assert!(line.contains("HIER_DIRECT/127.0.0.1"), "{line}");
    p.shutdown().await;
}

/// Reads to EOF, then answers how much it read and closes.
async fn reply_after_eof_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    tcp_server(|mut s| async move {
        let mut got = Vec::new();
        if s.read_to_end(&mut got).await.is_err() {
            return;
        }
        let reply = format!(
            "read {} bytes: {}",
            got.len(),
            String::from_utf8_lossy(&got)
        );
        let _ = s.write_all(reply.as_bytes()).await;
        let _ = s.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn half_close_still_delivers_the_reply_and_logs_byte_counts() {
    let (upstream, _task) = reply_after_eof_server().await;
    let p = TestProxy::start(opts()).await;
    let mut s = tunnel(p.addr, upstream).await;
    s.write_all(b"0123456789").await.unwrap();
    s.shutdown().await.unwrap(); // our write side only
    let reply = read_to_eof(&mut s).await;
    let expected = b"read 10 bytes: 0123456789";
    assert_eq!(reply, expected);
    let line = p.log_with("CONNECT").await;
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 10, "{line}");
    assert_eq!(f[3], "TCP_TUNNEL/200", "{line}");
    assert_eq!(f[4], expected.len().to_string(), "{line}");
    assert_eq!(f[5], "CONNECT", "{line}");
    assert_eq!(f[6], upstream.to_string(), "{line}");
    p.shutdown().await;
}

#[tokio::test]
async fn half_close_byte_counts_in_json_log() {
    let (upstream, _task) = reply_after_eof_server().await;
    let p = TestProxy::start(Options {
        log_format: Some("json".into()),
        ..opts()
    })
    .await;
    let mut s = tunnel(p.addr, upstream).await;
    let sent = b"seventeen bytes!!";
    s.write_all(sent).await.unwrap();
    s.shutdown().await.unwrap();
    let reply = read_to_eof(&mut s).await;
    assert_eq!(reply, b"read 17 bytes: seventeen bytes!!");
    let line = p.log_with("CONNECT").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["result"], "TCP_TUNNEL", "{line}");
    assert_eq!(v["status"], 200, "{line}");
    assert_eq!(v["bytes_in"], sent.len() as u64, "{line}");
    assert_eq!(v["bytes"], reply.len() as u64, "{line}");
    assert_eq!(v["url"], upstream.to_string(), "{line}");
    assert_eq!(v["hierarchy"], "HIER_DIRECT/127.0.0.1", "{line}");
    p.shutdown().await;
}

#[tokio::test]
async fn idle_tunnel_is_closed_by_the_proxy() {
    let (upstream, _task) = echo_server().await;
    let p = TestProxy::start(Options {
        tunnel_idle_timeout: Some("1s".into()),
        ..opts()
    })
    .await;
    let mut s = tunnel(p.addr, upstream).await;
    s.write_all(b"alive").await.unwrap();
    assert_eq!(read_exact_n(&mut s, 5).await, b"alive");
    let quiet_since = Instant::now();
    // Neither side sends anything more: the proxy must close the tunnel.
    let rest = read_to_eof(&mut s).await;
    assert!(rest.is_empty(), "{rest:?}");
    let waited = quiet_since.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the idle timeout"
    );
    let line = p.log_with("CONNECT").await;
    assert!(line.contains("TCP_TUNNEL/200"), "{line}");
    p.shutdown().await;
}

#[tokio::test]
async fn connect_ports_limits_tunnels() {
    let (upstream, _task) = echo_server().await;
    let p = TestProxy::start(Options {
        connect_ports: Some(vec!["443".into()]),
        ..opts()
    })
    .await;
    let (mut s, head) = connect_via(p.addr, upstream).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let body = read_body(&mut s, &head).await;
    assert!(body.contains("connect-ports"), "{body}");
    assert!(body.contains("ERR_ACCESS_DENIED"), "{body}");
    let line = p.log_with("CONNECT").await;
    assert!(line.contains("TCP_DENIED/403"), "{line}");
    p.shutdown().await;

    // Default: any port.
    let p = TestProxy::start(opts()).await;
    let mut s = tunnel(p.addr, upstream).await;
    s.write_all(b"ok").await.unwrap();
    assert_eq!(read_exact_n(&mut s, 2).await, b"ok");
    drop(s);
    p.log_with("TCP_TUNNEL/200").await;
    p.shutdown().await;
}

#[tokio::test]
async fn connect_to_a_closed_port_is_502() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let p = TestProxy::start(opts()).await;
    let (mut s, head) = connect_via(p.addr, closed).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let body = read_body(&mut s, &head).await;
    assert!(body.contains("ERR_CONNECT_FAIL"), "{body}");
    let line = p.log_with("CONNECT").await;
    assert!(line.contains("/502"), "{line}");
    // The client connection is still usable after the error.
    let origin = Origin::text("still here").await;
    s.write_all(
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\n\r\n",
            origin.url("/"),
            origin.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_body(&mut s, &head).await, "still here");
    p.shutdown().await;
}

#[tokio::test]
async fn curl_proxytunnel_fetches_through_connect() {
    let origin = Origin::text("tunnelled body").await;
    let p = TestProxy::start(opts()).await;
    let out = run_curl(["-sS", "-p", "-x", &p.url(), &origin.url("/t?x=1")]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tunnelled body");
    // Through a tunnel the origin sees curl's own request: no Via from cuttle.
    let seen = origin.last();
    assert_eq!(seen.uri, "/t?x=1");
    assert!(seen.headers.get("via").is_none(), "{seen:?}");
    let line = p.log_with("CONNECT").await;
    assert!(line.contains("TCP_TUNNEL/200"), "{line}");
    assert!(line.contains(&origin.addr.to_string()), "{line}");
    p.shutdown().await;
}

#[tokio::test]
async fn bytes_sent_before_the_200_reach_the_upstream() {
    let (upstream, _task) = echo_server().await;
    let p = TestProxy::start(opts()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    // Head and data in one write, before the proxy has answered.
    s.write_all(
        format!("CONNECT {upstream} HTTP/1.1\r\nHost: {upstream}\r\n\r\nEARLY-JUNK").as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_exact_n(&mut s, 10).await, b"EARLY-JUNK");
    s.write_all(b"later").await.unwrap();
    assert_eq!(read_exact_n(&mut s, 5).await, b"later");
    s.shutdown().await.unwrap();
    assert!(read_to_eof(&mut s).await.is_empty());
    let line = p.log_with("CONNECT").await;
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f[3], "TCP_TUNNEL/200", "{line}");
    assert_eq!(f[4], "15", "{line}");
    // The proxy keeps serving.
    let mut s2 = tunnel(p.addr, upstream).await;
    s2.write_all(b"next").await.unwrap();
    assert_eq!(read_exact_n(&mut s2, 4).await, b"next");
    drop(s2);
    p.log_with("TCP_TUNNEL/200").await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_tunnels() {
    const TUNNELS: usize = 100;
    let (upstream, _task) = echo_server().await;
    let p = TestProxy::start(opts()).await;
    let proxy = p.addr;
    let mut tasks = Vec::new();
    for i in 0..TUNNELS {
        tasks.push(tokio::spawn(async move {
            let (mut s, head) = connect_via(proxy, upstream).await;
            assert!(head.starts_with("HTTP/1.1 200"), "tunnel {i}: {head}");
            let msg = format!("tunnel {i} ").repeat(200).into_bytes();
            s.write_all(&msg).await.unwrap();
            s.shutdown().await.unwrap();
            let back = read_to_eof(&mut s).await;
            assert_eq!(back, msg, "tunnel {i}");
            msg.len()
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let mut logged = 0;
    for _ in 0..TUNNELS {
        let line = p.log_with("CONNECT").await;
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[3], "TCP_TUNNEL/200", "{line}");
        logged += f[4].parse::<usize>().unwrap();
    }
    assert_eq!(logged, total);
    p.shutdown().await;
}

//! Raw sockets: requests written byte for byte, response heads and bodies read without a
//! client library's help, and the CONNECT request every tunnel test opens with.

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// Sends raw bytes and reads until the proxy closes the connection, which must happen
/// within 10 s.
pub async fn raw_until_close(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    String::from_utf8_lossy(&read_to_eof(&mut s).await).into_owned()
}

/// Reads until the peer closes the stream, which must happen within 10 s.
pub async fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the peer did not close the connection within 10s")
        .unwrap();
    out
}

/// Reads exactly `n` bytes (within 10 s).
pub async fn read_exact_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("timed out reading from the socket")
        .unwrap();
    buf
}

/// Reads one CRLF-terminated line, without the CRLF.
pub async fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        line.extend(read_exact_n(s, 1).await);
    }
    String::from_utf8_lossy(&line[..line.len() - 2]).into_owned()
}

/// Reads from `s` until `needle` appears (or EOF / 20 s), returning what was read.
pub async fn read_until<S: AsyncRead + Unpin>(s: &mut S, needle: &str) -> String {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&out).contains(needle) {
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {needle:?} within 20s: {:?}",
                    String::from_utf8_lossy(&out)
                )
            })
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a request head from an upstream connection (a fake origin or parent); `None` at
/// EOF or an error before the blank line.
pub async fn read_request_head(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Value of field `name` in a raw head (case-insensitive name), first instance.
pub fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The status code of a raw response head.
pub fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"))
}

/// Reads one whole response (head, then a Content-Length or chunked body) from `s`.
pub async fn read_response(s: &mut TcpStream, head_request: bool) -> (String, Vec<u8>) {
    let head = read_head(s).await;
    let status = status_of(&head);
    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        return (head, Vec::new());
    }
    if let Some(len) = header_of(&head, "content-length") {
        let body = read_exact_n(s, len.parse().unwrap()).await;
        return (head, body);
    }
    let te = header_of(&head, "transfer-encoding").unwrap_or_default();
    assert!(te.contains("chunked"), "no framing in {head:?}");
    let mut body = Vec::new();
    loop {
        let size = read_line(s).await;
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            while !read_line(s).await.is_empty() {}
            return (head, body);
        }
        body.extend(read_exact_n(s, size).await);
        assert_eq!(read_line(s).await, "");
    }
}

// ---- CONNECT ----------------------------------------------------------------------------------

/// `CONNECT target HTTP/1.1` with `Host: target` and the `extra` header lines (each ending in
/// CRLF), ending with the blank line.
pub fn connect_request(target: impl Display, extra: &str) -> String {
    format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n")
}

/// Sends `CONNECT target` (with `extra` header lines) to `proxy`; the stream and the
/// response head, whatever its status.
pub async fn connect_with(
    proxy: SocketAddr,
    target: impl Display,
    extra: &str,
) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(connect_request(target, extra).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    (s, head)
}

/// Sends `CONNECT target` to `proxy`; the stream and the response head, whatever its status.
pub async fn connect_via(proxy: SocketAddr, target: impl Display) -> (TcpStream, String) {
    connect_with(proxy, target, "").await
}

/// A tunnel through `proxy` to `target`: the stream after the proxy's 200.
pub async fn tunnel(proxy: SocketAddr, target: impl Display) -> TcpStream {
    let (s, head) = connect_via(proxy, target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "CONNECT failed: {head}");
    s
}

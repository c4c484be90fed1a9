use crate::support::*;

#[tokio::test]
async fn get_through_proxy() {
    let origin = Origin::text("hello").await;
    let p = TestProxy::start(opts()).await;
    let r = p.client().get(origin.url("/a?b=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["via"], "1.1 cuttle");
    assert_eq!(r.text().await.unwrap(), "hello");
    let line = p.next_log().await;
    assert!(line.contains("TCP_MISS/200"), "{line}");
    assert_eq!(origin.last().uri, "/a?b=1");
    let raw_connect = raw(p.addr, format!("CONNECT {} HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", origin.addr).as_bytes()).await;
    assert!(raw_connect.starts_with("HTTP/1.1 200"), "{raw_connect}");
    assert!(raw_connect.ends_with("hello"), "{raw_connect}");
    let line = p.log_with("CONNECT").await;
    assert!(line.contains("TCP_TUNNEL/200"), "{line}");
    p.shutdown().await;
}

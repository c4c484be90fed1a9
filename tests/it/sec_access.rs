//! Security regressions of the access rules, end to end: the proxy must not reach loopback,
//! this host or the admin port (however the address is spelled: IPv4 in IPv6, numeric
//! IPv4 forms, `localhost`, absolute https URLs, CONNECT), must refuse its own connections
//! (tunnel loops) and bound each client's connections, must throttle failed logins per
//! address; the admin API caps request bodies, takes the `Bearer` scheme in any case and
//! shows no query strings; secrets given as flags are warned about.
use crate::support::*;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

fn get_req(url: &str) -> String {
    format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n")
}

/// A client for the admin port itself (not through the proxy).
fn direct() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Options with the defaults of a real deployment: loopback not allowed.
fn no_loopback() -> cuttle::config::Options {
    let mut o = opts();
    o.allow_dest = Some(vec![]);
    o
}

/// A TCP connection to `dst` from the source address `src` (any 127.0.0.0/8 address is
/// this host's, so tests can be several clients).
async fn connect_from(src: &str, dst: SocketAddr) -> TcpStream {
    let src: IpAddr = src.parse().unwrap();
    let s = if src.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .unwrap();
    s.bind(SocketAddr::new(src, 0)).unwrap();
    s.connect(dst).await.unwrap()
}

/// One request from `src`; the response head and body.
async fn exchange_from(src: &str, dst: SocketAddr, request: &str) -> (String, String) {
    let mut s = connect_from(src, dst).await;
    s.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    let body = read_body(&mut s, &head).await;
    (head, body)
}

async fn refused(p: &TestProxy, request: &str) -> String {
    let (head, body) = tokio::time::timeout(Duration::from_secs(10), exchange(p.addr, request))
        .await
        .unwrap_or_else(|_| panic!("no answer to {request:?}"));
    assert!(
        head.starts_with("HTTP/1.1 403"),
        "not refused: {request:?}\n{head}{body}"
    );
    assert!(body.contains("ERR_ACCESS_DENIED"), "{request:?}: {body}");
    body
}

// ---- loopback, this host and the admin port ------------------------------------------------

/// Through the proxy port, the admin API was one request away: `/api/stats` (other clients'
/// URLs), `/api/reload`, `/api/purge`, `/metrics` over CONNECT. Every spelling of the
/// admin address is refused now.
#[tokio::test]
async fn the_admin_api_is_not_reachable_through_the_proxy() {
    let p = TestProxy::start(no_loopback()).await;
    let admin = p.proxy().admin_addr().unwrap().port();
    let mut requests = vec![
        format!(
            "POST http://127.0.0.1:{admin}/api/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        ),
        format!(
            "POST http://127.0.0.1:{admin}/api/purge?url=http%3A%2F%2Fa%2F HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        ),
    ];
    for host in [
        "127.0.0.1",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "0x7f000001",
        "2130706433",
        "127.1",
        "0177.0.0.1",
        "localhost",
        "localhost.",
        "LOCALHOST",
        "status.localhost",
        "0.0.0.0",
        "0",
        "[::]",
    ] {
        requests.push(get_req(&format!("http://{host}:{admin}/api/stats")));
    }
    requests.push(get_req(&format!("https://127.0.0.1:{admin}/api/stats")));
    for target in [
        "127.0.0.1",
        "localhost",
        "[::ffff:127.0.0.1]",
        "2130706433",
        "0.0.0.0",
    ] {
        requests.push(connect_request(format!("{target}:{admin}"), ""));
    }
    for r in &requests {
        refused(&p, r).await;
    }
    // Nothing was tunnelled, nothing reached the admin port through the proxy.
    for line in p.all_logs() {
        assert!(line.contains("TCP_DENIED/403"), "{line}");
    }
    let stats = direct()
        .get(format!("{}/api/stats", p.admin_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["tunnels_active"], 0);
    p.shutdown().await;
}

/// `--allow-dest` (set by the test kit for loopback) lifts the loopback denial, but never the
/// proxy's own ports: the admin port stays out of reach.
#[tokio::test]
async fn the_admin_port_stays_refused_when_loopback_is_allowed() {
    let origin = Origin::text("origin on loopback").await;
    let p = TestProxy::start(opts()).await;
    let admin = p.proxy().admin_addr().unwrap().port();
    for r in [
        get_req(&format!("http://127.0.0.1:{admin}/api/stats")),
        get_req(&format!("http://localhost:{admin}/metrics")),
        get_req(&format!("http://[::ffff:127.0.0.1]:{admin}/metrics")),
        connect_request(format!("127.0.0.1:{admin}"), ""),
        connect_request(format!("localhost:{admin}"), ""),
    ] {
        let body = refused(&p, &r).await;
        assert!(body.contains("forwarding loop"), "{r:?}: {body}");
    }
    let line = p.log_with("CONNECT").await;
    assert!(line.contains("TCP_DENIED/403"), "{line}");
    // Loopback origins themselves are fine.
    let r = p.client().get(origin.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    p.shutdown().await;
}

/// By default an origin on loopback (the pod's own sidecars, local services) is not reached
/// under any spelling, and the refusal says how to allow it.
#[tokio::test]
async fn loopback_destinations_are_denied_by_default() {
    let origin = Origin::text("must not be reached").await;
    let v6 = Origin::serve(TcpListener::bind("[::1]:0").await.unwrap(), |_req| async {
        respond(200, "must not be reached either")
    });
    let port = origin.addr.port();
    let p = TestProxy::start(no_loopback()).await;
    let mut requests = Vec::new();
    for host in [
        "127.0.0.1",
        "127.1",
        "0x7f000001",
        "0x7f.0.0.1",
        "2130706433",
        "017700000001",
        "[::ffff:127.0.0.1]",
        "localhost",
    ] {
        requests.push(get_req(&format!("http://{host}:{port}/")));
        requests.push(connect_request(format!("{host}:{port}"), ""));
    }
    requests.push(get_req(&format!("http://[::1]:{}/", v6.addr.port())));
    requests.push(connect_request(format!("[::1]:{}", v6.addr.port()), ""));
    for r in &requests {
        let body = refused(&p, r).await;
        assert!(body.contains("allow-dest"), "{r:?}: {body}");
    }
    assert_eq!(origin.connections(), 0, "the loopback origin was reached");
    assert_eq!(v6.connections(), 0, "the ::1 origin was reached");

    // A host that ends in a number but is no IPv4 address is a bad request, not a name.
    let (head, _) = exchange(p.addr, &get_req("http://1.2.3.4.5/")).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    p.shutdown().await;

    // With --allow-dest the same origin is reached.
    let mut o = opts();
    o.allow_dest = Some(vec!["127.0.0.0/8".into()]);
    let p = TestProxy::start(o).await;
    let r = p
        .client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    p.shutdown().await;
}

// ---- loops and connection limits ----------------------------------------------------------

/// A stand-in for a Kubernetes Service in front of the proxy whose path rewrites the source
/// address (kube-proxy masquerades hairpin traffic): accepts on 127.0.0.1:0 and connects to
/// `to` from `source`, passing bytes and half-closes both ways as NAT does.
async fn service(to: SocketAddr, source: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((inbound, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let outbound = connect_from(source, to).await;
                let (mut ir, mut iw) = inbound.into_split();
                let (mut or, mut ow) = outbound.into_split();
                let a = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut ir, &mut ow).await;
                    let _ = ow.shutdown().await;
                });
                let b = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut or, &mut iw).await;
                    let _ = iw.shutdown().await;
                });
                let _ = tokio::join!(a, b);
            });
        }
    });
    addr
}

/// `CONNECT <Service>:3128` nested 150 times in one write: every level is a tunnel from the
/// proxy back to itself, and they all stay open while the attacker keeps its side open.
/// Before the per-client limit the chain took every one of `--max-connections` and other
/// clients got 503; now it stops at the Service address's share and others are served.
#[tokio::test]
async fn nested_connects_through_a_service_leave_room_for_other_clients() {
    let origin = Origin::text("still served").await;
    let mut o = opts();
    o.max_connections = Some(100);
    o.max_connections_per_client = Some(10);
    let p = TestProxy::start(o).await;
    let svc = service(p.addr, "127.0.0.5").await;

    let mut attack = String::new();
    for _ in 0..150 {
        attack += &connect_request(svc, "");
    }
    let mut attacker = connect_from("127.0.0.3", p.addr).await;
    attacker.write_all(attack.as_bytes()).await.unwrap();
    // The chain ends where a level is refused; the half-close then travels back to the
    // attacker (its own write side stays open, so every tunnel of the chain stays open).
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), attacker.read_to_end(&mut seen))
        .await
        .expect("the nested CONNECT chain did not end")
        .unwrap();
    let seen = String::from_utf8_lossy(&seen);
    let levels = seen.matches("HTTP/1.1 200").count();
    assert!(levels <= 11, "{levels} nested tunnels were opened");

    // Another client still gets through.
    let (head, body) = exchange_from("127.0.0.2", p.addr, &get_req(&origin.url("/"))).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}{body}");
    assert_eq!(body, "still served");
    let open = p.proxy().state().metrics.connections_open();
    assert!(open <= 13, "{open} client connections open");
    drop(attacker);
    p.shutdown().await;
}

/// One client address cannot hold more than its share; the refusal says which limit.
#[tokio::test]
async fn connections_per_client_are_limited() {
    let mut o = opts();
    o.max_connections_per_client = Some(3);
    let p = TestProxy::start(o).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from("127.0.0.7", p.addr).await;
        // A request head in progress: the connection is accepted and counted.
        s.write_all(b"GET http://x/ HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    // The accept loop counts each in turn; wait for all three.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while p
        .proxy()
        .state()
        .client_slots
        .open("127.0.0.7".parse().unwrap())
        < 3
    {
        assert!(
            std::time::Instant::now() < deadline,
            "connections not counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut s = connect_from("127.0.0.7", p.addr).await;
    let head = read_head(&mut s).await;
    let body = read_body(&mut s, &head).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(body.contains("max-connections-per-client"), "{body}");
    // Another address is not affected.
    let origin = Origin::text("ok").await;
    let (head, _) = exchange_from("127.0.0.8", p.addr, &get_req(&origin.url("/"))).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(held);
    p.shutdown().await;
}

/// An address of this host other than loopback (the pod's address), found from the route a
/// datagram would take (nothing is sent).
fn own_non_loopback_address() -> IpAddr {
    for probe in ["192.0.2.1:9", "198.51.100.1:9", "10.255.255.1:9"] {
        let Ok(s) = std::net::UdpSocket::bind("0.0.0.0:0") else {
            continue;
        };
        if s.connect(probe).is_ok()
            && let Ok(a) = s.local_addr()
            && !a.ip().is_loopback()
            && !a.ip().is_unspecified()
        {
            return a.ip();
        }
    }
    panic!("this test needs a network interface with a non-loopback address");
}

/// With the proxy listening on a wildcard address (`0.0.0.0:3128` in a pod), the pod's own
/// address on that port is the proxy itself, before and after DNS alike.
#[tokio::test]
async fn the_pods_own_address_on_the_proxy_port_is_a_loop() {
    let own = own_non_loopback_address();
    let cfg = opts().validate().unwrap();
    let policy = cuttle::access::Policy::new(
        &cfg.access,
        vec![
            "0.0.0.0:3128".parse().unwrap(),
            "[::]:3128".parse().unwrap(),
            "0.0.0.0:9128".parse().unwrap(),
        ],
    );
    for port in [3128, 9128] {
        let t = cuttle::http::target::Target {
            host: own.to_string(),
            port,
        };
        let e = policy.check_destination(&t, true).unwrap_err();
        assert!(e.to_string().contains("forwarding loop"), "{e}");
        let e = policy
            .check_address(SocketAddr::new(own, port))
            .unwrap_err();
        assert!(e.to_string().contains("forwarding loop"), "{e}");
    }
    // Other ports of the pod are not the proxy.
    let t = cuttle::http::target::Target {
        host: own.to_string(),
        port: 8080,
    };
    assert!(policy.check_destination(&t, true).is_ok());
}

/// A connection from the pod's own address to its proxy port is the proxy talking to
/// itself (through its pod address, or a Service that keeps the source address): refused
/// at once, naming the rule, before it takes a connection slot.
#[tokio::test]
async fn a_connection_from_the_proxys_own_address_is_a_loop() {
    let own = own_non_loopback_address();
    let origin = Origin::text("must not be reached").await;
    let mut o = opts();
    o.listen = Some(vec![SocketAddr::new(own, 0).to_string()]);
    // The pod address is a client network here, so only the loop rule can refuse it.
    o.allow_client = Some(vec![own.to_string()]);
    let p = TestProxy::start(o).await;
    let (head, body) = exchange_from(&own.to_string(), p.addr, &get_req(&origin.url("/"))).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}{body}");
    assert!(body.contains("forwarding loop"), "{body}");
    assert_eq!(origin.connections(), 0);
    let line = p.next_log().await;
    assert!(line.contains("TCP_DENIED/403"), "{line}");
    let metrics = direct()
        .get(format!("{}/metrics", p.admin_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"cuttle_access_denied_total{reason="loop"} 1"#),
        "{metrics}"
    );
    p.shutdown().await;

    // The same for the admin port on the pod address (the image listens on 0.0.0.0:9128).
    let mut o = opts();
    o.admin_listen = Some(SocketAddr::new(own, 0).to_string());
    let p = TestProxy::start(o).await;
    let admin = p.proxy().admin_addr().unwrap();
    let (head, body) = exchange_from(
        &own.to_string(),
        admin,
        "GET /api/stats HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}{body}");
    assert!(body.contains("forwarding loop"), "{body}");
    p.shutdown().await;
}

// ---- the admin API ---------------------------------------------------------------------------

/// `POST /api/reload` read the whole body into memory: 500 MB raised the RSS by 463 MiB.
#[tokio::test]
async fn admin_request_bodies_are_capped() {
    let p = TestProxy::start(opts()).await;
    let admin = p.proxy().admin_addr().unwrap();
    for path in ["/api/reload", "/api/purge?url=http%3A%2F%2Fa%2F"] {
        // A huge declared body is refused without being read.
        let (head, body) = tokio::time::timeout(
            Duration::from_secs(10),
            exchange(
                admin,
                &format!("POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 500000000\r\n\r\n"),
            ),
        )
        .await
        .expect("the admin port waited for a 500 MB body");
        assert!(head.starts_with("HTTP/1.1 413"), "{path}: {head}{body}");

        // A chunked body is read up to the cap only: the answer comes while more is sent.
        let mut s = TcpStream::connect(admin).await.unwrap();
        s.write_all(
            format!("POST {path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let chunk = format!("{:x}\r\n{}\r\n", 1024, "x".repeat(1024));
        for _ in 0..64 {
            if s.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 413"), "{path}: {head}");
    }
    // A small body is still fine (this proxy has no configuration file: reload says so).
    let (head, body) = exchange(
        admin,
        "POST /api/reload HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}{body}");
    assert!(body.contains("no configuration source"), "{body}");
    p.shutdown().await;
}

/// RFC 9110 §11.1: the authentication scheme is case-insensitive.
#[tokio::test]
async fn the_admin_bearer_scheme_is_case_insensitive() {
    let mut o = opts();
    o.admin_token = Some("tok3n".into());
    let p = TestProxy::start(o).await;
    let admin = p.proxy().admin_addr().unwrap();
    for (auth, status) in [
        ("Bearer tok3n", "200"),
        ("bearer tok3n", "200"),
        ("BEARER tok3n", "200"),
        ("bearer TOK3N", "401"),
        ("Basic tok3n", "401"),
    ] {
        let (head, _) = exchange(
            admin,
            &format!("GET /api/cache HTTP/1.1\r\nHost: a\r\nAuthorization: {auth}\r\n\r\n"),
        )
        .await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{auth}: {head}"
        );
    }
    p.shutdown().await;
}

/// URLs carry tokens in their query strings; the status page and `/api/stats` list failing
/// URLs for anyone with the admin port, so they show the path only.
#[tokio::test]
async fn the_status_api_shows_no_query_strings() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let p = TestProxy::start(opts()).await;
    let url = format!("http://127.0.0.1:{port}/artifact.tgz?token=s3cr3t-t0ken&sig=abc");
    let r = p.client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 502);
    p.log_with("artifact.tgz").await;
    let stats = direct()
        .get(format!("{}/api/stats", p.admin_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        stats.contains(&format!("http://127.0.0.1:{port}/artifact.tgz")),
        "{stats}"
    );
    assert!(!stats.contains("s3cr3t-t0ken"), "{stats}");
    assert!(!stats.contains("sig=abc"), "{stats}");
    p.shutdown().await;
}

// ---- logins ----------------------------------------------------------------------------------

fn basic(user: &str, pass: &str) -> String {
    let t = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Proxy-Authorization: Basic {t}\r\n")
}

/// Failed logins from one address are throttled: past the limit even the right password
/// gets 429 from that address (a guesser learns nothing more), while other addresses log in.
#[tokio::test]
async fn failed_logins_are_throttled_per_address() {
    let origin = Origin::text("authenticated").await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        format!("alice:{}\n", bcrypt::hash("right", 4).unwrap()),
    )
    .unwrap();
    let mut o = opts();
    o.auth_file = Some(file.path().to_path_buf());
    let p = TestProxy::start(o).await;
    let req = |auth: String| format!("GET {} HTTP/1.1\r\nHost: x\r\n{auth}\r\n", origin.url("/"));
    for i in 0..cuttle::access::auth::MAX_FAILURES {
        let user = if i % 2 == 0 { "alice" } else { "nobody" };
        let (head, _) = exchange_from("127.0.0.9", p.addr, &req(basic(user, "guess"))).await;
        assert!(head.starts_with("HTTP/1.1 407"), "attempt {i}: {head}");
    }
    let (head, body) = exchange_from("127.0.0.9", p.addr, &req(basic("alice", "right"))).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}{body}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    let line = p.log_with("TCP_DENIED/429").await;
    assert!(!line.contains("alice"), "{line}");

    let (head, body) = exchange_from("127.0.0.10", p.addr, &req(basic("alice", "right"))).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "authenticated");
    p.shutdown().await;
}

// ---- secrets on the command line -------------------------------------------------------------

fn cuttle_cmd() -> std::process::Command {
    let mut c = crate::support::cuttle();
    c.env("CUTTLE_CACHE_SIZE", "0");
    c
}

/// A secret given as a flag is readable by every process on the host (`/proc/<pid>/cmdline`):
/// cuttle says so, and names the variable or file to use instead.
#[tokio::test]
async fn secrets_given_as_flags_are_warned_about() {
    let out = cuttle_cmd()
        .args([
            "check-config",
            "--admin-token",
            "hunter2-admin",
            "--cache-peer=u:hunter2-peer:127.0.0.1:3128",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--admin-token"), "{err}");
    assert!(err.contains("CUTTLE_ADMIN_TOKEN_FILE"), "{err}");
    assert!(err.contains("--cache-peer"), "{err}");
    assert!(err.contains("CACHE_PEER_FILE"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    // The same values from the environment: no warning.
    let out = cuttle_cmd()
        .arg("check-config")
        .env("CUTTLE_ADMIN_TOKEN", "hunter2-admin")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("command line"), "{err}");

    // And at start, in the diagnostics.
    let mut child = tokio::process::Command::from(cuttle_cmd())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--admin-token",
            "hunter2-admin",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        while lines.read_line(&mut line).await.unwrap() > 0 {
            seen += &line;
            if line.contains("cuttle listening") {
                break;
            }
            line.clear();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("cuttle did not start: {seen}"));
    assert!(seen.contains("--admin-token"), "{seen}");
    assert!(seen.contains("CUTTLE_ADMIN_TOKEN_FILE"), "{seen}");
    assert!(!seen.contains("hunter2"), "{seen}");
    child.kill().await.unwrap();
}

//! Parents that want NTLM or Kerberos (issue 14): cuttle behind a real Squid with
//! `ntlm_fake_auth`, and behind a real Squid with `negotiate_kerberos_auth` checking tickets
//! from a throwaway MIT KDC started by the test. Plain requests and CONNECT tunnels, pooled
//! connections authenticated once, bodies never sent twice, failover, the documented errors,
//! and no secret in any output.

use crate::support;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use crate::support::parent_auth::{AuthSquid, Kdc, ParentKind, REALM, ROBOT, USER, USER_PASSWORD};
use crate::support::{Origin, TestProxy, connect_via, opts, read_body, read_head};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

const NTLM_PASSWORD: &str = "Ntlm-s3cret-pw";

/// Options for a proxy behind `cache_peer`, without a cache (every request goes upstream).
fn peer_opts(cache_peer: String) -> cuttle::config::Options {
    cuttle::config::Options {
        cache_peer: Some(cache_peer.into()),
        cache_size: Some("0".into()),
        cache_mem: Some("0".into()),
        ..opts()
    }
}

/// An origin that answers with the method, path and body length it got.
async fn echo_origin() -> Origin {
    Origin::start(|req| async move {
        let line = format!("{} {}", req.method(), req.uri().path());
        let n = req.into_body().collect().await.unwrap().to_bytes().len();
        support::respond(200, format!("{line} {n}"))
    })
    .await
}

/// CONNECT through `proxy` to `origin`, then one GET inside the tunnel: returns the CONNECT
/// answer's head and, if it was 200, the inner response's body.
async fn tunnel_get(proxy: SocketAddr, origin: SocketAddr, path: &str) -> (String, String) {
    let (mut s, head) = connect_via(proxy, origin).await;
    if !head.starts_with("HTTP/1.1 200") {
        let body = read_body(&mut s, &head).await;
        return (head, body);
    }
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {origin}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let inner = read_head(&mut s).await;
    let body = read_body(&mut s, &inner).await;
    (head, body)
}

fn ntlm_peer(squid: &AuthSquid) -> String {
    format!("CORP%5Cbuild:{NTLM_PASSWORD}:127.0.0.1:{}", squid.port())
}

#[tokio::test]
async fn ntlm_parent_serves_plain_requests_and_tunnels() {
    let squid = AuthSquid::start(ParentKind::Ntlm).await;
    let origin = echo_origin().await;
    let p = TestProxy::start(peer_opts(ntlm_peer(&squid))).await;

    let r = p.client().get(origin.url("/plain")).send().await.unwrap();
    let (status, text) = (r.status(), r.text().await.unwrap());
    assert_eq!(status, 200, "{text}\n{}", squid.diagnostics());
    assert_eq!(text, "GET /plain 0");
    let (head, body) = tunnel_get(p.addr, origin.addr, "/in-tunnel").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "GET /in-tunnel 0");

    // Squid saw the NTLM user on both; the origin never saw a proxy credential.
    let log = squid.wait_for_access_log("TCP_TUNNEL/200").await;
    // Squid logs the NTLM user as CORP\build (with the backslash doubled).
    let plain = log
        .lines()
        .find(|l| l.contains("/plain") && l.contains("TCP_MISS/200"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(plain.contains("CORP\\\\build"), "{plain}");
    let tunnel = log.lines().find(|l| l.contains("TCP_TUNNEL/200")).unwrap();
    assert!(tunnel.contains("CORP\\\\build"), "{tunnel}");
    for seen in origin.seen() {
        assert!(!seen.headers.contains_key("proxy-authorization"));
    }
    assert!(p.log_with("/plain").await.contains("FIRSTUP_PARENT/"));
    p.shutdown().await;
}

#[tokio::test]
async fn ntlm_pooled_connections_are_authenticated_once() {
    let squid = AuthSquid::start(ParentKind::Ntlm).await;
    let origin = echo_origin().await;
    let mut o = peer_opts(ntlm_peer(&squid));
    o.parent_auth = Some("ntlm".into());
    let p = TestProxy::start(o).await;
    let client = p.client();
    for i in 0..6 {
        let r = client
            .get(origin.url(&format!("/seq{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), format!("GET /seq{i} 0"));
    }
    squid.wait_for_access_log("/seq5").await;
    // Six requests, one connection to the parent, one NTLM handshake: the NEGOTIATE leg
    // is the only 407 Squid answered.
    assert_eq!(squid.count("TCP_MISS/200"), 6, "{}", squid.access_log());
    assert_eq!(squid.count("/407"), 1, "{}", squid.access_log());
    p.shutdown().await;
}

#[tokio::test]
async fn ntlm_bodies_are_sent_once_small_and_large() {
    let squid = AuthSquid::start(ParentKind::Ntlm).await;
    let origin = echo_origin().await;

    // While cuttle still learns what the parent wants, a small body is kept and sent again.
    let p = TestProxy::start(peer_opts(ntlm_peer(&squid))).await;
    let small = vec![b's'; 10_000];
    let r = p
        .client()
        .post(origin.url("/small"))
        .body(small)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "POST /small 10000");
    p.shutdown().await;

    // A body over the replay bound on a fresh proxy: the Expect probe learns the scheme,
    // the NEGOTIATE leg carries no body, and the body travels once, with AUTHENTICATE.
    let p = TestProxy::start(peer_opts(ntlm_peer(&squid))).await;
    let large = vec![b'L'; 3 * 1024 * 1024];
    let r = p
        .client()
        .post(origin.url("/large"))
        .body(large)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        format!("POST /large {}", 3 * 1024 * 1024)
    );
    // Once learned, a streamed body of unknown length goes through too.
    let chunks = futures_util::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'c'; 300_000]))),
    );
    let r = p
        .client()
        .post(origin.url("/streamed"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "POST /streamed 2400000");
    let posts: Vec<_> = origin
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST")
        .map(|s| s.uri.path().to_string())
        .collect();
    assert_eq!(
        posts,
        ["/small", "/large", "/streamed"],
        "each body reached the origin once"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn ntlm_failover_to_the_second_parent() {
    let squid = AuthSquid::start(ParentKind::Ntlm).await;
    let origin = echo_origin().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let peers = format!(
        "CORP%5Cbuild:{NTLM_PASSWORD}:127.0.0.1:{dead_port},{}",
        ntlm_peer(&squid)
    );
    let p = TestProxy::start(peer_opts(peers)).await;
    let r = p
        .client()
        .get(origin.url("/failover"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let line = p.log_with("/failover").await;
    assert!(
        line.contains(&format!("FIRSTUP_PARENT/127.0.0.1:{}", squid.port())),
        "{line}"
    );
    let (head, body) = tunnel_get(p.addr, origin.addr, "/tunnel-failover").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "GET /tunnel-failover 0");
    p.shutdown().await;
}

#[tokio::test]
async fn no_common_scheme_is_a_502_that_names_the_problem() {
    let squid = AuthSquid::start(ParentKind::Ntlm).await;
    let origin = echo_origin().await;
    // No credentials at all.
    let p = TestProxy::start(peer_opts(format!("::127.0.0.1:{}", squid.port()))).await;
    let r = p.client().get(origin.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-cuttle-error"], "ERR_PARENT_AUTH");
    let body = r.text().await.unwrap();
    assert!(body.contains("no user and password"), "{body}");
    assert!(body.contains("ntlm"), "{body}");
    p.shutdown().await;

    // Basic forced against an NTLM-only parent: the parent's refusal is named.
    let mut o = peer_opts(ntlm_peer(&squid));
    o.parent_auth = Some("basic".into());
    let p = TestProxy::start(o).await;
    let r = p.client().get(origin.url("/y")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(body.contains("rejected cuttle's credentials"), "{body}");
    assert!(!body.contains(NTLM_PASSWORD));
    assert_eq!(origin.hits(), 0);
    p.shutdown().await;
}

/// A parent that runs NTLM up to the AUTHENTICATE message and then refuses it, as a domain
/// controller does for a wrong password (Squid's ntlm_fake_auth accepts any).
async fn ntlm_refusing_parent() -> SocketAddr {
    use tokio::io::AsyncReadExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    // MS-NLMP 4.2.4.3's CHALLENGE.
    let challenge = "TlRMTVNTUAACAAAADAAMADgAAAAzgoriASNFZ4mrze8AAAAAAAAAACQAJABEAAAABgBwFwAAAA9TAGUAcgB2AGUAcgACAAwARABvAG0AYQBpAG4AAQAMAFMAZQByAHYAZQByAAAAAAA=";
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end + 4);
                    let answer = if head.contains("NTLM TlRMTVNTUAABAAAA") {
                        format!("NTLM {challenge}")
                    } else {
                        "NTLM".to_string()
                    };
                    let resp = format!(
                        "HTTP/1.1 407 Proxy Authentication Required\r\n\
                         Proxy-Authenticate: {answer}\r\nContent-Length: 6\r\n\r\ndenied"
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn ntlm_refused_authenticate_names_the_problem() {
    let parent = ntlm_refusing_parent().await;
    let origin = echo_origin().await;
    let p = TestProxy::start(peer_opts(format!("CORP%5Cbuild:{NTLM_PASSWORD}:{parent}"))).await;
    let r = p.client().get(origin.url("/refused")).send().await.unwrap();
    let (status, body) = (r.status(), r.text().await.unwrap());
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("ERR_PARENT_AUTH"), "{body}");
    assert!(body.contains("rejected the NTLM credentials"), "{body}");
    assert!(body.contains("DOMAIN%5Cuser"), "{body}");
    assert!(!body.contains(NTLM_PASSWORD), "{body}");
    let (head, body) = tunnel_get(p.addr, origin.addr, "/refused").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(body.contains("rejected the NTLM credentials"), "{body}");
    assert_eq!(origin.hits(), 0);
    p.shutdown().await;
}

fn kerberos_opts(
    kdc: &Kdc,
    squid: &AuthSquid,
    user: &str,
    password: &str,
) -> cuttle::config::Options {
    let mut o = peer_opts(format!("{user}:{password}:localhost:{}", squid.port()));
    o.krb5_conf = Some(kdc.krb5_conf());
    o
}

#[tokio::test]
async fn kerberos_with_a_password_serves_plain_requests_and_tunnels() {
    let kdc = Kdc::start();
    let squid = AuthSquid::start(ParentKind::Negotiate(&kdc)).await;
    let origin = echo_origin().await;
    let p = TestProxy::start(kerberos_opts(
        &kdc,
        &squid,
        &format!("{USER}%40{REALM}"),
        USER_PASSWORD,
    ))
    .await;
    let r = p
        .client()
        .get(origin.url("/krb-plain"))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}\n{}", squid.diagnostics());
    assert_eq!(text, "GET /krb-plain 0");
    let (head, body) = tunnel_get(p.addr, origin.addr, "/krb-tunnel").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}{body}");
    assert_eq!(body, "GET /krb-tunnel 0");
    let log = squid.wait_for_access_log("TCP_TUNNEL/200").await;
    let who = format!("{USER}@{REALM}");
    assert!(
        log.lines()
            .any(|l| l.contains("/krb-plain") && l.contains(&who)),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("CONNECT") && l.contains(&who)),
        "{log}"
    );
    // One TGT for both: the ticket is cached.
    assert_eq!(kdc.as_issued(USER), 1, "{}", kdc.log());
    p.shutdown().await;
}

#[tokio::test]
async fn kerberos_with_a_keytab() {
    let kdc = Kdc::start();
    let squid = AuthSquid::start(ParentKind::Negotiate(&kdc)).await;
    let origin = echo_origin().await;
    let mut o = peer_opts(format!("::localhost:{}", squid.port()));
    o.krb5_conf = Some(kdc.krb5_conf());
    o.parent_keytab = Some(kdc.robot_keytab());
    o.parent_auth = Some("negotiate".into());
    let p = TestProxy::start(o).await;
    let r = p
        .client()
        .get(origin.url("/kt-plain"))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}\n{}", squid.diagnostics());
    let (head, body) = tunnel_get(p.addr, origin.addr, "/kt-tunnel").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}{body}");
    let log = squid.wait_for_access_log("TCP_TUNNEL/200").await;
    let who = format!("{ROBOT}@{REALM}");
    assert!(
        log.lines()
            .any(|l| l.contains("/kt-plain") && l.contains(&who)),
        "{log}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn kerberos_ticket_expiring_during_the_test_is_renewed() {
    let kdc = Kdc::start();
    kdc.kadmin(&format!("modprinc -maxlife \"20 seconds\" {USER}"));
    kdc.kadmin(&format!("modprinc -maxlife \"20 seconds\" krbtgt/{REALM}"));
    let squid = AuthSquid::start(ParentKind::Negotiate(&kdc)).await;
    let origin = echo_origin().await;
    let p = TestProxy::start(kerberos_opts(
        &kdc,
        &squid,
        &format!("{USER}%40{REALM}"),
        USER_PASSWORD,
    ))
    .await;
    let (head, _) = tunnel_get(p.addr, origin.addr, "/before").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(kdc.as_issued(USER), 1, "{}", kdc.log());
    // Past three quarters of the 20 s life: the next tunnel gets a new ticket first.
    tokio::time::sleep(Duration::from_secs(17)).await;
    let (head, body) = tunnel_get(p.addr, origin.addr, "/after").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}{body}");
    assert_eq!(body, "GET /after 0");
    assert_eq!(kdc.as_issued(USER), 2, "{}", kdc.log());
    p.shutdown().await;
}

#[tokio::test]
async fn kerberos_errors_say_what_to_fix() {
    let mut kdc = Kdc::start();
    let squid = AuthSquid::start(ParentKind::Negotiate(&kdc)).await;
    let origin = echo_origin().await;
    let wrong = "Wr0ng-pass-zz";

    let check = |status: reqwest::StatusCode, body: &str, needle: &str| {
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("ERR_PARENT_AUTH"), "{body}");
        assert!(body.contains(needle), "{needle} not in {body}");
        assert!(
            !body.contains(wrong) && !body.contains(USER_PASSWORD),
            "{body}"
        );
    };

    let p = TestProxy::start(kerberos_opts(
        &kdc,
        &squid,
        &format!("{USER}%40{REALM}"),
        wrong,
    ))
    .await;
    let r = p.client().get(origin.url("/wrong")).send().await.unwrap();
    let (s, b) = (r.status(), r.text().await.unwrap());
    check(s, &b, "password of build@CUTTLE.TEST is wrong");
    let (head, body) = tunnel_get(p.addr, origin.addr, "/wrong").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(body.contains("is wrong"), "{body}");
    p.shutdown().await;

    let p = TestProxy::start(kerberos_opts(
        &kdc,
        &squid,
        &format!("nobody%40{REALM}"),
        wrong,
    ))
    .await;
    let r = p.client().get(origin.url("/unknown")).send().await.unwrap();
    let (s, b) = (r.status(), r.text().await.unwrap());
    check(s, &b, "does not know the user nobody@CUTTLE.TEST");
    p.shutdown().await;

    kdc.kadmin(&format!("modprinc -allow_tix {USER}"));
    let p = TestProxy::start(kerberos_opts(
        &kdc,
        &squid,
        &format!("{USER}%40{REALM}"),
        USER_PASSWORD,
    ))
    .await;
    let r = p.client().get(origin.url("/locked")).send().await.unwrap();
    let (s, b) = (r.status(), r.text().await.unwrap());
    check(s, &b, "locked or disabled");
    p.shutdown().await;
    kdc.kadmin(&format!("modprinc +allow_tix {USER}"));

    kdc.stop();
    let p = TestProxy::start(kerberos_opts(
        &kdc,
        &squid,
        &format!("{USER}%40{REALM}"),
        USER_PASSWORD,
    ))
    .await;
    let r = p
        .client()
        .get(origin.url("/kdc-down"))
        .send()
        .await
        .unwrap();
    let (s, b) = (r.status(), r.text().await.unwrap());
    check(s, &b, "cannot be reached");
    assert!(b.contains(&kdc.kdc_addr()), "{b}");
    // The KDC comes back: the same proxy recovers without a restart.
    kdc.restart();
    let r = p
        .client()
        .get(origin.url("/kdc-back"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    p.shutdown().await;

    // A Negotiate-only parent and NTLM credentials without Kerberos configuration.
    let p = TestProxy::start(peer_opts(format!(
        "CORP%5Cbuild:{wrong}:localhost:{}",
        squid.port()
    )))
    .await;
    let r = p.client().get(origin.url("/no-krb")).send().await.unwrap();
    let (s, b) = (r.status(), r.text().await.unwrap());
    check(s, &b, "offers only negotiate");
    p.shutdown().await;
    assert_eq!(origin.hits(), 1, "only /kdc-back reached the origin");
}

/// A KDC an hour ahead: the error says clock skew, whether the KDC lets the AS exchange
/// through (cuttle compares the ticket's time with its own) or checks the pre-authentication
/// timestamp itself (KRB_AP_ERR_SKEW, as Active Directory does).
#[tokio::test]
async fn kerberos_clock_skew_is_reported_as_such() {
    let kdc = Kdc::start_skewed("+1h");
    let squid = AuthSquid::start(ParentKind::Negotiate(&kdc)).await;
    let origin = echo_origin().await;
    for preauth in [false, true] {
        if preauth {
            kdc.kadmin(&format!("modprinc +requires_preauth {USER}"));
        }
        let p = TestProxy::start(kerberos_opts(
            &kdc,
            &squid,
            &format!("{USER}%40{REALM}"),
            USER_PASSWORD,
        ))
        .await;
        let r = p.client().get(origin.url("/skew")).send().await.unwrap();
        let (status, body) = (r.status(), r.text().await.unwrap());
        assert_eq!(status, 502, "{body}");
        assert!(
            body.contains("clock skew"),
            "preauth {preauth}: {body}\n{}",
            kdc.log()
        );
        assert!(body.contains("fix the time"), "{body}");
        p.shutdown().await;
    }
    assert_eq!(origin.hits(), 0);
}

/// cuttle as a child process with trace logging in JSON.
struct CuttleProcess {
    child: Child,
    addr: SocketAddr,
    out: Arc<Mutex<String>>,
}

impl CuttleProcess {
    fn start(envs: &[(&str, String)]) -> CuttleProcess {
        let mut c = crate::support::cuttle();
        c.args([
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "trace",
            "--log-format",
            "json",
        ])
        .env("CUTTLE_CACHE_SIZE", "0")
        .env("CUTTLE_ADMIN_LISTEN", "off")
        // The test origins are on loopback, which the default deny list refuses.
        .env("CUTTLE_ALLOW_DEST", support::LOOPBACK.join(","))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        for (k, v) in envs {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut stdout = child.stdout.take().unwrap();
        let o = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                o.lock().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stderr = child.stderr.take().unwrap();
        let o = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line.split("addr=").nth(1) {
                    let _ = tx.send(a.trim().trim_matches('"').to_string());
                } else if let Some(a) = line.split("\"addr\":\"").nth(1) {
                    let _ = tx.send(a.split('"').next().unwrap_or("").to_string());
                }
                let mut g = o.lock();
                g.push_str(&line);
                g.push('\n');
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cuttle did not report its address: {}", out.lock());
        };
        CuttleProcess {
            child,
            addr: addr.parse().unwrap(),
            out,
        }
    }

    fn output(&self) -> String {
        self.out.lock().clone()
    }
}

impl Drop for CuttleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The secrets test for the new paths: trace logs of NTLM and Kerberos runs, successful and
/// failing, never contain a password, a Basic token, the NT hash or an Authorization value.
#[tokio::test]
async fn no_secret_in_any_output_of_ntlm_and_kerberos_runs() {
    use base64::Engine;
    let kdc = Kdc::start();
    let ntlm_squid = AuthSquid::start(ParentKind::Ntlm).await;
    let krb_squid = AuthSquid::start(ParentKind::Negotiate(&kdc)).await;
    let origin = echo_origin().await;

    let runs = [
        vec![("CACHE_PEER", ntlm_peer(&ntlm_squid))],
        vec![
            (
                "CACHE_PEER",
                format!(
                    "{USER}%40{REALM}:{USER_PASSWORD}:localhost:{}",
                    krb_squid.port()
                ),
            ),
            ("CUTTLE_KRB5_CONF", kdc.krb5_conf().display().to_string()),
        ],
        vec![
            (
                "CACHE_PEER",
                format!(
                    "{USER}%40{REALM}:{NTLM_PASSWORD}:localhost:{}",
                    krb_squid.port()
                ),
            ),
            ("CUTTLE_KRB5_CONF", kdc.krb5_conf().display().to_string()),
        ],
    ];
    let mut all = String::new();
    for envs in runs {
        let c = CuttleProcess::start(&envs);
        let client = reqwest::Client::builder()
            .no_proxy()
            .proxy(reqwest::Proxy::all(format!("http://{}", c.addr)).unwrap())
            .build()
            .unwrap();
        let r = client.get(origin.url("/s1")).send().await.unwrap();
        // Through the parent: a success, or a 502 that names the parent's refusal (the run
        // with the wrong password), never a refusal by cuttle itself before the parent.
        assert!(
            r.status() == 200 || r.status() == 502,
            "{} {}",
            r.status(),
            c.output()
        );
        let _ = r.text().await;
        let r = client
            .post(origin.url("/s2"))
            .body("x")
            .send()
            .await
            .unwrap();
        let _ = r.text().await;
        let _ = tunnel_get(c.addr, origin.addr, "/s3").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        all.push_str(&c.output());
    }
    assert!(all.contains("/s1"), "the runs were logged: {all}");
    let nt_hash_hex = {
        use md4::Digest;
        let utf16: Vec<u8> = NTLM_PASSWORD
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        hex::encode(md4::Md4::digest(&utf16))
    };
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for secret in [
        NTLM_PASSWORD.to_string(),
        USER_PASSWORD.to_string(),
        b64(&format!("CORP\\build:{NTLM_PASSWORD}")),
        b64(&format!("{USER}@{REALM}:{USER_PASSWORD}")),
        nt_hash_hex,
        "TlRMTVNTUA".to_string(),   // any NTLM message, base64
        "Negotiate YI".to_string(), // any SPNEGO token in a header
    ] {
        assert!(
            !all.contains(&secret),
            "{secret} appears in the output:\n{all}"
        );
    }
    assert!(
        !all.to_ascii_lowercase().contains("proxy-authorization: "),
        "{all}"
    );
}

/// `auto` against a Basic-only parent: the first request learns the scheme from the 407,
/// later ones send Basic from the start (one 407 in all).
#[tokio::test]
async fn auto_learns_basic_from_a_basic_parent() {
    let squid = support::squid::SquidParent::start("alice", "Basic-pw-1").await;
    let origin = echo_origin().await;
    let p = TestProxy::start(peer_opts(squid.cache_peer())).await;
    for path in ["/b1", "/b2", "/b3"] {
        let r = p.client().get(origin.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.text().await.unwrap(), format!("GET {path} 0"));
    }
    let (head, _) = tunnel_get(p.addr, origin.addr, "/b4").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    squid.wait_for_access_log("TCP_TUNNEL/200").await;
    let log = squid.access_log();
    assert_eq!(log.matches("/407").count(), 1, "{log}");
    assert_eq!(log.matches("TCP_MISS/200").count(), 3, "{log}");
    p.shutdown().await;
}

/// The parent's credentials go on the CONNECT and on plain-http requests to the parent,
/// never inside the tunnel: an https origin fetched through the parent (absolute-form
/// `https://` request to cuttle) sees no Proxy-Authorization, even with Basic sent
/// pre-emptively.
#[tokio::test]
async fn parent_credentials_never_reach_an_https_origin_through_the_tunnel() {
    let squid = support::squid::SquidParent::start("alice", "Basic-pw-2").await;
    let origin = support::tls::TlsOrigin::start(|req| async move {
        let seen = req.headers().contains_key("proxy-authorization");
        support::respond(200, format!("proxy-authorization seen: {seen}"))
    })
    .await;
    let mut o = peer_opts(squid.cache_peer());
    o.parent_auth = Some("basic".into());
    o.upstream_ca = Some(origin.ca_file.clone());
    let p = TestProxy::start(o).await;
    let url = origin.url("/secret-free");
    let (head, body) = support::exchange(
        p.addr,
        &format!(
            "GET {url} HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
            origin.addr.port()
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}{body}");
    assert_eq!(body, "proxy-authorization seen: false");
    // It did go through the parent, authenticated, as a CONNECT (logged by Squid once the
    // pooled tunnel closes, at shutdown).
    p.shutdown().await;
    let log = squid.wait_for_access_log("CONNECT localhost").await;
    assert!(log.contains("TCP_TUNNEL/200"), "{log}");
    assert!(log.contains(" alice "), "{log}");
}

/// A parent that keeps refusing the credentials is one warning in the log, not one per
/// request (issue 14: one log line per parent state change); the state is per parent.
#[tokio::test]
async fn a_refusing_parent_is_logged_once_not_per_request() {
    let parent = ntlm_refusing_parent().await;
    let origin = echo_origin().await;
    let c = CuttleProcess::start(&[(
        "CACHE_PEER",
        format!("CORP%5Cbuild:{NTLM_PASSWORD}:{parent}"),
    )]);
    let client = reqwest::Client::builder()
        .no_proxy()
        .proxy(reqwest::Proxy::all(format!("http://{}", c.addr)).unwrap())
        .build()
        .unwrap();
    for i in 0..6 {
        let r = client
            .get(origin.url(&format!("/refused{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        let _ = r.text().await;
    }
    let (head, _) = tunnel_get(c.addr, origin.addr, "/refused-tunnel").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = c.output();
    assert!(out.contains("/refused5"), "the requests were logged: {out}");
    assert_eq!(
        out.matches("authentication to parent proxy failed").count(),
        1,
        "{out}"
    );
    assert_eq!(origin.hits(), 0);
}

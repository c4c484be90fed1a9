//! Security regressions around credentials and message framing: the parent's
//! `Proxy-Authorization` goes only to the parent (never into a tunnel to an origin), the
//! client's never leaves cuttle; a response's `Content-Length` beside `Transfer-Encoding` is
//! dropped; malformed client request bodies are the client's 400, not an upstream 502.
use crate::support::squid::SquidParent;
use crate::support::*;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The parent's credentials (the issue's reproduction: `us%40er:SECRET`, made longer so that
/// a match cannot be a coincidence).
const PARENT_USER: &str = "us@er";
const PARENT_PASS: &str = "SECRET-of-the-parent";
/// The client's credentials, checked by cuttle (`--auth-file`).
const CLIENT_USER: &str = "builder";
const CLIENT_PASS: &str = "client-SECRET-42";

fn basic(user: &str, pass: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Basic {token}")
}

/// An htpasswd file admitting the client (cost 4: fast, still real bcrypt).
fn htpasswd() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    let hash = bcrypt::hash(CLIENT_PASS, 4).unwrap();
    std::fs::write(f.path(), format!("{CLIENT_USER}:{hash}\n")).unwrap();
    f
}

// ---- an origin that keeps every byte it receives ----------------------------------------------

/// A test CA and a `localhost` / 127.0.0.1 leaf signed by it.
struct TestPki {
    ca_file: PathBuf,
    server: Arc<rustls::ServerConfig>,
    _dir: tempfile::TempDir,
}

fn test_pki() -> TestPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "raw origin CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("origin-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf_cert.der().clone()], key)
    .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    TestPki {
        ca_file,
        server: Arc::new(cfg),
        _dir: dir,
    }
}

/// An HTTP/1.1 origin written on raw sockets (plain or TLS) that records every byte it
/// receives, so that a header cannot hide from the check behind a parser. It answers each
/// request head with `200 ok`, or with `101` and an echo of everything after it when the
/// request asks to upgrade.
struct RawOrigin {
    addr: SocketAddr,
    /// The PEM file of the origin's CA, for `upstream_ca` (TLS origins only).
    ca_file: Option<PathBuf>,
    received: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
    _pki: Option<TestPki>,
}

impl RawOrigin {
    async fn start(tls: bool) -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pki = tls.then(test_pki);
        let acceptor = pki
            .as_ref()
            .map(|p| tokio_rustls::TlsAcceptor::from(p.server.clone()));
        let received = Arc::new(Mutex::new(Vec::new()));
        let rx = received.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((s, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                let (acceptor, rx) = (acceptor.clone(), rx.clone());
                conns.spawn(async move {
                    match acceptor {
                        Some(a) => {
                            if let Ok(tls) = a.accept(s).await {
                                serve_raw(tls, rx).await;
                            }
                        }
                        None => serve_raw(s, rx).await,
                    }
                });
            }
        });
        RawOrigin {
            addr,
            ca_file: pki.as_ref().map(|p| p.ca_file.clone()),
            received,
            task,
            _pki: pki,
        }
    }

    /// Everything received so far, as text (lossy).
    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock()).into_owned()
    }

    fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Asserts the origin saw `probe` and no credential of any kind: no
    /// `Proxy-Authorization` line, neither party's token, no password in any form.
    fn assert_clean(&self, probe: &str) {
        let got = self.received();
        assert!(got.contains(probe), "the origin never saw {probe}: {got:?}");
        let lower = got.to_ascii_lowercase();
        assert!(
            !lower.contains("proxy-authorization"),
            "Proxy-Authorization reached the origin: {got:?}"
        );
        for secret in [
            basic(PARENT_USER, PARENT_PASS),
            basic(CLIENT_USER, CLIENT_PASS),
            PARENT_PASS.to_string(),
            CLIENT_PASS.to_string(),
        ] {
            let token = secret.trim_start_matches("Basic ");
            assert!(
                !got.contains(token),
                "a credential ({token}) reached the origin: {got:?}"
            );
        }
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_raw<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, log: Arc<Mutex<Vec<u8>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let Ok(n) = s.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        log.lock().extend_from_slice(&chunk[..n]);
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        buf.drain(..end + 4);
        if head.contains("\r\nupgrade:") {
            let resp = "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\
                        Upgrade: websocket\r\n\r\n";
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            if !buf.is_empty() && s.write_all(&buf).await.is_err() {
                return;
            }
            loop {
                let Ok(n) = s.read(&mut chunk).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                log.lock().extend_from_slice(&chunk[..n]);
                if s.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
            }
        }
        let resp = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\
                    Cache-Control: no-store\r\n\r\nok";
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

// ---- helpers ----------------------------------------------------------------------------------

/// Client auth on, the Squid parent configured, the raw origin's CA trusted.
fn proxy_opts(
    squid: &SquidParent,
    origin: &RawOrigin,
    auth: &tempfile::NamedTempFile,
) -> cuttle::config::Options {
    let mut o = opts();
    o.cache_peer = Some(squid.cache_peer().into());
    o.auth_file = Some(auth.path().to_path_buf());
    o.upstream_ca = origin.ca_file.clone();
    o
}

/// Sends `request` on a fresh connection and reads the head and a Content-Length body.
async fn ask(proxy: SocketAddr, request: &str) -> (String, String) {
    tokio::time::timeout(Duration::from_secs(30), exchange(proxy, request))
        .await
        .expect("no answer within 30s")
}

// ---- 1. the parent's and the client's credentials never reach an origin -----------------------

/// Plain HTTP through the parent: the absolute-form request carries the parent's credentials
/// (Squid requires them and answers), and neither they nor the client's reach the origin.
#[tokio::test]
async fn plain_http_via_parent_keeps_credentials_from_the_origin() {
    let squid = SquidParent::start(PARENT_USER, PARENT_PASS).await;
    let origin = RawOrigin::start(false).await;
    let auth = htpasswd();
    let p = TestProxy::start(proxy_opts(&squid, &origin, &auth)).await;

    let url = origin.http_url("/probe-plain");
    let (head, body) = ask(
        p.addr,
        &format!(
            "GET {url} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: {}\r\n\r\n",
            origin.addr,
            basic(CLIENT_USER, CLIENT_PASS)
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "ok");
    // Squid admitted the request: cuttle gave the parent its credentials. (cuttle learns the
    // parent's scheme from a first 407, which Squid logs too, and may log before the 200:
    // wait for the admitted line itself; it never comes without the credentials.)
    squid
        .wait_for_access_log(&format!("GET {url} {PARENT_USER}"))
        .await;
    origin.assert_clean("/probe-plain");
    p.shutdown().await;
}

/// `GET https://origin/…` in absolute form through the parent: cuttle tunnels through the
/// parent (CONNECT, with the parent's credentials) and speaks TLS to the origin; the request
/// inside the TLS session carries no credentials.
#[tokio::test]
async fn absolute_https_via_parent_keeps_credentials_from_the_origin() {
    let squid = SquidParent::start(PARENT_USER, PARENT_PASS).await;
    let origin = RawOrigin::start(true).await;
    let auth = htpasswd();
    let p = TestProxy::start(proxy_opts(&squid, &origin, &auth)).await;

    let url = origin.https_url("/probe-https");
    let (head, body) = ask(
        p.addr,
        &format!(
            "GET {url} HTTP/1.1\r\nHost: localhost:{}\r\nProxy-Authorization: {}\r\n\r\n",
            origin.addr.port(),
            basic(CLIENT_USER, CLIENT_PASS)
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "ok");
    let line = p.log_with("/probe-https").await;
    assert!(line.contains("FIRSTUP_PARENT/"), "{line}");
    origin.assert_clean("/probe-https");
    p.shutdown().await;
}

/// The client's side of an intercepted CONNECT: TLS to cuttle (trusting its CA) inside the
/// tunnel. Returns the TLS stream.
async fn intercepted_session(
    p: &TestProxy,
    origin: &RawOrigin,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let cfg = tls_client_config(proxy_roots(p).await);
    let authority = format!("localhost:{}", origin.addr.port());
    let auth = format!(
        "Proxy-Authorization: {}\r\n",
        basic(CLIENT_USER, CLIENT_PASS)
    );
    let (s, head) = connect_with(p.addr, authority, &auth).await;
    assert!(head.starts_with("HTTP/1.1 200"), "CONNECT failed: {head}");
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), s)
        .await
        .unwrap()
}

/// A request decrypted from an intercepted CONNECT goes to the origin through a tunnel
/// opened on the parent: no credential inside, even when the client put its own
/// `Proxy-Authorization` inside the tunnel too.
#[tokio::test]
async fn intercepted_via_parent_keeps_credentials_from_the_origin() {
    let squid = SquidParent::start(PARENT_USER, PARENT_PASS).await;
    let origin = RawOrigin::start(true).await;
    let auth = htpasswd();
    let mut o = proxy_opts(&squid, &origin, &auth);
    o.intercept = Some(vec!["localhost".into()]);
    let p = TestProxy::start(o).await;

    let mut tls = intercepted_session(&p, &origin).await;
    tls.write_all(
        format!(
            "GET /probe-intercepted HTTP/1.1\r\nHost: localhost:{}\r\n\
             Proxy-Authorization: {}\r\nConnection: close\r\n\r\n",
            origin.addr.port(),
            basic(CLIENT_USER, CLIENT_PASS)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let resp = read_until(&mut tls, "\r\n\r\nok").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let line = p.log_with("/probe-intercepted").await;
    assert!(line.contains("FIRSTUP_PARENT/"), "{line}");
    origin.assert_clean("/probe-intercepted");
    p.shutdown().await;
}

/// A WebSocket upgrade to an `https` origin through the parent, asked in absolute form and
/// from inside an intercepted tunnel: the handshake reaches the origin without credentials,
/// and the upgraded stream works.
#[tokio::test]
async fn websocket_upgrade_via_parent_keeps_credentials_from_the_origin() {
    let squid = SquidParent::start(PARENT_USER, PARENT_PASS).await;
    let origin = RawOrigin::start(true).await;
    let auth = htpasswd();
    let mut o = proxy_opts(&squid, &origin, &auth);
    o.intercept = Some(vec!["localhost".into()]);
    let p = TestProxy::start(o).await;
    let upgrade = |target: &str, path: &str| {
        format!(
            "GET {target}{path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nProxy-Authorization: {}\r\n\r\n",
            origin.addr.port(),
            basic(CLIENT_USER, CLIENT_PASS)
        )
    };

    // Absolute form.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(upgrade(&origin.https_url(""), "/ws-absolute").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping-absolute").await.unwrap();
    read_until(&mut s, "ping-absolute").await;

    // Inside an intercepted tunnel.
    let mut tls = intercepted_session(&p, &origin).await;
    tls.write_all(upgrade("", "/ws-intercepted").as_bytes())
        .await
        .unwrap();
    let head = read_until(&mut tls, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tls.write_all(b"ping-intercepted").await.unwrap();
    read_until(&mut tls, "ping-intercepted").await;

    origin.assert_clean("/ws-absolute");
    origin.assert_clean("/ws-intercepted");
    drop((s, tls));
    p.shutdown().await;
}

/// A mirror route through the parent (plain and TLS upstreams): the parent gets its
/// credentials on the hop to it, the origin gets none of anyone's, whether the mirror client
/// authenticates to cuttle with `Proxy-Authorization` or (as npm and pip do with a registry)
/// with `Authorization`, and whatever cookie it sends.
#[tokio::test]
async fn mirror_via_parent_keeps_credentials_from_the_origin() {
    let squid = SquidParent::start(PARENT_USER, PARENT_PASS).await;
    let plain = RawOrigin::start(false).await;
    let tls = RawOrigin::start(true).await;
    let auth = htpasswd();
    let mut o = proxy_opts(&squid, &tls, &auth);
    o.mirror = Some(vec![
        cuttle::mirror::MirrorConfig::parse_flag(&format!("plain=raw={}", plain.http_url("/")))
            .unwrap(),
        cuttle::mirror::MirrorConfig::parse_flag(&format!("tls=raw={}", tls.https_url("/")))
            .unwrap(),
    ]);
    let p = TestProxy::start(o).await;
    let client = basic(CLIENT_USER, CLIENT_PASS);
    for (mirror, origin) in [("plain", &plain), ("tls", &tls)] {
        for (header, tag) in [("Proxy-Authorization", "pa"), ("Authorization", "a")] {
            let probe = format!("/probe-mirror-{mirror}-{tag}");
            let (head, body) = ask(
                p.addr,
                &format!(
                    "GET /{mirror}{probe} HTTP/1.1\r\nHost: cuttle.example.org:3128\r\n\
                     {header}: {client}\r\nCookie: session={CLIENT_PASS}\r\n\r\n"
                ),
            )
            .await;
            assert!(head.starts_with("HTTP/1.1 200"), "{probe}: {head}");
            assert_eq!(body, "ok");
            let line = p.log_with(&probe).await;
            assert!(line.contains("FIRSTUP_PARENT/"), "{line}");
            assert!(line.contains(CLIENT_USER), "{line}");
            origin.assert_clean(&probe);
        }
        // Without credentials: refused before anything goes upstream, with a registry's 401.
        let (head, _) = ask(
            p.addr,
            &format!("GET /{mirror}/anonymous HTTP/1.1\r\nHost: cuttle\r\n\r\n"),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: basic"),
            "{head}"
        );
        assert!(!origin.received().contains("/anonymous"));
    }
    // The plain upstream was reached through the parent with the parent's credentials.
    squid
        .wait_for_access_log(&format!(
            "{} {PARENT_USER}",
            plain.http_url("/probe-mirror-plain-a")
        ))
        .await;
    p.shutdown().await;
}

/// Without a parent, the client's own credentials are consumed by cuttle on every path.
#[tokio::test]
async fn client_credentials_are_never_forwarded_direct() {
    let plain = RawOrigin::start(false).await;
    let tls = RawOrigin::start(true).await;
    let auth = htpasswd();
    let mut o = opts();
    o.auth_file = Some(auth.path().to_path_buf());
    o.upstream_ca = tls.ca_file.clone();
    let p = TestProxy::start(o).await;
    let client = basic(CLIENT_USER, CLIENT_PASS);

    let (head, _) = ask(
        p.addr,
        &format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: {client}\r\n\r\n",
            plain.http_url("/direct-plain"),
            plain.addr
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, _) = ask(
        p.addr,
        &format!(
            "GET {} HTTP/1.1\r\nHost: localhost\r\nProxy-Authorization: {client}\r\n\r\n",
            tls.https_url("/direct-https")
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    plain.assert_clean("/direct-plain");
    tls.assert_clean("/direct-https");
    p.shutdown().await;
}

// ---- 7. Content-Length beside Transfer-Encoding -------------------------------------------------

/// An origin answering every request with `Content-Length: 5` and a chunked body of ten
/// bytes (RFC 9112 §6.3 item 3: the Transfer-Encoding wins; the length must go).
async fn conflicting_framing_origin() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let resp = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\
                                    Cache-Control: max-age=600\r\nContent-Length: 5\r\n\
                                    Transfer-Encoding: chunked\r\n\r\n\
                                    a\r\n0123456789\r\n0\r\n\r\n";
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, task)
}

/// Checks one response through cuttle: no `Content-Length: 5`, the whole ten-byte body.
async fn assert_whole_body(r: reqwest::Response, what: &str) {
    assert_eq!(r.status(), 200, "{what}");
    let cl = r.headers().get("content-length").cloned();
    assert!(
        cl.as_ref().is_none_or(|v| v == "10"),
        "{what}: the origin's Content-Length was forwarded: {cl:?}"
    );
    let body = r.bytes().await.unwrap_or_default();
    assert_eq!(&body[..], b"0123456789", "{what}");
}

#[tokio::test]
async fn content_length_beside_transfer_encoding_is_dropped() {
    let (addr, task) = conflicting_framing_origin().await;
    let p = TestProxy::start(opts()).await;
    let c = p.client();

    // The forward path (POST is never cached).
    let r = c
        .post(format!("http://{addr}/forwarded"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_whole_body(r, "forwarded").await;
    // The cache: stored on the miss, then served from the store.
    let url = format!("http://{addr}/cached");
    let r = c.get(&url).send().await.unwrap();
    assert_whole_body(r, "cache miss").await;
    let miss = p.log_with("/cached").await;
    assert!(miss.contains("TCP_MISS/200"), "{miss}");
    // The entry is committed just after the client has the last byte: a request in between
    // follows the fill (TCP_CF_MISS), from the same stored headers.
    let mut served = Vec::new();
    for _ in 0..20 {
        let r = c.get(&url).send().await.unwrap();
        assert_whole_body(r, "from the cache").await;
        let line = p.log_with("/cached").await;
        let hit = line.contains("HIT/200");
        served.push(line);
        if hit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served.last().unwrap().contains("HIT/200"), "{served:#?}");
    task.abort();
    p.shutdown().await;
}

// ---- 13. malformed client request bodies are the client's error --------------------------------

/// An origin echoing the request body (it reads the whole body before answering).
async fn echo_origin() -> Origin {
    Origin::start(|req| async move {
        match req.into_body().collect().await {
            Ok(b) => respond(200, b.to_bytes()),
            Err(_) => respond(500, "origin could not read the body"),
        }
    })
    .await
}

/// Sends a POST with `te` as its Transfer-Encoding lines and `body` as is; returns the head.
async fn post_raw(p: &TestProxy, origin: &Origin, te: &[&str], body: &str) -> String {
    let mut req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\n",
        origin.url("/upload"),
        origin.addr
    );
    for t in te {
        req.push_str(&format!("Transfer-Encoding: {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    ask(p.addr, &req).await.0
}

fn assert_client_error(head: &str, what: &str) {
    assert!(head.starts_with("HTTP/1.1 400"), "{what}: {head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-cuttle-error: err_invalid_req"),
        "{what}: {head}"
    );
}

#[tokio::test]
async fn malformed_request_bodies_are_400_not_502() {
    let origin = echo_origin().await;
    let mut o = opts();
    o.log_format = Some("json".into());
    let p = TestProxy::start(o).await;

    // Sanity: a well-formed chunked body goes through.
    let head = post_raw(&p, &origin, &["chunked"], "5\r\nhello\r\n0\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let line = p.log_with("/upload").await;
    assert!(line.contains(r#""status":200"#), "{line}");

    let trailers: String = (0..5000).map(|i| format!("X-T-{i}: v\r\n")).collect();
    let cases = [
        (
            "chunk-size overflow",
            "FFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n".to_string(),
        ),
        ("bad chunk framing", "5\r\nhelloXX\r\n0\r\n\r\n".to_string()),
        (
            "5000 trailers",
            format!("5\r\nhello\r\n0\r\n{trailers}\r\n"),
        ),
    ];
    for (what, body) in cases {
        let head = post_raw(&p, &origin, &["chunked"], &body).await;
        assert_client_error(&head, what);
        let line = p.log_with("/upload").await;
        for field in [
            r#""status":400"#,
            r#""result":"NONE_NONE""#,
            r#""error":"ERR_INVALID_REQ""#,
        ] {
            assert!(line.contains(field), "{what}: logged as {line}");
        }
    }
    p.shutdown().await;
}

/// The same through a parent: the body error reaches cuttle through the parent client, and is
/// still the client's.
#[tokio::test]
async fn malformed_request_body_via_parent_is_400() {
    let squid = SquidParent::start(PARENT_USER, PARENT_PASS).await;
    let origin = echo_origin().await;
    let mut o = opts();
    o.cache_peer = Some(squid.cache_peer().into());
    let p = TestProxy::start(o).await;
    let head = post_raw(&p, &origin, &["chunked"], "5\r\nhelloXX\r\n0\r\n\r\n").await;
    assert_client_error(&head, "bad chunk framing via the parent");
    let line = p.log_with("/upload").await;
    assert!(line.contains("NONE_NONE/400"), "{line}");
    p.shutdown().await;
}

/// RFC 9112 §6.1/§6.3: only a lone `chunked` is a valid request transfer coding here; a
/// coding list ending in `chunked` (on one line or split over several) is refused with 400
/// before anything reaches the origin.
#[tokio::test]
async fn transfer_codings_other_than_a_lone_chunked_are_refused() {
    let origin = echo_origin().await;
    let p = TestProxy::start(opts()).await;
    let body = "5\r\nhello\r\n0\r\n\r\n";
    for te in [
        &["identity, chunked"][..],
        &["identity", "chunked"][..],
        &["gzip, chunked"][..],
        &["chunked", "chunked"][..],
        &["chunked, chunked"][..],
    ] {
        let head = post_raw(&p, &origin, te, body).await;
        assert_client_error(&head, &format!("{te:?}"));
    }
    assert_eq!(origin.hits(), 0, "a refused request reached the origin");
    // A lone chunked, any case, goes through.
    let head = post_raw(&p, &origin, &["Chunked"], body).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    p.shutdown().await;
}

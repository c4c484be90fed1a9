//! Registry mirror routes (`http://cuttle/<mirror>/...`) against an in-process registry origin
//! that counts requests: what reaches the upstream, the rewriting of documents for the host
//! the client used, the cache shared with the forward path, failover between upstreams,
//! negative caching, stale serving, and every way a path or a header could leave the
//! configured upstream.

use crate::support::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cuttle::config::Options;
use cuttle::http::body::full;
use cuttle::mirror::MirrorConfig;
use http::Response;
use tokio::net::TcpListener;

const TARBALL: &[u8] = b"fake tarball bytes";

/// A registry on 127.0.0.1 serving npm, PyPI and cargo documents that link back to itself
/// with absolute URLs (as real registries do), tarballs, a 404 and a header echo. `down`
/// makes it answer 503.
struct Registry {
    origin: Origin,
    down: Arc<AtomicBool>,
}

impl Registry {
    async fn start() -> Registry {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let d = down.clone();
        let origin = Origin::serve(listener, move |req| {
            let path = req.uri().path().to_string();
            let headers = format!("{:?}", req.headers());
            let down = d.load(Ordering::SeqCst);
            async move { registry_answer(addr, &path, &headers, down) }
        });
        Registry { origin, down }
    }

    fn base(&self) -> String {
        format!("http://{}/", self.origin.addr)
    }
}

fn registry_answer(
    addr: SocketAddr,
    path: &str,
    headers: &str,
    down: bool,
) -> Response<cuttle::http::body::Body> {
    let json = |body: String, ct: &str| {
        Response::builder()
            .header("content-type", ct)
            .header("etag", "\"doc1\"")
            .body(full(body))
            .unwrap()
    };
    if down {
        return respond(503, "down");
    }
    let up = format!("http://{addr}");
    match path {
        "/left-pad" => json(
            format!(
                r#"{{"name":"left-pad","versions":{{"1.0.0":{{"name":"left-pad","homepage":"{up}/left-pad","dist":{{"tarball":"{up}/left-pad/-/left-pad-1.0.0.tgz","shasum":"00"}}}}}}}}"#
            ),
            "application/json",
        ),
        "/@scope%2fpkg" | "/@scope%2Fpkg" | "/@scope/pkg" => json(
            format!(
                r#"{{"name":"@scope/pkg","versions":{{"1.0.0":{{"dist":{{"tarball":"{up}/@scope/pkg/-/pkg-1.0.0.tgz"}}}}}}}}"#
            ),
            "application/vnd.npm.install-v1+json",
        ),
        "/simple/demo/" => json(
            format!(
                "<html><body><a href=\"{up}/packages/demo-1.0-py3-none-any.whl#sha256=abc\" data-requires-python=\"&gt;=3.8\" data-dist-info-metadata=\"sha256=def\">demo-1.0-py3-none-any.whl</a></body></html>"
            ),
            "text/html",
        ),
        "/config.json" => json(
            format!(r#"{{"dl":"{up}/api/v1/crates","api":"{up}"}}"#),
            "application/json",
        ),
        "/echo" => respond(200, headers.to_string()),
        p if p.ends_with(".tgz") || p.ends_with(".whl") || p.ends_with(".jar") => {
            Response::builder()
                .header("content-type", "application/octet-stream")
                .body(full(TARBALL))
                .unwrap()
        }
        _ => respond(404, "not found"),
    }
}

fn mirror(spec: &str) -> MirrorConfig {
    MirrorConfig::parse_flag(spec).unwrap()
}

fn with_mirrors(m: Vec<MirrorConfig>) -> Options {
    Options {
        mirror: Some(m),
        ..opts()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn get(url: &str) -> (u16, http::HeaderMap, String) {
    get_with(url, &[]).await
}

async fn get_with(url: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, String) {
    let mut rb = client().get(url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let h = r.headers().clone();
    (status, h, r.text().await.unwrap())
}

/// Waits until the cache has finished `n` fills (so the next request is a plain lookup).
async fn settled(p: &TestProxy, n: u64) {
    let cache = p.proxy().state().cache.clone().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cache.stats.stored.load(Ordering::SeqCst) + cache.stats.not_stored.load(Ordering::SeqCst)
        < n
    {
        assert!(std::time::Instant::now() < deadline, "fills never finished");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn npm_packument_is_rewritten_and_the_tarball_comes_through_the_mirror() {
    let reg = Registry::start().await;
    let p = TestProxy::start(with_mirrors(vec![mirror(&format!(
        "npm=npm={}",
        reg.base()
    ))]))
    .await;
    let (status, h, body) = get(&format!("{}/npm/left-pad", p.url())).await;
    assert_eq!(status, 200, "{body}");
    assert!(h.get("content-length").is_none() || body.len().to_string() == h["content-length"]);
    let mirror_tarball = format!("{}/npm/left-pad/-/left-pad-1.0.0.tgz", p.url());
    assert!(
        body.contains(&format!(r#""tarball":"{mirror_tarball}""#)),
        "{body}"
    );
    // Only the URLs a client fetches next are rewritten.
    assert!(body.contains(&format!(r#""homepage":"{}left-pad""#, reg.base())));
    settled(&p, 1).await;
    let (status, _, tgz) = get(&mirror_tarball).await;
    assert_eq!(status, 200);
    assert_eq!(tgz.as_bytes(), TARBALL);
    settled(&p, 2).await;
    // Both again: from the cache.
    get(&format!("{}/npm/left-pad", p.url())).await;
    get(&mirror_tarball).await;
    assert_eq!(reg.origin.hits(), 2, "{:?}", reg.origin.seen());
    // Scoped names, encoded or not, and the abbreviated form.
    for path in ["@scope%2fpkg", "@scope/pkg"] {
        let (status, _, body) = get_with(
            &format!("{}/npm/{path}", p.url()),
            &[("accept", "application/vnd.npm.install-v1+json")],
        )
        .await;
        assert_eq!(status, 200);
        assert!(
            body.contains(&format!(
                r#""tarball":"{}/npm/@scope/pkg/-/pkg-1.0.0.tgz""#,
                p.url()
            )),
            "{body}"
        );
    }
    // The upstream got an unencoded document request without the client's Range.
    let seen = reg.origin.seen();
    assert_eq!(seen[0].uri.path(), "/left-pad");
    assert_eq!(seen[0].headers["accept-encoding"], "identity");
    // Squid-format log names the upstream URL.
    assert!(
        p.all_logs()
            .iter()
            .any(|l| l.contains(&format!("{}left-pad/-/left-pad-1.0.0.tgz", reg.base()))),
        "{:?}",
        p.all_logs()
    );
}

#[tokio::test]
async fn the_mirror_and_the_forward_path_share_cache_entries() {
    let reg = Registry::start().await;
    let p = TestProxy::start(with_mirrors(vec![mirror(&format!(
        "npm=npm={}",
        reg.base()
    ))]))
    .await;
    let direct = format!("{}left-pad/-/left-pad-1.0.0.tgz", reg.base());
    let r = p.client().get(&direct).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), TARBALL);
    settled(&p, 1).await;
    let (status, h, _) = get(&format!("{}/npm/left-pad/-/left-pad-1.0.0.tgz", p.url())).await;
    assert_eq!(status, 200);
    assert!(h["cache-status"].to_str().unwrap().contains("hit"), "{h:?}");
    assert_eq!(reg.origin.hits(), 1);
}

#[tokio::test]
async fn documents_are_rewritten_per_client_host_and_cached_unrewritten() {
    let reg = Registry::start().await;
    let p = TestProxy::start(with_mirrors(vec![mirror(&format!(
        "npm=npm={}",
        reg.base()
    ))]))
    .await;
    let url = format!("{}/npm/left-pad", p.url());
    let (_, _, first) = get_with(&url, &[("host", "evil.example.org")]).await;
    assert!(
        first.contains("http://evil.example.org/npm/left-pad/-/"),
        "{first}"
    );
    settled(&p, 1).await;
    let (_, h, second) = get_with(&url, &[("host", "cuttle.example.org:3128")]).await;
    assert!(h["cache-status"].to_str().unwrap().contains("hit"));
    assert!(
        second.contains("http://cuttle.example.org:3128/npm/left-pad/-/"),
        "{second}"
    );
    assert!(!second.contains("evil"), "{second}");
    // A Host that is not a plain host[:port] is refused before anything goes upstream.
    let req = "GET /npm/left-pad HTTP/1.1\r\nHost: a\"><script>x\r\nConnection: close\r\n\r\n";
    let (head, _) = exchange(p.addr, req).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(reg.origin.hits(), 1);
}

#[tokio::test]
async fn paths_cannot_leave_the_upstream_base() {
    let reg = Registry::start().await;
    let base = format!("{}registry/", reg.base());
    let p = TestProxy::start(with_mirrors(vec![mirror(&format!("m=raw={base}"))])).await;
    for path in [
        "/m/../echo",
        "/m/%2e%2e/echo",
        "/m/%2E%2E/echo",
        "/m/.%2e/echo",
        "/m/a/../../echo",
        "/m/a%2f..%2f..%2fecho",
        "/m/a%5c..%5c..%5cecho",
        "/m//127.0.0.1:1/echo",
        "/m/./echo",
        "/m/a%00",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: cuttle\r\nConnection: close\r\n\r\n");
        let (head, body) = exchange(p.addr, &req).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{path}: {head}{body}");
    }
    assert_eq!(reg.origin.hits(), 0, "{:?}", reg.origin.seen());
    // An absolute URL inside the path: refused (its `//`), or, encoded, a path below the
    // base, never another host.
    let (status, _, _) = get(&format!("{}/m/http://evil.example.org/x", p.url())).await;
    assert_eq!(status, 400);
    assert_eq!(reg.origin.hits(), 0);
    let (status, _, _) = get(&format!("{}/m/http:%2f%2fevil.example.org%2fx", p.url())).await;
    assert_eq!(status, 404);
    assert_eq!(
        reg.origin.last().uri.path(),
        "/registry/http:%2f%2fevil.example.org%2fx"
    );
    // Paths that are not below a configured mirror are still refused as origin-form.
    let (head, _) = exchange(
        p.addr,
        "GET /other/x HTTP/1.1\r\nHost: cuttle\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[tokio::test]
async fn client_credentials_and_cookies_are_not_forwarded_unless_configured() {
    let reg = Registry::start().await;
    let mut fwd = mirror(&format!("private=raw={}", reg.base()));
    fwd.forward_credentials = true;
    let p = TestProxy::start(with_mirrors(vec![
        mirror(&format!("public=raw={}", reg.base())),
        fwd,
    ]))
    .await;
    let secret = [
        ("authorization", "Bearer client-token-123"),
        ("cookie", "session=cookie-456"),
    ];
    let (_, _, echoed) = get_with(&format!("{}/public/echo", p.url()), &secret).await;
    assert!(!echoed.contains("client-token-123"), "{echoed}");
    assert!(!echoed.contains("cookie-456"), "{echoed}");
    let (_, _, echoed) = get_with(&format!("{}/private/echo", p.url()), &secret).await;
    assert!(echoed.contains("client-token-123"), "{echoed}");
    assert!(echoed.contains("cookie-456"), "{echoed}");
}

#[tokio::test]
async fn upstreams_are_tried_in_order() {
    let first = Origin::start(|_req| async { respond(404, "not here") }).await;
    let reg = Registry::start().await;
    let p = TestProxy::start(with_mirrors(vec![mirror(&format!(
        "m2=maven={}|{}",
        first.url("/repo/"),
        reg.base()
    ))]))
    .await;
    let (status, _, body) = get(&format!("{}/m2/org/x/a/1.0/a-1.0.jar", p.url())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(first.hits(), 1);
    assert_eq!(first.last().uri.path(), "/repo/org/x/a/1.0/a-1.0.jar");
    settled(&p, 2).await;
    // Again: the first upstream's 404 is remembered (negative caching), the artifact cached.
    let (status, _, _) = get(&format!("{}/m2/org/x/a/1.0/a-1.0.jar", p.url())).await;
    assert_eq!(status, 200);
    assert_eq!(first.hits(), 1, "{:#?}", p.all_logs());
    assert_eq!(reg.origin.hits(), 1);
    // Nothing anywhere: the last upstream's 404.
    let (status, _, _) = get(&format!("{}/m2/nothing", p.url())).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn write_methods_are_refused_unless_allowed() {
    let reg = Registry::start().await;
    let p = TestProxy::start(with_mirrors(vec![mirror(&format!(
        "npm=npm={}",
        reg.base()
    ))]))
    .await;
    let r = client()
        .put(format!("{}/npm/left-pad", p.url()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    assert_eq!(reg.origin.hits(), 0);
}

#[tokio::test]
async fn metadata_and_missing_paths_are_cached_and_counted() {
    let reg = Registry::start().await;
    let p = TestProxy::start(with_mirrors(vec![mirror(&format!(
        "npm=npm={}",
        reg.base()
    ))]))
    .await;
    let url = format!("{}/npm/left-pad", p.url());
    let missing = format!("{}/npm/does-not-exist", p.url());
    for _ in 0..3 {
        assert_eq!(get(&url).await.0, 200);
        assert_eq!(get(&missing).await.0, 404);
        settled(&p, 2).await;
    }
    assert_eq!(
        reg.origin.hits(),
        2,
        "within the metadata age and the negative TTL"
    );
    let mirror_stats = &p.proxy().state().mirrors.list[0].stats;
    assert!(mirror_stats.hits.load(Ordering::SeqCst) >= 4);
    assert!(mirror_stats.bytes_saved.load(Ordering::SeqCst) > 0);
    assert_eq!(mirror_stats.requests.load(Ordering::SeqCst), 6);
    assert_eq!(mirror_stats.rewrite_errors.load(Ordering::SeqCst), 0);
    // The same figures on /metrics and on the status page's JSON.
    let metrics = get(&format!("{}/metrics", p.admin_url())).await.2;
    assert!(
        metrics.contains(r#"cuttle_mirror_requests_total{mirror="npm"} 6"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"cuttle_mirror_rewrite_errors_total{mirror="npm"} 0"#));
    let stats: serde_json::Value =
        serde_json::from_str(&get(&format!("{}/api/stats", p.admin_url())).await.2).unwrap();
    let m = &stats["mirrors"][0];
    assert_eq!(m["name"], "npm");
    assert_eq!(m["kind"], "npm");
    assert_eq!(m["requests"], 6);
    assert!(m["hits"].as_u64().unwrap() >= 4, "{m}");
    assert!(m["bytes_saved"].as_u64().unwrap() > 0, "{m}");
}

#[tokio::test]
async fn stale_packument_is_served_when_the_upstream_fails() {
    let reg = Registry::start().await;
    let mut m = mirror(&format!("npm=npm={}", reg.base()));
    m.metadata_max_age = Some("1s".into());
    let p = TestProxy::start(Options {
        metadata_grace: Some("0s".into()),
        ..with_mirrors(vec![m])
    })
    .await;
    let url = format!("{}/npm/left-pad", p.url());
    assert_eq!(get(&url).await.0, 200);
    settled(&p, 1).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    reg.down.store(true, Ordering::SeqCst);
    let (status, h, body) = get(&url).await;
    assert_eq!(status, 200);
    assert!(
        h["cache-status"].to_str().unwrap().contains("stale"),
        "{h:?}"
    );
    assert!(
        body.contains(&format!("{}/npm/left-pad/-/", p.url())),
        "{body}"
    );
    assert_eq!(reg.origin.hits(), 2);
}

#[tokio::test]
async fn pypi_simple_page_and_cargo_config_are_rewritten() {
    let reg = Registry::start().await;
    let p = TestProxy::start(with_mirrors(vec![
        mirror(&format!("pypi=pypi={}", reg.base())),
        mirror(&format!("crates=cargo={}", reg.base())),
    ]))
    .await;
    let (status, _, page) = get(&format!("{}/pypi/simple/demo/", p.url())).await;
    assert_eq!(status, 200);
    // Both mirrors have this upstream; the longest-prefix tie goes to one of them, and
    // either serves the file. The hash fragment and the PEP 658 attribute are kept.
    assert!(
        page.contains("/packages/demo-1.0-py3-none-any.whl#sha256=abc\""),
        "{page}"
    );
    assert!(page.contains(&format!("href=\"{}/", p.url())), "{page}");
    assert!(page.contains("data-dist-info-metadata=\"sha256=def\""));
    let (_, _, config) = get(&format!("{}/crates/config.json", p.url())).await;
    assert!(
        config.contains(&format!("\"api\":\"{}/", p.url())),
        "{config}"
    );
}

#[tokio::test]
async fn mirror_flag_and_config_file_forms() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cuttle.toml");
    std::fs::write(
        &file,
        r#"
[[mirror]]
name = "npm"
kind = "npm"
upstream = ["https://registry.example.org/", "https://mirror.example.org/npm/"]
metadata-max-age = "2m"
allow-write = false
"#,
    )
    .unwrap();
    let o = Options::from_file(&file).unwrap();
    let m = &o.mirror.as_ref().unwrap()[0];
    assert_eq!(m.upstream.len(), 2);
    let bad = Options {
        mirror: Some(vec![mirror("x=nope=https://registry.example.org/")]),
        ..opts()
    };
    let e = TestProxy::try_start(bad).await.err().unwrap();
    assert!(e.contains("kind `nope`"), "{e}");
    let dup = Options {
        mirror: Some(vec![
            mirror("x=npm=https://registry.example.org/"),
            mirror("x=npm=https://registry.example.org/"),
        ]),
        ..opts()
    };
    let e = TestProxy::try_start(dup).await.err().unwrap();
    assert!(e.contains("used twice"), "{e}");
}

/// `--tls-listen`: the mirror over HTTPS with the operator's certificate; rewritten documents
/// name `https` and the host the client used. Checked with curl trusting only that
/// certificate.
#[tokio::test]
async fn the_tls_listener_serves_mirrors_over_https() {
    let reg = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let p = TestProxy::start(Options {
        tls_listen: Some(vec!["127.0.0.1:0".into()]),
        tls_cert: Some(cert.clone()),
        tls_key: Some(key),
        ..with_mirrors(vec![mirror(&format!("npm=npm={}", reg.base()))])
    })
    .await;
    let tls = p.proxy().tls_addrs()[0];
    for version in ["--http2", "--http1.1"] {
        let mut cmd = curl();
        cmd.args(["-sS", "--fail", "--max-time", "30", version, "--cacert"])
            .arg(&cert)
            .arg(format!("https://localhost:{}/npm/left-pad", tls.port()))
            .args(["--resolve", &format!("localhost:{}:127.0.0.1", tls.port())]);
        // curl blocks: off the runtime thread the in-process proxy runs on.
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            body.contains(&format!(
                r#""tarball":"https://localhost:{}/npm/left-pad/-/left-pad-1.0.0.tgz""#,
                tls.port()
            )),
            "{version}: {body}"
        );
    }
    // Without the certificate or key: a clear configuration error.
    let e = TestProxy::try_start(Options {
        tls_listen: Some(vec!["127.0.0.1:0".into()]),
        ..opts()
    })
    .await
    .err()
    .unwrap();
    assert!(e.contains("--tls-cert"), "{e}");
}

//! TLS interception: an intercepted host is served through cuttle's CA and cached; other
//! hosts stay blind tunnels; origin certificate problems are named; leaf certificates are
//! minted once per host under concurrency.

use crate::support::tls::{TlsOrigin, intercepting};
use crate::support::*;

async fn artifact_origin() -> TlsOrigin {
    TlsOrigin::start(|req| async move {
        let body = format!("artifact at {}", req.uri().path());
        http::Response::builder()
            .header("content-type", "application/java-archive")
            .body(cuttle::http::body::full(body))
            .unwrap()
    })
    .await
}

/// curl through the proxy to `url`, trusting only `ca` (a PEM file); returns (exit, stdout, stderr).
async fn curl_via(
    proxy: &TestProxy,
    ca: &std::path::Path,
    url: &str,
    extra: &[&str],
) -> (i32, String, String) {
    let mut c = curl();
    c.args([
        "-sS",
        "--max-time",
        "20",
        "--proxy",
        &proxy.url(),
        "--cacert",
    ])
    .arg(ca)
    .args(extra)
    .arg(url);
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn intercepted_artifacts_are_cached_and_served_offline() {
    let origin = artifact_origin().await;
    let p = TestProxy::start(intercepting(&origin)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = proxy_ca(&p, dir.path()).await;
    let url = origin.url("/maven2/org/x/a/1.0/a-1.0.jar");
    let (code, out, err) = curl_via(&p, &ca, &url, &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "artifact at /maven2/org/x/a/1.0/a-1.0.jar");
    let line = p.log_with("a-1.0.jar").await;
    assert!(
        line.contains("TCP_MISS/200") && line.contains("https://localhost:"),
        "{line}"
    );
    // Second time: from the cache (immutable artifact rule), even with no-cache from the client.
    let (code, out, _) = curl_via(&p, &ca, &url, &["-H", "Cache-Control: no-cache"]).await;
    assert_eq!(code, 0);
    assert_eq!(out, "artifact at /maven2/org/x/a/1.0/a-1.0.jar");
    let line = p.log_with("a-1.0.jar").await;
    assert!(line.contains("HIT/200"), "{line}");
    assert_eq!(origin.hits(), 1);
    // The CONNECT itself is logged as a bumped tunnel.
    drop(origin);
    let (code, out, err) = curl_via(&p, &ca, &url, &[]).await;
    assert_eq!(code, 0, "offline: {err}");
    assert_eq!(out, "artifact at /maven2/org/x/a/1.0/a-1.0.jar");
    p.shutdown().await;
}

#[tokio::test]
async fn hosts_not_intercepted_stay_blind_tunnels() {
    let origin = artifact_origin().await;
    let mut o = intercepting(&origin);
    o.intercept = Some(vec!["registry.example".into()]);
    let p = TestProxy::start(o).await;
    // The client sees the origin's own certificate: only the origin's CA verifies it.
    let (code, out, err) = curl_via(&p, &origin.ca_file, &origin.url("/x.jar"), &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "artifact at /x.jar");
    let line = p.log_with("CONNECT").await;
    assert!(line.contains("TCP_TUNNEL/200"), "{line}");
    p.shutdown().await;
}

#[tokio::test]
async fn origin_certificate_errors_are_502_naming_the_problem() {
    let origin = artifact_origin().await;
    let mut o = intercepting(&origin);
    o.upstream_ca = None; // cuttle does not trust the origin's CA
    let p = TestProxy::start(o).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = proxy_ca(&p, dir.path()).await;
    let (code, out, _) = curl_via(&p, &ca, &origin.url("/x.jar"), &["-w", "\n%{http_code}"]).await;
    assert_eq!(code, 0);
    assert!(out.ends_with("502"), "{out}");
    assert!(
        out.contains("ERR_SECURE_CONNECT_FAIL") && out.to_lowercase().contains("certificate"),
        "{out}"
    );
    assert_eq!(origin.hits(), 0);
    p.shutdown().await;
}

#[tokio::test]
async fn client_that_distrusts_the_ca_fails_cleanly() {
    let origin = artifact_origin().await;
    let p = TestProxy::start(intercepting(&origin)).await;
    // Trusting only the origin's CA, curl refuses cuttle's certificate.
    let (code, _, err) = curl_via(&p, &origin.ca_file, &origin.url("/x.jar"), &[]).await;
    assert_ne!(code, 0);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let line = p.log_with("CONNECT").await;
    assert!(line.contains("TCP_BUMP_ABORTED"), "{line}");
    // The proxy keeps serving.
    let dir = tempfile::tempdir().unwrap();
    let ca = proxy_ca(&p, dir.path()).await;
    assert_eq!(curl_via(&p, &ca, &origin.url("/y.jar"), &[]).await.0, 0);
    p.shutdown().await;
}

#[tokio::test]
async fn minting_is_once_per_host_under_200_concurrent_connects() {
    let origin = artifact_origin().await;
    let p = TestProxy::start(intercepting(&origin)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = proxy_ca(&p, dir.path()).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (proxy, ca, url) = (p.url(), ca.clone(), origin.url(&format!("/c/{i}")));
        tasks.push(tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-sS", "--max-time", "60", "--proxy", &proxy, "--cacert"])
                .arg(&ca)
                .arg(&url)
                .env_remove("http_proxy")
                .env_remove("https_proxy")
                .output()
                .unwrap()
        }));
    }
    for t in tasks {
        let out = t.await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/metrics", p.admin_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("cuttle_certificates_minted_total 1\n"),
        "{}",
        text.lines()
            .filter(|l| l.contains("minted"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    p.shutdown().await;
}

/// A CONNECT to an address on port 443: the ClientHello's server name decides. `localhost`
/// is on the intercept list (intercepted; its requests go to that name); with a list that
/// does not name it, a blind tunnel to the address (the client sees the origin's own
/// certificate). Binds 127.0.0.1:443 (the tests run as root).
#[tokio::test]
async fn connect_to_an_address_is_decided_by_the_client_hello() {
    let origin = TlsOrigin::start_on("127.0.0.1:443", |req| async move {
        http::Response::builder()
            .body(cuttle::http::body::full(format!(
                "artifact at {}",
                req.uri().path()
            )))
            .unwrap()
    })
    .await;
    let p = TestProxy::start(intercepting(&origin)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = proxy_ca(&p, dir.path()).await;
    let via_ip = ["--connect-to", "localhost:443:127.0.0.1:443"];
    let (code, out, err) = curl_via(&p, &ca, "https://localhost/a/b-1.0.jar", &via_ip).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "artifact at /a/b-1.0.jar");
    // The inner request is logged first; the CONNECT when the tunnel ends.
    let line = p.log_with("b-1.0.jar").await;
    assert!(line.contains("https://localhost/a/b-1.0.jar"), "{line}");
    let line = p.log_with("CONNECT").await;
    assert!(
        line.contains("CONNECT 127.0.0.1:443") && line.contains("TCP_BUMP/200"),
        "{line}"
    );
    // Not on the list: blind, the origin's own certificate is what the client sees.
    let mut o = intercepting(&origin);
    o.intercept = Some(vec!["registry.example".into()]);
    let p2 = TestProxy::start(o).await;
    let (code, out, err) = curl_via(&p2, &origin.ca_file, "https://localhost/c.jar", &via_ip).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "artifact at /c.jar");
    let line = p2.log_with("CONNECT").await;
    assert!(line.contains("TCP_TUNNEL/200"), "{line}");
    p.shutdown().await;
    p2.shutdown().await;
}

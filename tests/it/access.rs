//! Access control end to end: client networks, proxy authentication (Basic against a bcrypt
//! htpasswd file), destination rules (deny-dest, the proxy's own address, deny-domain,
//! allow-domain) and the check of resolved addresses, for GET and CONNECT alike.
use crate::support::*;

use std::time::Duration;

use base64::Engine;

/// Splits a Squid native access-log line into its fields.
fn fields(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

// ---- client networks ----------------------------------------------------------------------

#[tokio::test]
async fn client_outside_allow_client_is_denied_for_get_and_connect() {
    let origin = Origin::text("secret").await;
    let mut o = opts();
    o.allow_client = Some(vec!["10.0.0.0/8".into()]);
    let p = TestProxy::start(o).await;

    let r = p.client().get(origin.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("allow-client"), "{body}");
    assert!(body.contains("ERR_ACCESS_DENIED"), "{body}");
    let line = p.next_log().await;
    assert!(line.contains("TCP_DENIED/403"), "{line}");
    assert!(line.contains(&origin.url("/x")), "{line}");

    let (head, body) = exchange(p.addr, &connect_request(origin.addr, "")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(body.contains("allow-client"), "{body}");
    let line = p.log_with("CONNECT").await;
    assert!(line.contains("TCP_DENIED/403"), "{line}");

    assert_eq!(
        origin.connections(),
        0,
        "a denied client reached the origin"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn default_allow_client_admits_loopback() {
    let origin = Origin::text("ok").await;
    let p = TestProxy::start(opts()).await;
    let r = p.client().get(origin.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    let (head, _) = exchange(p.addr, &connect_request(origin.addr, "")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    p.shutdown().await;
}

// ---- proxy authentication -----------------------------------------------------------------

const USER: &str = "alice";
const PASS: &str = "Tr0ub4dor&3xyz";

/// An htpasswd file with one bcrypt entry (cost 4: fast, still real bcrypt).
fn htpasswd() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    let hash = bcrypt::hash(PASS, 4).unwrap();
    std::fs::write(f.path(), format!("# test users\n{USER}:{hash}\n")).unwrap();
    f
}

fn basic(user: &str, pass: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Basic {token}")
}

fn client_with_auth(p: &TestProxy, user: &str, pass: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .proxy(reqwest::Proxy::all(p.url()).unwrap().basic_auth(user, pass))
        .build()
        .unwrap()
}

#[tokio::test]
async fn proxy_auth_challenges_rejects_and_admits() {
    let origin = Origin::text("behind auth").await;
    let file = htpasswd();
    let mut o = opts();
    o.auth_file = Some(file.path().to_path_buf());
    let p = TestProxy::start(o).await;

    // No credentials: a challenge.
    let r = p.client().get(origin.url("/a")).send().await.unwrap();
    assert_eq!(r.status(), 407);
    assert_eq!(r.headers()["proxy-authenticate"], "Basic realm=\"cuttle\"");
    let line = p.next_log().await;
    assert!(line.contains("TCP_DENIED/407"), "{line}");

    // Wrong password, and an unknown user: still 407.
    let r = client_with_auth(&p, USER, "wrong")
        .get(origin.url("/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 407);
    assert!(r.headers().contains_key("proxy-authenticate"));
    p.next_log().await;
    let r = client_with_auth(&p, "mallory", PASS)
        .get(origin.url("/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 407);
    p.next_log().await;
    assert_eq!(
        origin.hits(),
        0,
        "unauthenticated requests reached the origin"
    );

    // Right credentials: GET goes through, the user is logged, the header is not forwarded.
    let r = client_with_auth(&p, USER, PASS)
        .get(origin.url("/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "behind auth");
    let line = p.log_with("TCP_MISS/200").await;
    assert_eq!(fields(&line)[7], USER, "user field in {line}");
    let seen = origin.last();
    assert!(
        !seen.headers.contains_key("proxy-authorization"),
        "origin saw Proxy-Authorization: {:?}",
        seen.headers
    );

    // CONNECT: without credentials 407 with the challenge, with them a tunnel.
    let target = origin.addr;
    let (head, _) = exchange(p.addr, &connect_request(target, "")).await;
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("proxy-authenticate: basic realm=\"cuttle\""),
        "{head}"
    );
    let (head, _) = exchange(
        p.addr,
        &connect_request(
            target,
            &format!("Proxy-Authorization: {}\r\n", basic(USER, "nope")),
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    let tunnel = raw(
        p.addr,
        format!(
            "{}GET /t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            connect_request(
                target,
                &format!("Proxy-Authorization: {}\r\n", basic(USER, PASS))
            )
        )
        .as_bytes(),
    )
    .await;
    assert!(tunnel.starts_with("HTTP/1.1 200"), "{tunnel}");
    assert!(tunnel.ends_with("behind auth"), "{tunnel}");
    let line = p.log_with("TCP_TUNNEL/200").await;
    assert_eq!(fields(&line)[7], USER, "user field in {line}");
    // Inside a tunnel the origin sees what the client sent, and the client sent no
    // Proxy-Authorization on the tunnelled request.
    assert_eq!(origin.last().uri, "/t");
    assert!(!origin.last().headers.contains_key("proxy-authorization"));

    let token = basic(USER, PASS);
    let token = token.trim_start_matches("Basic ");
    for l in p.all_logs() {
        assert!(!l.contains(PASS), "password in access log: {l}");
        assert!(!l.contains(token), "credentials in access log: {l}");
    }
    p.shutdown().await;
}

#[tokio::test]
async fn non_bcrypt_htpasswd_is_a_config_error() {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), "bob:$apr1$abcdefgh$0123456789abcdefghijkl\n").unwrap();
    let mut o = opts();
    o.auth_file = Some(f.path().to_path_buf());
    let errs = o.validate().unwrap_err();
    assert!(
        errs.iter().any(|e| e.starts_with("auth-file")),
        "auth-file not named: {errs:?}"
    );
    let all = errs.join("\n");
    assert!(all.contains("bcrypt"), "{all}");
}

// ---- destination rules --------------------------------------------------------------------

#[tokio::test]
async fn link_local_metadata_is_denied_by_default() {
    let p = TestProxy::start(opts()).await;
    let c = p.client();
    // Bounded: a denial must come from the rule, not from a connect attempt timing out.
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        c.get("http://169.254.169.254/latest/meta-data/").send(),
    )
    .await
    .expect("metadata request hung instead of being denied")
    .unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("deny-dest"), "{body}");
    assert!(body.contains("169.254.169.254"), "{body}");
    let line = p.next_log().await;
    assert!(line.contains("TCP_DENIED/403"), "{line}");
    assert!(line.contains("HIER_NONE/-"), "{line}");

    let (head, body) = tokio::time::timeout(
        Duration::from_secs(5),
        exchange(p.addr, &connect_request("169.254.169.254:80", "")),
    )
    .await
    .expect("metadata CONNECT hung");
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(body.contains("deny-dest"), "{body}");

    let r = tokio::time::timeout(Duration::from_secs(5), c.get("http://[fe80::1]/").send())
        .await
        .expect("link-local IPv6 request hung")
        .unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("deny-dest"), "{body}");
    assert!(body.contains("fe80::1"), "{body}");

    // An IPv4-mapped spelling of the same address is the same address.
    let (head, _) = exchange(p.addr, &connect_request("[::ffff:169.254.169.254]:80", "")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    p.shutdown().await;
}

#[tokio::test]
async fn requests_to_the_proxy_itself_are_a_forwarding_loop() {
    let p = TestProxy::start(opts()).await;
    let port = p.addr.port();
    let r = p
        .client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("forwarding loop"), "{body}");

    // Through a name, the check runs on the resolved address.
    let r = p
        .client()
        .get(format!("http://localhost:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("forwarding loop"), "{body}");

    let (head, body) = exchange(p.addr, &connect_request(format!("127.0.0.1:{port}"), "")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(body.contains("forwarding loop"), "{body}");
    p.shutdown().await;
}

#[tokio::test]
async fn deny_domain_names_the_pattern() {
    let origin = Origin::text("fine").await;
    let mut o = opts();
    o.deny_domain = Some(vec!["*.blocked.test".into()]);
    let p = TestProxy::start(o).await;
    let r = p
        .client()
        .get("http://www.blocked.test/x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("*.blocked.test"), "{body}");
    assert!(body.contains("deny-domain"), "{body}");
    let line = p.next_log().await;
    assert!(line.contains("TCP_DENIED/403"), "{line}");

    let (head, body) = exchange(p.addr, &connect_request("Deep.Sub.BLOCKED.test:443", "")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(body.contains("*.blocked.test"), "{body}");

    // Hosts the pattern does not match still work.
    let r = p.client().get(origin.url("/ok")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    p.shutdown().await;
}

#[tokio::test]
async fn allow_domain_admits_only_listed_hosts() {
    let origin = Origin::text("listed").await;
    let port = origin.addr.port();
    let mut o = opts();
    o.allow_domain = Some(vec!["localhost".into()]);
    let p = TestProxy::start(o).await;

    let r = p
        .client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("allow-domain"), "{body}");
    assert_eq!(origin.hits(), 0);

    let (head, body) = exchange(p.addr, &connect_request(format!("127.0.0.1:{port}"), "")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(body.contains("allow-domain"), "{body}");

    let r = p
        .client()
        .get(format!("http://localhost:{port}/in"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "listed");
    assert_eq!(origin.last().uri, "/in");
    p.shutdown().await;
}

// ---- resolved addresses -------------------------------------------------------------------

#[tokio::test]
async fn names_resolving_to_denied_networks_are_denied() {
    let origin = Origin::text("must not be reached").await;
    let port = origin.addr.port();
    let mut o = opts();
    o.deny_dest = Some(vec!["127.0.0.0/8".into(), "::1/128".into()]);
    let p = TestProxy::start(o).await;

    let r = p
        .client()
        .get(format!("http://localhost:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("deny-dest"), "{body}");
    let line = p.next_log().await;
    assert!(line.contains("TCP_DENIED/403"), "{line}");

    let (head, body) = exchange(p.addr, &connect_request(format!("localhost:{port}"), "")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(body.contains("deny-dest"), "{body}");
    let line = p.log_with("CONNECT").await;
    assert!(line.contains("TCP_DENIED/403"), "{line}");

    assert_eq!(origin.hits(), 0);
    assert_eq!(origin.connections(), 0, "the origin was connected to");
    p.shutdown().await;
}

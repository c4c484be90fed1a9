//! The admin port: probes (never logged), Prometheus metrics checked against known traffic,
//! the status JSON, the admin token, reload (valid and invalid), readiness while draining, and
//! the `cuttle status` / `cuttle cache` client commands.

use std::time::Duration;

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut r = c.get(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.text().await.unwrap())
}

async fn post(url: &str, token: Option<&str>) -> (u16, String) {
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut r = c.post(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.text().await.unwrap())
}

/// The value of one exposition line (`name{labels} value`).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

async fn cacheable_origin() -> Origin {
    Origin::start(|req| async move {
        match req.uri().path() {
            "/fail" => respond(503, "down"),
            _ => http::Response::builder()
                .header("content-type", "text/plain")
                .header("cache-control", "max-age=3600")
                .body(cuttle::http::body::full("cached body"))
                .unwrap(),
        }
    })
    .await
}

#[tokio::test]
async fn probes_answer_and_are_never_logged() {
    let p = TestProxy::start(opts()).await;
    let admin = p.admin_url();
    for _ in 0..3 {
        assert_eq!(
            get(&format!("{admin}/healthz"), None).await,
            (200, "ok\n".into())
        );
        assert_eq!(
            get(&format!("{admin}/readyz"), None).await,
            (200, "ready\n".into())
        );
    }
    let origin = Origin::text("x").await;
    p.client()
        .get(origin.url("/after-probes"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = p.next_log().await;
    assert!(
        line.contains("/after-probes"),
        "the first logged line is the proxied request: {line}"
    );
    assert!(
        p.all_logs()
            .iter()
            .all(|l| !l.contains("healthz") && !l.contains("readyz"))
    );
    p.shutdown().await;
}

#[tokio::test]
async fn metrics_follow_known_traffic() {
    let origin = cacheable_origin().await;
    let mut o = opts();
    o.allow_domain = Some(vec!["127.0.0.1".into()]);
    let p = TestProxy::start(o).await;
    let c = p.client();
    // 3 requests for one cacheable URL: 1 miss, 2 memory hits.
    for i in 0..3 {
        assert_eq!(
            c.get(origin.url("/a"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "cached body"
        );
        if i == 0 {
            p.stored_at_least(1).await;
        }
    }

    // A denial, an upstream error, and a tunnel.
    assert_eq!(
        c.get("http://denied.example/")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_eq!(
        c.get(format!("http://{closed}/"))
            .send()
            .await
            .unwrap()
            .status(),
        502
    );
    let (mut t, _) = connect_via(p.addr, origin.addr).await;
    t.write_all(b"GET /t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    t.read_to_end(&mut rest).await.unwrap();
    drop(t);
    // Metrics are updated when a transaction's log line is written: wait for all six.
    for _ in 0..6 {
        p.next_log().await;
    }

    let (status, text) = get(&format!("{}/metrics", p.admin_url()), None).await;
    assert_eq!(status, 200);
    // The miss, and the failed request (Squid logs failures as TCP_MISS/502 too).
    assert_eq!(
        metric(
            &text,
            r#"cuttle_requests_total{method="get",result="TCP_MISS"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            r#"cuttle_requests_total{method="get",result="TCP_MEM_HIT"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            r#"cuttle_requests_total{method="connect",result="TCP_TUNNEL"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"cuttle_access_denied_total{reason="allow_domain"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"cuttle_upstream_errors_total{kind="ERR_CONNECT_FAIL"}"#
        ),
        1.0
    );
    assert!(
        metric(
            &text,
            r#"cuttle_response_bytes_total{source="cache_memory"}"#
        ) >= 2.0 * "cached body".len() as f64
    );
    assert!(
        metric(
            &text,
            r#"cuttle_tunnel_bytes_total{direction="upstream_to_client"}"#
        ) >= rest.len() as f64
    );
    assert!(
        metric(
            &text,
            r#"cuttle_tunnel_bytes_total{direction="client_to_upstream"}"#
        ) > 0.0
    );
    assert_eq!(metric(&text, r#"cuttle_cache_objects{tier="memory"}"#), 1.0);
    assert!(metric(&text, r#"cuttle_cache_capacity_bytes{tier="memory"}"#) > 0.0);
    assert_eq!(
        metric(
            &text,
            r#"cuttle_time_to_first_byte_seconds_count{kind="hit"}"#
        ),
        2.0
    );
    assert!(metric(&text, "cuttle_upstream_request_duration_seconds_count") >= 1.0);
    assert_eq!(metric(&text, "cuttle_tunnels"), 0.0);
    // Labels are bounded: no host or URL ever appears in the exposition.
    assert!(
        !text.contains("127.0.0.1") && !text.contains("denied.example"),
        "{text}"
    );

    // The status JSON agrees.
    let (status, body) = get(&format!("{}/api/stats", p.admin_url()), None).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["results"]["TCP_MEM_HIT"], 2);
    assert_eq!(v["requests_total"], 6);
    let ratio = v["hit_ratio_hour"].as_f64().unwrap();
    assert!((ratio - 2.0 / 3.0).abs() < 1e-9, "{ratio}");
    assert_eq!(v["top_hosts_by_requests"][0]["host"], "127.0.0.1");
    assert_eq!(v["cache"]["memory"]["objects"], 1);
    assert_eq!(v["errors"][0]["label"], "ERR_CONNECT_FAIL");
    assert!(!v["history"].as_array().unwrap().is_empty());
    assert_eq!(v["ready"], true);
    p.shutdown().await;
}

#[tokio::test]
async fn admin_token_guards_everything_but_probes() {
    let mut o = opts();
    o.admin_token = Some("s3cret-admin".into());
    let p = TestProxy::start(o).await;
    let a = p.admin_url();
    assert_eq!(get(&format!("{a}/healthz"), None).await.0, 200);
    assert_eq!(get(&format!("{a}/readyz"), None).await.0, 200);
    for path in ["/metrics", "/api/stats", "/api/cache"] {
        assert_eq!(get(&format!("{a}{path}"), None).await.0, 401, "{path}");
        assert_eq!(
            get(&format!("{a}{path}"), Some("wrong")).await.0,
            401,
            "{path}"
        );
        assert_eq!(
            get(&format!("{a}{path}"), Some("s3cret-admin")).await.0,
            200,
            "{path}"
        );
    }
    assert_eq!(post(&format!("{a}/api/reload"), None).await.0, 401);
    assert_eq!(
        post(&format!("{a}/api/purge?url=http://x/"), None).await.0,
        401
    );
    // The page itself loads without the token (it then asks for it); its API does not.
    let (s, page) = get(&format!("{a}/"), None).await;
    assert_eq!(s, 200);
    assert!(page.contains("<html") || page.contains("<!doctype") || page.contains("<!DOCTYPE"));
    p.shutdown().await;
}

#[tokio::test]
async fn reload_applies_valid_config_and_keeps_old_on_error() {
    let origin = Origin::text("hello").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cuttle.toml");
    std::fs::write(&file, "deny-domain = [\"blocked.test\"]\n").unwrap();
    let p = TestProxy::start_reloadable(opts(), file.clone()).await;
    let c = p.client();
    assert_eq!(c.get(origin.url("/")).send().await.unwrap().status(), 200);

    // A tunnel opened before the reload keeps working after it.
    let (mut t, _) = connect_via(p.addr, origin.addr).await;

    // Valid: now 127.0.0.1 is denied.
    std::fs::write(&file, "deny-domain = [\"127.0.0.1\"]\n").unwrap();
    let (s, body) = post(&format!("{}/api/reload", p.admin_url()), None).await;
    assert_eq!(s, 200, "{body}");
    let r = c.get(origin.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("deny-domain `127.0.0.1`"));

    // Invalid: rejected with the reason, the previous configuration stays.
    std::fs::write(
        &file,
        "deny-domain = [\"bad host\"]\nconnect-timeout = \"soon\"\n",
    )
    .unwrap();
    let (s, body) = post(&format!("{}/api/reload", p.admin_url()), None).await;
    assert_eq!(s, 400);
    assert!(
        body.contains("deny-domain") && body.contains("connect-timeout"),
        "{body}"
    );
    assert_eq!(c.get(origin.url("/")).send().await.unwrap().status(), 403);
    // Reload API through the Proxy handle too (as SIGHUP does).
    std::fs::write(&file, "").unwrap();
    p.proxy().reload().unwrap();
    assert_eq!(c.get(origin.url("/")).send().await.unwrap().status(), 200);

    t.write_all(b"GET /tunnel HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = String::new();
    t.read_to_string(&mut rest).await.unwrap();
    assert!(rest.ends_with("hello"), "{rest}");
    p.shutdown().await;
}

#[tokio::test]
async fn readyz_reports_draining() {
    let origin = Origin::text("x").await;
    let mut o = opts();
    o.shutdown_grace = Some("5s".into());
    let p = TestProxy::start(o).await;
    let admin = p.admin_url();
    let (t, _) = connect_via(p.addr, origin.addr).await;
    let shutdown = tokio::spawn(p.shutdown());
    let mut seen = None;
    for _ in 0..200 {
        let (s, body) = get(&format!("{admin}/readyz"), None).await;
        if s == 503 {
            seen = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let body = seen.expect("readyz never said 503 while draining");
    assert!(body.contains("draining"), "{body}");
    drop(t);
    shutdown.await.unwrap();
}

#[tokio::test]
async fn status_and_cache_commands_talk_to_a_running_instance() {
    let origin = cacheable_origin().await;
    let p = TestProxy::start(opts()).await;
    for i in 0..2 {
        p.client()
            .get(origin.url("/obj"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if i == 0 {
            p.stored_at_least(1).await;
        }
    }

    let admin = p.admin_url();
    fn run(args: Vec<String>) -> (i32, String, String) {
        let out = cuttle().args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
    let (code, out, err) = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || run(vec!["status".into(), "--admin".into(), admin])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("hit ratio (last hour)") && out.contains("50.0%"),
        "{out}"
    );
    assert!(
        out.contains("cache memory") && out.contains("1 objects"),
        "{out}"
    );
    assert!(out.contains("direct (no parent proxy)"), "{out}");

    let (code, out, _) = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || {
            run(vec![
                "cache".into(),
                "stats".into(),
                "--admin".into(),
                admin,
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 0);
    assert!(
        out.contains("hits memory") && out.contains("misses"),
        "{out}"
    );

    let url = origin.url("/obj");
    let (code, out, _) = tokio::task::spawn_blocking({
        let (admin, url) = (admin.clone(), url.clone());
        move || {
            run(vec![
                "cache".into(),
                "purge".into(),
                url,
                "--admin".into(),
                admin,
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("purged"), "{out}");
    let hits = origin.hits();
    p.client()
        .get(origin.url("/obj"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(origin.hits(), hits + 1, "purged object was refetched");
    let (code, out, _) = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || {
            run(vec![
                "cache".into(),
                "purge".into(),
                "http://never.example/x".into(),
                "--admin".into(),
                admin,
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 3, "{out}");

    // A wrong admin URL is a clear error, exit 1.
    let (code, _, err) = tokio::task::spawn_blocking(|| {
        run(vec![
            "status".into(),
            "--admin".into(),
            "http://127.0.0.1:1".into(),
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the admin port"), "{err}");
    p.shutdown().await;
}

//! The admin status page (`src/admin/status.html`) in a real headless Chromium: rendered
//! against the sample `tests/fixtures/stats.json` from a tiny in-test server, then against
//! cuttle's own admin port. Each run dumps the DOM, takes a screenshot under `target/`, and
//! fails on any console output (the page logs nothing in normal operation).
use crate::support::*;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cuttle::http::body::{Body, full};
use http::{Request, Response};
use hyper::body::Incoming;
use regex::Regex;

const PAGE: &str = include_str!("../../src/admin/status.html");
const FIXTURE: &str = include_str!("../fixtures/stats.json");
const CHROMIUM: &str = "/usr/bin/chromium";

/// One browser at a time: several Chromiums at once on a 2-core machine only slow each other.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What one headless Chromium run left behind.
struct Browsed {
    dom: String,
    /// Lines Chromium logged for the page's console: `console.*` calls at any level, uncaught
    /// exceptions ("Uncaught ..."), CSP violations. Chromium writes them all to stderr as
    /// `[..:INFO:CONSOLE:<line>] "<message>", source: <url> (<line>)`.
    console: Vec<String>,
    stderr: String,
}

/// Loads `url` in headless Chromium, lets `budget_ms` of virtual time pass (timers and fetches
/// run; virtual time waits for pending network), then dumps the DOM and, with `screenshot`,
/// saves a PNG of a `width`x`height` window.
async fn browse(
    url: &str,
    budget_ms: u32,
    window: (u32, u32),
    screenshot: Option<&Path>,
) -> Browsed {
    assert!(
        Path::new(CHROMIUM).exists(),
        "chromium not found: run scripts/test.sh or apt-get install chromium"
    );
    let _one = ONE_BROWSER.lock().await;
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(format!("--virtual-time-budget={budget_ms}"))
    .arg(format!("--window-size={},{}", window.0, window.1))
    .arg("--dump-dom");
    if let Some(path) = screenshot {
        let _ = std::fs::remove_file(path);
        cmd.arg(format!("--screenshot={}", path.display()));
    }
    cmd.arg(url)
        .env("HOME", profile.path())
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("chromium did not finish within 60 s")
        .expect("cannot run chromium");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "chromium failed: {}\n{stderr}",
        out.status
    );
    // Numbers and units are joined by no-break spaces; compare them as plain spaces.
    let dom = String::from_utf8_lossy(&out.stdout).replace("&nbsp;", " ");
    assert!(dom.contains("</html>"), "chromium dumped no DOM:\n{stderr}");
    if let Some(path) = screenshot {
        let png = std::fs::read(path)
            .unwrap_or_else(|e| panic!("no screenshot at {}: {e}\n{stderr}", path.display()));
        assert!(
            png.starts_with(b"\x89PNG"),
            "{} is not a PNG",
            path.display()
        );
    }
    let console = console_lines(&stderr);
    Browsed {
        dom,
        console,
        stderr,
    }
}

fn console_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_owned)
        .collect()
}

fn assert_quiet(b: &Browsed, what: &str) {
    assert!(
        b.console.is_empty(),
        "{what}: the page wrote to the console:\n{}",
        b.console.join("\n")
    );
}

/// `target/<name>`, next to Cargo's own output (whatever the target directory is).
fn target_file(name: &str) -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join(name)
}

/// A page served at `/` and an API handler at `/api/stats`; the origin records every request.
async fn site<F>(page: String, api: F) -> Origin
where
    F: Fn(&Request<Incoming>, usize) -> Response<Body> + Send + Sync + 'static,
{
    let page = Arc::new(page);
    let api = Arc::new(api);
    let calls = Arc::new(AtomicUsize::new(0));
    Origin::start(move |req| {
        let (page, api, calls) = (page.clone(), api.clone(), calls.clone());
        async move {
            match req.uri().path() {
                "/" => Response::builder()
                    .header("content-type", "text/html; charset=utf-8")
                    .header("cache-control", "no-store")
                    .body(full(page.as_str().to_owned()))
                    .unwrap(),
                "/api/stats" => api(&req, calls.fetch_add(1, Ordering::SeqCst)),
                _ => respond(404, "not found"),
            }
        }
    })
    .await
}

fn json(body: &'static str) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(full(body))
        .unwrap()
}

fn fixture(_: &Request<Incoming>, _: usize) -> Response<Body> {
    json(FIXTURE)
}

/// The page with `script` run after its own.
fn with_script(script: &str) -> String {
    assert_eq!(PAGE.matches("</body>").count(), 1);
    PAGE.replace("</body>", &format!("<script>{script}</script>\n</body>"))
}

/// Writes the page's layout width and viewport width to `<html data-probe="W/V">` just before
/// the budget runs out, so the dump shows whether anything overflows sideways.
const WIDTH_PROBE: &str = "setTimeout(() => { const e = document.documentElement; \
     e.dataset.probe = e.scrollWidth + '/' + e.clientWidth; }, 4500);";

fn api_calls(o: &Origin) -> Vec<Option<String>> {
    o.seen()
        .into_iter()
        .filter(|s| s.uri.path() == "/api/stats")
        .map(|s| {
            s.headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .collect()
}

/// The text of `<tag ... id="id" ...>` up to the first `end` after it.
fn part<'a>(dom: &'a str, id: &str, end: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the DOM"));
    let rest = &dom[start..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}

/// The opening tag of the element with `id`.
fn tag<'a>(dom: &'a str, id: &str) -> &'a str {
    part(dom, id, ">")
}

/// The points in the `d` of the first `<path class="{class}">`.
fn path_points(dom: &str, class: &str) -> usize {
    let re = Regex::new(&format!(r#"<path class="{class}" d="M([^"]*)""#)).unwrap();
    let caps = re
        .captures(dom)
        .unwrap_or_else(|| panic!("no <path class=\"{class}\"> in the DOM"));
    caps[1].split('L').count()
}

fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let open = part(dom, id, "</");
    open.split_once('>').map_or("", |(_, t)| t)
}

fn probe(dom: &str) -> (u32, u32) {
    let re = Regex::new(r#"data-probe="(\d+)/(\d+)""#).unwrap();
    let c = re.captures(dom).expect("the width probe did not run");
    (c[1].parse().unwrap(), c[2].parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_the_stats() {
    let site = site(with_script(WIDTH_PROBE), fixture).await;
    let url = site.url("/");
    let shot = target_file("status-page.png");
    let b = browse(&url, 5000, (1280, 1000), Some(&shot)).await;
    assert_quiet(&b, "fixture at 1280 px");
    let dom = &b.dom;

    // Refreshes: the first fetch at load, the next after 3 s.
    assert!(
        api_calls(&site).len() >= 2,
        "api/stats fetched {} times in 5 s",
        api_calls(&site).len()
    );

    // Header: state, version, uptime; no banner, no token form.
    assert!(
        tag(dom, "state").contains("pill ok"),
        "{}",
        tag(dom, "state")
    );
    assert_eq!(text_of(dom, "state"), "Ready");
    assert_eq!(text_of(dom, "version"), "0.1.0");
    assert_eq!(text_of(dom, "uptime"), "3d 4h");
    assert!(
        tag(dom, "banner").contains("hidden"),
        "{}",
        tag(dom, "banner")
    );
    assert!(tag(dom, "auth").contains("hidden"), "{}", tag(dom, "auth"));
    assert!(
        text_of(dom, "live-text").starts_with("live"),
        "{}",
        text_of(dom, "live-text")
    );

    // Key numbers, formatted.
    assert_eq!(text_of(dom, "k-hit"), "74.2%");
    assert!(
        part(dom, "k-saved", "</div>").contains("4.86<span class=\"unit\">GiB"),
        "{}",
        part(dom, "k-saved", "</div>")
    );
    assert!(part(dom, "k-rps", "</div>").contains("9.5<span class=\"unit\">req/s"));
    assert!(part(dom, "k-served", "</div>").contains("25.9<span class=\"unit\">GiB"));
    assert_eq!(text_of(dom, "k-served-sub"), "75.9% of it from the cache");
    assert_eq!(text_of(dom, "k-conn"), "14");

    // Charts drawn from the data: one point per minute / second.
    let hit = part(dom, "chart-hit", "</svg>");
    assert_eq!(path_points(hit, "hit line"), 60, "hit-ratio line");
    assert!(hit.contains("class=\"ref\""), "no hour-average line");
    let saved = part(dom, "chart-saved", "</svg>");
    assert_eq!(saved.matches("class=\"bar-saved\"").count(), 60);
    assert_eq!(saved.matches("class=\"bar-total\"").count(), 60);
    assert!(saved.contains(">500 MiB<"), "bytes axis: {saved}");
    let rps = part(dom, "chart-rps", "</svg>");
    assert_eq!(path_points(rps, "rps line"), 60, "requests/s line");

    // Cache tiers against their bounds.
    let cache = part(dom, "cache-card", "</section>");
    assert!(cache.contains("<b>195 MiB</b> of 256 MiB"), "{cache}");
    assert!(cache.contains("<b>6.8 GiB</b> of 10 GiB"), "{cache}");
    assert!(cache.contains("aria-valuenow=\"76\""), "{cache}");
    assert!(cache.contains("1,204 evicted"), "{cache}");

    // Top hosts: ten rows each, in the API's order.
    let by_bytes = part(dom, "top-bytes", "</table>");
    let by_requests = part(dom, "top-requests", "</table>");
    assert_eq!(by_bytes.matches("<td class=\"host\"").count(), 10);
    assert_eq!(by_requests.matches("<td class=\"host\"").count(), 10);
    assert!(
        by_bytes.find("registry.npm.example").unwrap()
            < by_bytes.find("files.pypi.example").unwrap()
    );
    assert!(
        by_requests.find("crates.mirror.example").unwrap()
            < by_requests.find("files.pypi.example").unwrap()
    );
    assert!(by_bytes.contains("9.03 GiB"), "{by_bytes}");

    // Parents with their state, outcomes, errors.
    let parents = part(dom, "parents", "</ul>");
    assert!(parents.contains("<span class=\"badge up\">up</span><span class=\"name\" title=\"proxy.corp.example:8080\">"), "{parents}");
    assert!(
        parents.contains("<span class=\"badge down\">down</span>"),
        "{parents}"
    );
    assert!(parents.contains("down for 2m 05s"), "{parents}");
    assert!(part(dom, "results", "</table>").contains("TCP_MEM_HIT"));
    let errors = part(dom, "errors", "</ul>");
    assert_eq!(
        errors.matches("<span class=\"label\">").count(),
        6,
        "{errors}"
    );
    assert!(
        errors.contains(">ERR_DNS_FAIL<") && errors.contains(">502<"),
        "{errors}"
    );
    assert!(errors.contains("41s ago"), "{errors}");
    assert!(
        errors.contains("cannot resolve host mirror.broken.invalid"),
        "{errors}"
    );

    let (scroll, view) = probe(dom);
    assert!(
        scroll <= view,
        "the page is wider ({scroll}px) than the window ({view}px)"
    );

    // A phone-sized window: same data, nothing wider than the screen.
    let narrow = browse(
        &url,
        5000,
        (390, 1400),
        Some(&target_file("status-page-narrow.png")),
    )
    .await;
    assert_quiet(&narrow, "fixture at 390 px");
    assert_eq!(text_of(&narrow.dom, "k-hit"), "74.2%");
    let (scroll, view) = probe(&narrow.dom);
    assert!(
        scroll <= view,
        "at 390 px the page is {scroll}px wide (viewport {view}px)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_errors_are_detected() {
    // A render failure is caught by the page and reported with console.error ...
    let broken = PAGE.replacen(
        "    renderKpis(d);\n",
        "    renderKpis(d);\n    d.no_such_section.boom();\n",
        1,
    );
    assert_ne!(broken, PAGE, "the page changed: update the injected fault");
    let site_a = site(broken, fixture).await;
    let b = browse(&site_a.url("/"), 2000, (1280, 800), None).await;
    assert!(
        b.console
            .iter()
            .any(|l| l.contains("could not render the stats")),
        "console.error not detected; stderr:\n{}",
        b.stderr
    );
    // ... and an uncaught exception shows up as well.
    let site_b = site(with_script("window.noSuchFunction();"), fixture).await;
    let b = browse(&site_b.url("/"), 2000, (1280, 800), None).await;
    assert!(
        b.console.iter().any(|l| l.contains("Uncaught TypeError")),
        "uncaught exception not detected; stderr:\n{}",
        b.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_cases_render_without_errors() {
    // Cache off, no parents, no traffic, no errors, not ready: every section says so.
    let mut v: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    v["cache"] = serde_json::json!({"enabled": false});
    v["parents"] = serde_json::json!([]);
    v["history"] = serde_json::json!([]);
    v["recent"] = serde_json::json!([]);
    v["errors"] = serde_json::json!([]);
    v["top_hosts_by_bytes"] = serde_json::json!([]);
    v["top_hosts_by_requests"] = serde_json::json!([]);
    v["results"] = serde_json::json!({});
    v["hit_ratio_hour"] = serde_json::Value::Null;
    v["ready"] = serde_json::json!(false);
    let body: &'static str = Box::leak(v.to_string().into_boxed_str());
    let s = site(PAGE.to_owned(), move |_, _| json(body)).await;
    let b = browse(&s.url("/"), 1000, (1280, 1000), None).await;
    assert_quiet(&b, "empty stats");
    let dom = &b.dom;
    assert_eq!(text_of(dom, "state"), "Not ready");
    assert_eq!(text_of(dom, "k-hit"), "—");
    assert!(part(dom, "cache", "</section>").contains("Cache off"));
    assert!(part(dom, "parents", "</div></div>").contains("direct (no parent proxy)"));
    assert!(part(dom, "chart-hit", "</svg>").contains("No cacheable requests in the last hour"));
    assert!(part(dom, "chart-saved", "</svg>").contains("No traffic in the last hour"));
    assert!(part(dom, "top-bytes", "</table>").contains("No traffic yet"));
    assert!(part(dom, "errors", "</ul>").contains("No errors recorded."));

    // A draining proxy with minutes missing from the history (no traffic then): a line per
    // run of minutes, nothing drawn across the gap.
    let mut v: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    v["draining"] = serde_json::json!(true);
    // Strings from the network are text, never markup.
    v["errors"][0]["message"] = serde_json::json!("<img src=x onerror=\"console.log('xss')\">");
    v["top_hosts_by_bytes"][0]["host"] = serde_json::json!("<b>evil</b>");
    let h = v["history"].as_array_mut().unwrap();
    h.drain(20..30);
    // started_at + uptime one second before the newest minute (both are rounded down on the
    // server): the newest minute must still be on the chart.
    let newest = h.last().unwrap()["t"].as_u64().unwrap();
    v["uptime_seconds"] = serde_json::json!(newest - 1 - v["started_at"].as_u64().unwrap());
    let body: &'static str = Box::leak(v.to_string().into_boxed_str());
    let s = site(PAGE.to_owned(), move |_, _| json(body)).await;
    let b = browse(&s.url("/"), 1000, (1280, 1000), None).await;
    assert_quiet(&b, "history with a gap");
    assert_eq!(text_of(&b.dom, "state"), "Draining");
    assert!(
        !b.dom.contains("<img src=\"x\"") && !b.dom.contains("<b>evil"),
        "API text became markup"
    );
    assert!(
        b.dom.contains("&lt;img src=x onerror="),
        "the message is not shown as text"
    );
    assert!(
        b.dom.contains("&lt;b&gt;evil&lt;/b&gt;"),
        "the host is not shown as text"
    );
    let hit = part(&b.dom, "chart-hit", "</svg>");
    assert_eq!(hit.matches("<path class=\"hit line\"").count(), 2, "{hit}");
    assert_eq!(
        part(&b.dom, "chart-saved", "</svg>")
            .matches("class=\"bar-saved\"")
            .count(),
        50
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_form_sends_a_bearer_token() {
    const TOKEN: &str = "s3cret-token";
    let api = |req: &Request<Incoming>, _: usize| {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if auth == Some("Bearer s3cret-token") {
            json(FIXTURE)
        } else {
            respond(401, "admin token required")
        }
    };

    // Without a token: the form, and no polling while it waits.
    let s = site(PAGE.to_owned(), api).await;
    let b = browse(
        &s.url("/"),
        5000,
        (1280, 800),
        Some(&target_file("status-page-token.png")),
    )
    .await;
    assert_quiet(&b, "locked");
    assert!(
        !tag(&b.dom, "auth").contains("hidden"),
        "no token form: {}",
        tag(&b.dom, "auth")
    );
    assert!(
        tag(&b.dom, "dash").contains("hidden"),
        "{}",
        tag(&b.dom, "dash")
    );
    assert!(tag(&b.dom, "auth-err").contains("hidden"));
    assert_eq!(
        api_calls(&s),
        vec![None],
        "the page kept calling the API without a token"
    );

    // A person pastes a wrong token, sees it rejected, then pastes the right one.
    let typing = format!(
        "let step = 0; const t = setInterval(() => {{ \
           const auth = document.getElementById('auth'), err = document.getElementById('auth-err'); \
           if (auth.hidden) return; \
           if (step === 0) {{ step = 1; document.getElementById('token').value = 'wrong'; document.getElementById('auth-form').requestSubmit(); }} \
           else if (step === 1 && !err.hidden) {{ step = 2; document.documentElement.dataset.rejected = err.textContent; \
             document.getElementById('token').value = '  {TOKEN} '; document.getElementById('auth-form').requestSubmit(); clearInterval(t); }} \
         }}, 100);"
    );
    let s = site(with_script(&typing), api).await;
    let b = browse(&s.url("/"), 5000, (1280, 800), None).await;
    assert_quiet(&b, "token entry");
    let calls = api_calls(&s);
    assert_eq!(calls[0], None);
    assert_eq!(calls[1].as_deref(), Some("Bearer wrong"));
    assert!(calls.len() >= 4, "no polling after unlocking: {calls:?}");
    assert!(
        calls[2..]
            .iter()
            .all(|c| c.as_deref() == Some("Bearer s3cret-token")),
        "{calls:?}"
    );
    assert!(
        b.dom
            .contains("data-rejected=\"That token was not accepted."),
        "the rejection was not shown"
    );
    assert!(tag(&b.dom, "auth").contains("hidden"));
    assert!(!tag(&b.dom, "dash").contains("hidden"));
    assert_eq!(text_of(&b.dom, "k-hit"), "74.2%");
    assert!(
        !tag(&b.dom, "forget").contains("hidden"),
        "no way to forget the token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnected_banner_and_retry() {
    // The first answer is good, then the API fails: the last data stays, greyed, under a
    // banner, and the page keeps retrying.
    let s = site(PAGE.to_owned(), |_, n| {
        if n == 0 {
            json(FIXTURE)
        } else {
            respond(503, "down for maintenance")
        }
    })
    .await;
    let b = browse(
        &s.url("/"),
        8000,
        (1280, 800),
        Some(&target_file("status-page-disconnected.png")),
    )
    .await;
    assert_quiet(&b, "disconnected");
    assert!(
        !tag(&b.dom, "banner").contains("hidden"),
        "no banner: {}",
        tag(&b.dom, "banner")
    );
    let banner = text_of(&b.dom, "banner-text");
    assert!(
        banner.contains("HTTP 503") && banner.contains("Retrying"),
        "{banner}"
    );
    assert_eq!(text_of(&b.dom, "state"), "Unreachable");
    assert_eq!(text_of(&b.dom, "live-text"), "disconnected");
    assert!(
        tag(&b.dom, "dash").contains("stale"),
        "{}",
        tag(&b.dom, "dash")
    );
    assert_eq!(
        text_of(&b.dom, "k-hit"),
        "74.2%",
        "the last data was dropped"
    );
    assert!(
        api_calls(&s).len() >= 3,
        "stopped retrying after {} calls",
        api_calls(&s).len()
    );

    // Not JSON at all (e.g. something else on the port): the same banner, a clear reason.
    let s = site(PAGE.to_owned(), |_, _| respond(200, "<html>hello</html>")).await;
    let b = browse(&s.url("/"), 1000, (1280, 800), None).await;
    assert_quiet(&b, "not JSON");
    assert!(
        text_of(&b.dom, "banner-text").contains("not valid JSON"),
        "{}",
        text_of(&b.dom, "banner-text")
    );
}

/// An origin whose answers the cache keeps for ten minutes: 32 KiB per URL.
async fn cacheable_origin() -> Origin {
    Origin::start(|_req| async {
        Response::builder()
            .header("content-type", "application/octet-stream")
            .header("cache-control", "max-age=600")
            .body(full(vec![b'x'; 32 * 1024]))
            .unwrap()
    })
    .await
}

/// Polls the admin API (bounded) until it has counted `n` requests.
async fn wait_for_requests(admin: &str, token: Option<&str>, n: u64) -> serde_json::Value {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut req = client.get(format!("{admin}/api/stats"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        if v["requests_total"].as_u64().unwrap_or(0) >= n {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the admin API counted {} of {n} requests within 10 s",
            v["requests_total"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_against_live_admin() {
    let origin = cacheable_origin().await;
    let p = TestProxy::start(opts()).await;
    let c = p.client();
    // One miss and four hits on /a, a miss on /b, and a failure (nothing listens on port 1).
    for path in ["/a", "/a", "/a", "/a", "/a", "/b"] {
        let r = c.get(origin.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), 32 * 1024);
    }
    let r = c
        .get("http://127.0.0.1:1/unreachable")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let stats = wait_for_requests(&p.admin_url(), None, 7).await;
    assert_eq!(origin.hits(), 2, "the cache did not serve the repeats");

    let b = browse(
        &format!("{}/", p.admin_url()),
        3000,
        (1280, 1000),
        Some(&target_file("status-page-live.png")),
    )
    .await;
    assert_quiet(&b, "live admin");
    let dom = &b.dom;
    assert_eq!(text_of(dom, "state"), "Ready");
    assert_eq!(text_of(dom, "version"), env!("CARGO_PKG_VERSION"));
    assert!(tag(dom, "banner").contains("hidden"));
    // 4 hits of 6 cacheable requests (the failed one is not cacheable).
    let ratio = stats["hit_ratio_hour"].as_f64().expect("no hit ratio");
    assert!((ratio - 4.0 / 6.0).abs() < 1e-9, "hit_ratio_hour {ratio}");
    assert_eq!(text_of(dom, "k-hit"), "66.7%");
    // The hour's chart has this minute (a dot, or a line if the traffic spanned two minutes).
    let hit = part(dom, "chart-hit", "</svg>");
    assert!(
        hit.contains("class=\"hit dot\"") || hit.contains("class=\"hit line\""),
        "{hit}"
    );
    assert!(part(dom, "chart-saved", "</svg>").contains("class=\"bar-saved\""));
    assert_eq!(
        path_points(part(dom, "chart-rps", "</svg>"), "rps line"),
        60
    );
    let rps = part(dom, "chart-rps", "</svg>");
    assert!(!rps.contains("No requests"), "{rps}");
    // Hosts, cache, outcomes, parents, errors from the real traffic.
    let by_bytes = part(dom, "top-bytes", "</table>");
    assert!(by_bytes.contains("title=\"127.0.0.1\""), "{by_bytes}");
    // 6 × 32 KiB of bodies, plus headers and the 502 page: 7 requests for this host.
    let kib = Regex::new(r#"<td class="num key">(\d+) KiB</td><td class="num">7</td>"#)
        .unwrap()
        .captures(by_bytes)
        .unwrap_or_else(|| panic!("{by_bytes}"))[1]
        .parse::<u32>()
        .unwrap();
    assert!((192..200).contains(&kib), "{kib} KiB");
    let cache = part(dom, "cache-card", "</section>");
    assert!(
        cache.contains("aria-label=\"Memory cache fill\""),
        "{cache}"
    );
    assert!(!cache.contains("Cache off"), "{cache}");
    let results = part(dom, "results", "</table>");
    assert!(
        results.contains("TCP_MISS") && results.contains("HIT"),
        "{results}"
    );
    assert!(part(dom, "parents", "</div></div>").contains("direct (no parent proxy)"));
    let errors = part(dom, "errors", "</ul>");
    assert!(
        errors.contains(">ERR_CONNECT_FAIL<") && errors.contains(">502<"),
        "{errors}"
    );
    assert!(
        errors.contains("http://127.0.0.1:1/unreachable"),
        "{errors}"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_admin_with_token_shows_the_token_form() {
    // The page itself must load without the token (it holds no data), so that it can ask for
    // one; the API behind it answers 401 until the page sends `Authorization: Bearer`.
    let o = cuttle::config::Options {
        admin_token: Some("live-s3cret".into()),
        ..opts()
    };
    let p = TestProxy::start(o).await;
    let page = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/", p.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        page.status(),
        200,
        "GET / on the admin port needs the token: the page cannot ask for it"
    );
    let b = browse(&format!("{}/", p.admin_url()), 2000, (1280, 800), None).await;
    assert_quiet(&b, "live admin, locked");
    assert!(
        !tag(&b.dom, "auth").contains("hidden"),
        "no token form: {}",
        tag(&b.dom, "auth")
    );
    assert!(tag(&b.dom, "dash").contains("hidden"));
    p.shutdown().await;
}

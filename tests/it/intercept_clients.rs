//! Real clients through TLS interception, with no internet: npm against an npm-style
//! registry, pip against a PEP 503 simple index, cargo against a sparse registry, curl and the
//! JDK's HTTP client against a Maven-style repository, all served by an in-process HTTPS
//! origin on 127.0.0.1 with its own test CA. Each client trusts only cuttle's CA (fetched from
//! `GET /ca.pem`) the way the README tells it to; cuttle trusts the origin's CA through
//! `upstream_ca`. Also: the Squid parent, HTTP/2 to the client, `cuttle ca init`/`export` and
//! the CA's Name Constraints, `--no-intercept`, and reloading the intercept list.
//!
//! Every package client runs three times: cold; in a clean directory with a clean client
//! cache (served from cuttle's cache, metadata only revalidated); with the origin stopped.
use crate::support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::support::tls::{TlsOrigin, intercepting};
use crate::support::*;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

/// A client command gets this long before the test fails (a stuck client must not hang CI).
const CLIENT_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct File {
    content_type: &'static str,
    body: Bytes,
    cache_control: &'static str,
}

/// A static HTTPS file server: strong ETags, `If-None-Match` answered with 304, the file's
/// `Cache-Control` (none when empty), and a record of every request as `METHOD /path STATUS`.
struct Registry {
    origin: TlsOrigin,
    files: Arc<RwLock<HashMap<String, File>>>,
    log: Arc<Mutex<Vec<String>>>,
}

fn etag(body: &[u8]) -> String {
    use sha2::Digest;
    format!("\"{}\"", &hex::encode(sha2::Sha256::digest(body))[..20])
}

impl Registry {
    async fn start() -> Registry {
        let files: Arc<RwLock<HashMap<String, File>>> = Arc::default();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (f2, l2) = (files.clone(), log.clone());
        let origin = TlsOrigin::start(move |req| {
            let (files, log) = (f2.clone(), l2.clone());
            async move {
                let path = req.uri().path().to_string();
                let file = files.read().get(&path).cloned();
                let resp = match file {
                    None => respond(404, "not found"),
                    Some(f) => {
                        let tag = etag(&f.body);
                        let matches = req
                            .headers()
                            .get(http::header::IF_NONE_MATCH)
                            .and_then(|v| v.to_str().ok())
                            .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
                        let mut b = http::Response::builder().header("etag", &tag);
                        if !f.cache_control.is_empty() {
                            b = b.header("cache-control", f.cache_control);
                        }
                        if matches {
                            b.status(304).body(cuttle::http::body::empty()).unwrap()
                        } else {
                            b.header("content-type", f.content_type)
                                .body(cuttle::http::body::full(f.body))
                                .unwrap()
                        }
                    }
                };
                log.lock().push(format!(
                    "{} {path} {}",
                    req.method(),
                    resp.status().as_u16()
                ));
                resp
            }
        })
        .await;
        Registry { origin, files, log }
    }

    fn put(
        &self,
        path: &str,
        content_type: &'static str,
        cache_control: &'static str,
        body: impl Into<Bytes>,
    ) {
        self.files.write().insert(
            path.to_string(),
            File {
                content_type,
                body: body.into(),
                cache_control,
            },
        );
    }

    /// Every request so far, as `METHOD /path STATUS`.
    fn requests(&self) -> Vec<String> {
        self.log.lock().clone()
    }
}

/// Runs a client to completion (killed after `CLIENT_DEADLINE`).
async fn run(cmd: tokio::process::Command) -> Ran {
    run_client(cmd, CLIENT_DEADLINE).await
}

// ---------------------------------------------------------------------------------------
// npm

const NPM_PKG: &str = "cuttle-test-pkg";
const NPM_INDEX_JS: &str = "module.exports = 'hello from cuttle-test-pkg';\n";

/// Makes the package tarball with `npm pack`; returns (tarball, integrity, shasum).
async fn npm_pack(dir: &Path) -> (Vec<u8>, String, String) {
    let src = dir.join("pkg-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("package.json"),
        format!(
            r#"{{"name":"{NPM_PKG}","version":"1.0.0","main":"index.js","license":"MIT","description":"cuttle test package"}}"#
        ),
    )
    .unwrap();
    std::fs::write(src.join("index.js"), NPM_INDEX_JS).unwrap();
    let mut c = package_client("npm");
    c.args(["pack", "--json", "--pack-destination"])
        .arg(dir)
        .arg("--cache")
        .arg(dir.join("pack-cache"))
        .arg("--userconfig")
        .arg(dir.join("empty-npmrc"))
        .env("HOME", dir)
        .current_dir(&src);
    let r = run(c).await;
    assert!(r.ok, "npm pack failed: {}\n{}", r.stdout, r.stderr);
    let json: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let info = &json[0];
    let tgz = std::fs::read(dir.join(info["filename"].as_str().unwrap())).unwrap();
    (
        tgz,
        info["integrity"].as_str().unwrap().to_string(),
        info["shasum"].as_str().unwrap().to_string(),
    )
}

/// `npm install cuttle-test-pkg` in a new project directory with a new npm cache, through
/// the proxy, trusting cuttle's CA as `trust` says.
/// How npm is told to trust cuttle's CA.
#[derive(Clone, Copy)]
enum Trust {
    /// `NODE_EXTRA_CA_CERTS=cuttle-ca.pem` (added to Node's bundled roots).
    ExtraCaCerts,
    /// `--cafile cuttle-ca.pem` (`npm config set cafile`; replaces the roots for npm).
    Cafile,
}

async fn npm_install(
    work: &Path,
    n: usize,
    registry: &str,
    proxy: &TestProxy,
    ca: &Path,
    trust: Trust,
) -> Ran {
    let project = work.join(format!("project{n}"));
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("package.json"),
        r#"{"name":"consumer","version":"1.0.0","private":true}"#,
    )
    .unwrap();
    let (npmrc, global) = (work.join("user-npmrc"), work.join("global-npmrc"));
    std::fs::write(&npmrc, "").unwrap();
    std::fs::write(&global, "").unwrap();
    let mut c = package_client("npm");
    c.args(["install", NPM_PKG, "--registry", registry])
        .args(["--proxy", &proxy.url(), "--https-proxy", &proxy.url()])
        .arg("--cache")
        .arg(work.join(format!("npm-cache{n}")))
        // This machine's global npmrc sets `cafile` (which would replace NODE_EXTRA_CA_CERTS):
        // neither the user's nor the global configuration takes part.
        .arg("--userconfig")
        .arg(&npmrc)
        .arg("--globalconfig")
        .arg(&global)
        .args([
            "--no-audit",
            "--no-fund",
            "--prefer-online",
            "--no-update-notifier",
            "--loglevel",
            "http",
            // A failure shows at once instead of after npm's retry back-off (10 s and more).
            "--fetch-retries",
            "0",
        ])
        .env("HOME", work)
        .current_dir(&project);
    match trust {
        Trust::ExtraCaCerts => c.env("NODE_EXTRA_CA_CERTS", ca),
        Trust::Cafile => c.arg("--cafile").arg(ca),
    };
    let r = run(c).await;
    if r.ok {
        let installed = project.join("node_modules").join(NPM_PKG).join("index.js");
        assert_eq!(
            std::fs::read_to_string(&installed).unwrap_or_default(),
            NPM_INDEX_JS,
            "npm said it installed {NPM_PKG}, but {} is not the packed file",
            installed.display()
        );
    }
    r
}

/// The `n`-th access-log line (1-based) containing `needle`, waiting up to 10 s for it
/// (a CONNECT line is written when its tunnel closes, which can be after the client exits).
async fn nth_log(p: &TestProxy, needle: &str, n: usize) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<String> = p
            .all_logs()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect();
        if lines.len() >= n {
            return lines[n - 1].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {n}th access-log line with {needle:?}:\n{}",
            p.all_logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The built-in `npm-packument` rule (revalidate on every use) only matches `registry.*`
/// hosts; the same rule for this test origin on `localhost`, so the packument behaves as
/// the public npm registry's does through cuttle.
fn packument_rule() -> cuttle::cache::rules::RuleConfig {
    cuttle::cache::rules::RuleConfig {
        name: Some("test-npm-packument".into()),
        pattern: r"^https://localhost:\d+/[^/@]+/?$".into(),
        max: Some("0s".into()),
        vary: vec!["accept".into()],
        ..Default::default()
    }
}

/// npm through interception. What "served from cache" means for npm: the packument is mutable
/// metadata (a new version may appear at any time), so cuttle revalidates it with the origin
/// on every use, as it does for the public npm registry; the origin answers 304 and the body comes
/// from the cache. The tarball is immutable and never goes back to the origin. npm itself,
/// with an empty npm cache, sends no conditionals and no `Cache-Control` of its own.
#[tokio::test]
async fn npm_install_is_served_from_cache_and_offline() {
    let work = tempfile::tempdir().unwrap();
    let (tgz, integrity, shasum) = npm_pack(work.path()).await;
    let reg = Registry::start().await;
    let packument_path = format!("/{NPM_PKG}");
    let tarball_path = format!("/{NPM_PKG}/-/{NPM_PKG}-1.0.0.tgz");
    let packument = serde_json::json!({
        "name": NPM_PKG,
        "dist-tags": {"latest": "1.0.0"},
        "versions": {"1.0.0": {
            "name": NPM_PKG,
            "version": "1.0.0",
            "main": "index.js",
            "dist": {
                "tarball": reg.origin.url(&tarball_path),
                "integrity": integrity,
                "shasum": shasum,
            },
        }},
    });
    // Cache headers as the public npm registry sends them.
    reg.put(
        &packument_path,
        "application/json",
        "public, max-age=300",
        packument.to_string(),
    );
    reg.put(
        &tarball_path,
        "application/octet-stream",
        "public, max-age=300",
        tgz,
    );
    let mut o = intercepting(&reg.origin);
    o.cache_rule = Some(vec![packument_rule()]);
    let p = TestProxy::start(o).await;
    let ca = proxy_ca(&p, work.path()).await;
    let registry = reg.origin.url("/");
    let packument_url = reg.origin.url(&packument_path);
    let tarball_url = reg.origin.url(&tarball_path);
    let origin_host = format!("localhost:{}", reg.origin.addr.port());

    // 1. Cold: both fetched from the origin through the intercepted tunnel.
    let r = npm_install(work.path(), 1, &registry, &p, &ca, Trust::ExtraCaCerts).await;
    r.expect_ok("first npm install");
    assert_eq!(
        reg.requests(),
        [
            format!("GET {packument_path} 200"),
            format!("GET {tarball_path} 200")
        ]
    );
    let line = nth_log(&p, &format!("GET {packument_url} "), 1).await;
    assert!(line.contains("TCP_MISS/200"), "{line}");
    let line = nth_log(&p, &format!("GET {tarball_url} "), 1).await;
    assert!(line.contains("TCP_MISS/200"), "{line}");
    let line = nth_log(&p, "CONNECT localhost:", 1).await;
    assert!(line.contains("TCP_BUMP/200"), "{line}");

    // 2. A clean project with an empty npm cache, trusting cuttle through npm's `cafile`:
    // the packument, mutable metadata, is revalidated (one conditional request, answered
    // 304); the tarball, immutable, comes from cuttle's cache without reaching the origin.
    let r = npm_install(work.path(), 2, &registry, &p, &ca, Trust::Cafile).await;
    r.expect_ok("second npm install");
    assert_eq!(
        reg.requests(),
        [
            format!("GET {packument_path} 200"),
            format!("GET {tarball_path} 200"),
            format!("GET {packument_path} 304"),
        ],
        "the second install may only revalidate the packument"
    );
    let line = nth_log(&p, &format!("GET {packument_url} "), 2).await;
    assert!(line.contains("TCP_REFRESH_UNMODIFIED/200"), "{line}");
    let line = nth_log(&p, &format!("GET {tarball_url} "), 2).await;
    assert!(line.contains("HIT/200"), "{line}");

    // 3. Origin gone: the packument is served stale (revalidation failed), the tarball from
    // the cache, and npm installs.
    drop(reg);
    let r = npm_install(work.path(), 3, &registry, &p, &ca, Trust::ExtraCaCerts).await;
    r.expect_ok("offline npm install");
    let line = nth_log(&p, &format!("GET {packument_url} "), 3).await;
    assert!(line.contains("TCP_STALE_IF_ERROR/200"), "{line}");
    let line = nth_log(&p, &format!("GET {tarball_url} "), 3).await;
    assert!(line.contains("HIT/200"), "{line}");

    // npm reached nothing but the test registry (no public registry, no update check).
    nth_log(&p, "CONNECT localhost:", 3).await;
    for l in p.all_logs() {
        assert!(l.contains(&origin_host), "unexpected request: {l}");
    }
    p.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// pip

const WHEEL: &str = "cuttle_test_pkg-1.0.0-py3-none-any.whl";
const PY_INIT: &str = "GREETING = 'hello from cuttle-test-pkg'\n";

/// Builds a minimal valid wheel with python's zipfile (no new crate for zip files).
const BUILD_WHEEL: &str = r#"
import base64, hashlib, sys, zipfile
out, init = sys.argv[1], sys.argv[2]
dist = "cuttle_test_pkg-1.0.0.dist-info"
files = {
    "cuttle_test_pkg/__init__.py": init.encode(),
    dist + "/METADATA": b"Metadata-Version: 2.1\nName: cuttle-test-pkg\nVersion: 1.0.0\n",
    dist + "/WHEEL": b"Wheel-Version: 1.0\nGenerator: cuttle-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
def digest(b):
    return base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()
record = "".join("%s,sha256=%s,%d\n" % (n, digest(b), len(b)) for n, b in files.items())
record += dist + "/RECORD,,\n"
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for n, b in files.items():
        z.writestr(n, b)
    z.writestr(dist + "/RECORD", record)
"#;

async fn build_wheel(dir: &Path) -> Vec<u8> {
    let out = dir.join(WHEEL);
    let mut c = package_client("python3");
    c.arg("-c").arg(BUILD_WHEEL).arg(&out).arg(PY_INIT);
    let r = run(c).await;
    assert!(r.ok, "building the wheel failed: {}{}", r.stdout, r.stderr);
    std::fs::read(out).unwrap()
}

/// How pip is told to trust cuttle's CA.
#[derive(Clone, Copy)]
enum PipTrust {
    /// `--cert cuttle-ca.pem`
    Flag,
    /// `PIP_CERT=cuttle-ca.pem`
    Env,
}

/// `pip install cuttle-test-pkg` into a new target directory, without pip's own cache.
async fn pip_install(
    work: &Path,
    n: usize,
    index: &str,
    proxy: &TestProxy,
    ca: &Path,
    trust: PipTrust,
) -> Ran {
    let target = work.join(format!("site{n}"));
    let mut c = package_client("python3");
    c.args([
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        "--disable-pip-version-check",
    ])
    .args(["--index-url", index, "--proxy", &proxy.url()])
    .args(["--retries", "0", "--timeout", "20", "--no-input"])
    .arg("--target")
    .arg(&target)
    .arg("cuttle-test-pkg")
    // No configuration file of this machine (/etc/pip.conf sets `cert`).
    .env("PIP_CONFIG_FILE", "/dev/null")
    .env("HOME", work);
    match trust {
        PipTrust::Flag => c.arg("--cert").arg(ca),
        PipTrust::Env => c.env("PIP_CERT", ca),
    };
    let r = run(c).await;
    if r.ok {
        let installed = target.join("cuttle_test_pkg").join("__init__.py");
        assert_eq!(
            std::fs::read_to_string(&installed).unwrap_or_default(),
            PY_INIT,
            "pip said it installed cuttle-test-pkg, but {} is not the wheel's file",
            installed.display()
        );
    }
    r
}

/// pip through interception: the `/simple/` page follows the metadata policy (the origin's
/// `max-age=600` here; pip's own `max-age=0` does not send it upstream), the wheel under
/// `/packages/` is immutable.
#[tokio::test]
async fn pip_install_is_served_from_cache_and_offline() {
    use sha2::Digest;
    let work = tempfile::tempdir().unwrap();
    let wheel = build_wheel(work.path()).await;
    let reg = Registry::start().await;
    // As on PyPI: the index page on /simple/, the file under /packages/ (both matched by the
    // built-in rules: the page is metadata, the file is immutable).
    let page_path = "/simple/cuttle-test-pkg/";
    let wheel_path = format!("/packages/3f/a1/{WHEEL}");
    let page = format!(
        "<!DOCTYPE html>\n<html><body>\n<a href=\"{}#sha256={}\">{WHEEL}</a>\n</body></html>\n",
        reg.origin.url(&wheel_path),
        hex::encode(sha2::Sha256::digest(&wheel)),
    );
    reg.put(page_path, "text/html", "max-age=600, public", page);
    reg.put(
        &wheel_path,
        "application/octet-stream",
        "max-age=365000000, immutable, public",
        wheel,
    );
    let p = TestProxy::start(intercepting(&reg.origin)).await;
    let ca = proxy_ca(&p, work.path()).await;
    let index = reg.origin.url("/simple/");
    let page_url = reg.origin.url(page_path);
    let wheel_url = reg.origin.url(&wheel_path);

    // 1. Cold.
    let r = pip_install(work.path(), 1, &index, &p, &ca, PipTrust::Flag).await;
    r.expect_ok("first pip install");
    assert_eq!(
        reg.requests(),
        [
            format!("GET {page_path} 200"),
            format!("GET {wheel_path} 200")
        ]
    );
    let line = nth_log(&p, &format!("GET {page_url} "), 1).await;
    assert!(line.contains("TCP_MISS/200"), "{line}");
    let line = nth_log(&p, &format!("GET {wheel_url} "), 1).await;
    assert!(line.contains("TCP_MISS/200"), "{line}");

    // 2. A new target, pip's cache off, trust through PIP_CERT: pip asks for the index page
    // with `Cache-Control: max-age=0`; the metadata policy (pypi-simple rule) answers it from
    // the cache while the page is fresh, and the immutable wheel is not fetched again.
    let r = pip_install(work.path(), 2, &index, &p, &ca, PipTrust::Env).await;
    r.expect_ok("second pip install");
    assert_eq!(
        reg.requests(),
        [
            format!("GET {page_path} 200"),
            format!("GET {wheel_path} 200"),
        ],
        "the second install sends nothing upstream"
    );
    let line = nth_log(&p, &format!("GET {page_url} "), 2).await;
    assert!(line.contains("HIT/200"), "{line}");
    let line = nth_log(&p, &format!("GET {wheel_url} "), 2).await;
    assert!(line.contains("HIT/200"), "{line}");

    // 3. Origin gone: both from the cache (stale serving when the page has expired is in
    // tests/cache.rs, metadata_is_served_stale_when_the_upstream_is_down).
    drop(reg);
    let r = pip_install(work.path(), 3, &index, &p, &ca, PipTrust::Flag).await;
    r.expect_ok("offline pip install");
    let line = nth_log(&p, &format!("GET {page_url} "), 3).await;
    assert!(line.contains("HIT/200"), "{line}");
    let line = nth_log(&p, &format!("GET {wheel_url} "), 3).await;
    assert!(line.contains("HIT/200"), "{line}");
    p.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// curl: Maven-style artifacts, HTTP/2, a Squid parent, the CA command, --no-intercept

/// curl through `proxy` trusting only `ca`, with `args` (URLs, -o, -w ...).
async fn curl_via(proxy: &str, ca: &Path, args: &[&str]) -> Ran {
    let mut c = package_client("curl");
    c.args([
        "-sS",
        "--fail",
        "--max-time",
        "30",
        "--proxy",
        proxy,
        "--cacert",
    ])
    .arg(ca)
    .args(args);
    run(c).await
}

/// `sha1sum FILE` (coreutils): the hex digest.
async fn sha1_hex(file: &Path) -> String {
    let mut c = package_client("sha1sum");
    c.arg(file);
    let r = run(c).await;
    assert!(r.ok, "sha1sum: {}", r.stderr);
    r.stdout.split_whitespace().next().unwrap().to_string()
}

/// `len` bytes of deterministic pseudo-random binary content.
fn binary(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 11) as u8
        })
        .collect()
}

/// A Maven repository layout: the jar and its `.sha1` sidecar.
async fn maven_repo(work: &Path) -> (Registry, String, String) {
    let jar = binary(300 * 1024, 7);
    let jar_file = work.join("origin-lib-1.0.jar");
    std::fs::write(&jar_file, &jar).unwrap();
    let sha1 = sha1_hex(&jar_file).await;
    let reg = Registry::start().await;
    let jar_path = "/maven2/org/example/lib/1.0/lib-1.0.jar".to_string();
    let sha_path = format!("{jar_path}.sha1");
    // No Cache-Control at all (as from many Maven repositories): the built-in maven-release
    // rule makes both immutable.
    reg.put(&jar_path, "application/java-archive", "", jar);
    reg.put(&sha_path, "text/plain", "", sha1);
    (reg, jar_path, sha_path)
}

/// A Maven-style `.jar` and its `.sha1` sidecar: both cached despite Maven's `no-cache`
/// request headers, and the sidecar matches the jar the client received.
#[tokio::test]
async fn maven_jar_and_sha1_are_cached_and_match() {
    let work = tempfile::tempdir().unwrap();
    let (reg, jar_path, sha_path) = maven_repo(work.path()).await;
    let p = TestProxy::start(intercepting(&reg.origin)).await;
    let ca = proxy_ca(&p, work.path()).await;
    let (jar_url, sha_url) = (reg.origin.url(&jar_path), reg.origin.url(&sha_path));
    for round in 1..=2 {
        let (jar_out, sha_out) = (
            work.path().join(format!("lib-{round}.jar")),
            work.path().join(format!("lib-{round}.jar.sha1")),
        );
        // Both files over one connection, with the headers Maven sends on every request.
        let r = curl_via(
            &p.url(),
            &ca,
            &[
                "-H",
                "Cache-Control: no-cache",
                "-H",
                "Pragma: no-cache",
                &jar_url,
                "-o",
                jar_out.to_str().unwrap(),
                &sha_url,
                "-o",
                sha_out.to_str().unwrap(),
            ],
        )
        .await;
        assert!(r.ok, "round {round}: {}", r.stderr);
        // Maven's check: the sidecar holds the SHA-1 of the jar received.
        assert_eq!(
            std::fs::read_to_string(&sha_out).unwrap().trim(),
            sha1_hex(&jar_out).await,
            "round {round}: jar and .sha1 disagree"
        );
        let jar_line = nth_log(&p, &format!("GET {jar_url} "), round).await;
        let sha_line = nth_log(&p, &format!("GET {sha_url} "), round).await;
        let want = if round == 1 {
            "TCP_MISS/200"
        } else {
            "HIT/200"
        };
        assert!(jar_line.contains(want), "{jar_line}");
        assert!(sha_line.contains(want), "{sha_line}");
    }
    // Each file was fetched from the origin once, even though Maven says no-cache.
    assert_eq!(
        reg.requests(),
        [format!("GET {jar_path} 200"), format!("GET {sha_path} 200")]
    );
    p.shutdown().await;
}

/// An intercepted request goes to the origin through the Squid parent's CONNECT (cuttle
/// speaks TLS to the origin inside Squid's tunnel); the cached copy is then served without
/// Squid or the origin seeing anything.
#[tokio::test]
async fn intercepted_requests_reach_the_origin_through_squid() {
    let squid = support::squid::SquidParent::start("builder", "s3cret:pw").await;
    let work = tempfile::tempdir().unwrap();
    let (reg, jar_path, _) = maven_repo(work.path()).await;
    let mut o = intercepting(&reg.origin);
    o.cache_peer = Some(squid.cache_peer().into());
    // Basic with the first CONNECT, so Squid logs exactly one (the default `auto` first
    // learns the scheme from a 407).
    o.parent_auth = Some("basic".into());
    let p = TestProxy::start(o).await;
    let ca = proxy_ca(&p, work.path()).await;
    let url = reg.origin.url(&jar_path);
    let out = work.path().join("via-squid.jar");
    let r = curl_via(&p.url(), &ca, &[&url, "-o", out.to_str().unwrap()]).await;
    assert!(r.ok, "{}\n{}", r.stderr, squid.cache_log());
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(work.path().join("origin-lib-1.0.jar")).unwrap()
    );
    let line = nth_log(&p, &format!("GET {url} "), 1).await;
    assert!(
        line.contains("TCP_MISS/200")
            && line.contains(&format!("FIRSTUP_PARENT/127.0.0.1:{}", squid.addr.port())),
        "{line}"
    );
    // Second time: from cuttle's cache.
    let r = curl_via(&p.url(), &ca, &[&url, "-o", out.to_str().unwrap()]).await;
    assert!(r.ok, "{}", r.stderr);
    let line = nth_log(&p, &format!("GET {url} "), 2).await;
    assert!(
        line.contains("HIT/200") && line.contains("HIER_NONE"),
        "{line}"
    );
    assert_eq!(reg.requests(), [format!("GET {jar_path} 200")]);
    // Squid writes a CONNECT line when the tunnel closes: stopping the origin closes the
    // tunnel cuttle kept open to it. One tunnel, opened for the first request only.
    let port = reg.origin.addr.port();
    drop(reg);
    let log = squid
        .wait_for_access_log(&format!("CONNECT localhost:{port}"))
        .await;
    let connects: Vec<&str> = log.lines().filter(|l| l.contains(" CONNECT ")).collect();
    assert_eq!(connects.len(), 1, "{log}");
    assert!(
        connects[0].contains("TCP_TUNNEL/200") && connects[0].contains(" builder "),
        "{log}"
    );
    assert!(!log.contains(" GET "), "Squid saw a plain request:\n{log}");
    p.shutdown().await;
}

/// curl negotiates HTTP/2 with cuttle inside the intercepted tunnel; the h2 requests are
/// cached like any other.
#[tokio::test]
async fn http2_inside_the_intercepted_tunnel() {
    let work = tempfile::tempdir().unwrap();
    let (reg, jar_path, sha_path) = maven_repo(work.path()).await;
    let p = TestProxy::start(intercepting(&reg.origin)).await;
    let ca = proxy_ca(&p, work.path()).await;
    let url = reg.origin.url(&sha_path);
    for round in 1..=2 {
        let r = curl_via(&p.url(), &ca, &["--http2", "-w", "\n%{http_version}", &url]).await;
        assert!(r.ok, "{}", r.stderr);
        let (body, version) = r.stdout.rsplit_once('\n').unwrap();
        assert_eq!(version, "2", "curl did not negotiate h2 with cuttle");
        assert_eq!(body.len(), 40, "{body}");
        let line = nth_log(&p, &format!("GET {url} "), round).await;
        let want = if round == 1 {
            "TCP_MISS/200"
        } else {
            "HIT/200"
        };
        assert!(line.contains(want), "{line}");
    }
    // A client offering only HTTP/1.1 gets HTTP/1.1 (ALPN decides, per connection).
    let r = curl_via(
        &p.url(),
        &ca,
        &[
            "--http1.1",
            "-w",
            "\n%{http_version}",
            &reg.origin.url(&jar_path),
        ],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.ends_with("\n1.1"), "{}", r.stdout);
    // cuttle reached the origin once per URL.
    assert_eq!(
        reg.requests(),
        [format!("GET {sha_path} 200"), format!("GET {jar_path} 200")]
    );
    p.shutdown().await;
}

/// The cuttle binary with none of this machine's CUTTLE_* settings.
fn cuttle_cmd() -> tokio::process::Command {
    tokio::process::Command::from(cuttle())
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `cuttle ca init`: the files and their modes, no overwriting, the Name Constraints (as
/// OpenSSL reads and enforces them), loading through `*_FILE` variables and flags, and
/// `GET /ca.pem` / `cuttle ca export` giving out the same certificate.
#[tokio::test]
async fn ca_init_makes_a_constrained_ca_that_clients_verify() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("ca");
    let mut c = cuttle_cmd();
    c.args(["ca", "init", "--intercept", "localhost", "--dir"])
        .arg(&dir);
    let r = run(c).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("name-constrained to: localhost"),
        "{}",
        r.stdout
    );
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&cert), 0o644);
    let (cert_pem, key_pem) = (
        std::fs::read_to_string(&cert).unwrap(),
        std::fs::read_to_string(&key).unwrap(),
    );
    assert!(cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(key_pem.contains("PRIVATE KEY"));

    // Never overwrites.
    let mut c = cuttle_cmd();
    c.args(["ca", "init", "--dir"]).arg(&dir);
    let r = run(c).await;
    assert!(!r.ok);
    assert!(r.stderr.contains("refusing to overwrite"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&key).unwrap(), key_pem);
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), cert_pem);

    // The Name Constraints extension, as OpenSSL reads it.
    let mut c = package_client("openssl");
    c.args(["x509", "-noout", "-text", "-in"]).arg(&cert);
    let r = run(c).await;
    assert!(r.ok, "{}", r.stderr);
    let text = r.stdout;
    let nc = text
        .split_once("X509v3 Name Constraints: critical")
        .unwrap_or_else(|| panic!("no critical Name Constraints:\n{text}"))
        .1;
    assert!(
        nc.trim_start().starts_with("Permitted:") && nc.contains("DNS:localhost"),
        "{text}"
    );
    assert!(text.contains("CA:TRUE"), "{text}");

    // The files work: as the Secret mounted with CUTTLE_CA_CERT_FILE/CUTTLE_CA_KEY_FILE...
    let mut c = cuttle_cmd();
    c.args(["check-config", "--intercept", "localhost"])
        .env("CUTTLE_CA_CERT_FILE", &cert)
        .env("CUTTLE_CA_KEY_FILE", &key);
    let r = run(c).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("ca = \"loaded\""), "{}", r.stdout);
    assert!(!r.stdout.contains("PRIVATE KEY"), "{}", r.stdout);

    // ...and as --ca-cert/--ca-key: the proxy's certificates verify against that ca.pem.
    let origin =
        TlsOrigin::start(|_req| async { respond(200, "through the CA from ca init") }).await;
    let mut o = intercepting(&origin);
    o.ca_cert = Some(cert.clone());
    o.ca_key = Some(key.clone());
    let p = TestProxy::start(o).await;
    let r = curl_via(&p.url(), &cert, &[&origin.url("/x")]).await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout, "through the CA from ca init");
    // GET /ca.pem and `cuttle ca export` (from the file and from the admin port) give it out.
    let served = std::fs::read_to_string(proxy_ca(&p, work.path()).await).unwrap();
    assert_eq!(served.trim(), cert_pem.trim());
    let mut c = cuttle_cmd();
    c.args(["ca", "export", "--ca-cert"]).arg(&cert);
    let r = run(c).await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), cert_pem.trim());
    let mut c = cuttle_cmd();
    c.args(["ca", "export", "--admin", &p.admin_url()]);
    let r = run(c).await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), cert_pem.trim());
    p.shutdown().await;

    // What a stolen key of this CA can sign: OpenSSL accepts a leaf for localhost and
    // refuses one for any other name.
    for (host, accepted) in [("localhost", true), ("evil.example", false)] {
        let leaf = work.path().join(format!("{host}.pem"));
        std::fs::write(&leaf, sign_leaf(&cert_pem, &key_pem, host)).unwrap();
        let mut c = package_client("openssl");
        c.args(["verify", "-purpose", "sslserver", "-CAfile"])
            .arg(&cert)
            .arg(&leaf);
        let r = run(c).await;
        assert_eq!(r.ok, accepted, "{host}: {}{}", r.stdout, r.stderr);
        if !accepted {
            assert!(
                r.stderr.contains("permitted subtree violation"),
                "{}",
                r.stderr
            );
        }
    }
}

/// A server certificate for `host` signed with the CA's key (as a thief of the key would).
fn sign_leaf(ca_pem: &str, ca_key_pem: &str, host: &str) -> String {
    let key = rcgen::KeyPair::from_pem(ca_key_pem).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_pem, key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.signed_by(&leaf_key, &issuer).unwrap().pem()
}

/// `--no-intercept` wins over `--intercept *`: the host stays a blind tunnel.
#[tokio::test]
async fn no_intercept_keeps_a_matching_host_a_blind_tunnel() {
    let origin = TlsOrigin::start(|_req| async { respond(200, "origin's own TLS") }).await;
    let mut o = intercepting(&origin);
    o.intercept = Some(vec!["*".into()]);
    o.no_intercept = Some(vec!["localhost".into()]);
    let p = TestProxy::start(o).await;
    let work = tempfile::tempdir().unwrap();
    let ca = proxy_ca(&p, work.path()).await;
    // Trusting only the origin's CA works: the client sees the origin's certificate...
    let r = curl_via(&p.url(), &origin.ca_file, &[&origin.url("/pinned")]).await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout, "origin's own TLS");
    let line = nth_log(&p, "CONNECT localhost:", 1).await;
    assert!(line.contains("TCP_TUNNEL/200"), "{line}");
    // ...and trusting only cuttle's CA does not.
    let r = curl_via(&p.url(), &ca, &[&origin.url("/pinned")]).await;
    assert!(!r.ok, "cuttle's CA verified a blind tunnel: {}", r.stdout);
    // The request inside the tunnel never went through cuttle's HTTP path.
    nth_log(&p, "CONNECT localhost:", 2).await;
    assert!(
        !p.all_logs().iter().any(|l| l.contains(" GET ")),
        "{:#?}",
        p.all_logs()
    );
    assert_eq!(origin.hits(), 1);
    p.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// cargo

const CRATE: &str = "cuttle-test-crate";
const CRATE_LIB: &str = "pub const GREETING: &str = \"hello from cuttle-test-crate\";\n";

/// `cargo fetch` of a project depending on the test crate from a sparse registry, with a new
/// CARGO_HOME, through the proxy, trusting cuttle's CA through `CARGO_HTTP_CAINFO`.
async fn cargo_fetch(work: &Path, n: usize, index: &str, proxy: &TestProxy, ca: &Path) -> Ran {
    let project = work.join(format!("consumer{n}"));
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(
        project.join("Cargo.toml"),
        format!(
            "[package]\nname = \"consumer\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [dependencies]\n{CRATE} = {{ version = \"1\", registry = \"cuttle-test\" }}\n\n\
             [workspace]\n"
        ),
    )
    .unwrap();
    std::fs::write(project.join("src/lib.rs"), "").unwrap();
    let home = work.join(format!("cargo-home{n}"));
    let mut c = cargo_cmd(&home);
    c.args(["fetch", "--quiet"])
        .env(
            "CARGO_REGISTRIES_CUTTLE_TEST_INDEX",
            format!("sparse+{index}"),
        )
        .env("CARGO_HTTP_PROXY", proxy.url())
        .env("CARGO_HTTP_CAINFO", ca)
        .env("CARGO_NET_RETRY", "0")
        .current_dir(&project);
    let r = run(c).await;
    if r.ok {
        // The downloaded .crate, unpacked by cargo into its registry source directory.
        let found = std::fs::read_dir(home.join("registry/src"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|d| d.path().join(format!("{CRATE}-1.0.0/src/lib.rs")))
            .any(|p| std::fs::read_to_string(p).is_ok_and(|s| s == CRATE_LIB));
        assert!(
            found,
            "cargo said it fetched {CRATE}, but its source is not there"
        );
    }
    r
}

/// cargo with a sparse registry through interception: index files revalidated, the `.crate`
/// download immutable (built-in rule).
#[tokio::test]
async fn cargo_fetch_is_served_from_cache_and_offline() {
    use sha2::Digest;
    let work = tempfile::tempdir().unwrap();
    let krate = cargo_package(work.path(), CRATE, CRATE_LIB, CLIENT_DEADLINE).await;
    let reg = Registry::start().await;
    let config_path = "/index/config.json";
    let entry_path = format!("/index/cu/tt/{CRATE}");
    let crate_path = format!("/api/v1/crates/{CRATE}/1.0.0/download");
    reg.put(
        config_path,
        "application/json",
        "max-age=0",
        serde_json::json!({"dl": reg.origin.url("/api/v1/crates")}).to_string(),
    );
    let entry = serde_json::json!({
        "name": CRATE, "vers": "1.0.0", "deps": [], "features": {}, "yanked": false,
        "cksum": hex::encode(sha2::Sha256::digest(&krate)),
    });
    // Sparse index files change when a version is published: revalidated on every use.
    reg.put(&entry_path, "text/plain", "max-age=0", format!("{entry}\n"));
    reg.put(&crate_path, "application/gzip", "", krate);
    let p = TestProxy::start(intercepting(&reg.origin)).await;
    let ca = proxy_ca(&p, work.path()).await;
    let index = reg.origin.url("/index/");
    let crate_url = reg.origin.url(&crate_path);
    let (config_url, entry_url) = (reg.origin.url(config_path), reg.origin.url(&entry_path));

    let r = cargo_fetch(work.path(), 1, &index, &p, &ca).await;
    r.expect_ok("first cargo fetch");
    let cold = reg.requests();
    for want in [
        format!("GET {config_path} 200"),
        format!("GET {entry_path} 200"),
        format!("GET {crate_path} 200"),
    ] {
        assert!(cold.contains(&want), "{want} missing from {cold:#?}");
    }
    let line = nth_log(&p, &format!("GET {crate_url} "), 1).await;
    assert!(line.contains("TCP_MISS/200"), "{line}");

    // A new CARGO_HOME: the index files are revalidated (304), the .crate is not refetched.
    let r = cargo_fetch(work.path(), 2, &index, &p, &ca).await;
    r.expect_ok("second cargo fetch");
    let warm: Vec<String> = reg.requests()[cold.len()..].to_vec();
    assert!(
        warm.iter()
            .all(|r| r.ends_with(" 304") && !r.contains("/download")),
        "the second fetch may only revalidate index files: {warm:#?}"
    );
    let line = nth_log(&p, &format!("GET {crate_url} "), 2).await;
    assert!(line.contains("HIT/200"), "{line}");

    // Origin gone: index files served stale, the .crate from the cache.
    drop(reg);
    let r = cargo_fetch(work.path(), 3, &index, &p, &ca).await;
    r.expect_ok("offline cargo fetch");
    let line = nth_log(&p, &format!("GET {crate_url} "), 3).await;
    assert!(line.contains("HIT/200"), "{line}");
    for url in [config_url, entry_url] {
        let line = nth_log(&p, &format!("GET {url} "), 3).await;
        assert!(line.contains("TCP_STALE_IF_ERROR/200"), "{line}");
    }
    p.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Java (the JVM's trust store, as Maven and Gradle use it)

/// A single-file Java program (run from source): GET a URL through a proxy with the JVM's
/// default TLS settings, print the HTTP version and the SHA-1 of the body.
const JAVA_FETCH: &str = r#"
import java.net.*;
import java.net.http.*;
import java.security.MessageDigest;

public class Fetch {
    public static void main(String[] a) throws Exception {
        HttpClient c = HttpClient.newBuilder()
            .proxy(ProxySelector.of(new InetSocketAddress(a[0], Integer.parseInt(a[1]))))
            .build();
        HttpResponse<byte[]> r = c.send(HttpRequest.newBuilder(URI.create(a[2])).build(),
            HttpResponse.BodyHandlers.ofByteArray());
        StringBuilder hex = new StringBuilder();
        for (byte b : MessageDigest.getInstance("SHA-1").digest(r.body())) {
            hex.append(String.format("%02x", b));
        }
        System.out.println(r.statusCode() + " " + r.version() + " " + hex);
    }
}
"#;

/// The JVM trusts cuttle through a truststore made with `keytool -importcert` (the README's
/// recipe for Maven and Gradle), over HTTP/2, and the second fetch is a hit.
#[tokio::test]
async fn java_trusts_cuttle_through_an_imported_truststore() {
    let work = tempfile::tempdir().unwrap();
    let (reg, jar_path, _) = maven_repo(work.path()).await;
    let p = TestProxy::start(intercepting(&reg.origin)).await;
    let ca = proxy_ca(&p, work.path()).await;
    // keytool -importcert into a truststore of its own (the README's recipe).
    let store = work.path().join("cuttle-truststore.p12");
    let mut c = package_client("keytool");
    c.args([
        "-importcert",
        "-noprompt",
        "-alias",
        "cuttle",
        "-storetype",
        "PKCS12",
    ])
    .args(["-storepass", "changeit", "-file"])
    .arg(&ca)
    .arg("-keystore")
    .arg(&store);
    let r = run(c).await;
    assert!(r.ok, "keytool: {}{}", r.stdout, r.stderr);
    let src = work.path().join("Fetch.java");
    std::fs::write(&src, JAVA_FETCH).unwrap();
    let url = reg.origin.url(&jar_path);
    let expected_sha1 = sha1_hex(&work.path().join("origin-lib-1.0.jar")).await;
    for round in 1..=2 {
        let mut c = package_client("java");
        c.arg(format!("-Djavax.net.ssl.trustStore={}", store.display()))
            .arg("-Djavax.net.ssl.trustStorePassword=changeit")
            .arg("-Djavax.net.ssl.trustStoreType=PKCS12")
            .arg(&src)
            .args(["127.0.0.1", &p.addr.port().to_string(), &url])
            .env_remove("JAVA_TOOL_OPTIONS")
            .env_remove("JDK_JAVA_OPTIONS");
        let r = run(c).await;
        assert!(r.ok, "java, round {round}: {}{}", r.stdout, r.stderr);
        assert_eq!(r.stdout.trim(), format!("200 HTTP_2 {expected_sha1}"));
        let line = nth_log(&p, &format!("GET {url} "), round).await;
        let want = if round == 1 {
            "TCP_MISS/200"
        } else {
            "HIT/200"
        };
        assert!(line.contains(want), "{line}");
    }
    assert_eq!(reg.requests(), [format!("GET {jar_path} 200")]);
    p.shutdown().await;
}

async fn reload(p: &TestProxy) -> (u16, String) {
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/api/reload", p.admin_url()))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The intercept list is re-read on reload: a host added later is intercepted from then on
/// when the CA may sign for it. A CA name-constrained to other names (here the ephemeral one
/// made for the start-up list) may not: that reload is refused and says why, instead of
/// minting certificates every client rejects. Nor can a reload turn interception on.
#[tokio::test]
async fn intercept_list_reloads_within_the_ca_constraints() {
    let origin = TlsOrigin::start(|_req| async { respond(200, "reloaded") }).await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("cuttle.toml");
    let before = "intercept = [\"registry.example\"]\n";
    let after = "intercept = [\"registry.example\", \"localhost\"]\n";

    // An ephemeral CA, constrained to registry.example.
    std::fs::write(&file, before).unwrap();
    let mut base = opts();
    base.upstream_ca = Some(origin.ca_file.clone());
    let p = TestProxy::start_reloadable(base.clone(), file.clone()).await;
    std::fs::write(&file, after).unwrap();
    let (status, body) = reload(&p).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("localhost outside the name constraints"),
        "{body}"
    );
    // The running list stays: localhost is still a blind tunnel.
    let r = curl_via(&p.url(), &origin.ca_file, &[&origin.url("/a")]).await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        nth_log(&p, "CONNECT localhost:", 1)
            .await
            .contains("TCP_TUNNEL/200")
    );
    p.shutdown().await;

    // A CA made without constraints (`cuttle ca init` without --intercept).
    let dir = work.path().join("open-ca");
    let mut c = cuttle_cmd();
    c.args(["ca", "init", "--dir"]).arg(&dir);
    let r = run(c).await;
    assert!(
        r.ok && r.stdout.contains("not name-constrained"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    std::fs::write(&file, before).unwrap();
    base.ca_cert = Some(dir.join("ca.pem"));
    base.ca_key = Some(dir.join("ca-key.pem"));
    let p = TestProxy::start_reloadable(base, file.clone()).await;
    let r = curl_via(&p.url(), &origin.ca_file, &[&origin.url("/b")]).await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        nth_log(&p, "CONNECT localhost:", 1)
            .await
            .contains("TCP_TUNNEL/200")
    );
    std::fs::write(&file, after).unwrap();
    let (status, body) = reload(&p).await;
    assert_eq!(status, 200, "{body}");
    let r = curl_via(&p.url(), &dir.join("ca.pem"), &[&origin.url("/c")]).await;
    assert!(r.ok, "after the reload: {}", r.stderr);
    assert_eq!(r.stdout, "reloaded");
    assert!(
        nth_log(&p, "CONNECT localhost:", 2)
            .await
            .contains("TCP_BUMP/200")
    );
    p.shutdown().await;

    // Interception off at start (no CA): a reload cannot turn it on, and says so.
    std::fs::write(&file, "").unwrap();
    let p = TestProxy::start_reloadable(opts(), file.clone()).await;
    std::fs::write(&file, after).unwrap();
    let (status, body) = reload(&p).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("interception was off"), "{body}");
    p.shutdown().await;
}

/// A CA from files whose name constraints leave out an intercepted host is refused at start,
/// naming the host.
#[tokio::test]
async fn a_ca_constrained_to_other_hosts_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("ca");
    let mut c = cuttle_cmd();
    c.args(["ca", "init", "--intercept", "registry.example", "--dir"])
        .arg(&dir);
    assert!(run(c).await.ok);
    let mut o = opts();
    o.intercept = Some(vec!["registry.example".into(), "localhost".into()]);
    o.ca_cert = Some(dir.join("ca.pem"));
    o.ca_key = Some(dir.join("ca-key.pem"));
    let err = TestProxy::try_start(o).await.err().expect("cuttle started");
    assert!(
        err.contains("intercept: localhost outside the name constraints"),
        "{err}"
    );
}

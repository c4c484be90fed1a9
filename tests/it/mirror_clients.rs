//! Real clients against mirror routes, with no internet, no proxy setting and no CA in the
//! client: only its registry URL points at cuttle. npm against an npm-style registry whose
//! packument and tarball the test makes with `npm pack`; pip against a PEP 503 / PEP 691
//! simple index with a wheel the test builds; cargo against a sparse registry (`config.json`,
//! an index file, a `.crate` made with `cargo package`); Maven (`mvn validate` resolving a
//! parent through `maven-metadata.xml` and a core extension with its dependency, `.sha1` files
//! included) through the TLS listener; apt (`apt-get update` and `apt-get download`) against a
//! repository made with `dpkg-deb` and `apt-ftparchive`; `go mod download` against a GOPROXY
//! tree (checksum database off). The registries are in-process
//! plain-HTTP origins on 127.0.0.1 that count requests and link their files with absolute URLs,
//! as the public registries do (so the mirror's rewriting is what keeps the client on cuttle).
//!
//! Every client runs three times: cold; in a clean directory with a clean client cache (served
//! entirely from cuttle: no upstream request within the metadata max age); with the origin
//! answering 503 to everything.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use cuttle::http::body::full;
use cuttle::mirror::MirrorConfig;
use http::Response;
use tokio::net::TcpListener;

/// A client command gets this long before the test fails (a stuck client must not hang CI).
const CLIENT_DEADLINE: Duration = Duration::from_secs(90);

async fn run(cmd: tokio::process::Command) -> Ran {
    run_client(cmd, CLIENT_DEADLINE).await
}

/// A plain-HTTP registry serving fixed documents by path; `{origin}` in a document is
/// replaced by its own `http://127.0.0.1:port`. `down` makes it answer 503.
struct Registry {
    origin: Origin,
    down: Arc<AtomicBool>,
}

type Doc = (String, Bytes);

impl Registry {
    /// The upstream goes away: it answers 503 to anything still in flight, then stops.
    fn stop(self) {
        self.down.store(true, Ordering::SeqCst);
        drop(self.origin);
    }

    async fn start(files: Vec<(String, Doc)>) -> Registry {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let files: Arc<Vec<(String, Doc)>> = Arc::new(
            files
                .into_iter()
                .map(|(path, (ct, body))| {
                    let body = match std::str::from_utf8(&body) {
                        Ok(t) if ct.contains("json") || ct.contains("html") => {
                            Bytes::from(t.replace("{origin}", &base))
                        }
                        _ => body,
                    };
                    (path, (ct, body))
                })
                .collect(),
        );
        let down = Arc::new(AtomicBool::new(false));
        let d = down.clone();
        let origin = Origin::serve(listener, move |req| {
            let path = req.uri().path().to_string();
            let accept = req
                .headers()
                .get("accept")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let files = files.clone();
            let down = d.load(Ordering::SeqCst);
            async move {
                if down {
                    return respond(503, "down");
                }
                // The simple API in the format the client prefers (PEP 691): JSON to a
                // client that asks for it first, HTML otherwise.
                let wants_json = accept.starts_with("application/vnd.pypi.simple.v1+json");
                let found = files.iter().find(|(p, (ct, _))| {
                    *p == path
                        && (!ct.starts_with("application/vnd.pypi.simple.v1")
                            || ct.ends_with("+json") == wants_json)
                });
                match found {
                    Some((_, (ct, body))) => Response::builder()
                        .header("content-type", ct.as_str())
                        .body(full(body.clone()))
                        .unwrap(),
                    None => respond(404, "not found"),
                }
            }
        });
        Registry { origin, down }
    }
}

fn mirror_proxy_opts(name: &str, kind: &str, upstream: &str) -> cuttle::config::Options {
    cuttle::config::Options {
        mirror: Some(vec![
            MirrorConfig::parse_flag(&format!("{name}={kind}={upstream}")).unwrap(),
        ]),
        ..opts()
    }
}

// ---------------------------------------------------------------------------------------
// npm

const NPM_PKG: &str = "cuttle-mirror-pkg";
const NPM_INDEX_JS: &str = "module.exports = 'hello from cuttle-mirror-pkg';\n";

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

/// `npm install` in a new project directory with a new npm cache, the registry set to the
/// mirror and nothing else.
async fn npm_install(work: &Path, n: usize, registry: &str) -> Ran {
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
        .arg("--cache")
        .arg(work.join(format!("npm-cache{n}")))
        .arg("--userconfig")
        .arg(&npmrc)
        .arg("--globalconfig")
        .arg(&global)
        .args([
            "--no-audit",
            "--no-fund",
            "--no-update-notifier",
            "--loglevel",
            "http",
            "--fetch-retries",
            "0",
        ])
        .env("HOME", work)
        .current_dir(&project);
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

#[tokio::test]
async fn npm_install_through_the_mirror_is_served_from_cache_and_offline() {
    let work = tempfile::tempdir().unwrap();
    let (tgz, integrity, shasum) = npm_pack(work.path()).await;
    let tarball_path = format!("/{NPM_PKG}/-/{NPM_PKG}-1.0.0.tgz");
    let packument = format!(
        r#"{{"name":"{NPM_PKG}","dist-tags":{{"latest":"1.0.0"}},"versions":{{"1.0.0":{{"name":"{NPM_PKG}","version":"1.0.0","main":"index.js","dist":{{"tarball":"{{origin}}{tarball_path}","integrity":"{integrity}","shasum":"{shasum}"}}}}}}}}"#
    );
    let reg = Registry::start(vec![
        (
            format!("/{NPM_PKG}"),
            ("application/json".into(), Bytes::from(packument)),
        ),
        (
            tarball_path.clone(),
            ("application/octet-stream".into(), Bytes::from(tgz)),
        ),
    ])
    .await;
    let p = TestProxy::start(mirror_proxy_opts("npm", "npm", &reg.origin.url("/"))).await;
    let registry = format!("{}/npm/", p.url());

    let cold = npm_install(work.path(), 1, &registry).await;
    cold.expect_ok("cold install");
    // npm fetched the tarball from the mirror, not from the URL the registry wrote.
    assert!(
        cold.stderr
            .contains(&format!("{registry}{NPM_PKG}/-/{NPM_PKG}-1.0.0.tgz")),
        "{}",
        cold.stderr
    );
    assert!(
        !cold.stderr.contains(&reg.origin.url("/")),
        "{}",
        cold.stderr
    );
    let upstream_cold = reg.origin.hits();
    assert_eq!(upstream_cold, 2, "{:?}", reg.origin.seen());

    let warm = npm_install(work.path(), 2, &registry).await;
    warm.expect_ok("warm install");
    assert_eq!(
        reg.origin.hits(),
        upstream_cold,
        "the second install, with an empty npm cache, sent nothing upstream"
    );

    reg.stop();
    let offline = npm_install(work.path(), 3, &registry).await;
    offline.expect_ok("install with the origin gone");
    let st = &p.proxy().state().mirrors.list[0].stats;
    assert_eq!(
        st.hits.load(Ordering::SeqCst),
        4,
        "two runs of two requests"
    );
    assert_eq!(st.rewrite_errors.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------
// pip

const WHEEL: &str = "cuttle_mirror_pkg-1.0.0-py3-none-any.whl";
const PY_INIT: &str = "GREETING = 'hello from cuttle-mirror-pkg'\n";

/// Builds a minimal valid wheel with python's zipfile.
const BUILD_WHEEL: &str = r#"
import base64, hashlib, sys, zipfile
out, init = sys.argv[1], sys.argv[2]
dist = "cuttle_mirror_pkg-1.0.0.dist-info"
files = {
    "cuttle_mirror_pkg/__init__.py": init.encode(),
    dist + "/METADATA": b"Metadata-Version: 2.1\nName: cuttle-mirror-pkg\nVersion: 1.0.0\n",
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

/// `pip download` into a new directory, without pip's cache, the index set to the mirror.
async fn pip_download(work: &Path, n: usize, index: &str) -> Ran {
    let dest = work.join(format!("dl{n}"));
    let mut c = package_client("python3");
    c.args([
        "-m",
        "pip",
        "download",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--no-deps",
    ])
    .args(["--index-url", index, "--trusted-host", "127.0.0.1"])
    .args(["--retries", "0", "--timeout", "20", "--no-input", "-v"])
    .arg("--dest")
    .arg(&dest)
    .arg("cuttle-mirror-pkg")
    .env("PIP_CONFIG_FILE", "/dev/null")
    .env("HOME", work);
    let r = run(c).await;
    if r.ok {
        let got = std::fs::read(dest.join(WHEEL)).unwrap_or_default();
        assert!(
            !got.is_empty(),
            "pip said it downloaded the wheel, but it is not there"
        );
    }
    r
}

#[tokio::test]
async fn pip_download_through_the_mirror_is_served_from_cache_and_offline() {
    use sha2::Digest;
    let work = tempfile::tempdir().unwrap();
    let wheel = build_wheel(work.path()).await;
    let sha = hex::encode(sha2::Sha256::digest(&wheel));
    let file_path = format!("/packages/ab/cd/{WHEEL}");
    let html = format!(
        "<!DOCTYPE html><html><body><a href=\"{{origin}}{file_path}#sha256={sha}\" data-requires-python=\"&gt;=3.7\">{WHEEL}</a></body></html>"
    );
    let json = format!(
        r#"{{"meta":{{"api-version":"1.1"}},"name":"cuttle-mirror-pkg","files":[{{"filename":"{WHEEL}","url":"{{origin}}{file_path}","hashes":{{"sha256":"{sha}"}},"requires-python":">=3.7"}}]}}"#
    );
    let simple = "/simple/cuttle-mirror-pkg/".to_string();
    let reg = Registry::start(vec![
        (
            simple.clone(),
            (
                "application/vnd.pypi.simple.v1+html".into(),
                Bytes::from(html),
            ),
        ),
        (
            simple.clone(),
            (
                "application/vnd.pypi.simple.v1+json".into(),
                Bytes::from(json),
            ),
        ),
        (
            file_path.clone(),
            ("application/octet-stream".into(), Bytes::from(wheel)),
        ),
    ])
    .await;
    let p = TestProxy::start(mirror_proxy_opts("pypi", "pypi", &reg.origin.url("/"))).await;
    let index = format!("{}/pypi/simple/", p.url());

    let cold = pip_download(work.path(), 1, &index).await;
    cold.expect_ok("cold download");
    let mirror_file = format!("{}/pypi{file_path}", p.url());
    assert!(
        cold.stdout.contains(&mirror_file) || cold.stderr.contains(&mirror_file),
        "pip did not fetch the wheel from the mirror:\n{}\n{}",
        cold.stdout,
        cold.stderr
    );
    let upstream_cold = reg.origin.hits();
    assert_eq!(upstream_cold, 2, "{:?}", reg.origin.seen());

    let warm = pip_download(work.path(), 2, &index).await;
    warm.expect_ok("warm download");
    assert_eq!(
        reg.origin.hits(),
        upstream_cold,
        "the second download sent nothing upstream (pip's max-age=0 included)"
    );

    // The HTML form of the same page (PEP 503), as an older pip asks for it: the file link
    // points at the mirror with its hash fragment.
    let page = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{index}cuttle-mirror-pkg/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!("href=\"{mirror_file}#sha256={sha}\"")),
        "{page}"
    );

    reg.stop();
    let offline = pip_download(work.path(), 3, &index).await;
    offline.expect_ok("download with the origin gone");
}

// ---------------------------------------------------------------------------------------
// cargo (sparse registry)

const CRATE: &str = "cuttle-mirror-crate";
const CRATE_LIB: &str = "pub const GREETING: &str = \"hello from cuttle-mirror-crate\";\n";

/// `cargo fetch` of a project depending on the crate from the mirror's sparse registry
/// (`sparse+http://cuttle/cargo/`), with a new CARGO_HOME and no proxy.
async fn cargo_fetch(work: &Path, n: usize, index: &str) -> Ran {
    let project = work.join(format!("consumer{n}"));
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(
        project.join("Cargo.toml"),
        format!(
            "[package]\nname = \"consumer\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [dependencies]\n{CRATE} = {{ version = \"1\", registry = \"mirror\" }}\n\n\
             [workspace]\n"
        ),
    )
    .unwrap();
    std::fs::write(project.join("src/lib.rs"), "").unwrap();
    let home = work.join(format!("cargo-home{n}"));
    let mut c = cargo_cmd(&home);
    c.args(["fetch", "--quiet"])
        .env("CARGO_REGISTRIES_MIRROR_INDEX", format!("sparse+{index}"))
        .env("CARGO_NET_RETRY", "0")
        .current_dir(&project);
    let r = run(c).await;
    if r.ok {
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

#[tokio::test]
async fn cargo_fetch_through_the_mirror_is_served_from_cache_and_offline() {
    use sha2::Digest;
    let work = tempfile::tempdir().unwrap();
    let krate = cargo_package(work.path(), CRATE, CRATE_LIB, CLIENT_DEADLINE).await;
    let cksum = hex::encode(sha2::Sha256::digest(&krate));
    let index_line = format!(
        r#"{{"name":"{CRATE}","vers":"1.0.0","deps":[],"cksum":"{cksum}","features":{{}},"yanked":false}}"#
    ) + "\n";
    let download = format!("/api/v1/crates/{CRATE}/1.0.0/download");
    let reg = Registry::start(vec![
        (
            "/config.json".into(),
            (
                "application/json".into(),
                Bytes::from(r#"{"dl":"{origin}/api/v1/crates","api":"{origin}"}"#),
            ),
        ),
        (
            format!("/cu/tt/{CRATE}"),
            ("text/plain".into(), Bytes::from(index_line)),
        ),
        (
            download.clone(),
            ("application/x-tar".into(), Bytes::from(krate)),
        ),
    ])
    .await;
    let p = TestProxy::start(mirror_proxy_opts("cargo", "cargo", &reg.origin.url("/"))).await;
    let index = format!("{}/cargo/", p.url());

    let cold = cargo_fetch(work.path(), 1, &index).await;
    cold.expect_ok("cold fetch");
    let paths: Vec<String> = reg
        .origin
        .seen()
        .iter()
        .map(|s| s.uri.path().to_string())
        .collect();
    assert!(paths.contains(&download), "{paths:?}");
    let upstream_cold = reg.origin.hits();
    // The download went through the mirror: cuttle logged it under the upstream URL.
    assert!(
        p.all_logs().iter().any(|l| l.contains(&download)),
        "{:?}",
        p.all_logs()
    );

    let warm = cargo_fetch(work.path(), 2, &index).await;
    warm.expect_ok("warm fetch");
    assert_eq!(
        reg.origin.hits(),
        upstream_cold,
        "the second fetch, with a new CARGO_HOME, sent nothing upstream"
    );

    reg.stop();
    let offline = cargo_fetch(work.path(), 3, &index).await;
    offline.expect_ok("fetch with the origin gone");
}

// ---------------------------------------------------------------------------------------
// Maven (over the TLS listener)

/// The Maven repository tree: a parent POM found through `maven-metadata.xml` (a version
/// range), a core extension (POM + jar) and its dependency (POM + jar), each with a `.sha1`.
/// Core extensions (`.mvn/extensions.xml`) and parents are resolved by Maven itself, with no
/// plugin, so `mvn validate` needs nothing from the internet.
fn maven_tree() -> Vec<(String, Doc)> {
    use sha1::Digest;
    use std::io::Write;
    fn jar(entry: &str, text: &str) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let o = zip::write::SimpleFileOptions::default();
        w.start_file("META-INF/MANIFEST.MF", o).unwrap();
        w.write_all(b"Manifest-Version: 1.0\r\n\r\n").unwrap();
        w.start_file(entry, o).unwrap();
        w.write_all(text.as_bytes()).unwrap();
        w.finish().unwrap().into_inner()
    }
    let pom = |a: &str, packaging: &str, deps: &str| {
        format!(
            r#"<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion><groupId>org.example</groupId><artifactId>{a}</artifactId><version>1.0.0</version><packaging>{packaging}</packaging>{deps}</project>"#
        )
        .into_bytes()
    };
    let g = "/maven2/org/example";
    let files: Vec<(String, &str, Vec<u8>)> = vec![
        (
            format!("{g}/cuttle-parent/maven-metadata.xml"),
            "application/xml",
            br#"<?xml version="1.0" encoding="UTF-8"?><metadata><groupId>org.example</groupId><artifactId>cuttle-parent</artifactId><versioning><latest>1.0.0</latest><release>1.0.0</release><versions><version>1.0.0</version></versions><lastUpdated>20260101000000</lastUpdated></versioning></metadata>"#.to_vec(),
        ),
        (
            format!("{g}/cuttle-parent/1.0.0/cuttle-parent-1.0.0.pom"),
            "text/xml",
            pom("cuttle-parent", "pom", ""),
        ),
        (
            format!("{g}/cuttle-ext/1.0.0/cuttle-ext-1.0.0.pom"),
            "text/xml",
            pom(
                "cuttle-ext",
                "jar",
                "<dependencies><dependency><groupId>org.example</groupId><artifactId>cuttle-lib</artifactId><version>1.0.0</version></dependency></dependencies>",
            ),
        ),
        (
            format!("{g}/cuttle-ext/1.0.0/cuttle-ext-1.0.0.jar"),
            "application/java-archive",
            jar("org/example/ext.txt", MAVEN_EXT_TXT),
        ),
        (
            format!("{g}/cuttle-lib/1.0.0/cuttle-lib-1.0.0.pom"),
            "text/xml",
            pom("cuttle-lib", "jar", ""),
        ),
        (
            format!("{g}/cuttle-lib/1.0.0/cuttle-lib-1.0.0.jar"),
            "application/java-archive",
            jar("org/example/lib.txt", "hello from cuttle-lib\n"),
        ),
    ];
    let mut out = Vec::new();
    for (path, ct, body) in files {
        let sha = hex::encode(sha1::Sha1::digest(&body));
        out.push((
            format!("{path}.sha1"),
            ("text/plain".to_string(), Bytes::from(sha)),
        ));
        out.push((path, (ct.to_string(), Bytes::from(body))));
    }
    out
}

const MAVEN_EXT_TXT: &str = "hello from cuttle-ext\n";

/// `mvn -B validate` of a project whose parent (a version range) and core extension come from
/// the mirror at `url`, with a new local repository, settings of its own (a `<mirror>` of
/// `*`, no global settings) and the JVM trusting only `truststore`.
async fn mvn_validate(work: &Path, n: usize, url: &str, truststore: &Path) -> Ran {
    let project = work.join(format!("project{n}"));
    let repo = work.join(format!("m2-repository{n}"));
    std::fs::create_dir_all(project.join(".mvn")).unwrap();
    std::fs::write(
        project.join("pom.xml"),
        r#"<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
<parent><groupId>org.example</groupId><artifactId>cuttle-parent</artifactId><version>[1.0,2.0)</version><relativePath/></parent>
<artifactId>consumer</artifactId><version>1.0</version><packaging>pom</packaging></project>"#,
    )
    .unwrap();
    std::fs::write(
        project.join(".mvn/extensions.xml"),
        "<extensions><extension><groupId>org.example</groupId><artifactId>cuttle-ext</artifactId><version>1.0.0</version></extension></extensions>",
    )
    .unwrap();
    let settings = work.join(format!("settings{n}.xml"));
    std::fs::write(
        &settings,
        format!(
            "<settings><localRepository>{}</localRepository><mirrors><mirror><id>cuttle</id>\
             <mirrorOf>*</mirrorOf><url>{url}</url></mirror></mirrors></settings>",
            repo.display()
        ),
    )
    .unwrap();
    let mut c = package_client("mvn");
    c.args(["-B", "-e", "-s"])
        .arg(&settings)
        .arg("-gs")
        .arg(&settings)
        .arg("validate")
        .env(
            "MAVEN_OPTS",
            format!(
                "-Djavax.net.ssl.trustStore={} -Djavax.net.ssl.trustStorePassword=changeit \
                 -Djavax.net.ssl.trustStoreType=PKCS12",
                truststore.display()
            ),
        )
        .env_remove("MAVEN_ARGS")
        .env_remove("JAVA_TOOL_OPTIONS")
        .env_remove("JDK_JAVA_OPTIONS")
        .env("HOME", work)
        .current_dir(&project);
    let r = run(c).await;
    if r.ok {
        let jar = repo.join("org/example/cuttle-ext/1.0.0/cuttle-ext-1.0.0.jar");
        let mut z = zip::ZipArchive::new(std::fs::File::open(&jar).unwrap()).unwrap();
        let text = std::io::read_to_string(z.by_name("org/example/ext.txt").unwrap()).unwrap();
        assert_eq!(
            text,
            MAVEN_EXT_TXT,
            "{} is not the served jar",
            jar.display()
        );
        for f in [
            "org/example/cuttle-lib/1.0.0/cuttle-lib-1.0.0.jar",
            "org/example/cuttle-parent/1.0.0/cuttle-parent-1.0.0.pom",
        ] {
            assert!(repo.join(f).is_file(), "mvn did not store {f}");
        }
    }
    r
}

/// Maven 3.8 refuses plain-HTTP repositories, so it reaches the mirror through the TLS
/// listener (`--tls-listen`), trusting the operator's certificate through a PKCS12
/// truststore made with keytool. The metadata, POMs, jars and `.sha1` files all come through
/// the mirror; a second build with an empty local repository sends nothing upstream; a third
/// works with the upstream gone.
#[tokio::test]
async fn maven_through_the_mirror_over_tls_is_served_from_cache_and_offline() {
    let work = tempfile::tempdir().unwrap();
    let tree = maven_tree();
    let files = tree.len();
    let reg = Registry::start(tree).await;
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (work.path().join("tls.crt"), work.path().join("tls.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let p = TestProxy::start(cuttle::config::Options {
        tls_listen: Some(vec!["127.0.0.1:0".into()]),
        tls_cert: Some(cert.clone()),
        tls_key: Some(key),
        ..mirror_proxy_opts("maven", "maven", &reg.origin.url("/maven2/"))
    })
    .await;
    let store = work.path().join("truststore.p12");
    let mut c = package_client("keytool");
    c.args(["-importcert", "-noprompt", "-alias", "cuttle", "-storetype"])
        .args(["PKCS12", "-storepass", "changeit", "-file"])
        .arg(&cert)
        .arg("-keystore")
        .arg(&store);
    let r = run(c).await;
    assert!(r.ok, "keytool: {}{}", r.stdout, r.stderr);
    let url = format!(
        "https://127.0.0.1:{}/maven/",
        p.proxy().tls_addrs()[0].port()
    );

    let cold = mvn_validate(work.path(), 1, &url, &store).await;
    cold.expect_ok("cold build");
    // Every file of the tree, once: Maven asked the mirror, the mirror asked the upstream.
    let mut paths: Vec<String> = reg
        .origin
        .seen()
        .iter()
        .map(|s| s.uri.path().to_string())
        .collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), files, "{paths:?}");
    let upstream_cold = reg.origin.hits();
    assert_eq!(upstream_cold, files, "{:?}", reg.origin.seen());
    assert!(
        cold.stdout.contains(&format!(
            "{url}org/example/cuttle-ext/1.0.0/cuttle-ext-1.0.0.jar"
        )),
        "{}",
        cold.stdout
    );

    let warm = mvn_validate(work.path(), 2, &url, &store).await;
    warm.expect_ok("warm build");
    assert_eq!(
        reg.origin.hits(),
        upstream_cold,
        "the second build, with an empty local repository, sent nothing upstream"
    );

    reg.stop();
    let offline = mvn_validate(work.path(), 3, &url, &store).await;
    offline.expect_ok("build with the upstream gone");
    let st = &p.proxy().state().mirrors.list[0].stats;
    assert_eq!(st.hits.load(Ordering::SeqCst), 2 * files as u64);
}

// ---------------------------------------------------------------------------------------
// apt

const DEB: &str = "cuttle-mirror-deb";
const DEB_TXT: &str = "hello from cuttle-mirror-deb\n";

/// A command that must succeed (building the apt repository).
async fn must(mut c: tokio::process::Command, what: &str) -> String {
    let r = run_client(
        {
            c.env("LC_ALL", "C");
            c
        },
        CLIENT_DEADLINE,
    )
    .await;
    assert!(r.ok, "{what} failed:\n{}\n{}", r.stdout, r.stderr);
    r.stdout
}

/// An apt repository made the Debian way: a `.deb` built with `dpkg-deb --build`, the
/// `Packages` index (and `Packages.gz`) and the `Release` file with `apt-ftparchive`. Returns
/// the files under `/debian/`, the `.deb`'s bytes and its path.
async fn apt_repository(work: &Path) -> (Vec<(String, Doc)>, Vec<u8>, String) {
    let arch = must(
        {
            let mut c = package_client("dpkg");
            c.arg("--print-architecture");
            c
        },
        "dpkg --print-architecture",
    )
    .await
    .trim()
    .to_string();
    let src = work.join("deb-src");
    std::fs::create_dir_all(src.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(src.join(format!("usr/share/{DEB}"))).unwrap();
    std::fs::write(
        src.join("DEBIAN/control"),
        format!(
            "Package: {DEB}\nVersion: 1.0.0\nArchitecture: all\nMaintainer: cuttle tests <tests@example.org>\n\
             Description: cuttle test package\n"
        ),
    )
    .unwrap();
    std::fs::write(src.join(format!("usr/share/{DEB}/hello.txt")), DEB_TXT).unwrap();
    let repo = work.join("apt-repo");
    let pool = format!("pool/main/c/{DEB}");
    std::fs::create_dir_all(repo.join(&pool)).unwrap();
    let deb_rel = format!("{pool}/{DEB}_1.0.0_all.deb");
    let mut c = package_client("dpkg-deb");
    c.args(["--root-owner-group", "--build"])
        .arg(&src)
        .arg(repo.join(&deb_rel));
    must(c, "dpkg-deb --build").await;
    let lists = format!("dists/stable/main/binary-{arch}");
    std::fs::create_dir_all(repo.join(&lists)).unwrap();
    let mut c = package_client("apt-ftparchive");
    c.args(["packages", "pool"]).current_dir(&repo);
    let packages = must(c, "apt-ftparchive packages").await;
    assert!(packages.contains(&deb_rel), "{packages}");
    std::fs::write(repo.join(&lists).join("Packages"), &packages).unwrap();
    let mut c = package_client("gzip");
    c.args(["-9nk"]).arg(repo.join(&lists).join("Packages"));
    must(c, "gzip").await;
    let mut c = package_client("apt-ftparchive");
    c.args(["-o", "APT::FTPArchive::Release::Suite=stable"])
        .args(["-o", "APT::FTPArchive::Release::Codename=stable"])
        .args(["-o", "APT::FTPArchive::Release::Components=main"])
        .args([
            "-o",
            &format!("APT::FTPArchive::Release::Architectures={arch}"),
        ])
        .args(["release", "dists/stable"])
        .current_dir(&repo);
    let release = must(c, "apt-ftparchive release").await;
    std::fs::write(repo.join("dists/stable/Release"), release).unwrap();
    let mut files = Vec::new();
    for rel in [
        "dists/stable/Release".to_string(),
        format!("{lists}/Packages"),
        format!("{lists}/Packages.gz"),
        deb_rel.clone(),
    ] {
        let body = std::fs::read(repo.join(&rel)).unwrap();
        let ct = if rel.ends_with(".deb") {
            "application/vnd.debian.binary-package"
        } else if rel.ends_with(".gz") {
            "application/gzip"
        } else {
            "text/plain"
        };
        files.push((
            format!("/debian/{rel}"),
            (ct.to_string(), Bytes::from(body)),
        ));
    }
    let deb = std::fs::read(repo.join(&deb_rel)).unwrap();
    (files, deb, format!("/debian/{deb_rel}"))
}

/// `apt-get update` then `apt-get download` with a configuration of their own: no system
/// configuration or sources (APT_CONFIG names an empty parts directory and no main file), the
/// lists, cache and status under `work/apt{n}`, one source: the mirror, `trusted=yes`.
async fn apt_get(work: &Path, n: usize, mirror: &str) -> (Ran, Ran) {
    let root = work.join(format!("apt{n}"));
    for d in ["etc/apt.conf.d", "etc/sources.list.d", "etc/preferences.d"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for d in ["state/lists/partial", "cache/archives/partial", "download"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("state/status"), "").unwrap();
    std::fs::write(
        root.join("etc/sources.list"),
        format!("deb [trusted=yes] {mirror} stable main\n"),
    )
    .unwrap();
    let r = root.display();
    std::fs::write(
        root.join("apt.conf"),
        format!(
            "Dir::Etc::main \"/dev/null\";\nDir::Etc::parts \"{r}/etc/apt.conf.d\";\n\
             Dir::Etc::sourcelist \"{r}/etc/sources.list\";\n\
             Dir::Etc::sourceparts \"{r}/etc/sources.list.d\";\n\
             Dir::Etc::preferencesparts \"{r}/etc/preferences.d\";\n\
             Dir::State \"{r}/state\";\nDir::State::status \"{r}/state/status\";\n\
             Dir::Cache \"{r}/cache\";\nAPT::Sandbox::User \"root\";\n\
             Acquire::Languages \"none\";\nAcquire::http::Proxy \"DIRECT\";\n\
             Acquire::Retries \"0\";\n"
        ),
    )
    .unwrap();
    let apt = |args: &[&str]| {
        let mut c = package_client("apt-get");
        c.args(args)
            .env("APT_CONFIG", root.join("apt.conf"))
            .env("LC_ALL", "C")
            .current_dir(root.join("download"));
        c
    };
    let update = run(apt(&["update"])).await;
    if !update.ok {
        return (
            update,
            Ran {
                ok: false,
                stdout: String::new(),
                stderr: "not run".into(),
            },
        );
    }
    let download = run(apt(&["download", DEB])).await;
    (update, download)
}

/// apt through an `apt` mirror: `apt-get update` and `apt-get download` of a package the test
/// built, against a repository made with apt-ftparchive. The index and the `.deb` come through
/// the mirror; a second run with empty lists and cache is served by cuttle alone (the
/// missing `InRelease` and `Release.gpg` too: 404s are remembered); a third works with the
/// upstream gone.
#[tokio::test]
async fn apt_through_the_mirror_is_served_from_cache_and_offline() {
    let work = tempfile::tempdir().unwrap();
    let (files, deb, deb_path) = apt_repository(work.path()).await;
    let reg = Registry::start(files).await;
    let p = TestProxy::start(mirror_proxy_opts(
        "debian",
        "apt",
        &reg.origin.url("/debian/"),
    ))
    .await;
    let mirror = format!("{}/debian/", p.url());
    let downloaded = |n: usize| {
        std::fs::read(
            work.path()
                .join(format!("apt{n}/download/{DEB}_1.0.0_all.deb")),
        )
        .unwrap_or_default()
    };

    let (update, download) = apt_get(work.path(), 1, &mirror).await;
    update.expect_ok("cold update");
    assert!(
        update
            .stdout
            .contains(&format!("{} stable/main", mirror.trim_end_matches('/'))),
        "{}",
        update.stdout
    );
    download.expect_ok("cold download");
    assert!(
        downloaded(1) == deb,
        "apt-get download did not store the served .deb"
    );
    let paths: Vec<String> = reg
        .origin
        .seen()
        .iter()
        .map(|s| s.uri.path().to_string())
        .collect();
    assert!(paths.contains(&deb_path), "{paths:?}");
    assert!(
        paths
            .iter()
            .any(|p| p.contains("/binary-") && p.contains("/Packages")),
        "{paths:?}"
    );
    let upstream_cold = reg.origin.hits();

    let (update, download) = apt_get(work.path(), 2, &mirror).await;
    update.expect_ok("warm update");
    download.expect_ok("warm download");
    assert!(downloaded(2) == deb);
    assert_eq!(
        reg.origin.hits(),
        upstream_cold,
        "the second run, with empty lists and cache, sent nothing upstream: {:?}",
        reg.origin.seen()
    );

    reg.stop();
    let (update, download) = apt_get(work.path(), 3, &mirror).await;
    assert!(
        update.ok && download.ok,
        "run with the upstream gone failed:\n{}\n{}\n{}\n{}",
        update.stdout,
        update.stderr,
        download.stdout,
        download.stderr
    );
    assert!(downloaded(3) == deb);
}

// ---------------------------------------------------------------------------------------
// Go (GOPROXY protocol)

const GO_MODULE: &str = "example.org/cuttle/hello";
const GO_SOURCE: &str = "package hello\n\nconst Greeting = \"hello from cuttle-mirror\"\n";

/// A module proxy tree for `GO_MODULE` v1.0.0: `@v/list`, `.info`, `.mod` and the module zip.
fn go_proxy_tree() -> Vec<(String, Doc)> {
    use std::io::Write;
    let module = format!("module {GO_MODULE}\n\ngo 1.18\n");
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o = zip::write::SimpleFileOptions::default();
    let prefix = format!("{GO_MODULE}@v1.0.0");
    w.start_file(format!("{prefix}/go.mod"), o).unwrap();
    w.write_all(module.as_bytes()).unwrap();
    w.start_file(format!("{prefix}/hello.go"), o).unwrap();
    w.write_all(GO_SOURCE.as_bytes()).unwrap();
    let zip = w.finish().unwrap().into_inner();
    let v = format!("/{GO_MODULE}/@v");
    let text = |s: &str| {
        (
            "text/plain; charset=utf-8".to_string(),
            Bytes::from(s.to_string()),
        )
    };
    vec![
        (format!("{v}/list"), text("v1.0.0\n")),
        (
            format!("{v}/v1.0.0.info"),
            (
                "application/json".into(),
                Bytes::from(r#"{"Version":"v1.0.0","Time":"2026-01-01T00:00:00Z"}"#),
            ),
        ),
        (format!("{v}/v1.0.0.mod"), text(&module)),
        (
            format!("{v}/v1.0.0.zip"),
            ("application/zip".into(), Bytes::from(zip)),
        ),
    ]
}

/// `go mod download` in a new module requiring `GO_MODULE`, with GOPROXY at the mirror, a new
/// GOPATH and module cache, and no checksum database.
async fn go_mod_download(work: &Path, n: usize, goproxy: &str) -> Ran {
    let project = work.join(format!("gomod{n}"));
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("go.mod"),
        format!("module example.org/consumer\n\ngo 1.18\n\nrequire {GO_MODULE} v1.0.0\n"),
    )
    .unwrap();
    let gopath = work.join(format!("gopath{n}"));
    let mut c = package_client("go");
    c.args(["mod", "download", "-x", &format!("{GO_MODULE}@latest")])
        .env("GOPROXY", goproxy)
        .env("GOPATH", &gopath)
        .env("GOMODCACHE", gopath.join("pkg/mod"))
        .env("GOCACHE", work.join(format!("gocache{n}")))
        .env("GOFLAGS", "-mod=mod")
        .env("GOSUMDB", "off")
        .env("GONOSUMDB", "*")
        .env("GONOSUMCHECK", "1")
        .env("GOPRIVATE", "")
        .env("GOENV", "off")
        .env("GOTOOLCHAIN", "local")
        .env("HOME", work)
        .current_dir(&project);
    let r = run(c).await;
    if r.ok {
        let src = gopath.join(format!("pkg/mod/{GO_MODULE}@v1.0.0/hello.go"));
        assert_eq!(
            std::fs::read_to_string(&src).unwrap_or_default(),
            GO_SOURCE,
            "go said it downloaded {GO_MODULE}, but {} is not the served file",
            src.display()
        );
    }
    r
}

/// The go command through a `go` mirror (GOPROXY=http://cuttle/go): `@v/list`, the `.info`,
/// `.mod` and zip of `@latest` come through the mirror; a second download with a new module cache sends nothing
/// upstream; a third works with the upstream gone.
#[tokio::test]
async fn go_mod_download_through_the_mirror_is_served_from_cache_and_offline() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start(go_proxy_tree()).await;
    let p = TestProxy::start(mirror_proxy_opts("go", "go", &reg.origin.url("/"))).await;
    let goproxy = format!("{}/go", p.url());

    let cold = go_mod_download(work.path(), 1, &goproxy).await;
    cold.expect_ok("cold download");
    let zip = format!("/{GO_MODULE}/@v/v1.0.0.zip");
    let paths: Vec<String> = reg
        .origin
        .seen()
        .iter()
        .map(|s| s.uri.path().to_string())
        .collect();
    assert!(paths.contains(&zip), "{paths:?}");
    // `@latest` asked for the version list (the go-list rule) too.
    assert!(
        paths.contains(&format!("/{GO_MODULE}/@v/list")),
        "{paths:?}"
    );
    let upstream_cold = reg.origin.hits();

    let warm = go_mod_download(work.path(), 2, &goproxy).await;
    warm.expect_ok("warm download");
    assert_eq!(
        reg.origin.hits(),
        upstream_cold,
        "the second download, with a new module cache, sent nothing upstream"
    );

    reg.stop();
    let offline = go_mod_download(work.path(), 3, &goproxy).await;
    offline.expect_ok("download with the upstream gone");
}

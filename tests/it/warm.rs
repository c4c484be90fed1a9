#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_types,
    clippy::disallowed_methods
)]
//! `cuttle warm`: every lockfile kind against an in-process origin on 127.0.0.1 serving
//! artifacts the test made, fetched by the real binary through a real cuttle started
//! in-process; the second run finds everything in cuttle's cache. Also: digest mismatches
//! (reported, exit 1), https through interception, the mirror mode, argument errors (exit 2),
//! and the progress display as plain lines and as a bar on a terminal (under `script`).

use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::support::tls::{TlsOrigin, intercepting};
use crate::support::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use cuttle::http::body::{Body, full};
use http::{Request, Response};
use hyper::body::Incoming;
use parking_lot::{Mutex, RwLock};
use sha2::Digest;
use tokio::sync::Semaphore;

const DEADLINE: Duration = Duration::from_secs(60);

// ---- an origin serving what the test puts in it ------------------------------------------

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// A path whose answers wait for permits.
type Gate = Option<(String, Arc<Semaphore>)>;

/// Files by path, and optionally one path whose answer waits for the test's go-ahead.
#[derive(Clone, Default)]
struct Store {
    files: Arc<RwLock<HashMap<String, (String, Bytes)>>>,
    gate: Arc<Mutex<Gate>>,
    hits: Arc<Mutex<Vec<String>>>,
}

impl Store {
    fn put(&self, path: &str, content_type: &str, body: impl Into<Bytes>) {
        self.files
            .write()
            .insert(path.to_string(), (content_type.to_string(), body.into()));
    }

    /// Holds answers for `path` until [`Store::open`].
    fn hold(&self, path: &str) -> Arc<Semaphore> {
        let s = Arc::new(Semaphore::new(0));
        *self.gate.lock() = Some((path.to_string(), s.clone()));
        s
    }

    /// How many requests reached the origin for `path`.
    fn hits(&self, path: &str) -> usize {
        self.hits.lock().iter().filter(|p| *p == path).count()
    }

    fn handler(&self) -> Handler {
        let store = self.clone();
        Arc::new(move |req: Request<Incoming>| {
            let store = store.clone();
            Box::pin(async move {
                let path = req.uri().path().to_string();
                store.hits.lock().push(path.clone());
                let gate = store.gate.lock().clone();
                if let Some((p, sem)) = gate {
                    if p == path {
                        let _ = sem.acquire().await.unwrap();
                    }
                }
                let file = store.files.read().get(&path).cloned();
                match file {
                    None => respond(404, "not found"),
                    Some((ct, body)) => Response::builder()
                        .header("content-type", ct)
                        .header("cache-control", "max-age=3600")
                        .body(full(body))
                        .unwrap(),
                }
            })
        })
    }

    async fn start(&self) -> Origin {
        let h = self.handler();
        Origin::start(move |req| h(req)).await
    }

    async fn start_tls(&self) -> TlsOrigin {
        let h = self.handler();
        TlsOrigin::start(move |req| h(req)).await
    }
}

// ---- digests as lockfiles write them --------------------------------------------------

fn sri512(b: &[u8]) -> String {
    format!("sha512-{}", STANDARD.encode(sha2::Sha512::digest(b)))
}

fn sha1_hex(b: &[u8]) -> String {
    hex::encode(sha1::Sha1::digest(b))
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// Go's dirhash h1, written out here independently of cuttle's: sha256 over the sorted
/// lines "<sha256 hex>  <name>\n", base64.
fn go_h1(files: &[(&str, &[u8])]) -> String {
    let mut lines: Vec<String> = files
        .iter()
        .map(|(n, b)| format!("{}  {n}\n", sha256_hex(b)))
        .collect();
    lines.sort_by(|a, b| a[66..].cmp(&b[66..]));
    format!(
        "h1:{}",
        STANDARD.encode(sha2::Sha256::digest(lines.concat().as_bytes()))
    )
}

fn artifact(name: &str) -> Vec<u8> {
    format!("artifact {name}\n").repeat(200).into_bytes()
}

// ---- running the binary ----------------------------------------------------------------

fn warm() -> Command {
    let mut c = cuttle();
    c.arg("warm");
    c
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(mut c: Command) -> Run {
    let out = tokio::time::timeout(
        DEADLINE,
        tokio::task::spawn_blocking(move || c.output().unwrap()),
    )
    .await
    .expect("cuttle warm did not finish")
    .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs warm twice through the proxy: the first run fetches and stores everything, the
/// second finds all of it in cuttle's cache. Returns the first run.
async fn warm_twice(p: &TestProxy, args: &[String], n: usize) -> Run {
    let mut c = warm();
    c.args(["--proxy", &p.url(), "--progress", "none"])
        .args(args);
    let first = run(c).await;
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    assert!(
        first.stdout.contains(&format!(
            "{n} artifacts: {n} fetched ({n} stored by cuttle), 0 already cached"
        )),
        "{}",
        first.stdout
    );
    let mut c = warm();
    c.args(["--proxy", &p.url(), "--progress", "none"])
        .args(args);
    let second = run(c).await;
    assert_eq!(second.code, 0, "{}\n{}", second.stdout, second.stderr);
    assert!(
        second.stdout.contains(&format!(
            "{n} artifacts: 0 fetched (0 stored by cuttle), {n} already cached"
        )),
        "{}",
        second.stdout
    );
    first
}

// ---- the lockfile kinds -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn npm_package_lock_yarn_and_pnpm() {
    let store = Store::default();
    let origin = store.start().await;
    let base = origin.url("");
    let a = artifact("a");
    let b = artifact("@s/b");
    let c = artifact("c");
    let d = artifact("d");
    let e = artifact("e");
    store.put("/e/-/e-5.0.0.tgz", "application/octet-stream", e.clone());
    store.put("/a/-/a-1.0.0.tgz", "application/octet-stream", a.clone());
    store.put("/@s/b/-/b-2.0.0.tgz", "application/octet-stream", b.clone());
    store.put("/c/-/c-3.0.0.tgz", "application/octet-stream", c.clone());
    store.put("/d/-/d-4.0.0.tgz", "application/octet-stream", d.clone());
    let dir = tempfile::tempdir().unwrap();
    let npm_dir = dir.path().join("npm");
    std::fs::create_dir(&npm_dir).unwrap();
    let lock = write(
        &npm_dir,
        "package-lock.json",
        &format!(
            r#"{{"name":"app","lockfileVersion":3,"packages":{{"":{{"name":"app"}},
              "node_modules/a":{{"version":"1.0.0","resolved":"{base}/a/-/a-1.0.0.tgz","integrity":"{}"}},
              "node_modules/@s/b":{{"version":"2.0.0","resolved":"{base}/@s/b/-/b-2.0.0.tgz","integrity":"{}"}},
              "node_modules/e":{{"version":"5.0.0","integrity":"{}"}}}}}}"#,
            sri512(&a),
            sri512(&b),
            sri512(&e)
        ),
    );
    let yarn = write(
        dir.path(),
        "yarn.lock",
        &format!(
            "# yarn lockfile v1\n\n\"c@^3.0.0\":\n  version \"3.0.0\"\n  resolved \"{base}/c/-/c-3.0.0.tgz#{}\"\n\n\
             a@^1:\n  version \"1.0.0\"\n  resolved \"{base}/a/-/a-1.0.0.tgz#{}\"\n  integrity {}\n",
            sha1_hex(&c),
            sha1_hex(&a),
            sri512(&a)
        ),
    );
    let pnpm = write(
        dir.path(),
        "pnpm-lock.yaml",
        &format!(
            "lockfileVersion: '9.0'\n\nimporters:\n  .:\n    dependencies:\n      d:\n        specifier: ^4\n        version: 4.0.0\n\n\
             packages:\n\n  d@4.0.0:\n    resolution: {{integrity: {}}}\n\n  '@s/b@2.0.0':\n    resolution: {{integrity: {}}}\n",
            sri512(&d),
            sri512(&b)
        ),
    );
    let p = TestProxy::start(opts()).await;
    let args = vec![
        lock.display().to_string(),
        yarn.display().to_string(),
        pnpm.display().to_string(),
        "--npm-registry".into(),
        format!("{base}/"),
    ];
    // a and @s/b appear in two lockfiles each: fetched once. e has no `resolved` (npm's
    // omit-lockfile-registry-resolved): its URL comes from --npm-registry.
    warm_twice(&p, &args, 5).await;
    for path in [
        "/e/-/e-5.0.0.tgz",
        "/a/-/a-1.0.0.tgz",
        "/@s/b/-/b-2.0.0.tgz",
        "/c/-/c-3.0.0.tgz",
        "/d/-/d-4.0.0.tgz",
    ] {
        assert_eq!(store.hits(path), 1, "{path}");
    }
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_requirements_uv_and_poetry() {
    let store = Store::default();
    let origin = store.start().await;
    let base = origin.url("");
    let sdist = artifact("foo_bar-1.0.tar.gz");
    let wheel = artifact("foo_bar-1.0-py3-none-any.whl");
    let other = artifact("foo_bar-0.9.tar.gz");
    let html_sdist = artifact("htmlpkg-2.0.tar.gz");
    let uv_wheel = artifact("uvpkg-3.0-py3-none-any.whl");
    store.put(
        "/files/foo_bar-1.0.tar.gz",
        "application/gzip",
        sdist.clone(),
    );
    store.put(
        "/files/foo_bar-1.0-py3-none-any.whl",
        "application/zip",
        wheel.clone(),
    );
    store.put(
        "/files/foo_bar-0.9.tar.gz",
        "application/gzip",
        other.clone(),
    );
    store.put(
        "/files/htmlpkg-2.0.tar.gz",
        "application/gzip",
        html_sdist.clone(),
    );
    store.put(
        "/files/uvpkg-3.0-py3-none-any.whl",
        "application/zip",
        uv_wheel.clone(),
    );
    // PEP 691 JSON, with one relative and one absolute link.
    store.put(
        "/simple/foo-bar/",
        "application/vnd.pypi.simple.v1+json",
        format!(
            r#"{{"meta":{{"api-version":"1.1"}},"name":"foo-bar","files":[
              {{"filename":"foo_bar-0.9.tar.gz","url":"/files/foo_bar-0.9.tar.gz","hashes":{{"sha256":"{}"}}}},
              {{"filename":"foo_bar-1.0.tar.gz","url":"/files/foo_bar-1.0.tar.gz","hashes":{{"sha256":"{}"}}}},
              {{"filename":"foo_bar-1.0-py3-none-any.whl","url":"{base}/files/foo_bar-1.0-py3-none-any.whl","hashes":{{"sha256":"{}"}}}}]}}"#,
            sha256_hex(&other),
            sha256_hex(&sdist),
            sha256_hex(&wheel)
        ),
    );
    // An index that only speaks PEP 503 HTML.
    store.put(
        "/simple/htmlpkg/",
        "text/html",
        format!(
            "<!DOCTYPE html><html><body><a href=\"../../files/htmlpkg-2.0.tar.gz#sha256={}\" \
             data-requires-python=\"&gt;=3.8\">htmlpkg-2.0.tar.gz</a></body></html>",
            sha256_hex(&html_sdist)
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let req = write(
        dir.path(),
        "requirements.txt",
        &format!(
            "--index-url {base}/simple\nFoo.Bar==1.0 \\\n    --hash=sha256:{} \\\n    --hash=sha256:{}\n",
            sha256_hex(&sdist),
            sha256_hex(&wheel)
        ),
    );
    let poetry = write(
        dir.path(),
        "poetry.lock",
        &format!(
            "[[package]]\nname = \"htmlpkg\"\nversion = \"2.0\"\nfiles = [\n  {{file = \"htmlpkg-2.0.tar.gz\", hash = \"sha256:{}\"}},\n]\n",
            sha256_hex(&html_sdist)
        ),
    );
    let uv = write(
        dir.path(),
        "uv.lock",
        &format!(
            "version = 1\n[[package]]\nname = \"uvpkg\"\nversion = \"3.0\"\nsource = {{ registry = \"{base}/simple\" }}\n\
             wheels = [\n  {{ url = \"{base}/files/uvpkg-3.0-py3-none-any.whl\", hash = \"sha256:{}\", size = 1 }},\n]\n",
            sha256_hex(&uv_wheel)
        ),
    );
    let p = TestProxy::start(opts()).await;
    let args = vec![
        req.display().to_string(),
        poetry.display().to_string(),
        uv.display().to_string(),
        "--pypi-index".into(),
        format!("{base}/simple/"),
    ];
    warm_twice(&p, &args, 4).await;
    assert_eq!(store.hits("/files/foo_bar-1.0.tar.gz"), 1);
    assert_eq!(store.hits("/files/htmlpkg-2.0.tar.gz"), 1);
    // Only the pinned version's files, chosen by digest.
    assert_eq!(store.hits("/files/foo_bar-0.9.tar.gz"), 0);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cargo_lock_through_the_sparse_config() {
    let store = Store::default();
    let origin = store.start().await;
    let base = origin.url("");
    let abcd = artifact("abcd-0.1.0.crate");
    let x = artifact("x-1.2.3.crate");
    store.put(
        "/index/config.json",
        "application/json",
        format!(
            r#"{{"dl":"{base}/crates/{{prefix}}/{{crate}}-{{version}}.crate","api":"{base}"}}"#
        ),
    );
    store.put(
        "/crates/ab/cd/abcd-0.1.0.crate",
        "application/x-tar",
        abcd.clone(),
    );
    store.put("/crates/1/x-1.2.3.crate", "application/x-tar", x.clone());
    let dir = tempfile::tempdir().unwrap();
    let lock = write(
        dir.path(),
        "Cargo.lock",
        &format!(
            "version = 4\n\n[[package]]\nname = \"app\"\nversion = \"0.1.0\"\ndependencies = [\"abcd\", \"x\"]\n\n\
             [[package]]\nname = \"abcd\"\nversion = \"0.1.0\"\nsource = \"sparse+{base}/index/\"\nchecksum = \"{}\"\n\n\
             [[package]]\nname = \"x\"\nversion = \"1.2.3\"\nsource = \"registry+https://index.example.org/git-index\"\nchecksum = \"{}\"\n",
            sha256_hex(&abcd),
            sha256_hex(&x)
        ),
    );
    let p = TestProxy::start(opts()).await;
    // The git-index source needs --cargo-index, naming its sparse equivalent.
    let args = vec![
        lock.display().to_string(),
        "--cargo-index".into(),
        format!("{base}/index"),
    ];
    warm_twice(&p, &args, 2).await;
    assert_eq!(store.hits("/crates/ab/cd/abcd-0.1.0.crate"), 1);
    p.shutdown().await;
}

fn module_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut w = zip::ZipWriter::new(&mut buf);
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, body) in files {
            w.start_file(*name, o).unwrap();
            w.write_all(body).unwrap();
        }
        w.finish().unwrap();
    }
    buf.into_inner()
}

#[tokio::test(flavor = "multi_thread")]
async fn go_sum_is_checked_with_dirhash_h1() {
    let store = Store::default();
    let origin = store.start().await;
    let base = origin.url("");
    let gomod: &[u8] = b"module example.org/Mod\n\ngo 1.22\n";
    let entries: [(&str, &[u8]); 3] = [
        ("example.org/!mod@v1.0.0/go.mod", gomod),
        ("example.org/!mod@v1.0.0/mod.go", b"package mod\n"),
        ("example.org/!mod@v1.0.0/LICENSE", b"license text\n"),
    ];
    // The zip names are as the module proxy serves them: module@version/path, with the
    // module path unescaped inside the zip.
    let entries: Vec<(String, &[u8])> = entries
        .iter()
        .map(|(n, b)| (n.replace("!mod", "Mod"), *b))
        .collect();
    let refs: Vec<(&str, &[u8])> = entries.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    let zip = module_zip(&refs);
    store.put("/example.org/!mod/@v/v1.0.0.zip", "application/zip", zip);
    store.put(
        "/example.org/!mod/@v/v1.0.0.mod",
        "text/plain",
        gomod.to_vec(),
    );
    let dir = tempfile::tempdir().unwrap();
    let sum = write(
        dir.path(),
        "go.sum",
        &format!(
            "example.org/Mod v1.0.0 {}\nexample.org/Mod v1.0.0/go.mod {}\n",
            go_h1(&refs),
            go_h1(&[("go.mod", gomod)])
        ),
    );
    let p = TestProxy::start(opts()).await;
    let args = vec![sum.display().to_string(), "--goproxy".into(), base.clone()];
    warm_twice(&p, &args, 2).await;

    // A go.sum whose zip hash is not the zip's: reported, exit 1.
    let bad = write(
        dir.path(),
        "bad.sum",
        &format!(
            "example.org/Mod v1.0.0 {}\n",
            go_h1(&[("example.org/Mod@v1.0.0/go.mod", &b"other"[..])])
        ),
    );
    let mut c = warm();
    c.args([
        "--proxy",
        &p.url(),
        "--progress",
        "none",
        "--goproxy",
        &base,
    ])
    .arg(format!("go:{}", bad.display()));
    let r = run(c).await;
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("FAILED example.org/Mod v1.0.0: integrity mismatch: go.sum says h1:"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains("1 failed"), "{}", r.stdout);
    p.shutdown().await;
}

// ---- failures ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn digest_mismatches_and_missing_files_fail_the_run() {
    let store = Store::default();
    let origin = store.start().await;
    let base = origin.url("");
    let good = artifact("good");
    store.put(
        "/good/-/good-1.0.0.tgz",
        "application/octet-stream",
        good.clone(),
    );
    store.put(
        "/evil/-/evil-1.0.0.tgz",
        "application/octet-stream",
        artifact("tampered"),
    );
    let dir = tempfile::tempdir().unwrap();
    let lock = write(
        dir.path(),
        "package-lock.json",
        &format!(
            r#"{{"lockfileVersion":3,"packages":{{
              "node_modules/good":{{"resolved":"{base}/good/-/good-1.0.0.tgz","integrity":"{}"}},
              "node_modules/evil":{{"resolved":"{base}/evil/-/evil-1.0.0.tgz","integrity":"{}"}},
              "node_modules/gone":{{"resolved":"{base}/gone/-/gone-1.0.0.tgz","integrity":"{}"}}}}}}"#,
            sri512(&good),
            sri512(&artifact("evil")),
            sri512(b"gone")
        ),
    );
    let p = TestProxy::start(opts()).await;
    let mut c = warm();
    c.args(["--proxy", &p.url(), "--progress", "none", "--retries", "0"])
        .arg(&lock);
    let r = run(c).await;
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "FAILED evil: integrity mismatch: the lockfile says {}, the artifact is {}",
            sri512(&artifact("evil")),
            sri512(&artifact("tampered"))
        )),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("FAILED gone: HTTP 404"), "{}", r.stderr);
    assert!(
        r.stdout
            .contains("3 artifacts: 1 fetched (1 stored by cuttle), 0 already cached"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("; 2 failed"), "{}", r.stdout);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_arguments_exit_2_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let pnpm = write(
        dir.path(),
        "pnpm-lock.yaml",
        &format!(
            "lockfileVersion: '9.0'\npackages:\n  a@1.0.0:\n    resolution: {{integrity: {}}}\n",
            sri512(b"a")
        ),
    );
    let other = write(dir.path(), "Gemfile.lock", "GEM\n");
    let broken = write(dir.path(), "package-lock.json", "{not json");
    let mut c = warm();
    c.args(["--proxy", "http://127.0.0.1:9"])
        .arg(&pnpm)
        .arg(&other)
        .arg(&broken)
        .arg(dir.path().join("go.sum"));
    let r = run(c).await;
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    for want in [
        "give --npm-registry URL",
        "Gemfile.lock: unknown lockfile kind",
        "package-lock.json: not JSON",
        "go.sum: No such file",
    ] {
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
    }
    let mut c = warm();
    c.arg(&pnpm)
        .args(["--npm-registry", "http://registry.example.org/"]);
    let r = run(c).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("give --proxy URL"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_credentials_in_the_url_and_never_in_the_output() {
    let store = Store::default();
    let origin = store.start().await;
    let a = artifact("behind-auth");
    store.put("/a/-/a-1.0.0.tgz", "application/octet-stream", a.clone());
    let dir = tempfile::tempdir().unwrap();
    let lock = write(
        dir.path(),
        "package-lock.json",
        &format!(
            r#"{{"lockfileVersion":3,"packages":{{"node_modules/a":{{"resolved":"{}","integrity":"{}"}}}}}}"#,
            origin.url("/a/-/a-1.0.0.tgz"),
            sri512(&a)
        ),
    );
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("builder:{}\n", bcrypt::hash("s3cret-Pw", 4).unwrap()),
    )
    .unwrap();
    let mut o = opts();
    o.auth_file = Some(htpasswd);
    let p = TestProxy::start(o).await;
    let with = |pass: &str| format!("http://builder:{pass}@{}", p.addr);
    let mut c = warm();
    c.args([
        "--proxy",
        &with("s3cret-Pw"),
        "--progress",
        "plain",
        "--retries",
        "0",
    ])
    .arg(&lock);
    let r = run(c).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("1 fetched (1 stored by cuttle)"),
        "{}",
        r.stdout
    );
    // A wrong password: the failure names the status, and no output carries the password.
    let mut c = warm();
    c.args([
        "--proxy",
        &with("Wr0ng-Pw"),
        "--progress",
        "plain",
        "--retries",
        "0",
    ])
    .arg(&lock);
    let r = run(c).await;
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("FAILED a: HTTP 407"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("Wr0ng") && !r.stdout.contains("Wr0ng"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    p.shutdown().await;
}

// ---- https and mirrors ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn https_artifacts_are_cached_through_interception() {
    let store = Store::default();
    let origin = store.start_tls().await;
    let a = artifact("secure");
    store.put("/s/-/s-1.0.0.tgz", "application/octet-stream", a.clone());
    let dir = tempfile::tempdir().unwrap();
    let lock = write(
        dir.path(),
        "package-lock.json",
        &format!(
            r#"{{"lockfileVersion":3,"packages":{{"node_modules/s":{{"resolved":"{}","integrity":"{}"}}}}}}"#,
            origin.url("/s/-/s-1.0.0.tgz"),
            sri512(&a)
        ),
    );
    let p = TestProxy::start(intercepting(&origin)).await;
    let ca = proxy_ca(&p, dir.path()).await;
    warm_twice(
        &p,
        &[
            lock.display().to_string(),
            "--ca-cert".into(),
            ca.display().to_string(),
        ],
        1,
    )
    .await;
    assert_eq!(store.hits("/s/-/s-1.0.0.tgz"), 1);

    // Without interception the artifact still arrives (and is checked), but cuttle only saw
    // a tunnel: the summary says it was not stored.
    let mut o = opts();
    o.upstream_ca = Some(origin.ca_file.clone());
    let blind = TestProxy::start(o).await;
    let mut c = warm();
    c.args(["--proxy", &blind.url(), "--progress", "none", "--ca-cert"])
        .arg(&origin.ca_file)
        .arg(&lock);
    let r = run(c).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("1 fetched (0 stored by cuttle)")
            && r.stdout.contains("1 fetched but not stored by cuttle"),
        "{}",
        r.stdout
    );
    blind.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_routes_take_upstream_urls_without_a_proxy() {
    // The origin stands in for cuttle's mirror routes: it serves the npm mirror under /npm/
    // and a files mirror under /files-mirror/. The upstream hosts are never contacted (they
    // do not resolve).
    let store = Store::default();
    let mirror = store.start().await;
    let a = artifact("m-a");
    let b = artifact("m-b");
    store.put(
        "/npm/a/-/a-1.0.0.tgz",
        "application/octet-stream",
        a.clone(),
    );
    store.put(
        "/npm/@s/b/-/b-2.0.0.tgz",
        "application/octet-stream",
        b.clone(),
    );
    let w = artifact("w.whl");
    store.put(
        "/files-mirror/p/w-1.0-py3-none-any.whl",
        "application/zip",
        w.clone(),
    );
    let dir = tempfile::tempdir().unwrap();
    let lock = write(
        dir.path(),
        "package-lock.json",
        &format!(
            r#"{{"lockfileVersion":3,"packages":{{
              "node_modules/a":{{"resolved":"https://registry.example.org/a/-/a-1.0.0.tgz","integrity":"{}"}},
              "node_modules/z":{{"resolved":"https://elsewhere.example.org/z.tgz","integrity":"{}"}}}}}}"#,
            sri512(&a),
            sri512(b"z")
        ),
    );
    let pnpm = write(
        dir.path(),
        "pnpm-lock.yaml",
        &format!(
            "lockfileVersion: '6.0'\npackages:\n  /@s/b@2.0.0:\n    resolution: {{integrity: {}}}\n",
            sri512(&b)
        ),
    );
    let uv = write(
        dir.path(),
        "uv.lock",
        &format!(
            "version = 1\n[[package]]\nname = \"w\"\nversion = \"1.0\"\n\
             wheels = [{{ url = \"https://files.example.org/p/w-1.0-py3-none-any.whl\", hash = \"sha256:{}\" }}]\n",
            sha256_hex(&w)
        ),
    );
    let mut c = warm();
    c.args([
        "--progress",
        "none",
        "--retries",
        "0",
        "--mirror",
        &format!("https://registry.example.org/={}", mirror.url("/npm/")),
        "--mirror",
        &format!("https://files.example.org={}", mirror.url("/files-mirror")),
        "--npm-registry",
        "https://registry.example.org",
    ])
    .arg(&lock)
    .arg(&pnpm)
    .arg(&uv);
    let r = run(c).await;
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(store.hits("/npm/a/-/a-1.0.0.tgz"), 1);
    assert_eq!(store.hits("/npm/@s/b/-/b-2.0.0.tgz"), 1);
    assert_eq!(store.hits("/files-mirror/p/w-1.0-py3-none-any.whl"), 1);
    assert!(
        r.stderr
            .contains("FAILED z: no --mirror covers https://elsewhere.example.org/z.tgz, and no --proxy was given"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains("4 artifacts: 3 fetched"), "{}", r.stdout);
}

// ---- progress -----------------------------------------------------------------------------

/// Three artifacts, the last held at the origin until the test lets it go.
async fn held_setup(store: &Store, dir: &Path, base: &str) -> (PathBuf, Arc<Semaphore>) {
    let mut entries = Vec::new();
    for n in ["p1", "p2", "p3"] {
        let body = artifact(n);
        store.put(
            &format!("/{n}/-/{n}-1.0.0.tgz"),
            "application/octet-stream",
            body.clone(),
        );
        entries.push(format!(
            r#""node_modules/{n}":{{"resolved":"{base}/{n}/-/{n}-1.0.0.tgz","integrity":"{}"}}"#,
            sri512(&body)
        ));
    }
    let gate = store.hold("/p3/-/p3-1.0.0.tgz");
    let lock = write(
        dir,
        "package-lock.json",
        &format!(
            r#"{{"lockfileVersion":3,"packages":{{{}}}}}"#,
            entries.join(",")
        ),
    );
    (lock, gate)
}

/// Reads a child's output as it comes (in raw chunks: a bar redraws with `\r`, not lines).
fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let o2 = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            o2.lock().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}

async fn wait_for(out: &Mutex<String>, what: &str, pred: impl Fn(&str) -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !pred(&out.lock()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what} within {DEADLINE:?}: {:?}",
            out.lock()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn plain_line(s: &str) -> bool {
    s.lines()
        .any(|l| l.starts_with("warm: ") && l.contains("/3 objects, ") && l.contains("/s, ETA "))
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_progress_lines_when_stderr_is_not_a_terminal() {
    let store = Store::default();
    let origin = store.start().await;
    let dir = tempfile::tempdir().unwrap();
    let (lock, gate) = held_setup(&store, dir.path(), &origin.url("")).await;
    let p = TestProxy::start(opts()).await;
    // `auto` with stderr on a pipe: plain lines.
    let mut child = warm()
        .args([
            "--proxy",
            &p.url(),
            "--progress",
            "auto",
            "--progress-interval",
            "100ms",
        ])
        .arg(&lock)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    // While p3 is held, the periodic line shows the other two done.
    wait_for(&stderr, "progress line with 2/3", |s| {
        s.lines().any(|l| l.starts_with("warm: 2/3 objects, "))
    })
    .await;
    gate.add_permits(10);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    let err = stderr.lock().clone();
    assert!(plain_line(&err), "{err}");
    assert!(!err.contains('\r') && !err.contains("\x1b["), "{err:?}");
    // The last line is the final state.
    assert!(
        err.lines().any(|l| l.starts_with("warm: 3/3 objects, ")),
        "{err}"
    );
    wait_for(&stdout, "summary", |s| s.contains("3 artifacts: 3 fetched")).await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_progress_bar_on_a_terminal() {
    let store = Store::default();
    let origin = store.start().await;
    let dir = tempfile::tempdir().unwrap();
    let (lock, gate) = held_setup(&store, dir.path(), &origin.url("")).await;
    let p = TestProxy::start(opts()).await;
    // script(1) gives the command a pseudo-terminal: stderr is a terminal there.
    let cmd = format!(
        "'{CUTTLE_BIN}' warm --proxy '{}' --progress-interval 100ms '{}'",
        p.url(),
        lock.display()
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-f", "-c", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .env("COLUMNS", "160")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux is needed");
    let out = collect(child.stdout.take().unwrap());
    wait_for(&out, "progress bar showing 2/3", |s| {
        s.contains("2/3 objects, ")
    })
    .await;
    gate.add_permits(10);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let screen = out.lock().clone();
    assert!(status.success(), "{screen:?}");
    // The bar: objects, bytes, rate and ETA, redrawn in place with terminal controls.
    assert!(screen.contains("/3 objects, "), "{screen:?}");
    assert!(screen.contains("/s, ETA "), "{screen:?}");
    assert!(
        screen.contains('\r') || screen.contains("\x1b["),
        "{screen:?}"
    );
    // Not the periodic plain lines: only the final one, after the bar is cleared.
    let plain = screen
        .match_indices("warm: ")
        .filter(|(i, _)| {
            let rest = &screen[i + 6..];
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            digits > 0 && rest[digits..].starts_with("/3 objects")
        })
        .count();
    assert_eq!(plain, 1, "{screen:?}");
    assert!(screen.contains("3 artifacts: 3 fetched"), "{screen:?}");
    p.shutdown().await;
}

//! Launchers for the programs a test starts (curl, the cuttle binary, real clients), each
//! with the machine's proxy and trust settings removed the same way: a developer's
//! `https_proxy` or `SSL_CERT_FILE` must never decide a test's result.

use std::path::Path;
use std::process::{Command, Output};

/// Variables that send a client through another proxy or make it trust other roots (curl,
/// OpenSSL, Python's requests, Node): removed from every program a test starts.
pub const CLIENT_ENV: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "CURL_CA_BUNDLE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
];

/// The cuttle binary Cargo built for these tests.
pub const CUTTLE_BIN: &str = env!("CARGO_BIN_EXE_cuttle");

/// `program` with none of [`CLIENT_ENV`].
pub fn client(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    for v in CLIENT_ENV {
        c.env_remove(v);
    }
    c
}

/// curl, scrubbed like every client; fails loudly when curl is missing.
pub fn curl() -> Command {
    let probe = Command::new("curl").arg("--version").output();
    assert!(
        probe.is_ok(),
        "curl not found: run scripts/test.sh or apt-get install curl"
    );
    client("curl")
}

/// Runs curl with `args` off the runtime's threads (cuttle and the origins run in this
/// process, so a blocking wait would stall them).
pub async fn run_curl<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = curl();
    c.args(args);
    tokio::process::Command::from(c)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

/// curl through `proxy` trusting only the PEM file `ca`, silent but for errors, with `args`
/// (URLs, -o, -w ...) after.
pub async fn curl_via(proxy: &str, ca: &Path, args: &[&str]) -> Output {
    let mut a: Vec<std::ffi::OsString> = ["-sS", "--max-time", "30", "--proxy", proxy, "--cacert"]
        .iter()
        .map(Into::into)
        .collect();
    a.push(ca.into());
    a.extend(args.iter().map(Into::into));
    run_curl(a).await
}

/// The cuttle binary, scrubbed like every client and with none of this machine's
/// `CUTTLE_*` or `CACHE_PEER*` settings.
pub fn cuttle() -> Command {
    let mut c = client(CUTTLE_BIN);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CUTTLE_") || k.starts_with("CACHE_PEER") {
            c.env_remove(&*k);
        }
    }
    c
}

/// What a package client printed, and whether it succeeded.
pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Fails the test with the client's output unless it succeeded; `what` names the run.
    #[track_caller]
    pub fn expect_ok(&self, what: &str) {
        assert!(self.ok, "{what} failed:\n{}\n{}", self.stdout, self.stderr);
    }
}

/// A package client (npm, pip, cargo...) as an async command: scrubbed like every client, and
/// without the clients' own settings from the environment (`PIP_*`, `npm_config_*`).
pub fn package_client(program: &str) -> tokio::process::Command {
    let mut cmd = client(program);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if k.starts_with("PIP_") || k.to_ascii_lowercase().starts_with("npm_config_") {
            cmd.env_remove(k);
        }
    }
    tokio::process::Command::from(cmd)
}

/// Runs a client to completion, killed after `deadline`.
pub async fn run_client(mut cmd: tokio::process::Command, deadline: std::time::Duration) -> Ran {
    cmd.kill_on_drop(true);
    let desc = format!("{cmd:?}");
    let out = tokio::time::timeout(deadline, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{desc} did not finish within {deadline:?}"))
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// cargo itself (the one running these tests), with none of the build's `CARGO_*` settings
/// and its home in `home`.
pub fn cargo_cmd(home: &Path) -> tokio::process::Command {
    let mut c = package_client(env!("CARGO"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") {
            c.env_remove(k);
        }
    }
    c.env("CARGO_HOME", home).env("CARGO_TERM_COLOR", "never");
    c
}

/// Makes `<name>-1.0.0.crate` (with `lib_rs` as its library) with `cargo package`, offline.
pub async fn cargo_package(
    dir: &Path,
    name: &str,
    lib_rs: &str,
    deadline: std::time::Duration,
) -> Vec<u8> {
    let src = dir.join("crate-src");
    std::fs::create_dir_all(src.join("src")).unwrap();
    std::fs::write(
        src.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"1.0.0\"\nedition = \"2021\"\n\
             license = \"MIT\"\ndescription = \"cuttle test crate\"\n\n[workspace]\n"
        ),
    )
    .unwrap();
    std::fs::write(src.join("src/lib.rs"), lib_rs).unwrap();
    let mut c = cargo_cmd(&dir.join("package-home"));
    c.args([
        "package",
        "--no-verify",
        "--allow-dirty",
        "--offline",
        "--quiet",
    ])
    .current_dir(&src);
    let r = run_client(c, deadline).await;
    assert!(r.ok, "cargo package failed: {}", r.stderr);
    std::fs::read(src.join(format!("target/package/{name}-1.0.0.crate"))).unwrap()
}

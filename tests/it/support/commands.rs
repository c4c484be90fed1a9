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

//! A real Squid (the Debian package) started as an authenticating parent proxy for
//! integration tests: one private instance per call, on a free 127.0.0.1 port, killed on drop.
//!
//! Squid here is a pure forwarder (`cache deny all`): every request it accepts reaches the
//! origin, so a test counting origin hits sees what cuttle sent, not what Squid kept.
//! It requires Basic proxy authentication (`basic_ncsa_auth` against a bcrypt htpasswd
//! file), allows CONNECT to any port and may reach origins on 127.0.0.1.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]
#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test support: clippy's allow-*-in-tests only covers #[test] fns and #[cfg(test)] \
              modules, and a broken test setup must fail the test loudly"
)]

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const NOT_FOUND: &str = "squid not found: run scripts/test.sh or apt-get install squid";
/// Startup of Squid 5 takes ~0.1 s on loopback; the margin is for loaded CI machines.
const READY_DEADLINE: Duration = Duration::from_secs(20);
const BIND_ATTEMPTS: usize = 5;
/// Squid writes an access.log line when a transaction ends, which can be after the client
/// has read the whole response (and, for CONNECT, only once the tunnel is closed).
const LOG_DEADLINE: Duration = Duration::from_secs(10);

/// Runs squid and ties its life to our stdin pipe: when the test process goes away without
/// running `Drop` (abort, SIGKILL, timeout), the pipe closes and the watcher kills squid.
/// A squid killed with SIGKILL leaves its `/dev/shm/<service>-*` segments behind; they are
/// removed here. Arguments: squid binary, config file, service name.
const WRAPPER: &str = r#"
exec 3<&0
"$1" -N -n "$3" -f "$2" </dev/null &
squid=$!
( read -r _ <&3; kill -9 "$squid" 2>/dev/null ) &
watcher=$!
exec 3<&-
wait "$squid"
rc=$?
kill "$watcher" 2>/dev/null
rm -f /dev/shm/"$3"-*
exit "$rc"
"#;

pub(crate) static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// A running Squid requiring `Proxy-Authorization: Basic base64(user:password)`.
pub struct SquidParent {
    pub addr: std::net::SocketAddr,
    user: String,
    password: String,
    // Declared before `dir`: squid must be gone before its directory is removed.
    process: SquidProcess,
    dir: tempfile::TempDir,
}

impl SquidParent {
    /// Starts squid requiring Basic proxy auth for `user`/`password` (both may contain '@',
    /// '%', '\\'; ':' only in the password, as Basic splits at the first colon).
    pub async fn start(user: &str, password: &str) -> SquidParent {
        assert!(
            !user.contains(':'),
            "a Basic-auth user name cannot contain ':' (RFC 7617)"
        );
        assert!(
            !user.chars().chain(password.chars()).any(char::is_control),
            "control characters are not supported in squid test credentials"
        );
        let squid = find_squid();
        let helper = find_helper();

        let dir = tempfile::Builder::new()
            .prefix("cuttle-squid-")
            .tempdir()
            .expect("create squid tempdir");
        let dir_str = dir.path().to_str().expect("utf-8 tempdir path").to_owned();
        assert!(
            !dir_str.contains(char::is_whitespace),
            "squid.conf cannot take a path with spaces: {dir_str}"
        );
        // Squid started as root drops privileges to `proxy`; it and its auth helper must
        // still read the password file and write the logs in here.
        set_mode(dir.path(), 0o777);
        let passwd = dir.path().join("passwd");
        // basic_ncsa_auth checks with crypt(3), and libxcrypt knows bcrypt ($2b$).
        let hash = bcrypt::hash(password, 4).expect("bcrypt hash");
        std::fs::write(&passwd, format!("{user}:{hash}\n")).expect("write passwd");
        set_mode(&passwd, 0o644);
        for log in ["cache.log", "access.log", "squid.out"] {
            create_log(&dir.path().join(log));
        }

        let service = format!(
            "cuttletest{}n{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        );
        let conf = dir.path().join("squid.conf");
        let mut last_failure = String::new();
        for _ in 0..BIND_ATTEMPTS {
            let port = free_port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            std::fs::write(&conf, squid_conf(port, &dir_str, &helper)).expect("write squid.conf");
            set_mode(&conf, 0o644);
            let mut process = SquidProcess::spawn(&squid, &conf, &service, dir.path());
            match process.wait_ready(addr, dir.path()).await {
                Ok(()) => {
                    return SquidParent {
                        addr,
                        user: user.to_owned(),
                        password: password.to_owned(),
                        process,
                        dir,
                    };
                }
                Err(failure) => {
                    last_failure = failure;
                    process.stop();
                    // The next attempt starts from empty logs, so a panic shows the last one.
                    for log in ["cache.log", "squid.out"] {
                        create_log(&dir.path().join(log));
                    }
                }
            }
        }
        panic!("squid could not bind a port in {BIND_ATTEMPTS} attempts:\n{last_failure}");
    }

    /// Lines of squid's access.log so far (to assert which requests went through it).
    /// Squid's native format: `time elapsed client result/status bytes method URL user
    /// hierarchy/peer type`, e.g. `... TCP_MISS/200 551 GET http://127.0.0.1:41234/x?y=1
    /// corp\\build@x HIER_DIRECT/127.0.0.1 text/plain` (a `\` in a user name is logged
    /// doubled; query strings are kept).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Waits until access.log contains `needle` and returns the whole log. A line is written
    /// when the transaction ends, which can be just after the client saw the response (for a
    /// CONNECT: after the tunnel closed). Panics with the log after 10 s.
    pub async fn wait_for_access_log(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + LOG_DEADLINE;
        loop {
            let log = self.access_log();
            if log.contains(needle) {
                return log;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("squid access.log has no {needle:?} after {LOG_DEADLINE:?}:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Squid's cache.log (its diagnostics), for failure messages.
    pub fn cache_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cache.log")).unwrap_or_default()
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// `http://127.0.0.1:PORT`, without credentials.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The value of `Proxy-Authorization` Squid accepts: `Basic base64(user:password)`.
    pub fn proxy_authorization(&self) -> String {
        use base64::Engine as _;
        let raw = format!("{}:{}", self.user, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    /// This parent in the `CACHE_PEER` form:
    /// `url_encoded_user:url_encoded_password:127.0.0.1:PORT`.
    pub fn cache_peer(&self) -> String {
        use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
        format!(
            "{}:{}:{}:{}",
            utf8_percent_encode(&self.user, NON_ALPHANUMERIC),
            utf8_percent_encode(&self.password, NON_ALPHANUMERIC),
            self.addr.ip(),
            self.addr.port()
        )
    }
}

impl Drop for SquidParent {
    fn drop(&mut self) {
        // Explicit although `process` would drop first anyway: squid dies before `dir` goes.
        self.process.stop();
    }
}

/// The `/bin/sh` wrapper running squid (see `WRAPPER`).
pub(crate) struct SquidProcess {
    wrapper: Option<Child>,
    /// Closing it tells the wrapper to kill squid.
    stdin: Option<ChildStdin>,
}

impl SquidProcess {
    pub(crate) fn spawn(squid: &Path, conf: &Path, service: &str, dir: &Path) -> SquidProcess {
        let out = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("squid.out"))
            .expect("open squid.out");
        let err = out.try_clone().expect("clone squid.out");
        let mut wrapper = Command::new("/bin/sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("cuttle-squid-wrapper")
            .arg(squid)
            .arg(conf)
            .arg(service)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn /bin/sh for {}: {e}", squid.display()));
        let stdin = wrapper.stdin.take();
        SquidProcess {
            wrapper: Some(wrapper),
            stdin,
        }
    }

    /// Ok once squid answers an HTTP request on `addr`; Err(diagnostics) when squid exited
    /// because the port was taken meanwhile. Panics on any other failure.
    pub(crate) async fn wait_ready(&mut self, addr: SocketAddr, dir: &Path) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        loop {
            let exited = self
                .wrapper
                .as_mut()
                .and_then(|w| w.try_wait().ok().flatten());
            if let Some(status) = exited {
                let diagnostics = diagnostics(dir);
                if diagnostics.contains("Address already in use") {
                    return Err(diagnostics);
                }
                panic!("squid exited during startup ({status}):\n{diagnostics}");
            }
            if probe(addr).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "squid did not answer on {addr} within {READY_DEADLINE:?}:\n{}",
                    diagnostics(dir)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Kills squid and waits for it and the wrapper to exit (a few milliseconds).
    #[allow(
        clippy::disallowed_methods,
        reason = "Drop cannot await; this blocks only while squid dies after SIGKILL"
    )]
    pub(crate) fn stop(&mut self) {
        // EOF on the wrapper's stdin: its watcher SIGKILLs squid, the wrapper reaps it,
        // removes squid's shared memory segments and exits.
        drop(self.stdin.take());
        let Some(mut wrapper) = self.wrapper.take() else {
            return;
        };
        for _ in 0..1000 {
            match wrapper.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        // Not expected: the wrapper did not finish in 5 s. Kill it rather than hang the test.
        let _ = wrapper.kill();
        let _ = wrapper.wait();
    }
}

impl Drop for SquidProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn diagnostics(dir: &Path) -> String {
    let mut text = String::new();
    for name in ["squid.conf", "cache.log", "squid.out"] {
        let content = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let _ = write!(text, "--- {name} ---\n{content}\n");
    }
    text
}

pub(crate) fn create_log(path: &Path) {
    std::fs::write(path, "").unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    set_mode(path, 0o666);
}

/// Sends a request only the probe rule in squid.conf matches (denied, not logged) and
/// checks that the answer comes from Squid and not from some other program on the port.
async fn probe(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(
                b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\
                  X-Cuttle-Probe: ready\r\nConnection: close\r\n\r\n",
            )
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
        Some(text.starts_with("http/1.") && text.contains("squid"))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

fn squid_conf(port: u16, dir: &str, helper: &Path) -> String {
    let helper = helper.display();
    format!(
        "\
# Written by tests/support/squid.rs: an authenticating parent proxy for cuttle's tests.
http_port 127.0.0.1:{port}
visible_hostname cuttle-test-squid
pid_filename none
coredump_dir none
cache_log {dir}/cache.log
cache_store_log none
logfile_rotate 0
strip_query_terms off
pinger_enable off
icp_port 0
htcp_port 0
shutdown_lifetime 0 seconds
via on
cache deny all

auth_param basic program {helper} {dir}/passwd
auth_param basic children 5 startup=1 idle=1
auth_param basic realm cuttle-test-squid

acl cuttle_probe req_header X-Cuttle-Probe ^ready$
acl authed proxy_auth REQUIRED
http_access deny cuttle_probe
http_access allow authed
http_access deny all

access_log stdio:{dir}/access.log !cuttle_probe
"
    )
}

pub(crate) fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A port that was free a moment ago; squid may lose a race for it, hence the retries.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

pub(crate) fn find_squid() -> PathBuf {
    if let Some(path) = std::env::var_os("CUTTLE_TEST_SQUID") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{NOT_FOUND} (CUTTLE_TEST_SQUID={})",
            path.display()
        );
        return path;
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("squid"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{NOT_FOUND}"))
}

fn find_helper() -> PathBuf {
    [
        "/usr/lib/squid",
        "/usr/lib64/squid",
        "/usr/libexec/squid",
        "/usr/local/libexec/squid",
    ]
    .iter()
    .map(|d| Path::new(d).join("basic_ncsa_auth"))
    .find(|p| p.is_file())
    .unwrap_or_else(|| panic!("{NOT_FOUND} (basic_ncsa_auth is missing)"))
}

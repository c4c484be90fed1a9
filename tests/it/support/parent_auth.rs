//! Parents that want NTLM or Kerberos, for tests/parent_auth.rs: a real Squid with
//! `ntlm_fake_auth` (the full three-message NTLM exchange, any password), a throwaway MIT KDC
//! with its own realm in a temporary directory on 127.0.0.1, and a Squid whose
//! `negotiate_kerberos_auth` checks tickets against that KDC's keytab. Everything dies with
//! the value that owns it.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]
#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a broken test setup must fail the test loudly"
)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::squid::{
    INSTANCE, SquidProcess, create_log, diagnostics, find_squid, free_port, set_mode,
};

pub const REALM: &str = "CUTTLE.TEST";
/// A user with a password.
pub const USER: &str = "build";
pub const USER_PASSWORD: &str = "Kerb-pass-9x7";
/// A service principal with a random key, used through a keytab.
pub const ROBOT: &str = "robot";

const LOG_DEADLINE: Duration = Duration::from_secs(10);

/// How the Squid parent authenticates.
pub enum ParentKind<'a> {
    /// `ntlm_fake_auth`: NTLM only.
    Ntlm,
    /// `negotiate_kerberos_auth` against `kdc`: Negotiate only.
    Negotiate(&'a Kdc),
}

/// A Squid parent that accepts only NTLM or only Negotiate.
pub struct AuthSquid {
    pub addr: SocketAddr,
    process: SquidProcess,
    dir: tempfile::TempDir,
}

impl AuthSquid {
    pub async fn start(kind: ParentKind<'_>) -> AuthSquid {
        let squid = find_squid();
        let dir = tempfile::Builder::new()
            .prefix("cuttle-authsquid-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path().to_str().expect("utf-8 path").to_owned();
        set_mode(dir.path(), 0o777);
        for log in ["cache.log", "access.log", "squid.out", "helper.log"] {
            create_log(&dir.path().join(log));
        }
        let auth = match kind {
            ParentKind::Ntlm => {
                let helper = helper("ntlm_fake_auth");
                format!(
                    "auth_param ntlm program {}\nauth_param ntlm children 3\n",
                    helper.display()
                )
            }
            ParentKind::Negotiate(kdc) => {
                // The helper needs KRB5_CONFIG; squid passes no environment of its own to it.
                let script = dir.path().join("negotiate.sh");
                std::fs::write(
                    &script,
                    format!(
                        "#!/bin/sh\nKRB5_CONFIG={} exec {} -k {} -s HTTP/localhost@{REALM} 2>>{d}/helper.log\n",
                        kdc.krb5_conf().display(),
                        helper("negotiate_kerberos_auth").display(),
                        kdc.squid_keytab().display(),
                    ),
                )
                .expect("write negotiate.sh");
                set_mode(&script, 0o755);
                format!(
                    "auth_param negotiate program {}\nauth_param negotiate children 3\n\
                     auth_param negotiate keep_alive on\n",
                    script.display()
                )
            }
        };
        let service = format!(
            "cuttleauth{}n{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        );
        let conf = dir.path().join("squid.conf");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            std::fs::write(&conf, squid_conf(port, &d, &auth)).expect("write squid.conf");
            set_mode(&conf, 0o644);
            let mut process = SquidProcess::spawn(&squid, &conf, &service, dir.path());
            match process.wait_ready(addr, dir.path()).await {
                Ok(()) => return AuthSquid { addr, process, dir },
                Err(e) => {
                    last = e;
                    process.stop();
                    for log in ["cache.log", "squid.out"] {
                        create_log(&dir.path().join(log));
                    }
                }
            }
        }
        panic!("squid could not bind a port:\n{last}");
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    pub fn diagnostics(&self) -> String {
        let helper =
            std::fs::read_to_string(self.dir.path().join("helper.log")).unwrap_or_default();
        format!(
            "{}\n--- helper.log ---\n{helper}",
            diagnostics(self.dir.path())
        )
    }

    /// Waits until access.log has `needle` (lines are written when a transaction ends).
    pub async fn wait_for_access_log(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + LOG_DEADLINE;
        loop {
            let log = self.access_log();
            if log.contains(needle) {
                return log;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "squid access.log has no {needle:?}:\n{log}\n{}",
                    self.diagnostics()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Lines of access.log containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.access_log()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

fn squid_conf(port: u16, dir: &str, auth: &str) -> String {
    format!(
        "\
# Written by tests/support/parent_auth.rs: a parent that wants NTLM or Kerberos.
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

{auth}
acl cuttle_probe req_header X-Cuttle-Probe ^ready$
acl authed proxy_auth REQUIRED
http_access deny cuttle_probe
http_access allow authed
http_access deny all

access_log stdio:{dir}/access.log !cuttle_probe
"
    )
}

fn helper(name: &str) -> PathBuf {
    ["/usr/lib/squid", "/usr/lib64/squid", "/usr/libexec/squid"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: run scripts/test.sh (package squid)"))
}

fn sbin(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/local/sbin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found: run scripts/test.sh (packages krb5-kdc, krb5-admin-server)")
        })
}

fn faketime() -> PathBuf {
    let p = PathBuf::from("/usr/bin/faketime");
    assert!(
        p.is_file(),
        "faketime not found: run scripts/test.sh (package faketime)"
    );
    p
}

/// A throwaway MIT KDC for the realm [`REALM`] on 127.0.0.1, with the principals
/// `build` (password [`USER_PASSWORD`]), `robot` (random key, in [`Kdc::robot_keytab`]) and
/// `HTTP/localhost` (in [`Kdc::squid_keytab`]).
pub struct Kdc {
    pub port: u16,
    child: Option<Child>,
    /// A `faketime` offset for the KDC's clock (e.g. `+1h`), to test clock skew.
    clock_offset: Option<String>,
    dir: tempfile::TempDir,
}

impl Kdc {
    pub fn start() -> Kdc {
        Self::start_inner(None)
    }

    /// A KDC whose clock is `offset` (faketime syntax, e.g. `+1h`) away from this machine's.
    pub fn start_skewed(offset: &str) -> Kdc {
        Self::start_inner(Some(offset.to_string()))
    }

    fn start_inner(clock_offset: Option<String>) -> Kdc {
        let dir = tempfile::Builder::new()
            .prefix("cuttle-kdc-")
            .tempdir()
            .expect("tempdir");
        // Squid's helper (user `proxy`) reads krb5.conf and its keytab in here.
        set_mode(dir.path(), 0o755);
        let mut kdc = Kdc {
            port: 0,
            child: None,
            clock_offset,
            dir,
        };
        let mut last = String::new();
        for attempt in 0..5 {
            kdc.port = free_port();
            kdc.write_configs();
            if attempt == 0 {
                kdc.create_realm();
            }
            match kdc.spawn() {
                Ok(()) => return kdc,
                Err(e) => last = e,
            }
        }
        panic!("krb5kdc did not start:\n{last}");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn krb5_conf(&self) -> PathBuf {
        self.path("krb5.conf")
    }

    pub fn squid_keytab(&self) -> PathBuf {
        self.path("squid.keytab")
    }

    pub fn robot_keytab(&self) -> PathBuf {
        self.path("robot.keytab")
    }

    pub fn kdc_addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn write_configs(&self) {
        let d = self.dir.path().display();
        let port = self.port;
        std::fs::write(
            self.krb5_conf(),
            format!(
                "[libdefaults]\n  default_realm = {REALM}\n  dns_lookup_realm = false\n  \
                 dns_lookup_kdc = false\n  rdns = false\n  udp_preference_limit = 1\n\
                 [realms]\n  {REALM} = {{\n    kdc = 127.0.0.1:{port}\n  }}\n\
                 [domain_realm]\n  localhost = {REALM}\n"
            ),
        )
        .expect("write krb5.conf");
        set_mode(&self.krb5_conf(), 0o644);
        std::fs::write(
            self.path("kdc.conf"),
            format!(
                "[kdcdefaults]\n  kdc_listen = 127.0.0.1:{port}\n  kdc_tcp_listen = 127.0.0.1:{port}\n\
                 [realms]\n  {REALM} = {{\n    database_name = {d}/principal\n    \
                 key_stash_file = {d}/stash\n    acl_file = {d}/kadm5.acl\n    \
                 max_life = 10h\n    max_renewable_life = 1d\n  }}\n\
                 [logging]\n  kdc = FILE:{d}/kdc.log\n"
            ),
        )
        .expect("write kdc.conf");
        std::fs::write(self.path("kadm5.acl"), "").expect("write kadm5.acl");
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(sbin(program));
        c.env("KRB5_CONFIG", self.krb5_conf())
            .env("KRB5_KDC_PROFILE", self.path("kdc.conf"))
            .stdin(Stdio::null());
        c
    }

    fn run(&self, mut c: Command, what: &str) {
        let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs one `kadmin.local` query.
    pub fn kadmin(&self, query: &str) {
        let mut c = self.command("kadmin.local");
        c.args(["-r", REALM, "-q", query]);
        self.run(c, &format!("kadmin.local {query}"));
    }

    fn create_realm(&self) {
        let mut c = self.command("kdb5_util");
        c.args(["create", "-s", "-r", REALM, "-P", "master-key-for-tests"]);
        self.run(c, "kdb5_util create");
        self.kadmin(&format!("addprinc -pw {USER_PASSWORD} {USER}"));
        self.kadmin(&format!("addprinc -randkey {ROBOT}"));
        self.kadmin("addprinc -randkey HTTP/localhost");
        self.kadmin(&format!(
            "ktadd -k {} HTTP/localhost",
            self.squid_keytab().display()
        ));
        self.kadmin(&format!(
            "ktadd -k {} {ROBOT}",
            self.robot_keytab().display()
        ));
        set_mode(&self.squid_keytab(), 0o644);
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "runs before the test's servers exist, or while the KDC is all a test waits for"
    )]
    fn spawn(&mut self) -> Result<(), String> {
        let mut c = match &self.clock_offset {
            None => self.command("krb5kdc"),
            Some(offset) => {
                let mut c = Command::new(faketime());
                c.env("KRB5_CONFIG", self.krb5_conf())
                    .env("KRB5_KDC_PROFILE", self.path("kdc.conf"))
                    .stdin(Stdio::null())
                    .args(["-f", offset])
                    .arg(sbin("krb5kdc"));
                c
            }
        };
        c.args(["-n", "-r", REALM])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = c.spawn().map_err(|e| e.to_string())?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("krb5kdc exited ({status}):\n{}", self.log()));
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("krb5kdc not listening:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the KDC (for the "KDC down" case); [`Kdc::restart`] brings it back.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn().expect("restart krb5kdc");
    }

    /// The KDC's log (one line per AS_REQ / TGS_REQ).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("kdc.log")).unwrap_or_default()
    }

    /// Tickets the KDC issued to `principal` in AS exchanges.
    pub fn as_issued(&self, principal: &str) -> usize {
        let who = format!("{principal}@{REALM} for krbtgt");
        self.log()
            .lines()
            .filter(|l| l.contains("AS_REQ") && l.contains("ISSUE") && l.contains(&who))
            .count()
    }
}

impl Drop for Kdc {
    fn drop(&mut self) {
        self.stop();
    }
}

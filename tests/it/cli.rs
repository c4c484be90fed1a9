#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_types,
    clippy::disallowed_methods
)]
//! The `cuttle` binary itself: configuration precedence and errors (`check-config`), secrets
//! that never reach any output, and graceful shutdown on SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cuttle() -> Command {
    let mut c = crate::support::cuttle();
    // These tests are not about the cache: keep it in memory (no shared /tmp directory).
    c.env("CUTTLE_CACHE_SIZE", "0");
    c.env("CUTTLE_ADMIN_LISTEN", "127.0.0.1:0");
    // The test origins are on loopback, which cuttle refuses unless allowed.
    c.env("CUTTLE_ALLOW_DEST", "127.0.0.0/8,::1");
    c
}

fn run(c: &mut Command) -> (i32, String, String) {
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_precedence_flags_env_file_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cuttle.toml");
    std::fs::write(
        &file,
        "connect-timeout = \"9s\"\nread-timeout = \"8s\"\nmax-connections = 7\n",
    )
    .unwrap();
    let (code, out, err) = run(cuttle()
        .args(["check-config", "--config"])
        .arg(&file)
        .args(["--connect-timeout", "1s"])
        .env("CUTTLE_CONNECT_TIMEOUT", "5s")
        .env("CUTTLE_READ_TIMEOUT", "4s"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("connect-timeout = \"1s\""), "flag wins: {out}");
    assert!(
        out.contains("read-timeout = \"4s\""),
        "env beats file: {out}"
    );
    assert!(
        out.contains("max-connections = 7"),
        "file beats default: {out}"
    );
    assert!(out.contains("shutdown-grace = \"25s\""), "default: {out}");
    assert!(out.contains("listen = [\"0.0.0.0:3128\"]"), "{out}");
}

#[test]
fn check_config_masks_secrets_and_reads_file_variables() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("peer");
    std::fs::write(
        &secret,
        "corp%5Cbuild:Sup3r%40Secret:proxy.corp.example:8080\n",
    )
    .unwrap();
    let (code, out, err) = run(cuttle().arg("check-config").env("CACHE_PEER_FILE", &secret));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(r#""corp\\build:****@proxy.corp.example:8080""#),
        "{out}"
    );
    assert!(
        !out.contains("Sup3r") && !err.contains("Sup3r"),
        "{out}{err}"
    );

    let (code, out, _) = run(cuttle().arg("check-config").env(
        "CACHE_PEER",
        "u:Sup3rSecret:[2001:db8::1]:3128,http://a:b@[::1]:8080",
    ));
    assert_eq!(code, 0);
    assert!(
        out.contains("u:****@[2001:db8::1]:3128") && out.contains("a:****@[::1]:8080"),
        "{out}"
    );
    assert!(!out.contains("Sup3rSecret"));
}

#[test]
fn check_config_masks_the_shared_cache_keys() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("secret-key");
    std::fs::write(&key, "S3cretAccessKeyZ9\n").unwrap();
    let (code, out, err) = run(cuttle()
        .arg("check-config")
        .env("CUTTLE_SHARED_CACHE", "s3://build-cache/cuttle")
        .env(
            "CUTTLE_SHARED_CACHE_ENDPOINT",
            "http://minio.example.org:9000",
        )
        .env("AWS_ACCESS_KEY_ID", "AKIDCUTTLETEST")
        .env("AWS_SECRET_ACCESS_KEY_FILE", &key)
        .env("AWS_SESSION_TOKEN", "Sess1onT0ken"));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(r#"shared-cache = "s3://build-cache/cuttle""#),
        "{out}"
    );
    assert!(out.contains("static keys"), "{out}");
    assert!(
        out.contains(r#"shared-cache-access-key-id = "****""#),
        "{out}"
    );
    for secret in ["S3cretAccessKeyZ9", "AKIDCUTTLETEST", "Sess1onT0ken"] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret}: {out}{err}"
        );
    }

    let (code, _, err) = run(cuttle()
        .arg("check-config")
        .env("CUTTLE_SHARED_CACHE", "https://build-cache/cuttle"));
    assert_eq!(code, 2);
    assert!(
        err.contains("shared-cache: `https://build-cache/cuttle` is not an s3://"),
        "{err}"
    );
    let (code, _, err) = run(cuttle()
        .arg("check-config")
        .env("CUTTLE_SHARED_CACHE", "s3://build-cache/cuttle")
        .env("AWS_ACCESS_KEY_ID", "AKIDCUTTLETEST"));
    assert_eq!(code, 2);
    assert!(
        err.contains("give both (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"),
        "{err}"
    );
    assert!(!err.contains("AKIDCUTTLETEST"), "{err}");
}

#[test]
fn bad_config_exits_2_with_one_line_per_problem() {
    let (code, out, err) = run(cuttle()
        .args([
            "check-config",
            "--listen",
            "nowhere",
            "--connect-timeout",
            "soon",
        ])
        .env("CACHE_PEER", "user:Sup3rSecret:proxy.example:http"));
    assert_eq!(code, 2);
    assert!(out.is_empty());
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines.iter().any(|l| l.contains("listen")));
    assert!(lines.iter().any(|l| l.contains("connect-timeout")));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("CACHE_PEER") && l.contains("port is not a number")),
        "{err}"
    );
    assert!(!err.contains("Sup3rSecret"));

    // Running (not only checking) refuses the same way.
    let (code, _, err) = run(cuttle().env("CACHE_PEER", "only-a-host"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("CACHE_PEER"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "listen = [\"127.0.0.1:0\"]\nunknown-key = 1\n").unwrap();
    let (code, _, err) = run(cuttle().arg("check-config").arg("--config").arg(&file));
    assert_eq!(code, 2);
    assert!(err.contains("unknown-key"), "{err}");
}

/// A cuttle child process with its output collected.
struct Running {
    child: Child,
    addr: SocketAddr,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn start(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut out = child.stdout.take().unwrap();
        let o2 = stdout.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
                *o2.lock().unwrap() = s.clone();
            }
        });
        let err = child.stderr.take().unwrap();
        let e2 = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(a) = line.split("addr=").nth(1) {
                    let _ = tx.send(a.trim().to_string());
                }
                let mut g = e2.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(20)) else {
            // Never leave the child behind when the test gives up on it.
            let _ = child.kill();
            let _ = child.wait();
            panic!("cuttle did not report its listening address");
        };
        let addr = addr.parse().unwrap();
        Running {
            child,
            addr,
            stdout,
            stderr,
        }
    }

    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for exit (bounded) and returns the exit code.
    fn wait(&mut self, limit: Duration) -> i32 {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "cuttle did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn output(&self) -> String {
        format!(
            "{}\n{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proxy_client(addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .proxy(reqwest::Proxy::all(format!("http://{addr}")).unwrap())
        .build()
        .unwrap()
}

/// Every path (forward, tunnel, parent rejection, client auth failure, errors, check-config)
/// runs with known secrets; none of them, in any encoding, appears in any output.
#[tokio::test]
async fn secrets_never_reach_any_output() {
    const PEER_PASS: &str = "Pa55-parent-S3cret";
    const CLIENT_PASS: &str = "Cl1ent-S3cret-pw";
    let origin = Origin::text("through the parent").await;
    // The parent is another cuttle (in-process) that accepts anything.
    let parent = TestProxy::start(opts()).await;
    let peer = format!("builder%40corp:{}%3A%25x:{}", PEER_PASS, parent.addr);
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("users");
    std::fs::write(
        &htpasswd,
        format!("alice:{}\n", bcrypt::hash(CLIENT_PASS, 4).unwrap()),
    )
    .unwrap();

    let mut proc = Running::start(
        cuttle()
            .args(["--listen", "127.0.0.1:0", "--log-level", "trace"])
            .arg("--auth-file")
            .arg(&htpasswd)
            .env("CACHE_PEER", &peer),
    );
    let good = reqwest::Client::builder()
        .no_proxy()
        .proxy(
            reqwest::Proxy::all(format!("http://{}", proc.addr))
                .unwrap()
                .basic_auth("alice", CLIENT_PASS),
        )
        .build()
        .unwrap();
    let r = good.get(origin.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "through the parent");
    // wrong client password
    let bad = reqwest::Client::builder()
        .no_proxy()
        .proxy(
            reqwest::Proxy::all(format!("http://{}", proc.addr))
                .unwrap()
                .basic_auth("alice", "Wr0ng-S3cret"),
        )
        .build()
        .unwrap();
    assert_eq!(
        bad.get(origin.url("/x")).send().await.unwrap().status(),
        407
    );
    // tunnel through the parent
    let token = base64_basic("alice", CLIENT_PASS);
    let (mut s, head) = connect_with(
        proc.addr,
        origin.addr,
        &format!("Proxy-Authorization: Basic {token}\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).await.unwrap();
    assert!(rest.ends_with("through the parent"), "{rest}");
    drop(s);
    // an upstream error path (closed port behind the parent)
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let r = good.get(format!("http://{closed}/")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let parent_logs = parent.all_logs().join("\n");
    parent.shutdown().await;

    // A parent that rejects the credentials.
    let rejecting = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raddr = rejecting.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = rejecting.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let _ = c
                    .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    let mut proc2 = Running::start(
        cuttle()
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-level",
                "trace",
                "--log-format",
                "json",
            ])
            .env("CACHE_PEER", format!("builder:{PEER_PASS}:{raddr}")),
    );
    let c2 = proxy_client(proc2.addr);
    let r = c2.get(origin.url("/y")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(body.contains("rejected cuttle's credentials"), "{body}");
    let raw_connect = raw(
        proc2.addr,
        connect_request(origin.addr, "Connection: close\r\n").as_bytes(),
    )
    .await;
    assert!(raw_connect.starts_with("HTTP/1.1 502"), "{raw_connect}");

    let (_, check_out, check_err) = run(cuttle().arg("check-config").env("CACHE_PEER", &peer));

    proc.sigterm();
    proc2.sigterm();
    assert_eq!(proc.wait(Duration::from_secs(30)), 0);
    assert_eq!(proc2.wait(Duration::from_secs(30)), 0);

    let all = format!(
        "{}\n{}\n{check_out}\n{check_err}\n{}",
        proc.output(),
        proc2.output(),
        parent_logs
    );
    assert!(
        all.contains("TCP_TUNNEL/200"),
        "the run exercised the tunnel path:\n{all}"
    );
    assert!(
        all.contains("\"status\":502"),
        "the run exercised the 407 path:\n{all}"
    );
    for needle in [
        PEER_PASS.to_string(),
        CLIENT_PASS.to_string(),
        base64_basic("builder@corp", &format!("{PEER_PASS}:%x")),
        base64_basic("builder", PEER_PASS),
        token,
        "Wr0ng-S3cret".to_string(),
    ] {
        assert!(
            !all.contains(&needle),
            "secret {needle:?} found in output:\n{all}"
        );
    }
}

fn base64_basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

/// SIGTERM: new connections are refused, an in-flight request and an open tunnel finish
/// within the grace period, and the process exits 0.
#[tokio::test]
async fn sigterm_drains_in_flight_work_then_exits_0() {
    let origin = Origin::start(|req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        respond(200, "done")
    })
    .await;
    let mut proc =
        Running::start(cuttle().args(["--listen", "127.0.0.1:0", "--shutdown-grace", "20s"]));
    let addr = proc.addr;
    // An open tunnel that keeps working during the drain.
    let mut tunnel = crate::support::tunnel(addr, origin.addr).await;

    let slow = tokio::spawn({
        let url = origin.url("/slow");
        async move {
            proxy_client(addr)
                .get(url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    });
    // Wait until the slow request reached the origin, then signal.
    while origin.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proc.sigterm();
    assert_eq!(slow.await.unwrap(), "done", "in-flight request completed");
    // New connections are refused once the listener is closed.
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "listener still accepting after SIGTERM");
    // The tunnel still carries traffic during the drain, then the client closes it.
    tunnel
        .write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = String::new();
    tunnel.read_to_string(&mut rest).await.unwrap();
    assert!(rest.ends_with("done"), "{rest}");
    drop(tunnel);
    let code = tokio::task::spawn_blocking(move || {
        let c = proc.wait(Duration::from_secs(15));
        (c, proc.output())
    })
    .await
    .unwrap();
    assert_eq!(code.0, 0, "{}", code.1);
    assert!(code.1.contains("TCP_TUNNEL/200"), "{}", code.1);
}

/// A tunnel still open when the grace period ends is closed and the process exits 0.
#[tokio::test]
async fn grace_period_bounds_shutdown() {
    let origin = Origin::text("x").await;
    let mut proc =
        Running::start(cuttle().args(["--listen", "127.0.0.1:0", "--shutdown-grace", "1s"]));
    let mut tunnel = crate::support::tunnel(proc.addr, origin.addr).await;
    proc.sigterm();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(15), tunnel.read_to_end(&mut buf)).await;
    assert!(n.is_ok(), "tunnel was not closed after the grace period");
    let code = tokio::task::spawn_blocking(move || proc.wait(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(code, 0);
}

/// SIGHUP re-reads the config file: a new deny rule applies without a restart, and an
/// invalid file is rejected (logged) while the running configuration stays.
#[tokio::test]
async fn sighup_reloads_the_config_file() {
    let origin = Origin::text("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cuttle.toml");
    std::fs::write(&file, "deny-domain = [\"blocked.test\"]\n").unwrap();
    let proc = Running::start(
        cuttle()
            .args(["--listen", "127.0.0.1:0", "--config"])
            .arg(&file),
    );
    let c = proxy_client(proc.addr);
    assert_eq!(c.get(origin.url("/")).send().await.unwrap().status(), 200);
    let hup = |pid: u32| {
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    std::fs::write(&file, "deny-domain = [\"127.0.0.1\"]\n").unwrap();
    hup(proc.child.id());
    let mut denied = false;
    for _ in 0..200 {
        if c.get(origin.url("/")).send().await.unwrap().status() == 403 {
            denied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        denied,
        "SIGHUP did not apply the new rule:\n{}",
        proc.output()
    );
    std::fs::write(&file, "connect-timeout = \"soon\"\n").unwrap();
    hup(proc.child.id());
    let mut rejected = false;
    for _ in 0..200 {
        if proc.output().contains("reload rejected") {
            rejected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(rejected, "{}", proc.output());
    assert!(
        proc.output().contains("connect-timeout"),
        "{}",
        proc.output()
    );
    assert_eq!(
        c.get(origin.url("/")).send().await.unwrap().status(),
        403,
        "old config kept"
    );
}

//! A real S3 server on loopback for the shared cache tests: `s3s-fs` (an S3 server over a
//! directory, installed by `scripts/test.sh`), started on 127.0.0.1 over a temporary
//! directory, and a TCP gate in front of it that can pass, refuse, answer 500 or stall.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

pub const BUCKET: &str = "cuttle";
pub const PREFIX: &str = "team";
pub const ACCESS_KEY: &str = "cuttle-test-key";
pub const SECRET_KEY: &str = "cuttle-test-secret-Zq81";

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("s3s-fs"))
            .find(|p| p.is_file())
    }) {
        return p;
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    let p = home.join("bin/s3s-fs");
    assert!(
        p.is_file(),
        "s3s-fs not found: install it with `cargo install s3s-fs --version 0.14.1 --features \
         binary` (scripts/test.sh does)"
    );
    p
}

async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

pub struct S3 {
    pub root: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl S3 {
    pub async fn start() -> S3 {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let mut s = S3 {
            root,
            port: free_port().await,
            child: None,
        };
        s.run().await;
        s
    }

    /// Starts (again) on the same port and directory.
    pub async fn run(&mut self) {
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "s3s-fs did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory holding the objects under the test prefix.
    pub fn dir(&self) -> PathBuf {
        self.root.path().join(BUCKET).join(PREFIX)
    }

    /// Entry objects (not `.meta` ones) stored under the prefix.
    pub fn entries(&self) -> Vec<PathBuf> {
        files(&self.dir())
            .into_iter()
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
            })
            .collect()
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Closes every connection at once.
    Down,
    /// Answers every request 500.
    Error500,
    /// Accepts and never answers.
    Slow,
    /// Passes until this many bytes have gone to the store (all connections together), then
    /// cuts every connection, as a store dying mid-upload.
    CutAfter(u64),
}

/// A TCP gate in front of the store. Changing the mode cuts the connections it holds, so
/// pooled connections see the new mode too.
pub struct Gate {
    pub port: u16,
    mode: Arc<Mutex<Mode>>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    pub async fn start(target: u16) -> Gate {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (m, c) = (mode.clone(), conns.clone());
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mode = *m.lock().unwrap();
                let sent = sent.clone();
                let h = tokio::spawn(async move {
                    match mode {
                        Mode::CutAfter(limit) => {
                            let Ok(up) = TcpStream::connect(("127.0.0.1", target)).await else {
                                return;
                            };
                            let (mut cr, mut cw) = s.into_split();
                            let (mut ur, mut uw) = up.into_split();
                            let back = tokio::spawn(async move {
                                let _ = tokio::io::copy(&mut ur, &mut cw).await;
                            });
                            let mut buf = vec![0u8; 64 * 1024];
                            loop {
                                let n = match cr.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => n,
                                };
                                let total = sent
                                    .fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst)
                                    + n as u64;
                                if total > limit || uw.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            back.abort();
                        }
                        Mode::Pass => {
                            if let Ok(mut up) = TcpStream::connect(("127.0.0.1", target)).await {
                                // A test gate: the aborted task ends it, no timeout needed.
                                #[allow(clippy::disallowed_methods)]
                                let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                            }
                        }
                        Mode::Down => {}
                        Mode::Error500 => {
                            let mut buf = vec![0u8; 65536];
                            let _ = s.read(&mut buf).await;
                            let body = "<Error><Code>InternalError</Code></Error>";
                            let _ = s
                                .write_all(
                                    format!(
                                        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: \
                                         application/xml\r\ncontent-length: {}\r\nconnection: \
                                         close\r\n\r\n{body}",
                                        body.len()
                                    )
                                    .as_bytes(),
                                )
                                .await;
                        }
                        Mode::Slow => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                        }
                    }
                });
                c.lock().unwrap().push(h);
            }
        });
        Gate {
            port,
            mode,
            conns,
            task,
        }
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

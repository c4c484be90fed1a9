//! Real S3 servers on loopback for the shared cache tests, two implementations so cuttle is
//! not tuned to one server's quirks: `s3s-fs` (an S3 server over a directory, Rust, installed
//! by `scripts/test.sh` with cargo) and `moto` in server mode (`moto_server`, Python, the
//! store AWS SDK projects test against; installed by `scripts/test.sh` into a venv). Each is
//! started on 127.0.0.1 with the test bucket; objects are read and written through the S3
//! API (OpenDAL), never behind the server's back. A TCP gate in front of a store can pass,
//! refuse, answer 500 or stall.
//!
//! Both stores honour `If-None-Match: *` on `PutObject` and on `CompleteMultipartUpload`
//! (412 when the object exists): checked with s3s-fs 0.14.1 and moto 5.2.1.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

pub const BUCKET: &str = "cuttle";
pub const PREFIX: &str = "team";
pub const ACCESS_KEY: &str = "cuttle-test-key";
pub const SECRET_KEY: &str = "cuttle-test-secret-Zq81";

/// Which S3 server a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    S3sFs,
    Moto,
}

/// `name` on `PATH`, else the first of `fallbacks` that exists.
fn find(name: &str, fallbacks: &[PathBuf]) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .or_else(|| fallbacks.iter().find(|p| p.is_file()).cloned())
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn s3s_fs() -> PathBuf {
    let cargo = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cargo"));
    find("s3s-fs", &[cargo.join("bin/s3s-fs")]).unwrap_or_else(|| {
        panic!(
            "s3s-fs not found: install it with `cargo install s3s-fs --version 0.14.1 \
             --features binary` (scripts/test.sh does)"
        )
    })
}

/// Where `scripts/test.sh` puts moto's venv.
pub fn moto_venv() -> PathBuf {
    std::env::var_os("CUTTLE_TEST_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache/cuttle-test"))
        .join("moto")
}

fn moto_server() -> PathBuf {
    find("moto_server", &[moto_venv().join("bin/moto_server")]).unwrap_or_else(|| {
        panic!(
            "moto_server not found on PATH nor in {}: install it with `python3 -m venv {0} && \
             {0}/bin/pip install 'moto[server]==5.2.1'` (scripts/test.sh does), or `pip3 \
             install 'moto[server]'`",
            moto_venv().display()
        )
    })
}

async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// An S3 client for the test's own reads and writes (bucket root, no proxy).
fn operator(endpoint: &str) -> opendal::Operator {
    let b = opendal::services::S3::default()
        .bucket(BUCKET)
        .root("/")
        .region("us-east-1")
        .endpoint(endpoint)
        .access_key_id(ACCESS_KEY)
        .secret_access_key(SECRET_KEY);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    opendal::Operator::new(b)
        .unwrap()
        .layer(opendal::layers::HttpClientLayer::new(
            opendal::raw::HttpClient::with(client),
        ))
        .finish()
}

pub struct S3 {
    pub store: Store,
    /// s3s-fs's directory (moto keeps its objects in memory).
    root: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    op: Option<opendal::Operator>,
}

impl S3 {
    /// s3s-fs (the tests that need only one store use this one).
    pub async fn start() -> S3 {
        Self::start_with(Store::S3sFs).await
    }

    pub async fn start_with(store: Store) -> S3 {
        let root = tempfile::tempdir().unwrap();
        if store == Store::S3sFs {
            std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        }
        let mut s = S3 {
            store,
            root,
            port: free_port().await,
            child: None,
            op: None,
        };
        s.run().await;
        s
    }

    /// Starts (again) on the same port (and, for s3s-fs, the same directory: its objects
    /// survive; moto starts empty, with the bucket made again).
    pub async fn run(&mut self) {
        let port = self.port.to_string();
        let mut cmd = match self.store {
            Store::S3sFs => {
                let mut c = Command::new(s3s_fs());
                c.args(["--host", "127.0.0.1", "--port", &port])
                    .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                    .arg(self.root.path());
                c
            }
            Store::Moto => {
                let mut c = Command::new(moto_server());
                c.args(["-H", "127.0.0.1", "-p", &port])
                    .current_dir(self.root.path());
                c
            }
        };
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?} did not start",
                self.store
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.store == Store::Moto {
            // moto accepts unsigned requests; the bucket is made like any client would.
            let r = reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .put(format!("{}/{BUCKET}", self.endpoint()))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "moto: creating the bucket: {r:?}");
        }
        self.op = Some(operator(&self.endpoint()));
    }

    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn op(&self) -> &opendal::Operator {
        self.op.as_ref().unwrap()
    }

    /// Every object key under the test prefix (`team/ab/<hash>...`).
    pub async fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .op()
            .list_with(&format!("{PREFIX}/"))
            .recursive(true)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.metadata().is_file())
            .map(|e| e.path().to_string())
            .collect();
        keys.sort();
        keys
    }

    /// Entry objects (not `.meta` ones, nor leases) stored under the prefix.
    pub async fn entries(&self) -> Vec<String> {
        self.keys()
            .await
            .into_iter()
            .filter(|k| {
                let name = k.rsplit('/').next().unwrap_or_default();
                name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
            })
            .collect()
    }

    pub async fn read(&self, key: &str) -> Vec<u8> {
        self.op().read(key).await.unwrap().to_vec()
    }

    pub async fn write(&self, key: &str, data: Vec<u8>) {
        self.op().write(key, data).await.unwrap();
    }

    pub async fn size(&self, key: &str) -> u64 {
        self.op().stat(key).await.unwrap().content_length()
    }

    /// Whether `key` exists. A temporary error is asked again: s3s-fs once answered 500 to
    /// a `HEAD` racing the deletion of the same object (seen in 1 of 8 runs of the lease
    /// tests).
    pub async fn exists(&self, key: &str) -> bool {
        let mut tries = 0;
        loop {
            match self.op().exists(key).await {
                Ok(b) => return b,
                Err(e) if e.is_temporary() && tries < 5 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("HEAD {key}: {e}"),
            }
        }
    }
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
    /// Passes, but removes `If-None-Match` from the requests: a store that ignores
    /// conditional writes (moto only: s3s-fs would refuse the changed signature).
    StripIfNoneMatch,
}

/// Relays one connection to the store on `target`: what the client sends goes through
/// `each` (None cuts the connection), the store's answers come back unchanged.
async fn relay(s: TcpStream, target: u16, mut each: impl FnMut(&[u8]) -> Option<Vec<u8>>) {
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
        let Some(out) = each(&buf[..n]) else { break };
        if uw.write_all(&out).await.is_err() {
            break;
        }
    }
    back.abort();
}

/// `data` without its `If-None-Match: *` header lines (whole lines within one read, as a
/// request head arrives on loopback).
fn strip_if_none_match(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut rest = data;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(rest.len(), |i| i + 2);
        let line = &rest[..end];
        if !line.to_ascii_lowercase().starts_with(b"if-none-match:") {
            out.extend_from_slice(line);
        }
        rest = &rest[end..];
    }
    out
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
                            relay(s, target, |chunk| {
                                let total = sent.fetch_add(
                                    chunk.len() as u64,
                                    std::sync::atomic::Ordering::SeqCst,
                                ) + chunk.len() as u64;
                                (total <= limit).then(|| chunk.to_vec())
                            })
                            .await;
                        }
                        Mode::Pass => {
                            if let Ok(mut up) = TcpStream::connect(("127.0.0.1", target)).await {
                                // A test gate: the aborted task ends it, no timeout needed.
                                #[allow(clippy::disallowed_methods)]
                                let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                            }
                        }
                        Mode::StripIfNoneMatch => {
                            relay(s, target, |chunk| Some(strip_if_none_match(chunk))).await;
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

//! Soak harness (`bench/soak.sh`, README "Bounds: disk and memory"): runs a cuttle binary for
//! a set duration against an in-process origin and parent proxy on loopback, with mixed
//! traffic (hits, misses that churn the disk tier, ranges, revalidations answered 304 and
//! 200, CONNECT tunnels, clients that abort mid-body) and faults on a schedule (origin resets
//! mid-body, a slow origin, 5xx bursts, the parent going away and coming back, the disk
//! filling up, SIGHUP reloads). Every sample period it records RSS, open fds, disk use as
//! `du` counts it, inodes, connections, errors by kind and p50/p99 latency; at the end it
//! prints a table, writes `soak.csv`, `soak.md` and the chart `soak.svg` into `--out`, and
//! exits non-zero when a bound was crossed, a series kept growing after the warm-up, or an
//! error happened that no injected fault explains. Its last line is `soak: N passed, M
//! failed`.
//!
//! `soak measure` instead measures the memory formula's per-connection and per-tunnel costs
//! (README, "Sizing memory").
//!
//! Everything listens on 127.0.0.1; the run is bounded by `--duration` and stops by itself.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Clone)]
#[command(about = "Soak cuttle with mixed traffic and faults on loopback")]
struct Args {
    /// `run` (default) or `measure` (per-connection and per-tunnel memory).
    #[arg(default_value = "run")]
    mode: String,
    /// The cuttle binary.
    #[arg(long, default_value = "target/release/cuttle")]
    cuttle: PathBuf,
    /// How long the traffic runs.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Samples before this are not used for growth detection.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    sample: Duration,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value = "256MiB")]
    cache_size: String,
    #[arg(long, default_value = "32MiB")]
    cache_mem: String,
    #[arg(long, default_value_t = 256)]
    max_connections: u64,
    /// Where the table, CSV and chart go.
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
    /// Label for this run (chart title, e.g. the allocator).
    #[arg(long, default_value = "")]
    label: String,
    /// Allowed growth after the warm-up (fraction of the first third's level).
    #[arg(long, default_value_t = 0.15)]
    growth_tolerance: f64,
    /// A malloc to preload into cuttle (LD_PRELOAD), to compare allocators without
    /// rebuilding (e.g. Debian's libjemalloc.so.2 or libmimalloc.so.2).
    #[arg(long)]
    preload: Option<PathBuf>,
    /// `measure`: connections and tunnels to open.
    #[arg(long, default_value_t = 400)]
    measure_count: usize,
}

// ---------------------------------------------------------------------------------------
// Content: every body is a slice of one pattern, so clients check every byte for free.
// ---------------------------------------------------------------------------------------

const MAX_BODY: usize = 4 << 20;

fn pattern() -> &'static Bytes {
    static P: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        Bytes::from(
            (0..MAX_BODY + 251)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<_>>(),
        )
    })
}

fn seed_of(id: &str) -> usize {
    id.bytes()
        .fold(7usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
        % 251
}

fn body_for(id: &str, len: usize) -> Bytes {
    let s = seed_of(id);
    pattern().slice(s..s + len.min(MAX_BODY))
}

// ---------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    OriginReset,
    SlowOrigin,
    Burst5xx,
    ParentAway,
    DiskFull,
    Reload,
}

impl Fault {
    const ALL: [Fault; 6] = [
        Fault::OriginReset,
        Fault::SlowOrigin,
        Fault::Burst5xx,
        Fault::ParentAway,
        Fault::DiskFull,
        Fault::Reload,
    ];
    fn name(self) -> &'static str {
        match self {
            Fault::OriginReset => "origin-reset",
            Fault::SlowOrigin => "slow-origin",
            Fault::Burst5xx => "5xx-burst",
            Fault::ParentAway => "parent-away",
            Fault::DiskFull => "disk-full",
            Fault::Reload => "sighup",
        }
    }
    /// Whether client errors during (and just after) this fault are expected: a full disk
    /// or a reload must not cost any client anything.
    fn excuses_errors(self) -> bool {
        !matches!(self, Fault::DiskFull | Fault::Reload)
    }
}

#[derive(Default)]
struct Switches {
    reset: AtomicBool,
    slow: AtomicBool,
    burst: AtomicBool,
}

/// A fault that ran: from `start` to `end` seconds into the run.
#[derive(Clone, Debug)]
struct Window {
    fault: Fault,
    start: f64,
    end: f64,
    note: String,
}

/// Errors that start this long after a fault ended are still the fault's (requests started
/// during it, the parent's backoff, stale connections in pools).
const GRACE: f64 = 10.0;

// ---------------------------------------------------------------------------------------
// Origin
// ---------------------------------------------------------------------------------------

/// A body sent in frames, optionally slowly and optionally broken off half-way.
struct Paced {
    data: Bytes,
    pos: usize,
    frame: usize,
    fail_at: Option<usize>,
    delay: Option<Duration>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for Paced {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(s) = self.sleep.as_mut() {
            if s.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        if self.pos >= self.data.len() {
            return Poll::Ready(None);
        }
        if self.fail_at.is_some_and(|f| self.pos >= f) {
            return Poll::Ready(Some(Err(std::io::Error::other("injected reset"))));
        }
        let end = (self.pos + self.frame).min(self.data.len());
        let chunk = self.data.slice(self.pos..end);
        self.pos = end;
        if let Some(d) = self.delay {
            self.sleep = Some(Box::pin(tokio::time::sleep(d)));
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

fn respond(status: StatusCode, headers: &[(&str, String)], body: Paced) -> Response<Paced> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(body).unwrap_or_else(|_| Response::new(empty()))
}

fn empty() -> Paced {
    Paced {
        data: Bytes::new(),
        pos: 0,
        frame: 1,
        fail_at: None,
        delay: None,
        sleep: None,
    }
}

/// Revalidated objects change every this many seconds (a 200 instead of a 304).
const REVAL_EPOCH: u64 = 20;

async fn origin_handle(
    req: Request<Incoming>,
    sw: Arc<Switches>,
    start: Instant,
) -> Result<Response<Paced>, Infallible> {
    // /<kind>/<id>/<len>
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.split('/').collect();
    let (kind, id, len) = match parts.as_slice() {
        ["", k, id, n] => (*k, *id, n.parse::<usize>().unwrap_or(0).min(MAX_BODY)),
        _ => return Ok(respond(StatusCode::NOT_FOUND, &[], empty())),
    };
    if sw.slow.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if sw.burst.load(Ordering::Relaxed) {
        return Ok(respond(
            StatusCode::SERVICE_UNAVAILABLE,
            &[("cache-control", "no-store".into())],
            empty(),
        ));
    }
    let mut headers = vec![("content-type", "application/octet-stream".to_string())];
    match kind {
        "c" => {
            headers.push(("cache-control", "max-age=3600".into()));
            headers.push(("etag", format!("\"{id}-{len}\"")));
        }
        "n" => headers.push(("cache-control", "no-store".into())),
        "r" => {
            let epoch = (start.elapsed().as_secs() + seed_of(id) as u64) / REVAL_EPOCH;
            let tag = format!("\"{id}-{epoch}\"");
            headers.push(("cache-control", "max-age=0".into()));
            headers.push(("etag", tag.clone()));
            let inm = req
                .headers()
                .get("if-none-match")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if inm.split(',').any(|t| t.trim() == tag) {
                return Ok(respond(StatusCode::NOT_MODIFIED, &headers, empty()));
            }
        }
        _ => return Ok(respond(StatusCode::NOT_FOUND, &[], empty())),
    }
    headers.push(("content-length", len.to_string()));
    let slow = sw.slow.load(Ordering::Relaxed);
    let body = Paced {
        data: body_for(id, len),
        pos: 0,
        frame: if slow { 16 << 10 } else { 64 << 10 },
        fail_at: (sw.reset.load(Ordering::Relaxed) && len >= 64 << 10).then_some(len / 2),
        delay: slow.then(|| Duration::from_millis(10)),
        sleep: None,
    };
    Ok(respond(StatusCode::OK, &headers, body))
}

async fn start_origin(sw: Arc<Switches>, stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let start = Instant::now();
    tokio::spawn(async move {
        loop {
            let (s, _) = tokio::select! {
                _ = stop.cancelled() => return,
                r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
            };
            let sw = sw.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| origin_handle(req, sw.clone(), start));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

// ---------------------------------------------------------------------------------------
// Parent proxy: forwards absolute-form requests to the origin and CONNECTs to their target,
// byte for byte; it can go away (closing every connection) and come back on the same port.
// ---------------------------------------------------------------------------------------

struct Parent {
    addr: SocketAddr,
    origin: SocketAddr,
    running: Mutex<Option<CancellationToken>>,
}

impl Parent {
    async fn start(origin: SocketAddr) -> anyhow::Result<Arc<Parent>> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let p = Arc::new(Parent {
            addr: l.local_addr()?,
            origin,
            running: Mutex::new(None),
        });
        p.serve(l);
        Ok(p)
    }

    fn serve(&self, l: TcpListener) {
        let stop = CancellationToken::new();
        *self.running.lock() = Some(stop.clone());
        let origin = self.origin;
        tokio::spawn(async move {
            loop {
                let (s, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = parent_conn(s, origin) => {}
                    }
                });
            }
        });
    }

    fn go_away(&self) {
        if let Some(t) = self.running.lock().take() {
            t.cancel();
        }
    }

    async fn come_back(&self) -> anyhow::Result<()> {
        for _ in 0..50 {
            if let Ok(l) = TcpListener::bind(self.addr).await {
                self.serve(l);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the parent could not bind {} again", self.addr)
    }
}

async fn parent_conn(client: TcpStream, origin: SocketAddr) -> anyhow::Result<()> {
    let mut client = BufReader::new(client);
    let mut head = Vec::new();
    loop {
        let n = client.read_until(b'\n', &mut head).await?;
        if n == 0 {
            return Ok(());
        }
        if head.ends_with(b"\r\n\r\n") || head.len() > 64 << 10 {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let mut up = if let Some(rest) = line.strip_prefix("CONNECT ") {
        let target: SocketAddr = rest
            .split_whitespace()
            .next()
            .unwrap_or("")
            .parse()
            .context("CONNECT target")?;
        if !target.ip().is_loopback() {
            bail!("parent only reaches loopback");
        }
        let up = TcpStream::connect(target).await?;
        client
            .get_mut()
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        up
    } else {
        // Absolute-form requests: every one of them is for the origin.
        let mut up = TcpStream::connect(origin).await?;
        up.write_all(&head).await?;
        up
    };
    let buffered = client.buffer().to_vec();
    up.write_all(&buffered).await?;
    let mut client = client.into_inner();
    // The parent is a test stand-in: the harness stops it by cancelling, not by idleness.
    #[allow(clippy::disallowed_methods)]
    tokio::io::copy_bidirectional(&mut client, &mut up).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// cuttle, as a child process
// ---------------------------------------------------------------------------------------

struct Cuttle {
    child: tokio::process::Child,
    pid: u32,
    proxy: SocketAddr,
    admin: SocketAddr,
    results: Arc<Mutex<BTreeMap<String, u64>>>,
    warnings: Arc<Mutex<Vec<(f64, String)>>>,
}

fn field_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let i = line.find(key)?;
    line[i + key.len()..].split_whitespace().next()
}

async fn start_cuttle(
    args: &Args,
    cache_dir: &Path,
    config: &Path,
    parent: Option<SocketAddr>,
    t0: Instant,
) -> anyhow::Result<Cuttle> {
    let mut cmd = tokio::process::Command::new(&args.cuttle);
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--config")
        .arg(config)
        .arg("--cache-dir")
        .arg(cache_dir)
        .args([
            "--cache-size",
            &args.cache_size,
            "--cache-mem",
            &args.cache_mem,
        ])
        .args(["--max-connections", &args.max_connections.to_string()])
        .args(["--peer-backoff", "1s", "--connect-timeout", "3s"])
        .args(["--parent-connect-timeout", "3s", "--read-timeout", "20s"])
        .args(["--log-level", "info"])
        // The origin and the parent are on loopback, which cuttle refuses by default.
        .args(["--allow-dest", "127.0.0.0/8"])
        .env_remove("CACHE_PEER")
        .env_remove("CACHE_PEER_FILE")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(p) = parent {
        // In the environment: a flag would make cuttle warn that `ps` shows it.
        cmd.env("CACHE_PEER", format!("::127.0.0.1:{}", p.port()));
    }
    if let Some(lib) = &args.preload {
        cmd.env("LD_PRELOAD", lib);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", args.cuttle.display()))?;
    let pid = child.id().ok_or_else(|| anyhow!("cuttle exited at once"))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let results = Arc::new(Mutex::new(BTreeMap::new()));
    let r = results.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(code) = l.split_whitespace().nth(3) {
                *r.lock().entry(code.to_string()).or_insert(0) += 1;
            }
        }
    });
    let warnings = Arc::new(Mutex::new(Vec::new()));
    let w = warnings.clone();
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(Option<SocketAddr>, Option<SocketAddr>)>();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let plain = strip_ansi(&l);
            if plain.contains("cuttle listening") {
                let a = field_after(&plain, "addr=").and_then(|s| s.parse().ok());
                let _ = tx.send((a, None));
            } else if plain.contains("admin port") {
                let a = field_after(&plain, "admin=").and_then(|s| s.parse().ok());
                let _ = tx.send((None, a));
            } else if plain.contains(" WARN ") || plain.contains(" ERROR ") {
                w.lock().push((t0.elapsed().as_secs_f64(), plain));
            }
        }
    });
    let (mut proxy, mut admin) = (None, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while proxy.is_none() || admin.is_none() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((p, a))) => {
                proxy = proxy.or(p);
                admin = admin.or(a);
            }
            _ => bail!("cuttle did not announce its addresses within 30 s"),
        }
    }
    Ok(Cuttle {
        child,
        pid,
        proxy: proxy.ok_or_else(|| anyhow!("no proxy address"))?,
        admin: admin.ok_or_else(|| anyhow!("no admin address"))?,
        results,
        warnings,
    })
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, c) if c.is_ascii_alphabetic() => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()?
        .success();
    if !ok {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Measurements of the process and its cache directory
// ---------------------------------------------------------------------------------------

fn rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:") * 1024
}

/// A `kB` field of `/proc/<pid>/status` (0 when it cannot be read).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// (bytes as `du` counts them: allocated blocks of files and directories, inodes).
fn du(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(md) = std::fs::symlink_metadata(&d) {
            bytes += md.blocks() * 512;
            inodes += 1;
        }
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                bytes += md.blocks() * 512;
                inodes += 1;
            }
        }
    }
    (bytes, inodes)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().with_context(|| format!("size {s}"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => bail!("unknown size unit {other}"),
    };
    Ok(n * mult)
}

// ---------------------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    aborted: AtomicU64,
    latencies: Mutex<Vec<u32>>,
    /// (seconds into the run, kind, detail)
    errors: Mutex<Vec<(f64, String, String)>>,
    by_op: Mutex<BTreeMap<&'static str, u64>>,
}

impl Tally {
    fn error(&self, t0: Instant, kind: &str, detail: String) {
        self.errors
            .lock()
            .push((t0.elapsed().as_secs_f64(), kind.to_string(), detail));
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Ops and their weights (percent).
const MIX: &[(&str, u64)] = &[
    ("hit", 40),
    ("miss", 20),
    ("big", 12),
    ("range", 8),
    ("reval", 8),
    ("tunnel", 7),
    ("abort", 5),
];

struct Traffic {
    client: reqwest::Client,
    proxy: SocketAddr,
    origin: SocketAddr,
    tally: Arc<Tally>,
    unique: AtomicU64,
    t0: Instant,
}

impl Traffic {
    async fn op(&self, rng: &mut Rng) {
        let mut pick = rng.below(100);
        let mut op = MIX[0].0;
        for (name, w) in MIX {
            if pick < *w {
                op = name;
                break;
            }
            pick -= w;
        }
        *self.tally.by_op.lock().entry(op).or_insert(0) += 1;
        let o = self.origin;
        let started = Instant::now();
        let r = match op {
            "hit" => {
                let id = format!("h{}", rng.below(16));
                self.get(&format!("http://{o}/c/{id}/1024"), &id, 1024, None)
                    .await
            }
            "miss" => {
                let n = self.unique.fetch_add(1, Ordering::Relaxed);
                let id = format!("u{n}");
                self.get(&format!("http://{o}/c/{id}/65536"), &id, 65536, None)
                    .await
            }
            "big" => {
                let id = format!("b{}", rng.below(1500));
                self.get(&format!("http://{o}/c/{id}/1048576"), &id, 1 << 20, None)
                    .await
            }
            "range" => {
                let id = format!("b{}", rng.below(1500));
                let a = rng.below(1 << 20) as usize;
                let b = (a + rng.below(200_000) as usize).min((1 << 20) - 1);
                self.get(
                    &format!("http://{o}/c/{id}/1048576"),
                    &id,
                    1 << 20,
                    Some((a, b)),
                )
                .await
            }
            "reval" => {
                let id = format!("r{}", rng.below(64));
                self.get(&format!("http://{o}/r/{id}/16384"), &id, 16384, None)
                    .await
            }
            "tunnel" => self.tunnel(rng).await,
            _ => self.abort(rng).await,
        };
        match r {
            Ok(()) => {
                self.tally.ok.fetch_add(1, Ordering::Relaxed);
                self.tally
                    .latencies
                    .lock()
                    .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            Err((kind, detail)) => self.tally.error(self.t0, &kind, format!("{op}: {detail}")),
        }
    }

    async fn get(
        &self,
        url: &str,
        id: &str,
        len: usize,
        range: Option<(usize, usize)>,
    ) -> Result<(), (String, String)> {
        let mut req = self.client.get(url);
        if let Some((a, b)) = range {
            req = req.header("range", format!("bytes={a}-{b}"));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ("transport".to_string(), chain(&e)))?;
        let status = resp.status();
        let label = resp
            .headers()
            .get("x-cuttle-error")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .bytes()
            .await
            .map_err(|e| ("body".to_string(), chain(&e)))?;
        let (want_status, want) = match range {
            Some((a, b)) => (StatusCode::PARTIAL_CONTENT, body_for(id, len).slice(a..=b)),
            None => (StatusCode::OK, body_for(id, len)),
        };
        if status != want_status {
            let kind = match label {
                Some(l) => format!("{}:{l}", status.as_u16()),
                None => format!("status:{}", status.as_u16()),
            };
            return Err((kind, url.to_string()));
        }
        if body != want {
            return Err(("content".into(), format!("{url}: {} bytes", body.len())));
        }
        Ok(())
    }

    async fn tunnel(&self, rng: &mut Rng) -> Result<(), (String, String)> {
        let id = format!("t{}", rng.below(1000));
        let len = 65536;
        let io = |e: std::io::Error| ("tunnel".to_string(), e.to_string());
        let work = async {
            let mut s = TcpStream::connect(self.proxy).await.map_err(io)?;
            let o = self.origin;
            s.write_all(format!("CONNECT {o} HTTP/1.1\r\nHost: {o}\r\n\r\n").as_bytes())
                .await
                .map_err(io)?;
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).await.map_err(io)?;
            if !line.contains(" 200") {
                return Err(("tunnel".into(), format!("CONNECT answered {}", line.trim())));
            }
            loop {
                line.clear();
                if r.read_line(&mut line).await.map_err(io)? == 0 || line == "\r\n" {
                    break;
                }
            }
            r.get_mut()
                .write_all(
                    format!("GET /n/{id}/{len} HTTP/1.1\r\nHost: {o}\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .map_err(io)?;
            let mut all = Vec::new();
            r.read_to_end(&mut all).await.map_err(io)?;
            let split = all
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .ok_or_else(|| ("tunnel".to_string(), "no response head".to_string()))?;
            let head = String::from_utf8_lossy(&all[..split]);
            if !head.starts_with("HTTP/1.1 200") {
                let status = head.split_whitespace().nth(1).unwrap_or("?").to_string();
                return Err((format!("tunnel-status:{status}"), id.clone()));
            }
            if all[split + 4..] != body_for(&id, len)[..] {
                return Err(("content".into(), format!("tunnel {id}")));
            }
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(60), work)
            .await
            .unwrap_or_else(|_| Err(("timeout".into(), "tunnel".into())))
    }

    async fn abort(&self, rng: &mut Rng) -> Result<(), (String, String)> {
        let id = format!("a{}", rng.below(200));
        let url = format!("http://{}/c/{id}/{}", self.origin, 4 << 20);
        let mut resp = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| ("transport".to_string(), chain(&e)))?;
        if resp.status() != StatusCode::OK {
            return Err((format!("status:{}", resp.status().as_u16()), url));
        }
        // One chunk, then the client goes away mid-body.
        let _ = resp.chunk().await;
        drop(resp);
        self.tally.aborted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let _ = write!(s, ": {c}");
        src = c.source();
    }
    s
}

// ---------------------------------------------------------------------------------------
// Samples, checks, report
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct Sample {
    t: f64,
    rss: u64,
    fds: u64,
    threads: u64,
    du: u64,
    inodes: u64,
    conns: f64,
    tunnels: f64,
    reqs: u64,
    errors: u64,
    unexpected: u64,
    p50_ms: f64,
    p99_ms: f64,
    disk_indexed: f64,
    mem_tier: f64,
}

struct Bounds {
    rss: u64,
    du: u64,
    inodes: u64,
}

/// The memory bound (README, "Sizing memory"), from the library so both agree.
fn bounds(args: &Args) -> anyhow::Result<Bounds> {
    let cache_size = parse_size(&args.cache_size)?;
    let cache_mem = parse_size(&args.cache_mem)?;
    Ok(Bounds {
        rss: cuttle::config::sizing::memory_bound(cache_mem, cache_size, args.max_connections),
        du: cache_size + cache_size / 10,
        inodes: cuttle::cache::disk::inode_bound(cache_size),
    })
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn excused(windows: &[Window], t: f64) -> bool {
    windows
        .iter()
        .any(|w| w.fault.excuses_errors() && t >= w.start - 1.0 && t <= w.end + GRACE)
}

fn in_any_window(windows: &[Window], t: f64) -> bool {
    windows
        .iter()
        .any(|w| t >= w.start - 1.0 && t <= w.end + GRACE)
}

/// Whether the series grows after the warm-up: the mean of its last third is above the
/// mean of its first third by more than `tol` (relative) plus `slack` (absolute).
fn grows(values: &[f64], tol: f64, slack: f64) -> Option<(f64, f64)> {
    if values.len() < 3 {
        return None;
    }
    let third = values.len() / 3;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let first = mean(&values[..third]);
    let last = mean(&values[values.len() - third..]);
    (last > first * (1.0 + tol) + slack).then_some((first, last))
}

fn mib(b: f64) -> f64 {
    b / 1048576.0
}

// ---------------------------------------------------------------------------------------
// The SVG chart: one panel per series, fault windows shaded.
// ---------------------------------------------------------------------------------------

struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

fn chart(title: &str, samples: &[Sample], windows: &[Window], b: &Bounds, duration: f64) -> String {
    let pts = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(|s| (s.t, f(s))).collect::<Vec<_>>();
    let panels: Vec<(&str, Vec<Series>, Option<f64>)> = vec![
        (
            "RSS (MiB)",
            vec![Series {
                name: "rss",
                color: "#1f77b4",
                points: pts(&|s| mib(s.rss as f64)),
            }],
            Some(mib(b.rss as f64)),
        ),
        (
            "disk (MiB, du)",
            vec![
                Series {
                    name: "du",
                    color: "#2ca02c",
                    points: pts(&|s| mib(s.du as f64)),
                },
                Series {
                    name: "indexed",
                    color: "#98df8a",
                    points: pts(&|s| mib(s.disk_indexed)),
                },
            ],
            Some(mib(b.du as f64)),
        ),
        (
            "inodes",
            vec![Series {
                name: "inodes",
                color: "#8c564b",
                points: pts(&|s| s.inodes as f64),
            }],
            Some(b.inodes as f64),
        ),
        (
            "fds, threads, connections, tunnels",
            vec![
                Series {
                    name: "fds",
                    color: "#ff7f0e",
                    points: pts(&|s| s.fds as f64),
                },
                Series {
                    name: "threads",
                    color: "#bcbd22",
                    points: pts(&|s| s.threads as f64),
                },
                Series {
                    name: "connections",
                    color: "#9467bd",
                    points: pts(&|s| s.conns),
                },
                Series {
                    name: "tunnels",
                    color: "#e377c2",
                    points: pts(&|s| s.tunnels),
                },
            ],
            None,
        ),
        (
            "latency (ms)",
            vec![
                Series {
                    name: "p50",
                    color: "#17becf",
                    points: pts(&|s| s.p50_ms),
                },
                Series {
                    name: "p99",
                    color: "#d62728",
                    points: pts(&|s| s.p99_ms),
                },
            ],
            None,
        ),
        (
            "requests and errors per sample",
            vec![
                Series {
                    name: "requests/10",
                    color: "#7f7f7f",
                    points: pts(&|s| s.reqs as f64 / 10.0),
                },
                Series {
                    name: "errors (injected)",
                    color: "#bcbd22",
                    points: pts(&|s| (s.errors - s.unexpected) as f64),
                },
                Series {
                    name: "errors (not injected)",
                    color: "#d62728",
                    points: pts(&|s| s.unexpected as f64),
                },
            ],
            None,
        ),
    ];
    let (w, ph, left, top, gap) = (1000.0, 170.0, 70.0, 64.0, 40.0);
    let pw = w - left - 170.0;
    let h = top + panels.len() as f64 * (ph + gap) + 20.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/><text x="{left}" y="22" font-size="15">{}</text>"#,
        xml(title)
    );
    let x = |t: f64| left + pw * t / duration.max(1.0);
    for (i, (name, series, bound)) in panels.iter().enumerate() {
        let y0 = top + i as f64 * (ph + gap);
        let max = series
            .iter()
            .flat_map(|se| se.points.iter().map(|p| p.1))
            .chain(bound.iter().copied())
            .fold(0.0f64, f64::max)
            .max(1.0)
            * 1.08;
        let y = |v: f64| y0 + ph - ph * v / max;
        for wdw in windows {
            let (x1, x2) = (x(wdw.start), x(wdw.end.max(wdw.start + 1.0)));
            let _ = write!(
                s,
                r##"<rect x="{x1:.1}" y="{y0}" width="{:.1}" height="{ph}" fill="#f4d03f" opacity="0.25"/>"##,
                x2 - x1
            );
            if i == 0 {
                let _ = write!(
                    s,
                    r##"<text x="{x1:.1}" y="{:.1}" font-size="9" fill="#7d6608">{}</text>"##,
                    y0 - 3.0,
                    wdw.fault.name()
                );
            }
        }
        let _ = write!(
            s,
            r##"<rect x="{left}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#999"/><text x="{left}" y="{:.1}" font-weight="bold">{}</text>"##,
            y0 - if i == 0 { 18.0 } else { 14.0 },
            xml(name)
        );
        for k in 0..=4 {
            let v = max * k as f64 / 4.0;
            let _ = write!(
                s,
                r##"<line x1="{left}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + pw,
                y(v),
                y(v),
                left - 4.0,
                y(v) + 4.0,
                short(v)
            );
        }
        if let Some(bv) = bound {
            let _ = write!(
                s,
                r##"<line x1="{left}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#d62728" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" fill="#d62728">bound {}</text>"##,
                left + pw,
                y(*bv),
                y(*bv),
                left + 6.0,
                y(*bv) - 4.0,
                short(*bv)
            );
        }
        for (j, se) in series.iter().enumerate() {
            let path: Vec<String> = se
                .points
                .iter()
                .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
                .collect();
            let _ = write!(
                s,
                r##"<polyline fill="none" stroke="{}" stroke-width="1.6" points="{}"/><text x="{:.1}" y="{:.1}" fill="{}">{}</text>"##,
                se.color,
                path.join(" "),
                left + pw + 6.0,
                y0 + 14.0 + 14.0 * j as f64,
                se.color,
                xml(se.name)
            );
        }
        // Time axis.
        for k in 0..=6 {
            let t = duration * k as f64 / 6.0;
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
                x(t),
                y0 + ph + 13.0,
                clock(t)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn clock(t: f64) -> String {
    let t = t.round() as u64;
    if t >= 3600 {
        format!("{}h{:02}m", t / 3600, t % 3600 / 60)
    } else {
        format!("{}m{:02}s", t / 60, t % 60)
    }
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

struct Tmpfs {
    path: PathBuf,
    mounted: bool,
}

impl Tmpfs {
    fn mount(path: &Path, size: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let _ = std::process::Command::new("umount")
            .arg(path)
            .stderr(Stdio::null())
            .status();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
            mounted: true,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("umount")
                .arg(&self.path)
                .status();
        }
    }
}

/// Free bytes of the filesystem holding `p` (from `df`, which is in coreutils).
fn free_bytes(p: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(p)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// Fills the disk holding the cache: a ballast file takes all but 256 KiB of the free space.
fn fill_disk(ballast: &Path) -> Result<String, String> {
    use std::io::Write;
    let dir = ballast.parent().ok_or("no directory")?;
    let free = free_bytes(dir).ok_or("df failed")?;
    let want = free.saturating_sub(256 << 10);
    let mut f = std::fs::File::create(ballast).map_err(|e| e.to_string())?;
    let block = vec![0xaau8; 1 << 20];
    let mut written = 0u64;
    while written < want {
        let n = (want - written).min(block.len() as u64) as usize;
        if f.write_all(&block[..n]).is_err() {
            break;
        }
        written += n as u64;
    }
    Ok(format!("ballast {:.0} MiB", mib(written as f64)))
}

#[allow(clippy::too_many_arguments)]
async fn faults(
    args: Args,
    t0: Instant,
    sw: Arc<Switches>,
    parent: Arc<Parent>,
    pid: u32,
    config: PathBuf,
    ballast: Option<PathBuf>,
    stop: CancellationToken,
) -> Vec<Window> {
    let total = args.duration.as_secs_f64();
    // Faults fill the run after a quiet start, each followed by as long a quiet time.
    let first = (total * 0.12).min(60.0);
    let slot = ((total - first) / (2.0 * Fault::ALL.len() as f64)).clamp(4.0, 60.0);
    let mut windows = Vec::new();
    let mut at = first;
    let mut i = 0;
    while at + slot <= total - 2.0 {
        let fault = Fault::ALL[i % Fault::ALL.len()];
        i += 1;
        let wait = t0 + Duration::from_secs_f64(at);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(wait.into()) => {}
        }
        let start = t0.elapsed().as_secs_f64();
        let mut note = String::new();
        let hold = Duration::from_secs_f64(slot);
        match fault {
            Fault::OriginReset => {
                sw.reset.store(true, Ordering::Relaxed);
                tokio::time::sleep(hold).await;
                sw.reset.store(false, Ordering::Relaxed);
            }
            Fault::SlowOrigin => {
                sw.slow.store(true, Ordering::Relaxed);
                tokio::time::sleep(hold).await;
                sw.slow.store(false, Ordering::Relaxed);
            }
            Fault::Burst5xx => {
                sw.burst.store(true, Ordering::Relaxed);
                tokio::time::sleep(hold).await;
                sw.burst.store(false, Ordering::Relaxed);
            }
            Fault::ParentAway => {
                parent.go_away();
                tokio::time::sleep(hold).await;
                if let Err(e) = parent.come_back().await {
                    note = format!("FAILED: {e}");
                }
            }
            Fault::DiskFull => match &ballast {
                Some(b) => {
                    let b2 = b.clone();
                    note = match tokio::task::spawn_blocking(move || fill_disk(&b2)).await {
                        Ok(Ok(n)) => n,
                        Ok(Err(e)) => format!("FAILED: {e}"),
                        Err(e) => format!("FAILED: {e}"),
                    };
                    tokio::time::sleep(hold).await;
                    let _ = std::fs::remove_file(b);
                }
                None => note = "FAILED: no tmpfs for the cache (mount failed)".into(),
            },
            Fault::Reload => {
                // A real change: a cache rule appears or goes away.
                let rule = if i % 2 == 0 {
                    "[[cache-rule]]\nname = \"soak\"\npattern = '/never-matches/'\nmax = \"1m\"\n"
                } else {
                    ""
                };
                let _ = std::fs::write(&config, rule);
                if let Err(e) = signal(pid, "HUP") {
                    note = format!("FAILED: {e}");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        windows.push(Window {
            fault,
            start,
            end: t0.elapsed().as_secs_f64(),
            note,
        });
        at += 2.0 * slot;
    }
    windows
}

struct Check {
    name: String,
    ok: bool,
    detail: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let r = match args.mode.as_str() {
        "run" => run(args).await,
        "measure" => measure(args).await.map(|_| true),
        other => Err(anyhow!("unknown mode {other}: run or measure")),
    };
    match r {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("soak: {e:#}");
            println!("soak: 0 passed, 1 failed");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let b = bounds(&args)?;
    std::fs::create_dir_all(&args.out)?;
    let out = std::fs::canonicalize(&args.out)?;
    let cache_size = parse_size(&args.cache_size)?;
    // The cache lives on a tmpfs a little larger than --cache-size, so the disk-full fault
    // can fill the real filesystem under it.
    let tmpfs_size = cache_size + cache_size / 4 + (16 << 20);
    let (tmpfs, tmpfs_error) = match Tmpfs::mount(&out.join("tmpfs"), tmpfs_size) {
        Ok(t) => (Some(t), None),
        Err(e) => {
            eprintln!(
                "soak: cannot mount a tmpfs for the cache ({e}): the disk-full fault will FAIL (run as root)"
            );
            (None, Some(e))
        }
    };
    let base = tmpfs
        .as_ref()
        .map_or_else(|| out.join("disk"), |t| t.path.clone());
    let cache_dir = base.join("cache");
    let _ = std::fs::remove_dir_all(&cache_dir);
    std::fs::create_dir_all(&cache_dir)?;
    let ballast = tmpfs.as_ref().map(|t| t.path.join("ballast"));
    let config = out.join("cuttle.toml");
    std::fs::write(&config, "")?;

    let stop = CancellationToken::new();
    let sw = Arc::new(Switches::default());
    let origin = start_origin(sw.clone(), stop.clone()).await?;
    let parent = Parent::start(origin).await?;
    let t0 = Instant::now();
    let mut cuttle = start_cuttle(&args, &cache_dir, &config, Some(parent.addr), t0).await?;
    eprintln!(
        "soak: cuttle pid {} on {} (admin {}), origin {origin}, parent {}, cache {} in {}; {} clients for {}",
        cuttle.pid,
        cuttle.proxy,
        cuttle.admin,
        parent.addr,
        args.cache_size,
        cache_dir.display(),
        args.clients,
        humantime::format_duration(args.duration)
    );
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://{}", cuttle.proxy))?)
        .pool_max_idle_per_host(args.clients)
        .timeout(Duration::from_secs(60))
        .build()?;
    let admin_client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let tally = Arc::new(Tally::default());
    let traffic = Arc::new(Traffic {
        client,
        proxy: cuttle.proxy,
        origin,
        tally: tally.clone(),
        unique: AtomicU64::new(0),
        t0,
    });
    let deadline = t0 + args.duration;
    let mut workers = Vec::new();
    for i in 0..args.clients {
        let tr = traffic.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0x2545_f491));
            while Instant::now() < deadline {
                tr.op(&mut rng).await;
            }
        }));
    }
    let fault_task = tokio::spawn(faults(
        args.clone(),
        t0,
        sw.clone(),
        parent.clone(),
        cuttle.pid,
        config.clone(),
        ballast.clone(),
        stop.clone(),
    ));

    // Sampling.
    let mut samples: Vec<Sample> = Vec::new();
    let mut next = t0 + args.sample;
    let mut seen_errors = 0;
    println!(
        "{:>7} {:>8} {:>5} {:>5} {:>8} {:>7} {:>5} {:>5} {:>7} {:>6} {:>6} {:>8} {:>8}",
        "t",
        "rss MiB",
        "fds",
        "thrd",
        "du MiB",
        "inodes",
        "conns",
        "tunls",
        "req/s",
        "errs",
        "unexp",
        "p50 ms",
        "p99 ms"
    );
    while next <= deadline + Duration::from_millis(100) {
        tokio::time::sleep_until(next.into()).await;
        next += args.sample;
        let t = t0.elapsed().as_secs_f64();
        let (d, inodes) = {
            let c = cache_dir.clone();
            tokio::task::spawn_blocking(move || du(&c))
                .await
                .unwrap_or((0, 0))
        };
        let m = match admin_client
            .get(format!("http://{}/metrics", cuttle.admin))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let mut lat = std::mem::take(&mut *tally.latencies.lock());
        lat.sort_unstable();
        let errors = tally.errors.lock();
        let fresh = &errors[seen_errors..];
        seen_errors = errors.len();
        let s = Sample {
            t,
            rss: rss_bytes(cuttle.pid),
            fds: open_fds(cuttle.pid),
            threads: threads(cuttle.pid),
            du: d,
            inodes,
            conns: metric(&m, "cuttle_client_connections"),
            tunnels: metric(&m, "cuttle_tunnels"),
            reqs: lat.len() as u64,
            errors: fresh.len() as u64,
            // Decided at the end, once every fault window is known.
            unexpected: 0,
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
            disk_indexed: metric(&m, "cuttle_cache_bytes{tier=\"disk\"}"),
            mem_tier: metric(&m, "cuttle_cache_bytes{tier=\"memory\"}"),
        };
        drop(errors);
        println!(
            "{:>7} {:>8.1} {:>5} {:>5} {:>8.1} {:>7} {:>5} {:>5} {:>7.0} {:>6} {:>6} {:>8.1} {:>8.1}",
            clock(s.t),
            mib(s.rss as f64),
            s.fds,
            s.threads,
            mib(s.du as f64),
            s.inodes,
            s.conns,
            s.tunnels,
            s.reqs as f64 / args.sample.as_secs_f64(),
            s.errors,
            "",
            s.p50_ms,
            s.p99_ms
        );
        samples.push(s);
    }
    for w in workers {
        let _ = w.await;
    }
    stop.cancel();
    let windows = fault_task.await.unwrap_or_default();

    // Which errors no fault explains.
    let errors = tally.errors.lock().clone();
    let mut by_kind: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut unexpected_examples = Vec::new();
    for (t, kind, detail) in &errors {
        let e = by_kind.entry(kind.clone()).or_insert((0, 0));
        if excused(&windows, *t) {
            e.0 += 1;
        } else {
            e.1 += 1;
            if unexpected_examples.len() < 10 {
                unexpected_examples.push(format!("{:.1}s {kind} {detail}", t));
            }
        }
    }
    for s in samples.iter_mut() {
        let lo = s.t - args.sample.as_secs_f64();
        s.unexpected = errors
            .iter()
            .filter(|(t, _, _)| *t > lo && *t <= s.t && !excused(&windows, *t))
            .count() as u64;
    }
    let warnings = cuttle.warnings.lock().clone();
    let unexpected_warnings: Vec<&(f64, String)> = warnings
        .iter()
        .filter(|(t, _)| !in_any_window(&windows, *t))
        .collect();

    // cuttle must still be alive, and stop cleanly.
    let alive = cuttle.child.try_wait().ok().flatten().is_none();
    // The kernel's high-water mark of RSS: peaks between two samples count too.
    let peak_rss = status_kib(cuttle.pid, "VmHWM:") * 1024;
    let _ = signal(cuttle.pid, "TERM");
    let exit = tokio::time::timeout(Duration::from_secs(40), cuttle.child.wait()).await;
    let clean_exit = matches!(exit, Ok(Ok(s)) if s.success());
    drop(tmpfs);

    let warm = args.warmup.as_secs_f64();
    let after: Vec<&Sample> = samples.iter().filter(|s| s.t > warm).collect();
    let series = |f: &dyn Fn(&Sample) -> f64| after.iter().map(|s| f(s)).collect::<Vec<_>>();
    // RSS and fds swing with the faults (a slow origin holds connections and buffers, the
    // parent going away closes them all), and the thirds of a run hold different numbers of
    // fault samples: their growth is judged on the samples outside the fault windows (plus
    // their grace), when there are enough of them.
    let quiet: Vec<&Sample> = after
        .iter()
        .copied()
        .filter(|s| !in_any_window(&windows, s.t))
        .collect();
    let steady = |f: &dyn Fn(&Sample) -> f64| {
        if quiet.len() >= 6 {
            (
                quiet.iter().map(|s| f(s)).collect::<Vec<_>>(),
                "outside faults",
            )
        } else {
            (series(f), "all")
        }
    };
    let max_of = |f: &dyn Fn(&Sample) -> u64| samples.iter().map(f).max().unwrap_or(0);
    let results = cuttle.results.lock().clone();
    let count = |prefix: &str| -> u64 {
        results
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| *v)
            .sum()
    };

    let mut checks = Vec::new();
    let mut check = |name: &str, ok: bool, detail: String| {
        checks.push(Check {
            name: name.into(),
            ok,
            detail,
        })
    };
    let max_rss = max_of(&|s| s.rss);
    check(
        "rss within the memory formula",
        max_rss <= b.rss,
        format!(
            "max {:.1} MiB, bound {:.1} MiB",
            mib(max_rss as f64),
            mib(b.rss as f64)
        ),
    );
    check(
        "peak rss (VmHWM) within the memory formula",
        peak_rss <= b.rss,
        format!(
            "peak {:.1} MiB, bound {:.1} MiB",
            mib(peak_rss as f64),
            mib(b.rss as f64)
        ),
    );
    let max_du = max_of(&|s| s.du);
    check(
        "du of the cache directory <= 1.1 x --cache-size",
        max_du <= b.du,
        format!(
            "max {:.1} MiB ({:.3} x {}), bound {:.1} MiB",
            mib(max_du as f64),
            max_du as f64 / cache_size as f64,
            args.cache_size,
            mib(b.du as f64)
        ),
    );
    let max_inodes = max_of(&|s| s.inodes);
    check(
        "inodes within cache-size/32KiB + 260",
        max_inodes <= b.inodes,
        format!("max {max_inodes}, bound {}", b.inodes),
    );
    let tol = args.growth_tolerance;
    // The disk tier filling up to its bound is not growth: once du has reached 90% of
    // --cache-size it stays there by eviction, and so does the number of files.
    let dus = series(&|s| s.du as f64);
    let third = (dus.len() / 3).max(1);
    let saturated = dus.len() >= 3
        && dus[dus.len() - third..].iter().sum::<f64>() / third as f64 >= 0.9 * cache_size as f64;
    for (name, (vals, which), slack, bounded) in [
        ("rss", steady(&|s| s.rss as f64), 16.0 * 1048576.0, false),
        ("fds", steady(&|s| s.fds as f64), 32.0, false),
        ("inodes", (series(&|s| s.inodes as f64), "all"), 64.0, true),
        ("du", (dus.clone(), "all"), 8.0 * 1048576.0, true),
    ] {
        let g = grows(&vals, tol, slack).filter(|_| !(bounded && saturated));
        check(
            &format!("{name} flat after the warm-up"),
            g.is_none() && vals.len() >= 3,
            match g {
                Some((a, z)) => format!("first third {a:.0}, last third {z:.0} ({which})"),
                None if vals.len() < 3 => format!("only {} samples after the warm-up", vals.len()),
                None => format!(
                    "{} samples ({which}), tolerance {:.0}%",
                    vals.len(),
                    tol * 100.0
                ),
            },
        );
    }
    let unexpected: u64 = by_kind.values().map(|v| v.1).sum();
    check(
        "no error that no injected fault explains",
        unexpected == 0,
        if unexpected == 0 {
            format!("{} injected", errors.len())
        } else {
            unexpected_examples.join("; ")
        },
    );
    check(
        "no warning outside fault windows",
        unexpected_warnings.is_empty(),
        unexpected_warnings
            .iter()
            .take(5)
            .map(|(t, l)| format!("{t:.1}s {l}"))
            .collect::<Vec<_>>()
            .join(" | "),
    );
    for f in Fault::ALL {
        let ran: Vec<&Window> = windows.iter().filter(|w| w.fault == f).collect();
        let failed: Vec<&str> = ran
            .iter()
            .filter(|w| w.note.starts_with("FAILED"))
            .map(|w| w.note.as_str())
            .collect();
        let mut detail = format!("{} time(s)", ran.len());
        if f == Fault::DiskFull
            && let Some(e) = &tmpfs_error
        {
            detail = format!("no tmpfs: {e}");
        }
        if let Some(first) = failed.first() {
            detail = first.to_string();
        }
        check(
            &format!("fault {} injected", f.name()),
            !ran.is_empty() && failed.is_empty() && (f != Fault::DiskFull || tmpfs_error.is_none()),
            detail,
        );
    }
    let coverage = [
        ("memory hits", count("TCP_MEM_HIT")),
        ("disk hits", count("TCP_HIT")),
        ("misses", count("TCP_MISS")),
        ("revalidated 304", count("TCP_REFRESH_UNMODIFIED")),
        ("revalidated 200", count("TCP_REFRESH_MODIFIED")),
        (
            "ranges 206",
            results
                .iter()
                .filter(|(k, _)| k.ends_with("/206"))
                .map(|(_, v)| *v)
                .sum(),
        ),
        ("tunnels", count("TCP_TUNNEL")),
        ("client aborts", tally.aborted.load(Ordering::Relaxed)),
    ];
    for (name, n) in coverage {
        check(&format!("traffic had {name}"), n > 0, format!("{n}"));
    }
    check("cuttle alive at the end", alive, String::new());
    check("cuttle exits 0 on SIGTERM", clean_exit, format!("{exit:?}"));

    // Report.
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# cuttle soak{}\n\n{} of traffic, {} clients, `--cache-size {} --cache-mem {} --max-connections {}`, samples every {}, warm-up {}.\n",
        if args.label.is_empty() {
            String::new()
        } else {
            format!(": {}", args.label)
        },
        humantime::format_duration(args.duration),
        args.clients,
        args.cache_size,
        args.cache_mem,
        args.max_connections,
        humantime::format_duration(args.sample),
        humantime::format_duration(args.warmup)
    );
    let _ = writeln!(
        md,
        "| t | RSS MiB | fds | threads | du MiB | inodes | conns | tunnels | req/s | errors (not injected) | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for s in &samples {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {} | {} | {:.1} | {} | {} | {} | {:.0} | {} ({}) | {:.1} | {:.1} |",
            clock(s.t),
            mib(s.rss as f64),
            s.fds,
            s.threads,
            mib(s.du as f64),
            s.inodes,
            s.conns,
            s.tunnels,
            s.reqs as f64 / args.sample.as_secs_f64(),
            s.errors,
            s.unexpected,
            s.p50_ms,
            s.p99_ms
        );
    }
    let _ = writeln!(
        md,
        "\nBounds: RSS {:.1} MiB (formula), du {:.1} MiB, inodes {}.\n",
        mib(b.rss as f64),
        mib(b.du as f64),
        b.inodes
    );
    let _ = writeln!(md, "Faults:\n");
    for w in &windows {
        let _ = writeln!(
            md,
            "- {} {}–{} {}",
            w.fault.name(),
            clock(w.start),
            clock(w.end),
            w.note
        );
    }
    let _ = writeln!(md, "\nErrors by kind (injected, not injected):\n");
    for (k, (a, z)) in &by_kind {
        let _ = writeln!(md, "- `{k}`: {a}, {z}");
    }
    let _ = writeln!(md, "\nAccess log results:\n");
    for (k, v) in &results {
        let _ = writeln!(md, "- `{k}`: {v}");
    }
    let ops = tally.by_op.lock().clone();
    let _ = writeln!(
        md,
        "\nOperations: {ops:?}; completed {}, client aborts {}.\n",
        tally.ok.load(Ordering::Relaxed),
        tally.aborted.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        md,
        "cuttle warnings: {} ({} outside fault windows).\n",
        warnings.len(),
        unexpected_warnings.len()
    );
    let _ = writeln!(md, "Checks:\n");
    for c in &checks {
        let _ = writeln!(
            md,
            "- {} {}: {}",
            if c.ok { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    let mut csv = String::from(
        "t,rss,fds,threads,du,inodes,conns,tunnels,reqs,errors,unexpected,p50_ms,p99_ms,disk_indexed,mem_tier\n",
    );
    for s in &samples {
        let _ = writeln!(
            csv,
            "{:.1},{},{},{},{},{},{},{},{},{},{},{:.2},{:.2},{},{}",
            s.t,
            s.rss,
            s.fds,
            s.threads,
            s.du,
            s.inodes,
            s.conns,
            s.tunnels,
            s.reqs,
            s.errors,
            s.unexpected,
            s.p50_ms,
            s.p99_ms,
            s.disk_indexed,
            s.mem_tier
        );
    }
    let title = format!(
        "cuttle soak{}: {} clients, cache-size {}, cache-mem {}, {}",
        if args.label.is_empty() {
            String::new()
        } else {
            format!(" ({})", args.label)
        },
        args.clients,
        args.cache_size,
        args.cache_mem,
        humantime::format_duration(args.duration)
    );
    let svg = chart(&title, &samples, &windows, &b, args.duration.as_secs_f64());
    std::fs::write(out.join("soak.md"), &md)?;
    std::fs::write(out.join("soak.csv"), &csv)?;
    std::fs::write(out.join("soak.svg"), &svg)?;
    println!("\n{md}");
    println!(
        "soak: table {}, chart {}",
        out.join("soak.md").display(),
        out.join("soak.svg").display()
    );
    let passed = checks.iter().filter(|c| c.ok).count();
    let failed = checks.len() - passed;
    println!("soak: {passed} passed, {failed} failed");
    Ok(failed == 0)
}

// ---------------------------------------------------------------------------------------
// measure: the formula's per-connection and per-tunnel constants
// ---------------------------------------------------------------------------------------

async fn settle(pid: u32) -> u64 {
    tokio::time::sleep(Duration::from_secs(2)).await;
    rss_bytes(pid)
}

async fn measure(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let out = std::fs::canonicalize(&args.out)?;
    let cache_dir = out.join("measure-cache");
    let _ = std::fs::remove_dir_all(&cache_dir);
    std::fs::create_dir_all(&cache_dir)?;
    let config = out.join("measure.toml");
    std::fs::write(&config, "")?;
    let stop = CancellationToken::new();
    let origin = start_origin(Arc::new(Switches::default()), stop.clone()).await?;
    let t0 = Instant::now();
    let mut margs = args.clone();
    margs.max_connections = (args.measure_count as u64) * 2 + 16;
    let c = start_cuttle(&margs, &cache_dir, &config, None, t0).await?;
    let n = args.measure_count;
    // Warm the path once (a memory hit), so what follows measures connections only.
    let warm = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://{}", c.proxy))?)
        .build()?;
    for _ in 0..3 {
        let _ = warm
            .get(format!("http://{origin}/c/w/1024"))
            .send()
            .await?
            .bytes()
            .await?;
    }
    let base = settle(c.pid).await;

    // Idle keep-alive connections, each after one request (a memory hit).
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(c.proxy).await?;
        s.write_all(
            format!("GET http://{origin}/c/w/1024 HTTP/1.1\r\nHost: {origin}\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = vec![0u8; 4096];
        let mut got = 0;
        while got < 1024 {
            let k = s.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            got += k;
        }
        conns.push(s);
    }
    let with_conns = settle(c.pid).await;
    drop(conns);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_conns = settle(c.pid).await;

    // Tunnels that have carried data both ways (their buffers allocated), then idle.
    let mut tunnels = Vec::new();
    for i in 0..n {
        let mut s = TcpStream::connect(c.proxy).await?;
        s.write_all(format!("CONNECT {origin} HTTP/1.1\r\nHost: {origin}\r\n\r\n").as_bytes())
            .await?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await? == 0 {
                bail!("tunnel {i} closed");
            }
            head.push(byte[0]);
        }
        let len = 256 << 10;
        s.write_all(format!("GET /n/m{i}/{len} HTTP/1.1\r\nHost: {origin}\r\n\r\n").as_bytes())
            .await?;
        let mut got = 0;
        let mut buf = vec![0u8; 64 << 10];
        while got < len {
            let k = s.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            got += k;
        }
        tunnels.push(s);
    }
    let with_tunnels = settle(c.pid).await;
    let per_conn = with_conns.saturating_sub(base) as f64 / n as f64;
    let per_tunnel = with_tunnels.saturating_sub(after_conns) as f64 / n as f64;
    println!(
        "measure: {n} connections and {n} tunnels against {}",
        args.cuttle.display()
    );
    println!("measure: rss at rest {:.1} MiB", mib(base as f64));
    println!(
        "measure: rss with {n} idle connections {:.1} MiB: {:.1} KiB per connection",
        mib(with_conns as f64),
        per_conn / 1024.0
    );
    println!(
        "measure: rss with {n} tunnels (256 KiB through each) {:.1} MiB: {:.1} KiB per tunnel",
        mib(with_tunnels as f64),
        per_tunnel / 1024.0
    );
    drop(tunnels);
    stop.cancel();
    Ok(())
}

//! Load client for `bench/scale.sh`: holds many concurrent CONNECT tunnels open through a proxy
//! and sends keep-alive HTTP/1.1 requests inside each one, to see how tunnel latency and
//! throughput scale with the number of tunnels (wrk cannot speak CONNECT).
//!
//! Usage: `bench_tunnels --proxy 127.0.0.1:P --target 127.0.0.1:O --path /bytes/1024
//! --conns N --seconds S` (add `--direct` to connect to the target without a proxy, for the
//! baseline). All tunnels are opened first, at most 256 handshakes at a time, and only then
//! does the timed phase start for all of them. Each tunnel sends one request at a time and
//! reads the whole response. It prints one summary line on stdout:
//! `BENCH conns=… established=… requests=… duration_us=… bytes=… p50_us=… p99_us=… errors=…`.
//! Every phase is bounded in time (opening: 60 s; a request: 30 s).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Barrier, Semaphore};

/// Opening every tunnel must finish within this, or the tunnels not open by then count as errors.
const OPEN_DEADLINE: Duration = Duration::from_secs(60);
/// Longest wait for one response (a stuck tunnel counts as an error, not a latency sample).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Handshakes in flight at once while opening (a connect storm would only measure SYN backlogs).
const OPEN_CONCURRENCY: usize = 256;

struct Opts {
    proxy: Option<SocketAddr>,
    target: SocketAddr,
    path: String,
    conns: usize,
    seconds: u64,
}

fn parse_args() -> anyhow::Result<Opts> {
    let mut proxy = None;
    let mut target = None;
    let mut path = "/bytes/1024".to_string();
    let mut conns = 64usize;
    let mut seconds = 10u64;
    let mut direct = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--proxy" => proxy = Some(value("--proxy")?.parse().context("--proxy ip:port")?),
            "--target" => target = Some(value("--target")?.parse().context("--target ip:port")?),
            "--path" => path = value("--path")?,
            "--conns" => conns = value("--conns")?.parse().context("--conns")?,
            "--seconds" => seconds = value("--seconds")?.parse().context("--seconds")?,
            "--direct" => direct = true,
            other => bail!("unknown argument {other}"),
        }
    }
    let target = target.context("--target is required")?;
    if !direct && proxy.is_none() {
        bail!("--proxy is required (or --direct)");
    }
    Ok(Opts {
        proxy: if direct { None } else { proxy },
        target,
        path,
        conns,
        seconds,
    })
}

/// Opens a TCP connection to the target, through a CONNECT tunnel when a proxy is given.
async fn open(opts: &Opts) -> anyhow::Result<TcpStream> {
    let Some(proxy) = opts.proxy else {
        let s = TcpStream::connect(opts.target).await?;
        s.set_nodelay(true)?;
        return Ok(s);
    };
    let mut s = TcpStream::connect(proxy).await?;
    s.set_nodelay(true)?;
    let t = opts.target;
    s.write_all(format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n").as_bytes())
        .await?;
    // The proxy's answer ends with an empty line and nothing follows it before our request.
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || s.read(&mut byte).await? == 0 {
            bail!("bad CONNECT answer: {:?}", String::from_utf8_lossy(&head));
        }
        head.push(byte[0]);
    }
    let status_ok = head
        .split(|b| *b == b' ')
        .nth(1)
        .is_some_and(|code| code == b"200");
    if !status_ok {
        bail!("CONNECT refused: {:?}", String::from_utf8_lossy(&head));
    }
    Ok(s)
}

#[derive(Default)]
struct TaskResult {
    established: bool,
    latencies_us: Vec<u32>,
    bytes: u64,
    errors: u64,
}

async fn run_one(
    opts: Arc<Opts>,
    gate: Arc<Semaphore>,
    start: Arc<Barrier>,
    open_by: Instant,
) -> TaskResult {
    let mut r = TaskResult::default();
    let opened = {
        let permit = gate.acquire().await;
        let left = open_by.saturating_duration_since(Instant::now());
        let conn = tokio::time::timeout(left, async {
            let s = open(&opts).await?;
            let (sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(s)).await?;
            anyhow::Ok((sender, conn))
        })
        .await;
        drop(permit);
        match conn {
            Ok(Ok(c)) => Some(c),
            _ => None,
        }
    };
    // Every task reaches the barrier, opened or not, so the timed phase starts for all at once.
    start.wait().await;
    let Some((mut sender, conn)) = opened else {
        r.errors += 1;
        return r;
    };
    r.established = true;
    let driver = tokio::spawn(conn);
    let deadline = Instant::now() + Duration::from_secs(opts.seconds);
    let host = opts.target.to_string();
    while Instant::now() < deadline {
        let Ok(req) = Request::get(opts.path.as_str())
            .header(http::header::HOST, host.as_str())
            .body(Empty::<Bytes>::new())
        else {
            r.errors += 1;
            break;
        };
        let t0 = Instant::now();
        let res = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let resp = sender.send_request(req).await?;
            let ok = resp.status().is_success();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((ok, body.len() as u64))
        })
        .await;
        match res {
            Ok(Ok((true, n))) => {
                let us = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
                r.latencies_us.push(us);
                r.bytes += n;
            }
            _ => {
                r.errors += 1;
                break;
            }
        }
    }
    driver.abort();
    r
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = Arc::new(parse_args()?);
    let gate = Arc::new(Semaphore::new(OPEN_CONCURRENCY));
    let start = Arc::new(Barrier::new(opts.conns + 1));
    let open_by = Instant::now() + OPEN_DEADLINE;
    let mut tasks = Vec::with_capacity(opts.conns);
    for _ in 0..opts.conns {
        tasks.push(tokio::spawn(run_one(
            opts.clone(),
            gate.clone(),
            start.clone(),
            open_by,
        )));
    }
    start.wait().await;
    let t0 = Instant::now();
    let mut lat = Vec::new();
    let (mut established, mut bytes, mut errors) = (0usize, 0u64, 0u64);
    for t in tasks {
        match t.await {
            Ok(r) => {
                established += usize::from(r.established);
                bytes += r.bytes;
                errors += r.errors;
                lat.extend(r.latencies_us);
            }
            Err(_) => errors += 1,
        }
    }
    let dur = t0.elapsed();
    lat.sort_unstable();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "BENCH conns={} established={} requests={} duration_us={} bytes={} p50_us={} p99_us={} errors={}",
        opts.conns,
        established,
        lat.len(),
        dur.as_micros(),
        bytes,
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        errors
    )?;
    out.flush()?;
    Ok(())
}

//! The cache's storage machinery: one upstream fetch shared by many clients as it streams,
//! fills that survive their client, responses that are never committed when incomplete, the
//! memory and disk tiers, restart, corruption, a real crash (SIGKILL) of the binary, eviction
//! bounds, unusable and full disks, and the object-size limit.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use cuttle::http::body::{Body, boxed, full};
use futures_util::StreamExt;
use http::Response;
use http_body::Frame;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

const MIB: usize = 1 << 20;
const KIB: usize = 1 << 10;

/// Deterministic pseudo-random bytes (xorshift64), different per seed.
fn data(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

/// A cacheable response with the whole body at once.
fn cacheable(body: Bytes) -> Response<Body> {
    Response::builder()
        .header("cache-control", "max-age=3600")
        .header("content-type", "application/octet-stream")
        .body(full(body))
        .unwrap()
}

/// Bytes in the files under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

/// Bytes in the files under `dir` in whole 4 KiB blocks (as the disk tier and `du` count
/// them).
fn blocks_under(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len().div_ceil(4096) * 4096))
        .sum()
}

/// Keeps an origin at most 8 MiB ahead of the cache's disk writer (the bytes in
/// `<cache_dir>/v2/tmp`): the cache abandons an entry whose writer falls 16 MiB behind, which
/// an origin on loopback can cause on a loaded machine. Only for one fill at a time.
async fn pace(cache_dir: &Path, sent: usize) {
    let tmp = cache_dir.join("v2/tmp");
    let deadline = Instant::now() + Duration::from_secs(30);
    while (bytes_under(&tmp) as usize) + 8 * MIB < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A cacheable response streamed in `chunk`-sized pieces (with `Content-Length` unless
/// `chunked`). With a gate, everything before offset `hold_at` is sent, then the body waits
/// until the gate turns true. With `paced`, the origin waits for the cache's disk writer.
fn streamed(
    body: Bytes,
    chunk: usize,
    chunked: bool,
    gate: Option<(usize, watch::Receiver<bool>)>,
    paced: Option<PathBuf>,
) -> Response<Body> {
    let len = (!chunked).then_some(body.len());
    let (tx, rx) = mpsc::channel::<Bytes>(2);
    tokio::spawn(async move {
        let mut pos = 0;
        while pos < body.len() {
            if let Some(dir) = &paced {
                pace(dir, pos).await;
            }
            if let Some((hold_at, g)) = &gate
                && pos >= *hold_at
            {
                let mut g = g.clone();
                if g.wait_for(|open| *open).await.is_err() {
                    return;
                }
            }
            let end = (pos + chunk).min(body.len());
            if tx.send(body.slice(pos..end)).await.is_err() {
                return;
            }
            pos = end;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    });
    let mut r = Response::builder()
        .header("cache-control", "max-age=3600")
        .header("content-type", "application/octet-stream");
    if let Some(n) = len {
        r = r.header("content-length", n);
    }
    r.body(boxed(http_body_util::StreamBody::new(stream)))
        .unwrap()
}

/// GET through `client`; the status, the `Cache-Status` field and the body (or the error that
/// ended it).
async fn get(client: &reqwest::Client, url: &str) -> (u16, String, Result<Bytes, reqwest::Error>) {
    let r = client.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let cs = r
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, cs, r.bytes().await)
}

/// GET that must succeed with `want` as the body; returns the access-log line.
async fn fetch_ok(p: &TestProxy, url: &str, want: &Bytes) -> String {
    let (status, _, body) = get(&p.client(), url).await;
    assert_eq!(status, 200, "{url}");
    let body = body.unwrap_or_else(|e| panic!("{url}: body failed: {e}"));
    assert!(
        body == *want,
        "{url}: wrong body ({} bytes, want {})",
        body.len(),
        want.len()
    );
    let path = url.splitn(4, '/').nth(3).unwrap_or("");
    p.log_with(&format!("/{path} ")).await
}

/// How many requests for `path` the origin saw.
fn hits_for(o: &Origin, path: &str) -> usize {
    o.seen().iter().filter(|s| s.uri.path() == path).count()
}

/// One stored file, decoded and verified like the cache does.
#[derive(Debug)]
struct StoredFile {
    path: PathBuf,
    url: String,
    body_offset: u64,
    body_len: u64,
    /// Length field and checksum match.
    valid: bool,
}

fn decode_file(path: &Path) -> Result<StoredFile, String> {
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    if data.len() < 9 || &data[..4] != b"CUTL" {
        return Err("bad magic".into());
    }
    // Version 2 (written now): BLAKE3 checksum; version 1 (still read): SHA-256.
    if data[4] != 1 && data[4] != 2 {
        return Err(format!("version {}", data[4]));
    }
    let meta_len = u32::from_le_bytes(data[5..9].try_into().unwrap()) as usize;
    if data.len() < 9 + meta_len + 40 {
        return Err("truncated".into());
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&data[9..9 + meta_len]).map_err(|e| e.to_string())?;
    let body_end = data.len() - 40;
    let body_len = (body_end - 9 - meta_len) as u64;
    let len_field = u64::from_le_bytes(data[body_end..body_end + 8].try_into().unwrap());
    let sum: [u8; 32] = if data[4] == 2 {
        blake3::hash(&data[9..body_end]).into()
    } else {
        Sha256::digest(&data[9..body_end]).into()
    };
    Ok(StoredFile {
        path: path.to_path_buf(),
        url: meta["url"].as_str().unwrap_or_default().to_string(),
        body_offset: (9 + meta_len) as u64,
        body_len,
        valid: len_field == body_len && sum[..] == data[body_end + 8..],
    })
}

/// Every regular file under `dir` (recursively).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// The files under `<cache_dir>/v2/objects`, decoded.
fn stored(cache_dir: &Path) -> Vec<StoredFile> {
    files_under(&cache_dir.join("v2/objects"))
        .iter()
        .map(|p| decode_file(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

fn stored_for(cache_dir: &Path, url: &str) -> StoredFile {
    stored(cache_dir)
        .into_iter()
        .find(|f| f.url == url)
        .unwrap_or_else(|| panic!("no stored file for {url}"))
}

/// Options with an explicit cache directory.
fn opts_in(dir: &Path) -> cuttle::config::Options {
    cuttle::config::Options {
        cache_dir: Some(dir.to_path_buf()),
        ..opts()
    }
}

// ---------------------------------------------------------------------------------------
// 1. Coalescing at scale
// ---------------------------------------------------------------------------------------

/// 50 clients, 64 MiB: one origin request; every client streams (bytes arrive before the
/// origin has finished) and gets the origin's exact bytes; clients arriving while the fill is
/// already streaming join it instead of fetching again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_share_one_streaming_fetch() {
    const LEN: usize = 64 * MIB;
    const CLIENTS: usize = 50;
    let body = data(LEN, 1);
    let dir = tempfile::tempdir().unwrap();
    let (open, gate) = watch::channel(false);
    let (b, d) = (body.clone(), dir.path().to_path_buf());
    let origin = Origin::start(move |_req| {
        let r = streamed(
            b.clone(),
            MIB,
            false,
            Some((LEN - MIB, gate.clone())),
            Some(d.clone()),
        );
        async move { r }
    })
    .await;
    let p = TestProxy::start(opts_in(dir.path())).await;
    let url = origin.url("/big.bin");
    let client = p.client();
    let received: Vec<Arc<AtomicU64>> = (0..CLIENTS).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let spawn = |i: usize| {
        let (client, url, body, got) = (
            client.clone(),
            url.clone(),
            body.clone(),
            received[i].clone(),
        );
        tokio::spawn(async move {
            let r = client.get(&url).send().await.map_err(|e| e.to_string())?;
            if r.status() != 200 {
                return Err(format!("status {}", r.status()));
            }
            let mut s = r.bytes_stream();
            let mut pos = 0usize;
            while let Some(c) = s.next().await {
                let c = c.map_err(|e| format!("after {pos} bytes: {e}"))?;
                if pos + c.len() > LEN || c[..] != body[pos..pos + c.len()] {
                    return Err(format!("wrong bytes at {pos}"));
                }
                pos += c.len();
                got.store(pos as u64, Ordering::SeqCst);
            }
            Ok(Sha256::digest(&body[..pos]))
        })
    };
    // The first client starts the fetch and is already receiving...
    let mut tasks = vec![spawn(0)];
    until(30, "the first client's first bytes", || {
        received[0].load(Ordering::SeqCst) > 0
    })
    .await;
    // ...when the 49 others arrive: they join the streaming fill.
    for i in 1..CLIENTS {
        tasks.push(spawn(i));
    }
    until(60, "every client receiving bytes", || {
        received.iter().all(|r| r.load(Ordering::SeqCst) > 0)
    })
    .await;
    // The origin has not sent its last chunk yet: every client got bytes while it streamed.
    assert!(
        received
            .iter()
            .all(|r| r.load(Ordering::SeqCst) <= (LEN - MIB) as u64)
    );
    assert_eq!(origin.hits(), 1, "one origin request for {CLIENTS} clients");
    open.send(true).unwrap();
    let want = Sha256::digest(&body);
    for (i, t) in tasks.into_iter().enumerate() {
        let got = t
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(got, want, "client {i}: body hash");
    }
    assert_eq!(origin.hits(), 1);
    until(20, "50 access-log lines", || p.all_logs().len() >= CLIENTS).await;
    let logs = p.all_logs();
    let count = |code: &str| logs.iter().filter(|l| l.contains(code)).count();
    assert_eq!(count(" TCP_MISS/200 "), 1, "{logs:#?}");
    assert_eq!(
        count(" TCP_CF_MISS/200 ") + count(" TCP_CF_HIT/200 "),
        CLIENTS - 1,
        "{logs:#?}"
    );
    p.settled(1).await;
    assert_eq!(p.cache().stats.stored.load(Ordering::SeqCst), 1);
    drop(client);
    p.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 2. The fetching client goes away
// ---------------------------------------------------------------------------------------

/// The client whose miss started the fill disconnects mid-body: the fill goes on, and the
/// next request is a hit with the whole, correct body (the origin saw one request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_survives_its_client() {
    const LEN: usize = 6 * MIB;
    let body = data(LEN, 2);
    let (open, gate) = watch::channel(false);
    let b = body.clone();
    let origin = Origin::start(move |_req| {
        let r = streamed(b.clone(), 256 * KIB, false, Some((MIB, gate.clone())), None);
        async move { r }
    })
    .await;
    let p = TestProxy::start(opts()).await;
    let url = origin.url("/leaver.bin");
    {
        let client = p.client();
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let mut s = r.bytes_stream();
        let first = s.next().await.unwrap().unwrap();
        assert!(!first.is_empty() && first[..] == body[..first.len()]);
        // The client goes away with at most 1 MiB of 6.
    }
    open.send(true).unwrap();
    let line = p.log_with("/leaver.bin").await;
    assert!(line.contains(" TCP_MISS_ABORTED/200 "), "{line}");
    p.settled(1).await;
    assert_eq!(p.cache().stats.stored.load(Ordering::SeqCst), 1);
    let line = fetch_ok(&p, &url, &body).await;
    assert!(line.contains("HIT/200 "), "{line}");
    assert!(!line.contains("MISS"), "{line}");
    assert_eq!(origin.hits(), 1);
    p.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 3. Incomplete upstream bodies are never committed
// ---------------------------------------------------------------------------------------

/// A raw HTTP/1.1 origin: `respond(n)` gives the bytes written for the n-th request (from
/// 0); the connection is closed after each.
struct RawOrigin {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawOrigin {
    async fn start(respond: impl Fn(usize) -> Vec<u8> + Send + Sync + 'static) -> RawOrigin {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let (h, respond) = (hits.clone(), Arc::new(respond));
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (h, respond) = (h.clone(), respond.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let n = h.fetch_add(1, Ordering::SeqCst);
                    let _ = s.write_all(&respond(n)).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        RawOrigin { addr, hits, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn head(extra: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\nConnection: close\r\n{extra}\r\n")
        .into_bytes()
}

/// The first answer is cut short by `cut`, the later ones are complete: the cut one is not
/// stored (the client sees an error, not a short body), the next is, and then it is a hit.
async fn cut_response_is_not_committed(
    body: Bytes,
    cut: fn(&Bytes) -> Vec<u8>,
    full_resp: fn(&Bytes) -> Vec<u8>,
) {
    let b = body.clone();
    let origin = RawOrigin::start(move |n| if n == 0 { cut(&b) } else { full_resp(&b) }).await;
    let p = TestProxy::start(opts()).await;
    let url = origin.url("/cut.bin");
    let (status, _, got) = get(&p.client(), &url).await;
    assert_eq!(status, 200);
    assert!(
        got.is_err(),
        "a cut-off body must reach the client as an error, not as a complete response"
    );
    let line = p.log_with("/cut.bin").await;
    assert!(line.contains("ABORTED"), "{line}");
    p.settled(1).await;
    let c = p.cache();
    assert_eq!(c.stats.stored.load(Ordering::SeqCst), 0);
    assert_eq!(c.stats.not_stored.load(Ordering::SeqCst), 1);
    assert!(stored(p.cache_dir.as_ref().unwrap().path()).is_empty());
    // Not committed: the next request goes to the origin...
    let line = fetch_ok(&p, &url, &body).await;
    assert!(line.contains(" TCP_MISS/200 "), "{line}");
    assert_eq!(origin.hits(), 2);
    // ...and that complete answer is stored.
    p.settled(2).await;
    let line = fetch_ok(&p, &url, &body).await;
    assert!(line.contains("HIT/200 "), "{line}");
    assert_eq!(origin.hits(), 2);
    p.shutdown().await;
}

fn with_length(b: &Bytes) -> Vec<u8> {
    let mut v = head(&format!("Content-Length: {}\r\n", b.len()));
    v.extend_from_slice(b);
    v
}

fn chunked(b: &Bytes, terminate: bool) -> Vec<u8> {
    let mut v = head("Transfer-Encoding: chunked\r\n");
    for c in b.chunks(16 * KIB) {
        v.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        v.extend_from_slice(c);
        v.extend_from_slice(b"\r\n");
    }
    if terminate {
        v.extend_from_slice(b"0\r\n\r\n");
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_cut_short_is_not_committed() {
    cut_response_is_not_committed(
        data(200 * KIB, 3),
        |b| {
            let mut v = head(&format!("Content-Length: {}\r\n", b.len()));
            v.extend_from_slice(&b[..b.len() / 2]);
            v
        },
        with_length,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_error_is_not_committed() {
    cut_response_is_not_committed(
        data(200 * KIB, 4),
        // The connection closes after some chunks, without the last (empty) one.
        |b| chunked(&b.slice(..100 * KIB), false),
        |b| chunked(b, true),
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// 4. Memory tier
// ---------------------------------------------------------------------------------------

/// An origin serving `first` at `path` and `other` at any other path (cacheable), and a
/// proxy with `max-mem-object-size = 64KiB`.
async fn two_objects_64k_in_memory(
    path: &str,
    first: &Bytes,
    other: &Bytes,
) -> (Origin, TestProxy) {
    let (path, f, o) = (path.to_string(), first.clone(), other.clone());
    let origin = Origin::start(move |req| {
        let b = if req.uri().path() == path {
            f.clone()
        } else {
            o.clone()
        };
        async move { cacheable(b) }
    })
    .await;
    let p = TestProxy::start(cuttle::config::Options {
        max_mem_object_size: Some("64KiB".into()),
        ..opts()
    })
    .await;
    (origin, p)
}

/// Objects up to `max-mem-object-size` are served from memory, larger ones from disk.
#[tokio::test]
async fn small_objects_from_memory_large_from_disk() {
    let small = data(1000, 5);
    let large = data(300 * KIB, 6);
    let (origin, p) = two_objects_64k_in_memory("/small", &small, &large).await;
    let (su, lu) = (origin.url("/small"), origin.url("/large"));
    assert!(fetch_ok(&p, &su, &small).await.contains(" TCP_MISS/200 "));
    assert!(fetch_ok(&p, &lu, &large).await.contains(" TCP_MISS/200 "));
    p.settled(2).await;
    for _ in 0..2 {
        let line = fetch_ok(&p, &su, &small).await;
        assert!(line.contains(" TCP_MEM_HIT/200 "), "{line}");
        let line = fetch_ok(&p, &lu, &large).await;
        assert!(line.contains(" TCP_HIT/200 "), "{line}");
    }
    assert_eq!(origin.hits(), 2);
    let u = p.cache().usage();
    assert_eq!((u.mem_objects, u.disk_objects), (1, 2), "{u:?}");
    p.shutdown().await;
}

/// An object over `max-mem-object-size` but within four times it is promoted to memory at
/// its second hit from disk; a larger one stays on disk however often it is hit.
#[tokio::test]
async fn hot_large_objects_are_promoted_to_memory() {
    let hot = data(200 * KIB, 7);
    let cold = data(300 * KIB, 8);
    let (origin, p) = two_objects_64k_in_memory("/hot", &hot, &cold).await;
    let (hu, cu) = (origin.url("/hot"), origin.url("/cold"));
    assert!(fetch_ok(&p, &hu, &hot).await.contains(" TCP_MISS/200 "));
    assert!(fetch_ok(&p, &cu, &cold).await.contains(" TCP_MISS/200 "));
    p.settled(2).await;
    assert_eq!(p.cache().usage().mem_objects, 0);
    // First hit from disk: streamed from the file; second: read whole and promoted.
    for _ in 0..2 {
        let line = fetch_ok(&p, &hu, &hot).await;
        assert!(line.contains(" TCP_HIT/200 "), "{line}");
    }
    let u = p.cache().usage();
    assert_eq!(u.mem_objects, 1, "{u:?}");
    for _ in 0..2 {
        let line = fetch_ok(&p, &hu, &hot).await;
        assert!(line.contains(" TCP_MEM_HIT/200 "), "{line}");
    }
    for _ in 0..4 {
        let line = fetch_ok(&p, &cu, &cold).await;
        assert!(line.contains(" TCP_HIT/200 "), "{line}");
    }
    assert_eq!(origin.hits(), 2);
    let u = p.cache().usage();
    assert_eq!((u.mem_objects, u.disk_objects), (1, 2), "{u:?}");
    p.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 5. Restart
// ---------------------------------------------------------------------------------------

/// An origin serving fixed objects by path (cacheable, with `Content-Length`); objects over
/// 8 MiB are paced by the disk writer of the cache in `paced`.
async fn object_origin(objects: Vec<(&'static str, Bytes)>, paced: Option<PathBuf>) -> Origin {
    let objects = Arc::new(objects);
    Origin::start(move |req| {
        let found = objects
            .iter()
            .find(|(p, _)| *p == req.uri().path())
            .map(|(_, b)| b.clone());
        let r = match found {
            Some(b) if b.len() > 8 * MIB => streamed(b, MIB, false, None, paced.clone()),
            Some(b) => cacheable(b),
            None => respond(404, "no such object"),
        };
        async move { r }
    })
    .await
}

/// Entries written by one proxy are served by the next on the same directory, small ones
/// verified whole and then promoted to memory, a 20 MiB one streamed from disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_serves_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let objects = vec![
        ("/a", data(1000, 7)),
        ("/b", data(50 * KIB, 8)),
        ("/big", data(20 * MIB, 9)),
    ];
    let origin = object_origin(objects.clone(), Some(dir.path().to_path_buf())).await;
    let p = TestProxy::start(opts_in(dir.path())).await;
    for (path, body) in &objects {
        let line = fetch_ok(&p, &origin.url(path), body).await;
        assert!(line.contains(" TCP_MISS/200 "), "{line}");
    }
    p.settled(3).await;
    p.shutdown().await;
    assert_eq!(stored(dir.path()).len(), 3);
    assert!(stored(dir.path()).iter().all(|f| f.valid));

    let p = TestProxy::start(opts_in(dir.path())).await;
    for (path, body) in &objects {
        let line = fetch_ok(&p, &origin.url(path), body).await;
        assert!(line.contains(" TCP_HIT/200 "), "{line}");
    }
    // Small entries read from disk went to memory; the 20 MiB one stays on disk.
    let line = fetch_ok(&p, &origin.url("/a"), &objects[0].1).await;
    assert!(line.contains(" TCP_MEM_HIT/200 "), "{line}");
    let line = fetch_ok(&p, &origin.url("/big"), &objects[2].1).await;
    assert!(line.contains(" TCP_HIT/200 "), "{line}");
    let (_, cs, _) = get(&p.client(), &origin.url("/b")).await;
    assert!(cs.contains("hit"), "{cs}");
    assert_eq!(
        origin.hits(),
        3,
        "the origin is not asked again after a restart"
    );
    p.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 6. Corruption
// ---------------------------------------------------------------------------------------

fn flip_body_byte(f: &StoredFile, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f.path)
        .unwrap();
    let pos = f.body_offset + at;
    let mut b = [0u8; 1];
    file.seek(SeekFrom::Start(pos)).unwrap();
    file.read_exact(&mut b).unwrap();
    b[0] ^= 0x5a;
    file.seek(SeekFrom::Start(pos)).unwrap();
    file.write_all(&b).unwrap();
}

/// After a restart, a flipped body byte (small and large object), a truncated file and a
/// file of an unknown version are never served: the object is fetched again, correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_files_are_refetched_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let objects = vec![
        ("/flipped", data(100 * KIB, 10)),
        ("/large", data(20 * MIB, 11)),
        ("/truncated", data(100 * KIB, 12)),
        ("/version", data(100 * KIB, 13)),
    ];
    let origin = object_origin(objects.clone(), Some(dir.path().to_path_buf())).await;
    let p = TestProxy::start(opts_in(dir.path())).await;
    for (path, body) in &objects {
        fetch_ok(&p, &origin.url(path), body).await;
    }
    p.settled(4).await;
    p.shutdown().await;

    let f = stored_for(dir.path(), &origin.url("/flipped"));
    flip_body_byte(&f, f.body_len / 2);
    let f = stored_for(dir.path(), &origin.url("/large"));
    flip_body_byte(&f, f.body_len / 2);
    let f = stored_for(dir.path(), &origin.url("/truncated"));
    let len = std::fs::metadata(&f.path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f.path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let f = stored_for(dir.path(), &origin.url("/version"));
    let mut bytes = std::fs::read(&f.path).unwrap();
    bytes[4] = 99;
    std::fs::write(&f.path, bytes).unwrap();

    let p = TestProxy::start(opts_in(dir.path())).await;
    // Small objects are verified before the first byte: a plain miss, correct body.
    for (path, body) in [&objects[0], &objects[2], &objects[3]] {
        let line = fetch_ok(&p, &origin.url(path), body).await;
        assert!(line.contains(" TCP_MISS/200 "), "{path}: {line}");
        assert_eq!(hits_for(&origin, path), 2, "{path} fetched again");
    }
    // A large object is verified as it streams: the client may see an aborted transfer, never
    // a complete-looking body with a wrong byte.
    let large_url = origin.url("/large");
    let (status, _, first) = get(&p.client(), &large_url).await;
    assert_eq!(status, 200);
    if let Ok(b) = &first {
        assert!(
            *b == objects[1].1,
            "a corrupt entry was delivered as a complete body"
        );
    }
    let line = p.log_with("/large ").await;
    assert!(
        line.contains("ABORTED") || line.contains(" TCP_MISS/200 "),
        "{line}"
    );
    // The next request (after the fill, if the first one refetched) is correct and the
    // origin was asked exactly once more.
    p.settled(3 + u64::from(first.is_ok())).await;
    let (status, _, second) = get(&p.client(), &large_url).await;
    assert_eq!(status, 200);
    assert!(second.unwrap() == objects[1].1, "refetched body differs");
    assert_eq!(hits_for(&origin, "/large"), 2);
    let u = p.cache().usage();
    assert!(u.disk_corrupt >= 3, "{u:?}");
    // What is on disk now is the refetched, valid data.
    p.settled(4).await;
    let now = stored(dir.path());
    assert_eq!(now.len(), 4, "{now:#?}");
    assert!(now.iter().all(|f| f.valid), "{now:#?}");
    p.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 7. Crash: SIGKILL during a fill
// ---------------------------------------------------------------------------------------

/// The `cuttle` binary running on a cache directory, killed when dropped.
struct Bin {
    child: Child,
    addr: SocketAddr,
}

impl Bin {
    async fn start(dir: &Path) -> Bin {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let mut c = crate::support::cuttle();
            let mut child = c
                .arg("--listen")
                .arg("127.0.0.1:0")
                .arg("--admin-listen")
                .arg("off")
                // The test origins are on loopback, which cuttle refuses unless allowed.
                .arg("--allow-dest")
                .arg("127.0.0.0/8")
                .arg("--cache-dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let err = child.stderr.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut all = String::new();
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if let Some(a) = line.split("addr=").nth(1) {
                        let _ = tx.send(Ok(a.trim().to_string()));
                    }
                    all.push_str(&line);
                    all.push('\n');
                }
                let _ = tx.send(Err(all));
            });
            let addr = match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(Ok(a)) => a.parse().unwrap(),
                other => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("cuttle did not report its address: {other:?}")
                }
            };
            Bin { child, addr }
        })
        .await
        .unwrap()
    }

    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .proxy(reqwest::Proxy::all(format!("http://{}", self.addr)).unwrap())
            .build()
            .unwrap()
    }

    fn kill9(&mut self) {
        let ok = Command::new("kill")
            .args(["-9", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        self.child.wait().unwrap();
    }
}

impl Drop for Bin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Chunk `i` (1 MiB) of the generated 256 MiB object.
fn huge_chunk(base: &Bytes, i: usize) -> Bytes {
    let mut c = base.to_vec();
    c[..8].copy_from_slice(&(i as u64).to_le_bytes());
    Bytes::from(c)
}

/// Whether `c` is what the generated object holds at `pos`.
fn is_huge_at(base: &Bytes, mut pos: usize, mut c: &[u8]) -> bool {
    while !c.is_empty() {
        let (i, off) = (pos / MIB, pos % MIB);
        let n = c.len().min(MIB - off);
        if c[..n] != huge_chunk(base, i)[off..off + n] {
            return false;
        }
        pos += n;
        c = &c[n..];
    }
    true
}

/// SIGKILL in the middle of a 256 MiB fill: after a restart the small object completed
/// before is a hit, the big one is not on disk at all (fetched again), and the partial file
/// left in `v2/tmp` is cleaned up at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_fill_leaves_no_partial_entry() {
    const CHUNKS: usize = 256;
    let dir = tempfile::tempdir().unwrap();
    let small = data(1000, 14);
    let base = data(MIB, 15);
    let (_never, gate) = watch::channel(false);
    let huge_calls = Arc::new(AtomicUsize::new(0));
    let (s, b, calls) = (small.clone(), base.clone(), huge_calls.clone());
    let origin = Origin::start(move |req| {
        let r = if req.uri().path() == "/small" {
            cacheable(s.clone())
        } else {
            // The first transfer stops after 16 MiB and never goes on.
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            let (tx, rx) = mpsc::channel::<Bytes>(2);
            let (b, mut gate) = (b.clone(), gate.clone());
            tokio::spawn(async move {
                for i in 0..CHUNKS {
                    if first && i == 16 {
                        let _ = gate.wait_for(|open| *open).await;
                        return;
                    }
                    if tx.send(huge_chunk(&b, i)).await.is_err() {
                        return;
                    }
                }
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
            });
            Response::builder()
                .header("cache-control", "max-age=3600")
                .header("content-length", CHUNKS * MIB)
                .body(boxed(http_body_util::StreamBody::new(stream)))
                .unwrap()
        };
        async move { r }
    })
    .await;
    let (small_url, huge_url) = (origin.url("/small"), origin.url("/huge"));
    let tmp = dir.path().join("v2/tmp");

    let mut first = Bin::start(dir.path()).await;
    let client = first.client();
    let (status, cs, body) = get(&client, &small_url).await;
    assert_eq!(status, 200);
    assert!(body.unwrap() == small);
    assert!(cs.contains("fwd=miss"), "{cs}");
    until(20, "the small object committed", || {
        stored(dir.path()).len() == 1
    })
    .await;

    let r = client.get(&huge_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut s = r.bytes_stream();
    let mut got = 0usize;
    while got < 8 * MIB {
        let c = s.next().await.unwrap().unwrap();
        assert!(is_huge_at(&base, got, &c), "wrong bytes at {got}");
        got += c.len();
    }
    until(20, "8 MiB of the fill written to v2/tmp", || {
        files_under(&tmp)
            .iter()
            .any(|f| std::fs::metadata(f).is_ok_and(|m| m.len() >= 8 * MIB as u64))
    })
    .await;
    first.kill9();
    drop(s);
    drop(client);
    // The crash left a partial file in tmp/ and nothing partial in objects/.
    assert!(!files_under(&tmp).is_empty());
    let on_disk = stored(dir.path());
    assert_eq!(on_disk.len(), 1, "{on_disk:#?}");
    assert_eq!(on_disk[0].url, small_url);
    assert!(on_disk[0].valid);

    let second = Bin::start(dir.path()).await;
    assert!(
        files_under(&tmp).is_empty(),
        "leftovers in v2/tmp not cleaned at start: {:?}",
        files_under(&tmp)
    );
    let client = second.client();
    let (status, cs, body) = get(&client, &small_url).await;
    assert_eq!(status, 200);
    assert!(body.unwrap() == small);
    assert!(cs.contains("hit") && !cs.contains("fwd="), "{cs}");
    assert_eq!(hits_for(&origin, "/small"), 1);
    // The big object was never committed: fetched again, from the first byte.
    let r = client.get(&huge_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cs = r.headers()["cache-status"].to_str().unwrap().to_string();
    assert!(cs.contains("fwd=miss"), "{cs}");
    assert_eq!(hits_for(&origin, "/huge"), 2);
    let mut s = r.bytes_stream();
    let mut prefix = Vec::new();
    while prefix.len() < 2 * MIB {
        prefix.extend_from_slice(&s.next().await.unwrap().unwrap());
    }
    assert!(is_huge_at(&base, 0, &prefix));
}

// ---------------------------------------------------------------------------------------
// 8. Eviction
// ---------------------------------------------------------------------------------------

/// With 3 MiB of disk, ten 512 KiB objects do not fit: the files on disk stay within the
/// bound, the least recently used go first (an object touched after every fetch survives),
/// and the memory tier stays within its bound too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_bounds_and_lru_order() {
    const DISK: u64 = 3 * MIB as u64;
    let bodies: Vec<Bytes> = (0..10).map(|i| data(512 * KIB, 100 + i)).collect();
    let smalls: Vec<Bytes> = (0..20).map(|i| data(100 * KIB, 200 + i)).collect();
    let (b, sm) = (bodies.clone(), smalls.clone());
    let origin = Origin::start(move |req| {
        let path = req.uri().path().to_string();
        let (kind, n) = path[1..].split_at(1);
        let n: usize = n.parse().unwrap();
        let body = if kind == "o" {
            b[n].clone()
        } else {
            sm[n].clone()
        };
        async move { cacheable(body) }
    })
    .await;
    let p = TestProxy::start(cuttle::config::Options {
        cache_size: Some("3MiB".into()),
        cache_mem: Some("1MiB".into()),
        max_mem_object_size: Some("256KiB".into()),
        ..opts()
    })
    .await;
    let dir = p.cache_dir.as_ref().unwrap().path().to_path_buf();
    let c = p.cache();
    let mut fills = 0;
    for (i, body) in bodies.iter().enumerate() {
        let line = fetch_ok(&p, &origin.url(&format!("/o{i}")), body).await;
        assert!(line.contains(" TCP_MISS/200 "), "{line}");
        fills += 1;
        p.settled(fills).await;
        // Object 0 is used after every other fetch: it stays the most recently used.
        let line = fetch_ok(&p, &origin.url("/o0"), &bodies[0]).await;
        assert!(line.contains(" TCP_HIT/200 "), "/o0 after /o{i}: {line}");
        let on_disk = blocks_under(&dir.join("v2/objects"));
        assert!(on_disk <= DISK, "{on_disk} bytes on disk after /o{i}");
        let u = c.usage();
        assert!(u.disk_bytes <= u.disk_capacity, "{u:?}");
        assert_eq!(u.disk_bytes, on_disk, "index and files agree");
    }
    assert_eq!(origin.hits(), 10);
    let u = c.usage();
    assert!(u.disk_evictions >= 4, "{u:?}");
    // What survives is /o0 and the most recently fetched others, nothing older.
    let urls: Vec<String> = stored(&dir).into_iter().map(|f| f.url).collect();
    let present: Vec<usize> = (0..10)
        .filter(|i| urls.contains(&origin.url(&format!("/o{i}"))))
        .collect();
    assert!(present.contains(&0), "{present:?}");
    assert!(present.len() >= 4, "{present:?}");
    let others = &present[1..];
    let oldest = others[0];
    assert_eq!(others, (oldest..10).collect::<Vec<_>>(), "LRU order");
    // Evicted ones are fetched again; a survivor is still a hit.
    let line = fetch_ok(&p, &origin.url("/o1"), &bodies[1]).await;
    assert!(line.contains(" TCP_MISS/200 "), "{line}");
    let line = fetch_ok(&p, &origin.url("/o9"), &bodies[9]).await;
    assert!(line.contains(" TCP_HIT/200 "), "{line}");

    // The memory tier: 2 MiB of small objects into 1 MiB.
    for (i, body) in smalls.iter().enumerate() {
        fetch_ok(&p, &origin.url(&format!("/s{i}")), body).await;
    }
    p.settled(fills + 1 + smalls.len() as u64).await;
    let u = c.usage();
    assert!(u.mem_objects >= 1, "{u:?}");
    assert!(u.mem_bytes <= u.mem_capacity, "{u:?}");
    assert_eq!(u.mem_capacity, MIB as u64);
    assert!(blocks_under(&dir.join("v2/objects")) <= DISK);
    p.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 9. Unusable and full disks
// ---------------------------------------------------------------------------------------

/// `cache-dir` is a regular file: the disk tier is off, the proxy serves (and caches in
/// memory what fits there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_cache_dir_still_serves() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let small = data(2000, 16);
    let large = data(10 * MIB, 17);
    let origin = object_origin(vec![("/s", small.clone()), ("/l", large.clone())], None).await;
    let p = TestProxy::start(opts_in(file.path())).await;
    assert!(!p.cache().has_disk());
    assert!(
        fetch_ok(&p, &origin.url("/s"), &small)
            .await
            .contains(" TCP_MISS/200 ")
    );
    p.settled(1).await;
    assert!(
        fetch_ok(&p, &origin.url("/s"), &small)
            .await
            .contains(" TCP_MEM_HIT/200 ")
    );
    // Too large for memory, and there is no disk: proxied, not stored.
    for _ in 0..2 {
        let line = fetch_ok(&p, &origin.url("/l"), &large).await;
        assert!(line.contains(" TCP_MISS/200 "), "{line}");
    }
    assert_eq!(origin.hits(), 3);
    assert!(std::fs::metadata(file.path()).unwrap().is_file());
    p.shutdown().await;
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Tmpfs { dir },
            Ok(o) => panic!(
                "the disk-full test needs to mount a tmpfs (run as root with CAP_SYS_ADMIN): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!("the disk-full test needs the `mount` command: {e}"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The cache disk fills up (a 2 MiB tmpfs under a 10 GiB `cache-size`): the proxy keeps
/// answering correctly, and nothing partial is ever committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_keeps_proxying_and_commits_nothing_partial() {
    let fs = Tmpfs::mount("2m");
    let objects: Vec<(&'static str, Bytes)> = vec![
        ("/big", data(3 * MIB, 18)),
        ("/o1", data(700 * KIB, 19)),
        ("/o2", data(700 * KIB, 20)),
        ("/o3", data(700 * KIB, 21)),
        ("/o4", data(700 * KIB, 22)),
    ];
    let origin = object_origin(objects.clone(), None).await;
    let p = TestProxy::start(cuttle::config::Options {
        max_mem_object_size: Some("64KiB".into()),
        ..opts_in(fs.path())
    })
    .await;
    assert!(p.cache().has_disk());
    let mut fills = 0;
    for round in 0..2 {
        for (path, body) in &objects {
            let line = fetch_ok(&p, &origin.url(path), body).await;
            assert!(line.contains("/200 "), "round {round} {path}: {line}");
            if line.contains("MISS") {
                fills += 1;
                p.settled(fills).await;
            }
            let files = stored(fs.path());
            assert!(
                files.iter().all(|f| f.valid),
                "a partial or corrupt entry was committed: {files:#?}"
            );
        }
    }
    // The 3 MiB object never fits: fetched every time, never stored.
    assert_eq!(hits_for(&origin, "/big"), 2);
    assert!(!stored(fs.path()).iter().any(|f| f.url.ends_with("/big")));
    let u = p.cache().usage();
    assert!(u.disk_write_errors >= 1, "{u:?}");
    assert!(
        files_under(&fs.path().join("v2/tmp")).is_empty(),
        "abandoned temporary files are removed"
    );
    // Still proxying.
    let line = fetch_ok(&p, &origin.url("/o1"), &objects[1].1).await;
    assert!(line.contains("/200 "), "{line}");
    p.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 10. max-object-size
// ---------------------------------------------------------------------------------------

/// Objects larger than `max-object-size` are served whole but not stored, whether the size
/// is announced (`Content-Length`) or only discovered while streaming (chunked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_over_max_object_size_are_not_stored() {
    let body = data(2 * MIB, 23);
    let small = data(MIB / 2, 24);
    let (b, s) = (body.clone(), small.clone());
    let origin = Origin::start(move |req| {
        let r = match req.uri().path() {
            "/length" => cacheable(b.clone()),
            "/chunked" => streamed(b.clone(), 64 * KIB, true, None, None),
            _ => cacheable(s.clone()),
        };
        async move { r }
    })
    .await;
    let p = TestProxy::start(cuttle::config::Options {
        max_object_size: Some("1MiB".into()),
        ..opts()
    })
    .await;
    let mut fills = 0;
    for path in ["/length", "/chunked"] {
        for _ in 0..2 {
            let line = fetch_ok(&p, &origin.url(path), &body).await;
            assert!(line.contains(" TCP_MISS/200 "), "{path}: {line}");
            // Without a length the response is filled until it proves too large.
            if path == "/chunked" {
                fills += 1;
                p.settled(fills).await;
            }
        }
        assert_eq!(hits_for(&origin, path), 2, "{path} is not stored");
    }
    // Below the limit, the same proxy stores.
    fetch_ok(&p, &origin.url("/small"), &small).await;
    p.settled(3).await;
    let line = fetch_ok(&p, &origin.url("/small"), &small).await;
    assert!(line.contains("HIT/200 "), "{line}");
    let on_disk = stored(p.cache_dir.as_ref().unwrap().path());
    assert_eq!(on_disk.len(), 1, "{on_disk:#?}");
    assert_eq!(p.cache().usage().mem_objects, 1);
    p.shutdown().await;
}

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A large object through the shared tier with flat memory: uploaded by one replica in 8 MiB
//! parts (multipart) and streamed to another, with the test process's peak RSS (both
//! proxies run in it; the S3 server is another process) bounded well below the object's
//! size. Its own test binary, so no other test shares the process's peak.

#[path = "it/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cuttle::config::Options;
use http::Response;
use sha2::{Digest, Sha256};
use support::s3::{ACCESS_KEY, BUCKET, PREFIX, S3, SECRET_KEY};
use support::{Origin, TestProxy, opts};

const MIB: usize = 1 << 20;
/// The 1 GiB: 128 parts of 8 MiB. About 30 s in a debug build on 2 busy cores.
const LEN: usize = 1024 * MIB;
/// The bound on the growth of the peak RSS, both replicas together: an eighth of the object.
/// What they hold at once by design: A's upload part (`UPLOAD_CHUNK`, 8 MiB) and the HTTP
/// client's copy of it in flight, the fills' buffers (256 KiB disk reads, the origin's 1 MiB
/// frames, hyper's read buffers, the client's read-ahead), B's verification window while it
/// streams, and what the allocator keeps (jemalloc, two arenas) and the runtime's threads.
/// Measured: 46-50 MiB (debug build). Buffering the object whole on either side, or all the
/// parts of its multipart upload, would grow it by 1 GiB.
const RSS_BOUND: u64 = 128 << 20;

fn chunk(i: usize) -> Bytes {
    let mut v = vec![(i as u8).wrapping_mul(13); MIB];
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    v.into()
}

fn peak_rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

fn shared_opts(endpoint: &str, dir: &std::path::Path) -> Options {
    Options {
        cache_dir: Some(dir.to_path_buf()),
        cache_mem: Some("16MiB".into()),
        shared_cache: Some(format!("s3://{BUCKET}/{PREFIX}")),
        shared_cache_endpoint: Some(endpoint.to_string()),
        shared_cache_access_key_id: Some(ACCESS_KEY.into()),
        shared_cache_secret_access_key: Some(SECRET_KEY.into()),
        ..opts()
    }
}

async fn fetch(p: &TestProxy, url: &str) -> [u8; 32] {
    let mut r = p.client().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut h = Sha256::new();
    let mut n = 0;
    while let Some(c) = r.chunk().await.unwrap() {
        n += c.len();
        h.update(&c);
    }
    assert_eq!(n, LEN);
    h.finalize().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_object_moves_through_the_bucket_with_flat_memory() {
    let s3 = S3::start().await;
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let origin = Origin::start(move |_req| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            let frames =
                futures_util::stream::iter((0..LEN / MIB).map(|i| {
                    Ok::<_, cuttle::http::body::BoxError>(http_body::Frame::data(chunk(i)))
                }));
            Response::builder()
                .header("cache-control", "public, max-age=600")
                .header("content-length", LEN.to_string())
                .body(cuttle::http::body::boxed(http_body_util::StreamBody::new(
                    frames,
                )))
                .unwrap()
        }
    })
    .await;
    let mut want = Sha256::new();
    for i in 0..LEN / MIB {
        want.update(chunk(i));
    }
    let want: [u8; 32] = want.finalize().into();
    let url = origin.url("/big/image.tar");
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let base = peak_rss();

    let a = TestProxy::start(shared_opts(&s3.endpoint(), da.path())).await;
    assert_eq!(fetch(&a, &url).await, want);
    let sh = a
        .proxy()
        .state()
        .cache
        .clone()
        .unwrap()
        .shared
        .clone()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while sh.stats.uploads.load(Ordering::SeqCst) < 1 {
        assert_eq!(
            sh.stats.upload_errors.load(Ordering::SeqCst),
            0,
            "upload failed"
        );
        assert!(Instant::now() < deadline, "no upload within 300s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sh.stats.upload_bytes.load(Ordering::SeqCst) > LEN as u64);
    let entries = s3.entries().await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(s3.size(&entries[0]).await > LEN as u64, "the whole object");

    let b = TestProxy::start(shared_opts(&s3.endpoint(), db.path())).await;
    assert_eq!(fetch(&b, &url).await, want);
    assert!(
        b.log_with("/big/image.tar ")
            .await
            .contains("TCP_SHARED_HIT")
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);

    let grew = peak_rss().saturating_sub(base);
    eprintln!(
        "peak RSS grew by {} MiB for a {} MiB object",
        grew >> 20,
        LEN >> 20
    );
    assert!(
        grew < RSS_BOUND,
        "peak RSS grew by {} MiB moving a {} MiB object",
        grew >> 20,
        LEN >> 20
    );
    a.shutdown().await;
    b.shutdown().await;
}

//! The shared cache tier against real S3 servers on loopback (`s3s-fs`, and `moto` for the
//! core scenarios, started by the tests): replicas with separate local caches and one bucket
//! fetch each object from the origin once between them, survive the store failing, never
//! serve a corrupt object, and see each other's 304 refreshes.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::s3::{ACCESS_KEY, BUCKET, Gate, Mode, PREFIX, S3, SECRET_KEY, Store};
use crate::support::{Origin, TestProxy, opts};
use bytes::Bytes;
use cuttle::cache::Cache;
use cuttle::cache::key::PrimaryKey;
use cuttle::cache::shared::Shared;
use cuttle::cache::shared::breaker::BreakerState;
use cuttle::cache::shared::lease;
use cuttle::config::Options;
use cuttle::http::body::full;
use http::Response;

fn shared_opts(endpoint: &str, dir: &Path) -> Options {
    Options {
        cache_dir: Some(dir.to_path_buf()),
        shared_cache: Some(format!("s3://{BUCKET}/{PREFIX}")),
        shared_cache_endpoint: Some(endpoint.to_string()),
        shared_cache_region: Some("us-east-1".into()),
        shared_cache_access_key_id: Some(ACCESS_KEY.into()),
        shared_cache_secret_access_key: Some(SECRET_KEY.into()),
        shared_cache_timeout: Some("1s".into()),
        shared_cache_backoff: Some("1s".into()),
        ..opts()
    }
}

fn cache(p: &TestProxy) -> Arc<Cache> {
    p.proxy().state().cache.clone().expect("cache enabled")
}

fn shared(p: &TestProxy) -> Arc<Shared> {
    cache(p).shared.clone().expect("shared tier configured")
}

async fn until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn uploads(p: &TestProxy, n: u64) {
    let sh = shared(p);
    let st = &sh.stats;
    // Generous: moto (Python) on a loaded 2-core machine takes seconds per request.
    let deadline = Instant::now() + Duration::from_secs(60);
    while st.uploads.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "no upload within 60s (errors {}, exists {}, skipped {}/{})",
            st.upload_errors.load(Ordering::SeqCst),
            st.upload_exists.load(Ordering::SeqCst),
            st.skipped_queue_full.load(Ordering::SeqCst),
            st.skipped_breaker.load(Ordering::SeqCst),
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// GET through `p`: status, Cache-Status, body.
async fn get(p: &TestProxy, url: &str) -> (u16, String, Bytes) {
    let r = p.client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let cs = r
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, cs, r.bytes().await.unwrap())
}

/// An origin serving `body` for every path, cacheable for 10 minutes, counting GETs by path.
async fn artifact_origin(body: Bytes) -> (Origin, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let o = Origin::start(move |_req| {
        let body = body.clone();
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            Response::builder()
                .header("cache-control", "public, max-age=600")
                .header("content-type", "application/octet-stream")
                .body(full(body))
                .unwrap()
        }
    })
    .await;
    (o, count)
}

fn data(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

/// The core scenarios run against each store: `shared_cache::s3s_fs::…` and
/// `shared_cache::moto::…`.
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod s3s_fs {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Store::S3sFs).await
                }
            )*
        }
        mod moto {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Store::Moto).await
                }
            )*
        }
    };
}

on_every_store!(
    two_replicas_fetch_from_upstream_once,
    store_failures_never_fail_a_request,
    corrupt_object_is_deleted_and_refetched,
    store_dying_mid_upload_leaves_nothing_partial,
    lease_coalesces_concurrent_misses_across_replicas,
);

async fn two_replicas_fetch_from_upstream_once(store: Store) {
    let s3 = S3::start_with(store).await;
    let body = data(300 * 1024, 7);
    let (origin, count) = artifact_origin(body.clone()).await;
    let url = origin.url("/pkg/-/pkg-1.0.tgz");
    let (da, db, db2) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );

    let a = TestProxy::start(shared_opts(&s3.endpoint(), da.path())).await;
    let (status, _, got) = get(&a, &url).await;
    assert_eq!((status, got == body), (200, true));
    assert!(a.log_with("/pkg-1.0.tgz ").await.contains("TCP_MISS"));
    uploads(&a, 1).await;
    assert_eq!(s3.entries().await.len(), 1, "one object in the bucket");

    let b = TestProxy::start(shared_opts(&s3.endpoint(), db.path())).await;
    let (status, cs, got) = get(&b, &url).await;
    assert_eq!((status, got == body), (200, true));
    assert!(cs.contains("detail=shared"), "Cache-Status: {cs}");
    let line = b.log_with("/pkg-1.0.tgz ").await;
    assert!(line.contains("TCP_SHARED_HIT"), "{line}");
    assert_eq!(count.load(Ordering::SeqCst), 1, "the origin was asked once");
    // Admitted locally: once the fill is stored, the next request is a local hit, and B
    // uploads nothing.
    let cb = cache(&b);
    until(10, "B's local copy", || {
        cb.stats.stored.load(Ordering::SeqCst) >= 1
    })
    .await;
    let (status, _, got) = get(&b, &url).await;
    assert_eq!((status, got == body), (200, true));
    let line = b.log_with("/pkg-1.0.tgz ").await;
    assert!(
        line.contains("TCP_MEM_HIT") || line.contains("TCP_HIT"),
        "{line}"
    );
    assert_eq!(shared(&b).stats.uploads.load(Ordering::SeqCst), 0);
    let metrics = reqwest::get(format!("{}/metrics", b.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"cuttle_shared_cache_operations_total{op="lookup",outcome="hit"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("cuttle_shared_cache_breaker_state 0"));
    b.shutdown().await;

    // B again after a restart with an empty local disk: still a shared hit.
    let b = TestProxy::start(shared_opts(&s3.endpoint(), db2.path())).await;
    let (status, _, got) = get(&b, &url).await;
    assert_eq!((status, got == body), (200, true));
    assert!(b.log_with("/pkg-1.0.tgz ").await.contains("TCP_SHARED_HIT"));
    assert_eq!(count.load(Ordering::SeqCst), 1, "the origin was asked once");
    a.shutdown().await;
    b.shutdown().await;
}

/// The store stopped, answering 500, answering too slowly: every request succeeds from the
/// origin, the breaker opens (and stays open while the probes fail), then closes once the
/// store is back.
async fn store_failures_never_fail_a_request(store: Store) {
    let mut s3 = S3::start_with(store).await;
    let gate = Gate::start(s3.port).await;
    let body = data(64 * 1024, 3);
    let (origin, count) = artifact_origin(body.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let p = TestProxy::start(shared_opts(&gate.endpoint(), dir.path())).await;
    let sh = shared(&p);
    let mut n = 0;
    let mut fetch = async |what: &str| {
        n += 1;
        let url = origin.url(&format!("/f/{n}"));
        let start = Instant::now();
        let (status, _, got) = get(&p, &url).await;
        assert_eq!(status, 200, "{what}: request {n}");
        assert!(got == body, "{what}: body of request {n}");
        start.elapsed()
    };

    // Stopped before the lookups.
    s3.stop().await;
    for _ in 0..3 {
        fetch("store stopped").await;
    }
    until(5, "the breaker to open", || {
        sh.breaker.state() == BreakerState::Open
    })
    .await;
    let skipped = sh.stats.lookups_skipped.load(Ordering::SeqCst);
    fetch("breaker open").await;
    assert_eq!(
        sh.stats.lookups_skipped.load(Ordering::SeqCst),
        skipped + 1,
        "an open breaker skips the store"
    );

    // Back, but answering 500: the half-open probe fails, the breaker opens again.
    s3.run().await;
    gate.set(Mode::Error500);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fetch("store answering 500").await;
    until(5, "the breaker to open again", || {
        sh.breaker.state() == BreakerState::Open && sh.breaker.openings() >= 2
    })
    .await;

    // Answering slowly: the lookup gives up after its timeout.
    gate.set(Mode::Slow);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let took = fetch("store answering slowly").await;
    assert!(
        took < Duration::from_secs(5),
        "the lookup is bounded: {took:?}"
    );
    until(5, "the breaker to open a third time", || {
        sh.breaker.openings() >= 3
    })
    .await;

    // Healthy again: the next probe closes the breaker and the tier works.
    gate.set(Mode::Pass);
    let deadline = Instant::now() + Duration::from_secs(15);
    while sh.breaker.state() != BreakerState::Closed {
        assert!(Instant::now() < deadline, "the breaker never closed");
        fetch("store back").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = sh.stats.uploads.load(Ordering::SeqCst);
    fetch("store back").await;
    until(20, "an upload after recovery", || {
        sh.stats.uploads.load(Ordering::SeqCst) > before
    })
    .await;
    assert_eq!(
        count.load(Ordering::SeqCst),
        n,
        "every request went to the origin once"
    );
    p.shutdown().await;
}

async fn corrupt_object_is_deleted_and_refetched(store: Store) {
    let s3 = S3::start_with(store).await;
    let body = data(200 * 1024, 11);
    let (origin, count) = artifact_origin(body.clone()).await;
    let url = origin.url("/lib/lib-2.jar");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();

    let a = TestProxy::start(shared_opts(&s3.endpoint(), dirs[0].path())).await;
    get(&a, &url).await;
    uploads(&a, 1).await;
    let object = s3.entries().await.pop().expect("uploaded object");
    let mut bytes = s3.read(&object).await;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    s3.write(&object, bytes).await;

    let b = TestProxy::start(shared_opts(&s3.endpoint(), dirs[1].path())).await;
    let (status, _, got) = get(&b, &url).await;
    assert_eq!(status, 200);
    assert!(got == body, "the corrupt object was served");
    let line = b.log_with("/lib-2.jar ").await;
    assert!(line.contains("TCP_MISS"), "{line}");
    assert_eq!(count.load(Ordering::SeqCst), 2, "refetched from the origin");
    let sh = shared(&b);
    assert_eq!(sh.stats.corrupt.load(Ordering::SeqCst), 1);
    // Replaced by B's upload of the refetched entry: a third replica gets a shared hit.
    uploads(&b, 1).await;
    let c = TestProxy::start(shared_opts(&s3.endpoint(), dirs[2].path())).await;
    let (status, _, got) = get(&c, &url).await;
    assert_eq!((status, got == body), (200, true));
    assert!(c.log_with("/lib-2.jar ").await.contains("TCP_SHARED_HIT"));
    assert_eq!(count.load(Ordering::SeqCst), 2);
    for p in [a, b, c] {
        p.shutdown().await;
    }
}

/// Objects of format version 1 (SHA-256 checksum, written by earlier releases) are shared
/// hits; an object of a version this release does not know (a newer replica's) is a miss
/// that is neither served nor counted as corrupt, and this replica's upload replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_of_other_format_versions() {
    use sha2::Digest;
    let s3 = S3::start().await;
    let body = data(200 * 1024, 12);
    let (origin, count) = artifact_origin(body.clone()).await;
    let url = origin.url("/lib/lib-3.jar");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();

    let a = TestProxy::start(shared_opts(&s3.endpoint(), dirs[0].path())).await;
    get(&a, &url).await;
    uploads(&a, 1).await;
    let object = s3.entries().await.pop().expect("uploaded object");
    let mut bytes = s3.read(&object).await;
    assert_eq!(bytes[4], 2, "entries are written as version 2");
    let end = bytes.len() - 32;
    let sum = sha2::Sha256::digest(&bytes[9..end - 8]);
    bytes[4] = 1;
    bytes[end..].copy_from_slice(&sum);
    s3.write(&object, bytes.clone()).await;

    let b = TestProxy::start(shared_opts(&s3.endpoint(), dirs[1].path())).await;
    let (status, _, got) = get(&b, &url).await;
    assert_eq!((status, got == body), (200, true));
    assert!(b.log_with("/lib-3.jar ").await.contains("TCP_SHARED_HIT"));
    assert_eq!(count.load(Ordering::SeqCst), 1);

    bytes[4] = 9;
    s3.write(&object, bytes).await;
    let c = TestProxy::start(shared_opts(&s3.endpoint(), dirs[2].path())).await;
    let (status, _, got) = get(&c, &url).await;
    assert_eq!((status, got == body), (200, true));
    assert!(c.log_with("/lib-3.jar ").await.contains("TCP_MISS"));
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert_eq!(shared(&c).stats.corrupt.load(Ordering::SeqCst), 0);
    uploads(&c, 1).await;
    assert_eq!(s3.read(&object).await[4], 2, "replaced by the upload");
    for p in [a, b, c] {
        p.shutdown().await;
    }
}

/// A 304 refresh on one replica reaches the other through the metadata object; the body is
/// not uploaded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_reaches_the_other_replica_without_a_body_upload() {
    let s3 = S3::start().await;
    let full_gets = Arc::new(AtomicUsize::new(0));
    let conditionals = Arc::new(AtomicUsize::new(0));
    let (f, c) = (full_gets.clone(), conditionals.clone());
    let origin = Origin::start(move |req| {
        let conditional = req.headers().get("if-none-match").is_some();
        if conditional {
            c.fetch_add(1, Ordering::SeqCst);
        } else {
            f.fetch_add(1, Ordering::SeqCst);
        }
        async move {
            let r = Response::builder()
                .header("cache-control", "max-age=3")
                .header("etag", "\"v1\"");
            if conditional {
                r.status(304).body(full("")).unwrap()
            } else {
                r.body(full("index v1")).unwrap()
            }
        }
    })
    .await;
    let url = origin.url("/meta/index.txt");
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestProxy::start(shared_opts(&s3.endpoint(), da.path())).await;
    get(&a, &url).await;
    uploads(&a, 1).await;
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (status, _, got) = get(&a, &url).await;
    assert_eq!((status, &got[..]), (200, &b"index v1"[..]));
    assert!(
        a.log_with("TCP_REFRESH_UNMODIFIED")
            .await
            .contains("/meta/index.txt")
    );
    let sh = shared(&a);
    until(10, "the metadata upload", || {
        sh.stats.meta_updates.load(Ordering::SeqCst) >= 1
    })
    .await;

    let b = TestProxy::start(shared_opts(&s3.endpoint(), db.path())).await;
    let (status, _, got) = get(&b, &url).await;
    assert_eq!((status, &got[..]), (200, &b"index v1"[..]));
    let line = b.log_with("/meta/index.txt ").await;
    assert!(line.contains("TCP_SHARED_HIT"), "{line}");
    assert_eq!(full_gets.load(Ordering::SeqCst), 1);
    assert_eq!(conditionals.load(Ordering::SeqCst), 1);
    assert_eq!(sh.stats.uploads.load(Ordering::SeqCst), 1, "no body upload");
    a.shutdown().await;
    b.shutdown().await;
}

/// Entries of credentialed requests and entries with Set-Cookie never reach the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_entries_are_never_uploaded() {
    let s3 = S3::start().await;
    let origin = Origin::start(|_req| async move {
        Response::builder()
            .header("cache-control", "public, max-age=600")
            .body(full("for one client"))
            .unwrap()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let p = TestProxy::start(shared_opts(&s3.endpoint(), dir.path())).await;
    let r = p
        .client()
        .get(origin.url("/private"))
        .header("authorization", "Bearer secret-token-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    p.log_with("/private ").await;
    // A public entry after it, to know the queue has been worked through.
    get(&p, &origin.url("/public")).await;
    uploads(&p, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s3.entries().await.len(),
        1,
        "only the public entry is shared"
    );
    let stored = s3.read(&s3.entries().await.pop().unwrap()).await;
    assert!(
        !String::from_utf8_lossy(&stored).contains("secret-token-1"),
        "credentials in the bucket"
    );
    p.shutdown().await;
}

/// Responses that vary are shared per variant: the request's own values select the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_are_shared_by_their_selecting_headers() {
    let s3 = S3::start().await;
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let origin = Origin::start(move |req| {
        c.fetch_add(1, Ordering::SeqCst);
        let json = req
            .headers()
            .get("accept")
            .is_some_and(|v| v.to_str().unwrap().contains("json"));
        async move {
            Response::builder()
                .header("cache-control", "max-age=600")
                .header("vary", "Accept, Accept-Encoding")
                .body(full(if json { "{\"json\": 1}" } else { "<html>" }))
                .unwrap()
        }
    })
    .await;
    let url = origin.url("/api/list");
    let get_as = async |p: &TestProxy, accept: &str| {
        let r = p
            .client()
            .get(&url)
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body = r.text().await.unwrap();
        (body, p.log_with("/api/list ").await)
    };
    const JSON: &str = "application/json";
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestProxy::start(shared_opts(&s3.endpoint(), da.path())).await;
    let (body, _) = get_as(&a, JSON).await;
    assert_eq!(body, "{\"json\": 1}");
    uploads(&a, 1).await;

    let b = TestProxy::start(shared_opts(&s3.endpoint(), db.path())).await;
    let (body, line) = get_as(&b, JSON).await;
    assert_eq!(body, "{\"json\": 1}");
    assert!(line.contains("TCP_SHARED_HIT"), "{line}");
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // Another Accept selects another variant: not the JSON one.
    let (body, line) = get_as(&b, "text/html").await;
    assert_eq!(body, "<html>");
    assert!(line.contains("TCP_MISS"), "{line}");
    assert_eq!(count.load(Ordering::SeqCst), 2);
    a.shutdown().await;
    b.shutdown().await;
}

/// The store dies in the middle of a multipart upload: the client was served already, the
/// upload fails and is counted, no partial object is left to be served, and another replica
/// simply fetches from the origin.
async fn store_dying_mid_upload_leaves_nothing_partial(store: Store) {
    let s3 = S3::start_with(store).await;
    let gate = Gate::start(s3.port).await;
    let body = data(40 * 1024 * 1024, 5);
    let (origin, count) = artifact_origin(body.clone()).await;
    let url = origin.url("/big/layer.tar");
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestProxy::start(shared_opts(&gate.endpoint(), da.path())).await;
    // The lookup's requests pass; the upload is cut after 20 of its 40 MiB.
    gate.set(Mode::CutAfter(20 * 1024 * 1024));
    let (status, _, got) = get(&a, &url).await;
    assert_eq!((status, got == body), (200, true));
    let sh = shared(&a);
    until(30, "the upload to fail", || {
        sh.stats.upload_errors.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert_eq!(sh.stats.uploads.load(Ordering::SeqCst), 0);
    let left = s3.entries().await;
    assert!(left.is_empty(), "a partial object: {left:?}");

    gate.set(Mode::Pass);
    let b = TestProxy::start(shared_opts(&gate.endpoint(), db.path())).await;
    let (status, _, got) = get(&b, &url).await;
    assert_eq!((status, got == body), (200, true));
    assert!(b.log_with("/big/layer.tar ").await.contains("TCP_MISS"));
    assert_eq!(count.load(Ordering::SeqCst), 2);
    a.shutdown().await;
    b.shutdown().await;
}

fn lease_opts(endpoint: &str, dir: &Path, timeout: &str) -> Options {
    Options {
        shared_cache_lease: Some(true),
        shared_cache_lease_timeout: Some(timeout.into()),
        // A store call that runs out of time sends the waiting replica upstream: under a
        // full test run on two cores the 1 s of `shared_opts` was once too short for that
        // (the origin was asked twice). What these tests check does not depend on it.
        shared_cache_timeout: Some("5s".into()),
        ..shared_opts(endpoint, dir)
    }
}

/// The bucket key of a URL's lease object.
fn lease_object(url: &str) -> String {
    let primary = PrimaryKey::from_url(url.to_string());
    format!(
        "{PREFIX}/{}",
        lease::lease_key(&cuttle::cache::shared::object_key(primary.hex()))
    )
}

/// Waits until the lease object is gone (deleted after the upload).
async fn lease_released(s3: &S3, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while s3.exists(key).await {
        assert!(Instant::now() < deadline, "lease {key} never deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With `--shared-cache-lease`, two replicas missing the same URL at the same moment fetch it
/// upstream once between them: one takes the lease and fetches (slowly), the other waits for
/// its upload and serves it as a shared hit. The lease is deleted after the upload.
async fn lease_coalesces_concurrent_misses_across_replicas(store: Store) {
    let s3 = S3::start_with(store).await;
    let body = data(256 * 1024, 21);
    let count = Arc::new(AtomicUsize::new(0));
    let (c, b2) = (count.clone(), body.clone());
    let origin = Origin::start(move |_req| {
        c.fetch_add(1, Ordering::SeqCst);
        let body = b2.clone();
        async move {
            // Slow enough that both replicas miss before either has uploaded.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Response::builder()
                .header("cache-control", "public, max-age=600")
                .body(full(body))
                .unwrap()
        }
    })
    .await;
    let url = origin.url("/herd/popular-1.0.tgz");
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestProxy::start(lease_opts(&s3.endpoint(), da.path(), "10s")).await;
    let b = TestProxy::start(lease_opts(&s3.endpoint(), db.path(), "10s")).await;
    let (ca, cb) = (a.client(), b.client());
    let (ua, ub) = (url.clone(), url.clone());
    let ta = tokio::spawn(async move { ca.get(&ua).send().await.unwrap().bytes().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let tb = tokio::spawn(async move { cb.get(&ub).send().await.unwrap().bytes().await });
    let (ga, gb) = (ta.await.unwrap().unwrap(), tb.await.unwrap().unwrap());
    assert!(ga == body && gb == body, "a wrong body");
    let why = [&a, &b].map(|p| {
        let st = &shared(p).stats;
        [
            &st.leases_acquired,
            &st.lease_waits,
            &st.lease_wait_hits,
            &st.lease_wait_upstream,
        ]
        .map(|c| c.load(Ordering::SeqCst))
    });
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "the origin was asked once (leases acquired, waits, wait hits, waits gone upstream, per replica: {why:?})"
    );
    let mut codes = vec![
        a.log_with("/popular-1.0.tgz ").await,
        b.log_with("/popular-1.0.tgz ").await,
    ];
    codes.sort_by_key(|l| l.contains("TCP_SHARED_HIT"));
    assert!(codes[0].contains("TCP_MISS"), "{codes:?}");
    assert!(codes[1].contains("TCP_SHARED_HIT"), "{codes:?}");
    let (sa, sb) = (shared(&a), shared(&b));
    let sum = |f: fn(&Shared) -> &std::sync::atomic::AtomicU64| {
        f(&sa).load(Ordering::SeqCst) + f(&sb).load(Ordering::SeqCst)
    };
    assert_eq!(sum(|s| &s.stats.leases_acquired), 1);
    assert_eq!(sum(|s| &s.stats.lease_waits), 1);
    assert_eq!(sum(|s| &s.stats.lease_wait_hits), 1);
    assert_eq!(sum(|s| &s.stats.duplicate_fetches), 0);
    lease_released(&s3, &lease_object(&url)).await;
    let waiter = if sa.stats.lease_waits.load(Ordering::SeqCst) == 1 {
        &a
    } else {
        &b
    };
    let metrics = reqwest::get(format!("{}/metrics", waiter.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains(r#"cuttle_shared_cache_operations_total{op="lease",outcome="wait_hit"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("cuttle_shared_cache_duplicate_fetches_total 0"));
    a.shutdown().await;
    b.shutdown().await;
}

/// A lease left by a replica that died blocks nobody beyond the lease timeout: one older than
/// the timeout is replaced at once; a fresh one is waited for until it goes stale, then the
/// waiting replica takes the lease, fetches, uploads and deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_replicas_lease_blocks_at_most_its_timeout() {
    let s3 = S3::start().await;
    let (origin, count) = artifact_origin(data(32 * 1024, 9)).await;
    let dir = tempfile::tempdir().unwrap();
    let p = TestProxy::start(lease_opts(&s3.endpoint(), dir.path(), "2s")).await;
    let sh = shared(&p);
    let now_ms = lease::now_ms;

    // Taken 10 s ago by a replica that never came back: replaced without waiting.
    let old = origin.url("/dead/old.tgz");
    s3.write(
        &lease_object(&old),
        lease::encode("dead-replica", now_ms() - 10_000).into_bytes(),
    )
    .await;
    let start = Instant::now();
    let (status, _, _) = get(&p, &old).await;
    assert_eq!(status, 200);
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "waited for a stale lease: {:?}",
        start.elapsed()
    );
    assert_eq!(sh.stats.leases_stale.load(Ordering::SeqCst), 1);
    assert_eq!(sh.stats.lease_waits.load(Ordering::SeqCst), 0);
    lease_released(&s3, &lease_object(&old)).await;

    // Taken just now by a replica that dies at once: waited for, 2 s at most (plus a poll).
    let fresh = origin.url("/dead/fresh.tgz");
    s3.write(
        &lease_object(&fresh),
        lease::encode("dead-replica", now_ms()).into_bytes(),
    )
    .await;
    let start = Instant::now();
    let (status, _, _) = get(&p, &fresh).await;
    let took = start.elapsed();
    assert_eq!(status, 200);
    assert!(
        took >= Duration::from_millis(1500),
        "did not wait for a fresh lease: {took:?}"
    );
    assert!(
        took < Duration::from_millis(4500),
        "blocked too long: {took:?}"
    );
    assert_eq!(sh.stats.lease_waits.load(Ordering::SeqCst), 1);
    assert_eq!(sh.stats.lease_wait_upstream.load(Ordering::SeqCst), 1);
    assert_eq!(sh.stats.leases_stale.load(Ordering::SeqCst), 2);
    assert_eq!(count.load(Ordering::SeqCst), 2, "each URL fetched once");
    uploads(&p, 2).await;
    lease_released(&s3, &lease_object(&fresh)).await;
    p.shutdown().await;
}

/// A store that ignores `If-None-Match` (moto behind a gate that removes it): the probe finds
/// out, so leases stay off (each replica fetches) and uploads are plain writes, and nothing
/// fails: every request is answered, uploads succeed, the breaker stays closed, no probe
/// object is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_ignoring_conditional_writes_gets_plain_writes_and_no_leases() {
    let s3 = S3::start_with(Store::Moto).await;
    let gate = Gate::start(s3.port).await;
    gate.set(Mode::StripIfNoneMatch);
    let body = data(64 * 1024, 17);
    let (origin, count) = artifact_origin(body.clone()).await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestProxy::start(lease_opts(&gate.endpoint(), da.path(), "10s")).await;
    let b = TestProxy::start(lease_opts(&gate.endpoint(), db.path(), "10s")).await;
    let url = origin.url("/plain/one.tgz");
    for p in [&a, &b] {
        let (status, _, got) = get(p, &url).await;
        assert_eq!((status, got == body), (200, true));
    }
    uploads(&a, 1).await;
    let (sa, sb) = (shared(&a), shared(&b));
    // B looked before A's upload may have landed: a shared hit or its own fetch, never a
    // lease (A's "conditional" create would have succeeded on this store).
    for sh in [&sa, &sb] {
        assert_eq!(sh.stats.leases_acquired.load(Ordering::SeqCst), 0);
        assert_eq!(sh.stats.lease_waits.load(Ordering::SeqCst), 0);
        assert_eq!(sh.breaker.state(), BreakerState::Closed);
        assert_eq!(sh.stats.upload_errors.load(Ordering::SeqCst), 0);
    }
    // Once uploaded, a third request through a fresh replica is a shared hit.
    let dc = tempfile::tempdir().unwrap();
    let c = TestProxy::start(lease_opts(&gate.endpoint(), dc.path(), "10s")).await;
    let before = count.load(Ordering::SeqCst);
    let (status, _, got) = get(&c, &url).await;
    assert_eq!((status, got == body), (200, true));
    assert!(c.log_with("/one.tgz ").await.contains("TCP_SHARED_HIT"));
    assert_eq!(count.load(Ordering::SeqCst), before);
    let keys = s3.keys().await;
    assert!(
        keys.iter()
            .all(|k| !k.contains("/probe/") && !k.ends_with(".lease")),
        "{keys:?}"
    );
    for p in [a, b, c] {
        p.shutdown().await;
    }
}

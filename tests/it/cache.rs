//! HTTP cache semantics seen from a client (RFC 9111, RFC 5861, RFC 9110 conditionals and
//! ranges, RFC 9211 Cache-Status), against in-process origins that count requests. Disk tiers,
//! restarts, eviction and large-scale coalescing are covered in other files.
use crate::support::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cuttle::config::Options;
use cuttle::http::body::{Body, full};
use http::{Method, Response};

// ---------------------------------------------------------------------------------------
// helpers

type Headers = Vec<(String, String)>;

fn hdrs(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn reply(status: u16, headers: &[(String, String)], body: impl Into<Bytes>) -> Response<Body> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(full(body.into())).unwrap()
}

/// An origin answering every request with 200, `headers` and `body`.
async fn fixed(headers: Headers, body: &'static str) -> Origin {
    let headers = Arc::new(headers);
    Origin::start(move |_req| {
        let h = headers.clone();
        async move { reply(200, &h, body) }
    })
    .await
}

fn httpdate_from_now(offset_secs: i64) -> String {
    let now = SystemTime::now();
    let t = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs as u64)
    } else {
        now - Duration::from_secs(offset_secs.unsigned_abs())
    };
    httpdate::fmt_http_date(t)
}

/// The result code (e.g. `TCP_MEM_HIT/200`) of the next access-log line.
async fn next_code(p: &TestProxy) -> String {
    let l = p.next_log().await;
    l.split_whitespace()
        .find(|w| w.starts_with("TCP_") || w.starts_with("NONE"))
        .unwrap_or_else(|| panic!("no result code in {l}"))
        .to_string()
}

fn is_hit(code: &str) -> bool {
    code.starts_with("TCP_MEM_HIT/") || code.starts_with("TCP_HIT/")
}

/// An origin whose every response is 503 after `down` is set, and `headers`/`body` before.
async fn switchable(headers: Headers, body: &'static str) -> (Origin, Arc<AtomicBool>) {
    let down = Arc::new(AtomicBool::new(false));
    let d = down.clone();
    let headers = Arc::new(headers);
    let o = Origin::start(move |_req| {
        let h = headers.clone();
        let down = d.load(Ordering::SeqCst);
        async move {
            if down {
                reply(503, &hdrs(&[("content-type", "text/plain")]), "origin down")
            } else {
                reply(200, &h, body)
            }
        }
    })
    .await;
    (o, down)
}

// ---------------------------------------------------------------------------------------
// 1. What is stored

#[tokio::test]
async fn no_store_is_never_stored() {
    let o = fixed(hdrs(&[("cache-control", "no-store, max-age=600")]), "x").await;
    let p = Px::start(opts()).await;
    for _ in 0..2 {
        assert_eq!(p.get(&o.url("/ns")).await.text(), "x");
    }
    assert_eq!(o.hits(), 2);
    assert_eq!(next_code(&p).await, "TCP_MISS/200");
    assert_eq!(next_code(&p).await, "TCP_MISS/200");
}

#[tokio::test]
async fn private_is_not_stored_by_a_shared_cache() {
    let o = fixed(hdrs(&[("cache-control", "private, max-age=600")]), "x").await;
    let p = Px::start(opts()).await;
    p.get(&o.url("/p")).await;
    p.get(&o.url("/p")).await;
    assert_eq!(o.hits(), 2);
}

#[tokio::test]
async fn authorized_request_is_not_stored_without_explicit_permission() {
    let o = fixed(hdrs(&[("cache-control", "max-age=600")]), "x").await;
    let p = Px::start(opts()).await;
    let auth = [("authorization", "Basic dTpw")];
    p.get_with(&o.url("/auth"), &auth).await;
    p.get_with(&o.url("/auth"), &auth).await;
    assert_eq!(o.hits(), 2, "RFC 9111 §3.5: not stored");
}

#[tokio::test]
async fn authorized_request_is_stored_with_public_s_maxage_or_must_revalidate() {
    let p = Px::start(opts()).await;
    let auth = [("authorization", "Basic dTpw")];
    for cc in [
        "public, max-age=600",
        "s-maxage=600",
        "max-age=600, must-revalidate",
    ] {
        let o = fixed(hdrs(&[("cache-control", cc)]), "x").await;
        p.get_with(&o.url("/auth"), &auth).await;
        let second = p.get_with(&o.url("/auth"), &auth).await;
        assert_eq!(second.text(), "x");
        assert_eq!(o.hits(), 1, "{cc}: should be stored and served");
    }
}

#[tokio::test]
async fn server_error_without_explicit_freshness_is_not_stored() {
    // With explicit freshness a 500 is storable (RFC 9111 §3): see tests/sec_cache.rs.
    let o = Origin::start(|_req| async {
        reply(500, &hdrs(&[("content-type", "text/plain")]), "boom")
    })
    .await;
    let p = Px::start(opts()).await;
    for _ in 0..2 {
        let g = p.get(&o.url("/e")).await;
        assert_eq!(g.status, 500);
        assert_eq!(g.text(), "boom");
    }
    assert_eq!(o.hits(), 2);
}

#[tokio::test]
async fn heuristic_freshness_from_old_last_modified() {
    // Modified 100 days ago: the usual 10% heuristic gives ~10 days of freshness.
    let lm = httpdate_from_now(-100 * 86400);
    let o = fixed(hdrs(&[("last-modified", &lm)]), "old").await;
    let p = Px::start(opts()).await;
    p.get(&o.url("/h")).await;
    assert_eq!(next_code(&p).await, "TCP_MISS/200");
    let g = p.get(&o.url("/h")).await;
    assert_eq!(g.text(), "old");
    assert!(is_hit(&next_code(&p).await));
    assert_eq!(o.hits(), 1);
}

#[tokio::test]
async fn no_freshness_and_no_validators_is_refetched_every_time() {
    let o = fixed(hdrs(&[("content-type", "text/plain")]), "plain").await;
    let p = Px::start(opts()).await;
    for _ in 0..3 {
        assert_eq!(p.get(&o.url("/plain")).await.text(), "plain");
    }
    assert_eq!(o.hits(), 3);
    // Without validators the refetch is unconditional.
    assert!(o.seen().iter().all(|s| {
        !s.headers.contains_key("if-none-match") && !s.headers.contains_key("if-modified-since")
    }));
}

#[tokio::test]
async fn immediate_reuse_of_a_fresh_response_does_not_refetch() {
    // No waiting for the entry to be committed: the next request must still be served
    // without the origin, from the store or from the fill that is finishing.
    let o = fixed(hdrs(&[("cache-control", "max-age=600")]), "fresh").await;
    let p = Px::start(opts()).await;
    for i in 0..20 {
        let url = o.url(&format!("/quick{i}"));
        assert_eq!(fetch(&p.c, Method::GET, &url, &[]).await.text(), "fresh");
        assert_eq!(fetch(&p.c, Method::GET, &url, &[]).await.text(), "fresh");
        assert_eq!(o.hits(), i + 1, "{url} fetched twice");
    }
}

#[tokio::test]
async fn immediate_reuse_of_a_response_without_freshness_refetches() {
    // The converse: a complete response that is already stale is not handed to the next
    // request while its entry is being committed.
    let o = fixed(hdrs(&[("content-type", "text/plain")]), "plain").await;
    let p = Px::start(opts()).await;
    for i in 0..20 {
        let url = o.url(&format!("/quick{i}"));
        fetch(&p.c, Method::GET, &url, &[]).await;
        fetch(&p.c, Method::GET, &url, &[]).await;
        assert_eq!(o.hits(), 2 * (i + 1), "{url} reused without freshness");
    }
}

// ---------------------------------------------------------------------------------------
// 2. Freshness: s-maxage > max-age > Expires

async fn hits_after_two_gets(headers: Headers) -> usize {
    let o = fixed(headers, "f").await;
    let p = Px::start(opts()).await;
    p.get(&o.url("/f")).await;
    p.get(&o.url("/f")).await;
    o.hits()
}

#[tokio::test]
async fn s_maxage_overrides_max_age_zero() {
    let h = hdrs(&[("cache-control", "max-age=0, s-maxage=600")]);
    assert_eq!(hits_after_two_gets(h).await, 1);
}

#[tokio::test]
async fn s_maxage_zero_overrides_max_age() {
    let h = hdrs(&[("cache-control", "max-age=600, s-maxage=0")]);
    assert_eq!(hits_after_two_gets(h).await, 2);
}

#[tokio::test]
async fn max_age_overrides_past_expires() {
    let past = httpdate_from_now(-3600);
    let h = hdrs(&[("cache-control", "max-age=600"), ("expires", &past)]);
    assert_eq!(hits_after_two_gets(h).await, 1);
}

#[tokio::test]
async fn max_age_zero_overrides_future_expires() {
    let future = httpdate_from_now(3600);
    let h = hdrs(&[("cache-control", "max-age=0"), ("expires", &future)]);
    assert_eq!(hits_after_two_gets(h).await, 2);
}

#[tokio::test]
async fn expires_alone_decides() {
    let future = httpdate_from_now(3600);
    assert_eq!(hits_after_two_gets(hdrs(&[("expires", &future)])).await, 1);
    let past = httpdate_from_now(-3600);
    assert_eq!(hits_after_two_gets(hdrs(&[("expires", &past)])).await, 2);
}

#[tokio::test]
async fn freshness_lifetime_expires_in_time() {
    // The one place expiry has to be observed: max-age=2 is fresh now and stale later.
    let o = fixed(hdrs(&[("cache-control", "max-age=2")]), "short").await;
    let p = Px::start(opts()).await;
    p.get(&o.url("/short")).await;
    p.get(&o.url("/short")).await;
    assert_eq!(o.hits(), 1, "fresh within its two seconds");
    let deadline = Instant::now() + Duration::from_secs(8);
    while o.hits() == 1 {
        assert!(Instant::now() < deadline, "never went stale");
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.get(&o.url("/short")).await;
    }
    assert_eq!(o.hits(), 2);
}

// ---------------------------------------------------------------------------------------
// 3. Age

#[tokio::test]
async fn age_is_on_every_cached_response() {
    let o = fixed(hdrs(&[("cache-control", "max-age=600")]), "a").await;
    let p = Px::start(opts()).await;
    p.get(&o.url("/age")).await;
    for _ in 0..2 {
        let g = p.get(&o.url("/age")).await;
        let age: u64 = g.header("age").parse().unwrap();
        assert!(age < 600, "{age}");
    }
    assert_eq!(o.hits(), 1);
}

#[tokio::test]
async fn age_counts_the_origins_age_and_grows() {
    let o = fixed(
        hdrs(&[("cache-control", "max-age=3600"), ("age", "100")]),
        "a",
    )
    .await;
    let p = Px::start(opts()).await;
    p.get(&o.url("/age")).await;
    let first: u64 = p.get(&o.url("/age")).await.header("age").parse().unwrap();
    assert!((100..110).contains(&first), "{first}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now: u64 = p.get(&o.url("/age")).await.header("age").parse().unwrap();
        assert!(now >= first, "Age went backwards: {first} then {now}");
        if now > first {
            break;
        }
        assert!(Instant::now() < deadline, "Age never grew past {first}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(o.hits(), 1);
}

// ---------------------------------------------------------------------------------------
// 4. Vary

/// An origin whose body echoes `Accept-Encoding`, with `Vary` as given.
async fn vary_origin(vary: &'static str) -> Origin {
    Origin::start(move |req| {
        let ae = req
            .headers()
            .get("accept-encoding")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        async move {
            reply(
                200,
                &hdrs(&[("cache-control", "max-age=600"), ("vary", vary)]),
                format!("ae={ae}"),
            )
        }
    })
    .await
}

#[tokio::test]
async fn vary_stores_one_variant_per_encoding() {
    let o = vary_origin("Accept-Encoding").await;
    let p = Px::start(opts()).await;
    let url = o.url("/v");
    let gz = [("accept-encoding", "gzip")];
    let br = [("accept-encoding", "br")];
    assert_eq!(p.get_with(&url, &gz).await.text(), "ae=gzip");
    assert_eq!(p.get_with(&url, &br).await.text(), "ae=br");
    assert_eq!(o.hits(), 2);
    assert_eq!(p.get_with(&url, &gz).await.text(), "ae=gzip");
    assert_eq!(p.get_with(&url, &br).await.text(), "ae=br");
    assert_eq!(o.hits(), 2, "both variants are hits");
    // A request without the header is a third variant.
    assert_eq!(p.get(&url).await.text(), "ae=");
    assert_eq!(o.hits(), 3);
}

#[tokio::test]
async fn vary_matching_is_normalised() {
    let o = vary_origin("Accept-Encoding").await;
    let p = Px::start(opts()).await;
    let url = o.url("/vn");
    p.get_with(&url, &[("accept-encoding", "gzip, deflate")])
        .await;
    let g = p
        .get_with(&url, &[("accept-encoding", "gzip,deflate")])
        .await;
    assert_eq!(g.text(), "ae=gzip, deflate");
    assert_eq!(o.hits(), 1);
}

#[tokio::test]
async fn vary_star_never_matches() {
    let o = vary_origin("*").await;
    let p = Px::start(opts()).await;
    for _ in 0..3 {
        p.get(&o.url("/star")).await;
    }
    assert_eq!(o.hits(), 3);
}

// ---------------------------------------------------------------------------------------
// 5. Revalidation with the origin

/// An origin with `ETag: "v1"`: 304 with `Cache-Control: reval_cc` to a matching
/// If-None-Match, else 200 "one" with `first_cc`.
async fn etag_origin(first_cc: &'static str, reval_cc: &'static str) -> Origin {
    Origin::start(move |req| {
        let matches = req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"");
        async move {
            if matches {
                reply(
                    304,
                    &hdrs(&[("etag", "\"v1\""), ("cache-control", reval_cc)]),
                    "",
                )
            } else {
                reply(
                    200,
                    &hdrs(&[("etag", "\"v1\""), ("cache-control", first_cc)]),
                    "one",
                )
            }
        }
    })
    .await
}

#[tokio::test]
async fn stale_entry_with_etag_is_revalidated_and_304_refreshes_it() {
    let o = etag_origin("max-age=0", "max-age=600").await;
    let p = Px::start(opts()).await;
    let url = o.url("/etag");
    assert_eq!(p.get(&url).await.text(), "one");
    assert_eq!(next_code(&p).await, "TCP_MISS/200");

    let g = p.get(&url).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text(), "one");
    assert_eq!(next_code(&p).await, "TCP_REFRESH_UNMODIFIED/200");
    assert_eq!(o.hits(), 2);
    assert_eq!(o.last().headers["if-none-match"], "\"v1\"");
    // The 304's Cache-Control was merged: the entry is fresh now.
    assert!(g.header("cache-control").contains("max-age=600"));
    g.header("age");

    let g = p.get(&url).await;
    assert_eq!(g.text(), "one");
    assert!(is_hit(&next_code(&p).await));
    assert_eq!(o.hits(), 2);
}

#[tokio::test]
async fn no_cache_response_is_revalidated_on_every_use() {
    let o = etag_origin("no-cache", "no-cache").await;
    let p = Px::start(opts()).await;
    let url = o.url("/nc");
    p.get(&url).await;
    for _ in 0..2 {
        let g = p.get(&url).await;
        assert_eq!(g.status, 200);
        assert_eq!(g.text(), "one");
        assert_eq!(o.last().headers["if-none-match"], "\"v1\"");
    }
    assert_eq!(o.hits(), 3);
}

#[tokio::test]
async fn last_modified_only_revalidates_with_if_modified_since() {
    let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
    let o = Origin::start(move |req| {
        let cond = req.headers().contains_key("if-modified-since");
        async move {
            if cond {
                // No validator in the 304, as Python's http.server answers: it still
                // certifies the entry the conditional request was made from.
                reply(304, &hdrs(&[("cache-control", "max-age=0")]), "")
            } else {
                reply(
                    200,
                    &hdrs(&[("last-modified", lm), ("cache-control", "max-age=0")]),
                    "lm",
                )
            }
        }
    })
    .await;
    let p = Px::start(opts()).await;
    p.get(&o.url("/lm")).await;
    let g = p.get(&o.url("/lm")).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text(), "lm");
    let seen = o.last();
    assert_eq!(seen.headers["if-modified-since"], lm);
    assert!(!seen.headers.contains_key("if-none-match"));
    p.log_with("TCP_REFRESH_UNMODIFIED/200").await;
}

#[tokio::test]
async fn revalidation_answered_with_new_body_replaces_the_entry() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let o = Origin::start(move |_req| {
        let i = n2.fetch_add(1, Ordering::SeqCst);
        async move {
            if i == 0 {
                reply(
                    200,
                    &hdrs(&[("etag", "\"v1\""), ("cache-control", "max-age=0")]),
                    "one",
                )
            } else {
                reply(
                    200,
                    &hdrs(&[("etag", "\"v2\""), ("cache-control", "max-age=600")]),
                    "two",
                )
            }
        }
    })
    .await;
    let p = Px::start(opts()).await;
    let url = o.url("/mod");
    assert_eq!(p.get(&url).await.text(), "one");
    assert_eq!(next_code(&p).await, "TCP_MISS/200");
    assert_eq!(p.get(&url).await.text(), "two");
    assert_eq!(next_code(&p).await, "TCP_REFRESH_MODIFIED/200");
    assert_eq!(o.last().headers["if-none-match"], "\"v1\"");
    assert_eq!(p.get(&url).await.text(), "two");
    assert!(is_hit(&next_code(&p).await));
    assert_eq!(o.hits(), 2);
}

// ---------------------------------------------------------------------------------------
// 6. Client conditionals answered from the cache

#[tokio::test]
async fn client_if_none_match_gets_304_from_cache() {
    let o = fixed(
        hdrs(&[("etag", "\"abc\""), ("cache-control", "max-age=600")]),
        "body",
    )
    .await;
    let p = Px::start(opts()).await;
    p.get(&o.url("/inm")).await;
    let g = p
        .get_with(&o.url("/inm"), &[("if-none-match", "\"abc\"")])
        .await;
    assert_eq!(g.status, 304);
    assert!(g.body.is_empty());
    assert_eq!(g.header("etag"), "\"abc\"");
    // A different tag gets the full response, still from the cache.
    let g = p
        .get_with(&o.url("/inm"), &[("if-none-match", "\"zzz\"")])
        .await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text(), "body");
    assert_eq!(o.hits(), 1);
    assert!(
        o.seen()
            .iter()
            .all(|s| !s.headers.contains_key("if-none-match"))
    );
}

#[tokio::test]
async fn client_if_modified_since_gets_304_from_cache() {
    let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
    let o = fixed(
        hdrs(&[("last-modified", lm), ("cache-control", "max-age=600")]),
        "body",
    )
    .await;
    let p = Px::start(opts()).await;
    p.get(&o.url("/ims")).await;
    let g = p
        .get_with(&o.url("/ims"), &[("if-modified-since", lm)])
        .await;
    assert_eq!(g.status, 304);
    let earlier = "Sat, 05 Nov 1994 08:49:37 GMT";
    let g = p
        .get_with(&o.url("/ims"), &[("if-modified-since", earlier)])
        .await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text(), "body");
    assert_eq!(o.hits(), 1);
}

// ---------------------------------------------------------------------------------------
// 7. HEAD

#[tokio::test]
async fn head_is_answered_from_a_stored_get() {
    let o = fixed(
        hdrs(&[("cache-control", "max-age=600"), ("content-type", "text/x")]),
        "0123456789",
    )
    .await;
    let p = Px::start(opts()).await;
    p.get(&o.url("/head")).await;
    let g = p.send(Method::HEAD, &o.url("/head"), &[]).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.header("content-length"), "10");
    assert_eq!(g.header("content-type"), "text/x");
    assert!(g.body.is_empty());
    assert_eq!(o.hits(), 1);
    next_code(&p).await;
    assert!(is_hit(&next_code(&p).await));
}

#[tokio::test]
async fn head_miss_goes_to_the_origin_and_stores_nothing() {
    let o = fixed(hdrs(&[("cache-control", "max-age=600")]), "0123456789").await;
    let p = Px::start(opts()).await;
    let g = p.send(Method::HEAD, &o.url("/hm"), &[]).await;
    assert_eq!(g.status, 200);
    assert!(g.body.is_empty());
    assert_eq!(o.last().method, Method::HEAD);
    p.send(Method::HEAD, &o.url("/hm"), &[]).await;
    assert_eq!(o.hits(), 2);
    assert_eq!(p.get(&o.url("/hm")).await.text(), "0123456789");
    assert_eq!(o.hits(), 3);
    assert_eq!(o.last().method, Method::GET);
}

// ---------------------------------------------------------------------------------------
// 8. Unsafe methods invalidate

/// An origin: GETs are cacheable and count per path; other methods answer 200 with the
/// headers given in `unsafe_headers`.
async fn invalidation_origin(unsafe_headers: Headers) -> Origin {
    let uh = Arc::new(unsafe_headers);
    Origin::start(move |req| {
        let get = req.method() == Method::GET;
        let uh = uh.clone();
        async move {
            if get {
                reply(200, &hdrs(&[("cache-control", "max-age=600")]), "doc")
            } else {
                reply(200, &uh, "done")
            }
        }
    })
    .await
}

fn gets_of(o: &Origin, path: &str) -> usize {
    o.seen()
        .iter()
        .filter(|s| s.method == Method::GET && s.uri.path() == path)
        .count()
}

#[tokio::test]
async fn unsafe_methods_invalidate_the_target() {
    let o = invalidation_origin(Vec::new()).await;
    let p = Px::start(opts()).await;
    for (i, m) in [Method::POST, Method::PUT, Method::DELETE]
        .into_iter()
        .enumerate()
    {
        let path = format!("/doc{i}");
        let url = o.url(&path);
        p.get(&url).await;
        p.get(&url).await;
        assert_eq!(gets_of(&o, &path), 1, "cached before {m}");
        let r = p.send(m.clone(), &url, &[]).await;
        assert_eq!(r.status, 200);
        p.get(&url).await;
        assert_eq!(gets_of(&o, &path), 2, "{m} must invalidate {path}");
    }
}

#[tokio::test]
async fn unsafe_method_invalidates_location_and_content_location_on_the_same_origin() {
    let other = fixed(hdrs(&[("cache-control", "max-age=600")]), "other").await;
    let other_url = other.url("/x");
    // Location is relative (same origin); Content-Location is absolute on the other origin.
    let o = invalidation_origin(hdrs(&[
        ("location", "/a"),
        ("content-location", &other_url),
    ]))
    .await;
    let p = Px::start(opts()).await;
    for url in [o.url("/a"), other_url.clone()] {
        p.get(&url).await;
    }
    p.send(Method::POST, &o.url("/form"), &[]).await;
    p.get(&o.url("/a")).await;
    assert_eq!(
        gets_of(&o, "/a"),
        2,
        "Location on the same origin is invalidated"
    );
    p.get(&other_url).await;
    assert_eq!(other.hits(), 1, "another origin's entry must stay");
}

#[tokio::test]
async fn unsafe_method_invalidates_absolute_content_location_on_the_same_origin() {
    // Built in two steps: the origin must name its own address.
    let addr = Arc::new(std::sync::OnceLock::<String>::new());
    let a2 = addr.clone();
    let o = Origin::start(move |req| {
        let get = req.method() == Method::GET;
        let cl = format!("{}/b", a2.get().cloned().unwrap_or_default());
        async move {
            if get {
                reply(200, &hdrs(&[("cache-control", "max-age=600")]), "doc")
            } else {
                reply(200, &hdrs(&[("content-location", &cl)]), "done")
            }
        }
    })
    .await;
    addr.set(format!("http://{}", o.addr)).unwrap();
    let p = Px::start(opts()).await;
    p.get(&o.url("/b")).await;
    p.get(&o.url("/b")).await;
    assert_eq!(gets_of(&o, "/b"), 1);
    p.send(Method::PUT, &o.url("/other"), &[]).await;
    p.get(&o.url("/b")).await;
    assert_eq!(gets_of(&o, "/b"), 2);
}

// ---------------------------------------------------------------------------------------
// 9. must-revalidate / proxy-revalidate

/// Stores a stale entry with `cc`, stops the origin (connection refused), asks again.
async fn stale_with_origin_gone(cc: &'static str) -> Got {
    let o = fixed(
        hdrs(&[("cache-control", cc), ("connection", "close")]),
        "stale",
    )
    .await;
    let url = o.url("/mr");
    let p = Px::start(opts()).await;
    assert_eq!(p.get(&url).await.text(), "stale");
    drop(o);
    p.get(&url).await
}

#[tokio::test]
async fn must_revalidate_is_not_served_stale_when_the_origin_is_down() {
    let g = stale_with_origin_gone("max-age=0, must-revalidate").await;
    assert!(g.status == 502 || g.status == 504, "{}", g.status);
    assert_ne!(g.text(), "stale");
}

#[tokio::test]
async fn proxy_revalidate_is_not_served_stale_when_the_origin_is_down() {
    let g = stale_with_origin_gone("max-age=0, proxy-revalidate").await;
    assert!(g.status == 502 || g.status == 504, "{}", g.status);
    assert_ne!(g.text(), "stale");
}

#[tokio::test]
async fn without_must_revalidate_the_same_entry_is_served_stale() {
    // Control for the two tests above.
    let g = stale_with_origin_gone("max-age=0").await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text(), "stale");
}

#[tokio::test]
async fn proxy_revalidate_does_not_shorten_freshness() {
    // RFC 9111 §5.2.2.8: like must-revalidate, it only matters once the entry is stale.
    let h = hdrs(&[("cache-control", "max-age=600, proxy-revalidate")]);
    assert_eq!(hits_after_two_gets(h).await, 1);
}

// ---------------------------------------------------------------------------------------
// 10. stale-while-revalidate

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let n = Arc::new(AtomicUsize::new(0));
    let (g2, n2) = (gate.clone(), n.clone());
    let o = Origin::start(move |_req| {
        let i = n2.fetch_add(1, Ordering::SeqCst);
        let gate = g2.clone();
        async move {
            if i == 0 {
                return reply(
                    200,
                    &hdrs(&[("cache-control", "max-age=0, stale-while-revalidate=600")]),
                    "v1",
                );
            }
            // The refresh is held until the test has seen every stale answer.
            drop(gate.acquire().await.unwrap());
            reply(200, &hdrs(&[("cache-control", "max-age=600")]), "v2")
        }
    })
    .await;
    let p = Px::start(opts()).await;
    let url = o.url("/swr");
    assert_eq!(p.get(&url).await.text(), "v1");
    assert_eq!(next_code(&p).await, "TCP_MISS/200");

    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (c, url) = (p.c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            fetch(&c, Method::GET, &url, &[]).await
        }));
    }
    for t in tasks {
        let g = t.await.unwrap();
        assert_eq!(g.status, 200);
        assert_eq!(g.text(), "v1", "served stale without waiting");
        g.header("age");
    }
    for _ in 0..20 {
        assert_eq!(next_code(&p).await, "TCP_STALE_HIT/200");
    }
    wait_for("the background revalidation", || o.hits() == 2).await;
    assert_eq!(o.hits(), 2, "exactly one background request");

    gate.add_permits(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let g = p.get(&url).await;
        let code = next_code(&p).await;
        if g.text() == "v2" {
            assert!(is_hit(&code), "{code}");
            break;
        }
        assert_eq!(code, "TCP_STALE_HIT/200");
        assert!(Instant::now() < deadline, "refreshed entry never served");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(o.hits(), 2, "the refreshed entry is fresh");
}

// ---------------------------------------------------------------------------------------
// 11. stale-if-error and --serve-stale-on-error

#[tokio::test]
async fn stale_if_error_serves_stale_when_the_origin_fails() {
    let (o, down) = switchable(
        hdrs(&[("cache-control", "max-age=0, stale-if-error=600")]),
        "kept",
    )
    .await;
    let p = Px::start(Options {
        serve_stale_on_error: Some("0s".into()),
        ..opts()
    })
    .await;
    p.get(&o.url("/sie")).await;
    next_code(&p).await;
    down.store(true, Ordering::SeqCst);
    let g = p.get(&o.url("/sie")).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text(), "kept");
    g.header("age");
    assert_eq!(next_code(&p).await, "TCP_STALE_IF_ERROR/200");
    assert_eq!(o.hits(), 2, "the origin was asked");
}

#[tokio::test]
async fn without_stale_if_error_and_serve_stale_off_the_error_passes_through() {
    let (o, down) = switchable(hdrs(&[("cache-control", "max-age=0")]), "kept").await;
    let p = Px::start(Options {
        serve_stale_on_error: Some("0s".into()),
        ..opts()
    })
    .await;
    p.get(&o.url("/nosie")).await;
    down.store(true, Ordering::SeqCst);
    let g = p.get(&o.url("/nosie")).await;
    assert_eq!(g.status, 503);
    assert_eq!(g.text(), "origin down");
}

#[tokio::test]
async fn serve_stale_on_error_default_covers_a_failing_origin() {
    let (o, down) = switchable(hdrs(&[("cache-control", "max-age=0")]), "kept").await;
    let p = Px::start(opts()).await;
    p.get(&o.url("/def")).await;
    next_code(&p).await;
    down.store(true, Ordering::SeqCst);
    let g = p.get(&o.url("/def")).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text(), "kept");
    assert_eq!(next_code(&p).await, "TCP_STALE_IF_ERROR/200");
}

#[tokio::test]
async fn offline_build_is_served_from_cache_after_the_origin_is_gone() {
    let o = Origin::start(|req| {
        let path = req.uri().path().to_string();
        async move {
            let cc = if path.ends_with(".tgz") || path.ends_with(".jar") {
                // Artifacts carry no cache headers at all.
                vec![]
            } else {
                vec![("cache-control".to_string(), "max-age=0".to_string())]
            };
            let mut h = cc;
            h.push(("etag".into(), format!("\"{path}\"")));
            h.push(("connection".into(), "close".into()));
            reply(200, &h, format!("content of {path}"))
        }
    })
    .await;
    let paths = [
        "/left-pad/-/left-pad-1.3.0.tgz",
        "/org/x/a/1.0/a-1.0.jar",
        "/org/x/a/maven-metadata.xml",
        "/api/index.json",
    ];
    let urls: Vec<String> = paths.iter().map(|p| o.url(p)).collect();
    let p = Px::start(opts()).await;
    for u in &urls {
        assert_eq!(p.get(u).await.status, 200);
    }
    assert_eq!(o.hits(), paths.len());
    drop(o);
    for (u, path) in urls.iter().zip(paths) {
        let g = p.get(u).await;
        assert_eq!(g.status, 200, "{u}");
        assert_eq!(g.text(), format!("content of {path}"));
    }
}

// ---------------------------------------------------------------------------------------
// 12. Artifact rules

/// An origin with no cache headers at all.
async fn bare_origin() -> Origin {
    Origin::start(|req| {
        let path = req.uri().path().to_string();
        async move { reply(200, &[], format!("bytes of {path}")) }
    })
    .await
}

const RELOAD: [(&str, &str); 2] = [("cache-control", "no-cache"), ("pragma", "no-cache")];

#[tokio::test]
async fn npm_tarball_is_fresh_without_headers_and_despite_client_no_cache() {
    let o = bare_origin().await;
    let p = Px::start(opts()).await;
    let url = o.url("/pkg/-/pkg-1.0.0.tgz");
    p.get(&url).await;
    let g = p.get_with(&url, &RELOAD).await;
    assert_eq!(g.text(), "bytes of /pkg/-/pkg-1.0.0.tgz");
    assert_eq!(o.hits(), 1);
    next_code(&p).await;
    assert!(is_hit(&next_code(&p).await));
}

#[tokio::test]
async fn maven_jar_and_checksum_are_fresh_despite_client_no_cache() {
    let o = bare_origin().await;
    let p = Px::start(opts()).await;
    for path in [
        "/m2/org/x/a/1.0/a-1.0.jar",
        "/m2/org/x/a/1.0/a-1.0.jar.sha1",
    ] {
        p.get(&o.url(path)).await;
        p.get_with(&o.url(path), &RELOAD).await;
        p.get_with(&o.url(path), &RELOAD).await;
    }
    assert_eq!(o.hits(), 2);
}

/// The origin's own freshness for metadata is kept: the metadata age only fills in when the
/// origin says nothing.
#[tokio::test]
async fn maven_metadata_with_explicit_freshness_follows_the_origin() {
    let o = Origin::start(|req| {
        let cond = req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"m1\"");
        let path = req.uri().path().to_string();
        async move {
            let cc = if path.contains("/no-cache/") {
                "no-cache"
            } else {
                "max-age=3600"
            };
            let h = hdrs(&[("etag", "\"m1\""), ("cache-control", cc)]);
            if cond {
                reply(304, &h, "")
            } else {
                reply(200, &h, "<metadata/>")
            }
        }
    })
    .await;
    let p = Px::start(opts()).await;
    let url = o.url("/m2/org/x/a/maven-metadata.xml");
    for _ in 0..3 {
        assert_eq!(p.get(&url).await.text(), "<metadata/>");
    }
    assert_eq!(o.hits(), 1);
    let url = o.url("/m2/no-cache/x/a/maven-metadata.xml");
    for _ in 0..3 {
        assert_eq!(p.get(&url).await.text(), "<metadata/>");
    }
    assert_eq!(
        o.hits(),
        4,
        "no-cache from the origin: revalidated on every use"
    );
    assert!(
        o.seen()[2..]
            .iter()
            .all(|s| s.headers["if-none-match"] == "\"m1\"")
    );
}

// ---------------------------------------------------------------------------------------
// 12b. Metadata policy (--metadata-max-age, --metadata-grace) and negative caching

/// Metadata documents of every ecosystem, as an origin without cache headers serves them.
const METADATA_PATHS: [&str; 7] = [
    "/m2/org/x/a/maven-metadata.xml",
    "/simple/requests/",
    "/golang.org/x/mod/@v/list",
    "/golang.org/x/mod/@latest",
    "/debian/dists/stable/InRelease",
    "/debian/dists/stable/main/binary-amd64/Packages.xz",
    "/maven2/org/y/maven-metadata.xml.sha1",
];

/// Counts requests; answers metadata with an ETag and no freshness, `v1` then `v2`..., and
/// 304 to a matching `If-None-Match`.
async fn metadata_origin(gate: Option<Arc<tokio::sync::Semaphore>>) -> Origin {
    let n = Arc::new(AtomicUsize::new(0));
    Origin::start(move |req| {
        let cond = req.headers().contains_key("if-none-match");
        let i = n.fetch_add(1, Ordering::SeqCst);
        let gate = gate.clone();
        async move {
            if i > 0
                && let Some(g) = gate
            {
                drop(g.acquire().await.unwrap());
            }
            if cond {
                return reply(304, &hdrs(&[("etag", "\"v1\"")]), "");
            }
            reply(
                200,
                &hdrs(&[("etag", "\"v1\""), ("content-type", "text/plain")]),
                format!("v{}", i + 1),
            )
        }
    })
    .await
}

#[tokio::test]
async fn metadata_within_max_age_sends_nothing_upstream() {
    let o = metadata_origin(None).await;
    let p = Px::start(opts()).await;
    for path in METADATA_PATHS {
        let url = o.url(path);
        let before = o.hits();
        assert_eq!(p.get(&url).await.status, 200);
        // pip sends `Cache-Control: max-age=0` for every index page; the policy decides.
        for cc in ["", "max-age=0", "no-cache"] {
            let g = if cc.is_empty() {
                p.get(&url).await
            } else {
                p.get_with(&url, &[("cache-control", cc)]).await
            };
            assert_eq!(g.status, 200, "{path}");
            assert!(
                g.header("cache-status").contains("hit"),
                "{path}: {:?}",
                g.headers
            );
        }
        assert_eq!(o.hits(), before + 1, "{path}: one upstream request");
        let g = p.get(&url).await;
        assert!(
            g.header("cache-status").contains("; rule=\""),
            "{path}: {:?}",
            g.headers
        );
    }
}

#[tokio::test]
async fn metadata_after_max_age_is_served_stale_with_exactly_one_background_refresh() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let o = metadata_origin(Some(gate.clone())).await;
    let p = Px::start(Options {
        metadata_max_age: Some("1s".into()),
        ..opts()
    })
    .await;
    let url = o.url("/simple/requests/");
    assert_eq!(p.get(&url).await.text(), "v1");
    assert_eq!(next_code(&p).await, "TCP_MISS/200");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (c, url) = (p.c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            fetch(&c, Method::GET, &url, &[]).await
        }));
    }
    for t in tasks {
        let g = t.await.unwrap();
        assert_eq!(g.text(), "v1");
        assert!(
            g.header("cache-status").contains("stale-while-revalidate"),
            "{:?}",
            g.headers
        );
    }
    for _ in 0..10 {
        assert_eq!(next_code(&p).await, "TCP_STALE_HIT/200");
    }
    wait_for("the background refresh", || o.hits() == 2).await;
    gate.add_permits(10);
    // The refresh is conditional (the entry has an ETag) and the 304 makes it fresh again.
    assert_eq!(o.seen()[1].headers["if-none-match"], "\"v1\"");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let g = p.get(&url).await;
        assert_eq!(g.text(), "v1");
        let code = next_code(&p).await;
        if is_hit(&code) {
            break;
        }
        assert_eq!(code, "TCP_STALE_HIT/200");
        assert!(
            Instant::now() < deadline,
            "the refreshed entry never became fresh"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(o.hits(), 2, "exactly one background refresh");
}

#[tokio::test]
async fn metadata_is_served_stale_when_the_upstream_is_down() {
    let (o, down) = switchable(hdrs(&[("content-type", "text/plain")]), "kept").await;
    // No grace: the refresh after the max age is in the foreground, and it fails.
    let p = Px::start(Options {
        metadata_max_age: Some("1s".into()),
        metadata_grace: Some("0s".into()),
        ..opts()
    })
    .await;
    let url = o.url("/m2/org/x/a/maven-metadata.xml");
    p.get(&url).await;
    assert_eq!(next_code(&p).await, "TCP_MISS/200");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    down.store(true, Ordering::SeqCst);
    let g = p.get(&url).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text(), "kept");
    assert_eq!(next_code(&p).await, "TCP_STALE_IF_ERROR/200");
    assert_eq!(o.hits(), 2);
    // And with the origin's port closed altogether.
    drop(o);
    let g = p.get(&url).await;
    assert_eq!(g.text(), "kept");
}

#[tokio::test]
async fn per_rule_metadata_max_age_from_the_config_file() {
    let o = metadata_origin(None).await;
    let toml = r#"
        [[cache-rule]]
        name = "pypi-simple"
        metadata-max-age = "1s"
        metadata-grace = "0s"
    "#;
    let p = Px::start(rules_from_toml(toml)).await;
    let simple = o.url("/simple/a/");
    let maven = o.url("/m2/a/maven-metadata.xml");
    p.get(&simple).await;
    p.get(&maven).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    p.get(&simple).await;
    p.get(&maven).await;
    assert_eq!(o.hits(), 3, "only the changed rule expired");
}

#[tokio::test]
async fn not_found_is_remembered_for_the_negative_ttl_and_5xx_never() {
    let status = Arc::new(AtomicUsize::new(404));
    let s2 = status.clone();
    let o = Origin::start(move |_req| {
        let st = s2.load(Ordering::SeqCst) as u16;
        async move { reply(st, &hdrs(&[("content-type", "text/plain")]), "answer") }
    })
    .await;
    let p = Px::start(Options {
        negative_ttl: Some("1s".into()),
        ..opts()
    })
    .await;
    // A tarball that is not there yet: its immutable rule must not keep the 404 for a year.
    let url = o.url("/pkg/-/pkg-1.0.0.tgz");
    for _ in 0..3 {
        assert_eq!(p.get(&url).await.status, 404);
    }
    assert_eq!(o.hits(), 1, "the 404 is remembered");
    let g = p.get(&url).await;
    assert!(
        g.header("cache-status").contains("rule=\"negative\""),
        "{:?}",
        g.headers
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    status.store(200, Ordering::SeqCst);
    assert_eq!(p.get(&url).await.status, 200, "the 404 expired");
    assert_eq!(o.hits(), 2);
    status.store(503, Ordering::SeqCst);
    let url = o.url("/other/x.bin");
    for _ in 0..3 {
        assert_eq!(p.get(&url).await.status, 503);
    }
    assert_eq!(o.hits(), 5, "5xx is never cached negatively");
}

#[tokio::test]
async fn negative_caching_can_be_turned_off() {
    let o = Origin::start(|_req| async { reply(404, &hdrs(&[]), "no") }).await;
    let p = Px::start(Options {
        negative_ttl: Some("0s".into()),
        ..opts()
    })
    .await;
    let url = o.url("/missing");
    p.get(&url).await;
    p.get(&url).await;
    assert_eq!(o.hits(), 2);
}

fn rules_from_toml(text: &str) -> Options {
    let parsed: Options = toml::from_str(text).unwrap();
    assert!(parsed.cache_rule.is_some(), "no rule parsed from {text}");
    Options {
        cache_rule: parsed.cache_rule,
        ..opts()
    }
}

#[tokio::test]
async fn user_rule_gives_freshness_to_a_custom_pattern() {
    let o = bare_origin().await;
    let p = Px::start(rules_from_toml(
        "[[cache-rule]]\nname = \"iso\"\npattern = '\\.iso$'\nmin = \"1h\"\n",
    ))
    .await;
    for _ in 0..2 {
        p.get(&o.url("/images/x.iso")).await;
        p.get(&o.url("/images/x.img")).await;
    }
    assert_eq!(gets_of(&o, "/images/x.iso"), 1, "the rule makes it fresh");
    assert_eq!(gets_of(&o, "/images/x.img"), 2, "no rule, no freshness");
}

#[tokio::test]
async fn user_rule_max_zero_overrides_origin_max_age() {
    let o = fixed(hdrs(&[("cache-control", "max-age=3600")]), "live").await;
    let p = Px::start(rules_from_toml(
        "[[cache-rule]]\npattern = '/live/'\nmax = \"0s\"\n",
    ))
    .await;
    p.get(&o.url("/live/feed")).await;
    p.get(&o.url("/live/feed")).await;
    p.get(&o.url("/other")).await;
    p.get(&o.url("/other")).await;
    assert_eq!(gets_of(&o, "/live/feed"), 2);
    assert_eq!(gets_of(&o, "/other"), 1);
}

#[tokio::test]
async fn builtin_rules_can_be_turned_off() {
    let o = bare_origin().await;
    let p = Px::start(Options {
        builtin_cache_rules: Some(false),
        ..opts()
    })
    .await;
    let url = o.url("/pkg/-/pkg-1.0.0.tgz");
    p.get(&url).await;
    p.get(&url).await;
    assert_eq!(o.hits(), 2);
}

// ---------------------------------------------------------------------------------------
// 13. Ranges

const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz0123456789";

async fn range_origin() -> Origin {
    fixed(
        hdrs(&[
            ("cache-control", "max-age=600"),
            ("etag", "\"r1\""),
            ("content-type", "text/plain"),
        ]),
        ALPHABET,
    )
    .await
}

/// A proxy with the range origin's object already stored.
async fn stored_range() -> (Origin, Px, String) {
    let o = range_origin().await;
    let p = Px::start(opts()).await;
    let url = o.url("/r");
    assert_eq!(p.get(&url).await.text(), ALPHABET);
    (o, p, url)
}

#[tokio::test]
async fn single_range_from_cache() {
    let (o, p, url) = stored_range().await;
    let g = p.get_with(&url, &[("range", "bytes=10-19")]).await;
    assert_eq!(g.status, 206);
    assert_eq!(g.header("content-range"), "bytes 10-19/36");
    assert_eq!(g.header("content-length"), "10");
    assert_eq!(g.text(), &ALPHABET[10..20]);
    let g = p.get_with(&url, &[("range", "bytes=-3")]).await;
    assert_eq!(g.header("content-range"), "bytes 33-35/36");
    assert_eq!(g.text(), "789");
    assert_eq!(o.hits(), 1);
}

/// Splits a `multipart/byteranges` body into (Content-Range, bytes) parts.
fn parse_multipart(content_type: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("boundary")
        .trim_matches('"');
    let delim = format!("--{boundary}");
    let text = body;
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|i| i + from)
    };
    let mut parts = Vec::new();
    let mut pos = find(text, delim.as_bytes(), 0).expect("first delimiter");
    loop {
        let after = pos + delim.len();
        if text[after..].starts_with(b"--") {
            break;
        }
        assert!(text[after..].starts_with(b"\r\n"), "bad delimiter line");
        let head_end = find(text, b"\r\n\r\n", after).expect("part head");
        let head = String::from_utf8_lossy(&text[after + 2..head_end]).into_owned();
        let data_start = head_end + 4;
        let next = find(text, format!("\r\n{delim}").as_bytes(), data_start).expect("next part");
        let range = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-range")
                    .then(|| v.trim().to_string())
            })
            .expect("part Content-Range");
        parts.push((range, text[data_start..next].to_vec()));
        pos = next + 2;
    }
    parts
}

#[tokio::test]
async fn multiple_ranges_from_cache_are_multipart() {
    let (o, p, url) = stored_range().await;
    let g = p.get_with(&url, &[("range", "bytes=0-4,30-35")]).await;
    assert_eq!(g.status, 206);
    let ct = g.header("content-type").to_string();
    assert!(ct.starts_with("multipart/byteranges; boundary="), "{ct}");
    assert_eq!(
        g.header("content-length").parse::<usize>().unwrap(),
        g.body.len()
    );
    let parts = parse_multipart(&ct, &g.body);
    assert_eq!(
        parts,
        vec![
            ("bytes 0-4/36".to_string(), b"abcde".to_vec()),
            ("bytes 30-35/36".to_string(), b"456789".to_vec()),
        ]
    );
    assert_eq!(o.hits(), 1);
}

#[tokio::test]
async fn unsatisfiable_range_is_416() {
    let (o, p, url) = stored_range().await;
    let g = p.get_with(&url, &[("range", "bytes=100-200")]).await;
    assert_eq!(g.status, 416);
    assert_eq!(g.header("content-range"), "bytes */36");
    assert_eq!(o.hits(), 1);
}

#[tokio::test]
async fn if_range_decides_between_partial_and_full() {
    let (o, p, url) = stored_range().await;
    let g = p
        .get_with(&url, &[("range", "bytes=0-2"), ("if-range", "\"r1\"")])
        .await;
    assert_eq!(g.status, 206);
    assert_eq!(g.text(), "abc");
    let g = p
        .get_with(&url, &[("range", "bytes=0-2"), ("if-range", "\"old\"")])
        .await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text(), ALPHABET);
    assert_eq!(o.hits(), 1);
}

#[tokio::test]
async fn range_miss_fetches_the_whole_object_once() {
    let o = range_origin().await;
    let p = Px::start(opts()).await;
    let url = o.url("/rm");
    let g = p.get_with(&url, &[("range", "bytes=5-9")]).await;
    assert_eq!(g.status, 206);
    assert_eq!(g.header("content-range"), "bytes 5-9/36");
    assert_eq!(g.text(), "fghij");
    assert_eq!(o.hits(), 1);
    assert!(!o.last().headers.contains_key("range"), "fetched whole");
    let g = p.get(&url).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text(), ALPHABET);
    assert_eq!(o.hits(), 1);
    next_code(&p).await;
    assert!(is_hit(&next_code(&p).await));
}

// ---------------------------------------------------------------------------------------
// 14. Cache-Status

#[tokio::test]
async fn cache_status_says_stored_then_hit() {
    let o = fixed(hdrs(&[("cache-control", "max-age=600")]), "cs").await;
    let p = Px::start(opts()).await;
    let first = p.get(&o.url("/cs")).await;
    let cs = first.header("cache-status");
    assert!(cs.starts_with("cuttle;"), "{cs}");
    assert!(cs.contains("fwd=miss") && cs.contains("stored"), "{cs}");
    let second = p.get(&o.url("/cs")).await;
    let cs = second.header("cache-status");
    assert!(cs.starts_with("cuttle; hit"), "{cs}");
    assert!(!cs.contains("fwd="), "{cs}");
}

// ---------------------------------------------------------------------------------------
// 15. PURGE

fn purge() -> Method {
    Method::from_bytes(b"PURGE").unwrap()
}

#[tokio::test]
async fn purge_from_an_allowed_client_drops_the_entry() {
    let o = fixed(hdrs(&[("cache-control", "max-age=600")]), "p").await;
    let p = Px::start(Options {
        purge_allow: Some(vec!["127.0.0.1/32".into()]),
        ..opts()
    })
    .await;
    let url = o.url("/purge");
    p.get(&url).await;
    p.get(&url).await;
    assert_eq!(o.hits(), 1);
    let r = p.send(purge(), &url, &[]).await;
    assert_eq!(r.status, 200);
    p.log_with("TCP_PURGE/200").await;
    p.get(&url).await;
    assert_eq!(o.hits(), 2, "refetched after PURGE");
    assert!(o.seen().iter().all(|s| s.method == Method::GET));
}

#[tokio::test]
async fn second_purge_is_404() {
    let o = fixed(hdrs(&[("cache-control", "max-age=600")]), "p").await;
    let p = Px::start(Options {
        purge_allow: Some(vec!["127.0.0.1/32".into()]),
        ..opts()
    })
    .await;
    let url = o.url("/purge2");
    p.get(&url).await;
    assert_eq!(p.send(purge(), &url, &[]).await.status, 200);
    assert_eq!(p.send(purge(), &url, &[]).await.status, 404);
}

#[tokio::test]
async fn purge_without_purge_allow_is_forwarded() {
    let o = fixed(hdrs(&[("cache-control", "max-age=600")]), "p").await;
    let p = Px::start(opts()).await;
    let url = o.url("/fw");
    p.get(&url).await;
    let r = p.send(purge(), &url, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(o.last().method, purge());
}

// ---------------------------------------------------------------------------------------
// 16. only-if-cached

#[tokio::test]
async fn only_if_cached_miss_is_504_without_asking_the_origin() {
    let o = fixed(hdrs(&[("cache-control", "max-age=600")]), "oic").await;
    let p = Px::start(opts()).await;
    let oic = [("cache-control", "only-if-cached")];
    let g = p.get_with(&o.url("/oic"), &oic).await;
    assert_eq!(g.status, 504);
    assert_eq!(o.hits(), 0);
    p.get(&o.url("/oic")).await;
    let g = p.get_with(&o.url("/oic"), &oic).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text(), "oic");
    assert_eq!(o.hits(), 1);
}

//! Security regressions in the cache (the security issue's items 3, 8, 9, 10, 15 and 16):
//! responses obtained with credentials or carrying another client's cookie, Vary matching on
//! case-sensitive fields, trailing-dot hosts, range amplification, stale serving to coalesced
//! requests, and RFC 9111 details (Age lists, directive case, Date, error statuses, 1xx).
use crate::support::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cuttle::config::Options;
use cuttle::http::body::{Body, BoxError, boxed, full};
use http::Response;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------
// helpers

fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Body> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(full(body.into())).unwrap()
}

/// How a [`RawOrigin`] treats the next connections.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Read a request head and answer with the canned bytes.
    Serve,
    /// Accept and keep the connection open without answering.
    Hold,
    /// Accept and close at once (the upstream is cut).
    Cut,
}

/// An origin on a raw socket: answers with exact bytes (e.g. a 103 before the 200), or holds
/// connections, or cuts them.
struct RawOrigin {
    addr: std::net::SocketAddr,
    mode: Arc<Mutex<Mode>>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    served: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawOrigin {
    async fn start(answer: &'static [u8]) -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(Mode::Serve));
        let held = Arc::new(Mutex::new(Vec::new()));
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (m, h, s) = (mode.clone(), held.clone(), served.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let mode = *m.lock();
                match mode {
                    Mode::Hold => h.lock().push(stream),
                    Mode::Cut => drop(stream),
                    Mode::Serve => {
                        s.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(async move {
                            let mut head = Vec::new();
                            let mut byte = [0u8; 1];
                            while !head.ends_with(b"\r\n\r\n") {
                                match stream.read(&mut byte).await {
                                    Ok(1) => head.push(byte[0]),
                                    _ => return,
                                }
                            }
                            let _ = stream.write_all(answer).await;
                            let _ = stream.shutdown().await;
                        });
                    }
                }
            }
        });
        RawOrigin {
            addr,
            mode,
            held,
            served,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock() = mode;
    }

    fn held(&self) -> usize {
        self.held.lock().len()
    }

    /// Closes every held connection.
    fn cut_held(&self) {
        self.held.lock().clear();
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// 3. Responses to credentialed requests, and Set-Cookie

const SECRET: &str = "members-only bytes";

/// An origin that answers 200 with `headers` and [`SECRET`] to the given bearer tokens, 304
/// to a conditional request from them that names `"v1"`, 401 to anyone else, and 503 to
/// everyone once `down` is set.
async fn members_origin(
    tokens: &'static [&'static str],
    headers: &'static [(&'static str, &'static str)],
) -> (Origin, Arc<AtomicBool>) {
    let down = Arc::new(AtomicBool::new(false));
    let d = down.clone();
    let o = Origin::start(move |req| {
        let authed = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| tokens.contains(&v));
        let conditional = req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"");
        let down = d.load(Ordering::SeqCst);
        async move {
            if down {
                reply(503, &[("content-type", "text/plain")], "origin down")
            } else if !authed {
                reply(401, &[("www-authenticate", "Bearer")], "login first")
            } else if conditional {
                reply(304, headers, "")
            } else {
                reply(200, headers, SECRET)
            }
        }
    })
    .await;
    (o, down)
}

#[tokio::test]
async fn sec3_artifact_fetched_with_credentials_is_not_served_to_clients_without() {
    // No cache headers at all: only the npm-tarball rule could make this storable, and rule
    // overrides never apply to credentialed requests (RFC 9111 §3.5).
    let (o, down) = members_origin(&["Bearer s3cret"], &[]).await;
    let p = Px::start(opts()).await;
    let url = o.url("/private/-/private-1.0.0.tgz");
    let a = p
        .get_with(&url, &[("authorization", "Bearer s3cret")])
        .await;
    assert_eq!(a.text(), SECRET);
    let b = p.get(&url).await;
    assert_eq!(
        b.status, 401,
        "a client without credentials reached the origin"
    );
    assert_ne!(b.text(), SECRET);
    down.store(true, Ordering::SeqCst);
    let b = p.get(&url).await;
    assert_ne!(b.text(), SECRET, "served to an anonymous client on error");
    assert_eq!(b.status, 503);
}

#[tokio::test]
async fn sec3_public_response_to_credentials_is_revalidated_for_other_credentials() {
    let (o, _) = members_origin(
        &["Bearer alice", "Bearer bob"],
        &[("cache-control", "public, max-age=600"), ("etag", "\"v1\"")],
    )
    .await;
    let p = Px::start(opts()).await;
    let url = o.url("/members/doc");
    let alice = [("authorization", "Bearer alice")];
    assert_eq!(p.get_with(&url, &alice).await.text(), SECRET);
    assert_eq!(p.get_with(&url, &alice).await.text(), SECRET);
    assert_eq!(
        o.hits(),
        1,
        "the same credentials reuse the stored response"
    );

    let bob = p.get_with(&url, &[("authorization", "Bearer bob")]).await;
    assert_eq!(bob.text(), SECRET);
    assert_eq!(o.hits(), 2, "other credentials are revalidated");
    let seen = o.last();
    assert_eq!(seen.headers["authorization"], "Bearer bob");
    assert_eq!(seen.headers["if-none-match"], "\"v1\"");

    let anon = p.get(&url).await;
    assert_eq!(anon.status, 401);
    assert_ne!(anon.text(), SECRET);
    assert_eq!(o.hits(), 3);
    assert!(!o.last().headers.contains_key("authorization"));

    // The 401 removed the entry: alice's next request is a plain miss.
    assert_eq!(p.get_with(&url, &alice).await.text(), SECRET);
    assert_eq!(o.hits(), 4);
    assert!(
        !o.last().headers.contains_key("if-none-match"),
        "entry kept after a 401"
    );
}

#[tokio::test]
async fn sec3_stale_while_revalidate_is_not_served_to_other_credentials() {
    let (o, _) = members_origin(
        &["Bearer alice"],
        &[
            (
                "cache-control",
                "public, max-age=0, stale-while-revalidate=600",
            ),
            ("etag", "\"v1\""),
        ],
    )
    .await;
    let p = Px::start(opts()).await;
    let url = o.url("/members/swr");
    let alice = [("authorization", "Bearer alice")];
    assert_eq!(p.get_with(&url, &alice).await.text(), SECRET);
    let anon = p.get(&url).await;
    assert_eq!(
        anon.status, 401,
        "served stale to a client without credentials"
    );
    assert_ne!(anon.text(), SECRET);
    // The revalidation's 401 removed the entry.
    assert_eq!(p.get_with(&url, &alice).await.text(), SECRET);
    assert!(!o.last().headers.contains_key("if-none-match"));
}

#[tokio::test]
async fn sec3_request_without_credentials_does_not_join_a_credentialed_fill() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let o = Origin::start(move |req| {
        let authed = req
            .headers()
            .get("authorization")
            .is_some_and(|v| v == "Bearer alice");
        let gate = g.clone();
        async move {
            if !authed {
                return reply(401, &[], "login first");
            }
            // The second half is held until the test has sent the other request.
            let chunks = futures_util::stream::unfold(0u8, move |i| {
                let gate = gate.clone();
                async move {
                    let data: &'static [u8] = match i {
                        0 => b"members-only ",
                        1 => {
                            gate.acquire().await.unwrap().forget();
                            b"bytes"
                        }
                        _ => return None,
                    };
                    Some((
                        Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(data))),
                        i + 1,
                    ))
                }
            });
            Response::builder()
                .header("cache-control", "public, max-age=600")
                .header("content-length", SECRET.len().to_string())
                .body(boxed(http_body_util::StreamBody::new(chunks)))
                .unwrap()
        }
    })
    .await;
    let p = Px::start(opts()).await;
    let url = o.url("/members/slow");
    let a =
        p.c.get(&url)
            .header("authorization", "Bearer alice")
            .send()
            .await
            .unwrap();
    let cache = p.cache();
    let (c, u) = (p.c.clone(), url.clone());
    let anon = tokio::spawn(async move { fetch(&c, http::Method::GET, &u, &[]).await });
    wait_for("the second request to join or reach the origin", || {
        o.hits() >= 2 || cache.stats.coalesced.load(Ordering::SeqCst) >= 1
    })
    .await;
    gate.add_permits(10);
    let anon = anon.await.unwrap();
    assert_eq!(anon.status, 401, "joined the credentialed fill");
    assert_ne!(anon.text(), SECRET);
    assert_eq!(a.text().await.unwrap(), SECRET);
}

#[tokio::test]
async fn sec3_set_cookie_is_never_served_to_another_client() {
    // Fresh (`public`), after a 304, and served stale when the origin fails: each new
    // response sets a different session cookie.
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let (n2, d2) = (n.clone(), down.clone());
    let o = Origin::start(move |req| {
        let i = n2.fetch_add(1, Ordering::SeqCst);
        let down = d2.load(Ordering::SeqCst);
        let path = req.uri().path().to_string();
        let conditional = req.headers().contains_key("if-none-match");
        async move {
            let cc = if path.ends_with("fresh") {
                "public, max-age=600"
            } else {
                "max-age=0"
            };
            let cookie = format!("sid=session-{i}");
            if down {
                reply(503, &[], "origin down")
            } else if conditional {
                reply(304, &[("cache-control", cc), ("etag", "\"v1\"")], "")
            } else {
                reply(
                    200,
                    &[
                        ("cache-control", cc),
                        ("etag", "\"v1\""),
                        ("set-cookie", &cookie),
                    ],
                    "page",
                )
            }
        }
    })
    .await;
    let p = Px::start(opts()).await;
    for path in ["/cookie/fresh", "/cookie/revalidated", "/cookie/stale"] {
        let url = o.url(path);
        let first = p.get(&url).await;
        assert!(
            first.headers.contains_key("set-cookie"),
            "{path}: the client the origin answered gets its cookie"
        );
        if path.ends_with("stale") {
            down.store(true, Ordering::SeqCst);
        }
        let other = p.get(&url).await;
        assert_eq!(other.status, 200, "{path}");
        assert_eq!(other.text(), "page", "{path}");
        assert_eq!(
            other.headers.get("set-cookie"),
            None,
            "{path}: another client's cookie was served"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 8. Vary on a case-sensitive field

#[tokio::test]
async fn sec8_vary_on_a_case_sensitive_field_matches_exactly() {
    let o = Origin::start(|req| {
        let cookie = req
            .headers()
            .get("cookie")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        async move {
            reply(
                200,
                &[("cache-control", "max-age=600"), ("vary", "Cookie")],
                format!("for {cookie}"),
            )
        }
    })
    .await;
    let p = Px::start(opts()).await;
    let url = o.url("/v");
    let a = p.get_with(&url, &[("cookie", "sid=AbCdEf")]).await;
    assert_eq!(a.text(), "for sid=AbCdEf");
    let b = p.get_with(&url, &[("cookie", "sid=aBcDeF")]).await;
    assert_eq!(b.text(), "for sid=aBcDeF", "another client's variant");
    assert_eq!(o.hits(), 2);
    // Whitespace at the ends of a field value is not part of it (RFC 9110 §5.5).
    let again = p.get_with(&url, &[("cookie", "sid=AbCdEf ")]).await;
    assert_eq!(again.text(), "for sid=AbCdEf");
    assert_eq!(o.hits(), 2);
}

// ---------------------------------------------------------------------------------------
// 9. Trailing-dot hosts

#[tokio::test]
async fn sec9_trailing_dot_host_is_not_served_the_entry_of_the_host_without() {
    // Through a parent, so that cuttle resolves nothing: the parent answers with the host it
    // was asked for, which is the host the connection is for.
    let parent = Origin::start(|req| {
        let host = req.uri().host().unwrap_or_default().to_string();
        async move { reply(200, &[("cache-control", "max-age=600")], host) }
    })
    .await;
    let p = Px::start(Options {
        cache_peer: Some(parent.addr.to_string().into()),
        ..opts()
    })
    .await;
    let get = |host: &str| {
        format!(
            "GET http://{host}:8080/k HTTP/1.1\r\nHost: {host}:8080\r\nConnection: close\r\n\r\n"
        )
    };
    let (head, body) = exchange(p.p.addr, &get("localhost")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "localhost");
    p.p.log_with("TCP_MISS").await;
    let (head, body) = exchange(p.p.addr, &get("LocalHost.")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        body.to_ascii_lowercase(),
        "localhost.",
        "served the entry of another host"
    );
    assert_eq!(parent.hits(), 2);
    // And the dotted host has its own entry.
    let (_, body) = exchange(p.p.addr, &get("localhost.")).await;
    assert_eq!(body.to_ascii_lowercase(), "localhost.");
    assert_eq!(parent.hits(), 2);
}

// ---------------------------------------------------------------------------------------
// 10. Ranges

#[tokio::test]
async fn sec10_overlapping_ranges_do_not_multiply_the_response() {
    const LEN: usize = 256 * 1024;
    let o = Origin::start(|_req| async {
        reply(200, &[("cache-control", "max-age=600")], vec![b'x'; LEN])
    })
    .await;
    let p = Px::start(opts()).await;
    let url = o.url("/big");
    assert_eq!(p.get(&url).await.body.len(), LEN);
    let many = format!("bytes={}", vec!["0-"; 16].join(","));
    let g = p.get_with(&url, &[("range", &many)]).await;
    assert!(g.status == 206 || g.status == 200, "{}", g.status);
    assert!(
        g.body.len() <= LEN + 1024,
        "{} bytes for a {LEN}-byte object",
        g.body.len()
    );
    // Overlapping ranges are one range.
    let g = p
        .get_with(&url, &[("range", "bytes=0-99,50-149,100-199")])
        .await;
    assert_eq!(g.status, 206);
    assert_eq!(g.headers["content-range"], format!("bytes 0-199/{LEN}"));
    assert_eq!(g.body.len(), 200);
    // Too many ranges: the whole object, once.
    let lots = (0..40)
        .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
        .collect::<Vec<_>>()
        .join(",");
    let g = p
        .get_with(&url, &[("range", &format!("bytes={lots}"))])
        .await;
    assert_eq!(g.status, 200);
    assert_eq!(g.body.len(), LEN);
    assert_eq!(o.hits(), 1);
}

#[tokio::test]
async fn sec10_suffix_range_on_an_empty_body_is_answered() {
    let o =
        Origin::start(|_req| async { reply(200, &[("cache-control", "max-age=600")], "") }).await;
    let p = Px::start(opts()).await;
    let url = o.url("/empty");
    assert_eq!(p.get(&url).await.status, 200);
    let g = p.get_with(&url, &[("range", "bytes=-5")]).await;
    assert_eq!(g.status, 200);
    assert!(g.body.is_empty());
    assert!(!g.headers.contains_key("content-range"), "{:?}", g.headers);
    let g = p.get_with(&url, &[("range", "bytes=0-")]).await;
    assert_eq!(g.status, 416);
    assert_eq!(g.headers["content-range"], "bytes */0");
    assert_eq!(o.hits(), 1);
}

// ---------------------------------------------------------------------------------------
// 15. Concurrent requests for a stale entry when the upstream is cut

#[tokio::test]
async fn sec15_every_request_for_a_stale_entry_is_served_stale_when_the_upstream_is_cut() {
    const N: usize = 8;
    let o = RawOrigin::start(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=0\r\nETag: \"p1\"\r\nContent-Type: application/json\r\nContent-Length: 9\r\nConnection: close\r\n\r\npackument",
    )
    .await;
    let p = Px::start(opts()).await;
    let url = o.url("/left-pad");
    assert_eq!(p.get(&url).await.text(), "packument");
    o.set(Mode::Hold);
    let cache = p.cache();
    let mut tasks = Vec::new();
    for _ in 0..N {
        let (c, u) = (p.c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            fetch(&c, http::Method::GET, &u, &[]).await
        }));
    }
    // One request revalidates (its connection is held); the others wait for it.
    wait_for("one revalidation and the others waiting for it", || {
        o.held() == 1 && cache.stats.coalesced.load(Ordering::SeqCst) >= (N - 1) as u64
    })
    .await;
    o.set(Mode::Cut);
    o.cut_held();
    for t in tasks {
        let g = t.await.unwrap();
        assert_eq!(g.status, 200, "{}", g.text());
        assert_eq!(g.text(), "packument");
    }
    assert_eq!(o.served.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------
// 16. RFC 9111 details

async fn origin_hits_after_two_gets(headers: &'static [(&'static str, &'static str)]) -> usize {
    let o = Origin::start(move |_req| async move { reply(200, headers, "body") }).await;
    let p = Px::start(opts()).await;
    p.get(&o.url("/x")).await;
    p.get(&o.url("/x")).await;
    o.hits()
}

#[tokio::test]
async fn sec16_an_age_list_is_read_by_its_first_member() {
    // RFC 9111 §5.1: "a cache encountering a message with a list-based Age field value SHOULD
    // use the first member": 7200 s old with 3600 s of freshness is stale.
    let hits =
        origin_hits_after_two_gets(&[("cache-control", "max-age=3600"), ("age", "7200, 0")]).await;
    assert_eq!(hits, 2);
    // An invalid Age is ignored (control: fresh).
    let hits =
        origin_hits_after_two_gets(&[("cache-control", "max-age=3600"), ("age", "soon")]).await;
    assert_eq!(hits, 1);
}

#[tokio::test]
async fn sec16_cache_control_directive_names_are_case_insensitive() {
    for cc in [
        "max-age=600, No-Cache",
        "No-Store, max-age=600",
        "Private, max-age=600",
    ] {
        let leaked: &'static str = Box::leak(cc.to_string().into_boxed_str());
        let hits =
            origin_hits_after_two_gets(Box::leak(Box::new([("cache-control", leaked)]))).await;
        assert_eq!(hits, 2, "{cc}");
    }
    // A request directive too.
    let o =
        Origin::start(|_req| async { reply(200, &[("cache-control", "max-age=600")], "x") }).await;
    let p = Px::start(opts()).await;
    p.get(&o.url("/r")).await;
    p.get_with(&o.url("/r"), &[("cache-control", "No-Cache")])
        .await;
    assert_eq!(o.hits(), 2, "request No-Cache");
}

#[tokio::test]
async fn sec16_a_cached_response_keeps_the_origin_date() {
    let date = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(30));
    let d: &'static str = Box::leak(date.clone().into_boxed_str());
    let o = Origin::start(move |_req| async move {
        reply(
            200,
            &[("cache-control", "max-age=600"), ("date", d)],
            "dated",
        )
    })
    .await;
    let p = Px::start(opts()).await;
    p.get(&o.url("/d")).await;
    let g = p.get(&o.url("/d")).await;
    assert_eq!(o.hits(), 1);
    assert_eq!(g.headers["date"], date.as_str());
    let age: u64 = g.headers["age"].to_str().unwrap().parse().unwrap();
    assert!(age < 600, "{age}");
}

#[tokio::test]
async fn sec16_error_statuses_with_explicit_freshness_are_stored() {
    for status in [400u16, 404, 410, 500, 502, 503, 504] {
        let o = Origin::start(move |_req| async move {
            reply(
                status,
                &[("cache-control", "max-age=600")],
                format!("s{status}"),
            )
        })
        .await;
        let p = Px::start(opts()).await;
        for _ in 0..2 {
            let g = p.get(&o.url("/e")).await;
            assert_eq!(g.status, status);
            assert_eq!(g.text(), format!("s{status}"));
        }
        assert_eq!(o.hits(), 1, "{status} with max-age was not stored");
    }
    // Without explicit freshness a 503 is not stored.
    let o = Origin::start(|_req| async { reply(503, &[], "busy") }).await;
    let p = Px::start(opts()).await;
    p.get(&o.url("/e")).await;
    p.get(&o.url("/e")).await;
    assert_eq!(o.hits(), 2);
}

#[tokio::test]
async fn sec16_early_hints_are_not_stored_and_the_final_response_is() {
    // hyper's client reads past 1xx interim responses, and hyper's server cannot send them:
    // the client gets the final response only, and the cache stores that.
    let o = RawOrigin::start(
        b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfinal",
    )
    .await;
    let p = Px::start(opts()).await;
    for _ in 0..2 {
        let g = p.get(&o.url("/hints")).await;
        assert_eq!(g.status, 200);
        assert_eq!(g.text(), "final");
    }
    assert_eq!(o.served.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn sec16_early_hints_on_the_wire_a_raw_client_gets_the_final_response_then_a_hit() {
    // What a client sees byte for byte (an HTTP client library would hide a 1xx): the first
    // answer starts with the 200 (hyper's client consumes the 103 and its server cannot send
    // one), and the second is a cache hit of that 200, never a stored 103.
    let o = RawOrigin::start(
        b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfinal",
    )
    .await;
    let p = Px::start(opts()).await;
    let url = o.url("/wire");
    let request = format!("GET {url} HTTP/1.1\r\nHost: {}\r\n\r\n", o.addr);
    let (head, body) = exchange(p.p.addr, &request).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(!head.to_ascii_lowercase().contains("link:"), "{head}");
    assert_eq!(body, "final");
    let cache = p.cache();
    wait_for("the fill to finish", || {
        cache.stats.stored.load(Ordering::SeqCst) == 1
    })
    .await;
    let (head, body) = exchange(p.p.addr, &request).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(!head.to_ascii_lowercase().contains("link:"), "{head}");
    let status = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("cache-status:"))
        .unwrap_or_default();
    assert!(status.contains("cuttle; hit"), "{head}");
    assert_eq!(body, "final");
    assert_eq!(o.served.load(Ordering::SeqCst), 1);
}

//! Waiting for the cache: polls with a deadline, and the wait for cache fills to finish
//! (a finished fill has committed its entry, so what follows sees it). Also [`Px`], a proxy
//! with its client that waits for the fill a response started before returning.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cuttle::config::Options;
use http::{HeaderMap, Method};

use super::TestProxy;

/// Polls `cond` every 5 ms for up to `secs` seconds; fails naming `what` after that.
pub async fn until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// [`until`] with a 10 s bound.
pub async fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    until(10, what, cond).await
}

impl TestProxy {
    /// The proxy's cache (the test asked for one).
    pub fn cache(&self) -> Arc<cuttle::cache::Cache> {
        self.proxy().state().cache.clone().expect("cache enabled")
    }

    /// Fills that have finished, committed or given up.
    pub fn finished_fills(&self) -> u64 {
        let s = &self.cache().stats;
        s.stored.load(Ordering::SeqCst) + s.not_stored.load(Ordering::SeqCst)
    }

    /// Waits (up to 20 s) until `n` fills have finished in all.
    pub async fn settled(&self, n: u64) {
        let cache = self.cache();
        until(20, &format!("{n} finished fills"), || {
            let s = &cache.stats;
            s.stored.load(Ordering::SeqCst) + s.not_stored.load(Ordering::SeqCst) >= n
        })
        .await;
    }

    /// Waits (up to 20 s) until the cache has stored `n` entries in all.
    pub async fn stored_at_least(&self, n: u64) {
        let cache = self.cache();
        until(20, &format!("{n} stored entries"), || {
            cache.stats.stored.load(Ordering::SeqCst) >= n
        })
        .await;
    }
}

/// A response read whole.
pub struct Got {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The field `name`; fails when it is absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.headers))
    }
}

/// One request through `c`, read whole.
pub async fn fetch(
    c: &reqwest::Client,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Got {
    let mut rb = c.request(method, url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.unwrap();
    Got {
        status,
        headers,
        body,
    }
}

/// A proxy and a client using it.
pub struct Px {
    pub p: TestProxy,
    pub c: reqwest::Client,
}

impl std::ops::Deref for Px {
    type Target = TestProxy;
    fn deref(&self) -> &TestProxy {
        &self.p
    }
}

impl Px {
    pub async fn start(o: Options) -> Px {
        let p = TestProxy::start(o).await;
        let c = p.client();
        Px { p, c }
    }

    /// Sends a request; when the answer started a cache fill, waits for the fill to finish,
    /// so the next request is a plain lookup whatever the timing of the entry's commit.
    pub async fn send(&self, method: Method, url: &str, headers: &[(&str, &str)]) -> Got {
        let before = self.finished_fills();
        let g = fetch(&self.c, method, url, headers).await;
        let filled = g
            .headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("stored"));
        if filled {
            self.settled(before + 1).await;
        }
        g
    }

    pub async fn get(&self, url: &str) -> Got {
        self.send(Method::GET, url, &[]).await
    }

    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> Got {
        self.send(Method::GET, url, headers).await
    }
}

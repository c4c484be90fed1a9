//! The admin port (default 127.0.0.1:9128, separate from the proxy port): health probes
//! (`/healthz`, `/readyz`, never in the access log), Prometheus metrics (`/metrics`), the
//! live status page (`/`) and its JSON (`/api/stats`), cache figures and purge
//! (`/api/cache`, `/api/purge?url=`), and configuration reload (`/api/reload`). With an admin
//! token, everything but the probes needs `Authorization: Bearer <token>`.

pub mod client;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::reload::Reloader;
use crate::http::body::{Body, full};
use crate::state::State;

const STATUS_PAGE: &str = include_str!("status.html");

/// What the admin handlers share.
pub struct Admin {
    pub state: Arc<State>,
    pub token: Option<String>,
    pub reloader: Option<Reloader>,
    started: Instant,
    started_at: u64,
    heartbeat: Arc<AtomicU64>,
}

impl Admin {
    pub fn new(state: Arc<State>, token: Option<String>, reloader: Option<Reloader>) -> Arc<Admin> {
        let heartbeat = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let hb = heartbeat.clone();
        // The probe's "event loop responsive": a task that must keep running.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                hb.store(started.elapsed().as_secs(), Ordering::Relaxed);
            }
        });
        Arc::new(Admin {
            state,
            token,
            reloader,
            started,
            started_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            heartbeat,
        })
    }

    /// Re-reads and applies the configuration; the old one stays when the new one is invalid.
    pub fn reload(&self) -> Result<(), Vec<String>> {
        let Some(reloader) = &self.reloader else {
            return Err(vec!["no configuration source to reload from".into()]);
        };
        match reloader.load(self.state.issuer.as_deref()) {
            Ok(cfg) => {
                self.state.reload(&cfg);
                tracing::info!(
                    "configuration reloaded (access rules, users, parents, cache rules)"
                );
                Ok(())
            }
            Err(problems) => {
                for p in &problems {
                    tracing::warn!(problem = %p, "reload rejected; keeping the running configuration");
                }
                Err(problems)
            }
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()))
    }

    /// Why the proxy is not ready, if it is not.
    fn not_ready(&self) -> Option<&'static str> {
        // Listeners are bound and the configuration valid once the proxy runs; the cache
        // serves while its index is rebuilt (lookups read entry directories directly), so
        // only draining makes the proxy unready.
        if self.state.shutdown.is_cancelled() {
            Some("draining: shutting down")
        } else {
            None
        }
    }

    fn stats_json(&self) -> serde_json::Value {
        let snap = self.state.stats.snapshot();
        let current = self.state.snapshot();
        let parents: Vec<serde_json::Value> = current
            .upstream
            .peers()
            .iter()
            .map(|p| json!({"name": p.name, "up": p.is_up(), "down_for_seconds": p.down_for().as_secs(), "retry_in_seconds": p.down_remaining().as_secs()}))
            .collect();
        let cache = match &self.state.cache {
            None => json!({"enabled": false}),
            Some(c) => {
                let u = c.usage();
                json!({
                    "enabled": true,
                    "memory": {"objects": u.mem_objects, "bytes": u.mem_bytes, "capacity": u.mem_capacity, "evictions": u.mem_evictions},
                    "disk": {"enabled": c.has_disk(), "objects": u.disk_objects, "bytes": u.disk_bytes, "capacity": u.disk_capacity, "evictions": u.disk_evictions},
                    "coalesced": c.stats.coalesced.load(Ordering::Relaxed),
                    "stale_served": c.stats.stale_served.load(Ordering::Relaxed),
                })
            }
        };
        let mirrors: Vec<serde_json::Value> = self
            .state
            .mirrors
            .list
            .iter()
            .map(|m| {
                use crate::mirror::MirrorStats as S;
                let st = &m.stats;
                json!({
                    "name": m.settings.name,
                    "kind": m.settings.kind.as_str(),
                    "upstream": m.settings.upstream,
                    "requests": S::get(&st.requests),
                    "hits": S::get(&st.hits),
                    "bytes_saved": S::get(&st.bytes_saved),
                    "upstream_errors": S::get(&st.upstream_errors),
                    "rewrite_errors": S::get(&st.rewrite_errors),
                })
            })
            .collect();
        json!({
            "mirrors": mirrors,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "started_at": self.started_at,
            "ready": self.not_ready().is_none(),
            "draining": self.state.shutdown.is_cancelled(),
            "requests_total": snap.requests_total,
            "requests_per_second": snap.requests_per_second,
            "hit_ratio_hour": snap.hit_ratio_hour,
            "bytes_served_total": snap.bytes_served_total,
            "bytes_from_cache_total": snap.bytes_from_cache_total,
            "bytes_saved_hour": snap.bytes_saved_hour,
            "connections_active": self.state.metrics.connections_open(),
            "tunnels_active": self.state.metrics.tunnels_open(),
            "history": snap.history,
            "recent": snap.recent,
            "cache": cache,
            "top_hosts_by_bytes": snap.top_hosts_by_bytes,
            "top_hosts_by_requests": snap.top_hosts_by_requests,
            "parents": parents,
            "results": snap.results,
            "errors": snap.errors,
        })
    }

    async fn handle(self: Arc<Admin>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        match (&method, path.as_str()) {
            (&Method::GET, "/healthz") => {
                let age = self
                    .started
                    .elapsed()
                    .as_secs()
                    .saturating_sub(self.heartbeat.load(Ordering::Relaxed));
                if age <= 5 {
                    text(StatusCode::OK, "ok\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("event loop stalled for {age}s\n"),
                    )
                }
            }
            (&Method::GET, "/readyz") => match self.not_ready() {
                None => text(StatusCode::OK, "ready\n"),
                Some(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {why}\n"),
                ),
            },
            // The page itself is static and holds no data: a browser cannot send a bearer
            // token when it opens it, so it loads freely and asks for the token (the API it
            // calls stays guarded).
            _ if !self.authorized(&req) && !is_public_page(&method, &path) => {
                let mut r = text(
                    StatusCode::UNAUTHORIZED,
                    "admin token required (Authorization: Bearer <token>)\n",
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"cuttle admin\""),
                );
                r
            }
            (&Method::GET, "/") | (&Method::GET, "/index.html") => {
                let mut r = Response::new(full(STATUS_PAGE));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            (&Method::GET, "/metrics") => {
                let current = self.state.snapshot();
                let body = self.state.metrics.render(
                    self.state.cache.as_deref(),
                    current.upstream.peers(),
                    &self.state.mirrors,
                    self.state.log.dropped(),
                );
                let mut r = Response::new(full(body));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            (&Method::GET, "/ca.pem") => match &self.state.issuer {
                Some(i) => {
                    let mut r = Response::new(full(i.ca().cert_pem.clone()));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/x-pem-file"),
                    );
                    r
                }
                None => text(StatusCode::NOT_FOUND, "interception is off: no CA\n"),
            },
            (&Method::GET, "/api/stats") => json_response(StatusCode::OK, &self.stats_json()),
            (&Method::GET, "/api/cache") => match &self.state.cache {
                None => json_response(StatusCode::OK, &json!({"enabled": false})),
                Some(c) => {
                    let u = c.usage();
                    json_response(
                        StatusCode::OK,
                        &json!({
                            "enabled": true,
                            "ready": c.is_ready(),
                            "usage": u,
                            "hits_memory": c.stats.mem_hits.load(Ordering::Relaxed),
                            "hits_disk": c.stats.disk_hits.load(Ordering::Relaxed),
                            "misses": c.stats.misses.load(Ordering::Relaxed),
                            "revalidated": c.stats.revalidated.load(Ordering::Relaxed),
                            "stale_served": c.stats.stale_served.load(Ordering::Relaxed),
                            "coalesced": c.stats.coalesced.load(Ordering::Relaxed),
                            "stored": c.stats.stored.load(Ordering::Relaxed),
                            "not_stored": c.stats.not_stored.load(Ordering::Relaxed),
                            "rules": c.rules().len(),
                        }),
                    )
                }
            },
            (&Method::POST, "/api/purge") => {
                let query = req.uri().query().map(str::to_string);
                if let Err(r) = read_small_body(req).await {
                    return r;
                }
                self.purge(query.as_deref()).await
            }
            (&Method::POST, "/api/reload") => {
                if let Err(r) = read_small_body(req).await {
                    return r;
                }
                match self.reload() {
                    Ok(()) => json_response(StatusCode::OK, &json!({"reloaded": true})),
                    Err(problems) => json_response(
                        StatusCode::BAD_REQUEST,
                        &json!({"reloaded": false, "problems": problems}),
                    ),
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    async fn purge(&self, query: Option<&str>) -> Response<Body> {
        let Some(cache) = &self.state.cache else {
            return text(StatusCode::CONFLICT, "the cache is off\n");
        };
        let url = query.and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "url")
                .map(|(_, v)| {
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned()
                })
        });
        let Some(url) = url else {
            return text(
                StatusCode::BAD_REQUEST,
                "usage: POST /api/purge?url=<absolute http URL>\n",
            );
        };
        let Ok(uri) = url.parse::<http::Uri>() else {
            return text(StatusCode::BAD_REQUEST, "not a URL\n");
        };
        let target = match crate::http::target::absolute(&uri) {
            Ok(t) => t,
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
        };
        let key = crate::cache::key::PrimaryKey::for_uri(&uri, &target);
        let found = cache.invalidate(&key).await;
        tracing::info!(url = %key, found, "purge from the admin port");
        json_response(
            if found {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            },
            &json!({"url": key.url(), "purged": found}),
        )
    }
}

/// What the admin port serves without the token: the static status page (it fetches its
/// figures from the API with the token) and the CA certificate.
fn is_public_page(method: &Method, path: &str) -> bool {
    // The CA certificate is public by nature: clients fetch it to trust cuttle.
    *method == Method::GET && matches!(path, "/" | "/index.html" | "/ca.pem")
}

/// The largest request body the admin API reads. Its requests carry their arguments in the
/// URL; a body is read (and dropped) only so the connection can be reused.
pub const MAX_ADMIN_BODY: usize = 4096;

/// Reads and drops a request body of at most [`MAX_ADMIN_BODY`] bytes; a larger one gets 413
/// (at once when `Content-Length` says so) and is not read further.
async fn read_small_body(req: Request<Incoming>) -> Result<(), Response<Body>> {
    let too_large = || {
        let mut r = text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("admin requests take no body (at most {MAX_ADMIN_BODY} bytes)\n"),
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    };
    let declared = crate::http::headers::content_length(req.headers());
    if declared.is_some_and(|n| n > MAX_ADMIN_BODY as u64) {
        return Err(too_large());
    }
    match http_body_util::Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(text(StatusCode::BAD_REQUEST, "could not read the body\n")),
    }
}

/// The credentials of `Authorization: Bearer <token>`. RFC 9110 §11.1: "It uses a
/// case-insensitive token to identify the authentication scheme", so `bearer` and `BEARER`
/// are the same scheme; the token itself is compared exactly.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::copy_from_slice(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

const OWN_ADDRESS: &[u8] = b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n\
X-Cuttle-Error: ERR_ACCESS_DENIED\r\nConnection: close\r\nContent-Length: 96\r\n\r\n\
ERR_ACCESS_DENIED: connection from this proxy's own address to its admin port (forwarding loop)\n";

async fn refuse_own(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(OWN_ADDRESS).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Serves the admin port until `stop` fires.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // The proxy itself, sent here by a client through the pod address or a Service that
        // keeps the source address: the admin API is not for proxy clients.
        if let Ok(local) = stream.local_addr()
            && crate::access::ip_guard::is_self_connection(peer, local)
        {
            tracing::warn!(client = %peer, "admin connection from this proxy's own address refused (a proxy client aimed at the admin port)");
            tokio::spawn(refuse_own(stream));
            continue;
        }
        let admin = admin.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }
}

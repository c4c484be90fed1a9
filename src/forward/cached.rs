//! The cache-aware path of `forward::handle` for GET and HEAD: look the URL up, answer fresh
//! entries from the cache, revalidate stale ones (or serve them while revalidating in the
//! background, or when the origin fails), and on a miss fetch once per URL while every
//! concurrent client reads the same fill as it streams.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, Uri};
use hyper::body::Incoming;

use super::exchange::{self, Outgoing, respond, send};
use crate::cache::fill::{Fill, FillState};
use crate::cache::key::{PrimaryKey, Variant};
use crate::cache::lock::{Acquired, Outcome, Permit};
use crate::cache::meta::Meta;
use crate::cache::policy::{
    Freshness, StoredPolicy, per_client_fields, request_view, strip_per_client,
};
use crate::cache::rules::Rule;
use crate::cache::serve::{self, Source};
use crate::cache::shared::lease::{self, Lease};
use crate::cache::shared::{Found, Lookup, Shared, Upload};
use crate::cache::{Cache, Stored};
use crate::error::ProxyError;
use crate::http::body::{Body, BodyEnd, CountingBody, IdleTimeoutBody, empty};
use crate::http::headers::{append_via, content_length, strip_hop_by_hop};
use crate::http::target::Target;
use crate::state::Scope;
use crate::telemetry::record::{AccessRecord, Hierarchy, ResultCode};

/// Client fields that must not reach the origin on a fetch meant for the cache: the cache
/// answers conditionals and ranges itself from the full response.
const CLIENT_ONLY: [header::HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_RANGE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::RANGE,
];

/// Everything one cached request needs to carry around.
struct Ctx<'a> {
    scope: &'a Scope,
    cache: &'a Arc<Cache>,
    target: &'a Target,
    out: &'a Outgoing,
    primary: PrimaryKey,
    rule: Option<Rule>,
    /// The request as the policy sees it (normalised URI, Host): made when first needed.
    view: std::sync::OnceLock<http::request::Parts>,
}

fn cc_has(h: &HeaderMap, directive: &str) -> bool {
    h.get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case(directive))
}

pub(super) async fn handle(
    scope: &Scope,
    cache: &Arc<Cache>,
    target: &Target,
    out: &Outgoing,
    rec: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    let rule = |p: &PrimaryKey| cache.rules().classify(p.url()).cloned();
    handle_ruled(scope, cache, target, out, rule, rec).await
}

/// [`handle`] with the artifact rule chosen by the caller (a mirror route knows what its
/// URLs are better than the host-based patterns of the built-in rules).
pub async fn handle_with_rule(
    scope: &Scope,
    cache: &Arc<Cache>,
    target: &Target,
    out: &Outgoing,
    rule: Option<Rule>,
    rec: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    handle_ruled(scope, cache, target, out, move |_| rule, rec).await
}

/// Looks the request up; a plain hit is served at once ([`plain_hit`]), anything else goes
/// the full way with the artifact rule `rule` gives for the key (asked only then).
async fn handle_ruled(
    scope: &Scope,
    cache: &Arc<Cache>,
    target: &Target,
    out: &Outgoing,
    rule: impl FnOnce(&PrimaryKey) -> Option<Rule>,
    rec: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    let primary = PrimaryKey::for_uri(&out.uri, target);
    let stored = cache.lookup(&primary, &out.headers).await;
    if let Some(resp) = plain_hit(scope, cache, out, stored.as_ref(), rec) {
        return Ok(resp);
    }
    let rule = rule(&primary);
    handle_keyed(scope, cache, target, out, primary, rule, stored, rec).await
}

/// The hit path's shortcut: a plain GET (no `Cache-Control` or `Pragma` of its own) for an
/// entry whose fresh answer to such a request is known for its current age
/// ([`StoredPolicy::fresh_for_plain_get`]) is served without building the policy's view of
/// the request or asking the policy again. Anything else takes the full path.
fn plain_hit(
    scope: &Scope,
    cache: &Cache,
    out: &Outgoing,
    stored: Option<&Stored>,
    rec: &mut AccessRecord,
) -> Option<Response<Body>> {
    let stored = stored?;
    if out.method != Method::GET || !crate::cache::policy::is_plain(&out.headers) {
        return None;
    }
    let headers = stored
        .meta()
        .policy
        .fresh_for_plain_get(SystemTime::now())?;
    Some(serve_fresh(scope, cache, out, stored, headers, rec))
}

/// A fresh hit: counted, and served from `stored` with `headers`.
fn serve_fresh(
    scope: &Scope,
    cache: &Cache,
    out: &Outgoing,
    stored: &Stored,
    headers: HeaderMap,
    rec: &mut AccessRecord,
) -> Response<Body> {
    let (code, counter) = if stored.is_memory() {
        (ResultCode::TcpMemHit, &cache.stats.mem_hits)
    } else {
        (ResultCode::TcpHit, &cache.stats.disk_hits)
    };
    counter.fetch_add(1, Ordering::Relaxed);
    serve_from(scope, out, stored, headers, code, "hit", rec)
}

/// The request as the policy sees it: the normalised URL of `primary` (and its authority as
/// `Host`), without the client's own conditionals and `Range`, which the cache answers
/// itself from the stored response and which must not leak into the revalidation request
/// the policy builds.
fn policy_view(
    out: &Outgoing,
    target: &Target,
    primary: &PrimaryKey,
    rule: Option<&Rule>,
) -> http::request::Parts {
    let view_uri: Uri = primary.url().parse().unwrap_or_else(|_| out.uri.clone());
    let authority = view_uri
        .authority()
        .map_or_else(|| target.authority(), |a| a.to_string());
    let mut policy_headers = out.headers.clone();
    for h in CLIENT_ONLY {
        policy_headers.remove(h);
    }
    request_view(&Method::GET, &view_uri, &authority, &policy_headers, rule)
}

#[allow(clippy::too_many_arguments)]
async fn handle_keyed(
    scope: &Scope,
    cache: &Arc<Cache>,
    target: &Target,
    out: &Outgoing,
    primary: PrimaryKey,
    rule: Option<Rule>,
    stored: Option<Stored>,
    rec: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    let c = Ctx {
        scope,
        cache,
        target,
        out,
        primary,
        rule,
        view: std::sync::OnceLock::new(),
    };
    let now = SystemTime::now();
    let only_if_cached = cc_has(&out.headers, "only-if-cached");

    if let Some(stored) = stored {
        match stored.meta().policy.lookup(c.view(), now) {
            Freshness::Fresh(headers) => {
                return Ok(serve_fresh(scope, cache, out, &stored, headers, rec));
            }
            Freshness::Stale(reval) => {
                if only_if_cached {
                    return Err(ProxyError::NotCached);
                }
                let policy = &stored.meta().policy;
                if policy.may_serve_while_revalidating(c.view(), now) {
                    c.revalidate_in_background(stored.meta().clone(), reval);
                    cache
                        .stats
                        .stale_served
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let h = policy.stale_headers(&stored.meta().headers, now);
                    return Ok(c.serve_stored(
                        &stored,
                        h,
                        ResultCode::TcpStaleHit,
                        "hit; fwd=stale; detail=stale-while-revalidate",
                        rec,
                    ));
                }
                return c.revalidate(stored, reval, rec).await;
            }
        }
    }
    if only_if_cached {
        return Err(ProxyError::NotCached);
    }
    if out.method == Method::HEAD {
        // A HEAD cannot fill the cache; ask the origin.
        return c.pass(out, rec).await;
    }
    cache
        .stats
        .misses
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    c.miss(rec).await
}

impl Ctx<'_> {
    fn view(&self) -> &http::request::Parts {
        self.view
            .get_or_init(|| policy_view(self.out, self.target, &self.primary, self.rule.as_ref()))
    }

    /// The rule a response with `status` is stored under (the negative rule for 404/410).
    fn rule_for(&self, status: StatusCode) -> Option<Rule> {
        self.cache.rules().for_status(self.rule.as_ref(), status)
    }

    fn serve_on_error(&self, stored: &Stored) -> bool {
        stored.meta().policy.may_serve_on_error(
            self.view(),
            SystemTime::now(),
            self.cache.settings.serve_stale_on_error,
        )
    }

    /// Revalidates a stale entry (one request per URL; others wait for the outcome).
    async fn revalidate(
        &self,
        stored: Stored,
        reval: HeaderMap,
        rec: &mut AccessRecord,
    ) -> Result<Response<Body>, ProxyError> {
        let permit = match self.cache.locks.acquire(self.primary.hex()) {
            Acquired::Leader(p) => p,
            Acquired::Follower(f) => return self.follow(f, rec).await,
        };
        let req = Outgoing {
            method: Method::GET,
            uri: self.out.uri.clone(),
            headers: {
                let mut h = reval;
                h.remove(header::HOST);
                h
            },
        };
        let now = SystemTime::now();
        // Without validators this is an unconditional refetch: a miss, not a refresh.
        let conditional = req.headers.contains_key(header::IF_NONE_MATCH)
            || req.headers.contains_key(header::IF_MODIFIED_SINCE);
        let modified = if conditional {
            ResultCode::TcpRefreshModified
        } else {
            ResultCode::TcpMiss
        };
        self.cache
            .stats
            .revalidated
            .fetch_add(conditional as u64, std::sync::atomic::Ordering::Relaxed);
        match send(self.scope, self.target, &req, empty(), rec).await {
            Ok(resp) if resp.status() == StatusCode::NOT_MODIFIED => {
                let merged = stored.meta().policy.after_not_modified(
                    self.view(),
                    stored.meta().status(),
                    &stored.meta().headers,
                    resp.headers(),
                    now,
                    self.rule_for(stored.meta().status()).as_ref(),
                );
                match merged {
                    Some((policy, status, headers)) => {
                        note_hop(&resp, rec);
                        let meta = Arc::new(refreshed(stored.meta(), status, headers, policy));
                        self.cache.refresh(meta.clone());
                        drop(permit);
                        let stored = stored.with_meta(meta.clone());
                        let mut h = match meta.policy.lookup(self.view(), SystemTime::now()) {
                            Freshness::Fresh(h) => h,
                            Freshness::Stale(_) => {
                                meta.policy.stale_headers(&meta.headers, SystemTime::now())
                            }
                        };
                        // The 304's own cookie is for this client (and never stored).
                        for (n, v) in per_client_fields(resp.headers()) {
                            h.append(n, v);
                        }
                        Ok(self.serve_stored(
                            &stored,
                            h,
                            ResultCode::TcpRefreshUnmodified,
                            "hit; fwd=stale; fwd-status=304",
                            rec,
                        ))
                    }
                    // The origin's 304 names another representation: fetch it whole.
                    None => {
                        drop(resp);
                        self.fetch_and_store(permit, false, Upload::Replace, None, rec)
                            .await
                    }
                }
            }
            Ok(resp) if resp.status().is_server_error() && self.serve_on_error(&stored) => {
                let status = resp.status().as_u16();
                drop(resp);
                // Requests waiting for this revalidation are served stale too, where allowed.
                permit.resolve(Outcome::Failed);
                Ok(self.serve_stale(&stored, &format!("origin answered {status}"), rec))
            }
            Ok(resp) if denied(resp.status()) => {
                // The stored response is no longer to be served to anyone without asking.
                self.cache.invalidate(&self.primary).await;
                self.store_or_pass(resp, permit, modified, Upload::Replace, None, rec)
                    .await
            }
            Ok(resp) => {
                self.store_or_pass(resp, permit, modified, Upload::Replace, None, rec)
                    .await
            }
            Err(e) => {
                permit.resolve(Outcome::Failed);
                if self.serve_on_error(&stored) {
                    Ok(self.serve_stale(&stored, e.label(), rec))
                } else {
                    Err(e)
                }
            }
        }
    }

    fn serve_stale(&self, stored: &Stored, why: &str, rec: &mut AccessRecord) -> Response<Body> {
        tracing::info!(url = %self.primary, why, "origin unavailable: serving stale from cache");
        self.cache
            .stats
            .stale_served
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let h = stored
            .meta()
            .policy
            .stale_headers(&stored.meta().headers, SystemTime::now());
        self.serve_stored(
            stored,
            h,
            ResultCode::TcpStaleIfError,
            "hit; fwd=stale; detail=stale-if-error",
            rec,
        )
    }

    /// RFC 5861 §3: one background revalidation per URL (skipped when one is running).
    fn revalidate_in_background(&self, old: Arc<Meta>, reval: HeaderMap) {
        let Acquired::Leader(permit) = self.cache.locks.acquire(self.primary.hex()) else {
            return;
        };
        let scope = self.scope.clone();
        let cache = self.cache.clone();
        let target = self.target.clone();
        let view = self.view().clone();
        let rule = self.rule.clone();
        let mut headers = reval;
        headers.remove(header::HOST);
        let req = Outgoing {
            method: Method::GET,
            uri: self.out.uri.clone(),
            headers,
        };
        let rules = Arc::clone(&*self.cache.rules());
        tokio::spawn(async move {
            let mut rec = AccessRecord::new(([0, 0, 0, 0], 0).into(), "GET", String::new());
            let now = SystemTime::now();
            let Ok(resp) = send(&scope, &target, &req, empty(), &mut rec).await else {
                permit.resolve(Outcome::Failed);
                return;
            };
            let primary = PrimaryKey::from_url(old.url.clone());
            if denied(resp.status()) {
                // Left in place, the entry would go on being served stale.
                cache.invalidate(&primary).await;
                return;
            }
            if resp.status() == StatusCode::NOT_MODIFIED {
                if let Some((policy, status, headers)) = old.policy.after_not_modified(
                    &view,
                    old.status(),
                    &old.headers,
                    resp.headers(),
                    now,
                    rules.for_status(rule.as_ref(), old.status()).as_ref(),
                ) {
                    cache.refresh(Arc::new(refreshed(&old, status, headers, policy)));
                }
                drop(permit);
                return;
            }
            let (parts, body) = resp.into_parts();
            let mut headers = parts.headers;
            strip_hop_by_hop(&mut headers, false);
            let variant = variant_for(&headers, &req.headers, rule.as_ref());
            let status_rule = rules.for_status(rule.as_ref(), parts.status);
            let Some(policy) =
                StoredPolicy::new(&view, parts.status, &headers, now, status_rule.as_ref())
            else {
                return;
            };
            if parts.status.is_server_error() || !cache.can_store(content_length(&headers)) {
                return;
            }
            strip_per_client(&mut headers);
            let meta = Arc::new(Meta::new(&primary, variant, parts.status, headers, policy));
            cache.fill(
                meta,
                IdleTimeoutBody::new(body, scope.state.config.timeouts.read),
                permit,
                Upload::Replace,
                None,
            );
        });
    }

    /// A coalesced request: read the leader's fill, or look again once it is done.
    async fn follow(
        &self,
        f: crate::cache::lock::Follower,
        rec: &mut AccessRecord,
    ) -> Result<Response<Body>, ProxyError> {
        self.cache
            .stats
            .coalesced
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outcome = f.wait(self.scope.state.config.timeouts.read).await;
        match outcome {
            // A waiter joins only a fill whose response could be served to it: the same
            // variant, and credentials that may reuse it (RFC 9111 §3.5). A request that
            // arrives once the fill is complete (its entry not yet findable) is a plain reuse,
            // so the response must be fresh for it (RFC 9111 §4.2).
            Outcome::Fill(fill)
                if fill.meta.variant.matches(&self.out.headers)
                    && fill.meta.policy.may_reuse(self.view())
                    && fill.joinable()
                    && (fill.state() == FillState::Receiving
                        || matches!(
                            fill.meta.policy.lookup(self.view(), SystemTime::now()),
                            Freshness::Fresh(_)
                        )) =>
            {
                rec.hierarchy = Hierarchy::none();
                Ok(self.serve_fill(&fill, ResultCode::TcpCfMiss, "fwd=miss; collapsed", rec))
            }
            outcome => {
                let stored = self.cache.lookup(&self.primary, &self.out.headers).await;
                if let Some(stored) = &stored {
                    if let Freshness::Fresh(h) =
                        stored.meta().policy.lookup(self.view(), SystemTime::now())
                    {
                        return Ok(self.serve_stored(
                            stored,
                            h,
                            ResultCode::TcpCfHit,
                            "hit; collapsed",
                            rec,
                        ));
                    }
                    // The revalidation this request waited for failed: it gets what the
                    // request that made it got, where the entry may be served stale to it.
                    if matches!(outcome, Outcome::Failed) && self.serve_on_error(stored) {
                        return Ok(self.serve_stale(stored, "revalidation failed", rec));
                    }
                }
                self.pass_or_stale(stored.as_ref(), rec).await
            }
        }
    }

    /// Forwards the client's request as is; when that fails (no answer, or 5xx) and the
    /// stored entry may be served stale to this client, serves it instead.
    async fn pass_or_stale(
        &self,
        stored: Option<&Stored>,
        rec: &mut AccessRecord,
    ) -> Result<Response<Body>, ProxyError> {
        let Some(stored) = stored else {
            return self.pass(self.out, rec).await;
        };
        match send(self.scope, self.target, self.out, empty(), rec).await {
            Ok(resp) if resp.status().is_server_error() && self.serve_on_error(stored) => {
                let status = resp.status().as_u16();
                drop(resp);
                Ok(self.serve_stale(stored, &format!("origin answered {status}"), rec))
            }
            Ok(resp) => respond(self.scope, resp, None, rec),
            Err(e) if self.serve_on_error(stored) => Ok(self.serve_stale(stored, e.label(), rec)),
            Err(e) => Err(e),
        }
    }

    async fn miss(&self, rec: &mut AccessRecord) -> Result<Response<Body>, ProxyError> {
        let permit = match self.cache.locks.acquire(self.primary.hex()) {
            Acquired::Leader(permit) => permit,
            Acquired::Follower(f) => return self.follow(f, rec).await,
        };
        let (permit, upload, lease) = match self.shared_lookup(permit, rec).await {
            Ok(resp) => return Ok(resp),
            Err(p) => p,
        };
        self.fetch_and_store(permit, true, upload, lease, rec).await
    }

    /// The shared tier's lookup for this request (fresh for it, may be reused by it).
    async fn ask_shared(&self, shared: &Arc<Shared>) -> Lookup {
        let view = self.view();
        let now = SystemTime::now();
        let usable = |m: &Meta| {
            m.policy.may_reuse(view) && matches!(m.policy.lookup(view, now), Freshness::Fresh(_))
        };
        shared
            .lookup(&self.primary, &self.out.headers, usable)
            .await
    }

    /// A local miss asks the shared tier (bounded by its timeout; skipped while its breaker
    /// is open). A usable entry is served while it fills the local tiers; otherwise the
    /// permit comes back with what the upload after the upstream fetch should do, and the
    /// lease taken for that fetch (`--shared-cache-lease`). When another replica holds the
    /// lease, this request waits for its upload instead (bounded by the lease timeout).
    async fn shared_lookup(
        &self,
        permit: Permit,
        rec: &mut AccessRecord,
    ) -> Result<Response<Body>, (Permit, Upload, Option<Lease>)> {
        let Some(shared) = &self.cache.shared else {
            return Err((permit, Upload::New, None));
        };
        let mut upload = match self.ask_shared(shared).await {
            Lookup::Found(found) => return self.serve_shared(found, permit, rec).await,
            Lookup::Replace => Upload::Replace,
            Lookup::Miss => Upload::New,
            Lookup::Skipped => return Err((permit, Upload::New, None)),
        };
        if self.out.headers.contains_key(header::AUTHORIZATION) {
            // Its response never goes to the shared tier (RFC 9111 §3.5): nothing to
            // coalesce on, in either direction.
            return Err((permit, upload, None));
        }
        match shared.try_lease(&self.primary).await {
            lease::Try::Off => return Err((permit, upload, None)),
            lease::Try::Acquired(l) => return Err((permit, upload, Some(l))),
            lease::Try::Held => {}
        }
        // Another replica is fetching it: wait for its upload, polling the store (100 ms,
        // doubling to 1 s). Its lease going stale or away ends the wait: then this replica
        // takes the lease, or fetches without one.
        let stats = &shared.stats;
        stats.lease_waits.fetch_add(1, Ordering::Relaxed);
        let settings = shared.settings();
        let bound = settings.lease.unwrap_or_default() + settings.timeout;
        let deadline = tokio::time::Instant::now() + bound;
        let mut pause = Duration::from_millis(100);
        loop {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
            match self.ask_shared(shared).await {
                Lookup::Found(found) => {
                    stats.lease_wait_hits.fetch_add(1, Ordering::Relaxed);
                    return self.serve_shared(found, permit, rec).await;
                }
                Lookup::Replace => upload = Upload::Replace,
                Lookup::Miss => {}
                Lookup::Skipped => {
                    stats.lease_wait_upstream.fetch_add(1, Ordering::Relaxed);
                    return Err((permit, upload, None));
                }
            }
            match shared.try_lease(&self.primary).await {
                lease::Try::Held if tokio::time::Instant::now() < deadline => {}
                lease::Try::Acquired(l) => {
                    stats.lease_wait_upstream.fetch_add(1, Ordering::Relaxed);
                    return Err((permit, upload, Some(l)));
                }
                lease::Try::Held | lease::Try::Off => {
                    stats.lease_wait_upstream.fetch_add(1, Ordering::Relaxed);
                    return Err((permit, upload, None));
                }
            }
        }
    }

    /// Serves an entry the shared tier found while it fills the local tiers; a body that
    /// cannot be read (or is corrupt) sends the request upstream to replace it.
    async fn serve_shared(
        &self,
        found: Box<Found>,
        permit: Permit,
        rec: &mut AccessRecord,
    ) -> Result<Response<Body>, (Permit, Upload, Option<Lease>)> {
        let meta = found.meta.clone();
        let Some(body) = found.into_body().await else {
            return Err((permit, Upload::Replace, None));
        };
        let now = SystemTime::now();
        let headers = match meta.policy.lookup(self.view(), now) {
            Freshness::Fresh(h) => h,
            Freshness::Stale(_) => meta.policy.stale_headers(&meta.headers, now),
        };
        let fill = self.cache.fill(meta, body, permit, Upload::No, None);
        rec.hierarchy = Hierarchy::none();
        Ok(self.serve_fill_as(
            &fill,
            headers,
            ResultCode::TcpSharedHit,
            "hit; detail=shared",
            rec,
        ))
    }

    /// Fetches the whole object for the cache (client conditionals and Range removed).
    async fn fetch_and_store(
        &self,
        permit: Permit,
        is_miss: bool,
        upload: Upload,
        lease: Option<Lease>,
        rec: &mut AccessRecord,
    ) -> Result<Response<Body>, ProxyError> {
        let mut headers = self.out.headers.clone();
        let wanted_range = headers.contains_key(header::RANGE);
        for h in CLIENT_ONLY {
            headers.remove(h);
        }
        let req = Outgoing {
            method: Method::GET,
            uri: self.out.uri.clone(),
            headers,
        };
        let resp = send(self.scope, self.target, &req, empty(), rec).await?;
        if wanted_range
            && content_length(resp.headers())
                .is_some_and(|n| n > self.cache.settings.range_fetch_limit)
        {
            // Too large to fetch whole for a range: pass the client's own request instead.
            drop(resp);
            drop(permit);
            return self.pass(self.out, rec).await;
        }
        let code = if is_miss {
            ResultCode::TcpMiss
        } else {
            ResultCode::TcpRefreshModified
        };
        self.store_or_pass(resp, permit, code, upload, lease, rec)
            .await
    }

    /// Stores a storable response (and serves it from the fill), or passes it through.
    async fn store_or_pass(
        &self,
        resp: Response<Incoming>,
        permit: Permit,
        code: ResultCode,
        upload: Upload,
        lease: Option<Lease>,
        rec: &mut AccessRecord,
    ) -> Result<Response<Body>, ProxyError> {
        let now = SystemTime::now();
        let mut headers = resp.headers().clone();
        strip_hop_by_hop(&mut headers, false);
        let status = resp.status();
        let policy = (status != StatusCode::PARTIAL_CONTENT && status != StatusCode::NOT_MODIFIED)
            .then(|| {
                let rule = self.rule_for(status);
                StoredPolicy::new(self.view(), status, &headers, now, rule.as_ref())
            })
            .flatten();
        let Some(policy) = policy.filter(|_| self.cache.can_store(content_length(&headers))) else {
            drop(permit);
            return respond(self.scope, resp, None, rec);
        };
        note_hop(&resp, rec);
        let variant = variant_for(&headers, &self.out.headers, self.rule.as_ref());
        // This client gets the response as the origin sent it; the entry (and every request
        // that joins the fill) gets it without the fields meant for this client only.
        let own = headers.clone();
        strip_per_client(&mut headers);
        let meta = Arc::new(Meta::new(&self.primary, variant, status, headers, policy));
        let (_, body) = resp.into_parts();
        let fill = self.cache.fill(
            meta,
            IdleTimeoutBody::new(body, self.scope.state.config.timeouts.read),
            permit,
            upload,
            lease,
        );
        Ok(self.serve_fill_as(&fill, own, code, "fwd=miss; stored", rec))
    }

    /// Forwards the client's request as is, without the cache.
    async fn pass(
        &self,
        out: &Outgoing,
        rec: &mut AccessRecord,
    ) -> Result<Response<Body>, ProxyError> {
        let resp = send(self.scope, self.target, out, empty(), rec).await?;
        respond(self.scope, resp, None, rec)
    }

    fn serve_fill(
        &self,
        fill: &Arc<Fill>,
        code: ResultCode,
        status_entry: &str,
        rec: &mut AccessRecord,
    ) -> Response<Body> {
        self.serve_fill_as(fill, fill.meta.headers.clone(), code, status_entry, rec)
    }

    /// Serves a fill with `headers` (the stored ones, or the origin's for the client whose
    /// request started the fill).
    fn serve_fill_as(
        &self,
        fill: &Arc<Fill>,
        headers: HeaderMap,
        code: ResultCode,
        status_entry: &str,
        rec: &mut AccessRecord,
    ) -> Response<Body> {
        let source = (&*fill.meta, fill as &dyn Source);
        answer(
            self.scope,
            self.out,
            source,
            headers,
            code,
            status_entry,
            rec,
        )
    }

    fn serve_stored(
        &self,
        stored: &Stored,
        headers: HeaderMap,
        code: ResultCode,
        status_entry: &str,
        rec: &mut AccessRecord,
    ) -> Response<Body> {
        serve_from(
            self.scope,
            self.out,
            stored,
            headers,
            code,
            status_entry,
            rec,
        )
    }
}

/// Answers `out` from `stored` with `headers`: no upstream hop, unless it was a refresh.
fn serve_from(
    scope: &Scope,
    out: &Outgoing,
    stored: &Stored,
    headers: HeaderMap,
    code: ResultCode,
    status_entry: &str,
    rec: &mut AccessRecord,
) -> Response<Body> {
    if !code.is_refresh() {
        rec.hierarchy = Hierarchy::none();
    }
    let source = (&**stored.meta(), stored as &dyn Source);
    answer(scope, out, source, headers, code, status_entry, rec)
}

/// Answers `out` from a stored entry or a fill (its metadata and body) with `headers`
/// (conditionals and ranges included), with `Cache-Status` and the access-log record.
fn answer(
    scope: &Scope,
    out: &Outgoing,
    (meta, body): (&Meta, &dyn Source),
    headers: HeaderMap,
    code: ResultCode,
    status_entry: &str,
    rec: &mut AccessRecord,
) -> Response<Body> {
    let resp = serve::answer(&out.method, &out.headers, meta.status(), headers, body);
    let entry = with_rule(status_entry, meta.policy.rule.as_deref());
    finish(scope, resp, code, &entry, rec)
}

/// A `Cache-Status` entry naming the artifact rule that decided the entry's freshness (an
/// extension parameter, RFC 9211 §2: `rule="npm-packument"`, `rule="negative"`).
fn with_rule(entry: &str, rule: Option<&str>) -> String {
    match rule {
        Some(r) => {
            let r: String = r
                .chars()
                .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
                .collect();
            format!("{entry}; rule=\"{r}\"")
        }
        None => entry.to_string(),
    }
}

/// The stored metadata after a 304 merge.
fn refreshed(old: &Meta, status: StatusCode, headers: HeaderMap, policy: StoredPolicy) -> Meta {
    Meta {
        status: status.as_u16(),
        headers,
        policy,
        stored_at: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        ..old.clone()
    }
}

/// RFC 9110 §15.5.2/§15.5.4: the origin now refuses the request the entry would answer.
fn denied(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN
}

fn note_hop(resp: &Response<Incoming>, rec: &mut AccessRecord) {
    if let Some(hop) = resp.extensions().get::<Hierarchy>() {
        rec.hierarchy = hop.clone();
    }
}

/// The variant a response selects: its `Vary` plus the rule's extra key fields.
fn variant_for(resp: &HeaderMap, req: &HeaderMap, rule: Option<&Rule>) -> Variant {
    let mut vary = HeaderMap::new();
    for v in resp.get_all(header::VARY) {
        vary.append(header::VARY, v.clone());
    }
    if let Some(r) = rule {
        for name in &r.vary {
            if let Ok(v) = HeaderValue::from_str(name) {
                vary.append(header::VARY, v);
            }
        }
    }
    Variant::of(&vary, req)
}

/// Adds `Via` and `Cache-Status`, and logs the transaction when the body ends.
fn finish(
    scope: &Scope,
    resp: Response<Body>,
    code: ResultCode,
    status_entry: &str,
    rec: &mut AccessRecord,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    append_via(&mut parts.headers, http::Version::HTTP_11);
    serve::add_cache_status(&mut parts.headers, &format!("cuttle; {status_entry}"));
    rec.result = code;
    rec.status = parts.status.as_u16();
    rec.head_ready();
    rec.content_type = exchange::content_type(&parts.headers);
    let head_len = exchange::head_size(&parts);
    let log = scope.state.log.clone();
    let mut done = rec.clone();
    let expected = content_length(&parts.headers);
    let body = CountingBody::new(body, move |bytes, end| {
        done.bytes = head_len + bytes;
        if end != BodyEnd::Complete {
            done.aborted = true;
        }
        log.write(&done);
    })
    .expecting(expected);
    Response::from_parts(parts, crate::http::body::boxed(body))
}

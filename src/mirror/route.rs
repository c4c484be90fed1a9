//! The mirror route handler: an origin-form request addressed to cuttle itself
//! (`GET /npm/left-pad`) for a configured mirror becomes a request for the upstream URL
//! (`https://registry.example.org/left-pad`) and takes the same way as a forwarded one: the
//! access rules on the destination, the cache (keyed by the upstream URL, so entries are shared
//! with the forward and intercepted paths), coalescing, stale serving, the route (direct or
//! the parents, with the parent's credentials only on the hop to the parent), the access log
//! and the metrics. Several upstreams are tried in order (a 404, a 5xx or no answer moves
//! on). Documents that carry absolute URLs are rewritten on their way to the client, for the
//! host that client used; the cache keeps them as the upstream sent them.
//!
//! What it never does: reach a host that is not a configured upstream (the request path is
//! appended to an upstream base after [`super::upstream_path`] refused every way out of it),
//! forward the client's `Authorization` or `Cookie` (unless the mirror says
//! `forward-credentials`), or pass a write method (unless `allow-write`).

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{Mirror, MirrorStats, public_base, upstream_path};
use crate::cache::Cache;
use crate::cache::key::PrimaryKey;
use crate::cache::rules::Rule;
use crate::error::{ProxyError, chain};
use crate::forward::cached;
use crate::forward::exchange::{Outgoing, respond, send};
use crate::http::body::{Body, BodyEnd, CountingBody, boxed};
use crate::http::headers::{append_via, strip_hop_by_hop};
use crate::http::target::{self, Target};
use crate::state::Scope;
use crate::telemetry::record::{AccessRecord, ResultCode};

pub async fn handle(
    scope: &Scope,
    mirror: Arc<Mirror>,
    rest: String,
    req: Request<Incoming>,
    rec: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    rec.result = ResultCode::TcpMiss;
    let s = &mirror.settings;
    let stats = &mirror.stats;
    MirrorStats::add(&stats.requests, 1);
    let bad = |e: String| ProxyError::ClientBadRequest(format!("mirror {}: {e}", s.name));
    let rel = upstream_path(&rest).map_err(bad)?.to_string();
    let kind_path = format!("/{}", rel.split('?').next().unwrap_or_default());

    let method = req.method().clone();
    let write = !(method == Method::GET || method == Method::HEAD);
    if write && !s.allow_write {
        return Err(ProxyError::MirrorMethod {
            mirror: s.name.clone(),
        });
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let scheme = if scope.conn.secure { "https" } else { "http" };
    let origin = public_base(scheme, &host)
        .ok_or_else(|| bad("the Host header is not a plain host[:port]".into()))?;

    let (parts, body) = req.into_parts();
    if !write && !http_body::Body::is_end_stream(&body) {
        return Err(bad("a GET or HEAD to a mirror has no body".into()));
    }
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers, false);
    headers.remove(header::HOST);
    headers.remove(header::PROXY_AUTHORIZATION);
    if !s.forward_credentials {
        headers.remove(header::AUTHORIZATION);
        headers.remove(header::COOKIE);
    }
    let doc = s.kind.document(&kind_path);
    if doc.is_some() {
        // The body is rewritten: it must come unencoded, and whole.
        headers.remove(header::RANGE);
        headers.remove(header::IF_RANGE);
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    append_via(&mut headers, parts.version);

    let mut body = Some(boxed(body.map_err(|e| {
        ProxyError::ClientBadRequest(format!("reading the request body: {}", chain(&e)))
    })));
    let count = s.upstream.len();
    for (i, base) in s.upstream.iter().enumerate() {
        let last = i + 1 == count || write;
        let url = format!("{base}{rel}");
        let uri: Uri = url
            .parse()
            .map_err(|_| bad("the path does not make a valid URL".into()))?;
        let target = target::absolute(&uri)?;
        scope.snap.policy.check_destination(&target, false)?;
        rec.url = target::loggable(&uri);
        let out = Outgoing {
            method: method.clone(),
            uri,
            headers: headers.clone(),
        };
        let mut attempt = rec.clone();
        let result = match (&scope.state.cache, write) {
            (Some(cache), false) => {
                let rule = rule_for(cache, &mirror, &kind_path, &url);
                cached::handle_with_rule(scope, cache, &target, &out, rule, &mut attempt).await
            }
            _ => {
                let b = body.take().unwrap_or_else(crate::http::body::empty);
                let r = pass(scope, &target, &out, b, &mut attempt).await;
                if write
                    && let (Some(cache), Ok(resp)) = (&scope.state.cache, &r)
                    && (resp.status().is_success() || resp.status().is_redirection())
                {
                    cache
                        .invalidate(&PrimaryKey::for_uri(&out.uri, &target))
                        .await;
                }
                r
            }
        };
        match result {
            Ok(resp)
                if !last
                    && (resp.status() == StatusCode::NOT_FOUND
                        || resp.status().is_server_error()) =>
            {
                tracing::debug!(mirror = %s.name, upstream = %base, status = %resp.status(), "trying the next upstream");
                continue;
            }
            Err(e) if !last && is_upstream_failure(&e) => {
                tracing::debug!(mirror = %s.name, upstream = %base, error = %e, "trying the next upstream");
                continue;
            }
            Ok(resp) => {
                *rec = attempt;
                return Ok(shape(
                    scope, &mirror, doc, &origin, &url, &method, resp, rec,
                ));
            }
            Err(e) => {
                *rec = attempt;
                if is_upstream_failure(&e) {
                    MirrorStats::add(&stats.upstream_errors, 1);
                }
                return Err(e);
            }
        }
    }
    // Not reached: the last upstream always returns.
    Err(bad("no upstream configured".into()))
}

async fn pass(
    scope: &Scope,
    target: &Target,
    out: &Outgoing,
    body: Body,
    rec: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    let resp = send(scope, target, out, body, rec).await?;
    respond(scope, resp, None, rec)
}

fn is_upstream_failure(e: &ProxyError) -> bool {
    e.status() == StatusCode::BAD_GATEWAY || e.status() == StatusCode::GATEWAY_TIMEOUT
}

/// The artifact rule for a mirrored URL: a user rule matching the upstream URL first, then
/// the built-in rule the mirror's kind names for the path, then whatever the URL patterns
/// say; a metadata rule takes the mirror's own `metadata-max-age`.
fn rule_for(cache: &Cache, mirror: &Mirror, kind_path: &str, url: &str) -> Option<Rule> {
    let rules = cache.rules();
    let by_url = rules.classify(url);
    let mut rule = match by_url {
        Some(r) if !r.builtin => Some(r.clone()),
        _ => mirror
            .settings
            .kind
            .rule_name(kind_path)
            .and_then(|n| rules.named(n))
            .or(by_url)
            .cloned(),
    };
    if let (Some(r), Some(age)) = (rule.as_mut(), mirror.settings.metadata_max_age)
        && let Some(m) = r.metadata.as_mut()
    {
        m.max_age = age;
    }
    rule
}

/// The client's response: rewritten when it is a document with URLs, and counted.
#[allow(clippy::too_many_arguments)]
fn shape(
    scope: &Scope,
    mirror: &Arc<Mirror>,
    doc: Option<super::Document>,
    origin: &str,
    upstream_url: &str,
    method: &Method,
    resp: Response<Body>,
    rec: &AccessRecord,
) -> Response<Body> {
    let stats = &mirror.stats;
    let hit = rec.result.is_served_by_cache();
    if hit {
        MirrorStats::add(&stats.hits, 1);
    }
    if resp.status().is_server_error() {
        MirrorStats::add(&stats.upstream_errors, 1);
    }
    let (mut parts, mut body) = resp.into_parts();
    if let Some(doc) = doc
        && parts.status == StatusCode::OK
    {
        let encoded = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let ct = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let map = scope.state.mirrors.url_map(origin).map(Arc::new);
        let rewriter = match (&map, encoded) {
            (Ok(map), false) => doc.rewriter(map.clone(), &ct, upstream_url),
            _ => None,
        };
        match rewriter {
            Some(rw) => {
                parts.headers.remove(header::CONTENT_LENGTH);
                parts.headers.remove(header::ACCEPT_RANGES);
                if *method != Method::HEAD {
                    body = boxed(super::rewrite::RewriteBody::new(body, rw));
                }
            }
            None => {
                tracing::warn!(mirror = %mirror.settings.name, url = %upstream_url, content_type = %ct, encoded, "mirror: a document was passed without rewriting its URLs");
                MirrorStats::add(&stats.rewrite_errors, 1);
            }
        }
    }
    if hit && *method != Method::HEAD {
        let m = Arc::clone(mirror);
        body = boxed(CountingBody::new(body, move |n, _end: BodyEnd| {
            MirrorStats::add(&m.stats.bytes_saved, n);
        }));
    }
    Response::from_parts(parts, body)
}

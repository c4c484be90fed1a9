//! Plain-HTTP requests to a parent proxy in absolute form, over a pool of connections to
//! that parent. NTLM and Negotiate authenticate a connection: each new connection runs the
//! handshake with the request that opened it, and later requests on it go without. Basic
//! is per request. A request body is sent once, except while cuttle is still learning
//! whether the parent wants authentication: then bodies up to [`REPLAY_LIMIT`] are buffered
//! for the second try, and larger ones wait for an `Expect: 100-continue` probe to say.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;

use super::settings::Timeouts;
use crate::error::ProxyError;
use crate::http::body::{Body, empty, full};
use crate::upstream::auth::Next;
use crate::upstream::parent::Peer;

/// Largest request body kept in memory to be sent again after a first 407.
pub const REPLAY_LIMIT: usize = 1024 * 1024;
/// Largest 407 body read to keep the connection for the next leg.
const MAX_DRAINED_BODY: usize = 64 * 1024;
/// Idle connections kept per parent.
const MAX_IDLE: usize = 64;
/// Authentication round trips on one request (NTLM: three; one more for a first try).
const MAX_LEGS: usize = 4;

struct Idle {
    tx: http1::SendRequest<Body>,
    since: Instant,
}

/// The request body, as far as it can be sent again.
enum ReqBody {
    Empty,
    Buffered(Bytes),
    /// Sent at most once.
    Stream(Option<Body>),
}

impl ReqBody {
    fn take(&mut self) -> Option<Body> {
        match self {
            ReqBody::Empty => Some(empty()),
            ReqBody::Buffered(b) => Some(full(b.clone())),
            ReqBody::Stream(s) => s.take(),
        }
    }

    fn put_back(&mut self, body: Body) {
        if let ReqBody::Stream(s) = self {
            *s = Some(body);
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, ReqBody::Empty)
    }
}

/// One parent's pool of plain-HTTP connections.
pub struct ProxiedClient {
    peer: Arc<Peer>,
    timeouts: Timeouts,
    idle: Mutex<Vec<Idle>>,
}

impl ProxiedClient {
    pub fn new(peer: Arc<Peer>, timeouts: Timeouts) -> Arc<ProxiedClient> {
        Arc::new(ProxiedClient {
            peer,
            timeouts,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends an absolute-form request through the parent, authenticating as it asks.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (parts, body) = req.into_parts();
        let mut body = if http_body::Body::is_end_stream(&body) {
            ReqBody::Empty
        } else if self.peer.auth.discovering() {
            self.learn_first(&parts, body).await?
        } else {
            ReqBody::Stream(Some(body))
        };
        let mut resp = match self.send_pooled(&parts, &mut body).await? {
            Some(resp) => resp,
            None => self.send_new(&parts, &mut body).await?,
        };
        crate::http::headers::drop_length_beside_transfer_coding(resp.headers_mut());
        Ok(resp)
    }

    /// While the parent's wishes are unknown: a body that fits is buffered for a second
    /// try; a larger one first has an `Expect: 100-continue` probe ask the parent, so it is
    /// never sent twice.
    async fn learn_first(
        &self,
        parts: &http::request::Parts,
        body: Body,
    ) -> Result<ReqBody, ProxyError> {
        let fits = http_body::Body::size_hint(&body)
            .upper()
            .is_some_and(|n| n as usize <= REPLAY_LIMIT);
        if fits {
            let mut buf = BytesMut::new();
            let mut body = body;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| match crate::error::find_in_chain(&*e) {
                    Some(p) => p.clone(),
                    None => ProxyError::ClientBadRequest(format!("request body: {e}")),
                })?;
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
                if buf.len() > REPLAY_LIMIT {
                    return Err(ProxyError::ClientBadRequest(
                        "request body longer than its Content-Length".into(),
                    ));
                }
            }
            return Ok(ReqBody::Buffered(buf.freeze()));
        }
        let exact = http_body::Body::size_hint(&body).exact();
        self.probe(parts, exact).await?;
        Ok(ReqBody::Stream(Some(body)))
    }

    /// Sends the request head with `Expect: 100-continue` and no body on a connection of its
    /// own: a 407 teaches the scheme, anything else that the parent lets the request through.
    async fn probe(
        &self,
        parts: &http::request::Parts,
        length: Option<u64>,
    ) -> Result<(), ProxyError> {
        let mut stream = self.peer.connect(&self.timeouts).await?;
        let mut head = format!("{} {} HTTP/1.1\r\n", parts.method, parts.uri).into_bytes();
        if let Some(host) = host_value(&parts.uri) {
            head.extend_from_slice(b"Host: ");
            head.extend_from_slice(host.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        for (k, v) in &parts.headers {
            if k == header::CONTENT_LENGTH || k == header::TRANSFER_ENCODING || k == header::EXPECT
            {
                continue;
            }
            head.extend_from_slice(k.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(v.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        match length {
            Some(n) => head.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes()),
            None => head.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        }
        head.extend_from_slice(b"Expect: 100-continue\r\n\r\n");
        let resp = match self
            .peer
            .timed_exchange(&mut stream, &head, false, &self.timeouts)
            .await
        {
            Ok(r) => r,
            // A parent that waits for the body instead of answering: it does not ask first.
            Err(ProxyError::ParentHandshakeTimeout { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if resp.status == 407 {
            let mut hs = self.peer.auth.begin();
            // Learns the scheme; the handshake itself runs on the real request's connection.
            hs.on_407(&resp.headers).await?;
        } else if resp.status == 100 {
            self.peer.auth.note_no_auth();
        }
        Ok(())
    }

    /// Tries idle connections; `None` when none could take the request.
    async fn send_pooled(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        body: &mut ReqBody,
    ) -> Result<Option<Response<Incoming>>, ProxyError> {
        let per_request = self.peer.auth.per_request_header();
        while let Some(mut idle) = self.take_idle() {
            let Some(b) = body.take() else {
                return Ok(None);
            };
            let req = build(parts, per_request.clone(), b, false);
            match idle.tx.try_send_request(req).await {
                Ok(resp) if resp.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
                    // The parent no longer takes this connection's authentication (or now
                    // wants some): start again on a new connection if the body allows.
                    self.peer.auth.forget();
                    let _ = drain(resp).await;
                    if matches!(body, ReqBody::Stream(None)) {
                        return Err(self.peer.auth.fail(ProxyError::ParentAuthFailed {
                            peer: self.peer.name.clone(),
                            reason: "it asked again for authentication after the request body \
                                     was sent; retry the request"
                                .into(),
                        }));
                    }
                    return Ok(None);
                }
                Ok(resp) => {
                    self.repool(idle.tx);
                    return Ok(Some(resp));
                }
                Err(mut e) => {
                    if let Some(req) = e.take_message() {
                        body.put_back(req.into_body());
                        continue;
                    }
                    return Err(self.io_error(parts, &e.into_error()));
                }
            }
        }
        Ok(None)
    }

    /// A new connection: the authentication handshake runs with this request.
    async fn send_new(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        body: &mut ReqBody,
    ) -> Result<Response<Incoming>, ProxyError> {
        let auth = &self.peer.auth;
        let mut hs = auth.begin();
        let mut header = hs.start().await?;
        let mut tx = self.open().await?;
        for _ in 0..MAX_LEGS {
            // NTLM's NEGOTIATE rides on the request without its body (as curl does): the
            // parent answers it with a challenge and never forwards it.
            let carrier = hs.is_carrier_leg() && !body.is_empty();
            let req_body = if carrier {
                empty()
            } else {
                body.take().ok_or_else(|| {
                    auth.fail(ProxyError::ParentAuthFailed {
                        peer: self.peer.name.clone(),
                        reason: format!(
                            "it asked for authentication after the request body was sent \
                             (bodies over {} KiB are not kept to be sent again); retry the \
                             request",
                            REPLAY_LIMIT / 1024
                        ),
                    })
                })?
            };
            let req = build(parts, header.clone(), req_body, carrier);
            let resp = tx
                .send_request(req)
                .await
                .map_err(|e| self.io_error(parts, &e))?;
            if resp.status() != StatusCode::PROXY_AUTHENTICATION_REQUIRED {
                hs.succeeded(resp.headers());
                if carrier {
                    let status = resp.status();
                    let _ = drain(resp).await;
                    return Err(auth.fail(ProxyError::ParentProtocol {
                        peer: self.peer.name.clone(),
                        cause: format!(
                            "it answered an NTLM negotiation with {status} instead of a challenge"
                        ),
                    }));
                }
                self.repool(tx);
                return Ok(resp);
            }
            let headers = resp.headers().clone();
            let reusable = drain(resp).await;
            let Next::Retry {
                header: next,
                same_connection,
            } = hs.on_407(&headers).await?;
            header = next;
            let alive = reusable && tx.ready().await.is_ok();
            if !alive {
                if same_connection {
                    return Err(auth.fail(ProxyError::ParentProtocol {
                        peer: self.peer.name.clone(),
                        cause: "closed the connection in the middle of the NTLM handshake".into(),
                    }));
                }
                tx = self.open().await?;
            }
        }
        Err(auth.fail(ProxyError::ParentProtocol {
            peer: self.peer.name.clone(),
            cause: "authentication did not finish".into(),
        }))
    }

    async fn open(&self) -> Result<http1::SendRequest<Body>, ProxyError> {
        let stream = self.peer.connect(&self.timeouts).await?;
        let (tx, conn) = http1::Builder::new()
            .max_buf_size(super::settings::READ_BUF_MAX)
            .handshake::<_, Body>(TokioIo::new(stream))
            .await
            .map_err(|e| ProxyError::ParentProtocol {
                peer: self.peer.name.clone(),
                cause: e.to_string(),
            })?;
        let peer = self.peer.name.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(peer = %peer, error = %e, "parent connection ended");
            }
        });
        Ok(tx)
    }

    fn take_idle(&self) -> Option<Idle> {
        let mut idle = self.idle.lock();
        while let Some(i) = idle.pop() {
            if !i.tx.is_closed() && i.since.elapsed() < self.timeouts.pool_idle {
                return Some(i);
            }
        }
        None
    }

    /// Puts the connection back once its response has been read to the end.
    fn repool(self: &Arc<Self>, mut tx: http1::SendRequest<Body>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            if tx.ready().await.is_err() {
                return;
            }
            let Some(me) = me.upgrade() else { return };
            let mut idle = me.idle.lock();
            let max_age = me.timeouts.pool_idle;
            idle.retain(|i| !i.tx.is_closed() && i.since.elapsed() < max_age);
            if idle.len() < MAX_IDLE {
                idle.push(Idle {
                    tx,
                    since: Instant::now(),
                });
            }
        });
    }

    fn io_error(&self, parts: &http::request::Parts, e: &hyper::Error) -> ProxyError {
        // A failure reading the client's body (bad chunk framing...) travels inside hyper's
        // error as the ProxyError the body produced: the client's error, not the parent's.
        if let Some(p) = crate::error::find_in_chain(e) {
            return p.clone();
        }
        let host = parts
            .uri
            .authority()
            .map_or_else(String::new, |a| a.to_string());
        ProxyError::UpstreamProtocol {
            host,
            cause: format!("via parent {}: {}", self.peer.name, crate::error::chain(e)),
        }
    }

    /// Idle connections now (for tests and the status page).
    pub fn idle_connections(&self) -> usize {
        self.idle.lock().len()
    }
}

/// `Host` from the URI's authority, as hyper-util writes it.
fn host_value(uri: &http::Uri) -> Option<HeaderValue> {
    let a = uri.authority()?;
    HeaderValue::from_str(a.as_str()).ok()
}

/// The request for one leg. A carrier leg keeps the head and drops the body.
fn build(
    parts: &http::request::Parts,
    auth: Option<HeaderValue>,
    body: Body,
    carrier: bool,
) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = http::Version::HTTP_11;
    let mut headers = parts.headers.clone();
    // RFC 9110 §11.7.2: a client's Proxy-Authorization was for cuttle; only the parent's
    // own credentials (set below) go to the parent.
    headers.remove(header::PROXY_AUTHORIZATION);
    if !headers.contains_key(header::HOST)
        && let Some(h) = host_value(&parts.uri)
    {
        headers.insert(header::HOST, h);
    }
    if carrier {
        headers.remove(header::TRANSFER_ENCODING);
        headers.remove(header::EXPECT);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    if let Some(a) = auth {
        headers.insert(header::PROXY_AUTHORIZATION, a);
    }
    *req.headers_mut() = headers;
    req
}

/// Reads a 407's body to the end so the connection can carry the next leg; false when it
/// is too large or broken (the connection is then not reused).
async fn drain(resp: Response<Incoming>) -> bool {
    let mut body = resp.into_body();
    let mut seen = 0usize;
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(d) = frame.data_ref() {
                seen += d.len();
                if seen > MAX_DRAINED_BODY {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or(false)
}

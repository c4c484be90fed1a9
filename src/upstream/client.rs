//! Pooled upstream HTTP clients: one for direct connections and one per parent peer (each
//! peer's pool holds only connections to that peer, and they are marked proxied so hyper-util
//! sends absolute-form requests). [`UpstreamClient`] is the only way a request leaves for the
//! next hop: it decides which proxy credentials travel with it. Connectors report where a
//! response came from through [`Hierarchy`] in the response extensions, for the access log.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::parent::Peer;
use super::settings::{Timeouts, UpstreamSettings};
use crate::access::Policy;
use crate::error::ProxyError;
use crate::http::body::Body;
use crate::http::target::Target;
use crate::telemetry::record::Hierarchy;

/// The transport under an upstream HTTP connection.
enum Transport {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

/// A connection to an origin (plain or TLS, possibly tunnelled through a parent) or to a
/// parent proxy.
pub struct UpstreamConn {
    io: Transport,
    hop: Hierarchy,
    proxied: bool,
}

macro_rules! delegate {
    ($self:ident, $io:ident => $e:expr) => {
        match &mut $self.io {
            Transport::Plain($io) => $e,
            Transport::Tls(boxed) => {
                let $io = &mut **boxed;
                $e
            }
        }
    };
}

impl Connection for UpstreamConn {
    fn connected(&self) -> Connected {
        Connected::new().proxy(self.proxied).extra(self.hop.clone())
    }
}

impl hyper::rt::Read for UpstreamConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => Pin::new(io).poll_read(cx, buf))
    }
}

impl hyper::rt::Write for UpstreamConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => Pin::new(io).poll_write(cx, buf))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => Pin::new(io).poll_flush(cx))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => Pin::new(io).poll_shutdown(cx))
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => Pin::new(io).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Transport::Plain(io) => io.is_write_vectored(),
            Transport::Tls(io) => io.is_write_vectored(),
        }
    }
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<UpstreamConn, ProxyError>> + Send>>;

/// Resolves, checks the resolved addresses against the policy, connects (and speaks TLS to
/// `https` origins, verifying their certificates).
#[derive(Clone)]
pub struct DirectConnector {
    policy: Arc<Policy>,
    timeout: Duration,
    tls: Arc<ClientConfig>,
}

/// The TLS handshake with an origin, within `timeout`; certificate problems are named.
async fn tls_handshake(
    tls: &Arc<ClientConfig>,
    stream: TcpStream,
    target: &Target,
    timeout: Duration,
) -> Result<Transport, ProxyError> {
    let name = ServerName::try_from(target.host.clone()).map_err(|e| ProxyError::UpstreamTls {
        host: target.authority(),
        cause: format!("invalid server name: {e}"),
    })?;
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
        Ok(Ok(s)) => Ok(Transport::Tls(Box::new(TokioIo::new(s)))),
        Ok(Err(e)) => Err(ProxyError::UpstreamTls {
            host: target.authority(),
            cause: crate::error::chain(&e),
        }),
        Err(_) => Err(ProxyError::UpstreamConnectTimeout {
            host: target.authority(),
            secs: timeout.as_secs(),
        }),
    }
}

fn target_of(uri: &Uri) -> (Target, bool) {
    let https = uri.scheme_str() == Some("https");
    let target = Target {
        host: uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
    };
    (target, https)
}

impl tower_service::Service<Uri> for DirectConnector {
    type Response = UpstreamConn;
    type Error = ProxyError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> ConnectFuture {
        let policy = self.policy.clone();
        let timeout = self.timeout;
        let tls = self.tls.clone();
        Box::pin(async move {
            let (target, https) = target_of(&uri);
            let (stream, addr) = super::direct::connect_direct(&target, &policy, timeout).await?;
            let io = if https {
                tls_handshake(&tls, stream, &target, timeout).await?
            } else {
                Transport::Plain(TokioIo::new(stream))
            };
            Ok(UpstreamConn {
                io,
                hop: Hierarchy::direct(addr.ip()),
                proxied: false,
            })
        })
    }
}

/// How a request reaches its origin through a parent. The connector opens the connection
/// this says and [`proxy_credentials`] decides from it which credentials the request carries,
/// so the two cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParentLeg {
    /// The request goes to the parent in absolute form: the parent reads it.
    Forwarded,
    /// The parent only relays bytes (CONNECT); the request inside is read by the origin.
    Tunnelled,
}

/// `https` origins are reached through a CONNECT tunnel (cuttle speaks TLS to the origin
/// inside it); anything else is sent to the parent itself.
pub(crate) fn parent_leg(uri: &Uri) -> ParentLeg {
    if uri.scheme_str() == Some("https") {
        ParentLeg::Tunnelled
    } else {
        ParentLeg::Forwarded
    }
}

/// Sets the request's `Proxy-Authorization` for the connection it is about to take.
///
/// RFC 9110 §11.7.2: "Unlike Authorization, the Proxy-Authorization header field applies only
/// to the next inbound proxy that demanded authentication using the Proxy-Authenticate field.
/// When multiple proxies are used in a chain, the Proxy-Authorization header field is consumed
/// by the first inbound proxy that was expecting to receive credentials." So whatever the
/// request carries (the client's credentials were for cuttle) is removed, and the parent's are
/// added only when the parent itself reads the request. A tunnelled request is read by the
/// origin: the parent had its credentials on the CONNECT.
fn proxy_credentials(headers: &mut HeaderMap, uri: &Uri, parent_auth: Option<&HeaderValue>) {
    headers.remove(header::PROXY_AUTHORIZATION);
    if let Some(auth) = parent_auth
        && parent_leg(uri) == ParentLeg::Forwarded
    {
        headers.insert(header::PROXY_AUTHORIZATION, auth.clone());
    }
}

/// Connects to one parent peer: plain requests are sent to it in absolute form; for `https`
/// origins it is asked to tunnel (CONNECT) and cuttle speaks TLS to the origin inside.
#[derive(Clone)]
pub struct ParentConnector {
    peer: Arc<Peer>,
    timeouts: Timeouts,
    tls: Arc<ClientConfig>,
}

impl tower_service::Service<Uri> for ParentConnector {
    type Response = UpstreamConn;
    type Error = ProxyError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> ConnectFuture {
        let peer = self.peer.clone();
        let timeouts = self.timeouts.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let (target, _) = target_of(&dst);
            let hop = Hierarchy::parent(&peer.name);
            if parent_leg(&dst) == ParentLeg::Tunnelled {
                let (stream, early) = peer.open_tunnel(&target, &timeouts).await?;
                if !early.is_empty() {
                    return Err(ProxyError::ParentProtocol {
                        peer: peer.name.clone(),
                        cause: "data before the TLS handshake".into(),
                    });
                }
                let io = tls_handshake(&tls, stream, &target, timeouts.connect).await?;
                return Ok(UpstreamConn {
                    io,
                    hop,
                    proxied: false,
                });
            }
            let stream = peer.connect(&timeouts).await?;
            Ok(UpstreamConn {
                io: Transport::Plain(TokioIo::new(stream)),
                hop,
                proxied: true,
            })
        })
    }
}

/// A pooled client to the next hop. Requests leave cuttle only through [`Self::request`],
/// which gives each the proxy credentials its connection calls for (see
/// [`proxy_credentials`]) and fixes the response's framing headers before anyone reads them.
pub struct UpstreamClient<C> {
    inner: Client<C, Body>,
    /// The parent's precomputed `Proxy-Authorization`, for a client through a parent.
    parent_auth: Option<HeaderValue>,
}

impl<C> UpstreamClient<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    pub async fn request(
        &self,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let (uri, headers) = (req.uri().clone(), req.headers_mut());
        proxy_credentials(headers, &uri, self.parent_auth.as_ref());
        let mut resp = self.inner.request(req).await?;
        crate::http::headers::drop_length_beside_transfer_coding(resp.headers_mut());
        Ok(resp)
    }
}

pub type DirectClient = UpstreamClient<DirectConnector>;

/// The clients for one parent: `https` origins through a CONNECT tunnel (authenticated on
/// the CONNECT, never inside the tunnel) with TLS to the origin inside, pooled per origin;
/// plain `http` in absolute form over the parent's own pool of authenticated connections
/// ([`crate::upstream::proxied`]), which sets the parent's credentials itself.
pub struct ParentClient {
    pub tunnelled: UpstreamClient<ParentConnector>,
    pub proxied: Arc<crate::upstream::proxied::ProxiedClient>,
}

/// The clients of one configuration.
pub struct Clients {
    pub direct: DirectClient,
    /// In the order of `Upstream::peers`, matched by peer name.
    pub parents: Vec<(Arc<Peer>, ParentClient)>,
}

impl Clients {
    pub fn new(settings: &UpstreamSettings, policy: Arc<Policy>, peers: &[Arc<Peer>]) -> Self {
        let (timeouts, tls) = (&settings.timeouts, &settings.tls);
        let builder = || {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(timeouts.pool_idle)
                .pool_timer(TokioTimer::new())
                .pool_max_idle_per_host(64)
                .http1_max_buf_size(super::settings::READ_BUF_MAX)
                .set_host(true);
            b
        };
        let direct = UpstreamClient {
            inner: builder().build(DirectConnector {
                policy,
                timeout: timeouts.connect,
                tls: tls.clone(),
            }),
            parent_auth: None,
        };
        let parents = peers
            .iter()
            .map(|p| {
                let c = ParentClient {
                    tunnelled: UpstreamClient {
                        inner: builder().build(ParentConnector {
                            peer: p.clone(),
                            timeouts: timeouts.clone(),
                            tls: tls.clone(),
                        }),
                        // Only https goes this way: its requests are read by the origin and
                        // carry no parent credentials (the CONNECT had them).
                        parent_auth: None,
                    },
                    proxied: super::proxied::ProxiedClient::new(p.clone(), timeouts.clone()),
                };
                (p.clone(), c)
            })
            .collect();
        Clients { direct, parents }
    }

    pub fn parent(&self, peer: &Arc<Peer>) -> Option<&ParentClient> {
        self.parents
            .iter()
            .find(|(p, _)| Arc::ptr_eq(p, peer))
            .map(|(_, c)| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "Basic cGFyZW50OnNlY3JldA==";
    const CLIENT: &str = "Basic Y2xpZW50OnNlY3JldA==";

    /// The headers a request to `uri` leaves with, having arrived with the client's
    /// credentials.
    fn credentials_for(uri: &str, parent: Option<&str>) -> Option<String> {
        let mut h = HeaderMap::new();
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static(CLIENT),
        );
        let auth = parent.map(HeaderValue::from_str).transpose().unwrap();
        proxy_credentials(&mut h, &uri.parse().unwrap(), auth.as_ref());
        assert!(h.get_all(header::PROXY_AUTHORIZATION).iter().count() <= 1);
        h.get(header::PROXY_AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn parent_credentials_only_on_requests_the_parent_reads() {
        assert_eq!(
            credentials_for("http://origin.example/x", Some(PARENT)).as_deref(),
            Some(PARENT)
        );
        assert_eq!(
            credentials_for("https://origin.example/x", Some(PARENT)),
            None
        );
        assert_eq!(
            credentials_for("HTTPS://origin.example/x", Some(PARENT)),
            None
        );
    }

    #[test]
    fn client_credentials_never_leave() {
        assert_eq!(credentials_for("http://origin.example/x", None), None);
        assert_eq!(credentials_for("https://origin.example/x", None), None);
    }

    #[test]
    fn https_is_tunnelled_through_a_parent() {
        assert_eq!(
            parent_leg(&"https://a.example:8443/".parse().unwrap()),
            ParentLeg::Tunnelled
        );
        assert_eq!(
            parent_leg(&"http://a.example/".parse().unwrap()),
            ParentLeg::Forwarded
        );
    }
}

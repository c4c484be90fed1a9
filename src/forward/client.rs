//! Pooled upstream HTTP clients: one for direct connections and one per parent peer (each
//! peer's pool holds only connections to that peer, and they are marked proxied so hyper-util
//! sends absolute-form requests). Connectors report where a response came from through
//! [`Hop`] in the response extensions, for the access log.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::access::Policy;
use crate::config::{Timeouts, ValidConfig};
use crate::error::ProxyError;
use crate::http::body::Body;
use crate::http::target::Target;
use crate::upstream::parent::Peer;

/// Squid-style hierarchy of the connection that served a response (`HIER_DIRECT/1.2.3.4`,
/// `FIRSTUP_PARENT/proxy:3128`).
#[derive(Debug, Clone)]
pub struct Hop(pub Arc<str>);

/// A TCP connection to an origin or a parent.
pub struct UpstreamConn {
    io: TokioIo<TcpStream>,
    hop: Hop,
    proxied: bool,
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
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<UpstreamConn, ProxyError>> + Send>>;

/// Resolves, checks the resolved addresses against the policy, connects.
#[derive(Clone)]
pub struct DirectConnector {
    policy: Arc<Policy>,
    timeout: Duration,
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
        Box::pin(async move {
            let target = Target {
                host: uri
                    .host()
                    .unwrap_or_default()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port: uri.port_u16().unwrap_or(80),
            };
            let (stream, addr) = crate::upstream::connect_direct(&target, &policy, timeout).await?;
            Ok(UpstreamConn {
                io: TokioIo::new(stream),
                hop: Hop(format!("HIER_DIRECT/{}", addr.ip()).into()),
                proxied: false,
            })
        })
    }
}

/// Connects to one parent peer, whatever the destination.
#[derive(Clone)]
pub struct ParentConnector {
    peer: Arc<Peer>,
    timeouts: Timeouts,
}

impl tower_service::Service<Uri> for ParentConnector {
    type Response = UpstreamConn;
    type Error = ProxyError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _dst: Uri) -> ConnectFuture {
        let peer = self.peer.clone();
        let timeouts = self.timeouts.clone();
        Box::pin(async move {
            let stream = peer.connect(&timeouts).await?;
            Ok(UpstreamConn {
                io: TokioIo::new(stream),
                hop: Hop(format!("FIRSTUP_PARENT/{}", peer.name).into()),
                proxied: true,
            })
        })
    }
}

pub type DirectClient = Client<DirectConnector, Body>;
pub type ParentClient = Client<ParentConnector, Body>;

/// The clients of one configuration.
pub struct Clients {
    pub direct: DirectClient,
    /// In the order of `Upstream::peers`, matched by peer name.
    pub parents: Vec<(Arc<Peer>, ParentClient)>,
}

impl Clients {
    pub fn new(cfg: &ValidConfig, policy: Arc<Policy>, peers: &[Arc<Peer>]) -> Self {
        let builder = || {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(cfg.timeouts.pool_idle)
                .pool_timer(TokioTimer::new())
                .pool_max_idle_per_host(64)
                .set_host(true);
            b
        };
        let direct = builder().build(DirectConnector {
            policy,
            timeout: cfg.timeouts.connect,
        });
        let parents = peers
            .iter()
            .map(|p| {
                let c = builder().build(ParentConnector {
                    peer: p.clone(),
                    timeouts: cfg.timeouts.clone(),
                });
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

//! Parent proxies (`CACHE_PEER`) at run time: their up/down state for failover, and the timed
//! CONNECT handshake that opens a tunnel through one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

pub use super::settings::PeerConfig;
use super::settings::Timeouts;
use crate::error::ProxyError;
use crate::http::target::Target;

/// Largest CONNECT response head accepted from a parent.
const MAX_HANDSHAKE_HEAD: usize = 16 * 1024;

/// A peer with its failover state.
pub struct Peer {
    pub config: PeerConfig,
    pub name: String,
    epoch: Instant,
    /// Milliseconds after `epoch` until which the peer is skipped; 0 = up.
    down_until_ms: AtomicU64,
    /// Milliseconds after `epoch` when the peer was last marked down.
    down_since_ms: AtomicU64,
    backoff: Duration,
}

impl Peer {
    pub fn new(config: PeerConfig, backoff: Duration) -> Arc<Peer> {
        Arc::new(Peer {
            name: config.name(),
            config,
            epoch: Instant::now(),
            down_until_ms: AtomicU64::new(0),
            down_since_ms: AtomicU64::new(0),
            backoff,
        })
    }

    pub fn is_up(&self) -> bool {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        until == 0 || self.epoch.elapsed().as_millis() as u64 >= until
    }

    /// How long the peer stays marked down (zero when up).
    pub fn down_remaining(&self) -> Duration {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        Duration::from_millis(until.saturating_sub(self.epoch.elapsed().as_millis() as u64))
    }

    /// How long the peer has been down (zero when up).
    pub fn down_for(&self) -> Duration {
        if self.is_up() {
            return Duration::ZERO;
        }
        let since = self.down_since_ms.load(Ordering::Relaxed);
        Duration::from_millis((self.epoch.elapsed().as_millis() as u64).saturating_sub(since))
    }

    pub fn mark_down(&self) {
        let until = (self.epoch.elapsed() + self.backoff).as_millis() as u64;
        let was_up = self.is_up();
        if was_up {
            self.down_since_ms
                .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        self.down_until_ms.store(until.max(1), Ordering::Relaxed);
        if was_up {
            tracing::warn!(peer = %self.name, backoff = ?self.backoff, "parent proxy marked down");
        }
    }

    pub fn mark_up(&self) {
        if self.down_until_ms.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!(peer = %self.name, "parent proxy is up again");
        }
    }

    /// Opens a TCP connection to the peer within the parent connect timeout.
    pub async fn connect(&self, t: &Timeouts) -> Result<TcpStream, ProxyError> {
        let secs = t.parent_connect.as_secs();
        let addr = (self.config.host.as_str(), self.config.port);
        let attempt = async {
            let addrs =
                tokio::net::lookup_host(addr)
                    .await
                    .map_err(|e| ProxyError::UpstreamDns {
                        host: format!("parent {}", self.name),
                        cause: e.to_string(),
                    })?;
            let mut last = None;
            for a in addrs {
                match TcpStream::connect(a).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        return Ok(s);
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(ProxyError::UpstreamConnect {
                host: format!("parent {}", self.name),
                cause: last.map_or_else(|| "no address".to_string(), |e| e.to_string()),
            })
        };
        match timeout(t.parent_connect, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::UpstreamConnectTimeout {
                host: format!("parent {}", self.name),
                secs,
            }),
        }
    }

    /// Connects and asks the peer to tunnel to `target`. Returns the stream and any bytes
    /// the peer already sent past its response head (they belong to the tunnel).
    pub async fn open_tunnel(
        &self,
        target: &Target,
        t: &Timeouts,
    ) -> Result<(TcpStream, Bytes), ProxyError> {
        let mut stream = self.connect(t).await?;
        let secs = t.parent_handshake.as_secs();
        match timeout(t.parent_handshake, self.handshake(&mut stream, target)).await {
            Ok(Ok(rest)) => Ok((stream, rest)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ProxyError::ParentHandshakeTimeout {
                peer: self.name.clone(),
                secs,
            }),
        }
    }

    async fn handshake(
        &self,
        stream: &mut TcpStream,
        target: &Target,
    ) -> Result<Bytes, ProxyError> {
        let authority = target.authority();
        let mut head =
            format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n").into_bytes();
        if let Some(auth) = &self.config.auth {
            head.extend_from_slice(b"Proxy-Authorization: ");
            head.extend_from_slice(auth.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let io_err = |e: std::io::Error| ProxyError::ParentProtocol {
            peer: self.name.clone(),
            cause: e.to_string(),
        };
        stream.write_all(&head).await.map_err(io_err)?;

        let mut buf = BytesMut::with_capacity(1024);
        loop {
            if buf.len() >= MAX_HANDSHAKE_HEAD {
                return Err(self.protocol("response head too large"));
            }
            let n = stream.read_buf(&mut buf).await.map_err(io_err)?;
            if n == 0 {
                return Err(self.protocol("connection closed during CONNECT handshake"));
            }
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf) {
                Ok(httparse::Status::Partial) => continue,
                Ok(httparse::Status::Complete(len)) => {
                    let code = resp.code.unwrap_or(0);
                    return match code {
                        200..=299 => Ok(buf.split_off(len).freeze()),
                        407 => Err(ProxyError::ParentAuthRejected {
                            peer: self.name.clone(),
                        }),
                        _ => Err(ProxyError::ParentRefused {
                            peer: self.name.clone(),
                            host: authority,
                            status: code,
                        }),
                    };
                }
                Err(e) => return Err(self.protocol(&format!("malformed CONNECT response: {e}"))),
            }
        }
    }

    fn protocol(&self, cause: &str) -> ProxyError {
        ProxyError::ParentProtocol {
            peer: self.name.clone(),
            cause: cause.to_string(),
        }
    }
}

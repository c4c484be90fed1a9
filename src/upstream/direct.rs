//! The direct way out: DNS, the post-DNS address check, and a timed TCP connect.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::access::Policy;
use crate::error::ProxyError;
use crate::http::target::Target;

/// Resolves `target`, refuses it if any address is denied, and connects to the first
/// address that answers within the connect timeout.
pub async fn connect_direct(
    target: &Target,
    policy: &Policy,
    connect_timeout: Duration,
) -> Result<(TcpStream, SocketAddr), ProxyError> {
    let secs = connect_timeout.as_secs();
    let attempt = async {
        let addrs: Vec<SocketAddr> = match target.ip() {
            Some(ip) => vec![SocketAddr::new(ip, target.port)],
            None => tokio::net::lookup_host((target.host.as_str(), target.port))
                .await
                .map_err(|e| ProxyError::UpstreamDns {
                    host: target.host.clone(),
                    cause: e.to_string(),
                })?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(ProxyError::UpstreamDns {
                host: target.host.clone(),
                cause: "no addresses".into(),
            });
        }
        for a in &addrs {
            policy.check_address(*a)?;
        }
        let mut last = None;
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok((s, a));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(ProxyError::UpstreamConnect {
            host: target.authority(),
            cause: last.map_or_else(|| "no address".to_string(), |e| e.to_string()),
        })
    };
    match timeout(connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(ProxyError::UpstreamConnectTimeout {
            host: target.authority(),
            secs,
        }),
    }
}

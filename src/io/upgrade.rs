//! Taking a client's connection back from hyper after an upgrade (`CONNECT`'s 200), so that
//! tunnels copy socket to socket and hyper's buffers are dropped.

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The client's own socket under an upgraded connection (and any bytes hyper read past the
/// request head), so that the tunnel can use [`super::bridge::run_tcp`] and drop hyper's buffers;
/// the upgraded connection back when it is not a plain TCP socket.
pub fn client_socket(
    upgraded: hyper::upgrade::Upgraded,
) -> Result<(TcpStream, Bytes), hyper::upgrade::Upgraded> {
    upgraded
        .downcast::<TokioIo<TcpStream>>()
        .map(|parts| (parts.io.into_inner(), parts.read_buf))
}

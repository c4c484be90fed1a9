//! One client connection's context, shared by its requests and the tunnel it may become.

use std::net::SocketAddr;
use std::sync::Arc;

use super::limits::ConnPermit;

/// Per-connection facts shared by its requests. The permit counts the connection against
/// `max-connections` and `max-connections-per-client` until the connection and any tunnel
/// it became are gone.
pub struct ConnCtx {
    pub peer: SocketAddr,
    pub permit: Arc<ConnPermit>,
    /// The client reached cuttle over TLS (`--tls-listen`): mirror documents name `https`.
    pub secure: bool,
}

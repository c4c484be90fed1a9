//! TLS interception for chosen hosts: cuttle's own CA ([`ca`]), per-host leaf certificates
//! minted once and cached ([`issuer`]), and the intercepted CONNECT whose inner requests
//! re-enter `forward::handle` like plain HTTP, so caching, coalescing, serve-stale, logging
//! and metrics are shared ([`intercept`]). Also the client TLS configuration used to reach
//! HTTPS origins ([`upstream_tls`]).

pub mod ca;
pub mod intercept;
pub mod issuer;
pub mod upstream_tls;

//! TLS interception for chosen hosts: cuttle's own CA ([`ca`]), per-host leaf certificates
//! minted once and cached at a bounded rate ([`issuer`]), and the intercepted CONNECT, which
//! serves its decrypted connection itself and sends every inner request to
//! `forward::handle` like plain HTTP, so caching, coalescing, serve-stale, logging and
//! metrics are shared ([`intercept`]).

pub mod ca;
pub mod intercept;
pub mod issuer;

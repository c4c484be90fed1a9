//! cuttle: a caching HTTP/HTTPS forward proxy for build farms.
//!
//! A client connection is accepted by [`server::listener`], whose hyper service
//! ([`server::dispatch`]) first asks [`access::Policy`] whether the client may use the proxy.
//! `CONNECT host:port` goes to [`tunnel`], which opens a blind two-way byte bridge
//! ([`tunnel::bridge`]) either directly or through a parent proxy. Absolute-form requests
//! (`GET http://host/...`) go to [`forward::handle`], which strips hop-by-hop headers
//! ([`http::headers`]), picks a route ([`upstream::Route`]: direct, or a `CACHE_PEER`
//! parent with failover) and streams the exchange through a pooled client
//! ([`forward::client`]). Every exchange ends in one access-log record ([`telemetry`]).
//! Configuration is merged from flags, environment and a TOML file and validated once
//! ([`config`]); [`app`] wires it together and owns graceful shutdown.

pub mod access;
pub mod admin;
pub mod app;
pub mod cache;
pub mod config;
pub mod error;
pub mod forward;
pub mod http;
pub mod metrics;
pub mod mitm;
pub mod server;
pub mod sizing;
pub mod telemetry;
pub mod tunnel;
pub mod upstream;

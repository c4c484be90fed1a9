//! cuttle: a caching HTTP/HTTPS forward proxy for build farms.
//!
//! A client connection is accepted by [`server::listener`] and served by [`state::serve`];
//! [`server::dispatch`] loads the configuration [`state::Snapshot`] once for the request,
//! asks [`access::Policy`] whether the client may use the proxy, and routes: `CONNECT` to
//! [`tunnel`] (a blind byte bridge, [`io::bridge`]) or to [`mitm::intercept`] (TLS terminated
//! with cuttle's CA), absolute-form requests to [`forward::handle`], which answers from the
//! [`cache`] or goes out through [`upstream`] (direct, or a `CACHE_PEER` parent with
//! failover, answering a parent that wants Basic, NTLM or Kerberos with [`upstream::auth`]). Every exchange ends in one access record ([`telemetry::record`]); errors
//! become responses in [`state::rescue`]. [`config`] merges and validates the options once;
//! [`app`] wires it together. `ARCHITECTURE.md` is the map, with the layer rules.

pub mod access;
pub mod admin;
pub mod app;
pub mod cache;
pub mod config;
pub mod error;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod io;
pub mod metrics;
pub mod mirror;
pub mod mitm;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tunnel;
pub mod upstream;
pub mod warm;

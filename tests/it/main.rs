//! The integration tests: one test binary (`cargo test --test it`), one module a capability,
//! all sharing the kit in `support/` (in-process origins and proxy, raw-socket and CONNECT
//! helpers, the curl launcher, CA helpers, cache waits). Run one module with
//! `cargo test --test it cache::` (or `scripts/test.sh --test it cache::`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod access;
mod admin;
mod cache;
mod cache_storage;
mod chaining;
mod cli;
mod connect;
mod errors;
mod forward;
mod fuzz_input;
mod intercept;
mod intercept_clients;
mod layers;
mod mirror;
mod mirror_clients;
mod parent_auth;
mod sec_access;
mod sec_cache;
mod sec_connections;
mod sec_credentials;
mod shared_cache;
mod smoke;
mod status_page;
mod warm;

//! Byte-level plumbing below HTTP: the two-way bridge that CONNECT tunnels, upgrades and
//! blind tunnels after a ClientHello all use ([`bridge`]), and a stream that replays bytes
//! already read ([`rewind`]), and the client's socket taken back from hyper after an
//! upgrade ([`upgrade`]).

pub mod bridge;
pub mod rewind;
pub mod upgrade;

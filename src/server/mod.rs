//! The client side: accepting connections ([`listener`]), the connection limits, proxy-wide
//! and per client address ([`limits`]), serving each connection with the request limits
//! ([`conn`]) and routing each request ([`dispatch`]).

pub mod dispatch;
pub mod listener;

//! The client side: accepting connections ([`listener`]), serving each one with the limits
//! ([`conn`]) and routing each request ([`dispatch`]).

pub mod conn;
pub mod dispatch;
pub mod listener;

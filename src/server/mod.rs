//! The client side: accepting connections ([`listener`]) and routing each request
//! ([`dispatch`]).

pub mod dispatch;
pub mod listener;

//! The client side: accepting connections ([`listener`]) and routing each request
//! ([`dispatch`]), and the connection limits ([`limits`]).

pub mod dispatch;
pub mod limits;
pub mod listener;

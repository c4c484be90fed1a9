//! HTTP building blocks shared by every path: header rules, request targets, bodies.

pub mod body;
pub mod headers;
pub mod target;

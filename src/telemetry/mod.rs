//! Telemetry: the access record every transaction fills ([`record`]), where records go
//! ([`log`]: the access log and diagnostics) and the live statistics of the status page
//! ([`stats`]).

pub mod log;
pub mod record;
pub mod stats;

pub use log::{AccessLog, LogFormat, init_tracing};
pub use record::{AccessRecord, HierCode, Hierarchy, ResultCode};

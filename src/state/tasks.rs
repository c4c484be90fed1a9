//! Task tracking for the work that outlives its request: a CONNECT tunnel, an upgraded or an
//! intercepted connection. Each counts against the connection limits and the tunnel gauge
//! until it ends, is drained at shutdown, and writes its access-log record when it ends.

use std::future::Future;

use super::Scope;
use crate::telemetry::AccessRecord;

/// Runs `work` as a tracked task of `scope`'s connection; the record it returns is logged.
pub fn spawn_logged<F>(scope: &Scope, work: F)
where
    F: Future<Output = AccessRecord> + Send + 'static,
{
    let permit = scope.conn.permit.clone();
    let open = scope.state.metrics.tunnel();
    let log = scope.state.log.clone();
    scope.state.tracker.spawn(async move {
        let rec = work.await;
        // Released before the record is written: whoever reads the log line sees the
        // tunnel closed in the gauges too.
        drop(open);
        drop(permit);
        log.write(&rec);
    });
}

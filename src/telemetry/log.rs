//! Where records go: the access log (one line per request or tunnel on stdout, Squid native
//! format or JSON, written by its own thread so a slow terminal never blocks a request) and
//! diagnostics through `tracing` on stderr.
//!
//! A request appends its line to a shared batch and returns; the writer thread wakes on its
//! own every [`FLUSH_EVERY`] and writes the whole batch at once. Nothing wakes it per line: a
//! wake-up per request (a futex call and two context switches) was the largest single cost
//! of a small cache hit.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use super::record::AccessRecord;

/// Access-log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Squid,
    Json,
}

/// Called with every finished transaction (metrics, live statistics).
pub type Observer = Arc<dyn Fn(&AccessRecord) + Send + Sync>;

/// Where access-log lines go: a writer thread on stdout, or a channel for tests.
#[derive(Clone)]
pub struct AccessLog {
    sink: Sink,
    format: LogFormat,
    dropped: Arc<AtomicU64>,
    observer: Option<Observer>,
}

#[derive(Clone)]
enum Sink {
    Batch(Arc<Batch>),
    Channel(SyncSender<String>),
}

/// Lines waiting for the writer thread, and the lock that keeps batches in order.
struct Batch {
    lines: parking_lot::Mutex<Vec<u8>>,
    writing: parking_lot::Mutex<Vec<u8>>,
}

/// Lines buffered (channel) before new ones are dropped (and counted) rather than stall
/// requests.
const LOG_QUEUE: usize = 65_536;
/// Bytes of lines buffered (stdout) before new ones are dropped and counted: 65,536 lines of
/// 128 bytes, about what the channel holds.
const BATCH_MAX: usize = 8 << 20;
/// How often the writer thread writes what has been buffered: lines reach stdout within this.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);

impl Batch {
    /// Writes every buffered line to stdout, in order.
    fn flush(&self) {
        let mut out = self.writing.lock();
        std::mem::swap(&mut *self.lines.lock(), &mut *out);
        if out.is_empty() {
            return;
        }
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(&out);
        let _ = stdout.flush();
        out.clear();
        // A burst's buffer is not kept for ever: back to a small one once it is written.
        if out.capacity() > 1 << 20 {
            *out = Vec::new();
        }
    }
}

impl AccessLog {
    /// Lines go to stdout from a dedicated thread, so a slow terminal never blocks a request.
    pub fn stdout(format: LogFormat) -> AccessLog {
        let batch = Arc::new(Batch {
            lines: parking_lot::Mutex::new(Vec::new()),
            writing: parking_lot::Mutex::new(Vec::new()),
        });
        let b = batch.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                loop {
                    // Its own thread, never a runtime worker.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(FLUSH_EVERY);
                    b.flush();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access-log thread; access log disabled");
        }
        AccessLog {
            sink: Sink::Batch(batch),
            format,
            dropped: Arc::new(AtomicU64::new(0)),
            observer: None,
        }
    }

    /// Writes the lines still buffered now (at shutdown: the writer thread would not get to
    /// them before the process exits).
    pub fn flush(&self) {
        if let Sink::Batch(b) = &self.sink {
            b.flush();
        }
    }

    /// The same log, also reporting every record to `observer`.
    pub fn with_observer(mut self, observer: Observer) -> AccessLog {
        self.observer = Some(observer);
        self
    }

    /// A log whose lines are delivered to the returned receiver (tests, embedding).
    pub fn channel(format: LogFormat) -> (AccessLog, Receiver<String>) {
        let (tx, rx) = sync_channel::<String>(LOG_QUEUE);
        (
            AccessLog {
                sink: Sink::Channel(tx),
                format,
                dropped: Arc::new(AtomicU64::new(0)),
                observer: None,
            },
            rx,
        )
    }

    pub fn write(&self, rec: &AccessRecord) {
        if let Some(o) = &self.observer {
            o(rec);
        }
        let line = match self.format {
            LogFormat::Squid => rec.squid_line(),
            LogFormat::Json => rec.json_line(),
        };
        let full = match &self.sink {
            Sink::Batch(b) => {
                let mut lines = b.lines.lock();
                let fits = lines.len() + line.len() < BATCH_MAX;
                if fits {
                    lines.extend_from_slice(line.as_bytes());
                    lines.push(b'\n');
                }
                !fits
            }
            Sink::Channel(tx) => matches!(tx.try_send(line), Err(TrySendError::Full(_))),
        };
        if full && self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!("access log cannot keep up; dropping lines");
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Diagnostics to stderr, filtered by `filter` (tracing's env-filter syntax).
pub fn init_tracing(filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| format!("log-level: invalid filter `{filter}`: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_parses() {
        let (log, rx) = AccessLog::channel(LogFormat::Json);
        let mut r = AccessRecord::new("[::1]:1".parse().unwrap(), "CONNECT", "h:443".into());
        r.user = Some("alice".into());
        log.write(&r);
        let v: serde_json::Value = serde_json::from_str(&rx.recv().unwrap()).unwrap();
        assert_eq!(v["method"], "CONNECT");
        assert_eq!(v["user"], "alice");
        assert_eq!(v["client"], "::1");
    }
}

//! Where records go: the access log (one line per request or tunnel on stdout, Squid native
//! format or JSON, written by its own thread so a slow terminal never blocks a request) and
//! diagnostics through `tracing` on stderr.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

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
    tx: SyncSender<String>,
    format: LogFormat,
    dropped: Arc<AtomicU64>,
    observer: Option<Observer>,
}

/// Lines buffered before new ones are dropped (and counted) rather than stall requests.
const LOG_QUEUE: usize = 65_536;

impl AccessLog {
    /// Lines go to stdout from a dedicated thread, so a slow terminal never blocks a request.
    pub fn stdout(format: LogFormat) -> AccessLog {
        let (tx, rx) = sync_channel::<String>(LOG_QUEUE);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(line.as_bytes());
                    let _ = out.write_all(b"\n");
                    while let Ok(more) = rx.try_recv() {
                        let _ = out.write_all(more.as_bytes());
                        let _ = out.write_all(b"\n");
                    }
                    let _ = out.flush();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access-log thread; access log disabled");
        }
        AccessLog {
            tx,
            format,
            dropped: Arc::new(AtomicU64::new(0)),
            observer: None,
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
                tx,
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
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!("access log cannot keep up; dropping lines");
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
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

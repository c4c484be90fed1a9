//! Logs: the access log (one line per request or tunnel on stdout, Squid native format or
//! JSON) and diagnostics through `tracing` on stderr. Records carry user names, URLs without
//! userinfo and peer names; never a password or a `Proxy-Authorization` value.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::LogFormat;

/// One transaction, filled in as the request moves along and written when it ends.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    pub started: SystemTime,
    pub start: Instant,
    pub client: SocketAddr,
    /// Squid result code: `TCP_MISS`, `TCP_TUNNEL`, `TCP_DENIED`, `NONE_NONE`...
    pub result: &'static str,
    pub status: u16,
    /// Bytes sent to the client (head and body).
    pub bytes: u64,
    /// Bytes received from the client on a tunnel or as a request body.
    pub bytes_in: u64,
    pub method: String,
    pub url: String,
    pub user: Option<String>,
    /// `HIER_DIRECT/1.2.3.4`, `FIRSTUP_PARENT/proxy.corp:8080`, `HIER_NONE/-`.
    pub hierarchy: String,
    pub content_type: String,
    /// Short error label when the transaction failed (`ERR_DNS_FAIL`...).
    pub error: Option<&'static str>,
    /// Bounded reason when an access rule refused the request.
    pub deny_reason: Option<&'static str>,
    /// The error message (for the status page; never logged to stdout).
    pub error_message: Option<String>,
    /// From the request to its response head.
    pub ttfb: Option<std::time::Duration>,
    /// From sending upstream to the upstream response head.
    pub upstream_latency: Option<std::time::Duration>,
}

impl AccessRecord {
    pub fn new(client: SocketAddr, method: &str, url: String) -> Self {
        Self {
            started: SystemTime::now(),
            start: Instant::now(),
            client,
            result: "NONE_NONE",
            status: 0,
            bytes: 0,
            bytes_in: 0,
            method: method.to_string(),
            url,
            user: None,
            hierarchy: "HIER_NONE/-".into(),
            content_type: "-".into(),
            error: None,
            deny_reason: None,
            error_message: None,
            ttfb: None,
            upstream_latency: None,
        }
    }

    /// Marks the moment the response head is ready.
    pub fn head_ready(&mut self) {
        if self.ttfb.is_none() {
            self.ttfb = Some(self.start.elapsed());
        }
    }

    fn elapsed_ms(&self) -> u128 {
        self.start.elapsed().as_millis()
    }

    /// `time.ms elapsed client result/status bytes method URL user hierarchy/peer type`
    pub fn squid_line(&self) -> String {
        let t = self.started.duration_since(UNIX_EPOCH).unwrap_or_default();
        format!(
            "{}.{:03} {:>6} {} {}/{:03} {} {} {} {} {} {}",
            t.as_secs(),
            t.subsec_millis(),
            self.elapsed_ms(),
            self.client.ip(),
            self.result,
            self.status,
            self.bytes,
            self.method,
            self.url,
            self.user.as_deref().unwrap_or("-"),
            self.hierarchy,
            self.content_type
        )
    }

    pub fn json_line(&self) -> String {
        let t = self.started.duration_since(UNIX_EPOCH).unwrap_or_default();
        serde_json::json!({
            "time": t.as_secs_f64(),
            "elapsed_ms": self.elapsed_ms() as u64,
            "client": self.client.ip().to_string(),
            "result": self.result,
            "status": self.status,
            "bytes": self.bytes,
            "bytes_in": self.bytes_in,
            "method": self.method,
            "url": self.url,
            "user": self.user,
            "hierarchy": self.hierarchy,
            "content_type": self.content_type,
            "error": self.error,
        })
        .to_string()
    }
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
    fn squid_native_line() {
        let mut r = AccessRecord::new("10.1.2.3:5555".parse().unwrap(), "GET", "http://h/x".into());
        r.result = "TCP_MISS";
        r.status = 200;
        r.bytes = 1234;
        r.hierarchy = "HIER_DIRECT/127.0.0.1".into();
        r.content_type = "text/plain".into();
        let line = r.squid_line();
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 10, "{line}");
        assert!(f[0].contains('.'));
        assert_eq!(
            &f[2..],
            [
                "10.1.2.3",
                "TCP_MISS/200",
                "1234",
                "GET",
                "http://h/x",
                "-",
                "HIER_DIRECT/127.0.0.1",
                "text/plain"
            ]
        );
    }

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

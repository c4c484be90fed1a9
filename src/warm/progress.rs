//! Progress of `cuttle warm` on stderr: a bar on a terminal (objects, bytes, rate, ETA),
//! plain periodic lines otherwise (CI logs, `kubectl logs`), or nothing. Messages (failures)
//! go above the bar so it is never torn.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A bar when stderr is a terminal, plain lines otherwise.
    Auto,
    /// Plain lines every --progress-interval.
    Plain,
    /// No progress, only failures and the summary.
    None,
}

/// Counters shared by the fetch tasks and the display.
#[derive(Debug)]
pub struct Counters {
    pub total: AtomicU64,
    pub done: AtomicU64,
    pub bytes: AtomicU64,
    pub failed: AtomicU64,
    start: Instant,
}

impl Counters {
    fn rate(&self) -> f64 {
        let secs = self.start.elapsed().as_secs_f64();
        if secs > 0.0 {
            self.bytes.load(Ordering::Relaxed) as f64 / secs
        } else {
            0.0
        }
    }

    /// `12/40 objects, 3.4 MiB, 1.2 MiB/s, ETA 20s`
    pub fn line(&self) -> String {
        let (done, total) = (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        );
        let eta = if done == 0 {
            "?".to_string()
        } else {
            let per = self.start.elapsed().as_secs_f64() / done as f64;
            format!(
                "{}s",
                (per * total.saturating_sub(done) as f64).ceil() as u64
            )
        };
        format!(
            "{done}/{total} objects, {}, {}/s, ETA {eta}",
            size(self.bytes.load(Ordering::Relaxed)),
            size(self.rate() as u64)
        )
    }
}

/// Bytes in binary units, one decimal.
pub fn size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub struct Progress {
    pub counters: Arc<Counters>,
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

fn stderr_line(s: &str) {
    // Nothing useful can be done when stderr is gone.
    let _ = writeln!(std::io::stderr().lock(), "{s}");
}

impl Progress {
    /// Starts the display (needs a tokio runtime for plain lines).
    pub fn start(mode: Mode, interval: Duration, total: u64) -> Progress {
        let counters = Arc::new(Counters {
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            start: Instant::now(),
        });
        let terminal = std::io::stderr().is_terminal();
        match mode {
            Mode::Auto if terminal => {
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                let (c1, c2) = (counters.clone(), counters.clone());
                let style = ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} objects, {data}, {rate}, ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .with_key("data", move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&size(c1.bytes.load(Ordering::Relaxed)));
                })
                .with_key("rate", move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{}/s", size(c2.rate() as u64));
                });
                bar.set_style(style);
                bar.enable_steady_tick(Duration::from_millis(200));
                Progress {
                    counters,
                    bar: Some(bar),
                    ticker: None,
                }
            }
            Mode::Auto | Mode::Plain => {
                let c = counters.clone();
                let ticker = tokio::spawn(async move {
                    let mut t = tokio::time::interval(interval);
                    t.tick().await;
                    loop {
                        t.tick().await;
                        stderr_line(&format!("warm: {}", c.line()));
                    }
                });
                Progress {
                    counters,
                    bar: None,
                    ticker: Some(ticker),
                }
            }
            Mode::None => Progress {
                counters,
                bar: None,
                ticker: None,
            },
        }
    }

    pub fn add_total(&self, n: u64) {
        self.counters.total.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc_length(n);
        }
    }

    pub fn sub_total(&self, n: u64) {
        self.counters.total.fetch_sub(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.dec_length(n);
        }
    }

    pub fn bytes(&self, n: u64) {
        self.counters.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` objects finished (fetched, or given up on).
    pub fn done(&self, n: u64, failed: bool) {
        self.counters.done.fetch_add(n, Ordering::Relaxed);
        if failed {
            self.counters.failed.fetch_add(n, Ordering::Relaxed);
        }
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// A line on stderr, above the bar when there is one.
    pub fn message(&self, s: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| stderr_line(s)),
            None => stderr_line(s),
        }
    }

    /// Stops the display and leaves one line with the final figures (the bar is cleared:
    /// what follows must not start on the bar's line).
    pub fn finish(&self) {
        if let Some(t) = &self.ticker {
            t.abort();
        }
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        if self.bar.is_some() || self.ticker.is_some() {
            stderr_line(&format!("warm: {}", self.counters.line()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_lines() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 << 30), "5.0 GiB");
        let c = Counters {
            total: AtomicU64::new(4),
            done: AtomicU64::new(0),
            bytes: AtomicU64::new(2048),
            failed: AtomicU64::new(0),
            start: Instant::now(),
        };
        let l = c.line();
        assert!(
            l.starts_with("0/4 objects, 2.0 KiB, ") && l.ends_with("ETA ?"),
            "{l}"
        );
        c.done.store(2, Ordering::Relaxed);
        assert!(c.line().contains("ETA "), "{}", c.line());
    }
}

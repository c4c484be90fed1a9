//! The circuit breaker in front of the shared store: after [`FAILURES`] failures in a row the
//! store is skipped (open) for a back-off period; then one request probes it (half-open); a
//! success closes the breaker, a failure opens it again for twice as long (up to
//! [`MAX_FACTOR`] times the configured back-off). Each state change is one log line.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Consecutive failures that open the breaker.
pub const FAILURES: u32 = 3;
/// The longest back-off, as a multiple of the configured one.
const MAX_FACTOR: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

struct Inner {
    state: BreakerState,
    failures: u32,
    /// While open: when the next probe may go.
    until: Instant,
    /// The back-off of the last opening.
    backoff: Duration,
    /// When the half-open probe started (a probe that never reports back is given up on).
    probe_started: Instant,
    opened: u64,
}

pub struct Breaker {
    base: Duration,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(base: Duration) -> Breaker {
        let now = Instant::now();
        Breaker {
            base,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: 0,
                until: now,
                backoff: base,
                probe_started: now,
                opened: 0,
            }),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.inner.lock().state
    }

    /// How many times the breaker has opened.
    pub fn openings(&self) -> u64 {
        self.inner.lock().opened
    }

    /// Whether an operation may go to the store now. While open, the first caller after the
    /// back-off becomes the half-open probe; everyone else is refused until it reports.
    pub fn allow(&self) -> bool {
        let now = Instant::now();
        let mut i = self.inner.lock();
        match i.state {
            BreakerState::Closed => true,
            BreakerState::Open if now >= i.until => {
                i.state = BreakerState::HalfOpen;
                i.probe_started = now;
                tracing::info!("shared cache: circuit breaker half-open, probing the store");
                true
            }
            BreakerState::Open => false,
            // A probe lost without a report (its task cancelled): another may go.
            BreakerState::HalfOpen if now >= i.probe_started + i.backoff => {
                i.probe_started = now;
                true
            }
            BreakerState::HalfOpen => false,
        }
    }

    pub fn success(&self) {
        let mut i = self.inner.lock();
        i.failures = 0;
        if i.state != BreakerState::Closed {
            i.state = BreakerState::Closed;
            i.backoff = self.base;
            tracing::info!("shared cache: circuit breaker closed, the store answers again");
        }
    }

    pub fn failure(&self, why: &str) {
        let now = Instant::now();
        let mut i = self.inner.lock();
        match i.state {
            BreakerState::Closed => {
                i.failures += 1;
                if i.failures >= FAILURES {
                    i.state = BreakerState::Open;
                    i.backoff = self.base;
                    i.until = now + i.backoff;
                    i.opened += 1;
                    tracing::warn!(
                        error = why,
                        backoff = ?i.backoff,
                        "shared cache: circuit breaker open, skipping the store"
                    );
                }
            }
            BreakerState::HalfOpen => {
                i.state = BreakerState::Open;
                i.backoff = (i.backoff * 2).min(self.base * MAX_FACTOR);
                i.until = now + i.backoff;
                i.opened += 1;
                tracing::warn!(
                    error = why,
                    backoff = ?i.backoff,
                    "shared cache: circuit breaker open again, the probe failed"
                );
            }
            // Operations that started before it opened.
            BreakerState::Open => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_probes_and_closes() {
        let b = Breaker::new(Duration::from_millis(20));
        assert!(b.allow());
        for _ in 0..FAILURES - 1 {
            b.failure("x");
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.success();
        for _ in 0..FAILURES {
            b.failure("x");
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow());
        tokio::time::sleep(Duration::from_millis(25)).await;
        assert!(b.allow(), "the probe goes after the back-off");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allow(), "one probe at a time");
        b.failure("x");
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::sleep(Duration::from_millis(25)).await;
        assert!(!b.allow(), "the back-off doubled");
        tokio::time::sleep(Duration::from_millis(25)).await;
        assert!(b.allow());
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow());
        assert_eq!(b.openings(), 2);
    }
}

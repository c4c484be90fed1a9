//! The two-way byte bridge behind CONNECT tunnels and upgraded connections: copies both
//! directions until both sides are done (a half-close is passed on, the other direction keeps
//! flowing), closes after an idle period with no traffic either way, and counts bytes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Buffer per direction: large enough for bulk transfers, small enough for many tunnels.
const BUF: usize = 64 * 1024;

/// Why a bridge ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides closed their write halves.
    Done,
    /// No byte in either direction for the idle timeout.
    Idle,
    /// A read or write failed (reset, broken pipe).
    Error,
    /// Shutdown: the grace period ran out.
    Shutdown,
}

#[derive(Debug, Clone, Copy)]
pub struct BridgeStats {
    /// Bytes read from the client side and written upstream.
    pub client_to_upstream: u64,
    /// Bytes read from upstream and written to the client side.
    pub upstream_to_client: u64,
    pub reason: CloseReason,
}

struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

pin_project_lite::pin_project! {
    /// Counts bytes read through it and records activity.
    struct Tracked<T> {
        #[pin]
        io: T,
        read: Arc<AtomicU64>,
        activity: Arc<Activity>,
    }
}

impl<T: AsyncRead> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.io.poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read.fetch_add(n as u64, Ordering::Relaxed);
            this.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.io.poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// Runs the bridge until both directions end, the idle timeout passes, or `stop` fires.
pub async fn run<C, U>(
    client: C,
    upstream: U,
    idle: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> BridgeStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(Activity {
        epoch: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    let from_client = Arc::new(AtomicU64::new(0));
    let from_upstream = Arc::new(AtomicU64::new(0));
    let mut c = Tracked {
        io: client,
        read: from_client.clone(),
        activity: activity.clone(),
    };
    let mut u = Tracked {
        io: upstream,
        read: from_upstream.clone(),
        activity: activity.clone(),
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut c, &mut u, BUF, BUF);
    tokio::pin!(copy);
    let reason = loop {
        let check = idle.saturating_sub(activity.idle_for());
        tokio::select! {
            r = &mut copy => break if r.is_ok() { CloseReason::Done } else { CloseReason::Error },
            _ = tokio::time::sleep(check.max(Duration::from_millis(10))) => {
                if activity.idle_for() >= idle {
                    break CloseReason::Idle;
                }
            }
            _ = stop.cancelled() => break CloseReason::Shutdown,
        }
    };
    BridgeStats {
        client_to_upstream: from_client.load(Ordering::Relaxed),
        upstream_to_client: from_upstream.load(Ordering::Relaxed),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_with_half_close() {
        let (client_far, client_near) = tokio::io::duplex(1024);
        let (up_near, up_far) = tokio::io::duplex(1024);
        let stop = tokio_util::sync::CancellationToken::new();
        let h = tokio::spawn(run(client_near, up_near, Duration::from_secs(5), stop));
        let (mut cr, mut cw) = tokio::io::split(client_far);
        let (mut ur, mut uw) = tokio::io::split(up_far);
        cw.write_all(b"hello").await.unwrap();
        cw.shutdown().await.unwrap(); // client half-closes
        let mut got = Vec::new();
        ur.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        uw.write_all(b"world!").await.unwrap(); // upstream still answers
        uw.shutdown().await.unwrap();
        let mut back = Vec::new();
        cr.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"world!");
        let s = h.await.unwrap();
        assert_eq!((s.client_to_upstream, s.upstream_to_client), (5, 6));
        assert_eq!(s.reason, CloseReason::Done);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_closes() {
        let (_a, b) = tokio::io::duplex(64);
        let (c, _d) = tokio::io::duplex(64);
        let stop = tokio_util::sync::CancellationToken::new();
        let s = run(b, c, Duration::from_secs(30), stop).await;
        assert_eq!(s.reason, CloseReason::Idle);
    }
}

//! The two-way byte bridge behind CONNECT tunnels and upgraded connections: copies both
//! directions until both sides are done (a half-close is passed on, the other direction keeps
//! flowing), closes after an idle period with no traffic either way, and counts bytes.
//!
//! Between two TCP sockets ([`run_tcp`], every CONNECT tunnel) a direction holds a copy buffer
//! only while its socket has data: it waits for readiness with no buffer, takes one from a
//! small shared pool, reads and writes until the socket would block, and gives it back. An
//! idle tunnel therefore costs its sockets and its task, not 2 × 64 KiB of buffers, which is
//! what lets `--max-connections` idle tunnels fit the pod's memory limit.

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

/// Buffers kept for reuse by [`run_tcp`] (4 MiB at most): enough for the tunnels moving data
/// at one instant on a busy proxy; beyond it a buffer is freed when its burst ends.
const POOLED: usize = 64;

static POOL: parking_lot::Mutex<Vec<Vec<u8>>> = parking_lot::Mutex::new(Vec::new());

/// A copy buffer from the pool, returned to it on drop (emptied; its memory stays mapped).
struct PoolBuf(Vec<u8>);

impl PoolBuf {
    fn take() -> PoolBuf {
        PoolBuf(POOL.lock().pop().unwrap_or_else(|| Vec::with_capacity(BUF)))
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        let mut pool = POOL.lock();
        if pool.len() < POOLED {
            pool.push(buf);
        }
    }
}

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

/// Runs the bridge between two TCP sockets (see the module comment for the buffers) until
/// both directions end, the idle timeout passes, or `stop` fires.
pub async fn run_tcp(
    client: tokio::net::TcpStream,
    upstream: tokio::net::TcpStream,
    idle: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> BridgeStats {
    let activity = Activity {
        epoch: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let from_client = AtomicU64::new(0);
    let from_upstream = AtomicU64::new(0);
    let copy = async {
        tokio::try_join!(
            pump(&client, &upstream, &from_client, &activity),
            pump(&upstream, &client, &from_upstream, &activity),
        )
    };
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

/// Copies `src` to `dst` until `src` ends (then half-closes `dst`), holding a buffer only
/// while `src` has data.
async fn pump(
    src: &tokio::net::TcpStream,
    dst: &tokio::net::TcpStream,
    count: &AtomicU64,
    activity: &Activity,
) -> io::Result<()> {
    loop {
        src.readable().await?;
        let mut buf = PoolBuf::take();
        loop {
            buf.0.clear();
            match src.try_read_buf(&mut buf.0) {
                Ok(0) => {
                    // Half-close: the peer may still answer on the other direction.
                    match socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write) {
                        Err(e) if e.kind() != io::ErrorKind::NotConnected => return Err(e),
                        _ => return Ok(()),
                    }
                }
                Ok(n) => {
                    count.fetch_add(n as u64, Ordering::Relaxed);
                    activity.touch();
                    write_all(dst, &buf.0[..n]).await?;
                    activity.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

async fn write_all(dst: &tokio::net::TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        dst.writable().await?;
        match dst.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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

    /// Two connected loopback sockets.
    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = tokio::net::TcpStream::connect(l.local_addr().unwrap());
        let (a, b) = tokio::join!(a, l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn tcp_bridge_copies_both_ways_with_half_close() {
        let (mut client, client_near) = pair().await;
        let (up_near, mut up) = pair().await;
        let stop = tokio_util::sync::CancellationToken::new();
        let h = tokio::spawn(run_tcp(client_near, up_near, Duration::from_secs(5), stop));
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        up.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        up.write_all(b"world!").await.unwrap();
        up.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"world!");
        let s = h.await.unwrap();
        assert_eq!((s.client_to_upstream, s.upstream_to_client), (5, 6));
        assert_eq!(s.reason, CloseReason::Done);
    }

    #[tokio::test]
    async fn tcp_bridge_moves_bulk_data_both_ways_at_once() {
        let (client, client_near) = pair().await;
        let (up_near, up) = pair().await;
        let stop = tokio_util::sync::CancellationToken::new();
        let h = tokio::spawn(run_tcp(client_near, up_near, Duration::from_secs(5), stop));
        let data: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let send_recv = |s: tokio::net::TcpStream, data: Vec<u8>| async move {
            let (mut r, mut w) = s.into_split();
            let writer = tokio::spawn(async move {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            writer.await.unwrap();
            got
        };
        let (at_up, at_client) =
            tokio::join!(send_recv(client, data.clone()), send_recv(up, data.clone()));
        assert!(at_up == data && at_client == data);
        let s = h.await.unwrap();
        let n = data.len() as u64;
        assert_eq!((s.client_to_upstream, s.upstream_to_client), (n, n));
    }

    #[tokio::test]
    async fn tcp_bridge_closes_when_idle_or_stopped() {
        let (_client, client_near) = pair().await;
        let (up_near, _up) = pair().await;
        let stop = tokio_util::sync::CancellationToken::new();
        let s = run_tcp(client_near, up_near, Duration::from_millis(300), stop).await;
        assert_eq!(s.reason, CloseReason::Idle);

        let (_client, client_near) = pair().await;
        let (up_near, _up) = pair().await;
        let stop = tokio_util::sync::CancellationToken::new();
        stop.cancel();
        let s = run_tcp(client_near, up_near, Duration::from_secs(60), stop).await;
        assert_eq!(s.reason, CloseReason::Shutdown);
    }
}

//! The two-way byte bridge behind CONNECT tunnels and upgraded connections: copies both
//! directions until both sides are done (a half-close is passed on, the other direction keeps
//! flowing), closes after an idle period with no traffic either way, and counts bytes.
//!
//! Between two TCP sockets ([`run_tcp`], every CONNECT tunnel) a direction holds a copy buffer
//! only while its socket has data: it waits for readiness with no buffer, takes one from a
//! small shared pool, reads and writes until the socket would block, and gives it back. An
//! idle tunnel therefore costs its sockets and its task, not 2 × 64 KiB of buffers, which is
//! what lets `--max-connections` idle tunnels fit the pod's memory limit.
//!
//! On Linux the bytes do not pass through user space at all: a direction moves them with
//! `splice(2)` from the source socket into a pipe and from the pipe into the destination
//! socket (the kernel hands pages over instead of copying them twice through a buffer). The
//! pipe is pooled and held only while bytes move, like the buffer; when no pipe can be made
//! (descriptor or pipe-page limits) that burst is copied through a buffer instead.

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

/// Copies `src` to `dst` until `src` ends (then half-closes `dst`), holding a pipe or a
/// buffer only while `src` has data.
async fn pump(
    src: &tokio::net::TcpStream,
    dst: &tokio::net::TcpStream,
    count: &AtomicU64,
    activity: &Activity,
) -> io::Result<()> {
    loop {
        src.readable().await?;
        #[cfg(target_os = "linux")]
        if let Some(pipe) = splice::Pipe::take() {
            if splice::burst(src, dst, pipe, count, activity).await? {
                return half_close(dst);
            }
            continue;
        }
        if copy_burst(src, dst, count, activity).await? {
            return half_close(dst);
        }
    }
}

/// Passes the end of one direction on: the peer may still answer on the other.
fn half_close(dst: &tokio::net::TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write) {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
        _ => Ok(()),
    }
}

/// Copies through a pooled buffer until `src` would block (`Ok(false)`) or ends (`Ok(true)`).
async fn copy_burst(
    src: &tokio::net::TcpStream,
    dst: &tokio::net::TcpStream,
    count: &AtomicU64,
    activity: &Activity,
) -> io::Result<bool> {
    let mut buf = PoolBuf::take();
    loop {
        buf.0.clear();
        match src.try_read_buf(&mut buf.0) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
                activity.touch();
                write_all(dst, &buf.0[..n]).await?;
                activity.touch();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// Zero-copy bursts through a pipe (Linux).
#[cfg(target_os = "linux")]
mod splice {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::sync::atomic::{AtomicU64, Ordering};

    use rustix::pipe::{PipeFlags, SpliceFlags};
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    use super::{Activity, POOLED};

    /// The pipe's capacity, and the most one splice moves: 64 pages, so a few hundred busy
    /// tunnels stay within an unprivileged user's pipe allowance (`pipe-user-pages-soft`,
    /// 16,384 pages by default).
    const PIPE_SIZE: usize = 256 << 10;

    static PIPES: parking_lot::Mutex<Vec<(OwnedFd, OwnedFd)>> = parking_lot::Mutex::new(Vec::new());

    /// A pipe from the pool (or a new one), returned to it on drop when it is empty; a pipe
    /// still holding bytes (the burst failed half-way) is closed instead.
    pub(super) struct Pipe {
        ends: Option<(OwnedFd, OwnedFd)>,
        /// Bytes spliced in and not yet out.
        pub(super) held: std::cell::Cell<usize>,
    }

    impl Pipe {
        /// `None` when no pipe can be made (the caller copies through a buffer).
        pub(super) fn take() -> Option<Pipe> {
            let ends = match PIPES.lock().pop() {
                Some(p) => p,
                None => {
                    let (r, w) =
                        rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?;
                    // Larger bursts per call; a pipe past the user's pipe-page allowance keeps
                    // its default size.
                    let _ = rustix::pipe::fcntl_setpipe_size(&w, PIPE_SIZE);
                    (r, w)
                }
            };
            Some(Pipe {
                ends: Some(ends),
                held: std::cell::Cell::new(0),
            })
        }
    }

    /// The pipes in the pool, by inode (tests).
    #[cfg(test)]
    pub(super) fn pooled_inodes() -> Vec<u64> {
        PIPES
            .lock()
            .iter()
            .filter_map(|(_, w)| inode_of(w))
            .collect()
    }

    #[cfg(test)]
    impl Pipe {
        pub(super) fn inode(&self) -> u64 {
            self.ends
                .as_ref()
                .and_then(|(_, w)| inode_of(w))
                .unwrap_or(0)
        }
    }

    #[cfg(test)]
    fn inode_of(fd: &OwnedFd) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let f = std::fs::File::from(fd.try_clone().ok()?);
        f.metadata().ok().map(|m| m.ino())
    }

    impl Drop for Pipe {
        fn drop(&mut self) {
            if let Some(ends) = self.ends.take()
                && self.held.get() == 0
            {
                let mut pool = PIPES.lock();
                if pool.len() < POOLED {
                    pool.push(ends);
                }
            }
        }
    }

    /// Moves bytes `src` → pipe → `dst` until `src` would block (`Ok(false)`) or ends
    /// (`Ok(true)`), the pipe emptied each time before `src` is read again.
    pub(super) async fn burst(
        src: &TcpStream,
        dst: &TcpStream,
        pipe: Pipe,
        count: &AtomicU64,
        activity: &Activity,
    ) -> io::Result<bool> {
        let Some((r, w)) = pipe.ends.as_ref() else {
            return Ok(false);
        };
        loop {
            // The pipe is empty here: the splice stops at what the socket has.
            let n = match src.try_io(Interest::READABLE, || {
                rustix::pipe::splice(src, None, w, None, PIPE_SIZE, SpliceFlags::NONBLOCK)
                    .map_err(io::Error::from)
            }) {
                Ok(0) => return Ok(true),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            pipe.held.set(n);
            count.fetch_add(n as u64, Ordering::Relaxed);
            activity.touch();
            while pipe.held.get() > 0 {
                let held = pipe.held.get();
                dst.writable().await?;
                match dst.try_io(Interest::WRITABLE, || {
                    rustix::pipe::splice(r, None, dst, None, held, SpliceFlags::NONBLOCK)
                        .map_err(io::Error::from)
                }) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(m) => pipe.held.set(held - m.min(held)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            activity.touch();
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

    /// A byte counter and an activity clock, as a bridge direction has them.
    fn counters() -> (AtomicU64, Activity) {
        let activity = Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        };
        (AtomicU64::new(0), activity)
    }

    /// The buffer copy (what a burst uses when no pipe can be made, and everywhere off
    /// Linux) moves what the socket has, reports the end, and counts the bytes.
    #[tokio::test]
    async fn buffer_copy_bursts_move_bytes_and_see_the_end() {
        let (mut a, a_near) = pair().await;
        let (b_near, mut b) = pair().await;
        let (count, activity) = counters();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        a.write_all(&data).await.unwrap();
        a.shutdown().await.unwrap();
        let mut ended = false;
        while !ended {
            a_near.readable().await.unwrap();
            ended = copy_burst(&a_near, &b_near, &count, &activity)
                .await
                .unwrap();
        }
        half_close(&b_near).unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert!(got == data);
        assert_eq!(count.load(Ordering::Relaxed), data.len() as u64);
    }

    /// A burst through a pipe moves what the socket has; one whose destination is gone
    /// fails; a pipe still holding bytes is closed rather than pooled.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn pipe_bursts_move_bytes_and_dirty_pipes_are_not_pooled() {
        let (mut a, a_near) = pair().await;
        let (b_near, mut b) = pair().await;
        let (count, activity) = counters();
        a.write_all(b"through the pipe").await.unwrap();
        a_near.readable().await.unwrap();
        let pipe = splice::Pipe::take().unwrap();
        assert!(
            !splice::burst(&a_near, &b_near, pipe, &count, &activity)
                .await
                .unwrap()
        );
        assert_eq!(count.load(Ordering::Relaxed), 16);
        let mut got = [0u8; 16];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"through the pipe");

        drop(b);
        let chunk = vec![7u8; 256 * 1024];
        let mut failed = false;
        for _ in 0..64 {
            a.write_all(&chunk).await.unwrap();
            a_near.readable().await.unwrap();
            let pipe = splice::Pipe::take().unwrap();
            if splice::burst(&a_near, &b_near, pipe, &count, &activity)
                .await
                .is_err()
            {
                failed = true;
                break;
            }
        }
        assert!(failed, "writing to a closed peer never failed");

        let dirty = splice::Pipe::take().unwrap();
        let ino = dirty.inode();
        dirty.held.set(1);
        drop(dirty);
        assert!(
            !splice::pooled_inodes().contains(&ino),
            "a pipe holding bytes went back to the pool"
        );
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

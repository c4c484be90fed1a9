//! An entry being filled from upstream. One task owns the upstream body; every client that
//! wants the object (the one whose miss started it and all the coalesced ones) is a reader of
//! the fill, so all of them are served as the bytes arrive, and the fill goes on when the
//! client that started it goes away.
//!
//! Recent chunks stay in a small in-memory window that live readers are served from. A writer
//! thread creates the temporary disk file and copies every chunk to it through a queue; a
//! reader that falls behind the window reads that file (until the file exists, the window
//! keeps what the slowest reader needs). When more than 16 MiB wait for the writer, the fill
//! waits for it as long as it makes progress (a disk somewhat slower than the network still
//! gets the entry); a writer that makes no progress for 2 s (a stalled disk) or fails loses
//! the entry, and clients are served on from memory: from then on the fill waits for its
//! slowest reader instead of running ahead of it, so no client is ever cut off. The entry is committed only when the body is complete (its length matches
//! `Content-Length` and upstream reported no error).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, watch};

use super::disk::{DiskWriter, READ_CHUNK, read_at};
use super::memory::MemEntry;
use super::meta::Meta;
use crate::http::body::{Body, BoxError};

/// Bytes of recent body kept in memory for live readers.
const WINDOW: u64 = 4 * 1024 * 1024;
/// The window of a fill with a disk copy while the [`Budget`] is spent: readers behind it
/// read the file.
const SMALL_WINDOW: u64 = 256 * 1024;
/// Bytes queued for the disk writer before the fill waits for it.
const WRITER_QUEUE: u64 = 16 * 1024 * 1024;
/// A writer that makes no progress for this long is stalled: the entry is abandoned.
const WRITER_STALL: Duration = Duration::from_secs(2);
/// Chunks from upstream smaller than this are copied into buffers of their own before the
/// fill keeps them. hyper reads a body into buffers of up to 64 KiB
/// (`upstream::settings::READ_BUF_MAX`) and hands out slices of them, and while a slice
/// lives its whole buffer does: a slow upstream sending small pieces made every kept
/// 16 KiB chunk hold a 64 KiB buffer, and the soak's slow origin put RSS far above the
/// [`Budget`], which counts the slices. With the copy, a kept chunk holds at most 4/3 of its
/// bytes.
const COPY_BELOW: usize = 48 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FillState {
    Receiving,
    /// The whole body (this many bytes) has arrived.
    Done(u64),
    Failed(String),
}

struct Inner {
    received: u64,
    window: VecDeque<Bytes>,
    window_start: u64,
    window_bytes: u64,
    /// Keep every chunk (the object may go to the memory tier).
    keep_all: bool,
    /// Bytes of body readable from `file`.
    written: u64,
    /// A read handle on the file being written (temporary, then committed: the same file,
    /// still readable after an eviction) and where its body starts.
    file: Option<(Arc<std::fs::File>, u64)>,
    /// No usable disk copy (no disk tier, writer behind, write error, too large).
    file_failed: bool,
    /// The writer thread has finished (no more bytes will become readable from the file).
    writer_done: bool,
    state: FillState,
    /// Positions of live readers.
    readers: Vec<Weak<AtomicU64>>,
    /// A client has read from this fill (a background refresh never has one).
    had_reader: bool,
    /// The fill goes on with no reader left, holding one of the budget's orphan places.
    orphan: Option<Orphan>,
}

impl Inner {
    /// No disk copy to read behind the window: none at all, or not created yet (until it
    /// exists, the window keeps what the slowest reader still needs, as without one).
    fn no_file(&self) -> bool {
        self.file_failed || self.file.is_none()
    }

    fn slowest_reader(&mut self) -> Option<u64> {
        self.readers.retain(|r| r.strong_count() > 0);
        self.readers
            .iter()
            .filter_map(|r| r.upgrade())
            .map(|p| p.load(Ordering::Relaxed))
            .min()
    }

    /// Drops chunks no reader needs: with a disk copy, everything but the last [`WINDOW`];
    /// without, everything below the slowest reader too.
    /// Returns the bytes dropped.
    fn trim(&mut self, window: u64) -> u64 {
        if self.keep_all {
            return 0;
        }
        let window = if self.no_file() { WINDOW } else { window };
        let before = self.window_bytes;
        let mut floor = self.received.saturating_sub(window);
        if self.no_file()
            && let Some(slowest) = self.slowest_reader()
        {
            floor = floor.min(slowest);
        }
        while let Some(front) = self.window.front() {
            let len = front.len() as u64;
            if self.window_start + len > floor {
                break;
            }
            self.window.pop_front();
            self.window_start += len;
            self.window_bytes -= len;
        }
        before - self.window_bytes
    }
}

/// The limit of the [`Budget`] the cache holds: 64 MiB, one term of the memory formula
/// (`config::sizing`).
pub const FILLS_BUDGET: u64 = 64 << 20;

/// Fills that go on after every client reading them has gone away (to store an artifact the
/// next build will want) are at most this many at once; past it, a fill whose last reader
/// leaves stops, and so does one that would store nothing. Without a bound, clients that
/// abort and retry (a slow origin, a build's timeout) leave any number of fills behind, each
/// with its upstream connection, disk-writer thread and buffers. A term of the memory
/// formula (`config::sizing`).
pub const MAX_ORPHAN_FILLS: usize = 32;

/// Bytes of bodies held in memory by all fills (their windows, and whole bodies kept for the
/// memory tier) and by whole-object reads of disk entries, against one limit
/// ([`FILLS_BUDGET`]). Past it, fills keep no whole bodies and only a small window
/// (the rest is read back from the disk file), and disk hits stream instead of being read
/// whole: RSS stays bounded however many misses run at once.
pub struct Budget {
    held: AtomicU64,
    limit: u64,
    /// Fills going on without a reader, against [`MAX_ORPHAN_FILLS`].
    orphans: AtomicUsize,
    max_orphans: usize,
}

impl Budget {
    pub fn new(limit: u64) -> Arc<Budget> {
        Self::with_orphans(limit, MAX_ORPHAN_FILLS)
    }

    pub fn with_orphans(limit: u64, max_orphans: usize) -> Arc<Budget> {
        Arc::new(Budget {
            held: AtomicU64::new(0),
            limit,
            orphans: AtomicUsize::new(0),
            max_orphans,
        })
    }

    /// Fills going on without a reader now.
    pub fn orphans(&self) -> usize {
        self.orphans.load(Ordering::Relaxed)
    }

    fn take_orphan(self: &Arc<Budget>) -> Option<Orphan> {
        let mut cur = self.orphans.load(Ordering::Relaxed);
        loop {
            if cur >= self.max_orphans {
                return None;
            }
            match self.orphans.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Orphan(self.clone())),
                Err(v) => cur = v,
            }
        }
    }

    fn spent(&self) -> bool {
        self.held.load(Ordering::Relaxed) > self.limit
    }

    fn add(&self, n: u64) {
        self.held.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(&self, n: u64) {
        self.held.fetch_sub(n, Ordering::Relaxed);
    }

    /// Takes `n` bytes when they fit; given back when the guard drops.
    pub fn try_take(self: &Arc<Budget>, n: u64) -> Option<Held> {
        let mut cur = self.held.load(Ordering::Relaxed);
        loop {
            if cur + n > self.limit {
                return None;
            }
            match self.held.compare_exchange_weak(
                cur,
                cur + n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Held {
                        budget: self.clone(),
                        n,
                    });
                }
                Err(v) => cur = v,
            }
        }
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

/// One of the budget's places for a fill without a reader; given back when dropped.
struct Orphan(Arc<Budget>);

impl Drop for Orphan {
    fn drop(&mut self) {
        self.0.orphans.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bytes taken from a [`Budget`].
pub struct Held {
    budget: Arc<Budget>,
    n: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.sub(self.n);
    }
}

/// How a fill finished, for the cache to account for it.
pub enum Completed {
    /// Stored on disk and/or in memory (`mem` is the whole body when it fits there).
    Stored {
        mem: Option<MemEntry>,
        /// The committed disk file (header, body, trailer), when the disk tier took it.
        file: Option<Arc<std::fs::File>>,
    },
    NotStored,
}

pub struct Fill {
    pub meta: Arc<Meta>,
    inner: Mutex<Inner>,
    /// An abandoned disk copy, kept (and deleted) with the fill: readers that fell behind
    /// the memory window still read it.
    abandoned: Mutex<Option<DiskWriter>>,
    changed: watch::Sender<u64>,
    /// Readers advanced (the fill may be waiting for the slowest one).
    progress: Notify,
    /// A reader went away (the fill may have none left).
    left: Notify,
    budget: Arc<Budget>,
    /// Bytes sent to the disk writer and not yet written.
    queued: AtomicU64,
    /// What this fill counts in the budget: its window, or its writer's queue when that is
    /// larger (both hold the same chunks).
    counted: AtomicU64,
}

impl Drop for Fill {
    fn drop(&mut self) {
        self.budget.sub(*self.counted.get_mut());
    }
}

/// Limits for one fill.
pub struct FillLimits {
    pub max_object: u64,
    /// Keep the body in memory for the memory tier when it is at most this large.
    pub mem_object: u64,
    /// How long the fill waits for a stalled reader before leaving it behind.
    pub reader_stall: Duration,
    /// Shared by all fills.
    pub budget: Arc<Budget>,
    /// Permits a writer takes before its blocking thread (`disk::MAX_WRITERS`): while none
    /// is free it waits without a thread and its chunks wait in its queue.
    pub writer_slots: Option<Arc<tokio::sync::Semaphore>>,
}

/// Creates the disk entry of a fill, on the writer's blocking thread (None: it could not be
/// created, e.g. no room).
pub type OpenWriter = Box<dyn FnOnce() -> Option<DiskWriter> + Send>;

impl Fill {
    /// Starts filling from `body`. `open` creates the disk entry (none when the disk tier is
    /// off); it runs on the writer's thread, started once the first chunk has reached the
    /// readers, so the response head and the first bytes go out before the file is created
    /// (creating it can mean evicting other entries first). Until it
    /// exists, chunks wait in the writer's queue and readers are served from the window.
    /// `kept` runs as soon as the whole body has arrived and was kept in memory (before the
    /// disk copy is complete: the memory tier can serve it at once); `done` runs once at the
    /// end with whether the entry was stored.
    pub fn start<B>(
        meta: Arc<Meta>,
        body: B,
        open: Option<OpenWriter>,
        limits: FillLimits,
        kept: impl FnOnce(MemEntry) + Send + 'static,
        done: impl FnOnce(Arc<Fill>, Completed) + Send + 'static,
    ) -> Arc<Fill>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let cl = meta.content_length();
        let keep_all = cl.is_none_or(|n| n <= limits.mem_object);
        let (tx, _) = watch::channel(0u64);
        let fill = Arc::new(Fill {
            meta,
            inner: Mutex::new(Inner {
                received: 0,
                window: VecDeque::new(),
                window_start: 0,
                window_bytes: 0,
                keep_all,
                written: 0,
                file: None,
                file_failed: open.is_none(),
                writer_done: open.is_none(),
                state: FillState::Receiving,
                readers: Vec::new(),
                had_reader: false,
                orphan: None,
            }),
            changed: tx,
            progress: Notify::new(),
            left: Notify::new(),
            abandoned: Mutex::new(None),
            budget: limits.budget.clone(),
            queued: AtomicU64::new(0),
            counted: AtomicU64::new(0),
        });
        let (wtx, wrx) = mpsc::unbounded_channel::<Bytes>();
        // The writer starts with the first chunk, not here: its task (and the blocking
        // thread it wakes) would otherwise compete with this request's task for the CPU
        // before the response head goes out.
        let mut start_writer = open.map(|open| {
            let f = fill.clone();
            let slots = limits.writer_slots.clone();
            let write = move || {
                let stored = match open() {
                    Some(w) => {
                        f.inner.lock().file = w.reader().map(|r| (r, w.body_offset()));
                        write_to_disk(&f, w, wrx)
                    }
                    None => {
                        f.abandon_file("the disk entry could not be created");
                        f.inner.lock().writer_done = true;
                        f.notify();
                        false
                    }
                };
                // Whatever was still queued is dropped with the queue.
                f.queued.store(0, Ordering::Release);
                f.recount(f.inner.lock().window_bytes);
                stored
            };
            move || {
                tokio::spawn(async move {
                    let slot = match slots {
                        Some(s) => s.acquire_owned().await.ok(),
                        None => None,
                    };
                    tokio::task::spawn_blocking(move || {
                        let _slot = slot;
                        write()
                    })
                    .await
                    .unwrap_or(false)
                })
            }
        });
        let f = fill.clone();
        tokio::spawn(async move {
            let mut wtx = start_writer.is_some().then_some(wtx);
            let mut writer_task = None;
            let mut progress = f.changed.subscribe();
            let mut body = Box::pin(body);
            let outcome = loop {
                if let Some(why) = f.without_readers() {
                    tracing::debug!(url = %f.meta.url, why, "fill stopped");
                    break Err(format!("stopped: {why}"));
                }
                f.wait_for_slow_readers(limits.reader_stall).await;
                let frame = match tokio::select! {
                    next = body.frame() => next,
                    // The last reader may have gone: look again before waiting on.
                    _ = f.left.notified() => continue,
                } {
                    None => break Ok(()),
                    Some(Err(e)) => break Err(crate::error::chain(&*e.into())),
                    Some(Ok(frame)) => frame,
                };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                let data = if data.len() < COPY_BELOW {
                    Bytes::copy_from_slice(&data)
                } else {
                    data
                };
                if f.push(data.clone(), &limits) {
                    wtx = None;
                    f.abandon_file("larger than max-object-size");
                }
                if let Some(start) = start_writer.take() {
                    // Readers first: the writer's thread would compete with them.
                    f.notify();
                    writer_task = Some(start());
                }
                if let Some(tx) = &wtx {
                    let n = data.len() as u64;
                    f.queued.fetch_add(n, Ordering::AcqRel);
                    f.recount(f.inner.lock().window_bytes);
                    let sent = tx.send(data).is_ok();
                    if !sent {
                        f.queued.fetch_sub(n, Ordering::AcqRel);
                    }
                    // A writer briefly behind (a disk a little slower than the
                    // network) gets a moment to catch up; one that stays behind
                    // (a stalled disk) loses the entry rather than stall clients.
                    if !sent || !f.writer_catches_up(&mut progress).await {
                        wtx = None;
                        f.abandon_file("disk writer fell behind");
                    }
                }
                f.notify();
            };
            // A body without data still gets its (empty) entry.
            let writer_task = writer_task.or_else(|| start_writer.take().map(|start| start()));
            {
                let mut inner = f.inner.lock();
                inner.state = match outcome {
                    Ok(()) => match cl {
                        Some(n) if n != inner.received => FillState::Failed(format!(
                            "body ended after {} of {n} bytes",
                            inner.received
                        )),
                        _ => FillState::Done(inner.received),
                    },
                    Err(e) => FillState::Failed(e),
                };
            }
            // The whole body in memory is servable now; the disk copy may take a while longer.
            let mem = f.whole_body().map(|body| MemEntry {
                meta: f.meta.clone(),
                body,
            });
            if let Some(m) = &mem {
                kept(m.clone());
            }
            // Only now: the writer decides whether to commit from the state once its queue
            // closes.
            drop(wtx);
            f.notify();
            let stored = match writer_task {
                Some(t) => t.await.unwrap_or(false),
                None => false,
            };
            {
                let mut inner = f.inner.lock();
                inner.writer_done = true;
                inner.orphan = None;
            }
            f.notify();
            let file = if stored {
                f.inner.lock().file.as_ref().map(|(file, _)| file.clone())
            } else {
                None
            };
            let completed = if stored || mem.is_some() {
                Completed::Stored { mem, file }
            } else {
                Completed::NotStored
            };
            done(f, completed);
        });
        fill
    }

    /// Whether the fill must stop because every client reading it has gone: it would store
    /// nothing, or [`MAX_ORPHAN_FILLS`] fills already go on without a reader (Some(why)).
    /// Otherwise a fill left without readers takes an orphan place and goes on.
    fn without_readers(&self) -> Option<&'static str> {
        let mut inner = self.inner.lock();
        if !inner.had_reader {
            return None;
        }
        inner.readers.retain(|r| r.strong_count() > 0);
        if !inner.readers.is_empty() {
            return None;
        }
        // Looked at on every chunk: an orphan may learn only later that it stores nothing
        // (its disk copy abandoned, or grown past the memory-object limit).
        if inner.file_failed && !inner.keep_all {
            return Some("no reader left and nothing to store");
        }
        if inner.orphan.is_some() {
            return None;
        }
        match self.budget.take_orphan() {
            Some(o) => {
                inner.orphan = Some(o);
                None
            }
            None => Some("no reader left and the most fills without one are running"),
        }
    }

    /// Without a disk copy, the fill must not run more than a window ahead of its slowest
    /// reader, or that reader would lose bytes.
    async fn wait_for_slow_readers(&self, stall: Duration) {
        loop {
            let wait = {
                let mut inner = self.inner.lock();
                if !inner.no_file() || inner.keep_all {
                    false
                } else {
                    let received = inner.received;
                    inner
                        .slowest_reader()
                        .is_some_and(|slowest| received.saturating_sub(slowest) > WINDOW)
                }
            };
            if !wait {
                return;
            }
            if tokio::time::timeout(stall, self.progress.notified())
                .await
                .is_err()
            {
                tracing::debug!(url = %self.meta.url, "a reader stalled; the fill goes on without it");
                return;
            }
        }
    }

    /// Waits while more than [`WRITER_QUEUE`] bytes wait for the disk writer, as long as it
    /// keeps making progress ([`WRITER_STALL`] without any is a stalled disk). False when
    /// the writer is stalled.
    /// While the [`Budget`] is spent, it waits until the queue is down to a small window:
    /// upstream is read no faster than the disk takes it.
    async fn writer_catches_up(&self, progress: &mut watch::Receiver<u64>) -> bool {
        loop {
            let queued = self.queued.load(Ordering::Acquire);
            if queued <= SMALL_WINDOW || (queued <= WRITER_QUEUE && !self.budget.spent()) {
                break;
            }
            let done = self.inner.lock().writer_done;
            if done {
                return false;
            }
            if tokio::time::timeout(WRITER_STALL, progress.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    }

    /// Appends a chunk; returns true when the object outgrew `max_object`.
    fn push(&self, data: Bytes, limits: &FillLimits) -> bool {
        let mut inner = self.inner.lock();
        let n = data.len() as u64;
        inner.received += n;
        inner.window.push_back(data);
        inner.window_bytes += n;
        self.recount(inner.window_bytes);
        let spent = self.budget.spent();
        // Too large for memory, or to be stored at all, or too many bodies in memory at
        // once (a later disk hit brings it into the memory tier).
        if inner.keep_all && (inner.received > limits.mem_object.min(limits.max_object) || spent) {
            inner.keep_all = false;
        }
        inner.trim(if spent { SMALL_WINDOW } else { WINDOW });
        self.recount(inner.window_bytes);
        inner.received > limits.max_object
    }

    /// Brings this fill's share of the budget up to date.
    fn recount(&self, window_bytes: u64) {
        let now = window_bytes.max(self.queued.load(Ordering::Acquire));
        let before = self.counted.swap(now, Ordering::AcqRel);
        if now > before {
            self.budget.add(now - before);
        } else {
            self.budget.sub(before - now);
        }
    }

    fn abandon_file(&self, why: &str) {
        let mut inner = self.inner.lock();
        if !inner.file_failed {
            inner.file_failed = true;
            tracing::debug!(url = %self.meta.url, why, "cache entry abandoned");
        }
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn state(&self) -> FillState {
        self.inner.lock().state.clone()
    }

    /// Whether a new reader can be served from the first byte (it would otherwise need bytes
    /// that are neither in memory nor on disk any more).
    pub fn joinable(&self) -> bool {
        let inner = self.inner.lock();
        !matches!(inner.state, FillState::Failed(_))
            && (inner.window_start == 0 || !inner.file_failed)
    }

    /// The object's length once known.
    pub fn total(&self) -> Option<u64> {
        match self.inner.lock().state {
            FillState::Done(n) => Some(n),
            _ => self.meta.content_length(),
        }
    }

    /// The whole body, when the fill completed with every chunk kept in memory.
    fn whole_body(&self) -> Option<Bytes> {
        let inner = self.inner.lock();
        if !matches!(inner.state, FillState::Done(_)) || !inner.keep_all || inner.window_start != 0
        {
            return None;
        }
        let mut out = bytes::BytesMut::with_capacity(inner.received as usize);
        for c in &inner.window {
            out.extend_from_slice(c);
        }
        Some(out.freeze())
    }

    /// A body streaming bytes `[start, end)` of the object (`end` = None: to the end) as they
    /// arrive.
    pub fn reader(self: &Arc<Fill>, start: u64, end: Option<u64>) -> Body {
        let pos = Arc::new(AtomicU64::new(start));
        {
            let mut inner = self.inner.lock();
            inner.readers.push(Arc::downgrade(&pos));
            inner.had_reader = true;
        }
        let st = ReaderState {
            fill: self.clone(),
            pos,
            end,
            rx: self.changed.subscribe(),
            failed: false,
        };
        let stream = futures_util::stream::unfold(st, |mut st| async move {
            if st.failed {
                return None;
            }
            match st.next().await {
                Ok(Some(b)) => Some((Ok(http_body::Frame::data(b)), st)),
                Ok(None) => None,
                Err(e) => {
                    st.failed = true;
                    Some((Err(e), st))
                }
            }
        });
        crate::http::body::boxed(http_body_util::StreamBody::new(stream))
    }
}

struct ReaderState {
    fill: Arc<Fill>,
    pos: Arc<AtomicU64>,
    end: Option<u64>,
    rx: watch::Receiver<u64>,
    failed: bool,
}

impl Drop for ReaderState {
    fn drop(&mut self) {
        // The position goes first (the fill sees this reader gone), then the fill is told.
        drop(std::mem::replace(
            &mut self.pos,
            Arc::new(AtomicU64::new(0)),
        ));
        self.fill.left.notify_one();
    }
}

enum Step {
    Data(Bytes),
    File(Arc<std::fs::File>, u64, u64),
    Wait,
    End,
    Fail(String),
}

impl ReaderState {
    fn advance(&self, n: u64) {
        self.pos.fetch_add(n, Ordering::Relaxed);
        self.fill.progress.notify_one();
    }

    fn step(&self) -> Step {
        let pos = self.pos.load(Ordering::Relaxed);
        let inner = self.fill.inner.lock();
        let total = match &inner.state {
            FillState::Done(n) => Some(*n),
            _ => None,
        };
        let limit = match (self.end, total) {
            (Some(e), Some(t)) => e.min(t),
            (Some(e), None) => e,
            (None, Some(t)) => t,
            (None, None) => u64::MAX,
        };
        if pos >= limit {
            return Step::End;
        }
        if pos >= inner.window_start && pos < inner.received {
            let mut off = inner.window_start;
            for c in &inner.window {
                let len = c.len() as u64;
                if pos < off + len {
                    let from = (pos - off) as usize;
                    let to = (limit.min(off + len) - off) as usize;
                    return Step::Data(c.slice(from..to));
                }
                off += len;
            }
        }
        if pos < inner.written
            && let Some((f, off)) = &inner.file
        {
            return Step::File(f.clone(), *off, limit.min(inner.written));
        }
        match &inner.state {
            FillState::Failed(e) => Step::Fail(e.clone()),
            // Bytes gone from the window and never to reach the file.
            _ if pos < inner.window_start && inner.file_failed && inner.writer_done => {
                Step::Fail("reader fell behind an uncached transfer".into())
            }
            _ => Step::Wait,
        }
    }

    async fn next(&mut self) -> Result<Option<Bytes>, BoxError> {
        loop {
            match self.step() {
                Step::Data(b) => {
                    self.advance(b.len() as u64);
                    return Ok(Some(b));
                }
                Step::End => return Ok(None),
                Step::Fail(e) => {
                    tracing::debug!(url = %self.fill.meta.url, pos = self.pos.load(Ordering::Relaxed), error = %e, "fill reader failed");
                    return Err(e.into());
                }
                Step::Wait => self.wait().await?,
                Step::File(file, offset, until) => {
                    let pos = self.pos.load(Ordering::Relaxed);
                    let want = ((until - pos) as usize).min(READ_CHUNK);
                    let b = read_at(file, offset + pos, want).await?;
                    if b.is_empty() {
                        self.wait().await?;
                    } else {
                        self.advance(b.len() as u64);
                        return Ok(Some(b));
                    }
                }
            }
        }
    }

    async fn wait(&mut self) -> Result<(), BoxError> {
        self.rx
            .changed()
            .await
            .map_err(|_| BoxError::from("fill ended unexpectedly"))
    }
}

/// The disk writer (a blocking thread): copies queued chunks to the temporary file in
/// batches, publishes progress to readers, and commits when the fill completed. Returns
/// whether the entry was stored.
fn write_to_disk(
    fill: &Arc<Fill>,
    mut w: DiskWriter,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) -> bool {
    while let Some(chunk) = rx.blocking_recv() {
        let mut r = w.write(&chunk);
        fill.queued.fetch_sub(chunk.len() as u64, Ordering::AcqRel);
        while r.is_ok()
            && let Ok(more) = rx.try_recv()
        {
            r = w.write(&more);
            fill.queued.fetch_sub(more.len() as u64, Ordering::AcqRel);
        }
        fill.recount(fill.inner.lock().window_bytes);
        if let Err(e) = r.and_then(|_| w.flush()) {
            tracing::debug!(error = %e, "cache write failed");
            fill.abandon_file("write error");
            *fill.abandoned.lock() = Some(w);
            fill.inner.lock().writer_done = true;
            fill.notify();
            return false;
        }
        fill.inner.lock().written = w.body_len();
        fill.notify();
    }
    let ok = {
        let inner = fill.inner.lock();
        matches!(inner.state, FillState::Done(n) if n == w.body_len()) && !inner.file_failed
    };
    if !ok {
        // Everything queued is on disk: keep the file for readers behind the window.
        *fill.abandoned.lock() = Some(w);
        fill.inner.lock().writer_done = true;
        fill.notify();
        return false;
    }
    match w.commit() {
        Ok(_) => {
            fill.notify();
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "cache commit failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::disk::Disk;
    use crate::cache::disk::tests::{du, key, meta};
    use http::HeaderMap;
    use tokio::sync::oneshot;

    type Tx = mpsc::Sender<Result<Bytes, BoxError>>;

    /// An upstream body fed by the test, chunk by chunk (an `Err` ends it with an error).
    fn upstream() -> (
        Tx,
        impl http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static,
    ) {
        let (tx, rx) = mpsc::channel::<Result<Bytes, BoxError>>(1);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|r| (r.map(http_body::Frame::data), rx))
        });
        (tx, http_body_util::StreamBody::new(stream))
    }

    /// How a fill ended: `None` not stored, `Some(mem)` stored (with the whole body when
    /// it was kept for the memory tier).
    type Outcome = Option<Option<Bytes>>;

    fn limits(budget: &Arc<Budget>, max_object: u64, mem_object: u64) -> FillLimits {
        FillLimits {
            max_object,
            mem_object,
            reader_stall: Duration::from_millis(20),
            budget: budget.clone(),
            writer_slots: None,
        }
    }

    fn start<B>(
        meta: Meta,
        body: B,
        writer: Option<DiskWriter>,
        limits: FillLimits,
    ) -> (Arc<Fill>, oneshot::Receiver<Outcome>)
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let open = writer.map(|w| Box::new(move || Some(w)) as OpenWriter);
        start_opening(meta, body, open, limits)
    }

    /// [`start`] with a disk entry made by `open` on the writer's thread.
    fn start_opening<B>(
        meta: Meta,
        body: B,
        open: Option<OpenWriter>,
        limits: FillLimits,
    ) -> (Arc<Fill>, oneshot::Receiver<Outcome>)
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (tx, rx) = oneshot::channel();
        let fill = Fill::start(
            Arc::new(meta),
            body,
            open,
            limits,
            |_| {},
            move |_, c| {
                let _ = tx.send(match c {
                    Completed::Stored { mem, .. } => Some(mem.map(|m| m.body)),
                    Completed::NotStored => None,
                });
            },
        );
        (fill, rx)
    }

    /// A body of `n` bytes, not all alike.
    fn data(n: usize) -> Bytes {
        (0..n)
            .map(|i| (i * 31 % 251) as u8)
            .collect::<Vec<u8>>()
            .into()
    }

    async fn feed(tx: &Tx, body: &Bytes, chunk: usize) {
        for c in body.chunks(chunk) {
            tx.send(Ok(Bytes::copy_from_slice(c))).await.unwrap();
        }
    }

    /// Everything a reader yields, and whether it ended with an error.
    async fn drain(mut b: Body) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        loop {
            let next = http_body_util::BodyExt::frame(&mut b);
            let Some(f) = tokio::time::timeout(Duration::from_secs(30), next)
                .await
                .expect("a reader waited 30 s for bytes")
            else {
                break;
            };
            match f {
                Ok(f) => out.extend_from_slice(&f.into_data().unwrap_or_default()),
                Err(_) => return (out, true),
            }
        }
        (out, false)
    }

    async fn disk(dir: &std::path::Path) -> Arc<Disk> {
        let d = Disk::open(dir, 64 << 20).await.unwrap();
        d.scan().await;
        d
    }

    #[test]
    fn budget_takes_are_bounded_and_given_back() {
        let b = Budget::new(100);
        let first = b.try_take(60).unwrap();
        assert!(b.try_take(50).is_none());
        let second = b.try_take(40).unwrap();
        assert_eq!(b.held(), 100);
        assert!(b.try_take(1).is_none());
        drop(first);
        assert_eq!(b.held(), 40);
        drop(second);
        assert_eq!(b.held(), 0);
        // From many threads at once: never more than the limit held.
        let b = Budget::new(1000);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let b = b.clone();
                s.spawn(move || {
                    for i in 0..20_000u64 {
                        if let Some(h) = b.try_take(1 + i % 300) {
                            assert!(b.held() <= 1000, "{} held", b.held());
                            drop(h);
                        }
                    }
                });
            }
        });
        assert_eq!(b.held(), 0);
    }

    /// A fill larger than the memory window, with a disk copy: a reader from the start, one
    /// that joins half-way, one after the end (behind the window: it reads the file) and a
    /// range reader all get the right bytes; the entry is committed, no whole body is kept,
    /// and the budget is given back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_reader_gets_every_byte_and_the_entry_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let d = disk(dir.path()).await;
        const N: usize = 6 * 1024 * 1024 + 123;
        let body = data(N);
        let m = meta("http://h/fill", Some(N));
        let budget = Budget::new(FILLS_BUDGET);
        let (tx, up) = upstream();
        let writer = d.writer(&m).unwrap();
        let (fill, done) = start(m, up, Some(writer), limits(&budget, 1 << 30, 1 << 20));
        let early = tokio::spawn(drain(fill.reader(0, None)));
        feed(&tx, &body.slice(..N / 2), 64 * 1024).await;
        let middle = tokio::spawn(drain(fill.reader(0, None)));
        feed(&tx, &body.slice(N / 2..), 64 * 1024).await;
        drop(tx);
        assert_eq!(
            done.await.unwrap(),
            Some(None),
            "stored, without a whole body"
        );
        assert_eq!(fill.state(), FillState::Done(N as u64));
        assert_eq!(fill.total(), Some(N as u64));
        assert!(fill.joinable());
        for (name, r) in [("early", early), ("middle", middle)] {
            let (got, failed) = r.await.unwrap();
            assert!(!failed, "{name} failed");
            assert!(got[..] == body[..], "{name} got other bytes");
        }
        let (late, failed) = drain(fill.reader(0, None)).await;
        assert!(!failed && late[..] == body[..], "the late reader");
        let (range, failed) = drain(fill.reader(100, Some(200_000))).await;
        assert!(
            !failed && range[..] == body[100..200_000],
            "the range reader"
        );
        let hit = d
            .lookup(&key("http://h/fill"), &HeaderMap::new())
            .await
            .unwrap();
        assert_eq!(hit.len, N as u64);
        drop(fill);
        assert_eq!(budget.held(), 0);
    }

    /// The disk entry is created on the writer's thread: readers get the first bytes while
    /// it is still being created (here: held back by the test), larger than the window, and
    /// the entry is stored once it exists. When it cannot be created, the clients are served
    /// in full and nothing is stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_do_not_wait_for_the_disk_entry() {
        let dir = tempfile::tempdir().unwrap();
        let d = disk(dir.path()).await;
        const N: usize = WINDOW as usize + 3 * 1024 * 1024;
        let body = data(N);
        let m = meta("http://h/late", Some(N));
        let budget = Budget::new(FILLS_BUDGET);
        let (tx, up) = upstream();
        let (go_tx, open) = held_open(&d, &m);
        let (fill, done) = start_opening(m, up, Some(open), limits(&budget, 1 << 30, 1 << 20));
        let mut reader = fill.reader(0, None);
        // The whole body (more than the window) arrives and is read while the entry does
        // not exist yet.
        let mut got = Vec::new();
        for c in body.chunks(64 * 1024) {
            tx.send(Ok(Bytes::copy_from_slice(c))).await.unwrap();
            let want = got.len() + c.len();
            while got.len() < want {
                let frame = tokio::time::timeout(Duration::from_secs(10), reader.frame())
                    .await
                    .expect("a reader waited for the disk entry")
                    .unwrap()
                    .unwrap();
                got.extend_from_slice(&frame.into_data().unwrap());
            }
        }
        drop(tx);
        assert!(got[..] == body[..]);
        drop(reader);
        go_tx.send(()).unwrap();
        assert!(
            done.await.unwrap().is_some(),
            "stored once the entry existed"
        );
        let hit = d.lookup(&key("http://h/late"), &HeaderMap::new()).await;
        assert_eq!(hit.unwrap().len, N as u64);
        drop(fill);
        given_back(&budget).await;

        // An entry that cannot be created: served in full, not stored.
        let m = meta("http://h/none", Some(N));
        let (tx, up) = upstream();
        let open: OpenWriter = Box::new(|| None);
        let (fill, done) = start_opening(m, up, Some(open), limits(&budget, 1 << 30, 1 << 20));
        let reader = tokio::spawn(drain(fill.reader(0, None)));
        feed(&tx, &body, 64 * 1024).await;
        drop(tx);
        let (got, failed) = reader.await.unwrap();
        assert!(!failed && got[..] == body[..]);
        assert!(done.await.unwrap().is_none(), "nothing stored");
        assert!(
            d.lookup(&key("http://h/none"), &HeaderMap::new())
                .await
                .is_none()
        );
        drop(fill);
        given_back(&budget).await;
    }

    /// While every writer slot is taken, a fill's writer waits for one without a thread (the
    /// entry is not even opened) and the body is served meanwhile; once a slot is free the
    /// entry is written and stored, and the slot comes back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_wait_for_a_slot() {
        let dir = tempfile::tempdir().unwrap();
        let d = disk(dir.path()).await;
        const N: usize = 300 * 1024;
        let body = data(N);
        let m = meta("http://h/slot", Some(N));
        let budget = Budget::new(FILLS_BUDGET);
        let slots = Arc::new(tokio::sync::Semaphore::new(0));
        let (open, opened) = recording_open(&d, &m);
        let mut lim = limits(&budget, 1 << 30, 1 << 20);
        lim.writer_slots = Some(slots.clone());
        let (tx, up) = upstream();
        let (fill, mut done) = start_opening(m, up, Some(open), lim);
        let reader = tokio::spawn(drain(fill.reader(0, None)));
        feed(&tx, &body, 64 * 1024).await;
        drop(tx);
        let (got, failed) = reader.await.unwrap();
        assert!(
            !failed && got[..] == body[..],
            "served while the writer waited"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!opened.load(Ordering::SeqCst), "opened without a slot");
        assert!(done.try_recv().is_err(), "finished without its disk copy");
        slots.add_permits(1);
        let stored = tokio::time::timeout(Duration::from_secs(10), done)
            .await
            .expect("the writer never got its slot")
            .unwrap();
        assert!(stored.is_some(), "stored once a slot was free");
        assert!(opened.load(Ordering::SeqCst));
        let hit = d.lookup(&key("http://h/slot"), &HeaderMap::new()).await;
        assert_eq!(hit.unwrap().len, N as u64);
        assert_eq!(slots.available_permits(), 1, "the slot came back");
        drop(fill);
        given_back(&budget).await;
    }

    /// An [`OpenWriter`] on `d` for `m` that records whether it ran.
    fn recording_open(d: &Arc<Disk>, m: &Meta) -> (OpenWriter, Arc<std::sync::atomic::AtomicBool>) {
        let opened = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (o, dd, mm) = (opened.clone(), d.clone(), m.clone());
        let open: OpenWriter = Box::new(move || {
            o.store(true, Ordering::SeqCst);
            dd.writer(&mm).ok()
        });
        (open, opened)
    }

    /// A fill of a `n`-byte body at `url` onto a new disk tier, its writer recorded by
    /// [`recording_open`]; the test feeds the body through the returned sender.
    #[allow(clippy::type_complexity)]
    async fn recorded_fill(
        url: &str,
        n: usize,
    ) -> (
        tempfile::TempDir,
        Arc<Disk>,
        Arc<Budget>,
        Arc<std::sync::atomic::AtomicBool>,
        Tx,
        Arc<Fill>,
        oneshot::Receiver<Outcome>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let d = disk(dir.path()).await;
        let m = meta(url, Some(n));
        let budget = Budget::new(FILLS_BUDGET);
        let (open, opened) = recording_open(&d, &m);
        let (tx, up) = upstream();
        let lim = limits(&budget, 1 << 30, 1 << 20);
        let (fill, done) = start_opening(m, up, Some(open), lim);
        (dir, d, budget, opened, tx, fill, done)
    }

    /// The writer (and its blocking thread) starts only once the first chunk has reached
    /// the readers, so it does not compete with the response head.
    #[tokio::test]
    async fn the_disk_entry_is_created_only_after_the_first_chunk() {
        const N: usize = 200 * 1024;
        let body = data(N);
        let (_dir, d, budget, opened, tx, fill, done) = recorded_fill("http://h/lazy", N).await;
        let mut reader = fill.reader(0, None);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !opened.load(Ordering::SeqCst),
            "the disk entry was created before any byte arrived"
        );
        tx.send(Ok(body.slice(..1024))).await.unwrap();
        let first = tokio::time::timeout(
            Duration::from_secs(10),
            http_body_util::BodyExt::frame(&mut reader),
        )
        .await
        .expect("the first chunk never reached the reader")
        .unwrap()
        .unwrap();
        assert_eq!(first.into_data().unwrap(), body.slice(..1024));
        feed(&tx, &body.slice(1024..), 64 * 1024).await;
        drop(tx);
        let (rest, failed) = drain(reader).await;
        assert!(!failed && rest[..] == body[1024..]);
        let stored = tokio::time::timeout(Duration::from_secs(10), done)
            .await
            .expect("the fill never finished")
            .unwrap();
        assert!(stored.is_some() && opened.load(Ordering::SeqCst));
        let hit = d.lookup(&key("http://h/lazy"), &HeaderMap::new()).await;
        assert_eq!(hit.unwrap().len, N as u64);
        drop(fill);
        given_back(&budget).await;
    }

    /// A body without a single byte still gets its entry (its writer starts at the end).
    #[tokio::test]
    async fn an_empty_body_is_stored_on_disk() {
        let (_dir, d, budget, opened, tx, fill, done) = recorded_fill("http://h/empty", 0).await;
        let reader = tokio::spawn(drain(fill.reader(0, None)));
        drop(tx);
        let (got, failed) = reader.await.unwrap();
        assert!(!failed && got.is_empty());
        let stored = tokio::time::timeout(Duration::from_secs(10), done)
            .await
            .expect("the fill never finished")
            .unwrap();
        assert!(stored.is_some(), "an empty body is an entry too");
        assert!(opened.load(Ordering::SeqCst));
        let hit = d.lookup(&key("http://h/empty"), &HeaderMap::new()).await;
        assert_eq!(hit.unwrap().len, 0);
        drop(fill);
        given_back(&budget).await;
    }

    /// A body kept whole is handed to the memory tier as soon as it has arrived, while its
    /// disk copy is still pending; the entry is stored on disk once that can go on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_kept_in_memory_is_handed_over_before_the_disk_copy() {
        let dir = tempfile::tempdir().unwrap();
        let d = disk(dir.path()).await;
        let body = data(64 * 1024 + 7);
        let m = meta("http://h/kept", Some(body.len()));
        let budget = Budget::new(FILLS_BUDGET);
        let (tx, up) = upstream();
        let (go_tx, open) = held_open(&d, &m);
        let (kept_tx, kept) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let _fill = Fill::start(
            Arc::new(m),
            up,
            Some(open),
            limits(&budget, 1 << 30, 1 << 20),
            move |m| {
                let _ = kept_tx.send(m.body);
            },
            move |_, c| {
                let _ = done_tx.send(matches!(
                    c,
                    Completed::Stored {
                        mem: Some(_),
                        file: Some(_)
                    }
                ));
            },
        );
        feed(&tx, &body, 16 * 1024).await;
        drop(tx);
        let got = tokio::time::timeout(Duration::from_secs(10), kept)
            .await
            .expect("the memory tier waited for the disk copy")
            .unwrap();
        assert!(got[..] == body[..]);
        go_tx.send(()).unwrap();
        assert!(done.await.unwrap(), "stored in memory and on disk");
        let hit = d.lookup(&key("http://h/kept"), &HeaderMap::new()).await;
        assert_eq!(hit.unwrap().len, body.len() as u64);
    }

    /// A disk entry for `m` that is created only once the test sends on the returned sender
    /// (on the writer's thread, which waits for it meanwhile).
    fn held_open(d: &Arc<Disk>, m: &Meta) -> (std::sync::mpsc::Sender<()>, OpenWriter) {
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (d, m) = (d.clone(), Arc::new(m.clone()));
        let open: OpenWriter = Box::new(move || {
            go_rx.recv().ok()?;
            d.writer(&m).ok()
        });
        (go_tx, open)
    }

    /// Waits until the budget is all given back: a fill's task lets go of its own handle
    /// just after reporting how it ended.
    async fn given_back(budget: &Budget) {
        for _ in 0..100 {
            if budget.held() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(budget.held(), 0);
    }

    /// A small object is kept whole for the memory tier, with or without a disk copy.
    #[tokio::test]
    async fn a_small_object_is_kept_whole() {
        let budget = Budget::new(FILLS_BUDGET);
        let body = data(10_000);
        let (tx, up) = upstream();
        let (fill, done) = start(
            meta("http://h/small", Some(10_000)),
            up,
            None,
            limits(&budget, 1 << 30, 64 * 1024),
        );
        feed(&tx, &body, 3000).await;
        drop(tx);
        assert_eq!(done.await.unwrap(), Some(Some(body.clone())));
        let (got, failed) = drain(fill.reader(0, None)).await;
        assert!(!failed && got[..] == body[..]);
        drop(fill);
        assert_eq!(budget.held(), 0);
    }

    /// With the budget spent, a fill keeps no whole body: it is stored on disk only.
    #[tokio::test]
    async fn a_spent_budget_keeps_no_whole_body() {
        let dir = tempfile::tempdir().unwrap();
        let d = disk(dir.path()).await;
        let budget = Budget::new(1);
        let body = data(10_000);
        let m = meta("http://h/spent", Some(10_000));
        let writer = d.writer(&m).unwrap();
        let (tx, up) = upstream();
        let (fill, done) = start(m, up, Some(writer), limits(&budget, 1 << 30, 64 * 1024));
        feed(&tx, &body, 3000).await;
        drop(tx);
        assert_eq!(done.await.unwrap(), Some(None));
        let (got, failed) = drain(fill.reader(0, None)).await;
        assert!(!failed && got[..] == body[..]);
        assert!(
            d.lookup(&key("http://h/spent"), &HeaderMap::new())
                .await
                .is_some()
        );
        drop(fill);
        assert_eq!(budget.held(), 0);
    }

    /// A body shorter than its Content-Length, or cut by an upstream error: readers get the
    /// bytes that came and then an error, nothing is stored, and the temporary file and its
    /// reservation go with the fill.
    #[tokio::test]
    async fn an_incomplete_body_fails_readers_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = disk(dir.path()).await;
        for (url, error) in [("http://h/short", false), ("http://h/error", true)] {
            let budget = Budget::new(FILLS_BUDGET);
            let body = data(50_000);
            let m = meta(url, Some(100_000));
            let writer = d.writer(&m).unwrap();
            let (tx, up) = upstream();
            let (fill, done) = start(m, up, Some(writer), limits(&budget, 1 << 30, 1 << 20));
            let reader = tokio::spawn(drain(fill.reader(0, None)));
            feed(&tx, &body, 10_000).await;
            if error {
                tx.send(Err("upstream reset".into())).await.unwrap();
            }
            drop(tx);
            assert_eq!(done.await.unwrap(), None, "{url}");
            match fill.state() {
                FillState::Failed(e) if error => assert!(e.contains("upstream reset"), "{e}"),
                FillState::Failed(e) => {
                    assert_eq!(e, "body ended after 50000 of 100000 bytes")
                }
                s => panic!("{url}: {s:?}"),
            }
            assert!(!fill.joinable());
            let (got, failed) = reader.await.unwrap();
            assert!(failed, "{url}: the reader saw a complete body");
            assert!(got[..] == body[..got.len()], "{url}");
            drop(fill);
            assert!(d.lookup(&key(url), &HeaderMap::new()).await.is_none());
            assert_eq!(d.reserved(), 0, "{url}");
            assert_eq!(
                du(&dir.path().join("v2/tmp")).1,
                0,
                "{url}: a file left in tmp/"
            );
            assert_eq!(budget.held(), 0, "{url}");
        }
    }

    /// A small chunk is copied before the fill keeps it (it would keep its whole upstream
    /// read buffer alive); a large one is kept as it is, without a copy.
    #[tokio::test]
    async fn small_chunks_are_kept_in_buffers_of_their_own() {
        let budget = Budget::new(FILLS_BUDGET);
        let (tx, up) = upstream();
        let (fill, done) = start(
            meta("http://h/pieces", Some(1000 + 60_000)),
            up,
            None,
            limits(&budget, 1 << 30, 1 << 20),
        );
        let small_buf = data(64 * 1024);
        let large_buf = data(64 * 1024);
        let reader = fill.reader(0, None);
        tx.send(Ok(small_buf.slice(..1000))).await.unwrap();
        tx.send(Ok(large_buf.slice(..60_000))).await.unwrap();
        drop(tx);
        let (got, failed) = drain(reader).await;
        assert!(!failed);
        assert_eq!(got.len(), 61_000);
        let _ = done.await.unwrap();
        let inner = fill.inner.lock();
        let kept: Vec<&Bytes> = inner.window.iter().collect();
        assert_eq!(kept.len(), 2);
        let within = |b: &Bytes, buf: &Bytes| {
            let (p, start) = (b.as_ptr() as usize, buf.as_ptr() as usize);
            p >= start && p < start + buf.len()
        };
        assert!(!within(kept[0], &small_buf), "the small chunk was copied");
        assert!(
            within(kept[1], &large_buf),
            "the large chunk was kept as it is"
        );
    }

    /// Fills whose every reader went away go on to store the object, up to the orphan
    /// limit: past it a fill stops (its upstream body is dropped) and stores nothing. The
    /// place is given back when the orphan completes. A background fill that never had a
    /// reader is not an orphan and goes on.
    #[tokio::test]
    async fn fills_without_readers_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let d = disk(dir.path()).await;
        let budget = Budget::with_orphans(FILLS_BUDGET, 1);
        let body = data(200_000);
        let mut fills = Vec::new();
        for name in ["first", "second"] {
            let m = meta(&format!("http://h/{name}"), Some(body.len()));
            let writer = d.writer(&m).unwrap();
            let (tx, up) = upstream();
            let (fill, done) = start(m, up, Some(writer), limits(&budget, 1 << 30, 0));
            let reader = fill.reader(0, None);
            tx.send(Ok(body.slice(..1000))).await.unwrap();
            drop(reader);
            fills.push((fill, tx, done));
        }
        let (second_fill, second_tx, second_done) = fills.pop().unwrap();
        let (first_fill, first_tx, first_done) = fills.pop().unwrap();
        // The second orphan finds no place: it stops, and its upstream body is dropped.
        assert_eq!(second_done.await.unwrap(), None);
        assert!(matches!(second_fill.state(), FillState::Failed(e) if e.contains("no reader")));
        tokio::time::timeout(Duration::from_secs(5), second_tx.closed())
            .await
            .expect("the stopped fill drops its upstream body");
        assert_eq!(budget.orphans(), 1);
        // The first goes on to the end and is stored.
        for c in body[1000..].chunks(10_000) {
            first_tx.send(Ok(Bytes::copy_from_slice(c))).await.unwrap();
        }
        drop(first_tx);
        assert!(first_done.await.unwrap().is_some(), "the orphan was stored");
        assert!(matches!(first_fill.state(), FillState::Done(n) if n == body.len() as u64));
        assert_eq!(budget.orphans(), 0, "the place is given back");
        // A fill nobody ever read (a background refresh) is no orphan.
        let m = meta("http://h/background", Some(body.len()));
        let writer = d.writer(&m).unwrap();
        let (tx, up) = upstream();
        let (_fill, done) = start(m, up, Some(writer), limits(&budget, 1 << 30, 0));
        let other = Budget::with_orphans(FILLS_BUDGET, 0);
        assert!(other.take_orphan().is_none());
        feed(&tx, &body, 10_000).await;
        drop(tx);
        assert!(done.await.unwrap().is_some());
        assert_eq!(budget.orphans(), 0);
    }

    /// A fill that would store nothing (no disk copy, too large for memory) stops as soon
    /// as its last reader leaves, even with orphan places free.
    #[tokio::test]
    async fn a_fill_that_stores_nothing_stops_with_its_last_reader() {
        let budget = Budget::new(FILLS_BUDGET);
        let (tx, up) = upstream();
        let (fill, done) = start(
            meta("http://h/nothing", None),
            up,
            None,
            limits(&budget, 1 << 30, 0),
        );
        let reader = fill.reader(0, None);
        tx.send(Ok(data(1000))).await.unwrap();
        drop(reader);
        assert_eq!(done.await.unwrap(), None);
        tokio::time::timeout(Duration::from_secs(5), tx.closed())
            .await
            .expect("the upstream body is dropped");
        assert_eq!(budget.orphans(), 0);
    }

    /// An object that grows past max-object-size (no Content-Length) is still served whole
    /// to its readers, but neither stored on disk nor kept in memory.
    #[tokio::test]
    async fn an_object_over_the_size_limit_is_served_but_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let d = disk(dir.path()).await;
        let budget = Budget::new(FILLS_BUDGET);
        let body = data(500_000);
        let m = meta("http://h/huge", None);
        let writer = d.writer(&m).unwrap();
        let (tx, up) = upstream();
        let (fill, done) = start(m, up, Some(writer), limits(&budget, 200_000, 1 << 20));
        let reader = tokio::spawn(drain(fill.reader(0, None)));
        feed(&tx, &body, 16 * 1024).await;
        drop(tx);
        assert_eq!(done.await.unwrap(), None);
        let (got, failed) = reader.await.unwrap();
        assert!(!failed && got[..] == body[..]);
        drop(fill);
        assert!(
            d.lookup(&key("http://h/huge"), &HeaderMap::new())
                .await
                .is_none()
        );
        assert_eq!(d.reserved(), 0);
        assert_eq!(budget.held(), 0);
    }

    /// Without a disk copy, a reader that stops reading holds the fill back only for the
    /// stall timeout (the fill still completes), and it is never cut off: when it reads
    /// again it gets every byte, like the reader that kept up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_reader_without_a_disk_copy_is_never_cut_off() {
        let budget = Budget::new(FILLS_BUDGET);
        const N: usize = 6 * 1024 * 1024;
        let body = data(N);
        let (tx, up) = upstream();
        let (fill, done) = start(
            meta("http://h/nodisk", None),
            up,
            None,
            limits(&budget, 1 << 30, 0),
        );
        let stalled = fill.reader(0, None);
        let keeping_up = tokio::spawn(drain(fill.reader(0, None)));
        let started = std::time::Instant::now();
        feed(&tx, &body, 64 * 1024).await;
        drop(tx);
        assert_eq!(done.await.unwrap(), None);
        assert!(started.elapsed() < Duration::from_secs(30));
        let (got, failed) = keeping_up.await.unwrap();
        assert!(!failed && got[..] == body[..]);
        let (got, failed) = drain(stalled).await;
        assert!(
            !failed,
            "the stalled reader was cut off after {} bytes",
            got.len()
        );
        assert!(got[..] == body[..]);
        drop(fill);
        assert_eq!(budget.held(), 0);
    }

    /// Without a disk copy and with no reader holding them, bytes behind the window are
    /// gone: the fill is no longer joinable, a new reader from the start ends with an error
    /// (never a body missing its beginning), and one within the window is served.
    #[tokio::test]
    async fn bytes_behind_the_window_without_a_disk_copy_are_gone() {
        let budget = Budget::new(FILLS_BUDGET);
        const N: usize = 6 * 1024 * 1024;
        let body = data(N);
        let (tx, up) = upstream();
        let (fill, done) = start(
            meta("http://h/gone", None),
            up,
            None,
            limits(&budget, 1 << 30, 0),
        );
        feed(&tx, &body, 64 * 1024).await;
        drop(tx);
        assert_eq!(done.await.unwrap(), None);
        assert!(!fill.joinable());
        let (got, failed) = drain(fill.reader(0, None)).await;
        assert!(
            failed && got.is_empty(),
            "{} bytes, failed: {failed}",
            got.len()
        );
        let tail = (N - 1000) as u64;
        let (got, failed) = drain(fill.reader(tail, None)).await;
        assert!(!failed && got[..] == body[N - 1000..]);
        drop(fill);
        assert_eq!(budget.held(), 0);
    }
}

//! The disk tier: one file per stored response at `<cache-dir>/v2/objects/<aa>/<url-hash>.
//! <variant>` (format in [`super::meta`]), written to `v2/tmp/` and renamed into place only
//! when complete, so a crash leaves no partial entry under `objects/`. The 256 shard
//! directories `<aa>` are made once at start and never removed, so evictions leave no empty
//! directory behind and the inode count is bounded: at most `--cache-size / 32 KiB` entries
//! plus the 256 shards and 3 directories above them.
//!
//! An in-memory index (size and last use per entry) keeps what `du` sees under
//! `--cache-size`: files are counted in whole 4 KiB blocks, and a file being written reserves
//! its room (evicting the least recently used entries first) before its bytes reach the disk,
//! so temporary files are inside the bound too. The index is rebuilt by scanning at start
//! while requests are already served (until then a lookup lists the entry's shard
//! directory). A hit keeps its file open: an entry evicted while it is being read is still
//! served whole from the open file. The first whole read of a file after start checks its
//! checksum (a mismatching file is deleted and counted, never served); the index then
//! remembers the file as verified, stamped with its inode, size and change time, so later
//! hits skip the hashing until the file is replaced or changed in place.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::ops::RangeInclusive;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use parking_lot::Mutex;

use super::key::{EntryKey, PrimaryKey};
use super::meta::{self, Algo, Checksum, Meta, PREFIX_LEN, TRAILER_LEN};
use crate::http::body::{Body, BoxError};

/// Objects up to this size are read and verified whole before the first byte is served.
pub const VERIFY_WHOLE_LIMIT: u64 = 16 * 1024 * 1024;
/// Bytes per read of a stored body (disk hits, and fill readers behind the in-memory window):
/// one pooled buffer each.
pub(super) const READ_CHUNK: usize = 128 * 1024;
/// Read buffers kept for reuse (4 MiB at most): a disk hit's chunks come from here and go
/// back when hyper has written them, so streaming from disk neither allocates nor zeroes
/// (nor faults in) fresh memory per chunk.
const CHUNKS_POOLED: usize = 32;

static CHUNKS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// `len` bytes read into a pooled buffer; the buffer returns to the pool when the last
/// `Bytes` made from it is dropped.
struct Chunk {
    buf: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let mut pool = CHUNKS.lock();
        if pool.len() < CHUNKS_POOLED {
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}
/// The layout directory under `--cache-dir`. v1 kept one directory per URL, which was left
/// empty by every eviction; its entries are moved into this layout at start.
const LAYOUT: &str = "v2";
const OLD_LAYOUT: &str = "v1";
/// Files are counted in whole blocks of this size, as `du` counts them.
pub const BLOCK: u64 = 4096;
/// At most one entry per this many bytes of `--cache-size`: twice mke2fs' default
/// bytes-per-inode, so a volume sized for the cache does not run out of inodes before bytes,
/// and the in-memory index stays within 8 MiB per GiB of `--cache-size`.
pub const BYTES_PER_ENTRY: u64 = 32 * 1024;
/// A writer whose object's length is unknown reserves at least this much at a time, and at
/// most [`RESERVE_MAX_STEP`] (growing with what it has written).
const RESERVE_MIN_STEP: u64 = 64 * 1024;
const RESERVE_MAX_STEP: u64 = 4 * 1024 * 1024;

/// The most inodes the cache directory holds: one per entry or file being written (at most
/// `cache_size / BYTES_PER_ENTRY` together), the 256 shards, and the cache directory itself
/// with `v2/`, `v2/tmp/` and `v2/objects/`.
pub fn inode_bound(cache_size: u64) -> u64 {
    (cache_size / BYTES_PER_ENTRY).max(1) + 256 + 4
}

/// The room a file of `len` bytes takes on disk.
pub fn blocks(len: u64) -> u64 {
    len.div_ceil(BLOCK).saturating_mul(BLOCK)
}

/// One stored entry as the index keeps it: the URL hash and the variant id, in binary (the
/// index holds up to millions of them). Ordered by URL first, so a URL's variants are one
/// range of the index.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
struct Slot {
    primary: [u8; 32],
    variant: [u8; 16],
}

impl Slot {
    fn of(key: &EntryKey) -> Option<Slot> {
        let mut s = Slot {
            primary: [0; 32],
            variant: [0; 16],
        };
        hex::decode_to_slice(&key.primary, &mut s.primary).ok()?;
        hex::decode_to_slice(&key.variant, &mut s.variant).ok()?;
        Some(s)
    }

    /// The file name, `<url-hash>.<variant>` in lower-case hex.
    fn file_name(&self) -> String {
        format!(
            "{}.{}",
            hex::encode(self.primary),
            hex::encode(self.variant)
        )
    }

    /// The slot a file name stands for; `None` for anything this layout did not write.
    fn parse(name: &str) -> Option<Slot> {
        let (p, v) = name.split_once('.')?;
        let s = Slot::of(&EntryKey {
            primary: p.to_string(),
            variant: v.to_string(),
        })?;
        // Upper-case hex would name the same entry twice.
        (s.file_name() == name).then_some(s)
    }

    fn shard(&self) -> String {
        hex::encode(&self.primary[..1])
    }

    /// Every slot of one URL.
    fn all_of(primary: [u8; 32]) -> RangeInclusive<Slot> {
        Slot {
            primary,
            variant: [0; 16],
        }..=Slot {
            primary,
            variant: [0xff; 16],
        }
    }
}

/// About 170 bytes per entry (`index_memory_per_entry` below; the memory formula's
/// `INDEX_PER_ENTRY`): a B-tree of the entries by URL, so that a lookup lists a URL's
/// variants as a range, and one of their last uses.
#[derive(Default)]
struct Index {
    items: BTreeMap<Slot, Item>,
    lru: BTreeMap<u64, Slot>,
    seq: u64,
    /// Bytes (in whole blocks) of the indexed files.
    total: u64,
    /// Bytes reserved by files being written in `tmp/`.
    reserved: u64,
    /// Files being written (each an inode).
    writers: u64,
    /// Metadata refreshed by a 304 since the file was written (lost at restart: the entry is
    /// then revalidated once more).
    refreshed: HashMap<Slot, Arc<Meta>>,
}

struct Item {
    size: u64,
    seq: u64,
    /// The [`stamp`] of the file when its checksum last matched; 0: not verified since start.
    verified: u64,
    /// Lookups that found this file since it was stored (or since start).
    hits: u32,
}

impl Index {
    /// Marks `slot` (of `size` bytes) as the most recently used, indexing it if it is new.
    fn touch(&mut self, slot: Slot, size: u64) -> &mut Item {
        use std::collections::btree_map::Entry;
        self.seq += 1;
        let seq = self.seq;
        self.lru.insert(seq, slot);
        match self.items.entry(slot) {
            Entry::Occupied(e) => {
                let item = e.into_mut();
                self.lru.remove(&item.seq);
                self.total = self.total - item.size + size;
                item.seq = seq;
                item.size = size;
                item
            }
            Entry::Vacant(e) => {
                self.total += size;
                e.insert(Item {
                    size,
                    seq,
                    verified: 0,
                    hits: 0,
                })
            }
        }
    }

    fn forget(&mut self, slot: &Slot) -> Option<u64> {
        let item = self.items.remove(slot)?;
        self.lru.remove(&item.seq);
        self.total -= item.size;
        self.refreshed.remove(slot);
        Some(item.size)
    }

    /// Takes least recently used entries out of the index until the indexed and reserved
    /// bytes fit in `max_bytes` and the entries and writers in `max_entries`. Their files
    /// are for the caller to delete.
    fn victims(&mut self, max_bytes: u64, max_entries: u64) -> Vec<Slot> {
        let mut out = Vec::new();
        while self.total + self.reserved > max_bytes
            || self.items.len() as u64 + self.writers > max_entries
        {
            let Some((_, slot)) = self.lru.first_key_value().map(|(k, s)| (*k, *s)) else {
                break;
            };
            self.forget(&slot);
            out.push(slot);
        }
        out
    }
}

#[derive(Default)]
pub struct DiskStats {
    pub evictions: AtomicU64,
    pub corrupt: AtomicU64,
    pub write_errors: AtomicU64,
}

pub struct Disk {
    root: PathBuf,
    max_bytes: u64,
    max_entries: u64,
    index: Mutex<Index>,
    /// Held (by blocking threads only) from choosing victims to having deleted their files,
    /// so that the room a writer reserves is free on disk before it writes.
    evicting: Mutex<()>,
    pub stats: DiskStats,
    full_warned: AtomicBool,
    scanned: AtomicBool,
    tmp_seq: AtomicU64,
    /// [`MAX_WRITERS`] permits: a fill's writer takes one before it takes a thread.
    writers: Arc<tokio::sync::Semaphore>,
}

/// Disk writers running at once, at most: each holds a blocking thread for its fill's whole
/// length (waiting for the body's next chunk, or for a slow disk). Half of tokio's blocking
/// pool (512 threads): however many slow downloads are filling, or however slow the disk,
/// lookups and the other file work still find threads, and the threads and their write
/// buffers stay bounded. A fill whose writer waits for a turn is served meanwhile; its
/// chunks wait in its queue (bounded like any writer's that falls behind: past the queue's
/// limit and the stall time, the disk copy is given up).
pub const MAX_WRITERS: usize = 256;

/// A stored response found on disk, with its file open: the body can still be read after
/// the entry is evicted or replaced.
pub struct DiskHit {
    pub meta: Arc<Meta>,
    pub path: PathBuf,
    pub(super) file: Arc<std::fs::File>,
    /// Where the body starts in the file.
    pub offset: u64,
    pub len: u64,
    /// The open file's [`stamp`].
    pub(super) stamp: u64,
    /// Whether the index knows this very file (same stamp) as verified.
    pub(super) verified: bool,
    /// The checksum of the file's version.
    pub(super) algo: Algo,
    /// Lookups that found this entry since it was stored or since start, this one included
    /// (how hot it is: see `Cache::lookup`).
    pub(super) hits: u32,
}

/// A file's identity and last change (inode, size, change time) folded into a non-zero
/// number: any write to the file or its replacement changes it. The change time cannot be set
/// from user space, unlike the modification time.
fn stamp(m: &std::fs::Metadata) -> u64 {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut h = std::hash::DefaultHasher::new();
    (m.dev(), m.ino(), m.len(), m.ctime(), m.ctime_nsec()).hash(&mut h);
    h.finish().max(1)
}

impl Disk {
    /// Prepares `dir` (creating the layout), checks that it is writable and clears leftovers
    /// of interrupted writes. `Err` explains why the disk tier cannot be used.
    pub async fn open(dir: &Path, max_bytes: u64) -> Result<Arc<Disk>, String> {
        let root = dir.join(LAYOUT);
        let tmp = root.join("tmp");
        let r = root.clone();
        tokio::task::spawn_blocking(move || prepare(&r))
            .await
            .map_err(|e| e.to_string())??;
        let probe = tmp.join(format!("probe-{}", std::process::id()));
        tokio::fs::write(&probe, b"cuttle")
            .await
            .map_err(|e| format!("cannot write in {}: {e}", tmp.display()))?;
        let _ = tokio::fs::remove_file(&probe).await;
        Ok(Arc::new(Disk {
            root,
            max_bytes,
            max_entries: (max_bytes / BYTES_PER_ENTRY).max(1),
            index: Mutex::new(Index::default()),
            evicting: Mutex::new(()),
            stats: DiskStats::default(),
            full_warned: AtomicBool::new(false),
            scanned: AtomicBool::new(false),
            tmp_seq: AtomicU64::new(0),
            writers: Arc::new(tokio::sync::Semaphore::new(MAX_WRITERS)),
        }))
    }

    fn path_for(&self, slot: &Slot) -> PathBuf {
        self.root
            .join("objects")
            .join(slot.shard())
            .join(slot.file_name())
    }

    /// Moves entries of the old layout in, then rebuilds the index from the files present
    /// (oldest modification first, so the LRU order survives a restart approximately) and
    /// enforces the bounds. Files this layout did not write are deleted: they would count
    /// in `du` without being bounded.
    pub async fn scan(self: &Arc<Disk>) {
        let root = self.root.clone();
        let found = tokio::task::spawn_blocking(move || {
            if let Some(parent) = root.parent() {
                migrate(&parent.join(OLD_LAYOUT), &root.join("objects"));
            }
            scan_objects(&root.join("objects"))
        })
        .await
        .unwrap_or_default();
        let count = found.len();
        {
            let mut idx = self.index.lock();
            for (slot, size, _) in found {
                if !idx.items.contains_key(&slot) {
                    idx.touch(slot, size);
                }
            }
        }
        self.scanned.store(true, Ordering::Release);
        let (objects, bytes) = self.usage();
        tracing::info!(entries = count, objects, bytes, "disk cache index rebuilt");
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.evict_to(me.max_bytes)).await;
    }

    pub fn is_scanned(&self) -> bool {
        self.scanned.load(Ordering::Acquire)
    }

    /// The slots stored for a URL: from the index, or before the scan has finished, from its
    /// shard directory.
    async fn slots_of(&self, primary: [u8; 32]) -> Vec<Slot> {
        // Once the scan is done, a URL with no indexed variant is a miss without touching
        // the disk.
        if self.is_scanned() {
            let idx = self.index.lock();
            return idx
                .items
                .range(Slot::all_of(primary))
                .map(|(s, _)| *s)
                .collect();
        }
        let dir = self.root.join("objects").join(hex::encode(&primary[..1]));
        let prefix = format!("{}.", hex::encode(primary));
        let mut out = Vec::new();
        if let Ok(mut rd) = tokio::fs::read_dir(&dir).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(&prefix)
                    && let Some(s) = Slot::parse(&name)
                {
                    out.push(s);
                }
            }
        }
        out
    }

    /// The stored variant of `primary` that `req` selects, if any.
    pub async fn lookup(&self, primary: &PrimaryKey, req: &HeaderMap) -> Option<DiskHit> {
        let mut p = [0u8; 32];
        hex::decode_to_slice(primary.hex(), &mut p).ok()?;
        for slot in self.slots_of(p).await {
            let path = self.path_for(&slot);
            let hit = match read_head(path.clone()).await {
                Ok(h) => h,
                // Evicted or replaced since it was listed: not there, nothing to report.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.index.lock().forget(&slot);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unreadable cache file");
                    self.discard_slot(&slot).await;
                    continue;
                }
            };
            if hit.meta.url != primary.url() {
                continue;
            }
            let meta = self
                .index
                .lock()
                .refreshed
                .get(&slot)
                .cloned()
                .unwrap_or_else(|| hit.meta.clone());
            if meta.variant.matches(req) {
                let size = blocks(hit.offset + hit.len + TRAILER_LEN as u64);
                let mut idx = self.index.lock();
                let verified = idx
                    .items
                    .get(&slot)
                    .is_some_and(|i| i.verified == hit.stamp);
                // Evicted while it was opened: served from the open file, not indexed again.
                let mut hits = 1;
                if self.is_scanned() && !idx.items.contains_key(&slot) {
                    drop(idx);
                } else {
                    let item = idx.touch(slot, size);
                    item.hits = item.hits.saturating_add(1);
                    hits = item.hits;
                }
                return Some(DiskHit {
                    meta,
                    verified,
                    hits,
                    ..hit
                });
            }
        }
        None
    }

    /// Remembers that the file of `key` with `stamp` matched its checksum.
    fn mark_verified(&self, key: &EntryKey, stamp: u64) {
        if let Some(slot) = Slot::of(key)
            && let Some(item) = self.index.lock().items.get_mut(&slot)
        {
            item.verified = stamp;
        }
    }

    /// Reads and verifies the whole body (small objects) from the open file.
    pub async fn read_verified(&self, hit: &DiskHit) -> Option<Bytes> {
        let file = hit.file.clone();
        let total = hit.offset + hit.len + TRAILER_LEN as u64;
        let data = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; usize::try_from(total).ok()?];
            file.read_exact_at(&mut buf, 0).ok()?;
            Some(buf)
        })
        .await
        .ok()
        .flatten();
        let body_end = (hit.offset + hit.len) as usize;
        let ok = data.as_ref().is_some_and(|data| {
            data.len() == body_end + TRAILER_LEN
                && meta::decode_trailer(&data[body_end..])
                    .ok()
                    .is_some_and(|(len, sum)| {
                        len == hit.len
                            && (hit.verified || hit.algo.digest(&data[PREFIX_LEN..body_end]) == sum)
                    })
        });
        let Some(data) = data.filter(|_| ok) else {
            self.corrupt(hit).await;
            return None;
        };
        if !hit.verified {
            self.mark_verified(&hit.meta.key(), hit.stamp);
        }
        Some(Bytes::from(data).slice(hit.offset as usize..body_end))
    }

    /// Streams the body of `hit` from `start` to `end`, verifying the checksum when the whole
    /// file is read and was not verified before. A mismatch ends the body with an error (the
    /// client sees an aborted transfer, never a complete-looking wrong one) and deletes the
    /// file.
    pub fn stream(self: &Arc<Disk>, hit: &DiskHit, start: u64, end: u64) -> Body {
        struct St {
            disk: Arc<Disk>,
            path: PathBuf,
            key: EntryKey,
            file: Arc<std::fs::File>,
            /// Position in the file; reading starts at the metadata when verifying.
            pos: u64,
            body_start: u64,
            from: u64,
            to: u64,
            hasher: Option<Checksum>,
            body_len: u64,
            stamp: u64,
            done: bool,
        }
        let verify = start == 0 && end == hit.len && !hit.verified;
        let st = St {
            disk: self.clone(),
            path: hit.path.clone(),
            key: hit.meta.key(),
            file: hit.file.clone(),
            pos: if verify {
                PREFIX_LEN as u64
            } else {
                hit.offset + start
            },
            body_start: hit.offset,
            from: hit.offset + start,
            to: hit.offset + end,
            hasher: verify.then(|| hit.algo.hasher()),
            body_len: hit.len,
            stamp: hit.stamp,
            done: false,
        };
        let stream = futures_util::stream::unfold(st, |mut st| async move {
            if st.done {
                return None;
            }
            let r: Result<Option<Bytes>, BoxError> = async {
                loop {
                    if st.pos >= st.to {
                        if let Some(h) = st.hasher.take() {
                            check_trailer(&st.file, st.to, h, st.body_len).await?;
                            st.disk.mark_verified(&st.key, st.stamp);
                        }
                        return Ok(None);
                    }
                    let want = ((st.to - st.pos) as usize).min(READ_CHUNK);
                    let buf = read_at(st.file.clone(), st.pos, want).await?;
                    let n = buf.len();
                    if n == 0 {
                        return Err("cache file shorter than its metadata says".into());
                    }
                    if let Some(h) = st.hasher.as_mut() {
                        h.update(&buf);
                    }
                    let chunk_start = st.pos;
                    st.pos += n as u64;
                    // While verifying, the metadata is hashed but not sent.
                    if st.pos <= st.from.max(st.body_start) {
                        continue;
                    }
                    // The last bytes go out only once the checksum matched: a corrupt file
                    // ends as an aborted transfer, never as a complete-looking body.
                    if st.pos >= st.to
                        && let Some(h) = st.hasher.take()
                    {
                        check_trailer(&st.file, st.to, h, st.body_len).await?;
                        st.disk.mark_verified(&st.key, st.stamp);
                    }
                    let skip = st.from.saturating_sub(chunk_start) as usize;
                    return Ok(Some(buf.slice(skip.min(n)..)));
                }
            }
            .await;
            match r {
                Ok(Some(b)) => Some((Ok(http_body::Frame::data(b)), st)),
                Ok(None) => None,
                Err(e) => {
                    st.done = true;
                    tracing::warn!(path = %st.path.display(), error = %e, "corrupt cache file discarded");
                    st.disk.stats.corrupt.fetch_add(1, Ordering::Relaxed);
                    st.disk.discard(&st.key).await;
                    Some((Err(e), st))
                }
            }
        });
        crate::http::body::boxed(http_body_util::StreamBody::new(stream))
    }

    async fn corrupt(&self, hit: &DiskHit) {
        tracing::warn!(path = %hit.path.display(), "cache file failed its checksum; discarded");
        self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
        self.discard(&hit.meta.key()).await;
    }

    /// Deletes one entry.
    pub async fn discard(&self, key: &EntryKey) {
        if let Some(slot) = Slot::of(key) {
            self.discard_slot(&slot).await;
        }
    }

    async fn discard_slot(&self, slot: &Slot) {
        let _ = tokio::fs::remove_file(self.path_for(slot)).await;
        self.index.lock().forget(slot);
    }

    /// Deletes every variant of a URL. Returns how many were removed.
    pub async fn remove_primary(&self, primary: &str) -> usize {
        let mut p = [0u8; 32];
        if hex::decode_to_slice(primary, &mut p).is_err() {
            return 0;
        }
        let mut n = 0;
        for slot in self.slots_of(p).await {
            if tokio::fs::remove_file(self.path_for(&slot)).await.is_ok() {
                n += 1;
            }
            self.index.lock().forget(&slot);
        }
        n
    }

    /// Remembers refreshed metadata for an entry (after a 304).
    pub fn refresh(&self, meta: Arc<Meta>) {
        let Some(slot) = Slot::of(&meta.key()) else {
            return;
        };
        let mut idx = self.index.lock();
        if idx.items.contains_key(&slot) {
            idx.refreshed.insert(slot, meta);
        }
    }

    /// The writers' permits ([`MAX_WRITERS`]); a fill's writer holds one while it runs.
    pub fn writer_slots(&self) -> Arc<tokio::sync::Semaphore> {
        self.writers.clone()
    }

    /// Starts writing a new entry (blocking file I/O: call from a blocking context). Its
    /// room is reserved first (the whole object when its length is known), evicting older
    /// entries; `Err` when the cache cannot make room for it.
    pub fn writer(self: &Arc<Disk>, meta: &Meta) -> io::Result<DiskWriter> {
        let slot = Slot::of(&meta.key())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad entry key"))?;
        let prefix = meta
            .encode_prefix()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let first = blocks(
            prefix.len() as u64
                + meta.content_length().unwrap_or(RESERVE_MIN_STEP)
                + TRAILER_LEN as u64,
        );
        if !self.reserve(first, true) {
            return Err(io::Error::other(
                "no room in the disk cache for this object",
            ));
        }
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()));
        let mut w = DiskWriter {
            disk: self.clone(),
            file: None,
            read: None,
            tmp,
            hasher: Algo::CURRENT.hasher(),
            body_len: 0,
            body_offset: prefix.len() as u64,
            slot,
            reserved: first,
            committed: false,
        };
        let file = std::fs::File::create(&w.tmp).map_err(|e| self.write_failed(e))?;
        // Readers of the fill keep this handle: it reads the same file after the rename, and
        // after an eviction.
        w.read = Some(Arc::new(
            std::fs::File::open(&w.tmp).map_err(|e| self.write_failed(e))?,
        ));
        let mut file = io::BufWriter::with_capacity(256 * 1024, file);
        file.write_all(&prefix)
            .and_then(|_| file.flush())
            .map_err(|e| self.write_failed(e))?;
        w.file = Some(file);
        w.hasher.update(&prefix[PREFIX_LEN..]);
        Ok(w)
    }

    /// Reserves `bytes` (and one entry when `entry`) for a file being written, evicting least
    /// recently used entries and deleting their files before returning. False when writers
    /// alone already hold the whole bound.
    fn reserve(&self, bytes: u64, entry: bool) -> bool {
        let _evicting = self.evicting.lock();
        let victims = {
            let mut idx = self.index.lock();
            let entries = u64::from(entry);
            if idx.reserved + bytes > self.max_bytes || idx.writers + entries > self.max_entries {
                return false;
            }
            idx.reserved += bytes;
            idx.writers += entries;
            idx.victims(self.max_bytes, self.max_entries)
        };
        self.delete(&victims);
        true
    }

    /// Gives back a writer's reservation.
    fn release(&self, bytes: u64, entry: bool) {
        let mut idx = self.index.lock();
        idx.reserved = idx.reserved.saturating_sub(bytes);
        idx.writers = idx.writers.saturating_sub(u64::from(entry));
    }

    fn delete(&self, victims: &[Slot]) {
        for slot in victims {
            let _ = std::fs::remove_file(self.path_for(slot));
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a write error; a full disk is logged once and makes room.
    fn write_failed(&self, e: io::Error) -> io::Error {
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        if is_disk_full(&e) {
            if !self.full_warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "cache disk is full: proxying uncached while old entries are evicted"
                );
            }
            let total = self.index.lock().total;
            self.evict_to(total / 10 * 9);
        } else if !self.full_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "cannot write to the cache disk: proxying uncached");
        }
        e
    }

    /// Evicts least recently used entries until the indexed and reserved bytes are at most
    /// `target` (blocking file removal).
    pub fn evict_to(&self, target: u64) {
        let _evicting = self.evicting.lock();
        let victims = self
            .index
            .lock()
            .victims(target.min(self.max_bytes), self.max_entries);
        self.delete(&victims);
    }

    /// (objects, bytes) on disk, as indexed (bytes in whole blocks).
    pub fn usage(&self) -> (u64, u64) {
        let idx = self.index.lock();
        (idx.items.len() as u64, idx.total)
    }

    /// Bytes reserved by files being written.
    pub fn reserved(&self) -> u64 {
        self.index.lock().reserved
    }

    pub fn capacity(&self) -> u64 {
        self.max_bytes
    }
}

/// Whether a write failed for want of space: a full filesystem, or a quota (container
/// volumes often have one) that is full; either way evicting makes room. By kind, not by a
/// platform's errno number.
fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Makes the layout: `tmp/` emptied of interrupted writes, `objects/` with its 256 shards.
fn prepare(root: &Path) -> Result<(), String> {
    let tmp = root.join("tmp");
    let objects = root.join("objects");
    let mk = |d: &Path| {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))
    };
    mk(&tmp)?;
    if let Ok(rd) = std::fs::read_dir(&tmp) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    for b in 0..=255u8 {
        mk(&objects.join(hex::encode([b])))?;
    }
    Ok(())
}

/// Moves the entries of the v1 layout (`objects/<aa>/<url-hash>/<variant>`) into `objects`
/// (the file format is the same), then deletes what is left of it: its temporary files and
/// its per-URL directories. Nothing here fails the start: what cannot be moved is deleted.
fn migrate(old: &Path, objects: &Path) {
    if !old.is_dir() {
        return;
    }
    let mut moved = 0u64;
    if let Ok(shards) = std::fs::read_dir(old.join("objects")) {
        for shard in shards.flatten() {
            let Ok(prims) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for prim in prims.flatten() {
                let primary = prim.file_name().to_string_lossy().into_owned();
                let Ok(vars) = std::fs::read_dir(prim.path()) else {
                    continue;
                };
                for var in vars.flatten() {
                    let variant = var.file_name().to_string_lossy().into_owned();
                    let Some(slot) = Slot::parse(&format!("{primary}.{variant}")) else {
                        continue;
                    };
                    let dest = objects.join(slot.shard()).join(slot.file_name());
                    if std::fs::rename(var.path(), dest).is_ok() {
                        moved += 1;
                    }
                }
            }
        }
    }
    match std::fs::remove_dir_all(old) {
        Ok(()) => tracing::info!(moved, "disk cache: the v1 layout was moved to v2"),
        Err(e) => {
            tracing::warn!(dir = %old.display(), error = %e, moved, "disk cache: cannot remove the old v1 layout")
        }
    }
}

/// The entries under `objects` (slot, size in blocks, modification time), oldest first.
/// Anything else found there is deleted.
fn scan_objects(objects: &Path) -> Vec<(Slot, u64, Option<std::time::SystemTime>)> {
    let mut found = Vec::new();
    let Ok(shards) = std::fs::read_dir(objects) else {
        return found;
    };
    for shard in shards.flatten() {
        let shard_name = shard.file_name().to_string_lossy().into_owned();
        let Ok(files) = std::fs::read_dir(shard.path()) else {
            let _ = std::fs::remove_file(shard.path());
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let Ok(md) = f.metadata() else { continue };
            match Slot::parse(&name) {
                Some(slot) if md.is_file() && slot.shard() == shard_name => {
                    found.push((slot, blocks(md.len()), md.modified().ok()));
                }
                _ if md.is_dir() => {
                    let _ = std::fs::remove_dir_all(f.path());
                }
                _ => {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
    }
    found.sort_by_key(|(_, _, t)| *t);
    found
}

/// Opens a stored file and decodes its head (blocking I/O on a blocking thread).
async fn read_head(path: PathBuf) -> io::Result<DiskHit> {
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&path)?;
        let m = f.metadata()?;
        let (meta, offset, len, algo) = decode_head(&mut f, m.len())?;
        Ok(DiskHit {
            meta: Arc::new(meta),
            path,
            file: Arc::new(f),
            offset,
            len,
            stamp: stamp(&m),
            verified: false,
            hits: 0,
            algo,
        })
    })
    .await
    .map_err(io::Error::other)?
}

/// Decodes the head of a stored file of `file_len` bytes read from `f`: the metadata, the
/// offset of the body, its length, and the checksum the file's version uses. Anything
/// malformed is `InvalidData`.
pub(crate) fn decode_head(f: &mut impl Read, file_len: u64) -> io::Result<(Meta, u64, u64, Algo)> {
    let bad = |e: meta::MetaError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let mut prefix = [0u8; PREFIX_LEN];
    f.read_exact(&mut prefix)?;
    let (meta_len, algo) = meta::decode_prefix(&prefix).map_err(bad)?;
    let min = (PREFIX_LEN + meta_len + TRAILER_LEN) as u64;
    if file_len < min {
        return Err(bad(meta::MetaError::Truncated));
    }
    let mut json = vec![0u8; meta_len];
    f.read_exact(&mut json)?;
    let meta = meta::decode_meta(&json).map_err(bad)?;
    Ok((meta, (PREFIX_LEN + meta_len) as u64, file_len - min, algo))
}

/// Reads up to `want` bytes at `pos` (fewer at the end of the file, or when only part of
/// the range is in the page cache). Reads of at most a chunk go into a pooled buffer and,
/// on Linux, are served straight from the page cache on the calling task when the data is
/// there (`preadv2` with `RWF_NOWAIT`, which never waits for the disk); otherwise, and for
/// larger reads, on a blocking thread.
pub(super) async fn read_at(file: Arc<std::fs::File>, pos: u64, want: usize) -> io::Result<Bytes> {
    if want > READ_CHUNK {
        return tokio::task::spawn_blocking(move || {
            let mut buf = BytesMut::zeroed(want);
            let n = file.read_at(&mut buf, pos)?;
            buf.truncate(n);
            Ok(buf.freeze())
        })
        .await
        .map_err(io::Error::other)?;
    }
    let mut chunk = Chunk {
        buf: CHUNKS.lock().pop().unwrap_or_else(|| vec![0; READ_CHUNK]),
        len: 0,
    };
    #[cfg(target_os = "linux")]
    if let Some(n) = read_cached(&file, &mut chunk.buf[..want], pos) {
        chunk.len = n;
        return Ok(Bytes::from_owner(chunk));
    }
    tokio::task::spawn_blocking(move || {
        chunk.len = file.read_at(&mut chunk.buf[..want], pos)?;
        Ok(Bytes::from_owner(chunk))
    })
    .await
    .map_err(io::Error::other)?
}

/// The bytes at `pos` that are in the page cache, read without waiting for the disk: `None`
/// when none are (`EAGAIN`), at the end of the file, or where the file system cannot tell.
#[cfg(target_os = "linux")]
fn read_cached(file: &std::fs::File, buf: &mut [u8], pos: u64) -> Option<usize> {
    let flags = rustix::io::ReadWriteFlags::NOWAIT;
    match rustix::io::preadv2(file, &mut [io::IoSliceMut::new(buf)], pos, flags) {
        Ok(n) if n > 0 => Some(n),
        _ => None,
    }
}

/// Reads the trailer at `at` (after the body) and compares it with the running checksum.
async fn check_trailer(
    file: &Arc<std::fs::File>,
    at: u64,
    hasher: Checksum,
    body_len: u64,
) -> Result<(), BoxError> {
    let t = read_at(file.clone(), at, TRAILER_LEN).await?;
    let (len, sum) = meta::decode_trailer(&t).map_err(|e| e.to_string())?;
    if len != body_len || hasher.finalize() != sum {
        return Err("checksum mismatch".into());
    }
    Ok(())
}

/// An entry being written to `tmp/` (blocking I/O, from the fill's writer thread); renamed
/// into `objects/` by [`DiskWriter::commit`], deleted if dropped before. It holds a
/// reservation of room in the cache that grows ahead of what it writes.
pub struct DiskWriter {
    disk: Arc<Disk>,
    file: Option<io::BufWriter<std::fs::File>>,
    /// A read handle on the same file, for the fill's readers.
    read: Option<Arc<std::fs::File>>,
    tmp: PathBuf,
    hasher: Checksum,
    body_len: u64,
    body_offset: u64,
    slot: Slot,
    /// Bytes reserved for this file (released when it is committed or dropped).
    reserved: u64,
    committed: bool,
}

impl DiskWriter {
    /// Where the body starts in the file.
    pub fn body_offset(&self) -> u64 {
        self.body_offset
    }

    /// The temporary file, readable while it is written.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// A handle that reads the file while it is written and after it is committed or
    /// evicted (coalesced readers follow it).
    pub fn reader(&self) -> Option<Arc<std::fs::File>> {
        self.read.clone()
    }

    /// Body bytes written so far (buffered ones included; see [`DiskWriter::flush`]).
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    pub fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            return Err(io::Error::other("writer closed"));
        }
        // The room comes first: the bytes must not reach the disk beyond the bound.
        let need = blocks(self.body_offset + self.body_len + (chunk.len() + TRAILER_LEN) as u64);
        if need > self.reserved {
            let step = self
                .reserved
                .clamp(RESERVE_MIN_STEP, RESERVE_MAX_STEP)
                .max(need - self.reserved);
            let step = blocks(step);
            let least = blocks(need - self.reserved);
            // Growing ahead saves evictions; near the bound, only what this chunk needs.
            let got = [step, least]
                .into_iter()
                .find(|n| self.disk.reserve(*n, false));
            let Some(got) = got else {
                return Err(io::Error::other(
                    "no room in the disk cache for this object",
                ));
            };
            self.reserved += got;
        }
        let Some(f) = self.file.as_mut() else {
            return Err(io::Error::other("writer closed"));
        };
        if let Err(e) = f.write_all(chunk) {
            return Err(self.disk.write_failed(e));
        }
        self.hasher.update(chunk);
        self.body_len += chunk.len() as u64;
        Ok(())
    }

    /// Makes everything written so far readable from the file.
    pub fn flush(&mut self) -> io::Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Err(io::Error::other("writer closed"));
        };
        f.flush().map_err(|e| self.disk.write_failed(e))
    }

    /// Writes the trailer, renames the file into place and indexes it. Returns the path.
    pub fn commit(mut self) -> io::Result<PathBuf> {
        let Some(mut f) = self.file.take() else {
            return Err(io::Error::other("writer closed"));
        };
        let sum = self.hasher.clone().finalize();
        let trailer = meta::encode_trailer(self.body_len, &sum);
        let dest = self.disk.path_for(&self.slot);
        let r = (|| {
            f.write_all(&trailer)?;
            f.flush()?;
            let size = blocks(f.get_ref().metadata()?.len());
            drop(f);
            if let Err(e) = std::fs::rename(&self.tmp, &dest) {
                // A shard directory removed by hand: made again, once.
                let parent = dest.parent().ok_or(e)?;
                std::fs::create_dir_all(parent)?;
                std::fs::rename(&self.tmp, &dest)?;
            }
            Ok::<_, io::Error>(size)
        })();
        match r {
            Ok(size) => {
                self.committed = true;
                {
                    let mut idx = self.disk.index.lock();
                    idx.reserved = idx.reserved.saturating_sub(self.reserved);
                    idx.writers = idx.writers.saturating_sub(1);
                    self.reserved = 0;
                    idx.refreshed.remove(&self.slot);
                    // A new file: verified at its first whole read, not hit yet.
                    let item = idx.touch(self.slot, size);
                    item.verified = 0;
                    item.hits = 0;
                }
                // Replacing an entry of another size can cross the bound by the difference.
                self.disk.evict_to(self.disk.max_bytes);
                Ok(dest)
            }
            Err(e) => Err(self.disk.write_failed(e)),
        }
    }
}

impl Drop for DiskWriter {
    fn drop(&mut self) {
        if !self.committed {
            // A partial entry never leaves tmp/; removing it is all that is left to do.
            let _ = std::fs::remove_file(&self.tmp);
            self.disk.release(self.reserved, true);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::cache::key::Variant;
    use crate::cache::policy::{StoredPolicy, request_view};
    use http::StatusCode;
    use std::time::SystemTime;

    /// A cacheable 200 for `url` (max-age=60), with a `Content-Length` when `len` is known.
    pub(in crate::cache) fn meta(url: &str, len: Option<usize>) -> Meta {
        meta_varying(url, len, Variant::default())
    }

    /// [`meta`] for one `Vary` selection.
    pub(in crate::cache) fn meta_varying(url: &str, len: Option<usize>, variant: Variant) -> Meta {
        let req = request_view(
            &http::Method::GET,
            &url.parse().unwrap(),
            "h",
            &HeaderMap::new(),
            None,
        );
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", "max-age=60".parse().unwrap());
        if let Some(n) = len {
            headers.insert("content-length", n.to_string().parse().unwrap());
        }
        let policy =
            StoredPolicy::new(&req, StatusCode::OK, &headers, SystemTime::now(), None).unwrap();
        Meta::new(
            &PrimaryKey::from_url(url.into()),
            variant,
            StatusCode::OK,
            headers,
            policy,
        )
    }

    pub(in crate::cache) async fn store(
        d: &Arc<Disk>,
        url: &str,
        body: &[u8],
        with_len: bool,
    ) -> PathBuf {
        let m = meta(url, with_len.then_some(body.len()));
        let (d, body) = (d.clone(), body.to_vec());
        tokio::task::spawn_blocking(move || {
            let mut w = d.writer(&m).unwrap();
            for c in body.chunks(100_000) {
                w.write(c).unwrap();
            }
            w.commit().unwrap()
        })
        .await
        .unwrap()
    }

    /// What `du` would count under `dir`: files in whole blocks, and every directory.
    pub(in crate::cache) fn du(dir: &Path) -> (u64, u64, u64) {
        let (mut bytes, mut files, mut dirs) = (0, 0, 0);
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            dirs += 1;
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let md = e.metadata().unwrap();
                if md.is_dir() {
                    stack.push(e.path());
                } else {
                    files += 1;
                    bytes += blocks(md.len());
                }
            }
        }
        (bytes, files, dirs)
    }

    pub(in crate::cache) fn key(url: &str) -> PrimaryKey {
        PrimaryKey::from_url(url.into())
    }

    #[test]
    fn slot_names_round_trip_and_reject_others() {
        let k = meta("http://h/a", None).key();
        let s = Slot::of(&k).unwrap();
        assert_eq!(s.file_name(), format!("{}.{}", k.primary, k.variant));
        assert_eq!(Slot::parse(&s.file_name()), Some(s));
        assert_eq!(s.shard(), k.primary[..2]);
        assert_eq!(Slot::parse(&s.file_name().to_uppercase()), None);
        assert_eq!(Slot::parse("probe-12"), None);
        assert_eq!(Slot::parse(&format!("{}.{}", k.primary, "ab")), None);
        assert_eq!(blocks(0), 0);
        assert_eq!(blocks(1), BLOCK);
        assert_eq!(blocks(BLOCK), BLOCK);
        assert_eq!(blocks(BLOCK + 1), 2 * BLOCK);
    }

    /// Churn far past the bound: what `du` sees stays within it (plus the fixed 256 shards),
    /// no directory is added, and the index agrees with the files.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn churn_keeps_du_and_inodes_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        const MAX: u64 = 1024 * 1024;
        let d = Disk::open(dir.path(), MAX).await.unwrap();
        d.scan().await;
        let (_, _, dirs_before) = du(dir.path());
        for i in 0..300 {
            // Sizes that are not whole blocks, some with a known length, some without.
            let body = vec![i as u8; 5000 + (i * 997) % 60_000];
            store(&d, &format!("http://h/{i}"), &body, i % 2 == 0).await;
            let (bytes, files, dirs) = du(&dir.path().join("v2"));
            assert!(bytes <= MAX, "{bytes} bytes on disk after {i}");
            let (objects, indexed) = d.usage();
            assert_eq!((objects, indexed), (files, bytes), "index and files agree");
            assert_eq!(dirs + 1, dirs_before, "no directory added");
        }
        assert!(d.stats.evictions.load(Ordering::Relaxed) > 250);
        assert_eq!(d.reserved(), 0);
        // The most recent entry is still there.
        let hit = d.lookup(&key("http://h/299"), &HeaderMap::new()).await;
        assert!(hit.is_some());
        assert!(
            d.lookup(&key("http://h/0"), &HeaderMap::new())
                .await
                .is_none()
        );
    }

    /// Entries are capped at one per 32 KiB of the bound, even when they are tiny.
    #[tokio::test]
    async fn tiny_entries_are_capped_by_count() {
        let dir = tempfile::tempdir().unwrap();
        let d = Disk::open(dir.path(), 64 * BYTES_PER_ENTRY).await.unwrap();
        d.scan().await;
        for i in 0..200 {
            store(&d, &format!("http://h/t{i}"), b"x", true).await;
        }
        let (objects, _) = d.usage();
        assert_eq!(objects, 64);
        assert_eq!(du(&dir.path().join("v2/objects")).1, 64);
    }

    /// A file being written reserves its room first: with the cache full, starting a large
    /// write evicts before the bytes land, and an object larger than the bound is refused.
    #[tokio::test]
    async fn writers_reserve_room_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        const MAX: u64 = 512 * 1024;
        let d = Disk::open(dir.path(), MAX).await.unwrap();
        d.scan().await;
        for i in 0..7 {
            store(&d, &format!("http://h/f{i}"), &vec![1u8; 60_000], true).await;
        }
        let d2 = d.clone();
        let root = dir.path().join("v2");
        tokio::task::spawn_blocking(move || {
            let mut w = d2.writer(&meta("http://h/big", None)).unwrap();
            for _ in 0..40 {
                w.write(&[7u8; 10_000]).unwrap();
                w.flush().unwrap();
                let (bytes, _, _) = du(&root);
                assert!(bytes <= MAX, "{bytes} with a writer in tmp/");
            }
            drop(w);
            assert!(
                d2.writer(&meta("http://h/huge", Some(MAX as usize)))
                    .is_err()
            );
        })
        .await
        .unwrap();
        assert_eq!(d.reserved(), 0);
        assert!(du(&dir.path().join("v2/tmp")).1 == 0);
    }

    /// A hit whose entry is evicted (or replaced) while it is served still reads its whole,
    /// verified body from the open file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hit_outlives_the_eviction_of_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = Disk::open(dir.path(), 1 << 20).await.unwrap();
        d.scan().await;
        let body: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        store(&d, "http://h/e", &body, true).await;
        let hit = d
            .lookup(&key("http://h/e"), &HeaderMap::new())
            .await
            .unwrap();
        d.evict_to(0);
        assert!(!hit.path.exists());
        let got = http_body_util::BodyExt::collect(d.stream(&hit, 0, hit.len))
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&got[..], &body[..]);
        assert_eq!(&d.read_verified(&hit).await.unwrap()[..], &body[..]);
        assert_eq!(d.stats.corrupt.load(Ordering::Relaxed), 0);
        // A lookup that finds the file gone is a plain miss.
        assert!(
            d.lookup(&key("http://h/e"), &HeaderMap::new())
                .await
                .is_none()
        );
    }

    /// A directory of the v1 layout is moved into v2 at start; its empty directories and
    /// temporary files are gone; stray files under objects/ are deleted.
    #[tokio::test]
    async fn v1_layout_is_migrated_and_strays_removed() {
        let dir = tempfile::tempdir().unwrap();
        // Write an entry with the v2 code, then lay it out as v1 would have.
        {
            let d = Disk::open(dir.path(), 1 << 20).await.unwrap();
            store(&d, "http://h/old", b"old body", true).await;
        }
        let k = meta("http://h/old", None).key();
        let s = Slot::of(&k).unwrap();
        let v1 = dir.path().join("v1");
        let vdir = v1.join("objects").join(&k.primary[..2]).join(&k.primary);
        std::fs::create_dir_all(&vdir).unwrap();
        std::fs::create_dir_all(v1.join("objects/ab/").join("cd".repeat(32))).unwrap();
        std::fs::create_dir_all(v1.join("tmp")).unwrap();
        std::fs::write(v1.join("tmp/123-4"), b"partial").unwrap();
        let v2obj = dir.path().join("v2/objects");
        std::fs::rename(
            v2obj.join(s.shard()).join(s.file_name()),
            vdir.join(&k.variant),
        )
        .unwrap();
        std::fs::write(v2obj.join("00/stray"), b"x").unwrap();
        std::fs::create_dir_all(v2obj.join("00/somedir")).unwrap();

        let d = Disk::open(dir.path(), 1 << 20).await.unwrap();
        d.scan().await;
        assert!(!v1.exists());
        assert!(!v2obj.join("00/stray").exists());
        assert!(!v2obj.join("00/somedir").exists());
        let hit = d
            .lookup(&key("http://h/old"), &HeaderMap::new())
            .await
            .unwrap();
        assert_eq!(&d.read_verified(&hit).await.unwrap()[..], b"old body");
        assert_eq!(d.usage().0, 1);
    }

    /// The index's memory per entry, for the formula's `INDEX_PER_ENTRY` (README "Sizing
    /// memory"): `cargo test --lib index_memory_per_entry -- --ignored --nocapture`. It reads
    /// this process's RSS, so it runs alone.
    #[test]
    #[ignore]
    fn index_memory_per_entry() {
        fn rss() -> u64 {
            let s = std::fs::read_to_string("/proc/self/status").unwrap();
            let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
        }
        const N: u64 = 1_000_000;
        let before = rss();
        let mut idx = Index::default();
        for i in 0..N {
            let mut s = Slot {
                primary: [0; 32],
                variant: [0; 16],
            };
            s.primary[..8].copy_from_slice(&Algo::Sha256.digest(&i.to_le_bytes())[..8]);
            s.variant[0] = (i % 3) as u8;
            idx.touch(s, 8192);
        }
        let per = (rss() - before) / N;
        println!("disk index: {per} bytes per entry ({N} entries)");
        assert!(per <= crate::config::sizing::INDEX_PER_ENTRY, "{per}");
        let p = Slot {
            primary: [1; 32],
            variant: [0; 16],
        };
        idx.touch(p, 1);
        idx.touch(
            Slot {
                variant: [0xff; 16],
                ..p
            },
            1,
        );
        idx.touch(
            Slot {
                primary: [2; 32],
                ..p
            },
            1,
        );
        assert_eq!(idx.items.range(Slot::all_of([1; 32])).count(), 2);
        drop(idx);
    }

    /// Before the scan has finished, lookups list the shard directory.
    #[tokio::test]
    async fn lookup_before_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        {
            let d = Disk::open(dir.path(), 1 << 20).await.unwrap();
            store(&d, "http://h/pre", b"body", true).await;
            store(&d, "http://h/other", b"body2", true).await;
        }
        let d = Disk::open(dir.path(), 1 << 20).await.unwrap();
        assert!(!d.is_scanned());
        let hit = d
            .lookup(&key("http://h/pre"), &HeaderMap::new())
            .await
            .unwrap();
        assert_eq!(hit.meta.url, "http://h/pre");
        assert_eq!(d.remove_primary(key("http://h/other").hex()).await, 1);
        d.scan().await;
        assert_eq!(d.usage().0, 1);
    }

    fn slot(n: u8) -> Slot {
        Slot {
            primary: [n; 32],
            variant: [0; 16],
        }
    }

    /// The index's accounting: totals follow inserts, replacements and removals, and
    /// victims are taken least recently used first, a touch counting as a use.
    #[test]
    fn index_accounts_bytes_and_evicts_least_recently_used_first() {
        let mut idx = Index::default();
        idx.touch(slot(1), 4096);
        idx.touch(slot(2), 8192);
        idx.touch(slot(3), 4096);
        assert_eq!((idx.items.len(), idx.total), (3, 16384));
        // Replacing an entry with another size changes the total by the difference.
        idx.touch(slot(2), 12288);
        assert_eq!((idx.items.len(), idx.total), (3, 20480));
        // 1 is used again: 3 is now the least recently used, then 2.
        idx.touch(slot(1), 4096);
        assert_eq!(idx.victims(16384, 10), vec![slot(3)]);
        assert_eq!(idx.total, 16384);
        assert_eq!(idx.victims(4096, 10), vec![slot(2)]);
        assert_eq!(idx.victims(4096, 10), Vec::<Slot>::new());
        // Reserved bytes and writers count against the bounds like entries.
        idx.touch(slot(4), 4096);
        idx.reserved = 4096;
        assert_eq!(idx.victims(8192, 10), vec![slot(1)]);
        idx.writers = 1;
        assert_eq!(idx.victims(1 << 20, 1), vec![slot(4)]);
        assert_eq!((idx.items.len(), idx.total, idx.lru.len()), (0, 0, 0));
        // Forgetting drops refreshed metadata with the entry.
        idx.touch(slot(5), 4096);
        idx.refreshed
            .insert(slot(5), Arc::new(meta("http://h/r", None)));
        assert_eq!(idx.forget(&slot(5)), Some(4096));
        assert_eq!(idx.forget(&slot(5)), None);
        assert!(idx.refreshed.is_empty());
    }

    /// On disk, an entry that was just looked up survives the next eviction; the oldest
    /// untouched one goes.
    #[tokio::test]
    async fn a_lookup_keeps_an_entry_from_eviction() {
        let dir = tempfile::tempdir().unwrap();
        const MAX: u64 = 256 * 1024;
        let d = Disk::open(dir.path(), MAX).await.unwrap();
        d.scan().await;
        let body = vec![3u8; 60_000];
        for i in 0..4 {
            store(&d, &format!("http://h/l{i}"), &body, true).await;
        }
        assert_eq!(d.usage().0, 4);
        assert!(
            d.lookup(&key("http://h/l0"), &HeaderMap::new())
                .await
                .is_some()
        );
        store(&d, "http://h/l4", &body, true).await;
        let present = |i: usize| {
            let d = d.clone();
            async move {
                d.lookup(&key(&format!("http://h/l{i}")), &HeaderMap::new())
                    .await
                    .is_some()
            }
        };
        assert!(present(0).await, "the entry just used was evicted");
        assert!(
            !present(1).await,
            "the least recently used entry is still there"
        );
        assert!(present(4).await);
        assert_eq!(d.stats.evictions.load(Ordering::Relaxed), 1);
    }

    /// Rewrites a stored file as version `v` with `algo`'s checksum over the same bytes.
    fn rewrite_as(path: &Path, v: u8, algo: Algo) {
        let mut data = std::fs::read(path).unwrap();
        data[4] = v;
        let end = data.len() - TRAILER_LEN;
        let sum = algo.digest(&data[PREFIX_LEN..end]);
        data[end + 8..].copy_from_slice(&sum);
        std::fs::write(path, data).unwrap();
    }

    /// New files are version 2 (BLAKE3); files of version 1 (SHA-256) written by earlier
    /// releases are still served, whole and streamed, and a version-1 file whose checksum is
    /// a BLAKE3 one is corrupt.
    #[tokio::test]
    async fn version_1_files_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let d = Disk::open(dir.path(), 64 << 20).await.unwrap();
        d.scan().await;
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for (i, v1) in [(0, true), (1, true), (2, false)] {
            let url = format!("http://h/v{i}");
            let path = store(&d, &url, &body, true).await;
            assert_eq!(std::fs::read(&path).unwrap()[4], meta::VERSION);
            rewrite_as(&path, 1, if v1 { Algo::Sha256 } else { Algo::Blake3 });
            let hit = d.lookup(&key(&url), &HeaderMap::new()).await.unwrap();
            assert_eq!(hit.algo, Algo::Sha256);
            let got = if i == 0 {
                d.read_verified(&hit).await.map(|b| b.to_vec())
            } else {
                let all = http_body_util::BodyExt::collect(d.stream(&hit, 0, hit.len)).await;
                all.ok().map(|c| c.to_bytes().to_vec())
            };
            if v1 {
                assert_eq!(got.as_deref(), Some(&body[..]), "{url}");
            } else {
                assert!(got.is_none(), "a wrong checksum was served");
                assert!(!path.exists(), "the corrupt file was kept");
            }
        }
    }

    /// A body byte changed on disk: the whole read fails its checksum, the file is deleted
    /// and counted, and a streamed read ends in an error instead of a complete body.
    #[tokio::test]
    async fn corrupt_bodies_are_never_served_and_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let d = Disk::open(dir.path(), 8 << 20).await.unwrap();
        d.scan().await;
        let flip = |path: &Path, at: u64| {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, at).unwrap();
            f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
        };

        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        store(&d, "http://h/c1", &body, true).await;
        let hit = d
            .lookup(&key("http://h/c1"), &HeaderMap::new())
            .await
            .unwrap();
        flip(&hit.path, hit.offset + 1234);
        assert!(d.read_verified(&hit).await.is_none());
        assert_eq!(d.stats.corrupt.load(Ordering::Relaxed), 1);
        assert!(!hit.path.exists());
        assert_eq!(d.usage(), (0, 0));

        store(&d, "http://h/c2", &body, true).await;
        let hit = d
            .lookup(&key("http://h/c2"), &HeaderMap::new())
            .await
            .unwrap();
        flip(&hit.path, hit.offset + hit.len - 1);
        let mut s = d.stream(&hit, 0, hit.len);
        let mut got = 0usize;
        let mut failed = false;
        while let Some(frame) = http_body_util::BodyExt::frame(&mut s).await {
            match frame {
                Ok(f) => got += f.into_data().map(|b| b.len()).unwrap_or(0),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "a corrupt body streamed to its end ({got} bytes)");
        assert!(got < body.len(), "every byte of a corrupt body was sent");
        assert_eq!(d.stats.corrupt.load(Ordering::Relaxed), 2);
        assert!(!hit.path.exists());
        assert!(
            d.lookup(&key("http://h/c2"), &HeaderMap::new())
                .await
                .is_none()
        );
    }

    /// A file is hashed at its first whole read only: later hits of the same file are known
    /// verified, a file changed in place after that is checked again (and a corrupt one is
    /// deleted), and a replaced entry starts unverified.
    #[tokio::test]
    async fn checksums_are_verified_once_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = Disk::open(dir.path(), 64 << 20).await.unwrap();
        d.scan().await;
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        store(&d, "http://h/v", &body, true).await;
        let whole = |hit: &DiskHit| http_body_util::BodyExt::collect(d.stream(hit, 0, hit.len));
        let first = d
            .lookup(&key("http://h/v"), &HeaderMap::new())
            .await
            .unwrap();
        assert!(!first.verified, "verified before any read");
        // A range is not a whole read: nothing is verified by it.
        let part = http_body_util::BodyExt::collect(d.stream(&first, 10, 20)).await;
        assert_eq!(&part.unwrap().to_bytes()[..], &body[10..20]);
        let again = d
            .lookup(&key("http://h/v"), &HeaderMap::new())
            .await
            .unwrap();
        assert!(!again.verified);
        assert_eq!(&whole(&again).await.unwrap().to_bytes()[..], &body[..]);
        let known = d
            .lookup(&key("http://h/v"), &HeaderMap::new())
            .await
            .unwrap();
        assert!(known.verified, "a matching whole read is remembered");
        assert_eq!(&whole(&known).await.unwrap().to_bytes()[..], &body[..]);
        assert_eq!(&d.read_verified(&known).await.unwrap()[..], &body[..]);

        // Changed in place after it was verified: checked again, never served.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&known.path)
            .unwrap();
        f.write_all_at(b"X", known.offset + 77).unwrap();
        drop(f);
        let changed = d
            .lookup(&key("http://h/v"), &HeaderMap::new())
            .await
            .unwrap();
        assert!(!changed.verified, "a changed file kept its verified mark");
        assert!(whole(&changed).await.is_err());
        assert_eq!(d.stats.corrupt.load(Ordering::Relaxed), 1);

        // Stored again: a new file, unverified until read whole (read_verified marks it too).
        store(&d, "http://h/v", &body, true).await;
        let fresh = d
            .lookup(&key("http://h/v"), &HeaderMap::new())
            .await
            .unwrap();
        assert!(!fresh.verified);
        assert_eq!(&d.read_verified(&fresh).await.unwrap()[..], &body[..]);
        let known = d
            .lookup(&key("http://h/v"), &HeaderMap::new())
            .await
            .unwrap();
        assert!(known.verified);
    }

    /// Files that cannot be decoded (garbage, or cut short) are misses, and are deleted and
    /// forgotten by the lookup that finds them.
    #[tokio::test]
    async fn undecodable_files_are_discarded_on_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let d = Disk::open(dir.path(), 8 << 20).await.unwrap();
        d.scan().await;
        let garbage = store(&d, "http://h/g", b"a body", true).await;
        std::fs::write(&garbage, b"not a cache file at all").unwrap();
        let cut = store(&d, "http://h/t", &vec![5u8; 10_000], true).await;
        let f = std::fs::OpenOptions::new().write(true).open(&cut).unwrap();
        f.set_len(PREFIX_LEN as u64 + 10).unwrap();
        assert_eq!(d.usage().0, 2);
        for url in ["http://h/g", "http://h/t"] {
            assert!(
                d.lookup(&key(url), &HeaderMap::new()).await.is_none(),
                "{url}"
            );
        }
        assert!(!garbage.exists());
        assert!(!cut.exists());
        assert_eq!(d.usage(), (0, 0));
    }

    /// Writers' reservations are the budget: while one writer holds most of the bound,
    /// another as large is refused; dropping the first (uncommitted) gives its room back and
    /// leaves no entry and no temporary file.
    #[tokio::test]
    async fn reservations_exhaust_the_bound_and_are_given_back() {
        let dir = tempfile::tempdir().unwrap();
        const MAX: u64 = 512 * 1024;
        let d = Disk::open(dir.path(), MAX).await.unwrap();
        d.scan().await;
        let d2 = d.clone();
        let tmp = dir.path().join("v2/tmp");
        tokio::task::spawn_blocking(move || {
            let big = meta("http://h/big", Some(300_000));
            let mut w1 = d2.writer(&big).unwrap();
            w1.write(&[1u8; 100_000]).unwrap();
            assert!(d2.reserved() >= 300_000);
            let e = d2.writer(&meta("http://h/big2", Some(300_000)));
            assert!(e.is_err(), "two writers reserved more than the bound");
            drop(w1);
            assert_eq!(d2.reserved(), 0);
            assert_eq!(du(&tmp).1, 0, "a dropped writer left its file");
            let mut w2 = d2.writer(&meta("http://h/big2", Some(300_000))).unwrap();
            w2.write(&[2u8; 300_000]).unwrap();
            w2.commit().unwrap();
        })
        .await
        .unwrap();
        assert_eq!(d.reserved(), 0);
        assert_eq!(d.usage().0, 1);
        assert!(
            d.lookup(&key("http://h/big"), &HeaderMap::new())
                .await
                .is_none()
        );
        let hit = d
            .lookup(&key("http://h/big2"), &HeaderMap::new())
            .await
            .unwrap();
        assert_eq!(hit.len, 300_000);
    }

    /// Many readers of one entry at once, whole and streamed, all get the same verified bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_readers_get_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let d = Disk::open(dir.path(), 16 << 20).await.unwrap();
        d.scan().await;
        let body: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 % 256) as u8).collect();
        store(&d, "http://h/shared", &body, true).await;
        let body = Arc::new(body);
        let mut tasks = Vec::new();
        for i in 0..12 {
            let (d, body) = (d.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let hit = d
                    .lookup(&key("http://h/shared"), &HeaderMap::new())
                    .await
                    .unwrap();
                let got = if i % 2 == 0 {
                    d.read_verified(&hit).await.unwrap()
                } else {
                    http_body_util::BodyExt::collect(d.stream(&hit, 0, hit.len))
                        .await
                        .unwrap()
                        .to_bytes()
                };
                assert!(got[..] == body[..], "reader {i} got other bytes");
                // A range of the body.
                let part = http_body_util::BodyExt::collect(d.stream(&hit, 1000, 2000))
                    .await
                    .unwrap()
                    .to_bytes();
                assert_eq!(&part[..], &body[1000..2000]);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(d.stats.corrupt.load(Ordering::Relaxed), 0);
    }

    /// Metadata refreshed by a 304 is what later lookups see, until the entry is written again.
    #[tokio::test]
    async fn refreshed_metadata_is_served_until_the_entry_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let d = Disk::open(dir.path(), 8 << 20).await.unwrap();
        d.scan().await;
        store(&d, "http://h/m", b"body", true).await;
        let mut fresh = meta("http://h/m", Some(4));
        fresh.headers.insert("x-refreshed", "1".parse().unwrap());
        d.refresh(Arc::new(fresh));
        let hit = d
            .lookup(&key("http://h/m"), &HeaderMap::new())
            .await
            .unwrap();
        assert_eq!(hit.meta.headers["x-refreshed"], "1");
        assert_eq!(&d.read_verified(&hit).await.unwrap()[..], b"body");
        store(&d, "http://h/m", b"new!", true).await;
        let hit = d
            .lookup(&key("http://h/m"), &HeaderMap::new())
            .await
            .unwrap();
        assert!(hit.meta.headers.get("x-refreshed").is_none());
        assert_eq!(&d.read_verified(&hit).await.unwrap()[..], b"new!");
        // Refreshing an entry that is not stored remembers nothing.
        d.refresh(Arc::new(meta("http://h/absent", None)));
        assert!(d.index.lock().refreshed.is_empty());
    }

    #[test]
    fn a_full_disk_is_known_by_its_kind() {
        assert!(is_disk_full(&io::Error::from(io::ErrorKind::StorageFull)));
        assert!(is_disk_full(&io::Error::new(
            io::ErrorKind::QuotaExceeded,
            "volume quota"
        )));
        // ENOSPC as the OS reports it.
        assert!(is_disk_full(&io::Error::from_raw_os_error(28)));
        assert!(!is_disk_full(&io::Error::from(
            io::ErrorKind::PermissionDenied
        )));
    }
}

//! The disk tier: one file per stored response under `<cache-dir>/v1/objects/<aa>/<url-hash>/
//! <variant>` (format in [`super::meta`]), written to `v1/tmp/` and renamed into place only
//! when complete, so a crash leaves no partial entry under `objects/`. An in-memory index
//! (size and last use per entry) keeps the total under `--cache-size` by evicting the least
//! recently used; it is rebuilt by scanning at start while requests are already served (a
//! lookup reads the entry's directory directly, it does not need the index). Every read checks
//! the checksum; a mismatching file is deleted and counted, never served.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::io::Write;

use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::key::{EntryKey, PrimaryKey};
use super::meta::{self, Meta, PREFIX_LEN, TRAILER_LEN};
use crate::http::body::{Body, BoxError};

/// Objects up to this size are read and verified whole before the first byte is served.
pub const VERIFY_WHOLE_LIMIT: u64 = 16 * 1024 * 1024;
const READ_CHUNK: usize = 256 * 1024;

#[derive(Default)]
struct Index {
    items: HashMap<EntryKey, Item>,
    lru: BTreeMap<u64, EntryKey>,
    seq: u64,
    total: u64,
    /// Metadata refreshed by a 304 since the file was written (lost at restart: the entry is
    /// then revalidated once more).
    refreshed: HashMap<EntryKey, Arc<Meta>>,
    /// Number of indexed variants per URL hash: once the scan is done, a URL with none is a
    /// miss without touching the disk.
    primaries: HashMap<String, u32>,
}

struct Item {
    size: u64,
    seq: u64,
}

impl Index {
    fn touch(&mut self, key: &EntryKey, size: u64) {
        self.seq += 1;
        let seq = self.seq;
        match self.items.get_mut(key) {
            Some(item) => {
                self.lru.remove(&item.seq);
                self.total = self.total - item.size + size;
                item.seq = seq;
                item.size = size;
            }
            None => {
                self.items.insert(key.clone(), Item { size, seq });
                self.total += size;
                *self.primaries.entry(key.primary.clone()).or_insert(0) += 1;
            }
        }
        self.lru.insert(seq, key.clone());
    }

    fn forget(&mut self, key: &EntryKey) -> Option<u64> {
        let item = self.items.remove(key)?;
        self.lru.remove(&item.seq);
        self.total -= item.size;
        self.refreshed.remove(key);
        self.drop_primary(&key.primary);
        Some(item.size)
    }

    fn drop_primary(&mut self, primary: &str) {
        if let Some(n) = self.primaries.get_mut(primary) {
            *n -= 1;
            if *n == 0 {
                self.primaries.remove(primary);
            }
        }
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
    index: Mutex<Index>,
    pub stats: DiskStats,
    full_warned: AtomicBool,
    scanned: AtomicBool,
    tmp_seq: AtomicU64,
}

/// A stored response found on disk.
pub struct DiskHit {
    pub meta: Arc<Meta>,
    pub path: PathBuf,
    /// Where the body starts in the file.
    pub offset: u64,
    pub len: u64,
}

impl Disk {
    /// Prepares `dir` (creating it), checks that it is writable and clears leftovers of
    /// interrupted writes. `Err` explains why the disk tier cannot be used.
    pub async fn open(dir: &Path, max_bytes: u64) -> Result<Arc<Disk>, String> {
        let root = dir.join("v1");
        let tmp = root.join("tmp");
        let objects = root.join("objects");
        for d in [&tmp, &objects] {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        if let Ok(mut rd) = tokio::fs::read_dir(&tmp).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                let _ = tokio::fs::remove_file(e.path()).await;
            }
        }
        let probe = tmp.join(format!("probe-{}", std::process::id()));
        tokio::fs::write(&probe, b"cuttle")
            .await
            .map_err(|e| format!("cannot write in {}: {e}", tmp.display()))?;
        let _ = tokio::fs::remove_file(&probe).await;
        Ok(Arc::new(Disk {
            root,
            max_bytes,
            index: Mutex::new(Index::default()),
            stats: DiskStats::default(),
            full_warned: AtomicBool::new(false),
            scanned: AtomicBool::new(false),
            tmp_seq: AtomicU64::new(0),
        }))
    }

    fn dir_for(&self, primary: &str) -> PathBuf {
        let shard = primary.get(..2).unwrap_or("00");
        self.root.join("objects").join(shard).join(primary)
    }

    fn path_for(&self, key: &EntryKey) -> PathBuf {
        self.dir_for(&key.primary).join(&key.variant)
    }

    /// Rebuilds the index from the files present (oldest modification first, so the LRU
    /// order survives a restart approximately), then enforces the size bound.
    pub async fn scan(self: &Arc<Disk>) {
        let objects = self.root.join("objects");
        let found = tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            let is_hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
            let Ok(shards) = std::fs::read_dir(&objects) else {
                return found;
            };
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
                        let Ok(md) = var.metadata() else { continue };
                        if !md.is_file() || !is_hex(&primary) || !is_hex(&variant) {
                            continue;
                        }
                        let mtime = md.modified().ok();
                        found.push((
                            EntryKey {
                                primary: primary.clone(),
                                variant,
                            },
                            md.len(),
                            mtime,
                        ));
                    }
                }
            }
            found.sort_by_key(|(_, _, t)| *t);
            found
        })
        .await
        .unwrap_or_default();
        let count = found.len();
        {
            let mut idx = self.index.lock();
            for (key, size, _) in found {
                if !idx.items.contains_key(&key) {
                    idx.touch(&key, size);
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

    /// The stored variant of `primary` that `req` selects, if any.
    pub async fn lookup(&self, primary: &PrimaryKey, req: &HeaderMap) -> Option<DiskHit> {
        let hex = primary.hex();
        if self.is_scanned() && !self.index.lock().primaries.contains_key(hex) {
            return None;
        }
        let dir = self.dir_for(hex);
        let mut rd = tokio::fs::read_dir(&dir).await.ok()?;
        while let Ok(Some(entry)) = rd.next_entry().await {
            let variant = entry.file_name().to_string_lossy().into_owned();
            let key = EntryKey {
                primary: hex.to_string(),
                variant,
            };
            let path = entry.path();
            let hit = match self.read_head(&path).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unreadable cache file");
                    self.discard(&key).await;
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
                .get(&key)
                .cloned()
                .unwrap_or(hit.meta);
            if meta.variant.matches(req) {
                self.index
                    .lock()
                    .touch(&key, hit.len + hit.offset + TRAILER_LEN as u64);
                return Some(DiskHit { meta, ..hit });
            }
        }
        None
    }

    async fn read_head(&self, path: &Path) -> Result<DiskHit, io::Error> {
        let bad = |e: meta::MetaError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
        let mut f = tokio::fs::File::open(path).await?;
        let file_len = f.metadata().await?.len();
        let mut prefix = [0u8; PREFIX_LEN];
        f.read_exact(&mut prefix).await?;
        let meta_len = meta::decode_prefix(&prefix).map_err(bad)?;
        let min = (PREFIX_LEN + meta_len + TRAILER_LEN) as u64;
        if file_len < min {
            return Err(bad(meta::MetaError::Truncated));
        }
        let mut json = vec![0u8; meta_len];
        f.read_exact(&mut json).await?;
        let meta = meta::decode_meta(&json).map_err(bad)?;
        Ok(DiskHit {
            meta: Arc::new(meta),
            path: path.to_path_buf(),
            offset: (PREFIX_LEN + meta_len) as u64,
            len: file_len - min,
        })
    }

    /// Reads and verifies the whole body (small objects).
    pub async fn read_verified(&self, hit: &DiskHit) -> Option<Bytes> {
        let data = tokio::fs::read(&hit.path).await.ok()?;
        let body_end = hit.offset as usize + hit.len as usize;
        let ok = data.len() == body_end + TRAILER_LEN
            && meta::decode_trailer(&data[body_end..])
                .ok()
                .is_some_and(|(len, sum)| {
                    len == hit.len && Sha256::digest(&data[PREFIX_LEN..body_end])[..] == sum[..]
                });
        if !ok {
            self.corrupt(hit).await;
            return None;
        }
        Some(Bytes::from(data).slice(hit.offset as usize..body_end))
    }

    /// Streams the body of `hit` from `start` to `end`, verifying the checksum when the whole
    /// file is read. A mismatch ends the body with an error (the client sees an aborted
    /// transfer, never a complete-looking wrong one) and deletes the file.
    pub fn stream(self: &Arc<Disk>, hit: &DiskHit, start: u64, end: u64) -> Body {
        struct St {
            disk: Arc<Disk>,
            path: PathBuf,
            key: EntryKey,
            file: Option<tokio::fs::File>,
            /// Position in the file; reading starts at the metadata when verifying.
            pos: u64,
            body_start: u64,
            from: u64,
            to: u64,
            hasher: Option<Sha256>,
            body_len: u64,
            done: bool,
        }
        let verify = start == 0 && end == hit.len;
        let st = St {
            disk: self.clone(),
            path: hit.path.clone(),
            key: hit.meta.key(),
            file: None,
            pos: if verify {
                PREFIX_LEN as u64
            } else {
                hit.offset + start
            },
            body_start: hit.offset,
            from: hit.offset + start,
            to: hit.offset + end,
            hasher: verify.then(Sha256::new),
            body_len: hit.len,
            done: false,
        };
        let stream = futures_util::stream::unfold(st, |mut st| async move {
            if st.done {
                return None;
            }
            let r: Result<Option<Bytes>, BoxError> = async {
                if st.file.is_none() {
                    let mut f = tokio::fs::File::open(&st.path).await?;
                    f.seek(io::SeekFrom::Start(st.pos)).await?;
                    st.file = Some(f);
                }
                let Some(f) = st.file.as_mut() else {
                    return Ok(None);
                };
                loop {
                    if st.pos >= st.to {
                        if let Some(h) = st.hasher.take() {
                            check_trailer(f, h, st.body_len).await?;
                        }
                        return Ok(None);
                    }
                    let want = ((st.to - st.pos) as usize).min(READ_CHUNK);
                    let mut buf = BytesMut::zeroed(want);
                    let n = f.read(&mut buf).await?;
                    if n == 0 {
                        return Err("cache file shorter than its metadata says".into());
                    }
                    buf.truncate(n);
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
                        check_trailer(f, h, st.body_len).await?;
                    }
                    let skip = st.from.saturating_sub(chunk_start) as usize;
                    return Ok(Some(buf.freeze().slice(skip.min(n)..)));
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
        let _ = tokio::fs::remove_file(self.path_for(key)).await;
        self.index.lock().forget(key);
    }

    /// Deletes every variant of a URL. Returns how many were removed.
    pub async fn remove_primary(&self, primary: &str) -> usize {
        let keys: Vec<EntryKey> = {
            let idx = self.index.lock();
            idx.items
                .keys()
                .filter(|k| k.primary == primary)
                .cloned()
                .collect()
        };
        let mut n = 0;
        if let Ok(mut rd) = tokio::fs::read_dir(self.dir_for(primary)).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                if tokio::fs::remove_file(e.path()).await.is_ok() {
                    n += 1;
                }
            }
        }
        let _ = tokio::fs::remove_dir(self.dir_for(primary)).await;
        let mut idx = self.index.lock();
        for k in keys {
            idx.forget(&k);
        }
        n
    }

    /// Remembers refreshed metadata for an entry (after a 304).
    pub fn refresh(&self, meta: Arc<Meta>) {
        let key = meta.key();
        let mut idx = self.index.lock();
        if idx.items.contains_key(&key) {
            idx.refreshed.insert(key, meta);
        }
    }

    /// Starts writing a new entry (blocking file I/O: call from a blocking context).
    pub fn writer(self: &Arc<Disk>, meta: &Meta) -> io::Result<DiskWriter> {
        let prefix = meta
            .encode_prefix()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()));
        let file = std::fs::File::create(&tmp).map_err(|e| self.write_failed(e))?;
        let mut file = io::BufWriter::with_capacity(256 * 1024, file);
        if let Err(e) = file.write_all(&prefix).and_then(|_| file.flush()) {
            let _ = std::fs::remove_file(&tmp);
            return Err(self.write_failed(e));
        }
        let mut hasher = Sha256::new();
        hasher.update(&prefix[PREFIX_LEN..]);
        Ok(DiskWriter {
            disk: self.clone(),
            file: Some(file),
            tmp,
            hasher,
            body_len: 0,
            body_offset: prefix.len() as u64,
            key: meta.key(),
            committed: false,
        })
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

    /// Evicts least recently used entries until the total is at most `target` (blocking
    /// file removal).
    pub fn evict_to(&self, target: u64) {
        loop {
            let victim = {
                let mut idx = self.index.lock();
                if idx.total <= target {
                    return;
                }
                let Some((_, key)) = idx.lru.pop_first() else {
                    return;
                };
                if let Some(item) = idx.items.remove(&key) {
                    idx.total -= item.size;
                    idx.drop_primary(&key.primary);
                }
                idx.refreshed.remove(&key);
                key
            };
            let _ = std::fs::remove_file(self.path_for(&victim));
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (objects, bytes) on disk, as indexed.
    pub fn usage(&self) -> (u64, u64) {
        let idx = self.index.lock();
        (idx.items.len() as u64, idx.total)
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

/// Reads the trailer that follows the body and compares it with the running checksum.
async fn check_trailer(
    f: &mut tokio::fs::File,
    hasher: Sha256,
    body_len: u64,
) -> Result<(), BoxError> {
    let mut t = [0u8; TRAILER_LEN];
    f.read_exact(&mut t).await?;
    let (len, sum) = meta::decode_trailer(&t).map_err(|e| e.to_string())?;
    if len != body_len || hasher.finalize()[..] != sum[..] {
        return Err("checksum mismatch".into());
    }
    Ok(())
}

/// An entry being written to `tmp/` (blocking I/O, from the fill's writer thread); renamed
/// into `objects/` by [`DiskWriter::commit`], deleted if dropped before.
pub struct DiskWriter {
    disk: Arc<Disk>,
    file: Option<io::BufWriter<std::fs::File>>,
    tmp: PathBuf,
    hasher: Sha256,
    body_len: u64,
    body_offset: u64,
    key: EntryKey,
    committed: bool,
}

impl DiskWriter {
    /// Where the body starts in the file.
    pub fn body_offset(&self) -> u64 {
        self.body_offset
    }

    /// The temporary file, readable while it is written (coalesced readers follow it).
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Body bytes written so far (buffered ones included; see [`DiskWriter::flush`]).
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    pub fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
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
        let sum: [u8; 32] = self.hasher.clone().finalize().into();
        let trailer = meta::encode_trailer(self.body_len, &sum);
        let r = (|| {
            f.write_all(&trailer)?;
            f.flush()?;
            let size = f.get_ref().metadata()?.len();
            drop(f);
            let dest = self.disk.path_for(&self.key);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(&self.tmp, &dest)?;
            Ok::<_, io::Error>((dest, size))
        })();
        match r {
            Ok((dest, size)) => {
                self.committed = true;
                {
                    let mut idx = self.disk.index.lock();
                    idx.refreshed.remove(&self.key);
                    idx.touch(&self.key, size);
                }
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

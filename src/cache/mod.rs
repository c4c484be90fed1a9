//! The HTTP cache: a shared RFC 9111 cache in two tiers, memory ([`memory`]) for hot small
//! objects and disk ([`disk`]) for everything up to `--max-object-size`, with artifact rules
//! ([`rules`]), policy decisions ([`policy`]), one upstream fetch per URL ([`lock`]) streamed
//! to every waiting client while it is written ([`fill`]), and answers from stored entries
//! with conditionals and ranges ([`serve`]). The request flow that uses it is
//! `forward::cached`.

pub mod disk;
pub mod fill;
pub mod key;
pub mod lock;
pub mod memory;
pub mod meta;
pub mod policy;
pub mod rules;
pub mod serve;
pub mod shared;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use ipnet::IpNet;

use crate::http::body::{Body, BoxError};
use disk::{Disk, DiskHit, VERIFY_WHOLE_LIMIT};
use fill::{Budget, Completed, Fill, FillLimits};
use key::PrimaryKey;
use lock::Locks;
use memory::{MemEntry, Memory};
use meta::Meta;
use rules::Rules;
use shared::{Shared, SharedSettings, Source, Upload};

/// The cache's configuration (validated).
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Disk tier directory; `None` for memory only.
    pub dir: Option<PathBuf>,
    pub disk_size: u64,
    pub mem_size: u64,
    /// Largest object kept in memory.
    pub mem_object: u64,
    /// Largest object stored at all.
    pub max_object: u64,
    pub serve_stale_on_error: Duration,
    /// A range miss fetches the whole object when it is at most this large.
    pub range_fetch_limit: u64,
    pub rules: Rules,
    /// Clients allowed to send `PURGE`.
    pub purge_allow: Vec<IpNet>,
    /// How long a fill without a disk copy waits for a stalled reader.
    pub reader_stall: Duration,
    /// The shared tier (`--shared-cache`), when configured.
    pub shared: Option<SharedSettings>,
}

/// A disk entry larger than `--max-mem-object-size` is promoted to the memory tier by the
/// lookup that finds it on disk for the second time (its third request at the earliest),
/// and again every 16th time while it is still found there (the memory tier may have
/// declined or evicted it). Only one of many concurrent requests for it reads it whole; the
/// others stream from the file meanwhile.
fn is_hot(disk_hits: u32) -> bool {
    disk_hits == 2 || (disk_hits > 2 && disk_hits % 16 == 0)
}

/// Counters kept by the cache (the metrics module reads them).
#[derive(Default)]
pub struct CacheStats {
    pub mem_hits: AtomicU64,
    pub disk_hits: AtomicU64,
    pub misses: AtomicU64,
    pub revalidated: AtomicU64,
    pub stale_served: AtomicU64,
    pub coalesced: AtomicU64,
    pub stored: AtomicU64,
    pub not_stored: AtomicU64,
}

/// A complete stored response.
pub enum Stored {
    /// From the memory tier.
    Mem(Arc<MemEntry>),
    /// From the disk tier, read whole into memory and verified (small objects). The share
    /// of the fill budget stays taken until every body served from it has been dropped: the
    /// memory tier may not keep the copy, and then only the budget accounts for it.
    DiskRead(Arc<MemEntry>, Arc<fill::Held>),
    /// From the disk tier, streamed (verified as it is read).
    Disk(Arc<Disk>, DiskHit),
}

impl Stored {
    pub fn meta(&self) -> &Arc<Meta> {
        match self {
            Stored::Mem(e) | Stored::DiskRead(e, _) => &e.meta,
            Stored::Disk(_, h) => &h.meta,
        }
    }

    pub fn is_memory(&self) -> bool {
        matches!(self, Stored::Mem(_))
    }

    /// The same body with refreshed metadata (after a 304).
    pub fn with_meta(self, meta: Arc<Meta>) -> Stored {
        match self {
            Stored::Mem(e) => Stored::Mem(Arc::new(MemEntry {
                meta,
                body: e.body.clone(),
            })),
            Stored::DiskRead(e, held) => Stored::DiskRead(
                Arc::new(MemEntry {
                    meta,
                    body: e.body.clone(),
                }),
                held,
            ),
            Stored::Disk(d, h) => Stored::Disk(d, DiskHit { meta, ..h }),
        }
    }
}

impl serve::Source for Stored {
    fn total_len(&self) -> Option<u64> {
        Some(match self {
            Stored::Mem(e) | Stored::DiskRead(e, _) => e.body.len() as u64,
            Stored::Disk(_, h) => h.len,
        })
    }

    fn range(&self, start: u64, end: u64) -> Body {
        match self {
            Stored::Mem(e) => in_frames(e.body.slice(start as usize..end as usize), None),
            Stored::DiskRead(e, held) => in_frames(
                e.body.slice(start as usize..end as usize),
                Some(held.clone()),
            ),
            Stored::Disk(d, h) => d.stream(h, start, end),
        }
    }

    fn all(&self) -> Body {
        match self {
            Stored::Mem(e) => in_frames(e.body.clone(), None),
            Stored::DiskRead(e, held) => in_frames(e.body.clone(), Some(held.clone())),
            Stored::Disk(d, h) => d.stream(h, 0, h.len),
        }
    }
}

/// A stored body sent as slices of it (no copy): the access log then counts what really
/// left, and a client that goes away mid-object is logged as aborted. `held` (a share of the
/// fill budget) is released when the body is dropped.
fn in_frames(body: Bytes, held: Option<Arc<fill::Held>>) -> Body {
    const FRAME: usize = 256 * 1024;
    let frames = (0..body.len().div_ceil(FRAME)).map(move |i| {
        let _budget = &held;
        let end = ((i + 1) * FRAME).min(body.len());
        Ok::<_, BoxError>(http_body::Frame::data(body.slice(i * FRAME..end)))
    });
    crate::http::body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames,
    )))
}

impl serve::Source for Arc<Fill> {
    fn total_len(&self) -> Option<u64> {
        self.total()
    }

    fn range(&self, start: u64, end: u64) -> Body {
        self.reader(start, Some(end))
    }

    fn all(&self) -> Body {
        self.reader(0, None)
    }
}

pub struct Cache {
    pub settings: CacheSettings,
    rules: arc_swap::ArcSwap<Rules>,
    memory: Memory,
    disk: Option<Arc<Disk>>,
    pub locks: Locks,
    pub stats: Arc<CacheStats>,
    /// Bodies held in memory by fills and whole-object disk reads.
    pub fill_budget: Arc<Budget>,
    /// The shared tier below the disk (`None` when not configured or not usable).
    pub shared: Option<Arc<Shared>>,
    /// URLs (primary keys) of hot large entries being read whole for the memory tier: one
    /// read per entry at a time.
    promoting: parking_lot::Mutex<std::collections::HashSet<String>>,
}

/// Marks a hot entry as being promoted until dropped.
struct Promoting<'a>(&'a Cache, String);

impl Drop for Promoting<'_> {
    fn drop(&mut self) {
        self.0.promoting.lock().remove(&self.1);
    }
}

impl Cache {
    /// Opens the tiers. A disk directory that cannot be used is logged once and the cache
    /// runs in memory only (the proxy keeps working).
    pub async fn open(settings: CacheSettings) -> Arc<Cache> {
        let disk = match &settings.dir {
            Some(dir) if settings.disk_size > 0 => {
                match Disk::open(dir, settings.disk_size).await {
                    Ok(d) => {
                        let scan = d.clone();
                        tokio::spawn(async move { scan.scan().await });
                        Some(d)
                    }
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "disk cache unavailable: caching in memory only");
                        None
                    }
                }
            }
            _ => None,
        };
        let memory = Memory::new(settings.mem_size, settings.mem_object);
        let fill_budget = Budget::new(fill::FILLS_BUDGET);
        // Nothing is sent to the store here: startup never waits for it.
        let shared = settings.shared.clone().and_then(|s| {
            let url = s.url();
            match Shared::new(s, settings.max_object, fill_budget.clone()) {
                Ok(sh) => {
                    tracing::info!(store = %url, "shared cache tier configured");
                    Some(sh)
                }
                Err(e) => {
                    tracing::warn!(store = %url, error = %e, "shared cache unavailable: local tiers only");
                    None
                }
            }
        });
        Arc::new(Cache {
            rules: arc_swap::ArcSwap::from_pointee(settings.rules.clone()),
            memory,
            disk,
            locks: Locks::default(),
            stats: Arc::new(CacheStats::default()),
            fill_budget,
            shared,
            settings,
            promoting: Default::default(),
        })
    }

    /// The artifact rules in force (replaced by a reload).
    pub fn rules(&self) -> arc_swap::Guard<Arc<Rules>> {
        self.rules.load()
    }

    pub fn set_rules(&self, rules: Rules) {
        self.rules.store(Arc::new(rules));
    }

    pub fn has_disk(&self) -> bool {
        self.disk.is_some()
    }

    /// Whether the index is usable (the disk scan has finished, or there is no disk).
    pub fn is_ready(&self) -> bool {
        self.disk.as_ref().is_none_or(|d| d.is_scanned())
    }

    /// The stored variant of `primary` that a request with `req` headers selects. Small disk
    /// entries are read whole, verified, and promoted to memory; larger ones too once they
    /// are hot.
    pub async fn lookup(&self, primary: &PrimaryKey, req: &HeaderMap) -> Option<Stored> {
        if let Some(e) = self.memory.get(primary.hex(), primary.url(), req) {
            return Some(Stored::Mem(e));
        }
        let disk = self.disk.as_ref()?;
        let hit = disk.lookup(primary, req).await?;
        // Small entries that the memory tier takes are read whole, verified and promoted, and
        // so are larger ones (up to `memory::HOT_FACTOR` times as large) once they are hot
        // ([`is_hot`]: one request of the many that find it on disk at once); anything else
        // streams from the file (verified as it is read), so concurrent disk hits never hold
        // whole large objects in memory. The fill budget bounds the bodies read whole at once.
        let small = self.memory.admits(hit.len);
        let promoting = (!small && is_hot(hit.hits) && self.memory.admits_hot(hit.len))
            .then(|| self.start_promoting(primary.hex()))
            .flatten();
        if hit.len <= VERIFY_WHOLE_LIMIT
            && (small || promoting.is_some())
            && let Some(held) = self.fill_budget.try_take(hit.len)
        {
            let body = disk.read_verified(&hit).await?;
            let entry = Arc::new(MemEntry {
                meta: hit.meta.clone(),
                body,
            });
            self.memory.insert(MemEntry {
                meta: entry.meta.clone(),
                body: entry.body.clone(),
            });
            drop(promoting);
            return Some(Stored::DiskRead(entry, Arc::new(held)));
        }
        Some(Stored::Disk(disk.clone(), hit))
    }

    /// Marks the entry of `hex` as being promoted; `None` when another request already is.
    fn start_promoting(&self, hex: &str) -> Option<Promoting<'_>> {
        self.promoting
            .lock()
            .insert(hex.to_string())
            .then(|| Promoting(self, hex.to_string()))
    }

    /// Whether an object of `len` bytes (if known) can be stored at all.
    pub fn can_store(&self, len: Option<u64>) -> bool {
        let max = if self.disk.is_some() {
            self.settings.max_object
        } else {
            self.memory.max_object
        };
        len.is_none_or(|n| n <= max)
    }

    /// Starts storing a response whose head is `meta` and whose body is `body`. The fill is
    /// published to `permit`'s followers at once, but the key stays locked until its entry is
    /// findable (in the memory tier as soon as a body kept whole has arrived, otherwise once
    /// the disk copy is committed): a request arriving while it streams joins it instead of
    /// fetching the object again. Once stored, the entry is offered to the shared
    /// tier as `upload` says (off the request path); `lease`, the shared tier's lease taken
    /// for this fetch, is released after that upload (or at once when nothing is uploaded).
    pub fn fill<B>(
        self: &Arc<Cache>,
        meta: Arc<Meta>,
        body: B,
        permit: lock::Permit,
        upload: Upload,
        lease: Option<shared::lease::Lease>,
    ) -> Arc<Fill>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // The disk entry is created on the writer's thread, after the first bytes are on
        // their way to the client: creating it (reserving room, evicting, creating the file)
        // is not on the time to first byte.
        let open = self.disk.as_ref().map(|d| {
            let (d, m) = (d.clone(), meta.clone());
            Box::new(move || {
                d.writer(&m)
                    .map_err(|e| tracing::debug!(url = %m.url, error = %e, "no disk entry"))
                    .ok()
            }) as fill::OpenWriter
        });
        let max_object = if open.is_some() {
            self.settings.max_object
        } else {
            self.memory.max_object
        };
        let cache = self.clone();
        let permit = Arc::new(parking_lot::Mutex::new(Some(permit)));
        let held = permit.clone();
        let (mem_cache, mem_held) = (self.clone(), permit.clone());
        let fill = Fill::start(
            meta,
            body,
            open,
            FillLimits {
                max_object,
                mem_object: self.memory.max_object,
                reader_stall: self.settings.reader_stall,
                budget: self.fill_budget.clone(),
                writer_slots: self.disk.as_ref().map(|d| d.writer_slots()),
            },
            // A body kept whole goes to the memory tier as soon as it is complete, and the
            // key is released then: the next request is a memory hit, not a follower of a
            // fill whose disk copy is still being written. (A later fill of the same key may
            // then commit its disk copy before this one; either is a complete response with
            // its own metadata.)
            move |m| {
                mem_cache.memory.insert(m);
                drop(mem_held.lock().take());
            },
            move |fill, completed| {
                match completed {
                    Completed::Stored { mem, file } => {
                        if let Some(sh) = &cache.shared {
                            let source = match (file, &mem) {
                                (Some(f), _) => Some(Source::File(f)),
                                (None, Some(m)) => Some(Source::Mem(m.body.clone())),
                                (None, None) => None,
                            };
                            if let Some(source) = source {
                                sh.offer(fill.meta.clone(), source, upload, lease);
                            }
                        }
                        cache.stats.stored.fetch_add(1, Ordering::Relaxed);
                    }
                    Completed::NotStored => {
                        cache.stats.not_stored.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // The entry is findable now (or never will be): release the key.
                drop(held.lock().take());
            },
        );
        if let Some(p) = permit.lock().as_mut() {
            p.publish(lock::Outcome::Fill(fill.clone()));
        }
        fill
    }

    /// Replaces the metadata of a stored entry (after a 304 merge).
    pub fn refresh(&self, meta: Arc<Meta>) {
        if let Some(sh) = &self.shared {
            sh.offer_meta(meta.clone());
        }
        self.memory.refresh(meta.clone());
        if let Some(d) = &self.disk {
            d.refresh(meta);
        }
    }

    /// Removes every variant of a URL from both tiers; true if anything was stored.
    pub async fn invalidate(&self, primary: &PrimaryKey) -> bool {
        let hex = primary.hex();
        let in_mem = self.memory.remove(hex);
        let on_disk = match &self.disk {
            Some(d) => d.remove_primary(hex).await > 0,
            None => false,
        };
        in_mem || on_disk
    }

    /// Objects and bytes per tier, with their bounds.
    pub fn usage(&self) -> TierUsage {
        let (mo, mb) = self.memory.usage();
        let (d_objects, d_bytes, d_cap) = match &self.disk {
            Some(d) => {
                let (o, b) = d.usage();
                (o, b, d.capacity())
            }
            None => (0, 0, 0),
        };
        TierUsage {
            mem_objects: mo,
            mem_bytes: mb,
            mem_capacity: self.memory.capacity(),
            mem_evictions: self.memory.evictions(),
            disk_objects: d_objects,
            disk_bytes: d_bytes,
            disk_capacity: d_cap,
            disk_evictions: self
                .disk
                .as_ref()
                .map_or(0, |d| d.stats.evictions.load(Ordering::Relaxed)),
            disk_corrupt: self
                .disk
                .as_ref()
                .map_or(0, |d| d.stats.corrupt.load(Ordering::Relaxed)),
            disk_write_errors: self
                .disk
                .as_ref()
                .map_or(0, |d| d.stats.write_errors.load(Ordering::Relaxed)),
        }
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct TierUsage {
    pub mem_objects: u64,
    pub mem_bytes: u64,
    pub mem_capacity: u64,
    pub mem_evictions: u64,
    pub disk_objects: u64,
    pub disk_bytes: u64,
    pub disk_capacity: u64,
    pub disk_evictions: u64,
    pub disk_corrupt: u64,
    pub disk_write_errors: u64,
}

//! The memory tier: complete small objects (hot artifacts, metadata) held as `Bytes`, bounded
//! in bytes by moka's weigher (its TinyLFU admission with LRU eviction beats plain LRU for
//! scan-heavy build traffic). Entries are grouped by URL so `Vary` variants can be listed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::HeaderMap;

use super::meta::Meta;

/// A stored response with its whole body.
#[derive(Debug)]
pub struct MemEntry {
    pub meta: Arc<Meta>,
    pub body: Bytes,
}

type Variants = Arc<Vec<Arc<MemEntry>>>;

pub struct Memory {
    cache: moka::sync::Cache<String, Variants>,
    /// Largest body admitted.
    pub max_object: u64,
    evictions: Arc<AtomicU64>,
}

/// Fixed per-entry overhead counted against the bound besides the body.
const OVERHEAD: u64 = 1024;

impl Memory {
    pub fn new(capacity: u64, max_object: u64) -> Memory {
        let evictions = Arc::new(AtomicU64::new(0));
        let ev = evictions.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .weigher(|_k: &String, v: &Variants| {
                let w: u64 = v.iter().map(|e| e.body.len() as u64 + OVERHEAD).sum();
                w.min(u32::MAX as u64) as u32
            })
            .eviction_listener(move |_k, _v, cause| {
                if cause.was_evicted() {
                    ev.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Memory {
            cache,
            max_object: max_object.min(capacity),
            evictions,
        }
    }

    /// The variant of `primary` that `req` selects.
    pub fn get(&self, primary: &str, url: &str, req: &HeaderMap) -> Option<Arc<MemEntry>> {
        let vs = self.cache.get(primary)?;
        vs.iter()
            .find(|e| e.meta.url == url && e.meta.variant.matches(req))
            .cloned()
    }

    pub fn admits(&self, len: u64) -> bool {
        len <= self.max_object
    }

    /// Adds or replaces the entry's variant.
    pub fn insert(&self, entry: MemEntry) {
        if !self.admits(entry.body.len() as u64) {
            return;
        }
        let primary = entry.meta.key().primary;
        let id = entry.meta.variant.id();
        let mut list: Vec<Arc<MemEntry>> = self
            .cache
            .get(&primary)
            .map(|v| {
                v.iter()
                    .filter(|e| e.meta.variant.id() != id)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        list.push(Arc::new(entry));
        self.cache.insert(primary, Arc::new(list));
        // moka applies evictions in batches: until it does, up to a batch of inserted bodies
        // (each up to --max-mem-object-size) is held beyond --cache-mem. Applying them now
        // keeps the tier within its bound (inserts follow fills and disk reads, which cost
        // far more).
        self.cache.run_pending_tasks();
    }

    /// Replaces the metadata of a stored variant (after a 304), keeping its body.
    pub fn refresh(&self, meta: Arc<Meta>) {
        let primary = meta.key().primary;
        let id = meta.variant.id();
        if let Some(vs) = self.cache.get(&primary) {
            let list: Vec<Arc<MemEntry>> = vs
                .iter()
                .map(|e| {
                    if e.meta.variant.id() == id {
                        Arc::new(MemEntry {
                            meta: meta.clone(),
                            body: e.body.clone(),
                        })
                    } else {
                        e.clone()
                    }
                })
                .collect();
            self.cache.insert(primary, Arc::new(list));
        }
    }

    pub fn remove(&self, primary: &str) -> bool {
        self.cache.remove(primary).is_some()
    }

    /// (objects, bytes) currently held.
    pub fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        let objects = self.cache.iter().map(|(_, v)| v.len() as u64).sum();
        (objects, self.cache.weighted_size())
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> u64 {
        self.cache.policy().max_capacity().unwrap_or(0)
    }
}

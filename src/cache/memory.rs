//! The memory tier: complete small objects (hot artifacts, metadata) held as `Bytes`, bounded
//! in bytes by moka's weigher (its TinyLFU admission with LRU eviction beats plain LRU for
//! scan-heavy build traffic). Entries are grouped by URL so `Vary` variants can be listed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::HeaderMap;

use super::meta::Meta;

/// A stored response with its whole body.
#[derive(Debug, Clone)]
pub struct MemEntry {
    pub meta: Arc<Meta>,
    pub body: Bytes,
}

type Variants = Arc<Vec<Arc<MemEntry>>>;

pub struct Memory {
    cache: moka::sync::Cache<String, Variants>,
    /// Largest body admitted when stored (`--max-mem-object-size`).
    pub max_object: u64,
    /// Largest body promoted from the disk tier once it is hot ([`HOT_FACTOR`]).
    pub max_hot: u64,
    evictions: Arc<AtomicU64>,
}

/// Objects up to this many times `--max-mem-object-size` (and at most an eighth of
/// `--cache-mem`) enter the memory tier too, but only once they are hot: hit from the disk
/// tier again (`Cache::lookup`). A large artifact every build fetches is then served
/// from memory, with one copy fewer per hit, while one-off downloads of that size never
/// push the small hot entries out.
pub const HOT_FACTOR: u64 = 4;

/// Fixed per-entry overhead counted against the bound besides the body: what an entry costs
/// beyond its body, measured. 20,000 entries of 256 bytes with five response fields, filled
/// through a release build with `--cache-size 0`, grew RSS by 8,258 bytes each (539 with a
/// 1 MiB tier that keeps almost none of them: the rest is the entry), and by 9,200 once each
/// had been hit (the remembered fresh answer, `StoredPolicy::fresh_for_plain_get`). The
/// stored metadata holds the response fields three times (the fields, the policy's copy, the
/// policy's request), parsed `Cache-Control` maps and the keys. 1 KiB, the figure before,
/// let 100,000 small entries take 850 MiB under a 256 MiB `--cache-mem`.
const OVERHEAD: u64 = 9 * 1024;

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
        let max_object = max_object.min(capacity);
        Memory {
            cache,
            max_object,
            max_hot: max_object
                .saturating_mul(HOT_FACTOR)
                .min(capacity / 8)
                .max(max_object),
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

    /// Whether a body of `len` bytes may be promoted once it is hot.
    pub fn admits_hot(&self, len: u64) -> bool {
        len <= self.max_hot
    }

    /// Adds or replaces the entry's variant (bodies up to [`Memory::max_hot`]; callers
    /// decide which of them are hot).
    pub fn insert(&self, entry: MemEntry) {
        if !self.admits_hot(entry.body.len() as u64) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::disk::tests::{meta, meta_varying};
    use crate::cache::key::Variant;

    fn entry(url: &str, body: &[u8]) -> MemEntry {
        MemEntry {
            meta: Arc::new(meta(url, Some(body.len()))),
            body: Bytes::copy_from_slice(body),
        }
    }

    fn primary(url: &str) -> String {
        meta(url, None).key().primary
    }

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("accept-encoding", v.parse().unwrap());
        h
    }

    /// A variant of `url` selected by `Accept-Encoding: enc`.
    fn by_encoding(url: &str, enc: &str, body: &[u8]) -> MemEntry {
        let mut vary = HeaderMap::new();
        vary.insert("vary", "accept-encoding".parse().unwrap());
        let variant = Variant::of(&vary, &accept(enc));
        MemEntry {
            meta: Arc::new(meta_varying(url, Some(body.len()), variant)),
            body: Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn get_returns_what_was_inserted_and_replaces_the_same_variant() {
        let m = Memory::new(1 << 20, 1 << 20);
        let url = "http://h/a";
        assert!(m.get(&primary(url), url, &HeaderMap::new()).is_none());
        m.insert(entry(url, b"one"));
        let got = m.get(&primary(url), url, &HeaderMap::new()).unwrap();
        assert_eq!(&got.body[..], b"one");
        // The same variant again replaces it: one object, the new body.
        m.insert(entry(url, b"two!"));
        let got = m.get(&primary(url), url, &HeaderMap::new()).unwrap();
        assert_eq!(&got.body[..], b"two!");
        assert_eq!(m.usage(), (1, 4 + OVERHEAD));
        // Another URL is not found under this one's key.
        assert!(
            m.get(&primary(url), "http://h/b", &HeaderMap::new())
                .is_none()
        );
        assert!(m.remove(&primary(url)));
        assert!(!m.remove(&primary(url)));
        assert_eq!(m.usage(), (0, 0));
    }

    #[test]
    fn vary_variants_live_side_by_side_and_refresh_keeps_the_body() {
        let m = Memory::new(1 << 20, 1 << 20);
        let url = "http://h/v";
        m.insert(by_encoding(url, "gzip", b"gzipped"));
        m.insert(by_encoding(url, "br", b"brotli"));
        let p = primary(url);
        assert_eq!(
            &m.get(&p, url, &accept("gzip")).unwrap().body[..],
            b"gzipped"
        );
        assert_eq!(&m.get(&p, url, &accept("br")).unwrap().body[..], b"brotli");
        assert!(m.get(&p, url, &accept("zstd")).is_none());
        assert_eq!(m.usage().0, 2);

        // A 304's metadata replaces the stored one for that variant only; the body stays.
        let old = m.get(&p, url, &accept("br")).unwrap();
        let mut fresh = (*old.meta).clone();
        fresh.headers.insert("x-refreshed", "1".parse().unwrap());
        m.refresh(Arc::new(fresh));
        let br = m.get(&p, url, &accept("br")).unwrap();
        assert_eq!(&br.body[..], b"brotli");
        assert_eq!(br.meta.headers["x-refreshed"], "1");
        let gz = m.get(&p, url, &accept("gzip")).unwrap();
        assert!(gz.meta.headers.get("x-refreshed").is_none());
        // Removing the URL removes every variant.
        assert!(m.remove(&p));
        assert!(m.get(&p, url, &accept("gzip")).is_none());
    }

    #[test]
    fn bodies_over_the_object_limit_are_not_admitted() {
        let m = Memory::new(64 * 1024, 10_000);
        assert!(m.admits(10_000));
        assert!(!m.admits(10_001));
        m.insert(entry("http://h/big", &[0u8; 10_001]));
        assert!(
            m.get(&primary("http://h/big"), "http://h/big", &HeaderMap::new())
                .is_none()
        );
        assert_eq!(m.usage(), (0, 0));
        // The object limit never exceeds the capacity.
        let small = Memory::new(4096, 1 << 20);
        assert_eq!(small.max_object, 4096);
        assert_eq!(small.capacity(), 4096);
    }

    /// Hot objects may be up to `HOT_FACTOR` times the object limit, at most an eighth of
    /// the capacity, never less than the object limit.
    #[test]
    fn hot_objects_are_bounded_by_the_limit_and_the_capacity() {
        let m = Memory::new(1 << 20, 10_000);
        assert_eq!(m.max_hot, 40_000);
        assert!(m.admits_hot(40_000) && !m.admits_hot(40_001) && !m.admits(40_000));
        m.insert(entry("http://h/hot", &[1u8; 40_000]));
        m.insert(entry("http://h/big", &[1u8; 40_001]));
        let get = |u: &str| m.get(&primary(u), u, &HeaderMap::new());
        assert_eq!(get("http://h/hot").unwrap().body.len(), 40_000);
        assert!(get("http://h/big").is_none());
        assert_eq!(Memory::new(160_000, 10_000).max_hot, 20_000);
        assert_eq!(Memory::new(64 * 1024, 10_000).max_hot, 10_000);
        assert_eq!(Memory::new(1 << 20, 0).max_hot, 0);
    }

    /// Far more inserted than fits: the bytes held (bodies plus the per-entry overhead) stay
    /// within the capacity after every insert, and the evictions are counted.
    #[test]
    fn inserts_stay_within_the_capacity_and_count_evictions() {
        const CAP: u64 = 256 * 1024;
        let m = Memory::new(CAP, 32 * 1024);
        let mut inserted = 0u64;
        for i in 0..400 {
            let body = vec![i as u8; 1000 + (i * 131) % 20_000];
            inserted += body.len() as u64 + OVERHEAD;
            m.insert(entry(&format!("http://h/{i}"), &body));
            // What the map holds right after the insert (before anything else runs moka's
            // pending evictions).
            let held: u64 = m
                .cache
                .iter()
                .map(|(_, v)| {
                    v.iter()
                        .map(|e| e.body.len() as u64 + OVERHEAD)
                        .sum::<u64>()
                })
                .sum();
            assert!(held <= CAP, "{held} bytes in the map after insert {i}");
            let (objects, bytes) = m.usage();
            assert!(bytes <= CAP, "{bytes} bytes held after insert {i}");
            assert!(objects > 0);
        }
        assert!(inserted > 10 * CAP);
        let (objects, bytes) = m.usage();
        assert!(m.evictions() > 0);
        // Whatever was dropped was either evicted or refused admission, never lost silently
        // from the accounting: what is held is what the weigher says.
        assert!(
            bytes >= objects * (1000 + OVERHEAD),
            "{objects} objects in {bytes}"
        );
    }

    /// Readers on several threads while entries are replaced and inserted: every read sees a
    /// whole body of one consistent version.
    #[test]
    fn concurrent_readers_see_whole_entries() {
        let m = Arc::new(Memory::new(8 << 20, 1 << 20));
        let url = "http://h/hot";
        m.insert(entry(url, &[0u8; 50_000]));
        let p = primary(url);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (m, p) = (m.clone(), p.clone());
                s.spawn(move || {
                    for _ in 0..2000 {
                        let e = m.get(&p, url, &HeaderMap::new()).unwrap();
                        assert_eq!(e.body.len(), 50_000);
                        let first = e.body[0];
                        assert!(e.body.iter().all(|b| *b == first), "a mixed body");
                        assert_eq!(e.meta.content_length(), Some(50_000));
                    }
                });
            }
            let m = m.clone();
            s.spawn(move || {
                for i in 0..300u32 {
                    m.insert(entry(url, &[(i % 250) as u8; 50_000]));
                    m.insert(entry(&format!("http://h/other{i}"), &[1u8; 2000]));
                }
            });
        });
        assert_eq!(m.get(&p, url, &HeaderMap::new()).unwrap().body[0], 49);
    }
}

//! The shared tier: one S3-compatible bucket that every replica reads and writes, below the
//! local memory and disk tiers and above the upstream (through Apache OpenDAL, S3 service
//! only).
//!
//! **Objects.** An entry is the object `<prefix>/<aa>/<url-hash>` (`aa`: the first two hex
//! digits of the hash, so keys spread over the bucket's partitions) holding exactly the bytes
//! of a disk-tier file (magic, version, metadata, body, body length, checksum; see
//! [`super::meta`]). The key derives from the cache key (the URL) alone. Metadata refreshed by
//! a 304 goes to the small object `<key>.meta` (magic `CUTM`, version, length, metadata,
//! SHA-256), used by another replica when the entry's own metadata is stale and the refresh is
//! newer than the entry's body. A response with a `Vary` selection is `<key>.<variant id>`,
//! found through a stub at `<key>` naming the fields (magic `CUTV`). Only entries that any
//! client may reuse are uploaded: not those from credentialed requests (RFC 9111 §3.5), not
//! variants selected by credentials, never a `Set-Cookie` (the cache never stores one).
//!
//! **Reads** ([`Shared::lookup`]) stat the object (its size is checked before anything is
//! allocated), read and check the header, and hand back a [`Found`] whose body is verified: small
//! bodies are read whole and checked before the first byte is served, larger ones stream and
//! their last bytes go out only once the checksum matched. A corrupt object is deleted and
//! never served; an object older than `--shared-cache-max-age` is ignored (and replaced).
//!
//! **Writes** ([`Shared::offer`]) are queued after a local fill has stored a complete entry
//! and run off the request path: at most `uploads` at once, a bounded queue (full: skipped and
//! counted), streamed from the disk file in parts of [`UPLOAD_CHUNK`] (multipart upload for
//! larger objects: memory stays flat whatever the object's size). A new object is written
//! with `If-None-Match: *` where the store supports it, so the first writer wins. Whether it
//! does is found out once per process (a probe object written twice, the second time
//! conditionally): a store that ignores or refuses the condition gets plain writes (the last
//! writer wins; every copy is a valid entry of the URL) and no leases.
//!
//! **Leases** ([`lease`], `--shared-cache-lease`, off by default) coalesce the upstream
//! fetches of replicas that miss the same URL at once: one fetches, the others wait for its
//! upload.
//!
//! **Failures** never fail a request: every operation has a timeout and reports to the
//! [`breaker::Breaker`]; while it is open the tier is skipped.

pub mod breaker;
pub mod lease;

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc};

use super::disk::{VERIFY_WHOLE_LIMIT, read_at};
use super::fill::Budget;
use super::key::PrimaryKey;
use super::meta::{self, Meta, PREFIX_LEN, TRAILER_LEN};
use crate::http::body::{Body, BoxError};
use breaker::Breaker;

/// Part size of uploads: S3's multipart minimum is 5 MiB; each running upload holds one part.
pub const UPLOAD_CHUNK: usize = 8 << 20;
/// Bytes read from the disk file (or stream) at a time.
const READ_CHUNK: usize = 256 * 1024;
/// Metadata objects are at most this large (the metadata itself is capped at 1 MiB).
const MAX_META_OBJECT: u64 = (1 << 20) + 64;
/// Queued uploads of memory-only entries hold their bodies; at most this many bytes of them.
const QUEUED_MEM_LIMIT: u64 = 32 << 20;
const META_MAGIC: &[u8; 4] = b"CUTM";

/// Static credentials (otherwise the standard AWS chain: `AWS_*` variables, web identity
/// (IRSA), profiles, instance metadata).
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticCredentials(****)")
    }
}

/// The shared tier's configuration (validated).
#[derive(Debug, Clone)]
pub struct SharedSettings {
    pub bucket: String,
    /// Key prefix inside the bucket ("" for none).
    pub prefix: String,
    /// `None`: AWS S3 for the region.
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    pub credentials: Option<StaticCredentials>,
    /// Bound on a lookup (stat and header) and on each wait for bytes of the store.
    pub timeout: Duration,
    /// Objects older than this are ignored and replaced.
    pub max_age: Duration,
    /// Uploads running at once.
    pub uploads: usize,
    /// Uploads waiting; when full, new ones are skipped.
    pub queue: usize,
    /// How long the breaker skips the store after it opens (doubling while it keeps failing).
    pub backoff: Duration,
    /// TLS for an `https` endpoint (the roots cuttle verifies origins with).
    pub tls: Arc<rustls::ClientConfig>,
    /// Cross-replica coalescing with lease objects: `Some(timeout)` (a lease older than the
    /// timeout is ignored and replaced), `None` off.
    pub lease: Option<Duration>,
}

impl SharedSettings {
    /// `s3://bucket/prefix` for logs and the status page (no credentials in it).
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

/// `s3://bucket[/prefix]` → (bucket, prefix).
pub fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .trim()
        .strip_prefix("s3://")
        .ok_or_else(|| format!("`{url}` is not an s3://bucket/prefix URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    if bucket.len() < 3 || bucket.len() > 63 || !bucket.chars().all(ok) {
        return Err(format!(
            "`{bucket}` is not a bucket name (3 to 63 of a-z, 0-9, '-', '.')"
        ));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|s| s == "." || s == "..") || prefix.contains("//") {
        return Err(format!("`{prefix}` is not a key prefix"));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// Counters of the shared tier (the metrics and the status page read them).
#[derive(Default)]
pub struct SharedStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub lookup_errors: AtomicU64,
    /// Lookups not made: the breaker was open.
    pub lookups_skipped: AtomicU64,
    pub corrupt: AtomicU64,
    pub expired: AtomicU64,
    pub uploads: AtomicU64,
    pub upload_bytes: AtomicU64,
    pub upload_errors: AtomicU64,
    /// Uploads not made because another replica had written the object first.
    pub upload_exists: AtomicU64,
    /// Upstream fetches that another replica had made too: found when the upload met the
    /// object already in the store.
    pub duplicate_fetches: AtomicU64,
    /// Leases this replica took (and then fetched upstream).
    pub leases_acquired: AtomicU64,
    /// Leases found older than the timeout and replaced (a replica died holding one).
    pub leases_stale: AtomicU64,
    /// Requests that waited for another replica's lease, and how the waits ended: a shared
    /// hit, or upstream (the lease released without a usable object, or the wait's bound).
    pub lease_waits: AtomicU64,
    pub lease_wait_hits: AtomicU64,
    pub lease_wait_upstream: AtomicU64,
    pub skipped_queue_full: AtomicU64,
    pub skipped_breaker: AtomicU64,
    pub meta_updates: AtomicU64,
    /// Microseconds spent in lookups (stat and header) and their count.
    pub lookup_micros: AtomicU64,
    pub lookup_count: AtomicU64,
    /// Microseconds spent in uploads and their count.
    pub upload_micros: AtomicU64,
    pub upload_count: AtomicU64,
}

/// What a lookup found.
pub enum Lookup {
    /// A usable entry.
    Found(Box<Found>),
    /// No object: a new one may be written (first writer wins).
    Miss,
    /// An object that is not usable (expired, stale, corrupt, another URL): to be replaced.
    Replace,
    /// The store was not asked or did not answer in time.
    Skipped,
}

/// Where a stored entry goes after a fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// Not to the shared tier (it came from there, or there is none).
    No,
    /// A new object: skipped if another replica wrote it first.
    New,
    /// Replaces what the store holds.
    Replace,
}

/// The bytes of a complete local entry, to upload.
pub enum Source {
    /// The committed disk file (still readable after an eviction).
    File(Arc<std::fs::File>),
    /// A memory-only entry's body (the header and trailer are made for the upload).
    Mem(Bytes),
}

enum Job {
    Entry {
        meta: Arc<Meta>,
        source: Source,
        conditional: bool,
        /// Held (only for its drop) until the job is done or dropped, then deleted.
        _lease: Option<lease::Lease>,
    },
    Meta(Arc<Meta>),
}

type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

pub struct Shared {
    op: opendal::Operator,
    settings: SharedSettings,
    pub breaker: Breaker,
    pub stats: SharedStats,
    queue: mpsc::Sender<Job>,
    queued_mem: AtomicU64,
    budget: Arc<Budget>,
    max_object: u64,
    /// Whether the store honours `If-None-Match: *`: [`COND_UNKNOWN`] until probed.
    conditional: AtomicU8,
    /// This process's id in its lease objects.
    owner: String,
}

const COND_UNKNOWN: u8 = 0;
const COND_YES: u8 = 1;
const COND_NO: u8 = 2;

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("url", &self.settings.url())
            .finish_non_exhaustive()
    }
}

/// The object key of a URL hash.
pub fn object_key(primary_hex: &str) -> String {
    let spread = primary_hex.get(..2).unwrap_or("00");
    format!("{spread}/{primary_hex}")
}

/// The object of one stored entry: the URL's key, with the variant id when the response
/// has a `Vary` selection (the URL's key then holds a [`VARY_MAGIC`] stub naming the fields).
pub fn entry_key(meta: &Meta) -> String {
    let hex = meta.key().primary;
    if meta.variant.fields.is_empty() {
        object_key(&hex)
    } else {
        format!("{}.{}", object_key(&hex), meta.variant.id())
    }
}

fn meta_key(entry_key: &str) -> String {
    format!("{entry_key}.meta")
}

/// Request fields whose values never select a shared variant: they are credentials, kept
/// only as a per-process fingerprint.
const PRIVATE_FIELDS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];
const VARY_MAGIC: &[u8; 4] = b"CUTV";
/// The version byte of the small objects (`.meta` after a 304, Vary stubs): still 1, their
/// checksum SHA-256 over a few hundred bytes of JSON, so replicas of every version read them.
/// (Entries are version 2 since the checksum of their body became BLAKE3; see `meta`.)
const SMALL_OBJECT_VERSION: u8 = 1;

/// Vary stubs are at most this large.
const MAX_VARY_OBJECT: u64 = 4096;

fn encode_vary_stub(names: &[String]) -> Result<Vec<u8>, String> {
    let json = serde_json::to_vec(names).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(PREFIX_LEN + json.len() + 32);
    out.extend_from_slice(VARY_MAGIC);
    out.push(SMALL_OBJECT_VERSION);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&Sha256::digest(&json));
    Ok(out)
}

/// The field names of a Vary stub; `None` when it is damaged.
fn decode_vary_stub(data: &[u8]) -> Option<Vec<String>> {
    if data.len() < PREFIX_LEN + 32 || &data[..4] != VARY_MAGIC || data[4] != SMALL_OBJECT_VERSION {
        return None;
    }
    let len = u32::from_le_bytes([data[5], data[6], data[7], data[8]]) as usize;
    if data.len() != PREFIX_LEN + len + 32 {
        return None;
    }
    let json = &data[PREFIX_LEN..PREFIX_LEN + len];
    if Sha256::digest(json)[..] != data[PREFIX_LEN + len..] {
        return None;
    }
    let names: Vec<String> = serde_json::from_slice(json).ok()?;
    names
        .iter()
        .all(|n| http::HeaderName::from_bytes(n.as_bytes()).is_ok())
        .then_some(names)
}

/// The variant id a request selects among entries that vary on `names`.
fn variant_id(names: &[String], req: &HeaderMap) -> Option<String> {
    let mut vary = HeaderMap::new();
    vary.insert(
        http::header::VARY,
        http::HeaderValue::from_str(&names.join(", ")).ok()?,
    );
    Some(super::key::Variant::of(&vary, req).id())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether an entry may go to the shared tier at all.
pub fn shareable(meta: &Meta) -> bool {
    meta.policy.is_shared_reusable()
        && !meta.variant.star
        && !meta
            .variant
            .fields
            .iter()
            .any(|(n, _)| PRIVATE_FIELDS.contains(&n.as_str()))
        && !meta.headers.contains_key(http::header::SET_COOKIE)
}

impl Shared {
    /// Builds the client; nothing is sent to the store here (startup never waits for it).
    pub fn new(
        settings: SharedSettings,
        max_object: u64,
        budget: Arc<Budget>,
    ) -> Result<Arc<Shared>, String> {
        let mut b = opendal::services::S3::default()
            .bucket(&settings.bucket)
            .root(&format!("/{}", settings.prefix))
            .region(&settings.region);
        if let Some(e) = &settings.endpoint {
            b = b.endpoint(e);
        }
        if !settings.path_style {
            b = b.enable_virtual_host_style();
        }
        if let Some(c) = &settings.credentials {
            b = b
                .access_key_id(&c.access_key_id)
                .secret_access_key(&c.secret_access_key);
            if let Some(t) = &c.session_token {
                b = b.session_token(t);
            }
        }
        let mut tls = (*settings.tls).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(settings.timeout)
            .no_proxy()
            .build()
            .map_err(|e| format!("shared-cache: cannot build the HTTP client: {e}"))?;
        let op = opendal::Operator::new(b)
            .map_err(|e| format!("shared-cache: {e}"))?
            .layer(opendal::layers::HttpClientLayer::new(
                opendal::raw::HttpClient::with(client),
            ))
            .finish();
        let conditional = if op.info().full_capability().write_with_if_not_exists {
            COND_UNKNOWN
        } else {
            COND_NO
        };
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let shared = Arc::new(Shared {
            op,
            breaker: Breaker::new(settings.backoff),
            stats: SharedStats::default(),
            queue: tx,
            queued_mem: AtomicU64::new(0),
            budget,
            max_object,
            conditional: AtomicU8::new(conditional),
            owner: lease::owner_id(),
            settings,
        });
        tokio::spawn(dispatch(Arc::downgrade(&shared), rx));
        Ok(shared)
    }

    pub fn settings(&self) -> &SharedSettings {
        &self.settings
    }

    /// Looks up the entry of `primary` that a request with `req` headers selects; `usable`
    /// says whether a stored response may answer this request now (fresh for it). Bounded by
    /// the timeout; any failure is a [`Lookup::Skipped`].
    pub async fn lookup(
        self: &Arc<Self>,
        primary: &PrimaryKey,
        req: &HeaderMap,
        usable: impl Fn(&Meta) -> bool,
    ) -> Lookup {
        if !self.breaker.allow() {
            self.stats.lookups_skipped.fetch_add(1, Ordering::Relaxed);
            return Lookup::Skipped;
        }
        let start = Instant::now();
        let r = tokio::time::timeout(self.settings.timeout, self.open(primary, req, &usable)).await;
        self.stats
            .lookup_micros
            .fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.stats.lookup_count.fetch_add(1, Ordering::Relaxed);
        let r = match r {
            Ok(r) => r,
            Err(_) => Err("timed out".to_string()),
        };
        match r {
            Ok(l) => {
                self.breaker.success();
                if !matches!(l, Lookup::Found(_)) {
                    self.stats.misses.fetch_add(1, Ordering::Relaxed);
                }
                l
            }
            Err(e) => {
                self.stats.lookup_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "shared cache lookup failed");
                self.breaker.failure(&e);
                Lookup::Skipped
            }
        }
    }

    async fn open(
        self: &Arc<Self>,
        primary: &PrimaryKey,
        req: &HeaderMap,
        usable: &impl Fn(&Meta) -> bool,
    ) -> Result<Lookup, String> {
        let mut key = object_key(primary.hex());
        let mut varied = false;
        let (size, mut stream, mut buf) = loop {
            let size = match self.op.stat(&key).await {
                Ok(m) => m.content_length(),
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(Lookup::Miss),
                Err(e) => return Err(e.to_string()),
            };
            let least = PREFIX_LEN as u64;
            let most = self.max_object + MAX_META_OBJECT + (PREFIX_LEN + TRAILER_LEN) as u64;
            if !(least..=most).contains(&size) {
                // Larger than this replica stores, or too small to be an entry: not read.
                return Ok(Lookup::Replace);
            }
            let reader = self.op.reader(&key).await.map_err(|e| e.to_string())?;
            let stream = reader
                .into_bytes_stream(0..size)
                .await
                .map_err(|e| e.to_string())?;
            let mut stream: ByteStream = Box::pin(stream);
            let mut buf = BytesMut::new();
            read_until(&mut stream, &mut buf, PREFIX_LEN).await?;
            if &buf[..4] != VARY_MAGIC {
                break (size, stream, buf);
            }
            // The URL's responses vary: the stub names the fields, the request's values
            // select the variant's object (one level only).
            if varied || size > MAX_VARY_OBJECT {
                return Ok(self.corrupt(&key, "unexpected vary stub"));
            }
            read_until(&mut stream, &mut buf, size as usize).await?;
            let Some(names) = decode_vary_stub(&buf) else {
                return Ok(self.corrupt(&key, "damaged vary stub"));
            };
            let Some(id) = variant_id(&names, req) else {
                return Ok(Lookup::Miss);
            };
            key = format!("{}.{id}", object_key(primary.hex()));
            varied = true;
        };
        let (meta_len, algo) = match meta::decode_prefix(&buf[..PREFIX_LEN]) {
            Ok((n, algo)) if (PREFIX_LEN + n + TRAILER_LEN) as u64 <= size => (n, algo),
            Ok(_) => return Ok(self.corrupt(&key, "header longer than the object")),
            // A format this release does not know (a newer replica's, during a rolling
            // upgrade): not usable here, but not damaged either, so it is replaced by this
            // replica's next upload rather than deleted.
            Err(meta::MetaError::Version(_)) => return Ok(Lookup::Replace),
            Err(e) => return Ok(self.corrupt(&key, &e.to_string())),
        };
        read_until(&mut stream, &mut buf, PREFIX_LEN + meta_len).await?;
        let json = &buf[PREFIX_LEN..PREFIX_LEN + meta_len];
        let embedded = match meta::decode_meta(json) {
            Ok(m) => m,
            Err(e) => return Ok(self.corrupt(&key, &e.to_string())),
        };
        let mut hasher = algo.hasher();
        hasher.update(json);
        let rest = buf.split_off(PREFIX_LEN + meta_len).freeze();
        let body_len = size - (PREFIX_LEN + meta_len + TRAILER_LEN) as u64;
        if embedded.url != primary.url() || !shareable(&embedded) || !embedded.variant.matches(req)
        {
            // Another URL with the same hash, or an entry this version would not share.
            return Ok(Lookup::Replace);
        }
        if embedded.content_length().is_some_and(|n| n != body_len) {
            return Ok(self.corrupt(&key, "body length differs from Content-Length"));
        }
        if now_secs().saturating_sub(embedded.stored_at) > self.settings.max_age.as_secs() {
            self.stats.expired.fetch_add(1, Ordering::Relaxed);
            return Ok(Lookup::Replace);
        }
        let meta = if usable(&embedded) {
            embedded
        } else {
            match self.refreshed(&key, &embedded).await {
                Some(m) if usable(&m) => m,
                _ => return Ok(Lookup::Replace),
            }
        };
        Ok(Lookup::Found(Box::new(Found {
            meta: Arc::new(meta),
            shared: self.clone(),
            key,
            stream,
            rest,
            hasher,
            body_len,
        })))
    }

    /// The metadata a 304 refreshed for `embedded`'s body, if any (and newer than the body).
    async fn refreshed(&self, entry_key: &str, embedded: &Meta) -> Option<Meta> {
        let key = meta_key(entry_key);
        // The size is checked before anything is read.
        let size = self.op.stat(&key).await.ok()?.content_length();
        if size > MAX_META_OBJECT {
            return None;
        }
        let data = self
            .op
            .read_with(&key)
            .range(0..size)
            .await
            .ok()?
            .to_bytes();
        let m = decode_meta_object(&data)?;
        let same_etag = match (
            m.headers.get(http::header::ETAG),
            embedded.headers.get(http::header::ETAG),
        ) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        (m.url == embedded.url
            && m.variant == embedded.variant
            && m.stored_at >= embedded.stored_at
            && same_etag
            && shareable(&m))
        .then_some(m)
    }

    /// Counts and deletes a corrupt object (in the background).
    fn corrupt(self: &Arc<Self>, key: &str, why: &str) -> Lookup {
        tracing::warn!(key, error = why, "shared cache object is corrupt; deleted");
        self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
        let (me, key) = (self.clone(), key.to_string());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(me.settings.timeout, me.op.delete(&key)).await;
        });
        Lookup::Replace
    }

    /// Queues the upload of a complete local entry (never waits: a full queue skips it). The
    /// lease this replica took for the fetch, if any, is dropped (deleted) once the upload
    /// has run or was skipped.
    pub fn offer(
        &self,
        meta: Arc<Meta>,
        source: Source,
        upload: Upload,
        lease: Option<lease::Lease>,
    ) {
        if upload == Upload::No || !shareable(&meta) {
            return;
        }
        if self.breaker.state() == breaker::BreakerState::Open {
            self.stats.skipped_breaker.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Source::Mem(b) = &source {
            let n = b.len() as u64;
            if self.queued_mem.fetch_add(n, Ordering::AcqRel) + n > QUEUED_MEM_LIMIT {
                self.queued_mem.fetch_sub(n, Ordering::AcqRel);
                self.stats
                    .skipped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let job = Job::Entry {
            meta,
            source,
            conditional: upload == Upload::New,
            _lease: lease,
        };
        if let Err(mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) =
            self.queue.try_send(job)
        {
            self.release_mem(&job);
            self.stats
                .skipped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues the upload of metadata refreshed by a 304 (the body is not sent again).
    pub fn offer_meta(&self, meta: Arc<Meta>) {
        if !shareable(&meta) || self.breaker.state() == breaker::BreakerState::Open {
            return;
        }
        if self.queue.try_send(Job::Meta(meta)).is_err() {
            self.stats
                .skipped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn release_mem(&self, job: &Job) {
        if let Job::Entry {
            source: Source::Mem(b),
            ..
        } = job
        {
            self.queued_mem.fetch_sub(b.len() as u64, Ordering::AcqRel);
        }
    }

    async fn run(&self, job: Job) {
        if !self.breaker.allow() {
            self.release_mem(&job);
            self.stats.skipped_breaker.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let start = Instant::now();
        let r = match &job {
            Job::Entry {
                meta,
                source,
                conditional,
                ..
            } => self.upload(meta, source, *conditional).await,
            Job::Meta(meta) => self.upload_meta(meta).await.map(|_| true),
        };
        self.release_mem(&job);
        match r {
            Ok(written) => {
                self.breaker.success();
                match (&job, written) {
                    (Job::Meta(_), _) => {
                        self.stats.meta_updates.fetch_add(1, Ordering::Relaxed);
                    }
                    (_, true) => {
                        self.stats.uploads.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .upload_micros
                            .fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                        self.stats.upload_count.fetch_add(1, Ordering::Relaxed);
                    }
                    (_, false) => {
                        self.stats.upload_exists.fetch_add(1, Ordering::Relaxed);
                        self.stats.duplicate_fetches.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(e) => {
                self.stats.upload_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "shared cache upload failed");
                self.breaker.failure(&e);
            }
        }
    }

    /// Streams an entry to its object. `Ok(false)`: another replica wrote it first.
    async fn upload(
        &self,
        meta: &Meta,
        source: &Source,
        conditional: bool,
    ) -> Result<bool, String> {
        let key = entry_key(meta);
        let idle = self.settings.timeout.max(Duration::from_secs(10));
        let len = match source {
            Source::File(f) => {
                let f = f.clone();
                tokio::task::spawn_blocking(move || f.metadata().map(|m| m.len()))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?
            }
            Source::Mem(b) => b.len() as u64,
        };
        // Conditional only for single-request uploads (multipart completion differs by
        // store); a new multipart object, or one for a store without conditional writes, is
        // not uploaded when another replica's copy is there already.
        let single = len < UPLOAD_CHUNK as u64;
        let first_wins = conditional && single && self.conditional_ok().await;
        if conditional && !first_wins {
            match tokio::time::timeout(idle, self.op.stat(&key)).await {
                Ok(Ok(_)) => return Ok(false),
                Ok(Err(e)) if e.kind() == opendal::ErrorKind::NotFound => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("timed out".into()),
            }
        }
        let conditional = first_wins;
        let mut w = tokio::time::timeout(
            idle,
            self.op
                .writer_with(&key)
                .chunk(UPLOAD_CHUNK)
                .if_not_exists(conditional),
        )
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let r: Result<u64, String> = async {
            let mut sent = 0u64;
            match source {
                Source::File(f) => loop {
                    let chunk = read_at(f.clone(), sent, READ_CHUNK)
                        .await
                        .map_err(|e| e.to_string())?;
                    if chunk.is_empty() {
                        break;
                    }
                    sent += chunk.len() as u64;
                    write_timed(&mut w, chunk, idle).await?;
                },
                Source::Mem(body) => {
                    let prefix = meta.encode_prefix().map_err(|e| e.to_string())?;
                    let mut h = meta::Algo::CURRENT.hasher();
                    h.update(&prefix[PREFIX_LEN..]);
                    h.update(body);
                    let sum = h.finalize();
                    let trailer = meta::encode_trailer(body.len() as u64, &sum);
                    sent = (prefix.len() + body.len() + TRAILER_LEN) as u64;
                    write_timed(&mut w, Bytes::from(prefix), idle).await?;
                    write_timed(&mut w, body.clone(), idle).await?;
                    write_timed(&mut w, Bytes::copy_from_slice(&trailer), idle).await?;
                }
            }
            Ok(sent)
        }
        .await;
        let sent = match r {
            Ok(n) => n,
            Err(e) => {
                let _ = tokio::time::timeout(idle, w.abort()).await;
                return Err(e);
            }
        };
        match tokio::time::timeout(idle, w.close()).await {
            Err(_) => {
                let _ = tokio::time::timeout(idle, w.abort()).await;
                Err("timed out".into())
            }
            Ok(Err(e)) if e.kind() == opendal::ErrorKind::ConditionNotMatch => Ok(false),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(_)) => {
                self.stats.upload_bytes.fetch_add(sent, Ordering::Relaxed);
                if !meta.variant.fields.is_empty() {
                    // Lookups find the variant through the stub at the URL's key.
                    let names: Vec<String> =
                        meta.variant.fields.iter().map(|(n, _)| n.clone()).collect();
                    let stub = encode_vary_stub(&names)?;
                    tokio::time::timeout(
                        idle,
                        self.op.write(&object_key(&meta.key().primary), stub),
                    )
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| e.to_string())?;
                }
                Ok(true)
            }
        }
    }

    async fn upload_meta(&self, meta: &Meta) -> Result<(), String> {
        let data = encode_meta_object(meta)?;
        let key = meta_key(&entry_key(meta));
        tokio::time::timeout(self.settings.timeout, self.op.write(&key, data))
            .await
            .map_err(|_| "timed out".to_string())?
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Whether the store honours `If-None-Match: *`, probed once: a probe object written
    /// plainly, then again conditionally, which must be refused. A store that accepts the
    /// second write ignores the condition; one that fails it otherwise (400, 501) refuses
    /// it. Either way conditional writes and leases stay off for this process (one log
    /// line). While the store fails, the answer stays unknown (and `false`).
    async fn conditional_ok(&self) -> bool {
        match self.conditional.load(Ordering::Acquire) {
            COND_YES => return true,
            COND_NO => return false,
            _ => {}
        }
        let key = format!("probe/{}-{}", self.owner, lease::now_ms());
        let t = self.settings.timeout;
        let plain = tokio::time::timeout(t, self.op.write(&key, "probe")).await;
        if !matches!(plain, Ok(Ok(_))) {
            return false;
        }
        let again =
            tokio::time::timeout(t, self.op.write_with(&key, "probe").if_not_exists(true)).await;
        let verdict = match again {
            Err(_) => None,
            Ok(Err(e)) if e.kind() == opendal::ErrorKind::ConditionNotMatch => Some(COND_YES),
            Ok(Err(e)) if e.is_temporary() => None,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "shared cache: the store refuses conditional writes; plain writes, no leases");
                Some(COND_NO)
            }
            Ok(Ok(_)) => {
                tracing::warn!(
                    "shared cache: the store ignores If-None-Match; plain writes, no leases"
                );
                Some(COND_NO)
            }
        };
        let _ = tokio::time::timeout(t, self.op.delete(&key)).await;
        match verdict {
            Some(v) => {
                self.conditional.store(v, Ordering::Release);
                v == COND_YES
            }
            None => false,
        }
    }

    /// A small object whole (its size checked first: a larger one is read as its first
    /// `max` bytes).
    async fn read_small(&self, key: &str, max: u64) -> opendal::Result<Bytes> {
        let size = self.op.stat(key).await?.content_length();
        if size == 0 {
            return Ok(Bytes::new());
        }
        Ok(self
            .op
            .read_with(key)
            .range(0..size.min(max))
            .await?
            .to_bytes())
    }

    /// Asks for the lease of `primary` before fetching it upstream (see [`lease`]).
    pub async fn try_lease(&self, primary: &PrimaryKey) -> lease::Try {
        let Some(timeout) = self.settings.lease else {
            return lease::Try::Off;
        };
        if self.breaker.state() == breaker::BreakerState::Open || !self.conditional_ok().await {
            return lease::Try::Off;
        }
        let key = lease::lease_key(&object_key(primary.hex()));
        let t = self.settings.timeout;
        let held = |me: &Self| lease::Lease {
            op: me.op.clone(),
            key: key.clone(),
            timeout: t,
        };
        for _ in 0..2 {
            let body = lease::encode(&self.owner, lease::now_ms());
            let r =
                tokio::time::timeout(t, self.op.write_with(&key, body).if_not_exists(true)).await;
            match r {
                Ok(Ok(_)) => {
                    self.breaker.success();
                    self.stats.leases_acquired.fetch_add(1, Ordering::Relaxed);
                    return lease::Try::Acquired(held(self));
                }
                Ok(Err(e)) if e.kind() == opendal::ErrorKind::ConditionNotMatch => {}
                Ok(Err(e)) => {
                    self.breaker.failure(&e.to_string());
                    return lease::Try::Off;
                }
                Err(_) => {
                    self.breaker.failure("timed out");
                    return lease::Try::Off;
                }
            }
            // Someone's lease: fresh, or left behind?
            let data = match tokio::time::timeout(t, self.read_small(&key, 256)).await {
                Ok(Ok(d)) => d,
                // Released in between: ask again.
                Ok(Err(e)) if e.kind() == opendal::ErrorKind::NotFound => continue,
                Ok(Err(e)) => {
                    self.breaker.failure(&e.to_string());
                    return lease::Try::Off;
                }
                Err(_) => {
                    self.breaker.failure("timed out");
                    return lease::Try::Off;
                }
            };
            let live = lease::decode(&data).is_some_and(|(owner, created)| {
                owner != self.owner && lease::fresh(created, lease::now_ms(), timeout)
            });
            if live {
                return lease::Try::Held;
            }
            // Stale (its replica died), damaged, or this process's own leftover: replaced.
            // Two replicas replacing the same stale lease at once both fetch (rare; the
            // upload's first-writer-wins keeps one copy).
            let body = lease::encode(&self.owner, lease::now_ms());
            return match tokio::time::timeout(t, self.op.write(&key, body)).await {
                Ok(Ok(_)) => {
                    self.stats.leases_stale.fetch_add(1, Ordering::Relaxed);
                    self.stats.leases_acquired.fetch_add(1, Ordering::Relaxed);
                    lease::Try::Acquired(held(self))
                }
                Ok(Err(e)) => {
                    self.breaker.failure(&e.to_string());
                    lease::Try::Off
                }
                Err(_) => {
                    self.breaker.failure("timed out");
                    lease::Try::Off
                }
            };
        }
        lease::Try::Held
    }

    /// Uploads queued and running now.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

async fn write_timed(w: &mut opendal::Writer, b: Bytes, idle: Duration) -> Result<(), String> {
    tokio::time::timeout(idle, w.write(b))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())
}

/// Runs queued uploads, at most `uploads` at once; ends with the tier.
async fn dispatch(shared: Weak<Shared>, mut rx: mpsc::Receiver<Job>) {
    let slots = match shared.upgrade() {
        Some(s) => Arc::new(Semaphore::new(s.settings.uploads.max(1))),
        None => return,
    };
    while let Some(job) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(me) = shared.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            me.run(job).await;
            drop(permit);
        });
    }
}

/// Reads from `stream` until `buf` holds `n` bytes.
async fn read_until(stream: &mut ByteStream, buf: &mut BytesMut, n: usize) -> Result<(), String> {
    while buf.len() < n {
        match stream.next().await {
            Some(Ok(b)) => buf.extend_from_slice(&b),
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("object shorter than its size".into()),
        }
    }
    Ok(())
}

fn encode_meta_object(meta: &Meta) -> Result<Vec<u8>, String> {
    let mut out = meta.encode_prefix().map_err(|e| e.to_string())?;
    out[..4].copy_from_slice(META_MAGIC);
    out[4] = SMALL_OBJECT_VERSION;
    let sum = Sha256::digest(&out[PREFIX_LEN..]);
    out.extend_from_slice(&sum);
    Ok(out)
}

fn decode_meta_object(data: &[u8]) -> Option<Meta> {
    if data.len() < PREFIX_LEN + 32 || &data[..4] != META_MAGIC {
        return None;
    }
    let mut prefix = [0u8; PREFIX_LEN];
    prefix.copy_from_slice(&data[..PREFIX_LEN]);
    prefix[..4].copy_from_slice(meta::MAGIC);
    let (len, _) = meta::decode_prefix(&prefix).ok()?;
    if data.len() != PREFIX_LEN + len + 32 {
        return None;
    }
    let json = &data[PREFIX_LEN..PREFIX_LEN + len];
    if Sha256::digest(json)[..] != data[PREFIX_LEN + len..] {
        return None;
    }
    meta::decode_meta(json).ok()
}

/// An entry found in the store, its header read and checked; the body not yet read.
pub struct Found {
    pub meta: Arc<Meta>,
    shared: Arc<Shared>,
    key: String,
    stream: ByteStream,
    /// Bytes already read past the metadata.
    rest: Bytes,
    /// Over the stored metadata so far; the body follows.
    hasher: meta::Checksum,
    pub body_len: u64,
}

impl Found {
    /// The verified body: read whole and checked first when small (`None` if it is corrupt
    /// or the store fails: the request goes upstream), streamed otherwise (a corrupt object
    /// then ends the body with an error before its last bytes).
    pub async fn into_body(self: Box<Self>) -> Option<Body> {
        let whole = self.body_len <= VERIFY_WHOLE_LIMIT;
        let held = whole
            .then(|| self.shared.budget.try_take(self.body_len))
            .flatten();
        if held.is_some() {
            let r = (*self).read_whole().await;
            drop(held);
            return r.map(crate::http::body::full);
        }
        self.shared.stats.hits.fetch_add(1, Ordering::Relaxed);
        Some((*self).stream_body())
    }

    async fn read_whole(mut self) -> Option<Bytes> {
        let idle = self.shared.settings.timeout.max(Duration::from_secs(10));
        let total = self.body_len as usize + TRAILER_LEN;
        let mut buf = BytesMut::with_capacity(total);
        buf.extend_from_slice(&self.rest);
        while buf.len() < total {
            match tokio::time::timeout(idle, self.stream.next()).await {
                Ok(Some(Ok(b))) if buf.len() + b.len() <= total => buf.extend_from_slice(&b),
                Ok(Some(Ok(_))) => {
                    self.shared
                        .corrupt(&self.key, "object longer than its size");
                    return None;
                }
                Ok(Some(Err(e))) => {
                    self.failed(&e.to_string());
                    return None;
                }
                Ok(None) => {
                    self.shared
                        .corrupt(&self.key, "object shorter than its size");
                    return None;
                }
                Err(_) => {
                    self.failed("timed out");
                    return None;
                }
            }
        }
        let body_end = self.body_len as usize;
        self.hasher.update(&buf[..body_end]);
        let ok = meta::decode_trailer(&buf[body_end..])
            .ok()
            .is_some_and(|(len, sum)| {
                len == self.body_len && self.hasher.clone().finalize() == sum
            });
        if !ok {
            self.shared.corrupt(&self.key, "checksum mismatch");
            return None;
        }
        self.shared.stats.hits.fetch_add(1, Ordering::Relaxed);
        Some(buf.freeze().slice(..body_end))
    }

    fn failed(&self, why: &str) {
        self.shared
            .stats
            .lookup_errors
            .fetch_add(1, Ordering::Relaxed);
        self.shared.breaker.failure(why);
    }

    /// The body as it streams; the piece holding its last byte is released only once the
    /// trailer has been read and the checksum matched.
    fn stream_body(self) -> Body {
        struct St {
            found: Found,
            /// Body bytes still to come.
            left: u64,
            trailer: BytesMut,
            held: Option<Bytes>,
            pending: Option<Bytes>,
            done: bool,
        }
        let mut st = St {
            left: self.body_len,
            trailer: BytesMut::new(),
            held: None,
            pending: Some(self.rest.clone()),
            done: false,
            found: self,
        };
        st.found.rest = Bytes::new();
        let idle = st
            .found
            .shared
            .settings
            .timeout
            .max(Duration::from_secs(10));
        let stream = futures_util::stream::unfold(st, move |mut st| async move {
            if st.done {
                return None;
            }
            let r: Result<Option<Bytes>, String> = async {
                loop {
                    let chunk = match st.pending.take() {
                        Some(c) => c,
                        None => match tokio::time::timeout(idle, st.found.stream.next()).await {
                            Ok(Some(Ok(c))) => c,
                            Ok(Some(Err(e))) => {
                                st.found.failed(&e.to_string());
                                return Err(format!("shared cache read failed: {e}"));
                            }
                            Ok(None) => {
                                st.found.shared.corrupt(&st.found.key, "object ends early");
                                return Err("shared cache object ends early".into());
                            }
                            Err(_) => {
                                st.found.failed("timed out");
                                return Err("shared cache read timed out".into());
                            }
                        },
                    };
                    if chunk.is_empty() {
                        continue;
                    }
                    let take = (chunk.len() as u64).min(st.left) as usize;
                    let body = chunk.slice(..take);
                    st.found.hasher.update(&body);
                    st.left -= take as u64;
                    st.trailer.extend_from_slice(&chunk[take..]);
                    if st.trailer.len() > TRAILER_LEN {
                        st.found
                            .shared
                            .corrupt(&st.found.key, "object longer than its size");
                        return Err("shared cache object corrupt".into());
                    }
                    if st.left > 0 {
                        if body.is_empty() {
                            continue;
                        }
                        return Ok(Some(body));
                    }
                    // The last body bytes wait for the trailer.
                    if !body.is_empty() {
                        st.held = Some(match st.held.take() {
                            Some(h) => [h, body].concat().into(),
                            None => body,
                        });
                    }
                    if st.trailer.len() < TRAILER_LEN {
                        continue;
                    }
                    let sum = st.found.hasher.clone().finalize();
                    let ok = meta::decode_trailer(&st.trailer)
                        .ok()
                        .is_some_and(|(len, s)| len == st.found.body_len && sum == s);
                    if !ok {
                        st.found.shared.corrupt(&st.found.key, "checksum mismatch");
                        return Err("shared cache object failed its checksum".into());
                    }
                    st.done = true;
                    return Ok(st.held.take());
                }
            }
            .await;
            match r {
                Ok(Some(b)) => Some((Ok(http_body::Frame::data(b)), st)),
                Ok(None) => None,
                Err(e) => {
                    st.done = true;
                    Some((Err(BoxError::from(e)), st))
                }
            }
        });
        crate::http::body::boxed(http_body_util::StreamBody::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_url("s3://cuttle-cache/team/a/").unwrap(),
            ("cuttle-cache".into(), "team/a".into())
        );
        assert_eq!(parse_url("s3://bkt").unwrap(), ("bkt".into(), "".into()));
        for bad in [
            "http://bkt/x",
            "s3://",
            "s3://Bkt/x",
            "s3://b/x",
            "s3://bkt/../x",
            "s3://bkt/a//b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn meta_objects_round_trip_and_reject_damage() {
        let req = crate::cache::policy::request_view(
            &http::Method::GET,
            &"http://h/x".parse().unwrap(),
            "h",
            &HeaderMap::new(),
            None,
        );
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", "max-age=60".parse().unwrap());
        let policy = crate::cache::policy::StoredPolicy::new(
            &req,
            http::StatusCode::OK,
            &headers,
            SystemTime::now(),
            None,
        )
        .unwrap();
        let meta = Meta::new(
            &PrimaryKey::from_url("http://h/x".into()),
            Default::default(),
            http::StatusCode::OK,
            headers,
            policy,
        );
        assert!(shareable(&meta));
        let data = encode_meta_object(&meta).unwrap();
        assert_eq!(decode_meta_object(&data).unwrap().url, "http://h/x");
        let mut bad = data.clone();
        let last = bad.len() - 40;
        bad[last] ^= 1;
        assert!(decode_meta_object(&bad).is_none(), "a flipped byte");
        assert!(
            decode_meta_object(&data[..data.len() - 1]).is_none(),
            "truncated"
        );
        let mut huge = data.clone();
        huge[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            decode_meta_object(&huge).is_none(),
            "a length past the bound"
        );
        let mut with_cookie = meta.clone();
        with_cookie
            .headers
            .insert(http::header::SET_COOKIE, "a=b".parse().unwrap());
        assert!(!shareable(&with_cookie));
    }

    #[test]
    fn keys_spread_by_hash() {
        let h = "ab".to_string() + &"0".repeat(62);
        assert_eq!(object_key(&h), format!("ab/{h}"));
        assert_eq!(meta_key(&object_key(&h)), format!("ab/{h}.meta"));
        let names = vec!["accept".to_string(), "accept-encoding".to_string()];
        let stub = encode_vary_stub(&names).unwrap();
        assert_eq!(decode_vary_stub(&stub).unwrap(), names);
        let mut bad = stub.clone();
        bad[PREFIX_LEN] ^= 1;
        assert!(decode_vary_stub(&bad).is_none());
        let mut a = HeaderMap::new();
        a.insert("accept", "application/json".parse().unwrap());
        let b = HeaderMap::new();
        assert_ne!(variant_id(&names, &a), variant_id(&names, &b));
    }
}

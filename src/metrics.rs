//! Every Prometheus metric cuttle exposes, with its name, help and bounded label set, in one
//! place. Labels are small closed sets (method classes, Squid result codes, error labels,
//! cache tiers, parent positions), never hosts or URLs. Most request metrics are derived from
//! the access-log record when a transaction ends ([`Metrics::observe`]); gauges are moved by
//! RAII guards; cache figures are read from the cache at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::cache::Cache;
use crate::mirror::{MirrorStats, Mirrors};
use crate::telemetry::record::{AccessRecord, ResultCode};
use crate::upstream::parent::Peer;

type L1 = [(&'static str, &'static str); 1];
type L2 = [(&'static str, &'static str); 2];
/// A mirror's name: configured, so a bounded set.
type LM = [(&'static str, String); 1];
type Hist = Family<L1, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<L2, Counter>,
    response_bytes: Family<L1, Counter>,
    upstream_seconds: Histogram,
    ttfb_seconds: Hist,
    client_connections: Gauge,
    tunnels: Gauge,
    tunnel_bytes: Family<L1, Counter>,
    cache_objects: Family<L1, Gauge>,
    cache_bytes: Family<L1, Gauge>,
    cache_capacity: Family<L1, Gauge>,
    cache_evictions: Family<L1, Counter>,
    coalesced: Counter,
    stale_served: Counter,
    cache_corrupt: Counter,
    cache_write_errors: Counter,
    upstream_errors: Family<L1, Counter>,
    parent_up: Family<L1, Gauge>,
    denials: Family<L1, Counter>,
    pub certificates_minted: Counter,
    log_lines_dropped: Counter,
    mirror_requests: Family<LM, Counter>,
    mirror_hits: Family<LM, Counter>,
    mirror_bytes_saved: Family<LM, Counter>,
    mirror_upstream_errors: Family<LM, Counter>,
    mirror_rewrite_errors: Family<LM, Counter>,
    shared_ops: Family<L2, Counter>,
    shared_seconds: Family<L1, Counter<f64, AtomicU64>>,
    shared_bytes_uploaded: Counter,
    shared_duplicate_fetches: Counter,
    shared_breaker: Gauge,
    shared_breaker_openings: Counter,
    shared_queue: Gauge,
}

/// Method classes used as a label.
pub fn method_class(method: &str) -> &'static str {
    match method {
        "GET" => "get",
        "HEAD" => "head",
        "POST" => "post",
        "PUT" => "put",
        "DELETE" => "delete",
        "PATCH" => "patch",
        "OPTIONS" => "options",
        "CONNECT" => "connect",
        "PURGE" => "purge",
        _ => "other",
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("cuttle");
        let requests = Family::<L2, Counter>::default();
        r.register(
            "requests",
            "Client requests and tunnels, by method class and Squid result code",
            requests.clone(),
        );
        let response_bytes = Family::<L1, Counter>::default();
        r.register(
            "response_bytes",
            "Bytes sent to clients, by source (cache_memory, cache_disk, cache_shared, upstream, tunnel, proxy)",
            response_bytes.clone(),
        );
        let upstream_seconds = latency_histogram();
        r.register(
            "upstream_request_duration_seconds",
            "Time from sending a request upstream to its response head",
            upstream_seconds.clone(),
        );
        let ttfb_seconds: Hist = Family::new_with_constructor(latency_histogram);
        r.register(
            "time_to_first_byte_seconds",
            "Time from a client request to its response head, by kind (hit, miss, tunnel)",
            ttfb_seconds.clone(),
        );
        let client_connections = Gauge::default();
        r.register(
            "client_connections",
            "Open client connections",
            client_connections.clone(),
        );
        let tunnels = Gauge::default();
        r.register(
            "tunnels",
            "Open CONNECT tunnels and upgraded connections",
            tunnels.clone(),
        );
        let tunnel_bytes = Family::<L1, Counter>::default();
        r.register(
            "tunnel_bytes",
            "Bytes through tunnels, by direction",
            tunnel_bytes.clone(),
        );
        let cache_objects = Family::<L1, Gauge>::default();
        r.register(
            "cache_objects",
            "Objects stored, by tier",
            cache_objects.clone(),
        );
        let cache_bytes = Family::<L1, Gauge>::default();
        r.register("cache_bytes", "Bytes stored, by tier", cache_bytes.clone());
        let cache_capacity = Family::<L1, Gauge>::default();
        r.register(
            "cache_capacity_bytes",
            "Configured bound, by tier",
            cache_capacity.clone(),
        );
        let cache_evictions = Family::<L1, Counter>::default();
        r.register(
            "cache_evictions",
            "Objects evicted to stay within the bound, by tier",
            cache_evictions.clone(),
        );
        let coalesced = Counter::default();
        r.register(
            "cache_coalesced_waiters",
            "Requests that waited for another request's fetch of the same URL",
            coalesced.clone(),
        );
        let stale_served = Counter::default();
        r.register(
            "cache_stale_served",
            "Stale responses served (stale-while-revalidate, or the origin failed)",
            stale_served.clone(),
        );
        let cache_corrupt = Counter::default();
        r.register(
            "cache_corrupt_files",
            "Disk entries discarded for a bad checksum or format",
            cache_corrupt.clone(),
        );
        let cache_write_errors = Counter::default();
        r.register(
            "cache_write_errors",
            "Failed writes to the disk cache (disk full, I/O errors)",
            cache_write_errors.clone(),
        );
        let upstream_errors = Family::<L1, Counter>::default();
        r.register(
            "upstream_errors",
            "Failed transactions, by error label (ERR_DNS_FAIL...)",
            upstream_errors.clone(),
        );
        let parent_up = Family::<L1, Gauge>::default();
        r.register(
            "parent_up",
            "1 when a parent proxy is up, 0 while marked down; label peer = position in CACHE_PEER",
            parent_up.clone(),
        );
        let denials = Family::<L1, Counter>::default();
        r.register(
            "access_denied",
            "Refused requests, by reason",
            denials.clone(),
        );
        let certificates_minted = Counter::default();
        r.register(
            "certificates_minted",
            "Leaf certificates minted for TLS interception",
            certificates_minted.clone(),
        );
        let log_lines_dropped = Counter::default();
        r.register(
            "access_log_dropped_lines",
            "Access-log lines dropped because stdout could not keep up",
            log_lines_dropped.clone(),
        );
        let mirror = |r: &mut Registry, name: &str, help: &str| {
            let f = Family::<LM, Counter>::default();
            r.register(name, help, f.clone());
            f
        };
        let mirror_requests = mirror(&mut r, "mirror_requests", "Requests to each mirror route");
        let mirror_hits = mirror(
            &mut r,
            "mirror_hits",
            "Mirror answers served from the cache (fresh, revalidated, stale or collapsed)",
        );
        let mirror_bytes_saved = mirror(
            &mut r,
            "mirror_bytes_saved",
            "Body bytes of mirror answers served from the cache",
        );
        let mirror_upstream_errors = mirror(
            &mut r,
            "mirror_upstream_errors",
            "Mirror requests whose last upstream failed (no answer or 5xx)",
        );
        let mirror_rewrite_errors = mirror(
            &mut r,
            "mirror_rewrite_errors",
            "Mirror documents passed without rewriting their URLs (encoded, unexpected type)",
        );
        let shared_ops = Family::<L2, Counter>::default();
        r.register(
            "shared_cache_operations",
            "Shared cache tier operations, by op (lookup, upload, meta) and outcome (hit, miss, error, corrupt, expired, skipped_breaker, skipped_queue_full, exists, done)",
            shared_ops.clone(),
        );
        let shared_seconds = Family::<L1, Counter<f64, AtomicU64>>::default();
        r.register(
            "shared_cache_operation_seconds",
            "Time spent in shared cache lookups and uploads, by op (divide by the operations for the mean latency)",
            shared_seconds.clone(),
        );
        let shared_bytes_uploaded = Counter::default();
        r.register(
            "shared_cache_uploaded_bytes",
            "Bytes uploaded to the shared cache tier",
            shared_bytes_uploaded.clone(),
        );
        let shared_duplicate_fetches = Counter::default();
        r.register(
            "shared_cache_duplicate_fetches",
            "Upstream fetches another replica had made too (its object was in the bucket when this one's upload ran)",
            shared_duplicate_fetches.clone(),
        );
        let shared_breaker = Gauge::default();
        r.register(
            "shared_cache_breaker_state",
            "The shared cache circuit breaker: 0 closed, 1 open (store skipped), 2 half-open",
            shared_breaker.clone(),
        );
        let shared_breaker_openings = Counter::default();
        r.register(
            "shared_cache_breaker_openings",
            "Times the shared cache circuit breaker opened",
            shared_breaker_openings.clone(),
        );
        let shared_queue = Gauge::default();
        r.register(
            "shared_cache_upload_queue",
            "Uploads to the shared cache waiting or running",
            shared_queue.clone(),
        );
        Metrics {
            registry: r,
            shared_ops,
            shared_seconds,
            shared_bytes_uploaded,
            shared_duplicate_fetches,
            shared_breaker,
            shared_breaker_openings,
            shared_queue,
            requests,
            response_bytes,
            upstream_seconds,
            ttfb_seconds,
            client_connections,
            tunnels,
            tunnel_bytes,
            cache_objects,
            cache_bytes,
            cache_capacity,
            cache_evictions,
            coalesced,
            stale_served,
            cache_corrupt,
            cache_write_errors,
            upstream_errors,
            parent_up,
            denials,
            certificates_minted,
            log_lines_dropped,
            mirror_requests,
            mirror_hits,
            mirror_bytes_saved,
            mirror_upstream_errors,
            mirror_rewrite_errors,
        }
    }

    /// Accounts for one finished transaction.
    pub fn observe(&self, rec: &AccessRecord) {
        let method = method_class(&rec.method);
        self.requests
            .get_or_create(&[("method", method), ("result", rec.result_str())])
            .inc();
        self.response_bytes
            .get_or_create(&[("source", rec.result.byte_source().as_str())])
            .inc_by(rec.bytes);
        if let Some(d) = rec.upstream_latency {
            self.upstream_seconds.observe(d.as_secs_f64());
        }
        if let Some(d) = rec.ttfb {
            let kind = if method == "connect" {
                "tunnel"
            } else if rec.result.is_cache_hit() {
                "hit"
            } else {
                "miss"
            };
            self.ttfb_seconds
                .get_or_create(&[("kind", kind)])
                .observe(d.as_secs_f64());
        }
        if rec.result == ResultCode::TcpTunnel {
            self.tunnel_bytes
                .get_or_create(&[("direction", "upstream_to_client")])
                .inc_by(rec.bytes);
            self.tunnel_bytes
                .get_or_create(&[("direction", "client_to_upstream")])
                .inc_by(rec.bytes_in);
        }
        if let Some(reason) = rec.deny_reason {
            self.denials.get_or_create(&[("reason", reason)]).inc();
        } else if let Some(label) = rec.error {
            self.upstream_errors.get_or_create(&[("kind", label)]).inc();
        }
    }

    /// A guard counting one open client connection.
    pub fn connection(&self) -> GaugeGuard {
        GaugeGuard::new(self.client_connections.clone())
    }

    pub fn connections_open(&self) -> i64 {
        self.client_connections.get()
    }

    pub fn tunnels_open(&self) -> i64 {
        self.tunnels.get()
    }

    /// A guard counting one open tunnel.
    pub fn tunnel(&self) -> GaugeGuard {
        GaugeGuard::new(self.tunnels.clone())
    }

    /// The exposition text, with cache and parent figures read now.
    pub fn render(
        &self,
        cache: Option<&Cache>,
        peers: &[std::sync::Arc<Peer>],
        mirrors: &Mirrors,
        dropped_log_lines: u64,
    ) -> String {
        for m in &mirrors.list {
            let l = [("mirror", m.settings.name.clone())];
            let st = &m.stats;
            for (family, value) in [
                (&self.mirror_requests, &st.requests),
                (&self.mirror_hits, &st.hits),
                (&self.mirror_bytes_saved, &st.bytes_saved),
                (&self.mirror_upstream_errors, &st.upstream_errors),
                (&self.mirror_rewrite_errors, &st.rewrite_errors),
            ] {
                catch_up(&family.get_or_create(&l), MirrorStats::get(value));
            }
        }
        if let Some(c) = cache {
            let u = c.usage();
            let tiers = [
                (
                    "memory",
                    u.mem_objects,
                    u.mem_bytes,
                    u.mem_capacity,
                    u.mem_evictions,
                ),
                (
                    "disk",
                    u.disk_objects,
                    u.disk_bytes,
                    u.disk_capacity,
                    u.disk_evictions,
                ),
            ];
            for (tier, objects, bytes, cap, evictions) in tiers {
                let l = [("tier", tier)];
                self.cache_objects.get_or_create(&l).set(objects as i64);
                self.cache_bytes.get_or_create(&l).set(bytes as i64);
                self.cache_capacity.get_or_create(&l).set(cap as i64);
                catch_up(&self.cache_evictions.get_or_create(&l), evictions);
            }
            catch_up(&self.coalesced, c.stats.coalesced.load(Ordering::Relaxed));
            catch_up(
                &self.stale_served,
                c.stats.stale_served.load(Ordering::Relaxed),
            );
            catch_up(&self.cache_corrupt, u.disk_corrupt);
            catch_up(&self.cache_write_errors, u.disk_write_errors);
            if let Some(sh) = &c.shared {
                self.render_shared(sh);
            }
        }
        for (i, p) in peers.iter().enumerate() {
            let label: &'static str = PEER_LABELS.get(i).copied().unwrap_or("other");
            self.parent_up
                .get_or_create(&[("peer", label)])
                .set(p.is_up() as i64);
        }
        catch_up(&self.log_lines_dropped, dropped_log_lines);
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Metrics {
    fn render_shared(&self, sh: &crate::cache::shared::Shared) {
        let st = &sh.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let ops: [(&'static str, &'static str, u64); 17] = [
            ("lookup", "hit", n(&st.hits)),
            ("lookup", "miss", n(&st.misses)),
            ("lookup", "error", n(&st.lookup_errors)),
            ("lookup", "skipped_breaker", n(&st.lookups_skipped)),
            ("lookup", "corrupt", n(&st.corrupt)),
            ("lookup", "expired", n(&st.expired)),
            ("upload", "done", n(&st.uploads)),
            ("upload", "error", n(&st.upload_errors)),
            ("upload", "exists", n(&st.upload_exists)),
            ("upload", "skipped_queue_full", n(&st.skipped_queue_full)),
            ("upload", "skipped_breaker", n(&st.skipped_breaker)),
            ("meta", "done", n(&st.meta_updates)),
            ("lease", "acquired", n(&st.leases_acquired)),
            ("lease", "stale_replaced", n(&st.leases_stale)),
            ("lease", "waited", n(&st.lease_waits)),
            ("lease", "wait_hit", n(&st.lease_wait_hits)),
            ("lease", "wait_upstream", n(&st.lease_wait_upstream)),
        ];
        for (op, outcome, total) in ops {
            catch_up(
                &self
                    .shared_ops
                    .get_or_create(&[("op", op), ("outcome", outcome)]),
                total,
            );
        }
        for (op, micros) in [
            ("lookup", n(&st.lookup_micros)),
            ("upload", n(&st.upload_micros)),
        ] {
            let c = self.shared_seconds.get_or_create(&[("op", op)]);
            let total = micros as f64 / 1e6;
            if total > c.get() {
                c.inc_by(total - c.get());
            }
        }
        catch_up(&self.shared_bytes_uploaded, n(&st.upload_bytes));
        catch_up(&self.shared_duplicate_fetches, n(&st.duplicate_fetches));
        self.shared_breaker.set(sh.breaker.state().as_gauge());
        catch_up(&self.shared_breaker_openings, sh.breaker.openings());
        self.shared_queue.set(sh.queued() as i64);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

const PEER_LABELS: [&str; 16] = [
    "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

/// Brings a counter up to a total kept elsewhere.
fn catch_up(c: &Counter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

/// Increments a gauge for its lifetime (RAII).
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(g: Gauge) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observe_and_render() {
        let m = Metrics::new();
        let mut rec = AccessRecord::new("127.0.0.1:1".parse().unwrap(), "GET", "http://h/".into());
        rec.result = ResultCode::TcpMemHit;
        rec.bytes = 100;
        rec.ttfb = Some(std::time::Duration::from_millis(2));
        m.observe(&rec);
        rec.result = ResultCode::TcpDenied;
        rec.deny_reason = Some("client_network");
        m.observe(&rec);
        let _c = m.connection();
        let text = m.render(None, &[], &Mirrors::default(), 0);
        assert!(
            text.contains(r#"cuttle_requests_total{method="get",result="TCP_MEM_HIT"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"cuttle_response_bytes_total{source="cache_memory"} 100"#),
            "{text}"
        );
        assert!(
            text.contains(r#"cuttle_access_denied_total{reason="client_network"} 1"#),
            "{text}"
        );
        assert!(text.contains("cuttle_client_connections 1"), "{text}");
        assert!(
            text.contains(r#"cuttle_time_to_first_byte_seconds_count{kind="hit"} 1"#),
            "{text}"
        );
    }
}

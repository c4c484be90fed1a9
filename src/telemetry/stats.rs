//! Live figures for the status page and `cuttle status`: per-minute history for the last
//! hour, per-second request counts for the last minute, a bounded top-N of hosts, result-code
//! totals and the last errors. Hosts appear here (a page for humans), never in metric labels.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

use super::record::AccessRecord;

/// Hosts tracked at most; when full, the one with the fewest bytes makes room.
const MAX_HOSTS: usize = 1024;
const MAX_ERRORS: usize = 20;
const MINUTES: usize = 60;
const SECONDS: usize = 60;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Minute {
    pub t: u64,
    pub requests: u64,
    pub hits: u64,
    pub misses: u64,
    pub bytes: u64,
    pub bytes_from_cache: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Second {
    pub t: u64,
    pub requests: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostStat {
    pub host: String,
    pub bytes: u64,
    pub requests: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorEntry {
    pub t: u64,
    pub label: &'static str,
    pub status: u16,
    pub url: String,
    pub message: String,
}

#[derive(Default)]
struct Inner {
    minutes: VecDeque<Minute>,
    seconds: VecDeque<Second>,
    hosts: HashMap<String, (u64, u64)>,
    results: BTreeMap<&'static str, u64>,
    errors: VecDeque<ErrorEntry>,
    requests_total: u64,
    bytes_total: u64,
    bytes_cache_total: u64,
}

#[derive(Default)]
pub struct LiveStats {
    inner: Mutex<Inner>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The host of a logged URL (`http://h:1/p` or `h:443`), without port.
pub fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// A logged URL without its query string (and fragment): URLs carry tokens there
/// (`?token=`, signed download links), and the status page is shown to more people than
/// the access log.
pub fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

impl LiveStats {
    pub fn observe(&self, rec: &AccessRecord) {
        let now = now_secs();
        let hit = rec.result.is_served_by_cache();
        let from_cache = rec.result.byte_source().is_cache();
        let cacheable = matches!(rec.method.as_str(), "GET" | "HEAD") && rec.error.is_none();
        let mut s = self.inner.lock();
        s.requests_total += 1;
        s.bytes_total += rec.bytes;
        if from_cache {
            s.bytes_cache_total += rec.bytes;
        }
        *s.results.entry(rec.result_str()).or_insert(0) += 1;

        let minute = now - now % 60;
        if s.minutes.back().is_none_or(|m| m.t != minute) {
            s.minutes.push_back(Minute {
                t: minute,
                ..Minute::default()
            });
            while s.minutes.len() > MINUTES {
                s.minutes.pop_front();
            }
        }
        if let Some(m) = s.minutes.back_mut() {
            m.requests += 1;
            m.bytes += rec.bytes;
            if cacheable {
                if hit {
                    m.hits += 1;
                } else {
                    m.misses += 1;
                }
            }
            if from_cache {
                m.bytes_from_cache += rec.bytes;
            }
        }
        if s.seconds.back().is_none_or(|x| x.t != now) {
            s.seconds.push_back(Second {
                t: now,
                requests: 0,
            });
            while s.seconds.len() > SECONDS {
                s.seconds.pop_front();
            }
        }
        if let Some(x) = s.seconds.back_mut() {
            x.requests += 1;
        }

        let host = host_of(&rec.url);
        if !host.is_empty() && rec.deny_reason.is_none() {
            if !s.hosts.contains_key(host) && s.hosts.len() >= MAX_HOSTS {
                let smallest = s
                    .hosts
                    .iter()
                    .min_by_key(|(_, (b, r))| (*b, *r))
                    .map(|(h, _)| h.clone());
                if let Some(h) = smallest {
                    s.hosts.remove(&h);
                }
            }
            let e = s.hosts.entry(host.to_string()).or_insert((0, 0));
            e.0 += rec.bytes;
            e.1 += 1;
        }

        if let Some(label) = rec.error
            && rec.deny_reason.is_none()
        {
            s.errors.push_front(ErrorEntry {
                t: now,
                label,
                status: rec.status,
                url: without_query(&rec.url).to_string(),
                message: rec.error_message.clone().unwrap_or_default(),
            });
            s.errors.truncate(MAX_ERRORS);
        }
    }

    /// The figures of the status page (see `GET /api/stats`).
    pub fn snapshot(&self) -> Snapshot {
        let now = now_secs();
        let s = self.inner.lock();
        let hour: Vec<Minute> = s
            .minutes
            .iter()
            .filter(|m| m.t + 3600 > now)
            .copied()
            .collect();
        let (hits, misses, saved) = hour.iter().fold((0, 0, 0), |(h, m, b), x| {
            (h + x.hits, m + x.misses, b + x.bytes_from_cache)
        });
        let last10: u64 = s
            .seconds
            .iter()
            .filter(|x| x.t + 10 > now && x.t < now)
            .map(|x| x.requests)
            .sum();
        let mut hosts: Vec<HostStat> = s
            .hosts
            .iter()
            .map(|(h, (b, r))| HostStat {
                host: h.clone(),
                bytes: *b,
                requests: *r,
            })
            .collect();
        hosts.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.requests.cmp(&a.requests)));
        let by_bytes = hosts.iter().take(10).cloned().collect();
        hosts.sort_by(|a, b| b.requests.cmp(&a.requests).then(b.bytes.cmp(&a.bytes)));
        let by_requests = hosts.into_iter().take(10).collect();
        Snapshot {
            requests_total: s.requests_total,
            requests_per_second: last10 as f64 / 10.0,
            hit_ratio_hour: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
            bytes_served_total: s.bytes_total,
            bytes_from_cache_total: s.bytes_cache_total,
            bytes_saved_hour: saved,
            history: hour,
            recent: s.seconds.iter().copied().collect(),
            top_hosts_by_bytes: by_bytes,
            top_hosts_by_requests: by_requests,
            results: s.results.clone(),
            errors: s.errors.iter().cloned().collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub requests_total: u64,
    pub requests_per_second: f64,
    pub hit_ratio_hour: Option<f64>,
    pub bytes_served_total: u64,
    pub bytes_from_cache_total: u64,
    pub bytes_saved_hour: u64,
    pub history: Vec<Minute>,
    pub recent: Vec<Second>,
    pub top_hosts_by_bytes: Vec<HostStat>,
    pub top_hosts_by_requests: Vec<HostStat>,
    pub results: BTreeMap<&'static str, u64>,
    pub errors: Vec<ErrorEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_urls() {
        assert_eq!(host_of("http://a.example:8080/x"), "a.example");
        assert_eq!(host_of("http://[::1]:81/"), "::1");
        assert_eq!(host_of("registry.example:443"), "registry.example");
        assert_eq!(host_of("error:invalid-request"), "error");
    }

    #[test]
    fn errors_show_the_path_only() {
        assert_eq!(without_query("http://a/p?token=s3cret"), "http://a/p");
        assert_eq!(without_query("http://a/p#x"), "http://a/p");
        assert_eq!(without_query("a:443"), "a:443");
        let st = LiveStats::default();
        let mut r = AccessRecord::new(
            "127.0.0.1:1".parse().unwrap(),
            "GET",
            "http://a/dl?token=s3cret".into(),
        );
        r.error = Some("ERR_CONNECT_FAIL");
        st.observe(&r);
        let s = st.snapshot();
        assert_eq!(s.errors[0].url, "http://a/dl");
        assert!(!serde_json::to_string(&s).unwrap().contains("s3cret"));
    }

    #[test]
    fn counts_hits_and_hosts() {
        let st = LiveStats::default();
        let mut r = AccessRecord::new("127.0.0.1:1".parse().unwrap(), "GET", "http://a/x".into());
        r.result = crate::telemetry::record::ResultCode::TcpMiss;
        r.bytes = 100;
        st.observe(&r);
        r.result = crate::telemetry::record::ResultCode::TcpMemHit;
        st.observe(&r);
        r.result = crate::telemetry::record::ResultCode::TcpHit;
        r.url = "http://b/y".into();
        r.bytes = 10;
        st.observe(&r);
        let s = st.snapshot();
        assert_eq!(s.requests_total, 3);
        assert_eq!(s.hit_ratio_hour, Some(2.0 / 3.0));
        assert_eq!(s.bytes_saved_hour, 110);
        assert_eq!(s.top_hosts_by_bytes[0].host, "a");
        assert_eq!(s.results["TCP_HIT"], 1);
    }
}

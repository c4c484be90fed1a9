//! What one transaction leaves behind: the [`AccessRecord`], filled in as a request moves
//! along and written when it ends, with its Squid result code ([`ResultCode`]) and hierarchy
//! ([`Hierarchy`]) as enums, so the log, the metrics and the status page read one set of
//! names. Records carry user names, URLs without userinfo and peer names; never a password
//! or a `Proxy-Authorization` value.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Squid result codes: how a transaction was answered. A transfer cut short is the same code
/// with [`AccessRecord::aborted`] set (logged as `TCP_MISS_ABORTED`...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResultCode {
    /// Never reached an upstream (malformed request, origin-form request).
    NoneNone,
    /// Fetched from the upstream.
    TcpMiss,
    /// A fresh hit from the disk tier.
    TcpHit,
    /// A fresh hit from the memory tier.
    TcpMemHit,
    /// A fresh hit from the shared tier (another replica stored it).
    TcpSharedHit,
    /// Joined another client's download of the same URL (collapsed forwarding).
    TcpCfMiss,
    /// Answered from a download in progress that already held the response.
    TcpCfHit,
    /// Revalidated: the origin said 304, the stored body was served.
    TcpRefreshUnmodified,
    /// Revalidated: the origin sent a new response.
    TcpRefreshModified,
    /// A stale copy served while it is revalidated in the background.
    TcpStaleHit,
    /// A stale copy served because the upstream failed.
    TcpStaleIfError,
    /// A blind `CONNECT` tunnel.
    TcpTunnel,
    /// An intercepted `CONNECT` (its requests have records of their own).
    TcpBump,
    /// Refused by an access rule or client authentication.
    TcpDenied,
    /// A `PURGE` answered by the cache.
    TcpPurge,
}

impl ResultCode {
    pub const ALL: [ResultCode; 15] = [
        ResultCode::NoneNone,
        ResultCode::TcpMiss,
        ResultCode::TcpHit,
        ResultCode::TcpMemHit,
        ResultCode::TcpSharedHit,
        ResultCode::TcpCfMiss,
        ResultCode::TcpCfHit,
        ResultCode::TcpRefreshUnmodified,
        ResultCode::TcpRefreshModified,
        ResultCode::TcpStaleHit,
        ResultCode::TcpStaleIfError,
        ResultCode::TcpTunnel,
        ResultCode::TcpBump,
        ResultCode::TcpDenied,
        ResultCode::TcpPurge,
    ];

    /// The code as Squid writes it; with `aborted`, the `_ABORTED` form.
    pub fn as_str(self, aborted: bool) -> &'static str {
        use ResultCode::*;
        match (self, aborted) {
            (NoneNone, false) => "NONE_NONE",
            (NoneNone, true) => "NONE_NONE_ABORTED",
            (TcpMiss, false) => "TCP_MISS",
            (TcpMiss, true) => "TCP_MISS_ABORTED",
            (TcpHit, false) => "TCP_HIT",
            (TcpHit, true) => "TCP_HIT_ABORTED",
            (TcpMemHit, false) => "TCP_MEM_HIT",
            (TcpMemHit, true) => "TCP_MEM_HIT_ABORTED",
            (TcpSharedHit, false) => "TCP_SHARED_HIT",
            (TcpSharedHit, true) => "TCP_SHARED_HIT_ABORTED",
            (TcpCfMiss, false) => "TCP_CF_MISS",
            (TcpCfMiss, true) => "TCP_CF_MISS_ABORTED",
            (TcpCfHit, false) => "TCP_CF_HIT",
            (TcpCfHit, true) => "TCP_CF_HIT_ABORTED",
            (TcpRefreshUnmodified, false) => "TCP_REFRESH_UNMODIFIED",
            (TcpRefreshUnmodified, true) => "TCP_REFRESH_UNMODIFIED_ABORTED",
            (TcpRefreshModified, false) => "TCP_REFRESH_MODIFIED",
            (TcpRefreshModified, true) => "TCP_REFRESH_MODIFIED_ABORTED",
            (TcpStaleHit, false) => "TCP_STALE_HIT",
            (TcpStaleHit, true) => "TCP_STALE_HIT_ABORTED",
            (TcpStaleIfError, false) => "TCP_STALE_IF_ERROR",
            (TcpStaleIfError, true) => "TCP_STALE_IF_ERROR_ABORTED",
            (TcpTunnel, false) => "TCP_TUNNEL",
            (TcpTunnel, true) => "TCP_TUNNEL_ABORTED",
            (TcpBump, false) => "TCP_BUMP",
            (TcpBump, true) => "TCP_BUMP_ABORTED",
            (TcpDenied, false) => "TCP_DENIED",
            (TcpDenied, true) => "TCP_DENIED_ABORTED",
            (TcpPurge, false) => "TCP_PURGE",
            (TcpPurge, true) => "TCP_PURGE_ABORTED",
        }
    }

    /// Whether the body came from the cache (a stored entry, or a download in progress that
    /// already held it).
    pub fn is_cache_hit(self) -> bool {
        use ResultCode::*;
        matches!(
            self,
            TcpHit
                | TcpMemHit
                | TcpSharedHit
                | TcpCfHit
                | TcpRefreshUnmodified
                | TcpStaleHit
                | TcpStaleIfError
        )
    }

    /// Whether the answer was shared with another client's fetch or came from the cache: what
    /// the status page counts as a hit.
    pub fn is_served_by_cache(self) -> bool {
        self.is_cache_hit() || self == ResultCode::TcpCfMiss
    }

    /// A revalidation with the origin (whatever it answered).
    pub fn is_refresh(self) -> bool {
        matches!(
            self,
            ResultCode::TcpRefreshUnmodified | ResultCode::TcpRefreshModified
        )
    }

    /// Where the bytes of a transaction came from (a metrics label).
    pub fn byte_source(self) -> ByteSource {
        use ResultCode::*;
        match self {
            TcpMemHit => ByteSource::CacheMemory,
            TcpSharedHit => ByteSource::CacheShared,
            TcpHit | TcpCfHit | TcpCfMiss | TcpRefreshUnmodified | TcpStaleHit
            | TcpStaleIfError => ByteSource::CacheDisk,
            TcpTunnel => ByteSource::Tunnel,
            TcpDenied | NoneNone | TcpPurge => ByteSource::Proxy,
            TcpMiss | TcpRefreshModified | TcpBump => ByteSource::Upstream,
        }
    }
}

/// Where the bytes sent to a client came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteSource {
    CacheMemory,
    CacheShared,
    CacheDisk,
    Tunnel,
    Proxy,
    Upstream,
}

impl ByteSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ByteSource::CacheMemory => "cache_memory",
            ByteSource::CacheShared => "cache_shared",
            ByteSource::CacheDisk => "cache_disk",
            ByteSource::Tunnel => "tunnel",
            ByteSource::Proxy => "proxy",
            ByteSource::Upstream => "upstream",
        }
    }

    pub fn is_cache(self) -> bool {
        matches!(
            self,
            ByteSource::CacheMemory | ByteSource::CacheShared | ByteSource::CacheDisk
        )
    }
}

/// Squid hierarchy codes: which way a transaction left the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HierCode {
    /// No upstream was contacted.
    None,
    /// Straight to the origin.
    Direct,
    /// Through the first parent that was up.
    FirstUpParent,
}

impl HierCode {
    pub fn as_str(self) -> &'static str {
        match self {
            HierCode::None => "HIER_NONE",
            HierCode::Direct => "HIER_DIRECT",
            HierCode::FirstUpParent => "FIRSTUP_PARENT",
        }
    }
}

/// The hierarchy code with the peer it names (`HIER_DIRECT/192.0.2.7`,
/// `FIRSTUP_PARENT/proxy.corp:8080`, `HIER_NONE/-`). Cheap to clone: connections carry one in
/// their responses' extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub code: HierCode,
    pub peer: Arc<str>,
}

impl Hierarchy {
    pub fn none() -> Hierarchy {
        Hierarchy {
            code: HierCode::None,
            peer: Arc::from("-"),
        }
    }

    pub fn direct(peer: impl fmt::Display) -> Hierarchy {
        Hierarchy {
            code: HierCode::Direct,
            peer: Arc::from(peer.to_string()),
        }
    }

    pub fn parent(name: &str) -> Hierarchy {
        Hierarchy {
            code: HierCode::FirstUpParent,
            peer: Arc::from(name),
        }
    }
}

impl fmt::Display for Hierarchy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.code.as_str(), self.peer)
    }
}

/// One transaction, filled in as the request moves along and written when it ends.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    pub started: SystemTime,
    pub start: Instant,
    pub client: SocketAddr,
    /// How it was answered.
    pub result: ResultCode,
    /// The transfer was cut short (logged as `<code>_ABORTED`).
    pub aborted: bool,
    pub status: u16,
    /// Bytes sent to the client (head and body).
    pub bytes: u64,
    /// Bytes received from the client on a tunnel or as a request body.
    pub bytes_in: u64,
    pub method: String,
    pub url: String,
    pub user: Option<String>,
    pub hierarchy: Hierarchy,
    pub content_type: String,
    /// Short error label when the transaction failed (`ERR_DNS_FAIL`...).
    pub error: Option<&'static str>,
    /// Bounded reason when an access rule refused the request.
    pub deny_reason: Option<&'static str>,
    /// The error message (for the status page; never logged to stdout).
    pub error_message: Option<String>,
    /// From the request to its response head.
    pub ttfb: Option<std::time::Duration>,
    /// From sending upstream to the upstream response head.
    pub upstream_latency: Option<std::time::Duration>,
}

impl AccessRecord {
    pub fn new(client: SocketAddr, method: &str, url: String) -> Self {
        Self {
            started: SystemTime::now(),
            start: Instant::now(),
            client,
            result: ResultCode::NoneNone,
            aborted: false,
            status: 0,
            bytes: 0,
            bytes_in: 0,
            method: method.to_string(),
            url,
            user: None,
            hierarchy: Hierarchy::none(),
            content_type: "-".into(),
            error: None,
            deny_reason: None,
            error_message: None,
            ttfb: None,
            upstream_latency: None,
        }
    }

    /// Marks the moment the response head is ready.
    pub fn head_ready(&mut self) {
        if self.ttfb.is_none() {
            self.ttfb = Some(self.start.elapsed());
        }
    }

    /// The result code as logged (`TCP_MISS`, `TCP_MISS_ABORTED`...).
    pub fn result_str(&self) -> &'static str {
        self.result.as_str(self.aborted)
    }

    fn elapsed_ms(&self) -> u128 {
        self.start.elapsed().as_millis()
    }

    /// `time.ms elapsed client result/status bytes method URL user hierarchy/peer type`
    pub fn squid_line(&self) -> String {
        let t = self.started.duration_since(UNIX_EPOCH).unwrap_or_default();
        format!(
            "{}.{:03} {:>6} {} {}/{:03} {} {} {} {} {} {}",
            t.as_secs(),
            t.subsec_millis(),
            self.elapsed_ms(),
            self.client.ip(),
            self.result_str(),
            self.status,
            self.bytes,
            self.method,
            self.url,
            self.user.as_deref().unwrap_or("-"),
            self.hierarchy,
            self.content_type
        )
    }

    pub fn json_line(&self) -> String {
        let t = self.started.duration_since(UNIX_EPOCH).unwrap_or_default();
        serde_json::json!({
            "time": t.as_secs_f64(),
            "elapsed_ms": self.elapsed_ms() as u64,
            "client": self.client.ip().to_string(),
            "result": self.result_str(),
            "status": self.status,
            "bytes": self.bytes,
            "bytes_in": self.bytes_in,
            "method": self.method,
            "url": self.url,
            "user": self.user,
            "hierarchy": self.hierarchy.to_string(),
            "content_type": self.content_type,
            "error": self.error,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squid_native_line() {
        let mut r = AccessRecord::new("10.1.2.3:5555".parse().unwrap(), "GET", "http://h/x".into());
        r.result = ResultCode::TcpMiss;
        r.status = 200;
        r.bytes = 1234;
        r.hierarchy = Hierarchy::direct("127.0.0.1");
        r.content_type = "text/plain".into();
        let line = r.squid_line();
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 10, "{line}");
        assert!(f[0].contains('.'));
        assert_eq!(
            &f[2..],
            [
                "10.1.2.3",
                "TCP_MISS/200",
                "1234",
                "GET",
                "http://h/x",
                "-",
                "HIER_DIRECT/127.0.0.1",
                "text/plain"
            ]
        );
        r.aborted = true;
        assert!(r.squid_line().contains(" TCP_MISS_ABORTED/200 "));
    }

    #[test]
    fn every_code_has_distinct_names() {
        let mut seen = std::collections::HashSet::new();
        for c in ResultCode::ALL {
            for aborted in [false, true] {
                let name = c.as_str(aborted);
                assert!(seen.insert(name), "{name} twice");
                assert_eq!(name.ends_with("_ABORTED"), aborted, "{name}");
            }
        }
    }

    #[test]
    fn hits_come_from_the_cache() {
        for c in ResultCode::ALL {
            if c.is_cache_hit() {
                assert!(c.byte_source().is_cache(), "{c:?}");
            }
        }
        assert!(!ResultCode::TcpMiss.is_cache_hit());
        assert!(ResultCode::TcpCfMiss.is_served_by_cache());
        assert_eq!(Hierarchy::none().to_string(), "HIER_NONE/-");
        assert_eq!(
            Hierarchy::parent("proxy.corp:8080").to_string(),
            "FIRSTUP_PARENT/proxy.corp:8080"
        );
    }
}

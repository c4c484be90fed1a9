//! Cross-replica coalescing (`--shared-cache-lease`): before a replica fetches a URL upstream
//! after a local and shared miss, it creates the small object `<key>.lease` with
//! `If-None-Match: *`. The replica whose create succeeds fetches, uploads, and deletes the
//! lease ([`Lease`] is deleted when dropped: after the upload, or when the fetch or the
//! upload fails or is skipped). A replica whose create is refused reads the lease: a fresh one
//! means another replica is fetching, so it waits for the shared copy (polling the store)
//! instead of going upstream; one older than the lease timeout (a replica that died, or lost
//! its store) is replaced, so nothing waits longer than that.
//!
//! The lease object is one text line, `CUTL 1 <owner> <created, Unix ms>`: the owner is a
//! random id per process, the time the writer's clock (replicas are assumed to keep their
//! clocks within a few seconds of each other; the timeout is 30 s by default).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The lease object of the entry object `object_key` (the URL's key, `super::object_key`).
pub fn lease_key(object_key: &str) -> String {
    format!("{object_key}.lease")
}

/// A lease object's content.
pub fn encode(owner: &str, created_ms: u64) -> String {
    format!("CUTL 1 {owner} {created_ms}\n")
}

/// (owner, created) of a lease object; `None` when it is not one (then it is replaced).
pub fn decode(data: &[u8]) -> Option<(String, u64)> {
    if data.len() > 256 {
        return None;
    }
    let text = std::str::from_utf8(data).ok()?;
    let mut parts = text.trim_end_matches('\n').split(' ');
    if parts.next()? != "CUTL" || parts.next()? != "1" {
        return None;
    }
    let owner = parts.next()?;
    let created = parts.next()?.parse().ok()?;
    if parts.next().is_some() || owner.is_empty() {
        return None;
    }
    Some((owner.to_string(), created))
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether a lease created at `created_ms` still holds at `now_ms` (a lease from the future,
/// beyond the timeout, is a broken clock: not honoured either).
pub fn fresh(created_ms: u64, now_ms: u64, timeout: Duration) -> bool {
    let t = timeout.as_millis() as u64;
    now_ms.saturating_sub(created_ms) < t && created_ms.saturating_sub(now_ms) < t
}

/// A random id for this process's leases.
pub fn owner_id() -> String {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        b = (now_ms() ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What asking for a lease gave.
pub enum Try {
    /// This replica holds the lease: fetch upstream, upload, then drop it.
    Acquired(Lease),
    /// Another replica holds a fresh lease: wait for its upload.
    Held,
    /// Leases are off, not supported by the store, or the store failed: fetch without one.
    Off,
}

/// A lease this replica holds; deleted from the store when dropped.
pub struct Lease {
    pub(super) op: opendal::Operator,
    pub(super) key: String,
    pub(super) timeout: Duration,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("key", &self.key).finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime (shutting down): the lease goes stale after its timeout.
            return;
        };
        let (op, key, timeout) = (self.op.clone(), std::mem::take(&mut self.key), self.timeout);
        rt.spawn(async move {
            let _ = tokio::time::timeout(timeout, op.delete(&key)).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_objects_round_trip_and_reject_damage() {
        let data = encode("0123abcd", 1_700_000_000_123);
        assert_eq!(
            decode(data.as_bytes()),
            Some(("0123abcd".into(), 1_700_000_000_123))
        );
        for bad in [
            "",
            "CUTL 1 owner",
            "CUTL 2 owner 5\n",
            "XXXX 1 owner 5\n",
            "CUTL 1 owner five\n",
            "CUTL 1 owner 5 extra\n",
            "CUTL 1  5\n",
        ] {
            assert_eq!(decode(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(decode(&[0xff; 20]), None);
        assert_eq!(decode(&[b'C'; 300]), None);
    }

    #[test]
    fn a_lease_holds_for_its_timeout_only() {
        let t = Duration::from_secs(30);
        assert!(fresh(1_000_000, 1_000_000 + 29_999, t));
        assert!(!fresh(1_000_000, 1_000_000 + 30_000, t));
        assert!(
            fresh(1_000_000 + 5_000, 1_000_000, t),
            "a few seconds of skew"
        );
        assert!(!fresh(1_000_000 + 60_000, 1_000_000, t), "from the future");
        assert_ne!(owner_id(), owner_id());
        assert_eq!(lease_key("ab/ab00"), "ab/ab00.lease");
    }
}

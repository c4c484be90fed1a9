//! Client proxy authentication: Basic credentials checked against an htpasswd file of
//! bcrypt entries. bcrypt is slow by design, so checks run on the blocking pool and a
//! successful check is remembered for a few minutes (keyed by a hash of the header value).
//! An unknown user costs one bcrypt check too (against a stand-in hash), so response times
//! do not tell which user names exist; and a client address that fails too often is refused
//! for a while without any check, in a table of bounded size.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::error::ProxyError;

/// Failed logins a client address may make within [`FAILURE_WINDOW`]; past it, every
/// request from that address gets 429 until the window (counted from its first failure)
/// is over. A build tool with the right password never fails; one with a wrong password
/// fails on every request anyway.
pub const MAX_FAILURES: u32 = 20;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Client addresses whose failures are counted at once: the least used are forgotten first,
/// so a hostile population of addresses cannot grow the table.
const TRACKED_CLIENTS: u64 = 16_384;

/// Users loaded from an htpasswd file.
#[derive(Clone)]
pub struct Users {
    hashes: Arc<HashMap<String, String>>,
    /// The hash an unknown user's password is checked against: one of the file's, of the
    /// most common cost, so that the check takes as long as for a known user.
    stand_in: Arc<str>,
    verified: moka::sync::Cache<[u8; 32], String>,
    failures: moka::sync::Cache<IpAddr, Arc<AtomicU32>>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Users({} entries)", self.hashes.len())
    }
}

impl Users {
    /// Loads `user:$2y$...` lines; blank lines and `#` comments are skipped.
    pub fn load(path: &Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Users, String> {
        let mut hashes = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected user:hash", n + 1))?;
            if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
                return Err(format!(
                    "line {}: user `{user}` does not have a bcrypt hash (create entries with \
                     `htpasswd -B`)",
                    n + 1
                ));
            }
            hashes.insert(user.to_string(), hash.to_string());
        }
        let Some(stand_in) = stand_in_hash(&hashes) else {
            return Err("no users".into());
        };
        Ok(Users {
            hashes: Arc::new(hashes),
            stand_in: stand_in.into(),
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
            failures: moka::sync::Cache::builder()
                .max_capacity(TRACKED_CLIENTS)
                .time_to_live(FAILURE_WINDOW)
                .build(),
        })
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Checks `Proxy-Authorization: Basic ...` from `client`; returns the user name when it
    /// is valid. A missing header is the usual first step (the client waits for the
    /// challenge) and is not counted as a failure.
    pub async fn authenticate(
        &self,
        client: IpAddr,
        headers: &HeaderMap,
    ) -> Result<String, ProxyError> {
        let Some(value) = headers.get(http::header::PROXY_AUTHORIZATION) else {
            return Err(ProxyError::ClientAuthRequired);
        };
        let who = client_key(client);
        // Checked before the cache of good credentials too: otherwise a throttled client
        // could go on guessing at hashing speed and be let in by a recently used password.
        if self
            .failures
            .get(&who)
            .is_some_and(|n| n.load(Ordering::Relaxed) >= MAX_FAILURES)
        {
            return Err(ProxyError::ClientAuthThrottled {
                retry_after: FAILURE_WINDOW.as_secs(),
            });
        }
        let key: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        if let Some(user) = self.verified.get(&key) {
            return Ok(user);
        }
        let Some((user, pass)) = decode_basic(value.as_bytes()) else {
            self.failed(who);
            return Err(ProxyError::ClientAuthRequired);
        };
        let (hash, known): (Arc<str>, bool) = match self.hashes.get(&user) {
            Some(h) => (h.as_str().into(), true),
            None => (self.stand_in.clone(), false),
        };
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if ok && known {
            self.verified.insert(key, user.clone());
            Ok(user)
        } else {
            self.failed(who);
            Err(ProxyError::ClientAuthRequired)
        }
    }

    fn failed(&self, who: IpAddr) {
        self.failures
            .get_with(who, || Arc::new(AtomicU32::new(0)))
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Client addresses whose failures are being counted (for tests of the bound).
    pub fn tracked_clients(&self) -> u64 {
        self.failures.run_pending_tasks();
        self.failures.entry_count()
    }
}

/// The key failures are counted under: the address, or its /64 for IPv6, since one host
/// commonly has a whole /64 to pick source addresses from.
fn client_key(ip: IpAddr) -> IpAddr {
    match super::hosts::canonical_ip(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        v4 => v4,
    }
}

/// bcrypt's cost is the two digits after the version: `$2y$05$...`.
fn bcrypt_cost(hash: &str) -> Option<u32> {
    hash.get(4..6)?.parse().ok()
}

/// One of `hashes` with the most common cost (the same one every time for the same file).
fn stand_in_hash(hashes: &HashMap<String, String>) -> Option<String> {
    let mut counts: HashMap<Option<u32>, usize> = HashMap::new();
    for h in hashes.values() {
        *counts.entry(bcrypt_cost(h)).or_default() += 1;
    }
    let common = counts
        .into_iter()
        .max_by_key(|(cost, n)| (*n, *cost))
        .map(|(cost, _)| cost)?;
    hashes
        .iter()
        .filter(|(_, h)| bcrypt_cost(h) == common)
        .min_by(|a, b| a.0.cmp(b.0))
        .map(|(_, h)| h.clone())
}

/// Splits a Basic credential (RFC 7617 §2) into user and password.
fn decode_basic(value: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        h.insert(
            http::header::PROXY_AUTHORIZATION,
            format!("Basic {token}").parse().unwrap(),
        );
        h
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn bcrypt_users() {
        let hash = bcrypt::hash("s3:cr@t", 4).unwrap();
        let users = Users::parse(&format!("# users\nalice:{hash}\n")).unwrap();
        let auth = |h: HeaderMap| {
            let users = users.clone();
            async move { users.authenticate(CLIENT, &h).await.ok() }
        };
        assert_eq!(
            auth(header("alice", "s3:cr@t")).await.as_deref(),
            Some("alice")
        );
        // cached path
        assert_eq!(
            auth(header("alice", "s3:cr@t")).await.as_deref(),
            Some("alice")
        );
        assert!(auth(header("alice", "wrong")).await.is_none());
        assert!(auth(header("bob", "s3:cr@t")).await.is_none());
        assert!(auth(HeaderMap::new()).await.is_none());
    }

    /// The shortest of a few runs: load on the machine only makes a run longer.
    async fn fastest(users: &Users, h: &HeaderMap) -> Duration {
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let t = std::time::Instant::now();
            assert!(users.authenticate(CLIENT, h).await.is_err());
            best = best.min(t.elapsed());
        }
        best
    }

    /// Before the stand-in hash, an unknown user was answered without any bcrypt work
    /// (microseconds against milliseconds), which told user names apart.
    #[tokio::test]
    async fn unknown_users_cost_as_much_as_known_ones() {
        let mut file = String::new();
        for u in ["alice", "bob"] {
            file += &format!("{u}:{}\n", bcrypt::hash("right", 6).unwrap());
        }
        let users = Users::parse(&file).unwrap();
        let known = fastest(&users, &header("alice", "wrong")).await;
        let unknown = fastest(&users, &header("mallory", "wrong")).await;
        assert!(
            unknown * 3 > known,
            "unknown user took {unknown:?}, a known user with a wrong password {known:?}"
        );
        // The stand-in's password does not let an unknown user in.
        assert!(
            users
                .authenticate(CLIENT, &header("mallory", "right"))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn failures_are_throttled_per_client() {
        let hash = bcrypt::hash("right", 4).unwrap();
        let users = Users::parse(&format!("alice:{hash}\n")).unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            let e = users
                .authenticate(CLIENT, &header("alice", "guess"))
                .await
                .unwrap_err();
            assert!(matches!(e, ProxyError::ClientAuthRequired), "{e}");
        }
        // Past the limit even the right password is refused, without a bcrypt check...
        let e = users
            .authenticate(CLIENT, &header("alice", "right"))
            .await
            .unwrap_err();
        assert!(matches!(e, ProxyError::ClientAuthThrottled { .. }), "{e}");
        // ...but only for that address.
        assert_eq!(
            users
                .authenticate(other, &header("alice", "right"))
                .await
                .unwrap(),
            "alice"
        );
    }

    #[tokio::test]
    async fn the_failure_table_is_bounded() {
        let hash = bcrypt::hash("right", 4).unwrap();
        let users = Users::parse(&format!("alice:{hash}\n")).unwrap();
        // Malformed credentials count as failures without a bcrypt check: cheap to send
        // from many addresses.
        let mut h = HeaderMap::new();
        h.insert(
            http::header::PROXY_AUTHORIZATION,
            "Basic !!".parse().unwrap(),
        );
        for i in 0..(TRACKED_CLIENTS as u32 + 5_000) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = users.authenticate(ip, &h).await;
        }
        assert!(
            users.tracked_clients() <= TRACKED_CLIENTS,
            "{} tracked",
            users.tracked_clients()
        );
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        assert_eq!(
            client_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            client_key("2001:db8:1:2:bbbb::2".parse().unwrap())
        );
        assert_ne!(
            client_key("10.0.0.1".parse().unwrap()),
            client_key("10.0.0.2".parse().unwrap())
        );
    }

    #[test]
    fn stand_in_has_the_common_cost() {
        let mut m = HashMap::new();
        m.insert("a".to_string(), "$2y$05$x".to_string());
        m.insert("b".to_string(), "$2y$10$y".to_string());
        m.insert("c".to_string(), "$2y$10$z".to_string());
        assert_eq!(stand_in_hash(&m).as_deref(), Some("$2y$10$y"));
    }

    #[test]
    fn rejects_non_bcrypt() {
        let e = Users::parse("bob:$apr1$xyz$abc\n").unwrap_err();
        assert!(e.contains("htpasswd -B"));
        assert!(Users::parse("").is_err());
    }
}

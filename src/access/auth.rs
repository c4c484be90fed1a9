//! Client proxy authentication: Basic credentials checked against an htpasswd file of
//! bcrypt entries. bcrypt is slow by design, so checks run on the blocking pool and a
//! successful check is remembered for a few minutes (keyed by a hash of the header value).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::HeaderMap;
use sha2::{Digest, Sha256};

/// Users loaded from an htpasswd file.
#[derive(Clone)]
pub struct Users {
    hashes: Arc<HashMap<String, String>>,
    verified: moka::sync::Cache<[u8; 32], String>,
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
        if hashes.is_empty() {
            return Err("no users".into());
        }
        Ok(Users {
            hashes: Arc::new(hashes),
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
        })
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Checks `Proxy-Authorization: Basic ...`; returns the user name when it is valid.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Option<String> {
        let value = headers.get(http::header::PROXY_AUTHORIZATION)?.as_bytes();
        let key: [u8; 32] = Sha256::digest(value).into();
        if let Some(user) = self.verified.get(&key) {
            return Some(user);
        }
        let (user, pass) = decode_basic(value)?;
        let hash = self.hashes.get(&user)?.clone();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if ok {
            self.verified.insert(key, user.clone());
            Some(user)
        } else {
            None
        }
    }
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

    #[tokio::test]
    async fn bcrypt_users() {
        let hash = bcrypt::hash("s3:cr@t", 4).unwrap();
        let users = Users::parse(&format!("# users\nalice:{hash}\n")).unwrap();
        assert_eq!(
            users
                .authenticate(&header("alice", "s3:cr@t"))
                .await
                .as_deref(),
            Some("alice")
        );
        // cached path
        assert_eq!(
            users
                .authenticate(&header("alice", "s3:cr@t"))
                .await
                .as_deref(),
            Some("alice")
        );
        assert!(
            users
                .authenticate(&header("alice", "wrong"))
                .await
                .is_none()
        );
        assert!(
            users
                .authenticate(&header("bob", "s3:cr@t"))
                .await
                .is_none()
        );
        assert!(users.authenticate(&HeaderMap::new()).await.is_none());
    }

    #[test]
    fn rejects_non_bcrypt() {
        let e = Users::parse("bob:$apr1$xyz$abc\n").unwrap_err();
        assert!(e.contains("htpasswd -B"));
        assert!(Users::parse("").is_err());
    }
}

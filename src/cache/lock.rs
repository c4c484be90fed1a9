//! Request coalescing (after pingora's `lock.rs`): the first miss for a URL becomes the
//! leader and gets a [`Permit`]; later misses for the same URL follow it and wait for its
//! outcome: a fill to read from as it streams, word that the upstream failed (followers that
//! may be served a stale entry are, like the leader), or word that the response is not
//! cacheable, in which case each follower goes upstream itself. Dropping a permit without
//! resolving it counts as a failure, so followers are never left waiting (RAII).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::fill::Fill;

#[derive(Clone)]
pub enum Outcome {
    Fill(Arc<Fill>),
    /// The response was not stored (uncacheable, an error, a 304...): go upstream yourself.
    Uncached,
    /// The upstream failed (no answer, or an error status where the stored entry was served
    /// stale instead): serve the stored entry stale if it may be, else go upstream yourself.
    Failed,
}

type Slot = watch::Sender<Option<Outcome>>;

#[derive(Default)]
pub struct Locks {
    map: Arc<Mutex<HashMap<String, Arc<Slot>>>>,
}

pub enum Acquired {
    Leader(Permit),
    Follower(Follower),
}

/// The leader's right and duty to resolve the key.
pub struct Permit {
    key: String,
    slot: Arc<Slot>,
    map: Arc<Mutex<HashMap<String, Arc<Slot>>>>,
    resolved: bool,
}

pub struct Follower {
    rx: watch::Receiver<Option<Outcome>>,
}

impl Locks {
    /// Leader for `key`, or a follower of the current leader.
    pub fn acquire(&self, key: &str) -> Acquired {
        let mut map = self.map.lock();
        if let Some(slot) = map.get(key) {
            return Acquired::Follower(Follower {
                rx: slot.subscribe(),
            });
        }
        let (tx, _) = watch::channel(None);
        let slot = Arc::new(tx);
        map.insert(key.to_string(), slot.clone());
        Acquired::Leader(Permit {
            key: key.to_string(),
            slot,
            map: self.map.clone(),
            resolved: false,
        })
    }

    /// Whether a fetch for `key` is in progress.
    pub fn is_locked(&self, key: &str) -> bool {
        self.map.lock().contains_key(key)
    }

    /// Number of keys being fetched now.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Permit {
    /// Publishes the outcome and releases the key (new misses start a new leader).
    pub fn resolve(mut self, outcome: Outcome) {
        self.finish(outcome);
    }

    /// Tells followers, present and future, the outcome while keeping the key locked until
    /// the permit is dropped (a fill: later misses join it while it streams).
    pub fn publish(&mut self, outcome: Outcome) {
        self.slot.send_replace(Some(outcome));
    }

    fn finish(&mut self, outcome: Outcome) {
        if self.resolved {
            return;
        }
        self.resolved = true;
        {
            let mut map = self.map.lock();
            if map
                .get(&self.key)
                .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
            {
                map.remove(&self.key);
            }
        }
        self.slot.send_replace(Some(outcome));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // A published outcome stays what late followers see.
        let published = self.slot.borrow().clone();
        self.finish(published.unwrap_or(Outcome::Uncached));
    }
}

impl Follower {
    /// Waits for the leader's outcome, at most `limit` (then: go upstream yourself).
    pub async fn wait(mut self, limit: Duration) -> Outcome {
        let r = tokio::time::timeout(limit, self.rx.wait_for(|o| o.is_some())).await;
        match r {
            Ok(Ok(v)) => v.clone().unwrap_or(Outcome::Uncached),
            _ => Outcome::Uncached,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leader_and_dropped_permit_releases_followers() {
        let locks = Locks::default();
        let Acquired::Leader(permit) = locks.acquire("k") else {
            panic!("first is leader")
        };
        let Acquired::Follower(f) = locks.acquire("k") else {
            panic!("second follows")
        };
        assert!(locks.is_locked("k"));
        drop(permit);
        assert!(matches!(
            f.wait(Duration::from_secs(1)).await,
            Outcome::Uncached
        ));
        assert!(!locks.is_locked("k"));
        assert!(matches!(locks.acquire("k"), Acquired::Leader(_)));
    }

    #[tokio::test]
    async fn follower_times_out() {
        let locks = Locks::default();
        let _p = locks.acquire("k");
        let Acquired::Follower(f) = locks.acquire("k") else {
            panic!()
        };
        assert!(matches!(
            f.wait(Duration::from_millis(10)).await,
            Outcome::Uncached
        ));
    }
}

//! Connection limits: the proxy-wide `--max-connections` and the per-client-address
//! `--max-connections-per-client`, held together by one [`ConnPermit`] for as long as the
//! connection, and any tunnel it became, is open.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OwnedSemaphorePermit;

use crate::access::hosts::canonical_ip;

/// Open connections per client address. Only addresses with an open connection have an
/// entry, so the table is never larger than `--max-connections`.
#[derive(Debug)]
pub struct ClientSlots {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl ClientSlots {
    pub fn new(limit: usize) -> Arc<ClientSlots> {
        Arc::new(ClientSlots {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A slot for one more connection from `ip`, or `None` when it already has `limit`.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let ip = canonical_ip(ip);
        let mut open = self.open.lock();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            slots: self.clone(),
            ip,
        })
    }

    /// Open connections from `ip`.
    pub fn open(&self, ip: IpAddr) -> usize {
        self.open
            .lock()
            .get(&canonical_ip(ip))
            .copied()
            .unwrap_or(0)
    }
}

/// One connection counted against its client's limit until dropped.
#[derive(Debug)]
pub struct ClientSlot {
    slots: Arc<ClientSlots>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What a client connection holds: its place under `--max-connections` and under its
/// address's `--max-connections-per-client`.
#[derive(Debug)]
pub struct ConnPermit {
    _global: OwnedSemaphorePermit,
    _client: ClientSlot,
}

impl ConnPermit {
    pub fn new(global: OwnedSemaphorePermit, client: ClientSlot) -> ConnPermit {
        ConnPermit {
            _global: global,
            _client: client,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_slots_are_counted_and_released() {
        let s = ClientSlots::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = s.try_acquire(a).unwrap();
        let _a2 = s.try_acquire(a).unwrap();
        assert!(s.try_acquire(a).is_none());
        // The same address in its IPv4-mapped spelling is the same client.
        assert!(s.try_acquire("::ffff:10.0.0.1".parse().unwrap()).is_none());
        let _b1 = s.try_acquire(b).unwrap();
        drop(a1);
        assert_eq!(s.open(a), 1);
        assert!(s.try_acquire(a).is_some());
    }

    #[test]
    fn released_addresses_leave_the_table() {
        let s = ClientSlots::new(1);
        for i in 0..1000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(i));
            drop(s.try_acquire(ip).unwrap());
        }
        assert!(s.open.lock().is_empty());
    }
}

//! The in-memory view of every lease, indexed by IP, MAC and client-id.
//!
//! The DHCP handler reads and changes leases through this view (a redb read transaction per
//! packet would cost more than the whole exchange); the store keeps it equal to what is on
//! disk plus the changes being committed. Invariant: one IP maps to at most one lease, and the
//! MAC and client-id indexes list exactly the IPs whose lease carries that MAC / client-id.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::{Lease, LeaseState};

#[derive(Default, Debug, Clone)]
pub struct LeaseIndex {
    by_ip: HashMap<Ipv4Addr, Lease>,
    by_mac: HashMap<[u8; 6], Vec<Ipv4Addr>>,
    by_client_id: HashMap<Vec<u8>, Vec<Ipv4Addr>>,
}

fn unlink<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<Ipv4Addr>>, key: &K, ip: Ipv4Addr) {
    if let Some(v) = map.get_mut(key) {
        v.retain(|x| *x != ip);
        if v.is_empty() {
            map.remove(key);
        }
    }
}

impl LeaseIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// An index sized for `n` leases up front: growing by doubling while loading a big
    /// database leaves the old tables behind as heap the allocator keeps.
    pub fn with_capacity(n: usize) -> Self {
        LeaseIndex {
            by_ip: HashMap::with_capacity(n),
            by_mac: HashMap::with_capacity(n),
            by_client_id: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    pub fn get(&self, ip: Ipv4Addr) -> Option<&Lease> {
        self.by_ip.get(&ip)
    }

    /// Every lease (any state) recorded for this MAC.
    pub fn by_mac(&self, mac: &[u8; 6]) -> impl Iterator<Item = &Lease> {
        self.by_mac
            .get(mac)
            .into_iter()
            .flatten()
            .filter_map(|ip| self.by_ip.get(ip))
    }

    /// Every lease (any state) recorded for this client-id.
    pub fn by_client_id(&self, cid: &[u8]) -> impl Iterator<Item = &Lease> {
        self.by_client_id
            .get(cid)
            .into_iter()
            .flatten()
            .filter_map(|ip| self.by_ip.get(ip))
    }

    /// Inserts or replaces the lease for `lease.ip`; returns the one it replaced.
    pub fn upsert(&mut self, lease: Lease) -> Option<Lease> {
        let ip = lease.ip;
        let old = self.by_ip.remove(&ip);
        if let Some(o) = &old {
            unlink(&mut self.by_mac, &o.mac, ip);
            if let Some(c) = &o.client_id {
                unlink(&mut self.by_client_id, c, ip);
            }
        }
        self.by_mac.entry(lease.mac).or_default().push(ip);
        if let Some(c) = &lease.client_id {
            self.by_client_id.entry(c.clone()).or_default().push(ip);
        }
        self.by_ip.insert(ip, lease);
        old
    }

    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.by_ip.values()
    }

    /// Active leases whose time ran out, and declined addresses whose hold ended, at `now`
    /// (Unix seconds), turned into `Expired` with `updated_ms`. Returns the new leases (the
    /// caller commits them) and whether each was active before (only those are announced).
    pub fn expire_due(&mut self, now: u64, updated_ms: u64) -> Vec<(Lease, bool)> {
        let due: Vec<Ipv4Addr> = self
            .by_ip
            .values()
            .filter(|l| {
                matches!(l.state, LeaseState::Active | LeaseState::Declined) && l.expiry <= now
            })
            .map(|l| l.ip)
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for ip in due {
            if let Some(l) = self.by_ip.get_mut(&ip) {
                let was_active = l.state == LeaseState::Active;
                l.state = LeaseState::Expired;
                l.updated_ms = updated_ms;
                out.push((l.clone(), was_active));
            }
        }
        out
    }

    /// Active (unexpired) leases.
    pub fn active_count(&self, now: u64) -> usize {
        self.by_ip
            .values()
            .filter(|l| l.state == LeaseState::Active && l.expiry > now)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ip: u8, mac: u8, cid: Option<u8>) -> Lease {
        Lease {
            ip: Ipv4Addr::new(10, 0, 0, ip),
            mac: [0, 0, 0, 0, 0, mac],
            client_id: cid.map(|c| vec![c]),
            hostname: None,
            subnet: "10.0.0.0/24".into(),
            state: LeaseState::Active,
            start: 0,
            expiry: 100,
            updated_ms: 1,
            relay_info: None,
        }
    }

    #[test]
    fn replacing_a_lease_moves_it_between_client_indexes() {
        let mut ix = LeaseIndex::new();
        ix.upsert(lease(10, 1, Some(7)));
        assert_eq!(ix.by_mac(&[0, 0, 0, 0, 0, 1]).count(), 1);
        ix.upsert(lease(10, 2, None));
        assert_eq!(ix.by_mac(&[0, 0, 0, 0, 0, 1]).count(), 0);
        assert_eq!(ix.by_client_id(&[7]).count(), 0);
        assert_eq!(ix.by_mac(&[0, 0, 0, 0, 0, 2]).count(), 1);
        assert_eq!(ix.len(), 1);
    }

    #[test]
    fn expiry_turns_due_active_and_declined_into_expired() {
        let mut ix = LeaseIndex::new();
        ix.upsert(lease(10, 1, None));
        let mut d = lease(11, 2, None);
        d.state = LeaseState::Declined;
        ix.upsert(d);
        let mut later = lease(12, 3, None);
        later.expiry = 500;
        ix.upsert(later);
        let out = ix.expire_due(100, 9);
        assert_eq!(out.len(), 2);
        assert!(out.iter().any(|(l, was)| l.ip.octets()[3] == 10 && *was));
        assert!(out.iter().any(|(l, was)| l.ip.octets()[3] == 11 && !*was));
        assert_eq!(
            ix.get(Ipv4Addr::new(10, 0, 0, 10)).map(|l| l.state),
            Some(LeaseState::Expired)
        );
        assert_eq!(ix.active_count(100), 1);
    }
}

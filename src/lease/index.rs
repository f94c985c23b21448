//! The in-memory view of every lease, indexed by IP, MAC and client-id.
//!
//! The DHCP handler reads and changes leases through this view (a redb read transaction per
//! packet would cost more than the whole exchange); the store keeps it equal to what is on
//! disk plus the changes being committed. Invariant: one IP maps to at most one lease, and the
//! MAC and client-id indexes list exactly the IPs whose lease carries that MAC / client-id.
//!
//! Memory: this is most of the daemon's heap (50,000 leases), so the client indexes hold no
//! heap block per lease. A key's first IP sits inline in the map ([`Multi`]); the client-id
//! index is keyed by a hash of the client-id (lookups compare the lease's own client-id, so a
//! collision only costs a comparison); and every lease of a subnet shares one allocation of
//! the subnet name.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::{Lease, LeaseState};

/// Key → IPs, for keys that nearly always have exactly one: the first IP inline (12–16 bytes
/// a key), any further ones in a side table. A `Vec` per key would cost a heap block per lease.
#[derive(Debug, Clone)]
struct Multi<K> {
    first: HashMap<K, Ipv4Addr>,
    more: HashMap<K, Vec<Ipv4Addr>>,
}

impl<K> Default for Multi<K> {
    fn default() -> Self {
        Multi {
            first: HashMap::new(),
            more: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Copy> Multi<K> {
    fn with_capacity(n: usize) -> Self {
        Multi {
            first: HashMap::with_capacity(n),
            more: HashMap::new(),
        }
    }

    fn insert(&mut self, k: K, ip: Ipv4Addr) {
        match self.first.entry(k) {
            Entry::Vacant(e) => {
                e.insert(ip);
            }
            Entry::Occupied(_) => self.more.entry(k).or_default().push(ip),
        }
    }

    fn remove(&mut self, k: K, ip: Ipv4Addr) {
        if self.first.get(&k) == Some(&ip) {
            // Promote one of the others (if any) to the inline slot.
            let next = self.more.get_mut(&k).and_then(Vec::pop);
            if self.more.get(&k).is_some_and(Vec::is_empty) {
                self.more.remove(&k);
            }
            match next {
                Some(n) => {
                    self.first.insert(k, n);
                }
                None => {
                    self.first.remove(&k);
                }
            }
        } else if let Some(v) = self.more.get_mut(&k) {
            v.retain(|x| *x != ip);
            if v.is_empty() {
                self.more.remove(&k);
            }
        }
    }

    fn get(&self, k: &K) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.first
            .get(k)
            .copied()
            .into_iter()
            .chain(self.more.get(k).into_iter().flatten().copied())
    }
}

#[derive(Default, Debug, Clone)]
pub struct LeaseIndex {
    by_ip: HashMap<Ipv4Addr, Lease>,
    by_mac: Multi<[u8; 6]>,
    /// Keyed by `cid_hash` of the client-id; entries are confirmed against the lease.
    by_client_id: Multi<u64>,
    /// Per-process random keys: nobody can aim client-ids at one hash bucket.
    cid_hash: RandomState,
    /// One shared name per subnet (a handful), so a lease costs no heap block for it.
    subnets: Vec<Arc<str>>,
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
            by_mac: Multi::with_capacity(n),
            by_client_id: Multi::with_capacity(n),
            ..Default::default()
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
        self.by_mac.get(mac).filter_map(|ip| self.by_ip.get(&ip))
    }

    /// Every lease (any state) recorded for this client-id.
    pub fn by_client_id<'a, 'c>(
        &'a self,
        cid: &'c [u8],
    ) -> impl Iterator<Item = &'a Lease> + use<'a, 'c> {
        self.by_client_id
            .get(&self.cid_hash.hash_one(cid))
            .filter_map(|ip| self.by_ip.get(&ip))
            .filter(move |l| l.client_id.as_deref() == Some(cid))
    }

    /// Inserts or replaces the lease for `lease.ip`; returns the one it replaced.
    pub fn upsert(&mut self, mut lease: Lease) -> Option<Lease> {
        let ip = lease.ip;
        lease.subnet = self.intern(lease.subnet);
        // A renewal (same address, same client) leaves the client indexes as they are: one
        // lookup instead of six, and at 50,000 leases each is a cache miss.
        if let Some(slot) = self.by_ip.get_mut(&ip) {
            if slot.mac == lease.mac && slot.client_id == lease.client_id {
                return Some(std::mem::replace(slot, lease));
            }
        }
        let old = self.by_ip.remove(&ip);
        if let Some(o) = &old {
            self.by_mac.remove(o.mac, ip);
            if let Some(c) = &o.client_id {
                self.by_client_id.remove(self.cid_hash.hash_one(c), ip);
            }
        }
        self.by_mac.insert(lease.mac, ip);
        if let Some(c) = &lease.client_id {
            self.by_client_id.insert(self.cid_hash.hash_one(c), ip);
        }
        self.by_ip.insert(ip, lease);
        old
    }

    /// The shared copy of a subnet name (a linear search: there are few subnets).
    fn intern(&mut self, name: Arc<str>) -> Arc<str> {
        if let Some(s) = self
            .subnets
            .iter()
            .find(|s| Arc::ptr_eq(s, &name) || *s == &name)
        {
            return s.clone();
        }
        self.subnets.push(name.clone());
        name
    }

    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.by_ip.values()
    }

    /// Active leases whose time ran out, and declined or conflicting addresses whose hold ended, at `now`
    /// (Unix seconds), turned into `Expired` with `updated_ms`. Returns the new leases (the
    /// caller commits them) and whether each was active before (only those are announced).
    pub fn expire_due(&mut self, now: u64, updated_ms: u64) -> Vec<(Lease, bool)> {
        let due: Vec<Ipv4Addr> = self
            .by_ip
            .values()
            .filter(|l| l.state.holds() && l.expiry <= now)
            .map(|l| l.ip)
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for ip in due {
            if let Some(l) = self.by_ip.get_mut(&ip) {
                let was_active = l.state == LeaseState::Active;
                l.state = LeaseState::Expired;
                // Later than the version it replaces even when the peer's clock (which
                // stamped it) runs ahead of ours: else the peer would keep that version.
                l.updated_ms = updated_ms.max(l.updated_ms + 1);
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
            classes: Vec::new(),
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
    fn a_renewal_replaces_the_lease_and_keeps_it_findable_by_client() {
        let mut ix = LeaseIndex::new();
        ix.upsert(lease(10, 1, Some(7)));
        let mut renewed = lease(10, 1, Some(7));
        renewed.expiry += 3600;
        let old = ix.upsert(renewed.clone()).expect("replaced");
        assert_eq!(old.expiry + 3600, renewed.expiry);
        assert_eq!(ix.get(renewed.ip), Some(&renewed));
        assert_eq!(ix.by_mac(&[0, 0, 0, 0, 0, 1]).count(), 1);
        assert_eq!(ix.by_client_id(&[7]).collect::<Vec<_>>(), vec![&renewed]);
        // Same MAC, another client-id: not a renewal, the client-id index follows.
        ix.upsert(lease(10, 1, Some(8)));
        assert_eq!(ix.by_client_id(&[7]).count(), 0);
        assert_eq!(ix.by_client_id(&[8]).count(), 1);
        assert_eq!(ix.len(), 1);
    }

    #[test]
    fn a_mac_with_several_leases_keeps_the_others_when_one_goes() {
        let mut ix = LeaseIndex::new();
        for ip in [10, 11, 12] {
            ix.upsert(lease(ip, 1, None));
        }
        let mac = [0, 0, 0, 0, 0, 1];
        let ips = |ix: &LeaseIndex| {
            let mut v: Vec<u8> = ix.by_mac(&mac).map(|l| l.ip.octets()[3]).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(ips(&ix), vec![10, 11, 12]);
        // .10 went in first (the inline slot): another address must take its place.
        ix.upsert(lease(10, 2, None));
        assert_eq!(ips(&ix), vec![11, 12]);
        ix.upsert(lease(12, 2, None));
        assert_eq!(ips(&ix), vec![11]);
        ix.upsert(lease(11, 2, None));
        assert!(ips(&ix).is_empty());
        assert!(!ix.by_mac.first.contains_key(&mac) && !ix.by_mac.more.contains_key(&mac));
        assert_eq!(ix.by_mac(&[0, 0, 0, 0, 0, 2]).count(), 3);
    }

    #[test]
    fn client_id_lookup_confirms_the_client_id_on_a_hash_collision() {
        let mut ix = LeaseIndex::new();
        ix.upsert(lease(10, 1, Some(7)));
        // What a collision of two client-ids' hashes looks like: client-id [8] points at .10.
        let h = ix.cid_hash.hash_one([8u8].as_slice());
        ix.by_client_id.insert(h, Ipv4Addr::new(10, 0, 0, 10));
        assert_eq!(ix.by_client_id(&[8]).count(), 0);
        assert_eq!(
            ix.by_client_id(&[7]).map(|l| l.ip).collect::<Vec<_>>(),
            vec![Ipv4Addr::new(10, 0, 0, 10)]
        );
    }

    #[test]
    fn leases_of_a_subnet_share_one_name() {
        let mut ix = LeaseIndex::new();
        ix.upsert(lease(10, 1, None));
        ix.upsert(lease(11, 2, None));
        let a = ix
            .get(Ipv4Addr::new(10, 0, 0, 10))
            .map(|l| l.subnet.clone());
        let b = ix
            .get(Ipv4Addr::new(10, 0, 0, 11))
            .map(|l| l.subnet.clone());
        match (a, b) {
            (Some(a), Some(b)) => assert!(Arc::ptr_eq(&a, &b), "two copies of {a}"),
            other => panic!("leases missing: {other:?}"),
        }
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

    #[test]
    fn expiry_of_a_lease_stamped_ahead_of_our_clock_is_still_the_later_change() {
        let mut ix = LeaseIndex::new();
        let mut ahead = lease(10, 1, None);
        ahead.updated_ms = 5_000; // the peer's clock runs ahead of ours (now: 900)
        ix.upsert(ahead);
        let out = ix.expire_due(100, 900);
        assert_eq!(out[0].0.updated_ms, 5_001);
    }
}

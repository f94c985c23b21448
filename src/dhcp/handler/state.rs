//! What the DHCP handler keeps between packets besides the leases: the offers it has made
//! (in memory only, for `offer_hold`), one allocator per subnet over its pools, and the
//! decisions over them: which subnet a request belongs to, which address a client is offered,
//! whether an address is free for it, and the conflict records that hold an address in use
//! on the wire.
//!
//! The allocator bitmaps are a fast first guess, kept in step with offers, leases and
//! conflicts; `available` has the last word on every address handed out, so a stale bit
//! costs a rebuild, not a duplicate.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::Ingress;
use crate::dhcp::alloc::Allocator;
use crate::dhcp::classes::ClassSet;
use crate::dhcp::packet::Request;
use crate::dhcp::plan::{Plan, SubnetPlan};
use crate::lease::{Lease, LeaseIndex, LeaseState};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum ClientKey {
    Cid(Vec<u8>),
    Mac([u8; 6]),
}

pub(super) fn client_key(req: &Request) -> ClientKey {
    match &req.client_id {
        Some(c) => ClientKey::Cid(c.clone()),
        None => ClientKey::Mac(req.mac()),
    }
}

#[derive(Debug, Clone)]
pub(super) struct Offer {
    key: ClientKey,
    until_ms: u64,
}

/// What the handler keeps between packets besides the leases: offers and allocators.
pub struct DhcpState {
    pub plan: Plan,
    pub(super) allocs: Vec<Allocator>,
    pub(super) offers: HashMap<Ipv4Addr, Offer>,
    pub(super) offer_by_client: HashMap<ClientKey, Ipv4Addr>,
}

/// Does this lease belong to the client that sent `req`? By client-id when both have one,
/// else by hardware address (RFC 2131 §4.2).
pub(super) fn owns(l: &Lease, req: &Request) -> bool {
    match (&req.client_id, &l.client_id) {
        (Some(c), Some(lc)) => c == lc,
        _ => l.mac == req.mac(),
    }
}

/// One allocator per subnet, over its pools.
fn allocators(plan: &Plan) -> Vec<Allocator> {
    plan.subnets
        .iter()
        .map(|s| {
            let ranges: Vec<(u32, u32)> = s.pools.iter().map(|p| (p.start, p.end)).collect();
            Allocator::new(&ranges)
        })
        .collect()
}

pub(super) fn live(l: &Lease, now_s: u64) -> bool {
    l.state.holds() && l.expiry > now_s
}

impl DhcpState {
    pub fn new(plan: Plan, leases: &LeaseIndex, now_ms: u64) -> Self {
        let allocs = allocators(&plan);
        let mut st = DhcpState {
            plan,
            allocs,
            offers: HashMap::new(),
            offer_by_client: HashMap::new(),
        };
        st.rebuild(leases, now_ms);
        st
    }

    /// A reloaded config: new subnets, pools, reservations, options and timers serve from the
    /// next packet. Leases stay in the index, so an address outside a shrunk pool is not offered
    /// again while its client keeps it; offers of addresses still in a pool are kept.
    pub fn replace_plan(&mut self, plan: Plan, leases: &LeaseIndex, now_ms: u64) {
        self.allocs = allocators(&plan);
        self.plan = plan;
        let plan = &self.plan;
        self.offers.retain(|ip, _| {
            plan.subnet_of(*ip)
                .is_some_and(|i| plan.subnets[i].pool_of(*ip).is_some())
        });
        let offers = &self.offers;
        self.offer_by_client.retain(|_, ip| offers.contains_key(ip));
        self.rebuild(leases, now_ms);
    }

    /// Re-derives the allocator bitmaps from the index, offers and reservations, and drops
    /// lapsed offers. Cheap enough to run every few seconds (one pass over the pools).
    pub fn rebuild(&mut self, leases: &LeaseIndex, now_ms: u64) {
        self.expire_offers(now_ms);
        let now_s = now_ms / 1000;
        for (i, s) in self.plan.subnets.iter().enumerate() {
            let offers = &self.offers;
            self.allocs[i].rebuild(|ip| {
                s.reserved.contains_key(&ip)
                    || offers.contains_key(&ip)
                    || leases.get(ip).is_some_and(|l| live(l, now_s))
            });
        }
    }

    pub fn expire_offers(&mut self, now_ms: u64) {
        let lapsed: Vec<Ipv4Addr> = self
            .offers
            .iter()
            .filter(|(_, o)| o.until_ms <= now_ms)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in lapsed {
            self.drop_offer(ip);
        }
    }

    pub fn offers_held(&self) -> usize {
        self.offers.len()
    }

    /// Addresses with an offer outstanding (for the pool usage).
    pub fn offered(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.offers.keys().copied()
    }

    pub(super) fn drop_offer(&mut self, ip: Ipv4Addr) {
        if let Some(o) = self.offers.remove(&ip) {
            if self.offer_by_client.get(&o.key) == Some(&ip) {
                self.offer_by_client.remove(&o.key);
            }
            for a in &mut self.allocs {
                a.mark(ip, false);
            }
        }
    }

    pub(super) fn offered_to(&self, ip: Ipv4Addr, key: &ClientKey, now_ms: u64) -> Option<bool> {
        self.offers
            .get(&ip)
            .filter(|o| o.until_ms > now_ms)
            .map(|o| &o.key == key)
    }

    /// Size and live leases of each subnet's pools: (subnet, size).
    pub fn pool_sizes(&self) -> Vec<(String, u64)> {
        self.plan
            .subnets
            .iter()
            .zip(&self.allocs)
            .map(|(s, a)| (s.name.to_string(), a.size()))
            .collect()
    }

    /// Chooses the subnet: link selection (option 118 / 82.5), the relay's giaddr, the
    /// client's ciaddr, then the interface the request arrived on.
    pub(super) fn select_subnet(&self, req: &Request, ing: &Ingress) -> Option<usize> {
        if let Some(link) = req.link_selection {
            return self.plan.subnet_of(link);
        }
        if !req.giaddr.is_unspecified() {
            return self.plan.subnet_of(req.giaddr);
        }
        let on_link = |s: &SubnetPlan| {
            s.interface
                .as_deref()
                .is_some_and(|i| Some(i) == ing.ifname.as_deref())
                || ing.if_addrs.iter().any(|n| s.network.contains(&n.addr()))
        };
        if !req.ciaddr.is_unspecified() {
            if let Some(i) = self.plan.subnet_of(req.ciaddr) {
                if on_link(&self.plan.subnets[i]) {
                    return Some(i);
                }
            }
        }
        self.plan.subnets.iter().position(on_link)
    }

    /// Option 54 for a subnet: the VIP in it, else `[server] server_id`, else this node's
    /// address on the subnet, else the address the request reached.
    pub(super) fn server_id(&self, s: &SubnetPlan, ing: &Ingress) -> Ipv4Addr {
        if let Some(id) = s.server_id {
            return id;
        }
        if let Some(n) = ing.if_addrs.iter().find(|n| s.network.contains(&n.addr())) {
            return n.addr();
        }
        if !ing.broadcast() {
            return ing.dst;
        }
        ing.if_addrs
            .first()
            .map(|n| n.addr())
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// Can `ip` be given to the client of `req`? It must be a host address of the subnet,
    /// not reserved for or leased to or offered to another client.
    pub(super) fn available(
        &self,
        si: usize,
        leases: &LeaseIndex,
        ip: Ipv4Addr,
        req: &Request,
        now_ms: u64,
    ) -> bool {
        let s = &self.plan.subnets[si];
        if !s.network.contains(&ip) || ip == s.network.network() || ip == s.network.broadcast() {
            return false;
        }
        let mine = s.reservation(req);
        if s.reserved.contains_key(&ip) && mine.map(|r| r.ip) != Some(ip) {
            return false;
        }
        // A port's reservation goes to whatever device is on the port now.
        let port_takeover = mine.is_some_and(|r| r.by_port && r.ip == ip);
        if let Some(l) = leases.get(ip) {
            if live(l, now_ms / 1000)
                && (l.state == LeaseState::Declined || (!owns(l, req) && !port_takeover))
            {
                return false;
            }
        }
        self.offered_to(ip, &client_key(req), now_ms) != Some(false)
    }

    /// The client's lease in this subnet, active ones first.
    pub(super) fn client_lease<'a>(
        leases: &'a LeaseIndex,
        s: &SubnetPlan,
        req: &Request,
    ) -> Option<&'a Lease> {
        let mut best: Option<&Lease> = None;
        let candidates: Box<dyn Iterator<Item = &'a Lease> + '_> = match &req.client_id {
            Some(c) => Box::new(leases.by_client_id(c).chain(leases.by_mac(&req.mac()))),
            None => Box::new(leases.by_mac(&req.mac())),
        };
        for l in candidates {
            if l.subnet != s.name || !owns(l, req) || l.state == LeaseState::Declined {
                continue;
            }
            let better = match best {
                None => true,
                Some(b) => {
                    (l.state == LeaseState::Active && b.state != LeaseState::Active)
                        || (l.state == b.state && l.updated_ms > b.updated_ms)
                }
            };
            if better {
                best = Some(l);
            }
        }
        best
    }

    /// The address to offer: reservation, current lease, standing offer, requested (50),
    /// previous lease, then the pool.
    pub(super) fn choose(
        &mut self,
        si: usize,
        leases: &LeaseIndex,
        req: &Request,
        classes: ClassSet,
        now_ms: u64,
    ) -> Option<Ipv4Addr> {
        let s = &self.plan.subnets[si];
        if let Some(r) = s.reservation(req) {
            let ip = r.ip;
            return self.available(si, leases, ip, req, now_ms).then_some(ip);
        }
        let now_s = now_ms / 1000;
        let current = Self::client_lease(leases, s, req).map(|l| (l.ip, live(l, now_s)));
        if let Some((ip, true)) = current {
            if self.available(si, leases, ip, req, now_ms) {
                return Some(ip);
            }
        }
        if let Some(ip) = self.offer_by_client.get(&client_key(req)).copied() {
            if self.offered_to(ip, &client_key(req), now_ms) == Some(true) {
                return Some(ip);
            }
        }
        let pool_ok = |st: &Self, ip: Ipv4Addr| {
            st.plan.subnets[si].in_pool(ip, classes) && st.available(si, leases, ip, req, now_ms)
        };
        if let Some(ip) = req.requested_ip.filter(|ip| pool_ok(self, *ip)) {
            return Some(ip);
        }
        if let Some((ip, false)) = current {
            if pool_ok(self, ip) {
                return Some(ip);
            }
        }
        let mut alloc = std::mem::take(&mut self.allocs[si]);
        // A class member fills the pools kept for its classes before the shared ones.
        let take = |st: &Self, alloc: &mut Allocator| {
            let pools = &st.plan.subnets[si].pools;
            let pass = |restricted: bool, alloc: &mut Allocator| {
                alloc.take_in(
                    |pi| pools[pi].classes.is_empty() != restricted && pools[pi].serves(classes),
                    |ip| pool_ok(st, ip),
                )
            };
            if classes.is_empty() {
                pass(false, alloc)
            } else {
                pass(true, alloc).or_else(|| pass(false, alloc))
            }
        };
        let mut got = take(self, &mut alloc);
        if got.is_none() {
            // The bitmap may hold stale "taken" bits (expired leases, lapsed offers).
            let s = &self.plan.subnets[si];
            let offers = &self.offers;
            alloc.rebuild(|ip| {
                s.reserved.contains_key(&ip)
                    || offers.get(&ip).is_some_and(|o| o.until_ms > now_ms)
                    || leases.get(ip).is_some_and(|l| live(l, now_s))
            });
            got = take(self, &mut alloc);
        }
        self.allocs[si] = alloc;
        got
    }

    pub(super) fn hold_offer(&mut self, ip: Ipv4Addr, req: &Request, now_ms: u64) {
        let key = client_key(req);
        if let Some(old) = self.offer_by_client.get(&key).copied() {
            if old != ip {
                self.drop_offer(old);
            }
        }
        self.offers.insert(
            ip,
            Offer {
                key: key.clone(),
                until_ms: now_ms + self.plan.offer_hold_ms,
            },
        );
        self.offer_by_client.insert(key, ip);
        for a in &mut self.allocs {
            a.mark(ip, true);
        }
    }

    /// Records that `ip` is in use on the wire by `mac` (a probe was answered, or an ARP
    /// claimed it): the address is held as a conflict until `hold_s` from now, its offer
    /// (if any) withdrawn. Seen again, the record keeps its first-seen time and counts up.
    /// Returns the record to commit, or None for an address outside every subnet.
    pub fn record_conflict(
        &mut self,
        leases: &mut LeaseIndex,
        ip: Ipv4Addr,
        mac: [u8; 6],
        hold_s: u64,
        now_ms: u64,
    ) -> Option<Lease> {
        let si = self.plan.subnet_of(ip)?;
        self.drop_offer(ip);
        let now_s = now_ms / 1000;
        let prev = leases.get(ip);
        let (start, seen) = match prev {
            Some(l) if l.state.is_conflict() && l.mac == mac && l.expiry > now_s => {
                let LeaseState::Conflict { seen } = l.state else {
                    unreachable!("is_conflict")
                };
                (l.start, seen.saturating_add(1))
            }
            _ => (now_s, 1),
        };
        let lease = Lease {
            ip,
            mac,
            client_id: None,
            hostname: None,
            subnet: self.plan.subnets[si].name.clone(),
            state: LeaseState::Conflict { seen },
            start,
            expiry: now_s + hold_s,
            updated_ms: now_ms.max(prev.map_or(0, |l| l.updated_ms + 1)),
            relay_info: None,
            classes: Vec::new(),
        };
        leases.upsert(lease.clone());
        for a in &mut self.allocs {
            a.mark(ip, true);
        }
        Some(lease)
    }

    /// An operator cleared the conflict on `ip` (the record is already gone from the
    /// index): the address may be offered again.
    pub fn conflict_cleared(&mut self, ip: Ipv4Addr) {
        for a in &mut self.allocs {
            a.mark(ip, false);
        }
    }

    pub(super) fn forget_offer_of(&mut self, req: &Request) {
        if let Some(ip) = self.offer_by_client.get(&client_key(req)).copied() {
            self.drop_offer(ip);
        }
    }

    pub(super) fn client_leases<'a>(
        leases: &'a LeaseIndex,
        s: &'a SubnetPlan,
        req: &'a Request,
    ) -> impl Iterator<Item = &'a Lease> + 'a {
        let by_cid: Box<dyn Iterator<Item = &Lease>> = match &req.client_id {
            Some(c) => Box::new(leases.by_client_id(c)),
            None => Box::new(std::iter::empty()),
        };
        by_cid
            .chain(leases.by_mac(&req.mac()))
            .filter(move |l| l.subnet == s.name && owns(l, req))
    }
}

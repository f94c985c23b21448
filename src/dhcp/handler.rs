//! The DHCP logic as a pure function: (request, where it came in, lease view, config, time)
//! → (reply, lease changes, events). No sockets, no clock, no disk: the server loop passes
//! those in and carries the results out, so every RFC 2131 case is tested directly.
//!
//! Invariants:
//! - An address is ACKed only to the client that owns it: its lease, its reservation, its
//!   offer, or a free pool address nobody else holds or was offered. Anything else is a NAK
//!   (RFC 2131 §4.3.2), or silence where the RFC says so (no record in INIT-REBOOT, a
//!   REQUEST for another server).
//! - Offers live only in memory for `offer_hold`; an ACK is a lease change the caller must
//!   make durable before the reply leaves.
//! - The index is changed here (so the next packet sees it) and every change is also
//!   returned in [`Outcome::commit`], in order.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use dhcproto::v4::MessageType;
use ipnet::Ipv4Net;

use super::alloc::Allocator;
use super::classes::{classify, ClassSet};
use super::packet::*;
use super::plan::{Plan, SubnetPlan};
use super::reply::{build_reply, echo_options, Layers};
use crate::events::{EventKind, LeaseEvent};
use crate::lease::{Lease, LeaseIndex, LeaseState};

/// Where a request came in.
#[derive(Debug, Clone)]
pub struct Ingress {
    /// Name of the interface it arrived on, when known.
    pub ifname: Option<std::sync::Arc<str>>,
    /// That interface's IPv4 addresses with prefixes (shared with the interface table: no
    /// copy per packet).
    pub if_addrs: std::sync::Arc<[Ipv4Net]>,
    /// The IP destination of the request (255.255.255.255 for a broadcast).
    pub dst: Ipv4Addr,
}

impl Ingress {
    fn broadcast(&self) -> bool {
        self.dst.is_broadcast() || self.dst.is_unspecified()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ClientKey {
    Cid(Vec<u8>),
    Mac([u8; 6]),
}

fn client_key(req: &Request) -> ClientKey {
    match &req.client_id {
        Some(c) => ClientKey::Cid(c.clone()),
        None => ClientKey::Mac(req.mac()),
    }
}

#[derive(Debug, Clone)]
struct Offer {
    key: ClientKey,
    until_ms: u64,
}

/// What the handler keeps between packets besides the leases: offers and allocators.
pub struct DhcpState {
    pub plan: Plan,
    allocs: Vec<Allocator>,
    offers: HashMap<Ipv4Addr, Offer>,
    offer_by_client: HashMap<ClientKey, Ipv4Addr>,
}

/// The handler's result.
#[derive(Debug, Default)]
pub struct Outcome {
    pub reply: Option<Reply>,
    /// Lease changes already applied to the index; commit them before sending `reply`.
    pub commit: Vec<Lease>,
    pub events: Vec<(EventKind, LeaseEvent)>,
    /// Why there is no reply (a metrics label), when there is none.
    pub ignored: Option<&'static str>,
    /// The first client class the request matched (the `class` label of reply metrics).
    pub class: Option<&'static str>,
    /// An OFFER of an address that is not the client's own (lease or reservation): the
    /// caller checks it is free on the wire before the reply leaves (conflict detection).
    pub probe: Option<Ipv4Addr>,
}

impl Outcome {
    fn ignore(why: &'static str) -> Self {
        Outcome {
            ignored: Some(why),
            ..Default::default()
        }
    }
}

/// Does this lease belong to the client that sent `req`? By client-id when both have one,
/// else by hardware address (RFC 2131 §4.2).
fn owns(l: &Lease, req: &Request) -> bool {
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

fn live(l: &Lease, now_s: u64) -> bool {
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

    fn drop_offer(&mut self, ip: Ipv4Addr) {
        if let Some(o) = self.offers.remove(&ip) {
            if self.offer_by_client.get(&o.key) == Some(&ip) {
                self.offer_by_client.remove(&o.key);
            }
            for a in &mut self.allocs {
                a.mark(ip, false);
            }
        }
    }

    fn offered_to(&self, ip: Ipv4Addr, key: &ClientKey, now_ms: u64) -> Option<bool> {
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
    fn select_subnet(&self, req: &Request, ing: &Ingress) -> Option<usize> {
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
    fn server_id(&self, s: &SubnetPlan, ing: &Ingress) -> Ipv4Addr {
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
    fn available(
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
    fn client_lease<'a>(
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
    fn choose(
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

    fn hold_offer(&mut self, ip: Ipv4Addr, req: &Request, now_ms: u64) {
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

    fn forget_offer_of(&mut self, req: &Request) {
        if let Some(ip) = self.offer_by_client.get(&client_key(req)).copied() {
            self.drop_offer(ip);
        }
    }
}

/// Handles one checked request.
pub fn handle(
    st: &mut DhcpState,
    leases: &mut LeaseIndex,
    req: &Request,
    ing: &Ingress,
    now_ms: u64,
) -> Outcome {
    if req.hlen > 16 || (req.htype == 1 && req.hlen != 6) {
        return Outcome::ignore("bad_hardware_address");
    }
    let Some(si) = st.select_subnet(req, ing) else {
        return Outcome::ignore("no_subnet");
    };
    // Once per packet; with no classes configured this is a length check.
    let classes = if st.plan.classes.is_empty() {
        ClassSet::default()
    } else {
        classify(&st.plan.classes, req)
    };
    let mut out = match req.msg_type {
        MessageType::Discover => discover(st, leases, si, req, ing, classes, now_ms),
        MessageType::Request => request(st, leases, si, req, ing, classes, now_ms),
        MessageType::Decline => decline(st, leases, si, req, ing, now_ms),
        MessageType::Release => release(st, leases, si, req, now_ms),
        MessageType::Inform => inform(st, si, req, ing, classes),
        _ => Outcome::ignore("not_a_client_message"),
    };
    out.class = classes.iter().next().map(|i| st.plan.classes[i].name);
    out
}

fn event_for(req: &Request, ip: Ipv4Addr, subnet: &str) -> LeaseEvent {
    LeaseEvent {
        ip,
        mac: crate::lease::hex_colon(&req.mac()),
        hostname: req.hostname.clone(),
        client_id: req.client_id.as_deref().map(crate::lease::hex_colon),
        subnet: subnet.to_string(),
        lease_start: 0,
        lease_expiry: 0,
        lease_duration: 0,
    }
}

fn discover(
    st: &mut DhcpState,
    leases: &mut LeaseIndex,
    si: usize,
    req: &Request,
    ing: &Ingress,
    classes: ClassSet,
    now_ms: u64,
) -> Outcome {
    let subnet = st.plan.subnets[si].name.clone();
    let mut out = Outcome::default();
    out.events.push((
        EventKind::LeaseDiscover,
        event_for(
            req,
            req.requested_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            &subnet,
        ),
    ));
    let Some(ip) = st.choose(si, leases, req, classes, now_ms) else {
        out.ignored = Some("no_free_address");
        return out;
    };
    let own = {
        let s = &st.plan.subnets[si];
        s.reservation(req).is_some_and(|r| r.ip == ip)
            || DhcpState::client_lease(leases, s, req)
                .is_some_and(|l| l.ip == ip && live(l, now_ms / 1000))
    };
    out.probe = (!own).then_some(ip);
    st.hold_offer(ip, req, now_ms);
    let s = &st.plan.subnets[si];
    let sid = st.server_id(s, ing);
    let layers = Layers::new(&st.plan, s, req, Some(ip), classes);
    let reply = build_reply(s, &layers, sid, req, MessageType::Offer, ip, true);
    let mut ev = event_for(req, ip, &subnet);
    ev.lease_start = now_ms / 1000;
    ev.lease_duration = s.times.lease.as_secs();
    ev.lease_expiry = ev.lease_start + ev.lease_duration;
    out.events.push((EventKind::LeaseOffer, ev));
    out.reply = Some(reply);
    out
}

/// RFC 2131 §4.3.2 client states, from the fields the client set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestState {
    Selecting,
    InitReboot,
    Renewing,
    Rebinding,
}

fn request(
    st: &mut DhcpState,
    leases: &mut LeaseIndex,
    si: usize,
    req: &Request,
    ing: &Ingress,
    classes: ClassSet,
    now_ms: u64,
) -> Outcome {
    let sid = st.server_id(&st.plan.subnets[si], ing);
    let state = match (req.server_id, req.requested_ip, req.ciaddr.is_unspecified()) {
        (Some(_), _, _) => RequestState::Selecting,
        (None, Some(_), true) => RequestState::InitReboot,
        (None, _, false) if ing.broadcast() => RequestState::Rebinding,
        (None, _, false) => RequestState::Renewing,
        (None, None, true) => return Outcome::ignore("request_without_address"),
    };
    if state == RequestState::Selecting && req.server_id != Some(sid) {
        // The client chose another server's offer: free ours (RFC 2131 §4.3.2).
        st.forget_offer_of(req);
        return Outcome::ignore("other_server_selected");
    }
    let ip = match state {
        RequestState::Selecting | RequestState::InitReboot => match req.requested_ip {
            Some(ip) => ip,
            None => return Outcome::ignore("selecting_without_requested_ip"),
        },
        RequestState::Renewing | RequestState::Rebinding => req.ciaddr,
    };
    let s = &st.plan.subnets[si];
    let subnet = s.name.clone();
    let now_s = now_ms / 1000;
    let existing = leases.get(ip).cloned();
    let mine = existing.as_ref().is_some_and(|l| owns(l, req));
    let reservation = s.reservation(req).map(|r| (r.ip, r.hostname.clone()));

    let offered = st.offered_to(ip, &client_key(req), now_ms) == Some(true);
    let reserved_here = reservation.as_ref().is_some_and(|r| r.0 == ip);
    if state == RequestState::InitReboot
        && s.network.contains(&ip)
        && !mine
        && reservation.is_none()
        && DhcpState::client_leases(leases, s, req).next().is_none()
    {
        // No record of this client: stay silent (RFC 2131 §4.3.2, INIT-REBOOT); another
        // server may know it.
        return Outcome::ignore("init_reboot_unknown_client");
    }
    let refusal = if !s.network.contains(&ip) {
        Some("address not on this network")
    } else if reservation.as_ref().is_some_and(|r| r.0 != ip) {
        Some("client has a reservation for another address")
    } else if !st.available(si, leases, ip, req, now_ms) {
        Some("address belongs to another client")
    } else {
        match state {
            // Our offer, the client's lease, its reservation, or a free pool address.
            RequestState::Selecting
                if offered || mine || reserved_here || s.in_pool(ip, classes) =>
            {
                None
            }
            // A known client asking for an address that is not its own must start over.
            RequestState::InitReboot if mine || reserved_here => None,
            RequestState::InitReboot => Some("client's lease is for another address"),
            RequestState::Renewing | RequestState::Rebinding
                if mine || reserved_here || s.in_pool(ip, classes) =>
            {
                None
            }
            _ => Some("address is not in a pool"),
        }
    };
    if let Some(why) = refusal {
        return nak(st, si, req, ing, ip, why, &subnet);
    }
    let renew = existing
        .as_ref()
        .is_some_and(|l| mine && l.state == LeaseState::Active && l.expiry > now_s);
    let lease_secs = s.times.lease.as_secs();
    let hostname = reservation
        .as_ref()
        .and_then(|r| r.1.clone())
        .or_else(|| req.hostname.clone())
        .or_else(|| {
            existing
                .as_ref()
                .filter(|_| mine)
                .and_then(|l| l.hostname.clone())
        });
    let lease = Lease {
        ip,
        mac: req.mac(),
        client_id: req.client_id.clone(),
        hostname,
        subnet: subnet.clone(),
        state: LeaseState::Active,
        start: now_s,
        expiry: now_s + lease_secs,
        updated_ms: now_ms.max(existing.as_ref().map_or(0, |l| l.updated_ms + 1)),
        relay_info: req.relay_info.clone().or_else(|| {
            existing
                .as_ref()
                .filter(|_| mine)
                .and_then(|l| l.relay_info.clone())
        }),
        classes: super::classes::names(&st.plan.classes, classes),
    };
    // The same client keeps one active address per subnet.
    let mut out = Outcome::default();
    let others: Vec<Lease> = DhcpState::client_leases(leases, s, req)
        .filter(|l| l.ip != ip && l.state == LeaseState::Active)
        .cloned()
        .collect();
    for mut o in others {
        o.state = LeaseState::Released;
        o.expiry = now_s;
        // Like every local change, later than the version it replaces (see `Lease::updated_ms`).
        o.updated_ms = now_ms.max(o.updated_ms + 1);
        leases.upsert(o.clone());
        for a in &mut st.allocs {
            a.mark(o.ip, false);
        }
        out.commit.push(o);
    }
    st.offers.remove(&ip);
    st.offer_by_client.remove(&client_key(req));
    for a in &mut st.allocs {
        a.mark(ip, true);
    }
    leases.upsert(lease.clone());
    let s = &st.plan.subnets[si];
    let layers = Layers::new(&st.plan, s, req, Some(ip), classes);
    let mut reply = build_reply(s, &layers, sid, req, MessageType::Ack, ip, true);
    if let Some(h) = reservation.as_ref().and_then(|r| r.1.as_ref()) {
        reply
            .options
            .push((OPT_HOSTNAME, h.as_bytes().into(), true));
    }
    out.events.push((
        if renew {
            EventKind::LeaseRenew
        } else {
            EventKind::LeaseAck
        },
        lease.event(),
    ));
    out.commit.push(lease);
    out.reply = Some(reply);
    out
}

impl DhcpState {
    fn client_leases<'a>(
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

fn nak(
    st: &DhcpState,
    si: usize,
    req: &Request,
    ing: &Ingress,
    ip: Ipv4Addr,
    why: &'static str,
    subnet: &str,
) -> Outcome {
    let s = &st.plan.subnets[si];
    let sid = st.server_id(s, ing);
    let mut options = vec![
        (OPT_SERVER_ID, sid.octets()[..].into(), true),
        (OPT_MESSAGE, why.as_bytes().into(), false),
    ];
    echo_options(req, &mut options);
    // RFC 2131 §4.1: a NAK goes to the relay (with the broadcast bit set) or is broadcast.
    let reply = Reply {
        msg_type: MessageType::Nak,
        xid: req.xid,
        broadcast_flag: !req.giaddr.is_unspecified() || req.broadcast_flag,
        htype: req.htype,
        hlen: req.hlen,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        yiaddr: Ipv4Addr::UNSPECIFIED,
        siaddr: Ipv4Addr::UNSPECIFIED,
        giaddr: req.giaddr,
        chaddr: req.chaddr,
        file: None,
        options,
        dest: if req.giaddr.is_unspecified() {
            Dest::Broadcast
        } else {
            Dest::Relay(req.giaddr)
        },
        server_id: sid,
        max_payload: max_payload(req.max_size),
    };
    let mut out = Outcome {
        reply: Some(reply),
        ..Default::default()
    };
    out.events
        .push((EventKind::LeaseNak, event_for(req, ip, subnet)));
    out
}

fn for_server(st: &DhcpState, si: usize, req: &Request, ing: &Ingress) -> bool {
    let sid = st.server_id(&st.plan.subnets[si], ing);
    req.server_id.is_none_or(|s| s == sid)
}

fn decline(
    st: &mut DhcpState,
    leases: &mut LeaseIndex,
    si: usize,
    req: &Request,
    ing: &Ingress,
    now_ms: u64,
) -> Outcome {
    if !for_server(st, si, req, ing) {
        return Outcome::ignore("other_server");
    }
    let Some(ip) = req.requested_ip else {
        return Outcome::ignore("decline_without_address");
    };
    let key = client_key(req);
    let ours = leases.get(ip).is_some_and(|l| owns(l, req))
        || st.offered_to(ip, &key, now_ms) == Some(true);
    if !ours {
        return Outcome::ignore("decline_of_unknown_lease");
    }
    st.drop_offer(ip);
    let now_s = now_ms / 1000;
    let s = &st.plan.subnets[si];
    let lease = Lease {
        ip,
        mac: req.mac(),
        client_id: req.client_id.clone(),
        hostname: None,
        subnet: s.name.clone(),
        state: LeaseState::Declined,
        start: now_s,
        expiry: now_s + st.plan.decline_hold_s,
        updated_ms: now_ms.max(leases.get(ip).map_or(0, |l| l.updated_ms + 1)),
        relay_info: req.relay_info.clone(),
        classes: Vec::new(),
    };
    leases.upsert(lease.clone());
    for a in &mut st.allocs {
        a.mark(ip, true);
    }
    Outcome {
        events: vec![(EventKind::LeaseDecline, lease.event())],
        commit: vec![lease],
        ignored: Some("decline"),
        ..Default::default()
    }
}

fn release(
    st: &mut DhcpState,
    leases: &mut LeaseIndex,
    si: usize,
    req: &Request,
    now_ms: u64,
) -> Outcome {
    let ip = req.ciaddr;
    let Some(l) = leases
        .get(ip)
        .filter(|l| owns(l, req) && l.state == LeaseState::Active)
        .cloned()
    else {
        return Outcome::ignore("release_of_unknown_lease");
    };
    if !st.plan.subnets[si].network.contains(&ip) {
        return Outcome::ignore("release_of_unknown_lease");
    }
    let now_s = now_ms / 1000;
    let lease = Lease {
        state: LeaseState::Released,
        expiry: now_s,
        updated_ms: now_ms.max(l.updated_ms + 1),
        ..l
    };
    leases.upsert(lease.clone());
    for a in &mut st.allocs {
        a.mark(ip, false);
    }
    Outcome {
        events: vec![(EventKind::LeaseRelease, lease.event())],
        commit: vec![lease],
        ignored: Some("release"),
        ..Default::default()
    }
}

fn inform(
    st: &mut DhcpState,
    si: usize,
    req: &Request,
    ing: &Ingress,
    classes: ClassSet,
) -> Outcome {
    let s = &st.plan.subnets[si];
    let sid = st.server_id(s, ing);
    let layers = Layers::new(&st.plan, s, req, None, classes);
    let mut reply = build_reply(
        s,
        &layers,
        sid,
        req,
        MessageType::Ack,
        Ipv4Addr::UNSPECIFIED,
        false,
    );
    // RFC 2131 §4.3.5: answer to ciaddr (or the relay); never set yiaddr.
    if req.giaddr.is_unspecified() && req.ciaddr.is_unspecified() {
        reply.dest = Dest::Broadcast;
    }
    Outcome {
        reply: Some(reply),
        ..Default::default()
    }
}

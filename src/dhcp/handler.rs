//! The DHCP logic as a pure function: (request, where it came in, lease view, config, time)
//! → (reply, lease changes, events). No sockets, no clock, no disk: the server loop passes
//! those in and carries the results out, so every RFC 2131 case is tested directly. This file
//! answers each message type; `state` keeps the offers and allocators between packets and
//! chooses the address.
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

mod state;

use std::net::Ipv4Addr;

use dhcproto::v4::MessageType;
use ipnet::Ipv4Net;

use super::classes::{classify, ClassSet};
use super::packet::*;
use super::reply::{build_reply, echo_options, Layers};
use crate::events::{EventKind, LeaseEvent};
use crate::lease::{Lease, LeaseIndex, LeaseState};
pub use state::DhcpState;
use state::{client_key, live, owns};

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

//! Assembling an OFFER or ACK: which options go in (from which layer), in which order, and
//! the PXE fields (`siaddr`, `file`).
//!
//! Options merge in the order defaults < subnet < pool < class < reservation. The layers
//! stay separate lists built at load; a code is looked up from the most specific layer
//! down, so a reply costs the same lookups as before when no pool, class or reservation
//! sets options.

use std::net::Ipv4Addr;

use dhcproto::v4::MessageType;

use super::classes::{ClassPlan, ClassSet};
use super::packet::*;
use super::plan::{Plan, SubnetPlan};

/// Where a reply's options come from, least specific first.
pub struct Layers<'a> {
    /// The subnet's options, with `[defaults]` already applied.
    pub subnet: &'a [ReplyOption],
    /// The options of the pool the address is in.
    pub pool: &'a [ReplyOption],
    pub classes: &'a [ClassPlan],
    /// The classes the client is in; among them, the first in the file wins a conflict.
    pub members: ClassSet,
    pub reservation: &'a [ReplyOption],
}

impl<'a> Layers<'a> {
    /// The layers of a reply to `req` leasing `ip` (or nothing, for INFORM).
    pub fn new(
        plan: &'a Plan,
        s: &'a SubnetPlan,
        req: &Request,
        ip: Option<Ipv4Addr>,
        members: ClassSet,
    ) -> Layers<'a> {
        Layers {
            subnet: &s.options,
            pool: ip
                .and_then(|ip| s.pool_of(ip))
                .map_or(&[][..], |p| &p.options[..]),
            classes: &plan.classes,
            members,
            reservation: s.reservation(req).map_or(&[][..], |r| &r.options[..]),
        }
    }

    fn member_classes(&self) -> impl Iterator<Item = &'a ClassPlan> + 'a {
        let classes = self.classes;
        self.members.iter().filter_map(move |i| classes.get(i))
    }

    /// The value of `code` from the most specific layer that sets it.
    fn find(&self, code: u8) -> Option<&'a ReplyOption> {
        let f = |l: &'a [ReplyOption]| l.iter().find(|o| o.0 == code);
        f(self.reservation)
            .or_else(|| self.member_classes().find_map(|c| f(&c.options)))
            .or_else(|| f(self.pool))
            .or_else(|| f(self.subnet))
    }

    /// Every code any layer sets, once: the subnet's order, then each more specific layer's
    /// new codes.
    fn codes(&self) -> impl Iterator<Item = u8> + '_ {
        let classes = self.member_classes().flat_map(|c| c.options.iter());
        self.subnet
            .iter()
            .chain(self.pool)
            .chain(classes)
            .chain(self.reservation)
            .map(|o| o.0)
    }

    /// siaddr and boot file: from the first member class that sets each.
    fn boot(&self) -> (Option<Ipv4Addr>, Option<&'a OptVal>) {
        let mut next = None;
        let mut file = None;
        for c in self.member_classes() {
            next = next.or(c.next_server);
            file = file.or(c.boot_file.as_ref());
        }
        (next, file)
    }
}

/// Client-id (RFC 6842) and relay agent information (RFC 3046) go back as received.
pub fn echo_options(req: &Request, options: &mut Vec<ReplyOption>) {
    if let Some(c) = &req.client_id {
        options.push((OPT_CLIENT_ID, c.as_slice().into(), true));
    }
    if let Some(r) = &req.relay_info {
        options.push((OPT_RELAY_INFO, r.as_slice().into(), true));
    }
}

fn has(options: &[ReplyOption], code: u8) -> bool {
    options.iter().any(|(x, _, _)| *x == code)
}

/// An OFFER or ACK (or INFORM's ACK when `with_lease` is false) with the layers' options,
/// the ones the client asked for in its order.
pub fn build_reply(
    s: &SubnetPlan,
    layers: &Layers<'_>,
    sid: Ipv4Addr,
    req: &Request,
    msg_type: MessageType,
    yiaddr: Ipv4Addr,
    with_lease: bool,
) -> Reply {
    let mut options: Vec<ReplyOption> = Vec::with_capacity(16);
    options.push((OPT_SERVER_ID, sid.octets()[..].into(), true));
    if with_lease {
        options.extend(s.timer_options.iter().cloned());
    }
    // Options the client asked for come first and in its order (RFC 2132 §9.8); the rest of
    // the always-sent ones follow; optional ones only when asked (or when no list was sent).
    match &req.prl {
        Some(prl) => {
            for code in prl {
                if let Some((c, v, always)) = layers.find(*code) {
                    if !has(&options, *c) {
                        options.push((*c, v.clone(), *always));
                    }
                }
            }
            for (c, _, always) in layers.subnet {
                if *always && !has(&options, *c) {
                    if let Some((_, v, _)) = layers.find(*c) {
                        options.push((*c, v.clone(), true));
                    }
                }
            }
        }
        None => {
            for code in layers.codes() {
                if !has(&options, code) {
                    if let Some(o) = layers.find(code) {
                        options.push(o.clone());
                    }
                }
            }
        }
    }
    // PXE: the boot file goes in the `file` field, and in option 67 too when the client
    // asks for it or the name does not fit the field.
    let (next_server, boot_file) = layers.boot();
    let mut file = None;
    if let Some(f) = boot_file {
        let asked = req
            .prl
            .as_deref()
            .is_some_and(|p| p.contains(&OPT_BOOT_FILE));
        if (asked || f.len() >= FILE_LEN) && !has(&options, OPT_BOOT_FILE) {
            options.push((OPT_BOOT_FILE, f.clone(), true));
        }
        if f.len() < FILE_LEN {
            file = Some(f.clone());
        }
    }
    echo_options(req, &mut options);
    let relayed = !req.giaddr.is_unspecified();
    let dest = if relayed {
        Dest::Relay(req.giaddr)
    } else if !req.ciaddr.is_unspecified() {
        Dest::Unicast(req.ciaddr)
    } else if !req.broadcast_flag && req.htype == 1 && req.hlen == 6 && !yiaddr.is_unspecified() {
        // Ethernet client without an address that can take a unicast (RFC 2131 §4.1).
        Dest::Hardware {
            ip: yiaddr,
            mac: req.mac(),
        }
    } else {
        Dest::Broadcast
    };
    Reply {
        msg_type,
        xid: req.xid,
        broadcast_flag: req.broadcast_flag,
        htype: req.htype,
        hlen: req.hlen,
        ciaddr: if msg_type == MessageType::Ack {
            req.ciaddr
        } else {
            Ipv4Addr::UNSPECIFIED
        },
        yiaddr,
        siaddr: next_server.unwrap_or(Ipv4Addr::UNSPECIFIED),
        giaddr: req.giaddr,
        chaddr: req.chaddr,
        file,
        options,
        dest,
        server_id: sid,
        max_payload: max_payload(req.max_size),
    }
}

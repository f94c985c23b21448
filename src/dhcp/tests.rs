//! The handler, driven with decoded requests and no sockets: every message type and every
//! NAK and ignore case of RFC 2131 §4.3.

use std::net::Ipv4Addr;
use std::path::Path;

use dhcproto::v4::MessageType;

use super::handler::{handle, DhcpState, Ingress, Outcome};
use super::packet::*;
use super::plan::Plan;
use crate::config;
use crate::lease::{LeaseIndex, LeaseState};

const CFG: &str = r#"
[server]
server_id = "10.0.0.1"
offer_hold = "30s"
decline_hold = "1h"

[defaults]
lease_time = "1h"
dns_servers = ["10.0.0.3"]
domain_name = "lab.example"

[[hooks.vip]]
name = "v"
address = "10.0.0.3/24"
interface = "eth0"

[[subnet]]
network = "10.0.0.0/24"
interface = "eth0"
routers = ["10.0.0.254"]
[[subnet.pool]]
range_start = "10.0.0.100"
range_end = "10.0.0.103"
[[subnet.reservation]]
mac = "02:00:00:00:00:aa"
ip = "10.0.0.50"
hostname = "printer"
[[subnet.reservation]]
client_id = "ff:00:11"
ip = "10.0.0.51"
[[subnet.option]]
code = 252
type = "string"
value = "http://wpad/wpad.dat"

[[subnet]]
network = "10.9.0.0/24"
routers = ["10.9.0.1"]
[[subnet.pool]]
range_start = "10.9.0.10"
range_end = "10.9.0.20"
"#;

const T0: u64 = 1_700_000_000_000;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

struct Lab {
    st: DhcpState,
    ix: LeaseIndex,
    now: u64,
}

fn lab() -> Lab {
    let cfg = config::parse(CFG, Path::new("test.toml")).expect("config");
    let ix = LeaseIndex::new();
    Lab {
        st: DhcpState::new(Plan::from_config(&cfg), &ix, T0),
        ix,
        now: T0,
    }
}

fn eth0() -> Ingress {
    Ingress {
        ifname: Some("eth0".into()),
        if_addrs: vec!["10.0.0.1/24".parse().expect("net")].into(),
        dst: Ipv4Addr::BROADCAST,
    }
}

fn unicast(dst: Ipv4Addr) -> Ingress {
    Ingress { dst, ..eth0() }
}

fn mac(n: u8) -> [u8; 6] {
    [2, 0, 0, 0, 0, n]
}

fn req(t: MessageType, m: u8) -> Request {
    let mut chaddr = [0u8; 16];
    chaddr[..6].copy_from_slice(&mac(m));
    Request {
        msg_type: t,
        xid: 42,
        secs: 0,
        broadcast_flag: false,
        hops: 0,
        htype: 1,
        hlen: 6,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        giaddr: Ipv4Addr::UNSPECIFIED,
        chaddr,
        requested_ip: None,
        server_id: None,
        client_id: None,
        hostname: None,
        prl: None,
        max_size: None,
        relay_info: None,
        link_selection: None,
        vendor_class: None,
        user_class: None,
        arch: None,
    }
}

impl Lab {
    fn run(&mut self, r: &Request, ing: &Ingress) -> Outcome {
        handle(&mut self.st, &mut self.ix, r, ing, self.now)
    }
    fn offer(&mut self, m: u8) -> Ipv4Addr {
        let out = self.run(&req(MessageType::Discover, m), &eth0());
        let r = out.reply.expect("an offer");
        assert_eq!(r.msg_type, MessageType::Offer);
        r.yiaddr
    }
    fn select(&mut self, m: u8, ip: Ipv4Addr) -> Outcome {
        let mut r = req(MessageType::Request, m);
        r.server_id = Some(VIP);
        r.requested_ip = Some(ip);
        self.run(&r, &eth0())
    }
    fn bind(&mut self, m: u8) -> Ipv4Addr {
        let ip = self.offer(m);
        let out = self.select(m, ip);
        assert_eq!(kind(&out), Some(MessageType::Ack));
        ip
    }
}

fn kind(o: &Outcome) -> Option<MessageType> {
    o.reply.as_ref().map(|r| r.msg_type)
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

#[test]
fn discover_gets_an_offer_with_the_subnet_options_and_the_vip_as_server_id() {
    let mut l = lab();
    let out = l.run(&req(MessageType::Discover, 1), &eth0());
    let r = out.reply.expect("offer");
    assert_eq!(r.msg_type, MessageType::Offer);
    assert!((100..=103).contains(&r.yiaddr.octets()[3]), "{}", r.yiaddr);
    assert_eq!(r.option(OPT_SERVER_ID), Some(&VIP.octets()[..]));
    assert_eq!(r.option(OPT_ROUTER), Some(&[10, 0, 0, 254][..]));
    assert_eq!(r.option(OPT_DNS), Some(&VIP.octets()[..]));
    assert_eq!(r.option(OPT_DOMAIN), Some(&b"lab.example"[..]));
    assert_eq!(r.option(OPT_SUBNET_MASK), Some(&[255, 255, 255, 0][..]));
    assert_eq!(r.option(OPT_LEASE_TIME), Some(&3600u32.to_be_bytes()[..]));
    assert_eq!(r.option(OPT_T1), Some(&1800u32.to_be_bytes()[..]));
    assert_eq!(r.option(OPT_T2), Some(&3150u32.to_be_bytes()[..]));
    // No broadcast bit, no address yet: unicast to the offered address at the client's MAC.
    assert_eq!(
        r.dest,
        Dest::Hardware {
            ip: r.yiaddr,
            mac: mac(1)
        }
    );
    assert!(
        out.commit.is_empty(),
        "an offer must not be written as a lease"
    );
    assert!(l.ix.is_empty());
    let kinds: Vec<&str> = out.events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, vec!["lease.discover", "lease.offer"]);
}

#[test]
fn a_repeated_discover_gets_the_same_offer_and_others_get_different_ones() {
    let mut l = lab();
    let a = l.offer(1);
    assert_eq!(l.offer(1), a);
    let b = l.offer(2);
    assert_ne!(a, b);
}

#[test]
fn the_requested_address_is_offered_when_free() {
    let mut l = lab();
    let mut r = req(MessageType::Discover, 1);
    r.requested_ip = Some(ip(102));
    assert_eq!(l.run(&r, &eth0()).reply.expect("offer").yiaddr, ip(102));
    // Taken by an offer to client 1: client 2 asking for it gets another one.
    let mut r2 = req(MessageType::Discover, 2);
    r2.requested_ip = Some(ip(102));
    assert_ne!(l.run(&r2, &eth0()).reply.expect("offer").yiaddr, ip(102));
}

#[test]
fn selecting_request_for_our_offer_is_acked_and_committed() {
    let mut l = lab();
    let a = l.offer(1);
    let out = l.select(1, a);
    let r = out.reply.as_ref().expect("ack");
    assert_eq!(r.msg_type, MessageType::Ack);
    assert_eq!(r.yiaddr, a);
    assert_eq!(out.commit.len(), 1);
    let lease = &out.commit[0];
    assert_eq!(
        (lease.ip, lease.mac, lease.state),
        (a, mac(1), LeaseState::Active)
    );
    assert_eq!(lease.expiry - lease.start, 3600);
    assert_eq!(l.ix.get(a).map(|x| x.state), Some(LeaseState::Active));
    assert_eq!(out.events[0].0, "lease.ack");
}

#[test]
fn replies_to_an_unconfigured_client_are_broadcast_only_when_it_cannot_take_a_unicast() {
    let mut l = lab();
    // RFC 2131 §4.1: the broadcast bit asks for a broadcast.
    let mut d = req(MessageType::Discover, 1);
    d.broadcast_flag = true;
    let out = l.run(&d, &eth0());
    assert_eq!(out.reply.map(|r| r.dest), Some(Dest::Broadcast));
    // Not Ethernet: no MAC to unicast to.
    let mut d = req(MessageType::Discover, 2);
    d.htype = 6;
    let out = l.run(&d, &eth0());
    assert_eq!(out.reply.map(|r| r.dest), Some(Dest::Broadcast));
    // The ACK of a selecting client without the bit: unicast like its OFFER.
    let a = l.offer(3);
    let out = l.select(3, a);
    assert_eq!(
        out.reply.map(|r| r.dest),
        Some(Dest::Hardware { ip: a, mac: mac(3) })
    );
}

#[test]
fn selecting_another_server_is_ignored_and_frees_our_offer() {
    let mut l = lab();
    let a = l.offer(1);
    let mut r = req(MessageType::Request, 1);
    r.server_id = Some(Ipv4Addr::new(10, 0, 0, 77));
    r.requested_ip = Some(a);
    let out = l.run(&r, &eth0());
    assert!(out.reply.is_none());
    assert_eq!(out.ignored, Some("other_server_selected"));
    // The address is free for the next client's request now.
    let mut r2 = req(MessageType::Discover, 2);
    r2.requested_ip = Some(a);
    assert_eq!(l.run(&r2, &eth0()).reply.expect("offer").yiaddr, a);
}

#[test]
fn a_request_for_another_clients_address_is_naked_never_acked() {
    let mut l = lab();
    let a = l.bind(1);
    let out = l.select(2, a);
    assert_eq!(kind(&out), Some(MessageType::Nak));
    assert!(out.commit.is_empty());
    assert_eq!(l.ix.get(a).map(|x| x.mac), Some(mac(1)));
    let r = out.reply.expect("nak");
    assert_eq!(r.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(r.dest, Dest::Broadcast);
    assert_eq!(out.events[0].0, "lease.nak");
    // Offered (not yet bound) to client 1: also refused to client 2.
    let b = l.offer(3);
    assert_eq!(kind(&l.select(4, b)), Some(MessageType::Nak));
}

#[test]
fn selecting_an_address_outside_the_network_or_pool_is_naked() {
    let mut l = lab();
    assert_eq!(
        kind(&l.select(1, Ipv4Addr::new(192, 168, 1, 5))),
        Some(MessageType::Nak)
    );
    assert_eq!(kind(&l.select(1, ip(7))), Some(MessageType::Nak));
    assert_eq!(kind(&l.select(1, ip(255))), Some(MessageType::Nak));
}

#[test]
fn init_reboot_acks_own_lease_naks_others_and_ignores_unknown_clients() {
    let mut l = lab();
    let a = l.bind(1);
    let mut r = req(MessageType::Request, 1);
    r.requested_ip = Some(a);
    assert_eq!(kind(&l.run(&r, &eth0())), Some(MessageType::Ack));
    // Known client, wrong address on this network.
    let other = if a == ip(100) { ip(101) } else { ip(100) };
    r.requested_ip = Some(other);
    assert_eq!(kind(&l.run(&r, &eth0())), Some(MessageType::Nak));
    // Moved to another network.
    r.requested_ip = Some(Ipv4Addr::new(172, 16, 0, 9));
    assert_eq!(kind(&l.run(&r, &eth0())), Some(MessageType::Nak));
    // Unknown client: silence.
    let mut u = req(MessageType::Request, 9);
    u.requested_ip = Some(ip(102));
    let out = l.run(&u, &eth0());
    assert!(out.reply.is_none());
    assert_eq!(out.ignored, Some("init_reboot_unknown_client"));
}

#[test]
fn renewing_extends_own_lease_by_unicast_and_naks_a_foreign_ciaddr() {
    let mut l = lab();
    let a = l.bind(1);
    l.now += 1_800_000;
    let mut r = req(MessageType::Request, 1);
    r.ciaddr = a;
    let out = l.run(&r, &unicast(VIP));
    let reply = out.reply.as_ref().expect("ack");
    assert_eq!(reply.msg_type, MessageType::Ack);
    assert_eq!(reply.dest, Dest::Unicast(a));
    assert_eq!(reply.ciaddr, a);
    assert_eq!(out.events[0].0, "lease.renew");
    assert_eq!(out.commit[0].expiry, l.now / 1000 + 3600);
    let mut thief = req(MessageType::Request, 2);
    thief.ciaddr = a;
    assert_eq!(kind(&l.run(&thief, &unicast(VIP))), Some(MessageType::Nak));
}

#[test]
fn rebinding_by_broadcast_is_acked() {
    let mut l = lab();
    let a = l.bind(1);
    let mut r = req(MessageType::Request, 1);
    r.ciaddr = a;
    let out = l.run(&r, &eth0());
    assert_eq!(kind(&out), Some(MessageType::Ack));
    assert_eq!(out.commit[0].ip, a);
}

#[test]
fn a_request_without_any_address_is_ignored() {
    let mut l = lab();
    let out = l.run(&req(MessageType::Request, 1), &eth0());
    assert!(out.reply.is_none());
    assert_eq!(out.ignored, Some("request_without_address"));
    let mut sel = req(MessageType::Request, 1);
    sel.server_id = Some(VIP);
    assert_eq!(
        l.run(&sel, &eth0()).ignored,
        Some("selecting_without_requested_ip")
    );
}

#[test]
fn a_declined_address_is_held_and_not_offered_again() {
    let mut l = lab();
    let a = l.bind(1);
    let mut d = req(MessageType::Decline, 1);
    d.requested_ip = Some(a);
    d.server_id = Some(VIP);
    let out = l.run(&d, &eth0());
    assert!(out.reply.is_none());
    assert_eq!(out.commit[0].state, LeaseState::Declined);
    assert_eq!(out.events[0].0, "lease.decline");
    for m in 2..=5 {
        let o = l.run(&req(MessageType::Discover, m), &eth0());
        if let Some(r) = o.reply {
            assert_ne!(r.yiaddr, a, "declined address offered to client {m}");
        }
    }
    // A decline for someone else's address does nothing.
    let b =
        l.ix.iter()
            .find(|x| x.state == LeaseState::Active)
            .map(|x| x.ip);
    assert!(b.is_none(), "only offers were made");
    let mut bogus = req(MessageType::Decline, 7);
    bogus.requested_ip = Some(a);
    assert_eq!(
        l.run(&bogus, &eth0()).ignored,
        Some("decline_of_unknown_lease")
    );
}

#[test]
fn the_decline_hold_ends_with_the_expiry_sweep() {
    let mut l = lab();
    let a = l.bind(1);
    let mut d = req(MessageType::Decline, 1);
    d.requested_ip = Some(a);
    l.run(&d, &eth0());
    l.now += 3_601_000;
    let expired = l.ix.expire_due(l.now / 1000, l.now);
    assert_eq!(expired.len(), 1);
    assert!(
        !expired[0].1,
        "a declined hold is not announced as a lease expiry"
    );
    l.st.rebuild(&l.ix, l.now);
    let mut r = req(MessageType::Discover, 2);
    r.requested_ip = Some(a);
    assert_eq!(l.run(&r, &eth0()).reply.expect("offer").yiaddr, a);
}

#[test]
fn release_frees_the_address_and_only_the_owner_can_release() {
    let mut l = lab();
    let a = l.bind(1);
    let mut bogus = req(MessageType::Release, 2);
    bogus.ciaddr = a;
    assert_eq!(
        l.run(&bogus, &unicast(VIP)).ignored,
        Some("release_of_unknown_lease")
    );
    assert_eq!(l.ix.get(a).map(|x| x.state), Some(LeaseState::Active));
    let mut r = req(MessageType::Release, 1);
    r.ciaddr = a;
    let out = l.run(&r, &unicast(VIP));
    assert!(out.reply.is_none());
    assert_eq!(out.commit[0].state, LeaseState::Released);
    assert_eq!(out.events[0].0, "lease.release");
    let mut d = req(MessageType::Discover, 2);
    d.requested_ip = Some(a);
    assert_eq!(l.run(&d, &eth0()).reply.expect("offer").yiaddr, a);
}

#[test]
fn a_returning_client_gets_its_previous_address_back() {
    let mut l = lab();
    let a = l.bind(1);
    let mut r = req(MessageType::Release, 1);
    r.ciaddr = a;
    l.run(&r, &unicast(VIP));
    l.bind(2);
    assert_eq!(l.offer(1), a);
}

#[test]
fn inform_gets_options_without_an_address_or_lease_time() {
    let mut l = lab();
    let mut r = req(MessageType::Inform, 1);
    r.ciaddr = ip(20);
    let out = l.run(&r, &unicast(VIP));
    let reply = out.reply.expect("ack");
    assert_eq!(reply.msg_type, MessageType::Ack);
    assert_eq!(reply.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(reply.dest, Dest::Unicast(ip(20)));
    assert!(reply.option(OPT_LEASE_TIME).is_none());
    assert!(reply.option(OPT_DNS).is_some());
    assert!(out.commit.is_empty());
}

#[test]
fn reservations_by_mac_and_client_id_win_and_are_not_given_to_others() {
    let mut l = lab();
    let out = l.run(&req(MessageType::Discover, 0xaa), &eth0());
    assert_eq!(out.reply.expect("offer").yiaddr, ip(50));
    let out = l.select(0xaa, ip(50));
    let r = out.reply.expect("ack");
    assert_eq!(r.option(OPT_HOSTNAME), Some(&b"printer"[..]));
    assert_eq!(out.commit[0].hostname.as_deref(), Some("printer"));
    // By client-id (which wins over the MAC's pool address).
    let mut c = req(MessageType::Discover, 5);
    c.client_id = Some(vec![0xff, 0, 0x11]);
    assert_eq!(l.run(&c, &eth0()).reply.expect("offer").yiaddr, ip(51));
    // Another client cannot take a reserved address, and the reserved client cannot take
    // another one.
    assert_eq!(kind(&l.select(6, ip(51))), Some(MessageType::Nak));
    assert_eq!(kind(&l.select(0xaa, ip(101))), Some(MessageType::Nak));
}

#[test]
fn relayed_requests_use_giaddr_and_are_answered_to_the_relay_with_option_82() {
    let mut l = lab();
    let mut r = req(MessageType::Discover, 1);
    r.giaddr = Ipv4Addr::new(10, 9, 0, 1);
    r.relay_info = Some(vec![1, 3, b'p', b'1', b'7', 2, 2, b'r', b'x']);
    let out = l.run(&r, &unicast(Ipv4Addr::new(10, 0, 0, 1)));
    let reply = out.reply.expect("offer");
    assert_eq!(reply.dest, Dest::Relay(Ipv4Addr::new(10, 9, 0, 1)));
    assert!((10..=20).contains(&reply.yiaddr.octets()[3]));
    assert_eq!(reply.yiaddr.octets()[..3], [10, 9, 0]);
    assert_eq!(reply.option(OPT_RELAY_INFO), r.relay_info.as_deref());
    assert_eq!(reply.giaddr, r.giaddr);
    // No VIP in 10.9.0.0/24: the configured server_id.
    assert_eq!(reply.option(OPT_SERVER_ID), Some(&[10, 0, 0, 1][..]));
    let mut q = r.clone();
    q.msg_type = MessageType::Request;
    q.server_id = Some(Ipv4Addr::new(10, 0, 0, 1));
    q.requested_ip = Some(reply.yiaddr);
    let out = l.run(&q, &unicast(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(kind(&out), Some(MessageType::Ack));
    assert_eq!(
        out.commit[0].relay_info, r.relay_info,
        "option 82 kept on the lease"
    );
    assert_eq!(&*out.commit[0].subnet, "10.9.0.0/24");
}

#[test]
fn link_selection_overrides_giaddr() {
    let mut l = lab();
    let mut r = req(MessageType::Discover, 1);
    r.giaddr = Ipv4Addr::new(10, 0, 0, 254);
    r.link_selection = Some(Ipv4Addr::new(10, 9, 0, 0));
    let reply = l.run(&r, &unicast(ip(1))).reply.expect("offer");
    assert_eq!(reply.yiaddr.octets()[..3], [10, 9, 0]);
    assert_eq!(reply.dest, Dest::Relay(Ipv4Addr::new(10, 0, 0, 254)));
}

#[test]
fn a_nak_to_a_relayed_client_goes_to_the_relay_with_the_broadcast_bit() {
    let mut l = lab();
    let mut r = req(MessageType::Request, 1);
    r.giaddr = Ipv4Addr::new(10, 9, 0, 1);
    r.ciaddr = Ipv4Addr::new(10, 0, 0, 100);
    let out = l.run(&r, &unicast(ip(1)));
    let reply = out.reply.expect("nak");
    assert_eq!(reply.msg_type, MessageType::Nak);
    assert_eq!(reply.dest, Dest::Relay(Ipv4Addr::new(10, 9, 0, 1)));
    assert!(reply.broadcast_flag);
}

#[test]
fn requests_from_an_unserved_link_are_ignored() {
    let mut l = lab();
    let ing = Ingress {
        ifname: Some("eth7".into()),
        if_addrs: vec!["192.168.5.1/24".parse().expect("net")].into(),
        dst: Ipv4Addr::BROADCAST,
    };
    let out = l.run(&req(MessageType::Discover, 1), &ing);
    assert!(out.reply.is_none());
    assert_eq!(out.ignored, Some("no_subnet"));
}

#[test]
fn an_exhausted_pool_offers_nothing_until_an_address_is_released() {
    let mut l = lab();
    let bound: Vec<Ipv4Addr> = (1..=4).map(|m| l.bind(m)).collect();
    let out = l.run(&req(MessageType::Discover, 9), &eth0());
    assert!(out.reply.is_none());
    assert_eq!(out.ignored, Some("no_free_address"));
    let mut r = req(MessageType::Release, 2);
    r.ciaddr = bound[1];
    l.run(&r, &unicast(VIP));
    assert_eq!(l.offer(9), bound[1]);
}

#[test]
fn expired_offers_and_leases_return_to_the_pool() {
    let no_offer_for_9 = |l: &mut Lab| {
        l.run(&req(MessageType::Discover, 9), &eth0())
            .reply
            .is_none()
    };
    // Four OFFERs hold the four pool addresses for offer_hold (30 s), not a millisecond more.
    let mut l = lab();
    let offered: Vec<Ipv4Addr> = (1..=4).map(|m| l.offer(m)).collect();
    assert!(no_offer_for_9(&mut l));
    l.now += 29_999;
    assert!(no_offer_for_9(&mut l), "offers held until the hold ends");
    l.now += 1;
    assert!(offered.contains(&l.offer(9)));

    // Four ACKed leases of lease_time (1 h): the pool is theirs until the expiry second,
    // then free again, before and after the expiry sweep has turned them into Expired.
    let mut l = lab();
    let bound: Vec<Ipv4Addr> = (1..=4).map(|m| l.bind(m)).collect();
    l.now += 3_599_999;
    assert!(no_offer_for_9(&mut l), "leases live until their expiry");
    assert!(l.ix.expire_due(l.now / 1000, l.now).is_empty());
    l.now += 1;
    let again = l.offer(9);
    assert!(bound.contains(&again), "{again} is not one of {bound:?}");
    let swept = l.ix.expire_due(l.now / 1000, l.now);
    assert_eq!(swept.len(), 4);
    assert!(swept
        .iter()
        .all(|(x, was_active)| *was_active && x.state == LeaseState::Expired));
    l.st.rebuild(&l.ix, l.now);
    let ip = l.offer(10);
    assert!(bound.contains(&ip) && ip != again, "{ip}");
}

#[test]
fn options_follow_the_parameter_request_list_and_include_custom_options() {
    let mut l = lab();
    let mut r = req(MessageType::Discover, 1);
    r.prl = Some(vec![252, 15, 3, 1]);
    r.client_id = Some(vec![1, 2, 0, 0, 0, 0, 1]);
    let reply = l.run(&r, &eth0()).reply.expect("offer");
    let codes: Vec<u8> = reply.options.iter().map(|(c, _, _)| *c).collect();
    let pos = |c| codes.iter().position(|x| *x == c).expect("present");
    assert!(
        pos(252) < pos(15) && pos(15) < pos(3) && pos(3) < pos(1),
        "{codes:?}"
    );
    assert_eq!(reply.option(252), Some(&b"http://wpad/wpad.dat"[..]));
    assert_eq!(
        reply.option(OPT_CLIENT_ID),
        r.client_id.as_deref(),
        "RFC 6842 echo"
    );
    // Not asked for: the optional broadcast address (28) stays out.
    assert!(reply.option(OPT_BROADCAST).is_none());
    // No list at all: everything.
    let all = l
        .run(&req(MessageType::Discover, 2), &eth0())
        .reply
        .expect("offer");
    assert!(all.option(OPT_BROADCAST).is_some());
    assert!(all.option(252).is_some());
}

#[test]
fn a_client_keeps_one_active_address_per_subnet() {
    let mut l = lab();
    let a = l.bind(1);
    let other = if a == ip(103) { ip(102) } else { ip(103) };
    // A free pool address requested in SELECTING: allowed, and the old binding is released.
    let out = l.select(1, other);
    assert_eq!(kind(&out), Some(MessageType::Ack));
    assert_eq!(l.ix.get(a).map(|x| x.state), Some(LeaseState::Released));
    assert_eq!(out.commit.len(), 2);
}

#[test]
fn non_ethernet_hardware_lengths_are_ignored() {
    let mut l = lab();
    let mut r = req(MessageType::Discover, 1);
    r.hlen = 3;
    assert_eq!(l.run(&r, &eth0()).ignored, Some("bad_hardware_address"));
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// The lab subnet plus optional options worth 3 × 200 bytes: a reply with everything in
    /// it is bigger than the 548-byte payload every client accepts, so the size limit has
    /// something to cut.
    fn big_lab() -> Lab {
        let mut cfg = CFG.to_string();
        let at = cfg
            .find("\n[[subnet]]\nnetwork = \"10.9")
            .expect("second subnet");
        let mut extra = String::new();
        for code in [224, 225, 226] {
            extra.push_str(&format!(
                "[[subnet.option]]\ncode = {code}\ntype = \"string\"\nvalue = \"{}\"\n",
                "x".repeat(200)
            ));
        }
        cfg.insert_str(at + 1, &extra);
        let cfg = config::parse(&cfg, Path::new("test.toml")).expect("config");
        let ix = LeaseIndex::new();
        Lab {
            st: DhcpState::new(Plan::from_config(&cfg), &ix, T0),
            ix,
            now: T0,
        }
    }

    /// What RFC 2131 asks of a reply's size: at most the client's limit (option 57, never
    /// below 576), unless the options that cannot be left out are alone bigger; and nothing
    /// left out when everything fits.
    fn check_size(reply: &Reply) -> Result<(), TestCaseError> {
        let bytes = reply.encode();
        let mandatory = HEADER_LEN
            + 4
            + 3
            + reply
                .options
                .iter()
                .filter(|o| o.2)
                .map(|(_, v, _)| v.len() + 2 * v.len().div_ceil(255).max(1))
                .sum::<usize>()
            + 1;
        prop_assert!(bytes.len() >= 300);
        prop_assert!(
            bytes.len() <= reply.max_payload.max(mandatory),
            "{} bytes for a {}-byte limit ({mandatory} mandatory)",
            bytes.len(),
            reply.max_payload
        );
        let unlimited = Reply {
            max_payload: usize::MAX,
            ..reply.clone()
        }
        .encode();
        if unlimited.len() <= reply.max_payload {
            prop_assert_eq!(&bytes, &unlimited, "an option was dropped though all fit");
        }
        Ok(())
    }

    #[test]
    fn a_full_reply_would_not_fit_the_minimum_size() {
        // The premise of `replies_fit_the_clients_size_limit`: without a limit the OFFER is
        // too big for a client that sent no option 57, so the limit is what keeps it small.
        let mut l = big_lab();
        let offer = l
            .run(&req(MessageType::Discover, 1), &eth0())
            .reply
            .expect("offer");
        let unlimited = Reply {
            max_payload: usize::MAX,
            ..offer.clone()
        }
        .encode();
        assert!(unlimited.len() > 548, "{} bytes", unlimited.len());
        assert!(
            offer.encode().len() <= 548,
            "{} bytes",
            offer.encode().len()
        );
    }

    proptest! {
        #![proptest_config(crate::proptest_seed::config(2000))]

        /// Random bytes, and random mutations of a valid request, through the decoder and
        /// the handler: never a panic, a decoded request always gets a verdict, and a reply
        /// always respects the client's size limit.
        #[test]
        fn decoder_and_handler_never_panic(
            noise in proptest::collection::vec(any::<u8>(), 0..700),
            flips in proptest::collection::vec((0usize..400, any::<u8>()), 0..12),
            t in 1u8..9,
        ) {
            let mut l = big_lab();
            let _ = parse(&noise);
            let mut b = tests::raw_request(t, [2, 0, 0, 0, 0, 1], &[
                (OPT_REQUESTED_IP, vec![10, 0, 0, 101]),
                (OPT_SERVER_ID, vec![10, 0, 0, 3]),
                (OPT_CLIENT_ID, vec![1, 2, 3]),
                (OPT_RELAY_INFO, vec![1, 1, 1, 5, 4, 10, 9, 0, 0]),
            ]);
            for (i, v) in flips {
                if i < b.len() { b[i] = v; }
            }
            for input in [&noise, &b] {
                if let Ok(r) = parse(input) {
                    let out = l.run(&r, &eth0());
                    prop_assert!(out.reply.is_some() || out.ignored.is_some() || !out.commit.is_empty());
                    if let Some(reply) = out.reply {
                        check_size(&reply)?;
                    }
                }
            }
        }

        /// DISCOVERs and INFORMs with any option 57 (absent, below 576, or large), any
        /// parameter list over the configured options, and echoed client ids and relay
        /// information of any length: every reply fits the limit the client announced.
        #[test]
        fn replies_fit_the_clients_size_limit(
            inform in any::<bool>(),
            max_size in proptest::option::of(any::<u16>()),
            prl in proptest::option::of(proptest::sample::subsequence(
                vec![1u8, 3, 6, 15, 28, 51, 58, 59, 224, 225, 226, 252], 0..12)),
            client_id in proptest::option::of(proptest::collection::vec(any::<u8>(), 2..255)),
            relay in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..255)),
        ) {
            let mut l = big_lab();
            let mut opts = Vec::new();
            if let Some(m) = max_size {
                opts.push((OPT_MAX_SIZE, m.to_be_bytes().to_vec()));
            }
            if let Some(p) = prl {
                opts.push((OPT_PRL, p));
            }
            if let Some(c) = client_id {
                opts.push((OPT_CLIENT_ID, c));
            }
            if let Some(r) = relay {
                opts.push((OPT_RELAY_INFO, r));
            }
            let t = if inform { 8 } else { 1 };
            let r = parse(&tests::raw_request(t, [2, 0, 0, 0, 0, 1], &opts)).expect("valid");
            let reply = l.run(&r, &eth0()).reply;
            prop_assert!(reply.is_some(), "no reply");
            if let Some(reply) = reply {
                prop_assert_eq!(reply.max_payload, usize::from(max_size.unwrap_or(0).max(576)) - 28);
                check_size(&reply)?;
            }
        }
    }

    use super::super::packet::tests;
}

#[test]
fn a_binding_moved_to_another_address_releases_the_old_one_as_the_later_change() {
    let mut l = lab();
    let old = l.bind(1);
    // The old binding as the peer stamped it, its clock a minute ahead of ours: the release
    // must still be the later change, or the peer would keep the address bound in a merge.
    let mut ahead = l.ix.get(old).cloned().expect("bound");
    ahead.updated_ms = T0 + 60_000;
    l.ix.upsert(ahead);
    let new = if old == ip(101) { ip(102) } else { ip(101) };
    let out = l.select(1, new);
    assert_eq!(kind(&out), Some(MessageType::Ack));
    let released = out
        .commit
        .iter()
        .find(|c| c.ip == old)
        .expect("old released");
    assert_eq!(released.state, LeaseState::Released);
    assert!(released.updated_ms > T0 + 60_000, "{released:?}");
}

// ---------------------------------------------------------------------------------------------
// Conflict detection

const SQUATTER: [u8; 6] = [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff];

#[test]
fn a_new_address_is_offered_for_probing_but_a_lease_or_reservation_is_not() {
    let mut l = lab();
    let out = l.run(&req(MessageType::Discover, 1), &eth0());
    let offered = out.reply.expect("offer").yiaddr;
    assert_eq!(out.probe, Some(offered), "a pool address is probed first");
    let a = l.bind(2);
    let again = l.run(&req(MessageType::Discover, 2), &eth0());
    assert_eq!(again.reply.expect("offer").yiaddr, a);
    assert_eq!(again.probe, None, "the client's own lease is not probed");
    let mut printer = req(MessageType::Discover, 1);
    printer.chaddr[..6].copy_from_slice(&[2, 0, 0, 0, 0, 0xaa]);
    let out = l.run(&printer, &eth0());
    assert_eq!(out.reply.expect("offer").yiaddr, ip(50));
    assert_eq!(out.probe, None, "a reservation is not probed");
}

#[test]
fn an_address_in_conflict_is_not_offered_until_its_hold_ends() {
    let mut l = lab();
    let first = l.offer(1);
    let rec =
        l.st.record_conflict(&mut l.ix, first, SQUATTER, 3600, l.now)
            .expect("in a subnet");
    assert_eq!(rec.state, LeaseState::Conflict { seen: 1 });
    assert_eq!(rec.mac, SQUATTER);
    // The same client asks again: its offer was withdrawn, another address comes.
    let next = l.offer(1);
    assert_ne!(next, first);
    // A client asking for it by name does not get it either.
    let mut r = req(MessageType::Discover, 3);
    r.requested_ip = Some(first);
    assert_ne!(l.run(&r, &eth0()).reply.expect("offer").yiaddr, first);
    let mut sel = req(MessageType::Request, 3);
    sel.server_id = Some(VIP);
    sel.requested_ip = Some(first);
    assert_eq!(kind(&l.run(&sel, &eth0())), Some(MessageType::Nak));
    // Seen again: first-seen time kept, counted.
    l.now += 5_000;
    let again =
        l.st.record_conflict(&mut l.ix, first, SQUATTER, 3600, l.now)
            .expect("in a subnet");
    assert_eq!(again.state, LeaseState::Conflict { seen: 2 });
    assert_eq!(again.start, rec.start);
    assert!(again.updated_ms > rec.updated_ms);
    // The hold over, the address is free again.
    l.now += 3_601_000;
    let mut r = req(MessageType::Discover, 4);
    r.requested_ip = Some(first);
    assert_eq!(l.run(&r, &eth0()).reply.expect("offer").yiaddr, first);
}

#[test]
fn the_host_that_answered_may_still_get_its_address() {
    let mut l = lab();
    let first = l.offer(1);
    let mut squatter = req(MessageType::Discover, 9);
    squatter.chaddr[..6].copy_from_slice(&SQUATTER);
    l.st.record_conflict(&mut l.ix, first, SQUATTER, 3600, l.now);
    squatter.requested_ip = Some(first);
    let out = l.run(&squatter, &eth0());
    assert_eq!(out.reply.expect("offer").yiaddr, first);
    assert_eq!(out.probe, None, "it is the squatter's own");
}

#[test]
fn a_conflict_outside_every_subnet_is_not_recorded() {
    let mut l = lab();
    let outside = Ipv4Addr::new(192, 168, 7, 7);
    assert!(l
        .st
        .record_conflict(&mut l.ix, outside, SQUATTER, 3600, l.now)
        .is_none());
    assert!(l.ix.is_empty());
}

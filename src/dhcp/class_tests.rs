//! Client classes in the handler: pools kept for a class, the option layers, PXE fields and
//! option 82 reservations, driven with decoded requests and no sockets.

use std::net::Ipv4Addr;
use std::path::Path;

use dhcproto::v4::MessageType;

use super::handler::{handle, DhcpState, Ingress, Outcome};
use super::packet::{self, *};
use super::plan::Plan;
use crate::config;
use crate::lease::LeaseIndex;

const CFG: &str = r#"
[server]
server_id = "10.0.0.1"

[[client_class]]
name = "voip"
match = { vendor_class = "Polycom*" }
[[client_class.option]]
code = 66
type = "string"
value = "class-tftp"

[[client_class]]
name = "ipxe"
match = { user_class = "iPXE" }
boot_file = "http://boot.lab/boot.ipxe"

[[client_class]]
name = "bios"
match = { arch = [0] }
next_server = "10.0.0.5"
boot_file = "undionly.kpxe"

[[client_class]]
name = "uefi"
match = { arch = [7, 9] }
next_server = "10.0.0.5"
boot_file = "ipxe.efi"

[[subnet]]
network = "10.0.0.0/24"
interface = "eth0"
routers = ["10.0.0.254"]
[[subnet.option]]
code = 66
type = "string"
value = "subnet-tftp"
[[subnet.option]]
code = 121
type = "routes"
value = ["10.1.0.0/16 via 10.0.0.254"]
[[subnet.pool]]
range_start = "10.0.0.10"
range_end = "10.0.0.19"
classes = ["voip"]
[[subnet.pool.option]]
code = 66
type = "string"
value = "pool-tftp"
[[subnet.pool.option]]
code = 150
type = "ip"
value = "10.0.0.6"
[[subnet.pool]]
range_start = "10.0.0.100"
range_end = "10.0.0.110"
[[subnet.reservation]]
mac = "02:00:00:00:00:aa"
ip = "10.0.0.50"
[[subnet.reservation.option]]
code = 66
type = "string"
value = "res-tftp"
[[subnet.reservation]]
circuit_id = "sw1/port3"
ip = "10.0.0.60"
[[subnet.reservation]]
circuit_id = "hex:00:04"
remote_id = "sw2"
ip = "10.0.0.61"
"#;

const T0: u64 = 1_700_000_000_000;

fn state() -> (DhcpState, LeaseIndex) {
    let cfg = config::parse(CFG, Path::new("test.toml")).expect("config");
    let ix = LeaseIndex::new();
    (DhcpState::new(Plan::from_config(&cfg), &ix, T0), ix)
}

fn eth0() -> Ingress {
    Ingress {
        ifname: Some("eth0".into()),
        if_addrs: vec!["10.0.0.1/24".parse().expect("net")].into(),
        dst: Ipv4Addr::BROADCAST,
    }
}

fn discover(m: u8) -> Request {
    let mut b = packet::tests::raw_request(1, [2, 0, 0, 0, 0, m], &[]);
    b[10] = 0x80; // broadcast
    parse(&b).expect("valid")
}

fn run(st: &mut DhcpState, ix: &mut LeaseIndex, r: &Request) -> Outcome {
    handle(st, ix, r, &eth0(), T0)
}

fn opt(o: &Outcome, code: u8) -> Option<Vec<u8>> {
    o.reply.as_ref()?.option(code).map(<[u8]>::to_vec)
}

#[test]
fn a_class_member_gets_its_pool_and_the_class_option_over_the_pools() {
    let (mut st, mut ix) = state();
    let mut r = discover(1);
    r.vendor_class = Some(b"Polycom-VVX-400".to_vec());
    let out = run(&mut st, &mut ix, &r);
    let reply = out.reply.as_ref().expect("offer");
    assert!(
        (10..=19).contains(&reply.yiaddr.octets()[3]),
        "{}",
        reply.yiaddr
    );
    assert_eq!(opt(&out, 66), Some(b"class-tftp".to_vec()), "class > pool");
    assert_eq!(opt(&out, 150), Some(vec![10, 0, 0, 6]), "pool > subnet");
    assert_eq!(out.class, Some("voip"));

    let out = run(&mut st, &mut ix, &discover(2));
    let reply = out.reply.as_ref().expect("offer");
    assert!(
        (100..=110).contains(&reply.yiaddr.octets()[3]),
        "{}",
        reply.yiaddr
    );
    assert_eq!(opt(&out, 66), Some(b"subnet-tftp".to_vec()));
    assert_eq!(opt(&out, 150), None);
    assert_eq!(opt(&out, 121), Some(vec![16, 10, 1, 10, 0, 0, 254]));
    assert_eq!(out.class, None);
}

#[test]
fn a_client_outside_a_class_cannot_take_the_class_pool() {
    let (mut st, mut ix) = state();
    let mut r = discover(3);
    r.msg_type = MessageType::Request;
    r.server_id = Some(Ipv4Addr::new(10, 0, 0, 1));
    r.requested_ip = Some(Ipv4Addr::new(10, 0, 0, 12));
    let out = run(&mut st, &mut ix, &r);
    assert_eq!(out.reply.map(|r| r.msg_type), Some(MessageType::Nak));
    r.vendor_class = Some(b"Polycom".to_vec());
    let out = run(&mut st, &mut ix, &r);
    assert_eq!(out.reply.map(|r| r.msg_type), Some(MessageType::Ack));
    assert_eq!(out.commit[0].classes, vec!["voip".to_string()]);
}

#[test]
fn a_reservation_option_wins_over_the_class() {
    let (mut st, mut ix) = state();
    let mut r = discover(0xaa);
    r.vendor_class = Some(b"Polycom".to_vec());
    let out = run(&mut st, &mut ix, &r);
    assert_eq!(
        out.reply.as_ref().map(|r| r.yiaddr),
        Some(Ipv4Addr::new(10, 0, 0, 50))
    );
    assert_eq!(opt(&out, 66), Some(b"res-tftp".to_vec()));
}

#[test]
fn pxe_clients_get_the_boot_file_of_their_architecture() {
    let (mut st, mut ix) = state();
    for (m, arch, file) in [
        (4, 0u16, "undionly.kpxe"),
        (5, 7, "ipxe.efi"),
        (6, 9, "ipxe.efi"),
    ] {
        let mut r = discover(m);
        r.arch = Some(arch.to_be_bytes().to_vec());
        let out = run(&mut st, &mut ix, &r);
        let reply = out.reply.as_ref().expect("offer");
        assert_eq!(reply.siaddr, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(reply.file.as_deref(), Some(file.as_bytes()));
        assert_eq!(opt(&out, OPT_BOOT_FILE), None, "option 67 only when asked");
        // The encoded header carries it: siaddr at 20, file at 108.
        let bytes = reply.encode();
        assert_eq!(&bytes[20..24], &[10, 0, 0, 5]);
        assert_eq!(&bytes[108..108 + file.len()], file.as_bytes());
        assert_eq!(bytes[108 + file.len()], 0);
    }
    // iPXE also says arch 7; its class comes first in the file, so its boot file wins.
    let mut r = discover(7);
    r.arch = Some(vec![0, 7]);
    r.user_class = Some(b"iPXE".to_vec());
    r.prl = Some(vec![1, 3, OPT_BOOT_FILE]);
    let out = run(&mut st, &mut ix, &r);
    let reply = out.reply.as_ref().expect("offer");
    assert_eq!(
        reply.file.as_deref(),
        Some(&b"http://boot.lab/boot.ipxe"[..])
    );
    assert_eq!(
        reply.siaddr,
        Ipv4Addr::new(10, 0, 0, 5),
        "from the uefi class"
    );
    assert_eq!(
        opt(&out, OPT_BOOT_FILE),
        Some(b"http://boot.lab/boot.ipxe".to_vec())
    );
    assert_eq!(out.class, Some("ipxe"));
    // A client in no PXE class gets a bare header.
    let out = run(&mut st, &mut ix, &discover(8));
    let reply = out.reply.expect("offer");
    assert_eq!(reply.siaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(reply.file, None);
}

fn relayed(m: u8, relay: Vec<u8>, t: MessageType) -> Request {
    let mut r = discover(m);
    r.msg_type = t;
    r.giaddr = Ipv4Addr::new(10, 0, 0, 254);
    r.relay_info = Some(relay);
    r
}

fn circuit(id: &[u8]) -> Vec<u8> {
    let mut v = vec![1, id.len() as u8];
    v.extend_from_slice(id);
    v
}

#[test]
fn a_switch_port_keeps_its_address_whatever_device_is_plugged_in() {
    let (mut st, mut ix) = state();
    let port = circuit(b"sw1/port3");
    let out = run(
        &mut st,
        &mut ix,
        &relayed(20, port.clone(), MessageType::Discover),
    );
    let want = Ipv4Addr::new(10, 0, 0, 60);
    assert_eq!(out.reply.as_ref().map(|r| r.yiaddr), Some(want));
    let mut r = relayed(20, port.clone(), MessageType::Request);
    r.server_id = Some(Ipv4Addr::new(10, 0, 0, 1));
    r.requested_ip = Some(want);
    let out = run(&mut st, &mut ix, &r);
    assert_eq!(out.reply.map(|r| r.msg_type), Some(MessageType::Ack));
    // Another device on the same port takes the address over.
    let out = run(
        &mut st,
        &mut ix,
        &relayed(21, port.clone(), MessageType::Discover),
    );
    assert_eq!(out.reply.as_ref().map(|r| r.yiaddr), Some(want));
    // A device on another port does not.
    let out = run(
        &mut st,
        &mut ix,
        &relayed(22, circuit(b"sw1/port4"), MessageType::Discover),
    );
    assert_ne!(out.reply.as_ref().map(|r| r.yiaddr), Some(want));
}

#[test]
fn a_circuit_and_remote_id_reservation_needs_both() {
    let (mut st, mut ix) = state();
    let want = Ipv4Addr::new(10, 0, 0, 61);
    let mut both = circuit(&[0, 4]);
    both.extend_from_slice(&[2, 3, b's', b'w', b'2']);
    let out = run(&mut st, &mut ix, &relayed(30, both, MessageType::Discover));
    assert_eq!(out.reply.as_ref().map(|r| r.yiaddr), Some(want));
    let mut other_switch = circuit(&[0, 4]);
    other_switch.extend_from_slice(&[2, 3, b's', b'w', b'9']);
    let out = run(
        &mut st,
        &mut ix,
        &relayed(31, other_switch, MessageType::Discover),
    );
    assert_ne!(out.reply.as_ref().map(|r| r.yiaddr), Some(want));
}

#[test]
fn a_reload_brings_classes_in_from_the_next_packet() {
    let plain = CFG
        .split("[[subnet]]")
        .nth(1)
        .map(|s| format!("[server]\nserver_id = \"10.0.0.1\"\n[[subnet]]{s}"))
        .expect("subnet part")
        .replace("classes = [\"voip\"]\n", "");
    let cfg = config::parse(&plain, Path::new("plain.toml")).expect("config without classes");
    let mut ix = LeaseIndex::new();
    let mut st = DhcpState::new(Plan::from_config(&cfg), &ix, T0);
    let mut r = discover(40);
    r.arch = Some(vec![0, 7]);
    let out = run(&mut st, &mut ix, &r);
    assert_eq!(
        out.reply.as_ref().map(|r| r.siaddr),
        Some(Ipv4Addr::UNSPECIFIED)
    );
    let cfg = config::parse(CFG, Path::new("test.toml")).expect("config");
    st.replace_plan(Plan::from_config(&cfg), &ix, T0);
    let out = run(&mut st, &mut ix, &r);
    let reply = out.reply.expect("offer");
    assert_eq!(reply.siaddr, Ipv4Addr::new(10, 0, 0, 5));
    assert_eq!(reply.file.as_deref(), Some(&b"ipxe.efi"[..]));
}

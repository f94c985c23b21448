//! The DHCP server against real clients in private namespaces: ISC `dhclient` and busybox
//! `udhcpc` get leases with the configured router, DNS (the VIP) and domain; renewal keeps
//! the address; release frees it; a reservation is honoured; a relay (a test socket with
//! giaddr and option 82) is answered; bad datagrams are dropped and counted while the server
//! keeps answering; a client that leaves the broadcast bit clear gets its OFFER and ACK
//! unicast to its new address (RFC 2131 §4.1); a unicast request is answered from the address
//! it reached, the VIP or the node's own. The lab is `common::dhcp_lab`; durability (fsync
//! before ACK, `kill -9`) is `tests/durability.rs`.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::dhcp_lab::*;
use common::netns::{require_root, Netns};
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder};

#[test]
fn dhclient_gets_router_vip_dns_and_domain_renews_the_same_address_and_release_frees_it() {
    if !require_root("dhclient_gets_router_vip_dns_and_domain") {
        return;
    }
    // 10 s leases: dhclient renews (unicast, RENEWING) after 5 s.
    let lab = Lab::new("dhc", "10s");
    let cdir = lab.dir.path().join("dhclient");
    let dhclient = Dhclient::new(&cdir, None, ExitHook::None);
    let t0 = Instant::now();
    let mut client = dhclient
        .cmd(&lab, &["-d"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dhclient");
    let env = dhclient.wait_bound(&lab);
    let bound_in = t0.elapsed();
    let ip = env_var(&env, "new_ip_address").expect("address");
    let addr: Ipv4Addr = ip.parse().expect("ip");
    assert!(
        (100..=199).contains(&addr.octets()[3]) && addr.octets()[..3] == [10, 0, 0],
        "{ip}"
    );
    assert_eq!(env_var(&env, "new_routers").as_deref(), Some("10.0.0.1"));
    assert_eq!(
        env_var(&env, "new_domain_name_servers").as_deref(),
        Some("10.0.0.3")
    );
    assert_eq!(
        env_var(&env, "new_domain_name").as_deref(),
        Some("lab.test")
    );
    assert_eq!(
        env_var(&env, "new_dhcp_server_identifier").as_deref(),
        Some("10.0.0.3"),
        "server identifier must be the VIP"
    );
    eprintln!("dhclient bound {ip} in {bound_in:?}");
    let lease = lab.lease_json(&ip);
    assert_eq!(lease["state"], "active", "{lease}");
    let first_start = lease["start"].as_u64().expect("start");

    // Renewal: same address, the lease is extended.
    lab.wait_for("dhclient RENEW", Duration::from_secs(30), || {
        env_file(&cdir, "RENEW").is_some()
    });
    let renew = env_file(&cdir, "RENEW").expect("renew");
    assert_eq!(
        env_var(&renew, "new_ip_address").as_deref(),
        Some(ip.as_str())
    );
    let lease = lab.lease_json(&ip);
    assert!(
        lease["start"].as_u64().expect("start") > first_start,
        "{lease}"
    );

    // Release: dhclient -r sends DHCPRELEASE and stops the running client.
    let out = dhclient.cmd(&lab, &["-r"]).output().expect("dhclient -r");
    assert!(out.status.success(), "{out:?}");
    lab.wait_for("lease released", Duration::from_secs(10), || {
        lab.lease_json(&ip)["state"] == "released"
    });
    let _ = client.kill();
    let _ = client.wait();
    let metrics = lab.api("/metrics");
    assert!(
        metric(
            &metrics,
            "athena_dhcp_packets_sent_total{type=\"ack\",class=\"none\"}"
        ) >= 2.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "athena_dhcp_packets_received_total{type=\"release\"}"
        ) >= 1.0
    );
}

/// Records the DHCP replies (UDP 67 -> 68) that reach a namespace, with their IP destination,
/// from an AF_PACKET socket: what the client's own raw socket sees.
struct ReplyCapture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Ipv4Addr, Option<MessageType>)>>,
}

impl ReplyCapture {
    fn start(ns: &Netns) -> ReplyCapture {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let name = ns.name.clone();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            common::netns::enter_netns(&name).expect("enter the client namespace");
            let proto = (libc::ETH_P_IP as u16).to_be();
            // SAFETY: plain socket(2); the fd is owned below.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: fd is a fresh socket nobody else owns.
            let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            // SAFETY: SO_RCVTIMEO reads one timeval that outlives the call.
            let r = unsafe {
                libc::setsockopt(
                    raw,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    std::ptr::from_ref(&tv).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0, "SO_RCVTIMEO");
            let _ = ready_tx.send(());
            let mut out = Vec::new();
            let mut buf = vec![0u8; 2048];
            while !flag.load(std::sync::atomic::Ordering::Acquire) {
                // SAFETY: recv(2) into a buffer of buf.len() bytes.
                let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
                let Ok(n) = usize::try_from(n) else { continue };
                let p = &buf[..n];
                if n < 28 || p[9] != 17 {
                    continue;
                }
                let ihl = usize::from(p[0] & 15) * 4;
                if n < ihl + 8 || p[ihl..ihl + 4] != [0, 67, 0, 68] {
                    continue;
                }
                let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
                let kind = Message::decode(&mut Decoder::new(&p[ihl + 8..]))
                    .ok()
                    .as_ref()
                    .and_then(msg_type);
                out.push((dst, kind));
            }
            out
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("capture started");
        ReplyCapture { stop, thread }
    }

    fn stop(self) -> Vec<(Ipv4Addr, Option<MessageType>)> {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.thread.join().expect("capture thread")
    }
}

#[test]
fn udhcpc_gets_a_lease_and_a_reserved_mac_gets_its_reserved_address() {
    if !require_root("udhcpc_gets_a_lease_and_a_reserved_mac_gets_its_reserved_address") {
        return;
    }
    let lab = Lab::new("udh", "1h");
    let d1 = lab.dir.path().join("u1");
    std::fs::create_dir_all(&d1).expect("dir");
    let capture = ReplyCapture::start(&lab.cli);
    let env = udhcpc(&lab, &lab.cli, "c0", &d1, &[]);
    let replies = capture.stop();
    let ip: Ipv4Addr = env_var(&env, "ip").expect("ip").parse().expect("ip");
    assert!((100..=199).contains(&ip.octets()[3]), "{ip}");
    // udhcpc leaves the broadcast bit clear: RFC 2131 §4.1 unicasts OFFER and ACK to yiaddr
    // at its MAC (the server put the ARP entry in), never to 255.255.255.255.
    for kind in [MessageType::Offer, MessageType::Ack] {
        assert!(
            replies.contains(&(ip, Some(kind))),
            "no {kind:?} unicast to {ip}: {replies:?}\n{}",
            lab.log()
        );
    }
    assert!(
        !replies.iter().any(|(d, _)| d.is_broadcast()),
        "a reply was broadcast: {replies:?}"
    );
    assert_eq!(env_var(&env, "router").as_deref(), Some("10.0.0.1"));
    assert_eq!(
        env_var(&env, "dns").as_deref().map(str::trim),
        Some("10.0.0.3")
    );
    assert_eq!(env_var(&env, "domain").as_deref(), Some("lab.test"));
    assert_eq!(env_var(&env, "serverid").as_deref(), Some("10.0.0.3"));
    assert_eq!(lab.lease_json(&ip.to_string())["state"], "active");

    // The reserved MAC gets 10.0.0.50 and its host name.
    lab.cli
        .run(&["ip", "link", "set", "c0", "address", RESERVED_MAC]);
    lab.cli.run(&["ip", "addr", "flush", "dev", "c0"]);
    let d2 = lab.dir.path().join("u2");
    std::fs::create_dir_all(&d2).expect("dir");
    let env = udhcpc(&lab, &lab.cli, "c0", &d2, &[]);
    assert_eq!(env_var(&env, "ip").as_deref(), Some("10.0.0.50"));
    assert_eq!(env_var(&env, "hostname").as_deref(), Some("reserved-host"));
    let lease = lab.lease_json("10.0.0.50");
    assert_eq!(lease["mac"], RESERVED_MAC, "{lease}");
    let listed = lab.api(&format!("/api/v1/leases?mac={RESERVED_MAC}"));
    assert!(listed.contains("\"total\":1"), "{listed}");
}

#[test]
fn a_relay_is_answered_at_giaddr_and_bad_datagrams_are_counted_while_service_goes_on() {
    if !require_root("a_relay_is_answered_at_giaddr") {
        return;
    }
    let lab = Lab::new("rly", "1h");
    let s = lab.relay_socket();
    let mac = [2, 0, 0, 0, 0x77, 1];

    // Garbage first; the server must drop each kind and keep serving.
    let good = request(1, mac, 1, GIADDR, &[]);
    let mut wrong_op = good.clone();
    wrong_op[0] = 2;
    let mut bad_cookie = good.clone();
    bad_cookie[236] = 0;
    let mut overrun = good[..good.len() - 1].to_vec();
    overrun.extend_from_slice(&[12, 200, b'x']);
    let empty_cid = request(1, mac, 1, GIADDR, &[(61, vec![])]);
    let huge = vec![1u8; 65_507];
    for bad in [
        &good[..120],
        &wrong_op,
        &bad_cookie,
        &overrun,
        &empty_cid,
        &huge,
    ] {
        s.send_to(bad, SERVER).expect("send garbage");
    }

    let (offer, ack) = relay_exchange(&s, mac, 0xabc).unwrap_or_else(|| {
        panic!("no OFFER/ACK through the relay\n{}", lab.log());
    });
    assert_eq!(offer.giaddr(), GIADDR);
    assert_eq!(
        offer.yiaddr().octets()[..3],
        [10, 9, 0],
        "subnet chosen by giaddr"
    );
    match offer.opts().get(OptionCode::RelayAgentInformation) {
        Some(DhcpOption::RelayAgentInformation(_)) => {}
        other => panic!("option 82 not echoed: {other:?}"),
    }
    assert_eq!(ack.yiaddr(), offer.yiaddr());
    assert_eq!(
        server_id(&offer),
        *SERVER.ip(),
        "the address the relay talks to"
    );
    let lease = lab.lease_json(&ack.yiaddr().to_string());
    assert_eq!(lease["subnet"], "10.9.0.0/24");
    assert!(
        lease["relay_info"]
            .as_str()
            .is_some_and(|r| r.starts_with("01:04:70:6f:72:74")),
        "option 82 kept on the lease: {lease}"
    );

    let m = lab.api("/metrics");
    for reason in [
        "truncated",
        "not_request",
        "bad_cookie",
        "option_overrun",
        "bad_client_id",
        "oversize",
    ] {
        assert!(
            metric(
                &m,
                &format!("athena_dhcp_malformed_total{{reason=\"{reason}\"}}")
            ) >= 1.0,
            "{reason} not counted:\n{m}"
        );
    }
}

/// A unicast DHCP request to `server` from `s`; the reply with this xid and where it came
/// from (retried a few times).
fn unicast_exchange(
    s: &UdpSocket,
    pkt: &[u8],
    server: SocketAddrV4,
    xid: u32,
) -> Option<(Message, std::net::SocketAddr)> {
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        s.send_to(pkt, server).expect("send");
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            let Ok((n, from)) = s.recv_from(&mut buf) else {
                continue;
            };
            if let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n])) {
                if m.xid() == xid {
                    return Some((m, from));
                }
            }
        }
    }
    None
}

/// RFC 2131 §4.1 and the README: a reply leaves from the address the request reached. The
/// server has 10.0.0.1 and the VIP 10.0.0.3 (its server identifier) on one interface; an
/// INFORM unicast to either is answered from that same address, which is what a client's
/// connected socket or a firewall's state expects. Neither "always the server identifier" nor
/// "whatever the kernel picks" (10.0.0.1, the primary) passes both.
#[test]
fn a_unicast_request_is_answered_from_the_address_it_reached() {
    if !require_root("a_unicast_request_is_answered_from_the_address_it_reached") {
        return;
    }
    let lab = Lab::new("src", "1h");
    lab.cli.addr("c0", "10.0.0.20/24");
    let client = Ipv4Addr::new(10, 0, 0, 20);
    let s = lab.cli.in_netns(move || {
        let s = UdpSocket::bind(SocketAddrV4::new(client, 68)).expect("bind client port");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        s
    });
    let mac = [2, 0, 0, 0, 0x55, 1];
    for (i, server) in [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 3)]
        .into_iter()
        .enumerate()
    {
        let xid = 0x5300 + i as u32;
        let mut inform = request(8, mac, xid, Ipv4Addr::UNSPECIFIED, &[]);
        inform[12..16].copy_from_slice(&client.octets());
        let (reply, from) = unicast_exchange(&s, &inform, SocketAddrV4::new(server, 67), xid)
            .unwrap_or_else(|| panic!("no answer to an INFORM sent to {server}\n{}", lab.log()));
        assert_eq!(msg_type(&reply), Some(MessageType::Ack), "{reply:?}");
        assert_eq!(
            server_id(&reply),
            Ipv4Addr::new(10, 0, 0, 3),
            "the VIP is the server id"
        );
        assert_eq!(
            from,
            std::net::SocketAddr::from(SocketAddrV4::new(server, 67)),
            "the INFORM sent to {server} was answered from {from}"
        );
    }
}

/// One DISCOVER through the relay socket; the OFFER's address if one comes within a second.
fn offer_once(s: &UdpSocket, mac: [u8; 6], xid: u32) -> Option<Ipv4Addr> {
    let d = request(1, mac, xid, GIADDR, &[(82, OPT82.to_vec())]);
    s.send_to(&d, SERVER).expect("send");
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        if let Some(m) = recv_reply(s) {
            if m.xid() == xid && msg_type(&m) == Some(MessageType::Offer) {
                return Some(m.yiaddr());
            }
        }
    }
    None
}

fn sighup(lab: &Lab) {
    let pid = lab.daemon.as_ref().expect("daemon").id().to_string();
    let st = Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(st.success());
}

/// SIGHUP reloads what DHCP serves (issue #14): with the relayed subnet's one-address pool
/// taken, a second client gets nothing; a broken file with a new pool changes nothing; the
/// fixed file's new pool serves the second client at once, while the first client's lease
/// and the VIP stay.
#[test]
fn sighup_adds_a_pool_without_dropping_a_lease_or_the_vip_and_a_broken_file_changes_nothing() {
    if !require_root("sighup_adds_a_pool") {
        return;
    }
    let one = "range_start = \"10.9.0.10\"\nrange_end = \"10.9.0.10\"";
    let mut lab = Lab::with_config("hup", "1h", |_, t| {
        t.replace(
            "range_start = \"10.9.0.10\"\nrange_end = \"10.9.0.250\"",
            one,
        )
    });
    let s = lab.relay_socket();
    let (first, second) = ([2, 0, 0, 0, 0x88, 1], [2, 0, 0, 0, 0x88, 2]);
    let (_, ack) = relay_exchange(&s, first, 0x8801).expect("first client's lease");
    assert_eq!(ack.yiaddr(), Ipv4Addr::new(10, 9, 0, 10));
    assert_eq!(
        offer_once(&s, second, 0x8802),
        None,
        "the one-address pool is taken"
    );

    let base = std::fs::read_to_string(&lab.config).expect("config");
    let more =
        format!("{one}\n[[subnet.pool]]\nrange_start = \"10.9.0.20\"\nrange_end = \"10.9.0.20\"");
    let grown = base.replace(one, &more);
    assert_ne!(grown, base);
    std::fs::write(
        &lab.config,
        grown.replace(
            "[[subnet.pool]]\nrange_start = \"10.9.0.20\"",
            "[[subnet.pool]]\nrange_strat = \"10.9.0.20\"",
        ),
    )
    .expect("write");
    sighup(&lab);
    lab.wait_for("the refusal", Duration::from_secs(5), || {
        lab.log()
            .contains("reload refused, keeping the running config")
    });
    assert!(
        lab.log().contains("range_strat"),
        "the refusal names the key:\n{}",
        lab.log()
    );
    assert_eq!(
        offer_once(&s, second, 0x8803),
        None,
        "a refused file changes nothing"
    );

    std::fs::write(&lab.config, &grown).expect("write");
    sighup(&lab);
    lab.wait_for("the reload", Duration::from_secs(5), || {
        lab.log().contains("DHCP serves the reloaded config")
    });
    let (_, ack) =
        relay_exchange(&s, second, 0x8804).expect("second client's lease from the new pool");
    assert_eq!(ack.yiaddr(), Ipv4Addr::new(10, 9, 0, 20));
    assert_eq!(
        lab.lease_json("10.9.0.10")["state"],
        "active",
        "the first lease stays"
    );
    let vip = lab.srv.run(&["ip", "-4", "addr", "show", "dev", "s0"]);
    assert!(vip.contains("10.0.0.3/24"), "the VIP stays: {vip}");
    assert!(
        !lab.log().contains("take effect after a restart"),
        "a pool change needs no restart:\n{}",
        lab.log()
    );
    assert!(lab
        .daemon
        .as_mut()
        .expect("daemon")
        .try_wait()
        .expect("wait")
        .is_none());
}

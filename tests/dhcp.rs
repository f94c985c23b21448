//! The DHCP server against real clients in private namespaces: ISC `dhclient` and busybox
//! `udhcpc` get leases with the configured router, DNS (the VIP) and domain; renewal keeps
//! the address; release frees it; a reservation is honoured; a relay (a test socket with
//! giaddr and option 82) is answered; bad datagrams are dropped and counted while the server
//! keeps answering; every ACKed lease survives `kill -9`; and a client that leaves the
//! broadcast bit clear gets its OFFER and ACK unicast to its new address (RFC 2131 §4.1).
//!
//! Lab: namespace `srv` runs the daemon (s0 10.0.0.1/24, VIP 10.0.0.3/24 claimed by its own
//! `[[hooks.vip]]`; r0 10.1.0.1/24 towards the relay), `cli` holds the client end c0, `rly`
//! is the relay (r1 10.1.0.2/24, giaddr 10.9.0.1 on lo; srv routes 10.9.0.0/24 to it).

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{require_root, veth, Netns};
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder};

const BIN: &str = env!("CARGO_BIN_EXE_athena-dhcpd");
const RESERVED_MAC: &str = "02:aa:00:00:00:01";
const GIADDR: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);

struct Lab {
    srv: Netns,
    cli: Netns,
    rly: Netns,
    dir: tempfile::TempDir,
    config: PathBuf,
    daemon: Option<Child>,
}

fn config(dir: &Path, lease_time: &str) -> String {
    format!(
        r#"
[server]
node_name = "dhcp-test"
lease_db = "{db}"
rate_limit_per_mac = 50

[api]
listen = "127.0.0.1:8067"

[defaults]
lease_time = "{lease_time}"
dns_servers = ["10.0.0.3"]
domain_name = "lab.test"

[[hooks.vip]]
name = "vip"
address = "10.0.0.3/24"
interface = "s0"
garp_count = 1

[[subnet]]
network = "10.0.0.0/24"
interface = "s0"
routers = ["10.0.0.1"]
[[subnet.pool]]
range_start = "10.0.0.100"
range_end = "10.0.0.199"
[[subnet.reservation]]
mac = "{RESERVED_MAC}"
ip = "10.0.0.50"
hostname = "reserved-host"

[[subnet]]
network = "10.9.0.0/24"
routers = ["10.9.0.1"]
[[subnet.pool]]
range_start = "10.9.0.10"
range_end = "10.9.0.250"
"#,
        db = dir.join("leases.redb").display()
    )
}

impl Lab {
    fn new(tag: &str, lease_time: &str) -> Lab {
        let srv = Netns::new(&format!("{tag}s"));
        let cli = Netns::new(&format!("{tag}c"));
        let rly = Netns::new(&format!("{tag}r"));
        veth(&srv, "s0", &cli, "c0");
        srv.addr("s0", "10.0.0.1/24");
        veth(&srv, "r0", &rly, "r1");
        srv.addr("r0", "10.1.0.1/24");
        rly.addr("r1", "10.1.0.2/24");
        rly.run(&["ip", "addr", "add", "10.9.0.1/32", "dev", "lo"]);
        srv.run(&["ip", "route", "add", "10.9.0.0/24", "via", "10.1.0.2"]);
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("athena.toml");
        std::fs::write(&config, config_text(dir.path(), lease_time)).expect("write config");
        let mut lab = Lab {
            srv,
            cli,
            rly,
            dir,
            config,
            daemon: None,
        };
        lab.start();
        lab
    }

    fn start(&mut self) {
        let log = self.dir.path().join("daemon.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        let child = self
            .srv
            .cmd(BIN)
            .args(["--log-format", "text", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let health = self.api("/api/v1/health");
            let vip = self.srv.run(&["ip", "-4", "addr", "show", "dev", "s0"]);
            if health.contains("\"status\"") && vip.contains("10.0.0.3/24") {
                return;
            }
            if let Some(Ok(Some(st))) = self.daemon.as_mut().map(|c| c.try_wait()) {
                panic!("daemon exited ({st}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready (health {health:?}, s0 {vip}):\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn api(&self, path: &str) -> String {
        let out = self.srv.try_run(&[
            "curl",
            "-s",
            "--max-time",
            "2",
            &format!("http://127.0.0.1:8067{path}"),
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn lease_json(&self, ip: &str) -> serde_json::Value {
        serde_json::from_str(&self.api(&format!("/api/v1/leases/{ip}"))).unwrap_or_default()
    }

    fn wait_for(&self, what: &str, within: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n--- daemon log ---\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A UDP socket on the relay's giaddr:67, connected to nothing.
    fn relay_socket(&self) -> UdpSocket {
        self.rly.in_netns(|| {
            let s = UdpSocket::bind(SocketAddrV4::new(GIADDR, 67)).expect("bind relay socket");
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            s
        })
    }
}

fn config_text(dir: &Path, lease_time: &str) -> String {
    config(dir, lease_time)
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.kill9();
        // Namespaces drop after this, killing any client left inside.
        let _ = &self.cli;
    }
}

/// A BOOTREQUEST with the given options (code, value), as a relay would forward it.
fn request(t: u8, mac: [u8; 6], xid: u32, giaddr: Ipv4Addr, opts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut b = vec![0u8; 236];
    b[0] = 1;
    b[1] = 1;
    b[2] = 6;
    b[3] = 1;
    b[4..8].copy_from_slice(&xid.to_be_bytes());
    b[24..28].copy_from_slice(&giaddr.octets());
    b[28..34].copy_from_slice(&mac);
    b.extend_from_slice(&[99, 130, 83, 99, 53, 1, t]);
    for (c, v) in opts {
        b.push(*c);
        b.push(v.len() as u8);
        b.extend_from_slice(v);
    }
    b.push(255);
    b
}

const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 1), 67);
const OPT82: [u8; 10] = [1, 4, b'p', b'o', b'r', b't', 2, 2, b'r', b'1'];

fn recv_reply(s: &UdpSocket) -> Option<Message> {
    let mut buf = [0u8; 2048];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Message::decode(&mut Decoder::new(&buf[..n])).ok()
}

/// No VIP and no `server_id` for 10.9.0.0/24: the address the relay sent to.
fn server_id(m: &Message) -> Ipv4Addr {
    match m.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(a)) => *a,
        _ => Ipv4Addr::UNSPECIFIED,
    }
}

fn msg_type(m: &Message) -> Option<MessageType> {
    match m.opts().get(OptionCode::MessageType) {
        Some(DhcpOption::MessageType(t)) => Some(*t),
        _ => None,
    }
}

/// DISCOVER → OFFER → REQUEST → ACK through the relay socket; returns the ACKed address.
fn relay_exchange(s: &UdpSocket, mac: [u8; 6], xid: u32) -> Option<(Message, Message)> {
    let d = request(1, mac, xid, GIADDR, &[(82, OPT82.to_vec())]);
    let offer = exchange(s, &d, xid, MessageType::Offer)?;
    let r = request(
        3,
        mac,
        xid,
        GIADDR,
        &[
            (50, offer.yiaddr().octets().to_vec()),
            (54, server_id(&offer).octets().to_vec()),
            (82, OPT82.to_vec()),
        ],
    );
    let ack = exchange(s, &r, xid, MessageType::Ack)?;
    Some((offer, ack))
}

/// Sends and waits for the reply with this xid and type, retrying a few times.
fn exchange(s: &UdpSocket, pkt: &[u8], xid: u32, want: MessageType) -> Option<Message> {
    for _ in 0..10 {
        s.send_to(pkt, SERVER).expect("send");
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            if let Some(m) = recv_reply(s) {
                if m.xid() == xid && msg_type(&m) == Some(want) {
                    return Some(m);
                }
            }
        }
    }
    None
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A client hook script that records each call's environment in `<dir>/<reason>.env` and
/// configures the address, as a real client script would (renewals are unicast from it).
fn client_script(dir: &Path) -> PathBuf {
    let p = dir.join("client-script.sh");
    let body = format!(
        r#"#!/bin/sh
reason="${{reason:-$1}}"
env > "{dir}/$reason.env.tmp" && mv "{dir}/$reason.env.tmp" "{dir}/$reason.env"
case "$reason" in
  BOUND|RENEW|REBIND|REBOOT) ip addr replace "$new_ip_address/24" dev "$interface" ;;
  bound|renew) ip addr replace "$ip/24" dev "$interface" ;;
esac
exit 0
"#,
        dir = dir.display()
    );
    std::fs::write(&p, body).expect("script");
    Command::new("chmod")
        .args(["+x"])
        .arg(&p)
        .status()
        .expect("chmod");
    p
}

fn env_file(dir: &Path, reason: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(format!("{reason}.env"))).ok()
}

fn env_var(env: &str, key: &str) -> Option<String> {
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(|v| v.trim_matches('\'').to_string())
}

#[test]
fn dhclient_gets_router_vip_dns_and_domain_renews_the_same_address_and_release_frees_it() {
    if !require_root("dhclient_gets_router_vip_dns_and_domain") {
        return;
    }
    // 10 s leases: dhclient renews (unicast, RENEWING) after 5 s.
    let lab = Lab::new("dhc", "10s");
    let cdir = lab.dir.path().join("dhclient");
    std::fs::create_dir_all(&cdir).expect("dir");
    let script = client_script(&cdir);
    let lf = cdir.join("dhclient.leases");
    let pf = cdir.join("dhclient.pid");
    let t0 = Instant::now();
    let mut client = lab
        .cli
        .cmd("dhclient")
        .arg("-d")
        .arg("-lf")
        .arg(&lf)
        .arg("-pf")
        .arg(&pf)
        .arg("-sf")
        .arg(&script)
        .arg("c0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dhclient");
    lab.wait_for("dhclient BOUND", Duration::from_secs(30), || {
        env_file(&cdir, "BOUND").is_some()
    });
    let bound_in = t0.elapsed();
    let env = env_file(&cdir, "BOUND").expect("bound");
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
    let out = lab
        .cli
        .cmd("dhclient")
        .arg("-r")
        .arg("-lf")
        .arg(&lf)
        .arg("-pf")
        .arg(&pf)
        .arg("-sf")
        .arg(&script)
        .arg("c0")
        .output()
        .expect("dhclient -r");
    assert!(out.status.success(), "{out:?}");
    lab.wait_for("lease released", Duration::from_secs(10), || {
        lab.lease_json(&ip)["state"] == "released"
    });
    let _ = client.kill();
    let _ = client.wait();
    let metrics = lab.api("/metrics");
    assert!(
        metric(&metrics, "athena_dhcp_packets_sent_total{type=\"ack\"}") >= 2.0,
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

fn udhcpc(lab: &Lab, dir: &Path) -> String {
    let script = client_script(dir);
    let out = lab
        .cli
        .cmd("udhcpc")
        .args(["-f", "-q", "-n", "-t", "5", "-T", "2", "-i", "c0", "-s"])
        .arg(&script)
        .output()
        .expect("run udhcpc");
    assert!(
        out.status.success(),
        "udhcpc failed: {}\n{}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        lab.log()
    );
    env_file(dir, "bound").expect("udhcpc ran its script with bound")
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
    let env = udhcpc(&lab, &d1);
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
    let env = udhcpc(&lab, &d2);
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

#[test]
fn every_acked_lease_survives_kill_9() {
    if !require_root("every_acked_lease_survives_kill_9") {
        return;
    }
    const N: u32 = 150;
    let mut lab = Lab::new("dur", "1h");
    let s = lab.relay_socket();
    // All DISCOVERs, then all REQUESTs back to back, so ACKs share group commits.
    let mut offers = std::collections::HashMap::new();
    let mac = |i: u32| [2, 0xd0, 0, 0, (i >> 8) as u8, i as u8];
    for round in 0..5 {
        for i in 0..N {
            if !offers.contains_key(&i) {
                let d = request(1, mac(i), 10_000 + i, GIADDR, &[]);
                s.send_to(&d, SERVER).expect("send");
            }
        }
        let until = Instant::now() + Duration::from_secs(2);
        while offers.len() < N as usize && Instant::now() < until {
            if let Some(m) = recv_reply(&s) {
                if msg_type(&m) == Some(MessageType::Offer) {
                    offers.insert(m.xid() - 10_000, m.yiaddr());
                }
            }
        }
        if offers.len() == N as usize {
            break;
        }
        assert!(
            round < 4,
            "only {} of {N} offers\n{}",
            offers.len(),
            lab.log()
        );
    }
    let mut acked = std::collections::HashMap::new();
    for round in 0..5 {
        for i in 0..N {
            if !acked.contains_key(&i) {
                let r = request(
                    3,
                    mac(i),
                    10_000 + i,
                    GIADDR,
                    &[(50, offers[&i].octets().to_vec()), (54, vec![10, 1, 0, 1])],
                );
                s.send_to(&r, SERVER).expect("send");
            }
        }
        let until = Instant::now() + Duration::from_secs(2);
        while acked.len() < N as usize && Instant::now() < until {
            if let Some(m) = recv_reply(&s) {
                if msg_type(&m) == Some(MessageType::Ack) {
                    acked.insert(m.xid() - 10_000, m.yiaddr());
                }
            }
        }
        if acked.len() == N as usize {
            break;
        }
        assert!(round < 4, "only {} of {N} ACKs\n{}", acked.len(), lab.log());
    }
    // The instant the last ACK is in, the process dies without any chance to flush.
    lab.kill9();
    lab.start();
    let page = lab.api("/api/v1/leases?subnet=10.9.0.0/24&state=active&per_page=1000");
    let v: serde_json::Value = serde_json::from_str(&page).expect("json");
    assert_eq!(v["total"].as_u64(), Some(u64::from(N)), "{page}");
    let listed: std::collections::HashSet<String> = v["leases"]
        .as_array()
        .expect("leases")
        .iter()
        .map(|l| l["ip"].as_str().unwrap_or_default().to_string())
        .collect();
    for ip in acked.values() {
        assert!(
            listed.contains(&ip.to_string()),
            "ACKed {ip} lost after kill -9"
        );
    }
    // And the restarted server still knows whose they are: a renewal is ACKed.
    let (i, ip) = acked.iter().next().map(|(i, ip)| (*i, *ip)).expect("one");
    let mut renew = request(3, mac(i), 77, GIADDR, &[]);
    renew[12..16].copy_from_slice(&ip.octets());
    let ack = exchange(&s, &renew, 77, MessageType::Ack).expect("renewal ACK after restart");
    assert_eq!(ack.yiaddr(), ip);
}

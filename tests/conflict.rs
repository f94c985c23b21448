//! Conflict detection on real links (root, namespaces).
//!
//! The prober alone: namespace `p` probes across a veth to namespace `h`, whose kernel
//! answers ARP and ping for its own addresses: a thousand probes in flight, ICMP, a late
//! answer, malformed frames. Then the daemon pair: a host with a static address inside the
//! pool, a real `udhcpc` offered another address, the conflict on both nodes, and after a
//! kill -9 of the active the new active does not offer it either; and passive detection: a
//! host that claims a leased address with iputils' gratuitous ARP is recorded on both nodes,
//! logged, counted, shown in the pool view and published as `lease.conflict`.

mod common;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use athena_dhcpd::conflict::{
    open_sockets, ConflictMetrics, ProbeTimes, Prober, Sighting, Verdict, Via,
};
use athena_dhcpd::vip::{arp, packet};
use common::netns::{require_root, veth, Netns};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const PROBER_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x01];
const HOST_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x02];
const SQUATTER_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x77];

/// `p` (p0 10.77.0.1/16, MAC [`PROBER_MAC`]) and `h` (h0 10.77.0.2/16 and 10.77.0.120/16, MAC [`HOST_MAC`]).
struct Link {
    p: Netns,
    h: Netns,
    ifindex: u32,
    h_ifindex: u32,
}

fn link(tag: &str) -> Link {
    let p = Netns::new(&format!("{tag}p"));
    let h = Netns::new(&format!("{tag}h"));
    veth(&p, "p0", &h, "h0");
    p.run(&["ip", "link", "set", "p0", "address", "02:77:00:00:00:01"]);
    h.run(&["ip", "link", "set", "h0", "address", "02:77:00:00:00:02"]);
    p.addr("p0", "10.77.0.1/16");
    h.addr("h0", "10.77.0.2/16");
    h.run(&["ip", "addr", "add", "10.77.0.120/16", "dev", "h0"]);
    let ifindex = p.in_netns(|| nix::net::if_::if_nametoindex("p0").expect("p0"));
    let h_ifindex = h.in_netns(|| nix::net::if_::if_nametoindex("h0").expect("h0"));
    Link {
        p,
        h,
        ifindex,
        h_ifindex,
    }
}

type Started = (
    Prober,
    mpsc::Receiver<Sighting>,
    ConflictMetrics,
    CancellationToken,
);

fn start(l: &Link, rt: &tokio::runtime::Runtime, timeout: Duration) -> Started {
    let times = ProbeTimes {
        timeout,
        cache_ttl: Duration::from_secs(10),
    };
    start_with(l, rt, times)
}

fn start_with(l: &Link, rt: &tokio::runtime::Runtime, times: ProbeTimes) -> Started {
    let sockets =
        l.p.in_netns(|| open_sockets().expect("open prober sockets"));
    let metrics = ConflictMetrics::default();
    let shutdown = CancellationToken::new();
    let _guard = rt.enter();
    let (prober, sightings) =
        Prober::start(sockets, times, metrics.clone(), shutdown.clone()).expect("start prober");
    (prober, sightings, metrics, shutdown)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Sends raw Ethernet frames out of `h0`, as a host on the link would.
fn send_from_h(l: &Link, frames: Vec<Vec<u8>>) {
    let ifindex = l.h_ifindex;
    l.h.in_netns(move || {
        let s = packet::PacketSockets::open().expect("packet socket in h");
        for f in frames {
            packet::send_frame(&s.send, ifindex, arp::ETH_P_ARP, [0xff; 6], &f).expect("send");
        }
    });
}

/// A squatter at `mac` defending `ip` against p's probe (RFC 5227, as Linux answers): an ARP
/// reply to the prober's MAC and 0.0.0.0, the address the probe came from.
fn arp_reply(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut f = arp::garp_frame(mac, ip).to_vec();
    f[21] = 2; // operation: reply
    f[32..38].copy_from_slice(&PROBER_MAC);
    f[38..42].copy_from_slice(&[0, 0, 0, 0]);
    f
}

#[test]
fn a_thousand_probes_in_flight_end_on_time_and_the_address_in_use_is_found() {
    if !require_root("a_thousand_probes_in_flight_end_on_time_and_the_address_in_use_is_found") {
        return;
    }
    let l = link("pk");
    let rt = runtime();
    let timeout = Duration::from_millis(300);
    let (prober, _sightings, metrics, shutdown) = start(&l, &rt, timeout);
    let used = Ipv4Addr::new(10, 77, 0, 120);
    let mut addrs: Vec<Ipv4Addr> = (0..999u32)
        .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 77, 1, 0)) + i))
        .collect();
    addrs.push(used);
    let via = Via::Arp { ifindex: l.ifindex };
    let (verdicts, elapsed, peak) = rt.block_on(async {
        let t0 = Instant::now();
        let waits: Vec<_> = addrs
            .iter()
            .map(|ip| (*ip, prober.probe(*ip, via)))
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let peak = metrics.in_flight.get();
        let mut out = Vec::new();
        for (ip, w) in waits {
            out.push((ip, w.await.expect("verdict")));
        }
        (out, t0.elapsed(), peak)
    });
    let in_use: Vec<_> = verdicts
        .iter()
        .filter(|(_, v)| *v != Verdict::Free)
        .collect();
    assert_eq!(
        in_use,
        vec![&(
            used,
            Verdict::InUse {
                mac: Some(HOST_MAC)
            }
        )]
    );
    assert!(peak >= 999, "only {peak} probes were in flight at once");
    // One timeout for all of them, not one after another.
    assert!(
        elapsed < timeout + Duration::from_millis(400),
        "1000 probes took {elapsed:?}"
    );
    assert_eq!(metrics.probes("arp", "free"), 999);
    assert_eq!(metrics.probes("arp", "in_use"), 1);
    // Probed free a moment ago: not probed again.
    let again = rt.block_on(async { prober.probe(addrs[0], via).await.expect("verdict") });
    assert_eq!(again, Verdict::Free);
    assert_eq!(metrics.probes("cached", "free"), 1);
    shutdown.cancel();
}

#[test]
fn a_free_verdict_is_trusted_for_probe_cache_ttl_and_then_probed_anew() {
    if !require_root("a_free_verdict_is_trusted_for_probe_cache_ttl_and_then_probed_anew") {
        return;
    }
    let l = link("pc");
    let rt = runtime();
    let times = ProbeTimes {
        timeout: Duration::from_millis(100),
        cache_ttl: Duration::from_millis(400),
    };
    let (prober, _sightings, metrics, shutdown) = start_with(&l, &rt, times);
    let via = Via::Arp { ifindex: l.ifindex };
    let free = Ipv4Addr::new(10, 77, 2, 1);
    let probe = |ip| rt.block_on(async { prober.probe(ip, via).await.expect("verdict") });
    // A retransmitted DISCOVER joins the running probe: one probe on the wire, every waiter
    // told, whatever the verdict (a host answers within microseconds here, so the in-use
    // probe may end before the next request arrives: only its verdicts are checked).
    let joined = |ip| {
        rt.block_on(async {
            let waits: Vec<_> = (0..3).map(|_| prober.probe(ip, via)).collect();
            let mut out = Vec::new();
            for w in waits {
                out.push(w.await.expect("verdict"));
            }
            out
        })
    };
    assert_eq!(joined(free), vec![Verdict::Free; 3]);
    let in_use = Verdict::InUse {
        mac: Some(HOST_MAC),
    };
    assert_eq!(joined(Ipv4Addr::new(10, 77, 0, 120)), vec![in_use; 3]);
    assert_eq!(probe(free), Verdict::Free);
    assert_eq!(metrics.probes("arp", "free"), 1);
    assert_eq!(metrics.probes("cached", "free"), 1);
    // Past the ttl (and past the sweep of the cache that follows it): asked on the wire again,
    // and a host that took the address meanwhile is found.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(probe(Ipv4Addr::new(10, 77, 2, 2)), Verdict::Free);
    assert_eq!(probe(free), Verdict::Free);
    assert_eq!(metrics.probes("arp", "free"), 3);
    assert_eq!(metrics.probes("cached", "free"), 1);
    l.h.run(&["ip", "addr", "add", "10.77.2.1/16", "dev", "h0"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(probe(free), in_use);
    shutdown.cancel();
}

#[test]
fn an_icmp_probe_finds_a_host_that_answers_ping_and_times_out_on_silence() {
    if !require_root("an_icmp_probe_finds_a_host_that_answers_ping_and_times_out_on_silence") {
        return;
    }
    let l = link("pi");
    let rt = runtime();
    let (prober, _s, metrics, shutdown) = start(&l, &rt, Duration::from_millis(300));
    let (up, silent) = rt.block_on(async {
        let a = prober.probe(Ipv4Addr::new(10, 77, 0, 2), Via::Icmp);
        let b = prober.probe(Ipv4Addr::new(10, 77, 9, 9), Via::Icmp);
        (a.await.expect("verdict"), b.await.expect("verdict"))
    });
    // On this one link the kernel's own ARP for the echo may be answered first: the host
    // is found either way (with its MAC then).
    assert!(
        matches!(
            up,
            Verdict::InUse {
                mac: None | Some(HOST_MAC)
            }
        ),
        "{up:?}"
    );
    assert_eq!(silent, Verdict::Free);
    assert_eq!(metrics.probes("icmp", "in_use"), 1);
    assert_eq!(metrics.probes("icmp", "free"), 1);
    shutdown.cancel();
}

#[test]
fn a_late_answer_and_a_passing_claim_are_reported_and_malformed_replies_counted() {
    if !require_root("a_late_answer_and_a_passing_claim_are_reported_and_malformed_replies_counted")
    {
        return;
    }
    let l = link("pl");
    let rt = runtime();
    let (prober, mut sightings, metrics, shutdown) = start(&l, &rt, Duration::from_millis(100));
    let late_ip = Ipv4Addr::new(10, 77, 2, 5);
    let claimed = Ipv4Addr::new(10, 77, 2, 6);
    let (v, w) = rt.block_on(async {
        let via = Via::Arp { ifindex: l.ifindex };
        let (v, w) = (prober.probe(late_ip, via), prober.probe(claimed, via));
        (v.await.expect("verdict"), w.await.expect("verdict"))
    });
    assert_eq!(v, Verdict::Free, "nobody answered within the timeout");
    assert_eq!(w, Verdict::Free);
    // The squatter answers a probe after its timeout; a host announces an address probed a
    // moment ago (an announcement, not an answer: seen in passing), and another in passing.
    let passing = Ipv4Addr::new(10, 77, 3, 3);
    let mut bad_arp = arp::garp_frame(SQUATTER_MAC, passing).to_vec();
    bad_arp[18] = 0; // hardware address length 0
    send_from_h(
        &l,
        vec![
            arp_reply(SQUATTER_MAC, late_ip),
            arp::garp_frame(SQUATTER_MAC, claimed).to_vec(),
            arp::garp_frame(SQUATTER_MAC, passing).to_vec(),
            bad_arp,
        ],
    );
    // Two messages with bad checksums (an echo reply among them) to p's address, on a raw
    // ICMP socket in h. (A message shorter than its header never reaches a raw socket: the
    // kernel's ICMP filter drops it.)
    l.h.in_netns(|| {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::ICMPV4),
        )
        .expect("raw icmp in h");
        let to: std::net::SocketAddr = "10.77.0.1:0".parse().expect("addr");
        let bad_sum = [0u8, 0, 0x12, 0x34, 0, 1, 0, 1, 1, 2, 3, 4];
        s.send_to(&bad_sum, &to.into()).expect("send");
        let bad_reply = [0u8, 0, 0xde, 0xad, 0x12, 0x34, 0, 9, b'x'];
        s.send_to(&bad_reply, &to.into()).expect("send");
    });
    let got: Vec<Sighting> = rt.block_on(async {
        let mut got = Vec::new();
        while got.len() < 3 {
            match tokio::time::timeout(Duration::from_secs(3), sightings.recv()).await {
                Ok(Some(s)) => got.push(s),
                _ => break,
            }
        }
        got
    });
    let want: HashSet<_> = [
        (late_ip, Some(SQUATTER_MAC), true),
        (claimed, Some(SQUATTER_MAC), false),
        (passing, Some(SQUATTER_MAC), false),
    ]
    .into_iter()
    .collect();
    let seen: HashSet<_> = got.iter().map(|s| (s.ip, s.mac, s.late)).collect();
    assert_eq!(seen, want);
    let deadline = Instant::now() + Duration::from_secs(3);
    while metrics.malformed_count("arp") < 1 || metrics.malformed_count("icmp") < 2 {
        assert!(
            Instant::now() < deadline,
            "malformed counted: arp {}, icmp {}",
            metrics.malformed_count("arp"),
            metrics.malformed_count("icmp")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Both claimed addresses are probed again next time, not answered from the cache.
    for ip in [late_ip, claimed] {
        let v = rt.block_on(async {
            prober
                .probe(ip, Via::Arp { ifindex: l.ifindex })
                .await
                .expect("verdict")
        });
        assert_eq!(v, Verdict::Free);
    }
    assert_eq!(metrics.probes("cached", "free"), 0);
    shutdown.cancel();
}

// ---------------------------------------------------------------------------------------------
// The daemon

const ADMIN_TOKEN: &str = "lab-admin-token-0123456789";
const STATIC: &str = "10.0.0.100";

/// Runs `udhcpc` in `ns` asking for `want`; returns the address it was bound to.
fn udhcpc(ns: &Netns, dir: &std::path::Path, want: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let out_file = dir.join(format!("{}.ip", ns.name));
    let script = dir.join(format!("{}.sh", ns.name));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && echo \"$ip\" > {}\nexit 0\n",
            out_file.display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = ns
        .cmd("udhcpc")
        .args([
            "-f", "-q", "-n", "-t", "5", "-T", "2", "-i", "eth0", "-r", want, "-s",
        ])
        .arg(&script)
        .output()
        .expect("run udhcpc");
    if !out.status.success() {
        eprintln!(
            "udhcpc failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    std::fs::read_to_string(out_file)
        .ok()
        .map(|s| s.trim().to_string())
}

fn conflicts(lab: &common::lab::Lab, node: common::lab::Node) -> Vec<serde_json::Value> {
    lab.api_get(node, "/api/v1/conflicts")
        .filter(|(code, _)| *code == 200)
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
        .and_then(|v| v["conflicts"].as_array().cloned())
        .unwrap_or_default()
}

/// The pair with DHCP (no VIP, no DNS), an admin token and `extra` config: A ACTIVE,
/// B STANDBY, linked.
fn dhcp_pair(tag: &str, extra: &str) -> common::lab::Lab {
    use common::lab::{Lab, Node, NodeOpts};
    let opts = NodeOpts {
        vip: false,
        dns: false,
        api_extra: format!("auth_token = \"{ADMIN_TOKEN}\""),
        extra: extra.into(),
        ..Default::default()
    };
    let mut lab = Lab::new(tag);
    lab.start(Node::A, &opts);
    lab.start(Node::B, &opts);
    common::ha_pair::wait_linked(&lab, false);
    lab
}

fn mac_of(ns: &Netns, ifname: &str) -> String {
    ns.run(&["cat", &format!("/sys/class/net/{ifname}/address")])
        .trim()
        .to_string()
}

#[test]
fn a_static_host_in_the_pool_is_not_offered_on_either_node_even_after_a_failover() {
    use common::lab::Node;
    if !require_root(
        "a_static_host_in_the_pool_is_not_offered_on_either_node_even_after_a_failover",
    ) {
        return;
    }
    let mut lab = dhcp_pair("cfl", "");
    lab.add_client("sq");
    lab.add_client("dc");
    lab.add_client("dd");
    let (sq, dc) = (&lab.clients()[0], &lab.clients()[1]);
    sq.run(&["ip", "addr", "add", &format!("{STATIC}/24"), "dev", "eth0"]);
    let squatter = mac_of(sq, "eth0");
    let dir = tempfile::tempdir().expect("tempdir");

    // A real client asks for the squatter's address and is offered another one.
    let got = udhcpc(dc, dir.path(), STATIC).expect("udhcpc bound");
    assert_ne!(got, STATIC, "the address in use was handed out");
    let log_a = lab.log(Node::A);
    let line = format!("address conflict: {STATIC} is in use by {squatter}, not offered for 1h");
    assert!(log_a.contains(&line), "no {line:?} in A's log:\n{log_a}");
    let (_, metrics) = lab.api_get(Node::A, "/metrics").expect("metrics");
    assert!(
        metrics.contains("athena_dhcp_conflicts_total{source=\"probe\"} 1"),
        "{metrics}"
    );

    // On both nodes' tables, with the MAC that answered.
    for node in [Node::A, Node::B] {
        lab.wait_for(
            &format!("the conflict on {}", node.name()),
            Duration::from_secs(5),
            |l| {
                conflicts(l, node)
                    .iter()
                    .any(|c| c["ip"] == STATIC && c["mac"] == squatter.as_str() && c["count"] == 1)
            },
        );
    }

    // The active dies; the squatter goes quiet, so only the replicated table can keep the
    // new active from offering the address.
    lab.kill9(Node::A);
    lab.wait_state(Node::B, "ACTIVE", Duration::from_secs(10));
    let (sq, dd) = (&lab.clients()[0], &lab.clients()[2]);
    sq.run(&["ip", "addr", "del", &format!("{STATIC}/24"), "dev", "eth0"]);
    let got = udhcpc(dd, dir.path(), STATIC).expect("udhcpc bound by B");
    assert_ne!(got, STATIC, "the new active offered the held address");
    let (_, metrics) = lab.api_get(Node::B, "/metrics").expect("metrics");
    assert!(
        !metrics.contains("athena_dhcp_probes_total{method=\"arp\",result=\"in_use\"}"),
        "B found it by probing, not from the table:\n{metrics}"
    );

    // An admin clears it (the admin token is needed); then it may be offered again.
    let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let path = format!("/api/v1/conflicts/{STATIC}");
    let read = format!("Authorization: Bearer {}", common::lab::READ_TOKEN);
    let (code, _) = common::lab::http_request(&lab.b, Node::B.api(), "DELETE", &path, &[&read])
        .expect("delete with the read token");
    assert!(
        code == 401 || code == 403,
        "read token cleared a conflict: {code}"
    );
    let (code, body) = common::lab::http_request(&lab.b, Node::B.api(), "DELETE", &path, &[&auth])
        .expect("delete");
    assert_eq!(code, 200, "{body}");
    assert!(conflicts(&lab, Node::B).is_empty());
    let (code, _) = common::lab::http_request(&lab.b, Node::B.api(), "DELETE", &path, &[&auth])
        .expect("delete again");
    assert_eq!(code, 404);
}

#[test]
fn a_relayed_subnet_is_probed_by_icmp() {
    use common::dhcp_lab::{exchange, relay_exchange, request, Lab, GIADDR, OPT82};
    if !require_root("a_relayed_subnet_is_probed_by_icmp") {
        return;
    }
    let lab = Lab::new("cfr", "1h");
    // A host behind the relay answers ping for the first pool address.
    lab.rly
        .run(&["ip", "addr", "add", "10.9.0.10/32", "dev", "lo"]);
    let s = lab.relay_socket();
    let mac = [2, 0x99, 0, 0, 0, 1];
    let d = request(
        1,
        mac,
        77,
        GIADDR,
        &[(50, vec![10, 9, 0, 10]), (82, OPT82.to_vec())],
    );
    let offer = exchange(&s, &d, 77, dhcproto::v4::MessageType::Offer).expect("an offer");
    assert_ne!(offer.yiaddr(), Ipv4Addr::new(10, 9, 0, 10));
    let table: serde_json::Value =
        serde_json::from_str(&lab.api("/api/v1/conflicts")).expect("conflicts json");
    let held = table["conflicts"].as_array().cloned().unwrap_or_default();
    assert!(
        held.iter()
            .any(|c| c["ip"] == "10.9.0.10" && c["mac"].is_null()),
        "{table}\n{}",
        lab.log()
    );
    assert!(
        lab.log()
            .contains("address conflict: 10.9.0.10 is in use by a host answering ping"),
        "{}",
        lab.log()
    );
    // The rest of the exchange goes on as usual.
    assert!(relay_exchange(&s, [2, 0x99, 0, 0, 0, 2], 78).is_some());
}

#[test]
fn an_arp_from_another_mac_claiming_a_leased_address_is_recorded_on_both_nodes() {
    use common::lab::Node;
    if !require_root("an_arp_from_another_mac_claiming_a_leased_address_is_recorded") {
        return;
    }
    const LEASED: &str = "10.0.0.150";
    // The claim comes within `probe_cache_ttl` of the probe before the holder's OFFER: an
    // announcement, not an answer to that probe, so it counts as passive, not late.
    let mut lab = dhcp_pair("cfp", "");
    lab.add_client("ho");
    lab.add_client("sq");
    let (holder, squatter) = (&lab.clients()[0], &lab.clients()[1]);
    let dir = tempfile::tempdir().expect("tempdir");
    let got = udhcpc(holder, dir.path(), LEASED).expect("udhcpc bound");
    assert_eq!(
        got, LEASED,
        "the holder was not given the address it asked for"
    );
    let squatter_mac = mac_of(squatter, "eth0");

    // A hook's view: A's event stream, open before the claim (curl -v shows the response
    // head on stderr as soon as it arrives; the body goes to `stream`).
    let stream = dir.path().join("events.txt");
    let head = dir.path().join("events.head");
    let mut curl = lab
        .a
        .cmd("curl")
        .args(["-N", "-sS", "-v", "--max-time", "60", "-H"])
        .arg(format!("Authorization: Bearer {}", common::lab::READ_TOKEN))
        .arg(format!(
            "http://{}/api/v1/events?events=lease.conflict",
            Node::A.api()
        ))
        .stdout(std::fs::File::create(&stream).expect("stream file"))
        .stderr(std::fs::File::create(&head).expect("head file"))
        .spawn()
        .expect("curl");
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    lab.wait_for("the event stream open", Duration::from_secs(10), |_| {
        read(&head).contains("content-type: text/event-stream")
    });

    // Another host takes the address and says so on the wire: iputils' gratuitous ARP
    // (sender IP = target IP = the address, sender MAC its own).
    squatter.run(&["ip", "addr", "add", &format!("{LEASED}/24"), "dev", "eth0"]);
    squatter.run(&["arping", "-U", "-c", "2", "-I", "eth0", LEASED]);

    let line =
        format!("address conflict: {LEASED} is in use by {squatter_mac}, not offered for 1h");
    lab.wait_for("the conflict in A's log", Duration::from_secs(5), |l| {
        l.log(Node::A).contains(&line)
    });
    for node in [Node::A, Node::B] {
        lab.wait_for(
            &format!("the passive conflict on {}", node.name()),
            Duration::from_secs(5),
            |l| {
                conflicts(l, node).iter().any(|c| {
                    c["ip"] == LEASED && c["mac"] == squatter_mac.as_str() && c["count"] == 1
                })
            },
        );
    }
    let (_, metrics) = lab.api_get(Node::A, "/metrics").expect("metrics");
    // Two ARPs, one conflict: a claim is reported once, not per frame.
    assert!(
        metrics.contains("athena_dhcp_conflicts_total{source=\"passive_arp\"} 1\n"),
        "{metrics}"
    );
    for other in ["probe", "late_reply"] {
        assert!(
            !metrics.contains(&format!(
                "athena_dhcp_conflicts_total{{source=\"{other}\"}}"
            )),
            "counted as {other}, not passive_arp:\n{metrics}"
        );
    }
    // The pool view counts it in a state of its own (counted every 5 s).
    let pool_line = "athena_dhcp_pool_addresses{subnet=\"10.0.0.0/24\",\
                     pool=\"10.0.0.100-10.0.0.199\",state=\"conflict\"} 1\n";
    lab.wait_for(
        "the conflict in A's pool metric",
        Duration::from_secs(10),
        |l| {
            l.api_get(Node::A, "/metrics")
                .is_some_and(|(_, m)| m.contains(pool_line))
        },
    );
    let (_, pools) = lab.api_get(Node::A, "/api/v1/pools").expect("pools");
    let pools: serde_json::Value = serde_json::from_str(&pools).expect("pools json");
    assert_eq!(pools[0]["conflict"], 1, "{pools}");
    lab.wait_for(
        "lease.conflict on the event stream",
        Duration::from_secs(5),
        |_| {
            let t = read(&stream);
            t.contains("event: lease.conflict")
                && t.contains(&format!("\"ip\":\"{LEASED}\""))
                && t.contains(&format!("\"mac\":\"{squatter_mac}\""))
        },
    );
    let _ = curl.kill();
    let _ = curl.wait();
}

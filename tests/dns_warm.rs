//! Warm standby for DNS, end to end: an HA pair in the failover lab with both nodes
//! forwarding to one fake upstream in the client's namespace, which notes who asked what.
//! Names clients asked through the VIP on A are resolved by B on its own, hidden from
//! clients while B is STANDBY, and answered from B's cache right after a kill -9 of A.

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::lab::{dns_answer, dns_query, Lab, Node, NodeOpts, VIP};
use common::netns::{require_root, Netns};
use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::{rdata, RData, Record, RecordType};

const UPSTREAM: &str = "10.0.0.10:5353";
const ANSWER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// A forwarder at [`UPSTREAM`]: answers every A query with [`ANSWER`] (TTL 300) and counts
/// the queries per (lowercase name, source address).
struct Upstream {
    seen: Arc<Mutex<HashMap<(String, Ipv4Addr), usize>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    fn start(ns: &Netns) -> Upstream {
        let sock = ns
            .in_netns(|| UdpSocket::bind(UPSTREAM))
            .expect("upstream socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(query) = q.queries().first().cloned() else {
                    continue;
                };
                let std::net::IpAddr::V4(src) = from.ip() else {
                    continue;
                };
                let name = query.name().to_ascii().to_ascii_lowercase();
                *s.lock().unwrap().entry((name, src)).or_default() += 1;
                let mut r = Message::new();
                r.set_id(q.id())
                    .set_message_type(MessageType::Response)
                    .set_recursion_desired(true)
                    .set_recursion_available(true)
                    .add_query(query.clone());
                if query.query_type() == RecordType::A {
                    r.add_answer(Record::from_rdata(
                        query.name().clone(),
                        300,
                        RData::A(rdata::A(ANSWER)),
                    ));
                }
                let _ = sock.send_to(&r.to_vec().unwrap(), from);
            }
        });
        Upstream {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Queries for `name` from `node`.
    fn asked(&self, name: &str, node: Node) -> usize {
        let key = (format!("{name}."), node.addr());
        self.seen.lock().unwrap().get(&key).copied().unwrap_or(0)
    }

    /// Every query from `node`.
    fn total_from(&self, node: Node) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|((_, src), _)| *src == node.addr())
            .map(|(_, n)| n)
            .sum()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client socket in the client namespace asking `server`.
fn client(lab: &Lab, server: Ipv4Addr) -> UdpSocket {
    let s = lab
        .c
        .in_netns(move || -> std::io::Result<UdpSocket> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(SocketAddr::new(server.into(), 53))?;
            Ok(s)
        })
        .expect("client socket");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// Asks `name` A; the answer, if one came within 2 s.
fn ask(sock: &UdpSocket, id: u16, name: &str) -> Option<Ipv4Addr> {
    sock.send(&dns_query(id, name)).ok()?;
    let mut buf = [0u8; 1500];
    loop {
        let n = sock.recv(&mut buf).ok()?;
        if let Some((got, ip)) = dns_answer(&buf[..n]) {
            if got == id {
                return Some(ip);
            }
        }
    }
}

#[test]
fn names_asked_on_the_active_are_answered_from_the_standbys_cache_after_kill_9() {
    if !require_root("names_asked_on_the_active_are_answered_from_the_standbys_cache_after_kill_9")
    {
        return;
    }
    let mut lab = Lab::new("dwarm");
    let up = Upstream::start(&lab.c);
    let opts = NodeOpts {
        dhcp: false,
        dns_extra: format!("forwarders = [\"{UPSTREAM}\"]"),
        ..Default::default()
    };
    lab.start(Node::A, &opts);
    lab.start(Node::B, &opts);
    lab.wait_for(
        "A ACTIVE and B STANDBY, linked, A answering on the VIP",
        Duration::from_secs(15),
        |l| {
            let (a, b) = (l.ha_status(Node::A), l.ha_status(Node::B));
            matches!((a, b), (Some(a), Some(b))
            if a["state"] == "ACTIVE" && b["state"] == "STANDBY"
            && a["peer_connected"] == true && b["peer_connected"] == true)
                && l.who_answers() == Some(Node::A)
        },
    );
    let names: Vec<String> = (0..200).map(|i| format!("n{i}.warm.test")).collect();
    let vip = client(&lab, VIP);
    for (i, n) in names.iter().enumerate() {
        assert_eq!(ask(&vip, i as u16, n), Some(ANSWER), "{n} through the VIP");
        assert_eq!(up.asked(n, Node::A), 1, "{n} resolved by A");
    }
    // B resolves each of them itself, into its cache.
    lab.wait_for(
        "B to resolve every name A's clients asked",
        Duration::from_secs(10),
        |_| names.iter().all(|n| up.asked(n, Node::B) == 1),
    );
    // ... hidden from clients while B is STANDBY: asked directly, B goes upstream again.
    let direct = client(&lab, Node::B.addr());
    assert_eq!(ask(&direct, 1, &names[0]), Some(ANSWER));
    assert_eq!(
        up.asked(&names[0], Node::B),
        2,
        "a standby's warm answer never served a client"
    );
    let (_, stats) = lab.api_get(Node::B, "/api/v1/dns/stats").expect("B stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert!(stats["warm"]["received"].as_u64() >= Some(200), "{stats}");
    assert_eq!(stats["serving"], false, "{stats}");

    lab.kill9(Node::A);
    lab.wait_for("B answering on the VIP", Duration::from_secs(10), |l| {
        l.who_answers() == Some(Node::B)
    });
    let before = up.total_from(Node::B);
    for (i, n) in names.iter().enumerate().skip(1) {
        assert_eq!(
            ask(&vip, 1000 + i as u16, n),
            Some(ANSWER),
            "{n} after the failover"
        );
    }
    assert_eq!(
        up.total_from(Node::B),
        before,
        "every name came from B's cache, none from upstream"
    );
    let (_, stats) = lab.api_get(Node::B, "/api/v1/dns/stats").expect("B stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert!(stats["cache"]["hits"].as_u64() >= Some(199), "{stats}");
    assert_eq!(stats["serving"], true, "{stats}");
}

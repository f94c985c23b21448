//! The peer link's defences, against real daemons in the failover lab. The test plays the
//! attacker with `snow` itself (the same Noise protocol, the PSK derived as the man page
//! says): a wrong secret refuses the link and is logged once per peer and kind however often
//! it retries; hostile input (random bytes, garbage, an oversize length, a slow handshake, a
//! record that does not decrypt, one from another session, one announcing 2 GiB) and a record
//! replayed on its own session change nothing and are counted by kind; a node of the old
//! protocol (v1, HMAC) is refused with one clear line, whichever side dials.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use blake2::{Blake2s256, Digest};
use common::ha_pair::{epoch, opts, pair};
use common::lab::{Lab, Node, SECRET};
use common::netns::require_root;

#[test]
fn a_wrong_secret_refuses_the_link_and_both_sides_log_it() {
    if !require_root("a_wrong_secret_refuses_the_link_and_both_sides_log_it") {
        return;
    }
    let mut lab = Lab::new("hakey");
    lab.start(Node::A, &opts(true));
    let cfg = lab.write_config(Node::B, &opts(true));
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(
        &cfg,
        text.replace(SECRET, "a-completely-different-secret-42"),
    )
    .expect("write");
    lab.restart(Node::B);
    lab.wait_for("both log the wrong key", Duration::from_secs(10), |l| {
        l.log(Node::A).contains("wrong shared_secret")
            && l.log(Node::B).contains("wrong shared_secret")
    });
    for n in [Node::A, Node::B] {
        let s = lab.ha_status(n).expect("status");
        assert_eq!(s["peer_connected"], false, "{s}");
        let (_, m) = lab.api_get(n, "/metrics").expect("metrics");
        assert!(
            m.contains("athena_ha_link_errors_total{kind=\"wrong_key\"}"),
            "{m}"
        );
    }
    // The log names the peer's address.
    assert!(lab.log(Node::A).contains("10.0.0.2"), "{}", lab.dump());
}

/// Sends the upgrade request for `token` on `s` and returns the response head.
fn upgrade_head(s: &mut TcpStream, token: &str) -> String {
    let addr = s.peer_addr().expect("peer");
    write!(
        s,
        "GET /api/v1/ha/peer HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: {token}\r\n\r\n"
    )
    .expect("write");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).expect("read"), 1, "closed during upgrade");
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// An upgraded (`athena-ha/2`) connection to `node`'s peer port, opened inside the client
/// namespace.
fn upgraded(lab: &Lab, node: Node) -> TcpStream {
    let addr = node.api();
    let mut s = lab
        .c
        .in_netns(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let head = upgrade_head(&mut s, "athena-ha/2");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// `len u16 ‖ bytes`, as every message after the upgrade travels.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

fn read_framed(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).expect("length");
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut body).expect("body");
    body
}

/// Reads until EOF/error; true if the server closed the connection within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
        if t.elapsed() > within {
            return false;
        }
    }
}

fn link_errors(lab: &Lab, kind: &str) -> u64 {
    let (_, m) = lab.api_get(Node::A, "/metrics").expect("metrics");
    let key = format!("athena_ha_link_errors_total{{kind=\"{kind}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// The Noise PSK of a secret, derived here as the man page documents it (not by calling the
/// daemon's code), so a change of the derivation fails this test.
fn psk(secret: &str) -> [u8; 32] {
    Blake2s256::new()
        .chain_update(b"athena-dhcpd peer link v2 psk")
        .chain_update(secret.as_bytes())
        .finalize()
        .into()
}

fn initiator(secret: &str) -> snow::HandshakeState {
    let key = psk(secret);
    snow::Builder::new(
        "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s"
            .parse()
            .expect("params"),
    )
    .psk(0, &key)
    .prologue(b"athena-ha/2")
    .build_initiator()
    .expect("initiator")
}

/// Message 1 and 2 with `secret`: the stream and, when message 2 decrypted, the session.
fn dial_with_secret(lab: &Lab, secret: &str) -> (TcpStream, Option<snow::TransportState>) {
    let mut s = upgraded(lab, Node::A);
    let mut hs = initiator(secret);
    let mut m1 = [0u8; 48];
    assert_eq!(hs.write_message(&[], &mut m1).expect("message 1"), 48);
    s.write_all(&framed(&m1)).expect("message 1");
    let m2 = read_framed(&mut s);
    assert_eq!(m2.len(), 48, "message 2 is an ephemeral key and a tag");
    let mut p = [0u8; 48];
    let t = hs
        .read_message(&m2, &mut p)
        .ok()
        .map(|_| hs.into_transport_mode().expect("transport"));
    (s, t)
}

/// A dialler's handshake with the right secret, ready for the first record.
fn authenticated(lab: &Lab) -> (TcpStream, snow::TransportState) {
    let (s, t) = dial_with_secret(lab, SECRET);
    (s, t.expect("message 2 decrypts with the right secret"))
}

/// A one-record message: `len u32 ‖ payload` sealed, length-prefixed.
fn record(t: &mut snow::TransportState, payload: &[u8]) -> Vec<u8> {
    let mut plain = (payload.len() as u32).to_be_bytes().to_vec();
    plain.extend_from_slice(payload);
    let mut out = vec![0u8; plain.len() + 16];
    let n = t.write_message(&plain, &mut out).expect("seal");
    framed(&out[..n])
}

fn closed_peek(s: &TcpStream) -> bool {
    let _ = s.set_nonblocking(true);
    let mut b = [0u8; 1];
    let r = match s.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    let _ = s.set_nonblocking(false);
    r
}

#[test]
fn hostile_input_on_the_peer_port_changes_nothing() {
    if !require_root("hostile_input_on_the_peer_port_changes_nothing") {
        return;
    }
    let lab = pair("habad", true);
    let (ea, eb) = (epoch(&lab, Node::A), epoch(&lab, Node::B));
    let addr = Node::A.api();

    // Random bytes instead of HTTP.
    let mut s = lab
        .c
        .in_netns(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .expect("connect");
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = s.write_all(&junk);
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "random bytes: not closed"
    );

    // Upgrade, then garbage where handshake message 1 belongs.
    let mut s = upgraded(&lab, Node::A);
    s.write_all(&framed(b"\xff\xfenot a noise message"))
        .expect("write");
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "garbage message 1: not closed"
    );

    // The largest length prefix, far over a handshake message's.
    let mut s = upgraded(&lab, Node::A);
    s.write_all(&0xffffu16.to_be_bytes()).expect("write");
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "64 KiB handshake prefix: not closed"
    );
    assert_eq!(link_errors(&lab, "oversize"), 1);

    // Slow loris: a byte at a time, never finishing message 1; cut by the handshake limit.
    let mut s = upgraded(&lab, Node::A);
    let t = Instant::now();
    let mut cut = false;
    for b in framed(&[7u8; 48]).iter().take(40) {
        if s.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if closed_peek(&s) {
            cut = true;
            break;
        }
    }
    assert!(
        cut && t.elapsed() < Duration::from_secs(5),
        "slow loris not cut ({:?})",
        t.elapsed()
    );

    // Right secret, then a record that does not decrypt (its tag flipped).
    let payload = br#"{"Control":{"Handoff":{"reason":"forged","epoch":99}}}"#;
    let (mut s, mut t) = authenticated(&lab);
    let mut bad = record(&mut t, payload);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    s.write_all(&bad).expect("write");
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "bad tag: not closed"
    );
    assert_eq!(link_errors(&lab, "bad_mac"), 1);

    // A record sealed for another session (the right secret, other ephemeral keys): it does
    // not decrypt on this one. (A replay within one session is
    // `a_record_replayed_on_its_own_session_is_refused_as_replay`.)
    let (_other, mut other_t) = authenticated(&lab);
    let (mut s, _) = authenticated(&lab);
    s.write_all(&record(&mut other_t, payload)).expect("write");
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "record from another session: not closed"
    );
    assert_eq!(link_errors(&lab, "bad_mac"), 2);
    assert_eq!(link_errors(&lab, "replay"), 0);

    // Right secret, and a record announcing a 2 GiB message: refused from the length.
    let (mut s, mut t) = authenticated(&lab);
    let mut plain = 0x8000_0000u32.to_be_bytes().to_vec();
    plain.extend_from_slice(b"{");
    let mut out = vec![0u8; plain.len() + 16];
    let n = t.write_message(&plain, &mut out).expect("seal");
    s.write_all(&framed(&out[..n])).expect("write");
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "2 GiB message: not closed"
    );
    assert_eq!(link_errors(&lab, "oversize"), 2);

    // Nothing moved: same states, same epochs, the real link still up.
    std::thread::sleep(Duration::from_millis(300));
    let a = lab.ha_status(Node::A).expect("A");
    let b = lab.ha_status(Node::B).expect("B");
    assert_eq!(
        (a["state"].as_str(), b["state"].as_str()),
        (Some("ACTIVE"), Some("STANDBY"))
    );
    assert_eq!((epoch(&lab, Node::A), epoch(&lab, Node::B)), (ea, eb));
    assert_eq!(
        (a["peer_connected"].as_bool(), b["peer_connected"].as_bool()),
        (Some(true), Some(true)),
        "{a} {b}"
    );
    assert!(!lab.log(Node::B).contains("forged"));
}

/// A record captured off a live session and sent again on that session: it is genuine (same
/// keys) but its nonce is spent. The link is closed and the refusal is counted as `replay`,
/// not as `bad_mac`.
#[test]
fn a_record_replayed_on_its_own_session_is_refused_as_replay() {
    if !require_root("a_record_replayed_on_its_own_session_is_refused_as_replay") {
        return;
    }
    // A alone: the test plays B, so the real B cannot race it for the link.
    let mut lab = Lab::new("harep");
    lab.start(Node::A, &opts(true));
    lab.wait_state(Node::A, "ACTIVE", Duration::from_secs(10));
    let e0 = epoch(&lab, Node::A);
    let (mut s, mut t) = authenticated(&lab);

    // A's hello opens with the session's keys, and says nothing in clear.
    let theirs = read_framed(&mut s);
    assert!(!theirs.windows(6).any(|w| w == b"node-a"), "hello in clear");
    let mut plain = vec![0u8; theirs.len()];
    let n = t
        .read_message(&theirs, &mut plain)
        .expect("A's hello opens");
    let hello: serde_json::Value = serde_json::from_slice(&plain[4..n]).expect("json");
    assert_eq!(hello["Hello"]["version"], 2, "{hello}");

    // Record 0, the hello, correctly sealed: accepted, A sees its peer.
    let ours = serde_json::json!({"Hello": {
        "version": 2,
        "status": {"node": Node::B.name(), "role": "secondary", "state": "STANDBY",
                   "epoch": 0, "watermark": 0, "wants_active": false},
        "dial": 1, "lease_codec": 0}});
    let captured = record(&mut t, ours.to_string().as_bytes());
    s.write_all(&captured).expect("hello");
    lab.wait_for("A linked to the test's B", Duration::from_secs(5), |l| {
        l.ha_status(Node::A)
            .is_some_and(|a| a["peer_connected"] == true)
    });

    // The same bytes again: genuine, but record 0 where 1 is due.
    s.write_all(&captured).expect("replay");
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "replayed record: not closed\n{}",
        lab.dump()
    );
    assert_eq!(link_errors(&lab, "replay"), 1, "{}", lab.dump());
    assert_eq!(link_errors(&lab, "bad_mac"), 0);
    assert!(
        lab.log(Node::A).contains("record 0 where 1 is due"),
        "{}",
        lab.dump()
    );
    lab.wait_for("A drops the link", Duration::from_secs(5), |l| {
        l.ha_status(Node::A)
            .is_some_and(|a| a["peer_connected"] == false)
    });
    let a = lab.ha_status(Node::A).expect("A");
    assert_eq!(a["state"], "ACTIVE", "{a}");
    assert_eq!(epoch(&lab, Node::A), e0);
}

/// A peer with the wrong key that keeps retrying (here 20 times in a row) fills no log: one
/// line per peer and kind, while the metric counts every attempt.
#[test]
fn a_wrong_key_peer_retrying_is_logged_once_per_kind_and_counted_every_time() {
    if !require_root("a_wrong_key_peer_retrying_is_logged_once_per_kind") {
        return;
    }
    const TRIES: u64 = 20;
    let mut lab = Lab::new("haonce");
    lab.start(Node::A, &opts(true));
    for i in 0..TRIES {
        let (mut s, t) = dial_with_secret(&lab, "a-completely-different-secret-42");
        assert!(t.is_none(), "try {i}: message 2 decrypted with a wrong key");
        assert!(
            closed_within(&mut s, Duration::from_secs(5)),
            "wrong key, try {i}: not closed"
        );
    }
    // Another kind from the same peer is a line of its own.
    for i in 0..3 {
        let mut s = upgraded(&lab, Node::A);
        s.write_all(&framed(b"\xff\xfenot a noise message"))
            .expect("write");
        assert!(
            closed_within(&mut s, Duration::from_secs(5)),
            "garbage message 1, try {i}: not closed"
        );
    }
    lab.wait_for("every attempt counted", Duration::from_secs(10), |l| {
        link_errors(l, "wrong_key") == TRIES && link_errors(l, "malformed") == 3
    });
    let log = lab.log(Node::A);
    let lines = |what: &str| {
        log.lines()
            .filter(|l| l.contains("peer link from 10.0.0.10:") && l.contains(what))
            .count()
    };
    assert_eq!(lines("refused: wrong shared_secret"), 1, "{log}");
    assert_eq!(lines("refused: malformed handshake message 1"), 1, "{log}");
}

/// What a version-1 acceptor answered a request for another upgrade token (axum's 426 with
/// `Upgrade: athena-ha/1`), byte for byte as far as a dialler reads it.
const V1_REFUSAL: &str = "HTTP/1.1 426 Upgrade Required\r\nupgrade: athena-ha/1\r\n\
    content-type: text/plain; charset=utf-8\r\ncontent-length: 46\r\n\r\n\
    the HA peer link needs `Upgrade: athena-ha/1`\n";

/// A pair mid-upgrade: the test plays node B still on version 1 (challenge-response and
/// HMAC), both dialling A and accepting A's dials. Each way A refuses or is refused with a
/// 426 naming the versions; A logs one line however often either side retries, and no
/// malformed frame at all; what a version-1 node logs (the refusal's status line) names
/// both versions too.
#[test]
fn a_v1_peer_against_a_v2_node_is_refused_with_one_clear_line() {
    if !require_root("a_v1_peer_against_a_v2_node_is_refused_with_one_clear_line") {
        return;
    }
    let mut lab = Lab::new("hav1");
    // B's address answers like a version-1 node before A starts dialling it.
    let b_api = Node::B.api();
    let listener = lab
        .b
        .in_netns(move || TcpListener::bind(b_api))
        .expect("bind B's API address");
    lab.start(Node::A, &opts(true));

    // A dials "B": it asks for version 2 and hears the version-1 refusal, several times.
    let mut dials = 0;
    listener.set_nonblocking(true).expect("nonblocking");
    let t0 = Instant::now();
    while dials < 4 && t0.elapsed() < Duration::from_secs(10) {
        let mut c = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => panic!("accept: {e}"),
        };
        c.set_nonblocking(false).expect("blocking");
        c.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if c.read(&mut b).unwrap_or(0) != 1 {
                break;
            }
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_lowercase();
        assert!(head.contains("upgrade: athena-ha/2"), "{head}");
        c.write_all(V1_REFUSAL.as_bytes()).expect("refuse");
        dials += 1;
    }
    assert_eq!(dials, 4, "A stopped dialling\n{}", lab.dump());
    drop(listener);

    // "B" dials A as version 1 did, from B's address: 426, with the reason in the status
    // line (which is what a version-1 node logs: "HTTP upgrade refused: <status line>").
    let a_api = Node::A.api();
    for _ in 0..4 {
        let head = lab.b.in_netns(move || {
            let mut s =
                TcpStream::connect_timeout(&a_api, Duration::from_secs(2)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            upgrade_head(&mut s, "athena-ha/1")
        });
        let status = head.lines().next().unwrap_or("");
        assert_eq!(
            status,
            "HTTP/1.1 426 the peer speaks peer-link v2 (Noise), this node v1 (HMAC): upgrade this node",
            "{head}"
        );
        assert!(
            head.to_lowercase().contains("upgrade: athena-ha/2"),
            "{head}"
        );
    }

    lab.wait_for("every attempt counted", Duration::from_secs(5), |l| {
        link_errors(l, "version") >= 8
    });
    let log = lab.log(Node::A);
    let clear = log
        .lines()
        .filter(|l| l.contains("speaks peer-link v1 (HMAC), this node v2 (Noise): upgrade it"))
        .count();
    assert_eq!(clear, 1, "{log}");
    assert!(log.contains("peer 10.0.0.2:"), "{log}");
    assert!(!log.contains("malformed"), "{log}");
    assert_eq!(link_errors(&lab, "malformed"), 0);
}

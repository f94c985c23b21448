//! The peer link's defences, against two real daemons in the failover lab: a wrong secret
//! refuses the link and is logged once per peer and kind however often it retries; hostile
//! input (random bytes, a bad MAC, an oversize length, a slow handshake) and a frame replayed
//! on its own session change nothing and are counted by kind.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

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

/// An upgraded connection to `node`'s peer port, opened inside the client namespace.
fn upgraded(lab: &Lab, node: Node) -> TcpStream {
    let addr = node.api();
    let mut s = lab
        .c
        .in_netns(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    write!(
        s,
        "GET /api/v1/ha/peer HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: athena-ha/1\r\n\r\n"
    )
    .expect("write");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).expect("read"), 1, "closed during upgrade");
        head.push(b[0]);
    }
    assert!(
        String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
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

/// HMAC-SHA256 of the parts under `key`, as the peer link computes its proofs and tags.
fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).expect("key");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

/// A dialer handshake done by hand with the right secret, so the frames after it can be
/// forged. Returns the stream, ready for the first authenticated frame.
fn authenticated(lab: &Lab) -> TcpStream {
    authenticated_session(lab).0
}

/// A dialer handshake done by hand with `secret`, up to and including the dialer's proof.
fn dial_with_secret(lab: &Lab, secret: &str) -> TcpStream {
    session_with_secret(lab, secret).0
}

/// [`authenticated`], plus the session keys (dialer→acceptor, acceptor→dialer) derived from
/// the two nonces as the link does, so the test can seal frames that verify.
fn authenticated_session(lab: &Lab) -> (TcpStream, Vec<u8>, Vec<u8>) {
    session_with_secret(lab, SECRET)
}

/// The handshake with `secret` and the session keys it would give.
fn session_with_secret(lab: &Lab, secret: &str) -> (TcpStream, Vec<u8>, Vec<u8>) {
    let key = secret.as_bytes();
    let mut s = upgraded(lab, Node::A);
    let nd = [7u8; 32];
    s.write_all(&frame(
        format!("{{\"v\":1,\"nonce\":\"{}\"}}", hex::encode(nd)).as_bytes(),
    ))
    .expect("challenge");
    let body = read_frame(&mut s);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let na = hex::decode(v["nonce"].as_str().expect("nonce")).expect("hex");
    let proof = hmac(key, &[b"athena-ha/1 dialer", &na, &nd]);
    s.write_all(&frame(
        format!("{{\"proof\":\"{}\"}}", hex::encode(proof)).as_bytes(),
    ))
    .expect("proof");
    let d2a = hmac(key, &[b"athena-ha/1 d2a", &nd, &na]);
    let a2d = hmac(key, &[b"athena-ha/1 a2d", &nd, &na]);
    (s, d2a, a2d)
}

fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("frame length");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).expect("frame body");
    body
}

/// An authenticated frame body: `seq ‖ HMAC(key, seq ‖ payload) ‖ payload`.
fn sealed(key: &[u8], seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut body = seq.to_be_bytes().to_vec();
    body.extend_from_slice(&hmac(key, &[&seq.to_be_bytes(), payload]));
    body.extend_from_slice(payload);
    body
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

    // Upgrade, then garbage where the challenge belongs.
    let mut s = upgraded(&lab, Node::A);
    s.write_all(&frame(b"\xff\xfenot json at all"))
        .expect("write");
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "garbage challenge: not closed"
    );

    // A 2 GiB length prefix.
    let mut s = upgraded(&lab, Node::A);
    s.write_all(&0x8000_0000u32.to_be_bytes()).expect("write");
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "2 GiB prefix: not closed"
    );
    assert_eq!(link_errors(&lab, "oversize"), 1);

    // Slow loris: a byte at a time, never finishing the challenge; cut by the handshake limit.
    let mut s = upgraded(&lab, Node::A);
    let t = Instant::now();
    let mut cut = false;
    for b in frame(b"{\"v\":1,\"nonce\":\"00").iter().cycle().take(60) {
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

    // Right secret, then a frame whose MAC does not verify.
    let mut s = authenticated(&lab);
    let payload = br#"{"Control":{"Handoff":{"reason":"forged","epoch":99}}}"#;
    let mut body = 1u64.to_be_bytes().to_vec();
    body.extend_from_slice(&[0u8; 32]);
    body.extend_from_slice(payload);
    s.write_all(&frame(&body)).expect("write");
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "bad MAC: not closed"
    );
    assert_eq!(link_errors(&lab, "bad_mac"), 1);

    // A frame sealed with another session's key (the right secret, other nonces): the
    // per-session key makes its MAC fail. (A replay within one session is
    // `a_frame_replayed_on_its_own_session_is_refused_as_replay`.)
    let mut s = authenticated(&lab);
    let other_session = hmac(
        SECRET.as_bytes(),
        &[b"athena-ha/1 d2a", &[9u8; 32], &[8u8; 32]],
    );
    s.write_all(&frame(&sealed(&other_session, 1, payload)))
        .expect("write");
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "frame from another session: not closed"
    );
    assert_eq!(link_errors(&lab, "bad_mac"), 2);
    assert_eq!(link_errors(&lab, "replay"), 0);

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

/// A frame captured off a live authenticated session and sent again on that session: its MAC
/// verifies (same session key), only its sequence number is old. The link is closed and the
/// refusal is counted as `replay`, not as `bad_mac`.
#[test]
fn a_frame_replayed_on_its_own_session_is_refused_as_replay() {
    if !require_root("a_frame_replayed_on_its_own_session_is_refused_as_replay") {
        return;
    }
    // A alone: the test plays B, so the real B cannot race it for the link.
    let mut lab = Lab::new("harep");
    lab.start(Node::A, &opts(true));
    lab.wait_state(Node::A, "ACTIVE", Duration::from_secs(10));
    let e0 = epoch(&lab, Node::A);
    let (mut s, d2a, a2d) = authenticated_session(&lab);

    // A's hello opens with the acceptor→dialer key: the keys the test derived are the link's.
    let theirs = read_frame(&mut s);
    assert_eq!(&theirs[..8], &1u64.to_be_bytes());
    assert_eq!(
        hmac(&a2d, &[&theirs[..8], &theirs[40..]]),
        &theirs[8..40],
        "acceptor hello does not verify"
    );

    // Frame 1, the hello, correctly sealed: accepted, A sees its peer.
    let hello = serde_json::json!({"Hello": {
        "version": 1,
        "status": {"node": Node::B.name(), "role": "secondary", "state": "STANDBY",
                   "epoch": 0, "watermark": 0, "wants_active": false},
        "dial": 1, "lease_codec": 0}});
    let captured = frame(&sealed(&d2a, 1, hello.to_string().as_bytes()));
    s.write_all(&captured).expect("hello");
    lab.wait_for("A linked to the test's B", Duration::from_secs(5), |l| {
        l.ha_status(Node::A)
            .is_some_and(|a| a["peer_connected"] == true)
    });

    // The same bytes again: right MAC, sequence 1 where 2 is due.
    s.write_all(&captured).expect("replay");
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "replayed frame: not closed\n{}",
        lab.dump()
    );
    assert_eq!(link_errors(&lab, "replay"), 1, "{}", lab.dump());
    assert_eq!(link_errors(&lab, "bad_mac"), 0);
    assert!(
        lab.log(Node::A).contains("sequence 1, expected 2"),
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
        let mut s = dial_with_secret(&lab, "a-completely-different-secret-42");
        assert!(
            closed_within(&mut s, Duration::from_secs(5)),
            "wrong key, try {i}: not closed"
        );
    }
    // Another kind from the same peer is a line of its own.
    for i in 0..3 {
        let mut s = upgraded(&lab, Node::A);
        s.write_all(&frame(b"\xff\xfenot json at all"))
            .expect("write");
        assert!(
            closed_within(&mut s, Duration::from_secs(5)),
            "garbage challenge, try {i}: not closed"
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
    assert_eq!(lines("refused: malformed challenge"), 1, "{log}");
}

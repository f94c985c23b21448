//! Two real daemons (an HA pair) in lab namespaces, mostly without VIP, DNS or DHCP: the peer
//! link and the state machine. Process kill, SIGSTOP/SIGCONT, SIGTERM handoff, a wrong
//! secret (logged once per peer and kind), hostile input on the peer port, the failover API
//! (409 without a standby). Two tests run the whole product: a split brain with DHCP served on
//! both sides, and a lease's expiry reaching the hooks, the standby and DNS.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use common::lab::{dhclient_once, Lab, Node, NodeOpts, DOMAIN, SECRET, VIP};
use common::netns::require_root;

fn opts(preempt: bool) -> NodeOpts {
    NodeOpts {
        vip: false,
        dns: false,
        dhcp: false,
        heartbeat_interval: "100ms".into(),
        failover_timeout: "1s".into(),
        preempt,
        ..Default::default()
    }
}

/// A ACTIVE, B STANDBY, linked.
fn pair(tag: &str, preempt: bool) -> Lab {
    let mut lab = Lab::new(tag);
    lab.start(Node::A, &opts(preempt));
    lab.start(Node::B, &opts(preempt));
    lab.wait_for(
        "A ACTIVE and B STANDBY, linked",
        Duration::from_secs(15),
        |l| {
            let a = l.ha_status(Node::A);
            let b = l.ha_status(Node::B);
            matches!((a, b), (Some(a), Some(b))
            if a["state"] == "ACTIVE" && b["state"] == "STANDBY"
            && a["peer_connected"] == true && b["peer_connected"] == true)
        },
    );
    lab
}

fn epoch(lab: &Lab, n: Node) -> u64 {
    lab.ha_status(n)
        .and_then(|s| s["epoch"].as_u64())
        .unwrap_or(u64::MAX)
}

#[test]
fn kill9_of_the_active_is_taken_over_at_once_through_the_refused_reconnect() {
    if !require_root("kill9_of_the_active_is_taken_over_at_once_through_the_refused_reconnect") {
        return;
    }
    let _serial = common::timing_lock();
    let mut lab = pair("hak9", true);
    let e0 = epoch(&lab, Node::A);
    let t = Instant::now();
    lab.kill9(Node::A);
    lab.wait_state(Node::B, "ACTIVE", Duration::from_secs(5));
    let took = t.elapsed();
    // failover_timeout is 1s: the refused reconnect must beat it by far (a heartbeat of 100ms
    // plus polling the API from another namespace).
    assert!(
        took < Duration::from_millis(700),
        "takeover took {took:?}\n{}",
        lab.dump()
    );
    assert!(epoch(&lab, Node::B) > e0);
    let log = lab.log(Node::B);
    assert!(
        log.contains("refused the reconnect (process gone, host up)"),
        "{}",
        lab.dump()
    );

    // The primary returns: it syncs and, with preempt, takes the service back by a handoff.
    lab.restart(Node::A);
    lab.wait_state(Node::A, "ACTIVE", Duration::from_secs(10));
    lab.wait_state(Node::B, "STANDBY", Duration::from_secs(5));
    assert!(
        lab.log(Node::A)
            .contains("handoff from node-b (preemption by primary node-a)"),
        "{}",
        lab.dump()
    );
}

#[test]
fn sigstop_is_taken_over_after_failover_timeout_and_sigcont_steps_down() {
    if !require_root("sigstop_is_taken_over_after_failover_timeout_and_sigcont_steps_down") {
        return;
    }
    let _serial = common::timing_lock();
    let lab = pair("hastop", false);
    let t = Instant::now();
    lab.sigstop(Node::A);
    lab.wait_state(Node::B, "ACTIVE", Duration::from_secs(5));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "took over too early: {took:?}"
    );
    assert!(
        took < Duration::from_millis(2500),
        "took over too late: {took:?}\n{}",
        lab.dump()
    );
    assert!(
        lab.log(Node::B).contains("peer heartbeat timeout after"),
        "{}",
        lab.dump()
    );

    let t = Instant::now();
    lab.sigcont(Node::A);
    // The resumed node still believes it is ACTIVE; it must step down within about a
    // heartbeat once it hears the higher epoch.
    lab.wait_state(Node::A, "STANDBY", Duration::from_secs(5));
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(800),
        "resumed node stepped down after {took:?}\n{}",
        lab.dump()
    );
    // preempt = false: B keeps the service, A stays standby.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(lab.ha_state(Node::B).as_deref(), Some("ACTIVE"));
    assert_eq!(lab.ha_state(Node::A).as_deref(), Some("STANDBY"));
}

#[test]
fn sigterm_on_the_active_hands_off_before_it_exits() {
    if !require_root("sigterm_on_the_active_hands_off_before_it_exits") {
        return;
    }
    let mut lab = pair("haterm", true);
    lab.sigterm(Node::A);
    let st = lab.wait_exit(Node::A, Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
    // B was ACTIVE before A finished exiting: no wait for the failover timeout.
    lab.wait_state(Node::B, "ACTIVE", Duration::from_millis(500));
    let b = lab.log(Node::B);
    assert!(
        b.contains("handoff from node-a (shutdown)"),
        "{}",
        lab.dump()
    );
    assert!(
        lab.log(Node::A).contains("handed off to node-b (shutdown)"),
        "{}",
        lab.dump()
    );
}

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

const TOKEN: &str = "failover-token-0123456789";

/// `POST /api/v1/ha/failover` over real HTTP: refused without the bearer token or with a
/// wrong one (nothing moves), with the right one the active node hands off and the peer is
/// ACTIVE when the answer arrives; the node that is now STANDBY cannot hand off.
#[test]
fn api_failover_over_http_needs_the_token_and_hands_off() {
    if !require_root("api_failover_over_http_needs_the_token_and_hands_off") {
        return;
    }
    let with_token = NodeOpts {
        api_extra: format!("auth_token = \"{TOKEN}\""),
        ..opts(true)
    };
    let mut lab = Lab::new("haapi");
    lab.start(Node::A, &with_token);
    lab.start(Node::B, &with_token);
    lab.wait_for(
        "A ACTIVE and B STANDBY, linked",
        Duration::from_secs(15),
        |l| {
            matches!((l.ha_status(Node::A), l.ha_status(Node::B)), (Some(a), Some(b))
            if a["state"] == "ACTIVE" && b["state"] == "STANDBY"
            && a["peer_connected"] == true && b["peer_connected"] == true)
        },
    );
    let failover = |headers: &[&str]| {
        lab.api_post(Node::A, "/api/v1/ha/failover", headers)
            .expect("API answers")
    };
    let (code, body) = failover(&[]);
    assert_eq!(code, 401, "no token: {body}");
    let (code, body) = failover(&["Authorization: Bearer not-the-token-0123456789"]);
    assert_eq!(code, 401, "wrong token: {body}");
    let (code, body) = failover(&[&format!("Authorization: Basic {TOKEN}")]);
    assert_eq!(code, 401, "not a bearer token: {body}");
    assert_eq!(lab.ha_state(Node::A).as_deref(), Some("ACTIVE"));
    assert_eq!(lab.ha_state(Node::B).as_deref(), Some("STANDBY"));

    let bearer = format!("Authorization: Bearer {TOKEN}");
    let (code, body) = failover(&[&bearer]);
    assert_eq!(code, 200, "right token: {body}\n{}", lab.dump());
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(answer["ok"], true, "{body}");
    // The handoff is acknowledged only after B took over: no waiting needed.
    assert_eq!(
        lab.ha_state(Node::B).as_deref(),
        Some("ACTIVE"),
        "{}",
        lab.dump()
    );
    assert_eq!(lab.ha_state(Node::A).as_deref(), Some("STANDBY"));
    assert!(
        lab.log(Node::B)
            .contains("handoff from node-a (API request)"),
        "{}",
        lab.dump()
    );
    // A is STANDBY now: it has nothing to hand off.
    let (code, body) = failover(&[&bearer]);
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("only the ACTIVE node can hand off"), "{body}");
    assert_eq!(lab.ha_state(Node::B).as_deref(), Some("ACTIVE"));
}

/// Without `[api] auth_token` the mutating endpoints are off: even a request carrying a
/// bearer token is refused (403) and nothing moves.
#[test]
fn api_failover_without_a_configured_token_is_refused() {
    if !require_root("api_failover_without_a_configured_token_is_refused") {
        return;
    }
    let lab = pair("hanotok", true);
    let (code, body) = lab
        .api_post(
            Node::A,
            "/api/v1/ha/failover",
            &[&format!("Authorization: Bearer {TOKEN}")],
        )
        .expect("API answers");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("auth_token"), "{body}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.ha_state(Node::A).as_deref(), Some("ACTIVE"));
    assert_eq!(lab.ha_state(Node::B).as_deref(), Some("STANDBY"));
}

/// A node's active leases as (address, MAC), from its API.
fn active_leases(lab: &Lab, n: Node) -> Option<Vec<(String, String)>> {
    let (code, body) = lab.api_get(n, "/api/v1/leases?state=active&per_page=1000")?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let mut out: Vec<(String, String)> = v["leases"]
        .as_array()?
        .iter()
        .map(|l| {
            (
                l["ip"].as_str().unwrap_or_default().to_string(),
                l["mac"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    out.sort();
    Some(out)
}

/// A fresh DISCOVER from `client` (its earlier lease forgotten), answered by `expect`;
/// returns the leased address.
fn lease_from(lab: &Lab, client: usize, expect: Node) -> Ipv4Addr {
    let ns = &lab.clients()[client];
    let dir = lab.dir.path();
    let _ = std::fs::remove_file(dir.join(format!("dhclient-{}.leases", ns.name)));
    let lease = dhclient_once(ns, dir, &format!("sb{client}"))
        .unwrap_or_else(|| panic!("client {client} got no lease{}", lab.dump()));
    assert_eq!(
        lease.server_id,
        Some(expect.addr()),
        "client {client} served by the wrong node{}",
        lab.dump()
    );
    lease.ip.expect("leased address")
}

#[test]
fn a_split_brain_with_dhcp_on_both_sides_heals_to_the_same_leases_on_both() {
    if !require_root("a_split_brain_with_dhcp_on_both_sides_heals_to_the_same_leases_on_both") {
        return;
    }
    let o = NodeOpts {
        vip: false,
        dns: false,
        dhcp: true,
        ..Default::default()
    };
    let mut lab = Lab::new("hasb");
    for c in ["s0", "s1", "s2"] {
        lab.add_client(c);
    }
    lab.start(Node::A, &o);
    lab.start(Node::B, &o);
    lab.wait_for(
        "A ACTIVE, B STANDBY, linked",
        Duration::from_secs(15),
        |l| {
            matches!((l.ha_status(Node::A), l.ha_status(Node::B)), (Some(a), Some(b))
            if a["state"] == "ACTIVE" && b["state"] == "STANDBY" && b["peer_connected"] == true)
        },
    );

    // Both ACTIVE: neither can reach the other, the clients reach both.
    lab.isolate_ab();
    lab.wait_state(Node::B, "ACTIVE", Duration::from_secs(5));
    assert_eq!(lab.ha_state(Node::A).as_deref(), Some("ACTIVE"));

    // A serves s0 and s1; then B, knowing nothing of them, serves s2 and s0 again from the
    // same pool: the same addresses go to other clients, and s0 ends with one on each side.
    lab.mute(Node::B);
    let a0 = lease_from(&lab, 0, Node::A);
    let a1 = lease_from(&lab, 1, Node::A);
    lab.unmute(Node::B);
    lab.mute(Node::A);
    let b2 = lease_from(&lab, 2, Node::B);
    let b0 = lease_from(&lab, 0, Node::B);
    lab.unmute(Node::A);
    eprintln!("split brain: A gave s0 {a0}, s1 {a1}; B gave s2 {b2}, s0 {b0}");
    let (la, lb) = (active_leases(&lab, Node::A), active_leases(&lab, Node::B));
    assert_ne!(la, lb, "the two sides should disagree before the heal");

    lab.unisolate_ab();
    lab.wait_for(
        "one ACTIVE node, linked, both with the same active leases",
        Duration::from_secs(15),
        |l| {
            let states = [l.ha_state(Node::A), l.ha_state(Node::B)];
            let one_active = states
                .iter()
                .filter(|s| s.as_deref() == Some("ACTIVE"))
                .count()
                == 1;
            let (a, b) = (active_leases(l, Node::A), active_leases(l, Node::B));
            one_active && a.is_some() && a == b
        },
    );
    let leases = active_leases(&lab, Node::A).expect("leases");
    let mut ips: Vec<&String> = leases.iter().map(|(ip, _)| ip).collect();
    let mut macs: Vec<&String> = leases.iter().map(|(_, mac)| mac).collect();
    ips.sort();
    ips.dedup();
    macs.sort();
    macs.dedup();
    assert_eq!(ips.len(), leases.len(), "an address held twice: {leases:?}");
    assert_eq!(
        macs.len(),
        leases.len(),
        "a client with two addresses: {leases:?}"
    );
    // The latest binding of each address won: s2's and s0's from B.
    assert!(
        leases.contains(&(b2.to_string(), mac_of(&lab, 2))),
        "{leases:?}"
    );
    assert!(
        leases.contains(&(b0.to_string(), mac_of(&lab, 0))),
        "{leases:?}"
    );
}

/// The MAC of a client namespace's eth0, as the API writes it.
fn mac_of(lab: &Lab, client: usize) -> String {
    let out = lab.clients()[client].run(&["ip", "-br", "link", "show", "dev", "eth0"]);
    out.split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}

/// A node alone (its peer never came) serves, and a failover asked for through the API has
/// nobody to go to: 409 with the reason, and the node keeps serving at the same epoch.
#[test]
fn api_failover_without_a_standby_is_refused_with_409_and_the_node_stays_active() {
    if !require_root("api_failover_without_a_standby_is_refused_with_409") {
        return;
    }
    let mut lab = Lab::new("ha409");
    lab.start(
        Node::A,
        &NodeOpts {
            api_extra: format!("auth_token = \"{TOKEN}\""),
            ..opts(true)
        },
    );
    lab.wait_state(Node::A, "ACTIVE", Duration::from_secs(10));
    let e0 = epoch(&lab, Node::A);
    let (code, body) = lab
        .api_post(
            Node::A,
            "/api/v1/ha/failover",
            &[&format!("Authorization: Bearer {TOKEN}")],
        )
        .expect("API answers");
    assert_eq!(code, 409, "{body}\n{}", lab.dump());
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(answer["ok"], false, "{body}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("no connected standby peer (peer not connected)")),
        "the reason: {body}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.ha_state(Node::A).as_deref(), Some("ACTIVE"));
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

/// A lease's state (`active`, `expired`, ...) in the node's lease API.
fn lease_state(lab: &Lab, node: Node, ip: std::net::Ipv4Addr) -> Option<String> {
    let (code, body) = lab.api_get(node, &format!("/api/v1/leases/{ip}"))?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(v["state"].as_str()?.to_string())
}

/// Lease expiry end to end: a real client (ISC dhclient, sending a host name) takes a 10 s
/// lease from the pair and dies without releasing it. At expiry the active node publishes
/// `lease.expire` (a script hook receives it), the standby's lease API shows the lease
/// expired (replicated), and the name no longer resolves through the VIP.
#[test]
fn an_abandoned_lease_expires_with_an_event_is_replicated_and_its_name_leaves_dns() {
    if !require_root("an_abandoned_lease_expires_with_an_event_is_replicated") {
        return;
    }
    let mut lab = Lab::new("haexp");
    let events = lab.dir.path().join("expire-events");
    let full = NodeOpts {
        lease_time: "10s".into(),
        ..NodeOpts::default()
    };
    lab.start(
        Node::A,
        &NodeOpts {
            extra: format!(
                "[[hooks.script]]\nname = \"expired\"\nevents = [\"lease.expire\"]\ncommand = \"cat >> {}; echo >> {}\"\n",
                events.display(),
                events.display()
            ),
            ..full.clone()
        },
    );
    lab.start(Node::B, &full);
    lab.wait_for(
        "A ACTIVE and B STANDBY, linked",
        Duration::from_secs(15),
        |l| {
            matches!((l.ha_status(Node::A), l.ha_status(Node::B)), (Some(a), Some(b))
            if a["state"] == "ACTIVE" && b["state"] == "STANDBY"
            && a["peer_connected"] == true && b["peer_connected"] == true)
        },
    );

    let dir = lab.dir.path().to_path_buf();
    let client = lab.add_client("laptop");
    let lease = dhclient_once(client, &dir, "laptop").expect("dhclient got a lease");
    let bound = Instant::now();
    // The client dies without a RELEASE and never renews (T1 is 5 s away).
    for pid in client.pids() {
        // SAFETY: kill(2) on processes in a namespace this test made.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let ip = lease.ip.expect("leased address");
    let name = format!("laptop.{DOMAIN}");

    lab.wait_for("the name resolves", Duration::from_secs(5), |l| {
        l.dig(VIP, &name) == vec![ip]
    });
    assert_eq!(lease_state(&lab, Node::A, ip).as_deref(), Some("active"));
    assert_eq!(
        lease_state(&lab, Node::B, ip).as_deref(),
        Some("active"),
        "the ACK was replicated\n{}",
        lab.dump()
    );

    lab.wait_for("lease.expire on the hook", Duration::from_secs(15), |_| {
        std::fs::read_to_string(&events).is_ok_and(|t| t.contains(&ip.to_string()))
    });
    // Not at T1 or earlier: the clock is the lease's (whole seconds), `bound` is after the ACK.
    let waited = bound.elapsed();
    assert!(
        waited >= Duration::from_secs(7),
        "expired after {waited:?} of a 10 s lease"
    );
    let text = std::fs::read_to_string(&events).expect("events");
    let event: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("one event")).expect("event JSON");
    assert_eq!(event["type"], "lease.expire", "{text}");
    assert_eq!(event["node"], "node-a", "{text}");
    assert_eq!(event["lease"]["ip"], ip.to_string(), "{text}");
    assert_eq!(event["lease"]["hostname"], "laptop", "{text}");

    lab.wait_for("the standby has it expired", Duration::from_secs(5), |l| {
        lease_state(l, Node::B, ip).as_deref() == Some("expired")
    });
    assert_eq!(lease_state(&lab, Node::A, ip).as_deref(), Some("expired"));
    lab.wait_for("the name is gone", Duration::from_secs(5), |l| {
        l.dig(VIP, &name).is_empty()
    });
    let out = lab
        .c
        .try_run(&["dig", "+time=1", "+tries=1", &format!("@{VIP}"), &name, "A"]);
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("status: NXDOMAIN"), "{out}");
}

/// With HA on, the API listens on every address (the peer link shares its port): from a
/// client's namespace, client data needs a token, health and HA status do not; the read token
/// reads but does not change state.
#[test]
fn a_client_gets_401_on_client_data_and_200_on_health_and_the_read_token_only_reads() {
    if !require_root("a_client_gets_401_on_client_data_and_200_on_health") {
        return;
    }
    let mut lab = Lab::new("haapi");
    let o = NodeOpts {
        dhcp: true,
        dns: true,
        ..opts(true)
    };
    lab.start(Node::A, &o);
    lab.wait_state(Node::A, "ACTIVE", Duration::from_secs(15));
    let get = |ns: &common::netns::Netns, path: &str, headers: &[&str]| {
        common::lab::http_request(ns, Node::A.api(), "GET", path, headers)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    };
    let read = format!("Authorization: Bearer {}", common::lab::READ_TOKEN);
    for path in ["/api/v1/health", "/api/v1/ha/status"] {
        let (code, body) = get(&lab.c, path, &[]);
        assert_eq!(code, 200, "{path} from a client: {body}");
        assert!(
            !body.contains("\"mac\"") && !body.contains("hostname"),
            "{path} exposes no client data: {body}"
        );
    }
    for path in [
        "/api/v1/leases",
        "/api/v1/leases/10.0.0.100",
        "/metrics",
        "/api/v1/events",
        "/api/v1/dns/stats",
    ] {
        let (code, body) = get(&lab.c, path, &[]);
        assert_eq!(code, 401, "{path} from a client without a token: {body}");
        assert!(
            body.contains("read_token"),
            "{path}: says which token: {body}"
        );
        let (code, body) = get(&lab.c, path, &["Authorization: Bearer not-it"]);
        assert_eq!(code, 401, "{path} with a wrong token: {body}");
    }
    let (code, body) = get(&lab.c, "/api/v1/leases", &[&read]);
    assert_eq!(code, 200, "leases with the read token: {body}");
    // (From loopback no token is needed: tests/durability.rs reads leases that way.)
    // The read token does not change state: a failover asked with it is refused.
    let (code, body) = common::lab::http_request(
        &lab.c,
        Node::A.api(),
        "POST",
        "/api/v1/ha/failover",
        &[&read],
    )
    .expect("POST");
    assert!(
        code == 401 || code == 403,
        "failover with the read token: {code} {body}"
    );
    assert_eq!(lab.ha_state(Node::A).as_deref(), Some("ACTIVE"));
}

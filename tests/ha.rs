//! Two real daemons (an HA pair) in lab namespaces, mostly without VIP, DNS or DHCP: the state
//! machine. Process kill, SIGSTOP/SIGCONT, SIGTERM handoff, the failover API (409 without a
//! standby), API access from a client. Two tests run the whole product: a split brain with
//! DHCP served on both sides, and a lease's expiry reaching the hooks, the standby and DNS.
//! The peer link's own defences are `tests/peer_link.rs`.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::ha_pair::{active_leases, epoch, opts, pair, wait_linked};
use common::lab::{dhclient_once, Lab, Node, NodeOpts, DOMAIN, VIP};
use common::netns::require_root;

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
    // Taken over on silence: at the deadline, or when the VIP witness, asked just before it,
    // found nobody (two wordings of the same cause; a refused reconnect would be a bug here).
    let log = lab.log(Node::B);
    assert!(
        log.contains("peer heartbeat timeout after")
            || log.contains("no heartbeat from node-a for"),
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
    wait_linked(&lab, false);
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
    wait_linked(&lab, false);

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

/// Issue #14 item 5: the epoch is saved with the leases, so a restarted node does not start
/// again from 0 (where the other node's stale view of it would outrank it).
#[test]
fn a_restarted_node_resumes_from_the_epoch_it_saved() {
    if !require_root("a_restarted_node_resumes_from_the_epoch_it_saved") {
        return;
    }
    // The epoch lives in the lease database, which a node has when it serves DHCP.
    let mut lab = Lab::new("haep");
    let o = NodeOpts {
        dhcp: true,
        ..opts(false)
    };
    lab.start(Node::A, &o);
    lab.start(Node::B, &o);
    lab.wait_state(Node::A, "ACTIVE", Duration::from_secs(10));
    let e0 = epoch(&lab, Node::A);
    assert!(e0 >= 1, "the active node took over at least once: {e0}");
    lab.kill9(Node::A);
    lab.wait_state(Node::B, "ACTIVE", Duration::from_secs(5));
    lab.restart(Node::A);
    let e = epoch(&lab, Node::A);
    assert!(
        e >= e0,
        "restarted with epoch {e}, had {e0}\n{}",
        lab.dump()
    );
}

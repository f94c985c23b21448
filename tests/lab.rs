//! The failover lab proves itself: nodes reachable across the switch, the fault tools (port
//! down, A↔B cut, kill) do what the scenario tests rely on, and the daemon runs in a node.

mod common;

use std::time::{Duration, Instant};

use common::lab::{
    dhclient_once, http_get, Lab, Node, NodeOpts, Prober, DOMAIN, POOL, PROBE_INTERVAL,
    PROBE_TIMEOUT, VIP, WHO,
};
use common::netns::require_root;

/// Does `arping` from `ns` get an answer from `ip` within a second?
fn arp_reaches(ns: &common::netns::Netns, ip: &str) -> bool {
    ns.try_run(&["arping", "-c", "1", "-w", "1", "-I", "eth0", ip])
        .status
        .success()
}

#[test]
fn lab_nodes_answer_their_api_across_the_switch_and_the_fault_tools_work() {
    if !require_root("lab_nodes_answer_their_api_across_the_switch_and_the_fault_tools_work") {
        return;
    }
    let mut lab = Lab::new("api");
    lab.start(Node::A, &NodeOpts::standalone());
    lab.start(Node::B, &NodeOpts::standalone());

    // The client reaches both daemons' APIs through the bridge.
    for n in [Node::A, Node::B] {
        let (code, body) =
            http_get(&lab.c, n.api(), "/api/v1/health").expect("API across the switch");
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains(&format!("\"node\":\"{}\"", n.name())),
            "{body}"
        );
        assert!(lab.ha_status(n).is_some(), "ha/status of {}", n.name());
    }
    assert!(
        lab.log(Node::A).contains("started on node-a"),
        "{}",
        lab.log(Node::A)
    );

    // Isolating A and B at L2 separates the nodes from each other, not from the client.
    assert!(arp_reaches(&lab.a, "10.0.0.2"));
    lab.isolate_ab();
    assert!(
        !arp_reaches(&lab.a, "10.0.0.2"),
        "A still reaches B after the isolation"
    );
    assert!(arp_reaches(&lab.c, "10.0.0.1") && arp_reaches(&lab.c, "10.0.0.2"));
    lab.unisolate_ab();
    assert!(
        arp_reaches(&lab.a, "10.0.0.2"),
        "A does not reach B after healing"
    );

    // Cutting A↔B at IP: B's API is unreachable from A, both still from the client.
    assert!(http_get(&lab.a, Node::B.api(), "/api/v1/health").is_ok());
    lab.cut_ab();
    assert!(
        http_get(&lab.a, Node::B.api(), "/api/v1/health").is_err(),
        "A reaches B through the cut"
    );
    assert!(http_get(&lab.c, Node::B.api(), "/api/v1/health").is_ok());
    assert!(http_get(&lab.c, Node::A.api(), "/api/v1/health").is_ok());
    lab.heal_ab();
    assert!(
        http_get(&lab.a, Node::B.api(), "/api/v1/health").is_ok(),
        "cut not healed"
    );

    // Host lost: A's port down → the client cannot reach A; its own API still answers inside.
    lab.port_down(Node::A);
    assert!(http_get(&lab.c, Node::A.api(), "/api/v1/health").is_err());
    assert!(lab.api_get(Node::A, "/api/v1/health").is_some());
    lab.port_up(Node::A);
    lab.wait_for("A reachable again", Duration::from_secs(10), |l| {
        http_get(&l.c, Node::A.api(), "/api/v1/health").is_ok()
    });

    // SIGSTOP: the socket accepts (kernel backlog) but nothing answers; SIGCONT: it does again.
    lab.sigstop(Node::A);
    assert!(
        lab.api_get(Node::A, "/api/v1/health").is_none(),
        "a stopped daemon answered"
    );
    lab.sigcont(Node::A);
    lab.wait_for("A answers after SIGCONT", Duration::from_secs(10), |l| {
        l.api_get(Node::A, "/api/v1/health").is_some()
    });

    // kill -9 → nothing listens (refused at once), and a restart serves again.
    lab.kill9(Node::A);
    let t = Instant::now();
    assert!(http_get(&lab.c, Node::A.api(), "/api/v1/health").is_err());
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "refused should be immediate"
    );
    lab.restart(Node::A);
    assert!(lab.api_get(Node::A, "/api/v1/health").is_some());

    // SIGTERM → clean exit.
    lab.sigterm(Node::B);
    let st = lab.wait_exit(Node::B, Duration::from_secs(10));
    assert!(st.success(), "node-b exit status {st}");
}

#[test]
fn lab_namespaces_are_gone_after_drop_even_on_panic() {
    if !require_root("lab_namespaces_are_gone_after_drop_even_on_panic") {
        return;
    }
    let names = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let n2 = names.clone();
    let r = std::panic::catch_unwind(move || {
        let mut lab = Lab::new("drop");
        lab.start(Node::A, &NodeOpts::standalone());
        n2.lock().unwrap().extend([
            lab.sw.name.clone(),
            lab.a.name.clone(),
            lab.b.name.clone(),
            lab.c.name.clone(),
        ]);
        panic!("deliberate");
    });
    assert!(r.is_err());
    let list = common::netns::sh(&["ip", "netns", "list"]);
    for n in names.lock().unwrap().iter() {
        assert!(
            !list.split_whitespace().any(|w| w == n),
            "{n} left behind:\n{list}"
        );
    }
}

#[test]
fn lab_prober_sees_every_answer_and_counts_late_and_dead_ones_as_failed() {
    if !require_root("lab_prober_sees_every_answer_and_counts_late_and_dead_ones_as_failed") {
        return;
    }
    let _serial = common::timing_lock();
    let mut lab = Lab::new("dns");
    lab.start(Node::A, &NodeOpts::standalone());
    let a = Node::A.addr();
    lab.wait_for("DNS on node A", Duration::from_secs(15), |l| {
        l.dig(a, WHO) == vec![Node::A.who_answer()]
    });

    let server = std::net::SocketAddr::new(a.into(), 53);
    let probe = Prober::start(&lab.c, server, WHO, PROBE_INTERVAL, PROBE_TIMEOUT);
    std::thread::sleep(Duration::from_millis(500));
    // A stall: the queries sent meanwhile queue in A's socket and are answered on SIGCONT,
    // hundreds of ms late. The prober must count them failed, not answered: a test that
    // asserts "0 failed" must catch a stall, not only a dead server.
    // `sigstop` returns once every thread of A is stopped: queries sent before that may
    // still be answered in time.
    let t_signal = Instant::now();
    lab.sigstop(Node::A);
    let t_stop = Instant::now();
    std::thread::sleep(Duration::from_millis(400));
    lab.sigcont(Node::A);
    let t_cont = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let t_kill = Instant::now();
    lab.kill9(Node::A);
    std::thread::sleep(Duration::from_millis(300));
    let log = probe.stop();
    // A query sent just before the kill may be lost with the process: leave a margin.
    let margin = t_kill - Duration::from_millis(100);
    let before: Vec<_> = log
        .probes
        .iter()
        .filter(|p| p.sent + PROBE_TIMEOUT < t_signal)
        .collect();
    assert!(before.len() >= 10, "too few probes: {}", log.summary());
    assert!(
        before.iter().all(|p| p.node() == Some(Node::A)),
        "{}",
        log.summary()
    );
    // Sent while A was stopped, more than PROBE_TIMEOUT before SIGCONT: answered late.
    let stalled: Vec<_> = log
        .probes
        .iter()
        .filter(|p| p.sent > t_stop && p.sent + PROBE_TIMEOUT + PROBE_INTERVAL < t_cont)
        .collect();
    assert!(
        stalled.len() >= 5 && stalled.iter().all(|p| p.answer.is_none()),
        "late answers during a 400 ms stall must count as failed: {}",
        log.summary()
    );
    let resumed: Vec<_> = log
        .probes
        .iter()
        .filter(|p| p.sent > t_cont + PROBE_TIMEOUT && p.sent < margin)
        .collect();
    assert!(
        resumed.len() >= 10 && resumed.iter().all(|p| p.node() == Some(Node::A)),
        "A answers again after SIGCONT: {}",
        log.summary()
    );
    let after = log.after(t_kill).count();
    assert!(
        after >= 5 && log.failed_after(t_kill) == after,
        "{}",
        log.summary()
    );
    assert!(log.outage_after(t_kill).is_some());
    assert_eq!(log.last_node(), None);
}

#[test]
fn standalone_node_claims_the_vip_answers_dns_on_it_and_releases_it_on_sigterm() {
    if !require_root("standalone_node_claims_the_vip_answers_dns_on_it_and_releases_it_on_sigterm")
    {
        return;
    }
    let mut lab = Lab::new("vip1");
    lab.start(Node::A, &NodeOpts::standalone());
    lab.wait_for("VIP on node A", Duration::from_secs(15), |l| {
        l.vip_on(Node::A)
    });
    // The prober's socket is connected to the VIP: a reply from 10.0.0.1 would be dropped.
    let probe = lab.prober();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lab.who_answers(), Some(Node::A));
    let t = Instant::now();
    lab.sigterm(Node::A);
    let st = lab.wait_exit(Node::A, Duration::from_secs(15));
    let log = probe.stop();
    assert!(st.success(), "exit status {st}");
    let margin = t - Duration::from_millis(100);
    let before: Vec<_> = log.probes.iter().filter(|p| p.sent < margin).collect();
    assert!(before.len() >= 10, "{}", log.summary());
    assert!(
        before.iter().all(|p| p.node() == Some(Node::A)),
        "failed or foreign answers on the VIP: {}",
        log.summary()
    );
    assert!(
        !lab.vip_on(Node::A),
        "VIP still on A after SIGTERM{}",
        lab.dump()
    );
}

#[test]
fn standalone_lease_names_the_vip_and_dig_through_it_resolves_the_lease_hostname() {
    if !require_root(
        "standalone_lease_names_the_vip_and_dig_through_it_resolves_the_lease_hostname",
    ) {
        return;
    }
    let mut lab = Lab::new("lease1");
    lab.start(Node::A, &NodeOpts::standalone());
    lab.wait_for("VIP on node A", Duration::from_secs(15), |l| {
        l.vip_on(Node::A)
    });
    let dir = lab.dir.path().to_path_buf();
    let cl = lab.add_client("d1");
    let lease = dhclient_once(cl, &dir, "labhost").expect("dhclient got no lease");
    let ip = lease.ip.expect("leased address");
    assert!(POOL.0 <= ip && ip <= POOL.1, "{ip} outside the pool");
    assert_eq!(
        lease.server_id,
        Some(VIP),
        "server identifier must be the VIP: {lease:?}"
    );
    assert_eq!(
        lease.dns,
        vec![VIP],
        "DNS server must be the VIP: {lease:?}"
    );
    assert_eq!(lab.dig(VIP, WHO), vec![Node::A.who_answer()]);
    let host = format!("labhost.{DOMAIN}");
    lab.wait_for("lease hostname in DNS", Duration::from_secs(15), |l| {
        l.dig(VIP, &host) == vec![ip]
    });
}

//! `athena-dhcpd status` and `athena-dhcpd leases`, the real binary against a real HA pair
//! (VIP, DNS, DHCP) with a lease from a real `dhclient` and DNS queries from a real socket:
//! what the screen shows is what the pair is.

mod common;

use std::process::Output;
use std::time::Duration;

use athena_dhcpd::cli::status::StatusReport;
use athena_dhcpd::ha::agreement::AgreementView;
use athena_dhcpd::ha::HaState;
use common::ha_pair::full_pair;
use common::lab::{daemon_bin, dhclient_once, Lab, Node, POOL, READ_TOKEN};
use common::netns::{require_root, Netns};

/// Runs the binary with `args` inside `ns`.
fn run(ns: &Netns, args: &[&str]) -> Output {
    ns.cmd(daemon_bin())
        .args(args)
        .output()
        .expect("run athena-dhcpd")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn explain(o: &Output, lab: &Lab) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}{}",
        o.status,
        stdout(o),
        String::from_utf8_lossy(&o.stderr),
        lab.dump()
    )
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

fn line_with<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{text}"))
}

#[test]
fn status_shows_the_real_pair_and_leases_lists_a_real_clients_lease() {
    if !require_root("status_shows_the_real_pair_and_leases_lists_a_real_clients_lease") {
        return;
    }
    let mut lab = full_pair("stat");
    let dir = lab.dir.path().to_path_buf();
    let client = lab.add_client("laptop");
    let lease = dhclient_once(client, &dir, "laptop").expect("dhclient got a lease");
    let ip = lease.ip.expect("leased address");
    let mac = client.run(&["cat", "/sys/class/net/eth0/address"]);
    let mac = mac.trim().to_string();
    // The pool count is refreshed every 5 s: wait until the API shows the lease there.
    lab.wait_for(
        "the pool usage counts the lease",
        Duration::from_secs(15),
        |l| {
            l.api_get(Node::A, "/api/v1/pools")
                .is_some_and(|(c, b)| c == 200 && b.contains("\"active\":1"))
        },
    );

    let a_config = lab.config_path(Node::A).to_string_lossy().into_owned();
    // DNS queries through the VIP while status measures the rate (a query every 20 ms).
    let prober = lab.prober();
    // From node A's namespace with only --config: the API address and the read token come
    // from the config (the API is on 10.0.0.1, not loopback, so the token is needed).
    let out = run(&lab.a, &["status", "--config", &a_config]);
    let probes = prober.stop();
    assert!(out.status.success(), "status: {}", explain(&out, &lab));
    let screen = stdout(&out);
    // For the README: the screen from a real run.
    eprintln!("----- athena-dhcpd status -----\n{screen}-----");
    assert!(
        screen.starts_with("athena-dhcpd status from http://10.0.0.1:8067 at "),
        "{screen}"
    );
    let a = words(line_with(&screen, "node-a "));
    assert_eq!(a[..3], ["node-a", "primary", "ACTIVE"], "{screen}");
    assert_eq!(a[5], "up", "{screen}");
    let b = words(line_with(&screen, "node-b "));
    assert_eq!(b[..3], ["node-b", "secondary", "STANDBY"], "{screen}");
    assert!(
        screen.contains("pair: one node serves (this one)"),
        "{screen}"
    );
    // The config agreement, as the API says it (the JSON run below checks the same view).
    let agreement: AgreementView = lab
        .api_get(Node::A, "/api/v1/ha/config")
        .and_then(|(_, b)| serde_json::from_str(&b).ok())
        .expect("GET /api/v1/ha/config");
    let config_line = line_with(&screen, "config: ");
    if agreement.agreed == Some(false) {
        // The lab's nodes differ on purpose in one key: who.lab.test answers with each
        // node's own address, so a DNS reply says who answered.
        assert_eq!(
            config_line, "config: DIFFERS from node-b's in dns",
            "{screen}"
        );
        // The keys, once the peer's entries arrived. (The agreement sometimes never gets
        // them: tests/config_agreement.rs fails that way on main too, 3 runs in 5.)
        if agreement.differences.is_empty() {
            eprintln!("the config agreement named no key: {agreement:?}");
        } else {
            assert!(
                screen.contains("  dns.record[0].value: 192.0.2.1 here, 192.0.2.2 on node-b"),
                "{screen}"
            );
        }
    } else {
        eprintln!("the config agreement missed the lab's DNS difference: {agreement:?}");
        assert!(!config_line.contains("DIFFERS"), "{screen}");
    }
    let vip = words(line_with(&screen, "dns-vip "));
    assert_eq!(
        vip[..4],
        ["dns-vip", "10.0.0.3/24", "eth0", "node-a"],
        "{screen}"
    );
    let pool = format!("{}-{}", POOL.0, POOL.1);
    let p = words(line_with(&screen, &pool));
    // ACTIVE DECLINED CONFLICT OFFERED RESERVED FREE: one real client, nothing else.
    assert_eq!(
        p[1..8],
        ["10.0.0.0/24", "1", "0", "0", "0", "0", "99"],
        "{screen}"
    );
    let dns = line_with(&screen, "DNS ");
    let qps: f64 = words(dns)[1].parse().expect("queries/s");
    // The prober sends 50 queries/s; the sample is about a second, on a loaded machine.
    assert!(
        (20.0..=80.0).contains(&qps),
        "{qps} queries/s measured while the prober sent {} in all\n{screen}",
        probes.summary()
    );
    let t = line_with(&screen, "LAST ");
    assert!(t.contains("HA TRANSITIONS"), "{screen}");
    assert!(
        screen
            .lines()
            .any(|l| l.contains("node-a") && l.contains("STANDBY -> ACTIVE")),
        "no transition of node-a to ACTIVE listed:\n{screen}"
    );

    // --json: the report, in the daemon's own types.
    let out = run(&lab.a, &["status", "--config", &a_config, "--json"]);
    assert!(
        out.status.success(),
        "status --json: {}",
        explain(&out, &lab)
    );
    let r: StatusReport = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(r.node.state, HaState::Active);
    let peer = r.peer.as_ref().expect("the peer's own status");
    assert_eq!(peer.state, HaState::Standby);
    assert_eq!(peer.node, "node-b");
    assert!(r.node.vips[0].held && !peer.vips[0].held);
    let pools = r.pools.as_ref().expect("pools");
    assert_eq!((pools[0].size, pools[0].active), (100, 1));
    assert!(r.dns.is_some() && r.problems.is_empty(), "{r:?}");
    let config = r.config.as_ref().expect("config agreement");
    assert_eq!(
        config, &agreement,
        "status --json and /api/v1/ha/config disagree"
    );

    // leases, on the active node and (replicated) on the standby.
    for node in [Node::A, Node::B] {
        let config = lab.config_path(node).to_string_lossy().into_owned();
        let out = run(lab.ns(node), &["leases", "--config", &config]);
        assert!(out.status.success(), "leases: {}", explain(&out, &lab));
        let table = stdout(&out);
        eprintln!(
            "----- athena-dhcpd leases on {} -----\n{table}-----",
            node.name()
        );
        let row = words(line_with(&table, &format!("{ip} ")));
        assert_eq!(
            row[..5],
            [
                ip.to_string().as_str(),
                mac.as_str(),
                "laptop",
                "10.0.0.0/24",
                "active"
            ],
            "{table}"
        );
        assert!(table.ends_with("1 lease\n"), "{table}");
    }
    let filtered = |args: &[&str]| {
        let mut all = vec!["leases", "--config", &a_config];
        all.extend_from_slice(args);
        let out = run(&lab.a, &all);
        assert!(
            out.status.success(),
            "leases {args:?}: {}",
            explain(&out, &lab)
        );
        stdout(&out)
    };
    let upper = mac.to_uppercase().replace(':', "-");
    assert!(filtered(&["--mac", &upper]).ends_with("1 lease\n"));
    assert!(filtered(&["--ip", &ip.to_string(), "--subnet", "10.0.0.0/24"]).ends_with("1 lease\n"));
    assert!(filtered(&["--ip", "10.0.0.250"]).ends_with("0 leases\n"));
    assert!(filtered(&["--mac", "02:00:00:00:00:99"]).ends_with("0 leases\n"));

    // From the client's namespace, without a token: the HA part is open, the pools are not.
    let out = run(
        &lab.c,
        &[
            "status",
            "--config",
            "/nonexistent.toml",
            "--api",
            "http://10.0.0.1:8067",
        ],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out, &lab));
    assert!(line_with(&text, "node-a ").contains("ACTIVE"), "{text}");
    assert!(
        text.contains("problem: pools:") && text.contains("401") && text.contains("read_token"),
        "{text}"
    );
    // With --token it is whole again.
    let out = run(
        &lab.c,
        &[
            "status",
            "--config",
            "/nonexistent.toml",
            "--api",
            "http://10.0.0.1:8067",
            "--token",
            READ_TOKEN,
        ],
    );
    assert!(
        out.status.success(),
        "status --token: {}",
        explain(&out, &lab)
    );
    assert!(!stdout(&out).contains("problem:"), "{}", stdout(&out));
    // leases without a token from there: refused, and the error says which token.
    let out = run(
        &lab.c,
        &[
            "leases",
            "--config",
            "/nonexistent.toml",
            "--api",
            "http://10.0.0.1:8067",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out, &lab));
    assert!(
        err.contains("HTTP 401") && err.contains("read_token"),
        "{err}"
    );
}

#[test]
fn status_says_when_the_peer_is_gone_and_lists_the_takeover() {
    if !require_root("status_says_when_the_peer_is_gone_and_lists_the_takeover") {
        return;
    }
    let mut lab = full_pair("stgo");
    lab.kill9(Node::A);
    lab.wait_state(Node::B, "ACTIVE", Duration::from_secs(10));
    let b_config = lab.config_path(Node::B).to_string_lossy().into_owned();
    let out = run(&lab.b, &["status", "--config", &b_config]);
    assert!(out.status.success(), "status: {}", explain(&out, &lab));
    let screen = stdout(&out);
    eprintln!("----- athena-dhcpd status after the primary died -----\n{screen}-----");
    assert_eq!(
        words(line_with(&screen, "node-b "))[..3],
        ["node-b", "secondary", "ACTIVE"],
        "{screen}"
    );
    // What B knows of A: its name, the link down, A's API refusing.
    let a = words(line_with(&screen, "node-a "));
    assert_eq!(a[5], "down", "{screen}");
    assert!(
        screen.contains("  peer API: http://10.0.0.1:8067/api/v1/ha/status:"),
        "{screen}"
    );
    assert_eq!(
        words(line_with(&screen, "dns-vip "))[3],
        "node-b",
        "{screen}"
    );
    let takeover = screen
        .lines()
        .rev()
        .find(|l| l.contains("node-b") && l.contains("STANDBY -> ACTIVE"))
        .unwrap_or_else(|| panic!("B's takeover not listed:\n{screen}"));
    // The reason is the machine's own, whatever its words: not empty.
    assert!(
        takeover
            .split("epoch")
            .nth(1)
            .is_some_and(|r| r.split_whitespace().count() > 1),
        "{takeover}"
    );
}

//! Both nodes of a pair serve one configuration (issue #14): two real daemons whose files
//! differ in a pool name the differing key with both values in the log, the event stream,
//! health, a metric and `/api/v1/ha/config`; a SIGHUP that fixes one file clears it on both
//! within a heartbeat. Per-node keys (names, roles, addresses, tokens) are never a difference.
//! With the peer link's port blocked, the heartbeat datagrams' digests still report the
//! mismatch (by section; the keys when the link returns) and clear it after the fix.

mod common;

use std::time::{Duration, Instant};

use common::ha_pair::opts;
use common::lab::{daemon_bin, Lab, Node, NodeOpts};
use common::netns::require_root;

fn with_pool_end(end: &str) -> NodeOpts {
    NodeOpts {
        extra: format!(
            "[[subnet]]\nnetwork = \"10.0.0.0/24\"\n[[subnet.pool]]\nrange_start = \"10.0.0.100\"\nrange_end = \"{end}\"\n"
        ),
        ..opts(false)
    }
}

fn config_view(lab: &Lab, n: Node) -> serde_json::Value {
    match lab.api_get(n, "/api/v1/ha/config") {
        Some((200, body)) => serde_json::from_str(&body).unwrap_or_default(),
        _ => serde_json::Value::Null,
    }
}

#[test]
fn differing_pools_are_named_on_both_nodes_and_a_reload_of_one_file_clears_it() {
    if !require_root("differing_pools_are_named_on_both_nodes") {
        return;
    }
    let mut lab = Lab::new("cfga");
    lab.start(Node::A, &with_pool_end("10.0.0.200"));
    lab.start(Node::B, &with_pool_end("10.0.0.199"));
    let key = "subnet 10.0.0.0/24 pool[0].range_end";
    lab.wait_for("both nodes name the pool", Duration::from_secs(15), |l| {
        l.log(Node::A)
            .contains(&format!("{key}: 10.0.0.200 here, 10.0.0.199 on node-b"))
            && l.log(Node::B)
                .contains(&format!("{key}: 10.0.0.199 here, 10.0.0.200 on node-a"))
    });
    for (n, here, there) in [
        (Node::A, "10.0.0.200", "10.0.0.199"),
        (Node::B, "10.0.0.199", "10.0.0.200"),
    ] {
        let v = config_view(&lab, n);
        assert_eq!(v["agreed"], false, "{v}");
        assert_eq!(
            v["differing_sections"],
            serde_json::json!(["subnets"]),
            "{v}"
        );
        let d = &v["differences"];
        assert_eq!(
            d.as_array().map(Vec::len),
            Some(1),
            "only the pool differs: {v}"
        );
        assert_eq!(
            (
                d[0]["key"].as_str(),
                d[0]["here"].as_str(),
                d[0]["there"].as_str()
            ),
            (Some(key), Some(here), Some(there)),
            "{v}"
        );
        let (_, health) = lab.api_get(n, "/api/v1/health").expect("health");
        assert!(
            health.contains("degraded")
                && health.contains(&format!("config differs from {}: {key}", n.other().name())),
            "{health}"
        );
        let (_, metrics) = lab.api_get(n, "/metrics").expect("metrics");
        assert!(metrics.contains("athena_ha_config_mismatch 1"), "{metrics}");
        // Exactly one WARN line for the mismatch, however many heartbeats passed.
        let warns = lab.log(n).matches("config differs from").count();
        assert_eq!(warns, 1, "{}", lab.log(n));
    }

    // Before a deploy: B's file checked against what A serves (the token from the file).
    let (code, out) = check_against_a(&lab);
    assert_eq!(code, Some(1), "different: exit 1\n{out}");
    assert!(
        out.contains(&format!(
            "{key}: 10.0.0.199 here, 10.0.0.200 on {}",
            Node::A.api()
        )),
        "{out}"
    );

    // The admin fixes B's file and reloads it.
    lab.write_config(Node::B, &with_pool_end("10.0.0.200"));
    let (code, out) = check_against_a(&lab);
    assert_eq!(code, Some(0), "the same: exit 0\n{out}");
    assert!(out.contains("serves the same configuration"), "{out}");
    let t = Instant::now();
    lab.signal(Node::B, libc::SIGHUP);
    lab.wait_for("both agree again", Duration::from_secs(5), |l| {
        config_view(l, Node::A)["agreed"] == true && config_view(l, Node::B)["agreed"] == true
    });
    let took = t.elapsed();
    // A heartbeat is 100 ms here; the digest goes out at the reload, not at the next beat.
    assert!(took < Duration::from_millis(600), "cleared after {took:?}");
    eprintln!("mismatch cleared on both nodes {took:?} after the SIGHUP");
    for n in [Node::A, Node::B] {
        lab.wait_for("the clearing line", Duration::from_secs(2), |l| {
            l.log(n)
                .contains(&format!("config agrees with {} again", n.other().name()))
        });
        let (_, health) = lab.api_get(n, "/api/v1/health").expect("health");
        assert!(!health.contains("config differs"), "{health}");
        let (_, metrics) = lab.api_get(n, "/metrics").expect("metrics");
        assert!(metrics.contains("athena_ha_config_mismatch 0"), "{metrics}");
    }
}

const KEYS_PENDING: &str = "key details when the peer link returns";

/// Exactly one WARN line naming a config difference so far.
fn one_warn(lab: &Lab, n: Node) {
    let warns = lab.log(n).matches("config differs from").count();
    assert_eq!(warns, 1, "{}", lab.log(n));
}

#[test]
fn with_the_peer_link_blocked_the_heartbeat_datagrams_report_the_mismatch_and_its_fix() {
    if !require_root("with_the_peer_link_blocked_the_heartbeat_datagrams") {
        return;
    }
    let mut lab = Lab::new("cfgdg");
    // A firewall an admin forgot for the peer port: the link never comes up, the heartbeat
    // datagrams pass.
    lab.block_peer_link();
    lab.start(Node::A, &with_pool_end("10.0.0.200"));
    lab.start(Node::B, &with_pool_end("10.0.0.199"));
    lab.wait_for(
        "both nodes report differing sections",
        Duration::from_secs(15),
        |l| {
            [Node::A, Node::B].iter().all(|&n| {
                l.log(n).contains(&format!(
                    "config differs from {} in section(s) subnets (the heartbeat digests differ; {KEYS_PENDING})",
                    n.other().name()
                ))
            })
        },
    );
    for n in [Node::A, Node::B] {
        let st = lab.ha_status(n).expect("status");
        assert_eq!(st["peer_connected"], false, "the link is blocked: {st}");
        let v = config_view(&lab, n);
        assert_eq!(v["agreed"], false, "{v}");
        assert_eq!(v["peer"], n.other().name(), "{v}");
        assert_eq!(
            v["differing_sections"],
            serde_json::json!(["subnets"]),
            "{v}"
        );
        assert_ne!(
            v["peer_digest"]["sections"]["subnets"],
            serde_json::Value::Null
        );
        assert_ne!(
            v["peer_digest"]["sections"]["subnets"], v["digest"]["sections"]["subnets"],
            "{v}"
        );
        assert_eq!(v["differences"], serde_json::json!([]), "{v}");
        assert_eq!(v["note"], KEYS_PENDING, "{v}");
        let (_, health) = lab.api_get(n, "/api/v1/health").expect("health");
        assert!(
            health.contains("degraded")
                && health.contains(&format!(
                    "config differs from {} in section(s) subnets ({KEYS_PENDING})",
                    n.other().name()
                )),
            "{health}"
        );
        let (_, metrics) = lab.api_get(n, "/metrics").expect("metrics");
        assert!(metrics.contains("athena_ha_config_mismatch 1"), "{metrics}");
        one_warn(&lab, n);
    }

    // The port opened: the link comes up and brings the keys with both values.
    lab.unblock_peer_link();
    let key = "subnet 10.0.0.0/24 pool[0].range_end";
    lab.wait_for("the keys over the link", Duration::from_secs(15), |l| {
        l.log(Node::A)
            .contains(&format!("{key}: 10.0.0.200 here, 10.0.0.199 on node-b"))
            && l.log(Node::B)
                .contains(&format!("{key}: 10.0.0.199 here, 10.0.0.200 on node-a"))
    });
    let v = config_view(&lab, Node::A);
    assert_eq!(v["differences"][0]["key"], key, "{v}");
    assert_eq!(v["note"], serde_json::Value::Null, "{v}");

    // Blocked again: the link dies of silence; the fix reaches A by datagram alone.
    lab.block_peer_link();
    lab.wait_for("the link closed on both", Duration::from_secs(10), |l| {
        [Node::A, Node::B]
            .iter()
            .all(|&n| l.ha_status(n).is_some_and(|s| s["peer_connected"] == false))
    });
    lab.write_config(Node::B, &with_pool_end("10.0.0.200"));
    let t = Instant::now();
    lab.signal(Node::B, libc::SIGHUP);
    lab.wait_for("both agree again", Duration::from_secs(5), |l| {
        config_view(l, Node::A)["agreed"] == true && config_view(l, Node::B)["agreed"] == true
    });
    let took = t.elapsed();
    // The next datagram carries the new digest: a heartbeat (100 ms) and the reload.
    assert!(took < Duration::from_secs(1), "cleared after {took:?}");
    eprintln!("mismatch cleared by datagram on both nodes {took:?} after the SIGHUP");
    for n in [Node::A, Node::B] {
        lab.wait_for("the clearing line", Duration::from_secs(2), |l| {
            l.log(n)
                .contains(&format!("config agrees with {} again", n.other().name()))
        });
        let st = lab.ha_status(n).expect("status");
        assert_eq!(
            st["peer_connected"], false,
            "cleared without the link: {st}"
        );
        let (_, health) = lab.api_get(n, "/api/v1/health").expect("health");
        assert!(!health.contains("config differs"), "{health}");
        let (_, metrics) = lab.api_get(n, "/metrics").expect("metrics");
        assert!(metrics.contains("athena_ha_config_mismatch 0"), "{metrics}");
    }
}

/// `athena-dhcpd check-config B's-file --peer A` from B's namespace: exit code and output.
fn check_against_a(lab: &Lab) -> (Option<i32>, String) {
    let file = lab.config_path(Node::B).display().to_string();
    let peer = Node::A.api().to_string();
    let out = lab
        .ns(Node::B)
        .try_run(&[daemon_bin(), "check-config", &file, "--peer", &peer]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// An invalid file is exit 2 before any peer is asked.
#[test]
fn check_config_with_a_peer_refuses_an_invalid_file_with_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[[subnet]]\nnetwrok = \"10.0.0.0/24\"\n").expect("write");
    let out = std::process::Command::new(daemon_bin())
        .args([
            "check-config",
            &file.display().to_string(),
            "--peer",
            "127.0.0.1:1",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("netwrok"));
}

//! Both nodes of a pair serve one configuration (issue #14): two real daemons whose files
//! differ in a pool name the differing key with both values in the log, the event stream,
//! health, a metric and `/api/v1/ha/config`; a SIGHUP that fixes one file clears it on both
//! within a heartbeat. Per-node keys (names, roles, addresses, tokens) are never a difference.

mod common;

use std::time::{Duration, Instant};

use common::ha_pair::opts;
use common::lab::{Lab, Node, NodeOpts};
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

    // The admin fixes B's file and reloads it.
    lab.write_config(Node::B, &with_pool_end("10.0.0.200"));
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

//! The HA pair most HA tests start from: two daemons in the failover lab with the peer link,
//! no VIP, DNS or DHCP, fast timers (heartbeat 100 ms, failover_timeout 1 s).

use std::time::Duration;

use super::lab::{Lab, Node, NodeOpts};

pub fn opts(preempt: bool) -> NodeOpts {
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
pub fn pair(tag: &str, preempt: bool) -> Lab {
    let mut lab = Lab::new(tag);
    lab.start(Node::A, &opts(preempt));
    lab.start(Node::B, &opts(preempt));
    wait_linked(&lab, false);
    lab
}

/// The node's HA epoch (`u64::MAX` when its API does not answer).
pub fn epoch(lab: &Lab, n: Node) -> u64 {
    lab.ha_status(n)
        .and_then(|s| s["epoch"].as_u64())
        .unwrap_or(u64::MAX)
}

/// The full product as a pair (VIP, DNS and DHCP on both nodes, [`NodeOpts::default`]):
/// A ACTIVE holding the VIP, B STANDBY, linked.
pub fn full_pair(tag: &str) -> Lab {
    let mut lab = Lab::new(tag);
    let opts = NodeOpts::default();
    lab.start(Node::A, &opts);
    lab.start(Node::B, &opts);
    wait_linked(&lab, true);
    lab
}

/// Waits (up to 15 s) until A is ACTIVE and B STANDBY with the peer link up on both sides,
/// and, `with_vip`, A holds the VIP: the start every pair test needs before it acts.
pub fn wait_linked(lab: &Lab, with_vip: bool) {
    let what = if with_vip {
        "A ACTIVE with the VIP and B STANDBY, linked"
    } else {
        "A ACTIVE and B STANDBY, linked"
    };
    lab.wait_for(what, Duration::from_secs(15), |l| {
        let linked = matches!((l.ha_status(Node::A), l.ha_status(Node::B)), (Some(a), Some(b))
            if a["state"] == "ACTIVE" && b["state"] == "STANDBY"
            && a["peer_connected"] == true && b["peer_connected"] == true);
        linked && (!with_vip || l.vip_on(Node::A))
    });
}

/// A node's active leases as (address, MAC), sorted; None while its API does not answer.
pub fn active_leases(lab: &Lab, n: Node) -> Option<Vec<(String, String)>> {
    let (code, body) = lab.api_get(n, "/api/v1/leases?state=active&per_page=1000")?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let mut out: Vec<(String, String)> = v["leases"]
        .as_array()?
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or_default().to_string();
            (s("ip"), s("mac"))
        })
        .collect();
    out.sort();
    Some(out)
}

//! The status screen from reports built with the daemon's own types and passed through JSON,
//! as the command reads them.

use std::net::Ipv4Addr;

use super::*;
use crate::config::Difference;
use crate::ha::agreement::AgreementView;
use crate::ha::HaState;
use crate::lease::{Lease, LeaseState};
use crate::vip::VipStatus;

/// 2026-12-02 12:34:56 UTC.
const NOW: u64 = 1_796_214_896_000;

fn node(name: &str, role: &str, state: HaState, epoch: u64) -> HaStatus {
    let mut s = HaStatus::standalone(name, role);
    s.enabled = true;
    s.state = state;
    s.epoch = epoch;
    s.peer_connected = true;
    s.last_heartbeat = Some(NOW - 80);
    s.lease_watermark = 14;
    s.vips = vec![VipStatus {
        name: "dns-vip".into(),
        address: "10.0.0.3/24".into(),
        interface: "eth0".into(),
        held: state == HaState::Active,
        since: Some(NOW - 125_000),
        last_error: None,
    }];
    s
}

fn transition(at: u64, from: HaState, to: HaState, epoch: u64, reason: &str) -> HaTransition {
    HaTransition {
        at,
        from,
        to,
        epoch,
        reason: reason.into(),
    }
}

fn pools() -> Vec<PoolUsage> {
    let cfg = crate::config::parse(
        "[[subnet]]\nnetwork = \"10.0.0.0/24\"\n[[subnet.pool]]\nrange_start = \"10.0.0.100\"\nrange_end = \"10.0.0.199\"\n",
        std::path::Path::new("t.toml"),
    )
    .expect("config");
    let plan = crate::dhcp::plan::Plan::from_config(&cfg);
    let lease = Lease {
        ip: Ipv4Addr::new(10, 0, 0, 100),
        mac: [2, 0, 0, 0, 0, 1],
        client_id: None,
        hostname: None,
        subnet: "10.0.0.0/24".into(),
        state: LeaseState::Active,
        start: 0,
        expiry: u64::MAX,
        updated_ms: 0,
        relay_info: None,
        classes: Vec::new(),
    };
    let mut index = crate::lease::LeaseIndex::new();
    index.upsert(lease);
    crate::dhcp::pools::usage(&plan, &index, &[], NOW / 1000)
}

fn healthy_pair() -> StatusReport {
    let mut a = node("node-a", "primary", HaState::Active, 2);
    a.peer_node = Some("node-b".into());
    a.peer_state = Some(HaState::Standby);
    a.peer_address = Some("10.0.0.2:8067".into());
    a.transitions = vec![transition(
        NOW - 125_000,
        HaState::Standby,
        HaState::Active,
        2,
        "peer node-b handed the service over (shutdown)",
    )];
    let mut b = node("node-b", "secondary", HaState::Standby, 2);
    b.transitions = vec![
        transition(
            NOW - 300_000,
            HaState::Standby,
            HaState::Active,
            1,
            "no peer within failover_timeout",
        ),
        transition(
            NOW - 125_100,
            HaState::Active,
            HaState::Standby,
            1,
            "handed the service to node-a",
        ),
    ];
    StatusReport {
        api: "http://10.0.0.1:8067".into(),
        taken_at: NOW,
        node: a,
        peer: Some(b),
        peer_error: None,
        pools: Some(pools()),
        dns: Some(DnsSample {
            window_ms: 1000,
            before: DnsCounters {
                queries: 100,
                cache_hits: 30,
                cache_misses: 10,
            },
            after: DnsCounters {
                queries: 112,
                cache_hits: 39,
                cache_misses: 11,
            },
        }),
        config: Some(AgreementView {
            peer: Some("node-b".into()),
            agreed: Some(true),
            ..Default::default()
        }),
        problems: Vec::new(),
    }
}

/// What `--json` prints and the screen is made from: the report survives JSON unchanged.
fn through_json(r: &StatusReport) -> StatusReport {
    let text = serde_json::to_string(r).expect("json");
    let back: StatusReport = serde_json::from_str(&text).expect("parse");
    assert_eq!(&back, r);
    back
}

fn line_with<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{text}"))
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[test]
fn a_healthy_pair_fits_one_screen_with_every_part() {
    let text = render(&through_json(&healthy_pair()), NOW);
    assert!(text.lines().count() <= 24, "longer than a screen:\n{text}");
    assert!(
        text.starts_with(
            "athena-dhcpd status from http://10.0.0.1:8067 at 2026-12-02 12:34:56 UTC"
        ),
        "{text}"
    );
    assert_eq!(
        words(line_with(&text, "node-a ")),
        ["node-a", "primary", "ACTIVE", "2", "14", "up", "0.1", "s", "ago"]
    );
    assert_eq!(
        words(line_with(&text, "node-b "))[..4],
        ["node-b", "secondary", "STANDBY", "2"]
    );
    assert!(text.contains("pair: one node serves (this one)"), "{text}");
    assert!(
        text.contains("config: both nodes serve the same config"),
        "{text}"
    );
    assert_eq!(
        words(line_with(&text, "dns-vip ")),
        [
            "dns-vip",
            "10.0.0.3/24",
            "eth0",
            "node-a",
            "12:32:51",
            "(2m05s",
            "ago)"
        ]
    );
    assert_eq!(
        words(line_with(&text, "10.0.0.100-10.0.0.199 ")),
        [
            "10.0.0.100-10.0.0.199",
            "10.0.0.0/24",
            "1",
            "0",
            "0",
            "0",
            "0",
            "99",
            "1%"
        ]
    );
    assert!(
        text.contains("DNS  12.0 queries/s over 1.0 s; cache hit rate 90% (9/10) now, 78% (39/50) since start"),
        "{text}"
    );
    // Both nodes' transitions, merged in time order.
    let t: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("LAST 3 HA TRANSITIONS"))
        .skip(1)
        .collect();
    assert_eq!(t.len(), 3, "{text}");
    assert!(
        t[0].starts_with("12:29:56.000  node-b     STANDBY -> ACTIVE  epoch 1"),
        "{text}"
    );
    assert!(
        t[1].contains("node-b") && t[1].contains("handed the service to node-a"),
        "{text}"
    );
    assert!(
        t[2].contains("node-a") && t[2].contains("STANDBY -> ACTIVE"),
        "{text}"
    );
}

#[test]
fn an_unreachable_peer_is_shown_from_what_the_node_knows() {
    let mut r = healthy_pair();
    r.peer = None;
    r.peer_error = Some("http://10.0.0.2:8067/api/v1/ha/status: connection refused".into());
    r.node.peer_connected = false;
    r.node.peer_state = None;
    r.node.last_heartbeat = Some(NOW - 4_000);
    let text = render(&through_json(&r), NOW);
    assert_eq!(
        words(line_with(&text, "node-a "))[5..],
        ["down", "4.0", "s", "ago"]
    );
    assert_eq!(
        words(line_with(&text, "node-b ")),
        ["node-b", "?", "?", "?", "?", "down", "?"]
    );
    assert!(
        text.contains("  peer API: http://10.0.0.2:8067/api/v1/ha/status: connection refused"),
        "{text}"
    );
    assert!(text.contains("pair: one node serves (this one)"), "{text}");
}

#[test]
fn two_active_nodes_and_a_vip_on_both_are_called_out() {
    let mut r = healthy_pair();
    let b = r.peer.as_mut().expect("peer");
    b.state = HaState::Active;
    b.vips[0].held = true;
    b.vips[0].last_error = Some("interface \"eth0\" has no carrier".into());
    let text = render(&through_json(&r), NOW);
    assert!(
        text.contains("pair: BOTH NODES ACTIVE (split brain)"),
        "{text}"
    );
    assert_eq!(words(line_with(&text, "dns-vip "))[3], "node-a+node-b");
    assert!(
        text.contains("  error on node-b: interface \"eth0\" has no carrier"),
        "{text}"
    );
}

#[test]
fn no_active_node_is_called_out() {
    let mut r = healthy_pair();
    r.node.state = HaState::Standby;
    r.node.vips[0].held = false;
    let text = render(&r, NOW);
    assert!(text.contains("pair: NO NODE IS ACTIVE"), "{text}");
    assert_eq!(words(line_with(&text, "dns-vip "))[3], "nobody");
}

#[test]
fn only_the_latest_ten_transitions_of_the_pair_are_listed() {
    let mut r = healthy_pair();
    r.node.transitions = (0..8)
        .map(|i| {
            transition(
                NOW - 100_000 + i * 2_000,
                HaState::Standby,
                HaState::Active,
                i,
                "a",
            )
        })
        .collect();
    r.peer.as_mut().expect("peer").transitions = (0..5)
        .map(|i| {
            transition(
                NOW - 99_000 + i * 2_000,
                HaState::Active,
                HaState::Standby,
                i,
                "b",
            )
        })
        .collect();
    let all = pair_transitions(&r);
    assert_eq!(all.len(), 10);
    assert!(all.windows(2).all(|w| w[0].1.at <= w[1].1.at));
    // The three oldest (A at -100 s, B at -99 s, A at -98 s) are the ones left out.
    assert_eq!(all[0].1.at, NOW - 97_000);
    let text = render(&r, NOW);
    assert!(text.contains("LAST 10 HA TRANSITIONS"), "{text}");
    assert!(text.lines().count() <= 32, "{text}");
}

#[test]
fn a_standalone_node_and_missing_parts_say_so() {
    let mut r = healthy_pair();
    r.node = HaStatus::standalone("solo", "primary");
    r.peer = None;
    r.dns = None;
    r.pools = None;
    r.problems = vec![
        "pools: http://x/api/v1/pools: HTTP 401 Unauthorized: this endpoint needs a token".into(),
    ];
    let text = render(&through_json(&r), NOW);
    assert!(
        text.contains("node solo (primary): HA off, serving standalone, state ACTIVE"),
        "{text}"
    );
    assert!(!text.contains("POOL") && !text.contains("DNS "), "{text}");
    assert!(
        text.contains("HA TRANSITIONS: none since the nodes started"),
        "{text}"
    );
    assert!(
        text.contains("problem: pools: http://x/api/v1/pools: HTTP 401"),
        "{text}"
    );
}

#[test]
fn the_peer_is_asked_with_this_apis_scheme() {
    assert_eq!(
        peer_base("http://127.0.0.1:8067", "10.0.0.2:8067"),
        "http://10.0.0.2:8067"
    );
    assert_eq!(
        peer_base("https://a:8067", "[fd00::2]:8067"),
        "https://[fd00::2]:8067"
    );
}

#[test]
fn a_dns_sample_reads_the_apis_stats_shape() {
    let wire: DnsStatsWire = serde_json::from_value(serde_json::json!({
        "queries": {"local": 3, "cached": 4, "forwarded": 5, "servfail": 1, "notimp": 0, "overload": 0},
        "cache": {"entries": 2, "capacity": 10, "hits": 4, "misses": 5},
        "inflight": 0
    }))
    .expect("parse");
    assert_eq!(
        DnsCounters::from(wire),
        DnsCounters {
            queries: 13,
            cache_hits: 4,
            cache_misses: 5
        }
    );
}

#[test]
fn a_config_difference_is_named_with_both_values() {
    let mut r = healthy_pair();
    let difference = |i: u8| Difference {
        key: format!("subnet 10.0.0.0/24 pool[{i}].range_end"),
        here: Some("10.0.0.200".into()),
        there: None,
    };
    r.config = Some(AgreementView {
        peer: Some("node-b".into()),
        differing_sections: vec!["subnets".into()],
        differences: (0..5).map(difference).collect(),
        agreed: Some(false),
        ..Default::default()
    });
    let text = render(&through_json(&r), NOW);
    assert!(
        text.contains("config: DIFFERS from node-b's in subnets"),
        "{text}"
    );
    assert!(
        text.contains(
            "  subnet 10.0.0.0/24 pool[0].range_end: 10.0.0.200 here, (not set) on node-b"
        ),
        "{text}"
    );
    assert!(!text.contains("pool[3]"), "{text}");
    assert!(
        text.contains("  and 2 more (GET /api/v1/ha/config)"),
        "{text}"
    );
    // The peer link down: only the digests came.
    r.config = Some(AgreementView {
        peer: Some("node-b".into()),
        differing_sections: vec!["subnets".into()],
        agreed: Some(false),
        note: Some(crate::ha::agreement::KEYS_PENDING.into()),
        ..Default::default()
    });
    let text = render(&through_json(&r), NOW);
    assert!(
        text.contains(
            "config: DIFFERS from node-b's in subnets\n  (key details when the peer link returns)\n"
        ),
        "{text}"
    );
}

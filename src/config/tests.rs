//! Config tests: every default, every validation error (with its line and key), and the
//! reference design's snippets loading as written.

use super::*;
use std::time::Duration;

const SECRET: &str = "shared_secret = \"0123456789abcdef0123\"\n";

fn parse_str(text: &str) -> Result<Config, ConfigError> {
    parse(text, Path::new("/etc/athena-dhcpd/test.toml"))
}

/// Asserts the text is refused with an error at `line` naming `key` and containing `words`.
#[track_caller]
fn refused(text: &str, line: usize, key: &str, words: &str) -> ConfigError {
    let e = parse_str(text).expect_err("config should be refused");
    assert_eq!(e.line, line, "line of: {e}");
    assert_eq!(e.key, key, "key of: {e}");
    assert!(
        e.message.contains(words),
        "message {:?} lacks {words:?}",
        e.message
    );
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("/etc/athena-dhcpd/test.toml:{line}:")),
        "{shown}"
    );
    assert!(shown.contains(key), "{shown}");
    e
}

#[test]
fn empty_file_gives_every_default() {
    let c = parse_str("").expect("empty config is valid");
    assert_eq!(c.server.log_level, LogLevel::Info);
    assert!(c.server.drop_privileges);
    assert_eq!(c.server.dhcp_port, 67);
    assert_eq!(
        c.server.lease_db,
        PathBuf::from("/var/lib/athena-dhcpd/leases.redb")
    );
    assert_eq!(c.server.decline_hold, Dur::secs(3600));
    assert_eq!(c.server.offer_hold, Dur::secs(30));
    assert_eq!(c.server.rate_limit_per_mac, 10);
    assert_eq!(c.server.rate_limit_global, 0);
    assert!(c.api.enabled);
    assert_eq!(c.api.listen, "127.0.0.1:8067".parse().unwrap());
    assert_eq!(c.api.auth_token, None);
    assert!(!c.ha.enabled);
    assert_eq!(c.ha.role, Role::Primary);
    assert_eq!(c.ha.listen_address, "0.0.0.0:8067".parse().unwrap());
    assert_eq!(c.ha.heartbeat_interval, Dur::millis(200));
    assert_eq!(c.ha.failover_timeout, Dur::secs(1));
    assert!(c.ha.preempt);
    assert_eq!(c.ha.max_ack_delay, Dur::millis(250));
    assert_eq!(c.ha.witness_timeout(), Duration::from_millis(200));
    assert_eq!(c.ha.heartbeat_port, 8068);
    assert!(!c.dns.enabled);
    assert_eq!(c.dns.listen_udp, "0.0.0.0:53".parse().unwrap());
    assert_eq!(c.dns.tcp_addr(), "0.0.0.0:53".parse().unwrap());
    assert_eq!(c.dns.cache_size, 10_000);
    assert_eq!(c.dns.upstream_timeout, Dur::secs(2));
    assert_eq!(c.dns.lease_ttl, Dur::secs(300));
    assert_eq!(c.defaults.lease_time, Dur::secs(3600));
    assert_eq!(c.hooks.script_timeout, Dur::secs(10));
    assert_eq!(c.hooks.script_concurrency, 4);
    assert_eq!(c.hooks.queue_size, 1024);
    assert!(c.subnets.is_empty());
    assert_eq!(c.api_listen(), Some("127.0.0.1:8067".parse().unwrap()));
}

#[test]
fn subnet_and_hook_defaults() {
    let c = parse_str(
        "[[subnet]]\nnetwork = \"10.0.0.0/24\"\n[[hooks.vip]]\nname = \"v\"\naddress = \"10.0.0.3/24\"\ninterface = \"eth0\"\n\
         [[hooks.webhook]]\nname = \"w\"\nevents = [\"*\"]\nurl = \"http://127.0.0.1:9/x\"\n",
    )
    .expect("valid");
    let t = c.subnets[0].lease_times(&c.defaults);
    assert_eq!(t.lease, Duration::from_secs(3600));
    assert_eq!(t.renewal, Duration::from_secs(1800));
    assert_eq!(t.rebind, Duration::from_secs(3150));
    let v = &c.hooks.vips[0];
    assert_eq!(v.events, vec!["ha.failover".to_string()]);
    assert_eq!(
        (v.garp_count, v.garp_interval, v.garp_refresh),
        (3, Dur::secs(1), None)
    );
    assert_eq!(c.hooks.webhooks[0].timeout, Dur::secs(5));
    assert_eq!(c.hooks.webhooks[0].retries, 3);
    assert_eq!(
        c.vip_in_subnet(&"10.0.0.0/24".parse().unwrap()),
        Some(Ipv4Addr::new(10, 0, 0, 3))
    );
    assert_eq!(c.vip_in_subnet(&"10.9.0.0/24".parse().unwrap()), None);
}

#[test]
fn ha_listener_serves_the_api_when_ha_is_on() {
    let c = parse_str(&format!(
        "[ha]\nenabled = true\npeer_address = \"10.0.0.2:8067\"\n{SECRET}"
    ))
    .expect("valid");
    assert_eq!(c.api_listen(), Some("0.0.0.0:8067".parse().unwrap()));
    assert_eq!(
        c.ha.peer_socket_addr(),
        Some("10.0.0.2:8067".parse().unwrap())
    );
}

#[test]
fn durations_parse_and_print() {
    assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
    assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
    for bad in ["", "10", "s", "10x", "1h30", "-1s", "ms10"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
    }
    assert_eq!(Dur(Duration::from_secs(5400)).to_string(), "1h30m");
    assert_eq!(Dur(Duration::from_millis(150)).to_string(), "150ms");
}

#[test]
fn event_patterns_match_exact_family_and_all() {
    use crate::events::pattern_matches as event_matches;
    assert!(event_matches("ha.failover", "ha.failover"));
    assert!(!event_matches("ha.failover", "ha.peer_up"));
    assert!(event_matches("ha.*", "ha.peer_up"));
    assert!(!event_matches("ha.*", "hax.peer_up"));
    assert!(!event_matches("lease.*", "ha.failover"));
    assert!(event_matches("*", "vip.claimed"));
}

// --- The reference design's snippets -------------------------------------------------------

const REFERENCE_NODE_A: &str = r#"
[ha]
enabled = true
role = "primary"
peer_address = "10.0.0.2:8067"    # node B's real IP
listen_address = "0.0.0.0:8067"
shared_secret = "0123456789abcdef0123"

[dns]
enabled = true
listen_udp = "0.0.0.0:53"

[defaults]
dns_servers = ["10.0.0.3"]    # the VIP, not a physical IP
domain_name = "home.lan"

[[subnet]]
network = "10.0.0.0/24"
dns_servers = ["10.0.0.3"]

[[hooks.script]]
name = "floating-ip"
events = ["ha.failover"]
command = "/etc/athena-dhcpd/hooks/floating-ip.sh"
timeout = "5s"
"#;

#[test]
fn reference_snippets_load_as_written_with_a_secret() {
    let a = parse_str(REFERENCE_NODE_A).expect("node A loads");
    assert_eq!(a.ha.role, Role::Primary);
    assert_eq!(
        a.subnets[0].dns_servers(&a.defaults),
        &[Ipv4Addr::new(10, 0, 0, 3)]
    );
    assert_eq!(a.subnets[0].domain_name(&a.defaults), Some("home.lan"));
    assert_eq!(a.hooks.scripts[0].timeout, Some(Dur::secs(5)));
    let b_text = REFERENCE_NODE_A
        .replace("role = \"primary\"", "role = \"secondary\"")
        .replace("10.0.0.2:8067", "10.0.0.1:8067");
    let b = parse_str(&b_text).expect("node B loads");
    assert_eq!(b.ha.role, Role::Secondary);
    assert_eq!(b.ha.peer_address.as_deref(), Some("10.0.0.1:8067"));
}

#[test]
fn shipped_example_configs_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for name in ["node-a.toml", "node-b.toml", "athena-dhcpd.toml"] {
        let c = load(&dir.join(name)).unwrap_or_else(|e| panic!("{e}"));
        if name != "athena-dhcpd.toml" {
            assert!(c.ha.enabled && c.dns.enabled, "{name}");
            assert_eq!(c.hooks.vips.len(), 1, "{name} uses the built-in VIP hook");
            assert!(c.hooks.scripts.is_empty(), "{name} needs no script hook");
        }
    }
}

// --- Every validation error, with its place ------------------------------------------------

#[test]
fn typo_in_a_key_is_refused_with_line_and_key() {
    let e = refused(
        "[ha]\nenabled = false\nfailover_timout = \"5s\"\n",
        3,
        "ha.failover_timout",
        "unknown field `failover_timout`",
    );
    assert_eq!(e.column, 1);
}

#[test]
fn unknown_section_is_refused() {
    refused("[dhcp]\nfoo = 1\n", 1, "dhcp", "unknown field `dhcp`");
}

#[test]
fn syntax_error_is_refused_with_line() {
    let e = parse_str("[server]\nlog_level = \n").expect_err("refused");
    assert_eq!(e.line, 2);
    assert!(e.message.starts_with("TOML syntax error"), "{e}");
}

#[test]
fn wrong_type_is_refused() {
    refused("[ha]\npreempt = \"yes\"\n", 2, "ha.preempt", "invalid type");
}

#[test]
fn bad_role_is_refused() {
    refused(
        "[ha]\nrole = \"master\"\n",
        2,
        "ha.role",
        "unknown variant `master`",
    );
}

#[test]
fn bad_duration_is_refused() {
    refused(
        "[ha]\nheartbeat_interval = \"1 sec\"\n",
        2,
        "ha.heartbeat_interval",
        "invalid duration \"1 sec\"",
    );
}

#[test]
fn bad_listen_address_is_refused() {
    refused(
        "[dns]\nlisten_udp = \"0.0.0.0\"\n",
        2,
        "dns.listen_udp",
        "invalid socket address",
    );
}

#[test]
fn ha_without_secret_is_refused() {
    refused(
        "[ha]\nenabled = true\npeer_address = \"10.0.0.2:8067\"\n",
        1,
        "ha",
        "shared_secret is required",
    );
}

#[test]
fn short_secret_is_refused() {
    refused(
        "[ha]\nenabled = true\npeer_address = \"10.0.0.2:8067\"\nshared_secret = \"short\"\n",
        4,
        "ha.shared_secret",
        "use at least 16",
    );
}

#[test]
fn ha_without_peer_is_refused() {
    refused(
        &format!("[ha]\nenabled = true\n{SECRET}"),
        1,
        "ha",
        "peer_address is required",
    );
}

#[test]
fn bad_peer_address_is_refused() {
    refused(
        &format!("[ha]\nenabled = true\npeer_address = \"node-b\"\n{SECRET}"),
        3,
        "ha.peer_address",
        "invalid address \"node-b\"",
    );
}

#[test]
fn failover_timeout_shorter_than_two_heartbeats_is_refused() {
    refused(
        &format!("[ha]\nenabled = true\npeer_address = \"10.0.0.2\"\n{SECRET}heartbeat_interval = \"1s\"\nfailover_timeout = \"1500ms\"\n"),
        6,
        "ha.failover_timeout",
        "at least twice heartbeat_interval",
    );
}

/// An older file that sets only the old default heartbeat (1 s) meets the new default
/// failover_timeout (1 s): the error says to set it.
#[test]
fn a_long_heartbeat_with_the_default_failover_timeout_is_refused_naming_the_default() {
    refused(
        &format!("[ha]\nenabled = true\npeer_address = \"10.0.0.2\"\n{SECRET}heartbeat_interval = \"1s\"\n"),
        1,
        "ha.failover_timeout",
        "its default is 1s",
    );
}

#[test]
fn the_witness_timeout_follows_a_short_failover_timeout_unless_set() {
    let ha = |extra: &str| {
        parse_str(&format!(
            "[ha]\nenabled = true\npeer_address = \"10.0.0.2\"\n{SECRET}heartbeat_interval = \"50ms\"\n{extra}"
        ))
    };
    // failover_timeout alone: the derived witness timeout (a third of it) fits under it.
    let c = ha("failover_timeout = \"150ms\"\n").expect("150ms alone loads");
    assert_eq!(c.ha.witness_timeout(), Duration::from_millis(50));
    // Long timeouts keep 200 ms.
    let c = ha("failover_timeout = \"3s\"\n").expect("3s loads");
    assert_eq!(c.ha.witness_timeout(), Duration::from_millis(200));
    // Set by hand, it is taken as set, and still checked against failover_timeout.
    let c = ha("failover_timeout = \"150ms\"\nwitness_timeout = \"100ms\"\n").expect("loads");
    assert_eq!(c.ha.witness_timeout(), Duration::from_millis(100));
    let e = ha("failover_timeout = \"150ms\"\nwitness_timeout = \"200ms\"\n").expect_err("refused");
    assert!(e.to_string().contains("ha.witness_timeout"), "{e}");
}

#[test]
fn pool_outside_its_subnet_is_refused() {
    refused(
        "[[subnet]]\nnetwork = \"10.0.0.0/24\"\n[[subnet.pool]]\nrange_start = \"10.0.0.100\"\nrange_end = \"10.0.1.20\"\n",
        5,
        "subnet[0].pool[0].range_end",
        "10.0.1.20 is not inside subnet 10.0.0.0/24",
    );
}

#[test]
fn overlapping_pools_are_refused() {
    refused(
        "[[subnet]]\nnetwork = \"10.0.0.0/24\"\n[[subnet.pool]]\nrange_start = \"10.0.0.10\"\nrange_end = \"10.0.0.50\"\n\
         [[subnet.pool]]\nrange_start = \"10.0.0.40\"\nrange_end = \"10.0.0.60\"\n",
        7,
        "subnet[0].pool[1].range_start",
        "overlaps subnet[0].pool[0]",
    );
}

#[test]
fn reversed_pool_is_refused() {
    refused(
        "[[subnet]]\nnetwork = \"10.0.0.0/24\"\n[[subnet.pool]]\nrange_start = \"10.0.0.50\"\nrange_end = \"10.0.0.10\"\n",
        5,
        "subnet[0].pool[0].range_end",
        "is before range_start",
    );
}

#[test]
fn pool_on_broadcast_address_is_refused() {
    refused(
        "[[subnet]]\nnetwork = \"10.0.0.0/24\"\n[[subnet.pool]]\nrange_start = \"10.0.0.10\"\nrange_end = \"10.0.0.255\"\n",
        5,
        "subnet[0].pool[0].range_end",
        "network or broadcast",
    );
}

#[test]
fn subnet_with_host_bits_is_refused() {
    refused(
        "[[subnet]]\nnetwork = \"10.0.0.1/24\"\n",
        2,
        "subnet[0].network",
        "did you mean 10.0.0.0/24",
    );
}

#[test]
fn overlapping_subnets_are_refused() {
    refused(
        "[[subnet]]\nnetwork = \"10.0.0.0/16\"\n[[subnet]]\nnetwork = \"10.0.5.0/24\"\n",
        4,
        "subnet[1].network",
        "overlaps subnet[0]",
    );
}

#[test]
fn router_outside_subnet_is_refused() {
    refused(
        "[[subnet]]\nnetwork = \"10.0.0.0/24\"\nrouters = [\"10.0.1.1\"]\n",
        3,
        "subnet[0].routers[0]",
        "not inside subnet",
    );
}

#[test]
fn reservation_without_identity_is_refused() {
    refused(
        "[[subnet]]\nnetwork = \"10.0.0.0/24\"\n[[subnet.reservation]]\nip = \"10.0.0.5\"\n",
        3,
        "subnet[0].reservation[0]",
        "needs a mac, a client_id, a circuit_id or a remote_id",
    );
}

#[test]
fn reservation_outside_subnet_is_refused() {
    refused(
        "[[subnet]]\nnetwork = \"10.0.0.0/24\"\n[[subnet.reservation]]\nmac = \"aa:bb:cc:dd:ee:ff\"\nip = \"10.1.0.5\"\n",
        5,
        "subnet[0].reservation[0].ip",
        "not inside subnet",
    );
}

#[test]
fn bad_mac_is_refused() {
    refused(
        "[[subnet]]\nnetwork = \"10.0.0.0/24\"\n[[subnet.reservation]]\nmac = \"aa:bb:cc\"\nip = \"10.0.0.5\"\n",
        4,
        "subnet[0].reservation[0].mac",
        "invalid MAC address",
    );
}

#[test]
fn bad_custom_option_is_refused() {
    refused(
        "[[subnet]]\nnetwork = \"10.0.0.0/24\"\n[[subnet.option]]\ncode = 66\ntype = \"ip\"\nvalue = \"tftp.example\"\n",
        6,
        "subnet[0].option[0].value",
        "needs an IPv4 address",
    );
    refused(
        "[[subnet]]\nnetwork = \"10.0.0.0/24\"\n[[subnet.option]]\ncode = 66\ntype = \"ipv4\"\nvalue = \"1.2.3.4\"\n",
        5,
        "subnet[0].option[0].type",
        "unknown option type",
    );
}

#[test]
fn custom_options_encode() {
    let o = |t: &str, v: toml::Value| {
        CustomOptionConfig {
            code: 200,
            otype: t.into(),
            value: v,
        }
        .encode()
    };
    assert_eq!(o("ip", "1.2.3.4".into()).unwrap(), vec![1, 2, 3, 4]);
    assert_eq!(o("u16", 513.into()).unwrap(), vec![2, 1]);
    assert_eq!(o("hex", "01:ff".into()).unwrap(), vec![1, 255]);
    assert!(o("u8", 256.into()).is_err());
}

#[test]
fn bad_lease_timers_are_refused() {
    refused(
        "[defaults]\nlease_time = \"1h\"\nrenewal_time = \"50m\"\nrebind_time = \"40m\"\n",
        4,
        "defaults.rebind_time",
        "renewal_time < rebind_time < lease_time",
    );
}

#[test]
fn vip_without_prefix_is_refused() {
    refused(
        "[[hooks.vip]]\nname = \"dns-vip\"\naddress = \"10.0.0.3\"\ninterface = \"eth0\"\n",
        3,
        "hooks.vip[0].address",
        "has no prefix length",
    );
}

#[test]
fn a_vip_peer_that_is_not_an_address_is_refused_with_its_line() {
    refused(
        "[[hooks.vip]]\nname = \"dns-vip\"\naddress = \"10.0.0.3/24\"\ninterface = \"eth0\"\npeer = \"node-b\"\n",
        5,
        "hooks.vip[0].peer",
        "is not an IP address",
    );
}

#[test]
fn vip_without_interface_is_refused() {
    refused(
        "[[hooks.vip]]\nname = \"dns-vip\"\naddress = \"10.0.0.3/24\"\n",
        1,
        "hooks.vip[0]",
        "missing field `interface`",
    );
}

#[test]
fn bad_event_pattern_is_refused() {
    refused(
        "[[hooks.script]]\nname = \"x\"\nevents = [\"ha.failover\", \"ha.fail*\"]\ncommand = \"true\"\n",
        3,
        "hooks.script[0].events[1]",
        "matches no event",
    );
}

#[test]
fn duplicate_hook_names_are_refused() {
    refused(
        "[[hooks.script]]\nname = \"x\"\nevents = [\"*\"]\ncommand = \"true\"\n[[hooks.vip]]\nname = \"x\"\naddress = \"10.0.0.3/24\"\ninterface = \"eth0\"\n",
        6,
        "hooks.vip[0].name",
        "used twice",
    );
}

#[test]
fn webhook_with_bad_url_is_refused() {
    refused(
        "[[hooks.webhook]]\nname = \"w\"\nevents = [\"*\"]\nurl = \"ftp://x\"\n",
        4,
        "hooks.webhook[0].url",
        "not an http:// or https:// URL",
    );
}

#[test]
fn https_webhooks_load_and_a_bad_ca_file_is_refused_naming_it() {
    let c = parse_str(
        "[[hooks.webhook]]\nname = \"w\"\nevents = [\"*\"]\nurl = \"https://example.com/x\"\n",
    )
    .expect("https webhook loads");
    assert_eq!(c.hooks.webhooks[0].ca_file, None);
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("ca.pem");
    std::fs::write(&bad, "hello\n").expect("write");
    refused(
        &format!(
            "[[hooks.webhook]]\nname = \"w\"\nevents = [\"*\"]\nurl = \"https://h/x\"\nca_file = \"{}\"\n",
            bad.display()
        ),
        5,
        "hooks.webhook[0].ca_file",
        "no PEM certificate in it",
    );
}

#[test]
fn bad_dns_record_is_refused() {
    refused(
        "[[dns.record]]\nname = \"nas.home.lan\"\ntype = \"A\"\nvalue = \"not-an-ip\"\n",
        4,
        "dns.record[0].value",
        "not valid for a A record",
    );
    refused(
        "[[dns.record]]\nname = \"x.lan\"\ntype = \"NAPTR\"\nvalue = \"x\"\n",
        3,
        "dns.record[0].type",
        "unknown record type",
    );
}

#[test]
fn bad_zone_overrides_are_refused_with_their_key_and_line() {
    refused(
        "[[dns.zone_override]]\nzone = \"corp.example\"\nforwarders = [\"10.1.1.53\", \"10.1.1.x\"]\n",
        3,
        "dns.zone_override[0].forwarders[1]",
        "10.1.1.x",
    );
    refused(
        "[[dns.zone_override]]\nzone = \"corp.example\"\nforwarders = []\n",
        3,
        "dns.zone_override[0].forwarders",
        "needs at least one",
    );
    refused(
        "[[dns.zone_override]]\nzone = \"corp..example\"\nforwarders = [\"10.1.1.53\"]\n",
        2,
        "dns.zone_override[0].zone",
        "",
    );
    refused(
        "[[dns.zone_override]]\nzone = \"corp.example\"\nforwarders = [\"10.1.1.53\"]\n\
         [[dns.zone_override]]\nzone = \"Corp.Example.\"\nforwarders = [\"10.1.1.54\"]\n",
        5,
        "dns.zone_override[1].zone",
        "already dns.zone_override[0]",
    );
    refused(
        "[dns]\ndomain = \"home.lan\"\n[[dns.zone_override]]\nzone = \"iot.home.lan\"\nforwarders = [\"10.1.1.53\"]\n",
        4,
        "dns.zone_override[0].zone",
        "inside dns.domain",
    );
    let c = parse_str(
        "[[dns.zone_override]]\nzone = \"10.in-addr.arpa\"\nforwarders = [\"10.1.1.53:5353\"]\n",
    )
    .expect("a reverse zone is a valid override");
    assert_eq!(
        c.dns.zone_overrides[0].forwarder_addrs(),
        vec!["10.1.1.53:5353".parse().unwrap()]
    );
}

#[test]
fn bad_forwarder_is_refused() {
    refused(
        "[dns]\nforwarders = [\"9.9.9.9\", \"dns.google\"]\n",
        2,
        "dns.forwarders[1]",
        "invalid address \"dns.google\"",
    );
}

#[test]
fn register_leases_needs_a_domain() {
    refused(
        "[dns]\nregister_leases = true\n",
        2,
        "dns.register_leases",
        "needs dns.domain",
    );
}

#[test]
fn short_api_token_is_refused() {
    refused(
        "[api]\nauth_token = \"abc\"\n",
        2,
        "api.auth_token",
        "at least 16",
    );
}

#[test]
fn api_tls_needs_both_files_and_names_the_one_that_is_wrong() {
    refused(
        "[api]\ntls_cert = \"/etc/ssl/api.pem\"\n",
        2,
        "api.tls_cert",
        "without api.tls_key",
    );
    let dir = tempfile::tempdir().expect("tmp");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, ck.cert.pem()).expect("write");
    let key = dir.path().join("missing-key.pem");
    let text = format!(
        "[api]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    refused(&text, 3, "api.tls_key", "missing-key.pem");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write");
    let c = parse_str(&text).expect("a matching pair loads");
    assert_eq!(c.api.tls_key.as_deref(), Some(key.as_path()));
}

#[test]
fn unreadable_file_names_the_file() {
    let e = load(Path::new("/nonexistent/athena.toml")).expect_err("refused");
    assert!(
        e.to_string()
            .starts_with("/nonexistent/athena.toml: cannot read config file"),
        "{e}"
    );
}

#[test]
fn example_secret_and_non_wildcard_dns_are_warned_about() {
    let c = parse_str(
        "[ha]\nenabled = true\npeer_address = \"10.0.0.2\"\nshared_secret = \"change-me-to-the-output-of-openssl\"\n\
         [dns]\nenabled = true\nlisten_udp = \"10.0.0.1:53\"\n[defaults]\ndns_servers = [\"10.0.0.1\"]\n\
         [[subnet]]\nnetwork = \"10.0.0.0/24\"\n[[hooks.vip]]\nname = \"v\"\naddress = \"10.0.0.3/24\"\ninterface = \"eth0\"\n"
    )
    .expect("valid");
    let w = c.warnings().join("\n");
    assert!(w.contains("shared_secret is the example value"), "{w}");
    assert!(
        w.contains("dns.listen_udp = 10.0.0.1:53 is not a wildcard"),
        "{w}"
    );
    assert!(w.contains("but not the floating IP 10.0.0.3"), "{w}");
    let ok = parse_str(REFERENCE_NODE_A).expect("valid");
    assert!(
        ok.warnings()
            .iter()
            .all(|w| !w.contains("wildcard") && !w.contains("example value")),
        "{:?}",
        ok.warnings()
    );
}

#[test]
fn lease_db_min_free_takes_a_size_with_a_unit_and_refuses_an_unknown_unit() {
    let c = parse_str("[server]\nlease_db_min_free = \"1GiB\"\n").expect("loads");
    assert_eq!(c.server.lease_db_min_free.0, 1 << 30);
    assert_eq!(
        parse_str("").expect("defaults").server.lease_db_min_free.0,
        64 << 20
    );
    refused(
        "[server]\nlease_db_min_free = \"64 megs\"\n",
        2,
        "server.lease_db_min_free",
        "unknown unit",
    );
}

#[test]
fn damaged_lease_db_resync_needs_ha() {
    refused(
        "[server]\ndamaged_lease_db = \"resync\"\n",
        2,
        "server.damaged_lease_db",
        "needs [ha] enabled = true",
    );
    let c = parse_str("[server]\ndamaged_lease_db = \"refuse\"\n").expect("loads");
    assert_eq!(
        c.server.damaged_lease_db,
        Some(crate::lease::damaged::DamagedLeaseDb::Refuse)
    );
}

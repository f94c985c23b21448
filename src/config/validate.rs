//! What the types alone cannot check: ranges, overlaps, timer orders, names.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::IpNet;

use super::values::{parse_addr_with_default_port, parse_hex_bytes, Dur};
use super::{ApiConfig, Config, DnsConfig, HaConfig, HooksConfig, PoolConfig, DNS_RECORD_TYPES};
use crate::events::EventKind;

type Invalid = (String, String);

fn err<T>(key: impl Into<String>, msg: impl Into<String>) -> Result<T, Invalid> {
    Err((key.into(), msg.into()))
}

/// Checks what the types alone cannot; returns the dotted key and the problem.
pub fn validate(c: &Config) -> Result<(), Invalid> {
    if let Some(n) = &c.server.node_name {
        if n.trim().is_empty() || n.len() > 64 {
            return err("server.node_name", "must be 1 to 64 characters");
        }
    }
    if c.server.dhcp_port == 0 {
        return err("server.dhcp_port", "must not be 0");
    }
    if c.server.offer_hold.0.is_zero() {
        return err("server.offer_hold", "must be longer than 0s");
    }
    for (key, token) in [
        ("api.auth_token", &c.api.auth_token),
        ("api.read_token", &c.api.read_token),
    ] {
        if let Some(t) = token {
            if t.len() < 16 {
                return err(
                    key,
                    format!(
                        "is {} bytes; use at least 16 (e.g. `openssl rand -hex 24`)",
                        t.len()
                    ),
                );
            }
        }
    }
    validate_api_tls(&c.api)?;
    if c.server.damaged_lease_db == Some(crate::lease::damaged::DamagedLeaseDb::Resync)
        && !c.ha.enabled
    {
        return err(
            "server.damaged_lease_db",
            "\"resync\" takes the leases from the HA peer and needs [ha] enabled = true; use \"refuse\"",
        );
    }
    validate_ha(&c.ha)?;
    validate_dns(&c.dns)?;
    validate_times(
        "defaults",
        c.defaults.lease_time,
        c.defaults.renewal_time,
        c.defaults.rebind_time,
    )?;
    if let Some(d) = &c.defaults.domain_name {
        check_domain("defaults.domain_name", d)?;
    }
    validate_subnets(c)?;
    super::validate_classes(c)?;
    validate_hooks(&c.hooks)?;
    super::conflict::validate_conflict(&c.conflict_detection)?;
    Ok(())
}

/// Both or neither, and the files must load: a bad certificate is found by `check-config`,
/// not by the first client.
fn validate_api_tls(api: &ApiConfig) -> Result<(), Invalid> {
    match (&api.tls_cert, &api.tls_key) {
        (None, None) => Ok(()),
        (Some(_), None) => err(
            "api.tls_cert",
            "is set without api.tls_key; set both or neither",
        ),
        (None, Some(_)) => err(
            "api.tls_key",
            "is set without api.tls_cert; set both or neither",
        ),
        (Some(cert), Some(key)) => crate::api::tls::load(cert, key)
            .map(|_| ())
            .map_err(|e| (e.key().to_string(), e.to_string())),
    }
}

fn validate_ha(ha: &HaConfig) -> Result<(), Invalid> {
    if !ha.enabled {
        return Ok(());
    }
    match ha.peer_address.as_deref() {
        None => return err(
            "ha",
            "peer_address is required when HA is enabled, e.g. peer_address = \"10.0.0.2:8067\"",
        ),
        Some(p) => {
            parse_addr_with_default_port(p, 8067)
                .map_err(|m| ("ha.peer_address".to_string(), m))?;
        }
    }
    match ha.shared_secret.as_deref() {
        None => {
            return err(
                "ha",
                "shared_secret is required when HA is enabled (the peer link is authenticated); \
                 add e.g. shared_secret = \"<output of `openssl rand -hex 32`>\" on both nodes",
            )
        }
        Some(s) if s.len() < 16 => {
            return err(
                "ha.shared_secret",
                format!(
                    "is {} bytes; use at least 16 (e.g. `openssl rand -hex 32`)",
                    s.len()
                ),
            )
        }
        _ => {}
    }
    if ha.heartbeat_interval.0 < Duration::from_millis(10) {
        return err("ha.heartbeat_interval", "must be at least 10ms");
    }
    if ha.failover_timeout.0 < ha.heartbeat_interval.0 * 2 {
        return err(
            "ha.failover_timeout",
            format!(
                "{} must be at least twice heartbeat_interval ({}), or one lost heartbeat causes a \
                 failover (its default is {}: set it with a heartbeat_interval over half of that)",
                ha.failover_timeout,
                ha.heartbeat_interval,
                HaConfig::default().failover_timeout
            ),
        );
    }
    let witness = ha.witness_timeout();
    if witness.is_zero() || witness >= ha.failover_timeout.0 {
        return err(
            "ha.witness_timeout",
            "must be longer than 0s and shorter than failover_timeout",
        );
    }
    Ok(())
}

fn validate_dns(d: &DnsConfig) -> Result<(), Invalid> {
    for (i, f) in d.forwarders.iter().enumerate() {
        parse_addr_with_default_port(f, 53).map_err(|m| (format!("dns.forwarders[{i}]"), m))?;
    }
    if let Some(dom) = &d.domain {
        check_domain("dns.domain", dom)?;
    }
    if d.register_leases && d.domain.is_none() {
        return err(
            "dns.register_leases",
            "needs dns.domain (lease hostnames are registered as <hostname>.<domain>)",
        );
    }
    if d.enabled && d.cache_size == 0 {
        return err("dns.cache_size", "must be at least 1");
    }
    let zone_of = |z: &str| z.trim_end_matches('.').to_ascii_lowercase();
    for (i, z) in d.zone_overrides.iter().enumerate() {
        let key = format!("dns.zone_override[{i}]");
        check_domain(&format!("{key}.zone"), &z.zone)?;
        if z.forwarders.is_empty() {
            return err(
                format!("{key}.forwarders"),
                format!(
                    "is empty: zone {:?} needs at least one, e.g. [\"10.1.1.53\"]",
                    z.zone
                ),
            );
        }
        for (j, f) in z.forwarders.iter().enumerate() {
            parse_addr_with_default_port(f, 53)
                .map_err(|m| (format!("{key}.forwarders[{j}]"), m))?;
        }
        let zone = zone_of(&z.zone);
        if let Some(first) = d.zone_overrides[..i]
            .iter()
            .position(|o| zone_of(&o.zone) == zone)
        {
            return err(
                format!("{key}.zone"),
                format!("{zone:?} is already dns.zone_override[{first}]"),
            );
        }
        if let Some(dom) = &d.domain {
            let dom = zone_of(dom);
            if zone == dom || zone.ends_with(&format!(".{dom}")) {
                return err(
                    format!("{key}.zone"),
                    format!("{zone:?} is inside dns.domain {dom:?}, which is answered locally and never forwarded"),
                );
            }
        }
    }
    if d.serve_stale && d.stale_max.0 < Duration::from_secs(1) {
        return err(
            "dns.stale_max",
            "must be at least 1s (or set serve_stale = false)",
        );
    }
    for (i, r) in d.records.iter().enumerate() {
        let key = format!("dns.record[{i}]");
        let t = r.rtype.to_ascii_uppercase();
        if !DNS_RECORD_TYPES.contains(&t.as_str()) {
            return err(
                format!("{key}.type"),
                format!(
                    "unknown record type {:?}: expected one of {}",
                    r.rtype,
                    DNS_RECORD_TYPES.join(", ")
                ),
            );
        }
        check_domain(&format!("{key}.name"), &r.name)?;
        let ok = match t.as_str() {
            "A" => r.value.parse::<Ipv4Addr>().is_ok(),
            "AAAA" => r.value.parse::<std::net::Ipv6Addr>().is_ok(),
            "CNAME" | "PTR" => check_domain("", &r.value).is_ok(),
            "TXT" => r.value.len() <= 4096,
            "MX" => {
                let p: Vec<&str> = r.value.split_whitespace().collect();
                p.len() == 2 && p[0].parse::<u16>().is_ok()
            }
            "SRV" => {
                let p: Vec<&str> = r.value.split_whitespace().collect();
                p.len() == 4 && p[..3].iter().all(|x| x.parse::<u16>().is_ok())
            }
            _ => false,
        };
        if !ok {
            let hint = match t.as_str() {
                "A" => "an IPv4 address",
                "AAAA" => "an IPv6 address",
                "CNAME" | "PTR" => "a domain name",
                "TXT" => "text of at most 4096 bytes",
                "MX" => "\"preference exchange\", e.g. \"10 mail.example.com\"",
                _ => "\"priority weight port target\", e.g. \"10 5 5060 sip.example.com\"",
            };
            return err(
                format!("{key}.value"),
                format!(
                    "{:?} is not valid for a {t} record: expected {hint}",
                    r.value
                ),
            );
        }
    }
    Ok(())
}

fn check_domain(key: &str, d: &str) -> Result<(), Invalid> {
    let name = d.trim_end_matches('.');
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'*')
        });
    if ok {
        Ok(())
    } else {
        err(key, format!("{d:?} is not a valid domain name"))
    }
}

fn validate_times(key: &str, lease: Dur, t1: Option<Dur>, t2: Option<Dur>) -> Result<(), Invalid> {
    if lease.0 < Duration::from_secs(10) {
        return err(
            format!("{key}.lease_time"),
            format!("{lease} is too short; use at least 10s"),
        );
    }
    let r1 = t1.map(|x| x.0).unwrap_or(lease.0 / 2);
    let r2 = t2.map(|x| x.0).unwrap_or(lease.0 * 7 / 8);
    if r1 >= r2 || r2 >= lease.0 {
        let k = if t2.is_some() {
            "rebind_time"
        } else {
            "renewal_time"
        };
        return err(
            format!("{key}.{k}"),
            format!(
                "timers must satisfy renewal_time < rebind_time < lease_time (RFC 2131 §4.4.5); got {} < {} < {}",
                Dur(r1),
                Dur(r2),
                lease
            ),
        );
    }
    Ok(())
}

fn validate_subnets(c: &Config) -> Result<(), Invalid> {
    let mut all_pools: Vec<(String, &PoolConfig)> = Vec::new();
    for (si, s) in c.subnets.iter().enumerate() {
        let key = format!("subnet[{si}]");
        if s.network.prefix_len() > 30 {
            return err(
                format!("{key}.network"),
                format!(
                    "{} is too small to serve (prefix longer than /30)",
                    s.network
                ),
            );
        }
        if s.network.network() != s.network.addr() {
            return err(
                format!("{key}.network"),
                format!(
                    "{} has host bits set; did you mean {}?",
                    s.network,
                    s.network.trunc()
                ),
            );
        }
        for (j, other) in c.subnets.iter().enumerate().take(si) {
            if other.network.contains(&s.network.network())
                || s.network.contains(&other.network.network())
            {
                return err(
                    format!("{key}.network"),
                    format!("{} overlaps subnet[{j}] {}", s.network, other.network),
                );
            }
        }
        let times = (
            s.lease_time.unwrap_or(c.defaults.lease_time),
            s.renewal_time.or(c.defaults.renewal_time),
            s.rebind_time.or(c.defaults.rebind_time),
        );
        if s.lease_time.is_some() || s.renewal_time.is_some() || s.rebind_time.is_some() {
            validate_times(&key, times.0, times.1, times.2)?;
        }
        if let Some(d) = &s.domain_name {
            check_domain(&format!("{key}.domain_name"), d)?;
        }
        for (ri, r) in s.routers.iter().enumerate() {
            if !s.network.contains(r) {
                return err(
                    format!("{key}.routers[{ri}]"),
                    format!("router {r} is not inside subnet {}", s.network),
                );
            }
        }
        for (pi, p) in s.pools.iter().enumerate() {
            let pkey = format!("{key}.pool[{pi}]");
            for (field, ip) in [("range_start", p.range_start), ("range_end", p.range_end)] {
                if !s.network.contains(&ip) {
                    return err(
                        format!("{pkey}.{field}"),
                        format!("{ip} is not inside subnet {}", s.network),
                    );
                }
                if ip == s.network.network() || ip == s.network.broadcast() {
                    return err(
                        format!("{pkey}.{field}"),
                        format!("{ip} is the network or broadcast address of {}", s.network),
                    );
                }
            }
            if p.range_start > p.range_end {
                return err(
                    format!("{pkey}.range_end"),
                    format!("{} is before range_start {}", p.range_end, p.range_start),
                );
            }
            for (okey, o) in &all_pools {
                if p.range_start <= o.range_end && o.range_start <= p.range_end {
                    return err(
                        format!("{pkey}.range_start"),
                        format!(
                            "pool {}-{} overlaps {okey} {}-{}",
                            p.range_start, p.range_end, o.range_start, o.range_end
                        ),
                    );
                }
            }
            all_pools.push((pkey, p));
        }
        let mut seen_ip = BTreeSet::new();
        for (ri, r) in s.reservations.iter().enumerate() {
            let rkey = format!("{key}.reservation[{ri}]");
            if r.mac.is_none()
                && r.client_id.is_none()
                && r.circuit_id.is_none()
                && r.remote_id.is_none()
            {
                return err(
                    rkey,
                    "needs a mac, a client_id, a circuit_id or a remote_id",
                );
            }
            if let Some(cid) = &r.client_id {
                parse_hex_bytes(cid).map_err(|m| (format!("{rkey}.client_id"), m))?;
            }
            if !s.network.contains(&r.ip) {
                return err(
                    format!("{rkey}.ip"),
                    format!("{} is not inside subnet {}", r.ip, s.network),
                );
            }
            if !seen_ip.insert(r.ip) {
                return err(
                    format!("{rkey}.ip"),
                    format!("{} is reserved twice in this subnet", r.ip),
                );
            }
        }
        super::validate_options(&key, &s.options)?;
    }
    Ok(())
}

fn validate_events(key: &str, events: &[String]) -> Result<(), Invalid> {
    if events.is_empty() {
        return err(
            key,
            "must list at least one event pattern, e.g. [\"ha.failover\"] or [\"lease.*\"]",
        );
    }
    for (i, p) in events.iter().enumerate() {
        if !EventKind::pattern_is_known(p) {
            return err(
                format!("{key}[{i}]"),
                format!(
                    "{p:?} matches no event; patterns are an event name, a family like \"ha.*\", or \"*\"; events: {}",
                    EventKind::names()
                ),
            );
        }
    }
    Ok(())
}

fn validate_hooks(h: &HooksConfig) -> Result<(), Invalid> {
    if h.script_concurrency == 0 {
        return err("hooks.script_concurrency", "must be at least 1");
    }
    if h.queue_size == 0 {
        return err("hooks.queue_size", "must be at least 1");
    }
    let mut names = BTreeSet::new();
    let mut check_name = |key: String, name: &str| -> Result<(), Invalid> {
        if name.trim().is_empty() {
            return err(key, "must not be empty");
        }
        if !names.insert(name.to_string()) {
            return err(
                key,
                format!("hook name {name:?} is used twice; names must be unique"),
            );
        }
        Ok(())
    };
    for (i, s) in h.scripts.iter().enumerate() {
        let key = format!("hooks.script[{i}]");
        check_name(format!("{key}.name"), &s.name)?;
        validate_events(&format!("{key}.events"), &s.events)?;
        if s.command.trim().is_empty() {
            return err(format!("{key}.command"), "must not be empty");
        }
        if s.timeout.is_some_and(|t| t.0.is_zero()) {
            return err(format!("{key}.timeout"), "must be longer than 0s");
        }
    }
    for (i, w) in h.webhooks.iter().enumerate() {
        let key = format!("hooks.webhook[{i}]");
        check_name(format!("{key}.name"), &w.name)?;
        validate_events(&format!("{key}.events"), &w.events)?;
        if !(w.url.starts_with("http://") || w.url.starts_with("https://"))
            || w.url.parse::<hyper::Uri>().is_err()
        {
            return err(
                format!("{key}.url"),
                format!("{:?} is not an http:// or https:// URL", w.url),
            );
        }
        if let Some(ca) = &w.ca_file {
            if let Err(e) = crate::api::tls::load_ca_file(ca) {
                return err(format!("{key}.ca_file"), e);
            }
        }
        if w.timeout.0.is_zero() {
            return err(format!("{key}.timeout"), "must be longer than 0s");
        }
    }
    let mut vip_addrs = BTreeSet::new();
    for (i, v) in h.vips.iter().enumerate() {
        let key = format!("hooks.vip[{i}]");
        check_name(format!("{key}.name"), &v.name)?;
        validate_events(&format!("{key}.events"), &v.events)?;
        if !v.address.contains('/') {
            return err(
                format!("{key}.address"),
                format!(
                    "{:?} has no prefix length; write it as on `ip addr`, e.g. \"{}/24\", so the address is added with the right subnet",
                    v.address, v.address
                ),
            );
        }
        let net: IpNet = v.address.parse().map_err(|_| {
            (
                format!("{key}.address"),
                format!(
                    "{:?} is not an address with prefix like \"10.0.0.3/24\"",
                    v.address
                ),
            )
        })?;
        if net.addr().is_unspecified() || net.addr().is_multicast() || net.addr().is_loopback() {
            return err(
                format!("{key}.address"),
                format!("{} cannot be a floating IP", net.addr()),
            );
        }
        if let Some(p) = &v.peer {
            if p.parse::<std::net::IpAddr>().is_err() {
                return err(
                    format!("{key}.peer"),
                    format!("{p:?} is not an IP address (the peer's address on {}'s network, e.g. \"10.0.0.2\")", v.interface),
                );
            }
        }
        if !vip_addrs.insert(net.addr()) {
            return err(
                format!("{key}.address"),
                format!("{} is configured twice", net.addr()),
            );
        }
        if v.interface.trim().is_empty() || v.interface.len() > 15 || v.interface.contains('/') {
            return err(
                format!("{key}.interface"),
                format!("{:?} is not a valid interface name", v.interface),
            );
        }
        if v.garp_count == 0 || v.garp_count > 100 {
            return err(format!("{key}.garp_count"), "must be from 1 to 100");
        }
        if v.garp_refresh.is_some_and(|r| r.0 < Duration::from_secs(1)) {
            return err(format!("{key}.garp_refresh"), "must be at least 1s");
        }
    }
    Ok(())
}

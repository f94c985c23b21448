//! `[dns]`: the caching proxy and the zone built from leases.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{de_from_str, de_opt_from_str, parse_addr_with_default_port, Dur};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    pub enabled: bool,
    #[serde(deserialize_with = "de_from_str")]
    pub listen_udp: SocketAddr,
    /// Default: the same as `listen_udp`.
    #[serde(default, deserialize_with = "de_opt_from_str")]
    pub listen_tcp: Option<SocketAddr>,
    /// Upstream resolvers, `"IP"` (port 53) or `"IP:port"`.
    pub forwarders: Vec<String>,
    /// The local domain: lease hostnames live under it, unknown names under it get NXDOMAIN.
    pub domain: Option<String>,
    pub register_leases: bool,
    /// Entries in the answer cache.
    pub cache_size: usize,
    /// Time to wait for one forwarder before trying the next.
    pub upstream_timeout: Dur,
    /// TTL of records made from leases.
    pub lease_ttl: Dur,
    /// Answer an expired cached name (TTL 30 s) when every forwarder fails (RFC 8767).
    pub serve_stale: bool,
    /// How long after its expiry a cached answer may still be served stale.
    pub stale_max: Dur,
    /// RFC 8767's client response timer (BIND's `stale-answer-client-timeout`): how long a
    /// client asking for an expired name waits on a slow upstream before it gets the stale
    /// answer (the upstream query goes on and refreshes the cache). "0s": wait until every
    /// forwarder answered or failed.
    pub stale_answer_client_timeout: Dur,
    #[serde(rename = "record")]
    pub records: Vec<DnsRecordConfig>,
    /// Conditional forwarding: names at or below a zone go to its own forwarders.
    #[serde(rename = "zone_override")]
    pub zone_overrides: Vec<DnsZoneOverride>,
}

/// `[[dns.zone_override]]`: `zone` (e.g. "corp.example" or "10.in-addr.arpa") and below are
/// forwarded to `forwarders` instead of `[dns] forwarders`; the longest matching zone wins.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsZoneOverride {
    pub zone: String,
    pub forwarders: Vec<String>,
}

impl DnsZoneOverride {
    /// The forwarders as socket addresses (validated at load).
    pub fn forwarder_addrs(&self) -> Vec<SocketAddr> {
        self.forwarders
            .iter()
            .filter_map(|f| parse_addr_with_default_port(f, 53).ok())
            .collect()
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            enabled: false,
            listen_udp: "0.0.0.0:53".parse().expect("literal"),
            listen_tcp: None,
            forwarders: Vec::new(),
            domain: None,
            register_leases: false,
            cache_size: 10_000,
            upstream_timeout: Dur::secs(2),
            lease_ttl: Dur::secs(300),
            serve_stale: true,
            stale_max: Dur::secs(86_400),
            stale_answer_client_timeout: Dur::millis(1800),
            records: Vec::new(),
            zone_overrides: Vec::new(),
        }
    }
}

impl DnsConfig {
    pub fn tcp_addr(&self) -> SocketAddr {
        self.listen_tcp.unwrap_or(self.listen_udp)
    }
    /// How long an expired answer may be served stale; zero when `serve_stale` is off.
    pub fn stale_window(&self) -> Duration {
        if self.serve_stale {
            self.stale_max.0
        } else {
            Duration::ZERO
        }
    }
    /// The client response timer in force; zero (off) when `serve_stale` is off.
    pub fn stale_client_timeout(&self) -> Duration {
        if self.serve_stale {
            self.stale_answer_client_timeout.0
        } else {
            Duration::ZERO
        }
    }
    /// Forwarders as socket addresses (validated at load).
    pub fn forwarder_addrs(&self) -> Vec<SocketAddr> {
        self.forwarders
            .iter()
            .filter_map(|f| parse_addr_with_default_port(f, 53).ok())
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsRecordConfig {
    pub name: String,
    /// A, AAAA, CNAME, PTR, TXT, MX, SRV
    #[serde(rename = "type")]
    pub rtype: String,
    /// A/AAAA: an address; CNAME/PTR: a name; TXT: text; MX: "10 mail.example."; SRV:
    /// "priority weight port target".
    pub value: String,
    #[serde(default = "default_record_ttl")]
    pub ttl: u32,
}

fn default_record_ttl() -> u32 {
    300
}

pub const DNS_RECORD_TYPES: &[&str] = &["A", "AAAA", "CNAME", "PTR", "TXT", "MX", "SRV"];

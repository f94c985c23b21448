//! `[defaults]` and `[[subnet]]`: what is served, with pools, reservations and options.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::values::{de_from_str, parse_hex_bytes, Dur, Mac};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultsConfig {
    pub lease_time: Dur,
    /// T1; default 50% of the lease time.
    pub renewal_time: Option<Dur>,
    /// T2; default 87.5% of the lease time.
    pub rebind_time: Option<Dur>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub domain_name: Option<String>,
    pub ntp_servers: Vec<Ipv4Addr>,
}

impl Default for DefaultsConfig {
    fn default() -> Self {
        DefaultsConfig {
            lease_time: Dur::secs(3600),
            renewal_time: None,
            rebind_time: None,
            dns_servers: Vec::new(),
            domain_name: None,
            ntp_servers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetConfig {
    #[serde(deserialize_with = "de_from_str")]
    pub network: Ipv4Net,
    pub interface: Option<String>,
    #[serde(default)]
    pub routers: Vec<Ipv4Addr>,
    /// Overrides `[defaults] dns_servers`.
    pub dns_servers: Option<Vec<Ipv4Addr>>,
    pub domain_name: Option<String>,
    pub ntp_servers: Option<Vec<Ipv4Addr>>,
    pub lease_time: Option<Dur>,
    pub renewal_time: Option<Dur>,
    pub rebind_time: Option<Dur>,
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolConfig>,
    #[serde(default, rename = "reservation")]
    pub reservations: Vec<ReservationConfig>,
    #[serde(default, rename = "option")]
    pub options: Vec<CustomOptionConfig>,
}

/// Lease timers after applying defaults: lease, T1, T2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimes {
    pub lease: Duration,
    pub renewal: Duration,
    pub rebind: Duration,
}

impl SubnetConfig {
    pub fn lease_times(&self, d: &DefaultsConfig) -> LeaseTimes {
        let lease = self.lease_time.unwrap_or(d.lease_time).0;
        let renewal = self
            .renewal_time
            .or(d.renewal_time)
            .map(|x| x.0)
            .unwrap_or(lease / 2);
        let rebind = self
            .rebind_time
            .or(d.rebind_time)
            .map(|x| x.0)
            .unwrap_or(lease * 7 / 8);
        LeaseTimes {
            lease,
            renewal,
            rebind,
        }
    }
    pub fn dns_servers<'a>(&'a self, d: &'a DefaultsConfig) -> &'a [Ipv4Addr] {
        self.dns_servers.as_deref().unwrap_or(&d.dns_servers)
    }
    pub fn domain_name<'a>(&'a self, d: &'a DefaultsConfig) -> Option<&'a str> {
        self.domain_name.as_deref().or(d.domain_name.as_deref())
    }
    pub fn ntp_servers<'a>(&'a self, d: &'a DefaultsConfig) -> &'a [Ipv4Addr] {
        self.ntp_servers.as_deref().unwrap_or(&d.ntp_servers)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub range_start: Ipv4Addr,
    pub range_end: Ipv4Addr,
    /// Only members of these client classes get addresses here; empty: everyone.
    #[serde(default)]
    pub classes: Vec<String>,
    /// Options for clients leased from this pool, over the subnet's.
    #[serde(default, rename = "option")]
    pub options: Vec<CustomOptionConfig>,
}

impl PoolConfig {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.range_start <= ip && ip <= self.range_end
    }
    pub fn size(&self) -> u64 {
        u64::from(u32::from(self.range_end)).saturating_sub(u64::from(u32::from(self.range_start)))
            + 1
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationConfig {
    pub mac: Option<Mac>,
    /// Hex bytes, e.g. "01:aa:bb:cc:dd:ee:ff".
    pub client_id: Option<String>,
    /// Option 82 circuit ID (the switch port), text or `hex:...`: whatever device is on
    /// that port gets `ip`.
    pub circuit_id: Option<String>,
    /// Option 82 remote ID (the relay), text or `hex:...`; with `circuit_id`, both must match.
    pub remote_id: Option<String>,
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
    /// Options for this client, over everything else.
    #[serde(default, rename = "option")]
    pub options: Vec<CustomOptionConfig>,
}

impl ReservationConfig {
    /// The client-id as bytes (validated at load).
    pub fn client_id_bytes(&self) -> Option<Vec<u8>> {
        self.client_id
            .as_deref()
            .and_then(|s| parse_hex_bytes(s).ok())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomOptionConfig {
    pub code: u8,
    /// ip, ips, string, u8, u16, u32, bool, hex
    #[serde(rename = "type")]
    pub otype: String,
    pub value: toml::Value,
}

pub const OPTION_TYPES: &[&str] = &["ip", "ips", "string", "u8", "u16", "u32", "bool", "hex"];

impl CustomOptionConfig {
    /// The option's payload bytes (validated at load, so errors here are unreachable).
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let want = |what: &str| format!("option {} of type {} needs {what}", self.code, self.otype);
        let int = |max: u64| -> Result<u64, String> {
            match &self.value {
                toml::Value::Integer(i) if *i >= 0 && (*i as u64) <= max => Ok(*i as u64),
                _ => Err(want(&format!("an integer from 0 to {max}"))),
            }
        };
        if let Some(typed) = super::encode_typed(self) {
            return typed;
        }
        match self.otype.as_str() {
            "ip" => match &self.value {
                toml::Value::String(s) => s
                    .parse::<Ipv4Addr>()
                    .map(|ip| ip.octets().to_vec())
                    .map_err(|_| want("an IPv4 address string")),
                _ => Err(want("an IPv4 address string")),
            },
            "ips" => match &self.value {
                toml::Value::Array(a) if !a.is_empty() => {
                    let mut out = Vec::new();
                    for v in a {
                        let ip: Ipv4Addr = v
                            .as_str()
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| want("an array of IPv4 address strings"))?;
                        out.extend_from_slice(&ip.octets());
                    }
                    Ok(out)
                }
                _ => Err(want("an array of IPv4 address strings")),
            },
            "string" => match &self.value {
                toml::Value::String(s) if !s.is_empty() => Ok(s.as_bytes().to_vec()),
                _ => Err(want("a non-empty string")),
            },
            "u8" => int(u8::MAX as u64).map(|v| vec![v as u8]),
            "u16" => int(u16::MAX as u64).map(|v| (v as u16).to_be_bytes().to_vec()),
            "u32" => int(u32::MAX as u64).map(|v| (v as u32).to_be_bytes().to_vec()),
            "bool" => match &self.value {
                toml::Value::Boolean(b) => Ok(vec![u8::from(*b)]),
                _ => Err(want("true or false")),
            },
            "hex" => match &self.value {
                toml::Value::String(s) => parse_hex_bytes(s),
                _ => Err(want("a string of hex bytes")),
            },
            other => Err(format!(
                "unknown option type {other:?}: expected one of {}",
                OPTION_TYPES.join(", ")
            )),
        }
    }
}

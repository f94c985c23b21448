//! The one TOML file an admin writes: schema, defaults and validation.
//!
//! Invariants: a [`Config`] that exists has passed [`validate`]; every error names the file,
//! the line and column, the dotted key (`subnet[0].pool[1].range_start`) and what is wrong,
//! so `check-config` and start-up can refuse a broken file before anything binds.
//! Unknown keys are errors (a typo must not silently fall back to a default).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::events::EventKind;

/// Where `athena-dhcpd` looks when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/athena-dhcpd/athena-dhcpd.toml";

/// A config error an admin can act on: `file:line:column: key: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error has no place in the file (e.g. the file is unreadable).
    pub line: usize,
    pub column: usize,
    /// Dotted path of the offending key, e.g. `ha.shared_secret` or `subnet[0].pool[1]`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

// ---------------------------------------------------------------------------------------------
// Value types

/// A duration written as a string: `"100ms"`, `"10s"`, `"1h30m"`, `"2d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    pub fn get(self) -> Duration {
        self.0
    }
}

impl From<Dur> for Duration {
    fn from(d: Dur) -> Duration {
        d.0
    }
}

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Dur)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return write!(f, "0s");
        }
        let (mut rest, mut out) = (ms, String::new());
        for (unit, size) in [
            ("d", 86_400_000u128),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if rest >= size {
                out.push_str(&format!("{}{unit}", rest / size));
                rest %= size;
            }
        }
        if rest > 0 {
            out.push_str(&format!("{rest}ms"));
        }
        f.write_str(&out)
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d).map_err(|_| {
            de::Error::custom("expected a duration string such as \"10s\" or \"1h30m\"")
        })?;
        s.parse().map_err(de::Error::custom)
    }
}

/// Parses `"250ms"`, `"10s"`, `"1h30m"`, `"1.5s"`. A bare number is refused: `"10"` could mean
/// seconds or milliseconds, and guessing wrong turns a 10 s failover into a 10 ms one.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid duration {s:?}: expected a number and a unit (ms, s, m, h, d), e.g. \"10s\" or \"1h30m\"")
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match rest[..unit_len].trim() {
            "ms" => 0.001,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
        };
        total += n * mult;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 10.0 * 365.0 * 86400.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

/// A MAC address `aa:bb:cc:dd:ee:ff` (also `-` separated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        let bad = || {
            format!("invalid MAC address {s:?}: expected six hex bytes like \"aa:bb:cc:dd:ee:ff\"")
        };
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut m = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.is_empty() || p.len() > 2 {
                return Err(bad());
            }
            m[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(Mac(m))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

fn de_from_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    String::deserialize(d)?.parse().map_err(de::Error::custom)
}

/// A socket address; a bare IP gets the port the field implies (53 for DNS forwarders).
fn parse_addr_with_default_port(s: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, port))
        .map_err(|_| format!("invalid address {s:?}: expected \"IP\" or \"IP:port\""))
}

// ---------------------------------------------------------------------------------------------
// Schema

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub api: ApiConfig,
    pub ha: HaConfig,
    pub dns: DnsConfig,
    pub defaults: DefaultsConfig,
    #[serde(rename = "subnet")]
    pub subnets: Vec<SubnetConfig>,
    pub hooks: HooksConfig,
    /// Where the file was read from; set by [`load`], used in messages.
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Name of this node in logs, events and the peer hello. Default: the host name.
    pub node_name: Option<String>,
    pub log_level: LogLevel,
    /// Switch to this user after the sockets are open (needs CAP_SETUID; optional).
    pub user: Option<String>,
    pub group: Option<String>,
    /// Drop every capability but CAP_NET_ADMIN once sockets are open. Turning it off is only
    /// for the old `floating-ip.sh` hook route, and is logged as a warning.
    pub drop_privileges: bool,
    /// DHCP server identifier (option 54) when no VIP lies in the subnet.
    pub server_id: Option<Ipv4Addr>,
    /// UDP port the DHCP server listens on (67; other values are for tests and labs).
    pub dhcp_port: u16,
    /// Interfaces to serve DHCP on; default: the `interface` of every subnet, or all.
    pub interfaces: Vec<String>,
    /// The lease database (redb).
    pub lease_db: PathBuf,
    /// DECLINEd addresses are held back this long.
    pub decline_hold: Dur,
    /// How long an OFFER reserves its address before it may be offered to someone else.
    pub offer_hold: Dur,
    /// DHCP packets per second accepted from one MAC (0 = unlimited).
    pub rate_limit_per_mac: u32,
    /// DISCOVERs per second accepted in total (0 = unlimited).
    pub rate_limit_global: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            node_name: None,
            log_level: LogLevel::Info,
            user: None,
            group: None,
            drop_privileges: true,
            server_id: None,
            dhcp_port: 67,
            interfaces: Vec::new(),
            lease_db: PathBuf::from("/var/lib/athena-dhcpd/leases.redb"),
            decline_hold: Dur::secs(3600),
            offer_hold: Dur::secs(30),
            rate_limit_per_mac: 10,
            rate_limit_global: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub enabled: bool,
    /// Used when HA is off; with HA on, the API answers on `[ha] listen_address`.
    #[serde(deserialize_with = "de_from_str")]
    pub listen: SocketAddr,
    /// Bearer token for mutating endpoints (and reading); unset means they are refused.
    pub auth_token: Option<String>,
    /// Bearer token that only reads client data (leases, events, DNS statistics, metrics)
    /// from a non-loopback address.
    pub read_token: Option<String>,
    /// `/metrics` without a token from anywhere (for a Prometheus without credentials).
    pub public_metrics: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            listen: "127.0.0.1:8067".parse().expect("literal"),
            auth_token: None,
            read_token: None,
            public_metrics: false,
        }
    }
}

/// Default: primary, as `[ha] role` defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Primary,
    Secondary,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaConfig {
    pub enabled: bool,
    pub role: Role,
    /// The peer's real address and API port (not the VIP).
    pub peer_address: Option<String>,
    /// One listener for the API and the peer link when HA is on.
    #[serde(deserialize_with = "de_from_str")]
    pub listen_address: SocketAddr,
    pub heartbeat_interval: Dur,
    pub failover_timeout: Dur,
    /// Authenticates the peer link; at least 16 bytes when HA is on.
    pub shared_secret: Option<String>,
    /// A returning primary takes the service back (after a sync) through a handoff.
    pub preempt: bool,
    /// Longest a DHCPACK waits for the standby to confirm the lease.
    pub max_ack_delay: Dur,
    /// How long the VIP witness waits for an answer before declaring the peer gone; unset,
    /// [`HaConfig::witness_timeout`] derives it from `failover_timeout`.
    pub witness_timeout: Option<Dur>,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            enabled: false,
            role: Role::Primary,
            peer_address: None,
            listen_address: "0.0.0.0:8067".parse().expect("literal"),
            heartbeat_interval: Dur::secs(1),
            failover_timeout: Dur::secs(10),
            shared_secret: None,
            preempt: true,
            max_ack_delay: Dur::millis(250),
            witness_timeout: None,
        }
    }
}

impl HaConfig {
    /// The witness timeout: as set, else the smaller of 200 ms and a third of
    /// `failover_timeout`, so a short `failover_timeout` alone is a valid file (a fixed 200 ms
    /// default refused `failover_timeout = "150ms"`).
    pub fn witness_timeout(&self) -> Duration {
        match self.witness_timeout {
            Some(d) => d.0,
            None => Duration::from_millis(200).min(self.failover_timeout.0 / 3),
        }
    }

    /// The peer address resolved to a socket address (validated at load when HA is on).
    pub fn peer_socket_addr(&self) -> Option<SocketAddr> {
        self.peer_address
            .as_deref()
            .and_then(|s| parse_addr_with_default_port(s, 8067).ok())
    }
}

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
    #[serde(rename = "record")]
    pub records: Vec<DnsRecordConfig>,
}

fn de_opt_from_str<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    String::deserialize(d)?
        .parse()
        .map(Some)
        .map_err(de::Error::custom)
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
            records: Vec::new(),
        }
    }
}

impl DnsConfig {
    pub fn tcp_addr(&self) -> SocketAddr {
        self.listen_tcp.unwrap_or(self.listen_udp)
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
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

impl ReservationConfig {
    /// The client-id as bytes (validated at load).
    pub fn client_id_bytes(&self) -> Option<Vec<u8>> {
        self.client_id
            .as_deref()
            .and_then(|s| parse_hex_bytes(s).ok())
    }
}

/// Parses "01:aa:bb", "01aabb" or "01-aa-bb" into bytes.
pub fn parse_hex_bytes(s: &str) -> Result<Vec<u8>, String> {
    let cleaned: String = s
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | ' '))
        .collect();
    if cleaned.is_empty() || cleaned.len() % 2 != 0 {
        return Err(format!(
            "invalid hex bytes {s:?}: expected pairs of hex digits like \"01:aa:bb\""
        ));
    }
    hex::decode(&cleaned).map_err(|_| {
        format!("invalid hex bytes {s:?}: expected pairs of hex digits like \"01:aa:bb\"")
    })
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// Default timeout of a script hook; the whole process group is killed after it.
    pub script_timeout: Dur,
    /// Script hooks running at once, across all hooks.
    pub script_concurrency: usize,
    /// Events waiting per hook before new ones are dropped (and counted).
    pub queue_size: usize,
    #[serde(rename = "script")]
    pub scripts: Vec<ScriptHookConfig>,
    #[serde(rename = "webhook")]
    pub webhooks: Vec<WebhookConfig>,
    #[serde(rename = "vip")]
    pub vips: Vec<VipConfig>,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            script_timeout: Dur::secs(10),
            script_concurrency: 4,
            queue_size: 1024,
            scripts: Vec::new(),
            webhooks: Vec::new(),
            vips: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptHookConfig {
    pub name: String,
    pub events: Vec<String>,
    pub command: String,
    pub timeout: Option<Dur>,
    /// Lease events only from these subnets (CIDR); empty = all.
    #[serde(default)]
    pub subnets: Vec<Ipv4Net>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    pub events: Vec<String>,
    pub url: String,
    /// HMAC-SHA256 key for `X-Athena-Signature`.
    pub secret: Option<String>,
    /// For `https://`: a PEM file of the CA certificates to trust instead of the system's
    /// (`/etc/ssl/certs`), e.g. an internal CA.
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_webhook_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_webhook_retries")]
    pub retries: u32,
}

fn default_webhook_timeout() -> Dur {
    Dur::secs(5)
}
fn default_webhook_retries() -> u32 {
    3
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    pub name: String,
    /// Accepted for compatibility and ignored: the VIP follows HA's service role directly
    /// (`crate::ha::role`), not events from the bus.
    #[serde(default = "default_vip_events")]
    pub events: Vec<String>,
    /// With its prefix: "10.0.0.3/24".
    pub address: String,
    pub interface: String,
    #[serde(default = "default_garp_count")]
    pub garp_count: u32,
    #[serde(default = "default_garp_interval")]
    pub garp_interval: Dur,
    /// Re-announce this often while held (off when unset).
    pub garp_refresh: Option<Dur>,
}

fn default_vip_events() -> Vec<String> {
    vec!["ha.failover".to_string()]
}
fn default_garp_count() -> u32 {
    3
}
fn default_garp_interval() -> Dur {
    Dur::secs(1)
}

impl VipConfig {
    /// The address with prefix (validated at load).
    pub fn net(&self) -> IpNet {
        self.address.parse().expect("validated at load")
    }
}

impl Config {
    /// The node's name: `[server] node_name`, else the host name, else the role.
    pub fn node_name(&self) -> String {
        if let Some(n) = &self.server.node_name {
            return n.clone();
        }
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| self.ha.role.to_string())
    }

    /// The one HTTP listener: `[ha] listen_address` when HA is on, else `[api] listen`.
    pub fn api_listen(&self) -> Option<SocketAddr> {
        if self.ha.enabled {
            Some(self.ha.listen_address)
        } else if self.api.enabled {
            Some(self.api.listen)
        } else {
            None
        }
    }

    /// Things that are valid but probably not what the admin wants; shown by `check-config`
    /// and logged at start-up, never fatal.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.ha.enabled
            && self
                .ha
                .shared_secret
                .as_deref()
                .is_some_and(|s| s.starts_with("change-me"))
        {
            w.push("ha.shared_secret is the example value from the shipped config; generate one with `openssl rand -hex 32` and use it on both nodes".to_string());
        }
        if !self.server.drop_privileges {
            w.push("server.drop_privileges = false: the daemon and its hook scripts keep every capability; prefer [[hooks.vip]] over a root script".to_string());
        }
        if self.dns.enabled
            && !self.hooks.vips.is_empty()
            && !self.dns.listen_udp.ip().is_unspecified()
        {
            w.push(format!(
                "dns.listen_udp = {} is not a wildcard address: queries to the floating IP will not be answered when it moves here; use 0.0.0.0:{}",
                self.dns.listen_udp,
                self.dns.listen_udp.port()
            ));
        }
        if self.ha.enabled && self.hooks.vips.is_empty() {
            w.push("HA is enabled but no [[hooks.vip]] is configured: clients must find the active node by themselves (DNS has no floating IP)".to_string());
        }
        for (i, s) in self.subnets.iter().enumerate() {
            if !self.hooks.vips.is_empty() && self.vip_in_subnet(&s.network).is_some() {
                if let Some(vip) = self.vip_in_subnet(&s.network) {
                    if self.dns.enabled
                        && !s.dns_servers(&self.defaults).is_empty()
                        && !s.dns_servers(&self.defaults).contains(&vip)
                    {
                        w.push(format!(
                            "subnet[{i}] {} hands out DNS servers {:?} but not the floating IP {vip}: clients lose DNS when the node behind them fails",
                            s.network,
                            s.dns_servers(&self.defaults)
                        ));
                    }
                }
            }
        }
        w
    }

    /// The VIP (IPv4) lying in this subnet, if any: it becomes the DHCP server identifier.
    pub fn vip_in_subnet(&self, net: &Ipv4Net) -> Option<Ipv4Addr> {
        self.hooks
            .vips
            .iter()
            .find_map(|v| match v.address.parse::<IpNet>() {
                Ok(IpNet::V4(n)) if net.contains(&n.addr()) => Some(n.addr()),
                _ => None,
            })
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        key: String::new(),
        message: format!("cannot read config file: {e}"),
    })?;
    parse(&text, path)
}

/// Parses and validates config text; `path` is only used in messages.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let doc = toml_edit::ImDocument::parse(text.to_string()).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
        ConfigError {
            file: path.to_path_buf(),
            line,
            column,
            key: String::new(),
            message: format!("TOML syntax error: {}", e.message().trim()),
        }
    })?;
    let locator = Locator {
        text,
        doc: &doc,
        file: path,
    };
    let mut cfg: Config = toml::from_str(text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let key = locator.path_at(offset);
        let (line, column) = if e.span().is_some() {
            line_col(text, offset)
        } else {
            (0, 0)
        };
        ConfigError {
            file: path.to_path_buf(),
            line,
            column,
            key,
            message: e.message().trim().to_string(),
        }
    })?;
    cfg.source = path.to_path_buf();
    validate(&cfg).map_err(|(key, message)| locator.error(&key, message))?;
    Ok(cfg)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

/// Maps between dotted key paths and places in the file.
struct Locator<'a> {
    text: &'a str,
    doc: &'a toml_edit::ImDocument<String>,
    file: &'a Path,
}

impl Locator<'_> {
    fn error(&self, key: &str, message: String) -> ConfigError {
        let (line, column) = self
            .span_of(key)
            .map(|o| line_col(self.text, o))
            .unwrap_or((0, 0));
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message,
        }
    }

    /// The byte offset of `key` (`subnet[0].pool[1].range_start`), or of its nearest ancestor
    /// that is written in the file (a missing key points at its table).
    fn span_of(&self, key: &str) -> Option<usize> {
        let mut best = None;
        let mut item: Option<&toml_edit::Item> = Some(self.doc.as_item());
        for seg in split_path(key) {
            let Some(cur) = item else { break };
            let (name, idx) = seg;
            let next = if name.is_empty() {
                Some(cur)
            } else {
                cur.get(name)
            };
            let next = match (next, idx) {
                (Some(n), Some(i)) => n.get(i),
                (n, None) => n,
                _ => None,
            };
            if let Some(n) = next {
                // Prefer the key's own position over its value's.
                let key_span = if idx.is_none() && !name.is_empty() {
                    cur.as_table_like()
                        .and_then(|t| t.get_key_value(name))
                        .and_then(|(k, _)| k.span())
                } else {
                    None
                };
                if let Some(s) = key_span.or_else(|| item_span(n)) {
                    best = Some(s.start);
                }
            }
            item = next;
        }
        best
    }

    /// The dotted path of the innermost key whose value spans `offset`.
    fn path_at(&self, offset: usize) -> String {
        let mut best = (String::new(), usize::MAX);
        walk(self.doc.as_item(), String::new(), offset, &mut best);
        best.0
    }
}

fn split_path(key: &str) -> Vec<(&str, Option<usize>)> {
    key.split('.')
        .map(|seg| match seg.find('[') {
            Some(b) => (&seg[..b], seg[b + 1..].trim_end_matches(']').parse().ok()),
            None => (seg, None),
        })
        .collect()
}

fn item_span(item: &toml_edit::Item) -> Option<std::ops::Range<usize>> {
    match item {
        toml_edit::Item::Value(v) => v.span(),
        toml_edit::Item::Table(t) => t.span(),
        toml_edit::Item::ArrayOfTables(a) => a.span(),
        toml_edit::Item::None => None,
    }
}

fn walk(item: &toml_edit::Item, path: String, offset: usize, best: &mut (String, usize)) {
    let consider = |span: Option<std::ops::Range<usize>>, p: &str, best: &mut (String, usize)| {
        if let Some(s) = span {
            if s.start <= offset && offset <= s.end && (s.end - s.start) <= best.1 {
                *best = (p.to_string(), s.end - s.start);
            }
        }
    };
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match item {
        toml_edit::Item::Table(t) => {
            for (k, v) in t.iter() {
                let p = join(k);
                if let Some((key, _)) = t.get_key_value(k) {
                    consider(key.span(), &p, best);
                }
                consider(item_span(v), &p, best);
                walk(v, p, offset, best);
            }
        }
        toml_edit::Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                consider(t.span(), &p, best);
                for (k, v) in t.iter() {
                    let pk = format!("{p}.{k}");
                    if let Some((key, _)) = t.get_key_value(k) {
                        consider(key.span(), &pk, best);
                    }
                    consider(item_span(v), &pk, best);
                    walk(v, pk, offset, best);
                }
            }
        }
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => {
            for (k, v) in t.iter() {
                let p = join(k);
                consider(v.span(), &p, best);
                walk(&toml_edit::Item::Value(v.clone()), p, offset, best);
            }
        }
        toml_edit::Item::Value(toml_edit::Value::Array(a)) => {
            for (i, v) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                consider(v.span(), &p, best);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Validation

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
    validate_hooks(&c.hooks)?;
    Ok(())
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
                "{} must be at least twice heartbeat_interval ({}), or one lost heartbeat causes a failover",
                ha.failover_timeout, ha.heartbeat_interval
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
            if r.mac.is_none() && r.client_id.is_none() {
                return err(rkey, "needs a mac or a client_id");
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
        for (oi, o) in s.options.iter().enumerate() {
            let okey = format!("{key}.option[{oi}]");
            if o.code == 0 || o.code == 255 {
                return err(
                    format!("{okey}.code"),
                    "codes 0 (pad) and 255 (end) cannot be set",
                );
            }
            if !OPTION_TYPES.contains(&o.otype.as_str()) {
                return err(
                    format!("{okey}.type"),
                    format!(
                        "unknown option type {:?}: expected one of {}",
                        o.otype,
                        OPTION_TYPES.join(", ")
                    ),
                );
            }
            o.encode().map_err(|m| (format!("{okey}.value"), m))?;
        }
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
            if let Err(e) = crate::hooks::webhook::load_ca_file(ca) {
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

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

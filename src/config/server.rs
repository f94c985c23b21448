//! `[server]` and `[api]`: what one node is and how it is reached.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::values::{de_from_str, Dur};

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
    /// A lease database that cannot be read at start: "resync" (move it aside, take every
    /// lease from the HA peer before serving) or "refuse" (exit 1). Default: resync with HA,
    /// refuse without.
    pub damaged_lease_db: Option<crate::lease::damaged::DamagedLeaseDb>,
    /// Health is `degraded` while the lease database's filesystem has less free space.
    pub lease_db_min_free: crate::lease::space::ByteSize,
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
            damaged_lease_db: None,
            lease_db_min_free: crate::lease::space::ByteSize::mib(64),
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
    /// PEM certificate chain: with `tls_key`, the API speaks HTTPS (see [`crate::api::tls`]).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            listen: "127.0.0.1:8067".parse().expect("literal"),
            auth_token: None,
            read_token: None,
            public_metrics: false,
            tls_cert: None,
            tls_key: None,
        }
    }
}

//! `[ha]`: the pair, its timers and the peer link.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{de_from_str, parse_addr_with_default_port, Dur};

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
    /// UDP port of the datagram heartbeat path, sent to the peer on every VIP network
    /// besides the link (0: off). The same on both nodes.
    pub heartbeat_port: u16,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            enabled: false,
            role: Role::Primary,
            peer_address: None,
            listen_address: "0.0.0.0:8067".parse().expect("literal"),
            // With a second heartbeat path and the VIP witness guarding against a takeover
            // while the peer still serves, a short timeout costs no false failovers: a lost
            // host or a hang costs ~1 s of service, less than a keepalived pair at its
            // defaults (3.4 s for a lost host in the reference setup).
            heartbeat_interval: Dur::millis(200),
            failover_timeout: Dur::secs(1),
            shared_secret: None,
            preempt: true,
            max_ack_delay: Dur::millis(250),
            witness_timeout: None,
            heartbeat_port: 8068,
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

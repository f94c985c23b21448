//! High availability: who serves. `machine` (pure state machine), `node` (the task that runs
//! it), `link` (dialling, accepting and the tie-break), `peer` (the authenticated link's
//! frames), `sync` (lease replication), `role` (the typed service role the VIP follows), `agreement` (do both nodes serve one
//! config?). This file
//! holds the types the rest of the daemon sees.

use std::fmt;

use serde::{Deserialize, Serialize};

pub mod agreement;
pub mod link;
pub mod machine;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod role;
pub mod sync;
pub mod witness;

/// A node's HA state. Only `Active` serves DHCP and holds the VIP. Default: STANDBY, where
/// every node starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HaState {
    /// Not serving; the peer is (or may be) active.
    #[default]
    Standby,
    /// Serving DHCP and DNS, owning the VIP.
    Active,
    /// Bulk sync after (re)connect; not serving.
    Syncing,
    /// Own health failing; not serving.
    Fault,
}

impl HaState {
    pub fn as_str(self) -> &'static str {
        match self {
            HaState::Standby => "STANDBY",
            HaState::Active => "ACTIVE",
            HaState::Syncing => "SYNCING",
            HaState::Fault => "FAULT",
        }
    }
    pub fn serves(self) -> bool {
        self == HaState::Active
    }
}

impl fmt::Display for HaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `/api/v1/ha/status` shows. Serialised compactly; `state` is the only key named
/// exactly "state" (the reference keepalived check greps for `"state":"ACTIVE"`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HaStatus {
    pub enabled: bool,
    pub node: String,
    pub role: String,
    pub state: HaState,
    pub peer_connected: bool,
    pub peer_state: Option<HaState>,
    /// Unix milliseconds of the last frame from the peer.
    pub last_heartbeat: Option<u64>,
    pub epoch: u64,
    pub lease_watermark: u64,
    pub peer_lease_watermark: Option<u64>,
    pub vips: Vec<crate::vip::VipStatus>,
}

impl HaStatus {
    /// A node without HA serves on its own.
    pub fn standalone(node: &str, role: &str) -> Self {
        HaStatus {
            enabled: false,
            node: node.to_string(),
            role: role.to_string(),
            state: HaState::Active,
            peer_connected: false,
            peer_state: None,
            last_heartbeat: None,
            epoch: 0,
            lease_watermark: 0,
            peer_lease_watermark: None,
            vips: Vec::new(),
        }
    }
}

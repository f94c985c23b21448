//! High availability: who serves. `machine` (pure state machine), `node` (the task that runs
//! it), `link` (dialling, accepting and the tie-break), `peer` (the encrypted link: Noise
//! handshake, records, messages), `sync` (lease replication), `role` (the typed service role the VIP follows), `agreement` (do both nodes serve one
//! config?). This file
//! holds the types the rest of the daemon sees.

use std::fmt;

use serde::{Deserialize, Serialize};

pub mod agreement;
pub mod heartbeat;
pub mod link;
pub mod machine;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod role;
pub mod sync;
pub mod udp;
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

/// How many of its latest state changes a node keeps for `/api/v1/ha/status` (in memory: a
/// restart starts the list again; the journal has the whole story).
pub const TRANSITION_HISTORY: usize = 10;

/// One HA state change of a node, as `athena-dhcpd status` lists them. No key is named
/// `state` (see [`HaStatus`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HaTransition {
    /// Unix milliseconds.
    pub at: u64,
    pub from: HaState,
    pub to: HaState,
    /// The node's epoch after the change.
    pub epoch: u64,
    pub reason: String,
}

/// What `/api/v1/ha/status` shows. Serialised compactly; `state` is the only key named
/// exactly "state" (the reference keepalived check greps for `"state":"ACTIVE"`). Read back
/// by `athena-dhcpd status`, also from a peer one version older: fields added since default.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// The peer's node name and epoch, from its last status frame.
    #[serde(default)]
    pub peer_node: Option<String>,
    #[serde(default)]
    pub peer_epoch: Option<u64>,
    /// `[ha] peer_address` as host:port (the peer's API shares the port): where `status`
    /// asks the peer.
    #[serde(default)]
    pub peer_address: Option<String>,
    /// The latest state changes, oldest first, at most [`TRANSITION_HISTORY`].
    #[serde(default)]
    pub transitions: Vec<HaTransition>,
    /// ACTIVE but fenced after a stall: not serving until the peer answers.
    #[serde(default)]
    pub fenced: bool,
    /// The paths to the peer (the link, the heartbeat datagrams per VIP network) with the
    /// age of the last frame on each, as of the last heartbeat.
    #[serde(default)]
    pub paths: Vec<machine::PathView>,
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
            peer_node: None,
            peer_epoch: None,
            peer_address: None,
            transitions: Vec::new(),
            fenced: false,
            paths: Vec::new(),
        }
    }
}

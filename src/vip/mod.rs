//! The floating IP: netlink address work, gratuitous ARP on a pre-opened packet socket,
//! claim/release/announce/defend. Status types live here so the API can show them.

use serde::Serialize;

/// One configured VIP as `/api/v1/ha/status` shows it. No field is named `state`.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct VipStatus {
    pub name: String,
    pub address: String,
    pub interface: String,
    pub held: bool,
    /// Unix milliseconds since when `held` has been what it is.
    pub since: Option<u64>,
    pub last_error: Option<String>,
}

/// Shared, live view of every configured VIP (written by the VIP manager, read by the API).
pub type VipBoard = std::sync::Arc<std::sync::RwLock<Vec<VipStatus>>>;

/// `athena-dhcpd vip release`: removes every configured VIP from this host.
pub fn release_configured(_cfg: &crate::config::Config) -> anyhow::Result<()> {
    anyhow::bail!("vip release is not built yet (see the VIP manager issue)")
}

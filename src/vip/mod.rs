//! The floating IP: netlink address work, gratuitous ARP on a pre-opened packet socket,
//! claim/release/announce/defend. Status types live here so the API can show them.
//!
//! Pure parts: `arp` and `ndp` (frames), `claim` (the want of a service role, announcement
//! bursts, backoff, defence rate), `decide` (every decision of one VIP: inputs in, netlink
//! and announcement work out). I/O: `packet` (AF_PACKET sockets opened before the capability
//! drop), `netlink` (rtnetlink address/link work and news), `manager` (one worker per VIP
//! that executes what `decide` says).

pub mod arp;
pub mod claim;
pub mod decide;
pub mod manager;
pub mod ndp;
pub mod netlink;
pub mod packet;

pub use claim::Want;
pub use manager::{VipClaims, VipContext, VipMetrics};
pub use packet::PacketSockets;

use serde::{Deserialize, Serialize};

/// One configured VIP as `/api/v1/ha/status` shows it. No field is named `state`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
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

/// `athena-dhcpd vip release`: removes every configured VIP from this host (absent is
/// fine), for systemd's `ExecStopPost=` after a crash. Fails if any removal failed.
pub fn release_configured(cfg: &crate::config::Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(release_all(&cfg.hooks.vips))
}

/// Removes each VIP from its interface; logs one line per VIP.
pub async fn release_all(vips: &[crate::config::VipConfig]) -> anyhow::Result<()> {
    let nl = netlink::Netlink::connect()
        .map_err(|e| anyhow::anyhow!("opening a netlink socket: {e}"))?;
    let mut failed = Vec::new();
    for v in vips {
        let net = v.net();
        let res = match nl.link(&v.interface).await {
            Ok(None) => Ok(false),
            Ok(Some(l)) => nl.del(l.index, net).await,
            Err(e) => Err(e),
        };
        match res {
            Ok(true) => {
                tracing::info!(vip = %net, interface = %v.interface, "released floating IP {net} from {}", v.interface)
            }
            Ok(false) => {
                tracing::info!(vip = %net, interface = %v.interface, "floating IP {net} is not on {}; nothing to release", v.interface)
            }
            Err(e) => {
                tracing::error!(vip = %net, interface = %v.interface, "releasing floating IP {net} from {} failed: {e}", v.interface);
                failed.push(format!("{net} on {}: {e}", v.interface));
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("could not release {}", failed.join("; "))
    }
}

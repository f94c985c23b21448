//! `[hooks]`: scripts, webhooks and the floating IPs.

use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use super::values::Dur;

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
    /// The peer's address on this VIP's network, for the datagram heartbeat; unset: the
    /// host of `[ha] peer_address`.
    #[serde(default)]
    pub peer: Option<String>,
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

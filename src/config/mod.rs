//! The one TOML file an admin writes: schema, defaults and validation.
//!
//! Invariants: a [`Config`] that exists has passed [`validate`]; every error names the file,
//! the line and column, the dotted key (`subnet[0].pool[1].range_start`) and what is wrong,
//! so `check-config` and start-up can refuse a broken file before anything binds.
//! Unknown keys are errors (a typo must not silently fall back to a default).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

/// Where `athena-dhcpd` looks when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/athena-dhcpd/athena-dhcpd.toml";

mod classes;
mod conflict;
mod dhcp;
mod digest;
mod dns;
mod ha;
mod hooks;
mod locate;
mod server;
mod validate;
mod values;

pub use classes::*;
pub use conflict::ConflictConfig;
pub use dhcp::*;
pub use digest::{ConfigDigest, Difference, SharedConfig};
pub use dns::*;
pub use ha::*;
pub use hooks::*;
pub use locate::*;
pub use server::*;
pub use validate::*;
pub use values::*;

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
    /// Groups of clients that get their own options, pools and boot files.
    #[serde(rename = "client_class")]
    pub client_classes: Vec<ClientClassConfig>,
    pub hooks: HooksConfig,
    pub conflict_detection: ConflictConfig,
    /// Where the file was read from; set by [`load`], used in messages.
    #[serde(skip)]
    pub source: PathBuf,
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

#[cfg(test)]
mod tests;

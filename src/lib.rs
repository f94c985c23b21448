//! athena-dhcpd: a DHCPv4 server with a caching DNS proxy for an active/standby pair that
//! moves its floating IP itself (netlink + gratuitous ARP), with no keepalived and no root.
//!
//! The folders are the architecture: `ha/` decides who serves, `vip/` moves the address,
//! `dhcp/` and `lease/` hand out and remember addresses, `dns/` answers on the VIP, `hooks/`
//! tells the outside world, `api/` shows it all and `cli/` reads it back for the admin
//! commands. `daemon` wires them in start-up order.
//! `pktinfo` is the socket plumbing DHCP and DNS share: reply from the address asked.
//! `metrics` is how each module's metrics join the registry `GET /metrics` serves.

pub mod api;
pub mod cli;
pub mod config;
pub mod conflict;
pub mod daemon;
pub mod dhcp;
pub mod dns;
pub mod events;
pub mod ha;
pub mod health;
pub mod hooks;
pub mod lease;
pub mod logging;
pub mod metrics;
pub mod pktinfo;
pub mod privileges;
#[cfg(test)]
mod proptest_seed;
pub mod vip;

//! The DHCP sockets, opened before the capability drop, and the interfaces they answer on.

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::Ipv4Net;

use crate::config::Config;
use crate::pktinfo;

/// The interfaces to bind to: `[server] interfaces`, else every subnet's `interface` when all
/// subnets name one, else none (one wildcard socket).
pub fn interfaces_to_bind(cfg: &Config) -> Vec<String> {
    if !cfg.server.interfaces.is_empty() {
        return cfg.server.interfaces.clone();
    }
    let named: Vec<String> = cfg
        .subnets
        .iter()
        .filter_map(|s| s.interface.clone())
        .collect();
    if named.len() != cfg.subnets.len() {
        return Vec::new();
    }
    let mut out = named;
    out.sort();
    out.dedup();
    out
}

fn open_one(port: u16, device: Option<&str>) -> std::io::Result<std::net::UdpSocket> {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    sock.set_reuse_address(true)?;
    sock.set_broadcast(true)?;
    sock.set_nonblocking(true)?;
    // Bursts of DISCOVERs must queue, not drop, while a commit is in flight.
    let _ = sock.set_recv_buffer_size(4 << 20);
    pktinfo::enable(&sock, false)?;
    if let Some(d) = device {
        sock.bind_device(Some(d.as_bytes())).map_err(|e| {
            std::io::Error::new(e.kind(), format!("binding to interface {d:?}: {e}"))
        })?;
    }
    sock.bind(&std::net::SocketAddr::from(([0, 0, 0, 0], port)).into())?;
    Ok(sock.into())
}

/// Opens the DHCP sockets (UDP `server.dhcp_port`, one per interface or one wildcard).
/// Empty when no subnet is configured: a DNS-only node serves no DHCP.
pub fn open_sockets(cfg: &Config) -> std::io::Result<Vec<std::net::UdpSocket>> {
    if cfg.subnets.is_empty() {
        return Ok(Vec::new());
    }
    let port = cfg.server.dhcp_port;
    let ifs = interfaces_to_bind(cfg);
    if ifs.is_empty() {
        return Ok(vec![open_one(port, None)?]);
    }
    ifs.iter().map(|i| open_one(port, Some(i))).collect()
}

// ---------------------------------------------------------------------------------------------
// Interfaces

/// Interface names and IPv4 addresses by index, refreshed now and then (addresses such as the
/// VIP come and go).
#[derive(Default, Clone)]
pub(super) struct Interfaces {
    pub(super) by_index: HashMap<u32, (Arc<str>, Arc<[Ipv4Net]>)>,
}

impl Interfaces {
    pub(super) fn load() -> Self {
        let mut by_index: HashMap<u32, (String, Vec<Ipv4Net>)> = HashMap::new();
        let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
            return Interfaces::default();
        };
        for a in addrs {
            let Ok(idx) = nix::net::if_::if_nametoindex(a.interface_name.as_str()) else {
                continue;
            };
            let entry = by_index
                .entry(idx)
                .or_insert_with(|| (a.interface_name.clone(), Vec::new()));
            let ip = a
                .address
                .as_ref()
                .and_then(|s| s.as_sockaddr_in())
                .map(|s| s.ip());
            let mask = a
                .netmask
                .as_ref()
                .and_then(|s| s.as_sockaddr_in())
                .map(|s| s.ip());
            if let (Some(ip), Some(mask)) = (ip, mask) {
                let prefix = u32::from(mask).leading_ones() as u8;
                if let Ok(n) = Ipv4Net::new(ip, prefix) {
                    entry.1.push(n);
                }
            }
        }
        Interfaces {
            by_index: by_index
                .into_iter()
                .map(|(i, (n, a))| (i, (Arc::from(n.as_str()), Arc::from(a))))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_list_follows_config() {
        let cfg = crate::config::parse(
            "[[subnet]]\nnetwork = \"10.0.0.0/24\"\ninterface = \"eth1\"\n[[subnet]]\nnetwork = \"10.1.0.0/24\"\ninterface = \"eth1\"\n",
            std::path::Path::new("t.toml"),
        )
        .expect("config");
        assert_eq!(interfaces_to_bind(&cfg), vec!["eth1".to_string()]);
        let cfg = crate::config::parse(
            "[[subnet]]\nnetwork = \"10.0.0.0/24\"\ninterface = \"eth1\"\n[[subnet]]\nnetwork = \"10.1.0.0/24\"\n",
            std::path::Path::new("t.toml"),
        )
        .expect("config");
        assert!(interfaces_to_bind(&cfg).is_empty());
    }
}

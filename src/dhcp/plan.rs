//! The config turned into what the handler needs per packet: subnets with their pools,
//! reservations by MAC and client-id, and option payloads already encoded.
//!
//! Built once at start (the config is validated, so nothing here can fail on a loaded
//! config); the handler never touches TOML values on the hot path.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::config::{Config, LeaseTimes};

use super::packet::*;

#[derive(Debug, Clone)]
pub struct Reservation {
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SubnetPlan {
    pub network: Ipv4Net,
    /// "10.0.0.0/24": the `subnet` of leases and events.
    pub name: std::sync::Arc<str>,
    pub interface: Option<String>,
    /// Inclusive address ranges as u32.
    pub pools: Vec<(u32, u32)>,
    pub times: LeaseTimes,
    /// Option 54 when set: the VIP in this subnet, else `[server] server_id`.
    pub server_id: Option<Ipv4Addr>,
    pub by_mac: HashMap<[u8; 6], Reservation>,
    pub by_client_id: HashMap<Vec<u8>, Reservation>,
    /// Reserved address → true (so the allocator never hands it to someone else).
    pub reserved: HashMap<Ipv4Addr, ()>,
    /// Options sent with every OFFER/ACK, in order: (code, value, always-sent).
    pub options: Vec<ReplyOption>,
    /// Options 51, 58, 59 (lease time, T1, T2), encoded once.
    pub timer_options: Vec<ReplyOption>,
}

impl SubnetPlan {
    pub fn in_pool(&self, ip: Ipv4Addr) -> bool {
        let x = u32::from(ip);
        self.pools.iter().any(|(a, b)| *a <= x && x <= *b)
    }

    /// The reservation for a client: by client-id first, then by MAC.
    pub fn reservation(&self, client_id: Option<&[u8]>, mac: &[u8; 6]) -> Option<&Reservation> {
        client_id
            .and_then(|c| self.by_client_id.get(c))
            .or_else(|| self.by_mac.get(mac))
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub subnets: Vec<SubnetPlan>,
    pub offer_hold_ms: u64,
    pub decline_hold_s: u64,
}

fn ips(v: &[Ipv4Addr]) -> Vec<u8> {
    v.iter().flat_map(|a| a.octets()).collect()
}

impl Plan {
    pub fn from_config(cfg: &Config) -> Plan {
        let subnets = cfg
            .subnets
            .iter()
            .map(|s| {
                let net = s.network;
                let mut options: Vec<(u8, Vec<u8>, bool)> = Vec::new();
                options.push((OPT_SUBNET_MASK, net.netmask().octets().to_vec(), true));
                if !s.routers.is_empty() {
                    options.push((OPT_ROUTER, ips(&s.routers), true));
                }
                let dns = s.dns_servers(&cfg.defaults);
                if !dns.is_empty() {
                    options.push((OPT_DNS, ips(dns), true));
                }
                if let Some(d) = s.domain_name(&cfg.defaults) {
                    options.push((
                        OPT_DOMAIN,
                        d.trim_end_matches('.').as_bytes().to_vec(),
                        true,
                    ));
                }
                options.push((OPT_BROADCAST, net.broadcast().octets().to_vec(), false));
                let ntp = s.ntp_servers(&cfg.defaults);
                if !ntp.is_empty() {
                    options.push((OPT_NTP, ips(ntp), false));
                }
                for o in &s.options {
                    if let Ok(v) = o.encode() {
                        options.retain(|(c, _, _)| *c != o.code);
                        options.push((o.code, v, false));
                    }
                }
                let mut by_mac = HashMap::new();
                let mut by_client_id = HashMap::new();
                let mut reserved = HashMap::new();
                for r in &s.reservations {
                    let res = Reservation {
                        ip: r.ip,
                        hostname: r.hostname.clone(),
                    };
                    reserved.insert(r.ip, ());
                    if let Some(m) = r.mac {
                        by_mac.insert(m.0, res.clone());
                    }
                    if let Some(c) = r.client_id_bytes() {
                        by_client_id.insert(c, res);
                    }
                }
                let times = s.lease_times(&cfg.defaults);
                let secs = |d: std::time::Duration| -> OptVal {
                    (d.as_secs().min(u64::from(u32::MAX)) as u32).to_be_bytes()[..].into()
                };
                let timer_options = vec![
                    (OPT_LEASE_TIME, secs(times.lease), true),
                    (OPT_T1, secs(times.renewal), true),
                    (OPT_T2, secs(times.rebind), true),
                ];
                SubnetPlan {
                    timer_options,
                    network: net,
                    name: net.to_string().into(),
                    interface: s.interface.clone(),
                    pools: s
                        .pools
                        .iter()
                        .map(|p| (u32::from(p.range_start), u32::from(p.range_end)))
                        .collect(),
                    times,
                    server_id: cfg.vip_in_subnet(&net).or(cfg.server.server_id),
                    by_mac,
                    by_client_id,
                    reserved,
                    options: options
                        .into_iter()
                        .map(|(c, v, always)| (c, v.into(), always))
                        .collect(),
                }
            })
            .collect();
        Plan {
            subnets,
            offer_hold_ms: cfg.server.offer_hold.0.as_millis() as u64,
            decline_hold_s: cfg.server.decline_hold.0.as_secs(),
        }
    }

    /// The subnet containing `ip`.
    pub fn subnet_of(&self, ip: Ipv4Addr) -> Option<usize> {
        self.subnets.iter().position(|s| s.network.contains(&ip))
    }
}

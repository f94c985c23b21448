//! The config turned into what the handler needs per packet: subnets with their pools,
//! reservations by MAC and client-id, and option payloads already encoded.
//!
//! Options merge in the order defaults < subnet < pool < class < reservation: each layer is
//! kept as its own encoded list and the handler takes a code from the most specific layer
//! that has it (see `handler::build_reply`), so nothing is merged per packet.
//!
//! Built once at start (the config is validated, so nothing here can fail on a loaded
//! config); the handler never touches TOML values on the hot path.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::config::{relay_id_bytes, Config, CustomOptionConfig, LeaseTimes};

use super::classes::{ClassPlan, ClassSet};
use super::options::{suboption, RELAY_SUB_CIRCUIT_ID, RELAY_SUB_REMOTE_ID};
use super::packet::*;

#[derive(Debug, Clone)]
pub struct Reservation {
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
    /// Options over every other layer.
    pub options: Vec<ReplyOption>,
    /// Found by option 82 (a switch port), not by the client's own identity: the address
    /// follows the port, so a new device there takes it over from the old one's lease.
    pub by_port: bool,
}

/// A reservation keyed by option 82: circuit ID and/or remote ID.
#[derive(Debug, Clone)]
pub struct RelayReservation {
    pub circuit_id: Option<Vec<u8>>,
    pub remote_id: Option<Vec<u8>>,
    pub res: Reservation,
}

/// A pool: its range, who may use it, and its options.
#[derive(Debug, Clone)]
pub struct PoolPlan {
    /// Inclusive, as u32.
    pub start: u32,
    pub end: u32,
    /// Empty: everyone; else only members of these classes.
    pub classes: ClassSet,
    pub options: Vec<ReplyOption>,
}

impl PoolPlan {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let x = u32::from(ip);
        self.start <= x && x <= self.end
    }
    pub fn serves(&self, classes: ClassSet) -> bool {
        self.classes.is_empty() || self.classes.intersects(classes)
    }
}

/// Encodes validated `[[...option]]` tables (invalid ones cannot occur and are skipped).
pub fn encode_options(options: &[CustomOptionConfig]) -> Vec<ReplyOption> {
    let mut out: Vec<ReplyOption> = Vec::with_capacity(options.len());
    for o in options {
        if let Ok(v) = o.encode() {
            out.retain(|(c, _, _)| *c != o.code);
            out.push((o.code, v.into(), false));
        }
    }
    out
}

#[derive(Debug, Clone)]
pub struct SubnetPlan {
    pub network: Ipv4Net,
    /// "10.0.0.0/24": the `subnet` of leases and events.
    pub name: std::sync::Arc<str>,
    pub interface: Option<String>,
    pub pools: Vec<PoolPlan>,
    pub times: LeaseTimes,
    /// Option 54 when set: the VIP in this subnet, else `[server] server_id`.
    pub server_id: Option<Ipv4Addr>,
    pub by_mac: HashMap<[u8; 6], Reservation>,
    pub by_client_id: HashMap<Vec<u8>, Reservation>,
    /// Reservations by option 82, in file order (checked only for relayed requests).
    pub by_relay: Vec<RelayReservation>,
    /// Reserved address → true (so the allocator never hands it to someone else).
    pub reserved: HashMap<Ipv4Addr, ()>,
    /// Options sent with every OFFER/ACK, in order: (code, value, always-sent).
    pub options: Vec<ReplyOption>,
    /// Options 51, 58, 59 (lease time, T1, T2), encoded once.
    pub timer_options: Vec<ReplyOption>,
}

impl SubnetPlan {
    /// Is `ip` in a pool that serves a client of these classes?
    pub fn in_pool(&self, ip: Ipv4Addr, classes: ClassSet) -> bool {
        self.pools
            .iter()
            .any(|p| p.contains(ip) && p.serves(classes))
    }

    /// The pool holding `ip`.
    pub fn pool_of(&self, ip: Ipv4Addr) -> Option<&PoolPlan> {
        self.pools.iter().find(|p| p.contains(ip))
    }

    /// The reservation for a client: by client-id, then MAC, then the option 82 circuit
    /// and remote IDs the relay added.
    pub fn reservation(&self, req: &Request) -> Option<&Reservation> {
        req.client_id
            .as_deref()
            .and_then(|c| self.by_client_id.get(c))
            .or_else(|| self.by_mac.get(&req.mac()))
            .or_else(|| {
                let relay = req.relay_info.as_deref()?;
                if self.by_relay.is_empty() {
                    return None;
                }
                let circuit = suboption(relay, RELAY_SUB_CIRCUIT_ID);
                let remote = suboption(relay, RELAY_SUB_REMOTE_ID);
                self.by_relay
                    .iter()
                    .find(|r| {
                        r.circuit_id.as_deref().is_none_or(|c| Some(c) == circuit)
                            && r.remote_id.as_deref().is_none_or(|c| Some(c) == remote)
                    })
                    .map(|r| &r.res)
            })
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub subnets: Vec<SubnetPlan>,
    /// `[[client_class]]` in file order.
    pub classes: Vec<ClassPlan>,
    pub offer_hold_ms: u64,
    pub decline_hold_s: u64,
}

fn ips(v: &[Ipv4Addr]) -> Vec<u8> {
    v.iter().flat_map(|a| a.octets()).collect()
}

impl Plan {
    pub fn from_config(cfg: &Config) -> Plan {
        let class_set = |names: &[String]| {
            ClassSet(
                cfg.client_classes
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| names.contains(&c.name))
                    .fold(0u64, |m, (i, _)| m | (1 << i)),
            )
        };
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
                let mut options: Vec<ReplyOption> = options
                    .into_iter()
                    .map(|(c, v, always)| (c, v.into(), always))
                    .collect();
                for (c, v, always) in encode_options(&s.options) {
                    options.retain(|(x, _, _)| *x != c);
                    options.push((c, v, always));
                }
                let mut by_mac = HashMap::new();
                let mut by_client_id = HashMap::new();
                let mut by_relay = Vec::new();
                let mut reserved = HashMap::new();
                for r in &s.reservations {
                    let res = Reservation {
                        ip: r.ip,
                        hostname: r.hostname.clone(),
                        options: encode_options(&r.options),
                        by_port: false,
                    };
                    reserved.insert(r.ip, ());
                    if let Some(m) = r.mac {
                        by_mac.insert(m.0, res.clone());
                    }
                    if let Some(c) = r.client_id_bytes() {
                        by_client_id.insert(c, res.clone());
                    }
                    let relay_id =
                        |v: &Option<String>| v.as_deref().and_then(|v| relay_id_bytes(v).ok());
                    if r.circuit_id.is_some() || r.remote_id.is_some() {
                        by_relay.push(RelayReservation {
                            circuit_id: relay_id(&r.circuit_id),
                            remote_id: relay_id(&r.remote_id),
                            res: Reservation {
                                by_port: true,
                                ..res
                            },
                        });
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
                        .map(|p| PoolPlan {
                            start: u32::from(p.range_start),
                            end: u32::from(p.range_end),
                            classes: class_set(&p.classes),
                            options: encode_options(&p.options),
                        })
                        .collect(),
                    times,
                    server_id: cfg.vip_in_subnet(&net).or(cfg.server.server_id),
                    by_mac,
                    by_client_id,
                    by_relay,
                    reserved,
                    options,
                }
            })
            .collect();
        Plan {
            subnets,
            classes: cfg
                .client_classes
                .iter()
                .map(ClassPlan::from_config)
                .collect(),
            offer_hold_ms: cfg.server.offer_hold.0.as_millis() as u64,
            decline_hold_s: cfg.server.decline_hold.0.as_secs(),
        }
    }

    /// The subnet containing `ip`.
    pub fn subnet_of(&self, ip: Ipv4Addr) -> Option<usize> {
        self.subnets.iter().position(|s| s.network.contains(&ip))
    }
}

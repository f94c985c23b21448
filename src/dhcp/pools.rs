//! How full each pool is: per pool of each subnet, the addresses held by an active lease,
//! declined (held back until their hold ends), held as a conflict (found in use on the wire
//! by a host that is not their client), offered, reserved for a client, and free.
//!
//! Computed by the DHCP housekeeping every few seconds, in the same pass over the lease index
//! that the lease gauges already make; never per packet and never per scrape. The metric
//! `athena_dhcp_pool_addresses{subnet,pool,state}` and `GET /api/v1/pools` both read the
//! last result, so they always agree.
//!
//! Each address counts once, in the first state that applies, in the order of
//! [`AddrState::ALL`]: a reserved address with an active lease is `active`, an offered one
//! `offered`.

use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use super::plan::Plan;
use crate::lease::{Lease, LeaseIndex, LeaseState};

/// The state of one pool address, as the metric's `state` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrState {
    Active,
    Declined,
    Conflict,
    Offered,
    Reserved,
    Free,
}

impl AddrState {
    /// In precedence order: an address counts in the first that applies.
    pub const ALL: [AddrState; 6] = [
        AddrState::Active,
        AddrState::Declined,
        AddrState::Conflict,
        AddrState::Offered,
        AddrState::Reserved,
        AddrState::Free,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AddrState::Active => "active",
            AddrState::Declined => "declined",
            AddrState::Conflict => "conflict",
            AddrState::Offered => "offered",
            AddrState::Reserved => "reserved",
            AddrState::Free => "free",
        }
    }
}

/// One pool's addresses by state; `size` is their sum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolUsage {
    /// "10.0.0.0/24", as leases name their subnet.
    pub subnet: String,
    /// "10.0.0.100-10.0.0.199": the range as configured.
    pub pool: String,
    pub size: u64,
    pub active: u64,
    pub declined: u64,
    /// Absent from a daemon older than the conflict state: none counted there.
    #[serde(default)]
    pub conflict: u64,
    pub offered: u64,
    pub reserved: u64,
    pub free: u64,
}

impl PoolUsage {
    pub fn count(&self, s: AddrState) -> u64 {
        match s {
            AddrState::Active => self.active,
            AddrState::Declined => self.declined,
            AddrState::Conflict => self.conflict,
            AddrState::Offered => self.offered,
            AddrState::Reserved => self.reserved,
            AddrState::Free => self.free,
        }
    }

    fn count_mut(&mut self, s: AddrState) -> &mut u64 {
        match s {
            AddrState::Active => &mut self.active,
            AddrState::Declined => &mut self.declined,
            AddrState::Conflict => &mut self.conflict,
            AddrState::Offered => &mut self.offered,
            AddrState::Reserved => &mut self.reserved,
            AddrState::Free => &mut self.free,
        }
    }

    /// Share of the pool that cannot be handed out (0..1): everything but `free`.
    pub fn used_fraction(&self) -> f64 {
        if self.size == 0 {
            0.0
        } else {
            (self.size - self.free) as f64 / self.size as f64
        }
    }
}

/// The last computed usage, shared between the DHCP housekeeping (writer) and the API.
pub type PoolBoard = Arc<RwLock<Vec<PoolUsage>>>;

/// Usage of every pool in `plan`, in config order. `offered`: addresses with an offer
/// outstanding (each once). One pass over the index, whose addresses are unique, with no
/// allocation per lease: the caller holds the index lock the DHCP path also needs.
pub fn usage(plan: &Plan, index: &LeaseIndex, offered: &[Ipv4Addr], now_s: u64) -> Vec<PoolUsage> {
    let mut out: Vec<PoolUsage> = Vec::new();
    // Where each subnet's first pool is in `out`.
    let mut first_of_subnet = Vec::with_capacity(plan.subnets.len());
    for s in &plan.subnets {
        first_of_subnet.push(out.len());
        for pool in &s.pools {
            let (a, b) = (&pool.start, &pool.end);
            let size = u64::from(b.saturating_sub(*a)) + 1;
            out.push(PoolUsage {
                subnet: s.name.to_string(),
                pool: format!("{}-{}", Ipv4Addr::from(*a), Ipv4Addr::from(*b)),
                size,
                active: 0,
                declined: 0,
                conflict: 0,
                offered: 0,
                reserved: 0,
                free: size,
            });
        }
    }
    let mut count = |ip: Ipv4Addr, st: AddrState| {
        let Some(si) = plan.subnet_of(ip) else {
            return;
        };
        let x = u32::from(ip);
        if let Some(pi) = plan.subnets[si]
            .pools
            .iter()
            .position(|p| p.start <= x && x <= p.end)
        {
            let p = &mut out[first_of_subnet[si] + pi];
            *p.count_mut(st) += 1;
            p.free = p.free.saturating_sub(1);
        }
    };
    let held = |l: &Lease| match l.state {
        _ if l.expiry <= now_s => None,
        LeaseState::Active => Some(AddrState::Active),
        LeaseState::Declined => Some(AddrState::Declined),
        LeaseState::Conflict { .. } => Some(AddrState::Conflict),
        LeaseState::Released | LeaseState::Expired => None,
    };
    for l in index.iter() {
        if let Some(st) = held(l) {
            count(l.ip, st);
        }
    }
    let leased = |ip: Ipv4Addr| index.get(ip).and_then(held).is_some();
    for ip in offered {
        if !leased(*ip) {
            count(*ip, AddrState::Offered);
        }
    }
    for s in &plan.subnets {
        for ip in s.reserved.keys() {
            if !leased(*ip) && !offered.contains(ip) {
                count(*ip, AddrState::Reserved);
            }
        }
    }
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub subnet: String,
    pub pool: String,
    pub state: &'static str,
}

/// Sets `athena_dhcp_pool_addresses` from `usage`, every state of every pool (zeros too, so
/// a query such as "free / size" never lacks a series). `before`: the last usage exported;
/// when a reloaded config changed the pools, the series of pools that are gone are removed.
pub fn export(usage: &[PoolUsage], before: &[PoolUsage], family: &Family<PoolLabels, Gauge>) {
    for gone in before.iter().filter(|b| {
        !usage
            .iter()
            .any(|p| p.subnet == b.subnet && p.pool == b.pool)
    }) {
        for s in AddrState::ALL {
            family.remove(&PoolLabels {
                subnet: gone.subnet.clone(),
                pool: gone.pool.clone(),
                state: s.as_str(),
            });
        }
    }
    for p in usage {
        for s in AddrState::ALL {
            family
                .get_or_create(&PoolLabels {
                    subnet: p.subnet.clone(),
                    pool: p.pool.clone(),
                    state: s.as_str(),
                })
                .set(p.count(s) as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        let cfg = crate::config::parse(
            r#"
            [[subnet]]
            network = "10.0.0.0/24"
            [[subnet.pool]]
            range_start = "10.0.0.100"
            range_end = "10.0.0.109"
            [[subnet.pool]]
            range_start = "10.0.0.200"
            range_end = "10.0.0.204"
            [[subnet.reservation]]
            mac = "02:00:00:00:00:aa"
            ip = "10.0.0.101"
            [[subnet.reservation]]
            mac = "02:00:00:00:00:bb"
            ip = "10.0.0.102"
            "#,
            std::path::Path::new("pools.toml"),
        )
        .expect("config");
        Plan::from_config(&cfg)
    }

    fn lease(last: u8, state: LeaseState, expiry: u64) -> Lease {
        Lease {
            ip: Ipv4Addr::new(10, 0, 0, last),
            mac: [2, 0, 0, 0, 0, last],
            client_id: None,
            hostname: None,
            subnet: "10.0.0.0/24".into(),
            state,
            start: 0,
            expiry,
            updated_ms: 0,
            relay_info: None,
            classes: Vec::new(),
        }
    }

    fn index(leases: impl IntoIterator<Item = Lease>) -> LeaseIndex {
        let mut ix = LeaseIndex::new();
        for l in leases {
            ix.upsert(l);
        }
        ix
    }

    #[test]
    fn each_pool_address_counts_once_in_its_first_state() {
        let leases = [
            lease(100, LeaseState::Active, 100),
            // Reserved and leased by its owner: active, not reserved.
            lease(101, LeaseState::Active, 100),
            lease(103, LeaseState::Declined, 100),
            // Found in use on the wire: a state of its own, not `declined`.
            lease(107, LeaseState::Conflict { seen: 2 }, 100),
            // Lapsed, released and outside every pool: free / not counted.
            lease(104, LeaseState::Active, 10),
            lease(105, LeaseState::Released, 100),
            lease(50, LeaseState::Active, 100),
            lease(200, LeaseState::Active, 100),
        ];
        let offered = [Ipv4Addr::new(10, 0, 0, 106), Ipv4Addr::new(10, 0, 0, 100)];
        let u = usage(&plan(), &index(leases), &offered, 50);
        assert_eq!(
            u,
            vec![
                PoolUsage {
                    subnet: "10.0.0.0/24".into(),
                    pool: "10.0.0.100-10.0.0.109".into(),
                    size: 10,
                    active: 2,
                    declined: 1,
                    conflict: 1,
                    offered: 1,
                    reserved: 1,
                    free: 4,
                },
                PoolUsage {
                    subnet: "10.0.0.0/24".into(),
                    pool: "10.0.0.200-10.0.0.204".into(),
                    size: 5,
                    active: 1,
                    declined: 0,
                    conflict: 0,
                    offered: 0,
                    reserved: 0,
                    free: 4,
                },
            ]
        );
        assert!((u[0].used_fraction() - 0.6).abs() < 1e-9);
    }

    #[test]
    fn the_metric_has_every_state_of_every_pool() {
        let u = usage(
            &plan(),
            &index([lease(100, LeaseState::Active, 100)]),
            &[],
            50,
        );
        let family = Family::<PoolLabels, Gauge>::default();
        // A pool of an earlier config, gone since: its series go.
        let mut old = u.clone();
        old[1].pool = "10.0.0.50-10.0.0.59".into();
        export(&old, &[], &family);
        export(&u, &old, &family);
        let mut reg = prometheus_client::registry::Registry::with_prefix("athena");
        reg.register("dhcp_pool_addresses", "test", family);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).expect("encode");
        for (state, n) in [
            ("active", 1),
            ("free", 7),
            ("reserved", 2),
            ("declined", 0),
            ("conflict", 0),
        ] {
            let line = format!("athena_dhcp_pool_addresses{{subnet=\"10.0.0.0/24\",pool=\"10.0.0.100-10.0.0.109\",state=\"{state}\"}} {n}");
            assert!(text.contains(&line), "no {line:?} in:\n{text}");
        }
        assert_eq!(
            text.matches("athena_dhcp_pool_addresses{").count(),
            12,
            "{text}"
        );
        assert!(!text.contains("10.0.0.50-10.0.0.59"), "{text}");
    }
}

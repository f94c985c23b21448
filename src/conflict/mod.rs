//! Conflict detection: before an address is offered, ask the wire whether it is free (an
//! ARP probe on attached subnets, an ICMP echo on relayed ones), and hold back addresses
//! found in use.
//!
//! The conflict table is not a table of its own: an address found in use is a lease record
//! in state `Conflict` (see `lease::LeaseState`), so it is durable, replicated to the
//! standby and merged in bulk sync like any lease, and a failover keeps it. `prober` owns
//! the sockets and the probes in flight; the DHCP server (`dhcp::probe`) decides what to
//! probe and records what answered; `api` shows and clears the table.

pub mod api;
pub mod icmp;
pub mod prober;

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::metrics::{described, register_all};

pub use prober::{open_sockets, OnVerdict, ProbeTimes, Prober, Sighting, Verdict, Via};

/// The prober's sockets, opened before the capability drop: an AF_PACKET socket for ARP
/// (probes out, every ARP in) and a raw ICMP socket (echo out, replies in).
#[derive(Debug)]
pub struct ConflictSockets {
    pub arp: OwnedFd,
    pub icmp: socket2::Socket,
}

/// How a conflict was found (the metric's `source` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A probe before an OFFER was answered.
    Probe,
    /// An answer came after the probe's timeout: the address was offered, and is now held.
    LateReply,
    /// An ARP claimed an address another client holds (or a free pool address).
    PassiveArp,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Probe => "probe",
            Source::LateReply => "late_reply",
            Source::PassiveArp => "passive_arp",
        }
    }
}

/// The line an admin greps for.
pub fn log_conflict(ip: Ipv4Addr, mac: Option<[u8; 6]>, hold: crate::config::Dur, source: Source) {
    let by = match mac {
        Some(m) => crate::lease::hex_colon(&m),
        None => "a host answering ping".to_string(),
    };
    tracing::warn!(
        ip = %ip,
        mac = %by,
        source = source.as_str(),
        "address conflict: {ip} is in use by {by}, not offered for {hold}"
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabel {
    method: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: &'static str,
}

/// What conflict detection counts.
#[derive(Clone, Default)]
pub struct ConflictMetrics {
    conflicts: Family<SourceLabel, Counter>,
    probes: Family<ProbeLabel, Counter>,
    malformed: Family<ProtocolLabel, Counter>,
    pub in_flight: Gauge,
    pub sightings_dropped: Counter,
}

impl ConflictMetrics {
    pub fn register(&self, r: &mut Registry) {
        register_all(
            r,
            [
                described(
                    "dhcp_conflicts",
                    "Addresses found in use by a host that is not their client, by how",
                    self.conflicts.clone(),
                ),
                described(
                    "dhcp_probes",
                    "Conflict probes by method (arp, icmp, cached, queue) and result (free, in_use, unsent, full: offered unchecked)",
                    self.probes.clone(),
                ),
                described(
                    "dhcp_probe_replies_malformed",
                    "Malformed ARP frames and ICMP datagrams the prober dropped",
                    self.malformed.clone(),
                ),
                described(
                    "dhcp_probes_in_flight",
                    "Conflict probes waiting for an answer or their timeout",
                    self.in_flight.clone(),
                ),
                described(
                    "dhcp_conflict_sightings_dropped",
                    "ARP sightings dropped because the DHCP server was behind",
                    self.sightings_dropped.clone(),
                ),
            ],
        );
    }

    pub fn conflict(&self, source: Source) {
        self.conflicts
            .get_or_create(&SourceLabel {
                source: source.as_str(),
            })
            .inc();
    }

    pub fn conflicts(&self, source: Source) -> u64 {
        self.conflicts
            .get_or_create(&SourceLabel {
                source: source.as_str(),
            })
            .get()
    }

    /// One probe counter, for a caller that counts it often.
    fn probe_counter(&self, method: &'static str, result: &'static str) -> Counter {
        self.probes
            .get_or_create(&ProbeLabel { method, result })
            .clone()
    }

    fn probed(&self, method: &'static str, result: &'static str) {
        self.probes
            .get_or_create(&ProbeLabel { method, result })
            .inc();
    }

    pub fn probes(&self, method: &'static str, result: &'static str) -> u64 {
        self.probes
            .get_or_create(&ProbeLabel { method, result })
            .get()
    }

    fn malformed(&self, protocol: &'static str) {
        self.malformed
            .get_or_create(&ProtocolLabel { protocol })
            .inc();
    }

    pub fn malformed_count(&self, protocol: &'static str) -> u64 {
        self.malformed
            .get_or_create(&ProtocolLabel { protocol })
            .get()
    }
}

//! What the DHCP server counts: packets by type and reason, replies, ACK latency, pools.

use dhcproto::v4::MessageType;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::metrics::{described, register_all};

/// A reply's type and the first client class its request matched ("none" outside every
/// class; class names are bounded by the config, so the label set stays small).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplyLabel {
    pub r#type: &'static str,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabel {
    pub scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubnetLabel {
    pub subnet: String,
}

#[derive(Clone)]
pub struct DhcpMetrics {
    pub received: Family<TypeLabel, Counter>,
    pub sent: Family<ReplyLabel, Counter>,
    pub malformed: Family<ReasonLabel, Counter>,
    pub ignored: Family<ReasonLabel, Counter>,
    pub rate_limited: Family<ScopeLabel, Counter>,
    pub commit_failed: Counter,
    pub leases_active: Gauge,
    pub pool_size: Family<SubnetLabel, Gauge>,
    pub pool_utilization: Family<SubnetLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Per pool and address state (see [`super::pools`]).
    pub pool_addresses: Family<super::pools::PoolLabels, Gauge>,
    pub ack_latency: Histogram,
    /// DISCOVER to OFFER of the OFFERs that waited for a conflict probe.
    pub offer_latency: Histogram,
    /// With HA: how each wait for the standby before a DHCPACK ended.
    pub replication: Family<OutcomeLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    outcome: &'static str,
}

impl Default for DhcpMetrics {
    fn default() -> Self {
        DhcpMetrics {
            received: Family::default(),
            sent: Family::default(),
            malformed: Family::default(),
            ignored: Family::default(),
            rate_limited: Family::default(),
            commit_failed: Counter::default(),
            leases_active: Gauge::default(),
            pool_size: Family::default(),
            pool_utilization: Family::default(),
            pool_addresses: Family::default(),
            ack_latency: Histogram::new([
                0.00025, 0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.1, 0.5,
            ]),
            offer_latency: Histogram::new([
                0.001, 0.01, 0.05, 0.1, 0.15, 0.2, 0.201, 0.202, 0.205, 0.21, 0.25, 0.5, 1.0, 5.0,
            ]),
            replication: Family::default(),
        }
    }
}

impl DhcpMetrics {
    pub fn register(&self, r: &mut Registry) {
        register_all(
            r,
            [
                described(
                    "dhcp_packets_received",
                    "DHCP requests received, by message type",
                    self.received.clone(),
                ),
                described(
                    "dhcp_packets_sent",
                    "DHCP replies sent, by message type and first client class",
                    self.sent.clone(),
                ),
                described(
                    "dhcp_malformed",
                    "Datagrams dropped as malformed, by reason",
                    self.malformed.clone(),
                ),
                described(
                    "dhcp_ignored",
                    "Valid requests not answered, by reason",
                    self.ignored.clone(),
                ),
                described(
                    "dhcp_rate_limited",
                    "Requests dropped by the rate limits (scope: mac or global)",
                    self.rate_limited.clone(),
                ),
                described(
                    "dhcp_commit_failed",
                    "ACKs not sent because their lease could not be committed",
                    self.commit_failed.clone(),
                ),
                described(
                    "dhcp_leases_active",
                    "Active, unexpired leases",
                    self.leases_active.clone(),
                ),
                described(
                    "dhcp_pool_size",
                    "Addresses in the pools of a subnet",
                    self.pool_size.clone(),
                ),
                described(
                    "dhcp_pool_utilization",
                    "Share of a subnet's pool addresses held by active leases (0..1)",
                    self.pool_utilization.clone(),
                ),
                described(
                    "dhcp_pool_addresses",
                    "Addresses of a pool by state: active, declined (held back), conflict (in use on the wire), offered, reserved, free",
                    self.pool_addresses.clone(),
                ),
                described(
                    "dhcp_ack_latency_seconds",
                    "From REQUEST received to ACK sent, including commit and replication",
                    self.ack_latency.clone(),
                ),
                described(
                    "dhcp_offer_latency_seconds",
                    "From DISCOVER received to OFFER sent, for OFFERs that waited for a conflict probe",
                    self.offer_latency.clone(),
                ),
                described(
                    "dhcp_replication",
                    "Lease changes handed to HA before their reply, by outcome: acked (the standby \
                     confirmed), peer_down (no standby; sent at reconnect), timeout (max_ack_delay)",
                    self.replication.clone(),
                ),
            ],
        );
    }

    pub(super) fn replicated(&self, r: crate::lease::Replicated) {
        self.replication
            .get_or_create(&OutcomeLabel {
                outcome: r.as_str(),
            })
            .inc();
    }

    pub(super) fn ignored(&self, reason: &'static str) {
        self.ignored.get_or_create(&ReasonLabel { reason }).inc();
    }
}

pub fn type_name(t: MessageType) -> &'static str {
    match t {
        MessageType::Discover => "discover",
        MessageType::Offer => "offer",
        MessageType::Request => "request",
        MessageType::Decline => "decline",
        MessageType::Ack => "ack",
        MessageType::Nak => "nak",
        MessageType::Release => "release",
        MessageType::Inform => "inform",
        _ => "other",
    }
}

//! `athena_ha_*` metrics: the node's state and epoch, heartbeats, link errors by reason and
//! the replication lag. Updated by the node task and the link tasks; read by `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::ha::HaState;
use crate::metrics::{described, register_all};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub(crate) kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PathLabel {
    pub(crate) path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabel {
    state: String,
}

/// `athena_ha_*` metrics.
#[derive(Default)]
pub struct HaMetrics {
    pub(crate) state: Family<StateLabel, Gauge>,
    pub(crate) epoch: Gauge,
    pub(crate) transitions: Counter,
    pub(crate) heartbeats_sent: Counter,
    pub(crate) heartbeats_received: Counter,
    pub(crate) link_errors: Family<KindLabel, Counter>,
    pub(crate) sync_lag_frames: Gauge,
    pub(crate) sync_lag_ms: Gauge,
    /// Keys whose values differ from the peer's config (sections, while only the digests
    /// are known); 0 when they agree.
    pub(crate) config_mismatch: Gauge,
    pub(crate) replicated: Counter,
    /// 1 while the peer link is up (what the "peer lost" alert watches).
    pub(crate) peer_connected: Gauge,
    pub(crate) path_sent: Family<PathLabel, Counter>,
    pub(crate) path_received: Family<PathLabel, Counter>,
    pub(crate) path_age_ms: Family<PathLabel, Gauge>,
    pub(crate) heartbeat_dropped: Family<KindLabel, Counter>,
}

impl HaMetrics {
    pub(super) fn register(self: &Arc<Self>, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("ha");
        register_all(
            r,
            [
                described("state", "1 for the node's current HA state", self.state.clone()),
                described("epoch", "Takeover epoch of this node", self.epoch.clone()),
                described(
                    "config_mismatch",
                    "Shared config keys whose values differ from the peer's, or sections while the peer link is down (0: both serve one config)",
                    self.config_mismatch.clone(),
                ),
                described("transitions", "HA state changes", self.transitions.clone()),
                described(
                    "heartbeats_sent",
                    "Heartbeats sent to the peer",
                    self.heartbeats_sent.clone(),
                ),
                described(
                    "heartbeats_received",
                    "Heartbeats received from the peer",
                    self.heartbeats_received.clone(),
                ),
                described(
                    "link_errors",
                    "Peer links refused or closed, by reason",
                    self.link_errors.clone(),
                ),
                described(
                    "sync_lag_frames",
                    "Lease frames sent to the peer and not yet acknowledged",
                    self.sync_lag_frames.clone(),
                ),
                described(
                    "sync_lag_milliseconds",
                    "Age of the oldest unacknowledged lease frame",
                    self.sync_lag_ms.clone(),
                ),
                described(
                    "path_datagrams_sent",
                    "Heartbeat datagrams sent to the peer, by path",
                    self.path_sent.clone(),
                ),
                described(
                    "path_datagrams_received",
                    "Authentic, fresh heartbeat datagrams from the peer, by path",
                    self.path_received.clone(),
                ),
                described(
                    "path_last_frame_age_milliseconds",
                    "Age of the last frame from the peer on each path (-1: never heard)",
                    self.path_age_ms.clone(),
                ),
                described(
                    "heartbeat_datagrams_dropped",
                    "Heartbeat datagrams dropped, by reason (bad_mac, replay, truncated, ...)",
                    self.heartbeat_dropped.clone(),
                ),
                described(
                    "replicated_batches",
                    "Lease batches acknowledged by the peer",
                    self.replicated.clone(),
                ),
                described(
                    "peer_connected",
                    "1 while the link to the peer is up",
                    self.peer_connected.clone(),
                ),
            ],
        );
    }

    pub(crate) fn path_sent(&self, path: &str) {
        self.path_sent
            .get_or_create(&PathLabel { path: path.into() })
            .inc();
    }

    pub(crate) fn path_received(&self, path: &str) {
        self.path_received
            .get_or_create(&PathLabel { path: path.into() })
            .inc();
    }

    pub(crate) fn path_age(&self, path: &str, ms: i64) {
        self.path_age_ms
            .get_or_create(&PathLabel { path: path.into() })
            .set(ms);
    }

    pub(crate) fn heartbeat_dropped(&self, kind: &str) {
        self.heartbeat_dropped
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    pub(crate) fn link_error(&self, kind: &str) {
        self.link_errors
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    pub(super) fn set_state(&self, s: HaState) {
        for st in [
            HaState::Standby,
            HaState::Active,
            HaState::Syncing,
            HaState::Fault,
        ] {
            self.state
                .get_or_create(&StateLabel {
                    state: st.as_str().into(),
                })
                .set(i64::from(st == s));
        }
    }
}

//! The node task's side of config agreement: the frames, the reload, and what an admin sees
//! (one WARN line naming every differing key, or every differing section while the peer
//! link is down, an event, health `degraded`, a metric). The decisions are in
//! [`crate::ha::agreement`]; the digests that come by datagram are in `node/datagram.rs`.

use std::sync::Arc;

use super::NodeTask;
use crate::config::{Config, ConfigDigest, SharedConfig};
use crate::events::{ConfigEvent, Event, EventData, EventKind};
use crate::ha::agreement::{AgreementAction, KEYS_PENDING};
use crate::ha::peer::Msg;

/// The health problem's key: one reason, replaced as the differences change.
const HEALTH_KEY: &str = "ha.config";

impl NodeTask {
    pub(super) fn on_config_reload(&mut self, cfg: &Arc<Config>) {
        let actions = self.agreement.reloaded(SharedConfig::of(cfg));
        self.agree(actions);
    }

    /// Each heartbeat: a request for the peer's entries that got no answer goes again.
    pub(super) fn on_config_heartbeat(&mut self) {
        let actions = self.agreement.heartbeat();
        if !actions.is_empty() {
            self.agree(actions);
        }
    }

    pub(super) fn on_peer_digest(&mut self, node: &str, digest: ConfigDigest) {
        let actions = self.agreement.peer_digest(node, digest);
        self.agree(actions);
    }

    pub(super) fn on_config_frame(&mut self, msg: Msg) {
        let actions = match msg {
            Msg::ConfigDigest(d) => {
                let Some(node) = self.m.peer().map(|p| p.node.clone()) else {
                    return;
                };
                self.agreement.peer_digest(&node, d)
            }
            Msg::ConfigRequest => vec![self.agreement.entries_requested()],
            Msg::ConfigEntries(e) => self.agreement.peer_entries(&e),
            _ => return,
        };
        self.agree(actions);
    }

    fn peer_name(&self) -> String {
        self.agreement
            .view()
            .peer
            .unwrap_or_else(|| "the peer".to_string())
    }

    fn send_config(&self, msg: Msg) {
        if let Some(l) = self.link.as_ref().filter(|l| l.agrees) {
            let _ = l.tx.try_send(msg);
        }
    }

    fn agree(&mut self, actions: Vec<AgreementAction>) {
        for a in actions {
            match a {
                AgreementAction::SendDigest(d) => {
                    let _ = self.digest_tx.send(d.clone());
                    self.send_config(Msg::ConfigDigest(d));
                }
                AgreementAction::RequestEntries => self.send_config(Msg::ConfigRequest),
                AgreementAction::SendEntries(e) => self.send_config(Msg::ConfigEntries(e)),
                AgreementAction::Mismatch { sections, keys } if keys.is_empty() => {
                    let peer = self.peer_name();
                    let n = sections.len();
                    let sections = sections.join(", ");
                    tracing::warn!(
                        peer = %peer,
                        sections = %sections,
                        "config differs from {peer} in section(s) {sections} (the heartbeat digests differ; {KEYS_PENDING}), both nodes must serve the same subnets, pools, options, DNS data, VIPs and HA timers"
                    );
                    self.metrics.config_mismatch.set(n as i64);
                    self.p.health.set_problem(
                        HEALTH_KEY,
                        Some(format!(
                            "config differs from {peer} in section(s) {sections} ({KEYS_PENDING})"
                        )),
                    );
                    self.publish_config_event(
                        EventKind::HaConfigMismatch,
                        peer,
                        vec![format!("section(s) {sections} differ ({KEYS_PENDING})")],
                    );
                }
                AgreementAction::Mismatch { keys, .. } => {
                    let peer = self.peer_name();
                    let lines: Vec<String> = keys.iter().map(|d| d.describe(&peer)).collect();
                    tracing::warn!(
                        peer = %peer,
                        keys = keys.len(),
                        "config differs from {peer} in {} key(s), both nodes must serve the same subnets, pools, options, DNS data, VIPs and HA timers: {}",
                        keys.len(),
                        lines.join("; ")
                    );
                    self.metrics.config_mismatch.set(keys.len() as i64);
                    self.p.health.set_problem(
                        HEALTH_KEY,
                        Some(format!(
                            "config differs from {peer}: {}",
                            keys.iter()
                                .map(|d| d.key.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                    );
                    self.publish_config_event(EventKind::HaConfigMismatch, peer, lines);
                }
                AgreementAction::Agreed => {
                    let peer = self.peer_name();
                    tracing::info!(peer = %peer, "config agrees with {peer} again");
                    self.metrics.config_mismatch.set(0);
                    self.p.health.set_problem(HEALTH_KEY, None);
                    self.publish_config_event(EventKind::HaConfigAgreed, peer, Vec::new());
                }
            }
        }
        let _ = self.view_tx.send(self.agreement.view());
    }

    fn publish_config_event(&self, kind: EventKind, peer: String, differences: Vec<String>) {
        self.p.bus.publish(Event::new(
            kind,
            self.p.node.clone(),
            EventData::Config(ConfigEvent { peer, differences }),
        ));
    }
}

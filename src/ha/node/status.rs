//! What the node shows: the `ha.*` events on the bus (and the service role, the serving gate
//! and the metrics a `ha.failover` moves), and the status the API and the peer read.

use std::time::Instant;

use super::NodeTask;
use crate::events::{Event, EventData, EventKind, HaEvent};
use crate::ha::role::ServiceRole;
use crate::ha::{HaState, HaStatus, HaTransition, TRANSITION_HISTORY};
use crate::health::mono_ms;

impl NodeTask {
    /// Logs and publishes one `ha.*` event; a `ha.failover` that changes the state also moves
    /// the serving gate and the metrics, and every `ha.failover` (a re-announce too) is first
    /// written to the service role the VIP follows.
    pub(super) fn emit(&mut self, kind: EventKind, old: HaState, new: HaState, reason: String) {
        let peer = self.m.peer().map(|p| p.state);
        let peer_state = peer;
        if kind == EventKind::HaFailover {
            // The VIP's channel, before the event: the bus may drop for a slow subscriber,
            // the role never does (latest value wins).
            let epoch = self.m.epoch();
            self.p.role.send_modify(|r| {
                let reannounce = if old == new && new.serves() {
                    r.reannounce + 1
                } else {
                    r.reannounce
                };
                *r = ServiceRole {
                    state: new,
                    epoch,
                    peer_state: peer,
                    reannounce,
                    since: Instant::now(),
                    fenced: self.m.fenced(),
                };
            });
        }
        if kind == EventKind::HaFailover && old == new {
            tracing::info!(event = kind.as_str(), state = %new, reason = %reason, "HA stays {new}: {reason}");
        } else if kind == EventKind::HaFailover {
            self.metrics.transitions.inc();
            self.metrics.set_state(new);
            self.metrics.epoch.set(self.m.epoch() as i64);
            let _ = self.serving_tx.send(new);
            tracing::info!(
                event = kind.as_str(),
                old_state = %old,
                new_state = %new,
                epoch = self.m.epoch(),
                reason = %reason,
                "HA {old} -> {new}: {reason}"
            );
        } else if kind == EventKind::HaSplitBrain {
            tracing::warn!(event = kind.as_str(), reason = %reason, "{kind}: {reason}");
        } else {
            tracing::info!(event = kind.as_str(), reason = %reason, "{kind}: {reason}");
        }
        self.p.bus.publish(Event::new(
            kind,
            self.p.node.clone(),
            EventData::Ha(HaEvent {
                old_state: old,
                new_state: new,
                reason,
                role: self.inner.role,
                peer_state,
                epoch: self.m.epoch(),
            }),
        ));
    }

    /// Keeps the last transitions for the status, recorded before the status that shows
    /// their new state is published (a reader never sees a state its history lacks).
    pub(super) fn record_transitions(&mut self, actions: &[crate::ha::machine::Action]) {
        for a in actions {
            let crate::ha::machine::Action::Transition { old, new, reason } = a else {
                continue;
            };
            if old == new {
                continue;
            }
            if self.history.len() == TRANSITION_HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(HaTransition {
                at: crate::events::now_ms(),
                from: *old,
                to: *new,
                epoch: self.m.epoch(),
                reason: reason.clone(),
            });
        }
    }

    pub(super) fn publish_status(&mut self) {
        let wm = self.watermark();
        let _ = self.my_tx.send(self.m.status(wm));
        let connected = self.link.is_some() && self.m.link_up();
        self.metrics.peer_connected.set(i64::from(connected));
        let st = HaStatus {
            enabled: true,
            node: self.p.node.clone(),
            role: self.inner.role.to_string(),
            state: self.m.state(),
            peer_connected: connected,
            peer_state: if connected {
                self.m.peer().map(|p| p.state)
            } else {
                None
            },
            last_heartbeat: self.last_heartbeat_unix,
            fenced: self.m.fenced(),
            paths: self.m.paths(mono_ms()),
            epoch: self.m.epoch(),
            lease_watermark: wm,
            peer_lease_watermark: self.m.peer().map(|p| p.watermark),
            vips: Vec::new(),
            peer_node: self.m.peer().map(|p| p.node.clone()),
            peer_epoch: self.m.peer().map(|p| p.epoch),
            peer_address: self.p.config.ha.peer_socket_addr().map(|a| a.to_string()),
            transitions: self.history.iter().cloned().collect(),
        };
        self.status_tx.send_if_modified(|old| {
            if *old != st {
                *old = st;
                true
            } else {
                false
            }
        });
    }
}

//! The node task's side of the peer link: which of two links stays (the tie-break), making
//! one the current link with its own lease applier, its end, and the frames it brings.

use super::{CurrentLink, NodeMsg, NodeTask};
use crate::ha::link::{preferred_dialer, replaces, retire, LinkReady};
use crate::ha::machine::{Control, Input};
use crate::ha::peer::{LinkError, Msg};
use crate::ha::sync::{self, ApplyJob};

impl NodeTask {
    pub(super) fn on_link(&mut self, new: LinkReady) {
        if let Some(cur) = &self.link {
            let preferred = preferred_dialer(
                &self.inner.node,
                self.inner.role,
                &new.peer.node,
                new.peer.role,
            );
            let keep_new = replaces((&new.dialer, new.dial), (&cur.dialer, cur.dial), &preferred);
            let same_peer =
                self.m.link_up() && self.m.peer().is_some_and(|p| p.node == new.peer.node);
            if !keep_new {
                tracing::debug!(peer = %new.addr, "second peer link dialled by {} closed; keeping the one dialled by {}", new.dialer, cur.dialer);
                retire(new.cancel);
                return;
            }
            tracing::debug!(peer = %new.addr, "replacing the peer link dialled by {} with the one dialled by {}", cur.dialer, new.dialer);
            if let Some(old) = self.link.take() {
                if same_peer {
                    retire(old.cancel);
                } else {
                    old.cancel.cancel();
                }
            }
            if same_peer {
                // The tie-break can land after the pair settled (a dial slowed by load): the
                // peer never went away, so swap the transport under the machine instead of
                // a link-down/up that would abandon a handoff in flight and release the
                // DHCPACKs waiting for the standby. What was in flight goes again.
                let peer = new.peer.clone();
                self.install_link(new);
                if let Some(l) = &self.link {
                    for frame in self.pending.unacked() {
                        if l.tx.try_send(frame).is_err() {
                            break; // the ACKs' bounded wait covers the rest
                        }
                    }
                }
                self.step(Input::LinkSwapped(peer));
                return;
            }
            self.pending.fail_all();
            self.step(Input::LinkDown);
        }
        let peer = new.peer.clone();
        self.install_link(new);
        self.step(Input::LinkUp(peer));
    }

    /// Makes `new` the current link, with its own applier.
    pub(super) fn install_link(&mut self, new: LinkReady) {
        let id = new.id;
        let tx = self.tx.clone();
        let applier = sync::spawn_applier(
            self.p.lease_log.clone(),
            new.tx.clone(),
            new.peer_nacks,
            move |applied| {
                let _ = tx.try_send(NodeMsg::Applied { id, applied });
            },
        );
        tracing::info!(
            peer = %new.addr,
            peer_node = %new.peer.node,
            peer_state = %new.peer.state,
            epoch = new.peer.epoch,
            "peer link to {} ({}) up: peer is {} with epoch {}, lease watermark {}",
            new.peer.node,
            new.addr,
            new.peer.state,
            new.peer.epoch,
            new.peer.watermark
        );
        let peer_config = new.peer_config.clone().map(|d| (new.peer.node.clone(), d));
        if new.peer.watermark < self.peer_synced {
            // The peer's lease log is younger than what we merged (a new database): start over.
            self.peer_synced = 0;
        }
        self.link = Some(CurrentLink {
            id,
            dialer: new.dialer,
            dial: new.dial,
            addr: new.addr,
            tx: new.tx,
            cancel: new.cancel,
            applier,
            agrees: peer_config.is_some(),
            synced: 0,
            changed: 0,
        });
        if let Some((node, digest)) = peer_config {
            self.agreement.link_up();
            self.on_peer_digest(&node, digest);
        } else {
            // A peer that predates config agreement: only digests could tell (it sends none).
            self.agreement.link_down();
        }
        let _ = self.link_up_tx.send(true);
        self.last_heartbeat_unix = Some(crate::events::now_ms());
    }

    pub(super) fn on_link_closed(&mut self, id: u64, err: Option<LinkError>) {
        if self.link.as_ref().is_some_and(|l| l.id == id) {
            let l = self.link.take();
            if let (Some(l), Some(_)) = (l, err) {
                l.cancel.cancel();
            }
            self.pending.fail_all();
            self.agreement.link_down();
            let _ = self.link_up_tx.send(false);
            self.step(Input::LinkDown);
        }
    }

    pub(super) fn on_frame(&mut self, msg: Msg) {
        match msg {
            Msg::Hello { .. } => {} // only valid as the first frame; handled by the link
            Msg::DnsWarm(_) => {}   // handled by the link's reader
            Msg::Control(c) => {
                if matches!(c, Control::Status(_)) {
                    self.metrics.heartbeats_received.inc();
                    self.last_heartbeat_unix = Some(crate::events::now_ms());
                }
                self.step(Input::Peer(c));
            }
            Msg::Leases { id, leases } => {
                if let Some(l) = &self.link {
                    let _ = l.applier.send(ApplyJob::Live { id, leases });
                }
            }
            Msg::LeasesAck { id } => {
                self.metrics.replicated.inc();
                self.pending.ack(id);
            }
            Msg::LeasesNack { id } => self.pending.nack(id),
            Msg::SyncRequest { since } => {
                if let Some(l) = &self.link {
                    sync::spawn_bulk_sender(self.p.lease_log.clone(), since, l.tx.clone());
                }
            }
            Msg::SyncBatch { changes, done } => {
                if let Some(l) = &self.link {
                    let _ = l.applier.send(ApplyJob::Bulk { changes, done });
                }
            }
            Msg::ConfigDigest(_) | Msg::ConfigRequest | Msg::ConfigEntries(_) => {
                self.on_config_frame(msg)
            }
        }
    }
}

//! The peer link's life: up, replaced, closed, a refused dial, and the bulk sync it carries.

use super::*;

impl Machine {
    pub(super) fn on_link_up(
        &mut self,
        ps: PeerStatus,
        now: u64,
        watermark: u64,
        out: &mut Vec<Action>,
    ) {
        self.link_up = true;
        self.synced = false;
        self.linked_once = true;
        self.last_link_ms = now;
        self.paths.heard(paths::LINK, now);
        if self.is_stale(&ps) {
            // The hello was written before a status a datagram already brought.
            self.last_peer_ms = now;
        } else {
            self.peer_heard(ps, now, watermark, out);
        }
        if !self.peer_present {
            self.peer_present = true;
            let name = self.peer_name();
            self.emit(out, HaNotice::PeerUp, format!("peer link to {name} is up"));
        }
        // The hello was written before this node saw the link up, and its state may
        // have changed since (a resumed ACTIVE that just stepped down): say it now.
        out.push(Action::Send(Control::Status(self.status(watermark))));
        out.push(Action::StartSync);
        if self.state() == HaState::Standby && !self.stopping {
            let name = self.peer_name();
            self.timers.set(Timer::Sync, now + self.cfg.sync_ms);
            self.transition(
                HaState::Syncing,
                format!("bulk sync with {name} after connect"),
                watermark,
                out,
            );
        }
        self.evaluate(now, watermark, out);
        self.settle_fence(now, out);
    }

    pub(super) fn on_link_swapped(
        &mut self,
        ps: PeerStatus,
        now: u64,
        watermark: u64,
        out: &mut Vec<Action>,
    ) {
        if !self.link_up {
            return self.on_link_up(ps, now, watermark, out);
        }
        // The hello on the new link is no news: the peer wrote it before it saw the
        // swap, and frames on the old link may be younger (a handoff it took since
        // says ACTIVE there, its hello still STANDBY). Deciding on it could take the
        // service back from a peer that just took it; its current status follows on
        // the new link. It does prove the peer alive.
        self.last_peer_ms = now;
        self.last_link_ms = now;
        self.forget_witness();
        // Frames on the retired link are ignored by the peer: our current status
        // (e.g. a step-down the peer waits for to announce again) goes now.
        out.push(Action::Send(Control::Status(self.status(watermark))));
        if let Some(h) = self.handoff() {
            out.push(Action::Send(Control::Handoff {
                reason: h.reason.clone(),
                epoch: self.epoch,
            }));
        }
        out.push(Action::StartSync);
    }

    pub(super) fn on_link_down(&mut self, watermark: u64, out: &mut Vec<Action>) {
        if !self.link_up {
            return;
        }
        self.link_up = false;
        self.synced = false;
        let name = self.peer_name();
        self.peer_gone(format!("peer link to {name} closed"), out);
        if let Some(h) = self.end_handoff() {
            out.push(Action::HandoffEnded(Err(HandoffError::LinkClosed {
                peer: name.clone(),
                reason: h.reason.clone(),
            })));
            if h.shutdown {
                // The peer most likely took over and the ack was lost with the link;
                // if it did not, its reconnect is refused once we exit and it takes
                // over at once.
                self.transition(
                    HaState::Standby,
                    format!("shutdown: link to {name} closed during the handoff"),
                    watermark,
                    out,
                );
                out.push(Action::ShutdownReady);
            }
        }
        if self.state() == HaState::Syncing {
            self.transition(
                HaState::Standby,
                format!("link to {name} closed during bulk sync"),
                watermark,
                out,
            );
        }
    }

    pub(super) fn on_reconnect_refused(&mut self, now: u64, watermark: u64, out: &mut Vec<Action>) {
        let name = self.peer_name();
        self.peer_gone(format!("{name} refused the connection (process gone)"), out);
        if self.linked_once
            && matches!(self.state(), HaState::Standby | HaState::Syncing)
            && !self.stopping
            && !self.faulted()
            && self.witness.is_none()
            && !self.link_up
        {
            self.begin_takeover(Cause::Refused, now, watermark, out);
        }
    }

    pub(super) fn on_sync_complete(
        &mut self,
        detail: String,
        now: u64,
        watermark: u64,
        out: &mut Vec<Action>,
    ) {
        self.emit(out, HaNotice::SyncComplete, detail.clone());
        self.synced = true;
        if self.store_resync {
            // The peer's whole lease set is here now: the rebuilt store may serve.
            self.store_resync = false;
            if self.faulted() && !self.health_stuck && self.store_failed.is_none() {
                self.leave_fault(
                    HaState::Standby,
                    format!("lease database rebuilt from the peer: {detail}"),
                    now,
                    watermark,
                    out,
                );
                self.evaluate(now, watermark, out);
            }
            return;
        }
        if self.state() == HaState::Syncing {
            self.transition(HaState::Standby, detail, watermark, out);
            self.evaluate(now, watermark, out);
        }
    }
}

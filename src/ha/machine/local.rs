//! Requests from this host: health reports, the shutdown signal, and the API's failover.

use super::*;

impl Machine {
    pub(super) fn on_health(
        &mut self,
        stuck: Vec<String>,
        now: u64,
        watermark: u64,
        out: &mut Vec<Action>,
    ) {
        self.health_stuck = !stuck.is_empty();
        if !stuck.is_empty() && !self.faulted() {
            self.enter_fault(
                format!("cannot serve: {}", stuck.join(", ")),
                watermark,
                out,
            );
        } else if stuck.is_empty() && self.faulted() && self.store_ok() {
            self.end_fault("can serve again", now, watermark, out);
        }
    }

    /// Every way out of FAULT: what this node heard of the peer may predate the fault (the
    /// peer may have taken over meanwhile, or be about to): it asks, and decides on the
    /// answer (see `fence::doubt_peer`).
    pub(super) fn leave_fault(
        &mut self,
        new: HaState,
        reason: String,
        now: u64,
        watermark: u64,
        out: &mut Vec<Action>,
    ) {
        self.doubt_peer(now);
        self.transition(new, reason, watermark, out);
    }

    /// The lease store failed, healed, or must be rebuilt from the peer.
    pub(super) fn on_store(
        &mut self,
        input: StoreInput,
        now: u64,
        watermark: u64,
        out: &mut Vec<Action>,
    ) {
        match input {
            StoreInput::Failed(why) => {
                self.store_failed = Some(why.clone());
                if !self.faulted() {
                    self.enter_fault(
                        format!("lease database cannot be written: {why}"),
                        watermark,
                        out,
                    );
                }
            }
            StoreInput::NeedsResync => {
                self.store_resync = true;
                if !self.faulted() {
                    self.enter_fault(
                        "lease database started empty in place of a damaged one: waiting for the peer's leases".into(),
                        watermark,
                        out,
                    );
                }
            }
            StoreInput::Healed => {
                self.store_failed = None;
                self.end_fault("lease database writable again", now, watermark, out);
            }
        }
    }

    /// A fault (health or store) is over: unless something else keeps FAULT, resync with the
    /// peer before standing by. A FAULT node is sent no leases (the active replicates only
    /// to a STANDBY or SYNCING peer) and, with its store failed, could merge none: whatever
    /// the peer gave out meanwhile is missing here. Without a link the sync comes with the
    /// next link-up (a STANDBY node syncs on every connect).
    pub(super) fn end_fault(&mut self, why: &str, now: u64, watermark: u64, out: &mut Vec<Action>) {
        if !self.faulted() || self.health_stuck || !self.store_ok() {
            return;
        }
        if self.link_up && !self.stopping {
            let name = self.peer_name();
            self.timers.set(Timer::Sync, now + self.cfg.sync_ms);
            self.leave_fault(
                HaState::Syncing,
                format!("{why}: bulk sync with {name}"),
                now,
                watermark,
                out,
            );
            out.push(Action::StartSync);
        } else {
            self.leave_fault(HaState::Standby, why.to_string(), now, watermark, out);
        }
    }

    fn store_ok(&self) -> bool {
        self.store_failed.is_none() && !self.store_resync
    }

    fn enter_fault(&mut self, reason: String, watermark: u64, out: &mut Vec<Action>) {
        self.forget_witness();
        if let Some(h) = self.end_handoff() {
            out.push(Action::HandoffEnded(Err(HandoffError::Abandoned {
                peer: self.peer_name(),
                reason: h.reason,
                state: HaState::Fault,
            })));
            if h.shutdown {
                out.push(Action::ShutdownReady);
            }
        }
        self.transition(HaState::Fault, reason, watermark, out);
    }

    pub(super) fn on_shutdown(&mut self, now: u64, watermark: u64, out: &mut Vec<Action>) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.forget_witness();
        let peer_can_take = self.link_up
            && self
                .peer
                .as_ref()
                .is_some_and(|p| matches!(p.state, HaState::Standby | HaState::Syncing));
        if self.state() == HaState::Active && peer_can_take {
            if let Phase::Active {
                handoff: Some(h), ..
            } = &mut self.phase
            {
                // A planned handoff is already in flight: let it finish, then exit.
                h.shutdown = true;
            } else {
                self.start_handoff("shutdown".to_string(), true, now, out);
            }
        } else {
            if self.state() == HaState::Active {
                self.transition(
                    HaState::Standby,
                    "shutdown (no standby peer to hand off to)".to_string(),
                    watermark,
                    out,
                );
            }
            out.push(Action::ShutdownReady);
        }
    }

    pub(super) fn on_api_failover(&mut self, now: u64, out: &mut Vec<Action>) {
        let peer = self.peer.as_ref();
        if self.state() != HaState::Active {
            out.push(Action::Refused(format!(
                "this node is {}, only the ACTIVE node can hand off",
                self.state()
            )));
        } else if self.handoff().is_some() {
            out.push(Action::Refused("a handoff is already in progress".into()));
        } else if !self.link_up
            || !peer.is_some_and(|p| matches!(p.state, HaState::Standby | HaState::Syncing))
        {
            out.push(Action::Refused(format!(
                "no connected standby peer (peer {})",
                match peer {
                    Some(p) if self.link_up => p.state.to_string(),
                    _ => "not connected".to_string(),
                }
            )));
        } else {
            self.start_handoff(API_REASON.to_string(), false, now, out);
        }
    }
}

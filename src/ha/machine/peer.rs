//! Control frames from the peer (status, handoff, its acknowledgement) and the decisions a
//! fresh peer status allows.

use super::*;

impl Machine {
    pub(super) fn on_peer(
        &mut self,
        frame: Control,
        now: u64,
        watermark: u64,
        out: &mut Vec<Action>,
    ) {
        // Any authenticated frame proves the link alive, even a status older than one a
        // datagram already brought.
        self.last_link_ms = now;
        self.paths.heard(paths::LINK, now);
        match frame {
            Control::Status(ps) => {
                if self.is_stale(&ps) || self.predates_our_handoff(&ps) {
                    self.last_peer_ms = now;
                    return;
                }
                self.peer_heard(ps, now, watermark, out);
                self.evaluate(now, watermark, out);
                self.settle_fence(now, out);
            }
            Control::Handoff { reason, epoch } => {
                self.last_peer_ms = now;
                self.forget_witness();
                let name = self.peer_name();
                if let Some(p) = self.peer.as_mut() {
                    p.epoch = p.epoch.max(epoch);
                }
                if matches!(self.phase, Phase::Active { handoff_taken, .. } if handoff_taken == Some(epoch))
                {
                    // The handoff this node already took, sent again: the first ack was lost.
                    out.push(Action::Send(Control::HandoffAck {
                        epoch: self.epoch,
                        accepted: true,
                    }));
                    return;
                }
                let can = matches!(self.state(), HaState::Standby | HaState::Syncing)
                    && !self.faulted()
                    && !self.stopping;
                if can {
                    self.take_over(
                        format!("handoff from {name} ({reason})"),
                        epoch,
                        watermark,
                        out,
                    );
                    if let Phase::Active {
                        handoff_taken,
                        reannounce_on_release,
                        ..
                    } = &mut self.phase
                    {
                        *handoff_taken = Some(epoch);
                        *reannounce_on_release = true;
                    }
                    if let Some(p) = self.peer.as_mut() {
                        p.state = HaState::Standby;
                    }
                    out.push(Action::Send(Control::HandoffAck {
                        epoch: self.epoch,
                        accepted: true,
                    }));
                } else {
                    out.push(Action::Send(Control::HandoffAck {
                        epoch: self.epoch,
                        accepted: false,
                    }));
                    out.push(Action::Log(format!(
                        "refused handoff from {name} ({reason}): this node is {}{}",
                        self.state(),
                        if self.stopping {
                            " and shutting down"
                        } else {
                            ""
                        }
                    )));
                }
            }
            Control::HandoffAck { epoch, accepted } => {
                self.last_peer_ms = now;
                let name = self.peer_name();
                if accepted {
                    self.handoff_taken(epoch, watermark, out);
                    return;
                }
                let Some(h) = self.end_handoff() else {
                    return;
                };
                {
                    out.push(Action::HandoffEnded(Err(HandoffError::Refused {
                        peer: name.clone(),
                        reason: h.reason.clone(),
                    })));
                    self.after_failed_handoff(
                        h.shutdown,
                        format!("shutdown: {name} refused the handoff"),
                        now,
                        watermark,
                        out,
                    );
                }
            }
        }
    }

    /// The peer took the handoff this node offered: it stands by (the ack, or the taker's
    /// ACTIVE status with the new epoch when that outran the ack on another path).
    fn handoff_taken(&mut self, epoch: u64, watermark: u64, out: &mut Vec<Action>) {
        let name = self.peer_name();
        let Some(h) = self.end_handoff() else {
            return;
        };
        self.yielded = h.reason == API_REASON;
        if let Some(p) = self.peer.as_mut() {
            p.state = HaState::Active;
            p.epoch = p.epoch.max(epoch);
        }
        self.transition(
            HaState::Standby,
            format!("handed off to {name} ({})", h.reason),
            watermark,
            out,
        );
        out.push(Action::HandoffEnded(Ok(())));
        if h.shutdown {
            out.push(Action::ShutdownReady);
        }
    }

    /// A datagram heartbeat: news like a status on the link, but it cannot carry a handoff
    /// or a sync, so only the decisions that need no link are taken on it (see `evaluate`).
    pub(super) fn on_datagram(
        &mut self,
        path: usize,
        ps: PeerStatus,
        now: u64,
        watermark: u64,
        out: &mut Vec<Action>,
    ) {
        // Another pair sharing the secret and the network is not our peer.
        let stranger = self.peer.as_ref().is_some_and(|p| p.node != ps.node);
        if path >= self.cfg.paths.len() || ps.node == self.cfg.node || stranger {
            return;
        }
        self.paths.heard(path + 1, now);
        if self.is_stale(&ps) {
            return;
        }
        if self.predates_our_handoff(&ps) {
            self.last_peer_ms = now;
            return;
        }
        self.peer_heard(ps, now, watermark, out);
        self.evaluate(now, watermark, out);
        self.settle_fence(now, out);
    }

    /// Whether `ps` is the ACTIVE status of the node whose handoff this node took, sent
    /// before that node read our ack (a heartbeat of its still-ACTIVE phase): it is alive,
    /// but its state is old news. Taken as news it made every handoff look like two ACTIVE
    /// nodes meeting (a split-brain warning on each preemption) and, for a moment, left no
    /// standby peer to hand back to.
    fn predates_our_handoff(&self, ps: &PeerStatus) -> bool {
        matches!(self.phase, Phase::Active { handoff_taken: Some(e), .. }
            if ps.state == HaState::Active && ps.epoch <= e)
    }

    /// Whether `ps` is older than the status already applied (a copy that took the slower
    /// path): same incarnation and fewer state changes, or an earlier incarnation.
    pub(super) fn is_stale(&self, ps: &PeerStatus) -> bool {
        self.peer
            .as_ref()
            .is_some_and(|p| p.node == ps.node && (ps.boot, ps.gen) < (p.boot, p.gen))
    }

    pub(super) fn peer_heard(
        &mut self,
        ps: PeerStatus,
        now: u64,
        watermark: u64,
        out: &mut Vec<Action>,
    ) {
        self.note_answer(&ps);
        if ps.ask != 0 && ps.ask != self.peer_ask {
            // The peer asks for fresh news (it was stalled, or its VIP is claimed
            // elsewhere): answer now on every path rather than a heartbeat later.
            self.peer_ask = ps.ask;
            out.push(Action::Send(Control::Status(self.status(watermark))));
        }
        let was_active = self
            .peer
            .as_ref()
            .is_some_and(|p| p.state == HaState::Active);
        let let_go = ps.state != HaState::Active && self.state() == HaState::Active;
        if let_go && was_active && self.handoff().is_none() {
            // Two ACTIVE nodes met and the peer just let go: clients may have followed its
            // last announcement, so claim the VIP again now instead of after a conflict
            // hold-off. Same state on both sides of the event: only the reason is news.
            out.push(Action::Reannounce {
                reason: format!(
                    "{} stepped down to {}; announcing the service again",
                    ps.node, ps.state
                ),
            });
            // A preempting primary gets the service back later, not in this instant: a
            // handoff now races the announcement above (both nodes' gratuitous ARPs within a
            // millisecond, in either order), and clients that follow ours last are sent to
            // the node that releases the VIP a moment later (a 1 s outage until the new
            // owner's conflict defence, seen after SIGCONT of a hung primary).
            self.hold_preemption(now + self.cfg.failover_ms);
            self.take_reannounce_on_release();
        } else if let_go && self.take_reannounce_on_release() {
            // We took a handoff. The old owner's VIP worker may have sent an announcement
            // (the next GARP of its claim burst, a defence) between our claim and its
            // release; clients that followed it would reach a node without the VIP until
            // our conflict hold-off (1 s) ends. Its status says it let go: announce last.
            out.push(Action::Reannounce {
                reason: format!(
                    "{} let go after the handoff; announcing the service again",
                    ps.node
                ),
            });
        }
        self.last_peer_ms = now;
        self.forget_witness();
        self.averted = false;
        if ps.state != HaState::Active {
            self.dual_reported = false;
        }
        self.peer = Some(ps);
    }

    /// Whether a re-announcement is owed for the old owner's release; it is owed once.
    fn take_reannounce_on_release(&mut self) -> bool {
        match &mut self.phase {
            Phase::Active {
                reannounce_on_release,
                ..
            } => std::mem::take(reannounce_on_release),
            _ => false,
        }
    }

    pub(super) fn peer_gone(&mut self, reason: String, out: &mut Vec<Action>) {
        if self.peer_present {
            self.peer_present = false;
            self.dual_reported = false;
            self.emit(out, HaNotice::PeerDown, reason);
        }
    }

    /// Decisions on a fresh peer status. Two ACTIVE nodes resolve on news from any path; a
    /// preemption needs the link (it is a handoff); two STANDBY nodes that hear each other
    /// only on a datagram path wait until the link has been silent for a failover timeout
    /// (at start the link normally comes up first and the sync runs before anyone serves).
    pub(super) fn evaluate(&mut self, now: u64, watermark: u64, out: &mut Vec<Action>) {
        let heard = now.saturating_sub(self.last_peer_ms) < self.cfg.failover_ms;
        if !(self.link_up || heard) || self.stopping || self.faulted() {
            return;
        }
        let link_gone =
            !self.link_up && now.saturating_sub(self.last_link_ms) >= self.cfg.failover_ms;
        let Some(p) = self.peer.clone() else { return };
        match (self.state(), p.state) {
            (HaState::Active, HaState::Active) => {
                if self.handoff().is_some() {
                    // The planned overlap of a handoff ends with the ack, or with the taker's
                    // ACTIVE status under a newer epoch when that comes first (a datagram
                    // outrunning an ack stuck behind a slow link: the sim saw 390 ms of two
                    // ACTIVE nodes waiting for it).
                    if p.epoch > self.epoch {
                        self.handoff_taken(p.epoch, watermark, out);
                    }
                    return;
                }
                let peer_wins = p.epoch > self.epoch
                    || (p.epoch == self.epoch && wins_tie(&p.role, &p.node, &self.cfg));
                let (winner, we, they) = if peer_wins {
                    (p.node.clone(), self.epoch, p.epoch)
                } else {
                    (self.cfg.node.clone(), self.epoch, p.epoch)
                };
                if !self.dual_reported {
                    self.dual_reported = true;
                    self.emit(
                        out,
                        HaNotice::SplitBrain,
                        format!(
                            "two ACTIVE nodes met ({} epoch {we}, {} epoch {they}): {winner} stays",
                            self.cfg.node, p.node
                        ),
                    );
                }
                if peer_wins {
                    self.transition(
                        HaState::Standby,
                        format!(
                            "{} is ACTIVE with {} (this node: epoch {we})",
                            p.node,
                            if they > we {
                                format!("higher epoch {they}")
                            } else {
                                format!("equal epoch {they} and wins the tie as {}", p.role)
                            }
                        ),
                        watermark,
                        out,
                    );
                }
            }
            (HaState::Active, HaState::Standby)
                if self.link_up
                    && p.wants_active
                    && p.role == Role::Primary
                    && self.cfg.role == Role::Secondary
                    && self.handoff().is_none()
                    && self.timers.get(Timer::PreemptHold).is_none_or(|t| now >= t) =>
            {
                self.start_handoff(format!("preemption by primary {}", p.node), false, now, out);
            }
            // Back from FAULT, a STANDBY or FAULT status may predate the fault: the peer may
            // have taken over since (see `fence::doubt_peer`).
            (HaState::Standby | HaState::Syncing, HaState::Standby | HaState::Fault)
                if self.doubts_peer() => {}
            (HaState::Standby, HaState::Standby)
                if (self.link_up || link_gone) && !wins_tie(&p.role, &p.node, &self.cfg) =>
            {
                self.take_over(
                    format!(
                        "{} is STANDBY too; the {} takes the service",
                        p.node, self.cfg.role
                    ),
                    0,
                    watermark,
                    out,
                );
            }
            (HaState::Standby | HaState::Syncing, HaState::Fault) => {
                self.take_over(format!("{} reports FAULT", p.node), 0, watermark, out);
            }
            _ => {}
        }
    }
}

//! Self-fencing after a stall, and the question a node asks when its own view may be stale.
//!
//! A node whose inputs stopped for longer than its serve lease (`failover_ms` less a
//! heartbeat; SIGSTOP, a paused VM, a swap storm) may have been taken over from meanwhile. If it was ACTIVE it is fenced: still
//! ACTIVE (its epoch is its claim), but not serving, no DHCP answers and no VIP, until
//! - a peer status answers the question it asks on every path (`PeerStatus::ask`, echoed in
//!   `answer`): frames queued during the stall were written before the question and cannot
//!   answer it. Then the usual rules decide (a higher epoch on the peer: step down), and if
//!   this node still serves it is unfenced;
//! - or, with no answer after a short wait, the VIP witness (asked once this node's own VIP
//!   is gone) says whether another node serves: yes → step down, no → serve again. Without a
//!   witness, a failover timeout of silence on every path lets it serve again, as a standby
//!   would take over.
//!
//! The same question, without fencing, is asked when the VIP is announced from another MAC
//! while the peer has not been heard lately: the answer settles who serves before the VIP's
//! conflict hold-off ends.
//!
//! And by a node back from FAULT (its VIP link lost carrier, a worker was stuck): it *doubts*
//! its view of the peer. What it heard may predate the fault, and frames the peer wrote
//! before may still arrive (TCP retransmits them after a port flap). Until a status answers
//! the question, or a failover timeout passes, it takes no service on a peer's STANDBY or
//! FAULT; the silence that lets it take over counts from its return (see `silence_ms`).
//! So after a flap shorter than the failover timeout exactly one node serves: the peer,
//! if it heard nothing and took over, or this node once the peer answers it is STANDBY.

use super::*;

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Fence {
    /// The peer answered the current question since the fence began.
    answered: bool,
    /// The witness was asked (its answer decides).
    probing: bool,
    /// How long the stall was, for the reasons.
    stall_ms: u64,
}

impl Machine {
    /// A new question for the peer; a status carrying it goes on every path.
    fn ask_peer(&mut self, watermark: u64, out: &mut Vec<Action>) {
        self.new_question();
        out.push(Action::Send(Control::Status(self.status(watermark))));
    }

    /// The next question; every status carries it until a status of the peer answers it.
    fn new_question(&mut self) {
        self.asks += 1;
        self.ask = self.cfg.boot.wrapping_add(self.asks).max(1);
    }

    /// How long a fenced node waits for an answer before it asks the witness: a round trip
    /// on a LAN plus the removal of its own VIP (the witness must not find itself).
    fn fence_wait(&self) -> u64 {
        (2 * self.cfg.heartbeat_ms).clamp(50, self.cfg.failover_ms)
    }

    pub(super) fn on_stall(&mut self, gap: u64, now: u64, watermark: u64, out: &mut Vec<Action>) {
        let Phase::Active { fence, .. } = &mut self.phase else {
            return;
        };
        if fence.is_some() {
            return;
        }
        *fence = Some(Fence {
            answered: false,
            probing: false,
            stall_ms: gap,
        });
        self.forget_witness();
        self.timers.set(Timer::Fence, now + self.fence_wait());
        out.push(Action::Fence {
            on: true,
            reason: format!(
                "this node was stalled for {} (longer than failover_timeout {}): not serving \
                 until {} answers or the VIP witness decides",
                secs(gap),
                secs(self.cfg.failover_ms),
                self.peer_name()
            ),
        });
        self.ask_peer(watermark, out);
    }

    /// A status from the peer: does it answer our question?
    pub(super) fn note_answer(&mut self, ps: &PeerStatus) {
        if self.ask == 0 || ps.answer != self.ask {
            return;
        }
        self.ask = 0;
        self.timers.stop(Timer::Doubt);
        if let Phase::Active { fence: Some(f), .. } = &mut self.phase {
            f.answered = true;
        }
    }

    /// Leaving FAULT: what was heard of the peer may predate the fault. Ask (the status of
    /// the transition that follows carries the question), and take no service on the peer's
    /// status until it answers or a failover timeout passes (the peer, if it heard nothing
    /// from this node, has taken over by then).
    pub(super) fn doubt_peer(&mut self, now: u64) {
        self.fault_left_ms = now;
        self.timers.set(Timer::Doubt, now + self.cfg.failover_ms);
        self.new_question();
    }

    /// Whether this node doubts its view of the peer (see `doubt_peer`).
    pub(super) fn doubts_peer(&self) -> bool {
        self.timers.get(Timer::Doubt).is_some()
    }

    /// After a fresh status was applied and evaluated: a fenced node that is still ACTIVE
    /// (the peer did not win) serves again.
    pub(super) fn settle_fence(&mut self, now: u64, out: &mut Vec<Action>) {
        let answered = matches!(
            &self.phase,
            Phase::Active { fence: Some(f), .. } if f.answered
        );
        if answered {
            let name = self.peer_name();
            let peer = self.peer.as_ref().map_or(HaState::Standby, |p| p.state);
            self.unfence(
                format!("{name} answered after the stall: it is {peer}"),
                now,
                out,
            );
        }
    }

    fn unfence(&mut self, why: String, _now: u64, out: &mut Vec<Action>) {
        if let Phase::Active { fence, .. } = &mut self.phase {
            if fence.take().is_some() {
                self.timers.stop(Timer::Fence);
                out.push(Action::Fence {
                    on: false,
                    reason: format!("{why}; serving again"),
                });
            }
        }
    }

    pub(super) fn on_fence_timer(&mut self, now: u64, out: &mut Vec<Action>) {
        let Phase::Active { fence: Some(f), .. } = &mut self.phase else {
            return;
        };
        if self.cfg.witness {
            // Asked again after a failover timeout if its answer was lost.
            f.probing = true;
            self.timers.set(Timer::Fence, now + self.cfg.failover_ms);
            out.push(Action::ProbeWitness);
            return;
        }
        let silent = now.saturating_sub(self.last_peer_ms);
        if silent >= self.cfg.failover_ms {
            let name = self.peer_name();
            self.unfence(
                format!(
                    "no answer from {name} for {} and no VIP witness",
                    secs(silent)
                ),
                now,
                out,
            );
        } else {
            self.timers
                .set(Timer::Fence, self.last_peer_ms + self.cfg.failover_ms);
        }
    }

    pub(super) fn on_fence_witness(
        &mut self,
        answered: bool,
        now: u64,
        watermark: u64,
        out: &mut Vec<Action>,
    ) {
        let Phase::Active { fence: Some(f), .. } = &self.phase else {
            return;
        };
        if !f.probing {
            return;
        }
        let stall = secs(f.stall_ms);
        if answered {
            self.transition(
                HaState::Standby,
                format!("stalled for {stall}; another node serves the VIP"),
                watermark,
                out,
            );
        } else {
            self.unfence(
                format!("stalled for {stall}; nobody else serves the VIP"),
                now,
                out,
            );
        }
    }

    /// The VIP was announced from another MAC. Fresh peer news already decides (two ACTIVE
    /// nodes resolve on it); without it, ask on every path so the answer does, before the
    /// VIP's conflict hold-off ends and it defends the address.
    pub(super) fn on_vip_conflict(&mut self, now: u64, watermark: u64, out: &mut Vec<Action>) {
        if self.state() != HaState::Active || self.ask != 0 {
            return;
        }
        let fresh = now.saturating_sub(self.last_peer_ms) <= 2 * self.cfg.heartbeat_ms;
        if !fresh {
            out.push(Action::Log(format!(
                "the VIP is announced from another MAC and {} was last heard {} ago: asking on every path",
                self.peer_name(),
                secs(now.saturating_sub(self.last_peer_ms))
            )));
            self.ask_peer(watermark, out);
        }
    }
}

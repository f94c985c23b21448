//! The silence clock: what a tick decides (handoff and sync deadlines, a silent peer), the
//! VIP witness asked before a silent peer is taken over from, and when to tick next.

use super::*;

/// Every deadline the machine keeps, one named slot each (as quinn-proto's timer table), so
/// [`Machine::poll_timeout`] cannot forget one and no two `Option<u64>` fields drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// The peer must have acknowledged the handoff this node started.
    Handoff,
    /// SYNCING gives up and becomes STANDBY (armed only while SYNCING).
    Sync,
    /// An ACTIVE secondary does not hand the service to a preempting primary before this:
    /// after a refused or unanswered handoff, or after a dual-ACTIVE meeting it won.
    PreemptHold,
    /// A witness answer that never came stops blocking the next takeover attempt.
    WitnessGuard,
    /// A fenced node that heard no answer to its question asks the witness (or, without
    /// one, serves again after a failover timeout of silence).
    Fence,
    /// Back from FAULT: until then (or an answer to its question) this node takes no service
    /// on what it last heard of the peer, which may predate the fault.
    Doubt,
}

impl Timer {
    const COUNT: usize = 6;
}

/// When each [`Timer`] fires (monotonic ms), `None` when it is not armed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Timers([Option<u64>; Timer::COUNT]);

impl Timers {
    pub(super) fn set(&mut self, timer: Timer, at: u64) {
        self.0[timer as usize] = Some(at);
    }

    pub(super) fn stop(&mut self, timer: Timer) {
        self.0[timer as usize] = None;
    }

    pub(super) fn get(&self, timer: Timer) -> Option<u64> {
        self.0[timer as usize]
    }

    /// Whether `timer` is due at `now`; a due timer is disarmed (it fires once).
    pub(super) fn fire(&mut self, timer: Timer, now: u64) -> bool {
        let due = self.get(timer).is_some_and(|at| now >= at);
        if due {
            self.stop(timer);
        }
        due
    }

    /// The earliest armed timer.
    pub(super) fn next(&self) -> Option<u64> {
        self.0.iter().flatten().min().copied()
    }
}

impl Machine {
    pub(super) fn on_timer(&mut self, now: u64, watermark: u64, out: &mut Vec<Action>) {
        let frozen = self
            .last_tick_ms
            .is_some_and(|t| now.saturating_sub(t) > 3 * self.cfg.heartbeat_ms);
        self.last_tick_ms = Some(now);

        if self.timers.fire(Timer::Handoff, now) {
            if let Some(h) = self.end_handoff() {
                let name = self.peer_name();
                out.push(Action::HandoffEnded(Err(HandoffError::Timeout {
                    peer: name.clone(),
                    reason: h.reason.clone(),
                    after_ms: self.cfg.handoff_ms,
                })));
                let why = format!(
                    "shutdown: {name} did not acknowledge the handoff within {}",
                    secs(self.cfg.handoff_ms)
                );
                self.after_failed_handoff(h.shutdown, why, now, watermark, out);
            }
        }
        if self.timers.fire(Timer::Sync, now) && self.state() == HaState::Syncing {
            self.transition(
                HaState::Standby,
                format!("bulk sync did not finish within {}", secs(self.cfg.sync_ms)),
                watermark,
                out,
            );
        }
        // The prober always answers within its own timeout; this only guards against a lost
        // answer leaving the takeover pending forever.
        if self.timers.fire(Timer::WitnessGuard, now) {
            self.witness = None;
        }
        // The hold only delays a decision `evaluate` takes below; its end decides nothing else.
        self.timers.fire(Timer::PreemptHold, now);
        if self.timers.fire(Timer::Fence, now) {
            self.on_fence_timer(now, out);
        }
        // The doubt's end decides nothing by itself: `evaluate` below may act on the peer's
        // status again (the peer had a failover timeout to take over or answer).
        self.timers.fire(Timer::Doubt, now);
        // A node that cannot serve stops heartbeating (the transition to FAULT already told
        // the peer) but still notices a silent peer and closes the link, so it never leaves
        // FAULT trusting a link that died meanwhile. The status goes on the link when there
        // is one and on every datagram path. A node whose only fault is its lease store is
        // otherwise well: it keeps saying FAULT, so the link (and the resync it needs when
        // the store heals) stays up.
        if !self.faulted() || !self.health_stuck {
            out.push(Action::Send(Control::Status(self.status(watermark))));
        }
        if frozen {
            return;
        }
        self.paths.check(now, self.cfg.failover_ms, out);
        let silent_ms = now.saturating_sub(self.last_peer_ms);
        let link_silent_ms = now.saturating_sub(self.last_link_ms);
        if self.link_up && link_silent_ms >= self.cfg.failover_ms {
            // The link alone may be dead (a firewall on its port) while datagrams still
            // arrive: close it on its own silence, a fresh one is dialled.
            let name = self.peer_name();
            if silent_ms >= self.cfg.failover_ms || self.faulted() {
                self.peer_gone(format!("no frame from {name} for {}", secs(silent_ms)), out);
            } else {
                out.push(Action::Log(format!(
                    "no frame on the peer link from {name} for {}; still heard on another path",
                    secs(link_silent_ms)
                )));
            }
            self.link_up = false;
            out.push(Action::CloseLink);
            if self.state() == HaState::Syncing {
                self.transition(
                    HaState::Standby,
                    format!("{name} went silent during bulk sync"),
                    watermark,
                    out,
                );
            }
        }
        if self.faulted() {
            return;
        }
        if silent_ms >= self.cfg.failover_ms {
            let name = self.peer_name();
            self.peer_gone(format!("no frame from {name} for {}", secs(silent_ms)), out);
        }
        if self.silence_ms(now) >= self.probe_after()
            && matches!(self.state(), HaState::Standby | HaState::Syncing)
            && !self.stopping
            && self.witness.is_none()
        {
            self.begin_takeover(Cause::Silence { ms: silent_ms }, now, watermark, out);
        }
        if silent_ms < self.cfg.failover_ms {
            self.evaluate(now, watermark, out);
        }
    }

    /// The peer's silence that counts toward a takeover: since its last frame, or since this
    /// node left FAULT if that is later. A node without carrier hears nothing, and its peer,
    /// which heard nothing from it either, takes over a failover timeout after the fault
    /// began: this node gives it that time from its return, not from before the fault.
    pub(super) fn silence_ms(&self, now: u64) -> u64 {
        now.saturating_sub(self.last_peer_ms.max(self.fault_left_ms))
    }

    /// Silence after which a takeover starts: the witness is asked early enough that its
    /// answer (at most `witness_ms` later) lands on the failover timeout.
    pub(super) fn probe_after(&self) -> u64 {
        if self.cfg.witness {
            self.cfg.failover_ms.saturating_sub(self.cfg.witness_ms)
        } else {
            self.cfg.failover_ms
        }
    }

    /// The next instant (monotonic ms) at which a tick would decide something, so the caller
    /// can tick then instead of up to a heartbeat later: the earliest armed timer, or the
    /// silence that starts a takeover or closes the link.
    pub fn poll_timeout(&self) -> Option<u64> {
        let waiting = matches!(self.state(), HaState::Standby | HaState::Syncing)
            && !self.stopping
            && !self.faulted()
            && self.witness.is_none();
        let takeover =
            waiting.then(|| self.last_peer_ms.max(self.fault_left_ms) + self.probe_after());
        let close = self
            .link_up
            .then(|| self.last_link_ms + self.cfg.failover_ms);
        [takeover, close, self.timers.next()]
            .into_iter()
            .flatten()
            .min()
    }

    pub(super) fn on_witness(
        &mut self,
        answered: bool,
        now: u64,
        watermark: u64,
        out: &mut Vec<Action>,
    ) {
        self.timers.stop(Timer::WitnessGuard);
        if self.fenced() {
            return self.on_fence_witness(answered, now, watermark, out);
        }
        let Some(cause) = self.witness.take() else {
            return;
        };
        if !matches!(self.state(), HaState::Standby | HaState::Syncing)
            || self.stopping
            || self.faulted()
        {
            return;
        }
        let silent_ms = self.silence_ms(now);
        if answered {
            // Asked early (before the timeout) an answer is no news yet.
            let due = !matches!(cause, Cause::Silence { .. }) || silent_ms >= self.cfg.failover_ms;
            if due && !self.averted {
                self.averted = true;
                let name = self.peer_name();
                let why = match cause {
                    Cause::Silence { ms } => {
                        format!("no heartbeat from {name} for {}", secs(ms))
                    }
                    Cause::Refused => format!("{name} refused the connection"),
                };
                self.emit(
                    out,
                    HaNotice::SplitBrain,
                    format!(
                        "{why}, but the VIP still answers: only the link is down; \
                                 staying {} (averted)",
                        self.state()
                    ),
                );
            }
        } else {
            let reason = self.cause_reason(&cause, now);
            self.take_over(reason, 0, watermark, out);
        }
    }

    pub(super) fn begin_takeover(
        &mut self,
        cause: Cause,
        now: u64,
        watermark: u64,
        out: &mut Vec<Action>,
    ) {
        if self.cfg.witness {
            self.witness = Some(cause);
            self.timers
                .set(Timer::WitnessGuard, now + self.cfg.failover_ms);
            out.push(Action::ProbeWitness);
        } else {
            let reason = self.cause_reason(&cause, now);
            self.take_over(reason, 0, watermark, out);
        }
    }

    pub(super) fn cause_reason(&self, cause: &Cause, now: u64) -> String {
        let name = self.peer_name();
        match cause {
            Cause::Silence { .. } => {
                let silent = now.saturating_sub(self.last_peer_ms);
                if silent >= self.cfg.failover_ms {
                    format!("peer heartbeat timeout after {}", secs(silent))
                } else {
                    format!(
                        "no heartbeat from {name} for {} and the VIP does not answer",
                        secs(silent)
                    )
                }
            }
            Cause::Refused => format!("{name} refused the reconnect (process gone, host up)"),
        }
    }
}

//! The HA state machine: who serves, as a pure function of (state, input, now).
//!
//! No I/O and no clock reads: the caller feeds every input with the current monotonic time in
//! milliseconds and carries out the returned [`Action`]s (send a frame, publish an event, probe
//! the VIP witness, start a bulk sync, close the link, finish shutting down). That keeps every
//! decision testable without sockets, including the two-node simulation in the tests.
//!
//! Invariants the code keeps (and the tests check):
//! - Every takeover raises the epoch above any epoch seen from the peer; every frame carries
//!   it. Two ACTIVE nodes that meet resolve at once: higher epoch stays, equal → the primary
//!   stays, the loser steps down. The only exception is a handoff in flight, where the new
//!   owner is ACTIVE before the old one releases (so no query is lost), bounded by
//!   `handoff_ms`.
//! - Two connected, healthy nodes are never both left not serving: two STANDBY nodes → the
//!   primary takes over; a FAULT peer → the healthy node takes over.
//! - Every non-terminal state has a timed way out: SYNCING ends after `sync_ms`, a handoff
//!   after `handoff_ms`, a silent peer is taken over from after `failover_ms` (unless the VIP
//!   witness says it still serves, re-checked every tick), FAULT ends when health returns.
//! - A node that was itself frozen (SIGSTOP, a long GC-like stall) does not judge the peer by
//!   the silence it measured while frozen: the first tick after a gap skips the silence check,
//!   so frames already waiting in the socket are read first.

use serde::{Deserialize, Serialize};

use crate::config::Role;
use crate::events::EventKind;
use crate::ha::HaState;

/// Timings and identity the machine decides with. All durations in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineConfig {
    pub node: String,
    pub role: Role,
    pub preempt: bool,
    pub heartbeat_ms: u64,
    pub failover_ms: u64,
    /// How long an ACTIVE node waits for the peer to acknowledge a handoff.
    pub handoff_ms: u64,
    /// Longest bulk sync before SYNCING gives up and becomes STANDBY.
    pub sync_ms: u64,
    /// Whether a VIP witness exists (no VIP configured → no witness: silence alone decides).
    pub witness: bool,
    /// How long the witness may take. It is asked this much before `failover_ms`, so its
    /// answer is in when the timeout expires instead of adding to the outage.
    pub witness_ms: u64,
}

impl MachineConfig {
    /// Derives the timings from `[ha]`.
    pub fn from_config(node: &str, ha: &crate::config::HaConfig, witness: bool) -> Self {
        let hb = ha.heartbeat_interval.0.as_millis() as u64;
        let fo = ha.failover_timeout.0.as_millis() as u64;
        MachineConfig {
            node: node.to_string(),
            role: ha.role,
            preempt: ha.preempt,
            heartbeat_ms: hb.max(1),
            failover_ms: fo.max(2),
            // A handoff needs one round trip plus the new owner's VIP claim; bound it by the
            // failover timeout so a stuck peer never holds a shutdown for long.
            handoff_ms: fo.clamp(500, 5000),
            sync_ms: (fo * 3).max(5000),
            witness,
            witness_ms: (ha.witness_timeout().as_millis() as u64).min(fo / 2),
        }
    }
}

/// What a node tells its peer about itself, in the hello and in every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node: String,
    pub role: Role,
    pub state: HaState,
    pub epoch: u64,
    /// The sender's lease-log watermark.
    pub watermark: u64,
    /// A returning primary with `preempt = true` that finished its sync asks for the service.
    pub wants_active: bool,
}

/// Control frames the machine sends. Lease frames belong to `sync` and never reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    Status(PeerStatus),
    /// "Take the service": the receiver becomes ACTIVE above `epoch`, then acknowledges.
    Handoff {
        reason: String,
        epoch: u64,
    },
    /// The answer to a handoff; `epoch` is the new owner's epoch when accepted.
    HandoffAck {
        epoch: u64,
        accepted: bool,
    },
}

/// Everything that can happen to a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Time passes; the caller ticks every heartbeat interval.
    Tick,
    /// An authenticated link came up; the peer's hello.
    LinkUp(PeerStatus),
    /// The link closed (EOF, reset, error, or closed by us).
    LinkDown,
    /// The link was replaced by a second link to the same peer (the dial tie-break, which
    /// can land after the pair settled): the peer never went away, but frames in flight on
    /// the old link may be lost, so a pending handoff is sent again and the sync re-asked.
    LinkSwapped(PeerStatus),
    /// A control frame from the peer.
    Peer(Control),
    /// A dial to the peer's port was refused (RST): its host is up, its process is not.
    ReconnectRefused,
    /// Why this node cannot serve (stuck workers, a VIP link without carrier); empty = it can.
    Health { stuck: Vec<String> },
    /// SIGTERM/SIGINT.
    Shutdown,
    /// `POST /api/v1/ha/failover`.
    ApiFailover,
    /// The VIP witness answered (`true`: something still serves on the VIP).
    Witness { answered: bool },
    /// The bulk sync from the peer finished (`detail` is for the event).
    SyncComplete { detail: String },
}

/// `ha.*` news that changes nothing this node does (unlike a transition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaNotice {
    PeerUp,
    PeerDown,
    SyncComplete,
    /// Two ACTIVE nodes met, or a takeover was averted because the VIP still answered.
    SplitBrain,
}

impl HaNotice {
    pub fn kind(self) -> EventKind {
        match self {
            HaNotice::PeerUp => EventKind::HaPeerUp,
            HaNotice::PeerDown => EventKind::HaPeerDown,
            HaNotice::SyncComplete => EventKind::HaSyncComplete,
            HaNotice::SplitBrain => EventKind::HaSplitBrain,
        }
    }
}

/// Why a handoff this node started did not hand the service over. The text is the API's
/// answer and the log line; callers decide on the variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoffError {
    #[error("{peer} refused the handoff ({reason})")]
    Refused { peer: String, reason: String },
    #[error("handoff to {peer} ({reason}) not acknowledged within {}", secs(*after_ms))]
    Timeout {
        peer: String,
        reason: String,
        after_ms: u64,
    },
    #[error("handoff to {peer} ({reason}) abandoned: link closed")]
    LinkClosed { peer: String, reason: String },
    #[error("handoff to {peer} ({reason}) abandoned: this node became {state}")]
    Abandoned {
        peer: String,
        reason: String,
        state: HaState,
    },
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Send(Control),
    /// The state changed from `old` to `new`: the serving gate follows `new.serves()`, and
    /// an `ha.failover` event says so.
    Transition {
        old: HaState,
        new: HaState,
        reason: String,
    },
    /// Still ACTIVE, but clients may have followed another node's last announcement: claim
    /// and announce the service again (published as `ha.failover` ACTIVE → ACTIVE).
    Reannounce {
        reason: String,
    },
    /// Publish an `ha.*` notice; nothing else follows from it.
    Notify {
        notice: HaNotice,
        reason: String,
    },
    /// Ask the VIP whether a server still answers there; answer with [`Input::Witness`].
    ProbeWitness,
    /// Start the bulk sync in both directions; answer with [`Input::SyncComplete`].
    StartSync,
    /// Close the peer link (the peer went silent on it; a fresh link will be dialled).
    CloseLink,
    /// Shutdown may proceed: the service has been handed off, or there was no one to take it.
    ShutdownReady,
    /// A handoff this node started is over: `Ok` = the peer acknowledged and serves now.
    /// Shutdown handoffs end with one too (an API request may be waiting on it).
    HandoffEnded(Result<(), HandoffError>),
    /// An API failover request could not be honoured (the reason is for the HTTP answer).
    Refused(String),
    /// One log line for a person; no decision is taken on it.
    Log(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Cause {
    Silence { ms: u64 },
    Refused,
}

#[derive(Debug, Clone, PartialEq)]
struct Handoff {
    deadline_ms: u64,
    reason: String,
    shutdown: bool,
}

/// One node's HA state. Cheap to clone (tests fork it).
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    cfg: MachineConfig,
    state: HaState,
    epoch: u64,
    peer: Option<PeerStatus>,
    link_up: bool,
    /// A link was established at least once: a refused dial is then news, not start-up noise.
    linked_once: bool,
    /// For `ha.peer_up`/`ha.peer_down`: do we currently consider the peer present?
    peer_present: bool,
    last_peer_ms: u64,
    last_tick_ms: Option<u64>,
    witness: Option<(u64, Cause)>,
    /// `ha.split_brain` (averted) already reported for the current silence.
    averted: bool,
    /// `ha.split_brain` (two ACTIVE met) already reported for the current meeting.
    dual_reported: bool,
    handoff: Option<Handoff>,
    next_preempt_ms: u64,
    sync_deadline_ms: Option<u64>,
    stopping: bool,
    /// This node handed the service away on request (API): it does not preempt it back
    /// until it is ACTIVE again, or the request would be undone a heartbeat later.
    yielded: bool,
    /// The sender's epoch of the handoff that made this node ACTIVE: the same handoff sent
    /// again (its ack was lost with a swapped link) is acknowledged again, not refused.
    handoff_taken: Option<u64>,
    /// This node took a handoff and the old owner has not yet said it let go: when it
    /// does, announce the VIP once more (see `peer_heard`).
    reannounce_on_release: bool,
}

impl Machine {
    /// A node that just started: STANDBY, not serving, the silence clock running from `now`.
    pub fn new(cfg: MachineConfig, now: u64) -> Self {
        Machine {
            cfg,
            state: HaState::Standby,
            epoch: 0,
            peer: None,
            link_up: false,
            linked_once: false,
            peer_present: false,
            last_peer_ms: now,
            last_tick_ms: None,
            witness: None,
            averted: false,
            dual_reported: false,
            handoff: None,
            next_preempt_ms: 0,
            sync_deadline_ms: None,
            stopping: false,
            yielded: false,
            handoff_taken: None,
            reannounce_on_release: false,
        }
    }

    pub fn state(&self) -> HaState {
        self.state
    }
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    pub fn peer(&self) -> Option<&PeerStatus> {
        self.peer.as_ref()
    }
    pub fn link_up(&self) -> bool {
        self.link_up
    }
    pub fn last_peer_ms(&self) -> u64 {
        self.last_peer_ms
    }
    pub fn config(&self) -> &MachineConfig {
        &self.cfg
    }
    pub fn handoff_pending(&self) -> bool {
        self.handoff.is_some()
    }

    /// What this node tells the peer now.
    pub fn status(&self, watermark: u64) -> PeerStatus {
        let peer_active = self
            .peer
            .as_ref()
            .is_some_and(|p| p.state == HaState::Active);
        PeerStatus {
            node: self.cfg.node.clone(),
            role: self.cfg.role,
            state: self.state,
            epoch: self.epoch,
            watermark,
            wants_active: self.cfg.preempt
                && self.cfg.role == Role::Primary
                && self.state == HaState::Standby
                && peer_active
                && !self.faulted()
                && !self.stopping
                && !self.yielded,
        }
    }

    /// FAULT is entered on failing health and left only when health returns, so the state
    /// itself says whether this node cannot serve; no separate flag can disagree with it.
    fn faulted(&self) -> bool {
        self.state == HaState::Fault
    }

    fn peer_name(&self) -> String {
        self.peer
            .as_ref()
            .map(|p| p.node.clone())
            .unwrap_or_else(|| "the peer".to_string())
    }

    /// The transition function. `watermark` is only copied into outgoing status frames.
    pub fn step(&mut self, input: Input, now: u64, watermark: u64) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Tick => self.on_tick(now, watermark, &mut out),
            Input::LinkUp(ps) => {
                self.link_up = true;
                self.linked_once = true;
                self.peer_heard(ps, now, &mut out);
                if !self.peer_present {
                    self.peer_present = true;
                    let name = self.peer_name();
                    self.emit(
                        &mut out,
                        HaNotice::PeerUp,
                        format!("peer link to {name} is up"),
                    );
                }
                // The hello was written before this node saw the link up, and its state may
                // have changed since (a resumed ACTIVE that just stepped down): say it now.
                out.push(Action::Send(Control::Status(self.status(watermark))));
                out.push(Action::StartSync);
                if self.state == HaState::Standby && !self.stopping {
                    let name = self.peer_name();
                    self.sync_deadline_ms = Some(now + self.cfg.sync_ms);
                    self.transition(
                        HaState::Syncing,
                        format!("bulk sync with {name} after connect"),
                        watermark,
                        &mut out,
                    );
                }
                self.evaluate(now, watermark, &mut out);
            }
            Input::LinkSwapped(ps) => {
                if !self.link_up {
                    return self.step(Input::LinkUp(ps), now, watermark);
                }
                // The hello on the new link is no news: the peer wrote it before it saw the
                // swap, and frames on the old link may be younger (a handoff it took since
                // says ACTIVE there, its hello still STANDBY). Deciding on it could take the
                // service back from a peer that just took it; its current status follows on
                // the new link. It does prove the peer alive.
                self.last_peer_ms = now;
                self.witness = None;
                // Frames on the retired link are ignored by the peer: our current status
                // (e.g. a step-down the peer waits for to announce again) goes now.
                out.push(Action::Send(Control::Status(self.status(watermark))));
                if let Some(h) = &self.handoff {
                    out.push(Action::Send(Control::Handoff {
                        reason: h.reason.clone(),
                        epoch: self.epoch,
                    }));
                }
                out.push(Action::StartSync);
            }
            Input::LinkDown => {
                if !self.link_up {
                    return out;
                }
                self.link_up = false;
                let name = self.peer_name();
                self.peer_gone(format!("peer link to {name} closed"), &mut out);
                if let Some(h) = self.handoff.take() {
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
                            &mut out,
                        );
                        out.push(Action::ShutdownReady);
                    }
                }
                if self.state == HaState::Syncing {
                    self.sync_deadline_ms = None;
                    self.transition(
                        HaState::Standby,
                        format!("link to {name} closed during bulk sync"),
                        watermark,
                        &mut out,
                    );
                }
            }
            Input::Peer(Control::Status(ps)) => {
                self.peer_heard(ps, now, &mut out);
                self.evaluate(now, watermark, &mut out);
            }
            Input::Peer(Control::Handoff { reason, epoch }) => {
                self.last_peer_ms = now;
                self.witness = None;
                let name = self.peer_name();
                if let Some(p) = self.peer.as_mut() {
                    p.epoch = p.epoch.max(epoch);
                }
                if self.state == HaState::Active && self.handoff_taken == Some(epoch) {
                    // The handoff this node already took, sent again: the first ack was lost.
                    out.push(Action::Send(Control::HandoffAck {
                        epoch: self.epoch,
                        accepted: true,
                    }));
                    return out;
                }
                let can = matches!(self.state, HaState::Standby | HaState::Syncing)
                    && !self.faulted()
                    && !self.stopping;
                if can {
                    self.sync_deadline_ms = None;
                    self.take_over(
                        format!("handoff from {name} ({reason})"),
                        epoch,
                        watermark,
                        &mut out,
                    );
                    self.handoff_taken = Some(epoch);
                    self.reannounce_on_release = true;
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
                        self.state,
                        if self.stopping {
                            " and shutting down"
                        } else {
                            ""
                        }
                    )));
                }
            }
            Input::Peer(Control::HandoffAck { epoch, accepted }) => {
                self.last_peer_ms = now;
                let name = self.peer_name();
                let Some(h) = self.handoff.take() else {
                    return out;
                };
                if accepted {
                    self.yielded = h.reason == API_REASON;
                    if let Some(p) = self.peer.as_mut() {
                        p.state = HaState::Active;
                        p.epoch = p.epoch.max(epoch);
                    }
                    self.transition(
                        HaState::Standby,
                        format!("handed off to {name} ({})", h.reason),
                        watermark,
                        &mut out,
                    );
                    out.push(Action::HandoffEnded(Ok(())));
                    if h.shutdown {
                        out.push(Action::ShutdownReady);
                    }
                } else {
                    out.push(Action::HandoffEnded(Err(HandoffError::Refused {
                        peer: name.clone(),
                        reason: h.reason.clone(),
                    })));
                    if h.shutdown {
                        self.transition(
                            HaState::Standby,
                            format!("shutdown: {name} refused the handoff"),
                            watermark,
                            &mut out,
                        );
                        out.push(Action::ShutdownReady);
                    } else {
                        self.next_preempt_ms = now + self.cfg.failover_ms;
                    }
                }
            }
            Input::ReconnectRefused => {
                let name = self.peer_name();
                self.peer_gone(
                    format!("{name} refused the connection (process gone)"),
                    &mut out,
                );
                if self.linked_once
                    && matches!(self.state, HaState::Standby | HaState::Syncing)
                    && !self.stopping
                    && !self.faulted()
                    && self.witness.is_none()
                    && !self.link_up
                {
                    self.begin_takeover(Cause::Refused, now, watermark, &mut out);
                }
            }
            Input::Health { stuck } => {
                if !stuck.is_empty() && !self.faulted() {
                    self.witness = None;
                    self.sync_deadline_ms = None;
                    if let Some(h) = self.handoff.take() {
                        out.push(Action::HandoffEnded(Err(HandoffError::Abandoned {
                            peer: self.peer_name(),
                            reason: h.reason,
                            state: HaState::Fault,
                        })));
                        if h.shutdown {
                            out.push(Action::ShutdownReady);
                        }
                    }
                    self.transition(
                        HaState::Fault,
                        format!("cannot serve: {}", stuck.join(", ")),
                        watermark,
                        &mut out,
                    );
                } else if stuck.is_empty() && self.faulted() {
                    self.transition(
                        HaState::Standby,
                        "can serve again".to_string(),
                        watermark,
                        &mut out,
                    );
                    // What we last heard from the peer may predate the fault (it may have
                    // taken over meanwhile): decide on its next status, not on that one.
                    if now.saturating_sub(self.last_peer_ms) <= self.cfg.heartbeat_ms * 2 {
                        self.evaluate(now, watermark, &mut out);
                    }
                }
            }
            Input::Shutdown => {
                if self.stopping {
                    return out;
                }
                self.stopping = true;
                self.witness = None;
                let peer_can_take = self.link_up
                    && self
                        .peer
                        .as_ref()
                        .is_some_and(|p| matches!(p.state, HaState::Standby | HaState::Syncing));
                if self.state == HaState::Active && peer_can_take {
                    if self.handoff.as_ref().is_some_and(|h| !h.shutdown) {
                        // A planned handoff is already in flight: let it finish, then exit.
                        if let Some(h) = self.handoff.as_mut() {
                            h.shutdown = true;
                        }
                    } else {
                        self.start_handoff("shutdown".to_string(), true, now, &mut out);
                    }
                } else {
                    if self.state == HaState::Active {
                        self.transition(
                            HaState::Standby,
                            "shutdown (no standby peer to hand off to)".to_string(),
                            watermark,
                            &mut out,
                        );
                    }
                    out.push(Action::ShutdownReady);
                }
            }
            Input::ApiFailover => {
                let peer = self.peer.as_ref();
                if self.state != HaState::Active {
                    out.push(Action::Refused(format!(
                        "this node is {}, only the ACTIVE node can hand off",
                        self.state
                    )));
                } else if self.handoff.is_some() {
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
                    self.start_handoff(API_REASON.to_string(), false, now, &mut out);
                }
            }
            Input::Witness { answered } => {
                let Some((_, cause)) = self.witness.take() else {
                    return out;
                };
                if !matches!(self.state, HaState::Standby | HaState::Syncing)
                    || self.stopping
                    || self.faulted()
                {
                    return out;
                }
                let silent_ms = now.saturating_sub(self.last_peer_ms);
                if answered {
                    // Asked early (before the timeout) an answer is no news yet.
                    let due = !matches!(cause, Cause::Silence { .. })
                        || silent_ms >= self.cfg.failover_ms;
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
                            &mut out,
                            HaNotice::SplitBrain,
                            format!(
                                "{why}, but the VIP still answers: only the link is down; \
                                 staying {} (averted)",
                                self.state
                            ),
                        );
                    }
                } else {
                    let reason = self.cause_reason(&cause, now);
                    self.sync_deadline_ms = None;
                    self.take_over(reason, 0, watermark, &mut out);
                }
            }
            Input::SyncComplete { detail } => {
                self.emit(&mut out, HaNotice::SyncComplete, detail.clone());
                if self.state == HaState::Syncing {
                    self.sync_deadline_ms = None;
                    self.transition(HaState::Standby, detail, watermark, &mut out);
                    self.evaluate(now, watermark, &mut out);
                }
            }
        }
        out
    }

    fn cause_reason(&self, cause: &Cause, now: u64) -> String {
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

    fn on_tick(&mut self, now: u64, watermark: u64, out: &mut Vec<Action>) {
        let frozen = self
            .last_tick_ms
            .is_some_and(|t| now.saturating_sub(t) > 3 * self.cfg.heartbeat_ms);
        self.last_tick_ms = Some(now);

        if let Some(h) = self.handoff.take_if(|h| now >= h.deadline_ms) {
            {
                let name = self.peer_name();
                out.push(Action::HandoffEnded(Err(HandoffError::Timeout {
                    peer: name.clone(),
                    reason: h.reason.clone(),
                    after_ms: self.cfg.handoff_ms,
                })));
                if h.shutdown {
                    self.transition(
                        HaState::Standby,
                        format!(
                            "shutdown: {name} did not acknowledge the handoff within {}",
                            secs(self.cfg.handoff_ms)
                        ),
                        watermark,
                        out,
                    );
                    out.push(Action::ShutdownReady);
                } else {
                    self.next_preempt_ms = now + self.cfg.failover_ms;
                }
            }
        }
        if let Some(d) = self.sync_deadline_ms {
            if now >= d && self.state == HaState::Syncing {
                self.sync_deadline_ms = None;
                self.transition(
                    HaState::Standby,
                    format!("bulk sync did not finish within {}", secs(self.cfg.sync_ms)),
                    watermark,
                    out,
                );
            }
        }
        if let Some((since, _)) = &self.witness {
            // The prober always answers within its own timeout; this only guards against a
            // lost answer leaving the takeover pending forever.
            if now.saturating_sub(*since) > self.cfg.failover_ms {
                self.witness = None;
            }
        }
        // A node that cannot serve stops heartbeating (the transition to FAULT already told
        // the peer) but still notices a silent peer and closes the link, so it never leaves
        // FAULT trusting a link that died meanwhile.
        if self.link_up && !self.faulted() {
            out.push(Action::Send(Control::Status(self.status(watermark))));
        }
        if frozen {
            return;
        }
        let silent_ms = now.saturating_sub(self.last_peer_ms);
        if self.faulted() {
            if silent_ms >= self.cfg.failover_ms && self.link_up {
                let name = self.peer_name();
                self.peer_gone(format!("no frame from {name} for {}", secs(silent_ms)), out);
                self.link_up = false;
                out.push(Action::CloseLink);
            }
            return;
        }
        if silent_ms >= self.cfg.failover_ms {
            let name = self.peer_name();
            self.peer_gone(format!("no frame from {name} for {}", secs(silent_ms)), out);
            if self.link_up {
                self.link_up = false;
                out.push(Action::CloseLink);
                if self.state == HaState::Syncing {
                    self.sync_deadline_ms = None;
                    self.transition(
                        HaState::Standby,
                        format!("{name} went silent during bulk sync"),
                        watermark,
                        out,
                    );
                }
            }
        }
        if silent_ms >= self.probe_after()
            && matches!(self.state, HaState::Standby | HaState::Syncing)
            && !self.stopping
            && self.witness.is_none()
        {
            self.begin_takeover(Cause::Silence { ms: silent_ms }, now, watermark, out);
        }
        if silent_ms < self.cfg.failover_ms {
            self.evaluate(now, watermark, out);
        }
    }

    /// Silence after which a takeover starts: the witness is asked early enough that its
    /// answer (at most `witness_ms` later) lands on the failover timeout.
    fn probe_after(&self) -> u64 {
        if self.cfg.witness {
            self.cfg.failover_ms.saturating_sub(self.cfg.witness_ms)
        } else {
            self.cfg.failover_ms
        }
    }

    /// The next instant (monotonic ms) at which a tick would decide something, so the caller
    /// can tick then instead of up to a heartbeat later.
    pub fn next_deadline(&self) -> Option<u64> {
        let waiting = matches!(self.state, HaState::Standby | HaState::Syncing)
            && !self.stopping
            && !self.faulted()
            && self.witness.is_none();
        let mut d = None::<u64>;
        if waiting {
            d = Some(self.last_peer_ms + self.probe_after());
        }
        if self.link_up {
            let close = self.last_peer_ms + self.cfg.failover_ms;
            d = Some(d.map_or(close, |x| x.min(close)));
        }
        if let Some(h) = &self.handoff {
            d = Some(d.map_or(h.deadline_ms, |x| x.min(h.deadline_ms)));
        }
        d
    }

    fn peer_heard(&mut self, ps: PeerStatus, now: u64, out: &mut Vec<Action>) {
        let was_active = self
            .peer
            .as_ref()
            .is_some_and(|p| p.state == HaState::Active);
        let let_go = ps.state != HaState::Active && self.state == HaState::Active;
        if let_go && was_active && self.handoff.is_none() {
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
            self.next_preempt_ms = self.next_preempt_ms.max(now + self.cfg.failover_ms);
            self.reannounce_on_release = false;
        } else if let_go && self.reannounce_on_release {
            // We took a handoff. The old owner's VIP worker may have sent an announcement
            // (the next GARP of its claim burst, a defence) between our claim and its
            // release; clients that followed it would reach a node without the VIP until
            // our conflict hold-off (1 s) ends. Its status says it let go: announce last.
            self.reannounce_on_release = false;
            out.push(Action::Reannounce {
                reason: format!(
                    "{} let go after the handoff; announcing the service again",
                    ps.node
                ),
            });
        }
        self.last_peer_ms = now;
        self.witness = None;
        self.averted = false;
        if ps.state != HaState::Active {
            self.dual_reported = false;
        }
        self.peer = Some(ps);
    }

    fn peer_gone(&mut self, reason: String, out: &mut Vec<Action>) {
        if self.peer_present {
            self.peer_present = false;
            self.dual_reported = false;
            self.emit(out, HaNotice::PeerDown, reason);
        }
    }

    /// Decisions that need a connected peer whose status is fresh.
    fn evaluate(&mut self, now: u64, watermark: u64, out: &mut Vec<Action>) {
        if !self.link_up || self.stopping || self.faulted() {
            return;
        }
        let Some(p) = self.peer.clone() else { return };
        match (self.state, p.state) {
            (HaState::Active, HaState::Active) => {
                if self.handoff.is_some() {
                    return; // the planned overlap of a handoff; the ack ends it
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
                if p.wants_active
                    && p.role == Role::Primary
                    && self.cfg.role == Role::Secondary
                    && self.handoff.is_none()
                    && now >= self.next_preempt_ms =>
            {
                self.start_handoff(format!("preemption by primary {}", p.node), false, now, out);
            }
            (HaState::Standby, HaState::Standby) if !wins_tie(&p.role, &p.node, &self.cfg) => {
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
                self.sync_deadline_ms = None;
                self.take_over(format!("{} reports FAULT", p.node), 0, watermark, out);
            }
            _ => {}
        }
    }

    fn begin_takeover(&mut self, cause: Cause, now: u64, watermark: u64, out: &mut Vec<Action>) {
        if self.cfg.witness {
            self.witness = Some((now, cause));
            out.push(Action::ProbeWitness);
        } else {
            let reason = self.cause_reason(&cause, now);
            self.sync_deadline_ms = None;
            self.take_over(reason, 0, watermark, out);
        }
    }

    fn take_over(&mut self, reason: String, min_epoch: u64, watermark: u64, out: &mut Vec<Action>) {
        self.yielded = false;
        let peer_epoch = self.peer.as_ref().map_or(0, |p| p.epoch);
        self.epoch = self.epoch.max(peer_epoch).max(min_epoch) + 1;
        self.averted = false;
        self.witness = None;
        self.transition(HaState::Active, reason, watermark, out);
    }

    fn start_handoff(&mut self, reason: String, shutdown: bool, now: u64, out: &mut Vec<Action>) {
        out.push(Action::Send(Control::Handoff {
            reason: reason.clone(),
            epoch: self.epoch,
        }));
        self.handoff = Some(Handoff {
            deadline_ms: now + self.cfg.handoff_ms,
            reason,
            shutdown,
        });
    }

    fn transition(&mut self, new: HaState, reason: String, watermark: u64, out: &mut Vec<Action>) {
        if new == self.state {
            return;
        }
        let old = self.state;
        self.state = new;
        if new != HaState::Active {
            if let Some(h) = self.handoff.take() {
                out.push(Action::HandoffEnded(Err(HandoffError::Abandoned {
                    peer: self.peer_name(),
                    reason: h.reason,
                    state: new,
                })));
            }
        }
        // Set again by the handoff branch right after its take-over.
        self.handoff_taken = None;
        self.reannounce_on_release = false;
        out.push(Action::Transition { old, new, reason });
        if self.link_up {
            out.push(Action::Send(Control::Status(self.status(watermark))));
        }
    }

    fn emit(&self, out: &mut Vec<Action>, notice: HaNotice, reason: String) {
        out.push(Action::Notify { notice, reason });
    }
}

/// Does a peer with this role and name win an equal-epoch tie against us?
fn wins_tie(peer_role: &Role, peer_node: &str, me: &MachineConfig) -> bool {
    match (peer_role, me.role) {
        (Role::Primary, Role::Secondary) => true,
        (Role::Secondary, Role::Primary) => false,
        // Misconfigured pair (same role on both): the smaller name wins, on both sides alike.
        _ => peer_node < me.node.as_str(),
    }
}

/// The reason of a handoff asked for through the API.
const API_REASON: &str = "API request";

/// `10.0s`, `0.15s`: how reasons spell durations.
pub fn secs(ms: u64) -> String {
    if ms % 100 == 0 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        let s = format!("{:.3}", ms as f64 / 1000.0);
        format!("{}s", s.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests;

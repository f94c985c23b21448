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
//! - An ACTIVE node whose own inputs stopped for longer than its serve lease (`failover_ms`
//!   less a heartbeat: the peer may have taken over meanwhile) is *fenced*: it stays ACTIVE but does not serve until a peer status
//!   answering its fresh question (`ask`) arrives on some path, or the VIP witness says nobody
//!   else serves. Frames queued during the stall cannot answer a question asked after it.
//! - The peer is silent only when every path (the link and each datagram path) is; statuses
//!   from two paths are ordered by the sender's (boot, gen), so a late copy never undoes news.
//! - A node back from FAULT doubts what it heard of the peer before (see `fence`): it asks,
//!   takes the service on a peer status only once one answers (or a failover timeout later),
//!   and counts the peer's silence from its return, since a node without carrier hears
//!   nothing. Otherwise a flap of the ACTIVE node's port shorter than the failover timeout
//!   had it retake the VIP on its pre-flap "peer is STANDBY" while the peer, which heard
//!   nothing from it, took over too.

use serde::{Deserialize, Serialize};

use crate::config::Role;
use crate::events::EventKind;
use crate::ha::HaState;

mod fence;
mod link;
mod local;
mod paths;
mod peer;
mod timer;

pub use paths::PathView;
use paths::Paths;

use timer::{Timer, Timers};

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
    /// This incarnation's number (wall-clock microseconds at start): orders its statuses
    /// after any of a previous life, and makes its questions unique across restarts.
    pub boot: u64,
    /// Names of the datagram paths to the peer (`Input::Datagram::path` indexes them).
    pub paths: Vec<String>,
}

impl MachineConfig {
    /// How long one step of an unfenced ACTIVE node lets DHCP serve ([`crate::ha::ServeLease`]):
    /// it runs out a heartbeat before the peer could take over from a silent node. A gap
    /// between two steps longer than this is a stall (see `fence`): the lease ran out, and the
    /// next step must not renew it before the peer was asked. A threshold of `failover_ms`
    /// left a hole: the last heartbeat left up to a heartbeat before the last step, so the
    /// peer could take over while the gap stayed under `failover_ms`, and the first step
    /// after the stall (a status queued from before the takeover) renewed the lease for the
    /// DISCOVERs queued meanwhile.
    pub fn serve_lease_ms(&self) -> u64 {
        self.failover_ms
            .saturating_sub(self.heartbeat_ms)
            .max(self.heartbeat_ms)
    }

    /// Derives the timings from `[ha]`.
    pub fn from_config(
        node: &str,
        ha: &crate::config::HaConfig,
        witness: bool,
        boot: u64,
        paths: Vec<String>,
    ) -> Self {
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
            boot,
            paths,
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
    /// The sender's incarnation and the count of its state changes: of two statuses heard on
    /// different paths the higher (boot, gen) is the newer. 0 from older nodes.
    #[serde(default)]
    pub boot: u64,
    #[serde(default)]
    pub gen: u64,
    /// A question the sender wants answered by a fresh status (0: none): it was stalled, or
    /// it saw its VIP announced from elsewhere, and frames queued before cannot answer it.
    #[serde(default)]
    pub ask: u64,
    /// The last `ask` the sender heard from the receiver.
    #[serde(default)]
    pub answer: u64,
    /// The sender's lease store cannot write: it merges nothing, so the active stops waiting
    /// for its acks. Absent from older nodes (false).
    #[serde(default)]
    pub store_failed: bool,
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
    /// An authenticated heartbeat on datagram path `path` (an index into
    /// [`MachineConfig::paths`]); replays were dropped before it got here.
    Datagram { path: usize, status: PeerStatus },
    /// The VIP was announced from another MAC. An ACTIVE node without fresh peer news asks
    /// on every path before it defends the address.
    VipConflict,
    /// The lease store's condition changed (see [`StoreInput`]).
    Store(StoreInput),
}

/// What the lease store tells HA. A node that cannot make a lease durable must not hold the
/// service: it goes FAULT (the peer, which has every acknowledged lease, takes over) and
/// comes back through a bulk sync, since it missed what the peer gave out meanwhile.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreInput {
    /// A commit failed; the store reopens itself with a backoff.
    Failed(String),
    /// The store takes durable writes again.
    Healed,
    /// The store was started empty in place of a damaged file: this node must take the
    /// peer's whole lease set (one complete bulk sync) before it may serve.
    NeedsResync,
}

/// `ha.*` news that changes nothing this node does (unlike a transition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaNotice {
    PeerUp,
    PeerDown,
    SyncComplete,
    /// Two ACTIVE nodes met, or a takeover was averted because the VIP still answered.
    SplitBrain,
    /// One path to the peer went quiet while another still carries its heartbeats.
    PathDown,
}

impl HaNotice {
    pub fn kind(self) -> EventKind {
        match self {
            HaNotice::PeerUp => EventKind::HaPeerUp,
            HaNotice::PeerDown => EventKind::HaPeerDown,
            HaNotice::SyncComplete => EventKind::HaSyncComplete,
            HaNotice::SplitBrain => EventKind::HaSplitBrain,
            HaNotice::PathDown => EventKind::HaPathDown,
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
    /// Fenced (`true`): ACTIVE but not serving, no DHCP answers and no VIP, until the peer
    /// answers a fresh question or the witness finds nobody serving; `false`: serving again.
    /// The state stays ACTIVE, so no `ha.failover` is published for it.
    Fence {
        on: bool,
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
    reason: String,
    shutdown: bool,
}

/// Where this node is, with what only that state needs: a handoff can only be in flight, and
/// a taken handoff only remembered, while ACTIVE, so leaving ACTIVE drops them by construction.
/// Deadlines are not here but in the [`Timer`] table, where `poll_timeout` sees them all.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Standby,
    /// Bulk sync with the peer in progress; [`Timer::Sync`] bounds it.
    Syncing,
    Active {
        /// A handoff this node started, waiting for the peer's ack ([`Timer::Handoff`]).
        handoff: Option<Handoff>,
        /// The sender's epoch of the handoff that made this node ACTIVE: the same handoff
        /// sent again (its ack was lost with a swapped link) is acknowledged again, not
        /// refused.
        handoff_taken: Option<u64>,
        /// This node took a handoff and the old owner has not yet said it let go: when it
        /// does, announce the VIP once more (see `peer_heard`).
        reannounce_on_release: bool,
        /// Not serving after a stall until the peer answers or the witness decides.
        fence: Option<fence::Fence>,
    },
    /// Cannot serve: entered on failing health or a failing lease store, left only when
    /// both are well again (and a store that lost its leases has resynced).
    Fault,
}

impl Phase {
    fn entered(state: HaState) -> Phase {
        match state {
            HaState::Standby => Phase::Standby,
            HaState::Syncing => Phase::Syncing,
            HaState::Active => Phase::Active {
                handoff: None,
                handoff_taken: None,
                reannounce_on_release: false,
                fence: None,
            },
            HaState::Fault => Phase::Fault,
        }
    }

    fn state(&self) -> HaState {
        match self {
            Phase::Standby => HaState::Standby,
            Phase::Syncing => HaState::Syncing,
            Phase::Active { .. } => HaState::Active,
            Phase::Fault => HaState::Fault,
        }
    }
}

/// One node's HA state. Cheap to clone (tests fork it).
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    cfg: MachineConfig,
    phase: Phase,
    epoch: u64,
    peer: Option<PeerStatus>,
    link_up: bool,
    /// A link was established at least once: a refused dial is then news, not start-up noise.
    linked_once: bool,
    /// For `ha.peer_up`/`ha.peer_down`: do we currently consider the peer present?
    peer_present: bool,
    /// Last news from the peer on any path.
    last_peer_ms: u64,
    /// Last frame on the link (it is closed after `failover_ms` of silence of its own).
    last_link_ms: u64,
    last_tick_ms: Option<u64>,
    /// Last input of any kind: a gap longer than the serve lease means this node was stalled.
    last_step_ms: Option<u64>,
    /// When this node last left FAULT (0: never). The peer's silence counts from here at the
    /// earliest: silence heard without carrier (or with stuck workers) is no evidence.
    fault_left_ms: u64,
    /// Count of this node's state changes (see [`PeerStatus::gen`]).
    gen: u64,
    /// The question this node waits to see answered (0: none) and how many it asked.
    ask: u64,
    asks: u64,
    /// The peer's last question, echoed as `answer` in every status.
    peer_ask: u64,
    /// When each path last carried news, for `ha.path_down` and the status.
    paths: Paths,
    /// Why a takeover waits for the witness's answer (its guard is [`Timer::WitnessGuard`]).
    witness: Option<Cause>,
    /// `ha.split_brain` (averted) already reported for the current silence.
    averted: bool,
    /// `ha.split_brain` (two ACTIVE met) already reported for the current meeting.
    dual_reported: bool,
    /// Every deadline, one slot per [`Timer`].
    timers: Timers,
    stopping: bool,
    /// This node handed the service away on request (API): it does not preempt it back
    /// until it is ACTIVE again, or the request would be undone a heartbeat later.
    yielded: bool,
    /// The last health report named something stuck (FAULT stays while it does).
    health_stuck: bool,
    /// The lease store cannot write, and why (FAULT stays while it cannot).
    store_failed: Option<String>,
    /// The store started empty in place of a damaged file; FAULT stays until a bulk sync
    /// from the peer completes.
    store_resync: bool,
    /// A bulk sync from the peer completed on the current link. A returning primary asks
    /// for the service only then: a STANDBY before it (just started, or not yet linked) may
    /// lack what the peer leased meanwhile, and a preemption would have it serve without
    /// (chaos seed 22: its hello, written when a datagram had shown the peer ACTIVE, asked
    /// at once, and it took the service in SYNCING).
    synced: bool,
}

impl Machine {
    /// A node that just started: STANDBY, not serving, the silence clock running from `now`.
    pub fn new(cfg: MachineConfig, now: u64) -> Self {
        Machine {
            phase: Phase::Standby,
            epoch: 0,
            peer: None,
            link_up: false,
            linked_once: false,
            peer_present: false,
            last_peer_ms: now,
            last_link_ms: now,
            last_tick_ms: None,
            last_step_ms: None,
            fault_left_ms: 0,
            gen: 0,
            ask: 0,
            asks: 0,
            peer_ask: 0,
            paths: Paths::new(&cfg.paths),
            witness: None,
            averted: false,
            dual_reported: false,
            timers: Timers::default(),
            stopping: false,
            yielded: false,
            cfg,
            health_stuck: false,
            store_failed: None,
            store_resync: false,
            synced: false,
        }
    }

    /// A restarted node resumes from the epoch it saved with its leases: a takeover after a
    /// restart still outranks every epoch this node held before.
    pub fn restore_epoch(&mut self, epoch: u64) {
        self.epoch = self.epoch.max(epoch);
    }

    pub fn state(&self) -> HaState {
        self.phase.state()
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
        self.handoff().is_some()
    }
    /// ACTIVE but fenced after a stall: not serving until the question is answered.
    pub fn fenced(&self) -> bool {
        matches!(self.phase, Phase::Active { fence: Some(_), .. })
    }
    /// Each path to the peer with the age of its last frame at `now`.
    pub fn paths(&self, now: u64) -> Vec<PathView> {
        self.paths.view(now)
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
            state: self.state(),
            epoch: self.epoch,
            watermark,
            boot: self.cfg.boot,
            gen: self.gen,
            ask: self.ask,
            answer: self.peer_ask,
            wants_active: self.cfg.preempt
                && self.cfg.role == Role::Primary
                && self.state() == HaState::Standby
                && self.link_up
                && self.synced
                && peer_active
                && !self.faulted()
                && !self.stopping
                && !self.yielded,
            store_failed: self.store_failed.is_some(),
        }
    }

    /// FAULT is entered on failing health and left only when health returns, so the state
    /// itself says whether this node cannot serve; no separate flag can disagree with it.
    fn faulted(&self) -> bool {
        self.phase == Phase::Fault
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
        let gap = self.last_step_ms.map_or(0, |t| now.saturating_sub(t));
        self.last_step_ms = Some(now);
        if gap > self.cfg.serve_lease_ms() {
            self.on_stall(gap, now, watermark, &mut out);
        }
        match input {
            Input::Tick => self.on_timer(now, watermark, &mut out),
            Input::Witness { answered } => self.on_witness(answered, now, watermark, &mut out),
            Input::LinkUp(ps) => self.on_link_up(ps, now, watermark, &mut out),
            Input::LinkSwapped(ps) => self.on_link_swapped(ps, now, watermark, &mut out),
            Input::LinkDown => self.on_link_down(watermark, &mut out),
            Input::ReconnectRefused => self.on_reconnect_refused(now, watermark, &mut out),
            Input::SyncComplete { detail } => {
                self.on_sync_complete(detail, now, watermark, &mut out)
            }
            Input::Peer(frame) => self.on_peer(frame, now, watermark, &mut out),
            Input::Health { stuck } => self.on_health(stuck, now, watermark, &mut out),
            Input::Shutdown => self.on_shutdown(now, watermark, &mut out),
            Input::ApiFailover => self.on_api_failover(now, &mut out),
            Input::Datagram { path, status } => {
                self.on_datagram(path, status, now, watermark, &mut out)
            }
            Input::VipConflict => self.on_vip_conflict(now, watermark, &mut out),
            Input::Store(s) => self.on_store(s, now, watermark, &mut out),
        }
        out
    }

    fn take_over(&mut self, reason: String, min_epoch: u64, watermark: u64, out: &mut Vec<Action>) {
        self.yielded = false;
        let peer_epoch = self.peer.as_ref().map_or(0, |p| p.epoch);
        self.epoch = self.epoch.max(peer_epoch).max(min_epoch) + 1;
        self.averted = false;
        self.forget_witness();
        self.transition(HaState::Active, reason, watermark, out);
    }

    fn start_handoff(&mut self, reason: String, shutdown: bool, now: u64, out: &mut Vec<Action>) {
        out.push(Action::Send(Control::Handoff {
            reason: reason.clone(),
            epoch: self.epoch,
        }));
        if let Phase::Active { handoff, .. } = &mut self.phase {
            *handoff = Some(Handoff { reason, shutdown });
            self.timers.set(Timer::Handoff, now + self.cfg.handoff_ms);
        }
    }

    fn transition(&mut self, new: HaState, reason: String, watermark: u64, out: &mut Vec<Action>) {
        let old = self.state();
        if new == old {
            return;
        }
        self.gen += 1;
        let left = std::mem::replace(&mut self.phase, Phase::entered(new));
        if new != HaState::Syncing {
            self.timers.stop(Timer::Sync);
        }
        if let Phase::Active {
            handoff: Some(h), ..
        } = left
        {
            self.timers.stop(Timer::Handoff);
            out.push(Action::HandoffEnded(Err(HandoffError::Abandoned {
                peer: self.peer_name(),
                reason: h.reason,
                state: new,
            })));
        }
        out.push(Action::Transition { old, new, reason });
        // On the link when there is one, and on every datagram path.
        out.push(Action::Send(Control::Status(self.status(watermark))));
    }

    /// The handoff this node started and the peer has not yet acknowledged.
    fn handoff(&self) -> Option<&Handoff> {
        match &self.phase {
            Phase::Active { handoff, .. } => handoff.as_ref(),
            _ => None,
        }
    }

    /// The handoff this node started is over, one way or another: its deadline goes with it.
    fn end_handoff(&mut self) -> Option<Handoff> {
        self.timers.stop(Timer::Handoff);
        match &mut self.phase {
            Phase::Active { handoff, .. } => handoff.take(),
            _ => None,
        }
    }

    /// A takeover no longer waits for the witness (the peer spoke, or the question is moot).
    fn forget_witness(&mut self) {
        self.timers.stop(Timer::WitnessGuard);
        self.witness = None;
    }

    /// An ACTIVE secondary keeps the service until at least `until` (see `peer_heard`).
    fn hold_preemption(&mut self, until: u64) {
        let until = self
            .timers
            .get(Timer::PreemptHold)
            .map_or(until, |t| t.max(until));
        self.timers.set(Timer::PreemptHold, until);
    }

    /// A handoff the peer refused or never acknowledged: a shutting-down node steps down and
    /// exits anyway (`why` is its transition's reason); otherwise it keeps serving and does not
    /// offer the service again for a failover timeout.
    fn after_failed_handoff(
        &mut self,
        shutdown: bool,
        why: String,
        now: u64,
        watermark: u64,
        out: &mut Vec<Action>,
    ) {
        if shutdown {
            self.transition(HaState::Standby, why, watermark, out);
            out.push(Action::ShutdownReady);
        } else {
            self.timers
                .set(Timer::PreemptHold, now + self.cfg.failover_ms);
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
#[cfg(test)]
use tests as tests_support;
#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod fence_tests;
#[cfg(test)]
mod flap_tests;
#[cfg(test)]
mod sim_tests;
